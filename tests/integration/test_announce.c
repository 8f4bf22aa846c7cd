/* The announce channel, engine side (announce.c), against a stand-in
 * orchestrator: the library's own transport listening on `mig-announce`,
 * as tools/migrate-orchestrator does. Checks the Announce and Heartbeat
 * contents and cadence, reconnection after the orchestrator drops the link
 * or was not there at all, that an unreachable orchestrator neither blocks
 * dispatch nor a migration, that a wrong secret keeps the engine out, and
 * that bad options are refused. The orchestrator program itself is tested
 * in tests/browser (suites 'orchestrator' and 'browser'). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "support.h"
#include "transport.h"
#include "wire.h"

#define OTHER_SECRET "another-cluster-secret-fedcba9876543210"
#define MAX_HB 256

/* ---------------------------------------------------------------- stand-in orchestrator */

struct orch {
	mig__transport *t;
	mig__evq q;
	int port;
	int ups, downs, announces, heartbeats;
	uint64_t conn;
	char peer_id[64];
	char engine_id[64], url[160], app_url[160], version[32];
	unsigned heartbeat_ms;
	uint64_t seq;      /* last seq on the current connection */
	int bad_seq;       /* heartbeats whose seq was not previous + 1 */
	int before_announce; /* heartbeats before the connection's Announce */
	bool announced;
	uint32_t users;    /* from the last heartbeat */
	uint64_t hb_us[MAX_HB];  /* when each heartbeat arrived here */
	uint64_t hb_up[MAX_HB];  /* its uptime_us: when the engine sent it */
	bool q_ready;      /* q is initialised (and so must be destroyed) */
};

/* Everything a case starts lives here, on the heap, and teardown() stops
 * it. cmocka runs teardown even when a check fails and longjmps out of the
 * case, so a failing case cannot leave a transport thread writing into its
 * dead stack frame, or engines still dialling, for the next case to trip
 * over. */
struct fixture {
	struct orch o;
	mig_engine *e[2];
	char url[64];      /* orchestrator URL given to the engines */
	int refusals;      /* record_refusal()'s counter (the engine's user_data) */
};

static uint64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void orch_start(struct orch *o, const char *secret, int port)
{
	memset(o, 0, sizeof(*o));
	assert_int_equal(mig__evq_init(&o->q), 0);
	o->q_ready = true;
	mig__transport_cfg cfg;
	memset(&cfg, 0, sizeof(cfg));
	cfg.listen = true;
	cfg.listen_port = port;
	cfg.secret = secret;
	cfg.secret_len = strlen(secret);
	cfg.engine_id = "orchestrator";
	cfg.max_frame = 64 * 1024;
	cfg.accept_channels = 1u << MIGWIRE__CHANNEL__CHANNEL_ANNOUNCE;
	cfg.events = &o->q;
	cfg.log_level = MIG_LOG_ERROR;
	cfg.name = "orchestrator";
	char err[200] = "";
	assert_int_equal(mig__transport_new(&o->t, &cfg, err, sizeof(err)), 0);
	assert_int_equal(mig__transport_start(o->t), 0);
	o->port = mig__transport_port(o->t);
}

/* Also called by teardown(), so it copes with an orchestrator that was
 * never started, half started, or already stopped. */
static void orch_stop(struct orch *o)
{
	mig__transport_free(o->t);
	o->t = NULL;
	if (o->q_ready)
		mig__evq_destroy(&o->q, mig__tev_free_item);
	o->q_ready = false;
}

static void orch_drain(struct orch *o)
{
	mig__evq_item *items = mig__evq_take_all(&o->q);
	while (items) {
		mig__evq_item *next = items->next;
		mig__tev *ev = (mig__tev *)items;
		if (ev->type == MIG__TEV_UP) {
			o->ups++;
			o->conn = ev->conn;
			o->seq = 0;
			o->announced = false;
			snprintf(o->peer_id, sizeof(o->peer_id), "%s", ev->peer_engine_id);
		} else if (ev->type == MIG__TEV_DOWN) {
			o->downs++;
		} else if (ev->type == MIG__TEV_FRAME &&
			   ev->frame->body_case == MIGWIRE__FRAME__BODY_ANNOUNCE) {
			const Migwire__Announce *a = ev->frame->announce;
			o->announces++;
			o->announced = true;
			snprintf(o->engine_id, sizeof(o->engine_id), "%s", a->engine_id);
			snprintf(o->url, sizeof(o->url), "%s", a->url);
			snprintf(o->app_url, sizeof(o->app_url), "%s", a->app_url ? a->app_url : "");
			snprintf(o->version, sizeof(o->version), "%s",
				 a->library_version ? a->library_version : "");
			o->heartbeat_ms = a->heartbeat_ms;
		} else if (ev->type == MIG__TEV_FRAME &&
			   ev->frame->body_case == MIGWIRE__FRAME__BODY_HEARTBEAT) {
			const Migwire__Heartbeat *h = ev->frame->heartbeat;
			if (h->seq != o->seq + 1)
				o->bad_seq++;
			if (!o->announced)
				o->before_announce++;
			o->seq = h->seq;
			o->users = 0;
			for (size_t i = 0; i < h->n_users; i++)
				o->users += h->users[i]->count;
			if (o->heartbeats < MAX_HB) {
				o->hb_us[o->heartbeats] = mono_us();
				o->hb_up[o->heartbeats] = h->uptime_us;
			}
			o->heartbeats++;
		}
		mig__tev_free(ev);
		items = next;
	}
}

static bool heartbeats_at_least_8(void *arg)
{
	struct orch *o = arg;
	orch_drain(o);
	return o->heartbeats >= 8;
}

static bool users_are_3(void *arg)
{
	struct orch *o = arg;
	orch_drain(o);
	return o->users == 3;
}

static bool reconnected(void *arg)
{
	struct orch *o = arg;
	orch_drain(o);
	return o->ups >= 2 && o->seq >= 2;
}

static bool down_and_up_again(void *arg)
{
	struct orch *o = arg;
	orch_drain(o);
	return o->ups >= 3 && o->seq >= 1;
}

static bool got_up(void *arg)
{
	struct orch *o = arg;
	orch_drain(o);
	return o->ups >= 1 && o->heartbeats >= 1;
}

/* Creates and starts an engine into *slot (a fixture slot), so teardown
 * frees it even when starting it fails. */
static mig_engine *engine_new(mig_engine **slot, const char *id, const char *orch_url,
			      unsigned heartbeat_ms)
{
	mig_engine_options opt;
	test_engine_options(&opt, id);
	opt.orchestrator_url = orch_url;
	opt.heartbeat_ms = heartbeat_ms;
	opt.app_url = "tcp://127.0.0.1:9000";
	assert_int_equal(mig_engine_new(slot, &opt), 0);
	assert_int_equal(mig_engine_start(*slot), 0);
	return *slot;
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	if (!f)
		return -1;
	*state = f;
	return 0;
}

/* Engines first: they dial the orchestrator, not the other way round. */
static int teardown(void **state)
{
	struct fixture *f = *state;
	for (size_t i = 0; i < sizeof(f->e) / sizeof(f->e[0]); i++) {
		mig_engine_free(f->e[i]);
		f->e[i] = NULL;
	}
	orch_stop(&f->o);
	free(f);
	return 0;
}

/* ---------------------------------------------------------------- tests */

/* Announce once, then heartbeats on cadence with the user count; a dropped
 * link is re-established and the sequence restarts. */
static void test_announce_heartbeats_reconnect(void **state)
{
	struct fixture *f = *state;
	struct orch *o = &f->o;
	orch_start(o, TEST_SECRET, 0);
	snprintf(f->url, sizeof(f->url), "ws://127.0.0.1:%d", o->port);
	mig_engine *e = engine_new(&f->e[0], "ann-1", f->url, 50);
	assert_int_equal(mig_user_add(e, "alice"), 0);
	assert_int_equal(mig_user_add(e, "bob"), 0);

	assert_true(test_dispatch_until(&e, 1, heartbeats_at_least_8, o, 5000));
	assert_int_equal(o->ups, 1);
	assert_string_equal(o->peer_id, "ann-1");
	assert_int_equal(o->announces, 1);
	assert_string_equal(o->engine_id, "ann-1");
	assert_string_equal(o->url, mig_engine_url(e));
	assert_string_equal(o->app_url, "tcp://127.0.0.1:9000");
	assert_string_equal(o->version, mig_version());
	assert_int_equal(o->heartbeat_ms, 50);
	assert_int_equal(o->users, 2);
	assert_int_equal(o->bad_seq, 0);
	assert_int_equal(o->before_announce, 0);
	/* Cadence, by the engine's own clock (uptime_us): heartbeats keep a
	 * fixed schedule, so one sent late is followed by one sooner, but
	 * over seven intervals they average the interval (a late first one
	 * of up to 70 ms still passes; twice the rate does not). None arrives
	 * more than a scheduling hiccup after the previous one. */
	uint64_t span = o->hb_up[7] - o->hb_up[0];
	if (span < 7 * 40000u || span > 7 * 100000u)
		fail_msg("heartbeats 1 to 8 were sent over %llu us, not about 7 x 50 ms",
			 (unsigned long long)span);
	for (int i = 1; i < 8; i++) {
		uint64_t gap = o->hb_us[i] - o->hb_us[i - 1];
		if (gap > 400000)
			fail_msg("heartbeat %d came %llu us after the previous one", i + 1,
				 (unsigned long long)gap);
	}

	assert_int_equal(mig_user_add(e, "carol"), 0);
	assert_true(test_dispatch_until(&e, 1, users_are_3, o, 2000));

	/* The orchestrator drops the link: the engine comes back by itself
	 * (first retry after about 0.25 s) and starts the sequence again. */
	mig__transport_close(o->t, o->conn, 1000, "test drops the link");
	assert_true(test_dispatch_until(&e, 1, reconnected, o, 5000));
	assert_int_equal(o->announces, 2);
	assert_int_equal(o->bad_seq, 0);
	assert_int_equal(o->before_announce, 0);

	/* The orchestrator sends a frame: nothing is expected on this channel,
	 * so the engine closes the link (and comes back as after any drop). */
	Migwire__StatusRequest sr = MIGWIRE__STATUS_REQUEST__INIT;
	mig__frame frame = MIGWIRE__FRAME__INIT;
	frame.body_case = MIGWIRE__FRAME__BODY_STATUS_REQUEST;
	frame.status_request = &sr;
	mig__msg *m = NULL;
	assert_int_equal(mig__wire_encode(&frame, 0, &m), 0);
	int downs = o->downs;
	mig__transport_send(o->t, o->conn, m);
	assert_true(test_dispatch_until(&e, 1, down_and_up_again, o, 5000));
	assert_true(o->downs > downs);
	assert_int_equal(o->announces, 3);
}

struct two {
	mig_engine *src, *dst;
};

static bool moved(void *arg)
{
	struct two *t = arg;
	return mig_user_get_state(t->dst, "dora") == MIG_USER_ACTIVE &&
	       mig_user_get_state(t->src, "dora") == MIG_USER_ABSENT;
}

/* Nobody listens at the orchestrator URL: dispatch stays quick, a migration
 * between two such engines completes, and once an orchestrator appears at
 * that address the engines announce themselves. */
static void test_orchestrator_down(void **state)
{
	struct fixture *f = *state;
	struct orch *o = &f->o;
	orch_start(o, TEST_SECRET, 0); /* to learn a free port */
	int port = o->port;
	orch_stop(o);
	snprintf(f->url, sizeof(f->url), "ws://127.0.0.1:%d", port);
	mig_engine **e = f->e;
	engine_new(&e[0], "down-a", f->url, 50);
	engine_new(&e[1], "down-b", f->url, 50);
	assert_int_equal(mig_user_add(e[0], "dora"), 0);

	uint64_t worst = 0, end = mono_us() + 700000;
	while (mono_us() < end) {
		for (int i = 0; i < 2; i++) {
			struct pollfd p = {.fd = mig_engine_fd(e[i]), .events = POLLIN};
			poll(&p, 1, 5);
			uint64_t t0 = mono_us();
			assert_int_equal(mig_engine_dispatch(e[i]), 0);
			uint64_t d = mono_us() - t0;
			if (d > worst)
				worst = d;
		}
	}
	if (worst > 50000)
		fail_msg("a dispatch took %llu us with the orchestrator down",
			 (unsigned long long)worst);

	assert_int_equal(mig_migrate(e[0], "dora", mig_engine_url(e[1]), NULL), 0);
	struct two t = {e[0], e[1]};
	assert_true(test_dispatch_until(e, 2, moved, &t, 10000));

	orch_start(o, TEST_SECRET, port);
	assert_true(test_dispatch_until(e, 2, got_up, o, 15000));
	/* Both get in (the backoff is at most 10 s) and announce themselves;
	 * a link is up at the orchestrator a moment before its Announce
	 * arrives, so wait for both. */
	bool both = false;
	uint64_t deadline = mono_us() + 15000000;
	while (!both && mono_us() < deadline) {
		test_dispatch_for(e, 2, 50);
		orch_drain(o);
		both = o->ups >= 2 && o->announces >= 2;
	}
	assert_true(o->ups >= 2);
	assert_true(o->announces >= 2); /* (seq is per connection: checked in test 1) */
}

static void record_refusal(mig_engine *e, mig_log_level level, const char *line, void *arg)
{
	(void)e;
	(void)level;
	if (strstr(line, "orchestrator") && strstr(line, "authentication failed"))
		*(int *)arg += 1;
}

static bool refused_twice(void *arg)
{
	return *(int *)arg >= 2;
}

/* An orchestrator with another secret never sees the engine: the engine
 * says why, keeps retrying, and keeps working. */
static void test_wrong_secret(void **state)
{
	struct fixture *f = *state;
	struct orch *o = &f->o;
	orch_start(o, OTHER_SECRET, 0);
	snprintf(f->url, sizeof(f->url), "ws://127.0.0.1:%d", o->port);
	mig_engine_options opt;
	test_engine_options(&opt, "stranger");
	opt.orchestrator_url = f->url;
	opt.heartbeat_ms = 50;
	opt.on_log = record_refusal;
	opt.log_level = MIG_LOG_DEBUG;
	opt.user_data = &f->refusals;
	assert_int_equal(mig_engine_new(&f->e[0], &opt), 0);
	mig_engine *e = f->e[0];
	assert_int_equal(mig_engine_start(e), 0);
	assert_true(test_dispatch_until(&e, 1, refused_twice, &f->refusals, 5000));
	orch_drain(o);
	assert_int_equal(o->ups, 0);
	assert_int_equal(o->announces, 0);
	assert_int_equal(o->heartbeats, 0);
	assert_int_equal(mig_user_add(e, "erin"), 0);
	assert_int_equal(mig_user_get_state(e, "erin"), MIG_USER_ACTIVE);
}

static void test_bad_options(void **state)
{
	struct fixture *f = *state;
	static const struct {
		const char *url;
		unsigned heartbeat_ms;
	} bad[] = {
		{"http://127.0.0.1:7100", 0},
		{"127.0.0.1:7100", 0},
		{"ws://", 0},
		{"ws://127.0.0.1:7100", 5},
		{"ws://127.0.0.1:7100", 3600001},
	};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		mig_engine_options opt;
		test_engine_options(&opt, "bad");
		opt.orchestrator_url = bad[i].url;
		opt.heartbeat_ms = bad[i].heartbeat_ms;
		mig_engine *e = (mig_engine *)&opt; /* must be reset to NULL */
		int rc = mig_engine_new(&e, &opt);
		if (rc == 0)
			f->e[0] = e; /* wrongly accepted: teardown frees it */
		assert_int_equal(rc, MIG_EINVAL);
		assert_null(e);
	}
	/* Empty means none. */
	mig_engine_options opt;
	test_engine_options(&opt, "none");
	opt.orchestrator_url = "";
	assert_int_equal(mig_engine_new(&f->e[0], &opt), 0);
	assert_int_equal(mig_engine_start(f->e[0]), 0);
	test_dispatch_for(f->e, 1, 50);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_announce_heartbeats_reconnect, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_orchestrator_down, setup, teardown),
		cmocka_unit_test_setup_teardown(test_wrong_secret, setup, teardown),
		cmocka_unit_test_setup_teardown(test_bad_options, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
