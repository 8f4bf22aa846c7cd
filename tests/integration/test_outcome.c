/* The outcome memory between real engines over loopback: once a migration
 * is retired (its full record gone, a slim record kept), a repeated
 * PREPARE, COMMIT, ABORT, BEGIN or OUTCOME_QUERY still gets the answer it
 * got while the full record was there, a session client that attaches
 * after its user left is still redirected, and the app's handle still
 * reads its final state. And what a remembered outcome costs: the
 * library's live bytes per finished migration, through a counting
 * allocator installed with mig_set_allocator().
 *
 * White-box: the raw clients are the library's own transport used as a
 * client (mig__transport_*), and the test looks into the engines' running
 * list and outcome memory. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app_model.h"
#include "engine_int.h"
#include "handoff_int.h"
#include "raw_client.h"
#include "support.h"
#include "transport.h"
#include "wire.h"

#define SETTLE_MS 15000
#define APP_URL_A "https://a.example/app"
#define APP_URL_B "https://b.example/app"
/* The bound on the library's live bytes per remembered outcome (the full
 * records it replaced cost about 750). */
#define MAX_BYTES_PER_OUTCOME 200

/* ---------------------------------------------------------------- counting allocator */

#define HDR 16 /* keeps malloc's 16-byte alignment */

static atomic_llong live_bytes;

static void *count_malloc(size_t n)
{
	uint8_t *p = malloc(n + HDR);
	if (!p)
		return NULL;
	memcpy(p, &n, sizeof(n));
	atomic_fetch_add(&live_bytes, (long long)n);
	return p + HDR;
}

static void count_free(void *q)
{
	if (!q)
		return;
	uint8_t *p = (uint8_t *)q - HDR;
	size_t n;
	memcpy(&n, p, sizeof(n));
	atomic_fetch_sub(&live_bytes, (long long)n);
	free(p);
}

static void *count_realloc(void *q, size_t n)
{
	if (!q)
		return count_malloc(n);
	uint8_t *p = (uint8_t *)q - HDR;
	size_t old;
	memcpy(&old, p, sizeof(old));
	uint8_t *np = realloc(p, n + HDR);
	if (!np)
		return NULL;
	memcpy(np, &n, sizeof(n));
	atomic_fetch_add(&live_bytes, (long long)n - (long long)old);
	return np + HDR;
}

/* ---------------------------------------------------------------- fixture */

struct fixture {
	struct app a, b;
	mig_engine *ea, *eb;
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	app_init(&f->a, "A");
	app_init(&f->b, "B");
	app_engine_cfg ca = {.id = "engine-a", .app_url = APP_URL_A};
	app_engine_cfg cb = {.id = "engine-b", .app_url = APP_URL_B};
	f->ea = app_engine_new(&f->a, &ca);
	f->eb = app_engine_new(&f->b, &cb);
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	mig_engine_free(f->ea);
	mig_engine_free(f->eb);
	app_free(&f->a);
	app_free(&f->b);
	free(f);
	return 0;
}

static bool migration_ended(void *arg)
{
	mig_migration_stats s;
	return mig_migration_info(arg, &s) == 0 && s.state != MIG_MIGRATION_RUNNING;
}

/* Moves user i from `from` to `to`; returns the handle (the caller frees
 * it) once the migration ended, with its code in *rc. */
static mig_migration *move(struct fixture *f, mig_engine *from, mig_engine *to, int i, int *rc)
{
	char id[32];
	mig_migration *m = NULL;
	int r = mig_migrate(from, app_uid(i, id), mig_engine_url(to), &m);
	if (r)
		fail_msg("mig_migrate %s: %s: %s", id, mig_err_name(r), mig_engine_last_error(from));
	mig_engine *es[2] = {f->ea, f->eb};
	if (!test_dispatch_until(es, 2, migration_ended, m, SETTLE_MS))
		fail_msg("migration of %s still running after %d ms", id, SETTLE_MS);
	*rc = mig_migration_wait(m, 0);
	return m;
}

static void move_ok(struct fixture *f, mig_engine *from, mig_engine *to, int i)
{
	int rc;
	mig_migration_free(move(f, from, to, i, &rc));
	if (rc)
		fail_msg("migrating user %d: %s", i, mig_err_name(rc));
}

/* Is `mid` retired on `e`: no full record, a slim one? */
struct retired_arg {
	mig_engine *e;
	const char *mid;
};

static bool is_retired(void *arg)
{
	struct retired_arg *x = arg;
	pthread_mutex_lock(&x->e->lock);
	bool r = !mig__handoff_find(x->e, x->mid) && mig__outcomes_find(&x->e->outcomes, x->mid);
	pthread_mutex_unlock(&x->e->lock);
	return r;
}

static void wait_retired(struct fixture *f, mig_engine *e, const char *mid)
{
	mig_engine *es[2] = {f->ea, f->eb};
	struct retired_arg x = {e, mid};
	if (!test_dispatch_until(es, 2, is_retired, &x, SETTLE_MS))
		fail_msg("migration %s not retired on %s", mid, mig_engine_id(e));
}

static size_t outcome_count(mig_engine *e)
{
	pthread_mutex_lock(&e->lock);
	size_t n = e->outcomes.count;
	pthread_mutex_unlock(&e->lock);
	return n;
}

/* ---------------------------------------------------------------- raw client (raw_client.h) */

/* Connects on `channel`; with the cluster secret on the peer channel, as a
 * client of the app (no secret) on the session channel. */
static void raw_open_on(raw_client *rc, mig_engine *e, int channel)
{
	bool peer = channel == MIGWIRE__CHANNEL__CHANNEL_PEER;
	raw_open(rc, mig_engine_url(e), channel, peer ? TEST_SECRET : NULL,
		 peer ? TEST_SECRET_LEN : 0, !peer);
}

static void raw_up(raw_client *rc, struct fixture *f)
{
	mig_engine *es[2] = {f->ea, f->eb};
	raw_wait_up(rc, es, 2);
}

/* The next frame the engine sent (the caller frees it). */
static mig__frame *raw_next(raw_client *rc, struct fixture *f)
{
	mig_engine *es[2] = {f->ea, f->eb};
	return raw_next_frame(rc, es, 2);
}

/* Sends a COMMIT, PREPARE, ABORT or OUTCOME_QUERY of `mid` and returns
 * the answer. */
static mig__frame *ask(raw_client *rc, struct fixture *f, Migwire__Frame__BodyCase which,
		       const char *mid, const char *user)
{
	Migwire__Commit c = MIGWIRE__COMMIT__INIT;
	Migwire__Prepare p = MIGWIRE__PREPARE__INIT;
	Migwire__Abort a = MIGWIRE__ABORT__INIT;
	Migwire__OutcomeQuery q = MIGWIRE__OUTCOME_QUERY__INIT;
	mig__frame fr = MIGWIRE__FRAME__INIT;
	fr.body_case = which;
	switch (which) {
	case MIGWIRE__FRAME__BODY_COMMIT:
		c.mid = (char *)mid;
		c.user = (char *)user;
		fr.commit = &c;
		break;
	case MIGWIRE__FRAME__BODY_PREPARE:
		p.mid = (char *)mid;
		fr.prepare = &p;
		break;
	case MIGWIRE__FRAME__BODY_ABORT:
		a.mid = (char *)mid;
		a.reason = "asked again";
		fr.abort = &a;
		break;
	default:
		q.mid = (char *)mid;
		q.user = (char *)user;
		fr.outcome_query = &q;
		break;
	}
	raw_send(rc, &fr);
	return raw_next(rc, f);
}

static void expect_outcome(mig__frame *fr, const char *mid, Migwire__OutcomeState st)
{
	assert_int_equal(fr->body_case, MIGWIRE__FRAME__BODY_OUTCOME);
	assert_string_equal(fr->outcome->mid, mid);
	assert_int_equal(fr->outcome->state, st);
	mig__wire_free(fr);
}

static void expect_body(mig__frame *fr, Migwire__Frame__BodyCase which, const char *mid)
{
	if (fr->body_case != which)
		fail_msg("got %s, expected another frame", mig__wire_body_name(fr));
	const char *got = which == MIGWIRE__FRAME__BODY_COMMITTED ? fr->committed->mid
			  : which == MIGWIRE__FRAME__BODY_PREPARED ? fr->prepared->mid
								   : fr->aborted->mid;
	assert_string_equal(got, mid);
	mig__wire_free(fr);
}

/* ---------------------------------------------------------------- tests */

static void test_answers_from_retired_records(void **state)
{
	struct fixture *f = *state;
	char u0[32], u1[32];
	app_uid(0, u0);
	app_uid(1, u1);
	for (int i = 0; i < 3; i++)
		app_add_user(&f->a, f->ea, i, 1);
	/* A client of user 0 holds a token for A, unused while the user is
	 * there: it attaches only after the user left. */
	char token[MIG_SESSION_TOKEN_MAX];
	assert_int_equal(mig_session_token(f->ea, u0, token, sizeof(token)), 0);

	/* User 0 moves to B (committed); user 1's merge fails at B (aborted:
	 * B dropped its copy, A kept the user). */
	int rc;
	mig_migration *m0 = move(f, f->ea, f->eb, 0, &rc);
	assert_int_equal(rc, 0);
	f->b.fail_merge_user = 1;
	f->b.fail_merge_rc = -5;
	mig_migration *m1 = move(f, f->ea, f->eb, 1, &rc);
	assert_int_equal(rc, MIG_ECALLBACK);
	f->b.fail_merge_user = -1;
	char mid0[MIG__MID_LEN + 1], mid1[MIG__MID_LEN + 1];
	mig__strlcpy(mid0, mig_migration_id(m0), sizeof(mid0));
	mig__strlcpy(mid1, mig_migration_id(m1), sizeof(mid1));
	/* Many more migrations after them. */
	for (int k = 0; k < 20; k++)
		move_ok(f, k % 2 ? f->eb : f->ea, k % 2 ? f->ea : f->eb, 2);
	app_check_holds(&f->a, f->ea, 2, 1);

	/* Both engines keep only the slim records of the first two. */
	wait_retired(f, f->ea, mid0);
	wait_retired(f, f->eb, mid0);
	wait_retired(f, f->ea, mid1);
	wait_retired(f, f->eb, mid1);
	assert_int_equal(outcome_count(f->ea), 22);
	assert_int_equal(outcome_count(f->eb), 22);

	/* The app's handles outlive the full records. */
	mig_migration_stats st;
	assert_int_equal(mig_migration_info(m0, &st), 0);
	assert_int_equal(st.state, MIG_MIGRATION_COMMITTED);
	assert_true(st.bytes_sent > 0);
	assert_int_equal(mig_migration_wait(m0, 0), 0);
	assert_int_equal(mig_migration_cancel(m0), MIG_ESTATE);
	assert_string_equal(mig_migration_id(m0), mid0);
	assert_int_equal(mig_migration_info(m1, &st), 0);
	assert_int_equal(st.state, MIG_MIGRATION_ABORTED);
	assert_int_equal(st.error, MIG_ECALLBACK);
	assert_int_equal(mig_migration_wait(m1, 0), MIG_ECALLBACK);
	assert_int_equal(mig_migration_cancel(m1), MIG_ESTATE);
	mig_migration_free(m0);
	mig_migration_free(m1);

	/* The destination, asked again as a source that lost its answers
	 * would. */
	raw_client rb;
	raw_open_on(&rb, f->eb, MIGWIRE__CHANNEL__CHANNEL_PEER);
	raw_up(&rb, f);
	expect_body(ask(&rb, f, MIGWIRE__FRAME__BODY_COMMIT, mid0, u0),
		    MIGWIRE__FRAME__BODY_COMMITTED, mid0);
	expect_body(ask(&rb, f, MIGWIRE__FRAME__BODY_PREPARE, mid0, u0),
		    MIGWIRE__FRAME__BODY_PREPARED, mid0);
	expect_outcome(ask(&rb, f, MIGWIRE__FRAME__BODY_ABORT, mid0, u0), mid0,
		       MIGWIRE__OUTCOME_STATE__OUTCOME_COMMITTED);
	expect_outcome(ask(&rb, f, MIGWIRE__FRAME__BODY_OUTCOME_QUERY, mid0, u0), mid0,
		       MIGWIRE__OUTCOME_STATE__OUTCOME_COMMITTED);
	expect_outcome(ask(&rb, f, MIGWIRE__FRAME__BODY_COMMIT, mid1, u1), mid1,
		       MIGWIRE__OUTCOME_STATE__OUTCOME_ABORTED);
	expect_body(ask(&rb, f, MIGWIRE__FRAME__BODY_ABORT, mid1, u1),
		    MIGWIRE__FRAME__BODY_ABORTED, mid1);
	expect_outcome(ask(&rb, f, MIGWIRE__FRAME__BODY_OUTCOME_QUERY, mid1, u1), mid1,
		       MIGWIRE__OUTCOME_STATE__OUTCOME_ABORTED);
	/* A PREPARE of the aborted one: no merge, no answer; the next
	 * question is answered first. */
	Migwire__Prepare p = MIGWIRE__PREPARE__INIT;
	p.mid = mid1;
	mig__frame fp = MIGWIRE__FRAME__INIT;
	fp.body_case = MIGWIRE__FRAME__BODY_PREPARE;
	fp.prepare = &p;
	raw_send(&rb, &fp);
	expect_outcome(ask(&rb, f, MIGWIRE__FRAME__BODY_OUTCOME_QUERY, mid0, u0), mid0,
		       MIGWIRE__OUTCOME_STATE__OUTCOME_COMMITTED);
	/* A BEGIN that reuses a retired id is refused. */
	Migwire__DomainInfo di[APP_NDOM];
	Migwire__DomainInfo *dp[APP_NDOM];
	for (int d = 0; d < APP_NDOM; d++) {
		migwire__domain_info__init(&di[d]);
		di[d].name = (char *)app_domain_name[d];
		di[d].version = app_domain_version[d];
		dp[d] = &di[d];
	}
	Migwire__Begin b = MIGWIRE__BEGIN__INIT;
	b.mid = mid0;
	b.user = "user-031";
	b.source_engine = "engine-a";
	b.source_url = (char *)mig_engine_url(f->ea);
	b.n_domains = APP_NDOM;
	b.domains = dp;
	mig__frame fb = MIGWIRE__FRAME__INIT;
	fb.body_case = MIGWIRE__FRAME__BODY_BEGIN;
	fb.begin = &b;
	raw_send(&rb, &fb);
	mig__frame *fr = raw_next(&rb, f);
	assert_int_equal(fr->body_case, MIGWIRE__FRAME__BODY_REJECT);
	assert_string_equal(fr->reject->mid, mid0);
	assert_int_equal(fr->reject->code, MIG_EEXIST);
	mig__wire_free(fr);
	raw_close(&rb);

	/* The source: its outcomes, and a COMMIT of its own migration's id
	 * is not its to answer. */
	raw_client ra;
	raw_open_on(&ra, f->ea, MIGWIRE__CHANNEL__CHANNEL_PEER);
	raw_up(&ra, f);
	expect_outcome(ask(&ra, f, MIGWIRE__FRAME__BODY_OUTCOME_QUERY, mid0, u0), mid0,
		       MIGWIRE__OUTCOME_STATE__OUTCOME_COMMITTED);
	expect_outcome(ask(&ra, f, MIGWIRE__FRAME__BODY_OUTCOME_QUERY, mid1, u1), mid1,
		       MIGWIRE__OUTCOME_STATE__OUTCOME_ABORTED);
	expect_outcome(ask(&ra, f, MIGWIRE__FRAME__BODY_COMMIT, mid0, u0), mid0,
		       MIGWIRE__OUTCOME_STATE__OUTCOME_UNKNOWN_USER_ABSENT);
	raw_close(&ra);

	/* Nothing moved. */
	app_check_holds(&f->b, f->eb, 0, 1);
	app_check_absent(&f->a, f->ea, 0);
	app_check_holds(&f->a, f->ea, 1, 1);
	assert_int_equal(mig_user_get_state(f->eb, u1), MIG_USER_ABSENT);
	assert_int_equal(f->b.users[0].merges, APP_NDOM); /* once per domain */
	app_check_no_violations(&f->a);
	app_check_no_violations(&f->b);

	/* User 0's client attaches to A late: it is sent to B, with a token
	 * that B accepts. */
	raw_client rs;
	raw_open_on(&rs, f->ea, MIGWIRE__CHANNEL__CHANNEL_SESSION);
	raw_up(&rs, f);
	Migwire__Attach at = MIGWIRE__ATTACH__INIT;
	at.token = token;
	mig__frame fa = MIGWIRE__FRAME__INIT;
	fa.body_case = MIGWIRE__FRAME__BODY_ATTACH;
	fa.attach = &at;
	raw_send(&rs, &fa);
	fr = raw_next(&rs, f);
	assert_int_equal(fr->body_case, MIGWIRE__FRAME__BODY_REDIRECT);
	assert_string_equal(fr->redirect->user, u0);
	assert_string_equal(fr->redirect->engine_id, "engine-b");
	assert_string_equal(fr->redirect->session_url, mig_engine_url(f->eb));
	assert_string_equal(fr->redirect->app_url, APP_URL_B);
	char token_b[MIG_SESSION_TOKEN_MAX];
	mig__strlcpy(token_b, fr->redirect->token, sizeof(token_b));
	mig__wire_free(fr);
	mig_engine *es[2] = {f->ea, f->eb};
	if (!test_dispatch_until(es, 2, raw_is_down, &rs, 10000))
		fail_msg("A kept the redirected client");
	raw_close(&rs);
	raw_open_on(&rs, f->eb, MIGWIRE__CHANNEL__CHANNEL_SESSION);
	raw_up(&rs, f);
	at.token = token_b;
	raw_send(&rs, &fa);
	fr = raw_next(&rs, f);
	assert_int_equal(fr->body_case, MIGWIRE__FRAME__BODY_ATTACH_REPLY);
	assert_int_equal(fr->attach_reply->code, 0);
	assert_string_equal(fr->attach_reply->user, u0);
	mig__wire_free(fr);
	raw_close(&rs);
}

static void test_memory_per_outcome(void **state)
{
	struct fixture *f = *state;
	app_add_user(&f->a, f->ea, 0, 1);
	mig_engine *es[2] = {f->ea, f->eb};
	/* Warm up (connections, buffers, the first chunks and hash tables). */
	for (int k = 0; k < 20; k++)
		move_ok(f, k % 2 ? f->eb : f->ea, k % 2 ? f->ea : f->eb, 0);
	test_dispatch_for(es, 2, 200);
	size_t n0 = outcome_count(f->ea) + outcome_count(f->eb);
	long long b0 = atomic_load(&live_bytes);

	const int moves = 300;
	for (int k = 0; k < moves; k++)
		move_ok(f, k % 2 ? f->eb : f->ea, k % 2 ? f->ea : f->eb, 0);
	test_dispatch_for(es, 2, 200);
	size_t n1 = outcome_count(f->ea) + outcome_count(f->eb);
	long long b1 = atomic_load(&live_bytes);
	app_check_holds(&f->a, f->ea, 0, 1);

	/* Each migration is remembered once on either side. */
	assert_int_equal(n1 - n0, 2 * moves);
	double per = (double)(b1 - b0) / (double)(n1 - n0);
	print_message("# %zu outcomes remembered: library live bytes %lld -> %lld, "
		      "%.1f bytes per outcome (bound %d)\n",
		      n1 - n0, b0, b1, per, MAX_BYTES_PER_OUTCOME);
	assert_true(per < MAX_BYTES_PER_OUTCOME);
}

int main(void)
{
	/* Before any engine: every library allocation is counted. */
	if (mig_set_allocator(count_malloc, count_realloc, count_free) != 0)
		return 1;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_answers_from_retired_records, setup, teardown),
		cmocka_unit_test_setup_teardown(test_memory_per_outcome, setup, teardown),
	};
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	/* Both engines freed: nothing of the library's is left. */
	long long left = atomic_load(&live_bytes);
	if (left != 0) {
		fprintf(stderr, "library bytes still live at exit: %lld\n", left);
		return 1;
	}
	return rc;
}
