/* File state of replication (replica_files_*.c; docs/FAILOVER.md "File
 * state"). The disk and librsync work of replication, on worker strands:
 * replica_files_primary.c for the primary, replica_files_standby.c for the
 * standby.
 *
 * Primary: a "round" (mig__rfjob) scans the user's folders, sends each file
 * that changed since the standby's acknowledged copy as ReplicaFile pieces
 * (a delta against the signature of that copy, a literal delta for a new
 * file, a removal for a deleted one) and builds the record of what the
 * standby will hold once the update is acknowledged (mig__rfset: per file,
 * its stat and the signature of the sent content).
 *
 * Standby: an incoming update's files (mig__rfin) are patched against the
 * replica copy into a staging folder as pieces arrive; when the update's
 * ReplicaUpdate arrives the staging is completed with the unchanged files
 * and installed by an atomic rename as the new replica copy.
 *
 * Layout on the standby, for every file domain root:
 *   ROOT/.mig-replica/<user>/                the acknowledged replica copy
 *   ROOT/.mig-replica/.mig-staging/<id>/     an update being received
 * Never visible to the app (not under ROOT/<user>) and never served.
 *
 * Everything declared here is called in dispatch with the engine lock held;
 * completions come back in dispatch as MIG__TEV_CALL events. */
#ifndef MIG_REPLICA_FILES_H
#define MIG_REPLICA_FILES_H

#include "engine_int.h"
#include "workers.h"

#define MIG__REPLICA_DIR ".mig-replica"
/* Delta bytes per ReplicaFile piece (at most half the frame cap). */
#define RF_PIECE (256u * 1024)

/* Can `user` name a folder (the rules of files.c: no '/', not "." or "..",
 * not starting with ".mig-")? */
bool mig__rf_user_ok(const char *user);

/* ---------------------------------------------------------------- primary */

/* What the standby holds (or will hold once an update is acked). */
typedef struct mig__rfset mig__rfset;
void mig__rfset_free(mig__rfset *s); /* accepts NULL */

typedef struct mig__rfjob mig__rfjob;
/* Runs in dispatch once the round's task is done (or never, at engine
 * teardown: the job is then freed by the event queue). */
typedef void (*mig__rfjob_done_fn)(mig_engine *e, mig__rfjob *j);

/* Starts a round on `strand` for `user`'s file domains: pieces go out on
 * `conn` tagged (epoch, seq). `base` (may be NULL: the standby holds
 * nothing) is taken by the job and handed back by mig__rfjob_take_base().
 * Returns the job, or NULL (out of memory; `base` is then untouched). */
mig__rfjob *mig__rfjob_start(mig_engine *e, mig__strand *strand, const char *user,
			     uint64_t epoch, uint64_t seq, uint64_t conn, mig__rfset *base,
			     mig__rfjob_done_fn done);
/* Asks a running round to stop sending (its result is then an error). */
void mig__rfjob_cancel(mig__rfjob *j);
/* After done: 0 or a MIG_E* with the reason in why; `streams` is the number
 * of ReplicaFile streams sent, `bytes` their frame bytes; `busy` is set if a
 * file kept changing while it was read and was left at the standby's copy;
 * `more` if the update's byte budget ran out and files wait for the next
 * update (send it as soon as this one is acknowledged). */
int mig__rfjob_result(const mig__rfjob *j, uint32_t *streams, uint64_t *bytes, bool *busy,
		      bool *more, char *why, size_t why_len);
const char *mig__rfjob_user(const mig__rfjob *j);
/* The connection its pieces went out on (the update must follow on it). */
uint64_t mig__rfjob_conn(const mig__rfjob *j);
mig__rfset *mig__rfjob_take_base(mig__rfjob *j);
/* The standby's holding once this round's update is installed. */
mig__rfset *mig__rfjob_take_next(mig__rfjob *j);
void mig__rfjob_free(mig__rfjob *j); /* accepts NULL */

/* ---------------------------------------------------------------- standby */

/* One incoming update's files, staged on its own strand. */
typedef struct mig__rfin mig__rfin;
/* Starts receiving files of (user, epoch, seq); NULL on no memory. */
mig__rfin *mig__rfin_new(mig_engine *e, const char *user, uint64_t epoch, uint64_t seq);
/* Takes one piece: checks it in dispatch (domain, path, stream order) and
 * queues the patching. A refusal is remembered and reported by
 * mig__rfin_finalize(). */
void mig__rfin_piece(mig__rfin *in, const Migwire__ReplicaFile *f);
/* Completes the staging (`streams` streams expected; base_seq > 0: keep
 * every file of the replica copy not named) and installs it as the replica
 * copy of every file domain; then calls done(e, in) in dispatch. */
typedef void (*mig__rfin_done_fn)(mig_engine *e, mig__rfin *in);
int mig__rfin_finalize(mig__rfin *in, uint32_t streams, uint64_t base_seq,
		       mig__rfin_done_fn done);
/* After done: 0, or MIG_E* with the reason; *partial is set when some
 * domains were installed and others not (the replica copy is then mixed). */
int mig__rfin_result(const mig__rfin *in, bool *partial, char *why, size_t why_len);
bool mig__rfin_matches(const mig__rfin *in, const char *user, uint64_t epoch, uint64_t seq);
const char *mig__rfin_user(const mig__rfin *in);
/* Ends it: pending work stops, staging is removed, memory is freed once its
 * strand is idle. */
void mig__rfin_free(mig__rfin *in);

/* Promotion: the replica copy becomes ROOT/<user> in every file domain, in
 * the order of registration (an existing folder there is replaced). Sets
 * *moved to the number of domains done; returns 0 or MIG_EIO / MIG_ENOENT
 * (no replica copy for a domain) with why. Blocking: a rename and an fsync
 * per domain, in dispatch. */
int mig__rf_promote_files(mig_engine *e, const char *user, size_t *moved, char *why,
			  size_t why_len);
/* Moves the first `moved` domains' folders back into the replica area (the
 * app refused the promotion). */
void mig__rf_unpromote_files(mig_engine *e, const char *user, size_t moved);

#endif
