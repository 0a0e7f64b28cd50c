/*
 * shm.h — internal interface to a chunkd instance's shared memory, used by the daemon, the client
 * library and the tools. The layout is in layout.h and docs/shm-layout.md.
 */
#ifndef CHUNKD_SHM_SHM_H
#define CHUNKD_SHM_SHM_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "layout.h"

/* ---- names ---------------------------------------------------------------------------------- */

/* Resolve an instance name (NULL: $CHUNKD_NAME, else "default") and validate it: 1..64 bytes of
 * [A-Za-z0-9._-]. Returns 0 or -EINVAL. */
int chunkd__name_resolve(const char *name, char out[CHUNKD_NAME_MAX + 1]);

/* "/chunkd.NAME.SUFFIX" for shm_open. */
void chunkd__shm_object(char *buf, size_t len, const char *name, const char *suffix);

/* ---- geometry ------------------------------------------------------------------------------- */

struct chunkd_cat_geom {
	uint32_t max_chunks;
	uint64_t slots_off;
	uint64_t index_off[2];
	uint64_t index_bytes;
	uint32_t hash_cap; /* dataset hash entries reserved per copy: a power of two >= 2 x max_chunks */
	uint64_t ds_off, firsts_off, ranges_off, ids_off; /* inside an index copy */
	uint64_t states_off; /* u64 gen_state per slot, dense (the pin recheck's one load) */
	uint64_t size;
};

struct chunkd_req_geom {
	uint32_t max_clients;
	uint64_t client_stride;
	uint64_t clients_off;
	uint64_t size;
};

void chunkd__cat_geometry(uint32_t max_chunks, struct chunkd_cat_geom *g);
void chunkd__req_geometry(uint32_t max_clients, struct chunkd_req_geom *g);

/* ---- mappings ------------------------------------------------------------------------------- */

struct chunkd_cat_map {
	struct chunkd_cat_hdr *hdr;
	struct chunkd_slot *slots;
	uint64_t *states; /* gen_state of slot i: gen << 32 | state; atomic, seq_cst */
	uint64_t idx_seed; /* daemon only: the dataset hash seed chunkd__idx_publish writes */
	struct chunkd_idx_view idx[2];
	struct chunkd_cat_geom geom; /* from the header, validated against the object's size */
	size_t size;
	int writable;
};

struct chunkd_req_map {
	struct chunkd_req_hdr *hdr;
	uint8_t *clients;
	struct chunkd_req_geom geom; /* validated; the daemon's copy is private, never re-read */
	size_t size;
};

static inline struct chunkd_req_client *chunkd__req_client(const struct chunkd_req_map *m,
							  uint32_t i)
{
	return (struct chunkd_req_client *)(m->clients + (uint64_t)i * m->geom.client_stride);
}

/* Point the view fields of a mapping of geometry g at base. */
void chunkd__cat_bind(struct chunkd_cat_map *m, void *base, const struct chunkd_cat_geom *g);
void chunkd__req_bind(struct chunkd_req_map *m, void *base, const struct chunkd_req_geom *g);

/* Attach to existing segments. The catalogue is mapped read-only unless `writable`.
 * Returns 0, -ENOENT, -EACCES, -EAGAIN (not initialised yet), -EPROTO (magic/format/size
 * mismatch; `err` says both versions), -ENOMEM. `err` (may be NULL) receives a message. */
int chunkd__cat_attach(const char *name, int writable, struct chunkd_cat_map *m, char *err,
		       size_t errlen);
int chunkd__req_attach(const char *name, int writable, struct chunkd_req_map *m, char *err,
		       size_t errlen);
void chunkd__cat_detach(struct chunkd_cat_map *m);
void chunkd__req_detach(struct chunkd_req_map *m);

/* Ring the daemon's doorbell: increment the futex word and wake a waiter. Unconditional: for
 * the rare events the daemon must always notice (attach, close, a released pin of a condemned
 * chunk, its own shutdown). */
void chunkd__doorbell_ring(struct chunkd_req_hdr *hdr);

/* After publishing ring records (chunkd__sq_commit): ring the doorbell only if the daemon's loop
 * may be blocked (need_wake reads 1) and this caller is the one that exchanged it to 0. Returns
 * 1 if it rang, else 0. docs/shm-layout.md, "Waking the daemon", has the argument. */
int chunkd__doorbell_ring_if_idle(struct chunkd_req_hdr *hdr);

/* ---- process identity (proc.c) ------------------------------------------------------------- */

/* The owner word of process pid: start_ticks << 22 | pid, or 0 if the process does not exist
 * or has exited (a zombie counts as exited).
 * pid 0 means the calling process. */
uint64_t chunkd__owner_of(pid_t pid);
#define CHUNKD_OWNER_PID(w) ((pid_t)((w) & ((1u << 22) - 1)))

/* 1 if the process named by an owner word is alive (same pid, same start time), else 0. */
int chunkd__owner_alive(uint64_t owner);

/* ---- index (index.c) ------------------------------------------------------------------------ */

int chunkd__id_cmp(const uint64_t a[4], const uint64_t b[4]);

/* Find the published chunk of `dataset` holding `block` in the active index copy.
 * Returns 0 with *out filled, -ENOENT, or -EAGAIN after CHUNKD_SEQ_SPINS inconsistent reads. */
int chunkd__idx_find(const struct chunkd_cat_map *m, const uint64_t dataset[4], uint64_t block,
		     struct chunkd_idx_range *out);

/* Find a chunk id among the non-free slots. 0, -ENOENT, -EAGAIN. */
int chunkd__idx_find_id(const struct chunkd_cat_map *m, const uint64_t id[4],
			struct chunkd_idx_id *out);

/* Copy up to cap published ids (32 bytes each, any alignment, in range order) and the total
 * count. 0 or -EAGAIN. */
int chunkd__idx_list(const struct chunkd_cat_map *m, void *ids, size_t cap, size_t *count);

/* Daemon side: an entry of the published set in the form the index is built from. */
struct chunkd_idx_entry {
	uint64_t dataset[4];
	uint64_t id[4];
	uint64_t first, end;
	uint32_t slot, gen;
};

/* Sort order of the range index: (dataset, first). */
int chunkd__idx_entry_cmp(const void *a, const void *b);

/* Write a new index copy into the inactive half and make it active. `pub` holds the published
 * chunks sorted by chunkd__idx_entry_cmp, `ids` every non-free slot sorted by id. The caller is
 * the only writer (it holds the catalogue lock). */
void chunkd__idx_publish(struct chunkd_cat_map *m, const struct chunkd_idx_entry *pub, uint32_t npub,
			 const struct chunkd_idx_id *ids, uint32_t nids);

/* ---- slots ---------------------------------------------------------------------------------- */

/* A consistent copy of slot `slot`'s seqlocked fields (path included), and its gen_state as
 * loaded at the same time (not covered by the seqlock: a state change is a single atomic
 * store). 0 or -EAGAIN. */
struct chunkd_slot_copy {
	uint64_t gen_state;
	uint32_t nfiles;
	uint64_t id[4], dataset[4];
	uint64_t first_block, end_block;
	uint64_t bytes_total, bytes_done;
	uint32_t attempts;
	int32_t last_error;
	uint64_t published_ns;
	char path[CHUNKD_SLOT_PATH_MAX];
	int32_t http_status;
	uint32_t _pad;
	char message[CHUNKD_SLOT_MSG_MAX] __attribute__((aligned(8)));
};
int chunkd__slot_read(const struct chunkd_cat_map *m, uint32_t slot, struct chunkd_slot_copy *out);

/* Daemon: write every seqlocked field of a slot from a copy (gen_state is not touched). */
void chunkd__slot_write(struct chunkd_slot *s, const struct chunkd_slot_copy *in);

/* ---- pins (pins.c) -------------------------------------------------------------------------- */

/* Client: take a free entry in `cl`'s pin table for `word`, starting the search at *hint.
 * Returns the entry index, or -ENOBUFS when the table is full. seq_cst. */
int chunkd__pin_take(struct chunkd_req_client *cl, uint32_t *hint, uint64_t word);

/* Client: clear entry i (seq_cst), so that a following seq_cst load of the slot is ordered. */
void chunkd__pin_clear(struct chunkd_req_client *cl, uint32_t i);

/* Client: find the published chunk of `dataset` holding `block` and pin it: look-up, pin, and
 * the recheck of docs/shm-layout.md, "The pin protocol". Returns the pin entry (the chunk's
 * index entry in *out), -ENOENT, -ENOBUFS (pin table full) or -EAGAIN. *flips is the
 * index_flips value the pin was validated under, or CHUNKD_FLIPS_NONE if it was validated by
 * the slot's gen_state; pass it to chunkd__pin_release. Rings `bell` when it backs out of a pin
 * the daemon may have seen. */
int chunkd__pin_find(const struct chunkd_cat_map *cat, struct chunkd_req_client *me,
		     struct chunkd_req_hdr *bell, uint32_t *hint, const uint64_t dataset[4],
		     uint64_t block, struct chunkd_idx_range *out, uint64_t *flips);
#define CHUNKD_FLIPS_NONE UINT64_MAX

/* Client: the recheck of a pin taken for (slot, gen) after an index publication: 1 if the slot
 * still holds that incarnation PUBLISHED (the pin stands), else 0 after clearing entry pi (and
 * ringing `bell` if the daemon may be waiting for it). slot < max_chunks. */
int chunkd__pin_recheck(const struct chunkd_cat_map *cat, struct chunkd_req_client *me,
			struct chunkd_req_hdr *bell, uint32_t pi, uint32_t slot, uint32_t gen);

/* Client: release pin entry i of `me` if it still holds `word` (one seq_cst CAS), and ring `bell`
 * if the daemon may be waiting for it. `flips` is what chunkd__pin_find returned with it.
 * Returns 0, or -ENOENT if the entry did not hold `word`. */
int chunkd__pin_release(const struct chunkd_cat_map *cat, struct chunkd_req_client *me,
			struct chunkd_req_hdr *bell, uint32_t i, uint64_t word, uint64_t flips);

/* Daemon: count pins of incarnation (slot, gen) held by clients whose owner word is non-zero.
 * Bounded by the daemon's private geometry. Entries are untrusted and merely compared. */
uint32_t chunkd__pins_count(const struct chunkd_req_map *m, uint32_t slot, uint32_t gen);

/* Count the non-empty pins in a client's table (tools). */
uint32_t chunkd__pins_held(const struct chunkd_req_client *cl);

#endif
