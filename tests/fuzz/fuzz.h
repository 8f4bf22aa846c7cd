/* Shared by the fuzz targets, their replay main and the seed generator.
 *
 * Every target defines LLVMFuzzerTestOneInput(). Built with -Dfuzz=true
 * (clang) it is linked with libFuzzer; otherwise with replay.c, which runs
 * each checked-in corpus file through it once (suite 'fuzz' of meson test).
 * A property that does not hold aborts, which both modes report. */
#ifndef MIG_FUZZ_H
#define MIG_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define FUZZ_CHECK(cond)                                                                           \
	do {                                                                                       \
		if (!(cond)) {                                                                     \
			fprintf(stderr, "%s:%d: property does not hold: %s\n", __FILE__, __LINE__, \
				#cond);                                                            \
			abort();                                                                   \
		}                                                                                  \
	} while (0)

/* fuzz_token's cluster secret; make_seeds mints its seed tokens with it. */
#define FUZZ_TOKEN_SECRET "fuzz-cluster-secret-0123456789abcdef"

/* fuzz_signature deltas this fixed "new file" against every signature that
 * loads; make_seeds signs it (and variants of it) so block matches happen. */
#define FUZZ_FIXED_LEN 4096u

static inline void fuzz_fixed_buffer(uint8_t *buf)
{
	uint32_t x = 0x9e3779b9u;
	for (size_t i = 0; i < 1536; i++) { /* pseudo-random */
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		buf[i] = (uint8_t)x;
	}
	for (size_t i = 1536; i < 2560; i++) /* a repeat of the first KiB */
		buf[i] = buf[i - 1536];
	for (size_t i = 2560; i < 3072; i++) /* a run of zeros */
		buf[i] = 0;
	for (size_t i = 3072; i < FUZZ_FIXED_LEN; i++) /* text */
		buf[i] = (uint8_t) "user state, version 7\n"[(i - 3072) % 22];
}

/* An anonymous in-memory file; aborts if the kernel has none. */
static inline int fuzz_memfd(const char *name)
{
	int fd = memfd_create(name, MFD_CLOEXEC);
	if (fd < 0) {
		perror("memfd_create");
		abort();
	}
	return fd;
}

#endif
