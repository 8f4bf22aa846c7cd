/* See replog.h. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "replog.h"
#include "support.h"

void replog_init(struct replog *l)
{
	memset(l, 0, sizeof(*l));
	pthread_mutex_init(&l->lock, NULL);
}

void replog_destroy(struct replog *l)
{
	pthread_mutex_destroy(&l->lock);
}

static void on_log(mig_engine *e, mig_log_level level, const char *line, void *ud)
{
	(void)e;
	(void)level;
	struct replog *l = ud;
	pthread_mutex_lock(&l->lock);
	if (l->nlines < REPLOG_LINES)
		snprintf(l->lines[l->nlines++], sizeof(l->lines[0]), "%s", line);
	pthread_mutex_unlock(&l->lock);
}

void replog_engine_options(mig_engine_options *o, const char *id, struct replog *l)
{
	test_engine_options(o, id);
	o->on_log = on_log;
	o->log_level = MIG_LOG_WARN;
	o->user_data = l;
}

void replog_on_replica(mig_engine *e, const mig_replica_event *ev, void *ud)
{
	(void)e;
	struct replog *l = ud;
	pthread_mutex_lock(&l->lock);
	if (l->nev < REPLOG_EVENTS) {
		struct rev *r = &l->ev[l->nev++];
		r->type = ev->type;
		snprintf(r->user, sizeof(r->user), "%s", ev->user);
		r->epoch = ev->epoch;
		r->seq = ev->seq;
		r->bytes = ev->bytes;
		r->lag = ev->lag_us;
		r->error = ev->error;
		snprintf(r->reason, sizeof(r->reason), "%s", ev->reason);
	}
	pthread_mutex_unlock(&l->lock);
}

int replog_count(struct replog *l, mig_replica_event_type t, struct rev *last)
{
	pthread_mutex_lock(&l->lock);
	int n = 0;
	for (int i = 0; i < l->nev; i++)
		if (l->ev[i].type == t) {
			n++;
			if (last)
				*last = l->ev[i];
		}
	pthread_mutex_unlock(&l->lock);
	return n;
}

struct evwait {
	struct replog *l;
	mig_replica_event_type type;
	int n;
};

static bool ev_reached(void *arg)
{
	struct evwait *w = arg;
	return replog_count(w->l, w->type, NULL) >= w->n;
}

bool replog_wait(mig_engine **es, size_t n, struct replog *l, mig_replica_event_type t, int count,
		 int ms)
{
	struct evwait w = {l, t, count};
	return test_dispatch_until(es, n, ev_reached, &w, ms);
}

bool replog_logged(struct replog *l, const char *needle)
{
	pthread_mutex_lock(&l->lock);
	bool found = false;
	for (int i = 0; i < l->nlines && !found; i++)
		found = strstr(l->lines[i], needle) != NULL;
	pthread_mutex_unlock(&l->lock);
	return found;
}

struct linewait {
	struct replog *l;
	const char *needle;
};

static bool line_seen(void *arg)
{
	struct linewait *w = arg;
	return replog_logged(w->l, w->needle);
}

bool replog_wait_logged(mig_engine **es, size_t n, struct replog *l, const char *needle, int ms)
{
	struct linewait w = {l, needle};
	return test_dispatch_until(es, n, line_seen, &w, ms);
}
