/* A small application model for the integration tests: per-user state in two
 * light domains ("progress" v1, "history" v3) with deterministic bytes, the
 * six application hooks with counters, an event recorder and a log recorder.
 *
 * Hooks and callbacks never assert (they may run on a runner thread, where a
 * cmocka failure cannot unwind): anything unexpected is counted in
 * `violations` (first one described in `violation`) and the app_check_*
 * helpers, called on the test's thread, assert. */
#ifndef MIG_TEST_APP_MODEL_H
#define MIG_TEST_APP_MODEL_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "migrate/migrate.h"

#define APP_NUSERS 32
#define APP_NDOM 2
#define APP_MAX_EVENTS 64
#define APP_MAX_LOGS 256

/* Domain names and the versions registered by default. */
extern const char *const app_domain_name[APP_NDOM];
extern const uint32_t app_domain_version[APP_NDOM];

struct app_user {
	bool present; /* the app holds state for this user */
	bool active;  /* the app serves it */
	bool paused;
	uint8_t *dom[APP_NDOM];
	size_t len[APP_NDOM];
	uint32_t merged_version[APP_NDOM];
	int paused_n, resumed, released, incoming, activated, dropped, merges;
};

struct app_event {
	mig_event_type type;
	char mid[40];
	char user[136];
	int error;
	char reason[256];
};

struct app {
	const char *name;
	pthread_mutex_t lock; /* guards events, logs and the fields below */
	struct app_user users[APP_NUSERS];
	/* Merge of this user index returns fail_merge_rc (-1: never). */
	int fail_merge_user;
	int fail_merge_rc;
	int violations;
	char violation[256];
	struct app_event events[APP_MAX_EVENTS];
	int nevents;
	char *logs[APP_MAX_LOGS];
	int nlogs;
	/* Called after an event is recorded (e.g. to cancel from a callback). */
	void (*event_hook)(mig_engine *e, const mig_event *ev, void *arg);
	void *event_hook_arg;
};

/* Engine configuration; zero means "the default". */
typedef struct app_engine_cfg {
	const char *id;
	const void *secret; /* NULL: TEST_SECRET */
	size_t secret_len;
	size_t max_frame_bytes;
	unsigned peer_timeout_ms;
	/* Per domain: 0 registers the default version, a positive value that
	 * version, a negative value leaves the domain unregistered. */
	int version[APP_NDOM];
	/* Record log lines at this level and above (0: none recorded). */
	mig_log_level log_level;
	bool record_logs;
	/* Session channel: the app's client URL (NULL: none), and a fixed
	 * listening port (0: ephemeral). */
	const char *app_url;
	int listen_port;
	unsigned session_token_ttl_s;
} app_engine_cfg;

void app_init(struct app *a, const char *name);
void app_free(struct app *a);

/* A started engine running this app's hooks, domains, event and log
 * recorders. Asserts on failure. */
mig_engine *app_engine_new(struct app *a, const app_engine_cfg *cfg);

/* "user-%03d". */
const char *app_uid(int i, char buf[32]);

/* Length and bytes of user i's domain d as created by app_add_user(.., tag). */
size_t app_state_len(int i, int d, unsigned tag);
void app_state_bytes(int i, int d, unsigned tag, uint8_t *out);

/* Adds user i to `e` and gives the app its state, tagged `tag` (so copies
 * added independently on two engines differ). Asserts. */
void app_add_user(struct app *a, mig_engine *e, int i, unsigned tag);

/* Asserts: user i is ACTIVE on e, the app serves it (present, active, not
 * paused) and holds exactly the bytes of `tag`. */
void app_check_holds(struct app *a, mig_engine *e, int i, unsigned tag);
/* Asserts: user i is ABSENT on e and the app holds nothing for it. */
void app_check_absent(struct app *a, mig_engine *e, int i);
/* Asserts no hook or callback saw anything unexpected. */
void app_check_no_violations(struct app *a);

/* A snapshot of every user's engine state and app state. */
typedef struct app_snapshot {
	mig_user_state state[APP_NUSERS];
	bool present[APP_NUSERS];
	bool active[APP_NUSERS];
	uint64_t hash[APP_NUSERS];
	size_t count;
} app_snapshot;
void app_snapshot_take(struct app *a, mig_engine *e, app_snapshot *s);
/* Asserts nothing in the snapshot changed. */
void app_snapshot_check(struct app *a, mig_engine *e, const app_snapshot *s);

/* Events recorded for `user` (NULL: any) of `type`; the last one is copied
 * into *out if out is not NULL. Returns how many. */
int app_events(struct app *a, mig_event_type type, const char *user, struct app_event *out);
void app_events_clear(struct app *a);
/* True if a recorded log line contains `needle`. */
bool app_log_contains(struct app *a, const char *needle);

#endif
