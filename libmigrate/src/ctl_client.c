/* The control client (<migrate/control.h>): a blocking request/response
 * client over the authenticated control channel, on its own transport. */
#include <stdio.h>
#include <string.h>

#include "control_int.h"
#include "migrate/control.h"
#include "transport.h"

#define DEFAULT_TIMEOUT_MS 10000u
#define DEFAULT_MIGRATE_TIMEOUT_MS 60000u

struct mig_ctl {
	mig__transport *transport;
	mig__evq events;
	uint64_t conn;
	bool up;
	bool down;
	int down_error;
	mig__evq_item *backlog; /* events taken from the queue, not yet seen */
	unsigned timeout_ms;
	uint32_t next_request;
	size_t max_frame;
	char last_error[256];
};

static void set_error(mig_ctl *c, const char *fmt, ...) MIG__PRINTF(2, 3);

static void set_error(mig_ctl *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->last_error, sizeof(c->last_error), fmt, ap);
	va_end(ap);
}

/* The next transport event, oldest first; NULL at the deadline. Events are
 * taken from the queue in batches and kept in a backlog, in order. */
static mig__tev *next_event(mig_ctl *c, uint64_t deadline)
{
	for (;;) {
		if (c->backlog) {
			mig__evq_item *it = c->backlog;
			c->backlog = it->next;
			return (mig__tev *)it;
		}
		c->backlog = mig__evq_take_all(&c->events);
		if (c->backlog)
			continue;
		uint64_t now = mig__now_us();
		if (deadline && now >= deadline)
			return NULL;
		mig__evq_wait(&c->events, deadline ? (int)((deadline - now + 999) / 1000) : -1);
	}
}

/* Waits for the next frame on the connection. Returns 0 with *out set,
 * MIG_ETIMEDOUT, or the error the connection closed with. */
static int next_frame(mig_ctl *c, uint64_t deadline, mig__frame **out)
{
	*out = NULL;
	while (!c->down) {
		mig__tev *ev = next_event(c, deadline);
		if (!ev)
			return MIG_ETIMEDOUT;
		int rc = 1;
		if (ev->type == MIG__TEV_UP) {
			c->up = true;
		} else if (ev->type == MIG__TEV_DOWN) {
			c->down = true;
			c->down_error = ev->error ? ev->error : MIG_ECLOSED;
			set_error(c, "%s", ev->reason);
		} else if (ev->type == MIG__TEV_FRAME) {
			*out = ev->frame;
			ev->frame = NULL;
			rc = 0;
		}
		mig__tev_free(ev);
		if (rc == 0)
			return 0;
	}
	return c->down_error;
}

/* Waits until the connection is authenticated. */
static int wait_up(mig_ctl *c, uint64_t deadline)
{
	while (!c->up && !c->down) {
		mig__tev *ev = next_event(c, deadline);
		if (!ev)
			return MIG_ETIMEDOUT;
		if (ev->type == MIG__TEV_UP) {
			c->up = true;
		} else if (ev->type == MIG__TEV_DOWN) {
			c->down = true;
			c->down_error = ev->error ? ev->error : MIG_ECLOSED;
			set_error(c, "%s", ev->reason);
		}
		mig__tev_free(ev);
	}
	return c->up ? 0 : c->down_error;
}

static uint64_t deadline_after(unsigned ms)
{
	return mig__now_us() + (uint64_t)ms * 1000u;
}

MIG_EXPORT int mig_ctl_new(mig_ctl **out, const mig_ctl_options *o, char *errbuf, size_t errlen)
{
	if (errbuf && errlen)
		errbuf[0] = '\0';
	if (!out || !o || !o->url) {
		if (errbuf)
			snprintf(errbuf, errlen, "missing options or URL");
		return MIG_EINVAL;
	}
	*out = NULL;
	if (!o->allow_insecure && (!o->secret || o->secret_len < 16)) {
		if (errbuf)
			snprintf(errbuf, errlen, "a cluster secret of at least 16 bytes is required");
		return MIG_EINVAL;
	}
	mig_ctl *c = mig__calloc(1, sizeof(*c));
	if (!c)
		return MIG_ENOMEM;
	c->timeout_ms = o->timeout_ms ? o->timeout_ms : DEFAULT_TIMEOUT_MS;
	c->max_frame = 64u * 1024 * 1024;
	if (mig__evq_init(&c->events) != 0) {
		mig__free(c);
		return MIG_ESYSTEM;
	}
	mig__transport_cfg cfg;
	memset(&cfg, 0, sizeof(cfg));
	cfg.listen = false;
	cfg.tls_ca_file = o->tls_ca_file;
	cfg.tls_cert_file = o->tls_cert_file;
	cfg.tls_key_file = o->tls_key_file;
	cfg.secret = o->secret;
	cfg.secret_len = o->secret ? o->secret_len : 0;
	cfg.insecure = o->allow_insecure != 0;
	cfg.engine_id = "migratectl";
	cfg.max_frame = c->max_frame;
	cfg.events = &c->events;
	cfg.log_level = MIG_LOG_ERROR;
	cfg.name = "ctl";
	char err[200] = "";
	int rc = mig__transport_new(&c->transport, &cfg, err, sizeof(err));
	if (!rc)
		rc = mig__transport_start(c->transport);
	if (rc) {
		if (errbuf)
			snprintf(errbuf, errlen, "%s", err[0] ? err : mig_strerror(rc));
		mig_ctl_free(c);
		return rc;
	}
	int64_t id = mig__transport_connect(c->transport, o->url, MIGWIRE__CHANNEL__CHANNEL_CONTROL);
	if (id < 0) {
		if (errbuf)
			snprintf(errbuf, errlen, "invalid engine URL: %s", o->url);
		mig_ctl_free(c);
		return (int)id;
	}
	c->conn = (uint64_t)id;
	rc = wait_up(c, deadline_after(c->timeout_ms));
	if (rc) {
		if (rc == MIG_ETIMEDOUT)
			set_error(c, "no answer from %s within %u ms", o->url, c->timeout_ms);
		if (errbuf)
			snprintf(errbuf, errlen, "%s", c->last_error);
		mig_ctl_free(c);
		return rc;
	}
	*out = c;
	return 0;
}

MIG_EXPORT void mig_ctl_free(mig_ctl *c)
{
	if (!c)
		return;
	mig__transport_free(c->transport);
	while (c->backlog) {
		mig__evq_item *next = c->backlog->next;
		mig__tev_free_item(c->backlog);
		c->backlog = next;
	}
	mig__evq_destroy(&c->events, mig__tev_free_item);
	mig__free(c);
}

MIG_EXPORT const char *mig_ctl_last_error(const mig_ctl *c)
{
	return c ? c->last_error : "";
}

static int send_frame(mig_ctl *c, const mig__frame *f)
{
	mig__msg *msg = NULL;
	int rc = mig__wire_encode(f, 0, &msg);
	if (rc)
		return rc;
	mig__transport_send(c->transport, c->conn, msg);
	return 0;
}

static int reply_code(mig_ctl *c, const Migwire__Reply *r)
{
	if (r->code)
		set_error(c, "%s", r->reason && r->reason[0] ? r->reason : mig_strerror(r->code));
	return r->code;
}

MIG_EXPORT int mig_ctl_users(mig_ctl *c, void (*fn)(const char *, mig_user_state, void *),
			     void *ud)
{
	if (!c)
		return MIG_EINVAL;
	c->last_error[0] = '\0';
	Migwire__ListUsersRequest r = MIGWIRE__LIST_USERS_REQUEST__INIT;
	r.request_id = ++c->next_request;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_LIST_USERS;
	f.list_users = &r;
	int rc = send_frame(c, &f);
	if (rc)
		return rc;
	uint64_t deadline = deadline_after(c->timeout_ms);
	for (;;) {
		mig__frame *in = NULL;
		rc = next_frame(c, deadline, &in);
		if (rc)
			return rc;
		if (in->body_case == MIGWIRE__FRAME__BODY_USERS &&
		    in->users->request_id == r.request_id) {
			int n = (int)in->users->n_users;
			for (size_t i = 0; fn && i < in->users->n_users; i++)
				fn(in->users->users[i]->user,
				   (mig_user_state)in->users->users[i]->state, ud);
			mig__wire_free(in);
			return n;
		}
		if (in->body_case == MIGWIRE__FRAME__BODY_REPLY &&
		    in->reply->request_id == r.request_id) {
			rc = reply_code(c, in->reply);
			mig__wire_free(in);
			return rc ? rc : MIG_EPROTO;
		}
		mig__wire_free(in); /* an event for a subscription: not ours */
	}
}

/* Sends a request and waits for the frame answering it: a `kind` frame
 * whose request id is `id`, or a Reply with that id. Returns 0 with *out
 * set (the caller frees it), or a negative MIG_E*. */
static int await_answer(mig_ctl *c, Migwire__Frame__BodyCase kind, uint32_t id, mig__frame **out)
{
	uint64_t deadline = deadline_after(c->timeout_ms);
	for (;;) {
		mig__frame *in = NULL;
		int rc = next_frame(c, deadline, &in);
		if (rc)
			return rc;
		bool ours = in->body_case == MIGWIRE__FRAME__BODY_REPLY ? in->reply->request_id == id
			    : in->body_case == kind && kind == MIGWIRE__FRAME__BODY_STATUS
				    ? in->status->request_id == id
				    : false;
		if (ours) {
			*out = in;
			return 0;
		}
		mig__wire_free(in); /* an event for a subscription: not ours */
	}
}

MIG_EXPORT int mig_ctl_status(mig_ctl *c, mig_ctl_status_fn fn, void *ud)
{
	if (!c || !fn)
		return MIG_EINVAL;
	c->last_error[0] = '\0';
	Migwire__StatusRequest r = MIGWIRE__STATUS_REQUEST__INIT;
	r.request_id = ++c->next_request;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_STATUS_REQUEST;
	f.status_request = &r;
	int rc = send_frame(c, &f);
	mig__frame *in = NULL;
	if (!rc)
		rc = await_answer(c, MIGWIRE__FRAME__BODY_STATUS, r.request_id, &in);
	if (rc)
		return rc;
	if (in->body_case == MIGWIRE__FRAME__BODY_REPLY) {
		rc = reply_code(c, in->reply);
		mig__wire_free(in);
		return rc ? rc : MIG_EPROTO;
	}
	const Migwire__StatusReply *sr = in->status;
	mig_ctl_migration *ms = mig__calloc(sr->n_migrations ? sr->n_migrations : 1, sizeof(*ms));
	if (!ms) {
		mig__wire_free(in);
		return MIG_ENOMEM;
	}
	for (size_t i = 0; i < sr->n_migrations; i++) {
		const Migwire__MigrationStatus *w = sr->migrations[i];
		ms[i].mid = w->mid;
		ms[i].user = w->user;
		ms[i].peer_url = w->peer_url ? w->peer_url : "";
		ms[i].outgoing = w->role == MIGWIRE__MIGRATION_ROLE__ROLE_SOURCE;
		ms[i].phase = w->phase;
		ms[i].rounds = w->rounds;
		ms[i].bytes_sent = w->bytes_sent;
		ms[i].bytes_received = w->bytes_received;
		ms[i].started_us = w->started_us;
		ms[i].duration_us = w->duration_us;
		ms[i].parked = w->parked;
	}
	mig_ctl_engine_status st;
	memset(&st, 0, sizeof(st));
	st.engine_id = sr->engine_id;
	st.url = sr->url ? sr->url : "";
	st.protocol_version = sr->protocol_version;
	st.library_version = sr->library_version ? sr->library_version : "";
	for (size_t i = 0; i < sr->n_users; i++) {
		unsigned state = (unsigned)sr->users[i]->state;
		if (state < MIG__ARRAY_LEN(st.users_by_state))
			st.users_by_state[state] += sr->users[i]->count;
		st.users += sr->users[i]->count;
	}
	st.migrations = ms;
	st.nmigrations = sr->n_migrations;
	st.committed_out = sr->committed_out;
	st.aborted_out = sr->aborted_out;
	st.committed_in = sr->committed_in;
	st.aborted_in = sr->aborted_in;
	st.bytes_sent = sr->bytes_sent;
	st.bytes_received = sr->bytes_received;
	st.uptime_us = sr->uptime_us;
	fn(&st, ud);
	mig__free(ms);
	mig__wire_free(in);
	return 0;
}

MIG_EXPORT int mig_ctl_cancel(mig_ctl *c, const char *what)
{
	if (!c || !what)
		return MIG_EINVAL;
	c->last_error[0] = '\0';
	Migwire__CancelRequest r = MIGWIRE__CANCEL_REQUEST__INIT;
	r.request_id = ++c->next_request;
	/* A migration id if it looks like one (the engine also tries it as a
	 * user id when no migration has it), else a user id. */
	if (mig__valid_mid(what))
		r.mid = (char *)what;
	else if (mig__valid_user(what))
		r.user = (char *)what;
	else
		return MIG_EINVAL;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_CANCEL;
	f.cancel = &r;
	int rc = send_frame(c, &f);
	mig__frame *in = NULL;
	if (!rc)
		rc = await_answer(c, MIGWIRE__FRAME__BODY_REPLY, r.request_id, &in);
	if (rc)
		return rc;
	rc = in->reply->code;
	set_error(c, "%s", in->reply->reason && in->reply->reason[0] ? in->reply->reason
									 : mig_strerror(rc));
	mig__wire_free(in);
	return rc;
}

/* Sends a request and returns the code of its Reply, keeping the reason. */
static int simple_request(mig_ctl *c, mig__frame *f, uint32_t request_id)
{
	int rc = send_frame(c, f);
	mig__frame *in = NULL;
	if (!rc)
		rc = await_answer(c, MIGWIRE__FRAME__BODY_REPLY, request_id, &in);
	if (rc)
		return rc;
	rc = in->reply->code;
	set_error(c, "%s", in->reply->reason && in->reply->reason[0] ? in->reply->reason
									 : mig_strerror(rc));
	mig__wire_free(in);
	return rc;
}

MIG_EXPORT int mig_ctl_promote(mig_ctl *c, const char *user)
{
	if (!c || !mig__valid_user(user))
		return MIG_EINVAL;
	c->last_error[0] = '\0';
	Migwire__PromoteRequest r = MIGWIRE__PROMOTE_REQUEST__INIT;
	r.request_id = ++c->next_request;
	r.user = (char *)user;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_PROMOTE;
	f.promote = &r;
	return simple_request(c, &f, r.request_id);
}

MIG_EXPORT int mig_ctl_replicate(mig_ctl *c, const char *user, const char *standby_url,
				 unsigned int interval_ms)
{
	if (!c || !mig__valid_user(user) || interval_ms > 3600000)
		return MIG_EINVAL;
	c->last_error[0] = '\0';
	Migwire__ReplicateRequest r = MIGWIRE__REPLICATE_REQUEST__INIT;
	r.request_id = ++c->next_request;
	r.user = (char *)user;
	if (standby_url) {
		r.standby_url = (char *)standby_url;
		r.has_interval_ms = true;
		r.interval_ms = interval_ms;
	} else {
		r.has_stop = true;
		r.stop = true;
	}
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_REPLICATE;
	f.replicate = &r;
	return simple_request(c, &f, r.request_id);
}

MIG_EXPORT int mig_ctl_migrate(mig_ctl *c, const char *user, const char *url,
			       unsigned timeout_ms,
			       void (*on_event)(const mig_event *, void *), void *ud,
			       mig_event *final)
{
	if (!c || !mig__valid_user(user) || !url)
		return MIG_EINVAL;
	if (final)
		memset(final, 0, sizeof(*final));
	c->last_error[0] = '\0';
	Migwire__MigrateRequest r = MIGWIRE__MIGRATE_REQUEST__INIT;
	r.request_id = ++c->next_request;
	r.user = (char *)user;
	r.destination_url = (char *)url;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_MIGRATE;
	f.migrate = &r;
	int rc = send_frame(c, &f);
	if (rc)
		return rc;
	uint64_t deadline = deadline_after(timeout_ms ? timeout_ms : DEFAULT_MIGRATE_TIMEOUT_MS);
	char mid[MIG__MID_LEN + 1] = "";
	for (;;) {
		mig__frame *in = NULL;
		rc = next_frame(c, deadline, &in);
		if (rc) {
			if (rc == MIG_ETIMEDOUT)
				set_error(c, "migration still running after the timeout");
			return rc;
		}
		mig_event ev;
		if (in->body_case == MIGWIRE__FRAME__BODY_EVENT && strcmp(in->event->user, user) == 0 &&
		    (!mid[0] || strcmp(mid, in->event->mid) == 0)) {
			mig__event_from_wire(in->event, &ev);
			if (!mid[0] && ev.type == MIG_EVENT_STARTED)
				mig__strlcpy(mid, ev.mid, sizeof(mid));
			if (on_event && ev.type != MIG_EVENT_COMMITTED && ev.type != MIG_EVENT_ABORTED)
				on_event(&ev, ud);
		} else if (in->body_case == MIGWIRE__FRAME__BODY_REPLY &&
			   in->reply->request_id == r.request_id) {
			rc = reply_code(c, in->reply);
			if (in->reply->event) {
				mig__event_from_wire(in->reply->event, &ev);
				if (on_event)
					on_event(&ev, ud);
				if (final) {
					*final = ev;
					final->mid = final->user = final->peer_url = NULL;
					final->reason = final->phase = NULL;
				}
			}
			mig__wire_free(in);
			return rc;
		}
		mig__wire_free(in);
	}
}

MIG_EXPORT int mig_ctl_watch(mig_ctl *c, int timeout_ms, int (*fn)(const mig_event *, void *),
			     void *ud)
{
	if (!c || !fn)
		return MIG_EINVAL;
	Migwire__SubscribeRequest r = MIGWIRE__SUBSCRIBE_REQUEST__INIT;
	r.request_id = ++c->next_request;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_SUBSCRIBE;
	f.subscribe = &r;
	int rc = send_frame(c, &f);
	if (rc)
		return rc;
	uint64_t deadline = timeout_ms >= 0 ? deadline_after((unsigned)timeout_ms) : 0;
	for (;;) {
		mig__frame *in = NULL;
		rc = next_frame(c, deadline, &in);
		if (rc)
			return rc;
		if (in->body_case == MIGWIRE__FRAME__BODY_EVENT) {
			mig_event ev;
			mig__event_from_wire(in->event, &ev);
			int stop = fn(&ev, ud);
			mig__wire_free(in);
			if (stop)
				return 0;
			continue;
		}
		if (in->body_case == MIGWIRE__FRAME__BODY_REPLY && in->reply->request_id == r.request_id &&
		    in->reply->code) {
			rc = reply_code(c, in->reply);
			mig__wire_free(in);
			return rc;
		}
		mig__wire_free(in);
	}
}
