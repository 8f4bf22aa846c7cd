/* The engine's dispatch loop: the event queue from the transport, the
 * timer, waking dispatch from other threads, the log queue, the
 * connection table and sending frames, and the fault hooks of the
 * white-box tests. */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include "announce.h"
#include "engine_int.h"
#include "replica.h"

#define MAX_PENDING_LOGS 1000

/* ------------------------------------------------------------------ logs, waking */

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

/* ------------------------------------------------------------------ connections */

mig__conn_rec *mig__engine_conn(mig_engine *e, uint64_t id)
{
	for (mig__conn_rec *c = e->conns; c; c = c->next)
		if (c->id == id)
			return c;
	return NULL;
}

void mig__conn_rec_free(mig__conn_rec *c)
{
	mig__free(c->url);
	mig__free(c->peer_engine_id);
	mig__free(c->session_user);
	mig__free(c);
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
			mig__conn_rec_free(c);
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

/* ------------------------------------------------------------------ faults (tests) */

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
