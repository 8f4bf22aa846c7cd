/* fault_server: one engine of the process-level fault matrix (see
 * fault_matrix.py and docs/RELIABILITY.md, "Fault matrix").
 *
 * A small server that links the internal static library. It serves one user
 * whose light state (512 bytes) changes every 10 ms while it is served and,
 * with --files, whose files (ROOT/<user>/: a 1 MiB file rewritten in 4 KiB
 * blocks, an appended log, a nested file) change every 50 ms while served.
 *
 *   fault_server --name A --port P --advertise URL --root DIR --user U
 *                [--serve] [--files] [--peer-timeout MS] [--stop-at POINT]
 *   fault_server --client --url URL --token TOKEN --user U
 *
 * Stop points. With --stop-at, the process stops itself (SIGSTOP on the
 * whole process) the first time it reaches POINT, after printing
 * "AT POINT"; the driver then kills, cuts or keeps it stopped. Points on
 * frames are caught by wrapping the library's send functions at link time
 * (-Wl,--wrap=mig__engine_send,--wrap=mig__xfer_send): "before" points stop
 * before the frame is handed to the transport, "after" points hand it over,
 * give the I/O thread FLUSH_MS to put it on the wire and stop with the
 * handoff state frozen right after the send. Points on hooks stop inside
 * the hook. The engine's dispatch is blocked while stopped either way, so
 * the process's handoff state is exactly the one at the point.
 *
 * stdout, one line each (the driver parses them):
 *   READY url=... port=... pid=...
 *   EV <t_us> <what> [light=<hex>] [files=<hex>] [key=value...]
 *       t_us is CLOCK_MONOTONIC (comparable across processes); <what> is an
 *       app hook (serve pause resume release incoming merge activate drop),
 *       an engine event (event=...), or "reached-prepared" (the destination
 *       entered PREPARED: it holds a copy the protocol must not lose)
 *   AT <point> <t_us> / CONT <point> <t_us>
 *   STATUS state=... inflight=... phases=... present=.. serving=.. light=.. files=..
 *   TOKEN <token> / MIGRATE rc=<n>
 * stdin commands: status, token, migrate <url>, quit. EOF quits.
 * Library logs go to stderr. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "engine_int.h"
#include "migrate/client.h"

#define SECRET "fault-matrix-cluster-secret-0123456789"
#define LIGHT_LEN 512
#define BIG_LEN (1024 * 1024)
#define BLOCK 4096
#define TICK_MS 10
#define FILE_EVERY 5   /* file changes every 5 ticks (50 ms) */
#define FLUSH_MS 60    /* "after" points: time for the frame to leave */

/* ------------------------------------------------------------------ output */

static pthread_mutex_t out_lock = PTHREAD_MUTEX_INITIALIZER;

static uint64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void out(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void out(const char *fmt, ...)
{
	va_list ap;
	pthread_mutex_lock(&out_lock);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
	pthread_mutex_unlock(&out_lock);
}

static void hex16(const uint8_t *d, char *o)
{
	for (int i = 0; i < 8; i++)
		sprintf(o + 2 * i, "%02x", d[i]);
}

/* ------------------------------------------------------------------ the app */

static struct app {
	const char *name;
	const char *user;
	char root[4096]; /* the file domain's root ("" without --files) */
	int present;     /* the app holds the user's state */
	int serving;     /* it advances it */
	uint64_t ticks;  /* ticks served (part of the light state) */
	uint8_t light[LIGHT_LEN];
	mig_engine *engine;
} app;

static void light_digest(char o[17])
{
	if (!app.present) {
		strcpy(o, "none");
		return;
	}
	uint8_t d[EVP_MAX_MD_SIZE];
	unsigned n = 0;
	EVP_Digest(app.light, sizeof(app.light), d, &n, EVP_sha256(), NULL);
	hex16(d, o);
}

struct flist {
	char **v;
	size_t n, cap;
};

static void walk(const char *dir, const char *rel, struct flist *l)
{
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		char path[8192], r[4096];
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		snprintf(r, sizeof(r), "%s%s%s", rel, *rel ? "/" : "", de->d_name);
		struct stat st;
		if (lstat(path, &st))
			continue;
		if (S_ISDIR(st.st_mode)) {
			walk(path, r, l);
		} else {
			if (l->n == l->cap) {
				l->cap = l->cap ? 2 * l->cap : 16;
				l->v = realloc(l->v, l->cap * sizeof(*l->v));
			}
			l->v[l->n++] = strdup(r);
		}
	}
	closedir(d);
}

static int cmpstr(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* SHA-256 over the sorted relative paths, sizes and contents of
 * ROOT/<user>/; "none" if there is no such folder, "-" without files. */
static void files_digest(char o[17])
{
	if (!app.root[0]) {
		strcpy(o, "-");
		return;
	}
	char dir[8192];
	snprintf(dir, sizeof(dir), "%s/%s", app.root, app.user);
	struct stat st;
	if (stat(dir, &st) || !S_ISDIR(st.st_mode)) {
		strcpy(o, "none");
		return;
	}
	struct flist l = {0};
	walk(dir, "", &l);
	qsort(l.v, l.n, sizeof(*l.v), cmpstr);
	EVP_MD_CTX *h = EVP_MD_CTX_new();
	EVP_DigestInit_ex(h, EVP_sha256(), NULL);
	static uint8_t buf[65536];
	for (size_t i = 0; i < l.n; i++) {
		char path[16384];
		snprintf(path, sizeof(path), "%s/%s", dir, l.v[i]);
		EVP_DigestUpdate(h, l.v[i], strlen(l.v[i]) + 1);
		int fd = open(path, O_RDONLY);
		if (fd >= 0) {
			ssize_t k;
			uint64_t total = 0;
			while ((k = read(fd, buf, sizeof(buf))) > 0) {
				EVP_DigestUpdate(h, buf, (size_t)k);
				total += (uint64_t)k;
			}
			close(fd);
			EVP_DigestUpdate(h, &total, sizeof(total));
		}
		free(l.v[i]);
	}
	free(l.v);
	uint8_t d[EVP_MAX_MD_SIZE];
	unsigned n = 0;
	EVP_DigestFinal_ex(h, d, &n);
	EVP_MD_CTX_free(h);
	hex16(d, o);
}

static void ev(const char *what, int with_state, const char *extra)
{
	char l[17] = "", f[17] = "";
	if (with_state) {
		light_digest(l);
		files_digest(f);
		out("EV %" PRIu64 " %s light=%s files=%s ticks=%" PRIu64 "%s%s", mono_us(), what, l,
		    f, app.ticks, extra ? " " : "", extra ? extra : "");
	} else {
		out("EV %" PRIu64 " %s%s%s", mono_us(), what, extra ? " " : "", extra ? extra : "");
	}
}

static int write_file(const char *path, const void *data, size_t len, int flags)
{
	int fd = open(path, O_WRONLY | O_CREAT | flags, 0644);
	if (fd < 0)
		return -1;
	ssize_t w = write(fd, data, len);
	close(fd);
	return w == (ssize_t)len ? 0 : -1;
}

static void create_files(void)
{
	char dir[8192], p[8300];
	snprintf(dir, sizeof(dir), "%s/%s", app.root, app.user);
	mkdir(dir, 0755);
	snprintf(p, sizeof(p), "%s/sub", dir);
	mkdir(p, 0755);
	uint8_t *big = malloc(BIG_LEN);
	uint32_t x = 2463534242u;
	for (size_t i = 0; i < BIG_LEN; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		big[i] = (uint8_t)x;
	}
	snprintf(p, sizeof(p), "%s/big.bin", dir);
	write_file(p, big, BIG_LEN, O_TRUNC);
	free(big);
	snprintf(p, sizeof(p), "%s/log.txt", dir);
	write_file(p, "start\n", 6, O_TRUNC);
	snprintf(p, sizeof(p), "%s/sub/state.txt", dir);
	write_file(p, "0\n", 2, O_TRUNC);
}

/* The application's work while it serves the user. */
static void serve_tick(void)
{
	app.ticks++;
	uint64_t t = app.ticks;
	memcpy(app.light, &t, sizeof(t));
	app.light[8 + (t * 37) % (LIGHT_LEN - 8)] ^= (uint8_t)(t * 31 + 7);
	if (!app.root[0] || t % FILE_EVERY)
		return;
	char dir[8192], p[8300], line[64];
	snprintf(dir, sizeof(dir), "%s/%s", app.root, app.user);
	int n = snprintf(line, sizeof(line), "%s tick %" PRIu64 "\n", app.name, t);
	snprintf(p, sizeof(p), "%s/log.txt", dir);
	write_file(p, line, (size_t)n, O_APPEND);
	uint8_t blk[BLOCK];
	memset(blk, (int)(t & 0xff), sizeof(blk));
	memcpy(blk, &t, sizeof(t));
	snprintf(p, sizeof(p), "%s/big.bin", dir);
	int fd = open(p, O_WRONLY);
	if (fd >= 0) {
		off_t off = (off_t)((t * 7919) % (BIG_LEN / BLOCK)) * BLOCK;
		if (pwrite(fd, blk, sizeof(blk), off) != (ssize_t)sizeof(blk))
			fprintf(stderr, "%s: pwrite failed\n", app.name);
		close(fd);
	}
	snprintf(p, sizeof(p), "%s/sub/state.txt", dir);
	n = snprintf(line, sizeof(line), "%" PRIu64 "\n", t);
	write_file(p, line, (size_t)n, O_TRUNC);
}

/* ------------------------------------------------------------------ stop points */

static const char *stop_at; /* armed point, NULL once fired */

static void stop_here(const char *point)
{
	out("AT %s %" PRIu64, point, mono_us());
	kill(getpid(), SIGSTOP);
	out("CONT %s %" PRIu64, point, mono_us());
}

static int armed(const char *point)
{
	return stop_at && strcmp(stop_at, point) == 0;
}

static void maybe_stop(const char *point)
{
	if (armed(point)) {
		stop_at = NULL;
		stop_here(point);
	}
}

static void maybe_stop_after(const char *point)
{
	if (armed(point)) {
		stop_at = NULL;
		struct timespec ts = {0, FLUSH_MS * 1000000L};
		nanosleep(&ts, NULL);
		stop_here(point);
	}
}

int __real_mig__engine_send(mig_engine *e, uint64_t conn, const mig__frame *f,
			    struct mig_migration *m, bool close_after);
int __wrap_mig__engine_send(mig_engine *e, uint64_t conn, const mig__frame *f,
			    struct mig_migration *m, bool close_after);
struct mig__xfer;
int __real_mig__xfer_send(struct mig__xfer *x, const mig__frame *f);
int __wrap_mig__xfer_send(struct mig__xfer *x, const mig__frame *f);

/* Every frame of the engines' handoff and session channel goes out here. */
int __wrap_mig__engine_send(mig_engine *e, uint64_t conn, const mig__frame *f,
			    struct mig_migration *m, bool close_after)
{
	const char *before = NULL, *after = NULL;
	switch (f->body_case) {
	case MIGWIRE__FRAME__BODY_BEGIN:
		before = "begin";
		break;
	case MIGWIRE__FRAME__BODY_ACCEPT:
		before = "accept";
		after = "accepted";
		break;
	case MIGWIRE__FRAME__BODY_PREPARE:
		before = "prepare";
		after = "prepare-sent";
		break;
	case MIGWIRE__FRAME__BODY_PREPARED:
		if (m && !m->outgoing && m->phase == MIG__DST_PREPARED) {
			char extra[64];
			snprintf(extra, sizeof(extra), "mid=%s", m->mid);
			ev("reached-prepared", 0, extra);
		}
		before = "prepared";
		after = "prepared-sent";
		break;
	case MIGWIRE__FRAME__BODY_COMMIT:
		before = "commit";
		after = "commit-sent";
		break;
	case MIGWIRE__FRAME__BODY_COMMITTED:
		before = "committed";
		after = "committed-sent";
		break;
	case MIGWIRE__FRAME__BODY_REDIRECT:
		after = "redirect";
		break;
	default:
		break;
	}
	if (before)
		maybe_stop(before);
	int rc = __real_mig__engine_send(e, conn, f, m, close_after);
	if (after)
		maybe_stop_after(after);
	return rc;
}

/* File frames, sent from worker threads. */
int __wrap_mig__xfer_send(struct mig__xfer *x, const mig__frame *f)
{
	if (f->body_case == MIGWIRE__FRAME__BODY_ROUND_END) {
		const Migwire__RoundEnd *re = f->round_end;
		if (re->has_final && re->final)
			maybe_stop("final");
		else if (re->round == 1)
			maybe_stop("precopy");
	}
	return __real_mig__xfer_send(x, f);
}

/* ------------------------------------------------------------------ engine glue */

static int extract_light(mig_engine *e, const char *user, mig_buf *o, void *ud)
{
	if (!app.present || strcmp(user, app.user))
		return -1;
	return mig_buf_append(o, app.light, sizeof(app.light));
}

static int merge_light(mig_engine *e, const char *user, uint32_t version, const void *data,
		       size_t len, void *ud)
{
	if (len != LIGHT_LEN || strcmp(user, app.user))
		return -1;
	memcpy(app.light, data, len);
	memcpy(&app.ticks, app.light, sizeof(app.ticks));
	app.present = 1;
	app.serving = 0;
	ev("merge", 1, NULL);
	return 0;
}

static int on_pause(mig_engine *e, const char *user, void *ud)
{
	app.serving = 0;
	ev("pause", 1, NULL);
	maybe_stop("paused");
	return 0;
}

static void on_resume(mig_engine *e, const char *user, void *ud)
{
	app.serving = 1;
	ev("resume", 1, NULL);
}

static void on_release(mig_engine *e, const char *user, void *ud)
{
	app.present = app.serving = 0;
	ev("release", 0, NULL);
	maybe_stop("released");
}

static int on_incoming(mig_engine *e, const char *user, void *ud)
{
	ev("incoming", 0, NULL);
	return 0;
}

static void on_activate(mig_engine *e, const char *user, void *ud)
{
	app.serving = 1;
	ev("activate", 1, NULL);
}

static void on_drop(mig_engine *e, const char *user, void *ud)
{
	if (!app.serving)
		app.present = 0;
	ev("drop", 0, NULL);
}

static void on_event(mig_engine *e, const mig_event *x, void *ud)
{
	static const char *const names[] = {"started", "prepared", "committed", "aborted",
					    "incoming", "activated", "dropped", "progress"};
	if (x->type == MIG_EVENT_PROGRESS)
		return;
	char extra[600];
	snprintf(extra, sizeof(extra), "mid=%s err=%s reason=\"%s\"", x->mid,
		 x->error ? mig_err_name(x->error) : "0", x->reason);
	for (char *p = extra; *p; p++)
		if (*p == '\n')
			*p = ' ';
	char what[64];
	snprintf(what, sizeof(what), "event=%s", (unsigned)x->type < 8 ? names[x->type] : "?");
	ev(what, 0, extra);
}

static void on_log(mig_engine *e, mig_log_level level, const char *line, void *ud)
{
	fprintf(stderr, "%" PRIu64 " %s libmigrate[%d]: %s\n", mono_us(), app.name, (int)level,
		line);
}

static const char *state_name(mig_user_state s)
{
	static const char *const n[] = {"ABSENT", "ACTIVE",   "MIGRATING",
					"PAUSED", "INCOMING", "PARKED"};
	return (unsigned)s < 6 ? n[s] : "?";
}

static void status(void)
{
	mig_engine *e = app.engine;
	char phases[512] = "";
	int inflight = 0;
	pthread_mutex_lock(&e->lock);
	for (struct mig_migration *m = e->migrations; m; m = m->next) {
		if (m->phase == MIG__DONE)
			continue;
		inflight++;
		size_t k = strlen(phases);
		snprintf(phases + k, sizeof(phases) - k, "%s%s:%s%s", k ? "," : "",
			 m->outgoing ? "src" : "dst", mig__phase_name(m), m->parked ? "(parked)" : "");
	}
	pthread_mutex_unlock(&e->lock);
	char l[17], f[17];
	light_digest(l);
	files_digest(f);
	out("STATUS state=%s inflight=%d phases=%s present=%d serving=%d light=%s files=%s "
	    "ticks=%" PRIu64,
	    state_name(mig_user_get_state(e, app.user)), inflight, phases[0] ? phases : "-",
	    app.present, app.serving, l, f, app.ticks);
}

static void command(char *line)
{
	line[strcspn(line, "\r\n")] = 0;
	if (!strcmp(line, "status")) {
		mig_engine_dispatch(app.engine); /* what already arrived first */
		status();
	} else if (!strcmp(line, "token")) {
		char tok[MIG_SESSION_TOKEN_MAX];
		int rc = mig_session_token(app.engine, app.user, tok, sizeof(tok));
		out("TOKEN %s", rc ? "-" : tok);
	} else if (!strncmp(line, "migrate ", 8)) {
		int rc = mig_migrate(app.engine, app.user, line + 8, NULL);
		out("MIGRATE rc=%d", rc);
	} else if (*line) {
		out("ERROR unknown command %s", line);
	}
}

static int run_engine(const char *name, int port, const char *advertise, const char *root,
		      const char *user, int serve, int files, unsigned peer_timeout)
{
	app.name = name;
	app.user = user;
	if (files) {
		snprintf(app.root, sizeof(app.root), "%s", root);
		mkdir(root, 0755);
	}
	char appurl[64];
	snprintf(appurl, sizeof(appurl), "app://%s", name);
	mig_engine_options o = {0};
	o.listen_port = port;
	o.advertised_url = advertise;
	o.engine_id = name;
	o.secret = SECRET;
	o.secret_len = strlen(SECRET);
	o.peer_timeout_ms = peer_timeout;
	o.on_event = on_event;
	o.on_log = on_log;
	o.log_level = MIG_LOG_INFO;
	o.app_url = appurl;
	mig_engine *e = NULL;
	int rc = mig_engine_new(&e, &o);
	if (rc) {
		fprintf(stderr, "%s: mig_engine_new: %s\n", name, mig_strerror(rc));
		return 1;
	}
	app.engine = e;
	mig_light_domain ld = {"app", "fault.Light", 1, extract_light, merge_light};
	mig_hooks hooks = {.pause = on_pause,
			   .resume = on_resume,
			   .release = on_release,
			   .incoming = on_incoming,
			   .activate = on_activate,
			   .drop = on_drop};
	mig_file_domain fd = {"files", 1, root, 0};
	if ((rc = mig_light_domain_register(e, &ld, NULL)) ||
	    (files && (rc = mig_file_domain_register(e, &fd))) ||
	    (rc = mig_engine_set_hooks(e, &hooks, NULL)) || (rc = mig_engine_start(e))) {
		fprintf(stderr, "%s: %s: %s\n", name, mig_strerror(rc), mig_engine_last_error(e));
		mig_engine_free(e);
		return 1;
	}
	if (serve) {
		if (files)
			create_files();
		memset(app.light, 0, sizeof(app.light));
		app.present = app.serving = 1;
		mig_user_add(e, user);
		ev("serve", 1, NULL);
	}
	out("READY url=%s port=%d pid=%d", mig_engine_url(e), mig_engine_port(e), (int)getpid());

	int ep = epoll_create1(EPOLL_CLOEXEC);
	int tick = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
	struct itimerspec its = {{0, TICK_MS * 1000000L}, {0, TICK_MS * 1000000L}};
	timerfd_settime(tick, 0, &its, NULL);
	int fds[] = {tick, 0, mig_engine_fd(e)};
	for (int i = 0; i < 3; i++) {
		struct epoll_event x = {.events = EPOLLIN, .data.fd = fds[i]};
		epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &x);
	}
	char inbuf[4096];
	size_t inlen = 0;
	int running = 1;
	while (running) {
		struct epoll_event evs[4];
		int n = epoll_wait(ep, evs, 4, 50);
		if (n < 0 && errno != EINTR)
			break;
		for (int i = 0; i < n; i++) {
			int f = evs[i].data.fd;
			if (f == tick) {
				uint64_t exp;
				if (read(tick, &exp, sizeof(exp)) > 0 && app.serving)
					serve_tick();
			} else if (f == 0) {
				ssize_t k = read(0, inbuf + inlen, sizeof(inbuf) - 1 - inlen);
				if (k <= 0) {
					running = 0;
					break;
				}
				inlen += (size_t)k;
				char *nl;
				while ((nl = memchr(inbuf, '\n', inlen))) {
					*nl = 0;
					if (!strcmp(inbuf, "quit"))
						running = 0;
					else
						command(inbuf);
					size_t used = (size_t)(nl - inbuf) + 1;
					memmove(inbuf, nl + 1, inlen - used);
					inlen -= used;
				}
				if (inlen == sizeof(inbuf) - 1)
					inlen = 0;
			}
		}
		mig_engine_dispatch(e);
	}
	mig_engine_free(e);
	close(ep);
	close(tick);
	return 0;
}

/* ------------------------------------------------------------------ the user's client */

static void client_state(mig_client *c, mig_client_state s, int error, const char *detail,
			 void *ud)
{
	out("CLIENT %" PRIu64 " %s err=%s %s", mono_us(), mig_client_state_name(s),
	    error ? mig_err_name(error) : "0", detail ? detail : "");
}

static void client_redirect(mig_client *c, const mig_client_redirect *r, void *ud)
{
	out("REDIRECT %" PRIu64 " engine=%s app=%s session=%s", mono_us(), r->engine_id,
	    r->app_url, r->session_url);
}

static int run_client(const char *url, const char *token, const char *user)
{
	mig_client_options o = {0};
	o.url = url;
	o.token = token;
	o.user = user;
	o.backoff_initial_ms = 50;
	o.backoff_max_ms = 500;
	o.connect_timeout_ms = 2000;
	o.on_state = client_state;
	o.on_redirect = client_redirect;
	mig_client *c = NULL;
	int rc = mig_client_new(&c, &o);
	if (rc) {
		fprintf(stderr, "client: %s\n", mig_strerror(rc));
		return 1;
	}
	for (;;) {
		struct pollfd p[2] = {{mig_client_fd(c), POLLIN, 0}, {0, POLLIN, 0}};
		if (poll(p, 2, 50) < 0 && errno != EINTR)
			break;
		if (p[1].revents) {
			char b[256];
			ssize_t k = read(0, b, sizeof(b));
			if (k <= 0 || strstr(b, "quit"))
				break;
		}
		mig_client_dispatch(c);
	}
	mig_client_free(c);
	return 0;
}

int main(int argc, char **argv)
{
	const char *name = "A", *advertise = NULL, *root = NULL, *user = "u1", *url = NULL,
		   *token = NULL;
	int port = 0, serve = 0, files = 0, client = 0;
	unsigned peer_timeout = 500;
	static const struct option longopts[] = {
		{"name", required_argument, NULL, 'n'},
		{"port", required_argument, NULL, 'p'},
		{"advertise", required_argument, NULL, 'a'},
		{"root", required_argument, NULL, 'r'},
		{"user", required_argument, NULL, 'u'},
		{"serve", no_argument, NULL, 's'},
		{"files", no_argument, NULL, 'f'},
		{"peer-timeout", required_argument, NULL, 't'},
		{"stop-at", required_argument, NULL, 'S'},
		{"client", no_argument, NULL, 'c'},
		{"url", required_argument, NULL, 'U'},
		{"token", required_argument, NULL, 'T'},
		{NULL, 0, NULL, 0},
	};
	int opt;
	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (opt) {
		case 'n': name = optarg; break;
		case 'p': port = atoi(optarg); break;
		case 'a': advertise = optarg; break;
		case 'r': root = optarg; break;
		case 'u': user = optarg; break;
		case 's': serve = 1; break;
		case 'f': files = 1; break;
		case 't': peer_timeout = (unsigned)atoi(optarg); break;
		case 'S': stop_at = optarg; break;
		case 'c': client = 1; break;
		case 'U': url = optarg; break;
		case 'T': token = optarg; break;
		default:
			fprintf(stderr, "usage: see the comment at the top of fault_server.c\n");
			return 2;
		}
	}
	if (client)
		return url && token ? run_client(url, token, user) : 2;
	if (!root) {
		fprintf(stderr, "fault_server: --root is required\n");
		return 2;
	}
	return run_engine(name, port, advertise, root, user, serve, files, peer_timeout);
}
