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
 * callback may call mig_client_attach() (its notes are delivered in turn). */
#include <errno.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "auth.h"
#include "migrate/client.h"
#include "token.h"
#include "transport.h"

#define DEFAULT_BACKOFF_INITIAL_MS 100u
#define DEFAULT_BACKOFF_MAX_MS 5000u
#define DEFAULT_JITTER_PERCENT 20
#define DEFAULT_CONNECT_TIMEOUT_MS 5000u
#define CLIENT_MAX_FRAME (64u * 1024)
#define MAX_URLS 64

enum timer_kind { TIMER_NONE, TIMER_BACKOFF, TIMER_CONNECT };

/* A callback owed to the app. */
struct note {
	struct note *next;
	bool redirect;
	mig_client_state state;
	int error;
	char *detail;
	/* redirect */
	char *user, *app_url, *session_url, *engine_id;
};

struct mig_client {
	mig__transport *transport;
	mig__evq events;
	int timer_fd;
	int wake_fd;
	int epoll_fd;

	/* Options. */
	char *user;
	char **fallbacks;
	size_t nfallbacks;
	unsigned backoff_initial_ms;
	unsigned backoff_max_ms;
	unsigned jitter_percent;
	unsigned max_attempts;
	unsigned connect_timeout_ms;
	mig_client_state_fn on_state;
	mig_client_redirect_fn on_redirect;
	void *user_data;

	/* Where and how to attach next. */
	char **urls; /* the current list: primary first */
	size_t nurls;
	size_t url_idx;
	char *token; /* single use: replaced by the resume or redirect token */
	/* Failover (mig_client_set_standby): the standby engine's session URL
	 * and a token it accepts once it promoted the user, tried when the
	 * engine stayed unreachable for standby_after_ms since lost_us. */
	char *standby_url;
	char *standby_token;
	unsigned standby_after_ms;
	bool on_standby; /* attaching there: "not promoted yet" is retried */
	uint64_t lost_us; /* when the engine was last known good; 0 = attached */

	/* State. */
	_Atomic int state;
	uint64_t conn; /* 0 = none */
	unsigned attempts;     /* failed attempts in a row */
	unsigned rounds;       /* failed rounds over every URL, in a row */
	size_t tried;          /* URLs tried in this round */
	enum timer_kind timer;
	uint64_t rng;
	char engine_id[MIG__ENGINE_ID_MAX + 1];
	char app_url[MIG__URL_MAX + 1];
	char last_error[256];
	struct note *notes_head, *notes_tail;
	/* A callback whose note could not be allocated is not lost: the
	 * latest such state change, and the latest such redirect, wait here
	 * and are delivered after the queued notes. A later state note
	 * supersedes the owed state (the app's last word is never stale). */
	bool state_owed;
	mig_client_state owed_state;
	int owed_error;
	char owed_detail[512];
	bool redirect_owed;
	char owed_user[MIG__USER_MAX + 1];
	char owed_app_url[MIG__URL_MAX + 1];
	char owed_session_url[MIG__URL_MAX + 1];
	char owed_engine_id[MIG__ENGINE_ID_MAX + 1];
	bool dispatching;
};

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

static void note_free(struct note *n)
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
			note_free(n);
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

static void drop_conn(mig_client *c, const char *why)
{
	if (c->conn)
		mig__transport_close(c->transport, c->conn, 1000, why);
	c->conn = 0;
}

static void connect_failed(mig_client *c, int error, const char *why);

/* Connects to the current URL and queues the Attach behind the handshake. */
static void start_connect(mig_client *c)
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
		drop_conn(c, "out of memory");
		connect_failed(c, MIG_ENOMEM, "out of memory");
		return;
	}
	mig__transport_send(c->transport, c->conn, msg);
	arm(c, TIMER_CONNECT, c->connect_timeout_ms);
	set_state(c, MIG_CLIENT_CONNECTING, 0, "%s", url);
}

static void fail(mig_client *c, int error, const char *why)
{
	drop_conn(c, "failed");
	arm(c, TIMER_NONE, 0);
	set_error(c, "%s", why);
	set_state(c, MIG_CLIENT_FAILED, error, "%s", why);
}

static int set_urls(mig_client *c, const char *primary, bool with_fallbacks);
static int set_token(mig_client *c, const char *token);

/* Failover: the engine has been unreachable long enough, and a standby is
 * known: attach there (its token is used once, so this happens once). */
static bool go_standby(mig_client *c)
{
	if (!c->standby_url || c->on_standby || !c->lost_us ||
	    mig__now_us() - c->lost_us < (uint64_t)c->standby_after_ms * 1000u)
		return false;
	if (set_urls(c, c->standby_url, false) != 0 || set_token(c, c->standby_token) != 0)
		return false; /* out of memory: keep trying the engine */
	c->on_standby = true;
	c->attempts = c->rounds = 0;
	set_error(c, "engine unreachable for %u ms or more: failing over to %s",
		  c->standby_after_ms, c->standby_url);
	start_connect(c);
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
		start_connect(c);
		return;
	}
	c->tried = 0;
	c->url_idx = 0;
	c->rounds++;
	unsigned ms = backoff_ms(c, c->rounds);
	arm(c, TIMER_BACKOFF, ms);
	set_state(c, MIG_CLIENT_BACKING_OFF, error, "retry in %u ms: %s", ms, c->last_error);
}

static int set_urls(mig_client *c, const char *primary, bool with_fallbacks)
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

static int set_token(mig_client *c, const char *token)
{
	char *t = mig__strdup(token);
	if (!t)
		return MIG_ENOMEM;
	mig__free(c->token);
	c->token = t;
	return 0;
}

static bool valid_url(const char *url)
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
		set_token(c, r->resume_token);
	set_state(c, MIG_CLIENT_ATTACHED, 0, "%s %s", c->engine_id, c->urls[c->url_idx]);
}

static void on_redirect(mig_client *c, const Migwire__Redirect *r)
{
	if (c->user && strcmp(r->user, c->user) != 0)
		return; /* not ours: wire-valid, but not for this client */
	drop_conn(c, "redirected");
	/* The standby was the old engine's: the user has moved on. */
	mig__free(c->standby_url);
	mig__free(c->standby_token);
	c->standby_url = c->standby_token = NULL;
	c->on_standby = false;
	if (set_urls(c, r->session_url, false) != 0 || set_token(c, r->token) != 0) {
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
	start_connect(c);
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
		set_token(c, f->session_renew->token);
		return;
	default:
		return; /* a newer engine's frame: ignored */
	}
}

static void on_event(mig_client *c, mig__tev *ev)
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

static void on_timer(mig_client *c)
{
	enum timer_kind kind = c->timer;
	c->timer = TIMER_NONE;
	if (kind == TIMER_BACKOFF) {
		start_connect(c);
	} else if (kind == TIMER_CONNECT) {
		char why[64];
		snprintf(why, sizeof(why), "not attached within %u ms", c->connect_timeout_ms);
		drop_conn(c, "timeout");
		connect_failed(c, MIG_ETIMEDOUT, why);
	}
}

/* ------------------------------------------------------------------ API */

MIG_EXPORT const char *mig_client_state_name(mig_client_state s)
{
	switch (s) {
	case MIG_CLIENT_DISCONNECTED:
		return "DISCONNECTED";
	case MIG_CLIENT_CONNECTING:
		return "CONNECTING";
	case MIG_CLIENT_ATTACHED:
		return "ATTACHED";
	case MIG_CLIENT_REDIRECTED:
		return "REDIRECTED";
	case MIG_CLIENT_BACKING_OFF:
		return "BACKING_OFF";
	case MIG_CLIENT_FAILED:
		return "FAILED";
	}
	return "?";
}

MIG_EXPORT int mig_client_new(mig_client **out, const mig_client_options *o)
{
	if (!out)
		return MIG_EINVAL;
	*out = NULL;
	if (!o || !valid_url(o->url) || !mig__token_text_valid(o->token) ||
	    (o->user && !mig__valid_user(o->user)) || (o->fallback_count && !o->fallback_urls) ||
	    o->fallback_count >= MAX_URLS || o->jitter_percent > 100)
		return MIG_EINVAL;
	for (size_t i = 0; i < o->fallback_count; i++)
		if (!valid_url(o->fallback_urls[i]))
			return MIG_EINVAL;
	mig_client *c = mig__calloc(1, sizeof(*c));
	if (!c)
		return MIG_ENOMEM;
	c->timer_fd = c->wake_fd = c->epoll_fd = -1;
	c->events.efd = -1;
	int rc = MIG_ENOMEM;
	c->backoff_initial_ms = o->backoff_initial_ms ? o->backoff_initial_ms
						      : DEFAULT_BACKOFF_INITIAL_MS;
	c->backoff_max_ms = o->backoff_max_ms ? o->backoff_max_ms : DEFAULT_BACKOFF_MAX_MS;
	if (c->backoff_max_ms < c->backoff_initial_ms)
		c->backoff_max_ms = c->backoff_initial_ms;
	c->jitter_percent = o->jitter_percent < 0    ? 0u
			    : o->jitter_percent == 0 ? (unsigned)DEFAULT_JITTER_PERCENT
						     : (unsigned)o->jitter_percent;
	c->max_attempts = o->max_attempts;
	c->connect_timeout_ms = o->connect_timeout_ms ? o->connect_timeout_ms
						      : DEFAULT_CONNECT_TIMEOUT_MS;
	c->on_state = o->on_state;
	c->on_redirect = o->on_redirect;
	c->user_data = o->user_data;
	atomic_init(&c->state, MIG_CLIENT_DISCONNECTED);
	if (mig__random(&c->rng, sizeof(c->rng)) != 0 || !c->rng)
		c->rng = mig__now_us() | 1;
	if (o->user && !(c->user = mig__strdup(o->user)))
		goto fail;
	if (o->fallback_count) {
		c->fallbacks = mig__calloc(o->fallback_count, sizeof(*c->fallbacks));
		if (!c->fallbacks)
			goto fail;
		for (size_t i = 0; i < o->fallback_count; i++, c->nfallbacks++)
			if (!(c->fallbacks[i] = mig__strdup(o->fallback_urls[i])))
				goto fail;
	}
	if (set_urls(c, o->url, true) != 0 || set_token(c, o->token) != 0)
		goto fail;

	rc = MIG_ESYSTEM;
	if (mig__evq_init(&c->events) != 0)
		goto fail;
	c->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	c->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	c->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	if (c->timer_fd < 0 || c->wake_fd < 0 || c->epoll_fd < 0)
		goto fail;
	int fds[] = {c->events.efd, c->timer_fd, c->wake_fd};
	for (size_t i = 0; i < MIG__ARRAY_LEN(fds); i++) {
		struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[i]};
		if (epoll_ctl(c->epoll_fd, EPOLL_CTL_ADD, fds[i], &ev) != 0)
			goto fail;
	}

	mig__transport_cfg cfg;
	memset(&cfg, 0, sizeof(cfg));
	cfg.listen = false;
	cfg.tls_ca_file = o->tls_ca_file;
	cfg.tls_cert_file = o->tls_cert_file;
	cfg.tls_key_file = o->tls_key_file;
	cfg.insecure = true; /* no cluster secret: the token authenticates */
	cfg.engine_id = "";
	cfg.max_frame = CLIENT_MAX_FRAME;
	cfg.events = &c->events;
	cfg.log_level = MIG_LOG_ERROR;
	cfg.name = "client";
	char err[200] = "";
	rc = mig__transport_new(&c->transport, &cfg, err, sizeof(err));
	if (!rc)
		rc = mig__transport_start(c->transport);
	if (rc)
		goto fail;
	start_connect(c);
	*out = c;
	return 0;
fail:
	mig_client_free(c);
	return rc;
}

MIG_EXPORT void mig_client_free(mig_client *c)
{
	if (!c)
		return;
	mig__transport_free(c->transport);
	if (c->events.efd >= 0)
		mig__evq_destroy(&c->events, mig__tev_free_item);
	if (c->epoll_fd >= 0)
		close(c->epoll_fd);
	if (c->timer_fd >= 0)
		close(c->timer_fd);
	if (c->wake_fd >= 0)
		close(c->wake_fd);
	struct note *n = c->notes_head;
	while (n) {
		struct note *next = n->next;
		note_free(n);
		n = next;
	}
	for (size_t i = 0; i < c->nurls; i++)
		mig__free(c->urls[i]);
	mig__free(c->urls);
	for (size_t i = 0; i < c->nfallbacks; i++)
		mig__free(c->fallbacks[i]);
	mig__free(c->fallbacks);
	mig__free(c->user);
	mig__free(c->token);
	mig__free(c->standby_url);
	mig__free(c->standby_token);
	mig__free(c);
}

MIG_EXPORT int mig_client_fd(const mig_client *c)
{
	return c ? c->epoll_fd : MIG_EINVAL;
}

MIG_EXPORT int mig_client_dispatch(mig_client *c)
{
	if (!c || c->dispatching)
		return MIG_EINVAL;
	c->dispatching = true;
	uint64_t v;
	while (read(c->wake_fd, &v, sizeof(v)) > 0)
		;
	if (read(c->timer_fd, &v, sizeof(v)) > 0 && c->timer != TIMER_NONE)
		on_timer(c);
	mig__evq_item *items = mig__evq_take_all(&c->events);
	while (items) {
		mig__evq_item *next = items->next;
		mig__tev *ev = (mig__tev *)items;
		on_event(c, ev);
		mig__tev_free(ev);
		items = next;
	}
	/* Deliver the notes, then what is owed; a callback may queue more
	 * (mig_client_attach). */
	for (;;) {
		struct note *n = c->notes_head;
		if (n) {
			c->notes_head = n->next;
			if (!c->notes_head)
				c->notes_tail = NULL;
			if (n->redirect) {
				mig_client_redirect r = {n->user, n->app_url, n->session_url,
							 n->engine_id};
				if (c->on_redirect)
					c->on_redirect(c, &r, c->user_data);
			} else if (c->on_state) {
				c->on_state(c, n->state, n->error, n->detail, c->user_data);
			}
			note_free(n);
		} else if (c->redirect_owed) {
			/* Copies: the callback may owe another one. */
			char user[sizeof(c->owed_user)], app[sizeof(c->owed_app_url)];
			char session[sizeof(c->owed_session_url)], id[sizeof(c->owed_engine_id)];
			memcpy(user, c->owed_user, sizeof(user));
			memcpy(app, c->owed_app_url, sizeof(app));
			memcpy(session, c->owed_session_url, sizeof(session));
			memcpy(id, c->owed_engine_id, sizeof(id));
			c->redirect_owed = false;
			mig_client_redirect r = {user, app, session, id};
			if (c->on_redirect)
				c->on_redirect(c, &r, c->user_data);
		} else if (c->state_owed) {
			char detail[sizeof(c->owed_detail)];
			memcpy(detail, c->owed_detail, sizeof(detail));
			c->state_owed = false;
			if (c->on_state)
				c->on_state(c, c->owed_state, c->owed_error, detail, c->user_data);
		} else {
			break;
		}
	}
	c->dispatching = false;
	return 0;
}

MIG_EXPORT int mig_client_attach(mig_client *c, const char *url, const char *token)
{
	if (!c || (url && !valid_url(url)) || !mig__token_text_valid(token))
		return MIG_EINVAL;
	drop_conn(c, "attaching again");
	int rc = set_token(c, token);
	if (!rc && url)
		rc = set_urls(c, url, false);
	if (rc)
		return rc;
	c->attempts = c->rounds = 0;
	c->tried = 0;
	c->url_idx = 0;
	start_connect(c);
	return 0;
}

MIG_EXPORT int mig_client_set_standby(mig_client *c, const char *url, const char *token,
				      unsigned int after_ms)
{
	if (!c || (url && (!valid_url(url) || !mig__token_text_valid(token))))
		return MIG_EINVAL;
	char *u = url ? mig__strdup(url) : NULL;
	char *t = url ? mig__strdup(token) : NULL;
	if (url && (!u || !t)) {
		mig__free(u);
		mig__free(t);
		return MIG_ENOMEM;
	}
	mig__free(c->standby_url);
	mig__free(c->standby_token);
	c->standby_url = u;
	c->standby_token = t;
	c->standby_after_ms = after_ms ? after_ms : 3000u;
	if (!c->on_standby && c->lost_us == 0 &&
	    atomic_load(&c->state) != MIG_CLIENT_ATTACHED)
		c->lost_us = mig__now_us();
	return 0;
}

MIG_EXPORT mig_client_state mig_client_get_state(const mig_client *c)
{
	return c ? (mig_client_state)atomic_load(&((mig_client *)c)->state)
		 : MIG_CLIENT_DISCONNECTED;
}

MIG_EXPORT const char *mig_client_engine_id(const mig_client *c)
{
	return c ? c->engine_id : "";
}

MIG_EXPORT const char *mig_client_app_url(const mig_client *c)
{
	return c ? c->app_url : "";
}

MIG_EXPORT const char *mig_client_last_error(const mig_client *c)
{
	return c ? c->last_error : "";
}
