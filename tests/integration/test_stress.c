/*
 * test_stress.c — eight client processes do random finds, downloads and deletes over ~40 chunks
 * served by nginx for $CHUNKD_STRESS_SECONDS seconds (default 30), while a checker process
 * continuously finds chunks and verifies that every chunk it pins is complete and byte-identical
 * to the origin. Then, after quiescence:
 *
 *   - nothing lost: every ticket completed with a valid outcome (download: 0 or -ECANCELED,
 *     delete: 0), and every enqueue was accepted;
 *   - nothing hung: every wait returned before its deadline (HANG_MS after the enqueue);
 *   - the catalogue, the disk and chunkd_status agree chunk by chunk (PRESENT, listed, findable,
 *     directory byte-identical; or ABSENT, unlisted, unfindable, no directory), and staging/ and
 *     trash/ are empty;
 *   - the idle daemon uses no CPU: utime + stime from /proc/PID/stat grow by at most
 *     IDLE_TICKS over an IDLE_WINDOW_MS measurement window.
 *
 * The random choices are seeded by th_seed() ($CHUNKD_TEST_SEED repeats a run's choices, not
 * its timing).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h> /* after the four above, which it needs */

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "fault_helpers.h"
#include "harness.h"

#define NWORKERS        8
#define NCHUNKS         40
#define MAX_OUTSTANDING 64    /* tickets a worker leaves pending before it waits for the oldest */
#define MAX_HELD        4     /* pins a worker holds across its iterations */
#define HANG_MS         30000 /* a ticket not done this long after its enqueue is a hang */
#define READY_MS        20000
#define SETTLE_MS       30000
#define IDLE_WINDOW_MS  2000
#define IDLE_TICKS      2

static const char *const gen_args[] = {"--flat", "--datasets", "4",     "--chunks", "40", "--files",
				       "2",      "--size",     "32768", "--seed",   "5",  NULL};

struct wstats {
	uint64_t finds, hits, downloads, deletes, dl_ok, dl_cancelled, waits, max_wait_ms;
	uint64_t bad;         /* tickets that ended with an invalid outcome */
	int32_t bad_rc[2];    /* the last invalid outcome of a download [0] and of a delete [1] */
	uint64_t bad_kind[2]; /* how many of each */
};

struct shared {
	uint32_t stop; /* atomic: workers and the checker stop */
	struct wstats w[NWORKERS];
	uint64_t ck_finds, ck_hits, ck_bytes;
	uint64_t find_eagain; /* atomic: chunkd_find answers -EAGAIN (see fh_find) */
};

static struct {
	struct th_env env;
	struct fh_server origin;
	struct fh_origin bytes;
	char www[PATH_MAX];
	struct fh_desc desc[NCHUNKS];
	struct shared *sh;
	uint64_t seed;
} S;

static int group_setup(void **state)
{
	static const char *const daemon_args[] = {"--chunks-in-flight", "4", NULL};
	char dir[PATH_MAX], url[128];
	(void)state;
	th_require();
	if (!fh_server_available("nginx.sh")) {
		fprintf(stderr, "test_stress: tests/servers/nginx.sh missing\n");
		exit(TH_EXIT_SKIP);
	}
	S.seed = th_seed();
	if (th_env_init(&S.env, "stress") < 0)
		goto err;
	snprintf(S.www, sizeof(S.www), "%s/www", S.env.root);
	if (th_gen_chunks(S.www, S.env.manifest_json, gen_args, &S.env.man) < 0 ||
	    S.env.man.n != NCHUNKS || fh_origin_load(&S.bytes, S.www, &S.env.man) < 0)
		goto err;
	th_env_path(&S.env, dir, sizeof(dir), "nginx");
	int r = fh_nginx_start(&S.origin, S.www, dir, 20000);
	if (r == -ENOSYS) {
		fh_origin_free(&S.bytes);
		th_env_fini(&S.env);
		exit(TH_EXIT_SKIP); /* no nginx here */
	}
	if (r < 0)
		goto err;
	fh_server_url(&S.origin, url, sizeof(url));
	for (int i = 0; i < NCHUNKS; i++)
		if (fh_desc_init(&S.desc[i], &S.env.man.chunks[i], url) < 0)
			goto err;
	if (th_env_start(&S.env, daemon_args, READY_MS, NULL) < 0)
		goto err;
	S.sh = mmap(NULL, sizeof(*S.sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (S.sh == MAP_FAILED) {
		S.sh = NULL;
		goto err;
	}
	return 0;
err:
	fh_server_stop(&S.origin);
	fh_origin_free(&S.bytes);
	th_env_fini(&S.env);
	return -1;
}

static int group_teardown(void **state)
{
	(void)state;
	th_children_kill_all();
	th_daemon_cleanup(&S.env.d);
	fh_server_stop(&S.origin);
	fh_origin_free(&S.bytes);
	if (S.sh)
		munmap(S.sh, sizeof(*S.sh));
	th_env_fini(&S.env);
	return 0;
}

static int stopped(void)
{
	/* Pairs with the parent's release store. */
	return __atomic_load_n(&S.sh->stop, __ATOMIC_ACQUIRE) != 0;
}

/* ---- workers -------------------------------------------------------------------------------- */

enum { OP_DOWNLOAD = 1, OP_DELETE = 2 };

struct pending {
	uint64_t ticket;
	uint64_t enq_ns;
	int kind; /* OP_* */
	int chunk;
};

/*
 * Count a final ticket outcome. An invalid one is counted (with its value) rather than reported
 * at once, so that the run goes on and the end of the test reports every kind of failure; the
 * first few are printed.
 */
static void ticket_done(struct wstats *w, const struct pending *p, int r)
{
	uint64_t ms = (th_now_ns() - p->enq_ns) / 1000000;
	const struct th_chunk *ch = &S.env.man.chunks[p->chunk];
	w->waits++;
	if (ms > w->max_wait_ms)
		w->max_wait_ms = ms;
	int ok = p->kind == OP_DOWNLOAD ? r == 0 || r == -ECANCELED : r == 0;
	if (p->kind == OP_DOWNLOAD && r == 0)
		w->dl_ok++;
	if (p->kind == OP_DOWNLOAD && r == -ECANCELED)
		w->dl_cancelled++;
	if (ok)
		return;
	if (w->bad++ < 3)
		fprintf(stderr,
			"test_stress: pid %d: %s of %.16s (ticket %" PRIu64 ") ended %d (%s)\n",
			(int)getpid(), p->kind == OP_DOWNLOAD ? "download" : "delete", ch->id_hex,
			p->ticket, r, chunkd_strerror(r));
	w->bad_rc[p->kind - 1] = r;
	w->bad_kind[p->kind - 1]++;
}

/* Wait for the oldest pending ticket until its HANG_MS deadline; 0, or 1 after reporting. */
static int wait_oldest(struct th_child *self, chunkd_client *c, struct wstats *w,
		       struct pending *pend, uint32_t *n)
{
	struct pending p = pend[0];
	int64_t left = (int64_t)HANG_MS - (int64_t)((th_now_ns() - p.enq_ns) / 1000000);
	int r = chunkd_wait(c, p.ticket, left > 0 ? (int)left : 0);
	const struct th_chunk *ch = &S.env.man.chunks[p.chunk];
	TH_CHECK(self, r != -ETIMEDOUT,
		 "%s of %.16s (ticket %" PRIu64 ") not done %d ms after its enqueue: a hang",
		 p.kind == OP_DOWNLOAD ? "download" : "delete", ch->id_hex, p.ticket, HANG_MS);
	memmove(pend, pend + 1, (*n - 1) * sizeof(*pend));
	(*n)--;
	ticket_done(w, &p, r);
	return 0;
}

static int worker_main(struct th_child *self, void *arg)
{
	int me = (int)(intptr_t)arg;
	struct wstats *w = &S.sh->w[me];
	uint64_t rng = S.seed * 131 + (uint64_t)me;
	static struct pending pend[MAX_OUTSTANDING];
	uint32_t npend = 0;
	chunkd_ref held[MAX_HELD];
	int nheld = 0;
	chunkd_client *c;
	int r = chunkd_open(S.env.name, &c);
	TH_CHECK(self, r == 0, "chunkd_open = %d", r);
	th_say(self, "ready");
	while (!stopped()) {
		uint64_t dice = th_rand(&rng) % 100;
		if (dice < 70) {
			/* Any block of any dataset, gaps and ends included. */
			const chunkd_id *ds =
			    &S.env.man.datasets[th_rand(&rng) % S.env.man.ndatasets];
			uint64_t block = th_rand(&rng) % (th_manifest_max_end(&S.env.man, ds) + 10);
			const struct th_chunk *ch = th_manifest_find(&S.env.man, ds, block);
			chunkd_ref ref;
			r = fh_find(c, ds, block, &ref, &S.sh->find_eagain);
			w->finds++;
			TH_CHECK(self, r == 0 || r == -ENOENT, "chunkd_find = %d (%s)", r,
				 chunkd_strerror(r));
			if (r == 0) {
				w->hits++;
				int same = ch && !memcmp(&ref.id, &ch->id, sizeof(ch->id)) &&
					   ref.first_block == ch->first && ref.end_block == ch->end;
				TH_CHECK(self, same,
					 "block %" PRIu64 ": pinned a chunk of another range",
					 block);
				if (nheld < MAX_HELD && th_rand(&rng) % 4 == 0)
					held[nheld++] = ref;
				else
					chunkd_release(c, &ref);
			}
		} else {
			if (npend == MAX_OUTSTANDING && wait_oldest(self, c, w, pend, &npend))
				return 1;
			int k = (int)(th_rand(&rng) % NCHUNKS);
			struct pending *p = &pend[npend];
			p->chunk = k;
			p->kind = dice < 92 ? OP_DOWNLOAD : OP_DELETE;
			if (p->kind == OP_DOWNLOAD) {
				r = chunkd_download(c, &S.desc[k].c, &p->ticket);
				w->downloads++;
			} else {
				r = chunkd_delete(c, &S.env.man.chunks[k].id, &p->ticket);
				w->deletes++;
			}
			TH_CHECK(self, r == 0, "%s = %d (%s)",
				 p->kind == OP_DOWNLOAD ? "download" : "delete", r,
				 chunkd_strerror(r));
			p->enq_ns = th_now_ns();
			npend++;
		}
		if (nheld && th_rand(&rng) % 8 == 0) {
			int k = (int)(th_rand(&rng) % (uint64_t)nheld);
			chunkd_release(c, &held[k]);
			held[k] = held[--nheld];
		}
		/* Collect what is done already, oldest first. */
		while (npend) {
			r = chunkd_wait(c, pend[0].ticket, 0);
			if (r == -ETIMEDOUT) {
				TH_CHECK(self,
					 th_now_ns() - pend[0].enq_ns < (uint64_t)HANG_MS * 1000000,
					 "ticket %" PRIu64
					 " not done %d ms after its enqueue: a hang",
					 pend[0].ticket, HANG_MS);
				break;
			}
			struct pending p = pend[0];
			memmove(pend, pend + 1, (npend - 1) * sizeof(*pend));
			npend--;
			ticket_done(w, &p, r);
		}
		th_pause(); /* pacing, not synchronisation: nine processes share two cores */
	}
	while (nheld)
		chunkd_release(c, &held[--nheld]);
	while (npend)
		if (wait_oldest(self, c, w, pend, &npend))
			return 1;
	chunkd_close(c);
	th_say(self, "done");
	return 0;
}

/* ---- the checker ---------------------------------------------------------------------------- */

static int checker_main(struct th_child *self, void *arg)
{
	uint64_t rng = S.seed ^ 0xc4ec;
	char why[FH_WHY_LEN];
	chunkd_client *c;
	(void)arg;
	int r = chunkd_open(S.env.name, &c);
	TH_CHECK(self, r == 0, "chunkd_open = %d", r);
	th_say(self, "ready");
	while (!stopped()) {
		const struct th_chunk *ch = &S.env.man.chunks[th_rand(&rng) % NCHUNKS];
		uint64_t block = ch->first + th_rand(&rng) % (ch->end - ch->first);
		chunkd_ref ref;
		r = fh_find(c, &ch->dataset, block, &ref, &S.sh->find_eagain);
		S.sh->ck_finds++;
		TH_CHECK(self, r == 0 || r == -ENOENT, "chunkd_find = %d (%s)", r,
			 chunkd_strerror(r));
		if (r == 0) {
			S.sh->ck_hits++;
			int same = !memcmp(&ref.id, &ch->id, sizeof(ch->id)) &&
				   ref.first_block == ch->first && ref.end_block == ch->end;
			int bad = !same || fh_check_dir(ref.path, fh_origin_find(&S.bytes, &ch->id),
							&S.sh->ck_bytes, why, sizeof(why));
			chunkd_release(c, &ref);
			TH_CHECK(self, same, "block %" PRIu64 " of %.16s: pinned another chunk",
				 block, ch->id_hex);
			TH_CHECK(self, !bad, "found chunk %.16s: %s", ch->id_hex, why);
		}
		th_pause();
	}
	chunkd_close(c);
	th_say(self, "done");
	return 0;
}

/* ---- the test ------------------------------------------------------------------------------- */

/* Every chunk in a final state with no pin, and nothing in staging/ or trash/. */
static int quiescent(void *arg)
{
	chunkd_client *c = arg;
	for (int i = 0; i < NCHUNKS; i++) {
		chunkd_chunk_status st;
		if (chunkd_status(c, &S.env.man.chunks[i].id, &st) < 0)
			return 0;
		if ((st.state != CHUNKD_CHUNK_PRESENT && st.state != CHUNKD_CHUNK_ABSENT) ||
		    st.pins)
			return 0;
	}
	return fh_leftovers(S.env.data_dir, NULL, 0) == 0;
}

/* The catalogue, chunkd_status and the disk agree for every chunk; returns the number present. */
static size_t check_consistent(chunkd_client *c)
{
	char path[PATH_MAX], why[FH_WHY_LEN], sts[512];
	chunkd_id listed[NCHUNKS + 8];
	size_t nlisted = 0, present = 0;
	th_assert_ok(chunkd_list(c, listed, NCHUNKS + 8, &nlisted));
	for (int i = 0; i < NCHUNKS; i++) {
		const struct th_chunk *ch = &S.env.man.chunks[i];
		chunkd_chunk_status st;
		th_assert_ok(chunkd_status(c, &ch->id, &st));
		fh_status_str(&st, sts, sizeof(sts));
		int in_list = 0;
		for (size_t k = 0; k < nlisted; k++)
			in_list |= !memcmp(&listed[k], &ch->id, sizeof(ch->id));
		fh_chunk_path(path, sizeof(path), S.env.data_dir, ch);
		chunkd_ref ref;
		int r = chunkd_find(c, &ch->dataset, ch->first, &ref);
		int found = r == 0;
		if (found) {
			int same =
			    !memcmp(&ref.id, &ch->id, sizeof(ch->id)) && !strcmp(ref.path, path);
			chunkd_release(c, &ref);
			if (!same)
				fail_msg("chunk %d (%.16s): find pinned another chunk or path", i,
					 ch->id_hex);
		} else if (r != -ENOENT) {
			fail_msg("chunk %d: chunkd_find = %d", i, r);
		}
		int on_disk = th_exists(path);
		if (st.state == CHUNKD_CHUNK_PRESENT) {
			present++;
			if (!in_list || !found || !on_disk)
				fail_msg(
				    "chunk %d (%.16s) %s but listed %d, found %d, directory %d", i,
				    ch->id_hex, sts, in_list, found, on_disk);
			if (fh_check_dir(path, fh_origin_find(&S.bytes, &ch->id), NULL, why,
					 sizeof(why)))
				fail_msg("chunk %d: %s", i, why);
		} else if (st.state != CHUNKD_CHUNK_ABSENT || in_list || found || on_disk) {
			fail_msg("chunk %d (%.16s) %s, listed %d, found %d, directory %d", i,
				 ch->id_hex, sts, in_list, found, on_disk);
		}
	}
	if (nlisted != present)
		fail_msg("chunkd_list has %zu chunks, %zu are PRESENT", nlisted, present);
	/* No directory but the present chunks'. */
	size_t dirs = 0;
	for (size_t d = 0; d < S.env.man.ndatasets; d++) {
		char hex[2 * CHUNKD_ID_SIZE + 1];
		th_hex(&S.env.man.datasets[d], hex);
		snprintf(path, sizeof(path), "%s/chunks/%s", S.env.data_dir, hex);
		int n = th_count_entries(path);
		if (n > 0)
			dirs += (size_t)n;
	}
	if (dirs != present)
		fail_msg("%zu chunk directories under chunks/, %zu chunks PRESENT", dirs, present);
	return present;
}

/* Wait out a measurement window: this is the window, not a wait for a condition. */
static void measurement_window(int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};
	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

static void test_stress(void **state)
{
	struct th_child workers[NWORKERS], checker;
	char line[512], why[FH_WHY_LEN];
	(void)state;
	const char *env = getenv("CHUNKD_STRESS_SECONDS");
	int seconds = env && *env ? atoi(env) : 30;
	if (seconds < 1)
		seconds = 1;
	memset(S.sh, 0, sizeof(*S.sh));

	th_assert_ok(th_child_start(&checker, checker_main, NULL));
	if (th_child_expect(&checker, "ready", line, sizeof(line), 20000))
		fail_msg("checker: %s", th_child_output(&checker));
	for (int i = 0; i < NWORKERS; i++) {
		th_assert_ok(th_child_start(&workers[i], worker_main, (void *)(intptr_t)i));
		if (th_child_expect(&workers[i], "ready", line, sizeof(line), 20000))
			fail_msg("worker %d: %s", i, th_child_output(&workers[i]));
	}
	/* Run for the duration, or until a child reports a failure (it says FAIL and exits). */
	struct th_deadline run;
	int failed = -1;
	for (th_deadline_start(&run, seconds * 1000); !th_deadline_passed(&run) && failed < 0;) {
		for (int i = 0; i <= NWORKERS && failed < 0; i++) {
			struct th_child *ch = i < NWORKERS ? &workers[i] : &checker;
			int r = th_child_recv(ch, line, sizeof(line), 20);
			if (r != -ETIMEDOUT)
				failed = i;
		}
	}
	/* Pairs with the children's acquire loads. */
	__atomic_store_n(&S.sh->stop, 1, __ATOMIC_RELEASE);
	for (int i = 0; i < NWORKERS; i++) {
		int st = th_child_finish(&workers[i], HANG_MS + 20000);
		if (!th_exited_with(st, 0))
			fail_msg("seed %" PRIu64 ": worker %d: %s; it said:\n%s", S.seed, i,
				 th_status_str(st, why, sizeof(why)), th_child_output(&workers[i]));
	}
	int st = th_child_finish(&checker, 20000);
	if (!th_exited_with(st, 0))
		fail_msg("seed %" PRIu64 ": checker: %s; it said:\n%s", S.seed,
			 th_status_str(st, why, sizeof(why)), th_child_output(&checker));
	if (failed >= 0)
		fail_msg("child %d stopped early", failed);

	struct wstats tot = {0};
	for (int i = 0; i < NWORKERS; i++) {
		const struct wstats *w = &S.sh->w[i];
		tot.finds += w->finds;
		tot.hits += w->hits;
		tot.downloads += w->downloads;
		tot.deletes += w->deletes;
		tot.dl_ok += w->dl_ok;
		tot.dl_cancelled += w->dl_cancelled;
		tot.waits += w->waits;
		tot.bad += w->bad;
		for (int k = 0; k < 2; k++) {
			tot.bad_kind[k] += w->bad_kind[k];
			if (w->bad_kind[k])
				tot.bad_rc[k] = w->bad_rc[k];
		}
		if (w->max_wait_ms > tot.max_wait_ms)
			tot.max_wait_ms = w->max_wait_ms;
	}
	/* Nothing lost: every request was waited for (the hangs failed the children already). */
	assert_int_equal(tot.waits, tot.downloads + tot.deletes);

	chunkd_client *c;
	th_assert_ok(chunkd_open(S.env.name, &c));
	if (th_wait(quiescent, c, SETTLE_MS) < 0) {
		fh_leftovers(S.env.data_dir, why, sizeof(why));
		fail_msg("not quiescent %d ms after the load: leftovers:%s", SETTLE_MS, why);
	}
	size_t present = check_consistent(c);
	chunkd_close(c);

	fprintf(stderr,
		"test_stress: %d s, seed %" PRIu64 ": %" PRIu64 " finds (%" PRIu64
		" hits), %" PRIu64 " downloads (%" PRIu64 " done, %" PRIu64 " cancelled), %" PRIu64
		" deletes, longest wait %" PRIu64 " ms; checker %" PRIu64 " finds, %" PRIu64
		" pinned, %" PRIu64 " bytes verified; %zu chunks present at the end\n",
		seconds, S.seed, tot.finds, tot.hits, tot.downloads, tot.dl_ok, tot.dl_cancelled,
		tot.deletes, tot.max_wait_ms, S.sh->ck_finds, S.sh->ck_hits, S.sh->ck_bytes,
		present);
	assert_true(S.sh->ck_hits > 0);
	assert_true(tot.dl_ok > 0);
	/* Idle: no client is attached, nothing is pending. */
	uint64_t before, after;
	th_assert_ok(fh_proc_cpu_ticks(S.env.d.pid, &before));
	measurement_window(IDLE_WINDOW_MS);
	th_assert_ok(fh_proc_cpu_ticks(S.env.d.pid, &after));
	fprintf(stderr, "test_stress: idle daemon used %" PRIu64 " ticks in %d ms\n",
		after - before, IDLE_WINDOW_MS);
	if (after - before > IDLE_TICKS)
		fail_msg("the idle daemon used %" PRIu64 " clock ticks in %d ms (at most %d)",
			 after - before, IDLE_WINDOW_MS, IDLE_TICKS);
	assert_true(th_daemon_running(&S.env.d));
	/* Last, so that everything else was checked: every ticket ended well (download 0 or
	 * -ECANCELED, delete 0), and chunkd_find never answered -EAGAIN. */
	if (tot.bad || S.sh->find_eagain)
		fail_msg(
		    "%" PRIu64 " tickets ended badly: %" PRIu64 " downloads (the last %d, %s), "
		    "%" PRIu64 " deletes (the last %d, %s); chunkd_find answered -EAGAIN %" PRIu64
		    " times with a live daemon (see integration_model)",
		    tot.bad, tot.bad_kind[0], tot.bad_rc[0], chunkd_strerror(tot.bad_rc[0]),
		    tot.bad_kind[1], tot.bad_rc[1], chunkd_strerror(tot.bad_rc[1]),
		    S.sh->find_eagain);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_stress),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
