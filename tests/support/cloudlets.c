/* See cloudlets.h. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "cloudlets.h"
#include "procs.h"

#define WAIT_MS 30000

int cloudlets_setup(void **state, const char *prefix, const char *secret, bool watch)
{
	struct cloudlets *f = calloc(1, sizeof(*f));
	if (!f)
		return -1;
	f->watch = watch;
	snprintf(f->secret, sizeof(f->secret), "%s", secret);
	snprintf(f->base, sizeof(f->base), "/tmp/%s-XXXXXX", prefix);
	if (!mkdtemp(f->base)) {
		free(f);
		return -1;
	}
	snprintf(f->secret_file, sizeof(f->secret_file), "%s/secret", f->base);
	snprintf(f->clog, sizeof(f->clog), "%s/clients.log", f->base);
	snprintf(f->cerr, sizeof(f->cerr), "%s/clients.err", f->base);
	FILE *s = fopen(f->secret_file, "w");
	if (!s) {
		test_rm_rf(f->base);
		free(f);
		return -1;
	}
	fprintf(s, "%s\n", secret);
	fclose(s);
	*state = f;
	return 0;
}

int cloudlets_teardown(void **state)
{
	struct cloudlets *f = *state;
	if (f->client) {
		kill(f->client, SIGKILL);
		waitpid(f->client, NULL, 0);
	}
	struct cloudlet *cs[] = {&f->a, &f->b};
	for (int i = 0; i < 2; i++)
		if (cs[i]->pid) {
			kill(cs[i]->pid, SIGCONT); /* a case may have left it stopped */
			kill(cs[i]->pid, SIGKILL);
			waitpid(cs[i]->pid, NULL, 0);
		}
	test_rm_rf(f->base);
	free(f);
	return 0;
}

void cloudlet_start(struct cloudlets *f, struct cloudlet *c, const char *name,
		    const char *const *extra)
{
	const char *exe = getenv("MIG_SANDWICH_SERVER");
	if (!exe)
		fail_msg("MIG_SANDWICH_SERVER is not set (run through meson test)");
	snprintf(c->name, sizeof(c->name), "%s", name);
	snprintf(c->dir, sizeof(c->dir), "%s/%s", f->base, name);
	snprintf(c->log, sizeof(c->log), "%s/%s.log", f->base, name);
	snprintf(c->err, sizeof(c->err), "%s/%s.err", f->base, name);
	assert_int_equal(mkdir(c->dir, 0755), 0);
	const char *argv[16] = {exe,       "--id", name, "--secret-file", f->secret_file,
				"--state", c->dir};
	int n = 7;
	for (int i = 0; extra && extra[i] && n < 15; i++)
		argv[n++] = extra[i];
	argv[n] = NULL;
	c->pid = test_spawn(argv, c->log, c->err);
	cloudlets_wait_lines(f, c->log, "app ", NULL, 1);
	char *text = test_slurp(c->log, NULL);
	assert_non_null(text);
	assert_int_equal(sscanf(text, "url %127s\napp %127s", c->url, c->app), 2);
	free(text);
}

void cloudlet_stop(struct cloudlet *c)
{
	if (!c->pid)
		return;
	kill(c->pid, SIGTERM);
	int status = test_reap(c->pid, 20000);
	c->pid = 0;
	if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
		test_dump(c->err);
		fail_msg("cloudlet %s exited with status 0x%x", c->name, status);
	}
}

mig_ctl *cloudlet_ctl(const struct cloudlets *f, const struct cloudlet *c)
{
	mig_ctl_options o = {.url = c->url, .secret = f->secret, .secret_len = strlen(f->secret)};
	mig_ctl *ctl = NULL;
	char err[256] = "";
	int rc = mig_ctl_new(&ctl, &o, err, sizeof(err));
	if (rc)
		fail_msg("control channel to %s: %s: %s", c->name, mig_err_name(rc), err);
	return ctl;
}

void cloudlets_client_finish(struct cloudlets *f, int timeout_ms)
{
	int status = test_reap(f->client, timeout_ms);
	f->client = 0;
	if (!(WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
		if (f->watch) {
			cloudlets_dump(f);
		} else {
			test_dump(f->clog);
			test_dump(f->cerr);
		}
		fail_msg("sandwich_client exited with status 0x%x", status);
	}
}

void cloudlets_dump(const struct cloudlets *f)
{
	const char *paths[] = {f->clog, f->cerr, f->a.log, f->a.err, f->b.log, f->b.err};
	for (size_t i = 0; i < sizeof(paths) / sizeof(paths[0]); i++)
		if (paths[i][0])
			test_dump(paths[i]);
}

/* A cloudlet that exited by itself (a crash, a sanitizer report) fails
 * the case at once, with its logs. */
static void check_alive(struct cloudlets *f)
{
	struct cloudlet *cs[] = {&f->a, &f->b};
	for (int i = 0; i < 2; i++) {
		int status;
		if (cs[i]->pid && waitpid(cs[i]->pid, &status, WNOHANG) == cs[i]->pid) {
			cs[i]->pid = 0;
			cloudlets_dump(f);
			fail_msg("cloudlet %s exited by itself, status 0x%x", cs[i]->name, status);
		}
	}
}

void cloudlets_wait_lines(struct cloudlets *f, const char *path, const char *a, const char *b,
			  int want)
{
	uint64_t end = test_now_ms() + WAIT_MS;
	while (test_count_lines(path, a, b) < want) {
		if (f->watch)
			check_alive(f);
		if (test_now_ms() > end) {
			if (f->watch)
				cloudlets_dump(f);
			fail_msg("no %d line(s) with \"%s\" \"%s\" in %s within %d ms", want, a,
				 b ? b : "", path, WAIT_MS);
		}
		usleep(5000);
	}
}

int sandwich_read_summaries(const char *path, struct sandwich_summary *out, int max)
{
	char *text = test_slurp(path, NULL);
	assert_non_null(text);
	int n = 0;
	for (char *line = text, *nl; line && *line && n < max; line = nl ? nl + 1 : NULL) {
		nl = strchr(line, '\n');
		if (nl)
			*nl = '\0';
		struct sandwich_summary *s = &out[n];
		if (strncmp(line, "summary ", 8) != 0)
			continue;
		char final[32];
		if (sscanf(line,
			   "summary user=%63s done=%d final_step=%31s steps=%255s corrections=%d "
			   "frames=%" SCNu64
			   " waits=%d redirects=%d cloudlets=%127s log_bytes=%" SCNu64
			   " log_fnv=%" SCNx64 " consistent=%d failovers=%d resumed_step=%15s "
			   "resumed_frame=%" SCNu64 " steps_redone=%d frames_redone=%" SCNu64
			   " corrections_redone=%d",
			   s->user, &s->done, final, s->steps, &s->corrections, &s->frames,
			   &s->waits, &s->redirects, s->cloudlets, &s->log_bytes, &s->log_fnv,
			   &s->consistent, &s->failovers, s->resumed_step, &s->resumed_frame,
			   &s->steps_redone, &s->frames_redone, &s->corrections_redone) != 18)
			fail_msg("unparsable summary: %s", line);
		n++;
	}
	free(text);
	return n;
}
/* 2 "nothing", then each item
 held `hold` frames, the 6th item's first
 * frame finishing; cucumber (users 0, 2 mod 3) and extra ham (users 1, 2
 * mod 3) add 3 each. */
uint64_t sandwich_expected_frames(int index, unsigned hold)
{
	return 2 + 5 * (uint64_t)hold + 1 + (index % 3 != 1 ? 3 : 0) + (index % 3 != 0 ? 3 : 0);
}

uint64_t sandwich_log_fnv(const void *data, size_t len)
{
	const uint8_t *p = data;
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < len; i++) {
		h ^= p[i];
		h *= 0x100000001b3ull;
	}
	return h;
}
