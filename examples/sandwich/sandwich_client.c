/* sandwich_client: simulates the wearable clients (camera glasses) of one or
 * more users of sandwich_server, in one epoll loop.
 *
 * Each user's camera sends a frame at a steady rate (one in flight at a
 * time), following a deterministic script of what it "sees", mistakes
 * included (cucumber instead of lettuce, an extra slice of ham), and prints
 * the instructions it gets back. The reconnect helper of <migrate/client.h>
 * keeps each user attached to the engine that serves it; when the user is
 * moved to another cloudlet, the helper's redirect says where the app's TCP
 * connection must go, and the client continues there from the frame the
 * server expects. A frame the server answers with Wait (the user is paused
 * while it moves) is sent again after the delay given, so no frame is lost
 * or processed twice and no step is skipped or repeated.
 *
 *   sandwich_client --server tcp://HOST:PORT --users u1,u2,...
 *                   [--interval-ms 100] [--hold 12,6,8] [--image-bytes 8192]
 *                   [--timeout 120] [--standby URL [--failover-ms 3000]]
 *
 * Failover (docs/FAILOVER.md): with --standby URL (the standby cloudlet's
 * engine URL), the failover token each user's server hands over (a Standby
 * message) goes to its reconnect helper with mig_client_set_standby(); when
 * the server stays unreachable for --failover-ms and the user is promoted at
 * the standby, the helper attaches there and the app connection follows
 * (mig_client_app_url()). The standby resumes at its last replicated state:
 * the frames and steps after it are sent and made again, and counted.
 *
 * User number i (from 0, in --users order) holds each item in view for
 * hold[i % n] frames; users 0, 3, ... first show cucumber, users 1, 4, ...
 * an extra slice of ham, users 2, 5, ... both.
 *
 * Output, one line per event:
 *   <wall clock> <user> <cloudlet> <what> key=value... [text="..."]
 * and at the end one line per user:
 *   summary user=U done=1 final_step=done steps=bread,ham,...,done
 *           corrections=N frames=N waits=N redirects=N cloudlets=A,B,A
 *           log_bytes=N log_fnv=HEX consistent=1 failovers=N
 *           resumed_step=S resumed_frame=N steps_redone=N frames_redone=N
 *           corrections_redone=N
 * where log_bytes and log_fnv describe exactly what STATE/<user>/frames.log
 * must hold (frames 1..frames, in order, once each). After a failover,
 * resumed_step is the step the standby resumed at and resumed_frame the
 * first frame it expected; steps_redone and frames_redone are the loss
 * (steps and frames the client had been answered before the failover and
 * that were made again), corrections_redone the corrections given again;
 * "steps" lists each step once, and a redone step that differs from the
 * first run makes consistent=0 (resumed_step is "-" without failover).
 * Exit status 0 when every user finished. */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <migrate/client.h>

#include "sandwich.h"

#define MAX_STEPS 64
#define MOVED_RETRY_MS 3000 /* no redirect after Moved: ask again this late */
#define RECONNECT_MS 200

enum watch_kind {
	W_TICK,
	W_SIGNAL,
	W_SOCK,
	W_HELPER
};

struct cuser;

struct watch {
	enum watch_kind kind;
	struct cuser *u;
};

struct cuser {
	struct watch sock_w, helper_w;
	char id[65];
	const char **labels; /* the script: what the camera sees, frame by frame */
	size_t nlabels;
	char app_url[256];

	/* the app connection */
	int fd;          /* -1: none */
	bool connecting; /* connect() in progress */
	bool want_out;
	bool welcomed; /* Hello answered with Welcome */
	bool hello_in_flight;
	uint64_t in_flight; /* the frame awaiting its answer, 0 if none */
	uint64_t next_frame;
	uint64_t acked;    /* last frame answered: the server processed 1..acked */
	uint64_t retry_at; /* monotonic ms: send nothing before */
	sw_buf in, out;
	char cloudlet[64]; /* "-" when not connected */

	/* the reconnect helper */
	mig_client *helper;
	bool helper_retired; /* freed after the current epoll batch */
	bool follow;         /* redirected: move the app connection */
	char engine_id[64];  /* the engine it was last attached to or sent to */
	char standby_token[MIG_SESSION_TOKEN_MAX]; /* "" until the server sends one */
	/* the token armed last, until a failover used it: if the old engine
	 * itself turns the helper away because the user is not there (it let
	 * go of the user when the standby superseded it), the client attaches
	 * at the standby with it */
	char armed_token[MIG_SESSION_TOKEN_MAX];
	uint64_t standby_retry_at; /* monotonic ms; 0: no attempt due */

	/* failover: the standby resumes at its replica, maybe behind us */
	bool failing_over; /* attached at the standby: the next Welcome may go back */
	int failovers;
	int replay_pos;        /* steps[replay_pos] is the step being redone; -1: none */
	uint64_t replay_until; /* frames up to this one are made again */
	Sandwich__Step resumed_step;
	uint64_t resumed_frame;
	int steps_redone, corrections_redone;
	uint64_t frames_redone;

	/* what happened, for the summary */
	Sandwich__Step steps[MAX_STEPS];
	int nsteps;
	int corrections, waits, redirects;
	bool waiting;         /* in a run of Wait answers (printed once) */
	uint64_t gap_from_ms; /* last answer before an interruption, 0 if none */
	uint64_t last_answer_ms;
	char cloudlets[256];
	bool done, stuck, consistent;
};

struct client {
	struct cuser *users;
	size_t nusers;
	int ep;
	unsigned image_bytes;
	unsigned interval_ms;
	const char *standby_url; /* --standby */
	unsigned failover_ms;
};

/* ---------------------------------------------------------------- output */

static void say(struct cuser *u, const char *what, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void say(struct cuser *u, const char *what, const char *fmt, ...)
{
	va_list ap;
	printf("%.6f %s %s %s", sw_wall(), u->id, u->cloudlet, what);
	if (fmt && *fmt) {
		putchar(' ');
		va_start(ap, fmt);
		vprintf(fmt, ap);
		va_end(ap);
	}
	putchar('\n');
	fflush(stdout);
}

/* ---------------------------------------------------------------- the camera */

static void script_add(struct cuser *u, const char *label, unsigned n)
{
	for (unsigned i = 0; i < n; i++)
		u->labels[u->nlabels++] = label;
}

/* What user number `index` shows the camera, frame by frame. */
static int make_script(struct cuser *u, size_t index, unsigned hold)
{
	bool cucumber = index % 3 != 1, extra_ham = index % 3 != 0;
	u->labels = calloc(2 + 6 * (size_t)hold + 6, sizeof(*u->labels));
	if (!u->labels)
		return -1;
	script_add(u, "nothing", 2);
	script_add(u, "bread", hold);
	script_add(u, "ham", hold);
	if (cucumber)
		script_add(u, "cucumber", 3);
	script_add(u, "lettuce", hold);
	script_add(u, "half", hold);
	if (extra_ham)
		script_add(u, "ham", 3);
	script_add(u, "tomato", hold);
	script_add(u, "full", hold);
	return 0;
}

/* The frame's "image": deterministic bytes, so frames.log can be checked. */
static void make_image(const struct cuser *u, uint64_t frame_id, uint8_t *buf, size_t len)
{
	uint64_t x = sw_fnv(SW_FNV_INIT, u->id, strlen(u->id)) ^ (frame_id * 0x9e3779b97f4a7c15ull);
	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		buf[i] = (uint8_t)(x >> 24);
	}
}

/* ---------------------------------------------------------------- the app connection */

static void sock_events(struct client *cl, struct cuser *u)
{
	bool want = u->connecting || u->out.off < u->out.len;
	if (want == u->want_out)
		return;
	struct epoll_event ev = {.events = EPOLLIN | (want ? EPOLLOUT : 0), .data.ptr = &u->sock_w};
	epoll_ctl(cl->ep, EPOLL_CTL_MOD, u->fd, &ev);
	u->want_out = want;
}

static void sock_close(struct client *cl, struct cuser *u, uint64_t retry_in_ms)
{
	if (u->fd >= 0) {
		epoll_ctl(cl->ep, EPOLL_CTL_DEL, u->fd, NULL);
		close(u->fd);
	}
	u->fd = -1;
	u->connecting = u->want_out = u->welcomed = u->hello_in_flight = false;
	u->in_flight = 0;
	u->in.off = u->in.len = 0;
	u->out.off = u->out.len = 0;
	snprintf(u->cloudlet, sizeof(u->cloudlet), "-");
	u->retry_at = sw_mono_ms() + retry_in_ms;
	if (!u->gap_from_ms && u->last_answer_ms)
		u->gap_from_ms = u->last_answer_ms;
}

static void send_msg(struct client *cl, struct cuser *u, Sandwich__ClientMsg *m)
{
	if (sw_buf_put_msg(&u->out, &m->base) < 0 || sw_buf_flush(&u->out, u->fd) < 0) {
		say(u, "disconnected", "reason=\"%s\"", "send failed");
		sock_close(cl, u, RECONNECT_MS);
		return;
	}
	sock_events(cl, u);
}

static void send_hello(struct client *cl, struct cuser *u)
{
	Sandwich__Hello h = SANDWICH__HELLO__INIT;
	h.user = u->id;
	h.last_frame_id = u->acked;
	Sandwich__ClientMsg m = SANDWICH__CLIENT_MSG__INIT;
	m.body_case = SANDWICH__CLIENT_MSG__BODY_HELLO;
	m.hello = &h;
	u->hello_in_flight = true;
	send_msg(cl, u, &m);
}

static void send_frame(struct client *cl, struct cuser *u)
{
	if (u->next_frame > u->nlabels) { /* the script ran out before "done" */
		if (!u->stuck)
			say(u, "stuck", "frame=%" PRIu64 " reason=\"%s\"", u->next_frame,
			    "the script ended before the sandwich was done");
		u->stuck = true;
		return;
	}
	uint8_t *img = malloc(cl->image_bytes ? cl->image_bytes : 1);
	if (!img)
		return;
	make_image(u, u->next_frame, img, cl->image_bytes);
	Sandwich__Frame f = SANDWICH__FRAME__INIT;
	f.user = u->id;
	f.frame_id = u->next_frame;
	f.label = (char *)u->labels[u->next_frame - 1];
	f.image.data = img;
	f.image.len = cl->image_bytes;
	Sandwich__ClientMsg m = SANDWICH__CLIENT_MSG__INIT;
	m.body_case = SANDWICH__CLIENT_MSG__BODY_FRAME;
	m.frame = &f;
	u->in_flight = u->next_frame;
	send_msg(cl, u, &m);
	free(img);
}

static void start_connect(struct client *cl, struct cuser *u)
{
	char host[128];
	int port;
	if (sw_parse_tcp_url(u->app_url, host, sizeof(host), &port) < 0) {
		say(u, "error", "reason=\"not a tcp:// URL: %s\"", u->app_url);
		u->retry_at = sw_mono_ms() + MOVED_RETRY_MS;
		return;
	}
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	inet_pton(AF_INET, host, &a.sin_addr);
	u->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (u->fd < 0) {
		u->retry_at = sw_mono_ms() + RECONNECT_MS;
		return;
	}
	struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT, .data.ptr = &u->sock_w};
	epoll_ctl(cl->ep, EPOLL_CTL_ADD, u->fd, &ev);
	u->want_out = true;
	if (connect(u->fd, (struct sockaddr *)&a, sizeof(a)) == 0) {
		u->connecting = false;
		sock_events(cl, u);
		send_hello(cl, u);
	} else if (errno == EINPROGRESS) {
		u->connecting = true;
	} else {
		sock_close(cl, u, RECONNECT_MS);
	}
}

/* ---------------------------------------------------------------- the reconnect helper */

static void on_helper_state(mig_client *c, mig_client_state st, int error, const char *detail,
			    void *ud)
{
	struct cuser *u = ud;
	say(u, "session", "state=%s error=%s detail=\"%s\"", mig_client_state_name(st),
	    mig_err_name(error), detail);
	if (st == MIG_CLIENT_FAILED && error == MIG_ENOUSER && u->armed_token[0] && !u->done)
		u->standby_retry_at = sw_mono_ms(); /* the next tick: drive() */
	if (st != MIG_CLIENT_ATTACHED)
		return;
	const char *engine = mig_client_engine_id(c), *app = mig_client_app_url(c);
	if (u->engine_id[0] && strcmp(engine, u->engine_id) != 0 && !u->done) {
		/* Attached at another engine without a redirect: the helper
		 * failed over to the standby, which promoted the user. The app
		 * connection goes there too. */
		u->failovers++;
		u->failing_over = true;
		u->armed_token[0] = '\0'; /* used up */
		u->standby_retry_at = 0;
		say(u, "failover", "to=%s app=%s", engine, app[0] ? app : "-");
		if (app[0])
			snprintf(u->app_url, sizeof(u->app_url), "%s", app);
		u->follow = true;
	}
	snprintf(u->engine_id, sizeof(u->engine_id), "%s", engine);
}

/* The server's failover token for its standby: armed in the helper. */
static void arm_standby(struct client *cl, struct cuser *u)
{
	if (!cl->standby_url || !u->helper || !u->standby_token[0])
		return;
	int rc = mig_client_set_standby(u->helper, cl->standby_url, u->standby_token,
					cl->failover_ms);
	if (rc) {
		say(u, "error", "reason=\"standby: %s\"", mig_strerror(rc));
	} else {
		say(u, "standby", "url=%s after_ms=%u", cl->standby_url, cl->failover_ms);
		memcpy(u->armed_token, u->standby_token, sizeof(u->armed_token));
	}
	u->standby_token[0] = '\0';
}

/* The user now lives at another cloudlet: the app connection goes there. */
static void on_redirect(mig_client *c, const mig_client_redirect *r, void *ud)
{
	struct cuser *u = ud;
	u->redirects++;
	say(u, "redirect", "to=%s app=%s", r->engine_id, r->app_url[0] ? r->app_url : "-");
	snprintf(u->engine_id, sizeof(u->engine_id), "%s", r->engine_id);
	if (r->app_url[0])
		snprintf(u->app_url, sizeof(u->app_url), "%s", r->app_url);
	u->follow = true; /* the main loop moves the connection: follow_redirect() */
}

/* ---------------------------------------------------------------- answers */

static void note_step(struct cuser *u, Sandwich__Step step, bool always)
{
	if (u->nsteps < MAX_STEPS && (always || u->nsteps == 0 || u->steps[u->nsteps - 1] != step))
		u->steps[u->nsteps++] = step;
}

static void note_cloudlet(struct cuser *u, const char *name)
{
	snprintf(u->cloudlet, sizeof(u->cloudlet), "%s", name[0] ? name : "?");
	const char *last = strrchr(u->cloudlets, ',');
	last = last ? last + 1 : u->cloudlets;
	if (strcmp(last, u->cloudlet) != 0) {
		size_t n = strlen(u->cloudlets);
		snprintf(u->cloudlets + n, sizeof(u->cloudlets) - n, "%s%s", n ? "," : "",
			 u->cloudlet);
	}
}

static void on_welcome(struct client *cl, struct cuser *u, const Sandwich__Welcome *w)
{
	u->welcomed = true;
	u->hello_in_flight = false;
	note_cloudlet(u, w->cloudlet);
	if (u->failing_over && w->next_frame_id >= 1) {
		/* The standby's replica: what was answered after it is lost
		 * and made again (the script is the same frame by frame). */
		u->failing_over = false;
		u->resumed_step = w->step;
		u->resumed_frame = w->next_frame_id;
		int pos = -1;
		for (int i = 0; i < u->nsteps; i++)
			if (u->steps[i] == w->step)
				pos = i;
		if (w->next_frame_id - 1 < u->acked) {
			u->frames_redone += u->acked - (w->next_frame_id - 1);
			u->replay_until = u->acked;
			u->acked = w->next_frame_id - 1;
			if (pos >= 0) {
				u->steps_redone += u->nsteps - 1 - pos;
				u->replay_pos = pos < u->nsteps - 1 ? pos : -1;
			}
		}
		say(u, "failover-resumed",
		    "step=%s next_frame=%" PRIu64 " frames_redone=%" PRIu64 " steps_redone=%d",
		    sw_step_name(w->step), w->next_frame_id, u->frames_redone, u->steps_redone);
	}
	if (u->replay_pos < 0)
		note_step(u, w->step, false);
	if (w->next_frame_id < 1 || w->next_frame_id - 1 < u->acked) {
		/* the server forgot frames it acknowledged: a reset */
		say(u, "error", "reason=\"server expects frame %" PRIu64 " after %" PRIu64 "\"",
		    w->next_frame_id, u->acked);
		u->consistent = false;
	}
	u->next_frame = w->next_frame_id;
	u->acked = w->next_frame_id - 1;
	u->retry_at = 0;
	say(u, "welcome", "step=%s next_frame=%" PRIu64 " text=\"%s\"", sw_step_name(w->step),
	    w->next_frame_id, w->text);

	/* The reconnect helper: created with the first server's token; later
	 * it follows redirects by itself, and only needs a fresh token if it
	 * gave up (FAILED). */
	if (!u->helper && w->session_url[0] && w->session_token[0]) {
		mig_client_options o = {0};
		o.url = w->session_url;
		o.token = w->session_token;
		o.user = u->id;
		o.on_state = on_helper_state;
		o.on_redirect = on_redirect;
		o.user_data = u;
		if (cl->standby_url) /* a promoted standby is found within a second */
			o.backoff_max_ms = 1000;
		int rc = mig_client_new(&u->helper, &o);
		if (rc) {
			say(u, "error", "reason=\"reconnect helper: %s\"", mig_strerror(rc));
			return;
		}
		u->helper_w = (struct watch){W_HELPER, u};
		struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &u->helper_w};
		epoll_ctl(cl->ep, EPOLL_CTL_ADD, mig_client_fd(u->helper), &ev);
		arm_standby(cl, u);
	} else if (u->helper && mig_client_get_state(u->helper) == MIG_CLIENT_FAILED &&
		   w->session_token[0]) {
		mig_client_attach(u->helper, w->session_url, w->session_token);
	}
}

static void on_instruction(struct client *cl, struct cuser *u, const Sandwich__Instruction *in)
{
	if (!u->in_flight || in->frame_id != u->in_flight)
		return; /* not the answer we wait for */
	uint64_t now = sw_mono_ms();
	u->in_flight = 0;
	u->acked = in->frame_id;
	u->next_frame = in->frame_id + 1;
	u->waiting = false;
	u->last_answer_ms = now;
	note_cloudlet(u, in->cloudlet);
	if (in->frames_seen != in->frame_id) {
		say(u, "error",
		    "reason=\"frame %" PRIu64 " but the server saw %" PRIu64 " frames\"",
		    in->frame_id, in->frames_seen);
		u->consistent = false;
	}
	if (u->gap_from_ms) {
		say(u, "resumed", "frame=%" PRIu64 " gap_ms=%" PRIu64, in->frame_id,
		    now - u->gap_from_ms);
		u->gap_from_ms = 0;
	}
	bool redo = in->frame_id <= u->replay_until;
	if (in->kind == SANDWICH__KIND__KIND_STEP && u->replay_pos >= 0) {
		/* Made again after a failover: the same step as the first time. */
		if (u->steps[u->replay_pos + 1] != in->step) {
			say(u, "error", "reason=\"step %s redone after failover, expected %s\"",
			    sw_step_name(in->step), sw_step_name(u->steps[u->replay_pos + 1]));
			u->consistent = false;
		}
		if (++u->replay_pos >= u->nsteps - 1)
			u->replay_pos = -1;
		say(u, "step", "step=%s frame=%" PRIu64 " redone=1 text=\"%s\"",
		    sw_step_name(in->step), in->frame_id, in->text);
	} else if (in->kind == SANDWICH__KIND__KIND_STEP) {
		note_step(u, in->step, true);
		say(u, "step", "step=%s frame=%" PRIu64 " text=\"%s\"", sw_step_name(in->step),
		    in->frame_id, in->text);
	} else if (in->kind == SANDWICH__KIND__KIND_CORRECTION) {
		if (redo)
			u->corrections_redone++;
		else
			u->corrections++;
		say(u, "correction", "step=%s frame=%" PRIu64 " text=\"%s\"",
		    sw_step_name(in->step), in->frame_id, in->text);
	}
	if (!redo && u->replay_pos >= 0) {
		/* Past the frames answered before the failover, and a step
		 * answered then was not made again. */
		say(u, "error", "reason=\"frame %" PRIu64 ": step %s not redone after failover\"",
		    in->frame_id, sw_step_name(u->steps[u->replay_pos + 1]));
		u->consistent = false;
		u->replay_pos = -1;
	}
	if (in->step == SANDWICH__STEP__STEP_DONE) {
		u->done = true;
		sock_close(cl, u, 0);
		u->gap_from_ms = 0;
		u->helper_retired = true; /* nothing left to follow */
	}
}

static void on_wait(struct client *cl, struct cuser *u, const Sandwich__Wait *w)
{
	uint64_t now = sw_mono_ms();
	if (w->frame_id == 0) { /* the Hello: say it again later */
		u->hello_in_flight = false;
	} else if (w->frame_id == u->in_flight) {
		u->in_flight = 0;
		if (w->next_frame_id)
			u->next_frame = w->next_frame_id;
	} else {
		return;
	}
	u->retry_at = now + (w->retry_ms ? w->retry_ms : 100);
	if (!u->waiting) {
		u->waiting = true;
		u->waits++;
		if (!u->gap_from_ms && u->last_answer_ms)
			u->gap_from_ms = u->last_answer_ms;
		say(u, "wait", "frame=%" PRIu64 " reason=\"%s\"", w->frame_id, w->reason);
	}
}

static void sock_read(struct client *cl, struct cuser *u)
{
	uint8_t buf[16384];
	bool eof = false;
	for (;;) {
		ssize_t n = recv(u->fd, buf, sizeof(buf), 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			break;
		if (n <= 0) {
			eof = true;
			break;
		}
		if (sw_buf_append(&u->in, buf, (size_t)n) < 0) {
			eof = true;
			break;
		}
	}
	const uint8_t *body;
	size_t len;
	int r;
	while (u->fd >= 0 && (r = sw_buf_next_msg(&u->in, &body, &len)) != 0) {
		Sandwich__ServerMsg *m =
			r < 0 ? NULL : sandwich__server_msg__unpack(NULL, len, body);
		if (!m) {
			say(u, "disconnected", "reason=\"%s\"", "bad message from the server");
			sock_close(cl, u, RECONNECT_MS);
			return;
		}
		sw_buf_consume(&u->in, 4 + len);
		switch (m->body_case) {
		case SANDWICH__SERVER_MSG__BODY_WELCOME:
			on_welcome(cl, u, m->welcome);
			break;
		case SANDWICH__SERVER_MSG__BODY_INSTRUCTION:
			on_instruction(cl, u, m->instruction);
			break;
		case SANDWICH__SERVER_MSG__BODY_WAIT:
			on_wait(cl, u, m->wait);
			break;
		case SANDWICH__SERVER_MSG__BODY_STANDBY:
			/* A failover token for the server's standby. */
			if (m->standby->failover_token &&
			    strlen(m->standby->failover_token) < sizeof(u->standby_token)) {
				snprintf(u->standby_token, sizeof(u->standby_token), "%s",
					 m->standby->failover_token);
				arm_standby(cl, u);
			}
			break;
		case SANDWICH__SERVER_MSG__BODY_MOVED:
			/* The user left this cloudlet: the redirect says where to. */
			say(u, "moved", "reason=\"%s\"", m->moved->reason);
			sock_close(cl, u, MOVED_RETRY_MS);
			break;
		default:
			break;
		}
		sandwich__server_msg__free_unpacked(m, NULL);
	}
	if (eof && u->fd >= 0) {
		say(u, "disconnected", "reason=\"%s\"", "the server closed the connection");
		sock_close(cl, u, RECONNECT_MS);
	}
}

static void sock_writable(struct client *cl, struct cuser *u)
{
	if (u->connecting) {
		int err = 0;
		socklen_t len = sizeof(err);
		struct sockaddr_in peer;
		socklen_t plen = sizeof(peer);
		getsockopt(u->fd, SOL_SOCKET, SO_ERROR, &err, &len);
		if (err) {
			say(u, "disconnected", "reason=\"connect to %s: %s\"", u->app_url,
			    strerror(err));
			sock_close(cl, u, RECONNECT_MS);
			return;
		}
		if (getpeername(u->fd, (struct sockaddr *)&peer, &plen) < 0)
			return; /* still connecting */
		u->connecting = false;
		sock_events(cl, u);
		send_hello(cl, u);
		return;
	}
	if (sw_buf_flush(&u->out, u->fd) < 0) {
		sock_close(cl, u, RECONNECT_MS);
		return;
	}
	sock_events(cl, u);
}

/* ---------------------------------------------------------------- the loop */

/* What each user does now: connect, say Hello, or send the next frame. */
static void drive(struct client *cl, struct cuser *u, uint64_t now)
{
	if (u->standby_retry_at && now >= u->standby_retry_at && u->helper && !u->done &&
	    mig_client_get_state(u->helper) == MIG_CLIENT_FAILED) {
		/* The engine turned the helper away: the user is not served
		 * there any more. Try the standby (until it promotes the user,
		 * it refuses without using the token up). */
		say(u, "standby-attach", "url=%s reason=\"%s\"", cl->standby_url,
		    mig_client_last_error(u->helper));
		u->standby_retry_at = now + (cl->failover_ms ? cl->failover_ms : 3000);
		mig_client_attach(u->helper, cl->standby_url, u->armed_token);
	}
	if (u->done || u->stuck || now < u->retry_at)
		return;
	if (u->fd < 0)
		start_connect(cl, u);
	else if (u->connecting)
		return;
	else if (!u->welcomed && !u->hello_in_flight)
		send_hello(cl, u);
	else if (u->welcomed && !u->in_flight)
		send_frame(cl, u);
}

/* After a redirect: read what the old cloudlet already answered, then
 * connect to the new one and say Hello; its Welcome says which frame next. */
static void follow_redirect(struct client *cl, struct cuser *u)
{
	u->follow = false;
	if (u->done)
		return;
	if (u->fd >= 0 && !u->connecting)
		sock_read(cl, u);
	sock_close(cl, u, 0);
	drive(cl, u, sw_mono_ms());
}

static void summary(const struct cuser *u, unsigned image_bytes)
{
	char steps[512] = "";
	size_t n = 0;
	for (int i = 0; i < u->nsteps && n < sizeof(steps); i++)
		n += (size_t)snprintf(steps + n, sizeof(steps) - n, "%s%s", i ? "," : "",
				      sw_step_name(u->steps[i]));
	/* What frames.log must hold: frames 1..acked, as the server records them. */
	uint8_t *img = malloc(image_bytes ? image_bytes : 1);
	uint64_t h = SW_FNV_INIT, bytes = 0;
	for (uint64_t id = 1; img && id <= u->acked && id <= u->nlabels; id++) {
		char hdr[96];
		size_t hl = sw_record_header(hdr, sizeof(hdr), id, u->labels[id - 1], image_bytes);
		make_image(u, id, img, image_bytes);
		h = sw_fnv(h, hdr, hl);
		h = sw_fnv(h, img, image_bytes);
		h = sw_fnv(h, "\n", 1);
		bytes += hl + image_bytes + 1;
	}
	free(img);
	printf("summary user=%s done=%d final_step=%s steps=%s corrections=%d frames=%" PRIu64
	       " waits=%d redirects=%d cloudlets=%s log_bytes=%" PRIu64 " log_fnv=%016" PRIx64
	       " consistent=%d failovers=%d resumed_step=%s resumed_frame=%" PRIu64
	       " steps_redone=%d frames_redone=%" PRIu64 " corrections_redone=%d\n",
	       u->id, u->done, u->nsteps ? sw_step_name(u->steps[u->nsteps - 1]) : "-",
	       steps[0] ? steps : "-", u->corrections, u->acked, u->waits, u->redirects,
	       u->cloudlets[0] ? u->cloudlets : "-", bytes, h, u->consistent, u->failovers,
	       u->failovers ? sw_step_name(u->resumed_step) : "-", u->resumed_frame,
	       u->steps_redone, u->frames_redone, u->corrections_redone);
}

static void retire_helpers(struct client *cl)
{
	for (size_t i = 0; i < cl->nusers; i++) {
		struct cuser *u = &cl->users[i];
		if (u->helper_retired && u->helper) {
			epoll_ctl(cl->ep, EPOLL_CTL_DEL, mig_client_fd(u->helper), NULL);
			mig_client_free(u->helper);
			u->helper = NULL;
		}
	}
}

static void usage(void)
{
	fprintf(stderr, "usage: sandwich_client --server tcp://HOST:PORT --users u1,u2,...\n"
			"                       [--interval-ms 100] [--hold 12,6,8] "
			"[--image-bytes 8192] [--timeout 120]\n"
			"                       [--standby URL [--failover-ms 3000]]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	struct client cl = {.image_bytes = 8192, .interval_ms = 100};
	const char *server = NULL, *users = NULL, *hold = "12,6,8";
	unsigned timeout_s = 120;
	int opt;
	static const struct option longopts[] = {
		{"server", required_argument, NULL, 's'},
		{"users", required_argument, NULL, 'u'},
		{"interval-ms", required_argument, NULL, 'i'},
		{"hold", required_argument, NULL, 'h'},
		{"image-bytes", required_argument, NULL, 'b'},
		{"timeout", required_argument, NULL, 't'},
		{"standby", required_argument, NULL, 'S'},
		{"failover-ms", required_argument, NULL, 'f'},
		{NULL, 0, NULL, 0},
	};
	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		switch (opt) {
		case 's':
			server = optarg;
			break;
		case 'u':
			users = optarg;
			break;
		case 'i':
			cl.interval_ms = (unsigned)atoi(optarg);
			break;
		case 'h':
			hold = optarg;
			break;
		case 'b':
			cl.image_bytes = (unsigned)atoi(optarg);
			break;
		case 't':
			timeout_s = (unsigned)atoi(optarg);
			break;
		case 'S':
			cl.standby_url = optarg;
			break;
		case 'f':
			cl.failover_ms = (unsigned)atoi(optarg);
			break;
		default:
			usage();
		}
	}
	char host[128];
	int port;
	if (cl.standby_url && strncmp(cl.standby_url, "ws://", 5) != 0 &&
	    strncmp(cl.standby_url, "wss://", 6) != 0) {
		fprintf(stderr,
			"sandwich_client: --standby needs an engine URL (ws://HOST:PORT or "
			"wss://...), not \"%s\"\n",
			cl.standby_url);
		usage();
	}
	if (!server || !users || optind != argc || cl.interval_ms == 0 ||
	    cl.image_bytes > SW_MAX_MSG / 2 || sw_parse_tcp_url(server, host, sizeof(host), &port))
		usage();
	unsigned holds[16], nholds = 0;
	char *hl = strdup(hold), *save = NULL;
	for (char *t = strtok_r(hl, ",", &save); t && nholds < 16; t = strtok_r(NULL, ",", &save))
		if ((holds[nholds] = (unsigned)atoi(t)) >= 1 && holds[nholds] <= 1000)
			nholds++;
	free(hl);
	if (!nholds)
		usage();

	char *list = strdup(users);
	for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save))
		cl.nusers++;
	free(list);
	cl.users = calloc(cl.nusers ? cl.nusers : 1, sizeof(*cl.users));
	list = strdup(users);
	size_t k = 0;
	for (char *t = strtok_r(list, ",", &save); t; t = strtok_r(NULL, ",", &save), k++) {
		struct cuser *u = &cl.users[k];
		snprintf(u->id, sizeof(u->id), "%s", t);
		snprintf(u->app_url, sizeof(u->app_url), "%s", server);
		snprintf(u->cloudlet, sizeof(u->cloudlet), "-");
		u->fd = -1;
		u->next_frame = 1;
		u->consistent = true;
		u->replay_pos = -1;
		u->sock_w = (struct watch){W_SOCK, u};
		if (make_script(u, k, holds[k % nholds]) < 0)
			return 1;
	}
	free(list);

	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGINT);
	sigaddset(&mask, SIGTERM);
	sigprocmask(SIG_BLOCK, &mask, NULL);
	signal(SIGPIPE, SIG_IGN);
	int sig = signalfd(-1, &mask, SFD_CLOEXEC);
	int tick = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
	struct itimerspec its = {{cl.interval_ms / 1000, (long)(cl.interval_ms % 1000) * 1000000},
				 {cl.interval_ms / 1000, (long)(cl.interval_ms % 1000) * 1000000}};
	timerfd_settime(tick, 0, &its, NULL);
	cl.ep = epoll_create1(EPOLL_CLOEXEC);
	struct watch tick_w = {W_TICK, NULL}, sig_w = {W_SIGNAL, NULL};
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = &tick_w};
	epoll_ctl(cl.ep, EPOLL_CTL_ADD, tick, &ev);
	ev.data.ptr = &sig_w;
	epoll_ctl(cl.ep, EPOLL_CTL_ADD, sig, &ev);

	uint64_t deadline = sw_mono_ms() + (uint64_t)timeout_s * 1000;
	bool stop = false;
	for (size_t i = 0; i < cl.nusers; i++)
		drive(&cl, &cl.users[i], sw_mono_ms());
	while (!stop) {
		struct epoll_event evs[64];
		int n = epoll_wait(cl.ep, evs, 64, 1000);
		if (n < 0 && errno != EINTR)
			break;
		for (int i = 0; i < n; i++) {
			struct watch *w = evs[i].data.ptr;
			struct cuser *u = w->u;
			if (w->kind == W_TICK) {
				uint64_t x;
				if (read(tick, &x, sizeof(x)) > 0)
					for (size_t j = 0; j < cl.nusers; j++)
						drive(&cl, &cl.users[j], sw_mono_ms());
			} else if (w->kind == W_SIGNAL) {
				stop = true;
			} else if (w->kind == W_HELPER) {
				if (u->helper && !u->helper_retired) {
					mig_client_dispatch(u->helper);
					if (u->follow)
						follow_redirect(&cl, u);
				}
			} else if (u->fd >= 0) {
				if (evs[i].events & EPOLLOUT)
					sock_writable(&cl, u);
				if (u->fd >= 0 && (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)))
					sock_read(&cl, u);
			}
		}
		retire_helpers(&cl);
		bool all_done = true;
		for (size_t j = 0; j < cl.nusers; j++)
			all_done &= cl.users[j].done || cl.users[j].stuck;
		if (all_done || sw_mono_ms() > deadline)
			stop = true;
	}

	int rc = 0;
	for (size_t i = 0; i < cl.nusers; i++) {
		struct cuser *u = &cl.users[i];
		if (!u->done) {
			rc = 1;
			say(u, "unfinished", "frames=%" PRIu64, u->acked);
		}
		u->helper_retired = true;
	}
	retire_helpers(&cl);
	for (size_t i = 0; i < cl.nusers; i++) {
		struct cuser *u = &cl.users[i];
		summary(u, cl.image_bytes);
		if (u->fd >= 0)
			close(u->fd);
		sw_buf_free(&u->in);
		sw_buf_free(&u->out);
		free(u->labels);
	}
	fflush(stdout);
	free(cl.users);
	close(tick);
	close(sig);
	close(cl.ep);
	return rc;
}
