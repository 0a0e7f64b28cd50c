/*
 * test_seqlock.c — seqlock torture. A writer republishes slots and index copies as fast as it can
 * while readers verify that every copy they accept is internally consistent: every field of a
 * slot, and every index entry, is derived from one counter, so any mix of two writes shows up.
 *
 * Runs twice: readers in other processes (the real deployment: the daemon writes, workers read),
 * and readers in threads of one process (so that ThreadSanitizer can check the atomics).
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "fixture.h"
#include "shm/seqlock.h"

#define NSLOTS 8
#define NREADERS 3
#define RUN_MS 1500

struct shared {
	uint32_t stop;
	uint64_t accepted[NREADERS];
	uint64_t bad[NREADERS];
	uint64_t writes;
};

/* Fill a slot copy entirely from counter v. */
static void make_copy(uint64_t v, struct chunkd_slot_copy *c)
{
	memset(c, 0, sizeof(*c));
	c->nfiles = (uint32_t)(v % 64) + 1;
	for (int i = 0; i < 4; i++) {
		c->id[i] = v * 31 + (uint64_t)i;
		c->dataset[i] = v * 17 + (uint64_t)i;
	}
	c->first_block = v * 1000;
	c->end_block = v * 1000 + 1 + v % 500;
	c->bytes_total = v * 7;
	c->bytes_done = v * 3;
	c->attempts = (uint32_t)v;
	c->last_error = -(int32_t)(v % 100);
	c->published_ns = ~v;
	snprintf(c->path, sizeof(c->path), "/data/%llu/%0300llu", (unsigned long long)v,
		 (unsigned long long)v);
}

static int copy_consistent(const struct chunkd_slot_copy *got)
{
	struct chunkd_slot_copy want;
	uint64_t v = got->first_block / 1000;
	make_copy(v, &want);
	want.gen_state = got->gen_state;
	return memcmp(&want, got, sizeof(want)) == 0;
}

/* Index contents from counter v: n entries in one dataset, entry i covers [i*10, i*10+5+v%5). */
static uint32_t make_index(uint64_t v, struct chunkd_idx_entry *e, struct chunkd_idx_id *ids)
{
	uint32_t n = 1 + (uint32_t)(v % 40);
	for (uint32_t i = 0; i < n; i++) {
		memset(&e[i], 0, sizeof(e[i]));
		e[i].dataset[0] = 77;
		e[i].first = (uint64_t)i * 10;
		e[i].end = e[i].first + 5 + v % 5;
		e[i].slot = i;
		e[i].gen = (uint32_t)v;
		e[i].id[0] = v;
		e[i].id[1] = i;
		memcpy(ids[i].id, e[i].id, 32);
		ids[i].slot = i;
		ids[i].gen = (uint32_t)v;
	}
	/* ids must be sorted by id: id[0] is equal, id[1] = i ascending. */
	return n;
}

static void writer(struct chunkd_cat_map *cat, struct shared *sh)
{
	static struct chunkd_idx_entry e[64];
	static struct chunkd_idx_id ids[64];
	struct chunkd_slot_copy c;
	uint64_t v = 1, t0 = fixture_now_ms();
	while (fixture_now_ms() - t0 < RUN_MS) {
		for (int k = 0; k < 64; k++, v++) {
			make_copy(v, &c);
			chunkd__slot_write(&cat->slots[v % NSLOTS], &c);
		}
		uint32_t n = make_index(v, e, ids);
		chunkd__idx_publish(cat, e, n, ids, n);
		chunkd__fetch_add(&sh->writes, 1, __ATOMIC_RELAXED);
	}
	chunkd__store_release(&sh->stop, 1);
}

static void reader(struct chunkd_cat_map *cat, struct shared *sh, int me)
{
	uint64_t seed = 0x9e3779b97f4a7c15ull * (uint64_t)(me + 1), ok = 0, bad = 0;
	struct chunkd_slot_copy c;
	uint64_t ds[4] = {77, 0, 0, 0};
	while (!chunkd__load_acquire(&sh->stop)) {
		memset(&c, 0, sizeof(c)); /* padding bytes take part in the comparison */
		int r = chunkd__slot_read(cat, fixture_rand(&seed) % NSLOTS, &c);
		if (r == 0) {
			/* A never-written slot is all zero, which is consistent too (v = 0). */
			if (c.first_block == 0 && c.nfiles == 0)
				ok++;
			else if (copy_consistent(&c))
				ok++;
			else
				bad++;
		}
		uint64_t block = fixture_rand(&seed) % 400;
		struct chunkd_idx_range got;
		r = chunkd__idx_find(cat, ds, block, &got);
		if (r == 0) {
			/* Entry i = block / 10 from some version v = got.gen: check every field. */
			uint64_t v = got.gen;
			int good = got.id[0] == v && got.first == got.id[1] * 10 &&
				   got.end == got.first + 5 + v % 5 && got.slot == got.id[1] &&
				   got.first <= block && block < got.end;
			good ? ok++ : bad++;
		} else if (r != -ENOENT) {
			bad++;
		}
	}
	sh->accepted[me] = ok;
	sh->bad[me] = bad;
}

static void check_results(struct shared *sh)
{
	uint64_t total = 0;
	for (int i = 0; i < NREADERS; i++) {
		assert_int_equal(sh->bad[i], 0);
		total += sh->accepted[i];
	}
	printf("# writer published %llu batches; readers accepted %llu consistent copies\n",
	       (unsigned long long)sh->writes, (unsigned long long)total);
	assert_true(sh->writes > 100);
	assert_true(total > 1000);
}

static void test_torture_processes(void **state)
{
	struct chunkd_cat_map cat;
	fixture_cat(&cat, 64);
	struct shared *sh = mmap(NULL, sizeof(*sh), PROT_READ | PROT_WRITE,
				 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(sh != MAP_FAILED);
	memset(sh, 0, sizeof(*sh));
	pid_t pids[NREADERS];
	for (int i = 0; i < NREADERS; i++) {
		pids[i] = fork();
		assert_true(pids[i] >= 0);
		if (pids[i] == 0) {
			reader(&cat, sh, i);
			_exit(0);
		}
	}
	writer(&cat, sh);
	for (int i = 0; i < NREADERS; i++) {
		int st;
		assert_int_equal(waitpid(pids[i], &st, 0), pids[i]);
		assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
	}
	check_results(sh);
	munmap(sh, sizeof(*sh));
	fixture_cat_free(&cat);
}

struct targ {
	struct chunkd_cat_map *cat;
	struct shared *sh;
	int me;
};

static void *reader_thread(void *p)
{
	struct targ *t = p;
	reader(t->cat, t->sh, t->me);
	return NULL;
}

static void test_torture_threads(void **state)
{
	struct chunkd_cat_map cat;
	fixture_cat(&cat, 64);
	static struct shared sh;
	memset(&sh, 0, sizeof(sh));
	pthread_t tids[NREADERS];
	struct targ args[NREADERS];
	for (int i = 0; i < NREADERS; i++) {
		args[i] = (struct targ){&cat, &sh, i};
		assert_int_equal(pthread_create(&tids[i], NULL, reader_thread, &args[i]), 0);
	}
	writer(&cat, &sh);
	for (int i = 0; i < NREADERS; i++)
		pthread_join(tids[i], NULL);
	check_results(&sh);
	fixture_cat_free(&cat);
}

/* A writer that died mid-section: the slot stays odd, readers return -EAGAIN promptly. */
static void test_dead_writer(void **state)
{
	struct chunkd_cat_map cat;
	fixture_cat(&cat, 4);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		chunkd__seq_write_begin(&cat.slots[1].seq);
		chunkd__store_relaxed(&cat.slots[1].first_block, 123);
		_exit(0); /* dies inside the write section */
	}
	int st;
	waitpid(pid, &st, 0);
	struct chunkd_slot_copy c;
	uint64_t t0 = fixture_now_ms();
	assert_int_equal(chunkd__slot_read(&cat, 1, &c), -EAGAIN);
	assert_true(fixture_now_ms() - t0 < 5000);
	assert_int_equal(chunkd__slot_read(&cat, 0, &c), 0);
	fixture_cat_free(&cat);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_torture_processes),
		cmocka_unit_test(test_torture_threads),
		cmocka_unit_test(test_dead_writer),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
