/* Incremental XXH3-128 over libxxhash's streaming API. */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include <xxhash.h>

#include "digest.h"

struct mig__digest {
	XXH3_state_t *st;
};

mig__digest *mig__digest_new(void)
{
	mig__digest *h = mig__calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	/* XXH3_createState uses XXH_malloc (libc malloc, 64-byte aligned
	 * inside); the state is about 600 bytes. */
	h->st = XXH3_createState();
	if (!h->st || XXH3_128bits_reset(h->st) != XXH_OK) {
		mig__digest_free(h);
		return NULL;
	}
	return h;
}

void mig__digest_free(mig__digest *h)
{
	if (!h)
		return;
	XXH3_freeState(h->st);
	mig__free(h);
}

int mig__digest_update(mig__digest *h, const void *data, size_t len)
{
	return XXH3_128bits_update(h->st, data, len) == XXH_OK ? 0 : MIG_ESYSTEM;
}

int mig__digest_peek(const mig__digest *h, uint8_t out[MIG__DIGEST_LEN])
{
	/* XXH3_128bits_digest does not change the state. */
	XXH128_canonical_t c;
	XXH128_canonicalFromHash(&c, XXH3_128bits_digest(h->st));
	memcpy(out, c.digest, MIG__DIGEST_LEN);
	return 0;
}

int mig__digest_file(int fd, uint64_t limit, mig__digest **out)
{
	*out = NULL;
	mig__digest *h = mig__digest_new();
	uint8_t *buf = mig__malloc(256 * 1024);
	if (!h || !buf) {
		mig__digest_free(h);
		mig__free(buf);
		return MIG_ENOMEM;
	}
	uint64_t off = 0;
	while (off < limit) {
		size_t want = 256 * 1024;
		if (limit - off < want)
			want = (size_t)(limit - off);
		ssize_t n = pread(fd, buf, want, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			mig__digest_free(h);
			mig__free(buf);
			return MIG_EIO;
		}
		if (n == 0)
			break;
		mig__digest_update(h, buf, (size_t)n);
		off += (uint64_t)n;
	}
	mig__free(buf);
	*out = h;
	return 0;
}
