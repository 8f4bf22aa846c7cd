/* The control channel, engine side: orchestrators ask for migrations, list
 * users, subscribe to events, read the status and cancel migrations. Runs
 * inside dispatch with the engine lock. */
#include <stdio.h>
#include <string.h>

#include "control_int.h"
#include "engine_int.h"
#include "replica.h"

void mig__event_to_wire(const mig_event *ev, Migwire__Event *w)
{
	migwire__event__init(w);
	w->type = (Migwire__EventType)ev->type;
	w->mid = (char *)ev->mid;
	w->user = (char *)ev->user;
	w->peer_url = (char *)(ev->peer_url ? ev->peer_url : "");
	w->has_code = true;
	w->code = ev->error;
	w->reason = (char *)(ev->reason ? ev->reason : "");
	w->has_bytes_sent = true;
	w->bytes_sent = ev->bytes_sent;
	w->has_bytes_received = true;
	w->bytes_received = ev->bytes_received;
	w->has_duration_us = true;
	w->duration_us = ev->duration_us;
	w->has_downtime_us = true;
	w->downtime_us = ev->downtime_us;
	w->has_time_us = true;
	w->time_us = ev->time_us ? ev->time_us : mig__wall_us();
	w->phase = (char *)(ev->phase ? ev->phase : "");
	w->has_rounds = true;
	w->rounds = ev->rounds;
}

void mig__event_from_wire(const Migwire__Event *w, mig_event *ev)
{
	memset(ev, 0, sizeof(*ev));
	ev->type = (mig_event_type)w->type;
	ev->mid = w->mid;
	ev->user = w->user;
	ev->peer_url = w->peer_url ? w->peer_url : "";
	ev->error = w->has_code ? w->code : 0;
	ev->reason = w->reason ? w->reason : "";
	ev->bytes_sent = w->bytes_sent;
	ev->bytes_received = w->bytes_received;
	ev->duration_us = w->duration_us;
	ev->downtime_us = w->downtime_us;
	ev->rounds = w->rounds;
	ev->phase = w->phase ? w->phase : "";
	ev->time_us = w->time_us;
}

static void reply(mig_engine *e, uint64_t conn, uint32_t request_id, int code, const char *reason,
		  Migwire__Event *event)
{
	Migwire__Reply r = MIGWIRE__REPLY__INIT;
	r.request_id = request_id;
	r.code = code;
	r.reason = (char *)(reason ? reason : "");
	r.event = event;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_REPLY;
	f.reply = &r;
	mig__engine_send(e, conn, &f, NULL, false);
}

static void list_users(mig_engine *e, uint64_t conn, uint32_t request_id)
{
	size_t n = e->users.count, i = 0;
	Migwire__UserEntry *entries = mig__calloc(n ? n : 1, sizeof(*entries));
	Migwire__UserEntry **ptrs = mig__calloc(n ? n : 1, sizeof(*ptrs));
	if (!entries || !ptrs) {
		mig__free(entries);
		mig__free(ptrs);
		reply(e, conn, request_id, MIG_ENOMEM, "out of memory", NULL);
		return;
	}
	for (size_t b = 0; b < e->users.nbuckets; b++) {
		for (mig__user *u = e->users.buckets[b]; u; u = u->next) {
			migwire__user_entry__init(&entries[i]);
			entries[i].user = u->id;
			entries[i].state = (Migwire__UserState)u->state;
			ptrs[i] = &entries[i];
			i++;
		}
	}
	Migwire__ListUsersReply r = MIGWIRE__LIST_USERS_REPLY__INIT;
	r.request_id = request_id;
	r.n_users = i;
	r.users = ptrs;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_USERS;
	f.users = &r;
	if (mig__engine_send(e, conn, &f, NULL, false) == MIG_ETOOBIG)
		reply(e, conn, request_id, MIG_ETOOBIG, "user list over the frame cap", NULL);
	mig__free(entries);
	mig__free(ptrs);
}

/* StatusRequest: identity, users by state, migrations in flight, totals. */
static void status(mig_engine *e, uint64_t conn, uint32_t request_id)
{
	size_t nm = 0;
	for (struct mig_migration *m = e->migrations; m; m = m->next)
		nm += m->phase != MIG__DONE;
	Migwire__MigrationStatus *ms = mig__calloc(nm ? nm : 1, sizeof(*ms));
	Migwire__MigrationStatus **mp = mig__calloc(nm ? nm : 1, sizeof(*mp));
	if (!ms || !mp) {
		mig__free(ms);
		mig__free(mp);
		reply(e, conn, request_id, MIG_ENOMEM, "out of memory", NULL);
		return;
	}
	uint64_t now = mig__now_us(), wall = mig__wall_us();
	size_t i = 0;
	for (struct mig_migration *m = e->migrations; m && i < nm; m = m->next) {
		if (m->phase == MIG__DONE)
			continue;
		Migwire__MigrationStatus *s = &ms[i];
		migwire__migration_status__init(s);
		s->mid = m->mid;
		s->user = m->user;
		s->peer_url = m->peer_url;
		s->role = m->outgoing ? MIGWIRE__MIGRATION_ROLE__ROLE_SOURCE
				      : MIGWIRE__MIGRATION_ROLE__ROLE_DESTINATION;
		s->phase = (char *)mig__phase_name(m);
		s->has_rounds = true;
		s->rounds = m->rounds;
		s->has_bytes_sent = true;
		s->bytes_sent = m->bytes_sent;
		s->has_bytes_received = true;
		s->bytes_received = m->bytes_received;
		s->has_duration_us = true;
		s->duration_us = now > m->started_us ? now - m->started_us : 0;
		s->has_started_us = true;
		s->started_us = wall - s->duration_us;
		s->has_parked = true;
		s->parked = m->parked;
		mp[i] = s;
		i++;
	}
	Migwire__UserCount uc[MIG_USER_PARKED + 1];
	Migwire__UserCount *ucp[MIG_USER_PARKED + 1];
	size_t nu = mig__users_count_states(&e->users, uc, ucp);
	Migwire__StatusReply r = MIGWIRE__STATUS_REPLY__INIT;
	r.request_id = request_id;
	r.engine_id = e->engine_id;
	r.url = e->advertised_url;
	r.protocol_version = MIG_PROTOCOL_VERSION;
	r.library_version = (char *)mig_version();
	r.n_users = nu;
	r.users = ucp;
	r.n_migrations = i;
	r.migrations = mp;
	r.has_committed_out = r.has_aborted_out = r.has_committed_in = r.has_aborted_in = true;
	r.committed_out = e->metrics.committed[0];
	r.aborted_out = e->metrics.aborted[0];
	r.committed_in = e->metrics.committed[1];
	r.aborted_in = e->metrics.aborted[1];
	r.has_bytes_sent = r.has_bytes_received = true;
	mig__metrics_bytes(e, &r.bytes_sent, &r.bytes_received);
	r.has_uptime_us = true;
	r.uptime_us = now - e->metrics.started_mono_us;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_STATUS;
	f.status = &r;
	if (mig__engine_send(e, conn, &f, NULL, false) == MIG_ETOOBIG)
		reply(e, conn, request_id, MIG_ETOOBIG, "status over the frame cap", NULL);
	mig__free(ms);
	mig__free(mp);
}

/* CancelRequest: like mig_migration_cancel(), for a migration named by its
 * id or by the user it moves. The end arrives as the migration's ABORTED. */
static void cancel(mig_engine *e, uint64_t conn, const Migwire__CancelRequest *r)
{
	char why[MIG__REASON_MAX];
	struct mig_migration *m = NULL;
	if (r->mid && *r->mid) {
		m = mig__handoff_find(e, r->mid);
		if (!m && mig__outcomes_find(&e->outcomes, r->mid)) {
			snprintf(why, sizeof(why), "migration %s has ended", r->mid);
			reply(e, conn, r->request_id, MIG_ESTATE, why, NULL);
			return;
		}
		if (!m) {
			/* A user id may look like a migration id. */
			mig__user *u = mig__users_find(&e->users, r->mid);
			m = u ? u->migration : NULL;
		}
		if (!m) {
			snprintf(why, sizeof(why), "no migration %s on this engine", r->mid);
			reply(e, conn, r->request_id, MIG_EUNKNOWN, why, NULL);
			return;
		}
	} else {
		mig__user *u = mig__users_find(&e->users, r->user);
		if (!u) {
			snprintf(why, sizeof(why), "no user %s on this engine", r->user);
			reply(e, conn, r->request_id, MIG_ENOUSER, why, NULL);
			return;
		}
		m = u->migration;
		if (!m) {
			snprintf(why, sizeof(why), "user %s is not migrating", r->user);
			reply(e, conn, r->request_id, MIG_ESTATE, why, NULL);
			return;
		}
	}
	if (!m->outgoing) {
		snprintf(why, sizeof(why),
			 "migration %s brings user %s here; cancel it at its source %s", m->mid,
			 m->user, m->peer_url);
		reply(e, conn, r->request_id, MIG_ESTATE, why, NULL);
		return;
	}
	if (m->state != MIG_MIGRATION_RUNNING || m->phase == MIG__DONE) {
		snprintf(why, sizeof(why), "migration %s of user %s has ended", m->mid, m->user);
		reply(e, conn, r->request_id, MIG_ESTATE, why, NULL);
		return;
	}
	if (m->phase == MIG__SRC_COMMIT) {
		snprintf(why, sizeof(why),
			 "migration %s of user %s is past the commit decision; it completes", m->mid,
			 m->user);
		reply(e, conn, r->request_id, MIG_ESTATE, why, NULL);
		return;
	}
	m->cancel_requested = true; /* the tick at the end of this dispatch acts */
	snprintf(why, sizeof(why), "canceling migration %s of user %s", m->mid, m->user);
	reply(e, conn, r->request_id, 0, why, NULL);
}

void mig__control_on_frame(mig_engine *e, uint64_t conn, const mig__frame *f)
{
	mig__conn_rec *c = mig__engine_conn(e, conn);
	switch (f->body_case) {
	case MIGWIRE__FRAME__BODY_MIGRATE: {
		const Migwire__MigrateRequest *r = f->migrate;
		struct mig_migration *m = NULL;
		int rc = mig__handoff_start(e, r->user, r->destination_url, conn, r->request_id, &m);
		if (rc)
			reply(e, conn, r->request_id, rc, e->last_error, NULL);
		/* On success the reply comes when the migration ends; dispatch
		 * starts it right after this frame. */
		return;
	}
	case MIGWIRE__FRAME__BODY_LIST_USERS:
		list_users(e, conn, f->list_users->request_id);
		return;
	case MIGWIRE__FRAME__BODY_SUBSCRIBE:
		if (c)
			c->subscribed = true;
		reply(e, conn, f->subscribe->request_id, 0, "", NULL);
		return;
	case MIGWIRE__FRAME__BODY_STATUS_REQUEST:
		status(e, conn, f->status_request->request_id);
		return;
	case MIGWIRE__FRAME__BODY_CANCEL:
		cancel(e, conn, f->cancel);
		return;
	case MIGWIRE__FRAME__BODY_PROMOTE:
	case MIGWIRE__FRAME__BODY_REPLICATE: {
		/* Replication (replica.c): answered at once with the outcome. */
		char why[MIG__REASON_MAX] = "";
		uint32_t id = f->body_case == MIGWIRE__FRAME__BODY_PROMOTE ? f->promote->request_id
									  : f->replicate->request_id;
		int rc = mig__replica_control(e, f, why, sizeof(why));
		reply(e, conn, id, rc, why, NULL);
		if (!rc)
			mig__engine_wake(e);
		return;
	}
	default:
		mig__engine_log(e, MIG_LOG_WARN, "control connection %llu: unexpected %s frame",
				(unsigned long long)conn, mig__wire_body_name(f));
		mig__transport_close(e->transport, conn, 1008,
				     "unexpected frame on the control channel");
		return;
	}
}

void mig__control_publish(mig_engine *e, const mig_event *ev, struct mig_migration *m)
{
	Migwire__Event w;
	mig__event_to_wire(ev, &w);
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_EVENT;
	f.event = &w;
	bool requester_subscribed = false;
	for (mig__conn_rec *c = e->conns; c; c = c->next) {
		if (c->channel != MIGWIRE__CHANNEL__CHANNEL_CONTROL || !c->subscribed)
			continue;
		if (m && c->id == m->ctl_conn)
			requester_subscribed = true;
		mig__engine_send(e, c->id, &f, NULL, false);
	}
	if (!m || !m->ctl_conn || !mig__engine_conn(e, m->ctl_conn))
		return;
	bool final = ev->type == MIG_EVENT_COMMITTED || ev->type == MIG_EVENT_ABORTED;
	if (!final) {
		if (!requester_subscribed)
			mig__engine_send(e, m->ctl_conn, &f, NULL, false);
		return;
	}
	reply(e, m->ctl_conn, m->ctl_request, ev->error, ev->reason, &w);
	m->ctl_conn = 0;
}
