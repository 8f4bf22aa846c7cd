/* File transfer, common part: lifetime, completions, sending from workers,
 * flow control and chunk compression. */
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <zstd.h>

#include "xfer_int.h"

struct mig__xfer *mig__xfer_new(mig_engine *e, struct mig_migration *m, bool outgoing)
{
	struct mig__xfer *x = mig__calloc(1, sizeof(*x));
	if (!x)
		return NULL;
	x->user = mig__strdup(m->user);
	x->strand = mig__strand_new(e->workers);
	if (!x->user || !x->strand) {
		mig__strand_release(x->strand);
		mig__free(x->user);
		mig__free(x);
		return NULL;
	}
	x->e = e;
	x->m = m;
	atomic_fetch_add(&m->refs, 1);
	x->outgoing = outgoing;
	x->conn = m->conn;
	mig__strlcpy(x->mid, m->mid, sizeof(x->mid));
	atomic_init(&x->cancelled, false);
	atomic_init(&x->wire_sent, 0);
	atomic_init(&x->link_bytes_per_s, 0);
	atomic_init(&x->round_sent_bytes, 0);
	pthread_mutex_init(&x->fc_lock, NULL);
	pthread_cond_init(&x->fc_cond, NULL);
	x->compression = e->compression;
	if (outgoing)
		x->pool = mig__pool_new(MIG__POOL_BLOCK, XFER_POOL_KEEP);
	static const enum mig__fault_point src_faults[] = {
		MIG__FAULT_FILE_CORRUPT_CHUNK, MIG__FAULT_FILE_TRUNCATE, MIG__FAULT_FILE_DOTDOT,
		MIG__FAULT_FILE_CORRUPT_DATA, MIG__FAULT_FILE_DATA_OVERRUN};
	if (outgoing) {
		for (size_t i = 0; i < MIG__ARRAY_LEN(src_faults) && !x->fault; i++)
			if (mig__engine_fault_at(e, src_faults[i]))
				x->fault = src_faults[i];
	} else if (mig__engine_fault_at(e, MIG__FAULT_FILE_BAD_SIGNATURE)) {
		x->fault = MIG__FAULT_FILE_BAD_SIGNATURE;
	} else if (mig__engine_fault_at(e, MIG__FAULT_FILE_SYNC)) {
		x->fault = MIG__FAULT_FILE_SYNC;
	}
	m->xfer = x;
	return x;
}

/* ------------------------------------------------------------------ completions */

struct mig__xfer_done {
	struct mig__xfer *x;     /* valid while the strand runs the task */
	struct mig_migration *m; /* a reference */
	mig__evq *events;
	mig__tev *ev;            /* reserved; NULL once posted */
	mig__xfer_done_fn fn;
	int value;
	uint64_t aux;
	char why[MIG__REASON_MAX];
};

struct mig__xfer_done *mig__xfer_done_new(struct mig__xfer *x)
{
	struct mig__xfer_done *d = mig__calloc(1, sizeof(*d));
	mig__tev *ev = mig__calloc(1, sizeof(*ev));
	if (!d || !ev) {
		mig__free(d);
		mig__free(ev);
		return NULL;
	}
	d->x = x;
	d->m = x->m;
	atomic_fetch_add(&x->m->refs, 1);
	d->events = &x->e->events;
	d->ev = ev;
	return d;
}

struct mig__xfer *mig__xfer_done_xfer(const struct mig__xfer_done *d)
{
	return d->x;
}

void mig__xfer_done_free(void *arg)
{
	struct mig__xfer_done *d = arg;
	if (!d)
		return;
	mig__free(d->ev);
	mig__migration_unref(d->m);
	mig__free(d);
}

static void completion_run(void *ctx, void *arg)
{
	struct mig__xfer_done *d = arg;
	mig_engine *e = ctx;
	/* The migration may have ended (or moved on) while the task ran: the
	 * callee checks its phase; a finished transfer is ignored here. */
	if (d->m->xfer && d->m->phase != MIG__DONE)
		d->fn(e, d->m, d->value, d->aux, d->why);
	mig__xfer_done_free(d);
}

void mig__xfer_done_post(struct mig__xfer_done *d, mig__xfer_done_fn fn, int value, uint64_t aux,
			 const char *why)
{
	mig__tev *ev = d->ev;
	d->ev = NULL; /* the event owns the completion now, and frees itself */
	d->fn = fn;
	d->value = value;
	d->aux = aux;
	mig__strlcpy(d->why, why ? why : "", sizeof(d->why));
	ev->type = MIG__TEV_CALL;
	ev->call = completion_run;
	ev->discard = mig__xfer_done_free;
	ev->arg = d;
	mig__evq_push(d->events, &ev->link);
}

/* ------------------------------------------------------------------ sending */

int mig__xfer_send(struct mig__xfer *x, const mig__frame *f)
{
	if (atomic_load(&x->cancelled))
		return MIG_ECANCELED;
	mig__msg *msg = NULL;
	int rc = mig__wire_encode_pool(f, x->e->max_frame,
				       f->body_case == MIGWIRE__FRAME__BODY_CHUNK ? x->pool : NULL,
				       &msg);
	if (rc)
		return rc;
	atomic_fetch_add(&x->wire_sent, msg->len);
	mig__transport_send(x->e->transport, x->conn, msg);
	return 0;
}

void mig__xfer_credit(struct mig__xfer *x, uint64_t bytes)
{
	pthread_mutex_lock(&x->fc_lock);
	x->inflight = bytes > x->inflight ? 0 : x->inflight - bytes;
	pthread_cond_broadcast(&x->fc_cond);
	pthread_mutex_unlock(&x->fc_lock);
}

int mig__xfer_pace(struct mig__xfer *x, size_t len)
{
	uint64_t rate = x->e->precopy_rate_limit;
	if (!rate)
		return 0;
	uint64_t now = mig__now_us();
	if (x->pace_next_us > now) {
		pthread_mutex_lock(&x->fc_lock);
		while (!atomic_load(&x->cancelled) && (now = mig__now_us()) < x->pace_next_us) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			uint64_t ns = (uint64_t)ts.tv_nsec + (x->pace_next_us - now) * 1000u;
			ts.tv_sec += (time_t)(ns / 1000000000u);
			ts.tv_nsec = (long)(ns % 1000000000u);
			pthread_cond_timedwait(&x->fc_cond, &x->fc_lock, &ts);
		}
		pthread_mutex_unlock(&x->fc_lock);
		if (atomic_load(&x->cancelled))
			return MIG_ECANCELED;
	}
	/* Time the round spent not sending is not saved up: at most this one
	 * chunk goes at once. */
	if (x->pace_next_us < now)
		x->pace_next_us = now;
	x->pace_next_us += (uint64_t)len * 1000000u / rate;
	return 0;
}

static int wait_credit(struct mig__xfer *x, size_t len)
{
	pthread_mutex_lock(&x->fc_lock);
	while (x->inflight > 0 && x->inflight + len > XFER_WINDOW_BYTES &&
	       !atomic_load(&x->cancelled))
		pthread_cond_wait(&x->fc_cond, &x->fc_lock);
	x->inflight += len;
	pthread_mutex_unlock(&x->fc_lock);
	return atomic_load(&x->cancelled) ? MIG_ECANCELED : 0;
}

/* Compress when it saves time on this link: the bytes saved, at the
 * measured link rate, must outweigh the time spent compressing. While the
 * rate is unknown, compressing is assumed to pay. Incompressible data
 * (already-compressed frames) is detected in a few chunks and then only
 * re-probed now and then. */
static bool try_compress(struct mig__xfer *x, const uint8_t *data, size_t len, size_t *zlen)
{
	if (x->compression == MIG_COMPRESSION_OFF || len < 512)
		return false;
	if (x->compression == MIG_COMPRESSION_AUTO && x->skip_compress) {
		x->skip_compress--;
		return false;
	}
	size_t bound = ZSTD_compressBound(len);
	if (bound > x->zcap) {
		uint8_t *p = mig__realloc(x->zbuf, bound);
		if (!p)
			return false;
		x->zbuf = p;
		x->zcap = bound;
	}
	uint64_t t0 = mig__now_us();
	size_t n = ZSTD_compress(x->zbuf, x->zcap, data, len, 1);
	uint64_t spent_us = mig__now_us() - t0;
	if (ZSTD_isError(n))
		return false;
	if (x->compression == MIG_COMPRESSION_ON) {
		*zlen = n;
		return n < len;
	}
	uint64_t rate = atomic_load(&x->link_bytes_per_s);
	bool pays = n < len - len / 16;
	if (pays && rate)
		pays = (double)(len - n) * 1e6 / (double)rate > (double)spent_us;
	if (!pays) {
		if (++x->incompressible_run >= 4) {
			x->skip_compress = 32;
			x->incompressible_run = 0;
		}
		return false;
	}
	x->incompressible_run = 0;
	*zlen = n;
	return true;
}

int mig__xfer_send_chunk(struct mig__xfer *x, uint32_t stream, const uint8_t *data, size_t len,
			 bool last, bool flow)
{
	if (flow) {
		int rc = wait_credit(x, len);
		if (rc)
			return rc;
	}
	Migwire__Chunk c = MIGWIRE__CHUNK__INIT;
	c.mid = x->mid;
	c.stream = stream;
	size_t zlen = 0;
	if (try_compress(x, data, len, &zlen)) {
		c.has_compression = true;
		c.compression = MIGWIRE__COMPRESSION__COMPRESSION_ZSTD;
		c.has_raw_len = true;
		c.raw_len = (uint32_t)len;
		c.data.data = x->zbuf;
		c.data.len = zlen;
	} else {
		c.data.data = (uint8_t *)data;
		c.data.len = len;
	}
	if (last) {
		c.has_last = true;
		c.last = true;
	}
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_CHUNK;
	f.chunk = &c;
	return mig__xfer_send(x, &f);
}

int mig__xfer_chunk_data(const Migwire__Chunk *c, uint8_t **out, size_t *len, char *why,
			 size_t why_len)
{
	*out = NULL;
	*len = 0;
	if (c->compression == MIGWIRE__COMPRESSION__COMPRESSION_NONE) {
		*out = mig__malloc(c->data.len ? c->data.len : 1);
		if (!*out)
			return MIG_ENOMEM;
		if (c->data.len)
			memcpy(*out, c->data.data, c->data.len);
		*len = c->data.len;
		return 0;
	}
	/* raw_len was bounded by the wire check (MIG__CHUNK_RAW_MAX). */
	size_t raw = c->raw_len;
	*out = mig__malloc(raw ? raw : 1);
	if (!*out)
		return MIG_ENOMEM;
	size_t n = ZSTD_decompress(*out, raw, c->data.data, c->data.len);
	if (ZSTD_isError(n) || n != raw) {
		snprintf(why, why_len, "chunk does not decompress to its stated %zu bytes", raw);
		mig__free(*out);
		*out = NULL;
		return MIG_EPROTO;
	}
	*len = n;
	return 0;
}

uint64_t mig__xfer_collect_sent(struct mig_migration *m)
{
	return m->xfer ? atomic_exchange(&m->xfer->wire_sent, 0) : 0;
}

/* ------------------------------------------------------------------ lifetime */

static void free_task(void *arg)
{
	struct mig__xfer *x = arg;
	if (x->outgoing)
		mig__xsrc_free(x);
	else
		mig__xdst_free(x);
	mig__free(x->zbuf);
	mig__free(x->user);
	mig__pool_release(x->pool);
	pthread_mutex_destroy(&x->fc_lock);
	pthread_cond_destroy(&x->fc_cond);
	/* The strand frees itself after this, its final task. */
	mig__migration_unref(x->m);
	mig__free(x);
}

struct staging_job {
	char *root;
	char mid[MIG__MID_LEN + 1];
};

static void staging_remove_task(void *arg)
{
	struct staging_job *j = arg;
	mig__files_staging_remove(j->root, j->mid);
	mig__free(j->root);
	mig__free(j);
}

static void staging_job_discard(void *arg)
{
	struct staging_job *j = arg;
	mig__free(j->root);
	mig__free(j);
}

void mig__xfer_end(mig_engine *e, struct mig_migration *m, bool remove_staging)
{
	struct mig__xfer *x = m->xfer;
	if (!x)
		return;
	m->bytes_sent += atomic_exchange(&x->wire_sent, 0);
	m->xfer = NULL;
	mig__transport_trim(e->transport);
	atomic_store(&x->cancelled, true);
	pthread_mutex_lock(&x->fc_lock);
	pthread_cond_broadcast(&x->fc_cond);
	pthread_mutex_unlock(&x->fc_lock);
	if (remove_staging && !x->outgoing) {
		for (size_t i = 0; i < e->nfdomains; i++) {
			struct staging_job *j = mig__calloc(1, sizeof(*j));
			if (!j || !(j->root = mig__strdup(e->fdomains[i].root))) {
				mig__free(j);
				continue;
			}
			mig__strlcpy(j->mid, x->mid, sizeof(j->mid));
			if (mig__strand_post(x->strand, staging_remove_task, staging_job_discard, j))
				staging_job_discard(j);
		}
	}
	/* The strand is serial, so this runs after every task of the transfer
	 * (or as their discard at shutdown). */
	mig__strand_finish(x->strand, free_task, free_task, x);
}

/* ------------------------------------------------------------------ release */

struct release_job {
	char *user;
	char *root;
	uint64_t cache_bytes;
};

static void release_free(void *arg)
{
	struct release_job *j = arg;
	mig__free(j->user);
	mig__free(j->root);
	mig__free(j);
}

static void release_task(void *arg)
{
	struct release_job *j = arg;
	if (j->cache_bytes) {
		mig__files_cache_trim(j->root, j->cache_bytes);
	} else {
		char *croot = mig__asprintf("%s/%s", j->root, MIG__CACHE_DIR);
		if (croot)
			mig__files_remove_user(croot, j->user);
		mig__free(croot);
	}
	release_free(j);
}

void mig__xfer_release_user(mig_engine *e, const char *user)
{
	for (size_t i = 0; i < e->nfdomains && e->maint; i++) {
		/* The folder leaves the user's place now, with two renames, so a
		 * user coming straight back never meets its old folder; trimming
		 * the cache (or deleting the copy) can wait for a worker. */
		int rc = mig__files_cache_put(e->fdomains[i].root, user);
		if (rc)
			mig__engine_log(e, MIG_LOG_ERROR, "user %s: cannot move %s's files aside: %s",
					user, e->fdomains[i].name, mig_strerror(rc));
		struct release_job *j = mig__calloc(1, sizeof(*j));
		if (!j || !(j->user = mig__strdup(user)) ||
		    !(j->root = mig__strdup(e->fdomains[i].root))) {
			if (j)
				release_free(j);
			mig__engine_log(e, MIG_LOG_ERROR, "user %s: out of memory releasing files", user);
			continue;
		}
		j->cache_bytes = e->file_cache_bytes;
		if (mig__strand_post(e->maint, release_task, release_free, j) != 0)
			release_free(j);
	}
}
