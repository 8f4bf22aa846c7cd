/* File state of replication, primary side: the rounds (replica_files.h;
 * docs/FAILOVER.md "File state"). The standby's staging, install and
 * promotion of the same files are in replica_files_standby.c.
 *
 * Reuses the migration's file machinery: mig__files_scan and the confined
 * opens of files.c, librsync signatures and deltas of delta.c. What differs
 * from a migration is who keeps the basis: the primary remembers, per file,
 * the signature of what it last sent (computed in the same pass that read
 * it), so an update needs no signature round trip; it becomes the basis of
 * the next update once the standby acknowledged it.
 *
 * Consistency on the primary: the app keeps writing while a file is read.
 * A file is sent only if its size and mtime are the same before and after
 * the read (for an append-only domain: it only grew; the bytes up to the
 * size seen first are sent); otherwise it is read again, up to three times,
 * and then left at the standby's previous copy until the next update. A file
 * modified within the timestamp granularity of its read is marked to be
 * compared again next time (its delta is then a few bytes if it did not
 * change). The standby checks every patched file against the digest of
 * the bytes the primary read. */
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "delta.h"
#include "digest.h"
#include "files.h"
#include "replica_files.h"
#include "transport.h"

/* File bytes one update may queue to the connection, in frame caps (32 MiB
 * at the default cap): past it, the files not yet sent wait for the next
 * update, which follows as soon as this one is acknowledged. A file is
 * never split, so one update can exceed it by one file. */
#define RF_UPDATE_FRAMES 8u
/* Reads of a file that keeps changing before it is left for next time. */
#define RF_ATTEMPTS 3
/* A file modified this recently is compared again at the next update. */
#define RF_RACY_NS (50ll * 1000 * 1000)

/* ================================================================ primary */

typedef struct rf_file {
	char *path;
	uint64_t size;
	int64_t mtime_ns; /* INT64_MIN: compare again next time */
	uint64_t ino;
	uint32_t mode;
	uint8_t dgst[MIG__DIGEST_LEN];  /* of the content the standby holds */
	mig__bytes sig;   /* signature of that content (append-only: of a prefix) */
	/* Append-only domains: the running digest of that content, so a grown
	 * file is read from its old end only. Moved, never copied: an entry
	 * without one takes the whole-file path once. */
	mig__digest *run;
} rf_file;

typedef struct rf_dom {
	rf_file *v;
	size_t n, cap;
} rf_dom;

struct mig__rfset {
	size_t ndom;
	rf_dom *dom;
};

static void rf_file_clear(rf_file *f)
{
	mig__free(f->path);
	mig__bytes_free(&f->sig);
	mig__digest_free(f->run);
	f->run = NULL;
}

void mig__rfset_free(mig__rfset *s)
{
	if (!s)
		return;
	for (size_t d = 0; d < s->ndom; d++) {
		for (size_t i = 0; i < s->dom[d].n; i++)
			rf_file_clear(&s->dom[d].v[i]);
		mig__free(s->dom[d].v);
	}
	mig__free(s->dom);
	mig__free(s);
}

static mig__rfset *rfset_new(size_t ndom)
{
	mig__rfset *s = mig__calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->dom = mig__calloc(ndom ? ndom : 1, sizeof(*s->dom));
	if (!s->dom) {
		mig__free(s);
		return NULL;
	}
	s->ndom = ndom;
	return s;
}

/* Appends *f (taken on success). */
static int rf_dom_push(rf_dom *d, rf_file *f)
{
	if (d->n == d->cap) {
		size_t cap = d->cap ? d->cap * 2 : 16;
		rf_file *v = mig__realloc(d->v, cap * sizeof(*v));
		if (!v)
			return MIG_ENOMEM;
		d->v = v;
		d->cap = cap;
	}
	d->v[d->n++] = *f;
	return 0;
}

/* Appends a copy of *f. */
static int rf_dom_copy(rf_dom *d, const rf_file *f)
{
	rf_file c = *f;
	c.path = mig__strdup(f->path);
	c.run = NULL;
	memset(&c.sig, 0, sizeof(c.sig));
	if (!c.path || mig__bytes_append(&c.sig, f->sig.data, f->sig.len) ||
	    rf_dom_push(d, &c)) {
		rf_file_clear(&c);
		return MIG_ENOMEM;
	}
	return 0;
}

struct mig__rfjob {
	mig_engine *e;
	mig__transport *t;
	size_t max_frame;
	mig__evq *events;
	mig__tev *ev; /* the completion, reserved at start; NULL once posted */
	mig__rfjob_done_fn done;
	char *user;
	uint64_t epoch, seq, conn;
	size_t ndom;
	char **roots;
	char **names;
	bool *append_only;
	mig__rfset *base;
	mig__rfset *next;
	atomic_bool cancel;
	enum mig__fault_point fault; /* tests: a fault to inject, once */
	/* Results, written by the task, read after the completion. */
	int err;
	char why[MIG__REASON_MAX];
	uint32_t streams;
	uint64_t bytes;
	bool busy;
	bool more;    /* files left for the next update (the budget ran out) */
	size_t piece; /* delta bytes per piece */
	uint64_t budget;
};

void mig__rfjob_free(mig__rfjob *j)
{
	if (!j)
		return;
	mig__free(j->ev);
	for (size_t d = 0; d < j->ndom; d++) {
		if (j->roots)
			mig__free(j->roots[d]);
		if (j->names)
			mig__free(j->names[d]);
	}
	mig__free(j->roots);
	mig__free(j->names);
	mig__free(j->append_only);
	mig__rfset_free(j->base);
	mig__rfset_free(j->next);
	mig__free(j->user);
	mig__free(j);
}

static void rfjob_discard(void *arg)
{
	mig__rfjob_free(arg);
}

static void rfjob_call(void *ctx, void *arg)
{
	mig__rfjob *j = arg;
	j->done(ctx, j);
}

static void rfjob_post(mig__rfjob *j)
{
	mig__tev *ev = j->ev;
	j->ev = NULL;
	ev->type = MIG__TEV_CALL;
	ev->call = rfjob_call;
	ev->discard = rfjob_discard;
	ev->arg = j;
	mig__evq_push(j->events, &ev->link);
}

typedef struct piece_out {
	mig__rfjob *j;
	size_t d;
	const char *path;
	uint32_t index;
	bool first;
	bool delta;
	uint64_t size;
	uint8_t *buf; /* the piece held back, so the last one can carry the digest */
	size_t len;
	bool held;
	bool tail;    /* an appended tail from tail_from, raw bytes */
	uint64_t tail_from;
} piece_out;

static int send_frame(mig__rfjob *j, const Migwire__ReplicaFile *rf)
{
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_REPLICA_FILE;
	f.replica_file = (Migwire__ReplicaFile *)rf;
	mig__msg *msg = NULL;
	int rc = mig__wire_encode(&f, j->max_frame, &msg);
	if (rc)
		return rc;
	j->bytes += msg->len;
	mig__transport_send(j->t, j->conn, msg);
	return 0;
}

/* Tests (the same fault points as a migration's source): a hostile or
 * broken primary, and a link cut in the middle of an update. */
static int inject_fault(piece_out *o, uint8_t *data, size_t len, bool last)
{
	mig__rfjob *j = o->j;
	if (j->fault == MIG__FAULT_FILE_DOTDOT) {
		j->fault = MIG__FAULT_NONE;
		Migwire__ReplicaFile evil = MIGWIRE__REPLICA_FILE__INIT;
		evil.user = j->user;
		evil.epoch = j->epoch;
		evil.seq = j->seq;
		evil.index = o->index;
		evil.domain = j->names[o->d];
		evil.path = (char *)"../evil";
		evil.has_first = evil.first = true;
		evil.has_data = true;
		evil.data.data = (uint8_t *)"evil";
		evil.data.len = 4;
		return send_frame(j, &evil);
	}
	if (j->fault == MIG__FAULT_FILE_CORRUPT_CHUNK && o->delta && data && len > 64) {
		/* Not a delta any more: its magic is gone. */
		j->fault = MIG__FAULT_NONE;
		for (size_t i = 0; i < 16; i++)
			data[i] ^= 0x5a;
	} else if (j->fault == MIG__FAULT_FILE_TRUNCATE && !o->first && !last) {
		/* A piece of this file went out: the link drops once it had
		 * time to arrive (a close discards what is still queued). */
		j->fault = MIG__FAULT_NONE;
		usleep(300 * 1000);
		mig__transport_close(j->t, j->conn, 1001, "fault injected");
		return MIG_ECLOSED;
	}
	return 0;
}

static int send_piece(piece_out *o, const uint8_t *data, size_t len, bool last, bool remove,
		      const uint8_t dgst[MIG__DIGEST_LEN], uint32_t mode)
{
	mig__rfjob *j = o->j;
	if (atomic_load(&j->cancel))
		return MIG_ECANCELED;
	if (j->fault && !remove) {
		int rc = inject_fault(o, (uint8_t *)data, len, last);
		if (rc)
			return rc;
	}
	Migwire__ReplicaFile rf = MIGWIRE__REPLICA_FILE__INIT;
	rf.user = j->user;
	rf.epoch = j->epoch;
	rf.seq = j->seq;
	rf.index = o->index;
	rf.domain = j->names[o->d];
	rf.path = (char *)o->path;
	if (remove) {
		rf.has_remove = rf.remove = true;
	} else {
		rf.has_delta = true;
		rf.delta = o->delta;
		rf.has_data = true;
		rf.data.data = (uint8_t *)data;
		rf.data.len = len;
	}
	if (o->first) {
		rf.has_first = rf.first = true;
		o->first = false;
		if (o->tail) {
			rf.has_tail_from = true;
			rf.tail_from = o->tail_from;
		}
	}
	if (o->first || last || !remove) {
		rf.has_size = true;
		rf.size = o->size;
	}

	if (last) {
		rf.has_last = rf.last = true;
		if (!remove) {
			rf.has_digest = true;
			rf.digest.data = (uint8_t *)dgst;
			rf.digest.len = MIG__DIGEST_LEN;
			rf.has_mode = true;
			rf.mode = mode;
		}
	}
	return send_frame(j, &rf);
}

static int piece_sink(const uint8_t *data, size_t len, void *ud)
{
	piece_out *o = ud;
	if (o->held) {
		int rc = send_piece(o, o->buf, o->len, false, false, NULL, 0);
		if (rc)
			return rc;
	}
	memcpy(o->buf, data, len);
	o->len = len;
	o->held = true;
	return 0;
}

typedef struct tap_ctx {
	mig__digest *h;
	mig__sigjob *sj;
} tap_ctx;

static int piece_tap(const uint8_t *data, size_t len, void *ud)
{
	tap_ctx *t = ud;
	if (mig__digest_update(t->h, data, len) || mig__sigjob_feed(t->sj, data, len))
		return 1;
	return 0;
}

static int64_t st_mtime_ns(const struct stat *st)
{
	return (int64_t)st->st_mtim.tv_sec * 1000000000ll + st->st_mtim.tv_nsec;
}

/* Sends one changed or new file as stream `index`. *sent: the file went
 * out and *out describes it; else it kept changing (or vanished) and was
 * left. Returns 0 or an error that ends the round. */
static int send_file(mig__rfjob *j, size_t d, uint32_t index, const char *path,
		     const rf_file *old, rf_file *out, bool *sent, uint8_t *buf)
{
	*sent = false;
	mig__sig *sig = NULL;
	char why[MIG__REASON_MAX];
	if (old) {
		int rc = mig__delta_load_signature(old->sig.data, old->sig.len, &sig, why,
						   sizeof(why));
		if (rc)
			return rc;
	}
	int rc = 0;
	for (int attempt = 0; attempt < RF_ATTEMPTS && !*sent && !rc; attempt++) {
		int fd = mig__files_open_read(j->roots[d], j->user, path);
		if (fd < 0)
			break; /* gone since the scan: next time */
		struct stat st0, st1;
		mig__bytes nsig = {0};
		mig__sigjob *sj = NULL;
		mig__digest *h = mig__digest_new();
		mig__sig_params prm;
		if (fstat(fd, &st0) < 0 || !S_ISREG(st0.st_mode)) {
			close(fd);
			mig__digest_free(h);
			break;
		}
		mig__delta_params((uint64_t)st0.st_size, &prm);
		if (!h || (rc = mig__sigjob_new(&prm, &nsig, &sj)) != 0) {
			close(fd);
			mig__digest_free(h);
			rc = rc ? rc : MIG_ENOMEM;
			break;
		}
		piece_out o = {.j = j, .d = d, .path = path, .index = index, .first = true,
			       .delta = sig != NULL, .size = (uint64_t)st0.st_size, .buf = buf};
		tap_ctx t = {h, sj};
		rc = mig__delta_generate_tap(fd, (uint64_t)st0.st_size, sig, j->piece, piece_sink,
					     &o, piece_tap, &t);
		if (!rc)
			rc = mig__sigjob_finish(sj);
		mig__sigjob_free(sj);
		int frc = fstat(fd, &st1);
		close(fd);
		bool same = frc == 0 && st1.st_ino == st0.st_ino &&
			    st_mtime_ns(&st1) == st_mtime_ns(&st0) && st1.st_size == st0.st_size;
		bool grew = frc == 0 && st1.st_ino == st0.st_ino && j->append_only[d] &&
			    st1.st_size >= st0.st_size;
		if (!rc && (same || grew)) {
			uint8_t dg[MIG__DIGEST_LEN];
			mig__digest_peek(h, dg);
			uint32_t mode = (uint32_t)(st0.st_mode & 0777);
			rc = send_piece(&o, o.held ? o.buf : NULL, o.held ? o.len : 0, true, false,
					dg, mode);
			if (!rc) {
				struct timespec now;
				clock_gettime(CLOCK_REALTIME, &now);
				int64_t now_ns = (int64_t)now.tv_sec * 1000000000ll + now.tv_nsec;
				out->path = mig__strdup(path);
				out->size = (uint64_t)st0.st_size;
				out->mtime_ns = same && now_ns - st_mtime_ns(&st0) > RF_RACY_NS
							? st_mtime_ns(&st0)
							: INT64_MIN;
				out->ino = (uint64_t)st0.st_ino;
				out->mode = mode;
				memcpy(out->dgst, dg, MIG__DIGEST_LEN);
				out->sig = nsig;
				memset(&nsig, 0, sizeof(nsig));
				if (j->append_only[d]) {
					out->run = h;
					h = NULL;
				}
				if (!out->path)
					rc = MIG_ENOMEM;
				else
					*sent = true;
			}
		}
		mig__bytes_free(&nsig);
		mig__digest_free(h);
	}
	mig__delta_sig_free(sig);
	if (rc == MIG_ECANCELED)
		snprintf(j->why, sizeof(j->why), "round cancelled");
	else if (rc)
		snprintf(j->why, sizeof(j->why), "file %s of domain %s: %s", path, j->names[d],
			 mig_strerror(rc));
	return rc;
}

static bool rf_unchanged(const rf_file *old, const mig__file_entry *fe)
{
	return old->mtime_ns != INT64_MIN && old->size == fe->size &&
	       old->mtime_ns == fe->mtime_ns && old->ino == fe->ino && old->mode == fe->mode;
}

/* Append-only domain, a file that only grew: sends the bytes from its old
 * end, raw, and advances the running digest it takes from `old`. *sent as
 * for send_file; returns 0 or an error that ends the round. */
static int send_tail(mig__rfjob *j, size_t d, uint32_t index, rf_file *old, rf_file *out,
		     bool *sent, uint8_t *buf)
{
	*sent = false;
	int fd = mig__files_open_read(j->roots[d], j->user, old->path);
	if (fd < 0)
		return 0;
	struct stat st0, st1;
	if (fstat(fd, &st0) < 0 || (uint64_t)st0.st_ino != old->ino ||
	    (uint64_t)st0.st_size < old->size) {
		close(fd);
		return 0; /* replaced meanwhile: next time, whole */
	}
	mig__digest *h = old->run;
	old->run = NULL;
	piece_out o = {.j = j, .d = d, .path = old->path, .index = index, .first = true,
		       .size = (uint64_t)st0.st_size, .tail = true, .tail_from = old->size};
	uint64_t off = old->size, end = (uint64_t)st0.st_size;
	int rc = 0;
	do {
		size_t want = end - off > j->piece ? j->piece : (size_t)(end - off);
		ssize_t n = want ? pread(fd, buf, want, (off_t)off) : 0;
		if (n < 0 || (size_t)n != want) {
			rc = MIG_EIO;
			break;
		}
		off += want;
		if (mig__digest_update(h, buf, want)) {
			rc = MIG_ENOMEM;
			break;
		}
		uint8_t dg[MIG__DIGEST_LEN] = {0};
		if (off == end)
			mig__digest_peek(h, dg);
		rc = send_piece(&o, buf, want, off == end, false, dg,
				(uint32_t)(st0.st_mode & 0777));
	} while (!rc && off < end);
	int frc = fstat(fd, &st1);
	close(fd);
	if (!rc && (frc || st1.st_ino != st0.st_ino || st1.st_size < st0.st_size))
		rc = MIG_EIO; /* truncated while read: not append-only after all */
	if (!rc) {
		out->path = mig__strdup(old->path);
		out->size = end;
		out->mtime_ns = INT64_MIN; /* grew: its size tells the next change */
		out->ino = old->ino;
		out->mode = (uint32_t)(st0.st_mode & 0777);
		mig__digest_peek(h, out->dgst);
		out->run = h;
		h = NULL;
		if (!out->path || mig__bytes_append(&out->sig, old->sig.data, old->sig.len))
			rc = MIG_ENOMEM;
		else
			*sent = true;
	}
	mig__digest_free(h);
	if (rc == MIG_ECANCELED)
		snprintf(j->why, sizeof(j->why), "round cancelled");
	else if (rc)
		snprintf(j->why, sizeof(j->why), "file %s of domain %s: %s", old->path,
			 j->names[d], mig_strerror(rc));
	return rc;
}

/* A file marked to be compared again (modified close to its last read):
 * if its content is still what the standby holds, only its record is
 * refreshed (*same set). */
static void recheck(mig__rfjob *j, size_t d, const rf_file *old, rf_file *out, bool *same)
{
	*same = false;
	int fd = mig__files_open_read(j->roots[d], j->user, old->path);
	if (fd < 0)
		return;
	struct stat st0, st1;
	mig__digest *h = NULL;
	uint8_t dg[MIG__DIGEST_LEN];
	bool ok = fstat(fd, &st0) == 0 && (uint64_t)st0.st_size == old->size &&
		  (uint64_t)st0.st_ino == old->ino && (uint32_t)(st0.st_mode & 0777) == old->mode &&
		  mig__digest_file(fd, UINT64_MAX, &h) == 0 && mig__digest_peek(h, dg) == 0 &&
		  fstat(fd, &st1) == 0 && st_mtime_ns(&st1) == st_mtime_ns(&st0) &&
		  st1.st_size == st0.st_size && memcmp(dg, old->dgst, MIG__DIGEST_LEN) == 0;
	mig__digest_free(h);
	close(fd);
	if (!ok)
		return;
	struct timespec now;
	clock_gettime(CLOCK_REALTIME, &now);
	int64_t now_ns = (int64_t)now.tv_sec * 1000000000ll + now.tv_nsec;
	*out = *old;
	out->mtime_ns = now_ns - st_mtime_ns(&st0) > RF_RACY_NS ? st_mtime_ns(&st0) : INT64_MIN;
	*same = true;
}

static int round_domain(mig__rfjob *j, size_t d, uint32_t *index, uint8_t *buf)
{
	mig__file_list l = {0};
	int rc = mig__files_scan(j->roots[d], j->user, &l, j->why, sizeof(j->why));
	if (rc)
		return rc;
	rf_dom *bd = j->base ? &j->base->dom[d] : NULL;
	rf_dom *nd = &j->next->dom[d];
	size_t i = 0, k = 0, nb = bd ? bd->n : 0;
	while (!rc && (i < l.count || k < nb)) {
		int cmp = i >= l.count ? 1 : k >= nb ? -1 : strcmp(l.entries[i].path, bd->v[k].path);
		if (cmp > 0) {
			/* In the standby's copy, gone here. */
			piece_out o = {.j = j, .d = d, .path = bd->v[k].path, .index = *index,
				       .first = true};
			rc = send_piece(&o, NULL, 0, true, true, NULL, 0);
			if (!rc)
				(*index)++;
			k++;
			continue;
		}
		rf_file *old = cmp == 0 ? &bd->v[k] : NULL;
		const mig__file_entry *fe = &l.entries[i];
		rf_file rc_file;
		bool same = false;
		bool grown = old && old->run && j->append_only[d] && fe->ino == old->ino &&
			     fe->size >= old->size;
		if (grown && fe->size == old->size) {
			same = true; /* append-only: no growth, no change */
			rc_file = *old;
		} else if (old && !grown && old->mtime_ns == INT64_MIN) {
			recheck(j, d, old, &rc_file, &same);
		}
		if (old && (same || rf_unchanged(old, fe))) {
			rc = rf_dom_copy(nd, same ? &rc_file : old);
			if (!rc) {
				/* The running digest moves on with the record. */
				nd->v[nd->n - 1].run = old->run;
				old->run = NULL;
			}
		} else if (j->bytes >= j->budget) {
			/* This update is full: the standby keeps its copy (or
			 * does not get the new file) until the next one. */
			j->more = true;
			if (old) {
				rc = rf_dom_copy(nd, old);
				if (!rc) {
					nd->v[nd->n - 1].run = old->run;
					old->run = NULL;
				}
			}
		} else if (grown) {
			rf_file nf = {0};
			bool sent = false;
			rc = send_tail(j, d, *index, old, &nf, &sent, buf);
			if (!rc && sent) {
				(*index)++;
				rc = rf_dom_push(nd, &nf);
				if (rc)
					rf_file_clear(&nf);
			} else if (!rc) {
				j->busy = true;
				rc = rf_dom_copy(nd, old);
			} else {
				rf_file_clear(&nf);
			}
		} else {
			rf_file nf = {0};
			bool sent = false;
			rc = send_file(j, d, *index, fe->path, old, &nf, &sent, buf);
			if (!rc && sent) {
				(*index)++;
				rc = rf_dom_push(nd, &nf);
				if (rc)
					rf_file_clear(&nf);
			} else if (!rc) {
				j->busy = true;
				if (old)
					rc = rf_dom_copy(nd, old); /* the standby keeps it */
			}
		}
		i++;
		if (cmp == 0)
			k++;
	}
	mig__file_list_free(&l);
	if (rc == MIG_ENOMEM && !j->why[0])
		snprintf(j->why, sizeof(j->why), "out of memory");
	return rc;
}

static void round_run(void *arg)
{
	mig__rfjob *j = arg;
	uint32_t index = 0;
	uint8_t *buf = mig__malloc(RF_PIECE);
	j->next = rfset_new(j->ndom);
	if (!buf || !j->next) {
		j->err = MIG_ENOMEM;
		snprintf(j->why, sizeof(j->why), "out of memory");
	}
	for (size_t d = 0; d < j->ndom && !j->err; d++)
		j->err = round_domain(j, d, &index, buf);
	j->streams = index;
	mig__free(buf);
	rfjob_post(j);
}

mig__rfjob *mig__rfjob_start(mig_engine *e, mig__strand *strand, const char *user,
			     uint64_t epoch, uint64_t seq, uint64_t conn, mig__rfset *base,
			     mig__rfjob_done_fn done)
{
	mig__rfjob *j = mig__calloc(1, sizeof(*j));
	if (!j)
		return NULL;
	size_t n = e->nfdomains;
	j->ndom = n;
	j->ev = mig__calloc(1, sizeof(*j->ev));
	j->user = mig__strdup(user);
	j->roots = mig__calloc(n ? n : 1, sizeof(*j->roots));
	j->names = mig__calloc(n ? n : 1, sizeof(*j->names));
	j->append_only = mig__calloc(n ? n : 1, sizeof(*j->append_only));
	bool ok = j->ev && j->user && j->roots && j->names && j->append_only;
	for (size_t d = 0; ok && d < n; d++) {
		j->roots[d] = mig__strdup(e->fdomains[d].root);
		j->names[d] = mig__strdup(e->fdomains[d].name);
		j->append_only[d] = e->fdomains[d].append_only;
		ok = j->roots[d] && j->names[d];
	}
	if (!ok) {
		mig__rfjob_free(j);
		return NULL;
	}
	j->e = e;
	j->t = e->transport;
	j->max_frame = e->max_frame;
	j->piece = e->max_frame / 2 < RF_PIECE ? e->max_frame / 2 : RF_PIECE;
	j->budget = (uint64_t)e->max_frame * RF_UPDATE_FRAMES;
	j->events = &e->events;
	j->done = done;
	j->epoch = epoch;
	j->seq = seq;
	j->conn = conn;
	atomic_init(&j->cancel, false);
	static const enum mig__fault_point faults[] = {
		MIG__FAULT_FILE_CORRUPT_CHUNK, MIG__FAULT_FILE_TRUNCATE, MIG__FAULT_FILE_DOTDOT};
	for (size_t i = 0; i < MIG__ARRAY_LEN(faults) && !j->fault; i++)
		if (mig__engine_fault_at(e, faults[i]))
			j->fault = faults[i];
	if (base && base->ndom != n)
		base = NULL; /* cannot happen: domains are fixed at start */
	j->base = base;
	if (mig__strand_post(strand, round_run, rfjob_discard, j)) {
		j->base = NULL;
		mig__rfjob_free(j);
		return NULL;
	}
	return j;
}

void mig__rfjob_cancel(mig__rfjob *j)
{
	atomic_store(&j->cancel, true);
}

int mig__rfjob_result(const mig__rfjob *j, uint32_t *streams, uint64_t *bytes, bool *busy,
		      bool *more, char *why, size_t why_len)
{
	*streams = j->streams;
	*bytes = j->bytes;
	*busy = j->busy;
	*more = j->more;
	mig__strlcpy(why, j->why, why_len);
	return j->err;
}

const char *mig__rfjob_user(const mig__rfjob *j)
{
	return j->user;
}

uint64_t mig__rfjob_conn(const mig__rfjob *j)
{
	return j->conn;
}

mig__rfset *mig__rfjob_take_base(mig__rfjob *j)
{
	mig__rfset *s = j->base;
	j->base = NULL;
	return s;
}

mig__rfset *mig__rfjob_take_next(mig__rfjob *j)
{
	mig__rfset *s = j->next;
	j->next = NULL;
	return s;
}
