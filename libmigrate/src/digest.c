/* Incremental SHA-256 over OpenSSL EVP. */
#include <errno.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "digest.h"

struct mig__sha256 {
	EVP_MD_CTX *ctx;
};

mig__sha256 *mig__sha256_new(void)
{
	mig__sha256 *h = mig__calloc(1, sizeof(*h));
	if (!h)
		return NULL;
	h->ctx = EVP_MD_CTX_new();
	if (!h->ctx || EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1) {
		mig__sha256_free(h);
		return NULL;
	}
	return h;
}

void mig__sha256_free(mig__sha256 *h)
{
	if (!h)
		return;
	EVP_MD_CTX_free(h->ctx);
	mig__free(h);
}

int mig__sha256_update(mig__sha256 *h, const void *data, size_t len)
{
	return EVP_DigestUpdate(h->ctx, data, len) == 1 ? 0 : MIG_ESYSTEM;
}

int mig__sha256_peek(const mig__sha256 *h, uint8_t out[32])
{
	EVP_MD_CTX *copy = EVP_MD_CTX_new();
	unsigned int n = 0;
	int ok = copy && EVP_MD_CTX_copy_ex(copy, h->ctx) == 1 &&
		 EVP_DigestFinal_ex(copy, out, &n) == 1 && n == 32;
	EVP_MD_CTX_free(copy);
	return ok ? 0 : MIG_ESYSTEM;
}

int mig__sha256_file(int fd, uint64_t limit, mig__sha256 **out)
{
	*out = NULL;
	mig__sha256 *h = mig__sha256_new();
	uint8_t *buf = mig__malloc(256 * 1024);
	if (!h || !buf) {
		mig__sha256_free(h);
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
			mig__sha256_free(h);
			mig__free(buf);
			return MIG_EIO;
		}
		if (n == 0)
			break;
		mig__sha256_update(h, buf, (size_t)n);
		off += (uint64_t)n;
	}
	mig__free(buf);
	*out = h;
	return 0;
}
