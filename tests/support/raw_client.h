/* A raw client for integration tests: one connection through libmigrate's
 * own transport to an engine, on any channel, with or without the cluster
 * secret, that sends frames (or bytes) of the test's choosing and keeps
 * what comes back. */
#ifndef MIG_TEST_RAW_CLIENT_H
#define MIG_TEST_RAW_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common.h"
#include "migrate/migrate.h"
#include "transport.h"
#include "wire.h"

typedef struct raw_client {
	mig__transport *t;
	mig__evq q;
	uint64_t conn;
	bool up, down;
	int down_error;
	char down_reason[MIG__REASON_MAX];
	mig__frame *frames[16]; /* received, oldest first; later ones dropped */
	int nframes;
} raw_client;

/* Connects to url on channel; with secret (insecure false) the transport
 * runs the handshake, without (insecure true) it connects as a client of
 * the app would. Asserts on failure to start. */
void raw_open(raw_client *rc, const char *url, int channel, const void *secret, size_t secret_len,
	      bool insecure);
void raw_close(raw_client *rc);
/* Takes whatever the transport posted, without blocking. */
void raw_pump(raw_client *rc);
/* Predicates for test_dispatch_until() (they pump): arg is the client. */
bool raw_is_up_or_down(void *arg);
bool raw_is_down(void *arg);
bool raw_has_frame(void *arg);
/* Waits for the handshake / the connection's end (dispatching es). */
void raw_wait_up(raw_client *rc, mig_engine **es, size_t n);
void raw_wait_down(raw_client *rc, mig_engine **es, size_t n);
/* The next frame the engine sent (owned by the caller). */
mig__frame *raw_next_frame(raw_client *rc, mig_engine **es, size_t n);
/* Encodes f and sends it. */
void raw_send(raw_client *rc, const mig__frame *f);

#endif
