/* pinblocks.h — which pin entries each thread of a process may take with plain stores.
 *
 * docs/shm-layout.md, "Pin blocks": a client's 512 pin entries are 64 blocks of 8. A thread takes
 * pins with plain stores only in a block it owns; beyond that, with seq_cst CAS in SHARED blocks.
 * The ownership lives in process memory: the daemon never reads it. */
#ifndef CHUNKD_CLIENT_PINBLOCKS_H
#define CHUNKD_CLIENT_PINBLOCKS_H

#include <stdint.h>

#include "shm/shm.h"

struct chunkd_pin_blocks {
	uint64_t owner[CHUNKD_PIN_BLOCKS]; /* atomic: 0 = FREE, CHUNKD_PB_SHARED, or a thread word */
	uint64_t shared;                   /* atomic: bit b = block b is SHARED (only ever set) */
	uint64_t serial;                   /* unique per initialisation within the process */
};

/* The owner word of a SHARED block: never a thread word (those have bit 63 clear). */
#define CHUNKD_PB_SHARED UINT64_MAX

/* Start with every block FREE and a serial no other set of blocks in this process had. */
void chunkd__pb_init(struct chunkd_pin_blocks *pb);

/* The calling thread's block in the set of blocks it used last (serial), per thread. */
struct chunkd_pb_cache {
	uint64_t serial;
	uint32_t block; /* or CHUNKD_PIN_NO_BLOCK */
	uint32_t retry; /* counts takes without a block: claim again now and then */
};
extern __thread struct chunkd_pb_cache chunkd__pb_cache __attribute__((tls_model("initial-exec")));

/* chunkd__pb_taker's other cases: claim a block (first take through pb, or again now and then
 * while the thread has none). */
void chunkd__pb_taker_slow(struct chunkd_pin_blocks *pb, struct chunkd_pin_taker *t);

/* Fill t->block (the calling thread's block, claimed on first use, or CHUNKD_PIN_NO_BLOCK) and
 * t->cas_mask (the SHARED blocks) for a take through chunkd__pin_take. Lock-free; the common
 * case, inline, is two thread-local loads and two loads of pb. */
static inline void chunkd__pb_taker(struct chunkd_pin_blocks *pb, struct chunkd_pin_taker *t)
{
	const struct chunkd_pb_cache *c = &chunkd__pb_cache;
	if (__builtin_expect(c->serial == pb->serial && c->block != CHUNKD_PIN_NO_BLOCK, 1)) {
		t->block = c->block;
		/* Acquire: pairs with the release OR in chunkd__pb_grow (see pinblocks.c). */
		t->cas_mask = __atomic_load_n(&pb->shared, __ATOMIC_ACQUIRE);
		return;
	}
	chunkd__pb_taker_slow(pb, t);
}

/* After the calling thread found no free entry: turn one more block SHARED (a FREE one, or one
 * whose owner thread has exited). Returns 0 if the SHARED set grew, -ENOBUFS if every block is
 * SHARED or owned by a live thread. */
int chunkd__pb_grow(struct chunkd_pin_blocks *pb);

#endif
