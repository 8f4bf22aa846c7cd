/* The link-loss matrix: one migration A -> B per case, with the peer link cut
 * (mig__engine_set_fault) on the engine that sends the named frame, either
 * instead of sending it (DROP_BEFORE) or right after it went out (DROP_AFTER).
 *
 * Whatever is lost, the handoff must settle with exactly one active copy,
 * byte-identical to the original, and the side that wins must be the one the
 * design promises:
 *   - the link drops before the source decided COMMIT (it never saw
 *     PREPARED): the migration aborts and the user stays at the source;
 *   - the link drops once COMMIT was decided: the migration commits and the
 *     user ends at the destination (the source re-sends COMMIT, the
 *     destination asks for the OUTCOME).
 * A short table (TAP comments) gives the outcome and time to settle. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "app_model.h"
#include "engine_int.h"
#include "support.h"

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

/* Small, so that the cases run quickly; the outcomes do not depend on it
 * (every case is driven by the link going down, not by a timer), but under
 * valgrind a first connection alone can take longer than 500 ms. */
#define PEER_TIMEOUT_MS (RUNNING_ON_VALGRIND ? 4000 : 500)
#define SETTLE_MS 15000
#define USER 1

enum side {
	SRC,
	DST
};

struct lcase {
	const char *name;
	enum side where; /* which engine cuts the link */
	enum mig__fault_point point;
	enum mig__fault_action action;
	enum side winner; /* where the user must end up */
};

static const struct lcase cases[] = {
	{"ACCEPT lost (dst, before)", DST, MIG__FAULT_SEND_ACCEPT, MIG__FAULT_DROP_BEFORE, SRC},
	{"PREPARE sent, then drop (src, after)", SRC, MIG__FAULT_SEND_PREPARE,
	 MIG__FAULT_DROP_AFTER, SRC},
	{"PREPARE lost (src, before)", SRC, MIG__FAULT_SEND_PREPARE, MIG__FAULT_DROP_BEFORE, SRC},
	{"PREPARED sent, then drop (dst, after)", DST, MIG__FAULT_SEND_PREPARED,
	 MIG__FAULT_DROP_AFTER, DST},
	{"PREPARED lost (dst, before)", DST, MIG__FAULT_SEND_PREPARED, MIG__FAULT_DROP_BEFORE, SRC},
	{"COMMIT sent, then drop (src, after)", SRC, MIG__FAULT_SEND_COMMIT, MIG__FAULT_DROP_AFTER,
	 DST},
	{"COMMIT lost (src, before)", SRC, MIG__FAULT_SEND_COMMIT, MIG__FAULT_DROP_BEFORE, DST},
	{"COMMITTED lost (dst, before)", DST, MIG__FAULT_SEND_COMMITTED, MIG__FAULT_DROP_BEFORE,
	 DST},
	{"COMMITTED sent, then drop (dst, after)", DST, MIG__FAULT_SEND_COMMITTED,
	 MIG__FAULT_DROP_AFTER, DST},
};

#define NCASES (sizeof(cases) / sizeof(cases[0]))

/* One line of the summary table per case, printed at the end. */
static char table[NCASES][160];

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

struct fixture {
	const struct lcase *c;
	struct app a, b;
	mig_engine *ea, *eb;
};

/* *state comes in as the case (the test's initial state). */
static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	f->c = *state;
	app_init(&f->a, "A");
	app_init(&f->b, "B");
	app_engine_cfg ca = {.id = "engine-a", .peer_timeout_ms = PEER_TIMEOUT_MS};
	app_engine_cfg cb = {.id = "engine-b", .peer_timeout_ms = PEER_TIMEOUT_MS};
	f->ea = app_engine_new(&f->a, &ca);
	f->eb = app_engine_new(&f->b, &cb);
	app_add_user(&f->a, f->ea, USER, 1);
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

struct settle_arg {
	mig_migration *m;
	mig_engine *src, *dst;
	struct app *asrc, *adst;
	const char *user;
	int idx; /* the user's index in the apps */
	int violations;
	char violation[200];
};

static const char *state_name(mig_user_state s);

/* Checked between dispatches (every state change happens inside dispatch, on
 * this thread, so the two engines are seen in a consistent state): never two
 * active owners, never none. */
static void check_invariants(struct settle_arg *x)
{
	mig_user_state ss = mig_user_get_state(x->src, x->user);
	mig_user_state sd = mig_user_get_state(x->dst, x->user);
	const struct app_user *us = &x->asrc->users[x->idx], *ud = &x->adst->users[x->idx];
	const char *bad = NULL;
	if (ss == MIG_USER_ACTIVE && sd == MIG_USER_ACTIVE)
		bad = "two active owners";
	else if (ss == MIG_USER_ABSENT && sd != MIG_USER_ACTIVE)
		bad = "no owner";
	else if (us->active && ud->active)
		bad = "both apps serve the user";
	else if (!us->present && !ud->present)
		bad = "no app holds the user's state";
	if (bad && x->violations++ == 0)
		snprintf(x->violation, sizeof(x->violation), "%s (source %s, destination %s)", bad,
			 state_name(ss), state_name(sd));
}

/* The handle ended and the destination no longer holds the user in limbo. */
static bool settled(void *arg)
{
	struct settle_arg *x = arg;
	check_invariants(x);
	mig_migration_stats s;
	if (mig_migration_info(x->m, &s) != 0 || s.state == MIG_MIGRATION_RUNNING)
		return false;
	mig_user_state st = mig_user_get_state(x->dst, x->user);
	return st != MIG_USER_INCOMING && st != MIG_USER_PARKED;
}

/* Only checks the invariants; never true. */
static bool watch(void *arg)
{
	check_invariants(arg);
	return false;
}

static const char *state_name(mig_user_state s)
{
	static const char *const names[] = {"ABSENT", "ACTIVE",   "MIGRATING",
					    "PAUSED", "INCOMING", "PARKED"};
	return (unsigned)s < 6 ? names[s] : "?";
}

/* Exactly one engine has the user, with the original bytes, and each app's
 * hooks tell the same story. */
static void check_final(struct fixture *f, enum side winner, const char *user)
{
	mig_user_state sa = mig_user_get_state(f->ea, user);
	mig_user_state sb = mig_user_get_state(f->eb, user);
	if (!((sa == MIG_USER_ACTIVE && sb == MIG_USER_ABSENT) ||
	      (sa == MIG_USER_ABSENT && sb == MIG_USER_ACTIVE)))
		fail_msg("not exactly one owner: A %s, B %s", state_name(sa), state_name(sb));
	struct app_user *ua = &f->a.users[USER], *ub = &f->b.users[USER];
	if (winner == SRC) {
		app_check_holds(&f->a, f->ea, USER, 1);
		app_check_absent(&f->b, f->eb, USER);
		/* The source never released; if it paused, it resumed. */
		assert_int_equal(ua->released, 0);
		assert_int_equal(ua->resumed, ua->paused_n);
		/* The destination never activated; a slot it prepared, it dropped. */
		assert_int_equal(ub->activated, 0);
		assert_int_equal(ub->dropped, ub->incoming);
	} else {
		app_check_holds(&f->b, f->eb, USER, 1);
		app_check_absent(&f->a, f->ea, USER);
		/* The source paused once and released, never resumed. */
		assert_int_equal(ua->paused_n, 1);
		assert_int_equal(ua->released, 1);
		assert_int_equal(ua->resumed, 0);
		/* The destination took the user in once and activated it once. */
		assert_int_equal(ub->incoming, 1);
		assert_int_equal(ub->activated, 1);
		assert_int_equal(ub->dropped, 0);
		assert_int_equal(ub->merged_version[0], app_domain_version[0]);
		assert_int_equal(ub->merged_version[1], app_domain_version[1]);
	}
	app_check_no_violations(&f->a);
	app_check_no_violations(&f->b);
}

static void run_case(void **state, size_t k)
{
	struct fixture *f = *state;
	const struct lcase *c = &cases[k];
	assert_ptr_equal(c, f->c);
	mig_engine *es[2] = {f->ea, f->eb};
	char user[32];
	app_uid(USER, user);

	mig__engine_set_fault(c->where == SRC ? f->ea : f->eb, c->point, c->action, 1);
	uint64_t t0 = now_ms();
	mig_migration *m = NULL;
	assert_int_equal(mig_migrate(f->ea, user, mig_engine_url(f->eb), &m), 0);
	struct settle_arg x = {m, f->ea, f->eb, &f->a, &f->b, user, USER, 0, ""};
	bool ok = test_dispatch_until(es, 2, settled, &x, SETTLE_MS);
	uint64_t took = now_ms() - t0;
	mig_migration_stats st;
	assert_int_equal(mig_migration_info(m, &st), 0);
	snprintf(table[k], sizeof(table[k]), "# %-40s | %-9s %-13s | owner %-3s | %5llu ms",
		 c->name,
		 st.state == MIG_MIGRATION_COMMITTED ? "committed"
		 : st.state == MIG_MIGRATION_ABORTED ? "aborted"
						     : "RUNNING",
		 st.state == MIG_MIGRATION_ABORTED ? mig_err_name(st.error) : "",
		 mig_user_get_state(f->ea, user) == MIG_USER_ACTIVE   ? "A"
		 : mig_user_get_state(f->eb, user) == MIG_USER_ACTIVE ? "B"
								      : "?",
		 (unsigned long long)took);
	fprintf(stderr, "%s\n", table[k]);
	if (!ok)
		fail_msg("%s: not settled after %d ms (A %s, B %s)", c->name, SETTLE_MS,
			 state_name(mig_user_get_state(f->ea, user)),
			 state_name(mig_user_get_state(f->eb, user)));
	if (x.violations)
		fail_msg("%s: %d invariant violation(s); first: %s", c->name, x.violations,
			 x.violation);
	/* The fault fired (the case tested what it says). */
	pthread_mutex_lock(&(c->where == SRC ? f->ea : f->eb)->lock);
	unsigned left = (c->where == SRC ? f->ea : f->eb)->fault_count;
	pthread_mutex_unlock(&(c->where == SRC ? f->ea : f->eb)->lock);
	assert_int_equal(left, 0);

	int rc = mig_migration_wait(m, 0);
	if (c->winner == SRC) {
		assert_int_equal(st.state, MIG_MIGRATION_ABORTED);
		assert_true(rc < 0);
		assert_int_equal(app_events(&f->a, MIG_EVENT_ABORTED, user, NULL), 1);
		assert_int_equal(app_events(&f->a, MIG_EVENT_COMMITTED, user, NULL), 0);
	} else {
		assert_int_equal(st.state, MIG_MIGRATION_COMMITTED);
		assert_int_equal(rc, 0);
		assert_int_equal(app_events(&f->a, MIG_EVENT_COMMITTED, user, NULL), 1);
		assert_int_equal(app_events(&f->a, MIG_EVENT_ABORTED, user, NULL), 0);
		assert_int_equal(app_events(&f->b, MIG_EVENT_ACTIVATED, user, NULL), 1);
	}
	mig_migration_free(m);
	check_final(f, c->winner, user);

	/* Frames still in flight (re-sent COMMITs, late queries) change nothing:
	 * watch for a while (no condition ends this window early). */
	test_dispatch_until(es, 2, watch, &x, 3 * PEER_TIMEOUT_MS / 2);
	if (x.violations)
		fail_msg("%s: after settling: %s", c->name, x.violation);
	check_final(f, c->winner, user);

	/* And both engines still work: the user moves to the other side. */
	mig_engine *from = c->winner == SRC ? f->ea : f->eb;
	mig_engine *to = c->winner == SRC ? f->eb : f->ea;
	struct app *afrom = c->winner == SRC ? &f->a : &f->b;
	struct app *ato = c->winner == SRC ? &f->b : &f->a;
	m = NULL;
	assert_int_equal(mig_migrate(from, user, mig_engine_url(to), &m), 0);
	x = (struct settle_arg){m, from, to, afrom, ato, user, USER, 0, ""};
	assert_true(test_dispatch_until(es, 2, settled, &x, SETTLE_MS));
	assert_int_equal(x.violations, 0);
	rc = mig_migration_wait(m, 0);
	mig_migration_free(m);
	if (rc)
		fail_msg("%s: the next migration failed: %s", c->name, mig_err_name(rc));
	app_check_holds(ato, to, USER, 1);
	app_check_absent(afrom, from, USER);
}

static void test_case(void **state)
{
	struct fixture *f = *state;
	run_case(state, (size_t)(f->c - cases));
}

static int print_table(void **state)
{
	(void)state;
	fprintf(stderr, "# %-40s | %-23s | %-9s | settle\n", "case", "outcome", "owner");
	for (size_t k = 0; k < NCASES; k++)
		fprintf(stderr, "%s\n", table[k][0] ? table[k] : "# (not run)");
	return 0;
}

int main(void)
{
	struct CMUnitTest tests[NCASES];
	for (size_t k = 0; k < NCASES; k++)
		tests[k] = (struct CMUnitTest){cases[k].name, test_case, setup, teardown,
					       (void *)&cases[k]};
	return cmocka_run_group_tests(tests, NULL, print_table);
}
