/* Incremental SHA-256 (OpenSSL EVP), for file digests that grow with
 * appended tails without re-reading the file. */
#ifndef MIG_DIGEST_H
#define MIG_DIGEST_H

#include "common.h"

typedef struct mig__sha256 mig__sha256;

mig__sha256 *mig__sha256_new(void);
void mig__sha256_free(mig__sha256 *h);
int mig__sha256_update(mig__sha256 *h, const void *data, size_t len);
/* The digest of everything so far; the context stays usable for more. */
int mig__sha256_peek(const mig__sha256 *h, uint8_t out[32]);
/* Hashes the first `limit` bytes of the file on fd (UINT64_MAX: all of
 * it) into a fresh context, with pread (the offset does not move). */
int mig__sha256_file(int fd, uint64_t limit, mig__sha256 **out);

#endif
