/* File state on disk, the base of the files_* modules: the errno mapping,
 * path rules, confined opens, and reading a user's or a staged file (with
 * its digest). files_scan.c lists a user's folder, files_stage.c stages an
 * incoming copy and installs it, files_remove.c removes folders and keeps
 * the departed users' cache; they share the helpers here through
 * files_int.h, and files.h is what the rest of the library calls.
 *
 * Confinement: every open under the root goes through openat2() with
 * RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS relative to a
 * descriptor of the root (or, where openat2 is missing, a walk of one
 * component at a time with O_NOFOLLOW), and every other call (mkdirat,
 * unlinkat, linkat, renameat2, fstatat) acts on a single final component
 * relative to a directory opened that way, none of which follows a final
 * symlink. So neither a path from the network nor a symlink planted by
 * anyone reaches outside the root.
 *
 * Errors: internal helpers are syscall-like (-1 and errno); the functions of
 * files.h map errno to MIG_E* and leave errno set to the OS error, so a
 * caller can tell ENOSPC or ENOENT from other I/O errors. */
#include <errno.h>
#include <fcntl.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>


#include "files_int.h"

#ifndef SYS_openat2
#define SYS_openat2 437
#endif

/* ---------------------------------------------------------------- errors */

int mig__files_err_of(int e)
{
	errno = e;
	switch (e) {
	case ENOMEM:
		return MIG_ENOMEM;
	case ELOOP:   /* a symlink in the way */
	case EXDEV:   /* resolution would leave the root */
	case ENOTDIR: /* a file where the path needs a directory */
	case EISDIR:  /* a directory where the path needs a file */
	case ENAMETOOLONG:
	case EINVAL: /* not a regular file, or a path rule */
		return MIG_EINVAL;
	default:
		return MIG_EIO;
	}
}

/* For the functions documented as "0 or MIG_EIO". */
int mig__files_err_io(int e)
{
	errno = e;
	return e == ENOMEM ? MIG_ENOMEM : MIG_EIO;
}

int mig__files_err_inval(void)
{
	errno = EINVAL;
	return MIG_EINVAL;
}

void mig__files_close_keep(int fd)
{
	int e = errno;
	if (fd >= 0)
		close(fd);
	errno = e;
}

/* ---------------------------------------------------------------- names */

bool mig__path_valid(const char *rel)
{
	if (!rel)
		return false;
	size_t n = strnlen(rel, MIG__PATH_MAX + 1);
	if (n == 0 || n > MIG__PATH_MAX)
		return false;
	const char *comp = rel;
	for (size_t i = 0; i <= n; i++) {
		unsigned char c = i < n ? (unsigned char)rel[i] : '/';
		if (c < 0x20 || c == 0x7f)
			return false;
		if (c != '/')
			continue;
		size_t len = (size_t)(rel + i - comp);
		if (len == 0) /* leading '/', "//" or trailing '/' */
			return false;
		if (comp[0] == '.' && (len == 1 || (len == 2 && comp[1] == '.')))
			return false;
		if (len >= FILES_RESERVED_LEN && !memcmp(comp, FILES_RESERVED, FILES_RESERVED_LEN))
			return false;
		comp = rel + i + 1;
	}
	return true;
}

/* mig__valid_user() admits '/' and '.', which must not reach a folder name. */
bool mig__files_user_ok(const char *user)
{
	return mig__valid_user(user) && !strchr(user, '/') && strcmp(user, ".") != 0 &&
	       strcmp(user, "..") != 0 && strncmp(user, FILES_RESERVED, FILES_RESERVED_LEN) != 0;
}

bool mig__files_root_ok(const char *root)
{
	return root && root[0];
}

int mig__files_join2(char *buf, size_t size, const char *a, const char *b)
{
	int n = snprintf(buf, size, "%s/%s", a, b);
	if (n < 0 || (size_t)n >= size) {
		errno = ENAMETOOLONG;
		return -1;
	}
	return 0;
}

bool mig__files_dot_or_dotdot(const char *n)
{
	return n[0] == '.' && (!n[1] || (n[1] == '.' && !n[2]));
}

/* ---------------------------------------------------------------- confined opens */

static int no_openat2; /* set once openat2 reported ENOSYS */

static bool component_ok(const char *c)
{
	return c[0] && strcmp(c, ".") != 0 && strcmp(c, "..") != 0;
}

/* After ENOTDIR on an O_NOFOLLOW open: ELOOP if the entry is a symlink. */
static void symlink_errno(int dirfd, const char *name)
{
	struct stat st;
	int e = errno;
	if (fstatat(dirfd, name, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISLNK(st.st_mode))
		e = ELOOP;
	errno = e;
}

/* The fallback: one component at a time, never following a symlink,
 * refusing absolute paths and "." / ".." components. */
static int walk_open(int dirfd, const char *path, int flags, mode_t mode)
{
	char buf[PBUF];
	size_t n = strlen(path);
	if (path[0] == '/') {
		errno = EXDEV;
		return -1;
	}
	if (n >= sizeof(buf)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(buf, path, n + 1);
	int cur = dirfd, owned = -1, fd;
	char *c = buf;
	for (char *slash; (slash = strchr(c, '/')); c = slash + 1) {
		*slash = '\0';
		if (!component_ok(c)) {
			errno = EXDEV;
			goto fail;
		}
		fd = openat(cur, c, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0) {
			if (errno == ENOTDIR)
				symlink_errno(cur, c);
			goto fail;
		}
		mig__files_close_keep(owned);
		cur = owned = fd;
	}
	if (!component_ok(c)) {
		errno = EXDEV;
		goto fail;
	}
	fd = openat(cur, c, flags | O_NOFOLLOW | O_CLOEXEC, mode);
	if (fd < 0 && errno == ENOTDIR)
		symlink_errno(cur, c);
	if (fd >= 0 && (flags & O_PATH) && !(flags & O_DIRECTORY)) {
		/* O_PATH | O_NOFOLLOW opens a final symlink itself: refuse it. */
		struct stat st;
		if (fstat(fd, &st) < 0 || S_ISLNK(st.st_mode)) {
			close(fd);
			errno = ELOOP;
			fd = -1;
		}
	}
	mig__files_close_keep(owned);
	return fd;
fail:
	mig__files_close_keep(owned);
	return -1;
}

/* Opens `path` relative to dirfd, confined beneath it, following no
 * symlink in any component. Returns an fd or -1 with errno (ELOOP for a
 * symlink in the way, EXDEV for an escape). */
int mig__files_beneath_open(int dirfd, const char *path, int flags, mode_t mode)
{
	flags |= O_CLOEXEC;
	if (!__atomic_load_n(&no_openat2, __ATOMIC_RELAXED)) {
		struct open_how how = {
			.flags = (uint64_t)(unsigned)flags,
			.mode = (flags & O_CREAT) ? mode : 0,
			.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS,
		};
		long fd;
		int tries = 0;
		do
			fd = syscall(SYS_openat2, dirfd, path, &how, sizeof(how));
		while (fd < 0 && (errno == EINTR || (errno == EAGAIN && ++tries < 8)));
		if (fd >= 0)
			return (int)fd;
		if (errno == ENOSYS)
			__atomic_store_n(&no_openat2, 1, __ATOMIC_RELAXED);
		else if (errno != EPERM) /* EPERM: maybe a seccomp filter; retry safely */
			return -1;
	}
	return walk_open(dirfd, path, flags, mode);
}

/* Opens a directory beneath base as O_PATH, with create: making missing
 * components (mode 0700) one at a time, never through a symlink. */
int mig__files_open_dirs(int base, const char *path, bool create)
{
	int fd = mig__files_beneath_open(base, path, O_PATH | O_DIRECTORY, 0);
	if (fd >= 0 || errno != ENOENT || !create)
		return fd;
	char buf[PBUF];
	size_t n = strlen(path);
	if (n >= sizeof(buf)) {
		errno = ENAMETOOLONG;
		return -1;
	}
	memcpy(buf, path, n + 1);
	int cur = base, owned = -1;
	for (char *c = buf, *next; c; c = next) {
		next = strchr(c, '/');
		if (next)
			*next++ = '\0';
		if (mkdirat(cur, c, 0700) < 0 && errno != EEXIST)
			goto fail;
		fd = mig__files_beneath_open(cur, c, O_PATH | O_DIRECTORY, 0);
		if (fd < 0)
			goto fail;
		mig__files_close_keep(owned);
		cur = owned = fd;
	}
	return owned;
fail:
	mig__files_close_keep(owned);
	return -1;
}

/* Opens a regular file (never blocking on a FIFO); EINVAL for anything else. */
int mig__files_open_regular(int dirfd, const char *path, int flags)
{
	int fd = mig__files_beneath_open(dirfd, path, flags | O_NONBLOCK | O_NOCTTY, 0);
	if (fd < 0)
		return -1;
	struct stat st;
	if (fstat(fd, &st) < 0)
		goto fail;
	if (!S_ISREG(st.st_mode)) {
		errno = EINVAL;
		goto fail;
	}
	int fl = fcntl(fd, F_GETFL);
	if (fl < 0 || fcntl(fd, F_SETFL, fl & ~O_NONBLOCK) < 0)
		goto fail;
	return fd;
fail:
	mig__files_close_keep(fd);
	return -1;
}

int mig__files_open_root(const char *root, int flags)
{
	return open(root, flags | O_DIRECTORY | O_CLOEXEC);
}

/* ---------------------------------------------------------------- reading */

int mig__files_open_read(const char *root, const char *user, const char *rel)
{
	char path[PBUF];
	if (!mig__files_root_ok(root) || !mig__files_user_ok(user) || !mig__path_valid(rel) ||
	    mig__files_join2(path, sizeof(path), user, rel) < 0)
		return mig__files_err_inval();
	int rfd = mig__files_open_root(root, O_PATH);
	if (rfd < 0)
		return mig__files_err_io(errno);
	int fd = mig__files_open_regular(rfd, path, O_RDONLY);
	int e = errno;
	close(rfd);
	return fd >= 0 ? fd : mig__files_err_of(e);
}

int mig__files_open_staging_read(const char *root, const char *mid, const char *rel)
{
	char path[PBUF];
	if (!mig__files_root_ok(root) || !mig__valid_mid(mid) || !mig__path_valid(rel) ||
	    snprintf(path, sizeof(path), "%s/%s/%s", MIG__STAGING_DIR, mid, rel) >=
		    (int)sizeof(path))
		return mig__files_err_inval();
	int rfd = mig__files_open_root(root, O_PATH);
	if (rfd < 0)
		return mig__files_err_io(errno);
	int fd = mig__files_open_regular(rfd, path, O_RDONLY);
	int e = errno;
	close(rfd);
	return fd >= 0 ? fd : mig__files_err_of(e);
}

