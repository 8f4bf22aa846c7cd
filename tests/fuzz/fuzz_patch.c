/* Fuzz target: applying an untrusted librsync delta (delta.c's streaming
 * patch), as a destination does with a source's STREAM_DELTA.
 *
 * Input layout:
 *   u16le  basis length (clamped to what is there)
 *   u8     seed: bit 0 with an empty basis means "no basis" (fd -1); the
 *          rest seeds the piece sizes
 *   ...    the basis, then the delta
 * The basis goes into a memfd, output into another, with a 1 MiB output
 * limit. The delta is applied twice: fed whole, then fed in pseudo-random
 * pieces of 1 byte to 4 KiB. Any return code is fine, but both runs must
 * agree (success or not, and the output bytes), a failure must be sticky,
 * and nothing may crash, leak or hang. */
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "delta.h"
#include "fuzz.h"

#define MAX_OUT (1024u * 1024)

static int basis_fd = -1, out_fd[2] = {-1, -1};
static uint8_t *out_buf[2];

static void reset(int fd)
{
	FUZZ_CHECK(ftruncate(fd, 0) == 0);
	FUZZ_CHECK(lseek(fd, 0, SEEK_SET) == 0);
}

static uint32_t next(uint32_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 17;
	*x ^= *x << 5;
	return *x;
}

/* Applies the delta with piece sizes from `seed` (0: all at once). Returns
 * the result and leaves the output in out_fd[which]. */
static int apply(int bfd, const uint8_t *delta, size_t len, uint32_t seed, int which)
{
	int ofd = out_fd[which];
	reset(ofd);
	mig__patch *p = NULL;
	FUZZ_CHECK(mig__patch_new(bfd, ofd, &p) == 0);
	mig__patch_set_max_output(p, MAX_OUT);
	char why[256];
	int rc = 0;
	size_t pos = 0;
	while (pos < len) {
		size_t n = len - pos;
		if (seed) {
			uint32_t r = next(&seed);
			size_t want = (r & 3) == 0 ? 1 + (r >> 2) % 4096 : 1 + (r >> 2) % 16;
			if (want < n)
				n = want;
		}
		why[0] = '\0';
		rc = mig__patch_feed(p, delta + pos, n, why, sizeof(why));
		pos += n;
		if (rc != 0) {
			FUZZ_CHECK(why[0] != '\0');
			/* Sticky: later calls fail the same way. */
			FUZZ_CHECK(mig__patch_feed(p, delta, len, NULL, 0) == rc);
			break;
		}
	}
	int frc = mig__patch_finish(p, why, sizeof(why));
	if (rc != 0)
		FUZZ_CHECK(frc == rc);
	rc = frc;
	FUZZ_CHECK(rc == 0 || rc == MIG_EPROTO || rc == MIG_ENOMEM);
	if (rc == 0)
		FUZZ_CHECK(mig__patch_finish(p, NULL, 0) == 0);
	mig__patch_free(p);
	return rc;
}

static size_t output(int which)
{
	struct stat st;
	FUZZ_CHECK(fstat(out_fd[which], &st) == 0);
	FUZZ_CHECK((uint64_t)st.st_size <= MAX_OUT);
	size_t n = (size_t)st.st_size;
	FUZZ_CHECK(pread(out_fd[which], out_buf[which], n, 0) == (ssize_t)n);
	return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size < 3)
		return 0;
	if (basis_fd < 0) {
		basis_fd = fuzz_memfd("fuzz-basis");
		out_fd[0] = fuzz_memfd("fuzz-out-whole");
		out_fd[1] = fuzz_memfd("fuzz-out-pieces");
		out_buf[0] = malloc(MAX_OUT);
		out_buf[1] = malloc(MAX_OUT);
		FUZZ_CHECK(out_buf[0] && out_buf[1]);
	}
	size_t blen = (size_t)data[0] | (size_t)data[1] << 8;
	uint8_t seed = data[2];
	if (blen > size - 3)
		blen = size - 3;
	const uint8_t *basis = data + 3, *delta = basis + blen;
	size_t dlen = size - 3 - blen;

	reset(basis_fd);
	if (blen)
		FUZZ_CHECK(pwrite(basis_fd, basis, blen, 0) == (ssize_t)blen);
	int bfd = blen == 0 && (seed & 1) ? -1 : basis_fd;

	int whole = apply(bfd, delta, dlen, 0, 0);
	int pieces = apply(bfd, delta, dlen, 0x9e3779b9u ^ seed, 1);
	if (whole != pieces)
		fprintf(stderr, "whole: %d, in pieces: %d\n", whole, pieces);
	FUZZ_CHECK(whole == pieces);
	if (whole == 0) {
		size_t n0 = output(0), n1 = output(1);
		FUZZ_CHECK(n0 == n1);
		FUZZ_CHECK(memcmp(out_buf[0], out_buf[1], n0) == 0);
	}
	return 0;
}
