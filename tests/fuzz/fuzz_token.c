/* Fuzz target: session tokens (token.c), which a client presents on the
 * session channel as text.
 *
 * Each input is used twice:
 * 1. as the token text (up to the first NUL): mig__token_verify() under a
 *    fixed key must refuse anything that is not token-shaped with
 *    MIG_EPROTO, and return only documented codes; base64url decoding,
 *    when it accepts, must be the exact inverse of encoding (canonical);
 * 2. as the raw token body, signed with the fixed key and encoded: now the
 *    MAC is right, so the parser behind it is reached on every input. It
 *    must never say "bad signature", and when it accepts, the fields it
 *    returns must re-serialise to exactly the body (the layout in token.h)
 *    and pass the engine's own id and user checks. */
#include <string.h>

#include "auth.h"
#include "fuzz.h"
#include "token.h"

#define TEXT_MAX 1024

static mig__session_key key;
static bool have_key;

static const char secret[] = FUZZ_TOKEN_SECRET;

static void check_text(const char *text)
{
	bool shaped = mig__token_text_valid(text);
	mig__token t;
	const char *why = NULL;
	int rc = mig__token_verify(&key, text, &t, &why);
	FUZZ_CHECK(why != NULL);
	FUZZ_CHECK(rc == 0 || rc == MIG_EPROTO || rc == MIG_EVERSION || rc == MIG_EAUTH);
	if (!shaped)
		FUZZ_CHECK(rc == MIG_EPROTO);
	if (rc == 0)
		FUZZ_CHECK(mig__valid_user(t.user) && t.target[0] != '\0');

	size_t len = strlen(text);
	uint8_t raw[TEXT_MAX];
	long n = mig__b64url_decode(text, len, raw, sizeof(raw));
	if (n >= 0) {
		char back[TEXT_MAX * 2];
		size_t m = mig__b64url_encode(raw, (size_t)n, back, sizeof(back));
		FUZZ_CHECK(m == len);
		FUZZ_CHECK(memcmp(back, text, len) == 0);
	}
}

static size_t put_str8(uint8_t *p, const char *s)
{
	size_t n = strlen(s);
	p[0] = (uint8_t)n;
	memcpy(p + 1, s, n);
	return 1 + n;
}

static void check_body(const uint8_t *body, size_t blen)
{
	uint8_t raw[MIG__TOKEN_RAW_MAX + MIG__AUTH_MAC_LEN];
	if (blen > sizeof(raw) - MIG__AUTH_MAC_LEN)
		blen = sizeof(raw) - MIG__AUTH_MAC_LEN;
	memcpy(raw, body, blen);
	FUZZ_CHECK(mig__auth_session_mac(&key, raw, blen, raw + blen) == 0);
	char text[sizeof(raw) * 4 / 3 + 4];
	size_t tl = mig__b64url_encode(raw, blen + MIG__AUTH_MAC_LEN, text, sizeof(text));
	FUZZ_CHECK(tl > 0);

	mig__token t;
	const char *why = NULL;
	int rc = mig__token_verify(&key, text, &t, &why);
	FUZZ_CHECK(rc == 0 || rc == MIG_EPROTO || rc == MIG_EVERSION);
	if (rc != 0)
		return;
	FUZZ_CHECK(tl <= MIG__TOKEN_B64_MAX);
	FUZZ_CHECK(mig__valid_user(t.user));
	FUZZ_CHECK(t.target[0] != '\0');

	uint8_t again[MIG__TOKEN_RAW_MAX];
	size_t n = 0;
	again[n++] = MIG__TOKEN_VERSION;
	n += put_str8(again + n, t.user);
	n += put_str8(again + n, t.target);
	n += put_str8(again + n, t.issuer);
	for (int i = 7; i >= 0; i--)
		again[n++] = (uint8_t)(t.expiry >> (8 * i));
	memcpy(again + n, t.nonce, MIG__TOKEN_NONCE_LEN);
	n += MIG__TOKEN_NONCE_LEN;
	FUZZ_CHECK(n == blen);
	FUZZ_CHECK(memcmp(again, raw, n) == 0);

	/* The engine's checks on what the parser returned: its own id, the
	 * claimed user, a window around the expiry. */
	why = NULL;
	FUZZ_CHECK(mig__token_check(&t, t.target, t.user, t.expiry, 0, NULL, &why) == 0);
	FUZZ_CHECK(mig__token_check(&t, t.target, NULL, t.expiry == 0 ? 0 : t.expiry - 1, 1, NULL,
				    &why) == 0);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	if (size > TEXT_MAX - 1)
		return 0;
	if (!have_key) {
		FUZZ_CHECK(mig__auth_session_key(secret, sizeof(secret) - 1, &key) == 0);
		have_key = true;
	}
	char text[TEXT_MAX];
	memcpy(text, data, size);
	text[size] = '\0';
	check_text(text);
	check_body(data, size);
	return 0;
}
