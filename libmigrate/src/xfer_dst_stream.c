/* File transfer, destination side, the incoming per-file streams: strand
 * jobs that mig__xdst_on_frame (xfer_dst.c) posts from dispatch. A stream
 * opens into staging (a delta patched against the staged copy or the
 * departed-user cache, a tail appended to the staged file, DATA written as
 * it comes); its chunks are written with the file's digest computed on the
 * way to disk, and its last chunk puts the file in place for the round's
 * check (xfer_dst.c). Also the answer to a source asking for the signature
 * of a staged file. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "handoff_int.h"
#include "xfer_int.h"

/* ------------------------------------------------------------------ streams */

static void stream_close(struct dst_stream *s)
{
	mig__patch_free(s->patch);
	s->patch = NULL;
	mig__digest_free(s->hash);
	s->hash = NULL;
	if (s->basis_fd >= 0)
		close(s->basis_fd);
	if (s->out_fd >= 0)
		close(s->out_fd);
	s->basis_fd = s->out_fd = -1;
}

void mig__xdst_stream_free(struct dst_stream *s)
{
	stream_close(s);
	mig__free(s->path);
	mig__free(s);
}
void mig__xdst_stream_job_free(void *arg)
{
	struct stream_job *j = arg;
	mig__free(j->path);
	mig__free(j);
}

/* The source asks for the signature of a staged file (one it sent in an
 * earlier round and that changed since): signed from the staged copy, which
 * holds exactly the bytes sent; an empty answer when there is none. Always
 * answered, so the source never waits for nothing. */
void mig__xdst_sign_staged_task(void *arg)
{
	struct stream_job *j = arg;
	struct mig__xfer *x = j->x;
	struct dst_domain *dd = &x->dd[j->domain];
	struct dst_file *f = mig__xdst_find_file(dd, j->path, false);
	mig__bytes sig = {0};
	uint8_t *buf = mig__malloc(XFER_CHUNK_BYTES);
	int fd = f && f->hash && !x->failed
			 ? mig__files_open_staging_read(dd->d->root, x->mid, j->path)
			 : -1;
	if (fd >= 0) {
		mig__sig_params p;
		mig__delta_params(f->size, &p);
		if (mig__delta_signature(fd, UINT64_MAX, &p, &sig) != 0)
			mig__bytes_free(&sig); /* no basis then: the file goes whole */
		close(fd);
	}
	if (!buf)
		mig__xdst_fail(x, MIG_ENOMEM, "out of memory");
	else
		mig__xdst_send_sig_stream(x, j->domain, j->path, &sig, buf);
	mig__bytes_free(&sig);
	mig__free(buf);
	mig__xdst_stream_job_free(j);
}

static struct dst_stream *find_stream(struct mig__xfer *x, uint32_t id)
{
	for (struct dst_stream *s = x->streams; s; s = s->next)
		if (s->id == id)
			return s;
	return NULL;
}

void mig__xdst_open_stream_task(void *arg)
{
	struct stream_job *j = arg;
	struct mig__xfer *x = j->x;
	struct dst_domain *dd = &x->dd[j->domain];
	const char *root = dd->d->root;
	struct dst_stream *s = mig__calloc(1, sizeof(*s));
	if (!s || !(s->path = mig__strdup(j->path))) {
		mig__free(s);
		mig__xdst_fail(x, MIG_ENOMEM, "out of memory");
		goto out;
	}
	s->id = j->id;
	s->kind = j->kind;
	s->domain = j->domain;
	s->offset = j->offset;
	s->basis_fd = s->out_fd = -1;
	s->next = x->streams;
	x->streams = s;
	if (x->failed)
		goto out;
	struct dst_file *f = mig__xdst_find_file(dd, j->path, false);
	if (j->kind == MIGWIRE__STREAM_KIND__STREAM_TAIL) {
		if (!f || !f->hash || f->size != j->offset) {
			mig__xdst_fail(x, MIG_EPROTO,
				       "%s/%s: tail at %llu does not continue the staged file",
				       dd->d->name, j->path, (unsigned long long)j->offset);
			goto out;
		}
		s->out_fd = mig__files_open_staging_append(root, x->mid, j->path);
		if (s->out_fd < 0)
			mig__xdst_fail(x, MIG_EIO, "%s/%s: cannot open the staged file",
				       dd->d->name, j->path);
		goto out;
	}
	if (j->kind == MIGWIRE__STREAM_KIND__STREAM_DATA) {
		/* The whole file as plain bytes: no basis, no patch. */
		if (j->size == UINT64_MAX) {
			mig__xdst_fail(x, MIG_EPROTO, "%s/%s: data stream without a size",
				       dd->d->name, j->path);
			goto out;
		}
		s->size = j->size;
		snprintf(s->tmp, sizeof(s->tmp), "%u", s->id);
		s->out_fd = mig__files_open_staging_tmp(root, x->mid, s->tmp);
		if (s->out_fd < 0)
			mig__xdst_fail(x, MIG_EIO, "%s/%s: cannot create a staging file",
				       dd->d->name, j->path);
		else if (!(s->hash = mig__digest_new()))
			mig__xdst_fail(x, MIG_ENOMEM, "out of memory");
		goto out;
	}
	/* A delta: its basis is the staged file of an earlier round, else the
	 * copy in the departed-user cache, else nothing. */
	if (f && f->hash) {
		s->basis_fd = mig__files_open_staging_read(root, x->mid, j->path);
	} else {
		char *croot = mig__xdst_cache_root(dd->d);
		s->basis_fd = croot ? mig__files_open_read(croot, x->user, j->path) : -1;
		mig__free(croot);
	}
	if (s->basis_fd < 0)
		s->basis_fd = -1;
	snprintf(s->tmp, sizeof(s->tmp), "%u", s->id);
	s->out_fd = mig__files_open_staging_tmp(root, x->mid, s->tmp);
	if (s->out_fd < 0) {
		mig__xdst_fail(x, MIG_EIO, "%s/%s: cannot create a staging file", dd->d->name,
			       j->path);
		goto out;
	}
	if (mig__patch_new(s->basis_fd, s->out_fd, &s->patch) != 0 ||
	    !(s->hash = mig__digest_new())) {
		mig__xdst_fail(x, MIG_ENOMEM, "out of memory");
		goto out;
	}
	/* The digest grows as the patch writes: no second read of the file. */
	mig__patch_set_digest(s->patch, s->hash);
	if (j->size != UINT64_MAX)
		/* A few bytes of copy commands must not fill the disk. */
		mig__patch_set_max_output(s->patch, j->size);
out:
	mig__xdst_stream_job_free(j);
}

void mig__xdst_chunk_job_free(void *arg)
{
	struct chunk_job *j = arg;
	mig__wire_bytes_free(j->chunk.data.data);
	mig__free(j);
}

/* Starts writing a complete staged file to disk now, while the transfer
 * goes on, so that the fsyncs of the install at COMMIT (with the user
 * paused) find little left to write: without it they wrote out every byte
 * that arrived in the last ~30 s (the kernel's dirty expiry), which made
 * the downtime grow with the folder's size. Best effort: the install's
 * fsync still reports any error. */
static void start_writeback(int fd)
{
	if (fd >= 0)
		sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
}

/* The stream is complete: move the patch output into place, and record the
 * file's digest and size for verification. */
static void finish_stream(struct mig__xfer *x, struct dst_stream *s)
{
	struct dst_domain *dd = &x->dd[s->domain];
	const char *root = dd->d->root;
	char why[MIG__REASON_MAX] = "";
	struct dst_file *f = mig__xdst_find_file(dd, s->path, true);
	if (!f) {
		mig__xdst_fail(x, MIG_ENOMEM, "out of memory");
		return;
	}
	if (s->kind == MIGWIRE__STREAM_KIND__STREAM_TAIL) {
		f->size = s->offset + s->written;
		f->durable = false;
		start_writeback(s->out_fd);
		return;
	}
	uint64_t size = s->written;
	if (s->kind == MIGWIRE__STREAM_KIND__STREAM_DELTA) {
		int rc = mig__patch_finish(s->patch, why, sizeof(why));
		if (rc) {
			mig__xdst_fail(x, rc, "%s/%s: %s", dd->d->name, s->path, why);
			return;
		}
		size = mig__patch_output_size(s->patch);
	} else if (s->written != s->size) {
		mig__xdst_fail(x, MIG_EPROTO, "%s/%s: data stream ended at %llu of its %llu bytes",
			       dd->d->name, s->path, (unsigned long long)s->written,
			       (unsigned long long)s->size);
		return;
	}
	/* A large file is made durable now, on the strand, while the next
	 * file's chunks queue up: its writeback is mostly done (write_data
	 * starts it each MiB), and the disk cache flush then covers this
	 * file's bytes alone. Left to the round's end, the first fsync there
	 * flushed the whole round at once (35-48 ms for 64 MiB on a virtio
	 * disk, all of it after the last byte arrived). Small files wait for
	 * the round's end, one fsync each, as before. */
	bool durable = false;
	if (size >= XFER_WRITEBACK_STEP) {
		int rc = mig__xdst_sync_fd(x, s->out_fd);
		if (rc) {
			mig__xdst_fail(x, rc, "%s/%s: cannot sync the staged file: %s",
				       dd->d->name, s->path, mig_strerror(rc));
			return;
		}
		durable = true;
	} else {
		start_writeback(s->out_fd);
	}
	/* The stream's digest, of exactly the bytes written, becomes the
	 * file's: it was computed as they went to disk. */
	mig__digest *hash = s->hash;
	s->hash = NULL;
	stream_close(s);
	mig__digest_free(f->hash);
	f->hash = NULL;
	if (mig__files_staging_commit_tmp(root, x->mid, s->tmp, s->path) != 0) {
		mig__digest_free(hash);
		mig__xdst_fail(x, MIG_EIO, "%s/%s: cannot place the staged file", dd->d->name,
			       s->path);
		return;
	}
	f->hash = hash;
	f->size = size;
	f->durable = durable;
}

/* Appends a DATA chunk to the staging file, no further than the announced
 * size (a peer's bytes must not fill the disk past what it declared). */
static int write_data(struct dst_stream *s, const uint8_t *data, size_t len, char *why,
		      size_t why_len)
{
	if (len > s->size - s->written) {
		snprintf(why, why_len, "data past the announced %llu bytes",
			 (unsigned long long)s->size);
		return MIG_EPROTO;
	}
	if (mig__digest_update(s->hash, data, len) != 0) {
		snprintf(why, why_len, "hashing failed");
		return MIG_ESYSTEM;
	}
	size_t done = 0;
	while (done < len) {
		ssize_t n = write(s->out_fd, data + done, len - done);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			snprintf(why, why_len, "writing the staged file: %s",
				 n < 0 ? strerror(errno) : "no progress");
			return MIG_EIO;
		}
		done += (size_t)n;
	}
	s->written += len;
	/* Start writing each MiB out as it arrives, so that the fsync after
	 * the round (or at PREPARE) finds only the last MiB of a large file
	 * still to write, not all of it. Best effort, as start_writeback(). */
	if (s->written - s->wb_started >= XFER_WRITEBACK_STEP) {
		sync_file_range(s->out_fd, (off_t)s->wb_started,
				(off_t)(s->written - s->wb_started), SYNC_FILE_RANGE_WRITE);
		s->wb_started = s->written;
	}
	return 0;
}

void mig__xdst_chunk_task(void *arg)
{
	struct chunk_job *j = arg;
	struct mig__xfer *x = j->x;
	char why[MIG__REASON_MAX] = "";
	struct dst_stream *s = find_stream(x, j->stream);
	x->uncredited += j->chunk.has_raw_len ? j->chunk.raw_len : j->chunk.data.len;
	if (!s) {
		mig__xdst_fail(x, MIG_EPROTO, "chunk for an unknown stream %u", j->stream);
		goto out;
	}
	if (x->failed || s->out_fd < 0)
		goto out;
	uint8_t *data = NULL;
	size_t len = 0;
	int rc = 0;
	/* Plain chunks are used where they lie (the job owns them). */
	bool plain = j->chunk.compression == MIGWIRE__COMPRESSION__COMPRESSION_NONE;
	if (plain) {
		data = j->chunk.data.data;
		len = j->chunk.data.len;
	} else {
		rc = mig__xfer_chunk_data(&j->chunk, &data, &len, why, sizeof(why));
	}
	if (rc) {
		mig__xdst_fail(x, rc, "%s: %s", s->path, why);
		goto out;
	}
	if (s->kind == MIGWIRE__STREAM_KIND__STREAM_DATA) {
		rc = write_data(s, data, len, why, sizeof(why));
		if (rc)
			mig__xdst_fail(x, rc, "%s/%s: %s", x->dd[s->domain].d->name, s->path, why);
	} else if (s->kind == MIGWIRE__STREAM_KIND__STREAM_TAIL) {
		struct dst_file *f = mig__xdst_find_file(&x->dd[s->domain], s->path, false);
		size_t done = 0;
		while (done < len) {
			ssize_t n = pwrite(s->out_fd, data + done, len - done,
					   (off_t)(s->offset + s->written + done));
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0) {
				mig__xdst_fail(x, MIG_EIO, "%s: %s", s->path, strerror(errno));
				break;
			}
			done += (size_t)n;
		}
		if (f && f->hash)
			mig__digest_update(f->hash, data, done);
		s->written += done;
	} else {
		rc = mig__patch_feed(s->patch, data, len, why, sizeof(why));
		if (rc)
			mig__xdst_fail(x, rc, "%s/%s: %s", x->dd[s->domain].d->name, s->path, why);
	}
	if (!plain)
		mig__free(data);
	if (j->last && !x->failed)
		finish_stream(x, s);
out:
	if (j->last && s) {
		stream_close(s);
		for (struct dst_stream **pp = &x->streams; *pp; pp = &(*pp)->next)
			if (*pp == s) {
				*pp = s->next;
				mig__xdst_stream_free(s);
				break;
			}
	}
	mig__xdst_send_credit(x, j->last);
	mig__xdst_chunk_job_free(j);
}
