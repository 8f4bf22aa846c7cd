/* The transport's WebSocket side (see transport.c for the whole and the
 * ownership rules), all on the I/O thread: the libwebsockets callback, the
 * connection states and the DOWN/UP events, the authentication handshake
 * (Challenge, Hello, Welcome; the session channel's Attach), reassembly of
 * received messages (decoded into the receive pool) and the framing of sent
 * ones, with the zero masking key of the peer channel's client side. The
 * callback hands TLS certificate checks to transport_tls.c and plain HTTP to
 * transport_http.c. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "transport_int.h"

_Static_assert(LWS_PRE <= MIG__MSG_HEADROOM, "MIG__MSG_HEADROOM must cover LWS_PRE");
_Static_assert(14 <= MIG__MSG_HEADROOM, "MIG__MSG_HEADROOM must cover a frame header");
_Static_assert(MIG__NONCE_LEN == MIG__AUTH_NONCE_LEN, "one nonce length");
_Static_assert(MIG__MAC_LEN == MIG__AUTH_MAC_LEN, "one MAC length");

#define HANDSHAKE_TIMEOUT_S 10

/* ------------------------------------------------------------------ events */

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
	mig__post(t, ev);
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
	mig__post(t, ev);
}

void mig__set_down(struct conn *c, int error, const char *fmt, ...)
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

void mig__conn_gone(mig__transport *t, struct conn *c)
{
	if (!c->inbound && c->state == CONN_CONNECTING) {
		/* lws may drop a client that never connected without
		 * CLIENT_CONNECTION_ERROR (seen after a TLS refusal). */
		char why[MIG__REASON_MAX];
		mig__set_down(c, MIG_ECONNECT, "cannot connect to %s: %s", c->url,
			      mig__connect_error(t, c, "closed before the WebSocket upgrade", why,
						 sizeof(why)));
	} else if (c->tls_detail[0]) {
		mig__set_down(c, MIG_ECLOSED, "%s", c->tls_detail);
	}
	post_down(t, c);
	c->state = CONN_DEAD;
	if (c->wsi)
		lws_set_opaque_user_data(c->wsi, NULL);
	c->wsi = NULL;
}

void mig__push_msg(mig__msg **head, mig__msg **tail, mig__msg *m)
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
void mig__enqueue_tx(struct conn *c, mig__msg *m)
{
	mig__push_msg(&c->tx_head, &c->tx_tail, m);
	if (c->wsi && c->state == CONN_UP)
		lws_callback_on_writable(c->wsi);
}

void mig__request_close(struct conn *c, int status, const char *reason)
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
		mig__set_down(c, MIG_ENOMEM, "out of memory encoding %s", mig__wire_body_name(f));
		mig__request_close(c, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "out of memory");
		return;
	}
	mig__push_msg(&c->hs_head, &c->hs_tail, m);
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
		mig__set_down(c, MIG_ESYSTEM, "no randomness for the challenge");
		mig__request_close(c, LWS_CLOSE_STATUS_UNEXPECTED_CONDITION, "internal error");
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
	mig__set_down(c, error, "%s", reason);
	mig__request_close(c, status, reason);
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
			mig__tlog(t, MIG_LOG_WARN,
				  "%s: refused %s connection %llu: authentication failed", t->name,
				  mig__protocol_names[c->channel], (unsigned long long)c->id);
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
		mig__tlog(t, MIG_LOG_WARN, "%s: connection %llu: %s", t->name,
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
	mig__post(t, ev);
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
		mig__tlog(t, MIG_LOG_WARN, "%s: connection %llu: %s", t->name,
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
		mig__set_down(c, MIG_EIO, "write failed");
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
			mig__set_down(c, MIG_ECLOSED, "closed by this side after sending");
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

/* ------------------------------------------------------------------ callback */

int mig__callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
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
			mig__drain_cmds(t);
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
		c->id = atomic_fetch_add(&t->next_id, 1) + 1;
		c->wsi = wsi;
		c->inbound = true;
		c->channel = channel;
		c->state = CONN_HANDSHAKE;
		mig__conn_link(t, c);
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
			mig__set_down(c, err, "closed by peer (%d): %.*s", status,
				      (int)(len - 2 > 200 ? 200 : len - 2), (const char *)b + 2);
		}
		return 0;

	case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
		if (c) {
			char why[MIG__REASON_MAX];
			mig__set_down(c, MIG_ECONNECT, "cannot connect to %s: %s", c->url,
				      mig__connect_error(t, c, in, why, sizeof(why)));
			mig__conn_gone(t, c);
		}
		return 0;

	case LWS_CALLBACK_OPENSSL_PERFORM_SERVER_CERT_VERIFICATION:
		return mig__tls_server_cert(c, user, len);

	case LWS_CALLBACK_OPENSSL_PERFORM_CLIENT_CERT_VERIFICATION:
		return mig__tls_client_cert(t, user, len);

	case LWS_CALLBACK_CLOSED:
	case LWS_CALLBACK_CLIENT_CLOSED:
		if (c)
			mig__conn_gone(t, c);
		return 0;

	case LWS_CALLBACK_WSI_DESTROY:
		if (c && c->state != CONN_DEAD)
			mig__conn_gone(t, c);
		if (channel == 0)
			mig__http_reply_free(user); /* an HTTP reply cut short */
		return 0;

	case LWS_CALLBACK_HTTP:
		return t ? mig__on_http(t, wsi, user, in) : -1;

	case LWS_CALLBACK_HTTP_WRITEABLE:
		return mig__on_http_writeable(wsi, user);

	case LWS_CALLBACK_CLOSED_HTTP:
	case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
		if (channel == 0)
			mig__http_reply_free(user);
		break;

	default:
		break;
	}
	return lws_callback_http_dummy(wsi, reason, user, in, len);
}
