/* Fuzz target: an untrusted librsync signature (delta.c), as a destination
 * sends it for the source to delta against.
 *
 * mig__delta_check_signature() first; if it accepts, the signature is
 * loaded (mig__delta_load_signature, which also refuses colliding weak
 * sums) and a delta of a fixed 4 KiB buffer is generated against it. A
 * checked signature must load or be refused with MIG_EPROTO/MIG_ENOMEM; a
 * loaded one must give a delta (no error, no hang: -timeout catches that).
 * Inputs over 64 KiB are skipped (the cost is per byte, so size only slows
 * the search). */
#include <string.h>
#include <unistd.h>

#include "delta.h"
#include "fuzz.h"

#define SIG_MAX (64u * 1024)
#define PIECE 1000u

static int fixed_fd = -1;

static int sink(const uint8_t *data, size_t len, void *ud)
{
	size_t *total = ud;
	FUZZ_CHECK(data != NULL && len > 0 && len <= PIECE);
	*total += len;
	return 0;
}

static void fixed_file(void)
{
	uint8_t buf[FUZZ_FIXED_LEN];
	fuzz_fixed_buffer(buf);
	fixed_fd = fuzz_memfd("fuzz-fixed");
	FUZZ_CHECK(pwrite(fixed_fd, buf, sizeof(buf), 0) == (ssize_t)sizeof(buf));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > SIG_MAX)
		return 0;
	char why[256] = "";
	int rc = mig__delta_check_signature(data, size, SIG_MAX, why, sizeof(why));
	if (rc != 0) {
		FUZZ_CHECK(rc == MIG_EPROTO);
		FUZZ_CHECK(why[0] != '\0');
		return 0;
	}
	/* The limit is enforced: one byte less refuses it. */
	FUZZ_CHECK(mig__delta_check_signature(data, size, size - 1, NULL, 0) == MIG_EPROTO);

	mig__sig *s = (mig__sig *)1;
	rc = mig__delta_load_signature(data, size, &s, why, sizeof(why));
	if (rc != 0) {
		FUZZ_CHECK(rc == MIG_EPROTO || rc == MIG_ENOMEM);
		FUZZ_CHECK(s == NULL);
		return 0;
	}
	FUZZ_CHECK(s != NULL);

	if (fixed_fd < 0)
		fixed_file();
	FUZZ_CHECK(lseek(fixed_fd, 0, SEEK_SET) == 0);
	size_t total = 0;
	rc = mig__delta_generate(fixed_fd, UINT64_MAX, s, PIECE, sink, &total);
	FUZZ_CHECK(rc == 0);
	FUZZ_CHECK(total > 0);
	mig__delta_sig_free(s);
	return 0;
}
