/*
 * catalog.h — the daemon's side of the catalogue: slot allocation and state changes, the private
 * id hash, and batched publication of the shared index.
 *
 * Every change to a slot's state is stored at once (seq_cst) in the slot's gen_state, which is
 * what the client's pin recheck reads; the shared index is rebuilt only by catalog_flush(), once
 * per event-loop iteration, so a burst of changes costs one index publication.
 *
 * Single-threaded: one thread mutates at a time; each mutating call takes the segment's rwlock
 * for writing (the lock serialises daemon-side writers and trusted snapshot readers only).
 */
#ifndef CHUNKD_DAEMON_CATALOG_H
#define CHUNKD_DAEMON_CATALOG_H

#include <stdint.h>

#include "shm/shm.h"

struct catalog_slot {
	uint32_t gen;  /* current incarnation (mirrors gen_state) */
	uint32_t state; /* enum chunkd_slot_state (mirrors gen_state, see unpublishing) */
	uint32_t unpublishing; /* left PUBLISHED; states[] still says so until the next flush */
};

struct catalog {
	struct chunkd_cat_map *cat;
	const struct chunkd_req_map *req;
	uint32_t cap;
	struct catalog_slot *sp;
	uint32_t *free_stack;
	uint32_t nfree;
	uint32_t *hash; /* id -> slot, linear probing; UINT32_MAX = empty */
	uint32_t hmask;
	struct chunkd_idx_entry *pub, *pub_tmp, *add;
	uint32_t npub, nadd;
	struct chunkd_idx_id *ids, *ids_tmp, *ids_add;
	uint32_t nids, nids_add;
	uint32_t *unpub; /* slots with unpublishing set, stored into states[] after the flip */
	uint32_t nunpub;
	int dirty;
};

int chunkd__catalog_init(struct catalog *c, struct chunkd_cat_map *cat,
			 const struct chunkd_req_map *req);
void chunkd__catalog_free_all(struct catalog *c);

/* The slot holding id, or -ENOENT. */
int chunkd__catalog_lookup(const struct catalog *c, const uint64_t id[4]);

/* Take a free slot for a new chunk (desc: id, dataset, range, nfiles, sizes, path) in `state`.
 * Returns the slot, -EEXIST if the id is in the catalogue, -ENOSPC if it is full. */
int chunkd__catalog_alloc(struct catalog *c, const struct chunkd_slot_copy *desc, uint32_t state);

/* Move a slot to a new state. PUBLISHED makes it findable at the next flush. Leaving PUBLISHED
 * takes effect in shared memory at the next flush too, in this order: the new index without the
 * chunk is published (index_flips incremented), then states[] changes. chunkd_find's pin fast
 * path relies on it: no chunk of the active index leaves PUBLISHED before index_flips moves on
 * (docs/shm-layout.md, "The pin protocol"). */
void chunkd__catalog_set_state(struct catalog *c, uint32_t slot, uint32_t state);

/* Pins currently held on the slot's incarnation (daemon-side scan of the request segment).
 * Flushes first if the slot's leaving PUBLISHED is not in shared memory yet: a scan counts only
 * after the states[] store that makes new pins back out. */
uint32_t chunkd__catalog_pins(struct catalog *c, uint32_t slot);

/* Flush now if some slot's leaving PUBLISHED is not in shared memory yet: a pin scan counts
 * only after the states[] stores that make new pins of those slots back out. */
void chunkd__catalog_settle(struct catalog *c);

/* Return a slot to the free list. The caller has condemned it and seen no pins. */
void chunkd__catalog_release_slot(struct catalog *c, uint32_t slot);

/* Publish a new index copy if anything changed since the last one. */
void chunkd__catalog_flush(struct catalog *c);

#endif
