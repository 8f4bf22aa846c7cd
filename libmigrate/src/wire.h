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
 * (libwebsockets needs LWS_PRE; transport.c checks it fits). */
#define MIG__MSG_HEADROOM 32

/* Bounds on repeated fields and sizes beyond the frame cap. */
#define MIG__MAX_DOMAINS 64
#define MIG__MAX_USERS_LISTED 100000
#define MIG__CHUNK_RAW_MAX (1024u * 1024) /* a chunk's data, uncompressed */
#define MIG__NONCE_LEN 32 /* == MIG__AUTH_NONCE_LEN, checked in transport.c */
#define MIG__MAC_LEN 32   /* == MIG__AUTH_MAC_LEN */

/* An encoded message: `len` payload bytes at base + MIG__MSG_HEADROOM. */
typedef struct mig__msg {
	struct mig__msg *next; /* for queues; owned by whoever holds the msg */
	size_t len;
	size_t sent;           /* transport: bytes already written */
	int close_after;       /* transport: close the connection once sent */
	uint8_t base[];        /* MIG__MSG_HEADROOM + len bytes */
} mig__msg;

static inline uint8_t *mig__msg_payload(mig__msg *m)
{
	return m->base + MIG__MSG_HEADROOM;
}

mig__msg *mig__msg_new(size_t len);
void mig__msg_free(mig__msg *m);

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

/* Frees a frame from mig__wire_decode() only (its blocks carry the decode
 * allocator's header). Strings and bytes inside a decoded frame are the
 * frame's: copy what must outlive it, never free them separately. */
void mig__wire_free(mig__frame *frame);

/* Name of the frame's body ("begin", "prepare", ...) for logs. */
const char *mig__wire_body_name(const mig__frame *frame);

/* Deep copy of a mig_event into the wire Event and back are in control.c. */

#endif
