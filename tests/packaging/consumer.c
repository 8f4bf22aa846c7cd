/*
 * An out-of-tree program for the packaging test: built against the installed
 * headers and library found through pkg-config, exactly as a user would.
 * Prints one "key value" line per check and "consumer: OK" at the end.
 */
#include <migrate/migrate.h>
#include <migrate/client.h>

#include <stdio.h>
#include <string.h>

#define STR_(x) #x
#define STR(x) STR_(x)
#define HEADER_VERSION STR(MIG_VERSION_MAJOR) "." STR(MIG_VERSION_MINOR) "." STR(MIG_VERSION_PATCH)

int main(void)
{
	unsigned char secret[32];
	mig_engine_options opts;
	mig_engine *engine = NULL;
	const char *s;
	int failures = 0;
	int rc;
	size_t i;

	s = mig_version();
	printf("version %s\n", s ? s : "(null)");
	if (s == NULL || strcmp(s, HEADER_VERSION) != 0) {
		fprintf(stderr, "consumer: mig_version() is not the headers' %s\n", HEADER_VERSION);
		failures++;
	}

	s = mig_strerror(MIG_ENOUSER);
	printf("strerror %s\n", s ? s : "(null)");
	if (s == NULL || *s == '\0' || strcmp(s, "unknown error") == 0) {
		fprintf(stderr, "consumer: mig_strerror(MIG_ENOUSER) has no description\n");
		failures++;
	}

	s = mig_err_name(MIG_ENOUSER);
	printf("err_name %s\n", s ? s : "(null)");
	if (s == NULL || strcmp(s, "MIG_ENOUSER") != 0) {
		fprintf(stderr, "consumer: mig_err_name(MIG_ENOUSER) is not \"MIG_ENOUSER\"\n");
		failures++;
	}

	for (i = 0; i < sizeof(secret); i++)
		secret[i] = (unsigned char)(0xa5 ^ i);
	memset(&opts, 0, sizeof(opts));
	opts.secret = secret;
	opts.secret_len = sizeof(secret);
	rc = mig_engine_new(&engine, &opts);
	if (rc != 0 || engine == NULL) {
		printf("engine failed\n");
		fprintf(stderr, "consumer: mig_engine_new: %d (%s)\n", rc, mig_strerror(rc));
		failures++;
	} else {
		s = mig_engine_id(engine);
		if (s == NULL || *s == '\0') {
			printf("engine no-id\n");
			fprintf(stderr, "consumer: mig_engine_id() is empty\n");
			failures++;
		} else {
			printf("engine ok\n");
		}
		mig_engine_free(engine);
	}

	/* The reconnect helper links and validates its options. */
	{
		mig_client_options co;
		mig_client *client = NULL;
		memset(&co, 0, sizeof(co));
		co.url = "not a url";
		co.token = "AAAA";
		rc = mig_client_new(&client, &co);
		s = mig_client_state_name(MIG_CLIENT_ATTACHED);
		if (rc != MIG_EINVAL || client != NULL || s == NULL || strcmp(s, "ATTACHED") != 0) {
			printf("client failed\n");
			fprintf(stderr, "consumer: mig_client_new with a bad URL: %d\n", rc);
			failures++;
		} else {
			printf("client ok\n");
		}
	}

	printf("consumer: %s\n", failures ? "FAILED" : "OK");
	return failures ? 1 : 0;
}
