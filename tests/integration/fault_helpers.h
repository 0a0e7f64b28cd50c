/*
 * fault_helpers.h — what test_faults, test_model and test_stress share on top of tests/harness.h:
 * the origins of tests/servers/ (nginx.sh and fault_server.py) started on 127.0.0.1, the fault
 * server's JSON-lines request log, chunk descriptors built from the generator's manifest, a
 * byte-for-byte check of a chunk directory against the origin, leftovers in staging/ and trash/,
 * "has the daemon taken my requests yet" (read-only look at the caller's own request ring) and
 * the CPU time of a process.
 *
 * Conventions are the harness's: int functions return 0 (or a documented non-negative value) or
 * a negative errno and print what went wrong to stderr; checks that fail for a test reason fill
 * a `why` buffer instead, so that the caller can put it into its assertion message, whether in a
 * cmocka test or in a client child.
 */
#ifndef CHUNKD_TESTS_FAULT_HELPERS_H
#define CHUNKD_TESTS_FAULT_HELPERS_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "chunkd.h"
#include "harness.h"

#define FH_WHY_LEN 512 /* room for a failed check's explanation */

/* ---- origins -------------------------------------------------------------------------------- */

/*
 * A server of tests/servers/ serving `root` on 127.0.0.1:port:
 * - nginx: tests/servers/nginx.sh start ROOT STATE prints "PORT n"; nginx.sh stop STATE stops it.
 * - fault: python3 tests/servers/fault_server.py --root ROOT --port 0 --log LOG prints "PORT n";
 *   it logs every request as one JSON object per line (see fh_log_load()) and injects the faults
 *   its docstring lists. The process is ours: SIGTERM, then SIGKILL, stops it.
 */
enum fh_kind { FH_NGINX = 1, FH_FAULT = 2 };

struct fh_server {
	enum fh_kind kind;
	pid_t pid; /* fault_server.py; 0 for nginx (nginx.sh owns it) or when not running */
	int port;  /* 0 when not running */
	char root[PATH_MAX];
	char state[PATH_MAX]; /* nginx: nginx.sh's state directory */
	char log[PATH_MAX];   /* fault: the JSON-lines request log */
	char out[PATH_MAX];   /* the server's (or nginx.sh's) stdout and stderr */
};

/* 1 if tests/servers/<script> exists in the source tree, else 0. */
int fh_server_available(const char *script);

/*
 * Start an origin; `dir` (created if needed) receives its state, logs and output. Waits up to
 * timeout_ms for the "PORT n" line. 0; -ENOENT when the script is missing; -ENOSYS when nginx.sh
 * says nginx is not installed (its exit status 77: the caller skips); another negative errno
 * (the server's output is printed).
 */
int fh_nginx_start(struct fh_server *s, const char *root, const char *dir, int timeout_ms);
int fh_fault_start(struct fh_server *s, const char *root, const char *dir, int timeout_ms);

/* Stop the server (safe on a zeroed or stopped struct). */
void fh_server_stop(struct fh_server *s);

/* "http://127.0.0.1:PORT" */
void fh_server_url(const struct fh_server *s, char *out, size_t len);

/* ---- the fault server's request log --------------------------------------------------------- */

struct fh_req {
	char path[512];   /* the request target as logged (without the query string) */
	char raw[1024];   /* the whole line, for messages */
	char outcome[32]; /* ok, truncated, reset, stalled, client_closed, dropped */
	double t;         /* start of the request: "mono" (CLOCK_MONOTONIC), in seconds */
	double t_end;     /* its end: "mono_end", or t when not logged */
	int status;       /* the status the server answered, 0 if none */
};

/*
 * Load every request of the log (a line that does not parse is an error: -EPROTO). *out is
 * malloc'd (the caller frees), in log order, which is the order in which requests completed.
 * Field names are fault_server.py's (its docstring): path, mono (or t), mono_end, status,
 * outcome.
 */
int fh_log_load(const char *log, struct fh_req **out, size_t *n);

/* The requests whose path ends with `suffix`: their count; up to cap go to out, sorted by their
 * start time. */
size_t fh_log_select(const struct fh_req *v, size_t n, const char *suffix,
		     const struct fh_req **out, size_t cap);

/* ---- chunk descriptors ---------------------------------------------------------------------- */

/*
 * A chunkd_chunk built from a manifest chunk of a --flat generation (dir "<dataset>/<id>"), with
 * the strings it points to. File k's URL is "<prefix>/<dataset>/<id>/<name>".
 */
struct fh_desc {
	chunkd_chunk c;
	chunkd_file files[CHUNKD_MAX_FILES];
	char names[CHUNKD_MAX_FILES][CHUNKD_MAX_NAME + 1];
	char urls[CHUNKD_MAX_FILES][512];
};

int fh_desc_init(struct fh_desc *d, const struct th_chunk *ch, const char *prefix);

/* ---- checks --------------------------------------------------------------------------------- */

/* DATA_DIR/chunks/<dataset-hex>/<first:020>-<end:020>-<id-hex>, where the daemon publishes ch. */
void fh_chunk_path(char *out, size_t len, const char *data_dir, const struct th_chunk *ch);

/*
 * The origin's bytes of a manifest chunk, loaded once: file k of ch is origin/<ch->dir>/<name>.
 * fh_origin_load() returns 0 or a negative errno; fh_origin_free() is safe on a zeroed struct.
 */
struct fh_origin_chunk {
	const struct th_chunk *ch;
	uint8_t **data; /* per file */
	size_t *len;
};

struct fh_origin {
	size_t n;
	struct fh_origin_chunk *chunks;
};

int fh_origin_load(struct fh_origin *o, const char *root, const struct th_manifest *m);
void fh_origin_free(struct fh_origin *o);
const struct fh_origin_chunk *fh_origin_find(const struct fh_origin *o, const chunkd_id *id);

/*
 * fh_check_dir — the directory holds exactly the chunk's files and .chunkd-meta, each file
 * byte-identical to the origin's. 0, or -1 with why. `bytes` (may be NULL) is incremented by
 * the bytes compared.
 */
int fh_check_dir(const char *dir, const struct fh_origin_chunk *oc, uint64_t *bytes, char *why,
		 size_t whylen);

/* Entries left in DATA_DIR/staging and DATA_DIR/trash (a missing directory counts as empty), or
 * a negative errno; `why` (may be NULL) lists them. */
int fh_leftovers(const char *data_dir, char *why, size_t whylen);

/* Wait until fh_leftovers() is 0: 0, or -ETIMEDOUT with the entries in why. */
int fh_wait_no_leftovers(const char *data_dir, int timeout_ms, char *why, size_t whylen);

/* Name of a chunk state, for messages. */
const char *fh_state_name(uint32_t state);

/* A one-line description of a status, for messages. */
void fh_status_str(const chunkd_chunk_status *st, char *out, size_t len);

/* ---- the caller's own request ring ---------------------------------------------------------- */

/*
 * fh_ring_open — map instance `name`'s request segment read-only and find the client slot whose
 * owner is the calling process (it must have a chunkd_client open). fh_ring_wait_taken() then
 * waits until the daemon has taken every record the process enqueued (its sq_head reached
 * sq_tail): the requests have been applied in the daemon's order, so any request enqueued after
 * that, by any client, comes after them. 0, -ENOENT (no slot), -ETIMEDOUT.
 */
struct fh_ring {
	void *map; /* struct chunkd_req_map, opaque here */
	const void *slot;
};

int fh_ring_open(struct fh_ring *r, const char *name);
int fh_ring_wait_taken(struct fh_ring *r, int timeout_ms);
void fh_ring_close(struct fh_ring *r);

/* ---- finds --------------------------------------------------------------------------------- */

/*
 * fh_find — chunkd_find(), except that -EAGAIN is retried (up to FH_FIND_RETRIES times, one
 * polling interval apart) and counted in *eagain. The contract allows -EAGAIN only when a daemon
 * died mid-write; the tests here run a live daemon, so each count is a contract violation that
 * the caller reports at the end (after checking everything else).
 */
#define FH_FIND_RETRIES 10000

int fh_find(chunkd_client *c, const chunkd_id *dataset, uint64_t block, chunkd_ref *ref,
	    uint64_t *eagain);

/* ---- processes ------------------------------------------------------------------------------ */

/* utime + stime of process pid in clock ticks, from /proc/PID/stat. 0 or a negative errno. */
int fh_proc_cpu_ticks(pid_t pid, uint64_t *ticks);

#endif /* CHUNKD_TESTS_FAULT_HELPERS_H */
