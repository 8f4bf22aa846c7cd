/* Light-state handoff between two real engines over loopback: 100 users with
 * two domains (versions 1 and 3, 0-64 KiB each); 50 move A -> B through the
 * control channel and back, byte-identical, with release/activate hooks run
 * exactly where they should. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "migrate/control.h"
#include "support.h"

#define NUSERS 100
#define NMOVE 50
#define MAX_STATE (64 * 1024)

/* The application's per-user state on one engine. */
struct app_user {
	bool present;  /* the app holds state for this user */
	bool active;   /* the app serves it */
	bool paused;
	uint8_t *dom[2];
	size_t len[2];
	uint32_t merged_version[2];
	int released, activated, dropped, resumed;
};

struct app {
	const char *name;
	struct app_user users[NUSERS];
};

static int user_index(const char *user)
{
	int i;
	if (sscanf(user, "user-%d", &i) != 1 || i < 0 || i >= NUSERS)
		return -1;
	return i;
}

static int extract_dom(mig_engine *e, const char *user, mig_buf *out, int d, struct app *a)
{
	(void)e;
	struct app_user *u = &a->users[user_index(user)];
	assert_true(u->present && u->paused);
	return mig_buf_append(out, u->dom[d], u->len[d]);
}

static int merge_dom(const char *user, uint32_t version, const void *data, size_t len, int d,
		     struct app *a)
{
	struct app_user *u = &a->users[user_index(user)];
	assert_false(u->active);
	free(u->dom[d]);
	u->dom[d] = malloc(len ? len : 1);
	memcpy(u->dom[d], data, len);
	u->len[d] = len;
	u->merged_version[d] = version;
	u->present = true;
	return 0;
}

static int extract0(mig_engine *e, const char *user, mig_buf *out, void *ud)
{
	return extract_dom(e, user, out, 0, ud);
}
static int extract1(mig_engine *e, const char *user, mig_buf *out, void *ud)
{
	return extract_dom(e, user, out, 1, ud);
}
static int merge0(mig_engine *e, const char *user, uint32_t v, const void *d, size_t n, void *ud)
{
	(void)e;
	return merge_dom(user, v, d, n, 0, ud);
}
static int merge1(mig_engine *e, const char *user, uint32_t v, const void *d, size_t n, void *ud)
{
	(void)e;
	return merge_dom(user, v, d, n, 1, ud);
}

static int on_pause(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct app *a = ud;
	a->users[user_index(user)].paused = true;
	a->users[user_index(user)].active = false;
	return 0;
}
static void on_resume(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct app *a = ud;
	struct app_user *u = &a->users[user_index(user)];
	u->paused = false;
	u->active = true;
	u->resumed++;
}
static void on_release(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct app *a = ud;
	struct app_user *u = &a->users[user_index(user)];
	for (int d = 0; d < 2; d++) {
		free(u->dom[d]);
		u->dom[d] = NULL;
		u->len[d] = 0;
	}
	u->present = u->paused = u->active = false;
	u->released++;
}
static int on_incoming(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct app *a = ud;
	assert_false(a->users[user_index(user)].present);
	return 0;
}
static void on_activate(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct app *a = ud;
	struct app_user *u = &a->users[user_index(user)];
	u->active = true;
	u->paused = false;
	u->activated++;
}
static void on_drop(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct app *a = ud;
	struct app_user *u = &a->users[user_index(user)];
	for (int d = 0; d < 2; d++) {
		free(u->dom[d]);
		u->dom[d] = NULL;
	}
	u->present = false;
	u->dropped++;
}

static mig_engine *make_engine(struct app *a, const char *id)
{
	mig_engine_options o;
	test_engine_options(&o, id);
	mig_engine *e = NULL;
	assert_int_equal(mig_engine_new(&e, &o), 0);
	mig_hooks h = {on_pause, on_resume, on_release, on_incoming, on_activate, on_drop};
	assert_int_equal(mig_engine_set_hooks(e, &h, a), 0);
	mig_light_domain d0 = {"progress", "test.Progress", 1, extract0, merge0};
	mig_light_domain d1 = {"history", "test.History", 3, extract1, merge1};
	assert_int_equal(mig_light_domain_register(e, &d0, a), 0);
	assert_int_equal(mig_light_domain_register(e, &d1, a), 0);
	assert_int_equal(mig_engine_start(e), 0);
	return e;
}

static void app_free(struct app *a)
{
	for (int i = 0; i < NUSERS; i++)
		for (int d = 0; d < 2; d++)
			free(a->users[i].dom[d]);
}

struct fixture {
	struct app a, b;
	uint8_t *orig[NUSERS][2];
	size_t orig_len[NUSERS][2];
	mig_engine *ea, *eb;
};

static void seed_users(struct fixture *f)
{
	srand(12345);
	for (int i = 0; i < NUSERS; i++) {
		char id[32];
		snprintf(id, sizeof(id), "user-%03d", i);
		assert_int_equal(mig_user_add(f->ea, id), 0);
		struct app_user *u = &f->a.users[i];
		u->present = u->active = true;
		for (int d = 0; d < 2; d++) {
			size_t len = (size_t)rand() % (MAX_STATE + 1);
			if (i == 0)
				len = 0; /* an empty domain must travel too */
			if (i == 1)
				len = MAX_STATE;
			u->dom[d] = malloc(len ? len : 1);
			test_fill(u->dom[d], len, (unsigned)(i * 2 + d + 1));
			u->len[d] = len;
			f->orig[i][d] = malloc(len ? len : 1);
			memcpy(f->orig[i][d], u->dom[d], len);
			f->orig_len[i][d] = len;
		}
	}
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	f->a.name = "A";
	f->b.name = "B";
	f->ea = make_engine(&f->a, "engine-a");
	f->eb = make_engine(&f->b, "engine-b");
	seed_users(f);
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
	for (int i = 0; i < NUSERS; i++)
		for (int d = 0; d < 2; d++)
			free(f->orig[i][d]);
	free(f);
	return 0;
}

static void check_holds(struct app *a, mig_engine *e, struct fixture *f, int i)
{
	char id[32];
	snprintf(id, sizeof(id), "user-%03d", i);
	assert_int_equal(mig_user_get_state(e, id), MIG_USER_ACTIVE);
	struct app_user *u = &a->users[i];
	assert_true(u->present && u->active);
	for (int d = 0; d < 2; d++) {
		assert_int_equal(u->len[d], f->orig_len[i][d]);
		assert_memory_equal(u->dom[d], f->orig[i][d], u->len[d]);
	}
}

static void check_absent(struct app *a, mig_engine *e, int i)
{
	char id[32];
	snprintf(id, sizeof(id), "user-%03d", i);
	assert_int_equal(mig_user_get_state(e, id), MIG_USER_ABSENT);
	assert_false(a->users[i].present);
}

/* Moves users [0, NMOVE) from `from` to `to` through from's control
 * channel, one migratectl-style request each. */
static void move_via_control(mig_engine *from, mig_engine *to)
{
	test_runner *ra = test_runner_start(from), *rb = test_runner_start(to);
	mig_ctl_options o = {0};
	o.url = mig_engine_url(from);
	o.secret = TEST_SECRET;
	o.secret_len = TEST_SECRET_LEN;
	mig_ctl *ctl = NULL;
	char err[256];
	assert_int_equal(mig_ctl_new(&ctl, &o, err, sizeof(err)), 0);
	for (int i = 0; i < NMOVE; i++) {
		char id[32];
		snprintf(id, sizeof(id), "user-%03d", i);
		mig_event fin;
		int rc = mig_ctl_migrate(ctl, id, mig_engine_url(to), 20000, NULL, NULL, &fin);
		if (rc)
			fail_msg("migrating %s: %s: %s", id, mig_err_name(rc), mig_ctl_last_error(ctl));
		assert_int_equal(fin.type, MIG_EVENT_COMMITTED);
		assert_true(fin.bytes_sent > 0);
	}
	mig_ctl_free(ctl);
	test_runner_stop(ra);
	test_runner_stop(rb);
}

static void test_fifty_there_and_back(void **state)
{
	struct fixture *f = *state;
	move_via_control(f->ea, f->eb);
	for (int i = 0; i < NMOVE; i++) {
		check_absent(&f->a, f->ea, i);
		check_holds(&f->b, f->eb, f, i);
		assert_int_equal(f->a.users[i].released, 1);
		assert_int_equal(f->b.users[i].activated, 1);
		assert_int_equal(f->b.users[i].merged_version[0], 1);
		assert_int_equal(f->b.users[i].merged_version[1], 3);
	}
	for (int i = NMOVE; i < NUSERS; i++) {
		check_holds(&f->a, f->ea, f, i);
		assert_int_equal(f->a.users[i].released, 0);
		assert_false(f->b.users[i].present);
	}
	assert_int_equal(mig_user_count(f->ea), NUSERS - NMOVE);
	assert_int_equal(mig_user_count(f->eb), NMOVE);

	move_via_control(f->eb, f->ea);
	for (int i = 0; i < NUSERS; i++) {
		check_holds(&f->a, f->ea, f, i);
		check_absent(&f->b, f->eb, i);
	}
	assert_int_equal(mig_user_count(f->ea), NUSERS);
	assert_int_equal(mig_user_count(f->eb), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_fifty_there_and_back, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
