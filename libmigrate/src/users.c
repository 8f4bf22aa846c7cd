/* The user table (a chained hash map keyed by user id) and the public user
 * functions. */
#include <string.h>

#include "engine_int.h"

#define INITIAL_BUCKETS 64

/* FNV-1a: user ids are short and not adversarial to the table's owner (the
 * app adds them); incoming ids are bounded by the handshake's secret. */
static size_t hash_id(const char *s)
{
	uint64_t h = 1469598103934665603ull;
	for (; *s; s++) {
		h ^= (unsigned char)*s;
		h *= 1099511628211ull;
	}
	return (size_t)h;
}

int mig__users_init(mig__users *u)
{
	u->buckets = mig__calloc(INITIAL_BUCKETS, sizeof(*u->buckets));
	if (!u->buckets)
		return MIG_ENOMEM;
	u->nbuckets = INITIAL_BUCKETS;
	u->count = 0;
	return 0;
}

void mig__users_destroy(mig__users *u)
{
	if (!u->buckets)
		return;
	for (size_t i = 0; i < u->nbuckets; i++) {
		mig__user *n = u->buckets[i];
		while (n) {
			mig__user *next = n->next;
			mig__free(n->id);
			mig__free(n);
			n = next;
		}
	}
	mig__free(u->buckets);
	u->buckets = NULL;
	u->nbuckets = u->count = 0;
}

mig__user *mig__users_find(mig__users *u, const char *id)
{
	for (mig__user *n = u->buckets[hash_id(id) % u->nbuckets]; n; n = n->next)
		if (strcmp(n->id, id) == 0)
			return n;
	return NULL;
}

static void grow(mig__users *u)
{
	size_t nb = u->nbuckets * 2;
	mig__user **b = mig__calloc(nb, sizeof(*b));
	if (!b)
		return; /* a fuller table is slower, not wrong */
	for (size_t i = 0; i < u->nbuckets; i++) {
		mig__user *n = u->buckets[i];
		while (n) {
			mig__user *next = n->next;
			size_t k = hash_id(n->id) % nb;
			n->next = b[k];
			b[k] = n;
			n = next;
		}
	}
	mig__free(u->buckets);
	u->buckets = b;
	u->nbuckets = nb;
}

int mig__users_insert(mig__users *u, const char *id, mig_user_state state, mig__user **out)
{
	if (mig__users_find(u, id))
		return MIG_EEXIST;
	if (u->count >= u->nbuckets)
		grow(u);
	mig__user *n = mig__calloc(1, sizeof(*n));
	if (!n)
		return MIG_ENOMEM;
	n->id = mig__strdup(id);
	if (!n->id) {
		mig__free(n);
		return MIG_ENOMEM;
	}
	n->state = state;
	size_t k = hash_id(id) % u->nbuckets;
	n->next = u->buckets[k];
	u->buckets[k] = n;
	u->count++;
	if (out)
		*out = n;
	return 0;
}

void mig__users_remove(mig__users *u, const char *id)
{
	for (mig__user **pp = &u->buckets[hash_id(id) % u->nbuckets]; *pp; pp = &(*pp)->next) {
		if (strcmp((*pp)->id, id) == 0) {
			mig__user *n = *pp;
			*pp = n->next;
			mig__free(n->id);
			mig__free(n);
			u->count--;
			return;
		}
	}
}

size_t mig__users_count_states(const mig__users *u, Migwire__UserCount uc[MIG_USER_PARKED + 1],
			       Migwire__UserCount *ucp[MIG_USER_PARKED + 1])
{
	uint32_t counts[MIG_USER_PARKED + 1] = {0};
	for (size_t b = 0; b < u->nbuckets; b++)
		for (const mig__user *n = u->buckets[b]; n; n = n->next)
			if ((unsigned)n->state <= MIG_USER_PARKED)
				counts[n->state]++;
	size_t nu = 0;
	for (int st = 0; st <= MIG_USER_PARKED; st++) {
		if (!counts[st])
			continue;
		migwire__user_count__init(&uc[nu]);
		uc[nu].state = (Migwire__UserState)st;
		uc[nu].count = counts[st];
		ucp[nu] = &uc[nu];
		nu++;
	}
	return nu;
}

/* ------------------------------------------------------------------ public */

MIG_EXPORT int mig_user_add(mig_engine *e, const char *user)
{
	if (!e || !mig__valid_user(user))
		return MIG_EINVAL;
	pthread_mutex_lock(&e->lock);
	int rc = mig__users_insert(&e->users, user, MIG_USER_ACTIVE, NULL);
	if (rc == MIG_EEXIST)
		mig__engine_set_error(e, "user %s is already on this engine", user);
	pthread_mutex_unlock(&e->lock);
	return rc;
}

MIG_EXPORT int mig_user_remove(mig_engine *e, const char *user)
{
	if (!e || !mig__valid_user(user))
		return MIG_EINVAL;
	int rc = 0;
	pthread_mutex_lock(&e->lock);
	mig__user *u = mig__users_find(&e->users, user);
	if (!u) {
		rc = MIG_ENOUSER;
	} else if (u->state != MIG_USER_ACTIVE) {
		mig__engine_set_error(e, "user %s is migrating", user);
		rc = MIG_EBUSY;
	} else {
		mig__users_remove(&e->users, user);
		mig__session_user_left(e, user); /* its clients have nowhere to go */
	}
	pthread_mutex_unlock(&e->lock);
	return rc;
}

MIG_EXPORT mig_user_state mig_user_get_state(mig_engine *e, const char *user)
{
	if (!e || !mig__valid_user(user))
		return MIG_USER_ABSENT;
	pthread_mutex_lock(&e->lock);
	mig__user *u = mig__users_find(&e->users, user);
	mig_user_state s = u ? u->state : MIG_USER_ABSENT;
	pthread_mutex_unlock(&e->lock);
	return s;
}

MIG_EXPORT size_t mig_user_count(mig_engine *e)
{
	if (!e)
		return 0;
	pthread_mutex_lock(&e->lock);
	size_t n = e->users.count;
	pthread_mutex_unlock(&e->lock);
	return n;
}

struct snapshot_entry {
	char *id;
	mig_user_state state;
};

MIG_EXPORT int mig_user_foreach(mig_engine *e,
				int (*fn)(const char *user, mig_user_state state, void *ud),
				void *ud)
{
	if (!e || !fn)
		return MIG_EINVAL;
	pthread_mutex_lock(&e->lock);
	size_t n = e->users.count, i = 0;
	struct snapshot_entry *snap = mig__calloc(n ? n : 1, sizeof(*snap));
	if (!snap) {
		pthread_mutex_unlock(&e->lock);
		return MIG_ENOMEM;
	}
	for (size_t b = 0; b < e->users.nbuckets; b++) {
		for (mig__user *u = e->users.buckets[b]; u; u = u->next) {
			snap[i].id = mig__strdup(u->id);
			snap[i].state = u->state;
			if (!snap[i].id) {
				for (size_t k = 0; k < i; k++)
					mig__free(snap[k].id);
				mig__free(snap);
				pthread_mutex_unlock(&e->lock);
				return MIG_ENOMEM;
			}
			i++;
		}
	}
	pthread_mutex_unlock(&e->lock);
	int visited = 0;
	bool stop = false;
	for (size_t k = 0; k < n; k++) {
		if (!stop) {
			visited++;
			stop = fn(snap[k].id, snap[k].state, ud) != 0;
		}
		mig__free(snap[k].id);
	}
	mig__free(snap);
	return visited;
}
