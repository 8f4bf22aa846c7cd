/* Removing folders under the root (a user's after release, a migration's
 * staging) without following symlinks or leaving the filesystem, however
 * deep; and the departed users' cache (ROOT/.mig-cache), trimmed oldest
 * first. files_stage.c removes the folder an install replaced with
 * mig__files_remove_tree(). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "files_int.h"

#define FILES_FD_DEPTH 32 /* removal holds a descriptor per level up to here */

/* ---------------------------------------------------------------- removal */

/* Opens subdirectory `name` of dirfd for removal: not through a symlink,
 * not onto another filesystem (a mount inside is not ours to empty).
 * Returns the fd, -1 with errno, or -2 if the entry is not a directory
 * (any more): the caller unlinks it. */
static int open_subdir(int dirfd, const char *name, dev_t dev, ino_t *ino)
{
	int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return errno == ELOOP || errno == ENOTDIR ? -2 : -1;
	struct stat st;
	if (fstat(fd, &st) < 0) {
		mig__files_close_keep(fd);
		return -1;
	}
	if (st.st_dev != dev) {
		close(fd);
		errno = EXDEV;
		return -1;
	}
	if (ino)
		*ino = st.st_ino;
	return fd;
}

/* Empties and removes directory `name` of parent without holding more than
 * three descriptors, for trees deeper than FILES_FD_DEPTH: goes down into the
 * first subdirectory it finds and climbs back up through "..", checked
 * against the inode recorded on the way down (so a directory moved away
 * meanwhile stops the removal instead of leading it elsewhere). */
static int remove_deep(int parent, const char *name, dev_t dev)
{
	struct level {
		char *name;
		ino_t ino;
	} *st = NULL;
	size_t n = 0, cap = 0;
	int rc = -1, cur = -1;
	ino_t ino;

	char *first = mig__strdup(name);
	if (!first) {
		errno = ENOMEM;
		return -1;
	}
	cur = open_subdir(parent, name, dev, &ino);
	if (cur < 0) {
		mig__free(first);
		if (cur == -2)
			return unlinkat(parent, name, 0) == 0 || errno == ENOENT ? 0 : -1;
		return errno == ENOENT ? 0 : -1;
	}
	st = mig__malloc(8 * sizeof(*st));
	if (!st) {
		mig__free(first);
		errno = ENOMEM;
		goto out;
	}
	cap = 8;
	st[n++] = (struct level){first, ino};

	while (n) {
		int dfd = dup(cur);
		DIR *d = dfd < 0 ? NULL : fdopendir(dfd);
		if (!d) {
			mig__files_close_keep(dfd);
			goto out;
		}
		char *sub = NULL;
		struct dirent *de;
		for (;;) {
			errno = 0;
			if (!(de = readdir(d)))
				break;
			if (mig__files_dot_or_dotdot(de->d_name))
				continue;
			if (de->d_type != DT_DIR) {
				if (unlinkat(cur, de->d_name, 0) == 0 || errno == ENOENT)
					continue;
				if (errno != EISDIR) {
					closedir(d);
					goto out;
				}
			}
			sub = mig__strdup(de->d_name);
			if (!sub) {
				closedir(d);
				errno = ENOMEM;
				goto out;
			}
			break;
		}
		int e = errno;
		closedir(d);
		if (!de && e) {
			errno = e;
			goto out;
		}
		if (sub) {
			int cfd = open_subdir(cur, sub, dev, &ino);
			if (cfd == -2) {
				int u = unlinkat(cur, sub, 0);
				mig__free(sub);
				if (u < 0 && errno != ENOENT)
					goto out;
				continue;
			}
			if (cfd < 0) {
				mig__free(sub);
				if (errno == ENOENT)
					continue;
				goto out;
			}
			if (n == cap) {
				struct level *bigger = mig__realloc(st, 2 * cap * sizeof(*st));
				if (!bigger) {
					mig__free(sub);
					close(cfd);
					errno = ENOMEM;
					goto out;
				}
				st = bigger;
				cap *= 2;
			}
			st[n++] = (struct level){sub, ino};
			close(cur);
			cur = cfd;
			continue;
		}
		/* cur is empty: remove it from its parent. */
		int up;
		if (n == 1) {
			up = parent;
		} else {
			up = openat(cur, "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
			struct stat ust;
			if (up < 0)
				goto out;
			if (fstat(up, &ust) < 0 || ust.st_dev != dev ||
			    ust.st_ino != st[n - 2].ino) {
				close(up);
				errno = ESTALE;
				goto out;
			}
		}
		close(cur);
		cur = -1;
		if (unlinkat(up, st[n - 1].name, AT_REMOVEDIR) < 0 && errno != ENOENT) {
			if (errno != ENOTEMPTY && errno != EEXIST) {
				if (up != parent)
					mig__files_close_keep(up);
				goto out;
			}
			/* Something appeared meanwhile: empty it again. */
			if (up == parent) {
				cur = open_subdir(parent, st[0].name, dev, NULL);
				if (cur < 0)
					goto out;
			} else {
				cur = up;
				/* Re-enter the child on the next pass through its name. */
				mig__free(st[--n].name);
			}
			continue;
		}
		mig__free(st[--n].name);
		if (n)
			cur = up;
	}
	rc = 0;
out:
	mig__files_close_keep(cur);
	for (size_t i = 0; i < n; i++)
		mig__free(st[i].name);
	mig__free(st);
	return rc;
}

/* Empties the directory open on fd (taken over), holding one descriptor
 * per level down to FILES_FD_DEPTH, then remove_deep() below that. */
static int empty_dir(int fd, dev_t dev, int depth)
{
	DIR *d = fdopendir(fd);
	if (!d) {
		mig__files_close_keep(fd);
		return -1;
	}
	int rc = 0;
	struct dirent *de;
	for (;;) {
		errno = 0;
		if (!(de = readdir(d)))
			break;
		const char *name = de->d_name;
		if (mig__files_dot_or_dotdot(name))
			continue;
		if (de->d_type != DT_DIR) {
			if (unlinkat(fd, name, 0) == 0 || errno == ENOENT)
				continue;
			if (errno != EISDIR) {
				rc = -1;
				break;
			}
		}
		if (depth + 1 >= FILES_FD_DEPTH) {
			rc = remove_deep(fd, name, dev);
		} else {
			int cfd = open_subdir(fd, name, dev, NULL);
			if (cfd == -2)
				rc = unlinkat(fd, name, 0) == 0 || errno == ENOENT ? 0 : -1;
			else if (cfd < 0)
				rc = errno == ENOENT ? 0 : -1;
			else if ((rc = empty_dir(cfd, dev, depth + 1)) == 0 &&
				 unlinkat(fd, name, AT_REMOVEDIR) < 0 && errno != ENOENT)
				rc = -1;
		}
		if (rc)
			break;
	}
	if (!rc && !de && errno)
		rc = -1;
	int e = errno;
	closedir(d);
	errno = e;
	return rc;
}

/* Removes `name` of dirfd whatever it is; a directory recursively. Never
 * follows a symlink (one is unlinked) and never enters another filesystem.
 * Missing is fine. */
int mig__files_remove_tree(int dirfd, const char *name)
{
	for (int attempt = 0; attempt < 4; attempt++) {
		if (unlinkat(dirfd, name, 0) == 0 || errno == ENOENT)
			return 0;
		if (errno != EISDIR)
			return -1;
		int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0) {
			if (errno == ENOENT)
				return 0;
			if (errno == ELOOP || errno == ENOTDIR)
				continue; /* replaced meanwhile: unlink it */
			return -1;
		}
		struct stat st;
		if (fstat(fd, &st) < 0) {
			mig__files_close_keep(fd);
			return -1;
		}
		if (empty_dir(fd, st.st_dev, 0) < 0)
			return -1;
		if (unlinkat(dirfd, name, AT_REMOVEDIR) == 0 || errno == ENOENT)
			return 0;
		if (errno != ENOTEMPTY && errno != EEXIST)
			return -1;
	}
	errno = ENOTEMPTY;
	return -1;
}

int mig__files_staging_remove(const char *root, const char *mid)
{
	if (!mig__files_root_ok(root) || !mig__valid_mid(mid))
		return mig__files_err_inval();
	int rfd = mig__files_open_root(root, O_PATH);
	if (rfd < 0)
		return mig__files_err_io(errno);
	int rc = 0;
	int sfd = mig__files_beneath_open(rfd, MIG__STAGING_DIR, O_PATH | O_DIRECTORY, 0);
	if (sfd < 0) {
		if (errno != ENOENT)
			rc = mig__files_err_io(errno);
	} else {
		char tmp[MIG__MID_LEN + 8];
		snprintf(tmp, sizeof(tmp), "%s.tmp", mid);
		if (mig__files_remove_tree(sfd, mid) < 0 || mig__files_remove_tree(sfd, tmp) < 0)
			rc = mig__files_err_io(errno);
		mig__files_close_keep(sfd);
	}
	mig__files_close_keep(rfd);
	return rc;
}

int mig__files_remove_user(const char *root, const char *user)
{
	if (!mig__files_root_ok(root) || !mig__files_user_ok(user))
		return mig__files_err_inval();
	int rfd = mig__files_open_root(root, O_PATH);
	if (rfd < 0)
		return mig__files_err_io(errno);
	int rc = mig__files_remove_tree(rfd, user) < 0 ? mig__files_err_io(errno) : 0;
	mig__files_close_keep(rfd);
	return rc;
}

/* ---------------------------------------------------------------- departed-user cache */

int mig__files_cache_put(const char *root, const char *user)
{
	if (!mig__files_root_ok(root) || !mig__files_user_ok(user))
		return mig__files_err_inval();
	int rfd = mig__files_open_root(root, O_PATH);
	if (rfd < 0)
		return mig__files_err_io(errno);
	int rc = 0, cfd = -1;
	struct stat st;
	if (fstatat(rfd, user, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		rc = errno == ENOENT ? 0 : mig__files_err_io(errno);
		goto out;
	}
	if (!S_ISDIR(st.st_mode)) {
		rc = mig__files_err_inval();
		goto out;
	}
	cfd = mig__files_open_dirs(rfd, MIG__CACHE_DIR, true);
	if (cfd < 0) {
		rc = mig__files_err_io(errno);
		goto out;
	}
	/* An older copy of this user goes first; the new one replaces it. */
	if (mig__files_remove_tree(cfd, user) < 0 || renameat(rfd, user, cfd, user) < 0)
		rc = mig__files_err_io(errno);
	/* The directory's mtime orders the cache for trimming. */
	utimensat(cfd, user, NULL, AT_SYMLINK_NOFOLLOW);
out:
	mig__files_close_keep(cfd);
	mig__files_close_keep(rfd);
	return rc;
}

struct cached {
	char *user;
	uint64_t bytes;
	int64_t mtime_ns;
};

static int cached_cmp(const void *a, const void *b)
{
	const struct cached *x = a, *y = b;
	return x->mtime_ns < y->mtime_ns ? -1 : x->mtime_ns > y->mtime_ns;
}

int mig__files_cache_trim(const char *root, uint64_t max_bytes)
{
	char croot[PATH_MAX];
	if (!mig__files_root_ok(root) ||
	    snprintf(croot, sizeof(croot), "%s/%s", root, MIG__CACHE_DIR) >= (int)sizeof(croot))
		return mig__files_err_inval();
	int cfd = open(croot, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (cfd < 0)
		return errno == ENOENT ? 0 : mig__files_err_io(errno);
	DIR *d = fdopendir(cfd);
	if (!d) {
		close(cfd);
		return mig__files_err_io(errno);
	}
	struct cached *list = NULL;
	size_t n = 0, cap = 0;
	uint64_t total = 0;
	int rc = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		struct stat st;
		if (mig__files_dot_or_dotdot(de->d_name) || !mig__files_user_ok(de->d_name) ||
		    fstatat(dirfd(d), de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0 || !S_ISDIR(st.st_mode))
			continue;
		mig__file_list fl = {0};
		char why[128];
		uint64_t bytes = 0;
		if (mig__files_scan(croot, de->d_name, &fl, why, sizeof(why)) == 0)
			for (size_t i = 0; i < fl.count; i++)
				bytes += fl.entries[i].size;
		mig__file_list_free(&fl);
		if (n == cap) {
			cap = cap ? 2 * cap : 16;
			struct cached *p = mig__realloc(list, cap * sizeof(*p));
			if (!p) {
				rc = MIG_ENOMEM;
				break;
			}
			list = p;
		}
		list[n].user = mig__strdup(de->d_name);
		if (!list[n].user) {
			rc = MIG_ENOMEM;
			break;
		}
		list[n].bytes = bytes;
		list[n].mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
		total += bytes;
		n++;
	}
	if (!rc && list)
		qsort(list, n, sizeof(*list), cached_cmp);
	for (size_t i = 0; !rc && i < n && total > max_bytes; i++) {
		if (mig__files_remove_tree(dirfd(d), list[i].user) == 0)
			total -= list[i].bytes;
	}
	for (size_t i = 0; i < n; i++)
		mig__free(list[i].user);
	mig__free(list);
	closedir(d);
	return rc;
}
