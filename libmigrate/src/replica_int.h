/* Private to replica.c, replica_primary.c and replica_standby.c: the
 * records of replication and what the three files share. Everything here
 * runs with the engine lock held, in dispatch. */
#ifndef MIG_REPLICA_INT_H
#define MIG_REPLICA_INT_H

#include "digest.h"
#include "migrate/replicate.h"
#include "replica.h"
#include "replica_files.h"

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
	uint8_t inflight_digest[MIG__DIGEST_LEN];
	/* Digest of the state the standby acknowledged last. */
	bool have_digest;
	uint8_t digest[MIG__DIGEST_LEN];
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
	uint8_t job_digest[MIG__DIGEST_LEN];
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

/* What an event reports; mig__replica_emit() copies the strings. */
typedef struct evargs {
	const char *peer;
	uint64_t epoch, seq, bytes, total, lag;
	int error;
	const char *reason;
} evargs;

/* ---- replica.c ---- */
/* e->replica, created on first use; NULL when out of memory. */
struct mig__replica *mig__replica_get_rep(mig_engine *e);
void mig__replica_free_domains(rdomain *d, size_t n);
/* Frees n light-state buffers and the array (accepts NULL). */
void mig__replica_free_light(mig_buf *b, size_t n);
void mig__replica_prim_free(mig_engine *e, prim *p);
void mig__replica_repl_free(repl *r);
void mig__replica_rin_free(rin_rec *q);
/* The record of `user`, or NULL (r may be NULL). */
prim *mig__replica_find_prim(struct mig__replica *r, const char *user);
repl *mig__replica_find_repl(struct mig__replica *r, const char *user);
/* Logs the event and calls the app's handler with the lock released around
 * it; the strings are copied first, so the caller may free their record. */
void mig__replica_emit(mig_engine *e, mig_replica_event_type type, const char *user,
		       const evargs *a);
/* The earlier of two deadlines, 0 meaning none. */
uint64_t mig__replica_earliest(uint64_t a, uint64_t b);

/* ---- replica_primary.c ---- */
void mig__replica_on_ack(mig_engine *e, uint64_t conn, const Migwire__ReplicaAck *k);
/* Sends due updates, reaps stopped records, deactivates superseded users.
 * Returns the next deadline (0 = none). */
uint64_t mig__replica_tick_prims(mig_engine *e, uint64_t now);

/* ---- replica_standby.c ---- */
void mig__replica_on_update(mig_engine *e, uint64_t conn, const Migwire__ReplicaUpdate *u,
			    size_t bytes);
void mig__replica_on_file(mig_engine *e, uint64_t conn, const Migwire__ReplicaFile *f,
			  size_t bytes);
/* Promotes replicas asked for or silent past the auto-promote delay.
 * Returns the next deadline (0 = none). */
uint64_t mig__replica_tick_repls(mig_engine *e, uint64_t now);
/* Makes the replica the active user. Returns 0 or a MIG_E* with the reason
 * in why; the replica is kept on failure. */
int mig__replica_promote_now(mig_engine *e, repl *x, char *why, size_t why_len);

#endif
