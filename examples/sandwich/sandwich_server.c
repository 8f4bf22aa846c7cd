/* sandwich_server: a many-user assistant server built on libmigrate, after
 * the Gabriel "sandwich" cognitive assistant.
 *
 * Wearable clients send camera frames over the app's own TCP protocol
 * (sandwich.proto); the server "recognises" what is on the table (the frame
 * carries the label; there is no vision model) and walks each user through
 * bread, ham, lettuce, half, tomato, full, done, correcting wrong items.
 *
 * Per user it keeps
 *   - light state, the "progress" domain: step, last instruction, frames
 *     seen, mistakes, last frame id (a versioned sandwich.Progress message);
 *   - file state, the "frames" domain (append-only): every frame it
 *     processed, appended to STATE/<user>/frames.log, with an index line in
 *     STATE/<user>/frames.idx.
 * An orchestrator (migratectl) moves a user to another cloudlet while the
 * others keep going; the user's client follows by itself (reconnect helper).
 *
 *   sandwich_server --id NAME --secret-file FILE --state DIR
 *                   [--port P] [--app-port P] [--listen ADDRESS]
 *                   [--standby URL [--replicate-ms N] [--no-replicate-steps]]
 *                   [--auto-promote-ms N]
 *
 * Prints "url <engine url>" and "app <app url>" first, then one line per
 * event, "<wall clock> <cloudlet> <what> <user> key=value...", and on
 * SIGTERM/SIGINT one "final" line per user it holds.
 *
 * Failover (docs/FAILOVER.md): with --standby URL (another sandwich_server's
 * engine URL) every user served here is replicated to that standby every
 * --replicate-ms (default 1000), and at once after each step unless
 * --no-replicate-steps; its client gets a failover token for the standby
 * (a Standby message). A standby is an ordinary sandwich_server; promote a
 * user there with `migratectl promote`, or let it promote by itself with
 * --auto-promote-ms N (opt-in: see the split-brain caveat). Each
 * acknowledged update prints "replicated <user> seq=N step=S frame=N ...".
 *
 * Built with -DSANDWICH_NO_MIGRATE (examples/meson.build makes it
 * sandwich_server_plain, for bench/bench_sandwich.sh), every libmigrate call
 * is compiled out: no engine, domains, hooks, engine fd or session tokens,
 * and the binary does not link libmigrate. The app is otherwise the same
 * (same recognition, same frames.log and frames.idx writes); it prints
 * "url -" (--secret-file is then optional and unused), and its Welcome
 * carries no session URL or token. */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef SANDWICH_NO_MIGRATE
#include <migrate/migrate.h>
#include <migrate/replicate.h>
#endif

#include "sandwich.h"

#define NBUCKETS 1024
#define RETRY_MS 100 /* what a paused user's client is told to wait */
/* A failover token lives session_token_ttl_s (600 s by default): the
 * client gets a fresh one at the first acknowledged update after this. */
#define FAILOVER_TOKEN_REFRESH_US (300ull * 1000000u)

enum watch_kind {
	W_LISTEN,
	W_ENGINE,
	W_SIGNAL,
	W_CONN
};

struct watch {
	enum watch_kind kind;
	int fd;
};

struct conn {
	struct watch w; /* first: epoll's data.ptr points here */
	char user[65];  /* "" until Hello */
	sw_buf in, out;
	bool want_out; /* EPOLLOUT registered */
	bool closing;  /* Moved sent: shut down once flushed */
	bool dead;
	struct conn *next;
};

struct user {
	char id[65];
	/* light state (the "progress" domain) */
	Sandwich__Step step;
	char text[160];
	uint64_t frames_seen, last_frame_id;
	uint32_t mistakes;
	char last_label[32];
	/* the app's own view */
	bool serving; /* frames advance it here */
	/* failover (--standby): what the last replication extract saw (the
	 * update in flight is the last one extracted: the library sends one at
	 * a time), and when the client last got a failover token */
	Sandwich__Step repl_step;
	uint64_t repl_frame;
	uint64_t token_us;  /* 0: none handed out yet */
	bool replica_acked; /* the standby answered: a token can be minted */
	struct conn *conn;  /* its client, if connected */
	struct user *next;  /* hash chain */
};

struct server {
	const char *name; /* the cloudlet's name, also its engine id */
	const char *root; /* file domain root: ROOT/<user>/frames.log */
#ifndef SANDWICH_NO_MIGRATE
	mig_engine *engine;
	const char *standby_url; /* --standby: replicate every user there */
	unsigned replicate_ms;   /* 0: the library's default */
	bool replicate_steps;    /* also replicate at once after each step */
#endif
	int ep;
	struct watch listener, engine_w, signal_w;
	char app_url[96];
	struct user *users[NBUCKETS];
	size_t nusers;
	struct conn *conns;     /* live connections */
	struct conn *graveyard; /* closed during this epoll batch, freed after it */
};

/* ---------------------------------------------------------------- output */

static void say(struct server *s, const char *what, const char *user, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));

static void say(struct server *s, const char *what, const char *user, const char *fmt, ...)
{
	va_list ap;
	printf("%.6f %s %s %s", sw_wall(), s->name, what, user);
	if (fmt && *fmt) {
		putchar(' ');
		va_start(ap, fmt);
		vprintf(fmt, ap);
		va_end(ap);
	}
	putchar('\n');
	fflush(stdout);
}

/* ---------------------------------------------------------------- users */

static unsigned bucket(const char *id)
{
	return (unsigned)(sw_fnv(SW_FNV_INIT, id, strlen(id)) % NBUCKETS);
}

static struct user *user_find(struct server *s, const char *id)
{
	for (struct user *u = s->users[bucket(id)]; u; u = u->next)
		if (strcmp(u->id, id) == 0)
			return u;
	return NULL;
}

static struct user *user_new(struct server *s, const char *id)
{
	struct user *u = calloc(1, sizeof(*u));
	if (!u)
		return NULL;
	snprintf(u->id, sizeof(u->id), "%s", id);
	u->step = SANDWICH__STEP__STEP_BREAD;
	snprintf(u->text, sizeof(u->text), "%s", sw_step_text(u->step));
	unsigned b = bucket(id);
	u->next = s->users[b];
	s->users[b] = u;
	s->nusers++;
	return u;
}

static void user_free(struct server *s, struct user *u)
{
	for (struct user **p = &s->users[bucket(u->id)]; *p; p = &(*p)->next)
		if (*p == u) {
			*p = u->next;
			break;
		}
	if (u->conn)
		u->conn->user[0] = '\0';
	s->nusers--;
	free(u);
}

/* Ids that are safe as a folder name: [A-Za-z0-9_.-]{1,64}, no leading dot. */
static bool user_id_ok(const char *id)
{
	size_t n = strlen(id);
	if (n == 0 || n > 64 || id[0] == '.')
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = id[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '.' || c == '-'))
			return false;
	}
	return true;
}

static bool label_ok(const char *l)
{
	size_t n = strlen(l);
	if (n == 0 || n >= 32)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((l[i] >= 'a' && l[i] <= 'z') || l[i] == '-'))
			return false;
	return true;
}

/* ---------------------------------------------------------------- connections */

static void conn_update_events(struct server *s, struct conn *c)
{
	bool want = c->out.off < c->out.len;
	if (want == c->want_out)
		return;
	struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = &c->w};
	epoll_ctl(s->ep, EPOLL_CTL_MOD, c->w.fd, &ev);
	c->want_out = want;
}

static void conn_kill(struct server *s, struct conn *c)
{
	if (c->dead)
		return;
	c->dead = true;
	epoll_ctl(s->ep, EPOLL_CTL_DEL, c->w.fd, NULL);
	close(c->w.fd);
	if (c->user[0]) {
		struct user *u = user_find(s, c->user);
		if (u && u->conn == c)
			u->conn = NULL;
	}
	for (struct conn **p = &s->conns; *p; p = &(*p)->next)
		if (*p == c) {
			*p = c->next;
			break;
		}
	c->next = s->graveyard;
	s->graveyard = c;
}

static void conn_flush(struct server *s, struct conn *c)
{
	if (sw_buf_flush(&c->out, c->w.fd) < 0) {
		conn_kill(s, c);
		return;
	}
	conn_update_events(s, c);
	if (c->closing && c->out.off == c->out.len)
		shutdown(c->w.fd, SHUT_WR); /* the client closes when it reads Moved */
}

static void conn_send(struct server *s, struct conn *c, Sandwich__ServerMsg *m)
{
	if (c->dead)
		return;
	if (sw_buf_put_msg(&c->out, &m->base) < 0) {
		conn_kill(s, c);
		return;
	}
	conn_flush(s, c);
}

static void send_wait(struct server *s, struct conn *c, uint64_t frame_id, const char *reason,
		      uint64_t next_frame_id)
{
	Sandwich__Wait w = SANDWICH__WAIT__INIT;
	w.frame_id = frame_id;
	w.reason = (char *)reason;
	w.retry_ms = RETRY_MS;
	w.next_frame_id = next_frame_id;
	Sandwich__ServerMsg m = SANDWICH__SERVER_MSG__INIT;
	m.body_case = SANDWICH__SERVER_MSG__BODY_WAIT;
	m.wait = &w;
	conn_send(s, c, &m);
}

/* The user is not (or no longer) served here: say so and close. The client
 * follows the redirect its reconnect helper receives. */
static void send_moved(struct server *s, struct conn *c, const char *user, const char *reason)
{
	Sandwich__Moved mv = SANDWICH__MOVED__INIT;
	mv.user = (char *)user;
	mv.reason = (char *)reason;
	Sandwich__ServerMsg m = SANDWICH__SERVER_MSG__INIT;
	m.body_case = SANDWICH__SERVER_MSG__BODY_MOVED;
	m.moved = &mv;
	c->closing = true;
	conn_send(s, c, &m);
}

#ifndef SANDWICH_NO_MIGRATE
static void replicate_user(struct server *s, struct user *u);
static void send_standby(struct server *s, struct user *u);
#endif

/* ---------------------------------------------------------------- the app */

static int write_all(int fd, const void *data, size_t len)
{
	const uint8_t *p = data;
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* File state: append the frame to ROOT/<user>/frames.log and a line to
 * frames.idx. Each append opens and closes the file, so nothing stays open
 * when the library moves the folder (at release, or at COMMIT). A failed
 * append is cut off again, so a frame sent again is never recorded twice;
 * frames.idx is only an aid (a failure there is logged, not fatal).
 * Returns 0 or an errno value. */
static int record_frame(struct server *s, struct user *u, const Sandwich__Frame *f)
{
	char dir[PATH_MAX], path[PATH_MAX + 16], hdr[96], line[160];
	snprintf(dir, sizeof(dir), "%s/%s", s->root, u->id);
	if (mkdir(dir, 0755) < 0 && errno != EEXIST)
		return errno;
	snprintf(path, sizeof(path), "%s/frames.log", dir);
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0)
		return errno;
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int err = errno;
		close(fd);
		return err;
	}
	size_t hlen = sw_record_header(hdr, sizeof(hdr), f->frame_id, f->label, f->image.len);
	errno = 0;
	if (write_all(fd, hdr, hlen) || write_all(fd, f->image.data, f->image.len) ||
	    write_all(fd, "\n", 1)) {
		int err = errno ? errno : EIO;
		if (ftruncate(fd, st.st_size) < 0)
			say(s, "error", u->id, "frames.log: cannot cut off a failed append: %s",
			    strerror(errno));
		close(fd);
		return err;
	}
	close(fd);
	snprintf(path, sizeof(path), "%s/frames.idx", dir);
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	int n = snprintf(line, sizeof(line), "%" PRIu64 " %s %lld %zu %s\n", f->frame_id, f->label,
			 (long long)st.st_size, hlen + f->image.len + 1, s->name);
	if (fd < 0 || write_all(fd, line, (size_t)n))
		say(s, "error", u->id, "frames.idx: %s", strerror(errno));
	if (fd >= 0)
		close(fd);
	return 0;
}

/* The assistant: what the label means at the user's step. */
static Sandwich__Kind assist(struct user *u, const char *label, const char **text)
{
	const char *want = sw_step_label(u->step), *correction = NULL;
	const char *mistake = sw_step_mistake(u->step, &correction);
	Sandwich__Kind kind = SANDWICH__KIND__KIND_SAME;
	if (want && strcmp(label, want) == 0) {
		u->step = (Sandwich__Step)(u->step + 1);
		*text = sw_step_text(u->step);
		kind = SANDWICH__KIND__KIND_STEP;
	} else if (mistake && strcmp(label, mistake) == 0 && strcmp(u->last_label, label) != 0) {
		u->mistakes++;
		*text = correction; /* once per run of the same wrong item */
		kind = SANDWICH__KIND__KIND_CORRECTION;
	}
	if (kind != SANDWICH__KIND__KIND_SAME)
		snprintf(u->text, sizeof(u->text), "%s", *text);
	snprintf(u->last_label, sizeof(u->last_label), "%s", label);
	return kind;
}

static void on_hello(struct server *s, struct conn *c, const Sandwich__Hello *h)
{
	if (!user_id_ok(h->user) || (c->user[0] && strcmp(c->user, h->user) != 0)) {
		conn_kill(s, c);
		return;
	}
	struct user *u = user_find(s, h->user);
	if (!u) {
#ifndef SANDWICH_NO_MIGRATE
		mig_user_state st = mig_user_get_state(s->engine, h->user);
		if (st != MIG_USER_ABSENT) { /* arriving: the app slot is not there yet */
			send_wait(s, c, 0, "arriving", 0);
			return;
		}
#endif
		if (h->last_frame_id > 0) { /* started elsewhere: never start over */
			send_moved(s, c, h->user, "user not served here");
			return;
		}
#ifndef SANDWICH_NO_MIGRATE
		/* A new user: the engine serves it from now on. */
		int rc = mig_user_add(s->engine, h->user);
		if (rc || !(u = user_new(s, h->user))) {
			if (rc == 0)
				mig_user_remove(s->engine, h->user);
			send_moved(s, c, h->user, rc ? mig_strerror(rc) : "out of memory");
			return;
		}
#else
		if (!(u = user_new(s, h->user))) {
			send_moved(s, c, h->user, "out of memory");
			return;
		}
#endif
		u->serving = true;
		say(s, "new", u->id, "step=%s", sw_step_name(u->step));
#ifndef SANDWICH_NO_MIGRATE
		replicate_user(s, u);
#endif
	}
	if (!u->serving) { /* paused (leaving) or not yet activated (arriving) */
		send_wait(s, c, 0, "moving between cloudlets", 0);
		return;
	}
	if (u->conn && u->conn != c)
		conn_kill(s, u->conn); /* the newest connection of a user wins */
	u->conn = c;
	snprintf(c->user, sizeof(c->user), "%s", u->id);

#ifndef SANDWICH_NO_MIGRATE
	/* The session token lets the client's reconnect helper attach to this
	 * engine's session channel; it is redirected when the user moves. */
	char token[MIG_SESSION_TOKEN_MAX];
	int rc = mig_session_token(s->engine, u->id, token, sizeof(token));
	if (rc)
		token[0] = '\0';
#endif
	Sandwich__Welcome w = SANDWICH__WELCOME__INIT;
	w.user = u->id;
	w.step = u->step;
	w.text = u->text;
	w.next_frame_id = u->last_frame_id + 1;
	w.cloudlet = (char *)s->name;
#ifndef SANDWICH_NO_MIGRATE
	w.session_url = (char *)mig_engine_url(s->engine);
	w.session_token = token;
#endif
	Sandwich__ServerMsg m = SANDWICH__SERVER_MSG__INIT;
	m.body_case = SANDWICH__SERVER_MSG__BODY_WELCOME;
	m.welcome = &w;
	say(s, "hello", u->id, "step=%s next_frame=%" PRIu64, sw_step_name(u->step),
	    w.next_frame_id);
	conn_send(s, c, &m);
#ifndef SANDWICH_NO_MIGRATE
	if (u->replica_acked)
		send_standby(s, u); /* a new connection: its failover token */
#endif
}

static void on_frame(struct server *s, struct conn *c, const Sandwich__Frame *f)
{
	if (!c->user[0] || (f->user[0] && strcmp(f->user, c->user) != 0) || !label_ok(f->label)) {
		conn_kill(s, c);
		return;
	}
	struct user *u = user_find(s, c->user);
	if (!u) {
		send_moved(s, c, c->user, "user not served here");
		return;
	}
	if (!u->serving) { /* paused for a migration: the client sends it again */
		send_wait(s, c, f->frame_id, "moving between cloudlets", 0);
		return;
	}
	const char *text = u->text;
	Sandwich__Kind kind = SANDWICH__KIND__KIND_SAME;
	if (f->frame_id != u->last_frame_id + 1) {
		if (f->frame_id > u->last_frame_id) { /* a gap: ask for the one expected */
			send_wait(s, c, f->frame_id, "out of order", u->last_frame_id + 1);
			return;
		}
		/* A frame processed already: answer again, change nothing. */
	} else {
		int err = record_frame(s, u, f);
		if (err) {
			say(s, "error", u->id, "cannot record frame %" PRIu64 ": %s", f->frame_id,
			    strerror(err));
			send_wait(s, c, f->frame_id, "cannot record the frame", 0);
			return;
		}
		kind = assist(u, f->label, &text);
		u->frames_seen++;
		u->last_frame_id = f->frame_id;
		if (kind == SANDWICH__KIND__KIND_STEP) {
			say(s, "step", u->id, "step=%s frame=%" PRIu64, sw_step_name(u->step),
			    f->frame_id);
#ifndef SANDWICH_NO_MIGRATE
			/* A step is what the user would redo after a failover:
			 * send it to the standby now, not at the next interval. */
			if (s->standby_url && s->replicate_steps)
				mig_replicate_now(s->engine, u->id);
#endif
		} else if (kind == SANDWICH__KIND__KIND_CORRECTION) {
			say(s, "correction", u->id, "step=%s frame=%" PRIu64, sw_step_name(u->step),
			    f->frame_id);
		}
	}
	Sandwich__Instruction in = SANDWICH__INSTRUCTION__INIT;
	in.step = u->step;
	in.text = (char *)text;
	in.frame_id = f->frame_id;
	in.kind = kind;
	in.cloudlet = (char *)s->name;
	in.frames_seen = u->frames_seen;
	Sandwich__ServerMsg m = SANDWICH__SERVER_MSG__INIT;
	m.body_case = SANDWICH__SERVER_MSG__BODY_INSTRUCTION;
	m.instruction = &in;
	conn_send(s, c, &m);
}

static void conn_read(struct server *s, struct conn *c)
{
	uint8_t buf[65536];
	for (;;) {
		ssize_t n = recv(c->w.fd, buf, sizeof(buf), 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n <= 0) {
			conn_kill(s, c);
			return;
		}
		if (c->closing)
			continue; /* Moved was said: only wait for the close */
		if (sw_buf_append(&c->in, buf, (size_t)n) < 0) {
			conn_kill(s, c);
			return;
		}
	}
	const uint8_t *body;
	size_t len;
	int r;
	while (!c->dead && !c->closing && (r = sw_buf_next_msg(&c->in, &body, &len)) != 0) {
		Sandwich__ClientMsg *m =
			r < 0 ? NULL : sandwich__client_msg__unpack(NULL, len, body);
		if (!m) {
			conn_kill(s, c);
			return;
		}
		if (m->body_case == SANDWICH__CLIENT_MSG__BODY_HELLO)
			on_hello(s, c, m->hello);
		else if (m->body_case == SANDWICH__CLIENT_MSG__BODY_FRAME)
			on_frame(s, c, m->frame);
		else
			conn_kill(s, c);
		sandwich__client_msg__free_unpacked(m, NULL);
		sw_buf_consume(&c->in, 4 + len);
	}
}

static void accept_all(struct server *s)
{
	for (;;) {
		int fd = accept4(s->listener.fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return;
		struct conn *c = calloc(1, sizeof(*c));
		if (!c) {
			close(fd);
			return;
		}
		c->w.kind = W_CONN;
		c->w.fd = fd;
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &c->w};
		epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &ev);
		c->next = s->conns;
		s->conns = c;
	}
}

#ifndef SANDWICH_NO_MIGRATE
/* ---------------------------------------------------------------- libmigrate: light state */

/* Source, after pause(): the user's progress as a sandwich.Progress. */
static int extract_progress(mig_engine *e, const char *user, mig_buf *out, void *ud)
{
	struct user *u = user_find(ud, user);
	if (!u)
		return -1;
	if (u->serving) { /* replication (a migration extracts after pause) */
		u->repl_step = u->step;
		u->repl_frame = u->last_frame_id;
	}
	Sandwich__Progress p = SANDWICH__PROGRESS__INIT;
	p.step = u->step;
	p.last_instruction = u->text;
	p.frames_seen = u->frames_seen;
	p.mistakes = u->mistakes;
	p.last_frame_id = u->last_frame_id;
	p.last_label = u->last_label;
	void *dst = mig_buf_reserve(out, sandwich__progress__get_packed_size(&p));
	if (!dst)
		return -1;
	sandwich__progress__pack(&p, dst);
	return 0;
}

/* Destination: load it into the inactive arriving user. */
static int merge_progress(mig_engine *e, const char *user, uint32_t version, const void *data,
			  size_t len, void *ud)
{
	struct server *s = ud;
	if (version != 1) /* there is no older format to upgrade from */
		return -1;
	Sandwich__Progress *p = sandwich__progress__unpack(NULL, len, data);
	if (!p)
		return -1;
	struct user *u = user_find(s, user);
	if (!u)
		u = user_new(s, user);
	int rc = -1;
	if (u && p->step <= SANDWICH__STEP__STEP_DONE && p->frames_seen <= p->last_frame_id) {
		u->step = p->step;
		snprintf(u->text, sizeof(u->text), "%s", p->last_instruction);
		u->frames_seen = p->frames_seen;
		u->mistakes = p->mistakes;
		u->last_frame_id = p->last_frame_id;
		snprintf(u->last_label, sizeof(u->last_label), "%s", p->last_label);
		u->serving = false; /* inactive until activate() */
		rc = 0;
	}
	sandwich__progress__free_unpacked(p, NULL);
	return rc;
}

/* ---------------------------------------------------------------- libmigrate: hooks */

static int on_pause(mig_engine *e, const char *user, void *ud)
{
	struct user *u = user_find(ud, user);
	if (!u)
		return -1;
	u->serving = false; /* its frames get "wait" from now on; others go on */
	say(ud, "pause", user, "step=%s frames=%" PRIu64, sw_step_name(u->step), u->frames_seen);
	return 0;
}

static void on_resume(mig_engine *e, const char *user, void *ud)
{
	struct user *u = user_find(ud, user);
	if (u)
		u->serving = true;
	say(ud, "resume", user, "%s", "(migration aborted)");
}

static void on_release(mig_engine *e, const char *user, void *ud)
{
	struct server *s = ud;
	struct user *u = user_find(s, user);
	if (!u)
		return;
	say(s, "release", user, "step=%s frames=%" PRIu64, sw_step_name(u->step), u->frames_seen);
	if (u->conn)
		send_moved(s, u->conn, user, "the user moved to another cloudlet");
	user_free(s, u);
}

static int on_incoming(mig_engine *e, const char *user, void *ud)
{
	struct server *s = ud;
	if (!user_id_ok(user) || user_find(s, user))
		return -1;
	return user_new(s, user) ? 0 : -1; /* inactive: serving is false */
}

/* Cuts `path` at the first record (frames.log) or line (frames.idx) of a
 * frame after `last`. Returns the number of frames cut, with the first and
 * last of them in *from and *to; -1 if the file is unreadable or malformed
 * (then it is left as it is); *end receives the last frame id it holds. */
static int cut_after(const char *path, bool log, uint64_t last, uint64_t *from, uint64_t *to,
		     uint64_t *end)
{
	FILE *f = fopen(path, "r+e");
	if (!f)
		return errno == ENOENT ? 0 : -1;
	char line[160];
	off_t cut = -1;
	int n = 0, rc = 0;
	for (;;) {
		off_t off = ftello(f);
		if (!fgets(line, sizeof(line), f))
			break;
		uint64_t id, len = 0;
		char label[32];
		if (!strchr(line, '\n') ||
		    (log ? sscanf(line, "frame %" SCNu64 " %31s %" SCNu64, &id, label, &len) != 3
			 : sscanf(line, "%" SCNu64, &id) != 1) ||
		    (log && (len > SW_MAX_MSG || fseeko(f, (off_t)len + 1, SEEK_CUR) < 0))) {
			rc = -1;
			break;
		}
		*end = id;
		if (id > last) {
			if (cut < 0) {
				cut = off;
				*from = id;
			}
			*to = id;
			n++;
		}
	}
	if (rc == 0 && cut >= 0 && ftruncate(fileno(f), cut) < 0)
		rc = -1;
	fclose(f);
	return rc ? rc : n;
}

/* A promoted user's files come from the standby's replica, whose files can
 * be a little ahead of its progress (the library reads the files after it
 * extracted the light state, while the user was served). The progress is
 * the commit point: frames after last_frame_id are cut, and the client sends
 * them again. Files behind the progress cannot be mended: said, not hidden.
 * After a migration (the user was paused) nothing is ever cut. */
static void reconcile_frames(struct server *s, struct user *u)
{
	char path[PATH_MAX + 16];
	const char *names[] = {"frames.log", "frames.idx"};
	for (int i = 0; i < 2; i++) {
		uint64_t from = 0, to = 0, end = 0;
		snprintf(path, sizeof(path), "%s/%s/%s", s->root, u->id, names[i]);
		int n = cut_after(path, i == 0, u->last_frame_id, &from, &to, &end);
		if (n < 0)
			say(s, "error", u->id, "%s: unreadable or malformed: left as it is",
			    names[i]);
		else if (n > 0)
			say(s, "trimmed", u->id,
			    "file=%s frames=%" PRIu64 "..%" PRIu64 " last_frame=%" PRIu64
			    " reason=\"ahead of the progress\"",
			    names[i], from, to, u->last_frame_id);
		else if (end < u->last_frame_id)
			say(s, "error", u->id,
			    "%s ends at frame %" PRIu64 ", the progress is at frame %" PRIu64,
			    names[i], end, u->last_frame_id);
	}
}

static void on_activate(mig_engine *e, const char *user, void *ud)
{
	struct user *u = user_find(ud, user);
	if (!u)
		return;
	reconcile_frames(ud, u);
	u->serving = true;
	say(ud, "activate", user, "step=%s frames=%" PRIu64, sw_step_name(u->step), u->frames_seen);
	replicate_user(ud, u); /* arrived (migration or promotion): replicate it too */
}

static void on_drop(mig_engine *e, const char *user, void *ud)
{
	struct user *u = user_find(ud, user);
	if (u && !u->serving)
		user_free(ud, u);
	say(ud, "drop", user, "%s", "(incoming copy discarded)");
}

static void on_event(mig_engine *e, const mig_event *ev, void *ud)
{
	switch (ev->type) {
	case MIG_EVENT_STARTED:
		say(ud, "migrate", ev->user, "to=%s", ev->peer_url);
		break;
	case MIG_EVENT_COMMITTED:
		say(ud, "committed", ev->user,
		    "to=%s bytes_sent=%" PRIu64 " bytes_received=%" PRIu64
		    " rounds=%u duration_us=%" PRIu64 " downtime_us=%" PRIu64,
		    ev->peer_url, ev->bytes_sent, ev->bytes_received, ev->rounds, ev->duration_us,
		    ev->downtime_us);
		break;
	case MIG_EVENT_ABORTED:
		say(ud, "aborted", ev->user, "error=%s reason=\"%s\"", mig_err_name(ev->error),
		    ev->reason);
		break;
	default:
		break;
	}
}

/* ---------------------------------------------------------------- libmigrate: failover */

/* --standby: keep the standby's copy of the user's progress up to date. */
static void replicate_user(struct server *s, struct user *u)
{
	if (!s->standby_url)
		return;
	mig_replicate_options ro = {.interval_ms = s->replicate_ms};
	u->replica_acked = false;
	u->token_us = 0;
	int rc = mig_replicate(s->engine, u->id, s->standby_url, &ro);
	if (rc)
		say(s, "error", u->id, "cannot replicate to %s: %s", s->standby_url,
		    mig_strerror(rc));
}

/* Hands the user's client a failover token for the standby (its reconnect
 * helper attaches there with it if this cloudlet dies). */
static void send_standby(struct server *s, struct user *u)
{
	char token[MIG_SESSION_TOKEN_MAX];
	if (!u->conn || u->conn->closing)
		return;
	int rc = mig_replica_failover_token(s->engine, u->id, token, sizeof(token));
	if (rc) {
		say(s, "error", u->id, "no failover token: %s", mig_strerror(rc));
		return;
	}
	Sandwich__Standby sb = SANDWICH__STANDBY__INIT;
	sb.user = u->id;
	sb.failover_token = token;
	Sandwich__ServerMsg m = SANDWICH__SERVER_MSG__INIT;
	m.body_case = SANDWICH__SERVER_MSG__BODY_STANDBY;
	m.standby = &sb;
	u->token_us = (uint64_t)(sw_wall() * 1e6);
	conn_send(s, u->conn, &m);
}

static void on_replica(mig_engine *e, const mig_replica_event *ev, void *ud)
{
	struct server *s = ud;
	struct user *u = user_find(s, ev->user);
	switch (ev->type) {
	case MIG_REPLICA_ACKED:
		/* The standby holds this update: a failover resumes here or later. */
		say(s, "replicated", ev->user,
		    "seq=%" PRIu64 " step=%s frame=%" PRIu64 " bytes=%" PRIu64 " lag_us=%" PRIu64,
		    ev->seq, u ? sw_step_name(u->repl_step) : "-", u ? u->repl_frame : 0, ev->bytes,
		    ev->lag_us);
		if (u && (!u->replica_acked || !u->token_us ||
			  (uint64_t)(sw_wall() * 1e6) - u->token_us > FAILOVER_TOKEN_REFRESH_US)) {
			u->replica_acked = true;
			send_standby(s, u);
		}
		break;
	case MIG_REPLICA_REFUSED:
		say(s, "replica-refused", ev->user, "seq=%" PRIu64 " error=%s reason=\"%s\"",
		    ev->seq, mig_err_name(ev->error), ev->reason);
		break;
	case MIG_REPLICA_SUPERSEDED:
		/* Promoted at the standby while we were away: the library ran
		 * pause and release here (on_release closed the client). */
		say(s, "superseded", ev->user, "epoch=%" PRIu64 " by=%s", ev->epoch, ev->peer_url);
		break;
	case MIG_REPLICA_STOPPED:
		say(s, "replica-stopped", ev->user, "seq=%" PRIu64 " reason=\"%s\"", ev->seq,
		    ev->reason);
		break;
	case MIG_REPLICA_INSTALLED: /* standby: one line per update would flood the log */
		break;
	case MIG_REPLICA_REJECTED:
		say(s, "replica-rejected", ev->user, "seq=%" PRIu64 " error=%s reason=\"%s\"",
		    ev->seq, mig_err_name(ev->error), ev->reason);
		break;
	case MIG_REPLICA_PROMOTED:
		say(s, "promoted", ev->user,
		    "epoch=%" PRIu64 " seq=%" PRIu64 " replica_age_us=%" PRIu64, ev->epoch, ev->seq,
		    ev->lag_us);
		break;
	case MIG_REPLICA_PROMOTE_FAILED:
		say(s, "promote-failed", ev->user, "error=%s reason=\"%s\"",
		    mig_err_name(ev->error), ev->reason);
		break;
	}
}

static void on_log(mig_engine *e, mig_log_level level, const char *line, void *ud)
{
	fprintf(stderr, "%s libmigrate[%d]: %s\n", ((struct server *)ud)->name, (int)level, line);
}
#endif /* !SANDWICH_NO_MIGRATE */

/* ---------------------------------------------------------------- main */

static int listen_tcp(const char *address, int port, int *bound_port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	if (inet_pton(AF_INET, address, &a.sin_addr) != 1)
		return -1;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	int one = 1;
	socklen_t len = sizeof(a);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 128) < 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &len) < 0) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	*bound_port = ntohs(a.sin_port);
	return fd;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: sandwich_server --id NAME --secret-file FILE --state DIR\n"
		"                       [--port P] [--app-port P] [--listen ADDRESS]\n"
		"                       [--worker-nice N] [--precopy-rate BYTES_PER_S]\n"
		"                       [--standby URL [--replicate-ms N] [--no-replicate-steps]]\n"
		"                       [--auto-promote-ms N]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static struct server s; /* large (hash table): not on the stack */
	const char *secret_file = NULL, *listen_address = "127.0.0.1";
	int port = 0, app_port = 0, worker_nice = 0, opt;
	unsigned long long precopy_rate = 0;
	int replicate_ms = 0, auto_promote_ms = 0;
	const char *standby_url = NULL;
	bool replicate_steps = true;
	static const struct option longopts[] = {
		{"id", required_argument, NULL, 'i'},
		{"secret-file", required_argument, NULL, 's'},
		{"state", required_argument, NULL, 'd'},
		{"port", required_argument, NULL, 'p'},
		{"app-port", required_argument, NULL, 'a'},
		{"listen", required_argument, NULL, 'l'},
		{"worker-nice", required_argument, NULL, 'n'}, /* engine option worker_nice */
		{"precopy-rate", required_argument, NULL, 'R'}, /* precopy_rate_limit */
		{"standby", required_argument, NULL, 'S'},
		{"replicate-ms", required_argument, NULL, 'r'},
		{"no-replicate-steps", no_argument, NULL, 'N'},
		{"auto-promote-ms", required_argument, NULL, 'P'},
		{NULL, 0, NULL, 0},
	};
	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (opt) {
		case 'i':
			s.name = optarg;
			break;
		case 's':
			secret_file = optarg;
			break;
		case 'd':
			s.root = optarg;
			break;
		case 'p':
			port = atoi(optarg);
			break;
		case 'a':
			app_port = atoi(optarg);
			break;
		case 'l':
			listen_address = optarg;
			break;
		case 'n':
			worker_nice = atoi(optarg);
			break;
		case 'R':
			precopy_rate = strtoull(optarg, NULL, 10);
			break;
		case 'S':
			standby_url = optarg;
			break;
		case 'r':
			replicate_ms = atoi(optarg);
			break;
		case 'N':
			replicate_steps = false;
			break;
		case 'P':
			auto_promote_ms = atoi(optarg);
			break;
		default:
			usage();
		}
	}
#ifndef SANDWICH_NO_MIGRATE
	if (standby_url && strncmp(standby_url, "ws://", 5) != 0 &&
	    strncmp(standby_url, "wss://", 6) != 0) {
		fprintf(stderr,
			"sandwich_server: --standby needs the standby's engine URL "
			"(ws://HOST:PORT or wss://...), not \"%s\"\n",
			standby_url);
		usage();
	}
	if (replicate_ms < 0 || (replicate_ms && (replicate_ms < 10 || replicate_ms > 3600000))) {
		fprintf(stderr, "sandwich_server: --replicate-ms must be 10..3600000\n");
		usage();
	}
	if ((replicate_ms || !replicate_steps) && !standby_url) {
		fprintf(stderr, "sandwich_server: --replicate-ms and --no-replicate-steps need "
				"--standby\n");
		usage();
	}
	if (auto_promote_ms < 0) {
		fprintf(stderr, "sandwich_server: --auto-promote-ms must be 0 (off) or more\n");
		usage();
	}
	if (!s.name || !secret_file || !s.root || optind != argc)
		usage();
	s.standby_url = standby_url;
	s.replicate_ms = (unsigned)replicate_ms;
	s.replicate_steps = replicate_steps;
	char secret[256];
	size_t secret_len = 0;
	if (sw_read_secret(secret_file, secret, sizeof(secret), &secret_len)) {
		fprintf(stderr, "sandwich_server: cannot read a secret from %s\n", secret_file);
		return 2;
	}
#else
	(void)port; /* --port, --secret-file, --worker-nice, --precopy-rate: accepted, unused */
	(void)secret_file;
	(void)worker_nice;
	(void)precopy_rate;
	(void)replicate_ms; /* failover options: accepted, unused */
	(void)auto_promote_ms;
	(void)standby_url;
	(void)replicate_steps;
	if (!s.name || !s.root || optind != argc)
		usage();
#endif
	if (mkdir(s.root, 0755) < 0 && errno != EEXIST) {
		fprintf(stderr, "sandwich_server: %s: %s\n", s.root, strerror(errno));
		return 1;
	}

	/* The app's own endpoint first: its URL goes into the engine options,
	 * so that redirects tell clients where to reconnect. */
	int bound = 0;
	s.listener.kind = W_LISTEN;
	s.listener.fd = listen_tcp(listen_address, app_port, &bound);
	if (s.listener.fd < 0) {
		fprintf(stderr, "sandwich_server: cannot listen on %s:%d: %s\n", listen_address,
			app_port, strerror(errno));
		return 1;
	}
	snprintf(s.app_url, sizeof(s.app_url), "tcp://%s:%d", listen_address, bound);

	/* Signals arrive on a signalfd in the loop: block them before the
	 * engine starts its threads, which inherit the mask. */
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigprocmask(SIG_BLOCK, &mask, NULL);

#ifndef SANDWICH_NO_MIGRATE
	/* 1. The engine: options, light and file domains, hooks, start. */
	mig_engine_options o = {0};
	o.listen_address = listen_address;
	o.listen_port = port;
	o.engine_id = s.name;
	o.secret = secret;
	o.secret_len = secret_len;
	o.app_url = s.app_url;
	o.on_event = on_event;
	o.on_log = on_log;
	o.log_level = MIG_LOG_WARN;
	o.worker_nice = worker_nice;
	o.precopy_rate_limit = precopy_rate;
	o.user_data = &s;
	int rc = mig_engine_new(&s.engine, &o);
	if (rc) {
		fprintf(stderr, "sandwich_server: %s\n", mig_strerror(rc));
		return 1;
	}
	mig_light_domain progress = {"progress", "sandwich.Progress", 1, extract_progress,
				     merge_progress};
	mig_file_domain frames = {.name = "frames", .version = 1, .root = s.root, .append_only = 1};
	mig_hooks hooks = {.pause = on_pause,
			   .resume = on_resume,
			   .release = on_release,
			   .incoming = on_incoming,
			   .activate = on_activate,
			   .drop = on_drop};
	if ((rc = mig_light_domain_register(s.engine, &progress, &s)) ||
	    (rc = mig_file_domain_register(s.engine, &frames)) ||
	    (rc = mig_engine_set_hooks(s.engine, &hooks, &s)) ||
	    (rc = mig_replica_set_handler(s.engine, on_replica, &s)) ||
	    (rc = mig_replica_set_auto_promote(s.engine, (unsigned)auto_promote_ms)) ||
	    (rc = mig_engine_start(s.engine))) {
		fprintf(stderr, "sandwich_server: %s: %s\n", mig_strerror(rc),
			mig_engine_last_error(s.engine));
		mig_engine_free(s.engine);
		return 1;
	}
	printf("url %s\napp %s\n", mig_engine_url(s.engine), s.app_url);
	fflush(stdout);
#else
	printf("url -\napp %s\n", s.app_url);
	fflush(stdout);
#endif

	/* 2. One epoll loop: the app's listener and clients, signals, and the
	 *    engine's fd (its callbacks run inside mig_engine_dispatch()). */
	s.signal_w = (struct watch){W_SIGNAL, signalfd(-1, &mask, SFD_CLOEXEC)};
#ifndef SANDWICH_NO_MIGRATE
	s.engine_w = (struct watch){W_ENGINE, mig_engine_fd(s.engine)};
	struct watch *ws[] = {&s.listener, &s.signal_w, &s.engine_w};
#else
	struct watch *ws[] = {&s.listener, &s.signal_w};
#endif
	s.ep = epoll_create1(EPOLL_CLOEXEC);
	for (size_t i = 0; i < sizeof(ws) / sizeof(ws[0]); i++) {
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = ws[i]};
		epoll_ctl(s.ep, EPOLL_CTL_ADD, ws[i]->fd, &ev);
	}
	for (bool running = true; running;) {
		struct epoll_event evs[64];
		int n = epoll_wait(s.ep, evs, 64, 1000);
		if (n < 0 && errno != EINTR)
			break;
		for (int i = 0; i < n; i++) {
			struct watch *w = evs[i].data.ptr;
			if (w->kind == W_ENGINE) {
#ifndef SANDWICH_NO_MIGRATE
				if (mig_engine_dispatch(s.engine) < 0)
					running = false;
#endif
			} else if (w->kind == W_LISTEN) {
				accept_all(&s);
			} else if (w->kind == W_SIGNAL) {
				running = false;
			} else {
				struct conn *c = (struct conn *)w;
				if (!c->dead && (evs[i].events & EPOLLOUT))
					conn_flush(&s, c);
				if (!c->dead && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
					conn_read(&s, c);
			}
		}
#ifndef SANDWICH_NO_MIGRATE
		if (n == 0)
			mig_engine_dispatch(s.engine); /* idle: timers, just in case */
#endif
		while (s.graveyard) {
			struct conn *c = s.graveyard;
			s.graveyard = c->next;
			sw_buf_free(&c->in);
			sw_buf_free(&c->out);
			free(c);
		}
	}

#ifndef SANDWICH_NO_MIGRATE
	mig_engine_free(s.engine); /* no callback runs after this */
#endif
	for (unsigned b = 0; b < NBUCKETS; b++)
		while (s.users[b]) {
			struct user *u = s.users[b];
			say(&s, "final", u->id,
			    "step=%s frames=%" PRIu64 " mistakes=%u last_frame=%" PRIu64,
			    sw_step_name(u->step), u->frames_seen, u->mistakes, u->last_frame_id);
			user_free(&s, u);
		}
	while (s.conns)
		conn_kill(&s, s.conns);
	while (s.graveyard) {
		struct conn *c = s.graveyard;
		s.graveyard = c->next;
		sw_buf_free(&c->in);
		sw_buf_free(&c->out);
		free(c);
	}
	close(s.listener.fd);
	close(s.signal_w.fd);
	close(s.ep);
	return 0;
}
