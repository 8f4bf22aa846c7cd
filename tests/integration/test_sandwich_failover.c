/* Emergency failover in the sandwich example (docs/FAILOVER.md): the real
 * sandwich_server as primary cloudlet A, replicating every user to the real
 * sandwich_server on standby cloudlet B (--standby), and the real
 * sandwich_client for three users, its reconnect helpers armed with the
 * failover tokens A hands out (--standby). Mid-assembly A dies; B promotes
 * the users; the clients fail over by themselves and finish there.
 *
 *   test_sigkill_promote  A is SIGKILLed; every user is promoted on B with
 *                         the control API (mig_ctl_promote, what
 *                         `migratectl promote` uses). Done-when 1.
 *   test_sigkill_interval_only  the same, replication at the interval only
 *                         (--no-replicate-steps) and B promoting by itself
 *                         (--auto-promote-ms): a step made after the last
 *                         replication is made again, and counted.
 *   test_sigstop_superseded  A is SIGSTOPped; the users are promoted on B;
 *                         A gets SIGCONT: its next update is refused as
 *                         superseded, it stops serving the users and never
 *                         serves them again. Done-when 2.
 *   test_bad_options      bad failover options: usage errors, nothing
 *                         started.
 *
 * For every user: finished; steps bread..done once each in the client's
 * list; it resumed on B at a step and frame no older than the last
 * replication A printed as acknowledged before it died; B's steps continue
 * in order from there to done, and the steps B made again are exactly what
 * the client counted as redone; the user is active on B only. The loss
 * window (time from the last acknowledged replication to the kill, frames
 * and steps made again) is printed per user.
 *
 * File state: mig_replicate carries the file domains (docs/FAILOVER.md),
 * so with FILES_REPLICATED 1 frames.log at B is checked byte for byte
 * against what the camera sent (frames 1..N once each, in order; B cut what
 * the replica held beyond its progress, printed). With FILES_REPLICATED 0,
 * for a library that replicates light state only, it checks that B's
 * frames.log holds exactly the frames B processed itself. */
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

/* 1: mig_replicate replicates file domains (see the top comment). */
#define FILES_REPLICATED 1

#define SECRET "sandwich-failover-secret-0123456789ab"
#define NUSERS 3
#define INTERVAL_MS 30  /* the camera: a frame every 30 ms */
#define FAILOVER_MS 500 /* the helper's after_ms */

static const char *const STEPS[] = {"bread", "ham", "lettuce", "half", "tomato", "full", "done"};
#define NSTEPS 7
static const char *const USERS[NUSERS] = {"user-1", "user-2", "user-3"};
/* Frames each item is held: about 2.5 s of assembly per user, time for the
 * first replications under the sanitizers before the kill. */
static const unsigned HOLD[NUSERS] = {16, 14, 14};

/* ---------------------------------------------------------------- files and processes */

static double wall(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int step_index(const char *name)
{
	for (int i = 0; i < NSTEPS; i++)
		if (strcmp(STEPS[i], name) == 0)
			return i;
	fail_msg("unknown step \"%s\"", name);
	return -1;
}

/* ---------------------------------------------------------------- fixture */

static int setup(void **state)
{
	/* A cloudlet that dies (a crash, a sanitizer report) fails the case
	 * at once, with every log. */
	return cloudlets_setup(state, "mig-sandwich-fo", SECRET, true);
}

/* The clients start at A; their helpers fail over to B after FAILOVER_MS. */
static void client_start(struct cloudlets *f)
{
	const char *exe = getenv("MIG_SANDWICH_CLIENT");
	if (!exe)
		fail_msg("MIG_SANDWICH_CLIENT is not set (run through meson test)");
	char users[64], hold[32], interval[16], after[16];
	snprintf(users, sizeof(users), "%s,%s,%s", USERS[0], USERS[1], USERS[2]);
	snprintf(hold, sizeof(hold), "%u,%u,%u", HOLD[0], HOLD[1], HOLD[2]);
	snprintf(interval, sizeof(interval), "%d", INTERVAL_MS);
	snprintf(after, sizeof(after), "%d", FAILOVER_MS);
	const char *argv[] = {exe,  "--server",      f->a.app, "--users",       users,  "--hold",
			      hold, "--interval-ms", interval, "--image-bytes", "4096", "--timeout",
			      "60", "--standby",     f->b.url, "--failover-ms", after,  NULL};
	f->client = test_spawn(argv, f->clog, f->cerr);
}

/* ---------------------------------------------------------------- what the logs say */

/* The last "replicated" line of `user` in a primary's log: the update the
 * standby acknowledged last ("<t> A replicated U seq=N step=S frame=N ..."). */
struct acked {
	int n;    /* acknowledged updates */
	double t; /* wall clock of the last */
	uint64_t seq, frame;
	char step[16];
};

static void last_acked(const char *log, const char *user, struct acked *a)
{
	memset(a, 0, sizeof(*a));
	char *text = test_slurp(log, NULL);
	assert_non_null(text);
	for (char *line = text, *nl; line && *line; line = nl + 1) {
		nl = strchr(line, '\n');
		if (!nl)
			break; /* cut by the kill */
		*nl = '\0';
		double t;
		char name[16], what[16], u[64], step[16];
		uint64_t seq, frame;
		if (sscanf(line, "%lf %15s %15s %63s seq=%" SCNu64 " step=%15s frame=%" SCNu64, &t,
			   name, what, u, &seq, step, &frame) == 7 &&
		    strcmp(what, "replicated") == 0 && strcmp(u, user) == 0) {
			a->n++;
			a->t = t;
			a->seq = seq;
			a->frame = frame;
			snprintf(a->step, sizeof(a->step), "%s", step);
		}
	}
	free(text);
}

/* The steps a server announced for `user` ("<t> X step U step=S frame=N"),
 * comma-separated, in order. */
static void server_steps(const char *log, const char *user, char *out, size_t cap)
{
	char *text = test_slurp(log, NULL);
	assert_non_null(text);
	size_t len = 0;
	out[0] = '\0';
	for (char *line = text, *nl; line && *line; line = nl + 1) {
		nl = strchr(line, '\n');
		if (!nl)
			break;
		*nl = '\0';
		double t;
		char name[16], what[16], u[64], step[16];
		if (sscanf(line, "%lf %15s %15s %63s step=%15s", &t, name, what, u, step) == 5 &&
		    strcmp(what, "step") == 0 && strcmp(u, user) == 0 && len < cap)
			len += (size_t)snprintf(out + len, cap - len, "%s%s", len ? "," : "", step);
	}
	free(text);
}

/* The wall clock of the first line of `log` with `what` as its kind for
 * `user`, or 0. A server's line is "<t> <cloudlet> <what> <user> ...", the
 * client's "<t> <user> <cloudlet> <what> ...". */
static double line_time(const char *log, const char *what, const char *user, bool client)
{
	char *text = test_slurp(log, NULL);
	assert_non_null(text);
	double found = 0;
	for (char *line = text, *nl; line && *line && !found; line = nl + 1) {
		nl = strchr(line, '\n');
		if (!nl)
			break;
		*nl = '\0';
		double t;
		char name[16], w[24], u[64];
		bool ok = client ? sscanf(line, "%lf %63s %15s %23s", &t, u, name, w) == 4
				 : sscanf(line, "%lf %15s %23s %63s", &t, name, w, u) == 4;
		if (ok && strcmp(w, what) == 0 && strcmp(u, user) == 0)
			found = t;
	}
	free(text);
	return found;
}

/* frames.log of `user` at `c`: records "frame <id> <label> <n>\n" <n bytes>
 * "\n", ids first..last in order, once each. Returns the file's FNV-1a. */
static uint64_t check_records(struct cloudlet *c, const char *user, uint64_t first, uint64_t last,
			      size_t *size)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s/frames.log", c->dir, user);
	size_t len = 0;
	char *log = test_slurp(path, &len);
	if (!log)
		fail_msg("%s: no frames.log at %s", user, c->name);
	size_t off = 0;
	uint64_t id = first - 1;
	char bad[160] = "";
	while (off < len && !bad[0]) {
		uint64_t fid, n;
		char label[32], hdr[96];
		const char *nl = memchr(log + off, '\n', len - off < 95 ? len - off : 95);
		if (!nl) {
			snprintf(bad, sizeof(bad), "no record header at offset %zu", off);
			break;
		}
		size_t hl = (size_t)(nl + 1 - (log + off));
		memcpy(hdr, log + off, hl - 1);
		hdr[hl - 1] = '\0';
		if (sscanf(hdr, "frame %" SCNu64 " %31s %" SCNu64, &fid, label, &n) != 3)
			snprintf(bad, sizeof(bad), "bad record header \"%s\" at offset %zu", hdr,
				 off);
		else if (fid != id + 1)
			snprintf(bad, sizeof(bad), "frame %" PRIu64 " after %" PRIu64, fid, id);
		id = fid;
		off += hl + n + 1;
	}
	uint64_t h = sandwich_log_fnv(log, len);
	free(log);
	if (bad[0])
		fail_msg("%s: frames.log at %s: %s", user, c->name, bad);
	assert_int_equal(off, len);
	assert_int_equal(id, last);
	*size = len;
	return h;
}

/* Frames B cut from `user`'s frames.log at promotion because the replica's
 * files were ahead of its progress ("trimmed U file=frames.log
 * frames=A..B"); 0 if none. */
static uint64_t trimmed(struct cloudlet *c, const char *user)
{
	char *text = test_slurp(c->log, NULL);
	assert_non_null(text);
	uint64_t n = 0;
	for (char *line = text, *nl; line && *line; line = nl + 1) {
		nl = strchr(line, '\n');
		if (!nl)
			break;
		*nl = '\0';
		double t;
		char name[16], what[16], u[64];
		uint64_t from, to;
		if (sscanf(line, "%lf %15s %15s %63s file=frames.log frames=%" SCNu64 "..%" SCNu64,
			   &t, name, what, u, &from, &to) == 6 &&
		    strcmp(what, "trimmed") == 0 && strcmp(u, user) == 0)
			n += to - from + 1;
	}
	free(text);
	return n;
}

static void users_cb(const char *user, mig_user_state state, void *ud)
{
	int *active = ud;
	for (int i = 0; i < NUSERS; i++)
		if (strcmp(user, USERS[i]) == 0 && state == MIG_USER_ACTIVE)
			active[i]++;
}

/* After A died or was superseded: every user finished on B, resumed there
 * no older than A's last acknowledged replication, and B's steps continue in
 * order from the resumed step. Prints the loss window. */
static void check_failover(struct cloudlets *f, double kill_t, const char *how, int replicate_ms)
{
	struct acked acked[NUSERS];
	for (int i = 0; i < NUSERS; i++) {
		last_acked(f->a.log, USERS[i], &acked[i]);
		if (acked[i].n == 0)
			fail_msg("%s: no acknowledged replication at A", USERS[i]);
	}
	/* Active on B only: A is gone (or has let go); B lists each user ACTIVE. */
	int active[NUSERS] = {0};
	mig_ctl *ctl = cloudlet_ctl(f, &f->b);
	assert_int_equal(mig_ctl_users(ctl, users_cb, active), NUSERS);
	mig_ctl_free(ctl);
	for (int i = 0; i < NUSERS; i++)
		assert_int_equal(active[i], 1);
	if (f->a.pid) { /* A is alive again: it serves none of them */
		int at_a[NUSERS] = {0};
		ctl = cloudlet_ctl(f, &f->a);
		assert_true(mig_ctl_users(ctl, users_cb, at_a) >= 0);
		mig_ctl_free(ctl);
		for (int i = 0; i < NUSERS; i++)
			assert_int_equal(at_a[i], 0);
	}

	struct sandwich_summary s[NUSERS];
	assert_int_equal(sandwich_read_summaries(f->clog, s, NUSERS), NUSERS);
	char all[128] = "";
	for (int i = 0; i < NSTEPS; i++)
		snprintf(all + strlen(all), sizeof(all) - strlen(all), "%s%s", i ? "," : "",
			 STEPS[i]);
	for (int i = 0; i < NUSERS; i++) {
		struct sandwich_summary *u = &s[i];
		assert_string_equal(u->user, USERS[i]);
		/* Finished, every step once in the client's list, redone steps
		 * the same as the first time (consistent). */
		assert_int_equal(u->done, 1);
		assert_string_equal(u->steps, all);
		assert_int_equal(u->consistent, 1);
		assert_int_equal(u->failovers, 1);
		assert_string_equal(u->cloudlets, "A,B");
		assert_int_equal(u->frames, sandwich_expected_frames(i, HOLD[i]));
		assert_int_equal(u->corrections, i % 3 == 2 ? 2 : 1);

		/* No older than the last acknowledged replication. */
		int resumed = step_index(u->resumed_step);
		int acked_step = step_index(acked[i].step);
		assert_true(resumed >= acked_step);
		assert_true(u->resumed_frame >= acked[i].frame + 1);

		/* B: promoted at the resumed step; its steps continue in order
		 * from there to done. */
		char b_steps[128], a_steps[128], want[128] = "";
		server_steps(f->b.log, USERS[i], b_steps, sizeof(b_steps));
		for (int k = resumed + 1; k < NSTEPS; k++)
			snprintf(want + strlen(want), sizeof(want) - strlen(want), "%s%s",
				 k > resumed + 1 ? "," : "", STEPS[k]);
		assert_string_equal(b_steps, want);
		/* The steps A made after the resumed one are the ones made
		 * again: exactly what the client counted. */
		server_steps(f->a.log, USERS[i], a_steps, sizeof(a_steps));
		int a_last = 0, made_again = 0;
		for (char *p = a_steps, *c; p && *p; p = c ? c + 1 : NULL) {
			c = strchr(p, ',');
			if (c)
				*c = '\0';
			a_last = step_index(p);
			made_again += a_last > resumed;
		}
		assert_true(a_last >= resumed);
		if (made_again != u->steps_redone)
			fail_msg("%s: A made %d steps after %s (%s), the client redid %d", USERS[i],
				 made_again, u->resumed_step, a_steps, u->steps_redone);

		/* frames.log at B. */
		size_t size = 0;
#if FILES_REPLICATED
		uint64_t h = check_records(&f->b, USERS[i], 1, u->frames, &size);
		assert_int_equal(size, u->log_bytes);
		assert_true(h == u->log_fnv);
#else
		/* Today: only what B processed itself, from the resumed frame. */
		(void)check_records(&f->b, USERS[i], u->resumed_frame, u->frames, &size);
#endif

		/* No error at B: malformed files, or files behind the progress. */
		char err[96];
		snprintf(err, sizeof(err), " error %s ", USERS[i]);
		assert_int_equal(test_count_lines(f->b.log, err, NULL), 0);
		uint64_t cut = trimmed(&f->b, USERS[i]);

		double promoted = line_time(f->b.log, "promoted", USERS[i], false);
		double back = line_time(f->clog, "failover-resumed", USERS[i], true);
		assert_true(promoted > 0 && back > 0);
		/* A frozen A reads an ack that came while it was stopped after
		 * SIGCONT: its line is then later than the SIGSTOP. */
		double ack_ms = (kill_t - acked[i].t) * 1000.0;
		print_message("# %s loss window %s: last ack %.1f ms %s the %s (seq %" PRIu64
			      ", %d acks, at step %s frame %" PRIu64 "); resumed on B at step %s "
			      "frame %" PRIu64 "; made again: %d steps, %" PRIu64
			      " frames (%.0f ms of camera at %d ms/frame), %d corrections; "
			      "promoted %.1f ms and client back %.1f ms after the %s; replica "
			      "files %" PRIu64 " frames ahead of its progress (cut by B)\n",
			      USERS[i], how, ack_ms < 0 ? -ack_ms : ack_ms,
			      ack_ms < 0 ? "(read by A after SIGCONT) after" : "before", how,
			      acked[i].seq, acked[i].n, acked[i].step, acked[i].frame,
			      u->resumed_step, u->resumed_frame, u->steps_redone, u->frames_redone,
			      (double)u->frames_redone * INTERVAL_MS, INTERVAL_MS,
			      u->corrections_redone, (promoted - kill_t) * 1000.0,
			      (back - kill_t) * 1000.0, how, cut);
		/* The bound replication promises: about one interval (plus the
		 * ack's round trip) of camera frames; generous for a loaded
		 * machine and the sanitizers. */
		assert_true(u->frames_redone * INTERVAL_MS <= 10 * (uint64_t)replicate_ms);
	}
}

/* Primary A replicating to standby B every replicate_ms (and after each
 * step if `steps`); the clients at A, each with a failover token (the helper
 * armed), user-1 at least at `step`. */
static void start_replicated(struct cloudlets *f, const char *const *b_extra, int replicate_ms,
			     bool steps, const char *step)
{
	cloudlet_start(f, &f->b, "B", b_extra);
	char ms[16];
	snprintf(ms, sizeof(ms), "%d", replicate_ms);
	const char *a_extra[] = {
		"--standby", f->b.url, "--replicate-ms", ms, steps ? NULL : "--no-replicate-steps",
		NULL};
	cloudlet_start(f, &f->a, "A", a_extra);
	client_start(f);
	char a[96];
	for (int i = 0; i < NUSERS; i++) {
		snprintf(a, sizeof(a), " %s A standby url=", USERS[i]);
		cloudlets_wait_lines(f, f->clog, a, NULL, 1);
	}
	snprintf(a, sizeof(a), " %s A step step=%s ", USERS[0], step);
	cloudlets_wait_lines(f, f->clog, a, NULL, 1);
	/* Mid-assembly: nobody is done yet. */
	assert_int_equal(test_count_lines(f->a.log, " step ", "step=done"), 0);
}

/* ---------------------------------------------------------------- tests */

/* The last step `user`'s client was told by A: its frame, or 0. */
static uint64_t client_last_step_frame(struct cloudlets *f, const char *user)
{
	char *text = test_slurp(f->clog, NULL);
	assert_non_null(text);
	uint64_t frame = 0;
	for (char *line = text, *nl; line && *line; line = nl + 1) {
		nl = strchr(line, '\n');
		if (!nl)
			break;
		*nl = '\0';
		double t;
		char u[64], at[16], what[24], step[16];
		uint64_t fr;
		if (sscanf(line, "%lf %63s %15s %23s step=%15s frame=%" SCNu64, &t, u, at, what,
			   step, &fr) == 6 &&
		    strcmp(u, user) == 0 && strcmp(at, "A") == 0 && strcmp(what, "step") == 0)
			frame = fr;
	}
	free(text);
	return frame;
}

/* SIGKILLs A, promotes every user on B with the control API (unless B
 * promotes by itself: `automatic`), lets the clients finish; returns the
 * wall clock of the kill. */
static double kill_and_promote(struct cloudlets *f, bool automatic)
{
	assert_int_equal(kill(f->a.pid, SIGKILL), 0);
	double kill_t = wall();
	assert_int_equal(waitpid(f->a.pid, NULL, 0), f->a.pid);
	f->a.pid = 0;

	mig_ctl *ctl = cloudlet_ctl(f, &f->b);
	if (automatic) /* B notices the link is gone and promotes by itself */
		cloudlets_wait_lines(f, f->b.log, " promoted ", NULL, NUSERS);
	for (int i = 0; i < NUSERS && !automatic; i++) {
		int rc = mig_ctl_promote(ctl, USERS[i]);
		if (rc)
			fail_msg("promote %s: %s: %s", USERS[i], mig_err_name(rc),
				 mig_ctl_last_error(ctl));
	}
	/* Promoted once: a second promotion is refused (the replica became
	 * the user), nothing changes. */
	int again = mig_ctl_promote(ctl, USERS[0]);
	assert_true(again == MIG_ENOUSER || again == MIG_EEXIST);
	mig_ctl_free(ctl);
	cloudlets_client_finish(f, 90000);
	return kill_t;
}

/* Done-when 1: replication every 300 ms and after each step; A is
 * SIGKILLed mid-assembly, between two replications; every user is promoted
 * on B with the control API; the clients fail over and finish. */
static void test_sigkill_promote(void **state)
{
	struct cloudlets *f = *state;
	const int replicate_ms = 300;
	start_replicated(f, NULL, replicate_ms, true, "lettuce");
	usleep(replicate_ms * 1000 / 2);
	double kill_t = kill_and_promote(f, false);
	check_failover(f, kill_t, "SIGKILL", replicate_ms);
	cloudlet_stop(&f->b);
}

/* The same with replication at the interval only (500 ms; no update after
 * a step) and automatic promotion on B (--auto-promote-ms): A dies just
 * after user-1's client was told of a step. A step made after the last
 * replication is made again on B, and the client counts it. */
static void test_sigkill_interval_only(void **state)
{
	struct cloudlets *f = *state;
	const int replicate_ms = 500;
	const char *b_extra[] = {"--auto-promote-ms", "1000", NULL};
	start_replicated(f, b_extra, replicate_ms, false, "ham");
	char line[96];
	snprintf(line, sizeof(line), " %s A step step=tomato ", USERS[0]);
	cloudlets_wait_lines(f, f->clog, line, NULL, 1);
	uint64_t step_frame = client_last_step_frame(f, USERS[0]);
	struct acked before;
	last_acked(f->a.log, USERS[0], &before);
	double kill_t = kill_and_promote(f, true);
	check_failover(f, kill_t, "SIGKILL", replicate_ms);
	struct acked last;
	last_acked(f->a.log, USERS[0], &last);
	struct sandwich_summary s[NUSERS];
	assert_int_equal(sandwich_read_summaries(f->clog, s, NUSERS), NUSERS);
	print_message("# %s: told step tomato at frame %" PRIu64 ", last replicated frame %" PRIu64
		      " (%" PRIu64 " before the kill check)\n",
		      USERS[0], step_frame, last.frame, before.frame);
	if (last.frame < step_frame) /* the replica predates the step: it is redone */
		assert_true(s[0].steps_redone >= 1);
	cloudlet_stop(&f->b);
}

/* The lines of `log` about `user` after wall clock `t`, of the kinds that
 * mean A served the user. */
static int served_after(const char *log, const char *user, double after)
{
	static const char *const kinds[] = {"new", "hello", "step", "correction", "activate"};
	char *text = test_slurp(log, NULL);
	assert_non_null(text);
	int n = 0;
	for (char *line = text, *nl; line && *line; line = nl + 1) {
		nl = strchr(line, '\n');
		if (!nl)
			break;
		*nl = '\0';
		double t;
		char name[16], what[24], u[64];
		if (sscanf(line, "%lf %15s %23s %63s", &t, name, what, u) != 4 || t <= after ||
		    strcmp(u, user) != 0)
			continue;
		for (size_t k = 0; k < sizeof(kinds) / sizeof(kinds[0]); k++)
			if (strcmp(what, kinds[k]) == 0) {
				print_message("# served after superseded: %s\n", line);
				n++;
			}
	}
	free(text);
	return n;
}

/* Done-when 2: A is frozen (SIGSTOP) mid-assembly; every user is promoted
 * on B with the control API (automatic promotion of a frozen primary is
 * test_auto_promote_frozen in test_failover.c);
 * A gets SIGCONT: its next update is refused as superseded, it stops
 * serving the user (its clients are closed) and serves it no more; the
 * clients go to B and finish there. */
static void test_sigstop_superseded(void **state)
{
	struct cloudlets *f = *state;
	const int replicate_ms = 200;
	start_replicated(f, NULL, replicate_ms, true, "lettuce");
	usleep(replicate_ms * 1000 / 2);

	assert_int_equal(kill(f->a.pid, SIGSTOP), 0);
	double stop_t = wall();
	usleep(2 * replicate_ms * 1000); /* A misses two replications */
	mig_ctl *ctl = cloudlet_ctl(f, &f->b);
	for (int i = 0; i < NUSERS; i++) {
		int rc = mig_ctl_promote(ctl, USERS[i]);
		if (rc)
			fail_msg("promote %s: %s: %s", USERS[i], mig_err_name(rc),
				 mig_ctl_last_error(ctl));
	}
	mig_ctl_free(ctl);
	double promoted_t = wall();
	assert_int_equal(kill(f->a.pid, SIGCONT), 0);
	double cont_t = wall();
	cloudlets_wait_lines(f, f->a.log, " superseded ", NULL, NUSERS);

	cloudlets_client_finish(f, 90000);
	check_failover(f, stop_t, "SIGSTOP", replicate_ms);
	for (int i = 0; i < NUSERS; i++) {
		double sup = line_time(f->a.log, "superseded", USERS[i], false);
		double prom = line_time(f->b.log, "promoted", USERS[i], false);
		print_message("# %s: promoted %.1f ms after SIGSTOP; A told superseded %.1f "
			      "ms after SIGCONT\n",
			      USERS[i], (prom - stop_t) * 1000.0, (sup - cont_t) * 1000.0);
		assert_true(prom > stop_t && prom <= promoted_t);
		assert_true(sup > cont_t);
		/* Once told, A never serves the user again. */
		assert_int_equal(served_after(f->a.log, USERS[i], sup), 0);
	}
	cloudlet_stop(&f->a);
	cloudlet_stop(&f->b);
	/* A let go of every user: none at its exit. */
	assert_int_equal(test_count_lines(f->a.log, " final ", NULL), 0);
	assert_int_equal(test_count_lines(f->b.log, " final ", NULL), NUSERS);
}

/* Runs `argv`, which must exit 2 (usage) and say `why` on stderr. */
static void refused(struct cloudlets *f, const char *const *argv, const char *why)
{
	char out[300], err[300];
	snprintf(out, sizeof(out), "%s/bad.out", f->base);
	snprintf(err, sizeof(err), "%s/bad.err", f->base);
	int status = test_reap(test_spawn(argv, out, err), 10000);
	char *text = test_slurp(err, NULL);
	assert_non_null(text);
	if (!(WIFEXITED(status) && WEXITSTATUS(status) == 2) || !strstr(text, why)) {
		print_message("# %s\n", text);
		free(text);
		fail_msg("%s %s: status 0x%x, not a usage error saying \"%s\"", argv[0], argv[1],
			 status, why);
	}
	free(text);
}

/* Bad failover options: a clear error, exit status 2, nothing started and
 * no state folder created. */
static void test_bad_options(void **state)
{
	struct cloudlets *f = *state;
	const char *server = getenv("MIG_SANDWICH_SERVER"), *client = getenv("MIG_SANDWICH_CLIENT");
	if (!server || !client)
		fail_msg("MIG_SANDWICH_SERVER/CLIENT are not set (run through meson test)");
	char dir[300];
	snprintf(dir, sizeof(dir), "%s/state", f->base);
#define SRV server, "--id", "A", "--secret-file", f->secret_file, "--state", dir
	const char *const a1[] = {SRV, "--standby", "tcp://127.0.0.1:1", NULL};
	refused(f, a1, "--standby needs the standby's engine URL");
	const char *const a2[] = {SRV, "--standby", "ws://127.0.0.1:1", "--replicate-ms",
				  "5", NULL};
	refused(f, a2, "--replicate-ms must be 10..3600000");
	const char *const a3[] = {SRV, "--replicate-ms", "100", NULL};
	refused(f, a3, "need --standby");
	const char *const a4[] = {SRV, "--no-replicate-steps", NULL};
	refused(f, a4, "need --standby");
	const char *const a5[] = {SRV, "--auto-promote-ms", "-1", NULL};
	refused(f, a5, "--auto-promote-ms must be 0 (off) or more");
#undef SRV
	struct stat st;
	assert_int_equal(stat(dir, &st), -1); /* nothing created */
	const char *const c1[] = {client, "--server",  "tcp://127.0.0.1:1",  "--users",
				  "u",    "--standby", "http://127.0.0.1:1", NULL};
	refused(f, c1, "--standby needs an engine URL");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_sigkill_promote, setup, cloudlets_teardown),
		cmocka_unit_test_setup_teardown(test_sigkill_interval_only, setup,
						cloudlets_teardown),
		cmocka_unit_test_setup_teardown(test_sigstop_superseded, setup, cloudlets_teardown),
		cmocka_unit_test_setup_teardown(test_bad_options, setup, cloudlets_teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
