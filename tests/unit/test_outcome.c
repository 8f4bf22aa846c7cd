/* outcome.c: the outcome memory on its own. Finding records by migration
 * id, the cap and the time limit (oldest first), departures (the newest
 * committed departure of a user, with its interned strings shared between
 * records), all-or-nothing adds when an allocation fails, and the bytes a
 * record costs, through a counting allocator installed with
 * mig_set_allocator(). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "outcome.h"

#define HDR 16

static long long live_bytes, live_blocks;
static long fail_after = -1; /* allocations left before one fails (-1: never) */

static bool fail_now(void)
{
	if (fail_after < 0)
		return false;
	return fail_after-- == 0;
}

static void *count_malloc(size_t n)
{
	if (fail_now())
		return NULL;
	uint8_t *p = malloc(n + HDR);
	if (!p)
		return NULL;
	memcpy(p, &n, sizeof(n));
	live_bytes += (long long)n;
	live_blocks++;
	return p + HDR;
}

static void count_free(void *q)
{
	if (!q)
		return;
	uint8_t *p = (uint8_t *)q - HDR;
	size_t n;
	memcpy(&n, p, sizeof(n));
	live_bytes -= (long long)n;
	live_blocks--;
	free(p);
}

static void *count_realloc(void *q, size_t n)
{
	if (!q)
		return count_malloc(n);
	if (fail_now())
		return NULL;
	uint8_t *p = (uint8_t *)q - HDR;
	size_t old;
	memcpy(&old, p, sizeof(old));
	uint8_t *np = realloc(p, n + HDR);
	if (!np)
		return NULL;
	memcpy(np, &n, sizeof(n));
	live_bytes += (long long)n - (long long)old;
	return np + HDR;
}

/* Migration id number k: 32 hex digits, random-looking in front. */
static const char *mid_of(unsigned k, char out[MIG__MID_LEN + 1])
{
	uint32_t h = k * 2654435761u;
	snprintf(out, MIG__MID_LEN + 1, "%08x%08x0000000000000000", h, k);
	return out;
}

static void add(mig__outcomes *o, unsigned k, bool outgoing, bool committed, uint64_t ended_us,
		const char *user, const char *dest_id)
{
	char mid[MIG__MID_LEN + 1];
	mig__outcome_in in = {
		.mid = mid_of(k, mid),
		.outgoing = outgoing,
		.committed = committed,
		.error = committed ? 0 : MIG_ECANCELED,
		.ended_us = ended_us,
		.user = user,
		.dest_engine_id = dest_id,
		.dest_app_url = "https://b.example/app",
		.dest_session_url = "wss://b.example:7000/",
	};
	assert_int_equal(mig__outcomes_add(o, &in), 0);
}

static bool known(const mig__outcomes *o, unsigned k)
{
	char mid[MIG__MID_LEN + 1];
	return mig__outcomes_find(o, mid_of(k, mid)) != NULL;
}

static void test_find_and_answer(void **state)
{
	mig__outcomes o;
	mig__outcomes_init(&o);
	char mid[MIG__MID_LEN + 1];
	assert_null(mig__outcomes_find(&o, mid_of(1, mid)));
	for (unsigned k = 0; k < 1000; k++)
		add(&o, k, k % 2, k % 3 != 0, 5000000, "user-1", "engine-b");
	assert_int_equal(o.count, 1000);
	for (unsigned k = 0; k < 1000; k++) {
		const mig__outcome *r = mig__outcomes_find(&o, mid_of(k, mid));
		assert_non_null(r);
		assert_int_equal(r->outgoing, k % 2);
		assert_int_equal(r->committed, k % 3 != 0);
		assert_int_equal(r->error, k % 3 != 0 ? 0 : MIG_ECANCELED);
		assert_int_equal(r->ended_s, 5);
		/* Only a source's committed record keeps where the user went. */
		assert_true((r->departure != NULL) == (k % 2 && k % 3 != 0));
	}
	assert_null(mig__outcomes_find(&o, mid_of(1000, mid)));
	/* Not migration ids: never found, never added. */
	assert_null(mig__outcomes_find(&o, "nothex"));
	assert_null(mig__outcomes_find(&o, "0123456789ABCDEF0123456789ABCDEF"));
	mig__outcome_in bad = {.mid = "0123"};
	assert_int_equal(mig__outcomes_add(&o, &bad), MIG_EINVAL);
	assert_int_equal(o.count, 1000);
	/* One departure string for every record of the same user and
	 * destination. */
	assert_int_equal(o.nstrs, 1);
	mig__outcomes_destroy(&o);
	assert_int_equal(o.count, 0);
}

static void test_cap_and_ttl(void **state)
{
	mig__outcomes o;
	mig__outcomes_init(&o);
	/* 10 minutes, 10,000 records (the handoff's defaults); ended at
	 * second k / 100. */
	const uint64_t ttl = 600ull * 1000000u;
	for (unsigned k = 0; k < 25000; k++) {
		add(&o, k, true, true, (uint64_t)k * 10000u, k % 2 ? "user-a" : "user-b", "b");
		mig__outcomes_expire(&o, (uint64_t)k * 10000u, ttl, 10000);
	}
	assert_int_equal(o.count, 10000);
	assert_false(known(&o, 0));
	assert_false(known(&o, 14999));
	assert_true(known(&o, 15000));
	assert_true(known(&o, 24999));
	/* Time: at second 400 records that ended before second 400 - 600...
	 * none expire yet; at second 820, those before 220 go. */
	assert_int_equal(mig__outcomes_expire(&o, 249990000u, ttl, 10000), 0);
	size_t n = mig__outcomes_expire(&o, 820ull * 1000000u, ttl, 10000);
	assert_int_equal(n, 22000 - 15000);
	assert_false(known(&o, 21999));
	assert_true(known(&o, 22000));
	/* Everything, then add again into an empty memory. */
	n = mig__outcomes_expire(&o, 2000ull * 1000000u, ttl, 10000);
	assert_int_equal(n, 3000);
	assert_int_equal(o.count, 0);
	assert_null(o.head);
	assert_int_equal(o.nstrs, 0);
	add(&o, 7, false, true, 1, NULL, NULL);
	assert_true(known(&o, 7));
	mig__outcomes_destroy(&o);
}

static void test_departed(void **state)
{
	mig__outcomes o;
	mig__outcomes_init(&o);
	assert_null(mig__outcomes_departed(&o, "user-a"));
	add(&o, 1, true, true, 0, "user-a", "engine-b");
	add(&o, 2, true, false, 0, "user-a", "engine-c"); /* aborted: stayed */
	add(&o, 3, false, true, 0, "user-a", "engine-d"); /* came back */
	add(&o, 4, true, true, 0, "user-b", "engine-c");
	add(&o, 5, true, true, 0, "user-a", "engine-e");
	add(&o, 6, true, true, 0, "user-c", NULL);
	const mig__outcome *r = mig__outcomes_departed(&o, "user-a");
	assert_non_null(r);
	const char *user, *id, *app, *sess;
	mig__outcome_departure(r, &user, &id, &app, &sess);
	assert_string_equal(user, "user-a");
	assert_string_equal(id, "engine-e");
	assert_string_equal(app, "https://b.example/app");
	assert_string_equal(sess, "wss://b.example:7000/");
	r = mig__outcomes_departed(&o, "user-b");
	assert_non_null(r);
	mig__outcome_departure(r, &user, &id, &app, &sess);
	assert_string_equal(id, "engine-c");
	r = mig__outcomes_departed(&o, "user-c");
	assert_non_null(r);
	mig__outcome_departure(r, &user, &id, &app, &sess);
	assert_string_equal(user, "user-c");
	assert_string_equal(id, "");
	assert_null(mig__outcomes_departed(&o, "user"));
	assert_null(mig__outcomes_departed(&o, "user-a-2"));
	/* A record without a departure reads as empty strings. */
	char mid[MIG__MID_LEN + 1];
	r = mig__outcomes_find(&o, mid_of(3, mid));
	mig__outcome_departure(r, &user, &id, &app, &sess);
	assert_string_equal(user, "");
	assert_string_equal(sess, "");
	/* Forgotten with its record: user-b's departure; user-a's newest
	 * stays when the older ones go. */
	assert_int_equal(mig__outcomes_expire(&o, 0, 0, 2), 4);
	assert_null(mig__outcomes_departed(&o, "user-b"));
	r = mig__outcomes_departed(&o, "user-a");
	assert_non_null(r);
	mig__outcome_departure(r, &user, &id, &app, &sess);
	assert_string_equal(id, "engine-e");
	assert_non_null(mig__outcomes_departed(&o, "user-c"));
	assert_int_equal(o.nstrs, 2);
	mig__outcomes_destroy(&o);
}

/* Every allocation of an add, failed in turn: MIG_ENOMEM and nothing
 * changed, then the same add succeeds. */
static void test_alloc_failure(void **state)
{
	mig__outcomes o;
	mig__outcomes_init(&o);
	unsigned k = 0;
	for (unsigned round = 0; round < 300; round++) {
		for (long n = 0;; n++) {
			char mid[MIG__MID_LEN + 1];
			char user[32];
			snprintf(user, sizeof(user), "user-%u", k % 7);
			mig__outcome_in in = {
				.mid = mid_of(k, mid),
				.outgoing = true,
				.committed = k % 5 != 0,
				.user = user,
				.dest_engine_id = "engine-b",
			};
			size_t before = o.count, nstrs = o.nstrs;
			fail_after = n;
			int rc = mig__outcomes_add(&o, &in);
			bool failed = fail_after < 0;
			fail_after = -1;
			if (rc == 0) {
				assert_int_equal(o.count, before + 1);
				assert_true(known(&o, k));
				break;
			}
			assert_true(failed);
			assert_int_equal(rc, MIG_ENOMEM);
			assert_int_equal(o.count, before);
			assert_int_equal(o.nstrs, nstrs);
			assert_false(known(&o, k));
		}
		k++;
	}
	for (unsigned j = 0; j < k; j++)
		assert_true(known(&o, j));
	mig__outcomes_destroy(&o);
}

/* What a remembered outcome costs, at the cap: every byte the memory
 * allocates (chunks, hash table, interned strings) over the records. */
static void test_bytes_per_record(void **state)
{
	long long b0 = live_bytes, n0 = live_blocks;
	mig__outcomes o;
	mig__outcomes_init(&o);
	for (unsigned k = 0; k < 10000; k++)
		add(&o, k, k % 2, true, k, "mover", "engine-b");
	double per = (double)(live_bytes - b0) / 10000.0;
	print_message("# 10000 outcomes: %lld bytes in %lld blocks, %.1f bytes per record "
		      "(%zu-byte records)\n",
		      live_bytes - b0, live_blocks - n0, per, sizeof(mig__outcome));
	assert_true(sizeof(mig__outcome) <= 40);
	assert_true(per < 64);
	/* Allocator overhead aside, blocks are few: chunks of records. */
	assert_true(live_blocks - n0 < 10000 / 64);
	mig__outcomes_destroy(&o);
	assert_int_equal(live_bytes, b0);
	assert_int_equal(live_blocks, n0);
}

int main(void)
{
	if (mig_set_allocator(count_malloc, count_realloc, count_free) != 0)
		return 1;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_find_and_answer),
		cmocka_unit_test(test_cap_and_ttl),
		cmocka_unit_test(test_departed),
		cmocka_unit_test(test_alloc_failure),
		cmocka_unit_test(test_bytes_per_record),
	};
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	if (live_bytes != 0 || live_blocks != 0) {
		fprintf(stderr, "outcome memory left %lld bytes in %lld blocks\n", live_bytes,
			live_blocks);
		return 1;
	}
	return rc;
}
