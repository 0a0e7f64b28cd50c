/*
 * test_wake.c — the enqueue's conditional doorbell (docs/shm-layout.md, "Waking the daemon"): a
 * chunkd_download or chunkd_delete rings only when the daemon's loop may be blocked (need_wake
 * reads 1), and the loop looks at every ring before it blocks.
 * (a) an idle daemon is woken by one request: once need_wake reads 1, a chunkd_delete of an
 *     unknown id completes within a deadline;
 * (b) no request is lost: rounds of bursts of deletes of unknown ids from several threads in
 *     several processes at once, every round started against a daemon that has gone idle (half
 *     of them after need_wake reads 1, half right after the previous round's tickets), every
 *     ticket waited for with a deadline.
 * The deadlines stay below the waker thread's 5 s timeout (daemon/loop.c), after which it would
 * wake the loop on its own when need_wake is 0, so that it cannot hide a lost wake-up.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h> /* after the four above, which it needs */

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"

#define READY_MS 20000
#define IDLE_MS  20000 /* until the loop stores need_wake = 1 */
#define WAIT_MS  4000  /* a delete of an unknown id: one journal commit; below the waker's 5 s */
#define CHILD_MS 20000 /* a child's answer to the parent */
#define NPROCS   3
#define NTHREADS 2
#define ROUNDS   150
#define BURST    24 /* a thread's burst is 1..BURST deletes */

static const char *const gen_args[] = {"--datasets", "1",  "--chunks", "2", "--files", "1",
				       "--size",     "64", "--seed",   "5", NULL};

static int group_setup(void **state)
{
	(void)state;
	th_require();
	struct th_env *e = calloc(1, sizeof(*e));
	if (!e)
		return -1;
	if (th_env_init(e, "wake") < 0 || th_env_gen(e, gen_args) < 0 ||
	    th_env_start(e, NULL, READY_MS, NULL) < 0) {
		th_env_fini(e);
		free(e);
		return -1;
	}
	*state = e;
	return 0;
}

static int group_teardown(void **state)
{
	struct th_env *e = *state;
	th_env_fini(e);
	free(e);
	return 0;
}

static int loop_idle(void *arg)
{
	return th_need_wake(arg) == 1;
}

/* (a) A daemon whose loop went idle (need_wake 1) answers one delete of an unknown id. */
static void test_idle_daemon_is_woken(void **state)
{
	struct th_env *e = *state;
	chunkd_client *c;
	th_assert_ok(chunkd_open(e->name, &c));
	for (uint32_t i = 0; i < 20; i++) {
		if (th_wait(loop_idle, e->name, IDLE_MS) < 0)
			fail_msg("round %u: need_wake never read 1 (the loop never went idle)", i);
		chunkd_id id;
		th_make_id(&id, 0x77616b65, i); /* "wake" */
		uint64_t t = 0;
		th_assert_ok(chunkd_delete(c, &id, &t));
		int r = chunkd_wait(c, t, WAIT_MS);
		if (r != 0)
			fail_msg("round %u: the idle daemon did not answer a delete within %d ms: "
				 "chunkd_wait = %d (%s)",
				 i, WAIT_MS, r, chunkd_strerror(r));
	}
	chunkd_close(c);
}

/* ---- (b): bursts from several threads of several processes --------------------------------- */

struct burster {
	pthread_t thread;
	chunkd_client *c;
	uint32_t proc, index, round, n;
	uint64_t seed;
	char failure[200]; /* empty if the burst went well */
};

/* One burst: enqueue n deletes of unknown ids, then wait for every ticket before the deadline. */
static void *burst_main(void *arg)
{
	struct burster *b = arg;
	uint64_t tickets[BURST];
	b->failure[0] = '\0';
	for (uint32_t i = 0; i < b->n; i++) {
		chunkd_id id;
		th_make_id(&id, 0x62000000u | b->proc << 8 | b->index, b->round * BURST + i);
		int r = chunkd_delete(b->c, &id, &tickets[i]);
		if (r != 0) {
			snprintf(b->failure, sizeof(b->failure), "chunkd_delete = %d (%s)", r,
				 chunkd_strerror(r));
			return NULL;
		}
	}
	uint64_t end = th_now_ns() + (uint64_t)WAIT_MS * 1000000;
	for (uint32_t i = 0; i < b->n; i++) {
		uint64_t now = th_now_ns();
		int left = now < end ? (int)((end - now) / 1000000) : 0;
		int r = chunkd_wait(b->c, tickets[i], left);
		if (r != 0) {
			snprintf(b->failure, sizeof(b->failure),
				 "request %u of %u (ticket %" PRIu64
				 "): chunkd_wait = %d (%s) within "
				 "%d ms of the burst's end",
				 i + 1, b->n, tickets[i], r, chunkd_strerror(r), WAIT_MS);
			return NULL;
		}
	}
	return NULL;
}

struct proc_args {
	const struct th_env *e;
	uint32_t proc;
	uint64_t seed;
};

/* A client process: on "go R", NTHREADS threads each make a burst; then "done R". */
static int burst_proc(struct th_child *self, void *arg)
{
	const struct proc_args *a = arg;
	chunkd_client *c;
	int r = chunkd_open(a->e->name, &c);
	TH_CHECK(self, r == 0, "chunkd_open = %d (%s)", r, chunkd_strerror(r));
	struct burster b[NTHREADS];
	uint64_t rng = a->seed ^ (uint64_t)a->proc << 40;
	th_say(self, "attached");
	for (;;) {
		char cmd[64];
		unsigned round;
		r = th_hear(self, cmd, sizeof(cmd), 60000);
		TH_CHECK(self, r >= 0, "no command from the parent: %d", r);
		if (!strcmp(cmd, "close"))
			break;
		TH_CHECK(self, sscanf(cmd, "go %u", &round) == 1, "bad command '%s'", cmd);
		for (uint32_t k = 0; k < NTHREADS; k++) {
			b[k] =
			    (struct burster){.c = c, .proc = a->proc, .index = k, .round = round};
			b[k].n = 1 + (uint32_t)(th_rand(&rng) % BURST);
			TH_CHECK(self, pthread_create(&b[k].thread, NULL, burst_main, &b[k]) == 0,
				 "pthread_create");
		}
		for (uint32_t k = 0; k < NTHREADS; k++)
			pthread_join(b[k].thread, NULL);
		for (uint32_t k = 0; k < NTHREADS; k++)
			TH_CHECK(self, !b[k].failure[0], "round %u, process %u, thread %u: %s",
				 round, a->proc, k, b[k].failure);
		th_say(self, "done %u", round);
	}
	chunkd_close(c);
	return 0;
}

/* (b) No request is lost while the producers ring only when the loop may be blocked. */
static void test_bursts_lose_nothing(void **state)
{
	struct th_env *e = *state;
	struct th_child ch[NPROCS];
	struct proc_args args[NPROCS];
	char line[256];
	uint64_t seed = th_seed();
	memset(ch, 0, sizeof(ch));
	for (uint32_t p = 0; p < NPROCS; p++) {
		args[p] = (struct proc_args){.e = e, .proc = p, .seed = seed};
		th_assert_ok(th_child_start(&ch[p], burst_proc, &args[p]));
	}
	for (uint32_t p = 0; p < NPROCS; p++)
		if (th_child_expect(&ch[p], "attached", line, sizeof(line), CHILD_MS) < 0)
			fail_msg("process %u did not attach; it said:\n%s", p,
				 th_child_output(&ch[p]));
	for (uint32_t round = 0; round < ROUNDS; round++) {
		/* Every round starts after all tickets of the last one: the loop is going idle.
		 * Half of them wait until it has stored need_wake = 1, so that the first request
		 * must ring; the others race with the loop's way into its wait. */
		if (round % 2 == 0 && th_wait(loop_idle, e->name, IDLE_MS) < 0)
			fail_msg("round %u: need_wake never read 1 (the loop never went idle)",
				 round);
		for (uint32_t p = 0; p < NPROCS; p++)
			th_assert_ok(th_child_send(&ch[p], "go %u", round));
		for (uint32_t p = 0; p < NPROCS; p++)
			if (th_child_expect(&ch[p], "done", line, sizeof(line), CHILD_MS) < 0)
				fail_msg("round %u: process %u failed; it said:\n%s", round, p,
					 th_child_output(&ch[p]));
	}
	for (uint32_t p = 0; p < NPROCS; p++) {
		th_assert_ok(th_child_send(&ch[p], "close"));
		th_assert_child_ok(&ch[p], CHILD_MS);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_idle_daemon_is_woken),
	    cmocka_unit_test(test_bursts_lose_nothing),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
