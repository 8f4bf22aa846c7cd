/* Engine counters: kept under the engine lock as events are emitted, read by
 * the control channel's status and rendered as Prometheus text (format
 * 0.0.4) for GET /metrics, which the transport serves on the engine's port.
 *
 * The endpoint is not authenticated (a scraper has no cluster secret): it
 * shows counts, byte totals and the engine id, never a user id. */
#include <stdio.h>
#include <string.h>

#include "engine_int.h"

/* Upper bounds of the downtime histogram's buckets, in microseconds. */
static const uint64_t downtime_le_us[MIG__DOWNTIME_BUCKETS] = {
	1000, 5000, 10000, 50000, 100000, 500000, 1000000, 5000000,
};
static const char *const downtime_le_text[MIG__DOWNTIME_BUCKETS] = {
	"0.001", "0.005", "0.01", "0.05", "0.1", "0.5", "1", "5",
};

const char *mig__phase_name(const struct mig_migration *m)
{
	switch (m->phase) {
	case MIG__SRC_NEW:
	case MIG__SRC_BEGIN_SENT:
		return "begin";
	case MIG__SRC_PRECOPY:
		return "precopy";
	case MIG__SRC_FINAL:
		return "final";
	case MIG__SRC_PREPARE_SENT:
		return "prepare";
	case MIG__SRC_COMMIT:
		return "commit";
	case MIG__DST_ACCEPTED:
		return "accepted";
	case MIG__DST_VERIFYING:
		return "verifying";
	case MIG__DST_PREPARED:
		return "prepared";
	case MIG__DST_INSTALLING:
		return "installing";
	case MIG__DONE:
	default:
		return "done";
	}
}

void mig__metrics_on_event(mig_engine *e, mig_event_type type, const struct mig_migration *m)
{
	mig__metrics *s = &e->metrics;
	switch (type) {
	case MIG_EVENT_STARTED:
		s->started[0]++;
		break;
	case MIG_EVENT_COMMITTED:
		s->committed[0]++;
		s->downtime_count++;
		s->downtime_sum_us += m->downtime_us;
		for (int i = 0; i < MIG__DOWNTIME_BUCKETS; i++)
			if (m->downtime_us <= downtime_le_us[i]) {
				s->downtime_le[i]++;
				break;
			}
		break;
	case MIG_EVENT_ABORTED:
		/* Canceled before it started: it never emitted STARTED, but
		 * started = committed + aborted + in flight must hold. */
		if (!m->emitted_started)
			s->started[0]++;
		s->aborted[0]++;
		break;
	case MIG_EVENT_INCOMING:
		s->started[1]++;
		break;
	case MIG_EVENT_ACTIVATED:
		s->committed[1]++;
		break;
	case MIG_EVENT_DROPPED:
		s->aborted[1]++;
		break;
	case MIG_EVENT_PROGRESS:
	default:
		break;
	}
}

void mig__metrics_bytes(mig_engine *e, uint64_t *sent, uint64_t *received)
{
	uint64_t s = e->metrics.forgotten_sent, r = e->metrics.forgotten_received;
	for (struct mig_migration *m = e->migrations; m; m = m->next) {
		s += m->bytes_sent;
		r += m->bytes_received;
	}
	*sent = s;
	*received = r;
}

/* ------------------------------------------------------------------ text */

typedef struct text {
	char *buf;
	size_t len;
	size_t cap;
	bool failed;
} text;

static void put(text *t, const char *fmt, ...) MIG__PRINTF(2, 3);

static void put(text *t, const char *fmt, ...)
{
	if (t->failed)
		return;
	for (;;) {
		va_list ap;
		va_start(ap, fmt);
		int n = vsnprintf(t->buf ? t->buf + t->len : NULL, t->buf ? t->cap - t->len : 0,
				  fmt, ap);
		va_end(ap);
		if (n < 0) {
			t->failed = true;
			return;
		}
		if (t->buf && (size_t)n < t->cap - t->len) {
			t->len += (size_t)n;
			return;
		}
		size_t cap = t->cap ? t->cap : 4096;
		while (cap - t->len <= (size_t)n)
			cap *= 2;
		char *p = mig__realloc(t->buf, cap);
		if (!p) {
			t->failed = true;
			return;
		}
		t->buf = p;
		t->cap = cap;
	}
}

static void head(text *t, const char *name, const char *type, const char *help)
{
	put(t, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value: backslash, double quote and newline escaped. */
static void put_label(text *t, const char *v)
{
	for (; *v; v++) {
		if (*v == '\\' || *v == '"')
			put(t, "\\%c", *v);
		else if (*v == '\n')
			put(t, "\\n");
		else
			put(t, "%c", *v);
	}
}

static const char *const role_names[2] = {"source", "destination"};

static void render(mig_engine *e, text *t)
{
	const mig__metrics *s = &e->metrics;
	uint64_t now = mig__now_us();

	head(t, "libmigrate_info", "gauge", "Engine identity, always 1.");
	put(t, "libmigrate_info{engine_id=\"");
	put_label(t, e->engine_id);
	put(t, "\",version=\"%s\",protocol=\"%d\"} 1\n", mig_version(), MIG_PROTOCOL_VERSION);

	head(t, "libmigrate_uptime_seconds", "gauge", "Seconds since the engine was created.");
	put(t, "libmigrate_uptime_seconds %.3f\n", (double)(now - s->started_mono_us) / 1e6);

	head(t, "libmigrate_migrations_started_total", "counter",
	     "Migrations started, by role (source: moving a user away; destination: receiving "
	     "one).");
	for (int r = 0; r < 2; r++)
		put(t, "libmigrate_migrations_started_total{role=\"%s\"} %llu\n", role_names[r],
		    (unsigned long long)s->started[r]);

	head(t, "libmigrate_migrations_total", "counter",
	     "Migrations ended, by role and outcome (committed: the user moved; aborted: it "
	     "stayed at the source).");
	for (int r = 0; r < 2; r++) {
		put(t, "libmigrate_migrations_total{role=\"%s\",outcome=\"committed\"} %llu\n",
		    role_names[r], (unsigned long long)s->committed[r]);
		put(t, "libmigrate_migrations_total{role=\"%s\",outcome=\"aborted\"} %llu\n",
		    role_names[r], (unsigned long long)s->aborted[r]);
	}

	uint64_t inflight[2] = {0, 0};
	for (struct mig_migration *m = e->migrations; m; m = m->next)
		if (m->phase != MIG__DONE)
			inflight[m->outgoing ? 0 : 1]++;
	head(t, "libmigrate_migrations_in_flight", "gauge", "Migrations running now, by role.");
	for (int r = 0; r < 2; r++)
		put(t, "libmigrate_migrations_in_flight{role=\"%s\"} %llu\n", role_names[r],
		    (unsigned long long)inflight[r]);

	uint64_t sent, received;
	mig__metrics_bytes(e, &sent, &received);
	head(t, "libmigrate_peer_bytes_sent_total", "counter",
	     "Bytes of migration messages sent to peer engines.");
	put(t, "libmigrate_peer_bytes_sent_total %llu\n", (unsigned long long)sent);
	head(t, "libmigrate_peer_bytes_received_total", "counter",
	     "Bytes of migration messages received from peer engines.");
	put(t, "libmigrate_peer_bytes_received_total %llu\n", (unsigned long long)received);

	uint64_t users[MIG_USER_PARKED + 1] = {0};
	for (size_t b = 0; b < e->users.nbuckets; b++)
		for (mig__user *u = e->users.buckets[b]; u; u = u->next)
			if ((unsigned)u->state <= MIG_USER_PARKED)
				users[u->state]++;
	head(t, "libmigrate_users", "gauge", "Users on this engine, by state.");
	for (int st = MIG_USER_ACTIVE; st <= MIG_USER_PARKED; st++)
		put(t, "libmigrate_users{state=\"%s\"} %llu\n",
		    mig_user_state_name((mig_user_state)st), (unsigned long long)users[st]);

	head(t, "libmigrate_file_rounds_total", "counter",
	     "File state rounds sent by this engine as a source (pre-copy and final).");
	put(t, "libmigrate_file_rounds_total %llu\n", (unsigned long long)s->file_rounds);

	head(t, "libmigrate_downtime_seconds", "histogram",
	     "Source: how long a user was paused, pause to COMMITTED, per committed migration.");
	uint64_t cum = 0;
	for (int i = 0; i < MIG__DOWNTIME_BUCKETS; i++) {
		cum += s->downtime_le[i];
		put(t, "libmigrate_downtime_seconds_bucket{le=\"%s\"} %llu\n", downtime_le_text[i],
		    (unsigned long long)cum);
	}
	put(t, "libmigrate_downtime_seconds_bucket{le=\"+Inf\"} %llu\n",
	    (unsigned long long)s->downtime_count);
	put(t, "libmigrate_downtime_seconds_sum %.6f\n", (double)s->downtime_sum_us / 1e6);
	put(t, "libmigrate_downtime_seconds_count %llu\n", (unsigned long long)s->downtime_count);

	uint64_t conns[4] = {0};
	for (mig__conn_rec *c = e->conns; c; c = c->next)
		if (c->channel >= 0 && c->channel < 4)
			conns[c->channel]++;
	head(t, "libmigrate_connections", "gauge", "Open WebSocket connections, by channel.");
	put(t, "libmigrate_connections{channel=\"peer\"} %llu\n",
	    (unsigned long long)conns[MIGWIRE__CHANNEL__CHANNEL_PEER]);
	put(t, "libmigrate_connections{channel=\"control\"} %llu\n",
	    (unsigned long long)conns[MIGWIRE__CHANNEL__CHANNEL_CONTROL]);
	put(t, "libmigrate_connections{channel=\"session\"} %llu\n",
	    (unsigned long long)conns[MIGWIRE__CHANNEL__CHANNEL_SESSION]);
}

char *mig__metrics_render(void *ctx, size_t *len)
{
	mig_engine *e = ctx;
	text t = {0};
	pthread_mutex_lock(&e->lock);
	render(e, &t);
	pthread_mutex_unlock(&e->lock);
	if (t.failed) {
		mig__free(t.buf);
		return NULL;
	}
	*len = t.len;
	return t.buf;
}
