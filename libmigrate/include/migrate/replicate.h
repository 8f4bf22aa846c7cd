/*
 * libmigrate — emergency failover: continuous replication of a user's light
 * state and file state to a standby engine, promotion with epochs.
 *
 * The primary engine (the one serving the user) calls mig_replicate(): from
 * then on it re-extracts the user's light state at an interval (or when the
 * app calls mig_replicate_now()) and, when it changed, sends it to the
 * standby engine on the peer channel; with file domains, the files that
 * changed since the standby's acknowledged copy go with it (librsync deltas,
 * new files, removals; worker threads). At most one update per user is
 * unanswered at a time; a slow standby makes updates coalesce, never queue.
 * The standby keeps the latest complete update in a replica area the app
 * never sees (files under ROOT/.mig-replica/<user> of each file domain),
 * installs an update whole or not at all, and acknowledges it.
 *
 * When the primary is lost, mig_replica_promote() (or the control command,
 * `migratectl promote`) on the standby makes the replica the active user:
 * the replica's files become the user's folders, then the app's incoming,
 * merge and activate callbacks run as for a destination at COMMIT, and the
 * user's epoch becomes the replica's epoch + 1. An old
 * primary that comes back is answered "superseded" on its next update: it
 * stops serving the user (the app's pause then release hooks run there) and reports
 * MIG_REPLICA_SUPERSEDED. See docs/FAILOVER.md, including the split-brain
 * caveat of automatic promotion.
 *
 * Threading: as in <migrate/migrate.h>; every callback runs inside
 * mig_engine_dispatch(). Replication needs the engine started.
 */
#ifndef MIGRATE_REPLICATE_H
#define MIGRATE_REPLICATE_H

#include <migrate/migrate.h>

#ifdef __cplusplus
extern "C" {
#endif

/** Default replication interval (mig_replicate_options.interval_ms = 0). */
#define MIG_REPLICATE_INTERVAL_MS_DEFAULT 1000u

/** Options of mig_replicate(); zero-initialise. */
typedef struct mig_replicate_options {
	/**
	 * How often the primary looks for a change of the user's light state
	 * (extracting it while the user is served) and sends it if it changed;
	 * an unchanged state costs a small keepalive. 0 means 1000 ms;
	 * 10..3600000.
	 */
	unsigned int interval_ms;
} mig_replicate_options;

/** Kinds of replication event. */
typedef enum mig_replica_event_type {
	/** primary: the standby installed update `seq` (bytes, lag_us). */
	MIG_REPLICA_ACKED = 0,
	/** primary: the standby refused an update (error, reason); the next
	 * interval tries again. */
	MIG_REPLICA_REFUSED = 1,
	/**
	 * primary: the standby promoted the user (its epoch in `epoch`); the
	 * user is no longer served here (pause, then release ran) and
	 * replication of it ended.
	 */
	MIG_REPLICA_SUPERSEDED = 2,
	/** primary: replication of the user ended (user gone, or stopped). */
	MIG_REPLICA_STOPPED = 3,
	/** standby: an update was installed into the replica area. */
	MIG_REPLICA_INSTALLED = 4,
	/** standby: an update was refused (error, reason); nothing changed. */
	MIG_REPLICA_REJECTED = 5,
	/** standby: the replica is now the active user here, at `epoch`. */
	MIG_REPLICA_PROMOTED = 6,
	/** standby: promotion failed (error, reason); the replica is kept. */
	MIG_REPLICA_PROMOTE_FAILED = 7,
} mig_replica_event_type;

/** A replication event; valid only during the callback. */
typedef struct mig_replica_event {
	mig_replica_event_type type;
	const char *user;
	const char *peer_url; /**< the other engine ("" if unknown) */
	uint64_t epoch;       /**< the user's epoch as the event's engine knows it */
	uint64_t seq;         /**< the update concerned (0 if none) */
	uint64_t bytes;       /**< ACKED/INSTALLED: encoded size of that update,
				   its file pieces included */
	uint64_t total_bytes; /**< primary: replication bytes sent for the user so far */
	/** ACKED: extraction -> acknowledgement; PROMOTED: age of the replica
	 * (last install -> promotion). */
	uint64_t lag_us;
	int error;            /**< 0, or a MIG_E* */
	const char *reason;   /**< "" if none */
	uint64_t time_us;     /**< wall clock, microseconds since the epoch */
} mig_replica_event;

/**
 * Replication event callback.
 * Thread: runs only inside mig_engine_dispatch(). Callback-safe: any mig_*
 * call except mig_engine_free().
 */
typedef void (*mig_replica_event_fn)(mig_engine *engine, const mig_replica_event *event,
				     void *user_data);

/**
 * Install (or with NULL remove) the replication event callback.
 * @return 0, MIG_EINVAL.
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT int mig_replica_set_handler(mig_engine *engine, mig_replica_event_fn fn,
				       void *user_data);

/**
 * Primary: start keeping the engine at `standby_url` (a peer URL) up to date
 * with `user`'s light state. The first update goes out on the next dispatch.
 * The extract callbacks then run while the user is served, on the dispatch
 * thread: each must serialise a consistent snapshot.
 * @param options may be NULL for the defaults.
 * @return 0, MIG_EINVAL (bad user, URL or interval), MIG_ENOUSER (not
 *         ACTIVE here), MIG_EEXIST (already replicated: stop it first),
 *         MIG_ESTATE (engine not started), MIG_ENOMEM.
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT int mig_replicate(mig_engine *engine, const char *user, const char *standby_url,
			     const mig_replicate_options *options);

/**
 * Primary: the app marks `user`'s state dirty: extract and send as soon as
 * no update is in flight (coalesced with any pending one).
 * @return 0, MIG_EINVAL, MIG_ENOUSER (not replicated).
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT int mig_replicate_now(mig_engine *engine, const char *user);

/**
 * Primary: stop replicating `user` (MIG_REPLICA_STOPPED follows). The
 * standby keeps its last replica.
 * @return 0, MIG_EINVAL, MIG_ENOUSER (not replicated).
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT int mig_replicate_stop(mig_engine *engine, const char *user);

/**
 * Standby: make the replica of `user` the active user here. Runs on the
 * next dispatch (after an update whose files are being installed, if
 * any): the incoming hook, the replica's files renamed into each file
 * domain's ROOT/<user> (replacing a folder there), every domain's merge,
 * then activate; MIG_REPLICA_PROMOTED (or MIG_REPLICA_PROMOTE_FAILED, the
 * files put back) reports the outcome.
 * @return 0 if the promotion is queued, MIG_EINVAL, MIG_ENOUSER (no replica
 *         of that user here), MIG_EEXIST (the user is already here).
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT int mig_replica_promote(mig_engine *engine, const char *user);

/**
 * Standby, opt-in: promote a replica automatically when nothing (update or
 * keepalive) came from its primary for `ms` milliseconds (0 turns it off,
 * the default). Choose ms well above the primary's interval. CAVEAT: a
 * primary that is alive but cut off from the standby keeps serving its
 * clients while the standby promotes: until the two can talk again the
 * user is active on both (split brain); the old primary stops serving it
 * at its first update after the link returns. See docs/FAILOVER.md.
 * @return 0, MIG_EINVAL.
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT int mig_replica_set_auto_promote(mig_engine *engine, unsigned int ms);

/**
 * Primary: mint a failover token for a client of `user`: a session token
 * (<migrate/client.h>) that the STANDBY engine accepts, once it has
 * promoted the user. Hand it to the client with the standby's URL; the
 * client's helper keeps it for mig_client_set_standby(). It is signed with
 * the cluster secret, names the user and the standby's engine id, expires
 * after session_token_ttl_s (mint a fresh one before that) and is accepted
 * once; the standby refuses it (MIG_ENOUSER, token not used up) until the
 * user is promoted there.
 * @param out     receives the token; at least MIG_SESSION_TOKEN_MAX bytes.
 * @return 0, MIG_EINVAL, MIG_ENOUSER (not active and replicated here),
 *         MIG_ESTATE (the standby has not answered yet: its engine id is
 *         not known), MIG_ESYSTEM.
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT int mig_replica_failover_token(mig_engine *engine, const char *user, char *out,
					  size_t out_len);

/** Figures about one user's replication, as this engine sees it. */
typedef struct mig_replica_info {
	int primary;          /**< 1: this engine replicates the user out */
	int standby;          /**< 1: this engine holds a replica (not yet promoted) */
	uint64_t epoch;       /**< the user's epoch here */
	uint64_t seq;         /**< primary: last sent; standby: last installed */
	uint64_t acked_seq;   /**< primary: last acknowledged */
	uint64_t updates;     /**< primary: updates acked; standby: installed */
	uint64_t bytes;       /**< primary: bytes sent; standby: bytes received */
	uint64_t last_us;     /**< wall clock of the last ack (primary) / install (standby) */
} mig_replica_info;

/**
 * Read `user`'s replication figures.
 * @return 0, MIG_EINVAL, MIG_ENOUSER (neither replicated nor a replica here).
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT int mig_replica_info_get(mig_engine *engine, const char *user,
				    mig_replica_info *info);

/**
 * The user's epoch on this engine: 1 for a user that never failed over,
 * the promoted epoch after a promotion here.
 * @return the epoch, or 0 if the engine has no record of the user.
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT uint64_t mig_user_epoch(mig_engine *engine, const char *user);

#ifdef __cplusplus
}
#endif

#endif /* MIGRATE_REPLICATE_H */
