/* Helpers for tests that run the example's programs as processes
 * (test_sandwich, test_sandwich_failover): reading their output files,
 * starting them with stdout/stderr to files, and reaping them. Public API
 * of libc and cmocka only, so such tests need not link the library's
 * internals. */
#ifndef MIG_TEST_PROCS_H
#define MIG_TEST_PROCS_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* The whole file, NUL-terminated, malloc'd; NULL if it cannot be read.
 * Its length in *len if len is not NULL. */
char *test_slurp(const char *path, size_t *len);
/* CLOCK_MONOTONIC in milliseconds. */
uint64_t test_now_ms(void);
/* Complete lines of `path` holding `a` and, if not NULL, `b` (a last line
 * without its newline is still being written and does not count). */
int test_count_lines(const char *path, const char *a, const char *b);
/* Starts argv[0] with stdout to `out` and stderr to `err`; its pid. */
pid_t test_spawn(const char *const *argv, const char *out, const char *err);
/* Waits for the process to exit, SIGKILL after timeout_ms (then -1); its
 * wait status. */
int test_reap(pid_t pid, int timeout_ms);
/* Prints the file as "# " lines (TAP comments). */
void test_dump(const char *path);
/* Removes the tree at `path` (nftw, depth first, no symlinks followed). */
void test_rm_rf(const char *path);

#endif
