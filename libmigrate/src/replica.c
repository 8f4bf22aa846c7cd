/* Replication of a user's light state (and, through replica_files_*.c, its
 * file state) to a standby engine, and promotion with epochs
 * (docs/FAILOVER.md, <migrate/replicate.h>).
 *
 * The module is split by side; this file holds what both share: the
 * records (struct mig__replica and its lists, freed only here or in
 * dispatch), the events reported to the app, the public API, the tick that
 * drives both sides, frame routing and the control channel's requests.
 * replica_primary.c sends a served user's updates and takes their acks;
 * replica_standby.c receives, checks and installs updates, and promotes a
 * replica. The types they share are in replica_int.h.
 *
 * All of this runs with the engine lock; records are freed only inside
 * dispatch, so a record stays valid while the lock is dropped around an app
 * callback. */
#include <stdio.h>
#include <string.h>

#include "replica_int.h"

#define INTERVAL_MIN_MS 10u
#define INTERVAL_MAX_MS 3600000u

/* ------------------------------------------------------------------ records */

struct mig__replica *mig__replica_get_rep(mig_engine *e)
{
	if (!e->replica)
		e->replica = mig__calloc(1, sizeof(*e->replica));
	return e->replica;
}

void mig__replica_free_domains(rdomain *d, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		mig__free(d[i].name);
		mig__free(d[i].data);
	}
	mig__free(d);
}

void mig__replica_free_light(mig_buf *b, size_t n)
{
	if (b)
		for (size_t i = 0; i < n; i++)
			mig__free(b[i].data);
	mig__free(b);
}

void mig__replica_prim_free(mig_engine *e, prim *p)
{
	/* A running round finds no owner when it completes and frees itself. */
	if (p->job)
		mig__rfjob_cancel(p->job);
	if (p->strand)
		mig__strand_release(p->strand);
	mig__replica_free_light(p->job_light, e->ndomains);
	mig__rfset_free(p->acked_files);
	mig__rfset_free(p->inflight_files);
	mig__free(p->user);
	mig__free(p->url);
	mig__free(p);
}

void mig__replica_repl_free(repl *r)
{
	mig__free(r->user);
	mig__free(r->primary_id);
	mig__free(r->primary_url);
	mig__replica_free_domains(r->domains, r->ndomains);
	mig__free(r);
}

void mig__replica_rin_free(rin_rec *q)
{
	mig__rfin_free(q->in);
	mig__free(q->sender);
	mig__free(q->peer);
	mig__free(q->pid);
	if (q->nd)
		mig__replica_free_domains(q->nd, q->nnd);
	mig__free(q);
}

prim *mig__replica_find_prim(struct mig__replica *r, const char *user)
{
	for (prim *p = r ? r->prims : NULL; p; p = p->next)
		if (strcmp(p->user, user) == 0)
			return p;
	return NULL;
}

repl *mig__replica_find_repl(struct mig__replica *r, const char *user)
{
	for (repl *x = r ? r->repls : NULL; x; x = x->next)
		if (strcmp(x->user, user) == 0)
			return x;
	return NULL;
}

void mig__replica_stop(mig_engine *e)
{
	struct mig__replica *r = e->replica;
	if (!r)
		return;
	r->stopped = true;
	for (prim *p = r->prims; p; p = p->next) {
		if (p->job)
			mig__rfjob_cancel(p->job);
		p->job = NULL; /* freed with the worker pool or the event queue */
		if (p->strand)
			mig__strand_release(p->strand);
		p->strand = NULL;
	}
	while (r->rins) {
		rin_rec *q = r->rins;
		r->rins = q->next;
		mig__replica_rin_free(q);
	}
	r->nrins = 0;
}

void mig__replica_free(mig_engine *e)
{
	struct mig__replica *r = e->replica;
	if (!r)
		return;
	mig__replica_stop(e);
	while (r->prims) {
		prim *p = r->prims;
		r->prims = p->next;
		mig__replica_prim_free(e, p);
	}
	while (r->repls) {
		repl *x = r->repls;
		r->repls = x->next;
		mig__replica_repl_free(x);
	}
	mig__free(r);
	e->replica = NULL;
}

/* ------------------------------------------------------------------ events */

static const char *type_name(mig_replica_event_type t)
{
	switch (t) {
	case MIG_REPLICA_ACKED: return "acked";
	case MIG_REPLICA_REFUSED: return "refused by the standby";
	case MIG_REPLICA_SUPERSEDED: return "superseded";
	case MIG_REPLICA_STOPPED: return "replication stopped";
	case MIG_REPLICA_INSTALLED: return "replica installed";
	case MIG_REPLICA_REJECTED: return "update rejected";
	case MIG_REPLICA_PROMOTED: return "promoted";
	case MIG_REPLICA_PROMOTE_FAILED: return "promotion failed";
	}
	return "?";
}

/* Emits with the lock released around the app's callback; the strings are
 * copied first, so the caller may free the record they came from. */
void mig__replica_emit(mig_engine *e, mig_replica_event_type type, const char *user,
		       const evargs *a)
{
	char u[MIG__USER_MAX + 1], reason[MIG__REASON_MAX];
	mig__strlcpy(u, user, sizeof(u));
	mig__strlcpy(reason, a->reason ? a->reason : "", sizeof(reason));
	char *peer = mig__strdup(a->peer ? a->peer : "");
	mig__engine_log(e,
			type == MIG_REPLICA_ACKED || type == MIG_REPLICA_INSTALLED ? MIG_LOG_DEBUG
			: type == MIG_REPLICA_REFUSED || type == MIG_REPLICA_REJECTED ||
					type == MIG_REPLICA_PROMOTE_FAILED
				? MIG_LOG_WARN
				: MIG_LOG_INFO,
			"replication of user %s: %s (epoch %llu, seq %llu)%s%s", u, type_name(type),
			(unsigned long long)a->epoch, (unsigned long long)a->seq,
			reason[0] ? ": " : "", reason);
	struct mig__replica *r = e->replica;
	if (r && r->fn) {
		mig_replica_event ev = {
			.type = type,
			.user = u,
			.peer_url = peer ? peer : "",
			.epoch = a->epoch,
			.seq = a->seq,
			.bytes = a->bytes,
			.total_bytes = a->total,
			.lag_us = a->lag,
			.error = a->error,
			.reason = reason,
			.time_us = mig__wall_us(),
		};
		mig_replica_event_fn fn = r->fn;
		void *ud = r->ud;
		mig__engine_unlock_for_app(e);
		fn(e, &ev, ud);
		mig__engine_relock(e);
	}
	mig__free(peer);
}

/* ------------------------------------------------------------------ public API */

static uint64_t user_epoch_locked(mig_engine *e, const char *user)
{
	repl *x = mig__replica_find_repl(e->replica, user);
	bool here = mig__users_find(&e->users, user) != NULL;
	if (x && x->promoted && here)
		return x->promoted_epoch;
	prim *p = mig__replica_find_prim(e->replica, user);
	if (p)
		return p->epoch;
	if (here)
		return 1;
	return x ? x->epoch : 0;
}

static int replicate_locked(mig_engine *e, const char *user, const char *url, unsigned interval_ms,
			    char *why, size_t why_len)
{
	bool tls;
	char host[256], path[256];
	int port;
	if (!url || mig__url_parse(url, &tls, host, sizeof(host), &port, path, sizeof(path)) != 0) {
		snprintf(why, why_len, "bad standby URL");
		return MIG_EINVAL;
	}
	if (interval_ms == 0)
		interval_ms = MIG_REPLICATE_INTERVAL_MS_DEFAULT;
	if (interval_ms < INTERVAL_MIN_MS || interval_ms > INTERVAL_MAX_MS) {
		snprintf(why, why_len, "interval %u ms is outside %u..%u", interval_ms,
			 INTERVAL_MIN_MS, INTERVAL_MAX_MS);
		return MIG_EINVAL;
	}
	if (!e->started) {
		snprintf(why, why_len, "the engine is not started");
		return MIG_ESTATE;
	}
	if (e->advertised_url && strcmp(url, e->advertised_url) == 0) {
		snprintf(why, why_len, "the standby cannot be this engine");
		return MIG_EINVAL;
	}
	mig__user *u = mig__users_find(&e->users, user);
	if (!u || u->state != MIG_USER_ACTIVE) {
		snprintf(why, why_len, "user %s is not active here", user);
		return MIG_ENOUSER;
	}
	struct mig__replica *r = mig__replica_get_rep(e);
	if (!r)
		return MIG_ENOMEM;
	prim *old = mig__replica_find_prim(r, user);
	if (old && !old->stop) {
		snprintf(why, why_len, "user %s is already replicated to %s", user, old->url);
		return MIG_EEXIST;
	}
	prim *p = mig__calloc(1, sizeof(*p));
	if (!p || !(p->user = mig__strdup(user)) || !(p->url = mig__strdup(url))) {
		if (p)
			mig__replica_prim_free(e, p);
		return MIG_ENOMEM;
	}
	p->epoch = user_epoch_locked(e, user);
	if (old) {
		/* Stopped but not yet reaped: continue its numbering. */
		p->seq = old->seq;
		if (strcmp(old->url, url) == 0)
			p->acked_seq = old->acked_seq;
	}
	p->interval_us = (uint64_t)interval_ms * 1000u;
	p->dirty = true;
	p->next = r->prims;
	r->prims = p;
	snprintf(why, why_len, "replicating user %s to %s every %u ms", user, url, interval_ms);
	return 0;
}

MIG_EXPORT int mig_replicate(mig_engine *e, const char *user, const char *url,
			     const mig_replicate_options *o)
{
	if (!e || !mig__valid_user(user) || !url)
		return MIG_EINVAL;
	char why[MIG__REASON_MAX];
	pthread_mutex_lock(&e->lock);
	int rc = replicate_locked(e, user, url, o ? o->interval_ms : 0, why, sizeof(why));
	if (rc)
		mig__engine_set_error(e, "%s", why);
	pthread_mutex_unlock(&e->lock);
	if (!rc)
		mig__engine_wake(e);
	return rc;
}

static int mark_prim(mig_engine *e, const char *user, bool stop)
{
	if (!e || !mig__valid_user(user))
		return MIG_EINVAL;
	pthread_mutex_lock(&e->lock);
	prim *p = mig__replica_find_prim(e->replica, user);
	int rc = 0;
	if (!p || p->stop) {
		mig__engine_set_error(e, "user %s is not replicated", user);
		rc = MIG_ENOUSER;
	} else if (stop) {
		p->stop = true;
	} else {
		p->dirty = true;
	}
	pthread_mutex_unlock(&e->lock);
	if (!rc)
		mig__engine_wake(e);
	return rc;
}

MIG_EXPORT int mig_replicate_now(mig_engine *e, const char *user)
{
	return mark_prim(e, user, false);
}

MIG_EXPORT int mig_replicate_stop(mig_engine *e, const char *user)
{
	return mark_prim(e, user, true);
}

MIG_EXPORT int mig_replica_set_handler(mig_engine *e, mig_replica_event_fn fn, void *ud)
{
	if (!e)
		return MIG_EINVAL;
	pthread_mutex_lock(&e->lock);
	struct mig__replica *r = mig__replica_get_rep(e);
	if (r) {
		r->fn = fn;
		r->ud = ud;
	}
	pthread_mutex_unlock(&e->lock);
	return r ? 0 : MIG_ENOMEM;
}

MIG_EXPORT int mig_replica_set_auto_promote(mig_engine *e, unsigned int ms)
{
	if (!e)
		return MIG_EINVAL;
	pthread_mutex_lock(&e->lock);
	struct mig__replica *r = mig__replica_get_rep(e);
	if (r)
		r->auto_promote_us = (uint64_t)ms * 1000u;
	pthread_mutex_unlock(&e->lock);
	if (r)
		mig__engine_wake(e);
	return r ? 0 : MIG_ENOMEM;
}

static int promote_check(mig_engine *e, const char *user, repl **out, char *why, size_t why_len)
{
	repl *x = mig__replica_find_repl(e->replica, user);
	if (!x || x->promoted) {
		snprintf(why, why_len, "no replica of user %s here", user);
		return MIG_ENOUSER;
	}
	if (mig__users_find(&e->users, user)) {
		snprintf(why, why_len, "user %s is already here", user);
		return MIG_EEXIST;
	}
	if (x->files_broken) {
		snprintf(why, why_len,
			 "the replica of user %s has no consistent files (an install failed); "
			 "waiting for a whole update", user);
		return MIG_EIO;
	}
	*out = x;
	return 0;
}

MIG_EXPORT int mig_replica_promote(mig_engine *e, const char *user)
{
	if (!e || !mig__valid_user(user))
		return MIG_EINVAL;
	char why[MIG__REASON_MAX];
	repl *x = NULL;
	pthread_mutex_lock(&e->lock);
	int rc = promote_check(e, user, &x, why, sizeof(why));
	if (rc)
		mig__engine_set_error(e, "%s", why);
	else
		x->promote_requested = true;
	pthread_mutex_unlock(&e->lock);
	if (!rc)
		mig__engine_wake(e);
	return rc;
}

MIG_EXPORT int mig_replica_info_get(mig_engine *e, const char *user, mig_replica_info *info)
{
	if (!e || !mig__valid_user(user) || !info)
		return MIG_EINVAL;
	memset(info, 0, sizeof(*info));
	pthread_mutex_lock(&e->lock);
	int rc = MIG_ENOUSER;
	prim *p = mig__replica_find_prim(e->replica, user);
	repl *x = mig__replica_find_repl(e->replica, user);
	if (p) {
		info->primary = 1;
		info->seq = p->seq;
		info->acked_seq = p->acked_seq;
		info->updates = p->updates;
		info->bytes = p->bytes;
		info->last_us = p->last_ack_wall_us;
		rc = 0;
	} else if (x) {
		info->standby = !x->promoted;
		info->seq = x->seq;
		info->updates = x->installed;
		info->bytes = x->bytes;
		info->last_us = x->last_install_wall_us;
		rc = 0;
	}
	if (!rc)
		info->epoch = user_epoch_locked(e, user);
	pthread_mutex_unlock(&e->lock);
	return rc;
}

MIG_EXPORT int mig_replica_failover_token(mig_engine *e, const char *user, char *out,
					  size_t out_len)
{
	if (!e || !mig__valid_user(user) || !out || out_len < MIG__TOKEN_B64_MAX + 1)
		return MIG_EINVAL;
	out[0] = '\0';
	pthread_mutex_lock(&e->lock);
	int rc = 0;
	prim *p = mig__replica_find_prim(e->replica, user);
	mig__user *u = mig__users_find(&e->users, user);
	if (!p || p->stop || p->superseded || !u || u->state != MIG_USER_ACTIVE) {
		mig__engine_set_error(e, "user %s is not served and replicated here", user);
		rc = MIG_ENOUSER;
	} else if (!p->standby_id[0]) {
		mig__engine_set_error(e, "the standby of user %s has not answered yet", user);
		rc = MIG_ESTATE;
	} else {
		const mig__session_key *key = mig__session_key_get(e);
		rc = key ? mig__token_mint(key, user, p->standby_id, e->engine_id,
					   mig__wall_us() / 1000000u + e->session_ttl_s, out,
					   out_len, NULL)
			 : MIG_ESYSTEM;
		if (rc)
			mig__engine_set_error(e, "cannot mint a failover token: %s",
					      mig_strerror(rc));
	}
	pthread_mutex_unlock(&e->lock);
	return rc;
}

MIG_EXPORT uint64_t mig_user_epoch(mig_engine *e, const char *user)
{
	if (!e || !mig__valid_user(user))
		return 0;
	pthread_mutex_lock(&e->lock);
	uint64_t epoch = user_epoch_locked(e, user);
	pthread_mutex_unlock(&e->lock);
	return epoch;
}

/* ------------------------------------------------------------------ tick */

uint64_t mig__replica_earliest(uint64_t a, uint64_t b)
{
	return !a ? b : !b ? a : a < b ? a : b;
}

uint64_t mig__replica_tick(mig_engine *e, uint64_t now)
{
	if (!e->replica)
		return 0;
	uint64_t a = mig__replica_tick_prims(e, now);
	uint64_t b = mig__replica_tick_repls(e, mig__now_us());
	return mig__replica_earliest(a, b);
}

/* ------------------------------------------------------------------ frames */

bool mig__replica_owns(const mig__frame *f)
{
	return f->body_case == MIGWIRE__FRAME__BODY_REPLICA_UPDATE ||
	       f->body_case == MIGWIRE__FRAME__BODY_REPLICA_ACK ||
	       f->body_case == MIGWIRE__FRAME__BODY_REPLICA_FILE;
}

void mig__replica_on_frame(mig_engine *e, uint64_t conn, const mig__frame *f, size_t bytes)
{
	if (f->body_case == MIGWIRE__FRAME__BODY_REPLICA_UPDATE)
		mig__replica_on_update(e, conn, f->replica_update, bytes);
	else if (f->body_case == MIGWIRE__FRAME__BODY_REPLICA_ACK)
		mig__replica_on_ack(e, conn, f->replica_ack);
	else if (f->body_case == MIGWIRE__FRAME__BODY_REPLICA_FILE)
		mig__replica_on_file(e, conn, f->replica_file, bytes);
}

void mig__replica_on_conn_down(mig_engine *e, uint64_t conn)
{
	(void)conn;
	if (!e->replica)
		return;
	/* An update in flight on a closed link will not be answered: the
	 * tick sends the next one at its interval, on a new connection. The
	 * connection an update went out on is not recorded (the peer may use
	 * one it opened), so every in-flight update to a URL that no longer
	 * has a live link is given up. */
	for (prim *p = e->replica->prims; p; p = p->next) {
		if (!p->inflight)
			continue;
		bool linked = false;
		for (mig__conn_rec *c = e->conns; c; c = c->next)
			if (c->channel == MIGWIRE__CHANNEL__CHANNEL_PEER && c->id != conn &&
			    strcmp(c->url, p->url) == 0)
				linked = true;
		if (!linked)
			p->inflight = false;
	}
}

int mig__replica_control(mig_engine *e, const mig__frame *f, char *why, size_t why_len)
{
	if (f->body_case == MIGWIRE__FRAME__BODY_PROMOTE) {
		repl *x = NULL;
		int rc = promote_check(e, f->promote->user, &x, why, why_len);
		if (rc)
			return rc;
		if (x->installing) {
			snprintf(why, why_len, "an update of user %s is being installed: try again",
				 f->promote->user);
			return MIG_EBUSY;
		}
		rc = mig__replica_promote_now(e, x, why, why_len);
		char reason[MIG__REASON_MAX];
		mig__strlcpy(reason, why, sizeof(reason));
		/* x stays valid: records are freed only by dispatch, which is us. */
		evargs a = {.peer = x->primary_url, .epoch = rc ? x->epoch : x->promoted_epoch,
			    .seq = x->seq, .lag = mig__now_us() - x->last_install_us, .error = rc,
			    .reason = reason};
		mig__replica_emit(e, rc ? MIG_REPLICA_PROMOTE_FAILED : MIG_REPLICA_PROMOTED,
				  f->promote->user, &a);
		return rc;
	}
	const Migwire__ReplicateRequest *q = f->replicate;
	if (q->stop) {
		prim *p = mig__replica_find_prim(e->replica, q->user);
		if (!p || p->stop) {
			snprintf(why, why_len, "user %s is not replicated", q->user);
			return MIG_ENOUSER;
		}
		p->stop = true;
		snprintf(why, why_len, "replication of user %s stops", q->user);
		return 0;
	}
	return replicate_locked(e, q->user, q->standby_url, q->interval_ms, why, why_len);
}
