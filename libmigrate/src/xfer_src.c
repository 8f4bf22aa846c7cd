/* File transfer, source side: receive the destination's signatures, run
 * pre-copy rounds while the user is served, then the final round after the
 * pause, and build the manifests PREPARE carries.
 *
 * A round costs what changed, not what exists: a file whose size, mtime and
 * inode are as they were when last sent is skipped without being read; in an
 * append-only domain a grown file sends only its new tail. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "handoff_int.h"
#include "xfer_int.h"

/* ------------------------------------------------------------------ file table */

static struct src_file *find_file(struct src_domain *sd, const char *path, bool create)
{
	/* Files are kept sorted by path (scans are sorted), so lookups during a
	 * scan merge are cheap; signatures arrive sorted too. */
	size_t lo = 0, hi = sd->n;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		int c = strcmp(sd->files[mid].path, path);
		if (c == 0)
			return &sd->files[mid];
		if (c < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (!create)
		return NULL;
	if (sd->n == sd->cap) {
		size_t cap = sd->cap ? sd->cap * 2 : 16;
		struct src_file *p = mig__realloc(sd->files, cap * sizeof(*p));
		if (!p)
			return NULL;
		sd->files = p;
		sd->cap = cap;
	}
	char *copy = mig__strdup(path);
	if (!copy)
		return NULL;
	memmove(&sd->files[lo + 1], &sd->files[lo], (sd->n - lo) * sizeof(*sd->files));
	sd->n++;
	struct src_file *f = &sd->files[lo];
	memset(f, 0, sizeof(*f));
	f->path = copy;
	return f;
}

static void file_forget_sent(struct src_file *f)
{
	f->sent = false;
	mig__bytes_free(&f->sig);
	mig__sha256_free(f->sha);
	f->sha = NULL;
}

static void file_free(struct src_file *f)
{
	file_forget_sent(f);
	mig__free(f->path);
}

void mig__xsrc_free(struct mig__xfer *x)
{
	for (size_t i = 0; i < x->nsd; i++) {
		for (size_t k = 0; k < x->sd[i].n; k++)
			file_free(&x->sd[i].files[k]);
		mig__free(x->sd[i].files);
	}
	mig__free(x->sd);
	struct sig_stream *s = x->sigs;
	while (s) {
		struct sig_stream *next = s->next;
		mig__free(s->path);
		mig__bytes_free(&s->bytes);
		mig__free(s);
		s = next;
	}
	for (struct sig_ready *r = x->sig_ready, *next; r; r = next) {
		next = r->next;
		mig__free(r->path);
		mig__bytes_free(&r->bytes);
		mig__free(r);
	}
	for (size_t i = 0; x->sig_opened && i < x->nsd; i++)
		mig__free(x->sig_opened[i]);
	mig__free(x->sig_opened);
	mig__free(x->manifests);
	mig__free(x->manifest_ptrs);
	mig__free(x->entries);
	mig__free(x->entry_ptrs);
	mig__free(x->digests);
}

/* ------------------------------------------------------------------ sending a file */

struct sink_ctx {
	struct mig__xfer *x;
	bool final;       /* the round after the pause */
	bool torn;        /* send_file: the file was written to while read */
	uint32_t stream;
	uint8_t *buf;
	size_t len;
	uint64_t total;
	int error;
};

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
	int rc = mig__xfer_send_chunk(s->x, s->stream, s->buf, s->len, last, true);
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
		mig__sha256_update(f->sha, s->buf, (size_t)n);
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
	mig__sha256 *sha;
	mig__sigjob *sig;
	mig__bytes next_sig;
};

static int sent_state_init(struct sent_state *ss, bool sign, uint64_t size)
{
	memset(ss, 0, sizeof(*ss));
	if (!(ss->sha = mig__sha256_new()))
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
	if (mig__sha256_update(ss->sha, data, len) != 0)
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
	mig__sha256_free(f->sha);
	f->sha = ss->sha;
	ss->sha = NULL;
	f->sent_size = limit;
	return 0;
}

static void sent_state_free(struct sent_state *ss)
{
	mig__sigjob_free(ss->sig);
	mig__bytes_free(&ss->next_sig);
	mig__sha256_free(ss->sha);
}

/* Sends a delta of the file against what the destination holds (its
 * signature, or nothing), hashing the bytes in the same read (sent_state).
 * A file that already changed once after it was sent (f->hot) is signed in
 * that read too, for the next round's delta; any other file changing later
 * is signed by the destination on request (request_signatures), so the
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

static int send_file(struct mig__xfer *x, size_t domain, struct src_file *f, struct sink_ctx *s,
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
	bool tail = sd->d->append_only && f->sent && f->sha && f->sent_ino == (uint64_t)st0.st_ino &&
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
 * pointer into the table is held: find_file may move entries). Under
 * fc_lock. */
static int drain_signatures(struct mig__xfer *x, bool create)
{
	for (struct sig_ready **pp = &x->sig_ready; *pp;) {
		struct sig_ready *r = *pp;
		struct src_file *f = find_file(&x->sd[r->domain], r->path, create);
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
static int wait_basis(struct mig__xfer *x, size_t domain, struct src_file *f, uint64_t wait_us,
		      char *why, size_t why_len)
{
	int rc = 0;
	pthread_mutex_lock(&x->fc_lock);
	for (;;) {
		drain_signatures(x, false);
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
 * round's first stream; wait_basis waits for each answer in turn. */
static bool needs_send(const struct src_domain *sd, const struct src_file *f);

static int request_signatures(struct mig__xfer *x)
{
	for (size_t i = 0; i < x->nsd; i++) {
		struct src_domain *sd = &x->sd[i];
		for (size_t k = 0; k < sd->n; k++) {
			struct src_file *f = &sd->files[k];
			if (!needs_send(sd, f) || !f->sent || f->sig.len || f->awaiting_sig)
				continue;
			if (sd->d->append_only && f->sha && f->sent_ino == f->ino &&
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

/* ------------------------------------------------------------------ rounds */

/* The bytes a changed file will cost this round: in an append-only
 * domain its new tail; else what its last send cost (a delta costs about
 * as much again when the app keeps writing the same places), but never
 * less than what it grew by, which any delta carries as new data (a log
 * segment still being written costs its growth, however little its last
 * send took). */
static uint64_t change_estimate(const struct src_domain *sd, const struct src_file *f,
				const mig__file_entry *fe)
{
	uint64_t grown = fe->size > f->sent_size ? fe->size - f->sent_size : 0;
	if (sd->d->append_only && grown)
		return grown;
	uint64_t cost = f->last_cost > fe->size ? fe->size : f->last_cost;
	return (cost > grown ? cost : grown) + 1;
}

/* Updates the table from a fresh scan; returns the bytes the next round is
 * predicted to cost (sum over files that changed since last sent). */
static int scan_all(struct mig__xfer *x, uint64_t *estimate, char *why, size_t why_len)
{
	*estimate = 0;
	for (size_t i = 0; i < x->nsd; i++) {
		struct src_domain *sd = &x->sd[i];
		mig__file_list list = {0};
		int rc = mig__files_scan(sd->d->root, x->user, &list, why, why_len);
		if (rc)
			return rc;
		for (size_t k = 0; k < sd->n; k++)
			sd->files[k].present = false;
		for (size_t k = 0; k < list.count; k++) {
			mig__file_entry *fe = &list.entries[k];
			struct src_file *f = find_file(sd, fe->path, true);
			if (!f) {
				mig__file_list_free(&list);
				return MIG_ENOMEM;
			}
			f->present = true;
			f->size = fe->size;
			f->mtime_ns = fe->mtime_ns;
			f->ino = fe->ino;
			f->dev = fe->dev;
			f->mode = fe->mode;
			if (!f->sent)
				*estimate += fe->size;
			else if (f->sent_size != fe->size || f->sent_mtime_ns != fe->mtime_ns ||
				 f->sent_ino != fe->ino)
				*estimate += change_estimate(sd, f, fe);
		}
		mig__file_list_free(&list);
	}
	return 0;
}

static bool needs_send(const struct src_domain *sd, const struct src_file *f)
{
	MIG__UNUSED(sd);
	return f->present && (!f->sent || f->sent_size != f->size || f->sent_mtime_ns != f->mtime_ns ||
			      f->sent_ino != f->ino);
}

/* The files a round sent, with their digests, for RoundEnd. */
struct sent_list {
	Migwire__FileEntry *entries;
	Migwire__FileEntry **ptrs;
	uint8_t *digests;
	size_t n;
	size_t cap;
};

static int sent_add(struct sent_list *l, const char *domain, const struct src_file *f)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 16;
		Migwire__FileEntry *e = mig__realloc(l->entries, cap * sizeof(*e));
		if (!e)
			return MIG_ENOMEM;
		l->entries = e;
		uint8_t *d = mig__realloc(l->digests, cap * 32);
		if (!d)
			return MIG_ENOMEM;
		l->digests = d;
		l->cap = cap;
	}
	Migwire__FileEntry *e = &l->entries[l->n];
	migwire__file_entry__init(e);
	e->path = mig__asprintf("%s/%s", domain, f->path);
	if (!e->path || !f->sha || mig__sha256_peek(f->sha, l->digests + 32 * l->n) != 0) {
		mig__free(e->path);
		return e->path ? MIG_ESYSTEM : MIG_ENOMEM;
	}
	e->size = f->sent_size;
	e->sha256.len = 32;
	l->n++;
	return 0;
}

static void sent_free(struct sent_list *l)
{
	for (size_t i = 0; i < l->n; i++)
		mig__free(l->entries[i].path);
	mig__free(l->entries);
	mig__free(l->ptrs);
	mig__free(l->digests);
}

/* Sends one round; `final` rounds also build the manifests. */
static int send_round(struct mig__xfer *x, bool final, uint64_t sig_wait_us, char *why,
		      size_t why_len)
{
	struct sink_ctx s = {.x = x, .final = final};
	s.buf = mig__malloc(XFER_CHUNK_BYTES);
	if (!s.buf)
		return MIG_ENOMEM;
	int rc = 0;
	char **deleted = NULL;
	size_t ndeleted = 0, cap_deleted = 0;
	struct sent_list sent = {0};
	if (x->worker_round > 1)
		rc = request_signatures(x);
	for (size_t i = 0; i < x->nsd && !rc; i++) {
		struct src_domain *sd = &x->sd[i];
		for (size_t k = 0; k < sd->n && !rc; k++) {
			struct src_file *f = &sd->files[k];
			if (needs_send(sd, f)) {
				s.total = 0;
				f->hot = f->hot || f->sent;
				rc = wait_basis(x, i, f, sig_wait_us, why, why_len);
				if (!rc)
					rc = send_file(x, i, f, &s, why, why_len);
				/* A file written to while a pre-copy round read it
				 * is not listed for the destination's digest check:
				 * its digest (a later read) need not match the bytes
				 * sent, and the mismatch would spend the budget for
				 * checksum false matches (XFER_MAX_REDO) on an app
				 * that merely writes, aborting the migration with
				 * MIG_EPROTO after three. It is resent whole next
				 * round anyway; the final round (user paused) and
				 * PREPARE's manifests check everything. */
				if (!rc && !(s.torn && !final))
					rc = sent_add(&sent, sd->d->name, f);
			} else if (!f->present && f->sent) {
				if (ndeleted == cap_deleted) {
					cap_deleted = cap_deleted ? 2 * cap_deleted : 16;
					char **p = mig__realloc(deleted, cap_deleted * sizeof(*p));
					if (!p) {
						rc = MIG_ENOMEM;
						break;
					}
					deleted = p;
				}
				deleted[ndeleted] = mig__asprintf("%s/%s", sd->d->name, f->path);
				if (!deleted[ndeleted]) {
					rc = MIG_ENOMEM;
					break;
				}
				ndeleted++;
				file_forget_sent(f);
			}
		}
	}
	if (!rc) {
		Migwire__RoundEnd re = MIGWIRE__ROUND_END__INIT;
		re.mid = x->mid;
		re.round = x->worker_round;
		re.n_deleted = ndeleted;
		re.deleted = deleted;
		re.has_final = final;
		re.final = final;
		/* Pointers into the arrays only now: they may have moved while
		 * the list grew. */
		sent.ptrs = mig__calloc(sent.n ? sent.n : 1, sizeof(*sent.ptrs));
		if (!sent.ptrs)
			rc = MIG_ENOMEM;
		for (size_t i = 0; sent.ptrs && i < sent.n; i++) {
			sent.entries[i].sha256.data = sent.digests + 32 * i;
			sent.ptrs[i] = &sent.entries[i];
		}
		re.n_sent = sent.n;
		re.sent = sent.ptrs;
		mig__frame fr = MIGWIRE__FRAME__INIT;
		fr.body_case = MIGWIRE__FRAME__BODY_ROUND_END;
		fr.round_end = &re;
		if (!rc)
			rc = mig__xfer_send(x, &fr);
	}
	sent_free(&sent);
	for (size_t i = 0; i < ndeleted; i++)
		mig__free(deleted[i]);
	mig__free(deleted);
	mig__free(s.buf);
	return rc;
}

static int build_manifests(struct mig__xfer *x)
{
	/* A resend after a false match builds them again. */
	mig__free(x->manifests);
	mig__free(x->manifest_ptrs);
	mig__free(x->entries);
	mig__free(x->entry_ptrs);
	mig__free(x->digests);
	x->manifests = NULL;
	x->manifest_ptrs = NULL;
	x->entries = NULL;
	x->entry_ptrs = NULL;
	x->digests = NULL;
	x->nmanifests = 0;
	size_t total = 0;
	for (size_t i = 0; i < x->nsd; i++)
		for (size_t k = 0; k < x->sd[i].n; k++)
			total += x->sd[i].files[k].present;
	x->manifests = mig__calloc(x->nsd ? x->nsd : 1, sizeof(*x->manifests));
	x->manifest_ptrs = mig__calloc(x->nsd ? x->nsd : 1, sizeof(*x->manifest_ptrs));
	x->entries = mig__calloc(total ? total : 1, sizeof(*x->entries));
	x->entry_ptrs = mig__calloc(total ? total : 1, sizeof(*x->entry_ptrs));
	/* Digests live inside the entries' own storage: 32 bytes each. */
	uint8_t *digests = x->digests = mig__calloc(total ? total : 1, 32);
	if (!x->manifests || !x->manifest_ptrs || !x->entries || !x->entry_ptrs || !digests)
		return MIG_ENOMEM;
	size_t e = 0;
	for (size_t i = 0; i < x->nsd; i++) {
		Migwire__FileManifest *fm = &x->manifests[i];
		migwire__file_manifest__init(fm);
		fm->domain = x->sd[i].d->name;
		fm->files = &x->entry_ptrs[e];
		for (size_t k = 0; k < x->sd[i].n; k++) {
			struct src_file *f = &x->sd[i].files[k];
			if (!f->present)
				continue;
			Migwire__FileEntry *fe = &x->entries[e];
			migwire__file_entry__init(fe);
			fe->path = f->path;
			fe->size = f->sent_size;
			fe->sha256.data = digests + 32 * e;
			fe->sha256.len = 32;
			if (!f->sha || mig__sha256_peek(f->sha, fe->sha256.data) != 0)
				return MIG_ESYSTEM;
			x->entry_ptrs[e] = fe;
			fm->n_files++;
			e++;
		}
		x->manifest_ptrs[i] = fm;
	}
	x->nmanifests = x->nsd;
	return 0;
}

struct round_job {
	struct mig__xfer *x;
	struct mig__xfer_done *done; /* reserved when posted */
	unsigned round;
	bool final;
	uint64_t alpha_us;
	unsigned max_rounds;
	double throughput;
	uint64_t sig_wait_us; /* round 1: how long to wait for a signature */
};

static void round_sent(mig_engine *e, struct mig_migration *m, int value, uint64_t aux, const char *why);
static void round_stop(mig_engine *e, struct mig_migration *m, int value, uint64_t aux, const char *why);
static void record_round(struct mig_migration *m, int round, uint64_t bytes)
{
	if (round >= 1 && round <= 16)
		m->round_bytes[round - 1] = bytes;
	m->rounds = (unsigned)round;
	m->bytes_sent += mig__xfer_collect_sent(m);
	m->progress_pending = true; /* a PROGRESS event, from the tick */
	if (m->engine)
		m->engine->metrics.file_rounds++;
}

static void round_failed(mig_engine *e, struct mig_migration *m, int value, uint64_t aux,
			 const char *why)
{
	mig__src_files_failed(e, m, value, why);
}
static void final_sent(mig_engine *e, struct mig_migration *m, int value, uint64_t aux, const char *why)
{
	MIG__UNUSED(why);
	record_round(m, value, aux);
	/* PREPARE waits for the destination's RoundDone: every file checked
	 * (see round_sent for the allowance). */
	m->deadline_us = mig__now_us() + mig__handoff_timeout_us(e) + aux / 8;
}

static void round_job_free(void *arg)
{
	struct round_job *j = arg;
	mig__xfer_done_free(j->done);
	mig__free(j);
}

static void round_task(void *arg)
{
	struct round_job *j = arg;
	struct mig__xfer *x = j->x;
	char why[MIG__REASON_MAX] = "";
	uint64_t estimate = 0;
	x->worker_round = j->round;
	atomic_store(&x->round_sent_bytes, 0);
	pthread_mutex_lock(&x->fc_lock);
	int rc = drain_signatures(x, true);
	pthread_mutex_unlock(&x->fc_lock);
	if (!rc)
		rc = atomic_load(&x->cancelled) ? MIG_ECANCELED
						: scan_all(x, &estimate, why, sizeof(why));
	if (!rc && !j->final && j->round > 1) {
		/* The stop rule: the final round would be short, or rounds
		 * stopped shrinking, or the cap is reached. */
		double predicted_us = j->throughput > 0 ? (double)estimate / j->throughput * 1e6 : 0;
		bool stop = predicted_us < (double)j->alpha_us || estimate >= x->prev_estimate ||
			    j->round >= j->max_rounds;
		x->prev_estimate = estimate;
		if (stop) {
			mig__xfer_done_post(j->done, round_stop, 0, 0, "");
			mig__free(j);
			return;
		}
	}
	x->prev_estimate = estimate;
	if (!rc)
		rc = send_round(x, j->final, j->sig_wait_us, why, sizeof(why));
	if (!rc && j->final)
		rc = build_manifests(x);
	if (rc) {
		if (!why[0])
			snprintf(why, sizeof(why), "file round %u: %s", j->round, mig_strerror(rc));
		mig__xfer_done_post(j->done, round_failed, rc, 0, why);
	} else {
		mig__xfer_done_post(j->done, j->final ? final_sent : round_sent, (int)j->round,
				    atomic_load(&x->round_sent_bytes), "");
	}
	mig__free(j);
}

static void post_round(mig_engine *e, struct mig_migration *m, bool final)
{
	struct mig__xfer *x = m->xfer;
	struct round_job *j = mig__calloc(1, sizeof(*j));
	if (!j || !(j->done = mig__xfer_done_new(x))) {
		mig__free(j);
		mig__src_files_failed(e, m, MIG_ENOMEM, "out of memory");
		return;
	}
	j->round = ++x->round;
	j->x = x;
	j->final = final;
	j->alpha_us = (uint64_t)e->precopy_alpha_ms * 1000u;
	j->max_rounds = e->precopy_max_rounds;
	j->throughput = x->throughput;
	j->sig_wait_us = mig__handoff_timeout_us(e);
	x->round_started_us = mig__now_us();
	m->deadline_us = 0; /* our own work: no peer deadline while it runs */
	if (mig__strand_post(x->strand, round_task, round_job_free, j) != 0) {
		round_job_free(j);
		mig__src_files_failed(e, m, MIG_ENOMEM, "out of memory");
	}
}

static void round_sent(mig_engine *e, struct mig_migration *m, int value, uint64_t aux, const char *why)
{
	MIG__UNUSED(why);
	record_round(m, value, aux);
	/* Waiting for the destination's RoundDone now (unless it came first):
	 * it still has to patch and hash what it received, so the wait grows
	 * with the round's size (8 MiB/s is a slow disk). */
	if ((unsigned)value == m->xfer->round)
		m->deadline_us = mig__now_us() + mig__handoff_timeout_us(e) + aux / 8;
}

static void round_stop(mig_engine *e, struct mig_migration *m, int value, uint64_t aux, const char *why)
{
	MIG__UNUSED(value);
	MIG__UNUSED(why);
	m->xfer->round--; /* that round was not sent; the final one takes its number */
	mig__src_precopy_done(e, m);
}

struct redo_job {
	struct mig__xfer *x;
	size_t n;
	char *paths[];
};

static void redo_free(void *arg)
{
	struct redo_job *j = arg;
	for (size_t i = 0; i < j->n; i++)
		mig__free(j->paths[i]);
	mig__free(j);
}

/* Files the destination could not reproduce are sent whole next time. */
static void redo_task(void *arg)
{
	struct redo_job *j = arg;
	struct mig__xfer *x = j->x;
	for (size_t i = 0; i < j->n; i++) {
		char *slash = strchr(j->paths[i], '/');
		*slash = '\0';
		for (size_t d = 0; d < x->nsd; d++) {
			if (strcmp(x->sd[d].d->name, j->paths[i]) != 0)
				continue;
			struct src_file *f = find_file(&x->sd[d], slash + 1, false);
			if (f)
				file_forget_sent(f);
		}
	}
	redo_free(j);
}

static int post_redo(struct mig__xfer *x, const Migwire__RoundDone *rd)
{
	struct redo_job *j = mig__calloc(1, sizeof(*j) + rd->n_redo * sizeof(char *));
	if (!j)
		return MIG_ENOMEM;
	j->x = x;
	for (; j->n < rd->n_redo; j->n++)
		if (!(j->paths[j->n] = mig__strdup(rd->redo[j->n]))) {
			redo_free(j);
			return MIG_ENOMEM;
		}
	int rc = mig__strand_post(x->strand, redo_task, redo_free, j);
	if (rc)
		redo_free(j);
	return rc;
}

static void prepare_ready(mig_engine *e, struct mig_migration *m, int value, uint64_t aux,
			  const char *why)
{
	mig__src_final_sent(e, m);
}

/* Runs after everything queued on the strand (the final round and its
 * manifests), then lets dispatch send PREPARE. `arg` is its completion. */
static void ready_task(void *arg)
{
	mig__xfer_done_post(arg, prepare_ready, 0, 0, "");
}

static int post_ready(struct mig__xfer *x)
{
	struct mig__xfer_done *d = mig__xfer_done_new(x);
	if (!d || mig__strand_post(x->strand, ready_task, mig__xfer_done_free, d) != 0) {
		mig__xfer_done_free(d);
		return MIG_ENOMEM;
	}
	return 0;
}

/* ------------------------------------------------------------------ entry points */

int mig__xsrc_start(mig_engine *e, struct mig_migration *m)
{
	struct mig__xfer *x = mig__xfer_new(e, m, true);
	if (!x)
		return MIG_ENOMEM;
	x->sd = mig__calloc(e->nfdomains, sizeof(*x->sd));
	if (!x->sd) {
		mig__xfer_end(e, m, false);
		return MIG_ENOMEM;
	}
	x->nsd = e->nfdomains;
	for (size_t i = 0; i < e->nfdomains; i++)
		x->sd[i].d = &e->fdomains[i];
	x->sig_opened = mig__calloc(x->nsd ? x->nsd : 1, sizeof(*x->sig_opened));
	if (!x->sig_opened) {
		mig__xfer_end(e, m, false);
		return MIG_ENOMEM;
	}
	x->sigs_progress_us = mig__now_us();
	m->deadline_us = mig__now_us() + mig__handoff_timeout_us(e);
	/* With pre-copy, round 1 starts now and takes each file's signature
	 * as it arrives (wait_basis), so the destination's signing overlaps
	 * the source's deltas. Without pre-copy the user is paused only once
	 * every signature is in (RoundDone{0}), as before. */
	if (e->precopy_max_rounds > 1)
		post_round(e, m, false);
	return 0;
}

void mig__xsrc_final(mig_engine *e, struct mig_migration *m)
{
	post_round(e, m, true);
}

void mig__xsrc_manifests(struct mig_migration *m, Migwire__FileManifest ***out, size_t *n)
{
	struct mig__xfer *x = m->xfer;
	*out = x ? x->manifest_ptrs : NULL;
	*n = x ? x->nmanifests : 0;
}

static size_t domain_index(struct mig__xfer *x, const char *name)
{
	for (size_t i = 0; i < x->nsd; i++)
		if (strcmp(x->sd[i].d->name, name) == 0)
			return i;
	return SIZE_MAX;
}

static struct sig_stream *find_sig_stream(struct mig__xfer *x, uint32_t id)
{
	for (struct sig_stream *s = x->sigs; s; s = s->next)
		if (s->id == id)
			return s;
	return NULL;
}

/* A complete signature: checked, then kept as the basis for round 1. */
static int accept_signature(struct mig__xfer *x, struct sig_stream *s, char *why, size_t why_len)
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

void mig__xsrc_on_frame(mig_engine *e, struct mig_migration *m, const mig__frame *f)
{
	struct mig__xfer *x = m->xfer;
	char why[MIG__REASON_MAX] = "";
	int rc = 0;
	switch (f->body_case) {
	case MIGWIRE__FRAME__BODY_FILE_STREAM: {
		const Migwire__FileStream *fs = f->file_stream;
		size_t d = domain_index(x, fs->domain);
		pthread_mutex_lock(&x->fc_lock);
		bool expected = !x->sigs_done || x->sig_requests > 0;
		if (expected && x->sigs_done && fs->kind == MIGWIRE__STREAM_KIND__STREAM_SIGNATURE)
			x->sig_requests--; /* an answer to request_signatures */
		pthread_mutex_unlock(&x->fc_lock);
		if (!expected || fs->kind != MIGWIRE__STREAM_KIND__STREAM_SIGNATURE ||
		    d == SIZE_MAX || find_sig_stream(x, fs->stream)) {
			rc = MIG_EPROTO;
			snprintf(why, sizeof(why), "unexpected file stream from the destination");
			break;
		}
		struct sig_stream *s = mig__calloc(1, sizeof(*s));
		char *opened = mig__strdup(fs->path);
		if (!s || !opened || !(s->path = mig__strdup(fs->path))) {
			mig__free(s);
			mig__free(opened);
			rc = MIG_ENOMEM;
			break;
		}
		pthread_mutex_lock(&x->fc_lock);
		mig__free(x->sig_opened[d]);
		x->sig_opened[d] = opened;
		x->sigs_progress_us = mig__now_us();
		pthread_cond_broadcast(&x->fc_cond);
		pthread_mutex_unlock(&x->fc_lock);
		s->id = fs->stream;
		s->domain = d;
		s->next = x->sigs;
		x->sigs = s;
		break;
	}
	case MIGWIRE__FRAME__BODY_CHUNK: {
		const Migwire__Chunk *c = f->chunk;
		struct sig_stream *s = find_sig_stream(x, c->stream);
		if (!s) {
			rc = MIG_EPROTO;
			snprintf(why, sizeof(why), "chunk for an unknown stream %u", c->stream);
			break;
		}
		uint8_t *data = NULL;
		size_t len = 0;
		rc = mig__xfer_chunk_data(c, &data, &len, why, sizeof(why));
		if (!rc && (x->sig_bytes += len) > XFER_SIG_MAX) {
			rc = MIG_ETOOBIG;
			snprintf(why, sizeof(why), "signatures larger than %u bytes", XFER_SIG_MAX);
		}
		if (!rc)
			rc = mig__bytes_append(&s->bytes, data, len);
		mig__free(data);
		if (!rc && c->has_last && c->last)
			rc = accept_signature(x, s, why, sizeof(why));
		break;
	}
	case MIGWIRE__FRAME__BODY_CREDIT:
		m->progress_pending = true; /* data is flowing: the tick reports it */
		mig__xfer_credit(x, f->credit->bytes);
		x->credited_bytes += f->credit->bytes;
		if (!x->first_chunk_us)
			x->first_chunk_us = x->round_started_us;
		if (mig__now_us() > x->first_chunk_us + 1000)
			atomic_store(&x->link_bytes_per_s,
				     (uint64_t)((double)x->credited_bytes * 1e6 /
						(double)(mig__now_us() - x->first_chunk_us)));
		if (m->deadline_us)
			m->deadline_us = mig__now_us() + mig__handoff_timeout_us(e);
		return;
	case MIGWIRE__FRAME__BODY_ROUND_DONE: {
		const Migwire__RoundDone *rd = f->round_done;
		if (rd->has_code && rd->code) {
			snprintf(why, sizeof(why), "destination: %s", rd->reason ? rd->reason : "");
			rc = rd->code;
			break;
		}
		if (rd->round == 0 && !x->sigs_done) {
			/* Every signature is in: round 1 need not wait any more. */
			pthread_mutex_lock(&x->fc_lock);
			x->sigs_done = true;
			pthread_cond_broadcast(&x->fc_cond);
			pthread_mutex_unlock(&x->fc_lock);
		}
		if (rd->round != x->round)
			return; /* a stray, or round 0's end while round 1 runs */
		if (rd->n_redo) {
			mig__engine_log(e, MIG_LOG_INFO,
					"migration %s: %zu files to resend whole after round %u",
					m->mid, rd->n_redo, rd->round);
			if (++x->redo_rounds > XFER_MAX_REDO) {
				rc = MIG_EPROTO;
				snprintf(why, sizeof(why), "files still differ after %u resends",
					 XFER_MAX_REDO);
				break;
			}
			if ((rc = post_redo(x, rd)) != 0)
				break;
		}
		if (m->phase == MIG__SRC_FINAL) {
			if (rd->n_redo)
				post_round(e, m, true); /* still paused: resend, whole */
			else
				rc = post_ready(x);
			break;
		}
		if (x->round == 0) {
			if (e->precopy_max_rounds <= 1) {
				mig__src_precopy_done(e, m);
				return;
			}
			post_round(e, m, false);
			return;
		}
		uint64_t took = mig__now_us() - x->round_started_us;
		x->throughput =
			took ? (double)atomic_load(&x->round_sent_bytes) * 1e6 / (double)took : 0;
		if (m->phase == MIG__SRC_PRECOPY)
			post_round(e, m, false);
		return;
	}
	default:
		rc = MIG_EPROTO;
		snprintf(why, sizeof(why), "unexpected %s from the destination", mig__wire_body_name(f));
		break;
	}
	if (rc)
		mig__src_files_failed(e, m, rc, why[0] ? why : mig_strerror(rc));
}
