/* Announce channel, engine side (see announce.h and docs/ORCHESTRATOR.md). */
#include <stdio.h>
#include <string.h>

#include "announce.h"
#include "auth.h"
#include "engine_int.h"

#define BACKOFF_MIN_MS 250u
#define BACKOFF_MAX_MS 10000u
#define HEARTBEAT_DEFAULT_MS 1000u

struct mig__announce {
	char *url;
	unsigned heartbeat_ms;
	uint64_t conn;     /* 0: not connected nor connecting */
	bool up;           /* authenticated; heartbeats flow */
	bool was_up;       /* the last connection got as far as UP */
	uint64_t seq;      /* last heartbeat sent on this connection */
	uint64_t next_us;  /* next connect attempt (conn == 0) or heartbeat */
	unsigned backoff_ms;
	unsigned failures; /* consecutive failed attempts, for the log */
};

int mig__announce_new(struct mig__announce **out, const char *url,
		      unsigned heartbeat_ms, char *err, size_t err_len)
{
	*out = NULL;
	if (!url || !*url)
		return 0;
	bool tls;
	char host[256], path[256];
	int port;
	if (mig__url_parse(url, &tls, host, sizeof(host), &port, path, sizeof(path)) != 0) {
		snprintf(err, err_len, "orchestrator_url \"%.200s\" is not a ws:// or wss:// URL",
			 url);
		return MIG_EINVAL;
	}
	if (!heartbeat_ms)
		heartbeat_ms = HEARTBEAT_DEFAULT_MS;
	if (heartbeat_ms < 10 || heartbeat_ms > 3600000) {
		snprintf(err, err_len, "heartbeat_ms %u is outside 10..3600000", heartbeat_ms);
		return MIG_EINVAL;
	}
	struct mig__announce *a = mig__calloc(1, sizeof(*a));
	if (!a || !(a->url = mig__strdup(url))) {
		mig__free(a);
		return MIG_ENOMEM;
	}
	a->heartbeat_ms = heartbeat_ms;
	a->backoff_ms = BACKOFF_MIN_MS;
	*out = a;
	return 0;
}

void mig__announce_free(struct mig__announce *a)
{
	if (!a)
		return;
	mig__free(a->url);
	mig__free(a);
}

/* The wait before the next attempt: the current backoff with up to 25 %
 * jitter either way, so engines restarted together do not retry in step. */
static void schedule_retry(struct mig__announce *a, uint64_t now)
{
	uint16_t r = 0;
	(void)mig__random(&r, sizeof(r));
	uint64_t ms = a->backoff_ms;
	ms = ms * 3 / 4 + (ms / 2) * r / 65535u;
	a->next_us = now + ms * 1000u;
	a->backoff_ms = a->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : a->backoff_ms * 2;
}

static void send_announce(mig_engine *e, struct mig__announce *a)
{
	Migwire__Announce an = MIGWIRE__ANNOUNCE__INIT;
	an.engine_id = e->engine_id;
	an.url = e->advertised_url;
	an.app_url = e->app_url;
	an.library_version = (char *)mig_version();
	an.heartbeat_ms = a->heartbeat_ms;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_ANNOUNCE;
	f.announce = &an;
	mig__engine_send(e, a->conn, &f, NULL, false);
}

static void send_heartbeat(mig_engine *e, struct mig__announce *a, uint64_t now)
{
	Migwire__UserCount uc[MIG_USER_PARKED + 1];
	Migwire__UserCount *ucp[MIG_USER_PARKED + 1];
	size_t nu = mig__users_count_states(&e->users, uc, ucp);
	uint32_t running = 0;
	for (struct mig_migration *m = e->migrations; m; m = m->next)
		if (m->phase != MIG__DONE)
			running++;
	Migwire__Heartbeat hb = MIGWIRE__HEARTBEAT__INIT;
	hb.seq = ++a->seq;
	hb.n_users = nu;
	hb.users = ucp;
	hb.has_migrations = true;
	hb.migrations = running;
	hb.has_uptime_us = true;
	hb.uptime_us = now - e->metrics.started_mono_us;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_HEARTBEAT;
	f.heartbeat = &hb;
	mig__engine_send(e, a->conn, &f, NULL, false);
}

void mig__announce_on_event(mig_engine *e, const mig__tev *ev)
{
	struct mig__announce *a = e->announce;
	if (!a || ev->conn != a->conn)
		return; /* not ours (or raced with its DOWN) */
	uint64_t now = mig__now_us();
	switch (ev->type) {
	case MIG__TEV_UP:
		a->up = true;
		a->was_up = true;
		a->seq = 0;
		a->failures = 0;
		a->backoff_ms = BACKOFF_MIN_MS;
		mig__engine_log(e, MIG_LOG_INFO, "announced to orchestrator %s", a->url);
		send_announce(e, a);
		send_heartbeat(e, a, now);
		a->next_us = now + (uint64_t)a->heartbeat_ms * 1000u;
		break;
	case MIG__TEV_DOWN:
		/* Loud once per outage; repeated failures while it stays down
		 * go to the debug level. */
		mig__engine_log(e, a->was_up || a->failures == 0 ? MIG_LOG_WARN : MIG_LOG_DEBUG,
				"orchestrator %s: %s; retrying", a->url,
				ev->reason[0] ? ev->reason : mig_strerror(ev->error));
		a->failures++;
		a->conn = 0;
		a->up = false;
		a->was_up = false;
		schedule_retry(a, now);
		break;
	case MIG__TEV_FRAME:
		/* The orchestrator sends nothing on this channel. */
		mig__engine_log(e, MIG_LOG_WARN, "orchestrator %s sent an unexpected %s; closing",
				a->url, mig__wire_body_name(ev->frame));
		mig__transport_close(e->transport, a->conn, 1008, "unexpected frame");
		break;
	default:
		break;
	}
}

uint64_t mig__announce_tick(mig_engine *e, uint64_t now)
{
	struct mig__announce *a = e->announce;
	if (!a || !e->transport)
		return 0;
	if (!a->conn) {
		if (now < a->next_us)
			return a->next_us;
		int64_t id = mig__transport_connect(e->transport, a->url,
						    MIGWIRE__CHANNEL__CHANNEL_ANNOUNCE);
		if (id < 0) {
			mig__engine_log(e, MIG_LOG_WARN, "orchestrator %s: cannot connect: %s",
					a->url, mig_strerror((int)id));
			schedule_retry(a, now);
			return a->next_us;
		}
		a->conn = (uint64_t)id;
		a->up = false;
		return 0; /* its UP or DOWN comes as an event */
	}
	if (!a->up)
		return 0;
	if (now >= a->next_us) {
		send_heartbeat(e, a, now);
		/* Keep the cadence; after a long stall start afresh. */
		a->next_us += (uint64_t)a->heartbeat_ms * 1000u;
		if (a->next_us <= now)
			a->next_us = now + (uint64_t)a->heartbeat_ms * 1000u;
	}
	return a->next_us;
}
