/* Negative paths between real engines over loopback: malformed, oversized and
 * unauthenticated frames, wrong secrets, unknown users, refused BEGINs, a
 * replayed migration id, a failing merge, version and domain mismatches and
 * cancels. Every test checks that no user changed owner or state where it
 * must not, and that the engines still work afterwards.
 *
 * White-box: the raw client is the library's own transport used as a client
 * (mig__transport_*), which lets a test send bytes that are not valid frames,
 * frames before the handshake, or handcrafted peer frames. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app_model.h"
#include "engine_int.h"
#include "migrate/control.h"
#include "raw_client.h"
#include "support.h"
#include "transport.h"
#include "wire.h"

#define OTHER_SECRET "another-cluster-secret-fedcba9876543210"
#define OTHER_SECRET_LEN (sizeof(OTHER_SECRET) - 1)
#define NSEED 8         /* users 0..NSEED-1 start on A */
#define SETTLE_MS 15000 /* bound on any wait for a migration to end */

/* ---------------------------------------------------------------- fixture */

struct fixture {
	struct app a, b, c;
	mig_engine *ea, *eb, *ec;
	app_snapshot snap_a, snap_b;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	app_init(&f->a, "A");
	app_init(&f->b, "B");
	app_init(&f->c, "C");
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	mig_engine_free(f->ea);
	mig_engine_free(f->eb);
	mig_engine_free(f->ec);
	app_free(&f->a);
	app_free(&f->b);
	app_free(&f->c);
	free(f);
	return 0;
}

/* Starts A and B (cfg NULL: defaults) and seeds users 0..NSEED-1 on A. */
static void start_ab(struct fixture *f, const app_engine_cfg *ca, const app_engine_cfg *cb)
{
	app_engine_cfg da = {.id = "engine-a", .record_logs = true, .log_level = MIG_LOG_INFO};
	app_engine_cfg db = {.id = "engine-b", .record_logs = true, .log_level = MIG_LOG_INFO};
	f->ea = app_engine_new(&f->a, ca ? ca : &da);
	f->eb = app_engine_new(&f->b, cb ? cb : &db);
	for (int i = 0; i < NSEED; i++)
		app_add_user(&f->a, f->ea, i, 1);
}

static void snap(struct fixture *f)
{
	app_snapshot_take(&f->a, f->ea, &f->snap_a);
	app_snapshot_take(&f->b, f->eb, &f->snap_b);
}

/* Nothing changed on A or B since snap(), and no hook saw anything odd. */
static void check_unchanged(struct fixture *f)
{
	app_snapshot_check(&f->a, f->ea, &f->snap_a);
	app_snapshot_check(&f->b, f->eb, &f->snap_b);
	app_check_no_violations(&f->a);
	app_check_no_violations(&f->b);
}

struct ended_arg {
	mig_migration *m;
};

static bool migration_ended(void *arg)
{
	struct ended_arg *x = arg;
	mig_migration_stats s;
	return mig_migration_info(x->m, &s) == 0 && s.state != MIG_MIGRATION_RUNNING;
}

/* Dispatches every engine until `m` ends; returns mig_migration_wait()'s
 * code for it. */
static int finish(mig_engine **engines, size_t n, mig_migration *m)
{
	struct ended_arg x = {m};
	if (!test_dispatch_until(engines, n, migration_ended, &x, SETTLE_MS))
		fail_msg("migration %s still running after %d ms", mig_migration_id(m), SETTLE_MS);
	return mig_migration_wait(m, 0);
}

/* Moves user i (tagged `tag`) from `from` to `to` and checks it arrived. */
static void migrate_ok(struct app *af, mig_engine *from, struct app *at, mig_engine *to, int i,
		       unsigned tag)
{
	char id[32];
	mig_migration *m = NULL;
	int rc = mig_migrate(from, app_uid(i, id), mig_engine_url(to), &m);
	if (rc)
		fail_msg("mig_migrate %s: %s: %s", id, mig_err_name(rc),
			 mig_engine_last_error(from));
	mig_engine *es[2] = {from, to};
	rc = finish(es, 2, m);
	mig_migration_free(m);
	if (rc)
		fail_msg("migrating %s: %s", id, mig_err_name(rc));
	app_check_absent(af, from, i);
	app_check_holds(at, to, i, tag);
	app_check_no_violations(af);
	app_check_no_violations(at);
}

/* ---------------------------------------------------------------- raw client (raw_client.h) */

static mig__msg *garbage_msg(size_t len, unsigned seed)
{
	mig__msg *m = mig__msg_new(len);
	assert_non_null(m);
	uint8_t *p = mig__msg_payload(m);
	test_fill(p, len, seed);
	/* A field key with wire type 7 does not exist: never a valid frame. */
	p[0] = 0xff;
	p[1] = 0xff;
	if (len > 2)
		p[2] = 0x07;
	return m;
}

static mig__msg *encode(const mig__frame *f)
{
	mig__msg *m = NULL;
	assert_int_equal(mig__wire_encode(f, 0, &m), 0);
	return m;
}

/* A BEGIN as engine A would send it; `domain0`, if not NULL, renames the
 * first domain. */
static mig__msg *begin_msg(const char *mid, const char *user, const char *source_url,
			   const char *domain0)
{
	Migwire__DomainInfo infos[APP_NDOM];
	Migwire__DomainInfo *ptrs[APP_NDOM];
	for (int d = 0; d < APP_NDOM; d++) {
		migwire__domain_info__init(&infos[d]);
		infos[d].name = (char *)(d == 0 && domain0 ? domain0 : app_domain_name[d]);
		infos[d].version = app_domain_version[d];
		infos[d].has_kind = true;
		infos[d].kind = MIGWIRE__DOMAIN_KIND__DOMAIN_LIGHT;
		ptrs[d] = &infos[d];
	}
	Migwire__Begin b = MIGWIRE__BEGIN__INIT;
	b.mid = (char *)mid;
	b.user = (char *)user;
	b.source_engine = "engine-a";
	b.source_url = (char *)source_url;
	b.n_domains = APP_NDOM;
	b.domains = ptrs;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_BEGIN;
	f.begin = &b;
	return encode(&f);
}

/* ---------------------------------------------------------------- malformed */

static void test_malformed_frame(void **state)
{
	struct fixture *f = *state;
	start_ab(f, NULL, NULL);
	mig_engine *es[2] = {f->ea, f->eb};
	snap(f);
	const int channels[2] = {MIGWIRE__CHANNEL__CHANNEL_PEER, MIGWIRE__CHANNEL__CHANNEL_CONTROL};
	for (int k = 0; k < 2; k++) {
		raw_client rc;
		raw_open(&rc, mig_engine_url(f->eb), channels[k], TEST_SECRET, TEST_SECRET_LEN,
			 false);
		raw_wait_up(&rc, es, 2);
		mig__transport_send_raw(rc.t, rc.conn, garbage_msg(64, 7u + (unsigned)k));
		raw_wait_down(&rc, es, 2);
		print_message("# channel %d: %s: %s\n", channels[k], mig_err_name(rc.down_error),
			      rc.down_reason);
		assert_int_equal(rc.down_error, MIG_EPROTO);
		assert_non_null(strstr(rc.down_reason, "frame"));
		assert_int_equal(rc.nframes, 0);
		raw_close(&rc);
	}
	/* The engine logged why it closed, and carries on. */
	test_dispatch_for(es, 2, 50);
	assert_true(app_log_contains(&f->b, "not a valid frame"));
	check_unchanged(f);
	migrate_ok(&f->a, f->ea, &f->b, f->eb, 1, 1);
	migrate_ok(&f->b, f->eb, &f->a, f->ea, 1, 1);
}

static void test_frame_over_cap(void **state)
{
	struct fixture *f = *state;
	app_engine_cfg cb = {.id = "engine-b",
			     .max_frame_bytes = 64 * 1024,
			     .record_logs = true,
			     .log_level = MIG_LOG_WARN};
	start_ab(f, NULL, &cb);
	mig_engine *es[2] = {f->ea, f->eb};
	snap(f);
	raw_client rc;
	raw_open(&rc, mig_engine_url(f->eb), MIGWIRE__CHANNEL__CHANNEL_PEER, TEST_SECRET,
		 TEST_SECRET_LEN, false);
	raw_wait_up(&rc, es, 2);
	mig__transport_send_raw(rc.t, rc.conn, garbage_msg(200 * 1024, 11));
	raw_wait_down(&rc, es, 2);
	print_message("# %s: %s\n", mig_err_name(rc.down_error), rc.down_reason);
	assert_int_equal(rc.down_error, MIG_ETOOBIG);
	assert_non_null(strstr(rc.down_reason, "1009"));
	raw_close(&rc);
	test_dispatch_for(es, 2, 50);
	assert_true(app_log_contains(&f->b, "cap"));
	check_unchanged(f);
	/* States well under the cap still move. */
	migrate_ok(&f->a, f->ea, &f->b, f->eb, 2, 1);
}

/* ---------------------------------------------------------------- authentication */

static void test_unauthenticated(void **state)
{
	struct fixture *f = *state;
	start_ab(f, NULL, NULL);
	mig_engine *es[2] = {f->ea, f->eb};
	snap(f);
	const int channels[2] = {MIGWIRE__CHANNEL__CHANNEL_PEER, MIGWIRE__CHANNEL__CHANNEL_CONTROL};
	for (int k = 0; k < 2; k++) {
		/* No secret at all: the Hello carries no MAC. */
		raw_client rc;
		raw_open(&rc, mig_engine_url(f->eb), channels[k], NULL, 0, true);
		raw_wait_down(&rc, es, 2);
		print_message("# no secret, channel %d: %s: %s\n", channels[k],
			      mig_err_name(rc.down_error), rc.down_reason);
		assert_false(rc.up);
		assert_int_equal(rc.down_error, MIG_EAUTH);
		assert_non_null(strstr(rc.down_reason, "authentication failed"));
		raw_close(&rc);

		/* The right secret, but a frame queued ahead of the handshake:
		 * refused unread. The frame is a BEGIN that, had it been read
		 * after authentication, would only get a REJECT (its domain is
		 * unknown), so an attempt where the client's Hello happened to
		 * go out first (the I/O thread connected before the test queued
		 * the frame) changes nothing either; it is retried. */
		int tries = 0;
		for (;;) {
			char id[32];
			tries++;
			raw_open(&rc, mig_engine_url(f->eb), channels[k], TEST_SECRET,
				 TEST_SECRET_LEN, false);
			mig__transport_send_raw(rc.t, rc.conn,
						begin_msg("00112233445566778899aabbccddeeff",
							  app_uid(3, id), mig_engine_url(f->ea),
							  "no-such-domain"));
			if (!test_dispatch_until(es, 2, raw_has_frame, &rc, 10000))
				fail_msg("early frame: no answer and no close after 10 s");
			if (rc.up) {
				print_message("# early frame, channel %d: went out after the "
					      "handshake; retrying\n",
					      channels[k]);
				assert_true(tries < 20);
				raw_close(&rc);
				continue;
			}
			break;
		}
		print_message("# early frame, channel %d: %s: %s\n", channels[k],
			      mig_err_name(rc.down_error), rc.down_reason);
		assert_false(rc.up);
		assert_true(rc.down);
		assert_int_equal(rc.down_error, MIG_EAUTH);
		assert_non_null(strstr(rc.down_reason, "authentication required"));
		assert_int_equal(rc.nframes, 0);
		raw_close(&rc);
	}
	test_dispatch_for(es, 2, 50);
	assert_int_equal(app_events(&f->b, MIG_EVENT_INCOMING, NULL, NULL), 0);
	assert_int_equal(f->b.users[3].incoming, 0);
	check_unchanged(f);
	migrate_ok(&f->a, f->ea, &f->b, f->eb, 3, 1);
}

static void test_wrong_secret_control(void **state)
{
	struct fixture *f = *state;
	start_ab(f, NULL, NULL);
	snap(f);
	test_runner *ra = test_runner_start(f->ea);
	mig_ctl_options o = {0};
	o.url = mig_engine_url(f->ea);
	o.secret = OTHER_SECRET;
	o.secret_len = OTHER_SECRET_LEN;
	o.timeout_ms = 10000;
	mig_ctl *ctl = NULL;
	char err[256] = "";
	int rc = mig_ctl_new(&ctl, &o, err, sizeof(err));
	print_message("# mig_ctl_new with another secret: %s: %s\n", mig_err_name(rc), err);
	assert_int_equal(rc, MIG_EAUTH);
	assert_null(ctl);
	assert_non_null(strstr(err, "authentication failed"));
	/* The right secret still gets in, on the same engine. */
	o.secret = TEST_SECRET;
	o.secret_len = TEST_SECRET_LEN;
	rc = mig_ctl_new(&ctl, &o, err, sizeof(err));
	if (rc)
		fail_msg("mig_ctl_new: %s: %s", mig_err_name(rc), err);
	assert_int_equal(mig_ctl_users(ctl, NULL, NULL), NSEED);
	mig_ctl_free(ctl);
	test_runner_stop(ra);
	check_unchanged(f);
}

static void test_wrong_secret_peer(void **state)
{
	struct fixture *f = *state;
	start_ab(f, NULL, NULL);
	app_engine_cfg cc = {.id = "engine-c",
			     .secret = OTHER_SECRET,
			     .secret_len = OTHER_SECRET_LEN,
			     .peer_timeout_ms = 2000};
	f->ec = app_engine_new(&f->c, &cc);
	app_add_user(&f->c, f->ec, 20, 3);
	mig_engine *es[3] = {f->ea, f->eb, f->ec};
	snap(f);
	mig_engine *dests[2] = {f->ea, f->eb};
	for (int k = 0; k < 2; k++) {
		char id[32];
		mig_migration *m = NULL;
		assert_int_equal(mig_migrate(f->ec, app_uid(20, id), mig_engine_url(dests[k]), &m),
				 0);
		int rc = finish(es, 3, m);
		struct app_event ev;
		assert_int_equal(app_events(&f->c, MIG_EVENT_ABORTED, id, &ev), k + 1);
		print_message("# C -> %s: %s: %s\n", k ? "B" : "A", mig_err_name(rc), ev.reason);
		mig_migration_free(m);
		if (rc != MIG_EAUTH && rc != MIG_ECLOSED)
			fail_msg("want MIG_EAUTH or MIG_ECLOSED, got %s", mig_err_name(rc));
		assert_int_equal(ev.error, rc);
		app_check_holds(&f->c, f->ec, 20, 3);
		assert_int_equal(f->c.users[20].paused_n, 0);
		app_check_absent(&f->a, f->ea, 20);
		app_check_absent(&f->b, f->eb, 20);
	}
	assert_int_equal(app_events(&f->a, MIG_EVENT_INCOMING, NULL, NULL), 0);
	assert_int_equal(app_events(&f->b, MIG_EVENT_INCOMING, NULL, NULL), 0);
	check_unchanged(f);
	app_check_no_violations(&f->c);
	migrate_ok(&f->a, f->ea, &f->b, f->eb, 4, 1);
}

/* ---------------------------------------------------------------- unknown user */

static void test_unknown_user(void **state)
{
	struct fixture *f = *state;
	start_ab(f, NULL, NULL);
	mig_engine *es[2] = {f->ea, f->eb};
	snap(f);
	char id[32];
	mig_migration *m = (mig_migration *)(uintptr_t)1;
	assert_int_equal(mig_migrate(f->ea, app_uid(30, id), mig_engine_url(f->eb), &m),
			 MIG_ENOUSER);
	assert_null(m);
	assert_non_null(strstr(mig_engine_last_error(f->ea), id));
	/* A user that is only on the destination is unknown at the source too. */
	app_add_user(&f->b, f->eb, 31, 2);
	snap(f);
	assert_int_equal(mig_migrate(f->ea, app_uid(31, id), mig_engine_url(f->eb), NULL),
			 MIG_ENOUSER);

	test_runner *ra = test_runner_start(f->ea), *rb = test_runner_start(f->eb);
	mig_ctl_options o = {0};
	o.url = mig_engine_url(f->ea);
	o.secret = TEST_SECRET;
	o.secret_len = TEST_SECRET_LEN;
	mig_ctl *ctl = NULL;
	char err[256];
	assert_int_equal(mig_ctl_new(&ctl, &o, err, sizeof(err)), 0);
	mig_event fin;
	int rc = mig_ctl_migrate(ctl, app_uid(30, id), mig_engine_url(f->eb), 10000, NULL, NULL,
				 &fin);
	print_message("# mig_ctl_migrate of an unknown user: %s: %s\n", mig_err_name(rc),
		      mig_ctl_last_error(ctl));
	assert_int_equal(rc, MIG_ENOUSER);
	assert_non_null(strstr(mig_ctl_last_error(ctl), "no user"));
	assert_non_null(strstr(mig_ctl_last_error(ctl), id));
	mig_ctl_free(ctl);
	test_runner_stop(ra);
	test_runner_stop(rb);

	test_dispatch_for(es, 2, 50);
	assert_int_equal(app_events(&f->a, MIG_EVENT_STARTED, NULL, NULL), 0);
	assert_int_equal(app_events(&f->a, MIG_EVENT_ABORTED, NULL, NULL), 0);
	check_unchanged(f);
	migrate_ok(&f->a, f->ea, &f->b, f->eb, 5, 1);
}

/* ---------------------------------------------------------------- refused BEGIN */

static void test_begin_user_exists(void **state)
{
	struct fixture *f = *state;
	start_ab(f, NULL, NULL);
	app_add_user(&f->b, f->eb, 6, 2); /* B has its own, independent user-006 */
	mig_engine *es[2] = {f->ea, f->eb};
	snap(f);
	char id[32];
	mig_migration *m = NULL;
	assert_int_equal(mig_migrate(f->ea, app_uid(6, id), mig_engine_url(f->eb), &m), 0);
	int rc = finish(es, 2, m);
	mig_migration_free(m);
	struct app_event ev;
	assert_int_equal(app_events(&f->a, MIG_EVENT_ABORTED, id, &ev), 1);
	print_message("# BEGIN for a user B has: %s: %s\n", mig_err_name(rc), ev.reason);
	assert_int_equal(rc, MIG_EEXIST);
	assert_int_equal(ev.error, MIG_EEXIST);
	assert_non_null(strstr(ev.reason, "already"));
	/* Refused at BEGIN: A never paused, B never prepared a slot. */
	assert_int_equal(f->a.users[6].paused_n, 0);
	assert_int_equal(f->b.users[6].incoming, 0);
	assert_int_equal(f->b.users[6].merges, 0);
	assert_int_equal(app_events(&f->b, MIG_EVENT_INCOMING, NULL, NULL), 0);
	test_dispatch_for(es, 2, 50);
	check_unchanged(f);
	app_check_holds(&f->a, f->ea, 6, 1);
	app_check_holds(&f->b, f->eb, 6, 2);
	migrate_ok(&f->a, f->ea, &f->b, f->eb, 7, 1);
}

/* ---------------------------------------------------------------- replayed mid */

static void test_repeated_mid(void **state)
{
	struct fixture *f = *state;
	start_ab(f, NULL, NULL);
	mig_engine *es[2] = {f->ea, f->eb};
	char id[32], id4[32], mid[MIG__MID_LEN + 1];
	mig_migration *m = NULL;
	assert_int_equal(mig_migrate(f->ea, app_uid(3, id), mig_engine_url(f->eb), &m), 0);
	assert_int_equal(finish(es, 2, m), 0);
	mig__strlcpy(mid, mig_migration_id(m), sizeof(mid));
	mig_migration_free(m);
	app_check_holds(&f->b, f->eb, 3, 1);
	app_check_absent(&f->a, f->ea, 3);
	assert_int_equal(f->b.users[3].activated, 1);
	int merges = f->b.users[3].merges;
	snap(f);

	raw_client rc;
	raw_open(&rc, mig_engine_url(f->eb), MIGWIRE__CHANNEL__CHANNEL_PEER, TEST_SECRET,
		 TEST_SECRET_LEN, false);
	raw_wait_up(&rc, es, 2);

	/* The same BEGIN again, then the same mid for a user B does not have:
	 * both refused because the id was used, not because of the user. */
	const char *users[2] = {id, app_uid(4, id4)};
	for (int k = 0; k < 2; k++) {
		mig__transport_send(rc.t, rc.conn,
				    begin_msg(mid, users[k], mig_engine_url(f->ea), NULL));
		mig__frame *in = raw_next_frame(&rc, es, 2);
		assert_int_equal(in->body_case, MIGWIRE__FRAME__BODY_REJECT);
		print_message("# replayed BEGIN for %s: %s: %s\n", users[k],
			      mig_err_name(in->reject->code), in->reject->reason);
		assert_string_equal(in->reject->mid, mid);
		assert_int_equal(in->reject->code, MIG_EEXIST);
		assert_non_null(strstr(in->reject->reason, "migration id"));
		mig__wire_free(in);
	}
	assert_int_equal(f->b.users[4].incoming, 0);

	/* A replayed PREPARE is answered without merging again. */
	Migwire__Prepare p = MIGWIRE__PREPARE__INIT;
	p.mid = mid;
	mig__frame fp = MIGWIRE__FRAME__INIT;
	fp.body_case = MIGWIRE__FRAME__BODY_PREPARE;
	fp.prepare = &p;
	mig__transport_send(rc.t, rc.conn, encode(&fp));
	mig__frame *in = raw_next_frame(&rc, es, 2);
	assert_int_equal(in->body_case, MIGWIRE__FRAME__BODY_PREPARED);
	assert_string_equal(in->prepared->mid, mid);
	mig__wire_free(in);

	/* A replayed COMMIT is answered COMMITTED, and activate runs once. */
	for (int k = 0; k < 2; k++) {
		Migwire__Commit c = MIGWIRE__COMMIT__INIT;
		c.mid = mid;
		c.user = id;
		mig__frame fc = MIGWIRE__FRAME__INIT;
		fc.body_case = MIGWIRE__FRAME__BODY_COMMIT;
		fc.commit = &c;
		mig__transport_send(rc.t, rc.conn, encode(&fc));
		in = raw_next_frame(&rc, es, 2);
		assert_int_equal(in->body_case, MIGWIRE__FRAME__BODY_COMMITTED);
		assert_string_equal(in->committed->mid, mid);
		mig__wire_free(in);
	}
	/* And the outcome memory agrees. */
	Migwire__OutcomeQuery q = MIGWIRE__OUTCOME_QUERY__INIT;
	q.mid = mid;
	q.user = id;
	mig__frame fq = MIGWIRE__FRAME__INIT;
	fq.body_case = MIGWIRE__FRAME__BODY_OUTCOME_QUERY;
	fq.outcome_query = &q;
	mig__transport_send(rc.t, rc.conn, encode(&fq));
	in = raw_next_frame(&rc, es, 2);
	assert_int_equal(in->body_case, MIGWIRE__FRAME__BODY_OUTCOME);
	assert_int_equal(in->outcome->state, MIGWIRE__OUTCOME_STATE__OUTCOME_COMMITTED);
	mig__wire_free(in);
	assert_false(rc.down);
	raw_close(&rc);

	test_dispatch_for(es, 2, 50);
	assert_int_equal(f->b.users[3].activated, 1);
	assert_int_equal(f->b.users[3].merges, merges);
	assert_int_equal(app_events(&f->b, MIG_EVENT_ACTIVATED, id, NULL), 1);
	assert_int_equal(app_events(&f->b, MIG_EVENT_INCOMING, NULL, NULL), 1);
	check_unchanged(f);
	/* The user can still go back. */
	migrate_ok(&f->b, f->eb, &f->a, f->ea, 3, 1);
}

/* ---------------------------------------------------------------- failing merge */

struct watcher {
	mig_ctl *ctl;
	char user[32];
	atomic_bool done;
	int rc;
	int aborted;
	struct app_event final;
};

static int watch_fn(const mig_event *ev, void *ud)
{
	struct watcher *w = ud;
	if (strcmp(ev->user, w->user) != 0)
		return 0;
	if (ev->type != MIG_EVENT_ABORTED && ev->type != MIG_EVENT_COMMITTED)
		return 0;
	w->aborted += ev->type == MIG_EVENT_ABORTED;
	w->final.type = ev->type;
	w->final.error = ev->error;
	snprintf(w->final.mid, sizeof(w->final.mid), "%s", ev->mid);
	snprintf(w->final.reason, sizeof(w->final.reason), "%s", ev->reason);
	return 1;
}

static void *watch_main(void *arg)
{
	struct watcher *w = arg;
	w->rc = mig_ctl_watch(w->ctl, 20000, watch_fn, w);
	atomic_store(&w->done, true);
	return NULL;
}

static bool watcher_done(void *arg)
{
	return atomic_load(&((struct watcher *)arg)->done);
}

static bool has_subscriber(void *arg)
{
	mig_engine *e = arg;
	bool found = false;
	pthread_mutex_lock(&e->lock);
	for (mig__conn_rec *c = e->conns; c; c = c->next)
		found |= c->channel == MIGWIRE__CHANNEL__CHANNEL_CONTROL && c->subscribed;
	pthread_mutex_unlock(&e->lock);
	return found;
}

static void check_merge_failure(struct fixture *f, int i, int rc, const char *reason)
{
	char id[32];
	app_uid(i, id);
	assert_int_equal(rc, MIG_ECALLBACK);
	assert_non_null(strstr(reason, "merge"));
	assert_non_null(strstr(reason, app_domain_name[0]));
	assert_non_null(strstr(reason, "-5"));
	struct app_event ev;
	assert_int_equal(app_events(&f->a, MIG_EVENT_ABORTED, id, &ev), 1);
	assert_int_equal(ev.error, MIG_ECALLBACK);
	assert_string_equal(ev.reason, reason);
	assert_int_equal(app_events(&f->a, MIG_EVENT_COMMITTED, id, NULL), 0);
	/* A paused, extracted and resumed; B prepared a slot and dropped it. */
	assert_int_equal(f->a.users[i].paused_n, 1);
	assert_int_equal(f->a.users[i].resumed, 1);
	assert_int_equal(f->a.users[i].released, 0);
	assert_int_equal(f->b.users[i].incoming, 1);
	assert_int_equal(f->b.users[i].dropped, 1);
	assert_int_equal(f->b.users[i].activated, 0);
	assert_int_equal(app_events(&f->b, MIG_EVENT_DROPPED, id, &ev), 1);
	assert_int_equal(ev.error, MIG_ECALLBACK);
	app_check_holds(&f->a, f->ea, i, 1);
	app_check_absent(&f->b, f->eb, i);
}

static void test_merge_fails(void **state)
{
	struct fixture *f = *state;
	start_ab(f, NULL, NULL);
	mig_engine *es[2] = {f->ea, f->eb};
	f->b.fail_merge_user = 4;
	f->b.fail_merge_rc = -5;

	/* A subscriber on A's control channel, on a thread of its own. */
	mig_ctl_options o = {0};
	o.url = mig_engine_url(f->ea);
	o.secret = TEST_SECRET;
	o.secret_len = TEST_SECRET_LEN;
	char err[256];
	struct watcher w = {0};
	snprintf(w.user, sizeof(w.user), "user-004");
	assert_int_equal(mig_ctl_new(&w.ctl, &o, err, sizeof(err)), 0);
	pthread_t th;
	assert_int_equal(pthread_create(&th, NULL, watch_main, &w), 0);
	assert_true(test_dispatch_until(es, 2, has_subscriber, f->ea, 10000));

	char id[32];
	mig_migration *m = NULL;
	assert_int_equal(mig_migrate(f->ea, app_uid(4, id), mig_engine_url(f->eb), &m), 0);
	int rc = finish(es, 2, m);
	mig_migration_stats st;
	assert_int_equal(mig_migration_info(m, &st), 0);
	assert_int_equal(st.state, MIG_MIGRATION_ABORTED);
	assert_int_equal(st.error, MIG_ECALLBACK);
	struct app_event ev;
	assert_int_equal(app_events(&f->a, MIG_EVENT_ABORTED, id, &ev), 1);
	print_message("# merge failure: %s: %s\n", mig_err_name(rc), ev.reason);
	check_merge_failure(f, 4, rc, ev.reason);

	assert_true(test_dispatch_until(es, 2, watcher_done, &w, 10000));
	pthread_join(th, NULL);
	assert_int_equal(w.rc, 0);
	assert_int_equal(w.aborted, 1);
	assert_int_equal(w.final.error, MIG_ECALLBACK);
	assert_string_equal(w.final.mid, mig_migration_id(m));
	assert_string_equal(w.final.reason, ev.reason);
	mig_ctl_free(w.ctl);
	mig_migration_free(m);

	/* The same through a control request: the requester gets the error. */
	f->b.fail_merge_user = 5;
	test_runner *ra = test_runner_start(f->ea), *rb = test_runner_start(f->eb);
	mig_ctl *ctl = NULL;
	assert_int_equal(mig_ctl_new(&ctl, &o, err, sizeof(err)), 0);
	mig_event fin;
	rc = mig_ctl_migrate(ctl, app_uid(5, id), mig_engine_url(f->eb), 20000, NULL, NULL, &fin);
	char last[256];
	snprintf(last, sizeof(last), "%s", mig_ctl_last_error(ctl));
	mig_ctl_free(ctl);
	test_runner_stop(ra);
	test_runner_stop(rb);
	print_message("# merge failure via control: %s: %s\n", mig_err_name(rc), last);
	assert_int_equal(fin.type, MIG_EVENT_ABORTED);
	assert_int_equal(fin.error, MIG_ECALLBACK);
	check_merge_failure(f, 5, rc, last);

	app_check_no_violations(&f->a);
	app_check_no_violations(&f->b);
	f->b.fail_merge_user = -1;
	migrate_ok(&f->a, f->ea, &f->b, f->eb, 4, 1);
}

/* ---------------------------------------------------------------- versions, domains */

static void refused_at_begin(struct fixture *f, int i, int want, const char *needle)
{
	mig_engine *es[2] = {f->ea, f->eb};
	snap(f);
	char id[32];
	mig_migration *m = NULL;
	assert_int_equal(mig_migrate(f->ea, app_uid(i, id), mig_engine_url(f->eb), &m), 0);
	int rc = finish(es, 2, m);
	mig_migration_free(m);
	struct app_event ev;
	assert_int_equal(app_events(&f->a, MIG_EVENT_ABORTED, id, &ev), 1);
	print_message("# %s: %s\n", mig_err_name(rc), ev.reason);
	assert_int_equal(rc, want);
	assert_int_equal(ev.error, want);
	assert_non_null(strstr(ev.reason, needle));
	assert_int_equal(f->a.users[i].paused_n, 0);
	assert_int_equal(f->b.users[i].incoming, 0);
	assert_int_equal(app_events(&f->b, MIG_EVENT_INCOMING, NULL, NULL), 0);
	test_dispatch_for(es, 2, 50);
	check_unchanged(f);
	app_check_holds(&f->a, f->ea, i, 1);
}

static void test_newer_domain_version(void **state)
{
	struct fixture *f = *state;
	app_engine_cfg ca = {.id = "engine-a", .version = {2, 0}}; /* progress v2 > B's v1 */
	start_ab(f, &ca, NULL);
	refused_at_begin(f, 2, MIG_EVERSION, "version 2 is newer than 1");
	/* An older version at the source is the destination's to upgrade. */
	mig_engine_free(f->eb);
	app_free(&f->b);
	app_init(&f->b, "B");
	app_engine_cfg cb = {.id = "engine-b", .version = {5, 0}};
	f->eb = app_engine_new(&f->b, &cb);
	migrate_ok(&f->a, f->ea, &f->b, f->eb, 2, 1);
	assert_int_equal(f->b.users[2].merged_version[0], 2);
	assert_int_equal(f->b.users[2].merged_version[1], 3);
}

static void test_unregistered_domain(void **state)
{
	struct fixture *f = *state;
	app_engine_cfg cb = {.id = "engine-b", .version = {0, -1}}; /* no "history" */
	start_ab(f, NULL, &cb);
	refused_at_begin(f, 3, MIG_ENODOMAIN, "history");
}

/* ---------------------------------------------------------------- cancel */

struct canceler {
	mig_migration *m;
	mig_event_type when; /* cancel when this event of m arrives */
	int rc;
	int calls;
};

static void cancel_on_event(mig_engine *e, const mig_event *ev, void *arg)
{
	(void)e;
	struct canceler *c = arg;
	if (ev->type != c->when || !c->m || strcmp(ev->mid, mig_migration_id(c->m)) != 0)
		return;
	c->calls++;
	c->rc = mig_migration_cancel(c->m);
}

struct b_done_arg {
	mig_engine *e;
	const char *mid;
	mig_migration *m;
};

/* A's handle ended and B has a finished record of the migration. */
static bool src_ended_dst_done(void *arg)
{
	struct b_done_arg *x = arg;
	struct ended_arg ea = {x->m};
	if (!migration_ended(&ea))
		return false;
	pthread_mutex_lock(&x->e->lock);
	struct mig_migration *rec = mig__handoff_find(x->e, x->mid);
	/* Ended: still in the running list until the tick retires it. */
	bool done = rec ? rec->phase == MIG__DONE
			: mig__outcomes_find(&x->e->outcomes, x->mid) != NULL;
	pthread_mutex_unlock(&x->e->lock);
	return done;
}

static void test_cancel(void **state)
{
	struct fixture *f = *state;
	start_ab(f, NULL, NULL);
	mig_engine *es[2] = {f->ea, f->eb};
	snap(f);
	char id[32];

	/* Right after mig_migrate: nothing reaches B. */
	mig_migration *m = NULL;
	assert_int_equal(mig_migrate(f->ea, app_uid(1, id), mig_engine_url(f->eb), &m), 0);
	assert_int_equal(mig_migration_cancel(m), 0);
	int rc = finish(es, 2, m);
	print_message("# cancel right away: %s\n", mig_err_name(rc));
	assert_int_equal(rc, MIG_ECANCELED);
	assert_int_equal(mig_migration_cancel(m), MIG_ESTATE); /* already ended */
	char mid[MIG__MID_LEN + 1];
	mig__strlcpy(mid, mig_migration_id(m), sizeof(mid));
	mig_migration_free(m);
	struct app_event ev;
	assert_int_equal(app_events(&f->a, MIG_EVENT_ABORTED, id, &ev), 1);
	assert_int_equal(ev.error, MIG_ECANCELED);
	assert_int_equal(f->a.users[1].paused_n, 0);
	/* A remembers the outcome (a destination asking gets a definite answer). */
	raw_client raw;
	raw_open(&raw, mig_engine_url(f->ea), MIGWIRE__CHANNEL__CHANNEL_PEER, TEST_SECRET,
		 TEST_SECRET_LEN, false);
	raw_wait_up(&raw, es, 2);
	Migwire__OutcomeQuery q = MIGWIRE__OUTCOME_QUERY__INIT;
	q.mid = mid;
	q.user = id;
	mig__frame fq = MIGWIRE__FRAME__INIT;
	fq.body_case = MIGWIRE__FRAME__BODY_OUTCOME_QUERY;
	fq.outcome_query = &q;
	mig__transport_send(raw.t, raw.conn, encode(&fq));
	mig__frame *in = raw_next_frame(&raw, es, 2);
	assert_int_equal(in->body_case, MIGWIRE__FRAME__BODY_OUTCOME);
	assert_int_equal(in->outcome->state, MIGWIRE__OUTCOME_STATE__OUTCOME_ABORTED);
	mig__wire_free(in);
	raw_close(&raw);
	test_dispatch_for(es, 2, 50);
	check_unchanged(f);
	app_check_holds(&f->a, f->ea, 1, 1);

	/* From the STARTED event, once BEGIN is on its way: B accepts, then
	 * hears ABORT and drops its slot. */
	struct canceler c = {NULL, MIG_EVENT_STARTED, 1, 0};
	f->a.event_hook = cancel_on_event;
	f->a.event_hook_arg = &c;
	assert_int_equal(mig_migrate(f->ea, app_uid(2, id), mig_engine_url(f->eb), &m), 0);
	c.m = m;
	struct b_done_arg bd = {f->eb, mig_migration_id(m), m};
	assert_true(test_dispatch_until(es, 2, src_ended_dst_done, &bd, SETTLE_MS));
	rc = mig_migration_wait(m, 0);
	print_message("# cancel from STARTED: %s (B: incoming %d dropped %d)\n", mig_err_name(rc),
		      f->b.users[2].incoming, f->b.users[2].dropped);
	assert_int_equal(c.calls, 1);
	assert_int_equal(c.rc, 0);
	assert_int_equal(rc, MIG_ECANCELED);
	mig_migration_free(m);
	assert_int_equal(f->b.users[2].incoming, f->b.users[2].dropped);
	assert_int_equal(f->b.users[2].activated, 0);
	test_dispatch_for(es, 2, 50);
	check_unchanged(f);
	app_check_holds(&f->a, f->ea, 2, 1);

	/* From the PREPARED event: COMMIT is decided, so too late. */
	c.when = MIG_EVENT_PREPARED;
	c.calls = 0;
	c.m = NULL;
	assert_int_equal(mig_migrate(f->ea, app_uid(3, id), mig_engine_url(f->eb), &m), 0);
	c.m = m;
	rc = finish(es, 2, m);
	print_message("# cancel from PREPARED: cancel %s, migration %s\n", mig_err_name(c.rc),
		      mig_err_name(rc));
	assert_int_equal(c.calls, 1);
	assert_int_equal(c.rc, MIG_ESTATE);
	assert_int_equal(rc, 0);
	mig_migration_free(m);
	f->a.event_hook = NULL;
	app_check_absent(&f->a, f->ea, 3);
	app_check_holds(&f->b, f->eb, 3, 1);
	app_check_no_violations(&f->a);
	app_check_no_violations(&f->b);
	migrate_ok(&f->a, f->ea, &f->b, f->eb, 1, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_malformed_frame, setup, teardown),
		cmocka_unit_test_setup_teardown(test_frame_over_cap, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unauthenticated, setup, teardown),
		cmocka_unit_test_setup_teardown(test_wrong_secret_control, setup, teardown),
		cmocka_unit_test_setup_teardown(test_wrong_secret_peer, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unknown_user, setup, teardown),
		cmocka_unit_test_setup_teardown(test_begin_user_exists, setup, teardown),
		cmocka_unit_test_setup_teardown(test_repeated_mid, setup, teardown),
		cmocka_unit_test_setup_teardown(test_merge_fails, setup, teardown),
		cmocka_unit_test_setup_teardown(test_newer_domain_version, setup, teardown),
		cmocka_unit_test_setup_teardown(test_unregistered_domain, setup, teardown),
		cmocka_unit_test_setup_teardown(test_cancel, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
