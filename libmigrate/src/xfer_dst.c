/* File transfer, destination side: send signatures of the copy this engine
 * holds (its departed-user cache), hand the source's frames to the
 * transfer's strand, answer each round (digest check, staged-file sync),
 * verify digests at PREPARE and install at COMMIT. The streams themselves
 * (patching deltas, appending tails, writing DATA into staging) are
 * received by xfer_dst_stream.c. Everything touching disk runs on the
 * transfer's strand. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "handoff_int.h"
#include "xfer_int.h"

/* Credit is returned in batches of at least this many bytes. */
#define CREDIT_BATCH (1024u * 1024)

char *mig__xdst_cache_root(const mig__fdomain *d)
{
	return mig__asprintf("%s/%s", d->root, MIG__CACHE_DIR);
}

/* ------------------------------------------------------------------ tables */

struct dst_file *mig__xdst_find_file(struct dst_domain *dd, const char *path, bool create)
{
	for (size_t i = 0; i < dd->n; i++)
		if (strcmp(dd->files[i].path, path) == 0)
			return &dd->files[i];
	if (!create)
		return NULL;
	if (dd->n == dd->cap) {
		size_t cap = dd->cap ? 2 * dd->cap : 16;
		struct dst_file *p = mig__realloc(dd->files, cap * sizeof(*p));
		if (!p)
			return NULL;
		dd->files = p;
		dd->cap = cap;
	}
	struct dst_file *f = &dd->files[dd->n];
	memset(f, 0, sizeof(*f));
	if (!(f->path = mig__strdup(path)))
		return NULL;
	dd->n++;
	return f;
}

static void remove_file(struct dst_domain *dd, struct dst_file *f)
{
	mig__free(f->path);
	mig__digest_free(f->hash);
	size_t i = (size_t)(f - dd->files);
	memmove(&dd->files[i], &dd->files[i + 1], (dd->n - i - 1) * sizeof(*f));
	dd->n--;
}

void mig__xdst_free(struct mig__xfer *x)
{
	struct dst_stream *s = x->streams;
	while (s) {
		struct dst_stream *next = s->next;
		mig__xdst_stream_free(s);
		s = next;
	}
	for (size_t i = 0; i < x->ndd; i++) {
		for (size_t k = 0; k < x->dd[i].n; k++) {
			mig__free(x->dd[i].files[k].path);
			mig__digest_free(x->dd[i].files[k].hash);
		}
		mig__free(x->dd[i].files);
	}
	mig__free(x->dd);
}

void mig__xdst_fail(struct mig__xfer *x, int err, const char *fmt, ...)
{
	if (x->failed)
		return; /* the first cause is the one reported */
	x->failed = err;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(x->failed_why, sizeof(x->failed_why), fmt, ap);
	va_end(ap);
}

static void send_round_done(struct mig__xfer *x, uint32_t round, char **redo, size_t nredo)
{
	Migwire__RoundDone rd = MIGWIRE__ROUND_DONE__INIT;
	rd.mid = x->mid;
	rd.round = round;
	rd.n_redo = nredo;
	rd.redo = redo;
	if (x->failed) {
		rd.has_code = true;
		rd.code = x->failed;
		rd.reason = x->failed_why;
	}
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_ROUND_DONE;
	f.round_done = &rd;
	mig__xfer_send(x, &f);
}

void mig__xdst_send_credit(struct mig__xfer *x, bool force)
{
	if (!x->uncredited || (!force && x->uncredited < CREDIT_BATCH))
		return;
	Migwire__Credit c = MIGWIRE__CREDIT__INIT;
	c.mid = x->mid;
	c.bytes = x->uncredited;
	x->uncredited = 0;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_CREDIT;
	f.credit = &c;
	mig__xfer_send(x, &f);
}

/* ------------------------------------------------------------------ signatures */

/* A signature stream (empty: no copy of that file here). */
int mig__xdst_send_sig_stream(struct mig__xfer *x, size_t domain, const char *path,
			      const mig__bytes *sig, uint8_t *buf)
{
	Migwire__FileStream fs = MIGWIRE__FILE_STREAM__INIT;
	fs.mid = x->mid;
	fs.stream = ++x->next_stream;
	fs.kind = MIGWIRE__STREAM_KIND__STREAM_SIGNATURE;
	fs.domain = x->dd[domain].d->name;
	fs.path = (char *)path;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_FILE_STREAM;
	f.file_stream = &fs;
	int rc = mig__xfer_send(x, &f);
	for (size_t off = 0; !rc && (off < sig->len || off == 0); off += XFER_CHUNK_BYTES) {
		size_t n = sig->len - off > XFER_CHUNK_BYTES ? XFER_CHUNK_BYTES : sig->len - off;
		if (n)
			memcpy(buf, sig->data + off, n);
		rc = mig__xfer_send_chunk(x, fs.stream, buf, n, off + n >= sig->len, false);
		if (!sig->len)
			break;
	}
	return rc;
}

static int send_signature(struct mig__xfer *x, size_t domain, const char *croot,
			  const mig__file_entry *fe, uint8_t *buf)
{
	int fd = mig__files_open_read(croot, x->user, fe->path);
	if (fd < 0)
		return 0; /* the cache changed under us: just no basis for it */
	mig__sig_params p;
	mig__delta_params(fe->size, &p);
	mig__bytes sig = {0};
	int rc = mig__delta_signature(fd, UINT64_MAX, &p, &sig);
	close(fd);
	if (rc) {
		mig__bytes_free(&sig);
		return 0;
	}
	if (x->fault == MIG__FAULT_FILE_BAD_SIGNATURE && sig.len >= MIG__SIG_HEADER_LEN) {
		x->fault = MIG__FAULT_NONE; /* tests: a hostile destination */
		sig.data[4] = 0x7f;
		sig.data[5] = sig.data[6] = sig.data[7] = 0xff;
	}
	rc = mig__xdst_send_sig_stream(x, domain, fe->path, &sig, buf);
	mig__bytes_free(&sig);
	return rc;
}

static void signatures_task(void *arg)
{
	struct mig__xfer *x = arg;
	uint8_t *buf = mig__malloc(XFER_CHUNK_BYTES);
	for (size_t i = 0; buf && i < x->ndd && !atomic_load(&x->cancelled); i++) {
		char *croot = mig__xdst_cache_root(x->dd[i].d);
		mig__file_list list = {0};
		char why[MIG__REASON_MAX];
		/* A cache that cannot be read is no basis, not an error. */
		if (croot && mig__files_scan(croot, x->user, &list, why, sizeof(why)) == 0)
			for (size_t k = 0; k < list.count; k++)
				if (send_signature(x, i, croot, &list.entries[k], buf) != 0)
					break;
		mig__file_list_free(&list);
		mig__free(croot);
	}
	mig__free(buf);
	send_round_done(x, 0, NULL, 0);
}

int mig__xdst_start(mig_engine *e, struct mig_migration *m)
{
	struct mig__xfer *x = mig__xfer_new(e, m, false);
	if (!x)
		return MIG_ENOMEM;
	x->dd = mig__calloc(e->nfdomains, sizeof(*x->dd));
	if (!x->dd) {
		mig__xfer_end(e, m, false);
		return MIG_ENOMEM;
	}
	x->ndd = e->nfdomains;
	for (size_t i = 0; i < e->nfdomains; i++)
		x->dd[i].d = &e->fdomains[i];
	if (mig__strand_post(x->strand, signatures_task, NULL, x) != 0) {
		mig__xfer_end(e, m, false);
		return MIG_ENOMEM;
	}
	return 0;
}

/* ------------------------------------------------------------------ round ends, frames */

struct sent_entry {
	char *path; /* "domain/path" */
	uint64_t size;
	uint8_t dgst[MIG__DIGEST_LEN];
};

struct round_end_job {
	struct mig__xfer *x;
	uint32_t round;
	bool final;
	struct sent_entry *sent;
	size_t nsent;
	size_t n;
	char *deleted[];
};

static void round_end_free(void *arg)
{
	struct round_end_job *j = arg;
	for (size_t i = 0; i < j->n; i++)
		mig__free(j->deleted[i]);
	for (size_t i = 0; i < j->nsent; i++)
		mig__free(j->sent[i].path);
	mig__free(j->sent);
	mig__free(j);
}

/* Splits "domain/path" in place; returns the domain index or SIZE_MAX. */
static size_t split_domain_path(struct mig__xfer *x, char *dp, char **path)
{
	char *slash = strchr(dp, '/');
	*slash = '\0';
	*path = slash + 1;
	size_t found = SIZE_MAX;
	for (size_t d = 0; d < x->ndd; d++)
		if (strcmp(x->dd[d].d->name, dp) == 0)
			found = d;
	*slash = '/';
	return found;
}

/* Checks each file the round sent against the source's digest. A mismatch
 * (librsync matched a block by its checksums that was not the same data)
 * is not an error: the staged file is dropped and the source asked to send
 * it whole. Returns the number of such files, listed in redo. */
static size_t check_sent(struct mig__xfer *x, struct round_end_job *j, char **redo)
{
	size_t n = 0;
	for (size_t i = 0; i < j->nsent; i++) {
		char *path;
		size_t d = split_domain_path(x, j->sent[i].path, &path);
		if (d == SIZE_MAX)
			continue;
		struct dst_file *f = mig__xdst_find_file(&x->dd[d], path, false);
		uint8_t got[MIG__DIGEST_LEN];
		bool ok = f && f->hash && f->size == j->sent[i].size &&
			  mig__digest_peek(f->hash, got) == 0 && memcmp(got, j->sent[i].dgst, MIG__DIGEST_LEN) == 0;
		if (ok)
			continue;
		if (f) {
			mig__files_staging_unlink(x->dd[d].d->root, x->mid, path);
			remove_file(&x->dd[d], f);
		}
		redo[n++] = j->sent[i].path;
	}
	return n;
}

/* fsyncs every staged file that changed since it was last synced, adding
 * their number to *count. After each pre-copy round (the user is served)
 * this leaves PREPARE, with the user paused, only the final round's files
 * to sync, however large the folder: the fsync of a file whose
 * writeback is done still waits for a journal commit or a disk cache flush
 * (~4 ms each on the benchmark's virtio disk), once per file. Their
 * writeback started when each was complete (start_writeback()). */
static int sync_fault(struct mig__xfer *x, int rc)
{
	if (x->fault == MIG__FAULT_FILE_SYNC) {
		x->fault = MIG__FAULT_NONE; /* tests: a disk failing to write */
		rc = MIG_EIO;
	}
	return rc;
}

int mig__xdst_sync_fd(struct mig__xfer *x, int fd)
{
	int rc = fsync(fd) < 0 ? MIG_EIO : 0;
	rc = sync_fault(x, rc);
	if (!rc)
		x->synced_streaming++;
	return rc;
}

/* Files fsynced as their streams ended count as synced by the round they
 * belong to: pre-copy (user served) or the final one (user paused). */
static void count_streaming(struct mig__xfer *x, unsigned *count)
{
	*count += x->synced_streaming;
	x->synced_streaming = 0;
}

static void sync_staged(struct mig__xfer *x, unsigned *count)
{
	for (size_t d = 0; d < x->ndd && !x->failed; d++) {
		struct dst_domain *dd = &x->dd[d];
		for (size_t i = 0; i < dd->n && !x->failed; i++) {
			struct dst_file *f = &dd->files[i];
			if (f->durable)
				continue;
			int rc = mig__files_staging_sync(dd->d->root, x->mid, f->path);
			rc = sync_fault(x, rc);
			if (rc) {
				mig__xdst_fail(x, rc, "%s/%s: cannot sync the staged file: %s",
					       dd->d->name, f->path, mig_strerror(rc));
				return;
			}
			f->durable = true;
			(*count)++;
		}
	}
}

static void round_end_task(void *arg)
{
	struct round_end_job *j = arg;
	struct mig__xfer *x = j->x;
	for (size_t i = 0; i < j->n && !x->failed; i++) {
		char *slash = strchr(j->deleted[i], '/');
		*slash = '\0';
		for (size_t d = 0; d < x->ndd; d++) {
			if (strcmp(x->dd[d].d->name, j->deleted[i]) != 0)
				continue;
			struct dst_file *f = mig__xdst_find_file(&x->dd[d], slash + 1, false);
			if (f) {
				mig__files_staging_unlink(x->dd[d].d->root, x->mid, slash + 1);
				remove_file(&x->dd[d], f);
			}
		}
	}
	char **redo = mig__calloc(j->nsent ? j->nsent : 1, sizeof(*redo));
	size_t nredo = 0;
	if (!redo)
		mig__xdst_fail(x, MIG_ENOMEM, "out of memory");
	else if (!x->failed)
		nredo = check_sent(x, j, redo);
	/* Before RoundDone, so that the source's next move (another round, or
	 * the pause) waits for it, and never while the user is paused: the
	 * final round's files are synced by PREPARE's verification. */
	count_streaming(x, j->final ? &x->synced_paused : &x->synced_precopy);
	if (!j->final && !x->failed)
		sync_staged(x, &x->synced_precopy);
	mig__xdst_send_credit(x, true);
	send_round_done(x, j->round, redo, nredo);
	mig__free(redo);
	round_end_free(j);
}

static size_t domain_index(struct mig__xfer *x, const char *name)
{
	for (size_t i = 0; i < x->ndd; i++)
		if (strcmp(x->dd[i].d->name, name) == 0)
			return i;
	return SIZE_MAX;
}

void mig__xdst_on_frame(mig_engine *e, struct mig_migration *m, const mig__frame *f)
{
	struct mig__xfer *x = m->xfer;
	int rc = 0;
	if (m->phase == MIG__DST_ACCEPTED)
		m->deadline_us = mig__now_us() + mig__handoff_timeout_us(e);
	switch (f->body_case) {
	case MIGWIRE__FRAME__BODY_FILE_STREAM: {
		const Migwire__FileStream *fs = f->file_stream;
		size_t d = domain_index(x, fs->domain);
		if (d == SIZE_MAX) {
			mig__transport_close(e->transport, m->conn, 1008, "unexpected file stream");
			return;
		}
		struct stream_job *j = mig__calloc(1, sizeof(*j));
		if (!j || !(j->path = mig__strdup(fs->path))) {
			mig__free(j);
			rc = MIG_ENOMEM;
			break;
		}
		j->x = x;
		j->id = fs->stream;
		j->kind = fs->kind;
		j->domain = d;
		j->offset = fs->offset;
		j->size = fs->has_size ? fs->size : UINT64_MAX;
		rc = mig__strand_post(x->strand,
				      fs->kind == MIGWIRE__STREAM_KIND__STREAM_SIGNATURE
					      ? mig__xdst_sign_staged_task
					      : mig__xdst_open_stream_task,
				      mig__xdst_stream_job_free, j);
		if (rc)
			mig__xdst_stream_job_free(j);
		break;
	}
	case MIGWIRE__FRAME__BODY_CHUNK: {
		const Migwire__Chunk *c = f->chunk;
		struct chunk_job *j = mig__malloc(sizeof(*j));
		if (!j) {
			rc = MIG_ENOMEM;
			break;
		}
		j->x = x;
		j->stream = c->stream;
		j->last = c->has_last && c->last;
		j->chunk = *c;
		/* The payload moves to the job instead of being copied: nothing
		 * reads this frame's data after this. */
		j->chunk.data.data = mig__wire_take_bytes(&f->chunk->data);
		rc = mig__strand_post(x->strand, mig__xdst_chunk_task, mig__xdst_chunk_job_free, j);
		if (rc)
			mig__xdst_chunk_job_free(j);
		break;
	}
	case MIGWIRE__FRAME__BODY_ROUND_END: {
		const Migwire__RoundEnd *re = f->round_end;
		struct round_end_job *j = mig__calloc(1, sizeof(*j) + re->n_deleted * sizeof(char *));
		if (!j) {
			rc = MIG_ENOMEM;
			break;
		}
		j->x = x;
		j->round = re->round;
		j->final = re->has_final && re->final;
		for (size_t i = 0; i < re->n_deleted; i++, j->n++)
			if (!(j->deleted[i] = mig__strdup(re->deleted[i]))) {
				rc = MIG_ENOMEM;
				break;
			}
		j->sent = mig__calloc(re->n_sent ? re->n_sent : 1, sizeof(*j->sent));
		if (!j->sent)
			rc = MIG_ENOMEM;
		for (size_t i = 0; !rc && i < re->n_sent; i++, j->nsent++) {
			j->sent[i].size = re->sent[i]->size;
			memcpy(j->sent[i].dgst, re->sent[i]->digest.data, MIG__DIGEST_LEN);
			if (!(j->sent[i].path = mig__strdup(re->sent[i]->path)))
				rc = MIG_ENOMEM;
		}
		if (!rc)
			rc = mig__strand_post(x->strand, round_end_task, round_end_free, j);
		if (rc)
			round_end_free(j);
		break;
	}
	default:
		mig__transport_close(e->transport, m->conn, 1008, "unexpected frame");
		return;
	}
	if (rc)
		mig__engine_log(e, MIG_LOG_ERROR, "migration %s: out of memory in file transfer",
				m->mid);
}

/* ------------------------------------------------------------------ verify, install */

struct verify_job {
	struct mig__xfer *x;
	struct mig__xfer_done *done; /* reserved when posted */
	size_t n;
	struct verify_entry {
		size_t domain;
		char *path;
		uint64_t size;
		uint8_t dgst[MIG__DIGEST_LEN];
	} entries[];
};

static void verify_free(void *arg)
{
	struct verify_job *j = arg;
	mig__xfer_done_free(j->done);
	for (size_t i = 0; i < j->n; i++)
		mig__free(j->entries[i].path);
	mig__free(j);
}

static void verified(mig_engine *e, struct mig_migration *m, int value, uint64_t aux, const char *why)
{
	m->bytes_sent += atomic_exchange(&m->xfer->wire_sent, 0);
	if (!value)
		mig__engine_log(e, MIG_LOG_INFO,
				"migration %s: staged files durable, %u synced during pre-copy, "
				"%llu at PREPARE",
				m->mid, m->xfer->synced_precopy, (unsigned long long)aux);
	mig__dst_files_verified(e, m, value, why);
}

static void verify_task(void *arg)
{
	struct verify_job *j = arg;
	struct mig__xfer *x = j->x;
	int err = x->failed;
	char why[MIG__REASON_MAX];
	mig__strlcpy(why, x->failed_why, sizeof(why));
	size_t expected = 0;
	for (size_t i = 0; i < j->n && !err; i++) {
		struct verify_entry *v = &j->entries[i];
		struct dst_domain *dd = &x->dd[v->domain];
		struct dst_file *f = mig__xdst_find_file(dd, v->path, false);
		uint8_t got[MIG__DIGEST_LEN];
		if (!f || !f->hash) {
			err = MIG_EPROTO;
			snprintf(why, sizeof(why), "%s/%s: never arrived", dd->d->name, v->path);
		} else if (mig__digest_peek(f->hash, got) != 0 || memcmp(got, v->dgst, MIG__DIGEST_LEN) != 0 ||
			   f->size != v->size) {
			err = MIG_EPROTO;
			snprintf(why, sizeof(why), "%s/%s: digest mismatch after patching",
				 dd->d->name, v->path);
		}
		expected++;
	}
	size_t staged = 0;
	for (size_t d = 0; d < x->ndd; d++)
		staged += x->dd[d].n;
	if (!err && staged != expected) {
		err = MIG_EPROTO;
		snprintf(why, sizeof(why), "%zu files staged, the manifest lists %zu", staged,
			 expected);
	}
	/* PREPARED promises a complete staged copy on disk: sync what the
	 * pre-copy rounds have not (the final round's files), then the
	 * folders. COMMIT then only renames. */
	if (!err) {
		count_streaming(x, &x->synced_paused);
		sync_staged(x, &x->synced_paused);
		err = x->failed;
		if (err)
			mig__strlcpy(why, x->failed_why, sizeof(why));
	}
	for (size_t d = 0; d < x->ndd && !err; d++) {
		err = mig__files_staging_sync_dirs(x->dd[d].d->root, x->mid);
		if (err)
			snprintf(why, sizeof(why), "%s: cannot sync the staged folders: %s",
				 x->dd[d].d->name, mig_strerror(err));
	}
	mig__xfer_done_post(j->done, verified, err, x->synced_paused, err ? why : "");
	j->done = NULL;
	verify_free(j);
}

void mig__xdst_verify(mig_engine *e, struct mig_migration *m, const Migwire__Prepare *p)
{
	struct mig__xfer *x = m->xfer;
	size_t n = 0;
	for (size_t i = 0; i < p->n_files; i++)
		n += p->files[i]->n_files;
	struct verify_job *j = mig__calloc(1, sizeof(*j) + n * sizeof(j->entries[0]));
	int err = j ? 0 : MIG_ENOMEM;
	const char *why = "out of memory";
	for (size_t i = 0; j && i < p->n_files && !err; i++) {
		size_t d = domain_index(x, p->files[i]->domain);
		if (d == SIZE_MAX) {
			err = MIG_ENODOMAIN;
			why = "PREPARE names a file domain not registered here";
			break;
		}
		for (size_t k = 0; k < p->files[i]->n_files; k++) {
			const Migwire__FileEntry *fe = p->files[i]->files[k];
			struct verify_entry *v = &j->entries[j->n];
			v->domain = d;
			v->size = fe->size;
			memcpy(v->dgst, fe->digest.data, MIG__DIGEST_LEN);
			if (!(v->path = mig__strdup(fe->path))) {
				err = MIG_ENOMEM;
				break;
			}
			j->n++;
		}
	}
	if (!err) {
		j->x = x;
		if (!(j->done = mig__xfer_done_new(x)))
			err = MIG_ENOMEM;
	}
	if (!err)
		err = mig__strand_post(x->strand, verify_task, verify_free, j);
	if (err) {
		if (j)
			verify_free(j);
		mig__dst_files_verified(e, m, err, why);
	}
}

static void installed(mig_engine *e, struct mig_migration *m, int value, uint64_t aux, const char *why)
{
	if (value)
		mig__engine_log(e, MIG_LOG_ERROR, "migration %s: installing files: %s", m->mid, why);
	mig__dst_files_installed(e, m);
}

static int install_files(struct mig__xfer *x, char *why, size_t why_len)
{
	int err = 0;
	for (size_t d = 0; d < x->ndd; d++) {
		const char *root = x->dd[d].d->root;
		/* PREPARE's verification made the staged tree durable. */
		int rc = mig__files_install_synced(root, x->user, x->mid);
		mig__files_staging_remove(root, x->mid); /* leftovers: the .tmp folder */
		if (rc && !err) {
			err = rc;
			snprintf(why, why_len, "%s: %s", x->dd[d].d->name, mig_strerror(rc));
		}
		/* The cached copy is older than what was just installed. */
		char *croot = mig__xdst_cache_root(x->dd[d].d);
		if (croot)
			mig__files_remove_user(croot, x->user);
		mig__free(croot);
	}
	return err;
}

/* `arg` is the task's completion. */
static void install_task(void *arg)
{
	char why[MIG__REASON_MAX] = "";
	int err = install_files(mig__xfer_done_xfer(arg), why, sizeof(why));
	mig__xfer_done_post(arg, installed, err, 0, why);
}

void mig__xdst_install(mig_engine *e, struct mig_migration *m)
{
	struct mig__xfer *x = m->xfer;
	struct mig__xfer_done *d = mig__xfer_done_new(x);
	if (d && mig__strand_post(x->strand, install_task, mig__xfer_done_free, d) == 0)
		return;
	mig__xfer_done_free(d);
	/* Without memory for the task, install here rather than lose it: the
	 * commit is decided. */
	char why[MIG__REASON_MAX] = "";
	int err = install_files(x, why, sizeof(why));
	installed(e, m, err, 0, why);
}

void mig__xfer_on_frame(mig_engine *e, struct mig_migration *m, const mig__frame *f, size_t bytes)
{
	MIG__UNUSED(bytes);
	if (!m->xfer)
		return;
	if (m->outgoing)
		mig__xsrc_on_frame(e, m, f);
	else
		mig__xdst_on_frame(e, m, f);
}
