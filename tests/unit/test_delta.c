/* Unit tests of delta.c: signature parameters, signature / delta / patch round
 * trips over many kinds of change, validation of untrusted signatures,
 * corrupt and truncated deltas, write and read failures, allocation failure. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <librsync.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cnt_alloc.h"
#include "delta.h"
#include "digest.h"

#define KiB (1024u)
#define MiB (1024u * 1024u)

/* ---------------------------------------------------------------- helpers */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static void rand_fill(uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(rnd() >> 32);
}

static uint8_t *rand_buf(size_t n)
{
	uint8_t *p = malloc(n ? n : 1);
	assert_non_null(p);
	rand_fill(p, n);
	return p;
}

/* An anonymous temporary file holding data, positioned at offset 0. */
static int tmp_fd(const uint8_t *data, size_t len)
{
	const char *dir = getenv("TMPDIR");
	char path[512];
	snprintf(path, sizeof(path), "%s/test_delta.XXXXXX", dir && dir[0] ? dir : "/tmp");
	int fd = mkstemp(path);
	assert_true(fd >= 0);
	unlink(path);
	size_t off = 0;
	while (off < len) {
		ssize_t n = write(fd, data + off, len - off);
		assert_true(n > 0);
		off += (size_t)n;
	}
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	return fd;
}

static uint8_t *read_all(int fd, size_t *len)
{
	off_t end = lseek(fd, 0, SEEK_END);
	assert_true(end >= 0);
	uint8_t *p = malloc((size_t)end + 1);
	assert_non_null(p);
	assert_int_equal(pread(fd, p, (size_t)end, 0), end);
	*len = (size_t)end;
	return p;
}

typedef struct sink_ctx {
	mig__bytes out;
	size_t piece;
	size_t calls;
	long cancel_at; /* < 0: never */
	bool oom;       /* mig__bytes_append failed (allocation failure tests) */
} sink_ctx;

static int sink_fn(const uint8_t *data, size_t len, void *ud)
{
	sink_ctx *s = ud;
	assert_true(len > 0);
	assert_true(len <= s->piece);
	if (s->cancel_at >= 0 && (long)s->calls == s->cancel_at)
		return 1;
	s->calls++;
	if (mig__bytes_append(&s->out, data, len) != 0) {
		s->oom = true;
		return 1;
	}
	return 0;
}

/* Signature of basis (NULL: no basis at all), then the delta of target. */
static void make_delta(const uint8_t *basis, size_t blen, const uint8_t *target, size_t tlen,
		       size_t piece, mig__bytes *delta, mig__bytes *sig_out)
{
	mig__sig *sig = NULL;
	mig__bytes sigb = {0};
	if (basis) {
		int bfd = tmp_fd(basis, blen);
		mig__sig_params p;
		mig__delta_params(blen, &p);
		assert_int_equal(mig__delta_signature(bfd, UINT64_MAX, &p, &sigb), 0);
		close(bfd);
		size_t nblocks = (blen + p.block_len - 1) / p.block_len;
		assert_int_equal(sigb.len, MIG__SIG_HEADER_LEN + nblocks * (4 + p.strong_len));
		char why[256] = "";
		assert_int_equal(
			mig__delta_check_signature(sigb.data, sigb.len, sigb.len, why, sizeof(why)),
			0);
		assert_int_equal(
			mig__delta_load_signature(sigb.data, sigb.len, &sig, why, sizeof(why)), 0);
		assert_non_null(sig);
	}
	int tfd = tmp_fd(target, tlen);
	sink_ctx s = {.piece = piece, .cancel_at = -1};
	assert_int_equal(mig__delta_generate(tfd, UINT64_MAX, sig, piece, sink_fn, &s), 0);
	close(tfd);
	mig__delta_sig_free(sig);
	*delta = s.out;
	if (sig_out)
		*sig_out = sigb;
	else
		mig__bytes_free(&sigb);
}

/* Applies delta against basis_fd feeding `chunk` bytes at a time. Returns the
 * first error, or 0 with the output in *out. */
static int apply(int basis_fd, const uint8_t *delta, size_t dlen, size_t chunk, uint8_t **out,
		 size_t *out_len, char *why, size_t why_len)
{
	int ofd = tmp_fd(NULL, 0);
	mig__patch *p = NULL;
	int rc = mig__patch_new(basis_fd, ofd, &p);
	if (rc) {
		close(ofd);
		return rc;
	}
	for (size_t off = 0; off < dlen && !rc; off += chunk) {
		size_t n = dlen - off < chunk ? dlen - off : chunk;
		rc = mig__patch_feed(p, delta + off, n, why, why_len);
	}
	if (!rc)
		rc = mig__patch_finish(p, why, why_len);
	mig__patch_free(p);
	if (!rc && out)
		*out = read_all(ofd, out_len);
	close(ofd);
	return rc;
}

/* Full round trip; checks the patched file equals target, with several
 * output piece sizes and input chunk sizes. */
static size_t roundtrip(const uint8_t *basis, size_t blen, const uint8_t *target, size_t tlen)
{
	static const size_t pieces[] = {4 * MiB, 1000, 1};
	static const size_t chunks[] = {SIZE_MAX, 65536, 997, 1};
	size_t delta_len = 0;
	for (size_t i = 0; i < MIG__ARRAY_LEN(pieces); i++) {
		if (pieces[i] == 1 && tlen > 256 * KiB)
			continue; /* one sink call per byte: too slow for big files */
		mig__bytes delta = {0};
		make_delta(basis, blen, target, tlen, pieces[i], &delta, NULL);
		if (i == 0)
			delta_len = delta.len;
		int bfd = basis ? tmp_fd(basis, blen) : -1;
		for (size_t c = 0; c < MIG__ARRAY_LEN(chunks); c++) {
			if (chunks[c] == 1 && delta.len > 64 * KiB)
				continue;
			uint8_t *out = NULL;
			size_t out_len = 0;
			char why[256] = "";
			int rc = apply(bfd, delta.data, delta.len, chunks[c], &out, &out_len, why,
				       sizeof(why));
			if (rc)
				fail_msg("patch failed (%d): %s", rc, why);
			assert_int_equal(out_len, tlen);
			assert_true(tlen == 0 || memcmp(out, target, tlen) == 0);
			free(out);
		}
		if (bfd >= 0)
			close(bfd);
		mig__bytes_free(&delta);
	}
	return delta_len;
}

/* ---------------------------------------------------------------- params */

static void check_params(uint64_t size, const mig__sig_params *p)
{
	assert_true(p->block_len >= MIG__SIG_MIN_BLOCK_LEN);
	assert_true(p->block_len <= MIG__SIG_MAX_BLOCK_LEN);
	assert_int_equal(p->block_len % 64, 0);
	/* Short strong sums are safe because every patched file is checked
	 * against the source's SHA-256 and resent whole on a mismatch (see
	 * delta.c); never under 4 bytes. */
	assert_true(p->strong_len >= 4);
	assert_true(p->strong_len <= 32);
	(void)size;
}

static void test_params(void **state)
{
	static const uint64_t sizes[] = {
		0, 1, 4 * KiB, MiB, 64 * MiB, 1024ull * MiB, 1024ull * 1024 * MiB,
	};
	mig__sig_params prev = {0, 0};
	for (size_t i = 0; i < MIG__ARRAY_LEN(sizes); i++) {
		mig__sig_params p;
		mig__delta_params(sizes[i], &p);
		check_params(sizes[i], &p);
		assert_true(p.block_len >= prev.block_len);
		assert_true(p.strong_len >= prev.strong_len);
		prev = p;
	}
	mig__sig_params p;
	mig__delta_params(0, &p);
	assert_int_equal(p.block_len, MIG__SIG_MIN_BLOCK_LEN);
	mig__delta_params(64 * MiB, &p); /* see delta.c */
	assert_int_equal(p.block_len, 6720);
	assert_int_equal(p.strong_len, 4);
	mig__delta_params(8 * MiB, &p);
	assert_int_equal(p.block_len, 2368);
	assert_int_equal(p.strong_len, 4);
	mig__delta_params(UINT64_MAX, &p);
	assert_int_equal(p.block_len, MIG__SIG_MAX_BLOCK_LEN);
	assert_true(p.strong_len <= 32);

	/* dense sweep: non-decreasing everywhere, bounds everywhere */
	prev = (mig__sig_params){0, 0};
	uint64_t last = 0;
	for (uint64_t s = 0; s >= last; s = s + s / 97 + 1) {
		last = s;
		mig__delta_params(s, &p);
		check_params(s, &p);
		if (p.block_len < prev.block_len || p.strong_len < prev.strong_len)
			fail_msg("not monotone at %ju", (uintmax_t)s);
		prev = p;
		if (s > UINT64_MAX / 2)
			break;
	}
}

/* ---------------------------------------------------------------- round trips */

static void test_roundtrip_scattered(void **state)
{
	size_t n = 2 * MiB;
	uint8_t *basis = rand_buf(n);
	uint8_t *target = malloc(n);
	memcpy(target, basis, n);
	for (int i = 0; i < 32; i++) {
		size_t run = 1 + rnd() % 2048;
		size_t off = rnd() % (n - run);
		rand_fill(target + off, run);
	}
	size_t d = roundtrip(basis, n, target, n);
	assert_true(d < n / 10); /* it is a delta, not a copy */

	/* identical files: almost nothing */
	d = roundtrip(basis, n, basis, n);
	assert_true(d < 64);
	free(basis);
	free(target);
}

static void test_roundtrip_insert_delete(void **state)
{
	size_t n = 512 * KiB;
	uint8_t *basis = rand_buf(n);
	uint8_t *target = malloc(2 * n);
	/* insertions */
	size_t t = 0, b = 0;
	for (int i = 0; i < 8; i++) {
		size_t keep = n / 8;
		memcpy(target + t, basis + b, keep);
		t += keep;
		b += keep;
		size_t ins = 1 + rnd() % 5000;
		rand_fill(target + t, ins);
		t += ins;
	}
	size_t d = roundtrip(basis, n, target, t);
	assert_true(d < n / 4);
	/* deletions */
	t = 0;
	b = 0;
	while (b < n) {
		size_t keep = 20000 + rnd() % 30000;
		if (keep > n - b)
			keep = n - b;
		memcpy(target + t, basis + b, keep);
		t += keep;
		b += keep;
		b += rnd() % 3000;
	}
	d = roundtrip(basis, n, target, t);
	assert_true(d < n / 10);
	free(basis);
	free(target);
}

static void test_roundtrip_truncate_grow(void **state)
{
	size_t n = 300 * KiB + 77;
	uint8_t *basis = rand_buf(n);
	/* truncation */
	roundtrip(basis, n, basis, n / 3);
	roundtrip(basis, n, basis, 1);
	/* growth */
	uint8_t *big = malloc(2 * n);
	memcpy(big, basis, n);
	rand_fill(big + n, n);
	size_t d = roundtrip(basis, n, big, 2 * n);
	assert_true(d < n + n / 10);
	/* prepend */
	memcpy(big + 1234, basis, n);
	rand_fill(big, 1234);
	roundtrip(basis, n, big, n + 1234);
	free(basis);
	free(big);
}

static void test_roundtrip_empty(void **state)
{
	uint8_t *data = rand_buf(100 * KiB);
	uint8_t none[1] = {0};
	roundtrip(none, 0, data, 100 * KiB); /* empty basis */
	roundtrip(data, 100 * KiB, none, 0); /* empty target */
	roundtrip(none, 0, none, 0);         /* both */
	roundtrip(data, 1, data, 1);
	roundtrip(data, 1, data + 1, 1);
	free(data);
}

static void test_roundtrip_no_basis(void **state)
{
	uint8_t *data = rand_buf(700 * KiB + 3);
	size_t d = roundtrip(NULL, 0, data, 700 * KiB + 3);
	assert_true(d > 700 * KiB && d < 700 * KiB + 1024);
	uint8_t none[1] = {0};
	roundtrip(NULL, 0, none, 0);
	free(data);
}

/* Small blocks, weak data (all zeros, repeats): still exact. */
static void test_roundtrip_repetitive(void **state)
{
	size_t n = 256 * KiB;
	uint8_t *basis = calloc(1, n);
	uint8_t *target = calloc(1, n + 100);
	for (size_t i = 0; i < n; i += 4096)
		target[i + 7] = 1;
	roundtrip(basis, n, target, n + 100);
	for (size_t i = 0; i < n; i++)
		basis[i] = (uint8_t)(i % 251);
	memcpy(target, basis + 1000, n - 1000);
	roundtrip(basis, n, target, n);
	free(basis);
	free(target);
}

/* The delta covers the target from its current offset; the signature always
 * starts at 0. */
static void test_offsets(void **state)
{
	size_t n = 200 * KiB;
	uint8_t *data = rand_buf(n);
	int fd = tmp_fd(data, n);
	mig__sig_params p;
	mig__delta_params(n, &p);
	mig__bytes s1 = {0}, s2 = {0};
	assert_int_equal(mig__delta_signature(fd, UINT64_MAX, &p, &s1), 0);
	assert_int_equal(lseek(fd, 5000, SEEK_SET), 5000);
	assert_int_equal(mig__delta_signature(fd, UINT64_MAX, &p, &s2), 0);
	assert_int_equal(s1.len, s2.len);
	assert_memory_equal(s1.data, s2.data, s1.len);

	mig__sig *sig = NULL;
	assert_int_equal(mig__delta_load_signature(s1.data, s1.len, &sig, NULL, 0), 0);
	sink_ctx s = {.piece = 4096, .cancel_at = -1};
	assert_int_equal(mig__delta_generate(fd, UINT64_MAX, sig, s.piece, sink_fn, &s), 0);
	uint8_t *out = NULL;
	size_t out_len = 0;
	assert_int_equal(apply(fd, s.out.data, s.out.len, 3000, &out, &out_len, NULL, 0), 0);
	assert_int_equal(out_len, n - 5000);
	assert_memory_equal(out, data + 5000, n - 5000);
	free(out);
	mig__bytes_free(&s.out);

	/* limits: the signature of the first k bytes is that of a k-byte file;
	 * a delta of at most k bytes from offset 5000 covers data[5000, 5000+k) */
	static const uint64_t limits[] = {0, 1, 4095, 65536, 65537, 150000, 10 * MiB};
	for (size_t i = 0; i < MIG__ARRAY_LEN(limits); i++) {
		uint64_t k = limits[i];
		size_t kk = k < n ? (size_t)k : n;
		mig__bytes a = {0}, b = {0};
		assert_int_equal(mig__delta_signature(fd, k, &p, &a), 0);
		int pfd = tmp_fd(data, kk);
		assert_int_equal(mig__delta_signature(pfd, UINT64_MAX, &p, &b), 0);
		close(pfd);
		assert_int_equal(a.len, b.len);
		assert_memory_equal(a.data, b.data, a.len);
		mig__bytes_free(&a);
		mig__bytes_free(&b);

		assert_int_equal(lseek(fd, 5000, SEEK_SET), 5000);
		s = (sink_ctx){.piece = 7777, .cancel_at = -1};
		assert_int_equal(mig__delta_generate(fd, k, sig, s.piece, sink_fn, &s), 0);
		size_t want = k < n - 5000 ? (size_t)k : n - 5000;
		assert_int_equal(apply(fd, s.out.data, s.out.len, 4096, &out, &out_len, NULL, 0),
				 0);
		assert_int_equal(out_len, want);
		assert_true(want == 0 || memcmp(out, data + 5000, want) == 0);
		free(out);
		mig__bytes_free(&s.out);
	}

	/* a sink that stops the delta */
	assert_int_equal(lseek(fd, 0, SEEK_SET), 0);
	s = (sink_ctx){.piece = 1000, .cancel_at = 3};
	assert_int_equal(mig__delta_generate(fd, UINT64_MAX, NULL, s.piece, sink_fn, &s),
			 MIG_ECANCELED);
	assert_int_equal(s.calls, 3);
	mig__bytes_free(&s.out);
	assert_int_equal(mig__delta_generate(fd, UINT64_MAX, sig, 0, sink_fn, &s), MIG_EINVAL);

	mig__delta_sig_free(sig);
	mig__bytes_free(&s1);
	mig__bytes_free(&s2);
	close(fd);
	free(data);
}

/* ---------------------------------------------------------------- signature checks */

/* A signature fed in pieces of any size (as the source signs what it sends)
 * is byte-identical to one read from the file, and a delta made against
 * it patches correctly; the patch's digest of its output equals a digest
 * of the result. */
static int tap_count(const uint8_t *data, size_t len, void *ud)
{
	mig__digest_update(ud, data, len);
	return 0;
}

static void test_sigjob_pieces(void **state)
{
	const size_t n = 3 * MiB + 12345;
	uint8_t *data = rand_buf(n);
	int fd = tmp_fd(data, n);
	mig__sig_params p;
	mig__delta_params(n, &p);
	mig__bytes whole = {0};
	assert_int_equal(mig__delta_signature(fd, UINT64_MAX, &p, &whole), 0);
	assert_true(whole.len > MIG__SIG_HEADER_LEN);
	/* RabinKarp + MD4 (RS_RK_MD4_SIG_MAGIC), big-endian */
	assert_int_equal(whole.data[0] << 24 | whole.data[1] << 16 | whole.data[2] << 8 |
				 whole.data[3],
			 RS_RK_MD4_SIG_MAGIC);
	static const size_t steps[] = {1, 7, 4096, 65535, 65536, 65537, 300000, 2 * MiB};
	for (size_t k = 0; k < sizeof(steps) / sizeof(steps[0]); k++) {
		mig__bytes piecewise = {0};
		mig__sigjob *j = NULL;
		assert_int_equal(mig__sigjob_new(&p, &piecewise, &j), 0);
		size_t off = 0, step = steps[k];
		for (size_t i = 0; off < n; i++) {
			size_t len = i % 2 ? step : step / 2 + 1; /* uneven pieces */
			if (len > n - off)
				len = n - off;
			assert_int_equal(mig__sigjob_feed(j, data + off, len), 0);
			off += len;
		}
		assert_int_equal(mig__sigjob_finish(j), 0);
		mig__sigjob_free(j);
		assert_int_equal(piecewise.len, whole.len);
		assert_memory_equal(piecewise.data, whole.data, whole.len);
		mig__bytes_free(&piecewise);
	}
	/* Freed unfinished: the output is cut back to where it was. */
	mig__bytes keep = {0};
	assert_int_equal(mig__bytes_append(&keep, "abc", 3), 0);
	mig__sigjob *j = NULL;
	assert_int_equal(mig__sigjob_new(&p, &keep, &j), 0);
	assert_int_equal(mig__sigjob_feed(j, data, MiB), 0);
	mig__sigjob_free(j);
	assert_int_equal(keep.len, 3);
	mig__bytes_free(&keep);
	/* bad parameters */
	mig__sig_params bad = {.block_len = 0x7fffffff, .strong_len = 8};
	assert_int_equal(mig__sigjob_new(&bad, &keep, &j), MIG_EINVAL);
	assert_null(j);

	/* delta against it with a tap that sees every input byte once; the
	 * patch hashes what it writes */
	uint8_t *target = malloc(n);
	memcpy(target, data, n);
	for (size_t i = 0; i < 40; i++)
		rand_fill(target + (rnd() % (n - 5000)), 3000);
	mig__sig *sig = NULL;
	char why[256];
	assert_int_equal(mig__delta_load_signature(whole.data, whole.len, &sig, why, sizeof(why)), 0);
	int tfd = tmp_fd(target, n);
	sink_ctx sc = {.piece = 64 * 1024, .cancel_at = -1};
	mig__digest *seen = mig__digest_new();
	assert_int_equal(mig__delta_generate_tap(tfd, UINT64_MAX, sig, sc.piece, sink_fn, &sc,
						 tap_count, seen),
			 0);
	mig__digest *expect = mig__digest_new();
	mig__digest_update(expect, target, n);
	uint8_t a[MIG__DIGEST_LEN], b[MIG__DIGEST_LEN];
	assert_int_equal(mig__digest_peek(seen, a), 0);
	assert_int_equal(mig__digest_peek(expect, b), 0);
	assert_memory_equal(a, b, MIG__DIGEST_LEN);
	char path[] = "/tmp/test_delta_out.XXXXXX";
	int ofd = mkstemp(path);
	assert_true(ofd >= 0);
	unlink(path);
	mig__patch *pt = NULL;
	assert_int_equal(mig__patch_new(fd, ofd, &pt), 0);
	mig__digest *written = mig__digest_new();
	mig__patch_set_digest(pt, written);
	assert_int_equal(mig__patch_feed(pt, sc.out.data, sc.out.len, why, sizeof(why)), 0);
	assert_int_equal(mig__patch_finish(pt, why, sizeof(why)), 0);
	assert_int_equal(mig__patch_output_size(pt), n);
	mig__patch_free(pt);
	assert_int_equal(mig__digest_peek(written, a), 0);
	assert_memory_equal(a, b, MIG__DIGEST_LEN);
	size_t got_len = 0;
	uint8_t *got = read_all(ofd, &got_len);
	assert_int_equal(got_len, n);
	assert_memory_equal(got, target, n);
	free(got);
	mig__digest_free(seen);
	mig__digest_free(expect);
	mig__digest_free(written);
	mig__delta_sig_free(sig);
	mig__bytes_free(&sc.out);
	mig__bytes_free(&whole);
	close(ofd);
	close(tfd);
	close(fd);
	free(target);
	free(data);
}

static void put_be32(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* A signature of nblocks records of zeros with the given header. */
static size_t fake_sig(uint8_t *buf, uint32_t magic, uint32_t block, uint32_t strong,
		       size_t nblocks)
{
	put_be32(buf, magic);
	put_be32(buf + 4, block);
	put_be32(buf + 8, strong);
	size_t len = MIG__SIG_HEADER_LEN + nblocks * (4 + (size_t)strong);
	memset(buf + MIG__SIG_HEADER_LEN, 0x5a, len - MIG__SIG_HEADER_LEN);
	return len;
}

static void expect_bad(const uint8_t *sig, size_t len, size_t max, const char *needle)
{
	char why[256] = "";
	assert_int_equal(mig__delta_check_signature(sig, len, max, why, sizeof(why)), MIG_EPROTO);
	if (!strstr(why, needle))
		fail_msg("reason \"%s\" lacks \"%s\"", why, needle);
	mig__sig *s = (mig__sig *)1;
	why[0] = '\0';
	if (len <= max) {
		assert_int_equal(mig__delta_load_signature(sig, len, &s, why, sizeof(why)),
				 MIG_EPROTO);
		assert_null(s);
		assert_non_null(strstr(why, needle));
	}
}

static void test_check_signature(void **state)
{
	static uint8_t buf[4096];
	size_t len;
	len = fake_sig(buf, RS_RK_BLAKE2_SIG_MAGIC, 0x7fffffff, 8, 3);
	expect_bad(buf, len, sizeof(buf), "signature block length 2147483647 out of range");
	len = fake_sig(buf, RS_RK_BLAKE2_SIG_MAGIC, 0, 8, 3);
	expect_bad(buf, len, sizeof(buf), "signature block length 0 out of range");
	len = fake_sig(buf, RS_RK_BLAKE2_SIG_MAGIC, 63, 8, 3);
	expect_bad(buf, len, sizeof(buf), "block length 63");
	len = fake_sig(buf, RS_RK_BLAKE2_SIG_MAGIC, MIG__SIG_MAX_BLOCK_LEN + 1, 8, 3);
	expect_bad(buf, len, sizeof(buf), "block length 4194305");
	len = fake_sig(buf, RS_RK_BLAKE2_SIG_MAGIC, 2048, 0, 3);
	expect_bad(buf, len, sizeof(buf), "strong sum length 0 out of range");
	len = fake_sig(buf, RS_RK_BLAKE2_SIG_MAGIC, 2048, 33, 3);
	expect_bad(buf, len, sizeof(buf), "strong sum length 33 out of range");
	/* every bound holds for the MD4 magics too */
	len = fake_sig(buf, RS_RK_MD4_SIG_MAGIC, 0x7fffffff, 8, 3);
	expect_bad(buf, len, sizeof(buf), "signature block length 2147483647 out of range");
	len = fake_sig(buf, RS_MD4_SIG_MAGIC, 2048, 33, 3);
	expect_bad(buf, len, sizeof(buf), "strong sum length 33 out of range");
	len = fake_sig(buf, RS_RK_MD4_SIG_MAGIC, 2048, 17, 3);
	expect_bad(buf, len, sizeof(buf), "strong sum length 17 out of range [1, 16] for MD4");
	len = fake_sig(buf, 0, 2048, 8, 3);
	expect_bad(buf, len, sizeof(buf), "bad signature magic 0x00000000");
	len = fake_sig(buf, 0xdeadbeef, 2048, 8, 3);
	expect_bad(buf, len, sizeof(buf), "bad signature magic 0xdeadbeef");
	len = fake_sig(buf, RS_DELTA_MAGIC, 2048, 8, 3);
	expect_bad(buf, len, sizeof(buf), "bad signature magic");
	len = fake_sig(buf, RS_RK_BLAKE2_SIG_MAGIC, 2048, 8, 3);
	expect_bad(buf, len - 1, sizeof(buf), "not a whole number");
	expect_bad(buf, len + 5, sizeof(buf), "not a whole number");
	expect_bad(buf, MIG__SIG_HEADER_LEN + 4, sizeof(buf), "not a whole number");
	for (size_t l = 0; l < MIG__SIG_HEADER_LEN; l++)
		expect_bad(buf, l, sizeof(buf), "truncated");
	expect_bad(buf, len, len - 1, "limit");
	/* NULL why is allowed */
	assert_int_equal(mig__delta_check_signature(buf, 3, 100, NULL, 0), MIG_EPROTO);

	/* well-formed ones pass: all four magics, bounds inclusive */
	char why[256];
	len = fake_sig(buf, RS_RK_BLAKE2_SIG_MAGIC, 2048, 8, 3);
	assert_int_equal(mig__delta_check_signature(buf, len, len, why, sizeof(why)), 0);
	len = fake_sig(buf, RS_RK_MD4_SIG_MAGIC, 2048, 8, 3);
	assert_int_equal(mig__delta_check_signature(buf, len, len, why, sizeof(why)), 0);
	len = fake_sig(buf, RS_MD4_SIG_MAGIC, 2048, 4, 3);
	assert_int_equal(mig__delta_check_signature(buf, len, len, why, sizeof(why)), 0);
	len = fake_sig(buf, RS_BLAKE2_SIG_MAGIC, MIG__SIG_MIN_BLOCK_LEN, 1, 0);
	assert_int_equal(mig__delta_check_signature(buf, len, len, why, sizeof(why)), 0);
	len = fake_sig(buf, RS_BLAKE2_SIG_MAGIC, MIG__SIG_MAX_BLOCK_LEN, 32, 10);
	assert_int_equal(mig__delta_check_signature(buf, len, len, why, sizeof(why)), 0);
	mig__sig *s = NULL;
	assert_int_equal(mig__delta_load_signature(buf, len, &s, why, sizeof(why)), 0);
	mig__delta_sig_free(s);

	/* the real thing */
	uint8_t *data = rand_buf(100 * KiB);
	int fd = tmp_fd(data, 100 * KiB);
	mig__sig_params p;
	mig__delta_params(100 * KiB, &p);
	mig__bytes sig = {0};
	assert_int_equal(mig__delta_signature(fd, UINT64_MAX, &p, &sig), 0);
	assert_int_equal(mig__delta_check_signature(sig.data, sig.len, sig.len, why, sizeof(why)),
			 0);
	expect_bad(sig.data, sig.len, sig.len - 1, "limit");
	expect_bad(sig.data, sig.len - 1, sig.len, "not a whole number");
	mig__bytes_free(&sig);
	/* invalid parameters are refused, not passed to librsync */
	mig__sig_params bad = {.block_len = 32, .strong_len = 8};
	assert_int_equal(mig__delta_signature(fd, UINT64_MAX, &bad, &sig), MIG_EINVAL);
	bad = (mig__sig_params){.block_len = 2048, .strong_len = 33};
	assert_int_equal(mig__delta_signature(fd, UINT64_MAX, &bad, &sig), MIG_EINVAL);
	close(fd);
	free(data);
}

/* librsync's hash table mixer (MurmurHash3 finalizer). */
static uint32_t mix32(uint32_t h)
{
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}

/* Signatures built to make librsync's table degenerate are refused; honest
 * ones with many identical blocks are not. */
static void test_hostile_signature(void **state)
{
	enum {
		N = 1000,
		STRONG = 8,
		REC = 4 + STRONG
	};
	static uint8_t buf[MIG__SIG_HEADER_LEN + N * REC];
	char why[256];
	mig__sig *s = NULL;
	put_be32(buf, RS_RK_BLAKE2_SIG_MAGIC);
	put_be32(buf + 4, 64);
	put_be32(buf + 8, STRONG);
	uint8_t *body = buf + MIG__SIG_HEADER_LEN;

	/* random records: fine */
	rand_fill(body, N * REC);
	assert_int_equal(mig__delta_load_signature(buf, sizeof(buf), &s, why, sizeof(why)), 0);
	mig__delta_sig_free(s);

	/* one weak sum, N different strong sums */
	for (size_t i = 0; i < N; i++)
		put_be32(body + i * REC, 0x12345678);
	s = (mig__sig *)1;
	assert_int_equal(mig__delta_load_signature(buf, sizeof(buf), &s, why, sizeof(why)),
			 MIG_EPROTO);
	assert_null(s);
	assert_non_null(strstr(why, "colliding weak sums"));
	/* 50 of them are still accepted (the limit is 64 per slot) */
	rand_fill(body, N * REC);
	for (size_t i = 0; i < 50; i++)
		put_be32(body + i * 15 * REC, 0x12345678);
	assert_int_equal(mig__delta_load_signature(buf, sizeof(buf), &s, why, sizeof(why)), 0);
	mig__delta_sig_free(s);

	/* different weak sums that land in one table slot after mixing */
	rand_fill(body, N * REC);
	uint32_t w = 0;
	for (size_t i = 0; i < 100; w++) {
		if ((mix32(w) & 511) == 0)
			put_be32(body + (i++) * 7 * REC, w);
	}
	assert_int_equal(mig__delta_load_signature(buf, sizeof(buf), &s, why, sizeof(why)),
			 MIG_EPROTO);
	assert_non_null(strstr(why, "colliding weak sums"));

	/* N identical records (a file of zeros): librsync keeps one, fine */
	rand_fill(body, REC);
	for (size_t i = 1; i < N; i++)
		memcpy(body + i * REC, body, REC);
	assert_int_equal(mig__delta_load_signature(buf, sizeof(buf), &s, why, sizeof(why)), 0);
	mig__delta_sig_free(s);

	/* a real signature of zeros, and a delta against it */
	size_t n = 4 * MiB;
	uint8_t *zeros = calloc(1, n);
	mig__bytes delta = {0};
	make_delta(zeros, n, zeros, n, 4 * MiB, &delta, NULL);
	assert_true(delta.len < n / 100); /* one COPY per block: librsync does not merge them */
	mig__bytes_free(&delta);
	free(zeros);
}

/* ---------------------------------------------------------------- corrupt deltas */

static void expect_proto(int basis_fd, const uint8_t *delta, size_t len, const char *needle)
{
	char why[256] = "";
	int rc = apply(basis_fd, delta, len, SIZE_MAX, NULL, NULL, why, sizeof(why));
	if (rc != MIG_EPROTO)
		fail_msg("delta of %zu bytes (expecting \"%s\"): %d (%s)", len,
			 needle ? needle : "", rc, why);
	if (needle && !strstr(why, needle))
		fail_msg("reason \"%s\" lacks \"%s\"", why, needle);
	assert_true(why[0] != '\0');
}

static void test_corrupt_delta(void **state)
{
	size_t n = 100 * KiB;
	uint8_t *basis = rand_buf(n);
	uint8_t *target = malloc(n);
	memcpy(target, basis, n);
	rand_fill(target + 5000, 3000);
	rand_fill(target + 70000, 10);
	mig__bytes delta = {0};
	make_delta(basis, n, target, n, 4 * MiB, &delta, NULL);
	int bfd = tmp_fd(basis, n);

	/* wrong magic */
	uint8_t *d = malloc(delta.len + 64);
	memcpy(d, delta.data, delta.len);
	d[3] ^= 1;
	expect_proto(bfd, d, delta.len, "bad magic");
	/* a signature is not a delta */
	memcpy(d, delta.data, delta.len);
	put_be32(d, RS_RK_BLAKE2_SIG_MAGIC);
	expect_proto(bfd, d, delta.len, "bad magic");

	/* random byte flips: EPROTO or (flip inside literal data) a wrong
	 * output, never a crash or another error */
	int proto = 0;
	for (int i = 0; i < 400; i++) {
		memcpy(d, delta.data, delta.len);
		int flips = 1 + (int)(rnd() % 4);
		for (int f = 0; f < flips; f++)
			d[4 + rnd() % (delta.len - 4)] ^= (uint8_t)(1 + rnd() % 255);
		char why[256] = "";
		uint8_t *out = NULL;
		size_t out_len = 0;
		int rc = apply(bfd, d, delta.len, 1 + rnd() % 5000, &out, &out_len, why,
			       sizeof(why));
		if (rc == 0) {
			free(out);
		} else {
			if (rc != MIG_EPROTO)
				fail_msg("flip gave %d: %s", rc, why);
			assert_true(why[0] != '\0');
			proto++;
		}
	}
	assert_true(proto > 0);

	/* trailing bytes after END */
	memcpy(d, delta.data, delta.len);
	memcpy(d + delta.len, "junk", 4);
	expect_proto(bfd, d, delta.len + 4, "after its end");
	char why[256];
	int ofd = tmp_fd(NULL, 0);
	mig__patch *p;
	assert_int_equal(mig__patch_new(bfd, ofd, &p), 0);
	assert_int_equal(mig__patch_feed(p, delta.data, delta.len, why, sizeof(why)), 0);
	assert_int_equal(mig__patch_feed(p, (const uint8_t *)"x", 1, why, sizeof(why)), MIG_EPROTO);
	assert_non_null(strstr(why, "after its end"));
	/* errors are sticky */
	assert_int_equal(mig__patch_finish(p, why, sizeof(why)), MIG_EPROTO);
	mig__patch_free(p);
	close(ofd);

	/* truncated at every length: EPROTO (at finish), never success */
	for (size_t l = 0; l < delta.len; l += (l < 64 || delta.len - l < 64) ? 1 : 97)
		expect_proto(bfd, delta.data, l, NULL);
	expect_proto(bfd, delta.data, delta.len - 1, "truncated");
	expect_proto(bfd, delta.data, 0, "truncated");

	/* hand-made commands */
	static const struct {
		uint8_t bytes[24];
		size_t len;
		const char *why;
	} cases[] = {
		/* COPY N4 N4: 100 bytes at 102301 (basis is 102400) */
		{{0x4f, 0, 1, 0x8f, 0x9d, 0, 0, 0, 100, 0}, 10, "beyond the 102400-byte basis"},
		/* COPY N4 N4 at exactly the end */
		{{0x4f, 0, 1, 0x90, 0, 0, 0, 0, 1, 0}, 10, "beyond"},
		/* COPY N1 N8: length 2^32 (truncates to 0 in an int) */
		{{0x48, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0}, 11, "corrupt delta"},
		/* COPY N1 N8: length 2^63 - 1 */
		{{0x48, 0, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0}, 11, "corrupt"},
		/* COPY N8 N1: negative position */
		{{0x51, 0x80, 0, 0, 0, 0, 0, 0, 0, 10, 0}, 11, "corrupt delta"},
		/* COPY N8 N1: position 2^62 */
		{{0x51, 0x40, 0, 0, 0, 0, 0, 0, 0, 10, 0}, 11, "beyond"},
		/* COPY N1 N1 with length 0 */
		{{0x45, 0, 0, 0}, 4, "corrupt delta"},
		/* LITERAL N1 with length 0 */
		{{0x41, 0, 0}, 3, "corrupt delta"},
		/* LITERAL N8 with a negative length */
		{{0x44, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1, 0}, 11, "corrupt"},
		/* reserved opcodes */
		{{0x55, 0}, 2, "corrupt delta"},
		{{0xff, 0}, 2, "corrupt delta"},
	};
	for (size_t i = 0; i < MIG__ARRAY_LEN(cases); i++) {
		uint8_t buf[32];
		put_be32(buf, RS_DELTA_MAGIC);
		memcpy(buf + 4, cases[i].bytes, cases[i].len);
		expect_proto(bfd, buf, 4 + cases[i].len, cases[i].why);
	}
	/* a copy that is in range works: COPY N1 N1 of 10 bytes at 5 */
	{
		uint8_t buf[] = {0x72, 0x73, 0x02, 0x36, 0x45, 5, 10, 0};
		uint8_t *out = NULL;
		size_t out_len = 0;
		assert_int_equal(apply(bfd, buf, sizeof(buf), 1, &out, &out_len, why, sizeof(why)),
				 0);
		assert_int_equal(out_len, 10);
		assert_memory_equal(out, basis + 5, 10);
		free(out);
	}
	/* any copy without a basis is corrupt */
	{
		uint8_t buf[] = {0x72, 0x73, 0x02, 0x36, 0x45, 0, 1, 0};
		expect_proto(-1, buf, sizeof(buf), "no basis");
		expect_proto(-1, delta.data, delta.len, "no basis");
	}
	/* an empty basis file: same */
	{
		int efd = tmp_fd(NULL, 0);
		uint8_t buf[] = {0x72, 0x73, 0x02, 0x36, 0x45, 0, 1, 0};
		expect_proto(efd, buf, sizeof(buf), "beyond the 0-byte basis");
		close(efd);
	}

	close(bfd);
	free(d);
	mig__bytes_free(&delta);
	free(basis);
	free(target);
}

/* Patch with an output limit; returns the result and the bytes written. */
static int apply_limited(int basis_fd, const uint8_t *delta, size_t len, uint64_t max_out,
			 size_t *written, char *why, size_t why_len)
{
	int ofd = tmp_fd(NULL, 0);
	mig__patch *p = NULL;
	assert_int_equal(mig__patch_new(basis_fd, ofd, &p), 0);
	mig__patch_set_max_output(p, max_out);
	int rc = mig__patch_feed(p, delta, len, why, why_len);
	if (!rc)
		rc = mig__patch_finish(p, why, why_len);
	mig__patch_free(p);
	off_t end = lseek(ofd, 0, SEEK_END);
	assert_true(end >= 0);
	*written = (size_t)end;
	close(ofd);
	return rc;
}

static void test_patch_limits(void **state)
{
	size_t n = 100 * KiB;
	uint8_t *basis = rand_buf(n);
	int bfd = tmp_fd(basis, n);
	char why[256] = "";
	size_t written = 0;

	/* an out-of-range copy is refused before any of it is written */
	static const uint8_t huge[] = {0x72, 0x73, 0x02, 0x36, 0x48, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0};
	assert_int_equal(
		apply_limited(bfd, huge, sizeof(huge), UINT64_MAX, &written, why, sizeof(why)),
		MIG_EPROTO);
	assert_int_equal(written, 0);
	assert_non_null(strstr(why, "copy of 4294967296 bytes at offset 0 beyond"));

	/* output limit: exact size passes, one byte less fails */
	uint8_t *target = malloc(n);
	memcpy(target, basis, n);
	rand_fill(target + 500, 500);
	mig__bytes delta = {0};
	make_delta(basis, n, target, n, 4 * MiB, &delta, NULL);
	assert_int_equal(apply_limited(bfd, delta.data, delta.len, n, &written, why, sizeof(why)),
			 0);
	assert_int_equal(written, n);
	assert_int_equal(
		apply_limited(bfd, delta.data, delta.len, n - 1, &written, why, sizeof(why)),
		MIG_EPROTO);
	assert_true(written <= n - 1);
	assert_non_null(strstr(why, "over the expected"));
	mig__bytes_free(&delta);

	/* amplification: 1000 copies of the whole basis in 8 KB of delta */
	size_t cmds = 1000;
	uint8_t *amp = malloc(4 + cmds * 6 + 1);
	memcpy(amp, "rs\x02\x36", 4);
	for (size_t i = 0; i < cmds; i++) {
		uint8_t *c = amp + 4 + i * 6;
		c[0] = 0x47; /* COPY N1 N4 */
		c[1] = 0;
		put_be32(c + 2, (uint32_t)n);
	}
	amp[4 + cmds * 6] = 0;
	assert_int_equal(apply_limited(bfd, amp, 4 + cmds * 6 + 1, 10 * (uint64_t)n, &written, why,
				       sizeof(why)),
			 MIG_EPROTO);
	assert_true(written <= 10 * n);
	assert_int_equal(
		apply_limited(bfd, amp, 4 + cmds * 6 + 1, UINT64_MAX, &written, why, sizeof(why)),
		0);
	assert_int_equal(written, cmds * n);
	free(amp);

	/* empty output with a zero limit */
	uint8_t none[1] = {0};
	make_delta(basis, n, none, 0, 4 * MiB, &delta, NULL);
	assert_int_equal(apply_limited(bfd, delta.data, delta.len, 0, &written, why, sizeof(why)),
			 0);
	assert_int_equal(written, 0);
	mig__bytes_free(&delta);

	close(bfd);
	free(basis);
	free(target);
}

/* ---------------------------------------------------------------- I/O failures */

static void test_write_failure(void **state)
{
	int full = open("/dev/full", O_WRONLY);
	if (full < 0)
		skip();
	uint8_t *data = rand_buf(200 * KiB);
	mig__bytes delta = {0};
	make_delta(NULL, 0, data, 200 * KiB, 4 * MiB, &delta, NULL);
	mig__patch *p;
	assert_int_equal(mig__patch_new(-1, full, &p), 0);
	char why[256] = "";
	int rc = mig__patch_feed(p, delta.data, delta.len, why, sizeof(why));
	if (!rc)
		rc = mig__patch_finish(p, why, sizeof(why));
	assert_int_equal(rc, MIG_EIO);
	if (!strstr(why, "No space left"))
		fail_msg("reason: %s", why);
	/* sticky */
	assert_int_equal(mig__patch_finish(p, why, sizeof(why)), MIG_EIO);
	mig__patch_free(p);
	close(full);

	/* unreadable inputs */
	int wfd = open("/dev/null", O_WRONLY);
	assert_true(wfd >= 0);
	mig__sig_params prm;
	mig__delta_params(0, &prm);
	mig__bytes sig = {0};
	assert_int_equal(mig__bytes_append(&sig, "keep", 4), 0);
	assert_int_equal(mig__delta_signature(wfd, UINT64_MAX, &prm, &sig), MIG_EIO);
	assert_int_equal(sig.len, 4); /* nothing half-appended */
	assert_memory_equal(sig.data, "keep", 4);
	sink_ctx s = {.piece = 100, .cancel_at = -1};
	assert_int_equal(mig__delta_generate(wfd, UINT64_MAX, NULL, 100, sink_fn, &s), MIG_EIO);
	close(wfd);
	mig__bytes_free(&sig);
	mig__bytes_free(&s.out);
	assert_int_equal(mig__patch_new(-1, -1, &p), MIG_EINVAL);

	/* a basis that shrinks under the patch */
	int bfd = tmp_fd(data, 200 * KiB);
	mig__bytes d2 = {0};
	make_delta(data, 200 * KiB, data, 200 * KiB, 4 * MiB, &d2, NULL);
	int ofd = tmp_fd(NULL, 0);
	assert_int_equal(mig__patch_new(bfd, ofd, &p), 0);
	assert_int_equal(ftruncate(bfd, 1000), 0);
	rc = mig__patch_feed(p, d2.data, d2.len, why, sizeof(why));
	if (!rc)
		rc = mig__patch_finish(p, why, sizeof(why));
	assert_int_equal(rc, MIG_EIO);
	assert_non_null(strstr(why, "shrank"));
	mig__patch_free(p);
	close(ofd);
	close(bfd);
	mig__bytes_free(&d2);
	mig__bytes_free(&delta);
	free(data);
}

/* ---------------------------------------------------------------- allocation failure */

static void test_enomem(void **state)
{
	size_t n = 150 * KiB;
	uint8_t *basis = rand_buf(n);
	uint8_t *target = malloc(n);
	memcpy(target, basis, n);
	rand_fill(target + 100, 100);
	int bfd = tmp_fd(basis, n);
	int tfd = tmp_fd(target, n);
	mig__sig_params p;
	mig__delta_params(n, &p);
	bool done = false;
	for (long k = 0; !done; k++) {
		assert_true(k < 1000);
		cnt_install(k);
		mig__bytes sig = {0};
		mig__sig *s = NULL;
		mig__patch *pt = NULL;
		sink_ctx sk = {.piece = 7000, .cancel_at = -1};
		int ofd = tmp_fd(NULL, 0);
		int rc = mig__delta_signature(bfd, UINT64_MAX, &p, &sig);
		if (!rc)
			rc = mig__delta_load_signature(sig.data, sig.len, &s, NULL, 0);
		if (!rc) {
			assert_int_equal(lseek(tfd, 0, SEEK_SET), 0);
			rc = mig__delta_generate(tfd, UINT64_MAX, s, sk.piece, sink_fn, &sk);
			if (rc == MIG_ECANCELED && sk.oom)
				rc = MIG_ENOMEM;
		}
		if (!rc)
			rc = mig__patch_new(bfd, ofd, &pt);
		for (size_t off = 0; !rc && off < sk.out.len; off += 333) {
			size_t len = sk.out.len - off < 333 ? sk.out.len - off : 333;
			rc = mig__patch_feed(pt, sk.out.data + off, len, NULL, 0);
		}
		if (!rc)
			rc = mig__patch_finish(pt, NULL, 0);
		if (rc) {
			assert_int_equal(rc, MIG_ENOMEM);
		} else {
			done = true;
			size_t out_len;
			uint8_t *out = read_all(ofd, &out_len);
			assert_int_equal(out_len, n);
			assert_memory_equal(out, target, n);
			free(out);
		}
		mig__patch_free(pt);
		mig__delta_sig_free(s);
		mig__bytes_free(&sig);
		/* the sink's buffer came from the failing allocator too */
		mig__bytes_free(&sk.out);
		close(ofd);
		assert_int_equal(cnt_live, 0);
		cnt_remove();
	}
	close(bfd);
	close(tfd);
	free(basis);
	free(target);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_params),
		cmocka_unit_test(test_roundtrip_scattered),
		cmocka_unit_test(test_roundtrip_insert_delete),
		cmocka_unit_test(test_roundtrip_truncate_grow),
		cmocka_unit_test(test_roundtrip_empty),
		cmocka_unit_test(test_roundtrip_no_basis),
		cmocka_unit_test(test_roundtrip_repetitive),
		cmocka_unit_test(test_offsets),
		cmocka_unit_test(test_check_signature),
		cmocka_unit_test(test_sigjob_pieces),
		cmocka_unit_test(test_hostile_signature),
		cmocka_unit_test(test_corrupt_delta),
		cmocka_unit_test(test_patch_limits),
		cmocka_unit_test(test_write_failure),
		cmocka_unit_test(test_enomem),
	};
	return cmocka_run_group_tests_name("delta", tests, NULL, NULL);
}
