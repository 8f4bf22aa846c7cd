/* Helpers shared by the integration tests. */
#ifndef MIG_TEST_SUPPORT_H
#define MIG_TEST_SUPPORT_H

#include <stdbool.h>
#include <stddef.h>

#include "migrate/migrate.h"

#define TEST_SECRET "test-cluster-secret-0123456789abcdef"
#define TEST_SECRET_LEN (sizeof(TEST_SECRET) - 1)

/* Options with the test secret, an ephemeral loopback port and `id`. */
void test_engine_options(mig_engine_options *o, const char *id);

/* Dispatches every engine (polling their fds) until cond(arg) is true or
 * timeout_ms passes. Returns cond's final value. */
bool test_dispatch_until(mig_engine **engines, size_t n, bool (*cond)(void *arg),
			 void *arg, int timeout_ms);

/* Dispatches every engine for `ms` milliseconds (to let in-flight messages
 * land when asserting that nothing changes). */
void test_dispatch_for(mig_engine **engines, size_t n, int ms);

/* Runs mig_engine_run() on a thread of its own (for tests that block in
 * the control client while the engine works). */
typedef struct test_runner test_runner;
test_runner *test_runner_start(mig_engine *e);
void test_runner_stop(test_runner *r);

/* Fills buf with deterministic pseudo-random bytes from `seed`. */
void test_fill(void *buf, size_t len, unsigned seed);

#endif
