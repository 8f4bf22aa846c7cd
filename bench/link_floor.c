/* link_floor: what a process pays in RSS for the libraries it links, before
 * it runs any code of its own (docs/BENCHMARKS.md, "The floor").
 *
 * Built several times by bench/link_floor.sh, each time linked against a
 * different set of libraries with -Wl,--no-as-needed and calling none of
 * them; with -DWITH_LWS_CONTEXT it first creates a libwebsockets context the
 * way libmigrate's transport.c does (no TLS, one listening vhost on
 * 127.0.0.1, port 0). It sleeps 1 s, then prints
 *   VmRSS <kB> RssAnon <kB> RssFile <kB>
 * and, one per line, the Rss and Anonymous kB of each mapped file (smaps).
 * /proc is read with open/read into static buffers, so no stdio or malloc
 * use shows in the numbers. */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifdef WITH_LWS_CONTEXT
#include <libwebsockets.h>

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
		    size_t len)
{
	(void)wsi, (void)reason, (void)user, (void)in, (void)len;
	return 0;
}

static const lws_retry_bo_t retry = {.secs_since_valid_ping = 20, .secs_since_valid_hangup = 60};
static struct lws_protocols protocols[] = {
	{"http", callback, 64, 0, 0, NULL, 0},
	{"mig-a", callback, 0, 65536, 1, NULL, 65536},
	{"mig-b", callback, 0, 65536, 2, NULL, 65536},
	{"mig-c", callback, 0, 65536, 3, NULL, 65536},
	{"mig-d", callback, 0, 65536, 4, NULL, 65536},
	{NULL, NULL, 0, 0, 0, NULL, 0},
};
#endif

#define MAX_NAMES 128

static char status[8192];
static char smaps[2 << 20];
static char names[MAX_NAMES][160];
static long rss_kb[MAX_NAMES], anon_kb[MAX_NAMES];
static int nnames;

static void slurp(const char *path, char *buf, size_t cap)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	size_t n = 0;
	ssize_t r;
	while (fd >= 0 && n + 1 < cap && (r = read(fd, buf + n, cap - 1 - n)) > 0)
		n += (size_t)r;
	if (fd >= 0)
		close(fd);
	buf[n] = '\0';
}

static long status_kb(const char *key)
{
	const char *p = strstr(status, key);
	return p ? atol(p + strlen(key)) : -1;
}

static int name_index(const char *name)
{
	int i;
	for (i = 0; i < nnames; i++)
		if (strcmp(names[i], name) == 0)
			return i;
	if (nnames == MAX_NAMES)
		return -1;
	snprintf(names[nnames], sizeof(names[0]), "%s", name);
	return nnames++;
}

int main(void)
{
#ifdef WITH_LWS_CONTEXT
	lws_set_log_level(0, NULL);
	struct lws_context_creation_info info;
	memset(&info, 0, sizeof(info));
	info.port = 0;
	info.iface = "127.0.0.1";
	info.protocols = protocols;
	info.gid = (gid_t)-1;
	info.uid = (uid_t)-1;
	info.pt_serv_buf_size = 64 * 1024;
	info.retry_and_idle_policy = &retry;
	struct lws_context *context = lws_create_context(&info);
	if (!context) {
		fprintf(stderr, "link_floor: lws_create_context failed\n");
		return 1;
	}
#endif
	sleep(1);
	slurp("/proc/self/status", status, sizeof(status));
	slurp("/proc/self/smaps", smaps, sizeof(smaps));
	int cur = name_index("[anon]");
	for (char *save = NULL, *line = strtok_r(smaps, "\n", &save); line;
	     line = strtok_r(NULL, "\n", &save)) {
		unsigned long lo, hi, off, ino;
		char perm[8], dev[16];
		int pos = 0;
		if (sscanf(line, "%lx-%lx %7s %lx %15s %lu %n", &lo, &hi, perm, &off, dev, &ino,
			   &pos) >= 6 &&
		    pos) {
			const char *name = line + pos;
			const char *base = name[0] == '/' ? strrchr(name, '/') + 1 : name;
			cur = name_index(*base ? base : "[anon]");
		} else if (cur >= 0 && strncmp(line, "Rss:", 4) == 0) {
			rss_kb[cur] += atol(line + 4);
		} else if (cur >= 0 && strncmp(line, "Anonymous:", 10) == 0) {
			anon_kb[cur] += atol(line + 10);
		}
	}
	printf("VmRSS %ld RssAnon %ld RssFile %ld\n", status_kb("VmRSS:"), status_kb("RssAnon:"),
	       status_kb("RssFile:"));
	for (int i = 0; i < nnames; i++)
		if (rss_kb[i])
			printf("  %-32s Rss %6ld  Anonymous %6ld\n", names[i], rss_kb[i], anon_kb[i]);
#ifdef WITH_LWS_CONTEXT
	lws_context_destroy(context);
#endif
	return 0;
}
