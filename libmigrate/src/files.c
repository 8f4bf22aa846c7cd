/* File state on disk: path rules, scanning a user's folder, digests,
 * staging and the atomic install.
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
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "files.h"

#define FILES_MAX_DEPTH 64        /* components in a scanned or staged path */
#define FILES_CHUNK (256u * 1024) /* read size for digests and copies */
#define FILES_FD_DEPTH 32         /* removal holds a descriptor per level up to here */
#define FILES_RESERVED ".mig-"
#define FILES_RESERVED_LEN (sizeof(FILES_RESERVED) - 1)

/* "<.mig-staging>/<mid or user>/<rel>" always fits. */
#define PBUF (sizeof(MIG__STAGING_DIR) + MIG__USER_MAX + MIG__PATH_MAX + 8)

#ifndef SYS_openat2
#define SYS_openat2 437
#endif

/* ---------------------------------------------------------------- errors */

static int err_of(int e)
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
static int err_io(int e)
{
	errno = e;
	return e == ENOMEM ? MIG_ENOMEM : MIG_EIO;
}

static int err_inval(void)
{
	errno = EINVAL;
	return MIG_EINVAL;
}

static void close_keep(int fd)
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
static bool user_ok(const char *user)
{
	return mig__valid_user(user) && !strchr(user, '/') && strcmp(user, ".") != 0 &&
	       strcmp(user, "..") != 0 && strncmp(user, FILES_RESERVED, FILES_RESERVED_LEN) != 0;
}

static bool root_ok(const char *root)
{
	return root && root[0];
}

static size_t path_depth(const char *rel)
{
	size_t d = 1;
	for (; *rel; rel++)
		d += *rel == '/';
	return d;
}

/* A path to stage: valid and no deeper than a scan would produce. */
static bool staged_path_ok(const char *rel)
{
	return mig__path_valid(rel) && path_depth(rel) <= FILES_MAX_DEPTH;
}

/* "<prefix>[/<directory part of rel>]" into buf; *base = rel's last component. */
static int parent_path(char *buf, size_t size, const char *prefix, const char *rel,
		       const char **base)
{
	const char *slash = strrchr(rel, '/');
	int n;
	*base = slash ? slash + 1 : rel;
	if (slash)
		n = snprintf(buf, size, "%s/%.*s", prefix, (int)(slash - rel), rel);
	else
		n = snprintf(buf, size, "%s", prefix);
	if (n < 0 || (size_t)n >= size) {
		errno = ENAMETOOLONG;
		return -1;
	}
	return 0;
}

static int join2(char *buf, size_t size, const char *a, const char *b)
{
	int n = snprintf(buf, size, "%s/%s", a, b);
	if (n < 0 || (size_t)n >= size) {
		errno = ENAMETOOLONG;
		return -1;
	}
	return 0;
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
		close_keep(owned);
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
	close_keep(owned);
	return fd;
fail:
	close_keep(owned);
	return -1;
}

/* Opens `path` relative to dirfd, confined beneath it, following no
 * symlink in any component. Returns an fd or -1 with errno (ELOOP for a
 * symlink in the way, EXDEV for an escape). */
static int beneath_open(int dirfd, const char *path, int flags, mode_t mode)
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
static int open_dirs(int base, const char *path, bool create)
{
	int fd = beneath_open(base, path, O_PATH | O_DIRECTORY, 0);
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
		fd = beneath_open(cur, c, O_PATH | O_DIRECTORY, 0);
		if (fd < 0)
			goto fail;
		close_keep(owned);
		cur = owned = fd;
	}
	return owned;
fail:
	close_keep(owned);
	return -1;
}

/* Opens a regular file (never blocking on a FIFO); EINVAL for anything else. */
static int open_regular(int dirfd, const char *path, int flags)
{
	int fd = beneath_open(dirfd, path, flags | O_NONBLOCK | O_NOCTTY, 0);
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
	close_keep(fd);
	return -1;
}

static int open_root(const char *root, int flags)
{
	return open(root, flags | O_DIRECTORY | O_CLOEXEC);
}

/* Clears a name so a new file can take it: unlinks a file or a symlink,
 * removes an empty directory; EISDIR for a directory with contents. */
static int clear_name(int dirfd, const char *name)
{
	if (unlinkat(dirfd, name, 0) == 0 || errno == ENOENT)
		return 0;
	if (errno != EISDIR)
		return -1;
	if (unlinkat(dirfd, name, AT_REMOVEDIR) == 0 || errno == ENOENT)
		return 0;
	if (errno == ENOTEMPTY || errno == EEXIST)
		errno = EISDIR;
	return -1;
}

/* ---------------------------------------------------------------- removal */

/* The type of a directory entry, from d_type or, when the filesystem does
 * not give it, fstatat without following. DT_UNKNOWN if it vanished. */
static unsigned char entry_type(int dirfd, const struct dirent *de)
{
	if (de->d_type != DT_UNKNOWN)
		return de->d_type;
	struct stat st;
	if (fstatat(dirfd, de->d_name, &st, AT_SYMLINK_NOFOLLOW) < 0)
		return DT_UNKNOWN;
	return S_ISDIR(st.st_mode)   ? DT_DIR
	       : S_ISREG(st.st_mode) ? DT_REG
	       : S_ISLNK(st.st_mode) ? DT_LNK
				     : DT_FIFO;
}

static bool dot_or_dotdot(const char *n)
{
	return n[0] == '.' && (!n[1] || (n[1] == '.' && !n[2]));
}

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
		close_keep(fd);
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
			close_keep(dfd);
			goto out;
		}
		char *sub = NULL;
		struct dirent *de;
		for (;;) {
			errno = 0;
			if (!(de = readdir(d)))
				break;
			if (dot_or_dotdot(de->d_name))
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
					close_keep(up);
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
	close_keep(cur);
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
		close_keep(fd);
		return -1;
	}
	int rc = 0;
	struct dirent *de;
	for (;;) {
		errno = 0;
		if (!(de = readdir(d)))
			break;
		const char *name = de->d_name;
		if (dot_or_dotdot(name))
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
static int remove_tree(int dirfd, const char *name)
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
			close_keep(fd);
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

/* ---------------------------------------------------------------- scan */

void mig__file_list_free(mig__file_list *l)
{
	if (!l)
		return;
	for (size_t i = 0; i < l->count; i++)
		mig__free(l->entries[i].path);
	mig__free(l->entries);
	l->entries = NULL;
	l->count = 0;
}

typedef struct scan_ctx {
	mig__file_list list;
	size_t cap;
	const char *user;
	char *why;
	size_t why_len;
	char path[MIG__PATH_MAX + 1]; /* of the directory being read, "" at the top */
	size_t len;
	int err; /* errno of a failure */
} scan_ctx;

/* Writes "<user>/<path>: <what>" into why, control characters as '?'. */
static int scan_refuse(scan_ctx *c, int rc, const char *name, const char *what)
{
	c->err = EINVAL;
	if (!c->why || !c->why_len)
		return rc;
	snprintf(c->why, c->why_len, "%s%s%s%s%s: %s", c->user, c->len ? "/" : "", c->path,
		 name ? "/" : "", name ? name : "", what);
	for (char *p = c->why; *p; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f)
			*p = '?';
	return rc;
}

static int scan_errno(scan_ctx *c, const char *name, int e)
{
	char buf[128];
	const char *msg = strerror_r(e, buf, sizeof(buf));
	scan_refuse(c, 0, name, msg);
	c->err = e;
	return err_io(e);
}

static int scan_add(scan_ctx *c, const struct stat *st)
{
	if (c->list.count >= MIG__MAX_FILES)
		return MIG_EINVAL;
	if (c->list.count == c->cap) {
		size_t ncap = c->cap ? 2 * c->cap : 64;
		mig__file_entry *e = mig__realloc(c->list.entries, ncap * sizeof(*e));
		if (!e) {
			c->err = ENOMEM;
			return MIG_ENOMEM;
		}
		c->list.entries = e;
		c->cap = ncap;
	}
	char *p = mig__strndup(c->path, c->len);
	if (!p) {
		c->err = ENOMEM;
		return MIG_ENOMEM;
	}
	c->list.entries[c->list.count++] = (mig__file_entry){
		.path = p,
		.size = (uint64_t)st->st_size,
		.mtime_ns = (int64_t)st->st_mtim.tv_sec * 1000000000 + st->st_mtim.tv_nsec,
		.ino = (uint64_t)st->st_ino,
		.dev = (uint64_t)st->st_dev,
		.mode = (uint32_t)(st->st_mode & 0777),
	};
	return 0;
}

/* Reads the directory open on fd (taken over), c->path naming it. */
static int scan_dir(scan_ctx *c, int fd, size_t depth)
{
	DIR *d = fdopendir(fd);
	if (!d) {
		int e = errno;
		close(fd);
		return scan_errno(c, NULL, e);
	}
	size_t base = c->len;
	int rc = 0;
	for (;;) {
		errno = 0;
		struct dirent *de = readdir(d);
		if (!de) {
			if (errno)
				rc = scan_errno(c, NULL, errno);
			break;
		}
		const char *name = de->d_name;
		if (dot_or_dotdot(name))
			continue;
		size_t nlen = strlen(name);
		if (base + (base ? 1 : 0) + nlen > MIG__PATH_MAX) {
			rc = scan_refuse(c, MIG_EINVAL, name, "path too long");
			break;
		}
		if (depth + 1 > FILES_MAX_DEPTH) {
			rc = scan_refuse(c, MIG_EINVAL, name, "nested too deep");
			break;
		}
		if (!strncmp(name, FILES_RESERVED, FILES_RESERVED_LEN)) {
			rc = scan_refuse(c, MIG_EINVAL, name,
					 "names starting with .mig- are reserved");
			break;
		}
		struct stat st;
		if (fstatat(dirfd(d), name, &st, AT_SYMLINK_NOFOLLOW) < 0) {
			if (errno == ENOENT) /* deleted since readdir */
				continue;
			rc = scan_errno(c, name, errno);
			break;
		}
		if (S_ISLNK(st.st_mode)) {
			rc = scan_refuse(c, MIG_EINVAL, name, "symlinks are not moved");
			break;
		}
		if (!S_ISDIR(st.st_mode) && !S_ISREG(st.st_mode)) {
			rc = scan_refuse(c, MIG_EINVAL, name,
					 S_ISFIFO(st.st_mode)   ? "FIFOs are not moved"
					 : S_ISSOCK(st.st_mode) ? "sockets are not moved"
								: "device files are not moved");
			break;
		}
		if (base)
			c->path[c->len++] = '/';
		memcpy(c->path + c->len, name, nlen + 1);
		c->len += nlen;
		if (!mig__path_valid(c->path)) {
			c->len = base;
			c->path[base] = '\0';
			rc = scan_refuse(c, MIG_EINVAL, name, "not a valid file name");
			break;
		}
		if (S_ISREG(st.st_mode)) {
			rc = scan_add(c, &st);
			if (rc == MIG_EINVAL) {
				c->err = EINVAL;
				if (c->why && c->why_len)
					snprintf(c->why, c->why_len, "%s: more than %d files",
						 c->user, MIG__MAX_FILES);
			}
		} else {
			int cfd = beneath_open(dirfd(d), name, O_RDONLY | O_DIRECTORY, 0);
			if (cfd >= 0)
				rc = scan_dir(c, cfd, depth + 1);
			else if (errno != ENOENT)
				rc = errno == ELOOP ? scan_refuse(c, MIG_EINVAL, NULL,
								  "symlinks are not moved")
						    : scan_errno(c, NULL, errno);
		}
		c->len = base;
		c->path[base] = '\0';
		if (rc)
			break;
	}
	closedir(d);
	return rc;
}

static int entry_cmp(const void *a, const void *b)
{
	return strcmp(((const mig__file_entry *)a)->path, ((const mig__file_entry *)b)->path);
}

int mig__files_scan(const char *root, const char *user, mig__file_list *out, char *why,
		    size_t why_len)
{
	if (why && why_len)
		why[0] = '\0';
	if (!out)
		return err_inval();
	out->entries = NULL;
	out->count = 0;
	if (!root_ok(root) || !user_ok(user)) {
		if (why && why_len)
			snprintf(why, why_len, "invalid root or user id");
		return err_inval();
	}
	scan_ctx *c = mig__calloc(1, sizeof(*c));
	if (!c)
		return err_io(ENOMEM);
	c->user = user;
	c->why = why;
	c->why_len = why_len;

	int rc = 0;
	int rfd = open_root(root, O_PATH);
	if (rfd < 0) {
		int e = errno;
		if (why && why_len) {
			char buf[128];
			snprintf(why, why_len, "%s: %s", root, strerror_r(e, buf, sizeof(buf)));
		}
		rc = err_io(e);
		goto done;
	}
	int ufd = beneath_open(rfd, user, O_RDONLY | O_DIRECTORY, 0);
	int e = errno;
	close(rfd);
	if (ufd < 0) {
		if (e == ENOENT)
			rc = 0;
		else if (e == ELOOP)
			rc = scan_refuse(c, err_of(e), NULL, "symlinks are not moved");
		else if (e == ENOTDIR)
			rc = scan_refuse(c, err_of(e), NULL, "not a directory");
		else
			rc = scan_errno(c, NULL, e);
		goto done;
	}
	rc = scan_dir(c, ufd, 0);
done:
	if (rc) {
		int keep = c->err ? c->err : errno;
		mig__file_list_free(&c->list);
		errno = keep;
	} else {
		if (c->list.count > 1)
			qsort(c->list.entries, c->list.count, sizeof(*c->list.entries), entry_cmp);
		*out = c->list;
	}
	mig__free(c);
	return rc;
}

/* ---------------------------------------------------------------- reading */

int mig__files_open_read(const char *root, const char *user, const char *rel)
{
	char path[PBUF];
	if (!root_ok(root) || !user_ok(user) || !mig__path_valid(rel) ||
	    join2(path, sizeof(path), user, rel) < 0)
		return err_inval();
	int rfd = open_root(root, O_PATH);
	if (rfd < 0)
		return err_io(errno);
	int fd = open_regular(rfd, path, O_RDONLY);
	int e = errno;
	close(rfd);
	return fd >= 0 ? fd : err_of(e);
}

int mig__files_open_staging_read(const char *root, const char *mid, const char *rel)
{
	char path[PBUF];
	if (!root_ok(root) || !mig__valid_mid(mid) || !mig__path_valid(rel) ||
	    snprintf(path, sizeof(path), "%s/%s/%s", MIG__STAGING_DIR, mid, rel) >=
		    (int)sizeof(path))
		return err_inval();
	int rfd = open_root(root, O_PATH);
	if (rfd < 0)
		return err_io(errno);
	int fd = open_regular(rfd, path, O_RDONLY);
	int e = errno;
	close(rfd);
	return fd >= 0 ? fd : err_of(e);
}

int mig__files_sha256_fd(int fd, uint8_t out[32])
{
	if (fd < 0 || !out)
		return err_inval();
	uint8_t *buf = mig__malloc(FILES_CHUNK);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	int rc = 0;
	if (!buf || !ctx || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1) {
		rc = err_io(ENOMEM);
		goto out;
	}
	for (off_t off = 0;;) {
		ssize_t n = pread(fd, buf, FILES_CHUNK, off);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			rc = err_io(errno);
			goto out;
		}
		if (n == 0)
			break;
		if (EVP_DigestUpdate(ctx, buf, (size_t)n) != 1) {
			rc = err_io(ENOMEM);
			goto out;
		}
		off += n;
	}
	unsigned len = 0;
	if (EVP_DigestFinal_ex(ctx, out, &len) != 1 || len != 32)
		rc = err_io(ENOMEM);
out:
	EVP_MD_CTX_free(ctx);
	mig__free(buf);
	return rc;
}

/* ---------------------------------------------------------------- staging */

/* Opens the root and the (created) staging directory holding rel:
 * *rfd the root (O_PATH), *pfd the parent, *base rel's last component. */
static int staging_parent(const char *root, const char *mid, const char *rel, bool create, int *rfd,
			  int *pfd, const char **base)
{
	char prefix[PBUF], parent[PBUF];
	*rfd = *pfd = -1;
	if (join2(prefix, sizeof(prefix), MIG__STAGING_DIR, mid) < 0 ||
	    parent_path(parent, sizeof(parent), prefix, rel, base) < 0)
		return -1;
	*rfd = open_root(root, O_PATH);
	if (*rfd < 0)
		return -1;
	*pfd = open_dirs(*rfd, parent, create);
	if (*pfd < 0) {
		close_keep(*rfd);
		*rfd = -1;
		return -1;
	}
	return 0;
}

static void close_pair(int a, int b)
{
	close_keep(a);
	close_keep(b);
}

int mig__files_open_staging(const char *root, const char *mid, const char *rel)
{
	if (!root_ok(root) || !mig__valid_mid(mid) || !staged_path_ok(rel))
		return err_inval();
	int rfd, pfd;
	const char *base;
	if (staging_parent(root, mid, rel, true, &rfd, &pfd, &base) < 0)
		return err_of(errno);
	/* A new inode, never O_TRUNC of the old one: a file staged by
	 * mig__files_stage_existing is a hard link to the user's live file. */
	int fd = -1;
	if (clear_name(pfd, base) == 0)
		fd = beneath_open(pfd, base, O_CREAT | O_EXCL | O_WRONLY | O_NOCTTY, 0600);
	int e = errno;
	close_pair(pfd, rfd);
	return fd >= 0 ? fd : err_of(e);
}

int mig__files_staging_replace(const char *root, const char *mid, const char *tmp_rel,
			       const char *rel)
{
	if (!root_ok(root) || !mig__valid_mid(mid) || !staged_path_ok(tmp_rel) ||
	    !staged_path_ok(rel))
		return err_inval();
	int rfd, tpfd, pfd = -1, rc = 0;
	const char *tbase, *base;
	if (staging_parent(root, mid, tmp_rel, false, &rfd, &tpfd, &tbase) < 0)
		return err_of(errno);
	char prefix[PBUF], parent[PBUF];
	struct stat st;
	if (fstatat(tpfd, tbase, &st, AT_SYMLINK_NOFOLLOW) < 0)
		goto fail;
	if (!S_ISREG(st.st_mode)) {
		errno = EINVAL;
		goto fail;
	}
	if (join2(prefix, sizeof(prefix), MIG__STAGING_DIR, mid) < 0 ||
	    parent_path(parent, sizeof(parent), prefix, rel, &base) < 0)
		goto fail;
	pfd = open_dirs(rfd, parent, true);
	if (pfd < 0)
		goto fail;
	if (renameat(tpfd, tbase, pfd, base) < 0) {
		/* An empty directory in the way (left by an old layout): clear it. */
		if (errno != EISDIR || clear_name(pfd, base) < 0 ||
		    renameat(tpfd, tbase, pfd, base) < 0)
			goto fail;
	}
	goto out;
fail:
	rc = err_of(errno);
out:
	close_keep(pfd);
	close_pair(tpfd, rfd);
	return rc;
}

/* Copies src (from offset 0) to dst: copy_file_range, or read/write where
 * the kernel cannot copy between these files. */
static int copy_fd(int src, int dst)
{
	off_t in = 0, out = 0;
	for (;;) {
		ssize_t n = copy_file_range(src, &in, dst, &out, 1u << 30, 0);
		if (n > 0)
			continue;
		if (n == 0)
			return 0;
		if (errno == EINTR)
			continue;
		if (errno == EXDEV || errno == EINVAL || errno == ENOSYS || errno == EOPNOTSUPP)
			break;
		return -1;
	}
	uint8_t *buf = mig__malloc(FILES_CHUNK);
	if (!buf) {
		errno = ENOMEM;
		return -1;
	}
	int rc = 0;
	for (;;) {
		ssize_t n = pread(src, buf, FILES_CHUNK, in);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0) {
			rc = n < 0 ? -1 : 0;
			break;
		}
		in += n;
		for (ssize_t done = 0; done < n;) {
			ssize_t w = pwrite(dst, buf + done, (size_t)(n - done), out);
			if (w < 0 && errno == EINTR)
				continue;
			if (w <= 0) {
				if (w == 0)
					errno = EIO;
				rc = -1;
				goto out;
			}
			done += w;
			out += w;
		}
	}
out:
	if (rc) {
		int e = errno;
		mig__free(buf);
		errno = e;
	} else {
		mig__free(buf);
	}
	return rc;
}

int mig__files_stage_existing(const char *root, const char *user, const char *mid, const char *rel)
{
	char upath[PBUF], uparent[PBUF];
	const char *ubase;
	if (!root_ok(root) || !user_ok(user) || !mig__valid_mid(mid) || !staged_path_ok(rel) ||
	    join2(upath, sizeof(upath), user, rel) < 0 ||
	    parent_path(uparent, sizeof(uparent), user, rel, &ubase) < 0)
		return err_inval();
	int rfd, pfd, src = -1, spfd = -1, dst = -1, rc = 0;
	const char *base;
	if (staging_parent(root, mid, rel, true, &rfd, &pfd, &base) < 0)
		return err_of(errno);
	struct stat sst, lst;
	src = open_regular(rfd, upath, O_RDONLY);
	if (src < 0 || fstat(src, &sst) < 0)
		goto fail;
	spfd = beneath_open(rfd, uparent, O_PATH | O_DIRECTORY, 0);
	if (spfd < 0 || clear_name(pfd, base) < 0)
		goto fail;
	if (linkat(spfd, ubase, pfd, base, 0) == 0) {
		/* Linked by name: make sure it is the inode checked above. */
		if (fstatat(pfd, base, &lst, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(lst.st_mode) &&
		    lst.st_ino == sst.st_ino && lst.st_dev == sst.st_dev)
			goto out;
		if (unlinkat(pfd, base, 0) < 0)
			goto fail;
	} else if (errno != EXDEV && errno != EPERM && errno != EMLINK) {
		goto fail;
	}
	dst = beneath_open(pfd, base, O_CREAT | O_EXCL | O_WRONLY | O_NOCTTY, 0600);
	if (dst < 0)
		goto fail;
	if (copy_fd(src, dst) < 0) {
		int e = errno;
		unlinkat(pfd, base, 0);
		errno = e;
		goto fail;
	}
	goto out;
fail:
	rc = err_of(errno);
out:
	close_keep(dst);
	close_keep(src);
	close_keep(spfd);
	close_pair(pfd, rfd);
	return rc;
}

int mig__files_staging_unlink(const char *root, const char *mid, const char *rel)
{
	if (!root_ok(root) || !mig__valid_mid(mid) || !mig__path_valid(rel))
		return err_inval();
	int rfd, pfd;
	const char *base;
	if (staging_parent(root, mid, rel, false, &rfd, &pfd, &base) < 0)
		return errno == ENOENT ? 0 : err_of(errno);
	int rc = 0;
	if (unlinkat(pfd, base, 0) < 0 && errno != ENOENT)
		rc = err_of(errno);
	close(pfd);
	if (rc) {
		close_keep(rfd);
		return rc;
	}
	/* Prune directories left empty, up to staging/<mid>: they are not
	 * part of the manifest and would block a file of the same name. */
	char dir[MIG__PATH_MAX + 1], prefix[PBUF], parent[PBUF];
	const char *name;
	snprintf(dir, sizeof(dir), "%s", rel);
	snprintf(prefix, sizeof(prefix), "%s/%s", MIG__STAGING_DIR, mid);
	for (char *slash; (slash = strrchr(dir, '/'));) {
		*slash = '\0';
		if (parent_path(parent, sizeof(parent), prefix, dir, &name) < 0)
			break;
		int dfd = open_dirs(rfd, parent, false);
		if (dfd < 0)
			break;
		int r = unlinkat(dfd, name, AT_REMOVEDIR);
		close(dfd);
		if (r < 0)
			break;
	}
	close(rfd);
	return 0;
}

int mig__files_staging_remove(const char *root, const char *mid)
{
	if (!root_ok(root) || !mig__valid_mid(mid))
		return err_inval();
	int rfd = open_root(root, O_PATH);
	if (rfd < 0)
		return err_io(errno);
	int rc = 0;
	int sfd = beneath_open(rfd, MIG__STAGING_DIR, O_PATH | O_DIRECTORY, 0);
	if (sfd < 0) {
		if (errno != ENOENT)
			rc = err_io(errno);
	} else {
		char tmp[MIG__MID_LEN + 8];
		snprintf(tmp, sizeof(tmp), "%s.tmp", mid);
		if (remove_tree(sfd, mid) < 0 || remove_tree(sfd, tmp) < 0)
			rc = err_io(errno);
		close_keep(sfd);
	}
	close_keep(rfd);
	return rc;
}

int mig__files_remove_user(const char *root, const char *user)
{
	if (!root_ok(root) || !user_ok(user))
		return err_inval();
	int rfd = open_root(root, O_PATH);
	if (rfd < 0)
		return err_io(errno);
	int rc = remove_tree(rfd, user) < 0 ? err_io(errno) : 0;
	close_keep(rfd);
	return rc;
}

/* ---------------------------------------------------------------- install */

/* fsyncs every file and directory below the directory open on fd (taken
 * over), then the directory itself; with start_only, only starts the
 * writeback of the files' data (sync_file_range), so that the fsyncs of a
 * second pass find it under way together and ext4 commits its journal for
 * all of them at once instead of once per file. Without files, regular
 * files are left alone (the caller synced each already) and only the
 * directories are fsynced. Anything but files and directories (nothing we
 * staged) fails the install. */
static int sync_tree(int fd, int depth, bool start_only, bool files)
{
	DIR *d = fdopendir(fd);
	if (!d) {
		close_keep(fd);
		return -1;
	}
	int rc = 0;
	struct dirent *de;
	for (;;) {
		errno = 0;
		if (!(de = readdir(d)))
			break;
		if (dot_or_dotdot(de->d_name))
			continue;
		unsigned char t = entry_type(fd, de);
		int cfd;
		if (t == DT_DIR) {
			if (depth >= FILES_MAX_DEPTH) {
				errno = ELOOP;
				rc = -1;
				break;
			}
			cfd = openat(fd, de->d_name,
				     O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
			if (cfd < 0 || sync_tree(cfd, depth + 1, start_only, files) < 0) {
				rc = -1;
				break;
			}
		} else if (t == DT_REG) {
			if (!files)
				continue;
			cfd = openat(fd, de->d_name,
				     O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY | O_CLOEXEC);
			if (cfd < 0) {
				rc = -1;
				break;
			}
			if (start_only) {
				/* Best effort: errors show in the fsync pass. */
				sync_file_range(cfd, 0, 0, SYNC_FILE_RANGE_WRITE);
			} else if (fsync(cfd) < 0) {
				close_keep(cfd);
				rc = -1;
				break;
			}
			close(cfd);
		} else {
			errno = t == DT_LNK ? ELOOP : EINVAL;
			rc = -1;
			break;
		}
	}
	if (!rc && !de && errno)
		rc = -1;
	if (!rc && !start_only && fsync(fd) < 0)
		rc = -1;
	int e = errno;
	closedir(d);
	errno = e;
	return rc;
}

int mig__files_staging_sync(const char *root, const char *mid, const char *rel)
{
	int fd = mig__files_open_staging_read(root, mid, rel);
	if (fd < 0)
		return fd == MIG_EINVAL ? fd : MIG_EIO;
	int rc = fsync(fd) < 0 ? err_io(errno) : 0;
	close(fd);
	return rc;
}

int mig__files_staging_sync_dirs(const char *root, const char *mid)
{
	if (!root_ok(root) || !mig__valid_mid(mid))
		return err_inval();
	int rfd = open_root(root, O_PATH);
	if (rfd < 0)
		return err_io(errno);
	int rc = 0;
	int sfd = beneath_open(rfd, MIG__STAGING_DIR, O_PATH | O_DIRECTORY, 0);
	int mfd = sfd < 0 ? -1 : beneath_open(sfd, mid, O_RDONLY | O_DIRECTORY, 0);
	if (mfd < 0) {
		/* Nothing staged: nothing to make durable. */
		if (errno != ENOENT)
			rc = err_io(errno);
	} else if (sync_tree(mfd, 1, false, false) < 0) {
		rc = err_io(errno);
	}
	close_keep(sfd);
	close_keep(rfd);
	return rc;
}

static int install(const char *root, const char *user, const char *mid, bool synced);

int mig__files_install(const char *root, const char *user, const char *mid)
{
	return install(root, user, mid, false);
}

int mig__files_install_synced(const char *root, const char *user, const char *mid)
{
	return install(root, user, mid, true);
}

static int install(const char *root, const char *user, const char *mid, bool synced)
{
	if (!root_ok(root) || !user_ok(user) || !mig__valid_mid(mid))
		return err_inval();
	int rfd = -1, sfd = -1, mfd = -1, rc = 0;
	bool exchanged = false;
	struct stat st;

	rfd = open_root(root, O_RDONLY);
	if (rfd < 0)
		goto fail;
	mfd = open_dirs(rfd, MIG__STAGING_DIR, true); /* O_PATH: only to create it */
	if (mfd < 0)
		goto fail;
	close(mfd);
	sfd = beneath_open(rfd, MIG__STAGING_DIR, O_RDONLY | O_DIRECTORY, 0);
	if (sfd < 0)
		goto fail;
	/* Nothing staged (a user without files) still installs an empty folder. */
	if (mkdirat(sfd, mid, 0700) < 0 && errno != EEXIST)
		goto fail;
	/* Durability: every staged byte and name is on disk before the rename
	 * makes it visible, so a crash never shows a half-written file (with
	 * synced, the caller made sure of it). */
	for (int pass = 0; pass < 2 && !synced; pass++) {
		mfd = beneath_open(sfd, mid, O_RDONLY | O_DIRECTORY, 0);
		if (mfd < 0 || sync_tree(mfd, 1, pass == 0, true) < 0)
			goto fail;
	}

	if (fstatat(rfd, user, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		if (errno != ENOENT)
			goto fail;
		if (renameat2(sfd, mid, rfd, user, RENAME_NOREPLACE) < 0) {
			if (errno == EINVAL) { /* filesystem without RENAME_NOREPLACE */
				if (renameat(sfd, mid, rfd, user) < 0)
					goto fail;
			} else if (errno != EEXIST) {
				goto fail;
			} else if (fstatat(rfd, user, &st, AT_SYMLINK_NOFOLLOW) < 0) {
				goto fail;
			} else {
				goto exchange; /* created meanwhile */
			}
		}
		goto synced;
	}
exchange:
	if (!S_ISDIR(st.st_mode)) {
		/* A symlink or file in place of the user's folder is not ours to
		 * replace (and a scan here refuses it too). */
		errno = S_ISLNK(st.st_mode) ? ELOOP : ENOTDIR;
		goto fail;
	}
	if (renameat2(sfd, mid, rfd, user, RENAME_EXCHANGE) < 0)
		goto fail;
	exchanged = true;
synced:
	/* The rename is done; this makes it durable. A failure here reports
	 * MIG_EIO although the new folder is in place. */
	if (fsync(rfd) < 0 || fsync(sfd) < 0)
		rc = err_io(errno);
	if (exchanged) {
		int e = errno;
		remove_tree(sfd, mid); /* the old folder; leftovers go with staging_remove */
		errno = e;
	}
	goto out;
fail:
	rc = err_io(errno);
out:
	close_keep(sfd);
	close_keep(rfd);
	return rc;
}

/* ---------------------------------------------------------------- patch output, tails */

static bool single_component(const char *name)
{
	return mig__path_valid(name) && !strchr(name, '/');
}

int mig__files_open_staging_tmp(const char *root, const char *mid, const char *name)
{
	if (!root_ok(root) || !mig__valid_mid(mid) || !single_component(name))
		return err_inval();
	char tmp[MIG__MID_LEN + 8];
	snprintf(tmp, sizeof(tmp), "%s.tmp", mid);
	int rfd, pfd;
	const char *base;
	if (staging_parent(root, tmp, name, true, &rfd, &pfd, &base) < 0)
		return err_of(errno);
	int fd = -1;
	if (clear_name(pfd, base) == 0)
		fd = beneath_open(pfd, base, O_CREAT | O_EXCL | O_WRONLY | O_NOCTTY, 0600);
	int e = errno;
	close_pair(pfd, rfd);
	return fd >= 0 ? fd : err_of(e);
}

int mig__files_staging_commit_tmp(const char *root, const char *mid, const char *name,
				  const char *rel)
{
	if (!root_ok(root) || !mig__valid_mid(mid) || !single_component(name) ||
	    !staged_path_ok(rel))
		return err_inval();
	char tmp[MIG__MID_LEN + 8];
	snprintf(tmp, sizeof(tmp), "%s.tmp", mid);
	int rfd, tpfd, pfd = -1, rc = 0;
	const char *tbase, *base;
	if (staging_parent(root, tmp, name, false, &rfd, &tpfd, &tbase) < 0)
		return err_of(errno);
	char prefix[PBUF], parent[PBUF];
	if (join2(prefix, sizeof(prefix), MIG__STAGING_DIR, mid) < 0 ||
	    parent_path(parent, sizeof(parent), prefix, rel, &base) < 0)
		goto fail;
	pfd = open_dirs(rfd, parent, true);
	if (pfd < 0)
		goto fail;
	if (renameat(tpfd, tbase, pfd, base) < 0) {
		if (errno != EISDIR || clear_name(pfd, base) < 0 ||
		    renameat(tpfd, tbase, pfd, base) < 0)
			goto fail;
	}
	goto out;
fail:
	rc = err_of(errno);
out:
	close_keep(pfd);
	close_pair(tpfd, rfd);
	return rc;
}

int mig__files_open_staging_append(const char *root, const char *mid, const char *rel)
{
	if (!root_ok(root) || !mig__valid_mid(mid) || !staged_path_ok(rel))
		return err_inval();
	int rfd, pfd;
	const char *base;
	if (staging_parent(root, mid, rel, false, &rfd, &pfd, &base) < 0)
		return err_of(errno);
	int fd = beneath_open(pfd, base, O_WRONLY | O_NOCTTY, 0);
	int e = errno;
	struct stat st;
	if (fd >= 0 && (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))) {
		close(fd);
		fd = -1;
		e = EINVAL;
	}
	close_pair(pfd, rfd);
	return fd >= 0 ? fd : err_of(e);
}

/* ---------------------------------------------------------------- departed-user cache */

int mig__files_cache_put(const char *root, const char *user)
{
	if (!root_ok(root) || !user_ok(user))
		return err_inval();
	int rfd = open_root(root, O_PATH);
	if (rfd < 0)
		return err_io(errno);
	int rc = 0, cfd = -1;
	struct stat st;
	if (fstatat(rfd, user, &st, AT_SYMLINK_NOFOLLOW) < 0) {
		rc = errno == ENOENT ? 0 : err_io(errno);
		goto out;
	}
	if (!S_ISDIR(st.st_mode)) {
		rc = err_inval();
		goto out;
	}
	cfd = open_dirs(rfd, MIG__CACHE_DIR, true);
	if (cfd < 0) {
		rc = err_io(errno);
		goto out;
	}
	/* An older copy of this user goes first; the new one replaces it. */
	if (remove_tree(cfd, user) < 0 || renameat(rfd, user, cfd, user) < 0)
		rc = err_io(errno);
	/* The directory's mtime orders the cache for trimming. */
	utimensat(cfd, user, NULL, AT_SYMLINK_NOFOLLOW);
out:
	close_keep(cfd);
	close_keep(rfd);
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
	if (!root_ok(root) || snprintf(croot, sizeof(croot), "%s/%s", root, MIG__CACHE_DIR) >=
				      (int)sizeof(croot))
		return err_inval();
	int cfd = open(croot, O_RDONLY | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW);
	if (cfd < 0)
		return errno == ENOENT ? 0 : err_io(errno);
	DIR *d = fdopendir(cfd);
	if (!d) {
		close(cfd);
		return err_io(errno);
	}
	struct cached *list = NULL;
	size_t n = 0, cap = 0;
	uint64_t total = 0;
	int rc = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		struct stat st;
		if (dot_or_dotdot(de->d_name) || !user_ok(de->d_name) ||
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
		if (remove_tree(dirfd(d), list[i].user) == 0)
			total -= list[i].bytes;
	}
	for (size_t i = 0; i < n; i++)
		mig__free(list[i].user);
	mig__free(list);
	closedir(d);
	return rc;
}
