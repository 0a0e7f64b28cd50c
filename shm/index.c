/*
 * index.c — the double-buffered, seqlocked catalogue index: look-ups (any process) and
 * publication (the daemon). docs/shm-layout.md, "Index copies", has the protocol and the
 * memory-ordering argument.
 *
 * Readers may observe a copy while it is being rewritten; everything they load is then garbage
 * that the seqlock check will reject, so every count and position read from shared memory is
 * clamped before use: a torn read may cost a retry, never an out-of-bounds access.
 */
#include <errno.h>
#include <string.h>

#include "atomics.h"
#include "seqlock.h"
#include "index_find.h"
#include "shm.h"

int chunkd__id_cmp(const uint64_t a[4], const uint64_t b[4])
{
	for (int i = 0; i < 4; i++)
		if (a[i] != b[i])
			return a[i] < b[i] ? -1 : 1;
	return 0;
}

/* Compare a key with an id in shared memory, loading words only as far as needed. */
static inline int id_cmp_shared(const uint64_t key[4], const uint64_t *shared)
{
	for (int i = 0; i < 4; i++) {
		uint64_t w = chunkd__load_relaxed(&shared[i]);
		if (key[i] != w)
			return key[i] < w ? -1 : 1;
	}
	return 0;
}

/* Begin a read of the active copy; returns it and its counter in *q (odd = retry). */
static inline const struct chunkd_idx_view *read_begin(const struct chunkd_cat_map *m, uint32_t *q)
{
	/* Pairs with the release store of index_active in chunkd__idx_publish. */
	uint32_t a = chunkd__load_acquire(&m->hdr->index_active) & 1u;
	const struct chunkd_idx_view *v = &m->idx[a];
	*q = chunkd__seq_read_begin(&v->hdr->seq);
	return v;
}

int chunkd__idx_find(const struct chunkd_cat_map *m, const uint64_t dataset[4], uint64_t block,
		     struct chunkd_idx_range *out)
{
	for (uint32_t tries = 0; tries < CHUNKD_SEQ_SPINS; tries++) {
		int r = chunkd__idx_find_once(m, dataset, block, out);
		if (__builtin_expect(r <= 0, 1))
			return r;
		if (r == CHUNKD_FIND_ODD)
			chunkd__cpu_relax();
	}
	return -EAGAIN;
}

int chunkd__idx_find_id(const struct chunkd_cat_map *m, const uint64_t id[4],
			struct chunkd_idx_id *out)
{
	const uint32_t cap = m->geom.max_chunks;
	for (uint32_t tries = 0; tries < CHUNKD_SEQ_SPINS; tries++) {
		uint32_t q;
		const struct chunkd_idx_view *v = read_begin(m, &q);
		if (q & 1u) {
			chunkd__cpu_relax();
			continue;
		}
		int found = 0;
		uint32_t nids = chunkd__load_relaxed(&v->hdr->nids);
		if (nids <= cap) {
			uint32_t lo = 0, hi = nids;
			while (lo < hi) {
				uint32_t mid = lo + (hi - lo) / 2;
				if (id_cmp_shared(id, v->ids[mid].id) > 0)
					lo = mid + 1;
				else
					hi = mid;
			}
			if (lo < nids && id_cmp_shared(id, v->ids[lo].id) == 0) {
				memcpy(out->id, id, sizeof(out->id));
				out->slot = chunkd__load_relaxed(&v->ids[lo].slot);
				out->gen = chunkd__load_relaxed(&v->ids[lo].gen);
				found = 1;
			}
		}
		if (chunkd__seq_read_retry(&v->hdr->seq, q))
			continue;
		if (!found)
			return -ENOENT;
		return out->slot < cap ? 0 : -EAGAIN;
	}
	return -EAGAIN;
}

int chunkd__idx_list(const struct chunkd_cat_map *m, void *ids, size_t cap, size_t *count)
{
	for (uint32_t tries = 0; tries < CHUNKD_SEQ_SPINS; tries++) {
		uint32_t q;
		const struct chunkd_idx_view *v = read_begin(m, &q);
		if (q & 1u) {
			chunkd__cpu_relax();
			continue;
		}
		uint32_t n = chunkd__load_relaxed(&v->hdr->nranges);
		if (n > m->geom.max_chunks)
			n = 0; /* torn; the retry check below rejects this pass */
		size_t k = n < cap ? n : cap;
		for (size_t i = 0; i < k; i++) {
			uint64_t w[4];
			chunkd__load_id_relaxed(w, v->ranges[i].id);
			memcpy((uint8_t *)ids + i * sizeof(w), w, sizeof(w));
		}
		if (chunkd__seq_read_retry(&v->hdr->seq, q))
			continue;
		*count = n;
		return 0;
	}
	return -EAGAIN;
}

int chunkd__idx_entry_cmp(const void *pa, const void *pb)
{
	const struct chunkd_idx_entry *a = pa, *b = pb;
	int c = chunkd__id_cmp(a->dataset, b->dataset);
	if (c)
		return c;
	if (a->first != b->first)
		return a->first < b->first ? -1 : 1;
	/* Equal starts only meet in the start-up scan's conflicts: break the tie on the id so that
	 * every start picks the same winner, whatever the directory order. */
	return chunkd__id_cmp(a->id, b->id);
}

void chunkd__idx_publish(struct chunkd_cat_map *m, const struct chunkd_idx_entry *pub, uint32_t npub,
			 const struct chunkd_idx_id *ids, uint32_t nids)
{
	struct chunkd_cat_hdr *h = m->hdr;
	uint32_t b = (chunkd__load_relaxed(&h->index_active) & 1u) ^ 1u;
	struct chunkd_idx_view *v = &m->idx[b];

	/* Datasets in this publication (pub is sorted by dataset): the hash gets at least twice
	 * as many entries, so probes stay short. */
	uint32_t nds = 0;
	for (uint32_t i = 0; i < npub; i++)
		if (i == 0 || chunkd__id_cmp(pub[i].dataset, pub[i - 1].dataset) != 0)
			nds++;
	uint32_t hsize = 16;
	while (hsize < 2 * (uint64_t)nds && hsize < m->geom.hash_cap)
		hsize <<= 1;
	const uint32_t hmask = hsize - 1;
	const uint64_t seed = m->idx_seed;

	chunkd__seq_write_begin(&v->hdr->seq);
	for (uint32_t k = 0; k < hsize; k++)
		chunkd__store_relaxed(&v->ds[k].count, 0);
	for (uint32_t i = 0; i < npub;) {
		/* One dataset: entries [i, j). */
		uint32_t j = i + 1;
		while (j < npub && chunkd__id_cmp(pub[j].dataset, pub[i].dataset) == 0)
			j++;
		uint32_t slot = chunkd__idx_hash(pub[i].dataset, seed) & hmask;
		while (chunkd__load_relaxed(&v->ds[slot].count) != 0)
			slot = (slot + 1) & hmask;
		chunkd__store_id_relaxed(v->ds[slot].id, pub[i].dataset);
		chunkd__store_relaxed(&v->ds[slot].start, i);
		chunkd__store_relaxed(&v->ds[slot].count, j - i);
		i = j;
	}
	for (uint32_t i = 0; i < npub; i++) {
		const struct chunkd_idx_entry *e = &pub[i];
		struct chunkd_idx_range *r = &v->ranges[i];
		chunkd__store_relaxed(&v->firsts[i], e->first);
		chunkd__store_relaxed(&r->first, e->first);
		chunkd__store_relaxed(&r->end, e->end);
		chunkd__store_relaxed(&r->slot, e->slot);
		chunkd__store_relaxed(&r->gen, e->gen);
		chunkd__store_id_relaxed(r->id, e->id);
	}
	chunkd__copy_out_relaxed((uint64_t *)v->ids, (const uint64_t *)ids,
				 (size_t)nids * sizeof(*ids) / 8);
	chunkd__store_relaxed(&v->hdr->nds, nds);
	chunkd__store_relaxed(&v->hdr->nranges, npub);
	chunkd__store_relaxed(&v->hdr->nids, nids);
	chunkd__store_relaxed(&v->hdr->hmask, hmask);
	chunkd__store_relaxed(&v->hdr->hseed, seed);
	chunkd__seq_write_end(&v->hdr->seq);

	/* Makes copy b the one readers use; pairs with the acquire load in read_begin. */
	chunkd__store_release(&h->index_active, b);
	chunkd__store_relaxed(&h->nchunks, npub);
	/* seq_cst: a reader that sees the new count also sees the new active copy (release
	 * part), and the increment precedes, in the single total order, every states[] store
	 * that takes a chunk of the previous copy out of PUBLISHED (chunkd__catalog_flush): the
	 * pin fast path of chunkd_find relies on it (docs/shm-layout.md, "The pin protocol"). */
	chunkd__fetch_add(&h->index_flips, 1, __ATOMIC_SEQ_CST);
}
