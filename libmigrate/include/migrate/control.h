/*
 * libmigrate control client: what an orchestrator (or migratectl) uses to ask
 * an engine to migrate a user, list its users, read its status, cancel a
 * migration and watch its events over the authenticated control channel.
 *
 * The control client is blocking and simple: each call sends a request and
 * waits for its answer. It owns a small I/O thread; calls may come from any
 * one thread at a time.
 */
#ifndef MIGRATE_CONTROL_H
#define MIGRATE_CONTROL_H

#include <migrate/migrate.h>

#ifdef __cplusplus
extern "C" {
#endif

/** A connection to one engine's control channel. */
typedef struct mig_ctl mig_ctl;

/** Control client options; zero-initialise. Strings are copied. */
typedef struct mig_ctl_options {
	/** The engine's URL, "ws://host:port" or "wss://host:port". */
	const char *url;
	/** The cluster secret (required unless allow_insecure). */
	const void *secret;
	size_t secret_len;
	int allow_insecure;
	/** PEM CA bundle to verify a wss:// engine; NULL uses the OS store. */
	const char *tls_ca_file;
	/** Client certificate and key, for engines that require one. */
	const char *tls_cert_file;
	const char *tls_key_file;
	/** Connect and per-request timeout; 0 means 10000 ms. */
	unsigned int timeout_ms;
} mig_ctl_options;

/**
 * Connect and authenticate.
 * @param out receives the client; NULL on failure.
 * @param errbuf if not NULL, receives a one-line reason on failure.
 * @return 0, MIG_EINVAL, MIG_ECONNECT, MIG_EAUTH, MIG_ETIMEDOUT, MIG_ETLS,
 *         MIG_EVERSION, MIG_ENOMEM.
 * Ownership: free the client with mig_ctl_free().
 * Thread: any.
 */
MIG_EXPORT int mig_ctl_new(mig_ctl **out, const mig_ctl_options *options,
			   char *errbuf, size_t errbuf_len);

/** Close and free. Accepts NULL. Thread: any, not concurrently with calls. */
MIG_EXPORT void mig_ctl_free(mig_ctl *ctl);

/**
 * Detail of the last failure ("" if none).
 * @return a string owned by the client, valid until its next call.
 */
MIG_EXPORT const char *mig_ctl_last_error(const mig_ctl *ctl);

/**
 * List the engine's users.
 * @param fn called once per user, on the caller's thread, before return.
 * @return the number of users, or a negative MIG_E*.
 */
MIG_EXPORT int mig_ctl_users(mig_ctl *ctl,
			     void (*fn)(const char *user, mig_user_state state,
					void *user_data),
			     void *user_data);

/** One migration in flight on the engine that answered mig_ctl_status(). */
typedef struct mig_ctl_migration {
	const char *mid;      /**< migration id, 32 hex digits */
	const char *user;
	const char *peer_url; /**< the other engine */
	int outgoing;         /**< 1: this engine is the source; 0: the destination */
	/**
	 * Source: "begin", "precopy", "final", "prepare", "commit" (as in
	 * mig_event.phase); destination: "accepted", "verifying", "prepared",
	 * "installing".
	 */
	const char *phase;
	unsigned int rounds;  /**< file state: rounds sent so far */
	uint64_t bytes_sent;
	uint64_t bytes_received;
	uint64_t started_us;  /**< wall clock, microseconds since the epoch */
	uint64_t duration_us; /**< since it started */
	int parked;           /**< 1: outcome unknown, the other side unreachable */
} mig_ctl_migration;

/** An engine's status, see mig_ctl_status(). */
typedef struct mig_ctl_engine_status {
	const char *engine_id;
	const char *url;              /**< the engine's advertised URL */
	unsigned int protocol_version;
	const char *library_version;  /**< the engine's mig_version() */
	/** Users by state, indexed by mig_user_state (ABSENT is always 0). */
	size_t users_by_state[8];
	size_t users;                 /**< all users, any state */
	const mig_ctl_migration *migrations;
	size_t nmigrations;
	/* Totals since the engine started. */
	uint64_t committed_out; /**< as the source: committed */
	uint64_t aborted_out;   /**< as the source: aborted */
	uint64_t committed_in;  /**< as the destination: activated */
	uint64_t aborted_in;    /**< as the destination: dropped */
	uint64_t bytes_sent;    /**< migration bytes sent on peer links */
	uint64_t bytes_received;
	uint64_t uptime_us;
} mig_ctl_engine_status;

/**
 * Receives the status. Everything it points to is valid only during the
 * call; copy what you need.
 */
typedef void (*mig_ctl_status_fn)(const mig_ctl_engine_status *status, void *user_data);

/**
 * Ask the engine for its status: identity, users by state, the migrations
 * in flight with their progress, and totals.
 * @param fn called once with the status, on the caller's thread, before
 *           return.
 * @return 0, or a negative MIG_E* (MIG_ETIMEDOUT, MIG_ECLOSED, MIG_ETOOBIG).
 * Ownership: the status belongs to the call; fn must not keep pointers.
 * Thread: the thread using the client.
 */
MIG_EXPORT int mig_ctl_status(mig_ctl *ctl, mig_ctl_status_fn fn, void *user_data);

/**
 * Cancel a migration running on the engine, named by its id (32 hex
 * digits) or by the user it moves. Like mig_migration_cancel(): effective
 * only at the source and before it decided COMMIT; the migration then ends
 * with ABORTED / MIG_ECANCELED (watch the events to see it end).
 * @return 0 if the cancel was requested; MIG_ESTATE (past the commit
 *         decision, ended, not migrating, or the engine is the destination:
 *         cancel at the source), MIG_EUNKNOWN (no such migration),
 *         MIG_ENOUSER (no such user), MIG_EINVAL, or a connection error.
 *         mig_ctl_last_error() has the engine's reason either way.
 * Ownership: mid_or_user is only read during the call.
 * Thread: the thread using the client.
 */
MIG_EXPORT int mig_ctl_cancel(mig_ctl *ctl, const char *mid_or_user);

/**
 * Ask the engine to migrate `user` to `destination_url` and wait until the
 * migration ends (or timeout_ms passes; 0 means 60000 ms).
 * @param on_event if not NULL, called for every event of this migration
 *                 (STARTED, PROGRESS, PREPARED, COMMITTED/ABORTED), on the
 *                 caller's thread. The final event is also copied into *final.
 * @param final    if not NULL, receives the last event's figures; its string
 *                 pointers are NULL (they do not outlive the call).
 * @return 0 when committed; the abort error otherwise (e.g. MIG_ENOUSER,
 *         MIG_EREJECTED, MIG_ECALLBACK), MIG_ETIMEDOUT, MIG_ECLOSED.
 */
MIG_EXPORT int mig_ctl_migrate(mig_ctl *ctl, const char *user,
			       const char *destination_url,
			       unsigned int timeout_ms,
			       void (*on_event)(const mig_event *event,
						void *user_data),
			       void *user_data, mig_event *final);

/**
 * Subscribe to all of the engine's events and deliver them to `fn` until
 * `fn` returns non-zero, the connection closes, or timeout_ms passes
 * (negative: no limit).
 * @return 0 when fn stopped it, MIG_ETIMEDOUT, MIG_ECLOSED, or an error.
 */
MIG_EXPORT int mig_ctl_watch(mig_ctl *ctl, int timeout_ms,
			     int (*fn)(const mig_event *event, void *user_data),
			     void *user_data);

/* ---------------------------------------------------------------- failover (docs/FAILOVER.md) */

/**
 * On a standby engine: make its replica of `user` the active user there
 * (the app's incoming, merge and activate hooks run; the user's epoch is
 * the replica's + 1). Answered once done.
 * @return 0 when promoted; MIG_ENOUSER (no replica of the user there),
 *         MIG_EEXIST (the user is already there), MIG_ECALLBACK (a hook or
 *         merge refused; the replica is kept), MIG_EINVAL, or a connection
 *         error. mig_ctl_last_error() has the engine's reason.
 * Thread: the thread using the client.
 */
MIG_EXPORT int mig_ctl_promote(mig_ctl *ctl, const char *user);

/**
 * On a primary engine: start replicating `user` to the engine at
 * `standby_url` every interval_ms (0: 1000), like mig_replicate(); with
 * standby_url NULL, stop replicating it.
 * @return 0, MIG_ENOUSER (not active there / not replicated), MIG_EEXIST
 *         (already replicated), MIG_EINVAL, or a connection error.
 * Thread: the thread using the client.
 */
MIG_EXPORT int mig_ctl_replicate(mig_ctl *ctl, const char *user, const char *standby_url,
				 unsigned int interval_ms);

#ifdef __cplusplus
}
#endif

#endif /* MIGRATE_CONTROL_H */
