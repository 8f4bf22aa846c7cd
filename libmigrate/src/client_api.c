/* The reconnect helper's public functions (<migrate/client.h>): options,
 * lifecycle, dispatch and the notes it delivers; the state machine is in
 * client.c. */
#include <stdatomic.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "auth.h"
#include "client_int.h"
#include "token.h"

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
	if (!o || !mig__client_valid_url(o->url) || !mig__token_text_valid(o->token) ||
	    (o->user && !mig__valid_user(o->user)) || (o->fallback_count && !o->fallback_urls) ||
	    o->fallback_count >= MAX_URLS || o->jitter_percent > 100)
		return MIG_EINVAL;
	for (size_t i = 0; i < o->fallback_count; i++)
		if (!mig__client_valid_url(o->fallback_urls[i]))
			return MIG_EINVAL;
	mig_client *c = mig__calloc(1, sizeof(*c));
	if (!c)
		return MIG_ENOMEM;
	c->timer_fd = c->wake_fd = c->epoll_fd = -1;
	c->events.efd = -1;
	int rc = MIG_ENOMEM;
	c->backoff_initial_ms =
		o->backoff_initial_ms ? o->backoff_initial_ms : DEFAULT_BACKOFF_INITIAL_MS;
	c->backoff_max_ms = o->backoff_max_ms ? o->backoff_max_ms : DEFAULT_BACKOFF_MAX_MS;
	if (c->backoff_max_ms < c->backoff_initial_ms)
		c->backoff_max_ms = c->backoff_initial_ms;
	c->jitter_percent = o->jitter_percent < 0    ? 0u
			    : o->jitter_percent == 0 ? (unsigned)DEFAULT_JITTER_PERCENT
						     : (unsigned)o->jitter_percent;
	c->max_attempts = o->max_attempts;
	c->connect_timeout_ms =
		o->connect_timeout_ms ? o->connect_timeout_ms : DEFAULT_CONNECT_TIMEOUT_MS;
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
	if (mig__client_set_urls(c, o->url, true) != 0 || mig__client_set_token(c, o->token) != 0)
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
	mig__client_start_connect(c);
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
		mig__client_note_free(n);
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
		mig__client_on_timer(c);
	mig__evq_item *items = mig__evq_take_all(&c->events);
	while (items) {
		mig__evq_item *next = items->next;
		mig__tev *ev = (mig__tev *)items;
		mig__client_on_event(c, ev);
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
			mig__client_note_free(n);
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
	if (!c || (url && !mig__client_valid_url(url)) || !mig__token_text_valid(token))
		return MIG_EINVAL;
	mig__client_drop_conn(c, "attaching again");
	int rc = mig__client_set_token(c, token);
	if (!rc && url)
		rc = mig__client_set_urls(c, url, false);
	if (rc)
		return rc;
	c->attempts = c->rounds = 0;
	c->tried = 0;
	c->url_idx = 0;
	mig__client_start_connect(c);
	return 0;
}

MIG_EXPORT int mig_client_set_standby(mig_client *c, const char *url, const char *token,
				      unsigned int after_ms)
{
	if (!c || (url && (!mig__client_valid_url(url) || !mig__token_text_valid(token))))
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
	if (!c->on_standby && c->lost_us == 0 && atomic_load(&c->state) != MIG_CLIENT_ATTACHED)
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
