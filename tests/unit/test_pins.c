/*
 * test_pins.c — the pin protocol (shm/pins.c, docs/shm-layout.md "The pin protocol").
 *
 * The race test plays both sides as fast as it can: a "daemon" publishes incarnation g of a slot,
 * condemns it (seq_cst store), scans the pins, and once it sees none declares g deleted; "clients"
 * pin (seq_cst CAS), recheck gen_state (seq_cst load) and, while holding a pin they think is
 * good, assert that g has not been declared deleted. A wrong memory order would let the daemon
 * delete under a held pin; the test counts such violations and requires zero.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "fixture.h"
#include "shm/seqlock.h"

#define NCLIENTS 3
#define RUN_MS 1500
#define SLOT 5

struct shared {
	uint32_t stop;
	uint32_t deleted_gen; /* highest generation the daemon has deleted */
	uint64_t held[NCLIENTS];
	uint64_t violations[NCLIENTS];
	uint64_t rounds;
	uint64_t missed_wakes; /* the index race: a released pin that did not ring the doorbell */
};

static void test_take_clear_full(void **state)
{
	struct chunkd_req_map req;
	fixture_req(&req, 2);
	struct chunkd_req_client *cl = chunkd__req_client(&req, 1);
	uint32_t hint = 0;
	for (uint32_t i = 0; i < CHUNKD_PINS_PER_CLIENT; i++)
		assert_int_equal(chunkd__pin_take(cl, &hint, CHUNKD_PIN_WORD(i, 1)), (int)i);
	assert_int_equal(chunkd__pin_take(cl, &hint, CHUNKD_PIN_WORD(0, 1)), -ENOBUFS);
	assert_int_equal(chunkd__pins_held(cl), CHUNKD_PINS_PER_CLIENT);
	chunkd__pin_clear(cl, 17);
	hint = 3;
	assert_int_equal(chunkd__pin_take(cl, &hint, CHUNKD_PIN_WORD(9, 2)), 17);
	assert_int_equal(hint, 18);
	fixture_req_free(&req);
}

static void test_count_matches_incarnation(void **state)
{
	struct chunkd_req_map req;
	fixture_req(&req, 4);
	uint32_t hint = 0;
	struct chunkd_req_client *a = chunkd__req_client(&req, 0);
	struct chunkd_req_client *b = chunkd__req_client(&req, 3);
	a->ctl.owner = 1;
	b->ctl.owner = 2;
	chunkd__pin_take(a, &hint, CHUNKD_PIN_WORD(7, 3));
	chunkd__pin_take(a, &hint, CHUNKD_PIN_WORD(7, 3));
	chunkd__pin_take(b, &hint, CHUNKD_PIN_WORD(7, 3));
	chunkd__pin_take(b, &hint, CHUNKD_PIN_WORD(7, 4)); /* another incarnation */
	chunkd__pin_take(b, &hint, CHUNKD_PIN_WORD(8, 3)); /* another slot */
	assert_int_equal(chunkd__pins_count(&req, 7, 3), 3);
	assert_int_equal(chunkd__pins_count(&req, 7, 4), 1);
	assert_int_equal(chunkd__pins_count(&req, 8, 3), 1);
	assert_int_equal(chunkd__pins_count(&req, 6, 3), 0);
	/* A free client slot's table is not scanned (it can only hold stale words). */
	b->ctl.owner = 0;
	assert_int_equal(chunkd__pins_count(&req, 7, 3), 2);
	/* Slot 0 encodes as 1, so an all-zero table never matches slot 0 gen 0. */
	assert_int_equal(chunkd__pins_count(&req, 0, 0), 0);
	fixture_req_free(&req);
}

static void daemon_side(struct chunkd_cat_map *cat, struct chunkd_req_map *req, struct shared *sh)
{
	uint64_t *gs = &cat->states[SLOT];
	uint64_t t0 = fixture_now_ms(), seed = 99;
	uint32_t gen = 1;
	while (fixture_now_ms() - t0 < RUN_MS) {
		chunkd__store_seq_cst(gs, CHUNKD_GEN_STATE(gen, CHUNKD_SLOT_PUBLISHED));
		for (uint64_t spin = fixture_rand(&seed) % 2000; spin; spin--)
			chunkd__cpu_relax();
		chunkd__store_seq_cst(gs, CHUNKD_GEN_STATE(gen, CHUNKD_SLOT_CONDEMNED));
		while (chunkd__pins_count(req, SLOT, gen) != 0)
			chunkd__cpu_relax();
		/* "Delete the files": from now on nobody may hold a good pin on gen. */
		chunkd__store_seq_cst(&sh->deleted_gen, gen);
		gen++;
		sh->rounds++;
	}
	chunkd__store_seq_cst(&sh->stop, 1);
}

static void client_side(struct chunkd_cat_map *cat, struct chunkd_req_map *req, struct shared *sh,
			int me)
{
	struct chunkd_req_client *cl = chunkd__req_client(req, (uint32_t)me);
	const uint64_t *gs = &cat->states[SLOT];
	uint32_t hint = (uint32_t)me * 7;
	uint64_t held = 0, bad = 0;
	while (!chunkd__load_acquire(&sh->stop)) {
		/* The "look-up": a possibly stale candidate generation. */
		uint64_t seen = chunkd__load_relaxed(gs);
		uint32_t gen = CHUNKD_GS_GEN(seen);
		int pi = chunkd__pin_take(cl, &hint, CHUNKD_PIN_WORD(SLOT, gen));
		if (pi < 0) {
			bad++;
			break;
		}
		if (chunkd__load_seq_cst(gs) == CHUNKD_GEN_STATE(gen, CHUNKD_SLOT_PUBLISHED)) {
			held++;
			/* While the pin is held the daemon must not delete gen. */
			for (int k = 0; k < 50; k++)
				if (chunkd__load_seq_cst(&sh->deleted_gen) >= gen)
					bad++;
		}
		chunkd__pin_clear(cl, (uint32_t)pi);
	}
	sh->held[me] = held;
	sh->violations[me] = bad;
}

static void check(struct shared *sh)
{
	uint64_t held = 0;
	for (int i = 0; i < NCLIENTS; i++) {
		assert_int_equal(sh->violations[i], 0);
		held += sh->held[i];
	}
	printf("# %llu publish/condemn/delete rounds, %llu good pins held\n",
	       (unsigned long long)sh->rounds, (unsigned long long)held);
	assert_true(sh->rounds > 100);
	assert_true(held > 100);
	assert_int_equal(sh->missed_wakes, 0);
}

typedef void (*daemon_fn)(struct chunkd_cat_map *, struct chunkd_req_map *, struct shared *);
typedef void (*client_fn)(struct chunkd_cat_map *, struct chunkd_req_map *, struct shared *, int);

/* The race with every client in a process of its own. */
static void race_processes(daemon_fn daemon, client_fn client)
{
	struct chunkd_cat_map cat;
	struct chunkd_req_map req;
	fixture_cat(&cat, 8);
	fixture_req(&req, NCLIENTS);
	for (int i = 0; i < NCLIENTS; i++)
		chunkd__req_client(&req, (uint32_t)i)->ctl.owner = (uint64_t)i + 1;
	struct shared *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
				 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(sh != MAP_FAILED);
	memset(sh, 0, sizeof(*sh));
	pid_t pids[NCLIENTS];
	for (int i = 0; i < NCLIENTS; i++) {
		pids[i] = fork();
		assert_true(pids[i] >= 0);
		if (pids[i] == 0) {
			client(&cat, &req, sh, i);
			_exit(0);
		}
	}
	daemon(&cat, &req, sh);
	for (int i = 0; i < NCLIENTS; i++) {
		int st;
		waitpid(pids[i], &st, 0);
		assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	check(sh);
	munmap(sh, sizeof(*sh));
	fixture_req_free(&req);
	fixture_cat_free(&cat);
}

static void test_race_processes(void **state)
{
	race_processes(daemon_side, client_side);
}

struct targ {
	struct chunkd_cat_map *cat;
	struct chunkd_req_map *req;
	struct shared *sh;
	int me;
};

static void *client_thread(void *p)
{
	struct targ *t = p;
	client_side(t->cat, t->req, t->sh, t->me);
	return NULL;
}

static void test_race_threads(void **state)
{
	struct chunkd_cat_map cat;
	struct chunkd_req_map req;
	fixture_cat(&cat, 8);
	fixture_req(&req, NCLIENTS);
	for (int i = 0; i < NCLIENTS; i++)
		chunkd__req_client(&req, (uint32_t)i)->ctl.owner = (uint64_t)i + 1;
	static struct shared sh;
	memset(&sh, 0, sizeof(sh));
	pthread_t tids[NCLIENTS];
	struct targ args[NCLIENTS];
	for (int i = 0; i < NCLIENTS; i++) {
		args[i] = (struct targ){&cat, &req, &sh, i};
		assert_int_equal(pthread_create(&tids[i], NULL, client_thread, &args[i]), 0);
	}
	daemon_side(&cat, &req, &sh);
	for (int i = 0; i < NCLIENTS; i++)
		pthread_join(tids[i], NULL);
	check(&sh);
	fixture_req_free(&req);
	fixture_cat_free(&cat);
}

/*
 * The whole look-up protocol, with the real index: clients call chunkd__pin_find (look-up, pin,
 * the index_flips fast path or the gen_state recheck; its fast path is the one chunkd_find
 * takes, and treating a changed index_flips as unchanged there fails this test) on a chunk that the "daemon" publishes,
 * deletes and republishes as a new incarnation over and over, in the daemon's order: publish an
 * index without the chunk, then store CONDEMNED, then scan the pins. CHUNKD_TEST_BAD_ORDER=1
 * condemns and scans before the flip instead (the order the fast path forbids): the test must
 * then count violations (checked by hand; not part of the suite).
 */
static const uint64_t RACE_DS[4] = {0x1111, 0x2222, 0x3333, 0x4444};

static void publish_one(struct chunkd_cat_map *cat, uint32_t gen, int present)
{
	struct chunkd_idx_entry e = {.first = 100, .end = 200, .slot = SLOT, .gen = gen};
	memcpy(e.dataset, RACE_DS, sizeof(e.dataset));
	e.id[0] = gen;
	chunkd__idx_publish(cat, &e, present ? 1 : 0, NULL, 0);
}

static void index_daemon_side(struct chunkd_cat_map *cat, struct chunkd_req_map *req,
			      struct shared *sh)
{
	const char *bad = getenv("CHUNKD_TEST_BAD_ORDER");
	int bad_order = bad && *bad == '1';
	uint64_t *gs = &cat->states[SLOT];
	uint64_t t0 = fixture_now_ms(), seed = 77;
	uint32_t gen = 1;
	while (fixture_now_ms() - t0 < RUN_MS) {
		/* A new incarnation: its state first, then an index that holds it. */
		chunkd__store_seq_cst(gs, CHUNKD_GEN_STATE(gen, CHUNKD_SLOT_PUBLISHED));
		publish_one(cat, gen, 1);
		for (uint64_t spin = fixture_rand(&seed) % 2000; spin; spin--)
			chunkd__cpu_relax();
		if (!bad_order)
			publish_one(cat, gen, 0);
		chunkd__store_seq_cst(gs, CHUNKD_GEN_STATE(gen, CHUNKD_SLOT_CONDEMNED));
		/* Like the daemon, rescan only when the doorbell rings: a client that releases a pin
		 * the scan saw must ring it (the release fast path may skip the ring only when the
		 * daemon cannot be waiting). A release that does not ring is a missed wake-up. */
		uint32_t bell = chunkd__load_seq_cst(&req->hdr->doorbell);
		while (chunkd__pins_count(req, SLOT, gen) != 0) {
			uint64_t t1 = fixture_now_ms();
			while (chunkd__load_seq_cst(&req->hdr->doorbell) == bell) {
				if (fixture_now_ms() - t1 > 2000) {
					sh->missed_wakes++;
					break;
				}
				chunkd__cpu_relax();
			}
			bell = chunkd__load_seq_cst(&req->hdr->doorbell);
		}
		chunkd__store_seq_cst(&sh->deleted_gen, gen);
		if (bad_order) {
			for (uint64_t spin = fixture_rand(&seed) % 2000; spin; spin--)
				chunkd__cpu_relax();
			publish_one(cat, gen, 0);
		}
		gen++;
		sh->rounds++;
	}
	chunkd__store_seq_cst(&sh->stop, 1);
}

static void index_client_side(struct chunkd_cat_map *cat, struct chunkd_req_map *req,
			      struct shared *sh, int me)
{
	struct chunkd_req_client *cl = chunkd__req_client(req, (uint32_t)me);
	uint32_t hint = (uint32_t)me * 7;
	uint64_t held = 0, bad = 0;
	while (!chunkd__load_acquire(&sh->stop)) {
		struct chunkd_idx_range e;
		uint64_t flips;
		int pi = chunkd__pin_find(cat, cl, req->hdr, &hint, RACE_DS, 150, &e, &flips);
		if (pi == -ENOENT || pi == -EAGAIN)
			continue;
		if (pi < 0 || e.slot != SLOT || e.id[0] != e.gen) {
			bad++;
			break;
		}
		held++;
		/* While the pin is held the daemon must not delete e.gen. */
		for (int k = 0; k < 50; k++)
			if (chunkd__load_seq_cst(&sh->deleted_gen) >= e.gen)
				bad++;
		if (chunkd__pin_release(cat, cl, req->hdr, (uint32_t)pi,
					CHUNKD_PIN_WORD(e.slot, e.gen), flips) != 0)
			bad++;
	}
	sh->held[me] = held;
	sh->violations[me] = bad;
}

static void test_race_find_processes(void **state)
{
	race_processes(index_daemon_side, index_client_side);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_take_clear_full),
		cmocka_unit_test(test_count_matches_incarnation),
		cmocka_unit_test(test_race_processes),
		cmocka_unit_test(test_race_threads),
		cmocka_unit_test(test_race_find_processes),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
