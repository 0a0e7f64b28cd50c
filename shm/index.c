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

/* What a read section of chunkd__idx_find saw that makes it try again. */
#define FIND_ODD     1 /* a writer is inside the copy: pause, then retry */
#define FIND_CHANGED 2 /* the copy changed under the read: retry at once */

/* One read section of chunkd__idx_find: 0 with *out filled, -ENOENT, -EAGAIN (a slot beyond
 * the capacity), or FIND_ODD / FIND_CHANGED; the caller bounds the retries. */
static inline __attribute__((always_inline)) int find_once(const struct chunkd_cat_map *m,
							   const uint64_t dataset[4],
							   uint64_t block,
							   struct chunkd_idx_range *out)
{
	/* read_begin, with the copy's header pointer loaded once (the acquire load of seq would
	 * otherwise make the compiler load it again for the fields). Pairs with the release
	 * store of index_active in chunkd__idx_publish. */
	uint32_t a = chunkd__load_acquire(&m->hdr->index_active) & 1u;
	const struct chunkd_idx_view *v = &m->idx[a];
	const struct chunkd_idx_hdr *ih = v->hdr;
	uint32_t q = chunkd__seq_read_begin(&ih->seq);
	if (__builtin_expect(q & 1u, 0))
		return FIND_ODD;
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
	 * dense firsts[] (eight per cache line); the range entry is read once. */
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
		return FIND_CHANGED;
	return r;
}

int chunkd__idx_find(const struct chunkd_cat_map *m, const uint64_t dataset[4], uint64_t block,
		     struct chunkd_idx_range *out)
{
	for (uint32_t tries = 0; tries < CHUNKD_SEQ_SPINS; tries++) {
		int r = find_once(m, dataset, block, out);
		if (__builtin_expect(r <= 0, 1))
			return r;
		if (r == FIND_ODD)
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
