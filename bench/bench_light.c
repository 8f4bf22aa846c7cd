/* bench_light: latency and throughput of the light-state handoff between two
 * engines on loopback, next to raw WebSocket and TCP round trips measured in
 * the same process and run. See docs/BENCHMARKS.md.
 *
 *   bench_light [--iterations N] [--users N] [--batch-rounds N] [--json FILE]
 *
 * Sections (each on a fresh pair of engines A and B, except a3):
 *   a  one user, one 4 KiB light domain, migrated A->B, B->A, ... N times;
 *      each engine dispatched by its own thread with mig_engine_run() (as two
 *      servers would), timed from mig_migrate() to the source's COMMITTED
 *      event; every arrival is checked byte for byte. Hook and event
 *      timestamps split each migration into its six one-way legs.
 *   a2 the same with one thread polling both engines' fds.
 *   b  N users (default 1000) on A, all migrations started at once, to B and
 *      back; wall time, migrations/s, CPU time and peak RSS.
 *   a3 section a again (N/4 migrations) on the engines section b used.
 *   c  baselines: a libwebsockets echo (4 KiB binary, one in flight, separate
 *      server and client contexts) and a plain TCP echo (socket/poll).
 *   d  the cost of one idle mig_engine_dispatch() as engines age.
 *
 * Links only against the public library (plus libwebsockets for the
 * baseline). Bounded: every wait has a deadline and a watchdog ends the
 * process if anything hangs. */
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include <libwebsockets.h>

#include <migrate/migrate.h>

#ifndef STATE_BYTES
#define STATE_BYTES 4096
#endif
#define DEFAULT_ITERATIONS 2000
#define MIN_ITERATIONS 10
#define DEFAULT_USERS 1000
#define WARMUP 20
#define WATCHDOG_S 120
#define MIGRATION_TIMEOUT_MS 10000
#define BATCH_TIMEOUT_MS 60000
#define MAX_ROUNDS 10
/* The library remembers at most this many finished migrations (for 10 min);
 * used only to label section d. */
#define OUTCOME_MAX 10000

static const char SECRET[] = "bench-cluster-secret-0123456789abcdef";

/* ------------------------------------------------------------------ utilities */

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("bench_light: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

static void on_watchdog(int sig)
{
	(void)sig;
	static const char msg[] = "bench_light: watchdog: run took too long, giving up\n";
	ssize_t n = write(2, msg, sizeof(msg) - 1);
	(void)n;
	_exit(3);
}

static void fill(uint8_t *p, size_t len, uint64_t seed)
{
	uint64_t x = seed * 0x9E3779B97F4A7C15ull + 1;
	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)x;
	}
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Summary of a sample of durations, in microseconds. */
typedef struct stats {
	size_t n;
	double p50, p90, p99, max, mean, min;
} stats;

/* Nearest-rank percentile of a sorted sample. */
static double pct(const uint64_t *sorted, size_t n, double p)
{
	if (!n)
		return 0;
	size_t rank = (size_t)ceil(p / 100.0 * (double)n);
	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return (double)sorted[rank - 1] / 1000.0;
}

/* Summarises `n` durations in nanoseconds (the array is sorted in place). */
static stats summarise(uint64_t *ns, size_t n)
{
	stats s;
	memset(&s, 0, sizeof(s));
	s.n = n;
	if (!n)
		return s;
	qsort(ns, n, sizeof(*ns), cmp_u64);
	double sum = 0;
	for (size_t i = 0; i < n; i++)
		sum += (double)ns[i];
	s.p50 = pct(ns, n, 50);
	s.p90 = pct(ns, n, 90);
	s.p99 = pct(ns, n, 99);
	s.max = (double)ns[n - 1] / 1000.0;
	s.min = (double)ns[0] / 1000.0;
	s.mean = sum / (double)n / 1000.0;
	return s;
}

static stats summarise_copy(const uint64_t *ns, size_t n)
{
	uint64_t *c = malloc((n ? n : 1) * sizeof(*c));
	if (!c)
		die("out of memory");
	memcpy(c, ns, n * sizeof(*c));
	stats s = summarise(c, n);
	free(c);
	return s;
}

static void print_row(const char *label, const stats *s)
{
	printf("  %-36s %8.0f %8.0f %8.0f %8.0f %8.0f\n", label, s->p50, s->p90, s->p99, s->max,
	       s->mean);
}

static void print_header(void)
{
	printf("  %-36s %8s %8s %8s %8s %8s\n", "(microseconds)", "p50", "p90", "p99", "max",
	       "mean");
}

static double cpu_seconds(const struct rusage *r)
{
	return (double)r->ru_utime.tv_sec + (double)r->ru_utime.tv_usec / 1e6 +
	       (double)r->ru_stime.tv_sec + (double)r->ru_stime.tv_usec / 1e6;
}

/* ------------------------------------------------------------------ the application */

/* One user's light state as the application holds it. */
typedef struct slot {
	bool present; /* the app holds state for this user */
	bool active;  /* the app serves it */
	bool paused;
	size_t len;
	uint8_t data[STATE_BYTES];
} slot;

/* One server: an engine and the app state it serves. */
typedef struct app {
	const char *name;
	mig_engine *engine;
	pthread_mutex_t mu; /* guards slots (hooks run on the dispatch thread) */
	slot *slots;
	size_t nslots;
	atomic_uint resumes, drops, warnings;
	/* Dispatch thread (mode "threads"). */
	pthread_t thread;
	atomic_bool stop;
	bool running;
} app;

static size_t g_nslots; /* batch users + the single user */
static size_t g_solo;   /* slot of the single-user test's user */

static long user_index(const char *user)
{
	char *end;
	if (user[0] != 'u')
		return -1;
	long i = strtol(user + 1, &end, 10);
	if (*end || i < 0 || (size_t)i >= g_nslots)
		return -1;
	return i;
}

static slot *slot_of(app *a, const char *user)
{
	long i = user_index(user);
	if (i < 0)
		die("%s: unexpected user id %s", a->name, user);
	return &a->slots[i];
}

static void user_id(char *buf, size_t len, size_t i)
{
	snprintf(buf, len, "u%05zu", i);
}

/* Per-migration timestamps of the single-user test, written by the hooks and
 * events on both dispatch threads, read by the main thread after the end. */
enum mark {
	M_START,     /* main: before mig_migrate() */
	M_STARTED,   /* src: STARTED event (dispatch picked the migration up) */
	M_INCOMING,  /* dst: incoming hook (BEGIN arrived) */
	M_PAUSE,     /* src: pause hook (ACCEPT arrived) */
	M_EXTRACTED, /* src: extract done */
	M_MERGE,     /* dst: merge hook (PREPARE arrived) */
	M_PREPARED,  /* src: PREPARED event (PREPARED arrived) */
	M_ACTIVATE,  /* dst: activate hook (COMMIT arrived) */
	M_RELEASE,   /* src: release hook (COMMITTED arrived) */
	M_COMMITTED, /* src: COMMITTED event */
	M_WOKE,      /* main: woke up after COMMITTED */
	M_COUNT,
};

static _Atomic uint64_t g_marks[M_COUNT];
static atomic_bool g_tracing;

static void mark(enum mark m)
{
	if (atomic_load_explicit(&g_tracing, memory_order_relaxed))
		atomic_store_explicit(&g_marks[m], now_ns(), memory_order_relaxed);
}

/* Completions, signalled from the source's COMMITTED / ABORTED events. */
static struct {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned committed, aborted;
	int first_error;
	char first_reason[256];
	char first_user[160];
	uint64_t last_downtime_us, last_bytes_sent;
	uint64_t *done_ns; /* per slot: when its COMMITTED event ran */
} g_done = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void done_reset(void)
{
	pthread_mutex_lock(&g_done.mu);
	g_done.committed = g_done.aborted = 0;
	g_done.first_error = 0;
	g_done.first_reason[0] = g_done.first_user[0] = '\0';
	pthread_mutex_unlock(&g_done.mu);
}

/* Waits until `count` migrations ended; false on timeout. */
static bool done_wait(unsigned count, int timeout_ms)
{
	struct timespec dl;
	clock_gettime(CLOCK_MONOTONIC, &dl);
	dl.tv_sec += timeout_ms / 1000;
	dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
	if (dl.tv_nsec >= 1000000000L) {
		dl.tv_sec++;
		dl.tv_nsec -= 1000000000L;
	}
	bool ok = true;
	pthread_mutex_lock(&g_done.mu);
	while (g_done.committed + g_done.aborted < count) {
		if (pthread_cond_timedwait(&g_done.cv, &g_done.mu, &dl) == ETIMEDOUT) {
			ok = g_done.committed + g_done.aborted >= count;
			break;
		}
	}
	pthread_mutex_unlock(&g_done.mu);
	return ok;
}

static unsigned done_count(void)
{
	pthread_mutex_lock(&g_done.mu);
	unsigned n = g_done.committed + g_done.aborted;
	pthread_mutex_unlock(&g_done.mu);
	return n;
}

/* Hooks. */
static int h_pause(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	app *a = ud;
	mark(M_PAUSE);
	pthread_mutex_lock(&a->mu);
	slot *s = slot_of(a, user);
	s->paused = true;
	s->active = false;
	pthread_mutex_unlock(&a->mu);
	return 0;
}

static void h_resume(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	app *a = ud;
	pthread_mutex_lock(&a->mu);
	slot *s = slot_of(a, user);
	s->paused = false;
	s->active = true;
	pthread_mutex_unlock(&a->mu);
	atomic_fetch_add(&a->resumes, 1);
}

static void h_release(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	app *a = ud;
	mark(M_RELEASE);
	pthread_mutex_lock(&a->mu);
	slot *s = slot_of(a, user);
	s->present = s->active = s->paused = false;
	s->len = 0;
	memset(s->data, 0, 16); /* a stale copy here must not pass for a fresh one */
	pthread_mutex_unlock(&a->mu);
}

static int h_incoming(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	app *a = ud;
	mark(M_INCOMING);
	pthread_mutex_lock(&a->mu);
	slot *s = slot_of(a, user);
	bool clash = s->present;
	pthread_mutex_unlock(&a->mu);
	return clash ? -1 : 0;
}

static void h_activate(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	app *a = ud;
	mark(M_ACTIVATE);
	pthread_mutex_lock(&a->mu);
	slot *s = slot_of(a, user);
	s->active = true;
	s->paused = false;
	pthread_mutex_unlock(&a->mu);
}

static void h_drop(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	app *a = ud;
	pthread_mutex_lock(&a->mu);
	slot *s = slot_of(a, user);
	s->present = s->active = false;
	s->len = 0;
	pthread_mutex_unlock(&a->mu);
	atomic_fetch_add(&a->drops, 1);
}

static int d_extract(mig_engine *e, const char *user, mig_buf *out, void *ud)
{
	(void)e;
	app *a = ud;
	pthread_mutex_lock(&a->mu);
	slot *s = slot_of(a, user);
	int rc = s->present && s->paused ? mig_buf_append(out, s->data, s->len) : -1;
	pthread_mutex_unlock(&a->mu);
	mark(M_EXTRACTED);
	return rc;
}

static int d_merge(mig_engine *e, const char *user, uint32_t version, const void *data,
		   size_t len, void *ud)
{
	(void)e;
	app *a = ud;
	mark(M_MERGE);
	if (version != 1 || len > STATE_BYTES)
		return -1;
	pthread_mutex_lock(&a->mu);
	slot *s = slot_of(a, user);
	int rc = 0;
	if (s->active) {
		rc = -1;
	} else {
		memcpy(s->data, data, len);
		s->len = len;
		s->present = true;
	}
	pthread_mutex_unlock(&a->mu);
	return rc;
}

static void on_event(mig_engine *e, const mig_event *ev, void *ud)
{
	(void)e;
	(void)ud;
	switch (ev->type) {
	case MIG_EVENT_STARTED:
		mark(M_STARTED);
		return;
	case MIG_EVENT_PREPARED:
		mark(M_PREPARED);
		return;
	case MIG_EVENT_COMMITTED:
	case MIG_EVENT_ABORTED:
		break;
	default:
		return;
	}
	uint64_t t = now_ns();
	if (ev->type == MIG_EVENT_COMMITTED && atomic_load(&g_tracing))
		atomic_store_explicit(&g_marks[M_COMMITTED], t, memory_order_relaxed);
	long i = user_index(ev->user);
	pthread_mutex_lock(&g_done.mu);
	if (ev->type == MIG_EVENT_COMMITTED) {
		g_done.committed++;
	} else {
		g_done.aborted++;
		if (!g_done.first_error) {
			g_done.first_error = ev->error ? ev->error : MIG_ECANCELED;
			snprintf(g_done.first_reason, sizeof(g_done.first_reason), "%s",
				 ev->reason);
			snprintf(g_done.first_user, sizeof(g_done.first_user), "%s", ev->user);
		}
	}
	if (i >= 0 && g_done.done_ns)
		g_done.done_ns[i] = t;
	g_done.last_downtime_us = ev->downtime_us;
	g_done.last_bytes_sent = ev->bytes_sent;
	pthread_cond_broadcast(&g_done.cv);
	pthread_mutex_unlock(&g_done.mu);
}

static void on_log(mig_engine *e, mig_log_level level, const char *line, void *ud)
{
	(void)e;
	app *a = ud;
	atomic_fetch_add(&a->warnings, 1);
	fprintf(stderr, "[%s] %s: %s\n", a->name, level == MIG_LOG_ERROR ? "error" : "warn",
		line);
}

static void app_init(app *a, const char *name)
{
	memset(a, 0, sizeof(*a));
	a->name = name;
	pthread_mutex_init(&a->mu, NULL);
	a->nslots = g_nslots;
	a->slots = calloc(g_nslots, sizeof(*a->slots));
	if (!a->slots)
		die("out of memory");

	mig_engine_options o;
	memset(&o, 0, sizeof(o));
	o.listen_address = "127.0.0.1";
	o.listen_port = 0;
	o.engine_id = name;
	o.secret = SECRET;
	o.secret_len = sizeof(SECRET) - 1;
	o.on_event = on_event;
	o.on_log = on_log;
	o.log_level = MIG_LOG_WARN;
	o.user_data = a;
	int rc = mig_engine_new(&a->engine, &o);
	if (rc)
		die("mig_engine_new(%s): %s", name, mig_strerror(rc));
	mig_hooks h = {h_pause, h_resume, h_release, h_incoming, h_activate, h_drop};
	if ((rc = mig_engine_set_hooks(a->engine, &h, a)) != 0)
		die("mig_engine_set_hooks: %s", mig_strerror(rc));
	mig_light_domain d = {"state", "bench.State", 1, d_extract, d_merge};
	if ((rc = mig_light_domain_register(a->engine, &d, a)) != 0)
		die("mig_light_domain_register: %s", mig_strerror(rc));
	if ((rc = mig_engine_start(a->engine)) != 0)
		die("mig_engine_start(%s): %s: %s", name, mig_strerror(rc),
		    mig_engine_last_error(a->engine));
}

static void app_free(app *a)
{
	mig_engine_free(a->engine);
	free(a->slots);
	pthread_mutex_destroy(&a->mu);
}

/* Gives the app user `i` with the given bytes and registers it on the engine. */
static void app_add_user(app *a, size_t i, uint64_t seed)
{
	char id[32];
	user_id(id, sizeof(id), i);
	pthread_mutex_lock(&a->mu);
	slot *s = &a->slots[i];
	fill(s->data, STATE_BYTES, seed);
	s->len = STATE_BYTES;
	s->present = s->active = true;
	s->paused = false;
	pthread_mutex_unlock(&a->mu);
	int rc = mig_user_add(a->engine, id);
	if (rc)
		die("mig_user_add(%s, %s): %s", a->name, id, mig_strerror(rc));
}

/* Checks that user `i` now lives on `to` with exactly `expect`, and is gone
 * from `from`. */
static void verify_moved(app *from, app *to, size_t i, const uint8_t *expect)
{
	char id[32];
	user_id(id, sizeof(id), i);
	if (mig_user_get_state(to->engine, id) != MIG_USER_ACTIVE)
		die("%s: %s not ACTIVE after commit (state %d)", to->name, id,
		    (int)mig_user_get_state(to->engine, id));
	if (mig_user_get_state(from->engine, id) != MIG_USER_ABSENT)
		die("%s: %s still present after commit", from->name, id);
	pthread_mutex_lock(&to->mu);
	slot *s = &to->slots[i];
	bool ok = s->present && s->active && s->len == STATE_BYTES &&
		  memcmp(s->data, expect, STATE_BYTES) == 0;
	pthread_mutex_unlock(&to->mu);
	pthread_mutex_lock(&from->mu);
	bool gone = !from->slots[i].present;
	pthread_mutex_unlock(&from->mu);
	if (!ok)
		die("%s: %s arrived with different bytes", to->name, id);
	if (!gone)
		die("%s: %s was not released", from->name, id);
}

/* Dispatch threads: each engine served by its own thread, as each engine
 * would be by its own server process. */
static void *dispatch_main(void *arg)
{
	app *a = arg;
	while (!atomic_load(&a->stop)) {
		int rc = mig_engine_run(a->engine, 100);
		if (rc)
			die("%s: mig_engine_run: %s", a->name, mig_strerror(rc));
	}
	return NULL;
}

static void threads_start(app *a)
{
	atomic_store(&a->stop, false);
	if (pthread_create(&a->thread, NULL, dispatch_main, a) != 0)
		die("pthread_create failed");
	a->running = true;
}

static void threads_stop(app *a)
{
	if (!a->running)
		return;
	atomic_store(&a->stop, true);
	mig_engine_stop(a->engine);
	pthread_join(a->thread, NULL);
	a->running = false;
}

/* Two fresh engines; every section gets its own pair, so that no section
 * inherits another's remembered outcomes (see section d). */
typedef struct pair {
	app a, b;
	uint64_t round;       /* single-user migrations so far (state seed) */
	uint64_t migrations;  /* migrations so far: each leaves a record on both */
} pair;

static pair *pair_new(void)
{
	pair *p = calloc(1, sizeof(*p));
	if (!p)
		die("out of memory");
	app_init(&p->a, "A");
	app_init(&p->b, "B");
	app_add_user(&p->a, g_solo, 4242);
	return p;
}

static void pair_free(pair *p)
{
	threads_stop(&p->a);
	threads_stop(&p->b);
	app_free(&p->a);
	app_free(&p->b);
	free(p);
}

/* Median cost of one mig_engine_dispatch() with nothing to do (no dispatch
 * thread may be running on the engine). */
static double idle_dispatch_us(app *a)
{
	enum { N = 201 };
	uint64_t t[N];
	for (int i = 0; i < N; i++) {
		uint64_t t0 = now_ns();
		mig_engine_dispatch(a->engine);
		t[i] = now_ns() - t0;
	}
	qsort(t, N, sizeof(t[0]), cmp_u64);
	return (double)t[N / 2] / 1000.0;
}

/* ------------------------------------------------------------------ a: single user */

enum mode { MODE_THREADS, MODE_ONE_THREAD };

typedef struct single_result {
	size_t n;
	uint64_t cold_ns; /* first migration of the section */
	bool cold;        /* ... which had to connect and authenticate */
	uint64_t *total;  /* mig_migrate() -> COMMITTED event */
	uint64_t *woke;   /* mig_migrate() -> waiting thread woke */
	uint64_t *downtime;
	uint64_t *legs[M_COUNT]; /* legs[k]: marks[k] - marks[k-1], k = 1..M_WOKE */
	bool *a_to_b;             /* direction of each timed migration */
	uint64_t bytes_sent;
	double seconds;
} single_result;

static const char *const leg_names[M_COUNT] = {
	[M_STARTED] = "mig_migrate -> src dispatch",
	[M_INCOMING] = "BEGIN     src->dst (incoming hook)",
	[M_PAUSE] = "ACCEPT    dst->src (pause hook)",
	[M_EXTRACTED] = "pause + extract",
	[M_MERGE] = "PREPARE   src->dst (merge hook)",
	[M_PREPARED] = "PREPARED  dst->src (PREPARED event)",
	[M_ACTIVATE] = "COMMIT    src->dst (activate hook)",
	[M_RELEASE] = "COMMITTED dst->src (release hook)",
	[M_COMMITTED] = "release -> COMMITTED event",
	[M_WOKE] = "COMMITTED event -> waiter woke",
};

static const char *const leg_keys[M_COUNT] = {
	[M_STARTED] = "kickoff",      [M_INCOMING] = "begin",
	[M_PAUSE] = "accept",         [M_EXTRACTED] = "pause_extract",
	[M_MERGE] = "prepare",        [M_PREPARED] = "prepared",
	[M_ACTIVATE] = "commit",      [M_RELEASE] = "committed",
	[M_COMMITTED] = "release_to_event", [M_WOKE] = "event_to_waiter",
};

/* One-thread mode: dispatch both engines from this thread until `count`
 * migrations ended. */
static bool poll_both_until(app *a, app *b, unsigned count, int timeout_ms)
{
	uint64_t end = now_ns() + (uint64_t)timeout_ms * 1000000u;
	for (;;) {
		int rc = mig_engine_dispatch(a->engine);
		if (!rc)
			rc = mig_engine_dispatch(b->engine);
		if (rc)
			die("mig_engine_dispatch: %s", mig_strerror(rc));
		if (done_count() >= count)
			return true;
		uint64_t now = now_ns();
		if (now >= end)
			return false;
		struct pollfd p[2] = {{.fd = mig_engine_fd(a->engine), .events = POLLIN},
				      {.fd = mig_engine_fd(b->engine), .events = POLLIN}};
		poll(p, 2, 50);
	}
}

/* Migrates the single user from `from` to `to`, waiting for the end. */
static uint64_t migrate_one(app *from, app *to, enum mode mode, uint8_t *expect, uint64_t round)
{
	char id[32];
	user_id(id, sizeof(id), g_solo);
	/* The user "played" since the last move: change its state, so every
	 * migration carries bytes the destination has never seen. */
	pthread_mutex_lock(&from->mu);
	slot *s = &from->slots[g_solo];
	size_t off = (size_t)(round * 64) % STATE_BYTES;
	fill(s->data + off, STATE_BYTES - off < 64 ? STATE_BYTES - off : 64, round);
	memcpy(s->data, &round, STATE_BYTES < sizeof(round) ? STATE_BYTES : sizeof(round));
	memcpy(expect, s->data, STATE_BYTES);
	pthread_mutex_unlock(&from->mu);

	done_reset();
	for (int k = 0; k < M_COUNT; k++)
		atomic_store_explicit(&g_marks[k], 0, memory_order_relaxed);
	uint64_t t0 = now_ns();
	atomic_store_explicit(&g_marks[M_START], t0, memory_order_relaxed);
	int rc = mig_migrate(from->engine, id, mig_engine_url(to->engine), NULL);
	if (rc)
		die("mig_migrate(%s -> %s): %s: %s", from->name, to->name, mig_strerror(rc),
		    mig_engine_last_error(from->engine));
	bool ok = mode == MODE_THREADS ? done_wait(1, MIGRATION_TIMEOUT_MS)
				       : poll_both_until(from, to, 1, MIGRATION_TIMEOUT_MS);
	uint64_t t1 = now_ns();
	atomic_store_explicit(&g_marks[M_WOKE], t1, memory_order_relaxed);
	if (!ok)
		die("migration %s -> %s timed out after %d ms", from->name, to->name,
		    MIGRATION_TIMEOUT_MS);
	if (g_done.aborted)
		die("migration %s -> %s aborted: %s: %s", from->name, to->name,
		    mig_err_name(g_done.first_error), g_done.first_reason);
	verify_moved(from, to, g_solo, expect);
	return t1 - t0;
}

static void run_single(pair *p, enum mode mode, size_t n, single_result *r)
{
	app *a = &p->a, *b = &p->b;
	memset(r, 0, sizeof(*r));
	r->n = n;
	r->total = calloc(n, sizeof(uint64_t));
	r->woke = calloc(n, sizeof(uint64_t));
	r->downtime = calloc(n, sizeof(uint64_t));
	r->a_to_b = calloc(n, sizeof(bool));
	for (int k = 1; k < M_COUNT; k++)
		r->legs[k] = calloc(n, sizeof(uint64_t));
	uint8_t *expect = malloc(STATE_BYTES);
	if (!r->total || !r->woke || !r->downtime || !r->a_to_b || !expect)
		die("out of memory");
	if (mode == MODE_THREADS) {
		threads_start(a);
		threads_start(b);
	}
	/* The user starts on A (or wherever the last run left it). */
	char id[32];
	user_id(id, sizeof(id), g_solo);
	app *from = mig_user_get_state(a->engine, id) == MIG_USER_ACTIVE ? a : b;
	app *to = from == a ? b : a;
	r->cold = p->migrations == 0;
	atomic_store(&g_tracing, true);
	for (size_t i = 0; i < WARMUP + n; i++) {
		uint64_t t = migrate_one(from, to, mode, expect, ++p->round);
		p->migrations++;
		if (i == 0)
			r->cold_ns = t;
		if (i == WARMUP)
			r->seconds = (double)now_ns();
		if (i >= WARMUP) {
			size_t k = i - WARMUP;
			uint64_t m[M_COUNT];
			for (int j = 0; j < M_COUNT; j++)
				m[j] = atomic_load_explicit(&g_marks[j], memory_order_relaxed);
			r->a_to_b[k] = from == a;
			r->total[k] = m[M_COMMITTED] - m[M_START];
			r->woke[k] = m[M_WOKE] - m[M_START];
			for (int j = 1; j < M_COUNT; j++)
				r->legs[j][k] = m[j] >= m[j - 1] ? m[j] - m[j - 1] : 0;
			pthread_mutex_lock(&g_done.mu);
			r->downtime[k] = g_done.last_downtime_us * 1000u;
			r->bytes_sent = g_done.last_bytes_sent;
			pthread_mutex_unlock(&g_done.mu);
		}
		app *tmp = from;
		from = to;
		to = tmp;
	}
	r->seconds = ((double)now_ns() - r->seconds) / 1e9;
	atomic_store(&g_tracing, false);
	if (mode == MODE_THREADS) {
		threads_stop(a);
		threads_stop(b);
	}
	free(expect);
}

static void single_free(single_result *r)
{
	free(r->total);
	free(r->woke);
	free(r->downtime);
	free(r->a_to_b);
	for (int k = 1; k < M_COUNT; k++)
		free(r->legs[k]);
}

/* ------------------------------------------------------------------ b: batch */

typedef struct batch_dir {
	double wall_s;
	double per_s;
	double cpu_s;
	long maxrss_before_kb, maxrss_after_kb;
	stats done; /* per-migration completion time since the batch began */
	double issue_ms; /* time spent in the mig_migrate() loop */
} batch_dir;

static void run_batch_dir(app *from, app *to, size_t nusers, uint8_t **expect, batch_dir *r)
{
	memset(r, 0, sizeof(*r));
	const char *url = mig_engine_url(to->engine);
	struct rusage ru0, ru1;
	getrusage(RUSAGE_SELF, &ru0);
	done_reset();
	pthread_mutex_lock(&g_done.mu);
	memset(g_done.done_ns, 0, g_nslots * sizeof(uint64_t));
	pthread_mutex_unlock(&g_done.mu);
	uint64_t t0 = now_ns();
	for (size_t i = 0; i < nusers; i++) {
		char id[32];
		user_id(id, sizeof(id), i);
		int rc = mig_migrate(from->engine, id, url, NULL);
		if (rc)
			die("batch: mig_migrate(%s): %s", id, mig_strerror(rc));
	}
	uint64_t t_issued = now_ns();
	if (!done_wait((unsigned)nusers, BATCH_TIMEOUT_MS))
		die("batch %s -> %s: only %u of %zu ended within %d ms", from->name, to->name,
		    done_count(), nusers, BATCH_TIMEOUT_MS);
	uint64_t t1 = now_ns();
	getrusage(RUSAGE_SELF, &ru1);
	if (g_done.aborted)
		die("batch %s -> %s: %u aborted, first %s: %s: %s", from->name, to->name,
		    g_done.aborted, g_done.first_user, mig_err_name(g_done.first_error),
		    g_done.first_reason);
	uint64_t *lat = malloc(nusers * sizeof(uint64_t));
	if (!lat)
		die("out of memory");
	pthread_mutex_lock(&g_done.mu);
	for (size_t i = 0; i < nusers; i++)
		lat[i] = g_done.done_ns[i] - t0;
	pthread_mutex_unlock(&g_done.mu);
	r->done = summarise(lat, nusers);
	free(lat);
	for (size_t i = 0; i < nusers; i++)
		verify_moved(from, to, i, expect[i]);
	r->wall_s = (double)(t1 - t0) / 1e9;
	r->per_s = (double)nusers / r->wall_s;
	r->cpu_s = cpu_seconds(&ru1) - cpu_seconds(&ru0);
	r->maxrss_before_kb = ru0.ru_maxrss;
	r->maxrss_after_kb = ru1.ru_maxrss;
	r->issue_ms = (double)(t_issued - t0) / 1e6;
}

/* ------------------------------------------------------------------ c: lws echo */

#define ECHO_MAX (64 * 1024)

typedef struct echo_pss {
	size_t len;
	uint8_t buf[LWS_PRE + ECHO_MAX];
} echo_pss;

typedef struct echo_client {
	size_t target, count; /* round trips wanted / done (incl. warm-up) */
	uint64_t t_send;
	uint64_t *rtt;
	uint8_t tx[LWS_PRE + STATE_BYTES]; /* lws masks client frames in place */
	uint8_t payload[STATE_BYTES];
	uint8_t rx[STATE_BYTES];
	size_t rx_len;
	bool done, failed;
	char why[160];
} echo_client;

static atomic_bool g_echo_server_stop;

static int echo_server_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
			  size_t len)
{
	echo_pss *p = user;
	switch (reason) {
	case LWS_CALLBACK_ESTABLISHED:
		p->len = 0;
		return 0;
	case LWS_CALLBACK_RECEIVE:
		if (lws_is_first_fragment(wsi))
			p->len = 0;
		if (p->len + len > ECHO_MAX)
			return -1;
		memcpy(p->buf + LWS_PRE + p->len, in, len);
		p->len += len;
		if (lws_is_final_fragment(wsi) && lws_remaining_packet_payload(wsi) == 0)
			lws_callback_on_writable(wsi);
		return 0;
	case LWS_CALLBACK_SERVER_WRITEABLE:
		if (lws_write(wsi, p->buf + LWS_PRE, p->len, LWS_WRITE_BINARY) < (int)p->len)
			return -1;
		p->len = 0;
		return 0;
	default:
		break;
	}
	return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static int echo_client_cb(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
			  size_t len)
{
	struct lws_context *ctx = lws_get_context(wsi);
	echo_client *c = ctx ? lws_context_user(ctx) : NULL;
	switch (reason) {
	case LWS_CALLBACK_CLIENT_ESTABLISHED:
		lws_callback_on_writable(wsi);
		return 0;
	case LWS_CALLBACK_CLIENT_WRITEABLE:
		/* A new payload each time, so the echo must carry real bytes. */
		memcpy(c->payload, &c->count,
		       STATE_BYTES < sizeof(c->count) ? STATE_BYTES : sizeof(c->count));
		memcpy(c->tx + LWS_PRE, c->payload, STATE_BYTES);
		c->rx_len = 0;
		c->t_send = now_ns();
		if (lws_write(wsi, c->tx + LWS_PRE, STATE_BYTES, LWS_WRITE_BINARY) < STATE_BYTES) {
			c->failed = c->done = true;
			snprintf(c->why, sizeof(c->why), "lws_write failed");
			return -1;
		}
		return 0;
	case LWS_CALLBACK_CLIENT_RECEIVE:
		if (c->rx_len + len > STATE_BYTES) {
			c->failed = c->done = true;
			snprintf(c->why, sizeof(c->why), "echo longer than sent");
			return -1;
		}
		memcpy(c->rx + c->rx_len, in, len);
		c->rx_len += len;
		if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi))
			return 0;
		{
			uint64_t t = now_ns();
			if (c->rx_len != STATE_BYTES ||
			    memcmp(c->rx, c->payload, STATE_BYTES) != 0) {
				c->failed = c->done = true;
				snprintf(c->why, sizeof(c->why), "echo differs from what was sent");
				return -1;
			}
			if (c->count >= WARMUP)
				c->rtt[c->count - WARMUP] = t - c->t_send;
			c->count++;
			if (c->count >= c->target) {
				c->done = true;
				return 0;
			}
		}
		lws_callback_on_writable(wsi);
		return 0;
	case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
		c->failed = c->done = true;
		snprintf(c->why, sizeof(c->why), "cannot connect: %s",
			 in ? (const char *)in : "?");
		return 0;
	case LWS_CALLBACK_CLIENT_CLOSED:
		if (!c->done) {
			c->failed = c->done = true;
			snprintf(c->why, sizeof(c->why), "connection closed early");
		}
		return 0;
	default:
		break;
	}
	return lws_callback_http_dummy(wsi, reason, user, in, len);
}

static void *echo_server_main(void *arg)
{
	struct lws_context *ctx = arg;
	while (!atomic_load(&g_echo_server_stop))
		if (lws_service(ctx, 0) < 0)
			break;
	return NULL;
}

/* Measures `n` WebSocket round trips; fills rtt (ns). */
static void run_ws_echo(size_t n, uint64_t *rtt)
{
	static const struct lws_protocols server_protocols[] = {
		{"http", lws_callback_http_dummy, 0, 0, 0, NULL, 0},
		{"bench-echo", echo_server_cb, sizeof(echo_pss), ECHO_MAX, 1, NULL, ECHO_MAX},
		{NULL, NULL, 0, 0, 0, NULL, 0},
	};
	static const struct lws_protocols client_protocols[] = {
		{"bench-echo", echo_client_cb, 0, ECHO_MAX, 1, NULL, ECHO_MAX},
		{NULL, NULL, 0, 0, 0, NULL, 0},
	};
	lws_set_log_level(0, NULL);
	struct lws_context_creation_info info;
	memset(&info, 0, sizeof(info));
	info.port = 0;
	info.iface = "127.0.0.1";
	info.protocols = server_protocols;
	info.gid = -1;
	info.uid = -1;
	struct lws_context *sctx = lws_create_context(&info);
	if (!sctx)
		die("ws echo: cannot create the server context");
	struct lws_vhost *vh = lws_get_vhost_by_name(sctx, "default");
	int port = vh ? lws_get_vhost_listen_port(vh) : -1;
	if (port <= 0)
		die("ws echo: no listen port");

	echo_client *c = calloc(1, sizeof(*c));
	if (!c)
		die("out of memory");
	c->target = WARMUP + n;
	c->rtt = rtt;
	fill(c->payload, STATE_BYTES, 77);
	memset(&info, 0, sizeof(info));
	info.port = CONTEXT_PORT_NO_LISTEN;
	info.protocols = client_protocols;
	info.gid = -1;
	info.uid = -1;
	info.user = c;
	struct lws_context *cctx = lws_create_context(&info);
	if (!cctx)
		die("ws echo: cannot create the client context");

	atomic_store(&g_echo_server_stop, false);
	pthread_t th;
	if (pthread_create(&th, NULL, echo_server_main, sctx) != 0)
		die("pthread_create failed");

	struct lws_client_connect_info ci;
	memset(&ci, 0, sizeof(ci));
	ci.context = cctx;
	ci.address = "127.0.0.1";
	ci.port = port;
	ci.path = "/";
	ci.host = "127.0.0.1";
	ci.origin = "127.0.0.1";
	ci.protocol = "bench-echo";
	if (!lws_client_connect_via_info(&ci))
		die("ws echo: cannot start connecting");
	uint64_t end = now_ns() + 30ull * 1000000000u;
	while (!c->done && now_ns() < end)
		if (lws_service(cctx, 0) < 0)
			break;
	if (!c->done)
		die("ws echo: did not finish in time (%zu of %zu)", c->count, c->target);
	if (c->failed)
		die("ws echo: %s", c->why);
	lws_context_destroy(cctx);
	atomic_store(&g_echo_server_stop, true);
	lws_cancel_service(sctx);
	pthread_join(th, NULL);
	lws_context_destroy(sctx);
	free(c);
}

/* ------------------------------------------------------------------ c: tcp echo */

static bool io_full(int fd, void *buf, size_t len, bool rd)
{
	uint8_t *p = buf;
	size_t done = 0;
	while (done < len) {
		struct pollfd pfd = {.fd = fd, .events = rd ? POLLIN : POLLOUT};
		if (poll(&pfd, 1, 10000) <= 0)
			return false;
		ssize_t n = rd ? read(fd, p + done, len - done) : write(fd, p + done, len - done);
		if (n < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (n <= 0)
			return false;
		done += (size_t)n;
	}
	return true;
}

static void *tcp_server_main(void *arg)
{
	int lfd = *(int *)arg;
	int fd = accept(lfd, NULL, NULL);
	if (fd < 0)
		return NULL;
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	uint8_t buf[STATE_BYTES];
	while (io_full(fd, buf, sizeof(buf), true) && io_full(fd, buf, sizeof(buf), false))
		;
	close(fd);
	return NULL;
}

static void run_tcp_echo(size_t n, uint64_t *rtt)
{
	int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sa;
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t sl = sizeof(sa);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 || listen(lfd, 1) != 0 ||
	    getsockname(lfd, (struct sockaddr *)&sa, &sl) != 0)
		die("tcp echo: cannot listen: %s", strerror(errno));
	pthread_t th;
	if (pthread_create(&th, NULL, tcp_server_main, &lfd) != 0)
		die("pthread_create failed");
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
		die("tcp echo: cannot connect: %s", strerror(errno));
	int one = 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	uint8_t tx[STATE_BYTES], rx[STATE_BYTES];
	fill(tx, sizeof(tx), 99);
	for (size_t i = 0; i < WARMUP + n; i++) {
		memcpy(tx, &i, STATE_BYTES < sizeof(i) ? STATE_BYTES : sizeof(i));
		uint64_t t0 = now_ns();
		if (!io_full(fd, tx, sizeof(tx), false) || !io_full(fd, rx, sizeof(rx), true))
			die("tcp echo: i/o failed");
		uint64_t t1 = now_ns();
		if (memcmp(tx, rx, sizeof(tx)) != 0)
			die("tcp echo: echo differs");
		if (i >= WARMUP)
			rtt[i - WARMUP] = t1 - t0;
	}
	close(fd);
	pthread_join(th, NULL);
	close(lfd);
}

/* ------------------------------------------------------------------ machine */

static void cpu_model(char *buf, size_t len)
{
	snprintf(buf, len, "unknown");
	FILE *f = fopen("/proc/cpuinfo", "r");
	if (!f)
		return;
	char line[512];
	while (fgets(line, sizeof(line), f)) {
		if (strncmp(line, "model name", 10) == 0) {
			char *p = strchr(line, ':');
			if (p) {
				p++;
				while (*p == ' ')
					p++;
				p[strcspn(p, "\n")] = '\0';
				snprintf(buf, len, "%s", p);
			}
			break;
		}
	}
	fclose(f);
}

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			fprintf(f, "\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			fprintf(f, "\\u%04x", (unsigned char)*s);
		else
			fputc(*s, f);
	}
	fputc('"', f);
}

static void json_stats(FILE *f, const stats *s)
{
	fprintf(f,
		"{\"n\": %zu, \"p50_us\": %.1f, \"p90_us\": %.1f, \"p99_us\": %.1f, "
		"\"max_us\": %.1f, \"mean_us\": %.1f, \"min_us\": %.1f}",
		s->n, s->p50, s->p90, s->p99, s->max, s->mean, s->min);
}

/* ------------------------------------------------------------------ main */

static void usage(FILE *out)
{
	fprintf(out,
		"usage: bench_light [--iterations N] [--users N] [--batch-rounds N] [--json FILE]\n"
		"  --iterations N    single-user migrations to time (default %d, min %d)\n"
		"  --users N         users in the batch test (default %d)\n"
		"  --batch-rounds N  batch there-and-back rounds (default 1, max %d)\n"
		"  --json FILE       also write the numbers as JSON to FILE\n",
		DEFAULT_ITERATIONS, MIN_ITERATIONS, DEFAULT_USERS, MAX_ROUNDS);
}

typedef struct single_summary {
	stats total, woke, downtime, legs[M_COUNT], first_tenth, last_tenth;
	/* By direction: [0] A -> B (A opened the connection: WebSocket client),
	 * [1] B -> A (B answers on the connection A opened: server side). */
	stats dir_total[2], dir_prepare[2];
} single_summary;

/* Summary of the samples of `v` whose direction is `want`. */
static stats summarise_dir(const uint64_t *v, const bool *a_to_b, size_t n, bool want)
{
	uint64_t *c = malloc((n ? n : 1) * sizeof(*c));
	if (!c)
		die("out of memory");
	size_t k = 0;
	for (size_t i = 0; i < n; i++)
		if (a_to_b[i] == want)
			c[k++] = v[i];
	stats s = summarise(c, k);
	free(c);
	return s;
}

static void summarise_single(single_result *r, single_summary *s)
{
	size_t tenth = r->n / 10 ? r->n / 10 : 1;
	for (int d = 0; d < 2; d++) {
		s->dir_total[d] = summarise_dir(r->total, r->a_to_b, r->n, d == 0);
		s->dir_prepare[d] = summarise_dir(r->legs[M_MERGE], r->a_to_b, r->n, d == 0);
	}
	s->first_tenth = summarise_copy(r->total, tenth);
	s->last_tenth = summarise_copy(r->total + r->n - tenth, tenth);
	s->total = summarise(r->total, r->n);
	s->woke = summarise(r->woke, r->n);
	s->downtime = summarise(r->downtime, r->n);
	for (int k = 1; k < M_COUNT; k++)
		s->legs[k] = summarise(r->legs[k], r->n);
}

static void print_single(const char *title, const single_result *r, const single_summary *s)
{
	printf("\n%s\n", title);
	printf("  %zu timed migrations (+%d warm-up) in %.2f s, every arrival verified by memcmp;\n"
	       "  %" PRIu64 " bytes sent by the source per migration; first migration of the "
	       "section %.0f us%s\n",
	       r->n, WARMUP, r->seconds, r->bytes_sent, (double)r->cold_ns / 1000.0,
	       r->cold ? " (cold: includes connect + auth)" : "");
	print_header();
	print_row("mig_migrate -> COMMITTED event", &s->total);
	print_row("mig_migrate -> waiting thread woke", &s->woke);
	print_row("downtime (pause -> commit, lib)", &s->downtime);
	printf("  first / last tenth of the run, p50: %.0f / %.0f us\n", s->first_tenth.p50,
	       s->last_tenth.p50);
	printf("  by direction, p50 (p99): A->B %.0f (%.0f) us, B->A %.0f (%.0f) us; PREPARE leg\n"
	       "  A->B %.0f us, B->A %.0f us (A opened the peer connection: A is its ws client)\n",
	       s->dir_total[0].p50, s->dir_total[0].p99, s->dir_total[1].p50, s->dir_total[1].p99,
	       s->dir_prepare[0].p50, s->dir_prepare[1].p50);
	printf("  where the time goes (per leg; p50s do not add up exactly):\n");
	for (int k = 1; k < M_COUNT; k++)
		print_row(leg_names[k], &s->legs[k]);
}

typedef struct dispatch_point {
	const char *where;
	uint64_t remembered; /* finished migrations the engine remembers */
	double us;
} dispatch_point;

#define MAX_POINTS 64
static dispatch_point g_points[MAX_POINTS];
static size_t g_npoints;

static void add_point(const char *where, pair *p)
{
	if (g_npoints >= MAX_POINTS)
		return;
	uint64_t rem = p->migrations < OUTCOME_MAX ? p->migrations : OUTCOME_MAX;
	g_points[g_npoints++] = (dispatch_point){where, rem, idle_dispatch_us(&p->a)};
}

static void json_single(FILE *f, const char *key, const single_result *r, const single_summary *s)
{
	fprintf(f, "  \"%s\": {\n    \"n\": %zu, \"first_us\": %.1f, \"first_is_cold\": %s,\n",
		key, r->n, (double)r->cold_ns / 1000.0, r->cold ? "true" : "false");
	fprintf(f, "    \"bytes_sent\": %" PRIu64 ", \"seconds\": %.3f,\n", r->bytes_sent,
		r->seconds);
	fprintf(f, "    \"migrate_to_committed\": ");
	json_stats(f, &s->total);
	fprintf(f, ",\n    \"migrate_to_waiter\": ");
	json_stats(f, &s->woke);
	fprintf(f, ",\n    \"downtime\": ");
	json_stats(f, &s->downtime);
	fprintf(f, ",\n    \"first_tenth_p50_us\": %.1f, \"last_tenth_p50_us\": %.1f",
		s->first_tenth.p50, s->last_tenth.p50);
	fprintf(f, ",\n    \"a_to_b\": ");
	json_stats(f, &s->dir_total[0]);
	fprintf(f, ",\n    \"b_to_a\": ");
	json_stats(f, &s->dir_total[1]);
	fprintf(f, ",\n    \"prepare_leg_a_to_b\": ");
	json_stats(f, &s->dir_prepare[0]);
	fprintf(f, ",\n    \"prepare_leg_b_to_a\": ");
	json_stats(f, &s->dir_prepare[1]);
	fprintf(f, ",\n    \"legs\": {");
	for (int k = 1; k < M_COUNT; k++) {
		fprintf(f, "%s\n      \"%s\": ", k > 1 ? "," : "", leg_keys[k]);
		json_stats(f, &s->legs[k]);
	}
	fprintf(f, "\n    }\n  },\n");
}

int main(int argc, char **argv)
{
	size_t iterations = DEFAULT_ITERATIONS, nusers = DEFAULT_USERS, rounds = 1;
	const char *json_path = NULL;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--iterations") == 0 && i + 1 < argc) {
			iterations = strtoul(argv[++i], NULL, 10);
		} else if (strcmp(argv[i], "--users") == 0 && i + 1 < argc) {
			nusers = strtoul(argv[++i], NULL, 10);
		} else if (strcmp(argv[i], "--batch-rounds") == 0 && i + 1 < argc) {
			rounds = strtoul(argv[++i], NULL, 10);
		} else if (strcmp(argv[i], "--json") == 0 && i + 1 < argc) {
			json_path = argv[++i];
		} else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
			usage(stdout);
			return 0;
		} else {
			usage(stderr);
			return 2;
		}
	}
	if (iterations < MIN_ITERATIONS || iterations > 1000000 || nusers < 1 ||
	    nusers > 100000 || rounds < 1 || rounds > MAX_ROUNDS) {
		usage(stderr);
		return 2;
	}
	signal(SIGALRM, on_watchdog);
	alarm(WATCHDOG_S);
	setvbuf(stdout, NULL, _IOLBF, 0);

	char cpu[256];
	cpu_model(cpu, sizeof(cpu));
	struct utsname un;
	uname(&un);
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	uint64_t run_t0 = now_ns();

	printf("bench_light: libmigrate %s, libwebsockets %s\n", mig_version(),
	       lws_get_library_version());
	char load[64] = "?";
	FILE *lf = fopen("/proc/loadavg", "r");
	if (lf) {
		if (fgets(load, sizeof(load), lf))
			load[strcspn(load, "\n")] = '\0';
		fclose(lf);
	}
	printf("machine: %ld cpus, %s, %s %s; loadavg at start: %s\n", ncpu, cpu, un.sysname,
	       un.release, load);
	printf("setup: engines A and B on 127.0.0.1 (ws://, cluster secret set, log level WARN),\n"
	       "one light domain of %d bytes per user; a fresh pair of engines per section\n",
	       STATE_BYTES);

	g_nslots = nusers + 1;
	g_solo = nusers;
	g_done.done_ns = calloc(g_nslots, sizeof(uint64_t));
	pthread_condattr_t ca;
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&g_done.cv, &ca);
	if (!g_done.done_ns)
		die("out of memory");
	unsigned warnings = 0, resumes = 0, drops = 0;
#define TALLY(p)                                                                        \
	do {                                                                            \
		warnings += atomic_load(&(p)->a.warnings) + atomic_load(&(p)->b.warnings); \
		resumes += atomic_load(&(p)->a.resumes) + atomic_load(&(p)->b.resumes);    \
		drops += atomic_load(&(p)->a.drops) + atomic_load(&(p)->b.drops);          \
	} while (0)

	/* a: one user, each engine on its own dispatch thread. */
	pair *p = pair_new();
	add_point("fresh engine", p);
	single_result st;
	single_summary sst;
	run_single(p, MODE_THREADS, iterations, &st);
	summarise_single(&st, &sst);
	print_single("[a] single user; each engine dispatched by its own thread (mig_engine_run)",
		     &st, &sst);
	add_point("after [a]", p);
	TALLY(p);
	pair_free(p);

	/* a2: one thread polling both engines. */
	p = pair_new();
	single_result s1;
	single_summary ss1;
	run_single(p, MODE_ONE_THREAD, iterations, &s1);
	summarise_single(&s1, &ss1);
	print_single("[a2] single user; one thread polls both engines' fds (mig_engine_dispatch)",
		     &s1, &ss1);
	TALLY(p);
	pair_free(p);

	/* b: batch, each engine on its own dispatch thread. */
	p = pair_new();
	uint8_t **expect = calloc(nusers, sizeof(*expect));
	if (!expect)
		die("out of memory");
	for (size_t i = 0; i < nusers; i++) {
		app_add_user(&p->a, i, 1000 + i);
		expect[i] = malloc(STATE_BYTES);
		if (!expect[i])
			die("out of memory");
		memcpy(expect[i], p->a.slots[i].data, STATE_BYTES);
	}
	static batch_dir dirs[2 * MAX_ROUNDS];
	static char where[2 * MAX_ROUNDS][48];
	for (size_t r = 0; r < 2 * rounds; r++) {
		app *from = r % 2 ? &p->b : &p->a, *to = r % 2 ? &p->a : &p->b;
		threads_start(&p->a);
		threads_start(&p->b);
		run_batch_dir(from, to, nusers, expect, &dirs[r]);
		threads_stop(&p->a);
		threads_stop(&p->b);
		p->migrations += nusers;
		snprintf(where[r], sizeof(where[r]), "after [b] %s -> %s #%zu", from->name,
			 to->name, r / 2 + 1);
		add_point(where[r], p);
	}
	printf("\n[b] batch: %zu users x %d B started at once (mig_migrate x %zu, then wait);\n"
	       "    each engine dispatched by its own thread\n",
	       nusers, STATE_BYTES, nusers);
	printf("  %-12s %9s %12s %9s %9s %9s %8s %11s\n", "", "wall ms", "migrations/s",
	       "done p50", "done p99", "issue ms", "cpu s", "maxrss KiB");
	for (size_t r = 0; r < 2 * rounds; r++) {
		char label[32];
		snprintf(label, sizeof(label), "%s #%zu", r % 2 ? "B -> A" : "A -> B", r / 2 + 1);
		printf("  %-12s %9.1f %12.0f %9.1f %9.1f %9.1f %8.3f %11ld\n", label,
		       dirs[r].wall_s * 1e3, dirs[r].per_s, dirs[r].done.p50 / 1e3,
		       dirs[r].done.p99 / 1e3, dirs[r].issue_ms, dirs[r].cpu_s,
		       dirs[r].maxrss_after_kb);
	}
	printf("  done pXX: ms from the first mig_migrate() to each COMMITTED event; issue: the\n"
	       "  mig_migrate() loop; cpu: user+sys of the whole process; maxrss before: %ld KiB\n",
	       dirs[0].maxrss_before_kb);

	/* a3: the single-user test again, on the engines the batch aged. */
	size_t n3 = iterations / 4 >= MIN_ITERATIONS ? iterations / 4 : MIN_ITERATIONS;
	single_result s3;
	single_summary ss3;
	uint64_t aged = p->migrations;
	run_single(p, MODE_THREADS, n3, &s3);
	summarise_single(&s3, &ss3);
	char title3[200];
	snprintf(title3, sizeof(title3),
		 "[a3] as [a], on the engines of [b] (remembering %" PRIu64
		 " finished migrations)",
		 aged < OUTCOME_MAX ? aged : (uint64_t)OUTCOME_MAX);
	print_single(title3, &s3, &ss3);
	add_point("after [a3]", p);
	TALLY(p);
	pair_free(p);

	/* c: baselines. */
	uint64_t *ws = calloc(iterations, sizeof(uint64_t));
	uint64_t *tcp = calloc(iterations, sizeof(uint64_t));
	if (!ws || !tcp)
		die("out of memory");
	run_ws_echo(iterations, ws);
	run_tcp_echo(iterations, tcp);
	stats sws = summarise(ws, iterations), stcp = summarise(tcp, iterations);
	printf("\n[c] baselines, %d-byte binary echo, one in flight, %zu round trips each\n",
	       STATE_BYTES, iterations);
	print_header();
	print_row("WebSocket (lws server + client ctx)", &sws);
	print_row("TCP (socket + poll)", &stcp);
	double ratio = sws.p50 > 0 ? sst.total.p50 / sws.p50 : 0;
	double ratio1 = sws.p50 > 0 ? ss1.total.p50 / sws.p50 : 0;
	printf("  migration p50 / WebSocket RTT p50: %.1f ([a]), %.1f ([a2]); a light migration\n"
	       "  is 3 round trips (BEGIN/ACCEPT, PREPARE/PREPARED, COMMIT/COMMITTED)\n",
	       ratio, ratio1);

	printf("\n[d] one idle mig_engine_dispatch() (nothing to do) on engine A, median of 201\n");
	printf("  %-28s %12s %10s\n", "when", "remembered", "us");
	for (size_t i = 0; i < g_npoints; i++)
		printf("  %-28s %12" PRIu64 " %10.1f\n", g_points[i].where, g_points[i].remembered,
		       g_points[i].us);

	double run_s = (double)(now_ns() - run_t0) / 1e9;
	printf("\nchecks: every migration committed and verified; resumes %u, drops %u, "
	       "library warnings %u; run %.1f s\n",
	       resumes, drops, warnings, run_s);

	bool met_p50 = sst.total.p50 <= 1000, met_p99 = sst.total.p99 <= 3000;
	bool met_batch = dirs[0].wall_s <= 1.0 && dirs[1].wall_s <= 1.0;
	printf("targets ([a], [b] #1): single p50 <= 1 ms: %s (%.0f us); single p99 <= 3 ms: "
	       "%s (%.0f us);\n  %zu users <= 1 s: %s (%.0f / %.0f ms)\n",
	       met_p50 ? "met" : "MISSED", sst.total.p50, met_p99 ? "met" : "MISSED",
	       sst.total.p99, nusers, met_batch ? "met" : "MISSED", dirs[0].wall_s * 1e3,
	       dirs[1].wall_s * 1e3);

	if (json_path) {
		FILE *f = fopen(json_path, "w");
		if (!f)
			die("cannot write %s: %s", json_path, strerror(errno));
		fprintf(f, "{\n  \"libmigrate\": ");
		json_str(f, mig_version());
		fprintf(f, ",\n  \"libwebsockets\": ");
		json_str(f, lws_get_library_version());
		fprintf(f, ",\n  \"machine\": {\"nproc\": %ld, \"cpu\": ", ncpu);
		json_str(f, cpu);
		fprintf(f, ", \"kernel\": ");
		json_str(f, un.release);
		fprintf(f, ", \"loadavg_start\": ");
		json_str(f, load);
		fprintf(f, "},\n  \"state_bytes\": %d,\n  \"iterations\": %zu,\n  \"warmup\": %d,\n",
			STATE_BYTES, iterations, WARMUP);
		json_single(f, "single_threads", &st, &sst);
		json_single(f, "single_one_thread", &s1, &ss1);
		json_single(f, "single_threads_aged", &s3, &ss3);
		fprintf(f, "  \"batch\": {\"users\": %zu, \"runs\": [", nusers);
		for (size_t r = 0; r < 2 * rounds; r++) {
			fprintf(f,
				"%s\n    {\"direction\": \"%s\", \"round\": %zu, \"wall_ms\": %.1f, "
				"\"migrations_per_s\": %.0f, \"issue_ms\": %.1f, \"cpu_s\": %.3f, "
				"\"maxrss_before_kb\": %ld, \"maxrss_after_kb\": %ld, \"done\": ",
				r ? "," : "", r % 2 ? "b_to_a" : "a_to_b", r / 2 + 1,
				dirs[r].wall_s * 1e3, dirs[r].per_s, dirs[r].issue_ms, dirs[r].cpu_s,
				dirs[r].maxrss_before_kb, dirs[r].maxrss_after_kb);
			json_stats(f, &dirs[r].done);
			fprintf(f, "}");
		}
		fprintf(f, "\n  ]},\n  \"ws_rtt\": ");
		json_stats(f, &sws);
		fprintf(f, ",\n  \"tcp_rtt\": ");
		json_stats(f, &stcp);
		fprintf(f, ",\n  \"idle_dispatch\": [");
		for (size_t i = 0; i < g_npoints; i++) {
			fprintf(f, "%s\n    {\"when\": ", i ? "," : "");
			json_str(f, g_points[i].where);
			fprintf(f, ", \"remembered\": %" PRIu64 ", \"us\": %.1f}",
				g_points[i].remembered, g_points[i].us);
		}
		fprintf(f,
			"\n  ],\n  \"ratio_migration_p50_to_ws_rtt_p50\": %.2f,\n"
			"  \"ratio_one_thread_p50_to_ws_rtt_p50\": %.2f,\n"
			"  \"library_warnings\": %u,\n  \"resumes\": %u,\n  \"drops\": %u,\n"
			"  \"run_seconds\": %.1f,\n"
			"  \"targets\": {\"single_p50_le_1ms\": %s, \"single_p99_le_3ms\": %s, "
			"\"batch_le_1s\": %s}\n}\n",
			ratio, ratio1, warnings, resumes, drops, run_s, met_p50 ? "true" : "false",
			met_p99 ? "true" : "false", met_batch ? "true" : "false");
		if (fclose(f) != 0)
			die("cannot write %s", json_path);
	}

	single_free(&st);
	single_free(&s1);
	single_free(&s3);
	for (size_t i = 0; i < nusers; i++)
		free(expect[i]);
	free(expect);
	free(ws);
	free(tcp);
	free(g_done.done_ns);
	return resumes || drops ? 1 : 0;
}
