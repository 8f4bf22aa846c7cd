/* Private to wire.c (framing, encoding, decoding) and wire_check.c (the
 * validation of decoded frames). */
#ifndef MIG_WIRE_INT_H
#define MIG_WIRE_INT_H

#include "wire.h"

/* Checks every field of a frame just decoded (a body is set) that the rest
 * of the library relies on. Returns false with a one-line reason, prefixed
 * with the body's name, in `why` (if not NULL). */
bool mig__wire_check(const mig__frame *f, char *why, size_t why_len);

#endif
