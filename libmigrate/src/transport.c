/* The transport: libwebsockets, its service thread, framing and the
 * authentication handshake. Only the transport's files (transport_int.h)
 * include libwebsockets.h. This one holds the lifecycle (new, start, free,
 * the service thread), the commands other threads queue for the I/O thread,
 * the events the I/O thread posts back, and the list of connections. The
 * WebSocket callbacks, the handshake and the framing are in transport_ws.c,
 * OpenSSL (the client SSL_CTX, made at the first wss:// connect, and
 * certificate verification) in transport_tls.c, plain HTTP (GET /metrics)
 * in transport_http.c.
 *
 * Ownership rules (see transport.h): a `struct conn` is created by the thread
 * that asks for a connection (outbound) or by the I/O thread (inbound), and is
 * then touched only on the I/O thread. Other threads name connections by id
 * and talk to the I/O thread through `cmd` records on a lock-free list
 * (transport_int.h, `cmds`), drained in LWS_CALLBACK_EVENT_WAIT_CANCELLED. */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "transport_int.h"

/* One read from a socket, at most (lws's pt_serv_buf_size). */
#define READ_BYTES (64u * 1024)

enum cmd_type { CMD_CONNECT, CMD_SEND, CMD_SEND_RAW, CMD_CLOSE };

struct cmd {
	struct cmd *next;
	enum cmd_type type;
	uint64_t conn_id;
	struct conn *conn; /* CMD_CONNECT: the new conn, handed to the I/O thread */
	mig__msg *msg;
	int status;
	char reason[120];
};

const char *const mig__protocol_names[] = {
	[MIGWIRE__CHANNEL__CHANNEL_PEER] = "mig-peer",
	[MIGWIRE__CHANNEL__CHANNEL_CONTROL] = "mig-control",
	[MIGWIRE__CHANNEL__CHANNEL_SESSION] = "mig-session",
	[MIGWIRE__CHANNEL__CHANNEL_ANNOUNCE] = "mig-announce",
};

const lws_retry_bo_t mig__keepalive_policy = {
	.secs_since_valid_ping = 20,
	.secs_since_valid_hangup = 60,
};

/* ------------------------------------------------------------------ events */

void mig__tev_free(mig__tev *ev)
{
	if (!ev)
		return;
	mig__free(ev->peer_engine_id);
	mig__free(ev->peer_url);
	mig__wire_free(ev->frame);
	mig__free(ev->line);
	if (ev->arg && ev->discard)
		ev->discard(ev->arg);
	mig__free(ev);
}

void mig__tev_free_item(mig__evq_item *item)
{
	mig__tev_free((mig__tev *)item);
}

void mig__post(mig__transport *t, mig__tev *ev)
{
	if (t->destroying) {
		mig__tev_free(ev);
		return;
	}
	mig__evq_push(t->cfg.events, &ev->link);
}

void mig__tlog(mig__transport *t, mig_log_level level, const char *fmt, ...)
{
	if (level > t->cfg.log_level || t->destroying)
		return;
	mig__tev *ev = mig__calloc(1, sizeof(*ev));
	if (!ev)
		return;
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	ev->type = MIG__TEV_LOG;
	ev->level = (int)level;
	ev->line = mig__strdup(line);
	if (!ev->line) {
		mig__free(ev);
		return;
	}
	mig__post(t, ev);
}

/* ------------------------------------------------------------------ conns */

static void free_msgs(mig__msg *m)
{
	while (m) {
		mig__msg *next = m->next;
		mig__msg_free(m);
		m = next;
	}
}

static void conn_free(struct conn *c)
{
	mig__free(c->down_ev);
	free_msgs(c->hs_head);
	free_msgs(c->tx_head);
	mig__free(c->rx);
	mig__free(c->url);
	mig__free(c->peer_engine_id);
	mig__free(c->peer_url);
	mig__free(c);
}

static struct conn *conn_find(mig__transport *t, uint64_t id)
{
	for (struct conn *c = t->conns; c; c = c->next)
		if (c->id == id)
			return c;
	return NULL;
}

void mig__conn_link(mig__transport *t, struct conn *c)
{
	c->next = t->conns;
	t->conns = c;
}

/* Frees connections whose wsi is gone. Runs on the I/O thread outside any
 * callback of theirs. */
static void reap(mig__transport *t)
{
	struct conn **pp = &t->conns;
	while (*pp) {
		struct conn *c = *pp;
		if (c->state == CONN_DEAD) {
			*pp = c->next;
			conn_free(c);
		} else {
			pp = &c->next;
		}
	}
}

/* ------------------------------------------------------------------ commands */

/* A command that will not run: frees it and what it carries. */
static void cmd_free(struct cmd *cmd)
{
	if (cmd->conn)
		conn_free(cmd->conn);
	mig__msg_free(cmd->msg);
	mig__free(cmd);
}

/* Any thread, no lock: queues `cmd` for the I/O thread and wakes it. */
static void queue_cmd(mig__transport *t, struct cmd *cmd)
{
	/* Counted in `posting` before reading `stopping` (both sequentially
	 * consistent), and free() sets `stopping` before reading `posting`:
	 * either free() sees this post and waits for it to be over, or this
	 * post sees `stopping` and keeps its command. So the context is alive
	 * for lws_cancel_service() without a lock. */
	atomic_fetch_add(&t->posting, 1);
	if (atomic_load(&t->stopping)) {
		atomic_fetch_sub(&t->posting, 1);
		cmd_free(cmd);
		return;
	}
	struct cmd *head = atomic_load_explicit(&t->cmds, memory_order_relaxed);
	do
		cmd->next = head;
	while (!atomic_compare_exchange_weak_explicit(&t->cmds, &head, cmd, memory_order_release,
						      memory_order_relaxed));
	/* After the push: a drain that missed the command runs again. */
	lws_cancel_service(t->ctx);
	atomic_fetch_sub(&t->posting, 1);
}

/* Takes every queued command, oldest first (the stack holds them newest
 * first): the commands of one thread run in the order it posted them. */
static struct cmd *take_cmds(mig__transport *t)
{
	struct cmd *c = atomic_exchange_explicit(&t->cmds, NULL, memory_order_acquire);
	struct cmd *fifo = NULL;
	while (c) {
		struct cmd *next = c->next;
		c->next = fifo;
		fifo = c;
		c = next;
	}
	return fifo;
}

static void do_connect(mig__transport *t, struct conn *c)
{
	bool tls;
	char host[256], path[256];
	int port;
	mig__conn_link(t, c);
	if (mig__url_parse(c->url, &tls, host, sizeof(host), &port, path, sizeof(path)) != 0) {
		mig__set_down(c, MIG_EINVAL, "invalid URL");
		mig__conn_gone(t, c);
		return;
	}
	struct lws_client_connect_info ci;
	memset(&ci, 0, sizeof(ci));
	ci.context = t->ctx;
	ci.address = host;
	ci.port = port;
	ci.path = path;
	ci.host = host;
	ci.origin = host;
	ci.protocol = mig__protocol_names[c->channel];
	if (tls && !t->client_ssl_ctx && mig__client_vhost_new(t, c) != 0) {
		mig__conn_gone(t, c);
		return;
	}
	if (tls && !t->tls_ca_file && !t->system_ca_loaded) {
		/* No connection has used the client SSL_CTX yet, so its store
		 * can still be filled here. */
		if (SSL_CTX_set_default_verify_paths(t->client_ssl_ctx) != 1) {
			mig__set_down(c, MIG_ETLS, "cannot load the system CA store: %s",
				      mig__ssl_error());
			mig__conn_gone(t, c);
			return;
		}
		t->system_ca_loaded = true;
	}
	ci.ssl_connection = tls ? LCCSCF_USE_SSL : 0;
	ci.vhost = tls ? t->client_vhost : NULL; /* NULL: the default vhost */
	ci.opaque_user_data = c;
	ci.retry_and_idle_policy = &mig__keepalive_policy;
	ci.pwsi = &c->wsi;
	c->tls = tls;
	if (!lws_client_connect_via_info(&ci)) {
		/* lws may or may not have called CONNECTION_ERROR already. */
		mig__set_down(c, MIG_ECONNECT, "cannot connect to %s", c->url);
		mig__conn_gone(t, c);
	}
}

void mig__drain_cmds(mig__transport *t)
{
	struct cmd *list = take_cmds(t);

	reap(t);
	while (list) {
		struct cmd *cmd = list;
		list = cmd->next;
		struct conn *c;
		switch (cmd->type) {
		case CMD_CONNECT:
			do_connect(t, cmd->conn);
			break;
		case CMD_SEND:
			c = conn_find(t, cmd->conn_id);
			if (c && c->state != CONN_DEAD && !c->close_requested) {
				mig__enqueue_tx(c, cmd->msg);
				cmd->msg = NULL;
			}
			break;
		case CMD_SEND_RAW:
			c = conn_find(t, cmd->conn_id);
			if (c && c->state != CONN_DEAD && !c->close_requested) {
				mig__push_msg(&c->hs_head, &c->hs_tail, cmd->msg);
				cmd->msg = NULL;
				if (c->wsi && c->state != CONN_CONNECTING)
					lws_callback_on_writable(c->wsi);
			}
			break;
		case CMD_CLOSE:
			c = conn_find(t, cmd->conn_id);
			if (c && c->state != CONN_DEAD) {
				mig__set_down(c, MIG_ECLOSED, "closed by this side: %s",
					      cmd->reason);
				if (c->wsi)
					mig__request_close(c, cmd->status, cmd->reason);
				else
					mig__conn_gone(t, c);
			}
			break;
		}
		mig__msg_free(cmd->msg);
		mig__free(cmd);
	}
}

/* ------------------------------------------------------------------ lifecycle */

static void *service_thread(void *arg)
{
	mig__transport *t = arg;
	if (t->cfg.thread_nice > 0) {
		/* This thread's niceness, inherited from its creator; raising
		 * it needs no privilege, and if it fails the thread just keeps
		 * the app's priority. */
		errno = 0;
		int base = getpriority(PRIO_PROCESS, 0);
		if (!(base == -1 && errno))
			(void)setpriority(PRIO_PROCESS, 0,
					  base + t->cfg.thread_nice > 19 ? 19
									 : base + t->cfg.thread_nice);
	}
	for (;;) {
		if (atomic_load(&t->stopping))
			break;
		if (lws_service(t->ctx, 0) < 0)
			break;
	}
	return NULL;
}

static pthread_once_t lws_log_once = PTHREAD_ONCE_INIT;

static void lws_log_setup(void)
{
	/* lws logging is process-wide. Errors it reports are also reported to
	 * the owner as DOWN events; its own lines are only for debugging, so
	 * they stay off unless MIG_LWS_LOG asks for them (an LLL_* bitmask). */
	const char *env = getenv("MIG_LWS_LOG");
	int level = env ? atoi(env) : 0;
	lws_set_log_level(level, NULL);
}

int mig__transport_new(mig__transport **out, const mig__transport_cfg *cfg, char *err,
		       size_t err_len)
{
	*out = NULL;
	pthread_once(&lws_log_once, lws_log_setup);
	mig__transport *t = mig__calloc(1, sizeof(*t));
	if (!t)
		return MIG_ENOMEM;
	t->cfg = *cfg;
	atomic_init(&t->cmds, NULL);
	atomic_init(&t->posting, 0);
	atomic_init(&t->stopping, false);
	atomic_init(&t->next_id, 0);
	/* Enough for the chunks of a transfer's flow-control window. */
	t->rx_pool = mig__pool_new(MIG__POOL_BLOCK, 40);
#define DUP(field)                                                   \
	do {                                                         \
		if (cfg->field) {                                    \
			t->field = mig__strdup(cfg->field);          \
			if (!t->field)                               \
				goto nomem;                          \
		}                                                    \
		t->cfg.field = t->field;                             \
	} while (0)
	DUP(listen_address);
	DUP(tls_cert_file);
	DUP(tls_key_file);
	DUP(tls_ca_file);
	DUP(engine_id);
	DUP(advertised_url);
	DUP(name);
#undef DUP
	if (!t->name && !(t->name = mig__strdup("transport")))
		goto nomem;
	if (!t->engine_id && !(t->engine_id = mig__strdup("")))
		goto nomem;
	if (!t->advertised_url && !(t->advertised_url = mig__strdup("")))
		goto nomem;
	if (cfg->secret_len) {
		t->secret = mig__malloc(cfg->secret_len);
		if (!t->secret)
			goto nomem;
		memcpy(t->secret, cfg->secret, cfg->secret_len);
		t->cfg.secret = t->secret;
	}
	if (!t->cfg.max_frame)
		t->cfg.max_frame = MIG__DEFAULT_MAX_FRAME;

	/* protocols[0] catches plain HTTP (GET /metrics, mig__on_http) and
	 * WebSockets without a known subprotocol (closed at ESTABLISHED). */
	t->protocols[0] = (struct lws_protocols){
		"http", mig__callback, sizeof(struct http_reply), 0, 0, NULL, 0};
	for (int ch = 1; ch <= MIGWIRE__CHANNEL__CHANNEL_ANNOUNCE; ch++)
		t->protocols[ch] = (struct lws_protocols){
			mig__protocol_names[ch], mig__callback, 0, FRAGMENT_BYTES, (unsigned)ch,
			NULL, FRAGMENT_BYTES};
	t->protocols[5] = (struct lws_protocols){NULL, NULL, 0, 0, 0, NULL, 0};

	struct lws_context_creation_info info;
	memset(&info, 0, sizeof(info));
	info.port = cfg->listen ? cfg->listen_port : CONTEXT_PORT_NO_LISTEN;
	info.iface = cfg->listen ? (t->listen_address ? t->listen_address : "127.0.0.1") : NULL;
	info.protocols = t->protocols;
	info.user = t;
	info.gid = -1;
	info.uid = -1;
	/* Bytes one read of a connection takes (lws reads at most this much
	 * per recv(); its default, 4 KiB, made a 64 MiB transfer 16384 reads
	 * and as many trips through the event loop). One buffer per context,
	 * resident from the start (lws touches all of it). 256 KiB, with
	 * 256 KiB peer fragments, made a fresh 64 MiB transfer 8 % faster once
	 * the digests were XXH3 (111 against 120 ms) but cost every engine
	 * 0.22 MiB more idle RSS, so it stays at 64 KiB (docs/BENCHMARKS.md,
	 * "File state"). */
	info.pt_serv_buf_size = READ_BYTES;
	info.retry_and_idle_policy = &mig__keepalive_policy;
	if (t->tls_cert_file || t->tls_ca_file)
		/* TLS configured: OpenSSL now, and the files checked at start
		 * (MIG_ETLS). Without, see mig__client_vhost_new(). */
		info.options = LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
	if (cfg->listen && t->tls_cert_file) {
		info.ssl_cert_filepath = t->tls_cert_file;
		info.ssl_private_key_filepath = t->tls_key_file;
		if (t->tls_ca_file)
			info.ssl_ca_filepath = t->tls_ca_file;
		if (cfg->tls_require_client_cert)
			info.options |= LWS_SERVER_OPTION_REQUIRE_VALID_OPENSSL_CLIENT_CERT;
	}
	if (info.options & LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT) {
		t->client_ssl_ctx = mig__client_ssl_ctx_new(t, err, err_len);
		if (!t->client_ssl_ctx) {
			mig__transport_free(t);
			return MIG_ETLS;
		}
		info.provided_client_ssl_ctx = t->client_ssl_ctx;
	}
	t->ctx = lws_create_context(&info);
	if (!t->ctx) {
		if (err)
			snprintf(err, err_len, "%s",
				 cfg->listen ? "cannot listen (address in use, or TLS files unusable)"
					     : "cannot create the WebSocket context");
		mig__transport_free(t);
		return cfg->listen ? MIG_EIO : MIG_ESYSTEM;
	}
	if (cfg->listen) {
		struct lws_vhost *vh = lws_get_vhost_by_name(t->ctx, "default");
		t->port = vh ? lws_get_vhost_listen_port(vh) : -1;
	}
	*out = t;
	return 0;
nomem:
	mig__transport_free(t);
	return MIG_ENOMEM;
}

int mig__transport_set_advertised_url(mig__transport *t, const char *url)
{
	if (t->thread_started)
		return MIG_ESTATE;
	char *copy = mig__strdup(url);
	if (!copy)
		return MIG_ENOMEM;
	mig__free(t->advertised_url);
	t->advertised_url = copy;
	t->cfg.advertised_url = copy;
	return 0;
}

int mig__transport_start(mig__transport *t)
{
	if (t->thread_started)
		return MIG_ESTATE;
	if (pthread_create(&t->thread, NULL, service_thread, t) != 0)
		return MIG_ESYSTEM;
	t->thread_started = true;
	return 0;
}

void mig__transport_free(mig__transport *t)
{
	if (!t)
		return;
	if (t->ctx) {
		atomic_store(&t->stopping, true);
		lws_cancel_service(t->ctx);
		if (t->thread_started)
			pthread_join(t->thread, NULL);
		/* Posts that saw `stopping` false may still be waking the
		 * context (queue_cmd()); they are a few instructions from done,
		 * and come from threads the owner is tearing down. */
		while (atomic_load(&t->posting))
			sched_yield();
		t->destroying = true;
		lws_context_destroy(t->ctx);
		t->ctx = NULL;
	}
	SSL_CTX_free(t->client_ssl_ctx);
	/* Commands queued after the I/O thread's last drain. */
	struct cmd *cmd = take_cmds(t);
	while (cmd) {
		struct cmd *next = cmd->next;
		cmd_free(cmd);
		cmd = next;
	}
	struct conn *c = t->conns;
	while (c) {
		struct conn *next = c->next;
		conn_free(c);
		c = next;
	}
	mig__pool_release(t->rx_pool);
	mig__free(t->listen_address);
	mig__free(t->tls_cert_file);
	mig__free(t->tls_key_file);
	mig__free(t->tls_ca_file);
	mig__free(t->engine_id);
	mig__free(t->advertised_url);
	mig__free(t->name);
	mig__free(t->secret);
	mig__free(t);
}

int mig__transport_port(const mig__transport *t)
{
	return t->port;
}

int64_t mig__transport_connect(mig__transport *t, const char *url, int channel)
{
	bool tls;
	char host[256], path[256];
	int port;
	if (channel < 1 || channel > MIGWIRE__CHANNEL__CHANNEL_ANNOUNCE)
		return MIG_EINVAL;
	if (mig__url_parse(url, &tls, host, sizeof(host), &port, path, sizeof(path)) != 0)
		return MIG_EINVAL;
	struct conn *c = mig__calloc(1, sizeof(*c));
	struct cmd *cmd = mig__calloc(1, sizeof(*cmd));
	if (!c || !cmd || !(c->down_ev = mig__calloc(1, sizeof(*c->down_ev))) ||
	    !(c->url = mig__strdup(url))) {
		if (c)
			conn_free(c);
		mig__free(cmd);
		return MIG_ENOMEM;
	}
	c->channel = channel;
	c->state = CONN_CONNECTING;
	c->id = atomic_fetch_add(&t->next_id, 1) + 1;
	uint64_t id = c->id;
	cmd->type = CMD_CONNECT;
	cmd->conn = c;
	queue_cmd(t, cmd);
	return (int64_t)id;
}

void mig__transport_trim(mig__transport *t)
{
	mig__pool_trim(t->rx_pool);
}

void mig__transport_send(mig__transport *t, uint64_t conn, mig__msg *msg)
{
	struct cmd *cmd = mig__calloc(1, sizeof(*cmd));
	if (!cmd) {
		/* Dropping the message is what a lost link does; the protocol's
		 * timeouts and idempotent retries cover it. A message that was to
		 * close the connection still closes it. */
		bool close_after = msg->close_after;
		mig__msg_free(msg);
		if (close_after)
			mig__transport_close(t, conn, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION,
					     "out of memory");
		return;
	}
	cmd->type = CMD_SEND;
	cmd->conn_id = conn;
	cmd->msg = msg;
	queue_cmd(t, cmd);
}

void mig__transport_send_raw(mig__transport *t, uint64_t conn, mig__msg *msg)
{
	struct cmd *cmd = mig__calloc(1, sizeof(*cmd));
	if (!cmd) {
		mig__msg_free(msg);
		return;
	}
	cmd->type = CMD_SEND_RAW;
	cmd->conn_id = conn;
	cmd->msg = msg;
	queue_cmd(t, cmd);
}

void mig__transport_close(mig__transport *t, uint64_t conn, int status, const char *reason)
{
	struct cmd *cmd = mig__calloc(1, sizeof(*cmd));
	if (!cmd)
		return;
	cmd->type = CMD_CLOSE;
	cmd->conn_id = conn;
	cmd->status = status ? status : LWS_CLOSE_STATUS_NORMAL;
	mig__strlcpy(cmd->reason, reason ? reason : "", sizeof(cmd->reason));
	queue_cmd(t, cmd);
}

int mig__url_parse(const char *url, bool *tls, char *host, size_t host_len, int *port,
		   char *path, size_t path_len)
{
	if (!url)
		return MIG_EINVAL;
	const char *p;
	if (strncmp(url, "ws://", 5) == 0) {
		*tls = false;
		p = url + 5;
	} else if (strncmp(url, "wss://", 6) == 0) {
		*tls = true;
		p = url + 6;
	} else {
		return MIG_EINVAL;
	}
	const char *host_start = p, *host_end;
	if (*p == '[') { /* [v6]:port */
		host_start = p + 1;
		host_end = strchr(host_start, ']');
		if (!host_end)
			return MIG_EINVAL;
		p = host_end + 1;
	} else {
		while (*p && *p != ':' && *p != '/')
			p++;
		host_end = p;
	}
	size_t hlen = (size_t)(host_end - host_start);
	if (hlen == 0 || hlen >= host_len)
		return MIG_EINVAL;
	memcpy(host, host_start, hlen);
	host[hlen] = '\0';
	*port = *tls ? 443 : 80;
	if (*p == ':') {
		char *end;
		long v = strtol(p + 1, &end, 10);
		if (end == p + 1 || v <= 0 || v > 65535)
			return MIG_EINVAL;
		*port = (int)v;
		p = end;
	}
	if (*p && *p != '/')
		return MIG_EINVAL;
	const char *pa = *p ? p : "/";
	if (strlen(pa) >= path_len)
		return MIG_EINVAL;
	for (const char *q = url; *q; q++)
		if ((unsigned char)*q <= 0x20 || (unsigned char)*q >= 0x7f)
			return MIG_EINVAL;
	strcpy(path, pa);
	return 0;
}
