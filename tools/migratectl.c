/* migratectl: the orchestrator's command line over an engine's control
 * channel.
 *
 *   migratectl --engine URL --secret-file FILE users
 *   migratectl --engine URL --secret-file FILE status [--json]
 *   migratectl --engine URL --secret-file FILE migrate USER --to URL [--json]
 *   migratectl --engine URL --secret-file FILE watch [--count N] [--json]
 *   migratectl --engine URL --secret-file FILE cancel MID|USER
 *   migratectl --engine URL --secret-file FILE replicate USER --to URL
 *   migratectl --engine URL --secret-file FILE promote USER
 *
 * migrate draws a one-line progress bar on a terminal, prints one plain line
 * per event otherwise, and one JSON object per line with --json. Exit codes
 * are in usage() and tools/migratectl.1. */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <migrate/control.h>

enum {
	EXIT_ABORTED = 1,
	EXIT_USAGE = 2,
	EXIT_CONNECT = 3,
	EXIT_TIMEOUT = 4,
	EXIT_REFUSED = 5,
};

static void usage(FILE *out)
{
	fprintf(out,
		"usage: migratectl --engine URL (--secret-file FILE | --insecure) [OPTIONS] "
		"COMMAND\n"
		"\n"
		"commands:\n"
		"  users                   list the engine's users and their states\n"
		"  status                  the engine's identity, users by state, migrations in\n"
		"                          flight with their progress, and totals\n"
		"  migrate USER --to URL   move USER to the engine at URL and wait for the end;\n"
		"                          a progress bar on a terminal, one line per event "
		"otherwise\n"
		"  watch [--count N]       print the engine's events as they happen\n"
		"  cancel MID|USER         cancel a migration (by id, or by the user it moves)\n"
		"                          before its commit decision\n"
		"  replicate USER --to URL keep the standby engine at URL up to date with USER's\n"
		"                          light state (docs/FAILOVER.md); --to none stops it\n"
		"  promote USER            on a standby: make its replica of USER the active user\n"
		"\n"
		"options:\n"
		"  --engine URL        the engine to talk to (ws://host:port or wss://...)\n"
		"  --secret-file FILE  file holding the cluster secret (trailing newline ignored)\n"
		"  --insecure          connect without authentication (engines started so)\n"
		"  --ca FILE           CA bundle to verify a wss:// engine\n"
		"  --cert FILE --key FILE  client certificate, for engines that require one\n"
		"  --timeout SECONDS   give up after this long (default 60)\n"
		"  --count N           watch: stop after N events\n"
		"  --json              machine-readable output: one JSON object per line\n"
		"  --help              this text\n"
		"\n"
		"exit codes:\n"
		"  0  success (migrate: the user was committed to the destination;\n"
		"     cancel: the cancel was requested)\n"
		"  1  the migration aborted or failed; the user stays at the source\n"
		"  2  usage error\n"
		"  3  cannot connect to or authenticate with the engine, or the connection was "
		"lost\n"
		"  4  timed out\n"
		"  5  the engine refused the request: no such user or migration, or not allowed\n"
		"     in its state (e.g. cancel after the commit decision)\n"
		"\n"
		"The Prometheus metrics of an engine are at http://HOST:PORT/metrics (see "
		"migratectl(1)).\n");
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
		fprintf(stderr, "migratectl: %s: unreadable or longer than %zu bytes\n", path,
			cap - 1);
		return -1;
	}
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		n--;
	*len = n;
	return 0;
}

/* ------------------------------------------------------------------ formatting */

/* "512 B", "12.0 KiB", "48.2 MiB", "1.50 GiB". */
static const char *human_bytes(uint64_t n, char *buf, size_t len)
{
	static const char *const units[] = {"KiB", "MiB", "GiB", "TiB"};
	if (n < 1024) {
		snprintf(buf, len, "%" PRIu64 " B", n);
		return buf;
	}
	double v = (double)n / 1024.0;
	size_t u = 0;
	while (v >= 1024.0 && u + 1 < sizeof(units) / sizeof(units[0])) {
		v /= 1024.0;
		u++;
	}
	snprintf(buf, len, v < 10 && u >= 2 ? "%.2f %s" : "%.1f %s", v, units[u]);
	return buf;
}

static const char *human_duration(uint64_t us, char *buf, size_t len)
{
	double s = (double)us / 1e6;
	if (s < 60)
		snprintf(buf, len, "%.1f s", s);
	else if (s < 3600)
		snprintf(buf, len, "%dm%02ds", (int)(s / 60), (int)s % 60);
	else
		snprintf(buf, len, "%dh%02dm", (int)(s / 3600), (int)(s / 60) % 60);
	return buf;
}

/* A JSON string: quotes, backslashes and control characters escaped; valid
 * UTF-8 passes through, any other byte becomes U+FFFD. */
static void json_string(FILE *out, const char *s)
{
	const unsigned char *p = (const unsigned char *)(s ? s : "");
	fputc('"', out);
	while (*p) {
		unsigned char c = *p;
		if (c == '"' || c == '\\') {
			fputc('\\', out);
			fputc(c, out);
			p++;
		} else if (c == '\n') {
			fputs("\\n", out);
			p++;
		} else if (c == '\r') {
			fputs("\\r", out);
			p++;
		} else if (c == '\t') {
			fputs("\\t", out);
			p++;
		} else if (c < 0x20 || c == 0x7f) {
			fprintf(out, "\\u%04x", c);
			p++;
		} else if (c < 0x80) {
			fputc(c, out);
			p++;
		} else {
			/* Length of a well-formed UTF-8 sequence starting here, or 0. */
			size_t n = c >= 0xc2 && c <= 0xdf   ? 2
				   : c >= 0xe0 && c <= 0xef ? 3
				   : c >= 0xf0 && c <= 0xf4 ? 4
							    : 0;
			for (size_t k = 1; k < n; k++)
				if ((p[k] & 0xc0) != 0x80)
					n = 0;
			if (n == 3 && ((c == 0xe0 && p[1] < 0xa0) || (c == 0xed && p[1] >= 0xa0)))
				n = 0; /* overlong, or a surrogate */
			if (n == 4 && ((c == 0xf0 && p[1] < 0x90) || (c == 0xf4 && p[1] >= 0x90)))
				n = 0;
			if (n) {
				fwrite(p, 1, n, out);
				p += n;
			} else {
				fputs("\\ufffd", out);
				p++;
			}
		}
	}
	fputc('"', out);
}

static void json_key(FILE *out, const char *key, bool *first)
{
	fputs(*first ? "{" : ",", out);
	*first = false;
	json_string(out, key);
	fputc(':', out);
}

static void json_str_field(FILE *out, const char *key, const char *value, bool *first)
{
	json_key(out, key, first);
	json_string(out, value);
}

static void json_num_field(FILE *out, const char *key, uint64_t value, bool *first)
{
	json_key(out, key, first);
	fprintf(out, "%" PRIu64, value);
}

static void json_event(const mig_event *ev)
{
	bool first = true;
	json_str_field(stdout, "event", mig_event_type_name(ev->type), &first);
	json_str_field(stdout, "mid", ev->mid, &first);
	json_str_field(stdout, "user", ev->user, &first);
	json_str_field(stdout, "peer_url", ev->peer_url, &first);
	json_str_field(stdout, "phase", ev->phase, &first);
	json_num_field(stdout, "rounds", ev->rounds, &first);
	json_num_field(stdout, "bytes_sent", ev->bytes_sent, &first);
	json_num_field(stdout, "bytes_received", ev->bytes_received, &first);
	json_num_field(stdout, "duration_us", ev->duration_us, &first);
	json_num_field(stdout, "downtime_us", ev->downtime_us, &first);
	json_num_field(stdout, "time_us", ev->time_us, &first);
	json_key(stdout, "code", &first);
	fprintf(stdout, "%d", ev->error);
	json_str_field(stdout, "error", ev->error ? mig_err_name(ev->error) : "", &first);
	json_str_field(stdout, "reason", ev->reason, &first);
	fputs("}\n", stdout);
	fflush(stdout);
}

/* ------------------------------------------------------------------ users, status */

struct users_out {
	bool json;
	bool first;
};

static void print_user(const char *user, mig_user_state state, void *ud)
{
	struct users_out *o = ud;
	if (!o->json) {
		printf("%s\t%s\n", user, mig_user_state_name(state));
		return;
	}
	if (!o->first)
		fputc(',', stdout);
	o->first = false;
	bool first = true;
	json_str_field(stdout, "user", user, &first);
	json_str_field(stdout, "state", mig_user_state_name(state), &first);
	fputc('}', stdout);
}

static void print_status_json(const mig_ctl_engine_status *s)
{
	bool first = true;
	json_str_field(stdout, "engine_id", s->engine_id, &first);
	json_str_field(stdout, "url", s->url, &first);
	json_num_field(stdout, "protocol_version", s->protocol_version, &first);
	json_str_field(stdout, "library_version", s->library_version, &first);
	json_num_field(stdout, "uptime_us", s->uptime_us, &first);
	json_key(stdout, "users", &first);
	bool ufirst = true;
	json_num_field(stdout, "total", s->users, &ufirst);
	for (int st = MIG_USER_ACTIVE; st <= MIG_USER_PARKED; st++)
		json_num_field(stdout, mig_user_state_name((mig_user_state)st), s->users_by_state[st],
			       &ufirst);
	fputc('}', stdout);
	json_key(stdout, "totals", &first);
	bool tfirst = true;
	json_num_field(stdout, "committed_out", s->committed_out, &tfirst);
	json_num_field(stdout, "aborted_out", s->aborted_out, &tfirst);
	json_num_field(stdout, "committed_in", s->committed_in, &tfirst);
	json_num_field(stdout, "aborted_in", s->aborted_in, &tfirst);
	json_num_field(stdout, "bytes_sent", s->bytes_sent, &tfirst);
	json_num_field(stdout, "bytes_received", s->bytes_received, &tfirst);
	fputc('}', stdout);
	json_key(stdout, "migrations", &first);
	fputc('[', stdout);
	for (size_t i = 0; i < s->nmigrations; i++) {
		const mig_ctl_migration *m = &s->migrations[i];
		bool mfirst = true;
		if (i)
			fputc(',', stdout);
		json_str_field(stdout, "mid", m->mid, &mfirst);
		json_str_field(stdout, "user", m->user, &mfirst);
		json_str_field(stdout, "role", m->outgoing ? "source" : "destination", &mfirst);
		json_str_field(stdout, "peer_url", m->peer_url, &mfirst);
		json_str_field(stdout, "phase", m->phase, &mfirst);
		json_num_field(stdout, "rounds", m->rounds, &mfirst);
		json_num_field(stdout, "bytes_sent", m->bytes_sent, &mfirst);
		json_num_field(stdout, "bytes_received", m->bytes_received, &mfirst);
		json_num_field(stdout, "started_us", m->started_us, &mfirst);
		json_num_field(stdout, "duration_us", m->duration_us, &mfirst);
		json_key(stdout, "parked", &mfirst);
		fputs(m->parked ? "true}" : "false}", stdout);
	}
	fputs("]}\n", stdout);
}

static void print_status(const mig_ctl_engine_status *s, void *ud)
{
	if (*(bool *)ud) {
		print_status_json(s);
		return;
	}
	char a[32], b[32];
	printf("engine    %s  %s  (libmigrate %s, protocol %u, up %s)\n", s->engine_id, s->url,
	       s->library_version, s->protocol_version, human_duration(s->uptime_us, a, sizeof(a)));
	printf("users     %zu (active %zu, migrating %zu, paused %zu, incoming %zu, parked %zu)\n",
	       s->users, s->users_by_state[MIG_USER_ACTIVE], s->users_by_state[MIG_USER_MIGRATING],
	       s->users_by_state[MIG_USER_PAUSED], s->users_by_state[MIG_USER_INCOMING],
	       s->users_by_state[MIG_USER_PARKED]);
	printf("totals    out: %" PRIu64 " committed, %" PRIu64 " aborted   in: %" PRIu64
	       " committed, %" PRIu64 " aborted   %s sent, %s received\n",
	       s->committed_out, s->aborted_out, s->committed_in, s->aborted_in,
	       human_bytes(s->bytes_sent, a, sizeof(a)),
	       human_bytes(s->bytes_received, b, sizeof(b)));
	if (!s->nmigrations) {
		printf("migrations in flight: none\n");
		return;
	}
	printf("migrations in flight: %zu\n", s->nmigrations);
	printf("%-32s  %-16s  %-11s  %-10s  %5s  %10s  %10s  %8s  %s\n", "MID", "USER", "ROLE",
	       "PHASE", "ROUND", "SENT", "RECEIVED", "ELAPSED", "PEER");
	for (size_t i = 0; i < s->nmigrations; i++) {
		const mig_ctl_migration *m = &s->migrations[i];
		char c[32];
		printf("%-32s  %-16s  %-11s  %-10s  %5u  %10s  %10s  %8s  %s%s\n", m->mid, m->user,
		       m->outgoing ? "source" : "destination", m->phase, m->rounds,
		       human_bytes(m->bytes_sent, a, sizeof(a)),
		       human_bytes(m->bytes_received, b, sizeof(b)),
		       human_duration(m->duration_us, c, sizeof(c)), m->peer_url,
		       m->parked ? "  (parked)" : "");
	}
}

/* ------------------------------------------------------------------ migrate */

/* How a migration's events are shown: a bar redrawn on a terminal, plain
 * lines otherwise, or JSON. */
struct progress {
	enum {
		OUT_PLAIN,
		OUT_BAR,
		OUT_JSON
	} mode;
	bool bar_drawn; /* a bar is on the current line */
	bool saw_final; /* the COMMITTED / ABORTED event arrived */
	uint64_t last_bytes;
	uint64_t last_time_us;
	double rate;       /* bytes per second, smoothed */
	const char *phase; /* latest known, static */
};

static int term_width(void)
{
	struct winsize ws;
	if (ioctl(STDOUT_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col >= 20)
		return ws.ws_col;
	return 80;
}

/* Where each phase puts the bar: the file rounds take most of it. */
static double phase_fraction(const char *phase)
{
	static const struct {
		const char *name;
		double at;
	} steps[] = {{"begin", 0.05},   {"precopy", 0.15}, {"final", 0.75},
		     {"prepare", 0.85}, {"commit", 0.95},  {"done", 1.0}};
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++)
		if (phase && strcmp(phase, steps[i].name) == 0)
			return steps[i].at;
	return 0;
}

/* A static copy of a phase name (the event's string does not outlive it). */
static const char *known_phase(const char *phase)
{
	static const char *const names[] = {"begin",   "precopy", "final",
					    "prepare", "commit",  "done"};
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
		if (phase && strcmp(phase, names[i]) == 0)
			return names[i];
	return NULL;
}

static void update_rate(struct progress *p, const mig_event *ev)
{
	if (p->last_time_us && ev->time_us > p->last_time_us + 50000 &&
	    ev->bytes_sent >= p->last_bytes) {
		double inst = (double)(ev->bytes_sent - p->last_bytes) * 1e6 /
			      (double)(ev->time_us - p->last_time_us);
		p->rate = p->rate > 0 ? 0.5 * p->rate + 0.5 * inst : inst;
	}
	if (!p->last_time_us || ev->time_us > p->last_time_us + 50000) {
		p->last_time_us = ev->time_us;
		p->last_bytes = ev->bytes_sent;
	}
}

static void draw_bar(struct progress *p, const mig_event *ev)
{
	const char *phase = ev->type == MIG_EVENT_COMMITTED ? "done"
			    : p->phase                      ? p->phase
							    : "begin";
	int width = term_width();
	int cells = 20;
	int filled = (int)(phase_fraction(phase) * cells + 0.5);
	char bar[32];
	for (int i = 0; i < cells; i++)
		bar[i] = i < filled ? '#' : i == filled ? '>' : '.';
	bar[cells] = '\0';
	char bytes[32], rate[32], elapsed[32], line[512];
	human_bytes(ev->bytes_sent, bytes, sizeof(bytes));
	human_bytes((uint64_t)p->rate, rate, sizeof(rate));
	human_duration(ev->duration_us, elapsed, sizeof(elapsed));
	/* During the file rounds, the round being sent; then the rounds sent. */
	bool in_round = strcmp(phase, "precopy") == 0 || strcmp(phase, "final") == 0;
	int n = snprintf(line, sizeof(line), "%.16s [%s] %-8s round %-2u %10s %10s/s %8s", ev->user,
			 bar, phase, ev->rounds + (in_round ? 1u : 0u), bytes, rate, elapsed);
	if (n >= width)
		line[width - 1] = '\0';
	/* \r and erase the line: the bar is redrawn in place. */
	printf("\r\033[K%s", line);
	fflush(stdout);
	p->bar_drawn = true;
}

static void end_bar(struct progress *p)
{
	if (p->bar_drawn) {
		fputc('\n', stdout);
		p->bar_drawn = false;
	}
}

static void on_migrate_event(const mig_event *ev, void *ud)
{
	struct progress *p = ud;
	if (ev->type == MIG_EVENT_COMMITTED || ev->type == MIG_EVENT_ABORTED)
		p->saw_final = true;
	if (known_phase(ev->phase) && ev->type != MIG_EVENT_ABORTED)
		p->phase = known_phase(ev->phase);
	update_rate(p, ev);
	switch (p->mode) {
	case OUT_JSON:
		json_event(ev);
		return;
	case OUT_BAR:
		if (ev->type == MIG_EVENT_ABORTED)
			return; /* the result line says it */
		draw_bar(p, ev);
		return;
	case OUT_PLAIN:
		break;
	}
	char bytes[32];
	switch (ev->type) {
	case MIG_EVENT_STARTED:
	case MIG_EVENT_PREPARED:
		printf("%s %s (migration %s)\n", mig_event_type_name(ev->type), ev->user, ev->mid);
		break;
	case MIG_EVENT_PROGRESS:
		printf("progress %s phase=%s round=%u bytes_sent=%" PRIu64
		       " (%s) elapsed_ms=%.1f\n",
		       ev->user, ev->phase, ev->rounds, ev->bytes_sent,
		       human_bytes(ev->bytes_sent, bytes, sizeof(bytes)), ev->duration_us / 1000.0);
		break;
	default:
		return; /* the result line reports the end */
	}
	fflush(stdout);
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

/* Requests other than migrate: a refusal is exit code 5, a lost connection 3. */
static int exit_for_request(int rc)
{
	switch (rc) {
	case MIG_ENOUSER:
	case MIG_EUNKNOWN:
	case MIG_ESTATE:
	case MIG_EBUSY:
	case MIG_EINVAL:
	case MIG_ETOOBIG:
		return EXIT_REFUSED;
	case MIG_ECLOSED:
	case MIG_EIO:
		return EXIT_CONNECT;
	default:
		return exit_for(rc);
	}
}

/* The library's reason for the last request's failure, or the code's text. */
static const char *ctl_why(mig_ctl *ctl, int rc)
{
	return mig_ctl_last_error(ctl)[0] ? mig_ctl_last_error(ctl) : mig_strerror(rc);
}

/* The answer to a request that only succeeds or fails (cancel, replicate,
 * promote): with --json one object {subject_key: arg, done_key: bool, code,
 * error, reason}, else the library's text on success; a failure also goes
 * to stderr. Returns the exit status. */
static int report_outcome(mig_ctl *ctl, const char *cmd, const char *subject_key,
			  const char *arg, const char *done_key, int rc, bool json)
{
	const char *why = ctl_why(ctl, rc);
	if (json) {
		bool first = true;
		json_str_field(stdout, subject_key, arg, &first);
		json_key(stdout, done_key, &first);
		fputs(rc ? "false" : "true", stdout);
		json_key(stdout, "code", &first);
		fprintf(stdout, "%d", rc);
		json_str_field(stdout, "error", rc ? mig_err_name(rc) : "", &first);
		json_str_field(stdout, "reason", why, &first);
		fputs("}\n", stdout);
	} else if (!rc) {
		printf("%s\n", why);
	}
	if (!rc)
		return 0;
	fprintf(stderr, "migratectl: %s %s: %s (%s)\n", cmd, arg, why, mig_err_name(rc));
	return exit_for_request(rc);
}

static int do_migrate(mig_ctl *ctl, const char *user, const char *to, long timeout_s, bool json)
{
	struct progress p;
	memset(&p, 0, sizeof(p));
	p.mode = json ? OUT_JSON : isatty(STDOUT_FILENO) ? OUT_BAR : OUT_PLAIN;
	mig_event final;
	int rc = mig_ctl_migrate(ctl, user, to, (unsigned)(timeout_s * 1000), on_migrate_event, &p,
				 &final);
	end_bar(&p);
	const char *why = ctl_why(ctl, rc);
	if (json) {
		if (!p.saw_final) {
			/* Refused before it started, lost, or timed out: the last
			 * line still says how it ended. */
			bool first = true;
			json_str_field(stdout, "event", "failed", &first);
			json_str_field(stdout, "user", user, &first);
			json_str_field(stdout, "peer_url", to, &first);
			json_key(stdout, "code", &first);
			fprintf(stdout, "%d", rc);
			json_str_field(stdout, "error", mig_err_name(rc), &first);
			json_str_field(stdout, "reason", why, &first);
			fputs("}\n", stdout);
		}
	} else if (rc == 0) {
		char a[32], b[32], rounds[32] = "";
		if (final.rounds)
			snprintf(rounds, sizeof(rounds), ", %u file round%s", final.rounds,
				 final.rounds == 1 ? "" : "s");
		printf("committed %s -> %s: %s sent, %s received%s, %.3f ms total, %.3f ms "
		       "downtime\n",
		       user, to, human_bytes(final.bytes_sent, a, sizeof(a)),
		       human_bytes(final.bytes_received, b, sizeof(b)), rounds,
		       final.duration_us / 1000.0, final.downtime_us / 1000.0);
	}
	fflush(stdout);
	if (rc) {
		fprintf(stderr, "migratectl: migration of %s to %s failed: %s (%s)\n", user, to,
			why, mig_err_name(rc));
		return exit_for(rc);
	}
	return 0;
}

/* ------------------------------------------------------------------ watch */

struct watch {
	long left; /* events still wanted; <= 0: no limit */
	bool json;
};

static int print_event(const mig_event *ev, void *ud)
{
	struct watch *w = ud;
	if (w->json) {
		json_event(ev);
	} else {
		printf("%s user=%s mid=%s peer=%s bytes_sent=%llu bytes_received=%llu "
		       "duration_ms=%.3f downtime_ms=%.3f",
		       mig_event_type_name(ev->type), ev->user, ev->mid, ev->peer_url,
		       (unsigned long long)ev->bytes_sent, (unsigned long long)ev->bytes_received,
		       ev->duration_us / 1000.0, ev->downtime_us / 1000.0);
		if (ev->phase && ev->phase[0])
			printf(" phase=%s rounds=%u", ev->phase, ev->rounds);
		if (ev->error)
			printf(" error=%s", mig_err_name(ev->error));
		if (ev->reason && ev->reason[0])
			printf(" reason=\"%s\"", ev->reason);
		putchar('\n');
		fflush(stdout);
	}
	return w->left > 0 && --w->left == 0;
}

/* ------------------------------------------------------------------ main */

enum {
	OPT_JSON = 256,
	OPT_CERT,
	OPT_KEY
};

static bool takes_argument(const char *cmd)
{
	return strcmp(cmd, "migrate") == 0 || strcmp(cmd, "cancel") == 0 ||
	       strcmp(cmd, "replicate") == 0 || strcmp(cmd, "promote") == 0;
}

int main(int argc, char **argv)
{
	const char *engine = NULL, *secret_file = NULL, *to = NULL, *ca = NULL, *cert = NULL,
		   *key = NULL;
	int insecure = 0, json = 0;
	long timeout_s = 60, count = 0;
	static const struct option longopts[] = {
		{"engine", required_argument, NULL, 'e'},
		{"secret-file", required_argument, NULL, 's'},
		{"insecure", no_argument, NULL, 'i'},
		{"to", required_argument, NULL, 't'},
		{"ca", required_argument, NULL, 'c'},
		{"cert", required_argument, NULL, OPT_CERT},
		{"key", required_argument, NULL, OPT_KEY},
		{"timeout", required_argument, NULL, 'T'},
		{"count", required_argument, NULL, 'n'},
		{"json", no_argument, NULL, OPT_JSON},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	/* Options may come before the command or after it ("migrate USER
	 * --to URL"): the first pass stops at the command, the second takes
	 * the rest. */
	const char *cmd = NULL, *arg = NULL;
	for (int pass = 0; pass < 2; pass++) {
		int opt;
		while ((opt = getopt_long(argc, argv, pass ? "e:s:t:c:T:n:h" : "+e:s:t:c:T:n:h",
					  longopts, NULL)) != -1) {
			char *end = NULL;
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
			case OPT_CERT:
				cert = optarg;
				break;
			case OPT_KEY:
				key = optarg;
				break;
			case 'T':
				timeout_s = strtol(optarg, &end, 10);
				if (end == optarg || *end)
					timeout_s = -1;
				break;
			case 'n':
				count = strtol(optarg, &end, 10);
				if (end == optarg || *end || count < 0)
					count = -1;
				break;
			case OPT_JSON:
				json = 1;
				break;
			case 'h':
				usage(stdout);
				return 0;
			default:
				usage(stderr);
				return EXIT_USAGE;
			}
		}
		if (pass == 0) {
			cmd = optind < argc ? argv[optind++] : NULL;
			if (cmd && takes_argument(cmd) && optind < argc && argv[optind][0] != '-')
				arg = argv[optind++];
		}
	}
	if (cmd && takes_argument(cmd) && !arg && optind < argc)
		arg = argv[optind++];
	if (optind < argc) {
		fprintf(stderr, "migratectl: unexpected argument '%s'\n", argv[optind]);
		usage(stderr);
		return EXIT_USAGE;
	}
	if (!cmd || !engine || (!secret_file && !insecure) || timeout_s <= 0 ||
	    timeout_s > 24 * 3600 || count < 0 || !cert != !key) {
		usage(stderr);
		return EXIT_USAGE;
	}
	if (strcmp(cmd, "migrate") && strcmp(cmd, "users") && strcmp(cmd, "watch") &&
	    strcmp(cmd, "status") && strcmp(cmd, "cancel") && strcmp(cmd, "replicate") &&
	    strcmp(cmd, "promote")) {
		fprintf(stderr, "migratectl: unknown command '%s'\n", cmd);
		usage(stderr);
		return EXIT_USAGE;
	}
	if (strcmp(cmd, "migrate") == 0 && (!arg || !to)) {
		fprintf(stderr, "migratectl: migrate needs USER and --to URL\n");
		return EXIT_USAGE;
	}
	if ((strcmp(cmd, "promote") == 0 && !arg) ||
	    (strcmp(cmd, "replicate") == 0 && (!arg || !to))) {
		fprintf(stderr, "migratectl: %s needs USER%s\n", cmd,
			strcmp(cmd, "replicate") == 0 ? " and --to URL" : "");
		return EXIT_USAGE;
	}
	if (strcmp(cmd, "cancel") == 0 && !arg) {
		fprintf(stderr, "migratectl: cancel needs a migration id or a user\n");
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
	o.tls_cert_file = cert;
	o.tls_key_file = key;
	o.timeout_ms = (unsigned)(timeout_s > 10 ? 10000 : timeout_s * 1000);
	mig_ctl *ctl = NULL;
	char err[256];
	int rc = mig_ctl_new(&ctl, &o, err, sizeof(err));
	memset(secret, 0, sizeof(secret));
	if (rc) {
		fprintf(stderr, "migratectl: cannot connect to %s: %s (%s)\n", engine, err,
			mig_err_name(rc));
		return rc == MIG_ETIMEDOUT ? EXIT_TIMEOUT : EXIT_CONNECT;
	}

	int status = 0;
	if (strcmp(cmd, "users") == 0) {
		struct users_out uo = {json != 0, true};
		if (json)
			fputs("{\"users\":[", stdout);
		rc = mig_ctl_users(ctl, print_user, &uo);
		if (json)
			fputs("]}\n", stdout);
		if (rc < 0) {
			fprintf(stderr, "migratectl: users: %s\n", ctl_why(ctl, rc));
			status = exit_for_request(rc);
		}
	} else if (strcmp(cmd, "status") == 0) {
		bool j = json != 0;
		rc = mig_ctl_status(ctl, print_status, &j);
		if (rc) {
			fprintf(stderr, "migratectl: status: %s\n", ctl_why(ctl, rc));
			status = exit_for_request(rc);
		}
	} else if (strcmp(cmd, "cancel") == 0) {
		rc = mig_ctl_cancel(ctl, arg);
		status = report_outcome(ctl, cmd, "target", arg, "canceled", rc, json != 0);
	} else if (strcmp(cmd, "replicate") == 0 || strcmp(cmd, "promote") == 0) {
		bool promote = strcmp(cmd, "promote") == 0;
		rc = promote ? mig_ctl_promote(ctl, arg)
			     : mig_ctl_replicate(ctl, arg, strcmp(to, "none") ? to : NULL, 0);
		status = report_outcome(ctl, cmd, "user", arg, promote ? "promoted" : "replicating",
					rc, json != 0);
	} else if (strcmp(cmd, "watch") == 0) {
		struct watch w = {count, json != 0};
		rc = mig_ctl_watch(ctl, (int)(timeout_s * 1000), print_event, &w);
		if (rc && !(rc == MIG_ETIMEDOUT && count <= 0)) {
			fprintf(stderr, "migratectl: watch: %s\n", ctl_why(ctl, rc));
			status = exit_for_request(rc);
		}
	} else {
		status = do_migrate(ctl, arg, to, timeout_s, json != 0);
	}
	mig_ctl_free(ctl);
	return status;
}
