/* migrate-orchestrator: the HTTP port. The JSON API (every /api/ request
 * needs the operator token), the dashboard's three static files, and the
 * dashboard WebSocket (subprotocol mig-dashboard) that gets the registry
 * document whenever it changes. Main thread only. See orchestrator.h. */
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>

#include "orchestrator.h"

/* ------------------------------------------------------------------ HTTP */

struct http_req {
	char *body;           /* POST body so far */
	size_t body_len;
	bool post;
	bool too_big;
	char *reply;          /* response body */
	size_t reply_len, sent;
	bool close_after;
};

static void http_req_clear(struct http_req *r)
{
	free(r->body);
	free(r->reply);
	memset(r, 0, sizeof(*r));
}

/* Writes the headers and queues the body. */
static int respond(struct lws *wsi, struct http_req *r, unsigned status, const char *type,
		   char *body, size_t len)
{
	uint8_t head[LWS_PRE + 1024];
	uint8_t *start = head + LWS_PRE, *p = start, *end = head + sizeof(head) - 1;
	free(r->reply);
	r->reply = body;
	r->reply_len = len;
	r->sent = 0;
	if (lws_add_http_common_headers(wsi, status, type, len, &p, end) ||
	    lws_add_http_header_by_name(wsi, (const unsigned char *)"cache-control:",
					(const unsigned char *)"no-store", 8, &p, end) ||
	    (r->close_after &&
	     lws_add_http_header_by_token(wsi, WSI_TOKEN_CONNECTION,
					  (const unsigned char *)"close", 5, &p, end)) ||
	    lws_finalize_write_http_header(wsi, start, &p, end))
		return -1;
	lws_callback_on_writable(wsi);
	return 0;
}

static int respond_json(struct orch *o, struct lws *wsi, struct http_req *r, unsigned status,
			char *json)
{
	if (!json)
		return lws_return_http_status(wsi, HTTP_STATUS_INTERNAL_SERVER_ERROR, NULL) ? -1
											: 0;
	(void)o;
	return respond(wsi, r, status, "application/json", json, strlen(json));
}

static int respond_error(struct orch *o, struct lws *wsi, struct http_req *r, unsigned status,
			 const char *msg)
{
	return respond_json(o, wsi, r, status, json_string(o, "error", msg));
}

static int on_http_writeable(struct lws *wsi, struct http_req *r)
{
	if (!r->reply && r->reply_len == 0 && r->sent == 0 && !r->close_after)
		return 0;
	enum { PIECE = 8192 };
	uint8_t buf[LWS_PRE + PIECE];
	size_t n = r->reply_len - r->sent;
	if (n > PIECE)
		n = PIECE;
	bool last = r->sent + n == r->reply_len;
	if (n)
		memcpy(buf + LWS_PRE, r->reply + r->sent, n);
	if (lws_write(wsi, buf + LWS_PRE, n, last ? LWS_WRITE_HTTP_FINAL : LWS_WRITE_HTTP) !=
	    (int)n)
		return -1;
	r->sent += n;
	if (!last) {
		lws_callback_on_writable(wsi);
		return 0;
	}
	bool close_after = r->close_after;
	http_req_clear(r);
	if (close_after)
		return -1;
	return lws_http_transaction_completed(wsi) ? -1 : 0;
}

/* Constant-time check of the operator token in "Authorization: Bearer T"
 * (HTTP API) or "?token=T" (the dashboard's WebSocket). */
static bool token_ok(struct orch *o, const char *given)
{
	size_t n = strlen(given);
	return n == o->token_len && CRYPTO_memcmp(given, o->token, n) == 0;
}

static bool http_authorized(struct orch *o, struct lws *wsi)
{
	char h[300];
	if (lws_hdr_copy(wsi, h, sizeof(h), WSI_TOKEN_HTTP_AUTHORIZATION) <= 0)
		return false;
	if (strncmp(h, "Bearer ", 7) != 0)
		return false;
	return token_ok(o, h + 7);
}

static const char *content_type(const char *name)
{
	const char *dot = strrchr(name, '.');
	if (dot && strcmp(dot, ".js") == 0)
		return "text/javascript; charset=utf-8";
	if (dot && strcmp(dot, ".css") == 0)
		return "text/css; charset=utf-8";
	if (dot && strcmp(dot, ".png") == 0)
		return "image/png";
	return "text/html; charset=utf-8";
}

/* The dashboard's files: a fixed list, read from the static directory on
 * every request (so they can be edited without a restart). */
static int serve_static(struct orch *o, struct lws *wsi, struct http_req *r, const char *path)
{
	static const char *const files[] = {"index.html", "app.js", "style.css"};
	const char *name = strcmp(path, "/") == 0 ? "index.html" : path + 1;
	bool listed = false;
	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
		if (strcmp(name, files[i]) == 0)
			listed = true;
	if (!listed)
		return respond_error(o, wsi, r, HTTP_STATUS_NOT_FOUND, "no such page");
	char full[PATH_MAX + 64];
	snprintf(full, sizeof(full), "%s/%s", o->static_dir, name);
	FILE *f = fopen(full, "rb");
	if (!f)
		return respond_error(o, wsi, r, HTTP_STATUS_NOT_FOUND, "dashboard files not found");
	char *buf = NULL;
	size_t len = 0, cap = 0;
	for (;;) {
		if (len == cap) {
			cap = cap ? cap * 2 : 16384;
			char *bigger = realloc(buf, cap);
			if (!bigger)
				break;
			buf = bigger;
		}
		size_t n = fread(buf + len, 1, cap - len, f);
		len += n;
		if (n == 0)
			break;
	}
	bool err = ferror(f) != 0;
	fclose(f);
	if (err || !buf) {
		free(buf);
		return respond_error(o, wsi, r, HTTP_STATUS_INTERNAL_SERVER_ERROR,
				     "cannot read the dashboard files");
	}
	return respond(wsi, r, HTTP_STATUS_OK, content_type(name), buf, len);
}

/* POST /api/migrations {"user": U, "to": ENGINE_ID or URL}: checks
 * everything it can before starting, answers 202 with the migration's row
 * id once its thread runs; the outcome shows in GET /api/migrations. */
static int start_migration(struct orch *o, struct lws *wsi, struct http_req *r)
{
	char *body = r->body ? r->body : "";
	char *valid = db_text(o, "SELECT json_valid(?1) AND json_type(?1) = 'object'", "t", body);
	bool ok = valid && strcmp(valid, "1") == 0;
	free(valid);
	if (!ok)
		return respond_error(o, wsi, r, HTTP_STATUS_BAD_REQUEST,
				     "body must be a JSON object like {\"user\": \"alice\", "
				     "\"to\": \"engine-id\"}");
	char *user = db_text(o,
			     "SELECT CASE json_type(?1, '$.user') WHEN 'text' THEN"
			     " json_extract(?1, '$.user') END", "t", body);
	char *to = db_text(o,
			   "SELECT CASE json_type(?1, '$.to') WHEN 'text' THEN"
			   " json_extract(?1, '$.to') END", "t", body);
	char msg[600];
	int rc;
	char *src = NULL, *src_url = NULL, *dst = NULL, *dst_url = NULL, *health = NULL;
	char *busy = NULL;
	if (!user || !mig__valid_user(user)) {
		rc = respond_error(o, wsi, r, HTTP_STATUS_BAD_REQUEST,
				   "\"user\" must be a user id: 1-128 printable ASCII, no spaces");
		goto out;
	}
	if (!to || !*to) {
		rc = respond_error(o, wsi, r, HTTP_STATUS_BAD_REQUEST,
				   "\"to\" must name the destination engine (its id or URL)");
		goto out;
	}
	dst = db_text(o, "SELECT id FROM engines WHERE (id = ?1 OR url = ?1) AND health != 'gone'",
		      "t", to);
	if (!dst) {
		snprintf(msg, sizeof(msg), "unknown engine \"%.200s\"", to);
		rc = respond_error(o, wsi, r, HTTP_STATUS_NOT_FOUND, msg);
		goto out;
	}
	src = db_text(o,
		      "SELECT u.engine_id FROM users u JOIN engines e ON e.id = u.engine_id"
		      " WHERE u.user = ?1 AND e.health != 'gone'"
		      " ORDER BY u.state = 'active' DESC LIMIT 1", "t", user);
	if (!src) {
		snprintf(msg, sizeof(msg), "unknown user \"%.200s\": no engine serves it", user);
		rc = respond_error(o, wsi, r, HTTP_STATUS_NOT_FOUND, msg);
		goto out;
	}
	if (strcmp(src, dst) == 0) {
		snprintf(msg, sizeof(msg), "user \"%.200s\" is already on engine \"%.200s\"", user,
			 dst);
		rc = respond_error(o, wsi, r, HTTP_STATUS_CONFLICT, msg);
		goto out;
	}
	health = db_text(o, "SELECT health FROM engines WHERE id = ?1", "t", dst);
	if (!health || strcmp(health, "healthy") != 0) {
		snprintf(msg, sizeof(msg), "destination engine \"%.200s\" is %s", dst,
			 health ? health : "unknown");
		rc = respond_error(o, wsi, r, HTTP_STATUS_CONFLICT, msg);
		goto out;
	}
	free(health);
	health = db_text(o, "SELECT health FROM engines WHERE id = ?1", "t", src);
	if (!health || strcmp(health, "healthy") != 0) {
		snprintf(msg, sizeof(msg), "source engine \"%.200s\" is %s", src,
			 health ? health : "unknown");
		rc = respond_error(o, wsi, r, HTTP_STATUS_CONFLICT, msg);
		goto out;
	}
	busy = db_text(o, "SELECT id FROM migrations WHERE user = ?1 AND state IN"
			  " ('requested', 'running')", "t", user);
	if (busy) {
		snprintf(msg, sizeof(msg), "user \"%.200s\" is already migrating (migration %s)",
			 user, busy);
		rc = respond_error(o, wsi, r, HTTP_STATUS_CONFLICT, msg);
		goto out;
	}
	if (o->njobs >= MAX_JOBS) {
		rc = respond_error(o, wsi, r, HTTP_STATUS_SERVICE_UNAVAILABLE,
				   "too many migrations in flight; retry later");
		goto out;
	}
	src_url = db_text(o, "SELECT url FROM engines WHERE id = ?1", "t", src);
	dst_url = db_text(o, "SELECT url FROM engines WHERE id = ?1", "t", dst);
	struct job *j = calloc(1, sizeof(*j));
	if (!j || !src_url || !dst_url || !(j->user = strdup(user)) ||
	    !(j->src_url = strdup(src_url)) || !(j->dst_url = strdup(dst_url))) {
		if (j) {
			free(j->user);
			free(j->src_url);
			free(j);
		}
		rc = respond_error(o, wsi, r, HTTP_STATUS_INTERNAL_SERVER_ERROR, "out of memory");
		goto out;
	}
	j->o = o;
	db_exec(o,
		"INSERT INTO migrations(user, source, destination, state, phase, requested_ms)"
		" VALUES(?1, ?2, ?3, 'requested', 'requested', ?4)",
		"ttti", user, src, dst, (int64_t)wall_ms());
	j->id = sqlite3_last_insert_rowid(o->db);
	if (job_start(j) != 0) {
		db_exec(o, "UPDATE migrations SET state = 'failed', error = 'cannot start a thread'"
			   " WHERE id = ?1", "i", j->id);
		free(j->user);
		free(j->src_url);
		free(j->dst_url);
		free(j);
		rc = respond_error(o, wsi, r, HTTP_STATUS_SERVICE_UNAVAILABLE,
				   "cannot start a thread");
		goto out;
	}
	j->next = o->jobs;
	o->jobs = j;
	o->njobs++;
	fprintf(stderr, "migrate-orchestrator: migration %" PRId64 ": %s from %s to %s\n", j->id,
		user, src, dst);
	rc = respond_json(o, wsi, r, 202 /* Accepted */,
			  db_text(o, "SELECT json_object('id', ?1, 'user', ?2, 'from', ?3, 'to', ?4,"
				     " 'state', 'requested')",
				  "ittt", j->id, user, src, dst));
out:
	free(user);
	free(to);
	free(src);
	free(src_url);
	free(dst);
	free(dst_url);
	free(health);
	free(busy);
	return rc;
}

/* POST /api/migrations/ID/cancel: cancel a migration this orchestrator
 * runs, at its source engine. 202 once asked (the outcome shows in the
 * migration's state and events), 404 no such migration, 409 not running.
 * Asking twice is answered like the first time. */
static int cancel_migration(struct orch *o, struct lws *wsi, struct http_req *r, int64_t id)
{
	struct job *j = o->jobs;
	while (j && (j->id != id || j->done))
		j = j->next;
	char msg[200];
	if (!j) {
		char *st = db_text(o, "SELECT state FROM migrations WHERE id = ?1", "i", id);
		if (!st) {
			snprintf(msg, sizeof(msg), "no migration %" PRId64, id);
			return respond_error(o, wsi, r, HTTP_STATUS_NOT_FOUND, msg);
		}
		snprintf(msg, sizeof(msg), "migration %" PRId64 " is not running (%.40s)", id, st);
		free(st);
		return respond_error(o, wsi, r, HTTP_STATUS_CONFLICT, msg);
	}
	if (!j->cancel_wanted) {
		/* By migration id once the engine named it (its STARTED
		 * event). Before that, the job's thread does not ask for the
		 * migration if it has not yet, and the STARTED event of one it
		 * asked for starts the cancel (on_job_event). */
		char *mid = db_text(o, "SELECT mid FROM migrations WHERE id = ?1 AND mid != ''",
				    "i", id);
		int rc = mid ? cancel_start(j, mid) : 0;
		free(mid);
		if (rc != 0)
			return respond_error(o, wsi, r, HTTP_STATUS_SERVICE_UNAVAILABLE,
					     "cannot start a thread");
		j->cancel_wanted = true;
		atomic_store(&j->cancel_early, true);
		record_event(o, id, "cancel_requested", NULL);
		fprintf(stderr, "migrate-orchestrator: migration %" PRId64 ": cancel asked\n", id);
	}
	return respond_json(o, wsi, r, 202 /* Accepted */,
			    db_text(o, "SELECT json_object('id', ?1, 'state', 'cancel requested')",
				    "i", id));
}

/* The migration id of a path /api/migrations/ID/cancel, or -1. */
static int64_t cancel_path_id(const char *path)
{
	long long id;
	int end = 0;
	if (sscanf(path, "/api/migrations/%lld/cancel%n", &id, &end) != 1 || path[end] ||
	    id < 1 || !isdigit((unsigned char)path[strlen("/api/migrations/")]))
		return -1;
	return (int64_t)id;
}

static int on_http(struct orch *o, struct lws *wsi, struct http_req *r, const char *path)
{
	http_req_clear(r);
	bool get = lws_hdr_total_length(wsi, WSI_TOKEN_GET_URI) > 0;
	bool post = lws_hdr_total_length(wsi, WSI_TOKEN_POST_URI) > 0;
	if (strncmp(path, "/api/", 5) != 0) {
		if (!get) {
			r->close_after = post;
			return respond_error(o, wsi, r, HTTP_STATUS_METHOD_NOT_ALLOWED,
					     "only GET here");
		}
		return serve_static(o, wsi, r, path);
	}
	if (!http_authorized(o, wsi)) {
		r->close_after = post;
		return respond_error(o, wsi, r, HTTP_STATUS_UNAUTHORIZED,
				     "missing or wrong operator token (Authorization: Bearer ...)");
	}
	int64_t cancel_id = post ? cancel_path_id(path) : -1;
	if (cancel_id > 0) {
		char cl[32];
		if (lws_hdr_copy(wsi, cl, sizeof(cl), WSI_TOKEN_HTTP_CONTENT_LENGTH) > 0 &&
		    strcmp(cl, "0") != 0) {
			r->close_after = true; /* the body is not read */
			return respond_error(o, wsi, r, HTTP_STATUS_BAD_REQUEST,
					     "a cancel takes no body");
		}
		return cancel_migration(o, wsi, r, cancel_id);
	}
	if (post) {
		if (strcmp(path, "/api/migrations") != 0) {
			r->close_after = true;
			return respond_error(o, wsi, r, HTTP_STATUS_NOT_FOUND, "no such API");
		}
		char cl[32];
		if (lws_hdr_copy(wsi, cl, sizeof(cl), WSI_TOKEN_HTTP_CONTENT_LENGTH) <= 0) {
			r->close_after = true;
			return respond_error(o, wsi, r, HTTP_STATUS_LENGTH_REQUIRED,
					     "a Content-Length is required");
		}
		char *endp;
		errno = 0;
		unsigned long long n = strtoull(cl, &endp, 10);
		if (errno || *endp || n > MAX_BODY) {
			r->close_after = true;
			return respond_error(o, wsi, r, HTTP_STATUS_REQ_ENTITY_TOO_LARGE,
					     "body over 4096 bytes");
		}
		if (n == 0)
			return respond_error(o, wsi, r, HTTP_STATUS_BAD_REQUEST,
					     "body must be a JSON object like {\"user\": \"alice\", "
					     "\"to\": \"engine-id\"}");
		r->post = true;
		return 0; /* the body follows */
	}
	if (!get)
		return respond_error(o, wsi, r, HTTP_STATUS_METHOD_NOT_ALLOWED, "GET or POST only");
	const char *sql = NULL;
	if (strcmp(path, "/api/engines") == 0)
		sql = sql_engines;
	else if (strcmp(path, "/api/users") == 0)
		sql = sql_users;
	else if (strcmp(path, "/api/migrations") == 0)
		sql = sql_migrations;
	else if (strcmp(path, "/api/state") == 0 && o->state)
		return respond(wsi, r, HTTP_STATUS_OK, "application/json",
			       strdup(o->state + LWS_PRE), o->state_len);
	if (!sql)
		return respond_error(o, wsi, r, HTTP_STATUS_NOT_FOUND, "no such API");
	return respond_json(o, wsi, r, HTTP_STATUS_OK, db_text(o, sql, NULL));
}

static int on_http_body(struct lws *wsi, struct http_req *r, const void *in, size_t len)
{
	(void)wsi;
	if (!r->post || r->too_big)
		return 0;
	if (r->body_len + len > MAX_BODY) {
		r->too_big = true;
		return 0;
	}
	char *bigger = realloc(r->body, r->body_len + len + 1);
	if (!bigger)
		return -1;
	r->body = bigger;
	memcpy(r->body + r->body_len, in, len);
	r->body_len += len;
	r->body[r->body_len] = '\0';
	return 0;
}

static int on_http_body_done(struct orch *o, struct lws *wsi, struct http_req *r)
{
	if (!r->post)
		return 0;
	r->post = false;
	if (r->too_big) {
		r->close_after = true;
		return respond_error(o, wsi, r, HTTP_STATUS_REQ_ENTITY_TOO_LARGE,
				     "body over 4096 bytes");
	}
	if (r->body && strlen(r->body) != r->body_len)
		return respond_error(o, wsi, r, HTTP_STATUS_BAD_REQUEST, "body contains a NUL byte");
	return start_migration(o, wsi, r);
}

static int callback_http(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
			 size_t len)
{
	struct orch *o = lws_context_user(lws_get_context(wsi));
	struct http_req *r = user;
	switch (reason) {
	case LWS_CALLBACK_HTTP:
		return on_http(o, wsi, r, in ? (const char *)in : "/");
	case LWS_CALLBACK_HTTP_BODY:
		return on_http_body(wsi, r, in, len);
	case LWS_CALLBACK_HTTP_BODY_COMPLETION:
		return on_http_body_done(o, wsi, r);
	case LWS_CALLBACK_HTTP_WRITEABLE:
		return r ? on_http_writeable(wsi, r) : 0;
	case LWS_CALLBACK_CLOSED_HTTP:
	case LWS_CALLBACK_HTTP_DROP_PROTOCOL:
		if (r)
			http_req_clear(r);
		return 0;
	case LWS_CALLBACK_EVENT_WAIT_CANCELLED:
		if (o)
			drain_results(o);
		return 0;
	default:
		return lws_callback_http_dummy(wsi, reason, user, in, len);
	}
}

/* ------------------------------------------------------------------ dashboard WebSocket */

struct ws_sess {
	uint64_t sent_gen;
};

static int callback_ws(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
		       size_t len)
{
	struct orch *o = lws_context_user(lws_get_context(wsi));
	struct ws_sess *s = user;
	(void)in;
	(void)len;
	switch (reason) {
	case LWS_CALLBACK_FILTER_PROTOCOL_CONNECTION: {
		char tok[300];
		const char *v = lws_get_urlarg_by_name(wsi, "token=", tok, sizeof(tok));
		return v && token_ok(o, v) ? 0 : 1;
	}
	case LWS_CALLBACK_ESTABLISHED:
		s->sent_gen = 0;
		lws_callback_on_writable(wsi);
		return 0;
	case LWS_CALLBACK_SERVER_WRITEABLE:
		if (!o->state || s->sent_gen == o->state_gen)
			return 0;
		if (lws_write(wsi, (unsigned char *)o->state + LWS_PRE, o->state_len,
			      LWS_WRITE_TEXT) < (int)o->state_len)
			return -1;
		s->sent_gen = o->state_gen;
		return 0;
	case LWS_CALLBACK_RECEIVE:
		return 0; /* the dashboard sends nothing that matters */
	default:
		return 0;
	}
}

const struct lws_protocols orch_protocols[] = {
	{"http", callback_http, sizeof(struct http_req), 0, 0, NULL, 0},
	{"mig-dashboard", callback_ws, sizeof(struct ws_sess), 4096, 0, NULL, 0},
	{NULL, NULL, 0, 0, 0, NULL, 0},
};


void push_state(struct orch *o)
{
	char *doc = registry_document(o);
	if (!doc)
		return;
	size_t len = strlen(doc);
	if (o->state && len == o->state_len && memcmp(o->state + LWS_PRE, doc, len) == 0) {
		free(doc);
		return;
	}
	/* Kept with LWS_PRE bytes of headroom, so every dashboard's write
	 * goes out of the same buffer. */
	char *buf = malloc(LWS_PRE + len + 1);
	if (!buf) {
		free(doc);
		return;
	}
	memcpy(buf + LWS_PRE, doc, len + 1);
	free(doc);
	free(o->state);
	o->state = buf;
	o->state_len = len;
	o->state_gen++;
	lws_callback_on_writable_all_protocol(o->ctx, o->ws_protocol);
}
