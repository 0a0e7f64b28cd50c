/*
 * test_durable.c — the acceptance items of the durability issue (docs/durability.md), each
 * against the real daemon, nginx and tests/servers/fault_server.py:
 *
 * a) A restart keeps a client's pending requests, pins and tickets: a client process pins a
 *    published chunk, the daemon is SIGKILLed, the client enqueues downloads and deletes while no
 *    daemon runs (chunkd_info says daemon_alive 0, look-ups still answer); a new daemon adopts
 *    the segments, and the client's waits succeed without re-opening, its pin still protects the
 *    chunk (a delete of it makes it unfindable while its files stay untouched, and they go only
 *    after the release), and chunkd_info shows the next epoch and a live daemon.
 * b) A download killed halfway (SIGKILL; --checkpoint 1 records a durable prefix every MiB)
 *    continues after the restart with "Range: bytes=N-" from the recorded prefix N > 0 and
 *    If-Range with the origin's ETag (the fault server's log says so); the client's wait returns
 *    0 and the published file is byte-identical to the origin. When the origin file changes
 *    between the kill and the restart, the origin answers 200 and the result is the new file.
 *    A resume record torn by the crash (its check fails) is ignored: that file starts over
 *    from byte 0 without a Range, and the chunk is published intact.
 * c) SIGTERM during a download: the daemon exits 0 within 5 s, keeps staging/<id> and
 *    staging/<id>.resume, and the next daemon resumes with a Range request and completes.
 * d) A torn journal tail (garbage appended while the daemon is stopped) is truncated at start
 *    with "torn tail, truncated N bytes", and the earlier requests' state is intact: published
 *    chunks stay, deleted ones stay gone (even one whose directory a pin keeps on disk), and a
 *    download in progress resumes.
 * e) Regression found by test_crashloop: a daemon killed after writing a download's
 *    .chunkd-meta and before the rename must not make the next one fail the chunk (-EEXIST).
 * f) Regression found by test_crashloop's long mode: journal compaction while a second download
 *    of a chunk had joined the first must not lose the first ticket across a crash.
 * g) Regression found by test_crashloop's long mode: a download whose path in chunks/ holds a
 *    leftover directory without metadata must end, not retry its rename for ever.
 * h) Regression found by test_crashloop in CI: a delete of an unknown chunk followed by a
 *    download of it, both journaled by a daemon killed before it posted their results: the
 *    next daemon must answer the delete's ticket too.
 * i) The ring records of a client that died while no daemon ran, journaled already by the
 *    killed daemon, are not taken (and acted upon) a second time.
 * j) A process that closes a handle and opens another (the same slot) does not lose the new
 *    handle's requests across a restart.
 * k) A download the daemon refused (-EEXIST) does not become the chunk's desired state after a
 *    restart: the chunk's last accepted request still decides.
 * l) A journal record naming this client's slot and owner word with a higher ticket (what a
 *    process before a reboot can leave) does not make the restarted daemon skip requests
 *    enqueued after it started.
 *
 * CHUNKD_TEST_FILTER=pattern runs only the matching cases.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h> /* after the four above, which it needs */

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crash_helpers.h"
#include "fault_helpers.h"
#include "harness.h"
#include "journal.h"
#include "shm/records.h"

#define READY_MS  20000
#define WAIT_MS   60000 /* a request that should complete does so within this */
#define GONE_MS   10000 /* a removal that should happen does so within this */
#define STOP_MS   5000  /* SIGTERM: the daemon must be gone within this (the bound) */
#define CHILD_MS  60000 /* a client child answers within this */
#define MIB       (1024u * 1024u)
#define BIG_SIZE  4194304           /* 4 MiB: one file per big chunk, 4 s at SLOW_RATE */
#define SLOW_RATE MIB               /* bytes/s of the fault server's "slow" fault */
#define NEW_SIZE  (3u * MIB + 777u) /* the origin file that replaces a big one */
#define STR_(x)   #x
#define STR(x)    STR_(x)

/* Small chunks for nginx (chunks whose state the tests follow) and big ones that the fault
 * server sends slowly, so that a download is in flight for seconds. */
static const char *const small_gen[] = {"--flat", "--datasets", "1",  "--chunks",
					"8",      "--files",    "2",  "--size",
					"65536",  "--seed",     "21", NULL};
static const char *const big_gen[] = {"--flat",  "--datasets", "1",      "--chunks",    "4",
				      "--files", "1",          "--size", STR(BIG_SIZE), "--no-crc",
				      "--seed",  "22",         NULL};
static const char *const daemon_args[] = {"--checkpoint", "1", "--backoff", "50", NULL};

static struct {
	struct th_env env; /* env.man: the small chunks */
	struct th_manifest big;
	struct fh_origin small_bytes, big_bytes;
	struct fh_server nginx, fault;
	char www[300], bigroot[300]; /* below env.root (256 bytes) */
	char nginx_url[128], slow_url[160];
	struct cr_sup sup;
	chunkd_client *c; /* the test process's own client handle */
} D;

/* ---- setup ---------------------------------------------------------------------------------- */

static int setup(void **state)
{
	char dir[PATH_MAX], manifest[PATH_MAX], base[128];
	(void)state;
	th_require();
	if (!fh_server_available("nginx.sh") || !fh_server_available("fault_server.py")) {
		fprintf(stderr, "test_durable: tests/servers/ is missing\n");
		exit(TH_EXIT_SKIP);
	}
	th_seed();
	memset(&D, 0, sizeof(D));
	if (th_env_init(&D.env, "durable") < 0)
		goto err;
	snprintf(D.www, sizeof(D.www), "%s/www", D.env.root);
	snprintf(D.bigroot, sizeof(D.bigroot), "%s/big", D.env.root);
	th_env_path(&D.env, manifest, sizeof(manifest), "big.json");
	if (th_gen_chunks(D.www, D.env.manifest_json, small_gen, &D.env.man) < 0 ||
	    th_gen_chunks(D.bigroot, manifest, big_gen, &D.big) < 0 ||
	    fh_origin_load(&D.small_bytes, D.www, &D.env.man) < 0 ||
	    fh_origin_load(&D.big_bytes, D.bigroot, &D.big) < 0)
		goto err;
	th_env_path(&D.env, dir, sizeof(dir), "nginx");
	int r = fh_nginx_start(&D.nginx, D.www, dir, 20000);
	if (r == -ENOSYS) {
		fprintf(stderr, "test_durable: nginx is not installed\n");
		exit(TH_EXIT_SKIP);
	}
	if (r < 0)
		goto err;
	th_env_path(&D.env, dir, sizeof(dir), "fault");
	if (fh_fault_start(&D.fault, D.bigroot, dir, 20000) < 0)
		goto err;
	fh_server_url(&D.nginx, D.nginx_url, sizeof(D.nginx_url));
	fh_server_url(&D.fault, base, sizeof(base));
	snprintf(D.slow_url, sizeof(D.slow_url), "%s/fault/slow-%u", base, SLOW_RATE);
	cr_sup_init(&D.sup, &D.env, daemon_args);
	if (cr_sup_spawn(&D.sup) < 0 || th_daemon_wait_ready(&D.env.d, READY_MS, NULL) < 0)
		goto err;
	if (chunkd_open(D.env.name, &D.c) < 0)
		goto err;
	return 0;
err:
	fh_server_stop(&D.nginx);
	fh_server_stop(&D.fault);
	fh_origin_free(&D.small_bytes);
	fh_origin_free(&D.big_bytes);
	th_manifest_free(&D.big);
	th_env_fini(&D.env);
	return -1;
}

static int teardown(void **state)
{
	(void)state;
	chunkd_close(D.c);
	th_children_kill_all();
	th_daemon_cleanup(&D.env.d);
	fh_server_stop(&D.nginx);
	fh_server_stop(&D.fault);
	fh_origin_free(&D.small_bytes);
	fh_origin_free(&D.big_bytes);
	th_manifest_free(&D.big);
	th_env_fini(&D.env);
	return 0;
}

/* ---- helpers -------------------------------------------------------------------------------- */

/* Restart the daemon like a supervisor and wait until it is READY; its log must say that it
 * adopted the segments of its predecessor (so no client had to re-open). */
static void restart(chunkd_instance_info *info)
{
	char log[PATH_MAX];
	th_assert_ok(cr_sup_spawn(&D.sup));
	th_assert_ok(th_daemon_wait_ready(&D.env.d, READY_MS, info));
	cr_sup_log(&D.sup, D.env.nstarts - 1, log, sizeof(log));
	if (cr_count_lines(log, "adopted its segments") != 1) {
		th_daemon_dump_log(&D.env.d);
		fail_msg("the restarted daemon did not adopt the instance's segments");
	}
}

/* SIGTERM: the daemon must exit 0 within STOP_MS. */
static void stop_cleanly(void)
{
	char why[64];
	int st = th_daemon_stop(&D.env.d, STOP_MS);
	if (!th_exited_with(st, 0)) {
		th_daemon_dump_log(&D.env.d);
		fail_msg("SIGTERM: the daemon ended with %s, expected exit 0",
			 th_status_str(st, why, sizeof(why)));
	}
}

/* The log of the daemon running now. */
static const char *cur_log(void)
{
	return D.env.d.log;
}

/* Wait until the chunk's download has received at least `bytes` bytes (and is still running). */
static void wait_downloaded(const chunkd_id *id, uint64_t bytes)
{
	struct th_deadline dl;
	chunkd_chunk_status st;
	char s[256];
	for (th_deadline_start(&dl, WAIT_MS);; th_pause()) {
		int r = chunkd_status(D.c, id, &st);
		if (r == 0 && st.state == CHUNKD_CHUNK_DOWNLOADING && st.bytes_done >= bytes)
			return;
		/* ABSENT: the daemon has not taken the request yet. */
		if (r == 0 && st.state != CHUNKD_CHUNK_DOWNLOADING &&
		    st.state != CHUNKD_CHUNK_QUEUED && st.state != CHUNKD_CHUNK_ABSENT)
			break;
		if (th_deadline_passed(&dl))
			break;
	}
	fh_status_str(&st, s, sizeof(s));
	th_daemon_dump_log(&D.env.d);
	fail_msg("download not at %" PRIu64 " bytes and still running: %s", bytes, s);
}

/* The request log suffix of a big chunk's file 0: "/<dataset>/<id>/<name>". */
static void big_suffix(char *out, size_t len, const struct th_chunk *ch)
{
	snprintf(out, len, "/%s/%s", ch->dir, ch->files[0].name);
}

/* The origin path of a big chunk's file 0. */
static void big_origin(char *out, size_t len, const struct th_chunk *ch)
{
	snprintf(out, len, "%s/%s/%s", D.bigroot, ch->dir, ch->files[0].name);
}

/* Start the slow download of big chunk `ch` through D.c: its ticket. */
static uint64_t start_slow_download(const struct th_chunk *ch)
{
	struct fh_desc desc;
	uint64_t t;
	th_assert_ok(fh_desc_init(&desc, ch, D.slow_url));
	th_assert_ok(chunkd_download(D.c, &desc.c, &t));
	return t;
}

/* The published chunk is byte-identical to the origin and findable at its first block. */
static void check_published(const struct th_chunk *ch, const struct fh_origin *o)
{
	char path[PATH_MAX], why[CR_WHY_LEN];
	chunkd_ref ref;
	uint64_t eagain = 0;
	fh_chunk_path(path, sizeof(path), D.env.data_dir, ch);
	th_assert_ok(fh_find(D.c, &ch->dataset, ch->first, &ref, &eagain));
	assert_memory_equal(&ref.id, &ch->id, sizeof(ref.id));
	assert_string_equal(ref.path, path);
	int r = fh_check_dir(ref.path, fh_origin_find(o, &ch->id), NULL, why, sizeof(why));
	chunkd_release(D.c, &ref);
	if (r != 0)
		fail_msg("%s", why);
}

/* Not findable, and (once its removal, which may still be under way, has finished) neither
 * known to the daemon nor on disk. */
static void check_absent(const struct th_chunk *ch)
{
	char path[PATH_MAX], s[256];
	chunkd_ref ref;
	uint64_t eagain = 0;
	chunkd_chunk_status st;
	fh_chunk_path(path, sizeof(path), D.env.data_dir, ch);
	int r = fh_find(D.c, &ch->dataset, ch->first, &ref, &eagain);
	if (r != -ENOENT)
		fail_msg("chunk %.16s: chunkd_find %d (%s), expected -ENOENT", ch->id_hex, r,
			 chunkd_strerror(r));
	if (cr_wait_state(D.c, &ch->id, CHUNKD_CHUNK_ABSENT, GONE_MS, &st) != 0) {
		fh_status_str(&st, s, sizeof(s));
		th_daemon_dump_log(&D.env.d);
		fail_msg("chunk %.16s is still known to the daemon: %s", ch->id_hex, s);
	}
	if (cr_wait_gone(path, GONE_MS) < 0)
		fail_msg("%s is still on disk", path);
}

static void check_fsck(void)
{
	char out[PATH_MAX];
	th_env_path(&D.env, out, sizeof(out), "fsck.out");
	int st = cr_fsck(D.env.data_dir, out, 60000);
	if (!th_exited_with(st, 0))
		fail_msg("chunkd-fsck found problems (see above)");
}

static void check_no_leftovers(void)
{
	char why[CR_WHY_LEN];
	if (fh_wait_no_leftovers(D.env.data_dir, GONE_MS, why, sizeof(why)) != 0)
		fail_msg("leftovers in the data dir:%s", why);
}

/* ---- a) a restart keeps a client's pending requests, pins and tickets ----------------------- */

/*
 * The small chunks' roles in a): P is published and pinned before the kill and deleted while no
 * daemon runs; X is published and deleted while no daemon runs (nobody pins it, so its removal
 * shows that the new daemon's removal pass has run); Q is published and found while no daemon
 * runs; D1-D3 are downloaded while no daemon runs; D4 is downloaded and then deleted while no
 * daemon runs (its download ends 0 or -ECANCELED, and it is absent in the end).
 */
enum { A_P, A_X, A_Q, A_D1, A_D2, A_D3, A_D4, A_N };

/* In a child: a download of small chunk k through c, its ticket in *t. */
static int a_download(chunkd_client *c, int k, uint64_t *t)
{
	struct fh_desc desc;
	int r = fh_desc_init(&desc, &D.env.man.chunks[k], D.nginx_url);
	return r < 0 ? r : chunkd_download(c, &desc.c, t);
}

/* In a child: find small chunk k, check its bytes, release it (unless ref is wanted). */
static int a_find_check(chunkd_client *c, int k, chunkd_ref *keep, char *why, size_t whylen)
{
	const struct th_chunk *ch = &D.env.man.chunks[k];
	chunkd_ref ref;
	uint64_t eagain = 0;
	int r = fh_find(c, &ch->dataset, ch->first, &ref, &eagain);
	if (r < 0) {
		snprintf(why, whylen, "chunkd_find of chunk %d: %s", k, chunkd_strerror(r));
		return -1;
	}
	if (memcmp(&ref.id, &ch->id, sizeof(ref.id))) {
		snprintf(why, whylen, "chunkd_find of chunk %d pinned another chunk", k);
		chunkd_release(c, &ref);
		return -1;
	}
	r = fh_check_dir(ref.path, fh_origin_find(&D.small_bytes, &ch->id), NULL, why, whylen);
	if (keep && r == 0)
		*keep = ref;
	else
		chunkd_release(c, &ref);
	return r;
}

static int a_client(struct th_child *self, void *arg)
{
	chunkd_client *c;
	chunkd_instance_info in0, in;
	chunkd_chunk_status st;
	chunkd_ref pin;
	char line[256], why[CR_WHY_LEN], pinned[PATH_MAX], xpath[PATH_MAX];
	uint64_t t[A_N], tx, tp, td4x, eagain = 0;
	const struct th_manifest *m = &D.env.man;
	(void)arg;

	/* One handle for the whole life of this process. */
	int r = chunkd_open(D.env.name, &c);
	TH_CHECK(self, r == 0, "chunkd_open: %s", chunkd_strerror(r));
	int slot = th_client_slot(D.env.name, getpid(), NULL);
	TH_CHECK(self, slot >= 0, "no client slot names this process: %d", slot);

	/* P, X and Q are published; P is pinned. */
	for (int k = A_P; k <= A_Q; k++) {
		TH_CHECK(self, a_download(c, k, &t[k]) == 0, "download of chunk %d refused", k);
		r = chunkd_wait(c, t[k], WAIT_MS);
		TH_CHECK(self, r == 0, "download of chunk %d: %s", k, chunkd_strerror(r));
	}
	TH_CHECK(self, a_find_check(c, A_P, &pin, why, sizeof(why)) == 0, "%s", why);
	snprintf(pinned, sizeof(pinned), "%s", pin.path);
	fh_chunk_path(xpath, sizeof(xpath), D.env.data_dir, &m->chunks[A_X]);
	TH_CHECK(self, chunkd_info(c, &in0) == 0 && in0.daemon_alive == 1, "no live daemon");
	th_say(self, "PINNED %" PRIu64, in0.epoch);

	r = th_hear(self, line, sizeof(line), CHILD_MS);
	TH_CHECK(self, r >= 0 && !strcmp(line, "KILLED"), "expected KILLED: %d %s", r, line);

	/* No daemon now: chunkd_info says so, look-ups answer from the last index. */
	TH_CHECK(self, chunkd_info(c, &in) == 0, "chunkd_info failed without a daemon");
	TH_CHECK(self, in.daemon_alive == 0, "daemon_alive %d after the kill", in.daemon_alive);
	TH_CHECK(self, in.epoch == in0.epoch && in.daemon_pid == in0.daemon_pid,
		 "epoch %" PRIu64 " pid %d, before the kill %" PRIu64 " %d", in.epoch,
		 in.daemon_pid, in0.epoch, in0.daemon_pid);
	TH_CHECK(self, a_find_check(c, A_Q, NULL, why, sizeof(why)) == 0, "no daemon: %s", why);

	/* Requests are accepted while no daemon runs, and none completes. */
	for (int k = A_D1; k <= A_D4; k++) {
		r = a_download(c, k, &t[k]);
		TH_CHECK(self, r == 0, "no daemon: download of chunk %d: %s", k,
			 chunkd_strerror(r));
	}
	r = chunkd_delete(c, &m->chunks[A_X].id, &tx);
	TH_CHECK(self, r == 0, "no daemon: delete of X: %s", chunkd_strerror(r));
	r = chunkd_delete(c, &m->chunks[A_P].id, &tp);
	TH_CHECK(self, r == 0, "no daemon: delete of P: %s", chunkd_strerror(r));
	r = chunkd_delete(c, &m->chunks[A_D4].id, &td4x);
	TH_CHECK(self, r == 0, "no daemon: delete of D4: %s", chunkd_strerror(r));
	const uint64_t pending[] = {t[A_D1], t[A_D2], t[A_D3], t[A_D4], tx, tp, td4x};
	for (size_t i = 0; i < sizeof(pending) / sizeof(pending[0]); i++) {
		r = chunkd_wait(c, pending[i], 0);
		TH_CHECK(self, r == -ETIMEDOUT, "no daemon: ticket %" PRIu64 " already %d (%s)",
			 pending[i], r, chunkd_strerror(r));
	}
	/* And the pinned chunk is still findable: nothing changed yet. */
	TH_CHECK(self, a_find_check(c, A_P, NULL, why, sizeof(why)) == 0, "no daemon: %s", why);
	th_say(self, "ENQUEUED");

	r = th_hear(self, line, sizeof(line), CHILD_MS);
	int newpid = 0;
	TH_CHECK(self, r >= 0 && sscanf(line, "RESTARTED %d", &newpid) == 1,
		 "expected RESTARTED: %d %s", r, line);

	/* The new daemon continues every request; the waits need no re-open. */
	for (int k = A_D1; k <= A_D3; k++) {
		r = chunkd_wait(c, t[k], WAIT_MS);
		TH_CHECK(self, r == 0, "download of D%d after the restart: %d (%s)", k - A_D1 + 1,
			 r, chunkd_strerror(r));
		TH_CHECK(self, a_find_check(c, k, NULL, why, sizeof(why)) == 0, "%s", why);
	}
	r = chunkd_wait(c, t[A_D4], WAIT_MS);
	TH_CHECK(self, r == 0 || r == -ECANCELED, "download of D4 (deleted later): %d (%s)", r,
		 chunkd_strerror(r));
	const uint64_t dels[] = {tx, tp, td4x};
	for (size_t i = 0; i < 3; i++) {
		r = chunkd_wait(c, dels[i], WAIT_MS);
		TH_CHECK(self, r == 0, "delete %zu after the restart: %d (%s)", i, r,
			 chunkd_strerror(r));
	}
	TH_CHECK(self, chunkd_info(c, &in) == 0, "chunkd_info failed");
	TH_CHECK(self,
		 in.daemon_alive == 1 && in.daemon_pid == newpid && in.state == CHUNKD_STATE_READY,
		 "chunkd_info: alive %d pid %d state %u, expected 1 %d READY", in.daemon_alive,
		 in.daemon_pid, in.state, newpid);
	TH_CHECK(self, in.epoch == in0.epoch + 1, "epoch %" PRIu64 ", expected %" PRIu64, in.epoch,
		 in0.epoch + 1);

	/* X and D4 are gone; X's removal means the new daemon's removal pass ran. */
	chunkd_ref ref;
	const int gone_k[] = {A_X, A_D4, A_P};
	for (size_t i = 0; i < 3; i++) {
		const struct th_chunk *ch = &m->chunks[gone_k[i]];
		r = fh_find(c, &ch->dataset, ch->first, &ref, &eagain);
		TH_CHECK(self, r == -ENOENT, "chunk %d still findable after its delete: %d",
			 gone_k[i], r);
	}
	TH_CHECK(self, cr_wait_gone(xpath, GONE_MS) == 0, "%s not removed", xpath);

	/* The pin still protects P: condemned, pinned once, its files untouched. */
	r = chunkd_status(c, &m->chunks[A_P].id, &st);
	TH_CHECK(self, r == 0 && st.state == CHUNKD_CHUNK_DELETING && st.pins == 1,
		 "P: status %d, state %s, pins %u; expected DELETING with 1 pin", r,
		 fh_state_name(st.state), st.pins);
	TH_CHECK(self, !strcmp(pin.path, pinned), "ref->path changed: %s, was %s", pin.path,
		 pinned);
	r = fh_check_dir(pin.path, fh_origin_find(&D.small_bytes, &m->chunks[A_P].id), NULL, why,
			 sizeof(why));
	TH_CHECK(self, r == 0, "the pinned chunk changed: %s", why);
	r = th_client_slot(D.env.name, getpid(), NULL);
	TH_CHECK(self, r == slot, "client slot %d, was %d", r, slot);
	th_say(self, "CHECKED");

	r = th_hear(self, line, sizeof(line), CHILD_MS);
	TH_CHECK(self, r >= 0 && !strcmp(line, "RELEASE"), "expected RELEASE: %d %s", r, line);
	chunkd_release(c, &pin);
	TH_CHECK(self, cr_wait_gone(pinned, GONE_MS) == 0, "%s not removed after the release",
		 pinned);
	r = cr_wait_state(c, &m->chunks[A_P].id, CHUNKD_CHUNK_ABSENT, GONE_MS, &st);
	TH_CHECK(self, r == 0, "P is %s after its removal", fh_state_name(st.state));
	chunkd_close(c);
	th_say(self, "DONE");
	return 0;
}

static void test_restart_keeps_pending_requests_pins_and_tickets(void **state)
{
	struct th_child ch;
	char line[256], ppath[PATH_MAX];
	chunkd_instance_info info;
	(void)state;
	fh_chunk_path(ppath, sizeof(ppath), D.env.data_dir, &D.env.man.chunks[A_P]);
	th_assert_ok(th_child_start(&ch, a_client, NULL));
	th_assert_ok(th_child_expect(&ch, "PINNED", line, sizeof(line), CHILD_MS));

	th_assert_ok(cr_sup_kill(&D.sup));
	/* The segments outlive the daemon: that is what the client keeps using. */
	assert_true(th_shm_exists(D.env.name, "cat"));
	assert_true(th_shm_exists(D.env.name, "req"));
	th_child_send(&ch, "KILLED");
	th_assert_ok(th_child_expect(&ch, "ENQUEUED", line, sizeof(line), CHILD_MS));
	assert_int_equal(th_clients_in_use(D.env.name, ch.pid), 1);

	restart(&info);
	th_child_send(&ch, "RESTARTED %d", (int)D.env.d.pid);
	if (th_child_expect(&ch, "CHECKED", line, sizeof(line), CHILD_MS) != 0) {
		th_daemon_dump_log(&D.env.d);
		fail_msg("the client's checks after the restart failed:\n%s", th_child_output(&ch));
	}
	/* The daemon keeps the pinned chunk on disk while the pin holds. */
	assert_true(th_exists(ppath));
	th_child_send(&ch, "RELEASE");
	th_assert_ok(th_child_expect(&ch, "DONE", line, sizeof(line), CHILD_MS));
	th_assert_child_ok(&ch, CHILD_MS);

	for (int k = A_D1; k <= A_D3; k++)
		check_published(&D.env.man.chunks[k], &D.small_bytes);
	check_published(&D.env.man.chunks[A_Q], &D.small_bytes);
	check_absent(&D.env.man.chunks[A_P]);
	check_absent(&D.env.man.chunks[A_X]);
	check_absent(&D.env.man.chunks[A_D4]);
	check_no_leftovers();
	stop_cleanly();
	check_fsck();
}

/* ---- b) a download killed halfway resumes with Range + If-Range ----------------------------- */

/*
 * Start the slow download of big chunk ch, wait until a durable prefix of at least 1 MiB is
 * recorded and half the file has arrived, and SIGKILL the daemon. Returns the ticket; *rs gets
 * what the resume file records after the kill (what the next daemon starts from).
 */
static uint64_t download_and_kill_halfway(const struct th_chunk *ch, struct cr_resume *rs)
{
	char sdir[PATH_MAX];
	uint64_t t = start_slow_download(ch);
	th_assert_ok(cr_wait_resume(D.env.data_dir, &ch->id, 0, MIB, WAIT_MS, rs));
	wait_downloaded(&ch->id, BIG_SIZE / 2);
	th_assert_ok(cr_sup_kill(&D.sup));

	th_assert_ok(cr_resume_read(D.env.data_dir, &ch->id, 0, rs));
	assert_true(rs->found);
	assert_int_equal(rs->kind, 'P');
	assert_true(rs->bytes >= MIB && rs->bytes < BIG_SIZE);
	cr_staging_path(sdir, sizeof(sdir), D.env.data_dir, &ch->id, "");
	char f[2 * PATH_MAX];
	snprintf(f, sizeof(f), "%s/%s", sdir, ch->files[0].name);
	int64_t size = cr_file_size(f);
	if (size < (int64_t)rs->bytes)
		fail_msg("%s: %" PRId64 " bytes, the resume point says %" PRIu64, f, size,
			 rs->bytes);
	assert_int_equal(chunkd_wait(D.c, t, 0), -ETIMEDOUT);
	return t;
}

/* The requests of ch's file: exactly two, the first without a range, the second "bytes=N-" with
 * N the recorded prefix and If-Range `validator`, answered with `status`. */
static void check_resumed_request(const struct th_chunk *ch, const struct cr_resume *rs,
				  const char *validator, int status, struct cr_req *second)
{
	char suffix[PATH_MAX];
	struct cr_req q[8];
	size_t n;
	uint64_t from;
	big_suffix(suffix, sizeof(suffix), ch);
	th_assert_ok(cr_wait_requests(D.fault.log, suffix, 2, 10000, q, 8, &n));
	if (n != 2)
		fail_msg("%zu requests for %s, expected 2 (the first and its resume)", n, suffix);
	assert_string_equal(q[0].range, "");
	if (cr_range_from(q[1].range, &from) < 0)
		fail_msg("the resumed request's Range is \"%s\", expected bytes=N-", q[1].range);
	assert_int_equal(from, rs->bytes);
	assert_true(from > 0);
	assert_string_equal(q[1].if_range, validator);
	assert_int_equal(q[1].status, status);
	*second = q[1];
}

static void test_resume_after_sigkill_uses_range_and_if_range(void **state)
{
	const struct th_chunk *ch = &D.big.chunks[0];
	struct cr_resume rs;
	struct cr_req q;
	char origin[PATH_MAX], etag[128], line[512], want[512];
	(void)state;
	big_origin(origin, sizeof(origin), ch);
	th_assert_ok(cr_fault_etag(origin, etag, sizeof(etag)));
	uint64_t t = download_and_kill_halfway(ch, &rs);
	/* The daemon recorded the origin's strong validator next to the prefix ("E": an ETag). */
	assert_true(rs.validator[0] == 'E');
	assert_string_equal(rs.validator + 1, etag);

	restart(NULL);
	int r = chunkd_wait(D.c, t, WAIT_MS);
	if (r != 0) {
		th_daemon_dump_log(&D.env.d);
		fail_msg("the resumed download ended %d (%s)", r, chunkd_strerror(r));
	}
	check_resumed_request(ch, &rs, etag, 206, &q);
	assert_int_equal(q.bytes, BIG_SIZE - rs.bytes);
	snprintf(want, sizeof(want), "resuming %s at byte %" PRIu64, ch->files[0].name, rs.bytes);
	if (cr_find_line(cur_log(), want, line, sizeof(line)) < 0) {
		th_daemon_dump_log(&D.env.d);
		fail_msg("the daemon did not log \"%s\"", want);
	}
	check_published(ch, &D.big_bytes);
	check_no_leftovers();
	check_fsck();
}

static void test_resume_if_range_mismatch_starts_over_with_new_file(void **state)
{
	const struct th_chunk *ch = &D.big.chunks[1];
	struct cr_resume rs;
	struct cr_req q;
	chunkd_chunk_status st;
	chunkd_ref ref;
	uint8_t *data = NULL;
	uint64_t eagain = 0;
	char origin[PATH_MAX], old_etag[128], new_etag[128], why[CR_WHY_LEN], f[2 * PATH_MAX];
	(void)state;
	big_origin(origin, sizeof(origin), ch);
	th_assert_ok(cr_fault_etag(origin, old_etag, sizeof(old_etag)));
	uint64_t t = download_and_kill_halfway(ch, &rs);

	/* The origin changes while no daemon runs: other bytes, another size, another mtime. */
	th_assert_ok(cr_rewrite_origin(origin, NEW_SIZE, th_seed() ^ 0x6e6577, 10, &data));
	th_assert_ok(cr_fault_etag(origin, new_etag, sizeof(new_etag)));
	assert_string_not_equal(old_etag, new_etag);

	restart(NULL);
	int r = chunkd_wait(D.c, t, WAIT_MS);
	if (r != 0) {
		free(data);
		th_daemon_dump_log(&D.env.d);
		fail_msg("the download ended %d (%s)", r, chunkd_strerror(r));
	}
	/* The daemon asked for the rest of the old file; the origin sent all of the new one. */
	check_resumed_request(ch, &rs, old_etag, 200, &q);
	assert_int_equal(q.bytes, NEW_SIZE);
	if (cr_count_lines(cur_log(), "instead of the range; starting it over") != 1) {
		free(data);
		th_daemon_dump_log(&D.env.d);
		fail_msg("the daemon did not log that it started the file over");
	}

	th_assert_ok(fh_find(D.c, &ch->dataset, ch->first, &ref, &eagain));
	snprintf(f, sizeof(f), "%s/%s", ref.path, ch->files[0].name);
	r = cr_file_equal(f, data, NEW_SIZE, why, sizeof(why));
	int entries = th_count_entries(ref.path);
	chunkd_release(D.c, &ref);
	free(data);
	if (r != 0)
		fail_msg("the published file is not the new origin file: %s", why);
	assert_int_equal(entries, 2); /* the file and .chunkd-meta */
	th_assert_ok(chunkd_status(D.c, &ch->id, &st));
	assert_int_equal(st.state, CHUNKD_CHUNK_PRESENT);
	assert_int_equal(st.bytes_total, NEW_SIZE);
	assert_int_equal(st.bytes_done, NEW_SIZE);
	check_no_leftovers();
	/* The metadata's CRC32C must be the new file's, computed from byte 0 again. */
	check_fsck();
}

/* The resume file is rewritten in place, so a crash (or a power loss) can leave a record half
 * written. Its check must catch that: the file starts over rather than resuming at a wrong
 * offset or with a wrong CRC32C. */
static void test_resume_torn_record_starts_file_over(void **state)
{
	const struct th_chunk *ch = &D.big.chunks[3];
	struct cr_resume rs, torn;
	struct cr_req q[8];
	size_t n, len = 0;
	char path[PATH_MAX], suffix[PATH_MAX], want[512];
	(void)state;
	uint64_t t = download_and_kill_halfway(ch, &rs);

	/* Lower the first digit of file 0's byte count ("0 <bytes> ..."), keeping the old check:
	 * without the check the record would look valid (the file on disk is longer). */
	cr_staging_path(path, sizeof(path), D.env.data_dir, &ch->id, ".resume");
	char *text = th_read_file(path, &len);
	assert_non_null(text);
	assert_true(len >= CR_RESUME_REC);
	assert_int_equal(text[0], '0');
	assert_int_equal(text[1], ' ');
	assert_true(text[2] >= '1' && text[2] <= '9');
	text[2] = (char)(text[2] - 1);
	assert_int_equal(cr_resume_parse(text, 0, &torn), -EBADMSG);
	th_assert_ok(th_write_file(path, text, len));
	free(text);

	restart(NULL);
	int r = chunkd_wait(D.c, t, WAIT_MS);
	if (r != 0) {
		th_daemon_dump_log(&D.env.d);
		fail_msg("the download ended %d (%s)", r, chunkd_strerror(r));
	}
	big_suffix(suffix, sizeof(suffix), ch);
	th_assert_ok(cr_wait_requests(D.fault.log, suffix, 2, 10000, q, 8, &n));
	if (n != 2)
		fail_msg("%zu requests for %s, expected 2 (the first and the start over)", n, suffix);
	assert_string_equal(q[1].range, ""); /* from byte 0: the torn record was not trusted */
	assert_int_equal(q[1].status, 200);
	assert_int_equal(q[1].bytes, BIG_SIZE);
	snprintf(want, sizeof(want), "resuming %s at byte", ch->files[0].name);
	if (cr_count_lines(cur_log(), want) != 0) {
		th_daemon_dump_log(&D.env.d);
		fail_msg("the daemon resumed a file from a torn record");
	}
	check_published(ch, &D.big_bytes);
	check_no_leftovers();
	check_fsck(); /* the metadata's CRC32C is computed from byte 0 again */
}

/* ---- c) SIGTERM suspends a download; the next daemon resumes it ----------------------------- */

static void test_sigterm_suspends_download_and_restart_resumes(void **state)
{
	const struct th_chunk *ch = &D.big.chunks[2];
	struct cr_resume rs;
	struct cr_req q;
	chunkd_instance_info in;
	char origin[PATH_MAX], etag[128], sdir[PATH_MAX], sres[PATH_MAX], why[64];
	(void)state;
	big_origin(origin, sizeof(origin), ch);
	th_assert_ok(cr_fault_etag(origin, etag, sizeof(etag)));
	uint64_t t = start_slow_download(ch);
	th_assert_ok(cr_wait_resume(D.env.data_dir, &ch->id, 0, MIB, WAIT_MS, &rs));
	wait_downloaded(&ch->id, MIB + MIB / 2);

	uint64_t t0 = th_now_ns();
	kill(D.env.d.pid, SIGTERM);
	int st = th_daemon_wait_exit(&D.env.d, STOP_MS);
	uint64_t ms = (th_now_ns() - t0) / 1000000;
	fprintf(stderr,
		"test_durable: SIGTERM during a download: the daemon exited (%s) after "
		"%" PRIu64 " ms\n",
		th_status_str(st, why, sizeof(why)), ms);
	if (!th_exited_with(st, 0)) {
		th_daemon_dump_log(&D.env.d);
		fail_msg("SIGTERM: %s after %" PRIu64 " ms, expected exit 0 within %d ms", why, ms,
			 STOP_MS);
	}
	assert_true(ms < STOP_MS);
	th_assert_ok(chunkd_info(D.c, &in));
	assert_int_equal(in.state, CHUNKD_STATE_STOPPED);
	assert_int_equal(in.daemon_alive, 0);

	/* The download is suspended, not cancelled: staging and its resume file stay. */
	cr_staging_path(sdir, sizeof(sdir), D.env.data_dir, &ch->id, "");
	cr_staging_path(sres, sizeof(sres), D.env.data_dir, &ch->id, ".resume");
	struct stat sb;
	assert_int_equal(lstat(sdir, &sb), 0);
	assert_true(S_ISDIR(sb.st_mode));
	assert_int_equal(lstat(sres, &sb), 0);
	assert_true(S_ISREG(sb.st_mode));
	th_assert_ok(cr_resume_read(D.env.data_dir, &ch->id, 0, &rs));
	assert_true(rs.found);
	assert_int_equal(rs.kind, 'P');
	assert_true(rs.bytes >= MIB && rs.bytes < BIG_SIZE);
	assert_true(rs.validator[0] == 'E');
	assert_string_equal(rs.validator + 1, etag);
	assert_int_equal(cr_count_lines(D.env.d.log, "download suspended; staging kept"), 1);
	assert_int_equal(chunkd_wait(D.c, t, 0), -ETIMEDOUT);

	restart(NULL);
	int r = chunkd_wait(D.c, t, WAIT_MS);
	if (r != 0) {
		th_daemon_dump_log(&D.env.d);
		fail_msg("the resumed download ended %d (%s)", r, chunkd_strerror(r));
	}
	check_resumed_request(ch, &rs, etag, 206, &q);
	assert_int_equal(q.bytes, BIG_SIZE - rs.bytes);
	check_published(ch, &D.big_bytes);
	check_no_leftovers();
	check_fsck();
}

/* ---- d) a torn journal tail ----------------------------------------------------------------- */

/* Stop the daemon (SIGTERM, exit 0), append `garbage` to the journal, restart it: the new daemon
 * must log the cut of exactly those bytes at the old end of the file. */
static void tear_journal_and_restart(const void *garbage, size_t len)
{
	char journal[PATH_MAX], want[160], line[512];
	snprintf(journal, sizeof(journal), "%s/journal", D.env.data_dir);
	stop_cleanly();
	int64_t size = cr_file_size(journal);
	assert_true(size > 0);
	th_assert_ok(cr_append(journal, garbage, len));
	restart(NULL);
	snprintf(want, sizeof(want), "journal: torn tail, truncated %zu bytes at offset %" PRId64,
		 len, size);
	if (cr_find_line(cur_log(), want, line, sizeof(line)) < 0) {
		th_daemon_dump_log(&D.env.d);
		fail_msg("the daemon did not log \"%s\"", want);
	}
	assert_int_equal(cr_count_lines(cur_log(), "corrupt record"), 0);
	/* Nothing new was accepted since: the file is exactly what it was before the garbage. */
	assert_int_equal(cr_file_size(journal), size);
}

static void test_journal_torn_tail_is_truncated_and_state_intact(void **state)
{
	const struct th_manifest *m = &D.env.man;
	const struct th_chunk *A = &m->chunks[0], *B = &m->chunks[1], *C = &m->chunks[2],
			      *F = &m->chunks[3], *E = &D.big.chunks[0];
	struct fh_desc desc;
	chunkd_ref pin, ref;
	chunkd_chunk_status st;
	uint64_t t, te, eagain = 0;
	char fpath[PATH_MAX], why[CR_WHY_LEN];
	(void)state;

	/* A, B, C and F are published; B is deleted; F is pinned and deleted (it stays on disk,
	 * unfindable); E is downloading slowly when the daemon stops. */
	const struct th_chunk *pub[] = {A, B, C, F};
	for (int i = 0; i < 4; i++) {
		th_assert_ok(fh_desc_init(&desc, pub[i], D.nginx_url));
		th_assert_ok(chunkd_download(D.c, &desc.c, &t));
		assert_int_equal(chunkd_wait(D.c, t, WAIT_MS), 0);
	}
	th_assert_ok(chunkd_delete(D.c, &B->id, &t));
	assert_int_equal(chunkd_wait(D.c, t, WAIT_MS), 0);
	th_assert_ok(fh_find(D.c, &F->dataset, F->first, &pin, &eagain));
	fh_chunk_path(fpath, sizeof(fpath), D.env.data_dir, F);
	assert_string_equal(pin.path, fpath);
	th_assert_ok(chunkd_delete(D.c, &F->id, &t));
	assert_int_equal(chunkd_wait(D.c, t, WAIT_MS), 0);
	te = start_slow_download(E);
	wait_downloaded(&E->id, 1);

	/* Fewer bytes than a record header: a torn tail. */
	uint8_t garbage[53];
	uint64_t s = th_seed();
	for (size_t i = 0; i < sizeof(garbage); i++)
		garbage[i] = (uint8_t)(th_rand(&s) | 1);
	tear_journal_and_restart(garbage, sizeof(garbage));

	/* Every earlier request's state is intact. */
	check_published(A, &D.small_bytes);
	check_published(C, &D.small_bytes);
	check_absent(B);
	assert_int_equal(fh_find(D.c, &F->dataset, F->first, &ref, &eagain), -ENOENT);
	th_assert_ok(chunkd_status(D.c, &F->id, &st));
	assert_int_equal(st.state, CHUNKD_CHUNK_DELETING);
	assert_int_equal(st.pins, 1);
	if (fh_check_dir(pin.path, fh_origin_find(&D.small_bytes, &F->id), NULL, why,
			 sizeof(why)) != 0)
		fail_msg("the pinned, deleted chunk changed: %s", why);
	int r = chunkd_wait(D.c, te, WAIT_MS);
	if (r != 0) {
		th_daemon_dump_log(&D.env.d);
		fail_msg("the download in progress ended %d (%s)", r, chunkd_strerror(r));
	}
	check_published(E, &D.big_bytes);

	/* A record header whose length runs past the end of the file: torn as well. */
	uint8_t fake[96];
	for (size_t i = 0; i < sizeof(fake); i++)
		fake[i] = (uint8_t)(th_rand(&s) | 1);
	uint32_t len = 4096;
	memcpy(fake + 4, &len, sizeof(len));
	tear_journal_and_restart(fake, sizeof(fake));
	check_published(A, &D.small_bytes);
	check_published(C, &D.small_bytes);
	check_published(E, &D.big_bytes);
	check_absent(B);
	th_assert_ok(chunkd_status(D.c, &F->id, &st));
	assert_int_equal(st.state, CHUNKD_CHUNK_DELETING);

	/* The pin was all that kept F. */
	chunkd_release(D.c, &pin);
	check_absent(F);
	check_no_leftovers();
	check_fsck();
}

/* ---- e) regression: a crash after the metadata write, before the rename --------------------- */

/*
 * A download whose files are all complete goes META (write staging/<id>/.chunkd-meta, fsync),
 * DIRSYNC, RENAME. A daemon killed after META and before the rename leaves a staging dir with
 * every file recorded complete ('D' in staging/<id>.resume) and the metadata file already there
 * (the crash loop hits it: "resuming from staging (3 of 3 files complete)", then "failed:
 * writing metadata: File exists"). The next daemon must finish the job and publish the chunk;
 * the ticket must end 0, not -EEXIST. The state is made by hand here, exactly as such a crash
 * leaves it, so that the case is hit every time.
 */
static void test_crash_after_meta_write_resumes_and_publishes(void **state)
{
	const struct th_chunk *ch = &D.big.chunks[0];
	const struct fh_origin_chunk *oc = fh_origin_find(&D.big_bytes, &ch->id);
	struct fh_ring ring;
	struct cr_req q[4];
	size_t n;
	char sdir[PATH_MAX], p[2 * PATH_MAX], origin[PATH_MAX], etag[128], suffix[PATH_MAX];
	(void)state;
	big_origin(origin, sizeof(origin), ch);
	th_assert_ok(cr_fault_etag(origin, etag, sizeof(etag)));

	/* The download is accepted (journaled: the ring's head passed it) and running. */
	uint64_t t = start_slow_download(ch);
	th_assert_ok(fh_ring_open(&ring, D.env.name));
	int r = fh_ring_wait_taken(&ring, WAIT_MS);
	fh_ring_close(&ring);
	th_assert_ok(r);
	wait_downloaded(&ch->id, 1);
	th_assert_ok(cr_sup_kill(&D.sup));
	/* The server logs the request it was sending once it notices the client is gone. */
	big_suffix(suffix, sizeof(suffix), ch);
	th_assert_ok(cr_wait_requests(D.fault.log, suffix, 1, 10000, q, 4, &n));

	/* What the killed daemon leaves behind after its META step: the file complete, recorded
	 * 'D' with its size and CRC32C, and .chunkd-meta written. */
	cr_staging_path(sdir, sizeof(sdir), D.env.data_dir, &ch->id, "");
	snprintf(p, sizeof(p), "%s/%s", sdir, ch->files[0].name);
	th_assert_ok(th_write_file(p, oc->data[0], oc->len[0]));
	uint32_t crc = th_crc32c(0, oc->data[0], oc->len[0]);
	struct th_file f = {.size = oc->len[0], .crc32c = crc, .has_crc = 1};
	snprintf(f.name, sizeof(f.name), "%s", ch->files[0].name);
	th_assert_ok(th_write_meta(sdir, &ch->dataset, &ch->id, ch->first, ch->end, 1, &f));
	char rec[CR_RESUME_REC], v[200];
	snprintf(v, sizeof(v), "E%s", etag);
	cr_resume_format(rec, 0, oc->len[0], crc, 'D', v);
	cr_staging_path(p, sizeof(p), D.env.data_dir, &ch->id, ".resume");
	th_assert_ok(th_write_file(p, rec, sizeof(rec)));

	restart(NULL);
	r = chunkd_wait(D.c, t, WAIT_MS);
	if (r != 0) {
		th_daemon_dump_log(&D.env.d);
		fail_msg("the download whose daemon was killed after writing its metadata ended %d "
			 "(%s), expected 0: the next daemon must publish it",
			 r, chunkd_strerror(r));
	}
	check_published(ch, &D.big_bytes);
	/* Nothing was left to fetch: the only request is the one the kill cut short. */
	th_assert_ok(cr_requests(D.fault.log, suffix, q, 4, &n));
	assert_int_equal(n, 1);
	check_no_leftovers();
	check_fsck();
}

/* ---- f) regression: compaction and the waiters of earlier, identical requests ---------------- */

/*
 * Two downloads of one chunk while it is downloading: the second joins the first's waiters, and
 * the journal holds both records, of which only the second is live. Compaction keeps the live
 * records only, so a compaction now would drop the first ticket's record. The journal is pushed
 * well past the compaction threshold (1 MiB, and twice the live records) with deletes of
 * unknown chunks, which are forgotten once done; then the daemon is killed. The next one must
 * still answer both tickets with 0 once the chunk is published (test_crashloop's long mode found
 * a download ticket that never ended after the final restart). And the journal must not keep
 * the flood: compacted then, or once the joined downloads are over, it stays bounded.
 */
/* Condition for th_wait: the journal (path in arg) is below the compaction floor. */
static int journal_small(void *arg)
{
	int64_t size = cr_file_size(arg);
	return size >= 0 && size < (int64_t)MIB;
}

#define FLOOD_BATCH 1000
#define FLOOD_N     20000 /* 72-byte records: 1.4 MB of journal, nothing of it live */

/* FLOOD_N deletes of unknown chunks (ids tagged `tag`): more than the compaction floor of journal,
 * none of it live. From a handle of its own: a pending ticket blocks its handle's ticket table
 * 1024 later. */
static void flood_journal(uint32_t tag)
{
	chunkd_client *flood;
	uint64_t t;
	th_assert_ok(chunkd_open(D.env.name, &flood));
	for (uint32_t n = 0; n < FLOOD_N;) {
		for (uint32_t i = 0; i < FLOOD_BATCH; i++) {
			chunkd_id id;
			th_make_id(&id, 0xf100d + tag, n++);
			th_assert_ok(chunkd_delete(flood, &id, &t));
		}
		/* Deletes of unknown chunks end 0 at once; the last one ends last. */
		assert_int_equal(chunkd_wait(flood, t, WAIT_MS), 0);
	}
	chunkd_close(flood);
}

static void test_compaction_keeps_tickets_of_joined_downloads(void **state)
{
	const struct th_chunk *ch = &D.big.chunks[0];
	struct fh_desc desc;
	char prefix[256], base[128], journal[PATH_MAX];
	uint64_t t1, t2, t;
	(void)state;
	snprintf(journal, sizeof(journal), "%s/journal", D.env.data_dir);

	/* 256 KiB/s: the 4 MiB download stays in flight for 16 s, longer than the flood. */
	fh_server_url(&D.fault, base, sizeof(base));
	snprintf(prefix, sizeof(prefix), "%s/fault/slow-262144", base);
	th_assert_ok(fh_desc_init(&desc, ch, prefix));
	th_assert_ok(chunkd_download(D.c, &desc.c, &t1));
	wait_downloaded(&ch->id, 1);
	th_assert_ok(chunkd_download(D.c, &desc.c, &t2));

	flood_journal(0);
	int compacted = cr_count_lines(cur_log(), "journal: compacted");
	fprintf(stderr,
		"test_durable: %d deletes; the journal holds %" PRId64 " bytes, %d compaction%s "
		"while two downloads of one chunk waited\n",
		FLOOD_N, cr_file_size(journal), compacted, compacted == 1 ? "" : "s");
	/* Both downloads are still waiting: the case is set up. */
	assert_int_equal(chunkd_wait(D.c, t1, 0), -ETIMEDOUT);
	assert_int_equal(chunkd_wait(D.c, t2, 0), -ETIMEDOUT);

	th_assert_ok(cr_sup_kill(&D.sup));
	restart(NULL);
	int r = chunkd_wait(D.c, t2, WAIT_MS);
	if (r != 0) {
		th_daemon_dump_log(&D.env.d);
		fail_msg("the second download ended %d (%s)", r, chunkd_strerror(r));
	}
	/* Published: the first ticket's result is due now (it was posted with the second's). */
	r = chunkd_wait(D.c, t1, 10000);
	if (r != 0) {
		th_daemon_dump_log(&D.env.d);
		fail_msg("the first download of the chunk ended %d (%s) although the chunk is "
			 "published: its ticket was lost with its journal record at compaction",
			 r, chunkd_strerror(r));
	}
	check_published(ch, &D.big_bytes);

	/* Whether compaction ran during the flood or had to wait for the downloads, the journal
	 * must not keep the flood: after one more commit it is below the compaction floor. */
	th_make_id(&desc.c.id, 0xf100d, FLOOD_N);
	th_assert_ok(chunkd_delete(D.c, &desc.c.id, &t));
	assert_int_equal(chunkd_wait(D.c, t, WAIT_MS), 0);
	if (th_wait(journal_small, journal, GONE_MS) != 0) {
		th_daemon_dump_log(&D.env.d);
		fail_msg("the journal holds %" PRId64 " bytes: the flood was never compacted away",
			 cr_file_size(journal));
	}
	check_no_leftovers();
	check_fsck();
}

/* ---- g) regression: a leftover directory without metadata where the chunk belongs ----------- */

/*
 * test_crashloop's long mode ended with a download that never finished: the last daemon's scan
 * said "skipping chunks/<ds>/<chunk>: no .chunkd-meta file" (a directory without metadata at the
 * very path of a chunk the journal wanted present, most likely a removal the previous daemon
 * did in place in chunks/ when it was killed), then "resuming from staging (3 of 3 files
 * complete)", and the chunk stayed DOWNLOADING with all its bytes for two minutes: its rename
 * found the path taken (-EEXIST) and was retried every 50 ms for ever. Here the leftover is made
 * by hand: a chunk directory holding part of one file and no .chunkd-meta. A download of that
 * chunk must end: either published (the leftover replaced, byte-identical) or failed for good,
 * visibly (FAILED in chunkd_status) with the leftover left alone.
 */
static void test_download_onto_leftover_dir_without_meta_ends(void **state)
{
	const struct th_chunk *ch = &D.env.man.chunks[0];
	const struct fh_origin_chunk *oc = fh_origin_find(&D.small_bytes, &ch->id);
	struct fh_desc desc;
	chunkd_chunk_status st;
	char path[PATH_MAX], f[2 * PATH_MAX], s[256];
	uint64_t t;
	(void)state;

	stop_cleanly();
	fh_chunk_path(path, sizeof(path), D.env.data_dir, ch);
	th_assert_ok(th_mkdirs(path, 0755));
	snprintf(f, sizeof(f), "%s/%s", path, ch->files[0].name);
	th_assert_ok(th_write_file(f, oc->data[0], oc->len[0] / 3));
	restart(NULL);
	if (cr_count_lines(cur_log(), "no .chunkd-meta file") != 1) {
		th_daemon_dump_log(&D.env.d);
		fail_msg("the daemon did not skip the directory without metadata");
	}

	th_assert_ok(fh_desc_init(&desc, ch, D.nginx_url));
	th_assert_ok(chunkd_download(D.c, &desc.c, &t));
	int r = chunkd_wait(D.c, t, 30000);
	th_assert_ok(chunkd_status(D.c, &ch->id, &st));
	fh_status_str(&st, s, sizeof(s));
	fprintf(stderr, "test_durable: download onto the leftover: %d (%s); %s\n", r,
		chunkd_strerror(r), s);
	if (r == -ETIMEDOUT) {
		th_daemon_dump_log(&D.env.d);
		fail_msg(
		    "the download of a chunk whose path holds a leftover directory did not end "
		    "in 30 s: %s",
		    s);
	}
	if (r == 0) {
		check_published(ch, &D.small_bytes);
	} else {
		assert_int_equal(st.state, CHUNKD_CHUNK_FAILED);
		assert_int_equal(st.last_error, r);
		assert_true(th_exists(f));
	}
	check_no_leftovers();
}

/* ---- h) regression: a delete's ticket behind a download of the same chunk ------------------ */

/*
 * test_crashloop failed in CI with a delete ticket that never ended: "delete of chunk 27 (state
 * PRESENT, ...) (ticket 3, request 3 of this client, ...) not done 120000 ms after the final
 * restart". The first request ever for that chunk was the delete; another client's download of
 * it came later; a daemon journaled both and was killed before it posted their results (the
 * commit's fdatasync had not completed: the record bytes were in the page cache, which a kill
 * does not lose). The next daemon replayed a delete of an unknown chunk followed by a download,
 * and dropped the delete's requester.
 *
 * That state is built here exactly: with the daemon stopped (SIGSTOP) the client enqueues the
 * delete and the download (tickets t1, t2, left in its ring), the daemon is killed, and the two
 * records are appended to the journal as that daemon would have (slot, owner word and tickets
 * of this client) with the daemon's own journal code. The next daemon replays them (and skips
 * the ring records, which the journal covers); both tickets must end 0 and the chunk be
 * published.
 */
/* Append to the stopped instance's journal, with the daemon's own code, what a daemon would have
 * journaled for a delete (desc NULL) or a download by client slot `slot` with owner word `owner`. */
static void journal_as_daemon(uint32_t slot, uint64_t owner, uint64_t ticket, const chunkd_id *id,
			      const chunkd_chunk *desc)
{
	struct chunkd_dl *dl = NULL;
	struct chunkd_jrec r = {.type = desc ? CHUNKD_JREC_DOWNLOAD : CHUNKD_JREC_DELETE,
				.client = slot,
				.owner = owner,
				.ticket = ticket};
	memcpy(r.id, id, sizeof(r.id));
	if (desc) {
		uint8_t rec[CHUNKD_REC_MAX];
		char why[128];
		dl = malloc(sizeof(*dl));
		assert_non_null(dl);
		int n = chunkd__rec_encode_download(desc, ticket, rec, sizeof(rec));
		assert_true(n > 0);
		if (chunkd__rec_decode_download(rec, (size_t)n, dl, why, sizeof(why)) != 0)
			fail_msg("decoding the download record: %s", why);
		r.dl = dl;
	}
	int dirfd = open(D.env.data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	assert_true(dirfd >= 0);
	struct chunkd_journal *j;
	th_assert_ok(chunkd__journal_open(dirfd, &j, NULL, NULL, NULL));
	th_assert_ok(chunkd__journal_append(j, &r));
	th_assert_ok(chunkd__journal_sync(j));
	chunkd__journal_close(j);
	close(dirfd);
	free(dl);
}

/* Stop the daemon (SIGSTOP) and wait until it is stopped: it takes nothing from the rings. */
static void freeze_daemon(void)
{
	th_assert_ok(kill(D.env.d.pid, SIGSTOP));
	th_assert_ok(th_wait_proc_stopped(D.env.d.pid, 5000));
}

/* The client slot of process pid (its only handle; D.c for this process) and its owner word. */
static uint32_t slot_of(pid_t pid, uint64_t *owner)
{
	int slot = th_client_slot(D.env.name, pid, NULL);
	assert_true(slot >= 0);
	th_assert_ok(th_client_owner(D.env.name, (uint32_t)slot, owner));
	return (uint32_t)slot;
}

static void test_replayed_delete_before_download_is_answered(void **state)
{
	const struct th_chunk *ch = &D.env.man.chunks[5];
	struct fh_desc desc;
	uint64_t t1, t2, owner;
	(void)state;
	th_assert_ok(fh_desc_init(&desc, ch, D.nginx_url));

	freeze_daemon();
	th_assert_ok(chunkd_delete(D.c, &ch->id, &t1));
	th_assert_ok(chunkd_download(D.c, &desc.c, &t2));
	uint32_t slot = slot_of(getpid(), &owner);
	th_assert_ok(cr_sup_kill(&D.sup));
	/* The records the killed daemon would have journaled, in its order. */
	journal_as_daemon(slot, owner, t1, &ch->id, NULL);
	journal_as_daemon(slot, owner, t2, &ch->id, &desc.c);

	restart(NULL);
	int r = chunkd_wait(D.c, t2, WAIT_MS);
	if (r != 0) {
		th_daemon_dump_log(&D.env.d);
		fail_msg("the download ended %d (%s)", r, chunkd_strerror(r));
	}
	check_published(ch, &D.small_bytes);
	/* Its result was due with the download's at the latest. */
	r = chunkd_wait(D.c, t1, 10000);
	if (r != 0) {
		th_daemon_dump_log(&D.env.d);
		fail_msg("the delete before the download ended %d (%s), expected 0: its requester "
			 "was dropped at replay", r, chunkd_strerror(r));
	}
	check_no_leftovers();
	check_fsck();
}

/* ---- i) regression: the records of a client that died meanwhile are not taken twice -------- */

/*
 * Found by reading the restart path after h): a client's records that a killed daemon had
 * journaled stay in its ring (the ring's head moves only after the commit). A new daemon skips
 * them for a live client (same owner word, ticket at or below the last journaled one), but took
 * them again for a client that died or closed meanwhile (its slot is reclaimed at start, and the
 * reclaim took the ring as owner 0, which never matches): a delete journaled before a download of
 * the same chunk then ran after it, and the download was cancelled.
 *
 * Built like h): the daemon stopped, a child client deletes chunk X and exits, this process
 * downloads X, the daemon is killed, both records go into the journal; the new daemon must
 * publish X and answer the download 0.
 */
static int i_child(struct th_child *self, void *arg)
{
	const struct th_chunk *ch = arg;
	chunkd_client *c;
	char line[64];
	uint64_t t;
	int r = chunkd_open(D.env.name, &c);
	TH_CHECK(self, r == 0, "chunkd_open: %s", chunkd_strerror(r));
	th_say(self, "OPEN");
	r = th_hear(self, line, sizeof(line), CHILD_MS);
	TH_CHECK(self, r >= 0 && !strcmp(line, "DELETE"), "expected DELETE, got %d", r);
	r = chunkd_delete(c, &ch->id, &t);
	TH_CHECK(self, r == 0, "chunkd_delete: %s", chunkd_strerror(r));
	th_say(self, "TICKET %" PRIu64, t);
	return 0; /* exits with its handle open: a client that died */
}

static void test_dead_clients_journaled_records_are_not_taken_again(void **state)
{
	const struct th_chunk *ch = &D.env.man.chunks[6];
	struct fh_desc desc;
	struct th_child child;
	char line[128];
	uint64_t t1, t2, owner, child_owner;
	(void)state;
	th_assert_ok(fh_desc_init(&desc, ch, D.nginx_url));
	th_assert_ok(th_child_start(&child, i_child, (void *)ch));
	th_assert_ok(th_child_expect(&child, "OPEN", line, sizeof(line), CHILD_MS));
	uint32_t child_slot = slot_of(child.pid, &child_owner);

	freeze_daemon();
	th_assert_ok(th_child_send(&child, "DELETE"));
	th_assert_ok(th_child_expect(&child, "TICKET", line, sizeof(line), CHILD_MS));
	assert_int_equal(sscanf(line, "TICKET %" SCNu64, &t1), 1);
	assert_true(th_exited_with(th_child_finish(&child, CHILD_MS), 0));
	th_assert_ok(chunkd_download(D.c, &desc.c, &t2));
	uint32_t slot = slot_of(getpid(), &owner);
	th_assert_ok(cr_sup_kill(&D.sup));
	journal_as_daemon(child_slot, child_owner, t1, &ch->id, NULL);
	journal_as_daemon(slot, owner, t2, &ch->id, &desc.c);

	restart(NULL);
	int r = chunkd_wait(D.c, t2, WAIT_MS);
	if (r != 0) {
		th_daemon_dump_log(&D.env.d);
		fail_msg("the download, the chunk's last request, ended %d (%s), expected 0: the dead "
			 "client's journaled delete ran again after it",
			 r, chunkd_strerror(r));
	}
	check_published(ch, &D.small_bytes);
	check_no_leftovers();
	check_fsck();
}

/* ---- j) regression: a handle opened again in the same process ------------------------------ */

/*
 * Found by reading the restart path: the daemon tells requests apart by (slot, owner word,
 * ticket), and the owner word is the process's. A process that closed a handle and opened
 * another got the same slot and, with tickets starting at 1 again, a restarted daemon skipped
 * the new handle's requests as journaled already (the old handle's ticket 1 was): they were lost.
 * Here the child closes a handle whose request was journaled, opens another (the same slot),
 * downloads X while the daemon is stopped, and the daemon is killed and restarted: the download
 * must end 0.
 */
/* Condition for th_wait: client slot *arg is free (owner word 0, not RECLAIM any more). */
static int slot_free(void *arg)
{
	uint64_t owner;
	return th_client_owner(D.env.name, *(uint32_t *)arg, &owner) == 0 && owner == 0;
}

static int j_child(struct th_child *self, void *arg)
{
	const struct th_chunk *ch = arg;
	chunkd_client *c;
	struct fh_desc desc;
	chunkd_id other;
	char line[64];
	uint64_t t;
	TH_CHECK(self, fh_desc_init(&desc, ch, D.nginx_url) == 0, "descriptor");
	int r = chunkd_open(D.env.name, &c);
	TH_CHECK(self, r == 0, "chunkd_open: %s", chunkd_strerror(r));
	int slot1 = th_client_slot(D.env.name, getpid(), NULL);
	th_make_id(&other, 0x1e0, 1);
	r = chunkd_delete(c, &other, &t);
	TH_CHECK(self, r == 0, "chunkd_delete: %s", chunkd_strerror(r));
	r = chunkd_wait(c, t, WAIT_MS);
	TH_CHECK(self, r == 0, "the delete (journaled) ended %s", chunkd_strerror(r));
	chunkd_close(c);
	TH_CHECK(self, slot1 >= 0, "no slot names this process");
	uint32_t s1 = (uint32_t)slot1;
	TH_CHECK(self, th_wait(slot_free, &s1, WAIT_MS) == 0, "slot %d was never freed", slot1);
	r = chunkd_open(D.env.name, &c);
	TH_CHECK(self, r == 0, "chunkd_open again: %s", chunkd_strerror(r));
	int slot2 = th_client_slot(D.env.name, getpid(), NULL);
	TH_CHECK(self, slot1 >= 0 && slot1 == slot2, "slots %d then %d: the case needs the same",
		 slot1, slot2);
	th_say(self, "OPEN");
	r = th_hear(self, line, sizeof(line), CHILD_MS);
	TH_CHECK(self, r >= 0 && !strcmp(line, "DOWNLOAD"), "expected DOWNLOAD, got %d", r);
	r = chunkd_download(c, &desc.c, &t);
	TH_CHECK(self, r == 0, "chunkd_download: %s", chunkd_strerror(r));
	th_say(self, "ENQUEUED");
	r = th_hear(self, line, sizeof(line), CHILD_MS);
	TH_CHECK(self, r >= 0 && !strcmp(line, "WAIT"), "expected WAIT, got %d", r);
	r = chunkd_wait(c, t, WAIT_MS);
	th_say(self, "RESULT %d", r);
	chunkd_close(c);
	return 0;
}

static void test_reopened_handle_requests_survive_restart(void **state)
{
	const struct th_chunk *ch = &D.env.man.chunks[7];
	struct th_child child;
	char line[128];
	int r;
	(void)state;
	th_assert_ok(th_child_start(&child, j_child, (void *)ch));
	th_assert_ok(th_child_expect(&child, "OPEN", line, sizeof(line), CHILD_MS));
	freeze_daemon();
	th_assert_ok(th_child_send(&child, "DOWNLOAD"));
	th_assert_ok(th_child_expect(&child, "ENQUEUED", line, sizeof(line), CHILD_MS));
	th_assert_ok(cr_sup_kill(&D.sup));
	restart(NULL);
	th_assert_ok(th_child_send(&child, "WAIT"));
	th_assert_ok(th_child_expect(&child, "RESULT", line, sizeof(line), WAIT_MS + CHILD_MS));
	assert_int_equal(sscanf(line, "RESULT %d", &r), 1);
	if (r != 0) {
		th_daemon_dump_log(&D.env.d);
		fail_msg("the reopened handle's download ended %d (%s), expected 0", r,
			 chunkd_strerror(r));
	}
	assert_true(th_exited_with(th_child_finish(&child, CHILD_MS), 0));
	check_published(ch, &D.small_bytes);
	check_no_leftovers();
}

/* ---- k) regression: a refused download is not carried out after a restart ---------------- */

/*
 * Found by the same review: every valid download record was journaled before the daemon decided
 * on it, so a refused one (-EEXIST: another descriptor) became its chunk's live record. Chunk X
 * fails for good with descriptor 1 (its origin answers 404); descriptor 2 (valid URLs, a longer
 * range) is refused. After a restart the journal must still want X as descriptor 1 (retried, and
 * failed again), not download descriptor 2, which the daemon had refused, also when a compaction
 * ran in between (before the fix, it kept only descriptor 2's record).
 */
static void test_refused_download_is_not_carried_out_after_restart(void **state)
{
	const struct th_chunk *ch = &D.env.man.chunks[4];
	struct fh_desc bad, other;
	char missing[200];
	chunkd_chunk_status st;
	uint64_t t;
	(void)state;
	snprintf(missing, sizeof(missing), "%s/no-such-dir", D.nginx_url);
	th_assert_ok(fh_desc_init(&bad, ch, missing));
	th_assert_ok(fh_desc_init(&other, ch, D.nginx_url));
	other.c.end_block++;
	th_assert_ok(chunkd_download(D.c, &bad.c, &t));
	int r = chunkd_wait(D.c, t, WAIT_MS);
	if (r != -EREMOTEIO)
		fail_msg("the download from a missing origin ended %d (%s), expected -EREMOTEIO", r,
			 chunkd_strerror(r));
	th_assert_ok(chunkd_download(D.c, &other.c, &t));
	assert_int_equal(chunkd_wait(D.c, t, WAIT_MS), -EEXIST);
	/* A compaction keeps only live records: if the refused request were X's, descriptor 1's
	 * record would be gone. */
	flood_journal(1);
	if (cr_count_lines(cur_log(), "journal: compacted") < 1)
		fail_msg("the flood did not compact the journal: the case is not set up");

	th_assert_ok(cr_sup_kill(&D.sup));
	restart(NULL);
	/* Descriptor 1 is wanted again: retried, and failed again. */
	if (cr_wait_state(D.c, &ch->id, CHUNKD_CHUNK_FAILED, WAIT_MS, &st) != 0) {
		char s[256];
		fh_status_str(&st, s, sizeof(s));
		th_daemon_dump_log(&D.env.d);
		fail_msg("after the restart chunk %.16s is %s, expected FAILED (descriptor 1 retried)",
			 ch->id_hex, s);
	}
	chunkd_ref ref;
	assert_int_equal(chunkd_find(D.c, &ch->dataset, ch->first, &ref), -ENOENT);
}

/* ---- l) the skip of journaled ring records is bounded to the rings at start -------------- */

/*
 * After a reboot the journal survives while CLOCK_MONOTONIC (the tickets' base) starts low again,
 * and a new process may carry an old owner word (pid and start time in ticks since boot, the
 * same for a service started the same way). The daemon skips a ring record whose ticket is at
 * or below the client's last journaled one, as journaled already: that may only apply to
 * records that were in the ring when it started. Here the journal gets a record for this
 * process's slot and owner word with a ticket far above its own; after the restart a new
 * download must be carried out.
 */
static void test_old_journal_tickets_do_not_hide_new_requests(void **state)
{
	const struct th_chunk *ch = &D.env.man.chunks[3];
	struct fh_desc desc;
	chunkd_id other;
	uint64_t owner, t;
	(void)state;
	th_assert_ok(fh_desc_init(&desc, ch, D.nginx_url));
	uint32_t slot = slot_of(getpid(), &owner);
	th_assert_ok(cr_sup_kill(&D.sup));
	th_make_id(&other, 0x1b00, 1);
	journal_as_daemon(slot, owner, UINT64_MAX / 2, &other, NULL);
	restart(NULL);
	th_assert_ok(chunkd_download(D.c, &desc.c, &t));
	assert_true(t < UINT64_MAX / 2);
	int r = chunkd_wait(D.c, t, WAIT_MS);
	if (r != 0) {
		th_daemon_dump_log(&D.env.d);
		fail_msg("a download enqueued after the restart ended %d (%s): skipped as journaled",
			 r, chunkd_strerror(r));
	}
	check_published(ch, &D.small_bytes);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_restart_keeps_pending_requests_pins_and_tickets,
					    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_resume_after_sigkill_uses_range_and_if_range,
					    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_resume_if_range_mismatch_starts_over_with_new_file,
					    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_resume_torn_record_starts_file_over, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_sigterm_suspends_download_and_restart_resumes,
					    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_journal_torn_tail_is_truncated_and_state_intact,
					    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_crash_after_meta_write_resumes_and_publishes,
					    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_compaction_keeps_tickets_of_joined_downloads,
					    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_download_onto_leftover_dir_without_meta_ends,
					    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_replayed_delete_before_download_is_answered,
					    setup, teardown),
	    cmocka_unit_test_setup_teardown(
		test_dead_clients_journaled_records_are_not_taken_again, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_reopened_handle_requests_survive_restart, setup,
					    teardown),
	    cmocka_unit_test_setup_teardown(test_refused_download_is_not_carried_out_after_restart,
					    setup, teardown),
	    cmocka_unit_test_setup_teardown(test_old_journal_tickets_do_not_hide_new_requests,
					    setup, teardown),
	};
	/* CHUNKD_TEST_FILTER=pattern runs only the matching cases, e.g. "test_journal*". */
	const char *filter = getenv("CHUNKD_TEST_FILTER");
	if (filter && *filter)
		cmocka_set_test_filter(filter);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
