/* Helpers shared by the integration tests. */
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "support.h"

void test_engine_options(mig_engine_options *o, const char *id)
{
	memset(o, 0, sizeof(*o));
	o->listen_address = "127.0.0.1";
	o->listen_port = 0;
	o->engine_id = id;
	o->secret = TEST_SECRET;
	o->secret_len = TEST_SECRET_LEN;
	o->peer_timeout_ms = 2000;
}

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

bool test_dispatch_until(mig_engine **engines, size_t n, bool (*cond)(void *), void *arg,
			 int timeout_ms)
{
	uint64_t end = now_ms() + (uint64_t)timeout_ms;
	struct pollfd pfds[16];
	if (n > 16)
		n = 16;
	for (;;) {
		for (size_t i = 0; i < n; i++)
			mig_engine_dispatch(engines[i]);
		if (cond && cond(arg))
			return true;
		uint64_t now = now_ms();
		if (now >= end)
			return cond ? cond(arg) : true;
		for (size_t i = 0; i < n; i++) {
			pfds[i].fd = mig_engine_fd(engines[i]);
			pfds[i].events = POLLIN;
			pfds[i].revents = 0;
		}
		uint64_t left = end - now;
		poll(pfds, (nfds_t)n, left > 20 ? 20 : (int)left);
	}
}

void test_dispatch_for(mig_engine **engines, size_t n, int ms)
{
	test_dispatch_until(engines, n, NULL, NULL, ms);
}

struct test_runner {
	mig_engine *engine;
	pthread_t thread;
	volatile int stop;
};

static void *runner_main(void *arg)
{
	test_runner *r = arg;
	while (!r->stop)
		mig_engine_run(r->engine, 50);
	return NULL;
}

test_runner *test_runner_start(mig_engine *e)
{
	test_runner *r = calloc(1, sizeof(*r));
	if (!r)
		return NULL;
	r->engine = e;
	if (pthread_create(&r->thread, NULL, runner_main, r) != 0) {
		free(r);
		return NULL;
	}
	return r;
}

void test_runner_stop(test_runner *r)
{
	if (!r)
		return;
	r->stop = 1;
	mig_engine_stop(r->engine);
	pthread_join(r->thread, NULL);
	free(r);
}

void test_fill(void *buf, size_t len, unsigned seed)
{
	uint64_t x = seed * 2654435761u + 1;
	uint8_t *p = buf;
	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		p[i] = (uint8_t)x;
	}
}
