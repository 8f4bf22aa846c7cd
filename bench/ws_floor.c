/* ws_floor: how fast libwebsockets alone moves a folder between two
 * processes on loopback, beside a raw TCP copy of the same files in the same
 * run (docs/BENCHMARKS.md, "The floor under a fresh transfer").
 *
 *   ws_floor --dir DIR [--reps N (5)] [--read BYTES (65536)]
 *            [--fragment BYTES (65536)] [--rx-copy] [--digest] [--fsync]
 *
 * Each run forks a receiver and times, in the sender, from connect() to the
 * receiver's one-byte acknowledgement after it has written every file (no
 * fsync) under a fresh temporary folder:
 *
 *  - tcp: a raw TCP copy, as `bench_files tcp-send/tcp-recv` does it
 *    (256 KiB read()/write() both sides);
 *  - ws:  the same files over one WebSocket made by libwebsockets, set up as
 *    libmigrate's transport sets it up: `pt_serv_buf_size` = --read (bytes
 *    per recv()), payload in --fragment pieces written by the client with a
 *    zero masking key (as the peer channel does), each file one binary
 *    message after a small header message. The receiver writes each piece
 *    lws hands it straight to the file; --rx-copy first copies it into a
 *    reassembly buffer, as libmigrate does. --digest adds the check the
 *    file-state design requires: both sides hash every file with XXH3-128
 *    as it passes (libmigrate's digest), the receiver puts the hashes in
 *    its acknowledgement and the sender compares them. --fsync makes the
 *    received files durable before the acknowledgement, as a libmigrate
 *    destination does before PREPARED: writeback started every MiB and at
 *    each file's end, then fsync of every file and of the folder.
 *
 * Nothing else of libmigrate runs: no protobuf, no worker threads, no
 * authentication, no handoff round trips. What this reaches is an upper
 * bound on a fresh transfer through libwebsockets on this machine. Prints
 * one line per run and the medians. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <libwebsockets.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <xxhash.h>

#define TCP_BUF (256u * 1024)
#define MAX_FILES 1024
#define MAX_REPS 50

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void die(const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	fprintf(stderr, "ws_floor: ");
	vfprintf(stderr, fmt, ap);
	fprintf(stderr, "\n");
	va_end(ap);
	exit(1);
}

static uint64_t mono_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void write_all(int fd, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	while (len) {
		ssize_t n = write(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("write: %s", strerror(errno));
		p += n;
		len -= (size_t)n;
	}
}

static void read_exact(int fd, void *buf, size_t len)
{
	uint8_t *p = buf;
	while (len) {
		ssize_t n = read(fd, p, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			die("read: %s", n ? strerror(errno) : "connection closed");
		p += n;
		len -= (size_t)n;
	}
}

/* ------------------------------------------------------------ the files */

static const char *g_dir;
static char *g_names[MAX_FILES];
static uint64_t g_sizes[MAX_FILES];
static size_t g_nfiles;
static uint64_t g_total;

static int collect(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)ftw;
	(void)sb;
	if (flag != FTW_F)
		return 0;
	if (g_nfiles == MAX_FILES)
		die("more than %d files", MAX_FILES);
	if (strlen(p + strlen(g_dir) + 1) > 255)
		die("%s: name too long", p);
	g_names[g_nfiles++] = strdup(p + strlen(g_dir) + 1);
	return 0;
}

/* The receiver writes every file directly in its folder: a/b becomes a_b. */
static void flat_path(char *out, size_t cap, const char *dir, const char *rel, size_t len)
{
	int n = snprintf(out, cap, "%s/%.*s", dir, (int)len, rel);
	for (char *c = out + strlen(dir) + 1; n > 0 && *c; c++)
		if (*c == '/')
			*c = '_';
}

static int cmp_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* -------------------------------------------------------------- raw TCP */

static int listen_any(int *port)
{
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sin = {.sin_family = AF_INET};
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	socklen_t sl = sizeof(sin);
	if (s < 0 || bind(s, (struct sockaddr *)&sin, sizeof(sin)) != 0 || listen(s, 1) != 0 ||
	    getsockname(s, (struct sockaddr *)&sin, &sl) != 0)
		die("listen: %s", strerror(errno));
	*port = ntohs(sin.sin_port);
	return s;
}

static void tcp_receiver(int ls, const char *out)
{
	int c = accept(ls, NULL, NULL);
	if (c < 0)
		die("accept: %s", strerror(errno));
	uint8_t *buf = malloc(TCP_BUF);
	if (!buf)
		die("out of memory");
	for (;;) {
		uint16_t plen;
		char rel[256], p[4200];
		uint64_t size;
		read_exact(c, &plen, sizeof(plen));
		if (!plen)
			break;
		if (plen >= sizeof(rel))
			die("name too long");
		read_exact(c, rel, plen);
		rel[plen] = '\0';
		read_exact(c, &size, sizeof(size));
		flat_path(p, sizeof(p), out, rel, plen);
		int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd < 0)
			die("%s: %s", p, strerror(errno));
		for (uint64_t left = size; left;) {
			ssize_t n = read(c, buf, left < TCP_BUF ? (size_t)left : TCP_BUF);
			if (n < 0 && errno == EINTR)
				continue;
			if (n <= 0)
				die("read: %s", n ? strerror(errno) : "connection closed");
			write_all(fd, buf, (size_t)n);
			left -= (uint64_t)n;
		}
		close(fd);
	}
	uint8_t ack = 1;
	write_all(c, &ack, 1);
	close(c);
	free(buf);
}

static uint64_t tcp_sender(int port)
{
	uint8_t *buf = malloc(TCP_BUF);
	if (!buf)
		die("out of memory");
	uint64_t t0 = mono_us();
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (s < 0 || connect(s, (struct sockaddr *)&sin, sizeof(sin)) != 0)
		die("connect: %s", strerror(errno));
	for (size_t i = 0; i < g_nfiles; i++) {
		char p[4200];
		snprintf(p, sizeof(p), "%s/%s", g_dir, g_names[i]);
		int fd = open(p, O_RDONLY | O_CLOEXEC);
		if (fd < 0)
			die("%s: %s", p, strerror(errno));
		uint16_t plen = (uint16_t)strlen(g_names[i]);
		write_all(s, &plen, sizeof(plen));
		write_all(s, g_names[i], plen);
		write_all(s, &g_sizes[i], sizeof(g_sizes[i]));
		for (uint64_t left = g_sizes[i]; left;) {
			ssize_t n = read(fd, buf, left < TCP_BUF ? (size_t)left : TCP_BUF);
			if (n <= 0)
				die("%s: read: %s", p, n ? strerror(errno) : "file shrank");
			write_all(s, buf, (size_t)n);
			left -= (uint64_t)n;
		}
		close(fd);
	}
	uint16_t end = 0;
	write_all(s, &end, sizeof(end));
	uint8_t ack;
	read_exact(s, &ack, 1);
	uint64_t el = mono_us() - t0;
	close(s);
	free(buf);
	return el;
}

/* ------------------------------------------------------ libwebsockets */

static size_t g_read = 65536, g_fragment = 65536;
static bool g_rx_copy, g_digest, g_fsync;

#define WRITEBACK_STEP (1024u * 1024)

/* --digest: one XXH3-128 state per file, on each side. */
static XXH3_state_t *digest_new(void)
{
	XXH3_state_t *st = XXH3_createState();
	if (!st || XXH3_128bits_reset(st) != XXH_OK)
		die("XXH3 state");
	return st;
}

static void digest_end(XXH3_state_t *st, XXH128_canonical_t *out)
{
	XXH128_canonicalFromHash(out, XXH3_128bits_digest(st));
	XXH3_freeState(st);
}

/* Receiver state (one connection). */
struct rx {
	const char *out;
	int fd;    /* file being written, -1 between files */
	bool done; /* the empty header arrived: acknowledge */
	bool acked;
	bool closed;                        /* the sender hung up after the acknowledgement */
	uint8_t *copy;                      /* --rx-copy: reassembly buffer of one fragment */
	uint64_t written;                   /* of the current file */
	uint64_t synced_to;                 /* --fsync: writeback started up to here */
	XXH3_state_t *dg;                   /* --digest: of the current file */
	XXH128_canonical_t sums[MAX_FILES]; /* --digest: one per file, in order */
	int kept[MAX_FILES];                /* --fsync: files to fsync before the ack */
	size_t nfiles;
};

/* Sender state. */
struct tx {
	size_t file;   /* index into g_names */
	int fd;        /* open file, -1 before its header went */
	uint64_t left; /* its bytes still to send */
	bool in_msg;   /* between the first and last fragment of its data */
	bool all_sent;
	bool acked;
	bool failed;
	uint8_t *buf;     /* LWS_PRE + 14 + fragment */
	XXH3_state_t *dg; /* --digest: of the current file */
	XXH128_canonical_t sums[MAX_FILES];
	bool sums_match; /* the receiver's hashes equal these */
};

static struct rx g_rx;
static struct tx g_tx;

/* The header of a client frame with a zero masking key, written just before
 * `payload` (libmigrate's transport_ws.c does the same on the peer channel). */
static size_t zero_key_header(uint8_t *payload, size_t n, bool first, bool last, bool binary)
{
	uint8_t h[14];
	size_t len = 0;
	h[len++] = (uint8_t)((last ? 0x80 : 0) | (first ? (binary ? 0x2 : 0x1) : 0x0));
	if (n < 126) {
		h[len++] = (uint8_t)(0x80 | n);
	} else if (n <= 0xffff) {
		h[len++] = 0x80 | 126;
		h[len++] = (uint8_t)(n >> 8);
		h[len++] = (uint8_t)n;
	} else {
		h[len++] = 0x80 | 127;
		for (int i = 7; i >= 0; i--)
			h[len++] = (uint8_t)((uint64_t)n >> (8 * i));
	}
	memset(h + len, 0, 4);
	len += 4;
	memcpy(payload - len, h, len);
	return len;
}

static int send_frame(struct lws *wsi, uint8_t *payload, size_t n, bool first, bool last)
{
	size_t h = zero_key_header(payload, n, first, last, true);
	int w = lws_write(wsi, payload - h, h + n, LWS_WRITE_RAW);
	return w < (int)(h + n) ? -1 : 0;
}

/* The sender's current file is sent: its hash, and on to the next. */
static void tx_file_end(struct tx *t)
{
	close(t->fd);
	t->fd = -1;
	if (g_digest)
		digest_end(t->dg, &t->sums[t->file]);
	t->file++;
}

/* One frame of the sender's stream per WRITEABLE callback. */
static int tx_writeable(struct lws *wsi)
{
	struct tx *t = &g_tx;
	uint8_t *p = t->buf + LWS_PRE + 14;
	if (t->all_sent)
		return 0;
	if (t->fd < 0) {
		/* Header message: u16 name length, name, u64 size; length 0 ends. */
		size_t n = 0;
		uint16_t plen = t->file < g_nfiles ? (uint16_t)strlen(g_names[t->file]) : 0;
		memcpy(p, &plen, 2);
		n += 2;
		if (plen) {
			memcpy(p + n, g_names[t->file], plen);
			n += plen;
			memcpy(p + n, &g_sizes[t->file], 8);
			n += 8;
		}
		if (send_frame(wsi, p, n, true, true))
			return -1;
		if (!plen) {
			t->all_sent = true;
			return 0;
		}
		char path[4200];
		snprintf(path, sizeof(path), "%s/%s", g_dir, g_names[t->file]);
		t->fd = open(path, O_RDONLY | O_CLOEXEC);
		if (t->fd < 0)
			die("%s: %s", path, strerror(errno));
		t->left = g_sizes[t->file];
		t->in_msg = false;
		if (g_digest)
			t->dg = digest_new();
		if (!t->left)
			tx_file_end(t);
		lws_callback_on_writable(wsi);
		return 0;
	}
	size_t want = t->left < g_fragment ? (size_t)t->left : g_fragment;
	ssize_t n = read(t->fd, p, want);
	if (n != (ssize_t)want)
		die("read: %s", n < 0 ? strerror(errno) : "file shrank");
	bool first = !t->in_msg, last = (uint64_t)n == t->left;
	if (g_digest)
		XXH3_128bits_update(t->dg, p, (size_t)n);
	if (send_frame(wsi, p, (size_t)n, first, last))
		return -1;
	t->in_msg = true;
	t->left -= (uint64_t)n;
	if (last)
		tx_file_end(t);
	lws_callback_on_writable(wsi);
	return 0;
}

/* The current file is complete: its hash, and with --fsync its writeback
 * started and its descriptor kept for the fsync before the ack. */
static void rx_file_end(struct rx *r)
{
	if (g_digest)
		digest_end(r->dg, &r->sums[r->nfiles]);
	if (g_fsync) {
		sync_file_range(r->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
		r->kept[r->nfiles] = r->fd;
	} else {
		close(r->fd);
	}
	r->fd = -1;
	r->nfiles++;
}

/* Everything arrived: with --fsync, the files and the folder on disk. */
static void rx_make_durable(struct rx *r)
{
	for (size_t i = 0; g_fsync && i < r->nfiles; i++) {
		if (fsync(r->kept[i]) != 0)
			die("fsync: %s", strerror(errno));
		close(r->kept[i]);
	}
	if (g_fsync) {
		int d = open(r->out, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (d < 0 || fsync(d) != 0)
			die("fsync %s: %s", r->out, strerror(errno));
		close(d);
	}
}

static int rx_receive(struct lws *wsi, const uint8_t *in, size_t len)
{
	struct rx *r = &g_rx;
	if (r->fd < 0) {
		/* A header message: small, one piece. */
		uint16_t plen;
		if (len < 2 || !lws_is_final_fragment(wsi))
			die("bad header message (%zu bytes)", len);
		memcpy(&plen, in, 2);
		if (!plen) {
			rx_make_durable(r);
			r->done = true;
			lws_callback_on_writable(wsi);
			return 0;
		}
		if (len != 2u + plen + 8u || plen > 255)
			die("bad header message");
		char path[4200];
		flat_path(path, sizeof(path), r->out, (const char *)in + 2, plen);
		r->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (r->fd < 0)
			die("%s: %s", path, strerror(errno));
		uint64_t size;
		memcpy(&size, in + 2 + plen, 8);
		if (r->nfiles == MAX_FILES)
			die("more than %d files", MAX_FILES);
		r->written = r->synced_to = 0;
		if (g_digest)
			r->dg = digest_new();
		if (!size)
			rx_file_end(r);
		return 0;
	}
	const uint8_t *p = in;
	if (g_rx_copy) {
		memcpy(r->copy, in, len);
		p = r->copy;
	}
	write_all(r->fd, p, len);
	r->written += len;
	if (g_digest)
		XXH3_128bits_update(r->dg, p, len);
	if (g_fsync && r->written - r->synced_to >= WRITEBACK_STEP) {
		sync_file_range(r->fd, (off_t)r->synced_to, (off_t)(r->written - r->synced_to),
				SYNC_FILE_RANGE_WRITE);
		r->synced_to = r->written;
	}
	if (lws_is_final_fragment(wsi) && lws_remaining_packet_payload(wsi) == 0)
		rx_file_end(r);
	return 0;
}

static int callback(struct lws *wsi, enum lws_callback_reasons reason, void *user, void *in,
		    size_t len)
{
	(void)user;
	switch (reason) {
	case LWS_CALLBACK_RECEIVE:
		return rx_receive(wsi, in, len);
	case LWS_CALLBACK_SERVER_WRITEABLE:
		if (g_rx.done && !g_rx.acked) {
			/* One byte, then with --digest the hash of every file. */
			static uint8_t b[LWS_PRE + 1 + sizeof(g_rx.sums)];
			size_t n = 1 + (g_digest ? g_rx.nfiles * sizeof(g_rx.sums[0]) : 0);
			b[LWS_PRE] = 1;
			if (g_digest)
				memcpy(b + LWS_PRE + 1, g_rx.sums, n - 1);
			if (lws_write(wsi, b + LWS_PRE, n, LWS_WRITE_BINARY) != (int)n)
				return -1;
			g_rx.acked = true;
		}
		return 0;
	case LWS_CALLBACK_CLIENT_ESTABLISHED:
		lws_callback_on_writable(wsi);
		return 0;
	case LWS_CALLBACK_CLIENT_WRITEABLE:
		return tx_writeable(wsi);
	case LWS_CALLBACK_CLIENT_RECEIVE:
		if (g_tx.all_sent) {
			size_t want = 1 + (g_digest ? g_nfiles * sizeof(g_tx.sums[0]) : 0);
			g_tx.acked = true;
			g_tx.sums_match =
				len == want && (!g_digest || memcmp((const uint8_t *)in + 1,
								    g_tx.sums, want - 1) == 0);
		}
		return 0;
	case LWS_CALLBACK_CLIENT_CONNECTION_ERROR:
	case LWS_CALLBACK_CLIENT_CLOSED:
		if (!g_tx.acked)
			g_tx.failed = true;
		return 0;
	case LWS_CALLBACK_CLOSED:
		if (!g_rx.acked)
			die("receiver: connection closed before the end");
		g_rx.closed = true;
		return 0;
	default:
		return 0;
	}
}

static struct lws_protocols protocols[] = {
	{"floor", callback, 0, 0, 0, NULL, 0},
	{NULL, NULL, 0, 0, 0, NULL, 0},
};

static struct lws_context *make_context(int port)
{
	protocols[0].rx_buffer_size = g_fragment;
	protocols[0].tx_packet_size = g_fragment;
	struct lws_context_creation_info info;
	memset(&info, 0, sizeof(info));
	info.port = port >= 0 ? port : CONTEXT_PORT_NO_LISTEN;
	info.iface = port >= 0 ? "127.0.0.1" : NULL;
	info.protocols = protocols;
	info.gid = -1;
	info.uid = -1;
	info.pt_serv_buf_size = (unsigned)g_read;
	struct lws_context *ctx = lws_create_context(&info);
	if (!ctx)
		die("lws_create_context failed");
	return ctx;
}

static int vhost_port(struct lws_context *ctx)
{
	struct lws_vhost *vh = lws_get_vhost_by_name(ctx, "default");
	return vh ? lws_get_vhost_listen_port(vh) : -1;
}

static void ws_receiver(const char *out, int ready_fd)
{
	g_rx = (struct rx){.out = out, .fd = -1};
	if (g_rx_copy && !(g_rx.copy = malloc(g_read > g_fragment ? g_read : g_fragment)))
		die("out of memory");
	struct lws_context *ctx = make_context(0);
	int port = vhost_port(ctx);
	write_all(ready_fd, &port, sizeof(port));
	close(ready_fd);
	uint64_t deadline = mono_us() + 120u * 1000000u;
	/* Until the sender, acknowledged, hangs up. */
	while (!g_rx.closed && mono_us() < deadline)
		lws_service(ctx, 0);
	lws_context_destroy(ctx);
	free(g_rx.copy);
	if (!g_rx.acked)
		die("receiver: timed out");
}

static uint64_t ws_sender(int port)
{
	g_tx = (struct tx){.fd = -1};
	g_tx.buf = malloc(LWS_PRE + 14 + g_fragment);
	if (!g_tx.buf)
		die("out of memory");
	struct lws_context *ctx = make_context(-1);
	uint64_t t0 = mono_us();
	struct lws_client_connect_info cc;
	memset(&cc, 0, sizeof(cc));
	cc.context = ctx;
	cc.address = "127.0.0.1";
	cc.port = port;
	cc.path = "/";
	cc.host = "127.0.0.1";
	cc.origin = "127.0.0.1";
	cc.protocol = "floor";
	if (!lws_client_connect_via_info(&cc))
		die("connect failed");
	uint64_t deadline = t0 + 120u * 1000000u;
	while (!g_tx.acked && !g_tx.failed && mono_us() < deadline)
		lws_service(ctx, 0);
	uint64_t el = mono_us() - t0;
	lws_context_destroy(ctx);
	free(g_tx.buf);
	if (!g_tx.acked)
		die("sender: %s", g_tx.failed ? "connection failed" : "timed out");
	if (!g_tx.sums_match)
		die("the receiver's acknowledgement does not match what was sent");
	return el;
}

/* -------------------------------------------------------------- runs */

static void rm_files(const char *dir)
{
	for (size_t i = 0; i < g_nfiles; i++) {
		char p[4200];
		flat_path(p, sizeof(p), dir, g_names[i], strlen(g_names[i]));
		unlink(p);
	}
	rmdir(dir);
}

static void check_files(const char *dir)
{
	for (size_t i = 0; i < g_nfiles; i++) {
		char p[4200];
		struct stat st;
		flat_path(p, sizeof(p), dir, g_names[i], strlen(g_names[i]));
		if (stat(p, &st) != 0 || (uint64_t)st.st_size != g_sizes[i])
			die("%s: not received whole", p);
	}
}

/* One run of either kind: fork the receiver, send, reap. */
static uint64_t run_one(bool ws)
{
	char out[] = "/tmp/ws_floor.XXXXXX";
	if (!mkdtemp(out))
		die("mkdtemp: %s", strerror(errno));
	/* As bench_files.sh before each copy: no earlier run's dirty pages
	 * are written back during this one. */
	sync();
	int port = 0, ls = -1, pfd[2] = {-1, -1};
	if (ws) {
		if (pipe(pfd) != 0)
			die("pipe: %s", strerror(errno));
	} else {
		ls = listen_any(&port);
	}
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid == 0) {
		alarm(150);
		if (ws) {
			close(pfd[0]);
			ws_receiver(out, pfd[1]);
		} else {
			tcp_receiver(ls, out);
		}
		_exit(0);
	}
	uint64_t us;
	if (ws) {
		close(pfd[1]);
		read_exact(pfd[0], &port, sizeof(port));
		close(pfd[0]);
		if (port <= 0)
			die("receiver did not listen");
		us = ws_sender(port);
	} else {
		close(ls);
		us = tcp_sender(port);
	}
	int st;
	if (waitpid(pid, &st, 0) != pid)
		die("waitpid: %s", strerror(errno));
	if (WIFSIGNALED(st))
		die("%s receiver: killed by signal %d", ws ? "ws" : "tcp", WTERMSIG(st));
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		die("%s receiver failed", ws ? "ws" : "tcp");
	check_files(out);
	rm_files(out);
	return us;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static double mbps(uint64_t us)
{
	return (double)g_total / (double)us;
}

int main(int argc, char **argv)
{
	int reps = 5;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--dir") && i + 1 < argc)
			g_dir = argv[++i];
		else if (!strcmp(argv[i], "--reps") && i + 1 < argc)
			reps = atoi(argv[++i]);
		else if (!strcmp(argv[i], "--read") && i + 1 < argc)
			g_read = strtoul(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--fragment") && i + 1 < argc)
			g_fragment = strtoul(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--rx-copy"))
			g_rx_copy = true;
		else if (!strcmp(argv[i], "--digest"))
			g_digest = true;
		else if (!strcmp(argv[i], "--fsync"))
			g_fsync = true;
		else
			die("usage: ws_floor --dir DIR [--reps N] [--read BYTES] [--fragment "
			    "BYTES] "
			    "[--rx-copy] [--digest] [--fsync]");
	}
	if (!g_dir || reps < 1 || reps > MAX_REPS || g_read < 4096 || g_fragment < 4096 ||
	    g_fragment > (64u << 20))
		die("usage: ws_floor --dir DIR [--reps 1..%d] [--read >= 4096] "
		    "[--fragment 4096..64Mi] [--rx-copy] [--digest] [--fsync]",
		    MAX_REPS);
	signal(SIGPIPE, SIG_IGN);
	lws_set_log_level(LLL_ERR, NULL);
	if (nftw(g_dir, collect, 16, FTW_PHYS) != 0)
		die("%s: cannot list", g_dir);
	if (!g_nfiles)
		die("%s: no files", g_dir);
	qsort(g_names, g_nfiles, sizeof(*g_names), cmp_name);
	/* Sizes follow the names: list again in order. */
	for (size_t i = 0; i < g_nfiles; i++) {
		char p[4200];
		struct stat st;
		snprintf(p, sizeof(p), "%s/%s", g_dir, g_names[i]);
		if (stat(p, &st) != 0)
			die("%s: %s", p, strerror(errno));
		g_sizes[i] = (uint64_t)st.st_size;
		g_total += g_sizes[i];
	}
	printf("ws_floor: %zu files, %" PRIu64 " bytes; read %zu, fragment %zu%s%s%s; %d runs, "
	       "alternating\n",
	       g_nfiles, g_total, g_read, g_fragment, g_rx_copy ? ", receiver copies" : "",
	       g_digest ? ", XXH3-128 both sides" : "", g_fsync ? ", durable" : "", reps);
	uint64_t tcp[MAX_REPS], ws[MAX_REPS];
	double ratio[MAX_REPS];
	run_one(false); /* warm the page cache and the allocator */
	for (int r = 0; r < reps; r++) {
		tcp[r] = run_one(false);
		ws[r] = run_one(true);
		ratio[r] = (double)tcp[r] / (double)ws[r];
		printf("run %d: tcp %.1f ms %.0f MB/s, ws %.1f ms %.0f MB/s, ws/tcp %.3f\n", r + 1,
		       tcp[r] / 1e3, mbps(tcp[r]), ws[r] / 1e3, mbps(ws[r]), ratio[r]);
	}
	qsort(tcp, (size_t)reps, sizeof(*tcp), cmp_u64);
	qsort(ws, (size_t)reps, sizeof(*ws), cmp_u64);
	double rs[MAX_REPS];
	memcpy(rs, ratio, sizeof(double) * (size_t)reps);
	for (int i = 1; i < reps; i++)
		for (int j = i; j > 0 && rs[j - 1] > rs[j]; j--) {
			double x = rs[j];
			rs[j] = rs[j - 1];
			rs[j - 1] = x;
		}
	printf("median: tcp %.0f MB/s, ws %.0f MB/s, ws/tcp %.3f (per-run ratios %.3f-%.3f)\n",
	       mbps(tcp[reps / 2]), mbps(ws[reps / 2]), rs[reps / 2], rs[0], rs[reps - 1]);
	for (size_t i = 0; i < g_nfiles; i++)
		free(g_names[i]);
	return 0;
}
