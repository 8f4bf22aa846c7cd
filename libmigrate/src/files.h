/* File-state plumbing on disk: path rules, scanning a user's folder,
 * digests, staging, atomic install. No librsync, no network.
 *
 * Layout of a file domain's root on every engine:
 *   ROOT/<user>/...            the user's files (the app reads and writes here)
 *   ROOT/.mig-staging/<mid>/   a migration's incoming copy, until COMMIT
 * Staging lives under the same root so the install is a rename on one
 * filesystem.
 *
 * Implemented by files.c (path rules, confined opens, reading, digests),
 * files_scan.c (the scan), files_stage.c (staging, durability, install) and
 * files_remove.c (removal, departed-user cache); files_int.h holds what only
 * they share. */
#ifndef MIG_FILES_H
#define MIG_FILES_H

#include <sys/types.h>

#include "common.h"

#define MIG__STAGING_DIR ".mig-staging"
#define MIG__CACHE_DIR ".mig-cache"
#define MIG__PATH_MAX 1024   /* bytes in a relative path we accept */
#define MIG__MAX_FILES 100000 /* files in one user's folder */

/* Checks a relative path from the network or a scan: non-empty, at most
 * MIG__PATH_MAX bytes, no leading '/', no empty, "." or ".." component, no
 * control characters, no component starting with ".mig-". */
bool mig__path_valid(const char *rel);

typedef struct mig__file_entry {
	char *path;       /* relative to the user's folder */
	uint64_t size;
	int64_t mtime_ns;
	uint64_t ino;
	uint64_t dev;
	uint32_t mode;    /* permission bits only */
} mig__file_entry;

typedef struct mig__file_list {
	mig__file_entry *entries;
	size_t count;
} mig__file_list;

void mig__file_list_free(mig__file_list *l);

/* Lists the regular files under ROOT/<user> (recursively), sorted by path.
 * A missing folder is an empty list. Refuses (MIG_EINVAL, reason in why) a
 * symlink anywhere (links are not moved; one pointing out of the root is an
 * escape attempt), a special file (device, FIFO, socket), a name that fails
 * mig__path_valid, or more than MIG__MAX_FILES files. MIG_EIO on I/O errors. */
int mig__files_scan(const char *root, const char *user, mig__file_list *out, char *why,
		    size_t why_len);

/* Opens ROOT/<user>/<rel> for reading without following symlinks in any
 * component (openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS). -errno style:
 * returns an fd or a negative MIG_E*. */
int mig__files_open_read(const char *root, const char *user, const char *rel);

/* Creates (or truncates) a staging file ROOT/.mig-staging/<mid>/<rel>,
 * making parent directories, mode 0600 until installed. Returns an fd or a
 * negative MIG_E*. */
int mig__files_open_staging(const char *root, const char *mid, const char *rel);

/* Opens an existing staging file for reading (basis of a later round). */
int mig__files_open_staging_read(const char *root, const char *mid, const char *rel);

/* Renames staging/<mid>/<rel>.tmp-like temp over staging/<mid>/<rel>: used
 * when a round's patch output replaces the previous round's staged file. */
int mig__files_staging_replace(const char *root, const char *mid, const char *tmp_rel,
			       const char *rel);

/* Makes staging/<mid>/<rel> a copy of ROOT/<user>/<rel> (hard link when
 * possible, else a copy), for files the destination already had right. */
int mig__files_stage_existing(const char *root, const char *user, const char *mid,
			      const char *rel);

/* Removes staging/<mid>/<rel> (a file the source deleted). */
int mig__files_staging_unlink(const char *root, const char *mid, const char *rel);

/* Installs the staged folder as ROOT/<user> atomically: with an existing
 * folder, renameat2(RENAME_EXCHANGE) swaps them and the old one is removed;
 * otherwise a plain rename.
 * Returns 0 or MIG_EIO. */
int mig__files_install(const char *root, const char *user, const char *mid);
/* The same, for a staged folder the caller has already made durable (each
 * file with mig__files_staging_sync(), then mig__files_staging_sync_dirs()):
 * only the rename and the two folders it changes are fsynced. */
int mig__files_install_synced(const char *root, const char *user, const char *mid);

/* fsyncs staging/<mid>/<rel>: its bytes and size are on disk when it
 * returns 0 (MIG_EINVAL for a bad name, MIG_EIO otherwise). Any thread. */
int mig__files_staging_sync(const char *root, const char *mid, const char *rel);
/* fsyncs every folder of staging/<mid> (not the files): with every file
 * synced, the staged tree is then complete on disk. Nothing staged is
 * fine. Returns 0, MIG_EINVAL or MIG_EIO. */
int mig__files_staging_sync_dirs(const char *root, const char *mid);

/* Patch output is written under ROOT/.mig-staging/<mid>.tmp/<name> (name: a
 * single component) and moved to staging/<mid>/<rel> once complete, so a
 * later round's basis (the staged file) is never written while read. */
int mig__files_open_staging_tmp(const char *root, const char *mid, const char *name);
int mig__files_staging_commit_tmp(const char *root, const char *mid, const char *name,
				  const char *rel);

/* Opens an existing staged file for writing (appended tails), no create. */
int mig__files_open_staging_append(const char *root, const char *mid, const char *rel);

/* Departed users' files: moves ROOT/<user> to ROOT/.mig-cache/<user>,
 * replacing an older cached copy (a missing folder is fine). Two renames. */
int mig__files_cache_put(const char *root, const char *user);

/* Removes the least recently cached users until the cache holds at most
 * max_bytes of files. */
int mig__files_cache_trim(const char *root, uint64_t max_bytes);

/* Removes ROOT/.mig-staging/<mid> (and <mid>.tmp) recursively (abort, or
 * after install). Missing is fine. */
int mig__files_staging_remove(const char *root, const char *mid);

/* Removes ROOT/<user> recursively (release at the source). */
int mig__files_remove_user(const char *root, const char *user);

#endif
