/* Private to files.c, files_scan.c, files_stage.c and files_remove.c: the
 * limits, errno mapping, name checks and confined opens they share (all
 * defined in files.c, except mig__files_remove_tree() in files_remove.c).
 *
 * Conventions: the open and remove helpers are syscall-like (-1 and errno);
 * the mig__files_err_*() mappers turn an errno into the MIG_E* a function of
 * files.h returns, leaving errno set to the OS error. All are safe from any
 * thread: they keep no state but the once-set "openat2 is missing" flag. */
#ifndef MIG_FILES_INT_H
#define MIG_FILES_INT_H

#include <sys/types.h>

#include "files.h"

#define FILES_MAX_DEPTH 64        /* components in a scanned or staged path */
#define FILES_CHUNK (256u * 1024) /* read size for digests and copies */
#define FILES_RESERVED ".mig-"
#define FILES_RESERVED_LEN (sizeof(FILES_RESERVED) - 1)

/* "<.mig-staging>/<mid or user>/<rel>" always fits. */
#define PBUF (sizeof(MIG__STAGING_DIR) + MIG__USER_MAX + MIG__PATH_MAX + 8)

/* Sets errno = e and returns its MIG_E*: MIG_ENOMEM, MIG_EINVAL for a path
 * that cannot be followed (symlink, escape, file/directory mismatch, too
 * long, not a regular file), MIG_EIO for the rest. */
int mig__files_err_of(int e);
/* Sets errno = e; MIG_ENOMEM for ENOMEM, else MIG_EIO. */
int mig__files_err_io(int e);
/* Sets errno = EINVAL; returns MIG_EINVAL. */
int mig__files_err_inval(void);
/* close(fd) if fd >= 0, errno unchanged. */
void mig__files_close_keep(int fd);

/* A user id usable as a folder name (no '/', not "." or "..", not
 * reserved). */
bool mig__files_user_ok(const char *user);
/* A non-empty root path. */
bool mig__files_root_ok(const char *root);
/* "a/b" into buf; -1 with ENAMETOOLONG if it does not fit. */
int mig__files_join2(char *buf, size_t size, const char *a, const char *b);
/* A directory entry's "." or "..". */
bool mig__files_dot_or_dotdot(const char *n);

/* Opens `path` relative to dirfd, confined beneath it, following no
 * symlink in any component (O_CLOEXEC added). Returns an fd or -1 with
 * errno (ELOOP for a symlink in the way, EXDEV for an escape). */
int mig__files_beneath_open(int dirfd, const char *path, int flags, mode_t mode);
/* Opens the directory `path` beneath base as O_PATH; with create, makes
 * missing components (mode 0700). Returns an fd or -1 with errno. */
int mig__files_open_dirs(int base, const char *path, bool create);
/* Opens a regular file beneath dirfd (never blocking on a FIFO). Returns
 * an fd, or -1 with errno (EINVAL for anything but a regular file). */
int mig__files_open_regular(int dirfd, const char *path, int flags);
/* Opens the root directory itself (flags | O_DIRECTORY | O_CLOEXEC). */
int mig__files_open_root(const char *root, int flags);

/* Removes `name` of dirfd whatever it is, a directory recursively, never
 * following a symlink nor entering another filesystem. Missing is fine.
 * Returns 0 or -1 with errno. (files_remove.c) */
int mig__files_remove_tree(int dirfd, const char *name);

#endif
