/* Command-line front end to delta.c, for the rdiff interoperability test:
 *   delta_tool signature BASIS SIG     signature with mig__delta_params
 *   delta_tool delta SIG|- NEW DELTA   delta of NEW ("-": no basis)
 *   delta_tool patch BASIS|- DELTA OUT patched file
 * Exit 0 on success, 1 with a message on stderr on failure, 2 on usage. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "delta.h"

#define SIG_MAX (256u * 1024 * 1024)
#define CHUNK (64u * 1024)

static int open_in(const char *path)
{
	if (!strcmp(path, "-"))
		return -1;
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		perror(path);
		exit(1);
	}
	return fd;
}

static int open_out(const char *path)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		perror(path);
		exit(1);
	}
	return fd;
}

static int write_all(int fd, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);
		if (w <= 0)
			return -1;
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

static int sink(const uint8_t *data, size_t len, void *ud)
{
	return write_all(*(int *)ud, data, len);
}

static int fail(const char *what, int rc, const char *why)
{
	fprintf(stderr, "delta_tool: %s: %s (%s)\n", what, why && why[0] ? why : "-",
		mig_err_name(rc));
	return 1;
}

static int cmd_signature(const char *basis, const char *out)
{
	int fd = open_in(basis);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0)
		return fail("signature", MIG_EIO, "cannot stat the basis");
	mig__sig_params p;
	mig__delta_params((uint64_t)st.st_size, &p);
	mig__bytes sig = {0};
	int rc = mig__delta_signature(fd, UINT64_MAX, &p, &sig);
	close(fd);
	if (rc)
		return fail("signature", rc, "");
	int ofd = open_out(out);
	rc = write_all(ofd, sig.data, sig.len);
	close(ofd);
	mig__bytes_free(&sig);
	return rc ? fail("signature", MIG_EIO, "write failed") : 0;
}

static int cmd_delta(const char *sigpath, const char *newpath, const char *out)
{
	mig__sig *sig = NULL;
	char why[MIG__REASON_MAX] = "";
	if (strcmp(sigpath, "-") != 0) {
		int fd = open_in(sigpath);
		mig__bytes b = {0};
		uint8_t buf[CHUNK];
		ssize_t n;
		while ((n = read(fd, buf, sizeof(buf))) > 0 && b.len <= SIG_MAX)
			if (mig__bytes_append(&b, buf, (size_t)n))
				return fail("delta", MIG_ENOMEM, "");
		close(fd);
		if (n < 0)
			return fail("delta", MIG_EIO, "reading the signature");
		int rc = mig__delta_check_signature(b.data, b.len, SIG_MAX, why, sizeof(why));
		if (!rc)
			rc = mig__delta_load_signature(b.data, b.len, &sig, why, sizeof(why));
		mig__bytes_free(&b);
		if (rc)
			return fail("delta", rc, why);
	}
	int nfd = open_in(newpath);
	int ofd = open_out(out);
	int rc = mig__delta_generate(nfd, UINT64_MAX, sig, CHUNK, sink, &ofd);
	close(nfd);
	close(ofd);
	mig__delta_sig_free(sig);
	return rc ? fail("delta", rc, "") : 0;
}

static int cmd_patch(const char *basis, const char *deltapath, const char *out)
{
	int bfd = open_in(basis);
	int dfd = open_in(deltapath);
	int ofd = open_out(out);
	mig__patch *p = NULL;
	char why[MIG__REASON_MAX] = "";
	int rc = mig__patch_new(bfd, ofd, &p);
	uint8_t buf[CHUNK];
	ssize_t n = 0;
	while (!rc && (n = read(dfd, buf, sizeof(buf))) > 0)
		rc = mig__patch_feed(p, buf, (size_t)n, why, sizeof(why));
	if (!rc && n < 0)
		rc = MIG_EIO;
	if (!rc)
		rc = mig__patch_finish(p, why, sizeof(why));
	mig__patch_free(p);
	if (bfd >= 0)
		close(bfd);
	close(dfd);
	close(ofd);
	return rc ? fail("patch", rc, why) : 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && !strcmp(argv[1], "signature"))
		return cmd_signature(argv[2], argv[3]);
	if (argc == 5 && !strcmp(argv[1], "delta"))
		return cmd_delta(argv[2], argv[3], argv[4]);
	if (argc == 5 && !strcmp(argv[1], "patch"))
		return cmd_patch(argv[2], argv[3], argv[4]);
	fprintf(stderr, "usage: delta_tool signature BASIS SIG\n"
			"       delta_tool delta SIG|- NEW DELTA\n"
			"       delta_tool patch BASIS|- DELTA OUT\n");
	return 2;
}
