/* librsync, wrapped: signatures, deltas and patches for file state.
 *
 * Everything here is blocking and meant for a worker thread. librsync
 * allocates with plain malloc (and aborts when that fails); our own buffers go
 * through mig__malloc. Untrusted signatures are checked here before librsync
 * parses them, and every copy command of an untrusted delta is bounds-checked
 * against the basis in the copy callback. */
#include <errno.h>
#include <librsync.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "delta.h"
#include "digest.h"

#define IO_BUF_LEN (64u * 1024)      /* read buffer for signature and delta */
#define DELTA_OUT_MAX (1024u * 1024) /* largest piece we buffer for the sink */
#define PATCH_OUT_LEN (64u * 1024)   /* patch output buffer */

/* ---------------------------------------------------------------- helpers */

static pthread_once_t trace_once = PTHREAD_ONCE_INIT;

static void trace_quiet(void)
{
	rs_trace_set_level(RS_LOG_EMERG);
}

/* librsync's trace setting is process-global: make it silent once. */
static void rs_init(void)
{
	pthread_once(&trace_once, trace_quiet);
}

static void MIG__PRINTF(3, 4) set_why(char *why, size_t why_len, const char *fmt, ...)
{
	if (!why || !why_len)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(why, why_len, fmt, ap);
	va_end(ap);
}

static void errno_text(int err, char *buf, size_t len)
{
	/* GNU strerror_r (the project builds with _GNU_SOURCE). */
	const char *s = strerror_r(err, buf, len);
	if (s != buf)
		mig__strlcpy(buf, s, len);
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
static ssize_t read_full(int fd, uint8_t *buf, size_t len, bool positional, uint64_t off)
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

static int rs_err(rs_result r)
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
			return rs_err(r);
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
	rs_init();
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
		ssize_t n = read_full(fd, buf, want, true, off);
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
		set_why(why, why_len, "no signature");
		return MIG_EPROTO;
	}
	if (len > max_len) {
		set_why(why, why_len, "signature of %zu bytes over the %zu-byte limit", len,
			max_len);
		return MIG_EPROTO;
	}
	if (len < MIG__SIG_HEADER_LEN) {
		set_why(why, why_len, "signature truncated: %zu bytes, header needs %d", len,
			MIG__SIG_HEADER_LEN);
		return MIG_EPROTO;
	}
	uint32_t magic = get_be32(sig);
	uint32_t block_len = get_be32(sig + 4);
	uint32_t strong_len = get_be32(sig + 8);
	if (magic != RS_MD4_SIG_MAGIC && magic != RS_RK_MD4_SIG_MAGIC &&
	    magic != RS_BLAKE2_SIG_MAGIC && magic != RS_RK_BLAKE2_SIG_MAGIC) {
		set_why(why, why_len, "bad signature magic 0x%08x", magic);
		return MIG_EPROTO;
	}
	if (block_len < MIG__SIG_MIN_BLOCK_LEN || block_len > MIG__SIG_MAX_BLOCK_LEN) {
		set_why(why, why_len, "signature block length %u out of range [%u, %u]", block_len,
			MIG__SIG_MIN_BLOCK_LEN, MIG__SIG_MAX_BLOCK_LEN);
		return MIG_EPROTO;
	}
	if (strong_len < 1 || strong_len > RS_MAX_STRONG_SUM_LENGTH) {
		set_why(why, why_len, "signature strong sum length %u out of range [1, %d]",
			strong_len, RS_MAX_STRONG_SUM_LENGTH);
		return MIG_EPROTO;
	}
	if ((magic == RS_MD4_SIG_MAGIC || magic == RS_RK_MD4_SIG_MAGIC) &&
	    strong_len > (uint32_t)RS_MD4_SUM_LENGTH) {
		/* librsync refuses these too; never let it see them. */
		set_why(why, why_len, "signature strong sum length %u out of range [1, %d] for MD4",
			strong_len, RS_MD4_SUM_LENGTH);
		return MIG_EPROTO;
	}
	size_t body = len - MIG__SIG_HEADER_LEN;
	size_t rec = 4 + (size_t)strong_len;
	if (body % rec) {
		set_why(why, why_len,
			"signature body of %zu bytes is not a whole number of %zu-byte blocks",
			body, rec);
		return MIG_EPROTO;
	}
	return 0;
}

struct mig__sig {
	rs_signature_t *sums;
};

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
		set_why(why, why_len, "signature of %zu blocks is too large", n);
		return MIG_EPROTO;
	}
	size_t slots = (size_t)1 << (bitlen64(n) - 1); /* <= n */
	uint32_t *idx = mig__malloc(n * sizeof(*idx));
	uint32_t *cnt = mig__calloc(slots, sizeof(*cnt));
	int rc = 0;
	if (!idx || !cnt) {
		set_why(why, why_len, "out of memory loading the signature");
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
			set_why(why, why_len,
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
static rs_result load_sums(const uint8_t *sig, size_t len, rs_signature_t **out)
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
	rs_init();
	rc = check_weak_chains(sig, len, why, why_len);
	if (rc)
		return rc;
	mig__sig *s = mig__calloc(1, sizeof(*s));
	if (!s) {
		set_why(why, why_len, "out of memory loading the signature");
		return MIG_ENOMEM;
	}
	rs_result r = load_sums(sig, len, &s->sums);
	if (r != RS_DONE) {
		mig__free(s);
		if (r == RS_MEM_ERROR) {
			set_why(why, why_len, "out of memory loading the signature");
			return MIG_ENOMEM;
		}
		set_why(why, why_len, "corrupt signature: %s", rs_strerror(r));
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
	rs_init();
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
		rs_result r = load_sums(empty_sig, sizeof(empty_sig), &own);
		if (r != RS_DONE) {
			rc = rs_err(r);
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
			ssize_t n = want ? read_full(fd, in + bufs.avail_in, want, false, 0) : 0;
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
			rc = rs_err(r);
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
	ssize_t n = read_full(p->basis_fd, *buf, *len, true, (uint64_t)pos);
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
	rs_init();
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
		set_why(why, why_len, "corrupt delta: output over the expected %ju bytes",
			(uintmax_t)p->max_out);
		return MIG_EPROTO;
	}
	p->written += len;
	if (p->digest && mig__digest_update(p->digest, data, len) != 0) {
		set_why(why, why_len, "hashing the patched file failed");
		return MIG_ESYSTEM;
	}
	while (len) {
		ssize_t n = write(p->out_fd, data, len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			char e[128];
			errno_text(errno, e, sizeof(e));
			set_why(why, why_len, "writing the patched file: %s", e);
			return MIG_EIO;
		}
		if (n == 0) {
			set_why(why, why_len, "writing the patched file: no progress");
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
		set_why(why, why_len, "%s", p->cb_why);
		return p->cb_err;
	}
	switch (r) {
	case RS_MEM_ERROR:
		set_why(why, why_len, "out of memory while patching");
		return MIG_ENOMEM;
	case RS_INPUT_ENDED:
		set_why(why, why_len, "delta truncated");
		return MIG_EPROTO;
	case RS_BAD_MAGIC:
		set_why(why, why_len, "not a delta: bad magic");
		return MIG_EPROTO;
	case RS_BLOCKED:
		set_why(why, why_len, eof ? "delta truncated" : "librsync made no progress");
		return MIG_EPROTO;
	default:
		set_why(why, why_len, "corrupt delta: %s", rs_strerror(r));
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
				set_why(why, why_len, "corrupt delta: %zu bytes after its end",
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
		set_why(why, why_len, "patch already failed");
		return p->err;
	}
	if (!len)
		return 0;
	if (p->done) {
		set_why(why, why_len, "corrupt delta: %zu bytes after its end", len);
		return p->err = MIG_EPROTO;
	}
	const uint8_t *src = data;
	size_t n = len;
	if (p->pend_len) {
		/* join the leftover and the new bytes */
		if (len > SIZE_MAX - p->pend_len) {
			set_why(why, why_len, "out of memory while patching");
			return p->err = MIG_ENOMEM;
		}
		size_t need = p->pend_len + len;
		if (need > p->pend_cap) {
			uint8_t *b = mig__realloc(p->pend, need);
			if (!b) {
				set_why(why, why_len, "out of memory while patching");
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
		set_why(why, why_len, "out of memory while patching");
		return p->err = MIG_ENOMEM;
	}
	return 0;
}

int mig__patch_finish(mig__patch *p, char *why, size_t why_len)
{
	if (p->err) {
		set_why(why, why_len, "patch already failed");
		return p->err;
	}
	if (p->done)
		return 0;
	size_t left = 0;
	int rc = patch_run(p, p->pend, p->pend_len, true, &left, why, why_len);
	p->pend_len = 0;
	if (!rc && !p->done) {
		set_why(why, why_len, "delta truncated");
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
