/* Delta generation (delta.h): a file's bytes against a loaded signature, or
 * all literal data when there is none, handed to a sink in pieces. Blocking,
 * for a worker thread. */
#include <string.h>

#include "delta_int.h"

#define DELTA_OUT_MAX (1024u * 1024) /* largest piece we buffer for the sink */

/* ---------------------------------------------------------------- delta */

/* The signature of an empty basis: a delta against it is all literal data.
 * (rs_delta_begin(NULL) does the same from librsync 2.3 on, but an empty
 * signature works with every version.) */
static const uint8_t empty_sig[MIG__SIG_HEADER_LEN] = {
	0x72, 0x73, 0x01, 0x47, /* RS_RK_BLAKE2_SIG_MAGIC */
	0x00, 0x00, 0x08, 0x00, /* block length 2048 */
	0x00, 0x00, 0x00, 0x20, /* strong sum length 32 */
};

int mig__delta_generate(int fd, uint64_t limit, const mig__sig *sig, size_t piece,
			mig__delta_sink sink, void *ud)
{
	return mig__delta_generate_tap(fd, limit, sig, piece, sink, ud, NULL, NULL);
}

int mig__delta_generate_tap(int fd, uint64_t limit, const mig__sig *sig, size_t piece,
			    mig__delta_sink sink, void *ud, mig__delta_tap tap, void *tap_ud)
{
	if (fd < 0 || !piece || !sink)
		return MIG_EINVAL;
	mig__delta_rs_init();
	size_t out_cap = piece < DELTA_OUT_MAX ? piece : DELTA_OUT_MAX;
	uint8_t *in = mig__malloc(IO_BUF_LEN);
	uint8_t *obuf = mig__malloc(out_cap);
	rs_signature_t *own = NULL;
	rs_job_t *job = NULL;
	int rc = MIG_ENOMEM;
	if (!in || !obuf)
		goto out;
	rs_signature_t *sums;
	if (sig) {
		/* librsync updates match statistics inside the signature: one
		 * delta at a time per signature. */
		sums = sig->sums;
	} else {
		rs_result r = mig__delta_load_sums(empty_sig, sizeof(empty_sig), &own);
		if (r != RS_DONE) {
			rc = mig__delta_rs_err(r);
			goto out;
		}
		sums = own;
	}
	job = rs_delta_begin(sums);
	if (!job)
		goto out;

	rs_buffers_t bufs = {0};
	size_t used = 0;    /* bytes of obuf waiting for the sink */
	uint64_t taken = 0; /* input bytes read, at most limit */
	bool eof = false;
	for (;;) {
		bool progress = false;
		if (!eof && bufs.avail_in < IO_BUF_LEN) {
			if (bufs.avail_in)
				memmove(in, bufs.next_in, bufs.avail_in);
			size_t want = IO_BUF_LEN - bufs.avail_in;
			if (limit - taken < want)
				want = (size_t)(limit - taken);
			ssize_t n =
				want ? mig__delta_read_full(fd, in + bufs.avail_in, want, false, 0)
				     : 0;
			if (n < 0) {
				rc = MIG_EIO;
				goto out;
			}
			eof = n == 0;
			taken += (uint64_t)n;
			if (n && tap && tap(in + bufs.avail_in, (size_t)n, tap_ud)) {
				rc = MIG_ECANCELED;
				goto out;
			}
			bufs.avail_in += (size_t)n;
			progress = true;
		}
		bufs.next_in = (char *)in;
		bufs.eof_in = eof;
		bufs.next_out = (char *)obuf + used;
		bufs.avail_out = out_cap - used;
		size_t in_before = bufs.avail_in;
		rs_result r = rs_job_iter(job, &bufs);
		size_t produced = out_cap - used - bufs.avail_out;
		used += produced;
		if (r != RS_DONE && r != RS_BLOCKED) {
			rc = mig__delta_rs_err(r);
			goto out;
		}
		if (used == out_cap || (r == RS_DONE && used)) {
			if (sink(obuf, used, ud)) {
				rc = MIG_ECANCELED;
				goto out;
			}
			used = 0;
		}
		if (r == RS_DONE)
			break;
		if (!progress && !produced && bufs.avail_in == in_before) {
			rc = MIG_EIO; /* librsync stalled: never expected */
			goto out;
		}
		memmove(in, bufs.next_in, bufs.avail_in);
		bufs.next_in = (char *)in;
	}
	rc = 0;
out:
	if (job)
		rs_job_free(job);
	if (own)
		rs_free_sumset(own);
	mig__free(in);
	mig__free(obuf);
	return rc;
}
