/* The engine: options, lifecycle, the dispatch loop and its fd, domains,
 * migration handles. The handoff itself is in handoff.c. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <stdlib.h>
#include <unistd.h>

#include "announce.h"
#include "auth.h"
#include "engine_int.h"
#include "handoff_int.h"
#include "replica.h"
#include "workers.h"
#include "xfer.h"

#define DEFAULT_PEER_TIMEOUT_MS 5000u
#define MAX_PENDING_LOGS 1000

/* ------------------------------------------------------------------ errors, logs */

void mig__engine_set_error(mig_engine *e, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->last_error, sizeof(e->last_error), fmt, ap);
	va_end(ap);
}

/* Queues a log line; lines are delivered at the end of dispatch, with no
 * lock held, so the log callback may call into the library. */
static void queue_log(mig_engine *e, mig_log_level level, const char *line)
{
	if (!e->on_log || level > e->log_level)
		return;
	size_t n = 0;
	for (mig__pending_log *l = e->logs_head; l; l = l->next)
		if (++n >= MAX_PENDING_LOGS)
			return; /* an app that never dispatches must not grow us */
	mig__pending_log *l = mig__calloc(1, sizeof(*l));
	if (!l)
		return;
	l->level = level;
	l->line = mig__strdup(line);
	if (!l->line) {
		mig__free(l);
		return;
	}
	if (e->logs_tail)
		e->logs_tail->next = l;
	else
		e->logs_head = l;
	e->logs_tail = l;
}

void mig__engine_log(mig_engine *e, mig_log_level level, const char *fmt, ...)
{
	if (!e->on_log || level > e->log_level)
		return;
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	queue_log(e, level, line);
}

static void deliver_logs(mig_engine *e)
{
	pthread_mutex_lock(&e->lock);
	mig__pending_log *l = e->logs_head;
	e->logs_head = e->logs_tail = NULL;
	pthread_mutex_unlock(&e->lock);
	while (l) {
		mig__pending_log *next = l->next;
		e->on_log(e, l->level, l->line, e->user_data);
		mig__free(l->line);
		mig__free(l);
		l = next;
	}
}

void mig__engine_unlock_for_app(mig_engine *e)
{
	pthread_mutex_unlock(&e->lock);
}

void mig__engine_relock(mig_engine *e)
{
	pthread_mutex_lock(&e->lock);
}

void mig__engine_wake(mig_engine *e)
{
	uint64_t one = 1;
	ssize_t n;
	do
		n = write(e->wake_fd, &one, sizeof(one));
	while (n < 0 && errno == EINTR);
}

/* ------------------------------------------------------------------ options */

static int dup_opt(char **dst, const char *src)
{
	if (!src)
		return 0;
	*dst = mig__strdup(src);
	return *dst ? 0 : MIG_ENOMEM;
}

static void conn_rec_free(mig__conn_rec *c)
{
	mig__free(c->url);
	mig__free(c->peer_engine_id);
	mig__free(c->session_user);
	mig__free(c);
}

static void engine_release(mig_engine *e)
{
	/* Transfers first: cancel them so workers blocked on flow control
	 * return, then join the workers (they send through the transport),
	 * then stop the transport. */
	for (struct mig_migration *m = e->migrations; m; m = m->next)
		mig__xfer_end(e, m, false);
	mig__replica_stop(e); /* its strands, before the pool goes */
	mig__strand_release(e->maint);
	e->maint = NULL;
	mig__workers_free(e->workers);
	e->workers = NULL;
	mig__transport_free(e->transport);
	e->transport = NULL;
	mig__announce_free(e->announce);
	e->announce = NULL;
	mig__replica_free(e);
	if (e->events.efd >= 0)
		mig__evq_destroy(&e->events, mig__tev_free_item);
	mig__handoff_free_all(e);
	mig__conn_rec *c = e->conns;
	while (c) {
		mig__conn_rec *next = c->next;
		conn_rec_free(c);
		c = next;
	}
	mig__session_destroy(e);
	mig__free(e->app_url);
	mig__pending_log *l = e->logs_head;
	while (l) {
		mig__pending_log *next = l->next;
		mig__free(l->line);
		mig__free(l);
		l = next;
	}
	mig__users_destroy(&e->users);
	for (size_t i = 0; i < e->ndomains; i++) {
		mig__free(e->domains[i].name);
		mig__free(e->domains[i].type_name);
	}
	mig__free(e->domains);
	for (size_t i = 0; i < e->nfdomains; i++) {
		mig__free(e->fdomains[i].name);
		mig__free(e->fdomains[i].root);
	}
	mig__free(e->fdomains);
	if (e->epoll_fd >= 0)
		close(e->epoll_fd);
	if (e->wake_fd >= 0)
		close(e->wake_fd);
	if (e->timer_fd >= 0)
		close(e->timer_fd);
	pthread_mutex_destroy(&e->lock);
	pthread_mutex_destroy(&e->dispatch_lock);
	mig__free(e->listen_address);
	mig__free(e->advertised_url);
	mig__free(e->engine_id);
	if (e->secret) {
		memset(e->secret, 0, e->secret_len);
		mig__free(e->secret);
	}
	mig__free(e->tls_cert_file);
	mig__free(e->tls_key_file);
	mig__free(e->tls_ca_file);
	mig__free(e);
}

static int make_fds(mig_engine *e)
{
	if (mig__evq_init(&e->events) != 0)
		return MIG_ESYSTEM;
	e->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	e->timer_fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	e->epoll_fd = epoll_create1(EPOLL_CLOEXEC);
	if (e->wake_fd < 0 || e->timer_fd < 0 || e->epoll_fd < 0)
		return MIG_ESYSTEM;
	int fds[] = {e->events.efd, e->wake_fd, e->timer_fd};
	for (size_t i = 0; i < MIG__ARRAY_LEN(fds); i++) {
		struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[i]};
		if (epoll_ctl(e->epoll_fd, EPOLL_CTL_ADD, fds[i], &ev) != 0)
			return MIG_ESYSTEM;
	}
	return 0;
}

MIG_EXPORT int mig_engine_new(mig_engine **out, const mig_engine_options *options)
{
	if (!out)
		return MIG_EINVAL;
	*out = NULL;
	mig_engine_options defaults;
	memset(&defaults, 0, sizeof(defaults));
	const mig_engine_options *o = options ? options : &defaults;
	if (o->listen_port < 0 || o->listen_port > 65535)
		return MIG_EINVAL;
	if (o->secret_len && !o->secret)
		return MIG_EINVAL;
	if (o->secret_len && o->secret_len < MIG__AUTH_MIN_SECRET)
		return MIG_EINVAL;
	if (o->max_frame_bytes && o->max_frame_bytes < MIG__MIN_MAX_FRAME)
		return MIG_EINVAL;
	if (!o->tls_cert_file != !o->tls_key_file)
		return MIG_EINVAL;
	if (o->tls_require_client_cert && (!o->tls_ca_file || !o->tls_cert_file))
		return MIG_EINVAL;
	if (o->engine_id && !mig__valid_user(o->engine_id))
		return MIG_EINVAL;
	if (o->compression < MIG_COMPRESSION_AUTO || o->compression > MIG_COMPRESSION_ON ||
	    o->worker_threads > 64 || o->worker_nice < -1 || o->worker_nice > 19)
		return MIG_EINVAL;
	if (o->precopy_rate_limit && o->precopy_rate_limit < MIG__PRECOPY_RATE_MIN)
		return MIG_EINVAL;
	if ((o->app_url && !mig__valid_app_url(o->app_url)) ||
	    o->session_token_ttl_s > MIG__SESSION_TTL_MAX_S)
		return MIG_EINVAL;
	if (o->advertised_url) {
		bool tls;
		char host[256], path[256];
		int port;
		if (mig__url_parse(o->advertised_url, &tls, host, sizeof(host), &port, path,
				   sizeof(path)) != 0)
			return MIG_EINVAL;
	}

	mig_engine *e = mig__calloc(1, sizeof(*e));
	if (!e)
		return MIG_ENOMEM;
	e->events.efd = e->wake_fd = e->timer_fd = e->epoll_fd = -1;
	pthread_mutex_init(&e->lock, NULL);
	pthread_mutex_init(&e->dispatch_lock, NULL);
	int rc = 0;
	if ((rc = dup_opt(&e->listen_address, o->listen_address ? o->listen_address
								: "127.0.0.1")) ||
	    (rc = dup_opt(&e->advertised_url, o->advertised_url)) ||
	    (rc = dup_opt(&e->tls_cert_file, o->tls_cert_file)) ||
	    (rc = dup_opt(&e->tls_key_file, o->tls_key_file)) ||
	    (rc = dup_opt(&e->tls_ca_file, o->tls_ca_file)))
		goto fail;
	if (o->engine_id) {
		rc = dup_opt(&e->engine_id, o->engine_id);
	} else {
		char rnd[MIG__MID_LEN + 1];
		rc = mig__new_mid(rnd);
		if (!rc) {
			rnd[12] = '\0';
			e->engine_id = mig__asprintf("engine-%s", rnd);
			rc = e->engine_id ? 0 : MIG_ENOMEM;
		}
	}
	if (rc)
		goto fail;
	if (o->secret_len) {
		e->secret = mig__malloc(o->secret_len);
		if (!e->secret) {
			rc = MIG_ENOMEM;
			goto fail;
		}
		memcpy(e->secret, o->secret, o->secret_len);
		e->secret_len = o->secret_len;
	}
	e->insecure = o->allow_insecure != 0;
	e->listen_port = o->listen_port;
	e->tls_require_client_cert = o->tls_require_client_cert != 0;
	e->max_frame = o->max_frame_bytes ? o->max_frame_bytes : MIG__DEFAULT_MAX_FRAME;
	e->peer_timeout_ms = o->peer_timeout_ms ? o->peer_timeout_ms : DEFAULT_PEER_TIMEOUT_MS;
	e->precopy_alpha_ms = o->precopy_alpha_ms ? o->precopy_alpha_ms : 50;
	e->precopy_max_rounds = o->precopy_max_rounds ? o->precopy_max_rounds : 8;
	e->precopy_rate_limit = o->precopy_rate_limit;
	if (e->precopy_max_rounds > 16)
		e->precopy_max_rounds = 16;
	e->compression = o->compression;
	e->file_cache_bytes = o->file_cache_off ? 0
			      : o->file_cache_bytes ? o->file_cache_bytes
						    : 1024ull * 1024 * 1024;
	e->worker_threads = o->worker_threads ? o->worker_threads : 2;
	e->worker_nice = o->worker_nice == -1 ? 0 : o->worker_nice ? o->worker_nice : 10;
	e->on_event = o->on_event;
	e->on_log = o->on_log;
	e->log_level = o->log_level;
	e->user_data = o->user_data;
	e->session_ttl_s = o->session_token_ttl_s ? o->session_token_ttl_s
						  : MIG__SESSION_TTL_DEFAULT_S;
	if ((rc = dup_opt(&e->app_url, o->app_url)) || (rc = mig__session_init(e)))
		goto fail;
	e->metrics_off = o->metrics_off != 0;
	{
		/* A bad orchestrator URL or interval is MIG_EINVAL; the detail
		 * has no engine to outlive this call in (see mig_engine_new). */
		char aerr[256] = "";
		rc = mig__announce_new(&e->announce, o->orchestrator_url, o->heartbeat_ms, aerr,
				       sizeof(aerr));
		if (rc)
			goto fail;
	}
	e->metrics.started_mono_us = mig__now_us();
	e->metrics.started_wall_us = mig__wall_us();
	if ((rc = mig__users_init(&e->users)) != 0)
		goto fail;
	if ((rc = make_fds(e)) != 0)
		goto fail;
	*out = e;
	return 0;
fail:
	engine_release(e);
	return rc;
}

MIG_EXPORT int mig_engine_start(mig_engine *e)
{
	if (!e)
		return MIG_EINVAL;
	pthread_mutex_lock(&e->lock);
	bool started = e->started;
	pthread_mutex_unlock(&e->lock);
	if (started) {
		mig__engine_set_error(e, "engine already started");
		return MIG_ESTATE;
	}
	if (!e->secret_len && !e->insecure) {
		mig__engine_set_error(e, "no cluster secret: set secret (or allow_insecure)");
		return MIG_EINVAL;
	}
	mig__transport_cfg cfg;
	memset(&cfg, 0, sizeof(cfg));
	cfg.listen = true;
	cfg.thread_nice = e->worker_nice;
	cfg.listen_address = e->listen_address;
	cfg.listen_port = e->listen_port;
	cfg.tls_cert_file = e->tls_cert_file;
	cfg.tls_key_file = e->tls_key_file;
	cfg.tls_ca_file = e->tls_ca_file;
	cfg.tls_require_client_cert = e->tls_require_client_cert;
	cfg.secret = e->secret;
	cfg.secret_len = e->secret_len;
	cfg.insecure = e->insecure;
	cfg.engine_id = e->engine_id;
	cfg.max_frame = e->max_frame;
	cfg.accept_channels = (1u << MIGWIRE__CHANNEL__CHANNEL_PEER) |
			      (1u << MIGWIRE__CHANNEL__CHANNEL_CONTROL) |
			      (1u << MIGWIRE__CHANNEL__CHANNEL_SESSION);
	cfg.events = &e->events;
	cfg.log_level = e->on_log ? e->log_level : MIG_LOG_ERROR;
	cfg.name = e->engine_id;
	if (!e->metrics_off) {
		cfg.render_metrics = mig__metrics_render;
		cfg.metrics_ctx = e;
	}

	/* The advertised URL goes into every peer Hello; when not given it is
	 * derived from the port the kernel chose, before the I/O thread runs. */
	char err[200] = "";
	mig__transport *t = NULL;
	cfg.advertised_url = e->advertised_url;
	int rc = mig__transport_new(&t, &cfg, err, sizeof(err));
	if (rc) {
		mig__engine_set_error(e, "cannot start on %s:%d: %s", e->listen_address,
				      e->listen_port, err);
		return rc;
	}
	if (!e->advertised_url) {
		int port = mig__transport_port(t);
		const char *host = e->listen_address;
		if (strcmp(host, "0.0.0.0") == 0 || strcmp(host, "::") == 0)
			host = "127.0.0.1";
		e->advertised_url = mig__asprintf("%s://%s:%d", e->tls_cert_file ? "wss" : "ws",
						  host, port);
		if (!e->advertised_url ||
		    mig__transport_set_advertised_url(t, e->advertised_url) != 0) {
			mig__transport_free(t);
			return MIG_ENOMEM;
		}
	}
	if (e->nfdomains && !e->workers) {
		rc = mig__workers_new(&e->workers, e->worker_threads, e->worker_nice);
		if (!rc && !(e->maint = mig__strand_new(e->workers)))
			rc = MIG_ENOMEM;
		if (rc) {
			mig__transport_free(t);
			mig__engine_set_error(e, "cannot start the worker threads");
			return rc;
		}
	}
	rc = mig__transport_start(t);
	if (rc) {
		mig__transport_free(t);
		mig__engine_set_error(e, "cannot start the I/O thread");
		return rc;
	}
	pthread_mutex_lock(&e->lock);
	e->transport = t;
	e->listen_port = mig__transport_port(t);
	e->started = true;
	pthread_mutex_unlock(&e->lock);
	if (e->announce)
		mig__engine_wake(e); /* the first dispatch connects to the orchestrator */
	return 0;
}

MIG_EXPORT void mig_engine_free(mig_engine *e)
{
	if (!e)
		return;
	/* Wait for a dispatch in progress on another thread to finish. */
	pthread_mutex_lock(&e->dispatch_lock);
	pthread_mutex_unlock(&e->dispatch_lock);
	engine_release(e);
}

MIG_EXPORT int mig_engine_fd(const mig_engine *e)
{
	return e ? e->epoll_fd : MIG_EINVAL;
}

MIG_EXPORT int mig_engine_port(const mig_engine *e)
{
	if (!e)
		return MIG_EINVAL;
	return e->started ? e->listen_port : MIG_ESTATE;
}

MIG_EXPORT const char *mig_engine_url(const mig_engine *e)
{
	return e ? e->advertised_url : NULL;
}

MIG_EXPORT const char *mig_engine_id(const mig_engine *e)
{
	return e ? e->engine_id : NULL;
}

MIG_EXPORT const char *mig_engine_last_error(const mig_engine *e)
{
	return e ? e->last_error : "";
}

MIG_EXPORT int mig_engine_set_hooks(mig_engine *e, const mig_hooks *hooks, void *user_data)
{
	if (!e || !hooks)
		return MIG_EINVAL;
	pthread_mutex_lock(&e->lock);
	int rc = 0;
	if (e->started) {
		mig__engine_set_error(e, "hooks must be set before mig_engine_start()");
		rc = MIG_ESTATE;
	} else {
		e->hooks = *hooks;
		e->hooks_user_data = user_data;
	}
	pthread_mutex_unlock(&e->lock);
	return rc;
}

static bool domain_name_taken(const mig_engine *e, const char *name)
{
	for (size_t i = 0; i < e->ndomains; i++)
		if (strcmp(e->domains[i].name, name) == 0)
			return true;
	for (size_t i = 0; i < e->nfdomains; i++)
		if (strcmp(e->fdomains[i].name, name) == 0)
			return true;
	return false;
}

MIG_EXPORT int mig_file_domain_register(mig_engine *e, const mig_file_domain *d)
{
	if (!e || !d || !mig__valid_domain_name(d->name) || !d->root || !d->root[0])
		return MIG_EINVAL;
	struct stat st;
	if (stat(d->root, &st) != 0 || !S_ISDIR(st.st_mode)) {
		mig__engine_set_error(e, "file domain %s: %s is not a directory", d->name, d->root);
		return MIG_EINVAL;
	}
	int rc = 0;
	pthread_mutex_lock(&e->lock);
	if (e->started) {
		mig__engine_set_error(e, "domains must be registered before mig_engine_start()");
		rc = MIG_ESTATE;
	} else if (domain_name_taken(e, d->name)) {
		mig__engine_set_error(e, "domain %s already registered", d->name);
		rc = MIG_EEXIST;
	} else if (e->nfdomains >= MIG__MAX_DOMAINS) {
		rc = MIG_EINVAL;
	} else {
		mig__fdomain *nd = mig__realloc(e->fdomains, (e->nfdomains + 1) * sizeof(*nd));
		if (!nd) {
			rc = MIG_ENOMEM;
		} else {
			e->fdomains = nd;
			mig__fdomain *slot = &nd[e->nfdomains];
			memset(slot, 0, sizeof(*slot));
			slot->name = mig__strdup(d->name);
			slot->root = realpath(d->root, NULL);
			if (!slot->name || !slot->root) {
				mig__free(slot->name);
				free(slot->root);
				rc = MIG_ENOMEM;
			} else {
				/* realpath() allocates with malloc: keep ours uniform. */
				char *root = mig__strdup(slot->root);
				free(slot->root);
				slot->root = root;
				if (!root) {
					mig__free(slot->name);
					rc = MIG_ENOMEM;
				} else {
					slot->version = d->version;
					slot->append_only = d->append_only != 0;
					e->nfdomains++;
				}
			}
		}
	}
	pthread_mutex_unlock(&e->lock);
	return rc;
}

MIG_EXPORT int mig_light_domain_register(mig_engine *e, const mig_light_domain *d,
					 void *user_data)
{
	if (!e || !d || !d->extract || !d->merge || !mig__valid_domain_name(d->name))
		return MIG_EINVAL;
	if (d->type_name && (strlen(d->type_name) > MIG__TYPE_NAME_MAX || strchr(d->type_name, ' ')))
		return MIG_EINVAL;
	int rc = 0;
	pthread_mutex_lock(&e->lock);
	if (e->started) {
		mig__engine_set_error(e, "domains must be registered before mig_engine_start()");
		rc = MIG_ESTATE;
		goto out;
	}
	if (e->ndomains >= MIG__MAX_DOMAINS) {
		mig__engine_set_error(e, "at most %d domains", MIG__MAX_DOMAINS);
		rc = MIG_EINVAL;
		goto out;
	}
	if (domain_name_taken(e, d->name)) {
		mig__engine_set_error(e, "domain %s already registered", d->name);
		rc = MIG_EEXIST;
		goto out;
	}
	mig__domain *nd = mig__realloc(e->domains, (e->ndomains + 1) * sizeof(*nd));
	if (!nd) {
		rc = MIG_ENOMEM;
		goto out;
	}
	e->domains = nd;
	mig__domain *slot = &nd[e->ndomains];
	memset(slot, 0, sizeof(*slot));
	slot->name = mig__strdup(d->name);
	slot->type_name = mig__strdup(d->type_name ? d->type_name : "");
	if (!slot->name || !slot->type_name) {
		mig__free(slot->name);
		mig__free(slot->type_name);
		rc = MIG_ENOMEM;
		goto out;
	}
	slot->version = d->version;
	slot->extract = d->extract;
	slot->merge = d->merge;
	slot->user_data = user_data;
	e->ndomains++;
out:
	pthread_mutex_unlock(&e->lock);
	return rc;
}

/* ------------------------------------------------------------------ buffers */

MIG_EXPORT void *mig_buf_reserve(mig_buf *b, size_t len)
{
	if (!b || b->error)
		return NULL;
	if (len > b->max || b->len > b->max - len) {
		b->error = MIG_ETOOBIG;
		return NULL;
	}
	size_t need = b->len + len;
	if (need > b->cap) {
		size_t cap = b->cap ? b->cap : 256;
		while (cap < need)
			cap *= 2;
		uint8_t *p = mig__realloc(b->data, cap);
		if (!p) {
			b->error = MIG_ENOMEM;
			return NULL;
		}
		b->data = p;
		b->cap = cap;
	}
	void *p = b->data + b->len;
	b->len += len;
	return p;
}

MIG_EXPORT int mig_buf_append(mig_buf *b, const void *data, size_t len)
{
	if (!b || (len && !data))
		return MIG_EINVAL;
	void *p = mig_buf_reserve(b, len);
	if (!p)
		return b->error;
	if (len)
		memcpy(p, data, len);
	return 0;
}

/* ------------------------------------------------------------------ connections */

mig__conn_rec *mig__engine_conn(mig_engine *e, uint64_t id)
{
	for (mig__conn_rec *c = e->conns; c; c = c->next)
		if (c->id == id)
			return c;
	return NULL;
}

static mig__conn_rec *conn_add(mig_engine *e, uint64_t id, int channel, bool inbound,
			       const char *url)
{
	mig__conn_rec *c = mig__calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->url = mig__strdup(url ? url : "");
	if (!c->url) {
		mig__free(c);
		return NULL;
	}
	c->id = id;
	c->channel = channel;
	c->inbound = inbound;
	c->next = e->conns;
	e->conns = c;
	return c;
}

static void conn_remove(mig_engine *e, uint64_t id)
{
	for (mig__conn_rec **pp = &e->conns; *pp; pp = &(*pp)->next) {
		if ((*pp)->id == id) {
			mig__conn_rec *c = *pp;
			*pp = c->next;
			conn_rec_free(c);
			return;
		}
	}
}

int mig__engine_peer_conn(mig_engine *e, const char *url, uint64_t *conn)
{
	/* Prefer a connection this engine opened to that URL, then one the
	 * peer opened to us advertising that URL. */
	for (mig__conn_rec *c = e->conns; c; c = c->next)
		if (c->channel == MIGWIRE__CHANNEL__CHANNEL_PEER && !c->inbound &&
		    strcmp(c->url, url) == 0) {
			*conn = c->id;
			return 0;
		}
	for (mig__conn_rec *c = e->conns; c; c = c->next)
		if (c->channel == MIGWIRE__CHANNEL__CHANNEL_PEER && c->inbound && c->up &&
		    strcmp(c->url, url) == 0) {
			*conn = c->id;
			return 0;
		}
	int64_t id = mig__transport_connect(e->transport, url, MIGWIRE__CHANNEL__CHANNEL_PEER);
	if (id < 0)
		return (int)id;
	if (!conn_add(e, (uint64_t)id, MIGWIRE__CHANNEL__CHANNEL_PEER, false, url)) {
		mig__transport_close(e->transport, (uint64_t)id, 0, "out of memory");
		return MIG_ENOMEM;
	}
	*conn = (uint64_t)id;
	return 0;
}

int mig__engine_send(mig_engine *e, uint64_t conn, const mig__frame *f, struct mig_migration *m,
		     bool close_after)
{
	mig__msg *msg = NULL;
	int rc = mig__wire_encode(f, e->max_frame, &msg);
	if (rc) {
		mig__engine_log(e, MIG_LOG_ERROR, "cannot encode %s: %s", mig__wire_body_name(f),
				mig_strerror(rc));
		return rc;
	}
	size_t len = msg->len;
	msg->close_after = close_after;
	if (m)
		m->bytes_sent += len;
	mig__transport_send(e->transport, conn, msg);
	return (int)len;
}

void mig__engine_set_fault(mig_engine *e, enum mig__fault_point point,
			   enum mig__fault_action action, unsigned count)
{
	pthread_mutex_lock(&e->lock);
	e->fault_point = point;
	e->fault_action = action;
	e->fault_count = count;
	pthread_mutex_unlock(&e->lock);
}

enum mig__fault_action mig__engine_fault_at(mig_engine *e, enum mig__fault_point point)
{
	if (e->fault_point != point || e->fault_count == 0)
		return 0;
	e->fault_count--;
	return e->fault_action;
}

/* ------------------------------------------------------------------ dispatch */

static void on_transport_event(mig_engine *e, mig__tev *ev)
{
	mig__conn_rec *c;
	if (ev->channel == MIGWIRE__CHANNEL__CHANNEL_ANNOUNCE &&
	    (ev->type == MIG__TEV_UP || ev->type == MIG__TEV_DOWN || ev->type == MIG__TEV_FRAME)) {
		mig__announce_on_event(e, ev);
		return;
	}
	switch (ev->type) {
	case MIG__TEV_UP:
		c = mig__engine_conn(e, ev->conn);
		if (!c && ev->inbound)
			c = conn_add(e, ev->conn, ev->channel, true, ev->peer_url);
		if (c && !c->peer_engine_id)
			c->peer_engine_id = mig__strdup(ev->peer_engine_id ? ev->peer_engine_id : "");
		if (!c || !c->peer_engine_id) {
			/* The peer's id is what a session redirect names: no
			 * connection without it (its DOWN removes the record). */
			mig__transport_close(e->transport, ev->conn, 0, "out of memory");
			break;
		}
		c->up = true;
		mig__engine_log(e, MIG_LOG_DEBUG, "%s connection %llu up (%s %s)",
				ev->inbound ? "inbound" : "outbound",
				(unsigned long long)ev->conn, ev->peer_engine_id, c->url);
		break;
	case MIG__TEV_DOWN:
		mig__engine_log(e, MIG_LOG_INFO, "connection %llu down: %s",
				(unsigned long long)ev->conn, ev->reason);
		conn_remove(e, ev->conn);
		if (ev->channel == MIGWIRE__CHANNEL__CHANNEL_PEER) {
			mig__handoff_on_conn_down(e, ev->conn, ev->error, ev->reason);
			mig__replica_on_conn_down(e, ev->conn);
		}
		break;
	case MIG__TEV_FRAME:
		c = mig__engine_conn(e, ev->conn);
		if (!c)
			break; /* raced with its DOWN */
		if (ev->channel == MIGWIRE__CHANNEL__CHANNEL_PEER && mig__replica_owns(ev->frame))
			mig__replica_on_frame(e, ev->conn, ev->frame, ev->frame_bytes);
		else if (ev->channel == MIGWIRE__CHANNEL__CHANNEL_PEER)
			mig__handoff_on_frame(e, ev->conn, ev->frame, ev->frame_bytes);
		else if (ev->channel == MIGWIRE__CHANNEL__CHANNEL_CONTROL)
			mig__control_on_frame(e, ev->conn, ev->frame);
		else if (ev->channel == MIGWIRE__CHANNEL__CHANNEL_SESSION)
			mig__session_on_frame(e, ev->conn, ev->frame);
		break;
	case MIG__TEV_LOG:
		queue_log(e, (mig_log_level)ev->level, ev->line);
		break;
	case MIG__TEV_CALL:
		ev->call(e, ev->arg);
		ev->arg = NULL; /* consumed */
		break;
	}
}

static void arm_timer(mig_engine *e, uint64_t deadline, uint64_t now)
{
	if (deadline == e->timer_armed_us)
		return;
	e->timer_armed_us = deadline;
	struct itimerspec its;
	memset(&its, 0, sizeof(its));
	if (deadline) {
		uint64_t delta = deadline > now ? deadline - now : 1;
		its.it_value.tv_sec = (time_t)(delta / 1000000u);
		its.it_value.tv_nsec = (long)(delta % 1000000u) * 1000;
	}
	timerfd_settime(e->timer_fd, 0, &its, NULL);
}

MIG_EXPORT int mig_engine_dispatch(mig_engine *e)
{
	if (!e)
		return MIG_EINVAL;
	pthread_mutex_lock(&e->dispatch_lock);
	uint64_t value;
	while (read(e->wake_fd, &value, sizeof(value)) > 0)
		;
	while (read(e->timer_fd, &value, sizeof(value)) > 0)
		;
	mig__evq_item *items = mig__evq_take_all(&e->events);
	pthread_mutex_lock(&e->lock);
	e->timer_armed_us = 0; /* a fired or drained timer is disarmed */
	uint64_t now = mig__now_us();
	while (items) {
		mig__evq_item *next = items->next;
		mig__tev *ev = (mig__tev *)items;
		on_transport_event(e, ev);
		mig__tev_free(ev);
		items = next;
	}
	now = mig__now_us();
	uint64_t deadline = e->started ? mig__handoff_tick(e, now) : 0;
	if (e->started) {
		uint64_t sd = mig__session_tick(e, mig__now_us());
		if (sd && (!deadline || sd < deadline))
			deadline = sd;
		uint64_t ad = mig__announce_tick(e, mig__now_us());
		if (ad && (!deadline || ad < deadline))
			deadline = ad;
		uint64_t rd = mig__replica_tick(e, mig__now_us());
		if (rd && (!deadline || rd < deadline))
			deadline = rd;
	}
	arm_timer(e, deadline, mig__now_us());
	pthread_mutex_unlock(&e->lock);
	if (e->on_log)
		deliver_logs(e);
	pthread_mutex_unlock(&e->dispatch_lock);
	return 0;
}

MIG_EXPORT int mig_engine_run(mig_engine *e, int timeout_ms)
{
	if (!e)
		return MIG_EINVAL;
	atomic_store(&e->stop_run, false);
	uint64_t end = timeout_ms >= 0 ? mig__now_us() + (uint64_t)timeout_ms * 1000u : 0;
	while (!atomic_load(&e->stop_run)) {
		int wait = -1;
		if (timeout_ms >= 0) {
			uint64_t now = mig__now_us();
			if (now >= end)
				break;
			wait = (int)((end - now + 999) / 1000);
		}
		struct pollfd pfd = {.fd = e->epoll_fd, .events = POLLIN};
		int n = poll(&pfd, 1, wait);
		if (n < 0 && errno != EINTR)
			return MIG_ESYSTEM;
		int rc = mig_engine_dispatch(e);
		if (rc)
			return rc;
	}
	return 0;
}

MIG_EXPORT void mig_engine_stop(mig_engine *e)
{
	if (!e)
		return;
	atomic_store(&e->stop_run, true);
	mig__engine_wake(e);
}

/* ------------------------------------------------------------------ migrations */

void mig__migration_unref(struct mig_migration *m)
{
	if (!m)
		return;
	if (atomic_fetch_sub(&m->refs, 1) != 1)
		return;
	mig__free(m->user);
	mig__free(m->peer_url);
	mig__free(m->peer_engine_id);
	mig__free(m->peer_app_url);
	mig__free(m->peer_session_url);
	mig__free(m);
}

MIG_EXPORT int mig_migrate(mig_engine *e, const char *user, const char *url, mig_migration **out)
{
	if (out)
		*out = NULL;
	if (!e || !mig__valid_user(user))
		return MIG_EINVAL;
	struct mig_migration *m = NULL;
	pthread_mutex_lock(&e->lock);
	int rc = mig__handoff_start(e, user, url, 0, 0, &m);
	if (!rc && out) {
		atomic_fetch_add(&m->refs, 1);
		*out = m;
	}
	pthread_mutex_unlock(&e->lock);
	if (!rc)
		mig__engine_wake(e);
	return rc;
}

MIG_EXPORT int mig_migration_wait(mig_migration *m, int timeout_ms)
{
	if (!m)
		return MIG_EINVAL;
	uint64_t end = timeout_ms >= 0 ? mig__now_us() + (uint64_t)timeout_ms * 1000u : 0;
	for (;;) {
		mig_engine *e = m->engine;
		if (!e) { /* ended and retired, or the engine is freed */
			if (m->state == MIG_MIGRATION_COMMITTED)
				return 0;
			if (m->state == MIG_MIGRATION_ABORTED)
				return m->error ? m->error : MIG_ECANCELED;
			return m->error ? m->error : MIG_ECLOSED;
		}
		pthread_mutex_lock(&e->lock);
		mig_migration_state state = m->state;
		int error = m->error;
		pthread_mutex_unlock(&e->lock);
		if (state == MIG_MIGRATION_COMMITTED)
			return 0;
		if (state == MIG_MIGRATION_ABORTED)
			return error ? error : MIG_ECANCELED;
		int wait = -1;
		if (timeout_ms >= 0) {
			uint64_t now = mig__now_us();
			if (now >= end)
				return MIG_ETIMEDOUT;
			wait = (int)((end - now + 999) / 1000);
		}
		/* Short polls: another thread may be the one dispatching. */
		if (wait < 0 || wait > 50)
			wait = 50;
		struct pollfd pfd = {.fd = e->epoll_fd, .events = POLLIN};
		poll(&pfd, 1, wait);
		int rc = mig_engine_dispatch(e);
		if (rc)
			return rc;
	}
}

MIG_EXPORT int mig_migration_cancel(mig_migration *m)
{
	if (!m)
		return MIG_EINVAL;
	mig_engine *e = m->engine;
	if (!e) /* the engine let go of it: it ended, or the engine is freed */
		return m->phase == MIG__DONE ? MIG_ESTATE : MIG_EINVAL;
	int rc = 0;
	pthread_mutex_lock(&e->lock);
	if (m->state != MIG_MIGRATION_RUNNING || m->phase == MIG__SRC_COMMIT ||
	    m->phase == MIG__DONE)
		rc = MIG_ESTATE;
	else
		m->cancel_requested = true;
	pthread_mutex_unlock(&e->lock);
	if (!rc)
		mig__engine_wake(e);
	return rc;
}

MIG_EXPORT int mig_migration_info(mig_migration *m, mig_migration_stats *s)
{
	if (!m || !s)
		return MIG_EINVAL;
	mig_engine *e = m->engine;
	if (e)
		pthread_mutex_lock(&e->lock);
	s->state = m->state;
	s->error = m->error;
	s->bytes_sent = m->bytes_sent;
	s->bytes_received = m->bytes_received;
	uint64_t end = m->ended_us ? m->ended_us : mig__now_us();
	s->duration_us = end - m->started_us;
	s->downtime_us = m->downtime_us;
	s->rounds = m->rounds;
	memcpy(s->round_bytes, m->round_bytes, sizeof(s->round_bytes));
	if (e)
		pthread_mutex_unlock(&e->lock);
	return 0;
}

MIG_EXPORT const char *mig_migration_id(const mig_migration *m)
{
	return m ? m->mid : NULL;
}

MIG_EXPORT void mig_migration_free(mig_migration *m)
{
	mig__migration_unref(m);
}
