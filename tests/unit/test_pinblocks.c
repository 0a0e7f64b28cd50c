/*
 * test_pinblocks.c — which thread takes pins where (client/pinblocks.c, docs/shm-layout.md "Pin
 * blocks").
 *
 * Plain-store pins are only safe while no two threads take entries in the same block. These tests
 * check the ownership rules (a thread keeps its block, threads get different blocks, blocks of
 * exited threads come back, SHARED blocks only grow) and run threads that take, check and
 * release pins as fast as they can, some released by another thread, some in SHARED blocks: an
 * entry that no longer holds the word its taker stored is a lost pin, and fails the test.
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "client/pinblocks.h"
#include "fixture.h"

static uint32_t block_of_calling_thread(struct chunkd_pin_blocks *pb)
{
	struct chunkd_pin_taker t;
	chunkd__pb_taker(pb, &t);
	return t.block;
}

static void *report_block(void *p)
{
	struct chunkd_pin_blocks *pb = p;
	return (void *)(uintptr_t)block_of_calling_thread(pb);
}

static void test_one_block_per_thread(void **state)
{
	struct chunkd_pin_blocks pb;
	chunkd__pb_init(&pb);
	uint32_t mine = block_of_calling_thread(&pb);
	assert_true(mine < CHUNKD_PIN_BLOCKS);
	assert_int_equal(block_of_calling_thread(&pb), mine);
	/* Threads that run one after another: the exited one's block may come back to the next,
	 * never the block of a live thread (ours). */
	for (int i = 0; i < 3; i++) {
		pthread_t th;
		void *b;
		assert_int_equal(pthread_create(&th, NULL, report_block, &pb), 0);
		pthread_join(th, &b);
		assert_true((uint32_t)(uintptr_t)b < CHUNKD_PIN_BLOCKS);
		assert_int_not_equal((uint32_t)(uintptr_t)b, mine);
	}
	/* A second set of blocks in the same process: a fresh claim there. */
	struct chunkd_pin_blocks other;
	chunkd__pb_init(&other);
	assert_int_not_equal(other.serial, pb.serial);
	assert_true(block_of_calling_thread(&other) < CHUNKD_PIN_BLOCKS);
	assert_int_equal(block_of_calling_thread(&pb), mine);
}

/* Every block held by a live thread: the next thread gets none, and no block can be made SHARED;
 * once one owner has exited, both become possible again. */
struct holder {
	struct chunkd_pin_blocks *pb;
	pthread_barrier_t *claimed;
	pthread_mutex_t *lock;
	pthread_cond_t *cond;
	int *release; /* holders with index < *release exit */
	int index;
	uint32_t block;
};

static void *hold_block(void *p)
{
	struct holder *h = p;
	h->block = block_of_calling_thread(h->pb);
	pthread_barrier_wait(h->claimed);
	pthread_mutex_lock(h->lock);
	while (h->index >= *h->release)
		pthread_cond_wait(h->cond, h->lock);
	pthread_mutex_unlock(h->lock);
	return NULL;
}

static void test_full_then_reclaim(void **state)
{
	struct chunkd_pin_blocks pb;
	chunkd__pb_init(&pb);
	pthread_barrier_t claimed;
	pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
	pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
	int release = 0;
	pthread_barrier_init(&claimed, NULL, CHUNKD_PIN_BLOCKS + 1);
	static struct holder h[CHUNKD_PIN_BLOCKS];
	pthread_t th[CHUNKD_PIN_BLOCKS];
	uint64_t seen = 0;
	for (int i = 0; i < (int)CHUNKD_PIN_BLOCKS; i++) {
		h[i] = (struct holder){&pb, &claimed, &lock, &cond, &release, i, 0};
		assert_int_equal(pthread_create(&th[i], NULL, hold_block, &h[i]), 0);
	}
	pthread_barrier_wait(&claimed);
	for (int i = 0; i < (int)CHUNKD_PIN_BLOCKS; i++) {
		assert_true(h[i].block < CHUNKD_PIN_BLOCKS);
		assert_false(seen >> h[i].block & 1u); /* two live threads never share a block */
		seen |= 1ull << h[i].block;
	}
	assert_int_equal(block_of_calling_thread(&pb), CHUNKD_PIN_NO_BLOCK);
	assert_int_equal(chunkd__pb_grow(&pb), -ENOBUFS);

	/* Holder 0 exits: its block can be made SHARED, and the one after is claimable. */
	pthread_mutex_lock(&lock);
	release = 2;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
	pthread_join(th[0], NULL);
	pthread_join(th[1], NULL);
	/* The kernel frees a tid a moment after pthread_join returns: wait for it (deadline). */
	uint64_t t0 = fixture_now_ms();
	int r;
	while ((r = chunkd__pb_grow(&pb)) == -ENOBUFS && fixture_now_ms() - t0 < 10000)
		sched_yield();
	assert_int_equal(r, 0);
	uint64_t shared = pb.shared;
	assert_int_equal(__builtin_popcountll(shared), 1);
	assert_true(shared == 1ull << h[0].block || shared == 1ull << h[1].block);
	/* The calling thread cached "no block"; it looks again every so often. */
	uint32_t got = CHUNKD_PIN_NO_BLOCK;
	t0 = fixture_now_ms();
	while (got == CHUNKD_PIN_NO_BLOCK && fixture_now_ms() - t0 < 10000)
		got = block_of_calling_thread(&pb);
	assert_true(got == h[0].block || got == h[1].block);
	assert_false(shared >> got & 1u);
	assert_int_equal(pb.owner[got] >> 63, 0);

	pthread_mutex_lock(&lock);
	release = CHUNKD_PIN_BLOCKS;
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&lock);
	for (int i = 2; i < (int)CHUNKD_PIN_BLOCKS; i++)
		pthread_join(th[i], NULL);
	pthread_barrier_destroy(&claimed);
}

/*
 * The stress: THREADS threads share one client's table through one set of blocks. Each takes up
 * to HOLD pins (more than a block, so some go to SHARED blocks, grown on demand), checks every
 * held entry still has its word, and releases them: most itself, one per round through the next
 * thread's mailbox (any thread may clear any entry).
 */
#define THREADS 8
#define HOLD 11
#define ROUNDS 20000

struct stress {
	struct chunkd_cat_map cat; /* the release's slow path reads states[] */
	struct chunkd_req_map req;
	struct chunkd_pin_blocks pb;
	pthread_mutex_t lock;
	int mailbox[THREADS]; /* an entry to release for thread i, or -1 */
	uint64_t mail_word[THREADS];
	uint64_t lost, nobufs, in_shared;
};

static void release_entry(struct stress *s, struct chunkd_pin_taker *t, int i, uint64_t word)
{
	if (chunkd__pin_release(&s->cat, t, (uint32_t)i, word, CHUNKD_FLIPS_NONE) != 0)
		__atomic_fetch_add(&s->lost, 1, __ATOMIC_RELAXED);
}

struct sarg {
	struct stress *s;
	int me;
};

static void *stress_thread(void *p)
{
	struct sarg *a = p;
	struct stress *s = a->s;
	struct chunkd_req_client *cl = chunkd__req_client(&s->req, 0);
	uint32_t hint = (uint32_t)a->me * 61;
	int held[HOLD];
	uint64_t words[HOLD];
	for (uint32_t r = 0; r < ROUNDS; r++) {
		int n = 0;
		for (; n < HOLD; n++) {
			struct chunkd_pin_taker t = {cl, s->req.hdr, &hint, 0, 0, 1};
			chunkd__pb_taker(&s->pb, &t);
			/* Unique per thread and round; slot field non-zero. */
			uint64_t w = CHUNKD_PIN_WORD((uint32_t)(a->me * HOLD + n), r + 1);
			int i;
			while ((i = chunkd__pin_take(&t, w)) == -ENOBUFS &&
			       chunkd__pb_grow(&s->pb) == 0)
				chunkd__pb_taker(&s->pb, &t);
			if (i < 0) {
				__atomic_fetch_add(&s->nobufs, 1, __ATOMIC_RELAXED);
				break;
			}
			if (t.cas_mask >> (i / CHUNKD_PIN_BLOCK) & 1u)
				__atomic_fetch_add(&s->in_shared, 1, __ATOMIC_RELAXED);
			held[n] = i;
			words[n] = w;
		}
		for (int k = 0; k < n; k++)
			if (chunkd__load_relaxed(&cl->pins[held[k]]) != words[k])
				__atomic_fetch_add(&s->lost, 1, __ATOMIC_RELAXED);
		struct chunkd_pin_taker rel = {cl, s->req.hdr, &hint, CHUNKD_PIN_NO_BLOCK, 0, 1};
		/* Our mail first (released by us for another thread), then our own pins but the last,
		 * which goes to the next thread's mailbox if that is empty. */
		pthread_mutex_lock(&s->lock);
		int mi = s->mailbox[a->me];
		uint64_t mw = s->mail_word[a->me];
		s->mailbox[a->me] = -1;
		int next = (a->me + 1) % THREADS, passed = 0;
		if (n > 0 && s->mailbox[next] < 0) {
			s->mailbox[next] = held[n - 1];
			s->mail_word[next] = words[n - 1];
			passed = 1;
		}
		pthread_mutex_unlock(&s->lock);
		if (mi >= 0)
			release_entry(s, &rel, mi, mw);
		for (int k = 0; k < n - passed; k++)
			release_entry(s, &rel, held[k], words[k]);
	}
	return NULL;
}

static void test_threads_never_lose_pins(void **state)
{
	static struct stress s;
	memset(&s, 0, sizeof(s));
	fixture_cat(&s.cat, THREADS * HOLD + 1);
	fixture_req(&s.req, 1);
	chunkd__pb_init(&s.pb);
	pthread_mutex_init(&s.lock, NULL);
	for (int i = 0; i < THREADS; i++)
		s.mailbox[i] = -1;
	pthread_t th[THREADS];
	struct sarg args[THREADS];
	for (int i = 0; i < THREADS; i++) {
		args[i] = (struct sarg){&s, i};
		assert_int_equal(pthread_create(&th[i], NULL, stress_thread, &args[i]), 0);
	}
	for (int i = 0; i < THREADS; i++)
		pthread_join(th[i], NULL);
	struct chunkd_pin_taker rel = {chunkd__req_client(&s.req, 0), s.req.hdr, NULL,
				       CHUNKD_PIN_NO_BLOCK, 0, 1};
	for (int i = 0; i < THREADS; i++)
		if (s.mailbox[i] >= 0)
			release_entry(&s, &rel, s.mailbox[i], s.mail_word[i]);
	printf("# %d threads x %d rounds of %d pins: %llu taken in SHARED blocks (%d SHARED), "
	       "%llu lost\n", THREADS, ROUNDS, HOLD, (unsigned long long)s.in_shared,
	       __builtin_popcountll(s.pb.shared), (unsigned long long)s.lost);
	assert_int_equal(s.lost, 0);
	assert_int_equal(s.nobufs, 0);
	assert_true(s.in_shared > 0); /* the CAS path ran too */
	assert_int_equal(chunkd__pins_held(chunkd__req_client(&s.req, 0)), 0);
	fixture_req_free(&s.req);
	fixture_cat_free(&s.cat);
}

/* One thread can still hold every entry of the table: its block, then all the others SHARED. */
static void test_one_thread_holds_all(void **state)
{
	struct chunkd_req_map req;
	fixture_req(&req, 1);
	struct chunkd_pin_blocks pb;
	chunkd__pb_init(&pb);
	struct chunkd_req_client *cl = chunkd__req_client(&req, 0);
	uint32_t hint = 0;
	for (uint32_t k = 0; k < CHUNKD_PINS_PER_CLIENT; k++) {
		struct chunkd_pin_taker t = {cl, req.hdr, &hint, 0, 0, 1};
		chunkd__pb_taker(&pb, &t);
		int i;
		while ((i = chunkd__pin_take(&t, CHUNKD_PIN_WORD(k, 1))) == -ENOBUFS &&
		       chunkd__pb_grow(&pb) == 0)
			chunkd__pb_taker(&pb, &t);
		assert_true(i >= 0);
	}
	assert_int_equal(chunkd__pins_held(cl), CHUNKD_PINS_PER_CLIENT);
	assert_int_equal(__builtin_popcountll(pb.shared), CHUNKD_PIN_BLOCKS - 1);
	assert_int_equal(chunkd__pb_grow(&pb), -ENOBUFS);
	fixture_req_free(&req);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_one_block_per_thread),
		cmocka_unit_test(test_full_then_reclaim),
		cmocka_unit_test(test_threads_never_lose_pins),
		cmocka_unit_test(test_one_thread_holds_all),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
