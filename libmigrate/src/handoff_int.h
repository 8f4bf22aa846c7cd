/* Shared between handoff.c (common), handoff_src.c and handoff_dst.c. */
#ifndef MIG_HANDOFF_INT_H
#define MIG_HANDOFF_INT_H

#include "engine_int.h"

struct mig_migration *mig__handoff_new(mig_engine *e, const char *mid, const char *user,
				       const char *peer_url, bool outgoing);
void mig__handoff_set_phase(struct mig_migration *m, enum mig__phase phase,
			    uint64_t deadline);
uint64_t mig__handoff_timeout_us(const mig_engine *e);
uint64_t mig__handoff_backoff_us(struct mig_migration *m);
void mig__handoff_finish(mig_engine *e, struct mig_migration *m, mig_migration_state state,
			 int error, const char *reason);
/* Emits an event to the app (lock released around the callback) and to
 * control subscribers. */
void mig__handoff_emit(mig_engine *e, mig_event_type type, struct mig_migration *m);
/* Sends to the migration's peer (connecting if needed), applying a test
 * fault at `point`. */
int mig__handoff_send(mig_engine *e, struct mig_migration *m, const mig__frame *f,
		      enum mig__fault_point point);
/* Replies on the connection a request came in on. */
void mig__handoff_reply(mig_engine *e, uint64_t conn, const mig__frame *f,
			struct mig_migration *m);
void mig__handoff_reply_outcome(mig_engine *e, uint64_t conn, const char *mid,
				Migwire__OutcomeState state);
Migwire__OutcomeState mig__handoff_outcome_of(mig_engine *e, const char *mid,
					      const char *user);

/* Frees every migration record (engine teardown). */
void mig__handoff_free_all(mig_engine *e);

/* handoff_src.c */
void mig__src_on_frame(mig_engine *e, struct mig_migration *m, const mig__frame *f);
void mig__src_on_link_down(mig_engine *e, struct mig_migration *m, int error,
			   const char *reason);
void mig__src_tick(mig_engine *e, struct mig_migration *m, uint64_t now);

/* handoff_dst.c */
void mig__dst_on_begin(mig_engine *e, uint64_t conn, const Migwire__Begin *b, size_t bytes);
void mig__dst_on_prepare(mig_engine *e, uint64_t conn, const Migwire__Prepare *p,
			 size_t bytes);
void mig__dst_on_commit(mig_engine *e, uint64_t conn, const Migwire__Commit *c, size_t bytes);
void mig__dst_on_abort(mig_engine *e, uint64_t conn, const Migwire__Abort *a, size_t bytes);
void mig__dst_on_outcome(mig_engine *e, struct mig_migration *m, Migwire__OutcomeState state);
void mig__dst_on_link_down(mig_engine *e, struct mig_migration *m, int error,
			   const char *reason);
void mig__dst_tick(mig_engine *e, struct mig_migration *m, uint64_t now);

#endif
