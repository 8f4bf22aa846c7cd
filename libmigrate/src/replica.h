/* Replication of users' light state to a standby engine, promotion with
 * epochs (replica.c, replica_primary.c, replica_standby.c; public API in
 * <migrate/replicate.h>). Everything here runs with the engine lock held,
 * inside dispatch unless said otherwise. */
#ifndef MIG_REPLICA_H
#define MIG_REPLICA_H

#include "engine_int.h"

/* At most this many replicas held by a standby (each at most one frame). */
#define MIG__REPLICA_MAX_USERS 10000u

/* Is this peer-channel frame the replica module's? */
bool mig__replica_owns(const mig__frame *f);
void mig__replica_on_frame(mig_engine *e, uint64_t conn, const mig__frame *f, size_t bytes);
void mig__replica_on_conn_down(mig_engine *e, uint64_t conn);
/* Sends due updates, acts on promotions and supersessions. Returns the next
 * deadline (0 = none). */
uint64_t mig__replica_tick(mig_engine *e, uint64_t now);
/* Control channel: PromoteRequest / ReplicateRequest. Returns the reply
 * code and writes the reason into why. */
int mig__replica_control(mig_engine *e, const mig__frame *f, char *why, size_t why_len);
/* Engine teardown: first, before the worker pool goes, mig__replica_stop()
 * (stops file work, releases strands); then mig__replica_free(). */
void mig__replica_stop(mig_engine *e);
void mig__replica_free(mig_engine *e);

#endif
