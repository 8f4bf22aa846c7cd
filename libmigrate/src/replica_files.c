/* File state of replication: the primary's rounds and the standby's staging
 * and install (replica_files.h; docs/FAILOVER.md "File state").
 *
 * Reuses the migration's file machinery: mig__files_scan and the confined
 * opens of files.c, librsync signatures / deltas / bounds-checked patches of
 * delta.c, staging and the atomic install of files.c. What differs from a
 * migration is who keeps the basis: the primary remembers, per file, the
 * signature of what it last sent (computed in the same pass that read it),
 * so an update needs no signature round trip; it becomes the basis of the
 * next update once the standby acknowledged it.
 *
 * Consistency on the primary: the app keeps writing while a file is read.
 * A file is sent only if its size and mtime are the same before and after
 * the read (for an append-only domain: it only grew; the bytes up to the
 * size seen first are sent); otherwise it is read again, up to three times,
 * and then left at the standby's previous copy until the next update. A file
 * modified within the timestamp granularity of its read is marked to be
 * compared again next time (its delta is then a few bytes if it did not
 * change). The standby checks every patched file against the SHA-256 of
 * the bytes the primary read. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "auth.h"
#include "delta.h"
#include "digest.h"
#include "files.h"
#include "replica_files.h"
#include "transport.h"

/* Delta bytes per ReplicaFile piece (at most half the frame cap). */
#define RF_PIECE (256u * 1024)
/* File bytes one update may queue to the connection, in frame caps (32 MiB
 * at the default cap): past it, the files not yet sent wait for the next
 * update, which follows as soon as this one is acknowledged. A file is
 * never split, so one update can exceed it by one file. */
#define RF_UPDATE_FRAMES 8u
/* Reads of a file that keeps changing before it is left for next time. */
#define RF_ATTEMPTS 3
/* A file modified this recently is compared again at the next update. */
#define RF_RACY_NS (50ll * 1000 * 1000)

bool mig__rf_user_ok(const char *user)
{
	return mig__valid_user(user) && !strchr(user, '/') && strcmp(user, ".") != 0 &&
	       strcmp(user, "..") != 0 && strncmp(user, ".mig-", 5) != 0;
}

/* ================================================================ primary */

typedef struct rf_file {
	char *path;
	uint64_t size;
	int64_t mtime_ns; /* INT64_MIN: compare again next time */
	uint64_t ino;
	uint32_t mode;
	uint8_t sha[32];  /* of the content the standby holds */
	mig__bytes sig;   /* signature of that content (append-only: of a prefix) */
	/* Append-only domains: the running digest of that content, so a grown
	 * file is read from its old end only. Moved, never copied: an entry
	 * without one takes the whole-file path once. */
	mig__sha256 *run;
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
	mig__sha256_free(f->run);
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
		      const uint8_t sha[32], uint32_t mode)
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
			rf.has_sha256 = true;
			rf.sha256.data = (uint8_t *)sha;
			rf.sha256.len = 32;
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
	mig__sha256 *h;
	mig__sigjob *sj;
} tap_ctx;

static int piece_tap(const uint8_t *data, size_t len, void *ud)
{
	tap_ctx *t = ud;
	if (mig__sha256_update(t->h, data, len) || mig__sigjob_feed(t->sj, data, len))
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
		mig__sha256 *h = mig__sha256_new();
		mig__sig_params prm;
		if (fstat(fd, &st0) < 0 || !S_ISREG(st0.st_mode)) {
			close(fd);
			mig__sha256_free(h);
			break;
		}
		mig__delta_params((uint64_t)st0.st_size, &prm);
		if (!h || (rc = mig__sigjob_new(&prm, &nsig, &sj)) != 0) {
			close(fd);
			mig__sha256_free(h);
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
			uint8_t dg[32];
			mig__sha256_peek(h, dg);
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
				memcpy(out->sha, dg, 32);
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
		mig__sha256_free(h);
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
	mig__sha256 *h = old->run;
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
		if (mig__sha256_update(h, buf, want)) {
			rc = MIG_ENOMEM;
			break;
		}
		uint8_t dg[32] = {0};
		if (off == end)
			mig__sha256_peek(h, dg);
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
		mig__sha256_peek(h, out->sha);
		out->run = h;
		h = NULL;
		if (!out->path || mig__bytes_append(&out->sig, old->sig.data, old->sig.len))
			rc = MIG_ENOMEM;
		else
			*sent = true;
	}
	mig__sha256_free(h);
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
	mig__sha256 *h = NULL;
	uint8_t dg[32];
	bool ok = fstat(fd, &st0) == 0 && (uint64_t)st0.st_size == old->size &&
		  (uint64_t)st0.st_ino == old->ino && (uint32_t)(st0.st_mode & 0777) == old->mode &&
		  mig__sha256_file(fd, UINT64_MAX, &h) == 0 && mig__sha256_peek(h, dg) == 0 &&
		  fstat(fd, &st1) == 0 && st_mtime_ns(&st1) == st_mtime_ns(&st0) &&
		  st1.st_size == st0.st_size && memcmp(dg, old->sha, 32) == 0;
	mig__sha256_free(h);
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

/* ================================================================ standby */

typedef struct rfin_entry {
	size_t d;
	char *path;
	uint32_t index;
	bool removed;
} rfin_entry;

/* State of the strand's tasks. Shared by reference count between the strand
 * (its last task) and a pending completion. */
typedef struct rfin_sh {
	atomic_int refs;
	mig__rfin *owner; /* dispatch only: NULL once the record is freed */
	size_t ndom;
	char **reproots;  /* per file domain: ROOT/.mig-replica */
	char *user;
	char mid[MIG__MID_LEN + 1];
	/* The stream being patched. */
	bool open;
	uint32_t index;
	size_t d;
	char *path;
	int basis_fd, out_fd;
	mig__patch *patch;  /* a delta stream */
	bool tail;          /* an appended tail: raw bytes after a copied prefix */
	uint64_t written;
	mig__sha256 *hash;
	uint64_t size;
	/* Complete streams. */
	rfin_entry *entries;
	size_t n, cap;
	/* First error. */
	int err;
	char why[MIG__REASON_MAX];
	/* Finalize. */
	uint32_t streams;
	uint64_t base_seq;
	bool partial;
	mig__evq *events;
	mig__tev *ev;
} rfin_sh;

struct mig__rfin {
	mig_engine *e;
	mig__strand *strand;
	rfin_sh *sh;
	char *user;
	uint64_t epoch, seq;
	/* Checks in dispatch. */
	uint32_t next_index; /* streams started so far */
	bool stream_open;
	int err;
	char why[MIG__REASON_MAX];
	bool finalizing;
	mig__rfin_done_fn done;
	/* Result, copied at completion. */
	int result;
	bool partial;
	char rwhy[MIG__REASON_MAX];
};

static void stream_close(rfin_sh *s, bool discard)
{
	if (!s->open)
		return;
	mig__patch_free(s->patch);
	mig__sha256_free(s->hash);
	s->tail = false;
	s->written = 0;
	if (s->basis_fd >= 0)
		close(s->basis_fd);
	if (s->out_fd >= 0)
		close(s->out_fd);
	if (discard)
		mig__files_staging_unlink(s->reproots[s->d], s->mid, s->path);
	mig__free(s->path);
	s->patch = NULL;
	s->hash = NULL;
	s->path = NULL;
	s->basis_fd = s->out_fd = -1;
	s->open = false;
}

static void sh_unref(rfin_sh *s)
{
	if (atomic_fetch_sub(&s->refs, 1) != 1)
		return;
	stream_close(s, false);
	for (size_t i = 0; i < s->n; i++)
		mig__free(s->entries[i].path);
	mig__free(s->entries);
	for (size_t d = 0; d < s->ndom; d++)
		mig__free(s->reproots[d]);
	mig__free(s->reproots);
	mig__free(s->user);
	mig__free(s->ev);
	mig__free(s);
}

static void sh_fail(rfin_sh *s, int err, const char *fmt, ...) MIG__PRINTF(3, 4);

static void sh_fail(rfin_sh *s, int err, const char *fmt, ...)
{
	if (s->err)
		return;
	s->err = err;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(s->why, sizeof(s->why), fmt, ap);
	va_end(ap);
	stream_close(s, true);
}

static int sh_add_entry(rfin_sh *s, size_t d, const char *path, uint32_t index, bool removed)
{
	if (s->n == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 16;
		rfin_entry *v = mig__realloc(s->entries, cap * sizeof(*v));
		if (!v)
			return MIG_ENOMEM;
		s->entries = v;
		s->cap = cap;
	}
	char *p = mig__strdup(path);
	if (!p)
		return MIG_ENOMEM;
	s->entries[s->n++] = (rfin_entry){.d = d, .path = p, .index = index, .removed = removed};
	return 0;
}

typedef struct piece_in {
	rfin_sh *sh;
	size_t d;
	char *path;
	uint32_t index;
	bool first, last, remove, delta, tail;
	uint64_t tail_from;
	uint64_t size;
	uint32_t mode;
	uint8_t sha[32];
	uint8_t *data;
	size_t len;
} piece_in;

static void piece_free(void *arg)
{
	piece_in *p = arg;
	mig__free(p->path);
	mig__free(p->data);
	mig__free(p);
}

/* An appended tail's stream: the staged file starts as a copy of the
 * replica's first tail_from bytes (never a link: the copy must not change
 * before the update is installed), hashed on the way. */
static void tail_open(rfin_sh *s, piece_in *p)
{
	s->path = mig__strdup(p->path);
	s->hash = mig__sha256_new();
	s->open = true;
	s->index = p->index;
	s->d = p->d;
	s->size = p->size;
	s->tail = true;
	uint8_t *buf = mig__malloc(RF_PIECE);
	if (!s->path || !s->hash || !buf) {
		mig__free(buf);
		sh_fail(s, MIG_ENOMEM, "out of memory");
		return;
	}
	struct stat st;
	s->basis_fd = mig__files_open_read(s->reproots[p->d], s->user, p->path);
	if (s->basis_fd < 0 || fstat(s->basis_fd, &st) < 0 ||
	    (uint64_t)st.st_size < p->tail_from || p->tail_from > p->size) {
		mig__free(buf);
		sh_fail(s, MIG_EPROTO, "file %s: a tail from %llu for a copy the replica does not hold",
			p->path, (unsigned long long)p->tail_from);
		return;
	}
	s->out_fd = mig__files_open_staging(s->reproots[p->d], s->mid, p->path);
	if (s->out_fd < 0) {
		mig__free(buf);
		sh_fail(s, MIG_EIO, "file %s: cannot stage: %s", p->path, strerror(errno));
		return;
	}
	while (s->written < p->tail_from) {
		size_t want = p->tail_from - s->written > RF_PIECE ? RF_PIECE
								  : (size_t)(p->tail_from - s->written);
		ssize_t n = pread(s->basis_fd, buf, want, (off_t)s->written);
		if (n != (ssize_t)want || write(s->out_fd, buf, want) != (ssize_t)want ||
		    mig__sha256_update(s->hash, buf, want)) {
			mig__free(buf);
			sh_fail(s, MIG_EIO, "file %s: cannot copy the replica's copy: %s", p->path,
				strerror(errno));
			return;
		}
		s->written += want;
	}
	mig__free(buf);
}

static void piece_open(rfin_sh *s, piece_in *p)
{
	stream_close(s, true); /* a restarted or abandoned stream */
	if (p->remove) {
		if (sh_add_entry(s, p->d, p->path, p->index, true))
			sh_fail(s, MIG_ENOMEM, "out of memory");
		return;
	}
	s->basis_fd = -1;
	s->out_fd = -1;
	if (p->tail) {
		tail_open(s, p);
		return;
	}
	if (p->delta) {
		s->basis_fd = mig__files_open_read(s->reproots[p->d], s->user, p->path);
		if (s->basis_fd < 0) {
			sh_fail(s, MIG_EPROTO, "file %s: a delta against a copy the replica does not hold",
				p->path);
			return;
		}
	}
	s->out_fd = mig__files_open_staging(s->reproots[p->d], s->mid, p->path);
	if (s->out_fd < 0) {
		int rc = s->out_fd;
		if (s->basis_fd >= 0)
			close(s->basis_fd);
		s->basis_fd = -1;
		sh_fail(s, rc, "file %s: cannot stage: %s", p->path, strerror(errno));
		return;
	}
	s->path = mig__strdup(p->path);
	s->hash = mig__sha256_new();
	int rc = s->path && s->hash ? mig__patch_new(s->basis_fd, s->out_fd, &s->patch)
				    : MIG_ENOMEM;
	s->open = true;
	s->index = p->index;
	s->d = p->d;
	s->size = p->size;
	if (rc) {
		sh_fail(s, rc, "out of memory");
		return;
	}
	mig__patch_set_max_output(s->patch, p->size);
	mig__patch_set_digest(s->patch, s->hash);
}

static void piece_run(void *arg)
{
	piece_in *p = arg;
	rfin_sh *s = p->sh;
	char why[MIG__REASON_MAX];
	if (s->err)
		goto out;
	if (p->first)
		piece_open(s, p);
	if (s->err || p->remove)
		goto out;
	if (!s->open || s->index != p->index) {
		sh_fail(s, MIG_EPROTO, "file %s: a piece of a stream that is not open", p->path);
		goto out;
	}
	int rc = 0;
	if (s->tail) {
		if (p->len > s->size - s->written) {
			sh_fail(s, MIG_EPROTO, "file %s: more bytes than its announced size",
				p->path);
			goto out;
		}
		if (p->len && (write(s->out_fd, p->data, p->len) != (ssize_t)p->len ||
			       mig__sha256_update(s->hash, p->data, p->len))) {
			sh_fail(s, MIG_EIO, "file %s: %s", p->path, strerror(errno));
			goto out;
		}
		s->written += p->len;
	} else if (p->len) {
		rc = mig__patch_feed(s->patch, p->data, p->len, why, sizeof(why));
	}
	if (rc) {
		sh_fail(s, rc, "file %s: %s", p->path, why);
		goto out;
	}
	if (!p->last)
		goto out;
	rc = s->tail ? 0 : mig__patch_finish(s->patch, why, sizeof(why));
	if (rc) {
		sh_fail(s, rc, "file %s: %s", p->path, why);
		goto out;
	}
	uint8_t dg[32];
	mig__sha256_peek(s->hash, dg);
	uint64_t out_size = s->tail ? s->written : mig__patch_output_size(s->patch);
	if (out_size != p->size || memcmp(dg, p->sha, 32) != 0) {
		sh_fail(s, MIG_EPROTO, "file %s: the patched content does not match its digest",
			p->path);
		goto out;
	}
	if (fchmod(s->out_fd, (mode_t)(p->mode & 0777)) < 0) {
		sh_fail(s, MIG_EIO, "file %s: %s", p->path, strerror(errno));
		goto out;
	}
	stream_close(s, false);
	if (sh_add_entry(s, p->d, p->path, p->index, false))
		sh_fail(s, MIG_ENOMEM, "out of memory");
out:
	piece_free(p);
}

static int entry_cmp(const void *a, const void *b)
{
	const rfin_entry *x = a, *y = b;
	if (x->d != y->d)
		return x->d < y->d ? -1 : 1;
	return strcmp(x->path, y->path);
}

static bool named(const rfin_sh *s, size_t d, const char *path)
{
	rfin_entry key = {.d = d, .path = (char *)path};
	return bsearch(&key, s->entries, s->n, sizeof(*s->entries), entry_cmp) != NULL;
}

/* Puts the staged folder in place of the replica copy with one rename
 * (exchanging with the old copy, which is removed with the staging). No
 * fsync: the standby's record of the copy lives in memory, so a copy that
 * outlives a crash of the standby is never used (the next update sends
 * everything again); promotion makes the folder durable. */
static int replica_install(const char *reproot, const char *user, const char *mid)
{
	int rfd = open(reproot, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (rfd < 0)
		return -1;
	int sfd = openat(rfd, MIG__STAGING_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (sfd < 0 && errno == ENOENT && mkdirat(rfd, MIG__STAGING_DIR, 0700) == 0)
		sfd = openat(rfd, MIG__STAGING_DIR, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	int rc = sfd < 0 ? -1 : 0;
	/* Nothing staged (no files at all) still installs an empty folder. */
	if (!rc && mkdirat(sfd, mid, 0700) < 0 && errno != EEXIST)
		rc = -1;
	if (!rc && renameat2(sfd, mid, rfd, user, RENAME_NOREPLACE) < 0) {
		if (errno != EEXIST)
			rc = -1;
		else if (renameat2(sfd, mid, rfd, user, RENAME_EXCHANGE) < 0)
			rc = -1;
	}
	int er = errno;
	if (sfd >= 0)
		close(sfd);
	close(rfd);
	errno = er;
	return rc;
}

static void rfin_call(void *ctx, void *arg);
static void rfin_ev_discard(void *arg)
{
	sh_unref(arg);
}

static void finalize_run(void *arg)
{
	rfin_sh *s = arg;
	if (!s->err && s->open) {
		if (s->index < s->streams)
			sh_fail(s, MIG_EPROTO, "file %s was not complete", s->path);
		else
			stream_close(s, true); /* abandoned by the primary */
	}
	if (!s->err) {
		size_t done = 0;
		for (size_t i = 0; i < s->n; i++)
			done += s->entries[i].index < s->streams;
		if (done != s->streams || s->n != s->streams)
			sh_fail(s, MIG_EPROTO, "%zu of the update's %u files arrived", done,
				s->streams);
	}
	if (!s->err && s->n) /* qsort() wants a non-NULL base even for none */
		qsort(s->entries, s->n, sizeof(*s->entries), entry_cmp);
	/* Stage every file of the replica copy the update does not name. */
	for (size_t d = 0; d < s->ndom && !s->err && s->base_seq; d++) {
		mig__file_list l = {0};
		char why[MIG__REASON_MAX];
		int rc = mig__files_scan(s->reproots[d], s->user, &l, why, sizeof(why));
		if (rc) {
			sh_fail(s, rc, "the replica copy: %s", why);
			break;
		}
		for (size_t i = 0; i < l.count && !s->err; i++) {
			if (named(s, d, l.entries[i].path))
				continue;
			rc = mig__files_stage_existing(s->reproots[d], s->user, s->mid,
						       l.entries[i].path);
			if (rc)
				sh_fail(s, rc, "file %s of the replica copy: %s", l.entries[i].path,
					strerror(errno));
		}
		mig__file_list_free(&l);
	}
	/* Install, domain by domain. */
	for (size_t d = 0; d < s->ndom && !s->err; d++) {
		if (replica_install(s->reproots[d], s->user, s->mid) < 0) {
			s->partial = d > 0;
			sh_fail(s, MIG_EIO, "cannot install the replica copy: %s", strerror(errno));
		}
	}
	mig__tev *ev = s->ev;
	s->ev = NULL;
	ev->type = MIG__TEV_CALL;
	ev->call = rfin_call;
	ev->discard = rfin_ev_discard;
	ev->arg = s;
	mig__evq_push(s->events, &ev->link);
}

static void rfin_call(void *ctx, void *arg)
{
	rfin_sh *s = arg;
	mig__rfin *in = s->owner;
	if (in) {
		in->result = s->err;
		in->partial = s->partial;
		mig__strlcpy(in->rwhy, s->why, sizeof(in->rwhy));
		in->done(ctx, in);
	}
	sh_unref(s);
}

static void rfin_last(void *arg)
{
	rfin_sh *s = arg;
	stream_close(s, false);
	for (size_t d = 0; d < s->ndom; d++)
		mig__files_staging_remove(s->reproots[d], s->mid);
	sh_unref(s);
}

static void rfin_last_discard(void *arg)
{
	sh_unref(arg);
}

static void mkdir_task(void *arg)
{
	rfin_sh *s = arg;
	for (size_t d = 0; d < s->ndom; d++)
		if (mkdir(s->reproots[d], 0700) < 0 && errno != EEXIST)
			sh_fail(s, MIG_EIO, "cannot create %s: %s", s->reproots[d], strerror(errno));
}

mig__rfin *mig__rfin_new(mig_engine *e, const char *user, uint64_t epoch, uint64_t seq)
{
	if (!mig__rf_user_ok(user))
		return NULL;
	mig__rfin *in = mig__calloc(1, sizeof(*in));
	rfin_sh *s = mig__calloc(1, sizeof(*s));
	if (!in || !s)
		goto fail;
	atomic_init(&s->refs, 1);
	s->basis_fd = s->out_fd = -1;
	s->ndom = e->nfdomains;
	s->events = &e->events;
	s->reproots = mig__calloc(s->ndom ? s->ndom : 1, sizeof(*s->reproots));
	s->user = mig__strdup(user);
	in->user = mig__strdup(user);
	if (!s->reproots || !s->user || !in->user || mig__new_mid(s->mid))
		goto fail;
	for (size_t d = 0; d < s->ndom; d++)
		if (!(s->reproots[d] = mig__asprintf("%s/%s", e->fdomains[d].root,
						     MIG__REPLICA_DIR)))
			goto fail;
	in->strand = mig__strand_new(e->workers);
	if (!in->strand)
		goto fail;
	if (mig__strand_post(in->strand, mkdir_task, NULL, s)) {
		mig__strand_release(in->strand);
		goto fail;
	}
	s->owner = in;
	in->sh = s;
	in->e = e;
	in->epoch = epoch;
	in->seq = seq;
	return in;
fail:
	if (s) {
		s->ndom = s->reproots ? s->ndom : 0;
		sh_unref(s);
	}
	if (in)
		mig__free(in->user);
	mig__free(in);
	return NULL;
}

static void rfin_refuse(mig__rfin *in, int err, const char *fmt, ...) MIG__PRINTF(3, 4);

static void rfin_refuse(mig__rfin *in, int err, const char *fmt, ...)
{
	if (in->err)
		return;
	in->err = err;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(in->why, sizeof(in->why), fmt, ap);
	va_end(ap);
}

void mig__rfin_piece(mig__rfin *in, const Migwire__ReplicaFile *f)
{
	mig_engine *e = in->e;
	if (in->err || in->finalizing)
		return;
	size_t d = 0;
	while (d < e->nfdomains && strcmp(e->fdomains[d].name, f->domain) != 0)
		d++;
	if (d == e->nfdomains) {
		rfin_refuse(in, MIG_ENODOMAIN, "file domain %s is not registered here", f->domain);
		return;
	}
	if (!mig__path_valid(f->path)) {
		rfin_refuse(in, MIG_EPROTO, "file path \"%.64s\" is not a valid relative path",
			    f->path);
		return;
	}
	if (f->first) {
		/* A new stream, or the current one restarted. */
		bool restart = in->stream_open && f->index + 1 == in->next_index;
		if (f->index != in->next_index && !restart) {
			rfin_refuse(in, MIG_EPROTO, "file stream %u out of order (expected %u)",
				    f->index, in->next_index);
			return;
		}
		if (!restart)
			in->next_index++;
		in->stream_open = !f->last;
	} else if (!in->stream_open || f->index + 1 != in->next_index) {
		rfin_refuse(in, MIG_EPROTO, "a piece of file stream %u, which is not open", f->index);
		return;
	} else if (f->last) {
		in->stream_open = false;
	}
	piece_in *p = mig__calloc(1, sizeof(*p));
	if (!p || !(p->path = mig__strdup(f->path)) ||
	    !(p->data = mig__malloc(f->data.len ? f->data.len : 1))) {
		if (p)
			piece_free(p);
		rfin_refuse(in, MIG_ENOMEM, "out of memory");
		return;
	}
	p->sh = in->sh;
	p->d = d;
	p->index = f->index;
	p->first = f->first;
	p->last = f->last;
	p->remove = f->remove;
	p->delta = f->delta;
	p->tail = f->has_tail_from;
	p->tail_from = f->tail_from;
	p->size = f->size;
	p->mode = f->mode;
	if (f->sha256.len == 32)
		memcpy(p->sha, f->sha256.data, 32);
	if (f->data.len)
		memcpy(p->data, f->data.data, f->data.len);
	p->len = f->data.len;
	if (mig__strand_post(in->strand, piece_run, piece_free, p)) {
		piece_free(p);
		rfin_refuse(in, MIG_ENOMEM, "out of memory");
	}
}

int mig__rfin_finalize(mig__rfin *in, uint32_t streams, uint64_t base_seq, mig__rfin_done_fn done)
{
	if (in->err)
		return in->err;
	rfin_sh *s = in->sh;
	s->ev = mig__calloc(1, sizeof(*s->ev));
	if (!s->ev)
		return MIG_ENOMEM;
	s->streams = streams;
	s->base_seq = base_seq;
	atomic_fetch_add(&s->refs, 1); /* the completion's */
	if (mig__strand_post(in->strand, finalize_run, rfin_ev_discard, s)) {
		atomic_fetch_sub(&s->refs, 1);
		return MIG_ENOMEM;
	}
	in->finalizing = true;
	in->done = done;
	return 0;
}

int mig__rfin_result(const mig__rfin *in, bool *partial, char *why, size_t why_len)
{
	if (in->err) {
		*partial = false;
		mig__strlcpy(why, in->why, why_len);
		return in->err;
	}
	*partial = in->partial;
	mig__strlcpy(why, in->rwhy, why_len);
	return in->result;
}

bool mig__rfin_matches(const mig__rfin *in, const char *user, uint64_t epoch, uint64_t seq)
{
	return strcmp(in->user, user) == 0 && in->epoch == epoch && in->seq == seq;
}

const char *mig__rfin_user(const mig__rfin *in)
{
	return in->user;
}

void mig__rfin_free(mig__rfin *in)
{
	if (!in)
		return;
	in->sh->owner = NULL;
	mig__strand_finish(in->strand, rfin_last, rfin_last_discard, in->sh);
	mig__free(in->user);
	mig__free(in);
}

/* ================================================================ promotion */

/* Renames DIR/<name> to DIR2/<name2>; the directories are opened without
 * following symlinks (both are the engine's own, under the domain root). */
static int move_dir(const char *from_dir, const char *from, const char *to_dir, const char *to)
{
	int a = open(from_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (a < 0)
		return -1;
	int b = open(to_dir, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (b < 0) {
		int er = errno;
		close(a);
		errno = er;
		return -1;
	}
	int rc = renameat(a, from, b, to);
	int er = errno;
	close(a);
	close(b);
	errno = er;
	return rc;
}

int mig__rf_promote_files(mig_engine *e, const char *user, size_t *moved, char *why,
			  size_t why_len)
{
	*moved = 0;
	if (!mig__rf_user_ok(user)) {
		snprintf(why, why_len, "user id %s cannot name a folder", user);
		return MIG_EIO;
	}
	for (size_t d = 0; d < e->nfdomains; d++) {
		const char *root = e->fdomains[d].root;
		char *rep = mig__asprintf("%s/%s", root, MIG__REPLICA_DIR);
		char *stg = mig__asprintf("%s/%s", root, MIG__STAGING_DIR);
		char mid[MIG__MID_LEN + 1];
		int rc = rep && stg && !mig__new_mid(mid) ? 0 : MIG_ENOMEM;
		if (!rc && mkdir(stg, 0700) < 0 && errno != EEXIST)
			rc = MIG_EIO;
		if (!rc && move_dir(rep, user, stg, mid) < 0)
			rc = MIG_EIO;
		if (rc) {
			snprintf(why, why_len, "file domain %s: the replica copy cannot be moved: %s",
				 e->fdomains[d].name, rc == MIG_ENOMEM ? "out of memory" : strerror(errno));
		} else if ((rc = mig__files_install(root, user, mid)) != 0) {
			snprintf(why, why_len, "file domain %s: cannot install the replica copy: %s",
				 e->fdomains[d].name, strerror(errno));
			(void)move_dir(stg, mid, rep, user);
		}
		mig__free(rep);
		mig__free(stg);
		if (rc)
			return rc == MIG_ENOMEM ? rc : MIG_EIO;
		(*moved)++;
	}
	return 0;
}

void mig__rf_unpromote_files(mig_engine *e, const char *user, size_t moved)
{
	for (size_t d = 0; d < moved && d < e->nfdomains; d++) {
		const char *root = e->fdomains[d].root;
		char *rep = mig__asprintf("%s/%s", root, MIG__REPLICA_DIR);
		if (!rep || move_dir(root, user, rep, user) < 0)
			mig__engine_log(e, MIG_LOG_ERROR,
					"user %s: the files of domain %s stay in the user's folder: %s",
					user, e->fdomains[d].name, rep ? strerror(errno) : "out of memory");
		mig__free(rep);
	}
}
