/* File transfer, source side, the per-file streams a round sends (xfer_src.c
 * decides which files and when): a grown file of an append-only domain as a
 * TAIL, a file the destination has no copy of as plain bytes (DATA), any
 * other as a delta against the signature of the destination's copy. Each
 * file is read once, hashed (and signed, when it keeps changing) in that
 * same pass, and cut into flow-controlled chunks. Also the signatures those
 * deltas need: the ones dispatch receives are handed to the strand here
 * (mig__xsrc_accept_signature, the only function here that runs in
 * dispatch), and later rounds ask the destination to sign its staged copy.
 * Everything else runs on the transfer's strand. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "handoff_int.h"
#include "xfer_int.h"

/* ------------------------------------------------------------------ sending a file */

/* Test faults that act on the data stream (see engine_int.h). */
static int inject_fault(struct sink_ctx *s)
{
	struct mig__xfer *x = s->x;
	if (x->fault == MIG__FAULT_FILE_CORRUPT_CHUNK && s->len > 64) {
		/* Not a delta any more: its magic is gone. (Damage inside the
		 * literal data would be caught by the digest and resent.) */
		x->fault = MIG__FAULT_NONE;
		for (size_t i = 0; i < 16; i++)
			s->buf[i] ^= 0x5a;
	} else if (x->fault == MIG__FAULT_FILE_CORRUPT_DATA && s->len > 4096) {
		/* Inside a literal: the patch succeeds with wrong bytes, as after
		 * a checksum false match; the digest check must catch it. */
		x->fault = MIG__FAULT_NONE;
		/* 1000 bytes into a 64 KiB literal run: clear of the command
		 * bytes between runs. */
		for (size_t i = 1000; i < 1016; i++)
			s->buf[i] ^= 0x5a;
	} else if (x->fault == MIG__FAULT_FILE_TRUNCATE && s->total > 0) {
		x->fault = MIG__FAULT_NONE;
		mig__transport_close(x->e->transport, x->conn, 1001, "fault injected");
		return MIG_ECLOSED;
	}
	return 0;
}

static int flush_sink(struct sink_ctx *s, bool last)
{
	if (!s->len && !last)
		return 0;
	if (s->x->fault) {
		int rc = inject_fault(s);
		if (rc)
			return rc;
	}
	/* Pre-copy rounds go at most at precopy_rate_limit; the final round,
	 * the user paused, at full speed. */
	int rc = s->final ? 0 : mig__xfer_pace(s->x, s->len);
	if (rc)
		return rc;
	rc = mig__xfer_send_chunk(s->x, s->stream, s->buf, s->len, last, true);
	atomic_fetch_add(&s->x->round_sent_bytes, s->len);
	s->total += s->len;
	s->len = 0;
	return rc;
}

static int sink(const uint8_t *data, size_t len, void *ud)
{
	struct sink_ctx *s = ud;
	while (len) {
		size_t n = XFER_CHUNK_BYTES - s->len;
		if (n > len)
			n = len;
		memcpy(s->buf + s->len, data, n);
		s->len += n;
		data += n;
		len -= n;
		if (s->len == XFER_CHUNK_BYTES && (s->error = flush_sink(s, false)) != 0)
			return 1;
	}
	return 0;
}

static int open_stream(struct mig__xfer *x, size_t domain, struct src_file *f, int kind,
		       uint64_t offset, uint64_t size, uint32_t *id)
{
	if (x->fault == MIG__FAULT_FILE_DOTDOT) {
		/* A hostile source: the destination must refuse the frame. */
		x->fault = MIG__FAULT_NONE;
		Migwire__FileStream evil = MIGWIRE__FILE_STREAM__INIT;
		evil.mid = x->mid;
		evil.stream = ++x->next_stream;
		evil.kind = MIGWIRE__STREAM_KIND__STREAM_DELTA;
		evil.domain = x->sd[domain].d->name;
		evil.path = "../evil";
		mig__frame fr = MIGWIRE__FRAME__INIT;
		fr.body_case = MIGWIRE__FRAME__BODY_FILE_STREAM;
		fr.file_stream = &evil;
		mig__xfer_send(x, &fr);
	}
	Migwire__FileStream fs = MIGWIRE__FILE_STREAM__INIT;
	fs.mid = x->mid;
	fs.stream = *id = ++x->next_stream;
	fs.kind = (Migwire__StreamKind)kind;
	fs.domain = x->sd[domain].d->name;
	fs.path = f->path;
	fs.has_round = true;
	fs.round = x->worker_round;
	if (kind == MIGWIRE__STREAM_KIND__STREAM_TAIL) {
		fs.has_offset = true;
		fs.offset = offset;
	}
	fs.has_mode = true;
	fs.mode = f->mode;
	fs.has_size = true;
	fs.size = size;
	if (x->fault == MIG__FAULT_FILE_DATA_OVERRUN && kind == MIGWIRE__STREAM_KIND__STREAM_DATA &&
	    size > 0) {
		/* A hostile source: more bytes follow than announced. */
		x->fault = MIG__FAULT_NONE;
		fs.size = size - 1;
	}
	mig__frame fr = MIGWIRE__FRAME__INIT;
	fr.body_case = MIGWIRE__FRAME__BODY_FILE_STREAM;
	fr.file_stream = &fs;
	return mig__xfer_send(x, &fr);
}

/* Appends bytes [sent_size, size) and extends the digest. */
static int send_tail(struct mig__xfer *x, size_t domain, struct src_file *f, int fd,
		     struct sink_ctx *s, uint64_t limit, char *why, size_t why_len)
{
	int rc = open_stream(x, domain, f, MIGWIRE__STREAM_KIND__STREAM_TAIL, f->sent_size, limit,
			     &s->stream);
	uint64_t off = f->sent_size;
	while (!rc && off < limit) {
		size_t want = XFER_CHUNK_BYTES;
		if (limit - off < want)
			want = (size_t)(limit - off);
		ssize_t n = pread(fd, s->buf, want, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			snprintf(why, why_len, "%s: read failed: %s", f->path,
				 n < 0 ? strerror(errno) : "file shrank");
			return MIG_EIO;
		}
		mig__digest_update(f->dgst, s->buf, (size_t)n);
		s->len = (size_t)n;
		off += (uint64_t)n;
		rc = flush_sink(s, off == limit);
	}
	if (!rc && f->sent_size == limit)
		rc = flush_sink(s, true); /* touched but not grown: an empty tail */
	f->sent_size = limit;
	/* The signature described the old length; a later non-append change
	 * is sent whole rather than against a stale signature. */
	mig__bytes_free(&f->sig);
	return rc;
}

/* What the source keeps of the bytes it sends, computed in the pass that
 * reads them: their digest (RoundEnd, the manifests) and, unless no round
 * follows, their signature (the basis of the next round's delta). */
struct sent_state {
	mig__digest *dgst;
	mig__sigjob *sig;
	mig__bytes next_sig;
};

static int sent_state_init(struct sent_state *ss, bool sign, uint64_t size)
{
	memset(ss, 0, sizeof(*ss));
	if (!(ss->dgst = mig__digest_new()))
		return MIG_ENOMEM;
	if (!sign)
		return 0;
	mig__sig_params p;
	mig__delta_params(size, &p);
	return mig__sigjob_new(&p, &ss->next_sig, &ss->sig);
}

static int sent_state_feed(const uint8_t *data, size_t len, void *ud)
{
	struct sent_state *ss = ud;
	if (mig__digest_update(ss->dgst, data, len) != 0)
		return MIG_ESYSTEM;
	return ss->sig ? mig__sigjob_feed(ss->sig, data, len) : 0;
}

/* The file was sent: what the destination now holds is described by ss. */
static int sent_state_keep(struct sent_state *ss, struct src_file *f, uint64_t limit)
{
	int rc = ss->sig ? mig__sigjob_finish(ss->sig) : 0;
	if (rc)
		return rc;
	mig__sigjob_free(ss->sig);
	ss->sig = NULL;
	mig__bytes_free(&f->sig);
	f->sig = ss->next_sig;
	memset(&ss->next_sig, 0, sizeof(ss->next_sig));
	mig__digest_free(f->dgst);
	f->dgst = ss->dgst;
	ss->dgst = NULL;
	f->sent_size = limit;
	return 0;
}

static void sent_state_free(struct sent_state *ss)
{
	mig__sigjob_free(ss->sig);
	mig__bytes_free(&ss->next_sig);
	mig__digest_free(ss->dgst);
}

/* Sends a delta of the file against what the destination holds (its
 * signature, or nothing), hashing the bytes in the same read (sent_state).
 * A file that already changed once after it was sent (f->hot) is signed in
 * that read too, for the next round's delta; any other file changing later
 * is signed by the destination on request (mig__xsrc_request_signatures), so the
 * common case, a file sent once and never touched again, costs no
 * signature pass at the source. The final round signs nothing: no round
 * follows it but a resend after a digest mismatch, which sends the file
 * whole (redo_task forgets the signature). */
static int send_delta(struct mig__xfer *x, size_t domain, struct src_file *f, int fd,
		      struct sink_ctx *s, uint64_t limit, char *why, size_t why_len)
{
	mig__sig *sig = NULL;
	if (f->sig.len) {
		int rc = mig__delta_load_signature(f->sig.data, f->sig.len, &sig, why, why_len);
		if (rc)
			return rc;
	}
	struct sent_state ss;
	int rc = sent_state_init(&ss, !s->final && f->hot, limit);
	if (!rc)
		rc = open_stream(x, domain, f, MIGWIRE__STREAM_KIND__STREAM_DELTA, 0, limit,
				 &s->stream);
	if (!rc)
		rc = mig__delta_generate_tap(fd, limit, sig, XFER_CHUNK_BYTES, sink, s,
					     sent_state_feed, &ss);
	mig__delta_sig_free(sig);
	if (rc == MIG_ECANCELED && s->error)
		rc = s->error;
	if (!rc)
		rc = flush_sink(s, true);
	if (!rc)
		rc = sent_state_keep(&ss, f, limit);
	sent_state_free(&ss);
	if (rc && !why[0])
		snprintf(why, why_len, "%s: %s", f->path,
			 rc == MIG_EIO ? "read failed" : mig_strerror(rc));
	return rc;
}

/* A file the destination has no copy of goes as plain bytes (a DATA
 * stream): read once, hashed and signed in the same pass, no librsync job
 * on either side. A file that shrinks while it is read is padded with
 * zeros to the announced size; the size check after the send finds it torn
 * and the next round sends it again. */
static int send_data(struct mig__xfer *x, size_t domain, struct src_file *f, int fd,
		     struct sink_ctx *s, uint64_t limit, char *why, size_t why_len)
{
	struct sent_state ss;
	int rc = sent_state_init(&ss, !s->final && f->hot, limit);
	if (!rc)
		rc = open_stream(x, domain, f, MIGWIRE__STREAM_KIND__STREAM_DATA, 0, limit,
				 &s->stream);
	uint64_t off = 0;
	bool eof = false;
	while (!rc && off < limit) {
		size_t want = XFER_CHUNK_BYTES;
		if (limit - off < want)
			want = (size_t)(limit - off);
		ssize_t n = eof ? 0 : pread(fd, s->buf, want, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			snprintf(why, why_len, "%s: read failed: %s", f->path, strerror(errno));
			rc = MIG_EIO;
			break;
		}
		if (n == 0) {
			eof = true;
			memset(s->buf, 0, want);
			n = (ssize_t)want;
		}
		rc = sent_state_feed(s->buf, (size_t)n, &ss);
		s->len = (size_t)n;
		off += (uint64_t)n;
		if (!rc)
			rc = flush_sink(s, off == limit);
	}
	if (!rc && limit == 0)
		rc = flush_sink(s, true);
	if (!rc)
		rc = sent_state_keep(&ss, f, limit);
	sent_state_free(&ss);
	if (rc && !why[0])
		snprintf(why, why_len, "%s: %s", f->path, mig_strerror(rc));
	return rc;
}

int mig__xsrc_send_file(struct mig__xfer *x, size_t domain, struct src_file *f, struct sink_ctx *s,
			char *why, size_t why_len)
{
	struct src_domain *sd = &x->sd[domain];
	int fd = mig__files_open_read(sd->d->root, x->user, f->path);
	if (fd < 0) {
		snprintf(why, why_len, "%s/%s: cannot open", sd->d->name, f->path);
		return fd;
	}
	struct stat st0, st1;
	s->torn = false;
	if (fstat(fd, &st0) != 0) {
		close(fd);
		return MIG_EIO;
	}
	uint64_t limit = (uint64_t)st0.st_size;
	bool tail = sd->d->append_only && f->sent && f->dgst && f->sent_ino == (uint64_t)st0.st_ino &&
		    limit >= f->sent_size;
	/* Tests: a corrupt delta needs a delta, even to an empty destination. */
	bool data = !f->sig.len && x->fault != MIG__FAULT_FILE_CORRUPT_CHUNK;
	int rc = tail   ? send_tail(x, domain, f, fd, s, limit, why, why_len)
		 : data ? send_data(x, domain, f, fd, s, limit, why, why_len)
			: send_delta(x, domain, f, fd, s, limit, why, why_len);
	if (!rc && fstat(fd, &st1) == 0) {
		bool changed = st1.st_size != st0.st_size ||
			       st1.st_mtim.tv_sec != st0.st_mtim.tv_sec ||
			       st1.st_mtim.tv_nsec != st0.st_mtim.tv_nsec;
		f->sent = true;
		f->sent_ino = (uint64_t)st0.st_ino;
		f->sent_mtime_ns = (int64_t)st0.st_mtim.tv_sec * 1000000000 + st0.st_mtim.tv_nsec;
		f->mode = st0.st_mode & 07777;
		f->last_cost = s->total;
		if (changed && !sd->d->append_only) {
			/* Written to while we read it: what we hold as its
			 * signature may not match what was sent, so the next
			 * round sends it whole. The final round happens with
			 * the user paused, so it always ends consistent. */
			mig__bytes_free(&f->sig);
			f->sent_mtime_ns = -1;
			s->torn = true;
		}
	}
	close(fd);
	return rc;
}

/* ------------------------------------------------------------------ signatures in round 1 */

/* Moves signatures dispatch has handed over into the file table; with
 * `create`, also for files the table does not hold yet (only where no
 * pointer into the table is held: mig__xsrc_find_file may move entries). Under
 * fc_lock. */
int mig__xsrc_drain_signatures(struct mig__xfer *x, bool create)
{
	for (struct sig_ready **pp = &x->sig_ready; *pp;) {
		struct sig_ready *r = *pp;
		struct src_file *f = mig__xsrc_find_file(&x->sd[r->domain], r->path, create);
		if (!f) {
			if (create)
				return MIG_ENOMEM;
			pp = &r->next;
			continue;
		}
		mig__bytes_free(&f->sig);
		f->sig = r->bytes; /* empty: the destination holds no copy */
		f->awaiting_sig = false;
		*pp = r->next;
		mig__free(r->path);
		mig__free(r);
	}
	return 0;
}

/* Round 1 starts while the destination is still signing its copy: before
 * a file is sent, wait until its signature has arrived or cannot come any
 * more (a later path has opened in its domain, or RoundDone{0}). Gives up
 * with MIG_ETIMEDOUT when no signature stream opens for `wait_us`. */
int mig__xsrc_wait_basis(struct mig__xfer *x, size_t domain, struct src_file *f, uint64_t wait_us,
			 char *why, size_t why_len)
{
	int rc = 0;
	pthread_mutex_lock(&x->fc_lock);
	for (;;) {
		mig__xsrc_drain_signatures(x, false);
		const char *opened = x->sig_opened[domain];
		bool known = !f->awaiting_sig &&
			     (f->sig.len || x->sigs_done || (opened && strcmp(opened, f->path) > 0));
		if (known)
			break;
		if (atomic_load(&x->cancelled)) {
			rc = MIG_ECANCELED;
			break;
		}
		uint64_t now = mig__now_us();
		uint64_t until = x->sigs_progress_us + wait_us;
		if (now >= until) {
			rc = MIG_ETIMEDOUT;
			snprintf(why, why_len, "no signature from the destination for %llu ms",
				 (unsigned long long)(wait_us / 1000));
			break;
		}
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		uint64_t ns = (uint64_t)ts.tv_nsec + (until - now) * 1000u;
		ts.tv_sec += (time_t)(ns / 1000000000u);
		ts.tv_nsec = (long)(ns % 1000000000u);
		pthread_cond_timedwait(&x->fc_cond, &x->fc_lock, &ts);
	}
	pthread_mutex_unlock(&x->fc_lock);
	return rc;
}

/* Later rounds: a file that changed since it was sent, and that the source
 * did not sign when sending it, is signed by the destination from its
 * staged copy (exactly the bytes sent). The requests go out before the
 * round's first stream; mig__xsrc_wait_basis waits for each answer in turn. */
int mig__xsrc_request_signatures(struct mig__xfer *x)
{
	for (size_t i = 0; i < x->nsd; i++) {
		struct src_domain *sd = &x->sd[i];
		for (size_t k = 0; k < sd->n; k++) {
			struct src_file *f = &sd->files[k];
			if (!mig__xsrc_needs_send(sd, f) || !f->sent || f->sig.len ||
			    f->awaiting_sig)
				continue;
			if (sd->d->append_only && f->dgst && f->sent_ino == f->ino &&
			    f->size >= f->sent_size)
				continue; /* a tail: no delta, no signature */
			Migwire__FileStream fs = MIGWIRE__FILE_STREAM__INIT;
			fs.mid = x->mid;
			fs.stream = ++x->next_stream;
			fs.kind = MIGWIRE__STREAM_KIND__STREAM_SIGNATURE;
			fs.domain = sd->d->name;
			fs.path = f->path;
			fs.has_round = true;
			fs.round = x->worker_round;
			mig__frame fr = MIGWIRE__FRAME__INIT;
			fr.body_case = MIGWIRE__FRAME__BODY_FILE_STREAM;
			fr.file_stream = &fs;
			pthread_mutex_lock(&x->fc_lock);
			x->sig_requests++;
			x->sigs_progress_us = mig__now_us();
			pthread_mutex_unlock(&x->fc_lock);
			int rc = mig__xfer_send(x, &fr);
			if (rc)
				return rc;
			f->awaiting_sig = true;
		}
	}
	return 0;
}

/* A complete signature: checked, then kept as the basis for round 1. */
int mig__xsrc_accept_signature(struct mig__xfer *x, struct sig_stream *s, char *why, size_t why_len)
{
	/* Empty: the destination has no copy of a file the source asked about. */
	int rc = s->bytes.len ? mig__delta_check_signature(s->bytes.data, s->bytes.len,
							   XFER_SIG_MAX, why, why_len)
			      : 0;
	if (rc)
		return rc;
	struct sig_ready *r = mig__calloc(1, sizeof(*r));
	if (!r || !(r->path = mig__strdup(s->path))) {
		mig__free(r);
		return MIG_ENOMEM;
	}
	r->domain = s->domain;
	r->bytes = s->bytes;
	memset(&s->bytes, 0, sizeof(s->bytes));
	pthread_mutex_lock(&x->fc_lock);
	r->next = x->sig_ready;
	x->sig_ready = r;
	pthread_cond_broadcast(&x->fc_cond);
	pthread_mutex_unlock(&x->fc_lock);
	return 0;
}
