/* The allocation-failure sweep: a counting allocator installed with
 * mig_set_allocator() fails exactly the Nth allocation (malloc or realloc;
 * mig__calloc goes through malloc) the library makes, for every N across a
 * whole in-process migration — from the first mig_engine_new() to the last
 * mig_engine_free() of two engines that move one user with a light domain and
 * a small file domain over loopback. Every run must end cleanly: no crash, no
 * hang past its deadline, the user ACTIVE on exactly one engine with intact
 * bytes (or the setup call that failed returned an error), and, once both
 * engines are freed, not one of the library's allocations still live.
 *
 * The allocator is shared with the engines' I/O and worker threads, so its
 * counters are atomics and a failure can land on any thread.
 *
 * Three scenarios: "plain" (A -> B), "linkdrop" (the peer link drops right
 * after COMMIT, so both engines see it go down and A reconnects) and
 * "clients" (an orchestrator migrates through A's control channel from a
 * thread while the user's session client must follow the user to B). After
 * every run that settled, a second migration with nothing failing must
 * commit: an engine that lost an event can be left unable to reach its peer.
 *
 * By default every MIG_ALLOCFAIL_STRIDE-th N is run (see STRIDE_DEFAULT);
 * MIG_ALLOCFAIL_STRIDE=1 sweeps every N (docs/RELIABILITY.md has the command
 * and the figures). MIG_ALLOCFAIL_ONLY=N runs one N, verbosely;
 * MIG_ALLOCFAIL_FROM / MIG_ALLOCFAIL_TO bound the sweep; MIG_ALLOCFAIL_LIST=1
 * prints every run with where its allocation failed; MIG_ALLOCFAIL_SCENARIO
 * runs one scenario ("plain", "linkdrop", "clients"). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <execinfo.h>
#include <poll.h>
#include <ftw.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "engine_int.h"
#include "migrate/client.h"
#include "migrate/control.h"
#include "support.h"

/* Paths here are short temp folders; a truncated one would fail the test. */
#pragma GCC diagnostic ignored "-Wformat-truncation"

#if defined(__has_include)
#if __has_include(<valgrind/valgrind.h>)
#include <valgrind/valgrind.h>
#endif
#endif
#ifndef RUNNING_ON_VALGRIND
#define RUNNING_ON_VALGRIND 0
#endif

/* The default suite runs every STRIDE_DEFAULT-th N, and every one of the
 * first FIRST_ALL (engine creation, which fails fast): about a minute and a
 * half. */
#define STRIDE_DEFAULT 11
#define FIRST_ALL 50
#define RUN_DEADLINE_MS 30000
/* A lost message costs a run this much; short, but long enough that a
 * loaded machine does not abort the baseline. */
#define PEER_TIMEOUT_MS (RUNNING_ON_VALGRIND ? 4000 : 1000)
#define NFILES 3
#define FILE_BYTES 3000
#define LIGHT_BYTES 100
#define USER "u1"

/* ------------------------------------------------------------------ allocator */

#define ALLOC_MAGIC 0x6d69672d616c6c63ull /* "mig-allc" */
#define FREED_MAGIC 0x6d69672d66726565ull /* "mig-free" */

typedef union hdr {
	struct {
		size_t size;
		uint64_t magic;
	} h;
	max_align_t align;
} hdr;

static atomic_bool alloc_counting; /* count (and maybe fail) calls now */
static atomic_ulong alloc_calls;  /* malloc + realloc calls counted since the reset */
static atomic_ulong alloc_fail_at; /* fail this call (0: never) */
static atomic_long alloc_live;    /* blocks not yet freed */
static atomic_long alloc_live_bytes;
static atomic_int alloc_failed;   /* the failure was injected */
static atomic_int alloc_bad_free; /* a pointer not from us, or freed twice */
static void *fail_trace[24];
static int fail_trace_n;

static void note_failure(void)
{
	atomic_store(&alloc_failed, 1);
	fail_trace_n = backtrace(fail_trace, 24);
}

static bool should_fail(void)
{
	if (!atomic_load(&alloc_counting))
		return false;
	unsigned long k = atomic_fetch_add(&alloc_calls, 1) + 1;
	unsigned long at = atomic_load(&alloc_fail_at);
	if (at && k == at) {
		note_failure();
		return true;
	}
	return false;
}

static void *t_malloc(size_t n)
{
	if (should_fail())
		return NULL;
	hdr *h = malloc(sizeof(hdr) + n);
	if (!h)
		return NULL;
	h->h.size = n;
	h->h.magic = ALLOC_MAGIC;
	atomic_fetch_add(&alloc_live, 1);
	atomic_fetch_add(&alloc_live_bytes, (long)n);
	return h + 1;
}

static hdr *check_hdr(void *p)
{
	hdr *h = (hdr *)p - 1;
	if (h->h.magic != ALLOC_MAGIC) {
		atomic_fetch_add(&alloc_bad_free, 1);
		return NULL;
	}
	return h;
}

static void *t_realloc(void *p, size_t n)
{
	if (!p)
		return t_malloc(n);
	if (should_fail())
		return NULL;
	hdr *h = check_hdr(p);
	if (!h)
		return NULL;
	size_t old = h->h.size;
	hdr *nh = realloc(h, sizeof(hdr) + n);
	if (!nh)
		return NULL;
	nh->h.size = n;
	atomic_fetch_add(&alloc_live_bytes, (long)n - (long)old);
	return nh + 1;
}

static void t_free(void *p)
{
	if (!p)
		return;
	hdr *h = check_hdr(p);
	if (!h)
		return;
	h->h.magic = FREED_MAGIC;
	atomic_fetch_sub(&alloc_live, 1);
	atomic_fetch_sub(&alloc_live_bytes, (long)h->h.size);
	free(h);
}

static void alloc_reset(unsigned long fail_at)
{
	atomic_store(&alloc_fail_at, 0);
	atomic_store(&alloc_calls, 0);
	atomic_store(&alloc_failed, 0);
	fail_trace_n = 0;
	atomic_store(&alloc_fail_at, fail_at);
	atomic_store(&alloc_counting, true);
}

static void alloc_disarm(void)
{
	atomic_store(&alloc_fail_at, 0);
}

/* ------------------------------------------------------------------ files */

static char base[128];

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	return remove(p);
}

static void rmtree(const char *path)
{
	nftw(path, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static void file_bytes(int i, uint8_t *out)
{
	test_fill(out, FILE_BYTES, 500u + (unsigned)i);
}

static void light_bytes(uint8_t *out)
{
	test_fill(out, LIGHT_BYTES, 77);
}

/* Fresh roots: a/u1/ holds the user's files, b/ is empty. */
static void reset_roots(void)
{
	char p[512];
	rmtree(base);
	mkdir(base, 0700);
	snprintf(p, sizeof(p), "%s/a", base);
	mkdir(p, 0700);
	snprintf(p, sizeof(p), "%s/b", base);
	mkdir(p, 0700);
	snprintf(p, sizeof(p), "%s/a/%s", base, USER);
	mkdir(p, 0700);
	snprintf(p, sizeof(p), "%s/a/%s/sub", base, USER);
	mkdir(p, 0700);
	uint8_t buf[FILE_BYTES];
	for (int i = 0; i < NFILES; i++) {
		snprintf(p, sizeof(p), "%s/a/%s/%sf%d.bin", base, USER, i ? "sub/" : "", i);
		file_bytes(i, buf);
		FILE *f = fopen(p, "wb");
		assert_non_null(f);
		assert_int_equal(fwrite(buf, 1, sizeof(buf), f), sizeof(buf));
		fclose(f);
	}
}

/* The user's files under `side` ("a" or "b") are exactly the originals. */
static bool files_intact(const char *side, char *why, size_t why_len)
{
	char p[512];
	uint8_t want[FILE_BYTES], got[FILE_BYTES + 1];
	for (int i = 0; i < NFILES; i++) {
		snprintf(p, sizeof(p), "%s/%s/%s/%sf%d.bin", base, side, USER, i ? "sub/" : "", i);
		FILE *f = fopen(p, "rb");
		if (!f) {
			snprintf(why, why_len, "%s missing", p);
			return false;
		}
		size_t n = fread(got, 1, sizeof(got), f);
		fclose(f);
		file_bytes(i, want);
		if (n != FILE_BYTES || memcmp(got, want, FILE_BYTES) != 0) {
			snprintf(why, why_len, "%s differs (%zu bytes)", p, n);
			return false;
		}
	}
	return true;
}

static bool user_dir_exists(const char *side)
{
	char p[512];
	struct stat st;
	snprintf(p, sizeof(p), "%s/%s/%s", base, side, USER);
	return lstat(p, &st) == 0;
}

/* ------------------------------------------------------------------ the app */

/* One engine's app: it serves the user (light state in memory, files under
 * its root) or does not. Callbacks never assert: they run inside dispatch;
 * anything unexpected is counted and checked on the test's thread. */
struct sapp {
	const char *name;
	char root[256];
	bool present, serving, paused;
	uint8_t light[LIGHT_BYTES];
	size_t light_len;
	int violations;
	char violation[160];
	int resumed, released, activated, dropped, incoming;
};

static void violate(struct sapp *a, const char *what)
{
	if (a->violations++ == 0)
		snprintf(a->violation, sizeof(a->violation), "%s: %s", a->name, what);
}

static int extract_light(mig_engine *e, const char *user, mig_buf *out, void *ud)
{
	struct sapp *a = ud;
	if (!a->present || !a->paused)
		violate(a, "extract of a user not present and paused");
	return mig_buf_append(out, a->light, a->light_len);
}

static int merge_light(mig_engine *e, const char *user, uint32_t v, const void *d, size_t n,
		       void *ud)
{
	struct sapp *a = ud;
	if (a->serving)
		violate(a, "merge into a served user");
	if (n > sizeof(a->light))
		return -1;
	memcpy(a->light, d, n);
	a->light_len = n;
	a->present = true;
	return 0;
}

static int on_pause(mig_engine *e, const char *user, void *ud)
{
	struct sapp *a = ud;
	if (!a->serving)
		violate(a, "pause of a user not served");
	a->serving = false;
	a->paused = true;
	return 0;
}

static void on_resume(mig_engine *e, const char *user, void *ud)
{
	struct sapp *a = ud;
	if (!a->paused)
		violate(a, "resume of a user not paused");
	a->paused = false;
	a->serving = true;
	a->resumed++;
}

static void on_release(mig_engine *e, const char *user, void *ud)
{
	struct sapp *a = ud;
	if (!a->paused)
		violate(a, "release of a user not paused");
	a->paused = a->serving = a->present = false;
	a->light_len = 0;
	a->released++;
}

static int on_incoming(mig_engine *e, const char *user, void *ud)
{
	struct sapp *a = ud;
	if (a->present || a->serving)
		violate(a, "incoming for a user already here");
	a->incoming++;
	return 0;
}

static void on_activate(mig_engine *e, const char *user, void *ud)
{
	struct sapp *a = ud;
	if (a->serving)
		violate(a, "activate of a served user");
	if (!a->present)
		violate(a, "activate before merge");
	a->serving = true;
	a->activated++;
}

static void on_drop(mig_engine *e, const char *user, void *ud)
{
	struct sapp *a = ud;
	if (a->serving)
		violate(a, "drop of a served user");
	a->present = false;
	a->light_len = 0;
	a->dropped++;
}

static bool verbose;

static void on_log(mig_engine *e, mig_log_level level, const char *line, void *ud)
{
	struct sapp *a = ud;
	if (verbose)
		fprintf(stderr, "# [%s] %s\n", a->name, line);
}

/* ------------------------------------------------------------------ a run */

enum outcome {
	OUT_COMMITTED,     /* the user moved */
	OUT_ABORTED,       /* the migration ended in an error; the user stayed */
	OUT_SETUP_FAILED,  /* engine creation / registration / start failed */
	OUT_CALL_FAILED,   /* mig_user_add() or mig_migrate() failed */
	OUT_NOT_INJECTED,  /* the run made fewer than N allocations */
	OUT_BAD,           /* crash-free but wrong: hang, two owners, leak... */
	OUT_COUNT
};

static const char *const outcome_name[OUT_COUNT] = {
	"committed", "aborted", "setup failed", "call failed", "not injected", "BAD"};

struct run {
	unsigned long calls; /* allocations the run made */
	enum outcome out;
	int error;           /* the failing call's or the migration's error */
	char why[300];       /* OUT_BAD: what went wrong */
	int client_failed;   /* SC_CLIENTS: the client gave up with this error */
	double ms;
};

/* The scenarios swept. */
enum scenario {
	SC_PLAIN,    /* A -> B over one peer link */
	SC_LINKDROP, /* A cuts the link right after sending COMMIT: both sides
		      * see it go down, A reconnects and re-sends COMMIT */
	SC_CLIENTS,  /* an orchestrator asks A over the control channel, and
		      * the user's session client must follow it to B */
};

struct rig {
	enum scenario sc;
	struct sapp a, b;
	mig_engine *ea, *eb;
	mig_migration *m;
	/* SC_CLIENTS */
	mig_client *client;
	mig_client_state cstate;
	int cerror;
	char cengine[64]; /* the engine the client is attached to */
	pthread_t ctl_thread;
	bool ctl_started;
	atomic_bool ctl_done;
	int ctl_rc;
};

static void app_reset(struct sapp *s, const char *name, const char *side)
{
	memset(s, 0, sizeof(*s));
	s->name = name;
	snprintf(s->root, sizeof(s->root), "%s/%s", base, side);
}

static int make_engine(struct sapp *a, const char *id, const char *app_url, mig_engine **out)
{
	mig_engine_options o;
	test_engine_options(&o, id);
	o.peer_timeout_ms = PEER_TIMEOUT_MS;
	o.worker_threads = 1;
	o.on_log = on_log;
	o.log_level = MIG_LOG_DEBUG; /* the log queue allocates too: sweep it */
	o.user_data = a;
	o.app_url = app_url;
	*out = NULL;
	int rc = mig_engine_new(out, &o);
	if (rc)
		return rc;
	mig_hooks h = {on_pause, on_resume, on_release, on_incoming, on_activate, on_drop};
	if ((rc = mig_engine_set_hooks(*out, &h, a)))
		return rc;
	mig_light_domain ld = {"progress", "test.Progress", 1, extract_light, merge_light};
	if ((rc = mig_light_domain_register(*out, &ld, a)))
		return rc;
	mig_file_domain fd = {"frames", 1, a->root, 0};
	if ((rc = mig_file_domain_register(*out, &fd)))
		return rc;
	return mig_engine_start(*out);
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* ------------------------------------------------------------------ clients */

static void on_client_state(mig_client *c, mig_client_state st, int error, const char *detail,
			    void *ud)
{
	struct rig *r = ud;
	r->cstate = st;
	r->cerror = error;
	if (st == MIG_CLIENT_ATTACHED) /* detail: "ENGINE_ID URL" */
		snprintf(r->cengine, sizeof(r->cengine), "%.*s", (int)strcspn(detail, " "), detail);
	if (verbose)
		fprintf(stderr, "# client: %s %s %s\n", mig_client_state_name(st),
			mig_err_name(error), detail);
}

static int client_new(struct rig *r)
{
	char token[MIG_SESSION_TOKEN_MAX];
	int rc = mig_session_token(r->ea, USER, token, sizeof(token));
	if (rc)
		return rc;
	mig_client_options o = {0};
	o.url = mig_engine_url(r->ea);
	o.token = token;
	o.user = USER;
	o.backoff_initial_ms = 20;
	o.backoff_max_ms = 200;
	o.jitter_percent = -1;
	o.connect_timeout_ms = 2000;
	o.on_state = on_client_state;
	o.user_data = r;
	return mig_client_new(&r->client, &o);
}

/* The orchestrator: migrates the user through A's control channel. */
static void *ctl_main(void *arg)
{
	struct rig *r = arg;
	mig_ctl_options o = {0};
	o.url = mig_engine_url(r->ea);
	o.secret = TEST_SECRET;
	o.secret_len = TEST_SECRET_LEN;
	o.timeout_ms = 5000;
	mig_ctl *ctl = NULL;
	char err[200];
	int rc = mig_ctl_new(&ctl, &o, err, sizeof(err));
	if (!rc) {
		mig_event fin;
		rc = mig_ctl_migrate(ctl, USER, mig_engine_url(r->eb), 10000, NULL, NULL, &fin);
	}
	mig_ctl_free(ctl);
	r->ctl_rc = rc;
	atomic_store(&r->ctl_done, true);
	return NULL;
}

/* Dispatches both engines and the client until cond(r) or ms pass. */
static bool pump(struct rig *r, bool (*cond)(struct rig *), int ms)
{
	uint64_t end = now_ms() + (uint64_t)ms;
	for (;;) {
		mig_engine_dispatch(r->ea);
		mig_engine_dispatch(r->eb);
		if (r->client)
			mig_client_dispatch(r->client);
		if (cond(r))
			return true;
		uint64_t now = now_ms();
		if (now >= end)
			return cond(r);
		struct pollfd pfds[3] = {
			{.fd = mig_engine_fd(r->ea), .events = POLLIN},
			{.fd = mig_engine_fd(r->eb), .events = POLLIN},
			{.fd = r->client ? mig_client_fd(r->client) : -1, .events = POLLIN},
		};
		uint64_t left = end - now;
		poll(pfds, 3, left > 20 ? 20 : (int)left);
	}
}

/* ------------------------------------------------------------------ a run */

static bool settled_state(mig_user_state s)
{
	return s == MIG_USER_ACTIVE || s == MIG_USER_ABSENT;
}

/* The migration ended on both sides, and the user's client (if it did not
 * give up) is attached where the user is. */
static bool settled(struct rig *r)
{
	if (r->m) {
		mig_migration_stats st;
		mig_migration_info(r->m, &st);
		if (st.state == MIG_MIGRATION_RUNNING)
			return false;
	}
	if (r->ctl_started && !atomic_load(&r->ctl_done))
		return false;
	mig_user_state sa = mig_user_get_state(r->ea, USER), sb = mig_user_get_state(r->eb, USER);
	/* The destination's record ends after the source's: wait for it too. */
	if (!settled_state(sa) || !settled_state(sb) ||
	    (sa == MIG_USER_ACTIVE) == (sb == MIG_USER_ACTIVE))
		return false;
	if (r->client && r->cstate != MIG_CLIENT_FAILED) {
		mig_engine *owner = sa == MIG_USER_ACTIVE ? r->ea : r->eb;
		return r->cstate == MIG_CLIENT_ATTACHED &&
		       strcmp(r->cengine, mig_engine_id(owner)) == 0;
	}
	return true;
}

static bool client_ready(struct rig *r)
{
	return r->cstate == MIG_CLIENT_ATTACHED || r->cstate == MIG_CLIENT_FAILED;
}

static void set_bad(struct run *res, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void set_bad(struct run *res, const char *fmt, ...)
{
	if (res->out == OUT_BAD)
		return;
	res->out = OUT_BAD;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(res->why, sizeof(res->why), fmt, ap);
	va_end(ap);
}

/* The app of the engine that holds the user serves it with intact bytes;
 * the other holds nothing. */
static void check_owner(struct run *res, struct sapp *own, mig_engine *eown, const char *own_side,
			struct sapp *other, mig_engine *eother, const char *other_side)
{
	char why[300];
	uint8_t want[LIGHT_BYTES];
	light_bytes(want);
	if (mig_user_get_state(eown, USER) != MIG_USER_ACTIVE ||
	    mig_user_get_state(eother, USER) != MIG_USER_ABSENT)
		set_bad(res, "user state: %s %d, %s %d", own->name, mig_user_get_state(eown, USER),
			other->name, mig_user_get_state(eother, USER));
	if (!own->present || !own->serving || own->paused)
		set_bad(res, "%s's app does not serve the user (present %d serving %d paused %d)",
			own->name, own->present, own->serving, own->paused);
	if (own->light_len != LIGHT_BYTES || memcmp(own->light, want, LIGHT_BYTES) != 0)
		set_bad(res, "%s's light state differs (%zu bytes)", own->name, own->light_len);
	if (!files_intact(own_side, why, sizeof(why)))
		set_bad(res, "%s's files: %s", own->name, why);
	if (other->present || other->serving)
		set_bad(res, "%s's app still holds the user", other->name);
	if (user_dir_exists(other_side))
		set_bad(res, "%s still has a folder for the user", other->name);
	if (own->violations || other->violations)
		set_bad(res, "callbacks: %s", own->violations ? own->violation : other->violation);
}

static void describe_unsettled(struct rig *r, struct run *res, const char *what)
{
	mig_migration_stats st = {0};
	if (r->m)
		mig_migration_info(r->m, &st);
	set_bad(res, "%s not settled after %d ms: migration %s (%s), A %d, B %d, client %s at '%s'",
		what, RUN_DEADLINE_MS,
		r->m ? (st.state == MIG_MIGRATION_RUNNING ? "running" : "ended")
		     : (atomic_load(&r->ctl_done) ? "ended" : "running"),
		mig_err_name(r->m ? st.error : r->ctl_rc), mig_user_get_state(r->ea, USER),
		mig_user_get_state(r->eb, USER),
		r->client ? mig_client_state_name(r->cstate) : "none", r->cengine);
}

/* One migration with the Nth allocation failing (0: none). */
static void run_once(enum scenario sc, unsigned long n, struct run *res)
{
	struct rig r;
	memset(&r, 0, sizeof(r));
	memset(res, 0, sizeof(*res));
	r.sc = sc;
	atomic_init(&r.ctl_done, false);
	reset_roots();
	app_reset(&r.a, "A", "a");
	app_reset(&r.b, "B", "b");
	r.a.present = r.a.serving = true;
	light_bytes(r.a.light);
	r.a.light_len = LIGHT_BYTES;
	uint64_t t0 = now_ms();
	atomic_store(&alloc_bad_free, 0);
	long live0 = atomic_load(&alloc_live);
	alloc_reset(n);

	bool clients = sc == SC_CLIENTS;
	int rc = make_engine(&r.a, "engine-a", clients ? "tcp://10.0.0.1:9000" : NULL, &r.ea);
	if (!rc)
		rc = make_engine(&r.b, "engine-b", clients ? "tcp://10.0.0.2:9000" : NULL, &r.eb);
	if (rc) {
		res->out = OUT_SETUP_FAILED;
		res->error = rc;
		if (rc != MIG_ENOMEM)
			set_bad(res, "setup failed with %s, not MIG_ENOMEM", mig_err_name(rc));
		goto teardown;
	}
	if (sc == SC_LINKDROP)
		mig__engine_set_fault(r.ea, MIG__FAULT_SEND_COMMIT, MIG__FAULT_DROP_AFTER, 1);
	rc = mig_user_add(r.ea, USER);
	if (!rc && clients)
		rc = client_new(&r);
	if (!rc && !clients)
		rc = mig_migrate(r.ea, USER, mig_engine_url(r.eb), &r.m);
	if (rc) {
		res->out = OUT_CALL_FAILED;
		res->error = rc;
		if (rc != MIG_ENOMEM)
			set_bad(res, "call failed with %s, not MIG_ENOMEM", mig_err_name(rc));
		if (mig_user_get_state(r.ea, USER) == MIG_USER_ACTIVE) {
			/* The migration never started: nothing moved. */
			check_owner(res, &r.a, r.ea, "a", &r.b, r.eb, "b");
		} else if (mig_user_get_state(r.ea, USER) != MIG_USER_ABSENT) {
			set_bad(res, "mig_user_add() failed but the user is in state %d",
				mig_user_get_state(r.ea, USER));
		}
		goto teardown;
	}
	if (clients) {
		/* Attached (or refused for good) before the orchestrator asks. */
		if (!pump(&r, client_ready, RUN_DEADLINE_MS)) {
			describe_unsettled(&r, res, "the first attach");
			goto teardown;
		}
		if (pthread_create(&r.ctl_thread, NULL, ctl_main, &r) != 0)
			fail_msg("pthread_create");
		r.ctl_started = true;
	}
	if (!pump(&r, settled, RUN_DEADLINE_MS)) {
		describe_unsettled(&r, res, "the migration");
		goto teardown;
	}
	bool moved = mig_user_get_state(r.eb, USER) == MIG_USER_ACTIVE;
	if (r.m) {
		mig_migration_stats st;
		mig_migration_info(r.m, &st);
		res->error = st.state == MIG_MIGRATION_COMMITTED ? 0 : st.error;
		if (moved != (st.state == MIG_MIGRATION_COMMITTED))
			set_bad(res, "the migration %s but the user is %s",
				st.state == MIG_MIGRATION_COMMITTED ? "committed" : "aborted",
				moved ? "at B" : "at A");
	} else {
		res->error = r.ctl_rc;
	}
	if (moved) {
		res->out = OUT_COMMITTED;
		check_owner(res, &r.b, r.eb, "b", &r.a, r.ea, "a");
		if (r.a.released != 1 || r.b.activated != 1 || r.a.resumed || r.b.dropped)
			set_bad(res, "hooks: released %d activated %d resumed %d dropped %d",
				r.a.released, r.b.activated, r.a.resumed, r.b.dropped);
	} else {
		res->out = OUT_ABORTED;
		check_owner(res, &r.a, r.ea, "a", &r.b, r.eb, "b");
		if (r.a.released || r.b.activated)
			set_bad(res, "hooks after an abort: released %d activated %d",
				r.a.released, r.b.activated);
	}
	if (r.client && r.cstate == MIG_CLIENT_FAILED) {
		res->client_failed = r.cerror;
		if (r.cerror != MIG_EEXIST && r.cerror != MIG_ENOMEM)
			set_bad(res, "the client failed: %s", mig_err_name(r.cerror));
	}
	if (res->out == OUT_BAD)
		goto teardown;

	/* The engines (and the client) must still work: with the allocator out
	 * of the count, the user moves from its owner to the other engine. (A
	 * lost event can leave an engine unable to reach its peer for good.) */
	atomic_store(&alloc_counting, false);
	mig_migration_free(r.m);
	r.m = NULL;
	rc = mig_migrate(moved ? r.eb : r.ea, USER, mig_engine_url(moved ? r.ea : r.eb), &r.m);
	if (rc) {
		set_bad(res, "the follow-up migration did not start: %s", mig_err_name(rc));
	} else if (!pump(&r, settled, RUN_DEADLINE_MS)) {
		describe_unsettled(&r, res, "the follow-up migration");
	} else {
		mig_migration_stats st;
		mig_migration_info(r.m, &st);
		if (st.state != MIG_MIGRATION_COMMITTED)
			set_bad(res, "the follow-up migration aborted: %s", mig_err_name(st.error));
		else if (moved)
			check_owner(res, &r.a, r.ea, "a", &r.b, r.eb, "b");
		else
			check_owner(res, &r.b, r.eb, "b", &r.a, r.ea, "a");
	}
	/* Teardown is counted again. */
	atomic_store(&alloc_counting, true);

teardown:
	if (r.ctl_started) {
		/* Its calls time out at the latest. */
		while (!atomic_load(&r.ctl_done))
			pump(&r, settled, 50);
		pthread_join(r.ctl_thread, NULL);
	}
	mig_client_free(r.client);
	mig_migration_free(r.m);
	mig_engine_free(r.ea);
	mig_engine_free(r.eb);
	res->calls = atomic_load(&alloc_calls);
	bool injected = atomic_load(&alloc_failed);
	alloc_disarm();
	atomic_store(&alloc_counting, false);
	long live = atomic_load(&alloc_live) - live0;
	if (live)
		set_bad(res, "%ld allocation(s) (%ld bytes) still live after everything was freed",
			live, atomic_load(&alloc_live_bytes));
	if (atomic_load(&alloc_bad_free))
		set_bad(res, "%d free(s) of a pointer the allocator did not hand out",
			atomic_load(&alloc_bad_free));
	if (n && !injected && res->out != OUT_BAD)
		res->out = OUT_NOT_INJECTED;
	res->ms = (double)(now_ms() - t0);
	/* Leaked blocks would count against the next run. */
	atomic_store(&alloc_live, live0);
	atomic_store(&alloc_live_bytes, 0);
}

static void print_trace(void)
{
	if (!fail_trace_n)
		return;
	char **syms = backtrace_symbols(fail_trace, fail_trace_n);
	for (int i = 0; i < fail_trace_n; i++)
		print_message("#     %s\n", syms ? syms[i] : "?");
	free(syms);
}

static unsigned long env_ul(const char *name, unsigned long dflt)
{
	const char *v = getenv(name);
	return v && *v ? strtoul(v, NULL, 10) : dflt;
}

static void sweep(enum scenario sc, const char *name)
{
	const char *only_sc = getenv("MIG_ALLOCFAIL_SCENARIO");
	if (only_sc && *only_sc && strcmp(only_sc, name) != 0)
		skip();
	/* The baseline: no failure; K is the most allocations a run made. */
	unsigned long k = 0;
	for (int i = 0; i < 3; i++) {
		struct run res;
		run_once(sc, 0, &res);
		if (res.out != OUT_COMMITTED)
			fail_msg("baseline run %d: %s: %s", i, outcome_name[res.out], res.why);
		print_message("# %s baseline: %lu allocations, %.0f ms\n", name, res.calls, res.ms);
		if (res.calls > k)
			k = res.calls;
	}
	unsigned long only = env_ul("MIG_ALLOCFAIL_ONLY", 0);
	bool list = env_ul("MIG_ALLOCFAIL_LIST", 0) != 0; /* every run, with its trace */
	/* Under valgrind a run takes seconds: a sample only. */
	unsigned long stride = env_ul("MIG_ALLOCFAIL_STRIDE", RUNNING_ON_VALGRIND ? 97 : STRIDE_DEFAULT);
	unsigned long first_all = RUNNING_ON_VALGRIND ? 5 : FIRST_ALL;
	unsigned long from = env_ul("MIG_ALLOCFAIL_FROM", 1);
	/* A little past K: runs vary with thread timing. */
	unsigned long to = env_ul("MIG_ALLOCFAIL_TO", k + k / 20 + 10);
	if (stride == 0)
		stride = 1;
	if (only)
		from = to = only;

	unsigned counts[OUT_COUNT] = {0};
	unsigned runs = 0, bad = 0;
	double total_ms = 0, worst_ms = 0;
	unsigned long worst_n = 0;
	int codes[32] = {0}, client_codes[32] = {0};
	for (unsigned long n = from; n <= to; n++) {
		if (!only && n > first_all && (n - from) % stride != 0)
			continue;
		struct run res;
		run_once(sc, n, &res);
		runs++;
		counts[res.out]++;
		total_ms += res.ms;
		if (res.ms > worst_ms) {
			worst_ms = res.ms;
			worst_n = n;
		}
		if (res.error < 0 && -res.error < 32)
			codes[-res.error]++;
		if (res.client_failed < 0 && -res.client_failed < 32)
			client_codes[-res.client_failed]++;
		if (res.out == OUT_BAD || only || list) {
			print_message("# N=%lu: %s (%s) in %.0f ms%s%s%s%s\n", n, outcome_name[res.out],
				      mig_err_name(res.error), res.ms,
				      res.client_failed ? ", client gave up: " : "",
				      res.client_failed ? mig_err_name(res.client_failed) : "",
				      res.why[0] ? ": " : "", res.why);
			print_trace();
			if (res.out == OUT_BAD)
				bad++;
		}
		if (runs % 500 == 0)
			print_message("# ... N=%lu, %u runs, %u bad, %.0f s\n", n, runs, bad,
				      total_ms / 1000);
	}
	print_message("# %s sweep: K=%lu, N=%lu..%lu stride %lu: %u runs in %.1f s (worst %.0f ms at N=%lu)\n",
		      name, k, from, to, stride, runs, total_ms / 1000, worst_ms, worst_n);
	for (int o = 0; o < OUT_COUNT; o++)
		print_message("#   %-13s %u\n", outcome_name[o], counts[o]);
	for (int c = 1; c < 32; c++)
		if (codes[c])
			print_message("#   error %-14s %d\n", mig_err_name(-c), codes[c]);
	for (int c = 1; c < 32; c++)
		if (client_codes[c])
			print_message("#   client gave up: %-14s %d\n", mig_err_name(-c), client_codes[c]);
	assert_int_equal(bad, 0);
}

static void test_sweep_plain(void **state)
{
	sweep(SC_PLAIN, "plain");
}

static void test_sweep_linkdrop(void **state)
{
	sweep(SC_LINKDROP, "linkdrop");
}

static void test_sweep_clients(void **state)
{
	sweep(SC_CLIENTS, "clients");
}

int main(void)
{
	verbose = getenv("MIG_TEST_VERBOSE") != NULL;
	void *warm[2];
	backtrace(warm, 2); /* loads libgcc now, not inside a failing call */
	snprintf(base, sizeof(base), "/tmp/mig-allocfail-%d", (int)getpid());
	if (mig_set_allocator(t_malloc, t_realloc, t_free) != 0)
		return 1;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sweep_plain),
		cmocka_unit_test(test_sweep_linkdrop),
		cmocka_unit_test(test_sweep_clients),
	};
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	rmtree(base);
	return rc;
}
