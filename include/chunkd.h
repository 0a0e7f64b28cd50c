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
#define CHUNKD_VERSION_MINOR 2
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
	uint64_t _flips;
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

/* The state of one chunk as reported by chunkd_status(). */
enum chunkd_chunk_state {
	CHUNKD_CHUNK_ABSENT = 0,      /* not known to the daemon */
	CHUNKD_CHUNK_QUEUED = 1,      /* download accepted, not started (or waiting to retry) */
	CHUNKD_CHUNK_DOWNLOADING = 2, /* transfers in flight */
	CHUNKD_CHUNK_PRESENT = 3,     /* published: findable and listable */
	CHUNKD_CHUNK_DELETING = 4,    /* deleted: no longer findable; files wait for pins/removal */
	CHUNKD_CHUNK_FAILED = 5,      /* the download failed for good; see last_error */
};

typedef struct chunkd_chunk_status {
	uint32_t state;       /* enum chunkd_chunk_state */
	uint32_t attempts;    /* download attempts so far (retries included) */
	int32_t last_error;   /* negative errno of the last failure, 0 if none */
	int32_t http_status;  /* last HTTP status of a failure, 0 if none */
	uint32_t pins;        /* pins held on the chunk by all clients */
	uint32_t nfiles;
	uint64_t bytes_done;  /* bytes downloaded (all files) */
	uint64_t bytes_total; /* bytes in all files, 0 while unknown */
	uint64_t first_block, end_block;
	chunkd_id dataset;
	char message[120];    /* human-readable description of last_error, "" if none */
} chunkd_chunk_status;

/*
 * chunkd_download — ask the daemon to download `chunk` and publish it.
 * Validates the descriptor, copies it into this client's request ring and returns: it never
 * blocks and never waits for the network. `chunk` and its strings may be freed on return.
 * @ticket  if not NULL, receives a ticket for chunkd_wait(): an opaque number, increasing from
 *          one request of the handle to the next, never reused by a later handle of the process.
 * @return 0; -EINVAL a bad descriptor: nfiles 0 or above CHUNKD_MAX_FILES, a file name empty,
 *         longer than CHUNKD_MAX_NAME, containing '/' or '\n', "." or "..", or CHUNKD_META_NAME,
 *         duplicate names, a URL that is not 1..CHUNKD_MAX_URL bytes of printable ASCII without
 *         spaces (0x21-0x7e) starting with a lowercase http://, https://, s3:// or file:// and at
 *         least one more byte; first_block >= end_block;
 *         -EAGAIN the ring is full or CHUNKD_TICKETS requests are outstanding (retry after a
 *         chunkd_wait()).
 * Per chunk id the last accepted request wins: a later delete cancels this download.
 * Any thread (enqueues from threads of one process are serialised by a process-local mutex).
 */
CHUNKD_API int chunkd_download(chunkd_client *c, const chunkd_chunk *chunk, uint64_t *ticket);

/*
 * chunkd_delete — ask the daemon to delete chunk `id`: it becomes unfindable at once, its
 * directory is removed once no pin holds it. Deleting an unknown chunk succeeds.
 * @return 0; -EINVAL; -EAGAIN as for chunkd_download(). Never blocks. Any thread.
 */
CHUNKD_API int chunkd_delete(chunkd_client *c, const chunkd_id *id, uint64_t *ticket);

/*
 * chunkd_wait — wait until the request behind `ticket` reached its goal.
 * @timeout_ms  0 polls, -1 waits without limit.
 * @return 0 done: a download is published (findable), a delete is no longer findable or listable;
 *         -ETIMEDOUT not yet; -ECANCELED a later request for the same chunk superseded it;
 *         -EEXIST the id is known with another descriptor, or the range overlaps another chunk
 *         of the dataset; -EREMOTEIO (HTTP error), -ETIMEDOUT... as the download's failure after
 *         its attempts ran out (see chunkd_status() for the message); -ENOSPC catalogue full;
 *         -ESTALE the ticket's result was overwritten (more than CHUNKD_TICKETS later requests);
 *         -EINVAL a ticket this handle never issued.
 * Blocks up to timeout_ms (futex wait; wakes when the daemon posts results). Any thread.
 * While no daemon runs it keeps waiting: a restarted daemon continues the request.
 */
CHUNKD_API int chunkd_wait(chunkd_client *c, uint64_t ticket, int timeout_ms);

/*
 * chunkd_status — the daemon's view of chunk `id`: state, progress, attempts, last error, pins.
 * @return 0 (state CHUNKD_CHUNK_ABSENT for an unknown id); -EINVAL; -EAGAIN (see chunkd_find).
 * Never blocks (reads shared memory only). Any thread.
 */
CHUNKD_API int chunkd_status(chunkd_client *c, const chunkd_id *id, chunkd_chunk_status *st);

/* Requests outstanding per client handle (chunkd_download/chunkd_delete tickets not yet done). */
#define CHUNKD_TICKETS_PER_CLIENT 1024

/*
 * chunkd_strerror — text for a value returned by any chunkd call (0 or a negative errno).
 * The string is static; never NULL.
 */
CHUNKD_API const char *chunkd_strerror(int err);

/*
 * chunkd_last_error — detail about the last failed chunkd_open() in the calling thread (for
 * example both layout versions of an -EPROTO), or about the last descriptor chunkd_download()
 * refused with -EINVAL (which file, what is wrong), or "" when there is none. Thread-local,
 * static storage, valid until the thread's next chunkd_open() or refused chunkd_download().
 */
CHUNKD_API const char *chunkd_last_error(void);

/*
 * chunkd_version — the library's CHUNKD_VERSION_NUMBER, to compare with the header's.
 * chunkd_check_version — 0 if the library is ABI-compatible with a program built against
 * major.minor, else -EPROTO: the same major and, from 1.0 on, a library minor >= minor. Before
 * 1.0 every minor may change the ABI (0.2 added a field to chunkd_ref), so the minors must be
 * equal.
 */
CHUNKD_API int chunkd_version(void);
CHUNKD_API int chunkd_check_version(int major, int minor);

#ifdef __cplusplus
}
#endif
#endif /* CHUNKD_H */
