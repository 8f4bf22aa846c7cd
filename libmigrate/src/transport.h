/* The transport: owns libwebsockets and its service (I/O) thread.
 *
 * It listens (optionally), connects, runs the authentication handshake,
 * reassembles messages under the frame cap, decodes them with the wire module
 * and posts events (up, down, frame, log) to the owner's queue. Every lws call
 * happens on the I/O thread; the functions below are safe from any thread:
 * they queue a command and wake the I/O thread with lws_cancel_service().
 *
 * Connection ids are never reused within a transport. Every id returned by
 * mig__transport_connect() gets exactly one MIG__TEV_DOWN (after an UP, or
 * instead of one when connecting fails). Inbound connections produce UP only
 * once authenticated, then exactly one DOWN. */
#ifndef MIG_TRANSPORT_H
#define MIG_TRANSPORT_H

#include "common.h"
#include "evq.h"
#include "wire.h"

typedef struct mig__transport mig__transport;

enum mig__tev_type {
	MIG__TEV_UP,    /* connection authenticated */
	MIG__TEV_DOWN,  /* connection closed or failed */
	MIG__TEV_FRAME, /* one validated frame */
	MIG__TEV_LOG,   /* a log line produced on the I/O thread */
	MIG__TEV_CALL,  /* a worker's completion: run call(ctx, arg) in dispatch */
};

typedef struct mig__tev {
	mig__evq_item link; /* first member: queue linkage */
	enum mig__tev_type type;
	uint64_t conn;
	int channel;            /* MIGWIRE__CHANNEL__* */
	bool inbound;           /* accepted by this side */
	char *peer_engine_id;   /* UP: the remote's id ("" if none) */
	char *peer_url;         /* UP: inbound: the remote's advertised URL */
	int error;              /* DOWN: why (0 = closed normally) */
	char reason[MIG__REASON_MAX];
	mig__frame *frame;      /* FRAME: owned by the event */
	size_t frame_bytes;     /* FRAME: size on the wire */
	int level;              /* LOG */
	char *line;             /* LOG */
	void (*call)(void *ctx, void *arg);  /* CALL */
	void (*discard)(void *arg);          /* CALL: frees arg if never called */
	void *arg;                           /* CALL */
} mig__tev;

void mig__tev_free(mig__tev *ev);
void mig__tev_free_item(mig__evq_item *item);

typedef struct mig__transport_cfg {
	bool listen;
	const char *listen_address; /* NULL = 127.0.0.1 */
	int listen_port;            /* 0 = ephemeral */
	/* TLS: serving (cert+key), verifying (ca), client cert for outgoing. */
	const char *tls_cert_file;
	const char *tls_key_file;
	const char *tls_ca_file;
	bool tls_require_client_cert;
	/* Authentication. */
	const void *secret;
	size_t secret_len;
	bool insecure;
	const char *engine_id;      /* sent in Challenge / Hello */
	const char *advertised_url; /* sent in Hello on peer connections */
	size_t max_frame;
	/* Bit (1 << MIGWIRE__CHANNEL__X) for each channel accepted inbound. */
	unsigned accept_channels;
	mig__evq *events;           /* where events go */
	mig_log_level log_level;    /* most verbose MIG__TEV_LOG to post */
	const char *name;           /* for log lines: "engine" or "ctl" */
	/* GET /metrics on a listening transport: called on the I/O thread,
	 * returns the body (mig__malloc'd, the transport frees it) or NULL.
	 * NULL callback: every HTTP request gets 404. */
	char *(*render_metrics)(void *ctx, size_t *len);
	void *metrics_ctx;
	/* > 0: the I/O thread runs this much nicer than the thread calling
	 * mig__transport_start() (at most 19). */
	int thread_nice;
} mig__transport_cfg;

/* Creates the lws context (binding the port if listening). */
int mig__transport_new(mig__transport **out, const mig__transport_cfg *cfg,
		       char *err, size_t err_len);
/* Sets the URL sent in peer Hellos; only before mig__transport_start(). */
int mig__transport_set_advertised_url(mig__transport *t, const char *url);
/* Starts the I/O thread. */
int mig__transport_start(mig__transport *t);
/* Stops the I/O thread, closes everything, frees. No events after return.
 * Accepts NULL. */
void mig__transport_free(mig__transport *t);

int mig__transport_port(const mig__transport *t);

/* Starts connecting to `url` (ws:// or wss://) on `channel`. Returns a
 * connection id (> 0) or a negative MIG_E* (bad URL, no memory). */
int64_t mig__transport_connect(mig__transport *t, const char *url, int channel);
/* Queues `msg` on `conn`; takes ownership. If the connection is gone the
 * message is dropped (its DOWN event says so). */
void mig__transport_send(mig__transport *t, uint64_t conn, mig__msg *msg);
/* Frees the spare receive blocks kept for bulk transfers (a transfer has
 * ended; a later one makes them again). Any thread. */
void mig__transport_trim(mig__transport *t);
/* Tests only: queues `msg` as-is ahead of the handshake, so a test can send
 * bytes before authenticating or bytes that are not a valid frame. */
void mig__transport_send_raw(mig__transport *t, uint64_t conn, mig__msg *msg);
/* Closes `conn` with a WebSocket close status and reason. */
void mig__transport_close(mig__transport *t, uint64_t conn, int status,
			  const char *reason);

/* Parse "ws://host:port[/path]" / "wss://...". Returns 0 or MIG_EINVAL. */
int mig__url_parse(const char *url, bool *tls, char *host, size_t host_len,
		   int *port, char *path, size_t path_len);

#endif
