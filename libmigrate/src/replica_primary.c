/* Replication, primary side (struct prim; replica.c holds the records,
 * API and tick, replica_standby.c the other side).
 *
 * Per replicated user: every interval, or when the app calls
 * mig_replicate_now(), the tick extracts the user's light state while the
 * user is served and hashes it; if it differs from what the standby last
 * acknowledged it sends a ReplicaUpdate with the next sequence number, else
 * a keepalive. One update per user is in flight at a time: a slow standby
 * makes changes coalesce into the next extraction, so memory stays at one
 * frame per user. An update unanswered after the peer timeout is given up
 * and the next one replaces it. With file domains an update first runs a
 * file round on the user's strand (replica_files_primary.c: changed files
 * go out as ReplicaFile pieces) and is sent when the round completes. An
 * ack that says "superseded" (the standby promoted the user) makes the
 * tick stop serving the user here.
 *
 * Runs with the engine lock held, in dispatch. */
#include <stdio.h>
#include <string.h>

#include "digest.h"
#include "replica_int.h"

/* Light state budget of one update: the frame cap minus room for the
 * envelope (user id, names, numbers). */
#define UPDATE_OVERHEAD 16384u

static void unlink_prim(struct mig__replica *r, prim *p)
{
	for (prim **pp = &r->prims; *pp; pp = &(*pp)->next)
		if (*pp == p) {
			*pp = p->next;
			return;
		}
}

static void digest_domain(mig__digest *h, const char *name, uint32_t version, const mig_buf *b)
{
	uint64_t len = b->len;
	mig__digest_update(h, name, strlen(name) + 1);
	mig__digest_update(h, &version, sizeof(version));
	mig__digest_update(h, &len, sizeof(len));
	if (b->len)
		mig__digest_update(h, b->data, b->len);
}

static void report_refused(mig_engine *e, prim *p, int err, const char *why)
{
	evargs a = {.peer = p->url, .epoch = p->epoch, .seq = p->seq, .total = p->bytes,
		    .error = err, .reason = why};
	mig__replica_emit(e, MIG_REPLICA_REFUSED, p->user, &a);
}

/* Extracts every light domain of the user into bufs (n = e->ndomains) and
 * their digest into dg. Returns 0 or a MIG_E* with the reason. */
static int extract_light(mig_engine *e, prim *p, mig_buf *bufs, uint8_t dg[MIG__DIGEST_LEN], char *why,
			 size_t why_len)
{
	mig__digest *h = mig__digest_new();
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
		mig__digest_peek(h, dg);
	mig__digest_free(h);
	return err;
}

/* Sends the update: full (with the light state, and for file state the
 * number of ReplicaFile streams that went before it on `conn` against
 * base_seq) if anything changed since the acknowledged one, else a
 * keepalive. conn 0: look the link up. Returns 0 or a MIG_E* with why. */
static int send_built(mig_engine *e, prim *p, const mig_buf *bufs, const uint8_t dg[MIG__DIGEST_LEN],
		      uint64_t extracted_us, bool files, uint32_t streams, uint64_t file_bytes,
		      uint64_t conn, char *why, size_t why_len)
{
	size_t n = e->ndomains;
	bool full = !p->have_digest || memcmp(dg, p->digest, MIG__DIGEST_LEN) != 0 || streams > 0;
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
			memcpy(p->inflight_digest, dg, MIG__DIGEST_LEN);
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
	mig__replica_free_light(bufs, e->ndomains);
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
	uint8_t dg[MIG__DIGEST_LEN];
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
	mig__replica_free_light(bufs, n);
	if (err)
		report_refused(e, p, err, why);
}

void mig__replica_on_ack(mig_engine *e, uint64_t conn, const Migwire__ReplicaAck *k)
{
	prim *p = mig__replica_find_prim(e->replica, k->user);
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
		if (k->has_held_seq && k->held_seq > p->seq) {
			/* Replication restarted (this engine, or this user's
			 * record after mig_replicate_stop) below what the
			 * standby holds: continue above it, and at once, or
			 * the standby would keep the older copy for an
			 * interval. seq only grows, so this resends once. */
			p->seq = k->held_seq;
			p->dirty = true;
			mig__engine_wake(e);
		}
		if (k->code == MIG_EUNKNOWN) {
			/* The standby lost its copy (or holds another): resend
			 * everything, files whole. */
			p->have_digest = false;
			mig__rfset_free(p->acked_files);
			p->acked_files = NULL;
		}
		evargs a = {.peer = p->url, .epoch = p->epoch, .seq = k->seq, .total = p->bytes,
			    .error = k->code, .reason = k->reason};
		mig__replica_emit(e, MIG_REPLICA_REFUSED, p->user, &a);
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
	mig__replica_emit(e, MIG_REPLICA_ACKED, p->user, &a);
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
	mig__replica_prim_free(e, p);
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
	mig__replica_emit(e, MIG_REPLICA_SUPERSEDED, user, &a);
	mig__free(url);
	return true;
}

uint64_t mig__replica_tick_prims(mig_engine *e, uint64_t now)
{
	struct mig__replica *r = e->replica;
	uint64_t next = 0;
	uint64_t timeout = (uint64_t)e->peer_timeout_ms * 1000u;
	for (prim *p = r->prims, *nx; p; p = nx) {
		nx = p->next;
		mig__user *u = mig__users_find(&e->users, p->user);
		if (p->superseded) {
			if (!deactivate(e, p))
				next = mig__replica_earliest(next, now + 10000);
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
			mig__replica_prim_free(e, p);
			mig__replica_emit(e, MIG_REPLICA_STOPPED, user, &a);
			mig__free(url);
			continue;
		}
		if (p->job)
			continue; /* a file round runs; its completion sends */
		if (p->inflight) {
			if (now < p->inflight_sent_us + timeout) {
				next = mig__replica_earliest(next, p->inflight_sent_us + timeout);
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
			next = mig__replica_earliest(next, p->dirty ? now : p->next_due_us);
		else
			next = mig__replica_earliest(next, p->inflight_sent_us + timeout);
	}
	return next;
}
