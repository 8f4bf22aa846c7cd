/* Replication of a user's light state (and, through replica_files.c, its
 * file state) to a standby engine, and promotion with epochs
 * (docs/FAILOVER.md, <migrate/replicate.h>).
 *
 * Primary side, per replicated user (struct prim): every interval, or when
 * the app calls mig_replicate_now(), the tick extracts the user's light
 * state while the user is served and hashes it; if it differs from what
 * the standby last acknowledged it sends a ReplicaUpdate with the next
 * sequence number, else a keepalive. One update per user is in flight at a
 * time: a slow standby makes changes coalesce into the next extraction, so
 * memory stays at one frame per user. An update unanswered after the peer
 * timeout is given up and the next one replaces it. With file domains an
 * update first runs a file round on the user's strand (changed files go
 * out as ReplicaFile pieces) and is sent when the round completes.
 *
 * Standby side, per replica (struct repl): an update is checked against the
 * record (sender, epoch, sequence, domains) and installed by swapping in a
 * complete new set of domain blobs, or refused with a reason and nothing
 * changed; an update with files is installed once its files are (on the
 * update's strand), light state and files together at one seq. Promotion
 * moves the replica's files into place and turns the replica into an
 * ACTIVE user through the app's incoming, merge and activate hooks, and
 * leaves a tombstone (the old
 * primary's engine id and the new epoch) so that the old primary's next
 * update is answered "superseded": it then stops serving the user.
 *
 * All of this runs with the engine lock; records are freed only inside
 * dispatch, so a record stays valid while the lock is dropped around an app
 * callback. */
#include <stdio.h>
#include <string.h>

#include "digest.h"
#include "replica.h"
#include "replica_files.h"
#include "migrate/replicate.h"

#define INTERVAL_MIN_MS 10u
#define INTERVAL_MAX_MS 3600000u
/* Light state budget of one update: the frame cap minus room for the
 * envelope (user id, names, numbers). */
#define UPDATE_OVERHEAD 16384u

typedef struct rdomain {
	char *name;
	uint32_t version;
	uint8_t *data;
	size_t len;
} rdomain;

/* Primary: one replicated user. */
typedef struct prim {
	struct prim *next;
	char *user;
	char *url;
	uint64_t interval_us;
	uint64_t epoch;
	uint64_t seq;       /* last full update sent */
	uint64_t acked_seq; /* last full update acknowledged */
	uint64_t updates;
	uint64_t bytes;
	uint64_t next_due_us;
	uint64_t last_ack_wall_us;
	bool dirty;
	bool stop;
	/* The update in flight. */
	bool inflight;
	bool inflight_full;
	uint64_t inflight_seq;
	uint64_t inflight_since_us; /* extraction (the lag is measured from it) */
	uint64_t inflight_sent_us;  /* sent (the peer timeout runs from it) */
	uint64_t inflight_bytes;
	uint8_t inflight_digest[32];
	/* Digest of the state the standby acknowledged last. */
	bool have_digest;
	uint8_t digest[32];
	/* The standby's engine id, from the link its first answer came on
	 * (what a failover token must name); "" until then. */
	char standby_id[MIG__ENGINE_ID_MAX + 1];
	/* The standby promoted the user: deactivate here. */
	bool superseded;
	uint64_t superseded_epoch;
	/* File state (engines with file domains): the round running on the
	 * strand, the light state extracted for it, what the standby holds at
	 * acked_seq and what it will hold once the update in flight is acked. */
	mig__strand *strand;
	mig__rfjob *job;
	mig_buf *job_light;
	uint8_t job_digest[32];
	uint64_t job_extracted_us;
	mig__rfset *acked_files;
	mig__rfset *inflight_files;
} prim;

/* Standby: one user's replica, or after promotion its tombstone. */
typedef struct repl {
	struct repl *next;
	char *user;
	char *primary_id;
	char *primary_url;
	uint64_t epoch;
	uint64_t seq;
	rdomain *domains;
	size_t ndomains;
	uint64_t installed;
	uint64_t bytes;
	uint64_t last_heard_us;
	uint64_t last_install_us;
	uint64_t last_install_wall_us;
	bool promote_requested;
	bool promoted;
	uint64_t promoted_epoch;
	/* File state: the replica copy under ROOT/.mig-replica/<user> is at
	 * `seq`; an update's files are being installed (promotion waits);
	 * a failed install left the copy mixed (no promotion, no delta, until
	 * a whole update arrives). */
	bool has_files;
	bool installing;
	bool files_broken;
} repl;

/* Standby: an update whose files are arriving, then being installed. */
typedef struct rin_rec {
	struct rin_rec *next;
	mig__rfin *in;
	char *sender;
	uint64_t file_bytes; /* ReplicaFile frame bytes received */
	bool finalizing;
	/* The update waiting for its files to be installed. */
	uint64_t conn;
	char *peer;
	char *pid;
	rdomain *nd;
	size_t nnd;
	uint64_t epoch, seq, bytes;
} rin_rec;

struct mig__replica {
	prim *prims;
	repl *repls;
	size_t nrepls;
	rin_rec *rins;
	size_t nrins;
	bool stopped; /* the workers are going away: no new file work */
	mig_replica_event_fn fn;
	void *ud;
	uint64_t auto_promote_us;
};

/* ------------------------------------------------------------------ records */

static struct mig__replica *get_rep(mig_engine *e)
{
	if (!e->replica)
		e->replica = mig__calloc(1, sizeof(*e->replica));
	return e->replica;
}

static void free_domains(rdomain *d, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		mig__free(d[i].name);
		mig__free(d[i].data);
	}
	mig__free(d);
}

static void free_light(mig_buf *b, size_t n)
{
	if (b)
		for (size_t i = 0; i < n; i++)
			mig__free(b[i].data);
	mig__free(b);
}

static void prim_free(mig_engine *e, prim *p)
{
	/* A running round finds no owner when it completes and frees itself. */
	if (p->job)
		mig__rfjob_cancel(p->job);
	if (p->strand)
		mig__strand_release(p->strand);
	free_light(p->job_light, e->ndomains);
	mig__rfset_free(p->acked_files);
	mig__rfset_free(p->inflight_files);
	mig__free(p->user);
	mig__free(p->url);
	mig__free(p);
}

static void repl_free(repl *r)
{
	mig__free(r->user);
	mig__free(r->primary_id);
	mig__free(r->primary_url);
	free_domains(r->domains, r->ndomains);
	mig__free(r);
}

static void rin_free(rin_rec *q)
{
	mig__rfin_free(q->in);
	mig__free(q->sender);
	mig__free(q->peer);
	mig__free(q->pid);
	if (q->nd)
		free_domains(q->nd, q->nnd);
	mig__free(q);
}

static rin_rec *find_rin(struct mig__replica *r, const char *user)
{
	for (rin_rec *q = r ? r->rins : NULL; q; q = q->next)
		if (strcmp(mig__rfin_user(q->in), user) == 0)
			return q;
	return NULL;
}

static void unlink_rin(struct mig__replica *r, rin_rec *q)
{
	for (rin_rec **pp = &r->rins; *pp; pp = &(*pp)->next)
		if (*pp == q) {
			*pp = q->next;
			r->nrins--;
			return;
		}
}

static prim *find_prim(struct mig__replica *r, const char *user)
{
	for (prim *p = r ? r->prims : NULL; p; p = p->next)
		if (strcmp(p->user, user) == 0)
			return p;
	return NULL;
}

static repl *find_repl(struct mig__replica *r, const char *user)
{
	for (repl *x = r ? r->repls : NULL; x; x = x->next)
		if (strcmp(x->user, user) == 0)
			return x;
	return NULL;
}

static void unlink_prim(struct mig__replica *r, prim *p)
{
	for (prim **pp = &r->prims; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			return;
		}
}

static void unlink_repl(struct mig__replica *r, repl *x)
{
	for (repl **pp = &r->repls; *pp; pp = &(*pp)->next)
		if (*pp == x) {
			*pp = x->next;
			r->nrepls--;
			return;
		}
}

void mig__replica_stop(mig_engine *e)
{
	struct mig__replica *r = e->replica;
	if (!r)
		return;
	r->stopped = true;
	for (prim *p = r->prims; p; p = p->next) {
		if (p->job)
			mig__rfjob_cancel(p->job);
		p->job = NULL; /* freed with the worker pool or the event queue */
		if (p->strand)
			mig__strand_release(p->strand);
		p->strand = NULL;
	}
	while (r->rins) {
		rin_rec *q = r->rins;
		r->rins = q->next;
		rin_free(q);
	}
	r->nrins = 0;
}

void mig__replica_free(mig_engine *e)
{
	struct mig__replica *r = e->replica;
	if (!r)
		return;
	mig__replica_stop(e);
	while (r->prims) {
		prim *p = r->prims;
		r->prims = p->next;
		prim_free(e, p);
	}
	while (r->repls) {
		repl *x = r->repls;
		r->repls = x->next;
		repl_free(x);
	}
	mig__free(r);
	e->replica = NULL;
}

/* ------------------------------------------------------------------ events */

typedef struct evargs {
	const char *peer;
	uint64_t epoch, seq, bytes, total, lag;
	int error;
	const char *reason;
} evargs;

static const char *type_name(mig_replica_event_type t)
{
	switch (t) {
	case MIG_REPLICA_ACKED: return "acked";
	case MIG_REPLICA_REFUSED: return "refused by the standby";
	case MIG_REPLICA_SUPERSEDED: return "superseded";
	case MIG_REPLICA_STOPPED: return "replication stopped";
	case MIG_REPLICA_INSTALLED: return "replica installed";
	case MIG_REPLICA_REJECTED: return "update rejected";
	case MIG_REPLICA_PROMOTED: return "promoted";
	case MIG_REPLICA_PROMOTE_FAILED: return "promotion failed";
	}
	return "?";
}

/* Emits with the lock released around the app's callback; the strings are
 * copied first, so the caller may free the record they came from. */
static void emit(mig_engine *e, mig_replica_event_type type, const char *user, const evargs *a)
{
	char u[MIG__USER_MAX + 1], reason[MIG__REASON_MAX];
	mig__strlcpy(u, user, sizeof(u));
	mig__strlcpy(reason, a->reason ? a->reason : "", sizeof(reason));
	char *peer = mig__strdup(a->peer ? a->peer : "");
	mig__engine_log(e,
			type == MIG_REPLICA_ACKED || type == MIG_REPLICA_INSTALLED ? MIG_LOG_DEBUG
			: type == MIG_REPLICA_REFUSED || type == MIG_REPLICA_REJECTED ||
					type == MIG_REPLICA_PROMOTE_FAILED
				? MIG_LOG_WARN
				: MIG_LOG_INFO,
			"replication of user %s: %s (epoch %llu, seq %llu)%s%s", u, type_name(type),
			(unsigned long long)a->epoch, (unsigned long long)a->seq,
			reason[0] ? ": " : "", reason);
	struct mig__replica *r = e->replica;
	if (r && r->fn) {
		mig_replica_event ev = {
			.type = type,
			.user = u,
			.peer_url = peer ? peer : "",
			.epoch = a->epoch,
			.seq = a->seq,
			.bytes = a->bytes,
			.total_bytes = a->total,
			.lag_us = a->lag,
			.error = a->error,
			.reason = reason,
			.time_us = mig__wall_us(),
		};
		mig_replica_event_fn fn = r->fn;
		void *ud = r->ud;
		mig__engine_unlock_for_app(e);
		fn(e, &ev, ud);
		mig__engine_relock(e);
	}
	mig__free(peer);
}

/* ------------------------------------------------------------------ public API */

static uint64_t user_epoch_locked(mig_engine *e, const char *user)
{
	repl *x = find_repl(e->replica, user);
	bool here = mig__users_find(&e->users, user) != NULL;
	if (x && x->promoted && here)
		return x->promoted_epoch;
	prim *p = find_prim(e->replica, user);
	if (p)
		return p->epoch;
	if (here)
		return 1;
	return x ? x->epoch : 0;
}

static int replicate_locked(mig_engine *e, const char *user, const char *url, unsigned interval_ms,
			    char *why, size_t why_len)
{
	bool tls;
	char host[256], path[256];
	int port;
	if (!url || mig__url_parse(url, &tls, host, sizeof(host), &port, path, sizeof(path)) != 0) {
		snprintf(why, why_len, "bad standby URL");
		return MIG_EINVAL;
	}
	if (interval_ms == 0)
		interval_ms = MIG_REPLICATE_INTERVAL_MS_DEFAULT;
	if (interval_ms < INTERVAL_MIN_MS || interval_ms > INTERVAL_MAX_MS) {
		snprintf(why, why_len, "interval %u ms is outside %u..%u", interval_ms,
			 INTERVAL_MIN_MS, INTERVAL_MAX_MS);
		return MIG_EINVAL;
	}
	if (!e->started) {
		snprintf(why, why_len, "the engine is not started");
		return MIG_ESTATE;
	}
	if (e->advertised_url && strcmp(url, e->advertised_url) == 0) {
		snprintf(why, why_len, "the standby cannot be this engine");
		return MIG_EINVAL;
	}
	mig__user *u = mig__users_find(&e->users, user);
	if (!u || u->state != MIG_USER_ACTIVE) {
		snprintf(why, why_len, "user %s is not active here", user);
		return MIG_ENOUSER;
	}
	struct mig__replica *r = get_rep(e);
	if (!r)
		return MIG_ENOMEM;
	prim *old = find_prim(r, user);
	if (old && !old->stop) {
		snprintf(why, why_len, "user %s is already replicated to %s", user, old->url);
		return MIG_EEXIST;
	}
	prim *p = mig__calloc(1, sizeof(*p));
	if (!p || !(p->user = mig__strdup(user)) || !(p->url = mig__strdup(url))) {
		if (p)
			prim_free(e, p);
		return MIG_ENOMEM;
	}
	p->epoch = user_epoch_locked(e, user);
	if (old) {
		/* Stopped but not yet reaped: continue its numbering. */
		p->seq = old->seq;
		if (strcmp(old->url, url) == 0)
			p->acked_seq = old->acked_seq;
	}
	p->interval_us = (uint64_t)interval_ms * 1000u;
	p->dirty = true;
	p->next = r->prims;
	r->prims = p;
	snprintf(why, why_len, "replicating user %s to %s every %u ms", user, url, interval_ms);
	return 0;
}

MIG_EXPORT int mig_replicate(mig_engine *e, const char *user, const char *url,
			     const mig_replicate_options *o)
{
	if (!e || !mig__valid_user(user) || !url)
		return MIG_EINVAL;
	char why[MIG__REASON_MAX];
	pthread_mutex_lock(&e->lock);
	int rc = replicate_locked(e, user, url, o ? o->interval_ms : 0, why, sizeof(why));
	if (rc)
		mig__engine_set_error(e, "%s", why);
	pthread_mutex_unlock(&e->lock);
	if (!rc)
		mig__engine_wake(e);
	return rc;
}

static int mark_prim(mig_engine *e, const char *user, bool stop)
{
	if (!e || !mig__valid_user(user))
		return MIG_EINVAL;
	pthread_mutex_lock(&e->lock);
	prim *p = find_prim(e->replica, user);
	int rc = 0;
	if (!p || p->stop) {
		mig__engine_set_error(e, "user %s is not replicated", user);
		rc = MIG_ENOUSER;
	} else if (stop) {
		p->stop = true;
	} else {
		p->dirty = true;
	}
	pthread_mutex_unlock(&e->lock);
	if (!rc)
		mig__engine_wake(e);
	return rc;
}

MIG_EXPORT int mig_replicate_now(mig_engine *e, const char *user)
{
	return mark_prim(e, user, false);
}

MIG_EXPORT int mig_replicate_stop(mig_engine *e, const char *user)
{
	return mark_prim(e, user, true);
}

MIG_EXPORT int mig_replica_set_handler(mig_engine *e, mig_replica_event_fn fn, void *ud)
{
	if (!e)
		return MIG_EINVAL;
	pthread_mutex_lock(&e->lock);
	struct mig__replica *r = get_rep(e);
	if (r) {
		r->fn = fn;
		r->ud = ud;
	}
	pthread_mutex_unlock(&e->lock);
	return r ? 0 : MIG_ENOMEM;
}

MIG_EXPORT int mig_replica_set_auto_promote(mig_engine *e, unsigned int ms)
{
	if (!e)
		return MIG_EINVAL;
	pthread_mutex_lock(&e->lock);
	struct mig__replica *r = get_rep(e);
	if (r)
		r->auto_promote_us = (uint64_t)ms * 1000u;
	pthread_mutex_unlock(&e->lock);
	if (r)
		mig__engine_wake(e);
	return r ? 0 : MIG_ENOMEM;
}

static int promote_check(mig_engine *e, const char *user, repl **out, char *why, size_t why_len)
{
	repl *x = find_repl(e->replica, user);
	if (!x || x->promoted) {
		snprintf(why, why_len, "no replica of user %s here", user);
		return MIG_ENOUSER;
	}
	if (mig__users_find(&e->users, user)) {
		snprintf(why, why_len, "user %s is already here", user);
		return MIG_EEXIST;
	}
	if (x->files_broken) {
		snprintf(why, why_len,
			 "the replica of user %s has no consistent files (an install failed); "
			 "waiting for a whole update", user);
		return MIG_EIO;
	}
	*out = x;
	return 0;
}

MIG_EXPORT int mig_replica_promote(mig_engine *e, const char *user)
{
	if (!e || !mig__valid_user(user))
		return MIG_EINVAL;
	char why[MIG__REASON_MAX];
	repl *x = NULL;
	pthread_mutex_lock(&e->lock);
	int rc = promote_check(e, user, &x, why, sizeof(why));
	if (rc)
		mig__engine_set_error(e, "%s", why);
	else
		x->promote_requested = true;
	pthread_mutex_unlock(&e->lock);
	if (!rc)
		mig__engine_wake(e);
	return rc;
}

MIG_EXPORT int mig_replica_info_get(mig_engine *e, const char *user, mig_replica_info *info)
{
	if (!e || !mig__valid_user(user) || !info)
		return MIG_EINVAL;
	memset(info, 0, sizeof(*info));
	pthread_mutex_lock(&e->lock);
	int rc = MIG_ENOUSER;
	prim *p = find_prim(e->replica, user);
	repl *x = find_repl(e->replica, user);
	if (p) {
		info->primary = 1;
		info->seq = p->seq;
		info->acked_seq = p->acked_seq;
		info->updates = p->updates;
		info->bytes = p->bytes;
		info->last_us = p->last_ack_wall_us;
		rc = 0;
	} else if (x) {
		info->standby = !x->promoted;
		info->seq = x->seq;
		info->updates = x->installed;
		info->bytes = x->bytes;
		info->last_us = x->last_install_wall_us;
		rc = 0;
	}
	if (!rc)
		info->epoch = user_epoch_locked(e, user);
	pthread_mutex_unlock(&e->lock);
	return rc;
}

MIG_EXPORT int mig_replica_failover_token(mig_engine *e, const char *user, char *out,
					  size_t out_len)
{
	if (!e || !mig__valid_user(user) || !out || out_len < MIG__TOKEN_B64_MAX + 1)
		return MIG_EINVAL;
	out[0] = '\0';
	pthread_mutex_lock(&e->lock);
	int rc = 0;
	prim *p = find_prim(e->replica, user);
	mig__user *u = mig__users_find(&e->users, user);
	if (!p || p->stop || p->superseded || !u || u->state != MIG_USER_ACTIVE) {
		mig__engine_set_error(e, "user %s is not served and replicated here", user);
		rc = MIG_ENOUSER;
	} else if (!p->standby_id[0]) {
		mig__engine_set_error(e, "the standby of user %s has not answered yet", user);
		rc = MIG_ESTATE;
	} else {
		const mig__session_key *key = mig__session_key_get(e);
		rc = key ? mig__token_mint(key, user, p->standby_id, e->engine_id,
					   mig__wall_us() / 1000000u + e->session_ttl_s, out,
					   out_len, NULL)
			 : MIG_ESYSTEM;
		if (rc)
			mig__engine_set_error(e, "cannot mint a failover token: %s",
					      mig_strerror(rc));
	}
	pthread_mutex_unlock(&e->lock);
	return rc;
}

MIG_EXPORT uint64_t mig_user_epoch(mig_engine *e, const char *user)
{
	if (!e || !mig__valid_user(user))
		return 0;
	pthread_mutex_lock(&e->lock);
	uint64_t epoch = user_epoch_locked(e, user);
	pthread_mutex_unlock(&e->lock);
	return epoch;
}

/* ------------------------------------------------------------------ primary */

static void digest_domain(mig__sha256 *h, const char *name, uint32_t version, const mig_buf *b)
{
	uint64_t len = b->len;
	mig__sha256_update(h, name, strlen(name) + 1);
	mig__sha256_update(h, &version, sizeof(version));
	mig__sha256_update(h, &len, sizeof(len));
	if (b->len)
		mig__sha256_update(h, b->data, b->len);
}

static void report_refused(mig_engine *e, prim *p, int err, const char *why)
{
	evargs a = {.peer = p->url, .epoch = p->epoch, .seq = p->seq, .total = p->bytes,
		    .error = err, .reason = why};
	emit(e, MIG_REPLICA_REFUSED, p->user, &a);
}

/* Extracts every light domain of the user into bufs (n = e->ndomains) and
 * their digest into dg. Returns 0 or a MIG_E* with the reason. */
static int extract_light(mig_engine *e, prim *p, mig_buf *bufs, uint8_t dg[32], char *why,
			 size_t why_len)
{
	mig__sha256 *h = mig__sha256_new();
	if (!h) {
		snprintf(why, why_len, "out of memory");
		return MIG_ENOMEM;
	}
	char user[MIG__USER_MAX + 1];
	mig__strlcpy(user, p->user, sizeof(user));
	size_t budget = e->max_frame > UPDATE_OVERHEAD ? e->max_frame - UPDATE_OVERHEAD : 0;
	size_t used = 0;
	int err = 0;
	for (size_t i = 0; i < e->ndomains && !err; i++) {
		mig__domain *d = &e->domains[i];
		bufs[i].max = budget > used ? budget - used : 0;
		mig__engine_unlock_for_app(e);
		int rc = d->extract(e, user, &bufs[i], d->user_data);
		mig__engine_relock(e);
		if (bufs[i].error) {
			err = bufs[i].error;
			snprintf(why, why_len, "light state of domain %s: %s", d->name,
				 err == MIG_ETOOBIG ? "over the frame cap" : mig_strerror(err));
		} else if (rc) {
			err = MIG_ECALLBACK;
			snprintf(why, why_len, "extract of domain %s failed (%d)", d->name, rc);
		} else {
			used += bufs[i].len;
			digest_domain(h, d->name, d->version, &bufs[i]);
		}
	}
	if (!err)
		mig__sha256_peek(h, dg);
	mig__sha256_free(h);
	return err;
}

/* Sends the update: full (with the light state, and for file state the
 * number of ReplicaFile streams that went before it on `conn` against
 * base_seq) if anything changed since the acknowledged one, else a
 * keepalive. conn 0: look the link up. Returns 0 or a MIG_E* with why. */
static int send_built(mig_engine *e, prim *p, const mig_buf *bufs, const uint8_t dg[32],
		      uint64_t extracted_us, bool files, uint32_t streams, uint64_t file_bytes,
		      uint64_t conn, char *why, size_t why_len)
{
	size_t n = e->ndomains;
	bool full = !p->have_digest || memcmp(dg, p->digest, 32) != 0 || streams > 0;
	Migwire__DomainData data[MIG__MAX_DOMAINS];
	Migwire__DomainData *ptrs[MIG__MAX_DOMAINS];
	Migwire__ReplicaUpdate u = MIGWIRE__REPLICA_UPDATE__INIT;
	u.user = p->user;
	u.epoch = p->epoch;
	u.seq = full ? p->seq + 1 : p->acked_seq;
	u.has_time_us = true;
	u.time_us = mig__wall_us();
	if (full) {
		for (size_t i = 0; i < n; i++) {
			migwire__domain_data__init(&data[i]);
			data[i].name = e->domains[i].name;
			data[i].version = e->domains[i].version;
			data[i].data.data = bufs[i].data;
			data[i].data.len = bufs[i].len;
			ptrs[i] = &data[i];
		}
		u.n_light = n;
		u.light = ptrs;
		if (files) {
			u.has_base_seq = true;
			u.base_seq = p->acked_files ? p->acked_seq : 0;
			u.has_files = true;
			u.files = streams;
		}
	} else {
		u.has_keepalive = true;
		u.keepalive = true;
	}
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_REPLICA_UPDATE;
	f.replica_update = &u;
	int rc = conn ? 0 : mig__engine_peer_conn(e, p->url, &conn);
	if (!rc) {
		rc = mig__engine_send(e, conn, &f, NULL, false);
		if (rc >= 0) {
			p->inflight = true;
			p->inflight_full = full;
			p->inflight_seq = u.seq;
			p->inflight_since_us = extracted_us;
			p->inflight_sent_us = mig__now_us();
			p->inflight_bytes = (uint64_t)rc + file_bytes;
			memcpy(p->inflight_digest, dg, 32);
			p->bytes += (uint64_t)rc;
			if (full)
				p->seq = u.seq;
			rc = 0;
		}
	}
	if (rc)
		snprintf(why, why_len, "cannot send to %s: %s", p->url, mig_strerror(rc));
	return rc;
}

/* A file round finished: send the update it belongs to. */
static void round_done(mig_engine *e, mig__rfjob *j)
{
	prim *p = e->replica ? e->replica->prims : NULL;
	while (p && p->job != j)
		p = p->next;
	if (!p) {
		mig__rfjob_free(j); /* replication of the user ended meanwhile */
		return;
	}
	p->job = NULL;
	p->acked_files = mig__rfjob_take_base(j);
	uint32_t streams;
	uint64_t fbytes;
	bool busy, more;
	char why[MIG__REASON_MAX];
	int err = mig__rfjob_result(j, &streams, &fbytes, &busy, &more, why, sizeof(why));
	if (more)
		p->dirty = true; /* the rest goes right after the ack */
	p->bytes += fbytes;
	mig_buf *bufs = p->job_light;
	p->job_light = NULL;
	if (!err && !p->stop && !p->superseded) {
		mig__rfset_free(p->inflight_files);
		p->inflight_files = mig__rfjob_take_next(j);
		err = send_built(e, p, bufs, p->job_digest, p->job_extracted_us, true, streams,
				 fbytes, mig__rfjob_conn(j), why, sizeof(why));
		if (!err && !p->inflight_full) {
			mig__rfset_free(p->inflight_files); /* a keepalive: nothing new */
			p->inflight_files = NULL;
		}
	}
	if (busy)
		mig__engine_log(e, MIG_LOG_DEBUG,
				"replica update of user %s: a file kept changing while read; "
				"it follows at the next update", p->user);
	free_light(bufs, e->ndomains);
	mig__rfjob_free(j);
	if (err)
		report_refused(e, p, err, why);
}

/* Extracts the user's light state and sends a full update if it changed
 * since the acknowledged one, else a keepalive. With file domains the
 * update waits for a round on the user's strand: files that changed since
 * the standby's acknowledged copy go out first (round_done sends it). */
static void send_update(mig_engine *e, prim *p, uint64_t now)
{
	(void)now;
	size_t n = e->ndomains;
	mig_buf *bufs = mig__calloc(n ? n : 1, sizeof(*bufs));
	char why[MIG__REASON_MAX] = "";
	uint8_t dg[32];
	int err = 0;
	if (!bufs) {
		err = MIG_ENOMEM;
		snprintf(why, sizeof(why), "out of memory");
		goto out;
	}
	uint64_t extracted_us = mig__now_us();
	err = extract_light(e, p, bufs, dg, why, sizeof(why));
	if (err)
		goto out;
	if (!e->nfdomains) {
		err = send_built(e, p, bufs, dg, extracted_us, false, 0, 0, 0, why, sizeof(why));
		goto out;
	}
	uint64_t conn = 0;
	err = e->replica->stopped ? MIG_ESTATE : mig__engine_peer_conn(e, p->url, &conn);
	if (!err && !p->strand && !(p->strand = mig__strand_new(e->workers)))
		err = MIG_ENOMEM;
	if (err) {
		snprintf(why, sizeof(why), "cannot send to %s: %s", p->url, mig_strerror(err));
		goto out;
	}
	mig__rfjob *j = mig__rfjob_start(e, p->strand, p->user, p->epoch, p->seq + 1, conn,
					 p->acked_files, round_done);
	if (!j) {
		err = MIG_ENOMEM;
		snprintf(why, sizeof(why), "out of memory");
		goto out;
	}
	p->acked_files = NULL; /* the round holds it until it is done */
	p->job = j;
	p->job_light = bufs;
	bufs = NULL;
	memcpy(p->job_digest, dg, sizeof(dg));
	p->job_extracted_us = extracted_us;
out:
	free_light(bufs, n);
	if (err)
		report_refused(e, p, err, why);
}

static void on_ack(mig_engine *e, uint64_t conn, const Migwire__ReplicaAck *k)
{
	prim *p = find_prim(e->replica, k->user);
	if (!p || !p->inflight || k->seq != p->inflight_seq) {
		mig__engine_log(e, MIG_LOG_INFO, "replica ack for user %s seq %llu not awaited",
				k->user, (unsigned long long)k->seq);
		return;
	}
	p->inflight = false;
	mig__conn_rec *c = mig__engine_conn(e, conn);
	if (c && c->peer_engine_id && c->peer_engine_id[0])
		mig__strlcpy(p->standby_id, c->peer_engine_id, sizeof(p->standby_id));
	uint64_t now = mig__now_us();
	if (k->superseded) {
		p->superseded = true;
		p->superseded_epoch = k->has_epoch ? k->epoch : 0;
		return; /* the tick deactivates the user */
	}
	if (k->code) {
		mig__rfset_free(p->inflight_files);
		p->inflight_files = NULL;
		if (k->has_held_seq && k->held_seq > p->seq)
			p->seq = k->held_seq; /* a restarted primary continues above */
		if (k->code == MIG_EUNKNOWN) {
			/* The standby lost its copy (or holds another): resend
			 * everything, files whole. */
			p->have_digest = false;
			mig__rfset_free(p->acked_files);
			p->acked_files = NULL;
		}
		evargs a = {.peer = p->url, .epoch = p->epoch, .seq = k->seq, .total = p->bytes,
			    .error = k->code, .reason = k->reason};
		emit(e, MIG_REPLICA_REFUSED, p->user, &a);
		return;
	}
	p->last_ack_wall_us = mig__wall_us();
	if (!p->inflight_full)
		return; /* keepalive */
	p->acked_seq = k->seq;
	p->have_digest = true;
	if (p->inflight_files) {
		mig__rfset_free(p->acked_files);
		p->acked_files = p->inflight_files;
		p->inflight_files = NULL;
	}
	memcpy(p->digest, p->inflight_digest, sizeof(p->digest));
	p->updates++;
	evargs a = {.peer = p->url, .epoch = p->epoch, .seq = k->seq, .bytes = p->inflight_bytes,
		    .total = p->bytes, .lag = now - p->inflight_since_us};
	emit(e, MIG_REPLICA_ACKED, p->user, &a);
}

/* The standby promoted the user: stop serving it here, like a source after
 * COMMITTED (pause and release hooks, clients closed). Returns true when
 * done. */
static bool deactivate(mig_engine *e, prim *p)
{
	mig__user *u = mig__users_find(&e->users, p->user);
	if (u && (u->state != MIG_USER_ACTIVE || u->migration)) {
		/* Mid-migration: ask it to stop; the user returns to ACTIVE. */
		if (u->migration)
			u->migration->cancel_requested = true;
		return false;
	}
	char user[MIG__USER_MAX + 1];
	mig__strlcpy(user, p->user, sizeof(user));
	char reason[MIG__REASON_MAX];
	snprintf(reason, sizeof(reason), "the standby %s promoted the user at epoch %llu", p->url,
		 (unsigned long long)p->superseded_epoch);
	evargs a = {.peer = p->url, .epoch = p->superseded_epoch, .seq = p->acked_seq,
		    .total = p->bytes, .error = MIG_ESTATE, .reason = reason};
	char *url = mig__strdup(p->url);
	a.peer = url ? url : "";
	unlink_prim(e->replica, p);
	prim_free(e, p);
	if (u) {
		mig__users_remove(&e->users, user);
		mig__session_user_left(e, user);
		/* As a source does: stop serving (pause), then free (release).
		 * The pause cannot be refused here: the user lives elsewhere. */
		mig__engine_unlock_for_app(e);
		if (e->hooks.pause)
			(void)e->hooks.pause(e, user, e->hooks_user_data);
		if (e->hooks.release)
			e->hooks.release(e, user, e->hooks_user_data);
		mig__engine_relock(e);
	}
	emit(e, MIG_REPLICA_SUPERSEDED, user, &a);
	mig__free(url);
	return true;
}

static uint64_t earliest(uint64_t a, uint64_t b)
{
	return !a ? b : !b ? a : a < b ? a : b;
}

static uint64_t tick_prims(mig_engine *e, uint64_t now)
{
	struct mig__replica *r = e->replica;
	uint64_t next = 0;
	uint64_t timeout = (uint64_t)e->peer_timeout_ms * 1000u;
	for (prim *p = r->prims, *nx; p; p = nx) {
		nx = p->next;
		mig__user *u = mig__users_find(&e->users, p->user);
		if (p->superseded) {
			if (!deactivate(e, p))
				next = earliest(next, now + 10000);
			continue;
		}
		if (p->stop || !u) {
			evargs a = {.peer = p->url, .epoch = p->epoch, .seq = p->acked_seq,
				    .total = p->bytes,
				    .reason = p->stop ? "stopped" : "the user left this engine"};
			char *url = mig__strdup(p->url);
			char user[MIG__USER_MAX + 1];
			mig__strlcpy(user, p->user, sizeof(user));
			a.peer = url ? url : "";
			unlink_prim(r, p);
			prim_free(e, p);
			emit(e, MIG_REPLICA_STOPPED, user, &a);
			mig__free(url);
			continue;
		}
		if (p->job)
			continue; /* a file round runs; its completion sends */
		if (p->inflight) {
			if (now < p->inflight_sent_us + timeout) {
				next = earliest(next, p->inflight_sent_us + timeout);
				continue;
			}
			mig__engine_log(e, MIG_LOG_WARN,
					"replica update %llu of user %s unanswered for %u ms",
					(unsigned long long)p->inflight_seq, p->user, e->peer_timeout_ms);
			p->inflight = false;
		}
		if (u->state == MIG_USER_ACTIVE && (p->dirty || now >= p->next_due_us)) {
			p->dirty = false;
			p->next_due_us = now + p->interval_us;
			send_update(e, p, now);
		}
		if (!p->inflight)
			next = earliest(next, p->dirty ? now : p->next_due_us);
		else
			next = earliest(next, p->inflight_sent_us + timeout);
	}
	return next;
}

/* ------------------------------------------------------------------ standby */

static void send_ack(mig_engine *e, uint64_t conn, const Migwire__ReplicaUpdate *u, int code,
		     const char *reason, bool superseded, uint64_t epoch, uint64_t held_seq)
{
	Migwire__ReplicaAck k = MIGWIRE__REPLICA_ACK__INIT;
	k.user = u->user;
	k.seq = u->seq;
	k.has_code = true;
	k.code = code;
	k.reason = (char *)(reason ? reason : "");
	k.has_superseded = superseded;
	k.superseded = superseded;
	k.has_epoch = true;
	k.epoch = epoch;
	if (held_seq) {
		k.has_held_seq = true;
		k.held_seq = held_seq;
	}
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_REPLICA_ACK;
	f.replica_ack = &k;
	mig__engine_send(e, conn, &f, NULL, false);
}

static void refuse(mig_engine *e, uint64_t conn, const char *peer, const Migwire__ReplicaUpdate *u,
		   int code, const char *why, uint64_t held_seq)
{
	send_ack(e, conn, u, code, why, false, u->epoch, held_seq);
	evargs a = {.peer = peer, .epoch = u->epoch, .seq = u->seq, .error = code, .reason = why};
	emit(e, MIG_REPLICA_REJECTED, u->user, &a);
}

static const mig__domain *find_domain(const mig_engine *e, const char *name)
{
	for (size_t i = 0; i < e->ndomains; i++)
		if (strcmp(e->domains[i].name, name) == 0)
			return &e->domains[i];
	return NULL;
}

/* Swaps a complete update in as the replica (taking nd, pid and purl),
 * acknowledges it and reports it. */
static void commit_update(mig_engine *e, uint64_t conn, const char *user, uint64_t epoch,
			  uint64_t seq, rdomain *nd, size_t nnd, char *pid, char *purl,
			  uint64_t bytes, bool files)
{
	struct mig__replica *r = e->replica;
	Migwire__ReplicaUpdate fu = MIGWIRE__REPLICA_UPDATE__INIT;
	fu.user = (char *)user;
	fu.epoch = epoch;
	fu.seq = seq;
	repl *x = find_repl(r, user);
	if (!x) {
		x = mig__calloc(1, sizeof(*x));
		if (!x || !(x->user = mig__strdup(user))) {
			mig__free(x);
			free_domains(nd, nnd);
			mig__free(pid);
			refuse(e, conn, purl, &fu, MIG_ENOMEM, "out of memory", 0);
			mig__free(purl);
			return;
		}
		x->next = r->repls;
		r->repls = x;
		r->nrepls++;
	}
	uint64_t now = mig__now_us();
	free_domains(x->domains, x->ndomains);
	x->domains = nd;
	x->ndomains = nnd;
	mig__free(x->primary_id);
	x->primary_id = pid;
	mig__free(x->primary_url);
	x->primary_url = purl;
	x->epoch = epoch;
	x->seq = seq;
	if (files) {
		x->has_files = true;
		x->files_broken = false;
	}
	x->installed++;
	x->bytes += bytes;
	x->last_heard_us = now;
	x->last_install_us = now;
	x->last_install_wall_us = mig__wall_us();
	send_ack(e, conn, &fu, 0, "", false, x->epoch, 0);
	evargs a = {.peer = x->primary_url, .epoch = epoch, .seq = seq, .bytes = bytes};
	emit(e, MIG_REPLICA_INSTALLED, user, &a);
}

/* The files of an update are installed (or not): now the light state. */
static void install_done(mig_engine *e, mig__rfin *in)
{
	struct mig__replica *r = e->replica;
	rin_rec *q = r ? r->rins : NULL;
	while (q && q->in != in)
		q = q->next;
	if (!q)
		return;
	unlink_rin(r, q);
	char why[MIG__REASON_MAX];
	bool partial = false;
	int rc = mig__rfin_result(in, &partial, why, sizeof(why));
	char user[MIG__USER_MAX + 1];
	mig__strlcpy(user, mig__rfin_user(in), sizeof(user));
	repl *x = find_repl(r, user);
	if (x)
		x->installing = false;
	if (!rc && mig__users_find(&e->users, user)) {
		rc = MIG_EBUSY;
		snprintf(why, sizeof(why), "user %s became active here", user);
		partial = true;
	}
	if (rc) {
		/* A mixed copy cannot serve as a basis nor be promoted. */
		if (partial && x)
			x->files_broken = true;
		Migwire__ReplicaUpdate fu = MIGWIRE__REPLICA_UPDATE__INIT;
		fu.user = user;
		fu.epoch = q->epoch;
		fu.seq = q->seq;
		refuse(e, q->conn, q->peer, &fu, rc, why, 0);
		rin_free(q);
		return;
	}
	commit_update(e, q->conn, user, q->epoch, q->seq, q->nd, q->nnd, q->pid, q->peer,
		      q->bytes, true);
	q->nd = NULL;
	q->pid = NULL;
	q->peer = NULL;
	rin_free(q);
}

static rin_rec *rin_new(mig_engine *e, struct mig__replica *r, const char *user, uint64_t epoch,
			uint64_t seq, const char *sender)
{
	rin_rec *q = mig__calloc(1, sizeof(*q));
	if (!q)
		return NULL;
	q->sender = mig__strdup(sender);
	q->in = q->sender ? mig__rfin_new(e, user, epoch, seq) : NULL;
	if (!q->in) {
		mig__free(q->sender);
		mig__free(q);
		return NULL;
	}
	q->next = r->rins;
	r->rins = q;
	r->nrins++;
	return q;
}

/* A piece of a file of an update still to come: staged aside. */
static void on_file(mig_engine *e, uint64_t conn, const Migwire__ReplicaFile *f, size_t bytes)
{
	struct mig__replica *r = get_rep(e);
	if (!r || r->stopped || !e->nfdomains)
		return; /* the update is refused when it arrives */
	mig__conn_rec *c = mig__engine_conn(e, conn);
	const char *sender = c && c->peer_engine_id ? c->peer_engine_id : "";
	if (mig__users_find(&e->users, f->user))
		return; /* refused with the update: the user is active here */
	rin_rec *q = find_rin(r, f->user);
	if (q && (!mig__rfin_matches(q->in, f->user, f->epoch, f->seq) ||
		  strcmp(q->sender, sender) != 0)) {
		if (q->finalizing)
			return; /* the next update is refused as busy */
		unlink_rin(r, q); /* a newer update: the old one never completed */
		rin_free(q);
		q = NULL;
	}
	if (!q) {
		if (r->nrins >= MIG__REPLICA_MAX_USERS)
			return;
		q = rin_new(e, r, f->user, f->epoch, f->seq, sender);
		if (!q) {
			mig__engine_log(e, MIG_LOG_WARN, "replica files of user %s: out of memory",
					f->user);
			return;
		}
	}
	if (q->finalizing)
		return;
	q->file_bytes += bytes;
	mig__rfin_piece(q->in, f);
	/* A long file update is the primary talking: it keeps automatic
	 * promotion off as keepalives do. */
	repl *x = find_repl(r, f->user);
	if (x && !x->promoted && x->primary_id && strcmp(x->primary_id, sender) == 0)
		x->last_heard_us = mig__now_us();
}

static void on_update(mig_engine *e, uint64_t conn, const Migwire__ReplicaUpdate *u, size_t bytes)
{
	char why[MIG__REASON_MAX];
	mig__conn_rec *c = mig__engine_conn(e, conn);
	const char *sender = c && c->peer_engine_id ? c->peer_engine_id : "";
	const char *peer = c ? c->url : "";
	struct mig__replica *r = get_rep(e);
	if (!r) {
		refuse(e, conn, peer, u, MIG_ENOMEM, "out of memory", 0);
		return;
	}
	repl *x = find_repl(r, u->user);
	bool here = mig__users_find(&e->users, u->user) != NULL;
	uint64_t now = mig__now_us();
	if (x && x->promoted) {
		if (strcmp(sender, x->primary_id) == 0 && u->epoch < x->promoted_epoch) {
			snprintf(why, sizeof(why),
				 "superseded: user %s was promoted here at epoch %llu (update epoch %llu)",
				 u->user, (unsigned long long)x->promoted_epoch,
				 (unsigned long long)u->epoch);
			send_ack(e, conn, u, MIG_ESTATE, why, true, x->promoted_epoch, 0);
			evargs a = {.peer = peer, .epoch = u->epoch, .seq = u->seq,
				    .error = MIG_ESTATE, .reason = why};
			emit(e, MIG_REPLICA_REJECTED, u->user, &a);
			return;
		}
		if (!here) {
			/* The promoted user has left this engine since: forget
			 * the tombstone, this is a new replica. */
			unlink_repl(r, x);
			repl_free(x);
			x = NULL;
		}
	}
	if (here) {
		snprintf(why, sizeof(why), "user %s is active here: no replica is held for it",
			 u->user);
		refuse(e, conn, peer, u, MIG_EBUSY, why, 0);
		return;
	}
	if (x && strcmp(sender, x->primary_id) != 0 && u->epoch <= x->epoch) {
		snprintf(why, sizeof(why), "the replica of user %s is held for engine %s at epoch %llu",
			 u->user, x->primary_id, (unsigned long long)x->epoch);
		refuse(e, conn, peer, u, MIG_EEXIST, why, 0);
		return;
	}
	bool same = x && strcmp(sender, x->primary_id) == 0;
	if (same && u->epoch < x->epoch) {
		snprintf(why, sizeof(why), "stale epoch %llu: the replica is at epoch %llu",
			 (unsigned long long)u->epoch, (unsigned long long)x->epoch);
		refuse(e, conn, peer, u, MIG_ESTATE, why, 0);
		return;
	}
	bool same_epoch = same && u->epoch == x->epoch;
	if (u->keepalive) {
		if (same_epoch && u->seq == x->seq) {
			x->last_heard_us = now;
			send_ack(e, conn, u, 0, "", false, x->epoch, 0);
			return;
		}
		snprintf(why, sizeof(why), "keepalive for seq %llu, but no replica at that seq here",
			 (unsigned long long)u->seq);
		refuse(e, conn, peer, u, MIG_EUNKNOWN, why, same_epoch ? x->seq : 0);
		return;
	}
	if (same_epoch && u->seq <= x->seq) {
		snprintf(why, sizeof(why), "replayed sequence %llu: the replica holds %llu",
			 (unsigned long long)u->seq, (unsigned long long)x->seq);
		refuse(e, conn, peer, u, MIG_EPROTO, why, x->seq);
		return;
	}
	if (!x && r->nrepls >= MIG__REPLICA_MAX_USERS) {
		snprintf(why, sizeof(why), "this engine holds %u replicas already",
			 MIG__REPLICA_MAX_USERS);
		refuse(e, conn, peer, u, MIG_EBUSY, why, 0);
		return;
	}
	/* Every domain known here, at a version this engine reads. */
	for (size_t i = 0; i < u->n_light; i++) {
		const Migwire__DomainData *dd = u->light[i];
		const mig__domain *d = find_domain(e, dd->name);
		if (!d) {
			snprintf(why, sizeof(why), "domain %s is not registered here", dd->name);
			refuse(e, conn, peer, u, MIG_ENODOMAIN, why, 0);
			return;
		}
		if (dd->version > d->version) {
			snprintf(why, sizeof(why), "domain %s version %u is newer than %u", dd->name,
				 dd->version, d->version);
			refuse(e, conn, peer, u, MIG_EVERSION, why, 0);
			return;
		}
	}
	/* File state: deltas must be against the copy held here. */
	bool files = u->has_base_seq && e->nfdomains > 0;
	if (files && u->base_seq &&
	    (!same_epoch || x->seq != u->base_seq || !x->has_files || x->files_broken)) {
		snprintf(why, sizeof(why),
			 "the update's files are deltas against seq %llu, but the replica here holds "
			 "%s%llu",
			 (unsigned long long)u->base_seq,
			 x && x->has_files && !x->files_broken ? "" : "no files at ",
			 (unsigned long long)(same_epoch ? x->seq : 0));
		refuse(e, conn, peer, u, MIG_EUNKNOWN, why, same_epoch ? x->seq : 0);
		return;
	}
	if (u->files && !files) {
		if (e->nfdomains)
			refuse(e, conn, peer, u, MIG_EPROTO, "an update with files but no base_seq",
			       0);
		else
			refuse(e, conn, peer, u, MIG_ENODOMAIN, "no file domain is registered here",
			       0);
		return;
	}
	if (files && !mig__rf_user_ok(u->user)) {
		snprintf(why, sizeof(why), "user id %s cannot name a folder", u->user);
		refuse(e, conn, peer, u, MIG_EINVAL, why, 0);
		return;
	}
	rin_rec *q = find_rin(r, u->user);
	if (q && q->finalizing) {
		snprintf(why, sizeof(why), "update %llu of user %s is still being installed",
			 (unsigned long long)q->seq, u->user);
		refuse(e, conn, peer, u, MIG_EBUSY, why, 0);
		return;
	}
	if (q && (!mig__rfin_matches(q->in, u->user, u->epoch, u->seq) ||
		  strcmp(q->sender, sender) != 0)) {
		unlink_rin(r, q); /* files of an update that never came */
		rin_free(q);
		q = NULL;
	}
	if (u->files && !q) {
		snprintf(why, sizeof(why), "none of the update's %u files arrived", u->files);
		refuse(e, conn, peer, u, MIG_EPROTO, why, 0);
		return;
	}
	/* Unchanged files and a copy held: only the light state changes. */
	if (files && !u->files && u->base_seq) {
		files = false;
		if (q) {
			unlink_rin(r, q);
			rin_free(q);
			q = NULL;
		}
	}
	/* Build the new set completely, then swap: a failure leaves the old. */
	rdomain *nd = mig__calloc(u->n_light ? u->n_light : 1, sizeof(*nd));
	bool ok = nd != NULL;
	for (size_t i = 0; ok && i < u->n_light; i++) {
		const Migwire__DomainData *dd = u->light[i];
		nd[i].name = mig__strdup(dd->name);
		nd[i].version = dd->version;
		nd[i].len = dd->data.len;
		nd[i].data = mig__malloc(dd->data.len ? dd->data.len : 1);
		ok = nd[i].name && nd[i].data;
		if (ok && dd->data.len)
			memcpy(nd[i].data, dd->data.data, dd->data.len);
	}
	char *pid = ok ? mig__strdup(sender) : NULL;
	char *purl = ok ? mig__strdup(peer) : NULL;
	if (!ok || !pid || !purl) {
		if (nd)
			free_domains(nd, u->n_light);
		mig__free(pid);
		mig__free(purl);
		refuse(e, conn, peer, u, MIG_ENOMEM, "out of memory", 0);
		return;
	}
	if (!files) {
		commit_update(e, conn, u->user, u->epoch, u->seq, nd, u->n_light, pid, purl,
			      bytes, false);
		return;
	}
	/* Install the files on the update's strand first; the light state
	 * follows in install_done, at the same seq, or neither does. */
	if (!q && (r->stopped || r->nrins >= MIG__REPLICA_MAX_USERS ||
		   !(q = rin_new(e, r, u->user, u->epoch, u->seq, sender)))) {
		free_domains(nd, u->n_light);
		mig__free(pid);
		mig__free(purl);
		refuse(e, conn, peer, u, MIG_ENOMEM, "out of memory", 0);
		return;
	}
	int rc = mig__rfin_finalize(q->in, u->files, u->base_seq, install_done);
	if (rc) {
		char reason[MIG__REASON_MAX];
		bool partial;
		mig__rfin_result(q->in, &partial, reason, sizeof(reason));
		unlink_rin(r, q);
		rin_free(q);
		free_domains(nd, u->n_light);
		mig__free(pid);
		mig__free(purl);
		refuse(e, conn, peer, u, rc, rc == MIG_ENOMEM ? "out of memory" : reason, 0);
		return;
	}
	q->finalizing = true;
	q->conn = conn;
	q->peer = purl;
	q->pid = pid;
	q->nd = nd;
	q->nnd = u->n_light;
	q->epoch = u->epoch;
	q->seq = u->seq;
	q->bytes = bytes + q->file_bytes;
	if (x)
		x->installing = true;
}

/* Makes the replica the active user: incoming, merge every domain, then
 * activate, as a destination does between ACCEPT and COMMIT. Returns 0 or
 * a MIG_E* with the reason in why; the replica is kept on failure. */
static int promote_now(mig_engine *e, repl *x, char *why, size_t why_len)
{
	char user[MIG__USER_MAX + 1];
	mig__strlcpy(user, x->user, sizeof(user));
	if (mig__users_find(&e->users, user)) {
		snprintf(why, why_len, "user %s is already here", user);
		return MIG_EEXIST;
	}
	if (mig__users_insert(&e->users, user, MIG_USER_INCOMING, NULL) != 0) {
		snprintf(why, why_len, "out of memory");
		return MIG_ENOMEM;
	}
	int err = 0;
	if (e->hooks.incoming) {
		mig__engine_unlock_for_app(e);
		int rc = e->hooks.incoming(e, user, e->hooks_user_data);
		mig__engine_relock(e);
		if (rc) {
			mig__users_remove(&e->users, user);
			snprintf(why, why_len, "the incoming hook refused (%d)", rc);
			return MIG_ECALLBACK;
		}
	}
	/* The replica copy becomes the user's folder before any merge, as
	 * the staged folder does at COMMIT. */
	size_t moved = 0;
	if (x->has_files)
		err = mig__rf_promote_files(e, user, &moved, why, why_len);
	for (size_t i = 0; i < x->ndomains && !err; i++) {
		const mig__domain *d = find_domain(e, x->domains[i].name);
		if (!d) {
			err = MIG_ENODOMAIN;
			snprintf(why, why_len, "domain %s is not registered here", x->domains[i].name);
			break;
		}
		mig__engine_unlock_for_app(e);
		int rc = d->merge(e, user, x->domains[i].version, x->domains[i].data,
				  x->domains[i].len, d->user_data);
		mig__engine_relock(e);
		if (rc) {
			err = MIG_ECALLBACK;
			snprintf(why, why_len, "merge of domain %s failed (%d)", d->name, rc);
		}
	}
	if (err) {
		mig__rf_unpromote_files(e, user, moved);
		mig__users_remove(&e->users, user);
		if (e->hooks.drop) {
			mig__engine_unlock_for_app(e);
			e->hooks.drop(e, user, e->hooks_user_data);
			mig__engine_relock(e);
		}
		return err;
	}
	mig__user *u = mig__users_find(&e->users, user);
	if (u)
		u->state = MIG_USER_ACTIVE;
	x->promoted = true;
	x->promote_requested = false;
	x->promoted_epoch = x->epoch + 1;
	x->has_files = false;
	free_domains(x->domains, x->ndomains);
	x->domains = NULL;
	x->ndomains = 0;
	if (e->hooks.activate) {
		mig__engine_unlock_for_app(e);
		e->hooks.activate(e, user, e->hooks_user_data);
		mig__engine_relock(e);
	}
	snprintf(why, why_len, "user %s promoted at epoch %llu", user,
		 (unsigned long long)x->promoted_epoch);
	return 0;
}

static void promote_and_report(mig_engine *e, repl *x, uint64_t now)
{
	char why[MIG__REASON_MAX];
	x->promote_requested = false;
	uint64_t age = now - x->last_install_us;
	int rc = promote_now(e, x, why, sizeof(why));
	evargs a = {.peer = x->primary_url, .epoch = rc ? x->epoch : x->promoted_epoch,
		    .seq = x->seq, .lag = age, .error = rc, .reason = why};
	emit(e, rc ? MIG_REPLICA_PROMOTE_FAILED : MIG_REPLICA_PROMOTED, x->user, &a);
}

static bool primary_linked(mig_engine *e, const repl *x)
{
	for (mig__conn_rec *c = e->conns; c; c = c->next)
		if (c->channel == MIGWIRE__CHANNEL__CHANNEL_PEER && c->up && c->peer_engine_id &&
		    strcmp(c->peer_engine_id, x->primary_id) == 0)
			return true;
	return false;
}

static uint64_t tick_repls(mig_engine *e, uint64_t now)
{
	struct mig__replica *r = e->replica;
	uint64_t next = 0;
	for (repl *x = r->repls; x; x = x->next) {
		if (x->promoted)
			continue;
		if (!x->promote_requested && r->auto_promote_us) {
			uint64_t due = x->last_heard_us + r->auto_promote_us;
			if (now < due) {
				next = earliest(next, due);
				continue;
			}
			/* Silent with its link still up is a frozen primary
			 * (stopped process, stuck loop) as far as its clients
			 * are concerned too: its link's keepalive would take
			 * far longer than `ms` to notice. If it comes back, its
			 * next update is refused as superseded. */
			mig__engine_log(e, MIG_LOG_WARN,
					"primary %s of user %s silent for %llu ms%s: promoting",
					x->primary_id, x->user,
					(unsigned long long)((now - x->last_heard_us) / 1000),
					primary_linked(e, x) ? " on a live link" : "");
			x->promote_requested = true;
		}
		if (x->promote_requested && x->installing)
			continue; /* after the update being installed (a dispatch away) */
		if (x->promote_requested)
			promote_and_report(e, x, now);
	}
	return next;
}

uint64_t mig__replica_tick(mig_engine *e, uint64_t now)
{
	if (!e->replica)
		return 0;
	uint64_t a = tick_prims(e, now);
	uint64_t b = tick_repls(e, mig__now_us());
	return earliest(a, b);
}

/* ------------------------------------------------------------------ frames */

bool mig__replica_owns(const mig__frame *f)
{
	return f->body_case == MIGWIRE__FRAME__BODY_REPLICA_UPDATE ||
	       f->body_case == MIGWIRE__FRAME__BODY_REPLICA_ACK ||
	       f->body_case == MIGWIRE__FRAME__BODY_REPLICA_FILE;
}

void mig__replica_on_frame(mig_engine *e, uint64_t conn, const mig__frame *f, size_t bytes)
{
	if (f->body_case == MIGWIRE__FRAME__BODY_REPLICA_UPDATE)
		on_update(e, conn, f->replica_update, bytes);
	else if (f->body_case == MIGWIRE__FRAME__BODY_REPLICA_ACK)
		on_ack(e, conn, f->replica_ack);
	else if (f->body_case == MIGWIRE__FRAME__BODY_REPLICA_FILE)
		on_file(e, conn, f->replica_file, bytes);
}

void mig__replica_on_conn_down(mig_engine *e, uint64_t conn)
{
	(void)conn;
	if (!e->replica)
		return;
	/* An update in flight on a closed link will not be answered: the
	 * tick sends the next one at its interval, on a new connection. The
	 * connection an update went out on is not recorded (the peer may use
	 * one it opened), so every in-flight update to a URL that no longer
	 * has a live link is given up. */
	for (prim *p = e->replica->prims; p; p = p->next) {
		if (!p->inflight)
			continue;
		bool linked = false;
		for (mig__conn_rec *c = e->conns; c; c = c->next)
			if (c->channel == MIGWIRE__CHANNEL__CHANNEL_PEER && c->id != conn &&
			    strcmp(c->url, p->url) == 0)
				linked = true;
		if (!linked)
			p->inflight = false;
	}
}

int mig__replica_control(mig_engine *e, const mig__frame *f, char *why, size_t why_len)
{
	if (f->body_case == MIGWIRE__FRAME__BODY_PROMOTE) {
		repl *x = NULL;
		int rc = promote_check(e, f->promote->user, &x, why, why_len);
		if (rc)
			return rc;
		if (x->installing) {
			snprintf(why, why_len, "an update of user %s is being installed: try again",
				 f->promote->user);
			return MIG_EBUSY;
		}
		rc = promote_now(e, x, why, why_len);
		char reason[MIG__REASON_MAX];
		mig__strlcpy(reason, why, sizeof(reason));
		/* x stays valid: records are freed only by dispatch, which is us. */
		evargs a = {.peer = x->primary_url, .epoch = rc ? x->epoch : x->promoted_epoch,
			    .seq = x->seq, .lag = mig__now_us() - x->last_install_us, .error = rc,
			    .reason = reason};
		emit(e, rc ? MIG_REPLICA_PROMOTE_FAILED : MIG_REPLICA_PROMOTED, f->promote->user, &a);
		return rc;
	}
	const Migwire__ReplicateRequest *q = f->replicate;
	if (q->stop) {
		prim *p = find_prim(e->replica, q->user);
		if (!p || p->stop) {
			snprintf(why, why_len, "user %s is not replicated", q->user);
			return MIG_ENOUSER;
		}
		p->stop = true;
		snprintf(why, why_len, "replication of user %s stops", q->user);
		return 0;
	}
	return replicate_locked(e, q->user, q->standby_url, q->interval_ms, why, why_len);
}
