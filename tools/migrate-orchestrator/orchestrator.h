/* migrate-orchestrator: state and functions shared by its modules.
 *
 *   main.c      options, start-up, the main loop and housekeeping, shutdown
 *   registry.c  the SQLite registry: schema, queries, health, what engines
 *               announce, what workers report; the JSON documents
 *   workers.c   the result queue, the poller thread, migration threads
 *   http.c      the HTTP API, the dashboard's files and its WebSocket
 *
 * Threads: main (libwebsockets HTTP service, SQLite, housekeeping every
 * 100 ms), the transport's I/O thread (engines port), the poller, and one
 * thread per migration in flight. Only the main thread touches SQLite and
 * libwebsockets' HTTP context; worker threads hand results over through
 * `results` and wake it with lws_cancel_service(). docs/ORCHESTRATOR.md
 * describes running it. */
#ifndef MIG_ORCHESTRATOR_H
#define MIG_ORCHESTRATOR_H

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include <libwebsockets.h>
#include <sqlite3.h>

#include <migrate/control.h>

#include "transport.h"

#define MAX_BODY 4096          /* POST bodies; larger ones get 413 */
#define MAX_JOBS 16            /* migrations in flight at once */
#define HOUSEKEEPING_MS 100
#define CTL_TIMEOUT_MS 2000    /* poller: an engine that does not answer */
#define MIGRATE_TIMEOUT_MS 120000

#ifndef ORCH_STATIC_DIR
#define ORCH_STATIC_DIR "/usr/share/libmigrate/orchestrator"
#endif

/* ------------------------------------------------------------------ state */

/* An authenticated connection on the engines port. */
struct aconn {
	struct aconn *next;
	uint64_t conn;
	char *engine_id;  /* the id the handshake named */
	bool announced;
};

/* What worker threads hand to the main thread. */
enum result_type { RES_USERS, RES_USERS_FAILED, RES_EVENT, RES_DONE, RES_CANCEL };

struct user_entry {
	char *user;
	mig_user_state state;
};

struct result {
	struct result *next;
	enum result_type type;
	char *engine_id;          /* RES_USERS*, the engine polled */
	struct user_entry *users; /* RES_USERS */
	size_t nusers, cap;
	struct job *job;          /* RES_EVENT, RES_DONE */
	mig_event ev;             /* RES_EVENT: strings below, not in ev */
	char mid[64];
	char phase[32];
	int rc;                   /* RES_DONE, RES_CANCEL */
	int64_t migration_id;     /* RES_CANCEL (its job may be gone by then) */
	char reason[256];
};

/* One migration asked for over the API. */
struct job {
	struct job *next;
	struct orch *o;
	int64_t id;       /* row in `migrations` */
	char *user, *src_url, *dst_url;
	pthread_t thread;
	bool done;        /* RES_DONE handled: the thread has ended or is ending */
	/* POST /api/migrations/ID/cancel. A second thread asks the source
	 * engine to cancel by migration id (cancel_target), joined with the
	 * job. Asked before the engine named the migration, cancel_wanted
	 * waits for its STARTED event, and cancel_early tells the job's thread
	 * not to ask for the migration at all if it has not yet. */
	bool cancel_wanted;
	atomic_bool cancel_early;
	bool cancelling;
	char *cancel_target;
	pthread_t canceller;
};

/* Engines the poller asks for users (main builds it, the poller copies it). */
struct target {
	char *id, *url;
};

/* The poller's own control connections. */
struct pconn {
	struct pconn *next;
	char *id, *url;
	mig_ctl *ctl;
};

struct orch {
	sqlite3 *db;
	mig__transport *tp;
	mig__evq events;
	struct lws_context *ctx;
	const struct lws_protocols *ws_protocol;
	lws_sorted_usec_list_t sul;
	char static_dir[PATH_MAX];
	char token[256];
	size_t token_len;
	uint8_t secret[1024];
	size_t secret_len;
	/* TLS: both ports serve with tls_cert/tls_key when set; tls_ca
	 * verifies the engines this orchestrator connects to (wss://) and is
	 * its client certificate's CA for engines that require one. */
	const char *tls_cert, *tls_key, *tls_ca;
	unsigned misses;      /* heartbeats missed before unhealthy */
	unsigned gone_misses; /* and before gone, once disconnected */
	unsigned poll_ms;
	unsigned keep_migrations; /* finished migrations kept, newest first */
	struct aconn *aconns;
	struct job *jobs;
	unsigned njobs;

	pthread_mutex_t lock; /* guards results, targets, poll_now, stopping */
	pthread_cond_t cond;
	struct result *res_head, *res_tail;
	struct target *targets;
	size_t ntargets;
	bool poll_now, stopping;
	pthread_t poller;
	bool poller_started;

	char *state;          /* the dashboard's JSON, LWS_PRE bytes ahead */
	size_t state_len;
	uint64_t state_gen;
	bool dirty;           /* the registry changed since the last push */
};

/* ------------------------------------------------------------------ registry.c */

/* Main thread only, like everything in registry.c. */
extern const char registry_schema[];
extern const char sql_engines[];
extern const char sql_users[];
extern const char sql_migrations[];

uint64_t wall_ms(void);
/* Runs `sql` with text ('t') / integer ('i', int64_t) parameters, one type
 * letter per parameter. Returns SQLITE_DONE or an error (logged). */
int db_exec(struct orch *o, const char *sql, const char *types, ...);
/* The first column of the first row as a malloc'd string; NULL for no
 * row, a NULL value or an error. */
char *db_text(struct orch *o, const char *sql, const char *types, ...);
/* {"key": "value"}, escaped by SQLite; malloc'd. */
char *json_string(struct orch *o, const char *key, const char *value);
void update_health(struct orch *o);
void update_targets(struct orch *o);
/* {engines, users, migrations, misses}, malloc'd, or NULL. */
char *registry_document(struct orch *o);
void on_transport_event(struct orch *o, mig__tev *ev);
void aconn_remove(struct orch *o, uint64_t conn);
void on_users(struct orch *o, struct result *r);
void on_job_event(struct orch *o, struct result *r);
void on_job_ended(struct orch *o, struct result *r);
/* A cancel request's answer from the source engine; a refusal is kept as
 * a `cancel_refused` event of the migration. */
void on_cancel_answer(struct orch *o, struct result *r);
/* Records an event of migration `id` that this orchestrator originates
 * (cancel_requested, cancel_refused), at the migration's current phase. */
void record_event(struct orch *o, int64_t id, const char *type, const char *error);
/* Forgets finished migrations (and their events) beyond the newest
 * keep_migrations; at start and after every migration that ends. */
void prune_history(struct orch *o);

/* ------------------------------------------------------------------ workers.c */

void result_free(struct result *r);
/* Any thread: queue `r` for the main thread and wake it. */
void post_result(struct orch *o, struct result *r);
/* Main thread: apply every queued result. */
void drain_results(struct orch *o);
/* Any thread: ask the poller to go round now. */
void poll_soon(struct orch *o);
void *poller_main(void *arg);
/* Main thread: start the migration thread of a job already in the
 * registry. Returns 0 or an errno value. */
int job_start(struct job *j);
/* Main thread: ask the source engine to cancel migration `mid` of j.
 * Returns 0 or an errno value. */
int cancel_start(struct job *j, const char *mid);

/* ------------------------------------------------------------------ http.c */

extern const struct lws_protocols orch_protocols[];
/* Rebuilds the dashboard document and pushes it if it changed. */
void push_state(struct orch *o);

#endif
