/* The reconnect helper (<migrate/client.h>): a small state machine over its
 * own transport on the session channel, with an fd and a dispatch like the
 * engine's.
 *
 *   CONNECTING --AttachReply 0--> ATTACHED --Redirect--> REDIRECTED -> CONNECTING
 *   CONNECTING --Redirect (the user left that engine)--> REDIRECTED -> CONNECTING
 *       |  \--refused--> FAILED        \--link lost--> DISCONNECTED -> BACKING_OFF
 *       \--cannot connect: next URL (CONNECTING), or after the last one
 *          BACKING_OFF --timer--> CONNECTING
 *
 * The Attach frame is queued together with the connection, so it goes out
 * from the I/O thread right after the handshake. Callbacks are queued as
 * notes while events are handled and delivered at the end of dispatch, so a
 * callback may call mig_client_attach() (its notes are delivered in turn).
 * The public functions (options, lifecycle, dispatch) are in client_api.c. */
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "client_int.h"
#include "transport.h"

static void set_error(mig_client *c, const char *fmt, ...) MIG__PRINTF(2, 3);

static void set_error(mig_client *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->last_error, sizeof(c->last_error), fmt, ap);
	va_end(ap);
}

static void wake(mig_client *c)
{
	uint64_t one = 1;
	ssize_t n;
	do
		n = write(c->wake_fd, &one, sizeof(one));
	while (n < 0 && errno == EINTR);
}

/* ------------------------------------------------------------------ notes */

void mig__client_note_free(struct note *n)
{
	mig__free(n->detail);
	mig__free(n->user);
	mig__free(n->app_url);
	mig__free(n->session_url);
	mig__free(n->engine_id);
	mig__free(n);
}

static void note_push(mig_client *c, struct note *n)
{
	if (c->notes_tail)
		c->notes_tail->next = n;
	else
		c->notes_head = n;
	c->notes_tail = n;
	if (!c->dispatching)
		wake(c);
}

static void set_state(mig_client *c, mig_client_state st, int error, const char *fmt, ...)
	MIG__PRINTF(4, 5);

static void set_state(mig_client *c, mig_client_state st, int error, const char *fmt, ...)
{
	atomic_store(&c->state, (int)st);
	if (!c->on_state)
		return;
	char detail[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(detail, sizeof(detail), fmt, ap);
	va_end(ap);
	struct note *n = mig__calloc(1, sizeof(*n));
	if (n && !(n->detail = mig__strdup(detail))) {
		mig__free(n);
		n = NULL;
	}
	if (!n) {
		c->state_owed = true;
		c->owed_state = st;
		c->owed_error = error;
		mig__strlcpy(c->owed_detail, detail, sizeof(c->owed_detail));
		if (!c->dispatching)
			wake(c);
		return;
	}
	n->state = st;
	n->error = error;
	c->state_owed = false; /* this one is newer */
	note_push(c, n);
}

static char *dup_or_empty(const char *s)
{
	return mig__strdup(s ? s : "");
}

static void note_redirect(mig_client *c, const Migwire__Redirect *r)
{
	if (!c->on_redirect)
		return;
	struct note *n = mig__calloc(1, sizeof(*n));
	if (n) {
		n->redirect = true;
		n->user = dup_or_empty(r->user);
		n->app_url = dup_or_empty(r->app_url);
		n->session_url = dup_or_empty(r->session_url);
		n->engine_id = dup_or_empty(r->engine_id);
		if (!n->user || !n->app_url || !n->session_url || !n->engine_id) {
			mig__client_note_free(n);
			n = NULL;
		}
	}
	if (!n) {
		/* Wire-checked lengths: they fit. */
		c->redirect_owed = true;
		mig__strlcpy(c->owed_user, r->user ? r->user : "", sizeof(c->owed_user));
		mig__strlcpy(c->owed_app_url, r->app_url ? r->app_url : "", sizeof(c->owed_app_url));
		mig__strlcpy(c->owed_session_url, r->session_url ? r->session_url : "",
			     sizeof(c->owed_session_url));
		mig__strlcpy(c->owed_engine_id, r->engine_id ? r->engine_id : "",
			     sizeof(c->owed_engine_id));
		if (!c->dispatching)
			wake(c);
		return;
	}
	note_push(c, n);
}

/* ------------------------------------------------------------------ timers */

static void arm(mig_client *c, enum timer_kind kind, unsigned ms)
{
	c->timer = kind;
	struct itimerspec its;
	memset(&its, 0, sizeof(its));
	if (kind != TIMER_NONE) {
		if (!ms)
			ms = 1;
		its.it_value.tv_sec = ms / 1000u;
		its.it_value.tv_nsec = (long)(ms % 1000u) * 1000000L;
	}
	timerfd_settime(c->timer_fd, 0, &its, NULL);
}

static uint64_t next_random(mig_client *c)
{
	/* xorshift64*: jitter needs spread, not secrecy. */
	c->rng ^= c->rng >> 12;
	c->rng ^= c->rng << 25;
	c->rng ^= c->rng >> 27;
	return c->rng * 2685821657736338717ull;
}

/* The delay before round `round` (1-based) of attempts: initial doubled per
 * round up to the maximum, spread by +/- jitter_percent. */
static unsigned backoff_ms(mig_client *c, unsigned round)
{
	uint64_t ms = c->backoff_initial_ms;
	for (unsigned k = 1; k < round && ms < c->backoff_max_ms; k++)
		ms *= 2;
	if (ms > c->backoff_max_ms)
		ms = c->backoff_max_ms;
	if (c->jitter_percent) {
		/* uniform in [-j, +j] percent, in 1/10000 steps */
		int64_t span = (int64_t)c->jitter_percent * 200 + 1;
		int64_t r = (int64_t)(next_random(c) % (uint64_t)span) - (int64_t)c->jitter_percent * 100;
		int64_t v = (int64_t)ms + (int64_t)ms * r / 10000;
		ms = v > 1 ? (uint64_t)v : 1;
	}
	return (unsigned)ms;
}

/* ------------------------------------------------------------------ connecting */

void mig__client_drop_conn(mig_client *c, const char *why)
{
	if (c->conn)
		mig__transport_close(c->transport, c->conn, 1000, why);
	c->conn = 0;
}

static void connect_failed(mig_client *c, int error, const char *why);

/* Connects to the current URL and queues the Attach behind the handshake. */
void mig__client_start_connect(mig_client *c)
{
	const char *url = c->urls[c->url_idx];
	int64_t id = mig__transport_connect(c->transport, url, MIGWIRE__CHANNEL__CHANNEL_SESSION);
	if (id < 0) {
		connect_failed(c, (int)id, "invalid URL");
		return;
	}
	c->conn = (uint64_t)id;
	Migwire__Attach a = MIGWIRE__ATTACH__INIT;
	a.token = c->token;
	a.user = c->user;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_ATTACH;
	f.attach = &a;
	mig__msg *msg = NULL;
	if (mig__wire_encode(&f, 0, &msg) != 0) {
		mig__client_drop_conn(c, "out of memory");
		connect_failed(c, MIG_ENOMEM, "out of memory");
		return;
	}
	mig__transport_send(c->transport, c->conn, msg);
	arm(c, TIMER_CONNECT, c->connect_timeout_ms);
	set_state(c, MIG_CLIENT_CONNECTING, 0, "%s", url);
}

static void fail(mig_client *c, int error, const char *why)
{
	mig__client_drop_conn(c, "failed");
	arm(c, TIMER_NONE, 0);
	set_error(c, "%s", why);
	set_state(c, MIG_CLIENT_FAILED, error, "%s", why);
}

/* Failover: the engine has been unreachable long enough, and a standby is
 * known: attach there (its token is used once, so this happens once). */
static bool go_standby(mig_client *c)
{
	if (!c->standby_url || c->on_standby || !c->lost_us ||
	    mig__now_us() - c->lost_us < (uint64_t)c->standby_after_ms * 1000u)
		return false;
	if (mig__client_set_urls(c, c->standby_url, false) != 0 ||
	    mig__client_set_token(c, c->standby_token) != 0)
		return false; /* out of memory: keep trying the engine */
	c->on_standby = true;
	c->attempts = c->rounds = 0;
	set_error(c, "engine unreachable for %u ms or more: failing over to %s",
		  c->standby_after_ms, c->standby_url);
	mig__client_start_connect(c);
	return true;
}

/* An attempt at the current URL failed: the next URL at once, or, after the
 * last one, back off and start the list again. */
static void connect_failed(mig_client *c, int error, const char *why)
{
	c->conn = 0;
	const char *url = c->urls[c->url_idx];
	if (strstr(why, url))
		set_error(c, "%s", why); /* the transport's reason names the URL */
	else
		set_error(c, "%s: %s", url, why);
	c->attempts++;
	if (go_standby(c))
		return;
	if (c->max_attempts && c->attempts >= c->max_attempts) {
		char msg[400];
		snprintf(msg, sizeof(msg), "gave up after %u attempts: %s", c->attempts,
			 c->last_error);
		fail(c, error ? error : MIG_ECONNECT, msg);
		return;
	}
	c->tried++;
	if (c->tried < c->nurls) {
		c->url_idx = (c->url_idx + 1) % c->nurls;
		mig__client_start_connect(c);
		return;
	}
	c->tried = 0;
	c->url_idx = 0;
	c->rounds++;
	unsigned ms = backoff_ms(c, c->rounds);
	arm(c, TIMER_BACKOFF, ms);
	set_state(c, MIG_CLIENT_BACKING_OFF, error, "retry in %u ms: %s", ms, c->last_error);
}

int mig__client_set_urls(mig_client *c, const char *primary, bool with_fallbacks)
{
	size_t n = 1 + (with_fallbacks ? c->nfallbacks : 0);
	char **urls = mig__calloc(n, sizeof(*urls));
	if (!urls)
		return MIG_ENOMEM;
	urls[0] = mig__strdup(primary);
	bool ok = urls[0] != NULL;
	for (size_t i = 1; ok && i < n; i++)
		ok = (urls[i] = mig__strdup(c->fallbacks[i - 1])) != NULL;
	if (!ok) {
		for (size_t i = 0; i < n; i++)
			mig__free(urls[i]);
		mig__free(urls);
		return MIG_ENOMEM;
	}
	for (size_t i = 0; i < c->nurls; i++)
		mig__free(c->urls[i]);
	mig__free(c->urls);
	c->urls = urls;
	c->nurls = n;
	c->url_idx = 0;
	c->tried = 0;
	return 0;
}

int mig__client_set_token(mig_client *c, const char *token)
{
	char *t = mig__strdup(token);
	if (!t)
		return MIG_ENOMEM;
	mig__free(c->token);
	c->token = t;
	return 0;
}

bool mig__client_valid_url(const char *url)
{
	bool tls;
	char host[256], path[256];
	int port;
	return url && strlen(url) <= MIG__URL_MAX &&
	       mig__url_parse(url, &tls, host, sizeof(host), &port, path, sizeof(path)) == 0;
}

/* ------------------------------------------------------------------ frames */

static void on_attach_reply(mig_client *c, const Migwire__AttachReply *r)
{
	if (r->code) {
		char why[MIG__REASON_MAX + 64];
		snprintf(why, sizeof(why), "%s",
			 r->reason && *r->reason ? r->reason : mig_strerror(r->code));
		c->conn = 0; /* the engine closes it */
		if (c->on_standby && r->code == MIG_ENOUSER) {
			/* The standby has not promoted the user yet (the token
			 * is not used up): keep trying there. */
			connect_failed(c, r->code, why);
			return;
		}
		fail(c, r->code, why);
		return;
	}
	if (c->on_standby) {
		/* Failed over: the standby's token is spent. */
		mig__free(c->standby_url);
		mig__free(c->standby_token);
		c->standby_url = c->standby_token = NULL;
		c->on_standby = false;
	}
	c->lost_us = 0;
	arm(c, TIMER_NONE, 0);
	c->attempts = c->rounds = 0;
	c->tried = 0;
	mig__strlcpy(c->engine_id, r->engine_id ? r->engine_id : "", sizeof(c->engine_id));
	mig__strlcpy(c->app_url, r->app_url ? r->app_url : "", sizeof(c->app_url));
	if (r->resume_token && *r->resume_token)
		mig__client_set_token(c, r->resume_token);
	set_state(c, MIG_CLIENT_ATTACHED, 0, "%s %s", c->engine_id, c->urls[c->url_idx]);
}

static void on_redirect(mig_client *c, const Migwire__Redirect *r)
{
	if (c->user && strcmp(r->user, c->user) != 0)
		return; /* not ours: wire-valid, but not for this client */
	mig__client_drop_conn(c, "redirected");
	/* The standby was the old engine's: the user has moved on. */
	mig__free(c->standby_url);
	mig__free(c->standby_token);
	c->standby_url = c->standby_token = NULL;
	c->on_standby = false;
	if (mig__client_set_urls(c, r->session_url, false) != 0 ||
	    mig__client_set_token(c, r->token) != 0) {
		fail(c, MIG_ENOMEM, "out of memory following a redirect");
		return;
	}
	mig__strlcpy(c->engine_id, r->engine_id ? r->engine_id : "", sizeof(c->engine_id));
	mig__strlcpy(c->app_url, r->app_url ? r->app_url : "", sizeof(c->app_url));
	c->attempts = c->rounds = 0;
	/* Connect first (the I/O thread starts at once), then tell the app. */
	set_state(c, MIG_CLIENT_REDIRECTED, 0, "%s %s app %s", c->engine_id, r->session_url,
		  c->app_url[0] ? c->app_url : "-");
	note_redirect(c, r);
	mig__client_start_connect(c);
}

static void on_frame(mig_client *c, const mig__frame *f)
{
	switch (f->body_case) {
	case MIGWIRE__FRAME__BODY_ATTACH_REPLY:
		if (atomic_load(&c->state) == MIG_CLIENT_CONNECTING)
			on_attach_reply(c, f->attach_reply);
		return;
	case MIGWIRE__FRAME__BODY_REDIRECT: {
		/* Also in answer to our Attach: an engine the user has just left
		 * sends the client on instead of refusing it. */
		mig_client_state st = atomic_load(&c->state);
		if (st == MIG_CLIENT_ATTACHED || st == MIG_CLIENT_CONNECTING)
			on_redirect(c, f->redirect);
		return;
	}
	case MIGWIRE__FRAME__BODY_SESSION_RENEW:
		mig__client_set_token(c, f->session_renew->token);
		return;
	default:
		return; /* a newer engine's frame: ignored */
	}
}

void mig__client_on_event(mig_client *c, mig__tev *ev)
{
	if (ev->type == MIG__TEV_LOG || ev->type == MIG__TEV_CALL || !c->conn || ev->conn != c->conn)
		return; /* an older connection's, or nothing to do */
	switch (ev->type) {
	case MIG__TEV_FRAME:
		on_frame(c, ev->frame);
		return;
	case MIG__TEV_DOWN: {
		mig_client_state st = (mig_client_state)atomic_load(&c->state);
		if (st == MIG_CLIENT_ATTACHED) {
			c->conn = 0;
			c->lost_us = mig__now_us();
			set_error(c, "%s", ev->reason);
			set_state(c, MIG_CLIENT_DISCONNECTED, ev->error, "%s", ev->reason);
			/* Re-attach (with the resume token) after a first backoff. */
			c->tried = 0;
			c->url_idx = 0;
			c->rounds = 1;
			unsigned ms = backoff_ms(c, 1);
			arm(c, TIMER_BACKOFF, ms);
			set_state(c, MIG_CLIENT_BACKING_OFF, ev->error, "retry in %u ms: %s", ms,
				  ev->reason);
		} else if (st == MIG_CLIENT_CONNECTING) {
			connect_failed(c, ev->error, ev->reason);
		}
		return;
	}
	default:
		return;
	}
}

void mig__client_on_timer(mig_client *c)
{
	enum timer_kind kind = c->timer;
	c->timer = TIMER_NONE;
	if (kind == TIMER_BACKOFF) {
		mig__client_start_connect(c);
	} else if (kind == TIMER_CONNECT) {
		char why[64];
		snprintf(why, sizeof(why), "not attached within %u ms", c->connect_timeout_ms);
		mig__client_drop_conn(c, "timeout");
		connect_failed(c, MIG_ETIMEDOUT, why);
	}
}

