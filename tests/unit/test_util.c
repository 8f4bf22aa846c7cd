/* Unit tests of util.c and alloc.c: identifier validation, error texts, the
 * version string and the allocator hook. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

/* A string of n copies of c, in a buffer of at least n + 1 bytes. */
static char *repeat(char *buf, char c, size_t n)
{
	memset(buf, c, n);
	buf[n] = '\0';
	return buf;
}

static void test_valid_user(void **state)
{
	char buf[MIG__USER_MAX + 2];

	assert_false(mig__valid_user(NULL));
	assert_false(mig__valid_user(""));
	assert_true(mig__valid_user("a"));
	assert_true(mig__valid_user("alice@example.com"));
	assert_true(mig__valid_user("!"));
	assert_true(mig__valid_user("~"));
	assert_true(mig__valid_user(repeat(buf, 'u', MIG__USER_MAX)));
	assert_false(mig__valid_user(repeat(buf, 'u', MIG__USER_MAX + 1)));
	assert_false(mig__valid_user("with space"));
	assert_false(mig__valid_user(" lead"));
	assert_false(mig__valid_user("trail "));
	assert_false(mig__valid_user("tab\there"));
	assert_false(mig__valid_user("new\nline"));
	assert_false(mig__valid_user("del\x7f"));
	assert_false(mig__valid_user("caf\xc3\xa9"));
	assert_false(mig__valid_user("\x01"));
}

static void test_valid_domain_name(void **state)
{
	char buf[MIG__NAME_MAX + 2];

	assert_false(mig__valid_domain_name(NULL));
	assert_false(mig__valid_domain_name(""));
	assert_true(mig__valid_domain_name("x"));
	assert_true(mig__valid_domain_name("sandwich.Progress_v2-beta"));
	assert_true(mig__valid_domain_name("AZaz09_.-"));
	assert_true(mig__valid_domain_name(repeat(buf, 'd', MIG__NAME_MAX)));
	assert_false(mig__valid_domain_name(repeat(buf, 'd', MIG__NAME_MAX + 1)));
	assert_false(mig__valid_domain_name("a b"));
	assert_false(mig__valid_domain_name("a/b"));
	assert_false(mig__valid_domain_name("a:b"));
	assert_false(mig__valid_domain_name("a@b"));
	assert_false(mig__valid_domain_name("caf\xc3\xa9"));
	assert_false(mig__valid_domain_name("tab\t"));
}

static void test_valid_mid(void **state)
{
	assert_false(mig__valid_mid(NULL));
	assert_false(mig__valid_mid(""));
	assert_true(mig__valid_mid("0123456789abcdef0123456789abcdef"));
	assert_true(mig__valid_mid("00000000000000000000000000000000"));
	assert_true(mig__valid_mid("ffffffffffffffffffffffffffffffff"));
	/* 31 and 33 digits */
	assert_false(mig__valid_mid("0123456789abcdef0123456789abcde"));
	assert_false(mig__valid_mid("0123456789abcdef0123456789abcdef0"));
	assert_false(mig__valid_mid("0123456789ABCDEF0123456789ABCDEF"));
	assert_false(mig__valid_mid("0123456789abcdef0123456789abcdeg"));
	assert_false(mig__valid_mid("0123456789abcdef 123456789abcdef"));
	assert_false(mig__valid_mid("-123456789abcdef0123456789abcdef"));
}

static const struct {
	int code;
	const char *name;
} all_codes[] = {
	{MIG_OK, "MIG_OK"},
	{MIG_EINVAL, "MIG_EINVAL"},
	{MIG_ENOMEM, "MIG_ENOMEM"},
	{MIG_ENOUSER, "MIG_ENOUSER"},
	{MIG_EEXIST, "MIG_EEXIST"},
	{MIG_EBUSY, "MIG_EBUSY"},
	{MIG_ESTATE, "MIG_ESTATE"},
	{MIG_ECONNECT, "MIG_ECONNECT"},
	{MIG_ECLOSED, "MIG_ECLOSED"},
	{MIG_ETIMEDOUT, "MIG_ETIMEDOUT"},
	{MIG_EAUTH, "MIG_EAUTH"},
	{MIG_EPROTO, "MIG_EPROTO"},
	{MIG_ETOOBIG, "MIG_ETOOBIG"},
	{MIG_EREJECTED, "MIG_EREJECTED"},
	{MIG_ECALLBACK, "MIG_ECALLBACK"},
	{MIG_ECANCELED, "MIG_ECANCELED"},
	{MIG_EVERSION, "MIG_EVERSION"},
	{MIG_ENODOMAIN, "MIG_ENODOMAIN"},
	{MIG_ETLS, "MIG_ETLS"},
	{MIG_EIO, "MIG_EIO"},
	{MIG_ESYSTEM, "MIG_ESYSTEM"},
	{MIG_EUNKNOWN, "MIG_EUNKNOWN"},
	{MIG_EPARKED, "MIG_EPARKED"},
};

static void test_error_names_and_texts(void **state)
{
	size_t n = MIG__ARRAY_LEN(all_codes);

	/* The table above must cover 0 .. the last code without gaps, so a new
	 * code in migrate.h without a test entry shows up here. */
	for (size_t i = 0; i < n; i++)
		assert_int_equal(all_codes[i].code, -(int)i);
	for (size_t i = 0; i < n; i++) {
		const char *text = mig_strerror(all_codes[i].code);
		assert_non_null(text);
		assert_true(strlen(text) > 0);
		assert_string_not_equal(text, "unknown error");
		assert_string_equal(mig_err_name(all_codes[i].code), all_codes[i].name);
		for (size_t j = 0; j < i; j++)
			assert_string_not_equal(text, mig_strerror(all_codes[j].code));
	}
	assert_string_equal(mig_strerror(MIG_OK), "success");
}

static void test_error_unknown(void **state)
{
	const int unknown[] = {1, 42, -(int)MIG__ARRAY_LEN(all_codes), -1000, INT_MIN, INT_MAX};

	for (size_t i = 0; i < MIG__ARRAY_LEN(unknown); i++) {
		assert_string_equal(mig_strerror(unknown[i]), "unknown error");
		assert_string_equal(mig_err_name(unknown[i]), "MIG_E?");
	}
}

static void test_version(void **state)
{
	char expected[64];

	snprintf(expected, sizeof(expected), "%d.%d.%d", MIG_VERSION_MAJOR, MIG_VERSION_MINOR,
		 MIG_VERSION_PATCH);
	assert_string_equal(mig_version(), expected);
}

static size_t hook_mallocs;
static size_t hook_reallocs;
static size_t hook_frees;

static void *hook_malloc(size_t n)
{
	hook_mallocs++;
	return malloc(n);
}

static void *hook_realloc(void *p, size_t n)
{
	hook_reallocs++;
	return realloc(p, n);
}

static void hook_free(void *p)
{
	hook_frees++;
	free(p);
}

static void test_set_allocator_partial(void **state)
{
	assert_int_equal(mig_set_allocator(hook_malloc, NULL, NULL), MIG_EINVAL);
	assert_int_equal(mig_set_allocator(NULL, hook_realloc, NULL), MIG_EINVAL);
	assert_int_equal(mig_set_allocator(NULL, NULL, hook_free), MIG_EINVAL);
	assert_int_equal(mig_set_allocator(hook_malloc, hook_realloc, NULL), MIG_EINVAL);
	assert_int_equal(mig_set_allocator(hook_malloc, NULL, hook_free), MIG_EINVAL);
	assert_int_equal(mig_set_allocator(NULL, hook_realloc, hook_free), MIG_EINVAL);

	/* A refused call must leave the default allocator in place. */
	hook_mallocs = hook_reallocs = hook_frees = 0;
	char *s = mig__strdup("x");
	assert_non_null(s);
	mig__free(s);
	assert_int_equal(hook_mallocs + hook_frees, 0);
}

static void test_set_allocator_hooks_used(void **state)
{
	hook_mallocs = hook_reallocs = hook_frees = 0;
	assert_int_equal(mig_set_allocator(hook_malloc, hook_realloc, hook_free), 0);

	char *s = mig__asprintf("%s-%d", "user", 7);
	assert_non_null(s);
	assert_string_equal(s, "user-7");
	s = mig__realloc(s, 64);
	assert_non_null(s);
	mig__free(s);
	void *z = mig__calloc(4, 8);
	assert_non_null(z);
	for (size_t i = 0; i < 32; i++)
		assert_int_equal(((unsigned char *)z)[i], 0);
	mig__free(z);
	mig__free(NULL);
	assert_int_equal(hook_mallocs, 2);
	assert_int_equal(hook_reallocs, 1);
	assert_int_equal(hook_frees, 2);

	assert_int_equal(mig_set_allocator(NULL, NULL, NULL), 0);
	hook_mallocs = 0;
	s = mig__strdup("y");
	mig__free(s);
	assert_int_equal(hook_mallocs, 0);
}

static void test_calloc_overflow(void **state)
{
	assert_null(mig__calloc(SIZE_MAX / 2, 4));
	void *p = mig__calloc(0, 16);
	assert_non_null(p);
	mig__free(p);
}

static void test_strings(void **state)
{
	char small[4];

	mig__strlcpy(small, "abcdef", sizeof(small));
	assert_string_equal(small, "abc");
	mig__strlcpy(small, "ab", sizeof(small));
	assert_string_equal(small, "ab");
	small[0] = 'q';
	mig__strlcpy(small, "zzz", 0);
	assert_int_equal(small[0], 'q');

	char *d = mig__strndup("abcdef", 3);
	assert_string_equal(d, "abc");
	mig__free(d);
	d = mig__strndup("ab", 10);
	assert_string_equal(d, "ab");
	mig__free(d);
}

static void test_clocks(void **state)
{
	uint64_t a = mig__now_us();
	uint64_t b = mig__now_us();
	assert_true(b >= a);
	/* After 2020-01-01, in microseconds. */
	assert_true(mig__wall_us() > UINT64_C(1577836800000000));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_valid_user),
		cmocka_unit_test(test_valid_domain_name),
		cmocka_unit_test(test_valid_mid),
		cmocka_unit_test(test_error_names_and_texts),
		cmocka_unit_test(test_error_unknown),
		cmocka_unit_test(test_version),
		cmocka_unit_test(test_set_allocator_partial),
		cmocka_unit_test(test_set_allocator_hooks_used),
		cmocka_unit_test(test_calloc_overflow),
		cmocka_unit_test(test_strings),
		cmocka_unit_test(test_clocks),
	};
	return cmocka_run_group_tests_name("util", tests, NULL, NULL);
}
