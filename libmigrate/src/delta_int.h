/* Private to delta.c (parameters, signatures, and the helpers below),
 * delta_gen.c (deltas) and delta_patch.c (patches): the three files of the
 * module that include librsync.h. */
#ifndef MIG_DELTA_INT_H
#define MIG_DELTA_INT_H

#include <librsync.h>
#include <sys/types.h>

#include "delta.h"

#define IO_BUF_LEN (64u * 1024) /* read buffer for signature and delta */

struct mig__sig {
	rs_signature_t *sums;
};

/* librsync's trace setting is process-global: the first call makes it
 * silent. Every entry point that runs librsync calls it. */
void mig__delta_rs_init(void);
/* A reason into why (if not NULL and why_len > 0). */
void mig__delta_set_why(char *why, size_t why_len, const char *fmt, ...) MIG__PRINTF(3, 4);
/* Reads up to len bytes (fewer only at EOF), at `off` if positional, else
 * from the current offset. Returns the count or -errno. */
ssize_t mig__delta_read_full(int fd, uint8_t *buf, size_t len, bool positional, uint64_t off);
/* MIG_ENOMEM for RS_MEM_ERROR, else MIG_EIO. */
int mig__delta_rs_err(rs_result r);
/* Loads a signature already checked (or the built-in empty one) and builds
 * its hash table; returns an rs_result. */
rs_result mig__delta_load_sums(const uint8_t *sig, size_t len, rs_signature_t **out);

#endif
