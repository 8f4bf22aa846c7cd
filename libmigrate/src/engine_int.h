/* The engine's private state, shared by engine.c (options, lifecycle),
 * engine_dispatch.c (dispatch loop, connections), engine_migration.c
 * (migration handles), users.c (user table), handoff.c (the two-phase
 * handoff) and control.c (the control channel).
 *
 * Locking: `lock` guards everything below it. The handoff state machine runs
 * only inside dispatch (serialised by `dispatch_lock`) and holds `lock` except
 * while an application callback runs: mig__engine_unlock_for_app() /
 * mig__engine_relock() bracket every callback, so callbacks may call any
 * public function. Public functions from other threads take `lock` briefly. */
#ifndef MIG_ENGINE_INT_H
#define MIG_ENGINE_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "common.h"
#include "auth.h"
#include "evq.h"
#include "outcome.h"
#include "token.h"
#include "transport.h"
#include "wire.h"

struct mig_buf {
	uint8_t *data;
	size_t len;
	size_t cap;
	size_t max; /* cap on the total, from the frame cap */
	int error;  /* first failure (sticky) */
};

typedef struct mig__domain {
	char *name;
	char *type_name;
	uint32_t version;
	mig_extract_fn extract;
	mig_merge_fn merge;
	void *user_data;
} mig__domain;

typedef struct mig__fdomain {
	char *name;
	uint32_t version;
	char *root;
	bool append_only;
} mig__fdomain;

typedef struct mig__user {
	struct mig__user *next; /* hash chain */
	char *id;
	mig_user_state state;
	struct mig_migration *migration; /* the migration holding it, if any */
} mig__user;

typedef struct mig__users {
	mig__user **buckets;
	size_t nbuckets;
	size_t count;
} mig__users;

/* Phases of a migration; see docs/PROTOCOL.md for the diagram. */
enum mig__phase {
	/* source */
	MIG__SRC_NEW,          /* created by mig_migrate(); dispatch starts it */
	MIG__SRC_BEGIN_SENT,   /* waiting for ACCEPT / REJECT */
	MIG__SRC_PRECOPY,      /* file rounds while the user is still served */
	MIG__SRC_FINAL,        /* paused; the last file round is going out */
	MIG__SRC_PREPARE_SENT, /* paused, state sent, waiting for PREPARED / FAILED */
	MIG__SRC_COMMIT,       /* COMMIT decided: never resumes unless the
				  destination answers it lost its copy */
	/* destination */
	MIG__DST_ACCEPTED, /* waiting for PREPARE */
	MIG__DST_VERIFYING, /* light merged; checking staged files' digests */
	MIG__DST_PREPARED, /* merged into an inactive user; waiting for COMMIT */
	MIG__DST_INSTALLING, /* COMMIT received; swapping the staged files in */
	/* both */
	MIG__DONE,
};

/* Fault injection for tests (white-box only, not in the public API): at a
 * named point, cut the peer link, either instead of sending the frame or
 * right after it went out. */
enum mig__fault_point {
	MIG__FAULT_NONE = 0,
	MIG__FAULT_SEND_BEGIN,     /* source sends BEGIN */
	MIG__FAULT_SEND_ACCEPT,    /* destination sends ACCEPT */
	MIG__FAULT_SEND_PREPARE,   /* source sends PREPARE */
	MIG__FAULT_SEND_PREPARED,  /* destination sends PREPARED */
	MIG__FAULT_SEND_COMMIT,    /* source sends COMMIT */
	MIG__FAULT_SEND_COMMITTED, /* destination sends COMMITTED */
	/* File transfer (the action is ignored): */
	MIG__FAULT_FILE_CORRUPT_CHUNK, /* source flips bytes in its first delta chunk */
	MIG__FAULT_FILE_TRUNCATE,      /* source cuts the link halfway through a stream */
	MIG__FAULT_FILE_DOTDOT,        /* source sends a stream for "../evil" */
	MIG__FAULT_FILE_BAD_SIGNATURE, /* destination sends block length 2^31-1 */
	MIG__FAULT_FILE_CORRUPT_DATA,  /* source flips bytes inside its first chunk's data */
	MIG__FAULT_FILE_DATA_OVERRUN,  /* source announces a plain-data stream 1 byte short */
	MIG__FAULT_FILE_SYNC,          /* destination: the first fsync of a staged file fails */
};

enum mig__fault_action {
	MIG__FAULT_DROP_BEFORE = 1, /* the frame is lost with the link */
	MIG__FAULT_DROP_AFTER = 2,  /* the frame is delivered, then the link drops */
};

struct mig_migration {
	atomic_int refs;
	/* NULL once the engine lets go of the record (retired at the end of
	 * the tick in which it ended: the outcome memory keeps a slim copy)
	 * or is freed; atomic, so a handle's reader that sees NULL also sees
	 * the final state. */
	mig_engine *_Atomic engine;
	struct mig_migration *next; /* running list */
	char mid[MIG__MID_LEN + 1];
	char *user;
	char *peer_url;
	bool outgoing;
	enum mig__phase phase;
	/* Result, readable from any thread under the engine lock. */
	mig_migration_state state;
	int error;
	char reason[MIG__REASON_MAX];
	bool cancel_requested;
	/* The connection the migration last talked on (0 = none). */
	uint64_t conn;
	/* Destination: the light state as received, kept to answer a
	 * repeated PREPARE without merging twice. */
	bool paused;
	bool parked;
	bool emitted_started;
	/* Control request that started it, answered when it ends. */
	uint64_t ctl_conn;
	uint32_t ctl_request;
	/* Timing and counters. */
	uint64_t started_us;
	uint64_t paused_us;
	uint64_t ended_us;
	uint64_t deadline_us;   /* next timer (0 = none) */
	uint64_t phase_started_us;
	unsigned retries;
	uint64_t bytes_sent;
	uint64_t bytes_received;
	uint64_t downtime_us;
	/* File state (NULL for light-only migrations). */
	struct mig__xfer *xfer;
	unsigned rounds;
	uint64_t round_bytes[16];
	/* Source: light state extracted at pause, sent with PREPARE after the
	 * final file round. */
	mig_buf *light;
	size_t nlight;
	/* Source, session channel: the destination's engine id (from the peer
	 * handshake), its app's client URL and its session URL (from ACCEPT),
	 * for the redirect sent to the user's clients after COMMITTED. */
	char *peer_engine_id;
	char *peer_app_url;
	char *peer_session_url;
	/* Source: a PROGRESS event is owed (phase change, round, data flowing);
	 * sent from the tick at most every MIG__PROGRESS_INTERVAL_US. */
	bool progress_pending;
	uint64_t progress_last_us;
	/* What the last PROGRESS said: an identical one is not sent again. */
	enum mig__phase progress_phase;
	unsigned progress_rounds;
	uint64_t progress_bytes;
};

#define MIG__PROGRESS_INTERVAL_US 100000u
/* The lowest precopy_rate_limit accepted, bytes/s (migrate.h). */
#define MIG__PRECOPY_RATE_MIN 65536u

/* Downtime histogram buckets (seconds); +Inf is implicit. */
#define MIG__DOWNTIME_BUCKETS 8

/* Counters for status and /metrics, guarded by the engine lock. Index
 * [0] is the source role, [1] the destination. */
typedef struct mig__metrics {
	uint64_t started[2];
	uint64_t committed[2];
	uint64_t aborted[2];
	uint64_t file_rounds;
	uint64_t downtime_le[MIG__DOWNTIME_BUCKETS]; /* per bucket, not cumulative */
	uint64_t downtime_count;
	uint64_t downtime_sum_us;
	/* Bytes of migrations no longer in the list (forgotten outcomes);
	 * totals add those of the list. */
	uint64_t forgotten_sent;
	uint64_t forgotten_received;
	uint64_t started_mono_us;
	uint64_t started_wall_us;
} mig__metrics;

typedef struct mig__conn_rec {
	struct mig__conn_rec *next;
	uint64_t id;
	int channel;
	bool inbound;
	bool up;
	bool subscribed; /* control: receives every event */
	char *url;       /* outbound: the URL; inbound peer: advertised URL */
	char *peer_engine_id; /* from the handshake ("" if none) */
	/* Session channel: the user the client attached as (NULL until then). */
	char *session_user;
	uint64_t session_renew_us; /* when to send a fresh resume token */
	bool session_closing; /* refused or redirected: closes after the reply */
} mig__conn_rec;

typedef struct mig__pending_log {
	struct mig__pending_log *next;
	mig_log_level level;
	char *line;
} mig__pending_log;

struct mig_engine {
	/* Options (owned copies). */
	char *listen_address;
	int listen_port;
	char *advertised_url;
	char *engine_id;
	uint8_t *secret;
	size_t secret_len;
	bool insecure;
	char *tls_cert_file;
	char *tls_key_file;
	char *tls_ca_file;
	bool tls_require_client_cert;
	size_t max_frame;
	unsigned peer_timeout_ms;
	mig_event_fn on_event;
	mig_log_fn on_log;
	mig_log_level log_level;
	void *user_data;
	mig_hooks hooks;
	void *hooks_user_data;

	mig__domain *domains;
	size_t ndomains;
	mig__fdomain *fdomains;
	size_t nfdomains;
	unsigned precopy_alpha_ms;
	unsigned precopy_max_rounds;
	uint64_t precopy_rate_limit; /* bytes/s of pre-copy file data; 0: none */
	int compression;
	uint64_t file_cache_bytes; /* 0 = keep no cache */
	unsigned worker_threads;
	int worker_nice; /* added to the starting thread's; 0 = app's priority */
	struct mig__workers *workers;
	struct mig__strand *maint; /* releases to the departed cache, in order */

	mig__transport *transport;
	mig__evq events;   /* transport -> dispatch */
	int wake_fd;       /* eventfd: another thread asks dispatch to look */
	int timer_fd;      /* timerfd: the earliest migration deadline */
	int epoll_fd;      /* mig_engine_fd(): the three above */
	uint64_t timer_armed_us;
	bool started;
	atomic_bool stop_run;

	pthread_mutex_t dispatch_lock;
	pthread_mutex_t lock;
	/* --- guarded by lock --- */
	mig__users users;
	struct mig_migration *migrations; /* running (and just-finished, until the tick ends) */
	size_t nmigrations;
	/* Finished migrations, remembered to answer repeats and OUTCOME
	 * queries (outcome.h): slim records, oldest first, hashed by mid. */
	mig__outcomes outcomes;
	mig__conn_rec *conns;
	mig__pending_log *logs_head;
	mig__pending_log *logs_tail;
	char last_error[256];
	/* Faults (tests). */
	/* Session channel (session.c). */
	char *app_url;              /* option: the app's client endpoint */
	unsigned session_ttl_s;     /* option: lifetime of minted tokens */
	mig__session_key session_key; /* signs and checks session tokens */
	bool session_key_ready; /* derived: see mig__session_key_get() */
	mig__nonce_cache used_nonces; /* tokens accepted here, until expiry */
	uint64_t nonce_prune_us;    /* next prune of used_nonces */
	uint64_t session_next_us;   /* earliest session_renew_us (0 = none) */
	enum mig__fault_point fault_point;
	enum mig__fault_action fault_action;
	unsigned fault_count; /* how many more times to fire */
	mig__metrics metrics;
	bool metrics_off; /* option: no GET /metrics */
	struct mig__announce *announce; /* announce.c; NULL: no orchestrator */
	struct mig__replica *replica; /* replica.c; NULL until replication is used */
};

/* engine.c */
void mig__engine_set_error(mig_engine *e, const char *fmt, ...) MIG__PRINTF(2, 3);

/* engine_dispatch.c */
void mig__engine_log(mig_engine *e, mig_log_level level, const char *fmt, ...)
	MIG__PRINTF(3, 4);
void mig__engine_unlock_for_app(mig_engine *e);
void mig__engine_relock(mig_engine *e);
void mig__engine_wake(mig_engine *e);
/* Sends a frame on `conn`, counting bytes into `m` (may be NULL); with
 * close_after the connection closes once the frame is out. Returns the
 * encoded size, or a negative MIG_E*. */
int mig__engine_send(mig_engine *e, uint64_t conn, const mig__frame *f,
		     struct mig_migration *m, bool close_after);
/* A connection to the peer engine at `url`: an existing one if up or
 * connecting, else a new one. Returns 0 and the id, or a negative MIG_E*. */
int mig__engine_peer_conn(mig_engine *e, const char *url, uint64_t *conn);
mig__conn_rec *mig__engine_conn(mig_engine *e, uint64_t id);
/* Frees a record already unlinked from e->conns (or the whole list at the
 * end of the engine). */
void mig__conn_rec_free(mig__conn_rec *c);
/* Test hook (white-box tests only). */
void mig__engine_set_fault(mig_engine *e, enum mig__fault_point point,
			   enum mig__fault_action action, unsigned count);
/* Should the frame at `point` fire a fault? Consumes one count. */
enum mig__fault_action mig__engine_fault_at(mig_engine *e, enum mig__fault_point point);

/* engine_migration.c */
void mig__migration_unref(struct mig_migration *m);

/* users.c */
int mig__users_init(mig__users *u);
void mig__users_destroy(mig__users *u);
mig__user *mig__users_find(mig__users *u, const char *id);
int mig__users_insert(mig__users *u, const char *id, mig_user_state state,
		      mig__user **out);
void mig__users_remove(mig__users *u, const char *id);
/* Fills uc[] and ucp[] with one entry per state that has users (how many
 * users are in it), for Heartbeat and StatusReply; returns the number of
 * entries filled. Caller holds e->lock. */
size_t mig__users_count_states(const mig__users *u, Migwire__UserCount uc[MIG_USER_PARKED + 1],
			       Migwire__UserCount *ucp[MIG_USER_PARKED + 1]);

/* handoff.c */
/* Creates a source migration (phase NEW) and wakes dispatch. */
int mig__handoff_start(mig_engine *e, const char *user, const char *url,
		       uint64_t ctl_conn, uint32_t ctl_request, struct mig_migration **out);
void mig__handoff_on_frame(mig_engine *e, uint64_t conn, const mig__frame *f,
			   size_t bytes);
void mig__handoff_on_conn_down(mig_engine *e, uint64_t conn, int error,
			       const char *reason);
/* Starts NEW migrations, applies cancels, fires deadlines, forgets old
 * outcomes. Returns the earliest next deadline (0 = none). */
uint64_t mig__handoff_tick(mig_engine *e, uint64_t now);
/* The running (or just-finished, until the tick ends) migration `mid`, or
 * NULL; once retired, a migration is only in the outcome memory:
 * mig__outcomes_find(&e->outcomes, mid). */
struct mig_migration *mig__handoff_find(mig_engine *e, const char *mid);
/* Counts the bytes of a frame about a retired migration, and of the answer
 * (`sent`: mig__engine_send()'s result, negative if nothing went out), into
 * the metrics' totals. */
void mig__handoff_count_retired(mig_engine *e, uint64_t received, int sent);

/* session.c: the session channel (clients' reconnect helpers). */
#define MIG__SESSION_TTL_DEFAULT_S 600u
#define MIG__SESSION_TTL_MAX_S 3600u
#define MIG__SESSION_NONCES_MAX 100000u
int mig__session_init(mig_engine *e);
/* The key of session tokens, derived at its first use; NULL if that fails
 * (MIG_ESYSTEM for the caller). Thread: any, with or without e->lock. */
const mig__session_key *mig__session_key_get(mig_engine *e);
void mig__session_destroy(mig_engine *e);
void mig__session_on_frame(mig_engine *e, uint64_t conn, const mig__frame *f);
/* Source, after COMMITTED: sends every client attached as m->user a
 * Redirect to the destination (a fresh token for it) and closes them. */
void mig__session_redirect(mig_engine *e, struct mig_migration *m);
/* mig_user_remove(): closes the clients attached as `user`. */
void mig__session_user_left(mig_engine *e, const char *user);
/* Sends fresh resume tokens and forgets expired nonces. Returns the next
 * deadline (0 = none). */
uint64_t mig__session_tick(mig_engine *e, uint64_t now);

/* control.c */
void mig__control_on_frame(mig_engine *e, uint64_t conn, const mig__frame *f);
/* Called for every event: sends it to subscribers and to the control
 * request that started the migration; answers that request at the end. */
void mig__control_publish(mig_engine *e, const mig_event *ev,
			  struct mig_migration *m);

/* metrics.c (with the engine lock) */
/* Counts an event about to be emitted. */
void mig__metrics_on_event(mig_engine *e, mig_event_type type, const struct mig_migration *m);
/* Bytes sent and received by every migration since the engine started. */
void mig__metrics_bytes(mig_engine *e, uint64_t *sent, uint64_t *received);
/* The source's phase name ("begin", "precopy", ...) or the destination's
 * ("accepted", ...). */
const char *mig__phase_name(const struct mig_migration *m);
/* Without the lock (it takes it): the Prometheus text for GET /metrics,
 * allocated with mig__malloc; NULL on no memory. ctx is the engine. */
char *mig__metrics_render(void *ctx, size_t *len);

#endif
