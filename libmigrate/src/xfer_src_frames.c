/* File transfer, source side, the owner thread's part: starting the
 * transfer and its final round from the handoff, the manifests for
 * PREPARE, and the frames the destination answers with (signatures,
 * credit, the rounds' RoundDone). The rounds themselves run on the strand
 * (xfer_src.c). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "handoff_int.h"
#include "xfer_int.h"

/* ------------------------------------------------------------------ entry points */

int mig__xsrc_start(mig_engine *e, struct mig_migration *m)
{
	struct mig__xfer *x = mig__xfer_new(e, m, true);
	if (!x)
		return MIG_ENOMEM;
	x->sd = mig__calloc(e->nfdomains, sizeof(*x->sd));
	if (!x->sd) {
		mig__xfer_end(e, m, false);
		return MIG_ENOMEM;
	}
	x->nsd = e->nfdomains;
	for (size_t i = 0; i < e->nfdomains; i++)
		x->sd[i].d = &e->fdomains[i];
	x->sig_opened = mig__calloc(x->nsd ? x->nsd : 1, sizeof(*x->sig_opened));
	if (!x->sig_opened) {
		mig__xfer_end(e, m, false);
		return MIG_ENOMEM;
	}
	x->sigs_progress_us = mig__now_us();
	m->deadline_us = mig__now_us() + mig__handoff_timeout_us(e);
	/* With pre-copy, round 1 starts now and takes each file's signature
	 * as it arrives (mig__xsrc_wait_basis), so the destination's signing overlaps
	 * the source's deltas. Without pre-copy the user is paused only once
	 * every signature is in (RoundDone{0}), as before. */
	if (e->precopy_max_rounds > 1)
		mig__xsrc_post_round(e, m, false);
	return 0;
}

void mig__xsrc_final(mig_engine *e, struct mig_migration *m)
{
	mig__xsrc_post_round(e, m, true);
}

void mig__xsrc_manifests(struct mig_migration *m, Migwire__FileManifest ***out, size_t *n)
{
	struct mig__xfer *x = m->xfer;
	*out = x ? x->manifest_ptrs : NULL;
	*n = x ? x->nmanifests : 0;
}

static size_t domain_index(struct mig__xfer *x, const char *name)
{
	for (size_t i = 0; i < x->nsd; i++)
		if (strcmp(x->sd[i].d->name, name) == 0)
			return i;
	return SIZE_MAX;
}

static struct sig_stream *find_sig_stream(struct mig__xfer *x, uint32_t id)
{
	for (struct sig_stream *s = x->sigs; s; s = s->next)
		if (s->id == id)
			return s;
	return NULL;
}

void mig__xsrc_on_frame(mig_engine *e, struct mig_migration *m, const mig__frame *f)
{
	struct mig__xfer *x = m->xfer;
	char why[MIG__REASON_MAX] = "";
	int rc = 0;
	switch (f->body_case) {
	case MIGWIRE__FRAME__BODY_FILE_STREAM: {
		const Migwire__FileStream *fs = f->file_stream;
		size_t d = domain_index(x, fs->domain);
		pthread_mutex_lock(&x->fc_lock);
		bool expected = !x->sigs_done || x->sig_requests > 0;
		if (expected && x->sigs_done && fs->kind == MIGWIRE__STREAM_KIND__STREAM_SIGNATURE)
			x->sig_requests--; /* an answer to mig__xsrc_request_signatures */
		pthread_mutex_unlock(&x->fc_lock);
		if (!expected || fs->kind != MIGWIRE__STREAM_KIND__STREAM_SIGNATURE ||
		    d == SIZE_MAX || find_sig_stream(x, fs->stream)) {
			rc = MIG_EPROTO;
			snprintf(why, sizeof(why), "unexpected file stream from the destination");
			break;
		}
		struct sig_stream *s = mig__calloc(1, sizeof(*s));
		char *opened = mig__strdup(fs->path);
		if (!s || !opened || !(s->path = mig__strdup(fs->path))) {
			mig__free(s);
			mig__free(opened);
			rc = MIG_ENOMEM;
			break;
		}
		pthread_mutex_lock(&x->fc_lock);
		mig__free(x->sig_opened[d]);
		x->sig_opened[d] = opened;
		x->sigs_progress_us = mig__now_us();
		pthread_cond_broadcast(&x->fc_cond);
		pthread_mutex_unlock(&x->fc_lock);
		s->id = fs->stream;
		s->domain = d;
		s->next = x->sigs;
		x->sigs = s;
		break;
	}
	case MIGWIRE__FRAME__BODY_CHUNK: {
		const Migwire__Chunk *c = f->chunk;
		struct sig_stream *s = find_sig_stream(x, c->stream);
		if (!s) {
			rc = MIG_EPROTO;
			snprintf(why, sizeof(why), "chunk for an unknown stream %u", c->stream);
			break;
		}
		uint8_t *data = NULL;
		size_t len = 0;
		rc = mig__xfer_chunk_data(c, &data, &len, why, sizeof(why));
		if (!rc && (x->sig_bytes += len) > XFER_SIG_MAX) {
			rc = MIG_ETOOBIG;
			snprintf(why, sizeof(why), "signatures larger than %u bytes", XFER_SIG_MAX);
		}
		if (!rc)
			rc = mig__bytes_append(&s->bytes, data, len);
		mig__free(data);
		if (!rc && c->has_last && c->last)
			rc = mig__xsrc_accept_signature(x, s, why, sizeof(why));
		break;
	}
	case MIGWIRE__FRAME__BODY_CREDIT:
		m->progress_pending = true; /* data is flowing: the tick reports it */
		mig__xfer_credit(x, f->credit->bytes);
		x->credited_bytes += f->credit->bytes;
		if (!x->first_chunk_us)
			x->first_chunk_us = x->round_started_us;
		if (mig__now_us() > x->first_chunk_us + 1000)
			atomic_store(&x->link_bytes_per_s,
				     (uint64_t)((double)x->credited_bytes * 1e6 /
						(double)(mig__now_us() - x->first_chunk_us)));
		if (m->deadline_us)
			m->deadline_us = mig__now_us() + mig__handoff_timeout_us(e);
		return;
	case MIGWIRE__FRAME__BODY_ROUND_DONE: {
		const Migwire__RoundDone *rd = f->round_done;
		if (rd->has_code && rd->code) {
			snprintf(why, sizeof(why), "destination: %s", rd->reason ? rd->reason : "");
			rc = rd->code;
			break;
		}
		if (rd->round == 0 && !x->sigs_done) {
			/* Every signature is in: round 1 need not wait any more. */
			pthread_mutex_lock(&x->fc_lock);
			x->sigs_done = true;
			pthread_cond_broadcast(&x->fc_cond);
			pthread_mutex_unlock(&x->fc_lock);
		}
		if (rd->round != x->round)
			return; /* a stray, or round 0's end while round 1 runs */
		if (rd->n_redo) {
			mig__engine_log(e, MIG_LOG_INFO,
					"migration %s: %zu files to resend whole after round %u",
					m->mid, rd->n_redo, rd->round);
			if (++x->redo_rounds > XFER_MAX_REDO) {
				rc = MIG_EPROTO;
				snprintf(why, sizeof(why), "files still differ after %u resends",
					 XFER_MAX_REDO);
				break;
			}
			if ((rc = mig__xsrc_post_redo(x, rd)) != 0)
				break;
		}
		if (m->phase == MIG__SRC_FINAL) {
			if (rd->n_redo)
				mig__xsrc_post_round(e, m, true); /* still paused: resend, whole */
			else
				rc = mig__xsrc_post_ready(x);
			break;
		}
		if (x->round == 0) {
			if (e->precopy_max_rounds <= 1) {
				mig__src_precopy_done(e, m);
				return;
			}
			mig__xsrc_post_round(e, m, false);
			return;
		}
		uint64_t took = mig__now_us() - x->round_started_us;
		x->throughput =
			took ? (double)atomic_load(&x->round_sent_bytes) * 1e6 / (double)took : 0;
		if (m->phase == MIG__SRC_PRECOPY)
			mig__xsrc_post_round(e, m, false);
		return;
	}
	default:
		rc = MIG_EPROTO;
		snprintf(why, sizeof(why), "unexpected %s from the destination", mig__wire_body_name(f));
		break;
	}
	if (rc)
		mig__src_files_failed(e, m, rc, why[0] ? why : mig_strerror(rc));
}
