/* The soak: one user with light and file state makes A -> B -> A trips
 * between two engines in this process, over and over, while 100 other users'
 * session clients stay attached to A; the moving user's own client follows
 * every redirect. Resident memory (VmRSS) is read at the start, at a
 * checkpoint trip and at the last trip, and the growth between the
 * checkpoint and the end must stay under a bound.
 *
 *   soak [--trips N] [--checkpoint K] [--max-growth PCT] [--users U] [--dir D]
 *
 * Defaults: 1000 trips, checkpoint at trip 100, 1 % growth, 100 users
 * (docs/RELIABILITY.md, "Soak"); the file roots go in a fresh folder under
 * D (default /tmp). Every trip changes some bytes of the
 * user's files and light state at the engine that serves it, and every leg
 * checks them byte for byte at the destination, the hooks that ran, the user
 * states on both engines, and where the clients are attached.
 *
 * All of the library's allocations go through a counting allocator
 * (mig_set_allocator), so the report also gives the library's own live
 * bytes: RSS growth that is not the library's shows there. One thread
 * dispatches both engines and every client from one poll loop.
 *
 * Exit status: 0 if every check held and the growth is under the bound. */
#include <errno.h>
#include <ftw.h>
#include <getopt.h>
#include <malloc.h>
#include <poll.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <migrate/client.h>
#include <migrate/migrate.h>

#define SECRET "soak-cluster-secret-0123456789abcdef"
#define MOVER "mover"
#define NFILES 4
#define FILE_BYTES (16 * 1024)
#define LIGHT_BYTES 256
#define CHANGE_BYTES 64
#define LEG_TIMEOUT_MS 30000
#define ATTACH_TIMEOUT_MS 60000

/* ------------------------------------------------------------------ util */

static char base[256]; /* the run's folder, removed at exit */

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	return remove(p);
}

static void cleanup(void)
{
	if (base[0])
		nftw(base, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "soak: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static long rss_kib(void)
{
	FILE *f = fopen("/proc/self/status", "r");
	if (!f)
		return -1;
	char line[256];
	long kib = -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "VmRSS: %ld kB", &kib) == 1)
			break;
	fclose(f);
	return kib;
}

/* Where the resident memory is: the main heap ([heap]), anonymous mappings
 * (other threads' malloc arenas, stacks, large blocks malloc mmaps) and
 * everything else (code, libraries, files), in KiB; and what malloc holds
 * from the system against what is in use. For the report only. */
struct mem_split {
	long heap_kib, anon_kib, other_kib;
	size_t malloc_held, malloc_in_use;
};

static void mem_split(struct mem_split *m)
{
	memset(m, 0, sizeof(*m));
	struct mallinfo2 mi = mallinfo2();
	m->malloc_held = mi.arena + mi.hblkhd;
	m->malloc_in_use = mi.uordblks + mi.hblkhd;
	FILE *f = fopen("/proc/self/smaps", "r");
	if (!f)
		return;
	char line[512];
	long *cur = &m->other_kib;
	while (fgets(line, sizeof(line), f)) {
		long kib;
		unsigned long lo, hi;
		char path[256] = "";
		if (sscanf(line, "%lx-%lx %*s %*s %*s %*s %255s", &lo, &hi, path) >= 2) {
			cur = strcmp(path, "[heap]") == 0 ? &m->heap_kib
			      : path[0] == '\0'            ? &m->anon_kib
							   : &m->other_kib;
		} else if (sscanf(line, "Rss: %ld kB", &kib) == 1) {
			*cur += kib;
		}
	}
	fclose(f);
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next_rand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

/* ------------------------------------------------------------------ allocator */

typedef union hdr {
	size_t size;
	max_align_t align;
} hdr;

static atomic_long lib_live_bytes;
static atomic_long lib_live_blocks;

static void *c_malloc(size_t n)
{
	hdr *h = malloc(sizeof(hdr) + n);
	if (!h)
		return NULL;
	h->size = n;
	atomic_fetch_add(&lib_live_bytes, (long)n);
	atomic_fetch_add(&lib_live_blocks, 1);
	return h + 1;
}

static void *c_realloc(void *p, size_t n)
{
	if (!p)
		return c_malloc(n);
	hdr *h = (hdr *)p - 1;
	size_t old = h->size;
	hdr *nh = realloc(h, sizeof(hdr) + n);
	if (!nh)
		return NULL;
	nh->size = n;
	atomic_fetch_add(&lib_live_bytes, (long)n - (long)old);
	return nh + 1;
}

static void c_free(void *p)
{
	if (!p)
		return;
	hdr *h = (hdr *)p - 1;
	atomic_fetch_sub(&lib_live_bytes, (long)h->size);
	atomic_fetch_sub(&lib_live_blocks, 1);
	free(h);
}

/* ------------------------------------------------------------------ the app */

/* What the app keeps of the moving user, per engine. Callbacks run inside
 * dispatch on the soak's only thread. */
struct app {
	const char *name;
	char root[300];
	bool present, serving, paused;
	uint8_t light[LIGHT_BYTES];
	int paused_n, resumed, released, incoming, activated, dropped;
	int aborted;
	char last_abort[256];
};

static struct app apps[2];

static struct app *app_of(void *ud)
{
	return ud;
}

static int extract(mig_engine *e, const char *user, mig_buf *out, void *ud)
{
	struct app *a = app_of(ud);
	if (strcmp(user, MOVER) != 0 || !a->present || !a->paused)
		die("%s: extract of %s in the wrong state", a->name, user);
	return mig_buf_append(out, a->light, sizeof(a->light));
}

static int merge(mig_engine *e, const char *user, uint32_t v, const void *d, size_t n, void *ud)
{
	struct app *a = app_of(ud);
	if (strcmp(user, MOVER) != 0 || a->serving || n != sizeof(a->light))
		die("%s: merge of %s (%zu bytes) in the wrong state", a->name, user, n);
	memcpy(a->light, d, n);
	a->present = true;
	return 0;
}

static int on_pause(mig_engine *e, const char *user, void *ud)
{
	struct app *a = app_of(ud);
	if (!a->serving)
		die("%s: pause of %s which is not served", a->name, user);
	a->serving = false;
	a->paused = true;
	a->paused_n++;
	return 0;
}

static void on_resume(mig_engine *e, const char *user, void *ud)
{
	struct app *a = app_of(ud);
	a->paused = false;
	a->serving = true;
	a->resumed++;
}

static void on_release(mig_engine *e, const char *user, void *ud)
{
	struct app *a = app_of(ud);
	if (!a->paused)
		die("%s: release of %s which is not paused", a->name, user);
	a->present = a->paused = a->serving = false;
	a->released++;
}

static int on_incoming(mig_engine *e, const char *user, void *ud)
{
	struct app *a = app_of(ud);
	if (a->present)
		die("%s: incoming %s which is already here", a->name, user);
	a->incoming++;
	return 0;
}

static void on_activate(mig_engine *e, const char *user, void *ud)
{
	struct app *a = app_of(ud);
	if (!a->present || a->serving)
		die("%s: activate of %s in the wrong state", a->name, user);
	a->serving = true;
	a->activated++;
}

static void on_drop(mig_engine *e, const char *user, void *ud)
{
	struct app *a = app_of(ud);
	a->present = false;
	a->dropped++;
}

static void on_event(mig_engine *e, const mig_event *ev, void *ud)
{
	struct app *a = app_of(ud);
	if (ev->type == MIG_EVENT_ABORTED || ev->type == MIG_EVENT_DROPPED) {
		a->aborted++;
		snprintf(a->last_abort, sizeof(a->last_abort), "%s: %s", mig_err_name(ev->error),
			 ev->reason);
	}
}

/* ------------------------------------------------------------------ files */

/* The bytes the moving user's files must hold (the same at every owner). */
static uint8_t want_files[NFILES][FILE_BYTES];
static uint8_t want_light[LIGHT_BYTES];

static void file_path(char *out, size_t len, const struct app *a, int i)
{
	snprintf(out, len, "%s/%s/%s/seg-%d.bin", a->root, MOVER, i % 2 ? "cam1" : "cam0", i);
}

static void write_file(const char *path, const uint8_t *data, size_t len)
{
	FILE *f = fopen(path, "wb");
	if (!f || fwrite(data, 1, len, f) != len)
		die("cannot write %s: %s", path, strerror(errno));
	fclose(f);
}

static void seed_files(struct app *a)
{
	char p[400];
	snprintf(p, sizeof(p), "%s/%s", a->root, MOVER);
	mkdir(p, 0700);
	snprintf(p, sizeof(p), "%s/%s/cam0", a->root, MOVER);
	mkdir(p, 0700);
	snprintf(p, sizeof(p), "%s/%s/cam1", a->root, MOVER);
	mkdir(p, 0700);
	for (int i = 0; i < NFILES; i++) {
		for (size_t k = 0; k < FILE_BYTES; k++)
			want_files[i][k] = (uint8_t)next_rand();
		file_path(p, sizeof(p), a, i);
		write_file(p, want_files[i], FILE_BYTES);
	}
	for (size_t k = 0; k < LIGHT_BYTES; k++)
		want_light[k] = (uint8_t)next_rand();
	memcpy(a->light, want_light, LIGHT_BYTES);
}

/* The app at the owner changes some bytes before each leg. */
static void change_state(struct app *a, int trip)
{
	int i = (int)(next_rand() % NFILES);
	size_t off = (size_t)(next_rand() % (FILE_BYTES - CHANGE_BYTES));
	for (size_t k = 0; k < CHANGE_BYTES; k++)
		want_files[i][off + k] = (uint8_t)next_rand();
	char p[400];
	file_path(p, sizeof(p), a, i);
	FILE *f = fopen(p, "r+b");
	if (!f || fseek(f, (long)off, SEEK_SET) != 0 ||
	    fwrite(want_files[i] + off, 1, CHANGE_BYTES, f) != CHANGE_BYTES)
		die("cannot change %s", p);
	fclose(f);
	memcpy(want_light, &trip, sizeof(trip));
	want_light[sizeof(trip)] ^= 0x5a;
	memcpy(a->light, want_light, LIGHT_BYTES);
}

static void check_files(const struct app *a, int trip)
{
	char p[400];
	uint8_t got[FILE_BYTES + 1];
	for (int i = 0; i < NFILES; i++) {
		file_path(p, sizeof(p), a, i);
		FILE *f = fopen(p, "rb");
		if (!f)
			die("trip %d: %s missing at %s", trip, p, a->name);
		size_t n = fread(got, 1, sizeof(got), f);
		fclose(f);
		if (n != FILE_BYTES || memcmp(got, want_files[i], FILE_BYTES) != 0)
			die("trip %d: %s differs at %s", trip, p, a->name);
	}
	if (memcmp(a->light, want_light, LIGHT_BYTES) != 0)
		die("trip %d: light state differs at %s", trip, a->name);
}

/* ------------------------------------------------------------------ clients */

struct client {
	mig_client *c;
	char user[32];
	mig_client_state state;
	int error;
	char engine[64]; /* the engine it is attached to */
	int redirects;
	int attaches;
};

static struct client *clients; /* [0, users): static users; [users]: the mover */
static int nclients;

static void on_client_state(mig_client *c, mig_client_state st, int error, const char *detail,
			    void *ud)
{
	struct client *cl = ud;
	cl->state = st;
	cl->error = error;
	if (st == MIG_CLIENT_ATTACHED) {
		cl->attaches++;
		/* detail: "ENGINE_ID URL" */
		snprintf(cl->engine, sizeof(cl->engine), "%.*s", (int)strcspn(detail, " "), detail);
	}
	if (st == MIG_CLIENT_FAILED)
		die("client of %s failed: %s: %s", cl->user, mig_err_name(error), detail);
}

static void on_client_redirect(mig_client *c, const mig_client_redirect *r, void *ud)
{
	struct client *cl = ud;
	cl->redirects++;
}

static mig_engine *engines[2];

static void client_new(struct client *cl, int which, const char *user)
{
	char token[MIG_SESSION_TOKEN_MAX];
	snprintf(cl->user, sizeof(cl->user), "%s", user);
	int rc = mig_session_token(engines[which], user, token, sizeof(token));
	if (rc)
		die("token for %s: %s", user, mig_err_name(rc));
	mig_client_options o = {0};
	o.url = mig_engine_url(engines[which]);
	o.token = token;
	o.user = user;
	o.backoff_initial_ms = 50;
	o.backoff_max_ms = 1000;
	/* Creating 101 clients (an lws context each) takes seconds on a small
	 * machine, and nothing dispatches the engines meanwhile: an attach
	 * that times out at the client but still reaches the engine uses up
	 * its single-use token (docs/RELIABILITY.md, "Soak"). */
	o.connect_timeout_ms = 60000;
	o.on_state = on_client_state;
	o.on_redirect = on_client_redirect;
	o.user_data = cl;
	if ((rc = mig_client_new(&cl->c, &o)))
		die("client of %s: %s", user, mig_err_name(rc));
}

/* ------------------------------------------------------------------ the loop */

static struct pollfd *pfds;

/* Dispatches whatever is readable, for at most `ms`, until cond() holds. */
static bool pump(bool (*cond)(void *), void *arg, int ms)
{
	uint64_t end = now_ms() + (uint64_t)ms;
	int n = 2 + nclients;
	for (;;) {
		if (cond && cond(arg))
			return true;
		uint64_t now = now_ms();
		if (now >= end)
			return cond ? cond(arg) : true;
		for (int i = 0; i < 2; i++)
			pfds[i].fd = mig_engine_fd(engines[i]);
		for (int i = 0; i < nclients; i++)
			pfds[2 + i].fd = clients[i].c ? mig_client_fd(clients[i].c) : -1;
		for (int i = 0; i < n; i++) {
			pfds[i].events = POLLIN;
			pfds[i].revents = 0;
		}
		uint64_t left = end - now;
		int r = poll(pfds, (nfds_t)n, left > 50 ? 50 : (int)left);
		if (r < 0 && errno != EINTR)
			die("poll: %s", strerror(errno));
		for (int i = 0; i < 2; i++)
			if (pfds[i].revents)
				mig_engine_dispatch(engines[i]);
		for (int i = 0; i < nclients; i++)
			if (pfds[2 + i].revents)
				mig_client_dispatch(clients[i].c);
	}
}

static bool all_attached(void *arg)
{
	for (int i = 0; i < nclients; i++)
		if (clients[i].state != MIG_CLIENT_ATTACHED)
			return false;
	return true;
}

struct leg {
	mig_migration *m;
	int to; /* engine index */
	int redirects_before;
};

static bool leg_done(void *arg)
{
	struct leg *l = arg;
	mig_migration_stats st;
	mig_migration_info(l->m, &st);
	if (st.state == MIG_MIGRATION_RUNNING)
		return false;
	if (st.state != MIG_MIGRATION_COMMITTED)
		return true; /* reported by the caller */
	if (mig_user_get_state(engines[l->to], MOVER) != MIG_USER_ACTIVE)
		return false;
	struct client *mc = &clients[nclients - 1];
	return mc->redirects > l->redirects_before && mc->state == MIG_CLIENT_ATTACHED &&
	       strcmp(mc->engine, mig_engine_id(engines[l->to])) == 0;
}

static double leg(int from, int to, int trip)
{
	struct app *src = &apps[from], *dst = &apps[to];
	change_state(src, trip);
	struct leg l = {.to = to, .redirects_before = clients[nclients - 1].redirects};
	uint64_t t0 = now_ms();
	int rc = mig_migrate(engines[from], MOVER, mig_engine_url(engines[to]), &l.m);
	if (rc)
		die("trip %d: mig_migrate %s -> %s: %s", trip, src->name, dst->name, mig_err_name(rc));
	if (!pump(leg_done, &l, LEG_TIMEOUT_MS))
		die("trip %d: %s -> %s did not finish in %d ms (client %s at '%s')", trip, src->name,
		    dst->name, LEG_TIMEOUT_MS,
		    mig_client_state_name(clients[nclients - 1].state), clients[nclients - 1].engine);
	mig_migration_stats st;
	mig_migration_info(l.m, &st);
	mig_migration_free(l.m);
	if (st.state != MIG_MIGRATION_COMMITTED)
		die("trip %d: %s -> %s aborted: %s (%s)", trip, src->name, dst->name,
		    mig_err_name(st.error), src->last_abort);
	if (mig_user_get_state(engines[from], MOVER) != MIG_USER_ABSENT)
		die("trip %d: %s still has the user", trip, src->name);
	if (src->present || src->serving || !dst->serving)
		die("trip %d: apps: %s present %d serving %d, %s serving %d", trip, src->name,
		    src->present, src->serving, dst->name, dst->serving);
	check_files(dst, trip);
	return (double)(now_ms() - t0);
}

/* ------------------------------------------------------------------ main */

static void make_engine(int i, const char *id, const char *root, const char *app_url)
{
	struct app *a = &apps[i];
	a->name = id;
	snprintf(a->root, sizeof(a->root), "%s", root);
	mkdir(root, 0700);
	mig_engine_options o = {0};
	o.listen_address = "127.0.0.1";
	o.engine_id = id;
	o.secret = SECRET;
	o.secret_len = strlen(SECRET);
	o.app_url = app_url;
	/* Tokens turn over during the run, so the used-token memory and the
	 * resume-token renewals reach their steady state. */
	o.session_token_ttl_s = 60;
	o.on_event = on_event;
	o.user_data = a;
	int rc = mig_engine_new(&engines[i], &o);
	if (rc)
		die("engine %s: %s", id, mig_err_name(rc));
	mig_hooks h = {on_pause, on_resume, on_release, on_incoming, on_activate, on_drop};
	mig_light_domain ld = {"progress", "soak.Progress", 1, extract, merge};
	mig_file_domain fd = {"frames", 1, root, 0};
	if ((rc = mig_engine_set_hooks(engines[i], &h, a)) ||
	    (rc = mig_light_domain_register(engines[i], &ld, a)) ||
	    (rc = mig_file_domain_register(engines[i], &fd)) || (rc = mig_engine_start(engines[i])))
		die("engine %s: %s: %s", id, mig_err_name(rc), mig_engine_last_error(engines[i]));
}

static void usage(void)
{
	fprintf(stderr, "usage: soak [--trips N] [--checkpoint K] [--max-growth PCT] [--users U] "
			"[--dir D]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	int trips = 1000, checkpoint = 100, users = 100;
	double max_growth = 1.0;
	const char *dir = "/tmp";
	static const struct option opts[] = {
		{"trips", required_argument, NULL, 't'},
		{"checkpoint", required_argument, NULL, 'c'},
		{"max-growth", required_argument, NULL, 'g'},
		{"users", required_argument, NULL, 'u'},
		{"dir", required_argument, NULL, 'd'},
		{NULL, 0, NULL, 0},
	};
	int ch;
	while ((ch = getopt_long(argc, argv, "", opts, NULL)) != -1) {
		switch (ch) {
		case 't':
			trips = atoi(optarg);
			break;
		case 'c':
			checkpoint = atoi(optarg);
			break;
		case 'g':
			max_growth = atof(optarg);
			break;
		case 'u':
			users = atoi(optarg);
			break;
		case 'd':
			dir = optarg;
			break;
		default:
			usage();
		}
	}
	if (trips < 1 || checkpoint < 1 || checkpoint > trips || users < 0 || users > 10000)
		usage();
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (mig_set_allocator(c_malloc, c_realloc, c_free) != 0)
		die("mig_set_allocator");

	snprintf(base, sizeof(base), "%s/mig-soak-XXXXXX", dir);
	if (!mkdtemp(base))
		die("mkdtemp in %s: %s", dir, strerror(errno));
	atexit(cleanup);
	char root_a[300], root_b[300];
	snprintf(root_a, sizeof(root_a), "%s/a", base);
	snprintf(root_b, sizeof(root_b), "%s/b", base);
	make_engine(0, "soak-a", root_a, "tcp://127.0.0.1:9001");
	make_engine(1, "soak-b", root_b, "tcp://127.0.0.1:9002");
	apps[0].present = apps[0].serving = true;
	seed_files(&apps[0]);

	nclients = users + 1;
	clients = calloc((size_t)nclients, sizeof(*clients));
	pfds = calloc((size_t)nclients + 2, sizeof(*pfds));
	if (!clients || !pfds)
		die("out of memory");
	for (int i = 0; i < users; i++) {
		char u[32];
		snprintf(u, sizeof(u), "s%04d", i);
		int rc = mig_user_add(engines[0], u);
		if (rc)
			die("user %s: %s", u, mig_err_name(rc));
		client_new(&clients[i], 0, u);
	}
	int rc = mig_user_add(engines[0], MOVER);
	if (rc)
		die("user %s: %s", MOVER, mig_err_name(rc));
	client_new(&clients[users], 0, MOVER);
	uint64_t t_attach = now_ms();
	if (!pump(all_attached, NULL, ATTACH_TIMEOUT_MS))
		die("not every client attached in %d ms", ATTACH_TIMEOUT_MS);
	printf("# %d clients attached in %llu ms\n", nclients,
	       (unsigned long long)(now_ms() - t_attach));

	long rss_start = rss_kib(), rss_check = 0, rss_end = 0;
	long lib_start = atomic_load(&lib_live_bytes), lib_check = 0;
	size_t heap_check = 0;
	struct mem_split split_check, split_end;
	printf("# start: VmRSS %ld KiB, library live %ld bytes in %ld blocks\n", rss_start,
	       lib_start, atomic_load(&lib_live_blocks));
	uint64_t t0 = now_ms(), t_check = 0;
	double worst_leg = 0;
	for (int trip = 1; trip <= trips; trip++) {
		double a = leg(0, 1, trip);
		double b = leg(1, 0, trip);
		if (a > worst_leg)
			worst_leg = a;
		if (b > worst_leg)
			worst_leg = b;
		if (trip == checkpoint) {
			rss_check = rss_kib();
			lib_check = atomic_load(&lib_live_bytes);
			heap_check = mallinfo2().uordblks;
			mem_split(&split_check);
			t_check = now_ms();
			printf("# trip %d: VmRSS %ld KiB, library live %ld bytes in %ld blocks, "
			       "heap in use %zu bytes\n",
			       trip, rss_check, lib_check, atomic_load(&lib_live_blocks), heap_check);
		} else if (trip % 100 == 0 || trip == trips) {
			printf("# trip %d: VmRSS %ld KiB, library live %ld bytes, %.1f trips/s\n", trip,
			       rss_kib(), atomic_load(&lib_live_bytes),
			       trip * 1000.0 / (double)(now_ms() - t0));
		}
	}
	uint64_t t_end = now_ms();
	rss_end = rss_kib();
	long lib_end = atomic_load(&lib_live_bytes);
	size_t heap_end = mallinfo2().uordblks;
	mem_split(&split_end);

	/* Nobody else moved, nobody else was redirected. */
	for (int i = 0; i < users; i++) {
		struct client *cl = &clients[i];
		if (cl->state != MIG_CLIENT_ATTACHED || cl->redirects ||
		    strcmp(cl->engine, mig_engine_id(engines[0])) != 0)
			die("client of %s: %s at '%s', %d redirects", cl->user,
			    mig_client_state_name(cl->state), cl->engine, cl->redirects);
		if (mig_user_get_state(engines[0], cl->user) != MIG_USER_ACTIVE)
			die("%s is not active on A", cl->user);
	}
	struct client *mc = &clients[users];
	if (mc->redirects != 2 * trips)
		die("the mover's client saw %d redirects, want %d", mc->redirects, 2 * trips);
	if (apps[0].aborted || apps[1].aborted)
		die("aborted migrations: A %d, B %d (%s%s)", apps[0].aborted, apps[1].aborted,
		    apps[0].last_abort, apps[1].last_abort);

	double secs = (double)(t_end - t0) / 1000.0;
	double growth = 100.0 * (double)(rss_end - rss_check) / (double)rss_check;
	printf("# %d trips (%d migrations) in %.1f s: %.2f trips/s, worst leg %.0f ms\n", trips,
	       2 * trips, secs, trips / secs, worst_leg);
	printf("# VmRSS: start %ld KiB, trip %d %ld KiB, trip %d %ld KiB: %+.2f %% since trip %d\n",
	       rss_start, checkpoint, rss_check, trips, rss_end, growth, checkpoint);
	printf("# library live bytes: start %ld, trip %d %ld, trip %d %ld (%+ld)\n", lib_start,
	       checkpoint, lib_check, trips, lib_end, lib_end - lib_check);
	printf("# malloc heap in use: trip %d %zu, trip %d %zu (%+ld)\n", checkpoint, heap_check,
	       trips, heap_end, (long)heap_end - (long)heap_check);
	printf("# resident, trip %d -> %d: main heap %ld -> %ld KiB, anonymous maps %ld -> %ld "
	       "KiB, other %ld -> %ld KiB\n",
	       checkpoint, trips, split_check.heap_kib, split_end.heap_kib, split_check.anon_kib,
	       split_end.anon_kib, split_check.other_kib, split_end.other_kib);
	printf("# malloc, trip %d -> %d: held from the system %zu -> %zu (%+ld), in use %zu -> "
	       "%zu (%+ld)\n",
	       checkpoint, trips, split_check.malloc_held, split_end.malloc_held,
	       (long)split_end.malloc_held - (long)split_check.malloc_held,
	       split_check.malloc_in_use, split_end.malloc_in_use,
	       (long)split_end.malloc_in_use - (long)split_check.malloc_in_use);
	printf("# %.1f s from trip %d to the end\n", (double)(t_end - t_check) / 1000.0,
	       checkpoint);

	for (int i = 0; i < nclients; i++)
		mig_client_free(clients[i].c);
	mig_engine_free(engines[0]);
	mig_engine_free(engines[1]);
	free(clients);
	free(pfds);
	long lib_left = atomic_load(&lib_live_blocks);
	if (lib_left)
		die("%ld library allocations still live after everything was freed", lib_left);
	if (growth >= max_growth) {
		printf("soak: FAIL: VmRSS grew %.2f %% between trip %d and trip %d (bound %.2f %%)\n",
		       growth, checkpoint, trips, max_growth);
		return 1;
	}
	printf("soak: OK\n");
	return 0;
}
