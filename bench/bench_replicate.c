/* bench_replicate: what continuous replication (<migrate/replicate.h>) costs
 * the primary, at the default interval, against the same app without it.
 *
 * The primary (this process) serves N sandwich-like users: each makes an
 * assembly step every --step-ms (a Progress-like light state of ~128 bytes
 * changes, and a --frame-bytes frame is appended to a light domain holding
 * the user's last --window frames). The standby is a forked process on
 * loopback. Two phases of --seconds each, same load: without replication,
 * then with every user replicated at --interval-ms (default: the library's
 * default, 1000 ms). Reported per phase: CPU of the primary process (user +
 * system, all its threads, getrusage) as a share of one core, and with
 * replication the bytes per second the primary put on the wire for it (the
 * encoded updates and keepalives), updates acknowledged, and the mean lag
 * (extraction -> ack).
 *
 * --files 1: the frames go to file state instead, as the sandwich server
 * keeps them: each step appends the frame to the user's frames.bin in a
 * file domain (the light domain then holds the progress only), and
 * replication carries the file's growth as deltas against the standby's
 * copy. The file grows for the whole run (no window).
 *
 * Links only the public shared library. Run from a release build:
 *   meson setup /tmp/bench-build --buildtype=release -Dtests=false
 *   ninja -C /tmp/bench-build && /tmp/bench-build/bench/bench_replicate */
#include <arpa/inet.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <migrate/migrate.h>
#include <migrate/replicate.h>

#define SECRET "bench-replicate-secret-0123456789abcdef"
#define MAX_USERS 1000
#define PROGRESS_BYTES 128

struct user {
	char id[32];
	uint64_t step;
	uint8_t progress[PROGRESS_BYTES];
	uint8_t *frames; /* window * frame_bytes, a ring */
	size_t nframes;
	int fd; /* --files: frames.bin, appended to */
};

static struct {
	int users;
	int seconds;
	unsigned step_ms;
	unsigned interval_ms;
	size_t frame_bytes;
	size_t window;
	int files;
} cfg = {50, 10, 100, 0, 1024, 16, 0};

static char proot[64] = "/tmp/bench-replicate-p-XXXXXX";
static char sroot[64] = "/tmp/bench-replicate-s-XXXXXX";

static struct user users[MAX_USERS];
static uint64_t acks, lag_sum_us;

static struct user *find(const char *id)
{
	int i = atoi(id + 5);
	return i >= 0 && i < cfg.users ? &users[i] : NULL;
}

static int extract_progress(mig_engine *e, const char *user, mig_buf *out, void *ud)
{
	(void)e;
	(void)ud;
	struct user *u = find(user);
	return u ? mig_buf_append(out, u->progress, sizeof(u->progress)) : -1;
}

static int extract_frames(mig_engine *e, const char *user, mig_buf *out, void *ud)
{
	(void)e;
	(void)ud;
	struct user *u = find(user);
	return u ? mig_buf_append(out, u->frames, u->nframes * cfg.frame_bytes) : -1;
}

static int merge_any(mig_engine *e, const char *user, uint32_t v, const void *d, size_t n,
		     void *ud)
{
	(void)e;
	(void)user;
	(void)v;
	(void)d;
	(void)n;
	(void)ud;
	return 0;
}

static void on_replica(mig_engine *e, const mig_replica_event *ev, void *ud)
{
	(void)e;
	(void)ud;
	if (ev->type == MIG_REPLICA_ACKED) {
		acks++;
		lag_sum_us += ev->lag_us;
	} else if (ev->type == MIG_REPLICA_REFUSED || ev->type == MIG_REPLICA_SUPERSEDED) {
		fprintf(stderr, "bench_replicate: %s: event %d: %s\n", ev->user, (int)ev->type,
			ev->reason);
	}
}

static mig_engine *engine(const char *id, int port, const char *root)
{
	mig_engine_options o = {0};
	o.engine_id = id;
	o.listen_port = port;
	o.secret = SECRET;
	o.secret_len = sizeof(SECRET) - 1;
	o.metrics_off = 1;
	mig_engine *e = NULL;
	if (mig_engine_new(&e, &o) != 0)
		exit(1);
	mig_light_domain d0 = {"progress", "bench.Progress", 1, extract_progress, merge_any};
	mig_light_domain d1 = {"frames", "bench.Frames", 1, extract_frames, merge_any};
	mig_file_domain fd = {.name = "frames-files", .version = 1, .root = root,
			      .append_only = 1};
	if (mig_light_domain_register(e, &d0, NULL) ||
	    (!cfg.files && mig_light_domain_register(e, &d1, NULL)) ||
	    (cfg.files && mig_file_domain_register(e, &fd)) || mig_engine_start(e)) {
		fprintf(stderr, "bench_replicate: cannot start %s: %s\n", id,
			mig_engine_last_error(e));
		exit(1);
	}
	return e;
}

static int free_port(void)
{
	int fd = socket(AF_INET, SOCK_STREAM, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t l = sizeof(a);
	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) ||
	    getsockname(fd, (struct sockaddr *)&a, &l))
		exit(1);
	close(fd);
	return ntohs(a.sin_port);
}

static uint64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t cpu_us(void)
{
	struct rusage r;
	getrusage(RUSAGE_SELF, &r);
	return (uint64_t)(r.ru_utime.tv_sec + r.ru_stime.tv_sec) * 1000000u +
	       (uint64_t)(r.ru_utime.tv_usec + r.ru_stime.tv_usec);
}

static void step(struct user *u)
{
	u->step++;
	for (int k = 0; k < 8; k++)
		u->progress[k] = (uint8_t)(u->step >> (8 * k));
	u->progress[8 + u->step % (PROGRESS_BYTES - 8)] ^= 0x5a;
	size_t slot = u->step % cfg.window;
	uint8_t *f = u->frames + slot * cfg.frame_bytes;
	/* Pseudo-random content (xorshift64): a recorded frame does not repeat
	 * earlier ones, so neither a delta nor compression can shrink it. */
	uint64_t x = u->step * 0x9e3779b97f4a7c15ull + (uint64_t)(u - users) + 1;
	for (size_t k = 0; k < cfg.frame_bytes; k++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		f[k] = (uint8_t)x;
	}
	if (u->nframes < cfg.window)
		u->nframes++;
	if (cfg.files && write(u->fd, f, cfg.frame_bytes) != (ssize_t)cfg.frame_bytes) {
		perror("bench_replicate: frames.bin");
		exit(1);
	}
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	(void)st;
	(void)flag;
	(void)f;
	return remove(path);
}

/* Runs the load for cfg.seconds; returns the CPU used in microseconds. */
static uint64_t run_phase(mig_engine *p, uint64_t *wall)
{
	uint64_t c0 = cpu_us(), t0 = mono_us(), next = t0;
	uint64_t end = t0 + (uint64_t)cfg.seconds * 1000000u;
	for (;;) {
		uint64_t now = mono_us();
		if (now >= end)
			break;
		if (now >= next) {
			for (int i = 0; i < cfg.users; i++)
				step(&users[i]);
			next += cfg.step_ms * 1000u;
		}
		int wait = (int)((next > now ? next - now : 0) / 1000u);
		struct pollfd pf = {.fd = mig_engine_fd(p), .events = POLLIN};
		poll(&pf, 1, wait);
		mig_engine_dispatch(p);
	}
	*wall = mono_us() - t0;
	return cpu_us() - c0;
}

int main(int argc, char **argv)
{
	for (int i = 1; i + 1 < argc; i += 2) {
		long v = atol(argv[i + 1]);
		if (strcmp(argv[i], "--users") == 0)
			cfg.users = (int)v;
		else if (strcmp(argv[i], "--seconds") == 0)
			cfg.seconds = (int)v;
		else if (strcmp(argv[i], "--step-ms") == 0)
			cfg.step_ms = (unsigned)v;
		else if (strcmp(argv[i], "--interval-ms") == 0)
			cfg.interval_ms = (unsigned)v;
		else if (strcmp(argv[i], "--frame-bytes") == 0)
			cfg.frame_bytes = (size_t)v;
		else if (strcmp(argv[i], "--window") == 0)
			cfg.window = (size_t)v;
		else if (strcmp(argv[i], "--files") == 0)
			cfg.files = v != 0;
		else {
			fprintf(stderr,
				"usage: bench_replicate [--users N] [--seconds S] [--step-ms MS] "
				"[--interval-ms MS] [--frame-bytes B] [--window W] [--files 0|1]\n");
			return 2;
		}
	}
	if (cfg.users < 1 || cfg.users > MAX_USERS || cfg.seconds < 1 || cfg.step_ms < 1 ||
	    cfg.window < 1 || cfg.frame_bytes * cfg.window > 1024 * 1024) {
		fprintf(stderr, "bench_replicate: bad arguments\n");
		return 2;
	}
	if (!mkdtemp(proot) || !mkdtemp(sroot)) {
		perror("bench_replicate: mkdtemp");
		return 1;
	}
	int port = free_port();
	pid_t pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0) {
		mig_engine *s = engine("standby", port, sroot);
		mig_engine_run(s, -1);
		_exit(0);
	}
	for (int i = 0; i < cfg.users; i++) {
		snprintf(users[i].id, sizeof(users[i].id), "user-%d", i);
		users[i].frames = calloc(cfg.window, cfg.frame_bytes);
		if (!users[i].frames)
			return 1;
		users[i].fd = -1;
		if (cfg.files) {
			char path[256];
			if (snprintf(path, sizeof(path), "%s/user-%d", proot, i) >= (int)sizeof(path))
				return 1;
			mkdir(path, 0700);
			if (snprintf(path, sizeof(path), "%s/user-%d/frames.bin", proot, i) >=
			    (int)sizeof(path))
				return 1;
			users[i].fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0600);
			if (users[i].fd < 0)
				return 1;
		}
	}
	mig_engine *p = engine("primary", 0, proot);
	mig_replica_set_handler(p, on_replica, NULL);
	for (int i = 0; i < cfg.users; i++)
		mig_user_add(p, users[i].id);
	char url[64];
	snprintf(url, sizeof(url), "ws://127.0.0.1:%d", port);

	char load[96];
	if (cfg.files)
		snprintf(load, sizeof(load), "a %zu B frame appended to a file", cfg.frame_bytes);
	else
		snprintf(load, sizeof(load), "a window of %zu x %zu B frames", cfg.window,
			 cfg.frame_bytes);
	printf("# bench_replicate: %d users, a step every %u ms each, progress %d B + "
	       "%s, %d s per phase, interval %u ms%s\n",
	       cfg.users, cfg.step_ms, PROGRESS_BYTES, load, cfg.seconds,
	       cfg.interval_ms ? cfg.interval_ms : MIG_REPLICATE_INTERVAL_MS_DEFAULT,
	       cfg.interval_ms ? "" : " (default)");
	uint64_t wall0, cpu0 = run_phase(p, &wall0);
	double share0 = 100.0 * (double)cpu0 / (double)wall0;
	printf("without replication: CPU %.2f%% of a core (%.1f ms/s)\n", share0,
	       (double)cpu0 / ((double)wall0 / 1e6) / 1000.0);

	mig_replicate_options o = {.interval_ms = cfg.interval_ms};
	for (int i = 0; i < cfg.users; i++)
		if (mig_replicate(p, users[i].id, url, &o) != 0) {
			fprintf(stderr, "bench_replicate: %s\n", mig_engine_last_error(p));
			return 1;
		}
	/* Let the first full round land before measuring. */
	uint64_t warm;
	int secs = cfg.seconds;
	cfg.seconds = 2;
	run_phase(p, &warm);
	cfg.seconds = secs;
	uint64_t bytes0 = 0, bytes1 = 0;
	mig_replica_info info;
	for (int i = 0; i < cfg.users; i++)
		if (mig_replica_info_get(p, users[i].id, &info) == 0)
			bytes0 += info.bytes;
	uint64_t acks0 = acks, lag0 = lag_sum_us;
	uint64_t wall1, cpu1 = run_phase(p, &wall1);
	for (int i = 0; i < cfg.users; i++)
		if (mig_replica_info_get(p, users[i].id, &info) == 0)
			bytes1 += info.bytes;
	double share1 = 100.0 * (double)cpu1 / (double)wall1;
	double secs1 = (double)wall1 / 1e6;
	uint64_t nacks = acks - acks0;
	printf("with replication:    CPU %.2f%% of a core (%.1f ms/s)\n", share1,
	       (double)cpu1 / secs1 / 1000.0);
	printf("overhead:            %+.2f points of a core (%+.1f ms CPU per second, "
	       "%.1f us per user per second)\n",
	       share1 - share0, ((double)cpu1 / secs1 - (double)cpu0 / ((double)wall0 / 1e6)) / 1000.0,
	       ((double)cpu1 / secs1 - (double)cpu0 / ((double)wall0 / 1e6)) / cfg.users);
	printf("wire (primary -> standby): %.0f B/s (%.0f B/s per user); %.1f updates/s "
	       "acked, mean lag %.2f ms\n",
	       (double)(bytes1 - bytes0) / secs1, (double)(bytes1 - bytes0) / secs1 / cfg.users,
	       (double)nacks / secs1, nacks ? (double)(lag_sum_us - lag0) / (double)nacks / 1000.0
					    : 0.0);
	mig_engine_free(p);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	for (int i = 0; i < cfg.users; i++) {
		free(users[i].frames);
		if (users[i].fd >= 0)
			close(users[i].fd);
	}
	nftw(proot, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	nftw(sroot, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	return 0;
}
