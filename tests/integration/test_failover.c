/* Emergency failover (docs/FAILOVER.md): a primary engine replicates a
 * user's light state to a standby engine over loopback; the standby is
 * promoted by the control command or the API; an old primary that comes
 * back is refused as superseded and stops serving the user; bad updates are
 * refused with a reason and change nothing.
 *
 * Process-level cases (SIGKILL of the primary mid-assembly with the loss
 * window printed, SIGSTOP/SIGCONT of the primary) fork a child that runs
 * the primary engine; the standby runs in the test process.
 *
 * The test app ("assembly"): per user a step counter and a blob of recorded
 * frames that grows with every step, in two light domains; extract works on
 * a served user (replication extracts while the user is served). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "engine_int.h"
#include "migrate/client.h"
#include "migrate/control.h"
#include "migrate/replicate.h"
#include "replog.h"
#include "support.h"

#define NUSERS 4
#define BLOB_MAX 4096

struct fuser {
	char id[32];
	bool present, active, paused;
	uint64_t step;
	uint64_t extract_step; /* the step the last extraction saw */
	uint8_t blob[BLOB_MAX];
	size_t bloblen;
	int incoming, activated, released, dropped, merges, paused_n;
};

struct fapp {
	const char *name;
	pthread_mutex_t lock;
	struct fuser users[NUSERS];
	int violations;
	char violation[256];
	struct replog log;
	int fail_merge;
	/* Child process: the pipe the events are reported on (-1: none). */
	int report_fd;
};

static struct fuser *fuser_find(struct fapp *a, const char *user)
{
	for (int i = 0; i < NUSERS; i++)
		if (strcmp(a->users[i].id, user) == 0)
			return &a->users[i];
	return NULL;
}

static void violate(struct fapp *a, const char *what, const char *user)
{
	if (!a->violations++)
		snprintf(a->violation, sizeof(a->violation), "%s: %s %s", a->name, what, user);
}

static int extract_progress(mig_engine *e, const char *user, mig_buf *out, void *ud)
{
	(void)e;
	struct fapp *a = ud;
	pthread_mutex_lock(&a->lock);
	struct fuser *u = fuser_find(a, user);
	int rc = -1;
	if (u && u->present) {
		uint8_t b[8];
		u->extract_step = u->step;
		for (int i = 0; i < 8; i++)
			b[i] = (uint8_t)(u->step >> (8 * i));
		rc = mig_buf_append(out, b, sizeof(b));
	} else {
		violate(a, "extract of absent", user);
	}
	pthread_mutex_unlock(&a->lock);
	return rc;
}

static int extract_frames(mig_engine *e, const char *user, mig_buf *out, void *ud)
{
	(void)e;
	struct fapp *a = ud;
	pthread_mutex_lock(&a->lock);
	struct fuser *u = fuser_find(a, user);
	int rc = u && u->present ? mig_buf_append(out, u->blob, u->bloblen) : -1;
	pthread_mutex_unlock(&a->lock);
	return rc;
}

static int merge_progress(mig_engine *e, const char *user, uint32_t v, const void *d, size_t n,
			  void *ud)
{
	(void)e;
	(void)v;
	struct fapp *a = ud;
	pthread_mutex_lock(&a->lock);
	struct fuser *u = fuser_find(a, user);
	int rc = -1;
	if (u && !u->active && n == 8 && !a->fail_merge) {
		const uint8_t *b = d;
		u->step = 0;
		for (int i = 0; i < 8; i++)
			u->step |= (uint64_t)b[i] << (8 * i);
		u->present = true;
		u->merges++;
		rc = 0;
	} else if (u && u->active) {
		violate(a, "merge into active", user);
	}
	pthread_mutex_unlock(&a->lock);
	return rc;
}

static int merge_frames(mig_engine *e, const char *user, uint32_t v, const void *d, size_t n,
			void *ud)
{
	(void)e;
	(void)v;
	struct fapp *a = ud;
	pthread_mutex_lock(&a->lock);
	struct fuser *u = fuser_find(a, user);
	int rc = -1;
	if (u && !u->active && n <= BLOB_MAX) {
		memcpy(u->blob, d, n);
		u->bloblen = n;
		u->present = true;
		rc = 0;
	}
	pthread_mutex_unlock(&a->lock);
	return rc;
}

static int on_pause(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct fapp *a = ud;
	pthread_mutex_lock(&a->lock);
	struct fuser *u = fuser_find(a, user);
	if (u) {
		if (!u->active)
			violate(a, "pause of unserved", user);
		u->active = false;
		u->paused = true;
		u->paused_n++;
	}
	pthread_mutex_unlock(&a->lock);
	return 0;
}

static void on_release(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct fapp *a = ud;
	pthread_mutex_lock(&a->lock);
	struct fuser *u = fuser_find(a, user);
	if (u) {
		if (!u->paused)
			violate(a, "release of unpaused", user);
		u->present = u->active = u->paused = false;
		u->released++;
	}
	pthread_mutex_unlock(&a->lock);
}

static int on_incoming(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct fapp *a = ud;
	pthread_mutex_lock(&a->lock);
	struct fuser *u = fuser_find(a, user);
	if (u) {
		if (u->present)
			violate(a, "incoming while present", user);
		u->incoming++;
	}
	pthread_mutex_unlock(&a->lock);
	return u ? 0 : -1;
}

static void on_activate(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct fapp *a = ud;
	pthread_mutex_lock(&a->lock);
	struct fuser *u = fuser_find(a, user);
	if (u) {
		if (u->active)
			violate(a, "activate of active", user);
		u->active = u->present = true;
		u->activated++;
	}
	pthread_mutex_unlock(&a->lock);
}

static void on_drop(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct fapp *a = ud;
	pthread_mutex_lock(&a->lock);
	struct fuser *u = fuser_find(a, user);
	if (u) {
		u->present = false;
		u->dropped++;
	}
	pthread_mutex_unlock(&a->lock);
}

static void on_replica(mig_engine *e, const mig_replica_event *ev, void *ud)
{
	struct fapp *a = ud;
	replog_on_replica(e, ev, &a->log);
	pthread_mutex_lock(&a->lock);
	/* One update is in flight at a time and nothing is extracted
	 * meanwhile: at an ACK, the last extraction is the acknowledged one. */
	uint64_t step = 0;
	struct fuser *u = fuser_find(a, ev->user);
	if (u)
		step = u->extract_step;
	pthread_mutex_unlock(&a->lock);
	if (a->report_fd >= 0) {
		/* Child: one line per event, for the parent's loss window;
		 * with an ACK, the step the acknowledged update holds. */
		char line[256];
		int n = snprintf(line, sizeof(line), "ev %d %llu %llu %llu %d\n", (int)ev->type,
				 (unsigned long long)ev->seq, (unsigned long long)step,
				 (unsigned long long)ev->time_us,
				 (int)mig_user_get_state(e, ev->user));
		if (write(a->report_fd, line, (size_t)n) != n)
			_exit(3);
	}
}

static void fapp_init(struct fapp *a, const char *name)
{
	memset(a, 0, sizeof(*a));
	a->name = name;
	a->report_fd = -1;
	pthread_mutex_init(&a->lock, NULL);
	replog_init(&a->log);
	for (int i = 0; i < NUSERS; i++)
		snprintf(a->users[i].id, sizeof(a->users[i].id), "user-%d", i);
}

static mig_engine *fapp_engine(struct fapp *a, const char *id, int port)
{
	mig_engine_options o;
	replog_engine_options(&o, id, &a->log);
	o.listen_port = port;
	o.peer_timeout_ms = 1000;
	mig_engine *e = NULL;
	assert_int_equal(mig_engine_new(&e, &o), 0);
	mig_light_domain d0 = {"progress", "test.Progress", 1, extract_progress, merge_progress};
	mig_light_domain d1 = {"frames", "test.Frames", 1, extract_frames, merge_frames};
	assert_int_equal(mig_light_domain_register(e, &d0, a), 0);
	assert_int_equal(mig_light_domain_register(e, &d1, a), 0);
	mig_hooks h = {.pause = on_pause, .release = on_release, .incoming = on_incoming,
		       .activate = on_activate, .drop = on_drop};
	assert_int_equal(mig_engine_set_hooks(e, &h, a), 0);
	assert_int_equal(mig_engine_start(e), 0);
	assert_int_equal(mig_replica_set_handler(e, on_replica, a), 0);
	return e;
}

/* The app serves user i (step 0, empty blob) and the engine has it. */
static void fapp_add(struct fapp *a, mig_engine *e, int i)
{
	pthread_mutex_lock(&a->lock);
	a->users[i].present = a->users[i].active = true;
	a->users[i].step = 0;
	a->users[i].bloblen = 0;
	pthread_mutex_unlock(&a->lock);
	assert_int_equal(mig_user_add(e, a->users[i].id), 0);
}

/* One assembly step: the counter moves and a 64-byte "frame" is recorded. */
static void fapp_step(struct fapp *a, int i)
{
	pthread_mutex_lock(&a->lock);
	struct fuser *u = &a->users[i];
	u->step++;
	if (u->bloblen + 64 <= BLOB_MAX) {
		test_fill(u->blob + u->bloblen, 64, (unsigned)u->step);
		u->bloblen += 64;
	}
	pthread_mutex_unlock(&a->lock);
}

static void check_no_violations(struct fapp *a)
{
	if (a->violations)
		fail_msg("%s", a->violation);
}

static mig_ctl *ctl_for(mig_engine *e)
{
	mig_ctl_options co = {.url = mig_engine_url(e), .secret = TEST_SECRET,
			      .secret_len = TEST_SECRET_LEN, .timeout_ms = 5000};
	mig_ctl *c = NULL;
	char err[256];
	int rc = mig_ctl_new(&c, &co, err, sizeof(err));
	if (rc)
		fail_msg("mig_ctl_new: %s", err);
	return c;
}

/* ---------------------------------------------------------------- in-process */

/* Light state follows the primary; the standby never shows the replica to
 * its app; unchanged state costs keepalives only; mig_replicate_now sends at
 * once; after the primary is gone the control command promotes the replica
 * with the last acknowledged state at epoch 2. */
static void test_replicate_and_promote(void **state)
{
	(void)state;
	struct fapp pa, sa;
	fapp_init(&pa, "primary");
	fapp_init(&sa, "standby");
	mig_engine *p = fapp_engine(&pa, "primary", 0);
	mig_engine *s = fapp_engine(&sa, "standby", 0);
	mig_engine *both[] = {p, s};
	fapp_add(&pa, p, 0);
	const char *user = pa.users[0].id;

	/* Bad arguments first: nothing starts. */
	mig_replicate_options bad = {.interval_ms = 5};
	assert_int_equal(mig_replicate(p, user, mig_engine_url(s), &bad), MIG_EINVAL);
	assert_int_equal(mig_replicate(p, "nobody", mig_engine_url(s), NULL), MIG_ENOUSER);
	assert_int_equal(mig_replicate(p, user, "not a url", NULL), MIG_EINVAL);
	assert_int_equal(mig_replicate(p, user, mig_engine_url(p), NULL), MIG_EINVAL);
	assert_int_equal(mig_replicate_now(p, user), MIG_ENOUSER);

	mig_replicate_options o = {.interval_ms = 400};
	assert_int_equal(mig_replicate(p, user, mig_engine_url(s), &o), 0);
	assert_int_equal(mig_replicate(p, user, mig_engine_url(s), &o), MIG_EEXIST);
	assert_true(replog_wait(both, 2, &pa.log, MIG_REPLICA_ACKED, 1, 5000));
	assert_true(replog_wait(both, 2, &sa.log, MIG_REPLICA_INSTALLED, 1, 5000));

	/* Steps, each pushed at once by mig_replicate_now (well inside the
	 * 400 ms interval). */
	for (int k = 1; k <= 5; k++) {
		fapp_step(&pa, 0);
		assert_int_equal(mig_replicate_now(p, user), 0);
		assert_true(replog_wait(both, 2, &pa.log, MIG_REPLICA_ACKED, 1 + k, 300));
	}
	mig_replica_info pi, si;
	assert_int_equal(mig_replica_info_get(p, user, &pi), 0);
	assert_int_equal(mig_replica_info_get(s, user, &si), 0);
	assert_true(pi.primary);
	assert_true(si.standby);
	assert_int_equal(pi.acked_seq, si.seq);
	assert_int_equal(pi.epoch, 1);
	assert_int_equal(si.epoch, 1);
	/* The replica is invisible on the standby. */
	assert_int_equal(mig_user_get_state(s, user), MIG_USER_ABSENT);
	assert_int_equal(sa.users[0].incoming, 0);
	assert_false(sa.users[0].present);

	/* Unchanged: keepalives only, no new update installed. */
	uint64_t acked = pi.acked_seq, installed = si.updates;
	test_dispatch_for(both, 2, 1000);
	assert_int_equal(mig_replica_info_get(p, user, &pi), 0);
	assert_int_equal(mig_replica_info_get(s, user, &si), 0);
	assert_int_equal(pi.acked_seq, acked);
	assert_int_equal(si.updates, installed);
	assert_true(pi.bytes > 0);

	/* The primary dies. */
	uint64_t last_step = pa.users[0].step;
	size_t last_len = pa.users[0].bloblen;
	mig_engine_free(p);

	test_runner *run = test_runner_start(s);
	mig_ctl *c = ctl_for(s);
	assert_int_equal(mig_ctl_promote(c, "nobody"), MIG_ENOUSER);
	assert_int_equal(mig_ctl_promote(c, user), 0);
	assert_non_null(strstr(mig_ctl_last_error(c), "epoch 2"));
	assert_int_equal(mig_ctl_promote(c, user), MIG_ENOUSER);
	mig_ctl_free(c);
	test_runner_stop(run);

	assert_int_equal(mig_user_get_state(s, user), MIG_USER_ACTIVE);
	assert_int_equal(mig_user_epoch(s, user), 2);
	assert_true(sa.users[0].active);
	assert_int_equal(sa.users[0].step, last_step);
	assert_int_equal(sa.users[0].bloblen, last_len);
	assert_memory_equal(sa.users[0].blob, pa.users[0].blob, last_len);
	assert_int_equal(sa.users[0].incoming, 1);
	assert_int_equal(sa.users[0].activated, 1);
	struct rev r;
	assert_int_equal(replog_count(&sa.log, MIG_REPLICA_PROMOTED, &r), 1);
	assert_int_equal(r.epoch, 2);
	assert_int_equal(mig_replica_promote(s, user), MIG_ENOUSER);
	check_no_violations(&pa);
	check_no_violations(&sa);
	mig_engine_free(s);
}

/* Replication of a user stopped and started again towards the same standby:
 * the new record starts at seq 1, below what the standby holds, which
 * refuses it as replayed and says what it holds; the primary resends above
 * that at once instead of after an interval (60 s here), so the standby
 * never keeps the older copy longer than one round trip. */
static void test_restart_replication(void **state)
{
	(void)state;
	struct fapp pa, sa;
	fapp_init(&pa, "primary");
	fapp_init(&sa, "standby");
	mig_engine *p = fapp_engine(&pa, "primary", 0);
	mig_engine *s = fapp_engine(&sa, "standby", 0);
	mig_engine *both[] = {p, s};
	fapp_add(&pa, p, 0);
	const char *user = pa.users[0].id;
	mig_replicate_options o = {.interval_ms = 60000};
	assert_int_equal(mig_replicate(p, user, mig_engine_url(s), &o), 0);
	assert_true(replog_wait(both, 2, &sa.log, MIG_REPLICA_INSTALLED, 1, 5000));
	for (int k = 1; k <= 3; k++) {
		fapp_step(&pa, 0);
		assert_int_equal(mig_replicate_now(p, user), 0);
		assert_true(replog_wait(both, 2, &sa.log, MIG_REPLICA_INSTALLED, 1 + k, 3000));
	}
	mig_replica_info si;
	assert_int_equal(mig_replica_info_get(s, user, &si), 0);
	assert_int_equal(si.seq, 4);

	assert_int_equal(mig_replicate_stop(p, user), 0);
	assert_true(replog_wait(both, 2, &pa.log, MIG_REPLICA_STOPPED, 1, 3000));
	int acked = replog_count(&pa.log, MIG_REPLICA_ACKED, NULL);
	fapp_step(&pa, 0);
	assert_int_equal(mig_replicate(p, user, mig_engine_url(s), &o), 0);
	/* seq 1 refused as replayed, then seq 5 installed: well inside the
	 * 60 s interval. */
	assert_true(replog_wait(both, 2, &pa.log, MIG_REPLICA_REFUSED, 1, 3000));
	struct rev r;
	assert_int_equal(replog_count(&pa.log, MIG_REPLICA_REFUSED, &r), 1);
	assert_int_equal(r.error, MIG_EPROTO);
	assert_true(replog_wait(both, 2, &sa.log, MIG_REPLICA_INSTALLED, 5, 3000));
	assert_true(replog_wait(both, 2, &pa.log, MIG_REPLICA_ACKED, acked + 1, 3000));
	mig_replica_info pi;
	assert_int_equal(mig_replica_info_get(p, user, &pi), 0);
	assert_int_equal(mig_replica_info_get(s, user, &si), 0);
	assert_int_equal(si.seq, 5);
	assert_int_equal(pi.acked_seq, 5);
	assert_int_equal(replog_count(&pa.log, MIG_REPLICA_REFUSED, NULL), 1);

	/* What the standby holds is the latest step: promoted, the app there
	 * gets it. */
	uint64_t last_step = pa.users[0].step;
	mig_engine_free(p);
	assert_int_equal(mig_replica_promote(s, user), 0);
	mig_engine *only[] = {s};
	assert_true(replog_wait(only, 1, &sa.log, MIG_REPLICA_PROMOTED, 1, 3000));
	assert_int_equal(sa.users[0].step, last_step);
	check_no_violations(&pa);
	check_no_violations(&sa);
	mig_engine_free(s);
}

/* The primary stops being dispatched (frozen), the standby is promoted; when
 * the primary runs again its next update is refused as superseded and it
 * stops serving the user: in the end the user is active on exactly one. */
static void test_old_primary_superseded(void **state)
{
	(void)state;
	struct fapp pa, sa;
	fapp_init(&pa, "primary");
	fapp_init(&sa, "standby");
	mig_engine *p = fapp_engine(&pa, "primary", 0);
	mig_engine *s = fapp_engine(&sa, "standby", 0);
	mig_engine *both[] = {p, s};
	fapp_add(&pa, p, 1);
	const char *user = pa.users[1].id;
	mig_replicate_options o = {.interval_ms = 50};
	assert_int_equal(mig_replicate(p, user, mig_engine_url(s), &o), 0);
	assert_true(replog_wait(both, 2, &pa.log, MIG_REPLICA_ACKED, 1, 5000));
	fapp_step(&pa, 1);
	assert_true(replog_wait(both, 2, &pa.log, MIG_REPLICA_ACKED, 2, 5000));

	/* Frozen primary: only the standby runs. */
	assert_int_equal(mig_replica_promote(s, user), 0);
	assert_true(replog_wait(&s, 1, &sa.log, MIG_REPLICA_PROMOTED, 1, 5000));
	assert_int_equal(mig_user_get_state(s, user), MIG_USER_ACTIVE);
	assert_int_equal(mig_user_epoch(s, user), 2);
	uint64_t promoted_step = sa.users[1].step;
	/* The frozen primary cannot know yet. */
	assert_int_equal(mig_user_get_state(p, user), MIG_USER_ACTIVE);

	/* It comes back and goes on working: its update is refused. */
	fapp_step(&pa, 1);
	assert_true(replog_wait(both, 2, &pa.log, MIG_REPLICA_SUPERSEDED, 1, 5000));
	struct rev r;
	assert_int_equal(replog_count(&pa.log, MIG_REPLICA_SUPERSEDED, &r), 1);
	assert_int_equal(r.epoch, 2);
	assert_int_equal(mig_user_get_state(p, user), MIG_USER_ABSENT);
	assert_false(pa.users[1].present);
	assert_int_equal(pa.users[1].released, 1);
	assert_int_equal(mig_replica_info_get(p, user, &(mig_replica_info){0}), MIG_ENOUSER);
	assert_true(replog_count(&sa.log, MIG_REPLICA_REJECTED, &r) >= 1);
	assert_non_null(strstr(r.reason, "superseded"));

	/* Nothing more comes; the standby's user is untouched. */
	test_dispatch_for(both, 2, 300);
	assert_int_equal(mig_user_get_state(s, user), MIG_USER_ACTIVE);
	assert_int_equal(mig_user_get_state(p, user), MIG_USER_ABSENT);
	assert_true(sa.users[1].active);
	assert_int_equal(sa.users[1].step, promoted_step);
	assert_int_equal(sa.users[1].activated, 1);

	/* The promoted user replicates onward at its new epoch (back to the
	 * old primary, now a standby). */
	assert_int_equal(mig_replicate(s, user, mig_engine_url(p), &o), 0);
	assert_true(replog_wait(both, 2, &pa.log, MIG_REPLICA_INSTALLED, 1, 5000));
	mig_replica_info pi;
	assert_int_equal(mig_replica_info_get(p, user, &pi), 0);
	assert_int_equal(pi.epoch, 2);
	assert_true(pi.standby);
	check_no_violations(&pa);
	check_no_violations(&sa);
	mig_engine_free(p);
	mig_engine_free(s);
}

/* Opt-in automatic promotion: nothing from the primary for 400 ms and no
 * link to it: the standby promotes by itself. Not before: while updates and
 * keepalives flow it stays a standby. */
static void test_auto_promote(void **state)
{
	(void)state;
	struct fapp pa, sa;
	fapp_init(&pa, "primary");
	fapp_init(&sa, "standby");
	mig_engine *p = fapp_engine(&pa, "primary", 0);
	mig_engine *s = fapp_engine(&sa, "standby", 0);
	mig_engine *both[] = {p, s};
	assert_int_equal(mig_replica_set_auto_promote(NULL, 1), MIG_EINVAL);
	assert_int_equal(mig_replica_set_auto_promote(s, 400), 0);
	fapp_add(&pa, p, 2);
	const char *user = pa.users[2].id;
	fapp_step(&pa, 2);
	mig_replicate_options o = {.interval_ms = 50};
	assert_int_equal(mig_replicate(p, user, mig_engine_url(s), &o), 0);
	assert_true(replog_wait(both, 2, &pa.log, MIG_REPLICA_ACKED, 1, 5000));
	/* Unchanged state: keepalives keep the standby from promoting. */
	test_dispatch_for(both, 2, 1000);
	assert_int_equal(replog_count(&sa.log, MIG_REPLICA_PROMOTED, NULL), 0);
	assert_int_equal(mig_user_get_state(s, user), MIG_USER_ABSENT);
	mig_engine_free(p);
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	assert_true(replog_wait(&s, 1, &sa.log, MIG_REPLICA_PROMOTED, 1, 5000));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
	print_message("# auto-promotion %ld ms after the primary was freed (threshold 400 ms)\n",
		      ms);
	assert_true(ms >= 250); /* 400 ms after the last keepalive, sent every 50 ms */
	assert_int_equal(mig_user_get_state(s, user), MIG_USER_ACTIVE);
	assert_int_equal(sa.users[2].step, 1);
	assert_int_equal(mig_user_epoch(s, user), 2);
	check_no_violations(&sa);
	mig_engine_free(s);
}

/* Automatic promotion of a frozen primary: its engine's I/O thread keeps
 * the peer link up (as a SIGSTOPped process's kernel keeps its sockets),
 * but nothing is dispatched, so no update or keepalive comes. The standby
 * promotes after `ms` of silence anyway, and the primary, once it runs
 * again, is told it was superseded. */
static void test_auto_promote_frozen(void **state)
{
	(void)state;
	struct fapp pa, sa;
	fapp_init(&pa, "primary");
	fapp_init(&sa, "standby");
	mig_engine *p = fapp_engine(&pa, "primary", 0);
	mig_engine *s = fapp_engine(&sa, "standby", 0);
	mig_engine *both[] = {p, s};
	assert_int_equal(mig_replica_set_auto_promote(s, 400), 0);
	fapp_add(&pa, p, 3);
	const char *user = pa.users[3].id;
	fapp_step(&pa, 3);
	mig_replicate_options o = {.interval_ms = 50};
	assert_int_equal(mig_replicate(p, user, mig_engine_url(s), &o), 0);
	assert_true(replog_wait(both, 2, &pa.log, MIG_REPLICA_ACKED, 1, 5000));
	test_dispatch_for(both, 2, 600); /* keepalives hold it off */
	assert_int_equal(replog_count(&sa.log, MIG_REPLICA_PROMOTED, NULL), 0);

	/* Frozen: only the standby is dispatched. */
	struct timespec t0, t1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	assert_true(replog_wait(&s, 1, &sa.log, MIG_REPLICA_PROMOTED, 1, 5000));
	clock_gettime(CLOCK_MONOTONIC, &t1);
	long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
	print_message("# auto-promotion %ld ms after the primary froze, its link up "
		      "(threshold 400 ms)\n",
		      ms);
	assert_true(ms >= 300 && ms < 3000);
	assert_int_equal(mig_user_get_state(s, user), MIG_USER_ACTIVE);
	assert_int_equal(sa.users[3].step, 1);

	/* It thaws: superseded, and the user is only on the standby. */
	assert_true(replog_wait(both, 2, &pa.log, MIG_REPLICA_SUPERSEDED, 1, 5000));
	assert_int_equal(mig_user_get_state(p, user), MIG_USER_ABSENT);
	assert_int_equal(mig_user_get_state(s, user), MIG_USER_ACTIVE);
	check_no_violations(&pa);
	check_no_violations(&sa);
	mig_engine_free(p);
	mig_engine_free(s);
}

/* ---------------------------------------------------------------- bad input */

struct sender {
	mig_engine *e;
	const char *url;
};

static void send_update(struct sender *x, const char *user, uint64_t epoch, uint64_t seq,
			bool keepalive, const char *dom, uint32_t version, const char *data)
{
	Migwire__DomainData dd = MIGWIRE__DOMAIN_DATA__INIT;
	Migwire__DomainData dd2 = MIGWIRE__DOMAIN_DATA__INIT;
	Migwire__DomainData *ptrs[2] = {&dd, &dd2};
	Migwire__ReplicaUpdate u = MIGWIRE__REPLICA_UPDATE__INIT;
	u.user = (char *)user;
	u.epoch = epoch;
	u.seq = seq;
	if (keepalive) {
		u.has_keepalive = u.keepalive = true;
	} else {
		dd.name = (char *)dom;
		dd.version = version;
		dd.data.data = (uint8_t *)data;
		dd.data.len = 8;
		dd2.name = (char *)"frames";
		dd2.version = 1;
		dd2.data.data = (uint8_t *)data;
		dd2.data.len = 4;
		u.n_light = 2;
		u.light = ptrs;
	}
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_REPLICA_UPDATE;
	f.replica_update = &u;
	pthread_mutex_lock(&x->e->lock);
	uint64_t conn = 0;
	assert_int_equal(mig__engine_peer_conn(x->e, x->url, &conn), 0);
	assert_true(mig__engine_send(x->e, conn, &f, NULL, false) > 0);
	pthread_mutex_unlock(&x->e->lock);
}

/* Waits for the standby's verdict on what was just sent: its last event. */
static struct rev verdict(mig_engine **es, struct fapp *sa, int before)
{
	struct rev r;
	memset(&r, 0, sizeof(r));
	for (int t = 0; t < 500; t++) {
		test_dispatch_for(es, 3, 10);
		pthread_mutex_lock(&sa->log.lock);
		int n = sa->log.nev;
		if (n > before)
			r = sa->log.ev[n - 1];
		pthread_mutex_unlock(&sa->log.lock);
		if (n > before)
			return r;
	}
	fail_msg("no verdict from the standby");
	return r;
}

static void test_bad_updates(void **state)
{
	(void)state;
	struct fapp xa, ya, sa;
	fapp_init(&xa, "x");
	fapp_init(&ya, "y");
	fapp_init(&sa, "standby");
	mig_engine *x = fapp_engine(&xa, "x-primary", 0);
	mig_engine *y = fapp_engine(&ya, "y-other", 0);
	mig_engine *s = fapp_engine(&sa, "standby", 0);
	mig_engine *all[] = {x, y, s};
	struct sender sx = {x, mig_engine_url(s)}, sy = {y, mig_engine_url(s)};
	const char *user = "user-2";
	struct rev r;
	int n;

	/* A good update: installed at epoch 3 seq 5. */
	n = sa.log.nev;
	send_update(&sx, user, 3, 5, false, "progress", 1, "AAAAAAAA");
	r = verdict(all, &sa, n);
	assert_int_equal(r.type, MIG_REPLICA_INSTALLED);

#define REFUSED(call, code, needle)                                     \
	do {                                                            \
		n = sa.log.nev;                                         \
		call;                                                   \
		r = verdict(all, &sa, n);                               \
		assert_int_equal(r.type, MIG_REPLICA_REJECTED);         \
		assert_int_equal(r.error, code);                        \
		if (!strstr(r.reason, needle))                          \
			fail_msg("reason \"%s\" lacks \"%s\"", r.reason, needle); \
	} while (0)

	REFUSED(send_update(&sx, user, 2, 6, false, "progress", 1, "BBBBBBBB"), MIG_ESTATE,
		"stale epoch 2");
	REFUSED(send_update(&sx, user, 3, 5, false, "progress", 1, "CCCCCCCC"), MIG_EPROTO,
		"replayed sequence 5");
	REFUSED(send_update(&sx, user, 3, 4, false, "progress", 1, "CCCCCCCC"), MIG_EPROTO,
		"replayed sequence 4");
	REFUSED(send_update(&sx, user, 3, 9, true, NULL, 0, NULL), MIG_EUNKNOWN,
		"no replica at that seq");
	REFUSED(send_update(&sx, user, 3, 6, false, "nosuch", 1, "DDDDDDDD"), MIG_ENODOMAIN,
		"domain nosuch is not registered");
	REFUSED(send_update(&sx, user, 3, 6, false, "progress", 9, "DDDDDDDD"), MIG_EVERSION,
		"version 9 is newer");
	REFUSED(send_update(&sy, user, 3, 50, false, "progress", 1, "EEEEEEEE"), MIG_EEXIST,
		"held for engine x-primary");
	/* A replica for a user active on the standby. */
	fapp_add(&sa, s, 3);
	REFUSED(send_update(&sx, "user-3", 1, 1, false, "progress", 1, "FFFFFFFF"), MIG_EBUSY,
		"is active here");

	/* Malformed frames: the link is closed with the reason, nothing
	 * installed. Epoch 0 passes the encoder but not the standby's check. */
	send_update(&sx, user, 0, 7, false, "progress", 1, "GGGGGGGG");
	test_dispatch_for(all, 3, 200);
	assert_true(replog_logged(&sa.log, "epoch and seq start at 1"));
	/* A keepalive with light state is a protocol error. */
	{
		Migwire__DomainData dd = MIGWIRE__DOMAIN_DATA__INIT;
		Migwire__DomainData *ptrs[1] = {&dd};
		dd.name = (char *)"progress";
		dd.version = 1;
		Migwire__ReplicaUpdate u = MIGWIRE__REPLICA_UPDATE__INIT;
		u.user = (char *)user;
		u.epoch = 3;
		u.seq = 8;
		u.has_keepalive = u.keepalive = true;
		u.n_light = 1;
		u.light = ptrs;
		mig__frame f = MIGWIRE__FRAME__INIT;
		f.body_case = MIGWIRE__FRAME__BODY_REPLICA_UPDATE;
		f.replica_update = &u;
		pthread_mutex_lock(&x->lock);
		uint64_t conn = 0;
		assert_int_equal(mig__engine_peer_conn(x, sx.url, &conn), 0);
		mig__engine_send(x, conn, &f, NULL, false);
		pthread_mutex_unlock(&x->lock);
	}
	test_dispatch_for(all, 3, 200);
	assert_true(replog_logged(&sa.log, "a keepalive carries no light state"));
	/* Bytes that are no frame at all. */
	{
		pthread_mutex_lock(&x->lock);
		uint64_t conn = 0;
		assert_int_equal(mig__engine_peer_conn(x, sx.url, &conn), 0);
		pthread_mutex_unlock(&x->lock);
		test_dispatch_for(all, 3, 200);
		mig__msg *m = mig__msg_new(16);
		assert_non_null(m);
		memset(mig__msg_payload(m), 0xff, 16);
		pthread_mutex_lock(&x->lock);
		mig__transport_send(x->transport, conn, m);
		pthread_mutex_unlock(&x->lock);
		test_dispatch_for(all, 3, 200);
	}

	/* The replica is still the good one: seq 5 at epoch 3, and promoting
	 * it gives exactly its bytes at epoch 4. */
	mig_replica_info si;
	assert_int_equal(mig_replica_info_get(s, user, &si), 0);
	assert_int_equal(si.seq, 5);
	assert_int_equal(si.epoch, 3);
	assert_int_equal(si.updates, 1);
	assert_int_equal(mig_replica_promote(s, user), 0);
	assert_true(replog_wait(all, 3, &sa.log, MIG_REPLICA_PROMOTED, 1, 5000));
	assert_int_equal(mig_user_epoch(s, user), 4);
	assert_int_equal(sa.users[2].step, 0x4141414141414141ull);
	assert_int_equal(sa.users[2].bloblen, 4);
	assert_memory_equal(sa.users[2].blob, "AAAA", 4);
	/* Promoting a user active here, or one with no replica: refused. */
	assert_int_equal(mig_replica_promote(s, "user-3"), MIG_ENOUSER);
	assert_int_equal(mig_replica_promote(s, user), MIG_ENOUSER);
	/* The old primary is now told it is superseded (epoch 3 < 4). */
	n = sa.log.nev;
	send_update(&sx, user, 3, 10, false, "progress", 1, "HHHHHHHH");
	r = verdict(all, &sa, n);
	assert_int_equal(r.type, MIG_REPLICA_REJECTED);
	assert_non_null(strstr(r.reason, "superseded"));
	assert_int_equal(sa.users[2].step, 0x4141414141414141ull);
	check_no_violations(&sa);
	mig_engine_free(x);
	mig_engine_free(y);
	mig_engine_free(s);
}

/* A standby whose merge fails keeps the replica and stays without the user. */
static void test_promote_merge_fails(void **state)
{
	(void)state;
	struct fapp pa, sa;
	fapp_init(&pa, "primary");
	fapp_init(&sa, "standby");
	mig_engine *p = fapp_engine(&pa, "primary", 0);
	mig_engine *s = fapp_engine(&sa, "standby", 0);
	mig_engine *both[] = {p, s};
	fapp_add(&pa, p, 0);
	const char *user = pa.users[0].id;
	fapp_step(&pa, 0);
	mig_replicate_options o = {.interval_ms = 50};
	assert_int_equal(mig_replicate(p, user, mig_engine_url(s), &o), 0);
	assert_true(replog_wait(both, 2, &pa.log, MIG_REPLICA_ACKED, 1, 5000));
	sa.fail_merge = 1;
	test_runner *run = test_runner_start(s);
	mig_ctl *c = ctl_for(s);
	assert_int_equal(mig_ctl_promote(c, user), MIG_ECALLBACK);
	assert_non_null(strstr(mig_ctl_last_error(c), "merge of domain progress failed"));
	mig_ctl_free(c);
	test_runner_stop(run);
	assert_int_equal(mig_user_get_state(s, user), MIG_USER_ABSENT);
	assert_int_equal(sa.users[0].dropped, 1);
	mig_replica_info si;
	assert_int_equal(mig_replica_info_get(s, user, &si), 0);
	assert_true(si.standby);
	sa.fail_merge = 0;
	assert_int_equal(mig_replica_promote(s, user), 0);
	assert_true(replog_wait(both, 2, &sa.log, MIG_REPLICA_PROMOTED, 1, 5000));
	assert_int_equal(sa.users[0].step, 1);
	assert_true(replog_wait(both, 2, &pa.log, MIG_REPLICA_SUPERSEDED, 1, 5000));
	assert_int_equal(mig_user_get_state(p, user), MIG_USER_ABSENT);
	check_no_violations(&pa);
	check_no_violations(&sa);
	mig_engine_free(p);
	mig_engine_free(s);
}

/* ---------------------------------------------------------------- processes */

static bool pump(mig_engine **es, size_t n, mig_client *cl, int want, int ms);
static bool pump_attached_to(mig_engine **es, size_t n, mig_client *cl, const char *engine,
			     int ms);

static int free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(fd >= 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	assert_int_equal(bind(fd, (struct sockaddr *)&a, sizeof(a)), 0);
	socklen_t l = sizeof(a);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&a, &l), 0);
	close(fd);
	return ntohs(a.sin_port);
}

static uint64_t wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* The child: a primary engine serving user-0, one assembly step every
 * step_ms, replicating to the standby every interval_ms. Reports every
 * replication event and every step on fd. Runs until killed. */
static void child_primary(int fd, const char *standby_url, unsigned step_ms, unsigned interval_ms)
{
	struct fapp pa;
	fapp_init(&pa, "primary");
	pa.report_fd = fd;
	mig_engine *p = fapp_engine(&pa, "primary", 0);
	fapp_add(&pa, p, 0);
	mig_replicate_options o = {.interval_ms = interval_ms};
	if (mig_replicate(p, pa.users[0].id, standby_url, &o) != 0)
		_exit(2);
	uint64_t next = wall_us();
	bool tokens_sent = false;
	for (;;) {
		uint64_t now = wall_us();
		if (!tokens_sent && replog_count(&pa.log, MIG_REPLICA_ACKED, NULL) > 0) {
			/* What the app hands its client: the engine's URL, a
			 * session token, and a failover token for the standby. */
			char tok[MIG_SESSION_TOKEN_MAX], ftok[MIG_SESSION_TOKEN_MAX];
			char line[2 * MIG_SESSION_TOKEN_MAX + 128];
			if (mig_session_token(p, pa.users[0].id, tok, sizeof(tok)) ||
			    mig_replica_failover_token(p, pa.users[0].id, ftok, sizeof(ftok)))
				_exit(4);
			int n = snprintf(line, sizeof(line), "tokens %s %s %s\n", mig_engine_url(p),
					 tok, ftok);
			if (write(fd, line, (size_t)n) != n)
				_exit(3);
			tokens_sent = true;
		}
		if (now >= next) {
			pthread_mutex_lock(&pa.lock);
			bool serving = pa.users[0].active;
			pthread_mutex_unlock(&pa.lock);
			if (serving) {
				fapp_step(&pa, 0);
				char line[96];
				int n = snprintf(line, sizeof(line), "step %llu %llu\n",
						 (unsigned long long)pa.users[0].step,
						 (unsigned long long)wall_us());
				if (write(fd, line, (size_t)n) != n)
					_exit(3);
			}
			next += step_ms * 1000u;
		}
		struct pollfd pf = {.fd = mig_engine_fd(p), .events = POLLIN};
		poll(&pf, 1, 5);
		mig_engine_dispatch(p);
	}
}

struct childrep {
	int fd;
	char buf[1 << 16];
	size_t len;
	char url[128];
	char tok[MIG_SESSION_TOKEN_MAX];
	char ftok[MIG_SESSION_TOKEN_MAX];
	/* Parsed. */
	uint64_t last_step, last_step_us;
	uint64_t acks, last_ack_seq, last_ack_us, last_ack_step;
	int superseded;
	int superseded_state;
};

/* Reads what the child reported so far. */
static void childrep_read(struct childrep *c)
{
	for (;;) {
		ssize_t n = read(c->fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len);
		if (n <= 0)
			break;
		c->len += (size_t)n;
		char *nl;
		while ((nl = memchr(c->buf, '\n', c->len)) != NULL) {
			*nl = '\0';
			unsigned long long a1, a2, a3, a4;
			int t, st;
			char u[128], t1[MIG_SESSION_TOKEN_MAX], t2[MIG_SESSION_TOKEN_MAX];
			if (strlen(c->buf) < sizeof(t1) * 2 + 100 &&
			    sscanf(c->buf, "tokens %127s %599s %599s", u, t1, t2) == 3) {
				snprintf(c->url, sizeof(c->url), "%s", u);
				snprintf(c->tok, sizeof(c->tok), "%s", t1);
				snprintf(c->ftok, sizeof(c->ftok), "%s", t2);
			} else if (sscanf(c->buf, "step %llu %llu", &a1, &a2) == 2) {
				c->last_step = a1;
				c->last_step_us = a2;
			} else if (sscanf(c->buf, "ev %d %llu %llu %llu %d", &t, &a1, &a3, &a4, &st) ==
				   5) {
				if (t == MIG_REPLICA_ACKED) {
					c->acks++;
					c->last_ack_seq = a1;
					c->last_ack_us = a4;
					c->last_ack_step = a3;
				} else if (t == MIG_REPLICA_SUPERSEDED) {
					c->superseded++;
					c->superseded_state = st;
				}
			}
			size_t used = (size_t)(nl - c->buf) + 1;
			memmove(c->buf, nl + 1, c->len - used);
			c->len -= used;
		}
	}
}

static pid_t spawn_primary(struct childrep *c, const char *standby_url, unsigned step_ms,
			   unsigned interval_ms)
{
	int fds[2];
	assert_int_equal(pipe(fds), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		close(fds[0]);
		child_primary(fds[1], standby_url, step_ms, interval_ms);
		_exit(0);
	}
	close(fds[1]);
	memset(c, 0, sizeof(*c));
	c->fd = fds[0];
	fcntl(c->fd, F_SETFL, O_NONBLOCK);
	return pid;
}

struct ackwait {
	struct childrep *c;
	uint64_t acks;
};

static bool child_acked(void *arg)
{
	struct ackwait *w = arg;
	childrep_read(w->c);
	return w->c->acks >= w->acks && w->c->ftok[0];
}

/* Done-when 1: the primary process is SIGKILLed mid-assembly; the standby
 * is promoted by the control command and resumes at a step no older than
 * the last acknowledged replication. The loss window is printed. */
static void test_sigkill_primary(void **state)
{
	(void)state;
	const unsigned step_ms = 20, interval_ms = 100;
	int port = free_port();
	char url[64];
	snprintf(url, sizeof(url), "ws://127.0.0.1:%d", port);
	struct childrep c;
	pid_t pid = spawn_primary(&c, url, step_ms, interval_ms);
	struct fapp sa;
	fapp_init(&sa, "standby");
	mig_engine *s = fapp_engine(&sa, "standby", port);
	struct ackwait w = {&c, 6};
	if (!test_dispatch_until(&s, 1, child_acked, &w, 15000)) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		fail_msg("the primary's updates were not acknowledged (%llu acks)",
			 (unsigned long long)c.acks);
	}
	/* The wearable's reconnect helper: attached to the primary, with the
	 * standby's URL and failover token in advance. */
	mig_client_options co = {.url = c.url, .token = c.tok, .user = "user-0",
				 .backoff_initial_ms = 50, .backoff_max_ms = 200,
				 .connect_timeout_ms = 1000};
	mig_client *cl = NULL;
	assert_int_equal(mig_client_new(&cl, &co), 0);
	assert_int_equal(mig_client_set_standby(cl, url, c.ftok, 200), 0);
	if (!pump(&s, 1, cl, MIG_CLIENT_ATTACHED, 5000)) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		fail_msg("client not attached to the primary: %s", mig_client_last_error(cl));
	}
	assert_string_equal(mig_client_engine_id(cl), "primary");
	/* Mid-assembly: between two replications. */
	pump(&s, 1, cl, -1, (int)interval_ms / 2);
	assert_int_equal(kill(pid, SIGKILL), 0);
	uint64_t kill_us = wall_us();
	assert_int_equal(waitpid(pid, NULL, 0), pid);
	childrep_read(&c);
	close(c.fd);

	test_runner *run = test_runner_start(s);
	mig_ctl *ctl = ctl_for(s);
	int rc = mig_ctl_promote(ctl, "user-0");
	if (rc)
		fail_msg("promote: %s", mig_ctl_last_error(ctl));
	mig_ctl_free(ctl);
	test_runner_stop(run);
	uint64_t resumed_us = wall_us();
	/* The client fails over to the promoted standby by itself. Until its
	 * I/O thread has seen the killed primary's link close it still says
	 * ATTACHED (to the primary): wait for the standby by name. */
	if (!pump_attached_to(&s, 1, cl, "standby", 10000))
		fail_msg("client not attached at the standby: %s (engine %s)",
			 mig_client_last_error(cl), mig_client_engine_id(cl));
	uint64_t client_us = wall_us();
	mig_client_free(cl);

	assert_int_equal(mig_user_get_state(s, "user-0"), MIG_USER_ACTIVE);
	assert_int_equal(mig_user_epoch(s, "user-0"), 2);
	uint64_t resumed_step = sa.users[0].step;
	/* The replica is at least the last acknowledged update (a later one
	 * may have been installed with its ack lost in the kill). */
	mig_replica_info si;
	assert_int_equal(mig_replica_info_get(s, "user-0", &si), 0);
	assert_true(si.seq >= c.last_ack_seq);
	/* Each step adds one 64-byte frame: the blob is consistent with it. */
	assert_int_equal(sa.users[0].bloblen, resumed_step * 64);
	/* No older than the last acknowledged replication, no newer than
	 * what the primary did. */
	assert_true(resumed_step >= c.last_ack_step);
	assert_true(resumed_step <= c.last_step);
	uint64_t lost_steps = c.last_step - resumed_step;
	double since_ack_ms = c.last_ack_us && kill_us > c.last_ack_us
				      ? (double)(kill_us - c.last_ack_us) / 1000.0
				      : 0.0;
	print_message("# loss window: %llu steps (%.0f ms of assembly at %u ms/step); "
		      "last ack %.1f ms before SIGKILL; primary at step %llu, standby resumed "
		      "at step %llu (replica seq %llu, %llu acks); promotion %.1f ms after kill; "
		      "client attached at the standby %.1f ms after kill\n",
		      (unsigned long long)lost_steps, (double)lost_steps * step_ms, step_ms,
		      since_ack_ms, (unsigned long long)c.last_step,
		      (unsigned long long)resumed_step, (unsigned long long)si.seq,
		      (unsigned long long)c.acks, (double)(resumed_us - kill_us) / 1000.0,
		      (double)(client_us - kill_us) / 1000.0);
	/* The bound the design promises: at most one interval plus the ack's
	 * round trip of steps (generous for loaded machines and ASan). */
	assert_true(lost_steps <= (interval_ms * 10) / step_ms);
	check_no_violations(&sa);
	mig_engine_free(s);
}

/* Done-when 2 at process level: the primary is SIGSTOPped, the standby is
 * promoted, the primary gets SIGCONT: its next update is refused, it stops
 * serving the user, and the user is active only on the standby. */
static void test_sigstop_primary(void **state)
{
	(void)state;
	int port = free_port();
	char url[64];
	snprintf(url, sizeof(url), "ws://127.0.0.1:%d", port);
	struct childrep c;
	pid_t pid = spawn_primary(&c, url, 20, 50);
	struct fapp sa;
	fapp_init(&sa, "standby");
	mig_engine *s = fapp_engine(&sa, "standby", port);
	struct ackwait w = {&c, 3};
	if (!test_dispatch_until(&s, 1, child_acked, &w, 15000)) {
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
		fail_msg("no acknowledged replication");
	}
	assert_int_equal(kill(pid, SIGSTOP), 0);
	test_dispatch_for(&s, 1, 100);
	assert_int_equal(mig_replica_promote(s, "user-0"), 0);
	assert_true(replog_wait(&s, 1, &sa.log, MIG_REPLICA_PROMOTED, 1, 5000));
	uint64_t step = sa.users[0].step;
	assert_int_equal(kill(pid, SIGCONT), 0);
	/* The old primary learns on its next update. */
	bool told = false;
	for (int t = 0; t < 500 && !told; t++) {
		test_dispatch_for(&s, 1, 10);
		childrep_read(&c);
		told = c.superseded > 0;
	}
	uint64_t steps_before = c.last_step;
	test_dispatch_for(&s, 1, 300);
	childrep_read(&c);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	close(c.fd);
	assert_true(told);
	/* On the old primary the user is gone (state reported with the
	 * event: ABSENT) and no step was made after it was told. */
	assert_int_equal(c.superseded_state, MIG_USER_ABSENT);
	assert_int_equal(c.last_step, steps_before);
	assert_int_equal(mig_user_get_state(s, "user-0"), MIG_USER_ACTIVE);
	assert_int_equal(sa.users[0].step, step);
	struct rev r;
	assert_true(replog_count(&sa.log, MIG_REPLICA_REJECTED, &r) >= 1);
	assert_non_null(strstr(r.reason, "superseded"));
	check_no_violations(&sa);
	mig_engine_free(s);
}

/* ---------------------------------------------------------------- client fail-over */

/* Dispatches the engines and the client helper for up to ms, until the
 * helper is in `want` (MIG_CLIENT_FAILED is never wanted: it ends early). */
/* Pumps until the client is attached to the engine named `engine` (or
 * failed, or ms pass); whether it is. */
static bool pump_attached_to(mig_engine **es, size_t n, mig_client *cl, const char *engine,
			     int ms)
{
	for (int waited = 0; waited < ms; waited += 10) {
		pump(es, n, cl, -1, 10);
		mig_client_state st = mig_client_get_state(cl);
		if (st == MIG_CLIENT_ATTACHED && strcmp(mig_client_engine_id(cl), engine) == 0)
			return true;
		if (st == MIG_CLIENT_FAILED)
			return false;
	}
	return false;
}

static bool pump(mig_engine **es, size_t n, mig_client *cl, int want, int ms)
{
	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		struct pollfd pf[4];
		for (size_t i = 0; i < n; i++)
			pf[i] = (struct pollfd){.fd = mig_engine_fd(es[i]), .events = POLLIN};
		pf[n] = (struct pollfd){.fd = mig_client_fd(cl), .events = POLLIN};
		poll(pf, (nfds_t)n + 1, 10);
		for (size_t i = 0; i < n; i++)
			mig_engine_dispatch(es[i]);
		mig_client_dispatch(cl);
		int st = (int)mig_client_get_state(cl);
		if (want >= 0 && st == want)
			return true;
		if (st == MIG_CLIENT_FAILED)
			return false;
		struct timespec t;
		clock_gettime(CLOCK_MONOTONIC, &t);
		long el = (t.tv_sec - t0.tv_sec) * 1000 + (t.tv_nsec - t0.tv_nsec) / 1000000;
		if (el >= ms)
			return want < 0;
	}
}

/* The client's helper is given the standby's URL and a failover token in
 * advance; the primary dies; the helper retries it, then goes to the
 * standby, which refuses it until the user is promoted, then accepts it. */
static void test_client_failover(void **state)
{
	(void)state;
	struct fapp pa, sa;
	fapp_init(&pa, "primary");
	fapp_init(&sa, "standby");
	mig_engine *p = fapp_engine(&pa, "primary", 0);
	mig_engine *s = fapp_engine(&sa, "standby", 0);
	mig_engine *both[] = {p, s};
	fapp_add(&pa, p, 0);
	const char *user = pa.users[0].id;
	char tok[MIG_SESSION_TOKEN_MAX], ftok[MIG_SESSION_TOKEN_MAX];
	assert_int_equal(mig_replica_failover_token(p, user, ftok, sizeof(ftok)), MIG_ENOUSER);
	mig_replicate_options o = {.interval_ms = 50};
	assert_int_equal(mig_replicate(p, user, mig_engine_url(s), &o), 0);
	assert_true(replog_wait(both, 2, &pa.log, MIG_REPLICA_ACKED, 1, 5000));
	assert_int_equal(mig_replica_failover_token(p, user, ftok, 10), MIG_EINVAL);
	assert_int_equal(mig_replica_failover_token(p, user, ftok, sizeof(ftok)), 0);
	assert_int_equal(mig_session_token(p, user, tok, sizeof(tok)), 0);

	mig_client_options co = {.url = mig_engine_url(p), .token = tok, .user = user,
				 .backoff_initial_ms = 50, .backoff_max_ms = 200,
				 .connect_timeout_ms = 1000};
	mig_client *cl = NULL;
	assert_int_equal(mig_client_new(&cl, &co), 0);
	assert_int_equal(mig_client_set_standby(cl, "bad url", ftok, 300), MIG_EINVAL);
	assert_int_equal(mig_client_set_standby(cl, mig_engine_url(s), ftok, 300), 0);
	assert_true(pump(both, 2, cl, MIG_CLIENT_ATTACHED, 5000));
	assert_string_equal(mig_client_engine_id(cl), "primary");

	/* The primary dies. The helper retries it, then fails over to the
	 * standby, which has not promoted the user: refused, retried. */
	fapp_step(&pa, 0);
	mig_engine_free(p);
	assert_true(pump(&s, 1, cl, -1, 1200));
	assert_int_not_equal(mig_client_get_state(cl), MIG_CLIENT_ATTACHED);
	assert_int_not_equal(mig_client_get_state(cl), MIG_CLIENT_FAILED);
	assert_non_null(strstr(mig_client_last_error(cl), "not active"));

	/* Promoted: the helper is accepted there with the same token. */
	assert_int_equal(mig_replica_promote(s, user), 0);
	if (!pump(&s, 1, cl, MIG_CLIENT_ATTACHED, 5000))
		fail_msg("not attached at the standby: %s", mig_client_last_error(cl));
	assert_string_equal(mig_client_engine_id(cl), "standby");
	assert_int_equal(mig_user_get_state(s, user), MIG_USER_ACTIVE);
	mig_client_free(cl);
	check_no_violations(&sa);
	mig_engine_free(s);
}

/* ---------------------------------------------------------------- migratectl */

static const char *migratectl_path;

/* Runs migratectl with the test secret; returns its exit code, stdout in out. */
static int run_ctl(const char *engine_url, const char *cmd, const char *user, const char *to,
		   char *out, size_t out_len)
{
	char secret_file[] = "/tmp/mig-failover-secret-XXXXXX";
	int sfd = mkstemp(secret_file);
	assert_true(sfd >= 0);
	assert_int_equal(write(sfd, TEST_SECRET, TEST_SECRET_LEN), (ssize_t)TEST_SECRET_LEN);
	close(sfd);
	char cmdline[1024];
	snprintf(cmdline, sizeof(cmdline), "%s --engine %s --secret-file %s %s %s%s%s 2>&1",
		 migratectl_path, engine_url, secret_file, cmd, user, to ? " --to " : "",
		 to ? to : "");
	FILE *f = popen(cmdline, "r");
	assert_non_null(f);
	size_t n = fread(out, 1, out_len - 1, f);
	out[n] = '\0';
	int st = pclose(f);
	unlink(secret_file);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_migratectl(void **state)
{
	(void)state;
	struct fapp pa, sa;
	fapp_init(&pa, "primary");
	fapp_init(&sa, "standby");
	mig_engine *p = fapp_engine(&pa, "primary", 0);
	mig_engine *s = fapp_engine(&sa, "standby", 0);
	fapp_add(&pa, p, 0);
	fapp_step(&pa, 0);
	fapp_step(&pa, 0);
	test_runner *rp = test_runner_start(p), *rs = test_runner_start(s);
	char out[1024];
	assert_int_equal(run_ctl(mig_engine_url(p), "replicate", "nobody", mig_engine_url(s), out,
				 sizeof(out)),
			 5);
	int rc = run_ctl(mig_engine_url(p), "replicate", "user-0", mig_engine_url(s), out,
			 sizeof(out));
	if (rc)
		fail_msg("migratectl replicate: %d: %s", rc, out);
	assert_non_null(strstr(out, "replicating user user-0"));
	mig_replica_info si = {0};
	for (int t = 0; t < 500 && !si.standby; t++) {
		usleep(10000);
		mig_replica_info_get(s, "user-0", &si);
	}
	assert_true(si.standby);
	/* Stopped: the standby keeps its replica. */
	rc = run_ctl(mig_engine_url(p), "replicate", "user-0", "none", out, sizeof(out));
	if (rc)
		fail_msg("migratectl replicate --to none: %d: %s", rc, out);
	assert_non_null(strstr(out, "replication of user user-0 stops"));
	for (int t = 0; t < 500; t++) {
		mig_replica_info pi;
		if (mig_replica_info_get(p, "user-0", &pi) == MIG_ENOUSER)
			break;
		usleep(10000);
	}
	assert_int_equal(run_ctl(mig_engine_url(p), "replicate", "user-0", "none", out,
				 sizeof(out)),
			 5);
	test_runner_stop(rp);
	mig_engine_free(p);
	rc = run_ctl(mig_engine_url(s), "promote", "user-0", NULL, out, sizeof(out));
	if (rc)
		fail_msg("migratectl promote: %d: %s", rc, out);
	assert_non_null(strstr(out, "promoted at epoch 2"));
	assert_int_equal(run_ctl(mig_engine_url(s), "promote", "user-0", NULL, out, sizeof(out)),
			 5);
	assert_non_null(strstr(out, "no replica of user user-0"));
	test_runner_stop(rs);
	assert_int_equal(mig_user_get_state(s, "user-0"), MIG_USER_ACTIVE);
	assert_int_equal(sa.users[0].step, 2);
	check_no_violations(&sa);
	mig_engine_free(s);
}

int main(int argc, char **argv)
{
	if (argc > 1)
		migratectl_path = argv[1];
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_replicate_and_promote),
		cmocka_unit_test(test_old_primary_superseded),
		cmocka_unit_test(test_restart_replication),
		cmocka_unit_test(test_bad_updates),
		cmocka_unit_test(test_promote_merge_fails),
		cmocka_unit_test(test_auto_promote),
		cmocka_unit_test(test_auto_promote_frozen),
		cmocka_unit_test(test_sigkill_primary),
		cmocka_unit_test(test_sigstop_primary),
		cmocka_unit_test(test_client_failover),
		cmocka_unit_test(test_migratectl),
	};
	/* Without the migratectl binary (built without tools), its case is
	 * left out rather than reported as skipped. */
	return _cmocka_run_group_tests("tests", tests,
				       MIG__ARRAY_LEN(tests) - (migratectl_path ? 0 : 1), NULL,
				       NULL);
}
