/*
 * pins.c — the pin tables in the request segment. The protocol and why it is safe are in
 * docs/shm-layout.md, "The pin protocol": the client's pin CAS and the daemon's CONDEMNED store
 * are both seq_cst, each followed by a seq_cst load of the other side's word.
 */
#include <errno.h>

#include "atomics.h"
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
