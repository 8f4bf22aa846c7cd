/* The session channel end to end: engines in this process, clients as real
 * separate processes (session_client, which uses only <migrate/client.h>)
 * whose stdout lines are read through a pipe.
 *
 *   test_follow_redirects  a user migrated A->B->A; two clients follow both
 *                          redirects and are attached at the right engine
 *                          each time; a dropped link re-attaches with the
 *                          resume token
 *   test_refusals          replayed, expired, other user's, other engine's,
 *                          forged tokens, and a token for an engine that no
 *                          longer holds the user: each refused with its reason
 *   test_destination_down  the engine is not listening yet: the helper backs
 *                          off (doubling, with jitter), then attaches once it
 *                          comes up; with a fallback list it tries the next URL
 *   test_handshake         white-box: the session channel needs no cluster
 *                          secret but nothing gets in before a good Attach;
 *                          peer and control channels stay as strict */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "app_model.h"
#include "engine_int.h"
#include "raw_client.h"
#include "support.h"
#include "token.h"
#include "transport.h"
#include "wire.h"

#define OTHER_SECRET "another-cluster-secret-fedcba9876543210"
#define APP_URL_A "tcp://app-a.test:9001"
#define APP_URL_B "https://app-b.test/clients"
#define WAIT_MS 15000
#define MAX_LINES 512

/* ---------------------------------------------------------------- client processes */

typedef struct child {
	pid_t pid;
	int in_fd;  /* the child's stdin */
	int out_fd; /* the child's stdout, non-blocking */
	char name[16];
	char buf[8192];
	size_t len;
	char *lines[MAX_LINES];
	int nlines;
	int cursor; /* lines before it were matched already */
} child;

static void child_start(child *ch, const char *name, const char *const *args)
{
	const char *exe = getenv("MIG_SESSION_CLIENT");
	if (!exe)
		fail_msg("MIG_SESSION_CLIENT is not set (run through meson test)");
	memset(ch, 0, sizeof(*ch));
	snprintf(ch->name, sizeof(ch->name), "%s", name);
	const char *argv[40];
	int n = 0;
	argv[n++] = exe;
	for (int i = 0; args[i] && n < 39; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	int in[2], out[2];
	assert_int_equal(pipe2(in, O_CLOEXEC), 0);
	assert_int_equal(pipe2(out, O_CLOEXEC), 0);
	fflush(stdout);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		/* Only async-signal-safe calls: this process has threads. */
		dup2(in[0], 0);
		dup2(out[1], 1);
		for (int fd = 3; fd < 1024; fd++)
			close(fd); /* not the engines' listening sockets */
		execv(exe, (char *const *)argv);
		_exit(127);
	}
	close(in[0]);
	close(out[1]);
	ch->pid = pid;
	ch->in_fd = in[1];
	ch->out_fd = out[0];
	fcntl(ch->out_fd, F_SETFL, O_NONBLOCK);
}

/* Reads what the child printed so far into lines. */
static void child_pump(child *ch)
{
	for (;;) {
		ssize_t n = read(ch->out_fd, ch->buf + ch->len, sizeof(ch->buf) - 1 - ch->len);
		if (n <= 0)
			break;
		ch->len += (size_t)n;
		ch->buf[ch->len] = '\0';
		char *nl;
		while ((nl = strchr(ch->buf, '\n'))) {
			*nl = '\0';
			if (ch->nlines < MAX_LINES) {
				ch->lines[ch->nlines++] = strdup(ch->buf);
				print_message("# [%s] %s\n", ch->name, ch->buf);
			}
			size_t rest = ch->len - (size_t)(nl + 1 - ch->buf);
			memmove(ch->buf, nl + 1, rest + 1);
			ch->len = rest;
		}
	}
}

static void child_stop(child *ch)
{
	if (!ch->pid)
		return;
	close(ch->in_fd);
	int status = 0;
	bool exited = false;
	for (int i = 0; i < 500 && !exited; i++) {
		if (waitpid(ch->pid, &status, WNOHANG) == ch->pid)
			exited = true;
		else
			usleep(10000);
	}
	if (!exited) {
		kill(ch->pid, SIGKILL);
		waitpid(ch->pid, &status, 0);
	}
	child_pump(ch);
	close(ch->out_fd);
	for (int i = 0; i < ch->nlines; i++)
		free(ch->lines[i]);
	memset(ch, 0, sizeof(*ch));
	if (exited && !(WIFEXITED(status) && WEXITSTATUS(status) == 0))
		fail_msg("session_client exited with status 0x%x", status);
}

struct want {
	child *ch;
	const char *a, *b, *c; /* every non-NULL one must be in the line */
	int found;             /* index of the matching line, or -1 */
};

static bool line_matches(const char *line, const struct want *w)
{
	return strstr(line, w->a) && (!w->b || strstr(line, w->b)) && (!w->c || strstr(line, w->c));
}

static bool found_line(void *arg)
{
	struct want *w = arg;
	child_pump(w->ch);
	for (int i = w->ch->cursor; i < w->ch->nlines; i++)
		if (line_matches(w->ch->lines[i], w)) {
			w->found = i;
			return true;
		}
	return false;
}

/* Dispatches the engines until the child prints a line (after the cursor)
 * holding a, b and c; moves the cursor past it and returns it. */
static const char *expect_line(child *ch, mig_engine **es, size_t n, const char *a, const char *b,
			       const char *c)
{
	struct want w = {ch, a, b, c, -1};
	if (!test_dispatch_until(es, n, found_line, &w, WAIT_MS)) {
		for (int i = ch->cursor; i < ch->nlines; i++)
			print_message("#   unmatched: %s\n", ch->lines[i]);
		fail_msg("[%s] no line with \"%s\" \"%s\" \"%s\" within %d ms", ch->name, a,
			 b ? b : "", c ? c : "", WAIT_MS);
	}
	ch->cursor = w.found + 1;
	return ch->lines[w.found];
}

/* How many lines from `from` to the cursor contain `needle`. */
static int lines_with(child *ch, int from, const char *needle)
{
	int n = 0;
	for (int i = from; i < ch->cursor; i++)
		n += strstr(ch->lines[i], needle) != NULL;
	return n;
}

/* ---------------------------------------------------------------- fixture */

struct fixture {
	struct app a, b;
	mig_engine *ea, *eb;
	child clients[5];
};

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));
	app_init(&f->a, "A");
	app_init(&f->b, "B");
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;
	for (size_t i = 0; i < MIG__ARRAY_LEN(f->clients); i++)
		child_stop(&f->clients[i]);
	mig_engine_free(f->ea);
	mig_engine_free(f->eb);
	app_free(&f->a);
	app_free(&f->b);
	free(f);
	return 0;
}

static void start_a(struct fixture *f)
{
	app_engine_cfg ca = {.id = "engine-a", .app_url = APP_URL_A, .record_logs = true,
			     .log_level = MIG_LOG_INFO};
	f->ea = app_engine_new(&f->a, &ca);
}

static void start_b(struct fixture *f, int port)
{
	app_engine_cfg cb = {.id = "engine-b", .app_url = APP_URL_B, .listen_port = port,
			     .record_logs = true, .log_level = MIG_LOG_INFO};
	f->eb = app_engine_new(&f->b, &cb);
}

/* Clients attached as `user` on e (white-box). */
static int attached(mig_engine *e, const char *user)
{
	int n = 0;
	pthread_mutex_lock(&e->lock);
	for (mig__conn_rec *c = e->conns; c; c = c->next)
		n += c->channel == MIGWIRE__CHANNEL__CHANNEL_SESSION && c->session_user &&
		     strcmp(c->session_user, user) == 0;
	pthread_mutex_unlock(&e->lock);
	return n;
}

struct attached_arg {
	mig_engine *e;
	const char *user;
	int want;
};

static bool attached_is(void *arg)
{
	struct attached_arg *x = arg;
	return attached(x->e, x->user) == x->want;
}

static void expect_attached(mig_engine **es, size_t n, mig_engine *e, const char *user, int want)
{
	struct attached_arg x = {e, user, want};
	if (!test_dispatch_until(es, n, attached_is, &x, WAIT_MS))
		fail_msg("%s: %d client(s) attached as %s, want %d", mig_engine_id(e),
			 attached(e, user), user, want);
}

struct ended_arg {
	mig_migration *m;
};

static bool migration_ended(void *arg)
{
	mig_migration_stats s;
	return mig_migration_info(((struct ended_arg *)arg)->m, &s) == 0 &&
	       s.state != MIG_MIGRATION_RUNNING;
}

static void migrate_ok(struct app *af, mig_engine *from, struct app *at, mig_engine *to, int i)
{
	char id[32];
	mig_migration *m = NULL;
	int rc = mig_migrate(from, app_uid(i, id), mig_engine_url(to), &m);
	if (rc)
		fail_msg("mig_migrate %s: %s: %s", id, mig_err_name(rc), mig_engine_last_error(from));
	mig_engine *es[2] = {from, to};
	struct ended_arg x = {m};
	if (!test_dispatch_until(es, 2, migration_ended, &x, WAIT_MS))
		fail_msg("migration of %s still running", id);
	rc = mig_migration_wait(m, 0);
	mig_migration_free(m);
	if (rc)
		fail_msg("migrating %s: %s", id, mig_err_name(rc));
	app_check_absent(af, from, i);
	app_check_holds(at, to, i, 1);
}

static void token_of(mig_engine *e, const char *user, char out[MIG_SESSION_TOKEN_MAX])
{
	int rc = mig_session_token(e, user, out, MIG_SESSION_TOKEN_MAX);
	if (rc)
		fail_msg("mig_session_token(%s): %s: %s", user, mig_err_name(rc),
			 mig_engine_last_error(e));
}

/* A token minted outside any engine (white-box): any target, any expiry. */
static void forge(const char *secret, const char *user, const char *target, int64_t expiry_delta,
		  char out[MIG_SESSION_TOKEN_MAX])
{
	mig__session_key key;
	assert_int_equal(mig__auth_session_key(secret, strlen(secret), &key), 0);
	assert_int_equal(mig__token_mint(&key, user, target, "test",
					 (uint64_t)((int64_t)time(NULL) + expiry_delta), out,
					 MIG_SESSION_TOKEN_MAX, NULL),
			 0);
}

/* A free loopback port (free when this returns; nothing else of ours binds
 * ephemeral ports in the meantime but the kernel's own choices). */
static int free_port(void)
{
	int s = socket(AF_INET, SOCK_STREAM, 0);
	assert_true(s >= 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	assert_int_equal(bind(s, (struct sockaddr *)&a, sizeof(a)), 0);
	socklen_t len = sizeof(a);
	assert_int_equal(getsockname(s, (struct sockaddr *)&a, &len), 0);
	close(s);
	return ntohs(a.sin_port);
}

/* ---------------------------------------------------------------- A -> B -> A */

static void test_follow_redirects(void **state)
{
	struct fixture *f = *state;
	start_a(f);
	start_b(f, 0);
	mig_engine *es[2] = {f->ea, f->eb};
	app_add_user(&f->a, f->ea, 1, 1);
	app_add_user(&f->a, f->ea, 2, 1); /* a bystander: must not be redirected */
	const char *user = "user-001";
	char url_a[128], url_b[128];
	snprintf(url_a, sizeof(url_a), "%s", mig_engine_url(f->ea));
	snprintf(url_b, sizeof(url_b), "%s", mig_engine_url(f->eb));

	/* Two clients of user-001 (say, glasses and phone), one of user-002. */
	char t1[MIG_SESSION_TOKEN_MAX], t2[MIG_SESSION_TOKEN_MAX], t3[MIG_SESSION_TOKEN_MAX];
	token_of(f->ea, user, t1);
	token_of(f->ea, user, t2);
	token_of(f->ea, "user-002", t3);
	child *c1 = &f->clients[0], *c2 = &f->clients[1], *c3 = &f->clients[2];
	child_start(c1, "c1", (const char *[]){"--url", url_a, "--token", t1, "--user", user, NULL});
	child_start(c2, "c2", (const char *[]){"--url", url_a, "--token", t2, "--user", user, NULL});
	child_start(c3, "c3",
		    (const char *[]){"--url", url_a, "--token", t3, "--user", "user-002", NULL});
	for (int k = 0; k < 3; k++) {
		child *c = &f->clients[k];
		expect_line(c, es, 2, "state CONNECTING", url_a, NULL);
		expect_line(c, es, 2, "state ATTACHED", "engine-a", "app=" APP_URL_A);
	}
	expect_attached(es, 2, f->ea, user, 2);
	expect_attached(es, 2, f->ea, "user-002", 1);

	/* A -> B: both clients of user-001 are sent to B, with B's app URL. */
	migrate_ok(&f->a, f->ea, &f->b, f->eb, 1);
	for (int k = 0; k < 2; k++) {
		child *c = &f->clients[k];
		expect_line(c, es, 2, "state REDIRECTED", "engine-b", url_b);
		char want[256];
		snprintf(want, sizeof(want),
			 "redirect user=%s app=" APP_URL_B " session=%s engine=engine-b", user, url_b);
		expect_line(c, es, 2, want, NULL, NULL);
		expect_line(c, es, 2, "state CONNECTING", url_b, NULL);
		expect_line(c, es, 2, "state ATTACHED", "engine-b", "app=" APP_URL_B);
	}
	expect_attached(es, 2, f->eb, user, 2);
	expect_attached(es, 2, f->ea, user, 0);
	/* A token minted by B while the user is there, for later. */
	char tb[MIG_SESSION_TOKEN_MAX];
	token_of(f->eb, user, tb);

	/* A link drop: the client re-attaches at B with its resume token. */
	pthread_mutex_lock(&f->eb->lock);
	uint64_t conn = 0;
	for (mig__conn_rec *c = f->eb->conns; c; c = c->next)
		if (c->channel == MIGWIRE__CHANNEL__CHANNEL_SESSION && c->session_user && !conn)
			conn = c->id;
	pthread_mutex_unlock(&f->eb->lock);
	assert_true(conn != 0);
	mig__transport_close(f->eb->transport, conn, 1001, "going away");
	child *dropped = NULL;
	for (int k = 0; k < 2 && !dropped; k++) {
		struct want w = {&f->clients[k], "state DISCONNECTED", NULL, NULL, -1};
		if (test_dispatch_until(es, 2, found_line, &w, 2000))
			dropped = &f->clients[k];
	}
	assert_non_null(dropped);
	expect_line(dropped, es, 2, "state DISCONNECTED", "going away", NULL);
	expect_line(dropped, es, 2, "state BACKING_OFF", "retry in", NULL);
	expect_line(dropped, es, 2, "state CONNECTING", url_b, NULL);
	expect_line(dropped, es, 2, "state ATTACHED", "engine-b", NULL);
	expect_attached(es, 2, f->eb, user, 2);

	/* B -> A: back again. */
	migrate_ok(&f->b, f->eb, &f->a, f->ea, 1);
	for (int k = 0; k < 2; k++) {
		child *c = &f->clients[k];
		expect_line(c, es, 2, "state REDIRECTED", "engine-a", url_a);
		char want[256];
		snprintf(want, sizeof(want),
			 "redirect user=%s app=" APP_URL_A " session=%s engine=engine-a", user, url_a);
		expect_line(c, es, 2, want, NULL, NULL);
		expect_line(c, es, 2, "state ATTACHED", "engine-a", "app=" APP_URL_A);
	}
	expect_attached(es, 2, f->ea, user, 2);
	expect_attached(es, 2, f->eb, user, 0);
	/* The bystander never moved. */
	test_dispatch_for(es, 2, 100);
	child_pump(c3);
	assert_int_equal(c3->nlines, 2);
	expect_attached(es, 2, f->ea, "user-002", 1);
	for (int k = 0; k < 3; k++) {
		child_pump(&f->clients[k]);
		assert_int_equal(lines_with(&f->clients[k], 0, "FAILED"), 0);
	}

	/* A client that attaches late, with the token B minted, at B, which no
	 * longer holds the user: B remembers where the user went and sends it
	 * on to A (an engine that never held the user refuses: test_refusals). */
	child *c4 = &f->clients[3];
	child_start(c4, "c4", (const char *[]){"--url", url_b, "--token", tb, "--user", user, NULL});
	expect_line(c4, es, 2, "state REDIRECTED", "engine-a", url_a);
	expect_line(c4, es, 2, "state ATTACHED", "engine-a", "app=" APP_URL_A);
	expect_attached(es, 2, f->ea, user, 3);
	child_stop(c4);
	/* The same token again is refused: it was used by that attach. */
	child *c5 = &f->clients[4];
	child_start(c5, "c5", (const char *[]){"--url", url_b, "--token", tb, "--user", user, NULL});
	const char *l = expect_line(c5, es, 2, "state FAILED", NULL, NULL);
	assert_non_null(strstr(l, "error=MIG_EEXIST detail=token already used"));
	child_stop(c5);
	app_check_no_violations(&f->a);
	app_check_no_violations(&f->b);
}

/* ---------------------------------------------------------------- refusals */

/* Starts a client with `token` at `url` as `user`, expects FAILED with `code`
 * and `reason`, and stops it. */
static void refused(struct fixture *f, mig_engine **es, size_t n, const char *what,
		    const char *url, const char *token, const char *user, const char *code,
		    const char *reason)
{
	child *c = &f->clients[3];
	child_start(c, "refused", (const char *[]){"--url", url, "--token", token, "--user", user,
						   NULL});
	const char *l = expect_line(c, es, n, "state FAILED", NULL, NULL);
	print_message("# %s: %s\n", what, l);
	char want[256];
	snprintf(want, sizeof(want), "error=%s detail=%s", code, reason);
	if (!strstr(l, want))
		fail_msg("%s: want \"%s\" in \"%s\"", what, want, l);
	/* Refused means no attach happened. */
	assert_int_equal(lines_with(c, 0, "ATTACHED"), 0);
	child_stop(c);
}

static void test_refusals(void **state)
{
	struct fixture *f = *state;
	start_a(f);
	start_b(f, 0);
	mig_engine *es[2] = {f->ea, f->eb};
	app_add_user(&f->a, f->ea, 1, 1);
	app_add_user(&f->a, f->ea, 2, 1);
	const char *user = "user-001";
	const char *url_a = mig_engine_url(f->ea), *url_b = mig_engine_url(f->eb);

	/* One good attach, then the same token again. */
	char t[MIG_SESSION_TOKEN_MAX];
	token_of(f->ea, user, t);
	child *c = &f->clients[0];
	child_start(c, "good", (const char *[]){"--url", url_a, "--token", t, "--user", user, NULL});
	expect_line(c, es, 2, "state ATTACHED", "engine-a", NULL);
	refused(f, es, 2, "replayed token", url_a, t, user, "MIG_EEXIST", "token already used");

	char x[MIG_SESSION_TOKEN_MAX];
	forge(TEST_SECRET, user, "engine-a", -5, x);
	refused(f, es, 2, "expired token", url_a, x, user, "MIG_ETIMEDOUT", "token expired");

	token_of(f->ea, "user-002", x);
	refused(f, es, 2, "another user's token", url_a, x, user, "MIG_EAUTH",
		"token is for another user");

	token_of(f->ea, user, x);
	refused(f, es, 2, "A's token at B", url_b, x, user, "MIG_EAUTH",
		"token for another engine");

	forge(TEST_SECRET, user, "engine-b", 600, x);
	refused(f, es, 2, "B's token, user not at B", url_b, x, user, "MIG_ENOUSER",
		"user not active on this engine");

	forge(OTHER_SECRET, user, "engine-a", 600, x);
	refused(f, es, 2, "another cluster's token", url_a, x, user, "MIG_EAUTH", "bad signature");

	forge(TEST_SECRET, user, "engine-a", 24 * 3600, x);
	refused(f, es, 2, "token for tomorrow", url_a, x, user, "MIG_EAUTH",
		"token expiry too far in the future");

	/* An arriving (not yet activated) user is not served: a token for it
	 * is refused until the engine activates it. (Forged: B cannot mint for
	 * a user it does not serve.) */
	assert_int_equal(mig_session_token(f->eb, user, x, sizeof(x)), MIG_ENOUSER);
	assert_int_equal(mig_session_token(f->ea, "user-031", x, sizeof(x)), MIG_ENOUSER);
	assert_int_equal(mig_session_token(f->ea, "bad user", x, sizeof(x)), MIG_EINVAL);
	assert_int_equal(mig_session_token(f->ea, user, x, 10), MIG_EINVAL);

	/* Everything refused, nothing changed: the good client is still the
	 * only one attached, and the user can still move with it. */
	expect_attached(es, 2, f->ea, user, 1);
	assert_true(app_log_contains(&f->a, "refused: token already used"));
	migrate_ok(&f->a, f->ea, &f->b, f->eb, 1);
	expect_line(c, es, 2, "state ATTACHED", "engine-b", NULL);
	expect_attached(es, 2, f->eb, user, 1);

	/* The user logs out at B: its client is closed, and its resume token
	 * is refused since B no longer serves the user. */
	assert_int_equal(mig_user_remove(f->eb, user), 0);
	expect_line(c, es, 2, "state DISCONNECTED", "the user left this engine", NULL);
	const char *l = expect_line(c, es, 2, "state FAILED", NULL, NULL);
	assert_non_null(strstr(l, "error=MIG_ENOUSER detail=user not active on this engine"));
	expect_attached(es, 2, f->eb, user, 0);
}

/* ---------------------------------------------------------------- resume token renewal */

static void test_resume_renewal(void **state)
{
	struct fixture *f = *state;
	app_engine_cfg ca = {.id = "engine-a", .app_url = APP_URL_A, .session_token_ttl_s = 2};
	f->ea = app_engine_new(&f->a, &ca);
	mig_engine *es[1] = {f->ea};
	app_add_user(&f->a, f->ea, 1, 1);
	/* The first token lives longer (a slow start, e.g. under valgrind,
	 * must not expire it); the engine's resume tokens live 2 s. */
	char t[MIG_SESSION_TOKEN_MAX];
	forge(TEST_SECRET, "user-001", "engine-a", 600, t);
	child *c = &f->clients[0];
	child_start(c, "renew", (const char *[]){"--url", mig_engine_url(f->ea), "--token", t,
						 "--user", "user-001", NULL});
	expect_line(c, es, 1, "state ATTACHED", "engine-a", NULL);
	/* Past the first resume token's expiry (2 s, whole seconds): only a
	 * renewed one (sent every second) gets back in. */
	test_dispatch_for(es, 1, 3500);
	pthread_mutex_lock(&f->ea->lock);
	uint64_t conn = 0;
	for (mig__conn_rec *r = f->ea->conns; r; r = r->next)
		if (r->channel == MIGWIRE__CHANNEL__CHANNEL_SESSION && r->session_user)
			conn = r->id;
	pthread_mutex_unlock(&f->ea->lock);
	assert_true(conn != 0);
	mig__transport_close(f->ea->transport, conn, 1001, "going away");
	expect_line(c, es, 1, "state DISCONNECTED", NULL, NULL);
	expect_line(c, es, 1, "state ATTACHED", "engine-a", NULL);
	child_pump(c);
	assert_int_equal(lines_with(c, 0, "FAILED"), 0);
}

/* ---------------------------------------------------------------- destination down */

static unsigned retry_ms(const char *line)
{
	const char *p = strstr(line, "retry in ");
	assert_non_null(p);
	return (unsigned)strtoul(p + 9, NULL, 10);
}

static void test_destination_down(void **state)
{
	struct fixture *f = *state;
	start_a(f);
	mig_engine *es[2] = {f->ea, NULL};
	int port = free_port();
	char url_b[64];
	snprintf(url_b, sizeof(url_b), "ws://127.0.0.1:%d", port);
	const char *user = "user-005";

	/* A token for engine-b (as A would mint it in a redirect), while B is
	 * not listening: the helper backs off, 50 ms doubling, +/-20 %. */
	char t[MIG_SESSION_TOKEN_MAX];
	forge(TEST_SECRET, user, "engine-b", 600, t);
	child *c = &f->clients[0];
	child_start(c, "down",
		    (const char *[]){"--url", url_b, "--token", t, "--user", user,
				     "--backoff-initial", "50", "--backoff-max", "400", "--jitter",
				     "20", NULL});
	unsigned want[4] = {50, 100, 200, 400};
	for (int k = 0; k < 4; k++) {
		expect_line(c, es, 1, "state CONNECTING", url_b, NULL);
		const char *l = expect_line(c, es, 1, "state BACKING_OFF", "error=MIG_ECONNECT", NULL);
		unsigned ms = retry_ms(l);
		print_message("# backoff %d: %u ms (nominal %u)\n", k + 1, ms, want[k]);
		assert_true(ms >= want[k] * 80 / 100 && ms <= want[k] * 120 / 100);
	}
	/* B comes up on that port with the user: the next attempt attaches. */
	start_b(f, port);
	es[1] = f->eb;
	app_add_user(&f->b, f->eb, 5, 1);
	expect_line(c, es, 2, "state CONNECTING", url_b, NULL);
	expect_line(c, es, 2, "state ATTACHED", "engine-b", "app=" APP_URL_B);
	expect_attached(es, 2, f->eb, user, 1);

	/* A fallback list: the first URL is dead, the second is B. */
	int dead = free_port();
	char url_dead[64];
	snprintf(url_dead, sizeof(url_dead), "ws://127.0.0.1:%d", dead);
	token_of(f->eb, user, t);
	child *d = &f->clients[1];
	child_start(d, "fallback",
		    (const char *[]){"--url", url_dead, "--fallback", url_b, "--token", t, "--user",
				     user, NULL});
	expect_line(d, es, 2, "state CONNECTING", url_dead, NULL);
	expect_line(d, es, 2, "state CONNECTING", url_b, NULL);
	expect_line(d, es, 2, "state ATTACHED", "engine-b", NULL);
	assert_int_equal(lines_with(d, 0, "BACKING_OFF"), 0); /* straight to the next URL */
	expect_attached(es, 2, f->eb, user, 2);

	/* Both dead: a round over the list, then backoff, then a new round. */
	child *g = &f->clients[2];
	token_of(f->eb, user, t);
	char url_dead2[64];
	snprintf(url_dead2, sizeof(url_dead2), "ws://127.0.0.1:%d", free_port());
	child_start(g, "all-dead",
		    (const char *[]){"--url", url_dead, "--fallback", url_dead2, "--token", t,
				     "--backoff-initial", "30", "--max-attempts", "4", NULL});
	expect_line(g, es, 2, "state CONNECTING", url_dead, NULL);
	expect_line(g, es, 2, "state CONNECTING", url_dead2, NULL);
	expect_line(g, es, 2, "state BACKING_OFF", NULL, NULL);
	expect_line(g, es, 2, "state CONNECTING", url_dead, NULL);
	expect_line(g, es, 2, "state CONNECTING", url_dead2, NULL);
	const char *l = expect_line(g, es, 2, "state FAILED", "gave up after 4 attempts", NULL);
	assert_non_null(strstr(l, "error=MIG_ECONNECT"));
}

/* ---------------------------------------------------------------- TLS */

static const char *cert(const char *name, char *buf, size_t len)
{
	const char *dir = getenv("MIG_TEST_CERT_DIR");
	if (!dir)
		fail_msg("MIG_TEST_CERT_DIR is not set (run through meson test)");
	snprintf(buf, len, "%s/%s", dir, name);
	return buf;
}

static mig_engine *tls_engine(const char *id, bool mutual)
{
	char crt[512], key[512], ca[512];
	mig_engine_options o;
	test_engine_options(&o, id);
	o.tls_cert_file = cert("server.pem", crt, sizeof(crt));
	o.tls_key_file = cert("server.key", key, sizeof(key));
	o.tls_ca_file = cert("ca.pem", ca, sizeof(ca));
	o.tls_require_client_cert = mutual;
	o.app_url = APP_URL_A;
	mig_engine *e = NULL;
	assert_int_equal(mig_engine_new(&e, &o), 0);
	int rc = mig_engine_start(e);
	if (rc)
		fail_msg("starting %s: %s", id, mig_engine_last_error(e));
	assert_int_equal(mig_user_add(e, "user-001"), 0);
	return e;
}

/* The helper over wss://, verifying the engine; and with mutual TLS,
 * presenting a client certificate (the token still decides). */
static void test_tls(void **state)
{
	struct fixture *f = *state;
	char ca[512], rogue_ca[512], crt[512], key[512];
	cert("ca.pem", ca, sizeof(ca));
	cert("rogue-ca.pem", rogue_ca, sizeof(rogue_ca));
	cert("server.pem", crt, sizeof(crt));
	cert("server.key", key, sizeof(key));
	f->ea = tls_engine("engine-a", false);
	mig_engine *es[2] = {f->ea, NULL};
	const char *url = mig_engine_url(f->ea);
	assert_int_equal(strncmp(url, "wss://", 6), 0);
	char t[MIG_SESSION_TOKEN_MAX];
	token_of(f->ea, "user-001", t);
	child *c = &f->clients[0];
	child_start(c, "tls", (const char *[]){"--url", url, "--token", t, "--user", "user-001",
					       "--ca", ca, NULL});
	expect_line(c, es, 1, "state ATTACHED", "engine-a", NULL);
	expect_attached(es, 1, f->ea, "user-001", 1);

	/* An engine the helper's CA does not vouch for: never attaches. */
	token_of(f->ea, "user-001", t);
	child *r = &f->clients[1];
	child_start(r, "rogue-ca", (const char *[]){"--url", url, "--token", t, "--ca", rogue_ca,
						    "--max-attempts", "2", NULL});
	const char *l = expect_line(r, es, 1, "state FAILED", "gave up after 2 attempts", NULL);
	assert_non_null(strstr(l, "certificate"));
	child_stop(r);

	/* Mutual TLS: no client certificate, no connection; with one, the
	 * token is checked as usual. */
	f->eb = tls_engine("engine-b", true);
	es[1] = f->eb;
	const char *url_b = mig_engine_url(f->eb);
	token_of(f->eb, "user-001", t);
	child_start(r, "no-cert", (const char *[]){"--url", url_b, "--token", t, "--ca", ca,
						   "--max-attempts", "1", NULL});
	expect_line(r, es, 2, "state FAILED", "gave up after 1 attempts", NULL);
	assert_int_equal(lines_with(r, 0, "ATTACHED"), 0);
	child_stop(r);
	child_start(r, "cert", (const char *[]){"--url", url_b, "--token", t, "--ca", ca, "--cert",
						crt, "--key", key, NULL});
	expect_line(r, es, 2, "state ATTACHED", "engine-b", NULL);
	expect_attached(es, 2, f->eb, "user-001", 1);
}

/* ---------------------------------------------------------------- handshake */

static void raw_attach(raw_client *rc, const char *token)
{
	Migwire__Attach a = MIGWIRE__ATTACH__INIT;
	a.token = (char *)token;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_ATTACH;
	f.attach = &a;
	raw_send(rc, &f);
}

static void test_handshake(void **state)
{
	struct fixture *f = *state;
	start_a(f);
	mig_engine *es[1] = {f->ea};
	app_add_user(&f->a, f->ea, 1, 1);
	const char *url = mig_engine_url(f->ea);

	/* No secret: the handshake passes on the session channel, but the
	 * first frame must be Attach. */
	raw_client rc;
	raw_open(&rc, url, MIGWIRE__CHANNEL__CHANNEL_SESSION, NULL, 0, true);
	assert_true(test_dispatch_until(es, 1, raw_is_up_or_down, &rc, WAIT_MS));
	assert_true(rc.up);
	Migwire__ListUsersRequest lu = MIGWIRE__LIST_USERS_REQUEST__INIT;
	lu.request_id = 1;
	mig__frame fl = MIGWIRE__FRAME__INIT;
	fl.body_case = MIGWIRE__FRAME__BODY_LIST_USERS;
	fl.list_users = &lu;
	raw_send(&rc, &fl);
	assert_true(test_dispatch_until(es, 1, raw_is_down, &rc, WAIT_MS));
	print_message("# session, no Attach: %s: %s\n", mig_err_name(rc.down_error), rc.down_reason);
	assert_int_equal(rc.down_error, MIG_EAUTH);
	assert_non_null(strstr(rc.down_reason, "attach required before any other frame"));
	assert_int_equal(rc.nframes, 0);
	raw_close(&rc);

	/* A malformed token: refused with a reason, then closed. */
	raw_open(&rc, url, MIGWIRE__CHANNEL__CHANNEL_SESSION, NULL, 0, true);
	raw_attach(&rc, "AAAA");
	assert_true(test_dispatch_until(es, 1, raw_is_down, &rc, WAIT_MS));
	assert_int_equal(rc.nframes, 1);
	assert_int_equal(rc.frames[0]->body_case, MIGWIRE__FRAME__BODY_ATTACH_REPLY);
	assert_int_equal(rc.frames[0]->attach_reply->code, MIG_EPROTO);
	assert_string_equal(rc.frames[0]->attach_reply->reason, "malformed token");
	raw_close(&rc);

	/* A good token: accepted with the engine's id, app URL and a resume
	 * token; a second Attach on the same connection closes it. */
	char t[MIG_SESSION_TOKEN_MAX];
	token_of(f->ea, "user-001", t);
	raw_open(&rc, url, MIGWIRE__CHANNEL__CHANNEL_SESSION, NULL, 0, true);
	raw_attach(&rc, t);
	assert_true(test_dispatch_until(es, 1, raw_has_frame, &rc, WAIT_MS));
	assert_int_equal(rc.nframes, 1);
	Migwire__AttachReply *ar = rc.frames[0]->attach_reply;
	assert_int_equal(ar->code, 0);
	assert_string_equal(ar->user, "user-001");
	assert_string_equal(ar->engine_id, "engine-a");
	assert_string_equal(ar->app_url, APP_URL_A);
	mig__token rt;
	mig__session_key key;
	assert_int_equal(mig__auth_session_key(TEST_SECRET, TEST_SECRET_LEN, &key), 0);
	assert_int_equal(mig__token_verify(&key, ar->resume_token, &rt, NULL), 0);
	assert_string_equal(rt.target, "engine-a");
	assert_string_equal(rt.user, "user-001");
	assert_int_equal(attached(f->ea, "user-001"), 1);
	raw_attach(&rc, ar->resume_token);
	assert_true(test_dispatch_until(es, 1, raw_is_down, &rc, WAIT_MS));
	assert_non_null(strstr(rc.down_reason, "unexpected frame on the session channel"));
	raw_close(&rc);
	test_dispatch_for(es, 1, 50);
	assert_int_equal(attached(f->ea, "user-001"), 0);

	/* Peer and control channels without the secret: refused as before. */
	const int strict[2] = {MIGWIRE__CHANNEL__CHANNEL_PEER, MIGWIRE__CHANNEL__CHANNEL_CONTROL};
	for (int k = 0; k < 2; k++) {
		raw_open(&rc, url, strict[k], NULL, 0, true);
		assert_true(test_dispatch_until(es, 1, raw_is_down, &rc, WAIT_MS));
		assert_false(rc.up);
		assert_int_equal(rc.down_error, MIG_EAUTH);
		assert_non_null(strstr(rc.down_reason, "authentication failed"));
		raw_close(&rc);
	}
	app_check_holds(&f->a, f->ea, 1, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_follow_redirects, setup, teardown),
		cmocka_unit_test_setup_teardown(test_refusals, setup, teardown),
		cmocka_unit_test_setup_teardown(test_destination_down, setup, teardown),
		cmocka_unit_test_setup_teardown(test_resume_renewal, setup, teardown),
		cmocka_unit_test_setup_teardown(test_tls, setup, teardown),
		cmocka_unit_test_setup_teardown(test_handshake, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
