/* File digests: XXH3-128 (libxxhash), incremental, so digests can grow with
 * appended tails without re-reading the file.
 *
 * What they are for: catching a file that did not come out as the source
 * had it (a librsync weak/strong false match, a torn or corrupted stream, a
 * bug). They are not a security boundary: the peer that sends the digest
 * also sends the bytes, and it is authenticated by the cluster secret
 * (auth.c, HMAC-SHA256). rsync makes the same choice for its whole-file
 * check. XXH3 runs at memory speed, where SHA-256 held the transfer to
 * 1.7 GB/s per side (docs/BENCHMARKS.md, "File state"). */
#ifndef MIG_DIGEST_H
#define MIG_DIGEST_H

#include "common.h"

#define MIG__DIGEST_LEN 16 /* bytes: XXH128 canonical (big-endian) form */

typedef struct mig__digest mig__digest;

mig__digest *mig__digest_new(void);
void mig__digest_free(mig__digest *h);
int mig__digest_update(mig__digest *h, const void *data, size_t len);
/* The digest of everything so far; the context stays usable for more. */
int mig__digest_peek(const mig__digest *h, uint8_t out[MIG__DIGEST_LEN]);
/* Hashes the first `limit` bytes of the file on fd (UINT64_MAX: all of
 * it) into a fresh context, with pread (the offset does not move). */
int mig__digest_file(int fd, uint64_t limit, mig__digest **out);

#endif
