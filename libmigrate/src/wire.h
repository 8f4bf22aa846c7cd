/* The wire module: the one place where untrusted bytes become frames.
 *
 * mig__wire_decode() parses a WebSocket message with protobuf-c under a byte
 * budget (no amplification), then validates every field the rest of the
 * library relies on: ids, lengths, counts, nonces. Code outside this module
 * reads only frames that passed it. Frames are the generated protobuf-c
 * structs (typedef'd below); building them is done with the generated INIT
 * macros, and encoding only through mig__wire_encode(). */
#ifndef MIG_WIRE_H
#define MIG_WIRE_H

#include "common.h"
#include "migrate.pb-c.h"

typedef Migwire__Frame mig__frame;

/* Bytes reserved in front of every encoded message for the transport
 * (libwebsockets needs LWS_PRE; transport_ws.c checks it fits). */
#define MIG__MSG_HEADROOM 32

/* Bounds on repeated fields and sizes beyond the frame cap. */
#define MIG__MAX_DOMAINS 64
#define MIG__MAX_USERS_LISTED 100000
#define MIG__CHUNK_RAW_MAX (1024u * 1024) /* a chunk's data, uncompressed */
/* The blocks of the bulk pools (mig__pool): a file chunk as the source
 * sends it (xfer_int.h, XFER_CHUNK_BYTES) with room for its frame. */
#define MIG__POOL_BLOCK (256u * 1024 + 1024)
#define MIG__NONCE_LEN 32 /* == MIG__AUTH_NONCE_LEN, checked in transport_ws.c */
#define MIG__MAC_LEN 32   /* == MIG__AUTH_MAC_LEN */

/* An encoded message: `len` payload bytes at base + MIG__MSG_HEADROOM. */
typedef struct mig__msg {
	struct mig__msg *next; /* for queues; owned by whoever holds the msg */
	size_t len;
	size_t sent;           /* transport: bytes already written */
	int close_after;       /* transport: close the connection once sent */
	struct mig__pool *pool; /* where mig__msg_free() returns it; NULL: the heap */
	uint8_t base[];        /* MIG__MSG_HEADROOM + len bytes */
} mig__msg;

static inline uint8_t *mig__msg_payload(mig__msg *m)
{
	return m->base + MIG__MSG_HEADROOM;
}

mig__msg *mig__msg_new(size_t len);
/* Frees a message, or gives it back to its pool. Accepts NULL. Any thread. */
void mig__msg_free(mig__msg *m);

/* A pool of equal blocks for a bulk stream's messages and chunks, which one
 * thread allocates and another frees, hundreds per second: from the heap,
 * each such block of a few hundred KiB was a fresh mapping or trimmed
 * memory, so every one of its pages faulted again when it was written (a
 * fifth of both engines' CPU in a fresh file transfer). A pool keeps up to
 * `keep` spent blocks of `block` bytes for reuse. The owner drops it with
 * mig__pool_release(); blocks still out (messages in the transport's
 * queues) return to the heap when freed, and the last one frees the pool.
 * Thread-safe. */
typedef struct mig__pool mig__pool;
/* NULL on no memory (callers then use the heap). */
mig__pool *mig__pool_new(size_t block, unsigned keep);
void mig__pool_release(mig__pool *p);
/* Frees the spare blocks it holds (the end of a bulk transfer). */
void mig__pool_trim(mig__pool *p);
/* A block of at least `len` bytes: from the pool when `p` is not NULL and
 * `len` fits its block size, else from the heap. NULL on no memory. */
void *mig__pool_get(mig__pool *p, size_t len);
/* Gives back a block from mig__pool_get(). Accepts NULL. */
void mig__pool_put(void *block);
/* mig__wire_encode() into a message from `pool` (NULL: the heap). */
int mig__wire_encode_pool(const mig__frame *frame, size_t max_len, mig__pool *pool,
			  mig__msg **out);

/* Encode a frame. Returns 0, MIG_EINVAL (NULL frame or out), MIG_ENOMEM,
 * or MIG_ETOOBIG if the encoding is larger than max_len (0 = no limit). */
int mig__wire_encode(const mig__frame *frame, size_t max_len, mig__msg **out);

/* Decode and validate one message of `len` bytes. `max_len` is the frame
 * cap: a longer message is MIG_ETOOBIG before anything is allocated.
 * Unpacking runs under a memory budget of 24 x len + 64 KiB (a legitimate
 * list of 100,000 users needs ~17.5 x), so crafted input cannot amplify.
 * On failure returns MIG_EPROTO / MIG_ETOOBIG / MIG_ENOMEM / MIG_EINVAL
 * (NULL out, or NULL data with len > 0) and writes a one-line reason into
 * `why` (if not NULL); *out is NULL. */
int mig__wire_decode(const uint8_t *data, size_t len, size_t max_len,
		     mig__frame **out, char *why, size_t why_len);
/* mig__wire_decode(), with the frame's large fields (over 64 KiB) in blocks
 * from `pool` (NULL: the heap). */
int mig__wire_decode_pool(const uint8_t *data, size_t len, size_t max_len, mig__pool *pool,
			  mig__frame **out, char *why, size_t why_len);

/* Frees a frame from mig__wire_decode() only (its blocks carry the decode
 * allocator's header). Strings and bytes inside a decoded frame are the
 * frame's: copy what must outlive it, never free them separately. */
void mig__wire_free(mig__frame *frame);
/* Takes a bytes field out of a decoded frame, which keeps it empty: the
 * data (NULL if it had none) is then the caller's, to free with
 * mig__wire_bytes_free() on any thread (a file chunk's payload goes to the
 * worker that writes it without another copy). */
void *mig__wire_take_bytes(ProtobufCBinaryData *field);
void mig__wire_bytes_free(void *data);

/* Name of the frame's body ("begin", "prepare", ...) for logs. */
const char *mig__wire_body_name(const mig__frame *frame);

/* Deep copy of a mig_event into the wire Event and back are in control.c. */

#endif
