/* The wire module: encoding frames, and turning untrusted bytes into frames
 * the rest of the library may trust (see wire.h). Here: the message and
 * bulk-pool buffers, encoding, and decoding under a byte budget; the
 * validation of every field of a decoded frame is in wire_check.c. */
#include <assert.h>
#include <pthread.h>
#include <stdio.h>

#include "wire.h"
#include "wire_int.h"

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
	if (!mig__wire_check(f, why, why_len)) {
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
