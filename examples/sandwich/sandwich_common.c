/* Shared by sandwich_server and sandwich_client; see sandwich.h. */
#include "sandwich.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

static const struct {
	const char *name;
	const char *text;
	const char *label;      /* seen once the step is done */
	const char *mistake;    /* a wrong item typical at this step */
	const char *correction; /* what to say about it */
} steps[] = {
	[SANDWICH__STEP__STEP_BREAD] = {"bread", "Put a piece of bread on the table.", "bread",
					NULL, NULL},
	[SANDWICH__STEP__STEP_HAM] = {"ham", "Now put a piece of ham on the bread.", "ham", NULL,
				      NULL},
	[SANDWICH__STEP__STEP_LETTUCE] = {"lettuce", "Now put a piece of lettuce on the ham.",
					  "lettuce", "cucumber",
					  "That is cucumber, not lettuce: replace the cucumber "
					  "with lettuce."},
	[SANDWICH__STEP__STEP_HALF] = {"half", "Now put a piece of bread on the lettuce.", "half",
				       NULL, NULL},
	[SANDWICH__STEP__STEP_TOMATO] = {"tomato", "Now put a piece of tomato on the bread.",
					 "tomato", "ham",
					 "Too much ham: replace the ham with tomato."},
	[SANDWICH__STEP__STEP_FULL] = {"full", "Now put the last piece of bread on top.", "full",
				       NULL, NULL},
	[SANDWICH__STEP__STEP_DONE] = {"done", "Done: enjoy your sandwich!", NULL, NULL, NULL},
};

static int step_ok(Sandwich__Step s)
{
	return (int)s >= 0 && (size_t)s < sizeof(steps) / sizeof(steps[0]);
}

const char *sw_step_name(Sandwich__Step s)
{
	return step_ok(s) ? steps[s].name : "?";
}

const char *sw_step_text(Sandwich__Step s)
{
	return step_ok(s) ? steps[s].text : "?";
}

const char *sw_step_label(Sandwich__Step s)
{
	return step_ok(s) ? steps[s].label : NULL;
}

const char *sw_step_mistake(Sandwich__Step s, const char **correction)
{
	if (!step_ok(s) || !steps[s].mistake)
		return NULL;
	if (correction)
		*correction = steps[s].correction;
	return steps[s].mistake;
}

/* ---------------------------------------------------------------- buffers */

/* Makes room for `len` more bytes at the end; returns where they go. */
static uint8_t *reserve(sw_buf *b, size_t len)
{
	if (b->off && b->off == b->len)
		b->off = b->len = 0;
	if (b->len + len > b->cap && b->off) { /* reclaim the consumed front first */
		memmove(b->data, b->data + b->off, b->len - b->off);
		b->len -= b->off;
		b->off = 0;
	}
	if (b->len + len > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->len + len)
			cap *= 2;
		uint8_t *p = realloc(b->data, cap);
		if (!p)
			return NULL;
		b->data = p;
		b->cap = cap;
	}
	return b->data + b->len;
}

int sw_buf_append(sw_buf *b, const void *data, size_t len)
{
	uint8_t *p = reserve(b, len);
	if (!p)
		return -1;
	if (len)
		memcpy(p, data, len);
	b->len += len;
	return 0;
}

void sw_buf_consume(sw_buf *b, size_t n)
{
	b->off += n;
	if (b->off >= b->len)
		b->off = b->len = 0;
}

void sw_buf_free(sw_buf *b)
{
	free(b->data);
	memset(b, 0, sizeof(*b));
}

int sw_buf_put_msg(sw_buf *b, const ProtobufCMessage *msg)
{
	size_t n = protobuf_c_message_get_packed_size(msg);
	if (n > SW_MAX_MSG)
		return -1;
	uint8_t *p = reserve(b, 4 + n);
	if (!p)
		return -1;
	p[0] = (uint8_t)(n >> 24);
	p[1] = (uint8_t)(n >> 16);
	p[2] = (uint8_t)(n >> 8);
	p[3] = (uint8_t)n;
	protobuf_c_message_pack(msg, p + 4);
	b->len += 4 + n;
	return 0;
}

int sw_buf_next_msg(const sw_buf *b, const uint8_t **body, size_t *len)
{
	size_t have = b->len - b->off;
	if (have < 4)
		return 0;
	const uint8_t *p = b->data + b->off;
	size_t n = (size_t)p[0] << 24 | (size_t)p[1] << 16 | (size_t)p[2] << 8 | p[3];
	if (n > SW_MAX_MSG)
		return -1;
	if (have < 4 + n)
		return 0;
	*body = p + 4;
	*len = n;
	return 1;
}

int sw_buf_flush(sw_buf *b, int fd)
{
	while (b->off < b->len) {
		ssize_t n = send(fd, b->data + b->off, b->len - b->off, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return 0;
			return -1;
		}
		sw_buf_consume(b, (size_t)n);
	}
	return 0;
}

/* ---------------------------------------------------------------- frames.log */

size_t sw_record_header(char *out, size_t cap, uint64_t frame_id, const char *label,
			size_t image_len)
{
	int n = snprintf(out, cap, "frame %llu %s %zu\n", (unsigned long long)frame_id, label,
			 image_len);
	return n < 0 ? 0 : (size_t)n < cap ? (size_t)n : cap - 1;
}

uint64_t sw_fnv(uint64_t h, const void *data, size_t len)
{
	const uint8_t *p = data;
	for (size_t i = 0; i < len; i++) {
		h ^= p[i];
		h *= 0x100000001b3ull;
	}
	return h;
}

/* ---------------------------------------------------------------- misc */

double sw_wall(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

uint64_t sw_mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int sw_read_secret(const char *path, char *buf, size_t cap, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, cap, f);
	fclose(f);
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		n--;
	*len = n;
	return n ? 0 : -1;
}

int sw_parse_tcp_url(const char *url, char *host, size_t host_cap, int *port)
{
	if (strncmp(url, "tcp://", 6) != 0)
		return -1;
	const char *h = url + 6, *colon = strrchr(h, ':');
	if (!colon || colon == h || (size_t)(colon - h) >= host_cap)
		return -1;
	char *end = NULL;
	long p = strtol(colon + 1, &end, 10);
	if (!end || (*end && *end != '/') || p <= 0 || p > 65535)
		return -1;
	memcpy(host, h, (size_t)(colon - h));
	host[colon - h] = '\0';
	if (strcmp(host, "localhost") == 0)
		snprintf(host, host_cap, "127.0.0.1");
	*port = (int)p;
	return 0;
}
