/* A migration's incoming copy under ROOT/.mig-staging/<mid>: staged files
 * (new, replaced by a round's patch output, linked or copied from the
 * user's folder, unlinked), making them durable (per file during the
 * rounds, or the whole tree at install) and the atomic install at COMMIT.
 * Patch output is written under <mid>.tmp first. Opens go through the
 * confined opens of files.c (files_int.h); removing a staged folder is
 * files_remove.c's. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "files_int.h"

/* ---------------------------------------------------------------- staged names */

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

/* ---------------------------------------------------------------- staging */

/* Opens the root and the (created) staging directory holding rel:
 * *rfd the root (O_PATH), *pfd the parent, *base rel's last component. */
static int staging_parent(const char *root, const char *mid, const char *rel, bool create, int *rfd,
			  int *pfd, const char **base)
{
	char prefix[PBUF], parent[PBUF];
	*rfd = *pfd = -1;
	if (mig__files_join2(prefix, sizeof(prefix), MIG__STAGING_DIR, mid) < 0 ||
	    parent_path(parent, sizeof(parent), prefix, rel, base) < 0)
		return -1;
	*rfd = mig__files_open_root(root, O_PATH);
	if (*rfd < 0)
		return -1;
	*pfd = mig__files_open_dirs(*rfd, parent, create);
	if (*pfd < 0) {
		mig__files_close_keep(*rfd);
		*rfd = -1;
		return -1;
	}
	return 0;
}

static void close_pair(int a, int b)
{
	mig__files_close_keep(a);
	mig__files_close_keep(b);
}

/* Creates `rel` (its folders too) under the staging folder `dir` of `root`
 * for writing: a new inode, never O_TRUNC of the old one, since a file
 * staged by mig__files_stage_existing is a hard link to the user's live
 * file. An fd or a negative MIG_E*. */
static int create_staged(const char *root, const char *dir, const char *rel)
{
	int rfd, pfd;
	const char *base;
	if (staging_parent(root, dir, rel, true, &rfd, &pfd, &base) < 0)
		return mig__files_err_of(errno);
	int fd = -1;
	if (clear_name(pfd, base) == 0)
		fd = mig__files_beneath_open(pfd, base, O_CREAT | O_EXCL | O_WRONLY | O_NOCTTY,
					     0600);
	int e = errno;
	close_pair(pfd, rfd);
	return fd >= 0 ? fd : mig__files_err_of(e);
}

int mig__files_open_staging(const char *root, const char *mid, const char *rel)
{
	if (!mig__files_root_ok(root) || !mig__valid_mid(mid) || !staged_path_ok(rel))
		return mig__files_err_inval();
	return create_staged(root, mid, rel);
}

/* Renames the staged file src_rel of the staging folder src_dir to
 * staging/<mid>/rel, making rel's folders; with must_be_regular anything
 * but a regular file is refused (EINVAL). */
static int rename_into_staged(const char *root, const char *src_dir, const char *src_rel,
			      bool must_be_regular, const char *mid, const char *rel)
{
	int rfd, tpfd, pfd = -1, rc = 0;
	const char *tbase, *base;
	if (staging_parent(root, src_dir, src_rel, false, &rfd, &tpfd, &tbase) < 0)
		return mig__files_err_of(errno);
	char prefix[PBUF], parent[PBUF];
	struct stat st;
	if (must_be_regular) {
		if (fstatat(tpfd, tbase, &st, AT_SYMLINK_NOFOLLOW) < 0)
			goto fail;
		if (!S_ISREG(st.st_mode)) {
			errno = EINVAL;
			goto fail;
		}
	}
	if (mig__files_join2(prefix, sizeof(prefix), MIG__STAGING_DIR, mid) < 0 ||
	    parent_path(parent, sizeof(parent), prefix, rel, &base) < 0)
		goto fail;
	pfd = mig__files_open_dirs(rfd, parent, true);
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
	rc = mig__files_err_of(errno);
out:
	mig__files_close_keep(pfd);
	close_pair(tpfd, rfd);
	return rc;
}

int mig__files_staging_replace(const char *root, const char *mid, const char *tmp_rel,
			       const char *rel)
{
	if (!mig__files_root_ok(root) || !mig__valid_mid(mid) || !staged_path_ok(tmp_rel) ||
	    !staged_path_ok(rel))
		return mig__files_err_inval();
	return rename_into_staged(root, mid, tmp_rel, true, mid, rel);
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
	if (!mig__files_root_ok(root) || !mig__files_user_ok(user) || !mig__valid_mid(mid) ||
	    !staged_path_ok(rel) || mig__files_join2(upath, sizeof(upath), user, rel) < 0 ||
	    parent_path(uparent, sizeof(uparent), user, rel, &ubase) < 0)
		return mig__files_err_inval();
	int rfd, pfd, src = -1, spfd = -1, dst = -1, rc = 0;
	const char *base;
	if (staging_parent(root, mid, rel, true, &rfd, &pfd, &base) < 0)
		return mig__files_err_of(errno);
	struct stat sst, lst;
	src = mig__files_open_regular(rfd, upath, O_RDONLY);
	if (src < 0 || fstat(src, &sst) < 0)
		goto fail;
	spfd = mig__files_beneath_open(rfd, uparent, O_PATH | O_DIRECTORY, 0);
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
	dst = mig__files_beneath_open(pfd, base, O_CREAT | O_EXCL | O_WRONLY | O_NOCTTY, 0600);
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
	rc = mig__files_err_of(errno);
out:
	mig__files_close_keep(dst);
	mig__files_close_keep(src);
	mig__files_close_keep(spfd);
	close_pair(pfd, rfd);
	return rc;
}

int mig__files_staging_unlink(const char *root, const char *mid, const char *rel)
{
	if (!mig__files_root_ok(root) || !mig__valid_mid(mid) || !mig__path_valid(rel))
		return mig__files_err_inval();
	int rfd, pfd;
	const char *base;
	if (staging_parent(root, mid, rel, false, &rfd, &pfd, &base) < 0)
		return errno == ENOENT ? 0 : mig__files_err_of(errno);
	int rc = 0;
	if (unlinkat(pfd, base, 0) < 0 && errno != ENOENT)
		rc = mig__files_err_of(errno);
	close(pfd);
	if (rc) {
		mig__files_close_keep(rfd);
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
		int dfd = mig__files_open_dirs(rfd, parent, false);
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

/* ---------------------------------------------------------------- install */

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
		mig__files_close_keep(fd);
		return -1;
	}
	int rc = 0;
	struct dirent *de;
	for (;;) {
		errno = 0;
		if (!(de = readdir(d)))
			break;
		if (mig__files_dot_or_dotdot(de->d_name))
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
				mig__files_close_keep(cfd);
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
	int rc = fsync(fd) < 0 ? mig__files_err_io(errno) : 0;
	close(fd);
	return rc;
}

int mig__files_staging_sync_dirs(const char *root, const char *mid)
{
	if (!mig__files_root_ok(root) || !mig__valid_mid(mid))
		return mig__files_err_inval();
	int rfd = mig__files_open_root(root, O_PATH);
	if (rfd < 0)
		return mig__files_err_io(errno);
	int rc = 0;
	int sfd = mig__files_beneath_open(rfd, MIG__STAGING_DIR, O_PATH | O_DIRECTORY, 0);
	int mfd = sfd < 0 ? -1 : mig__files_beneath_open(sfd, mid, O_RDONLY | O_DIRECTORY, 0);
	if (mfd < 0) {
		/* Nothing staged: nothing to make durable. */
		if (errno != ENOENT)
			rc = mig__files_err_io(errno);
	} else if (sync_tree(mfd, 1, false, false) < 0) {
		rc = mig__files_err_io(errno);
	}
	mig__files_close_keep(sfd);
	mig__files_close_keep(rfd);
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
	if (!mig__files_root_ok(root) || !mig__files_user_ok(user) || !mig__valid_mid(mid))
		return mig__files_err_inval();
	int rfd = -1, sfd = -1, mfd = -1, rc = 0;
	bool exchanged = false;
	struct stat st;

	rfd = mig__files_open_root(root, O_RDONLY);
	if (rfd < 0)
		goto fail;
	mfd = mig__files_open_dirs(rfd, MIG__STAGING_DIR, true); /* O_PATH: only to create it */
	if (mfd < 0)
		goto fail;
	close(mfd);
	sfd = mig__files_beneath_open(rfd, MIG__STAGING_DIR, O_RDONLY | O_DIRECTORY, 0);
	if (sfd < 0)
		goto fail;
	/* Nothing staged (a user without files) still installs an empty folder. */
	if (mkdirat(sfd, mid, 0700) < 0 && errno != EEXIST)
		goto fail;
	/* Durability: every staged byte and name is on disk before the rename
	 * makes it visible, so a crash never shows a half-written file (with
	 * synced, the caller made sure of it). */
	for (int pass = 0; pass < 2 && !synced; pass++) {
		mfd = mig__files_beneath_open(sfd, mid, O_RDONLY | O_DIRECTORY, 0);
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
		rc = mig__files_err_io(errno);
	if (exchanged) {
		int e = errno;
		/* the old folder; leftovers go with staging_remove */
		mig__files_remove_tree(sfd, mid);
		errno = e;
	}
	goto out;
fail:
	rc = mig__files_err_io(errno);
out:
	mig__files_close_keep(sfd);
	mig__files_close_keep(rfd);
	return rc;
}

/* ---------------------------------------------------------------- patch output, tails */

static bool single_component(const char *name)
{
	return mig__path_valid(name) && !strchr(name, '/');
}

int mig__files_open_staging_tmp(const char *root, const char *mid, const char *name)
{
	if (!mig__files_root_ok(root) || !mig__valid_mid(mid) || !single_component(name))
		return mig__files_err_inval();
	char tmp[MIG__MID_LEN + 8];
	snprintf(tmp, sizeof(tmp), "%s.tmp", mid);
	return create_staged(root, tmp, name);
}

int mig__files_staging_commit_tmp(const char *root, const char *mid, const char *name,
				  const char *rel)
{
	if (!mig__files_root_ok(root) || !mig__valid_mid(mid) || !single_component(name) ||
	    !staged_path_ok(rel))
		return mig__files_err_inval();
	char tmp[MIG__MID_LEN + 8];
	snprintf(tmp, sizeof(tmp), "%s.tmp", mid);
	return rename_into_staged(root, tmp, name, false, mid, rel);
}

int mig__files_open_staging_append(const char *root, const char *mid, const char *rel)
{
	if (!mig__files_root_ok(root) || !mig__valid_mid(mid) || !staged_path_ok(rel))
		return mig__files_err_inval();
	int rfd, pfd;
	const char *base;
	if (staging_parent(root, mid, rel, false, &rfd, &pfd, &base) < 0)
		return mig__files_err_of(errno);
	int fd = mig__files_beneath_open(pfd, base, O_WRONLY | O_NOCTTY, 0);
	int e = errno;
	struct stat st;
	if (fd >= 0 && (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode))) {
		close(fd);
		fd = -1;
		e = EINVAL;
	}
	close_pair(pfd, rfd);
	return fd >= 0 ? fd : mig__files_err_of(e);
}
