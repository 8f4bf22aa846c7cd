/* The outcome memory (see outcome.h). */
#include <string.h>

#include "outcome.h"

#define CHUNK_SLOTS 128
#define MIN_BUCKETS 64
#define MAX_BUCKETS (1u << 20)

struct mig__outcome_chunk {
	struct mig__outcome_chunk *next;
	unsigned used; /* slots filled, from the start */
	mig__outcome slot[CHUNK_SLOTS];
};

void mig__outcomes_init(mig__outcomes *o)
{
	memset(o, 0, sizeof(*o));
}

/* ------------------------------------------------------------------ interned strings */

static uint32_t hash_bytes(const char *p, size_t len)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	for (size_t i = 0; i < len; i++) {
		h ^= (uint8_t)p[i];
		h *= 16777619u;
	}
	return h;
}

static void strs_grow(mig__outcomes *o)
{
	size_t nb = o->nstrs_buckets ? o->nstrs_buckets * 2 : MIN_BUCKETS;
	if (nb > MAX_BUCKETS)
		return;
	mig__istr **b = mig__calloc(nb, sizeof(*b));
	if (!b)
		return; /* longer chains, still correct */
	for (size_t i = 0; i < o->nstrs_buckets; i++) {
		mig__istr *s = o->strs[i];
		while (s) {
			mig__istr *next = s->next;
			s->next = b[s->hash & (nb - 1)];
			b[s->hash & (nb - 1)] = s;
			s = next;
		}
	}
	mig__free(o->strs);
	o->strs = b;
	o->nstrs_buckets = nb;
}

static mig__istr *strs_lookup(const mig__outcomes *o, const char *p, size_t len, uint32_t h)
{
	if (!o->strs)
		return NULL;
	for (mig__istr *s = o->strs[h & (o->nstrs_buckets - 1)]; s; s = s->next)
		if (s->hash == h && s->len == len && memcmp(s->s, p, len) == 0)
			return s;
	return NULL;
}

/* A reference to the interned copy of the `len` bytes at `p`; NULL on no
 * memory. */
static mig__istr *intern(mig__outcomes *o, const char *p, size_t len)
{
	uint32_t h = hash_bytes(p, len);
	mig__istr *s = strs_lookup(o, p, len, h);
	if (s) {
		s->refs++;
		return s;
	}
	if (!o->strs) {
		strs_grow(o);
		if (!o->strs)
			return NULL;
	}
	s = mig__malloc(sizeof(*s) + len + 1);
	if (!s)
		return NULL;
	s->refs = 1;
	s->hash = h;
	s->len = (uint32_t)len;
	memcpy(s->s, p, len);
	s->s[len] = '\0';
	size_t b = h & (o->nstrs_buckets - 1);
	s->next = o->strs[b];
	o->strs[b] = s;
	o->nstrs++;
	if (o->nstrs > o->nstrs_buckets)
		strs_grow(o);
	return s;
}

static void release(mig__outcomes *o, mig__istr *s)
{
	if (!s || --s->refs)
		return;
	for (mig__istr **pp = &o->strs[s->hash & (o->nstrs_buckets - 1)]; *pp; pp = &(*pp)->next)
		if (*pp == s) {
			*pp = s->next;
			break;
		}
	o->nstrs--;
	mig__free(s);
}

/* ------------------------------------------------------------------ records */

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static bool mid_to_bin(const char *mid, uint8_t out[MIG__OUTCOME_MID_BYTES])
{
	if (!mig__valid_mid(mid))
		return false;
	for (size_t i = 0; i < MIG__OUTCOME_MID_BYTES; i++)
		out[i] = (uint8_t)(hexval(mid[2 * i]) << 4 | hexval(mid[2 * i + 1]));
	return true;
}

static size_t mid_bucket(const uint8_t *mid, size_t nbuckets)
{
	/* Migration ids are random: their first bytes hash well. */
	uint32_t h = (uint32_t)mid[0] | (uint32_t)mid[1] << 8 | (uint32_t)mid[2] << 16 |
		     (uint32_t)mid[3] << 24;
	return h & (nbuckets - 1);
}

/* Runs `body` with `r` set to every live record, oldest first. */
#define FOR_EACH_RECORD(o, r, body)                                                        \
	do {                                                                               \
		unsigned i_ = (o)->head_i;                                                 \
		for (struct mig__outcome_chunk *c_ = (o)->head; c_; c_ = c_->next, i_ = 0) \
			for (; i_ < c_->used; i_++) {                                      \
				mig__outcome *r = &c_->slot[i_];                           \
				body                                                       \
			}                                                                  \
	} while (0)

static void buckets_grow(mig__outcomes *o)
{
	size_t nb = o->nbuckets ? o->nbuckets * 2 : MIN_BUCKETS;
	if (nb > MAX_BUCKETS)
		return;
	mig__outcome **b = mig__calloc(nb, sizeof(*b));
	if (!b)
		return; /* longer chains, still correct */
	FOR_EACH_RECORD(o, r, {
		size_t k = mid_bucket(r->mid, nb);
		r->hash_next = b[k];
		b[k] = r;
	});
	mig__free(o->buckets);
	o->buckets = b;
	o->nbuckets = nb;
}

int mig__outcomes_add(mig__outcomes *o, const mig__outcome_in *in)
{
	uint8_t mid[MIG__OUTCOME_MID_BYTES];
	if (!mid_to_bin(in->mid, mid))
		return MIG_EINVAL;
	if (!o->buckets) {
		buckets_grow(o);
		if (!o->buckets)
			return MIG_ENOMEM;
	}
	mig__istr *dep = NULL;
	if (in->outgoing && in->committed) {
		/* "user\0engine id\0app URL\0session URL" */
		const char *f[4] = {in->user, in->dest_engine_id, in->dest_app_url,
				    in->dest_session_url};
		size_t n[4], total = 0;
		for (int k = 0; k < 4; k++) {
			f[k] = f[k] ? f[k] : "";
			n[k] = strlen(f[k]);
			total += n[k] + 1;
		}
		char stack[MIG__USER_MAX + MIG__ENGINE_ID_MAX + 2 * MIG__URL_MAX + 4];
		char *buf = total <= sizeof(stack) ? stack : mig__malloc(total);
		if (!buf)
			return MIG_ENOMEM;
		size_t len = 0;
		for (int k = 0; k < 4; k++) {
			memcpy(buf + len, f[k], n[k] + 1);
			len += n[k] + 1;
		}
		dep = intern(o, buf, len - 1);
		if (buf != stack)
			mig__free(buf);
		if (!dep)
			return MIG_ENOMEM;
	}
	struct mig__outcome_chunk *c = o->tail;
	if (!c || c->used == CHUNK_SLOTS) {
		c = mig__malloc(sizeof(*c));
		if (!c) {
			release(o, dep);
			return MIG_ENOMEM;
		}
		c->next = NULL;
		c->used = 0;
		if (o->tail)
			o->tail->next = c;
		else
			o->head = c;
		o->tail = c;
	}
	mig__outcome *r = &c->slot[c->used++];
	memset(r, 0, sizeof(*r));
	memcpy(r->mid, mid, sizeof(mid));
	r->departure = dep;
	r->ended_s = (uint32_t)(in->ended_us / 1000000u);
	r->error = (int16_t)(in->error >= INT16_MIN && in->error <= 0 ? in->error : MIG_EUNKNOWN);
	r->outgoing = in->outgoing;
	r->committed = in->committed;
	size_t k = mid_bucket(mid, o->nbuckets);
	r->hash_next = o->buckets[k];
	o->buckets[k] = r;
	o->count++;
	if (o->count > 2 * o->nbuckets)
		buckets_grow(o);
	return 0;
}

const mig__outcome *mig__outcomes_find(const mig__outcomes *o, const char *mid)
{
	uint8_t bin[MIG__OUTCOME_MID_BYTES];
	if (!o->count || !mid_to_bin(mid, bin))
		return NULL;
	for (mig__outcome *r = o->buckets[mid_bucket(bin, o->nbuckets)]; r; r = r->hash_next)
		if (memcmp(r->mid, bin, sizeof(bin)) == 0)
			return r;
	return NULL;
}

const mig__outcome *mig__outcomes_departed(const mig__outcomes *o, const char *user)
{
	const mig__outcome *found = NULL;
	if (!o->nstrs)
		return NULL;
	/* Departures start with the user and its NUL; there are few of them
	 * (one per user and destination): compare each once. */
	const mig__istr *last = NULL;
	bool match = false;
	FOR_EACH_RECORD(o, r, {
		if (r->departure && r->departure != last) {
			last = r->departure;
			match = strcmp(last->s, user) == 0;
		}
		if (r->departure && match)
			found = r;
	});
	return found;
}

/* Forgets the oldest record. */
static void forget_oldest(mig__outcomes *o)
{
	struct mig__outcome_chunk *c = o->head;
	mig__outcome *r = &c->slot[o->head_i];
	for (mig__outcome **pp = &o->buckets[mid_bucket(r->mid, o->nbuckets)]; *pp;
	     pp = &(*pp)->hash_next)
		if (*pp == r) {
			*pp = r->hash_next;
			break;
		}
	release(o, r->departure);
	o->count--;
	if (++o->head_i == c->used) {
		/* Its last record: a full chunk, or the tail emptied. */
		o->head = c->next;
		if (!o->head)
			o->tail = NULL;
		o->head_i = 0;
		mig__free(c);
	}
}

size_t mig__outcomes_expire(mig__outcomes *o, uint64_t now_us, uint64_t ttl_us, size_t max)
{
	size_t n = 0;
	uint64_t now_s = now_us / 1000000u;
	while (o->count) {
		const mig__outcome *r = &o->head->slot[o->head_i];
		/* A migration that ended during this tick may have ended after now. */
		uint64_t age_s = now_s > r->ended_s ? now_s - r->ended_s : 0;
		uint64_t age = age_s * 1000000u;
		if (age <= ttl_us && o->count <= max)
			break;
		forget_oldest(o);
		n++;
	}
	return n;
}

void mig__outcomes_destroy(mig__outcomes *o)
{
	while (o->count)
		forget_oldest(o);
	mig__free(o->buckets);
	mig__free(o->strs);
	mig__outcomes_init(o);
}

void mig__outcome_departure(const mig__outcome *r, const char **user, const char **engine_id,
			    const char **app_url, const char **session_url)
{
	const char **out[4] = {user, engine_id, app_url, session_url};
	const char *p = r->departure ? r->departure->s : "";
	for (int k = 0; k < 4; k++) {
		*out[k] = p;
		if (r->departure)
			p += strlen(p) + 1;
	}
}
