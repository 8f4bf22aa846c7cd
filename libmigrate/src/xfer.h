/* File state transfer inside a migration: signature streams, pre-copy
 * rounds, staging, verification and install (see docs/PROTOCOL.md).
 *
 * Threads: the functions below run inside dispatch with the engine lock
 * held. Each transfer owns a worker strand; reading files, computing
 * signatures and deltas, patching, hashing and installing run there, one
 * task at a time in order. Workers send their frames straight to the
 * transport (thread-safe) and report back by posting a completion that runs
 * in dispatch (MIG__TEV_CALL). Fields are split accordingly (xfer_int.h). */
#ifndef MIG_XFER_H
#define MIG_XFER_H

#include "engine_int.h"

struct mig__xfer;

/* Source. After ACCEPT: start (waits for the destination's signatures).
 * The transfer then drives itself and calls back into the handoff:
 *   mig__src_precopy_done() when it is time to pause,
 *   mig__src_final_sent() once the last round is out (send PREPARE),
 *   mig__src_files_failed() on any error (abort). */
int mig__xsrc_start(mig_engine *e, struct mig_migration *m);
/* After the pause: send the last round. */
void mig__xsrc_final(mig_engine *e, struct mig_migration *m);
/* The final manifests for PREPARE; valid until mig__xfer_end(). */
void mig__xsrc_manifests(struct mig_migration *m, Migwire__FileManifest ***out, size_t *n);

/* Destination. After ACCEPT: send signatures of the copy it holds. */
int mig__xdst_start(mig_engine *e, struct mig_migration *m);
/* PREPARE arrived (light merged): check every staged file against the
 * manifests; calls mig__dst_files_verified(). */
void mig__xdst_verify(mig_engine *e, struct mig_migration *m, const Migwire__Prepare *p);
/* COMMIT: swap the staged files in; calls mig__dst_files_installed(). */
void mig__xdst_install(mig_engine *e, struct mig_migration *m);

/* Frames of the file sub-protocol, routed by handoff.c. */
void mig__xfer_on_frame(mig_engine *e, struct mig_migration *m, const mig__frame *f,
			size_t bytes);

/* Ends the transfer: stops its tasks, removes the destination's staging if
 * asked, frees it once the strand is idle. Safe to call twice. */
void mig__xfer_end(mig_engine *e, struct mig_migration *m, bool remove_staging);

/* Frame bytes the transfer's workers sent since the last call. */
uint64_t mig__xfer_collect_sent(struct mig_migration *m);

/* Source after COMMITTED: move the user's folders into the departed cache
 * (or delete them without a cache), on a worker. */
void mig__xfer_release_user(mig_engine *e, const char *user);

/* Callbacks into the handoff (handoff_src.c / handoff_dst.c). */
void mig__src_precopy_done(mig_engine *e, struct mig_migration *m);
void mig__src_final_sent(mig_engine *e, struct mig_migration *m);
void mig__src_files_failed(mig_engine *e, struct mig_migration *m, int err, const char *why);
void mig__dst_files_verified(mig_engine *e, struct mig_migration *m, int err, const char *why);
void mig__dst_files_installed(mig_engine *e, struct mig_migration *m);

#endif
