/* A small thread pool for CPU- and disk-heavy work (signatures, deltas,
 * patches, digests, installs), so neither the I/O thread nor the app's
 * dispatching thread ever does it.
 *
 * Work is posted to a strand: tasks of one strand run one at a time, in the
 * order posted, on whichever worker is free; different strands run in
 * parallel. A migration owns one strand, which gives it ordering for free
 * (patch chunk 1 before chunk 2; RoundDone after the round's patches). */
#ifndef MIG_WORKERS_H
#define MIG_WORKERS_H

#include "common.h"

typedef struct mig__workers mig__workers;
typedef struct mig__strand mig__strand;

/* run: does the work, on a worker thread. discard: called instead of run
 * if the pool shuts down first (frees `arg`); may be NULL. */
typedef void (*mig__task_fn)(void *arg);

/* Starts `threads` workers (0: one). nicer > 0: each worker sets its
 * niceness to the calling thread's plus `nicer` (at most 19) before taking
 * work; 0 leaves them at the caller's. Returns 0, MIG_ENOMEM or
 * MIG_ESYSTEM (a thread could not be created). Call from one thread. */
int mig__workers_new(mig__workers **out, unsigned threads, int nicer);
/* Runs nothing new: discards queued tasks, waits for running ones, joins. */
void mig__workers_free(mig__workers *w);

mig__strand *mig__strand_new(mig__workers *w);
/* Queues a task. Returns 0 or MIG_ENOMEM (then neither fn runs). Any
 * thread; posting, finishing and releasing never wait for a worker (no
 * lock shared with them: workers.c). */
int mig__strand_post(mig__strand *s, mig__task_fn run, mig__task_fn discard, void *arg);
/* Queues the strand's last task, which cannot fail for lack of memory (its
 * record was allocated with the strand), and releases the strand: `run`
 * runs after every task posted before it (or `discard`, at shutdown), then
 * the strand is freed. Nothing may be posted afterwards. */
void mig__strand_finish(mig__strand *s, mig__task_fn run, mig__task_fn discard, void *arg);
/* Frees the strand once its queued tasks have run. */
void mig__strand_release(mig__strand *s);

#endif
