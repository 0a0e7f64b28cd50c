/*
 * test_model.c — the interleavings acceptance test: random download/delete sequences over a few
 * chunks from two client processes, with a third process pinning and releasing chunks at random,
 * checked against a model once everything has settled.
 *
 * The model. The daemon applies requests in the order it takes them from the rings, and it
 * takes the rings of different clients in an order of its own. To make that order known, the
 * parent draws a global schedule of NOPS operations (issuing process, download or delete,
 * chunk) and the two issuers follow it through a turn counter in shared memory: an issuer
 * enqueues operation g only when the turn is g, and before it hands the turn to the other
 * process it waits until the daemon has taken every record of its ring (fh_ring_wait_taken:
 * sq_head reached sq_tail, stored by the daemon after applying them). So the daemon applies the
 * operations exactly in schedule order, and per chunk id "the last accepted request wins" gives:
 *
 *   - a chunk whose last operation is a download is published: findable at every block of its
 *     range, listed, PRESENT in chunkd_status, its directory in DATA_DIR/chunks byte-identical to
 *     the origin;
 *   - any other chunk (last operation a delete, or never touched) is not findable, not listed,
 *     ABSENT, and has no directory;
 *   - every delete ticket ends 0; a download ticket ends 0, or -ECANCELED only when a delete of
 *     the same id comes after it in the schedule (and never when it is the chunk's last
 *     operation);
 *   - nothing is left in staging/ or trash/;
 *   - and in real time, checked by the issuers as tickets end: a download ticket that ends 0
 *     means the chunk is findable, a delete ticket that ends 0 means it is not, unless a later
 *     operation on the chunk may have been applied in the meantime (check_done()).
 *
 * What is random besides the schedule: when each issuer waits which of its tickets (polls with
 * short timeouts between its turns, the rest at the end), the pins each issuer takes and holds
 * across its own requests, and the pinner's finds and releases, which run concurrently with
 * everything (so deletes meet pinned chunks, and downloads meet chunks still being removed).
 * Half the chunks are served through a slow origin path, so that deletes and re-downloads meet
 * transfers in flight.
 *
 * The seed is fixed (MODEL_SEED) unless $CHUNKD_TEST_SEED is set; failures print it.
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
#include <unistd.h>

#include "fault_helpers.h"
#include "harness.h"

#define MODEL_SEED        20240607ull
#define NOPS              200
#define MODEL_ROUNDS      5 /* rounds of NOPS operations, each with its own schedule */
#define NCHUNKS           4
#define NISSUERS          2
#define MAX_HELD          6 /* pins the pinner holds at once */
#define READY_MS          20000
#define TURN_MS           20000 /* an issuer waiting this long for its turn: the other one hung */
#define TAKEN_MS          10000 /* the daemon takes a record within this */
#define FINAL_WAIT_MS     30000 /* every ticket completes within this after the last operation */
#define SETTLE_MS         20000 /* removals and leftovers settle within this */
#define CHILD_MS          60000
#define RACE_ROUNDS       100 /* test_find_racing_delete: download/delete rounds */
#define REDOWNLOAD_ROUNDS 50  /* test_redownload_during_removal: delete/download rounds */
#define SLOW_PREFIX       "fault/slow-524288" /* fault_server.py: 512 KiB/s */

static const char *const gen_args[] = {"--flat", "--datasets", "2",     "--chunks", "4",  "--files",
				       "2",      "--size",     "65536", "--seed",   "11", NULL};

enum { OP_DOWNLOAD = 1, OP_DELETE = 2 };

/* One operation of the schedule; the issuer fills the results. */
struct op {
	uint8_t proc, kind, chunk;
	int32_t enq; /* what chunkd_download/chunkd_delete returned */
	uint64_t ticket;
	int32_t outcome;  /* chunkd_wait's final answer */
	uint32_t waited;  /* 1 once outcome is final */
	uint64_t wait_ms; /* time from the enqueue to the final answer */
};

struct shared {
	uint32_t round;           /* the round being run (schedules differ per round) */
	uint64_t rseed;           /* the round's seed */
	uint8_t initial[NCHUNKS]; /* the model's state of each chunk before the round */
	uint32_t turn;            /* atomic: the next operation that may be enqueued */
	uint32_t stop;            /* atomic: the pinner stops */
	struct op ops[NOPS];
	uint64_t pinner_finds, pinner_hits, pinner_bytes;
	uint64_t issuer_finds[NISSUERS];
	uint64_t find_eagain; /* atomic: chunkd_find answers -EAGAIN (see fh_find) */
	uint64_t live_checks; /* atomic: check_done() calls that constrained the answer */
};

struct model {
	struct th_env env;
	struct fh_server origin, slow;
	struct fh_origin bytes;
	char www[PATH_MAX];
	char prefix[NCHUNKS][300];
	struct fh_desc desc[NCHUNKS];
	uint64_t seed;
	struct shared *sh;
};

static struct model M;

/* Failure messages name the base seed and the round: CHUNKD_TEST_SEED=seed repeats the rounds. */
#define SEED_FMT  "seed %" PRIu64 " round %u"
#define SEED_ARGS M.seed, M.sh->round

static int group_setup(void **state)
{
	static const char *const daemon_args[] = {"--chunks-in-flight", "2", "--log-level", "debug",
						  NULL};
	char dir[PATH_MAX], url[128];
	(void)state;
	th_require();
	if (!fh_server_available("nginx.sh") || !fh_server_available("fault_server.py")) {
		fprintf(stderr, "test_model: tests/servers/nginx.sh or fault_server.py missing\n");
		exit(TH_EXIT_SKIP);
	}
	const char *env = getenv("CHUNKD_TEST_SEED");
	M.seed = env && *env ? strtoull(env, NULL, 0) : MODEL_SEED;
	fprintf(stderr, "test_model: seed %" PRIu64 " (set CHUNKD_TEST_SEED to change)\n", M.seed);
	if (th_env_init(&M.env, "model") < 0)
		goto err;
	snprintf(M.www, sizeof(M.www), "%s/www", M.env.root);
	if (th_gen_chunks(M.www, M.env.manifest_json, gen_args, &M.env.man) < 0 ||
	    M.env.man.n != NCHUNKS || fh_origin_load(&M.bytes, M.www, &M.env.man) < 0)
		goto err;
	th_env_path(&M.env, dir, sizeof(dir), "nginx");
	int r = fh_nginx_start(&M.origin, M.www, dir, 20000);
	if (r == -ENOSYS) {
		fh_origin_free(&M.bytes);
		th_env_fini(&M.env);
		exit(TH_EXIT_SKIP); /* no nginx here */
	}
	if (r < 0)
		goto err;
	th_env_path(&M.env, dir, sizeof(dir), "slow");
	if (fh_fault_start(&M.slow, M.www, dir, 20000) < 0)
		goto err;
	/* Chunks 0 and 2 come from nginx at full speed; 1 and 3 through the slow path. */
	for (int i = 0; i < NCHUNKS; i++) {
		if (i % 2 == 0) {
			fh_server_url(&M.origin, M.prefix[i], sizeof(M.prefix[i]));
		} else {
			fh_server_url(&M.slow, url, sizeof(url));
			snprintf(M.prefix[i], sizeof(M.prefix[i]), "%s/%s", url, SLOW_PREFIX);
		}
		if (fh_desc_init(&M.desc[i], &M.env.man.chunks[i], M.prefix[i]) < 0)
			goto err;
	}
	if (th_env_start(&M.env, daemon_args, READY_MS, NULL) < 0)
		goto err;
	M.sh = mmap(NULL, sizeof(*M.sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (M.sh == MAP_FAILED) {
		M.sh = NULL;
		goto err;
	}
	return 0;
err:
	fh_server_stop(&M.slow);
	fh_server_stop(&M.origin);
	fh_origin_free(&M.bytes);
	th_env_fini(&M.env);
	return -1;
}

static int group_teardown(void **state)
{
	(void)state;
	th_children_kill_all();
	th_daemon_cleanup(&M.env.d);
	fh_server_stop(&M.slow);
	fh_server_stop(&M.origin);
	fh_origin_free(&M.bytes);
	if (M.sh)
		munmap(M.sh, sizeof(*M.sh));
	th_env_fini(&M.env);
	return 0;
}

static const char *kind_name(int kind)
{
	return kind == OP_DOWNLOAD ? "download" : "delete";
}

/* ---- the pinner ----------------------------------------------------------------------------- */

/*
 * Finds random blocks of the model's chunks, checks every chunk it pins (the right id and range,
 * a complete directory byte-identical to the origin), holds up to MAX_HELD pins for a random
 * number of its iterations and releases them in random order, until told to stop.
 */
static int pinner_main(struct th_child *self, void *arg)
{
	const struct model *m = arg;
	chunkd_client *c;
	chunkd_ref held[MAX_HELD];
	uint64_t rng = m->sh->rseed ^ 0x5157;
	int nheld = 0;
	char why[FH_WHY_LEN];
	int r = chunkd_open(m->env.name, &c);
	TH_CHECK(self, r == 0, "chunkd_open = %d", r);
	th_say(self, "ready");
	while (!__atomic_load_n(&m->sh->stop, __ATOMIC_ACQUIRE)) {
		if (nheld < MAX_HELD && th_rand(&rng) % 2) {
			const struct th_chunk *ch = &m->env.man.chunks[th_rand(&rng) % NCHUNKS];
			uint64_t block = ch->first + th_rand(&rng) % (ch->end - ch->first);
			r = fh_find(c, &ch->dataset, block, &held[nheld], &m->sh->find_eagain);
			m->sh->pinner_finds++;
			if (r == -ENOENT)
				goto pace;
			TH_CHECK(self, r == 0, "chunkd_find(%.16s, %" PRIu64 ") = %d (%s)",
				 ch->id_hex, block, r, chunkd_strerror(r));
			chunkd_ref *ref = &held[nheld++];
			m->sh->pinner_hits++;
			TH_CHECK(self,
				 !memcmp(&ref->id, &ch->id, sizeof(ch->id)) &&
				     ref->first_block == ch->first && ref->end_block == ch->end,
				 "block %" PRIu64 " of %.16s: found another chunk", block,
				 ch->id_hex);
			const struct fh_origin_chunk *oc = fh_origin_find(&m->bytes, &ch->id);
			TH_CHECK(self,
				 fh_check_dir(ref->path, oc, &m->sh->pinner_bytes, why,
					      sizeof(why)) == 0,
				 "pinned chunk %.16s: %s", ch->id_hex, why);
		} else if (nheld > 0) {
			int k = (int)(th_rand(&rng) % (uint64_t)nheld);
			chunkd_release(c, &held[k]);
			held[k] = held[--nheld];
		}
	pace:
		th_pause(); /* pacing, not synchronisation: leave the two cores to the others */
	}
	while (nheld > 0)
		chunkd_release(c, &held[--nheld]);
	chunkd_close(c);
	return 0;
}

/* ---- the issuers ---------------------------------------------------------------------------- */

struct issuer {
	const struct model *m;
	int proc;
};

/* Record a final answer for op g. */
static void record(struct shared *sh, uint32_t g, int r, uint64_t enq_ns)
{
	sh->ops[g].outcome = r;
	sh->ops[g].wait_ms = (th_now_ns() - enq_ns) / 1000000;
	sh->ops[g].waited = 1;
}

/* Is there an operation of kind `kind` on `chunk` among ops (g, upto]? */
static int op_between(const struct shared *sh, uint32_t g, uint32_t upto, int chunk, int kind)
{
	for (uint32_t h = g + 1; h <= upto && h < NOPS; h++)
		if (sh->ops[h].chunk == chunk && sh->ops[h].kind == kind)
			return 1;
	return 0;
}

/*
 * The real-time half of the contract, checked when a ticket of op g has just ended with 0: a
 * download is findable, a delete is not, unless a later operation on the chunk may have been
 * applied in between. The turn T is read after the find: any operation the daemon could have
 * applied before the find has an index <= T (op T may already be enqueued), so only those
 * among (g, T] can excuse the answer. 0, or 1 after reporting.
 */
static int check_done(struct th_child *self, chunkd_client *c, struct shared *sh, uint32_t g,
		      const struct model *m)
{
	const struct op *op = &sh->ops[g];
	const struct th_chunk *ch = &m->env.man.chunks[op->chunk];
	chunkd_ref ref;
	int r = fh_find(c, &ch->dataset, ch->first, &ref, &sh->find_eagain);
	/* Pairs with the release stores of the turn. */
	uint32_t t = __atomic_load_n(&sh->turn, __ATOMIC_ACQUIRE);
	int same = r == 0 && !memcmp(&ref.id, &ch->id, sizeof(ch->id));
	if (r == 0)
		chunkd_release(c, &ref);
	TH_CHECK(self, r == 0 || r == -ENOENT, "chunkd_find = %d (%s)", r, chunkd_strerror(r));
	int constrained = op->kind == OP_DOWNLOAD ? !op_between(sh, g, t, op->chunk, OP_DELETE)
						  : !op_between(sh, g, t, op->chunk, OP_DOWNLOAD);
	__atomic_fetch_add(&sh->live_checks, (uint64_t)constrained, __ATOMIC_RELAXED);
	if (op->kind == OP_DOWNLOAD && !op_between(sh, g, t, op->chunk, OP_DELETE))
		TH_CHECK(self, same,
			 "op %u: the download of chunk %u ended 0 but chunkd_find = %d (turn %u)",
			 g, op->chunk, r, t);
	if (op->kind == OP_DELETE && !op_between(sh, g, t, op->chunk, OP_DOWNLOAD))
		TH_CHECK(self, r == -ENOENT,
			 "op %u: the delete of chunk %u ended 0 but chunkd_find = %d (turn %u)", g,
			 op->chunk, r, t);
	return 0;
}

static int issuer_main(struct th_child *self, void *arg)
{
	const struct issuer *is = arg;
	const struct model *m = is->m;
	struct shared *sh = m->sh;
	chunkd_client *c;
	struct fh_ring ring;
	uint64_t rng = sh->rseed * 31 + (uint64_t)is->proc + 1;
	uint32_t pending[NOPS];
	uint64_t enq_ns[NOPS];
	uint32_t npending = 0;
	chunkd_ref pin;
	int pinned = 0;
	int r = chunkd_open(m->env.name, &c);
	TH_CHECK(self, r == 0, "chunkd_open = %d", r);
	r = fh_ring_open(&ring, m->env.name);
	TH_CHECK(self, r == 0, "fh_ring_open = %d", r);
	th_say(self, "ready");
	for (uint32_t g = 0; g < NOPS; g++) {
		struct op *op = &sh->ops[g];
		if (op->proc != is->proc)
			continue;
		struct th_deadline dl;
		th_deadline_start(&dl, TURN_MS);
		/* Pairs with the release store of the turn by the other issuer. */
		while (__atomic_load_n(&sh->turn, __ATOMIC_ACQUIRE) != g) {
			TH_CHECK(self, !th_deadline_passed(&dl), "op %u: no turn after %d ms", g,
				 TURN_MS);
			if (npending) {
				uint32_t k = (uint32_t)(th_rand(&rng) % npending), p = pending[k];
				r = chunkd_wait(c, sh->ops[p].ticket, 0);
				if (r != -ETIMEDOUT) {
					record(sh, p, r, enq_ns[p]);
					pending[k] = pending[--npending];
					if (r == 0 && check_done(self, c, sh, p, m))
						return 1;
				}
			}
			th_pause();
		}
		/* Sometimes hold a pin of our own across the request. */
		if (!pinned && th_rand(&rng) % 4 == 0) {
			const struct th_chunk *ch = &m->env.man.chunks[th_rand(&rng) % NCHUNKS];
			r = fh_find(c, &ch->dataset, ch->end - 1, &pin, &sh->find_eagain);
			sh->issuer_finds[is->proc]++;
			TH_CHECK(self, r == 0 || r == -ENOENT, "chunkd_find = %d", r);
			if (r == 0) {
				TH_CHECK(self, !memcmp(&pin.id, &ch->id, sizeof(ch->id)),
					 "found another chunk than %.16s", ch->id_hex);
				pinned = 1;
			}
		}
		const struct th_chunk *ch = &m->env.man.chunks[op->chunk];
		if (op->kind == OP_DOWNLOAD)
			r = chunkd_download(c, &m->desc[op->chunk].c, &op->ticket);
		else
			r = chunkd_delete(c, &ch->id, &op->ticket);
		op->enq = r;
		TH_CHECK(self, r == 0, "op %u: %s = %d (%s)", g, kind_name(op->kind), r,
			 chunkd_strerror(r));
		enq_ns[g] = th_now_ns();
		pending[npending++] = g;
		/* The other issuer's next request must come after this one in the daemon's order.
		 */
		if (g + 1 < NOPS && sh->ops[g + 1].proc != is->proc) {
			r = fh_ring_wait_taken(&ring, TAKEN_MS);
			TH_CHECK(self, r == 0, "op %u: the daemon did not take it: %d", g, r);
		}
		/* Pairs with the acquire loads of the turn. */
		__atomic_store_n(&sh->turn, g + 1, __ATOMIC_RELEASE);
		if (pinned && th_rand(&rng) % 2) {
			chunkd_release(c, &pin);
			pinned = 0;
		}
		/* Sometimes wait a little for one of our tickets. */
		if (npending && th_rand(&rng) % 4 == 0) {
			uint32_t k = (uint32_t)(th_rand(&rng) % npending), p = pending[k];
			r = chunkd_wait(c, sh->ops[p].ticket, (int)(th_rand(&rng) % 30));
			if (r != -ETIMEDOUT) {
				record(sh, p, r, enq_ns[p]);
				pending[k] = pending[--npending];
				if (r == 0 && check_done(self, c, sh, p, m))
					return 1;
			}
		}
	}
	if (pinned)
		chunkd_release(c, &pin);
	struct th_deadline dl;
	th_deadline_start(&dl, FINAL_WAIT_MS);
	while (npending) {
		uint32_t p = pending[--npending];
		r = chunkd_wait(c, sh->ops[p].ticket, th_deadline_left_ms(&dl));
		/* -ETIMEDOUT stays recorded: the parent reports it as a hang. */
		record(sh, p, r, enq_ns[p]);
		if (r == 0 && check_done(self, c, sh, p, m))
			return 1;
		if (r == -ETIMEDOUT)
			sh->ops[p].waited = 0;
	}
	fh_ring_close(&ring);
	chunkd_close(c);
	return 0;
}

/* ---- the check ------------------------------------------------------------------------------ */

/* Print every operation of chunk i to stderr, for a failure message. */
static void print_history(const struct shared *sh, int chunk)
{
	fprintf(stderr, SEED_FMT ": the operations of chunk %d (%.16s), %s before them:\n",
		SEED_ARGS, chunk, M.env.man.chunks[chunk].id_hex,
		sh->initial[chunk] ? "published" : "absent");
	for (uint32_t g = 0; g < NOPS; g++) {
		const struct op *op = &sh->ops[g];
		if (op->chunk != chunk)
			continue;
		fprintf(stderr,
			"  op %3u P%u %-8s ticket %3" PRIu64 " -> %4d%s after %" PRIu64 " ms\n", g,
			op->proc, kind_name(op->kind), op->ticket, op->outcome,
			op->waited ? "" : " (not final)", op->wait_ms);
	}
}

/* Report a violation of the model (the test fails after reporting all of them). */
static unsigned violations, chunk_violations;
#define model_fail(chunk, fmt, ...)                                                                \
	do {                                                                                       \
		fprintf(stderr, "VIOLATION " SEED_FMT ": chunk %d: " fmt "\n", SEED_ARGS, (chunk), \
			__VA_ARGS__);                                                              \
		violations++;                                                                      \
		chunk_violations++;                                                                \
	} while (0)

/* The model's final state of chunk i: 1 published, 0 absent. */
static int want_present(const struct shared *sh, int chunk)
{
	int want = sh->initial[chunk];
	for (uint32_t g = 0; g < NOPS; g++)
		if (sh->ops[g].chunk == chunk)
			want = sh->ops[g].kind == OP_DOWNLOAD;
	return want;
}

/* Does the catalogue (status) show every chunk in its final state, with nothing left over? */
static int settled(void *arg)
{
	chunkd_client *c = arg;
	for (int i = 0; i < NCHUNKS; i++) {
		chunkd_chunk_status st;
		if (chunkd_status(c, &M.env.man.chunks[i].id, &st) < 0)
			return 0;
		uint32_t want = want_present(M.sh, i) ? CHUNKD_CHUNK_PRESENT : CHUNKD_CHUNK_ABSENT;
		if (st.state != want || st.pins)
			return 0;
	}
	return fh_leftovers(M.env.data_dir, NULL, 0) == 0;
}

static void check_chunk(chunkd_client *c, int i, const chunkd_id *listed, size_t nlisted)
{
	const struct th_chunk *ch = &M.env.man.chunks[i];
	char why[FH_WHY_LEN], path[PATH_MAX], sts[512];
	int want = want_present(M.sh, i);
	chunkd_chunk_status st;
	chunk_violations = 0;
	int r = chunkd_status(c, &ch->id, &st);
	assert_int_equal(r, 0);
	fh_status_str(&st, sts, sizeof(sts));
	int in_list = 0;
	for (size_t k = 0; k < nlisted; k++)
		in_list |= !memcmp(&listed[k], &ch->id, sizeof(ch->id));
	/* Tickets. */
	for (uint32_t g = 0; g < NOPS; g++) {
		const struct op *op = &M.sh->ops[g];
		if (op->chunk != i)
			continue;
		int later_delete = 0;
		for (uint32_t h = g + 1; h < NOPS; h++)
			later_delete |= M.sh->ops[h].chunk == i && M.sh->ops[h].kind == OP_DELETE;
		if (!op->waited)
			model_fail(i, "op %u (%s, ticket %" PRIu64 ") not done within %d ms: %d", g,
				   kind_name(op->kind), op->ticket, FINAL_WAIT_MS, op->outcome);
		int ok = op->kind == OP_DELETE
			     ? op->outcome == 0
			     : op->outcome == 0 || (op->outcome == -ECANCELED && later_delete);
		if (!ok)
			model_fail(i, "op %u (%s) ended %d (%s)%s", g, kind_name(op->kind),
				   op->outcome, chunkd_strerror(op->outcome),
				   op->kind == OP_DOWNLOAD && !later_delete ? ", no delete follows"
									    : "");
	}
	fh_chunk_path(path, sizeof(path), M.env.data_dir, ch);
	const uint64_t blocks[] = {ch->first, ch->first + (ch->end - ch->first) / 2, ch->end - 1};
	if (want) {
		if (st.state != CHUNKD_CHUNK_PRESENT || !in_list || st.last_error)
			model_fail(i, "must be published: %s, listed %d", sts, in_list);
		for (int k = 0; k < 3; k++) {
			chunkd_ref ref;
			r = chunkd_find(c, &ch->dataset, blocks[k], &ref);
			if (r) {
				model_fail(i, "find(%" PRIu64 ") = %d", blocks[k], r);
				continue;
			}
			int same = !memcmp(&ref.id, &ch->id, sizeof(ch->id)) &&
				   ref.first_block == ch->first && ref.end_block == ch->end &&
				   !strcmp(ref.path, path);
			chunkd_release(c, &ref);
			if (!same)
				model_fail(i, "find(%" PRIu64 ") pinned another chunk or path",
					   blocks[k]);
		}
		if (fh_check_dir(path, fh_origin_find(&M.bytes, &ch->id), NULL, why, sizeof(why)))
			model_fail(i, "%s", why);
	} else {
		if (st.state != CHUNKD_CHUNK_ABSENT || in_list || th_exists(path))
			model_fail(i, "must be absent: %s, listed %d, directory %s", sts, in_list,
				   th_exists(path) ? "present" : "absent");
		for (int k = 0; k < 3; k++) {
			chunkd_ref ref;
			r = chunkd_find(c, &ch->dataset, blocks[k], &ref);
			if (r == 0)
				chunkd_release(c, &ref);
			if (r != -ENOENT)
				model_fail(i, "absent, but find(%" PRIu64 ") = %d", blocks[k], r);
		}
	}
	if (chunk_violations)
		print_history(M.sh, i);
}

/* Only the published chunks have directories under DATA_DIR/chunks/<dataset>/. */
static void check_no_stray_dirs(void)
{
	char p[PATH_MAX];
	for (size_t d = 0; d < M.env.man.ndatasets; d++) {
		char hex[2 * CHUNKD_ID_SIZE + 1];
		th_hex(&M.env.man.datasets[d], hex);
		snprintf(p, sizeof(p), "%s/chunks/%s", M.env.data_dir, hex);
		int n = th_count_entries(p);
		int want = 0;
		for (int i = 0; i < NCHUNKS; i++)
			want += !memcmp(&M.env.man.chunks[i].dataset, &M.env.man.datasets[d],
					sizeof(chunkd_id)) &&
				want_present(M.sh, i);
		if (n == -ENOENT)
			n = 0;
		if (n != want) {
			fprintf(stderr,
				"VIOLATION " SEED_FMT ": %s: %d entries, %d published chunks\n",
				SEED_ARGS, p, n, want);
			violations++;
		}
	}
}

/* One round: NOPS operations from the state the previous rounds left, then the checks. */
static void model_round(uint32_t round)
{
	struct th_child issuers[NISSUERS], pinner;
	struct issuer args[NISSUERS];
	char line[256], why[FH_WHY_LEN];
	uint8_t initial[NCHUNKS];
	for (int i = 0; i < NCHUNKS; i++)
		initial[i] = round ? (uint8_t)want_present(M.sh, i) : 0;
	memset(M.sh, 0, sizeof(*M.sh));
	memcpy(M.sh->initial, initial, sizeof(initial));
	M.sh->round = round;
	M.sh->rseed = M.seed * 1000003 + round;
	uint64_t rng = M.sh->rseed;
	for (uint32_t g = 0; g < NOPS; g++) {
		struct op *op = &M.sh->ops[g];
		op->proc = (uint8_t)(th_rand(&rng) % NISSUERS);
		op->kind = th_rand(&rng) % 100 < 55 ? OP_DOWNLOAD : OP_DELETE;
		op->chunk = (uint8_t)(th_rand(&rng) % NCHUNKS);
	}
	uint64_t t0 = th_now_ns();
	th_assert_ok(th_child_start(&pinner, pinner_main, &M));
	if (th_child_expect(&pinner, "ready", line, sizeof(line), CHILD_MS))
		fail_msg("pinner: %s", th_child_output(&pinner));
	for (int p = 0; p < NISSUERS; p++) {
		args[p] = (struct issuer){.m = &M, .proc = p};
		th_assert_ok(th_child_start(&issuers[p], issuer_main, &args[p]));
		if (th_child_expect(&issuers[p], "ready", line, sizeof(line), CHILD_MS))
			fail_msg("issuer %d: %s", p, th_child_output(&issuers[p]));
	}
	for (int p = 0; p < NISSUERS; p++) {
		int st = th_child_finish(&issuers[p], CHILD_MS);
		if (!th_exited_with(st, 0))
			fail_msg(SEED_FMT ": issuer %d: %s; it said:\n%s", SEED_ARGS, p,
				 th_status_str(st, why, sizeof(why)), th_child_output(&issuers[p]));
	}
	/* Pairs with the pinner's acquire load. */
	__atomic_store_n(&M.sh->stop, 1, __ATOMIC_RELEASE);
	th_assert_child_ok(&pinner, CHILD_MS);

	chunkd_client *c;
	th_assert_ok(chunkd_open(M.env.name, &c));
	if (th_wait(settled, c, SETTLE_MS) < 0)
		fprintf(stderr, SEED_FMT ": not settled after %d ms (checking anyway)\n", SEED_ARGS,
			SETTLE_MS);
	chunkd_id listed[NCHUNKS + 8];
	size_t nlisted = 0;
	th_assert_ok(chunkd_list(c, listed, NCHUNKS + 8, &nlisted));
	size_t npresent = 0;
	violations = 0;
	for (int i = 0; i < NCHUNKS; i++) {
		check_chunk(c, i, listed, nlisted);
		npresent += (size_t)want_present(M.sh, i);
	}
	if (nlisted != npresent) {
		fprintf(stderr,
			"VIOLATION " SEED_FMT ": chunkd_list has %zu chunks, the model %zu\n",
			SEED_ARGS, nlisted, npresent);
		violations++;
	}
	check_no_stray_dirs();
	if (fh_leftovers(M.env.data_dir, why, sizeof(why)) != 0) {
		fprintf(stderr, "VIOLATION " SEED_FMT ": leftovers:%s\n", SEED_ARGS, why);
		violations++;
	}
	chunkd_close(c);

	unsigned ndl = 0, ncancel = 0;
	for (uint32_t g = 0; g < NOPS; g++) {
		ndl += M.sh->ops[g].kind == OP_DOWNLOAD;
		ncancel += M.sh->ops[g].outcome == -ECANCELED;
	}
	fprintf(stderr,
		"test_model: " SEED_FMT ": %u ops (%u downloads, %u cancelled, %u deletes) in "
		"%.1f s; pinner %" PRIu64 " finds, %" PRIu64 " pinned, %" PRIu64
		" bytes verified; issuers %" PRIu64 "+%" PRIu64 " finds, %" PRIu64
		" live checks; %zu chunks published\n",
		SEED_ARGS, NOPS, ndl, ncancel, NOPS - ndl, (double)(th_now_ns() - t0) / 1e9,
		M.sh->pinner_finds, M.sh->pinner_hits, M.sh->pinner_bytes, M.sh->issuer_finds[0],
		M.sh->issuer_finds[1], M.sh->live_checks, npresent);
	if (violations)
		fail_msg(SEED_FMT ": %u violations of the model (printed above)", SEED_ARGS,
			 violations);
	/* Last, so that everything else is checked first: see test_find_racing_delete. */
	if (M.sh->find_eagain)
		fail_msg(SEED_FMT ": chunkd_find answered -EAGAIN %" PRIu64
				  " times with a live daemon (see test_find_racing_delete)",
			 SEED_ARGS, M.sh->find_eagain);
}

/*
 * test_model_interleavings — MODEL_ROUNDS rounds of NOPS operations, each round starting from
 * the state the previous one left (so later rounds start with published chunks).
 */
static void test_model_interleavings(void **state)
{
	chunkd_client *c;
	(void)state;
	/* Start from nothing, whatever the tests before left. */
	th_assert_ok(chunkd_open(M.env.name, &c));
	for (int i = 0; i < NCHUNKS; i++) {
		uint64_t t;
		th_assert_ok(chunkd_delete(c, &M.env.man.chunks[i].id, &t));
		th_assert_ok(chunkd_wait(c, t, FINAL_WAIT_MS));
	}
	memset(M.sh, 0, sizeof(*M.sh)); /* the model: no operation, every chunk absent */
	if (th_wait(settled, c, SETTLE_MS) < 0)
		fail_msg("the chunks of the earlier tests are not gone after %d ms", SETTLE_MS);
	chunkd_close(c);
	for (uint32_t round = 0; round < MODEL_ROUNDS; round++)
		model_round(round);
}

/* ---- regression: chunkd_find racing a delete ------------------------------------------------ */

struct finder_stats {
	uint32_t stop; /* atomic */
	uint64_t found, enoent, eagain, other;
	int32_t other_rc;
};

/* Finds the first block of chunk 0 as fast as it can until told to stop. */
static int finder_main(struct th_child *self, void *arg)
{
	struct finder_stats *fs = arg;
	const struct th_chunk *ch = &M.env.man.chunks[0];
	chunkd_client *c;
	int r = chunkd_open(M.env.name, &c);
	TH_CHECK(self, r == 0, "chunkd_open = %d", r);
	th_say(self, "ready");
	/* Pairs with the parent's release store. */
	while (!__atomic_load_n(&fs->stop, __ATOMIC_ACQUIRE)) {
		chunkd_ref ref;
		r = chunkd_find(c, &ch->dataset, ch->first, &ref);
		if (r == 0) {
			fs->found++;
			chunkd_release(c, &ref);
		} else if (r == -ENOENT) {
			fs->enoent++;
		} else if (r == -EAGAIN) {
			fs->eagain++;
		} else {
			fs->other++;
			fs->other_rc = r;
		}
	}
	chunkd_close(c);
	return 0;
}

/* Wait until chunk 0's status is `state`. */
static void wait_chunk0(chunkd_client *c, uint32_t state)
{
	const struct th_chunk *ch = &M.env.man.chunks[0];
	chunkd_chunk_status st;
	struct th_deadline dl;
	for (th_deadline_start(&dl, SETTLE_MS);; th_pause()) {
		th_assert_ok(chunkd_status(c, &ch->id, &st));
		if (st.state == state)
			return;
		if (th_deadline_passed(&dl))
			fail_msg("chunk 0 still %s after %d ms, want %s", fh_state_name(st.state),
				 SETTLE_MS, fh_state_name(state));
	}
}

/* Enqueue and wait: the ticket's result. */
static int request(chunkd_client *c, int kind)
{
	uint64_t t;
	if (kind == OP_DOWNLOAD)
		th_assert_ok(chunkd_download(c, &M.desc[0].c, &t));
	else
		th_assert_ok(chunkd_delete(c, &M.env.man.chunks[0].id, &t));
	return chunkd_wait(c, t, FINAL_WAIT_MS);
}

/*
 * test_find_racing_delete — chunkd_find of a chunk that a live daemon is deleting answers 0 (it
 * pinned the chunk first) or -ENOENT ("unfindable at once"), never -EAGAIN, which chunkd.h
 * reserves for a catalogue left inconsistent by a daemon that died mid-write.
 *
 * Pins: the daemon stores the slot's CONDEMNED state when it takes the delete from the ring,
 * but publishes an index without the chunk only at the end of the loop iteration. A find in
 * between gets the candidate from the current index, sees CONDEMNED in its recheck, and retries
 * against the same index 64 times within microseconds: -EAGAIN.
 */
static void test_find_racing_delete(void **state)
{
	struct finder_stats *fs;
	struct th_child finder;
	char line[256];
	chunkd_client *c;
	(void)state;
	fs = mmap(NULL, sizeof(*fs), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(fs != MAP_FAILED);
	memset(fs, 0, sizeof(*fs));
	th_assert_ok(chunkd_open(M.env.name, &c));
	th_assert_ok(th_child_start(&finder, finder_main, fs));
	if (th_child_expect(&finder, "ready", line, sizeof(line), CHILD_MS))
		fail_msg("finder: %s", th_child_output(&finder));
	for (int round = 0; round < RACE_ROUNDS; round++) {
		int r = request(c, OP_DOWNLOAD);
		if (r)
			fail_msg("round %d: download = %d (%s)", round, r, chunkd_strerror(r));
		r = request(c, OP_DELETE);
		if (r)
			fail_msg("round %d: delete = %d (%s)", round, r, chunkd_strerror(r));
		/* Gone for good before the next download (see test_redownload_during_removal). */
		wait_chunk0(c, CHUNKD_CHUNK_ABSENT);
	}
	/* Pairs with the finder's acquire load. */
	__atomic_store_n(&fs->stop, 1, __ATOMIC_RELEASE);
	th_assert_child_ok(&finder, CHILD_MS);
	chunkd_close(c);
	fprintf(stderr,
		"test_find_racing_delete: %d rounds: %" PRIu64 " found, %" PRIu64
		" -ENOENT, %" PRIu64 " -EAGAIN, %" PRIu64 " other\n",
		RACE_ROUNDS, fs->found, fs->enoent, fs->eagain, fs->other);
	uint64_t eagain = fs->eagain, other = fs->other;
	int other_rc = fs->other_rc;
	munmap(fs, sizeof(*fs));
	if (other)
		fail_msg("chunkd_find answered %d (%s) %" PRIu64 " times", other_rc,
			 chunkd_strerror(other_rc), other);
	if (eagain)
		fail_msg("chunkd_find answered -EAGAIN %" PRIu64
			 " times while a live daemon deleted "
			 "the chunk (want 0 or -ENOENT)",
			 eagain);
}

/*
 * test_redownload_during_removal — a download of a chunk whose delete has just been applied
 * (unfindable, its directory on its way through trash/) is accepted and publishes the chunk
 * again, byte-identical: per chunk id the last accepted request wins.
 *
 * Pins: on_download() compares the request with a chunk under removal by reading the metadata
 * file at the slot's path (same_desc_published), but once the removal has renamed the directory
 * into trash/ there is no file there, the comparison fails, and the download is refused with
 * -EEXIST ("known with another descriptor") although the descriptor is the same.
 */
static void test_redownload_during_removal(void **state)
{
	char path[PATH_MAX], why[FH_WHY_LEN];
	const struct th_chunk *ch = &M.env.man.chunks[0];
	chunkd_client *c;
	int refused = 0, last = 0;
	(void)state;
	th_assert_ok(chunkd_open(M.env.name, &c));
	fh_chunk_path(path, sizeof(path), M.env.data_dir, ch);
	int r = request(c, OP_DOWNLOAD);
	if (r)
		fail_msg("download = %d (%s)", r, chunkd_strerror(r));
	for (int round = 0; round < REDOWNLOAD_ROUNDS; round++) {
		r = request(c, OP_DELETE);
		if (r)
			fail_msg("round %d: delete = %d (%s)", round, r, chunkd_strerror(r));
		/* At once: the removal is under way. */
		r = request(c, OP_DOWNLOAD);
		if (r == -EEXIST) {
			refused++;
			last = round;
			/* Start the next round from a published chunk again. */
			wait_chunk0(c, CHUNKD_CHUNK_ABSENT);
			r = request(c, OP_DOWNLOAD);
			if (r)
				fail_msg("round %d: download after the removal = %d (%s)", round, r,
					 chunkd_strerror(r));
			continue;
		}
		if (r)
			fail_msg("round %d: download after a delete = %d (%s)", round, r,
				 chunkd_strerror(r));
		chunkd_chunk_status st;
		th_assert_ok(chunkd_status(c, &ch->id, &st));
		assert_int_equal(st.state, CHUNKD_CHUNK_PRESENT);
		if (fh_check_dir(path, fh_origin_find(&M.bytes, &ch->id), NULL, why, sizeof(why)))
			fail_msg("round %d: %s", round, why);
	}
	r = request(c, OP_DELETE);
	assert_int_equal(r, 0);
	wait_chunk0(c, CHUNKD_CHUNK_ABSENT);
	chunkd_close(c);
	if (refused)
		fail_msg(
		    "%d of %d downloads right after a delete of the same chunk were refused with "
		    "-EEXIST (last in round %d)",
		    refused, REDOWNLOAD_ROUNDS, last);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_find_racing_delete),
	    cmocka_unit_test(test_redownload_during_removal),
	    cmocka_unit_test(test_model_interleavings),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
