/* The outcome memory: what an engine remembers of each finished migration,
 * so that a repeated BEGIN, PREPARE, COMMIT or ABORT, an OUTCOME_QUERY after
 * a reconnect and a session client that attaches after its user left all
 * get a definite answer (docs/PROTOCOL.md, Invariants, 3).
 *
 * A remembered outcome is a slim, fixed-size record (40 bytes on 64-bit),
 * not the migration's full record (about 750 bytes with its strings): the
 * migration id in binary, the role, the final state and error, the second
 * it ended and, for a migration that took a user away (source, committed),
 * the user and where it went (engine id, app URL, session URL: what the
 * redirect of a client that attaches late needs). Those strings are
 * interned as one "departure": every record of the same user leaving for
 * the same engine shares one refcounted copy. Records sit in chunks of 128
 * in the order they ended (the oldest is forgotten first) and are hashed by
 * migration id.
 *
 * Pure data: no locking (the engine lock guards it), no clock. */
#ifndef MIG_OUTCOME_H
#define MIG_OUTCOME_H

#include "common.h"

#define MIG__OUTCOME_MID_BYTES (MIG__MID_LEN / 2)

/* An interned string, or several NUL-separated ones (a destination). */
typedef struct mig__istr {
	struct mig__istr *next; /* hash chain */
	uint32_t refs;
	uint32_t hash;
	uint32_t len; /* bytes of s, the final NUL excluded */
	char s[];
} mig__istr;

typedef struct mig__outcome {
	struct mig__outcome *hash_next;
	/* Source, committed: "user\0engine id\0app URL\0session URL";
	 * else NULL. */
	mig__istr *departure;
	uint8_t mid[MIG__OUTCOME_MID_BYTES];
	uint32_t ended_s; /* mig__now_us() / 10^6 when the migration ended */
	int16_t error;    /* MIG_E* it ended with (0 for committed) */
	bool outgoing;    /* this engine was the source */
	bool committed;   /* else aborted */
} mig__outcome;

struct mig__outcome_chunk;

typedef struct mig__outcomes {
	struct mig__outcome_chunk *head; /* oldest records */
	struct mig__outcome_chunk *tail; /* where new ones go */
	unsigned head_i;                 /* first live slot of head */
	size_t count;
	mig__outcome **buckets; /* by migration id; NULL until the first record */
	size_t nbuckets;        /* a power of two */
	mig__istr **strs;       /* interned strings */
	size_t nstrs_buckets;   /* a power of two */
	size_t nstrs;
} mig__outcomes;

/* What to remember of a finished migration. */
typedef struct mig__outcome_in {
	const char *mid; /* MIG__MID_LEN lowercase hex digits */
	bool outgoing;
	bool committed;
	int error;
	uint64_t ended_us;
	/* Source, committed (else ignored): the user and its destination.
	 * NULL or "" strings are kept as "". */
	const char *user;
	const char *dest_engine_id;
	const char *dest_app_url;
	const char *dest_session_url;
} mig__outcome_in;

/* A zeroed mig__outcomes is empty and valid; nothing is allocated until the
 * first record. */
void mig__outcomes_init(mig__outcomes *o);
/* Forgets everything and frees all memory; `o` is empty and valid after. */
void mig__outcomes_destroy(mig__outcomes *o);

/* Remembers `in` as the newest record. All or nothing: returns 0, MIG_EINVAL
 * (mid not a migration id) or MIG_ENOMEM (nothing was added). A mid already
 * present is not looked for: the handoff never retires one id twice. */
int mig__outcomes_add(mig__outcomes *o, const mig__outcome_in *in);

/* The record for `mid`, or NULL. Valid until the next add, forget or
 * destroy. */
const mig__outcome *mig__outcomes_find(const mig__outcomes *o, const char *mid);

/* The newest record of a committed migration that took `user` away from
 * this engine, or NULL. Scans every record (a client attaching after its
 * user left: rare). */
const mig__outcome *mig__outcomes_departed(const mig__outcomes *o, const char *user);

/* Forgets the oldest records while there are more than `max` or the oldest
 * ended more than `ttl_us` before `now_us` (to the second). Returns how
 * many it forgot. */
size_t mig__outcomes_expire(mig__outcomes *o, uint64_t now_us, uint64_t ttl_us, size_t max);

/* A record's departure: the user and where it went ("" each for a record
 * without one). */
void mig__outcome_departure(const mig__outcome *r, const char **user, const char **engine_id,
			    const char **app_url, const char **session_url);

#endif
