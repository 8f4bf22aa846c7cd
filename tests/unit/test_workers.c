/* Worker pool (workers.c) and the engine's worker_nice option: the workers
 * run at the niceness asked for, read back from the kernel
 * (getpriority() on the worker itself, /proc/self/task/TID/stat for the
 * engine's threads). Niceness is per thread on Linux and a thread inherits
 * its creator's, so the tests that raise a creator's niceness do it on a
 * thread of their own. */
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include <cmocka.h>

#include "support.h"
#include "workers.h"

static int worker_nice(void)
{
	errno = 0;
	int n = getpriority(PRIO_PROCESS, 0);
	assert_false(n == -1 && errno);
	return n;
}

struct probe {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	int nice;
	bool done;
};

static void probe_run(void *arg)
{
	struct probe *p = arg;
	int n = worker_nice();
	pthread_mutex_lock(&p->lock);
	p->nice = n;
	p->done = true;
	pthread_cond_signal(&p->cond);
	pthread_mutex_unlock(&p->lock);
}

/* The niceness a task of a pool created with `nicer` runs at. */
static int pool_task_nice(int nicer)
{
	mig__workers *w = NULL;
	assert_int_equal(mig__workers_new(&w, 2, nicer), 0);
	mig__strand *s = mig__strand_new(w);
	assert_non_null(s);
	struct probe p = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, -100, false};
	assert_int_equal(mig__strand_post(s, probe_run, NULL, &p), 0);
	pthread_mutex_lock(&p.lock);
	while (!p.done)
		pthread_cond_wait(&p.cond, &p.lock);
	pthread_mutex_unlock(&p.lock);
	mig__strand_release(s);
	mig__workers_free(w);
	return p.nice;
}

static int capped(int n)
{
	return n > 19 ? 19 : n;
}

static void test_pool_nicer(void **state)
{
	(void)state;
	int base = worker_nice();
	assert_int_equal(pool_task_nice(0), base);
	assert_int_equal(pool_task_nice(3), capped(base + 3));
	assert_int_equal(pool_task_nice(19), 19);
	/* The creating thread is left as it was. */
	assert_int_equal(worker_nice(), base);
}

/* From a thread at niceness 15 (raised on itself), nicer 10 caps at 19. */
static void *from_nice_15(void *arg)
{
	int *out = arg;
	if (worker_nice() < 15)
		assert_int_equal(setpriority(PRIO_PROCESS, 0, 15), 0);
	out[0] = worker_nice();
	out[1] = pool_task_nice(10);
	out[2] = pool_task_nice(2);
	return NULL;
}

static void test_pool_nicer_capped(void **state)
{
	(void)state;
	int out[3];
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, from_nice_15, out), 0);
	assert_int_equal(pthread_join(t, NULL), 0);
	assert_int_equal(out[1], 19);
	assert_int_equal(out[2], capped(out[0] + 2));
}

/* ------------------------------------------------------------ the engine */

/* How many of this process's threads run at niceness `n` (field 19 of
 * /proc/self/task/TID/stat, after the command name in parentheses). */
static int threads_at_nice(int n)
{
	DIR *d = opendir("/proc/self/task");
	assert_non_null(d);
	int count = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char path[300], buf[1024];
		snprintf(path, sizeof(path), "/proc/self/task/%s/stat", de->d_name);
		FILE *f = fopen(path, "r");
		if (!f)
			continue; /* the thread is gone */
		size_t len = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
		buf[len] = '\0';
		char *p = strrchr(buf, ')');
		assert_non_null(p);
		/* after ") ": state(3) ... priority(18) nice(19) */
		int field = 2, nice = 0;
		for (char *tok = strtok(p + 1, " "); tok; tok = strtok(NULL, " "))
			if (++field == 19) {
				nice = atoi(tok);
				break;
			}
		assert_int_equal(field, 19);
		if (nice == n)
			count++;
	}
	closedir(d);
	return count;
}

static char root[256];

static mig_engine *start_engine(int worker_nice, unsigned threads, int *rc_new)
{
	mig_engine_options o;
	test_engine_options(&o, "nice-test");
	o.worker_nice = worker_nice;
	o.worker_threads = threads;
	mig_engine *e = NULL;
	*rc_new = mig_engine_new(&e, &o);
	if (*rc_new)
		return NULL;
	mig_file_domain fd = {"frames", 1, root, 1};
	assert_int_equal(mig_file_domain_register(e, &fd), 0);
	assert_int_equal(mig_engine_start(e), 0);
	return e;
}

/* Waits (the workers set their niceness as they start) until `want`
 * threads run at niceness n; returns how many do. */
static int wait_threads_at_nice(int n, int want)
{
	int got = 0;
	for (int i = 0; i < 200 && (got = threads_at_nice(n)) != want; i++)
		usleep(10000);
	return got;
}

static void test_engine_worker_nice(void **state)
{
	(void)state;
	int base = worker_nice();
	if (base >= 17) {
		/* Nothing to tell apart: every setting gives 19 or nearly. The
		 * pool tests above still ran. (cmocka's skip() would fail the
		 * TAP run.) */
		print_message("# test process at niceness %d: engine check not run\n", base);
		return;
	}
	int rc;
	int others = threads_at_nice(capped(base + 10)); /* none of ours yet */

	/* The default: the I/O thread and 2 workers at base + 10. */
	mig_engine *e = start_engine(0, 0, &rc);
	assert_int_equal(rc, 0);
	assert_int_equal(wait_threads_at_nice(capped(base + 10), others + 3), others + 3);
	mig_engine_free(e);
	assert_int_equal(wait_threads_at_nice(capped(base + 10), others), others);

	/* The I/O thread and 3 workers, 2 nicer. */
	others = threads_at_nice(base + 2);
	e = start_engine(2, 3, &rc);
	assert_int_equal(rc, 0);
	assert_int_equal(wait_threads_at_nice(base + 2, others + 4), others + 4);
	mig_engine_free(e);

	/* -1: every thread of the engine at the app's priority. */
	int at_base = threads_at_nice(base);
	e = start_engine(-1, 2, &rc);
	assert_int_equal(rc, 0);
	/* the I/O thread and two workers */
	assert_int_equal(wait_threads_at_nice(base, at_base + 3), at_base + 3);
	mig_engine_free(e);
}

static void test_engine_worker_nice_invalid(void **state)
{
	(void)state;
	int bad[] = {-2, 20, -20, 100};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int rc;
		assert_null(start_engine(bad[i], 0, &rc));
		assert_int_equal(rc, MIG_EINVAL);
	}
}

/* ------------------------------------------------------------ strands */

#define POSTERS 4
#define STRANDS_EACH 8
#define TASKS_EACH 300

struct strand_log {
	int seen[TASKS_EACH];
	int n;          /* tasks run, in order: only this strand's tasks touch it */
	bool in_order;
	bool last_ran;  /* the finish task, after every other */
};

struct order_job {
	struct strand_log *log;
	int seq;
	atomic_int *ran;
};

static atomic_int jobs_freed;
static atomic_int lasts_ran;

static void order_run(void *arg)
{
	struct order_job *j = arg;
	struct strand_log *l = j->log;
	if (l->n >= TASKS_EACH || j->seq != l->n || l->last_ran)
		l->in_order = false;
	else
		l->seen[l->n++] = j->seq;
	atomic_fetch_add(j->ran, 1);
	free(j);
	atomic_fetch_add(&jobs_freed, 1);
}

static void order_discard(void *arg)
{
	free(arg);
	atomic_fetch_add(&jobs_freed, 1);
}

static void last_run(void *arg)
{
	struct strand_log *l = arg;
	if (l->n != TASKS_EACH)
		l->in_order = false;
	l->last_ran = true;
	atomic_fetch_add(&lasts_ran, 1);
}

struct poster {
	mig__workers *w;
	struct strand_log logs[STRANDS_EACH];
	atomic_int ran;
};

/* Posts TASKS_EACH tasks to each of its strands, interleaved; ends the
 * even strands with mig__strand_finish() and releases the odd ones. */
static void *poster_main(void *arg)
{
	struct poster *p = arg;
	mig__strand *s[STRANDS_EACH];
	for (int k = 0; k < STRANDS_EACH; k++) {
		s[k] = mig__strand_new(p->w);
		assert_non_null(s[k]);
		p->logs[k].in_order = true;
	}
	for (int i = 0; i < TASKS_EACH; i++)
		for (int k = 0; k < STRANDS_EACH; k++) {
			struct order_job *j = malloc(sizeof(*j));
			assert_non_null(j);
			*j = (struct order_job){&p->logs[k], i, &p->ran};
			assert_int_equal(mig__strand_post(s[k], order_run, order_discard, j), 0);
		}
	for (int k = 0; k < STRANDS_EACH; k++) {
		if (k % 2 == 0)
			mig__strand_finish(s[k], last_run, NULL, &p->logs[k]);
		else
			mig__strand_release(s[k]);
	}
	return NULL;
}

/* Posting takes no lock (workers.c): several threads post to their own
 * strands at once while the workers run them. Each strand's tasks run in
 * the order posted, one at a time; a finish task runs after all of them;
 * released strands are freed once empty (the leak checkers see the rest). */
static void test_strands_many_posters(void **state)
{
	mig__workers *w = NULL;
	assert_int_equal(mig__workers_new(&w, 2, 0), 0);
	static struct poster p[POSTERS];
	pthread_t th[POSTERS];
	atomic_store(&jobs_freed, 0);
	atomic_store(&lasts_ran, 0);
	for (int i = 0; i < POSTERS; i++) {
		memset(&p[i], 0, sizeof(p[i]));
		p[i].w = w;
		atomic_init(&p[i].ran, 0);
		assert_int_equal(pthread_create(&th[i], NULL, poster_main, &p[i]), 0);
	}
	for (int i = 0; i < POSTERS; i++)
		assert_int_equal(pthread_join(th[i], NULL), 0);
	const int all = POSTERS * STRANDS_EACH * TASKS_EACH;
	for (int waited = 0; waited < 20000; waited++) {
		int ran = 0;
		for (int i = 0; i < POSTERS; i++)
			ran += atomic_load(&p[i].ran);
		if (ran == all && atomic_load(&lasts_ran) == POSTERS * STRANDS_EACH / 2)
			break;
		usleep(1000);
	}
	mig__workers_free(w);
	assert_int_equal(atomic_load(&jobs_freed), all);
	for (int i = 0; i < POSTERS; i++) {
		assert_int_equal(atomic_load(&p[i].ran), STRANDS_EACH * TASKS_EACH);
		for (int k = 0; k < STRANDS_EACH; k++) {
			struct strand_log *l = &p[i].logs[k];
			assert_true(l->in_order);
			assert_int_equal(l->n, TASKS_EACH);
			assert_int_equal(l->last_ran, k % 2 == 0);
		}
	}
}

int main(void)
{
	snprintf(root, sizeof(root), "/tmp/test_workers.XXXXXX");
	if (!mkdtemp(root))
		return 1;
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_pool_nicer),
		cmocka_unit_test(test_pool_nicer_capped),
		cmocka_unit_test(test_engine_worker_nice),
		cmocka_unit_test(test_engine_worker_nice_invalid),
		cmocka_unit_test(test_strands_many_posters),
	};
	int rc = cmocka_run_group_tests(tests, NULL, NULL);
	rmdir(root);
	return rc;
}
