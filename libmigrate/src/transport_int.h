/* Private to the transport's files: transport.c (lifecycle, the command
 * queue, the events to the owner), transport_ws.c (the WebSocket callbacks,
 * the handshake and the framing), transport_tls.c (OpenSSL: the client
 * SSL_CTX, its vhost, certificate verification) and transport_http.c (plain
 * HTTP on the listening port). These are the only files that include
 * libwebsockets.h. Everything here runs on the I/O thread unless it says
 * otherwise (see the ownership rules at the top of transport.c). */
#ifndef MIG_TRANSPORT_INT_H
#define MIG_TRANSPORT_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <libwebsockets.h>
#include <openssl/ssl.h>

#include "auth.h"
#include "transport.h"

/* Largest piece handed to one lws_write(): matches tx_packet_size so lws
 * never has to buffer a partial send on the heap. */
#define FRAGMENT_BYTES (64u * 1024)

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
	 * thread, mig__client_vhost_new()); NULL until then. Otherwise NULL, and
	 * the default vhost has client_ssl_ctx from the start. */
	struct lws_vhost *client_vhost;
	struct lws_protocols protocols[6];
	int port;
	pthread_t thread;
	bool thread_started;

	/* Commands from other threads, newest first: a lock-free stack, like
	 * the worker pool's `incoming` (workers.c), so that posting never
	 * waits for the I/O thread. That thread runs nicer than the app
	 * (worker_nice), and when it was preempted holding the lock this list
	 * used to have, mig_engine_dispatch() waited for it (2 ms seen). */
	_Atomic(struct cmd *) cmds;
	/* Posters between seeing `stopping` false and waking the context:
	 * mig__transport_free() waits for them before destroying it. */
	atomic_uint posting;
	atomic_bool stopping;
	_Atomic uint64_t next_id; /* connection ids, taken by any thread */
	bool destroying; /* I/O thread only: no events while tearing down */

	struct conn *conns; /* I/O thread only */
	/* Blocks for the large fields of received frames (file chunks), which
	 * the I/O thread allocates and workers free; NULL: the heap. */
	mig__pool *rx_pool;
};

/* Plain HTTP on the listening port (protocols[0], whose per-session data
 * this is): GET /metrics answers the owner's rendering, anything else 404.
 * One request at a time per connection; the body goes out in pieces. */
struct http_reply {
	char *body;
	size_t len;
	size_t sent;
};

/* ---- transport.c ---- */

/* Subprotocol names, indexed by channel. */
extern const char *const mig__protocol_names[];
/* Ping after 20 s of silence, hang up after 60 s. */
extern const lws_retry_bo_t mig__keepalive_policy;
/* Hands `ev` to the owner's event queue (freed instead while destroying). */
void mig__post(mig__transport *t, mig__tev *ev);
/* Posts a log line for the owner if `level` passes cfg.log_level. */
void mig__tlog(mig__transport *t, mig_log_level level, const char *fmt, ...)
	MIG__PRINTF(3, 4);
void mig__conn_link(mig__transport *t, struct conn *c);
/* Runs the commands other threads queued (LWS_CALLBACK_EVENT_WAIT_CANCELLED). */
void mig__drain_cmds(mig__transport *t);

/* ---- transport_ws.c ---- */

/* Notes why `c` goes down; the first cause wins. */
void mig__set_down(struct conn *c, int error, const char *fmt, ...) MIG__PRINTF(3, 4);
/* The wsi of `c` is gone (or never came): posts DOWN, marks it for reaping. */
void mig__conn_gone(mig__transport *t, struct conn *c);
void mig__push_msg(mig__msg **head, mig__msg **tail, mig__msg *m);
void mig__enqueue_tx(struct conn *c, mig__msg *m);
void mig__request_close(struct conn *c, int status, const char *reason);
/* The libwebsockets callback of every protocol in mig__transport.protocols. */
int mig__callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
		  size_t len);

/* ---- transport_tls.c ---- */

/* OpenSSL's last error of this thread as text (a thread-local buffer);
 * clears the error queue. */
const char *mig__ssl_error(void);
/* Returns the client SSL_CTX, or NULL with `err` filled. Also called by
 * mig__transport_new(), on the creating thread. */
SSL_CTX *mig__client_ssl_ctx_new(mig__transport *t, char *err, size_t err_len);
/* Makes the client SSL_CTX and its vhost at the first wss:// connect;
 * returns 0, or -1 with `c` set down (MIG_ETLS). */
int mig__client_vhost_new(mig__transport *t, struct conn *c);
/* Why an outbound connection failed: `in`, or better, in `buf`. */
const char *mig__connect_error(mig__transport *t, struct conn *c, const char *in, char *buf,
			       size_t len);
/* LWS_CALLBACK_OPENSSL_PERFORM_SERVER_CERT_VERIFICATION: returns 0. */
int mig__tls_server_cert(struct conn *c, void *user, size_t len);
/* LWS_CALLBACK_OPENSSL_PERFORM_CLIENT_CERT_VERIFICATION: returns 1 to
 * refuse the certificate, 0 to accept it. */
int mig__tls_client_cert(mig__transport *t, void *user, size_t len);

/* ---- transport_http.c ---- */

void mig__http_reply_free(struct http_reply *r);
/* LWS_CALLBACK_HTTP; returns what the callback returns. */
int mig__on_http(mig__transport *t, struct lws *wsi, struct http_reply *r, const char *path);
/* LWS_CALLBACK_HTTP_WRITEABLE; returns what the callback returns. */
int mig__on_http_writeable(struct lws *wsi, struct http_reply *r);

#endif
