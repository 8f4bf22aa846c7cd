/* What the sandwich server and its client simulator share: the steps and
 * their instructions, message framing on the app's TCP connection, the
 * recorded-frame format of frames.log, and small helpers. */
#ifndef SANDWICH_H
#define SANDWICH_H

#include <stddef.h>
#include <stdint.h>

#include "sandwich.pb-c.h"

/* Largest message on the app connection (a frame with its image). */
#define SW_MAX_MSG (1u << 20)

/* ---------------------------------------------------------------- steps */

/* "bread", "ham", ... "done" for a step; "?" for a bad value. */
const char *sw_step_name(Sandwich__Step step);
/* The instruction that asks the user to do `step`. */
const char *sw_step_text(Sandwich__Step step);
/* The label the camera sees once `step` is done; NULL for STEP_DONE. */
const char *sw_step_label(Sandwich__Step step);
/* A wrong item typical at `step` ("cucumber" at LETTUCE, "ham" at TOMATO)
 * and the correction to give; NULL if none. */
const char *sw_step_mistake(Sandwich__Step step, const char **correction);

/* ---------------------------------------------------------------- buffers */

typedef struct sw_buf {
	uint8_t *data;
	size_t len, cap, off; /* off: bytes already consumed from the front */
} sw_buf;

int sw_buf_append(sw_buf *b, const void *data, size_t len);
void sw_buf_consume(sw_buf *b, size_t n);
void sw_buf_free(sw_buf *b);

/* Appends a 4-byte big-endian length and the packed message. */
int sw_buf_put_msg(sw_buf *b, const ProtobufCMessage *msg);

/* The next complete message at the front of `b`: 1 with *body and *len set
 * (consume 4 + len once handled), 0 if incomplete, -1 if over SW_MAX_MSG. */
int sw_buf_next_msg(const sw_buf *b, const uint8_t **body, size_t *len);

/* Writes as much of `b` as the non-blocking socket takes: 0 (maybe some
 * left), -1 on a socket error. */
int sw_buf_flush(sw_buf *b, int fd);

/* ---------------------------------------------------------------- frames.log */

/* One recorded frame in ROOT/<user>/frames.log is
 *     "frame <id> <label> <image bytes>\n" <image> "\n"
 * and one line in ROOT/<user>/frames.idx is
 *     "<id> <label> <offset in frames.log> <record bytes> <cloudlet>\n".
 * Writes the header line into out (NUL-terminated); returns its length. */
size_t sw_record_header(char *out, size_t cap, uint64_t frame_id, const char *label,
			size_t image_len);

/* 64-bit FNV-1a, continued from `h` (start with SW_FNV_INIT). */
#define SW_FNV_INIT 0xcbf29ce484222325ull
uint64_t sw_fnv(uint64_t h, const void *data, size_t len);

/* ---------------------------------------------------------------- misc */

/* Wall clock in seconds (for timelines merged across processes). */
double sw_wall(void);
/* Monotonic clock in milliseconds. */
uint64_t sw_mono_ms(void);
/* Reads a secret file (trailing newlines dropped). 0 or -1. */
int sw_read_secret(const char *path, char *buf, size_t cap, size_t *len);
/* Parses "tcp://HOST:PORT" (HOST an IPv4 address or "localhost"). 0 or -1. */
int sw_parse_tcp_url(const char *url, char *host, size_t host_cap, int *port);

#endif
