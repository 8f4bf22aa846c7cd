/* The two-cloudlet fixture of the sandwich tests (test_sandwich,
 * test_sandwich_failover): a folder per case with the cluster secret, real
 * sandwich_server processes A and B with a state folder each, the clients'
 * logs, and waits on what they print. Also what those tests know of the
 * sandwich client's script and frames.log. */
#ifndef MIG_TEST_CLOUDLETS_H
#define MIG_TEST_CLOUDLETS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <migrate/control.h>

/* One sandwich_server: its state folder, stdout and stderr files, and the
 * engine and app URLs it printed first. */
struct cloudlet {
	char name[8];
	char dir[256], log[300], err[300];
	char url[128], app[128];
	pid_t pid;
};

struct cloudlets {
	char base[128], secret_file[300], clog[300], cerr[300];
	char secret[128]; /* what secret_file holds, less the newline */
	struct cloudlet a, b;
	pid_t client; /* the sandwich_client the test started, or 0 */
	/* Set by the test: a wait fails at once when a cloudlet exited by
	 * itself, and a failed wait prints every log first. */
	bool watch;
};

/* A cmocka setup's body: *state is a fresh fixture in /tmp/<prefix>-XXXXXX
 * with the file "secret" (`secret` and a newline), its `watch` as given;
 * -1 if it cannot be made. */
int cloudlets_setup(void **state, const char *prefix, const char *secret, bool watch);
/* A cmocka teardown: kills whatever still runs (stopped ones too), removes
 * the folder. */
int cloudlets_teardown(void **state);

/* Starts sandwich_server `name` (MIG_SANDWICH_SERVER) with its state in
 * <base>/<name>, the options in `extra` (NULL terminated, may be NULL)
 * after the fixture's, and waits until it printed its URLs. */
void cloudlet_start(struct cloudlets *f, struct cloudlet *c, const char *name,
		    const char *const *extra);
/* SIGTERM: the server prints its "final" lines and must exit 0 (under the
 * sanitizers: no leak, no error). */
void cloudlet_stop(struct cloudlet *c);

/* A control channel to `c` with the fixture's secret; fails the case if it
 * cannot be opened. */
mig_ctl *cloudlet_ctl(const struct cloudlets *f, const struct cloudlet *c);

/* Waits for `want` lines of `path` holding `a` (and `b`), 30 s at most. */
void cloudlets_wait_lines(struct cloudlets *f, const char *path, const char *a, const char *b,
			  int want);
/* Waits for the sandwich_client the test started (`client`), which must
 * exit 0 within timeout_ms; else prints its output (with `watch`: every
 * log) and fails the case. */
void cloudlets_client_finish(struct cloudlets *f, int timeout_ms);
/* Prints every log of the case (the clients', then A's and B's). */
void cloudlets_dump(const struct cloudlets *f);

/* The "summary" line sandwich_client prints per user at its end. */
struct sandwich_summary {
	char user[64];
	int done, corrections, waits, redirects, consistent, failovers;
	int steps_redone, corrections_redone;
	char steps[256], cloudlets[128], resumed_step[16];
	uint64_t frames, log_bytes, log_fnv, resumed_frame, frames_redone;
};

/* The summaries in the client's log `path`, at most `max`; fails the case
 * on a summary line it cannot parse. */
int sandwich_read_summaries(const char *path, struct sandwich_summary *out, int max);

/* The frames the client script sends user number `index` until "done",
 * each item held `hold` frames. */
uint64_t sandwich_expected_frames(int index, unsigned hold);
/* FNV-1a of a whole frames.log, as the client's summary gives it. */
uint64_t sandwich_log_fnv(const void *data, size_t len);

#endif
