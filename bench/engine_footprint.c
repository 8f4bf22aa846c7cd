/* engine_footprint: where an idle engine's memory and CPU go
 * (bench/bench_sandwich.sh, docs/BENCHMARKS.md, "Cost to the application").
 *
 *   engine_footprint [--users 50] [--idle-s 5]
 *
 * Builds the engine the way examples/sandwich/sandwich_server.c does (cluster
 * secret, app URL, log level WARN, one light domain, one append-only file
 * domain, six hooks) and prints, after each stage, one JSON line with the
 * process's VmRSS, RssAnon and RssFile (kB), the heap bytes in use
 * (mallinfo2), the thread count, and the mappings whose RSS changed most
 * since the stage before (/proc/self/smaps):
 *
 *   start       main() reached (shared libraries mapped and relocated,
 *               little else touched)
 *   new         mig_engine_new()
 *   domains     light and file domains registered, hooks set
 *   started     mig_engine_start(): the libwebsockets context (listening,
 *               ws://, so OpenSSL is not initialised), the I/O thread and two
 *               worker threads
 *   idle        after --idle-s s of idle dispatching (the app's loop: epoll on
 *               mig_engine_fd(), one dispatch per second when nothing comes);
 *               this line also has each thread's CPU over the idle time (ms,
 *               /proc/self/task/TID/schedstat) and wake-ups (context switches)
 *   users       --users users added, and a session token minted for each
 *               (what the sandwich server does on a new user's Hello): the
 *               first token derives the session key, libcrypto's first use
 *   tls         OPENSSL_init_ssl() and a client SSL_CTX made and freed: what
 *               the engine's first wss:// connect adds (it makes both then)
 *
 * Links the public shared library (and libssl for the tls stage). */
#include <dirent.h>
#include <inttypes.h>
#include <malloc.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include <migrate/migrate.h>

#define MAXMAP 256

struct maps {
	char name[MAXMAP][96];
	long rss[MAXMAP];
	int n;
};

static long status_kb(const char *key)
{
	FILE *f = fopen("/proc/self/status", "r");
	char line[256];
	long v = -1;
	size_t n = strlen(key);
	while (f && fgets(line, sizeof(line), f))
		if (strncmp(line, key, n) == 0 && line[n] == ':')
			v = strtol(line + n + 1, NULL, 10);
	if (f)
		fclose(f);
	return v;
}

static void read_maps(struct maps *m)
{
	memset(m, 0, sizeof(*m));
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512], cur[96] = "";
	while (f && fgets(line, sizeof(line), f)) {
		unsigned long lo, hi;
		char perms[8], path[400] = "";
		if (sscanf(line, "%lx-%lx %7s %*s %*s %*s %399[^\n]", &lo, &hi, perms, path) >= 3) {
			char *p = path;
			while (*p == ' ')
				p++;
			const char *base = strrchr(p, '/');
			snprintf(cur, sizeof(cur), "%s", *p ? (base ? base + 1 : p) : "[anon]");
		} else if (strncmp(line, "Rss:", 4) == 0) {
			long kb = strtol(line + 4, NULL, 10);
			int i;
			for (i = 0; i < m->n; i++)
				if (strcmp(m->name[i], cur) == 0)
					break;
			if (i == m->n && m->n < MAXMAP)
				snprintf(m->name[m->n++], sizeof(m->name[0]), "%s", cur);
			if (i < MAXMAP)
				m->rss[i] += kb;
		}
	}
	if (f)
		fclose(f);
}

static long maps_get(const struct maps *m, const char *name)
{
	for (int i = 0; i < m->n; i++)
		if (strcmp(m->name[i], name) == 0)
			return m->rss[i];
	return 0;
}

static struct maps prev_maps;

/* One JSON line: totals now, and the mappings that changed most. */
static void stage(const char *name, const char *extra)
{
	struct maps now;
	read_maps(&now);
	struct mallinfo2 mi = mallinfo2();
	printf("{\"stage\":\"%s\",\"VmRSS\":%ld,\"RssAnon\":%ld,\"RssFile\":%ld,\"Threads\":%ld,"
	       "\"heap_in_use\":%zu,\"heap_arena\":%zu,\"mmapped\":%zu,\"delta\":{",
	       name, status_kb("VmRSS"), status_kb("RssAnon"), status_kb("RssFile"),
	       status_kb("Threads"), mi.uordblks, mi.arena, mi.hblkhd);
	/* every mapping whose RSS moved by 8 kB or more, largest first */
	bool used[MAXMAP * 2] = {0};
	int printed = 0;
	for (;;) {
		long best = 0;
		int bi = -1;
		const char *bname = NULL;
		for (int i = 0; i < now.n; i++) {
			long d = now.rss[i] - maps_get(&prev_maps, now.name[i]);
			if (!used[i] && labs(d) >= 8 && labs(d) > labs(best)) {
				best = d;
				bi = i;
				bname = now.name[i];
			}
		}
		for (int i = 0; i < prev_maps.n; i++) {
			long d = -prev_maps.rss[i];
			if (!used[MAXMAP + i] && maps_get(&now, prev_maps.name[i]) == 0 && labs(d) >= 8 &&
			    labs(d) > labs(best)) {
				best = d;
				bi = MAXMAP + i;
				bname = prev_maps.name[i];
			}
		}
		if (bi < 0)
			break;
		used[bi] = true;
		printf("%s\"%s\":%ld", printed++ ? "," : "", bname, best);
	}
	printf("}%s%s}\n", extra ? "," : "", extra ? extra : "");
	fflush(stdout);
	prev_maps = now;
}

/* ---------------------------------------------------------------- the engine's callbacks */

static int extract(mig_engine *e, const char *user, mig_buf *out, void *ud)
{
	return mig_buf_append(out, "x", 1);
}
static int merge(mig_engine *e, const char *user, uint32_t version, const void *data, size_t len,
		 void *ud)
{
	return 0;
}
static int on_pause(mig_engine *e, const char *user, void *ud)
{
	return 0;
}
static void on_user(mig_engine *e, const char *user, void *ud)
{
}
static int on_incoming(mig_engine *e, const char *user, void *ud)
{
	return 0;
}

/* ---------------------------------------------------------------- threads' CPU */

struct tcpu {
	int tid;
	unsigned long long ns, switches;
};

static int read_threads(struct tcpu *t, int max)
{
	DIR *d = opendir("/proc/self/task");
	struct dirent *de;
	int n = 0;
	while (d && (de = readdir(d)) && n < max) {
		if (de->d_name[0] == '.')
			continue;
		char path[300];
		snprintf(path, sizeof(path), "/proc/self/task/%s/schedstat", de->d_name);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		unsigned long long run = 0, wait = 0, slices = 0;
		if (fscanf(f, "%llu %llu %llu", &run, &wait, &slices) == 3) {
			t[n].tid = atoi(de->d_name);
			t[n].ns = run;
			t[n].switches = slices;
			n++;
		}
		fclose(f);
	}
	if (d)
		closedir(d);
	return n;
}

int main(int argc, char **argv)
{
	int nusers = 50, idle_s = 5;
	for (int i = 1; i + 1 < argc; i += 2) {
		if (strcmp(argv[i], "--users") == 0)
			nusers = atoi(argv[i + 1]);
		else if (strcmp(argv[i], "--idle-s") == 0)
			idle_s = atoi(argv[i + 1]);
		else {
			fprintf(stderr, "usage: engine_footprint [--users 50] [--idle-s 5]\n");
			return 2;
		}
	}
	char root[] = "/tmp/engine-footprint.XXXXXX";
	if (!mkdtemp(root))
		return 1;

	read_maps(&prev_maps);
	stage("start", NULL);

	static const char secret[] = "0123456789abcdef0123456789abcdef";
	mig_engine_options o = {0};
	o.listen_address = "127.0.0.1";
	o.engine_id = "F";
	o.secret = secret;
	o.secret_len = sizeof(secret) - 1;
	o.app_url = "tcp://127.0.0.1:1";
	o.log_level = MIG_LOG_WARN;
	mig_engine *e;
	int rc = mig_engine_new(&e, &o);
	if (rc) {
		fprintf(stderr, "engine_footprint: %s\n", mig_strerror(rc));
		return 1;
	}
	stage("new", NULL);

	mig_light_domain light = {"progress", "sandwich.Progress", 1, extract, merge};
	mig_file_domain files = {.name = "frames", .version = 1, .root = root, .append_only = 1};
	mig_hooks hooks = {.pause = on_pause,
			   .resume = on_user,
			   .release = on_user,
			   .incoming = on_incoming,
			   .activate = on_user,
			   .drop = on_user};
	if (mig_light_domain_register(e, &light, NULL) || mig_file_domain_register(e, &files) ||
	    mig_engine_set_hooks(e, &hooks, NULL)) {
		fprintf(stderr, "engine_footprint: %s\n", mig_engine_last_error(e));
		return 1;
	}
	stage("domains", NULL);

	if ((rc = mig_engine_start(e))) {
		fprintf(stderr, "engine_footprint: %s: %s\n", mig_strerror(rc), mig_engine_last_error(e));
		return 1;
	}
	stage("started", NULL);

	/* Idle, as the app's loop would be: epoll on the engine's fd, and one
	 * dispatch per second when nothing comes. */
	struct tcpu t0[64], t1[64];
	int n0 = read_threads(t0, 64);
	struct timespec a, b;
	clock_gettime(CLOCK_MONOTONIC, &a);
	int ep = epoll_create1(0);
	struct epoll_event ev = {.events = EPOLLIN};
	epoll_ctl(ep, EPOLL_CTL_ADD, mig_engine_fd(e), &ev);
	unsigned long dispatches = 0, woken = 0;
	for (;;) {
		clock_gettime(CLOCK_MONOTONIC, &b);
		double el = (double)(b.tv_sec - a.tv_sec) + (double)(b.tv_nsec - a.tv_nsec) / 1e9;
		if (el >= idle_s)
			break;
		int left = (int)((idle_s - el) * 1000) + 1;
		int n = epoll_wait(ep, &ev, 1, left < 1000 ? left : 1000);
		woken += n > 0;
		mig_engine_dispatch(e);
		dispatches++;
	}
	int n1 = read_threads(t1, 64);
	char extra[2048];
	size_t off = (size_t)snprintf(extra, sizeof(extra),
				      "\"idle_s\":%d,\"dispatches\":%lu,\"engine_fd_wakeups\":%lu,"
				      "\"threads_idle\":[",
				      idle_s, dispatches, woken);
	for (int i = 0; i < n1 && off < sizeof(extra); i++) {
		unsigned long long ns0 = 0, sw0 = 0;
		for (int j = 0; j < n0; j++)
			if (t0[j].tid == t1[i].tid) {
				ns0 = t0[j].ns;
				sw0 = t0[j].switches;
			}
		off += (size_t)snprintf(extra + off, sizeof(extra) - off,
					"%s{\"main\":%s,\"cpu_ms\":%.3f,\"wakeups\":%llu}", i ? "," : "",
					t1[i].tid == getpid() ? "true" : "false",
					(double)(t1[i].ns - ns0) / 1e6, t1[i].switches - sw0);
	}
	if (off < sizeof(extra))
		snprintf(extra + off, sizeof(extra) - off, "]");
	stage("idle", extra);

	char token[MIG_SESSION_TOKEN_MAX];
	for (int i = 0; i < nusers; i++) {
		char user[32];
		snprintf(user, sizeof(user), "u-%03d", i);
		if (mig_user_add(e, user) || mig_session_token(e, user, token, sizeof(token)))
			fprintf(stderr, "engine_footprint: user %s: %s\n", user, mig_engine_last_error(e));
	}
	mig_engine_dispatch(e);
	stage("users", NULL);

	OPENSSL_init_ssl(OPENSSL_INIT_LOAD_SSL_STRINGS | OPENSSL_INIT_LOAD_CRYPTO_STRINGS, NULL);
	SSL_CTX_free(SSL_CTX_new(TLS_client_method()));
	stage("tls", NULL);

	mig_engine_free(e);
	close(ep);
	rmdir(root);
	return 0;
}
