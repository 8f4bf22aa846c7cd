/* librsync, wrapped: signatures, deltas and patches for file state (delta.h).
 * This file: signature parameters, signatures of our files, and checking and
 * loading the peer's untrusted ones, plus the helpers that delta_gen.c
 * (deltas) and delta_patch.c (patches) share through delta_int.h.
 *
 * Everything here is blocking and meant for a worker thread. librsync
 * allocates with plain malloc (and aborts when that fails); our own buffers go
 * through mig__malloc. Untrusted signatures are checked here before librsync
 * parses them. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "delta_int.h"

/* ---------------------------------------------------------------- helpers */

static pthread_once_t trace_once = PTHREAD_ONCE_INIT;

static void trace_quiet(void)
{
	rs_trace_set_level(RS_LOG_EMERG);
}

/* librsync's trace setting is process-global: make it silent once. */
void mig__delta_rs_init(void)
{
	pthread_once(&trace_once, trace_quiet);
}

void mig__delta_set_why(char *why, size_t why_len, const char *fmt, ...)
{
	if (!why || !why_len)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, why_len, fmt, ap);
	va_end(ap);
}

static uint32_t get_be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static unsigned bitlen64(uint64_t x)
{
	return x ? 64u - (unsigned)__builtin_clzll(x) : 0u;
}

/* floor(sqrt(x)) */
static uint64_t isqrt64(uint64_t x)
{
	uint64_t r = 0;
	uint64_t bit = (uint64_t)1 << 62;
	while (bit > x)
		bit >>= 2;
	while (bit) {
		if (x >= r + bit) {
			x -= r + bit;
			r = (r >> 1) + bit;
		} else {
			r >>= 1;
		}
		bit >>= 2;
	}
	return r;
}

/* Reads up to len bytes (fewer only at EOF). Returns the count or -errno. */
ssize_t mig__delta_read_full(int fd, uint8_t *buf, size_t len, bool positional, uint64_t off)
{
	size_t got = 0;
	while (got < len) {
		ssize_t n = positional ? pread(fd, buf + got, len - got, (off_t)(off + got))
				       : read(fd, buf + got, len - got);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

/* ---------------------------------------------------------------- parameters */

/* Signature parameters for a basis of `size` bytes.
 *
 * Wire cost of one file: signature (destination -> source) plus delta
 * (source -> destination). With N = size, B = block_len, S = strong_len and k
 * changed runs, the signature is 12 + ceil(N/B) * (4 + S) bytes and each
 * changed run costs its own length plus, on average, about one block of
 * unchanged literal data around it, so
 *   cost(B) ~ N (4 + S) / B + k B + changed bytes,
 * minimised at B = sqrt(N (4 + S) / k).
 *
 * strong_len: the engine checks a digest (XXH3-128) of every file right after it is
 * patched (RoundEnd carries the source's digests) and has the source resend
 * a file whole when they differ, as rsync does after a false block match.
 * A false match therefore costs bytes, never correctness, which lets the
 * strong sum be short like rsync's: rsync's own estimate of the bits needed,
 * b = 10 + 2 log2(N) - log2(B) ~ 10 + 1.5 log2(N), less the 32 bits of the
 * weak sum, plus one byte of margin, and never under 4 bytes: 4 bytes up to
 * 32 GiB, 5 up to 1 TiB.
 *
 * block_len: k is not known in advance (a folder of 8 MiB files with a 1 %
 * change has ~8 runs per file; one 64 MiB file has 64), so B is chosen for
 * k = 12, rounded to a multiple of 64 and clamped to
 * [MIG__SIG_MIN_BLOCK_LEN, MIG__SIG_MAX_BLOCK_LEN]: 2368 for 8 MiB, 6720 for
 * 64 MiB, 26752 for 1 GiB.
 *
 * Measured against rsync -a -I --no-whole-file --stats in the same run
 * (test_files, and docs/BENCHMARKS.md for the table): 64 MiB in 8 files of
 * 8 MiB, 64 runs of 10 KiB changed: see the test's output line. With the
 * earlier 12-byte records (S = 8, B for k = 64) the same folder cost 1.27 x
 * rsync's bytes, since each 8 MiB file then had 8x more blocks than needed.
 */
static uint64_t block_for(uint64_t size, unsigned strong, uint64_t k)
{
	uint64_t block;
	if (size >= (uint64_t)1 << 50) {
		block = MIG__SIG_MAX_BLOCK_LEN; /* the formula is far above it */
	} else {
		uint64_t r = isqrt64(size * (4 + strong) / k);
		block = (r + 32) / 64 * 64;
	}
	if (block < MIG__SIG_MIN_BLOCK_LEN)
		block = MIG__SIG_MIN_BLOCK_LEN;
	if (block > MIG__SIG_MAX_BLOCK_LEN)
		block = MIG__SIG_MAX_BLOCK_LEN;
	return block;
}

void mig__delta_params(uint64_t size, mig__sig_params *p)
{
	const uint64_t k = 12;
	/* rsync's bits, 10 + 2 log2(N) - log2(B), with B ~ sqrt(N): about
	 * 10 + 1.5 log2(N), rounded up, so it never decreases with the size. */
	unsigned bits = 10 + (3 * bitlen64(size ? size : 1) + 1) / 2;
	unsigned strong = bits > 32 ? (bits - 32 + 7) / 8 + 1 : 1;
	if (strong < 4)
		strong = 4;
	if (strong > (unsigned)RS_MD4_SUM_LENGTH) /* the signatures made here use MD4 */
		strong = (unsigned)RS_MD4_SUM_LENGTH;
	p->block_len = (uint32_t)block_for(size, strong, k);
	p->strong_len = strong;
}

/* ---------------------------------------------------------------- bytes */

int mig__bytes_append(mig__bytes *b, const void *data, size_t len)
{
	if (!len)
		return 0;
	if (len > SIZE_MAX - b->len)
		return MIG_ENOMEM;
	size_t need = b->len + len;
	if (need > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < need)
			cap = cap > SIZE_MAX / 2 ? need : cap * 2;
		uint8_t *d = mig__realloc(b->data, cap);
		if (!d)
			return MIG_ENOMEM;
		b->data = d;
		b->cap = cap;
	}
	memcpy(b->data + b->len, data, len);
	b->len = need;
	return 0;
}

void mig__bytes_free(mig__bytes *b)
{
	if (!b)
		return;
	mig__free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}

/* ---------------------------------------------------------------- signature */

int mig__delta_rs_err(rs_result r)
{
	return r == RS_MEM_ERROR ? MIG_ENOMEM : MIG_EIO;
}

/* The strong sum of every signature this engine makes: MD4, the faster of
 * the two librsync offers (about twice BLAKE2's speed here, in signatures
 * and in the delta's match checks). MD4 is weak against deliberate
 * collisions, which here can only make a block match that is not the same
 * data: the patched file then fails the digest check of its round and the
 * source resends it whole (RoundDone.redo). A collision costs bytes, never
 * correctness; see "Strong sums" in docs/PROTOCOL.md. */
#define SIG_MAGIC RS_RK_MD4_SIG_MAGIC

struct mig__sigjob {
	rs_job_t *job;
	mig__bytes *out;
	size_t orig_len; /* out->len before the job: restored on failure */
	uint8_t *in;     /* input librsync has not taken yet */
	size_t in_len;
	uint8_t *obuf;
	int err;
	bool done;
};

/* Runs the job over data; keeps what it does not take in j->in. */
static int sigjob_run(mig__sigjob *j, const uint8_t *data, size_t len, bool eof)
{
	rs_buffers_t bufs = {0};
	bufs.next_in = (char *)data;
	bufs.avail_in = len;
	bufs.eof_in = eof;
	for (;;) {
		size_t in_before = bufs.avail_in;
		bufs.next_out = (char *)j->obuf;
		bufs.avail_out = IO_BUF_LEN;
		rs_result r = rs_job_iter(j->job, &bufs);
		size_t produced = IO_BUF_LEN - bufs.avail_out;
		int rc = produced ? mig__bytes_append(j->out, j->obuf, produced) : 0;
		if (rc)
			return rc;
		if (r == RS_DONE) {
			j->done = true;
			break;
		}
		if (r != RS_BLOCKED)
			return mig__delta_rs_err(r);
		if (produced || bufs.avail_in != in_before)
			continue;
		if (eof)
			return MIG_EIO; /* librsync stalled: never expected */
		break; /* needs more input */
	}
	if (bufs.avail_in > IO_BUF_LEN)
		return MIG_EIO; /* librsync takes input in pieces far smaller */
	if (bufs.avail_in)
		memmove(j->in, bufs.next_in, bufs.avail_in);
	j->in_len = bufs.avail_in;
	return 0;
}

int mig__sigjob_new(const mig__sig_params *p, mig__bytes *out, mig__sigjob **jp)
{
	*jp = NULL;
	if (!p || !out || p->block_len < MIG__SIG_MIN_BLOCK_LEN ||
	    p->block_len > MIG__SIG_MAX_BLOCK_LEN || p->strong_len < 1 ||
	    p->strong_len > (uint32_t)RS_MD4_SUM_LENGTH)
		return MIG_EINVAL;
	mig__delta_rs_init();
	mig__sigjob *j = mig__calloc(1, sizeof(*j));
	if (!j)
		return MIG_ENOMEM;
	j->out = out;
	j->orig_len = out->len;
	j->in = mig__malloc(IO_BUF_LEN);
	j->obuf = mig__malloc(IO_BUF_LEN);
	if (j->in && j->obuf)
		j->job = rs_sig_begin(p->block_len, p->strong_len, SIG_MAGIC);
	if (!j->job) {
		mig__sigjob_free(j);
		return MIG_ENOMEM;
	}
	*jp = j;
	return 0;
}

int mig__sigjob_feed(mig__sigjob *j, const void *data, size_t len)
{
	const uint8_t *d = data;
	while (len && !j->err) {
		if (!j->in_len) {
			/* Straight from the caller's buffer; only a partial block
			 * is copied. Large inputs go in IO_BUF_LEN pieces so the
			 * remainder always fits j->in. */
			size_t n = len < IO_BUF_LEN ? len : IO_BUF_LEN;
			j->err = sigjob_run(j, d, n, false);
			d += n;
			len -= n;
			continue;
		}
		size_t n = IO_BUF_LEN - j->in_len;
		if (n > len)
			n = len;
		if (!n) {
			j->err = MIG_EIO; /* librsync took nothing of a full buffer */
			break;
		}
		memcpy(j->in + j->in_len, d, n);
		d += n;
		len -= n;
		size_t have = j->in_len + n;
		j->in_len = 0;
		/* sigjob_run copies the rest back to the start of j->in. */
		j->err = sigjob_run(j, j->in, have, false);
	}
	return j->err;
}

int mig__sigjob_finish(mig__sigjob *j)
{
	if (!j->err && !j->done) {
		size_t have = j->in_len;
		j->in_len = 0;
		j->err = sigjob_run(j, j->in, have, true);
		if (!j->err && !j->done)
			j->err = MIG_EIO;
	}
	return j->err;
}

void mig__sigjob_free(mig__sigjob *j)
{
	if (!j)
		return;
	if (j->out && (j->err || !j->done))
		j->out->len = j->orig_len;
	if (j->job)
		rs_job_free(j->job);
	mig__free(j->in);
	mig__free(j->obuf);
	mig__free(j);
}

int mig__delta_signature(int fd, uint64_t limit, const mig__sig_params *p, mig__bytes *out)
{
	if (fd < 0)
		return MIG_EINVAL;
	mig__sigjob *j;
	int rc = mig__sigjob_new(p, out, &j);
	if (rc)
		return rc;
	uint8_t *buf = mig__malloc(IO_BUF_LEN);
	uint64_t off = 0;
	rc = buf ? 0 : MIG_ENOMEM;
	while (!rc && off < limit) {
		size_t want = IO_BUF_LEN;
		if (limit - off < want)
			want = (size_t)(limit - off);
		ssize_t n = mig__delta_read_full(fd, buf, want, true, off);
		if (n < 0)
			rc = MIG_EIO;
		else if (n == 0)
			break;
		else
			rc = mig__sigjob_feed(j, buf, (size_t)n);
		off += n > 0 ? (uint64_t)n : 0;
	}
	if (!rc)
		rc = mig__sigjob_finish(j);
	mig__sigjob_free(j);
	mig__free(buf);
	return rc;
}

int mig__delta_check_signature(const uint8_t *sig, size_t len, size_t max_len, char *why,
			       size_t why_len)
{
	if (!sig && len) {
		mig__delta_set_why(why, why_len, "no signature");
		return MIG_EPROTO;
	}
	if (len > max_len) {
		mig__delta_set_why(why, why_len, "signature of %zu bytes over the %zu-byte limit",
				   len, max_len);
		return MIG_EPROTO;
	}
	if (len < MIG__SIG_HEADER_LEN) {
		mig__delta_set_why(why, why_len, "signature truncated: %zu bytes, header needs %d",
				   len, MIG__SIG_HEADER_LEN);
		return MIG_EPROTO;
	}
	uint32_t magic = get_be32(sig);
	uint32_t block_len = get_be32(sig + 4);
	uint32_t strong_len = get_be32(sig + 8);
	if (magic != RS_MD4_SIG_MAGIC && magic != RS_RK_MD4_SIG_MAGIC &&
	    magic != RS_BLAKE2_SIG_MAGIC && magic != RS_RK_BLAKE2_SIG_MAGIC) {
		mig__delta_set_why(why, why_len, "bad signature magic 0x%08x", magic);
		return MIG_EPROTO;
	}
	if (block_len < MIG__SIG_MIN_BLOCK_LEN || block_len > MIG__SIG_MAX_BLOCK_LEN) {
		mig__delta_set_why(why, why_len, "signature block length %u out of range [%u, %u]",
				   block_len, MIG__SIG_MIN_BLOCK_LEN, MIG__SIG_MAX_BLOCK_LEN);
		return MIG_EPROTO;
	}
	if (strong_len < 1 || strong_len > RS_MAX_STRONG_SUM_LENGTH) {
		mig__delta_set_why(why, why_len,
				   "signature strong sum length %u out of range [1, %d]",
				   strong_len, RS_MAX_STRONG_SUM_LENGTH);
		return MIG_EPROTO;
	}
	if ((magic == RS_MD4_SIG_MAGIC || magic == RS_RK_MD4_SIG_MAGIC) &&
	    strong_len > (uint32_t)RS_MD4_SUM_LENGTH) {
		/* librsync refuses these too; never let it see them. */
		mig__delta_set_why(why, why_len,
				   "signature strong sum length %u out of range [1, %d] for MD4",
				   strong_len, RS_MD4_SUM_LENGTH);
		return MIG_EPROTO;
	}
	size_t body = len - MIG__SIG_HEADER_LEN;
	size_t rec = 4 + (size_t)strong_len;
	if (body % rec) {
		mig__delta_set_why(why, why_len,
			"signature body of %zu bytes is not a whole number of %zu-byte blocks",
			body, rec);
		return MIG_EPROTO;
	}
	return 0;
}

/* ---------------------------------------------------------------- hostile signatures
 *
 * librsync indexes blocks in an open-addressing table keyed by
 * mix32(weak sum); exact duplicate records are dropped at build, but records
 * sharing a weak sum (or just a start slot) with different strong sums all
 * stay, and a lookup walks every one of them, as does each insert. A
 * signature of many such records costs O(records) per byte of the new file
 * and O(records^2) to load: 230 KB holding 19,000 strong sums under one weak
 * sum kept the delta of a 4 MiB file busy for 8 minutes (librsync 2.3.2).
 * So before librsync sees a signature we count its distinct records per slot
 * of mix32(weak sum), with 2^floor(log2(records)) slots (every table slot
 * lies inside one of them), and refuse more than WEAK_CHAIN_MAX in a slot.
 * Honest weak sums are uniform after mix32, 1-2 per slot: 64 never happens.
 *
 * What remains is inherent to rsync: a record whose weak sum occurs all over
 * the new file (a run of zeros, say) with a strong sum that never matches
 * costs one strong sum per byte, file size x block length in all (40 s for
 * 4 MiB of zeros with 3520-byte blocks). Callers bound that with a deadline
 * checked in the sink. */
#define WEAK_CHAIN_MAX 64

static uint32_t mix32(uint32_t h)
{
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}

typedef struct rec_order {
	const uint8_t *body;
	size_t rec;
} rec_order;

static int rec_cmp(const void *a, const void *b, void *ctx)
{
	const rec_order *o = ctx;
	uint32_t ia = *(const uint32_t *)a;
	uint32_t ib = *(const uint32_t *)b;
	return memcmp(o->body + (size_t)ia * o->rec, o->body + (size_t)ib * o->rec, o->rec);
}

/* sig: a checked signature. Returns 0, MIG_EPROTO, MIG_ENOMEM. */
static int check_weak_chains(const uint8_t *sig, size_t len, char *why, size_t why_len)
{
	size_t rec = 4 + (size_t)get_be32(sig + 8);
	const uint8_t *body = sig + MIG__SIG_HEADER_LEN;
	size_t n = (len - MIG__SIG_HEADER_LEN) / rec;
	if (n <= WEAK_CHAIN_MAX)
		return 0;
	if (n > UINT32_MAX) {
		mig__delta_set_why(why, why_len, "signature of %zu blocks is too large", n);
		return MIG_EPROTO;
	}
	size_t slots = (size_t)1 << (bitlen64(n) - 1); /* <= n */
	uint32_t *idx = mig__malloc(n * sizeof(*idx));
	uint32_t *cnt = mig__calloc(slots, sizeof(*cnt));
	int rc = 0;
	if (!idx || !cnt) {
		mig__delta_set_why(why, why_len, "out of memory loading the signature");
		rc = MIG_ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++)
		idx[i] = (uint32_t)i;
	rec_order o = {body, rec};
	qsort_r(idx, n, sizeof(*idx), rec_cmp, &o);
	for (size_t i = 0; i < n; i++) {
		const uint8_t *r = body + (size_t)idx[i] * rec;
		if (i && memcmp(r, body + (size_t)idx[i - 1] * rec, rec) == 0)
			continue; /* an exact duplicate: librsync keeps one */
		uint32_t h = mix32(get_be32(r));
		if (!h)
			h = UINT32_MAX; /* librsync reserves 0 the same way */
		if (++cnt[h & (slots - 1)] > WEAK_CHAIN_MAX) {
			mig__delta_set_why(why, why_len,
				"signature has over %d blocks with colliding weak sums",
				WEAK_CHAIN_MAX);
			rc = MIG_EPROTO;
			break;
		}
	}
out:
	mig__free(idx);
	mig__free(cnt);
	return rc;
}

/* Loads a signature already checked; returns an rs_result. */
rs_result mig__delta_load_sums(const uint8_t *sig, size_t len, rs_signature_t **out)
{
	rs_signature_t *sums = NULL;
	rs_job_t *job = rs_loadsig_begin(&sums);
	if (!job)
		return RS_MEM_ERROR;
	rs_buffers_t bufs = {0};
	bufs.next_in = (char *)sig;
	bufs.avail_in = len;
	bufs.eof_in = 1;
	rs_result r = rs_job_iter(job, &bufs);
	rs_job_free(job);
	if (r == RS_DONE && bufs.avail_in)
		r = RS_CORRUPT; /* cannot happen after the check; be strict anyway */
	if (r == RS_DONE)
		r = rs_build_hash_table(sums);
	if (r != RS_DONE) {
		if (sums)
			rs_free_sumset(sums);
		return r;
	}
	*out = sums;
	return RS_DONE;
}

int mig__delta_load_signature(const uint8_t *sig, size_t len, mig__sig **out, char *why,
			      size_t why_len)
{
	*out = NULL;
	int rc = mig__delta_check_signature(sig, len, SIZE_MAX, why, why_len);
	if (rc)
		return rc;
	mig__delta_rs_init();
	rc = check_weak_chains(sig, len, why, why_len);
	if (rc)
		return rc;
	mig__sig *s = mig__calloc(1, sizeof(*s));
	if (!s) {
		mig__delta_set_why(why, why_len, "out of memory loading the signature");
		return MIG_ENOMEM;
	}
	rs_result r = mig__delta_load_sums(sig, len, &s->sums);
	if (r != RS_DONE) {
		mig__free(s);
		if (r == RS_MEM_ERROR) {
			mig__delta_set_why(why, why_len, "out of memory loading the signature");
			return MIG_ENOMEM;
		}
		mig__delta_set_why(why, why_len, "corrupt signature: %s", rs_strerror(r));
		return MIG_EPROTO;
	}
	*out = s;
	return 0;
}

void mig__delta_sig_free(mig__sig *s)
{
	if (!s)
		return;
	if (s->sums)
		rs_free_sumset(s->sums);
	mig__free(s);
}
