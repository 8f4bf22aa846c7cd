/* Unit tests of files.c: path rules, scanning (sorting, stat fields,
 * refusals with reasons), confinement of every open against symlinks,
 * staging, the atomic install, recursive removal, digests, allocation
 * failure, and a full disk (root only, in a private mount namespace).
 *
 * With --no-openat2 the whole suite runs again under a seccomp filter that
 * makes openat2 fail with ENOSYS, so the component-by-component fallback is
 * held to the same tests. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <linux/filter.h>
#include <linux/openat2.h>
#include <linux/seccomp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <unistd.h>

#include <xxhash.h>

#include "cnt_alloc.h"
#include "digest.h"
#include "files.h"

#define MID "0123456789abcdef0123456789abcdef"
#define MID2 "fedcba9876543210fedcba9876543210"

/* ---------------------------------------------------------------- fixture */

typedef struct fx {
	char root[64];  /* ROOT of the file domain */
	char other[64]; /* a folder outside it, target of hostile symlinks */
	char mounts[4][128];
	int nmounts;
} fx;

static int rm_cb(const char *path, const struct stat *st, int type, struct FTW *ftw)
{
	(void)st;
	(void)type;
	(void)ftw;
	remove(path);
	return 0;
}

static void rm_rf(const char *path)
{
	nftw(path, rm_cb, 32, FTW_DEPTH | FTW_PHYS);
}

static int setup(void **state)
{
	fx *f = calloc(1, sizeof(*f));
	if (!f)
		return -1;
	strcpy(f->root, "/tmp/mig-files-XXXXXX");
	strcpy(f->other, "/tmp/mig-files-other-XXXXXX");
	if (!mkdtemp(f->root) || !mkdtemp(f->other)) {
		free(f);
		return -1;
	}
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	fx *f = *state;
	while (f->nmounts > 0)
		umount2(f->mounts[--f->nmounts], MNT_DETACH);
	rm_rf(f->root);
	rm_rf(f->other);
	free(f);
	assert_int_equal(mig_set_allocator(NULL, NULL, NULL), 0);
	return 0;
}

/* A path under the root or the other folder, from a rotating pool. */
static const char *at(const char *base, const char *rel)
{
	static char pool[8][4096];
	static int next;
	char tmp[4096];
	int n = snprintf(tmp, sizeof(tmp), "%s/%s", base, rel);
	assert_true(n > 0 && (size_t)n < sizeof(tmp));
	char *p = pool[next++ % 8];
	memcpy(p, tmp, (size_t)n + 1);
	return p;
}

static void mkdirs(const char *path)
{
	char buf[4096];
	snprintf(buf, sizeof(buf), "%s", path);
	for (char *p = buf + 1; *p; p++) {
		if (*p != '/')
			continue;
		*p = '\0';
		mkdir(buf, 0755);
		*p = '/';
	}
	mkdir(buf, 0755);
}

static void put_bytes(const char *path, const void *data, size_t len)
{
	char dir[4096];
	snprintf(dir, sizeof(dir), "%s", path);
	char *slash = strrchr(dir, '/');
	*slash = '\0';
	mkdirs(dir);
	int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	close(fd);
}

static void put(const char *path, const char *text)
{
	put_bytes(path, text, strlen(text));
}

/* The whole content of fd (from offset 0), NUL-terminated; caller frees. */
static char *slurp_fd(int fd, size_t *len)
{
	size_t cap = 4096, n = 0;
	char *buf = malloc(cap + 1);
	assert_non_null(buf);
	for (;;) {
		ssize_t r = pread(fd, buf + n, cap - n, (off_t)n);
		assert_true(r >= 0);
		if (r == 0)
			break;
		n += (size_t)r;
		if (n == cap) {
			cap *= 2;
			buf = realloc(buf, cap + 1);
			assert_non_null(buf);
		}
	}
	buf[n] = '\0';
	if (len)
		*len = n;
	return buf;
}

static char *slurp(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	char *s = slurp_fd(fd, NULL);
	close(fd);
	return s;
}

static void assert_content(const char *path, const char *text)
{
	char *s = slurp(path);
	assert_string_equal(s, text);
	free(s);
}

static bool exists(const char *path)
{
	struct stat st;
	return lstat(path, &st) == 0;
}

static mode_t mode_of(const char *path)
{
	struct stat st;
	assert_int_equal(lstat(path, &st), 0);
	return st.st_mode;
}

static void write_staging(const char *root, const char *mid, const char *rel, const char *text)
{
	int fd = mig__files_open_staging(root, mid, rel);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
	close(fd);
}

static bool dir_empty(const char *path)
{
	DIR *d = opendir(path);
	assert_non_null(d);
	struct dirent *de;
	int n = 0;
	while ((de = readdir(d)))
		n += strcmp(de->d_name, ".") && strcmp(de->d_name, "..");
	closedir(d);
	return n == 0;
}

/* ---------------------------------------------------------------- path rules */

static void test_path_rules(void **state)
{
	(void)state;
	static const char *ok[] = {
		"a",    "a/b/c", ".hidden",     "a/.b",       "..a",  "a..",
		"...",  "a.b",   "x.mig-",      "mig-x",      ".mig", ".migx",
		"a\\b", "a b",   "caf\xc3\xa9", "dir/.mig/x", "-",    "a/b.tmp",
	};
	for (size_t i = 0; i < MIG__ARRAY_LEN(ok); i++) {
		if (!mig__path_valid(ok[i]))
			fail_msg("refused %s", ok[i]);
	}
	static const char *bad[] = {
		"",
		"/abs",
		"/",
		"../x",
		"..",
		".",
		"./a",
		"a/.",
		"a/..",
		"a/../b",
		"a/./b",
		"a//b",
		"a/",
		"//",
		".mig-x",
		".mig-",
		"a/.mig-staging/b",
		".mig-staging",
		"a/b/.mig-tmp",
		"a\nb",
		"a\x01",
		"\tb",
		"a\x7f",
		"a\x1f/b",
	};
	for (size_t i = 0; i < MIG__ARRAY_LEN(bad); i++) {
		if (mig__path_valid(bad[i]))
			fail_msg("accepted bad path #%zu", i);
	}
	assert_false(mig__path_valid(NULL));

	char p[MIG__PATH_MAX + 2];
	for (size_t i = 0; i < MIG__PATH_MAX; i++)
		p[i] = (i % 2) ? '/' : 'd';
	p[MIG__PATH_MAX - 1] = 'e'; /* 1024 bytes, ends in a name */
	p[MIG__PATH_MAX] = '\0';
	assert_true(mig__path_valid(p));
	p[MIG__PATH_MAX] = 'x'; /* 1025 */
	p[MIG__PATH_MAX + 1] = '\0';
	assert_false(mig__path_valid(p));
}

/* User ids that mig__valid_user() admits but must never name a folder. */
static void test_bad_users(void **state)
{
	fx *f = *state;
	static const char *bad[] = {
		"..", ".", "a/b", "../x", "a/../../x", ".mig-staging", ".mig-x", "", "a b",
	};
	put(at(f->root, "u/f"), "x");
	write_staging(f->root, MID, "f", "y");
	for (size_t i = 0; i < MIG__ARRAY_LEN(bad); i++) {
		const char *u = bad[i];
		mig__file_list l;
		char why[256];
		assert_int_equal(mig__files_scan(f->root, u, &l, why, sizeof(why)), MIG_EINVAL);
		assert_int_equal(l.count, 0);
		assert_int_equal(mig__files_open_read(f->root, u, "f"), MIG_EINVAL);
		assert_int_equal(mig__files_stage_existing(f->root, u, MID, "f"), MIG_EINVAL);
		assert_int_equal(mig__files_install(f->root, u, MID), MIG_EINVAL);
		assert_int_equal(mig__files_remove_user(f->root, u), MIG_EINVAL);
	}
	assert_int_equal(mig__files_remove_user(f->root, NULL), MIG_EINVAL);
	assert_int_equal(mig__files_install(f->root, NULL, MID), MIG_EINVAL);
	/* Nothing moved or vanished. */
	assert_content(at(f->root, "u/f"), "x");
	assert_content(at(f->root, ".mig-staging/" MID "/f"), "y");
	assert_true(exists(f->root));
	/* Bad mids and roots. */
	assert_int_equal(mig__files_open_staging(f->root, "../" MID, "f"), MIG_EINVAL);
	assert_int_equal(mig__files_open_staging(f->root, NULL, "f"), MIG_EINVAL);
	assert_int_equal(mig__files_install(f->root, "u", "xyz"), MIG_EINVAL);
	assert_int_equal(mig__files_staging_remove(f->root, ".."), MIG_EINVAL);
	assert_int_equal(mig__files_open_read(NULL, "u", "f"), MIG_EINVAL);
	assert_int_equal(mig__files_open_read("", "u", "f"), MIG_EINVAL);
}

/* ---------------------------------------------------------------- scan */

static void test_scan_nested_sorted(void **state)
{
	fx *f = *state;
	static const char *files[] = {"b", "a/z", "a/b/c", "A", ".hidden", "a-b", "a/b/.d"};
	static const char *sorted[] = {".hidden", "A", "a-b", "a/b/.d", "a/b/c", "a/z", "b"};
	for (size_t i = 0; i < MIG__ARRAY_LEN(files); i++) {
		char data[64];
		memset(data, 'x', sizeof(data));
		put_bytes(at(f->root, at("u", files[i])), data, i * 7);
	}
	mkdirs(at(f->root, "u/empty/deeper"));
	struct timespec ts[2] = {{1700000000, 123456789}, {1700000000, 123456789}};
	assert_int_equal(utimensat(AT_FDCWD, at(f->root, "u/a/z"), ts, 0), 0);
	assert_int_equal(chmod(at(f->root, "u/a/b/c"), 0640), 0);

	mig__file_list l;
	char why[256] = "untouched";
	assert_int_equal(mig__files_scan(f->root, "u", &l, why, sizeof(why)), 0);
	assert_string_equal(why, "");
	assert_int_equal(l.count, MIG__ARRAY_LEN(sorted));
	for (size_t i = 0; i < l.count; i++) {
		const mig__file_entry *e = &l.entries[i];
		assert_string_equal(e->path, sorted[i]);
		struct stat st;
		assert_int_equal(lstat(at(f->root, at("u", e->path)), &st), 0);
		assert_int_equal(e->size, (uint64_t)st.st_size);
		assert_int_equal(e->ino, (uint64_t)st.st_ino);
		assert_int_equal(e->dev, (uint64_t)st.st_dev);
		assert_int_equal(e->mode, st.st_mode & 0777);
		assert_int_equal(e->mtime_ns,
				 (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec);
		for (size_t k = 0; k < MIG__ARRAY_LEN(files); k++)
			if (!strcmp(files[k], e->path))
				assert_int_equal(e->size, k * 7);
		if (!strcmp(e->path, "a/z"))
			assert_int_equal(e->mtime_ns, 1700000000123456789LL);
		if (!strcmp(e->path, "a/b/c"))
			assert_int_equal(e->mode, 0640);
	}
	mig__file_list_free(&l);
	assert_null(l.entries);
	assert_int_equal(l.count, 0);
	mig__file_list_free(&l); /* twice is fine */
	mig__file_list_free(NULL);
}

static void test_scan_missing_and_empty(void **state)
{
	fx *f = *state;
	mig__file_list l = {(mig__file_entry *)1, 5};
	assert_int_equal(mig__files_scan(f->root, "nobody", &l, NULL, 0), 0);
	assert_null(l.entries);
	assert_int_equal(l.count, 0);
	mkdirs(at(f->root, "u/only/dirs"));
	assert_int_equal(mig__files_scan(f->root, "u", &l, NULL, 0), 0);
	assert_int_equal(l.count, 0);
	/* A missing root is an error, not an empty user. */
	char why[256];
	assert_int_equal(mig__files_scan(at(f->root, "nope"), "u", &l, why, sizeof(why)), MIG_EIO);
	assert_int_equal(errno, ENOENT);
	assert_non_null(strstr(why, "nope"));
	assert_int_equal(mig__files_scan(f->root, "u", NULL, NULL, 0), MIG_EINVAL);
}

static void expect_refusal(const fx *f, const char *user, const char *reason)
{
	mig__file_list l;
	char why[256] = "";
	assert_int_equal(mig__files_scan(f->root, user, &l, why, sizeof(why)), MIG_EINVAL);
	assert_null(l.entries);
	assert_int_equal(l.count, 0);
	if (!strstr(why, reason))
		fail_msg("reason \"%s\" lacks \"%s\"", why, reason);
	/* Small buffers are truncated, never overrun. */
	char tiny[8];
	memset(tiny, 'Z', sizeof(tiny));
	assert_int_equal(mig__files_scan(f->root, user, &l, tiny, 5), MIG_EINVAL);
	assert_int_equal(strlen(tiny), 4);
	assert_int_equal(tiny[5], 'Z');
}

static void test_scan_symlink_outside(void **state)
{
	fx *f = *state;
	put(at(f->other, "secret"), "s");
	put(at(f->root, "user-1/frames/a"), "a");
	assert_int_equal(symlink(at(f->other, "secret"), at(f->root, "user-1/frames/link")), 0);
	expect_refusal(f, "user-1", "user-1/frames/link: symlinks are not moved");
}

static void test_scan_symlink_inside(void **state)
{
	fx *f = *state;
	put(at(f->root, "u/a"), "a");
	assert_int_equal(symlink("a", at(f->root, "u/l")), 0);
	expect_refusal(f, "u", "u/l: symlinks are not moved");
	unlink(at(f->root, "u/l"));
	/* A symlink to a directory is not entered either. */
	put(at(f->other, "d/x"), "x");
	assert_int_equal(symlink(f->other, at(f->root, "u/d")), 0);
	expect_refusal(f, "u", "u/d: symlinks are not moved");
	unlink(at(f->root, "u/d"));
	/* A dangling one. */
	assert_int_equal(symlink("/nonexistent", at(f->root, "u/dang")), 0);
	expect_refusal(f, "u", "u/dang: symlinks are not moved");
}

static void test_scan_user_folder_not_dir(void **state)
{
	fx *f = *state;
	put(at(f->other, "x"), "x");
	assert_int_equal(symlink(f->other, at(f->root, "u")), 0);
	expect_refusal(f, "u", "u: symlinks are not moved");
	put(at(f->root, "v"), "file");
	expect_refusal(f, "v", "v: not a directory");
}

static void test_scan_special_files(void **state)
{
	fx *f = *state;
	put(at(f->root, "u/x/a"), "a");
	assert_int_equal(mkfifo(at(f->root, "u/x/fifo"), 0600), 0);
	expect_refusal(f, "u", "u/x/fifo: FIFOs are not moved");
	unlink(at(f->root, "u/x/fifo"));

	int s = socket(AF_UNIX, SOCK_STREAM, 0);
	assert_true(s >= 0);
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", at(f->root, "u/sock"));
	assert_int_equal(bind(s, (struct sockaddr *)&sa, sizeof(sa)), 0);
	close(s);
	expect_refusal(f, "u", "u/sock: sockets are not moved");
	unlink(at(f->root, "u/sock"));

	if (mknod(at(f->root, "u/null"), S_IFCHR | 0600, makedev(1, 3)) == 0) {
		expect_refusal(f, "u", "u/null: device files are not moved");
		unlink(at(f->root, "u/null"));
	}
	mig__file_list l;
	assert_int_equal(mig__files_scan(f->root, "u", &l, NULL, 0), 0);
	assert_int_equal(l.count, 1);
	mig__file_list_free(&l);
}

static void test_scan_reserved_and_bad_names(void **state)
{
	fx *f = *state;
	put(at(f->root, "u/ok"), "a");
	put(at(f->root, "u/d/.mig-x"), "x");
	expect_refusal(f, "u", "u/d/.mig-x: names starting with .mig- are reserved");
	rm_rf(at(f->root, "u/d"));
	mkdirs(at(f->root, "u/.mig-staging/z"));
	expect_refusal(f, "u", "u/.mig-staging: names starting with .mig- are reserved");
	rm_rf(at(f->root, "u/.mig-staging"));
	put(at(f->root, "u/bad\nname"), "x");
	/* The control character is not echoed into the reason. */
	expect_refusal(f, "u", "u/bad?name: not a valid file name");
}

static void test_scan_depth(void **state)
{
	fx *f = *state;
	char rel[512] = "u";
	for (int i = 0; i < 63; i++)
		strcat(rel, "/d");
	strcat(rel, "/f"); /* 64 components below u */
	put(at(f->root, rel), "deep");
	mig__file_list l;
	assert_int_equal(mig__files_scan(f->root, "u", &l, NULL, 0), 0);
	assert_int_equal(l.count, 1);
	assert_int_equal(strlen(l.entries[0].path), 63 * 2 + 1);
	mig__file_list_free(&l);
	rel[strlen(rel) - 1] = '\0';
	strcat(rel, "d/g"); /* 65 */
	put(at(f->root, rel), "deeper");
	expect_refusal(f, "u", "nested too deep");
}

static void test_scan_too_many_files(void **state)
{
	fx *f = *state;
	mkdirs(at(f->root, "u/many"));
	int dfd = open(at(f->root, "u/many"), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(dfd >= 0);
	char name[32];
	for (int i = 0; i < MIG__MAX_FILES; i++) {
		snprintf(name, sizeof(name), "%06d", i);
		int fd = openat(dfd, name, O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
		assert_true(fd >= 0);
		close(fd);
	}
	mig__file_list l;
	assert_int_equal(mig__files_scan(f->root, "u", &l, NULL, 0), 0);
	assert_int_equal(l.count, MIG__MAX_FILES);
	assert_string_equal(l.entries[0].path, "many/000000");
	assert_string_equal(l.entries[MIG__MAX_FILES - 1].path, "many/099999");
	mig__file_list_free(&l);
	int fd = openat(dfd, "one-more", O_CREAT | O_WRONLY | O_CLOEXEC, 0644);
	assert_true(fd >= 0);
	close(fd);
	close(dfd);
	expect_refusal(f, "u", "u: more than 100000 files");
}

static void test_scan_enomem(void **state)
{
	fx *f = *state;
	for (int i = 0; i < 40; i++) {
		char rel[64];
		snprintf(rel, sizeof(rel), "u/d%d/f%d", i % 3, i);
		put(at(f->root, rel), "x");
	}
	int rc = MIG_ENOMEM;
	long k;
	for (k = 0; rc == MIG_ENOMEM && k < 1000; k++) {
		cnt_install(k);
		mig__file_list l;
		rc = mig__files_scan(f->root, "u", &l, NULL, 0);
		if (rc == 0) {
			assert_int_equal(l.count, 40);
			mig__file_list_free(&l);
		} else {
			assert_int_equal(rc, MIG_ENOMEM);
			assert_null(l.entries);
		}
		cnt_remove();
		assert_int_equal(cnt_live, 0);
	}
	assert_int_equal(rc, 0);
	assert_true(k > 3);
}

/* ---------------------------------------------------------------- reading */

static void test_open_read(void **state)
{
	fx *f = *state;
	put(at(f->root, "u/a/b.txt"), "hello");
	int fd = mig__files_open_read(f->root, "u", "a/b.txt");
	assert_true(fd >= 0);
	int fl = fcntl(fd, F_GETFL);
	assert_int_equal(fl & O_NONBLOCK, 0);
	assert_int_equal(fl & O_ACCMODE, O_RDONLY);
	assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	char *s = slurp_fd(fd, NULL);
	assert_string_equal(s, "hello");
	free(s);
	close(fd);

	assert_int_equal(mig__files_open_read(f->root, "u", "missing"), MIG_EIO);
	assert_int_equal(errno, ENOENT);
	assert_int_equal(mig__files_open_read(f->root, "nobody", "a/b.txt"), MIG_EIO);
	assert_int_equal(mig__files_open_read(f->root, "u", "a"), MIG_EINVAL); /* a folder */
	assert_int_equal(mig__files_open_read(f->root, "u", "../u/a/b.txt"), MIG_EINVAL);
	assert_int_equal(mig__files_open_read(f->root, "u", "/etc/passwd"), MIG_EINVAL);
	assert_int_equal(mig__files_open_read(f->root, "u", "a//b.txt"), MIG_EINVAL);
	/* A FIFO is refused without blocking. */
	assert_int_equal(mkfifo(at(f->root, "u/fifo"), 0600), 0);
	assert_int_equal(mig__files_open_read(f->root, "u", "fifo"), MIG_EINVAL);
}

static void test_open_read_symlinks(void **state)
{
	fx *f = *state;
	put(at(f->other, "file"), "outside");
	put(at(f->root, "u/real/file"), "inside");
	/* An intermediate component pointing out of the root. */
	assert_int_equal(symlink(f->other, at(f->root, "u/dir")), 0);
	assert_content(at(f->root, "u/dir/file"), "outside"); /* the OS would follow it */
	assert_int_equal(mig__files_open_read(f->root, "u", "dir/file"), MIG_EINVAL);
	assert_int_equal(errno, ELOOP);
	/* One pointing inside is refused just the same. */
	assert_int_equal(symlink("real", at(f->root, "u/in")), 0);
	assert_int_equal(mig__files_open_read(f->root, "u", "in/file"), MIG_EINVAL);
	/* The final component. */
	assert_int_equal(symlink(at(f->other, "file"), at(f->root, "u/last")), 0);
	assert_int_equal(mig__files_open_read(f->root, "u", "last"), MIG_EINVAL);
	assert_int_equal(errno, ELOOP);
	/* The user's folder itself. */
	assert_int_equal(symlink(f->other, at(f->root, "v")), 0);
	assert_int_equal(mig__files_open_read(f->root, "v", "file"), MIG_EINVAL);
	/* The staging area: a symlinked .mig-staging or mid folder. */
	assert_int_equal(symlink(f->other, at(f->root, ".mig-staging")), 0);
	assert_int_equal(mig__files_open_staging_read(f->root, MID, "file"), MIG_EINVAL);
	unlink(at(f->root, ".mig-staging"));
	mkdirs(at(f->root, ".mig-staging"));
	assert_int_equal(symlink(f->other, at(f->root, ".mig-staging/" MID)), 0);
	assert_int_equal(mig__files_open_staging_read(f->root, MID, "file"), MIG_EINVAL);
}

/* ---------------------------------------------------------------- staging */

static void test_staging_write_read(void **state)
{
	fx *f = *state;
	write_staging(f->root, MID, "a/b/c.txt", "staged");
	assert_int_equal(mode_of(at(f->root, ".mig-staging")) & 07777, 0700);
	assert_int_equal(mode_of(at(f->root, ".mig-staging/" MID)) & 07777, 0700);
	assert_int_equal(mode_of(at(f->root, ".mig-staging/" MID "/a")) & 07777, 0700);
	assert_int_equal(mode_of(at(f->root, ".mig-staging/" MID "/a/b")) & 07777, 0700);
	mode_t m = mode_of(at(f->root, ".mig-staging/" MID "/a/b/c.txt"));
	assert_true(S_ISREG(m));
	assert_int_equal(m & 07777, 0600);

	int fd = mig__files_open_staging_read(f->root, MID, "a/b/c.txt");
	assert_true(fd >= 0);
	char *s = slurp_fd(fd, NULL);
	assert_string_equal(s, "staged");
	free(s);
	close(fd);

	/* Opening again starts an empty file. */
	fd = mig__files_open_staging(f->root, MID, "a/b/c.txt");
	assert_true(fd >= 0);
	assert_true(fcntl(fd, F_GETFD) & FD_CLOEXEC);
	assert_int_equal(fcntl(fd, F_GETFL) & O_NONBLOCK, 0);
	close(fd);
	assert_content(at(f->root, ".mig-staging/" MID "/a/b/c.txt"), "");

	assert_int_equal(mig__files_open_staging_read(f->root, MID, "nope"), MIG_EIO);
	assert_int_equal(errno, ENOENT);
	assert_int_equal(mig__files_open_staging_read(f->root, MID2, "a/b/c.txt"), MIG_EIO);
	assert_int_equal(mig__files_open_staging(f->root, MID, "../x"), MIG_EINVAL);
	assert_int_equal(mig__files_open_staging(f->root, MID, ".mig-x"), MIG_EINVAL);
}

static void test_staging_conflicts(void **state)
{
	fx *f = *state;
	write_staging(f->root, MID, "a", "file");
	assert_int_equal(mig__files_open_staging(f->root, MID, "a/b"), MIG_EINVAL);
	assert_int_equal(errno, ENOTDIR);
	write_staging(f->root, MID, "d/e", "x");
	assert_int_equal(mig__files_open_staging(f->root, MID, "d"), MIG_EINVAL);
	assert_int_equal(errno, EISDIR);
	/* An empty directory in the way gives way. */
	mkdirs(at(f->root, ".mig-staging/" MID "/empty"));
	write_staging(f->root, MID, "empty", "now a file");
	/* Deeper than a scan accepts. */
	char rel[256] = "d";
	for (int i = 0; i < 64; i++)
		strcat(rel, "/d");
	assert_int_equal(mig__files_open_staging(f->root, MID, rel), MIG_EINVAL);
}

static void test_staging_symlinks(void **state)
{
	fx *f = *state;
	/* .mig-staging itself a symlink out of the root. */
	assert_int_equal(symlink(f->other, at(f->root, ".mig-staging")), 0);
	assert_int_equal(mig__files_open_staging(f->root, MID, "x"), MIG_EINVAL);
	assert_int_equal(mig__files_install(f->root, "u", MID), MIG_EIO);
	assert_true(dir_empty(f->other));
	assert_false(exists(at(f->root, "u")));
	unlink(at(f->root, ".mig-staging"));

	/* A directory inside staging replaced by a symlink. */
	write_staging(f->root, MID, "keep", "k");
	assert_int_equal(symlink(f->other, at(f->root, ".mig-staging/" MID "/a")), 0);
	assert_int_equal(mig__files_open_staging(f->root, MID, "a/x"), MIG_EINVAL);
	assert_int_equal(mig__files_staging_replace(f->root, MID, "keep", "a/x"), MIG_EINVAL);
	assert_true(dir_empty(f->other));

	/* A final symlink is replaced by a new file, its target untouched. */
	put(at(f->other, "target"), "precious");
	assert_int_equal(symlink(at(f->other, "target"), at(f->root, ".mig-staging/" MID "/l")), 0);
	write_staging(f->root, MID, "l", "new");
	assert_true(S_ISREG(mode_of(at(f->root, ".mig-staging/" MID "/l"))));
	assert_content(at(f->other, "target"), "precious");
	assert_int_equal(mig__files_open_staging_read(f->root, MID, "a"), MIG_EINVAL);
}

static void test_staging_replace(void **state)
{
	fx *f = *state;
	write_staging(f->root, MID, "a/c", "old round");
	write_staging(f->root, MID, "a/c.tmp", "new round");
	assert_int_equal(mig__files_staging_replace(f->root, MID, "a/c.tmp", "a/c"), 0);
	assert_content(at(f->root, ".mig-staging/" MID "/a/c"), "new round");
	assert_false(exists(at(f->root, ".mig-staging/" MID "/a/c.tmp")));
	/* Into a directory not made yet. */
	write_staging(f->root, MID, "t", "moved");
	assert_int_equal(mig__files_staging_replace(f->root, MID, "t", "x/y/z"), 0);
	assert_content(at(f->root, ".mig-staging/" MID "/x/y/z"), "moved");

	assert_int_equal(mig__files_staging_replace(f->root, MID, "gone", "a/c"), MIG_EIO);
	assert_int_equal(errno, ENOENT);
	assert_int_equal(mig__files_staging_replace(f->root, MID, "x", "a/c"), MIG_EINVAL);
	assert_int_equal(mig__files_staging_replace(f->root, MID, "a/c", "../c"), MIG_EINVAL);
	assert_int_equal(mig__files_staging_replace(f->root, MID, "a/c", "x"), MIG_EINVAL);
	assert_content(at(f->root, ".mig-staging/" MID "/a/c"), "new round");
}

static void test_staging_unlink(void **state)
{
	fx *f = *state;
	write_staging(f->root, MID, "x/y/z", "z");
	write_staging(f->root, MID, "x/w", "w");
	assert_int_equal(mig__files_staging_unlink(f->root, MID, "x/y/z"), 0);
	assert_false(exists(at(f->root, ".mig-staging/" MID "/x/y"))); /* pruned */
	assert_true(exists(at(f->root, ".mig-staging/" MID "/x/w")));
	assert_int_equal(mig__files_staging_unlink(f->root, MID, "x/w"), 0);
	assert_false(exists(at(f->root, ".mig-staging/" MID "/x")));
	assert_true(exists(at(f->root, ".mig-staging/" MID)));
	/* The source deleted a folder and made a file of the same name. */
	write_staging(f->root, MID, "p/q", "q");
	assert_int_equal(mig__files_staging_unlink(f->root, MID, "p/q"), 0);
	write_staging(f->root, MID, "p", "p is a file now");

	assert_int_equal(mig__files_staging_unlink(f->root, MID, "missing"), 0);
	assert_int_equal(mig__files_staging_unlink(f->root, MID, "no/such/dir"), 0);
	assert_int_equal(mig__files_staging_unlink(f->root, MID2, "x"), 0);
	assert_int_equal(mig__files_staging_unlink(f->root, MID, "a/../b"), MIG_EINVAL);
	write_staging(f->root, MID, "d/e", "e");
	assert_int_equal(mig__files_staging_unlink(f->root, MID, "d"), MIG_EINVAL);
}

static void test_staging_remove(void **state)
{
	fx *f = *state;
	put(at(f->other, "d/precious"), "p");
	write_staging(f->root, MID, "a/b/c", "c");
	write_staging(f->root, MID, "top", "t");
	write_staging(f->root, MID2, "other-migration", "o");
	assert_int_equal(symlink(at(f->other, "d"), at(f->root, ".mig-staging/" MID "/a/link")), 0);
	assert_int_equal(mkfifo(at(f->root, ".mig-staging/" MID "/fifo"), 0600), 0);
	assert_int_equal(mig__files_staging_remove(f->root, MID), 0);
	assert_false(exists(at(f->root, ".mig-staging/" MID)));
	assert_content(at(f->other, "d/precious"), "p");
	assert_content(at(f->root, ".mig-staging/" MID2 "/other-migration"), "o");
	assert_int_equal(mig__files_staging_remove(f->root, MID), 0);
	rm_rf(at(f->root, ".mig-staging"));
	assert_int_equal(mig__files_staging_remove(f->root, MID), 0);
}

static void test_stage_existing(void **state)
{
	fx *f = *state;
	put(at(f->root, "u/a/f"), "hello");
	struct stat ust, sst;
	assert_int_equal(stat(at(f->root, "u/a/f"), &ust), 0);
	assert_int_equal(mig__files_stage_existing(f->root, "u", MID, "a/f"), 0);
	assert_int_equal(stat(at(f->root, ".mig-staging/" MID "/a/f"), &sst), 0);
	assert_int_equal(sst.st_ino, ust.st_ino); /* a hard link */
	assert_content(at(f->root, ".mig-staging/" MID "/a/f"), "hello");

	/* Replaces whatever was staged there. */
	write_staging(f->root, MID, "b", "stale");
	put(at(f->root, "u/b"), "fresh");
	assert_int_equal(mig__files_stage_existing(f->root, "u", MID, "b"), 0);
	assert_content(at(f->root, ".mig-staging/" MID "/b"), "fresh");

	/* Writing the staged name afterwards never truncates the user's file. */
	write_staging(f->root, MID, "a/f", "patched");
	assert_content(at(f->root, "u/a/f"), "hello");
	assert_content(at(f->root, ".mig-staging/" MID "/a/f"), "patched");

	assert_int_equal(mig__files_stage_existing(f->root, "u", MID, "missing"), MIG_EIO);
	assert_int_equal(errno, ENOENT);
	assert_int_equal(mig__files_stage_existing(f->root, "u", MID, "a"), MIG_EINVAL);
	put(at(f->other, "secret"), "s");
	assert_int_equal(symlink(at(f->other, "secret"), at(f->root, "u/l")), 0);
	assert_int_equal(mig__files_stage_existing(f->root, "u", MID, "l"), MIG_EINVAL);
	assert_false(exists(at(f->root, ".mig-staging/" MID "/l")));
	assert_int_equal(symlink(f->other, at(f->root, "u/dl")), 0);
	assert_int_equal(mig__files_stage_existing(f->root, "u", MID, "dl/secret"), MIG_EINVAL);
	assert_int_equal(mkfifo(at(f->root, "u/fifo"), 0600), 0);
	assert_int_equal(mig__files_stage_existing(f->root, "u", MID, "fifo"), MIG_EINVAL);
}

/* ---------------------------------------------------------------- install */

static void test_install_new_user(void **state)
{
	fx *f = *state;
	write_staging(f->root, MID, "a/b", "ab");
	write_staging(f->root, MID, "c", "c");
	assert_int_equal(mig__files_install(f->root, "u", MID), 0);
	assert_content(at(f->root, "u/a/b"), "ab");
	assert_content(at(f->root, "u/c"), "c");
	assert_int_equal(mode_of(at(f->root, "u")) & 07777, 0700);
	assert_false(exists(at(f->root, ".mig-staging/" MID)));
	assert_true(exists(at(f->root, ".mig-staging")));
	mig__file_list l;
	assert_int_equal(mig__files_scan(f->root, "u", &l, NULL, 0), 0);
	assert_int_equal(l.count, 2);
	mig__file_list_free(&l);
	/* Nothing staged any more: installing the same mid again gives an
	 * empty folder, never the files of before. */
	assert_int_equal(mig__files_install(f->root, "u", MID), 0);
	assert_true(dir_empty(at(f->root, "u")));
}

static void test_install_existing_user(void **state)
{
	fx *f = *state;
	put(at(f->root, "u/old"), "old");
	put(at(f->root, "u/dir/old2"), "old2");
	put(at(f->root, "u/keep"), "kept");
	put(at(f->root, "u/changed"), "before");
	assert_int_equal(mkfifo(at(f->root, "u/dir/fifo"), 0600), 0);
	put(at(f->other, "precious"), "p");
	assert_int_equal(symlink(f->other, at(f->root, "u/dir/out")), 0);

	assert_int_equal(mig__files_stage_existing(f->root, "u", MID, "keep"), 0);
	write_staging(f->root, MID, "changed", "after");
	write_staging(f->root, MID, "new/n", "n");
	assert_int_equal(mig__files_install(f->root, "u", MID), 0);

	assert_content(at(f->root, "u/keep"), "kept");
	assert_content(at(f->root, "u/changed"), "after");
	assert_content(at(f->root, "u/new/n"), "n");
	assert_false(exists(at(f->root, "u/old")));
	assert_false(exists(at(f->root, "u/dir")));
	assert_false(exists(at(f->root, ".mig-staging/" MID)));
	assert_content(at(f->other, "precious"), "p");
	mig__file_list l;
	assert_int_equal(mig__files_scan(f->root, "u", &l, NULL, 0), 0);
	assert_int_equal(l.count, 3);
	assert_string_equal(l.entries[0].path, "changed");
	assert_string_equal(l.entries[1].path, "keep");
	assert_string_equal(l.entries[2].path, "new/n");
	mig__file_list_free(&l);

	/* An empty migration replaces the folder with an empty one. */
	assert_int_equal(mig__files_install(f->root, "u", MID2), 0);
	assert_true(dir_empty(at(f->root, "u")));
	assert_false(exists(at(f->root, ".mig-staging/" MID2)));
}

static void test_install_refusals(void **state)
{
	fx *f = *state;
	/* The user's folder is a symlink: not replaced, not followed. */
	put(at(f->other, "x"), "x");
	assert_int_equal(symlink(f->other, at(f->root, "u")), 0);
	write_staging(f->root, MID, "f", "f");
	assert_int_equal(mig__files_install(f->root, "u", MID), MIG_EIO);
	assert_int_equal(errno, ELOOP);
	assert_true(S_ISLNK(mode_of(at(f->root, "u"))));
	assert_content(at(f->other, "x"), "x");
	assert_content(at(f->root, ".mig-staging/" MID "/f"), "f");
	/* Or a file. */
	put(at(f->root, "v"), "v");
	assert_int_equal(mig__files_install(f->root, "v", MID), MIG_EIO);
	assert_int_equal(errno, ENOTDIR);
	/* Something we did not stage (a symlink) in the staging folder. */
	assert_int_equal(symlink(f->other, at(f->root, ".mig-staging/" MID "/evil")), 0);
	assert_int_equal(mig__files_install(f->root, "w", MID), MIG_EIO);
	assert_false(exists(at(f->root, "w")));
	/* A missing root. */
	assert_int_equal(mig__files_install(at(f->root, "nope"), "w", MID), MIG_EIO);
}

/* ---------------------------------------------------------------- removal */

static void test_remove_user(void **state)
{
	fx *f = *state;
	put(at(f->other, "d/precious"), "p");
	put(at(f->root, "u/a/b/c"), "c");
	put(at(f->root, "u/.hidden"), "h");
	assert_int_equal(symlink(at(f->other, "d"), at(f->root, "u/a/out")), 0);
	assert_int_equal(symlink(at(f->other, "d/precious"), at(f->root, "u/a/b/f")), 0);
	assert_int_equal(mkfifo(at(f->root, "u/fifo"), 0600), 0);
	put(at(f->root, "v/keep"), "v");
	assert_int_equal(mig__files_remove_user(f->root, "u"), 0);
	assert_false(exists(at(f->root, "u")));
	assert_content(at(f->other, "d/precious"), "p");
	assert_content(at(f->root, "v/keep"), "v");
	assert_int_equal(mig__files_remove_user(f->root, "u"), 0); /* missing */
	/* The user's folder a symlink: the link goes, its target stays. */
	assert_int_equal(symlink(at(f->other, "d"), at(f->root, "w")), 0);
	assert_int_equal(mig__files_remove_user(f->root, "w"), 0);
	assert_false(exists(at(f->root, "w")));
	assert_content(at(f->other, "d/precious"), "p");
}

/* Deeper than removal holds descriptors for, with files, symlinks and
 * side folders at every level. */
static void test_remove_deep(void **state)
{
	fx *f = *state;
	put(at(f->other, "precious"), "p");
	char rel[2048] = "u";
	for (int i = 0; i < 150; i++) {
		strcat(rel, "/d");
		char p[2200];
		snprintf(p, sizeof(p), "%s/file", rel);
		put(at(f->root, p), "x");
		snprintf(p, sizeof(p), "%s/side/s", rel);
		put(at(f->root, p), "s");
		snprintf(p, sizeof(p), "%s/z-link", rel);
		assert_int_equal(symlink(f->other, at(f->root, p)), 0);
	}
	assert_int_equal(mig__files_remove_user(f->root, "u"), 0);
	assert_false(exists(at(f->root, "u")));
	assert_content(at(f->other, "precious"), "p");

	/* The same under staging. */
	snprintf(rel, sizeof(rel), ".mig-staging/%s", MID);
	for (int i = 0; i < 100; i++) {
		strcat(rel, "/e");
		char p[2200];
		snprintf(p, sizeof(p), "%s/f", rel);
		put(at(f->root, p), "y");
	}
	assert_int_equal(mig__files_staging_remove(f->root, MID), 0);
	assert_false(exists(at(f->root, ".mig-staging/" MID)));
}

/* ---------------------------------------------------------------- digests */

static void hex(const uint8_t *d, char *out)
{
	for (int i = 0; i < MIG__DIGEST_LEN; i++)
		sprintf(out + 2 * i, "%02x", d[i]);
}

/* peek of mig__digest_file(fd, limit), or the error */
static int digest_of(int fd, uint64_t limit, uint8_t d[MIG__DIGEST_LEN])
{
	mig__digest *h = NULL;
	int rc = mig__digest_file(fd, limit, &h);
	if (rc == 0) {
		assert_non_null(h);
		assert_int_equal(mig__digest_peek(h, d), 0);
		mig__digest_free(h);
	} else {
		assert_null(h);
	}
	return rc;
}

static void test_digest_file(void **state)
{
	fx *f = *state;
	uint8_t d[MIG__DIGEST_LEN];
	char h[2 * MIG__DIGEST_LEN + 1];

	/* XXH3-128 of no bytes, as xxHash's own test vectors give it. */
	put(at(f->root, "empty"), "");
	int fd = open(at(f->root, "empty"), O_RDONLY | O_CLOEXEC);
	assert_int_equal(digest_of(fd, UINT64_MAX, d), 0);
	hex(d, h);
	assert_string_equal(h, "99aa06d3014798d86001c324468d497f");
	close(fd);

	/* pread: the file offset does not move. */
	put(at(f->root, "abc"), "abc");
	fd = open(at(f->root, "abc"), O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	assert_int_equal(lseek(fd, 2, SEEK_SET), 2);
	assert_int_equal(digest_of(fd, UINT64_MAX, d), 0);
	XXH128_canonical_t c;
	XXH128_canonicalFromHash(&c, XXH3_128bits("abc", 3));
	assert_memory_equal(d, c.digest, MIG__DIGEST_LEN);
	assert_int_equal(lseek(fd, 0, SEEK_CUR), 2);
	/* A limit hashes only the head. */
	assert_int_equal(digest_of(fd, 2, d), 0);
	XXH128_canonicalFromHash(&c, XXH3_128bits("ab", 2));
	assert_memory_equal(d, c.digest, MIG__DIGEST_LEN);
	close(fd);

	/* Several reads and a partial one, streaming against one-shot; and
	 * the incremental context fed in odd pieces gives the same. */
	size_t len = 3 * 256 * 1024 + 12345;
	uint8_t *big = malloc(len);
	assert_non_null(big);
	for (size_t i = 0; i < len; i++)
		big[i] = (uint8_t)(i * 2654435761u >> 13);
	put_bytes(at(f->root, "big"), big, len);
	XXH128_canonicalFromHash(&c, XXH3_128bits(big, len));
	mig__digest *inc = mig__digest_new();
	assert_non_null(inc);
	for (size_t off = 0; off < len;) {
		size_t n = len - off < 7777 ? len - off : 7777;
		assert_int_equal(mig__digest_update(inc, big + off, n), 0);
		off += n;
	}
	assert_int_equal(mig__digest_peek(inc, d), 0);
	assert_memory_equal(d, c.digest, MIG__DIGEST_LEN);
	assert_int_equal(mig__digest_peek(inc, d), 0); /* peek leaves it usable */
	assert_memory_equal(d, c.digest, MIG__DIGEST_LEN);
	mig__digest_free(inc);
	free(big);
	fd = open(at(f->root, "big"), O_RDONLY | O_CLOEXEC);
	assert_int_equal(digest_of(fd, UINT64_MAX, d), 0);
	assert_memory_equal(d, c.digest, MIG__DIGEST_LEN);
	close(fd);

	/* Errors: nothing is returned. */
	assert_int_equal(digest_of(-1, UINT64_MAX, d), MIG_EIO);
	assert_int_equal(digest_of(fd, UINT64_MAX, d), MIG_EIO); /* closed */
	int wfd = open(at(f->root, "abc"), O_WRONLY | O_CLOEXEC);
	assert_int_equal(digest_of(wfd, UINT64_MAX, d), MIG_EIO);
	close(wfd);
	fd = open(f->root, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_int_equal(digest_of(fd, UINT64_MAX, d), MIG_EIO);
	close(fd);
}

/* ---------------------------------------------------------------- patch output, tails, cache */

static void test_staging_tmp(void **state)
{
	fx *f = *state;
	int fd = mig__files_open_staging_tmp(f->root, MID, "7");
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "patched", 7), 7);
	close(fd);
	assert_int_equal(mode_of(at(f->root, ".mig-staging/" MID ".tmp/7")) & 07777, 0600);
	assert_int_equal(mig__files_staging_commit_tmp(f->root, MID, "7", "a/b"), 0);
	assert_content(at(f->root, ".mig-staging/" MID "/a/b"), "patched");
	assert_false(exists(at(f->root, ".mig-staging/" MID ".tmp/7")));
	assert_int_equal(mig__files_staging_commit_tmp(f->root, MID, "7", "a/b"), MIG_EIO);
	assert_int_equal(errno, ENOENT);
	static const char *bad[] = {"a/b", "..", ".", ".mig-x", "", "x/"};
	for (size_t i = 0; i < MIG__ARRAY_LEN(bad); i++) {
		assert_int_equal(mig__files_open_staging_tmp(f->root, MID, bad[i]), MIG_EINVAL);
		assert_int_equal(mig__files_staging_commit_tmp(f->root, MID, bad[i], "c"),
				 MIG_EINVAL);
	}
	assert_int_equal(mig__files_staging_commit_tmp(f->root, MID, "7", "../c"), MIG_EINVAL);
	/* A symlinked tmp folder is refused, its target untouched. */
	rm_rf(at(f->root, ".mig-staging/" MID ".tmp"));
	assert_int_equal(symlink(f->other, at(f->root, ".mig-staging/" MID ".tmp")), 0);
	assert_int_equal(mig__files_open_staging_tmp(f->root, MID, "8"), MIG_EINVAL);
	assert_true(dir_empty(f->other));
	unlink(at(f->root, ".mig-staging/" MID ".tmp"));
	/* staging_remove takes both folders. */
	fd = mig__files_open_staging_tmp(f->root, MID, "9");
	assert_true(fd >= 0);
	close(fd);
	assert_int_equal(mig__files_staging_remove(f->root, MID), 0);
	assert_false(exists(at(f->root, ".mig-staging/" MID)));
	assert_false(exists(at(f->root, ".mig-staging/" MID ".tmp")));
}

static void test_staging_append(void **state)
{
	fx *f = *state;
	write_staging(f->root, MID, "log/a", "line1\n");
	int fd = mig__files_open_staging_append(f->root, MID, "log/a");
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, "line2\n", 6, 6), 6);
	close(fd);
	assert_content(at(f->root, ".mig-staging/" MID "/log/a"), "line1\nline2\n");
	assert_int_equal(mig__files_open_staging_append(f->root, MID, "log/none"), MIG_EIO);
	assert_int_equal(errno, ENOENT);
	assert_false(exists(at(f->root, ".mig-staging/" MID "/log/none"))); /* no create */
	assert_int_equal(mig__files_open_staging_append(f->root, MID, "log"), MIG_EINVAL);
	put(at(f->other, "t"), "target");
	assert_int_equal(symlink(at(f->other, "t"), at(f->root, ".mig-staging/" MID "/log/l")), 0);
	assert_int_equal(mig__files_open_staging_append(f->root, MID, "log/l"), MIG_EINVAL);
	assert_content(at(f->other, "t"), "target");
	assert_int_equal(mig__files_open_staging_append(f->root, MID, "../x"), MIG_EINVAL);
}

static void test_cache(void **state)
{
	fx *f = *state;
	put(at(f->root, "u/old"), "first copy");
	assert_int_equal(mig__files_cache_put(f->root, "u"), 0);
	assert_false(exists(at(f->root, "u")));
	assert_content(at(f->root, ".mig-cache/u/old"), "first copy");
	/* A newer folder replaces the cached one. */
	put(at(f->root, "u/new"), "second");
	assert_int_equal(mig__files_cache_put(f->root, "u"), 0);
	assert_false(exists(at(f->root, ".mig-cache/u/old")));
	assert_content(at(f->root, ".mig-cache/u/new"), "second");
	assert_int_equal(mig__files_cache_put(f->root, "nobody"), 0);
	assert_int_equal(mig__files_cache_put(f->root, ".."), MIG_EINVAL);
	assert_int_equal(mig__files_cache_put(f->root, "a/b"), MIG_EINVAL);
	assert_int_equal(symlink(f->other, at(f->root, "s")), 0);
	assert_int_equal(mig__files_cache_put(f->root, "s"), MIG_EINVAL);
	assert_true(S_ISLNK(mode_of(at(f->root, "s"))));

	/* Trimming drops the least recently cached first. */
	char big[1000];
	memset(big, 'b', sizeof(big));
	put_bytes(at(f->root, "v/data"), big, sizeof(big));
	assert_int_equal(mig__files_cache_put(f->root, "v"), 0);
	put_bytes(at(f->root, "w/data"), big, sizeof(big));
	assert_int_equal(mig__files_cache_put(f->root, "w"), 0);
	struct timespec older[2] = {{1000000000, 0}, {1000000000, 0}};
	struct timespec newer[2] = {{2000000000, 0}, {2000000000, 0}};
	assert_int_equal(utimensat(AT_FDCWD, at(f->root, ".mig-cache/u"), older, 0), 0);
	assert_int_equal(utimensat(AT_FDCWD, at(f->root, ".mig-cache/v"), older, 0), 0);
	older[0].tv_sec = older[1].tv_sec = 1000000001;
	assert_int_equal(utimensat(AT_FDCWD, at(f->root, ".mig-cache/u"), older, 0), 0);
	assert_int_equal(utimensat(AT_FDCWD, at(f->root, ".mig-cache/w"), newer, 0), 0);
	assert_int_equal(mig__files_cache_trim(f->root, 100000), 0); /* under the cap */
	assert_true(exists(at(f->root, ".mig-cache/v")));
	assert_int_equal(mig__files_cache_trim(f->root, 1500), 0);
	assert_false(exists(at(f->root, ".mig-cache/v"))); /* oldest */
	assert_true(exists(at(f->root, ".mig-cache/u")));
	assert_true(exists(at(f->root, ".mig-cache/w")));
	assert_int_equal(mig__files_cache_trim(f->root, 0), 0);
	assert_false(exists(at(f->root, ".mig-cache/u")));
	assert_false(exists(at(f->root, ".mig-cache/w")));
	rm_rf(at(f->root, ".mig-cache"));
	assert_int_equal(mig__files_cache_trim(f->root, 0), 0); /* no cache */
}

/* ---------------------------------------------------------------- full disk */

static bool own_mount_ns(void)
{
	static int done; /* 1: ours, -1: impossible */
	if (!done)
		done = geteuid() == 0 && unshare(CLONE_NEWNS) == 0 &&
				       mount("none", "/", "none", MS_REC | MS_PRIVATE, NULL) == 0
			       ? 1
			       : -1;
	return done == 1;
}

static bool mount_tmpfs(fx *f, const char *where, const char *opts)
{
	if (mount("tmpfs", where, "tmpfs", 0, opts) < 0)
		return false;
	size_t n = strlen(where);
	assert_true(n < sizeof(f->mounts[0]));
	memmove(f->mounts[f->nmounts++], where, n + 1);
	return true;
}

static void test_full_disk(void **state)
{
	fx *f = *state;
	if (!own_mount_ns() || !mount_tmpfs(f, f->root, "size=256k,mode=0755")) {
		skip();
		return;
	}
	size_t len = 512 * 1024;
	uint8_t *big = malloc(len);
	assert_non_null(big);
	memset(big, 0xa5, len);

	/* Writing a staging file larger than the disk. */
	int fd = mig__files_open_staging(f->root, MID, "big");
	assert_true(fd >= 0);
	ssize_t total = 0, w = 0;
	while (total < (ssize_t)len && (w = write(fd, big + total, len - (size_t)total)) > 0)
		total += w;
	assert_true(w < 0);
	assert_int_equal(errno, ENOSPC);
	close(fd);
	assert_int_equal(mig__files_staging_unlink(f->root, MID, "big"), 0);

	/* The user's folder on another filesystem: stage_existing cannot link,
	 * copies, and the copy runs out of space. */
	mkdirs(at(f->root, "u"));
	assert_true(mount_tmpfs(f, at(f->root, "u"), "size=1m"));
	put_bytes(at(f->root, "u/big"), big, len);
	put(at(f->root, "u/small"), "small");
	free(big);
	assert_int_equal(mig__files_stage_existing(f->root, "u", MID, "big"), MIG_EIO);
	assert_int_equal(errno, ENOSPC);
	assert_false(exists(at(f->root, ".mig-staging/" MID "/big"))); /* no partial copy */
	assert_int_equal(mig__files_stage_existing(f->root, "u", MID, "small"), 0);
	struct stat a, b;
	assert_int_equal(stat(at(f->root, "u/small"), &a), 0);
	assert_int_equal(stat(at(f->root, ".mig-staging/" MID "/small"), &b), 0);
	assert_true(a.st_dev != b.st_dev);
	assert_int_equal(b.st_mode & 07777, 0600);
	assert_content(at(f->root, ".mig-staging/" MID "/small"), "small");

	/* Removal does not empty a filesystem mounted inside a user's folder. */
	mkdirs(at(f->root, "u/sub"));
	assert_true(mount_tmpfs(f, at(f->root, "u/sub"), "size=64k"));
	put(at(f->root, "u/sub/mounted"), "m");
	assert_int_equal(mig__files_remove_user(f->root, "u"), MIG_EIO);
	assert_int_equal(errno, EXDEV);
	assert_content(at(f->root, "u/sub/mounted"), "m");
}

/* ---------------------------------------------------------------- main */

/* Makes openat2 fail with ENOSYS for the rest of the process. */
static int deny_openat2(void)
{
	struct sock_filter filter[] = {
		BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
		BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_openat2, 0, 1),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOSYS),
		BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
	};
	struct sock_fprog prog = {.len = MIG__ARRAY_LEN(filter), .filter = filter};
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 ||
	    prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &prog) < 0)
		return -1;
	struct open_how how = {.flags = O_RDONLY | O_CLOEXEC};
	long fd = syscall(SYS_openat2, AT_FDCWD, "/", &how, sizeof(how));
	if (fd >= 0 || errno != ENOSYS)
		return -1;
	return 0;
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(int argc, char **argv)
{
	const char *name = "files";
	if (argc > 1 && !strcmp(argv[1], "--no-openat2")) {
		if (deny_openat2() < 0) {
			fprintf(stderr, "cannot install the seccomp filter\n");
			return 1;
		}
		name = "files-no-openat2";
	}
	const struct CMUnitTest tests[] = {
		T(test_path_rules),
		T(test_bad_users),
		T(test_scan_nested_sorted),
		T(test_scan_missing_and_empty),
		T(test_scan_symlink_outside),
		T(test_scan_symlink_inside),
		T(test_scan_user_folder_not_dir),
		T(test_scan_special_files),
		T(test_scan_reserved_and_bad_names),
		T(test_scan_depth),
		T(test_scan_too_many_files),
		T(test_scan_enomem),
		T(test_open_read),
		T(test_open_read_symlinks),
		T(test_staging_write_read),
		T(test_staging_conflicts),
		T(test_staging_symlinks),
		T(test_staging_replace),
		T(test_staging_unlink),
		T(test_staging_remove),
		T(test_stage_existing),
		T(test_install_new_user),
		T(test_install_existing_user),
		T(test_install_refusals),
		T(test_remove_user),
		T(test_remove_deep),
		T(test_digest_file),
		T(test_staging_tmp),
		T(test_staging_append),
		T(test_cache),
		T(test_full_disk),
	};
	return cmocka_run_group_tests_name(name, tests, NULL, NULL);
}
