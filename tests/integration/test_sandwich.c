/* The sandwich example end to end: two real sandwich_server processes
 * (cloudlets A and B, separate state folders), the real sandwich_client for
 * several users, and migrations through the control channel
 * (<migrate/control.h>, what migratectl uses). Checks the users' steps and
 * files directly: the client's per-user summary, the servers' own step
 * lines, and the state folders.
 *
 *   test_demo_scenario  the scenario of scripts/demo: three users on A;
 *                       mid-assembly user-1 moves to B, later back to A
 *   test_bounce         faster frames: user-1 goes A->B->A->B->A and user-2
 *                       ends at B while the others keep going
 *
 * For every user: finished; steps bread..done in order, none repeated or
 * skipped (client and server side); the server's frame count always equal
 * to the client's; frames.log at the cloudlet that holds the user at the
 * end is byte for byte what its camera sent (frames 1..N once each, in
 * order), frames.idx lists 1..N, and the other cloudlet has no folder. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <migrate/control.h>

#include "cloudlets.h"
#include "procs.h"

#define SECRET "sandwich-test-secret-0123456789abcdef"
#define MAX_USERS 8

static const char *const STEPS[] = {"bread", "ham", "lettuce", "half", "tomato", "full", "done"};
#define NSTEPS 7

/* ---------------------------------------------------------------- files and processes */

static bool exists(const char *path)
{
	struct stat st;
	return lstat(path, &st) == 0;
}

/* ---------------------------------------------------------------- fixture */

static int setup(void **state)
{
	return cloudlets_setup(state, "mig-sandwich", SECRET, false);
}

static void client_start(struct cloudlets *f, const char *users, const char *interval_ms,
			 const char *hold, const char *image_bytes)
{
	const char *exe = getenv("MIG_SANDWICH_CLIENT");
	if (!exe)
		fail_msg("MIG_SANDWICH_CLIENT is not set (run through meson test)");
	const char *argv[] = {
		exe,         "--server", f->a.app, "--users",       users,       "--interval-ms",
		interval_ms, "--hold",   hold,     "--image-bytes", image_bytes, "--timeout",
		"120",       NULL};
	f->client = test_spawn(argv, f->clog, f->cerr);
}

/* Moves `user` from one cloudlet to the other through the control channel. */
static void migrate(struct cloudlets *f, const char *user, struct cloudlet *from,
		    struct cloudlet *to)
{
	mig_ctl *ctl = cloudlet_ctl(f, from);
	mig_event final;
	memset(&final, 0, sizeof(final));
	int rc = mig_ctl_migrate(ctl, user, to->url, 60000, NULL, NULL, &final);
	if (rc)
		fail_msg("migrating %s %s->%s: %s: %s", user, from->name, to->name,
			 mig_err_name(rc), mig_ctl_last_error(ctl));
	mig_ctl_free(ctl);
	print_message("# %s %s->%s: %" PRIu64 " bytes, %u rounds, downtime %.3f ms\n", user,
		      from->name, to->name, final.bytes_sent, final.rounds,
		      final.downtime_us / 1000.0);
	/* The user's folder is where the user is, and only there. */
	char here[512], there[512];
	snprintf(here, sizeof(here), "%s/%s", to->dir, user);
	snprintf(there, sizeof(there), "%s/%s", from->dir, user);
	assert_true(exists(here));
	assert_false(exists(there));
}

/* ---------------------------------------------------------------- checks */

/* The steps the servers announced for `user`, from both logs in time order
 * ("<time> <cloudlet> step <user> step=<name> frame=<n>"). */
static void server_steps(struct cloudlets *f, const char *user, char *out, size_t cap)
{
	struct {
		double t;
		char step[16];
	} seen[64];
	int n = 0;
	struct cloudlet *cs[] = {&f->a, &f->b};
	for (int k = 0; k < 2; k++) {
		char *text = test_slurp(cs[k]->log, NULL);
		assert_non_null(text);
		for (char *line = text, *nl; line && *line; line = nl ? nl + 1 : NULL) {
			nl = strchr(line, '\n');
			if (nl)
				*nl = '\0';
			double t;
			char name[16], what[16], u[64], step[16];
			if (sscanf(line, "%lf %15s %15s %63s step=%15s", &t, name, what, u, step) ==
				    5 &&
			    strcmp(what, "step") == 0 && strcmp(u, user) == 0 && n < 64) {
				seen[n].t = t;
				snprintf(seen[n].step, sizeof(seen[n].step), "%s", step);
				n++;
			}
		}
		free(text);
	}
	for (int i = 1; i < n; i++) /* insertion sort by time */
		for (int j = i; j > 0 && seen[j].t < seen[j - 1].t; j--) {
			__typeof__(seen[0]) x = seen[j];
			seen[j] = seen[j - 1];
			seen[j - 1] = x;
		}
	size_t len = 0;
	out[0] = '\0';
	for (int i = 0; i < n && len < cap; i++)
		len += (size_t)snprintf(out + len, cap - len, "%s%s", i ? "," : "", seen[i].step);
}

/* The server's "final" line for `user` in `c`'s log, or false. */
static bool final_line(struct cloudlet *c, const char *user, char *step, size_t cap)
{
	char *text = test_slurp(c->log, NULL);
	assert_non_null(text);
	bool found = false;
	for (char *line = text, *nl; line && *line; line = nl ? nl + 1 : NULL) {
		nl = strchr(line, '\n');
		if (nl)
			*nl = '\0';
		double t;
		char name[16], what[16], u[64], st[16];
		if (sscanf(line, "%lf %15s %15s %63s step=%15s", &t, name, what, u, st) == 5 &&
		    strcmp(what, "final") == 0 && strcmp(u, user) == 0) {
			snprintf(step, cap, "%s", st);
			found = true;
		}
	}
	free(text);
	return found;
}

/* frames.log: records "frame <id> <label> <n>\n" <n bytes> "\n" for ids
 * 1..frames in order; its size and FNV are the client's. frames.idx: one
 * line per record, offsets matching. Returns the cloudlets that recorded
 * frames, in order ("A,B,A"). */
static void check_files(struct cloudlet *c, const struct sandwich_summary *s, char *origin,
			size_t cap)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s/frames.log", c->dir, s->user);
	size_t len = 0;
	char *log = test_slurp(path, &len);
	if (!log)
		fail_msg("%s: no frames.log at %s", s->user, c->name);
	if (len != s->log_bytes || sandwich_log_fnv(log, len) != s->log_fnv)
		fail_msg("%s: frames.log at %s: %zu bytes, not what the camera sent (%" PRIu64 ")",
			 s->user, c->name, len, s->log_bytes);
	size_t off = 0;
	uint64_t id = 0;
	while (off < len) {
		uint64_t fid, n;
		char label[32], hdr[96];
		const char *nl = memchr(log + off, '\n', len - off < 95 ? len - off : 95);
		if (!nl)
			fail_msg("%s: no record header at offset %zu", s->user, off);
		size_t hl = (size_t)(nl + 1 - (log + off));
		memcpy(hdr, log + off, hl - 1);
		hdr[hl - 1] = '\0';
		if (sscanf(hdr, "frame %" SCNu64 " %31s %" SCNu64, &fid, label, &n) != 3)
			fail_msg("%s: bad record header \"%s\" at offset %zu", s->user, hdr, off);
		if (fid != id + 1)
			fail_msg("%s: frame %" PRIu64 " after %" PRIu64, s->user, fid, id);
		id = fid;
		off += hl + n + 1;
	}
	assert_int_equal(off, len);
	assert_int_equal(id, s->frames);
	free(log);

	snprintf(path, sizeof(path), "%s/%s/frames.idx", c->dir, s->user);
	char *idx = test_slurp(path, NULL);
	assert_non_null(idx);
	uint64_t want = 1, expect_off = 0;
	size_t olen = 0;
	origin[0] = '\0';
	char last[16] = "";
	for (char *line = idx, *nl; line && *line; line = nl ? nl + 1 : NULL) {
		nl = strchr(line, '\n');
		if (nl)
			*nl = '\0';
		uint64_t fid, o, n;
		char label[32], where[16];
		if (sscanf(line, "%" SCNu64 " %31s %" SCNu64 " %" SCNu64 " %15s", &fid, label, &o,
			   &n, where) != 5)
			fail_msg("%s: bad index line \"%s\"", s->user, line);
		assert_int_equal(fid, want);
		assert_int_equal(o, expect_off);
		want++;
		expect_off += n;
		if (strcmp(where, last) != 0 && olen < cap) {
			olen += (size_t)snprintf(origin + olen, cap - olen, "%s%s", olen ? "," : "",
						 where);
			snprintf(last, sizeof(last), "%s", where);
		}
	}
	assert_int_equal(want - 1, s->frames);
	assert_int_equal(expect_off, s->log_bytes);
	free(idx);
}

/* Everything about one user at the end. `home` holds it, `away` must not;
 * `cloudlets` is the client's expected path ("A,B,A"). */
static void check_user(struct cloudlets *f, const struct sandwich_summary *s, int index,
		       unsigned hold, struct cloudlet *home, struct cloudlet *away,
		       const char *cloudlets)
{
	char all[128] = "", srv[128], step[16], origin[64], path[512];
	for (int i = 0; i < NSTEPS; i++)
		snprintf(all + strlen(all), sizeof(all) - strlen(all), "%s%s", i ? "," : "",
			 STEPS[i]);
	print_message("# %s: steps %s, %" PRIu64 " frames, %d corrections, %d waits, %d "
		      "redirects, served by %s\n",
		      s->user, s->steps, s->frames, s->corrections, s->waits, s->redirects,
		      s->cloudlets);
	assert_int_equal(s->done, 1);
	assert_string_equal(s->steps, all); /* client side: none repeated, none skipped */
	assert_int_equal(s->consistent, 1);
	assert_int_equal(s->frames, sandwich_expected_frames(index, hold));
	assert_int_equal(s->corrections, index % 3 == 2 ? 2 : 1);
	assert_string_equal(s->cloudlets, cloudlets);
	server_steps(f, s->user, srv, sizeof(srv)); /* server side, across cloudlets */
	assert_string_equal(srv, all + strlen("bread,"));
	check_files(home, s, origin, sizeof(origin));
	print_message("# %s: frames.log at %s intact, recorded on %s\n", s->user, home->name,
		      origin);
	snprintf(path, sizeof(path), "%s/%s", away->dir, s->user);
	assert_false(exists(path));
	assert_true(final_line(home, s->user, step, sizeof(step)));
	assert_string_equal(step, "done");
	assert_false(final_line(away, s->user, step, sizeof(step)));
}

/* ---------------------------------------------------------------- tests */

static void test_demo_scenario(void **state)
{
	struct cloudlets *f = *state;
	cloudlet_start(f, &f->a, "A", NULL);
	cloudlet_start(f, &f->b, "B", NULL);
	client_start(f, "user-1,user-2,user-3", "50", "12,6,8", "8192");

	cloudlets_wait_lines(f, f->clog, " user-1 A step step=lettuce ", NULL, 1);
	migrate(f, "user-1", &f->a, &f->b);
	cloudlets_wait_lines(f, f->clog, " user-1 B step step=tomato ", NULL, 1);
	migrate(f, "user-1", &f->b, &f->a);
	cloudlets_client_finish(f, 150000);
	cloudlet_stop(&f->a);
	cloudlet_stop(&f->b);

	struct sandwich_summary s[MAX_USERS];
	assert_int_equal(sandwich_read_summaries(f->clog, s, MAX_USERS), 3);
	const unsigned hold[] = {12, 6, 8};
	check_user(f, &s[0], 0, hold[0], &f->a, &f->b, "A,B,A");
	assert_int_equal(s[0].redirects, 2);
	for (int i = 1; i < 3; i++) {
		check_user(f, &s[i], i, hold[i], &f->a, &f->b, "A");
		assert_int_equal(s[i].redirects, 0);
		assert_int_equal(s[i].waits, 0); /* nobody else is held up */
	}
}

/* Waits until the client of `user` is served by `at` again and its reconnect
 * helper is attached there (so that it hears of the next move). */
static void wait_settled(struct cloudlets *f, const char *user, struct cloudlet *at, int times)
{
	char a[96], b[96];
	snprintf(a, sizeof(a), " %s %s welcome ", user, at->name);
	cloudlets_wait_lines(f, f->clog, a, NULL, times);
	snprintf(a, sizeof(a), " %s ", user);
	snprintf(b, sizeof(b), "session state=ATTACHED error=MIG_OK detail=\"%s ", at->name);
	cloudlets_wait_lines(f, f->clog, a, b, times);
}

static void test_bounce(void **state)
{
	struct cloudlets *f = *state;
	cloudlet_start(f, &f->a, "A", NULL);
	cloudlet_start(f, &f->b, "B", NULL);
	client_start(f, "user-1,user-2,user-3,user-4", "10", "80,60,8,8", "16384");
	wait_settled(f, "user-1", &f->a, 1);
	wait_settled(f, "user-2", &f->a, 1);
	cloudlets_wait_lines(f, f->clog, " user-1 A step step=ham ", NULL, 1);

	migrate(f, "user-1", &f->a, &f->b);
	migrate(f, "user-2", &f->a, &f->b); /* user-2 stays at B */
	wait_settled(f, "user-1", &f->b, 1);
	migrate(f, "user-1", &f->b, &f->a);
	wait_settled(f, "user-1", &f->a, 2);
	migrate(f, "user-1", &f->a, &f->b);
	wait_settled(f, "user-1", &f->b, 2);
	migrate(f, "user-1", &f->b, &f->a);
	cloudlets_client_finish(f, 150000);
	cloudlet_stop(&f->a);
	cloudlet_stop(&f->b);

	struct sandwich_summary s[MAX_USERS];
	assert_int_equal(sandwich_read_summaries(f->clog, s, MAX_USERS), 4);
	const unsigned hold[] = {80, 60, 8, 8};
	check_user(f, &s[0], 0, hold[0], &f->a, &f->b, "A,B,A,B,A");
	assert_int_equal(s[0].redirects, 4);
	check_user(f, &s[1], 1, hold[1], &f->b, &f->a, "A,B");
	assert_int_equal(s[1].redirects, 1);
	for (int i = 2; i < 4; i++)
		check_user(f, &s[i], i, hold[i], &f->a, &f->b, "A");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_demo_scenario, setup, cloudlets_teardown),
		cmocka_unit_test_setup_teardown(test_bounce, setup, cloudlets_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
