/* Migration handles: mig_migrate() and the mig_migration_* calls an
 * application makes on what it returns. */
#include <poll.h>
#include <string.h>

#include "engine_int.h"

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
