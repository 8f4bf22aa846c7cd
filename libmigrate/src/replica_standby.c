/* Replication, standby side (struct repl; replica.c holds the records,
 * API and tick, replica_primary.c the other side).
 *
 * Per replica: an update is checked against the record (sender, epoch,
 * sequence, domains) and installed by swapping in a complete new set of
 * domain blobs, or refused with a reason and nothing changed; an update
 * with files is installed once its files are (replica_files_standby.c, on
 * the update's strand), light state and files together at one seq.
 * Promotion (asked by the app, the control channel, or automatic after the
 * primary fell silent) moves the replica's files into place and turns the
 * replica into an ACTIVE user through the app's incoming, merge and
 * activate hooks, and leaves a tombstone (the old primary's engine id and
 * the new epoch) so that the old primary's next update is answered
 * "superseded": it then stops serving the user.
 *
 * Runs with the engine lock held, in dispatch. */
#include <stdio.h>
#include <string.h>

#include "replica_int.h"

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

static void unlink_repl(struct mig__replica *r, repl *x)
{
	for (repl **pp = &r->repls; *pp; pp = &(*pp)->next)
		if (*pp == x) {
			*pp = x->next;
			r->nrepls--;
			return;
		}
}

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
	mig__replica_emit(e, MIG_REPLICA_REJECTED, u->user, &a);
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
	repl *x = mig__replica_find_repl(r, user);
	if (!x) {
		x = mig__calloc(1, sizeof(*x));
		if (!x || !(x->user = mig__strdup(user))) {
			mig__free(x);
			mig__replica_free_domains(nd, nnd);
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
	mig__replica_free_domains(x->domains, x->ndomains);
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
	mig__replica_emit(e, MIG_REPLICA_INSTALLED, user, &a);
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
	repl *x = mig__replica_find_repl(r, user);
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
		mig__replica_rin_free(q);
		return;
	}
	commit_update(e, q->conn, user, q->epoch, q->seq, q->nd, q->nnd, q->pid, q->peer,
		      q->bytes, true);
	q->nd = NULL;
	q->pid = NULL;
	q->peer = NULL;
	mig__replica_rin_free(q);
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
void mig__replica_on_file(mig_engine *e, uint64_t conn, const Migwire__ReplicaFile *f, size_t bytes)
{
	struct mig__replica *r = mig__replica_get_rep(e);
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
		mig__replica_rin_free(q);
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
	repl *x = mig__replica_find_repl(r, f->user);
	if (x && !x->promoted && x->primary_id && strcmp(x->primary_id, sender) == 0)
		x->last_heard_us = mig__now_us();
}

void mig__replica_on_update(mig_engine *e, uint64_t conn, const Migwire__ReplicaUpdate *u,
			    size_t bytes)
{
	char why[MIG__REASON_MAX];
	mig__conn_rec *c = mig__engine_conn(e, conn);
	const char *sender = c && c->peer_engine_id ? c->peer_engine_id : "";
	const char *peer = c ? c->url : "";
	struct mig__replica *r = mig__replica_get_rep(e);
	if (!r) {
		refuse(e, conn, peer, u, MIG_ENOMEM, "out of memory", 0);
		return;
	}
	repl *x = mig__replica_find_repl(r, u->user);
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
			mig__replica_emit(e, MIG_REPLICA_REJECTED, u->user, &a);
			return;
		}
		if (!here) {
			/* The promoted user has left this engine since: forget
			 * the tombstone, this is a new replica. */
			unlink_repl(r, x);
			mig__replica_repl_free(x);
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
		mig__replica_rin_free(q);
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
			mig__replica_rin_free(q);
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
			mig__replica_free_domains(nd, u->n_light);
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
		mig__replica_free_domains(nd, u->n_light);
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
		mig__replica_rin_free(q);
		mig__replica_free_domains(nd, u->n_light);
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
int mig__replica_promote_now(mig_engine *e, repl *x, char *why, size_t why_len)
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
	mig__replica_free_domains(x->domains, x->ndomains);
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
	int rc = mig__replica_promote_now(e, x, why, sizeof(why));
	evargs a = {.peer = x->primary_url, .epoch = rc ? x->epoch : x->promoted_epoch,
		    .seq = x->seq, .lag = age, .error = rc, .reason = why};
	mig__replica_emit(e, rc ? MIG_REPLICA_PROMOTE_FAILED : MIG_REPLICA_PROMOTED, x->user, &a);
}

static bool primary_linked(mig_engine *e, const repl *x)
{
	for (mig__conn_rec *c = e->conns; c; c = c->next)
		if (c->channel == MIGWIRE__CHANNEL__CHANNEL_PEER && c->up && c->peer_engine_id &&
		    strcmp(c->peer_engine_id, x->primary_id) == 0)
			return true;
	return false;
}

uint64_t mig__replica_tick_repls(mig_engine *e, uint64_t now)
{
	struct mig__replica *r = e->replica;
	uint64_t next = 0;
	for (repl *x = r->repls; x; x = x->next) {
		if (x->promoted)
			continue;
		if (!x->promote_requested && r->auto_promote_us) {
			uint64_t due = x->last_heard_us + r->auto_promote_us;
			if (now < due) {
				next = mig__replica_earliest(next, due);
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
