/* Authentication and randomness (OpenSSL): HMAC-SHA256 challenge-response
 * over the cluster secret, nonces and migration ids.
 *
 * The transcript both sides MAC is fixed-layout and length-prefixed, so no
 * two different handshakes produce the same bytes:
 *   "libmigrate-auth-v1" 0x00, role ('C' client proof / 'S' server proof),
 *   u32be protocol_version, u32be channel,
 *   server_nonce[32], client_nonce[32],
 *   u16be len + client engine_id bytes, u16be len + advertised_url bytes. */
#ifndef MIG_AUTH_H
#define MIG_AUTH_H

#include "common.h"

#define MIG__AUTH_NONCE_LEN 32
#define MIG__AUTH_MAC_LEN 32
#define MIG__AUTH_MIN_SECRET 16

typedef struct mig__auth_transcript {
	uint32_t protocol_version;
	uint32_t channel;
	const uint8_t *server_nonce; /* MIG__AUTH_NONCE_LEN bytes */
	const uint8_t *client_nonce; /* MIG__AUTH_NONCE_LEN bytes */
	const char *engine_id;       /* may be NULL ("") */
	const char *advertised_url;  /* may be NULL ("") */
} mig__auth_transcript;

/* Fill `buf` with cryptographically strong random bytes. 0 or MIG_ESYSTEM. */
int mig__random(void *buf, size_t len);

/* A new migration id: 32 lowercase hex digits + NUL. 0 or MIG_ESYSTEM. */
int mig__new_mid(char out[MIG__MID_LEN + 1]);

/* MAC of the transcript for `role` ('C' or 'S'). 0, MIG_ESYSTEM, or
 * MIG_EINVAL (bad role, empty secret, NULL nonce, id/URL over 65535 bytes). */
int mig__auth_mac(const void *secret, size_t secret_len, char role,
		  const mig__auth_transcript *t, uint8_t mac[MIG__AUTH_MAC_LEN]);

/* Constant-time check of a received MAC against the expected one. */
bool mig__auth_verify(const void *secret, size_t secret_len, char role,
		      const mig__auth_transcript *t, const uint8_t *mac,
		      size_t mac_len);

/* Session tokens (token.c holds the layout): HMAC-SHA256 over `data` keyed
 * with HKDF-SHA256(IKM = cluster secret, no salt, info
 * "libmigrate-session-v1"), so a token's key is never the handshake's. An
 * empty secret (allow_insecure) uses the label as IKM: such tokens are
 * forgeable, like everything else on an insecure engine. 0 or MIG_ESYSTEM. */
#define MIG__AUTH_SESSION_LABEL "libmigrate-session-v1"
typedef struct mig__session_key {
	uint8_t k[MIG__AUTH_MAC_LEN];
} mig__session_key;
/* Derives the session token key once (engines keep it). */
int mig__auth_session_key(const void *secret, size_t secret_len, mig__session_key *key);
int mig__auth_session_mac(const mig__session_key *key, const void *data, size_t len,
			  uint8_t mac[MIG__AUTH_MAC_LEN]);
/* Wipes a key. */
void mig__auth_session_key_clear(mig__session_key *key);

/* Constant-time comparison of two MACs. */
bool mig__auth_mac_equal(const uint8_t *a, const uint8_t *b);

#endif
