/*
 * index_find.h — one read section of the range look-up, inlined into chunkd_find (the client's
 * hot path) and into chunkd__idx_find (index.c, everything else). docs/shm-layout.md, "Index
 * copies", has the protocol and the memory-ordering argument.
 *
 * Readers may observe a copy while it is being rewritten; everything they load is then garbage
 * that the seqlock check will reject, so every count and position read from shared memory is
 * clamped before use: a torn read may cost a retry, never an out-of-bounds access.
 */
#ifndef CHUNKD_SHM_INDEX_FIND_H
#define CHUNKD_SHM_INDEX_FIND_H

#include <errno.h>
#include <stdint.h>

#include "atomics.h"
#include "seqlock.h"
#include "shm.h"

/* What a read section saw that makes it try again (positive, unlike the errno results). */
#define CHUNKD_FIND_ODD     1 /* a writer is inside the copy: pause, then retry */
#define CHUNKD_FIND_CHANGED 2 /* the copy changed under the read: retry at once */

/*
 * One read section of the look-up of `block` in `dataset`: 0 with *out filled, -ENOENT,
 * -EAGAIN (a slot beyond the capacity: a sane daemon never writes one), or CHUNKD_FIND_ODD /
 * CHUNKD_FIND_CHANGED; the caller bounds the retries.
 */
static inline __attribute__((always_inline)) int
chunkd__idx_find_once(const struct chunkd_cat_map *m, const uint64_t dataset[4], uint64_t block,
		      struct chunkd_idx_range *out)
{
	/* The copy's header pointer is loaded once (the acquire load of seq would otherwise make
	 * the compiler load it again for the fields). Pairs with the release store of
	 * index_active in chunkd__idx_publish. */
	uint32_t a = chunkd__load_acquire(&m->hdr->index_active) & 1u;
	const struct chunkd_idx_view *v = &m->idx[a];
	const struct chunkd_idx_hdr *ih = v->hdr;
	uint32_t q = chunkd__seq_read_begin(&ih->seq);
	if (__builtin_expect(q & 1u, 0))
		return CHUNKD_FIND_ODD;
	int r = -ENOENT;
	const uint32_t cap = m->geom.max_chunks;
	uint32_t nranges = chunkd__load_relaxed(&ih->nranges);
	uint32_t hmask = chunkd__load_relaxed(&ih->hmask);
	uint64_t seed = chunkd__load_relaxed(&ih->hseed);
	/* hmask + 1 a power of two no larger than hash_cap (itself a power of two), in one test:
	 * hmask has no bit of ~(hash_cap - 1) (so hmask < hash_cap) nor of hmask + 1. */
	if (__builtin_expect(
		nranges > cap || (hmask & (~(m->geom.hash_cap - 1) | (hmask + 1))) != 0, 0))
		goto check;
	uint32_t h = chunkd__idx_hash(dataset, seed);
	/* Dataset: probe the hash table; an empty entry (count 0) ends the probe. At most
	 * hmask + 1 probes, so a torn or hostile table costs time, never a hang. The four id words
	 * are compared without branches (xor, or): one test per entry. */
	const struct chunkd_idx_ds *ds = v->ds, *d;
	uint32_t count;
	for (uint32_t k = 0;; k++) {
		d = &ds[(h + k) & hmask];
		count = chunkd__load_relaxed(&d->count);
		if (count == 0)
			goto check;
		uint64_t x = (chunkd__load_relaxed(&d->id[0]) ^ dataset[0]) |
			     (chunkd__load_relaxed(&d->id[1]) ^ dataset[1]) |
			     (chunkd__load_relaxed(&d->id[2]) ^ dataset[2]) |
			     (chunkd__load_relaxed(&d->id[3]) ^ dataset[3]);
		if (__builtin_expect(x == 0, 1))
			break;
		if (k == hmask)
			goto check;
	}
	/* count is the probe's load (not 0); start + count <= nranges, added in 64 bits so that
	 * it cannot wrap, keeps every position below in [start, nranges), and nranges <= cap. */
	uint32_t start = chunkd__load_relaxed(&d->start);
	if (__builtin_expect((uint64_t)start + count > nranges, 0))
		goto check;
	/* Range: the last entry with first <= block (upper bound, minus one), searched in the
	 * dense firsts[] (eight per cache line); the range entry is read once. The search
	 * branches on purpose: a branchless one (conditional moves) chains every step's load to
	 * the previous one, where a predicted branch starts the next step's load at once, and
	 * under memory pressure bench-lookup measured the branchless one slower. */
	uint32_t lo = start, hi = start + count;
	const uint64_t *firsts = v->firsts;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (chunkd__load_relaxed(&firsts[mid]) <= block)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == start)
		goto check;
	const struct chunkd_idx_range *e = &v->ranges[lo - 1];
	uint64_t first = chunkd__load_relaxed(&e->first);
	uint64_t end = chunkd__load_relaxed(&e->end);
	uint32_t slot = chunkd__load_relaxed(&e->slot);
	out->first = first;
	out->end = end;
	out->slot = slot;
	out->gen = chunkd__load_relaxed(&e->gen);
	out->id[0] = chunkd__load_relaxed(&e->id[0]);
	out->id[1] = chunkd__load_relaxed(&e->id[1]);
	out->id[2] = chunkd__load_relaxed(&e->id[2]);
	out->id[3] = chunkd__load_relaxed(&e->id[3]);
	/* A slot beyond the capacity cannot happen with a sane daemon; never trust it blindly. */
	if (__builtin_expect(first <= block && block < end, 1))
		r = slot < cap ? 0 : -EAGAIN;
check:
	if (__builtin_expect(chunkd__seq_read_retry(&ih->seq, q), 0))
		return CHUNKD_FIND_CHANGED;
	return r;
}

#endif
