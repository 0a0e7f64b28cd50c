/*
 * test_index.c — the seqlocked, double-buffered catalogue index (shm/index.c): look-ups against a
 * brute-force model (also with colliding dataset hashes), list and id look-ups, alternation of the
 * two copies, and hostile contents (counts larger than the capacity, a full or malformed dataset
 * hash) that must never cause an out-of-bounds read or an unbounded probe.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>

#include <cmocka.h>

#include "fixture.h"

#define CAP 4096

struct model {
	struct chunkd_idx_entry e[CAP];
	struct chunkd_idx_id ids[CAP];
	uint32_t n;
};

static void rand_id(uint64_t *seed, uint64_t id[4])
{
	for (int i = 0; i < 4; i++)
		id[i] = fixture_rand(seed);
}

/* n chunks over nds datasets, consecutive ranges with random gaps, slots 0..n-1. With
 * `collide`, every dataset id shares its first two words: a hash or a comparison that looks at
 * those words only would confuse them, and only the full comparison tells them apart. */
static void make_model_ex(struct model *m, uint32_t n, uint32_t nds, uint64_t seed, int collide)
{
	static uint64_t ds[CAP][4], next[CAP];
	for (uint32_t d = 0; d < nds; d++) {
		rand_id(&seed, ds[d]);
		if (collide) {
			ds[d][0] = 0x5eed;
			ds[d][1] = 0xc0111de;
		}
		next[d] = fixture_rand(&seed) % 100;
	}
	m->n = n;
	for (uint32_t i = 0; i < n; i++) {
		struct chunkd_idx_entry *e = &m->e[i];
		uint32_t d = (uint32_t)(fixture_rand(&seed) % nds);
		memcpy(e->dataset, ds[d], sizeof(e->dataset));
		rand_id(&seed, e->id);
		e->first = next[d];
		e->end = e->first + 1 + fixture_rand(&seed) % 100;
		next[d] = e->end + (fixture_rand(&seed) % 3 == 0 ? fixture_rand(&seed) % 20 : 0);
		e->slot = i;
		e->gen = 1 + (uint32_t)(fixture_rand(&seed) % 7);
		memcpy(m->ids[i].id, e->id, sizeof(e->id));
		m->ids[i].slot = i;
		m->ids[i].gen = e->gen;
	}
}

static void make_model(struct model *m, uint32_t n, uint32_t nds, uint64_t seed)
{
	make_model_ex(m, n, nds, seed, 0);
}

static int ids_cmp(const void *a, const void *b)
{
	return chunkd__id_cmp(((const struct chunkd_idx_id *)a)->id,
			      ((const struct chunkd_idx_id *)b)->id);
}

static void publish_model(struct chunkd_cat_map *cat, struct model *m)
{
	qsort(m->e, m->n, sizeof(m->e[0]), chunkd__idx_entry_cmp);
	qsort(m->ids, m->n, sizeof(m->ids[0]), ids_cmp);
	chunkd__idx_publish(cat, m->e, m->n, m->ids, m->n);
}

static const struct chunkd_idx_entry *brute_find(const struct model *m, const uint64_t ds[4],
						 uint64_t block)
{
	for (uint32_t i = 0; i < m->n; i++)
		if (!chunkd__id_cmp(m->e[i].dataset, ds) && m->e[i].first <= block &&
		    block < m->e[i].end)
			return &m->e[i];
	return NULL;
}

static void check_all(struct chunkd_cat_map *cat, const struct model *m, uint64_t seed)
{
	/* Every boundary of every chunk, plus random blocks. */
	for (uint32_t i = 0; i < m->n; i++) {
		const struct chunkd_idx_entry *e = &m->e[i];
		uint64_t probes[5] = {e->first, e->end - 1, e->end, e->first ? e->first - 1 : 0,
				      fixture_rand(&seed) % (e->end + 50)};
		for (int k = 0; k < 5; k++) {
			struct chunkd_idx_range got;
			const struct chunkd_idx_entry *want = brute_find(m, e->dataset, probes[k]);
			int r = chunkd__idx_find(cat, e->dataset, probes[k], &got);
			if (!want) {
				assert_int_equal(r, -ENOENT);
				continue;
			}
			assert_int_equal(r, 0);
			assert_int_equal(got.slot, want->slot);
			assert_int_equal(got.gen, want->gen);
			assert_int_equal(got.first, want->first);
			assert_int_equal(got.end, want->end);
			assert_memory_equal(got.id, want->id, 32);
		}
	}
}

static void test_find_matches_model(void **state)
{
	struct chunkd_cat_map cat;
	fixture_cat(&cat, CAP);
	static struct model m;
	make_model(&m, 3000, 37, 42);
	publish_model(&cat, &m);
	check_all(&cat, &m, 7);

	/* Unknown dataset, block 0 and UINT64_MAX. */
	uint64_t unknown[4] = {1, 2, 3, 4};
	struct chunkd_idx_range got;
	assert_int_equal(chunkd__idx_find(&cat, unknown, 5, &got), -ENOENT);
	assert_int_equal(chunkd__idx_find(&cat, m.e[0].dataset, UINT64_MAX, &got), -ENOENT);
	fixture_cat_free(&cat);
}

static void test_empty_and_single(void **state)
{
	struct chunkd_cat_map cat;
	fixture_cat(&cat, 8);
	uint64_t ds[4] = {9, 9, 9, 9};
	struct chunkd_idx_range got;
	assert_int_equal(chunkd__idx_find(&cat, ds, 0, &got), -ENOENT);
	size_t count = 99;
	assert_int_equal(chunkd__idx_list(&cat, NULL, 0, &count), 0);
	assert_int_equal(count, 0);

	struct chunkd_idx_entry e = {.dataset = {9, 9, 9, 9}, .id = {1, 1, 1, 1}, .first = 10,
				     .end = 20, .slot = 3, .gen = 1};
	struct chunkd_idx_id id = {.id = {1, 1, 1, 1}, .slot = 3, .gen = 1};
	chunkd__idx_publish(&cat, &e, 1, &id, 1);
	assert_int_equal(chunkd__idx_find(&cat, ds, 9, &got), -ENOENT);
	assert_int_equal(chunkd__idx_find(&cat, ds, 10, &got), 0);
	assert_int_equal(chunkd__idx_find(&cat, ds, 19, &got), 0);
	assert_int_equal(chunkd__idx_find(&cat, ds, 20, &got), -ENOENT);
	fixture_cat_free(&cat);
}

static void test_copies_alternate(void **state)
{
	struct chunkd_cat_map cat;
	fixture_cat(&cat, CAP);
	static struct model a, b;
	make_model(&a, 500, 5, 1);
	make_model(&b, 800, 9, 2);
	uint32_t active0 = cat.hdr->index_active;
	publish_model(&cat, &a);
	assert_int_not_equal(cat.hdr->index_active, active0);
	check_all(&cat, &a, 3);
	publish_model(&cat, &b);
	assert_int_equal(cat.hdr->index_active, active0);
	check_all(&cat, &b, 4);
	assert_int_equal(cat.hdr->index_flips, 2);
	assert_int_equal(cat.hdr->nchunks, 800);
	/* Every copy's counter is even after a publication. */
	assert_int_equal(cat.idx[0].hdr->seq % 2, 0);
	assert_int_equal(cat.idx[1].hdr->seq % 2, 0);
	fixture_cat_free(&cat);
}

static void test_list_and_find_id(void **state)
{
	struct chunkd_cat_map cat;
	fixture_cat(&cat, CAP);
	static struct model m;
	make_model(&m, 1000, 10, 5);
	publish_model(&cat, &m);

	static chunkd_id ids[1000];
	size_t count = 0;
	assert_int_equal(chunkd__idx_list(&cat, ids, 1000, &count), 0);
	assert_int_equal(count, 1000);
	for (uint32_t i = 0; i < m.n; i++) /* list order is range order */
		assert_memory_equal(ids[i].bytes, m.e[i].id, 32);
	/* A smaller buffer gets a prefix and still the full count. */
	memset(ids, 0, sizeof(ids));
	assert_int_equal(chunkd__idx_list(&cat, ids, 10, &count), 0);
	assert_int_equal(count, 1000);
	assert_memory_equal(ids[9].bytes, m.e[9].id, 32);
	uint8_t zero[32] = {0};
	assert_memory_equal(ids[10].bytes, zero, 32);

	for (uint32_t i = 0; i < m.n; i++) {
		struct chunkd_idx_id got;
		assert_int_equal(chunkd__idx_find_id(&cat, m.ids[i].id, &got), 0);
		assert_int_equal(got.slot, m.ids[i].slot);
		assert_int_equal(got.gen, m.ids[i].gen);
	}
	uint64_t missing[4] = {0, 0, 0, 1};
	struct chunkd_idx_id got;
	assert_int_equal(chunkd__idx_find_id(&cat, missing, &got), -ENOENT);
	fixture_cat_free(&cat);
}

/* The catalogue is written by the daemon only, but a reader can still see any bytes mid-rewrite:
 * counts beyond the capacity and dataset entries pointing past the ranges must be clamped. */
static void test_hostile_counts(void **state)
{
	struct chunkd_cat_map cat;
	fixture_cat(&cat, 16);
	uint32_t a = cat.hdr->index_active;
	struct chunkd_idx_view *v = &cat.idx[a];
	uint64_t ds[4] = {5, 5, 5, 5};
	struct chunkd_idx_range got;

	v->hdr->nds = 0xffffffffu;
	v->hdr->nranges = 0xffffffffu;
	v->hdr->nids = 0xffffffffu;
	assert_int_equal(chunkd__idx_find(&cat, ds, 1, &got), -ENOENT);
	struct chunkd_idx_id gid;
	assert_int_equal(chunkd__idx_find_id(&cat, ds, &gid), -ENOENT);
	size_t count = 7;
	static chunkd_id ids[16];
	assert_int_equal(chunkd__idx_list(&cat, ids, 16, &count), 0);
	assert_int_equal(count, 0);

	/* A dataset entry whose range window runs past nranges. */
	v->hdr->nds = 1;
	v->hdr->nranges = 2;
	memcpy(v->ds[0].id, ds, 32);
	v->ds[0].start = 1;
	v->ds[0].count = 0xfffffff0u;
	assert_int_equal(chunkd__idx_find(&cat, ds, 1, &got), -ENOENT);
	/* A range pointing at a slot beyond the capacity is not returned. */
	v->ds[0].start = 0;
	v->ds[0].count = 1;
	v->ranges[0].first = 0;
	v->ranges[0].end = 10;
	v->ranges[0].slot = 16;
	assert_int_equal(chunkd__idx_find(&cat, ds, 1, &got), -EAGAIN);
	fixture_cat_free(&cat);
}

/* Datasets that share their first two words and many datasets of one chunk each
 * (the table grows with them), under several seeds. */
static void test_hash_collisions_and_growth(void **state)
{
	static const uint64_t seeds[] = {0, 1, 0x9E3779B97F4A7C15ull, ~0ull};
	for (size_t k = 0; k < sizeof(seeds) / sizeof(seeds[0]); k++) {
		struct chunkd_cat_map cat;
		fixture_cat(&cat, CAP);
		cat.idx_seed = seeds[k];
		static struct model m;
		make_model_ex(&m, 500, 40, 11 + k, 1);
		publish_model(&cat, &m);
		check_all(&cat, &m, 3);
		make_model_ex(&m, 3000, 3000, 12 + k, 0);
		publish_model(&cat, &m);
		check_all(&cat, &m, 4);
		const struct chunkd_idx_hdr *ih = cat.idx[cat.hdr->index_active].hdr;
		assert_true(ih->nds > 1500); /* 3000 draws over 3000 datasets */
		assert_true(ih->hmask + 1 >= 2 * ih->nds);
		/* A dataset that collides with all of them but is not there. */
		uint64_t absent[4] = {0x5eed, 0xc0111de, 1, 2};
		make_model_ex(&m, 500, 40, 13 + k, 1);
		publish_model(&cat, &m);
		struct chunkd_idx_range got;
		assert_int_equal(chunkd__idx_find(&cat, absent, 50, &got), -ENOENT);
		fixture_cat_free(&cat);
	}
}

/* A hash table that is full (no empty entry ends a probe) or whose mask is not a power of two
 * minus one, or is beyond the reserved capacity: look-ups end, with -ENOENT. */
static void test_hostile_hash(void **state)
{
	struct chunkd_cat_map cat;
	fixture_cat(&cat, 16);
	struct chunkd_idx_view *v = &cat.idx[cat.hdr->index_active];
	uint64_t ds[4] = {5, 5, 5, 5};
	struct chunkd_idx_range got;
	v->hdr->nranges = 1;
	v->hdr->hmask = cat.geom.hash_cap - 1;
	for (uint32_t i = 0; i < cat.geom.hash_cap; i++) {
		v->ds[i].id[0] = 6; /* never ds */
		v->ds[i].start = 0;
		v->ds[i].count = 1;
	}
	uint64_t t0 = fixture_now_ms();
	assert_int_equal(chunkd__idx_find(&cat, ds, 1, &got), -ENOENT);
	v->hdr->hmask = 5;
	assert_int_equal(chunkd__idx_find(&cat, ds, 1, &got), -ENOENT);
	v->hdr->hmask = cat.geom.hash_cap * 2 - 1;
	assert_int_equal(chunkd__idx_find(&cat, ds, 1, &got), -ENOENT);
	v->hdr->hmask = 0xffffffffu;
	assert_int_equal(chunkd__idx_find(&cat, ds, 1, &got), -ENOENT);
	assert_true(fixture_now_ms() - t0 < 5000);
	fixture_cat_free(&cat);
}

/* A writer killed inside a write section leaves the copy odd: readers give up, never hang. */
static void test_odd_copy_gives_eagain(void **state)
{
	struct chunkd_cat_map cat;
	fixture_cat(&cat, 16);
	uint32_t a = cat.hdr->index_active;
	cat.idx[a].hdr->seq = 3;
	uint64_t ds[4] = {5, 5, 5, 5};
	struct chunkd_idx_range got;
	uint64_t t0 = fixture_now_ms();
	assert_int_equal(chunkd__idx_find(&cat, ds, 1, &got), -EAGAIN);
	assert_true(fixture_now_ms() - t0 < 5000);
	fixture_cat_free(&cat);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_find_matches_model),
		cmocka_unit_test(test_empty_and_single),
		cmocka_unit_test(test_copies_alternate),
		cmocka_unit_test(test_list_and_find_id),
		cmocka_unit_test(test_hostile_counts),
		cmocka_unit_test(test_hash_collisions_and_growth),
		cmocka_unit_test(test_hostile_hash),
		cmocka_unit_test(test_odd_copy_gives_eagain),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
