/* Thread pool with serial strands; see workers.h.
 *
 * Posting never takes the pool's lock. The workers run nicer than the app
 * (worker_nice), and on a busy host a worker preempted while it held a
 * lock that the app's thread also wanted kept that thread waiting for
 * milliseconds. Measured during 64 MiB migrations: 22 waits over 0.3 ms,
 * up to 9 ms and 49 ms in all, at the destination, in mig__strand_post()
 * from mig_engine_dispatch() (docs/BENCHMARKS.md, "Cost to the
 * application"). So a post pushes its task onto `incoming`, a lock-free
 * stack, and posts `wake`. Only the workers take `lock`: they move
 * `incoming` into the strands, oldest first, and pick the work. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <sys/resource.h>

#include "workers.h"

struct task {
	struct task *next;
	mig__strand *strand; /* the poster's; read when taken from incoming */
	mig__task_fn run;    /* NULL: only releases the strand */
	mig__task_fn discard;
	void *arg;
	bool last; /* the strand's last task: released once it is queued */
};

struct mig__strand {
	mig__workers *pool;
	struct mig__strand *next_ready; /* link in the pool's ready list */
	struct task *head;
	struct task *tail;
	bool scheduled; /* in the ready list or running */
	bool released;
	struct task *final; /* preallocated for mig__strand_finish() */
};

struct mig__workers {
	/* Any thread: */
	_Atomic(struct task *) incoming; /* posted, newest first */
	sem_t wake;                      /* one post per task posted */
	atomic_size_t strands;           /* alive */
	/* The workers (and mig__workers_free() once they are gone), under
	 * lock; strands' fields too, but for `pool` and `final`: */
	pthread_mutex_t lock;
	pthread_cond_t idle;
	mig__strand *ready_head;
	mig__strand *ready_tail;
	pthread_t *threads;
	unsigned nthreads;
	unsigned running; /* tasks being run */
	bool stopping;
	int nice; /* each worker's niceness; INT_MIN: left as inherited */
};

static void ready_push(mig__workers *w, mig__strand *s)
{
	s->next_ready = NULL;
	if (w->ready_tail)
		w->ready_tail->next_ready = s;
	else
		w->ready_head = s;
	w->ready_tail = s;
	s->scheduled = true;
}

static void strand_destroy(mig__workers *w, mig__strand *s)
{
	atomic_fetch_sub(&w->strands, 1);
	mig__free(s->final);
	mig__free(s);
}

/* Any thread, no lock: queues `t` for the workers and wakes one. */
static void submit(mig__workers *w, struct task *t)
{
	struct task *head = atomic_load_explicit(&w->incoming, memory_order_relaxed);
	do
		t->next = head;
	while (!atomic_compare_exchange_weak_explicit(&w->incoming, &head, t, memory_order_release,
						      memory_order_relaxed));
	sem_post(&w->wake);
}

/* Under w->lock: moves every posted task to the end of its strand, in the
 * order posted, and schedules the strands that were idle. */
static void take_incoming(mig__workers *w)
{
	struct task *t = atomic_exchange_explicit(&w->incoming, NULL, memory_order_acquire);
	struct task *fifo = NULL;
	while (t) {
		struct task *next = t->next;
		t->next = fifo;
		fifo = t;
		t = next;
	}
	while (fifo) {
		t = fifo;
		fifo = t->next;
		t->next = NULL;
		mig__strand *s = t->strand;
		if (!t->run) {
			/* mig__strand_release(): its record was s->final */
			mig__free(t);
			s->released = true;
			if (!s->scheduled && !s->head)
				strand_destroy(w, s);
			continue;
		}
		if (s->tail)
			s->tail->next = t;
		else
			s->head = t;
		s->tail = t;
		if (t->last)
			s->released = true;
		if (!s->scheduled)
			ready_push(w, s);
	}
}

static void *worker_main(void *arg)
{
	mig__workers *w = arg;
	/* Linux keeps a niceness per thread, and PRIO_PROCESS with 0 means
	 * the calling thread. Raising one's own niceness needs no privilege;
	 * should it fail anyway, the worker runs at the app's priority, which
	 * is slower for the app's tail but not wrong. */
	if (w->nice != INT_MIN)
		(void)setpriority(PRIO_PROCESS, 0, w->nice);
	pthread_mutex_lock(&w->lock);
	for (;;) {
		take_incoming(w);
		if (w->stopping)
			break;
		if (!w->ready_head) {
			/* Every task posted after take_incoming() posted `wake`. */
			pthread_mutex_unlock(&w->lock);
			while (sem_wait(&w->wake) != 0 && errno == EINTR)
				;
			pthread_mutex_lock(&w->lock);
			continue;
		}
		mig__strand *s = w->ready_head;
		w->ready_head = s->next_ready;
		if (!w->ready_head)
			w->ready_tail = NULL;
		struct task *t = s->head;
		s->head = t->next;
		if (!s->head)
			s->tail = NULL;
		w->running++;
		pthread_mutex_unlock(&w->lock);
		t->run(t->arg);
		mig__free(t);
		pthread_mutex_lock(&w->lock);
		w->running--;
		if (s->head)
			ready_push(w, s); /* keep order: the strand goes to the back */
		else if (s->released)
			strand_destroy(w, s);
		else
			s->scheduled = false;
		if (w->stopping && w->running == 0)
			pthread_cond_broadcast(&w->idle);
	}
	pthread_mutex_unlock(&w->lock);
	return NULL;
}

int mig__workers_new(mig__workers **out, unsigned threads, int nicer)
{
	*out = NULL;
	mig__workers *w = mig__calloc(1, sizeof(*w));
	if (!w)
		return MIG_ENOMEM;
	w->nice = INT_MIN;
	if (nicer > 0) {
		errno = 0;
		int base = getpriority(PRIO_PROCESS, 0); /* this thread's */
		if (base == -1 && errno)
			base = 0;
		w->nice = base + nicer > 19 ? 19 : base + nicer;
	}
	w->threads = mig__calloc(threads ? threads : 1, sizeof(*w->threads));
	if (!w->threads) {
		mig__free(w);
		return MIG_ENOMEM;
	}
	if (sem_init(&w->wake, 0, 0) != 0) {
		mig__free(w->threads);
		mig__free(w);
		return MIG_ESYSTEM;
	}
	atomic_init(&w->incoming, NULL);
	atomic_init(&w->strands, 0);
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->idle, NULL);
	for (unsigned i = 0; i < (threads ? threads : 1); i++) {
		if (pthread_create(&w->threads[i], NULL, worker_main, w) != 0) {
			mig__workers_free(w);
			return MIG_ESYSTEM;
		}
		w->nthreads++;
	}
	*out = w;
	return 0;
}

void mig__workers_free(mig__workers *w)
{
	if (!w)
		return;
	pthread_mutex_lock(&w->lock);
	w->stopping = true;
	pthread_mutex_unlock(&w->lock);
	for (unsigned i = 0; i < w->nthreads; i++)
		sem_post(&w->wake);
	pthread_mutex_lock(&w->lock);
	while (w->running)
		pthread_cond_wait(&w->idle, &w->lock);
	pthread_mutex_unlock(&w->lock);
	for (unsigned i = 0; i < w->nthreads; i++)
		pthread_join(w->threads[i], NULL);
	/* Discard what never ran; strands not released are freed here too,
	 * their owners being gone with the engine. */
	take_incoming(w);
	mig__strand *s = w->ready_head;
	while (s) {
		mig__strand *next = s->next_ready;
		struct task *t = s->head;
		while (t) {
			struct task *tn = t->next;
			if (t->discard)
				t->discard(t->arg);
			mig__free(t);
			t = tn;
		}
		s->head = s->tail = NULL;
		if (s->released)
			strand_destroy(w, s);
		else
			s->scheduled = false;
		s = next;
	}
	pthread_mutex_destroy(&w->lock);
	pthread_cond_destroy(&w->idle);
	sem_destroy(&w->wake);
	mig__free(w->threads);
	mig__free(w);
}

mig__strand *mig__strand_new(mig__workers *w)
{
	mig__strand *s = mig__calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	s->final = mig__calloc(1, sizeof(*s->final));
	if (!s->final) {
		mig__free(s);
		return NULL;
	}
	s->pool = w;
	atomic_fetch_add(&w->strands, 1);
	return s;
}

void mig__strand_finish(mig__strand *s, mig__task_fn run, mig__task_fn discard, void *arg)
{
	struct task *t = s->final;
	s->final = NULL;
	t->strand = s;
	t->run = run;
	t->discard = discard;
	t->arg = arg;
	/* Queued and marked released in one step by take_incoming(): a worker
	 * finishing the previous task cannot see "released and empty" in
	 * between. */
	t->last = true;
	submit(s->pool, t);
}

int mig__strand_post(mig__strand *s, mig__task_fn run, mig__task_fn discard, void *arg)
{
	struct task *t = mig__calloc(1, sizeof(*t));
	if (!t)
		return MIG_ENOMEM;
	t->strand = s;
	t->run = run;
	t->discard = discard;
	t->arg = arg;
	submit(s->pool, t);
	return 0;
}

void mig__strand_release(mig__strand *s)
{
	if (!s || !s->final) /* NULL, or mig__strand_finish() released it */
		return;
	/* The record mig__strand_finish() would have used carries the release
	 * (run == NULL), after every task posted before. */
	struct task *t = s->final;
	s->final = NULL;
	t->strand = s;
	t->run = NULL;
	submit(s->pool, t);
}
