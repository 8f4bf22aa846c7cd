/* The session channel, engine side (see docs/PROTOCOL.md "Session channel").
 *
 * A client's reconnect helper connects on `mig-session`, runs the handshake
 * without a MAC (it does not know the cluster secret) and must then send
 * Attach{token}: the transport closes the connection on anything else. Here
 * the token is checked (signature, target engine, user, expiry, single use)
 * and the user must be served here; the answer is AttachReply, and a refusal
 * closes the connection. An attached client hears nothing more until its
 * user migrates away: when the source learns COMMITTED it sends each of the
 * user's clients a Redirect with a fresh token for the destination, then
 * closes the connection.
 *
 * Runs inside dispatch with the engine lock held. */
#include <stdio.h>
#include <string.h>

#include "auth.h"
#include "engine_int.h"
#include "token.h"

/* How often the memory of used nonces drops expired entries. */
#define NONCE_PRUNE_INTERVAL_US (30ull * 1000000u)
/* Clock skew tolerated between the engine that minted a token and this one
 * when refusing expiries too far ahead (bounded memory of used nonces). */
#define EXPIRY_SKEW_S 300u

static uint64_t wall_s(void)
{
	return mig__wall_us() / 1000000u;
}

int mig__session_init(mig_engine *e)
{
	return mig__nonce_cache_init(&e->used_nonces, MIG__SESSION_NONCES_MAX);
}

/* Guards every engine's session_key and session_key_ready; taken alone or
 * under an engine lock, and takes nothing else. */
static pthread_mutex_t session_key_lock = PTHREAD_MUTEX_INITIALIZER;

/* Derived at the first token minted or checked, not in mig_engine_new():
 * the first use of libcrypto's algorithms maps about 1.8 MiB of its pages
 * (its default provider), which an engine that has not met a user yet
 * does not need (docs/BENCHMARKS.md, "Cost to the application"). */
const mig__session_key *mig__session_key_get(mig_engine *e)
{
	pthread_mutex_lock(&session_key_lock);
	if (!e->session_key_ready)
		e->session_key_ready =
			mig__auth_session_key(e->secret, e->secret_len, &e->session_key) == 0;
	bool ready = e->session_key_ready;
	pthread_mutex_unlock(&session_key_lock);
	return ready ? &e->session_key : NULL;
}

void mig__session_destroy(mig_engine *e)
{
	mig__auth_session_key_clear(&e->session_key);
	mig__nonce_cache_destroy(&e->used_nonces);
}

/* A token for `user`, accepted by the engine `target`, minted here. */
static int mint(mig_engine *e, const char *user, const char *target,
		char out[MIG__TOKEN_B64_MAX + 1])
{
	const mig__session_key *key = mig__session_key_get(e);
	if (!key)
		return MIG_ESYSTEM;
	return mig__token_mint(key, user, target, e->engine_id,
			       wall_s() + e->session_ttl_s, out, MIG__TOKEN_B64_MAX + 1, NULL);
}

/* Is `u` served by this engine? Active, or leaving but not yet gone (the
 * client attaches here and is redirected at COMMITTED). An arriving user is
 * not: a client may attach only once the engine has activated its user. */
static bool served_here(const mig__user *u)
{
	if (!u)
		return false;
	switch (u->state) {
	case MIG_USER_ACTIVE:
		return true;
	case MIG_USER_MIGRATING:
	case MIG_USER_PAUSED:
	case MIG_USER_PARKED:
		return u->migration && u->migration->outgoing;
	default:
		return false;
	}
}

MIG_EXPORT int mig_session_token(mig_engine *e, const char *user, char *out, size_t out_len)
{
	if (!e || !mig__valid_user(user) || !out)
		return MIG_EINVAL;
	pthread_mutex_lock(&e->lock);
	bool served = served_here(mig__users_find(&e->users, user));
	if (!served)
		mig__engine_set_error(e, "user %s is not served by this engine", user);
	pthread_mutex_unlock(&e->lock);
	if (!served)
		return MIG_ENOUSER;
	char tok[MIG__TOKEN_B64_MAX + 1];
	int rc = mint(e, user, e->engine_id, tok);
	if (rc) {
		mig__engine_set_error(e, "cannot mint a session token");
		return rc;
	}
	size_t n = strlen(tok);
	if (n + 1 > out_len) {
		mig__engine_set_error(e, "token buffer too small: %zu bytes needed", n + 1);
		return MIG_EINVAL;
	}
	memcpy(out, tok, n + 1);
	return 0;
}

static void send_reply(mig_engine *e, mig__conn_rec *c, int code, const char *reason,
		       const char *user, const char *resume)
{
	Migwire__AttachReply r = MIGWIRE__ATTACH_REPLY__INIT;
	r.code = code;
	r.reason = (char *)(reason ? reason : "");
	if (!code) {
		r.user = (char *)user;
		r.engine_id = e->engine_id;
		r.app_url = e->app_url;
		r.resume_token = (char *)resume;
	}
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_ATTACH_REPLY;
	f.attach_reply = &r;
	if (code)
		c->session_closing = true;
	mig__engine_send(e, c->id, &f, NULL, code != 0);
}

static void refuse(mig_engine *e, mig__conn_rec *c, int code, const char *why, const char *user)
{
	mig__engine_log(e, MIG_LOG_INFO, "session connection %llu: attach%s%s refused: %s",
			(unsigned long long)c->id, user ? " as " : "", user ? user : "", why);
	send_reply(e, c, code, why, NULL, NULL);
}

static void set_renew(mig_engine *e, mig__conn_rec *c, uint64_t now)
{
	uint64_t half = (uint64_t)e->session_ttl_s * 1000000u / 2;
	c->session_renew_us = now + (half ? half : 1);
	if (!e->session_next_us || c->session_renew_us < e->session_next_us)
		e->session_next_us = c->session_renew_us;
}

/* Sends `c` a Redirect to where a committed migration took `user` (the
 * destination's engine id, session URL and app URL, "" or NULL if none),
 * with a fresh token for that engine, and closes it once written. */
static int send_redirect(mig_engine *e, mig__conn_rec *c, const char *user, const char *target,
			 const char *session_url, const char *app_url)
{
	c->session_closing = true;
	char tok[MIG__TOKEN_B64_MAX + 1];
	if (!target || !*target || mint(e, user, target, tok) != 0) {
		mig__transport_close(e->transport, c->id, 1011,
				     "the user moved; no redirect available");
		return -1;
	}
	Migwire__Redirect r = MIGWIRE__REDIRECT__INIT;
	r.user = (char *)user;
	r.session_url = (char *)session_url;
	r.token = tok;
	r.app_url = app_url && *app_url ? (char *)app_url : NULL;
	r.engine_id = (char *)target;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_REDIRECT;
	f.redirect = &r;
	if (mig__engine_send(e, c->id, &f, NULL, true) < 0) {
		/* Closed, the client comes back with its resume token and is
		 * redirected then (on_attach); left open, it would wait here
		 * attached to a user that is gone. */
		mig__transport_close(e->transport, c->id, 1011, "the user moved");
		return -1;
	}
	return 0;
}

static void on_attach(mig_engine *e, mig__conn_rec *c, const Migwire__Attach *a)
{
	mig__token tok;
	const char *why = "";
	const mig__session_key *key = mig__session_key_get(e);
	int rc = key ? mig__token_verify(key, a->token, &tok, &why) : MIG_ESYSTEM;
	if (rc) {
		refuse(e, c, rc, why, NULL);
		return;
	}
	uint64_t now = wall_s();
	rc = mig__token_check(&tok, e->engine_id, a->user, now,
			      MIG__SESSION_TTL_MAX_S + EXPIRY_SKEW_S, &e->used_nonces, &why);
	if (rc) {
		refuse(e, c, rc, why, a->user && *a->user ? a->user : tok.user);
		return;
	}
	if (!served_here(mig__users_find(&e->users, tok.user))) {
		/* A client that was not attached when its user left (it
		 * attaches late, or its link was down at COMMIT) is sent where
		 * the user went, as if it had been attached then. */
		const mig__outcome *r = mig__outcomes_departed(&e->outcomes, tok.user);
		const char *user = "", *target = "", *app_url = "", *session_url = "";
		if (r)
			mig__outcome_departure(r, &user, &target, &app_url, &session_url);
		if (r && mig__nonce_cache_add(&e->used_nonces, tok.nonce, tok.expiry, now) == 0 &&
		    send_redirect(e, c, user, target, session_url, app_url) == 0) {
			mig__engine_log(e, MIG_LOG_INFO,
					"session connection %llu: %s left for %s; redirected",
					(unsigned long long)c->id, tok.user, target);
			return;
		}
		refuse(e, c, MIG_ENOUSER, "user not active on this engine", tok.user);
		return;
	}
	char resume[MIG__TOKEN_B64_MAX + 1];
	c->session_user = mig__strdup(tok.user);
	rc = c->session_user ? mint(e, tok.user, e->engine_id, resume) : MIG_ENOMEM;
	if (!rc)
		rc = mig__nonce_cache_add(&e->used_nonces, tok.nonce, tok.expiry, now);
	if (rc) {
		mig__free(c->session_user);
		c->session_user = NULL;
		refuse(e, c, rc,
		       rc == MIG_EBUSY ? "too many recent attaches; try again later"
				       : "internal error",
		       tok.user);
		return;
	}
	set_renew(e, c, mig__now_us());
	mig__engine_log(e, MIG_LOG_INFO, "session connection %llu: client of %s attached",
			(unsigned long long)c->id, tok.user);
	send_reply(e, c, 0, "", tok.user, resume);
}

void mig__session_on_frame(mig_engine *e, uint64_t conn, const mig__frame *f)
{
	mig__conn_rec *c = mig__engine_conn(e, conn);
	if (!c || c->session_closing)
		return;
	if (f->body_case != MIGWIRE__FRAME__BODY_ATTACH || c->session_user) {
		mig__engine_log(e, MIG_LOG_WARN, "session connection %llu: unexpected %s frame",
				(unsigned long long)conn, mig__wire_body_name(f));
		c->session_closing = true;
		mig__transport_close(e->transport, conn, 1008,
				     "unexpected frame on the session channel");
		return;
	}
	on_attach(e, c, f->attach);
}

void mig__session_redirect(mig_engine *e, struct mig_migration *m)
{
	const char *target = m->peer_engine_id;
	const char *session_url =
		m->peer_session_url && *m->peer_session_url ? m->peer_session_url : m->peer_url;
	int n = 0;
	for (mig__conn_rec *c = e->conns; c; c = c->next) {
		if (c->channel != MIGWIRE__CHANNEL__CHANNEL_SESSION || !c->session_user ||
		    strcmp(c->session_user, m->user) != 0)
			continue;
		mig__free(c->session_user);
		c->session_user = NULL;
		n += send_redirect(e, c, m->user, target, session_url, m->peer_app_url) == 0;
	}
	if (n)
		mig__engine_log(e, MIG_LOG_INFO, "user %s: redirected %d client(s) to %s (%s)",
				m->user, n, target, session_url);
}

void mig__session_user_left(mig_engine *e, const char *user)
{
	for (mig__conn_rec *c = e->conns; c; c = c->next) {
		if (c->channel != MIGWIRE__CHANNEL__CHANNEL_SESSION || !c->session_user ||
		    strcmp(c->session_user, user) != 0)
			continue;
		mig__free(c->session_user);
		c->session_user = NULL;
		c->session_closing = true;
		mig__transport_close(e->transport, c->id, 1000, "the user left this engine");
	}
}

uint64_t mig__session_tick(mig_engine *e, uint64_t now)
{
	if (now >= e->nonce_prune_us) {
		mig__nonce_cache_prune(&e->used_nonces, wall_s());
		e->nonce_prune_us = now + NONCE_PRUNE_INTERVAL_US;
	}
	if (!e->session_next_us || now < e->session_next_us)
		return e->session_next_us;
	uint64_t next = 0;
	for (mig__conn_rec *c = e->conns; c; c = c->next) {
		if (c->channel != MIGWIRE__CHANNEL__CHANNEL_SESSION || !c->session_user ||
		    c->session_closing)
			continue;
		if (now >= c->session_renew_us) {
			char tok[MIG__TOKEN_B64_MAX + 1];
			if (mint(e, c->session_user, e->engine_id, tok) == 0) {
				Migwire__SessionRenew r = MIGWIRE__SESSION_RENEW__INIT;
				r.token = tok;
				mig__frame f = MIGWIRE__FRAME__INIT;
				f.body_case = MIGWIRE__FRAME__BODY_SESSION_RENEW;
				f.session_renew = &r;
				mig__engine_send(e, c->id, &f, NULL, false);
			}
			uint64_t half = (uint64_t)e->session_ttl_s * 1000000u / 2;
			c->session_renew_us = now + (half ? half : 1);
		}
		if (!next || c->session_renew_us < next)
			next = c->session_renew_us;
	}
	e->session_next_us = next;
	return next;
}
