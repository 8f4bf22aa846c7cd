/* File transfer, source side, the rounds: run pre-copy rounds while the
 * user is served (scan, the stop rule with change_estimate, RoundEnd), then
 * the final round after the pause, and build the manifests PREPARE
 * carries. Each round's files are sent by the per-file streams of
 * xfer_src_stream.c, which also holds the hand-over of signatures to the
 * strand; the entry points from the handoff and the destination's frames
 * (signatures, credit, RoundDone) are in xfer_src_frames.c.
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

struct src_file *mig__xsrc_find_file(struct src_domain *sd, const char *path, bool create)
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
	mig__digest_free(f->dgst);
	f->dgst = NULL;
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
			struct src_file *f = mig__xsrc_find_file(sd, fe->path, true);
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

bool mig__xsrc_needs_send(const struct src_domain *sd, const struct src_file *f)
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
		uint8_t *d = mig__realloc(l->digests, cap * MIG__DIGEST_LEN);
		if (!d)
			return MIG_ENOMEM;
		l->digests = d;
		l->cap = cap;
	}
	Migwire__FileEntry *e = &l->entries[l->n];
	migwire__file_entry__init(e);
	e->path = mig__asprintf("%s/%s", domain, f->path);
	if (!e->path || !f->dgst || mig__digest_peek(f->dgst, l->digests + MIG__DIGEST_LEN * l->n) != 0) {
		mig__free(e->path);
		return e->path ? MIG_ESYSTEM : MIG_ENOMEM;
	}
	e->size = f->sent_size;
	e->digest.len = MIG__DIGEST_LEN;
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
		rc = mig__xsrc_request_signatures(x);
	for (size_t i = 0; i < x->nsd && !rc; i++) {
		struct src_domain *sd = &x->sd[i];
		for (size_t k = 0; k < sd->n && !rc; k++) {
			struct src_file *f = &sd->files[k];
			if (mig__xsrc_needs_send(sd, f)) {
				s.total = 0;
				f->hot = f->hot || f->sent;
				rc = mig__xsrc_wait_basis(x, i, f, sig_wait_us, why, why_len);
				if (!rc)
					rc = mig__xsrc_send_file(x, i, f, &s, why, why_len);
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
			sent.entries[i].digest.data = sent.digests + MIG__DIGEST_LEN * i;
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
	/* Digests live inside the entries' own storage: MIG__DIGEST_LEN bytes each. */
	uint8_t *digests = x->digests = mig__calloc(total ? total : 1, MIG__DIGEST_LEN);
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
			fe->digest.data = digests + MIG__DIGEST_LEN * e;
			fe->digest.len = MIG__DIGEST_LEN;
			if (!f->dgst || mig__digest_peek(f->dgst, fe->digest.data) != 0)
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
	int rc = mig__xsrc_drain_signatures(x, true);
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

void mig__xsrc_post_round(mig_engine *e, struct mig_migration *m, bool final)
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
			struct src_file *f = mig__xsrc_find_file(&x->sd[d], slash + 1, false);
			if (f)
				file_forget_sent(f);
		}
	}
	redo_free(j);
}

int mig__xsrc_post_redo(struct mig__xfer *x, const Migwire__RoundDone *rd)
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

int mig__xsrc_post_ready(struct mig__xfer *x)
{
	struct mig__xfer_done *d = mig__xfer_done_new(x);
	if (!d || mig__strand_post(x->strand, ready_task, mig__xfer_done_free, d) != 0) {
		mig__xfer_done_free(d);
		return MIG_ENOMEM;
	}
	return 0;
}
