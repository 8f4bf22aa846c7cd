/* The counting allocator of cnt_alloc.h. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include <migrate/migrate.h>

#include "cnt_alloc.h"

typedef union cnt_hdr {
	size_t size;
	max_align_t align;
} cnt_hdr;

size_t cnt_calls;
size_t cnt_live;
size_t cnt_peak;
long cnt_fail_after = -1;

static void *cnt_malloc(size_t n)
{
	cnt_calls++;
	if (cnt_fail_after == 0)
		return NULL;
	if (cnt_fail_after > 0)
		cnt_fail_after--;
	cnt_hdr *h = malloc(sizeof(*h) + n);
	if (!h)
		return NULL;
	h->size = n;
	cnt_live += n;
	if (cnt_live > cnt_peak)
		cnt_peak = cnt_live;
	return h + 1;
}

static void cnt_free(void *p)
{
	if (!p)
		return;
	cnt_hdr *h = (cnt_hdr *)p - 1;
	cnt_live -= h->size;
	free(h);
}

static void *cnt_realloc(void *p, size_t n)
{
	void *q = cnt_malloc(n);
	if (!q || !p)
		return q;
	size_t old = ((cnt_hdr *)p - 1)->size;
	memcpy(q, p, old < n ? old : n);
	cnt_free(p);
	return q;
}

void cnt_install(long fail_after)
{
	cnt_calls = cnt_live = cnt_peak = 0;
	cnt_fail_after = fail_after;
	assert_int_equal(mig_set_allocator(cnt_malloc, cnt_realloc, cnt_free), 0);
}

void cnt_remove(void)
{
	assert_int_equal(mig_set_allocator(NULL, NULL, NULL), 0);
	cnt_fail_after = -1;
}
