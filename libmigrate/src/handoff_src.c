/* The source side of the handoff: the coordinator.
 *
 *   NEW -> BEGIN sent -> (ACCEPT) pause, extract -> PREPARE sent
 *       -> (PREPARED) COMMIT decided -> (COMMITTED) release, done.
 *
 * Before COMMIT is decided, any failure (REJECT, FAILED, timeout, lost link,
 * cancel) aborts: the user resumes here. After, the source keeps its paused
 * copy and re-sends COMMIT until the destination answers; it resumes only if
 * the destination answers it has no copy (DESIGN invariants 1 and 2). */
#include <stdio.h>
#include <string.h>

#include "auth.h"
#include "handoff_int.h"
#include "xfer.h"

/* Room kept in a PREPARE frame for everything but the light state. */
#define PREPARE_OVERHEAD 8192

int mig__handoff_start(mig_engine *e, const char *user, const char *url, uint64_t ctl_conn,
		       uint32_t ctl_request, struct mig_migration **out)
{
	bool tls;
	char host[256], path[256];
	int port;
	if (!url || mig__url_parse(url, &tls, host, sizeof(host), &port, path, sizeof(path)) ||
	    strlen(url) > MIG__URL_MAX) {
		mig__engine_set_error(e, "invalid destination URL");
		return MIG_EINVAL;
	}
	if (!e->started) {
		mig__engine_set_error(e, "engine not started");
		return MIG_ESTATE;
	}
	if (e->advertised_url && strcmp(url, e->advertised_url) == 0) {
		mig__engine_set_error(e, "cannot migrate a user to the engine it is on");
		return MIG_EINVAL;
	}
	mig__user *u = mig__users_find(&e->users, user);
	if (!u) {
		mig__engine_set_error(e, "no user %s on this engine", user);
		return MIG_ENOUSER;
	}
	if (u->state != MIG_USER_ACTIVE) {
		mig__engine_set_error(e, "user %s is not active here (migrating or arriving)", user);
		return MIG_EBUSY;
	}
	char mid[MIG__MID_LEN + 1];
	if (mig__new_mid(mid) != 0)
		return MIG_ESYSTEM;
	struct mig_migration *m = mig__handoff_new(e, mid, user, url, true);
	if (!m)
		return MIG_ENOMEM;
	m->phase = MIG__SRC_NEW;
	m->ctl_conn = ctl_conn;
	m->ctl_request = ctl_request;
	u->state = MIG_USER_MIGRATING;
	u->migration = m;
	*out = m;
	return 0;
}

static void free_light(struct mig_migration *m)
{
	for (size_t i = 0; i < m->nlight; i++)
		mig__free(m->light[i].data);
	mig__free(m->light);
	m->light = NULL;
	m->nlight = 0;
}

static void set_user_state(mig_engine *e, struct mig_migration *m, mig_user_state state)
{
	mig__user *u = mig__users_find(&e->users, m->user);
	if (u)
		u->state = state;
}

/* Ends the migration with the user back in service here. */
static void src_abort(mig_engine *e, struct mig_migration *m, int error, const char *reason,
		      bool tell_peer)
{
	if (tell_peer && m->phase != MIG__SRC_NEW) {
		Migwire__Abort a = MIGWIRE__ABORT__INIT;
		a.mid = m->mid;
		a.reason = (char *)(reason ? reason : "");
		mig__frame f = MIGWIRE__FRAME__INIT;
		f.body_case = MIGWIRE__FRAME__BODY_ABORT;
		f.abort = &a;
		/* Best effort: a destination that misses it asks, and hears
		 * "aborted" from the outcome memory. */
		if (m->conn && mig__engine_conn(e, m->conn))
			mig__engine_send(e, m->conn, &f, m, false);
	}
	bool was_paused = m->paused;
	m->paused = false;
	mig__xfer_end(e, m, false);
	free_light(m);
	set_user_state(e, m, MIG_USER_ACTIVE);
	mig__handoff_finish(e, m, MIG_MIGRATION_ABORTED, error, reason);
	if (was_paused && e->hooks.resume) {
		char user[MIG__USER_MAX + 1];
		mig__strlcpy(user, m->user, sizeof(user));
		mig__engine_unlock_for_app(e);
		e->hooks.resume(e, user, e->hooks_user_data);
		mig__engine_relock(e);
	}
	mig__handoff_emit(e, MIG_EVENT_ABORTED, m);
}

static void src_committed(mig_engine *e, struct mig_migration *m)
{
	m->downtime_us = mig__now_us() - m->paused_us;
	m->paused = false;
	char user[MIG__USER_MAX + 1];
	mig__strlcpy(user, m->user, sizeof(user));
	mig__xfer_end(e, m, false);
	free_light(m);
	mig__handoff_finish(e, m, MIG_MIGRATION_COMMITTED, 0, "");
	mig__session_redirect(e, m); /* the user's clients go to the destination */
	mig__users_remove(&e->users, user);
	if (e->nfdomains)
		mig__xfer_release_user(e, user);
	if (e->hooks.release) {
		mig__engine_unlock_for_app(e);
		e->hooks.release(e, user, e->hooks_user_data);
		mig__engine_relock(e);
	}
	mig__handoff_emit(e, MIG_EVENT_COMMITTED, m);
}

static void send_begin(mig_engine *e, struct mig_migration *m)
{
	Migwire__DomainInfo infos[2 * MIG__MAX_DOMAINS];
	Migwire__DomainInfo *ptrs[2 * MIG__MAX_DOMAINS];
	size_t n = 0;
	for (size_t i = 0; i < e->ndomains; i++, n++) {
		migwire__domain_info__init(&infos[n]);
		infos[n].name = e->domains[i].name;
		infos[n].version = e->domains[i].version;
		infos[n].has_kind = true;
		infos[n].kind = MIGWIRE__DOMAIN_KIND__DOMAIN_LIGHT;
		infos[n].type_name = e->domains[i].type_name;
		ptrs[n] = &infos[n];
	}
	for (size_t i = 0; i < e->nfdomains; i++, n++) {
		migwire__domain_info__init(&infos[n]);
		infos[n].name = e->fdomains[i].name;
		infos[n].version = e->fdomains[i].version;
		infos[n].has_kind = true;
		infos[n].kind = MIGWIRE__DOMAIN_KIND__DOMAIN_FILE;
		ptrs[n] = &infos[n];
	}
	Migwire__Begin b = MIGWIRE__BEGIN__INIT;
	b.mid = m->mid;
	b.user = m->user;
	b.source_engine = e->engine_id;
	b.source_url = e->advertised_url;
	b.n_domains = n;
	b.domains = ptrs;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_BEGIN;
	f.begin = &b;
	uint64_t now = mig__now_us();
	mig__handoff_set_phase(m, MIG__SRC_BEGIN_SENT, now + mig__handoff_timeout_us(e));
	int rc = mig__handoff_send(e, m, &f, MIG__FAULT_SEND_BEGIN);
	if (rc)
		src_abort(e, m, rc, "cannot reach the destination", false);
}

static void start(mig_engine *e, struct mig_migration *m)
{
	m->emitted_started = true;
	mig__handoff_emit(e, MIG_EVENT_STARTED, m);
	if (m->phase != MIG__SRC_NEW)
		return; /* canceled from the callback and already ended */
	send_begin(e, m);
}

/* Pauses the user and extracts its light state into m->light. Returns 0,
 * or aborts the migration and returns non-zero. */
static int pause_and_extract(mig_engine *e, struct mig_migration *m)
{
	char user[MIG__USER_MAX + 1];
	mig__strlcpy(user, m->user, sizeof(user));
	if (e->hooks.pause) {
		mig__engine_unlock_for_app(e);
		int rc = e->hooks.pause(e, user, e->hooks_user_data);
		mig__engine_relock(e);
		if (rc) {
			src_abort(e, m, MIG_ECALLBACK, "the pause hook refused", true);
			return -1;
		}
	}
	m->paused = true;
	m->paused_us = mig__now_us();
	set_user_state(e, m, MIG_USER_PAUSED);

	size_t n = e->ndomains;
	m->light = mig__calloc(n ? n : 1, sizeof(*m->light));
	if (!m->light) {
		src_abort(e, m, MIG_ENOMEM, "out of memory", true);
		return -1;
	}
	m->nlight = n;
	size_t budget = e->max_frame > PREPARE_OVERHEAD ? e->max_frame - PREPARE_OVERHEAD : 0;
	size_t used = 0;
	for (size_t i = 0; i < n; i++) {
		mig__domain *d = &e->domains[i];
		mig_buf *b = &m->light[i];
		b->max = budget > used ? budget - used : 0;
		mig__engine_unlock_for_app(e);
		int rc = d->extract(e, user, b, d->user_data);
		mig__engine_relock(e);
		char why[MIG__REASON_MAX];
		if (b->error) {
			snprintf(why, sizeof(why), "light state of domain %s: %s", d->name,
				 b->error == MIG_ETOOBIG ? "over the frame cap" : mig_strerror(b->error));
			src_abort(e, m, b->error, why, true);
			return -1;
		}
		if (rc) {
			snprintf(why, sizeof(why), "extract of domain %s failed (%d)", d->name, rc);
			src_abort(e, m, MIG_ECALLBACK, why, true);
			return -1;
		}
		used += b->len;
	}
	if (m->cancel_requested) {
		src_abort(e, m, MIG_ECANCELED, "canceled", true);
		return -1;
	}
	return 0;
}

/* PREPARE: the light state and, with file domains, the final manifests. */
static void send_prepare(mig_engine *e, struct mig_migration *m)
{
	Migwire__DomainData data[MIG__MAX_DOMAINS];
	Migwire__DomainData *ptrs[MIG__MAX_DOMAINS];
	for (size_t i = 0; i < m->nlight; i++) {
		migwire__domain_data__init(&data[i]);
		data[i].name = e->domains[i].name;
		data[i].version = e->domains[i].version;
		data[i].data.data = m->light[i].data;
		data[i].data.len = m->light[i].len;
		ptrs[i] = &data[i];
	}
	Migwire__Prepare p = MIGWIRE__PREPARE__INIT;
	p.mid = m->mid;
	p.n_light = m->nlight;
	p.light = ptrs;
	if (m->xfer)
		mig__xsrc_manifests(m, &p.files, &p.n_files);
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_PREPARE;
	f.prepare = &p;
	mig__handoff_set_phase(m, MIG__SRC_PREPARE_SENT, mig__now_us() + mig__handoff_timeout_us(e));
	int rc = mig__handoff_send(e, m, &f, MIG__FAULT_SEND_PREPARE);
	free_light(m);
	if (rc) {
		char why[MIG__REASON_MAX];
		snprintf(why, sizeof(why), "cannot send the state: %s", mig_strerror(rc));
		src_abort(e, m, rc, why, true);
	}
}

/* ACCEPT: with file domains, start the pre-copy rounds; otherwise pause,
 * extract and send PREPARE at once. */
static void on_accept(mig_engine *e, struct mig_migration *m)
{
	if (e->nfdomains) {
		mig__handoff_set_phase(m, MIG__SRC_PRECOPY, 0);
		int rc = mig__xsrc_start(e, m);
		if (rc)
			src_abort(e, m, rc, "cannot start the file transfer", true);
		return;
	}
	if (pause_and_extract(e, m) == 0)
		send_prepare(e, m);
}

void mig__src_precopy_done(mig_engine *e, struct mig_migration *m)
{
	if (m->phase != MIG__SRC_PRECOPY)
		return;
	if (m->cancel_requested) {
		src_abort(e, m, MIG_ECANCELED, "canceled", true);
		return;
	}
	mig__handoff_set_phase(m, MIG__SRC_FINAL, 0);
	if (pause_and_extract(e, m) == 0)
		mig__xsrc_final(e, m);
}

void mig__src_final_sent(mig_engine *e, struct mig_migration *m)
{
	if (m->phase != MIG__SRC_FINAL)
		return;
	m->bytes_sent += mig__xfer_collect_sent(m);
	send_prepare(e, m);
}

void mig__src_files_failed(mig_engine *e, struct mig_migration *m, int err, const char *why)
{
	if (m->phase != MIG__SRC_PRECOPY && m->phase != MIG__SRC_FINAL &&
	    m->phase != MIG__SRC_PREPARE_SENT)
		return;
	char reason[MIG__REASON_MAX];
	snprintf(reason, sizeof(reason), "file state: %s", why);
	src_abort(e, m, err, reason, true);
}

static void send_commit(mig_engine *e, struct mig_migration *m)
{
	Migwire__Commit c = MIGWIRE__COMMIT__INIT;
	c.mid = m->mid;
	c.user = m->user;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_COMMIT;
	f.commit = &c;
	/* A failure to send is a lost message: the retry timer covers it. */
	mig__handoff_send(e, m, &f, MIG__FAULT_SEND_COMMIT);
	m->deadline_us = mig__now_us() + mig__handoff_backoff_us(m) +
			 (m->retries == 1 ? mig__handoff_timeout_us(e) / 4 : 0);
}

/* Session channel: who the destination is, for the redirect of the user's
 * clients after COMMITTED. The engine id is the one its handshake gave. */
static void remember_destination(mig_engine *e, struct mig_migration *m, const Migwire__Accept *a)
{
	mig__conn_rec *c = mig__engine_conn(e, m->conn);
	mig__free(m->peer_engine_id);
	mig__free(m->peer_app_url);
	mig__free(m->peer_session_url);
	m->peer_engine_id = c && c->peer_engine_id ? mig__strdup(c->peer_engine_id) : NULL;
	m->peer_app_url = a->app_url && *a->app_url ? mig__strdup(a->app_url) : NULL;
	m->peer_session_url = a->session_url && *a->session_url ? mig__strdup(a->session_url) : NULL;
}

static int remote_code(int code, int fallback)
{
	/* Codes from the peer are MIG_E* values; anything this build does not
	 * know becomes the generic one. */
	return code < 0 && strcmp(mig_err_name(code), "MIG_E?") != 0 ? code : fallback;
}

void mig__src_on_frame(mig_engine *e, struct mig_migration *m, const mig__frame *f)
{
	char why[MIG__REASON_MAX];
	switch (f->body_case) {
	case MIGWIRE__FRAME__BODY_ACCEPT:
		if (m->phase != MIG__SRC_BEGIN_SENT)
			return; /* a repeat */
		if (m->cancel_requested) {
			src_abort(e, m, MIG_ECANCELED, "canceled", true);
			return;
		}
		remember_destination(e, m, f->accept);
		on_accept(e, m);
		return;
	case MIGWIRE__FRAME__BODY_REJECT:
		if (m->phase != MIG__SRC_BEGIN_SENT)
			return;
		snprintf(why, sizeof(why), "destination refused: %s",
			 f->reject->reason ? f->reject->reason : "");
		src_abort(e, m, remote_code(f->reject->code, MIG_EREJECTED), why, false);
		return;
	case MIGWIRE__FRAME__BODY_PREPARED:
		if (m->phase != MIG__SRC_PREPARE_SENT)
			return;
		if (m->cancel_requested) {
			src_abort(e, m, MIG_ECANCELED, "canceled", true);
			return;
		}
		/* The decision point: from here the user never resumes here
		 * unless the destination says it holds no copy. */
		mig__handoff_set_phase(m, MIG__SRC_COMMIT, 0);
		mig__handoff_emit(e, MIG_EVENT_PREPARED, m);
		send_commit(e, m);
		return;
	case MIGWIRE__FRAME__BODY_FAILED:
		if (m->phase != MIG__SRC_PREPARE_SENT)
			return;
		snprintf(why, sizeof(why), "destination failed: %s",
			 f->failed->reason ? f->failed->reason : "");
		src_abort(e, m, remote_code(f->failed->code, MIG_ECALLBACK), why, false);
		return;
	case MIGWIRE__FRAME__BODY_COMMITTED:
		if (m->phase == MIG__SRC_COMMIT)
			src_committed(e, m);
		return;
	case MIGWIRE__FRAME__BODY_OUTCOME:
		if (m->phase != MIG__SRC_COMMIT)
			return;
		switch (f->outcome->state) {
		case MIGWIRE__OUTCOME_STATE__OUTCOME_COMMITTED:
		case MIGWIRE__OUTCOME_STATE__OUTCOME_UNKNOWN_USER_ACTIVE:
			src_committed(e, m);
			return;
		case MIGWIRE__OUTCOME_STATE__OUTCOME_ABORTED:
		case MIGWIRE__OUTCOME_STATE__OUTCOME_UNKNOWN_USER_ABSENT:
			/* The destination holds no copy (it restarted or dropped
			 * it): ours is the only one, so the user resumes here. */
			src_abort(e, m, MIG_EUNKNOWN,
				  "the destination has no copy of the user; resumed here", false);
			return;
		default:
			return; /* pending: keep asking */
		}
	case MIGWIRE__FRAME__BODY_ABORTED:
	default:
		return;
	}
}

void mig__src_on_link_down(mig_engine *e, struct mig_migration *m, int error, const char *reason)
{
	char why[MIG__REASON_MAX];
	switch (m->phase) {
	case MIG__SRC_BEGIN_SENT:
	case MIG__SRC_PRECOPY:
	case MIG__SRC_FINAL:
	case MIG__SRC_PREPARE_SENT:
		snprintf(why, sizeof(why), "lost the link to the destination: %s", reason);
		src_abort(e, m, error == MIG_ECONNECT ? MIG_ECONNECT : MIG_ECLOSED, why, false);
		return;
	case MIG__SRC_COMMIT:
		/* Reconnect and re-send COMMIT after a short backoff. */
		m->deadline_us = mig__now_us() + mig__handoff_backoff_us(m);
		return;
	default:
		return;
	}
}

void mig__src_tick(mig_engine *e, struct mig_migration *m, uint64_t now)
{
	if (m->phase == MIG__SRC_NEW) {
		if (m->cancel_requested)
			src_abort(e, m, MIG_ECANCELED, "canceled", false);
		else
			start(e, m);
		return;
	}
	if (m->cancel_requested &&
	    (m->phase == MIG__SRC_BEGIN_SENT || m->phase == MIG__SRC_PRECOPY ||
	     m->phase == MIG__SRC_FINAL || m->phase == MIG__SRC_PREPARE_SENT)) {
		src_abort(e, m, MIG_ECANCELED, "canceled", true);
		return;
	}
	if (!m->deadline_us || now < m->deadline_us)
		return;
	switch (m->phase) {
	case MIG__SRC_BEGIN_SENT:
		src_abort(e, m, MIG_ETIMEDOUT, "the destination did not answer BEGIN", true);
		return;
	case MIG__SRC_PREPARE_SENT:
		src_abort(e, m, MIG_ETIMEDOUT, "the destination did not answer PREPARE", true);
		return;
	case MIG__SRC_PRECOPY:
	case MIG__SRC_FINAL:
		src_abort(e, m, MIG_ETIMEDOUT, "the destination stopped taking file data", true);
		return;
	case MIG__SRC_COMMIT:
		if (!m->parked && now - m->phase_started_us > mig__handoff_timeout_us(e)) {
			/* Still unanswered: visible to the orchestrator as parked,
			 * the copy is kept and COMMIT keeps going out. */
			m->parked = true;
			set_user_state(e, m, MIG_USER_PARKED);
			mig__engine_log(e, MIG_LOG_WARN,
					"migration %s: destination unreachable after COMMIT; "
					"user %s parked", m->mid, m->user);
		}
		send_commit(e, m);
		return;
	default:
		return;
	}
}
