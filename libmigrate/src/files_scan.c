/* Scanning a user's folder into the sorted list of its regular files (the
 * manifest a source sends), refusing what is not moved: symlinks, special
 * files, reserved or invalid names, too deep or too many. Opens go through
 * the confined opens of files.c (files_int.h). */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "files_int.h"

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
	return mig__files_err_io(e);
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
		if (mig__files_dot_or_dotdot(name))
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
			int cfd =
				mig__files_beneath_open(dirfd(d), name, O_RDONLY | O_DIRECTORY, 0);
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
		return mig__files_err_inval();
	out->entries = NULL;
	out->count = 0;
	if (!mig__files_root_ok(root) || !mig__files_user_ok(user)) {
		if (why && why_len)
			snprintf(why, why_len, "invalid root or user id");
		return mig__files_err_inval();
	}
	scan_ctx *c = mig__calloc(1, sizeof(*c));
	if (!c)
		return mig__files_err_io(ENOMEM);
	c->user = user;
	c->why = why;
	c->why_len = why_len;

	int rc = 0;
	int rfd = mig__files_open_root(root, O_PATH);
	if (rfd < 0) {
		int e = errno;
		if (why && why_len) {
			char buf[128];
			snprintf(why, why_len, "%s: %s", root, strerror_r(e, buf, sizeof(buf)));
		}
		rc = mig__files_err_io(e);
		goto done;
	}
	int ufd = mig__files_beneath_open(rfd, user, O_RDONLY | O_DIRECTORY, 0);
	int e = errno;
	close(rfd);
	if (ufd < 0) {
		if (e == ENOENT)
			rc = 0;
		else if (e == ELOOP)
			rc = scan_refuse(c, mig__files_err_of(e), NULL, "symlinks are not moved");
		else if (e == ENOTDIR)
			rc = scan_refuse(c, mig__files_err_of(e), NULL, "not a directory");
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
