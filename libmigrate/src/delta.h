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
 * offset 0, to EOF if it is shorter; UINT64_MAX for all of it), with MD4
 * strong sums (p->strong_len at most 16) and RabinKarp weak sums
 * (RS_RK_MD4_SIG_MAGIC). Appends to `out`. Returns 0, MIG_EINVAL, MIG_EIO,
 * MIG_ENOMEM. A file that grows while it is read (an app appending) is read only up to `limit`, so
 * the signature describes exactly the bytes a delta of the same limit sent. */
int mig__delta_signature(int fd, uint64_t limit, const mig__sig_params *p, mig__bytes *out);

/* A signature computed from bytes handed in as they are read elsewhere (the
 * source signs what it sends in the same pass that reads it). The signature
 * is appended to `out`, which must outlive the job; on failure, or if the
 * job is freed before mig__sigjob_finish() succeeded, `out` is cut back to
 * its length at mig__sigjob_new(). Returns 0, MIG_EINVAL (bad parameters),
 * MIG_ENOMEM, MIG_EIO (librsync failed). Not thread-safe per job. */
typedef struct mig__sigjob mig__sigjob;
int mig__sigjob_new(const mig__sig_params *p, mig__bytes *out, mig__sigjob **j);
int mig__sigjob_feed(mig__sigjob *j, const void *data, size_t len);
int mig__sigjob_finish(mig__sigjob *j);
void mig__sigjob_free(mig__sigjob *j); /* accepts NULL */

/* Checks an untrusted signature: magic is one of librsync's four signature
 * magics (MD4 or BLAKE2 strong sums, rollsum or RabinKarp weak sums), block
 * length within [MIG__SIG_MIN_BLOCK_LEN, MIG__SIG_MAX_BLOCK_LEN], strong
 * length within [1, 32] ([1, 16] for MD4), and the body is a whole number
 * of blocks no larger
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
/* Sees every byte of the file the delta reads, in order, once (for a digest
 * and the next round's signature in the same pass); non-zero stops the
 * delta with MIG_ECANCELED. */
typedef int (*mig__delta_tap)(const uint8_t *data, size_t len, void *ud);
/* mig__delta_generate, with `tap` (may be NULL) called on the input. */
int mig__delta_generate_tap(int fd, uint64_t limit, const mig__sig *sig, size_t piece,
			    mig__delta_sink sink, void *ud, mig__delta_tap tap, void *tap_ud);

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
/* Optional: every byte the patch writes is also added to `h` (borrowed;
 * must outlive the patch's use), so the result's digest needs no second
 * read of the file. */
struct mig__digest;
void mig__patch_set_digest(mig__patch *p, struct mig__digest *h);
/* Bytes written so far. */
uint64_t mig__patch_output_size(const mig__patch *p);
int mig__patch_feed(mig__patch *p, const uint8_t *data, size_t len, char *why,
		    size_t why_len);
/* Ends the input. Returns 0 if the delta was complete, MIG_EPROTO if it
 * was truncated, or an error as for feed. */
int mig__patch_finish(mig__patch *p, char *why, size_t why_len);
void mig__patch_free(mig__patch *p);

#endif
