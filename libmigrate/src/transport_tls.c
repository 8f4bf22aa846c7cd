/* The transport's OpenSSL side (see transport.c for the whole): the client
 * SSL_CTX for wss:// connects, made at the start when TLS is configured and
 * otherwise, with its vhost, at the first wss:// connect; the info callback
 * that keeps why a server refused the handshake; the certificate
 * verification hooks of the libwebsockets callback (transport_ws.c); and the
 * text of a failed connect. I/O thread, except mig__client_ssl_ctx_new() at
 * mig__transport_new(). */
#include <pthread.h>
#include <stdio.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

#include "transport_int.h"

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

const char *mig__ssl_error(void)
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
SSL_CTX *mig__client_ssl_ctx_new(mig__transport *t, char *err, size_t err_len)
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
		snprintf(err, err_len, "%s%s: %s", what, file, mig__ssl_error());
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
int mig__client_vhost_new(mig__transport *t, struct conn *c)
{
	char err[200];
	t->client_ssl_ctx = mig__client_ssl_ctx_new(t, err, sizeof(err));
	if (!t->client_ssl_ctx) {
		mig__set_down(c, MIG_ETLS, "%s", err);
		return -1;
	}
	struct lws_context_creation_info info;
	memset(&info, 0, sizeof(info));
	info.port = CONTEXT_PORT_NO_LISTEN;
	info.vhost_name = "wss-client";
	info.protocols = t->protocols;
	info.retry_and_idle_policy = &mig__keepalive_policy;
	info.options = LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
	info.provided_client_ssl_ctx = t->client_ssl_ctx;
	t->client_vhost = lws_create_vhost(t->ctx, &info);
	if (!t->client_vhost) {
		SSL_CTX_free(t->client_ssl_ctx);
		t->client_ssl_ctx = NULL;
		mig__set_down(c, MIG_ETLS, "cannot set up TLS for outbound connections");
		return -1;
	}
	return 0;
}

/* Why an outbound connection failed, for CLIENT_CONNECTION_ERROR. */
const char *mig__connect_error(mig__transport *t, struct conn *c, const char *in, char *buf,
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

/* Once per certificate of the server's chain; user is the X509_STORE_CTX,
 * len is preverify_ok. Only note why it failed: returning 0 keeps OpenSSL's
 * verdict. */
int mig__tls_server_cert(struct conn *c, void *user, size_t len)
{
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
}

/* Server with tls_require_client_cert, once per certificate of the client's
 * chain; user is the X509_STORE_CTX, len is preverify_ok. lws accepts the
 * certificate whenever this returns 0, whatever OpenSSL found: refuse what
 * failed. */
int mig__tls_client_cert(mig__transport *t, void *user, size_t len)
{
	if (!len) {
		X509_STORE_CTX *xs = user;
		if (t)
			mig__tlog(t, MIG_LOG_WARN,
				  "%s: refused a client certificate: %s (depth %d)", t->name,
				  X509_verify_cert_error_string(X509_STORE_CTX_get_error(xs)),
				  X509_STORE_CTX_get_error_depth(xs));
		return 1;
	}
	return 0;
}
