/* The transport: libwebsockets, its service thread, framing and the
 * authentication handshake. The only file that includes libwebsockets.h.
 *
 * Ownership rules (see transport.h): a `struct conn` is created by the thread
 * that asks for a connection (outbound) or by the I/O thread (inbound), and is
 * then touched only on the I/O thread. Other threads name connections by id
 * and talk to the I/O thread through `cmd` records on a locked list, drained
 * in LWS_CALLBACK_EVENT_WAIT_CANCELLED. */
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <libwebsockets.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "auth.h"
#include "transport.h"

_Static_assert(LWS_PRE <= MIG__MSG_HEADROOM, "MIG__MSG_HEADROOM must cover LWS_PRE");
_Static_assert(14 <= MIG__MSG_HEADROOM, "MIG__MSG_HEADROOM must cover a frame header");
_Static_assert(MIG__NONCE_LEN == MIG__AUTH_NONCE_LEN, "one nonce length");
_Static_assert(MIG__MAC_LEN == MIG__AUTH_MAC_LEN, "one MAC length");

/* Largest piece handed to one lws_write(): matches tx_packet_size so lws
 * never has to buffer a partial send on the heap. */
#define FRAGMENT_BYTES (64u * 1024)
/* One read from a socket, at most (lws's pt_serv_buf_size). */
#define READ_BYTES (64u * 1024)
#define HANDSHAKE_TIMEOUT_S 10

enum conn_state {
	CONN_CONNECTING, /* outbound, TCP/TLS/WS upgrade in progress */
	CONN_HANDSHAKE,  /* WebSocket open, authenticating */
	CONN_UP,         /* authenticated; frames flow to the owner */
	CONN_DEAD,       /* wsi gone; waiting to be reaped */
};

struct conn {
	struct conn *next;
	uint64_t id;
	struct lws *wsi;
	enum conn_state state;
	int channel;
	bool inbound;
	bool tls;
	char *url; /* outbound: where to */
	uint8_t server_nonce[MIG__AUTH_NONCE_LEN];
	uint8_t client_nonce[MIG__AUTH_NONCE_LEN];
	char *peer_engine_id;
	char *peer_url;
	/* Message reassembly: at most max_frame bytes, grown on demand. */
	uint8_t *rx;
	size_t rx_len;
	size_t rx_cap;
	bool rx_discard; /* a text message: being refused */
	bool challenged; /* client: Challenge received, Hello sent */
	bool attach_seen; /* server, session channel: the Attach frame arrived */
	/* Outgoing messages, oldest first; the head may be partly written.
	 * Handshake frames have their own queue so that the owner's messages,
	 * which may be queued while connecting, go out only once authenticated. */
	mig__msg *hs_head;
	mig__msg *hs_tail;
	mig__msg *tx_head;
	mig__msg *tx_tail;
	/* Close requested by the owner or by a protocol error. */
	bool close_requested;
	/* The close went to lws (we returned -1 from WRITEABLE once): lws sends
	 * the close frame and waits for the peer's; closing again would reset
	 * the socket before the peer has read why. */
	bool close_sent;
	int close_status;
	char close_reason[120];
	/* Why the connection went down, for the DOWN event. */
	int down_error;
	char down_reason[MIG__REASON_MAX];
	bool down_posted;
	/* The DOWN event, allocated with the connection: an owner that never
	 * heard of the close would keep using a dead connection id (every
	 * message to that peer lost, for good). */
	mig__tev *down_ev;
	/* Why TLS failed, from OpenSSL: lws reports only "read failed" or a
	 * mangled "connect SSL err" when a handshake fails. */
	char tls_detail[160];
	bool tls_handshake_done;
};

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

struct mig__transport {
	mig__transport_cfg cfg; /* strings below are owned copies */
	char *listen_address;
	char *tls_cert_file;
	char *tls_key_file;
	char *tls_ca_file;
	char *engine_id;
	char *advertised_url;
	char *name;
	uint8_t *secret;

	struct lws_context *ctx;
	/* The client SSL_CTX, ours and given to lws: lws 4.1 makes a new
	 * SSL_CTX ex-data index per context and then fails to free its own
	 * client SSL_CTX once another context exists. */
	SSL_CTX *client_ssl_ctx;
	/* Without tls_ca_file the client SSL_CTX trusts the system CA store,
	 * loaded by the first wss:// connect (I/O thread): parsed, it is
	 * ~0.6 MiB of heap that an engine with no wss:// peer never needs. */
	bool system_ca_loaded;
	/* Engine without tls_cert_file and tls_ca_file: the vhost of its
	 * wss:// connects, made with client_ssl_ctx by the first one (I/O
	 * thread, client_vhost_new()); NULL until then. Otherwise NULL, and
	 * the default vhost has client_ssl_ctx from the start. */
	struct lws_vhost *client_vhost;
	struct lws_protocols protocols[6];
	int port;
	pthread_t thread;
	bool thread_started;

	pthread_mutex_t lock; /* guards cmds, next_id, stopping */
	struct cmd *cmd_head;
	struct cmd *cmd_tail;
	uint64_t next_id;
	bool stopping;
	bool destroying; /* I/O thread only: no events while tearing down */

	struct conn *conns; /* I/O thread only */
	/* Blocks for the large fields of received frames (file chunks), which
	 * the I/O thread allocates and workers free; NULL: the heap. */
	mig__pool *rx_pool;
};

static const char *const protocol_names[] = {
	[MIGWIRE__CHANNEL__CHANNEL_PEER] = "mig-peer",
	[MIGWIRE__CHANNEL__CHANNEL_CONTROL] = "mig-control",
	[MIGWIRE__CHANNEL__CHANNEL_SESSION] = "mig-session",
	[MIGWIRE__CHANNEL__CHANNEL_ANNOUNCE] = "mig-announce",
};

static const lws_retry_bo_t keepalive_policy = {
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

static void post(mig__transport *t, mig__tev *ev)
{
	if (t->destroying) {
		mig__tev_free(ev);
		return;
	}
	mig__evq_push(t->cfg.events, &ev->link);
}

static void tlog(mig__transport *t, mig_log_level level, const char *fmt, ...)
	MIG__PRINTF(3, 4);

static void tlog(mig__transport *t, mig_log_level level, const char *fmt, ...)
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
	post(t, ev);
}

static void refuse(struct conn *c, int error, int status, const char *reason);

/* Tells the owner the connection is authenticated. Without memory for
 * that, the connection closes: an owner that never heard of an inbound
 * connection drops its frames, and the peer would keep sending on it. */
static void post_up(mig__transport *t, struct conn *c)
{
	mig__tev *ev = mig__calloc(1, sizeof(*ev));
	if (ev) {
		ev->type = MIG__TEV_UP;
		ev->conn = c->id;
		ev->channel = c->channel;
		ev->inbound = c->inbound;
		ev->peer_engine_id = mig__strdup(c->peer_engine_id ? c->peer_engine_id : "");
		ev->peer_url = mig__strdup(c->peer_url ? c->peer_url : "");
	}
	if (!ev || !ev->peer_engine_id || !ev->peer_url) {
		mig__tev_free(ev);
		refuse(c, MIG_ENOMEM, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
		return;
	}
	post(t, ev);
}

/* Posts DOWN once per connection that the owner knows about: every outbound
 * one, and inbound ones that reached UP. */
static void post_down(mig__transport *t, struct conn *c)
{
	if (c->down_posted)
		return;
	c->down_posted = true;
	if (c->inbound && c->state != CONN_UP)
		return;
	mig__tev *ev = c->down_ev;
	c->down_ev = NULL;
	ev->type = MIG__TEV_DOWN;
	ev->conn = c->id;
	ev->channel = c->channel;
	ev->inbound = c->inbound;
	ev->error = c->down_error ? c->down_error : MIG_ECLOSED;
	mig__strlcpy(ev->reason, c->down_reason[0] ? c->down_reason : "connection closed",
		     sizeof(ev->reason));
	post(t, ev);
}

static void set_down(struct conn *c, int error, const char *fmt, ...) MIG__PRINTF(3, 4);

static void set_down(struct conn *c, int error, const char *fmt, ...)
{
	if (c->down_error)
		return; /* keep the first cause */
	c->down_error = error;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->down_reason, sizeof(c->down_reason), fmt, ap);
	va_end(ap);
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

static void conn_link(mig__transport *t, struct conn *c)
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

static const char *connect_error(mig__transport *t, struct conn *c, const char *in, char *buf,
				 size_t len);

static void conn_gone(mig__transport *t, struct conn *c)
{
	if (!c->inbound && c->state == CONN_CONNECTING) {
		/* lws may drop a client that never connected without
		 * CLIENT_CONNECTION_ERROR (seen after a TLS refusal). */
		char why[MIG__REASON_MAX];
		set_down(c, MIG_ECONNECT, "cannot connect to %s: %s", c->url,
			 connect_error(t, c, "closed before the WebSocket upgrade", why,
				       sizeof(why)));
	} else if (c->tls_detail[0]) {
		set_down(c, MIG_ECLOSED, "%s", c->tls_detail);
	}
	post_down(t, c);
	c->state = CONN_DEAD;
	if (c->wsi)
		lws_set_opaque_user_data(c->wsi, NULL);
	c->wsi = NULL;
}

static void push_msg(mig__msg **head, mig__msg **tail, mig__msg *m)
{
	m->next = NULL;
	m->sent = 0;
	if (*tail)
		(*tail)->next = m;
	else
		*head = m;
	*tail = m;
}

/* Queues an owner's message; it goes out once the connection is UP. */
static void enqueue_tx(struct conn *c, mig__msg *m)
{
	push_msg(&c->tx_head, &c->tx_tail, m);
	if (c->wsi && c->state == CONN_UP)
		lws_callback_on_writable(c->wsi);
}

static void request_close(struct conn *c, int status, const char *reason)
{
	if (c->close_requested)
		return;
	c->close_requested = true;
	c->close_status = status;
	mig__strlcpy(c->close_reason, reason, sizeof(c->close_reason));
	if (c->wsi)
		lws_callback_on_writable(c->wsi);
}

/* Encodes and queues a handshake frame; failure closes the connection. */
static void send_frame(mig__transport *t, struct conn *c, const mig__frame *f)
{
	mig__msg *m = NULL;
	if (mig__wire_encode(f, 0, &m) != 0) {
		set_down(c, MIG_ENOMEM, "out of memory encoding %s", mig__wire_body_name(f));
		request_close(c, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
		return;
	}
	push_msg(&c->hs_head, &c->hs_tail, m);
	if (c->wsi)
		lws_callback_on_writable(c->wsi);
}

/* ------------------------------------------------------------------ handshake */

static void transcript_of(mig__transport *t, struct conn *c, const char *engine_id,
			  const char *advertised_url, mig__auth_transcript *tr)
{
	tr->protocol_version = MIG_PROTOCOL_VERSION;
	tr->channel = (uint32_t)c->channel;
	tr->server_nonce = c->server_nonce;
	tr->client_nonce = c->client_nonce;
	tr->engine_id = engine_id;
	tr->advertised_url = advertised_url;
	MIG__UNUSED(t);
}

static bool secure(const mig__transport *t)
{
	return t->cfg.secret_len > 0;
}

/* Whether the handshake on `c` proves the cluster secret. The session
 * channel's clients do not know it: there the MACs are empty and the client
 * authenticates with a session token in its first frame, Attach (checked
 * below in on_message, and by the engine). Peer and control channels are
 * always as strict as secure() says. */
static bool handshake_mac(const mig__transport *t, const struct conn *c)
{
	return secure(t) && c->channel != MIGWIRE__CHANNEL__CHANNEL_SESSION;
}

static void server_send_challenge(mig__transport *t, struct conn *c)
{
	if (mig__random(c->server_nonce, sizeof(c->server_nonce)) != 0) {
		set_down(c, MIG_ESYSTEM, "no randomness for the challenge");
		request_close(c, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "internal error");
		return;
	}
	Migwire__Challenge ch = MIGWIRE__CHALLENGE__INIT;
	ch.protocol_version = MIG_PROTOCOL_VERSION;
	ch.server_nonce.data = c->server_nonce;
	ch.server_nonce.len = sizeof(c->server_nonce);
	ch.engine_id = t->engine_id;
	Migwire__Frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_CHALLENGE;
	f.challenge = &ch;
	send_frame(t, c, &f);
}

static void refuse(struct conn *c, int error, int status, const char *reason)
{
	set_down(c, error, "%s", reason);
	request_close(c, status, reason);
}

static void client_on_challenge(mig__transport *t, struct conn *c, const Migwire__Challenge *ch)
{
	if (ch->protocol_version != MIG_PROTOCOL_VERSION) {
		char why[120];
		snprintf(why, sizeof(why), "protocol version %u not supported (want %u)",
			 ch->protocol_version, MIG_PROTOCOL_VERSION);
		refuse(c, MIG_EVERSION, LWS_CLOSE_STATUS_POLICY_VIOLATION, why);
		return;
	}
	c->challenged = true;
	memcpy(c->server_nonce, ch->server_nonce.data, sizeof(c->server_nonce));
	mig__free(c->peer_engine_id);
	c->peer_engine_id = mig__strdup(ch->engine_id ? ch->engine_id : "");
	if (mig__random(c->client_nonce, sizeof(c->client_nonce)) != 0) {
		refuse(c, MIG_ESYSTEM, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "no randomness");
		return;
	}
	const char *adv = c->channel == MIGWIRE__CHANNEL__CHANNEL_PEER ? t->advertised_url : "";
	uint8_t mac[MIG__AUTH_MAC_LEN];
	Migwire__Hello h = MIGWIRE__HELLO__INIT;
	h.protocol_version = MIG_PROTOCOL_VERSION;
	h.channel = (Migwire__Channel)c->channel;
	h.client_nonce.data = c->client_nonce;
	h.client_nonce.len = sizeof(c->client_nonce);
	h.engine_id = t->engine_id;
	h.advertised_url = (char *)(adv ? adv : "");
	if (handshake_mac(t, c)) {
		mig__auth_transcript tr;
		transcript_of(t, c, t->engine_id, h.advertised_url, &tr);
		if (mig__auth_mac(t->secret, t->cfg.secret_len, 'C', &tr, mac) != 0) {
			refuse(c, MIG_ESYSTEM, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "hmac failed");
			return;
		}
		h.mac.data = mac;
		h.mac.len = sizeof(mac);
	}
	Migwire__Frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_HELLO;
	f.hello = &h;
	send_frame(t, c, &f);
}

static void server_on_hello(mig__transport *t, struct conn *c, const Migwire__Hello *h)
{
	if (h->protocol_version != MIG_PROTOCOL_VERSION) {
		char why[120];
		snprintf(why, sizeof(why), "protocol version %u not supported (want %u)",
			 h->protocol_version, MIG_PROTOCOL_VERSION);
		refuse(c, MIG_EVERSION, LWS_CLOSE_STATUS_POLICY_VIOLATION, why);
		return;
	}
	if ((int)h->channel != c->channel) {
		refuse(c, MIG_EPROTO, LWS_CLOSE_STATUS_POLICY_VIOLATION,
		       "hello names another channel than the subprotocol");
		return;
	}
	memcpy(c->client_nonce, h->client_nonce.data, sizeof(c->client_nonce));
	const char *peer_id = h->engine_id ? h->engine_id : "";
	const char *peer_url = h->advertised_url ? h->advertised_url : "";
	mig__auth_transcript tr;
	transcript_of(t, c, peer_id, peer_url, &tr);
	if (handshake_mac(t, c)) {
		if (!mig__auth_verify(t->secret, t->cfg.secret_len, 'C', &tr, h->mac.data,
				      h->mac.len)) {
			tlog(t, MIG_LOG_WARN, "%s: refused %s connection %llu: authentication failed",
			     t->name, protocol_names[c->channel], (unsigned long long)c->id);
			refuse(c, MIG_EAUTH, LWS_CLOSE_STATUS_POLICY_VIOLATION,
			       "authentication failed");
			return;
		}
	}
	uint8_t mac[MIG__AUTH_MAC_LEN];
	Migwire__Welcome w = MIGWIRE__WELCOME__INIT;
	if (handshake_mac(t, c)) {
		if (mig__auth_mac(t->secret, t->cfg.secret_len, 'S', &tr, mac) != 0) {
			refuse(c, MIG_ESYSTEM, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "hmac failed");
			return;
		}
		w.mac.data = mac;
		w.mac.len = sizeof(mac);
	}
	c->peer_engine_id = mig__strdup(peer_id);
	c->peer_url = mig__strdup(peer_url);
	if (!c->peer_engine_id || !c->peer_url) {
		refuse(c, MIG_ENOMEM, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
		return;
	}
	Migwire__Frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_WELCOME;
	f.welcome = &w;
	send_frame(t, c, &f);
	c->state = CONN_UP;
	/* A session client is not authenticated until its Attach arrives: the
	 * handshake deadline keeps running until then. */
	if (c->channel != MIGWIRE__CHANNEL__CHANNEL_SESSION)
		lws_set_timeout(c->wsi, NO_PENDING_TIMEOUT, 0);
	post_up(t, c);
}

static void client_on_welcome(mig__transport *t, struct conn *c, const Migwire__Welcome *w)
{
	if (handshake_mac(t, c)) {
		const char *adv =
			c->channel == MIGWIRE__CHANNEL__CHANNEL_PEER ? t->advertised_url : "";
		mig__auth_transcript tr;
		transcript_of(t, c, t->engine_id, adv ? adv : "", &tr);
		if (!mig__auth_verify(t->secret, t->cfg.secret_len, 'S', &tr, w->mac.data,
				      w->mac.len)) {
			refuse(c, MIG_EAUTH, LWS_CLOSE_STATUS_POLICY_VIOLATION,
			       "server failed to prove the cluster secret");
			return;
		}
	}
	c->state = CONN_UP;
	lws_set_timeout(c->wsi, NO_PENDING_TIMEOUT, 0);
	post_up(t, c);
	if (c->tx_head)
		lws_callback_on_writable(c->wsi);
}

/* A complete message arrived on `c`: decode, then either run the handshake
 * or hand the frame to the owner. */
static void on_message(mig__transport *t, struct conn *c)
{
	mig__frame *f = NULL;
	char why[160];
	size_t len = c->rx_len;
	int rc = mig__wire_decode_pool(c->rx, len, t->cfg.max_frame, t->rx_pool, &f, why,
				       sizeof(why));
	c->rx_len = 0;
	if (rc != 0) {
		tlog(t, MIG_LOG_WARN, "%s: connection %llu: %s", t->name,
		     (unsigned long long)c->id, why);
		refuse(c, rc, rc == MIG_ETOOBIG ? LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE
						: LWS_CLOSE_STATUS_INVALID_PAYLOAD,
		       why);
		return;
	}
	if (c->state == CONN_HANDSHAKE) {
		if (c->inbound && f->body_case == MIGWIRE__FRAME__BODY_HELLO)
			server_on_hello(t, c, f->hello);
		else if (!c->inbound && f->body_case == MIGWIRE__FRAME__BODY_CHALLENGE &&
			 !c->challenged)
			client_on_challenge(t, c, f->challenge);
		else if (!c->inbound && f->body_case == MIGWIRE__FRAME__BODY_WELCOME &&
			 c->challenged)
			client_on_welcome(t, c, f->welcome);
		else
			refuse(c, MIG_EAUTH, LWS_CLOSE_STATUS_POLICY_VIOLATION,
			       "authentication required before any other frame");
		mig__wire_free(f);
		return;
	}
	if (c->state != CONN_UP || c->close_requested) {
		mig__wire_free(f);
		return;
	}
	switch (f->body_case) {
	case MIGWIRE__FRAME__BODY_CHALLENGE:
	case MIGWIRE__FRAME__BODY_HELLO:
	case MIGWIRE__FRAME__BODY_WELCOME:
		mig__wire_free(f);
		refuse(c, MIG_EPROTO, LWS_CLOSE_STATUS_POLICY_VIOLATION,
		       "handshake frame after authentication");
		return;
	default:
		break;
	}
	if (c->inbound && c->channel == MIGWIRE__CHANNEL__CHANNEL_SESSION && !c->attach_seen) {
		/* The session channel's authentication: only a token gets in. */
		if (f->body_case != MIGWIRE__FRAME__BODY_ATTACH) {
			mig__wire_free(f);
			refuse(c, MIG_EAUTH, LWS_CLOSE_STATUS_POLICY_VIOLATION,
			       "attach required before any other frame");
			return;
		}
		c->attach_seen = true;
		lws_set_timeout(c->wsi, NO_PENDING_TIMEOUT, 0);
	}
	mig__tev *ev = mig__calloc(1, sizeof(*ev));
	if (!ev) {
		mig__wire_free(f);
		refuse(c, MIG_ENOMEM, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
		return;
	}
	ev->type = MIG__TEV_FRAME;
	ev->conn = c->id;
	ev->channel = c->channel;
	ev->inbound = c->inbound;
	ev->frame = f;
	ev->frame_bytes = len;
	post(t, ev);
}

/* Appends a received piece to the message being reassembled, enforcing the
 * cap before growing the buffer. Returns false if the connection must close. */
static bool on_receive(mig__transport *t, struct conn *c, struct lws *wsi, const void *in,
		       size_t len)
{
	if (c->close_requested)
		return true;
	if (lws_is_first_fragment(wsi)) {
		c->rx_len = 0;
		c->rx_discard = !lws_frame_is_binary(wsi);
		if (c->rx_discard) {
			refuse(c, MIG_EPROTO, LWS_CLOSE_STATUS_UNACCEPTABLE_OPCODE,
			       "text messages are not part of the protocol");
			return true;
		}
	}
	if (c->rx_discard)
		return true;
	size_t max = t->cfg.max_frame;
	size_t remaining = lws_remaining_packet_payload(wsi);
	if (len > max || c->rx_len > max - len || remaining > max - c->rx_len - len) {
		char why[120];
		snprintf(why, sizeof(why), "message larger than the %zu-byte cap", max);
		tlog(t, MIG_LOG_WARN, "%s: connection %llu: %s", t->name,
		     (unsigned long long)c->id, why);
		refuse(c, MIG_ETOOBIG, LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE, why);
		return true;
	}
	size_t need = c->rx_len + len + remaining;
	if (need > c->rx_cap) {
		size_t cap = c->rx_cap ? c->rx_cap : 4096;
		while (cap < need)
			cap *= 2;
		if (cap > max)
			cap = max;
		uint8_t *p = mig__realloc(c->rx, cap);
		if (!p) {
			refuse(c, MIG_ENOMEM, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION,
			       "out of memory");
			return true;
		}
		c->rx = p;
		c->rx_cap = cap;
	}
	memcpy(c->rx + c->rx_len, in, len);
	c->rx_len += len;
	if (lws_is_final_fragment(wsi) && remaining == 0)
		on_message(t, c);
	return true;
}

/* A client must mask what it sends (RFC 6455, 5.3), and libwebsockets 4.1
 * masks with a random key one byte at a time: on loopback that loop cost
 * more than the whole raw copy of a file transfer. On the peer channel (one
 * engine to another, authenticated by the shared secret) this side writes
 * the frame header itself with a masking key of zero, so the payload goes
 * out as it is; libwebsockets' server side sees the zero key and skips the
 * unmasking. The masking key exists to keep script in a browser from
 * choosing the bytes an intermediary sees; no browser speaks this channel.
 * Writes the header of one frame (a binary or continuation fragment of
 * `n` payload bytes, masked, key 0) just before `payload`, into the bytes
 * the message's headroom or its already written part provides. Returns
 * the header's length (at most 14). */
static size_t zero_key_header(uint8_t *payload, size_t n, bool first, bool last)
{
	uint8_t h[14];
	size_t len = 0;
	h[len++] = (uint8_t)((last ? 0x80 : 0) | (first ? 0x2 : 0x0));
	if (n < 126) {
		h[len++] = (uint8_t)(0x80 | n);
	} else if (n <= 0xffff) {
		h[len++] = 0x80 | 126;
		h[len++] = (uint8_t)(n >> 8);
		h[len++] = (uint8_t)n;
	} else {
		h[len++] = 0x80 | 127;
		for (int i = 7; i >= 0; i--)
			h[len++] = (uint8_t)((uint64_t)n >> (8 * i));
	}
	memset(h + len, 0, 4);
	len += 4;
	memcpy(payload - len, h, len);
	return len;
}

/* Writes one fragment of the head message; returns -1 to close. */
static int on_writeable(mig__transport *t, struct conn *c, struct lws *wsi)
{
	if (c->close_sent)
		return 0;
	if (c->close_requested) {
		lws_close_reason(wsi, (enum lws_close_status)c->close_status,
				 (unsigned char *)c->close_reason, strlen(c->close_reason));
		c->close_sent = true;
		return -1;
	}
	if (c->state == CONN_CONNECTING)
		return 0;
	/* Until authenticated only handshake frames go out; the owner's
	 * messages wait behind them. */
	bool hs = c->hs_head != NULL;
	mig__msg *m = hs ? c->hs_head : (c->state == CONN_UP ? c->tx_head : NULL);
	if (!m)
		return 0;
	size_t left = m->len - m->sent;
	size_t n = left > FRAGMENT_BYTES ? FRAGMENT_BYTES : left;
	bool first = m->sent == 0;
	bool last = n == left;
	uint8_t *p = mig__msg_payload(m) + m->sent;
	int w;
	if (!c->inbound && c->channel == MIGWIRE__CHANNEL__CHANNEL_PEER) {
		/* Engine to engine as the WebSocket client: the frame with a zero
		 * masking key (docs/PROTOCOL.md, "Framing", at the top). */
		size_t h = zero_key_header(p, n, first, last);
		w = lws_write(wsi, p - h, h + n, LWS_WRITE_RAW);
		w = w < (int)h ? -1 : w - (int)h;
	} else {
		int flags = lws_write_ws_flags(LWS_WRITE_BINARY, first, last);
		w = lws_write(wsi, p, n, (enum lws_write_protocol)flags);
	}
	if (w < (int)n) {
		set_down(c, MIG_EIO, "write failed");
		return -1;
	}
	m->sent += n;
	if (last) {
		mig__msg **head = hs ? &c->hs_head : &c->tx_head;
		mig__msg **tail = hs ? &c->hs_tail : &c->tx_tail;
		*head = m->next;
		if (!*head)
			*tail = NULL;
		bool close_after = m->close_after;
		mig__msg_free(m);
		if (close_after) {
			set_down(c, MIG_ECLOSED, "closed by this side after sending");
			lws_close_reason(wsi, LWS_CLOSE_STATUS_NORMAL, (unsigned char *)"bye", 3);
			/* The link is gone for the owner: nothing more in or out. */
			c->close_requested = c->close_sent = true;
			return -1;
		}
	}
	if (c->hs_head || (c->state == CONN_UP && c->tx_head))
		lws_callback_on_writable(wsi);
	return 0;
}

/* ------------------------------------------------------------------ commands */

static void queue_cmd(mig__transport *t, struct cmd *cmd)
{
	bool wake;
	pthread_mutex_lock(&t->lock);
	wake = !t->stopping;
	if (wake) {
		cmd->next = NULL;
		if (t->cmd_tail)
			t->cmd_tail->next = cmd;
		else
			t->cmd_head = cmd;
		t->cmd_tail = cmd;
		/* Waking under the lock: free() takes the same lock to set
		 * `stopping` before the context is destroyed, so the context is
		 * alive here. */
		lws_cancel_service(t->ctx);
	}
	pthread_mutex_unlock(&t->lock);
	if (!wake) {
		if (cmd->conn)
			conn_free(cmd->conn);
		mig__msg_free(cmd->msg);
		mig__free(cmd);
	}
}

static const char *ssl_error(void);
static int client_vhost_new(mig__transport *t, struct conn *c);

static void do_connect(mig__transport *t, struct conn *c)
{
	bool tls;
	char host[256], path[256];
	int port;
	conn_link(t, c);
	if (mig__url_parse(c->url, &tls, host, sizeof(host), &port, path, sizeof(path)) != 0) {
		set_down(c, MIG_EINVAL, "invalid URL");
		conn_gone(t, c);
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
	ci.protocol = protocol_names[c->channel];
	if (tls && !t->client_ssl_ctx && client_vhost_new(t, c) != 0) {
		conn_gone(t, c);
		return;
	}
	if (tls && !t->tls_ca_file && !t->system_ca_loaded) {
		/* No connection has used the client SSL_CTX yet, so its store
		 * can still be filled here. */
		if (SSL_CTX_set_default_verify_paths(t->client_ssl_ctx) != 1) {
			set_down(c, MIG_ETLS, "cannot load the system CA store: %s", ssl_error());
			conn_gone(t, c);
			return;
		}
		t->system_ca_loaded = true;
	}
	ci.ssl_connection = tls ? LCCSCF_USE_SSL : 0;
	ci.vhost = tls ? t->client_vhost : NULL; /* NULL: the default vhost */
	ci.opaque_user_data = c;
	ci.retry_and_idle_policy = &keepalive_policy;
	ci.pwsi = &c->wsi;
	c->tls = tls;
	if (!lws_client_connect_via_info(&ci)) {
		/* lws may or may not have called CONNECTION_ERROR already. */
		set_down(c, MIG_ECONNECT, "cannot connect to %s", c->url);
		conn_gone(t, c);
	}
}

static void drain_cmds(mig__transport *t)
{
	pthread_mutex_lock(&t->lock);
	struct cmd *list = t->cmd_head;
	t->cmd_head = t->cmd_tail = NULL;
	pthread_mutex_unlock(&t->lock);

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
				enqueue_tx(c, cmd->msg);
				cmd->msg = NULL;
			}
			break;
		case CMD_SEND_RAW:
			c = conn_find(t, cmd->conn_id);
			if (c && c->state != CONN_DEAD && !c->close_requested) {
				push_msg(&c->hs_head, &c->hs_tail, cmd->msg);
				cmd->msg = NULL;
				if (c->wsi && c->state != CONN_CONNECTING)
					lws_callback_on_writable(c->wsi);
			}
			break;
		case CMD_CLOSE:
			c = conn_find(t, cmd->conn_id);
			if (c && c->state != CONN_DEAD) {
				set_down(c, MIG_ECLOSED, "closed by this side: %s", cmd->reason);
				if (c->wsi)
					request_close(c, cmd->status, cmd->reason);
				else
					conn_gone(t, c);
			}
			break;
		}
		mig__msg_free(cmd->msg);
		mig__free(cmd);
	}
}

/* ------------------------------------------------------------------ callback */

/* A server that refuses our handshake (no client certificate, or one it does
 * not trust) says why in a TLS alert, which lws drops: it reports only "read
 * failed" or "Closed before conn". An info callback on the client SSL_CTX
 * keeps the alert's text, and whether the handshake completed, for the DOWN
 * reason. (Not lws's LWS_CALLBACK_SSL_INFO: lws 4.1 finds its context through
 * that per-context ex-data index, and crashed in wsi_from_fd() here.) */
static int ssl_ctx_index = -1;
static pthread_once_t ssl_ctx_index_once = PTHREAD_ONCE_INIT;

static void ssl_ctx_index_init(void)
{
	ssl_ctx_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

static const char *alert_text(int ret)
{
	/* OpenSSL 3.0 names no TLS 1.3 alert: "unknown" for 116. */
	if ((ret & 0xff) == 116)
		return "certificate required";
	return SSL_alert_desc_string_long(ret);
}

static void client_ssl_info(const SSL *ssl, int where, int ret)
{
	bool alert = (where & SSL_CB_ALERT) && (where & SSL_CB_READ) &&
		     (ret >> 8) == SSL3_AL_FATAL;
	bool done = where & SSL_CB_HANDSHAKE_DONE;
	if (!alert && !done)
		return;
	mig__transport *t = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), ssl_ctx_index);
	if (!t)
		return;
	/* Runs on the I/O thread, inside lws_service(): conns is ours. */
	for (struct conn *c = t->conns; c; c = c->next) {
		if (c->inbound || !c->wsi || lws_get_ssl(c->wsi) != ssl)
			continue;
		if (done)
			c->tls_handshake_done = true;
		else if (!c->tls_detail[0])
			snprintf(c->tls_detail, sizeof(c->tls_detail),
				 "TLS: the server refused the handshake (alert %d: %s)",
				 ret & 0xff, alert_text(ret));
		break;
	}
}

static const char *ssl_error(void)
{
	static __thread char buf[160];
	unsigned long e = ERR_peek_last_error();
	ERR_error_string_n(e, buf, sizeof(buf));
	ERR_clear_error();
	return e ? buf : "unknown error";
}

/* The SSL_CTX for outbound wss:// connections: trusts tls_ca_file only (the
 * OS store without one), presents tls_cert_file when set. lws still sets
 * host name verification and its verify callback on each connection. */
static SSL_CTX *client_ssl_ctx_new(mig__transport *t, char *err, size_t err_len)
{
	pthread_once(&ssl_ctx_index_once, ssl_ctx_index_init);
	const char *what = "cannot create the client TLS context", *file = "";
	SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
	if (!ctx || ssl_ctx_index < 0 || !SSL_CTX_set_ex_data(ctx, ssl_ctx_index, t) ||
	    !SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION))
		goto fail;
	SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION);
	SSL_CTX_set_info_callback(ctx, client_ssl_info);
	/* The system store (no tls_ca_file) is loaded later, by do_connect(). */
	what = "cannot load the TLS CA file ";
	file = t->tls_ca_file ? t->tls_ca_file : "";
	if (t->tls_ca_file && SSL_CTX_load_verify_locations(ctx, t->tls_ca_file, NULL) != 1)
		goto fail;
	if (t->tls_cert_file && t->tls_key_file) {
		what = "cannot load the TLS certificate ";
		file = t->tls_cert_file;
		if (SSL_CTX_use_certificate_chain_file(ctx, t->tls_cert_file) != 1)
			goto fail;
		what = "cannot load the TLS key ";
		file = t->tls_key_file;
		if (SSL_CTX_use_PrivateKey_file(ctx, t->tls_key_file, SSL_FILETYPE_PEM) != 1 ||
		    SSL_CTX_check_private_key(ctx) != 1)
			goto fail;
	}
	return ctx;
fail:
	if (err)
		snprintf(err, err_len, "%s%s: %s", what, file, ssl_error());
	SSL_CTX_free(ctx);
	return NULL;
}

/* An engine started without tls_cert_file and tls_ca_file has no client
 * SSL_CTX, and libwebsockets has not initialised OpenSSL for it (no
 * LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT on its context): about 2 MiB of
 * libcrypto pages and heap that an engine whose peers are all ws:// never
 * needs (docs/BENCHMARKS.md, "Cost to the application"). Its first wss://
 * connect makes both, here on the I/O thread: the SSL_CTX (which
 * initialises OpenSSL) and a vhost that does not listen and holds it (lws
 * 4.1 hands a vhost a provided client SSL_CTX only at its creation, and
 * only with that option). Returns 0, or -1 with `c` set down (MIG_ETLS);
 * the next wss:// connect tries again. */
static int client_vhost_new(mig__transport *t, struct conn *c)
{
	char err[200];
	t->client_ssl_ctx = client_ssl_ctx_new(t, err, sizeof(err));
	if (!t->client_ssl_ctx) {
		set_down(c, MIG_ETLS, "%s", err);
		return -1;
	}
	struct lws_context_creation_info info;
	memset(&info, 0, sizeof(info));
	info.port = CONTEXT_PORT_NO_LISTEN;
	info.vhost_name = "wss-client";
	info.protocols = t->protocols;
	info.retry_and_idle_policy = &keepalive_policy;
	info.options = LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
	info.provided_client_ssl_ctx = t->client_ssl_ctx;
	t->client_vhost = lws_create_vhost(t->ctx, &info);
	if (!t->client_vhost) {
		SSL_CTX_free(t->client_ssl_ctx);
		t->client_ssl_ctx = NULL;
		set_down(c, MIG_ETLS, "cannot set up TLS for outbound connections");
		return -1;
	}
	return 0;
}

/* Why an outbound connection failed, for CLIENT_CONNECTION_ERROR. */
static const char *connect_error(mig__transport *t, struct conn *c, const char *in, char *buf,
				 size_t len)
{
	if (c->tls_detail[0])
		return c->tls_detail;
	if (!in)
		in = "connection failed";
	if (!c->tls || !c->tls_handshake_done)
		return in;
	/* TLS 1.3: a server refusing our certificate may close before the
	 * alert is read. */
	snprintf(buf, len, "%s: TLS: the server closed the connection after the handshake (%s)",
		 in, t->tls_cert_file ? "did it refuse this side's client certificate?"
				      : "does it require a client certificate?");
	return buf;
}

/* ------------------------------------------------------------------ HTTP */

/* Plain HTTP on the listening port (protocols[0], whose per-session data
 * this is): GET /metrics answers the owner's rendering, anything else 404.
 * One request at a time per connection; the body goes out in pieces. */
struct http_reply {
	char *body;
	size_t len;
	size_t sent;
};

#define HTTP_PIECE_BYTES 4096u

static void http_reply_free(struct http_reply *r)
{
	if (!r)
		return;
	mig__free(r->body);
	r->body = NULL;
	r->len = r->sent = 0;
}

/* Ends the transaction: keep-alive goes on, else the connection closes. */
static int http_done(struct lws *wsi)
{
	return lws_http_transaction_completed(wsi) ? -1 : 0;
}

static int http_status(struct lws *wsi, unsigned status)
{
	if (lws_return_http_status(wsi, status, NULL))
		return -1;
	return http_done(wsi);
}

static int on_http(mig__transport *t, struct lws *wsi, struct http_reply *r, const char *path)
{
	if (!r)
		return -1;
	http_reply_free(r);
	if (!t->cfg.render_metrics || !path || strcmp(path, "/metrics") != 0)
		return http_status(wsi, HTTP_STATUS_NOT_FOUND);
	if (lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) <= 0)
		return http_status(wsi, HTTP_STATUS_METHOD_NOT_ALLOWED);
	size_t len = 0;
	char *body = t->cfg.render_metrics(t->cfg.metrics_ctx, &len);
	if (!body)
		return http_status(wsi, HTTP_STATUS_INTERNAL_SERVER_ERROR);
	uint8_t head[LWS_PRE + 512];
	uint8_t *start = head + LWS_PRE, *p = start, *end = head + sizeof(head) - 1;
	if (lws_add_http_common_headers(wsi, HTTP_STATUS_OK, "text/plain; version=0.0.4; charset=utf-8",
					len, &p, end) ||
	    lws_finalize_write_http_header(wsi, start, &p, end)) {
		mig__free(body);
		return -1;
	}
	r->body = body;
	r->len = len;
	r->sent = 0;
	lws_callback_on_writable(wsi);
	return 0;
}

static int on_http_writeable(struct lws *wsi, struct http_reply *r)
{
	if (!r || !r->body)
		return 0;
	uint8_t piece[LWS_PRE + HTTP_PIECE_BYTES];
	size_t n = r->len - r->sent;
	if (n > HTTP_PIECE_BYTES)
		n = HTTP_PIECE_BYTES;
	bool last = r->sent + n == r->len;
	memcpy(piece + LWS_PRE, r->body + r->sent, n);
	if (lws_write(wsi, piece + LWS_PRE, n, last ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP) !=
	    (int)n) {
		http_reply_free(r);
		return -1;
	}
	r->sent += n;
	if (!last) {
		lws_callback_on_writable(wsi);
		return 0;
	}
	http_reply_free(r);
	return http_done(wsi);
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
		    size_t len)
{
	struct lws_context *ctx = lws_get_context(wsi);
	mig__transport *t = ctx ? lws_context_user(ctx) : NULL;
	struct conn *c = lws_get_opaque_user_data(wsi);
	const struct lws_protocols *proto = lws_get_protocol(wsi);
	int channel = proto ? (int)proto->id : 0;

	switch (reason) {
	case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
		if (t)
			drain_cmds(t);
		return 0;

	case LWS_CALLBACK_ESTABLISHED: {
		if (channel == 0 || !(t->cfg.accept_channels & (1u << channel))) {
			lws_close_reason(wsi, LWS_CLOSE_STATUS_POLICY_VIOLATION,
					 (unsigned char *)"unknown or missing subprotocol", 30);
			return -1;
		}
		c = mig__calloc(1, sizeof(*c));
		if (!c || !(c->down_ev = mig__calloc(1, sizeof(*c->down_ev)))) {
			mig__free(c);
			return -1;
		}
		pthread_mutex_lock(&t->lock);
		c->id = ++t->next_id;
		pthread_mutex_unlock(&t->lock);
		c->wsi = wsi;
		c->inbound = true;
		c->channel = channel;
		c->state = CONN_HANDSHAKE;
		conn_link(t, c);
		lws_set_opaque_user_data(wsi, c);
		lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, HANDSHAKE_TIMEOUT_S);
		server_send_challenge(t, c);
		return 0;
	}

	case LWS_CALLBACK_CLIENT_ESTABLISHED:
		if (!c)
			return -1;
		c->state = CONN_HANDSHAKE;
		lws_set_timeout(wsi, PENDING_TIMEOUT_USER_OK, HANDSHAKE_TIMEOUT_S);
		if (c->close_requested || c->hs_head)
			lws_callback_on_writable(wsi);
		return 0;

	case LWS_CALLBACK_RECEIVE:
	case LWS_CALLBACK_CLIENT_RECEIVE:
		if (!c)
			return -1;
		on_receive(t, c, wsi, in, len);
		return 0;

	case LWS_CALLBACK_SERVER_WRITEABLE:
	case LWS_CALLBACK_CLIENT_WRITEABLE:
		if (!c)
			return -1;
		return on_writeable(t, c, wsi);

	case LWS_CALLBACK_WS_PEER_INITIATED_CLOSE:
		if (c && len >= 2) {
			const unsigned char *b = in;
			int status = (b[0] << 8) | b[1];
			int err = MIG_ECLOSED;
			if (status == LWS_CLOSE_STATUS_POLICY_VIOLATION)
				err = MIG_EAUTH;
			else if (status == LWS_CLOSE_STATUS_MESSAGE_TOO_LARGE)
				err = MIG_ETOOBIG;
			else if (status == LWS_CLOSE_STATUS_INVALID_PAYLOAD)
				err = MIG_EPROTO;
			set_down(c, err, "closed by peer (%d): %.*s", status,
				 (int)(len - 2 > 200 ? 200 : len - 2), (const char *)b + 2);
		}
		return 0;

	case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
		if (c) {
			char why[MIG__REASON_MAX];
			set_down(c, MIG_ECONNECT, "cannot connect to %s: %s", c->url,
				 connect_error(t, c, in, why, sizeof(why)));
			conn_gone(t, c);
		}
		return 0;

	case LWS_CALLBACK_OPENSSL_PERFORM_SERVER_CERT_VERIFICATION:
		/* Once per certificate of the server's chain; user is the
		 * X509_STORE_CTX, len is preverify_ok. Only note why it failed:
		 * returning 0 keeps OpenSSL's verdict. */
		if (c && !len && !c->tls_detail[0]) {
			X509_STORE_CTX *xs = user;
			int err = X509_STORE_CTX_get_error(xs);
			if (err != X509_V_OK)
				snprintf(c->tls_detail, sizeof(c->tls_detail),
					 "TLS: the server's certificate failed verification: %s "
					 "(depth %d)",
					 X509_verify_cert_error_string(err),
					 X509_STORE_CTX_get_error_depth(xs));
		}
		return 0;

	case LWS_CALLBACK_OPENSSL_PERFORM_CLIENT_CERT_VERIFICATION:
		/* Server with tls_require_client_cert, once per certificate of
		 * the client's chain; user is the X509_STORE_CTX, len is
		 * preverify_ok. lws accepts the certificate whenever this
		 * returns 0, whatever OpenSSL found: refuse what failed. */
		if (!len) {
			X509_STORE_CTX *xs = user;
			if (t)
				tlog(t, MIG_LOG_WARN,
				     "%s: refused a client certificate: %s (depth %d)", t->name,
				     X509_verify_cert_error_string(X509_STORE_CTX_get_error(xs)),
				     X509_STORE_CTX_get_error_depth(xs));
			return 1;
		}
		return 0;

	case LWS_CALLBACK_CLOSED:
	case LWS_CALLBACK_CLIENT_CLOSED:
		if (c)
			conn_gone(t, c);
		return 0;

	case LWS_CALLBACK_WSI_DESTROY:
		if (c && c->state != CONN_DEAD)
			conn_gone(t, c);
		if (channel == 0)
			http_reply_free(user); /* an HTTP reply cut short */
		return 0;

	case LWS_CALLBACK_HTTP:
		return t ? on_http(t, wsi, user, in) : -1;

	case LWS_CALLBACK_HTTP_WRITEABLE:
		return on_http_writeable(wsi, user);

	case LWS_CALLBACK_CLOSED_HTTP:
	case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
		if (channel == 0)
			http_reply_free(user);
		break;

	default:
		break;
	}
	return lws_callback_http_dummy(wsi, reason, user, in, len);
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
		pthread_mutex_lock(&t->lock);
		bool stop = t->stopping;
		pthread_mutex_unlock(&t->lock);
		if (stop)
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
	if (pthread_mutex_init(&t->lock, NULL) != 0) {
		mig__free(t);
		return MIG_ESYSTEM;
	}
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

	/* protocols[0] catches plain HTTP (GET /metrics, on_http) and
	 * WebSockets without a known subprotocol (closed at ESTABLISHED). */
	t->protocols[0] = (struct lws_protocols){"http", callback, sizeof(struct http_reply), 0, 0,
						 NULL, 0};
	for (int ch = 1; ch <= MIGWIRE__CHANNEL__CHANNEL_ANNOUNCE; ch++)
		t->protocols[ch] = (struct lws_protocols){
			protocol_names[ch], callback, 0, FRAGMENT_BYTES, (unsigned)ch, NULL,
			FRAGMENT_BYTES};
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
	 * up to 64 KiB resident per engine (256 KiB measured no faster,
	 * docs/BENCHMARKS.md "File state"). */
	info.pt_serv_buf_size = READ_BYTES;
	info.retry_and_idle_policy = &keepalive_policy;
	if (t->tls_cert_file || t->tls_ca_file)
		/* TLS configured: OpenSSL now, and the files checked at start
		 * (MIG_ETLS). Without, see client_vhost_new(). */
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
		t->client_ssl_ctx = client_ssl_ctx_new(t, err, err_len);
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
		pthread_mutex_lock(&t->lock);
		t->stopping = true;
		lws_cancel_service(t->ctx);
		pthread_mutex_unlock(&t->lock);
		if (t->thread_started)
			pthread_join(t->thread, NULL);
		t->destroying = true;
		lws_context_destroy(t->ctx);
		t->ctx = NULL;
	}
	SSL_CTX_free(t->client_ssl_ctx);
	struct cmd *cmd = t->cmd_head;
	while (cmd) {
		struct cmd *next = cmd->next;
		if (cmd->conn)
			conn_free(cmd->conn);
		mig__msg_free(cmd->msg);
		mig__free(cmd);
		cmd = next;
	}
	struct conn *c = t->conns;
	while (c) {
		struct conn *next = c->next;
		conn_free(c);
		c = next;
	}
	pthread_mutex_destroy(&t->lock);
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
	pthread_mutex_lock(&t->lock);
	c->id = ++t->next_id;
	pthread_mutex_unlock(&t->lock);
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
