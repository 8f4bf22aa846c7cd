/* The raw client of raw_client.h. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <string.h>

#include "raw_client.h"
#include "support.h"

void raw_open(raw_client *rc, const char *url, int channel, const void *secret, size_t secret_len,
	      bool insecure)
{
	memset(rc, 0, sizeof(*rc));
	assert_int_equal(mig__evq_init(&rc->q), 0);
	mig__transport_cfg cfg;
	memset(&cfg, 0, sizeof(cfg));
	cfg.listen = false;
	cfg.secret = secret;
	cfg.secret_len = secret ? secret_len : 0;
	cfg.insecure = insecure;
	cfg.engine_id = "raw-client";
	cfg.events = &rc->q;
	cfg.log_level = MIG_LOG_ERROR;
	cfg.name = "raw";
	char err[200] = "";
	assert_int_equal(mig__transport_new(&rc->t, &cfg, err, sizeof(err)), 0);
	assert_int_equal(mig__transport_start(rc->t), 0);
	int64_t id = mig__transport_connect(rc->t, url, channel);
	assert_true(id > 0);
	rc->conn = (uint64_t)id;
}

void raw_close(raw_client *rc)
{
	mig__transport_free(rc->t);
	rc->t = NULL;
	mig__evq_destroy(&rc->q, mig__tev_free_item);
	for (int i = 0; i < rc->nframes; i++)
		mig__wire_free(rc->frames[i]);
	rc->nframes = 0;
}

void raw_pump(raw_client *rc)
{
	if (!mig__evq_wait(&rc->q, 0))
		return;
	mig__evq_item *it = mig__evq_take_all(&rc->q);
	while (it) {
		mig__evq_item *next = it->next;
		mig__tev *ev = (mig__tev *)it;
		if (ev->conn == rc->conn) {
			if (ev->type == MIG__TEV_UP) {
				rc->up = true;
			} else if (ev->type == MIG__TEV_DOWN) {
				rc->down = true;
				rc->down_error = ev->error;
				mig__strlcpy(rc->down_reason, ev->reason, sizeof(rc->down_reason));
			} else if (ev->type == MIG__TEV_FRAME &&
				   rc->nframes < (int)MIG__ARRAY_LEN(rc->frames)) {
				rc->frames[rc->nframes++] = ev->frame;
				ev->frame = NULL;
			}
		}
		mig__tev_free(ev);
		it = next;
	}
}

bool raw_is_up_or_down(void *arg)
{
	raw_client *rc = arg;
	raw_pump(rc);
	return rc->up || rc->down;
}

bool raw_is_down(void *arg)
{
	raw_client *rc = arg;
	raw_pump(rc);
	return rc->down;
}

bool raw_has_frame(void *arg)
{
	raw_client *rc = arg;
	raw_pump(rc);
	return rc->nframes > 0 || rc->down;
}

void raw_wait_up(raw_client *rc, mig_engine **es, size_t n)
{
	test_dispatch_until(es, n, raw_is_up_or_down, rc, 10000);
	if (!rc->up)
		fail_msg("raw client not up: %s (%s)", mig_err_name(rc->down_error),
			 rc->down ? rc->down_reason : "timeout");
}

void raw_wait_down(raw_client *rc, mig_engine **es, size_t n)
{
	if (!test_dispatch_until(es, n, raw_is_down, rc, 10000))
		fail_msg("raw client still connected after 10 s");
}

mig__frame *raw_next_frame(raw_client *rc, mig_engine **es, size_t n)
{
	test_dispatch_until(es, n, raw_has_frame, rc, 10000);
	if (rc->nframes == 0)
		fail_msg("no frame from the engine (%s)", rc->down ? rc->down_reason : "timeout");
	mig__frame *f = rc->frames[0];
	memmove(rc->frames, rc->frames + 1, (size_t)(rc->nframes - 1) * sizeof(rc->frames[0]));
	rc->nframes--;
	return f;
}

void raw_send(raw_client *rc, const mig__frame *f)
{
	mig__msg *m = NULL;
	assert_int_equal(mig__wire_encode(f, 0, &m), 0);
	mig__transport_send(rc->t, rc->conn, m);
}
