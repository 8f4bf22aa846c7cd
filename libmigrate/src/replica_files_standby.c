/* File state of replication, standby side: the staging and install of an
 * update's files, and promotion of the replica copy (replica_files.h;
 * docs/FAILOVER.md "File state"). The primary's rounds that send them are
 * in replica_files_primary.c.
 *
 * Reuses the migration's file machinery: the bounds-checked patches of
 * delta.c, staging and the atomic install of files.c. Pieces are patched
 * against the replica copy into a staging folder on the update's strand as
 * they arrive, each file checked against the digest of the bytes the
 * primary read; the ReplicaUpdate completes the staging with the unchanged
 * files and installs it by an atomic rename as the new replica copy. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "delta.h"
#include "digest.h"
#include "files.h"
#include "replica_files.h"

bool mig__rf_user_ok(const char *user)
{
	return mig__valid_user(user) && !strchr(user, '/') && strcmp(user, ".") != 0 &&
	       strcmp(user, "..") != 0 && strncmp(user, ".mig-", 5) != 0;
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
	mig__digest *hash;
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
	mig__digest_free(s->hash);
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
	uint8_t dgst[MIG__DIGEST_LEN];
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
	s->hash = mig__digest_new();
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
		    mig__digest_update(s->hash, buf, want)) {
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
	s->hash = mig__digest_new();
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
			       mig__digest_update(s->hash, p->data, p->len))) {
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
	uint8_t dg[MIG__DIGEST_LEN];
	mig__digest_peek(s->hash, dg);
	uint64_t out_size = s->tail ? s->written : mig__patch_output_size(s->patch);
	if (out_size != p->size || memcmp(dg, p->dgst, MIG__DIGEST_LEN) != 0) {
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
	if (f->digest.len == MIG__DIGEST_LEN)
		memcpy(p->dgst, f->digest.data, MIG__DIGEST_LEN);
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
