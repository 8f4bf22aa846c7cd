/* The destination side of the handoff.
 *
 *   BEGIN -> ACCEPT (user INCOMING) -> PREPARE: merge into the inactive user
 *         -> PREPARED -> COMMIT: activate -> COMMITTED.
 *
 * The destination activates only on COMMIT or on a definite answer to its
 * OUTCOME query; it drops the incoming copy on ABORT, on a lost link before
 * it prepared, or when the source says the migration did not commit. A
 * prepared destination that cannot reach the source keeps the copy parked. */
#include <stdio.h>
#include <string.h>

#include "handoff_int.h"
#include "xfer.h"

static mig__domain *find_domain(mig_engine *e, const char *name)
{
	for (size_t i = 0; i < e->ndomains; i++)
		if (strcmp(e->domains[i].name, name) == 0)
			return &e->domains[i];
	return NULL;
}

static void reply_reject(mig_engine *e, uint64_t conn, const char *mid, int code,
			 const char *reason)
{
	mig__engine_log(e, MIG_LOG_INFO, "rejecting migration %s: %s", mid, reason);
	Migwire__Reject r = MIGWIRE__REJECT__INIT;
	r.mid = (char *)mid;
	r.code = code;
	r.reason = (char *)reason;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_REJECT;
	f.reject = &r;
	mig__handoff_reply(e, conn, &f, NULL);
}

static void send_simple(mig_engine *e, struct mig_migration *m, uint64_t conn,
			Migwire__Frame__BodyCase which, enum mig__fault_point point)
{
	Migwire__Accept a = MIGWIRE__ACCEPT__INIT;
	Migwire__Prepared p = MIGWIRE__PREPARED__INIT;
	Migwire__Committed c = MIGWIRE__COMMITTED__INIT;
	Migwire__Aborted ab = MIGWIRE__ABORTED__INIT;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = which;
	switch (which) {
	case MIGWIRE__FRAME__BODY_ACCEPT:
		a.mid = m->mid;
		a.app_url = e->app_url; /* session channel: for the clients' redirect */
		a.session_url = e->advertised_url;
		f.accept = &a;
		break;
	case MIGWIRE__FRAME__BODY_PREPARED:
		p.mid = m->mid;
		f.prepared = &p;
		break;
	case MIGWIRE__FRAME__BODY_COMMITTED:
		c.mid = m->mid;
		f.committed = &c;
		break;
	default:
		ab.mid = m->mid;
		f.aborted = &ab;
		break;
	}
	if (conn && mig__engine_conn(e, conn)) {
		m->conn = conn;
		mig__handoff_send(e, m, &f, point);
	} else if (m->conn) {
		mig__handoff_send(e, m, &f, point);
	}
}

/* Answers a repeated PREPARE, COMMIT or ABORT of a migration only the
 * outcome memory remembers, on the connection it came in on. */
static void reply_retired(mig_engine *e, uint64_t conn, const char *mid, size_t bytes,
			  Migwire__Frame__BodyCase which)
{
	Migwire__Prepared p = MIGWIRE__PREPARED__INIT;
	Migwire__Committed c = MIGWIRE__COMMITTED__INIT;
	Migwire__Aborted ab = MIGWIRE__ABORTED__INIT;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = which;
	if (which == MIGWIRE__FRAME__BODY_PREPARED) {
		p.mid = (char *)mid;
		f.prepared = &p;
	} else if (which == MIGWIRE__FRAME__BODY_COMMITTED) {
		c.mid = (char *)mid;
		f.committed = &c;
	} else {
		ab.mid = (char *)mid;
		f.aborted = &ab;
	}
	mig__handoff_count_retired(e, bytes, mig__engine_send(e, conn, &f, NULL, false));
}

/* Discards the incoming copy. */
static void dst_drop(mig_engine *e, struct mig_migration *m, int error, const char *reason)
{
	char user[MIG__USER_MAX + 1];
	mig__strlcpy(user, m->user, sizeof(user));
	mig__xfer_end(e, m, true);
	mig__handoff_finish(e, m, MIG_MIGRATION_ABORTED, error, reason);
	mig__user *u = mig__users_find(&e->users, user);
	if (u && (u->state == MIG_USER_INCOMING || u->state == MIG_USER_PARKED))
		mig__users_remove(&e->users, user);
	if (e->hooks.drop) {
		mig__engine_unlock_for_app(e);
		e->hooks.drop(e, user, e->hooks_user_data);
		mig__engine_relock(e);
	}
	mig__handoff_emit(e, MIG_EVENT_DROPPED, m);
}

static void dst_activate_now(mig_engine *e, struct mig_migration *m, uint64_t conn)
{
	char user[MIG__USER_MAX + 1];
	mig__strlcpy(user, m->user, sizeof(user));
	mig__xfer_end(e, m, false);
	mig__handoff_finish(e, m, MIG_MIGRATION_COMMITTED, 0, "");
	mig__user *u = mig__users_find(&e->users, user);
	if (u)
		u->state = MIG_USER_ACTIVE;
	if (e->hooks.activate) {
		mig__engine_unlock_for_app(e);
		e->hooks.activate(e, user, e->hooks_user_data);
		mig__engine_relock(e);
	}
	mig__handoff_emit(e, MIG_EVENT_ACTIVATED, m);
	send_simple(e, m, conn, MIGWIRE__FRAME__BODY_COMMITTED, MIG__FAULT_SEND_COMMITTED);
}

/* Committed: with file state, swap the staged files in first (on a worker),
 * then activate. */
static void dst_activate(mig_engine *e, struct mig_migration *m, uint64_t conn)
{
	if (conn)
		m->conn = conn;
	if (m->xfer) {
		mig__handoff_set_phase(m, MIG__DST_INSTALLING, 0);
		mig__xdst_install(e, m);
		return;
	}
	dst_activate_now(e, m, conn);
}

void mig__dst_files_installed(mig_engine *e, struct mig_migration *m)
{
	if (m->phase == MIG__DST_INSTALLING)
		dst_activate_now(e, m, m->conn);
}

void mig__dst_on_begin(mig_engine *e, uint64_t conn, const Migwire__Begin *b, size_t bytes)
{
	char why[MIG__REASON_MAX];
	struct mig_migration *m = mig__handoff_find(e, b->mid);
	if (m) {
		if (!m->outgoing && m->phase == MIG__DST_ACCEPTED && strcmp(m->user, b->user) == 0 &&
		    strcmp(m->peer_url, b->source_url) == 0) {
			m->bytes_received += bytes;
			send_simple(e, m, conn, MIGWIRE__FRAME__BODY_ACCEPT, MIG__FAULT_NONE);
			return; /* a repeat: same answer */
		}
		reply_reject(e, conn, b->mid, MIG_EEXIST, "migration id already used");
		return;
	}
	if (mig__outcomes_find(&e->outcomes, b->mid)) {
		reply_reject(e, conn, b->mid, MIG_EEXIST, "migration id already used");
		return;
	}
	mig__user *u = mig__users_find(&e->users, b->user);
	if (u) {
		snprintf(why, sizeof(why), "user %s is already on this engine", b->user);
		reply_reject(e, conn, b->mid, u->state == MIG_USER_ACTIVE ? MIG_EEXIST : MIG_EBUSY,
			     why);
		return;
	}
	size_t nfiles = 0;
	for (size_t i = 0; i < b->n_domains; i++) {
		const Migwire__DomainInfo *di = b->domains[i];
		bool is_file = di->has_kind && di->kind == MIGWIRE__DOMAIN_KIND__DOMAIN_FILE;
		uint32_t version = 0;
		bool found = false;
		if (is_file) {
			for (size_t k = 0; k < e->nfdomains; k++)
				if (strcmp(e->fdomains[k].name, di->name) == 0) {
					found = true;
					version = e->fdomains[k].version;
				}
			nfiles++;
		} else {
			mig__domain *d = find_domain(e, di->name);
			found = d != NULL;
			version = d ? d->version : 0;
		}
		if (!found) {
			snprintf(why, sizeof(why), "%s domain %s is not registered here",
				 is_file ? "file" : "light", di->name);
			reply_reject(e, conn, b->mid, MIG_ENODOMAIN, why);
			return;
		}
		if (di->version > version) {
			snprintf(why, sizeof(why), "domain %s version %u is newer than %u",
				 di->name, di->version, version);
			reply_reject(e, conn, b->mid, MIG_EVERSION, why);
			return;
		}
	}
	if (nfiles != e->nfdomains) {
		snprintf(why, sizeof(why), "the source moves %zu file domains, this engine has %zu",
			 nfiles, e->nfdomains);
		reply_reject(e, conn, b->mid, MIG_ENODOMAIN, why);
		return;
	}
	mig__user *nu = NULL;
	if (mig__users_insert(&e->users, b->user, MIG_USER_INCOMING, &nu) != 0) {
		reply_reject(e, conn, b->mid, MIG_ENOMEM, "out of memory");
		return;
	}
	m = mig__handoff_new(e, b->mid, b->user, b->source_url, false);
	if (!m) {
		mig__users_remove(&e->users, b->user);
		reply_reject(e, conn, b->mid, MIG_ENOMEM, "out of memory");
		return;
	}
	m->conn = conn;
	m->bytes_received = bytes;
	nu->migration = m;
	mig__handoff_set_phase(m, MIG__DST_ACCEPTED, mig__now_us() + mig__handoff_timeout_us(e));
	if (e->hooks.incoming) {
		char user[MIG__USER_MAX + 1];
		mig__strlcpy(user, b->user, sizeof(user));
		mig__engine_unlock_for_app(e);
		int rc = e->hooks.incoming(e, user, e->hooks_user_data);
		mig__engine_relock(e);
		if (rc) {
			mig__handoff_finish(e, m, MIG_MIGRATION_ABORTED, MIG_ECALLBACK,
					    "the incoming hook refused");
			mig__users_remove(&e->users, user);
			reply_reject(e, conn, m->mid, MIG_ECALLBACK, "the incoming hook refused");
			return;
		}
	}
	mig__handoff_emit(e, MIG_EVENT_INCOMING, m);
	if (m->phase != MIG__DST_ACCEPTED)
		return;
	send_simple(e, m, conn, MIGWIRE__FRAME__BODY_ACCEPT, MIG__FAULT_SEND_ACCEPT);
	if (nfiles && m->phase == MIG__DST_ACCEPTED && mig__xdst_start(e, m) != 0)
		dst_drop(e, m, MIG_ENOMEM, "cannot start the file transfer");
}

void mig__dst_on_prepare(mig_engine *e, uint64_t conn, const Migwire__Prepare *p, size_t bytes)
{
	char why[MIG__REASON_MAX];
	struct mig_migration *m = mig__handoff_find(e, p->mid);
	const mig__outcome *r = m ? NULL : mig__outcomes_find(&e->outcomes, p->mid);
	if (r && !r->outgoing) {
		/* A repeat after the end: committed, it was merged (never
		 * twice); aborted, the copy is gone and the source knows. */
		if (r->committed)
			reply_retired(e, conn, p->mid, bytes, MIGWIRE__FRAME__BODY_PREPARED);
		else
			mig__handoff_count_retired(e, bytes, 0);
		return;
	}
	if (!m || m->outgoing) {
		Migwire__Failed fl = MIGWIRE__FAILED__INIT;
		fl.mid = p->mid;
		fl.code = MIG_EUNKNOWN;
		fl.reason = "no such migration here";
		mig__frame f = MIGWIRE__FRAME__INIT;
		f.body_case = MIGWIRE__FRAME__BODY_FAILED;
		f.failed = &fl;
		mig__handoff_reply(e, conn, &f, NULL);
		return;
	}
	m->bytes_received += bytes;
	if (m->phase == MIG__DST_PREPARED ||
	    (m->phase == MIG__DONE && m->state == MIG_MIGRATION_COMMITTED)) {
		send_simple(e, m, conn, MIGWIRE__FRAME__BODY_PREPARED, MIG__FAULT_NONE);
		return; /* a repeat: already merged, never twice */
	}
	if (m->phase != MIG__DST_ACCEPTED)
		return;
	m->conn = conn;
	int err = 0;
	for (size_t i = 0; i < p->n_light && !err; i++) {
		const Migwire__DomainData *dd = p->light[i];
		mig__domain *d = find_domain(e, dd->name);
		if (!d) {
			err = MIG_ENODOMAIN;
			snprintf(why, sizeof(why), "domain %s is not registered here", dd->name);
			break;
		}
		if (dd->version > d->version) {
			err = MIG_EVERSION;
			snprintf(why, sizeof(why), "domain %s version %u is newer than %u", dd->name,
				 dd->version, d->version);
			break;
		}
		char user[MIG__USER_MAX + 1];
		mig__strlcpy(user, m->user, sizeof(user));
		mig__engine_unlock_for_app(e);
		/* An empty state arrives as a NULL buffer; apps get a valid pointer. */
		const void *state = dd->data.len ? dd->data.data : (const void *)"";
		int rc = d->merge(e, user, dd->version, state, dd->data.len, d->user_data);
		mig__engine_relock(e);
		if (rc) {
			err = MIG_ECALLBACK;
			snprintf(why, sizeof(why), "merge of domain %s failed (%d)", dd->name, rc);
		}
	}
	if (err) {
		Migwire__Failed fl = MIGWIRE__FAILED__INIT;
		fl.mid = m->mid;
		fl.code = err;
		fl.reason = why;
		mig__frame f = MIGWIRE__FRAME__INIT;
		f.body_case = MIGWIRE__FRAME__BODY_FAILED;
		f.failed = &fl;
		mig__handoff_reply(e, conn, &f, m);
		dst_drop(e, m, err, why);
		return;
	}
	if (m->xfer) {
		/* Files: PREPARED only once every staged file checks out. */
		mig__handoff_set_phase(m, MIG__DST_VERIFYING, 0);
		mig__xdst_verify(e, m, p);
		return;
	}
	mig__handoff_set_phase(m, MIG__DST_PREPARED, mig__now_us() + mig__handoff_timeout_us(e));
	send_simple(e, m, conn, MIGWIRE__FRAME__BODY_PREPARED, MIG__FAULT_SEND_PREPARED);
}

void mig__dst_files_verified(mig_engine *e, struct mig_migration *m, int err, const char *why)
{
	if (m->phase != MIG__DST_VERIFYING)
		return;
	if (err) {
		Migwire__Failed fl = MIGWIRE__FAILED__INIT;
		fl.mid = m->mid;
		fl.code = err;
		fl.reason = (char *)why;
		mig__frame f = MIGWIRE__FRAME__INIT;
		f.body_case = MIGWIRE__FRAME__BODY_FAILED;
		f.failed = &fl;
		if (m->conn && mig__engine_conn(e, m->conn))
			mig__handoff_reply(e, m->conn, &f, m);
		dst_drop(e, m, err, why);
		return;
	}
	mig__handoff_set_phase(m, MIG__DST_PREPARED, mig__now_us() + mig__handoff_timeout_us(e));
	send_simple(e, m, m->conn, MIGWIRE__FRAME__BODY_PREPARED, MIG__FAULT_SEND_PREPARED);
}

void mig__dst_on_commit(mig_engine *e, uint64_t conn, const Migwire__Commit *c, size_t bytes)
{
	struct mig_migration *m = mig__handoff_find(e, c->mid);
	if (m && !m->outgoing) {
		m->bytes_received += bytes;
		if (m->phase == MIG__DST_PREPARED) {
			dst_activate(e, m, conn);
		} else if (m->phase == MIG__DONE && m->state == MIG_MIGRATION_COMMITTED) {
			send_simple(e, m, conn, MIGWIRE__FRAME__BODY_COMMITTED, MIG__FAULT_NONE);
		} else if (m->phase == MIG__DST_INSTALLING) {
			m->conn = conn; /* COMMITTED goes out when the install ends */
		} else if (m->phase == MIG__DST_ACCEPTED || m->phase == MIG__DST_VERIFYING) {
			/* COMMIT before PREPARED is a protocol error: the source
			 * cannot have decided, so there is nothing to activate. */
			dst_drop(e, m, MIG_EPROTO, "COMMIT before PREPARE");
			mig__handoff_reply_outcome(e, conn, m->mid,
						   MIGWIRE__OUTCOME_STATE__OUTCOME_ABORTED);
		} else {
			mig__handoff_reply_outcome(e, conn, m->mid,
						   MIGWIRE__OUTCOME_STATE__OUTCOME_ABORTED);
		}
		return;
	}
	const mig__outcome *r = m ? NULL : mig__outcomes_find(&e->outcomes, c->mid);
	if (r && !r->outgoing) {
		if (r->committed) {
			reply_retired(e, conn, c->mid, bytes, MIGWIRE__FRAME__BODY_COMMITTED);
		} else {
			mig__handoff_count_retired(e, bytes, 0);
			mig__handoff_reply_outcome(e, conn, c->mid,
						   MIGWIRE__OUTCOME_STATE__OUTCOME_ABORTED);
		}
		return;
	}
	/* No record (this engine restarted, or forgot): tell the source
	 * whether the user is here, so it can decide without guessing. */
	Migwire__OutcomeState st = mig__handoff_outcome_of(e, c->mid, c->user);
	if (m || r) /* our own outgoing migration with that id: not ours to commit */
		st = MIGWIRE__OUTCOME_STATE__OUTCOME_UNKNOWN_USER_ABSENT;
	if (st == MIGWIRE__OUTCOME_STATE__OUTCOME_UNKNOWN_USER_ACTIVE) {
		Migwire__Committed cm = MIGWIRE__COMMITTED__INIT;
		cm.mid = c->mid;
		mig__frame f = MIGWIRE__FRAME__INIT;
		f.body_case = MIGWIRE__FRAME__BODY_COMMITTED;
		f.committed = &cm;
		mig__handoff_reply(e, conn, &f, NULL);
		return;
	}
	mig__handoff_reply_outcome(e, conn, c->mid, st);
}

void mig__dst_on_abort(mig_engine *e, uint64_t conn, const Migwire__Abort *a, size_t bytes)
{
	struct mig_migration *m = mig__handoff_find(e, a->mid);
	if (m && !m->outgoing) {
		m->bytes_received += bytes;
		if (m->phase == MIG__DST_INSTALLING) {
			mig__handoff_reply_outcome(e, conn, m->mid,
						   MIGWIRE__OUTCOME_STATE__OUTCOME_COMMITTED);
			return;
		}
		if (m->phase == MIG__DST_ACCEPTED || m->phase == MIG__DST_VERIFYING ||
		    m->phase == MIG__DST_PREPARED) {
			char why[MIG__REASON_MAX];
			snprintf(why, sizeof(why), "source aborted: %s", a->reason ? a->reason : "");
			dst_drop(e, m, MIG_ECANCELED, why);
		}
		if (m->state == MIG_MIGRATION_COMMITTED) {
			mig__handoff_reply_outcome(e, conn, m->mid,
						   MIGWIRE__OUTCOME_STATE__OUTCOME_COMMITTED);
			return;
		}
		send_simple(e, m, conn, MIGWIRE__FRAME__BODY_ABORTED, MIG__FAULT_NONE);
		return;
	}
	const mig__outcome *r = m ? NULL : mig__outcomes_find(&e->outcomes, a->mid);
	if (r && !r->outgoing) {
		if (r->committed) {
			mig__handoff_count_retired(e, bytes, 0);
			mig__handoff_reply_outcome(e, conn, a->mid,
						   MIGWIRE__OUTCOME_STATE__OUTCOME_COMMITTED);
		} else {
			reply_retired(e, conn, a->mid, bytes, MIGWIRE__FRAME__BODY_ABORTED);
		}
		return;
	}
	Migwire__Aborted ab = MIGWIRE__ABORTED__INIT;
	ab.mid = a->mid;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_ABORTED;
	f.aborted = &ab;
	mig__handoff_reply(e, conn, &f, NULL);
}

void mig__dst_on_outcome(mig_engine *e, struct mig_migration *m, Migwire__OutcomeState state)
{
	if (m->phase != MIG__DST_PREPARED)
		return;
	switch (state) {
	case MIGWIRE__OUTCOME_STATE__OUTCOME_COMMITTED:
		dst_activate(e, m, m->conn);
		return;
	case MIGWIRE__OUTCOME_STATE__OUTCOME_UNKNOWN_USER_ABSENT:
		/* The source lost its memory and does not have the user: this
		 * prepared copy is the only one left. */
		mig__engine_log(e, MIG_LOG_WARN,
				"migration %s: the source has no record and no user %s; "
				"activating the only copy", m->mid, m->user);
		dst_activate(e, m, m->conn);
		return;
	case MIGWIRE__OUTCOME_STATE__OUTCOME_ABORTED:
		dst_drop(e, m, MIG_ECANCELED, "the source aborted the migration");
		return;
	case MIGWIRE__OUTCOME_STATE__OUTCOME_UNKNOWN_USER_ACTIVE:
		dst_drop(e, m, MIG_EUNKNOWN, "the source has no record and serves the user");
		return;
	default:
		return; /* pending: ask again later */
	}
}

void mig__dst_on_link_down(mig_engine *e, struct mig_migration *m, int error, const char *reason)
{
	if (m->phase == MIG__DST_ACCEPTED || m->phase == MIG__DST_VERIFYING) {
		/* PREPARED was never sent, so the source cannot have committed:
		 * dropping is safe. */
		char why[MIG__REASON_MAX];
		snprintf(why, sizeof(why), "lost the link before PREPARE: %s", reason);
		dst_drop(e, m, error ? error : MIG_ECLOSED, why);
	} else if (m->phase == MIG__DST_PREPARED) {
		/* Wait a little for the source to come back with COMMIT or
		 * ABORT, then start asking. */
		m->deadline_us = mig__now_us() + mig__handoff_backoff_us(m) + 100000;
	}
}

static void send_query(mig_engine *e, struct mig_migration *m)
{
	Migwire__OutcomeQuery q = MIGWIRE__OUTCOME_QUERY__INIT;
	q.mid = m->mid;
	q.user = m->user;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_OUTCOME_QUERY;
	f.outcome_query = &q;
	mig__handoff_send(e, m, &f, MIG__FAULT_NONE);
}

void mig__dst_tick(mig_engine *e, struct mig_migration *m, uint64_t now)
{
	if (!m->deadline_us || now < m->deadline_us)
		return;
	if (m->phase == MIG__DST_ACCEPTED) {
		dst_drop(e, m, MIG_ETIMEDOUT, "the source did not send its state in time");
		return;
	}
	if (m->phase != MIG__DST_PREPARED)
		return;
	if (!m->parked && m->retries >= 3) {
		m->parked = true;
		mig__user *u = mig__users_find(&e->users, m->user);
		if (u)
			u->state = MIG_USER_PARKED;
		mig__engine_log(e, MIG_LOG_WARN,
				"migration %s: no word from the source; user %s parked", m->mid,
				m->user);
	}
	send_query(e, m);
	m->deadline_us = now + mig__handoff_backoff_us(m);
}
