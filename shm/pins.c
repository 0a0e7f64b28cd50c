/*
 * pins.c — the pin tables in the request segment. The protocol and why it is safe are in
 * docs/shm-layout.md, "The pin protocol": the client's pin CAS and the daemon's CONDEMNED store
 * are both seq_cst, each followed by a seq_cst load of the other side's word.
 */
#include <errno.h>

#include "atomics.h"
#include "index_find.h"
#include "shm.h"

int chunkd__pin_take(struct chunkd_req_client *cl, uint32_t *hint, uint64_t word)
{
	uint32_t start = *hint % CHUNKD_PINS_PER_CLIENT;
	for (uint32_t k = 0; k < CHUNKD_PINS_PER_CLIENT; k++) {
		uint32_t i = (start + k) % CHUNKD_PINS_PER_CLIENT;
		uint64_t expect = 0;
		if (chunkd__load_relaxed(&cl->pins[i]) != 0)
			continue;
		/* seq_cst: ordered before the caller's seq_cst load of the slot's gen_state, and
		 * against the daemon's seq_cst CONDEMNED store + pin scan (Dekker). */
		if (chunkd__cas_seq_cst(&cl->pins[i], &expect, word)) {
			*hint = i + 1;
			return (int)i;
		}
	}
	return -ENOBUFS;
}

__attribute__((cold)) int chunkd__pin_recheck(const struct chunkd_cat_map *cat, struct chunkd_req_client *me,
			struct chunkd_req_hdr *bell, uint32_t pi, uint32_t slot, uint32_t gen)
{
	/* seq_cst: after our seq_cst pin CAS; pairs with the daemon's states[] store + pin scan.
	 * The caller checked slot < max_chunks. */
	uint64_t gs = chunkd__load_seq_cst(&cat->states[slot]);
	if (gs == CHUNKD_GEN_STATE(gen, CHUNKD_SLOT_PUBLISHED))
		return 1;
	chunkd__pin_clear(me, pi);
	if (CHUNKD_GS_GEN(gs) == gen && CHUNKD_GS_STATE(gs) == CHUNKD_SLOT_CONDEMNED)
		chunkd__doorbell_ring(bell); /* the daemon may have seen our pin */
	return 0;
}

/* chunkd__pin_find the general way: bounded retries of the look-up, a scan of the pin table
 * for a free entry, the gen_state recheck. Out of line, so that the fast path stays short. */
static __attribute__((noinline, cold)) int pin_find_slow(const struct chunkd_cat_map *cat,
							 struct chunkd_req_client *me,
							 struct chunkd_req_hdr *bell, uint32_t *hint,
							 const uint64_t dataset[4], uint64_t block,
							 struct chunkd_idx_range *out,
							 uint64_t *validated)
{
	/* Pairs with the daemon's increment of index_flips after it switched index copies. */
	uint64_t flips = chunkd__load_acquire(&cat->hdr->index_flips);
	/* A candidate can be condemned or recycled between the look-up and the pin; that only
	 * happens after a newer index was published, so look again in it (bounded). */
	for (int round = 0; round < 64; round++) {
		int r = chunkd__idx_find(cat, dataset, block, out);
		if (r < 0)
			return r;
		uint64_t word = CHUNKD_PIN_WORD(out->slot, out->gen);
		int pi = chunkd__pin_take(me, hint, word);
		if (pi < 0)
			return pi;
		/* The recheck, after our seq_cst pin CAS: see chunkd__pin_find. */
		if (chunkd__load_seq_cst(&cat->hdr->index_flips) == flips) {
			*validated = flips;
			return pi;
		}
		if (chunkd__pin_recheck(cat, me, bell, (uint32_t)pi, out->slot, out->gen)) {
			*validated = CHUNKD_FLIPS_NONE;
			return pi;
		}
		flips = chunkd__load_acquire(&cat->hdr->index_flips);
	}
	return -EAGAIN;
}

int chunkd__pin_find(const struct chunkd_cat_map *cat, struct chunkd_req_client *me,
		     struct chunkd_req_hdr *bell, uint32_t *hint, const uint64_t dataset[4],
		     uint64_t block, struct chunkd_idx_range *out, uint64_t *validated)
{
	/*
	 * Fast path: one read section of the index, the pin entry *hint names, and no index
	 * published in between. Anything else (a writer in the copy, that entry busy, a
	 * publication) goes the general way. Short on purpose: a look-up waits on cache misses,
	 * and the fewer instructions it issues, the sooner the next look-up's loads can start
	 * while this one's last miss is outstanding (bench/README.md).
	 *
	 * Pairs with the daemon's increment of index_flips after it switched index copies.
	 */
	uint64_t flips = chunkd__load_acquire(&cat->hdr->index_flips);
	int r = chunkd__idx_find_once(cat, dataset, block, out);
	if (__builtin_expect(r == 0, 1)) {
		uint32_t i = *hint % CHUNKD_PINS_PER_CLIENT;
		uint64_t expect = 0;
		/* seq_cst: see chunkd__pin_take. */
		if (__builtin_expect(chunkd__load_relaxed(&me->pins[i]) == 0, 1) &&
		    chunkd__cas_seq_cst(&me->pins[i], &expect, CHUNKD_PIN_WORD(out->slot, out->gen))) {
			*hint = i + 1;
			/* The recheck, after our seq_cst pin CAS. No index was published since the
			 * look-up began, so the copy we read is the current one, and the daemon takes
			 * a chunk of it out of PUBLISHED only after the next flip, whose seq_cst
			 * increment then follows this load, so its pin scan sees our pin. Otherwise
			 * the slot's gen_state decides (a cache miss this path avoids). */
			if (__builtin_expect(chunkd__load_seq_cst(&cat->hdr->index_flips) == flips, 1)) {
				*validated = flips;
				return (int)i;
			}
			if (chunkd__pin_recheck(cat, me, bell, i, out->slot, out->gen)) {
				*validated = CHUNKD_FLIPS_NONE;
				return (int)i;
			}
		}
	} else if (r < 0) {
		return r;
	}
	return pin_find_slow(cat, me, bell, hint, dataset, block, out, validated);
}

int chunkd__pin_release(const struct chunkd_cat_map *cat, struct chunkd_req_client *me,
			struct chunkd_req_hdr *bell, uint32_t i, uint64_t word, uint64_t flips)
{
	/* One seq_cst CAS clears our entry and checks it was ours (not released twice, or never
	 * found); it orders the clear before the following seq_cst loads, like pin_clear. */
	uint64_t expect = word;
	if (!chunkd__cas_seq_cst(&me->pins[i % CHUNKD_PINS_PER_CLIENT], &expect, 0))
		return -ENOENT;
	/* Fast path: the index the pin was validated under is still the current one. The daemon
	 * condemns a chunk of it only after the next flip, which then follows this load in the
	 * single total order, so its pin scan sees our cleared entry: nobody waits for us. */
	if (flips != CHUNKD_FLIPS_NONE && chunkd__load_seq_cst(&cat->hdr->index_flips) == flips)
		return 0;
	uint32_t slot = CHUNKD_PIN_SLOT(word);
	if (slot < cat->geom.max_chunks) {
		/* seq_cst: after the cleared pin; see chunkd__pin_clear. */
		uint64_t gs = chunkd__load_seq_cst(&cat->states[slot]);
		if (CHUNKD_GS_STATE(gs) == CHUNKD_SLOT_CONDEMNED &&
		    CHUNKD_GS_GEN(gs) == CHUNKD_PIN_GEN(word))
			chunkd__doorbell_ring(bell);
	}
	return 0;
}

void chunkd__pin_clear(struct chunkd_req_client *cl, uint32_t i)
{
	/* seq_cst: the daemon's scan either sees this 0, or the caller's following seq_cst load of
	 * gen_state sees CONDEMNED and rings the doorbell. */
	chunkd__store_seq_cst(&cl->pins[i % CHUNKD_PINS_PER_CLIENT], 0);
}

uint32_t chunkd__pins_count(const struct chunkd_req_map *m, uint32_t slot, uint32_t gen)
{
	const uint64_t want = CHUNKD_PIN_WORD(slot, gen);
	uint32_t n = 0;
	for (uint32_t c = 0; c < m->geom.max_clients; c++) {
		struct chunkd_req_client *cl = chunkd__req_client(m, c);
		/* seq_cst: a client's owner CAS precedes its first pin CAS in the total order, so
		 * reading 0 here means any later pin of it is ordered after our CONDEMNED store. */
		if (chunkd__load_seq_cst(&cl->ctl.owner) == 0)
			continue;
		for (uint32_t i = 0; i < CHUNKD_PINS_PER_CLIENT; i++)
			/* seq_cst: pairs with the client's pin CAS (see pin_take). */
			if (chunkd__load_seq_cst(&cl->pins[i]) == want)
				n++;
	}
	return n;
}

uint32_t chunkd__pins_held(const struct chunkd_req_client *cl)
{
	uint32_t n = 0;
	for (uint32_t i = 0; i < CHUNKD_PINS_PER_CLIENT; i++)
		if (chunkd__load_relaxed(&cl->pins[i]) != 0)
			n++;
	return n;
}
