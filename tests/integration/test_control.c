/* The control channel and the metrics endpoint between real engines over
 * loopback: status and cancel through the client API, PROGRESS events, a
 * real HTTP GET of /metrics parsed as Prometheus text, and the migratectl
 * binary itself: its progress bar under a pseudo-terminal, its --json lines
 * checked with python3 -m json.tool, its exit codes.
 *
 * usage: test_control [MIGRATECTL [PYTHON3]] (meson passes both; without
 * them the migratectl tests are skipped). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <pty.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "app_model.h"
#include "engine_int.h"
#include "migrate/control.h"
#include "support.h"

/* Paths here are short temp folders; a truncated one would fail the test. */
#pragma GCC diagnostic ignored "-Wformat-truncation"

#define NSEED 6
#define MiB (1024u * 1024)
#define BIG_FILE_BYTES (64u * MiB)

static const char *g_migratectl; /* the binary under test, or NULL */
static const char *g_python;     /* python3, or NULL */

/* ---------------------------------------------------------------- fixture */

struct fixture {
	struct app a, b;
	mig_engine *ea, *eb;
	test_runner *ra, *rb;
	char base[64]; /* temp folder: file roots, secret file */
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	app_init(&f->a, "A");
	app_init(&f->b, "B");
	*state = f;
	return 0;
}

static int rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	test_runner_stop(f->ra);
	test_runner_stop(f->rb);
	mig_engine_free(f->ea);
	mig_engine_free(f->eb);
	app_free(&f->a);
	app_free(&f->b);
	if (f->base[0])
		nftw(f->base, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	free(f);
	return 0;
}

static void start_light(struct fixture *f, unsigned peer_timeout_ms)
{
	app_engine_cfg ca = {.id = "engine-a", .peer_timeout_ms = peer_timeout_ms};
	app_engine_cfg cb = {.id = "engine-b", .peer_timeout_ms = peer_timeout_ms};
	f->ea = app_engine_new(&f->a, &ca);
	f->eb = app_engine_new(&f->b, &cb);
	for (int i = 0; i < NSEED; i++)
		app_add_user(&f->a, f->ea, i, 1);
	f->ra = test_runner_start(f->ea);
	f->rb = test_runner_start(f->eb);
	assert_non_null(f->ra);
	assert_non_null(f->rb);
}

static mig_ctl *ctl_open(mig_engine *e)
{
	mig_ctl_options o = {0};
	o.url = mig_engine_url(e);
	o.secret = TEST_SECRET;
	o.secret_len = TEST_SECRET_LEN;
	char err[256];
	mig_ctl *ctl = NULL;
	int rc = mig_ctl_new(&ctl, &o, err, sizeof(err));
	if (rc)
		fail_msg("mig_ctl_new: %s: %s", mig_err_name(rc), err);
	return ctl;
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ---------------------------------------------------------------- status */

#define MAX_SEEN 8

struct status_copy {
	int calls;
	char engine_id[64];
	char url[128];
	char version[32];
	unsigned protocol;
	size_t users, active, migrating;
	size_t nmigrations;
	struct {
		char mid[40];
		char user[32];
		char phase[16];
		int outgoing;
		uint64_t started_us, duration_us;
	} m[MAX_SEEN];
	uint64_t committed_out, aborted_out, committed_in, aborted_in;
	uint64_t bytes_sent, bytes_received;
	uint64_t uptime_us;
};

static void copy_status(const mig_ctl_engine_status *s, void *ud)
{
	struct status_copy *c = ud;
	c->calls++;
	snprintf(c->engine_id, sizeof(c->engine_id), "%s", s->engine_id);
	snprintf(c->url, sizeof(c->url), "%s", s->url);
	snprintf(c->version, sizeof(c->version), "%s", s->library_version);
	c->protocol = s->protocol_version;
	c->users = s->users;
	c->active = s->users_by_state[MIG_USER_ACTIVE];
	c->migrating = s->users_by_state[MIG_USER_MIGRATING];
	c->nmigrations = s->nmigrations;
	for (size_t i = 0; i < s->nmigrations && i < MAX_SEEN; i++) {
		snprintf(c->m[i].mid, sizeof(c->m[i].mid), "%s", s->migrations[i].mid);
		snprintf(c->m[i].user, sizeof(c->m[i].user), "%s", s->migrations[i].user);
		snprintf(c->m[i].phase, sizeof(c->m[i].phase), "%s", s->migrations[i].phase);
		c->m[i].outgoing = s->migrations[i].outgoing;
		c->m[i].started_us = s->migrations[i].started_us;
		c->m[i].duration_us = s->migrations[i].duration_us;
	}
	c->committed_out = s->committed_out;
	c->aborted_out = s->aborted_out;
	c->committed_in = s->committed_in;
	c->aborted_in = s->aborted_in;
	c->bytes_sent = s->bytes_sent;
	c->bytes_received = s->bytes_received;
	c->uptime_us = s->uptime_us;
}

static void get_status(mig_ctl *ctl, struct status_copy *c)
{
	memset(c, 0, sizeof(*c));
	int rc = mig_ctl_status(ctl, copy_status, c);
	if (rc)
		fail_msg("mig_ctl_status: %s: %s", mig_err_name(rc), mig_ctl_last_error(ctl));
	assert_int_equal(c->calls, 1);
}

/* Events of one mig_ctl_migrate(), in order. */
#define MAX_EVENTS 256
struct event_log {
	int n;
	struct {
		mig_event_type type;
		char phase[16];
		unsigned rounds;
		uint64_t bytes_sent;
		uint64_t time_us;
		char mid[40];
	} ev[MAX_EVENTS];
};

static void log_event(const mig_event *ev, void *ud)
{
	struct event_log *l = ud;
	if (l->n >= MAX_EVENTS)
		return;
	l->ev[l->n].type = ev->type;
	snprintf(l->ev[l->n].phase, sizeof(l->ev[l->n].phase), "%s", ev->phase ? ev->phase : "");
	l->ev[l->n].rounds = ev->rounds;
	l->ev[l->n].bytes_sent = ev->bytes_sent;
	l->ev[l->n].time_us = ev->time_us;
	snprintf(l->ev[l->n].mid, sizeof(l->ev[l->n].mid), "%s", ev->mid ? ev->mid : "");
	l->n++;
}

static int count_type(const struct event_log *l, mig_event_type t)
{
	int n = 0;
	for (int i = 0; i < l->n; i++)
		n += l->ev[i].type == t;
	return n;
}

static bool known_phase(const char *p)
{
	static const char *const names[] = {"begin",   "precopy", "final",
					    "prepare", "commit",  "done"};
	for (size_t i = 0; i < MIG__ARRAY_LEN(names); i++)
		if (strcmp(p, names[i]) == 0)
			return true;
	return false;
}

/* PROGRESS events: known phases, bytes and rounds never going back, at most
 * about 10 per second (100 ms apart, with a little slack for clocks). */
static void check_progress(const struct event_log *l)
{
	uint64_t bytes = 0, last_time = 0;
	unsigned rounds = 0;
	for (int i = 0; i < l->n; i++) {
		if (l->ev[i].type != MIG_EVENT_PROGRESS)
			continue;
		if (!known_phase(l->ev[i].phase))
			fail_msg("PROGRESS %d has phase '%s'", i, l->ev[i].phase);
		assert_true(l->ev[i].bytes_sent >= bytes);
		assert_true(l->ev[i].rounds >= rounds);
		if (last_time && l->ev[i].time_us < last_time + 90000)
			fail_msg("PROGRESS events %llu us apart",
				 (unsigned long long)(l->ev[i].time_us - last_time));
		bytes = l->ev[i].bytes_sent;
		rounds = l->ev[i].rounds;
		last_time = l->ev[i].time_us;
	}
}

static void test_status_and_progress(void **state)
{
	struct fixture *f = *state;
	start_light(f, 0);
	mig_ctl *ca = ctl_open(f->ea), *cb = ctl_open(f->eb);
	struct status_copy s;
	get_status(ca, &s);
	print_message("# A: %s %s libmigrate %s protocol %u, %zu users\n", s.engine_id, s.url,
		      s.version, s.protocol, s.users);
	assert_string_equal(s.engine_id, "engine-a");
	assert_string_equal(s.url, mig_engine_url(f->ea));
	assert_string_equal(s.version, mig_version());
	assert_int_equal(s.protocol, MIG_PROTOCOL_VERSION);
	assert_int_equal(s.users, NSEED);
	assert_int_equal(s.active, NSEED);
	assert_int_equal(s.nmigrations, 0);
	assert_int_equal(s.committed_out + s.aborted_out + s.committed_in + s.aborted_in, 0);
	assert_int_equal(s.bytes_sent, 0);

	/* Three users move through the control channel; every event of each
	 * reaches the requester, PROGRESS included. */
	uint64_t sent = 0;
	for (int i = 0; i < 3; i++) {
		char id[32];
		struct event_log l = {0};
		mig_event fin;
		int rc = mig_ctl_migrate(ca, app_uid(i, id), mig_engine_url(f->eb), 20000,
					 log_event, &l, &fin);
		if (rc)
			fail_msg("migrate %s: %s: %s", id, mig_err_name(rc),
				 mig_ctl_last_error(ca));
		assert_true(l.n >= 3);
		assert_int_equal(l.ev[0].type, MIG_EVENT_STARTED);
		assert_string_equal(l.ev[0].phase, "begin");
		assert_int_equal(l.ev[l.n - 1].type, MIG_EVENT_COMMITTED);
		assert_int_equal(count_type(&l, MIG_EVENT_PREPARED), 1);
		assert_true(count_type(&l, MIG_EVENT_PROGRESS) >= 1);
		check_progress(&l);
		for (int k = 0; k < l.n; k++)
			assert_string_equal(l.ev[k].mid, l.ev[0].mid);
		assert_true(fin.bytes_sent > 0);
		sent += fin.bytes_sent;
	}
	/* The engine's own on_event saw PROGRESS too. */
	char id0[32];
	assert_true(app_events(&f->a, MIG_EVENT_PROGRESS, app_uid(0, id0), NULL) >= 1);

	/* One that aborts: nobody listens at that port. */
	int dead = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	assert_int_equal(bind(dead, (struct sockaddr *)&sa, sizeof(sa)), 0);
	socklen_t sl = sizeof(sa);
	assert_int_equal(getsockname(dead, (struct sockaddr *)&sa, &sl), 0);
	char dead_url[64];
	snprintf(dead_url, sizeof(dead_url), "ws://127.0.0.1:%d", ntohs(sa.sin_port));
	char id[32];
	mig_event fin;
	int rc = mig_ctl_migrate(ca, app_uid(3, id), dead_url, 20000, NULL, NULL, &fin);
	close(dead);
	print_message("# to a closed port: %s: %s\n", mig_err_name(rc), mig_ctl_last_error(ca));
	assert_int_equal(rc, MIG_ECONNECT);

	get_status(ca, &s);
	print_message("# A after: %llu committed, %llu aborted, %llu bytes sent\n",
		      (unsigned long long)s.committed_out, (unsigned long long)s.aborted_out,
		      (unsigned long long)s.bytes_sent);
	assert_int_equal(s.users, NSEED - 3);
	assert_int_equal(s.active, NSEED - 3);
	assert_int_equal(s.nmigrations, 0);
	assert_int_equal(s.committed_out, 3);
	assert_int_equal(s.aborted_out, 1);
	assert_int_equal(s.committed_in + s.aborted_in, 0);
	assert_true(s.bytes_sent >= sent);
	assert_true(s.uptime_us > 0);
	get_status(cb, &s);
	assert_string_equal(s.engine_id, "engine-b");
	assert_int_equal(s.users, 3);
	assert_int_equal(s.committed_in, 3);
	assert_int_equal(s.aborted_in, 0);
	assert_int_equal(s.committed_out, 0);
	assert_true(s.bytes_received > 0);
	mig_ctl_free(ca);
	mig_ctl_free(cb);
	app_check_no_violations(&f->a);
	app_check_no_violations(&f->b);
}

/* ---------------------------------------------------------------- cancel */

struct wait_arg {
	mig_ctl *ctl;
	struct status_copy s;
	const char *phase;
};

static bool has_migration_in(void *arg)
{
	struct wait_arg *w = arg;
	get_status(w->ctl, &w->s);
	return w->s.nmigrations == 1 && strcmp(w->s.m[0].phase, w->phase) == 0;
}

static bool wait_for(bool (*cond)(void *), void *arg, int timeout_ms)
{
	uint64_t end = now_ms() + (uint64_t)timeout_ms;
	while (!cond(arg)) {
		if (now_ms() >= end)
			return false;
		usleep(10000);
	}
	return true;
}

static bool migration_ended(void *arg)
{
	mig_migration_stats st;
	return mig_migration_info(arg, &st) == 0 && st.state != MIG_MIGRATION_RUNNING;
}

/* A TCP listener that never accepts: a destination that hangs in BEGIN. */
static int black_hole(char *url, size_t len)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	assert_int_equal(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(fd, 8), 0);
	socklen_t sl = sizeof(sa);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&sa, &sl), 0);
	snprintf(url, len, "ws://127.0.0.1:%d", ntohs(sa.sin_port));
	return fd;
}

static void test_cancel(void **state)
{
	struct fixture *f = *state;
	start_light(f, 10000);
	mig_ctl *ca = ctl_open(f->ea);
	char url[64], id[32];
	int hole = black_hole(url, sizeof(url));

	/* Nothing to cancel. */
	assert_int_equal(mig_ctl_cancel(ca, "user-031"), MIG_ENOUSER);
	print_message("# unknown user: %s\n", mig_ctl_last_error(ca));
	assert_int_equal(mig_ctl_cancel(ca, app_uid(1, id)), MIG_ESTATE);
	print_message("# not migrating: %s\n", mig_ctl_last_error(ca));
	assert_non_null(strstr(mig_ctl_last_error(ca), "not migrating"));
	assert_int_equal(mig_ctl_cancel(ca, "0123456789abcdef0123456789abcdef"), MIG_EUNKNOWN);
	assert_int_equal(mig_ctl_cancel(ca, "bad id with spaces"), MIG_EINVAL);

	/* By id, then by user: both stuck in "begin" at the black hole. */
	for (int k = 0; k < 2; k++) {
		mig_migration *m = NULL;
		assert_int_equal(mig_migrate(f->ea, app_uid(k, id), url, &m), 0);
		struct wait_arg w = {ca, {0}, "begin"};
		if (!wait_for(has_migration_in, &w, 10000))
			fail_msg("no migration in phase begin (%zu in flight)", w.s.nmigrations);
		assert_string_equal(w.s.m[0].mid, mig_migration_id(m));
		assert_string_equal(w.s.m[0].user, id);
		assert_int_equal(w.s.m[0].outgoing, 1);
		assert_int_equal(w.s.migrating, 1);
		assert_true(w.s.m[0].started_us > 1600000000ull * 1000000u);
		int rc = mig_ctl_cancel(ca, k == 0 ? mig_migration_id(m) : id);
		print_message("# cancel by %s: %s: %s\n", k == 0 ? "id" : "user", mig_err_name(rc),
			      mig_ctl_last_error(ca));
		assert_int_equal(rc, 0);
		assert_non_null(strstr(mig_ctl_last_error(ca), mig_migration_id(m)));
		assert_true(wait_for(migration_ended, m, 10000));
		mig_migration_stats st;
		assert_int_equal(mig_migration_info(m, &st), 0);
		assert_int_equal(st.state, MIG_MIGRATION_ABORTED);
		assert_int_equal(st.error, MIG_ECANCELED);
		/* A second cancel: it has ended. */
		assert_int_equal(mig_ctl_cancel(ca, mig_migration_id(m)), MIG_ESTATE);
		assert_non_null(strstr(mig_ctl_last_error(ca), "ended"));
		mig_migration_free(m);
		assert_int_equal(mig_user_get_state(f->ea, id), MIG_USER_ACTIVE);
	}
	close(hole);

	/* Past the commit decision: A cannot get its COMMIT out (a fault), so
	 * the migration sits in "commit" until the fault is lifted. */
	mig__engine_set_fault(f->ea, MIG__FAULT_SEND_COMMIT, MIG__FAULT_DROP_BEFORE, 1000000);
	mig_migration *m = NULL;
	assert_int_equal(mig_migrate(f->ea, app_uid(2, id), mig_engine_url(f->eb), &m), 0);
	struct wait_arg w = {ca, {0}, "commit"};
	if (!wait_for(has_migration_in, &w, 10000))
		fail_msg("no migration in phase commit");
	int rc = mig_ctl_cancel(ca, id);
	print_message("# past commit: %s: %s\n", mig_err_name(rc), mig_ctl_last_error(ca));
	assert_int_equal(rc, MIG_ESTATE);
	assert_non_null(strstr(mig_ctl_last_error(ca), "commit"));
	/* The destination refuses too: cancel belongs to the source. */
	mig_ctl *cb = ctl_open(f->eb);
	rc = mig_ctl_cancel(cb, mig_migration_id(m));
	print_message("# at the destination: %s: %s\n", mig_err_name(rc), mig_ctl_last_error(cb));
	assert_true(rc == MIG_ESTATE || rc == MIG_EUNKNOWN);
	mig_ctl_free(cb);
	mig__engine_set_fault(f->ea, MIG__FAULT_NONE, 0, 0);
	assert_true(wait_for(migration_ended, m, 20000));
	assert_int_equal(mig_migration_wait(m, 0), 0);
	mig_migration_free(m);
	assert_int_equal(mig_user_get_state(f->eb, id), MIG_USER_ACTIVE);

	struct status_copy s;
	get_status(ca, &s);
	assert_int_equal(s.aborted_out, 2);
	assert_int_equal(s.committed_out, 1);
	mig_ctl_free(ca);
	app_check_no_violations(&f->a);
	app_check_no_violations(&f->b);
}

/* ---------------------------------------------------------------- /metrics */

struct http_answer {
	int status;
	char content_type[128];
	char *body;
};

/* A plain HTTP/1.1 GET over a TCP socket. */
static void http_get(int port, const char *path, struct http_answer *a)
{
	memset(a, 0, sizeof(*a));
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(fd >= 0);
	struct sockaddr_in sa = {.sin_family = AF_INET,
				 .sin_port = htons((uint16_t)port),
				 .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	assert_int_equal(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	char req[256];
	int n = snprintf(req, sizeof(req),
			 "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nConnection: close\r\n\r\n", path,
			 port);
	assert_int_equal(write(fd, req, (size_t)n), n);
	size_t cap = 65536, len = 0;
	char *buf = malloc(cap + 1);
	uint64_t end = now_ms() + 10000;
	for (;;) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int left = (int)(end - now_ms());
		if (left <= 0 || poll(&p, 1, left) <= 0)
			fail_msg("HTTP GET %s: no complete answer after 10 s (%zu bytes)", path,
				 len);
		if (len == cap) {
			cap *= 2;
			buf = realloc(buf, cap + 1);
		}
		ssize_t r = read(fd, buf + len, cap - len);
		if (r <= 0)
			break;
		len += (size_t)r;
		buf[len] = '\0';
		/* Done once the headers and Content-Length bytes are in. */
		char *hend = strstr(buf, "\r\n\r\n");
		char *cl = hend ? strcasestr(buf, "\r\ncontent-length:") : NULL;
		if (hend && cl && cl < hend &&
		    len - (size_t)(hend + 4 - buf) >= strtoul(cl + 17, NULL, 10))
			break;
	}
	close(fd);
	buf[len] = '\0';
	assert_int_equal(sscanf(buf, "HTTP/1.%*d %d", &a->status), 1);
	char *hend = strstr(buf, "\r\n\r\n");
	assert_non_null(hend);
	*hend = '\0';
	char *ct = strcasestr(buf, "\r\ncontent-type:");
	if (ct) {
		ct += 15;
		while (*ct == ' ')
			ct++;
		size_t k = strcspn(ct, "\r\n");
		snprintf(a->content_type, sizeof(a->content_type), "%.*s", (int)k, ct);
	}
	a->body = strdup(hend + 4);
	free(buf);
}

/* The value of the sample `series` (name and labels exactly as printed). */
static double sample(const char *text, const char *series)
{
	size_t n = strlen(series);
	for (const char *p = text; p && *p; p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
		if (strncmp(p, series, n) == 0 && p[n] == ' ')
			return strtod(p + n + 1, NULL);
	}
	fail_msg("no sample %s in:\n%s", series, text);
	return -1;
}

static void check_family(const char *text, const char *name, const char *type)
{
	char help[128], typeline[128];
	snprintf(help, sizeof(help), "\n# HELP %s ", name);
	snprintf(typeline, sizeof(typeline), "\n# TYPE %s %s\n", name, type);
	/* The text starts with a HELP line; a leading newline makes it uniform. */
	size_t len = strlen(text);
	char *t = malloc(len + 2);
	t[0] = '\n';
	memcpy(t + 1, text, len + 1);
	bool ok = strstr(t, help) && strstr(t, typeline);
	free(t);
	if (!ok)
		fail_msg("no HELP/TYPE %s lines for %s", type, name);
}

/* Every line is a comment or "name{labels} value"; names carry the prefix. */
static void check_format(const char *text)
{
	assert_true(strlen(text) > 0);
	assert_int_equal(text[strlen(text) - 1], '\n');
	for (const char *p = text; *p;) {
		const char *nl = strchr(p, '\n');
		assert_non_null(nl);
		if (*p != '#') {
			if (strncmp(p, "libmigrate_", 11) != 0)
				fail_msg("sample without the libmigrate_ prefix: %.*s",
					 (int)(nl - p), p);
			const char *sp = memchr(p, ' ', (size_t)(nl - p));
			if (!sp)
				fail_msg("sample without a value: %.*s", (int)(nl - p), p);
			char *end;
			strtod(sp + 1, &end);
			if (end != nl)
				fail_msg("bad value in: %.*s", (int)(nl - p), p);
		}
		p = nl + 1;
	}
}

/* Buckets in order, cumulative, +Inf last and equal to _count. */
static void check_histogram(const char *text, const char *name, double want_count)
{
	char prefix[128];
	snprintf(prefix, sizeof(prefix), "%s_bucket{le=\"", name);
	double prev = -1, prev_le = -1, count = 0;
	int buckets = 0;
	bool inf = false;
	for (const char *p = strstr(text, prefix); p; p = strstr(p + 1, prefix)) {
		assert_false(inf); /* nothing after +Inf */
		const char *le = p + strlen(prefix);
		double v = strtod(strchr(le, ' ') + 1, NULL);
		if (strncmp(le, "+Inf\"", 5) == 0) {
			inf = true;
			count = v;
		} else {
			double bound = strtod(le, NULL);
			assert_true(bound > prev_le);
			prev_le = bound;
		}
		if (v < prev)
			fail_msg("%s bucket le=%.6s has %g after %g", name, le, v, prev);
		prev = v;
		buckets++;
	}
	assert_true(inf);
	assert_true(buckets >= 2);
	char series[128];
	snprintf(series, sizeof(series), "%s_count", name);
	assert_true(sample(text, series) == count);
	assert_true(count == want_count);
	snprintf(series, sizeof(series), "%s_sum", name);
	double sum = sample(text, series);
	assert_true(sum >= 0);
	if (count > 0)
		assert_true(sum > 0);
}

static void test_metrics(void **state)
{
	struct fixture *f = *state;
	start_light(f, 0);
	struct http_answer h;
	http_get(mig_engine_port(f->ea), "/metrics", &h);
	assert_int_equal(h.status, 200);
	print_message("# Content-Type: %s\n", h.content_type);
	assert_non_null(strstr(h.content_type, "text/plain"));
	assert_non_null(strstr(h.content_type, "version=0.0.4"));
	check_format(h.body);
	assert_true(sample(h.body, "libmigrate_users{state=\"active\"}") == NSEED);
	assert_true(sample(h.body,
			   "libmigrate_migrations_total{role=\"source\",outcome=\"committed\"}") ==
		    0);
	check_histogram(h.body, "libmigrate_downtime_seconds", 0);
	free(h.body);

	/* Four migrations A -> B, one aborted (a closed port). */
	mig_ctl *ca = ctl_open(f->ea);
	char id[32];
	for (int i = 0; i < 4; i++) {
		mig_event fin;
		int rc = mig_ctl_migrate(ca, app_uid(i, id), mig_engine_url(f->eb), 20000, NULL,
					 NULL, &fin);
		if (rc)
			fail_msg("migrate %s: %s", id, mig_err_name(rc));
	}
	char hole[64];
	int fd = black_hole(hole, sizeof(hole));
	close(fd); /* now nothing listens there */
	mig_event fin;
	assert_int_not_equal(mig_ctl_migrate(ca, app_uid(4, id), hole, 20000, NULL, NULL, &fin), 0);
	struct status_copy s;
	get_status(ca, &s);
	mig_ctl_free(ca);

	http_get(mig_engine_port(f->ea), "/metrics", &h);
	assert_int_equal(h.status, 200);
	const char *t = h.body;
	check_format(t);
	check_family(t, "libmigrate_info", "gauge");
	check_family(t, "libmigrate_migrations_started_total", "counter");
	check_family(t, "libmigrate_migrations_total", "counter");
	check_family(t, "libmigrate_migrations_in_flight", "gauge");
	check_family(t, "libmigrate_peer_bytes_sent_total", "counter");
	check_family(t, "libmigrate_peer_bytes_received_total", "counter");
	check_family(t, "libmigrate_users", "gauge");
	check_family(t, "libmigrate_file_rounds_total", "counter");
	check_family(t, "libmigrate_downtime_seconds", "histogram");
	assert_true(sample(t, "libmigrate_migrations_started_total{role=\"source\"}") == 5);
	assert_true(
		sample(t, "libmigrate_migrations_total{role=\"source\",outcome=\"committed\"}") ==
		4);
	assert_true(sample(t, "libmigrate_migrations_total{role=\"source\",outcome=\"aborted\"}") ==
		    1);
	assert_true(
		sample(t,
		       "libmigrate_migrations_total{role=\"destination\",outcome=\"committed\"}") ==
		0);
	assert_true(sample(t, "libmigrate_migrations_in_flight{role=\"source\"}") == 0);
	assert_true(sample(t, "libmigrate_users{state=\"active\"}") == NSEED - 4);
	assert_true(sample(t, "libmigrate_peer_bytes_sent_total") == (double)s.bytes_sent);
	assert_true(sample(t, "libmigrate_peer_bytes_sent_total") > 0);
	assert_true(sample(t, "libmigrate_file_rounds_total") == 0);
	check_histogram(t, "libmigrate_downtime_seconds", 4);
	assert_non_null(strstr(t, "libmigrate_info{engine_id=\"engine-a\""));
	free(h.body);

	http_get(mig_engine_port(f->eb), "/metrics", &h);
	assert_int_equal(h.status, 200);
	t = h.body;
	assert_true(sample(t, "libmigrate_migrations_started_total{role=\"destination\"}") == 4);
	assert_true(
		sample(t,
		       "libmigrate_migrations_total{role=\"destination\",outcome=\"committed\"}") ==
		4);
	assert_true(
		sample(t, "libmigrate_migrations_total{role=\"source\",outcome=\"committed\"}") ==
		0);
	assert_true(sample(t, "libmigrate_users{state=\"active\"}") == 4);
	assert_true(sample(t, "libmigrate_peer_bytes_received_total") > 0);
	check_histogram(t, "libmigrate_downtime_seconds", 0);
	free(h.body);

	/* Other paths: 404. */
	http_get(mig_engine_port(f->ea), "/", &h);
	assert_int_equal(h.status, 404);
	free(h.body);
	http_get(mig_engine_port(f->ea), "/metrics/x", &h);
	assert_int_equal(h.status, 404);
	free(h.body);

	/* metrics_off: 404 for /metrics too; WebSockets still work. */
	mig_engine_options o;
	test_engine_options(&o, "engine-c");
	o.metrics_off = 1;
	mig_engine *ec = NULL;
	assert_int_equal(mig_engine_new(&ec, &o), 0);
	assert_int_equal(mig_engine_start(ec), 0);
	test_runner *rc = test_runner_start(ec);
	http_get(mig_engine_port(ec), "/metrics", &h);
	assert_int_equal(h.status, 404);
	free(h.body);
	mig_ctl *cc = ctl_open(ec);
	assert_int_equal(mig_ctl_users(cc, NULL, NULL), 0);
	mig_ctl_free(cc);
	test_runner_stop(rc);
	mig_engine_free(ec);
}

/* ---------------------------------------------------------------- file state */

static void write_big_file(const char *root, const char *user, size_t bytes, unsigned seed)
{
	char dir[256], path[320];
	snprintf(dir, sizeof(dir), "%s/%s", root, user);
	assert_int_equal(mkdir(dir, 0700), 0);
	snprintf(path, sizeof(path), "%s/big.bin", dir);
	FILE *fp = fopen(path, "wb");
	assert_non_null(fp);
	size_t chunk = MiB;
	uint8_t *buf = malloc(chunk);
	for (size_t off = 0; off < bytes; off += chunk) {
		test_fill(buf, chunk, seed + (unsigned)(off / chunk));
		assert_int_equal(fwrite(buf, 1, chunk, fp), chunk);
	}
	free(buf);
	assert_int_equal(fclose(fp), 0);
}

static mig_engine *file_engine(const char *root, const char *id)
{
	mig_engine_options o;
	test_engine_options(&o, id);
	o.peer_timeout_ms = 120000; /* valgrind: the destination hashes 64 MiB per round */
	mig_engine *e = NULL;
	assert_int_equal(mig_engine_new(&e, &o), 0);
	mig_file_domain fd = {"frames", 1, root, 0};
	assert_int_equal(mig_file_domain_register(e, &fd), 0);
	assert_int_equal(mig_engine_start(e), 0);
	return e;
}

/* Engines A and B with a file domain each, user-000 on A with a 64 MiB
 * file, and the secret in a file for migratectl. */
static void start_files(struct fixture *f, char *secret_file, size_t len)
{
	snprintf(f->base, sizeof(f->base), "/tmp/mig-ctl-XXXXXX");
	assert_non_null(mkdtemp(f->base));
	char ra[96], rb[96];
	snprintf(ra, sizeof(ra), "%s/a", f->base);
	snprintf(rb, sizeof(rb), "%s/b", f->base);
	assert_int_equal(mkdir(ra, 0700), 0);
	assert_int_equal(mkdir(rb, 0700), 0);
	write_big_file(ra, "user-000", BIG_FILE_BYTES, 7);
	f->ea = file_engine(ra, "engine-a");
	f->eb = file_engine(rb, "engine-b");
	assert_int_equal(mig_user_add(f->ea, "user-000"), 0);
	f->ra = test_runner_start(f->ea);
	f->rb = test_runner_start(f->eb);
	snprintf(secret_file, len, "%s/secret", f->base);
	FILE *fp = fopen(secret_file, "w");
	assert_non_null(fp);
	fprintf(fp, "%s\n", TEST_SECRET);
	assert_int_equal(fclose(fp), 0);
}

static void test_file_progress(void **state)
{
	struct fixture *f = *state;
	char secret[128];
	start_files(f, secret, sizeof(secret));
	mig_ctl *ca = ctl_open(f->ea);
	struct event_log l = {0};
	mig_event fin;
	int rc =
		mig_ctl_migrate(ca, "user-000", mig_engine_url(f->eb), 240000, log_event, &l, &fin);
	if (rc)
		fail_msg("migrate: %s: %s", mig_err_name(rc), mig_ctl_last_error(ca));
	int progress = count_type(&l, MIG_EVENT_PROGRESS);
	/* File bytes were reported while the rounds ran, not only at the end:
	 * at 10 events a second, 64 MiB leaves room for several. */
	bool file_data = false;
	print_message("# %d events, %d PROGRESS:", l.n, progress);
	for (int i = 0; i < l.n; i++) {
		if (l.ev[i].type != MIG_EVENT_PROGRESS)
			continue;
		print_message(" %s/%u/%llu", l.ev[i].phase, l.ev[i].rounds,
			      (unsigned long long)l.ev[i].bytes_sent);
		file_data |= (strcmp(l.ev[i].phase, "precopy") == 0 ||
			      strcmp(l.ev[i].phase, "final") == 0) &&
			     l.ev[i].bytes_sent >= MiB;
	}
	print_message("\n");
	assert_true(progress >= 2);
	assert_true(file_data);
	check_progress(&l);
	assert_int_equal(l.ev[l.n - 1].type, MIG_EVENT_COMMITTED);
	assert_true(fin.bytes_sent >= BIG_FILE_BYTES);
	assert_true(fin.rounds >= 1);
	mig_ctl_free(ca);

	struct http_answer h;
	http_get(mig_engine_port(f->ea), "/metrics", &h);
	assert_int_equal(h.status, 200);
	assert_true(sample(h.body, "libmigrate_file_rounds_total") == fin.rounds);
	assert_true(sample(h.body, "libmigrate_peer_bytes_sent_total") >= BIG_FILE_BYTES);
	free(h.body);
}

/* ---------------------------------------------------------------- migratectl */

/* Runs argv with its stdout and stderr on a pseudo-terminal of 120 columns;
 * returns the exit status and everything it wrote. */
static int run_pty(char *const argv[], char **out)
{
	struct winsize ws = {.ws_row = 40, .ws_col = 120};
	int master = -1;
	pid_t pid = forkpty(&master, NULL, NULL, &ws);
	assert_true(pid >= 0);
	if (pid == 0) {
		execv(argv[0], argv);
		_exit(127);
	}
	size_t cap = 65536, len = 0;
	char *buf = malloc(cap + 1);
	for (;;) {
		struct pollfd p = {.fd = master, .events = POLLIN};
		if (poll(&p, 1, 200000) <= 0)
			break;
		if (len == cap) {
			cap *= 2;
			buf = realloc(buf, cap + 1);
		}
		ssize_t r = read(master, buf + len, cap - len);
		if (r <= 0)
			break; /* EIO once the child closed the terminal */
		len += (size_t)r;
	}
	buf[len] = '\0';
	close(master);
	int st = 0;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	*out = buf;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* Runs a shell command line; returns its exit status and stdout. */
static int run_sh(const char *cmd, char **out)
{
	FILE *p = popen(cmd, "r");
	assert_non_null(p);
	size_t cap = 65536, len = 0;
	char *buf = malloc(cap + 1);
	size_t r;
	while ((r = fread(buf + len, 1, cap - len, p)) > 0) {
		len += r;
		if (len == cap) {
			cap *= 2;
			buf = realloc(buf, cap + 1);
		}
	}
	buf[len] = '\0';
	int st = pclose(p);
	*out = buf;
	return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

/* Bytes in a rendering of the bar: the "12.3 MiB" after "round N". */
static bool bar_bytes(const char *line, double *bytes)
{
	const char *r = strstr(line, "] ");
	r = r ? strstr(r, " round ") : NULL;
	unsigned round;
	double v;
	char unit[8];
	if (!r || sscanf(r, " round %u %lf %7s", &round, &v, unit) != 3)
		return false;
	double mult = strcmp(unit, "B") == 0     ? 1
		      : strcmp(unit, "KiB") == 0 ? 1024.0
		      : strcmp(unit, "MiB") == 0 ? 1024.0 * 1024
		      : strcmp(unit, "GiB") == 0 ? 1024.0 * 1024 * 1024
						 : -1;
	if (mult < 0)
		return false;
	*bytes = v * mult;
	return true;
}

/* Each line of `text` must be one JSON object python3 accepts. */
static void check_json_lines(const char *text, int *lines, char *last, size_t last_len)
{
	*lines = 0;
	for (const char *p = text; *p;) {
		const char *nl = strchr(p, '\n');
		size_t n = nl ? (size_t)(nl - p) : strlen(p);
		if (n) {
			if (p[0] != '{' || p[n - 1] != '}')
				fail_msg("not a JSON object: %.*s", (int)n, p);
			if (g_python) {
				char cmd[512];
				snprintf(cmd, sizeof(cmd), "'%s' -m json.tool >/dev/null",
					 g_python);
				FILE *py = popen(cmd, "w");
				assert_non_null(py);
				fwrite(p, 1, n, py);
				fputc('\n', py);
				int st = pclose(py);
				if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
					fail_msg("python3 -m json.tool refused: %.*s", (int)n, p);
			}
			snprintf(last, last_len, "%.*s", (int)n, p);
			(*lines)++;
		}
		p = nl ? nl + 1 : p + n;
	}
}

static void test_migratectl(void **state)
{
	struct fixture *f = *state;
	if (!g_migratectl) {
		print_message("# no migratectl path given: skipped\n");
		skip();
	}
	char secret[128];
	start_files(f, secret, sizeof(secret));
	char ctl[512], cmd[2048];
	snprintf(ctl, sizeof(ctl), "%s", g_migratectl);
	char *out = NULL;

	/* --help lists the exit codes. */
	snprintf(cmd, sizeof(cmd), "'%s' --help", ctl);
	assert_int_equal(run_sh(cmd, &out), 0);
	assert_non_null(strstr(out, "exit codes:"));
	assert_non_null(strstr(out, "  5  the engine refused"));
	free(out);

	/* migrate on a terminal: the bar is redrawn as the bytes go out. */
	char eurl[64], burl[64];
	snprintf(eurl, sizeof(eurl), "%s", mig_engine_url(f->ea));
	snprintf(burl, sizeof(burl), "%s", mig_engine_url(f->eb));
	char *const argv[] = {ctl,        "--engine", eurl, "--secret-file", secret, "migrate",
			      "user-000", "--to",     burl, "--timeout",     "240",  NULL};
	int rc = run_pty(argv, &out);
	print_message("# migratectl on a pty: exit %d, %zu bytes of output\n", rc, strlen(out));
	if (rc != 0)
		fail_msg("migratectl migrate failed (%d):\n%s", rc, out);
	int renderings = 0, increasing = 0;
	double prev = -1;
	char prev_line[512] = "";
	for (char *save = NULL, *seg = strtok_r(out, "\r\n", &save); seg;
	     seg = strtok_r(NULL, "\r\n", &save)) {
		if (strncmp(seg, "\033[K", 3) == 0)
			seg += 3;
		double bytes;
		if (!bar_bytes(seg, &bytes) || strcmp(seg, prev_line) == 0)
			continue;
		renderings++;
		if (bytes > prev) {
			increasing++;
			print_message("# bar: %s\n", seg);
			prev = bytes;
		}
		snprintf(prev_line, sizeof(prev_line), "%s", seg);
	}
	print_message("# %d distinct renderings, %d with more bytes than before\n", renderings,
		      increasing);
	assert_true(increasing >= 3);
	free(out);
	assert_int_equal(mig_user_get_state(f->eb, "user-000"), MIG_USER_ACTIVE);

	/* Back with --json (not a terminal): one object per event, the last
	 * one committed. */
	snprintf(
		cmd, sizeof(cmd),
		"'%s' --engine %s --secret-file '%s' migrate user-000 --to %s --json --timeout 240",
		ctl, burl, secret, eurl);
	assert_int_equal(run_sh(cmd, &out), 0);
	int lines = 0;
	char last[2048] = "";
	check_json_lines(out, &lines, last, sizeof(last));
	print_message("# --json: %d lines, last: %.120s\n", lines, last);
	assert_true(lines >= 3);
	assert_non_null(strstr(last, "\"event\":\"committed\""));
	assert_non_null(strstr(out, "\"event\":\"started\""));
	assert_non_null(strstr(out, "\"event\":\"progress\""));
	free(out);

	/* Plain lines when not on a terminal. */
	snprintf(cmd, sizeof(cmd),
		 "'%s' --engine %s --secret-file '%s' migrate user-000 --to %s --timeout 240", ctl,
		 eurl, secret, burl);
	assert_int_equal(run_sh(cmd, &out), 0);
	assert_null(strchr(out, '\r'));
	assert_non_null(strstr(out, "started user-000"));
	assert_non_null(strstr(out, "progress user-000 phase="));
	assert_non_null(strstr(out, "committed user-000 -> "));
	free(out);

	/* users, status and status --json on B. */
	snprintf(cmd, sizeof(cmd), "'%s' --engine %s --secret-file '%s' users", ctl, burl, secret);
	assert_int_equal(run_sh(cmd, &out), 0);
	assert_string_equal(out, "user-000\tactive\n");
	free(out);
	snprintf(cmd, sizeof(cmd), "'%s' --engine %s --secret-file '%s' status", ctl, burl, secret);
	assert_int_equal(run_sh(cmd, &out), 0);
	for (char *save = NULL, *ln = strtok_r(out, "\n", &save); ln;
	     ln = strtok_r(NULL, "\n", &save))
		print_message("# status: %s\n", ln);
	free(out);
	snprintf(cmd, sizeof(cmd), "'%s' --engine %s --secret-file '%s' status", ctl, burl, secret);
	assert_int_equal(run_sh(cmd, &out), 0);
	assert_non_null(strstr(out, "engine-b"));
	assert_non_null(strstr(out, "migrations in flight: none"));
	free(out);
	snprintf(cmd, sizeof(cmd), "'%s' --engine %s --secret-file '%s' status --json", ctl, burl,
		 secret);
	assert_int_equal(run_sh(cmd, &out), 0);
	check_json_lines(out, &lines, last, sizeof(last));
	assert_int_equal(lines, 1);
	assert_non_null(strstr(out, "\"committed_in\":2"));
	assert_non_null(strstr(out, "\"committed_out\":1"));
	free(out);
	snprintf(cmd, sizeof(cmd), "'%s' --engine %s --secret-file '%s' users --json", ctl, burl,
		 secret);
	assert_int_equal(run_sh(cmd, &out), 0);
	check_json_lines(out, &lines, last, sizeof(last));
	assert_int_equal(lines, 1);
	assert_non_null(strstr(out, "{\"user\":\"user-000\",\"state\":\"active\"}"));
	free(out);

	/* Exit codes: refused (5), usage (2), cannot connect (3). */
	snprintf(cmd, sizeof(cmd),
		 "'%s' --engine %s --secret-file '%s' cancel user-000 2>/dev/null", ctl, burl,
		 secret);
	assert_int_equal(run_sh(cmd, &out), 5);
	free(out);
	snprintf(cmd, sizeof(cmd), "'%s' --engine %s --secret-file '%s' cancel --json user-009",
		 ctl, burl, secret);
	assert_int_equal(run_sh(cmd, &out), 5);
	check_json_lines(out, &lines, last, sizeof(last));
	assert_non_null(strstr(last, "\"error\":\"MIG_ENOUSER\""));
	free(out);
	snprintf(cmd, sizeof(cmd), "'%s' --engine %s cancel 2>/dev/null", ctl, burl);
	assert_int_equal(run_sh(cmd, &out), 2);
	free(out);
	int hole = black_hole(burl, sizeof(burl));
	close(hole);
	snprintf(cmd, sizeof(cmd), "'%s' --engine %s --secret-file '%s' users 2>/dev/null", ctl,
		 burl, secret);
	assert_int_equal(run_sh(cmd, &out), 3);
	free(out);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(int argc, char **argv)
{
	g_migratectl = argc > 1 ? argv[1] : getenv("MIGRATECTL");
	g_python = argc > 2 ? argv[2] : getenv("MIG_TEST_PYTHON");
	if (g_python && !*g_python)
		g_python = NULL;
	const struct CMUnitTest tests[] = {
		T(test_status_and_progress), T(test_cancel),     T(test_metrics),
		T(test_file_progress),       T(test_migratectl),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
