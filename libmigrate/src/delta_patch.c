/* Streaming patches (delta.h): an untrusted delta applied to a basis file.
 * Every copy command is bounds-checked against the basis in the copy
 * callback before any of it is written, and the output is capped and
 * optionally hashed as it is written. Blocking, for a worker thread. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "delta_int.h"
#include "digest.h"

#define PATCH_OUT_LEN (64u * 1024) /* patch output buffer */

static void errno_text(int err, char *buf, size_t len)
{
	/* GNU strerror_r (the project builds with _GNU_SOURCE). */
	const char *s = strerror_r(err, buf, len);
	if (s != buf)
		mig__strlcpy(buf, s, len);
}

/* ---------------------------------------------------------------- patch */

struct mig__patch {
	rs_job_t *job;
	int basis_fd;
	uint64_t basis_size;
	int out_fd;
	uint64_t max_out; /* most bytes we may write */
	uint64_t written;
	mig__digest *digest; /* optional: hashes the output as it is written */
	rs_long_t seen_cmds; /* copy commands already bounds-checked */
	rs_long_t seen_bytes;
	uint8_t *out;  /* PATCH_OUT_LEN bytes of output space */
	uint8_t *pend; /* input the job has not taken yet */
	size_t pend_len;
	size_t pend_cap;
	int err;    /* sticky: the first error */
	bool done;  /* the delta's END command was seen */
	int cb_err; /* error recorded by the copy callback */
	char cb_why[MIG__REASON_MAX];
};

static rs_result copy_cb(void *opaque, rs_long_t pos, size_t *len, void **buf)
{
	mig__patch *p = opaque;
	if (p->basis_fd < 0 || *len == 0) {
		p->cb_err = MIG_EPROTO;
		snprintf(p->cb_why, sizeof(p->cb_why),
			 p->basis_fd < 0 ? "corrupt delta: copy command but there is no basis"
					 : "corrupt delta: empty copy command");
		return RS_CORRUPT;
	}
	/* A new COPY command: librsync has added its length to the statistics
	 * before the first callback, so the whole command is checked before any
	 * of it is written. Each piece is checked below as well. */
	const rs_stats_t *st = rs_job_statistics(p->job);
	if (st->copy_cmds != p->seen_cmds) {
		rs_long_t cmd_len = st->copy_bytes - p->seen_bytes;
		p->seen_cmds = st->copy_cmds;
		p->seen_bytes = st->copy_bytes;
		if (pos >= 0 && cmd_len > 0 &&
		    ((uint64_t)pos > p->basis_size ||
		     (uint64_t)cmd_len > p->basis_size - (uint64_t)pos)) {
			p->cb_err = MIG_EPROTO;
			snprintf(p->cb_why, sizeof(p->cb_why),
				 "corrupt delta: copy of %jd bytes at offset %jd beyond the "
				 "%ju-byte basis",
				 (intmax_t)cmd_len, (intmax_t)pos, (uintmax_t)p->basis_size);
			return RS_CORRUPT;
		}
	}
	if (pos < 0 || (uint64_t)pos > p->basis_size || *len > p->basis_size - (uint64_t)pos) {
		p->cb_err = MIG_EPROTO;
		snprintf(p->cb_why, sizeof(p->cb_why),
			 "corrupt delta: copy of %zu bytes at offset %jd beyond the %ju-byte basis",
			 *len, (intmax_t)pos, (uintmax_t)p->basis_size);
		return RS_CORRUPT;
	}
	ssize_t n = mig__delta_read_full(p->basis_fd, *buf, *len, true, (uint64_t)pos);
	if (n < 0) {
		char e[128];
		errno_text((int)-n, e, sizeof(e));
		p->cb_err = MIG_EIO;
		snprintf(p->cb_why, sizeof(p->cb_why), "reading the basis: %s", e);
		return RS_IO_ERROR;
	}
	if (n == 0) {
		/* Never RS_DONE with 0 bytes: librsync would loop forever. */
		p->cb_err = MIG_EIO;
		snprintf(p->cb_why, sizeof(p->cb_why), "the basis shrank while patching");
		return RS_INPUT_ENDED;
	}
	*len = (size_t)n;
	return RS_DONE;
}

int mig__patch_new(int basis_fd, int out_fd, mig__patch **out)
{
	*out = NULL;
	if (out_fd < 0)
		return MIG_EINVAL;
	mig__delta_rs_init();
	uint64_t size = 0;
	if (basis_fd >= 0) {
		struct stat st;
		if (fstat(basis_fd, &st) != 0)
			return MIG_EIO;
		size = st.st_size > 0 ? (uint64_t)st.st_size : 0;
	}
	mig__patch *p = mig__calloc(1, sizeof(*p));
	if (!p)
		return MIG_ENOMEM;
	p->basis_fd = basis_fd < 0 ? -1 : basis_fd;
	p->basis_size = size;
	p->out_fd = out_fd;
	p->max_out = UINT64_MAX;
	p->out = mig__malloc(PATCH_OUT_LEN);
	if (!p->out) {
		mig__free(p);
		return MIG_ENOMEM;
	}
	p->job = rs_patch_begin(copy_cb, p);
	if (!p->job) {
		mig__free(p->out);
		mig__free(p);
		return MIG_ENOMEM;
	}
	*out = p;
	return 0;
}

void mig__patch_set_max_output(mig__patch *p, uint64_t max_out)
{
	p->max_out = max_out;
}

void mig__patch_set_digest(mig__patch *p, mig__digest *h)
{
	p->digest = h;
}

uint64_t mig__patch_output_size(const mig__patch *p)
{
	return p->written;
}

static int write_all(mig__patch *p, const uint8_t *data, size_t len, char *why, size_t why_len)
{
	if (len > p->max_out - p->written) {
		mig__delta_set_why(why, why_len,
				   "corrupt delta: output over the expected %ju bytes",
				   (uintmax_t)p->max_out);
		return MIG_EPROTO;
	}
	p->written += len;
	if (p->digest && mig__digest_update(p->digest, data, len) != 0) {
		mig__delta_set_why(why, why_len, "hashing the patched file failed");
		return MIG_ESYSTEM;
	}
	while (len) {
		ssize_t n = write(p->out_fd, data, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			char e[128];
			errno_text(errno, e, sizeof(e));
			mig__delta_set_why(why, why_len, "writing the patched file: %s", e);
			return MIG_EIO;
		}
		if (n == 0) {
			mig__delta_set_why(why, why_len, "writing the patched file: no progress");
			return MIG_EIO;
		}
		data += n;
		len -= (size_t)n;
	}
	return 0;
}

static int patch_fail(mig__patch *p, rs_result r, bool eof, char *why, size_t why_len)
{
	if (p->cb_err) {
		mig__delta_set_why(why, why_len, "%s", p->cb_why);
		return p->cb_err;
	}
	switch (r) {
	case RS_MEM_ERROR:
		mig__delta_set_why(why, why_len, "out of memory while patching");
		return MIG_ENOMEM;
	case RS_INPUT_ENDED:
		mig__delta_set_why(why, why_len, "delta truncated");
		return MIG_EPROTO;
	case RS_BAD_MAGIC:
		mig__delta_set_why(why, why_len, "not a delta: bad magic");
		return MIG_EPROTO;
	case RS_BLOCKED:
		mig__delta_set_why(why, why_len,
				   eof ? "delta truncated" : "librsync made no progress");
		return MIG_EPROTO;
	default:
		mig__delta_set_why(why, why_len, "corrupt delta: %s", rs_strerror(r));
		return MIG_EPROTO;
	}
}

/* Runs the job over data (all of it, or until it blocks for more input).
 * Leaves in *left the bytes the job did not take. */
static int patch_run(mig__patch *p, const uint8_t *data, size_t len, bool eof, size_t *left,
		     char *why, size_t why_len)
{
	rs_buffers_t bufs = {0};
	bufs.next_in = (char *)data;
	bufs.avail_in = len;
	bufs.eof_in = eof;
	for (;;) {
		size_t in_before = bufs.avail_in;
		bufs.next_out = (char *)p->out;
		bufs.avail_out = PATCH_OUT_LEN;
		rs_result r = rs_job_iter(p->job, &bufs);
		size_t produced = PATCH_OUT_LEN - bufs.avail_out;
		*left = bufs.avail_in;
		if (produced) {
			int rc = write_all(p, p->out, produced, why, why_len);
			if (rc)
				return rc;
		}
		if (r == RS_DONE) {
			p->done = true;
			if (bufs.avail_in) {
				mig__delta_set_why(why, why_len,
						   "corrupt delta: %zu bytes after its end",
						   bufs.avail_in);
				return MIG_EPROTO;
			}
			return 0;
		}
		if (r != RS_BLOCKED)
			return patch_fail(p, r, eof, why, why_len);
		if (produced || bufs.avail_in != in_before)
			continue; /* progress: maybe more output is waiting */
		if (!eof && (bufs.avail_in == 0 || in_before == 0))
			return 0; /* needs more input */
		return patch_fail(p, RS_BLOCKED, eof, why, why_len);
	}
}

static int keep_input(mig__patch *p, const uint8_t *data, size_t len)
{
	if (len > p->pend_cap) {
		uint8_t *b = mig__realloc(p->pend, len);
		if (!b)
			return MIG_ENOMEM;
		p->pend = b;
		p->pend_cap = len;
	}
	if (len)
		memmove(p->pend, data, len);
	p->pend_len = len;
	return 0;
}

int mig__patch_feed(mig__patch *p, const uint8_t *data, size_t len, char *why, size_t why_len)
{
	if (p->err) {
		mig__delta_set_why(why, why_len, "patch already failed");
		return p->err;
	}
	if (!len)
		return 0;
	if (p->done) {
		mig__delta_set_why(why, why_len, "corrupt delta: %zu bytes after its end", len);
		return p->err = MIG_EPROTO;
	}
	const uint8_t *src = data;
	size_t n = len;
	if (p->pend_len) {
		/* join the leftover and the new bytes */
		if (len > SIZE_MAX - p->pend_len) {
			mig__delta_set_why(why, why_len, "out of memory while patching");
			return p->err = MIG_ENOMEM;
		}
		size_t need = p->pend_len + len;
		if (need > p->pend_cap) {
			uint8_t *b = mig__realloc(p->pend, need);
			if (!b) {
				mig__delta_set_why(why, why_len, "out of memory while patching");
				return p->err = MIG_ENOMEM;
			}
			p->pend = b;
			p->pend_cap = need;
		}
		memcpy(p->pend + p->pend_len, data, len);
		p->pend_len = need;
		src = p->pend;
		n = need;
	}
	size_t left = 0;
	int rc = patch_run(p, src, n, false, &left, why, why_len);
	if (rc)
		return p->err = rc;
	if (keep_input(p, src + (n - left), left)) {
		mig__delta_set_why(why, why_len, "out of memory while patching");
		return p->err = MIG_ENOMEM;
	}
	return 0;
}

int mig__patch_finish(mig__patch *p, char *why, size_t why_len)
{
	if (p->err) {
		mig__delta_set_why(why, why_len, "patch already failed");
		return p->err;
	}
	if (p->done)
		return 0;
	size_t left = 0;
	int rc = patch_run(p, p->pend, p->pend_len, true, &left, why, why_len);
	p->pend_len = 0;
	if (!rc && !p->done) {
		mig__delta_set_why(why, why_len, "delta truncated");
		rc = MIG_EPROTO;
	}
	if (rc)
		p->err = rc;
	return rc;
}

void mig__patch_free(mig__patch *p)
{
	if (!p)
		return;
	if (p->job)
		rs_job_free(p->job);
	mig__free(p->out);
	mig__free(p->pend);
	mig__free(p);
}
