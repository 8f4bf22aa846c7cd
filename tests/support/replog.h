/* What the failover tests (test_failover, test_failover_files) keep of an
 * engine that a test app runs as primary or standby: its replica events and
 * its log lines, and waits on them while the engines are dispatched. */
#ifndef MIG_TEST_REPLOG_H
#define MIG_TEST_REPLOG_H

#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "migrate/migrate.h"
#include "migrate/replicate.h"

#define REPLOG_EVENTS 512
#define REPLOG_LINES 64

/* One replica event as the handler was given it. */
struct rev {
	mig_replica_event_type type;
	char user[64];
	uint64_t epoch, seq, bytes, lag;
	int error;
	char reason[256];
};

/* Filled from the engine's threads; read with `lock` held. Events and
 * lines past the capacity are not kept. */
struct replog {
	pthread_mutex_t lock;
	struct rev ev[REPLOG_EVENTS];
	int nev;
	char lines[REPLOG_LINES][256];
	int nlines;
};

void replog_init(struct replog *l);
void replog_destroy(struct replog *l);

/* test_engine_options() for engine `id`, its warnings and errors kept in
 * `l` (on_log, with `l` as the engine's user_data). */
void replog_engine_options(mig_engine_options *o, const char *id, struct replog *l);
/* A replica event handler (mig_replica_set_handler) for `ud`, a struct
 * replog: keeps the event. */
void replog_on_replica(mig_engine *e, const mig_replica_event *ev, void *ud);

/* The events of type `t`; the last of them in *last if there is one and
 * last is not NULL. */
int replog_count(struct replog *l, mig_replica_event_type t, struct rev *last);
/* Dispatches the engines until `l` has `count` events of type `t`, or ms
 * pass; whether it has them. */
bool replog_wait(mig_engine **es, size_t n, struct replog *l, mig_replica_event_type t, int count,
		 int ms);
/* Whether a kept log line holds `needle`. */
bool replog_logged(struct replog *l, const char *needle);
/* Dispatches the engines until a kept log line holds `needle`, or ms pass;
 * whether one does. */
bool replog_wait_logged(mig_engine **es, size_t n, struct replog *l, const char *needle, int ms);

#endif
