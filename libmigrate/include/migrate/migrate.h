/*
 * libmigrate — move one user's application state to a peer engine while the
 * user keeps going.
 *
 * This is the engine API, for server authors. The orchestrator's control
 * client is <migrate/control.h>.
 *
 * Threading, in one paragraph: every function here may be called from any
 * thread unless its doc says otherwise. Callbacks you register run only inside
 * mig_engine_dispatch() (or mig_engine_run(), mig_migration_wait(), which call
 * it), on the thread that called it; the library never calls your code from its
 * own threads. Put mig_engine_fd() into your poll loop and call
 * mig_engine_dispatch() when it is readable.
 *
 * Errors: functions returning int return 0 on success or a negative MIG_E*
 * value. mig_strerror() describes a value; mig_engine_last_error() gives the
 * detail of the last failure on an engine.
 */
#ifndef MIGRATE_MIGRATE_H
#define MIGRATE_MIGRATE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(MIG_BUILDING_LIBRARY) && defined(__GNUC__)
#define MIG_EXPORT __attribute__((visibility("default")))
#else
#define MIG_EXPORT
#endif

/** Version of the headers; mig_version() gives the library's. */
#define MIG_VERSION_MAJOR 0
#define MIG_VERSION_MINOR 1
#define MIG_VERSION_PATCH 0

/** Version of the wire protocol this library speaks (in the handshake). */
#define MIG_PROTOCOL_VERSION 2

/**
 * Error codes. Stable: values never change meaning. They also travel on the
 * wire (REJECT/FAILED reasons), so both engines of a cluster agree on them.
 */
typedef enum mig_error {
	MIG_OK = 0,
	MIG_EINVAL = -1,        /**< invalid argument */
	MIG_ENOMEM = -2,        /**< out of memory */
	MIG_ENOUSER = -3,       /**< no such user here */
	MIG_EEXIST = -4,        /**< already exists (user, domain, migration id) */
	MIG_EBUSY = -5,         /**< user is already migrating, or engine is busy */
	MIG_ESTATE = -6,        /**< not allowed in the current state */
	MIG_ECONNECT = -7,      /**< could not connect to the peer */
	MIG_ECLOSED = -8,       /**< the connection closed */
	MIG_ETIMEDOUT = -9,     /**< a deadline passed */
	MIG_EAUTH = -10,        /**< authentication failed */
	MIG_EPROTO = -11,       /**< malformed or unexpected message */
	MIG_ETOOBIG = -12,      /**< message or state over the configured cap */
	MIG_EREJECTED = -13,    /**< the destination refused the migration */
	MIG_ECALLBACK = -14,    /**< an application callback reported failure */
	MIG_ECANCELED = -15,    /**< canceled by the caller or the orchestrator */
	MIG_EVERSION = -16,     /**< protocol or domain version not supported */
	MIG_ENODOMAIN = -17,    /**< a state domain is not registered here */
	MIG_ETLS = -18,         /**< TLS setup or verification failed */
	MIG_EIO = -19,          /**< I/O error (socket, file, eventfd) */
	MIG_ESYSTEM = -20,      /**< unexpected OS error; see the last-error text */
	MIG_EUNKNOWN = -21,     /**< the peer has no record of the migration */
	MIG_EPARKED = -22,      /**< outcome unknown; user parked until decided */
} mig_error;

/**
 * Describe an error code in a sentence ("no such user here").
 * @return a static string; an unknown code gives "unknown error".
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT const char *mig_strerror(int err);

/**
 * The error code's name ("MIG_ENOUSER").
 * @return a static string; an unknown code gives "MIG_E?".
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT const char *mig_err_name(int err);

/**
 * The library's version as "MAJOR.MINOR.PATCH".
 * @return a static string.
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT const char *mig_version(void);

/**
 * Replace the allocator the library uses for its own memory (not for memory
 * that libwebsockets or OpenSSL allocate internally). Call before creating any
 * engine or client; passing NULLs restores malloc/realloc/free.
 * realloc_fn must behave like realloc (including realloc(NULL, n)).
 * @return 0, or MIG_EINVAL if only some of the three are given.
 * Thread: call before any other libmigrate function. Callback-safe: no.
 */
MIG_EXPORT int mig_set_allocator(void *(*malloc_fn)(size_t),
				 void *(*realloc_fn)(void *, size_t),
				 void (*free_fn)(void *));

/* ---------------------------------------------------------------- types */

/** An engine: one listening port, many users, peers and orchestrators. */
typedef struct mig_engine mig_engine;

/** One outgoing migration, as seen by the app that started it. */
typedef struct mig_migration mig_migration;

/** A byte buffer the library owns; extract callbacks append to it. */
typedef struct mig_buf mig_buf;

/** Log levels for mig_log_fn. */
typedef enum mig_log_level {
	MIG_LOG_ERROR = 0,
	MIG_LOG_WARN = 1,
	MIG_LOG_INFO = 2,
	MIG_LOG_DEBUG = 3,
} mig_log_level;

/** What a user is doing on this engine. */
typedef enum mig_user_state {
	MIG_USER_ABSENT = 0,    /**< not here */
	MIG_USER_ACTIVE = 1,    /**< served here */
	MIG_USER_MIGRATING = 2, /**< source: leaving, still served here */
	MIG_USER_PAUSED = 3,    /**< source: paused, outcome pending */
	MIG_USER_INCOMING = 4,  /**< destination: arriving, not yet active */
	MIG_USER_PARKED = 5,    /**< outcome unknown, other side unreachable */
} mig_user_state;

/** Kinds of engine event. */
typedef enum mig_event_type {
	MIG_EVENT_STARTED = 0,   /**< source: migration began */
	MIG_EVENT_PREPARED = 1,  /**< source: destination holds the state, inactive */
	MIG_EVENT_COMMITTED = 2, /**< source: the user now lives at the destination */
	MIG_EVENT_ABORTED = 3,   /**< source: migration failed; the user stays here */
	MIG_EVENT_INCOMING = 4,  /**< destination: accepted an incoming user */
	MIG_EVENT_ACTIVATED = 5, /**< destination: the incoming user is active here */
	MIG_EVENT_DROPPED = 6,   /**< destination: the incoming copy was discarded */
	/**
	 * source: progress of a running migration: its phase changed
	 * (`phase`), or a file round went out, or file data is flowing
	 * (`bytes_sent`, `rounds`). At most about 10 per second per
	 * migration; the latest figures win, so some may be skipped.
	 */
	MIG_EVENT_PROGRESS = 7,
} mig_event_type;

/**
 * A user state's name: "absent", "active", "migrating", "paused",
 * "incoming", "parked" (as `migratectl users` and the metrics print them).
 * @return a static string; an unknown value gives "?".
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT const char *mig_user_state_name(mig_user_state state);

/**
 * An event type's name: "started", "prepared", "committed", "aborted",
 * "incoming", "activated", "dropped", "progress".
 * @return a static string; an unknown value gives "?".
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT const char *mig_event_type_name(mig_event_type type);

/**
 * An event about one migration. Valid only during the callback; copy what you
 * need.
 */
typedef struct mig_event {
	mig_event_type type;
	const char *mid;      /**< migration id, 32 hex digits */
	const char *user;
	const char *peer_url; /**< the other engine */
	int error;            /**< 0, or why it aborted / dropped (MIG_E*) */
	const char *reason;   /**< human-readable detail, "" if none */
	uint64_t bytes_sent;     /**< payload bytes sent on the peer link */
	uint64_t bytes_received; /**< payload bytes received on the peer link */
	uint64_t duration_us;    /**< since the migration started */
	uint64_t downtime_us;    /**< pause -> commit (source) or 0 */
	unsigned int rounds;     /**< file state: rounds so far */
	/**
	 * Source: the phase the migration is in: "begin" (asking the
	 * destination), "precopy" (file rounds, user still served), "final"
	 * (paused, last file round), "prepare" (state sent, waiting for the
	 * destination), "commit" (COMMIT decided), "done" (on COMMITTED and
	 * ABORTED). "" on destination events. Never NULL.
	 */
	const char *phase;
	uint64_t time_us;        /**< wall clock of the event, microseconds since the epoch */
} mig_event;

/**
 * Event callback.
 * Thread: runs only inside mig_engine_dispatch(), on its caller's thread.
 * Callback-safe: any mig_* call except mig_engine_free() on this engine.
 */
typedef void (*mig_event_fn)(mig_engine *engine, const mig_event *event,
			     void *user_data);

/**
 * Log callback. `line` has no trailing newline and is valid only during the
 * call. Messages produced on the library's threads are queued and delivered
 * in order on the next dispatch.
 * Thread: runs only inside mig_engine_dispatch(), on its caller's thread.
 * Callback-safe: must not call mig_engine_free().
 */
typedef void (*mig_log_fn)(mig_engine *engine, mig_log_level level,
			   const char *line, void *user_data);

/**
 * Engine options. Zero-initialise, then set what you need; pointers are
 * copied by mig_engine_new(), so they need not outlive the call.
 */
typedef struct mig_engine_options {
	/** Address to listen on; NULL means "127.0.0.1". */
	const char *listen_address;
	/** TCP port; 0 picks a free one (read it back with mig_engine_port()). */
	int listen_port;
	/**
	 * URL other engines and clients use to reach this one, e.g.
	 * "ws://10.0.0.5:7000". NULL derives it from the listen address and
	 * port ("ws://" or "wss://" with TLS).
	 */
	const char *advertised_url;
	/** This engine's id in events and handshakes; NULL picks a random one. */
	const char *engine_id;
	/**
	 * Shared cluster secret for peer and control authentication. Required
	 * unless allow_insecure is set; at least 16 bytes.
	 */
	const void *secret;
	size_t secret_len;
	/** Set to 1 to run with no authentication (tests, trusted networks only). */
	int allow_insecure;
	/** PEM certificate and key: set both to serve TLS (wss://). */
	const char *tls_cert_file;
	const char *tls_key_file;
	/**
	 * PEM CA bundle: verifies the peers this engine connects to over
	 * wss:// and, with tls_require_client_cert, the certificates of those
	 * connecting to it.
	 */
	const char *tls_ca_file;
	/** Set to 1 to require a client certificate signed by tls_ca_file. */
	int tls_require_client_cert;
	/** Hard cap on one incoming message; 0 means 4 MiB. Minimum 4 KiB. */
	size_t max_frame_bytes;
	/**
	 * How long a step of the handoff may wait for the peer before the
	 * source gives up (if it has not decided COMMIT) or starts asking what
	 * happened; 0 means 5000 ms.
	 */
	unsigned int peer_timeout_ms;
	/** Event callback, or NULL. */
	mig_event_fn on_event;
	/** Log callback, or NULL for none. */
	mig_log_fn on_log;
	/** Most verbose level passed to on_log; default MIG_LOG_ERROR (0). */
	mig_log_level log_level;
	/** Passed as the last argument to on_event and on_log. */
	void *user_data;

	/* ---- file state (see mig_file_domain_register) ---- */
	/**
	 * Pre-copy stop rule: stop the rounds that run while the user is
	 * still served once the predicted final round (changed bytes over the
	 * measured throughput) is shorter than this; 0 means 50 ms.
	 */
	unsigned int precopy_alpha_ms;
	/** At most this many pre-copy rounds; 0 means 8. 1 disables pre-copy
	 * (everything is sent after the pause). */
	unsigned int precopy_max_rounds;
	/**
	 * At most this many bytes per second of file data in the pre-copy
	 * rounds, those that run while the user is still served; 0: no limit.
	 * The final round, with the user paused, is never limited, so the
	 * downtime does not grow. Below 65536 makes mig_engine_new() fail
	 * with MIG_EINVAL (a 64 MiB folder would take over 17 minutes).
	 *
	 * Why: unpaced, a migration moves data as fast as the two engines
	 * can, and on a small host the kernel's share of that work (the
	 * network stack, the page cache, writeback) runs at kernel priority
	 * whatever worker_nice says, and shows in the other users' latency
	 * tail. On the 2-vCPU benchmark host, 100 MB/s (1e8) kept the other
	 * users' p99 within the noise while 64 MiB moved in 0.8 s instead of
	 * 0.17 s (docs/BENCHMARKS.md, "Cost to the application").
	 */
	uint64_t precopy_rate_limit;
	/** Compression of file data on the wire: MIG_COMPRESSION_*. */
	int compression;
	/**
	 * Bytes of departed users' files kept so a returning user costs only
	 * a delta; 0 means 1 GiB. Set file_cache_off to keep none.
	 */
	uint64_t file_cache_bytes;
	int file_cache_off;
	/** Threads for signatures, deltas, patches and digests; 0 means 2. */
	unsigned int worker_threads;
	/**
	 * How much nicer than the thread that calls mig_engine_start() the
	 * engine's own threads run: the workers and, despite the name, the
	 * I/O thread too (each sets its niceness to that thread's plus this,
	 * at most 19; Linux keeps a niceness per thread). The app's threads
	 * are not touched.
	 * 0 means 10; -1 keeps them at the app's priority; 1..19 otherwise,
	 * anything else makes mig_engine_new() fail with MIG_EINVAL.
	 *
	 * Why: during a migration the workers (reading, signatures, deltas,
	 * patches) and the I/O thread (zstd, SHA-256, WebSocket framing) are
	 * CPU-heavy for about a second; at the app's priority they take the
	 * CPU from the app's threads, which shows in the other users' latency
	 * tail when the cores are busy (docs/BENCHMARKS.md, "Cost to the
	 * application"). The trade-off: on a saturated machine a migration,
	 * and its pause, get less CPU and take longer; with a free core
	 * nothing changes.
	 */
	int worker_nice;

	/**
	 * Set to 1 to turn off the Prometheus endpoint. By default the
	 * engine answers `GET /metrics` on its own port with counters in the
	 * Prometheus text format. The endpoint is NOT authenticated: it
	 * shows counts, byte totals and the engine id, never user ids.
	 */
	int metrics_off;

	/* ---- orchestrator announce channel (docs/ORCHESTRATOR.md) ---- */
	/**
	 * An orchestrator to announce this engine to, "ws://host:port" or
	 * "wss://host:port" (its engines port). When set, the engine
	 * connects to it from mig_engine_dispatch(), authenticates with the
	 * cluster secret (the secret itself is never sent), announces its id,
	 * URL, app_url and library version, then sends a heartbeat with its
	 * user counts every heartbeat_ms. If the orchestrator is down or the
	 * link drops, the engine reconnects with backoff (0.25 s doubling to
	 * 10 s, with jitter); none of this ever delays dispatch or a
	 * handoff. NULL: no announcing. A URL that does not parse makes
	 * mig_engine_new() fail with MIG_EINVAL.
	 */
	const char *orchestrator_url;
	/** Heartbeat interval; 0 means 1000 ms; 10..3600000. */
	unsigned int heartbeat_ms;

	/* ---- session channel (see mig_session_token, <migrate/client.h>) ---- */
	/**
	 * Where this engine's app serves its own clients (any scheme, e.g.
	 * "wss://edge-1.example:443/app" or "tcp://10.0.0.5:9000"). Sent to
	 * clients when they attach, and in the redirect that sends the clients
	 * of a user migrated here. NULL: clients get no app URL.
	 */
	const char *app_url;
	/**
	 * Lifetime of the session tokens this engine mints; 0 means 600 s,
	 * at most 3600. Engines remember used tokens until they expire.
	 */
	unsigned int session_token_ttl_s;
} mig_engine_options;

/** Compression of file data chunks (mig_engine_options.compression). */
enum mig_compression {
	/** Compress a chunk with zstd only when that saves time on the
	 * measured link (the default). */
	MIG_COMPRESSION_AUTO = 0,
	MIG_COMPRESSION_OFF = 1,
	MIG_COMPRESSION_ON = 2,
};

/* ---------------------------------------------------------------- engine */

/**
 * Create an engine. It does not listen until mig_engine_start(): register
 * domains and hooks first.
 * @param out     receives the engine; set to NULL on failure.
 * @param options may be NULL for all defaults (then allow_insecure is 0 and
 *                no secret is set, so start fails: a secret is required).
 * @return 0, MIG_EINVAL for a bad option (detail on stderr is not printed;
 *         the reason is returned by mig_engine_last_error() only when an
 *         engine exists, so check options first), MIG_ENOMEM, MIG_ESYSTEM.
 * Ownership: the caller owns *out and frees it with mig_engine_free().
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT int mig_engine_new(mig_engine **out,
			      const mig_engine_options *options);

/**
 * Start listening and serving: creates the listening socket and the I/O
 * thread. Note: libwebsockets sets SIGPIPE to SIG_IGN process-wide here.
 * @return 0, MIG_EINVAL (missing secret), MIG_EIO (cannot bind), MIG_ETLS,
 *         MIG_ESTATE (already started).
 * Thread: any. Callback-safe: no.
 */
MIG_EXPORT int mig_engine_start(mig_engine *engine);

/**
 * Stop and free the engine. Connections close; migrations in flight end as
 * if the process had stopped (the peer resolves them, DESIGN invariants).
 * Accepts NULL.
 * Thread: any thread except from inside a callback of this engine.
 * Callback-safe: no.
 */
MIG_EXPORT void mig_engine_free(mig_engine *engine);

/**
 * A file descriptor that is readable when mig_engine_dispatch() has work.
 * Add it to poll/epoll/libuv/GLib/asyncio for reading; do not read it.
 * @return the fd, valid until mig_engine_free().
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT int mig_engine_fd(const mig_engine *engine);

/**
 * Do all pending work: handle peer and control messages, run timers, and run
 * your callbacks. Never blocks. Call it when mig_engine_fd() is readable, or
 * at least every few milliseconds.
 * @return 0, or a negative MIG_E* if the engine is broken (then free it).
 * Thread: any, but one thread at a time (calls from two threads serialise).
 * Callback-safe: no (not re-entrant).
 */
MIG_EXPORT int mig_engine_dispatch(mig_engine *engine);

/**
 * Dispatch until mig_engine_stop() or timeout_ms passes (negative: forever).
 * @return 0, or an error from mig_engine_dispatch().
 * Thread: any, like mig_engine_dispatch(). Callback-safe: no.
 */
MIG_EXPORT int mig_engine_run(mig_engine *engine, int timeout_ms);

/**
 * Make mig_engine_run() return soon.
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT void mig_engine_stop(mig_engine *engine);

/**
 * The TCP port the engine listens on (useful with listen_port 0).
 * @return the port, or MIG_ESTATE before mig_engine_start().
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT int mig_engine_port(const mig_engine *engine);

/**
 * The URL peers and clients use for this engine.
 * @return a string owned by the engine, valid until mig_engine_free(); NULL
 *         before mig_engine_start() when it is derived from the port.
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT const char *mig_engine_url(const mig_engine *engine);

/**
 * This engine's id.
 * @return a string owned by the engine, valid until mig_engine_free().
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT const char *mig_engine_id(const mig_engine *engine);

/**
 * Detail of the last error on this engine, as text; "" if none. Written by
 * every failing call on any thread, so read it right after the call.
 * @return a string owned by the engine, valid until the next failing call.
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT const char *mig_engine_last_error(const mig_engine *engine);

/* ---------------------------------------------------------------- hooks */

/**
 * Application hooks: how the engine asks the app to stop, resume, release,
 * activate or drop a user. Any may be NULL (then that step is a no-op and
 * succeeds). pause and incoming return 0, or a negative value to refuse
 * (the migration then aborts and the user stays where it was).
 * Thread: every hook runs only inside mig_engine_dispatch().
 * Callback-safe: any mig_* call except mig_engine_free().
 */
typedef struct mig_hooks {
	/** Source: stop serving `user` and freeze its state; extract follows. */
	int (*pause)(mig_engine *engine, const char *user, void *user_data);
	/** Source: the migration aborted before commit; serve `user` again. */
	void (*resume)(mig_engine *engine, const char *user, void *user_data);
	/** Source: the user now lives elsewhere; free its state here. */
	void (*release)(mig_engine *engine, const char *user, void *user_data);
	/**
	 * Destination: a user is arriving; prepare an inactive slot (merge
	 * callbacks follow). Returning non-zero rejects the migration.
	 */
	int (*incoming)(mig_engine *engine, const char *user, void *user_data);
	/**
	 * Destination: committed; start serving `user`. Cannot refuse: the
	 * source has already decided, and this engine now holds the only
	 * active copy.
	 */
	void (*activate)(mig_engine *engine, const char *user, void *user_data);
	/** Destination: the incoming user was not committed; discard it. */
	void (*drop)(mig_engine *engine, const char *user, void *user_data);
} mig_hooks;

/**
 * Install the application hooks (copied).
 * @param user_data passed to every hook.
 * @return 0, MIG_EINVAL, MIG_ESTATE if called after mig_engine_start().
 * Thread: any, before mig_engine_start(). Callback-safe: no.
 */
MIG_EXPORT int mig_engine_set_hooks(mig_engine *engine, const mig_hooks *hooks,
				    void *user_data);

/* ---------------------------------------------------------------- light state */

/**
 * Append bytes to a library-owned buffer (the extract callback's output).
 * @return 0, MIG_ENOMEM, MIG_ETOOBIG (the state would exceed the frame cap).
 * Ownership: data is copied.
 * Thread: only inside the callback that received `buf`.
 */
MIG_EXPORT int mig_buf_append(mig_buf *buf, const void *data, size_t len);

/**
 * Reserve `len` bytes at the end of `buf` and return a pointer to write them
 * into (avoids a copy for serialisers that know the size, e.g. protobuf).
 * @return the pointer, or NULL on MIG_ENOMEM / MIG_ETOOBIG.
 * Thread: only inside the callback that received `buf`.
 */
MIG_EXPORT void *mig_buf_reserve(mig_buf *buf, size_t len);

/**
 * Extract callback: serialise `user`'s state of this domain into `out`.
 * Runs at the source after pause().
 * @return 0, or a negative value to abort the migration (the user resumes).
 * Thread: only inside mig_engine_dispatch().
 */
typedef int (*mig_extract_fn)(mig_engine *engine, const char *user,
			      mig_buf *out, void *user_data);

/**
 * Merge callback: load state extracted by the source into the *inactive*
 * incoming `user`. `version` is the source's domain version (never newer than
 * this engine's registered version; an older one is the app's to upgrade).
 * `data` is valid only during the call, and never NULL (even when len is 0).
 * @return 0, or a negative value: the destination reports FAILED, drops the
 *         user, and the source resumes it.
 * Thread: only inside mig_engine_dispatch().
 */
typedef int (*mig_merge_fn)(mig_engine *engine, const char *user,
			    uint32_t version, const void *data, size_t len,
			    void *user_data);

/** A light state domain: a named, versioned blob per user. */
typedef struct mig_light_domain {
	const char *name;      /**< unique per engine, 1-64 chars [A-Za-z0-9_.-] */
	const char *type_name; /**< optional: e.g. "sandwich.Progress" */
	uint32_t version;      /**< the format version this engine writes and reads */
	mig_extract_fn extract;
	mig_merge_fn merge;
} mig_light_domain;

/**
 * Register a light state domain (copied). Both engines of a migration must
 * register a domain of the same name; the destination rejects a migration
 * whose version is newer than its own.
 * @return 0, MIG_EINVAL, MIG_EEXIST, MIG_ESTATE (after mig_engine_start()),
 *         MIG_ENOMEM.
 * Thread: any, before mig_engine_start(). Callback-safe: no.
 */
MIG_EXPORT int mig_light_domain_register(mig_engine *engine,
					 const mig_light_domain *domain,
					 void *user_data);

/* ---------------------------------------------------------------- file state */

/**
 * A file state domain: each user's files live in ROOT/<user>/ (regular files
 * in nested folders; symlinks and special files are refused, which aborts
 * the migration). On a migration the files move as librsync deltas against
 * whatever copy the destination already holds, in pre-copy rounds while the
 * user is still served; the destination stages them under
 * ROOT/.mig-staging/<migration id>/ and swaps them in atomically at COMMIT.
 * After a user leaves, its folder is moved to ROOT/.mig-cache/<user>/
 * (bounded by file_cache_bytes) so a return trip costs only a delta; an app
 * may also seed that folder with a copy it knows the peer has.
 * Names beginning with ".mig-" are reserved.
 */
typedef struct mig_file_domain {
	const char *name;  /**< unique among the engine's domains */
	uint32_t version;
	const char *root;  /**< an existing directory; copied */
	/**
	 * Set to 1 if the app only ever appends to these files (logs,
	 * recorded frames): later rounds then send only the new tail of a
	 * grown file instead of a delta.
	 */
	int append_only;
} mig_file_domain;

/**
 * Register a file state domain (copied). Both engines must register a file
 * domain of the same name; roots may differ.
 * @return 0, MIG_EINVAL (bad name, root not a directory), MIG_EEXIST,
 *         MIG_ESTATE (after mig_engine_start()), MIG_ENOMEM.
 * Thread: any, before mig_engine_start(). Callback-safe: no.
 */
MIG_EXPORT int mig_file_domain_register(mig_engine *engine, const mig_file_domain *domain);

/* ---------------------------------------------------------------- users */

/**
 * Add a user served by this engine (state ACTIVE). User ids are 1-128 bytes
 * of printable ASCII without spaces.
 * @return 0, MIG_EINVAL, MIG_EEXIST (already present in any state), MIG_ENOMEM.
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT int mig_user_add(mig_engine *engine, const char *user);

/**
 * Forget an ACTIVE user (e.g. the user logged out).
 * @return 0, MIG_ENOUSER, MIG_EBUSY (migrating).
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT int mig_user_remove(mig_engine *engine, const char *user);

/**
 * The user's state here.
 * @return a mig_user_state (MIG_USER_ABSENT if unknown).
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT mig_user_state mig_user_get_state(mig_engine *engine,
					     const char *user);

/**
 * Visit every user (a snapshot taken under the engine lock; the callback runs
 * after the lock is released, so it may call mig_* functions).
 * @param fn called once per user; return non-zero to stop early.
 * @return the number of users visited, or MIG_ENOMEM.
 * Thread: any; fn runs on the caller's thread. Callback-safe: yes.
 */
MIG_EXPORT int mig_user_foreach(mig_engine *engine,
				int (*fn)(const char *user, mig_user_state state,
					  void *user_data),
				void *user_data);

/**
 * Number of users in any state but ABSENT.
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT size_t mig_user_count(mig_engine *engine);

/* ---------------------------------------------------------------- session channel */

/** Bytes a session token needs, with its terminating NUL. */
#define MIG_SESSION_TOKEN_MAX 600

/**
 * Mint a session token for a client of `user`: the app hands it to its client
 * (in its own protocol), and the client's reconnect helper (<migrate/client.h>)
 * attaches with it to this engine's session channel, at mig_engine_url().
 * Once attached, the client is told where to go whenever the user migrates.
 *
 * A token is text (base64url), signed with a key derived from the cluster
 * secret, names the user and this engine, expires after
 * session_token_ttl_s and is accepted once.
 * @param out     receives the token, NUL-terminated.
 * @param out_len at least MIG_SESSION_TOKEN_MAX is always enough.
 * @return 0, MIG_EINVAL (bad user id, out too small), MIG_ENOUSER (the user
 *         is not served here: not ACTIVE, or leaving but still served),
 *         MIG_ESYSTEM.
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT int mig_session_token(mig_engine *engine, const char *user, char *out,
				 size_t out_len);

/* ---------------------------------------------------------------- migrations */

/** Outcome of a migration as seen by its source. */
typedef enum mig_migration_state {
	MIG_MIGRATION_RUNNING = 0,
	MIG_MIGRATION_COMMITTED = 1,
	MIG_MIGRATION_ABORTED = 2,
} mig_migration_state;

/** Figures about one migration; see mig_migration_info(). */
typedef struct mig_migration_stats {
	mig_migration_state state;
	int error;            /**< why it aborted, 0 otherwise */
	uint64_t bytes_sent;
	uint64_t bytes_received;
	uint64_t duration_us;
	uint64_t downtime_us;
	/** File state: pre-copy rounds run (the last one after the pause). */
	unsigned int rounds;
	/** File state: chunk bytes sent in each round (first 16 rounds). */
	uint64_t round_bytes[16];
} mig_migration_stats;

/**
 * Move `user` to the engine at `destination_url`. Returns at once; progress
 * arrives as events, and the handle can be waited on or canceled.
 * @param out receives a handle (may be NULL if you only want events); free
 *            it with mig_migration_free() (freeing does not cancel).
 * @return 0, MIG_ENOUSER, MIG_EBUSY (not ACTIVE), MIG_EINVAL (bad URL),
 *         MIG_ESTATE (engine not started), MIG_ENOMEM.
 *         If it fails, no event for this migration is ever emitted.
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT int mig_migrate(mig_engine *engine, const char *user,
			   const char *destination_url, mig_migration **out);

/**
 * Wait for the migration to end, dispatching the engine meanwhile.
 * @param timeout_ms negative waits forever.
 * @return the final state's code: 0 if committed, the abort error (negative)
 *         if aborted, MIG_ETIMEDOUT if still running at the deadline.
 * Thread: the thread that dispatches the engine (it runs callbacks).
 * Callback-safe: no.
 */
MIG_EXPORT int mig_migration_wait(mig_migration *migration, int timeout_ms);

/**
 * Ask the migration to stop. Effective only before the source decided
 * COMMIT: then the user resumes here and the migration ends with
 * MIG_ECANCELED. After that point the handoff completes.
 * @return 0 if the cancel was requested, MIG_ESTATE if already past commit
 *         or ended.
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT int mig_migration_cancel(mig_migration *migration);

/**
 * Current figures.
 * @return 0, MIG_EINVAL.
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT int mig_migration_info(mig_migration *migration,
				  mig_migration_stats *stats);

/**
 * The migration id (32 hex digits).
 * @return a string owned by the handle.
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT const char *mig_migration_id(const mig_migration *migration);

/**
 * Release the handle. Does not cancel. Accepts NULL.
 * Thread: any. Callback-safe: yes.
 */
MIG_EXPORT void mig_migration_free(mig_migration *migration);

#ifdef __cplusplus
}
#endif

#endif /* MIGRATE_MIGRATE_H */
