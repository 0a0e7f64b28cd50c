/*
 * test_crashloop.c — the crash-loop acceptance test of the durability issue.
 *
 * A supervisor (this process) respawns the daemon the moment it dies, as init or systemd would,
 * and kills it with SIGKILL $CHUNKD_CRASH_KILLS times (default 20; 100 is the long mode) while
 * three client processes run a mixed load against it: downloads from nginx of 30 chunks of 3
 * files, deletes, and finds whose pins are held for random short times. The kill moments are
 * chosen four ways, in a shuffled order:
 *
 *   - uniform:  a uniformly random delay in [0, 1.5 s) after the respawn (start-up included);
 *   - download: right after chunkd_status shows a chunk DOWNLOADING with part of its bytes;
 *   - publish:  right after a client's chunkd_wait returned 0 for a download (just published);
 *   - enqueue:  right after a client's chunkd_download/delete returned (the daemon is taking it
 *               from the ring and writing its journal record), plus up to 3 ms of jitter.
 *
 * The last three are armed after such a uniform delay too, so that every daemon lives long
 * enough to get work done; an armed trigger that does not fire within 4 s kills anyway.
 *
 * Each client owns 9 chunks that only it requests, so that per chunk the order of requests is
 * its own order; 3 more chunks are shared by all. The clients check continuously that
 *
 *   - every chunk they find is the chunk of that block, complete and byte-identical to the
 *     origin, and still is when they release its pin (no pinned chunk is ever removed, across
 *     any number of restarts);
 *   - every ticket ends well: a delete with 0, a download with 0 or, when a later delete of the
 *     same id superseded it, -ECANCELED;
 *   - an own chunk whose last request's ticket returned is findable exactly when that request
 *     was a download ("0: findable now", "0: no longer findable" hold across crashes).
 *
 * Each client keeps the one handle it opened for its whole life, in the same client slot. At the
 * end (after a final restart and quiescence) the supervisor checks that the catalogue and the
 * disk hold exactly the chunks whose last request was a download (for a shared chunk: some
 * client's last request), byte-identical; that staging/ and trash/ are empty; that chunkd-fsck
 * passes; and that the journal is bounded. It prints the counts.
 *
 * The random choices are seeded by th_seed() ($CHUNKD_TEST_SEED repeats a run's choices, not
 * its timing).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h> /* after the four above, which it needs */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "crash_helpers.h"
#include "fault_helpers.h"
#include "harness.h"
#include "journal.h"

#define NCLIENTS      3
#define OWN           9                          /* chunks only one client requests */
#define NSHARED       3                          /* chunks every client requests */
#define NCHUNKS       (NCLIENTS * OWN + NSHARED) /* 30 */
#define MAX_OUT       12                         /* tickets a client leaves pending */
#define MAX_HELD      4                          /* pins a client holds at once */
#define HOLD_MAX_MS   250                        /* the longest a pin is held */
#define UNIFORM_MS    1500 /* a kill waits [0, UNIFORM_MS) after the respawn, then the trigger */
#define TRIGGER_MS    4000 /* the triggered kills: at the latest this long after arming */
#define JITTER_US     3000 /* enqueue kills: up to this much later */
#define READY_MS      30000
#define FINAL_MS      120000 /* the clients' requests all end within this after the last restart */
#define SETTLE_MS     30000
#define DEFAULT_KILLS 20

static const char *const gen_args[] = {"--flat",  "--datasets", "2",      "--chunks", "30",
				       "--files", "3",          "--size", "1200000",  "--no-crc",
				       "--seed",  "31",         NULL};
/* --checkpoint 1: the 1.2 MB files get a durable prefix, so kills mid-download resume with a
 * Range request. */
static const char *const daemon_args[] = {"--checkpoint",  "1",   "--backoff", "50",
					  "--backoff-max", "500", NULL};

enum { LAST_NONE = 0, LAST_DOWNLOAD = 1, LAST_DELETE = 2 };
enum { K_UNIFORM, K_DOWNLOAD, K_PUBLISH, K_ENQUEUE, K_MODES };
static const char *const mode_names[K_MODES] = {"uniform", "mid-download", "just-published",
						"mid-enqueue"};

/* What each client counts, in shared memory. */
struct cstats {
	uint64_t requests, downloads, deletes, dl_ok, dl_cancelled;
	uint64_t finds, found, verified, bytes, pins, pins_across, find_eagain, enq_eagain;
	uint64_t known_checks;
	int32_t slot;
};

struct shared {
	uint32_t stop;             /* parent -> clients: no new requests, finish (atomic) */
	uint32_t deleted[NCHUNKS]; /* a delete of the chunk was enqueued by someone (atomic) */
	struct cstats st[NCLIENTS];
	uint8_t last[NCLIENTS][NCHUNKS]; /* each client's last request per chunk (LAST_*) */
};

static struct {
	struct th_env env;
	struct fh_server origin;
	struct fh_origin bytes;
	char www[300];
	struct fh_desc desc[NCHUNKS];
	struct shared *sh;
	int ev[2]; /* clients -> parent: 'E' enqueued, 'P' a download's wait returned 0 */
	uint64_t seed;
	struct cr_sup sup;
	chunkd_client *c;
} C;

/* The client that owns chunk k, or -1 for a shared chunk. */
static int owner_of(uint32_t k)
{
	return k < NCLIENTS * OWN ? (int)(k / OWN) : -1;
}

static int group_setup(void **state)
{
	char dir[PATH_MAX], url[128];
	(void)state;
	th_require();
	if (!fh_server_available("nginx.sh")) {
		fprintf(stderr, "test_crashloop: tests/servers/nginx.sh missing\n");
		exit(TH_EXIT_SKIP);
	}
	C.seed = th_seed();
	C.ev[0] = C.ev[1] = -1;
	if (th_env_init(&C.env, "crash") < 0)
		goto err;
	snprintf(C.www, sizeof(C.www), "%s/www", C.env.root);
	if (th_gen_chunks(C.www, C.env.manifest_json, gen_args, &C.env.man) < 0 ||
	    C.env.man.n != NCHUNKS || fh_origin_load(&C.bytes, C.www, &C.env.man) < 0)
		goto err;
	th_env_path(&C.env, dir, sizeof(dir), "nginx");
	int r = fh_nginx_start(&C.origin, C.www, dir, 20000);
	if (r == -ENOSYS) {
		fh_origin_free(&C.bytes);
		th_env_fini(&C.env);
		exit(TH_EXIT_SKIP); /* no nginx here */
	}
	if (r < 0)
		goto err;
	fh_server_url(&C.origin, url, sizeof(url));
	for (int i = 0; i < NCHUNKS; i++)
		if (fh_desc_init(&C.desc[i], &C.env.man.chunks[i], url) < 0)
			goto err;
	C.sh = mmap(NULL, sizeof(*C.sh), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (C.sh == MAP_FAILED) {
		C.sh = NULL;
		goto err;
	}
	if (pipe2(C.ev, O_CLOEXEC | O_NONBLOCK) < 0)
		goto err;
	cr_sup_init(&C.sup, &C.env, daemon_args);
	if (cr_sup_spawn(&C.sup) < 0 || th_daemon_wait_ready(&C.env.d, READY_MS, NULL) < 0)
		goto err;
	if (chunkd_open(C.env.name, &C.c) < 0)
		goto err;
	return 0;
err:
	fh_server_stop(&C.origin);
	fh_origin_free(&C.bytes);
	th_env_fini(&C.env);
	return -1;
}

/*
 * CHUNKD_CRASH_KEEP_LOGS=DIR: before the test's files are removed, move every daemon's log and
 * a listing of the data dir (ls -lR) into DIR/<instance name>/, for a post-mortem of a failed
 * long run. Off by default: a test leaves nothing behind.
 */
static void keep_logs(void)
{
	const char *keep = getenv("CHUNKD_CRASH_KEEP_LOGS");
	char dir[PATH_MAX], from[PATH_MAX], to[2 * PATH_MAX];
	if (!keep || !*keep || !C.env.root[0])
		return;
	snprintf(dir, sizeof(dir), "%s/%s", keep, C.env.name);
	if (th_mkdirs(dir, 0755) < 0)
		return;
	for (unsigned n = 0; n < C.env.nstarts; n++) {
		cr_sup_log(&C.sup, n, from, sizeof(from));
		snprintf(to, sizeof(to), "%s/daemon-%u.log", dir, n);
		if (rename(from, to) < 0)
			fprintf(stderr, "test_crashloop: cannot keep %s: %s\n", from,
				strerror(errno));
	}
	snprintf(to, sizeof(to), "%s/data-dir.txt", dir);
	const char *const argv[] = {"ls", "-lR", "--full-time", C.env.data_dir, NULL};
	th_run(argv, to, to, 30000);
	fprintf(stderr, "test_crashloop: daemon logs kept in %s\n", dir);
}

static int group_teardown(void **state)
{
	(void)state;
	chunkd_close(C.c);
	th_children_kill_all();
	th_daemon_cleanup(&C.env.d);
	keep_logs();
	fh_server_stop(&C.origin);
	fh_origin_free(&C.bytes);
	if (C.sh)
		munmap(C.sh, sizeof(*C.sh));
	for (int i = 0; i < 2; i++)
		if (C.ev[i] >= 0)
			close(C.ev[i]);
	th_env_fini(&C.env);
	return 0;
}

/* ---- clients -------------------------------------------------------------------------------- */

struct pending {
	uint64_t ticket;
	uint64_t seq; /* this client's request number */
	uint32_t chunk;
	int kind; /* LAST_DOWNLOAD or LAST_DELETE */
};

struct held {
	chunkd_ref ref;
	uint32_t chunk;
	uint64_t until_ns;
	uint64_t epoch; /* the daemon epoch when the pin was taken */
};

enum { KNOWN_UNKNOWN, KNOWN_PRESENT, KNOWN_ABSENT };

struct client {
	struct th_child *self;
	int me;
	chunkd_client *c;
	struct cstats *w;
	uint64_t rng;
	uint64_t seq;
	struct pending pend[MAX_OUT];
	uint32_t npend;
	struct held held[MAX_HELD];
	uint32_t nheld;
	uint64_t last_seq[NCHUNKS];     /* number of the last request for the chunk */
	uint64_t last_del_seq[NCHUNKS]; /* number of the last delete of the chunk */
	int known[NCHUNKS];             /* own chunks: what the last request achieved */
	char why[FH_WHY_LEN];
};

static int stopped(void)
{
	/* Pairs with the parent's release store. */
	return __atomic_load_n(&C.sh->stop, __ATOMIC_ACQUIRE) != 0;
}

static void event(char what)
{
	/* Non-blocking: when the parent is not looking, the trigger is simply lost. */
	ssize_t r = write(C.ev[1], &what, 1);
	(void)r;
}

static uint64_t epoch_now(chunkd_client *c)
{
	chunkd_instance_info in;
	return chunkd_info(c, &in) == 0 ? in.epoch : 0;
}

/* For messages: chunk k's id (16 hex digits) and its status now. */
static const char *describe(struct client *cl, uint32_t k, char *out, size_t len)
{
	chunkd_chunk_status st;
	char s[256];
	int r = chunkd_status(cl->c, &C.env.man.chunks[k].id, &st);
	if (r == 0)
		fh_status_str(&st, s, sizeof(s));
	snprintf(out, len, "chunk %u (%.16s, %s)", k, C.env.man.chunks[k].id_hex,
		 r == 0 ? s : chunkd_strerror(r));
	return out;
}

/* The chunk's directory holds its origin bytes. 0, or 1 after reporting. */
static int verify(struct client *cl, const chunkd_ref *ref, uint32_t k, const char *when)
{
	const struct th_chunk *ch = &C.env.man.chunks[k];
	char path[PATH_MAX];
	fh_chunk_path(path, sizeof(path), C.env.data_dir, ch);
	TH_CHECK(cl->self, !memcmp(&ref->id, &ch->id, sizeof(ref->id)),
		 "%s: chunkd_find in chunk %u's range pinned another chunk", when, k);
	TH_CHECK(cl->self, ref->first_block == ch->first && ref->end_block == ch->end,
		 "%s: chunk %u has range [%" PRIu64 ", %" PRIu64 "), expected [%" PRIu64
		 ", %" PRIu64 ")",
		 when, k, ref->first_block, ref->end_block, ch->first, ch->end);
	TH_CHECK(cl->self, !strcmp(ref->path, path), "%s: chunk %u at %s, expected %s", when, k,
		 ref->path, path);
	int r =
	    fh_check_dir(ref->path, &C.bytes.chunks[k], &cl->w->bytes, cl->why, sizeof(cl->why));
	TH_CHECK(cl->self, r == 0, "%s: chunk %u: %s", when, k, cl->why);
	cl->w->verified++;
	return 0;
}

/* Re-read a held pin's files, then release it. 0, or 1 after reporting. */
static int release_held(struct client *cl, uint32_t i)
{
	struct held *h = &cl->held[i];
	if (verify(cl, &h->ref, h->chunk, "before releasing a pin"))
		return 1;
	if (epoch_now(cl->c) != h->epoch)
		cl->w->pins_across++;
	chunkd_release(cl->c, &h->ref);
	cl->held[i] = cl->held[--cl->nheld];
	return 0;
}

static int release_due(struct client *cl, int all)
{
	uint64_t now = th_now_ns();
	for (uint32_t i = 0; i < cl->nheld;) {
		if (all || cl->held[i].until_ns <= now) {
			if (release_held(cl, i))
				return 1;
		} else {
			i++;
		}
	}
	return 0;
}

/* A ticket's final outcome. 0, or 1 after reporting. */
static int resolve(struct client *cl, uint32_t i, int r)
{
	struct pending p = cl->pend[i];
	int own = owner_of(p.chunk) == cl->me;
	int ok;
	if (p.kind == LAST_DELETE) {
		ok = r == 0;
	} else if (r == -ECANCELED) {
		/* Only a later delete of the same id cancels a download. For a shared chunk that
		 * delete may be another client's: the flag was set before its enqueue, which is
		 * before the daemon posted this result (release/acquire through the ring). */
		ok = own ? cl->last_del_seq[p.chunk] > p.seq
			 : __atomic_load_n(&C.sh->deleted[p.chunk], __ATOMIC_SEQ_CST) != 0;
	} else {
		ok = r == 0;
	}
	char d[512];
	TH_CHECK(cl->self, ok,
		 "%s of %s (ticket %" PRIu64 ", request %" PRIu64 " of this client, the last "
		 "being %" PRIu64 ") ended %d (%s)",
		 p.kind == LAST_DOWNLOAD ? "download" : "delete",
		 describe(cl, p.chunk, d, sizeof(d)), p.ticket, p.seq, cl->last_seq[p.chunk], r,
		 chunkd_strerror(r));
	if (p.kind == LAST_DOWNLOAD && r == 0) {
		cl->w->dl_ok++;
		event('P');
	} else if (p.kind == LAST_DOWNLOAD) {
		cl->w->dl_cancelled++;
	}
	if (own && cl->last_seq[p.chunk] == p.seq)
		cl->known[p.chunk] = p.kind == LAST_DOWNLOAD ? KNOWN_PRESENT : KNOWN_ABSENT;
	cl->pend[i] = cl->pend[--cl->npend];
	return 0;
}

static int harvest(struct client *cl)
{
	for (uint32_t i = 0; i < cl->npend;) {
		int r = chunkd_wait(cl->c, cl->pend[i].ticket, 0);
		if (r == -ETIMEDOUT) {
			i++;
			continue;
		}
		if (resolve(cl, i, r))
			return 1;
	}
	return 0;
}

static int enqueue_one(struct client *cl)
{
	uint32_t k = th_rand(&cl->rng) % 5 ? (uint32_t)cl->me * OWN + th_rand(&cl->rng) % OWN
					   : NCLIENTS * OWN + th_rand(&cl->rng) % NSHARED;
	int kind = th_rand(&cl->rng) % 5 < 3 ? LAST_DOWNLOAD : LAST_DELETE;
	uint64_t t;
	int r;
	if (kind == LAST_DOWNLOAD) {
		r = chunkd_download(cl->c, &C.desc[k].c, &t);
	} else {
		__atomic_store_n(&C.sh->deleted[k], 1, __ATOMIC_SEQ_CST);
		r = chunkd_delete(cl->c, &C.env.man.chunks[k].id, &t);
	}
	if (r == -EAGAIN) {
		cl->w->enq_eagain++;
		return 0;
	}
	TH_CHECK(cl->self, r == 0, "enqueue of chunk %u: %s", k, chunkd_strerror(r));
	event('E');
	uint64_t seq = ++cl->seq;
	cl->pend[cl->npend++] = (struct pending){t, seq, k, kind};
	cl->last_seq[k] = seq;
	if (kind == LAST_DELETE)
		cl->last_del_seq[k] = seq;
	cl->known[k] = KNOWN_UNKNOWN;
	C.sh->last[cl->me][k] = (uint8_t)kind;
	cl->w->requests++;
	if (kind == LAST_DOWNLOAD)
		cl->w->downloads++;
	else
		cl->w->deletes++;
	return 0;
}

/*
 * Find a block of chunk k. A find of an own chunk whose last request returned must agree with
 * it; whatever is found is verified, and its pin is held for a while or released at once.
 */
static int find_one(struct client *cl, uint32_t k, int may_hold)
{
	const struct th_chunk *ch = &C.env.man.chunks[k];
	uint64_t block = ch->first + th_rand(&cl->rng) % (ch->end - ch->first);
	int own = owner_of(k) == cl->me;
	int known = own ? cl->known[k] : KNOWN_UNKNOWN;
	chunkd_ref ref;
	cl->w->finds++;
	/* A daemon killed mid-write leaves an odd seqlock: -EAGAIN until the next one repairs
	 * it. Retry (bounded) where the answer is checked, count it elsewhere. */
	int r = known == KNOWN_UNKNOWN
		    ? chunkd_find(cl->c, &ch->dataset, block, &ref)
		    : fh_find(cl->c, &ch->dataset, block, &ref, &cl->w->find_eagain);
	if (r == -EAGAIN) {
		cl->w->find_eagain++;
		return 0;
	}
	if (known != KNOWN_UNKNOWN)
		cl->w->known_checks++;
	TH_CHECK(cl->self, r == 0 || r == -ENOENT, "chunkd_find in chunk %u: %d (%s)", k, r,
		 chunkd_strerror(r));
	char d[512];
	TH_CHECK(cl->self, known != KNOWN_PRESENT || r == 0,
		 "own %s is not findable (%s) although its last request, a download, returned 0",
		 describe(cl, k, d, sizeof(d)), chunkd_strerror(r));
	if (r == -ENOENT)
		return 0;
	if (known == KNOWN_ABSENT) {
		chunkd_release(cl->c, &ref);
		TH_CHECK(cl->self, 0,
			 "own %s is findable although its last request, a delete, returned 0",
			 describe(cl, k, d, sizeof(d)));
	}
	cl->w->found++;
	if (verify(cl, &ref, k, "after chunkd_find")) {
		chunkd_release(cl->c, &ref);
		return 1;
	}
	if (may_hold && cl->nheld < MAX_HELD && th_rand(&cl->rng) % 2) {
		struct held *h = &cl->held[cl->nheld++];
		h->ref = ref;
		h->chunk = k;
		h->until_ns = th_now_ns() + th_rand(&cl->rng) % HOLD_MAX_MS * 1000000ull;
		h->epoch = epoch_now(cl->c);
		cl->w->pins++;
	} else {
		chunkd_release(cl->c, &ref);
	}
	return 0;
}

/* The end: every ticket ends, every pin is checked and released, every own chunk is where its
 * last request put it, and the client is still in the slot it started in. */
static int client_finish(struct client *cl)
{
	struct th_deadline dl;
	th_deadline_start(&dl, FINAL_MS);
	while (cl->npend) {
		struct pending *p = &cl->pend[0];
		char d[512];
		int r = chunkd_wait(cl->c, p->ticket, th_deadline_left_ms(&dl));
		TH_CHECK(cl->self, r != -ETIMEDOUT,
			 "%s of %s (ticket %" PRIu64 ", request %" PRIu64 " of this client, the "
			 "last being %" PRIu64 ") not done %d ms after the final restart",
			 p->kind == LAST_DOWNLOAD ? "download" : "delete",
			 describe(cl, p->chunk, d, sizeof(d)), p->ticket, p->seq,
			 cl->last_seq[p->chunk], FINAL_MS);
		if (resolve(cl, 0, r))
			return 1;
	}
	if (release_due(cl, 1))
		return 1;
	for (uint32_t i = 0; i < OWN; i++) {
		uint32_t k = (uint32_t)cl->me * OWN + i;
		if (find_one(cl, k, 0))
			return 1;
	}
	int slot = th_client_slot(C.env.name, getpid(), NULL);
	TH_CHECK(cl->self, slot == cl->w->slot, "client slot %d at the end, %d at the start", slot,
		 cl->w->slot);
	return 0;
}

static int client_main(struct th_child *self, void *arg)
{
	static struct client cl; /* each child has its own copy */
	struct pollfd p = {.fd = self->rfd, .events = POLLIN};
	memset(&cl, 0, sizeof(cl));
	cl.self = self;
	cl.me = (int)(intptr_t)arg;
	cl.w = &C.sh->st[cl.me];
	cl.rng = C.seed * 7919 + (uint64_t)cl.me + 1;
	for (uint32_t k = 0; k < NCHUNKS; k++)
		cl.known[k] = KNOWN_ABSENT; /* the data dir starts empty; only we request ours */

	/* The one chunkd_open of this process: the handle must survive every restart. */
	int r = chunkd_open(C.env.name, &cl.c);
	TH_CHECK(self, r == 0, "chunkd_open: %s", chunkd_strerror(r));
	cl.w->slot = th_client_slot(C.env.name, getpid(), NULL);
	TH_CHECK(self, cl.w->slot >= 0, "no client slot names this process");
	th_say(self, "STARTED");

	while (!stopped()) {
		if (release_due(&cl, 0) || harvest(&cl))
			return 1;
		uint64_t x = th_rand(&cl.rng) % 100;
		if (x < 35 && cl.npend < MAX_OUT)
			r = enqueue_one(&cl);
		else if (x < 85)
			r = find_one(&cl, (uint32_t)(th_rand(&cl.rng) % NCHUNKS), 1);
		else
			r = find_one(&cl, (uint32_t)cl.me * OWN + th_rand(&cl.rng) % OWN, 1);
		if (r)
			return 1;
		/* Pace the load: wait a little for the oldest ticket (or for the parent). */
		int ms = (int)(th_rand(&cl.rng) % 20);
		if (cl.npend) {
			r = chunkd_wait(cl.c, cl.pend[0].ticket, ms);
			if (r != -ETIMEDOUT && resolve(&cl, 0, r))
				return 1;
		} else {
			poll(&p, 1, ms);
		}
	}
	if (client_finish(&cl))
		return 1;
	chunkd_close(cl.c);
	th_say(self, "DONE");
	return 0;
}

/* ---- the supervisor -------------------------------------------------------------------------- */

struct run {
	struct th_child cl[NCLIENTS];
	unsigned nkills;
	unsigned by_mode[K_MODES], fallbacks[K_MODES];
	unsigned ready;   /* daemons seen READY */
	unsigned adopted; /* of them, those whose log says they adopted the segments (all but the
			   * first, which created them) */
	uint64_t first_epoch;
};

/* A line from a client during the run means trouble (a FAIL, or it exited): fail the test. */
static void check_clients(struct run *run, struct pollfd *pf)
{
	char line[1024];
	for (int k = 0; k < NCLIENTS; k++) {
		if (!(pf[1 + k].revents & (POLLIN | POLLHUP | POLLERR)))
			continue;
		int r = th_child_recv(&run->cl[k], line, sizeof(line), 0);
		if (r == -ETIMEDOUT)
			continue;
		th_daemon_dump_log(&C.env.d);
		fail_msg("client %d stopped during the run (%s); it said:\n%s", k,
			 r < 0 ? strerror(-r) : line, th_child_output(&run->cl[k]));
	}
}

/* A chunk whose download is moving bytes right now (the daemon must be the current one). */
static int mid_download(void)
{
	for (uint32_t k = 0; k < NCHUNKS; k++) {
		chunkd_chunk_status st;
		/* bytes_total counts the files already complete: bytes_done > 0 is enough. */
		if (chunkd_status(C.c, &C.env.man.chunks[k].id, &st) == 0 &&
		    st.state == CHUNKD_CHUNK_DOWNLOADING && st.bytes_done > 0)
			return 1;
	}
	return 0;
}

/* Did the daemon that just died reach READY, and did it adopt the segments? */
static void note_daemon(struct run *run, int was_ready)
{
	char log[PATH_MAX];
	if (!was_ready)
		return;
	run->ready++;
	cr_sup_log(&C.sup, C.env.nstarts - 1, log, sizeof(log));
	if (C.env.nstarts - 1 > 0 && cr_count_lines(log, "adopted its segments") == 1)
		run->adopted++;
}

/* Wait for the moment of kill number n, kill the daemon and respawn it at once. */
static void kill_once(struct run *run, int mode, uint64_t *rng)
{
	struct pollfd pf[1 + NCLIENTS];
	pf[0] = (struct pollfd){.fd = C.ev[0], .events = POLLIN};
	for (int k = 0; k < NCLIENTS; k++)
		pf[1 + k] = (struct pollfd){.fd = run->cl[k].rfd, .events = POLLIN};
	uint64_t t0 = th_now_ns();
	uint64_t uniform_ns = th_rand(rng) % UNIFORM_MS * 1000000ull;
	int ready = 0, fire = 0;
	for (;;) {
		char ev[256];
		int saw_e = 0, saw_p = 0;
		ssize_t n;
		while ((n = read(C.ev[0], ev, sizeof(ev))) > 0) {
			saw_e |= memchr(ev, 'E', (size_t)n) != NULL;
			saw_p |= memchr(ev, 'P', (size_t)n) != NULL;
		}
		if (!ready)
			ready = cr_daemon_ready(C.c, &C.env.d);
		uint64_t el = th_now_ns() - t0;
		int armed = el >= uniform_ns;
		switch (mode) {
		case K_UNIFORM:
			fire = armed;
			break;
		case K_DOWNLOAD:
			fire = armed && ready && mid_download();
			break;
		case K_PUBLISH:
			fire = armed && ready && saw_p;
			break;
		case K_ENQUEUE:
			fire = armed && ready && saw_e;
			break;
		}
		if (!fire && mode != K_UNIFORM && el >= uniform_ns + TRIGGER_MS * 1000000ull) {
			run->fallbacks[mode]++;
			fire = 1;
		}
		if (fire)
			break;
		if (!th_daemon_running(&C.env.d)) {
			th_daemon_dump_log(&C.env.d);
			fail_msg("the daemon exited on its own (status 0x%x)",
				 (unsigned)C.env.d.status);
		}
		struct timespec ts = {0, TH_POLL_NS};
		ppoll(pf, 1 + NCLIENTS, &ts, NULL);
		check_clients(run, pf);
	}
	if (mode == K_ENQUEUE) {
		/* Spread the kills over the daemon's intake, journal write and commit. */
		struct timespec ts = {0, (long)(th_rand(rng) % JITTER_US) * 1000};
		nanosleep(&ts, NULL);
	}
	th_assert_ok(cr_sup_kill(&C.sup));
	note_daemon(run, ready);
	run->nkills++;
	run->by_mode[mode]++;
	/* A supervisor restarts it right away. */
	th_assert_ok(cr_sup_spawn(&C.sup));
}

static unsigned kills_wanted(void)
{
	const char *s = getenv("CHUNKD_CRASH_KILLS");
	if (!s || !*s)
		return DEFAULT_KILLS;
	unsigned long v = strtoul(s, NULL, 10);
	return v > 0 && v < 100000 ? (unsigned)v : DEFAULT_KILLS;
}

/* 1 when every chunk is PRESENT or ABSENT (no work in progress) and nothing is left over. */
static int quiet(void *arg)
{
	(void)arg;
	for (uint32_t k = 0; k < NCHUNKS; k++) {
		chunkd_chunk_status st;
		if (chunkd_status(C.c, &C.env.man.chunks[k].id, &st) != 0 ||
		    (st.state != CHUNKD_CHUNK_PRESENT && st.state != CHUNKD_CHUNK_ABSENT))
			return 0;
	}
	return fh_leftovers(C.env.data_dir, NULL, 0) == 0;
}

/* Published chunk directories below chunks/ (every dataset). */
static int count_chunk_dirs(void)
{
	char p[PATH_MAX];
	int n = 0;
	for (size_t d = 0; d < C.env.man.ndatasets; d++) {
		char hex[2 * CHUNKD_ID_SIZE + 1];
		th_hex(&C.env.man.datasets[d], hex);
		snprintf(p, sizeof(p), "%s/chunks/%s", C.env.data_dir, hex);
		int e = th_count_entries(p);
		n += e > 0 ? e : 0;
	}
	return n;
}

/* The journal record of a chunk's download (docs/journal.md): 124 bytes, then per file 4 + name
 * + URL, padded to 8. */
static uint64_t download_record_len(uint32_t k)
{
	uint64_t len = 124;
	for (uint32_t i = 0; i < C.desc[k].c.nfiles; i++)
		len += 4 + strlen(C.desc[k].files[i].name) + strlen(C.desc[k].files[i].url);
	return (len + 7) & ~7ull;
}

/* The final state, chunk by chunk: the last request's, in the catalogue and on disk. */
static void check_final_state(uint64_t *bytes, uint32_t *present)
{
	char path[PATH_MAX], why[FH_WHY_LEN];
	uint64_t eagain = 0;
	*present = 0;
	for (uint32_t k = 0; k < NCHUNKS; k++) {
		const struct th_chunk *ch = &C.env.man.chunks[k];
		int o = owner_of(k), may_present = 0, may_absent = 0;
		for (int i = 0; i < NCLIENTS; i++) {
			if (o >= 0 && i != o)
				continue;
			may_present |= C.sh->last[i][k] == LAST_DOWNLOAD;
			may_absent |= C.sh->last[i][k] != LAST_DOWNLOAD;
		}
		chunkd_chunk_status st;
		chunkd_ref ref;
		th_assert_ok(chunkd_status(C.c, &ch->id, &st));
		fh_chunk_path(path, sizeof(path), C.env.data_dir, ch);
		if (st.state == CHUNKD_CHUNK_PRESENT) {
			if (!may_present)
				fail_msg(
				    "chunk %u (%s) is present, but no client's last request for "
				    "it was a download",
				    k, o >= 0 ? "own" : "shared");
			(*present)++;
			const uint64_t blocks[] = {ch->first, ch->end - 1};
			for (int b = 0; b < 2; b++) {
				th_assert_ok(fh_find(C.c, &ch->dataset, blocks[b], &ref, &eagain));
				assert_memory_equal(&ref.id, &ch->id, sizeof(ref.id));
				assert_string_equal(ref.path, path);
				int r = fh_check_dir(ref.path, &C.bytes.chunks[k], bytes, why,
						     sizeof(why));
				chunkd_release(C.c, &ref);
				if (r != 0)
					fail_msg("chunk %u: %s", k, why);
			}
		} else {
			if (!may_absent)
				fail_msg("chunk %u (%s) is %s, but its last request was a download",
					 k, o >= 0 ? "own" : "shared", fh_state_name(st.state));
			assert_int_equal(st.state, CHUNKD_CHUNK_ABSENT);
			assert_int_equal(fh_find(C.c, &ch->dataset, ch->first, &ref, &eagain),
					 -ENOENT);
			if (th_exists(path))
				fail_msg("chunk %u is absent from the catalogue but %s exists", k,
					 path);
		}
	}
	size_t listed = 0;
	th_assert_ok(chunkd_list(C.c, NULL, 0, &listed));
	assert_int_equal(listed, *present);
	assert_int_equal(count_chunk_dirs(), (int)*present);
}

static void test_crash_loop(void **state)
{
	static struct run run;
	char line[256], path[PATH_MAX], why[FH_WHY_LEN];
	chunkd_instance_info info;
	uint64_t rng = C.seed ^ 0x6b696c6cull; /* "kill" */
	(void)state;
	memset(&run, 0, sizeof(run));
	unsigned nkills = kills_wanted();
	th_assert_ok(chunkd_info(C.c, &info));
	run.first_epoch = info.epoch;

	for (int k = 0; k < NCLIENTS; k++) {
		th_assert_ok(th_child_start(&run.cl[k], client_main, (void *)(intptr_t)k));
		th_assert_ok(th_child_expect(&run.cl[k], "STARTED", line, sizeof(line), 30000));
	}

	/* The kill modes in a shuffled order, each as often as the others. */
	int *modes = calloc(nkills, sizeof(*modes));
	assert_non_null(modes);
	for (unsigned i = 0; i < nkills; i++)
		modes[i] = (int)(i % K_MODES);
	for (unsigned i = nkills; i > 1; i--) {
		unsigned j = (unsigned)(th_rand(&rng) % i);
		int m = modes[i - 1];
		modes[i - 1] = modes[j];
		modes[j] = m;
	}
	uint64_t t0 = th_now_ns();
	for (unsigned i = 0; i < nkills; i++)
		kill_once(&run, modes[i], &rng);
	free(modes);
	uint64_t loop_ms = (th_now_ns() - t0) / 1000000;

	/* The final restart: READY, then the clients finish everything they asked for. */
	if (th_daemon_wait_ready(&C.env.d, READY_MS, &info) != 0)
		fail_msg("the daemon started after the last kill does not get READY");
	note_daemon(&run, 1);
	__atomic_store_n(&C.sh->stop, 1, __ATOMIC_RELEASE);
	for (int k = 0; k < NCLIENTS; k++) {
		if (th_child_expect(&run.cl[k], "DONE", line, sizeof(line), FINAL_MS + 30000) !=
		    0) {
			th_daemon_dump_log(&C.env.d);
			fail_msg("client %d did not finish; it said:\n%s", k,
				 th_child_output(&run.cl[k]));
		}
		th_assert_child_ok(&run.cl[k], 30000);
	}

	/* Quiescence, then the state chunk by chunk, the disk, fsck and the journal. */
	if (th_wait(quiet, NULL, SETTLE_MS) != 0) {
		fh_leftovers(C.env.data_dir, why, sizeof(why));
		th_daemon_dump_log(&C.env.d);
		fail_msg("no quiescence after %d ms; leftovers:%s", SETTLE_MS, why);
	}
	uint64_t final_bytes = 0;
	uint32_t present;
	check_final_state(&final_bytes, &present);
	th_env_path(&C.env, path, sizeof(path), "fsck.out");
	if (!th_exited_with(cr_fsck(C.env.data_dir, path, 120000), 0))
		fail_msg("chunkd-fsck found problems (see above)");
	snprintf(path, sizeof(path), "%s/journal.tmp", C.env.data_dir);
	assert_false(th_exists(path));
	snprintf(path, sizeof(path), "%s/journal", C.env.data_dir);
	int64_t jsize = cr_file_size(path);
	uint64_t rec = 0, appended = 0;
	for (uint32_t k = 0; k < NCHUNKS; k++)
		rec = download_record_len(k) > rec ? download_record_len(k) : rec;
	/* Compaction keeps the journal below twice its live records (at most one per chunk id)
	 * or the floor, whichever is larger, plus what one loop iteration may append. */
	uint64_t bound = 2 * (24 + NCHUNKS * rec);
	if (bound < CHUNKD_JOURNAL_COMPACT_FLOOR)
		bound = CHUNKD_JOURNAL_COMPACT_FLOOR;
	bound += (uint64_t)NCLIENTS * MAX_OUT * rec;

	struct cstats sum;
	memset(&sum, 0, sizeof(sum));
	for (int k = 0; k < NCLIENTS; k++) {
		const struct cstats *w = &C.sh->st[k];
		sum.requests += w->requests;
		sum.downloads += w->downloads;
		sum.deletes += w->deletes;
		sum.dl_ok += w->dl_ok;
		sum.dl_cancelled += w->dl_cancelled;
		sum.finds += w->finds;
		sum.found += w->found;
		sum.verified += w->verified;
		sum.bytes += w->bytes;
		sum.pins += w->pins;
		sum.pins_across += w->pins_across;
		sum.find_eagain += w->find_eagain;
		sum.enq_eagain += w->enq_eagain;
		sum.known_checks += w->known_checks;
	}
	appended = sum.downloads * rec + sum.deletes * 72;
	th_assert_ok(chunkd_info(C.c, &info));
	char log[PATH_MAX];
	int compactions = 0;
	for (unsigned n = 0; n < C.env.nstarts; n++) {
		cr_sup_log(&C.sup, n, log, sizeof(log));
		int c = cr_count_lines(log, "journal: compacted");
		compactions += c > 0 ? c : 0;
	}
	fprintf(stderr,
		"test_crashloop: %u kills in %" PRIu64 " ms (%u %s, %u %s, %u %s, %u %s; %u+%u+%u "
		"fell back to the %d ms limit), %u restarts (%u daemons READY, %u of the restarted "
		"ones adopted the segments; epoch %" PRIu64 " -> %" PRIu64 ")\n",
		run.nkills, loop_ms, run.by_mode[K_UNIFORM], mode_names[K_UNIFORM],
		run.by_mode[K_DOWNLOAD], mode_names[K_DOWNLOAD], run.by_mode[K_PUBLISH],
		mode_names[K_PUBLISH], run.by_mode[K_ENQUEUE], mode_names[K_ENQUEUE],
		run.fallbacks[K_DOWNLOAD], run.fallbacks[K_PUBLISH], run.fallbacks[K_ENQUEUE],
		TRIGGER_MS, C.sup.spawns - 1, run.ready, run.adopted, run.first_epoch, info.epoch);
	fprintf(
	    stderr,
	    "test_crashloop: %" PRIu64 " requests (%" PRIu64 " downloads: %" PRIu64 " published, "
	    "%" PRIu64 " cancelled; %" PRIu64 " deletes), %" PRIu64 " enqueues refused "
	    "(-EAGAIN)\n",
	    sum.requests, sum.downloads, sum.dl_ok, sum.dl_cancelled, sum.deletes, sum.enq_eagain);
	fprintf(stderr,
		"test_crashloop: %" PRIu64 " finds (%" PRIu64 " found, %" PRIu64 " of own chunks "
		"checked against their last request, %" PRIu64 " -EAGAIN), %" PRIu64
		" verifications, "
		"%" PRIu64 " bytes verified during the run and %" PRIu64 " at the end; %" PRIu64
		" pins held, %" PRIu64 " of them across a restart\n",
		sum.finds, sum.found, sum.known_checks, sum.find_eagain, sum.verified, sum.bytes,
		final_bytes, sum.pins, sum.pins_across);
	fprintf(stderr,
		"test_crashloop: final state: %u of %d chunks present; journal %" PRId64
		" bytes (bound %" PRIu64 "; about %" PRIu64 " bytes appended, %d compactions)\n",
		present, NCHUNKS, jsize, bound, appended, compactions);

	/* Every daemon that got READY took the segments over: no client had to re-open. */
	assert_int_equal(run.adopted, run.ready - 1);
	assert_true(info.epoch - run.first_epoch >= run.ready - 1);
	assert_true(info.epoch - run.first_epoch <= C.sup.spawns - 1);
	if (jsize < 0 || (uint64_t)jsize > bound)
		fail_msg("the journal holds %" PRId64 " bytes, more than its bound %" PRIu64, jsize,
			 bound);
	/* Enough happened for the run to mean something. */
	assert_int_equal(run.nkills, nkills);
	assert_true(sum.dl_ok > 0 && sum.deletes > 0 && sum.verified > 0);

	/* And a clean stop at the end. */
	int st = th_daemon_stop(&C.env.d, 10000);
	if (!th_exited_with(st, 0)) {
		th_daemon_dump_log(&C.env.d);
		fail_msg("SIGTERM after the run: %s", th_status_str(st, why, sizeof(why)));
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_crash_loop),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
