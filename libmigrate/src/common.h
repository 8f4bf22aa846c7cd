/* Internal helpers shared by every module: allocation, time, strings. */
#ifndef MIG_COMMON_H
#define MIG_COMMON_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "migrate/migrate.h"

#define MIG__HIDDEN __attribute__((visibility("hidden")))
#define MIG__PRINTF(a, b) __attribute__((format(printf, a, b)))
#define MIG__ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define MIG__UNUSED(x) ((void)(x))

/* Limits that bound what untrusted input can make us allocate or keep. */
#define MIG__USER_MAX 128          /* bytes in a user id */
#define MIG__NAME_MAX 64           /* bytes in a domain name */
#define MIG__URL_MAX 512           /* bytes in a URL */
#define MIG__ENGINE_ID_MAX 128     /* bytes in an engine id */
#define MIG__TYPE_NAME_MAX 256     /* bytes in a domain's type name */
#define MIG__REASON_MAX 256        /* bytes of a reason string we keep */
#define MIG__MID_LEN 32            /* hex digits of a migration id */
#define MIG__DEFAULT_MAX_FRAME (4u * 1024 * 1024)
#define MIG__MIN_MAX_FRAME (4u * 1024)

/* Allocation goes through the hook set by mig_set_allocator(). */
void *mig__malloc(size_t n);
void *mig__calloc(size_t count, size_t size);
void *mig__realloc(void *p, size_t n);
void mig__free(void *p);
char *mig__strdup(const char *s);
char *mig__strndup(const char *s, size_t n);
char *mig__asprintf(const char *fmt, ...) MIG__PRINTF(1, 2);

/* Monotonic and wall-clock time in microseconds. */
uint64_t mig__now_us(void);
uint64_t mig__wall_us(void);

/* Copy with truncation; always NUL-terminates when size > 0. */
void mig__strlcpy(char *dst, const char *src, size_t size);

/* Validation of identifiers that cross the wire or the API. */
bool mig__valid_user(const char *user);
bool mig__valid_domain_name(const char *name);
bool mig__valid_mid(const char *mid);
/* "scheme://rest": scheme [a-z][a-z0-9+.-]*, 1..MIG__URL_MAX printable bytes
 * without spaces (an app's own client endpoint; any scheme). */
bool mig__valid_app_url(const char *url);

#endif
