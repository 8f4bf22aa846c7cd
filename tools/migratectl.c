/* migratectl: the orchestrator's command line over an engine's control
 * channel.
 *
 *   migratectl --engine URL --secret-file FILE migrate USER --to URL
 *   migratectl --engine URL --secret-file FILE users
 *   migratectl --engine URL --secret-file FILE watch [--count N] [--timeout S]
 *
 * Exit codes: 0 success (migrate: committed); 1 the migration aborted;
 * 2 usage error; 3 cannot connect or authenticate; 4 timed out. */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <migrate/control.h>

enum {
	EXIT_ABORTED = 1,
	EXIT_USAGE = 2,
	EXIT_CONNECT = 3,
	EXIT_TIMEOUT = 4,
};

static void usage(FILE *out)
{
	fprintf(out,
		"usage: migratectl --engine URL (--secret-file FILE | --insecure) COMMAND\n"
		"\n"
		"commands:\n"
		"  migrate USER --to URL   move USER to the engine at URL; waits for the end\n"
		"  users                   list the engine's users and their states\n"
		"  watch [--count N]       print the engine's events as they happen\n"
		"\n"
		"options:\n"
		"  --engine URL        the engine to talk to (ws://host:port or wss://...)\n"
		"  --secret-file FILE  file holding the cluster secret (trailing newline ignored)\n"
		"  --insecure          connect without authentication (engines started so)\n"
		"  --ca FILE           CA bundle to verify a wss:// engine\n"
		"  --timeout SECONDS   give up after this long (default 60)\n"
		"  --help              this text\n"
		"\n"
		"exit codes:\n"
		"  0  success (migrate: the user was committed to the destination)\n"
		"  1  the migration aborted; the user stays at the source\n"
		"  2  usage error\n"
		"  3  cannot connect to or authenticate with the engine\n"
		"  4  timed out\n");
}

static int read_secret(const char *path, char *buf, size_t cap, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		fprintf(stderr, "migratectl: cannot read %s: %s\n", path, strerror(errno));
		return -1;
	}
	size_t n = fread(buf, 1, cap, f);
	int err = ferror(f);
	fclose(f);
	if (err || n == cap) {
		fprintf(stderr, "migratectl: %s: unreadable or longer than %zu bytes\n", path, cap - 1);
		return -1;
	}
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		n--;
	*len = n;
	return 0;
}

static const char *state_name(mig_user_state s)
{
	switch (s) {
	case MIG_USER_ACTIVE:
		return "active";
	case MIG_USER_MIGRATING:
		return "migrating";
	case MIG_USER_PAUSED:
		return "paused";
	case MIG_USER_INCOMING:
		return "incoming";
	case MIG_USER_PARKED:
		return "parked";
	default:
		return "absent";
	}
}

static const char *event_name(mig_event_type t)
{
	static const char *const names[] = {"started",   "prepared",  "committed", "aborted",
					    "incoming",  "activated", "dropped"};
	return (unsigned)t < sizeof(names) / sizeof(names[0]) ? names[t] : "event";
}

static void print_user(const char *user, mig_user_state state, void *ud)
{
	(void)ud;
	printf("%s\t%s\n", user, state_name(state));
}

static void print_progress(const mig_event *ev, void *ud)
{
	(void)ud;
	if (ev->type == MIG_EVENT_STARTED || ev->type == MIG_EVENT_PREPARED)
	{
		printf("%s %s (migration %s)\n", event_name(ev->type), ev->user, ev->mid);
		fflush(stdout);
	}
}

static int print_event(const mig_event *ev, void *ud)
{
	long *left = ud;
	printf("%s user=%s mid=%s peer=%s bytes_sent=%llu bytes_received=%llu duration_ms=%.3f "
	       "downtime_ms=%.3f%s%s\n",
	       event_name(ev->type), ev->user, ev->mid, ev->peer_url,
	       (unsigned long long)ev->bytes_sent, (unsigned long long)ev->bytes_received,
	       ev->duration_us / 1000.0, ev->downtime_us / 1000.0, ev->error ? " error=" : "",
	       ev->error ? mig_err_name(ev->error) : "");
	fflush(stdout);
	return *left > 0 && --*left == 0;
}

static int exit_for(int rc)
{
	switch (rc) {
	case 0:
		return 0;
	case MIG_ETIMEDOUT:
		return EXIT_TIMEOUT;
	case MIG_ECONNECT:
	case MIG_EAUTH:
	case MIG_ETLS:
	case MIG_EVERSION:
		return EXIT_CONNECT;
	default:
		return EXIT_ABORTED;
	}
}

int main(int argc, char **argv)
{
	const char *engine = NULL, *secret_file = NULL, *to = NULL, *ca = NULL;
	int insecure = 0;
	long timeout_s = 60, count = 0;
	static const struct option longopts[] = {
		{"engine", required_argument, NULL, 'e'},
		{"secret-file", required_argument, NULL, 's'},
		{"insecure", no_argument, NULL, 'i'},
		{"to", required_argument, NULL, 't'},
		{"ca", required_argument, NULL, 'c'},
		{"timeout", required_argument, NULL, 'T'},
		{"count", required_argument, NULL, 'n'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	int opt;
	while ((opt = getopt_long(argc, argv, "+e:s:t:c:T:n:h", longopts, NULL)) != -1) {
		switch (opt) {
		case 'e':
			engine = optarg;
			break;
		case 's':
			secret_file = optarg;
			break;
		case 'i':
			insecure = 1;
			break;
		case 't':
			to = optarg;
			break;
		case 'c':
			ca = optarg;
			break;
		case 'T':
			timeout_s = strtol(optarg, NULL, 10);
			break;
		case 'n':
			count = strtol(optarg, NULL, 10);
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	/* Options may also follow the command ("migrate USER --to URL"). */
	const char *cmd = optind < argc ? argv[optind++] : NULL;
	const char *user = NULL;
	if (cmd && strcmp(cmd, "migrate") == 0 && optind < argc && argv[optind][0] != '-')
		user = argv[optind++];
	while ((opt = getopt_long(argc, argv, "e:s:t:c:T:n:h", longopts, NULL)) != -1) {
		switch (opt) {
		case 't':
			to = optarg;
			break;
		case 'T':
			timeout_s = strtol(optarg, NULL, 10);
			break;
		case 'n':
			count = strtol(optarg, NULL, 10);
			break;
		case 'e':
			engine = optarg;
			break;
		case 's':
			secret_file = optarg;
			break;
		case 'c':
			ca = optarg;
			break;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (!cmd || !engine || (!secret_file && !insecure) || timeout_s <= 0 ||
	    timeout_s > 24 * 3600) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (strcmp(cmd, "migrate") == 0 && (!user || !to)) {
		fprintf(stderr, "migratectl: migrate needs USER and --to URL\n");
		return EXIT_USAGE;
	}
	if (strcmp(cmd, "migrate") && strcmp(cmd, "users") && strcmp(cmd, "watch")) {
		fprintf(stderr, "migratectl: unknown command '%s'\n", cmd);
		usage(stderr);
		return EXIT_USAGE;
	}

	char secret[4096];
	size_t secret_len = 0;
	if (secret_file && read_secret(secret_file, secret, sizeof(secret), &secret_len) != 0)
		return EXIT_USAGE;
	mig_ctl_options o = {0};
	o.url = engine;
	o.secret = secret_file ? secret : NULL;
	o.secret_len = secret_len;
	o.allow_insecure = insecure;
	o.tls_ca_file = ca;
	o.timeout_ms = (unsigned)(timeout_s > 10 ? 10000 : timeout_s * 1000);
	mig_ctl *ctl = NULL;
	char err[256];
	int rc = mig_ctl_new(&ctl, &o, err, sizeof(err));
	memset(secret, 0, sizeof(secret));
	if (rc) {
		fprintf(stderr, "migratectl: cannot connect to %s: %s (%s)\n", engine, err,
			mig_err_name(rc));
		return exit_for(rc) ? exit_for(rc) : EXIT_CONNECT;
	}

	int status = 0;
	if (strcmp(cmd, "users") == 0) {
		rc = mig_ctl_users(ctl, print_user, NULL);
		if (rc < 0) {
			fprintf(stderr, "migratectl: users: %s\n", mig_ctl_last_error(ctl));
			status = exit_for(rc);
		}
	} else if (strcmp(cmd, "watch") == 0) {
		rc = mig_ctl_watch(ctl, (int)(timeout_s * 1000), print_event, &count);
		if (rc && !(rc == MIG_ETIMEDOUT && count <= 0)) {
			fprintf(stderr, "migratectl: watch: %s\n",
				mig_ctl_last_error(ctl)[0] ? mig_ctl_last_error(ctl) : mig_strerror(rc));
			status = exit_for(rc);
		}
	} else {
		mig_event final;
		rc = mig_ctl_migrate(ctl, user, to, (unsigned)(timeout_s * 1000), print_progress, NULL,
				     &final);
		if (rc == 0) {
			printf("committed %s -> %s: %llu bytes sent, %llu received, %.3f ms total, "
			       "%.3f ms downtime\n",
			       user, to, (unsigned long long)final.bytes_sent,
			       (unsigned long long)final.bytes_received, final.duration_us / 1000.0,
			       final.downtime_us / 1000.0);
		} else {
			fprintf(stderr, "migratectl: migration of %s to %s failed: %s (%s)\n", user, to,
				mig_ctl_last_error(ctl)[0] ? mig_ctl_last_error(ctl) : mig_strerror(rc),
				mig_err_name(rc));
			status = exit_for(rc);
		}
	}
	mig_ctl_free(ctl);
	return status;
}
