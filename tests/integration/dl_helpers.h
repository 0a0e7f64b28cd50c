/*
 * dl_helpers.h — what the request-path tests (test_download, test_semantics, test_pin_delete)
 * share on top of tests/harness.h: the origins of tests/servers/ (nginx, fault_server.py) on
 * 127.0.0.1 serving a web root made by gen-chunks.py --flat, chunk descriptors built from the
 * generator's manifest, and independent checks of what the daemon published (byte comparison
 * with the origin, our own reading of .chunkd-meta, leftovers in staging/ and trash/).
 *
 * Conventions are the harness's: int functions return 0 or a negative errno and print what went
 * wrong; checks that can fail for a test reason fill a `why` buffer instead, so that the caller
 * can put it into its assertion message (in a cmocka test or in a client child).
 */
#ifndef CHUNKD_TESTS_DL_HELPERS_H
#define CHUNKD_TESTS_DL_HELPERS_H

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "chunkd.h"
#include "harness.h"

#define DL_WHY_LEN 512 /* room for a failed check's explanation */

/* ---- origins ------------------------------------------------------------------------------ */

/*
 * The test servers of tests/servers/ on 127.0.0.1:
 * - nginx (nginx.sh start ROOT STATE, which prints "PORT n"; nginx.sh stop STATE): the real
 *   server, for full-speed downloads and 404s of missing files. Its access log is
 *   STATE/access.log.
 * - fault_server.py --root ROOT --port 0 --log LOG (prints "PORT n"): faults chosen by a path
 *   prefix /fault/SPEC/... (see its docstring); the request path tests use "slow-RATE" for a
 *   download that stays in flight. It is our child, and gets SIGKILL if the test process dies
 *   (PR_SET_PDEATHSIG).
 */
struct dl_server {
	pid_t pid; /* fault_server.py; 0 for nginx (nginx.sh owns it) or when not running */
	int port;  /* 0 when not running */
	char state[PATH_MAX]; /* nginx: nginx.sh's state directory */
	char out[PATH_MAX];   /* the server's (or nginx.sh's) stdout and stderr */
	char log[PATH_MAX];   /* its request log */
};

/* Start nginx serving root (state: a directory for nginx.sh). 0; -ENOENT when nginx is not
 * installed (nginx.sh exits 77: the caller skips); another negative errno on failure. */
int dl_nginx_start(struct dl_server *s, const char *root, const char *state);

/* Start fault_server.py serving root, its files (output, request log) in dir. */
int dl_fault_start(struct dl_server *s, const char *root, const char *dir, int timeout_ms);

/* Stop either server and wait until it is gone. Safe on a zeroed or stopped struct. */
void dl_server_stop(struct dl_server *s);

/* "http://127.0.0.1:PORT" followed by path (e.g. "" or "/fault/slow-4096") into out. */
void dl_http_prefix(char *out, size_t len, const struct dl_server *s, const char *path);

/* Requests in the server's log whose path contains `needle`, or a negative errno. */
int dl_server_requests(const struct dl_server *s, const char *needle);

/* ---- chunk descriptors ---------------------------------------------------------------------- */

/*
 * A chunkd_chunk built from a manifest chunk, with the strings it points to. File k's URL is
 * "<prefix>/<chunk dir>/<file name>" (the manifest's dir of a --flat generation is
 * "<dataset>/<id>"): prefix from dl_http_prefix() for a server, or "file://" followed by the
 * absolute web root for file:// URLs.
 */
struct dl_desc {
	chunkd_chunk c;
	chunkd_file files[CHUNKD_MAX_FILES];
	char *names[CHUNKD_MAX_FILES];
	char *urls[CHUNKD_MAX_FILES];
};

int dl_desc_init(struct dl_desc *d, const struct th_chunk *ch, const char *prefix);
void dl_desc_fini(struct dl_desc *d); /* safe on a zeroed struct, and twice */

/* Replace file k's URL. */
int dl_desc_set_url(struct dl_desc *d, uint32_t k, const char *url);

/* Sum of the manifest's file sizes. */
uint64_t dl_chunk_bytes(const struct th_chunk *ch);

/* ---- checks of published chunks ------------------------------------------------------------- */

/* 0 if files a and b have the same bytes; else -1 with the first difference in why. */
int dl_files_equal(const char *a, const char *b, char *why, size_t whylen);

/*
 * dl_check_chunk_dir — the chunk directory `dir` holds exactly the manifest chunk's files and
 * .chunkd-meta, each file byte-identical to origin/<ch->dir>/<name>. 0, or -1 with why.
 */
int dl_check_chunk_dir(const char *dir, const char *origin, const struct th_chunk *ch, char *why,
		       size_t whylen);

/*
 * dl_check_meta — read dir/.chunkd-meta with this file's own parser (not the daemon's) and check
 * it against the manifest chunk and the origin files: format version 1, id, dataset, range, the
 * file count, and per file (in the descriptor's order) its size, its CRC-32C (computed by
 * th_crc32c over the origin file) and its name. 0, or -1 with why.
 */
int dl_check_meta(const char *dir, const char *origin, const struct th_chunk *ch, char *why,
		  size_t whylen);

/* The path the daemon publishes a chunk at: DATA_DIR/chunks/<dataset-hex>/<first>-<end>-<id>. */
void dl_chunk_path(char *out, size_t len, const char *data_dir, const struct th_chunk *ch);

/*
 * dl_check_published — everything a client can see of a published chunk, against the manifest
 * and the origin: chunkd_find of its first and last block pins this chunk (id, dataset, range)
 * at dl_chunk_path(), the directory passes dl_check_chunk_dir() and dl_check_meta(), and
 * chunkd_status says PRESENT with nfiles, range, dataset, bytes_done == bytes_total == the sum
 * of the file sizes, no error, and `pins` pins (the caller's expectation; -1 skips the check).
 * The pins taken here are released. 0, or -1 with why.
 */
int dl_check_published(chunkd_client *c, const char *data_dir, const char *origin,
		       const struct th_chunk *ch, int pins, char *why, size_t whylen);

/* ---- waiting -------------------------------------------------------------------------------- */

/* Wait until path does not exist (lstat): 0, or -ETIMEDOUT. */
int dl_wait_gone(const char *path, int timeout_ms);

/* Wait until dir has no entries: 0, or -ETIMEDOUT (the entries are printed). */
int dl_wait_empty_dir(const char *dir, int timeout_ms);

/* Wait until chunkd_status(id) reports `state`: 0 with *st filled, -ETIMEDOUT (st has the last
 * answer), or chunkd_status's error. */
int dl_wait_state(chunkd_client *c, const chunkd_id *id, uint32_t state, int timeout_ms,
		  chunkd_chunk_status *st);


/* Name of a chunk state, for messages. */
const char *dl_state_name(uint32_t state);

#endif /* CHUNKD_TESTS_DL_HELPERS_H */
