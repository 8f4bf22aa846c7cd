/* bench_session: how long a client is without an engine when its user
 * migrates. Time from COMMIT (the source decides it) to the client's attach
 * accepted at the destination, over N redirects (A->B, B->A, ...), next to
 * one raw WebSocket round trip and one new WebSocket connection + round trip
 * measured in the same run. See docs/BENCHMARKS.md.
 *
 *   bench_session [--iterations N] [--rtt-iterations N]
 *
 * Two engines in this process, each dispatched by its own thread with
 * mig_engine_run() (as two servers would); the reconnect helper
 * (<migrate/client.h>) on a third thread, polling mig_client_fd(). Timestamps
 * come from the callbacks: the source's PREPARED event (emitted as COMMIT is
 * decided, just before COMMIT is sent), its COMMITTED event, and the
 * client's REDIRECTED and ATTACHED states. "Attach accepted" is when the
 * client hears the acceptance, half a round trip after the destination sent
 * it. Links only the public library (plus libwebsockets for the baseline).
 * Bounded: every wait has a deadline and a watchdog ends the process. */
#include <errno.h>
#include <inttypes.h>
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
#include <time.h>
#include <unistd.h>

#include <libwebsockets.h>

#include <migrate/client.h>
#include <migrate/migrate.h>

#define DEFAULT_ITERATIONS 400
#define MIN_ITERATIONS 200
#define DEFAULT_RTT_ITERATIONS 2000
#define WARMUP 10
#define WATCHDOG_S 240
#define STEP_TIMEOUT_NS (5ull * 1000000000u)
#define STATE_BYTES 1024
#define ECHO_BYTES 256 /* about a Redirect frame */
#define USER "bench-user"

static const char SECRET[] = "bench-cluster-secret-0123456789abcdef";

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
	fprintf(stderr, "bench_session: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

static void on_alarm(int sig)
{
	(void)sig;
	static const char msg[] = "bench_session: watchdog: still running, giving up\n";
	ssize_t n = write(2, msg, sizeof(msg) - 1);
	(void)n;
	_exit(2);
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

typedef struct stats {
	double p50, p99, min, max, mean; /* microseconds */
} stats;

static stats summarize(uint64_t *ns, size_t n)
{
	stats s = {0};
	if (!n)
		return s;
	qsort(ns, n, sizeof(*ns), cmp_u64);
	double sum = 0;
	for (size_t i = 0; i < n; i++)
		sum += (double)ns[i];
	s.min = (double)ns[0] / 1000.0;
	s.max = (double)ns[n - 1] / 1000.0;
	s.p50 = (double)ns[n / 2] / 1000.0;
	size_t k = (size_t)((double)n * 0.99);
	s.p99 = (double)ns[k < n ? k : n - 1] / 1000.0;
	s.mean = sum / (double)n / 1000.0;
	return s;
}

static void print_row(const char *what, stats s)
{
	printf("  %-44s p50 %9.1f  p99 %9.1f  mean %9.1f  min %9.1f  max %9.1f us\n", what, s.p50,
	       s.p99, s.mean, s.min, s.max);
}

/* ------------------------------------------------------------------ the app */

static uint8_t g_state[STATE_BYTES];

static int extract(mig_engine *e, const char *user, mig_buf *out, void *ud)
{
	(void)e;
	(void)user;
	(void)ud;
	return mig_buf_append(out, g_state, sizeof(g_state));
}

static int merge(mig_engine *e, const char *user, uint32_t v, const void *d, size_t n, void *ud)
{
	(void)e;
	(void)user;
	(void)v;
	(void)ud;
	return n == sizeof(g_state) && memcmp(d, g_state, n) == 0 ? 0 : -1;
}

static _Atomic uint64_t g_t_commit, g_t_committed, g_t_redirect, g_t_attached;
static atomic_uint g_attached;
static atomic_bool g_failed;
static pthread_mutex_t g_detail_lock = PTHREAD_MUTEX_INITIALIZER;
static char g_attached_detail[256];
static char g_redirect_app[256];

static void on_event(mig_engine *e, const mig_event *ev, void *ud)
{
	(void)e;
	(void)ud;
	if (ev->type == MIG_EVENT_PREPARED)
		atomic_store(&g_t_commit, now_ns());
	else if (ev->type == MIG_EVENT_COMMITTED)
		atomic_store(&g_t_committed, now_ns());
}

static void on_state(mig_client *c, mig_client_state st, int error, const char *detail, void *ud)
{
	(void)c;
	(void)ud;
	uint64_t t = now_ns();
	if (st == MIG_CLIENT_REDIRECTED) {
		atomic_store(&g_t_redirect, t);
	} else if (st == MIG_CLIENT_ATTACHED) {
		atomic_store(&g_t_attached, t);
		pthread_mutex_lock(&g_detail_lock);
		snprintf(g_attached_detail, sizeof(g_attached_detail), "%s", detail);
		pthread_mutex_unlock(&g_detail_lock);
		atomic_fetch_add(&g_attached, 1);
	} else if (st == MIG_CLIENT_FAILED || st == MIG_CLIENT_BACKING_OFF) {
		fprintf(stderr, "bench_session: client %s: %s (%s)\n", mig_client_state_name(st),
			detail, mig_err_name(error));
		atomic_store(&g_failed, true);
	}
}

static void on_redirect(mig_client *c, const mig_client_redirect *r, void *ud)
{
	(void)c;
	(void)ud;
	pthread_mutex_lock(&g_detail_lock);
	snprintf(g_redirect_app, sizeof(g_redirect_app), "%s", r->app_url);
	pthread_mutex_unlock(&g_detail_lock);
}

static mig_engine *engine_new(const char *id, const char *app_url)
{
	mig_engine_options o;
	memset(&o, 0, sizeof(o));
	o.engine_id = id;
	o.secret = SECRET;
	o.secret_len = sizeof(SECRET) - 1;
	o.app_url = app_url;
	o.on_event = on_event;
	mig_engine *e = NULL;
	if (mig_engine_new(&e, &o) != 0)
		die("mig_engine_new failed");
	mig_light_domain d = {"state", "bench.State", 1, extract, merge};
	if (mig_light_domain_register(e, &d, NULL) != 0)
		die("domain registration failed");
	if (mig_engine_start(e) != 0)
		die("mig_engine_start: %s", mig_engine_last_error(e));
	return e;
}

struct runner {
	mig_engine *e;
	mig_client *c;
	pthread_t th;
	atomic_bool stop;
};

static void *engine_main(void *arg)
{
	struct runner *r = arg;
	while (!atomic_load(&r->stop))
		mig_engine_run(r->e, 50);
	return NULL;
}

static void *client_main(void *arg)
{
	struct runner *r = arg;
	while (!atomic_load(&r->stop)) {
		struct pollfd p = {mig_client_fd(r->c), POLLIN, 0};
		poll(&p, 1, 20);
		mig_client_dispatch(r->c);
	}
	return NULL;
}

static bool migration_done(mig_migration *m, uint64_t deadline)
{
	for (;;) {
		mig_migration_stats s;
		if (mig_migration_info(m, &s) == 0 && s.state != MIG_MIGRATION_RUNNING)
			return s.state == MIG_MIGRATION_COMMITTED;
		if (now_ns() > deadline)
			return false;
		usleep(50);
	}
}

static void run_redirects(size_t n, uint64_t *total, uint64_t *to_committed,
			  uint64_t *to_redirect, uint64_t *to_attached)
{
	memset(g_state, 0x5a, sizeof(g_state));
	mig_engine *a = engine_new("engine-a", "tcp://app-a.bench:9000");
	mig_engine *b = engine_new("engine-b", "tcp://app-b.bench:9000");
	if (mig_user_add(a, USER) != 0)
		die("mig_user_add failed");
	struct runner ra = {.e = a}, rb = {.e = b};
	if (pthread_create(&ra.th, NULL, engine_main, &ra) || pthread_create(&rb.th, NULL, engine_main, &rb))
		die("pthread_create failed");

	char token[MIG_SESSION_TOKEN_MAX];
	if (mig_session_token(a, USER, token, sizeof(token)) != 0)
		die("mig_session_token: %s", mig_engine_last_error(a));
	mig_client_options co;
	memset(&co, 0, sizeof(co));
	co.url = mig_engine_url(a);
	co.token = token;
	co.user = USER;
	co.on_state = on_state;
	co.on_redirect = on_redirect;
	mig_client *c = NULL;
	if (mig_client_new(&c, &co) != 0)
		die("mig_client_new failed");
	struct runner rc = {.c = c};
	if (pthread_create(&rc.th, NULL, client_main, &rc))
		die("pthread_create failed");
	uint64_t deadline = now_ns() + STEP_TIMEOUT_NS;
	while (atomic_load(&g_attached) < 1)
		if (now_ns() > deadline || atomic_load(&g_failed))
			die("the client did not attach to engine-a");
		else
			usleep(100);

	mig_engine *engines[2] = {a, b};
	const char *ids[2] = {"engine-a", "engine-b"};
	for (size_t i = 0; i < WARMUP + n; i++) {
		int src = (int)(i % 2), dst = 1 - src;
		unsigned before = atomic_load(&g_attached);
		mig_migration *m = NULL;
		int rc2 = mig_migrate(engines[src], USER, mig_engine_url(engines[dst]), &m);
		if (rc2)
			die("mig_migrate %zu: %s: %s", i, mig_err_name(rc2),
			    mig_engine_last_error(engines[src]));
		deadline = now_ns() + STEP_TIMEOUT_NS;
		if (!migration_done(m, deadline))
			die("migration %zu did not commit", i);
		mig_migration_free(m);
		while (atomic_load(&g_attached) == before) {
			if (now_ns() > deadline || atomic_load(&g_failed))
				die("redirect %zu: the client did not attach to %s", i, ids[dst]);
			usleep(20);
		}
		pthread_mutex_lock(&g_detail_lock);
		bool right = strncmp(g_attached_detail, ids[dst], strlen(ids[dst])) == 0 &&
			     strstr(g_redirect_app, dst ? "app-b" : "app-a");
		pthread_mutex_unlock(&g_detail_lock);
		if (!right)
			die("redirect %zu: attached as \"%s\", want %s", i, g_attached_detail,
			    ids[dst]);
		if (i < WARMUP)
			continue;
		uint64_t t0 = atomic_load(&g_t_commit), t1 = atomic_load(&g_t_committed),
			 t2 = atomic_load(&g_t_redirect), t3 = atomic_load(&g_t_attached);
		/* The redirect goes out before the source's COMMITTED event
		 * is delivered (that waits for the release hook), so t1 may
		 * come after t2. */
		if (!(t0 <= t1 && t0 <= t2 && t2 <= t3))
			die("redirect %zu: timestamps out of order", i);
		size_t k = i - WARMUP;
		total[k] = t3 - t0;
		to_committed[k] = t1 - t0;
		to_redirect[k] = t2 - t0;
		to_attached[k] = t3 - t2;
	}
	atomic_store(&rc.stop, true);
	pthread_join(rc.th, NULL);
	mig_client_free(c);
	atomic_store(&ra.stop, true);
	atomic_store(&rb.stop, true);
	mig_engine_stop(a);
	mig_engine_stop(b);
	pthread_join(ra.th, NULL);
	pthread_join(rb.th, NULL);
	mig_engine_free(a);
	mig_engine_free(b);
}

/* ------------------------------------------------------------------ baselines */

#define ECHO_MAX 4096

typedef struct echo_pss {
	size_t len;
	uint8_t buf[LWS_PRE + ECHO_MAX];
} echo_pss;

typedef struct echo_client {
	bool reconnect; /* a new connection per round trip */
	size_t target, count;
	uint64_t t_start; /* send (or connect) time */
	uint64_t *rtt;
	uint8_t tx[LWS_PRE + ECHO_BYTES];
	size_t rx_len;
	bool done, failed, closed;
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
		memset(c->tx + LWS_PRE, (int)(c->count & 0xff), ECHO_BYTES);
		c->rx_len = 0;
		if (!c->reconnect)
			c->t_start = now_ns();
		if (lws_write(wsi, c->tx + LWS_PRE, ECHO_BYTES, LWS_WRITE_BINARY) < ECHO_BYTES) {
			c->failed = c->done = true;
			snprintf(c->why, sizeof(c->why), "lws_write failed");
			return -1;
		}
		return 0;
	case LWS_CALLBACK_CLIENT_RECEIVE:
		c->rx_len += len;
		if (!lws_is_final_fragment(wsi) || lws_remaining_packet_payload(wsi))
			return 0;
		if (c->rx_len != ECHO_BYTES) {
			c->failed = c->done = true;
			snprintf(c->why, sizeof(c->why), "echo of the wrong size");
			return -1;
		}
		if (c->count >= WARMUP)
			c->rtt[c->count - WARMUP] = now_ns() - c->t_start;
		c->count++;
		if (c->count >= c->target)
			c->done = true;
		if (c->reconnect)
			return -1; /* close; the loop opens the next one */
		if (!c->done)
			lws_callback_on_writable(wsi);
		return 0;
	case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
		c->failed = c->done = true;
		snprintf(c->why, sizeof(c->why), "cannot connect: %s", in ? (const char *)in : "?");
		return 0;
	case LWS_CALLBACK_CLIENT_CLOSED:
		c->closed = true;
		if (!c->done && !c->reconnect) {
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

/* `n` WebSocket round trips of ECHO_BYTES on one connection, or (reconnect)
 * each on a new connection timed from the connect call; fills rtt (ns). */
static void run_ws_echo(size_t n, bool reconnect, uint64_t *rtt)
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
	c->reconnect = reconnect;
	c->target = WARMUP + n;
	c->rtt = rtt;
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
	uint64_t end = now_ns() + 60ull * 1000000000u;
	while (!c->done && now_ns() < end) {
		struct lws_client_connect_info ci;
		memset(&ci, 0, sizeof(ci));
		ci.context = cctx;
		ci.address = "127.0.0.1";
		ci.port = port;
		ci.path = "/";
		ci.host = "127.0.0.1";
		ci.origin = "127.0.0.1";
		ci.protocol = "bench-echo";
		c->closed = false;
		c->t_start = now_ns();
		if (!lws_client_connect_via_info(&ci))
			die("ws echo: cannot start connecting");
		while (!c->closed && !(c->done && !reconnect) && now_ns() < end)
			if (lws_service(cctx, 0) < 0)
				break;
		if (!reconnect)
			break;
	}
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

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv)
{
	size_t iterations = DEFAULT_ITERATIONS, rtt_iterations = DEFAULT_RTT_ITERATIONS;
	for (int i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--iterations") == 0 && i + 1 < argc)
			iterations = (size_t)strtoul(argv[++i], NULL, 10);
		else if (strcmp(argv[i], "--rtt-iterations") == 0 && i + 1 < argc)
			rtt_iterations = (size_t)strtoul(argv[++i], NULL, 10);
		else
			die("usage: bench_session [--iterations N (>= %d)] [--rtt-iterations N]",
			    MIN_ITERATIONS);
	}
	if (iterations < MIN_ITERATIONS)
		iterations = MIN_ITERATIONS;
	if (rtt_iterations < 100)
		rtt_iterations = 100;
	signal(SIGALRM, on_alarm);
	alarm(WATCHDOG_S);
	signal(SIGPIPE, SIG_IGN);

	uint64_t *total = calloc(iterations, sizeof(uint64_t));
	uint64_t *t_committed = calloc(iterations, sizeof(uint64_t));
	uint64_t *t_redirect = calloc(iterations, sizeof(uint64_t));
	uint64_t *t_attached = calloc(iterations, sizeof(uint64_t));
	uint64_t *rtt = calloc(rtt_iterations, sizeof(uint64_t));
	uint64_t *conn_rtt = calloc(iterations, sizeof(uint64_t));
	if (!total || !t_committed || !t_redirect || !t_attached || !rtt || !conn_rtt)
		die("out of memory");

	printf("bench_session: libmigrate %s, libwebsockets %s, %zu redirects (+%d warm-up)\n",
	       mig_version(), lws_get_library_version(), iterations, WARMUP);
	run_ws_echo(rtt_iterations, false, rtt);
	run_ws_echo(iterations, true, conn_rtt);
	run_redirects(iterations, total, t_committed, t_redirect, t_attached);

	stats s_rtt = summarize(rtt, rtt_iterations);
	stats s_conn = summarize(conn_rtt, iterations);
	stats s_total = summarize(total, iterations);
	printf("\nbaselines (%d-byte binary echo, loopback, same process):\n", ECHO_BYTES);
	print_row("WebSocket round trip", s_rtt);
	print_row("new WebSocket connection + round trip", s_conn);
	printf("\nCOMMIT -> client attached at the destination (%zu redirects, A->B, B->A, ...):\n",
	       iterations);
	print_row("total", s_total);
	print_row("  COMMIT -> redirect handled by the client", summarize(t_redirect, iterations));
	print_row("  redirect -> attach accepted (new conn.)",
		  summarize(t_attached, iterations));
	print_row("  (COMMIT -> COMMITTED event at the source)", summarize(t_committed, iterations));
	double target = s_rtt.p50 + 5000.0;
	printf("\ntarget: <= 1 RTT + 5 ms = %.1f us: p50 %.1f us %s, p99 %.1f us %s\n", target,
	       s_total.p50, s_total.p50 <= target ? "MET" : "MISSED", s_total.p99,
	       s_total.p99 <= target ? "MET" : "MISSED");
	free(total);
	free(t_committed);
	free(t_redirect);
	free(t_attached);
	free(rtt);
	free(conn_rtt);
	return s_total.p50 <= target ? 0 : 3;
}
