/* Session tokens and the memory of used nonces (see token.h for the layout,
 * which is part of the protocol). The MAC itself is auth.c's. */
#include <string.h>

#include "auth.h"
#include "token.h"

/* ------------------------------------------------------------------ base64url */

static const char b64_alphabet[] =
	"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

static int b64_value(unsigned char ch)
{
	if (ch >= 'A' && ch <= 'Z')
		return ch - 'A';
	if (ch >= 'a' && ch <= 'z')
		return ch - 'a' + 26;
	if (ch >= '0' && ch <= '9')
		return ch - '0' + 52;
	if (ch == '-')
		return 62;
	if (ch == '_')
		return 63;
	return -1;
}

size_t mig__b64url_encode(const uint8_t *in, size_t len, char *out, size_t out_len)
{
	size_t need = len / 3 * 4 + (len % 3 ? len % 3 + 1 : 0);
	if (out_len < need + 1)
		return 0;
	size_t o = 0, i = 0;
	for (; i + 3 <= len; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
		out[o++] = b64_alphabet[v >> 18];
		out[o++] = b64_alphabet[(v >> 12) & 63];
		out[o++] = b64_alphabet[(v >> 6) & 63];
		out[o++] = b64_alphabet[v & 63];
	}
	if (len - i == 1) {
		uint32_t v = (uint32_t)in[i] << 16;
		out[o++] = b64_alphabet[v >> 18];
		out[o++] = b64_alphabet[(v >> 12) & 63];
	} else if (len - i == 2) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
		out[o++] = b64_alphabet[v >> 18];
		out[o++] = b64_alphabet[(v >> 12) & 63];
		out[o++] = b64_alphabet[(v >> 6) & 63];
	}
	out[o] = '\0';
	return o;
}

long mig__b64url_decode(const char *in, size_t len, uint8_t *out, size_t out_len)
{
	if (len % 4 == 1)
		return -1;
	size_t need = len / 4 * 3 + (len % 4 ? len % 4 - 1 : 0);
	if (need > out_len)
		return -1;
	size_t o = 0;
	uint32_t acc = 0;
	unsigned bits = 0;
	for (size_t i = 0; i < len; i++) {
		int v = b64_value((unsigned char)in[i]);
		if (v < 0)
			return -1;
		acc = acc << 6 | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[o++] = (uint8_t)(acc >> bits);
			acc &= (1u << bits) - 1;
		}
	}
	/* Canonical: the unused low bits of the last character are zero. */
	if (acc != 0)
		return -1;
	return (long)o;
}

bool mig__token_text_valid(const char *text)
{
	if (!text)
		return false;
	size_t n = strnlen(text, MIG__TOKEN_B64_MAX + 1);
	if (n == 0 || n > MIG__TOKEN_B64_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if (b64_value((unsigned char)text[i]) < 0)
			return false;
	return true;
}

/* ------------------------------------------------------------------ tokens */

static bool valid_id(const char *s, size_t min)
{
	if (!s)
		return min == 0;
	size_t n = strnlen(s, MIG__ENGINE_ID_MAX + 1);
	if (n < min || n > MIG__ENGINE_ID_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
			return false;
	return true;
}

static size_t put_str8(uint8_t *p, const char *s)
{
	size_t n = s ? strlen(s) : 0;
	p[0] = (uint8_t)n;
	if (n)
		memcpy(p + 1, s, n);
	return 1 + n;
}

int mig__token_mint(const mig__session_key *key, const char *user, const char *target,
		    const char *issuer, uint64_t expiry, char *out, size_t out_len, mig__token *tok)
{
	if (!mig__valid_user(user) || !valid_id(target, 1) || !valid_id(issuer, 0) || !out)
		return MIG_EINVAL;
	uint8_t raw[MIG__TOKEN_RAW_MAX];
	size_t n = 0;
	raw[n++] = MIG__TOKEN_VERSION;
	n += put_str8(raw + n, user);
	n += put_str8(raw + n, target);
	n += put_str8(raw + n, issuer);
	for (int i = 7; i >= 0; i--)
		raw[n++] = (uint8_t)(expiry >> (8 * i));
	uint8_t *nonce = raw + n;
	if (mig__random(nonce, MIG__TOKEN_NONCE_LEN) != 0)
		return MIG_ESYSTEM;
	n += MIG__TOKEN_NONCE_LEN;
	if (mig__auth_session_mac(key, raw, n, raw + n) != 0)
		return MIG_ESYSTEM;
	n += MIG__AUTH_MAC_LEN;
	if (mig__b64url_encode(raw, n, out, out_len) == 0)
		return MIG_EINVAL;
	if (tok) {
		memset(tok, 0, sizeof(*tok));
		mig__strlcpy(tok->user, user, sizeof(tok->user));
		mig__strlcpy(tok->target, target, sizeof(tok->target));
		mig__strlcpy(tok->issuer, issuer ? issuer : "", sizeof(tok->issuer));
		tok->expiry = expiry;
		memcpy(tok->nonce, nonce, MIG__TOKEN_NONCE_LEN);
	}
	return 0;
}

/* Reads a u8-length-prefixed string of min..MIG__ENGINE_ID_MAX printable
 * bytes into dst. */
static bool get_str8(const uint8_t *raw, size_t len, size_t *pos, size_t min, char *dst)
{
	if (*pos >= len)
		return false;
	size_t n = raw[(*pos)++];
	if (n < min || n > MIG__ENGINE_ID_MAX || len - *pos < n)
		return false;
	for (size_t i = 0; i < n; i++)
		if (raw[*pos + i] <= 0x20 || raw[*pos + i] >= 0x7f)
			return false;
	memcpy(dst, raw + *pos, n);
	dst[n] = '\0';
	*pos += n;
	return true;
}

int mig__token_verify(const mig__session_key *key, const char *text, mig__token *tok,
		      const char **why)
{
	const char *dummy;
	if (!why)
		why = &dummy;
	*why = "malformed token";
	if (!mig__token_text_valid(text))
		return MIG_EPROTO;
	uint8_t raw[MIG__TOKEN_RAW_MAX];
	long got = mig__b64url_decode(text, strlen(text), raw, sizeof(raw));
	if (got < (long)MIG__TOKEN_RAW_MIN)
		return MIG_EPROTO;
	size_t len = (size_t)got;
	if (raw[0] != MIG__TOKEN_VERSION) {
		*why = "unsupported token version";
		return MIG_EVERSION;
	}
	mig__token t;
	memset(&t, 0, sizeof(t));
	size_t pos = 1;
	if (!get_str8(raw, len, &pos, 1, t.user) || !get_str8(raw, len, &pos, 1, t.target) ||
	    !get_str8(raw, len, &pos, 0, t.issuer) ||
	    len - pos != 8 + MIG__TOKEN_NONCE_LEN + MIG__AUTH_MAC_LEN)
		return MIG_EPROTO;
	for (int i = 0; i < 8; i++)
		t.expiry = t.expiry << 8 | raw[pos++];
	memcpy(t.nonce, raw + pos, MIG__TOKEN_NONCE_LEN);
	pos += MIG__TOKEN_NONCE_LEN;
	uint8_t mac[MIG__AUTH_MAC_LEN];
	if (mig__auth_session_mac(key, raw, pos, mac) != 0) {
		*why = "internal error checking the token";
		return MIG_ESYSTEM;
	}
	if (!mig__auth_mac_equal(mac, raw + pos)) {
		*why = "bad signature";
		return MIG_EAUTH;
	}
	*why = "";
	if (tok)
		*tok = t;
	return 0;
}

int mig__token_check(const mig__token *t, const char *self, const char *claimed_user,
		     uint64_t now_s, uint64_t max_ahead_s, const mig__nonce_cache *used,
		     const char **why)
{
	if (strcmp(t->target, self) != 0) {
		*why = "token for another engine";
		return MIG_EAUTH;
	}
	if (claimed_user && *claimed_user && strcmp(claimed_user, t->user) != 0) {
		*why = "token is for another user";
		return MIG_EAUTH;
	}
	if (now_s > t->expiry) {
		*why = "token expired";
		return MIG_ETIMEDOUT;
	}
	if (t->expiry > now_s + max_ahead_s) {
		*why = "token expiry too far in the future";
		return MIG_EAUTH;
	}
	if (used && mig__nonce_cache_contains(used, t->nonce, now_s)) {
		*why = "token already used";
		return MIG_EEXIST;
	}
	*why = "";
	return 0;
}

/* ------------------------------------------------------------------ used nonces */

#define NONCE_MIN_BUCKETS 64

static size_t bucket_of(const uint8_t *nonce, size_t nbuckets)
{
	/* Nonces are random and covered by the MAC: their bytes hash well. */
	uint64_t h = 0;
	memcpy(&h, nonce, sizeof(h));
	return (size_t)(h % nbuckets);
}

int mig__nonce_cache_init(mig__nonce_cache *c, size_t max)
{
	memset(c, 0, sizeof(*c));
	c->buckets = mig__calloc(NONCE_MIN_BUCKETS, sizeof(*c->buckets));
	if (!c->buckets)
		return MIG_ENOMEM;
	c->nbuckets = NONCE_MIN_BUCKETS;
	c->max = max;
	return 0;
}

void mig__nonce_cache_destroy(mig__nonce_cache *c)
{
	for (size_t b = 0; c->buckets && b < c->nbuckets; b++) {
		mig__nonce_entry *e = c->buckets[b];
		while (e) {
			mig__nonce_entry *next = e->next;
			mig__free(e);
			e = next;
		}
	}
	mig__free(c->buckets);
	memset(c, 0, sizeof(*c));
}

bool mig__nonce_cache_contains(const mig__nonce_cache *c, const uint8_t *nonce, uint64_t now_s)
{
	for (mig__nonce_entry *e = c->buckets[bucket_of(nonce, c->nbuckets)]; e; e = e->next)
		if (memcmp(e->nonce, nonce, MIG__TOKEN_NONCE_LEN) == 0)
			return e->expiry >= now_s;
	return false;
}

size_t mig__nonce_cache_prune(mig__nonce_cache *c, uint64_t now_s)
{
	size_t n = 0;
	for (size_t b = 0; b < c->nbuckets; b++) {
		for (mig__nonce_entry **pp = &c->buckets[b]; *pp;) {
			mig__nonce_entry *e = *pp;
			if (e->expiry < now_s) {
				*pp = e->next;
				mig__free(e);
				n++;
			} else {
				pp = &e->next;
			}
		}
	}
	c->count -= n;
	return n;
}

static void grow(mig__nonce_cache *c)
{
	size_t nb = c->nbuckets * 2;
	mig__nonce_entry **b = mig__calloc(nb, sizeof(*b));
	if (!b)
		return; /* longer chains, still correct */
	for (size_t i = 0; i < c->nbuckets; i++) {
		mig__nonce_entry *e = c->buckets[i];
		while (e) {
			mig__nonce_entry *next = e->next;
			size_t k = bucket_of(e->nonce, nb);
			e->next = b[k];
			b[k] = e;
			e = next;
		}
	}
	mig__free(c->buckets);
	c->buckets = b;
	c->nbuckets = nb;
}

int mig__nonce_cache_add(mig__nonce_cache *c, const uint8_t *nonce, uint64_t expiry,
			 uint64_t now_s)
{
	if (c->max && c->count >= c->max && mig__nonce_cache_prune(c, now_s) == 0)
		return MIG_EBUSY;
	mig__nonce_entry *e = mig__calloc(1, sizeof(*e));
	if (!e)
		return MIG_ENOMEM;
	memcpy(e->nonce, nonce, MIG__TOKEN_NONCE_LEN);
	e->expiry = expiry;
	size_t k = bucket_of(nonce, c->nbuckets);
	e->next = c->buckets[k];
	c->buckets[k] = e;
	c->count++;
	if (c->count > 2 * c->nbuckets)
		grow(c);
	return 0;
}
