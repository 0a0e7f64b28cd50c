/*
 * test_pin_stress.c — several client processes find and release chunks as fast as they can for a
 * few seconds, holding a changing set of pins, while the test keeps attaching short-lived clients
 * that die holding pins (SIGKILL), exit without closing, or close. Every answer is checked against
 * the generator's manifest: the chunk found is the one that holds the block (same id, range and
 * directory), and a miss is a block no chunk holds. Afterwards every client slot is free again and
 * the daemon is alive, then stops cleanly.
 *
 * The daemon cannot delete chunks yet, so the catalogue does not change under the clients; when it
 * can, this test is where concurrent deletes belong.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h> /* after the four above, which it needs */

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

#define NWORKERS    4
#define STRESS_MS   3000
#define HELD_MAX    16 /* pins a worker holds at most before releasing the oldest */
#define MAX_CLIENTS 32
#define BACKLOG     8 /* gone clients the daemon may have left to reap before the next one starts */

static struct th_env env;

static int group_setup(void **state)
{
	static const char *const gen[] = {"--datasets", "10", "--chunks", "500", "--files", "1",
					  "--size",     "16", "--seed",   "5",   NULL};
	static const char *const args[] = {"--max-clients", "32", NULL};
	_Static_assert(NWORKERS + BACKLOG + 1 < MAX_CLIENTS, "room for workers, backlog and one");
	(void)state;
	th_require();
	th_seed(); /* picked and printed once, before the workers inherit it */
	if (th_env_init(&env, "stress") < 0 || th_env_gen(&env, gen) < 0 ||
	    th_env_start(&env, args, 20000, NULL) < 0) {
		th_env_fini(&env);
		return -1;
	}
	return 0;
}

static int group_teardown(void **state)
{
	(void)state;
	th_env_fini(&env);
	return 0;
}

/* ---- a worker ------------------------------------------------------------------------------- */

struct worker_stats {
	unsigned long ops, found, missing;
};

/* Pick a (dataset, block) to look up: mostly at and around chunk edges, some anywhere. */
static void pick(uint64_t *rng, chunkd_id *ds, uint64_t *block)
{
	uint64_t r = th_rand(rng) % 100;
	if (r < 70) {
		const struct th_chunk *c = &env.man.chunks[th_rand(rng) % env.man.n];
		uint64_t span = c->end - c->first + 4;
		*ds = c->dataset;
		*block = c->first + th_rand(rng) % span;
		*block = *block >= 2 ? *block - 2 : *block; /* [first - 2, end + 2) */
	} else if (r < 95) {
		*ds = env.man.datasets[th_rand(rng) % env.man.ndatasets];
		*block = th_rand(rng) % (th_manifest_max_end(&env.man, ds) + 50);
	} else if (r < 98) {
		th_make_id(ds, 0x57e5, (uint32_t)(th_rand(rng) % 4));
		*block = th_rand(rng) % 100000;
	} else {
		*ds = env.man.datasets[th_rand(rng) % env.man.ndatasets];
		*block = UINT64_MAX - th_rand(rng) % 2;
	}
}

static int worker_main(struct th_child *self, void *arg)
{
	uint64_t rng = th_seed() ^ (uint64_t)(uintptr_t)arg * 0x9E3779B97F4A7C15ull;
	struct worker_stats st = {0, 0, 0};
	chunkd_client *c;
	chunkd_ref held[HELD_MAX];
	const struct th_chunk *held_want[HELD_MAX];
	size_t nheld = 0, oldest = 0;
	char cmd[32], path[PATH_MAX];
	int r = chunkd_open(env.name, &c);
	TH_CHECK(self, r == 0, "chunkd_open = %d (%s): %s", r, chunkd_strerror(r),
		 chunkd_last_error());
	th_say(self, "attached");
	r = th_hear(self, cmd, sizeof(cmd), 30000);
	TH_CHECK(self, r >= 0 && !strcmp(cmd, "go"), "no go from the parent: %d", r);

	uint64_t end = th_now_ns() + (uint64_t)STRESS_MS * 1000000ull;
	while ((st.ops & 255) || th_now_ns() < end) {
		chunkd_id ds;
		uint64_t block;
		chunkd_ref ref;
		pick(&rng, &ds, &block);
		const struct th_chunk *want = th_manifest_find(&env.man, &ds, block);
		r = chunkd_find(c, &ds, block, &ref);
		st.ops++;
		if (!want) {
			TH_CHECK(self, r == -ENOENT,
				 "block %" PRIu64 " of a dataset: want -ENOENT, got %d "
				 "[%" PRIu64 ", %" PRIu64 ")",
				 block, r, ref.first_block, ref.end_block);
			st.missing++;
			continue;
		}
		TH_CHECK(self, r == 0, "chunk %.16s block %" PRIu64 ": chunkd_find = %d (%s)",
			 want->id_hex, block, r, chunkd_strerror(r));
		TH_CHECK(self,
			 !memcmp(&ref.id, &want->id, sizeof(want->id)) &&
			     !memcmp(&ref.dataset, &ds, sizeof(ds)) &&
			     ref.first_block == want->first && ref.end_block == want->end &&
			     ref.first_block <= block && block < ref.end_block,
			 "block %" PRIu64 ": want %.16s [%" PRIu64 ", %" PRIu64 "), got [%" PRIu64
			 ", %" PRIu64 ")",
			 block, want->id_hex, want->first, want->end, ref.first_block,
			 ref.end_block);
		snprintf(path, sizeof(path), "%s/%s", env.data_dir, want->dir);
		TH_CHECK(self, ref.path && !strcmp(ref.path, path),
			 "block %" PRIu64 ": path %s, want %s", block,
			 ref.path ? ref.path : "(null)", path);
		st.found++;
		/* Keep it pinned for a while: a FIFO of up to HELD_MAX pins. */
		if (nheld == HELD_MAX) {
			/* A held ref still names its chunk; the pin kept it. */
			const chunkd_ref *o = &held[oldest];
			TH_CHECK(self,
				 !memcmp(&o->id, &held_want[oldest]->id, sizeof(o->id)) &&
				     strstr(o->path, held_want[oldest]->id_hex),
				 "a held ref changed under its pin");
			chunkd_release(c, &held[oldest]);
			held[oldest] = ref;
			held_want[oldest] = want;
			oldest = (oldest + 1) % HELD_MAX;
		} else {
			held[nheld] = ref;
			held_want[nheld++] = want;
		}
	}
	for (size_t i = 0; i < nheld; i++)
		chunkd_release(c, &held[i]);
	chunkd_close(c);
	th_say(self, "ops %lu found %lu missing %lu", st.ops, st.found, st.missing);
	return 0;
}

/* ---- short-lived clients -------------------------------------------------------------------- */

enum churn_end { CHURN_KILL, CHURN_EXIT, CHURN_CLOSE };

static int churn_main(struct th_child *self, void *arg)
{
	enum churn_end how = (enum churn_end)(uintptr_t)arg;
	chunkd_client *c;
	chunkd_ref ref;
	int r = chunkd_open(env.name, &c);
	TH_CHECK(self, r == 0, "chunkd_open = %d (%s): %s", r, chunkd_strerror(r),
		 chunkd_last_error());
	for (size_t i = 0; i < 3; i++) {
		const struct th_chunk *ch =
		    &env.man.chunks[((size_t)getpid() + i * 97) % env.man.n];
		r = chunkd_find(c, &ch->dataset, ch->end - 1, &ref);
		TH_CHECK(self, r == 0 && !memcmp(&ref.id, &ch->id, sizeof(ch->id)),
			 "chunk %.16s: chunkd_find = %d", ch->id_hex, r);
	}
	switch (how) {
	case CHURN_KILL:
		raise(SIGKILL); /* dies holding three pins */
		break;
	case CHURN_EXIT:
		break; /* exits holding three pins, without chunkd_close() */
	case CHURN_CLOSE:
		chunkd_close(c);
		break;
	}
	return 0;
}

/* ---- the test ------------------------------------------------------------------------------- */

static void test_pin_stress(void **state)
{
	struct th_child workers[NWORKERS], churn;
	char line[256], why[64];
	unsigned long total = 0, churned[3] = {0, 0, 0};
	(void)state;

	for (uintptr_t i = 0; i < NWORKERS; i++) {
		th_assert_ok(th_child_start(&workers[i], worker_main, (void *)i));
		if (th_child_expect(&workers[i], "attached", line, sizeof(line), 20000))
			fail_msg("worker %d: %s", (int)i, th_child_output(&workers[i]));
	}
	uint64_t t0 = th_now_ns();
	for (int i = 0; i < NWORKERS; i++)
		th_child_send(&workers[i], "go");

	/*
	 * Clients come and go while the workers run. The daemon reaps them asynchronously and, on
	 * two busy cores, may fall behind a fork loop; it has to catch up within a deadline, and
	 * the next client starts only when the slots it has not reaped yet are at most BACKLOG.
	 */
	unsigned long waits = 0;
	while (th_now_ns() - t0 < (uint64_t)STRESS_MS * 1000000ull) {
		struct th_deadline dl;
		int n;
		th_deadline_start(&dl, 10000);
		if (th_clients_in_use(env.name, 0) > NWORKERS + BACKLOG)
			waits++;
		while ((n = th_clients_in_use(env.name, 0)) > NWORKERS + BACKLOG) {
			if (th_deadline_passed(&dl)) {
				th_daemon_dump_log(&env.d);
				fail_msg(
				    "%d client slots taken: the daemon has not reaped gone clients "
				    "for 10 s",
				    n);
			}
			th_pause();
		}
		enum churn_end how = (enum churn_end)((churned[0] + churned[1] + churned[2]) % 3);
		th_assert_ok(th_child_start(&churn, churn_main, (void *)(uintptr_t)how));
		int st = th_child_finish(&churn, 20000);
		int ok = how == CHURN_KILL ? st >= 0 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL
					   : th_exited_with(st, 0);
		if (!ok)
			fail_msg("short-lived client (%d): %s; it said:\n%s", (int)how,
				 th_status_str(st, why, sizeof(why)), th_child_output(&churn));
		churned[how]++;
	}

	for (int i = 0; i < NWORKERS; i++) {
		unsigned long ops = 0, found = 0, missing = 0;
		if (th_child_expect(&workers[i], "ops", line, sizeof(line), 30000))
			fail_msg("worker %d: %s", i, th_child_output(&workers[i]));
		th_assert_child_ok(&workers[i], 10000);
		assert_int_equal(
		    sscanf(line, "ops %lu found %lu missing %lu", &ops, &found, &missing), 3);
		assert_true(ops > 0 && found > 0 && missing > 0);
		total += ops;
	}
	double secs = (double)(th_now_ns() - t0) / 1e9;
	print_message("%d workers: %lu look-ups in %.1f s (%.0f/s); %lu clients killed, %lu exited "
		      "without closing, %lu closed; waited %lu times for the daemon to reap\n",
		      NWORKERS, total, secs, (double)total / secs, churned[0], churned[1],
		      churned[2], waits);
	assert_true(churned[0] > 0 && churned[1] > 0 && churned[2] > 0);

	/* The daemon reaped every dead client and freed every closed one. */
	assert_true(th_daemon_running(&env.d));
	struct th_deadline dl;
	int n;
	for (th_deadline_start(&dl, 10000); (n = th_clients_in_use(env.name, 0)) != 0; th_pause())
		if (th_deadline_passed(&dl)) {
			th_daemon_dump_log(&env.d);
			fail_msg("%d client slots still taken 10 s after every client left", n);
		}
	chunkd_instance_info in;
	chunkd_client *c;
	assert_int_equal(chunkd_open(env.name, &c), 0);
	assert_int_equal(chunkd_info(c, &in), 0);
	assert_int_equal(in.daemon_alive, 1);
	assert_int_equal(in.nchunks, env.man.n);
	chunkd_close(c);
	int st = th_daemon_stop(&env.d, 10000);
	if (!th_exited_with(st, 0))
		fail_msg("SIGTERM after the stress: %s", th_status_str(st, why, sizeof(why)));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_pin_stress),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
