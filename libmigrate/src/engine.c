/* The engine's lifecycle: options (checked, defaulted, copied), mig_engine_new,
 * _start and _free, the accessors, hook and domain registration, and the
 * mig_buf the extract callbacks write into. The dispatch loop is in
 * engine_dispatch.c, migration handles in engine_migration.c, the handoff
 * itself in handoff.c. */
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

/* ------------------------------------------------------------------ errors */

void mig__engine_set_error(mig_engine *e, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(e->last_error, sizeof(e->last_error), fmt, ap);
	va_end(ap);
}


/* ------------------------------------------------------------------ options */

static int dup_opt(char **dst, const char *src)
{
	if (!src)
		return 0;
	*dst = mig__strdup(src);
	return *dst ? 0 : MIG_ENOMEM;
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
		mig__conn_rec_free(c);
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
