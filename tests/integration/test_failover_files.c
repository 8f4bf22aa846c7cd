/* Failover of file state (docs/FAILOVER.md "File state"): a primary engine
 * replicates a user's light state AND file domain to a standby engine over
 * loopback; updates carry only what changed since the standby's
 * acknowledged copy; promotion installs the replica copy as the user's
 * folder with the light state of the same sequence number; a torn update
 * (the link cut in the middle of a file) and bad input (a "../" path, a
 * corrupt delta) never reach the replica copy.
 *
 * The app: per user a step counter (light domain "progress") and a folder
 * of binary files (file domain "files"). Updates are pushed with
 * mig_replicate_now() (the interval is a minute), so each test knows
 * exactly which state every sequence number holds. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine_int.h"
#include "migrate/control.h"
#include "migrate/replicate.h"
#include "replog.h"
#include "support.h"

#define USER "user-0"
#define REPLICA_DIR ".mig-replica" /* the standby's replica area (docs/FAILOVER.md) */

struct app {
	const char *name;
	char root[256];
	int append_only; /* the file domain's flag */
	unsigned max_frame; /* 0: the default */
	pthread_mutex_t lock;
	uint64_t step;
	bool present, active;
	int incoming, activated, merges, drops;
	bool folder_at_merge; /* ROOT/<user> existed when merge ran */
	struct replog log;
};

/* ---------------------------------------------------------------- app */

static int extract_progress(mig_engine *e, const char *user, mig_buf *out, void *ud)
{
	(void)e;
	(void)user;
	struct app *a = ud;
	pthread_mutex_lock(&a->lock);
	uint64_t v = a->step;
	pthread_mutex_unlock(&a->lock);
	return mig_buf_append(out, &v, sizeof(v));
}

static int merge_progress(mig_engine *e, const char *user, uint32_t v, const void *d, size_t n,
			  void *ud)
{
	(void)e;
	(void)v;
	struct app *a = ud;
	char path[512];
	snprintf(path, sizeof(path), "%s/%s", a->root, user);
	struct stat st;
	pthread_mutex_lock(&a->lock);
	a->folder_at_merge = stat(path, &st) == 0 && S_ISDIR(st.st_mode);
	int rc = -1;
	if (n == sizeof(uint64_t)) {
		memcpy(&a->step, d, n);
		a->present = true;
		a->merges++;
		rc = 0;
	}
	pthread_mutex_unlock(&a->lock);
	return rc;
}

static int on_incoming(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	(void)user;
	struct app *a = ud;
	pthread_mutex_lock(&a->lock);
	a->incoming++;
	pthread_mutex_unlock(&a->lock);
	return 0;
}

static void on_activate(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	(void)user;
	struct app *a = ud;
	pthread_mutex_lock(&a->lock);
	a->active = true;
	a->activated++;
	pthread_mutex_unlock(&a->lock);
}

static void on_drop(mig_engine *e, const char *user, void *ud)
{
	(void)e;
	(void)user;
	struct app *a = ud;
	pthread_mutex_lock(&a->lock);
	a->drops++;
	a->present = false;
	pthread_mutex_unlock(&a->lock);
}

static void app_init(struct app *a, const char *name)
{
	memset(a, 0, sizeof(*a));
	a->name = name;
	pthread_mutex_init(&a->lock, NULL);
	replog_init(&a->log);
	const char *tmp = getenv("TMPDIR");
	snprintf(a->root, sizeof(a->root), "%s/migfo-%s-XXXXXX", tmp && *tmp ? tmp : "/tmp", name);
	assert_non_null(mkdtemp(a->root));
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *f)
{
	(void)st;
	(void)flag;
	(void)f;
	return remove(path);
}

static void app_free(struct app *a)
{
	nftw(a->root, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
	pthread_mutex_destroy(&a->lock);
	replog_destroy(&a->log);
}

static mig_engine *app_engine(struct app *a, const char *id)
{
	mig_engine_options o;
	replog_engine_options(&o, id, &a->log);
	o.peer_timeout_ms = 5000;
	o.max_frame_bytes = a->max_frame;
	mig_engine *e = NULL;
	assert_int_equal(mig_engine_new(&e, &o), 0);
	mig_light_domain d0 = {"progress", "test.Progress", 1, extract_progress, merge_progress};
	assert_int_equal(mig_light_domain_register(e, &d0, a), 0);
	mig_file_domain fd = {.name = "files", .version = 1, .root = a->root,
			      .append_only = a->append_only};
	assert_int_equal(mig_file_domain_register(e, &fd), 0);
	mig_hooks h = {.incoming = on_incoming, .activate = on_activate, .drop = on_drop};
	assert_int_equal(mig_engine_set_hooks(e, &h, a), 0);
	assert_int_equal(mig_engine_start(e), 0);
	assert_int_equal(mig_replica_set_handler(e, replog_on_replica, &a->log), 0);
	return e;
}

static void set_step(struct app *a, uint64_t step)
{
	pthread_mutex_lock(&a->lock);
	a->step = step;
	pthread_mutex_unlock(&a->lock);
}

/* ---------------------------------------------------------------- files */

static void write_file(const char *root, const char *rel, size_t len, unsigned seed)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s/%s", root, USER, rel);
	for (char *s = path + strlen(root) + 1; (s = strchr(s, '/')) != NULL; s++) {
		*s = '\0';
		if (mkdir(path, 0700) < 0 && errno != EEXIST)
			fail_msg("mkdir %s: %s", path, strerror(errno));
		*s = '/';
	}
	uint8_t *buf = malloc(len ? len : 1);
	assert_non_null(buf);
	test_fill(buf, len, seed);
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0640);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, buf, len), (ssize_t)len);
	close(fd);
	free(buf);
}

/* Overwrites `len` bytes at `off` in place (same size, new mtime). */
static void patch_file(const char *root, const char *rel, off_t off, size_t len, unsigned seed)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s/%s", root, USER, rel);
	uint8_t buf[8192];
	assert_true(len <= sizeof(buf));
	test_fill(buf, len, seed);
	int fd = open(path, O_WRONLY);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, buf, len, off), (ssize_t)len);
	close(fd);
}

static void remove_file(const char *root, const char *rel)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s/%s", root, USER, rel);
	assert_int_equal(unlink(path), 0);
}

/* A folder's content: every regular file, by relative path. */
struct tree {
	size_t n;
	char *path[64];
	uint8_t *data[64];
	size_t len[64];
	uint32_t mode[64];
};

static void tree_read_dir(struct tree *t, const char *dir, const char *rel)
{
	DIR *d = opendir(dir);
	if (!d)
		return;
	struct dirent *de;
	while ((de = readdir(d)) != NULL) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		char p[512], r[512];
		snprintf(p, sizeof(p), "%s/%s", dir, de->d_name);
		snprintf(r, sizeof(r), "%s%s%s", rel, *rel ? "/" : "", de->d_name);
		struct stat st;
		assert_int_equal(lstat(p, &st), 0);
		if (S_ISDIR(st.st_mode)) {
			tree_read_dir(t, p, r);
			continue;
		}
		assert_true(S_ISREG(st.st_mode));
		assert_true(t->n < 64);
		size_t i = t->n++;
		t->path[i] = strdup(r);
		t->len[i] = (size_t)st.st_size;
		t->mode[i] = st.st_mode & 0777;
		t->data[i] = malloc(t->len[i] ? t->len[i] : 1);
		int fd = open(p, O_RDONLY);
		assert_true(fd >= 0);
		assert_int_equal(read(fd, t->data[i], t->len[i]), (ssize_t)t->len[i]);
		close(fd);
	}
	closedir(d);
}

static void tree_read(struct tree *t, const char *root, const char *sub)
{
	memset(t, 0, sizeof(*t));
	char dir[512];
	snprintf(dir, sizeof(dir), "%s/%s", root, sub);
	tree_read_dir(t, dir, "");
}

static void tree_free(struct tree *t)
{
	for (size_t i = 0; i < t->n; i++) {
		free(t->path[i]);
		free(t->data[i]);
	}
	t->n = 0;
}

static const struct tree *tree_find(const struct tree *t, const char *path, size_t *idx)
{
	for (size_t i = 0; i < t->n; i++)
		if (!strcmp(t->path[i], path)) {
			*idx = i;
			return t;
		}
	return NULL;
}

/* The folder `sub` under `root` holds exactly `want`, byte for byte. */
static void tree_check(const struct tree *want, const char *root, const char *sub)
{
	struct tree got;
	tree_read(&got, root, sub);
	if (got.n != want->n)
		fail_msg("%s/%s holds %zu files, expected %zu", root, sub, got.n, want->n);
	for (size_t i = 0; i < want->n; i++) {
		size_t k = 0;
		if (!tree_find(&got, want->path[i], &k))
			fail_msg("%s/%s lacks %s", root, sub, want->path[i]);
		if (got.len[k] != want->len[i] ||
		    memcmp(got.data[k], want->data[i], want->len[i]) != 0)
			fail_msg("%s/%s: %s differs", root, sub, want->path[i]);
		assert_int_equal(got.mode[k], want->mode[i]);
	}
	tree_free(&got);
}

static bool exists(const char *root, const char *sub)
{
	char p[512];
	struct stat st;
	snprintf(p, sizeof(p), "%s/%s", root, sub);
	return lstat(p, &st) == 0;
}

/* A 4 MiB-ish folder: `n` files of `size` bytes, two levels. */
static void make_folder(struct app *a, int n, size_t size)
{
	for (int i = 0; i < n; i++) {
		char rel[64];
		snprintf(rel, sizeof(rel), i % 2 ? "sub/f%02d.bin" : "f%02d.bin", i);
		write_file(a->root, rel, size, 100u + (unsigned)i);
	}
}

/* Pushes an update now and waits for the ack number `n`; returns its
 * event. */
static struct rev push(mig_engine **es, struct app *pa, mig_engine *p, int n)
{
	assert_int_equal(mig_replicate_now(p, USER), 0);
	if (!replog_wait(es, 2, &pa->log, MIG_REPLICA_ACKED, n, 15000))
		fail_msg("update %d was not acknowledged", n);
	struct rev r = {0};
	replog_count(&pa->log, MIG_REPLICA_ACKED, &r);
	return r;
}

struct fixture {
	struct app pa, sa;
	mig_engine *p, *s;
	mig_engine *both[2];
};

/* Primary serving USER with a folder, replicating to the standby (first
 * update acknowledged). */
static void fixture_start_mode(struct fixture *f, int nfiles, size_t size, int append_only,
			       unsigned max_frame)
{
	app_init(&f->pa, "primary");
	app_init(&f->sa, "standby");
	f->pa.append_only = f->sa.append_only = append_only;
	f->pa.max_frame = f->sa.max_frame = max_frame;
	make_folder(&f->pa, nfiles, size);
	f->p = app_engine(&f->pa, "fo-primary");
	f->s = app_engine(&f->sa, "fo-standby");
	f->both[0] = f->p;
	f->both[1] = f->s;
	set_step(&f->pa, 1);
	f->pa.present = f->pa.active = true;
	assert_int_equal(mig_user_add(f->p, USER), 0);
	mig_replicate_options o = {.interval_ms = 60000};
	assert_int_equal(mig_replicate(f->p, USER, mig_engine_url(f->s), &o), 0);
	if (!replog_wait(f->both, 2, &f->pa.log, MIG_REPLICA_ACKED, 1, 15000))
		fail_msg("the first update was not acknowledged");
}

static void fixture_start(struct fixture *f, int nfiles, size_t size)
{
	fixture_start_mode(f, nfiles, size, 0, 0);
}

/* The primary is gone without notice; the standby promotes the replica. */
static void kill_and_promote(struct fixture *f)
{
	mig_engine_free(f->p);
	f->p = NULL;
	assert_int_equal(mig_replica_promote(f->s, USER), 0);
	mig_engine *s1[] = {f->s};
	assert_true(replog_wait(s1, 1, &f->sa.log, MIG_REPLICA_PROMOTED, 1, 10000));
	assert_int_equal(mig_user_get_state(f->s, USER), MIG_USER_ACTIVE);
	assert_int_equal(mig_user_epoch(f->s, USER), 2);
	assert_int_equal(f->sa.activated, 1);
	assert_true(f->sa.folder_at_merge); /* files in place before merge */
	/* The replica area gave its copy up. */
	assert_false(exists(f->sa.root, REPLICA_DIR "/" USER));
}

static void fixture_end(struct fixture *f)
{
	if (f->p)
		mig_engine_free(f->p);
	mig_engine_free(f->s);
	app_free(&f->pa);
	app_free(&f->sa);
}

/* ---------------------------------------------------------------- tests */

/* (1) A 4 MiB folder is copied whole once; after 1 % of it changes, the
 * next update costs a small fraction (deltas against the standby's copy).
 * The copy is byte-identical each time, and never in the app's place. */
static void test_incremental(void **state)
{
	(void)state;
	struct fixture f;
	fixture_start(&f, 16, 256 * 1024); /* 4 MiB */
	struct rev r1 = {0};
	replog_count(&f.pa.log, MIG_REPLICA_ACKED, &r1);
	struct tree t1;
	tree_read(&t1, f.pa.root, USER);
	tree_check(&t1, f.sa.root, REPLICA_DIR "/" USER);
	assert_false(exists(f.sa.root, USER)); /* invisible to the standby's app */
	assert_int_equal(mig_user_get_state(f.s, USER), MIG_USER_ABSENT);
	assert_int_equal(f.sa.incoming, 0);
	assert_true(r1.bytes >= 4u * 1024 * 1024);

	/* 1 %: ten scattered 4 KiB writes in ten files (40 KiB of 4 MiB). */
	for (int i = 0; i < 10; i++) {
		char rel[64];
		snprintf(rel, sizeof(rel), i % 2 ? "sub/f%02d.bin" : "f%02d.bin", i);
		patch_file(f.pa.root, rel, (off_t)(i * 20000 + 5000), 4096, 900u + (unsigned)i);
	}
	set_step(&f.pa, 2);
	struct rev r2 = push(f.both, &f.pa, f.p, 2);
	print_message("# whole folder: %llu bytes; after a 1 %% change: %llu bytes (%.2f %%)\n",
		      (unsigned long long)r1.bytes, (unsigned long long)r2.bytes,
		      100.0 * (double)r2.bytes / (double)r1.bytes);
	assert_true(r2.bytes < r1.bytes / 20); /* under 5 %: deltas, not files */
	assert_true(r2.bytes > 40 * 1024);     /* the changed bytes did travel */
	struct tree t2;
	tree_read(&t2, f.pa.root, USER);
	tree_check(&t2, f.sa.root, REPLICA_DIR "/" USER);

	/* Nothing changed: a keepalive, no new update. */
	struct rev k;
	int acks = replog_count(&f.pa.log, MIG_REPLICA_ACKED, NULL);
	assert_int_equal(mig_replicate_now(f.p, USER), 0);
	test_dispatch_for(f.both, 2, 300);
	assert_int_equal(replog_count(&f.pa.log, MIG_REPLICA_ACKED, NULL), acks);
	assert_int_equal(replog_count(&f.sa.log, MIG_REPLICA_INSTALLED, &k), 2);
	tree_free(&t1);
	tree_free(&t2);
	fixture_end(&f);
}

/* (2) Updates with changed, new and removed files; then more changes that
 * are never replicated; the primary is freed without notice; promotion
 * installs exactly the files and light state of the last acknowledged
 * update. */
static void test_promote_after_primary_gone(void **state)
{
	(void)state;
	struct fixture f;
	fixture_start(&f, 8, 128 * 1024);
	patch_file(f.pa.root, "f00.bin", 1000, 2000, 7);
	write_file(f.pa.root, "new/deep/n.bin", 70000, 8);
	remove_file(f.pa.root, "sub/f03.bin");
	char p[512];
	snprintf(p, sizeof(p), "%s/%s/f02.bin", f.pa.root, USER);
	assert_int_equal(chmod(p, 0600), 0);
	set_step(&f.pa, 2);
	push(f.both, &f.pa, f.p, 2);
	struct tree acked;
	tree_read(&acked, f.pa.root, USER);

	/* Later work on the primary that never reaches the standby. */
	set_step(&f.pa, 3);
	patch_file(f.pa.root, "f00.bin", 5000, 2000, 9);
	write_file(f.pa.root, "lost.bin", 1000, 10);

	kill_and_promote(&f);
	assert_int_equal(f.sa.step, 2);
	tree_check(&acked, f.sa.root, USER);
	tree_free(&acked);
	fixture_end(&f);
}

/* (3) The link is cut while a file of update 2 is on its way: nothing of
 * it is installed; promotion gives update 1's files and light state. */
static void test_torn_update(void **state)
{
	(void)state;
	struct fixture f;
	fixture_start(&f, 4, 64 * 1024);
	struct tree acked;
	tree_read(&acked, f.pa.root, USER);
	write_file(f.pa.root, "big.bin", 2 * 1024 * 1024, 11); /* 8 pieces */
	patch_file(f.pa.root, "f00.bin", 0, 4096, 12);
	set_step(&f.pa, 2);
	int refused = replog_count(&f.pa.log, MIG_REPLICA_REFUSED, NULL);
	mig__engine_set_fault(f.p, MIG__FAULT_FILE_TRUNCATE, MIG__FAULT_DROP_BEFORE, 1);
	assert_int_equal(mig_replicate_now(f.p, USER), 0);
	assert_true(replog_wait(f.both, 2, &f.pa.log, MIG_REPLICA_REFUSED, refused + 1, 10000));
	test_dispatch_for(f.both, 2, 300); /* whatever arrived is handled */
	assert_int_equal(replog_count(&f.sa.log, MIG_REPLICA_INSTALLED, NULL), 1);
	/* The first piece of big.bin did arrive: staged aside, not installed. */
	struct tree staged;
	tree_read(&staged, f.sa.root, REPLICA_DIR "/.mig-staging");
	for (int t = 0; t < 50 && !(staged.n == 1 && staged.len[0] > 0); t++) {
		tree_free(&staged);
		test_dispatch_for(f.both, 2, 100); /* the standby's worker patches it */
		tree_read(&staged, f.sa.root, REPLICA_DIR "/.mig-staging");
	}
	print_message("# torn update: %zu file(s) staged aside, %zu bytes\n", staged.n,
		      staged.n ? staged.len[0] : (size_t)0);
	assert_true(staged.n == 1 && staged.len[0] > 0 && staged.len[0] < 2 * 1024 * 1024);
	tree_free(&staged);
	tree_check(&acked, f.sa.root, REPLICA_DIR "/" USER);

	kill_and_promote(&f);
	assert_int_equal(f.sa.step, 1);
	tree_check(&acked, f.sa.root, USER);
	tree_free(&acked);
	fixture_end(&f);
}

/* (4) Bad input from the primary: a "../" path, a corrupt delta. Each
 * update is refused with the reason, the replica copy is untouched, and
 * the next good update installs (its staging starts clean). */
static void test_bad_files(void **state)
{
	(void)state;
	struct fixture f;
	fixture_start(&f, 4, 64 * 1024);
	struct tree acked;
	tree_read(&acked, f.pa.root, USER);
	patch_file(f.pa.root, "f00.bin", 100, 4096, 13);
	set_step(&f.pa, 2);

	struct {
		enum mig__fault_point fault;
		const char *needle;
	} cases[] = {
		{MIG__FAULT_FILE_DOTDOT, "not a valid relative path"},
		{MIG__FAULT_FILE_CORRUPT_CHUNK, "f00.bin"},
	};
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		int pr = replog_count(&f.pa.log, MIG_REPLICA_REFUSED, NULL);
		int sr = replog_count(&f.sa.log, MIG_REPLICA_REJECTED, NULL);
		mig__engine_set_fault(f.p, cases[c].fault, MIG__FAULT_DROP_BEFORE, 1);
		assert_int_equal(mig_replicate_now(f.p, USER), 0);
		assert_true(replog_wait(f.both, 2, &f.sa.log, MIG_REPLICA_REJECTED, sr + 1, 10000));
		assert_true(replog_wait(f.both, 2, &f.pa.log, MIG_REPLICA_REFUSED, pr + 1, 10000));
		struct rev r = {0};
		replog_count(&f.sa.log, MIG_REPLICA_REJECTED, &r);
		print_message("# refused: %s\n", r.reason);
		if (!strstr(r.reason, cases[c].needle))
			fail_msg("reason \"%s\" lacks \"%s\"", r.reason, cases[c].needle);
		assert_int_equal(replog_count(&f.sa.log, MIG_REPLICA_INSTALLED, NULL), 1);
		tree_check(&acked, f.sa.root, REPLICA_DIR "/" USER);
		assert_false(exists(f.sa.root, "evil"));
		assert_false(exists(f.sa.root, REPLICA_DIR "/evil"));
	}
	/* The link and the replica are fine: the next update goes in. */
	int acks = replog_count(&f.pa.log, MIG_REPLICA_ACKED, NULL);
	push(f.both, &f.pa, f.p, acks + 1);
	struct tree now;
	tree_read(&now, f.pa.root, USER);
	tree_check(&now, f.sa.root, REPLICA_DIR "/" USER);

	kill_and_promote(&f);
	assert_int_equal(f.sa.step, 2);
	tree_check(&now, f.sa.root, USER);
	tree_free(&now);
	tree_free(&acked);
	fixture_end(&f);
}

/* Appends to a file of an append-only domain (the sandwich server's
 * frames): each update carries the new tail only (raw bytes after the
 * standby's copy, read from the old end); a file replaced by a new one
 * (another inode) and a new file still go whole; every copy is exact. */
static void append(const char *root, const char *rel, size_t len, unsigned seed)
{
	char path[512];
	snprintf(path, sizeof(path), "%s/%s/%s", root, USER, rel);
	uint8_t buf[8192];
	assert_true(len <= sizeof(buf));
	test_fill(buf, len, seed);
	int fd = open(path, O_WRONLY | O_APPEND);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, buf, len), (ssize_t)len);
	close(fd);
}

static void test_append_only(void **state)
{
	(void)state;
	struct fixture f;
	fixture_start_mode(&f, 2, 512 * 1024, 1, 0);
	write_file(f.pa.root, "frames.log", 0, 1);
	set_step(&f.pa, 2);
	push(f.both, &f.pa, f.p, 2);
	for (int k = 0; k < 6; k++) {
		append(f.pa.root, "frames.log", 3000, 20u + (unsigned)k);
		append(f.pa.root, "f00.bin", 1000, 40u + (unsigned)k);
		set_step(&f.pa, 3 + (uint64_t)k);
		struct rev r = push(f.both, &f.pa, f.p, 3 + k);
		print_message("# update %d: 4000 bytes appended, %llu bytes sent\n", 3 + k,
			      (unsigned long long)r.bytes);
		assert_true(r.bytes < 8000);
		struct tree t;
		tree_read(&t, f.pa.root, USER);
		tree_check(&t, f.sa.root, REPLICA_DIR "/" USER);
		tree_free(&t);
	}
	/* Replaced whole (a new inode), and a new file: still exact. */
	char src[512], dst[512];
	write_file(f.pa.root, "other.bin", 10000, 50);
	snprintf(src, sizeof(src), "%s/%s/other.bin", f.pa.root, USER);
	snprintf(dst, sizeof(dst), "%s/%s/sub/f01.bin", f.pa.root, USER);
	assert_int_equal(rename(src, dst), 0);
	write_file(f.pa.root, "fresh.log", 5000, 51);
	set_step(&f.pa, 20);
	push(f.both, &f.pa, f.p, 9);
	struct tree now;
	tree_read(&now, f.pa.root, USER);
	tree_check(&now, f.sa.root, REPLICA_DIR "/" USER);

	kill_and_promote(&f);
	assert_int_equal(f.sa.step, 20);
	tree_check(&now, f.sa.root, USER);
	tree_free(&now);
	fixture_end(&f);
}

/* Frames no primary of this library sends, from an engine of the cluster:
 * the wire check closes the link with the reason, or the standby refuses
 * the update; the replica copy and its record do not change. */
static void send_raw(mig_engine *from, mig_engine *to, const mig__frame *f)
{
	pthread_mutex_lock(&from->lock);
	uint64_t conn = 0;
	assert_int_equal(mig__engine_peer_conn(from, mig_engine_url(to), &conn), 0);
	assert_true(mig__engine_send(from, conn, f, NULL, false) > 0);
	pthread_mutex_unlock(&from->lock);
}

static void test_bad_frames(void **state)
{
	(void)state;
	struct fixture f;
	fixture_start(&f, 2, 4096);
	struct app xa;
	app_init(&xa, "other");
	mig_engine *x = app_engine(&xa, "fo-other");
	mig_engine *all[] = {f.p, f.s, x};
	struct tree acked;
	tree_read(&acked, f.pa.root, USER);

	Migwire__ReplicaFile rf = MIGWIRE__REPLICA_FILE__INIT;
	rf.user = (char *)USER;
	rf.epoch = 1;
	rf.seq = 9;
	rf.domain = (char *)"files";
	rf.path = (char *)"f00.bin";
	rf.has_first = rf.first = true;
	rf.has_last = rf.last = true;
	rf.has_remove = rf.remove = true;
	rf.has_data = true;
	rf.data.data = (uint8_t *)"x";
	rf.data.len = 1;
	mig__frame fr = MIGWIRE__FRAME__INIT;
	fr.body_case = MIGWIRE__FRAME__BODY_REPLICA_FILE;
	fr.replica_file = &rf;
	const char *needles[] = {"a removal is one piece without data",
				 "tail_from is for the first piece"};
	for (int c = 0; c < 2; c++) {
		if (c == 1) {
			rf.has_remove = rf.remove = false;
			rf.has_first = rf.first = false;
			rf.has_last = rf.last = false;
			rf.has_tail_from = true;
			rf.tail_from = 1;
		}
		/* Resent if it went out on the link the last one closed. */
		bool seen = false;
		for (int t = 0; t < 5 && !seen; t++) {
			test_dispatch_for(all, 3, 200);
			send_raw(x, f.s, &fr);
			seen = replog_wait_logged(all, 3, &f.sa.log, needles[c], 1500);
		}
		if (!seen)
			fail_msg("the standby did not log \"%s\"", needles[c]);
	}
	/* A user id that cannot name a folder, with file state. */
	Migwire__ReplicaUpdate u = MIGWIRE__REPLICA_UPDATE__INIT;
	u.user = (char *)"..";
	u.epoch = 1;
	u.seq = 1;
	u.has_base_seq = true;
	u.has_files = true;
	fr.body_case = MIGWIRE__FRAME__BODY_REPLICA_UPDATE;
	fr.replica_update = &u;
	int rj = replog_count(&f.sa.log, MIG_REPLICA_REJECTED, NULL);
	bool seen = false;
	for (int t = 0; t < 5 && !seen; t++) {
		test_dispatch_for(all, 3, 200);
		send_raw(x, f.s, &fr);
		seen = replog_wait(all, 3, &f.sa.log, MIG_REPLICA_REJECTED, rj + 1, 1500);
	}
	assert_true(seen);
	struct rev r = {0};
	replog_count(&f.sa.log, MIG_REPLICA_REJECTED, &r);
	assert_int_equal(r.error, MIG_EINVAL);
	assert_non_null(strstr(r.reason, "cannot name a folder"));

	test_dispatch_for(all, 3, 200);
	assert_int_equal(replog_count(&f.sa.log, MIG_REPLICA_INSTALLED, NULL), 1);
	tree_check(&acked, f.sa.root, REPLICA_DIR "/" USER);
	/* The real primary still gets through. */
	set_step(&f.pa, 2);
	push(f.both, &f.pa, f.p, 2);
	tree_check(&acked, f.sa.root, REPLICA_DIR "/" USER);
	tree_free(&acked);
	mig_engine_free(x);
	app_free(&xa);
	fixture_end(&f);
}

/* An update queues at most 8 frame caps of file bytes (plus one file):
 * with a 64 KiB cap, a 1.5 MiB folder goes in several updates, each sent as
 * soon as the previous one is acknowledged, without waiting for the
 * interval; the copy ends exact. */
static void test_update_budget(void **state)
{
	(void)state;
	struct fixture f;
	fixture_start_mode(&f, 24, 64 * 1024, 0, 64 * 1024);
	assert_true(replog_wait(f.both, 2, &f.pa.log, MIG_REPLICA_ACKED, 3, 15000));
	struct tree t;
	tree_read(&t, f.pa.root, USER);
	for (int i = 0; i < 20; i++) {
		struct tree got;
		tree_read(&got, f.sa.root, REPLICA_DIR "/" USER);
		size_t n = got.n;
		tree_free(&got);
		if (n == t.n)
			break;
		test_dispatch_for(f.both, 2, 100);
	}
	tree_check(&t, f.sa.root, REPLICA_DIR "/" USER);
	struct replog *l = &f.pa.log;
	pthread_mutex_lock(&l->lock);
	int acks = 0;
	for (int i = 0; i < l->nev; i++)
		if (l->ev[i].type == MIG_REPLICA_ACKED) {
			acks++;
			print_message("# update %llu: %llu bytes\n",
				      (unsigned long long)l->ev[i].seq,
				      (unsigned long long)l->ev[i].bytes);
			assert_true(l->ev[i].bytes <= 8 * 64 * 1024 + 64 * 1024 + 4096);
		}
	pthread_mutex_unlock(&l->lock);
	assert_true(acks >= 3);
	tree_free(&t);
	fixture_end(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_incremental),
		cmocka_unit_test(test_promote_after_primary_gone),
		cmocka_unit_test(test_torn_update),
		cmocka_unit_test(test_bad_files),
		cmocka_unit_test(test_append_only),
		cmocka_unit_test(test_bad_frames),
		cmocka_unit_test(test_update_budget),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
