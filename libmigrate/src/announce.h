/* The engine side of the announce channel: an engine configured with an
 * orchestrator URL connects to it on `mig-announce`, sends Announce once
 * the handshake is done, then a Heartbeat every heartbeat_ms; when the link
 * fails or drops it reconnects with backoff.
 *
 * Everything here runs on the dispatching thread with the engine lock held
 * (from mig_engine_dispatch()); sending only queues a message for the I/O
 * thread, so an orchestrator that is slow, down or unreachable never delays
 * dispatch or a handoff. */
#ifndef MIG_ANNOUNCE_H
#define MIG_ANNOUNCE_H

#include "common.h"
#include "transport.h"

struct mig__announce;

/* Validates and copies the options. A NULL or empty url gives *out = NULL
 * (no announcing). Returns 0, MIG_EINVAL (URL is not ws:// or wss://,
 * heartbeat_ms outside 10..3600000; detail in err) or MIG_ENOMEM. */
int mig__announce_new(struct mig__announce **out, const char *url,
		      unsigned heartbeat_ms, char *err, size_t err_len);
/* Accepts NULL. */
void mig__announce_free(struct mig__announce *a);

/* Handles an UP, DOWN or FRAME event of the announce channel. */
void mig__announce_on_event(mig_engine *e, const mig__tev *ev);

/* Connects when due and sends heartbeats when due. Returns the next
 * deadline (monotonic microseconds), or 0 if nothing is scheduled. */
uint64_t mig__announce_tick(mig_engine *e, uint64_t now);

#endif
