/* The allocator hook: every allocation of the library's own goes through here,
 * so an application (or the allocation-failure sweep) can replace it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

static void *(*alloc_malloc)(size_t) = malloc;
static void *(*alloc_realloc)(void *, size_t) = realloc;
static void (*alloc_free)(void *) = free;

MIG_EXPORT int mig_set_allocator(void *(*malloc_fn)(size_t),
				 void *(*realloc_fn)(void *, size_t),
				 void (*free_fn)(void *))
{
	if (!malloc_fn && !realloc_fn && !free_fn) {
		alloc_malloc = malloc;
		alloc_realloc = realloc;
		alloc_free = free;
		return 0;
	}
	if (!malloc_fn || !realloc_fn || !free_fn)
		return MIG_EINVAL;
	alloc_malloc = malloc_fn;
	alloc_realloc = realloc_fn;
	alloc_free = free_fn;
	return 0;
}

void *mig__malloc(size_t n)
{
	return alloc_malloc(n ? n : 1);
}

void *mig__calloc(size_t count, size_t size)
{
	if (size && count > SIZE_MAX / size)
		return NULL;
	size_t n = count * size;
	void *p = alloc_malloc(n ? n : 1);
	if (p)
		memset(p, 0, n);
	return p;
}

void *mig__realloc(void *p, size_t n)
{
	return alloc_realloc(p, n ? n : 1);
}

void mig__free(void *p)
{
	if (p)
		alloc_free(p);
}

char *mig__strndup(const char *s, size_t n)
{
	size_t len = strnlen(s, n);
	char *d = mig__malloc(len + 1);
	if (!d)
		return NULL;
	memcpy(d, s, len);
	d[len] = '\0';
	return d;
}

char *mig__strdup(const char *s)
{
	size_t len = strlen(s);
	char *d = mig__malloc(len + 1);
	if (d)
		memcpy(d, s, len + 1);
	return d;
}

char *mig__asprintf(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		return NULL;
	char *s = mig__malloc((size_t)n + 1);
	if (!s)
		return NULL;
	va_start(ap, fmt);
	vsnprintf(s, (size_t)n + 1, fmt, ap);
	va_end(ap);
	return s;
}
