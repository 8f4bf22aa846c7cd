/* Thread pool with serial strands; see workers.h. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sys/resource.h>

#include "workers.h"

struct task {
	struct task *next;
	mig__task_fn run;
	mig__task_fn discard;
	void *arg;
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
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_cond_t idle;
	mig__strand *ready_head;
	mig__strand *ready_tail;
	pthread_t *threads;
	unsigned nthreads;
	unsigned running; /* tasks being run */
	size_t strands;   /* alive */
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
	pthread_cond_signal(&w->cond);
}

static void strand_destroy(mig__workers *w, mig__strand *s)
{
	w->strands--;
	mig__free(s->final);
	mig__free(s);
	if (w->strands == 0)
		pthread_cond_broadcast(&w->idle);
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
		while (!w->ready_head && !w->stopping)
			pthread_cond_wait(&w->cond, &w->lock);
		if (w->stopping)
			break;
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
	pthread_mutex_init(&w->lock, NULL);
	pthread_cond_init(&w->cond, NULL);
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
	pthread_cond_broadcast(&w->cond);
	while (w->running)
		pthread_cond_wait(&w->idle, &w->lock);
	pthread_mutex_unlock(&w->lock);
	for (unsigned i = 0; i < w->nthreads; i++)
		pthread_join(w->threads[i], NULL);
	/* Discard what never ran; strands not released are freed here too,
	 * their owners being gone with the engine. */
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
	pthread_cond_destroy(&w->cond);
	pthread_cond_destroy(&w->idle);
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
	pthread_mutex_lock(&w->lock);
	w->strands++;
	pthread_mutex_unlock(&w->lock);
	return s;
}

static void enqueue(mig__strand *s, struct task *t)
{
	mig__workers *w = s->pool;
	pthread_mutex_lock(&w->lock);
	if (s->tail)
		s->tail->next = t;
	else
		s->head = t;
	s->tail = t;
	if (!s->scheduled)
		ready_push(w, s);
	pthread_mutex_unlock(&w->lock);
}

void mig__strand_finish(mig__strand *s, mig__task_fn run, mig__task_fn discard, void *arg)
{
	struct task *t = s->final;
	s->final = NULL;
	t->run = run;
	t->discard = discard;
	t->arg = arg;
	t->next = NULL;
	mig__workers *w = s->pool;
	/* Queue and mark released in one step: a worker finishing the previous
	 * task must not see "released and empty" in between. */
	pthread_mutex_lock(&w->lock);
	if (s->tail)
		s->tail->next = t;
	else
		s->head = t;
	s->tail = t;
	s->released = true;
	if (!s->scheduled)
		ready_push(w, s);
	pthread_mutex_unlock(&w->lock);
}

int mig__strand_post(mig__strand *s, mig__task_fn run, mig__task_fn discard, void *arg)
{
	struct task *t = mig__calloc(1, sizeof(*t));
	if (!t)
		return MIG_ENOMEM;
	t->run = run;
	t->discard = discard;
	t->arg = arg;
	enqueue(s, t);
	return 0;
}

void mig__strand_release(mig__strand *s)
{
	if (!s)
		return;
	mig__workers *w = s->pool;
	pthread_mutex_lock(&w->lock);
	s->released = true;
	if (!s->scheduled && !s->head)
		strand_destroy(w, s);
	pthread_mutex_unlock(&w->lock);
}
