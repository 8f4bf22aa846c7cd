/* Unit tests of wire.c: round trips of every frame kind, every validation
 * rule, truncated and random input, the decode budget and allocation failure. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cnt_alloc.h"
#include "wire.h"

#define CAP MIG__DEFAULT_MAX_FRAME
#define MID "0123456789abcdef0123456789abcdef"
#define MID2 "fedcba9876543210fedcba9876543210"

/* ---------------------------------------------------------------- fixtures */

/* One valid instance of every message, rebuilt before each test so a test
 * can break one field and encode. */
static struct {
	uint8_t snonce[MIG__NONCE_LEN];
	uint8_t cnonce[MIG__NONCE_LEN];
	uint8_t mac[MIG__MAC_LEN];
	uint8_t blob[300];
	Migwire__Challenge challenge;
	Migwire__Hello hello;
	Migwire__Welcome welcome;
	Migwire__DomainInfo dinfo[MIG__MAX_DOMAINS + 1];
	Migwire__DomainInfo *dinfo_p[MIG__MAX_DOMAINS + 1];
	char dnames[MIG__MAX_DOMAINS + 1][16];
	Migwire__Begin begin;
	Migwire__Accept accept;
	Migwire__Reject reject;
	Migwire__DomainData ddata[MIG__MAX_DOMAINS + 1];
	Migwire__DomainData *ddata_p[MIG__MAX_DOMAINS + 1];
	Migwire__Prepare prepare;
	Migwire__Prepared prepared;
	Migwire__Failed failed;
	Migwire__Commit commit;
	Migwire__Committed committed;
	Migwire__Abort abort;
	Migwire__Aborted aborted;
	Migwire__OutcomeQuery outcome_query;
	Migwire__Outcome outcome;
	Migwire__MigrateRequest migrate;
	Migwire__ListUsersRequest list_users;
	Migwire__SubscribeRequest subscribe;
	Migwire__UserEntry entries[3];
	Migwire__UserEntry *entries_p[3];
	Migwire__ListUsersReply users;
	Migwire__Event event;
	Migwire__Event reply_event;
	Migwire__Reply reply;
	Migwire__StatusRequest status_request;
	Migwire__MigrationStatus mstatus[2];
	Migwire__MigrationStatus *mstatus_p[2];
	Migwire__UserCount ucount[17];
	Migwire__UserCount *ucount_p[17];
	Migwire__StatusReply status;
	Migwire__CancelRequest cancel;
} F;

static const Migwire__Frame__BodyCase all_kinds[] = {
	MIGWIRE__FRAME__BODY_CHALLENGE,  MIGWIRE__FRAME__BODY_HELLO,
	MIGWIRE__FRAME__BODY_WELCOME,    MIGWIRE__FRAME__BODY_BEGIN,
	MIGWIRE__FRAME__BODY_ACCEPT,     MIGWIRE__FRAME__BODY_REJECT,
	MIGWIRE__FRAME__BODY_PREPARE,    MIGWIRE__FRAME__BODY_PREPARED,
	MIGWIRE__FRAME__BODY_FAILED,     MIGWIRE__FRAME__BODY_COMMIT,
	MIGWIRE__FRAME__BODY_COMMITTED,  MIGWIRE__FRAME__BODY_ABORT,
	MIGWIRE__FRAME__BODY_ABORTED,    MIGWIRE__FRAME__BODY_OUTCOME_QUERY,
	MIGWIRE__FRAME__BODY_OUTCOME,    MIGWIRE__FRAME__BODY_MIGRATE,
	MIGWIRE__FRAME__BODY_LIST_USERS, MIGWIRE__FRAME__BODY_SUBSCRIBE,
	MIGWIRE__FRAME__BODY_USERS,      MIGWIRE__FRAME__BODY_EVENT,
	MIGWIRE__FRAME__BODY_REPLY,      MIGWIRE__FRAME__BODY_STATUS_REQUEST,
	MIGWIRE__FRAME__BODY_STATUS,     MIGWIRE__FRAME__BODY_CANCEL,
};

static void fixture_init(void)
{
	memset(&F, 0, sizeof(F));
	for (size_t i = 0; i < MIG__NONCE_LEN; i++) {
		F.snonce[i] = (uint8_t)(i * 7 + 1);
		F.cnonce[i] = (uint8_t)(i * 11 + 2);
		F.mac[i] = (uint8_t)(0xff - i);
	}
	for (size_t i = 0; i < sizeof(F.blob); i++)
		F.blob[i] = (uint8_t)i;

	migwire__challenge__init(&F.challenge);
	F.challenge.protocol_version = MIG_PROTOCOL_VERSION;
	F.challenge.server_nonce = (ProtobufCBinaryData){MIG__NONCE_LEN, F.snonce};
	F.challenge.engine_id = "engine-b";

	migwire__hello__init(&F.hello);
	F.hello.protocol_version = MIG_PROTOCOL_VERSION;
	F.hello.channel = MIGWIRE__CHANNEL__CHANNEL_PEER;
	F.hello.client_nonce = (ProtobufCBinaryData){MIG__NONCE_LEN, F.cnonce};
	F.hello.engine_id = "engine a";
	F.hello.advertised_url = "ws://127.0.0.1:7000";
	F.hello.mac = (ProtobufCBinaryData){MIG__MAC_LEN, F.mac};

	migwire__welcome__init(&F.welcome);
	F.welcome.mac = (ProtobufCBinaryData){MIG__MAC_LEN, F.mac};

	for (size_t i = 0; i <= MIG__MAX_DOMAINS; i++) {
		snprintf(F.dnames[i], sizeof(F.dnames[i]), "dom.%zu", i);
		migwire__domain_info__init(&F.dinfo[i]);
		F.dinfo[i].name = F.dnames[i];
		F.dinfo[i].version = (uint32_t)i + 1;
		F.dinfo_p[i] = &F.dinfo[i];
		migwire__domain_data__init(&F.ddata[i]);
		F.ddata[i].name = F.dnames[i];
		F.ddata[i].version = (uint32_t)i + 1;
		F.ddata[i].data = (ProtobufCBinaryData){(i % 4) * 10, F.blob};
		F.ddata_p[i] = &F.ddata[i];
	}
	F.dinfo[1].has_kind = 1;
	F.dinfo[1].kind = MIGWIRE__DOMAIN_KIND__DOMAIN_FILE;
	F.dinfo[1].type_name = "sandwich.Progress";

	migwire__begin__init(&F.begin);
	F.begin.mid = MID;
	F.begin.user = "alice";
	F.begin.source_engine = "engine-a";
	F.begin.source_url = "wss://src.example:7443/peer";
	F.begin.n_domains = 3;
	F.begin.domains = F.dinfo_p;

	migwire__accept__init(&F.accept);
	F.accept.mid = MID;
	migwire__reject__init(&F.reject);
	F.reject.mid = MID;
	F.reject.code = MIG_ENODOMAIN;
	F.reject.reason = "no domain dom.2";

	migwire__prepare__init(&F.prepare);
	F.prepare.mid = MID;
	F.prepare.n_light = 3;
	F.prepare.light = F.ddata_p;
	migwire__prepared__init(&F.prepared);
	F.prepared.mid = MID;
	migwire__failed__init(&F.failed);
	F.failed.mid = MID;
	F.failed.code = MIG_ECALLBACK;
	F.failed.reason = "merge refused";
	migwire__commit__init(&F.commit);
	F.commit.mid = MID;
	F.commit.user = "alice";
	migwire__committed__init(&F.committed);
	F.committed.mid = MID;
	migwire__abort__init(&F.abort);
	F.abort.mid = MID;
	F.abort.reason = "canceled";
	migwire__aborted__init(&F.aborted);
	F.aborted.mid = MID;
	migwire__outcome_query__init(&F.outcome_query);
	F.outcome_query.mid = MID;
	F.outcome_query.user = "alice";
	migwire__outcome__init(&F.outcome);
	F.outcome.mid = MID;
	F.outcome.state = MIGWIRE__OUTCOME_STATE__OUTCOME_UNKNOWN_USER_ABSENT;

	migwire__migrate_request__init(&F.migrate);
	F.migrate.request_id = 7;
	F.migrate.user = "alice";
	F.migrate.destination_url = "ws://dst:7000";
	migwire__list_users_request__init(&F.list_users);
	F.list_users.request_id = 8;
	migwire__subscribe_request__init(&F.subscribe);
	F.subscribe.request_id = 9;

	static char *const names[3] = {"alice", "bob", "carol"};
	for (size_t i = 0; i < 3; i++) {
		migwire__user_entry__init(&F.entries[i]);
		F.entries[i].user = names[i];
		F.entries[i].state = (Migwire__UserState)(i * 2 + 1);
		F.entries_p[i] = &F.entries[i];
	}
	migwire__list_users_reply__init(&F.users);
	F.users.request_id = 8;
	F.users.n_users = 3;
	F.users.users = F.entries_p;

	migwire__event__init(&F.event);
	F.event.type = MIGWIRE__EVENT_TYPE__EVENT_COMMITTED;
	F.event.mid = MID;
	F.event.user = "alice";
	F.event.peer_url = "ws://dst:7000";
	F.event.has_code = 1;
	F.event.code = 0;
	F.event.reason = "";
	F.event.has_bytes_sent = 1;
	F.event.bytes_sent = UINT64_C(1) << 40;
	F.event.has_bytes_received = 1;
	F.event.bytes_received = 12;
	F.event.has_duration_us = 1;
	F.event.duration_us = 3456;
	F.event.has_downtime_us = 1;
	F.event.downtime_us = 789;
	F.event.has_time_us = 1;
	F.event.time_us = UINT64_C(1700000000000000);

	F.reply_event = F.event;
	F.reply_event.mid = MID2;
	F.reply_event.type = MIGWIRE__EVENT_TYPE__EVENT_ABORTED;
	F.reply_event.code = MIG_EREJECTED;
	F.reply_event.reason = "rejected";
	migwire__reply__init(&F.reply);
	F.reply.request_id = 7;
	F.reply.code = MIG_EREJECTED;
	F.reply.reason = "the destination refused";
	F.reply.event = &F.reply_event;

	migwire__status_request__init(&F.status_request);
	F.status_request.request_id = 10;
	static char *const phases[2] = {"precopy", "verifying"};
	for (size_t i = 0; i < 2; i++) {
		Migwire__MigrationStatus *m = &F.mstatus[i];
		migwire__migration_status__init(m);
		m->mid = i ? MID2 : MID;
		m->user = i ? "bob" : "alice";
		m->peer_url = "ws://dst:7000";
		m->role = i ? MIGWIRE__MIGRATION_ROLE__ROLE_DESTINATION
			    : MIGWIRE__MIGRATION_ROLE__ROLE_SOURCE;
		m->phase = phases[i];
		m->has_rounds = 1;
		m->rounds = 2;
		m->has_bytes_sent = 1;
		m->bytes_sent = UINT64_C(1) << 33;
		m->has_started_us = 1;
		m->started_us = UINT64_C(1700000000000000);
		m->has_parked = 1;
		m->parked = i == 1;
		F.mstatus_p[i] = m;
	}
	for (size_t i = 0; i < 17; i++) {
		migwire__user_count__init(&F.ucount[i]);
		F.ucount[i].state = (Migwire__UserState)(i % 6);
		F.ucount[i].count = (uint32_t)(i + 1);
		F.ucount_p[i] = &F.ucount[i];
	}
	migwire__status_reply__init(&F.status);
	F.status.request_id = 10;
	F.status.engine_id = "engine-a";
	F.status.url = "ws://src:7000";
	F.status.protocol_version = MIG_PROTOCOL_VERSION;
	F.status.library_version = "0.1.0";
	F.status.n_users = 2;
	F.status.users = F.ucount_p + 1; /* ACTIVE 2, MIGRATING 3 */
	F.status.n_migrations = 2;
	F.status.migrations = F.mstatus_p;
	F.status.has_committed_out = 1;
	F.status.committed_out = 5;
	F.status.has_bytes_sent = 1;
	F.status.bytes_sent = UINT64_C(1) << 40;
	migwire__cancel_request__init(&F.cancel);
	F.cancel.request_id = 11;
	F.cancel.mid = MID;
}

static int setup(void **state)
{
	fixture_init();
	return 0;
}

static int teardown(void **state)
{
	cnt_remove();
	return 0;
}

static Migwire__Frame frame_of(Migwire__Frame__BodyCase kind)
{
	Migwire__Frame f = MIGWIRE__FRAME__INIT;
	f.body_case = kind;
	switch (kind) {
	case MIGWIRE__FRAME__BODY_CHALLENGE:
		f.challenge = &F.challenge;
		break;
	case MIGWIRE__FRAME__BODY_HELLO:
		f.hello = &F.hello;
		break;
	case MIGWIRE__FRAME__BODY_WELCOME:
		f.welcome = &F.welcome;
		break;
	case MIGWIRE__FRAME__BODY_BEGIN:
		f.begin = &F.begin;
		break;
	case MIGWIRE__FRAME__BODY_ACCEPT:
		f.accept = &F.accept;
		break;
	case MIGWIRE__FRAME__BODY_REJECT:
		f.reject = &F.reject;
		break;
	case MIGWIRE__FRAME__BODY_PREPARE:
		f.prepare = &F.prepare;
		break;
	case MIGWIRE__FRAME__BODY_PREPARED:
		f.prepared = &F.prepared;
		break;
	case MIGWIRE__FRAME__BODY_FAILED:
		f.failed = &F.failed;
		break;
	case MIGWIRE__FRAME__BODY_COMMIT:
		f.commit = &F.commit;
		break;
	case MIGWIRE__FRAME__BODY_COMMITTED:
		f.committed = &F.committed;
		break;
	case MIGWIRE__FRAME__BODY_ABORT:
		f.abort = &F.abort;
		break;
	case MIGWIRE__FRAME__BODY_ABORTED:
		f.aborted = &F.aborted;
		break;
	case MIGWIRE__FRAME__BODY_OUTCOME_QUERY:
		f.outcome_query = &F.outcome_query;
		break;
	case MIGWIRE__FRAME__BODY_OUTCOME:
		f.outcome = &F.outcome;
		break;
	case MIGWIRE__FRAME__BODY_MIGRATE:
		f.migrate = &F.migrate;
		break;
	case MIGWIRE__FRAME__BODY_LIST_USERS:
		f.list_users = &F.list_users;
		break;
	case MIGWIRE__FRAME__BODY_SUBSCRIBE:
		f.subscribe = &F.subscribe;
		break;
	case MIGWIRE__FRAME__BODY_USERS:
		f.users = &F.users;
		break;
	case MIGWIRE__FRAME__BODY_EVENT:
		f.event = &F.event;
		break;
	case MIGWIRE__FRAME__BODY_REPLY:
		f.reply = &F.reply;
		break;
	case MIGWIRE__FRAME__BODY_STATUS_REQUEST:
		f.status_request = &F.status_request;
		break;
	case MIGWIRE__FRAME__BODY_STATUS:
		f.status = &F.status;
		break;
	case MIGWIRE__FRAME__BODY_CANCEL:
		f.cancel = &F.cancel;
		break;
	default:
		f.body_case = MIGWIRE__FRAME__BODY__NOT_SET;
		break;
	}
	return f;
}

/* ---------------------------------------------------------------- helpers */

static mig__msg *encode(const Migwire__Frame *f)
{
	mig__msg *m = NULL;
	assert_int_equal(mig__wire_encode(f, 0, &m), 0);
	assert_non_null(m);
	return m;
}

static mig__frame *decode_ok(const mig__msg *m)
{
	mig__frame *out = NULL;
	char why[256] = "untouched";
	int rc = mig__wire_decode(m->base + MIG__MSG_HEADROOM, m->len, CAP, &out, why, sizeof(why));
	if (rc != 0)
		fail_msg("decode failed: %s (%s)", mig_err_name(rc), why);
	assert_non_null(out);
	assert_string_equal(why, "");
	return out;
}

/* Encoding is deterministic, so a frame that decodes and re-encodes to the
 * same bytes carried every field across. */
static mig__frame *roundtrip(Migwire__Frame__BodyCase kind)
{
	Migwire__Frame f = frame_of(kind);
	mig__msg *m = encode(&f);
	mig__frame *d = decode_ok(m);
	assert_int_equal(d->body_case, kind);
	mig__msg *again = encode(d);
	assert_int_equal(again->len, m->len);
	assert_memory_equal(mig__msg_payload(again), mig__msg_payload(m), m->len);
	mig__msg_free(again);
	mig__msg_free(m);
	return d;
}

static int decode_raw(const uint8_t *data, size_t len, char *why, size_t why_len)
{
	mig__frame *out = (mig__frame *)(uintptr_t)1;
	int rc = mig__wire_decode(data, len, CAP, &out, why, why_len);
	if (rc == 0) {
		assert_non_null(out);
		mig__wire_free(out);
	} else {
		assert_null(out);
	}
	return rc;
}

/* Encode `f`, expect the decoder to refuse it with MIG_EPROTO and a reason
 * naming `field`. */
static void expect_reject(const Migwire__Frame *f, const char *field)
{
	char why[256] = "";
	mig__msg *m = encode(f);
	int rc = decode_raw(mig__msg_payload(m), m->len, why, sizeof(why));
	mig__msg_free(m);
	if (rc != MIG_EPROTO)
		fail_msg("expected MIG_EPROTO for %s, got %s (%s)", field, mig_err_name(rc), why);
	if (!strstr(why, field))
		fail_msg("reason \"%s\" does not mention \"%s\"", why, field);
	if (strchr(why, '\n'))
		fail_msg("reason \"%s\" is not one line", why);
}

static void expect_accept(const Migwire__Frame *f)
{
	mig__msg *m = encode(f);
	mig__wire_free(decode_ok(m));
	mig__msg_free(m);
}

static void expect_reject_kind(Migwire__Frame__BodyCase kind, const char *field)
{
	Migwire__Frame f = frame_of(kind);
	expect_reject(&f, field);
}

static void expect_accept_kind(Migwire__Frame__BodyCase kind)
{
	Migwire__Frame f = frame_of(kind);
	expect_accept(&f);
}

static size_t put_varint(uint8_t *p, uint64_t v)
{
	size_t n = 0;
	while (v >= 0x80) {
		p[n++] = (uint8_t)(v | 0x80);
		v >>= 7;
	}
	p[n++] = (uint8_t)v;
	return n;
}

/* Tag of a length-delimited (2) or varint (0) field. */
static size_t put_tag(uint8_t *p, uint32_t field, unsigned wire_type)
{
	return put_varint(p, ((uint64_t)field << 3) | wire_type);
}

static char *repeat(char c, size_t n)
{
	char *s = malloc(n + 1);
	assert_non_null(s);
	memset(s, c, n);
	s[n] = '\0';
	return s;
}

/* ---------------------------------------------------------------- messages */

static void test_msg_new(void **state)
{
	mig__msg *m = mig__msg_new(100);
	assert_non_null(m);
	assert_null(m->next);
	assert_int_equal(m->len, 100);
	assert_int_equal(m->sent, 0);
	assert_int_equal(m->close_after, 0);
	assert_ptr_equal(mig__msg_payload(m), m->base + MIG__MSG_HEADROOM);
	/* The whole headroom and payload are ours to write (ASan checks). */
	memset(m->base, 0xab, MIG__MSG_HEADROOM + 100);
	mig__msg_free(m);

	m = mig__msg_new(0);
	assert_non_null(m);
	assert_int_equal(m->len, 0);
	mig__msg_free(m);
	mig__msg_free(NULL);

	assert_null(mig__msg_new(SIZE_MAX));
	assert_null(mig__msg_new(SIZE_MAX - MIG__MSG_HEADROOM));
}

/* The bulk pools: blocks come back for reuse up to `keep`, larger requests
 * go to the heap, a block may outlive its owner's release, and nothing is
 * left allocated once the last block is back. */
static void test_pool(void **state)
{
	cnt_install(-1);
	mig__pool *p = mig__pool_new(1024, 2);
	assert_non_null(p);
	void *b[3];
	for (int i = 0; i < 3; i++) {
		b[i] = mig__pool_get(p, 1000);
		assert_non_null(b[i]);
		memset(b[i], i, 1024); /* the whole block is the caller's (ASan) */
	}
	for (int i = 0; i < 3; i++)
		mig__pool_put(b[i]);
	size_t calls = cnt_calls;
	void *again[2] = {mig__pool_get(p, 10), mig__pool_get(p, 1024)};
	assert_int_equal(cnt_calls, calls); /* both from the two kept */
	assert_true((again[0] == b[0] || again[0] == b[1]) &&
		    (again[1] == b[0] || again[1] == b[1]));
	void *big = mig__pool_get(p, 4096); /* over the block size: the heap */
	assert_non_null(big);
	memset(big, 1, 4096);
	assert_int_equal(cnt_calls, calls + 1);
	mig__pool_put(big);
	mig__pool_put(again[0]);
	mig__pool_trim(p);
	assert_int_equal(cnt_calls, calls + 1);
	/* Released with a block still out: that block frees the pool. */
	mig__pool_release(p);
	assert_true(cnt_live > 0);
	mig__pool_put(again[1]);
	assert_int_equal(cnt_live, 0);
	mig__pool_put(NULL);
	/* Without a pool, the heap. */
	void *h = mig__pool_get(NULL, 100);
	assert_non_null(h);
	mig__pool_put(h);
	assert_int_equal(cnt_live, 0);
	assert_null(mig__pool_new(SIZE_MAX, 2));
	assert_null(mig__pool_new(1024, 0));
	cnt_remove();
}

/* A chunk encoded into a pooled message and decoded with its payload in a
 * pooled block, which leaves the frame for the worker that writes it. */
static void test_pool_chunk_roundtrip(void **state)
{
	cnt_install(-1);
	mig__pool *tx = mig__pool_new(MIG__POOL_BLOCK, 4);
	mig__pool *rx = mig__pool_new(MIG__POOL_BLOCK, 4);
	assert_non_null(tx);
	assert_non_null(rx);
	size_t n = 256 * 1024;
	uint8_t *data = malloc(n);
	assert_non_null(data);
	for (size_t i = 0; i < n; i++)
		data[i] = (uint8_t)(i * 7 + 3);
	Migwire__Chunk c = MIGWIRE__CHUNK__INIT;
	c.mid = MID;
	c.stream = 9;
	c.data.data = data;
	c.data.len = n;
	mig__frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_CHUNK;
	f.chunk = &c;
	mig__msg *m = NULL;
	assert_int_equal(mig__wire_encode_pool(&f, CAP, tx, &m), 0);
	assert_ptr_equal(m->pool, tx);
	mig__msg *first = m;
	mig__msg_free(m);
	assert_int_equal(mig__wire_encode_pool(&f, CAP, tx, &m), 0);
	assert_ptr_equal(m, first); /* the same block again */

	mig__frame *in = NULL;
	char why[160];
	assert_int_equal(mig__wire_decode_pool(mig__msg_payload(m), m->len, CAP, rx, &in, why,
					       sizeof(why)),
			 0);
	assert_int_equal(in->body_case, MIGWIRE__FRAME__BODY_CHUNK);
	assert_int_equal(in->chunk->data.len, n);
	size_t len = in->chunk->data.len;
	uint8_t *taken = mig__wire_take_bytes(&in->chunk->data);
	assert_null(in->chunk->data.data);
	assert_int_equal(in->chunk->data.len, 0);
	mig__wire_free(in);
	assert_int_equal(len, n);
	assert_memory_equal(taken, data, n);
	mig__wire_bytes_free(taken);
	mig__wire_bytes_free(NULL);
	/* A small frame's fields stay on the heap, and free as before. */
	c.data.len = 100;
	mig__msg *small = NULL;
	assert_int_equal(mig__wire_encode_pool(&f, CAP, tx, &small), 0);
	assert_int_equal(mig__wire_decode_pool(mig__msg_payload(small), small->len, CAP, rx, &in,
					       why, sizeof(why)),
			 0);
	assert_memory_equal(in->chunk->data.data, data, 100);
	mig__wire_free(in);
	mig__msg_free(small);
	mig__msg_free(m);
	mig__pool_release(tx);
	mig__pool_release(rx);
	free(data);
	assert_int_equal(cnt_live, 0);
	cnt_remove();
}

/* ---------------------------------------------------------------- round trips */

static void test_roundtrip_handshake(void **state)
{
	mig__frame *d = roundtrip(MIGWIRE__FRAME__BODY_CHALLENGE);
	assert_int_equal(d->challenge->protocol_version, MIG_PROTOCOL_VERSION);
	assert_memory_equal(d->challenge->server_nonce.data, F.snonce, MIG__NONCE_LEN);
	assert_string_equal(d->challenge->engine_id, "engine-b");
	mig__wire_free(d);

	F.challenge.engine_id = NULL;
	d = roundtrip(MIGWIRE__FRAME__BODY_CHALLENGE);
	assert_null(d->challenge->engine_id);
	mig__wire_free(d);

	d = roundtrip(MIGWIRE__FRAME__BODY_HELLO);
	assert_int_equal(d->hello->channel, MIGWIRE__CHANNEL__CHANNEL_PEER);
	assert_memory_equal(d->hello->client_nonce.data, F.cnonce, MIG__NONCE_LEN);
	assert_string_equal(d->hello->engine_id, "engine a");
	assert_string_equal(d->hello->advertised_url, "ws://127.0.0.1:7000");
	assert_int_equal(d->hello->mac.len, MIG__MAC_LEN);
	assert_memory_equal(d->hello->mac.data, F.mac, MIG__MAC_LEN);
	mig__wire_free(d);

	/* Insecure mode: no MAC, a control client with no id or URL. */
	F.hello.mac = (ProtobufCBinaryData){0, NULL};
	F.hello.channel = MIGWIRE__CHANNEL__CHANNEL_CONTROL;
	F.hello.engine_id = NULL;
	F.hello.advertised_url = NULL;
	d = roundtrip(MIGWIRE__FRAME__BODY_HELLO);
	assert_int_equal(d->hello->mac.len, 0);
	assert_null(d->hello->engine_id);
	assert_null(d->hello->advertised_url);
	mig__wire_free(d);
	F.hello.channel = MIGWIRE__CHANNEL__CHANNEL_SESSION;
	F.hello.advertised_url = "";
	mig__wire_free(roundtrip(MIGWIRE__FRAME__BODY_HELLO));

	d = roundtrip(MIGWIRE__FRAME__BODY_WELCOME);
	assert_memory_equal(d->welcome->mac.data, F.mac, MIG__MAC_LEN);
	mig__wire_free(d);
	F.welcome.mac = (ProtobufCBinaryData){0, NULL};
	d = roundtrip(MIGWIRE__FRAME__BODY_WELCOME);
	assert_int_equal(d->welcome->mac.len, 0);
	mig__wire_free(d);
}

static void test_roundtrip_peer(void **state)
{
	mig__frame *d = roundtrip(MIGWIRE__FRAME__BODY_BEGIN);
	assert_string_equal(d->begin->mid, MID);
	assert_string_equal(d->begin->user, "alice");
	assert_string_equal(d->begin->source_engine, "engine-a");
	assert_string_equal(d->begin->source_url, "wss://src.example:7443/peer");
	assert_int_equal(d->begin->n_domains, 3);
	assert_string_equal(d->begin->domains[2]->name, "dom.2");
	assert_int_equal(d->begin->domains[2]->version, 3);
	assert_int_equal(d->begin->domains[0]->kind, MIGWIRE__DOMAIN_KIND__DOMAIN_LIGHT);
	assert_int_equal(d->begin->domains[1]->kind, MIGWIRE__DOMAIN_KIND__DOMAIN_FILE);
	assert_string_equal(d->begin->domains[1]->type_name, "sandwich.Progress");
	mig__wire_free(d);

	F.begin.n_domains = 0;
	mig__wire_free(roundtrip(MIGWIRE__FRAME__BODY_BEGIN));
	F.begin.n_domains = MIG__MAX_DOMAINS;
	mig__wire_free(roundtrip(MIGWIRE__FRAME__BODY_BEGIN));

	d = roundtrip(MIGWIRE__FRAME__BODY_ACCEPT);
	assert_string_equal(d->accept->mid, MID);
	mig__wire_free(d);

	d = roundtrip(MIGWIRE__FRAME__BODY_REJECT);
	assert_int_equal(d->reject->code, MIG_ENODOMAIN);
	assert_string_equal(d->reject->reason, "no domain dom.2");
	mig__wire_free(d);

	d = roundtrip(MIGWIRE__FRAME__BODY_PREPARE);
	assert_int_equal(d->prepare->n_light, 3);
	assert_int_equal(d->prepare->light[0]->data.len, 0);
	assert_int_equal(d->prepare->light[1]->data.len, 10);
	assert_memory_equal(d->prepare->light[2]->data.data, F.blob, 20);
	mig__wire_free(d);
	F.prepare.n_light = MIG__MAX_DOMAINS;
	mig__wire_free(roundtrip(MIGWIRE__FRAME__BODY_PREPARE));

	mig__wire_free(roundtrip(MIGWIRE__FRAME__BODY_PREPARED));
	d = roundtrip(MIGWIRE__FRAME__BODY_FAILED);
	assert_int_equal(d->failed->code, MIG_ECALLBACK);
	assert_string_equal(d->failed->reason, "merge refused");
	mig__wire_free(d);
	F.failed.reason = NULL;
	d = roundtrip(MIGWIRE__FRAME__BODY_FAILED);
	assert_null(d->failed->reason);
	mig__wire_free(d);

	d = roundtrip(MIGWIRE__FRAME__BODY_COMMIT);
	assert_string_equal(d->commit->user, "alice");
	mig__wire_free(d);
	mig__wire_free(roundtrip(MIGWIRE__FRAME__BODY_COMMITTED));
	d = roundtrip(MIGWIRE__FRAME__BODY_ABORT);
	assert_string_equal(d->abort->reason, "canceled");
	mig__wire_free(d);
	mig__wire_free(roundtrip(MIGWIRE__FRAME__BODY_ABORTED));
	d = roundtrip(MIGWIRE__FRAME__BODY_OUTCOME_QUERY);
	assert_string_equal(d->outcome_query->user, "alice");
	mig__wire_free(d);

	for (int s = MIGWIRE__OUTCOME_STATE__OUTCOME_PENDING;
	     s <= MIGWIRE__OUTCOME_STATE__OUTCOME_UNKNOWN_USER_ABSENT; s++) {
		F.outcome.state = (Migwire__OutcomeState)s;
		d = roundtrip(MIGWIRE__FRAME__BODY_OUTCOME);
		assert_int_equal(d->outcome->state, s);
		mig__wire_free(d);
	}
}

static void test_roundtrip_control(void **state)
{
	mig__frame *d = roundtrip(MIGWIRE__FRAME__BODY_MIGRATE);
	assert_int_equal(d->migrate->request_id, 7);
	assert_string_equal(d->migrate->destination_url, "ws://dst:7000");
	mig__wire_free(d);

	d = roundtrip(MIGWIRE__FRAME__BODY_LIST_USERS);
	assert_int_equal(d->list_users->request_id, 8);
	mig__wire_free(d);
	d = roundtrip(MIGWIRE__FRAME__BODY_SUBSCRIBE);
	assert_int_equal(d->subscribe->request_id, 9);
	mig__wire_free(d);

	d = roundtrip(MIGWIRE__FRAME__BODY_USERS);
	assert_int_equal(d->users->n_users, 3);
	assert_string_equal(d->users->users[1]->user, "bob");
	assert_int_equal(d->users->users[2]->state, MIGWIRE__USER_STATE__USER_PARKED);
	mig__wire_free(d);
	F.users.n_users = 0;
	mig__wire_free(roundtrip(MIGWIRE__FRAME__BODY_USERS));

	for (int t = MIGWIRE__EVENT_TYPE__EVENT_STARTED; t <= MIGWIRE__EVENT_TYPE__EVENT_PROGRESS;
	     t++) {
		F.event.type = (Migwire__EventType)t;
		d = roundtrip(MIGWIRE__FRAME__BODY_EVENT);
		assert_int_equal(d->event->type, t);
		assert_int_equal(d->event->bytes_sent, UINT64_C(1) << 40);
		assert_true(d->event->has_time_us);
		assert_int_equal(d->event->time_us, UINT64_C(1700000000000000));
		mig__wire_free(d);
	}
	/* A minimal event: only the required fields. */
	Migwire__Event e = MIGWIRE__EVENT__INIT;
	e.mid = MID;
	e.user = "u";
	F.event = e;
	d = roundtrip(MIGWIRE__FRAME__BODY_EVENT);
	assert_false(d->event->has_code);
	assert_null(d->event->peer_url);
	mig__wire_free(d);

	d = roundtrip(MIGWIRE__FRAME__BODY_REPLY);
	assert_int_equal(d->reply->code, MIG_EREJECTED);
	assert_non_null(d->reply->event);
	assert_string_equal(d->reply->event->mid, MID2);
	mig__wire_free(d);
	F.reply.event = NULL;
	F.reply.code = 0;
	F.reply.reason = NULL;
	d = roundtrip(MIGWIRE__FRAME__BODY_REPLY);
	assert_null(d->reply->event);
	assert_int_equal(d->reply->code, 0);
	mig__wire_free(d);
}

/* Status, cancel and the PROGRESS event's phase and rounds (50-52, 12-13). */
static void test_roundtrip_status_cancel(void **state)
{
	mig__frame *d = roundtrip(MIGWIRE__FRAME__BODY_STATUS_REQUEST);
	assert_int_equal(d->status_request->request_id, 10);
	mig__wire_free(d);

	d = roundtrip(MIGWIRE__FRAME__BODY_STATUS);
	const Migwire__StatusReply *s = d->status;
	assert_int_equal(s->request_id, 10);
	assert_string_equal(s->engine_id, "engine-a");
	assert_string_equal(s->url, "ws://src:7000");
	assert_int_equal(s->protocol_version, MIG_PROTOCOL_VERSION);
	assert_string_equal(s->library_version, "0.1.0");
	assert_int_equal(s->n_users, 2);
	assert_int_equal(s->users[0]->state, MIGWIRE__USER_STATE__USER_ACTIVE);
	assert_int_equal(s->users[1]->count, 3);
	assert_int_equal(s->n_migrations, 2);
	assert_string_equal(s->migrations[0]->phase, "precopy");
	assert_int_equal(s->migrations[0]->role, MIGWIRE__MIGRATION_ROLE__ROLE_SOURCE);
	assert_int_equal(s->migrations[1]->role, MIGWIRE__MIGRATION_ROLE__ROLE_DESTINATION);
	assert_true(s->migrations[1]->parked);
	assert_int_equal(s->migrations[0]->bytes_sent, UINT64_C(1) << 33);
	assert_int_equal(s->committed_out, 5);
	assert_false(s->has_aborted_out);
	mig__wire_free(d);
	/* Only the required fields: no users, no migrations. */
	F.status.n_users = F.status.n_migrations = 0;
	F.status.url = NULL;
	F.status.library_version = NULL;
	mig__wire_free(roundtrip(MIGWIRE__FRAME__BODY_STATUS));

	d = roundtrip(MIGWIRE__FRAME__BODY_CANCEL);
	assert_int_equal(d->cancel->request_id, 11);
	assert_string_equal(d->cancel->mid, MID);
	assert_null(d->cancel->user);
	mig__wire_free(d);
	F.cancel.mid = NULL;
	F.cancel.user = "alice";
	d = roundtrip(MIGWIRE__FRAME__BODY_CANCEL);
	assert_string_equal(d->cancel->user, "alice");
	mig__wire_free(d);

	F.event.type = MIGWIRE__EVENT_TYPE__EVENT_PROGRESS;
	F.event.phase = "precopy";
	F.event.has_rounds = 1;
	F.event.rounds = 3;
	d = roundtrip(MIGWIRE__FRAME__BODY_EVENT);
	assert_string_equal(d->event->phase, "precopy");
	assert_int_equal(d->event->rounds, 3);
	mig__wire_free(d);
	/* A phase this build does not know is fine: a newer engine's. */
	F.event.phase = "post_copy";
	expect_accept_kind(MIGWIRE__FRAME__BODY_EVENT);
	F.event.phase = "";
	expect_accept_kind(MIGWIRE__FRAME__BODY_EVENT);
}

static void test_reject_bad_status_cancel(void **state)
{
	/* Event phase: a lowercase word of at most 32 bytes. */
	static const char *const bad_phase[] = {"Precopy", "pre copy", "pre-copy", "ph\n",
						"abcdefghijklmnopqrstuvwxyzabcdefg"};
	for (size_t i = 0; i < MIG__ARRAY_LEN(bad_phase); i++) {
		fixture_init();
		F.event.phase = (char *)bad_phase[i];
		expect_reject_kind(MIGWIRE__FRAME__BODY_EVENT, "phase");
		F.reply_event.phase = (char *)bad_phase[i];
		expect_reject_kind(MIGWIRE__FRAME__BODY_REPLY, "phase");
		fixture_init();
		F.mstatus[1].phase = (char *)bad_phase[i];
		expect_reject_kind(MIGWIRE__FRAME__BODY_STATUS, "phase");
	}
	fixture_init();
	F.event.phase = "abcdefghijklmnopqrstuvwxyzabcdef"; /* 32: the longest */
	expect_accept_kind(MIGWIRE__FRAME__BODY_EVENT);

	/* Status: every identifier and enum is checked. */
	fixture_init();
	F.status.engine_id = "";
	expect_reject_kind(MIGWIRE__FRAME__BODY_STATUS, "engine_id");
	fixture_init();
	F.status.engine_id = "engine\x01";
	expect_reject_kind(MIGWIRE__FRAME__BODY_STATUS, "engine_id");
	fixture_init();
	F.status.url = "http://src:7000";
	expect_reject_kind(MIGWIRE__FRAME__BODY_STATUS, "url");
	fixture_init();
	F.status.library_version = "0.1\n";
	expect_reject_kind(MIGWIRE__FRAME__BODY_STATUS, "library_version");
	fixture_init();
	F.mstatus[1].mid = "not-a-mid";
	expect_reject_kind(MIGWIRE__FRAME__BODY_STATUS, "mid");
	fixture_init();
	F.mstatus[0].user = "al ice";
	expect_reject_kind(MIGWIRE__FRAME__BODY_STATUS, "user");
	fixture_init();
	F.mstatus[0].peer_url = "ftp://x";
	expect_reject_kind(MIGWIRE__FRAME__BODY_STATUS, "peer_url");
	fixture_init();
	F.mstatus[0].phase = "";
	expect_reject_kind(MIGWIRE__FRAME__BODY_STATUS, "phase");
	fixture_init();
	F.mstatus[1].role = (Migwire__MigrationRole)2;
	expect_reject_kind(MIGWIRE__FRAME__BODY_STATUS, "role");
	fixture_init();
	F.ucount[2].state = (Migwire__UserState)6;
	expect_reject_kind(MIGWIRE__FRAME__BODY_STATUS, "state");
	fixture_init();
	F.status.n_users = 17;
	F.status.users = F.ucount_p;
	expect_reject_kind(MIGWIRE__FRAME__BODY_STATUS, "users");
	F.status.n_users = 16;
	expect_accept_kind(MIGWIRE__FRAME__BODY_STATUS);

	/* Cancel: exactly one of mid and user, each valid. */
	fixture_init();
	F.cancel.user = "alice";
	expect_reject_kind(MIGWIRE__FRAME__BODY_CANCEL, "exactly one");
	F.cancel.mid = NULL;
	F.cancel.user = NULL;
	expect_reject_kind(MIGWIRE__FRAME__BODY_CANCEL, "exactly one");
	F.cancel.mid = "";
	F.cancel.user = "";
	expect_reject_kind(MIGWIRE__FRAME__BODY_CANCEL, "exactly one");
	F.cancel.mid = "0123456789ABCDEF0123456789ABCDEF";
	F.cancel.user = NULL;
	expect_reject_kind(MIGWIRE__FRAME__BODY_CANCEL, "mid");
	F.cancel.mid = NULL;
	F.cancel.user = "bad user";
	expect_reject_kind(MIGWIRE__FRAME__BODY_CANCEL, "user");
}

/* Announce channel (engine -> orchestrator): what the orchestrator stores
 * and shows is checked like everywhere else. */
static void test_announce_frames(void **state)
{
	(void)state;
	Migwire__Announce an = MIGWIRE__ANNOUNCE__INIT;
	Migwire__Frame f = MIGWIRE__FRAME__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_ANNOUNCE;
	f.announce = &an;
	an.engine_id = "edge-1";
	an.url = "ws://10.0.0.1:7000";
	an.app_url = "tcp://10.0.0.1:9000";
	an.library_version = "0.1.0";
	an.heartbeat_ms = 1000;
	expect_accept(&f);
	assert_string_equal(mig__wire_body_name(&f), "announce");
	an.engine_id = "";
	expect_reject(&f, "engine_id");
	an.engine_id = "edge\x01";
	expect_reject(&f, "engine_id");
	an.engine_id = "edge-1";
	an.url = "";
	expect_reject(&f, "url");
	an.url = "http://10.0.0.1:7000";
	expect_reject(&f, "url");
	an.url = "ws://10.0.0.1:7000";
	an.app_url = "no scheme";
	expect_reject(&f, "app_url");
	an.app_url = NULL;
	an.heartbeat_ms = 0;
	expect_reject(&f, "heartbeat_ms");
	an.heartbeat_ms = 3600001;
	expect_reject(&f, "heartbeat_ms");
	an.heartbeat_ms = 10;
	expect_accept(&f);

	Migwire__UserCount uc = MIGWIRE__USER_COUNT__INIT;
	Migwire__UserCount *ucp[17];
	for (size_t i = 0; i < MIG__ARRAY_LEN(ucp); i++)
		ucp[i] = &uc;
	Migwire__Heartbeat hb = MIGWIRE__HEARTBEAT__INIT;
	f.body_case = MIGWIRE__FRAME__BODY_HEARTBEAT;
	f.heartbeat = &hb;
	hb.seq = 1;
	uc.state = MIGWIRE__USER_STATE__USER_ACTIVE;
	uc.count = 3;
	hb.n_users = 1;
	hb.users = ucp;
	expect_accept(&f);
	assert_string_equal(mig__wire_body_name(&f), "heartbeat");
	uc.state = (Migwire__UserState)99;
	expect_reject(&f, "state");
	uc.state = MIGWIRE__USER_STATE__USER_ACTIVE;
	hb.n_users = 17;
	expect_reject(&f, "users");
}

static void test_body_names(void **state)
{
	static const char *const names[] = {
		"challenge", "hello",         "welcome", "begin",   "accept",     "reject",
		"prepare",   "prepared",      "failed",  "commit",  "committed",  "abort",
		"aborted",   "outcome_query", "outcome", "migrate", "list_users", "subscribe",
		"users",     "event",         "reply",   "status_request", "status", "cancel",
	};
	assert_int_equal(MIG__ARRAY_LEN(names), MIG__ARRAY_LEN(all_kinds));
	for (size_t i = 0; i < MIG__ARRAY_LEN(all_kinds); i++) {
		Migwire__Frame f = frame_of(all_kinds[i]);
		assert_string_equal(mig__wire_body_name(&f), names[i]);
	}
	Migwire__Frame none = MIGWIRE__FRAME__INIT;
	assert_string_equal(mig__wire_body_name(&none), "none");
	assert_string_equal(mig__wire_body_name(NULL), "none");
}

/* ---------------------------------------------------------------- size limits */

static void test_encode_too_big(void **state)
{
	Migwire__Frame f = frame_of(MIGWIRE__FRAME__BODY_BEGIN);
	size_t n = migwire__frame__get_packed_size(&f);
	mig__msg *m = (mig__msg *)(uintptr_t)1;

	cnt_install(-1);
	assert_int_equal(mig__wire_encode(&f, n - 1, &m), MIG_ETOOBIG);
	assert_null(m);
	assert_int_equal(cnt_calls, 0);
	cnt_remove();

	assert_int_equal(mig__wire_encode(&f, n, &m), 0);
	assert_int_equal(m->len, n);
	mig__msg_free(m);
	assert_int_equal(mig__wire_encode(&f, 0, &m), 0);
	mig__msg_free(m);
	assert_int_equal(mig__wire_encode(NULL, 0, &m), MIG_EINVAL);
	assert_null(m);
	assert_int_equal(mig__wire_encode(&f, 0, NULL), MIG_EINVAL);
}

static void test_encode_enomem(void **state)
{
	Migwire__Frame f = frame_of(MIGWIRE__FRAME__BODY_ACCEPT);
	mig__msg *m = (mig__msg *)(uintptr_t)1;

	cnt_install(0);
	assert_int_equal(mig__wire_encode(&f, 0, &m), MIG_ENOMEM);
	assert_null(m);
	cnt_remove();
}

static void test_decode_oversize_before_alloc(void **state)
{
	Migwire__Frame f = frame_of(MIGWIRE__FRAME__BODY_PREPARE);
	mig__msg *m = encode(&f);
	mig__frame *out = (mig__frame *)(uintptr_t)1;
	char why[128] = "";

	cnt_install(-1);
	int rc = mig__wire_decode(mig__msg_payload(m), m->len, m->len - 1, &out, why, sizeof(why));
	assert_int_equal(rc, MIG_ETOOBIG);
	assert_null(out);
	assert_int_equal(cnt_calls, 0);
	assert_non_null(strstr(why, "cap"));

	/* Just at the cap is fine; 0 means no cap. */
	rc = mig__wire_decode(mig__msg_payload(m), m->len, m->len, &out, why, sizeof(why));
	assert_int_equal(rc, 0);
	mig__wire_free(out);
	rc = mig__wire_decode(mig__msg_payload(m), m->len, 0, &out, why, sizeof(why));
	assert_int_equal(rc, 0);
	mig__wire_free(out);
	assert_int_equal(cnt_live, 0);
	cnt_remove();

	/* The length alone decides: a huge claimed length with a tiny buffer
	 * must not be read. */
	rc = mig__wire_decode(mig__msg_payload(m), SIZE_MAX, CAP, &out, NULL, 0);
	assert_int_equal(rc, MIG_ETOOBIG);
	rc = mig__wire_decode(mig__msg_payload(m), (size_t)UINT32_MAX + 1, 0, &out, NULL, 0);
	assert_int_equal(rc, MIG_ETOOBIG);
	mig__msg_free(m);
}

static void test_decode_empty_and_no_body(void **state)
{
	char why[128] = "";
	uint8_t one = 0;
	mig__frame *out = (mig__frame *)(uintptr_t)1;

	assert_int_equal(mig__wire_decode(&one, 0, CAP, &out, why, sizeof(why)), MIG_EPROTO);
	assert_null(out);
	assert_non_null(strstr(why, "empty"));

	/* A frame with only an unknown field: a newer peer's frame kind. */
	uint8_t buf[8];
	size_t n = put_tag(buf, 46, 2);
	buf[n++] = 0;
	assert_int_equal(decode_raw(buf, n, why, sizeof(why)), MIG_EPROTO);
	assert_non_null(strstr(why, "no body"));

	Migwire__Frame none = MIGWIRE__FRAME__INIT;
	mig__msg *m = encode(&none);
	assert_int_equal(m->len, 0);
	assert_int_equal(decode_raw(mig__msg_payload(m), m->len, why, sizeof(why)), MIG_EPROTO);
	mig__msg_free(m);

	assert_int_equal(mig__wire_decode(&one, 1, CAP, NULL, why, sizeof(why)), MIG_EINVAL);
}

static void test_decode_unknown_fields_accepted(void **state)
{
	uint8_t body[64], buf[96];
	size_t bn = 0, n = 0;

	/* Accept{mid, 9: 5} — an unknown field inside the body. */
	bn += put_tag(body + bn, 1, 2);
	body[bn++] = MIG__MID_LEN;
	memcpy(body + bn, MID, MIG__MID_LEN);
	bn += MIG__MID_LEN;
	bn += put_tag(body + bn, 9, 0);
	body[bn++] = 5;

	n += put_tag(buf + n, MIGWIRE__FRAME__BODY_ACCEPT, 2);
	buf[n++] = (uint8_t)bn;
	memcpy(buf + n, body, bn);
	n += bn;
	/* ... and one at the top level. */
	n += put_tag(buf + n, 100, 0);
	n += put_varint(buf + n, 300);

	mig__frame *out = NULL;
	char why[128];
	assert_int_equal(mig__wire_decode(buf, n, CAP, &out, why, sizeof(why)), 0);
	assert_int_equal(out->body_case, MIGWIRE__FRAME__BODY_ACCEPT);
	assert_string_equal(out->accept->mid, MID);
	assert_int_equal(out->base.n_unknown_fields, 1);
	assert_int_equal(out->accept->base.n_unknown_fields, 1);
	mig__wire_free(out);
}

static void test_decode_why_optional(void **state)
{
	Migwire__Frame f = frame_of(MIGWIRE__FRAME__BODY_ACCEPT);
	F.accept.mid = "nope";
	mig__msg *m = encode(&f);
	mig__frame *out = NULL;

	assert_int_equal(mig__wire_decode(mig__msg_payload(m), m->len, CAP, &out, NULL, 0),
			 MIG_EPROTO);
	char tiny[4] = "xxx";
	assert_int_equal(mig__wire_decode(mig__msg_payload(m), m->len, CAP, &out, tiny, 1),
			 MIG_EPROTO);
	assert_int_equal(tiny[0], '\0');
	assert_int_equal(
		mig__wire_decode(mig__msg_payload(m), m->len, CAP, &out, tiny, sizeof(tiny)),
		MIG_EPROTO);
	assert_int_equal(strlen(tiny), 3);
	mig__msg_free(m);
}

/* ---------------------------------------------------------------- validation rules */

static void test_reject_bad_mid(void **state)
{
	static const char *const bad[] = {
		"",
		"0123",
		MID "0",
		"0123456789ABCDEF0123456789ABCDEF",
		"0123456789abcdef0123456789abcdeg",
		"0123456789abcdef 123456789abcdef",
	};
	for (size_t b = 0; b < MIG__ARRAY_LEN(bad); b++) {
		const char *mid = bad[b];
		fixture_init();
		F.begin.mid = F.accept.mid = F.reject.mid = F.prepare.mid = (char *)mid;
		F.prepared.mid = F.failed.mid = F.commit.mid = F.committed.mid = (char *)mid;
		F.abort.mid = F.aborted.mid = F.outcome_query.mid = (char *)mid;
		F.outcome.mid = F.event.mid = (char *)mid;
		static const Migwire__Frame__BodyCase with_mid[] = {
			MIGWIRE__FRAME__BODY_BEGIN,         MIGWIRE__FRAME__BODY_ACCEPT,
			MIGWIRE__FRAME__BODY_REJECT,        MIGWIRE__FRAME__BODY_PREPARE,
			MIGWIRE__FRAME__BODY_PREPARED,      MIGWIRE__FRAME__BODY_FAILED,
			MIGWIRE__FRAME__BODY_COMMIT,        MIGWIRE__FRAME__BODY_COMMITTED,
			MIGWIRE__FRAME__BODY_ABORT,         MIGWIRE__FRAME__BODY_ABORTED,
			MIGWIRE__FRAME__BODY_OUTCOME_QUERY, MIGWIRE__FRAME__BODY_OUTCOME,
			MIGWIRE__FRAME__BODY_EVENT,
		};
		for (size_t i = 0; i < MIG__ARRAY_LEN(with_mid); i++)
			expect_reject_kind(with_mid[i], "mid");
	}
	fixture_init();
	F.reply_event.mid = "xyz";
	expect_reject_kind(MIGWIRE__FRAME__BODY_REPLY, "mid");
}

static void test_reject_bad_user(void **state)
{
	char *too_long = repeat('u', MIG__USER_MAX + 1);
	const char *bad[] = {"", "a b", "tab\t", "caf\xc3\xa9", too_long};

	for (size_t b = 0; b < MIG__ARRAY_LEN(bad); b++) {
		char *u = (char *)bad[b];
		fixture_init();
		F.begin.user = F.commit.user = F.outcome_query.user = u;
		F.migrate.user = F.event.user = F.entries[1].user = u;
		expect_reject_kind(MIGWIRE__FRAME__BODY_BEGIN, "user");
		expect_reject_kind(MIGWIRE__FRAME__BODY_COMMIT, "user");
		expect_reject_kind(MIGWIRE__FRAME__BODY_OUTCOME_QUERY, "user");
		expect_reject_kind(MIGWIRE__FRAME__BODY_MIGRATE, "user");
		expect_reject_kind(MIGWIRE__FRAME__BODY_EVENT, "user");
		expect_reject_kind(MIGWIRE__FRAME__BODY_USERS, "users[1]");
	}
	fixture_init();
	char *longest = repeat('u', MIG__USER_MAX);
	F.commit.user = longest;
	expect_accept_kind(MIGWIRE__FRAME__BODY_COMMIT);
	free(longest);
	free(too_long);
}

static void test_reject_bad_domains(void **state)
{
	static const char *const bad[] = {
		"", "a b", "a/b", "x:y",
		"0123456789012345678901234567890123456789012345678901234567890123X"};

	for (size_t b = 0; b < MIG__ARRAY_LEN(bad); b++) {
		fixture_init();
		F.dinfo[2].name = (char *)bad[b];
		F.ddata[2].name = (char *)bad[b];
		expect_reject_kind(MIGWIRE__FRAME__BODY_BEGIN, "domains[2]");
		expect_reject_kind(MIGWIRE__FRAME__BODY_PREPARE, "light[2]");
	}

	/* Duplicates within one message. */
	fixture_init();
	F.dinfo[2].name = F.dinfo[0].name;
	F.ddata[1].name = F.ddata[2].name;
	expect_reject_kind(MIGWIRE__FRAME__BODY_BEGIN, "duplicate");
	expect_reject_kind(MIGWIRE__FRAME__BODY_PREPARE, "duplicate");

	/* One more than the limit. */
	fixture_init();
	F.begin.n_domains = MIG__MAX_DOMAINS + 1;
	F.prepare.n_light = MIG__MAX_DOMAINS + 1;
	expect_reject_kind(MIGWIRE__FRAME__BODY_BEGIN, "domains");
	expect_reject_kind(MIGWIRE__FRAME__BODY_PREPARE, "light");

	/* type_name: bounded, no spaces. */
	fixture_init();
	char *long_type = repeat('t', 257);
	F.dinfo[1].type_name = long_type;
	expect_reject_kind(MIGWIRE__FRAME__BODY_BEGIN, "type_name");
	long_type[256] = '\0';
	expect_accept_kind(MIGWIRE__FRAME__BODY_BEGIN);
	F.dinfo[1].type_name = "a type";
	expect_reject_kind(MIGWIRE__FRAME__BODY_BEGIN, "type_name");
	free(long_type);
}

static void test_reject_bad_urls(void **state)
{
	char *too_long = malloc(MIG__URL_MAX + 2);
	assert_non_null(too_long);
	memcpy(too_long, "ws://", 5);
	memset(too_long + 5, 'h', MIG__URL_MAX + 1 - 5);
	too_long[MIG__URL_MAX + 1] = '\0';
	const char *bad[] = {
		"http://x:1", "ws:/x",      "ws://",  "wss://",  "ws://a b",
		"ws://a\tb",  "ws://a\x7f", "WS://x", " ws://x", too_long,
	};

	for (size_t b = 0; b < MIG__ARRAY_LEN(bad); b++) {
		fixture_init();
		F.begin.source_url = (char *)bad[b];
		F.migrate.destination_url = (char *)bad[b];
		F.hello.advertised_url = (char *)bad[b];
		F.event.peer_url = (char *)bad[b];
		expect_reject_kind(MIGWIRE__FRAME__BODY_BEGIN, "source_url");
		expect_reject_kind(MIGWIRE__FRAME__BODY_MIGRATE, "destination_url");
		expect_reject_kind(MIGWIRE__FRAME__BODY_HELLO, "advertised_url");
		expect_reject_kind(MIGWIRE__FRAME__BODY_EVENT, "peer_url");
	}

	/* Required URLs may not be empty; optional ones may. */
	fixture_init();
	F.begin.source_url = "";
	F.migrate.destination_url = "";
	F.hello.advertised_url = "";
	F.event.peer_url = "";
	expect_reject_kind(MIGWIRE__FRAME__BODY_BEGIN, "source_url");
	expect_reject_kind(MIGWIRE__FRAME__BODY_MIGRATE, "destination_url");
	expect_accept_kind(MIGWIRE__FRAME__BODY_HELLO);
	expect_accept_kind(MIGWIRE__FRAME__BODY_EVENT);

	/* Exactly MIG__URL_MAX is fine. */
	too_long[MIG__URL_MAX] = '\0';
	F.begin.source_url = too_long;
	expect_accept_kind(MIGWIRE__FRAME__BODY_BEGIN);
	free(too_long);
}

static void test_reject_bad_engine_ids(void **state)
{
	char *too_long = repeat('e', 129);
	const char *bad[] = {too_long, "tab\there", "nl\n", "del\x7f", "hi\xc3\xa9"};

	for (size_t b = 0; b < MIG__ARRAY_LEN(bad); b++) {
		fixture_init();
		F.challenge.engine_id = (char *)bad[b];
		F.hello.engine_id = (char *)bad[b];
		F.begin.source_engine = (char *)bad[b];
		expect_reject_kind(MIGWIRE__FRAME__BODY_CHALLENGE, "engine_id");
		expect_reject_kind(MIGWIRE__FRAME__BODY_HELLO, "engine_id");
		expect_reject_kind(MIGWIRE__FRAME__BODY_BEGIN, "source_engine");
	}
	fixture_init();
	F.begin.source_engine = "";
	expect_reject_kind(MIGWIRE__FRAME__BODY_BEGIN, "source_engine");
	too_long[128] = '\0';
	F.begin.source_engine = too_long;
	F.challenge.engine_id = "";
	expect_accept_kind(MIGWIRE__FRAME__BODY_BEGIN);
	expect_accept_kind(MIGWIRE__FRAME__BODY_CHALLENGE);
	free(too_long);
}

static void test_reject_long_reasons(void **state)
{
	char *reason = repeat('r', MIG__REASON_MAX + 1);

	F.reject.reason = F.failed.reason = F.abort.reason = reason;
	F.event.reason = F.reply.reason = reason;
	expect_reject_kind(MIGWIRE__FRAME__BODY_REJECT, "reason");
	expect_reject_kind(MIGWIRE__FRAME__BODY_FAILED, "reason");
	expect_reject_kind(MIGWIRE__FRAME__BODY_ABORT, "reason");
	expect_reject_kind(MIGWIRE__FRAME__BODY_EVENT, "reason");
	expect_reject_kind(MIGWIRE__FRAME__BODY_REPLY, "reason");
	fixture_init();
	F.reply_event.reason = reason;
	expect_reject_kind(MIGWIRE__FRAME__BODY_REPLY, "reason");

	reason[MIG__REASON_MAX] = '\0';
	F.reject.reason = F.failed.reason = F.abort.reason = reason;
	F.event.reason = F.reply.reason = F.reply_event.reason = reason;
	expect_accept_kind(MIGWIRE__FRAME__BODY_REJECT);
	expect_accept_kind(MIGWIRE__FRAME__BODY_FAILED);
	expect_accept_kind(MIGWIRE__FRAME__BODY_ABORT);
	expect_accept_kind(MIGWIRE__FRAME__BODY_EVENT);
	expect_accept_kind(MIGWIRE__FRAME__BODY_REPLY);
	free(reason);
}

static void test_reject_bad_nonces(void **state)
{
	static const size_t lens[] = {0, 1, MIG__NONCE_LEN - 1, MIG__NONCE_LEN + 1, 64};
	uint8_t big[64] = {0};

	for (size_t i = 0; i < MIG__ARRAY_LEN(lens); i++) {
		F.challenge.server_nonce = (ProtobufCBinaryData){lens[i], big};
		F.hello.client_nonce = (ProtobufCBinaryData){lens[i], big};
		expect_reject_kind(MIGWIRE__FRAME__BODY_CHALLENGE, "server_nonce");
		expect_reject_kind(MIGWIRE__FRAME__BODY_HELLO, "client_nonce");
	}
}

static void test_reject_bad_macs(void **state)
{
	static const size_t lens[] = {1, 16, MIG__MAC_LEN - 1, MIG__MAC_LEN + 1, 64};
	uint8_t big[64] = {0};

	for (size_t i = 0; i < MIG__ARRAY_LEN(lens); i++) {
		F.hello.mac = (ProtobufCBinaryData){lens[i], big};
		F.welcome.mac = (ProtobufCBinaryData){lens[i], big};
		expect_reject_kind(MIGWIRE__FRAME__BODY_HELLO, "mac");
		expect_reject_kind(MIGWIRE__FRAME__BODY_WELCOME, "mac");
	}
}

static void test_reject_bad_enums(void **state)
{
	static const int bad_channel[] = {-1, 5, 1000};
	for (size_t i = 0; i < MIG__ARRAY_LEN(bad_channel); i++) {
		F.hello.channel = (Migwire__Channel)bad_channel[i];
		expect_reject_kind(MIGWIRE__FRAME__BODY_HELLO, "channel");
	}
	F.hello.channel = MIGWIRE__CHANNEL__CHANNEL_UNSPECIFIED;
	expect_reject_kind(MIGWIRE__FRAME__BODY_HELLO, "channel");

	fixture_init();
	F.dinfo[1].kind = (Migwire__DomainKind)2;
	expect_reject_kind(MIGWIRE__FRAME__BODY_BEGIN, "kind");
	F.dinfo[1].kind = (Migwire__DomainKind)-3;
	expect_reject_kind(MIGWIRE__FRAME__BODY_BEGIN, "kind");

	F.outcome.state = (Migwire__OutcomeState)5;
	expect_reject_kind(MIGWIRE__FRAME__BODY_OUTCOME, "state");
	F.outcome.state = (Migwire__OutcomeState)-1;
	expect_reject_kind(MIGWIRE__FRAME__BODY_OUTCOME, "state");

	F.entries[2].state = (Migwire__UserState)6;
	expect_reject_kind(MIGWIRE__FRAME__BODY_USERS, "state");

	F.event.type = (Migwire__EventType)8;
	expect_reject_kind(MIGWIRE__FRAME__BODY_EVENT, "type");
	F.reply_event.type = (Migwire__EventType)-1;
	expect_reject_kind(MIGWIRE__FRAME__BODY_REPLY, "type");
}

static void test_reject_bad_codes(void **state)
{
	static const int32_t bad[] = {1, 100, -1001, INT32_MIN, INT32_MAX};

	for (size_t i = 0; i < MIG__ARRAY_LEN(bad); i++) {
		fixture_init();
		F.reject.code = F.failed.code = F.event.code = F.reply.code = bad[i];
		expect_reject_kind(MIGWIRE__FRAME__BODY_REJECT, "code");
		expect_reject_kind(MIGWIRE__FRAME__BODY_FAILED, "code");
		expect_reject_kind(MIGWIRE__FRAME__BODY_EVENT, "code");
		expect_reject_kind(MIGWIRE__FRAME__BODY_REPLY, "code");
		fixture_init();
		F.reply_event.code = bad[i];
		expect_reject_kind(MIGWIRE__FRAME__BODY_REPLY, "code");
	}
	fixture_init();
	F.reject.code = -1000;
	F.failed.code = 0;
	F.reply.code = 0;
	expect_accept_kind(MIGWIRE__FRAME__BODY_REJECT);
	expect_accept_kind(MIGWIRE__FRAME__BODY_FAILED);
	expect_accept_kind(MIGWIRE__FRAME__BODY_REPLY);
	/* An absent optional code is not checked. */
	F.event.has_code = 0;
	F.event.code = 5;
	expect_accept_kind(MIGWIRE__FRAME__BODY_EVENT);
}

/* ListUsersReply of n entries named from i (3 printable characters each, so
 * 100000 of them are distinct), built straight into bytes. */
static uint8_t *users_reply_bytes(size_t n, size_t *len_out)
{
	size_t entry = 2 + 5 + 2;
	size_t body_len = 2 + n * entry;
	uint8_t *buf = malloc(body_len + 16);
	assert_non_null(buf);
	size_t p = 0;
	p += put_tag(buf + p, MIGWIRE__FRAME__BODY_USERS, 2);
	p += put_varint(buf + p, body_len);
	p += put_tag(buf + p, 1, 0);
	buf[p++] = 1;
	for (size_t i = 0; i < n; i++) {
		p += put_tag(buf + p, 2, 2);
		buf[p++] = 7;
		p += put_tag(buf + p, 1, 2);
		buf[p++] = 3;
		buf[p++] = (uint8_t)('!' + i % 94);
		buf[p++] = (uint8_t)('!' + i / 94 % 94);
		buf[p++] = (uint8_t)('!' + i / (94 * 94));
		p += put_tag(buf + p, 2, 0);
		buf[p++] = (uint8_t)(i % 6);
	}
	*len_out = p;
	return buf;
}

static void test_users_list_limit(void **state)
{
	size_t len;
	char why[128];
	uint8_t *buf = users_reply_bytes(MIG__MAX_USERS_LISTED, &len);

	/* The largest legitimate list fits the decode budget. */
	cnt_install(-1);
	mig__frame *out = NULL;
	int rc = mig__wire_decode(buf, len, CAP, &out, why, sizeof(why));
	if (rc)
		fail_msg("decode of %d users failed: %s", MIG__MAX_USERS_LISTED, why);
	assert_int_equal(out->users->n_users, MIG__MAX_USERS_LISTED);
	assert_string_equal(out->users->users[95]->user, "\"\"!");
	mig__wire_free(out);
	assert_int_equal(cnt_live, 0);
	print_message("# %d users: %zu bytes, peak %zu\n", MIG__MAX_USERS_LISTED, len, cnt_peak);
	cnt_remove();
	free(buf);

	buf = users_reply_bytes(MIG__MAX_USERS_LISTED + 1, &len);
	assert_int_equal(decode_raw(buf, len, why, sizeof(why)), MIG_EPROTO);
	assert_non_null(strstr(why, "users"));
	free(buf);
}

/* ---------------------------------------------------------------- hostile input */

static void test_truncated(void **state)
{
	char why[128];

	for (size_t k = 0; k < MIG__ARRAY_LEN(all_kinds); k++) {
		Migwire__Frame f = frame_of(all_kinds[k]);
		mig__msg *m = encode(&f);
		uint8_t *copy = malloc(m->len);
		assert_non_null(copy);
		/* Every strict prefix cuts into the body's length-delimited
		 * field, so none of them may decode. Copies make ASan catch
		 * reads past the given length. */
		for (size_t n = 1; n < m->len; n++) {
			memcpy(copy, mig__msg_payload(m), n);
			int rc = decode_raw(copy, n, why, sizeof(why));
			if (rc != MIG_EPROTO)
				fail_msg("%s truncated to %zu: %s", mig__wire_body_name(&f), n,
					 mig_err_name(rc));
		}
		free(copy);
		mig__msg_free(m);
	}
}

static bool t_mid_ok(const char *s)
{
	if (!s || strlen(s) != 32)
		return false;
	for (size_t i = 0; i < 32; i++)
		if (!strchr("0123456789abcdef", s[i]))
			return false;
	return true;
}

static bool t_user_ok(const char *s)
{
	size_t n = s ? strlen(s) : 0;
	if (n == 0 || n > MIG__USER_MAX)
		return false;
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] <= 0x20 || (unsigned char)s[i] >= 0x7f)
			return false;
	return true;
}

/* A session token's text: 1-600 base64url characters. */
static bool t_token_ok(const char *s)
{
	static const char b64url[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
	size_t n = s ? strlen(s) : 0;
	return n > 0 && n <= 600 && strspn(s, b64url) == n;
}

static bool t_event_ok(const Migwire__Event *e)
{
	return e->type <= MIGWIRE__EVENT_TYPE__EVENT_PROGRESS && t_mid_ok(e->mid) &&
	       t_user_ok(e->user) && (!e->has_code || (e->code <= 0 && e->code >= -1000)) &&
	       (!e->phase || strspn(e->phase, "abcdefghijklmnopqrstuvwxyz_") == strlen(e->phase));
}

/* An oracle independent of wire.c for what a decoded frame must satisfy. */
static void assert_frame_sane(const mig__frame *f)
{
	bool ok;
	switch (f->body_case) {
	case MIGWIRE__FRAME__BODY_CHALLENGE:
		ok = f->challenge->server_nonce.len == MIG__NONCE_LEN;
		break;
	case MIGWIRE__FRAME__BODY_HELLO:
		ok = f->hello->client_nonce.len == MIG__NONCE_LEN &&
		     (f->hello->mac.len == 0 || f->hello->mac.len == MIG__MAC_LEN) &&
		     f->hello->channel >= MIGWIRE__CHANNEL__CHANNEL_PEER &&
		     f->hello->channel <= MIGWIRE__CHANNEL__CHANNEL_SESSION;
		break;
	case MIGWIRE__FRAME__BODY_WELCOME:
		ok = f->welcome->mac.len == 0 || f->welcome->mac.len == MIG__MAC_LEN;
		break;
	case MIGWIRE__FRAME__BODY_BEGIN:
		ok = t_mid_ok(f->begin->mid) && t_user_ok(f->begin->user) &&
		     f->begin->n_domains <= MIG__MAX_DOMAINS &&
		     strncmp(f->begin->source_url, "ws", 2) == 0;
		for (size_t i = 0; ok && i < f->begin->n_domains; i++)
			ok = f->begin->domains[i]->kind <= MIGWIRE__DOMAIN_KIND__DOMAIN_FILE;
		break;
	case MIGWIRE__FRAME__BODY_ACCEPT:
		ok = t_mid_ok(f->accept->mid);
		break;
	case MIGWIRE__FRAME__BODY_REJECT:
		ok = t_mid_ok(f->reject->mid) && f->reject->code <= 0;
		break;
	case MIGWIRE__FRAME__BODY_PREPARE:
		ok = t_mid_ok(f->prepare->mid) && f->prepare->n_light <= MIG__MAX_DOMAINS;
		break;
	case MIGWIRE__FRAME__BODY_PREPARED:
		ok = t_mid_ok(f->prepared->mid);
		break;
	case MIGWIRE__FRAME__BODY_FAILED:
		ok = t_mid_ok(f->failed->mid) && f->failed->code <= 0;
		break;
	case MIGWIRE__FRAME__BODY_COMMIT:
		ok = t_mid_ok(f->commit->mid) && t_user_ok(f->commit->user);
		break;
	case MIGWIRE__FRAME__BODY_COMMITTED:
		ok = t_mid_ok(f->committed->mid);
		break;
	case MIGWIRE__FRAME__BODY_ABORT:
		ok = t_mid_ok(f->abort->mid);
		break;
	case MIGWIRE__FRAME__BODY_ABORTED:
		ok = t_mid_ok(f->aborted->mid);
		break;
	case MIGWIRE__FRAME__BODY_OUTCOME_QUERY:
		ok = t_mid_ok(f->outcome_query->mid) && t_user_ok(f->outcome_query->user);
		break;
	case MIGWIRE__FRAME__BODY_OUTCOME:
		ok = t_mid_ok(f->outcome->mid) &&
		     f->outcome->state <= MIGWIRE__OUTCOME_STATE__OUTCOME_UNKNOWN_USER_ABSENT;
		break;
	case MIGWIRE__FRAME__BODY_MIGRATE:
		ok = t_user_ok(f->migrate->user);
		break;
	case MIGWIRE__FRAME__BODY_LIST_USERS:
	case MIGWIRE__FRAME__BODY_SUBSCRIBE:
		ok = true;
		break;
	case MIGWIRE__FRAME__BODY_USERS:
		ok = f->users->n_users <= MIG__MAX_USERS_LISTED;
		for (size_t i = 0; ok && i < f->users->n_users; i++)
			ok = t_user_ok(f->users->users[i]->user) &&
			     f->users->users[i]->state <= MIGWIRE__USER_STATE__USER_PARKED;
		break;
	case MIGWIRE__FRAME__BODY_EVENT:
		ok = t_event_ok(f->event);
		break;
	case MIGWIRE__FRAME__BODY_REPLY:
		ok = f->reply->code <= 0 && (!f->reply->event || t_event_ok(f->reply->event));
		break;
	case MIGWIRE__FRAME__BODY_STATUS_REQUEST:
		ok = true;
		break;
	case MIGWIRE__FRAME__BODY_STATUS:
		ok = f->status->engine_id && f->status->engine_id[0] && f->status->n_users <= 16;
		for (size_t i = 0; ok && i < f->status->n_users; i++)
			ok = f->status->users[i]->state <= MIGWIRE__USER_STATE__USER_PARKED;
		for (size_t i = 0; ok && i < f->status->n_migrations; i++)
			ok = t_mid_ok(f->status->migrations[i]->mid) &&
			     t_user_ok(f->status->migrations[i]->user) &&
			     f->status->migrations[i]->phase[0] &&
			     f->status->migrations[i]->role <=
				     MIGWIRE__MIGRATION_ROLE__ROLE_DESTINATION;
		break;
	case MIGWIRE__FRAME__BODY_CANCEL:
		ok = (f->cancel->mid && f->cancel->mid[0]) ? t_mid_ok(f->cancel->mid)
							   : t_user_ok(f->cancel->user);
		break;
	case MIGWIRE__FRAME__BODY_ATTACH:
		ok = t_token_ok(f->attach->token) &&
		     (!f->attach->user || !f->attach->user[0] || t_user_ok(f->attach->user));
		break;
	case MIGWIRE__FRAME__BODY_ATTACH_REPLY:
		ok = f->attach_reply->code <= 0 && f->attach_reply->code >= -1000 &&
		     (!f->attach_reply->resume_token || !f->attach_reply->resume_token[0] ||
		      t_token_ok(f->attach_reply->resume_token));
		break;
	case MIGWIRE__FRAME__BODY_REDIRECT:
		ok = t_user_ok(f->redirect->user) && t_token_ok(f->redirect->token) &&
		     f->redirect->session_url && strncmp(f->redirect->session_url, "ws", 2) == 0;
		break;
	case MIGWIRE__FRAME__BODY_SESSION_RENEW:
		ok = t_token_ok(f->session_renew->token);
		break;
	default:
		ok = false;
		break;
	}
	if (!ok)
		fail_msg("decoded an invalid %s frame", mig__wire_body_name(f));
}

static uint64_t rng_state;

static uint32_t rng(void)
{
	/* xorshift64*: reproducible across libcs, unlike rand(). */
	rng_state ^= rng_state >> 12;
	rng_state ^= rng_state << 25;
	rng_state ^= rng_state >> 27;
	return (uint32_t)((rng_state * UINT64_C(2685821657736338717)) >> 32);
}

static void decode_fuzzed(const uint8_t *buf, size_t len, size_t *accepted)
{
	mig__frame *out = NULL;
	char why[256];
	int rc = mig__wire_decode(buf, len, CAP, &out, why, sizeof(why));
	if (rc == 0) {
		assert_non_null(out);
		assert_frame_sane(out);
		(*accepted)++;
		mig__wire_free(out);
	} else {
		if (rc != MIG_EPROTO)
			fail_msg("unexpected %s on fuzzed input", mig_err_name(rc));
		assert_null(out);
		assert_true(strlen(why) > 0);
	}
}

static void test_random_garbage(void **state)
{
	enum {
		ROUNDS = 20000,
		MAXLEN = 300
	};
	size_t accepted = 0;

	rng_state = UINT64_C(0x9e3779b97f4a7c15);
	for (int r = 0; r < ROUNDS; r++) {
		size_t len = 1 + rng() % MAXLEN;
		uint8_t *buf = malloc(len);
		assert_non_null(buf);
		for (size_t i = 0; i < len; i++)
			buf[i] = (uint8_t)rng();
		/* Half the time, start like a real frame so the body parsers
		 * and validators see input, not just the top-level scan. */
		if (r % 2 && len >= 4) {
			const Migwire__Frame__BodyCase k =
				all_kinds[rng() % MIG__ARRAY_LEN(all_kinds)];
			size_t p = put_tag(buf, (uint32_t)k, 2);
			if (p < len)
				put_varint(buf + p, len - p - 1 > 127 ? 127 : len - p - 1);
		}
		decode_fuzzed(buf, len, &accepted);
		free(buf);
	}
	print_message("# random garbage: %zu of %d decoded\n", accepted, ROUNDS);
}

static void test_mutated_frames(void **state)
{
	enum {
		ROUNDS = 20000
	};
	mig__msg *valid[MIG__ARRAY_LEN(all_kinds)];
	size_t accepted = 0;

	for (size_t k = 0; k < MIG__ARRAY_LEN(all_kinds); k++) {
		Migwire__Frame f = frame_of(all_kinds[k]);
		valid[k] = encode(&f);
	}
	rng_state = UINT64_C(0x0123456789abcdef);
	for (int r = 0; r < ROUNDS; r++) {
		const mig__msg *m = valid[rng() % MIG__ARRAY_LEN(all_kinds)];
		size_t len = m->len;
		uint8_t *buf = malloc(len);
		assert_non_null(buf);
		memcpy(buf, m->base + MIG__MSG_HEADROOM, len);
		int flips = 1 + (int)(rng() % 4);
		for (int i = 0; i < flips; i++) {
			size_t at = rng() % len;
			switch (rng() % 3) {
			case 0:
				buf[at] ^= (uint8_t)(1u << (rng() % 8));
				break;
			case 1:
				buf[at] = (uint8_t)rng();
				break;
			default:
				buf[at] = (uint8_t)(buf[at] + 1);
				break;
			}
		}
		decode_fuzzed(buf, len, &accepted);
		free(buf);
	}
	for (size_t k = 0; k < MIG__ARRAY_LEN(all_kinds); k++)
		mig__msg_free(valid[k]);
	/* Most single-byte changes land in data (nonces, blobs, numbers) and
	 * leave a valid frame: the oracle above checked each of them. */
	assert_true(accepted > 0);
	print_message("# mutated frames: %zu of %d decoded\n", accepted, ROUNDS);
}

/* Bytes the library may hold while decoding a message of len bytes: the
 * decode budget of wire.c. Without it, the messages below cost 50, 25, 30
 * and 21 bytes per wire byte; the last is within the budget by nature and
 * fails validation instead. */
static size_t amplification_bound(size_t len)
{
	return 24 * len + 64 * 1024;
}

static void expect_bounded_failure(const uint8_t *buf, size_t len, const char *what)
{
	char why[128] = "";

	cnt_install(-1);
	mig__frame *out = (mig__frame *)(uintptr_t)1;
	int rc = mig__wire_decode(buf, len, CAP, &out, why, sizeof(why));
	if (rc != MIG_EPROTO && rc != MIG_ENOMEM)
		fail_msg("%s: got %s", what, mig_err_name(rc));
	assert_null(out);
	assert_int_equal(cnt_live, 0);
	if (cnt_peak > amplification_bound(len))
		fail_msg("%s: %zu-byte message held %zu bytes", what, len, cnt_peak);
	cnt_remove();
	print_message("# %s: %zu bytes, peak %zu (%s)\n", what, len, cnt_peak, why);
}

/* The frame's `field` holding `body`: tag, length, bytes. */
static size_t wrap(uint8_t *out, uint32_t field, const uint8_t *body, size_t body_len)
{
	size_t n = put_tag(out, field, 2);
	n += put_varint(out + n, body_len);
	memcpy(out + n, body, body_len);
	return n + body_len;
}

static void test_amplification(void **state)
{
	const size_t target = 3u * 1024 * 1024;
	uint8_t *body = malloc(target);
	uint8_t *buf = malloc(target + 16);
	assert_non_null(body);
	assert_non_null(buf);
	size_t n;

	/* Top level: nothing but unknown varint fields, 2 bytes each. */
	for (n = 0; n + 2 <= target; n += 2) {
		body[n] = (uint8_t)((5 << 3) | 0);
		body[n + 1] = 0;
	}
	expect_bounded_failure(body, n, "unknown fields");

	/* A users list of empty entries, 2 bytes each. */
	n = put_tag(body, 1, 0);
	body[n++] = 1;
	while (n + 2 <= target) {
		body[n++] = (uint8_t)((2 << 3) | 2);
		body[n++] = 0;
	}
	expect_bounded_failure(buf, wrap(buf, MIGWIRE__FRAME__BODY_USERS, body, n),
			       "empty entries");

	/* The cheapest entries protobuf-c accepts: {user: "", state: 0}. */
	n = put_tag(body, 1, 0);
	body[n++] = 1;
	while (n + 6 <= target) {
		body[n++] = (uint8_t)((2 << 3) | 2);
		body[n++] = 4;
		body[n++] = (uint8_t)((1 << 3) | 2);
		body[n++] = 0;
		body[n++] = (uint8_t)((2 << 3) | 0);
		body[n++] = 0;
	}
	expect_bounded_failure(buf, wrap(buf, MIGWIRE__FRAME__BODY_USERS, body, n),
			       "minimal entries");

	/* Prepare with many light domains of empty names and data. */
	n = put_tag(body, 1, 2);
	body[n++] = MIG__MID_LEN;
	memcpy(body + n, MID, MIG__MID_LEN);
	n += MIG__MID_LEN;
	while (n + 8 <= target) {
		body[n++] = (uint8_t)((2 << 3) | 2);
		body[n++] = 6;
		body[n++] = (uint8_t)((1 << 3) | 2);
		body[n++] = 0;
		body[n++] = (uint8_t)((2 << 3) | 0);
		body[n++] = 1;
		body[n++] = (uint8_t)((3 << 3) | 2);
		body[n++] = 0;
	}
	expect_bounded_failure(buf, wrap(buf, MIGWIRE__FRAME__BODY_PREPARE, body, n),
			       "light domains");

	free(body);
	free(buf);
}

/* Every allocation point in decode can fail: each must give MIG_ENOMEM and
 * leak nothing, until enough succeed to decode. */
static void test_decode_enomem_sweep(void **state)
{
	static const Migwire__Frame__BodyCase kinds[] = {
		MIGWIRE__FRAME__BODY_BEGIN,
		MIGWIRE__FRAME__BODY_PREPARE,
		MIGWIRE__FRAME__BODY_USERS,
		MIGWIRE__FRAME__BODY_REPLY,
	};
	for (size_t k = 0; k < MIG__ARRAY_LEN(kinds); k++) {
		Migwire__Frame f = frame_of(kinds[k]);
		mig__msg *m = encode(&f);
		for (long fail_at = 0;; fail_at++) {
			mig__frame *out = NULL;
			char why[128];
			cnt_install(fail_at);
			int rc = mig__wire_decode(mig__msg_payload(m), m->len, CAP, &out, why,
						  sizeof(why));
			if (rc == 0) {
				mig__wire_free(out);
				assert_int_equal(cnt_live, 0);
				cnt_remove();
				break;
			}
			assert_int_equal(rc, MIG_ENOMEM);
			assert_null(out);
			assert_int_equal(cnt_live, 0);
			cnt_remove();
			assert_true(fail_at < 1000);
		}
		mig__msg_free(m);
	}
}

/* ---------------------------------------------------------------- threads */

typedef struct worker {
	const mig__msg *const *msgs;
	size_t n_msgs;
	int errors;
} worker;

static void *decode_worker(void *arg)
{
	worker *w = arg;
	char why[128];
	for (int r = 0; r < 3000; r++) {
		const mig__msg *m = w->msgs[(size_t)r % w->n_msgs];
		mig__frame *out = NULL;
		/* Alternate whole and truncated messages. */
		size_t len = r % 3 ? m->len : m->len / 2;
		int rc = mig__wire_decode(m->base + MIG__MSG_HEADROOM, len, CAP, &out, why,
					  sizeof(why));
		if ((r % 3 && rc != 0) || (!(r % 3) && rc != MIG_EPROTO))
			w->errors++;
		mig__wire_free(out);
	}
	return NULL;
}

static void test_concurrent_decode(void **state)
{
	enum {
		THREADS = 4
	};
	mig__msg *msgs[MIG__ARRAY_LEN(all_kinds)];
	for (size_t k = 0; k < MIG__ARRAY_LEN(all_kinds); k++) {
		Migwire__Frame f = frame_of(all_kinds[k]);
		msgs[k] = encode(&f);
	}
	pthread_t th[THREADS];
	worker w[THREADS];
	for (int i = 0; i < THREADS; i++) {
		w[i] = (worker){(const mig__msg *const *)msgs, MIG__ARRAY_LEN(msgs), 0};
		assert_int_equal(pthread_create(&th[i], NULL, decode_worker, &w[i]), 0);
	}
	for (int i = 0; i < THREADS; i++) {
		assert_int_equal(pthread_join(th[i], NULL), 0);
		assert_int_equal(w[i].errors, 0);
	}
	for (size_t k = 0; k < MIG__ARRAY_LEN(all_kinds); k++)
		mig__msg_free(msgs[k]);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_msg_new),
		T(test_pool),
		T(test_pool_chunk_roundtrip),
		T(test_roundtrip_handshake),
		T(test_roundtrip_peer),
		T(test_roundtrip_control),
		T(test_roundtrip_status_cancel),
		T(test_body_names),
		T(test_encode_too_big),
		T(test_encode_enomem),
		T(test_decode_oversize_before_alloc),
		T(test_decode_empty_and_no_body),
		T(test_decode_unknown_fields_accepted),
		T(test_decode_why_optional),
		T(test_reject_bad_mid),
		T(test_reject_bad_user),
		T(test_reject_bad_domains),
		T(test_reject_bad_urls),
		T(test_reject_bad_engine_ids),
		T(test_reject_long_reasons),
		T(test_reject_bad_nonces),
		T(test_reject_bad_macs),
		T(test_reject_bad_enums),
		T(test_reject_bad_codes),
		T(test_reject_bad_status_cancel),
		T(test_announce_frames),
		T(test_users_list_limit),
		T(test_truncated),
		T(test_random_garbage),
		T(test_mutated_frames),
		T(test_amplification),
		T(test_decode_enomem_sweep),
		T(test_concurrent_decode),
	};
	return cmocka_run_group_tests_name("wire", tests, NULL, NULL);
}
