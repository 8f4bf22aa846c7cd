/* The integration tests' application model; see app_model.h. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "app_model.h"
#include "support.h"

const char *const app_domain_name[APP_NDOM] = {"progress", "history"};
const uint32_t app_domain_version[APP_NDOM] = {1, 3};

/* ---------------------------------------------------------------- helpers */

static void violate(struct app *a, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void violate(struct app *a, const char *fmt, ...)
{
	pthread_mutex_lock(&a->lock);
	if (a->violations++ == 0) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(a->violation, sizeof(a->violation), fmt, ap);
		va_end(ap);
	}
	pthread_mutex_unlock(&a->lock);
}

static struct app_user *find_user(struct app *a, const char *user)
{
	int i;
	if (!user || sscanf(user, "user-%d", &i) != 1 || i < 0 || i >= APP_NUSERS) {
		violate(a, "%s: callback for unexpected user '%s'", a->name,
			user ? user : "(null)");
		return NULL;
	}
	return &a->users[i];
}

static int index_of(struct app *a, const struct app_user *u)
{
	return (int)(u - a->users);
}

static void free_state(struct app_user *u)
{
	for (int d = 0; d < APP_NDOM; d++) {
		free(u->dom[d]);
		u->dom[d] = NULL;
		u->len[d] = 0;
		u->merged_version[d] = 0;
	}
}

const char *app_uid(int i, char buf[32])
{
	snprintf(buf, 32, "user-%03d", i);
	return buf;
}

size_t app_state_len(int i, int d, unsigned tag)
{
	if (i == 0)
		return 0; /* an empty domain must travel too */
	return ((size_t)i * 7919u + (size_t)d * 104729u + tag * 31u) % 12000u + 1;
}

void app_state_bytes(int i, int d, unsigned tag, uint8_t *out)
{
	test_fill(out, app_state_len(i, d, tag),
		  (unsigned)(tag * 1000u + (unsigned)i * 2u + (unsigned)d + 1u));
}

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
	const uint8_t *b = p;
	for (size_t i = 0; i < n; i++) {
		h ^= b[i];
		h *= 1099511628211ull;
	}
	return h;
}

/* ---------------------------------------------------------------- domains */

static int extract_dom(const char *user, mig_buf *out, int d, struct app *a)
{
	struct app_user *u = find_user(a, user);
	if (!u)
		return -1;
	if (!u->present || !u->paused) {
		violate(a, "%s: extract of %s which is not present and paused", a->name, user);
		return -1;
	}
	return mig_buf_append(out, u->dom[d], u->len[d]);
}

static int merge_dom(const char *user, uint32_t version, const void *data, size_t len, int d,
		     struct app *a)
{
	struct app_user *u = find_user(a, user);
	if (!u)
		return -1;
	u->merges++;
	if (u->active) {
		violate(a, "%s: merge into active user %s", a->name, user);
		return -1;
	}
	if (index_of(a, u) == a->fail_merge_user)
		return a->fail_merge_rc;
	free(u->dom[d]);
	u->dom[d] = malloc(len ? len : 1);
	if (len)
		memcpy(u->dom[d], data, len);
	u->len[d] = len;
	u->merged_version[d] = version;
	u->present = true;
	return 0;
}

static int extract0(mig_engine *e, const char *user, mig_buf *out, void *ud)
{
	(void)e;
	return extract_dom(user, out, 0, ud);
}
static int extract1(mig_engine *e, const char *user, mig_buf *out, void *ud)
{
	(void)e;
	return extract_dom(user, out, 1, ud);
}
static int merge0(mig_engine *e, const char *user, uint32_t v, const void *d, size_t n, void *ud)
{
	(void)e;
	return merge_dom(user, v, d, n, 0, ud);
}
static int merge1(mig_engine *e, const char *user, uint32_t v, const void *d, size_t n, void *ud)
{
	(void)e;
	return merge_dom(user, v, d, n, 1, ud);
}

/* ---------------------------------------------------------------- hooks */

static int on_pause(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct app *a = ud;
	struct app_user *u = find_user(a, user);
	if (!u)
		return -1;
	if (!u->present || !u->active)
		violate(a, "%s: pause of %s which is not served here", a->name, user);
	u->paused = true;
	u->active = false;
	u->paused_n++;
	return 0;
}

static void on_resume(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct app *a = ud;
	struct app_user *u = find_user(a, user);
	if (!u)
		return;
	if (!u->present || !u->paused)
		violate(a, "%s: resume of %s which is not paused", a->name, user);
	u->paused = false;
	u->active = true;
	u->resumed++;
}

static void on_release(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct app *a = ud;
	struct app_user *u = find_user(a, user);
	if (!u)
		return;
	if (!u->present || !u->paused)
		violate(a, "%s: release of %s which is not paused", a->name, user);
	free_state(u);
	u->present = u->paused = u->active = false;
	u->released++;
}

static int on_incoming(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct app *a = ud;
	struct app_user *u = find_user(a, user);
	if (!u)
		return -1;
	if (u->present)
		violate(a, "%s: incoming %s which is already here", a->name, user);
	u->incoming++;
	return 0;
}

static void on_activate(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct app *a = ud;
	struct app_user *u = find_user(a, user);
	if (!u)
		return;
	if (u->active)
		violate(a, "%s: activate of %s which is already active", a->name, user);
	u->present = true;
	u->active = true;
	u->paused = false;
	u->activated++;
}

static void on_drop(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct app *a = ud;
	struct app_user *u = find_user(a, user);
	if (!u)
		return;
	if (u->active)
		violate(a, "%s: drop of %s which is active", a->name, user);
	free_state(u);
	u->present = false;
	u->dropped++;
}

static void on_event(mig_engine *e, const mig_event *ev, void *ud)
{
	struct app *a = ud;
	pthread_mutex_lock(&a->lock);
	if (a->nevents < APP_MAX_EVENTS) {
		struct app_event *r = &a->events[a->nevents++];
		r->type = ev->type;
		snprintf(r->mid, sizeof(r->mid), "%s", ev->mid ? ev->mid : "");
		snprintf(r->user, sizeof(r->user), "%s", ev->user ? ev->user : "");
		r->error = ev->error;
		snprintf(r->reason, sizeof(r->reason), "%s", ev->reason ? ev->reason : "");
	}
	void (*hook)(mig_engine *, const mig_event *, void *) = a->event_hook;
	void *arg = a->event_hook_arg;
	pthread_mutex_unlock(&a->lock);
	if (getenv("MIG_TEST_VERBOSE"))
		fprintf(stderr, "# [%s] event %d user %s error %d %s\n", a->name, (int)ev->type,
			ev->user, ev->error, ev->reason ? ev->reason : "");
	if (hook)
		hook(e, ev, arg);
}

static void on_log(mig_engine *e, mig_log_level level, const char *line, void *ud)
{
	(void)e;
	(void)level;
	struct app *a = ud;
	if (getenv("MIG_TEST_VERBOSE"))
		fprintf(stderr, "# [%s] %s\n", a->name, line);
	pthread_mutex_lock(&a->lock);
	if (a->nlogs < APP_MAX_LOGS)
		a->logs[a->nlogs++] = strdup(line);
	pthread_mutex_unlock(&a->lock);
}

/* ---------------------------------------------------------------- lifecycle */

void app_init(struct app *a, const char *name)
{
	memset(a, 0, sizeof(*a));
	a->name = name;
	a->fail_merge_user = -1;
	pthread_mutex_init(&a->lock, NULL);
}

void app_free(struct app *a)
{
	for (int i = 0; i < APP_NUSERS; i++)
		free_state(&a->users[i]);
	for (int i = 0; i < a->nlogs; i++)
		free(a->logs[i]);
	a->nlogs = 0;
	pthread_mutex_destroy(&a->lock);
}

mig_engine *app_engine_new(struct app *a, const app_engine_cfg *cfg)
{
	mig_engine_options o;
	test_engine_options(&o, cfg->id);
	if (cfg->secret) {
		o.secret = cfg->secret;
		o.secret_len = cfg->secret_len;
	}
	if (cfg->max_frame_bytes)
		o.max_frame_bytes = cfg->max_frame_bytes;
	o.app_url = cfg->app_url;
	o.listen_port = cfg->listen_port;
	o.session_token_ttl_s = cfg->session_token_ttl_s;
	if (cfg->peer_timeout_ms)
		o.peer_timeout_ms = cfg->peer_timeout_ms;
	o.on_event = on_event;
	bool verbose = getenv("MIG_TEST_VERBOSE") != NULL;
	if (cfg->record_logs || verbose) {
		o.on_log = on_log;
		o.log_level = verbose ? MIG_LOG_DEBUG : cfg->log_level;
	}
	o.user_data = a;
	mig_engine *e = NULL;
	assert_int_equal(mig_engine_new(&e, &o), 0);
	mig_hooks h = {on_pause, on_resume, on_release, on_incoming, on_activate, on_drop};
	assert_int_equal(mig_engine_set_hooks(e, &h, a), 0);
	mig_extract_fn ex[APP_NDOM] = {extract0, extract1};
	mig_merge_fn mg[APP_NDOM] = {merge0, merge1};
	const char *types[APP_NDOM] = {"test.Progress", "test.History"};
	for (int d = 0; d < APP_NDOM; d++) {
		if (cfg->version[d] < 0)
			continue;
		mig_light_domain dom = {app_domain_name[d], types[d],
					cfg->version[d] ? (uint32_t)cfg->version[d]
							: app_domain_version[d],
					ex[d], mg[d]};
		assert_int_equal(mig_light_domain_register(e, &dom, a), 0);
	}
	int rc = mig_engine_start(e);
	if (rc)
		fail_msg("starting %s: %s: %s", cfg->id, mig_err_name(rc),
			 mig_engine_last_error(e));
	return e;
}

void app_add_user(struct app *a, mig_engine *e, int i, unsigned tag)
{
	char id[32];
	assert_true(i >= 0 && i < APP_NUSERS);
	assert_int_equal(mig_user_add(e, app_uid(i, id)), 0);
	struct app_user *u = &a->users[i];
	free_state(u);
	u->present = u->active = true;
	u->paused = false;
	for (int d = 0; d < APP_NDOM; d++) {
		size_t len = app_state_len(i, d, tag);
		u->dom[d] = malloc(len ? len : 1);
		app_state_bytes(i, d, tag, u->dom[d]);
		u->len[d] = len;
	}
}

/* ---------------------------------------------------------------- checks */

void app_check_holds(struct app *a, mig_engine *e, int i, unsigned tag)
{
	char id[32];
	app_uid(i, id);
	mig_user_state st = mig_user_get_state(e, id);
	if (st != MIG_USER_ACTIVE)
		fail_msg("%s: %s is in state %d, not ACTIVE", a->name, id, (int)st);
	struct app_user *u = &a->users[i];
	if (!u->present || !u->active || u->paused)
		fail_msg("%s: app does not serve %s (present %d active %d paused %d)", a->name, id,
			 u->present, u->active, u->paused);
	for (int d = 0; d < APP_NDOM; d++) {
		size_t len = app_state_len(i, d, tag);
		uint8_t *want = malloc(len ? len : 1);
		app_state_bytes(i, d, tag, want);
		if (u->len[d] != len) {
			free(want);
			fail_msg("%s: %s domain %s holds %zu bytes, want %zu", a->name, id,
				 app_domain_name[d], u->len[d], len);
		}
		int same = len == 0 || memcmp(u->dom[d], want, len) == 0;
		free(want);
		if (!same)
			fail_msg("%s: %s domain %s bytes differ from the original", a->name, id,
				 app_domain_name[d]);
	}
}

void app_check_absent(struct app *a, mig_engine *e, int i)
{
	char id[32];
	app_uid(i, id);
	mig_user_state st = mig_user_get_state(e, id);
	if (st != MIG_USER_ABSENT)
		fail_msg("%s: %s is in state %d, not ABSENT", a->name, id, (int)st);
	if (a->users[i].present || a->users[i].active)
		fail_msg("%s: app still holds %s", a->name, id);
}

void app_check_no_violations(struct app *a)
{
	pthread_mutex_lock(&a->lock);
	int n = a->violations;
	char what[256];
	snprintf(what, sizeof(what), "%s", a->violation);
	pthread_mutex_unlock(&a->lock);
	if (n)
		fail_msg("%d unexpected callback(s); first: %s", n, what);
}

void app_snapshot_take(struct app *a, mig_engine *e, app_snapshot *s)
{
	memset(s, 0, sizeof(*s));
	for (int i = 0; i < APP_NUSERS; i++) {
		char id[32];
		struct app_user *u = &a->users[i];
		s->state[i] = mig_user_get_state(e, app_uid(i, id));
		s->present[i] = u->present;
		s->active[i] = u->active;
		uint64_t h = 1469598103934665603ull;
		for (int d = 0; d < APP_NDOM; d++) {
			h = fnv(h, &u->len[d], sizeof(u->len[d]));
			if (u->len[d])
				h = fnv(h, u->dom[d], u->len[d]);
		}
		s->hash[i] = h;
	}
	s->count = mig_user_count(e);
}

void app_snapshot_check(struct app *a, mig_engine *e, const app_snapshot *s)
{
	app_snapshot now;
	app_snapshot_take(a, e, &now);
	for (int i = 0; i < APP_NUSERS; i++) {
		if (now.state[i] != s->state[i])
			fail_msg("%s: user-%03d changed state %d -> %d", a->name, i,
				 (int)s->state[i], (int)now.state[i]);
		if (now.present[i] != s->present[i] || now.active[i] != s->active[i])
			fail_msg("%s: app's user-%03d changed (present %d->%d, active %d->%d)",
				 a->name, i, s->present[i], now.present[i], s->active[i],
				 now.active[i]);
		if (now.hash[i] != s->hash[i])
			fail_msg("%s: app's user-%03d state bytes changed", a->name, i);
	}
	if (now.count != s->count)
		fail_msg("%s: user count changed %zu -> %zu", a->name, s->count, now.count);
}

int app_events(struct app *a, mig_event_type type, const char *user, struct app_event *out)
{
	int n = 0;
	pthread_mutex_lock(&a->lock);
	for (int k = 0; k < a->nevents; k++) {
		const struct app_event *r = &a->events[k];
		if (r->type != type || (user && strcmp(r->user, user) != 0))
			continue;
		n++;
		if (out)
			*out = *r;
	}
	pthread_mutex_unlock(&a->lock);
	return n;
}

void app_events_clear(struct app *a)
{
	pthread_mutex_lock(&a->lock);
	a->nevents = 0;
	pthread_mutex_unlock(&a->lock);
}

bool app_log_contains(struct app *a, const char *needle)
{
	bool found = false;
	pthread_mutex_lock(&a->lock);
	for (int k = 0; k < a->nlogs && !found; k++)
		found = strstr(a->logs[k], needle) != NULL;
	pthread_mutex_unlock(&a->lock);
	return found;
}
