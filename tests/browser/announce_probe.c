/* announce_probe: a misbehaving engine for the orchestrator's tests. It
 * authenticates on the announce channel with the given secret and engine
 * id, sends one bad frame, and reports how the orchestrator ended the
 * connection.
 *
 *   announce_probe URL SECRET_FILE ENGINE_ID SCENARIO
 *
 * SCENARIO: "mismatch" (Announce naming another engine id), "early"
 * (Heartbeat before Announce), "foreign" (a control-channel frame),
 * "invalid" (an Announce the wire checks refuse: heartbeat_ms 0).
 * Prints "down: REASON" and exits 0 when the orchestrator closed the
 * connection within 5 s; exits 1 if it did not, 2 on usage errors. */
#include <stdio.h>
#include <string.h>

#include "transport.h"
#include "wire.h"

static int read_secret(const char *path, char *buf, size_t cap, size_t *len)
{
	FILE *f = fopen(path, "rb");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, cap, f);
	fclose(f);
	while (n && (buf[n - 1] == '\n' || buf[n - 1] == '\r'))
		n--;
	*len = n;
	return n ? 0 : -1;
}

static void send_frame(mig__transport *t, uint64_t conn, const mig__frame *f)
{
	mig__msg *m = NULL;
	if (mig__wire_encode(f, 0, &m) == 0)
		mig__transport_send(t, conn, m);
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: announce_probe URL SECRET_FILE ENGINE_ID SCENARIO\n");
		return 2;
	}
	const char *scenario = argv[4];
	char secret[512];
	size_t secret_len;
	if (read_secret(argv[2], secret, sizeof(secret), &secret_len)) {
		fprintf(stderr, "announce_probe: cannot read %s\n", argv[2]);
		return 2;
	}
	mig__evq q;
	if (mig__evq_init(&q))
		return 2;
	mig__transport_cfg cfg;
	memset(&cfg, 0, sizeof(cfg));
	cfg.secret = secret;
	cfg.secret_len = secret_len;
	cfg.engine_id = argv[3];
	cfg.max_frame = 64 * 1024;
	cfg.events = &q;
	cfg.log_level = MIG_LOG_ERROR;
	cfg.name = "probe";
	mig__transport *t = NULL;
	char err[200] = "";
	if (mig__transport_new(&t, &cfg, err, sizeof(err)) || mig__transport_start(t)) {
		fprintf(stderr, "announce_probe: %s\n", err);
		return 2;
	}
	int64_t conn = mig__transport_connect(t, argv[1], MIGWIRE__CHANNEL__CHANNEL_ANNOUNCE);
	int rc = 1;
	bool sent = false;
	for (int waited = 0; conn > 0 && waited < 5000 && rc == 1; waited += 50) {
		mig__evq_wait(&q, 50);
		mig__evq_item *items = mig__evq_take_all(&q);
		while (items) {
			mig__evq_item *next = items->next;
			mig__tev *ev = (mig__tev *)items;
			if (ev->type == MIG__TEV_UP && !sent) {
				sent = true;
				mig__frame f = MIGWIRE__FRAME__INIT;
				Migwire__Announce an = MIGWIRE__ANNOUNCE__INIT;
				Migwire__Heartbeat hb = MIGWIRE__HEARTBEAT__INIT;
				Migwire__StatusRequest sr = MIGWIRE__STATUS_REQUEST__INIT;
				an.engine_id = argv[3];
				an.url = "ws://127.0.0.1:9";
				an.heartbeat_ms = 1000;
				if (strcmp(scenario, "mismatch") == 0) {
					an.engine_id = "someone-else";
				} else if (strcmp(scenario, "invalid") == 0) {
					an.heartbeat_ms = 0;
				} else if (strcmp(scenario, "early") == 0) {
					hb.seq = 1;
					f.body_case = MIGWIRE__FRAME__BODY_HEARTBEAT;
					f.heartbeat = &hb;
				} else if (strcmp(scenario, "foreign") == 0) {
					f.body_case = MIGWIRE__FRAME__BODY_STATUS_REQUEST;
					f.status_request = &sr;
				} else {
					fprintf(stderr, "announce_probe: unknown scenario %s\n", scenario);
					rc = 2;
				}
				if (f.body_case == MIGWIRE__FRAME__BODY__NOT_SET) {
					f.body_case = MIGWIRE__FRAME__BODY_ANNOUNCE;
					f.announce = &an;
				}
				if (rc == 1)
					send_frame(t, (uint64_t)conn, &f);
			} else if (ev->type == MIG__TEV_DOWN) {
				printf("down: %s\n", ev->reason);
				if (rc == 1)
					rc = sent ? 0 : 1;
			}
			mig__tev_free(ev);
			items = next;
		}
	}
	if (rc == 1)
		printf("still connected after 5 s\n");
	mig__transport_free(t);
	mig__evq_destroy(&q, mig__tev_free_item);
	return rc;
}
