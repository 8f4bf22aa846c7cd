/* counter_server: the smallest real server built on libmigrate.
 *
 * Each user has a counter that the server advances every 100 ms while it
 * serves the user (the "application"). The counter is light state: when an
 * orchestrator moves the user (migratectl), it continues on the other
 * engine from where it stopped. The server owns its event loop (epoll) and
 * plugs the engine in with mig_engine_fd() / mig_engine_dispatch().
 *
 *   counter_server --id A --secret-file S [--port P] [--users u1,u2,...]
 *                  [--orchestrator URL [--heartbeat-ms MS]]
 *                  [--tls-cert FILE --tls-key FILE] [--tls-ca FILE]
 *
 * With --orchestrator the engine announces itself to a migrate-orchestrator
 * (docs/ORCHESTRATOR.md) and sends it heartbeats. With --tls-cert/--tls-key
 * the engine serves wss://; --tls-ca verifies the wss:// peers and
 * orchestrator it connects to.
 *
 * Prints "url <engine url>" first, then one timeline line per event, and the
 * final counters on SIGTERM/SIGINT. */
#include <errno.h>
#include <stdarg.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <migrate/migrate.h>

#define MAX_USERS 64

struct user {
	char id[64];
	uint64_t count;
	int present; /* the app holds state for it */
	int serving; /* the app advances it */
};

struct server {
	const char *name;
	struct user users[MAX_USERS];
	int nusers;
	struct timespec t0;
};

static double elapsed(struct server *s)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - s->t0.tv_sec) + (now.tv_nsec - s->t0.tv_nsec) / 1e9;
}

static void say(struct server *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void say(struct server *s, const char *fmt, ...)
{
	va_list ap;
	printf("%8.3f  %s  ", elapsed(s), s->name);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	putchar('\n');
	fflush(stdout);
}

static struct user *find(struct server *s, const char *id, int create)
{
	for (int i = 0; i < s->nusers; i++)
		if (strcmp(s->users[i].id, id) == 0)
			return &s->users[i];
	if (!create || s->nusers == MAX_USERS)
		return NULL;
	struct user *u = &s->users[s->nusers++];
	memset(u, 0, sizeof(*u));
	snprintf(u->id, sizeof(u->id), "%s", id);
	return u;
}

/* Light state: the counter as 8 big-endian bytes. */
static int extract_counter(mig_engine *e, const char *user, mig_buf *out, void *ud)
{
	(void)e;
	struct user *u = find(ud, user, 0);
	if (!u)
		return -1;
	uint8_t b[8];
	for (int i = 0; i < 8; i++)
		b[i] = (uint8_t)(u->count >> (56 - 8 * i));
	return mig_buf_append(out, b, sizeof(b));
}

static int merge_counter(mig_engine *e, const char *user, uint32_t version, const void *data,
			 size_t len, void *ud)
{
	(void)e;
	(void)version;
	struct user *u = find(ud, user, 1);
	if (!u || len != 8)
		return -1;
	const uint8_t *b = data;
	u->count = 0;
	for (int i = 0; i < 8; i++)
		u->count = (u->count << 8) | b[i];
	u->present = 1;
	u->serving = 0; /* inactive until activate */
	return 0;
}

static int on_pause(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct user *u = find(ud, user, 0);
	if (!u)
		return -1;
	u->serving = 0;
	say(ud, "pause     %s at count %" PRIu64, user, u->count);
	return 0;
}

static void on_resume(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct user *u = find(ud, user, 0);
	if (u)
		u->serving = 1;
	say(ud, "resume    %s (migration aborted)", user);
}

static void on_release(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct user *u = find(ud, user, 0);
	if (u)
		u->present = u->serving = 0;
	say(ud, "release   %s (now served elsewhere)", user);
}

static void on_activate(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct user *u = find(ud, user, 0);
	if (u)
		u->serving = 1;
	say(ud, "activate  %s at count %" PRIu64, user, u ? u->count : 0);
}

static void on_drop(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct user *u = find(ud, user, 0);
	if (u)
		u->present = u->serving = 0;
	say(ud, "drop      %s", user);
}

static void on_event(mig_engine *e, const mig_event *ev, void *ud)
{
	(void)e;
	switch (ev->type) {
	case MIG_EVENT_COMMITTED:
		say(ud, "committed %s -> %s: %" PRIu64 " bytes sent, %.3f ms total, %.3f ms downtime",
		    ev->user, ev->peer_url, ev->bytes_sent, ev->duration_us / 1000.0,
		    ev->downtime_us / 1000.0);
		break;
	case MIG_EVENT_ABORTED:
		say(ud, "aborted   %s: %s (%s)", ev->user, ev->reason, mig_err_name(ev->error));
		break;
	case MIG_EVENT_STARTED:
		say(ud, "start     %s -> %s", ev->user, ev->peer_url);
		break;
	default:
		break;
	}
}

static void on_log(mig_engine *e, mig_log_level level, const char *line, void *ud)
{
	(void)e;
	(void)ud;
	fprintf(stderr, "libmigrate[%d]: %s\n", (int)level, line);
}

static int read_secret(const char *path, char *buf, size_t cap, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, cap, f);
	fclose(f);
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		n--;
	*len = n;
	return n ? 0 : -1;
}

int main(int argc, char **argv)
{
	struct server s = {.name = "A"};
	const char *secret_file = NULL, *users = NULL, *orchestrator = NULL;
	const char *tls_cert = NULL, *tls_key = NULL, *tls_ca = NULL;
	int port = 0;
	unsigned heartbeat_ms = 0;
	int opt;
	static const struct option longopts[] = {
		{"id", required_argument, NULL, 'i'},
		{"port", required_argument, NULL, 'p'},
		{"secret-file", required_argument, NULL, 's'},
		{"users", required_argument, NULL, 'u'},
		{"orchestrator", required_argument, NULL, 'o'},
		{"heartbeat-ms", required_argument, NULL, 'b'},
		{"tls-cert", required_argument, NULL, 'c'},
		{"tls-key", required_argument, NULL, 'k'},
		{"tls-ca", required_argument, NULL, 'C'},
		{NULL, 0, NULL, 0},
	};
	while ((opt = getopt_long(argc, argv, "i:p:s:u:", longopts, NULL)) != -1) {
		switch (opt) {
		case 'i':
			s.name = optarg;
			break;
		case 'p':
			port = atoi(optarg);
			break;
		case 's':
			secret_file = optarg;
			break;
		case 'u':
			users = optarg;
			break;
		case 'o':
			orchestrator = optarg;
			break;
		case 'b':
			heartbeat_ms = (unsigned)strtoul(optarg, NULL, 10);
			break;
		case 'c':
			tls_cert = optarg;
			break;
		case 'k':
			tls_key = optarg;
			break;
		case 'C':
			tls_ca = optarg;
			break;
		default:
			fprintf(stderr, "usage: counter_server --id NAME --secret-file FILE "
					"[--port P] [--users a,b,c] [--orchestrator URL "
					"[--heartbeat-ms MS]] [--tls-cert FILE --tls-key FILE] "
					"[--tls-ca FILE]\n");
			return 2;
		}
	}
	char secret[256];
	size_t secret_len = 0;
	if (!secret_file || read_secret(secret_file, secret, sizeof(secret), &secret_len)) {
		fprintf(stderr, "counter_server: --secret-file with a secret is required\n");
		return 2;
	}
	clock_gettime(CLOCK_MONOTONIC, &s.t0);
	/* Block the signals before the engine starts its threads, which
	 * inherit the mask: SIGTERM must reach the signalfd, not kill the
	 * process on a library thread. */
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigprocmask(SIG_BLOCK, &mask, NULL);

	/* 1. Create the engine, register state and hooks, start it. */
	mig_engine_options o = {0};
	o.listen_port = port;
	o.engine_id = s.name;
	o.orchestrator_url = orchestrator;
	o.heartbeat_ms = heartbeat_ms;
	o.secret = secret;
	o.secret_len = secret_len;
	o.tls_cert_file = tls_cert;
	o.tls_key_file = tls_key;
	o.tls_ca_file = tls_ca;
	o.on_event = on_event;
	o.on_log = on_log;
	o.log_level = MIG_LOG_WARN;
	o.user_data = &s;
	mig_engine *engine = NULL;
	int rc = mig_engine_new(&engine, &o);
	if (rc) {
		fprintf(stderr, "counter_server: %s\n", mig_strerror(rc));
		return 1;
	}
	mig_light_domain counter = {"counter", "counter.U64", 1, extract_counter, merge_counter};
	mig_hooks hooks = {.pause = on_pause,
			   .resume = on_resume,
			   .release = on_release,
			   .activate = on_activate,
			   .drop = on_drop};
	if ((rc = mig_light_domain_register(engine, &counter, &s)) ||
	    (rc = mig_engine_set_hooks(engine, &hooks, &s)) || (rc = mig_engine_start(engine))) {
		fprintf(stderr, "counter_server: %s: %s\n", mig_strerror(rc),
			mig_engine_last_error(engine));
		mig_engine_free(engine);
		return 1;
	}
	printf("url %s\n", mig_engine_url(engine));
	fflush(stdout);

	if (users) {
		char *list = strdup(users), *save = NULL;
		for (char *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
			struct user *u = find(&s, tok, 1);
			if (!u || mig_user_add(engine, tok) != 0) {
				fprintf(stderr, "counter_server: cannot add user %s\n", tok);
				continue;
			}
			u->present = u->serving = 1;
			say(&s, "serve     %s from count 0", tok);
		}
		free(list);
	}

	/* 2. The server's own loop: a 100 ms tick, signals, and the engine. */
	int ep = epoll_create1(EPOLL_CLOEXEC);
	int tick = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
	struct itimerspec its = {{0, 100000000}, {0, 100000000}};
	timerfd_settime(tick, 0, &its, NULL);
	int sig = signalfd(-1, &mask, SFD_CLOEXEC);
	int fds[] = {tick, sig, mig_engine_fd(engine)};
	for (int i = 0; i < 3; i++) {
		struct epoll_event ev = {.events = EPOLLIN, .data.fd = fds[i]};
		epoll_ctl(ep, EPOLL_CTL_ADD, fds[i], &ev);
	}
	int running = 1;
	while (running) {
		struct epoll_event evs[4];
		int n = epoll_wait(ep, evs, 4, -1);
		if (n < 0 && errno != EINTR)
			break;
		for (int i = 0; i < n; i++) {
			int fd = evs[i].data.fd;
			if (fd == tick) {
				uint64_t expirations;
				if (read(tick, &expirations, sizeof(expirations)) > 0)
					for (int k = 0; k < s.nusers; k++)
						if (s.users[k].serving)
							s.users[k].count += expirations;
			} else if (fd == sig) {
				running = 0;
			} else {
				mig_engine_dispatch(engine);
			}
		}
	}
	for (int k = 0; k < s.nusers; k++)
		if (s.users[k].present)
			printf("final %s %s count %" PRIu64 "\n", s.name, s.users[k].id,
			       s.users[k].count);
	fflush(stdout);
	mig_engine_free(engine);
	close(ep);
	close(tick);
	close(sig);
	return 0;
}
