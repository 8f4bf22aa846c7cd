/* Session tokens: what an app hands its client so the client's reconnect
 * helper can attach to an engine's session channel without the cluster
 * secret (see docs/PROTOCOL.md "Session channel").
 *
 * A token is a compact binary blob, base64url-encoded without padding:
 *
 *   u8   version (1)
 *   u8   n, then n bytes: the user id               (1-128)
 *   u8   n, then n bytes: the target engine's id    (1-128)
 *   u8   n, then n bytes: the issuing engine's id   (0-128)
 *   u64be expiry, unix seconds
 *   16   random nonce (single use: engines remember used ones until expiry)
 *   32   HMAC-SHA256 over every byte above, keyed from the cluster secret
 *        (auth.c: mig__auth_session_key, mig__auth_session_mac)
 *
 * Also here: the bounded memory of used nonces. Pure data, no locking. */
#ifndef MIG_TOKEN_H
#define MIG_TOKEN_H

#include "common.h"

struct mig__session_key; /* auth.h: derived from the cluster secret */

#define MIG__TOKEN_VERSION 1
#define MIG__TOKEN_NONCE_LEN 16
#define MIG__TOKEN_RAW_MAX                                                        \
	(1 + 1 + MIG__USER_MAX + 1 + MIG__ENGINE_ID_MAX + 1 + MIG__ENGINE_ID_MAX + 8 + \
	 MIG__TOKEN_NONCE_LEN + 32)
/* Characters of the base64url form (no padding), without the NUL. */
#define MIG__TOKEN_B64_MAX ((MIG__TOKEN_RAW_MAX * 4 + 2) / 3)
/* Shortest possible token: one-byte user and target, no issuer. */
#define MIG__TOKEN_RAW_MIN (1 + 1 + 1 + 1 + 1 + 1 + 8 + MIG__TOKEN_NONCE_LEN + 32)

typedef struct mig__token {
	char user[MIG__USER_MAX + 1];
	char target[MIG__ENGINE_ID_MAX + 1]; /* the engine that may accept it */
	char issuer[MIG__ENGINE_ID_MAX + 1]; /* the engine that minted it */
	uint64_t expiry;                     /* unix seconds */
	uint8_t nonce[MIG__TOKEN_NONCE_LEN];
} mig__token;

/* Mints a token with a fresh nonce into `out` (base64url + NUL). `tok`, if
 * not NULL, receives the fields. Returns 0, MIG_EINVAL (bad id, out too
 * small: it needs MIG__TOKEN_B64_MAX + 1 at most), MIG_ESYSTEM. */
int mig__token_mint(const struct mig__session_key *key, const char *user,
		    const char *target, const char *issuer, uint64_t expiry, char *out,
		    size_t out_len, mig__token *tok);

/* Decodes `text` and checks its signature (nothing else: expiry, target,
 * user and replay are the caller's). Returns 0 with *tok filled, or
 * MIG_EPROTO ("malformed token"), MIG_EVERSION ("unsupported token
 * version"), MIG_EAUTH ("bad signature"), MIG_ESYSTEM; *why (if not NULL)
 * is set to a static reason. */
int mig__token_verify(const struct mig__session_key *key, const char *text,
		      mig__token *tok, const char **why);

/* True if `text` has the shape of a token: 1..MIG__TOKEN_B64_MAX characters
 * of the base64url alphabet (for wire validation). */
bool mig__token_text_valid(const char *text);

/* base64url without padding. encode: out needs 4*ceil(len/3)+1 bytes at most;
 * returns the characters written, or 0 if out is too small. decode: strict
 * (canonical, no padding, no whitespace); returns the bytes written or -1. */
size_t mig__b64url_encode(const uint8_t *in, size_t len, char *out, size_t out_len);
long mig__b64url_decode(const char *in, size_t len, uint8_t *out, size_t out_len);

/* ------------------------------------------------------------------ used nonces */

struct mig__nonce_cache;

/* What an engine checks of a verified token, in this order, before it looks
 * at its own users: the target is `self`, the client claims the token's user
 * (claimed_user NULL or "" claims nothing), now_s <= expiry <= now_s +
 * max_ahead_s, and the nonce is not in `used`. Returns 0, or the refusal
 * code with *why: MIG_EAUTH "token for another engine", MIG_EAUTH "token is
 * for another user", MIG_ETIMEDOUT "token expired", MIG_EAUTH "token expiry
 * too far in the future", MIG_EEXIST "token already used". */
int mig__token_check(const mig__token *t, const char *self, const char *claimed_user,
		     uint64_t now_s, uint64_t max_ahead_s, const struct mig__nonce_cache *used,
		     const char **why);

typedef struct mig__nonce_entry {
	struct mig__nonce_entry *next;
	uint64_t expiry;
	uint8_t nonce[MIG__TOKEN_NONCE_LEN];
} mig__nonce_entry;

typedef struct mig__nonce_cache {
	mig__nonce_entry **buckets;
	size_t nbuckets;
	size_t count;
	size_t max;
} mig__nonce_cache;

int mig__nonce_cache_init(mig__nonce_cache *c, size_t max);
void mig__nonce_cache_destroy(mig__nonce_cache *c);
/* True if `nonce` was added and has not expired by now_s. */
bool mig__nonce_cache_contains(const mig__nonce_cache *c, const uint8_t *nonce, uint64_t now_s);
/* Remembers `nonce` until `expiry`. Returns 0, MIG_EBUSY (max entries still
 * unexpired), MIG_ENOMEM. */
int mig__nonce_cache_add(mig__nonce_cache *c, const uint8_t *nonce, uint64_t expiry,
			 uint64_t now_s);
/* Forgets expired entries; returns how many. */
size_t mig__nonce_cache_prune(mig__nonce_cache *c, uint64_t now_s);

#endif
