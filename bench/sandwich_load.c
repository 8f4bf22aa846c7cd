/* sandwich_load: a load generator for examples/sandwich's server that
 * measures per-frame latency (bench/bench_sandwich.sh, docs/BENCHMARKS.md,
 * "Cost to the application").
 *
 *   sandwich_load --server tcp://HOST:PORT [--users 50] [--prefix u]
 *                 [--extra ID,ID,...] [--rate 20] [--duration 30]
 *                 [--warmup 2] [--image-bytes 20480] [--frames N]
 *                 [--samples FILE] [--connect-timeout 10]
 *
 * Speaks the app's own protocol (examples/sandwich/sandwich.proto, the files
 * examples/meson.build generates) over plain TCP, like sandwich_client but
 * without libmigrate: it does not link the library, so it costs both servers
 * the same. Users are PREFIX-000 ... ("users" group) plus the --extra ids
 * ("extra" group, reported apart: bench_sandwich.sh migrates those).
 *
 * Every user connects and says Hello; once all are welcomed the clock
 * starts. Each user then sends a frame every 1/rate s on a fixed schedule
 * (user i offset by i/(n*rate) s so the users do not send in bursts), one
 * frame in flight at a time, with a label from the sandwich script
 * (bread, ham, ... spread over the run) and image-bytes of image (fresh
 * pseudo-random bytes per frame: incompressible, like a JPEG). The
 * latency of a frame is from just before its send() to the moment its
 * Instruction is parsed (a frame answered with Wait is sent again after
 * retry_ms and its latency counts from the first send). A frame whose
 * scheduled time passed while the previous one was in flight is sent as
 * soon as that one is answered and counted as "late".
 *
 * --rate 0 sends as fast as answers come (with --frames N: until each user
 * has N frames answered; used to seed a user's frames.log). --duration
 * bounds the run in both modes. Frames scheduled in the first --warmup s are
 * left out of the statistics (not of --samples).
 *
 * stdout: one JSON object with per-group counts and latency percentiles
 * (µs). --samples FILE: one line per answered frame,
 *     <wall clock of the send, s> <group u|x> <user index> <frame id> <latency µs>
 * Exit status 0 if every user was welcomed and none hit an error (a user
 * told Moved stops, which is not an error). */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <math.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "sandwich.h"

enum { G_USERS, G_EXTRA, NGROUPS };
static const char *group_name[NGROUPS] = {"users", "extra"};

struct luser {
	int fd; /* first: epoll's data.ptr points at the user */
	unsigned idx;
	int group;
	char id[65];
	sw_buf in, out;
	bool want_out, welcomed, hello_in_flight, stopped;
	uint64_t hello_retry_ns;
	uint64_t next_frame;   /* the frame to send next */
	uint64_t in_flight;    /* frame awaiting its answer (0: none) */
	bool resend;           /* in_flight was answered with Wait: send it again */
	uint64_t retry_ns;     /* ... not before this */
	uint64_t first_sent_ns; /* first send of in_flight */
	uint64_t sched_ns;     /* its scheduled time */
	double first_sent_wall;
	uint64_t due_ns; /* scheduled time of the next new frame */
	uint64_t answered;
	uint8_t *img;
};

struct gstats {
	double *lat;
	size_t n, cap;
	uint64_t waits, late, moved, errors, answered_all;
};

static struct {
	struct luser *u;
	size_t n;
	int ep, tfd;
	unsigned rate, image_bytes, hold;
	uint64_t interval_ns, frames_cap;
	uint64_t t0, warm_end, end;
	FILE *samples;
	struct gstats g[NGROUPS];
} L;

static uint64_t now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void fail_user(struct luser *u, const char *why)
{
	fprintf(stderr, "sandwich_load: %s: %s\n", u->id, why);
	L.g[u->group].errors++;
	if (u->fd >= 0) {
		epoll_ctl(L.ep, EPOLL_CTL_DEL, u->fd, NULL);
		close(u->fd);
		u->fd = -1;
	}
	u->stopped = true;
	u->in_flight = 0;
}

static void set_events(struct luser *u)
{
	bool want = u->out.off < u->out.len;
	if (want == u->want_out || u->fd < 0)
		return;
	struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = u};
	epoll_ctl(L.ep, EPOLL_CTL_MOD, u->fd, &ev);
	u->want_out = want;
}

static void send_msg(struct luser *u, Sandwich__ClientMsg *m)
{
	if (sw_buf_put_msg(&u->out, &m->base) < 0 || sw_buf_flush(&u->out, u->fd) < 0) {
		fail_user(u, "send failed");
		return;
	}
	set_events(u);
}

static void send_hello(struct luser *u)
{
	Sandwich__Hello h = SANDWICH__HELLO__INIT;
	h.user = u->id;
	Sandwich__ClientMsg m = SANDWICH__CLIENT_MSG__INIT;
	m.body_case = SANDWICH__CLIENT_MSG__BODY_HELLO;
	m.hello = &h;
	u->hello_in_flight = true;
	send_msg(u, &m);
}

/* The sandwich script, spread over the run: what the camera sees. */
static const char *label_of(const struct luser *u, uint64_t frame_id)
{
	static const char *seq[] = {"bread", "ham", "lettuce", "half", "tomato", "full"};
	uint64_t i = frame_id - 1, h = L.hold;
	if (i < 2)
		return "nothing";
	i -= 2;
	if (i / h < 6) {
		/* a wrong item for the first 3 frames of a step, for some users */
		if (i / h == 2 && i % h < 3 && u->idx % 3 != 1 && h > 6)
			return "cucumber";
		return seq[i / h];
	}
	return "nothing";
}

/* The frame's "image": fresh pseudo-random bytes for every frame (xorshift64,
 * 8 bytes a step, a few µs per 20 KiB), so frames.log does not compress:
 * a camera sends JPEGs, and the migration's zstd must find nothing to gain. */
static void make_image(const struct luser *u, uint64_t frame_id)
{
	uint64_t x = sw_fnv(SW_FNV_INIT, u->id, strlen(u->id)) ^ (frame_id * 0x9e3779b97f4a7c15ull);
	if (!x)
		x = 1;
	size_t i = 0;
	for (; i + 8 <= L.image_bytes; i += 8) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		memcpy(u->img + i, &x, 8);
	}
	for (; i < L.image_bytes; i++)
		u->img[i] = (uint8_t)(x >> (8 * (i % 8)));
}

static void send_frame(struct luser *u, uint64_t now)
{
	if (!u->resend) {
		u->in_flight = u->next_frame;
		u->sched_ns = L.rate ? u->due_ns : now;
		u->first_sent_ns = now;
		u->first_sent_wall = sw_wall();
		if (L.rate && now > u->due_ns + L.interval_ns / 2)
			L.g[u->group].late++;
	}
	u->resend = false;
	uint64_t id = u->in_flight;
	make_image(u, id);
	Sandwich__Frame f = SANDWICH__FRAME__INIT;
	f.user = u->id;
	f.frame_id = id;
	f.label = (char *)label_of(u, id);
	f.image.data = u->img;
	f.image.len = L.image_bytes;
	Sandwich__ClientMsg m = SANDWICH__CLIENT_MSG__INIT;
	m.body_case = SANDWICH__CLIENT_MSG__BODY_FRAME;
	m.frame = &f;
	send_msg(u, &m);
}

static void record(struct luser *u, uint64_t now)
{
	double lat_us = (double)(now - u->first_sent_ns) / 1000.0;
	if (L.samples)
		fprintf(L.samples, "%.6f %c %u %" PRIu64 " %.1f\n", u->first_sent_wall,
			u->group == G_USERS ? 'u' : 'x', u->idx, u->in_flight, lat_us);
	struct gstats *g = &L.g[u->group];
	g->answered_all++;
	if (u->sched_ns < L.warm_end)
		return;
	if (g->n == g->cap) {
		size_t cap = g->cap ? g->cap * 2 : 4096;
		double *p = realloc(g->lat, cap * sizeof(*p));
		if (!p)
			return;
		g->lat = p;
		g->cap = cap;
	}
	g->lat[g->n++] = lat_us;
}

static void on_message(struct luser *u, const Sandwich__ServerMsg *m, uint64_t now)
{
	switch (m->body_case) {
	case SANDWICH__SERVER_MSG__BODY_WELCOME:
		u->welcomed = true;
		u->hello_in_flight = false;
		u->next_frame = m->welcome->next_frame_id ? m->welcome->next_frame_id : 1;
		break;
	case SANDWICH__SERVER_MSG__BODY_INSTRUCTION:
		if (!u->in_flight || m->instruction->frame_id != u->in_flight || u->resend)
			break;
		record(u, now);
		u->answered++;
		u->next_frame = u->in_flight + 1;
		u->in_flight = 0;
		u->due_ns += L.interval_ns;
		if (L.frames_cap && u->answered >= L.frames_cap)
			u->stopped = true;
		break;
	case SANDWICH__SERVER_MSG__BODY_WAIT:
		L.g[u->group].waits++;
		if (m->wait->frame_id == 0) {
			u->hello_in_flight = false;
			u->hello_retry_ns = now + (uint64_t)(m->wait->retry_ms ? m->wait->retry_ms : 100) * 1000000u;
		} else if (m->wait->frame_id == u->in_flight) {
			if (m->wait->next_frame_id && m->wait->next_frame_id != u->in_flight) {
				fail_user(u, "the server expects another frame");
				break;
			}
			u->resend = true;
			u->retry_ns = now + (uint64_t)(m->wait->retry_ms ? m->wait->retry_ms : 100) * 1000000u;
		}
		break;
	case SANDWICH__SERVER_MSG__BODY_MOVED:
		L.g[u->group].moved++;
		epoll_ctl(L.ep, EPOLL_CTL_DEL, u->fd, NULL);
		close(u->fd);
		u->fd = -1;
		u->stopped = true;
		u->in_flight = 0;
		break;
	default:
		break;
	}
}

static void sock_read(struct luser *u)
{
	uint8_t buf[16384];
	bool eof = false;
	for (;;) {
		ssize_t n = recv(u->fd, buf, sizeof(buf), 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n <= 0 || sw_buf_append(&u->in, buf, (size_t)n) < 0) {
			eof = true;
			break;
		}
	}
	uint64_t now = now_ns(); /* the answer is here: before parsing it */
	const uint8_t *body;
	size_t len;
	int r;
	while (u->fd >= 0 && (r = sw_buf_next_msg(&u->in, &body, &len)) != 0) {
		Sandwich__ServerMsg *m = r < 0 ? NULL : sandwich__server_msg__unpack(NULL, len, body);
		if (!m) {
			fail_user(u, "bad message from the server");
			return;
		}
		sw_buf_consume(&u->in, 4 + len);
		on_message(u, m, now);
		sandwich__server_msg__free_unpacked(m, NULL);
	}
	if (eof && u->fd >= 0)
		fail_user(u, "the server closed the connection");
}

/* Sends what is due; returns the next time something becomes due (0: none). */
static uint64_t drive(uint64_t now, bool sending)
{
	uint64_t next = 0;
	for (size_t i = 0; i < L.n; i++) {
		struct luser *u = &L.u[i];
		if (u->fd < 0 || u->stopped)
			continue;
		uint64_t at;
		if (!u->welcomed) {
			if (u->hello_in_flight)
				continue;
			at = u->hello_retry_ns;
			if (now >= at) {
				send_hello(u);
				continue;
			}
		} else if (!sending) {
			continue;
		} else if (u->resend) {
			at = u->retry_ns;
			if (now >= at) {
				send_frame(u, now);
				continue;
			}
		} else if (u->in_flight) {
			continue;
		} else {
			at = L.rate ? u->due_ns : 0;
			if (now >= at) {
				send_frame(u, now);
				continue;
			}
		}
		if (!next || at < next)
			next = at;
	}
	return next;
}

static void arm(uint64_t at)
{
	struct itimerspec its = {0};
	if (at) {
		its.it_value.tv_sec = (time_t)(at / 1000000000u);
		its.it_value.tv_nsec = (long)(at % 1000000000u);
	}
	timerfd_settime(L.tfd, TFD_TIMER_ABSTIME, &its, NULL);
}

/* One pass of the loop: wait for sockets or the timer, handle them. */
static void loop_once(int timeout_ms)
{
	struct epoll_event evs[64];
	int n = epoll_wait(L.ep, evs, 64, timeout_ms);
	for (int i = 0; i < n; i++) {
		if (evs[i].data.ptr == NULL) {
			uint64_t x;
			if (read(L.tfd, &x, sizeof(x)) < 0)
				continue;
			continue;
		}
		struct luser *u = evs[i].data.ptr;
		if (u->fd < 0)
			continue;
		if (evs[i].events & EPOLLOUT) {
			if (sw_buf_flush(&u->out, u->fd) < 0) {
				fail_user(u, "send failed");
				continue;
			}
			set_events(u);
		}
		if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR))
			sock_read(u);
	}
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

static double pct(const double *v, size_t n, double p)
{
	if (!n)
		return 0;
	size_t k = (size_t)ceil(p / 100.0 * (double)n);
	return v[k ? k - 1 : 0];
}

static void usage(void)
{
	fprintf(stderr,
		"usage: sandwich_load --server tcp://HOST:PORT [--users 50] [--prefix u]\n"
		"                     [--extra ID,...] [--rate 20] [--duration 30] [--warmup 2]\n"
		"                     [--image-bytes 20480] [--frames N] [--samples FILE]\n"
		"                     [--connect-timeout 10]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	const char *server = NULL, *prefix = "u", *extra = NULL, *samples = NULL;
	unsigned nusers = 50, connect_timeout = 10;
	double duration = 30, warmup = 2;
	L.rate = 20;
	L.image_bytes = 20480;
	static const struct option longopts[] = {
		{"server", required_argument, NULL, 's'},
		{"users", required_argument, NULL, 'u'},
		{"prefix", required_argument, NULL, 'p'},
		{"extra", required_argument, NULL, 'x'},
		{"rate", required_argument, NULL, 'r'},
		{"duration", required_argument, NULL, 'd'},
		{"warmup", required_argument, NULL, 'w'},
		{"image-bytes", required_argument, NULL, 'b'},
		{"frames", required_argument, NULL, 'f'},
		{"samples", required_argument, NULL, 'S'},
		{"connect-timeout", required_argument, NULL, 'c'},
		{NULL, 0, NULL, 0},
	};
	int opt;
	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (opt) {
		case 's': server = optarg; break;
		case 'u': nusers = (unsigned)atoi(optarg); break;
		case 'p': prefix = optarg; break;
		case 'x': extra = optarg; break;
		case 'r': L.rate = (unsigned)atoi(optarg); break;
		case 'd': duration = atof(optarg); break;
		case 'w': warmup = atof(optarg); break;
		case 'b': L.image_bytes = (unsigned)atoi(optarg); break;
		case 'f': L.frames_cap = strtoull(optarg, NULL, 10); break;
		case 'S': samples = optarg; break;
		case 'c': connect_timeout = (unsigned)atoi(optarg); break;
		default: usage();
		}
	}
	char host[128];
	int port;
	if (!server || optind != argc || duration <= 0 || warmup < 0 || L.image_bytes < 8 ||
	    L.image_bytes > SW_MAX_MSG / 2 || nusers > 10000 ||
	    sw_parse_tcp_url(server, host, sizeof(host), &port))
		usage();
	signal(SIGPIPE, SIG_IGN);

	size_t nextra = 0;
	if (extra && *extra) {
		nextra = 1;
		for (const char *p = extra; *p; p++)
			nextra += *p == ',';
	}
	L.n = nusers + nextra;
	if (!L.n)
		usage();
	L.u = calloc(L.n, sizeof(*L.u));
	for (size_t i = 0; i < nusers; i++) {
		L.u[i].group = G_USERS;
		L.u[i].idx = (unsigned)i;
		snprintf(L.u[i].id, sizeof(L.u[i].id), "%s-%03zu", prefix, i);
	}
	if (nextra) {
		char *list = strdup(extra), *save = NULL;
		size_t k = nusers;
		for (char *t = strtok_r(list, ",", &save); t && k < L.n; t = strtok_r(NULL, ",", &save)) {
			L.u[k].group = G_EXTRA;
			L.u[k].idx = (unsigned)(k - nusers);
			snprintf(L.u[k].id, sizeof(L.u[k].id), "%s", t);
			k++;
		}
		L.n = k;
		free(list);
	}
	if (samples && !(L.samples = fopen(samples, "w"))) {
		perror(samples);
		return 2;
	}
	uint64_t expected = L.frames_cap ? L.frames_cap : (uint64_t)(duration * (L.rate ? L.rate : 20));
	L.hold = (unsigned)(expected / 8 > 1 ? expected / 8 : 1);
	L.interval_ns = L.rate ? 1000000000u / L.rate : 0;

	L.ep = epoll_create1(EPOLL_CLOEXEC);
	L.tfd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC | TFD_NONBLOCK);
	struct epoll_event tev = {.events = EPOLLIN, .data.ptr = NULL};
	epoll_ctl(L.ep, EPOLL_CTL_ADD, L.tfd, &tev);

	/* Connect everyone (loopback: a blocking connect), then Hello. */
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	inet_pton(AF_INET, host, &a.sin_addr);
	for (size_t i = 0; i < L.n; i++) {
		struct luser *u = &L.u[i];
		u->img = malloc(L.image_bytes);
		if (!u->img)
			return 1;
		u->fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
		if (u->fd < 0 || connect(u->fd, (struct sockaddr *)&a, sizeof(a)) < 0) {
			fprintf(stderr, "sandwich_load: connect %s: %s\n", server, strerror(errno));
			return 1;
		}
		fcntl(u->fd, F_SETFL, fcntl(u->fd, F_GETFL) | O_NONBLOCK);
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = u};
		epoll_ctl(L.ep, EPOLL_CTL_ADD, u->fd, &ev);
		send_hello(u);
	}
	uint64_t deadline = now_ns() + (uint64_t)connect_timeout * 1000000000u;
	for (;;) {
		size_t welcomed = 0, gone = 0;
		for (size_t i = 0; i < L.n; i++) {
			welcomed += L.u[i].welcomed;
			gone += L.u[i].fd < 0;
		}
		if (welcomed + gone == L.n)
			break;
		if (now_ns() > deadline) {
			fprintf(stderr, "sandwich_load: %zu of %zu users welcomed after %u s\n",
				welcomed, L.n, connect_timeout);
			return 1;
		}
		arm(drive(now_ns(), false));
		loop_once(100);
	}

	/* The run: a fixed schedule per user, staggered over one interval. */
	L.t0 = now_ns() + 50000000u;
	L.warm_end = L.t0 + (uint64_t)(warmup * 1e9);
	L.end = L.t0 + (uint64_t)(duration * 1e9);
	for (size_t i = 0; i < L.n; i++)
		L.u[i].due_ns = L.t0 + (L.rate ? L.interval_ns * i / L.n : 0);
	struct rusage ru0, ru1;
	getrusage(RUSAGE_SELF, &ru0);
	double wall0 = sw_wall();
	for (;;) {
		uint64_t now = now_ns();
		bool sending = now < L.end;
		uint64_t next = drive(now, sending);
		bool busy = false;
		for (size_t i = 0; i < L.n; i++)
			busy |= L.u[i].fd >= 0 && !L.u[i].stopped && L.u[i].in_flight && !L.u[i].resend;
		bool live = false;
		for (size_t i = 0; i < L.n; i++)
			live |= L.u[i].fd >= 0 && !L.u[i].stopped;
		if (!live || (!sending && !busy) || now > L.end + 3000000000u)
			break;
		if (!sending)
			next = 0;
		else if (next && next > L.end)
			next = L.end;
		arm(next ? next : (sending ? L.end : 0));
		loop_once(sending ? 1000 : 100);
	}
	double wall1 = sw_wall();
	getrusage(RUSAGE_SELF, &ru1);
	if (L.samples)
		fclose(L.samples);

	double cpu = (double)(ru1.ru_utime.tv_sec - ru0.ru_utime.tv_sec) +
		     (double)(ru1.ru_utime.tv_usec - ru0.ru_utime.tv_usec) / 1e6 +
		     (double)(ru1.ru_stime.tv_sec - ru0.ru_stime.tv_sec) +
		     (double)(ru1.ru_stime.tv_usec - ru0.ru_stime.tv_usec) / 1e6;
	printf("{\"server\":\"%s\",\"rate\":%u,\"duration_s\":%.3f,\"warmup_s\":%.3f,"
	       "\"image_bytes\":%u,\"start_wall\":%.6f,\"end_wall\":%.6f,\"load_cpu_s\":%.3f,"
	       "\"groups\":{",
	       server, L.rate, wall1 - wall0, warmup, L.image_bytes, wall0, wall1, cpu);
	int errors = 0;
	for (int gi = 0; gi < NGROUPS; gi++) {
		struct gstats *g = &L.g[gi];
		size_t users = 0;
		for (size_t i = 0; i < L.n; i++)
			users += L.u[i].group == gi;
		qsort(g->lat, g->n, sizeof(*g->lat), cmp_double);
		double sum = 0;
		for (size_t i = 0; i < g->n; i++)
			sum += g->lat[i];
		printf("%s\"%s\":{\"users\":%zu,\"frames\":%zu,\"frames_all\":%" PRIu64
		       ",\"p50_us\":%.1f,\"p90_us\":%.1f,\"p99_us\":%.1f,\"p999_us\":%.1f,"
		       "\"max_us\":%.1f,\"mean_us\":%.1f,\"waits\":%" PRIu64 ",\"late\":%" PRIu64
		       ",\"moved\":%" PRIu64 ",\"errors\":%" PRIu64 "}",
		       gi ? "," : "", group_name[gi], users, g->n, g->answered_all,
		       pct(g->lat, g->n, 50), pct(g->lat, g->n, 90), pct(g->lat, g->n, 99),
		       pct(g->lat, g->n, 99.9), g->n ? g->lat[g->n - 1] : 0,
		       g->n ? sum / (double)g->n : 0, g->waits, g->late, g->moved, g->errors);
		errors += g->errors != 0;
		free(g->lat);
	}
	printf("}}\n");
	for (size_t i = 0; i < L.n; i++) {
		if (L.u[i].fd >= 0)
			close(L.u[i].fd);
		sw_buf_free(&L.u[i].in);
		sw_buf_free(&L.u[i].out);
		free(L.u[i].img);
	}
	free(L.u);
	close(L.tfd);
	close(L.ep);
	return errors ? 1 : 0;
}
