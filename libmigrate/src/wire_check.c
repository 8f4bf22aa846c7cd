/* Validation of decoded frames: the check_*() family that mig__wire_check()
 * runs over every field of a frame the rest of the library relies on (ids,
 * lengths, counts, nonces, enum values), per body kind. Decoding itself, and
 * the checks of protobuf-c's own structure, are in wire.c. */
#include <stdio.h>
#include <string.h>

#include "digest.h"
#include "files.h"
#include "token.h"
#include "wire.h"
#include "wire_int.h"

/* Longest engine id and domain type name we accept from a peer. */
#define WIRE_ENGINE_ID_MAX 128
#define WIRE_TYPE_NAME_MAX 256
/* Longest phase name, and how many user states a status may list. */
#define WIRE_PHASE_MAX 32
#define WIRE_USER_STATES 16

/* ---------------------------------------------------------------- validation */

typedef struct check {
	const char *body; /* prefix of every reason */
	char *why;
	size_t why_len;
} check;

static bool fail(check *c, const char *fmt, ...) MIG__PRINTF(2, 3);

static bool fail(check *c, const char *fmt, ...)
{
	if (!c->why || !c->why_len)
		return false;
	int n = snprintf(c->why, c->why_len, "%s: ", c->body);
	if (n < 0 || (size_t)n >= c->why_len)
		return false;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(c->why + n, c->why_len - (size_t)n, fmt, ap);
	va_end(ap);
	return false;
}

static bool check_mid(check *c, const char *field, const char *mid)
{
	if (!mig__valid_mid(mid))
		return fail(c, "%s is not a valid migration id", field);
	return true;
}

static bool check_user(check *c, const char *field, const char *user)
{
	if (!mig__valid_user(user))
		return fail(c, "%s is not a valid user id", field);
	return true;
}

/* An absent optional URL may arrive as NULL or "" (protobuf-c packs a
 * non-NULL empty string); both mean "none". */
static bool check_url(check *c, const char *field, const char *url, bool required)
{
	if (!url || !*url) {
		if (required)
			return fail(c, "%s is empty", field);
		return true;
	}
	size_t n = strnlen(url, MIG__URL_MAX + 1);
	if (n > MIG__URL_MAX)
		return fail(c, "%s is longer than %d bytes", field, MIG__URL_MAX);
	size_t scheme;
	if (strncmp(url, "ws://", 5) == 0)
		scheme = 5;
	else if (strncmp(url, "wss://", 6) == 0)
		scheme = 6;
	else
		return fail(c, "%s is not a ws:// or wss:// URL", field);
	if (n == scheme)
		return fail(c, "%s has no host", field);
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)url[i];
		if (ch <= 0x20 || ch >= 0x7f)
			return fail(c, "%s contains a space or control character", field);
	}
	return true;
}

/* The URL of an app's own client endpoint (session channel): any scheme
 * ("https://", "tcp://", ...), printable, at most MIG__URL_MAX bytes. */
static bool check_app_url(check *c, const char *field, const char *url)
{
	if (!url || !*url)
		return true;
	size_t n = strnlen(url, MIG__URL_MAX + 1);
	if (n > MIG__URL_MAX)
		return fail(c, "%s is longer than %d bytes", field, MIG__URL_MAX);
	if (!mig__valid_app_url(url))
		return fail(c, "%s is not a scheme://... URL without spaces", field);
	return true;
}

static bool check_token(check *c, const char *field, const char *token, bool required)
{
	if (!token || !*token) {
		if (required)
			return fail(c, "%s is empty", field);
		return true;
	}
	if (!mig__token_text_valid(token))
		return fail(c, "%s is not a base64url token of at most %d characters", field,
			    MIG__TOKEN_B64_MAX);
	return true;
}

static bool check_engine_id(check *c, const char *field, const char *id, bool required)
{
	if (!id || !*id) {
		if (required)
			return fail(c, "%s is empty", field);
		return true;
	}
	size_t n = strnlen(id, WIRE_ENGINE_ID_MAX + 1);
	if (n > WIRE_ENGINE_ID_MAX)
		return fail(c, "%s is longer than %d bytes", field, WIRE_ENGINE_ID_MAX);
	for (size_t i = 0; i < n; i++) {
		unsigned char ch = (unsigned char)id[i];
		if (ch < 0x20 || ch >= 0x7f)
			return fail(c, "%s contains a non-printable character", field);
	}
	return true;
}

static bool check_reason(check *c, const char *field, const char *reason)
{
	if (reason && strnlen(reason, MIG__REASON_MAX + 1) > MIG__REASON_MAX)
		return fail(c, "%s is longer than %d bytes", field, MIG__REASON_MAX);
	return true;
}

/* Codes are libmigrate's own MIG_E* values; anything positive or wildly
 * negative is not one, whatever version sent it. */
static bool check_code(check *c, const char *field, int32_t code)
{
	if (code > 0 || code < -1000)
		return fail(c, "%s %d is not an error code", field, (int)code);
	return true;
}

static bool check_nonce(check *c, const char *field, const ProtobufCBinaryData *b)
{
	if (b->len != MIG__NONCE_LEN)
		return fail(c, "%s must be %d bytes, not %zu", field, MIG__NONCE_LEN, b->len);
	return true;
}

/* An empty MAC is how an engine without a secret (allow_insecure) speaks;
 * whether that is acceptable is the handshake's decision, not ours. */
static bool check_mac(check *c, const char *field, const ProtobufCBinaryData *b)
{
	if (b->len != 0 && b->len != MIG__MAC_LEN)
		return fail(c, "%s must be 0 or %d bytes, not %zu", field, MIG__MAC_LEN, b->len);
	return true;
}

/* protobuf-c stores whatever number arrived in an enum field, so anything
 * outside the declared values is caught here. */
static bool check_enum(check *c, const char *field, const ProtobufCEnumDescriptor *desc, int value)
{
	if (!protobuf_c_enum_descriptor_get_value(desc, value))
		return fail(c, "%s has unknown value %d", field, value);
	return true;
}

static bool check_domain_name(check *c, const char *field, size_t i, const char *name)
{
	if (!mig__valid_domain_name(name))
		return fail(c, "%s[%zu] has an invalid domain name", field, i);
	return true;
}

static bool check_type_name(check *c, const char *field, size_t i, const char *name)
{
	if (!name)
		return true;
	size_t n = strnlen(name, WIRE_TYPE_NAME_MAX + 1);
	if (n > WIRE_TYPE_NAME_MAX)
		return fail(c, "%s[%zu] type_name is longer than %d bytes", field, i,
			    WIRE_TYPE_NAME_MAX);
	for (size_t k = 0; k < n; k++) {
		unsigned char ch = (unsigned char)name[k];
		if (ch <= 0x20 || ch >= 0x7f)
			return fail(c,
				    "%s[%zu] type_name contains a space or control "
				    "character",
				    field, i);
	}
	return true;
}

static bool check_count(check *c, const char *field, size_t n, size_t max)
{
	if (n > max)
		return fail(c, "%s has %zu entries, more than %zu", field, n, max);
	return true;
}

/* Names are validated first, so strcmp is safe; n is at most
 * MIG__MAX_DOMAINS, so quadratic is fine. */
static bool check_unique(check *c, const char *field, const char *const *names, size_t n)
{
	for (size_t i = 1; i < n; i++)
		for (size_t j = 0; j < i; j++)
			if (strcmp(names[i], names[j]) == 0)
				return fail(c, "%s has duplicate domain \"%s\"", field, names[i]);
	return true;
}

static bool check_challenge(check *c, const Migwire__Challenge *m)
{
	return check_nonce(c, "server_nonce", &m->server_nonce) &&
	       check_engine_id(c, "engine_id", m->engine_id, false);
}

static bool check_hello(check *c, const Migwire__Hello *m)
{
	if (!check_enum(c, "channel", &migwire__channel__descriptor, (int)m->channel))
		return false;
	if (m->channel == MIGWIRE__CHANNEL__CHANNEL_UNSPECIFIED)
		return fail(c, "channel is unspecified");
	return check_nonce(c, "client_nonce", &m->client_nonce) &&
	       check_engine_id(c, "engine_id", m->engine_id, false) &&
	       check_url(c, "advertised_url", m->advertised_url, false) &&
	       check_mac(c, "mac", &m->mac);
}

static bool check_begin(check *c, const Migwire__Begin *m)
{
	if (!check_mid(c, "mid", m->mid) || !check_user(c, "user", m->user) ||
	    !check_engine_id(c, "source_engine", m->source_engine, true) ||
	    !check_url(c, "source_url", m->source_url, true) ||
	    !check_count(c, "domains", m->n_domains, MIG__MAX_DOMAINS))
		return false;
	const char *names[MIG__MAX_DOMAINS];
	for (size_t i = 0; i < m->n_domains; i++) {
		const Migwire__DomainInfo *d = m->domains[i];
		if (!check_domain_name(c, "domains", i, d->name) ||
		    !check_type_name(c, "domains", i, d->type_name))
			return false;
		if (!protobuf_c_enum_descriptor_get_value(&migwire__domain_kind__descriptor,
							  (int)d->kind))
			return fail(c, "domains[%zu] kind has unknown value %d", i, (int)d->kind);
		names[i] = d->name;
	}
	return check_unique(c, "domains", names, m->n_domains);
}

static bool check_manifests(check *c, const Migwire__Prepare *m);

static bool check_prepare(check *c, const Migwire__Prepare *m)
{
	if (!check_mid(c, "mid", m->mid) || !check_count(c, "light", m->n_light, MIG__MAX_DOMAINS))
		return false;
	const char *names[MIG__MAX_DOMAINS];
	for (size_t i = 0; i < m->n_light; i++) {
		if (!check_domain_name(c, "light", i, m->light[i]->name))
			return false;
		names[i] = m->light[i]->name;
	}
	return check_unique(c, "light", names, m->n_light) && check_manifests(c, m);
}

static bool check_path(check *c, const char *field, size_t i, const char *path)
{
	if (!mig__path_valid(path))
		return fail(c, "%s[%zu] is not an acceptable relative path", field, i);
	return true;
}

/* Files in PREPARE: per domain, paths valid and digests exactly MIG__DIGEST_LEN bytes. */
static bool check_manifests(check *c, const Migwire__Prepare *m)
{
	if (!check_count(c, "files", m->n_files, MIG__MAX_DOMAINS))
		return false;
	const char *names[MIG__MAX_DOMAINS];
	for (size_t i = 0; i < m->n_files; i++) {
		const Migwire__FileManifest *fm = m->files[i];
		if (!check_domain_name(c, "files", i, fm->domain) ||
		    !check_count(c, "files.files", fm->n_files, MIG__MAX_FILES))
			return false;
		for (size_t k = 0; k < fm->n_files; k++) {
			if (!check_path(c, "files.files", k, fm->files[k]->path))
				return false;
			if (fm->files[k]->digest.len != MIG__DIGEST_LEN)
				return fail(c, "files.files[%zu] digest must be %d bytes", k, MIG__DIGEST_LEN);
		}
		names[i] = fm->domain;
	}
	return check_unique(c, "files", names, m->n_files);
}

static bool check_file_stream(check *c, const Migwire__FileStream *m)
{
	return check_mid(c, "mid", m->mid) &&
	       check_enum(c, "kind", &migwire__stream_kind__descriptor, (int)m->kind) &&
	       check_domain_name(c, "domain", 0, m->domain) && check_path(c, "path", 0, m->path);
}

static bool check_chunk(check *c, const Migwire__Chunk *m)
{
	if (!check_mid(c, "mid", m->mid) ||
	    !check_enum(c, "compression", &migwire__compression__descriptor, (int)m->compression))
		return false;
	/* Bounds what one chunk can decompress to, before anything is inflated. */
	if (m->compression != MIGWIRE__COMPRESSION__COMPRESSION_NONE &&
	    (!m->has_raw_len || m->raw_len > MIG__CHUNK_RAW_MAX))
		return fail(c, "raw_len missing or over %u bytes", MIG__CHUNK_RAW_MAX);
	return true;
}

/* "domain/path": a valid domain name, then a valid relative path. */
static bool check_domain_path(check *c, const char *field, size_t i, const char *dp)
{
	const char *slash = strchr(dp, '/');
	char domain[MIG__NAME_MAX + 1];
	size_t dn = slash ? (size_t)(slash - dp) : 0;
	if (!slash || dn == 0 || dn > MIG__NAME_MAX)
		return fail(c, "%s[%zu] is not domain/path", field, i);
	memcpy(domain, dp, dn);
	domain[dn] = '\0';
	return check_domain_name(c, field, i, domain) && check_path(c, field, i, slash + 1);
}

static bool check_round_end(check *c, const Migwire__RoundEnd *m)
{
	if (!check_mid(c, "mid", m->mid) || !check_count(c, "deleted", m->n_deleted, MIG__MAX_FILES) ||
	    !check_count(c, "sent", m->n_sent, MIG__MAX_FILES))
		return false;
	for (size_t i = 0; i < m->n_deleted; i++)
		if (!check_domain_path(c, "deleted", i, m->deleted[i]))
			return false;
	for (size_t i = 0; i < m->n_sent; i++) {
		if (!check_domain_path(c, "sent", i, m->sent[i]->path))
			return false;
		if (m->sent[i]->digest.len != MIG__DIGEST_LEN)
			return fail(c, "sent[%zu] digest must be %d bytes", i, MIG__DIGEST_LEN);
	}
	return true;
}

static bool check_round_done(check *c, const Migwire__RoundDone *m)
{
	if (!check_mid(c, "mid", m->mid) || (m->has_code && !check_code(c, "code", m->code)) ||
	    !check_reason(c, "reason", m->reason) || !check_count(c, "redo", m->n_redo, MIG__MAX_FILES))
		return false;
	for (size_t i = 0; i < m->n_redo; i++)
		if (!check_domain_path(c, "redo", i, m->redo[i]))
			return false;
	return true;
}

static bool check_users(check *c, const Migwire__ListUsersReply *m)
{
	if (!check_count(c, "users", m->n_users, MIG__MAX_USERS_LISTED))
		return false;
	for (size_t i = 0; i < m->n_users; i++) {
		const Migwire__UserEntry *e = m->users[i];
		if (!mig__valid_user(e->user))
			return fail(c, "users[%zu] user is not a valid user id", i);
		if (!protobuf_c_enum_descriptor_get_value(&migwire__user_state__descriptor,
							  (int)e->state))
			return fail(c, "users[%zu] state has unknown value %d", i, (int)e->state);
	}
	return true;
}

/* Phase names are short lowercase words ("precopy"); unknown ones are
 * accepted so a newer engine may add phases. Absent or "" means none. */
static bool check_phase(check *c, const char *field, const char *phase, bool required)
{
	if (!phase || !*phase) {
		if (required)
			return fail(c, "%s is empty", field);
		return true;
	}
	size_t n = strnlen(phase, WIRE_PHASE_MAX + 1);
	if (n > WIRE_PHASE_MAX)
		return fail(c, "%s is longer than %d bytes", field, WIRE_PHASE_MAX);
	for (size_t i = 0; i < n; i++)
		if ((phase[i] < 'a' || phase[i] > 'z') && phase[i] != '_')
			return fail(c, "%s is not a lowercase word", field);
	return true;
}

static bool check_event(check *c, const Migwire__Event *m)
{
	return check_enum(c, "type", &migwire__event_type__descriptor, (int)m->type) &&
	       check_mid(c, "mid", m->mid) && check_user(c, "user", m->user) &&
	       check_url(c, "peer_url", m->peer_url, false) &&
	       (!m->has_code || check_code(c, "code", m->code)) &&
	       check_reason(c, "reason", m->reason) && check_phase(c, "phase", m->phase, false);
}

static bool check_status(check *c, const Migwire__StatusReply *m)
{
	if (!check_engine_id(c, "engine_id", m->engine_id, true) ||
	    !check_url(c, "url", m->url, false) ||
	    !check_engine_id(c, "library_version", m->library_version, false) ||
	    !check_count(c, "users", m->n_users, WIRE_USER_STATES) ||
	    !check_count(c, "migrations", m->n_migrations, MIG__MAX_USERS_LISTED))
		return false;
	for (size_t i = 0; i < m->n_users; i++)
		if (!protobuf_c_enum_descriptor_get_value(&migwire__user_state__descriptor,
							  (int)m->users[i]->state))
			return fail(c, "users[%zu] state has unknown value %d", i,
				    (int)m->users[i]->state);
	for (size_t i = 0; i < m->n_migrations; i++) {
		const Migwire__MigrationStatus *s = m->migrations[i];
		if (!mig__valid_mid(s->mid))
			return fail(c, "migrations[%zu] mid is not a valid migration id", i);
		if (!mig__valid_user(s->user))
			return fail(c, "migrations[%zu] user is not a valid user id", i);
		if (!check_url(c, "migrations.peer_url", s->peer_url, false) ||
		    !check_phase(c, "migrations.phase", s->phase, true))
			return false;
		if (!protobuf_c_enum_descriptor_get_value(&migwire__migration_role__descriptor,
							  (int)s->role))
			return fail(c, "migrations[%zu] role has unknown value %d", i, (int)s->role);
	}
	return true;
}

/* Announce channel: the orchestrator stores and shows these fields. */
static bool check_announce(check *c, const Migwire__Announce *m)
{
	if (!check_engine_id(c, "engine_id", m->engine_id, true) ||
	    !check_url(c, "url", m->url, true) ||
	    !check_app_url(c, "app_url", m->app_url) ||
	    !check_engine_id(c, "library_version", m->library_version, false))
		return false;
	if (m->heartbeat_ms < 10 || m->heartbeat_ms > 3600000)
		return fail(c, "heartbeat_ms %u is outside 10..3600000", m->heartbeat_ms);
	return true;
}

static bool check_heartbeat(check *c, const Migwire__Heartbeat *m)
{
	if (!check_count(c, "users", m->n_users, WIRE_USER_STATES))
		return false;
	for (size_t i = 0; i < m->n_users; i++)
		if (!protobuf_c_enum_descriptor_get_value(&migwire__user_state__descriptor,
							  (int)m->users[i]->state))
			return fail(c, "users[%zu] state has unknown value %d", i,
				    (int)m->users[i]->state);
	return true;
}

/* Exactly one of mid and user. */
static bool check_cancel(check *c, const Migwire__CancelRequest *m)
{
	bool has_mid = m->mid && *m->mid, has_user = m->user && *m->user;
	if (has_mid == has_user)
		return fail(c, "exactly one of mid and user must be set");
	return has_mid ? check_mid(c, "mid", m->mid) : check_user(c, "user", m->user);
}

/* Replication (replica.c): ids, counts and unique domain names; epochs and
 * sequence numbers are the replica module's to judge against its records. */
static bool check_replica_update(check *c, const Migwire__ReplicaUpdate *m)
{
	if (!check_user(c, "user", m->user) ||
	    !check_count(c, "light", m->n_light, MIG__MAX_DOMAINS))
		return false;
	if (m->epoch == 0 || m->seq == 0)
		return fail(c, "epoch and seq start at 1");
	if (m->keepalive && m->n_light)
		return fail(c, "a keepalive carries no light state");
	const char *names[MIG__MAX_DOMAINS];
	for (size_t i = 0; i < m->n_light; i++) {
		if (!check_domain_name(c, "light", i, m->light[i]->name))
			return false;
		names[i] = m->light[i]->name;
	}
	return check_unique(c, "light", names, m->n_light);
}

/* Paths and domains are judged by replica_files_standby.c, which refuses the update
 * with a reason; here only sizes and the shape of a piece. */
static bool check_replica_file(check *c, const Migwire__ReplicaFile *m)
{
	if (!check_user(c, "user", m->user) ||
	    !check_domain_name(c, "domain", 0, m->domain))
		return false;
	if (m->epoch == 0 || m->seq == 0)
		return fail(c, "epoch and seq start at 1");
	if (!m->path || !*m->path || strnlen(m->path, MIG__PATH_MAX + 1) > MIG__PATH_MAX)
		return fail(c, "path is empty or over %d bytes", MIG__PATH_MAX);
	if (m->data.len > MIG__CHUNK_RAW_MAX)
		return fail(c, "data over %u bytes", MIG__CHUNK_RAW_MAX);
	if (m->remove && (!m->first || !m->last || m->data.len))
		return fail(c, "a removal is one piece without data");
	if (m->last && !m->remove && m->digest.len != MIG__DIGEST_LEN)
		return fail(c, "the last piece needs a %d-byte digest", MIG__DIGEST_LEN);
	if (m->has_tail_from && (!m->first || m->delta || m->remove))
		return fail(c, "tail_from is for the first piece of an appended file");
	return true;
}

static bool check_replica_ack(check *c, const Migwire__ReplicaAck *m)
{
	return check_user(c, "user", m->user) && check_code(c, "code", m->code) &&
	       check_reason(c, "reason", m->reason);
}

static bool check_replicate(check *c, const Migwire__ReplicateRequest *m)
{
	if (!check_user(c, "user", m->user))
		return false;
	if (m->stop)
		return true;
	if (m->interval_ms > 3600000)
		return fail(c, "interval_ms %u is over 3600000", m->interval_ms);
	return check_url(c, "standby_url", m->standby_url, true);
}

static bool check_reply(check *c, const Migwire__Reply *m)
{
	if (!check_code(c, "code", m->code) || !check_reason(c, "reason", m->reason))
		return false;
	if (!m->event)
		return true;
	c->body = "reply event";
	return check_event(c, m->event);
}

static bool check_frame(check *c, const mig__frame *f)
{
	/* A body case with a NULL body cannot come out of protobuf-c, but the
	 * cost of not trusting that is one comparison. */
	if (!f->challenge)
		return fail(c, "body is missing");
	switch (f->body_case) {
	case MIGWIRE__FRAME__BODY_CHALLENGE:
		return check_challenge(c, f->challenge);
	case MIGWIRE__FRAME__BODY_HELLO:
		return check_hello(c, f->hello);
	case MIGWIRE__FRAME__BODY_WELCOME:
		return check_mac(c, "mac", &f->welcome->mac);
	case MIGWIRE__FRAME__BODY_BEGIN:
		return check_begin(c, f->begin);
	case MIGWIRE__FRAME__BODY_ACCEPT:
		return check_mid(c, "mid", f->accept->mid) &&
		       check_app_url(c, "app_url", f->accept->app_url) &&
		       check_url(c, "session_url", f->accept->session_url, false);
	case MIGWIRE__FRAME__BODY_REJECT:
		return check_mid(c, "mid", f->reject->mid) &&
		       check_code(c, "code", f->reject->code) &&
		       check_reason(c, "reason", f->reject->reason);
	case MIGWIRE__FRAME__BODY_PREPARE:
		return check_prepare(c, f->prepare);
	case MIGWIRE__FRAME__BODY_PREPARED:
		return check_mid(c, "mid", f->prepared->mid);
	case MIGWIRE__FRAME__BODY_FAILED:
		return check_mid(c, "mid", f->failed->mid) &&
		       check_code(c, "code", f->failed->code) &&
		       check_reason(c, "reason", f->failed->reason);
	case MIGWIRE__FRAME__BODY_COMMIT:
		return check_mid(c, "mid", f->commit->mid) &&
		       check_user(c, "user", f->commit->user);
	case MIGWIRE__FRAME__BODY_COMMITTED:
		return check_mid(c, "mid", f->committed->mid);
	case MIGWIRE__FRAME__BODY_ABORT:
		return check_mid(c, "mid", f->abort->mid) &&
		       check_reason(c, "reason", f->abort->reason);
	case MIGWIRE__FRAME__BODY_ABORTED:
		return check_mid(c, "mid", f->aborted->mid);
	case MIGWIRE__FRAME__BODY_OUTCOME_QUERY:
		return check_mid(c, "mid", f->outcome_query->mid) &&
		       check_user(c, "user", f->outcome_query->user);
	case MIGWIRE__FRAME__BODY_OUTCOME:
		return check_mid(c, "mid", f->outcome->mid) &&
		       check_enum(c, "state", &migwire__outcome_state__descriptor,
				  (int)f->outcome->state);
	case MIGWIRE__FRAME__BODY_FILE_STREAM:
		return check_file_stream(c, f->file_stream);
	case MIGWIRE__FRAME__BODY_CHUNK:
		return check_chunk(c, f->chunk);
	case MIGWIRE__FRAME__BODY_CREDIT:
		return check_mid(c, "mid", f->credit->mid);
	case MIGWIRE__FRAME__BODY_ROUND_END:
		return check_round_end(c, f->round_end);
	case MIGWIRE__FRAME__BODY_ROUND_DONE:
		return check_round_done(c, f->round_done);
	case MIGWIRE__FRAME__BODY_MIGRATE:
		return check_user(c, "user", f->migrate->user) &&
		       check_url(c, "destination_url", f->migrate->destination_url, true);
	case MIGWIRE__FRAME__BODY_LIST_USERS:
	case MIGWIRE__FRAME__BODY_SUBSCRIBE:
		return true;
	case MIGWIRE__FRAME__BODY_USERS:
		return check_users(c, f->users);
	case MIGWIRE__FRAME__BODY_EVENT:
		return check_event(c, f->event);
	case MIGWIRE__FRAME__BODY_REPLY:
		return check_reply(c, f->reply);
	case MIGWIRE__FRAME__BODY_ATTACH:
		return check_token(c, "token", f->attach->token, true) &&
		       (!f->attach->user || !*f->attach->user ||
			check_user(c, "user", f->attach->user));
	case MIGWIRE__FRAME__BODY_ATTACH_REPLY:
		return check_code(c, "code", f->attach_reply->code) &&
		       check_reason(c, "reason", f->attach_reply->reason) &&
		       (!f->attach_reply->user || !*f->attach_reply->user ||
			check_user(c, "user", f->attach_reply->user)) &&
		       check_engine_id(c, "engine_id", f->attach_reply->engine_id, false) &&
		       check_app_url(c, "app_url", f->attach_reply->app_url) &&
		       check_token(c, "resume_token", f->attach_reply->resume_token, false);
	case MIGWIRE__FRAME__BODY_REDIRECT:
		return check_user(c, "user", f->redirect->user) &&
		       check_url(c, "session_url", f->redirect->session_url, true) &&
		       check_token(c, "token", f->redirect->token, true) &&
		       check_app_url(c, "app_url", f->redirect->app_url) &&
		       check_engine_id(c, "engine_id", f->redirect->engine_id, false);
	case MIGWIRE__FRAME__BODY_SESSION_RENEW:
		return check_token(c, "token", f->session_renew->token, true);
	case MIGWIRE__FRAME__BODY_STATUS_REQUEST:
		return true;
	case MIGWIRE__FRAME__BODY_STATUS:
		return check_status(c, f->status);
	case MIGWIRE__FRAME__BODY_CANCEL:
		return check_cancel(c, f->cancel);
	case MIGWIRE__FRAME__BODY_ANNOUNCE:
		return check_announce(c, f->announce);
	case MIGWIRE__FRAME__BODY_HEARTBEAT:
		return check_heartbeat(c, f->heartbeat);
	case MIGWIRE__FRAME__BODY_REPLICA_UPDATE:
		return check_replica_update(c, f->replica_update);
	case MIGWIRE__FRAME__BODY_REPLICA_ACK:
		return check_replica_ack(c, f->replica_ack);
	case MIGWIRE__FRAME__BODY_REPLICA_FILE:
		return check_replica_file(c, f->replica_file);
	case MIGWIRE__FRAME__BODY_PROMOTE:
		return check_user(c, "user", f->promote->user);
	case MIGWIRE__FRAME__BODY_REPLICATE:
		return check_replicate(c, f->replicate);
	default:
		return fail(c, "frame has unknown body %d", (int)f->body_case);
	}
}

bool mig__wire_check(const mig__frame *f, char *why, size_t why_len)
{
	check c = {.body = mig__wire_body_name(f), .why = why, .why_len = why_len};
	return check_frame(&c, f);
}
