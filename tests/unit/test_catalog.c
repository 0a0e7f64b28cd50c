/*
 * test_catalog.c — the daemon's catalogue writer (daemon/catalog.c): slot allocation, the id hash
 * (including backward-shift deletion), state changes and batched index publication, checked
 * against a model through the same look-ups the clients use.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>

#include <cmocka.h>

#include "catalog.h"
#include "fixture.h"

#define CAP 512

struct mchunk {
	int live;      /* allocated */
	int published; /* in PUBLISHED state */
	int slot;
	struct chunkd_slot_copy d;
};

static void make_desc(uint64_t *seed, int i, struct chunkd_slot_copy *d)
{
	memset(d, 0, sizeof(*d));
	/* Few distinct hash words so that probe chains get long and deletion is exercised. */
	d->id[0] = (uint64_t)i;
	d->id[1] = fixture_rand(seed) % 4;
	d->dataset[0] = (uint64_t)(i % 5);
	d->first_block = (uint64_t)i * 100;
	d->end_block = (uint64_t)i * 100 + 50;
	d->nfiles = 1;
	snprintf(d->path, sizeof(d->path), "/data/chunks/%d", i);
}

static void check_index(struct catalog *c, struct mchunk *m, int n)
{
	size_t count;
	int published = 0;
	for (int i = 0; i < n; i++) {
		struct chunkd_idx_range r;
		int got = chunkd__idx_find(c->cat, m[i].d.dataset, m[i].d.first_block + 10, &r);
		if (m[i].published) {
			published++;
			assert_int_equal(got, 0);
			assert_int_equal(r.slot, (uint32_t)m[i].slot);
			assert_int_equal(chunkd__load_relaxed(&c->cat->states[r.slot]),
					 CHUNKD_GEN_STATE(r.gen, CHUNKD_SLOT_PUBLISHED));
		} else {
			assert_int_equal(got, -ENOENT);
		}
		struct chunkd_idx_id id;
		got = chunkd__idx_find_id(c->cat, m[i].d.id, &id);
		assert_int_equal(got, m[i].live ? 0 : -ENOENT);
		assert_int_equal(chunkd__catalog_lookup(c, m[i].d.id), m[i].live ? m[i].slot : -ENOENT);
	}
	assert_int_equal(chunkd__idx_list(c->cat, NULL, 0, &count), 0);
	assert_int_equal(count, (size_t)published);
}

static void test_random_ops_match_model(void **state)
{
	struct chunkd_cat_map cat;
	struct chunkd_req_map req;
	fixture_cat(&cat, CAP);
	fixture_req(&req, 2);
	struct catalog c;
	assert_int_equal(chunkd__catalog_init(&c, &cat, &req), 0);
	static struct mchunk m[CAP];
	uint64_t seed = 12345;
	const int n = CAP;
	for (int i = 0; i < n; i++)
		make_desc(&seed, i, &m[i].d);

	for (int step = 0; step < 20000; step++) {
		int i = (int)(fixture_rand(&seed) % n);
		switch (fixture_rand(&seed) % 4) {
		case 0: { /* allocate (queued) */
			int r = chunkd__catalog_alloc(&c, &m[i].d, CHUNKD_SLOT_QUEUED);
			if (m[i].live) {
				assert_int_equal(r, -EEXIST);
			} else {
				assert_true(r >= 0);
				m[i].live = 1;
				m[i].slot = r;
			}
			break;
		}
		case 1: /* publish */
			if (m[i].live && !m[i].published) {
				chunkd__catalog_set_state(&c, (uint32_t)m[i].slot,
							  CHUNKD_SLOT_PUBLISHED);
				m[i].published = 1;
			}
			break;
		case 2: /* condemn then release */
			if (m[i].live) {
				chunkd__catalog_set_state(&c, (uint32_t)m[i].slot,
							  CHUNKD_SLOT_CONDEMNED);
				assert_int_equal(chunkd__catalog_pins(&c, (uint32_t)m[i].slot), 0);
				chunkd__catalog_release_slot(&c, (uint32_t)m[i].slot);
				m[i].live = m[i].published = 0;
			}
			break;
		case 3: /* flush now and then */
			if (fixture_rand(&seed) % 8 == 0) {
				chunkd__catalog_flush(&c);
				check_index(&c, m, n);
			}
			break;
		}
	}
	chunkd__catalog_flush(&c);
	check_index(&c, m, n);
	chunkd__catalog_free_all(&c);
	fixture_req_free(&req);
	fixture_cat_free(&cat);
}

static void test_full_and_generations(void **state)
{
	struct chunkd_cat_map cat;
	struct chunkd_req_map req;
	fixture_cat(&cat, 4);
	fixture_req(&req, 1);
	struct catalog c;
	assert_int_equal(chunkd__catalog_init(&c, &cat, &req), 0);
	uint64_t seed = 1;
	struct chunkd_slot_copy d;
	for (int i = 0; i < 4; i++) {
		make_desc(&seed, i, &d);
		assert_int_equal(chunkd__catalog_alloc(&c, &d, CHUNKD_SLOT_PUBLISHED), i);
	}
	make_desc(&seed, 9, &d);
	assert_int_equal(chunkd__catalog_alloc(&c, &d, CHUNKD_SLOT_PUBLISHED), -ENOSPC);
	chunkd__catalog_flush(&c);
	assert_int_equal(cat.hdr->nchunks, 4);

	/* A pin on slot 2 is seen by the daemon-side scan. */
	struct chunkd_req_client *cl = chunkd__req_client(&req, 0);
	cl->ctl.owner = 1;
	uint32_t hint = 0;
	uint32_t gen = CHUNKD_GS_GEN(cat.states[2]);
	chunkd__pin_take(cl, &hint, CHUNKD_PIN_WORD(2, gen));
	chunkd__catalog_set_state(&c, 2, CHUNKD_SLOT_CONDEMNED);
	assert_int_equal(chunkd__catalog_pins(&c, 2), 1);
	chunkd__pin_clear(cl, 0);
	assert_int_equal(chunkd__catalog_pins(&c, 2), 0);
	chunkd__catalog_release_slot(&c, 2);
	/* Reuse bumps the generation, so old pin words never match the new incarnation. */
	assert_int_equal(chunkd__catalog_alloc(&c, &d, CHUNKD_SLOT_PUBLISHED), 2);
	assert_int_equal(CHUNKD_GS_GEN(cat.states[2]), gen + 1);
	chunkd__catalog_flush(&c);
	struct chunkd_slot_copy got;
	assert_int_equal(chunkd__slot_read(&cat, 2, &got), 0);
	assert_string_equal(got.path, d.path);
	assert_true(got.published_ns != 0);
	chunkd__catalog_free_all(&c);
	fixture_req_free(&req);
	fixture_cat_free(&cat);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_random_ops_match_model),
		cmocka_unit_test(test_full_and_generations),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
