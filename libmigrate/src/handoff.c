/* The two-phase handoff, common part: migration records, events, sending,
 * timers, and retiring finished migrations to the outcome memory
 * (outcome.c), which answers for them from then on. The source's steps are
 * in handoff_src.c, the destination's in handoff_dst.c.
 *
 * Everything here runs inside dispatch with the engine lock held; the lock is
 * released only around application callbacks (see engine_int.h). */
#include <string.h>

#include "auth.h"
#include "handoff_int.h"
#include "xfer.h"

/* How long a finished migration's outcome is remembered, and how many. */
#define OUTCOME_TTL_US (10ull * 60 * 1000000)
#define OUTCOME_MAX 10000

struct mig_migration *mig__handoff_find(mig_engine *e, const char *mid)
{
	for (struct mig_migration *m = e->migrations; m; m = m->next)
		if (strcmp(m->mid, mid) == 0)
			return m;
	return NULL;
}

void mig__handoff_count_retired(mig_engine *e, uint64_t received, int sent)
{
	e->metrics.forgotten_received += received;
	if (sent > 0)
		e->metrics.forgotten_sent += (uint64_t)sent;
}

void mig__handoff_free_all(mig_engine *e)
{
	mig__outcomes_destroy(&e->outcomes);
	struct mig_migration *m = e->migrations;
	while (m) {
		struct mig_migration *next = m->next;
		m->engine = NULL;
		mig__migration_unref(m);
		m = next;
	}
	e->migrations = NULL;
}

struct mig_migration *mig__handoff_new(mig_engine *e, const char *mid, const char *user,
				       const char *peer_url, bool outgoing)
{
	struct mig_migration *m = mig__calloc(1, sizeof(*m));
	if (!m)
		return NULL;
	m->user = mig__strdup(user);
	m->peer_url = mig__strdup(peer_url);
	if (!m->user || !m->peer_url) {
		mig__free(m->user);
		mig__free(m->peer_url);
		mig__free(m);
		return NULL;
	}
	atomic_init(&m->refs, 1);
	m->engine = e;
	mig__strlcpy(m->mid, mid, sizeof(m->mid));
	m->outgoing = outgoing;
	m->state = MIG_MIGRATION_RUNNING;
	m->started_us = mig__now_us();
	m->phase_started_us = m->started_us;
	m->next = e->migrations;
	e->migrations = m;
	e->nmigrations++;
	return m;
}

void mig__handoff_set_phase(struct mig_migration *m, enum mig__phase phase, uint64_t deadline)
{
	m->phase = phase;
	m->phase_started_us = mig__now_us();
	m->deadline_us = deadline;
	m->retries = 0;
	if (m->outgoing)
		m->progress_pending = true; /* PROGRESS with the new phase, from the tick */
}

uint64_t mig__handoff_timeout_us(const mig_engine *e)
{
	return (uint64_t)e->peer_timeout_ms * 1000u;
}

/* Exponential backoff for retries: 50 ms doubling, at most 2 s. */
uint64_t mig__handoff_backoff_us(struct mig_migration *m)
{
	unsigned k = m->retries < 6 ? m->retries : 6;
	m->retries++;
	uint64_t us = 50000ull << k;
	return us > 2000000u ? 2000000u : us;
}

void mig__handoff_finish(mig_engine *e, struct mig_migration *m, mig_migration_state state,
			 int error, const char *reason)
{
	m->phase = MIG__DONE;
	m->state = state;
	m->error = error;
	mig__strlcpy(m->reason, reason ? reason : "", sizeof(m->reason));
	m->ended_us = mig__now_us();
	m->deadline_us = 0;
	mig__user *u = mig__users_find(&e->users, m->user);
	if (u && u->migration == m)
		u->migration = NULL;
}

void mig__handoff_emit(mig_engine *e, mig_event_type type, struct mig_migration *m)
{
	char mid[MIG__MID_LEN + 1], user[MIG__USER_MAX + 1], reason[MIG__REASON_MAX];
	char *peer = mig__strdup(m->peer_url);
	mig__strlcpy(mid, m->mid, sizeof(mid));
	mig__strlcpy(user, m->user, sizeof(user));
	mig__strlcpy(reason, m->reason, sizeof(reason));
	mig_event ev = {
		.type = type,
		.mid = mid,
		.user = user,
		.peer_url = peer ? peer : "",
		.error = m->error,
		.reason = reason,
		.bytes_sent = m->bytes_sent,
		.bytes_received = m->bytes_received,
		.duration_us = (m->ended_us ? m->ended_us : mig__now_us()) - m->started_us,
		.downtime_us = m->downtime_us,
		.rounds = m->rounds,
		.phase = m->outgoing ? mig__phase_name(m) : "",
		.time_us = mig__wall_us(),
	};
	mig__metrics_on_event(e, type, m);
	mig__control_publish(e, &ev, m);
	mig__engine_log(e, type == MIG_EVENT_PROGRESS ? MIG_LOG_DEBUG : MIG_LOG_INFO,
			"migration %s user %s: %s%s%s", mid, user,
			type == MIG_EVENT_STARTED     ? "started"
			: type == MIG_EVENT_PREPARED  ? "prepared"
			: type == MIG_EVENT_COMMITTED ? "committed"
			: type == MIG_EVENT_ABORTED   ? "aborted"
			: type == MIG_EVENT_INCOMING  ? "incoming"
			: type == MIG_EVENT_ACTIVATED ? "activated"
			: type == MIG_EVENT_PROGRESS  ? ev.phase
						      : "dropped",
			reason[0] ? ": " : "", reason);
	if (e->on_event) {
		mig_event_fn fn = e->on_event;
		void *ud = e->user_data;
		mig__engine_unlock_for_app(e);
		fn(e, &ev, ud);
		mig__engine_relock(e);
	}
	mig__free(peer);
}

/* Returns the connection to use for `m`'s peer, connecting if needed. */
static int peer_conn(mig_engine *e, struct mig_migration *m, uint64_t *conn)
{
	if (m->conn && mig__engine_conn(e, m->conn)) {
		*conn = m->conn;
		return 0;
	}
	int rc = mig__engine_peer_conn(e, m->peer_url, conn);
	if (!rc)
		m->conn = *conn;
	return rc;
}

int mig__handoff_send(mig_engine *e, struct mig_migration *m, const mig__frame *f,
		      enum mig__fault_point point)
{
	uint64_t conn;
	int rc = peer_conn(e, m, &conn);
	if (rc) {
		mig__engine_log(e, MIG_LOG_WARN, "migration %s: cannot reach %s: %s", m->mid,
				m->peer_url, mig_strerror(rc));
		return rc;
	}
	switch (mig__engine_fault_at(e, point)) {
	case MIG__FAULT_DROP_BEFORE:
		mig__engine_log(e, MIG_LOG_INFO, "fault: dropping the link instead of sending %s",
				mig__wire_body_name(f));
		mig__transport_close(e->transport, conn, 0, "fault injected");
		return 0;
	case MIG__FAULT_DROP_AFTER:
		mig__engine_log(e, MIG_LOG_INFO, "fault: dropping the link after sending %s",
				mig__wire_body_name(f));
		rc = mig__engine_send(e, conn, f, m, true);
		return rc < 0 ? rc : 0;
	default:
		rc = mig__engine_send(e, conn, f, m, false);
		return rc < 0 ? rc : 0;
	}
}

void mig__handoff_reply(mig_engine *e, uint64_t conn, const mig__frame *f,
			struct mig_migration *m)
{
	mig__engine_send(e, conn, f, m, false);
}

void mig__handoff_reply_outcome(mig_engine *e, uint64_t conn, const char *mid,
				Migwire__OutcomeState state)
{
	Migwire__Outcome o = MIGWIRE__OUTCOME__INIT;
	o.mid = (char *)mid;
	o.state = state;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_OUTCOME;
	f.outcome = &o;
	mig__handoff_reply(e, conn, &f, NULL);
}

/* What this engine knows of `mid` (for OUTCOME_QUERY, and for COMMIT/ABORT
 * of a migration it has no running record of). */
Migwire__OutcomeState mig__handoff_outcome_of(mig_engine *e, const char *mid, const char *user)
{
	struct mig_migration *m = mig__handoff_find(e, mid);
	if (m) {
		if (m->phase == MIG__DONE)
			return m->state == MIG_MIGRATION_COMMITTED
				       ? MIGWIRE__OUTCOME_STATE__OUTCOME_COMMITTED
				       : MIGWIRE__OUTCOME_STATE__OUTCOME_ABORTED;
		if (m->phase == MIG__SRC_COMMIT)
			return MIGWIRE__OUTCOME_STATE__OUTCOME_COMMITTED;
		return MIGWIRE__OUTCOME_STATE__OUTCOME_PENDING;
	}
	const mig__outcome *r = mig__outcomes_find(&e->outcomes, mid);
	if (r)
		return r->committed ? MIGWIRE__OUTCOME_STATE__OUTCOME_COMMITTED
				    : MIGWIRE__OUTCOME_STATE__OUTCOME_ABORTED;
	mig__user *u = mig__users_find(&e->users, user);
	return u && u->state == MIG_USER_ACTIVE ? MIGWIRE__OUTCOME_STATE__OUTCOME_UNKNOWN_USER_ACTIVE
						: MIGWIRE__OUTCOME_STATE__OUTCOME_UNKNOWN_USER_ABSENT;
}

/* ------------------------------------------------------------------ entry points */

void mig__handoff_on_frame(mig_engine *e, uint64_t conn, const mig__frame *f, size_t bytes)
{
	const char *mid = NULL;
	switch (f->body_case) {
	case MIGWIRE__FRAME__BODY_BEGIN:
		mig__dst_on_begin(e, conn, f->begin, bytes);
		return;
	case MIGWIRE__FRAME__BODY_PREPARE:
		mig__dst_on_prepare(e, conn, f->prepare, bytes);
		return;
	case MIGWIRE__FRAME__BODY_COMMIT:
		mig__dst_on_commit(e, conn, f->commit, bytes);
		return;
	case MIGWIRE__FRAME__BODY_ABORT:
		mig__dst_on_abort(e, conn, f->abort, bytes);
		return;
	case MIGWIRE__FRAME__BODY_OUTCOME_QUERY: {
		Migwire__OutcomeQuery *q = f->outcome_query;
		struct mig_migration *m = mig__handoff_find(e, q->mid);
		if (m)
			m->bytes_received += bytes;
		else if (mig__outcomes_find(&e->outcomes, q->mid))
			mig__handoff_count_retired(e, bytes, 0);
		mig__handoff_reply_outcome(e, conn, q->mid, mig__handoff_outcome_of(e, q->mid, q->user));
		return;
	}
	case MIGWIRE__FRAME__BODY_OUTCOME:
		mid = f->outcome->mid;
		break;
	case MIGWIRE__FRAME__BODY_ACCEPT:
		mid = f->accept->mid;
		break;
	case MIGWIRE__FRAME__BODY_REJECT:
		mid = f->reject->mid;
		break;
	case MIGWIRE__FRAME__BODY_PREPARED:
		mid = f->prepared->mid;
		break;
	case MIGWIRE__FRAME__BODY_FAILED:
		mid = f->failed->mid;
		break;
	case MIGWIRE__FRAME__BODY_COMMITTED:
		mid = f->committed->mid;
		break;
	case MIGWIRE__FRAME__BODY_ABORTED:
		mid = f->aborted->mid;
		break;
	case MIGWIRE__FRAME__BODY_FILE_STREAM:
	case MIGWIRE__FRAME__BODY_CHUNK:
	case MIGWIRE__FRAME__BODY_CREDIT:
	case MIGWIRE__FRAME__BODY_ROUND_END:
	case MIGWIRE__FRAME__BODY_ROUND_DONE: {
		mid = f->body_case == MIGWIRE__FRAME__BODY_FILE_STREAM ? f->file_stream->mid
		      : f->body_case == MIGWIRE__FRAME__BODY_CHUNK      ? f->chunk->mid
		      : f->body_case == MIGWIRE__FRAME__BODY_CREDIT     ? f->credit->mid
		      : f->body_case == MIGWIRE__FRAME__BODY_ROUND_END  ? f->round_end->mid
									 : f->round_done->mid;
		struct mig_migration *m = mig__handoff_find(e, mid);
		if (!m || !m->xfer || m->conn != conn)
			return; /* a finished migration's stragglers */
		m->bytes_received += bytes;
		mig__xfer_on_frame(e, m, f, bytes);
		return;
	}
	default:
		mig__engine_log(e, MIG_LOG_WARN, "peer connection %llu: unexpected %s frame",
				(unsigned long long)conn, mig__wire_body_name(f));
		mig__transport_close(e->transport, conn, 1008, "unexpected frame on the peer channel");
		return;
	}
	struct mig_migration *m = mig__handoff_find(e, mid);
	if (!m) {
		/* A late answer about a migration that ended, or none at all. */
		bool ended = mig__outcomes_find(&e->outcomes, mid) != NULL;
		if (ended)
			mig__handoff_count_retired(e, bytes, 0);
		mig__engine_log(e, MIG_LOG_INFO, "%s for %s migration %s ignored",
				mig__wire_body_name(f), ended ? "finished" : "unknown", mid);
		return;
	}
	m->bytes_received += bytes;
	if (f->body_case == MIGWIRE__FRAME__BODY_OUTCOME && !m->outgoing) {
		mig__dst_on_outcome(e, m, f->outcome->state);
		return;
	}
	if (!m->outgoing) {
		mig__engine_log(e, MIG_LOG_WARN, "%s for incoming migration %s ignored",
				mig__wire_body_name(f), mid);
		return;
	}
	m->conn = conn;
	mig__src_on_frame(e, m, f);
}

void mig__handoff_on_conn_down(mig_engine *e, uint64_t conn, int error, const char *reason)
{
	for (struct mig_migration *m = e->migrations; m; m = m->next) {
		if (m->conn != conn || m->phase == MIG__DONE)
			continue;
		m->conn = 0;
		if (m->outgoing)
			mig__src_on_link_down(e, m, error, reason);
		else
			mig__dst_on_link_down(e, m, error, reason);
	}
}

/* Moves finished migrations from the running list to the outcome memory
 * (a slim record each; the full record goes, or lives on only as long as
 * a handle the app holds), and forgets outcomes past their time or beyond
 * the cap. */
static void retire(mig_engine *e, uint64_t now)
{
	for (struct mig_migration **pp = &e->migrations; *pp;) {
		struct mig_migration *m = *pp;
		if (m->phase != MIG__DONE) {
			pp = &m->next;
			continue;
		}
		mig__outcome_in in = {
			.mid = m->mid,
			.outgoing = m->outgoing,
			.committed = m->state == MIG_MIGRATION_COMMITTED,
			.error = m->error,
			.ended_us = m->ended_us,
			.user = m->user,
			.dest_engine_id = m->peer_engine_id,
			.dest_app_url = m->peer_app_url,
			/* The redirect falls back to the URL the source used. */
			.dest_session_url = m->peer_session_url && *m->peer_session_url
						    ? m->peer_session_url
						    : m->peer_url,
		};
		int rc = mig__outcomes_add(&e->outcomes, &in);
		if (rc == MIG_ENOMEM) {
			pp = &m->next; /* kept in full; the next tick tries again */
			continue;
		}
		if (rc)
			mig__engine_log(e, MIG_LOG_ERROR, "migration %s: outcome not kept: %s",
					m->mid, mig_strerror(rc));
		*pp = m->next;
		e->nmigrations--;
		/* Byte totals of finished migrations live on in the metrics. */
		e->metrics.forgotten_sent += m->bytes_sent;
		e->metrics.forgotten_received += m->bytes_received;
		m->next = NULL;
		m->engine = NULL;
		mig__migration_unref(m);
	}
	mig__outcomes_expire(&e->outcomes, now, OUTCOME_TTL_US, OUTCOME_MAX);
}

/* Sends the PROGRESS events owed, each migration at most once per
 * MIG__PROGRESS_INTERVAL_US; returns when the next one is due (0 = none). */
static uint64_t flush_progress(mig_engine *e)
{
	uint64_t next = 0;
	for (struct mig_migration *m = e->migrations; m; m = m->next) {
		if (!m->progress_pending)
			continue;
		if (m->phase == MIG__DONE || !m->outgoing) {
			m->progress_pending = false; /* the final event said it all */
			continue;
		}
		uint64_t now = mig__now_us();
		uint64_t due = m->progress_last_us ? m->progress_last_us + MIG__PROGRESS_INTERVAL_US : 0;
		if (now < due) {
			if (!next || due < next)
				next = due;
			continue;
		}
		m->progress_pending = false;
		/* File data the workers sent so far, for a bar that moves. */
		m->bytes_sent += mig__xfer_collect_sent(m);
		if (m->progress_last_us && m->progress_phase == m->phase &&
		    m->progress_rounds == m->rounds && m->progress_bytes == m->bytes_sent)
			continue; /* nothing new to say */
		m->progress_last_us = now;
		m->progress_phase = m->phase;
		m->progress_rounds = m->rounds;
		m->progress_bytes = m->bytes_sent;
		mig__handoff_emit(e, MIG_EVENT_PROGRESS, m);
	}
	return next;
}

uint64_t mig__handoff_tick(mig_engine *e, uint64_t now)
{
	for (struct mig_migration *m = e->migrations; m; m = m->next) {
		if (m->phase == MIG__DONE)
			continue;
		if (m->outgoing)
			mig__src_tick(e, m, mig__now_us());
		else
			mig__dst_tick(e, m, mig__now_us());
	}
	uint64_t next = flush_progress(e);
	retire(e, now);
	for (struct mig_migration *m = e->migrations; m; m = m->next)
		if (m->phase != MIG__DONE && m->deadline_us &&
		    (!next || m->deadline_us < next))
			next = m->deadline_us;
	return next;
}
