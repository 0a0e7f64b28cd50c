/*
 * harness.h — the harness of chunkd's integration tests. It runs the real daemon the way an
 * operator would (posix_spawn of $CHUNKD_BIN_DIR/chunkd, stderr captured into a log file, SIGTERM
 * to stop, SIGKILL to crash it), prepares data directories with scripts/gen-chunks.py and reads its
 * manifest back, runs clients in child processes that report over pipes, and waits for conditions
 * with deadlines: tests never sleep to synchronise.
 *
 * Conventions:
 * - Functions returning int return 0 (or a documented non-negative value) or a negative errno, and
 *   print what went wrong to stderr, so that a test only has to assert the return value.
 * - Nothing here needs cmocka; the few assertion macros at the end exist only when cmocka.h was
 *   included first.
 * - Every resource a test creates (temporary directory, instance segments, daemons, children) is
 *   released by th_env_fini(), which is safe to call after a failed assertion at any point.
 * - Single-threaded: call from the test's main thread (children run their own copy).
 */
#ifndef CHUNKD_TESTS_HARNESS_H
#define CHUNKD_TESTS_HARNESS_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/wait.h>

#include "chunkd.h"

#define TH_EXIT_SKIP 77     /* CTest's SKIP_RETURN_CODE: the test cannot run here */
#define TH_NAME_LEN  65     /* an instance name (1-64 bytes) and its NUL */
#define TH_POLL_NS   500000 /* one polling interval of the deadline waits: 0.5 ms */

/* ---- environment ---------------------------------------------------------------------------- */

/*
 * th_require — exit with TH_EXIT_SKIP, after saying why, unless the test can run here: the
 * CHUNKD_BIN_DIR and CHUNKD_SOURCE_DIR variables set by CTest, the daemon binary and python3.
 */
void th_require(void);

/* $CHUNKD_BIN_DIR and $CHUNKD_SOURCE_DIR (th_require() checked them). */
const char *th_bin_dir(void);
const char *th_source_dir(void);

/* ---- time and deadlines --------------------------------------------------------------------- */

uint64_t th_now_ns(void); /* CLOCK_MONOTONIC */

struct th_deadline {
	uint64_t end_ns;
};

void th_deadline_start(struct th_deadline *d, int timeout_ms);
int th_deadline_passed(const struct th_deadline *d);  /* 1 once the deadline is behind us */
int th_deadline_left_ms(const struct th_deadline *d); /* >= 0 */

/* Sleep one polling interval (TH_POLL_NS). Only ever used between two checks of a condition. */
void th_pause(void);

/* Poll cond(arg) until it returns non-zero: returns 0, or -ETIMEDOUT after timeout_ms. */
int th_wait(int (*cond)(void *arg), void *arg, int timeout_ms);

/* ---- files ---------------------------------------------------------------------------------- */

/* Make a fresh directory /tmp/chunkd-test-XXXXXX (or under $TMPDIR); `out` gets its real path. */
int th_mkdtemp(char *out, size_t len);

/* Remove a file or a whole tree, never following symlinks. A missing path is not an error. */
int th_rm_rf(const char *path);

/* mkdir -p. */
int th_mkdirs(const char *path, mode_t mode);

/* The whole file, NUL-terminated, malloc'd (the caller frees); NULL with errno on failure. */
char *th_read_file(const char *path, size_t *len);

/* Create or replace a file with the given bytes. */
int th_write_file(const char *path, const void *buf, size_t len);

/* 1 if the file contains `needle`, 0 if not, or a negative errno. */
int th_file_contains(const char *path, const char *needle);

/* Wait until the file contains `needle`: 0, or -ETIMEDOUT (and the file is printed). */
int th_wait_file_contains(const char *path, const char *needle, int timeout_ms);

/* Number of entries in a directory other than "." and "..", or a negative errno. */
int th_count_entries(const char *dir);

/* 1 if the path exists (lstat), else 0. */
int th_exists(const char *path);

/* ---- processes ------------------------------------------------------------------------------ */

/*
 * th_spawn — posix_spawnp argv (argv[0] is looked up in $PATH when it has no '/') with stdin
 * from /dev/null, stdout appended to out_path and stderr to err_path (either NULL: inherited; both
 * the same path: one file). The child starts with default signal dispositions and an empty
 * signal mask whatever the test has set up.
 */
int th_spawn(pid_t *pid, const char *const argv[], const char *out_path, const char *err_path);

/* Reap pid within timeout_ms: returns 0 and *status, or -ETIMEDOUT (pid left running). */
int th_wait_pid(pid_t pid, int timeout_ms, int *status);

/* Spawn argv and wait for it: returns its wait status, or -ETIMEDOUT after killing it. */
int th_run(const char *const argv[], const char *out_path, const char *err_path, int timeout_ms);

/* Describe a wait status (or a negative errno from the waits above) as "exit 1", "signal 9". */
const char *th_status_str(int status, char *buf, size_t len);

/* 1 if the wait status is a normal exit with that code. */
int th_exited_with(int status, int code);

/* ---- ids and CRC32C ------------------------------------------------------------------------- */

/* CRC-32C (Castagnoli), bitwise, independent of the daemon's implementation. Start with 0. */
uint32_t th_crc32c(uint32_t crc, const void *buf, size_t len);

void th_hex(const chunkd_id *id, char out[2 * CHUNKD_ID_SIZE + 1]);
int th_unhex(const char *hex, chunkd_id *out); /* exactly 64 hex digits; 0 or -EINVAL */

/* The catalogue's id order (docs/shm-layout.md): four native-endian u64 words, word by word. */
int th_id_order(const chunkd_id *a, const chunkd_id *b);

/*
 * Random numbers for tests: th_seed() is $CHUNKD_TEST_SEED if set, else taken from the clock, and
 * is printed once so that a failing run can be repeated; th_rand() is splitmix64.
 */
uint64_t th_seed(void);
uint64_t th_rand(uint64_t *state);

/* A deterministic id that no generator seed produces: sha-like mixing of (tag, n). */
void th_make_id(chunkd_id *out, uint32_t tag, uint32_t n);

/* ---- the generator's manifest --------------------------------------------------------------- */

struct th_file {
	char name[CHUNKD_MAX_NAME + 1];
	uint64_t size;
	uint32_t crc32c;
	int has_crc;
};

struct th_chunk {
	chunkd_id id, dataset;
	char id_hex[2 * CHUNKD_ID_SIZE + 1], dataset_hex[2 * CHUNKD_ID_SIZE + 1];
	uint64_t first, end;
	char dir[512]; /* relative to the data dir, as the manifest says */
	uint32_t nfiles;
	struct th_file *files;
};

struct th_manifest {
	struct th_chunk *chunks; /* in generation order */
	size_t n;
	struct th_chunk **sorted; /* by (dataset bytes, first) for th_manifest_find() */
	chunkd_id *datasets;      /* distinct datasets, in order of first appearance */
	size_t ndatasets;
	struct th_file *files; /* storage of every chunk's files */
};

/*
 * th_gen_chunks — run scripts/gen-chunks.py --out data_dir --manifest manifest_json ARGS... and
 * load the manifest into *m (th_manifest_free() it). args is NULL-terminated, may be NULL.
 */
int th_gen_chunks(const char *data_dir, const char *manifest_json, const char *const args[],
		  struct th_manifest *m);

/* Load a manifest written by gen-chunks.py (python3 converts the JSON into lines we parse). */
int th_manifest_load(const char *manifest_json, struct th_manifest *m);
void th_manifest_free(struct th_manifest *m);

/* The chunk of `dataset` holding `block` according to the manifest, or NULL. O(log n). */
const struct th_chunk *th_manifest_find(const struct th_manifest *m, const chunkd_id *dataset,
					uint64_t block);

/* The chunk with that id, or NULL. O(n). */
const struct th_chunk *th_manifest_by_id(const struct th_manifest *m, const chunkd_id *id);

/* One past the highest end block of the dataset (0 when it has no chunk). */
uint64_t th_manifest_max_end(const struct th_manifest *m, const chunkd_id *dataset);

/* ---- writing chunk directories by hand ------------------------------------------------------ */

/*
 * th_write_meta — write DIR/.chunkd-meta in the format of docs/on-disk.md (the one gen-chunks.py
 * writes) for the given fields; the files need not exist. Tests use it to write metadata that
 * disagrees with the directory.
 */
int th_write_meta(const char *chunk_dir, const chunkd_id *dataset, const chunkd_id *id,
		  uint64_t first, uint64_t end, uint32_t nfiles, const struct th_file *files);

/*
 * th_write_chunk — create a well-formed chunk directory DATA_DIR/chunks/<dataset>/<first>-<end>-
 * <id>/ with nfiles files "fileK.bin" of file_size deterministic bytes and its metadata (with
 * CRC32C). `dir_out` (may be NULL) receives the directory's absolute path.
 */
int th_write_chunk(const char *data_dir, const chunkd_id *dataset, const chunkd_id *id,
		   uint64_t first, uint64_t end, uint32_t nfiles, uint64_t file_size, char *dir_out,
		   size_t dir_len);

/* The directory name "<first:020>-<end:020>-<id-hex>" of a chunk. */
void th_chunk_dir_name(char *out, size_t len, uint64_t first, uint64_t end, const chunkd_id *id);

/* ---- instances ------------------------------------------------------------------------------ */

/* A name unique to this process and call: "t-<tag>-<pid>-<n>" (tag is shortened to fit). */
void th_instance_name(char *out, size_t len, const char *tag);

/* shm_unlink /chunkd.NAME.{cat,req,lock}; missing objects are fine. */
void th_shm_unlink(const char *name);

/* 1 if /dev/shm/chunkd.NAME.SUFFIX exists. */
int th_shm_exists(const char *name, const char *suffix);

/* ---- the request segment, inspected read-only ----------------------------------------------- */

/*
 * th_client_slot — the client slot of instance `name` whose owner word names process pid (closed
 * or not): returns the slot index, with the number of its pin entries in use in *pins (may be
 * NULL); -ENOENT if no slot names pid; other negative errnos from attaching. Maps the segment
 * read-only: a test looks at what the daemon and the clients did, and never changes it.
 */
int th_client_slot(const char *name, pid_t pid, uint32_t *pins);

/* The owner word of client slot `slot` of instance `name` (pid, start time, CLOSED bit: shm/
 * layout.h) in *owner: 0; -ERANGE no such slot; other negative errnos from attaching. Read-only. */
int th_client_owner(const char *name, uint32_t slot, uint64_t *owner);

/* Number of client slots of the instance that are not free (owner word non-zero), counting only
 * those whose owner word names pid when pid > 0; or a negative errno. */
int th_clients_in_use(const char *name, pid_t pid);

/* Ring the instance's doorbell, as every client call that needs the daemon does. */
int th_ring_doorbell(const char *name);

/* The request header's need_wake word (1: the daemon's loop may be blocked, so the next enqueue
 * rings the doorbell), or a negative errno from attaching. Read-only, like th_client_slot. */
int th_need_wake(const char *name);

/* The catalogue header's index_flips (index publications so far), or a negative errno from
 * attaching. Read-only. */
int64_t th_index_flips(const char *name);

/* ---- the daemon ----------------------------------------------------------------------------- */

struct th_daemon {
	pid_t pid;   /* the process, kept after it exits (compare with chunkd_info's daemon_pid) */
	int running; /* 1 until reaped */
	int status;  /* wait status once reaped */
	char name[TH_NAME_LEN];
	char data_dir[PATH_MAX];
	char log[PATH_MAX]; /* stdout and stderr of the daemon */
};

/*
 * th_daemon_start — spawn `chunkd --data-dir DATA_DIR --name NAME EXTRA...` with its output in
 * log_path (truncated). Does not wait for anything: see th_daemon_wait_ready().
 */
int th_daemon_start(struct th_daemon *d, const char *name, const char *data_dir,
		    const char *log_path, const char *const extra[]);

/* 1 if the daemon has not exited; reaps it (setting status) when it has. */
int th_daemon_running(struct th_daemon *d);

/*
 * th_daemon_wait_ready — poll chunkd_open + chunkd_info until the instance reports this daemon's
 * pid in state READY. `info` (may be NULL) receives that chunkd_info. Before returning it also
 * waits until the daemon has freed the client slot its probe used, so that a test starts with
 * every slot it expects. Returns 0, -ECHILD if the daemon exited first, -ETIMEDOUT. On failure
 * the daemon's log is printed.
 */
int th_daemon_wait_ready(struct th_daemon *d, int timeout_ms, chunkd_instance_info *info);

/* Wait until the daemon exits and reap it: returns its wait status, or -ETIMEDOUT. */
int th_daemon_wait_exit(struct th_daemon *d, int timeout_ms);

/* SIGTERM and wait: its wait status, or -ETIMEDOUT (it is then SIGKILLed). */
int th_daemon_stop(struct th_daemon *d, int timeout_ms);

/* SIGKILL and reap: its wait status, or -ETIMEDOUT. */
int th_daemon_kill(struct th_daemon *d, int timeout_ms);

/* Print the daemon's log to stderr (for failure messages). */
void th_daemon_dump_log(const struct th_daemon *d);

/* SIGKILL it if it still runs, and reap it. Safe on a zeroed struct. */
void th_daemon_cleanup(struct th_daemon *d);

/* Wait until process pid is stopped (state 'T' in /proc/PID/stat, e.g. after SIGSTOP): 0,
 * -ETIMEDOUT, or a negative errno from reading /proc (-ENOENT: no such process). */
int th_wait_proc_stopped(pid_t pid, int timeout_ms);

/* ---- client children ------------------------------------------------------------------------ */

/*
 * A child process running a test function, typically a chunkd client. It talks with the parent in
 * lines: th_say() / th_hear() on the child's side, th_child_recv() / th_child_send() on the
 * parent's. A child reports a failed check with a line starting "FAIL" (TH_CHECK) and a non-zero
 * return value, which becomes its exit status; the parent keeps every line for its messages.
 */
struct th_child {
	pid_t pid;
	int rfd, wfd; /* this side's ends of the two pipes */
	int running;
	int status;
	char in[4096]; /* bytes received, not yet returned as lines */
	size_t inlen;
	int eof;
	char transcript[8192]; /* parent: every line received, for failure messages */
	size_t tlen;
};

typedef int (*th_child_fn)(struct th_child *self, void *arg);

/* Fork a child that runs fn(self, arg) and exits with its return value. */
int th_child_start(struct th_child *c, th_child_fn fn, void *arg);

/* Child side: send a line to the parent; read a line from it (-ETIMEDOUT, -EPIPE at EOF). */
__attribute__((format(printf, 2, 3))) void th_say(struct th_child *self, const char *fmt, ...);
int th_hear(struct th_child *self, char *line, size_t len, int timeout_ms);

/* Child side: report a failed check as "FAIL file:line: message"; returns 1. */
__attribute__((format(printf, 4, 5))) int th_fail(struct th_child *self, const char *file, int line,
						  const char *fmt, ...);

/* In a child function: return 1 after reporting, unless cond holds. */
#define TH_CHECK(self, cond, ...)                                                \
	do {                                                                     \
		if (!(cond))                                                     \
			return th_fail((self), __FILE__, __LINE__, __VA_ARGS__); \
	} while (0)

/* Parent side: the next line from the child (its length), -ETIMEDOUT, or -EPIPE at EOF. */
int th_child_recv(struct th_child *c, char *line, size_t len, int timeout_ms);

/*
 * Parent side: read lines until one starts with `prefix` (returned in line). A "FAIL" line or EOF
 * first gives -EPROTO or -EPIPE; see th_child_output() for what the child said.
 */
int th_child_expect(struct th_child *c, const char *prefix, char *line, size_t len, int timeout_ms);

/* Parent side: send a line to the child. */
__attribute__((format(printf, 2, 3))) int th_child_send(struct th_child *c, const char *fmt, ...);

/* Parent side: read until EOF and reap; its wait status, or -ETIMEDOUT (it is then killed). */
int th_child_finish(struct th_child *c, int timeout_ms);

/* SIGKILL and reap (if still running). Safe on a zeroed struct. */
void th_child_kill(struct th_child *c);

/* Every line the parent received from the child so far. */
const char *th_child_output(const struct th_child *c);

/* SIGKILL and reap every child still running (th_env_fini() calls it). */
void th_children_kill_all(void);

/* ---- a test's environment ------------------------------------------------------------------- */

#define TH_ENV_DAEMONS 4

/*
 * Everything one test case needs: a temporary root, a data dir in it, a unique instance name,
 * the generated data's manifest and daemons. th_env_fini() stops and removes all of it.
 */
struct th_env {
	char root[256];     /* short enough that every path below it fits PATH_MAX */
	char data_dir[300]; /* root/data */
	char manifest_json[300];
	char name[TH_NAME_LEN];
	struct th_manifest man;
	struct th_daemon d;                           /* the daemon of th_env_start() */
	struct th_daemon more[TH_ENV_DAEMONS];        /* others the test starts itself */
	char more_names[TH_ENV_DAEMONS][TH_NAME_LEN]; /* other instance names to unlink */
	unsigned nstarts;                             /* numbers the log files */
};

/* Create the root and pick the name; `tag` goes into the name. */
int th_env_init(struct th_env *e, const char *tag);

/* Generate data into e->data_dir (args as for th_gen_chunks) and load e->man. */
int th_env_gen(struct th_env *e, const char *const args[]);

/* Start e->d on e->data_dir and e->name with a fresh log root/daemon-N.log and wait for READY. */
int th_env_start(struct th_env *e, const char *const extra[], int timeout_ms,
		 chunkd_instance_info *info);

/* A path under the root (a static buffer per call site is the caller's business). */
void th_env_path(const struct th_env *e, char *out, size_t len, const char *rel);

/* Kill the children and daemons, unlink every instance's segments, remove the root. */
void th_env_fini(struct th_env *e);

/* ---- cmocka helpers ------------------------------------------------------------------------- */

#ifdef CMOCKA_H_
/* Fail unless child c exits with status 0 within timeout_ms; the message shows its lines. */
#define th_assert_child_ok(c, timeout_ms)                                                     \
	do {                                                                                  \
		int st_ = th_child_finish((c), (timeout_ms));                                 \
		char why_[64];                                                                \
		if (!th_exited_with(st_, 0))                                                  \
			fail_msg("child %d: %s; it said:\n%s", (int)(c)->pid,                 \
				 th_status_str(st_, why_, sizeof(why_)), th_child_output(c)); \
	} while (0)

/* Fail unless expr (an int call of the harness) returns 0. */
#define th_assert_ok(expr)                                                                      \
	do {                                                                                    \
		int r_ = (expr);                                                                \
		if (r_ != 0)                                                                    \
			fail_msg("%s = %d (%s)", #expr, r_, r_ < 0 ? chunkd_strerror(r_) : ""); \
	} while (0)
#endif

#endif /* CHUNKD_TESTS_HARNESS_H */
