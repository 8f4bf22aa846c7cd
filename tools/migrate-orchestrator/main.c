/* migrate-orchestrator: the reference orchestrator.
 *
 * Engines started with an orchestrator URL connect to the engines port on
 * the announce channel (authenticated with the cluster secret by the
 * library's transport), announce themselves and send heartbeats. A poller
 * thread asks every known engine for its users over the control channel
 * (<migrate/control.h>); migrations asked for over the HTTP API run on
 * their own threads with mig_ctl_migrate(). Everything lands in an SQLite
 * registry owned by the main thread, which also serves the HTTP API, the
 * dashboard's files and a WebSocket that pushes the registry to dashboards
 * whenever it changes. orchestrator.h lists the modules and threads;
 * docs/ORCHESTRATOR.md describes running it. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <openssl/ssl.h>

#include "auth.h"
#include "orchestrator.h"

static volatile sig_atomic_t stop_requested;

static void on_signal(int sig)
{
	(void)sig;
	stop_requested = 1;
}

/* Every HOUSEKEEPING_MS: apply what the engines port and the workers
 * delivered, re-derive health, and publish any change. */
static void housekeeping(lws_sorted_usec_list_t *sul)
{
	struct orch *o = lws_container_of(sul, struct orch, sul);
	mig__evq_item *items = mig__evq_take_all(&o->events);
	while (items) {
		mig__evq_item *next = items->next;
		on_transport_event(o, (mig__tev *)items);
		mig__tev_free((mig__tev *)items);
		items = next;
	}
	drain_results(o);
	update_health(o);
	if (o->dirty) {
		update_targets(o);
		push_state(o);
		o->dirty = false;
	}
	lws_sul_schedule(o->ctx, 0, &o->sul, housekeeping, HOUSEKEEPING_MS * LWS_US_PER_MS);
}

/* ------------------------------------------------------------------ main */

static void usage(FILE *out)
{
	fprintf(out,
		"usage: migrate-orchestrator --secret-file FILE --token-file FILE [OPTIONS]\n"
		"\n"
		"The reference orchestrator: engines announce themselves on the engines port;\n"
		"operators use the dashboard and the JSON API on the HTTP port.\n"
		"\n"
		"options:\n"
		"  --secret-file FILE   the cluster secret (the engines' own; trailing newline\n"
		"                       ignored)\n"
		"  --token-file FILE    the operator token the API and the dashboard's\n"
		"                       WebSocket require (Authorization: Bearer TOKEN)\n"
		"  --engines-port P     where engines connect (default 7100; 0: any, printed)\n"
		"  --engines-listen A   address for the engines port (default 127.0.0.1)\n"
		"  --http-port P        the dashboard and API (default 8080; 0: any, printed)\n"
		"  --http-listen A      address for the HTTP port (default 127.0.0.1)\n"
		"  --db PATH            the SQLite registry (default migrate-orchestrator.db;\n"
		"                       \":memory:\" keeps nothing)\n"
		"  --static DIR         the dashboard's files (default " ORCH_STATIC_DIR ")\n"
		"  --misses N           heartbeats missed before an engine is unhealthy\n"
		"                       (default 3); a closed link makes it unhealthy at once\n"
		"  --gone-after N       heartbeats missed, disconnected, before it is gone\n"
		"                       (default 30)\n"
		"  --poll-ms MS         how often to ask engines for their users (default 1000)\n"
		"  --keep-migrations N  finished migrations kept in the registry with their\n"
		"                       events, the newest first (default 10000)\n"
		"  --tls-cert FILE      PEM certificate: serve both ports over TLS (wss://,\n"
		"                       https://); with --tls-key. Also the client certificate\n"
		"                       for engines that require one\n"
		"  --tls-key FILE       its PEM private key\n"
		"  --tls-ca FILE        PEM CA bundle that verifies wss:// engines (default:\n"
		"                       the system store)\n"
		"  --help               this text\n"
		"\n"
		"On start it prints \"engines ws://HOST:PORT\" and \"http http://HOST:PORT\"\n"
		"(wss:// and https:// with --tls-cert).\n"
		"Exit status: 0 after SIGINT/SIGTERM, 1 on a start-up failure, 2 on bad usage.\n");
}

static int read_file(const char *what, const char *path, void *buf, size_t cap, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f) {
		fprintf(stderr, "migrate-orchestrator: cannot read %s %s: %s\n", what, path,
			strerror(errno));
		return -1;
	}
	size_t n = fread(buf, 1, cap, f);
	int err = ferror(f);
	fclose(f);
	char *c = buf;
	if (err || n == cap) {
		fprintf(stderr, "migrate-orchestrator: %s %s: unreadable or longer than %zu bytes\n",
			what, path, cap - 1);
		return -1;
	}
	while (n && (c[n - 1] == '\n' || c[n - 1] == '\r'))
		n--;
	*len = n;
	return 0;
}

static int parse_uint(const char *s, unsigned long max, unsigned *out)
{
	char *end;
	errno = 0;
	unsigned long v = strtoul(s, &end, 10);
	if (errno || !*s || *end || v > max)
		return -1;
	*out = (unsigned)v;
	return 0;
}

int main(int argc, char **argv)
{
	static struct orch orch;
	struct orch *o = &orch;
	const char *secret_file = NULL, *token_file = NULL, *db_path = "migrate-orchestrator.db";
	const char *engines_listen = "127.0.0.1", *http_listen = "127.0.0.1";
	const char *static_dir = ORCH_STATIC_DIR;
	unsigned engines_port = 7100, http_port = 8080;
	o->misses = 3;
	o->gone_misses = 30;
	o->poll_ms = 1000;
	o->keep_migrations = 10000;
	static const struct option longopts[] = {
		{"secret-file", required_argument, NULL, 's'},
		{"token-file", required_argument, NULL, 't'},
		{"engines-port", required_argument, NULL, 'e'},
		{"engines-listen", required_argument, NULL, 'E'},
		{"http-port", required_argument, NULL, 'p'},
		{"http-listen", required_argument, NULL, 'P'},
		{"db", required_argument, NULL, 'd'},
		{"static", required_argument, NULL, 'S'},
		{"misses", required_argument, NULL, 'm'},
		{"gone-after", required_argument, NULL, 'g'},
		{"poll-ms", required_argument, NULL, 'l'},
		{"keep-migrations", required_argument, NULL, 'k'},
		{"tls-cert", required_argument, NULL, 'c'},
		{"tls-key", required_argument, NULL, 'K'},
		{"tls-ca", required_argument, NULL, 'C'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	int opt;
	while ((opt = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		int bad = 0;
		switch (opt) {
		case 's':
			secret_file = optarg;
			break;
		case 't':
			token_file = optarg;
			break;
		case 'e':
			bad = parse_uint(optarg, 65535, &engines_port);
			break;
		case 'E':
			engines_listen = optarg;
			break;
		case 'p':
			bad = parse_uint(optarg, 65535, &http_port);
			break;
		case 'P':
			http_listen = optarg;
			break;
		case 'd':
			db_path = optarg;
			break;
		case 'S':
			static_dir = optarg;
			break;
		case 'm':
			bad = parse_uint(optarg, 1000, &o->misses) || o->misses < 1;
			break;
		case 'g':
			bad = parse_uint(optarg, 100000, &o->gone_misses) || o->gone_misses < 1;
			break;
		case 'l':
			bad = parse_uint(optarg, 3600000, &o->poll_ms) || o->poll_ms < 50;
			break;
		case 'k':
			bad = parse_uint(optarg, 100000000, &o->keep_migrations) ||
			      o->keep_migrations < 1;
			break;
		case 'c':
			o->tls_cert = optarg;
			break;
		case 'K':
			o->tls_key = optarg;
			break;
		case 'C':
			o->tls_ca = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
		if (bad) {
			fprintf(stderr, "migrate-orchestrator: bad value \"%s\" for %s\n", optarg,
				argv[optind - 1]);
			return 2;
		}
	}
	if (optind != argc || !secret_file || !token_file) {
		usage(stderr);
		return 2;
	}
	if (!o->tls_cert != !o->tls_key) {
		fprintf(stderr, "migrate-orchestrator: --tls-cert and --tls-key go together\n");
		return 2;
	}
	const char *tls_files[] = {o->tls_cert, o->tls_key, o->tls_ca};
	for (size_t i = 0; i < 3; i++) {
		if (tls_files[i] && access(tls_files[i], R_OK) != 0) {
			fprintf(stderr, "migrate-orchestrator: cannot read %s: %s\n", tls_files[i],
				strerror(errno));
			return 1;
		}
	}
	if (read_file("secret", secret_file, o->secret, sizeof(o->secret), &o->secret_len) ||
	    read_file("token", token_file, o->token, sizeof(o->token), &o->token_len))
		return 1;
	if (o->secret_len < MIG__AUTH_MIN_SECRET) {
		fprintf(stderr, "migrate-orchestrator: the secret must be at least %d bytes\n",
			MIG__AUTH_MIN_SECRET);
		return 1;
	}
	o->token[o->token_len] = '\0';
	if (o->token_len < 16 || strlen(o->token) != o->token_len) {
		fprintf(stderr, "migrate-orchestrator: the token must be at least 16 bytes of text\n");
		return 1;
	}
	if (!realpath(static_dir, o->static_dir)) {
		fprintf(stderr, "migrate-orchestrator: --static %s: %s\n", static_dir,
			strerror(errno));
		return 1;
	}

	char *errmsg = NULL;
	if (sqlite3_open(db_path, &o->db) != SQLITE_OK ||
	    sqlite3_exec(o->db, registry_schema, NULL, NULL, &errmsg) != SQLITE_OK) {
		fprintf(stderr, "migrate-orchestrator: registry %s: %s\n", db_path,
			errmsg ? errmsg : sqlite3_errmsg(o->db));
		sqlite3_free(errmsg);
		sqlite3_close(o->db);
		return 1;
	}
	sqlite3_exec(o->db, "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL", NULL, NULL,
		     NULL);
	prune_history(o);

	pthread_mutex_init(&o->lock, NULL);
	pthread_cond_init(&o->cond, NULL);
	int status = 1;
	if (mig__evq_init(&o->events) != 0) {
		fprintf(stderr, "migrate-orchestrator: cannot create the event queue\n");
		goto out_db;
	}

	SSL_CTX *http_client_ctx = NULL; /* freed at out_evq */
	/* The engines port first: libmigrate's transport checks the TLS
	 * certificate and key (OpenSSL's reason in `err`) before any lws
	 * context sees them; lws_create_context() leaks on a pair it refuses. */
	mig__transport_cfg cfg;
	memset(&cfg, 0, sizeof(cfg));
	cfg.listen = true;
	cfg.listen_address = engines_listen;
	cfg.listen_port = (int)engines_port;
	cfg.secret = o->secret;
	cfg.secret_len = o->secret_len;
	cfg.engine_id = "orchestrator";
	cfg.max_frame = 64 * 1024;
	cfg.accept_channels = 1u << MIGWIRE__CHANNEL__CHANNEL_ANNOUNCE;
	cfg.events = &o->events;
	cfg.log_level = MIG_LOG_WARN;
	cfg.name = "engines";
	cfg.tls_cert_file = o->tls_cert;
	cfg.tls_key_file = o->tls_key;
	cfg.tls_ca_file = o->tls_ca;
	char err[200] = "";
	if (mig__transport_new(&o->tp, &cfg, err, sizeof(err)) != 0 ||
	    mig__transport_start(o->tp) != 0) {
		fprintf(stderr, "migrate-orchestrator: engines port %s:%u: %s\n", engines_listen,
			engines_port, err[0] ? err : "cannot start");
		mig__transport_free(o->tp);
		goto out_evq;
	}
	struct lws_context_creation_info info;
	memset(&info, 0, sizeof(info));
	info.port = (int)http_port;
	info.iface = http_listen;
	info.protocols = orch_protocols;
	info.user = o;
	info.gid = -1;
	info.uid = -1;
	if (o->tls_cert) {
		info.options |= LWS_SERVER_OPTION_DO_SSL_GLOBAL_INIT;
		info.ssl_cert_filepath = o->tls_cert;
		info.ssl_private_key_filepath = o->tls_key;
		/* libwebsockets 4.1 also gives a TLS vhost a client SSL_CTX,
		 * loads the system CA store into it and does not free it when
		 * the context is destroyed (LeakSanitizer: 0.7 MB at exit).
		 * This context connects nowhere: it gets an empty one of ours,
		 * which lws leaves alone and which is freed after it. */
		http_client_ctx = SSL_CTX_new(TLS_client_method());
		if (!http_client_ctx) {
			fprintf(stderr, "migrate-orchestrator: cannot initialise TLS\n");
			goto out_tp;
		}
		info.provided_client_ssl_ctx = http_client_ctx;
	}
	o->ws_protocol = &orch_protocols[1];
	o->ctx = lws_create_context(&info);
	if (!o->ctx) {
		fprintf(stderr, "migrate-orchestrator: cannot listen on %s:%u\n", http_listen,
			http_port);
		goto out_tp;
	}
	struct lws_vhost *vh = lws_get_vhost_by_name(o->ctx, "default");
	int real_http_port = vh ? lws_get_vhost_listen_port(vh) : (int)http_port;

	if (pthread_create(&o->poller, NULL, poller_main, o) != 0) {
		fprintf(stderr, "migrate-orchestrator: cannot start the poller\n");
		goto out_tp;
	}
	o->poller_started = true;

	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);

	const char *ws = o->tls_cert ? "wss" : "ws", *http = o->tls_cert ? "https" : "http";
	printf("engines %s://%s:%d\nhttp %s://%s:%d\n", ws, engines_listen,
	       mig__transport_port(o->tp), http, http_listen, real_http_port);
	fflush(stdout);
	o->dirty = true;
	lws_sul_schedule(o->ctx, 0, &o->sul, housekeeping, 1);
	while (!stop_requested)
		if (lws_service(o->ctx, 0) < 0)
			break;
	status = 0;

	pthread_mutex_lock(&o->lock);
	o->stopping = true;
	pthread_cond_broadcast(&o->cond);
	pthread_mutex_unlock(&o->lock);
	pthread_join(o->poller, NULL);
	/* Migrations in flight: their threads end by their own timeouts;
	 * wait for them so nothing is left running. */
	while (o->jobs) {
		drain_results(o);
		if (o->jobs)
			usleep(20000);
	}
out_tp:
	mig__transport_free(o->tp);
	lws_sul_cancel(&o->sul);
	lws_context_destroy(o->ctx);
	drain_results(o); /* poller results posted after the last service */
out_evq:
	SSL_CTX_free(http_client_ctx);
	mig__evq_destroy(&o->events, mig__tev_free_item);
out_db:
	while (o->aconns)
		aconn_remove(o, o->aconns->conn);
	for (size_t i = 0; i < o->ntargets; i++) {
		free(o->targets[i].id);
		free(o->targets[i].url);
	}
	free(o->targets);
	free(o->state);
	sqlite3_close(o->db);
	pthread_cond_destroy(&o->cond);
	pthread_mutex_destroy(&o->lock);
	memset(o->secret, 0, sizeof(o->secret));
	return status;
}

