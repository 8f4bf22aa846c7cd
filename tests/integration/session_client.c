/* A client process for test_session: the reconnect helper of
 * <migrate/client.h> and nothing else of the library. It prints one line per
 * state change and per redirect on stdout:
 *
 *   state CONNECTING error=MIG_OK detail=ws://127.0.0.1:41000
 *   state ATTACHED error=MIG_OK detail=engine-a ws://127.0.0.1:41000 app=tcp://...
 *   redirect user=user-001 app=tcp://... session=ws://... engine=engine-b
 *   state FAILED error=MIG_EEXIST detail=token already used
 *
 * and runs until its stdin closes (or reads "quit"). "attach URL TOKEN" on
 * stdin starts over with a new token.
 *
 *   session_client --url URL --token TOKEN [--user USER] [--fallback URL]...
 *                  [--backoff-initial MS] [--backoff-max MS] [--jitter PCT]
 *                  [--max-attempts N] [--connect-timeout MS]
 *                  [--ca PEM] [--cert PEM --key PEM] */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <migrate/client.h>

#define MAX_FALLBACKS 8
#define WATCHDOG_S 300

static void on_state(mig_client *c, mig_client_state st, int error, const char *detail, void *ud)
{
	(void)ud;
	if (st == MIG_CLIENT_ATTACHED)
		printf("state %s error=%s detail=%s app=%s\n", mig_client_state_name(st),
		       mig_err_name(error), detail,
		       mig_client_app_url(c)[0] ? mig_client_app_url(c) : "-");
	else
		printf("state %s error=%s detail=%s\n", mig_client_state_name(st),
		       mig_err_name(error), detail);
	fflush(stdout);
}

static void on_redirect(mig_client *c, const mig_client_redirect *r, void *ud)
{
	(void)c;
	(void)ud;
	printf("redirect user=%s app=%s session=%s engine=%s\n", r->user,
	       r->app_url[0] ? r->app_url : "-", r->session_url, r->engine_id);
	fflush(stdout);
}

static void usage(void)
{
	fprintf(stderr, "usage: session_client --url URL --token TOKEN [--user USER] "
			"[--fallback URL]... [--backoff-initial MS] [--backoff-max MS] "
			"[--jitter PCT] [--max-attempts N] [--connect-timeout MS] "
			"[--ca PEM] [--cert PEM --key PEM]\n");
	exit(64);
}

int main(int argc, char **argv)
{
	mig_client_options o;
	const char *fallbacks[MAX_FALLBACKS];
	memset(&o, 0, sizeof(o));
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i];
		if (i + 1 >= argc)
			usage();
		const char *v = argv[++i];
		if (strcmp(a, "--url") == 0)
			o.url = v;
		else if (strcmp(a, "--token") == 0)
			o.token = v;
		else if (strcmp(a, "--user") == 0)
			o.user = v;
		else if (strcmp(a, "--fallback") == 0 && o.fallback_count < MAX_FALLBACKS)
			fallbacks[o.fallback_count++] = v;
		else if (strcmp(a, "--backoff-initial") == 0)
			o.backoff_initial_ms = (unsigned)atoi(v);
		else if (strcmp(a, "--backoff-max") == 0)
			o.backoff_max_ms = (unsigned)atoi(v);
		else if (strcmp(a, "--jitter") == 0)
			o.jitter_percent = atoi(v);
		else if (strcmp(a, "--max-attempts") == 0)
			o.max_attempts = (unsigned)atoi(v);
		else if (strcmp(a, "--connect-timeout") == 0)
			o.connect_timeout_ms = (unsigned)atoi(v);
		else if (strcmp(a, "--ca") == 0)
			o.tls_ca_file = v;
		else if (strcmp(a, "--cert") == 0)
			o.tls_cert_file = v;
		else if (strcmp(a, "--key") == 0)
			o.tls_key_file = v;
		else
			usage();
	}
	o.fallback_urls = fallbacks;
	o.on_state = on_state;
	o.on_redirect = on_redirect;
	setvbuf(stdout, NULL, _IOLBF, 0);

	mig_client *c = NULL;
	int rc = mig_client_new(&c, &o);
	if (rc) {
		printf("error %s\n", mig_err_name(rc));
		return 1;
	}
	time_t end = time(NULL) + WATCHDOG_S;
	char line[2048];
	size_t have = 0;
	int stdin_open = 1;
	while (stdin_open && time(NULL) < end) {
		struct pollfd p[2] = {{mig_client_fd(c), POLLIN, 0}, {0, POLLIN, 0}};
		if (poll(p, 2, 1000) < 0 && errno != EINTR)
			break;
		mig_client_dispatch(c);
		if (!(p[1].revents & (POLLIN | POLLHUP)))
			continue;
		ssize_t n = read(0, line + have, sizeof(line) - 1 - have);
		if (n <= 0) {
			stdin_open = 0;
			break;
		}
		have += (size_t)n;
		line[have] = '\0';
		char *nl;
		while ((nl = strchr(line, '\n'))) {
			*nl = '\0';
			char url[1024], token[1024];
			if (strcmp(line, "quit") == 0) {
				stdin_open = 0;
			} else if (sscanf(line, "attach %1023s %1023s", url, token) == 2) {
				rc = mig_client_attach(c, url, token);
				if (rc)
					printf("error attach %s\n", mig_err_name(rc));
			}
			size_t rest = have - (size_t)(nl + 1 - line);
			memmove(line, nl + 1, rest + 1);
			have = rest;
		}
		if (have == sizeof(line) - 1)
			have = 0; /* a line too long: dropped */
	}
	mig_client_free(c);
	return 0;
}
