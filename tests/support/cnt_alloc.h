/* A counting allocator for unit tests, installed with mig_set_allocator():
 * counts calls, tracks the bytes the library asked for (live and peak), and
 * can fail after a number of calls. */
#ifndef MIG_TEST_CNT_ALLOC_H
#define MIG_TEST_CNT_ALLOC_H

#include <stddef.h>

extern size_t cnt_calls;
extern size_t cnt_live;
extern size_t cnt_peak;
/* Calls left before one fails; < 0: none fails. */
extern long cnt_fail_after;

/* Installs the allocator with the counters at zero; fail_after as above. */
void cnt_install(long fail_after);
/* Puts the default allocator back; nothing fails any more. */
void cnt_remove(void);

#endif
