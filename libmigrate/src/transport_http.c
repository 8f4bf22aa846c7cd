/* The transport's plain HTTP (see transport.c for the whole): on the
 * listening port, protocols[0] answers GET /metrics with the owner's
 * rendering (cfg.render_metrics) and anything else with 404; WebSockets
 * without a known subprotocol also land there and are closed at
 * ESTABLISHED (transport_ws.c). I/O thread. */
#include <string.h>

#include "transport_int.h"

#define HTTP_PIECE_BYTES 4096u

void mig__http_reply_free(struct http_reply *r)
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

int mig__on_http(mig__transport *t, struct lws *wsi, struct http_reply *r, const char *path)
{
	if (!r)
		return -1;
	mig__http_reply_free(r);
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

int mig__on_http_writeable(struct lws *wsi, struct http_reply *r)
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
		mig__http_reply_free(r);
		return -1;
	}
	r->sent += n;
	if (!last) {
		lws_callback_on_writable(wsi);
		return 0;
	}
	mig__http_reply_free(r);
	return http_done(wsi);
}
