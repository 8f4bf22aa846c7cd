/* Writes the seed corpora of the fuzz targets:
 *
 *   make_seeds DIR     (DIR is tests/fuzz/corpus)
 *
 * DIR/fuzz_frame: one encoded frame of every body kind (mig__wire_encode
 *   of frames built with the generated protobuf-c code), several for the
 *   kinds with repeated fields or optional parts;
 * DIR/fuzz_signature: mig__delta_signature of the fixed buffer fuzz_signature
 *   deltas against, of variants of it, of an empty file, with several
 *   block and strong sum lengths;
 * DIR/fuzz_patch: real deltas with their basis, in fuzz_patch's layout;
 * DIR/fuzz_token: tokens minted under FUZZ_TOKEN_SECRET, as text and as
 *   their raw bodies (fuzz_token signs an input itself in its second pass).
 *
 * Deterministic except for token nonces. Regression inputs found by fuzzing
 * live next to the seeds (named regress-*); this program never touches
 * them. Re-run only when the protocol changes, and commit the output. */
#include <errno.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "auth.h"
#include "delta.h"
#include "digest.h"
#include "fuzz.h"
#include "token.h"
#include "wire.h"

static const char *root;
static int written;

static void put(const char *target, const char *name, const void *data, size_t len)
{
	char path[4096];
	snprintf(path, sizeof(path), "%s/%s", root, target);
	if (mkdir(path, 0755) != 0 && errno != EEXIST) {
		perror(path);
		exit(1);
	}
	snprintf(path, sizeof(path), "%s/%s/%s", root, target, name);
	FILE *f = fopen(path, "wb");
	if (!f || (len && fwrite(data, 1, len, f) != len) || fclose(f) != 0) {
		perror(path);
		exit(1);
	}
	written++;
}

/* ------------------------------------------------------------------ frames */

#define MID "0123456789abcdef0123456789abcdef"
#define MID2 "fedcba9876543210fedcba9876543210"
static uint8_t nonce[32] = {1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16,
			    17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};
static uint8_t digest[32] = {0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4,
			     0xc8, 0x99, 0x6f, 0xb9, 0x24, 0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b,
			     0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55};

static void frame(const char *name, mig__frame *f)
{
	mig__msg *m = NULL;
	if (mig__wire_encode(f, 0, &m) != 0) {
		fprintf(stderr, "make_seeds: cannot encode %s\n", name);
		exit(1);
	}
	mig__frame *back = NULL;
	char why[256];
	if (mig__wire_decode(mig__msg_payload(m), m->len, 0, &back, why, sizeof(why)) != 0) {
		fprintf(stderr, "make_seeds: %s does not decode: %s\n", name, why);
		exit(1);
	}
	mig__wire_free(back);
	put("fuzz_frame", name, mig__msg_payload(m), m->len);
	mig__msg_free(m);
}

#define BODY(f, field, value, kind)                          \
	do {                                                 \
		(f).body_case = MIGWIRE__FRAME__BODY_##kind; \
		(f).field = (value);                         \
	} while (0)

static void frames(void)
{
	ProtobufCBinaryData nb = {32, nonce}, mac = {32, digest}, none = {0, NULL};
	mig__frame f;

	Migwire__Challenge ch = MIGWIRE__CHALLENGE__INIT;
	ch.protocol_version = MIG_PROTOCOL_VERSION;
	ch.server_nonce = nb;
	ch.engine_id = "edge-1";
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, challenge, &ch, CHALLENGE);
	frame("challenge", &f);

	Migwire__Hello he = MIGWIRE__HELLO__INIT;
	he.protocol_version = MIG_PROTOCOL_VERSION;
	he.channel = MIGWIRE__CHANNEL__CHANNEL_PEER;
	he.client_nonce = nb;
	he.engine_id = "edge-2";
	he.advertised_url = "ws://10.0.0.2:7000";
	he.mac = mac;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, hello, &he, HELLO);
	frame("hello-peer", &f);
	he.channel = MIGWIRE__CHANNEL__CHANNEL_SESSION;
	he.engine_id = NULL;
	he.advertised_url = NULL;
	he.mac = none;
	frame("hello-session-insecure", &f);

	Migwire__Welcome we = MIGWIRE__WELCOME__INIT;
	we.mac = mac;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, welcome, &we, WELCOME);
	frame("welcome", &f);

	Migwire__DomainInfo d1 = MIGWIRE__DOMAIN_INFO__INIT, d2 = MIGWIRE__DOMAIN_INFO__INIT;
	d1.name = "progress";
	d1.version = 3;
	d1.type_name = "app.Progress";
	d2.name = "photos";
	d2.version = 1;
	d2.has_kind = 1;
	d2.kind = MIGWIRE__DOMAIN_KIND__DOMAIN_FILE;
	Migwire__DomainInfo *doms[] = {&d1, &d2};
	Migwire__Begin be = MIGWIRE__BEGIN__INIT;
	be.mid = MID;
	be.user = "alice";
	be.source_engine = "edge-1";
	be.source_url = "wss://edge-1.example:7000/";
	be.n_domains = 2;
	be.domains = doms;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, begin, &be, BEGIN);
	frame("begin", &f);
	be.n_domains = 0;
	frame("begin-no-domains", &f);

	Migwire__Accept ac = MIGWIRE__ACCEPT__INIT;
	ac.mid = MID;
	ac.app_url = "https://edge-2.example/app";
	ac.session_url = "ws://edge-2.example:7000";
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, accept, &ac, ACCEPT);
	frame("accept", &f);

	Migwire__Reject rj = MIGWIRE__REJECT__INIT;
	rj.mid = MID;
	rj.code = MIG_EBUSY;
	rj.reason = "user is migrating";
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, reject, &rj, REJECT);
	frame("reject", &f);

	static uint8_t state[] = "\x08\x96\x01\x12\x05hello";
	Migwire__DomainData dd = MIGWIRE__DOMAIN_DATA__INIT;
	dd.name = "progress";
	dd.version = 3;
	dd.data.len = sizeof(state) - 1;
	dd.data.data = state;
	Migwire__DomainData *light[] = {&dd};
	Migwire__FileEntry fe1 = MIGWIRE__FILE_ENTRY__INIT, fe2 = MIGWIRE__FILE_ENTRY__INIT;
	fe1.path = "a/b.jpg";
	fe1.size = 123456;
	fe1.digest.len = MIG__DIGEST_LEN;
	fe1.digest.data = digest;
	fe2.path = "notes.txt";
	fe2.size = 0;
	fe2.digest = fe1.digest;
	Migwire__FileEntry *fes[] = {&fe1, &fe2};
	Migwire__FileManifest fm = MIGWIRE__FILE_MANIFEST__INIT;
	fm.domain = "photos";
	fm.n_files = 2;
	fm.files = fes;
	Migwire__FileManifest *fms[] = {&fm};
	Migwire__Prepare pr = MIGWIRE__PREPARE__INIT;
	pr.mid = MID;
	pr.n_light = 1;
	pr.light = light;
	pr.n_files = 1;
	pr.files = fms;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, prepare, &pr, PREPARE);
	frame("prepare", &f);
	pr.n_files = 0;
	frame("prepare-light-only", &f);

	Migwire__Prepared pd = MIGWIRE__PREPARED__INIT;
	pd.mid = MID;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, prepared, &pd, PREPARED);
	frame("prepared", &f);

	Migwire__Failed fa = MIGWIRE__FAILED__INIT;
	fa.mid = MID;
	fa.code = MIG_EIO;
	fa.reason = "merge failed";
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, failed, &fa, FAILED);
	frame("failed", &f);

	Migwire__Commit co = MIGWIRE__COMMIT__INIT;
	co.mid = MID;
	co.user = "alice";
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, commit, &co, COMMIT);
	frame("commit", &f);

	Migwire__Committed cd = MIGWIRE__COMMITTED__INIT;
	cd.mid = MID;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, committed, &cd, COMMITTED);
	frame("committed", &f);

	Migwire__Abort ab = MIGWIRE__ABORT__INIT;
	ab.mid = MID;
	ab.reason = "cancelled by the orchestrator";
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, abort, &ab, ABORT);
	frame("abort", &f);

	Migwire__Aborted ad = MIGWIRE__ABORTED__INIT;
	ad.mid = MID;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, aborted, &ad, ABORTED);
	frame("aborted", &f);

	Migwire__OutcomeQuery oq = MIGWIRE__OUTCOME_QUERY__INIT;
	oq.mid = MID;
	oq.user = "alice";
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, outcome_query, &oq, OUTCOME_QUERY);
	frame("outcome_query", &f);

	Migwire__Outcome oc = MIGWIRE__OUTCOME__INIT;
	oc.mid = MID;
	oc.state = MIGWIRE__OUTCOME_STATE__OUTCOME_UNKNOWN_USER_ABSENT;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, outcome, &oc, OUTCOME);
	frame("outcome", &f);

	Migwire__FileStream fs = MIGWIRE__FILE_STREAM__INIT;
	fs.mid = MID;
	fs.stream = 7;
	fs.kind = MIGWIRE__STREAM_KIND__STREAM_DELTA;
	fs.domain = "photos";
	fs.path = "a/b.jpg";
	fs.has_round = 1;
	fs.round = 2;
	fs.has_mode = 1;
	fs.mode = 0644;
	fs.has_size = 1;
	fs.size = 123456;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, file_stream, &fs, FILE_STREAM);
	frame("file_stream-delta", &f);
	fs.kind = MIGWIRE__STREAM_KIND__STREAM_TAIL;
	fs.has_size = 0;
	fs.has_offset = 1;
	fs.offset = 4096;
	frame("file_stream-tail", &f);

	static uint8_t chunk_data[] = "rs\x026\x41\x05hello\x00";
	Migwire__Chunk ck = MIGWIRE__CHUNK__INIT;
	ck.mid = MID;
	ck.stream = 7;
	ck.data.len = sizeof(chunk_data) - 1;
	ck.data.data = chunk_data;
	ck.has_last = 1;
	ck.last = 1;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, chunk, &ck, CHUNK);
	frame("chunk", &f);
	ck.has_compression = 1;
	ck.compression = MIGWIRE__COMPRESSION__COMPRESSION_ZSTD;
	ck.has_raw_len = 1;
	ck.raw_len = 65536;
	ck.has_last = 0;
	frame("chunk-zstd", &f);

	Migwire__Credit cr = MIGWIRE__CREDIT__INIT;
	cr.mid = MID;
	cr.bytes = 1u << 20;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, credit, &cr, CREDIT);
	frame("credit", &f);

	char *deleted[] = {"photos/old.jpg", "photos/a/c.jpg"};
	Migwire__FileEntry se = MIGWIRE__FILE_ENTRY__INIT;
	se.path = "photos/a/b.jpg";
	se.size = 123456;
	se.digest = fe1.digest;
	Migwire__FileEntry *sent[] = {&se};
	Migwire__RoundEnd re = MIGWIRE__ROUND_END__INIT;
	re.mid = MID;
	re.round = 2;
	re.n_deleted = 2;
	re.deleted = deleted;
	re.has_final = 1;
	re.final = 1;
	re.n_sent = 1;
	re.sent = sent;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, round_end, &re, ROUND_END);
	frame("round_end", &f);

	char *redo[] = {"photos/a/b.jpg"};
	Migwire__RoundDone rd = MIGWIRE__ROUND_DONE__INIT;
	rd.mid = MID;
	rd.round = 2;
	rd.n_redo = 1;
	rd.redo = redo;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, round_done, &rd, ROUND_DONE);
	frame("round_done", &f);
	rd.n_redo = 0;
	rd.has_code = 1;
	rd.code = MIG_EIO;
	rd.reason = "disk full";
	frame("round_done-failed", &f);

	Migwire__MigrateRequest mr = MIGWIRE__MIGRATE_REQUEST__INIT;
	mr.request_id = 1;
	mr.user = "alice";
	mr.destination_url = "ws://10.0.0.2:7000";
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, migrate, &mr, MIGRATE);
	frame("migrate", &f);

	Migwire__ListUsersRequest lu = MIGWIRE__LIST_USERS_REQUEST__INIT;
	lu.request_id = 2;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, list_users, &lu, LIST_USERS);
	frame("list_users", &f);

	Migwire__SubscribeRequest su = MIGWIRE__SUBSCRIBE_REQUEST__INIT;
	su.request_id = 3;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, subscribe, &su, SUBSCRIBE);
	frame("subscribe", &f);

	Migwire__UserEntry ue[3] = {MIGWIRE__USER_ENTRY__INIT, MIGWIRE__USER_ENTRY__INIT,
				    MIGWIRE__USER_ENTRY__INIT};
	ue[0].user = "alice";
	ue[0].state = MIGWIRE__USER_STATE__USER_ACTIVE;
	ue[1].user = "bob";
	ue[1].state = MIGWIRE__USER_STATE__USER_MIGRATING;
	ue[2].user = "carol@example";
	ue[2].state = MIGWIRE__USER_STATE__USER_PARKED;
	Migwire__UserEntry *ues[] = {&ue[0], &ue[1], &ue[2]};
	Migwire__ListUsersReply lr = MIGWIRE__LIST_USERS_REPLY__INIT;
	lr.request_id = 2;
	lr.n_users = 3;
	lr.users = ues;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, users, &lr, USERS);
	frame("users", &f);

	Migwire__Event ev = MIGWIRE__EVENT__INIT;
	ev.type = MIGWIRE__EVENT_TYPE__EVENT_PROGRESS;
	ev.mid = MID;
	ev.user = "alice";
	ev.peer_url = "ws://10.0.0.2:7000";
	ev.has_bytes_sent = 1;
	ev.bytes_sent = 1000000;
	ev.has_duration_us = 1;
	ev.duration_us = 250000;
	ev.has_time_us = 1;
	ev.time_us = 1700000000000000ull;
	ev.phase = "precopy";
	ev.has_rounds = 1;
	ev.rounds = 2;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, event, &ev, EVENT);
	frame("event-progress", &f);

	Migwire__Event ev2 = MIGWIRE__EVENT__INIT;
	ev2.type = MIGWIRE__EVENT_TYPE__EVENT_ABORTED;
	ev2.mid = MID2;
	ev2.user = "bob";
	ev2.has_code = 1;
	ev2.code = MIG_ETIMEDOUT;
	ev2.reason = "peer did not answer";
	Migwire__Reply rp = MIGWIRE__REPLY__INIT;
	rp.request_id = 1;
	rp.code = 0;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, reply, &rp, REPLY);
	frame("reply", &f);
	rp.code = MIG_ETIMEDOUT;
	rp.reason = "migration aborted";
	rp.event = &ev2;
	frame("reply-event", &f);

	Migwire__StatusRequest sr = MIGWIRE__STATUS_REQUEST__INIT;
	sr.request_id = 9;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, status_request, &sr, STATUS_REQUEST);
	frame("status_request", &f);

	Migwire__UserCount uc[2] = {MIGWIRE__USER_COUNT__INIT, MIGWIRE__USER_COUNT__INIT};
	uc[0].state = MIGWIRE__USER_STATE__USER_ACTIVE;
	uc[0].count = 12;
	uc[1].state = MIGWIRE__USER_STATE__USER_INCOMING;
	uc[1].count = 1;
	Migwire__UserCount *ucs[] = {&uc[0], &uc[1]};
	Migwire__MigrationStatus ms = MIGWIRE__MIGRATION_STATUS__INIT;
	ms.mid = MID;
	ms.user = "alice";
	ms.peer_url = "ws://10.0.0.2:7000";
	ms.role = MIGWIRE__MIGRATION_ROLE__ROLE_SOURCE;
	ms.phase = "file_rounds";
	ms.has_rounds = 1;
	ms.rounds = 3;
	ms.has_parked = 1;
	ms.parked = 0;
	Migwire__MigrationStatus *mss[] = {&ms};
	Migwire__StatusReply st = MIGWIRE__STATUS_REPLY__INIT;
	st.request_id = 9;
	st.engine_id = "edge-1";
	st.url = "ws://10.0.0.1:7000";
	st.protocol_version = MIG_PROTOCOL_VERSION;
	st.library_version = "0.1.0";
	st.n_users = 2;
	st.users = ucs;
	st.n_migrations = 1;
	st.migrations = mss;
	st.has_committed_out = 1;
	st.committed_out = 5;
	st.has_uptime_us = 1;
	st.uptime_us = 3600000000ull;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, status, &st, STATUS);
	frame("status", &f);

	Migwire__CancelRequest cn = MIGWIRE__CANCEL_REQUEST__INIT;
	cn.request_id = 4;
	cn.user = "alice";
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, cancel, &cn, CANCEL);
	frame("cancel-user", &f);
	cn.user = NULL;
	cn.mid = MID;
	frame("cancel-mid", &f);

	static const char token[] = "AQVhbGljZQZlZGdlLTIGZWRnZS0xAAAAAGVTxgABAgMEBQYHCAkKCwwNDg8Q"
				    "ERITFBUWFxgZGhscHR4fICEiIyQlJicoKSorLC0uLzA";
	Migwire__Attach at = MIGWIRE__ATTACH__INIT;
	at.token = (char *)token;
	at.user = "alice";
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, attach, &at, ATTACH);
	frame("attach", &f);

	Migwire__AttachReply ar = MIGWIRE__ATTACH_REPLY__INIT;
	ar.code = 0;
	ar.user = "alice";
	ar.engine_id = "edge-2";
	ar.app_url = "tcp://edge-2.example:9000";
	ar.resume_token = (char *)token;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, attach_reply, &ar, ATTACH_REPLY);
	frame("attach_reply", &f);
	Migwire__AttachReply ar2 = MIGWIRE__ATTACH_REPLY__INIT;
	ar2.code = MIG_EEXIST;
	ar2.reason = "token already used";
	BODY(f, attach_reply, &ar2, ATTACH_REPLY);
	frame("attach_reply-refused", &f);

	Migwire__Redirect rr = MIGWIRE__REDIRECT__INIT;
	rr.user = "alice";
	rr.session_url = "wss://edge-2.example:7000";
	rr.token = (char *)token;
	rr.app_url = "https://edge-2.example/app";
	rr.engine_id = "edge-2";
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, redirect, &rr, REDIRECT);
	frame("redirect", &f);

	Migwire__SessionRenew sn = MIGWIRE__SESSION_RENEW__INIT;
	sn.token = (char *)token;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, session_renew, &sn, SESSION_RENEW);
	frame("session_renew", &f);

	/* The announce channel (docs/ORCHESTRATOR.md). */
	Migwire__Announce an = MIGWIRE__ANNOUNCE__INIT;
	an.engine_id = "edge-1";
	an.url = "ws://10.0.0.1:7000";
	an.app_url = "tcp://10.0.0.1:9000";
	an.library_version = "0.1.0";
	an.heartbeat_ms = 500;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, announce, &an, ANNOUNCE);
	frame("announce", &f);

	Migwire__Heartbeat hb = MIGWIRE__HEARTBEAT__INIT;
	hb.seq = 42;
	hb.n_users = 2;
	hb.users = ucs;
	hb.has_migrations = 1;
	hb.migrations = 1;
	hb.has_uptime_us = 1;
	hb.uptime_us = 21000000;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, heartbeat, &hb, HEARTBEAT);
	frame("heartbeat", &f);

	/* Replication (docs/FAILOVER.md). */
	Migwire__ReplicaUpdate ru = MIGWIRE__REPLICA_UPDATE__INIT;
	ru.user = "alice";
	ru.epoch = 2;
	ru.seq = 17;
	ru.n_light = 1;
	ru.light = light;
	ru.has_time_us = 1;
	ru.time_us = 1764800000000000ull;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, replica_update, &ru, REPLICA_UPDATE);
	frame("replica_update", &f);
	Migwire__ReplicaUpdate rk = MIGWIRE__REPLICA_UPDATE__INIT;
	rk.user = "alice";
	rk.epoch = 2;
	rk.seq = 17;
	rk.has_keepalive = 1;
	rk.keepalive = 1;
	BODY(f, replica_update, &rk, REPLICA_UPDATE);
	frame("replica_update-keepalive", &f);

	Migwire__ReplicaUpdate rf_upd = MIGWIRE__REPLICA_UPDATE__INIT;
	rf_upd.user = "alice";
	rf_upd.epoch = 2;
	rf_upd.seq = 18;
	rf_upd.n_light = 1;
	rf_upd.light = light;
	rf_upd.has_base_seq = 1;
	rf_upd.base_seq = 17;
	rf_upd.has_files = 1;
	rf_upd.files = 2;
	BODY(f, replica_update, &rf_upd, REPLICA_UPDATE);
	frame("replica_update-files", &f);

	static uint8_t rf_data[] = "rs\x026\x41\x04new frame bytes\x00";
	Migwire__ReplicaFile rfl = MIGWIRE__REPLICA_FILE__INIT;
	rfl.user = "alice";
	rfl.epoch = 2;
	rfl.seq = 18;
	rfl.index = 0;
	rfl.domain = "frames";
	rfl.path = "log/frames.log";
	rfl.has_first = rfl.has_last = rfl.has_delta = 1;
	rfl.first = rfl.last = rfl.delta = 1;
	rfl.has_data = 1;
	rfl.data.len = sizeof(rf_data) - 1;
	rfl.data.data = rf_data;
	rfl.has_digest = 1;
	rfl.digest.len = MIG__DIGEST_LEN;
	rfl.digest.data = digest;
	rfl.has_size = 1;
	rfl.size = 4096;
	rfl.has_mode = 1;
	rfl.mode = 0644;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, replica_file, &rfl, REPLICA_FILE);
	frame("replica_file-delta", &f);
	Migwire__ReplicaFile rfr = MIGWIRE__REPLICA_FILE__INIT;
	rfr.user = "alice";
	rfr.epoch = 2;
	rfr.seq = 18;
	rfr.index = 1;
	rfr.domain = "frames";
	rfr.path = "old.jpg";
	rfr.has_remove = rfr.has_first = rfr.has_last = 1;
	rfr.remove = rfr.first = rfr.last = 1;
	BODY(f, replica_file, &rfr, REPLICA_FILE);
	frame("replica_file-remove", &f);

	Migwire__ReplicaAck ra = MIGWIRE__REPLICA_ACK__INIT;
	ra.user = "alice";
	ra.seq = 17;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, replica_ack, &ra, REPLICA_ACK);
	frame("replica_ack", &f);
	Migwire__ReplicaAck rs = MIGWIRE__REPLICA_ACK__INIT;
	rs.user = "alice";
	rs.seq = 18;
	rs.has_code = 1;
	rs.code = MIG_ESTATE;
	rs.reason = "superseded: promoted at epoch 3";
	rs.has_superseded = 1;
	rs.superseded = 1;
	rs.has_epoch = 1;
	rs.epoch = 3;
	rs.has_held_seq = 1;
	rs.held_seq = 17;
	BODY(f, replica_ack, &rs, REPLICA_ACK);
	frame("replica_ack-superseded", &f);

	Migwire__PromoteRequest pm = MIGWIRE__PROMOTE_REQUEST__INIT;
	pm.request_id = 11;
	pm.user = "alice";
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, promote, &pm, PROMOTE);
	frame("promote", &f);

	Migwire__ReplicateRequest rq = MIGWIRE__REPLICATE_REQUEST__INIT;
	rq.request_id = 12;
	rq.user = "alice";
	rq.standby_url = "ws://10.0.0.3:7000";
	rq.has_interval_ms = 1;
	rq.interval_ms = 250;
	f = (mig__frame)MIGWIRE__FRAME__INIT;
	BODY(f, replicate, &rq, REPLICATE);
	frame("replicate", &f);
	Migwire__ReplicateRequest rq2 = MIGWIRE__REPLICATE_REQUEST__INIT;
	rq2.request_id = 13;
	rq2.user = "alice";
	rq2.has_stop = 1;
	rq2.stop = 1;
	BODY(f, replicate, &rq2, REPLICATE);
	frame("replicate-stop", &f);
}

/* ------------------------------------------------------------------ librsync */

static int memfd_with(const uint8_t *data, size_t len)
{
	int fd = fuzz_memfd("seed");
	if (len && pwrite(fd, data, len, 0) != (ssize_t)len)
		abort();
	return fd;
}

static void sign(const uint8_t *data, size_t len, uint32_t block, uint32_t strong, mig__bytes *out)
{
	int fd = memfd_with(data, len);
	mig__sig_params p = {block, strong};
	if (mig__delta_signature(fd, UINT64_MAX, &p, out) != 0) {
		fprintf(stderr, "make_seeds: signature failed\n");
		exit(1);
	}
	close(fd);
}

static int collect(const uint8_t *data, size_t len, void *ud)
{
	return mig__bytes_append(ud, data, len);
}

/* fuzz_patch input: header, basis, delta of `new` against `basis`
 * (basis NULL: a literal delta for a peer without a copy). */
static void patch_seed(const char *name, const uint8_t *basis, size_t blen, const uint8_t *new,
		       size_t nlen, uint32_t block, uint8_t seed)
{
	mig__bytes in = {0}, sig = {0};
	mig__sig *s = NULL;
	if (basis) {
		sign(basis, blen, block, 8, &sig);
		char why[256];
		if (mig__delta_load_signature(sig.data, sig.len, &s, why, sizeof(why)) != 0) {
			fprintf(stderr, "make_seeds: %s\n", why);
			exit(1);
		}
	}
	uint8_t hdr[3] = {(uint8_t)blen, (uint8_t)(blen >> 8), seed};
	if (blen > 0xffff || mig__bytes_append(&in, hdr, 3) || mig__bytes_append(&in, basis, blen))
		abort();
	int fd = memfd_with(new, nlen);
	if (mig__delta_generate(fd, UINT64_MAX, s, 777, collect, &in) != 0)
		abort();
	close(fd);
	put("fuzz_patch", name, in.data, in.len);
	mig__delta_sig_free(s);
	mig__bytes_free(&sig);
	mig__bytes_free(&in);
}

static void rsync_seeds(void)
{
	uint8_t fixed[FUZZ_FIXED_LEN], edited[FUZZ_FIXED_LEN + 100];
	fuzz_fixed_buffer(fixed);
	/* An edit: 100 bytes inserted at 1000, 64 changed at 3000. */
	memcpy(edited, fixed, 1000);
	memset(edited + 1000, 'X', 100);
	memcpy(edited + 1100, fixed + 1000, FUZZ_FIXED_LEN - 1000);
	memset(edited + 3100, 'Y', 64);

	static const struct {
		const char *name;
		uint32_t block, strong;
		bool edited;
	} sigs[] = {
		{"fixed-b64-s4", 64, 4, false},       {"fixed-b64-s16", 64, 16, false},
		{"fixed-b256-s8", 256, 8, false},     {"fixed-b2048-s16", 2048, 16, false},
		{"fixed-b8192-s12", 8192, 12, false}, {"edited-b128-s8", 128, 8, true},
	};
	/* The engine signs with MD4 strong sums of at most 16 bytes; the
	 * corpus also keeps older BLAKE2 seeds with 32-byte sums
	 * (fixed-b64-s32, fixed-b8192-s32), which it still accepts. */
	for (size_t i = 0; i < MIG__ARRAY_LEN(sigs); i++) {
		mig__bytes sig = {0};
		sign(sigs[i].edited ? edited : fixed,
		     sigs[i].edited ? sizeof(edited) : sizeof(fixed), sigs[i].block, sigs[i].strong,
		     &sig);
		put("fuzz_signature", sigs[i].name, sig.data, sig.len);
		if (i == 2) {
			/* The same with the non-rabin-karp BLAKE2 magic ("rs\x017"). */
			sig.data[3] = 0x37;
			put("fuzz_signature", "fixed-b256-s8-blake2", sig.data, sig.len);
		}
		mig__bytes_free(&sig);
	}
	mig__bytes empty = {0};
	sign(NULL, 0, 1024, 16, &empty);
	put("fuzz_signature", "empty-file", empty.data, empty.len);
	mig__bytes_free(&empty);

	/* Deltas: an edit, a truncation, an append, from nothing, to nothing. */
	patch_seed("edit-b128", fixed, sizeof(fixed), edited, sizeof(edited), 128, 0);
	patch_seed("edit-b64-pieces", fixed, sizeof(fixed), edited, sizeof(edited), 64, 0x5a);
	patch_seed("truncate-b256", fixed, sizeof(fixed), fixed, 2000, 256, 2);
	patch_seed("same-b512", fixed, sizeof(fixed), fixed, sizeof(fixed), 512, 4);
	patch_seed("append-b64", fixed, 3000, fixed, sizeof(fixed), 64, 6);
	patch_seed("reorder-b64", edited + 1100, 2000, fixed, sizeof(fixed), 64, 8);
	patch_seed("literal-no-basis", NULL, 0, edited, 500, 0, 1);
	patch_seed("literal-empty-basis", NULL, 0, fixed, 300, 0, 0);
	patch_seed("to-empty", fixed, 1000, NULL, 0, 64, 10);
}

/* ------------------------------------------------------------------ tokens */

static void token_seeds(void)
{
	mig__session_key key;
	const char secret[] = FUZZ_TOKEN_SECRET;
	if (mig__auth_session_key(secret, sizeof(secret) - 1, &key) != 0)
		abort();
	static const struct {
		const char *name, *user, *target, *issuer;
		uint64_t expiry;
	} toks[] = {
		{"alice", "alice", "edge-2", "edge-1", 1700000000},
		{"no-issuer", "bob", "e", NULL, 1},
		{"long-user", NULL /* MIG__USER_MAX bytes */, "edge-2.example.org",
		 "edge-1.example.org", UINT64_MAX},
	};
	char long_user[MIG__USER_MAX + 1];
	for (size_t i = 0; i < MIG__USER_MAX; i++)
		long_user[i] = "abcdefghijklmnopqrstuvwxyz0123456789.@_-"[i % 40];
	long_user[MIG__USER_MAX] = '\0';
	for (size_t i = 0; i < MIG__ARRAY_LEN(toks); i++) {
		char text[MIG__TOKEN_B64_MAX + 1], name[64];
		if (mig__token_mint(&key, toks[i].user ? toks[i].user : long_user, toks[i].target,
				    toks[i].issuer, toks[i].expiry, text, sizeof(text),
				    NULL) != 0) {
			fprintf(stderr, "make_seeds: cannot mint %s\n", toks[i].name);
			exit(1);
		}
		snprintf(name, sizeof(name), "text-%s", toks[i].name);
		put("fuzz_token", name, text, strlen(text));
		uint8_t raw[MIG__TOKEN_RAW_MAX];
		long n = mig__b64url_decode(text, strlen(text), raw, sizeof(raw));
		if (n < MIG__AUTH_MAC_LEN)
			abort();
		snprintf(name, sizeof(name), "body-%s", toks[i].name);
		put("fuzz_token", name, raw, (size_t)n - MIG__AUTH_MAC_LEN);
	}
	mig__auth_session_key_clear(&key);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: make_seeds tests/fuzz/corpus\n");
		return 2;
	}
	root = argv[1];
	if (mkdir(root, 0755) != 0 && errno != EEXIST) {
		perror(root);
		return 1;
	}
	frames();
	rsync_seeds();
	token_seeds();
	printf("make_seeds: %d files in %s\n", written, root);
	return 0;
}
