/*
 * chunkd.h — the client library of chunkd, the per-host chunk store.
 *
 * A worker process attaches to a running chunkd instance with chunkd_open(), finds the chunk that
 * holds a block with chunkd_find() (lock-free, no syscall) and reads the chunk's files under the
 * returned directory until it calls chunkd_release().
 *
 * Conventions:
 * - Every int-returning call returns 0 or a negative errno; chunkd_strerror() turns it into text.
 * - Every call is thread-safe within a process. A chunkd_client must not be used by a child after
 *   fork(): the child opens its own.
 * - No call takes a lock that the daemon needs; a process may be killed at any instruction.
 */
#ifndef CHUNKD_H
#define CHUNKD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(CHUNKD_BUILDING) && defined(__GNUC__)
#define CHUNKD_API __attribute__((visibility("default")))
#else
#define CHUNKD_API
#endif

#define CHUNKD_VERSION_MAJOR 0
#define CHUNKD_VERSION_MINOR 1
#define CHUNKD_VERSION_PATCH 0
#define CHUNKD_VERSION_NUMBER                                                                      \
	(CHUNKD_VERSION_MAJOR * 10000 + CHUNKD_VERSION_MINOR * 100 + CHUNKD_VERSION_PATCH)

#define CHUNKD_ID_SIZE 32
#define CHUNKD_MAX_FILES 64  /* files per chunk */
#define CHUNKD_MAX_NAME 255  /* bytes in a file name */
#define CHUNKD_MAX_URL 4096  /* bytes in a URL */
#define CHUNKD_PINS_PER_CLIENT 512 /* pins one handle can hold at once */

/* A chunk's metadata file inside its directory; no chunk file may have this name. */
#define CHUNKD_META_NAME ".chunkd-meta"

typedef struct chunkd_client chunkd_client; /* opaque */

typedef struct chunkd_id {
	uint8_t bytes[CHUNKD_ID_SIZE];
} chunkd_id;

typedef struct chunkd_file {
	const char *name; /* file name inside the chunk directory */
	const char *url;  /* http://, https://, s3:// or file:// */
} chunkd_file;

typedef struct chunkd_chunk {
	chunkd_id id, dataset;
	uint64_t first_block, end_block; /* the chunk holds blocks [first_block, end_block) */
	const chunkd_file *files;
	uint32_t nfiles;
} chunkd_chunk;

/* A pinned chunk, filled by chunkd_find(). */
typedef struct chunkd_ref {
	chunkd_id id, dataset;
	uint64_t first_block, end_block;
	const char *path; /* absolute chunk directory, valid until chunkd_release() */
	/* private: */
	uint32_t _pin;
	uint32_t _slot;
	uint64_t _word;
} chunkd_ref;

/* Daemon states as reported by chunkd_info(). */
enum chunkd_state {
	CHUNKD_STATE_STARTING = 1, /* segments exist, start-up scan not finished */
	CHUNKD_STATE_READY = 2,    /* catalogue published, serving */
	CHUNKD_STATE_STOPPING = 3, /* received SIGTERM/SIGINT */
	CHUNKD_STATE_STOPPED = 4,  /* exited cleanly; the last catalogue stays readable */
};

typedef struct chunkd_instance_info {
	int32_t daemon_pid;     /* pid of the daemon that last ran the instance */
	int daemon_alive;       /* 1 if that daemon process is alive now, else 0 */
	uint32_t state;         /* enum chunkd_state, as last written by the daemon */
	uint32_t nchunks;       /* chunks currently published */
	uint32_t max_chunks;    /* catalogue capacity */
	uint32_t max_clients;   /* client slots */
	uint64_t epoch;         /* incremented at every daemon start */
	uint64_t start_time_ns; /* CLOCK_REALTIME of that start */
	uint64_t heartbeat_ns;  /* CLOCK_REALTIME of the daemon's last activity */
	char data_dir[260];     /* the daemon's data directory */
} chunkd_instance_info;

/*
 * chunkd_open — attach to the chunkd instance `name`.
 * @name  instance name; NULL means $CHUNKD_NAME, or "default" when that is unset. 1-64 bytes of
 *        [A-Za-z0-9._-].
 * @out   receives the handle; the caller closes it with chunkd_close().
 * @return 0; -EINVAL bad name or out == NULL; -ENOENT no such instance (no daemon ever created
 *        it); -EPROTO the instance's shared-memory layout differs from this library's (the
 *        message from chunkd_strerror() is generic; chunkd_open logs nothing, use
 *        chunkd_last_error() for the detail naming both versions); -EAGAIN the daemon is still
 *        creating the segments; -EACCES no permission; -EUSERS all client slots are taken;
 *        -ENOMEM.
 * Blocks: briefly (a few syscalls: shm_open, mmap, reading /proc/self/stat). Any thread.
 * Attaching works while no daemon runs, as long as the segments exist.
 */
CHUNKD_API int chunkd_open(const char *name, chunkd_client **out);

/*
 * chunkd_close — release every pin still held through `c`, detach and free `c`.
 * NULL is a no-op. Must not race with other calls on the same handle. Does not block.
 */
CHUNKD_API void chunkd_close(chunkd_client *c);

/*
 * chunkd_find — find the published chunk of `dataset` with first_block <= block < end_block and
 * pin it.
 * @ref   filled on success: id, dataset, range and path. The chunk's directory and files stay
 *        untouched until chunkd_release(c, ref) (or until this process dies).
 * @return 0; -ENOENT no such chunk; -EINVAL a NULL argument; -ENOBUFS the handle's pin table is
 *        full (CHUNKD_PINS_PER_CLIENT pins held at once); -EAGAIN the catalogue stayed
 *        inconsistent for a bounded number of retries (a daemon died mid-write; retry later).
 * Never blocks: no syscall, no allocation, no lock; O(log n). Any thread.
 */
CHUNKD_API int chunkd_find(chunkd_client *c, const chunkd_id *dataset, uint64_t block,
			   chunkd_ref *ref);

/*
 * chunkd_release — drop the pin taken by chunkd_find(). `ref` must come from a successful
 * chunkd_find() on the same handle and be released once; ref->path is invalid afterwards.
 * NULL c or ref is a no-op. Never blocks (it may issue one futex wake). Any thread.
 */
CHUNKD_API void chunkd_release(chunkd_client *c, chunkd_ref *ref);

/*
 * chunkd_list — copy the ids of published chunks, in (dataset, first_block) order.
 * @ids    room for `cap` ids (may be NULL when cap is 0).
 * @count  receives the number of published chunks, which may exceed cap.
 * @return 0; -EINVAL; -EAGAIN (see chunkd_find). A consistent snapshot. Never blocks. Any thread.
 */
CHUNKD_API int chunkd_list(chunkd_client *c, chunkd_id *ids, size_t cap, size_t *count);

/*
 * chunkd_info — describe the instance: daemon pid and liveness, state, counts, data directory.
 * @return 0; -EINVAL. Blocks: one kill(2) and a read of /proc/PID/stat. Any thread.
 */
CHUNKD_API int chunkd_info(chunkd_client *c, chunkd_instance_info *info);

/*
 * chunkd_strerror — text for a value returned by any chunkd call (0 or a negative errno).
 * The string is static; never NULL.
 */
CHUNKD_API const char *chunkd_strerror(int err);

/*
 * chunkd_last_error — detail about the last failed chunkd_open() in the calling thread (for
 * example both layout versions of an -EPROTO), or "" when there is none. Thread-local, static
 * storage, valid until the thread's next chunkd_open().
 */
CHUNKD_API const char *chunkd_last_error(void);

/*
 * chunkd_version — the library's CHUNKD_VERSION_NUMBER, to compare with the header's.
 * chunkd_check_version — 0 if the library is ABI-compatible with a program built against
 * major.minor (same major, library minor >= minor), else -EPROTO.
 */
CHUNKD_API int chunkd_version(void);
CHUNKD_API int chunkd_check_version(int major, int minor);

#ifdef __cplusplus
}
#endif
#endif /* CHUNKD_H */
