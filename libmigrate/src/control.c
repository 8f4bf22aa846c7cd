/* The control channel, engine side: orchestrators ask for migrations, list
 * users and subscribe to events. Runs inside dispatch with the engine lock. */
#include <string.h>

#include "control_int.h"
#include "engine_int.h"

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
	w->time_us = mig__wall_us();
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
