/*
 * crash_helpers.h — what the durability tests (test_durable, test_crashloop) share on top of
 * tests/harness.h and fault_helpers.h: a supervisor that respawns the daemon the moment it dies,
 * the headers a resumed download sends (Range, If-Range) read back from fault_server.py's
 * request log, the ETag that server computes, the daemon's resume files in staging/, and the
 * checks that nothing is left behind (chunkd-fsck, the journal's size).
 *
 * Conventions are the harness's: int functions return 0 (or a documented non-negative value) or
 * a negative errno and print what went wrong to stderr; checks that can fail for a test reason
 * fill a `why` buffer instead, so that the caller can put it into its assertion message, whether
 * in a cmocka test or in a client child.
 */
#ifndef CHUNKD_TESTS_CRASH_HELPERS_H
#define CHUNKD_TESTS_CRASH_HELPERS_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "chunkd.h"
#include "fault_helpers.h"
#include "harness.h"

#define CR_WHY_LEN 512 /* room for a failed check's explanation */

/* ---- the fault server's request log, with the headers of a resume ---------------------------- */

/* One request of fault_server.py's JSON-lines log (fields as its docstring names them). */
struct cr_req {
	char path[512];     /* the request target (without the query string) */
	char range[128];    /* the Range header, "" when the request had none */
	char if_range[128]; /* the If-Range header, "" when the request had none */
	char outcome[32];   /* ok, truncated, reset, stalled, client_closed, dropped */
	int status;         /* the status the server answered, 0 if none */
	uint64_t bytes;     /* body bytes sent */
	double t;           /* CLOCK_MONOTONIC at the request's start, in seconds */
};

/*
 * cr_requests — the requests of the log whose path ends with `suffix`, sorted by their start
 * time: their number (*n; up to cap of them go to out). A line that does not parse is -EPROTO; a
 * missing log has no requests.
 */
int cr_requests(const char *log, const char *suffix, struct cr_req *out, size_t cap, size_t *n);

/* Wait until cr_requests() finds at least `want` requests (the server logs a request when it
 * completes): 0 with *n and out filled, or -ETIMEDOUT (with what was found). */
int cr_wait_requests(const char *log, const char *suffix, size_t want, int timeout_ms,
		     struct cr_req *out, size_t cap, size_t *n);

/* "bytes=N-" (exactly: an open-ended range from N): 0 with *from = N, else -EINVAL. */
int cr_range_from(const char *range, uint64_t *from);

/* The strong ETag fault_server.py sends for a file: "<size hex>-<mtime_ns hex>", quoted. */
int cr_fault_etag(const char *path, char *out, size_t len);

/* ---- staging and the resume file ------------------------------------------------------------ */

/* DATA_DIR/staging/<id-hex><suffix> ("" for the staging dir, ".resume" for its resume file). */
void cr_staging_path(char *out, size_t len, const char *data_dir, const chunkd_id *id,
		     const char *suffix);

/*
 * What the daemon recorded for file `idx` of a download in staging/<id>.resume (docs/on-disk.md:
 * one CR_RESUME_REC-byte record per file, "<index> <bytes> <crc32c> <D|P|-> <validator>" padded
 * with spaces, then " <crc32c of the bytes before it>\n"). found is 0 when the file is missing,
 * the record says '-' (nothing recorded) or fails its check (torn).
 */
#define CR_RESUME_REC 256
struct cr_resume {
	int found;
	uint64_t bytes;
	char kind;           /* 'D' a complete file, 'P' a durable prefix */
	char validator[256]; /* "E<etag>" or "L<last-modified>", as the origin sent it */
};

int cr_resume_read(const char *data_dir, const chunkd_id *id, uint32_t idx, struct cr_resume *r);

/* Format file idx's record into rec (CR_RESUME_REC bytes, no NUL), as the daemon writes it. */
void cr_resume_format(char *rec, uint32_t idx, uint64_t bytes, uint32_t crc, char kind,
		      const char *validator);

/* Parse record `rec` (CR_RESUME_REC bytes) of file idx: 0 (r->found 0 for '-'), or -EBADMSG when
 * its check fails or it is not file idx's record. */
int cr_resume_parse(const char *rec, uint32_t idx, struct cr_resume *r);

/* Wait until the resume file records at least min_bytes of file idx: 0, or -ETIMEDOUT. */
int cr_wait_resume(const char *data_dir, const chunkd_id *id, uint32_t idx, uint64_t min_bytes,
		   int timeout_ms, struct cr_resume *r);

/* ---- a supervisor ---------------------------------------------------------------------------- */

/*
 * A supervisor restarts the daemon of env (env->d) like init or systemd would: cr_sup_spawn()
 * starts one on env->data_dir and env->name with `args` and a fresh log ROOT/daemon-N.log, and
 * returns at once; cr_sup_kill() SIGKILLs and reaps it. The numbers count what happened.
 */
struct cr_sup {
	struct th_env *env;
	const char *const *args;
	unsigned spawns; /* daemons started */
	unsigned kills;  /* daemons killed with SIGKILL */
};

void cr_sup_init(struct cr_sup *s, struct th_env *env, const char *const args[]);
int cr_sup_spawn(struct cr_sup *s);

/* SIGKILL the daemon and reap it: 0; -ECHILD when it had already exited on its own (its status
 * and log are printed: a crash the test did not cause); -ETIMEDOUT. */
int cr_sup_kill(struct cr_sup *s);

/* The log of the n-th daemon started in env (0-based), into out. */
void cr_sup_log(const struct cr_sup *s, unsigned n, char *out, size_t len);

/* 1 if the instance says this daemon (env->d.pid) is READY now, else 0. Uses c's chunkd_info. */
int cr_daemon_ready(chunkd_client *c, const struct th_daemon *d);

/* ---- checks --------------------------------------------------------------------------------- */

/* Run chunkd-fsck --data-dir DIR with its output in out_path: its wait status (the output is
 * printed when it is not a clean exit 0), or a negative errno. */
int cr_fsck(const char *data_dir, const char *out_path, int timeout_ms);

/* The size of a file, or a negative errno. */
int64_t cr_file_size(const char *path);

/* Lines of a text file containing needle, or a negative errno. */
int cr_count_lines(const char *path, const char *needle);

/* The first line of a text file containing needle, into out: 0, or -ENOENT. */
int cr_find_line(const char *path, const char *needle, char *out, size_t len);

/* Wait until chunkd_status(id) reports `state`: 0 with *st filled, -ETIMEDOUT (st has the last
 * answer), or chunkd_status's error. */
int cr_wait_state(chunkd_client *c, const chunkd_id *id, uint32_t state, int timeout_ms,
		  chunkd_chunk_status *st);

/* Wait until path does not exist (lstat): 0, or -ETIMEDOUT. */
int cr_wait_gone(const char *path, int timeout_ms);

/* 0 if the file holds exactly these bytes; else -1 with the first difference in why. */
int cr_file_equal(const char *path, const void *data, size_t len, char *why, size_t whylen);

/* Append bytes to a file (which must exist). */
int cr_append(const char *path, const void *buf, size_t len);

/*
 * cr_rewrite_origin — replace an origin file with `size` new deterministic bytes (derived from
 * seed) and move its mtime `shift_s` seconds away from the old one, so that its ETag and
 * Last-Modified change. The new bytes are returned in *data (malloc'd; the caller frees).
 */
int cr_rewrite_origin(const char *path, size_t size, uint64_t seed, int shift_s, uint8_t **data);

#endif /* CHUNKD_TESTS_CRASH_HELPERS_H */
