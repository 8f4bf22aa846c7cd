/* Authentication and randomness with OpenSSL (see auth.h for the transcript
 * layout, which is part of the wire protocol). */
#include <limits.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include "auth.h"

#define AUTH_LABEL "libmigrate-auth-v1"

int mig__random(void *buf, size_t len)
{
	unsigned char *p = buf;
	/* RAND_bytes takes an int; larger requests go in slices. */
	while (len > 0) {
		size_t n = len > (size_t)INT_MAX ? (size_t)INT_MAX : len;
		if (RAND_bytes(p, (int)n) != 1)
			return MIG_ESYSTEM;
		p += n;
		len -= n;
	}
	return 0;
}

int mig__new_mid(char out[MIG__MID_LEN + 1])
{
	static const char hex[] = "0123456789abcdef";
	uint8_t raw[MIG__MID_LEN / 2];
	int rc = mig__random(raw, sizeof(raw));
	if (rc)
		return rc;
	for (size_t i = 0; i < sizeof(raw); i++) {
		out[2 * i] = hex[raw[i] >> 4];
		out[2 * i + 1] = hex[raw[i] & 0x0f];
	}
	out[MIG__MID_LEN] = '\0';
	return 0;
}

static void put_u32be(uint8_t *p, uint32_t v)
{
	p[0] = (uint8_t)(v >> 24);
	p[1] = (uint8_t)(v >> 16);
	p[2] = (uint8_t)(v >> 8);
	p[3] = (uint8_t)v;
}

/* A u16be length prefix then the bytes; NULL is the empty string. */
static int mac_string(EVP_MAC_CTX *ctx, const char *s)
{
	size_t n = s ? strlen(s) : 0;
	if (n > UINT16_MAX)
		return 0;
	uint8_t len[2] = {(uint8_t)(n >> 8), (uint8_t)n};
	if (!EVP_MAC_update(ctx, len, sizeof(len)))
		return 0;
	return n == 0 || EVP_MAC_update(ctx, (const unsigned char *)s, n);
}

static int mac_transcript(EVP_MAC_CTX *ctx, char role, const mig__auth_transcript *t)
{
	/* The label's terminating NUL is part of the transcript. */
	uint8_t head[sizeof(AUTH_LABEL) + 1 + 4 + 4];
	memcpy(head, AUTH_LABEL, sizeof(AUTH_LABEL));
	head[sizeof(AUTH_LABEL)] = (uint8_t)role;
	put_u32be(head + sizeof(AUTH_LABEL) + 1, t->protocol_version);
	put_u32be(head + sizeof(AUTH_LABEL) + 5, t->channel);
	return EVP_MAC_update(ctx, head, sizeof(head)) &&
	       EVP_MAC_update(ctx, t->server_nonce, MIG__AUTH_NONCE_LEN) &&
	       EVP_MAC_update(ctx, t->client_nonce, MIG__AUTH_NONCE_LEN) &&
	       mac_string(ctx, t->engine_id) && mac_string(ctx, t->advertised_url);
}

/* An HMAC-SHA256 context keyed with key, ready for updates; NULL on
 * failure. The context holds its own reference to the algorithm. */
static EVP_MAC_CTX *hmac_sha256_new(const void *key, size_t key_len)
{
	EVP_MAC *hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	EVP_MAC_CTX *ctx = hmac ? EVP_MAC_CTX_new(hmac) : NULL;
	EVP_MAC_free(hmac);
	char digest[] = "SHA256";
	OSSL_PARAM params[] = {
		OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
		OSSL_PARAM_construct_end(),
	};
	if (ctx && !EVP_MAC_init(ctx, key, key_len, params)) {
		EVP_MAC_CTX_free(ctx);
		ctx = NULL;
	}
	return ctx;
}

int mig__auth_mac(const void *secret, size_t secret_len, char role, const mig__auth_transcript *t,
		  uint8_t mac[MIG__AUTH_MAC_LEN])
{
	if (!secret || !secret_len || !t || !t->server_nonce || !t->client_nonce || !mac ||
	    (role != 'C' && role != 'S'))
		return MIG_EINVAL;
	if ((t->engine_id && strlen(t->engine_id) > UINT16_MAX) ||
	    (t->advertised_url && strlen(t->advertised_url) > UINT16_MAX))
		return MIG_EINVAL;

	int rc = MIG_ESYSTEM;
	EVP_MAC_CTX *ctx = hmac_sha256_new(secret, secret_len);
	size_t out_len = 0;
	if (ctx && mac_transcript(ctx, role, t) &&
	    EVP_MAC_final(ctx, mac, &out_len, MIG__AUTH_MAC_LEN) && out_len == MIG__AUTH_MAC_LEN)
		rc = 0;
	EVP_MAC_CTX_free(ctx);
	if (rc)
		OPENSSL_cleanse(mac, MIG__AUTH_MAC_LEN);
	return rc;
}

bool mig__auth_verify(const void *secret, size_t secret_len, char role,
		      const mig__auth_transcript *t, const uint8_t *mac, size_t mac_len)
{
	if (!mac || mac_len != MIG__AUTH_MAC_LEN)
		return false;
	uint8_t expected[MIG__AUTH_MAC_LEN];
	if (mig__auth_mac(secret, secret_len, role, t, expected))
		return false;
	bool ok = CRYPTO_memcmp(expected, mac, MIG__AUTH_MAC_LEN) == 0;
	OPENSSL_cleanse(expected, sizeof(expected));
	return ok;
}

/* ------------------------------------------------------------------ session tokens */

int mig__auth_session_key(const void *secret, size_t secret_len, mig__session_key *out)
{
	uint8_t *key = out->k;
	static const char label[] = MIG__AUTH_SESSION_LABEL;
	if (!secret || !secret_len) {
		secret = label;
		secret_len = sizeof(label) - 1;
	}
	int rc = MIG_ESYSTEM;
	EVP_KDF *kdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
	EVP_KDF_CTX *ctx = kdf ? EVP_KDF_CTX_new(kdf) : NULL;
	if (!ctx)
		goto out;
	char digest[] = "SHA256";
	OSSL_PARAM params[] = {
		OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0),
		OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, (void *)secret, secret_len),
		OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO, (void *)label,
						  sizeof(label) - 1),
		OSSL_PARAM_construct_end(),
	};
	if (EVP_KDF_derive(ctx, key, MIG__AUTH_MAC_LEN, params) == 1)
		rc = 0;
out:
	EVP_KDF_CTX_free(ctx);
	EVP_KDF_free(kdf);
	if (rc)
		OPENSSL_cleanse(key, MIG__AUTH_MAC_LEN);
	return rc;
}

void mig__auth_session_key_clear(mig__session_key *key)
{
	OPENSSL_cleanse(key->k, sizeof(key->k));
}

int mig__auth_session_mac(const mig__session_key *key, const void *data, size_t len,
			  uint8_t mac[MIG__AUTH_MAC_LEN])
{
	int rc = MIG_ESYSTEM;
	EVP_MAC_CTX *ctx = hmac_sha256_new(key->k, sizeof(key->k));
	size_t out_len = 0;
	if (ctx && EVP_MAC_update(ctx, data, len) &&
	    EVP_MAC_final(ctx, mac, &out_len, MIG__AUTH_MAC_LEN) && out_len == MIG__AUTH_MAC_LEN)
		rc = 0;
	EVP_MAC_CTX_free(ctx);
	if (rc)
		OPENSSL_cleanse(mac, MIG__AUTH_MAC_LEN);
	return rc;
}

bool mig__auth_mac_equal(const uint8_t *a, const uint8_t *b)
{
	return CRYPTO_memcmp(a, b, MIG__AUTH_MAC_LEN) == 0;
}
