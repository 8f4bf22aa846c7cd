/* TLS between real engines over loopback (wss://), with the throwaway PKI
 * that tests/data/gen-certs.sh makes at build time (MIG_TEST_CERT_DIR):
 *   - two engines trusting the test CA move users A -> B -> A, byte-identical;
 *   - mutual TLS: engines that require a client certificate still migrate
 *     between themselves (each presents its own), a control client without a
 *     certificate (or with one from another CA) is refused, with one it works;
 *   - trust: a client that trusts only a rogue CA cannot connect, and an
 *     engine that trusts only the rogue CA cannot migrate (the user stays
 *     active at the source); nor can a good engine migrate to one whose
 *     certificate the rogue CA signed;
 *   - host names: wss://localhost:PORT works through the SAN; a certificate
 *     for another name, or an expired one, is refused;
 *   - unusable certificate, key or CA files fail start/connect with MIG_ETLS;
 *   - an engine started with no TLS option leaves OpenSSL alone until its
 *     first wss:// connect, then dials wss:// engines (system CA store).
 * Every refusal is checked for its error code (connection failures surface as
 * MIG_ECONNECT) and for a reason that names the TLS failure. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>

#include "migrate/control.h"
#include "support.h"

#define NUSERS 4
#define STATE_LEN (8 * 1024 + 17)
#define WAIT_MS 10000
#define CTL_TIMEOUT_MS 5000

/* ------------------------------------------------------------ certificates */

static char cert_dir[PATH_MAX];

static const char *cert(const char *name)
{
	/* A small ring of buffers: a call site may hold several at once. */
	static char bufs[8][PATH_MAX + 32];
	static unsigned next;
	char *b = bufs[next++ % 8];
	snprintf(b, sizeof(bufs[0]), "%s/%s", cert_dir, name);
	return b;
}

/* MIG_TEST_CERT_DIR (set by meson), else ../data next to this executable. */
static int find_cert_dir(void)
{
	const char *env = getenv("MIG_TEST_CERT_DIR");
	if (env && env[0]) {
		snprintf(cert_dir, sizeof(cert_dir), "%s", env);
	} else {
		char exe[PATH_MAX - 16];
		ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
		if (n <= 0)
			return -1;
		exe[n] = '\0';
		char *slash = strrchr(exe, '/');
		if (slash)
			*slash = '\0';
		snprintf(cert_dir, sizeof(cert_dir), "%s/../data", exe);
	}
	if (access(cert("ca.pem"), R_OK) != 0) {
		fprintf(stderr, "test_tls: no test certificates in %s (set MIG_TEST_CERT_DIR)\n",
			cert_dir);
		return -1;
	}
	return 0;
}

/* True if `text` mentions any of the NULL-terminated words (any case). */
static bool mentions(const char *text, ...)
{
	va_list ap;
	va_start(ap, text);
	bool found = false;
	for (const char *w; !found && (w = va_arg(ap, const char *));)
		found = text && strcasestr(text, w) != NULL;
	va_end(ap);
	return found;
}

#define TLS_WORDS "certificate", "verify", "ssl", "tls", "handshake", "alert"

/* -------------------------------------------------------------- the app */

struct app_user {
	bool present, active;
	uint8_t *state;
	size_t len;
	int released, activated, resumed, dropped;
};

struct app {
	struct app_user users[NUSERS];
	/* The last ABORTED event this engine reported. */
	int aborts;
	int abort_error;
	char abort_reason[512];
	int commits;
	/* Lines logged at WARN or worse that refuse a client certificate. */
	int cert_refusals;
};

static int user_index(const char *user)
{
	int i;
	if (sscanf(user, "user-%d", &i) != 1 || i < 0 || i >= NUSERS)
		return -1;
	return i;
}

static void user_name(char *buf, size_t len, int i)
{
	snprintf(buf, len, "user-%d", i);
}

static int extract(mig_engine *e, const char *user, mig_buf *out, void *ud)
{
	(void)e;
	struct app *a = ud;
	struct app_user *u = &a->users[user_index(user)];
	if (!u->present)
		return -1;
	return mig_buf_append(out, u->state, u->len);
}

static int merge(mig_engine *e, const char *user, uint32_t version, const void *data,
		 size_t len, void *ud)
{
	(void)e;
	(void)version;
	struct app *a = ud;
	struct app_user *u = &a->users[user_index(user)];
	free(u->state);
	u->state = malloc(len ? len : 1);
	if (!u->state)
		return -1;
	memcpy(u->state, data, len);
	u->len = len;
	u->present = true;
	u->active = false;
	return 0;
}

static int on_pause(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	((struct app *)ud)->users[user_index(user)].active = false;
	return 0;
}

static void on_resume(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct app_user *u = &((struct app *)ud)->users[user_index(user)];
	u->active = true;
	u->resumed++;
}

static void on_release(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct app_user *u = &((struct app *)ud)->users[user_index(user)];
	free(u->state);
	u->state = NULL;
	u->len = 0;
	u->present = u->active = false;
	u->released++;
}

static void on_activate(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct app_user *u = &((struct app *)ud)->users[user_index(user)];
	u->active = true;
	u->activated++;
}

static void on_drop(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	struct app_user *u = &((struct app *)ud)->users[user_index(user)];
	free(u->state);
	u->state = NULL;
	u->len = 0;
	u->present = u->active = false;
	u->dropped++;
}

static void on_event(mig_engine *e, const mig_event *ev, void *ud)
{
	(void)e;
	struct app *a = ud;
	if (ev->type == MIG_EVENT_ABORTED) {
		a->aborts++;
		a->abort_error = ev->error;
		snprintf(a->abort_reason, sizeof(a->abort_reason), "%s",
			 ev->reason ? ev->reason : "");
	} else if (ev->type == MIG_EVENT_COMMITTED) {
		a->commits++;
	}
}

static void on_log(mig_engine *e, mig_log_level level, const char *line, void *ud)
{
	(void)e;
	(void)level;
	if (strstr(line, "refused a client certificate"))
		((struct app *)ud)->cert_refusals++;
}

static bool refusal_logged(void *arg)
{
	return ((struct app *)arg)->cert_refusals > 0;
}

static void app_free(struct app *a)
{
	for (int i = 0; i < NUSERS; i++)
		free(a->users[i].state);
	free(a);
}

/* ------------------------------------------------------------- engines */

struct tls_cfg {
	const char *cert; /* file names in cert_dir, or NULL */
	const char *key;
	const char *ca;
	int require_client_cert;
};

static const struct tls_cfg GOOD = {"server.pem", "server.key", "ca.pem", 0};
static const struct tls_cfg MUTUAL = {"server.pem", "server.key", "ca.pem", 1};
static const struct tls_cfg PLAIN = {NULL, NULL, NULL, 0};

static mig_engine *make_engine(struct app *a, const char *id, const struct tls_cfg *tc)
{
	mig_engine_options o;
	test_engine_options(&o, id);
	o.tls_cert_file = tc->cert ? cert(tc->cert) : NULL;
	o.tls_key_file = tc->key ? cert(tc->key) : NULL;
	o.tls_ca_file = tc->ca ? cert(tc->ca) : NULL;
	o.tls_require_client_cert = tc->require_client_cert;
	/* TLS handshakes under valgrind can take a while: no step waits for a
	 * peer that is not there, so a long peer timeout costs nothing. */
	o.peer_timeout_ms = 15000;
	o.on_event = on_event;
	o.on_log = on_log;
	o.log_level = MIG_LOG_WARN;
	o.user_data = a;
	mig_engine *e = NULL;
	assert_int_equal(mig_engine_new(&e, &o), 0);
	mig_hooks h = {on_pause, on_resume, on_release, NULL, on_activate, on_drop};
	assert_int_equal(mig_engine_set_hooks(e, &h, a), 0);
	mig_light_domain d = {"blob", "test.Blob", 1, extract, merge};
	assert_int_equal(mig_light_domain_register(e, &d, a), 0);
	int rc = mig_engine_start(e);
	if (rc)
		fail_msg("starting %s: %s: %s", id, mig_err_name(rc), mig_engine_last_error(e));
	/* The derived URL says wss:// when the engine serves TLS. */
	char prefix[64];
	snprintf(prefix, sizeof(prefix), "%s://127.0.0.1:%d", tc->cert ? "wss" : "ws",
		 mig_engine_port(e));
	assert_string_equal(mig_engine_url(e), prefix);
	return e;
}

/* Reference copies of every user's state, to compare after the trips. */
struct fixture {
	uint8_t *orig[NUSERS];
	struct app *a, *b;
	mig_engine *ea, *eb;
	test_runner *ra, *rb; /* while a control client drives the engines */
	/* Engines with odd certificates, freed by the teardown. */
	struct app *xapp[2];
	mig_engine *xeng[2];
};

static void seed_users(struct fixture *f, struct app *a, mig_engine *e)
{
	for (int i = 0; i < NUSERS; i++) {
		char id[32];
		user_name(id, sizeof(id), i);
		assert_int_equal(mig_user_add(e, id), 0);
		struct app_user *u = &a->users[i];
		u->state = malloc(STATE_LEN);
		assert_non_null(u->state);
		test_fill(u->state, STATE_LEN, (unsigned)(i + 7));
		u->len = STATE_LEN;
		u->present = u->active = true;
		if (!f->orig[i]) {
			f->orig[i] = malloc(STATE_LEN);
			assert_non_null(f->orig[i]);
			memcpy(f->orig[i], u->state, STATE_LEN);
		}
	}
}

static void check_holds(struct fixture *f, struct app *a, mig_engine *e, int i)
{
	char id[32];
	user_name(id, sizeof(id), i);
	assert_int_equal(mig_user_get_state(e, id), MIG_USER_ACTIVE);
	struct app_user *u = &a->users[i];
	assert_true(u->present && u->active);
	assert_int_equal(u->len, STATE_LEN);
	assert_memory_equal(u->state, f->orig[i], STATE_LEN);
}

static void check_absent(struct app *a, mig_engine *e, int i)
{
	char id[32];
	user_name(id, sizeof(id), i);
	assert_int_equal(mig_user_get_state(e, id), MIG_USER_ABSENT);
	assert_false(a->users[i].present);
}

/* Two engines with the given TLS settings; users live on A. */
static struct fixture *fixture_new(const struct tls_cfg *ta, const struct tls_cfg *tb)
{
	struct fixture *f = calloc(1, sizeof(*f));
	assert_non_null(f);
	f->a = calloc(1, sizeof(*f->a));
	f->b = calloc(1, sizeof(*f->b));
	assert_non_null(f->a);
	assert_non_null(f->b);
	f->ea = make_engine(f->a, "engine-a", ta);
	f->eb = make_engine(f->b, "engine-b", tb);
	seed_users(f, f->a, f->ea);
	return f;
}

static void stop_runners(struct fixture *f)
{
	test_runner_stop(f->ra);
	test_runner_stop(f->rb);
	f->ra = f->rb = NULL;
}

static void start_runners(struct fixture *f)
{
	f->ra = test_runner_start(f->ea);
	f->rb = test_runner_start(f->eb);
	assert_non_null(f->ra);
	assert_non_null(f->rb);
}

/* An extra engine `slot` (0 or 1) with the given certificate. */
static mig_engine *extra_engine(struct fixture *f, int slot, const char *id,
				const struct tls_cfg *tc)
{
	f->xapp[slot] = calloc(1, sizeof(struct app));
	assert_non_null(f->xapp[slot]);
	f->xeng[slot] = make_engine(f->xapp[slot], id, tc);
	return f->xeng[slot];
}

static void fixture_free(struct fixture *f)
{
	/* A failed assertion may leave runners going: stop them first. */
	stop_runners(f);
	for (int i = 0; i < 2; i++) {
		mig_engine_free(f->xeng[i]);
		if (f->xapp[i])
			app_free(f->xapp[i]);
	}
	mig_engine_free(f->ea);
	mig_engine_free(f->eb);
	app_free(f->a);
	app_free(f->b);
	for (int i = 0; i < NUSERS; i++)
		free(f->orig[i]);
	free(f);
}

static int teardown(void **state)
{
	if (*state)
		fixture_free(*state);
	return 0;
}

/* ------------------------------------------------------ driving migrations */

static bool migration_ended(void *arg)
{
	mig_migration_stats st;
	if (mig_migration_info(arg, &st) != 0)
		return true;
	return st.state != MIG_MIGRATION_RUNNING;
}

/* Migrates `user` from `from` to `url` with mig_migrate(), dispatching both
 * engines on this thread. Returns 0 or the abort error. */
static int migrate_direct(mig_engine *from, mig_engine *to, const char *user, const char *url)
{
	mig_migration *m = NULL;
	assert_int_equal(mig_migrate(from, user, url, &m), 0);
	mig_engine *both[2] = {from, to};
	assert_true(test_dispatch_until(both, 2, migration_ended, m, WAIT_MS));
	mig_migration_stats st;
	assert_int_equal(mig_migration_info(m, &st), 0);
	mig_migration_free(m);
	/* Let the destination finish its side (activate / drop). */
	test_dispatch_for(both, 2, 50);
	return st.state == MIG_MIGRATION_COMMITTED ? 0 : (st.error ? st.error : MIG_EUNKNOWN);
}

static void ctl_options(mig_ctl_options *o, const char *url, const char *ca,
			const char *cert_name, const char *key_name)
{
	memset(o, 0, sizeof(*o));
	o->url = url;
	o->secret = TEST_SECRET;
	o->secret_len = TEST_SECRET_LEN;
	o->tls_ca_file = ca ? cert(ca) : NULL;
	o->tls_cert_file = cert_name ? cert(cert_name) : NULL;
	o->tls_key_file = key_name ? cert(key_name) : NULL;
	o->timeout_ms = CTL_TIMEOUT_MS;
}

/* Connects a control client that must be refused for a certificate reason;
 * returns the error. The reason (errbuf) must say so. */
static int ctl_refused(const mig_ctl_options *o, const char *what)
{
	mig_ctl *ctl = NULL;
	char err[256] = "";
	int rc = mig_ctl_new(&ctl, o, err, sizeof(err));
	if (rc == 0) {
		mig_ctl_free(ctl);
		fail_msg("%s: the control client connected to %s", what, o->url);
	}
	assert_null(ctl);
	print_message("# %s: %s: %s\n", what, mig_err_name(rc), err);
	if (rc != MIG_ETLS && rc != MIG_ECONNECT && rc != MIG_ECLOSED)
		fail_msg("%s: %s (%s)", what, mig_err_name(rc), err);
	if (!mentions(err, TLS_WORDS, NULL))
		fail_msg("%s: the reason does not name the TLS failure: \"%s\"", what, err);
	return rc;
}

/* Connects a control client that must succeed and lists the users. */
static void ctl_lists(const mig_ctl_options *o, int expect_users)
{
	mig_ctl *ctl = NULL;
	char err[256] = "";
	int rc = mig_ctl_new(&ctl, o, err, sizeof(err));
	if (rc)
		fail_msg("control client to %s: %s: %s", o->url, mig_err_name(rc), err);
	assert_int_equal(mig_ctl_users(ctl, NULL, NULL), expect_users);
	mig_ctl_free(ctl);
}

/* Users [0, NUSERS) still active at `e` with their original bytes. */
static void check_all_home(struct fixture *f, struct app *a, mig_engine *e)
{
	for (int i = 0; i < NUSERS; i++)
		check_holds(f, a, e, i);
	assert_int_equal(mig_user_count(e), NUSERS);
}

/* The migration of user-0 from f->ea to `url` must abort for a certificate
 * reason, leaving the user active at A. */
static void check_migration_refused(struct fixture *f, mig_engine *to, const char *url,
				    const char *what)
{
	int aborts = f->a->aborts;
	int rc = migrate_direct(f->ea, to, "user-0", url);
	print_message("# %s: %s: %s\n", what, mig_err_name(rc), f->a->abort_reason);
	if (rc != MIG_ETLS && rc != MIG_ECONNECT && rc != MIG_ECLOSED)
		fail_msg("%s: %s (%s)", what, mig_err_name(rc), f->a->abort_reason);
	assert_int_equal(f->a->aborts, aborts + 1);
	assert_int_equal(f->a->abort_error, rc);
	if (!mentions(f->a->abort_reason, TLS_WORDS, NULL))
		fail_msg("%s: the reason does not name the TLS failure: \"%s\"", what,
			 f->a->abort_reason);
	check_all_home(f, f->a, f->ea);
	assert_int_equal(f->a->users[0].released, 0);
	assert_int_equal(mig_user_count(to), 0);
}

/* ----------------------------------------------------------------- tests */

/* wss:// both ways: A -> B with mig_migrate(), B -> A through B's control
 * channel over wss:// (the control client trusting the test CA). */
static void test_wss_there_and_back(void **state)
{
	struct fixture *f = *state = fixture_new(&GOOD, &GOOD);
	assert_true(strncmp(mig_engine_url(f->eb), "wss://", 6) == 0);

	for (int i = 0; i < NUSERS; i++) {
		char id[32];
		user_name(id, sizeof(id), i);
		int rc = migrate_direct(f->ea, f->eb, id, mig_engine_url(f->eb));
		if (rc)
			fail_msg("migrating %s: %s: %s", id, mig_err_name(rc), f->a->abort_reason);
	}
	for (int i = 0; i < NUSERS; i++) {
		check_absent(f->a, f->ea, i);
		check_holds(f, f->b, f->eb, i);
		assert_int_equal(f->a->users[i].released, 1);
		assert_int_equal(f->b->users[i].activated, 1);
	}
	assert_int_equal(f->a->commits, NUSERS);

	start_runners(f);
	mig_ctl_options o;
	ctl_options(&o, mig_engine_url(f->eb), "ca.pem", NULL, NULL);
	mig_ctl *ctl = NULL;
	char err[256] = "";
	int rc = mig_ctl_new(&ctl, &o, err, sizeof(err));
	if (rc)
		fail_msg("control client: %s: %s", mig_err_name(rc), err);
	for (int i = 0; i < NUSERS; i++) {
		char id[32];
		user_name(id, sizeof(id), i);
		mig_event fin;
		rc = mig_ctl_migrate(ctl, id, mig_engine_url(f->ea), WAIT_MS, NULL, NULL, &fin);
		if (rc)
			fail_msg("migrating %s back: %s: %s", id, mig_err_name(rc),
				 mig_ctl_last_error(ctl));
		assert_int_equal(fin.type, MIG_EVENT_COMMITTED);
		assert_true(fin.bytes_sent >= STATE_LEN);
	}
	mig_ctl_free(ctl);
	stop_runners(f);

	check_all_home(f, f->a, f->ea);
	for (int i = 0; i < NUSERS; i++)
		check_absent(f->b, f->eb, i);
	assert_int_equal(mig_user_count(f->eb), 0);
}

/* Mutual TLS: engines requiring client certificates migrate between
 * themselves; control clients need a certificate from the CA. */
static void test_mutual_tls(void **state)
{
	struct fixture *f = *state = fixture_new(&MUTUAL, &MUTUAL);

	/* Each engine presents its certificate when it connects. */
	for (int i = 0; i < 2; i++) {
		char id[32];
		user_name(id, sizeof(id), i);
		int rc = migrate_direct(f->ea, f->eb, id, mig_engine_url(f->eb));
		if (rc)
			fail_msg("migrating %s: %s: %s", id, mig_err_name(rc), f->a->abort_reason);
		check_absent(f->a, f->ea, i);
		check_holds(f, f->b, f->eb, i);
	}
	int rc = migrate_direct(f->eb, f->ea, "user-1", mig_engine_url(f->ea));
	if (rc)
		fail_msg("migrating user-1 back: %s: %s", mig_err_name(rc), f->b->abort_reason);
	check_holds(f, f->a, f->ea, 1);
	check_absent(f->b, f->eb, 1);
	/* user-0 is at B, the rest at A. */
	assert_int_equal(mig_user_count(f->ea), NUSERS - 1);
	assert_int_equal(mig_user_count(f->eb), 1);

	start_runners(f);
	mig_ctl_options o;

	/* No client certificate: refused during the TLS handshake. */
	ctl_options(&o, mig_engine_url(f->ea), "ca.pem", NULL, NULL);
	ctl_refused(&o, "mTLS, no client certificate");

	/* A client certificate from another CA: refused too. */
	ctl_options(&o, mig_engine_url(f->ea), "ca.pem", "rogue.pem", "rogue.key");
	ctl_refused(&o, "mTLS, client certificate from the rogue CA");

	/* Nothing moved meanwhile. */
	assert_int_equal(mig_user_count(f->ea), NUSERS - 1);
	assert_int_equal(mig_user_count(f->eb), 1);
	stop_runners(f);
	/* A logged why it refused the rogue certificate. The line comes from
	 * A's I/O thread and reaches on_log at a dispatch: wait for it. */
	mig_engine *only_a[] = {f->ea};
	assert_true(test_dispatch_until(only_a, 1, refusal_logged, f->a, WAIT_MS));

	/* An engine presenting the rogue certificate (and trusting the good CA,
	 * so that it accepts A's) cannot migrate to A: A refuses it. */
	const struct tls_cfg rogue_peer = {"rogue.pem", "rogue.key", "ca.pem", 0};
	mig_engine *er = extra_engine(f, 0, "engine-rogue-peer", &rogue_peer);
	struct app *r = f->xapp[0];
	assert_int_equal(mig_user_add(er, "user-3"), 0);
	r->users[3].state = calloc(1, 16);
	assert_non_null(r->users[3].state);
	r->users[3].len = 16;
	r->users[3].present = r->users[3].active = true;
	rc = migrate_direct(er, f->ea, "user-3", mig_engine_url(f->ea));
	print_message("# mTLS, engine with a rogue certificate: %s: %s\n", mig_err_name(rc),
		      r->abort_reason);
	if (rc != MIG_ETLS && rc != MIG_ECONNECT && rc != MIG_ECLOSED)
		fail_msg("rogue peer: %s (%s)", mig_err_name(rc), r->abort_reason);
	if (!mentions(r->abort_reason, TLS_WORDS, NULL))
		fail_msg("rogue peer: the reason does not name the TLS failure: \"%s\"",
			 r->abort_reason);
	assert_int_equal(r->aborts, 1);
	assert_int_equal(mig_user_get_state(er, "user-3"), MIG_USER_ACTIVE);
	assert_true(r->users[3].active);
	assert_int_equal(r->users[3].released, 0);
	/* A has its own user-3; the rogue engine's never arrived. */
	assert_int_equal(mig_user_count(f->ea), NUSERS - 1);
	assert_int_equal(f->a->users[3].activated, 0);
	start_runners(f);

	/* With the certificate: accepted, and it can drive a migration. */
	ctl_options(&o, mig_engine_url(f->ea), "ca.pem", "server.pem", "server.key");
	ctl_lists(&o, NUSERS - 1);
	ctl_options(&o, mig_engine_url(f->eb), "ca.pem", "server.pem", "server.key");
	mig_ctl *ctl = NULL;
	char err[256] = "";
	rc = mig_ctl_new(&ctl, &o, err, sizeof(err));
	if (rc)
		fail_msg("control client with a certificate: %s: %s", mig_err_name(rc), err);
	rc = mig_ctl_migrate(ctl, "user-0", mig_engine_url(f->ea), WAIT_MS, NULL, NULL, NULL);
	if (rc)
		fail_msg("migrating user-0 back: %s: %s", mig_err_name(rc), mig_ctl_last_error(ctl));
	mig_ctl_free(ctl);
	stop_runners(f);

	check_all_home(f, f->a, f->ea);
	assert_int_equal(mig_user_count(f->eb), 0);
}

/* Trust: nothing signed by the rogue CA passes, and a peer that trusts only
 * the rogue CA cannot reach a good engine. */
static void test_rogue_ca(void **state)
{
	/* A trusts only the rogue CA (its own certificate is a good one); B is
	 * a good engine. */
	const struct tls_cfg trusts_rogue = {"server.pem", "server.key", "rogue-ca.pem", 0};
	struct fixture *f = *state = fixture_new(&trusts_rogue, &GOOD);

	/* A client that trusts only the rogue CA cannot connect to B. */
	mig_ctl_options o;
	ctl_options(&o, mig_engine_url(f->eb), "rogue-ca.pem", NULL, NULL);
	ctl_refused(&o, "client trusting the rogue CA");

	/* A cannot verify B: the migration aborts, the user stays at A. */
	check_migration_refused(f, f->eb, mig_engine_url(f->eb), "engine trusting the rogue CA");
	assert_int_equal(f->b->users[0].activated, 0);

	/* An engine whose certificate the rogue CA signed: a good client, and a
	 * good engine, refuse it. */
	const struct tls_cfg rogue = {"rogue.pem", "rogue.key", "rogue-ca.pem", 0};
	mig_engine *er = extra_engine(f, 0, "engine-rogue", &rogue);
	ctl_options(&o, mig_engine_url(er), "ca.pem", NULL, NULL);
	ctl_refused(&o, "engine with a rogue certificate");

	mig_engine *eb = f->eb;
	struct app *b = f->b;
	/* B (good) migrating to the rogue engine: seed a user at B. */
	assert_int_equal(mig_user_add(eb, "user-3"), 0);
	b->users[3].state = malloc(16);
	assert_non_null(b->users[3].state);
	memset(b->users[3].state, 0x5a, 16);
	b->users[3].len = 16;
	b->users[3].present = b->users[3].active = true;
	int aborts = b->aborts;
	int rc = migrate_direct(eb, er, "user-3", mig_engine_url(er));
	print_message("# good engine to rogue engine: %s: %s\n", mig_err_name(rc), b->abort_reason);
	if (rc != MIG_ETLS && rc != MIG_ECONNECT && rc != MIG_ECLOSED)
		fail_msg("good engine to rogue engine: %s (%s)", mig_err_name(rc), b->abort_reason);
	assert_int_equal(b->aborts, aborts + 1);
	assert_true(mentions(b->abort_reason, TLS_WORDS, NULL));
	assert_int_equal(mig_user_get_state(eb, "user-3"), MIG_USER_ACTIVE);
	assert_true(b->users[3].active);
	assert_int_equal(mig_user_count(er), 0);
}

/* No tls_ca_file: an engine trusts the system CA store (OpenSSL's default
 * paths, which SSL_CERT_FILE and SSL_CERT_DIR override), read at its first
 * wss:// connect and not at start, so that an engine with no wss:// peer
 * does not hold it in memory. */
static void test_system_store(void **state)
{
	const struct tls_cfg no_ca = {"server.pem", "server.key", NULL, 0};
	char dir[] = "/tmp/test_tls_nocerts.XXXXXX";
	assert_non_null(mkdtemp(dir));
	assert_int_equal(setenv("SSL_CERT_DIR", dir, 1), 0);
	assert_int_equal(setenv("SSL_CERT_FILE", cert("rogue-ca.pem"), 1), 0);

	/* The store holds only the rogue CA at A's first connect: refused. */
	struct fixture *f = *state = fixture_new(&no_ca, &GOOD);
	check_migration_refused(f, f->eb, mig_engine_url(f->eb), "system store: rogue CA");

	/* C starts while the store would hold the rogue CA and first connects
	 * once it holds the test CA: the migration passes only if the store
	 * was read at the connect. */
	mig_engine *ec = extra_engine(f, 0, "engine-c", &no_ca);
	assert_int_equal(setenv("SSL_CERT_FILE", cert("ca.pem"), 1), 0);
	struct app *c = f->xapp[0];
	assert_int_equal(mig_user_add(ec, "user-3"), 0);
	c->users[3].state = malloc(16);
	assert_non_null(c->users[3].state);
	memset(c->users[3].state, 0x3c, 16);
	c->users[3].len = 16;
	c->users[3].present = c->users[3].active = true;
	int rc = migrate_direct(ec, f->eb, "user-3", mig_engine_url(f->eb));
	if (rc)
		fail_msg("system store: test CA: %s: %s", mig_err_name(rc), c->abort_reason);
	assert_int_equal(mig_user_get_state(f->eb, "user-3"), MIG_USER_ACTIVE);
	assert_int_equal(f->b->users[3].activated, 1);

	unsetenv("SSL_CERT_FILE");
	unsetenv("SSL_CERT_DIR");
	rmdir(dir);
}

/* Has anything in this process initialised libssl? Its reason strings are
 * loaded by OpenSSL's SSL init (libwebsockets' global TLS init, or the first
 * SSL_CTX), and by nothing else. */
static bool ssl_initialised(void)
{
	return ERR_reason_error_string(ERR_PACK(ERR_LIB_SSL, 0, SSL_R_NO_SHARED_CIPHER)) != NULL;
}

/* An engine with no TLS option (ws://, no CA file, no certificate) does not
 * initialise OpenSSL at start: that costs an app ~2 MiB of resident memory
 * (docs/BENCHMARKS.md, "Cost to the application"). Its first wss:// connect
 * does, and then it migrates to wss:// engines trusting the system CA
 * store, read at that connect. Runs first, in a process where nothing has
 * used TLS yet. */
static void test_plain_engine_dials_wss(void **state)
{
	char dir[] = "/tmp/test_tls_nocerts.XXXXXX";
	assert_non_null(mkdtemp(dir));
	assert_int_equal(setenv("SSL_CERT_DIR", dir, 1), 0);
	assert_int_equal(setenv("SSL_CERT_FILE", cert("ca.pem"), 1), 0);

	struct fixture *f = *state = calloc(1, sizeof(*f));
	assert_non_null(f);
	f->a = calloc(1, sizeof(*f->a));
	f->b = calloc(1, sizeof(*f->b));
	assert_non_null(f->a);
	assert_non_null(f->b);
	f->ea = make_engine(f->a, "engine-a", &PLAIN);
	seed_users(f, f->a, f->ea);
	mig_engine *ea[1] = {f->ea};
	test_dispatch_for(ea, 1, 100);
	if (ssl_initialised())
		fail_msg("an engine without TLS options initialised OpenSSL's SSL library");

	/* B serves wss:// (and initialises OpenSSL for itself). */
	f->eb = make_engine(f->b, "engine-b", &GOOD);
	for (int i = 0; i < NUSERS; i++) {
		char id[32];
		user_name(id, sizeof(id), i);
		int rc = migrate_direct(f->ea, f->eb, id, mig_engine_url(f->eb));
		if (rc)
			fail_msg("ws:// engine to wss:// engine, %s: %s: %s", id, mig_err_name(rc),
				 f->a->abort_reason);
		check_absent(f->a, f->ea, i);
		check_holds(f, f->b, f->eb, i);
	}
	/* A still serves ws:// after its TLS vhost exists: B -> A. */
	int rc = migrate_direct(f->eb, f->ea, "user-0", mig_engine_url(f->ea));
	if (rc)
		fail_msg("back to the ws:// engine: %s: %s", mig_err_name(rc), f->b->abort_reason);
	check_holds(f, f->a, f->ea, 0);

	/* C, also without TLS options, first dials when the system store holds
	 * only the rogue CA: refused with a TLS reason, the user stays. */
	assert_int_equal(setenv("SSL_CERT_FILE", cert("rogue-ca.pem"), 1), 0);
	mig_engine *ec = extra_engine(f, 0, "engine-c", &PLAIN);
	struct app *c = f->xapp[0];
	assert_int_equal(mig_user_add(ec, "user-3"), 0);
	c->users[3].state = malloc(16);
	assert_non_null(c->users[3].state);
	memset(c->users[3].state, 0x3c, 16);
	c->users[3].len = 16;
	c->users[3].present = c->users[3].active = true;
	int aborts = c->aborts;
	rc = migrate_direct(ec, f->eb, "user-3", mig_engine_url(f->eb));
	print_message("# ws:// engine, rogue system store: %s: %s\n", mig_err_name(rc),
		      c->abort_reason);
	if (rc != MIG_ETLS && rc != MIG_ECONNECT && rc != MIG_ECLOSED)
		fail_msg("rogue system store: %s (%s)", mig_err_name(rc), c->abort_reason);
	assert_int_equal(c->aborts, aborts + 1);
	assert_true(mentions(c->abort_reason, TLS_WORDS, NULL));
	assert_int_equal(mig_user_get_state(ec, "user-3"), MIG_USER_ACTIVE);
	assert_true(c->users[3].active);

	unsetenv("SSL_CERT_FILE");
	unsetenv("SSL_CERT_DIR");
	rmdir(dir);
}

/* Host names: the SAN covers localhost and 127.0.0.1; a certificate for
 * another name or an expired one is refused by clients and engines. */
static void test_hostname(void **state)
{
	struct fixture *f = *state = fixture_new(&GOOD, &GOOD);

	/* wss://localhost:PORT: verified through DNS:localhost. */
	char url[64];
	snprintf(url, sizeof(url), "wss://localhost:%d", mig_engine_port(f->eb));
	mig_ctl_options o;
	ctl_options(&o, url, "ca.pem", NULL, NULL);
	start_runners(f);
	ctl_lists(&o, 0);
	stop_runners(f);
	int rc = migrate_direct(f->ea, f->eb, "user-2", url);
	if (rc)
		fail_msg("migrating to %s: %s: %s", url, mig_err_name(rc), f->a->abort_reason);
	check_holds(f, f->b, f->eb, 2);
	check_absent(f->a, f->ea, 2);
	snprintf(url, sizeof(url), "wss://localhost:%d", mig_engine_port(f->ea));
	rc = migrate_direct(f->eb, f->ea, "user-2", url);
	if (rc)
		fail_msg("migrating back to %s: %s: %s", url, mig_err_name(rc), f->b->abort_reason);
	check_all_home(f, f->a, f->ea);

	/* A certificate for wrong.invalid, signed by the good CA. */
	const struct tls_cfg wrong = {"wronghost.pem", "wronghost.key", "ca.pem", 0};
	mig_engine *ew = extra_engine(f, 0, "engine-wronghost", &wrong);
	ctl_options(&o, mig_engine_url(ew), "ca.pem", NULL, NULL);
	ctl_refused(&o, "wrong host (127.0.0.1)");
	snprintf(url, sizeof(url), "wss://localhost:%d", mig_engine_port(ew));
	ctl_options(&o, url, "ca.pem", NULL, NULL);
	ctl_refused(&o, "wrong host (localhost)");
	check_migration_refused(f, ew, mig_engine_url(ew), "engine to wrong host");

	/* An expired certificate with the right names. */
	const struct tls_cfg expired = {"expired.pem", "expired.key", "ca.pem", 0};
	mig_engine *ex = extra_engine(f, 1, "engine-expired", &expired);
	ctl_options(&o, mig_engine_url(ex), "ca.pem", NULL, NULL);
	ctl_refused(&o, "expired certificate");
	check_migration_refused(f, ex, mig_engine_url(ex), "engine to expired certificate");
}

/* Unusable TLS files: start and connect fail with MIG_ETLS and say which. */
static void test_bad_files(void **state)
{
	(void)state;
	mig_engine_options o;
	test_engine_options(&o, "engine-bad");
	o.tls_cert_file = cert("no-such-cert.pem");
	o.tls_key_file = cert("server.key");
	o.tls_ca_file = cert("ca.pem");
	mig_engine *e = NULL;
	assert_int_equal(mig_engine_new(&e, &o), 0);
	int rc = mig_engine_start(e);
	print_message("# missing certificate: %s: %s\n", mig_err_name(rc), mig_engine_last_error(e));
	assert_int_equal(rc, MIG_ETLS);
	assert_true(mentions(mig_engine_last_error(e), "certificate", NULL));
	mig_engine_free(e);

	/* A key that does not match the certificate. */
	o.tls_cert_file = cert("server.pem");
	o.tls_key_file = cert("rogue.key");
	assert_int_equal(mig_engine_new(&e, &o), 0);
	rc = mig_engine_start(e);
	print_message("# mismatched key: %s: %s\n", mig_err_name(rc), mig_engine_last_error(e));
	assert_int_equal(rc, MIG_ETLS);
	assert_true(mentions(mig_engine_last_error(e), "key", NULL));
	mig_engine_free(e);

	mig_ctl_options co;
	ctl_options(&co, "wss://127.0.0.1:1", "no-such-ca.pem", NULL, NULL);
	mig_ctl *ctl = NULL;
	char err[256] = "";
	rc = mig_ctl_new(&ctl, &co, err, sizeof(err));
	print_message("# missing CA file: %s: %s\n", mig_err_name(rc), err);
	assert_int_equal(rc, MIG_ETLS);
	assert_null(ctl);
	assert_true(mentions(err, "CA file", NULL));
}

int main(void)
{
	if (find_cert_dir() != 0)
		return 1;
	const struct CMUnitTest tests[] = {
		/* first: it checks that nothing initialised OpenSSL before */
		cmocka_unit_test_teardown(test_plain_engine_dials_wss, teardown),
		cmocka_unit_test_teardown(test_wss_there_and_back, teardown),
		cmocka_unit_test_teardown(test_mutual_tls, teardown),
		cmocka_unit_test_teardown(test_rogue_ca, teardown),
		cmocka_unit_test_teardown(test_system_store, teardown),
		cmocka_unit_test_teardown(test_hostname, teardown),
		cmocka_unit_test(test_bad_files),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
