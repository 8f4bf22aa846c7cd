/* Private to xfer.c, xfer_src*.c and xfer_dst*.c. */
#ifndef MIG_XFER_INT_H
#define MIG_XFER_INT_H

#include <pthread.h>
#include <stdatomic.h>

#include "delta.h"
#include "digest.h"
#include "files.h"
#include "workers.h"
#include "xfer.h"

/* Chunk payloads; the frame cap must hold one with room to spare. */
#define XFER_CHUNK_BYTES (256u * 1024)
/* Spent chunk messages a source keeps for reuse, at most: a window's. */
#define XFER_POOL_KEEP (XFER_WINDOW_BYTES / XFER_CHUNK_BYTES + 4)
/* Unacknowledged chunk bytes the source may have in flight. */
#define XFER_WINDOW_BYTES (8u * 1024 * 1024)
_Static_assert(XFER_CHUNK_BYTES + 512 + MIG__MSG_HEADROOM <= MIG__POOL_BLOCK,
	       "a chunk frame fits a pool block");
/* A destination starts the writeback of a file it receives whole every
 * this many bytes (xfer_dst_stream.c write_data()). */
#define XFER_WRITEBACK_STEP (1024u * 1024)
/* A signature larger than this is refused (a 1 TiB file's is ~12 MiB). */
#define XFER_SIG_MAX (64u * 1024 * 1024)
#define XFER_MAX_ROUNDS 16
/* Rounds that resend files after a checksum false match, at most. */
#define XFER_MAX_REDO 3

/* ---- source ---- */
struct src_file {
	char *path;
	uint64_t size;
	int64_t mtime_ns;
	uint64_t ino;
	uint64_t dev;
	uint32_t mode;
	bool present;       /* in the latest scan */
	bool sent;          /* the destination holds the version described below */
	mig__bytes sig;     /* signature of what the destination holds */
	uint64_t sent_size;
	int64_t sent_mtime_ns;
	uint64_t sent_ino;
	uint64_t last_cost; /* bytes the last send of this file took */
	bool hot;           /* changed after it was sent: keep its signature when sent */
	bool awaiting_sig;  /* asked the destination for the signature of its copy */
	mig__digest *dgst;   /* digest of the version the destination holds */
};

struct src_domain {
	mig__fdomain *d;
	struct src_file *files;
	size_t n;
	size_t cap;
};

/* A signature stream being received from the destination (dispatch). */
struct sig_stream {
	struct sig_stream *next;
	uint32_t id;
	size_t domain;
	char *path;
	mig__bytes bytes;
};

/* A complete, checked signature waiting for the strand to take it (round 1
 * runs while the destination is still sending them). */
struct sig_ready {
	struct sig_ready *next;
	size_t domain;
	char *path;
	mig__bytes bytes;
};

/* A round's output, set up by send_round (xfer_src.c) and filled by the
 * streams of each file it sends (xfer_src_stream.c): the chunk being
 * built, and what the last file's send found. */
struct sink_ctx {
	struct mig__xfer *x;
	bool final;       /* the round after the pause */
	bool torn;        /* mig__xsrc_send_file: the file was written to while read */
	uint32_t stream;
	uint8_t *buf;
	size_t len;
	uint64_t total;
	int error;
};

/* ---- destination ---- */
struct dst_file {
	char *path;
	uint8_t dgst[MIG__DIGEST_LEN];
	mig__digest *hash; /* running digest of the staged file */
	uint64_t size;
	bool durable;      /* fsynced since it last changed */
};

struct dst_domain {
	mig__fdomain *d;
	struct dst_file *files;
	size_t n;
	size_t cap;
};

struct dst_stream {
	struct dst_stream *next;
	uint32_t id;
	int kind;
	size_t domain;
	char *path;
	char tmp[48];      /* staging name of a delta's output until complete */
	uint64_t offset;   /* TAIL: where the bytes go */
	int basis_fd;
	int out_fd;
	mig__patch *patch;
	mig__digest *hash; /* DELTA, DATA: digest of the output as it is written */
	uint64_t size;     /* DATA: the announced size, the most it may write */
	uint64_t written;
	uint64_t wb_started; /* DATA: bytes whose writeback has been started */
};

/* Strand jobs that mig__xdst_on_frame posts for a FileStream and a Chunk. */
struct stream_job {
	struct mig__xfer *x;
	uint32_t id;
	int kind;
	size_t domain;
	char *path;
	uint64_t offset;
	uint64_t size; /* UINT64_MAX: not announced */
};

struct chunk_job {
	struct mig__xfer *x;
	uint32_t stream;
	bool last;
	Migwire__Chunk chunk; /* data: taken from the received frame, the job's */
};

struct mig__xfer {
	mig_engine *e;
	struct mig_migration *m; /* a reference */
	mig__strand *strand;
	bool outgoing;
	uint64_t conn;
	char mid[MIG__MID_LEN + 1];
	char *user;
	atomic_bool cancelled;
	atomic_uint_least64_t wire_sent;  /* frame bytes the workers sent */
	enum mig__fault_point fault;      /* tests: a file fault to inject, once */

	/* Source: blocks for the encoded chunk frames, which a worker
	 * allocates and the I/O thread frees; NULL: the heap. */
	mig__pool *pool;

	/* Flow control of chunk payload bytes, source side. */
	pthread_mutex_t fc_lock;
	pthread_cond_t fc_cond;
	uint64_t inflight;
	/* Source strand: when the next pre-copy chunk may go (mig__xfer_pace). */
	uint64_t pace_next_us;

	/* Compression (workers). */
	int compression;
	atomic_uint_least64_t link_bytes_per_s; /* measured from credits; 0 = unknown */
	unsigned incompressible_run;
	unsigned skip_compress;
	uint8_t *zbuf;
	size_t zcap;

	/* Source. Domains and files: dispatch until round 1 starts, then the
	 * strand's; manifests are built by the final round's task. */
	struct src_domain *sd;
	size_t nsd;
	struct sig_stream *sigs;       /* dispatch */
	uint64_t sig_bytes;            /* dispatch */
	/* Signatures handed from dispatch to round 1, under fc_lock (fc_cond
	 * signals each one). The destination sends them sorted by path within
	 * a domain, so once a stream for a later path has opened in a domain,
	 * every earlier path there has its signature or has none. */
	struct sig_ready *sig_ready;
	char **sig_opened;             /* per domain: the latest path opened */
	bool sigs_done;                /* RoundDone{0}: no more signatures */
	unsigned sig_requests;         /* later rounds: signatures asked for, not yet opened */
	uint64_t sigs_progress_us;     /* when the last signature stream opened */
	uint32_t next_stream;          /* strand */
	unsigned round;                /* dispatch: the round in flight (0 = signatures) */
	unsigned worker_round;         /* strand: the round its task is sending */
	uint64_t round_started_us;
	atomic_uint_least64_t round_sent_bytes; /* strand writes; read after RoundDone */
	uint64_t prev_estimate;
	unsigned redo_rounds;
	double throughput;             /* chunk bytes per second, last round */
	uint64_t credited_bytes;
	uint64_t first_chunk_us;
	Migwire__FileManifest *manifests;
	Migwire__FileManifest **manifest_ptrs;
	Migwire__FileEntry *entries;
	Migwire__FileEntry **entry_ptrs;
	uint8_t *digests;              /* MIG__DIGEST_LEN bytes per entry */
	size_t nmanifests;

	/* Destination: strand only. */
	struct dst_domain *dd;
	size_t ndd;
	struct dst_stream *streams;
	int failed;                    /* first error, reported in RoundDone */
	char failed_why[MIG__REASON_MAX];
	uint64_t uncredited;
	/* Staged files fsynced after a pre-copy round (user served), and at
	 * PREPARE (user paused: only what the last rounds changed). */
	unsigned synced_precopy;
	unsigned synced_paused;
	/* Large files fsynced as their stream ended (mig__xdst_sync_fd),
	 * counted into one of the two above when their round ends. */
	unsigned synced_streaming;
};

/* xfer_dst.c: fsyncs a staged file (or fails, in tests, at
 * MIG__FAULT_FILE_SYNC); 0 or MIG_EIO. Strand only. */
int mig__xdst_sync_fd(struct mig__xfer *x, int fd);

/* xfer.c */
struct mig__xfer *mig__xfer_new(mig_engine *e, struct mig_migration *m, bool outgoing);
/* A worker task's completion: runs `fn(e, m, value, aux, why)` in dispatch.
 * Its memory is reserved in dispatch, when the task is posted (where running
 * out of memory fails the step cleanly), so that posting it from the worker
 * cannot fail: a lost completion would leave the migration waiting forever
 * (no peer deadline runs during the pre-copy rounds or the install). */
typedef void (*mig__xfer_done_fn)(mig_engine *e, struct mig_migration *m, int value,
				  uint64_t aux, const char *why);
struct mig__xfer_done;
/* Reserves a completion for a task of `x`; NULL on no memory. */
struct mig__xfer_done *mig__xfer_done_new(struct mig__xfer *x);
/* The transfer the completion was reserved for (for the task's use). */
struct mig__xfer *mig__xfer_done_xfer(const struct mig__xfer_done *d);
/* Posts it (once; it then belongs to the engine's queue). Never fails. */
void mig__xfer_done_post(struct mig__xfer_done *d, mig__xfer_done_fn fn, int value,
			 uint64_t aux, const char *why);
/* Frees a completion that was never posted (a task discarded). Accepts NULL;
 * takes a void * to serve as a task's discard function. */
void mig__xfer_done_free(void *d);
/* Encodes and sends a frame from a worker; returns 0 or MIG_E*. */
int mig__xfer_send(struct mig__xfer *x, const mig__frame *f);
/* Sends one chunk of a stream, compressing it when that pays, waiting for
 * flow-control credit when `flow` is set. MIG_ECANCELED once cancelled. */
int mig__xfer_send_chunk(struct mig__xfer *x, uint32_t stream, const uint8_t *data, size_t len,
			 bool last, bool flow);
/* Decompresses a chunk into `out` (allocated). */
int mig__xfer_chunk_data(const Migwire__Chunk *c, uint8_t **out, size_t *len, char *why,
			 size_t why_len);
void mig__xfer_credit(struct mig__xfer *x, uint64_t bytes);
/* Source strand, pre-copy rounds: waits until the engine's
 * precopy_rate_limit lets `len` more bytes go (returns at once without a
 * limit). 0, or MIG_ECANCELED when the transfer is cancelled meanwhile. */
int mig__xfer_pace(struct mig__xfer *x, size_t len);

/* xfer_src_frames.c / xfer_dst.c */
void mig__xsrc_on_frame(mig_engine *e, struct mig_migration *m, const mig__frame *f);
void mig__xdst_on_frame(mig_engine *e, struct mig_migration *m, const mig__frame *f);
void mig__xsrc_free(struct mig__xfer *x);
void mig__xdst_free(struct mig__xfer *x);

/* xfer_src.c, the file table (dispatch until round 1 starts, then the
 * strand). Finds the file at `path`, adding it when `create` is set; NULL
 * when absent or on no memory. Entries are kept sorted by path and move
 * when one is added: no pointer into the table survives a call with
 * `create`. */
struct src_file *mig__xsrc_find_file(struct src_domain *sd, const char *path, bool create);
/* Whether the file is in the latest scan and new or changed since sent. */
bool mig__xsrc_needs_send(const struct src_domain *sd, const struct src_file *f);
/* xfer_src.c, dispatch: queues the next round (final: the one after the
 * pause) on the strand; its completion comes back to dispatch. On no
 * memory the transfer fails (mig__src_files_failed). */
void mig__xsrc_post_round(mig_engine *e, struct mig_migration *m, bool final);
/* Dispatch: queues a resend of the files RoundDone lists as redo. 0 or
 * MIG_ENOMEM. */
int mig__xsrc_post_redo(struct mig__xfer *x, const Migwire__RoundDone *rd);
/* Dispatch: once everything queued on the strand is done, lets dispatch
 * send PREPARE. 0 or MIG_ENOMEM. */
int mig__xsrc_post_ready(struct mig__xfer *x);

/* xfer_src_stream.c; on the strand unless noted. */
/* Sends one file of domain `domain` (a TAIL, DATA or delta stream) through
 * `s`, and records in `f` what the destination now holds; s->torn is set
 * when the file was written to while read. 0 or MIG_E*, `why` set. */
int mig__xsrc_send_file(struct mig__xfer *x, size_t domain, struct src_file *f,
			struct sink_ctx *s, char *why, size_t why_len);
/* Moves the signatures dispatch handed over into the file table; with
 * `create` also for files not in it yet. Under fc_lock. 0 or MIG_ENOMEM. */
int mig__xsrc_drain_signatures(struct mig__xfer *x, bool create);
/* Waits until the basis of `f` (its signature, or none) is known. 0,
 * MIG_ECANCELED once cancelled, MIG_ETIMEDOUT (`why` set) when no
 * signature stream opened for `wait_us`. */
int mig__xsrc_wait_basis(struct mig__xfer *x, size_t domain, struct src_file *f,
			 uint64_t wait_us, char *why, size_t why_len);
/* Rounds after the first: asks the destination for the signature of each
 * changed file the source did not sign itself. 0 or MIG_E* of the send. */
int mig__xsrc_request_signatures(struct mig__xfer *x);
/* Dispatch: checks a complete signature stream and hands its bytes (taken
 * from `s`) to the strand. 0, MIG_ENOMEM, or the check's MIG_E* with `why`
 * set. */
int mig__xsrc_accept_signature(struct mig__xfer *x, struct sig_stream *s, char *why,
			       size_t why_len);

/* xfer_dst.c; on the strand. */
/* The domain's departed-user cache folder (allocated); NULL on no memory. */
char *mig__xdst_cache_root(const mig__fdomain *d);
/* Finds the staged file at `path`, adding it when `create` is set; NULL
 * when absent or on no memory. Entries move when one is added. */
struct dst_file *mig__xdst_find_file(struct dst_domain *dd, const char *path, bool create);
/* Records an error: the first one is kept, and reported in the next RoundDone
 * or by PREPARE's verification. */
void mig__xdst_fail(struct mig__xfer *x, int err, const char *fmt, ...) MIG__PRINTF(3, 4);
/* Returns credit for the chunk bytes received, in batches; `force`: all
 * that is owed. */
void mig__xdst_send_credit(struct mig__xfer *x, bool force);
/* Sends `sig` as a signature stream for `path` (empty: no copy here); `buf`
 * is XFER_CHUNK_BYTES of scratch. 0 or MIG_E* of the send. */
int mig__xdst_send_sig_stream(struct mig__xfer *x, size_t domain, const char *path,
			      const mig__bytes *sig, uint8_t *buf);

/* xfer_dst_stream.c: the strand jobs mig__xdst_on_frame posts; a task frees
 * its job, a *_job_free discards one that never ran. */
/* Closes and frees a stream (strand; or when the transfer is freed). */
void mig__xdst_stream_free(struct dst_stream *s);
void mig__xdst_stream_job_free(void *arg);
/* A FileStream asking for a staged file's signature: always answered. */
void mig__xdst_sign_staged_task(void *arg);
/* Any other FileStream: opens the stream into staging. */
void mig__xdst_open_stream_task(void *arg);
void mig__xdst_chunk_job_free(void *arg);
/* A Chunk: written, patched or appended; the last one completes the file. */
void mig__xdst_chunk_task(void *arg);

#endif
