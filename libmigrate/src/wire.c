/* The wire module: encoding frames, and turning untrusted bytes into frames
 * the rest of the library may trust (see wire.h). */
#include <assert.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "digest.h"
#include "files.h"
#include "token.h"
#include "wire.h"

/* Longest engine id and domain type name we accept from a peer. */
#define WIRE_ENGINE_ID_MAX 128
#define WIRE_TYPE_NAME_MAX 256
/* Longest phase name, and how many user states a status may list. */
#define WIRE_PHASE_MAX 32
#define WIRE_USER_STATES 16

/* Decode budget: bytes protobuf-c may hold at once while unpacking a message
 * of len bytes is DECODE_FACTOR * len + DECODE_SLACK. protobuf-c needs up to
 * 64 bytes of scan slabs per field plus the struct, pointer and string of
 * every repeated element, so a legitimate ListUsersReply of
 * MIG__MAX_USERS_LISTED short names costs about 17 bytes per wire byte; a
 * crafted message of empty or unknown fields would cost up to ~50 and is
 * refused instead. */
#define DECODE_FACTOR 24u
#define DECODE_SLACK (64u * 1024)

/* ---------------------------------------------------------------- messages */

/* ---------------------------------------------------------------- pools */

struct mig__pool {
	pthread_mutex_t lock;
	size_t block;
	unsigned keep;
	unsigned refs;   /* the owner's, and one per block in existence */
	bool released;   /* the owner is gone: blocks go back to the heap */
	void **idle;     /* `keep` slots */
	unsigned nidle;
};

/* In front of every block; `pool` NULL: a heap block. */
typedef union pool_hdr {
	mig__pool *pool;
	max_align_t align;
} pool_hdr;

static void pool_destroy(mig__pool *p)
{
	pthread_mutex_destroy(&p->lock);
	mig__free(p->idle);
	mig__free(p);
}

mig__pool *mig__pool_new(size_t block, unsigned keep)
{
	if (block > SIZE_MAX - sizeof(pool_hdr) || !keep)
		return NULL;
	mig__pool *p = mig__calloc(1, sizeof(*p));
	if (!p)
		return NULL;
	p->idle = mig__calloc(keep, sizeof(void *));
	if (!p->idle || pthread_mutex_init(&p->lock, NULL) != 0) {
		mig__free(p->idle);
		mig__free(p);
		return NULL;
	}
	p->block = block;
	p->keep = keep;
	p->refs = 1;
	return p;
}

void mig__pool_release(mig__pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	p->released = true;
	for (unsigned i = 0; i < p->nidle; i++)
		mig__free(p->idle[i]);
	p->refs -= p->nidle + 1;
	p->nidle = 0;
	bool last = p->refs == 0;
	pthread_mutex_unlock(&p->lock);
	if (last)
		pool_destroy(p);
}

void mig__pool_trim(mig__pool *p)
{
	if (!p)
		return;
	pthread_mutex_lock(&p->lock);
	for (unsigned i = 0; i < p->nidle; i++)
		mig__free(p->idle[i]);
	p->refs -= p->nidle;
	p->nidle = 0;
	pthread_mutex_unlock(&p->lock);
}

void *mig__pool_get(mig__pool *p, size_t len)
{
	if (len > SIZE_MAX - sizeof(pool_hdr))
		return NULL;
	pool_hdr *h = NULL;
	if (p && len <= p->block) {
		pthread_mutex_lock(&p->lock);
		if (p->nidle)
			h = p->idle[--p->nidle];
		pthread_mutex_unlock(&p->lock);
		if (!h) {
			h = mig__malloc(sizeof(pool_hdr) + p->block);
			if (!h)
				return NULL;
			pthread_mutex_lock(&p->lock);
			p->refs++;
			pthread_mutex_unlock(&p->lock);
			h->pool = p;
		}
	} else {
		h = mig__malloc(sizeof(pool_hdr) + len);
		if (!h)
			return NULL;
		h->pool = NULL;
	}
	return h + 1;
}

void mig__pool_put(void *block)
{
	if (!block)
		return;
	pool_hdr *h = (pool_hdr *)block - 1;
	mig__pool *p = h->pool;
	if (!p) {
		mig__free(h);
		return;
	}
	pthread_mutex_lock(&p->lock);
	if (!p->released && p->nidle < p->keep) {
		p->idle[p->nidle++] = h;
		pthread_mutex_unlock(&p->lock);
		return;
	}
	bool last = --p->refs == 0;
	pthread_mutex_unlock(&p->lock);
	mig__free(h);
	if (last)
		pool_destroy(p);
}

/* ---------------------------------------------------------------- messages */

static mig__msg *msg_new(mig__pool *pool, size_t len)
{
	if (len > SIZE_MAX - sizeof(mig__msg) - MIG__MSG_HEADROOM - sizeof(pool_hdr))
		return NULL;
	mig__msg *m;
	if (pool)
		m = mig__pool_get(pool, sizeof(mig__msg) + MIG__MSG_HEADROOM + len);
	else
		m = mig__malloc(sizeof(mig__msg) + MIG__MSG_HEADROOM + len);
	if (!m)
		return NULL;
	m->next = NULL;
	m->len = len;
	m->sent = 0;
	m->close_after = 0;
	m->pool = pool;
	return m;
}

mig__msg *mig__msg_new(size_t len)
{
	return msg_new(NULL, len);
}

void mig__msg_free(mig__msg *m)
{
	if (m && m->pool)
		mig__pool_put(m);
	else
		mig__free(m);
}

int mig__wire_encode(const mig__frame *frame, size_t max_len, mig__msg **out)
{
	return mig__wire_encode_pool(frame, max_len, NULL, out);
}

int mig__wire_encode_pool(const mig__frame *frame, size_t max_len, mig__pool *pool,
			  mig__msg **out)
{
	if (!out)
		return MIG_EINVAL;
	*out = NULL;
	if (!frame)
		return MIG_EINVAL;
	size_t n = migwire__frame__get_packed_size(frame);
	if (max_len && n > max_len)
		return MIG_ETOOBIG;
	mig__msg *m = msg_new(pool, n);
	if (!m)
		return MIG_ENOMEM;
	size_t written = migwire__frame__pack(frame, mig__msg_payload(m));
	assert(written == n);
	MIG__UNUSED(written);
	*out = m;
	return 0;
}

/* ---------------------------------------------------------------- allocator */

/* Every block protobuf-c gets carries its size in front, so a free can give
 * the bytes back to the budget without protobuf-c telling us the size, and
 * whether it came from a pool. */
typedef union block_hdr {
	struct {
		size_t size;
		bool pooled;
	} h;
	max_align_t align;
} block_hdr;
/* Decoded fields larger than this come from the decode's pool, if any. */
#define POOLED_MIN (64u * 1024)

/* Per-call state of one unpack; lives on the decoding thread's stack, so
 * concurrent decodes share nothing. */
typedef struct budget {
	size_t left;
	bool over; /* a request was refused because of the budget */
	bool oom;  /* the allocator itself failed */
	mig__pool *pool;
} budget;

static void *budget_alloc(void *data, size_t size)
{
	budget *b = data;
	if (size > SIZE_MAX - sizeof(block_hdr)) {
		if (b)
			b->over = true;
		return NULL;
	}
	size_t total = sizeof(block_hdr) + size;
	if (b && total > b->left) {
		b->over = true;
		return NULL;
	}
	bool pooled = b && b->pool && size > POOLED_MIN;
	block_hdr *h = pooled ? mig__pool_get(b->pool, total) : mig__malloc(total);
	if (!h) {
		if (b)
			b->oom = true;
		return NULL;
	}
	if (b)
		b->left -= total;
	h->h.size = total;
	h->h.pooled = pooled;
	return h + 1;
}

static void budget_free(void *data, void *p)
{
	if (!p)
		return;
	block_hdr *h = (block_hdr *)p - 1;
	budget *b = data;
	if (b)
		b->left += h->h.size;
	if (h->h.pooled)
		mig__pool_put(h);
	else
		mig__free(h);
}

/* Frees decoded frames after the unpack's budget is gone: same block layout,
 * no accounting. Never written, so sharing it between threads is safe. */
static ProtobufCAllocator frame_allocator = {
	.alloc = budget_alloc,
	.free = budget_free,
	.allocator_data = NULL,
};

void mig__wire_free(mig__frame *frame)
{
	if (frame)
		migwire__frame__free_unpacked(frame, &frame_allocator);
}

void *mig__wire_take_bytes(ProtobufCBinaryData *field)
{
	void *data = field->data;
	field->data = NULL;
	field->len = 0;
	return data;
}

void mig__wire_bytes_free(void *data)
{
	budget_free(NULL, data);
}

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

/* ---------------------------------------------------------------- decoding */

/* protobuf-c (1.4) refuses an unknown field whose tag says field number 0
 * when the tag is one byte, but keeps it when the same tag is spelled in
 * more (0x81 0x00: wire type 1, field 0). Field 0 does not exist, and the
 * frame would not even survive its own re-encoding (found by fuzz_frame:
 * tests/fuzz/corpus/fuzz_frame/regress-field-zero), so it is refused at any
 * depth. The schema has no recursive messages, so the depth is small. */
static bool field_numbers_valid(const ProtobufCMessage *m)
{
	for (unsigned i = 0; i < m->n_unknown_fields; i++)
		if (m->unknown_fields[i].tag == 0)
			return false;
	const ProtobufCMessageDescriptor *d = m->descriptor;
	const char *base = (const char *)m;
	for (unsigned i = 0; i < d->n_fields; i++) {
		const ProtobufCFieldDescriptor *fd = &d->fields[i];
		if (fd->type != PROTOBUF_C_TYPE_MESSAGE)
			continue;
		if ((fd->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
		    *(const uint32_t *)(base + fd->quantifier_offset) != fd->id)
			continue; /* another member of the oneof is set */
		if (fd->label == PROTOBUF_C_LABEL_REPEATED) {
			size_t n = *(const size_t *)(base + fd->quantifier_offset);
			ProtobufCMessage *const *v =
				*(ProtobufCMessage *const *const *)(base + fd->offset);
			for (size_t k = 0; k < n; k++)
				if (!field_numbers_valid(v[k]))
					return false;
		} else {
			const ProtobufCMessage *sub =
				*(const ProtobufCMessage *const *)(base + fd->offset);
			if (sub && !field_numbers_valid(sub))
				return false;
		}
	}
	return true;
}

static int decode_fail(char *why, size_t why_len, int err, const char *text)
{
	if (why && why_len)
		mig__strlcpy(why, text, why_len);
	return err;
}

int mig__wire_decode(const uint8_t *data, size_t len, size_t max_len, mig__frame **out, char *why,
		     size_t why_len)
{
	return mig__wire_decode_pool(data, len, max_len, NULL, out, why, why_len);
}

int mig__wire_decode_pool(const uint8_t *data, size_t len, size_t max_len, mig__pool *pool,
			  mig__frame **out, char *why, size_t why_len)
{
	if (why && why_len)
		why[0] = '\0';
	if (!out)
		return decode_fail(why, why_len, MIG_EINVAL, "no output pointer");
	*out = NULL;
	/* protobuf-c keeps lengths and offsets in unsigned int, so even with no
	 * cap a message must stay below 4 GiB. */
	if ((max_len && len > max_len) || len > UINT32_MAX) {
		if (why && why_len)
			snprintf(why, why_len, "frame of %zu bytes is over the %zu-byte cap", len,
				 max_len);
		return MIG_ETOOBIG;
	}
	if (len == 0)
		return decode_fail(why, why_len, MIG_EPROTO, "empty frame");
	if (!data)
		return decode_fail(why, why_len, MIG_EINVAL, "no frame data");

	budget b = {.left = SIZE_MAX, .over = false, .oom = false, .pool = pool};
	if (len <= (SIZE_MAX - DECODE_SLACK) / DECODE_FACTOR)
		b.left = len * DECODE_FACTOR + DECODE_SLACK;
	ProtobufCAllocator alloc = {
		.alloc = budget_alloc,
		.free = budget_free,
		.allocator_data = &b,
	};
	mig__frame *f = migwire__frame__unpack(&alloc, len, data);
	if (!f) {
		if (b.oom)
			return decode_fail(why, why_len, MIG_ENOMEM,
					   "out of memory decoding frame");
		if (b.over)
			return decode_fail(why, why_len, MIG_EPROTO,
					   "frame expands past the decode budget");
		return decode_fail(why, why_len, MIG_EPROTO, "not a valid frame");
	}

	if (!field_numbers_valid(&f->base)) {
		mig__wire_free(f);
		return decode_fail(why, why_len, MIG_EPROTO, "frame has a field numbered 0");
	}
	/* An unknown body (a newer peer's frame kind) lands in the unknown
	 * fields, so it is reported the same way as none at all. */
	if (f->body_case == MIGWIRE__FRAME__BODY__NOT_SET) {
		mig__wire_free(f);
		return decode_fail(why, why_len, MIG_EPROTO, "frame has no body");
	}
	check c = {.body = mig__wire_body_name(f), .why = why, .why_len = why_len};
	if (!check_frame(&c, f)) {
		mig__wire_free(f);
		return MIG_EPROTO;
	}
	*out = f;
	return 0;
}

const char *mig__wire_body_name(const mig__frame *frame)
{
	if (!frame)
		return "none";
	switch (frame->body_case) {
	case MIGWIRE__FRAME__BODY__NOT_SET:
		return "none";
	case MIGWIRE__FRAME__BODY_CHALLENGE:
		return "challenge";
	case MIGWIRE__FRAME__BODY_HELLO:
		return "hello";
	case MIGWIRE__FRAME__BODY_WELCOME:
		return "welcome";
	case MIGWIRE__FRAME__BODY_BEGIN:
		return "begin";
	case MIGWIRE__FRAME__BODY_ACCEPT:
		return "accept";
	case MIGWIRE__FRAME__BODY_REJECT:
		return "reject";
	case MIGWIRE__FRAME__BODY_PREPARE:
		return "prepare";
	case MIGWIRE__FRAME__BODY_PREPARED:
		return "prepared";
	case MIGWIRE__FRAME__BODY_FAILED:
		return "failed";
	case MIGWIRE__FRAME__BODY_COMMIT:
		return "commit";
	case MIGWIRE__FRAME__BODY_COMMITTED:
		return "committed";
	case MIGWIRE__FRAME__BODY_ABORT:
		return "abort";
	case MIGWIRE__FRAME__BODY_ABORTED:
		return "aborted";
	case MIGWIRE__FRAME__BODY_OUTCOME_QUERY:
		return "outcome_query";
	case MIGWIRE__FRAME__BODY_OUTCOME:
		return "outcome";
	case MIGWIRE__FRAME__BODY_FILE_STREAM:
		return "file_stream";
	case MIGWIRE__FRAME__BODY_CHUNK:
		return "chunk";
	case MIGWIRE__FRAME__BODY_CREDIT:
		return "credit";
	case MIGWIRE__FRAME__BODY_ROUND_END:
		return "round_end";
	case MIGWIRE__FRAME__BODY_ROUND_DONE:
		return "round_done";
	case MIGWIRE__FRAME__BODY_MIGRATE:
		return "migrate";
	case MIGWIRE__FRAME__BODY_LIST_USERS:
		return "list_users";
	case MIGWIRE__FRAME__BODY_SUBSCRIBE:
		return "subscribe";
	case MIGWIRE__FRAME__BODY_USERS:
		return "users";
	case MIGWIRE__FRAME__BODY_EVENT:
		return "event";
	case MIGWIRE__FRAME__BODY_REPLY:
		return "reply";
	case MIGWIRE__FRAME__BODY_ATTACH:
		return "attach";
	case MIGWIRE__FRAME__BODY_ATTACH_REPLY:
		return "attach_reply";
	case MIGWIRE__FRAME__BODY_REDIRECT:
		return "redirect";
	case MIGWIRE__FRAME__BODY_SESSION_RENEW:
		return "session_renew";
	case MIGWIRE__FRAME__BODY_STATUS_REQUEST:
		return "status_request";
	case MIGWIRE__FRAME__BODY_STATUS:
		return "status";
	case MIGWIRE__FRAME__BODY_CANCEL:
		return "cancel";
	case MIGWIRE__FRAME__BODY_ANNOUNCE:
		return "announce";
	case MIGWIRE__FRAME__BODY_HEARTBEAT:
		return "heartbeat";
	case MIGWIRE__FRAME__BODY_REPLICA_UPDATE:
		return "replica_update";
	case MIGWIRE__FRAME__BODY_REPLICA_ACK:
		return "replica_ack";
	case MIGWIRE__FRAME__BODY_REPLICA_FILE:
		return "replica_file";
	case MIGWIRE__FRAME__BODY_PROMOTE:
		return "promote";
	case MIGWIRE__FRAME__BODY_REPLICATE:
		return "replicate";
	default:
		return "unknown";
	}
}
