/*
 * engine_internal.h — the engine's objects, shared by engine.c and the sources (source_http.c,
 * source_file.c). Nothing here is visible outside the daemon.
 *
 * Ownership: a job owns its transfers; a transfer owns the write buffers it filled until their
 * writes complete. Every object that has an io_uring op in flight counts it, and is freed only
 * when that count is zero ("defer frees": a completion must always find valid memory).
 */
#ifndef CHUNKD_DAEMON_ENGINE_INTERNAL_H
#define CHUNKD_DAEMON_ENGINE_INTERNAL_H

#include <curl/curl.h>
#include <stdint.h>

#include "engine.h"
#include "shm/records.h"

#define WBUF_SIZE (256u * 1024)

struct xfer;
struct job;

/* A write buffer: filled by a transfer, then written at `off` of the transfer's file. */
struct wbuf {
	struct op op;
	struct xfer *x;
	uint8_t *data;
	uint32_t len;  /* bytes filled */
	uint32_t done; /* bytes written so far (short writes are continued) */
	uint64_t off;  /* file offset of data[0] */
	uint32_t crc_end; /* CRC32C of the file's bytes [0, off + len) */
	uint32_t wrec;    /* index of its entry in the transfer's write ring */
	struct wbuf *next;
};

/* A submitted write, kept in submission order to know the contiguous written prefix. */
struct wrec {
	uint64_t end;
	uint32_t crc_end;
	uint32_t done;
};

enum xfer_state {
	X_IDLE,     /* waiting for a transfer slot */
	X_RETRY,    /* failed, waiting for retry_at */
	X_RUNNING,  /* the source is delivering bytes */
	X_DRAINING, /* the source finished; waiting for writes, then fsync */
	X_FSYNC,    /* fsync in flight */
	X_DONE,     /* file complete and durable in staging */
};

struct source_ops;

struct xfer {
	struct engine *eng;
	struct job *job;
	uint32_t idx; /* file index in job->dl */
	enum xfer_state state;
	const struct source_ops *src;
	int fd; /* the staging file, -1 when closed */
	struct wbuf *cur; /* buffer being filled */
	uint32_t inflight; /* io_uring ops of this transfer in flight */
	uint64_t received; /* bytes accepted from the source (this attempt) */
	uint64_t written;  /* bytes durably handed to the kernel */
	uint32_t crc;      /* CRC32C of the bytes received */
	uint32_t attempts;
	uint64_t retry_at;
	int result;      /* first error of this attempt (negative errno), 0 if none */
	int finished;    /* the source reported its end */
	int paused;      /* the source is paused for lack of buffers */
	uint64_t last_data_ms; /* when the source last delivered bytes (stall detection) */
	long http_status;
	char msg[CHUNKD_SLOT_MSG_MAX];
	struct op fsync_op;
	/* Resume: the contiguous prefix of the file that is written, and the part of it that is
	 * durable (fdatasync'ed) and recorded in the job's resume file. */
	struct wrec *wq;   /* ring of cfg.buffers entries */
	uint32_t wq_head, wq_tail;
	uint64_t prefix;   /* bytes [0, prefix) written */
	uint32_t prefix_crc;
	uint64_t ckpt;     /* bytes [0, ckpt) durable and recorded */
	uint32_t ckpt_crc;
	uint64_t ckpt_pending; /* a checkpoint fdatasync is in flight for this prefix */
	uint32_t ckpt_pending_crc;
	struct op ckpt_op;
	uint64_t start_off;  /* where this attempt's bytes start (a resumed attempt: > 0) */
	uint64_t resume_from; /* from the resume file: continue at this offset (next attempt) */
	uint32_t resume_crc;
	int resume_done;      /* the resume file says the file was complete */
	int resume_recorded;  /* the resume file on disk may hold a record (D or P) of it */
	char validator[160];  /* "E<etag>" or "L<last-modified>" of the origin, "" if none */
	uint64_t range_start; /* Content-Range start of a 206 answer, UINT64_MAX if none */
	uint64_t range_total; /* total size in a 416 answer's Content-Range, UINT64_MAX if none */
	int resp_etag;        /* this response carried an ETag */
	struct curl_slist *headers;
	/* Source state. */
	CURL *easy;
	int src_fd;
	uint64_t src_size;
	void *src_state;
	struct op src_op;
	struct xfer *next_paused;
};

/* A source: http(s) via libcurl, file:// through io_uring reads. */
struct source_ops {
	const char *scheme;
	/* Start delivering bytes of x's URL through chunkd__xfer_deliver(); end with
	 * chunkd__xfer_finished(). Return 0 or a negative errno (then nothing was started). */
	int (*start)(struct engine *e, struct xfer *x);
	/* Stop delivering; chunkd__xfer_finished() is not called afterwards. Must leave no op of
	 * the source in flight that could touch x after x->inflight reaches 0. */
	void (*cancel)(struct engine *e, struct xfer *x);
	/* Buffers are available again. */
	void (*resume)(struct engine *e, struct xfer *x);
	/* Free the source's resources (may be NULL); called once the source is quiet. */
	void (*release)(struct xfer *x);
};

/* A cancelled source has no op in flight any more: release it and let the job go on. */
void chunkd__xfer_source_released(struct engine *e, struct xfer *x);

/* Offer n <= WBUF_SIZE bytes to x's file (curl hands at most CURL_MAX_WRITE_SIZE, 16 KiB, to
 * a write callback). Returns n when taken, 0 when no buffer space is free right now (the source
 * must pause and wait for resume), or -1 when x must stop (cancelled or failed). */
long chunkd__xfer_deliver(struct engine *e, struct xfer *x, const void *data, size_t n);

/* The source ended: err 0 = complete, else a negative errno; msg describes a failure. */
void chunkd__xfer_finished(struct engine *e, struct xfer *x, int err, long http_status,
			   const char *msg);

/* A source submits (begin) or completes (end) an io_uring op on behalf of x: the job waits
 * for every such op before it frees x. */
void chunkd__xfer_op_begin(struct xfer *x);
void chunkd__xfer_op_end(struct xfer *x);

/* The origin answered a resumed request with the whole file (200): start over at offset 0. */
void chunkd__xfer_restart_at_zero(struct engine *e, struct xfer *x);

/* The URL and the name of x's file. */
const char *chunkd__xfer_url(const struct xfer *x);
const char *chunkd__xfer_name(const struct xfer *x);

/* The ring and helpers for sources. */
struct loop *chunkd__engine_loop(struct engine *e);

/* Sources. */
extern const struct source_ops chunkd__source_http;
extern const struct source_ops chunkd__source_file;

/* libcurl multi state (source_http.c). */
int chunkd__http_init(struct engine *e, const struct engine_config *cfg);
void chunkd__http_cleanup(struct engine *e);
/* Run curl's timers; returns the next curl deadline (mono ms) or UINT64_MAX. */
uint64_t chunkd__http_run(struct engine *e);
int chunkd__http_idle(struct engine *e); /* 1 if no socket poll is in flight */

/* Accessors for the http source's state stored in the engine. */
struct http_state;
struct http_state **chunkd__engine_http(struct engine *e);
const struct engine_config *chunkd__engine_config(struct engine *e);

#endif
