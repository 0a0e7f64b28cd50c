/*
 * catalog.c — see catalog.h.
 *
 * The published set is kept privately as an array sorted like the range index. A flush merges
 * the sorted batch of additions into it, dropping entries whose slot left PUBLISHED (or changed
 * generation), and writes the result into the inactive index copy: O(n + k log k) per flush.
 */
#include "catalog.h"

#include <assert.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "shm/atomics.h"
#include "shm/seqlock.h"

static uint32_t hash_id(const uint64_t id[4])
{
	uint64_t h = (id[0] ^ (id[1] << 1) ^ (id[2] << 2) ^ (id[3] << 3)) * 0x9E3779B97F4A7C15ull;
	return (uint32_t)(h >> 32);
}

static const uint64_t *slot_id(const struct catalog *c, uint32_t slot)
{
	return c->cat->slots[slot].id; /* the daemon's own stores; no concurrent writer */
}

static void add_published(struct catalog *c, uint32_t slot);
static void hash_insert(struct catalog *c, uint32_t slot);

int chunkd__catalog_init(struct catalog *c, struct chunkd_cat_map *cat,
			 const struct chunkd_req_map *req)
{
	memset(c, 0, sizeof(*c));
	c->cat = cat;
	c->req = req;
	c->cap = cat->geom.max_chunks;
	uint32_t hcap = 1;
	while (hcap < 2 * c->cap)
		hcap <<= 1;
	c->hmask = hcap - 1;
	c->sp = calloc(c->cap, sizeof(*c->sp));
	c->free_stack = malloc(sizeof(uint32_t) * c->cap);
	c->hash = malloc(sizeof(uint32_t) * hcap);
	c->pub = malloc(sizeof(*c->pub) * c->cap);
	c->pub_tmp = malloc(sizeof(*c->pub) * c->cap);
	c->add = malloc(sizeof(*c->add) * c->cap);
	c->ids = malloc(sizeof(*c->ids) * c->cap);
	c->ids_tmp = malloc(sizeof(*c->ids) * c->cap);
	c->ids_add = malloc(sizeof(*c->ids) * c->cap);
	c->unpub = malloc(sizeof(uint32_t) * c->cap);
	if (!c->sp || !c->free_stack || !c->hash || !c->pub || !c->pub_tmp || !c->add || !c->ids ||
	    !c->ids_tmp || !c->ids_add || !c->unpub) {
		chunkd__catalog_free_all(c);
		return -ENOMEM;
	}
	memset(c->hash, 0xff, sizeof(uint32_t) * hcap);
	/* A fresh seed per start for the shared dataset hash (shm/index.c), so that colliding
	 * dataset ids cannot be prepared in advance. */
	if (getrandom(&cat->idx_seed, sizeof(cat->idx_seed), GRND_NONBLOCK) !=
	    (ssize_t)sizeof(cat->idx_seed))
		cat->idx_seed = (uint64_t)time(NULL) * 0x9E3779B97F4A7C15ull ^ (uint64_t)getpid();
	/* Slots are handed out from low to high numbers. */
	for (uint32_t i = 0; i < c->cap; i++)
		c->free_stack[i] = c->cap - 1 - i;
	c->nfree = c->cap;
	/* A fresh segment has every slot FREE at gen 0, as calloc left sp[]. An adopted one has
	 * used slots below slot_hwm only; reading the others would make the kernel allocate every
	 * page of the slot array. */
	uint32_t hwm = chunkd__load_relaxed(&cat->hdr->slot_hwm);
	if (hwm > c->cap)
		hwm = c->cap;
	if (hwm == 0)
		return 0;
	c->nfree = 0;
	for (uint32_t i = c->cap; i-- > 0;) {
		uint64_t gs = i < hwm ? chunkd__load_relaxed(&cat->states[i]) : 0;
		c->sp[i].gen = CHUNKD_GS_GEN(gs);
		c->sp[i].state = CHUNKD_GS_STATE(gs) <= CHUNKD_SLOT_CONDEMNED ? CHUNKD_GS_STATE(gs)
									     : CHUNKD_SLOT_FREE;
		if (c->sp[i].state == CHUNKD_SLOT_FREE) {
			c->free_stack[c->nfree++] = i;
			continue;
		}
		hash_insert(c, i);
		struct chunkd_idx_id *e = &c->ids_add[c->nids_add++];
		memcpy(e->id, slot_id(c, i), sizeof(e->id));
		e->slot = i;
		e->gen = c->sp[i].gen;
		if (c->sp[i].state == CHUNKD_SLOT_PUBLISHED)
			add_published(c, i);
	}
	c->dirty = 1;
	return 0;
}

void chunkd__catalog_free_all(struct catalog *c)
{
	free(c->sp);
	free(c->free_stack);
	free(c->hash);
	free(c->pub);
	free(c->pub_tmp);
	free(c->add);
	free(c->ids);
	free(c->ids_tmp);
	free(c->ids_add);
	free(c->unpub);
	memset(c, 0, sizeof(*c));
}

int chunkd__catalog_lookup(const struct catalog *c, const uint64_t id[4])
{
	for (uint32_t h = hash_id(id) & c->hmask;; h = (h + 1) & c->hmask) {
		uint32_t s = c->hash[h];
		if (s == UINT32_MAX)
			return -ENOENT;
		if (chunkd__id_cmp(slot_id(c, s), id) == 0)
			return (int)s;
	}
}

static void hash_insert(struct catalog *c, uint32_t slot)
{
	uint32_t h = hash_id(slot_id(c, slot)) & c->hmask;
	while (c->hash[h] != UINT32_MAX)
		h = (h + 1) & c->hmask;
	c->hash[h] = slot;
}

/* Linear-probing deletion by backward shift: no tombstones, so look-ups stay short. */
static void hash_remove(struct catalog *c, uint32_t slot)
{
	uint32_t h = hash_id(slot_id(c, slot)) & c->hmask;
	while (c->hash[h] != slot) {
		assert(c->hash[h] != UINT32_MAX);
		h = (h + 1) & c->hmask;
	}
	uint32_t hole = h;
	for (uint32_t j = (hole + 1) & c->hmask; c->hash[j] != UINT32_MAX; j = (j + 1) & c->hmask) {
		uint32_t home = hash_id(slot_id(c, c->hash[j])) & c->hmask;
		/* Move j into the hole unless its home lies cyclically in (hole, j]. */
		int stays = hole <= j ? (home > hole && home <= j) : (home > hole || home <= j);
		if (!stays) {
			c->hash[hole] = c->hash[j];
			hole = j;
		}
	}
	c->hash[hole] = UINT32_MAX;
}

static void store_gen_state(struct catalog *c, uint32_t slot)
{
	/* seq_cst: the client's pin recheck loads this after its seq_cst pin CAS; the daemon's
	 * following pin scan loads the pins with seq_cst (docs/shm-layout.md, pin protocol). */
	chunkd__store_seq_cst(&c->cat->states[slot],
			      CHUNKD_GEN_STATE(c->sp[slot].gen, c->sp[slot].state));
}

int chunkd__catalog_alloc(struct catalog *c, const struct chunkd_slot_copy *desc, uint32_t state)
{
	if (chunkd__catalog_lookup(c, desc->id) >= 0)
		return -EEXIST;
	if (c->nfree == 0)
		return -ENOSPC;
	uint32_t slot = c->free_stack[--c->nfree];
	pthread_rwlock_wrlock(&c->cat->hdr->lock);
	if (slot >= chunkd__load_relaxed(&c->cat->hdr->slot_hwm))
		chunkd__store_relaxed(&c->cat->hdr->slot_hwm, slot + 1);
	struct catalog_slot *p = &c->sp[slot];
	p->gen++;
	p->state = state;
	/* Content first, then the new incarnation becomes visible in gen_state. */
	chunkd__slot_write(&c->cat->slots[slot], desc);
	store_gen_state(c, slot);
	pthread_rwlock_unlock(&c->cat->hdr->lock);
	hash_insert(c, slot);
	if (c->nids_add == c->cap)
		chunkd__catalog_flush(c); /* the batch is full: publish it first */
	struct chunkd_idx_id *e = &c->ids_add[c->nids_add++];
	memcpy(e->id, desc->id, sizeof(e->id));
	e->slot = slot;
	e->gen = p->gen;
	if (state == CHUNKD_SLOT_PUBLISHED)
		chunkd__catalog_set_state(c, slot, state);
	c->dirty = 1;
	return (int)slot;
}

/* Queue a published slot for the next index. */
static void add_published(struct catalog *c, uint32_t slot)
{
	if (c->nadd == c->cap)
		chunkd__catalog_flush(c); /* the batch is full: publish it first */
	const struct chunkd_slot *s = &c->cat->slots[slot];
	struct chunkd_idx_entry *e = &c->add[c->nadd++];
	memcpy(e->dataset, s->dataset, sizeof(e->dataset));
	memcpy(e->id, s->id, sizeof(e->id));
	e->first = s->first_block;
	e->end = s->end_block;
	e->slot = slot;
	e->gen = c->sp[slot].gen;
	c->dirty = 1;
}

void chunkd__catalog_set_state(struct catalog *c, uint32_t slot, uint32_t state)
{
	struct catalog_slot *p = &c->sp[slot];
	struct chunkd_slot *s = &c->cat->slots[slot];
	pthread_rwlock_wrlock(&c->cat->hdr->lock);
	if (state == CHUNKD_SLOT_PUBLISHED && chunkd__load_relaxed(&s->published_ns) == 0) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		chunkd__seq_write_begin(&s->seq);
		chunkd__store_relaxed(&s->published_ns,
				      (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec);
		chunkd__seq_write_end(&s->seq);
	}
	if (p->state == CHUNKD_SLOT_PUBLISHED && state != CHUNKD_SLOT_PUBLISHED &&
	    !p->unpublishing) {
		/* It may be in the active index: states[] changes only after the flip. */
		p->unpublishing = 1;
		c->unpub[c->nunpub++] = slot;
	}
	p->state = state;
	if (!p->unpublishing)
		store_gen_state(c, slot);
	pthread_rwlock_unlock(&c->cat->hdr->lock);
	if (state == CHUNKD_SLOT_PUBLISHED)
		add_published(c, slot);
	c->dirty = 1;
}

void chunkd__catalog_settle(struct catalog *c)
{
	if (c->nunpub)
		chunkd__catalog_flush(c);
}

uint32_t chunkd__catalog_pins(struct catalog *c, uint32_t slot)
{
	if (c->sp[slot].unpublishing)
		chunkd__catalog_flush(c);
	return chunkd__pins_count(c->req, slot, c->sp[slot].gen);
}

void chunkd__catalog_release_slot(struct catalog *c, uint32_t slot)
{
	assert(c->sp[slot].state != CHUNKD_SLOT_FREE);
	if (c->sp[slot].unpublishing)
		chunkd__catalog_flush(c); /* out of the index before the slot can be reused */
	hash_remove(c, slot);
	chunkd__catalog_set_state(c, slot, CHUNKD_SLOT_FREE);
	pthread_rwlock_wrlock(&c->cat->hdr->lock);
	struct chunkd_slot *s = &c->cat->slots[slot];
	chunkd__seq_write_begin(&s->seq);
	chunkd__store_relaxed(&s->published_ns, 0);
	chunkd__seq_write_end(&s->seq);
	pthread_rwlock_unlock(&c->cat->hdr->lock);
	c->free_stack[c->nfree++] = slot;
}

static int pub_live(const struct catalog *c, const struct chunkd_idx_entry *e)
{
	return c->sp[e->slot].gen == e->gen && c->sp[e->slot].state == CHUNKD_SLOT_PUBLISHED;
}

static int id_live(const struct catalog *c, const struct chunkd_idx_id *e)
{
	return c->sp[e->slot].gen == e->gen && c->sp[e->slot].state != CHUNKD_SLOT_FREE;
}

static int ids_cmp(const void *a, const void *b)
{
	return chunkd__id_cmp(((const struct chunkd_idx_id *)a)->id,
			      ((const struct chunkd_idx_id *)b)->id);
}

void chunkd__catalog_flush(struct catalog *c)
{
	if (!c->dirty)
		return;
	qsort(c->add, c->nadd, sizeof(*c->add), chunkd__idx_entry_cmp);
	uint32_t i = 0, j = 0, n = 0;
	while (i < c->npub || j < c->nadd) {
		const struct chunkd_idx_entry *e;
		if (j == c->nadd || (i < c->npub && chunkd__idx_entry_cmp(&c->pub[i], &c->add[j]) <= 0))
			e = &c->pub[i++];
		else
			e = &c->add[j++];
		if (pub_live(c, e) && (n == 0 || c->pub_tmp[n - 1].slot != e->slot ||
				       c->pub_tmp[n - 1].gen != e->gen))
			c->pub_tmp[n++] = *e;
	}
	struct chunkd_idx_entry *t = c->pub;
	c->pub = c->pub_tmp;
	c->pub_tmp = t;
	c->npub = n;
	c->nadd = 0;

	qsort(c->ids_add, c->nids_add, sizeof(*c->ids_add), ids_cmp);
	i = j = n = 0;
	while (i < c->nids || j < c->nids_add) {
		const struct chunkd_idx_id *e;
		if (j == c->nids_add || (i < c->nids && ids_cmp(&c->ids[i], &c->ids_add[j]) <= 0))
			e = &c->ids[i++];
		else
			e = &c->ids_add[j++];
		if (id_live(c, e))
			c->ids_tmp[n++] = *e;
	}
	struct chunkd_idx_id *u = c->ids;
	c->ids = c->ids_tmp;
	c->ids_tmp = u;
	c->nids = n;
	c->nids_add = 0;

	pthread_rwlock_wrlock(&c->cat->hdr->lock);
	chunkd__idx_publish(c->cat, c->pub, c->npub, c->ids, c->nids);
	/* After the flip (seq_cst increment of index_flips): the slots that left PUBLISHED are in
	 * no index a reader can still validate by index_flips, so their states[] may say so. */
	for (uint32_t k = 0; k < c->nunpub; k++) {
		uint32_t s = c->unpub[k];
		c->sp[s].unpublishing = 0;
		store_gen_state(c, s);
	}
	c->nunpub = 0;
	pthread_rwlock_unlock(&c->cat->hdr->lock);
	c->dirty = 0;
}
