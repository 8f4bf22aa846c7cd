/* Fuzz target: the frame decoder (wire.c), the one place where bytes from
 * the network become frames.
 *
 * Properties, besides "no crash, no leak, no undefined behaviour":
 * - a message over the cap is MIG_ETOOBIG; a failure leaves *out NULL and
 *   a reason, and is one of the documented codes;
 * - round trip: a frame that decodes re-encodes (mig__wire_encode), the
 *   encoding decodes again to the same kind of frame, and encoding that
 *   gives the same bytes (the canonical form is a fixed point). */
#include <string.h>

#include "fuzz.h"
#include "wire.h"

#define FRAME_CAP (1024u * 1024)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char why[256];
	mig__frame *f = (mig__frame *)1;

	if (size > 1) {
		/* One byte over a cap is refused before anything is parsed (a
		 * cap of 0 means none). */
		FUZZ_CHECK(mig__wire_decode(data, size, size - 1, &f, why, sizeof(why)) ==
			   MIG_ETOOBIG);
		FUZZ_CHECK(f == NULL);
	}

	int rc = mig__wire_decode(data, size, FRAME_CAP, &f, why, sizeof(why));
	if (rc != 0) {
		FUZZ_CHECK(f == NULL);
		FUZZ_CHECK(rc == MIG_EPROTO || rc == MIG_ETOOBIG || rc == MIG_ENOMEM);
		FUZZ_CHECK(why[0] != '\0');
		FUZZ_CHECK(memchr(why, '\0', sizeof(why)) != NULL);
		if (size > FRAME_CAP)
			FUZZ_CHECK(rc == MIG_ETOOBIG);
		return 0;
	}
	FUZZ_CHECK(f != NULL);
	FUZZ_CHECK(why[0] == '\0');
	FUZZ_CHECK(f->body_case != MIGWIRE__FRAME__BODY__NOT_SET);
	const char *name = mig__wire_body_name(f);
	FUZZ_CHECK(strcmp(name, "unknown") != 0 && strcmp(name, "none") != 0);

	mig__msg *m1 = NULL, *m2 = NULL;
	FUZZ_CHECK(mig__wire_encode(f, 0, &m1) == 0);
	FUZZ_CHECK(m1 != NULL && m1->len > 0);
	if (m1->len > 1) {
		mig__msg *small = (mig__msg *)1;
		FUZZ_CHECK(mig__wire_encode(f, m1->len - 1, &small) == MIG_ETOOBIG);
		FUZZ_CHECK(small == NULL);
	}

	mig__frame *g = NULL;
	rc = mig__wire_decode(mig__msg_payload(m1), m1->len, 0, &g, why, sizeof(why));
	if (rc != 0)
		fprintf(stderr, "re-decoding a %zu-byte %s frame: %d %s\n", m1->len, name, rc, why);
	FUZZ_CHECK(rc == 0);
	FUZZ_CHECK(g->body_case == f->body_case);
	FUZZ_CHECK(mig__wire_encode(g, 0, &m2) == 0);
	FUZZ_CHECK(m2->len == m1->len);
	FUZZ_CHECK(memcmp(mig__msg_payload(m1), mig__msg_payload(m2), m1->len) == 0);

	mig__msg_free(m1);
	mig__msg_free(m2);
	mig__wire_free(g);
	mig__wire_free(f);
	return 0;
}
