/*
 * store.h — the data directory on disk (docs/on-disk.md): creating its layout, purging staging and
 * trash leftovers, and the start-up scan that publishes every well-formed chunk directory.
 */
#ifndef CHUNKD_DAEMON_STORE_H
#define CHUNKD_DAEMON_STORE_H

#include <stdint.h>

#include "catalog.h"
#include "instance.h"

struct scan_stats {
	uint32_t published; /* chunks published */
	uint32_t datasets;  /* datasets among them */
	uint32_t skipped;   /* malformed chunk dirs (reported, left in place) */
	uint32_t overlaps;  /* well-formed dirs skipped because their range overlaps another */
	uint32_t no_room;   /* well-formed dirs not published: catalogue full */
	uint32_t purged;    /* staging/trash entries removed */
	uint32_t dropped;   /* adopted slots whose chunk was not on disk */
	uint64_t bytes;     /* bytes in published chunks */
};

/* Create chunks/, staging/ and trash/ if missing, and empty trash/ (deleted, unpinned chunks). */
int chunkd__store_prepare(struct instance *in, struct scan_stats *st);

/* Scan chunks/ with `threads` threads and publish every well-formed chunk into `cat`.
 * Malformed directories are logged and skipped, never deleted. Returns 0 or a negative errno
 * when chunks/ itself cannot be read. */
int chunkd__store_scan(struct instance *in, struct catalog *cat, unsigned threads,
		       struct scan_stats *st);

/* Remove `name` (a file or a directory tree, never following symlinks) below dirfd. */
int chunkd__rm_tree_at(int dirfd, const char *name);

#endif
