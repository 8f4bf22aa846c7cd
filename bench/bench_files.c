/* bench_files: the file-state benchmark's building blocks, driven by
 * bench/bench_files.sh (see docs/BENCHMARKS.md, "File state").
 *
 *   bench_files gen DIR [--files N] [--file-size BYTES] [--seed S] [--kind random|mixed]
 *       N files of BYTES each under DIR/cam{0,1}/frames-NNN.bin. "random":
 *       incompressible bytes; "mixed": 64 KiB blocks alternately random and
 *       low-entropy (a 256-byte pattern repeated with every 16th byte
 *       random), which zstd -1 shrinks to about half overall.
 *   bench_files change DIR [--files N] [--file-size BYTES] [--runs R] [--run-bytes L] [--seed S]
 *       overwrites R runs of L bytes at scattered offsets of the files "gen"
 *       made (the same pattern as tests/integration/test_files.c).
 *   bench_files engine --root DIR [--id ID] [--listen ADDR] [--port P]
 *       [--alpha MS] [--max-rounds N] [--compression auto|off|on]
 *       [--user U --to URL [--append-rate B/s] [--modify-rate B/s]
 *        [--warmup-ms MS] [--kind random|mixed]] [--timeout-s S] [--verbose]
 *       A standalone engine with a file domain "files" at DIR and a light
 *       domain. Prints "url URL" once it listens. With --user and --to it is
 *       the source: it serves U (a writer thread records frames into
 *       1 MiB segment files under U/log/ at --append-rate and rewrites
 *       random 4 KiB pages of the 1 MiB U/state.bin at --modify-rate, only
 *       while the user is served), migrates U to URL, prints one "result"
 *       line with mig_migration_info() and timestamps, and exits. Without
 *       them it is a destination: it serves until SIGTERM, then prints a
 *       "dest" line (CPU time, arrival times).
 *   bench_files tcp-recv --out DIR [--listen ADDR] [--port P] [--fsync]
 *   bench_files tcp-send --to ADDR:PORT DIR
 *       The raw TCP baseline: the sender reads every file of DIR and sends
 *       it (a small header, then the bytes) on one TCP connection; the
 *       receiver writes the files under DIR and acknowledges with one byte
 *       once all are written and closed (with --fsync: and fsynced with
 *       their folders, as libmigrate installs). The sender prints the time from
 *       connect() to the acknowledgement.
 *
 * Links only the public shared library. Every mode is bounded by a watchdog. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <getopt.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
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
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <migrate/migrate.h>

#define MiB (1024u * 1024)
#define SEGMENT_BYTES (1024u * 1024)   /* writer: frames per segment file */
#define STATE_BYTES (1024u * 1024)     /* writer: the state file rewritten in place */
#define PAGE_BYTES 4096u
#define WRITER_TICK_US 10000u
#define COPY_BUF (256u * 1024)

static const char SECRET[] = "bench-files-cluster-secret-0123456789abcdef";

/* ------------------------------------------------------------------ utilities */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fputs("bench_files: ", stderr);
	vfprintf(stderr, fmt, ap);
	fputc('\n', stderr);
	va_end(ap);
	exit(1);
}

static uint64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static uint64_t wall_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void on_watchdog(int sig)
{
	(void)sig;
	static const char msg[] = "bench_files: watchdog: took too long, giving up\n";
	ssize_t n = write(2, msg, sizeof(msg) - 1);
	(void)n;
	_exit(3);
}

static void watchdog(unsigned seconds)
{
	signal(SIGALRM, on_watchdog);
	alarm(seconds);
}

static uint64_t parse_size(const char *s)
{
	char *end;
	double v = strtod(s, &end);
	if (end == s || v < 0)
		die("bad size '%s'", s);
	switch (*end) {
	case 'k': case 'K': v *= 1024; break;
	case 'm': case 'M': v *= 1024 * 1024; break;
	case 'g': case 'G': v *= 1024.0 * 1024 * 1024; break;
	case '\0': break;
	default: die("bad size '%s'", s);
	}
	return (uint64_t)v;
}

static uint64_t xorshift(uint64_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 7;
	*x ^= *x << 17;
	return *x;
}

static void fill_random(uint8_t *p, size_t len, uint64_t seed)
{
	uint64_t x = seed * 0x9E3779B97F4A7C15ull + 0x632BE59BD9B4E019ull;
	size_t i = 0;
	for (; i + 8 <= len; i += 8) {
		uint64_t v = xorshift(&x);
		memcpy(p + i, &v, 8);
	}
	for (; i < len; i++)
		p[i] = (uint8_t)xorshift(&x);
}

/* Low-entropy bytes: a 256-byte pattern repeated, every 16th byte random. */
static void fill_lowentropy(uint8_t *p, size_t len, uint64_t seed)
{
	uint8_t pattern[256];
	fill_random(pattern, sizeof(pattern), seed ^ 0xABCDEFull);
	uint64_t x = seed * 0xD1B54A32D192ED03ull + 1;
	for (size_t i = 0; i < len; i++)
		p[i] = (i & 15) == 15 ? (uint8_t)xorshift(&x) : pattern[i & 255];
}

enum kind { KIND_RANDOM, KIND_MIXED };

static enum kind parse_kind(const char *s)
{
	if (strcmp(s, "random") == 0)
		return KIND_RANDOM;
	if (strcmp(s, "mixed") == 0)
		return KIND_MIXED;
	die("unknown kind '%s' (random, mixed)", s);
}

/* `len` bytes that start at byte `offset` of a stream of this kind: mixed
 * alternates 64 KiB random and 64 KiB low-entropy blocks. */
static void fill_kind(uint8_t *p, size_t len, uint64_t seed, enum kind k, uint64_t offset)
{
	if (k == KIND_RANDOM) {
		fill_random(p, len, seed ^ offset);
		return;
	}
	const uint64_t block = 64 * 1024;
	while (len) {
		uint64_t in_block = offset % block;
		size_t n = (size_t)(block - in_block);
		if (n > len)
			n = len;
		uint64_t b = offset / block;
		if (b % 2 == 0)
			fill_random(p, n, seed * 1000003u + b);
		else
			fill_lowentropy(p, n, seed * 1000003u + b);
		p += n;
		len -= n;
		offset += n;
	}
}

static void mkdirs(const char *path)
{
	char tmp[2200];
	snprintf(tmp, sizeof(tmp), "%s", path);
	for (char *p = tmp + 1; *p; p++)
		if (*p == '/') {
			*p = '\0';
			mkdir(tmp, 0755);
			*p = '/';
		}
	mkdir(tmp, 0755);
}

static void write_all(int fd, const uint8_t *p, size_t len, const char *what)
{
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("%s: write: %s", what, strerror(errno));
		p += n;
		len -= (size_t)n;
	}
}

static void frame_path(char *out, size_t len, const char *dir, int i)
{
	snprintf(out, len, "%s/cam%d/frames-%03d.bin", dir, i % 2, i);
}

/* ------------------------------------------------------------------ gen, change */

static int cmd_gen(int argc, char **argv)
{
	int files = 8;
	uint64_t size = 8 * MiB, seed = 7;
	enum kind k = KIND_RANDOM;
	static const struct option lo[] = {
		{"files", required_argument, NULL, 'n'},
		{"file-size", required_argument, NULL, 's'},
		{"seed", required_argument, NULL, 'S'},
		{"kind", required_argument, NULL, 'k'},
		{NULL, 0, NULL, 0},
	};
	int opt;
	while ((opt = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (opt) {
		case 'n': files = atoi(optarg); break;
		case 's': size = parse_size(optarg); break;
		case 'S': seed = strtoull(optarg, NULL, 10); break;
		case 'k': k = parse_kind(optarg); break;
		default: return 2;
		}
	}
	if (optind != argc - 1)
		die("usage: gen DIR [--files N] [--file-size B] [--seed S] [--kind random|mixed]");
	const char *dir = argv[optind];
	uint8_t *buf = malloc(COPY_BUF * 4);
	if (!buf)
		die("out of memory");
	for (int i = 0; i < files; i++) {
		char p[1100], d[1100];
		frame_path(p, sizeof(p), dir, i);
		snprintf(d, sizeof(d), "%s", p);
		*strrchr(d, '/') = '\0';
		mkdirs(d);
		int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0)
			die("%s: %s", p, strerror(errno));
		for (uint64_t off = 0; off < size; off += COPY_BUF * 4) {
			size_t n = size - off < COPY_BUF * 4 ? (size_t)(size - off) : COPY_BUF * 4;
			fill_kind(buf, n, seed + (uint64_t)i * 7919u, k, off);
			write_all(fd, buf, n, p);
		}
		close(fd);
	}
	free(buf);
	return 0;
}

static int cmd_change(int argc, char **argv)
{
	int files = 8, runs = 64;
	uint64_t size = 8 * MiB, run = 10 * 1024, seed = 1000;
	static const struct option lo[] = {
		{"files", required_argument, NULL, 'n'},
		{"file-size", required_argument, NULL, 's'},
		{"runs", required_argument, NULL, 'r'},
		{"run-bytes", required_argument, NULL, 'b'},
		{"seed", required_argument, NULL, 'S'},
		{NULL, 0, NULL, 0},
	};
	int opt;
	while ((opt = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (opt) {
		case 'n': files = atoi(optarg); break;
		case 's': size = parse_size(optarg); break;
		case 'r': runs = atoi(optarg); break;
		case 'b': run = parse_size(optarg); break;
		case 'S': seed = strtoull(optarg, NULL, 10); break;
		default: return 2;
		}
	}
	if (optind != argc - 1 || files < 1 || run >= size)
		die("usage: change DIR [--files N] [--file-size B] [--runs R] [--run-bytes L]");
	const char *dir = argv[optind];
	uint8_t *buf = malloc(run);
	if (!buf)
		die("out of memory");
	for (int k = 0; k < runs; k++) {
		char p[1100];
		frame_path(p, sizeof(p), dir, k % files);
		int fd = open(p, O_WRONLY);
		if (fd < 0)
			die("%s: %s", p, strerror(errno));
		fill_random(buf, run, seed + (uint64_t)k);
		off_t off = (off_t)(((uint64_t)k * 7919u * 4099u) % (size - run));
		if (pwrite(fd, buf, run, off) != (ssize_t)run)
			die("%s: pwrite: %s", p, strerror(errno));
		close(fd);
	}
	free(buf);
	return 0;
}

/* ------------------------------------------------------------------ the app */

enum mark {
	MK_STARTED,   /* src: STARTED event */
	MK_PRECOPY,   /* src: first PROGRESS in phase precopy */
	MK_PAUSE,     /* src: pause hook */
	MK_FINAL,     /* src: first PROGRESS in phase final */
	MK_PREPARE,   /* src: first PROGRESS in phase prepare */
	MK_PREPARED,  /* src: PREPARED event */
	MK_COMMITTED, /* src: COMMITTED / ABORTED event */
	MK_INCOMING,  /* dst: INCOMING event */
	MK_ACTIVATE,  /* dst: activate hook */
	MK_COUNT,
};
static const char *const mark_names[MK_COUNT] = {
	"started", "precopy", "pause", "final", "prepare", "prepared", "committed",
	"incoming", "activate",
};

struct app {
	const char *id;
	char udir[1024]; /* ROOT/<user> of the source's user */
	bool verbose;
	enum kind kind;
	pthread_mutex_t lock;
	bool serving; /* the writer writes only while the user is served */
	uint64_t append_rate, modify_rate;
	uint64_t appended, modified; /* since the counters were last reset */
	uint64_t appended_at_pause, modified_at_pause;
	unsigned segment;
	uint64_t segment_len;
	atomic_bool stop;
	pthread_t writer;
	bool writer_running;
	uint64_t marks[MK_COUNT]; /* wall clock, microseconds */
	uint64_t round_wall[17];  /* first PROGRESS showing n rounds */
	int activated, dropped;
	char reason[256]; /* of the ABORTED or DROPPED event */
	uint64_t step; /* light state */
};

static void set_mark(struct app *a, enum mark m, uint64_t t)
{
	if (!a->marks[m])
		a->marks[m] = t ? t : wall_us();
}

static int extract_step(mig_engine *e, const char *user, mig_buf *out, void *ud)
{
	struct app *a = ud;
	return mig_buf_append(out, &a->step, sizeof(a->step));
}

static int merge_step(mig_engine *e, const char *user, uint32_t v, const void *d, size_t n,
		      void *ud)
{
	struct app *a = ud;
	if (n != sizeof(a->step))
		return -1;
	memcpy(&a->step, d, n);
	return 0;
}

static int on_pause(mig_engine *e, const char *user, void *ud)
{
	struct app *a = ud;
	pthread_mutex_lock(&a->lock);
	a->serving = false;
	a->appended_at_pause = a->appended;
	a->modified_at_pause = a->modified;
	pthread_mutex_unlock(&a->lock);
	set_mark(a, MK_PAUSE, 0);
	return 0;
}

static void on_resume(mig_engine *e, const char *user, void *ud)
{
	struct app *a = ud;
	pthread_mutex_lock(&a->lock);
	a->serving = true;
	pthread_mutex_unlock(&a->lock);
}

static void on_activate(mig_engine *e, const char *user, void *ud)
{
	struct app *a = ud;
	set_mark(a, MK_ACTIVATE, 0);
	a->activated++;
}

static void on_drop(mig_engine *e, const char *user, void *ud)
{
	struct app *a = ud;
	a->dropped++;
}

static void on_event(mig_engine *e, const mig_event *ev, void *ud)
{
	struct app *a = ud;
	uint64_t t = ev->time_us;
	switch (ev->type) {
	case MIG_EVENT_STARTED: set_mark(a, MK_STARTED, t); break;
	case MIG_EVENT_PREPARED: set_mark(a, MK_PREPARED, t); break;
	case MIG_EVENT_COMMITTED:
	case MIG_EVENT_ABORTED:
		set_mark(a, MK_COMMITTED, t);
		snprintf(a->reason, sizeof(a->reason), "%s", ev->reason ? ev->reason : "");
		break;
	case MIG_EVENT_DROPPED:
		snprintf(a->reason, sizeof(a->reason), "%s", ev->reason ? ev->reason : "");
		break;
	case MIG_EVENT_INCOMING: set_mark(a, MK_INCOMING, t); break;
	case MIG_EVENT_PROGRESS:
		if (ev->phase && strcmp(ev->phase, "precopy") == 0)
			set_mark(a, MK_PRECOPY, t);
		else if (ev->phase && strcmp(ev->phase, "final") == 0)
			set_mark(a, MK_FINAL, t);
		else if (ev->phase && strcmp(ev->phase, "prepare") == 0)
			set_mark(a, MK_PREPARE, t);
		if (ev->rounds < 17 && !a->round_wall[ev->rounds])
			a->round_wall[ev->rounds] = t;
		break;
	default: break;
	}
	if (a->verbose)
		fprintf(stderr, "%s event %d phase=%s rounds=%u sent=%" PRIu64 " t=%" PRIu64
				" err=%s %s\n",
			a->id, (int)ev->type, ev->phase ? ev->phase : "", ev->rounds, ev->bytes_sent,
			t, ev->error ? mig_err_name(ev->error) : "", ev->reason ? ev->reason : "");
}

static void on_log(mig_engine *e, mig_log_level level, const char *line, void *ud)
{
	struct app *a = ud;
	fprintf(stderr, "%s libmigrate[%d]: %s\n", a->id, (int)level, line);
}

/* ------------------------------------------------------------------ the writer */

/* Appends `len` bytes of frames to the current segment (a new one every
 * SEGMENT_BYTES). Called with the lock held, while serving. */
static void append_frames(struct app *a, uint8_t *buf, size_t len)
{
	while (len) {
		if (a->segment_len >= SEGMENT_BYTES) {
			a->segment++;
			a->segment_len = 0;
		}
		size_t n = len;
		if (n > SEGMENT_BYTES - a->segment_len)
			n = (size_t)(SEGMENT_BYTES - a->segment_len);
		char p[1200];
		snprintf(p, sizeof(p), "%s/log/seg-%06u.bin", a->udir, a->segment);
		int fd = open(p, O_WRONLY | O_CREAT | O_APPEND, 0644);
		if (fd < 0)
			die("%s: %s", p, strerror(errno));
		fill_kind(buf, n, 5000u + a->segment, a->kind, a->segment_len);
		write_all(fd, buf, n, p);
		close(fd);
		a->segment_len += n;
		a->appended += n;
		len -= n;
	}
}

static void modify_pages(struct app *a, uint8_t *buf, size_t pages, uint64_t *x)
{
	char p[1200];
	snprintf(p, sizeof(p), "%s/state.bin", a->udir);
	int fd = open(p, O_WRONLY);
	if (fd < 0)
		die("%s: %s", p, strerror(errno));
	for (size_t i = 0; i < pages; i++) {
		uint64_t page = xorshift(x) % (STATE_BYTES / PAGE_BYTES);
		fill_kind(buf, PAGE_BYTES, xorshift(x), a->kind, page * PAGE_BYTES);
		if (pwrite(fd, buf, PAGE_BYTES, (off_t)(page * PAGE_BYTES)) != PAGE_BYTES)
			die("%s: pwrite: %s", p, strerror(errno));
		a->modified += PAGE_BYTES;
	}
	close(fd);
}

static void *writer_main(void *arg)
{
	struct app *a = arg;
	uint8_t *buf = malloc(SEGMENT_BYTES);
	if (!buf)
		die("out of memory");
	uint64_t x = 0x1234567ull;
	uint64_t t0 = mono_us(), due_append = 0, due_modify = 0;
	uint64_t next = t0;
	while (!atomic_load(&a->stop)) {
		next += WRITER_TICK_US;
		uint64_t now = mono_us();
		if (next > now)
			usleep((useconds_t)(next - now));
		double el = (double)(mono_us() - t0) / 1e6;
		uint64_t want_a = (uint64_t)(el * (double)a->append_rate);
		uint64_t want_m = (uint64_t)(el * (double)a->modify_rate) / PAGE_BYTES;
		pthread_mutex_lock(&a->lock);
		if (a->serving) {
			if (want_a > due_append) {
				size_t n = (size_t)(want_a - due_append);
				if (n > SEGMENT_BYTES)
					n = SEGMENT_BYTES;
				append_frames(a, buf, n);
			}
			if (want_m > due_modify)
				modify_pages(a, buf, (size_t)(want_m - due_modify), &x);
		}
		/* Time not served is not made up afterwards. */
		due_append = want_a;
		due_modify = want_m;
		pthread_mutex_unlock(&a->lock);
	}
	free(buf);
	return NULL;
}

static void writer_start(struct app *a)
{
	char p[1200];
	snprintf(p, sizeof(p), "%s/log", a->udir);
	mkdirs(p);
	snprintf(p, sizeof(p), "%s/state.bin", a->udir);
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	if (fd < 0)
		die("%s: %s", p, strerror(errno));
	uint8_t *buf = malloc(STATE_BYTES);
	if (!buf)
		die("out of memory");
	fill_kind(buf, STATE_BYTES, 4242, a->kind, 0);
	write_all(fd, buf, STATE_BYTES, p);
	free(buf);
	close(fd);
	a->serving = true;
	if (pthread_create(&a->writer, NULL, writer_main, a) != 0)
		die("pthread_create failed");
	a->writer_running = true;
}

static void writer_stop(struct app *a)
{
	if (!a->writer_running)
		return;
	atomic_store(&a->stop, true);
	pthread_join(a->writer, NULL);
	a->writer_running = false;
}

/* ------------------------------------------------------------------ engine mode */

static volatile sig_atomic_t g_term;

static void on_term(int sig)
{
	(void)sig;
	g_term = 1;
}

static uint64_t cpu_us(const struct rusage *r, bool user)
{
	const struct timeval *tv = user ? &r->ru_utime : &r->ru_stime;
	return (uint64_t)tv->tv_sec * 1000000u + (uint64_t)tv->tv_usec;
}

/* " reason=..." with blanks as '_', so the line stays key=value. */
static void print_reason(const char *r)
{
	if (!*r)
		return;
	printf(" reason=");
	for (; *r; r++)
		putchar(*r == ' ' || *r == '\t' || *r == '\n' ? '_' : *r);
}

static void print_rel(const char *name, uint64_t t, uint64_t t0)
{
	if (t)
		printf(" t_%s=%" PRId64, name, (int64_t)(t - t0));
}

static int cmd_engine(int argc, char **argv)
{
	struct app a;
	memset(&a, 0, sizeof(a));
	pthread_mutex_init(&a.lock, NULL);
	atomic_init(&a.stop, false);
	a.id = "engine";
	const char *root = NULL, *listen = "127.0.0.1", *user = NULL, *to = NULL;
	int port = 0, compression = MIG_COMPRESSION_AUTO;
	unsigned alpha = 0, max_rounds = 0, timeout_s = 300, workers = 0;
	unsigned warmup_ms = 0;
	static const struct option lo[] = {
		{"root", required_argument, NULL, 'r'},
		{"id", required_argument, NULL, 'i'},
		{"listen", required_argument, NULL, 'l'},
		{"port", required_argument, NULL, 'p'},
		{"alpha", required_argument, NULL, 'a'},
		{"max-rounds", required_argument, NULL, 'm'},
		{"compression", required_argument, NULL, 'c'},
		{"workers", required_argument, NULL, 'w'},
		{"user", required_argument, NULL, 'u'},
		{"to", required_argument, NULL, 't'},
		{"append-rate", required_argument, NULL, 'A'},
		{"modify-rate", required_argument, NULL, 'M'},
		{"warmup-ms", required_argument, NULL, 'W'},
		{"kind", required_argument, NULL, 'k'},
		{"timeout-s", required_argument, NULL, 'T'},
		{"verbose", no_argument, NULL, 'v'},
		{NULL, 0, NULL, 0},
	};
	int opt;
	while ((opt = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (opt) {
		case 'r': root = optarg; break;
		case 'i': a.id = optarg; break;
		case 'l': listen = optarg; break;
		case 'p': port = atoi(optarg); break;
		case 'a': alpha = (unsigned)atoi(optarg); break;
		case 'm': max_rounds = (unsigned)atoi(optarg); break;
		case 'c':
			if (strcmp(optarg, "auto") == 0)
				compression = MIG_COMPRESSION_AUTO;
			else if (strcmp(optarg, "off") == 0)
				compression = MIG_COMPRESSION_OFF;
			else if (strcmp(optarg, "on") == 0)
				compression = MIG_COMPRESSION_ON;
			else
				die("--compression auto|off|on");
			break;
		case 'w': workers = (unsigned)atoi(optarg); break;
		case 'u': user = optarg; break;
		case 't': to = optarg; break;
		case 'A': a.append_rate = parse_size(optarg); break;
		case 'M': a.modify_rate = parse_size(optarg); break;
		case 'W': warmup_ms = (unsigned)atoi(optarg); break;
		case 'k': a.kind = parse_kind(optarg); break;
		case 'T': timeout_s = (unsigned)atoi(optarg); break;
		case 'v': a.verbose = true; break;
		default: return 2;
		}
	}
	if (!root || (!user) != (!to))
		die("usage: engine --root DIR [--user U --to URL] ...");
	watchdog(timeout_s);
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);

	mig_engine_options o;
	memset(&o, 0, sizeof(o));
	o.listen_address = listen;
	o.listen_port = port;
	o.engine_id = a.id;
	o.secret = SECRET;
	o.secret_len = strlen(SECRET);
	o.peer_timeout_ms = 30000;
	o.precopy_alpha_ms = alpha;
	o.precopy_max_rounds = max_rounds;
	o.compression = compression;
	o.worker_threads = workers;
	o.metrics_off = 1;
	o.on_event = on_event;
	o.on_log = on_log;
	o.log_level = MIG_LOG_WARN;
	o.user_data = &a;
	mig_engine *e = NULL;
	int rc = mig_engine_new(&e, &o);
	if (rc)
		die("mig_engine_new: %s", mig_strerror(rc));
	mig_hooks h = {.pause = on_pause, .resume = on_resume, .activate = on_activate,
		       .drop = on_drop};
	mig_light_domain ld = {"progress", "bench.Step", 1, extract_step, merge_step};
	mig_file_domain fd = {"files", 1, root, 0};
	if ((rc = mig_engine_set_hooks(e, &h, &a)) || (rc = mig_light_domain_register(e, &ld, &a)) ||
	    (rc = mig_file_domain_register(e, &fd)) || (rc = mig_engine_start(e)))
		die("engine setup: %s: %s", mig_strerror(rc), mig_engine_last_error(e));
	printf("url %s\n", mig_engine_url(e));
	fflush(stdout);

	if (!user) {
		/* Destination: serve until told to stop. */
		while (!g_term)
			if (mig_engine_run(e, 50) != 0)
				die("dispatch failed");
		struct rusage ru;
		getrusage(RUSAGE_SELF, &ru);
		printf("dest activated=%d dropped=%d cpu_user_us=%" PRIu64 " cpu_sys_us=%" PRIu64
		       " w_incoming=%" PRIu64 " w_activate=%" PRIu64,
		       a.activated, a.dropped, cpu_us(&ru, true), cpu_us(&ru, false),
		       a.marks[MK_INCOMING], a.marks[MK_ACTIVATE]);
		print_reason(a.reason);
		printf("\n");
		fflush(stdout);
		mig_engine_free(e);
		return 0;
	}

	/* Source. */
	snprintf(a.udir, sizeof(a.udir), "%s/%s", root, user);
	if ((rc = mig_user_add(e, user)) != 0)
		die("mig_user_add: %s", mig_strerror(rc));
	if (a.append_rate || a.modify_rate)
		writer_start(&a);
	if (warmup_ms)
		mig_engine_run(e, (int)warmup_ms);
	pthread_mutex_lock(&a.lock);
	a.appended = a.modified = 0;
	pthread_mutex_unlock(&a.lock);
	struct rusage r0, r1;
	getrusage(RUSAGE_SELF, &r0);
	uint64_t t0 = wall_us(), m0 = mono_us();
	mig_migration *m = NULL;
	if ((rc = mig_migrate(e, user, to, &m)) != 0)
		die("mig_migrate: %s: %s", mig_strerror(rc), mig_engine_last_error(e));
	rc = mig_migration_wait(m, (int)(timeout_s * 1000));
	uint64_t elapsed = mono_us() - m0;
	getrusage(RUSAGE_SELF, &r1);
	writer_stop(&a);
	mig_migration_stats st;
	mig_migration_info(m, &st);
	printf("result state=%s err=%s bytes_sent=%" PRIu64 " bytes_received=%" PRIu64
	       " duration_us=%" PRIu64 " downtime_us=%" PRIu64 " rounds=%u wall_us=%" PRIu64
	       " appended=%" PRIu64 " modified=%" PRIu64 " cpu_user_us=%" PRIu64
	       " cpu_sys_us=%" PRIu64 " w_start=%" PRIu64,
	       st.state == MIG_MIGRATION_COMMITTED ? "committed"
	       : st.state == MIG_MIGRATION_ABORTED ? "aborted" : "running",
	       rc ? mig_err_name(rc) : "0", st.bytes_sent, st.bytes_received, st.duration_us,
	       st.downtime_us, st.rounds, elapsed, a.appended_at_pause, a.modified_at_pause,
	       cpu_us(&r1, true) - cpu_us(&r0, true), cpu_us(&r1, false) - cpu_us(&r0, false), t0);
	printf(" round_bytes=");
	for (unsigned i = 0; i < st.rounds && i < 16; i++)
		printf("%s%" PRIu64, i ? "," : "", st.round_bytes[i]);
	for (int k = 0; k < MK_COUNT; k++)
		print_rel(mark_names[k], a.marks[k], t0);
	printf(" t_rounds=");
	for (unsigned i = 1; i <= st.rounds && i < 17; i++)
		printf("%s%" PRId64, i > 1 ? "," : "",
		       a.round_wall[i] ? (int64_t)(a.round_wall[i] - t0) : -1);
	print_reason(a.reason);
	printf("\n");
	fflush(stdout);
	/* Let the release (folder into the cache) finish before exiting. */
	mig_engine_run(e, 100);
	mig_migration_free(m);
	mig_engine_free(e);
	return st.state == MIG_MIGRATION_COMMITTED ? 0 : 1;
}

/* ------------------------------------------------------------------ raw TCP copy */

static int listen_on(const char *addr, int port, int *bound_port)
{
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (s < 0)
		die("socket: %s", strerror(errno));
	int one = 1;
	setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	struct sockaddr_in sin;
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)port);
	if (inet_pton(AF_INET, addr, &sin.sin_addr) != 1)
		die("bad address %s", addr);
	if (bind(s, (struct sockaddr *)&sin, sizeof(sin)) != 0 || listen(s, 1) != 0)
		die("bind %s:%d: %s", addr, port, strerror(errno));
	socklen_t sl = sizeof(sin);
	getsockname(s, (struct sockaddr *)&sin, &sl);
	*bound_port = ntohs(sin.sin_port);
	return s;
}

static void read_exact(int fd, void *p, size_t len)
{
	uint8_t *b = p;
	while (len) {
		ssize_t n = read(fd, b, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("read: %s", n ? strerror(errno) : "connection closed");
		b += n;
		len -= (size_t)n;
	}
}

static int cmd_tcp_recv(int argc, char **argv)
{
	const char *out = NULL, *addr = "127.0.0.1";
	int port = 0, do_fsync = 0;
	static const struct option lo[] = {
		{"fsync", no_argument, NULL, 'f'},
		{"out", required_argument, NULL, 'o'},
		{"listen", required_argument, NULL, 'l'},
		{"port", required_argument, NULL, 'p'},
		{NULL, 0, NULL, 0},
	};
	int opt;
	while ((opt = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (opt) {
		case 'f': do_fsync = 1; break;
		case 'o': out = optarg; break;
		case 'l': addr = optarg; break;
		case 'p': port = atoi(optarg); break;
		default: return 2;
		}
	}
	if (!out)
		die("usage: tcp-recv --out DIR [--listen ADDR] [--port P] [--fsync]");
	watchdog(300);
	int bound;
	int ls = listen_on(addr, port, &bound);
	printf("port %d\n", bound);
	fflush(stdout);
	int c = accept(ls, NULL, NULL);
	if (c < 0)
		die("accept: %s", strerror(errno));
	uint8_t *buf = malloc(COPY_BUF);
	if (!buf)
		die("out of memory");
	uint64_t total = 0;
	unsigned files = 0;
	char **written = NULL;
	for (;;) {
		uint16_t plen;
		read_exact(c, &plen, sizeof(plen));
		if (!plen)
			break;
		char rel[1024], p[2100], d[2100];
		if (plen >= sizeof(rel))
			die("path too long");
		read_exact(c, rel, plen);
		rel[plen] = '\0';
		if (strstr(rel, ".."))
			die("bad path");
		uint64_t size;
		read_exact(c, &size, sizeof(size));
		snprintf(p, sizeof(p), "%s/%s", out, rel);
		snprintf(d, sizeof(d), "%s", p);
		*strrchr(d, '/') = '\0';
		mkdirs(d);
		int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0)
			die("%s: %s", p, strerror(errno));
		for (uint64_t left = size; left;) {
			size_t want = left < COPY_BUF ? (size_t)left : COPY_BUF;
			ssize_t n = read(c, buf, want);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				die("read: %s", n ? strerror(errno) : "connection closed");
			write_all(fd, buf, (size_t)n, p);
			left -= (uint64_t)n;
		}
		if (do_fsync) {
			/* As libmigrate's install: start the writeback of every
			 * file, then fsync them all and their folders. */
			sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE);
			written = realloc(written, (files + 1) * sizeof(*written));
			if (!written || !(written[files] = strdup(p)))
				die("out of memory");
		}
		close(fd);
		total += size;
		files++;
	}
	for (unsigned i = 0; do_fsync && i < files; i++) {
		for (int dir = 0; dir < 2; dir++) {
			if (dir)
				*strrchr(written[i], '/') = '\0';
			int fd = open(written[i], O_RDONLY);
			if (fd < 0 || fsync(fd) != 0)
				die("fsync %s: %s", written[i], strerror(errno));
			close(fd);
		}
		free(written[i]);
	}
	free(written);
	uint8_t ack = 1;
	write_all(c, &ack, 1, "ack");
	close(c);
	close(ls);
	free(buf);
	printf("tcp-recv files=%u bytes=%" PRIu64 "\n", files, total);
	return 0;
}

/* Files under a directory, sorted. */
static char **g_paths;
static size_t g_npaths, g_cap;
static const char *g_base;

static int collect(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	if (flag != FTW_F)
		return 0;
	if (g_npaths == g_cap) {
		g_cap = g_cap ? 2 * g_cap : 64;
		g_paths = realloc(g_paths, g_cap * sizeof(*g_paths));
		if (!g_paths)
			die("out of memory");
	}
	g_paths[g_npaths++] = strdup(p + strlen(g_base) + 1);
	return 0;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmd_tcp_send(int argc, char **argv)
{
	if (argc != 4 || strcmp(argv[1], "--to") != 0)
		die("usage: tcp-send --to ADDR:PORT DIR");
	watchdog(300);
	char host[256];
	snprintf(host, sizeof(host), "%s", argv[2]);
	char *colon = strrchr(host, ':');
	if (!colon)
		die("--to ADDR:PORT");
	*colon = '\0';
	int port = atoi(colon + 1);
	g_base = argv[3];
	if (nftw(g_base, collect, 16, FTW_PHYS) != 0)
		die("%s: cannot list", g_base);
	qsort(g_paths, g_npaths, sizeof(*g_paths), cmp_str);
	uint8_t *buf = malloc(COPY_BUF);
	if (!buf)
		die("out of memory");

	uint64_t t0 = mono_us();
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sin;
	memset(&sin, 0, sizeof(sin));
	sin.sin_family = AF_INET;
	sin.sin_port = htons((uint16_t)port);
	if (inet_pton(AF_INET, host, &sin.sin_addr) != 1)
		die("bad address %s", host);
	if (connect(s, (struct sockaddr *)&sin, sizeof(sin)) != 0)
		die("connect %s:%d: %s", host, port, strerror(errno));
	uint64_t total = 0;
	for (size_t i = 0; i < g_npaths; i++) {
		char p[2100];
		snprintf(p, sizeof(p), "%s/%s", g_base, g_paths[i]);
		int fd = open(p, O_RDONLY);
		struct stat st;
		if (fd < 0 || fstat(fd, &st) != 0)
			die("%s: %s", p, strerror(errno));
		uint16_t plen = (uint16_t)strlen(g_paths[i]);
		uint64_t size = (uint64_t)st.st_size;
		write_all(s, (uint8_t *)&plen, sizeof(plen), "send");
		write_all(s, (uint8_t *)g_paths[i], plen, "send");
		write_all(s, (uint8_t *)&size, sizeof(size), "send");
		for (uint64_t left = size; left;) {
			ssize_t n = read(fd, buf, left < COPY_BUF ? (size_t)left : COPY_BUF);
			if (n <= 0)
				die("%s: read: %s", p, n ? strerror(errno) : "file shrank");
			write_all(s, buf, (size_t)n, "send");
			left -= (uint64_t)n;
		}
		close(fd);
		total += size;
	}
	uint16_t end = 0;
	write_all(s, (uint8_t *)&end, sizeof(end), "send");
	uint8_t ack;
	read_exact(s, &ack, 1);
	uint64_t el = mono_us() - t0;
	close(s);
	printf("tcp files=%zu bytes=%" PRIu64 " time_us=%" PRIu64 "\n", g_npaths, total, el);
	free(buf);
	return 0;
}

/* ------------------------------------------------------------------ main */

int main(int argc, char **argv)
{
	if (argc < 2)
		die("usage: bench_files gen|change|engine|tcp-recv|tcp-send ... (see the source)");
	const char *cmd = argv[1];
	argv++;
	argc--;
	if (strcmp(cmd, "gen") == 0)
		return cmd_gen(argc, argv);
	if (strcmp(cmd, "change") == 0)
		return cmd_change(argc, argv);
	if (strcmp(cmd, "engine") == 0)
		return cmd_engine(argc, argv);
	if (strcmp(cmd, "tcp-recv") == 0)
		return cmd_tcp_recv(argc, argv);
	if (strcmp(cmd, "tcp-send") == 0)
		return cmd_tcp_send(argc, argv);
	die("unknown command %s", cmd);
}
