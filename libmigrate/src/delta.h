/* librsync, wrapped: signatures, deltas and patches for file state. The only
 * module that includes librsync.h. Every function is self-contained and
 * blocking, meant to run on a worker thread, never on the I/O thread.
 *
 * Untrusted input: a signature or delta from the peer is validated here
 * before librsync sees it (librsync in Debian is built with asserts and
 * accepts absurd signature headers). */
#ifndef MIG_DELTA_H
#define MIG_DELTA_H

#include "common.h"

/* Signature header: 4-byte magic, 4-byte block length, 4-byte strong sum
 * length, all big-endian. */
#define MIG__SIG_HEADER_LEN 12
#define MIG__SIG_MAX_BLOCK_LEN (4u * 1024 * 1024)
#define MIG__SIG_MIN_BLOCK_LEN 64u

typedef struct mig__sig_params {
	uint32_t block_len;
	uint32_t strong_len;
} mig__sig_params;

/* Parameters for a basis of `size` bytes, chosen so a scattered 1 % change
 * costs no more on the wire than rsync: smaller blocks than librsync's
 * default (less literal data around each change) and the shortest strong
 * sum that keeps accidental collisions negligible (the whole-file digest
 * catches the rest). Documented with measurements in docs/BENCHMARKS.md. */
void mig__delta_params(uint64_t size, mig__sig_params *p);

/* A growable byte buffer used for signatures in memory. */
typedef struct mig__bytes {
	uint8_t *data;
	size_t len;
	size_t cap;
} mig__bytes;
int mig__bytes_append(mig__bytes *b, const void *data, size_t len);
void mig__bytes_free(mig__bytes *b);

/* Signature of the first `limit` bytes of the file open on `fd` (from
 * offset 0, to EOF if it is shorter; UINT64_MAX for all of it), with BLAKE2
 * strong sums. Appends to `out`. Returns 0, MIG_EIO, MIG_ENOMEM. A file that
 * grows while it is read (an app appending) is read only up to `limit`, so
 * the signature describes exactly the bytes a delta of the same limit sent. */
int mig__delta_signature(int fd, uint64_t limit, const mig__sig_params *p, mig__bytes *out);

/* Checks an untrusted signature: magic is one of the BLAKE2 magics, block
 * length within [MIG__SIG_MIN_BLOCK_LEN, MIG__SIG_MAX_BLOCK_LEN], strong
 * length within [1, 32], and the body is a whole number of blocks no larger
 * than `max_len` in total. Returns 0 or MIG_EPROTO with a reason. */
int mig__delta_check_signature(const uint8_t *sig, size_t len, size_t max_len, char *why,
			       size_t why_len);

/* A loaded, hashed signature ready for delta generation. */
typedef struct mig__sig mig__sig;
/* Loads a signature checked by mig__delta_check_signature (it checks again).
 * Returns 0, MIG_EPROTO (corrupt), MIG_ENOMEM. */
int mig__delta_load_signature(const uint8_t *sig, size_t len, mig__sig **out, char *why,
			      size_t why_len);
void mig__delta_sig_free(mig__sig *s);

/* Receives delta output as it is produced; return non-zero to stop (the
 * delta call then returns MIG_ECANCELED). */
typedef int (*mig__delta_sink)(const uint8_t *data, size_t len, void *ud);

/* Delta of the file on `fd` (from its current offset, at most `limit` bytes
 * or to EOF) against `sig` (NULL: a delta of literal data, for a peer that
 * has no copy). Output goes to `sink` in pieces of at most `piece` bytes.
 * Returns 0, MIG_EIO, MIG_ENOMEM, MIG_ECANCELED. */
int mig__delta_generate(int fd, uint64_t limit, const mig__sig *sig, size_t piece,
			mig__delta_sink sink, void *ud);

/* Streaming patch: delta bytes in, new file out. `basis_fd` (-1 for none)
 * must not change while patching; every copy command's position and length
 * from the untrusted delta is bounds-checked against the basis size. */
typedef struct mig__patch mig__patch;
int mig__patch_new(int basis_fd, int out_fd, mig__patch **out);
/* Optional: the most bytes the patch may write (the size the source
 * announced). Output past it fails feed/finish with MIG_EPROTO before it is
 * written: a few bytes of copy commands can otherwise expand into terabytes.
 * Default: no limit. */
void mig__patch_set_max_output(mig__patch *p, uint64_t max_out);
/* Feeds delta bytes. Returns 0, MIG_EPROTO (corrupt delta: reason in why),
 * MIG_EIO (write failed, e.g. ENOSPC: errno text in why), MIG_ENOMEM. */
int mig__patch_feed(mig__patch *p, const uint8_t *data, size_t len, char *why,
		    size_t why_len);
/* Ends the input. Returns 0 if the delta was complete, MIG_EPROTO if it
 * was truncated, or an error as for feed. */
int mig__patch_finish(mig__patch *p, char *why, size_t why_len);
void mig__patch_free(mig__patch *p);

#endif
