/* Unit tests of session tokens (token.c, auth.c's session MAC): base64url,
 * the documented byte layout checked against an independent HKDF + HMAC,
 * tampering, keys, the checks an engine applies (target, user, expiry,
 * replay), the bounded memory of used nonces, and wire validation of the
 * session channel's frames. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/kdf.h>

#include "auth.h"
#include "migrate/migrate.h"
#include "token.h"
#include "wire.h"

static const char secret[] = "0123456789abcdef-cluster-secret";
#define SECRET_LEN (sizeof(secret) - 1)
static const char other[] = "another-cluster-secret-fedcba987654";
#define OTHER_LEN (sizeof(other) - 1)

#define NOW 1700000000ull

static mig__session_key key_main, key_other, key_none;

static int derive_keys(void **state)
{
	(void)state;
	assert_int_equal(mig__auth_session_key(secret, SECRET_LEN, &key_main), 0);
	assert_int_equal(mig__auth_session_key(other, OTHER_LEN, &key_other), 0);
	assert_int_equal(mig__auth_session_key(NULL, 0, &key_none), 0);
	return 0;
}

/* ---------------------------------------------------------------- base64url */

static void test_b64url(void **state)
{
	(void)state;
	uint8_t in[64] = {0}, out[64];
	char text[100];
	for (size_t len = 0; len <= sizeof(in); len++) {
		for (size_t i = 0; i < len; i++)
			in[i] = (uint8_t)(i * 37 + len * 11 + 0xf0);
		size_t n = mig__b64url_encode(in, len, text, sizeof(text));
		assert_int_equal(n, strlen(text));
		assert_int_equal(n, len / 3 * 4 + (len % 3 ? len % 3 + 1 : 0));
		assert_null(strpbrk(text, "+/="));
		long got = mig__b64url_decode(text, n, out, sizeof(out));
		assert_int_equal(got, (long)len);
		assert_memory_equal(in, out, len);
	}
	/* RFC 4648 vectors, url alphabet, no padding. */
	assert_int_equal(mig__b64url_encode((const uint8_t *)"foobar", 6, text, sizeof(text)), 8);
	assert_string_equal(text, "Zm9vYmFy");
	mig__b64url_encode((const uint8_t *)"fo", 2, text, sizeof(text));
	assert_string_equal(text, "Zm8");
	const uint8_t hi[3] = {0xfb, 0xff, 0xbf};
	mig__b64url_encode(hi, 3, text, sizeof(text));
	assert_string_equal(text, "-_-_");
	/* Output too small. */
	assert_int_equal(mig__b64url_encode((const uint8_t *)"foobar", 6, text, 8), 0);
	/* Strict decoding. */
	assert_int_equal(mig__b64url_decode("Zm9vYmFy", 8, out, 5), -1); /* too small */
	assert_int_equal(mig__b64url_decode("Zm9vYmE", 7, out, sizeof(out)), 5);
	assert_int_equal(mig__b64url_decode("Zm9vYmF", 7, out, sizeof(out)), -1); /* bits left */
	assert_int_equal(mig__b64url_decode("Zm9vY", 5, out, sizeof(out)), -1); /* 4n+1 */
	assert_int_equal(mig__b64url_decode("Zm8=", 4, out, sizeof(out)), -1);   /* padding */
	assert_int_equal(mig__b64url_decode("Zm+v", 4, out, sizeof(out)), -1);   /* '+' */
	assert_int_equal(mig__b64url_decode("Zm 8", 4, out, sizeof(out)), -1);
	assert_int_equal(mig__b64url_decode("Zm9", 3, out, sizeof(out)), -1); /* bits left */
}

/* ---------------------------------------------------------------- layout */

/* The MAC as docs/PROTOCOL.md describes it, computed with OpenSSL's own
 * HKDF and HMAC, independently of auth.c. */
static void reference_mac(const void *key_material, size_t key_len, const uint8_t *data,
			  size_t len, uint8_t mac[32])
{
	uint8_t key[32];
	EVP_PKEY_CTX *pctx = EVP_PKEY_CTX_new_id(EVP_PKEY_HKDF, NULL);
	assert_non_null(pctx);
	assert_int_equal(EVP_PKEY_derive_init(pctx), 1);
	assert_int_equal(EVP_PKEY_CTX_set_hkdf_md(pctx, EVP_sha256()), 1);
	assert_int_equal(EVP_PKEY_CTX_set1_hkdf_key(pctx, key_material, (int)key_len), 1);
	assert_int_equal(EVP_PKEY_CTX_add1_hkdf_info(pctx, (const unsigned char *)"libmigrate-session-v1",
						     21),
			 1);
	size_t klen = sizeof(key);
	assert_int_equal(EVP_PKEY_derive(pctx, key, &klen), 1);
	EVP_PKEY_CTX_free(pctx);
	unsigned int mlen = 0;
	assert_non_null(HMAC(EVP_sha256(), key, (int)klen, data, len, mac, &mlen));
	assert_int_equal(mlen, 32);
}

static size_t decode_token(const char *text, uint8_t *raw)
{
	long n = mig__b64url_decode(text, strlen(text), raw, MIG__TOKEN_RAW_MAX);
	assert_true(n > 0);
	return (size_t)n;
}

static void test_layout(void **state)
{
	(void)state;
	char text[MIG__TOKEN_B64_MAX + 1];
	mig__token t;
	assert_int_equal(mig__token_mint(&key_main, "alice", "engine-b", "engine-a",
					 NOW + 600, text, sizeof(text), &t),
			 0);
	uint8_t raw[MIG__TOKEN_RAW_MAX];
	size_t n = decode_token(text, raw);
	assert_int_equal(n, 1 + 6 + 9 + 9 + 8 + 16 + 32);
	size_t p = 0;
	assert_int_equal(raw[p++], 1);
	assert_int_equal(raw[p++], 5);
	assert_memory_equal(raw + p, "alice", 5);
	p += 5;
	assert_int_equal(raw[p++], 8);
	assert_memory_equal(raw + p, "engine-b", 8);
	p += 8;
	assert_int_equal(raw[p++], 8);
	assert_memory_equal(raw + p, "engine-a", 8);
	p += 8;
	uint64_t exp = 0;
	for (int i = 0; i < 8; i++)
		exp = exp << 8 | raw[p++];
	assert_int_equal(exp, NOW + 600);
	assert_memory_equal(raw + p, t.nonce, 16);
	p += 16;
	uint8_t mac[32];
	reference_mac(secret, SECRET_LEN, raw, p, mac);
	assert_memory_equal(raw + p, mac, 32);
	/* The insecure key: the label as input keying material. */
	assert_int_equal(mig__token_mint(&key_none, "alice", "engine-b", "", NOW, text, sizeof(text),
					 NULL),
			 0);
	n = decode_token(text, raw);
	reference_mac("libmigrate-session-v1", 21, raw, n - 32, mac);
	assert_memory_equal(raw + n - 32, mac, 32);
}

static void test_roundtrip(void **state)
{
	(void)state;
	char text[MIG__TOKEN_B64_MAX + 1];
	mig__token a, b;
	assert_int_equal(mig__token_mint(&key_main, "user-001", "engine-b", "engine-a",
					 NOW + 60, text, sizeof(text), &a),
			 0);
	const char *why = "x";
	assert_int_equal(mig__token_verify(&key_main, text, &b, &why), 0);
	assert_string_equal(why, "");
	assert_string_equal(b.user, "user-001");
	assert_string_equal(b.target, "engine-b");
	assert_string_equal(b.issuer, "engine-a");
	assert_int_equal(b.expiry, NOW + 60);
	assert_memory_equal(a.nonce, b.nonce, 16);
	/* Two tokens for the same thing differ (fresh nonce). */
	char text2[MIG__TOKEN_B64_MAX + 1];
	assert_int_equal(mig__token_mint(&key_main, "user-001", "engine-b", "engine-a",
					 NOW + 60, text2, sizeof(text2), NULL),
			 0);
	assert_string_not_equal(text, text2);
	/* The largest token fits the public bound. */
	char user[MIG__USER_MAX + 1], id[MIG__ENGINE_ID_MAX + 1];
	memset(user, 'u', MIG__USER_MAX);
	user[MIG__USER_MAX] = '\0';
	memset(id, 'e', MIG__ENGINE_ID_MAX);
	id[MIG__ENGINE_ID_MAX] = '\0';
	char big[MIG__TOKEN_B64_MAX + 1];
	assert_int_equal(mig__token_mint(&key_main, user, id, id, UINT64_MAX, big,
					 sizeof(big), NULL),
			 0);
	assert_int_equal(strlen(big), MIG__TOKEN_B64_MAX);
	assert_true(MIG__TOKEN_B64_MAX + 1 <= MIG_SESSION_TOKEN_MAX);
	assert_true(mig__token_text_valid(big));
	assert_int_equal(mig__token_verify(&key_main, big, &b, NULL), 0);
	assert_string_equal(b.user, user);
	/* Too small a buffer, bad ids. */
	assert_int_equal(mig__token_mint(&key_main, "u", "e", "", NOW, text, 20, NULL),
			 MIG_EINVAL);
	assert_int_equal(mig__token_mint(&key_main, "a b", "e", "", NOW, text,
					 sizeof(text), NULL),
			 MIG_EINVAL);
	assert_int_equal(mig__token_mint(&key_main, "u", "", "", NOW, text, sizeof(text),
					 NULL),
			 MIG_EINVAL);
	char longer[MIG__USER_MAX + 2];
	memset(longer, 'u', sizeof(longer) - 1);
	longer[sizeof(longer) - 1] = '\0';
	assert_int_equal(mig__token_mint(&key_main, longer, "e", "", NOW, text,
					 sizeof(text), NULL),
			 MIG_EINVAL);
}

static void test_tampering(void **state)
{
	(void)state;
	char text[MIG__TOKEN_B64_MAX + 1];
	assert_int_equal(mig__token_mint(&key_main, "user-001", "engine-b", "engine-a",
					 NOW + 60, text, sizeof(text), NULL),
			 0);
	const char *why;
	/* Another cluster's key. */
	assert_int_equal(mig__token_verify(&key_other, text, NULL, &why), MIG_EAUTH);
	assert_string_equal(why, "bad signature");
	assert_int_equal(mig__token_verify(&key_none, text, NULL, &why), MIG_EAUTH);
	/* Every character changed: never accepted. */
	size_t n = strlen(text);
	for (size_t i = 0; i < n; i++) {
		char t2[MIG__TOKEN_B64_MAX + 1];
		strcpy(t2, text);
		t2[i] = t2[i] == 'A' ? 'B' : 'A';
		int rc = mig__token_verify(&key_main, t2, NULL, &why);
		assert_int_not_equal(rc, 0);
	}
	/* Every byte flipped in the raw form, re-encoded canonically: the
	 * version byte gives "unsupported", anything else "bad signature" or
	 * "malformed" (a length byte that no longer adds up). */
	uint8_t raw[MIG__TOKEN_RAW_MAX];
	size_t len = decode_token(text, raw);
	int bad_sig = 0;
	for (size_t i = 0; i < len; i++) {
		raw[i] ^= 0x01;
		char t2[MIG__TOKEN_B64_MAX + 1];
		assert_true(mig__b64url_encode(raw, len, t2, sizeof(t2)) > 0);
		int rc = mig__token_verify(&key_main, t2, NULL, &why);
		if (i == 0) {
			assert_int_equal(rc, MIG_EVERSION);
			assert_string_equal(why, "unsupported token version");
		} else {
			assert_true(rc == MIG_EAUTH || rc == MIG_EPROTO);
			bad_sig += rc == MIG_EAUTH;
		}
		raw[i] ^= 0x01;
	}
	assert_true(bad_sig > (int)len / 2);
	/* Truncated, extended, empty, not base64url. */
	char t3[MIG__TOKEN_B64_MAX + 8];
	strcpy(t3, text);
	t3[n - 4] = '\0';
	assert_int_not_equal(mig__token_verify(&key_main, t3, NULL, &why), 0);
	snprintf(t3, sizeof(t3), "%sAAAA", text);
	assert_int_not_equal(mig__token_verify(&key_main, t3, NULL, &why), 0);
	assert_int_equal(mig__token_verify(&key_main, "", NULL, &why), MIG_EPROTO);
	assert_string_equal(why, "malformed token");
	assert_int_equal(mig__token_verify(&key_main, "abc$", NULL, &why), MIG_EPROTO);
	assert_int_equal(mig__token_verify(&key_main, NULL, NULL, &why), MIG_EPROTO);
	assert_false(mig__token_text_valid("abc=def"));
	assert_false(mig__token_text_valid(""));
}

/* ---------------------------------------------------------------- checks */

static void test_checks(void **state)
{
	(void)state;
	mig__nonce_cache used;
	assert_int_equal(mig__nonce_cache_init(&used, 0), 0);
	char text[MIG__TOKEN_B64_MAX + 1];
	mig__token t;
	assert_int_equal(mig__token_mint(&key_main, "alice", "engine-b", "engine-a",
					 NOW + 600, text, sizeof(text), &t),
			 0);
	const char *why;
	assert_int_equal(mig__token_check(&t, "engine-b", "alice", NOW, 3900, &used, &why), 0);
	assert_int_equal(mig__token_check(&t, "engine-b", NULL, NOW, 3900, &used, &why), 0);
	assert_int_equal(mig__token_check(&t, "engine-b", "", NOW, 3900, &used, &why), 0);
	assert_int_equal(mig__token_check(&t, "engine-a", "alice", NOW, 3900, &used, &why),
			 MIG_EAUTH);
	assert_string_equal(why, "token for another engine");
	assert_int_equal(mig__token_check(&t, "engine-b", "bob", NOW, 3900, &used, &why),
			 MIG_EAUTH);
	assert_string_equal(why, "token is for another user");
	/* Valid up to and including its expiry second. */
	assert_int_equal(mig__token_check(&t, "engine-b", "alice", NOW + 600, 3900, &used, &why),
			 0);
	assert_int_equal(mig__token_check(&t, "engine-b", "alice", NOW + 601, 3900, &used, &why),
			 MIG_ETIMEDOUT);
	assert_string_equal(why, "token expired");
	assert_int_equal(mig__token_check(&t, "engine-b", "alice", NOW, 599, &used, &why),
			 MIG_EAUTH);
	assert_string_equal(why, "token expiry too far in the future");
	/* Single use. */
	assert_int_equal(mig__nonce_cache_add(&used, t.nonce, t.expiry, NOW), 0);
	assert_int_equal(mig__token_check(&t, "engine-b", "alice", NOW, 3900, &used, &why),
			 MIG_EEXIST);
	assert_string_equal(why, "token already used");
	/* Once expired it says so, whether or not it is still remembered. */
	assert_int_equal(mig__token_check(&t, "engine-b", "alice", NOW + 700, 3900, &used, &why),
			 MIG_ETIMEDOUT);
	assert_int_equal(mig__nonce_cache_prune(&used, NOW + 700), 1);
	assert_int_equal(mig__token_check(&t, "engine-b", "alice", NOW + 700, 3900, &used, &why),
			 MIG_ETIMEDOUT);
	mig__nonce_cache_destroy(&used);
}

static void test_nonce_cache(void **state)
{
	(void)state;
	mig__nonce_cache c;
	assert_int_equal(mig__nonce_cache_init(&c, 5000), 0);
	uint8_t nonce[MIG__TOKEN_NONCE_LEN];
	/* 4000 nonces, half expiring at NOW+10, half at NOW+100. */
	for (uint32_t i = 0; i < 4000; i++) {
		memset(nonce, 0, sizeof(nonce));
		for (int k = 0; k < 4; k++)
			nonce[k] = (uint8_t)(i * 2654435761u >> (8 * k));
		nonce[8] = (uint8_t)i;
		nonce[9] = (uint8_t)(i >> 8);
		assert_false(mig__nonce_cache_contains(&c, nonce, NOW));
		assert_int_equal(mig__nonce_cache_add(&c, nonce, NOW + (i % 2 ? 100 : 10), NOW), 0);
		assert_true(mig__nonce_cache_contains(&c, nonce, NOW));
	}
	assert_int_equal(c.count, 4000);
	assert_true(c.nbuckets >= 2000); /* it grew */
	/* An expired entry no longer counts even before the prune. */
	memset(nonce, 0, sizeof(nonce));
	assert_true(mig__nonce_cache_contains(&c, nonce, NOW + 10)); /* i = 0, expiry NOW+10 */
	assert_false(mig__nonce_cache_contains(&c, nonce, NOW + 11));
	/* Full: 1000 more fit, then the cap holds while nothing expired. */
	uint8_t extra[MIG__TOKEN_NONCE_LEN];
	memset(extra, 0xee, sizeof(extra));
	for (int i = 0; i < 1000; i++) {
		extra[0] = (uint8_t)i;
		extra[1] = (uint8_t)(i >> 8);
		assert_int_equal(mig__nonce_cache_add(&c, extra, NOW + 50, NOW), 0);
	}
	extra[0] = extra[1] = 0xff;
	assert_int_equal(mig__nonce_cache_add(&c, extra, NOW + 50, NOW), MIG_EBUSY);
	/* Later, the expired half makes room. */
	assert_int_equal(mig__nonce_cache_add(&c, extra, NOW + 50, NOW + 20), 0);
	assert_int_equal(c.count, 3001);
	assert_int_equal(mig__nonce_cache_prune(&c, NOW + 60), 1001);
	assert_int_equal(c.count, 2000);
	assert_int_equal(mig__nonce_cache_prune(&c, NOW + 101), 2000);
	assert_int_equal(c.count, 0);
	mig__nonce_cache_destroy(&c);
}

/* ---------------------------------------------------------------- wire */

static int decode(const mig__frame *f, char *why, size_t why_len)
{
	mig__msg *m = NULL;
	assert_int_equal(mig__wire_encode(f, 0, &m), 0);
	mig__frame *out = NULL;
	int rc = mig__wire_decode(mig__msg_payload(m), m->len, 0, &out, why, why_len);
	mig__msg_free(m);
	mig__wire_free(out);
	return rc;
}

static void test_wire_frames(void **state)
{
	(void)state;
	char tok[MIG__TOKEN_B64_MAX + 1], why[200];
	assert_int_equal(mig__token_mint(&key_main, "alice", "engine-b", "engine-a",
					 NOW, tok, sizeof(tok), NULL),
			 0);
	Migwire__Attach a = MIGWIRE__ATTACH__INIT;
	a.token = tok;
	a.user = "alice";
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_ATTACH;
	f.attach = &a;
	assert_int_equal(decode(&f, why, sizeof(why)), 0);
	a.token = "not a token";
	assert_int_equal(decode(&f, why, sizeof(why)), MIG_EPROTO);
	assert_non_null(strstr(why, "attach: token"));
	a.token = tok;
	a.user = "two words";
	assert_int_equal(decode(&f, why, sizeof(why)), MIG_EPROTO);
	a.user = NULL;
	assert_int_equal(decode(&f, why, sizeof(why)), 0);

	Migwire__Redirect r = MIGWIRE__REDIRECT__INIT;
	r.user = "alice";
	r.session_url = "ws://10.0.0.2:7000";
	r.token = tok;
	r.app_url = "https://edge-2.example/app?x=1";
	r.engine_id = "engine-b";
	f.body_case = MIGWIRE__FRAME__BODY_REDIRECT;
	f.redirect = &r;
	assert_int_equal(decode(&f, why, sizeof(why)), 0);
	r.app_url = "tcp://10.0.0.2:9000";
	assert_int_equal(decode(&f, why, sizeof(why)), 0);
	r.app_url = "no scheme";
	assert_int_equal(decode(&f, why, sizeof(why)), MIG_EPROTO);
	assert_non_null(strstr(why, "app_url"));
	r.app_url = "HTTP://upper";
	assert_int_equal(decode(&f, why, sizeof(why)), MIG_EPROTO);
	r.app_url = NULL;
	r.session_url = "http://10.0.0.2:7000";
	assert_int_equal(decode(&f, why, sizeof(why)), MIG_EPROTO);
	assert_non_null(strstr(why, "session_url"));

	Migwire__AttachReply ar = MIGWIRE__ATTACH_REPLY__INIT;
	ar.code = MIG_EEXIST;
	ar.reason = "token already used";
	f.body_case = MIGWIRE__FRAME__BODY_ATTACH_REPLY;
	f.attach_reply = &ar;
	assert_int_equal(decode(&f, why, sizeof(why)), 0);
	ar.code = 5;
	assert_int_equal(decode(&f, why, sizeof(why)), MIG_EPROTO);
	ar.code = 0;
	ar.resume_token = "%%%";
	assert_int_equal(decode(&f, why, sizeof(why)), MIG_EPROTO);

	Migwire__SessionRenew sr = MIGWIRE__SESSION_RENEW__INIT;
	sr.token = "";
	f.body_case = MIGWIRE__FRAME__BODY_SESSION_RENEW;
	f.session_renew = &sr;
	assert_int_equal(decode(&f, why, sizeof(why)), MIG_EPROTO);
	sr.token = tok;
	assert_int_equal(decode(&f, why, sizeof(why)), 0);

	Migwire__Accept ac = MIGWIRE__ACCEPT__INIT;
	ac.mid = "00112233445566778899aabbccddeeff";
	ac.app_url = "wss://edge.example/app";
	ac.session_url = "ws://127.0.0.1:7000";
	f.body_case = MIGWIRE__FRAME__BODY_ACCEPT;
	f.accept = &ac;
	assert_int_equal(decode(&f, why, sizeof(why)), 0);
	ac.session_url = "tcp://x";
	assert_int_equal(decode(&f, why, sizeof(why)), MIG_EPROTO);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_b64url),     cmocka_unit_test(test_layout),
		cmocka_unit_test(test_roundtrip),  cmocka_unit_test(test_tampering),
		cmocka_unit_test(test_checks),     cmocka_unit_test(test_nonce_cache),
		cmocka_unit_test(test_wire_frames),
	};
	return cmocka_run_group_tests(tests, derive_keys, NULL);
}
