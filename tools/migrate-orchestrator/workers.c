/* migrate-orchestrator: the worker threads and how their results reach
 * the main thread. The poller asks every engine for its users with
 * mig_ctl_users(); each migration runs mig_ctl_migrate() on a thread of its
 * own, and a cancel asked for over the API mig_ctl_cancel() on another.
 * See orchestrator.h. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "orchestrator.h"

/* How every worker thread reaches an engine's control channel: the cluster
 * secret, and the orchestrator's TLS files for wss:// engines. */
static mig_ctl_options ctl_options(const struct orch *o, const char *url, unsigned timeout_ms)
{
	return (mig_ctl_options){.url = url,
				 .secret = o->secret,
				 .secret_len = o->secret_len,
				 .tls_ca_file = o->tls_ca,
				 .tls_cert_file = o->tls_cert,
				 .tls_key_file = o->tls_key,
				 .timeout_ms = timeout_ms};
}

/* ------------------------------------------------------------------ worker results */

void result_free(struct result *r)
{
	if (!r)
		return;
	for (size_t i = 0; i < r->nusers; i++)
		free(r->users[i].user);
	free(r->users);
	free(r->engine_id);
	free(r);
}

void post_result(struct orch *o, struct result *r)
{
	pthread_mutex_lock(&o->lock);
	if (o->res_tail)
		o->res_tail->next = r;
	else
		o->res_head = r;
	o->res_tail = r;
	pthread_mutex_unlock(&o->lock);
	lws_cancel_service(o->ctx);
}

/* A migration thread's last word: record it, join the thread, free the job. */
static void on_job_done(struct orch *o, struct result *r)
{
	struct job *j = r->job;
	on_job_ended(o, r);
	pthread_join(j->thread, NULL);
	if (j->cancelling)
		pthread_join(j->canceller, NULL); /* its answer names the id, not j */
	for (struct job **pp = &o->jobs; *pp; pp = &(*pp)->next)
		if (*pp == j) {
			*pp = j->next;
			break;
		}
	o->njobs--;
	free(j->user);
	free(j->src_url);
	free(j->dst_url);
	free(j->cancel_target);
	free(j);
	poll_soon(o); /* both engines' user lists changed */
}

void drain_results(struct orch *o)
{
	pthread_mutex_lock(&o->lock);
	struct result *r = o->res_head;
	o->res_head = o->res_tail = NULL;
	pthread_mutex_unlock(&o->lock);
	while (r) {
		struct result *next = r->next;
		switch (r->type) {
		case RES_USERS:
		case RES_USERS_FAILED:
			on_users(o, r);
			break;
		case RES_EVENT:
			on_job_event(o, r);
			break;
		case RES_DONE:
			on_job_done(o, r);
			break;
		case RES_CANCEL:
			on_cancel_answer(o, r);
			break;
		}
		result_free(r);
		r = next;
	}
}

void poll_soon(struct orch *o)
{
	pthread_mutex_lock(&o->lock);
	o->poll_now = true;
	pthread_cond_signal(&o->cond);
	pthread_mutex_unlock(&o->lock);
}

/* ------------------------------------------------------------------ poller thread */

static void collect_user(const char *user, mig_user_state state, void *ud)
{
	struct result *r = ud;
	if (r->nusers == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 16;
		struct user_entry *u = realloc(r->users, cap * sizeof(*u));
		if (!u)
			return;
		r->users = u;
		r->cap = cap;
	}
	char *copy = strdup(user);
	if (!copy)
		return;
	r->users[r->nusers].user = copy;
	r->users[r->nusers].state = state;
	r->nusers++;
}

static void pconn_free(struct pconn *p)
{
	mig_ctl_free(p->ctl);
	free(p->id);
	free(p->url);
	free(p);
}

static void poll_engine(struct orch *o, struct pconn *p)
{
	struct result *r = calloc(1, sizeof(*r));
	if (!r || !(r->engine_id = strdup(p->id))) {
		free(r);
		return;
	}
	char err[200] = "";
	if (!p->ctl) {
		mig_ctl_options co = ctl_options(o, p->url, CTL_TIMEOUT_MS);
		if (mig_ctl_new(&p->ctl, &co, err, sizeof(err)) != 0) {
			r->type = RES_USERS_FAILED;
			snprintf(r->reason, sizeof(r->reason), "%s", err);
			post_result(o, r);
			return;
		}
	}
	int n = mig_ctl_users(p->ctl, collect_user, r);
	if (n < 0 || (size_t)n != r->nusers) {
		r->type = RES_USERS_FAILED;
		snprintf(r->reason, sizeof(r->reason), "%s",
			 n < 0 ? mig_strerror(n) : "out of memory");
		mig_ctl_free(p->ctl); /* reconnect next time */
		p->ctl = NULL;
	} else {
		r->type = RES_USERS;
	}
	post_result(o, r);
}

void *poller_main(void *arg)
{
	struct orch *o = arg;
	struct pconn *conns = NULL;
	pthread_mutex_lock(&o->lock);
	while (!o->stopping) {
		/* Copy the targets, then talk to engines without the lock. */
		size_t n = o->ntargets;
		struct target *t = calloc(n ? n : 1, sizeof(*t));
		for (size_t i = 0; t && i < n; i++) {
			t[i].id = strdup(o->targets[i].id);
			t[i].url = strdup(o->targets[i].url);
		}
		o->poll_now = false;
		pthread_mutex_unlock(&o->lock);

		/* Drop connections to engines no longer listed or moved. */
		for (struct pconn **pp = &conns; *pp;) {
			bool keep = false;
			for (size_t i = 0; t && i < n; i++)
				if (t[i].id && t[i].url && strcmp(t[i].id, (*pp)->id) == 0 &&
				    strcmp(t[i].url, (*pp)->url) == 0)
					keep = true;
			if (keep) {
				pp = &(*pp)->next;
			} else {
				struct pconn *dead = *pp;
				*pp = dead->next;
				pconn_free(dead);
			}
		}
		for (size_t i = 0; t && i < n; i++) {
			if (!t[i].id || !t[i].url)
				continue;
			struct pconn *p = conns;
			while (p && strcmp(p->id, t[i].id) != 0)
				p = p->next;
			if (!p) {
				p = calloc(1, sizeof(*p));
				if (!p || !(p->id = strdup(t[i].id)) || !(p->url = strdup(t[i].url))) {
					if (p)
						pconn_free(p);
					continue;
				}
				p->next = conns;
				conns = p;
			}
			poll_engine(o, p);
		}
		for (size_t i = 0; t && i < n; i++) {
			free(t[i].id);
			free(t[i].url);
		}
		free(t);

		pthread_mutex_lock(&o->lock);
		if (o->stopping || o->poll_now)
			continue;
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		uint64_t ns = (uint64_t)ts.tv_nsec + (uint64_t)o->poll_ms * 1000000u;
		ts.tv_sec += (time_t)(ns / 1000000000u);
		ts.tv_nsec = (long)(ns % 1000000000u);
		while (!o->stopping && !o->poll_now &&
		       pthread_cond_timedwait(&o->cond, &o->lock, &ts) == 0)
			;
	}
	pthread_mutex_unlock(&o->lock);
	while (conns) {
		struct pconn *next = conns->next;
		pconn_free(conns);
		conns = next;
	}
	return NULL;
}


/* ------------------------------------------------------------------ migration threads */

static void job_on_event(const mig_event *ev, void *ud)
{
	struct job *j = ud;
	struct result *r = calloc(1, sizeof(*r));
	if (!r)
		return;
	r->type = RES_EVENT;
	r->job = j;
	r->ev = *ev;
	snprintf(r->mid, sizeof(r->mid), "%s", ev->mid ? ev->mid : "");
	snprintf(r->phase, sizeof(r->phase), "%s", ev->phase ? ev->phase : "");
	r->ev.mid = r->ev.user = r->ev.peer_url = r->ev.reason = r->ev.phase = NULL;
	post_result(j->o, r);
}

static void *job_main(void *arg)
{
	struct job *j = arg;
	struct orch *o = j->o;
	struct result *done = calloc(1, sizeof(*done));
	char err[240] = "";
	mig_ctl *ctl = NULL;
	mig_ctl_options co = ctl_options(o, j->src_url, 5000);
	int rc = mig_ctl_new(&ctl, &co, err, sizeof(err));
	mig_event final;
	memset(&final, 0, sizeof(final));
	if (rc == 0 && atomic_load(&j->cancel_early)) {
		/* Canceled over the API before the engine was asked. */
		rc = MIG_ECANCELED;
		snprintf(err, sizeof(err), "%s: canceled before it started", mig_err_name(rc));
	} else if (rc == 0) {
		rc = mig_ctl_migrate(ctl, j->user, j->dst_url, MIGRATE_TIMEOUT_MS, job_on_event, j,
				     &final);
		if (rc)
			snprintf(err, sizeof(err), "%s: %s", mig_err_name(rc),
				 *mig_ctl_last_error(ctl) ? mig_ctl_last_error(ctl)
							  : mig_strerror(rc));
	} else {
		char tmp[180];
		snprintf(tmp, sizeof(tmp), "%.179s", err);
		snprintf(err, sizeof(err), "%s: %s", mig_err_name(rc), tmp);
	}
	mig_ctl_free(ctl);
	if (!done) {
		/* Cannot report: the main thread would never join. Out of
		 * memory this small means the process is going down anyway. */
		abort();
	}
	done->type = RES_DONE;
	done->job = j;
	done->rc = rc;
	done->ev = final;
	snprintf(done->reason, sizeof(done->reason), "%s", err);
	post_result(o, done);
	return NULL;
}

int job_start(struct job *j)
{
	return pthread_create(&j->thread, NULL, job_main, j);
}

/* ------------------------------------------------------------------ cancel threads */

static void *canceller_main(void *arg)
{
	struct job *j = arg;
	struct orch *o = j->o;
	struct result *r = calloc(1, sizeof(*r));
	if (!r)
		abort(); /* as job_main: the main thread joins this one */
	r->type = RES_CANCEL;
	r->migration_id = j->id;
	char err[200] = "";
	mig_ctl *ctl = NULL;
	mig_ctl_options co = ctl_options(o, j->src_url, CTL_TIMEOUT_MS);
	int rc = mig_ctl_new(&ctl, &co, err, sizeof(err));
	if (rc == 0) {
		rc = mig_ctl_cancel(ctl, j->cancel_target);
		snprintf(err, sizeof(err), "%s", mig_ctl_last_error(ctl));
	}
	mig_ctl_free(ctl);
	r->rc = rc;
	snprintf(r->reason, sizeof(r->reason), "%s", err[0] ? err : mig_strerror(rc));
	post_result(o, r);
	return NULL;
}

int cancel_start(struct job *j, const char *mid)
{
	if (!(j->cancel_target = strdup(mid)))
		return ENOMEM;
	int rc = pthread_create(&j->canceller, NULL, canceller_main, j);
	if (rc == 0) {
		j->cancelling = true;
	} else {
		free(j->cancel_target);
		j->cancel_target = NULL;
	}
	return rc;
}
