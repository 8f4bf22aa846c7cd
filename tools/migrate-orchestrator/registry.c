/* migrate-orchestrator: the registry (SQLite), what engines announce on
 * the engines port, and what the worker threads report. Main thread only.
 * See orchestrator.h. */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "orchestrator.h"

uint64_t wall_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ------------------------------------------------------------------ registry (SQLite) */

const char registry_schema[] =
	"CREATE TABLE IF NOT EXISTS engines("
	" id TEXT PRIMARY KEY, url TEXT NOT NULL, app_url TEXT, version TEXT,"
	" heartbeat_ms INTEGER NOT NULL, first_seen_ms INTEGER, last_heartbeat_ms INTEGER,"
	" health TEXT NOT NULL DEFAULT 'healthy', connected INTEGER NOT NULL DEFAULT 0,"
	" conn INTEGER, users INTEGER DEFAULT 0, migrations INTEGER DEFAULT 0,"
	" uptime_ms INTEGER DEFAULT 0, users_polled_ms INTEGER);"
	"CREATE TABLE IF NOT EXISTS users("
	" user TEXT NOT NULL, engine_id TEXT NOT NULL, state TEXT NOT NULL,"
	" PRIMARY KEY(user, engine_id));"
	"CREATE TABLE IF NOT EXISTS migrations("
	" id INTEGER PRIMARY KEY AUTOINCREMENT, mid TEXT, user TEXT NOT NULL,"
	" source TEXT NOT NULL, destination TEXT NOT NULL, state TEXT NOT NULL,"
	" phase TEXT, error TEXT, requested_ms INTEGER, started_ms INTEGER,"
	" ended_ms INTEGER, bytes_sent INTEGER DEFAULT 0, rounds INTEGER DEFAULT 0,"
	" duration_us INTEGER, downtime_us INTEGER);"
	"CREATE TABLE IF NOT EXISTS migration_events("
	" migration_id INTEGER NOT NULL, time_ms INTEGER, type TEXT, phase TEXT,"
	" bytes_sent INTEGER, rounds INTEGER, error TEXT);"
	"CREATE INDEX IF NOT EXISTS migration_events_by_id ON migration_events(migration_id);"
	/* A restart: every engine must announce again, and whatever was in
	 * flight ended without this orchestrator watching. */
	"UPDATE engines SET connected = 0, conn = NULL, health = 'unhealthy';"
	"UPDATE migrations SET state = 'unknown', error = 'orchestrator restarted'"
	" WHERE state IN ('requested', 'running');";

int db_exec(struct orch *o, const char *sql, const char *types, ...)
{
	sqlite3_stmt *st;
	int rc = sqlite3_prepare_v2(o->db, sql, -1, &st, NULL);
	if (rc != SQLITE_OK) {
		fprintf(stderr, "migrate-orchestrator: sql: %s\n", sqlite3_errmsg(o->db));
		return rc;
	}
	va_list ap;
	va_start(ap, types);
	for (int i = 0; types && types[i]; i++) {
		if (types[i] == 't')
			sqlite3_bind_text(st, i + 1, va_arg(ap, const char *), -1, SQLITE_TRANSIENT);
		else
			sqlite3_bind_int64(st, i + 1, va_arg(ap, int64_t));
	}
	va_end(ap);
	while ((rc = sqlite3_step(st)) == SQLITE_ROW)
		;
	if (rc != SQLITE_DONE)
		fprintf(stderr, "migrate-orchestrator: sql: %s\n", sqlite3_errmsg(o->db));
	sqlite3_finalize(st);
	o->dirty = true;
	return rc;
}

char *db_text(struct orch *o, const char *sql, const char *types, ...)
{
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(o->db, sql, -1, &st, NULL) != SQLITE_OK) {
		fprintf(stderr, "migrate-orchestrator: sql: %s\n", sqlite3_errmsg(o->db));
		return NULL;
	}
	va_list ap;
	va_start(ap, types);
	for (int i = 0; types && types[i]; i++) {
		if (types[i] == 't')
			sqlite3_bind_text(st, i + 1, va_arg(ap, const char *), -1, SQLITE_TRANSIENT);
		else
			sqlite3_bind_int64(st, i + 1, va_arg(ap, int64_t));
	}
	va_end(ap);
	char *out = NULL;
	if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_type(st, 0) != SQLITE_NULL)
		out = strdup((const char *)sqlite3_column_text(st, 0));
	sqlite3_finalize(st);
	return out;
}

/* The API's JSON documents, built by SQLite's JSON functions (which do the
 * escaping). Subquery results are wrapped in json() so they nest as JSON. */
const char sql_engines[] =
	"SELECT json_group_array(json_object("
	" 'id', id, 'url', url, 'app_url', app_url, 'version', version,"
	" 'heartbeat_ms', heartbeat_ms, 'last_heartbeat_ms', last_heartbeat_ms,"
	" 'health', health, 'connected', json(CASE WHEN connected THEN 'true' ELSE 'false' END),"
	" 'users', users, 'migrations', migrations, 'uptime_ms', uptime_ms))"
	" FROM (SELECT * FROM engines ORDER BY id)";
const char sql_users[] =
	"SELECT json_group_array(json_object('user', user, 'engine', engine_id, 'state', state))"
	" FROM (SELECT * FROM users ORDER BY user, engine_id)";
const char sql_migrations[] =
	"SELECT json_group_array(json_object("
	" 'id', id, 'mid', mid, 'user', user, 'from', source, 'to', destination,"
	" 'state', state, 'phase', phase, 'error', error, 'requested_ms', requested_ms,"
	" 'started_ms', started_ms, 'ended_ms', ended_ms, 'bytes_sent', bytes_sent,"
	" 'rounds', rounds, 'duration_us', duration_us, 'downtime_us', downtime_us,"
	" 'events', json((SELECT json_group_array(json_object('time_ms', time_ms, 'type', type,"
	"   'phase', phase, 'bytes_sent', bytes_sent, 'rounds', rounds, 'error', error))"
	"   FROM (SELECT * FROM migration_events e WHERE e.migration_id = m.id"
	"         ORDER BY rowid LIMIT 50)))))"
	" FROM (SELECT * FROM migrations ORDER BY id DESC LIMIT 50) m";

char *json_string(struct orch *o, const char *key, const char *value)
{
	return db_text(o, "SELECT json_object(?1, ?2)", "tt", key, value);
}

/* Re-derives every engine's health from its link and last heartbeat:
 * healthy while connected and heard from within `misses` intervals;
 * unhealthy otherwise; gone once disconnected for `gone_misses` intervals
 * (its users are forgotten, the row stays as history). */
void update_health(struct orch *o)
{
	int64_t now = (int64_t)wall_ms();
	bool dirty = o->dirty;
	char *before = db_text(o, "SELECT group_concat(id || '=' || health) FROM engines", NULL);
	db_exec(o,
		"UPDATE engines SET health = CASE"
		" WHEN connected AND ?1 - last_heartbeat_ms <= ?2 * heartbeat_ms THEN 'healthy'"
		" WHEN NOT connected AND ?1 - last_heartbeat_ms > ?3 * heartbeat_ms THEN 'gone'"
		" ELSE 'unhealthy' END",
		"iii", now, (int64_t)o->misses, (int64_t)o->gone_misses);
	db_exec(o, "DELETE FROM users WHERE engine_id IN (SELECT id FROM engines WHERE health = 'gone')",
		NULL);
	char *after = db_text(o, "SELECT group_concat(id || '=' || health) FROM engines", NULL);
	bool changed = before && after && strcmp(before, after) != 0;
	if (changed)
		fprintf(stderr, "migrate-orchestrator: health: %s\n", after);
	o->dirty = dirty || changed;
	free(before);
	free(after);
}

/* ------------------------------------------------------------------ engines port */

static struct aconn *aconn_find(struct orch *o, uint64_t conn)
{
	for (struct aconn *a = o->aconns; a; a = a->next)
		if (a->conn == conn)
			return a;
	return NULL;
}

void aconn_remove(struct orch *o, uint64_t conn)
{
	for (struct aconn **pp = &o->aconns; *pp; pp = &(*pp)->next) {
		if ((*pp)->conn == conn) {
			struct aconn *a = *pp;
			*pp = a->next;
			free(a->engine_id);
			free(a);
			return;
		}
	}
}

static void on_announce(struct orch *o, struct aconn *a, const Migwire__Announce *an)
{
	if (strcmp(an->engine_id, a->engine_id) != 0) {
		fprintf(stderr,
			"migrate-orchestrator: connection %" PRIu64 " authenticated as \"%s\" "
			"but announced \"%s\"; closing\n",
			a->conn, a->engine_id, an->engine_id);
		mig__transport_close(o->tp, a->conn, 1008, "announced another engine id");
		return;
	}
	/* The same id announcing on a new link replaces the old one. */
	for (struct aconn *b = o->aconns; b; b = b->next)
		if (b != a && b->announced && strcmp(b->engine_id, a->engine_id) == 0) {
			b->announced = false;
			mig__transport_close(o->tp, b->conn, 1000, "replaced by a newer connection");
		}
	a->announced = true;
	int64_t now = (int64_t)wall_ms();
	db_exec(o,
		"INSERT INTO engines(id, url, app_url, version, heartbeat_ms, first_seen_ms,"
		" last_heartbeat_ms, health, connected, conn) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?6,"
		" 'healthy', 1, ?7) ON CONFLICT(id) DO UPDATE SET url = ?2, app_url = ?3,"
		" version = ?4, heartbeat_ms = ?5, last_heartbeat_ms = ?6, health = 'healthy',"
		" connected = 1, conn = ?7",
		"ttttiii", an->engine_id, an->url, an->app_url ? an->app_url : "",
		an->library_version ? an->library_version : "", (int64_t)an->heartbeat_ms, now,
		(int64_t)a->conn);
	fprintf(stderr, "migrate-orchestrator: engine %s announced (%s)\n", an->engine_id,
		an->url);
	poll_soon(o);
}

static void on_heartbeat(struct orch *o, struct aconn *a, const Migwire__Heartbeat *hb)
{
	if (!a->announced) {
		mig__transport_close(o->tp, a->conn, 1008, "heartbeat before announce");
		return;
	}
	uint64_t users = 0;
	for (size_t i = 0; i < hb->n_users; i++)
		users += hb->users[i]->count;
	db_exec(o,
		"UPDATE engines SET last_heartbeat_ms = ?1, users = ?2, migrations = ?3,"
		" uptime_ms = ?4 WHERE id = ?5 AND conn = ?6",
		"iiiiti", (int64_t)wall_ms(), (int64_t)users, (int64_t)hb->migrations,
		(int64_t)(hb->uptime_us / 1000u), a->engine_id, (int64_t)a->conn);
}

void on_transport_event(struct orch *o, mig__tev *ev)
{
	struct aconn *a;
	switch (ev->type) {
	case MIG__TEV_UP:
		if (!ev->peer_engine_id || !*ev->peer_engine_id) {
			mig__transport_close(o->tp, ev->conn, 1008, "an engine id is required");
			break;
		}
		a = calloc(1, sizeof(*a));
		if (!a || !(a->engine_id = strdup(ev->peer_engine_id))) {
			free(a);
			mig__transport_close(o->tp, ev->conn, 1011, "out of memory");
			break;
		}
		a->conn = ev->conn;
		a->next = o->aconns;
		o->aconns = a;
		break;
	case MIG__TEV_FRAME:
		a = aconn_find(o, ev->conn);
		if (!a)
			break;
		if (ev->frame->body_case == MIGWIRE__FRAME__BODY_ANNOUNCE)
			on_announce(o, a, ev->frame->announce);
		else if (ev->frame->body_case == MIGWIRE__FRAME__BODY_HEARTBEAT)
			on_heartbeat(o, a, ev->frame->heartbeat);
		else
			mig__transport_close(o->tp, a->conn, 1008, "unexpected frame");
		break;
	case MIG__TEV_DOWN:
		a = aconn_find(o, ev->conn);
		if (a && a->announced) {
			fprintf(stderr, "migrate-orchestrator: engine %s disconnected: %s\n",
				a->engine_id, ev->reason[0] ? ev->reason : "closed");
			db_exec(o, "UPDATE engines SET connected = 0, conn = NULL"
				   " WHERE id = ?1 AND conn = ?2",
				"ti", a->engine_id, (int64_t)a->conn);
		}
		aconn_remove(o, ev->conn);
		break;
	case MIG__TEV_LOG:
		fprintf(stderr, "migrate-orchestrator: %s\n", ev->line);
		break;
	default:
		break;
	}
}

/* ------------------------------------------------------------------ worker results */

void on_users(struct orch *o, struct result *r)
{
	if (r->type == RES_USERS_FAILED) {
		/* The engine's health tells the rest; keep the last list. */
		return;
	}
	db_exec(o, "BEGIN", NULL);
	db_exec(o, "DELETE FROM users WHERE engine_id = ?1", "t", r->engine_id);
	for (size_t i = 0; i < r->nusers; i++)
		db_exec(o, "INSERT OR REPLACE INTO users(user, engine_id, state) VALUES(?1, ?2, ?3)",
			"ttt", r->users[i].user, r->engine_id, mig_user_state_name(r->users[i].state));
	db_exec(o, "UPDATE engines SET users_polled_ms = ?1 WHERE id = ?2", "it",
		(int64_t)wall_ms(), r->engine_id);
	db_exec(o, "COMMIT", NULL);
}

void on_job_event(struct orch *o, struct result *r)
{
	const mig_event *ev = &r->ev;
	const char *type = mig_event_type_name(ev->type);
	const char *err = ev->error ? mig_err_name(ev->error) : NULL;
	db_exec(o,
		"INSERT INTO migration_events(migration_id, time_ms, type, phase, bytes_sent,"
		" rounds, error) VALUES(?1, ?2, ?3, ?4, ?5, ?6, ?7)",
		"iittiit", r->job->id, (int64_t)(ev->time_us / 1000u), type, r->phase,
		(int64_t)ev->bytes_sent, (int64_t)ev->rounds, err);
	db_exec(o,
		"UPDATE migrations SET mid = ?2, state = 'running', phase = ?3, bytes_sent = ?4,"
		" rounds = ?5, duration_us = ?6,"
		" started_ms = coalesce(started_ms, ?7) WHERE id = ?1",
		"ittiiii", r->job->id, r->mid, r->phase[0] ? r->phase : type,
		(int64_t)ev->bytes_sent, (int64_t)ev->rounds, (int64_t)ev->duration_us,
		(int64_t)((ev->time_us > ev->duration_us ? ev->time_us - ev->duration_us : 0) /
			  1000u));
	/* A cancel asked for before the engine named the migration. */
	struct job *j = r->job;
	if (j->cancel_wanted && !j->cancelling && r->mid[0] && cancel_start(j, r->mid) != 0)
		record_event(o, j->id, "cancel_refused", "MIG_ESYSTEM");
}

/* The outcome of a migration this orchestrator ran. */
void on_job_ended(struct orch *o, struct result *r)
{
	struct job *j = r->job;
	const mig_event *f = &r->ev;
	if (r->rc == 0)
		db_exec(o,
			"UPDATE migrations SET state = 'committed', phase = 'done', ended_ms = ?2,"
			" bytes_sent = ?3, rounds = ?4, duration_us = ?5, downtime_us = ?6"
			" WHERE id = ?1",
			"iiiiii", j->id, (int64_t)wall_ms(), (int64_t)f->bytes_sent,
			(int64_t)f->rounds, (int64_t)f->duration_us, (int64_t)f->downtime_us);
	else
		db_exec(o,
			"UPDATE migrations SET state = 'failed', phase = 'done', ended_ms = ?2,"
			" error = ?3 WHERE id = ?1",
			"iit", j->id, (int64_t)wall_ms(), r->reason);
	fprintf(stderr, "migrate-orchestrator: migration %" PRId64 " of %s: %s\n", j->id, j->user,
		r->rc == 0 ? "committed" : r->reason);
	prune_history(o);
}

/* An event of migration `id` from this orchestrator (not from an engine):
 * now, at the migration's current phase. */
void record_event(struct orch *o, int64_t id, const char *type, const char *error)
{
	db_exec(o,
		"INSERT INTO migration_events(migration_id, time_ms, type, phase, bytes_sent,"
		" rounds, error) SELECT ?1, ?2, ?3, phase, bytes_sent, rounds, ?4"
		" FROM migrations WHERE id = ?1",
		"iitt", id, (int64_t)wall_ms(), type, error);
	o->dirty = true;
}

void on_cancel_answer(struct orch *o, struct result *r)
{
	if (r->rc)
		record_event(o, r->migration_id, "cancel_refused", mig_err_name(r->rc));
	fprintf(stderr, "migrate-orchestrator: migration %" PRId64 ": cancel %s: %s\n",
		r->migration_id, r->rc == 0 ? "done by the engine" : "refused", r->reason);
}

void prune_history(struct orch *o)
{
	/* Rows older than the newest keep_migrations, unless still running. */
#define ORCH_PRUNED                                                                    \
	"SELECT id FROM migrations WHERE state NOT IN ('requested', 'running') AND id <=" \
	" (SELECT id FROM migrations ORDER BY id DESC LIMIT 1 OFFSET ?1)"
	db_exec(o, "BEGIN", NULL);
	db_exec(o, "DELETE FROM migration_events WHERE migration_id IN (" ORCH_PRUNED ")", "i",
		(int64_t)o->keep_migrations);
	db_exec(o, "DELETE FROM migrations WHERE id IN (" ORCH_PRUNED ")", "i",
		(int64_t)o->keep_migrations);
	db_exec(o, "COMMIT", NULL);
#undef ORCH_PRUNED
}

void update_targets(struct orch *o)
{
	sqlite3_stmt *st;
	if (sqlite3_prepare_v2(o->db, "SELECT id, url FROM engines WHERE health != 'gone'", -1,
			       &st, NULL) != SQLITE_OK)
		return;
	struct target *t = NULL;
	size_t n = 0;
	while (sqlite3_step(st) == SQLITE_ROW) {
		struct target *bigger = realloc(t, (n + 1) * sizeof(*t));
		if (!bigger)
			break;
		t = bigger;
		t[n].id = strdup((const char *)sqlite3_column_text(st, 0));
		t[n].url = strdup((const char *)sqlite3_column_text(st, 1));
		n++;
	}
	sqlite3_finalize(st);
	pthread_mutex_lock(&o->lock);
	struct target *old = o->targets;
	size_t nold = o->ntargets;
	o->targets = t;
	o->ntargets = n;
	pthread_mutex_unlock(&o->lock);
	for (size_t i = 0; i < nold; i++) {
		free(old[i].id);
		free(old[i].url);
	}
	free(old);
}

char *registry_document(struct orch *o)
{
	char *e = db_text(o, sql_engines, NULL);
	char *u = db_text(o, sql_users, NULL);
	char *m = db_text(o, sql_migrations, NULL);
	char *doc = NULL;
	if (e && u && m)
		doc = db_text(o,
			      "SELECT json_object('engines', json(?1), 'users', json(?2),"
			      " 'migrations', json(?3), 'misses', ?4)",
			      "ttti", e, u, m, (int64_t)o->misses);
	free(e);
	free(u);
	free(m);
	return doc;
}
