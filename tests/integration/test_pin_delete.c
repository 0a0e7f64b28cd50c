/*
 * test_pin_delete.c — pins against deletes, with pinning clients in other processes:
 * (a) a chunk pinned while deleted is unfindable as soon as the delete's ticket says 0, but every
 *     file under the pinned path stays byte-identical (checked several times, while the daemon
 *     serves other requests and while it is idle); after chunkd_release the directory goes;
 * (b) the same with the pinning process killed by SIGKILL instead: the directory is gone within
 *     1 s of the kill;
 * (c) two pinners of a deleted chunk: killing one keeps the directory for the other;
 * (d) a pinned chunk deleted and downloaded again while still pinned is published again as it
 *     is (findable, same path, same files) and stays after the pin is released;
 * and in each case a second client's pins on other chunks are unaffected.
 * Chunks come from gen-chunks.py --flat and are downloaded through file:// URLs at start.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dl_helpers.h"
#include "harness.h"

#define NCHUNKS         10
#define READY_MS        20000
#define WAIT_MS         20000
#define CHILD_MS        20000
#define RELEASE_GONE_MS 5000 /* the directory of a released chunk is gone within this */
#define KILL_GONE_MS    1000 /* ... and of a chunk whose pinner was killed (the acceptance) */
#define MAX_PINS        4

static struct th_env env;
static struct th_manifest man;
static char www[PATH_MAX], prefix[PATH_MAX + 16];
static chunkd_client *client;

static int group_setup(void **state)
{
	static const char *const gen[] = {"--flat", "--datasets", "2",  "--chunks",
					  "10",     "--files",    "3",  "--size",
					  "100000", "--seed",     "31", NULL};
	char json[PATH_MAX];
	uint64_t tickets[NCHUNKS];
	(void)state;
	th_require();
	if (th_env_init(&env, "pindel") < 0)
		goto err;
	th_env_path(&env, www, sizeof(www), "www");
	th_env_path(&env, json, sizeof(json), "www.json");
	if (th_gen_chunks(www, json, gen, &man) < 0 || man.n != NCHUNKS)
		goto err;
	snprintf(prefix, sizeof(prefix), "file://%s", www);
	if (th_env_start(&env, NULL, READY_MS, NULL) < 0)
		goto err;
	int r = chunkd_open(env.name, &client);
	if (r < 0) {
		fprintf(stderr, "chunkd_open(%s) = %d (%s)\n", env.name, r, chunkd_strerror(r));
		goto err;
	}
	/* Every chunk published through the request path. */
	for (size_t i = 0; i < man.n; i++) {
		struct dl_desc d;
		r = dl_desc_init(&d, &man.chunks[i], prefix);
		if (r == 0)
			r = chunkd_download(client, &d.c, &tickets[i]);
		dl_desc_fini(&d);
		if (r < 0) {
			fprintf(stderr, "chunk %zu: chunkd_download = %d (%s)\n", i, r,
				chunkd_strerror(r));
			goto err;
		}
	}
	for (size_t i = 0; i < man.n; i++) {
		r = chunkd_wait(client, tickets[i], WAIT_MS);
		if (r < 0) {
			fprintf(stderr, "chunk %zu: chunkd_wait = %d (%s)\n", i, r,
				chunkd_strerror(r));
			th_daemon_dump_log(&env.d);
			goto err;
		}
	}
	return 0;
err:
	chunkd_close(client);
	client = NULL;
	th_manifest_free(&man);
	th_env_fini(&env);
	return -1;
}

static int group_teardown(void **state)
{
	(void)state;
	chunkd_close(client);
	client = NULL;
	th_manifest_free(&man);
	th_env_fini(&env);
	return 0;
}

/* ---- the pinning client (a child process) --------------------------------------------------- */

struct pin_args {
	int n;
	int idx[MAX_PINS]; /* manifest chunks to pin */
};

/*
 * Attach, pin the chunks (by their first block), say "pinned IDX PATH" for each and "ready",
 * then obey the parent: "check" (every pinned file still byte-identical to the origin: say
 * "checked"), "release" (say "released"), "close" (close the handle and exit 0).
 */
static int pinner_main(struct th_child *self, void *arg)
{
	const struct pin_args *a = arg;
	chunkd_client *c;
	chunkd_ref refs[MAX_PINS];
	char line[256], why[DL_WHY_LEN];
	int r = chunkd_open(env.name, &c);
	TH_CHECK(self, r == 0, "chunkd_open = %d (%s)", r, chunkd_strerror(r));
	for (int i = 0; i < a->n; i++) {
		const struct th_chunk *ch = &man.chunks[a->idx[i]];
		r = chunkd_find(c, &ch->dataset, ch->first, &refs[i]);
		TH_CHECK(self, r == 0, "pin chunk %d: chunkd_find = %d (%s)", a->idx[i], r,
			 chunkd_strerror(r));
		TH_CHECK(self, !memcmp(&refs[i].id, &ch->id, sizeof(ch->id)),
			 "pin chunk %d: found another chunk", a->idx[i]);
		th_say(self, "pinned %d %s", a->idx[i], refs[i].path);
	}
	th_say(self, "ready");
	for (;;) {
		r = th_hear(self, line, sizeof(line), 60000);
		TH_CHECK(self, r >= 0, "no command from the parent: %d", r);
		if (!strcmp(line, "check")) {
			for (int i = 0; i < a->n; i++) {
				const struct th_chunk *ch = &man.chunks[a->idx[i]];
				r = dl_check_chunk_dir(refs[i].path, www, ch, why, sizeof(why));
				TH_CHECK(self, r == 0, "pinned chunk %d: %s", a->idx[i], why);
			}
			th_say(self, "checked");
		} else if (!strcmp(line, "release")) {
			for (int i = 0; i < a->n; i++)
				chunkd_release(c, &refs[i]);
			th_say(self, "released");
		} else if (!strcmp(line, "close")) {
			chunkd_close(c);
			return 0;
		} else {
			return th_fail(self, __FILE__, __LINE__, "unknown command '%s'", line);
		}
	}
}

/* Start a pinner of the given chunks and wait until it holds its pins. */
static void start_pinner(struct th_child *ch, struct pin_args *a)
{
	char line[1024], want[PATH_MAX + 32];
	th_assert_ok(th_child_start(ch, pinner_main, a));
	for (int i = 0; i < a->n; i++) {
		char path[PATH_MAX];
		dl_chunk_path(path, sizeof(path), env.data_dir, &man.chunks[a->idx[i]]);
		snprintf(want, sizeof(want), "pinned %d %s", a->idx[i], path);
		th_assert_ok(th_child_expect(ch, "pinned", line, sizeof(line), CHILD_MS));
		if (strcmp(line, want))
			fail_msg("pinner said '%s', want '%s'", line, want);
	}
	th_assert_ok(th_child_expect(ch, "ready", line, sizeof(line), CHILD_MS));
}

/* Send a command and wait for its answer. */
static void command(struct th_child *ch, const char *cmd, const char *answer)
{
	char line[1024];
	th_assert_ok(th_child_send(ch, "%s", cmd));
	if (th_child_expect(ch, answer, line, sizeof(line), CHILD_MS) < 0)
		fail_msg("'%s': no '%s' from the pinner; it said:\n%s", cmd, answer,
			 th_child_output(ch));
}

static void close_pinner(struct th_child *ch)
{
	th_assert_ok(th_child_send(ch, "close"));
	th_assert_child_ok(ch, CHILD_MS);
}

/* ---- checks --------------------------------------------------------------------------------- */

static void expect_wait(uint64_t t, int want)
{
	int r = chunkd_wait(client, t, WAIT_MS);
	if (r != want) {
		th_daemon_dump_log(&env.d);
		fail_msg("ticket %" PRIu64 ": chunkd_wait = %d (%s), want %d", t, r,
			 chunkd_strerror(r), want);
	}
}

static uint64_t request_delete(const struct th_chunk *ch)
{
	uint64_t t = 0;
	assert_int_equal(chunkd_delete(client, &ch->id, &t), 0);
	return t;
}

static uint64_t download(const struct th_chunk *ch)
{
	struct dl_desc d;
	uint64_t t = 0;
	assert_int_equal(dl_desc_init(&d, ch, prefix), 0);
	int r = chunkd_download(client, &d.c, &t);
	dl_desc_fini(&d);
	assert_int_equal(r, 0);
	return t;
}

/* Published with `pins` pins held by others. */
static void expect_published(const struct th_chunk *ch, int pins)
{
	char why[DL_WHY_LEN];
	if (dl_check_published(client, env.data_dir, www, ch, pins, why, sizeof(why)) < 0)
		fail_msg("%s", why);
}

/* Right after its delete's 0: no block of the chunk is findable, the chunk is not listed, and
 * its status is DELETING with `pins` pins. */
static void expect_unfindable(const struct th_chunk *ch, uint32_t pins)
{
	const uint64_t blocks[] = {ch->first, ch->first + (ch->end - ch->first) / 2, ch->end - 1};
	for (size_t k = 0; k < sizeof(blocks) / sizeof(blocks[0]); k++) {
		chunkd_ref ref;
		int r = chunkd_find(client, &ch->dataset, blocks[k], &ref);
		if (r == 0) {
			chunkd_release(client, &ref);
			fail_msg("deleted chunk %.16s: block %" PRIu64 " is still findable",
				 ch->id_hex, blocks[k]);
		}
		assert_int_equal(r, -ENOENT);
	}
	chunkd_id ids[2 * NCHUNKS];
	size_t count = 0;
	assert_int_equal(chunkd_list(client, ids, 2 * NCHUNKS, &count), 0);
	for (size_t i = 0; i < count && i < 2 * NCHUNKS; i++)
		if (!memcmp(&ids[i], &ch->id, sizeof(ch->id)))
			fail_msg("deleted chunk %.16s is still listed", ch->id_hex);
	chunkd_chunk_status st;
	assert_int_equal(chunkd_status(client, &ch->id, &st), 0);
	if (st.state != CHUNKD_CHUNK_DELETING || st.pins != pins)
		fail_msg("deleted chunk %.16s: status %s with %u pins, want DELETING with %u",
			 ch->id_hex, dl_state_name(st.state), st.pins, pins);
}

/* A request the daemon answers without touching the chunks: when its ticket is done, the
 * daemon has taken everything enqueued before it and is idle again. */
static void round_trip(void)
{
	static uint32_t n;
	chunkd_id id;
	uint64_t t;
	th_make_id(&id, 0x7e57, n++);
	assert_int_equal(chunkd_delete(client, &id, &t), 0);
	expect_wait(t, 0);
}

/* The chunk's directory disappears within timeout_ms (measured from t0_ns), then its status
 * becomes ABSENT and trash/ empties. */
static void expect_removed(const struct th_chunk *ch, uint64_t t0_ns, int timeout_ms,
			   const char *after)
{
	char path[PATH_MAX], trash[PATH_MAX];
	dl_chunk_path(path, sizeof(path), env.data_dir, ch);
	int r = dl_wait_gone(path, timeout_ms + 1000);
	uint64_t took_ms = (th_now_ns() - t0_ns) / 1000000;
	if (r < 0) {
		th_daemon_dump_log(&env.d);
		fail_msg("chunk %.16s: directory still there %" PRIu64 " ms after %s", ch->id_hex,
			 took_ms, after);
	}
	print_message("chunk %.16s: directory gone %" PRIu64 " ms after %s\n", ch->id_hex, took_ms,
		      after);
	if (took_ms > (uint64_t)timeout_ms)
		fail_msg("chunk %.16s: directory gone only %" PRIu64 " ms after %s (limit %d ms)",
			 ch->id_hex, took_ms, after, timeout_ms);
	chunkd_chunk_status st;
	r = dl_wait_state(client, &ch->id, CHUNKD_CHUNK_ABSENT, WAIT_MS, &st);
	if (r < 0)
		fail_msg("chunk %.16s: status %s, want ABSENT", ch->id_hex,
			 dl_state_name(st.state));
	snprintf(trash, sizeof(trash), "%s/trash", env.data_dir);
	assert_int_equal(dl_wait_empty_dir(trash, WAIT_MS), 0);
}

/* ---- (a) release ---------------------------------------------------------------------------- */

static void test_pinned_delete_then_release(void **state)
{
	const struct th_chunk *x = &man.chunks[0], *w = &man.chunks[3];
	struct pin_args pa = {.n = 1, .idx = {0}}, pb = {.n = 2, .idx = {1, 2}};
	struct th_child a, b;
	char path[PATH_MAX];
	(void)state;
	dl_chunk_path(path, sizeof(path), env.data_dir, x);
	start_pinner(&a, &pa);
	start_pinner(&b, &pb);
	expect_published(x, 1);

	expect_wait(request_delete(x), 0);
	expect_unfindable(x, 1);
	command(&a, "check", "checked");

	/* The daemon downloads and removes another chunk meanwhile; x stays intact. */
	expect_wait(request_delete(w), 0);
	expect_removed(w, th_now_ns(), RELEASE_GONE_MS, "its delete (unpinned)");
	command(&a, "check", "checked");
	expect_wait(download(w), 0);
	expect_published(w, 0);
	command(&a, "check", "checked");

	/* And idle. */
	round_trip();
	command(&a, "check", "checked");
	expect_unfindable(x, 1);
	assert_true(th_exists(path));

	/* The release lets the daemon remove it. */
	uint64_t t0 = th_now_ns();
	command(&a, "release", "released");
	expect_removed(x, t0, RELEASE_GONE_MS, "the release");

	/* The other client's pins never moved. */
	command(&b, "check", "checked");
	expect_published(&man.chunks[1], 1);
	expect_published(&man.chunks[2], 1);
	close_pinner(&a);
	close_pinner(&b);
	round_trip();
	expect_published(&man.chunks[1], 0);

	/* Back for the next cases. */
	expect_wait(download(x), 0);
	expect_published(x, 0);
}

/* ---- (b) SIGKILL ---------------------------------------------------------------------------- */

static void test_pinned_delete_then_pinner_killed(void **state)
{
	const struct th_chunk *x = &man.chunks[4];
	struct pin_args pa = {.n = 1, .idx = {4}}, pb = {.n = 2, .idx = {5, 0}};
	struct th_child a, b;
	(void)state;
	start_pinner(&a, &pa);
	start_pinner(&b, &pb);
	expect_wait(request_delete(x), 0);
	expect_unfindable(x, 1);
	command(&a, "check", "checked");
	round_trip();
	command(&a, "check", "checked");

	/* Killed while holding the pin: the daemon sees the death and removes the chunk. */
	uint64_t t0 = th_now_ns();
	assert_int_equal(kill(a.pid, SIGKILL), 0);
	expect_removed(x, t0, KILL_GONE_MS, "SIGKILL of its pinner");
	th_child_kill(&a);

	command(&b, "check", "checked");
	expect_published(&man.chunks[5], 1);
	expect_published(&man.chunks[0], 1);
	close_pinner(&b);

	expect_wait(download(x), 0);
	expect_published(x, 0);
}

/* ---- (c) two pinners ------------------------------------------------------------------------ */

static void test_two_pinners_one_killed(void **state)
{
	const struct th_chunk *x = &man.chunks[7];
	struct pin_args pa = {.n = 1, .idx = {7}};
	struct th_child a, b;
	(void)state;
	start_pinner(&a, &pa);
	start_pinner(&b, &pa);
	expect_wait(request_delete(x), 0);
	expect_unfindable(x, 2);

	/* One pinner dies: the other's pin still holds the files. The daemon has reaped the dead
	 * client once its slot is free (th_client_slot stops naming it). */
	pid_t dead = a.pid;
	th_child_kill(&a);
	struct th_deadline dl;
	th_deadline_start(&dl, WAIT_MS);
	while (th_client_slot(env.name, dead, NULL) >= 0) {
		if (th_deadline_passed(&dl))
			fail_msg("the daemon did not reap killed client %d", (int)dead);
		th_pause();
	}
	round_trip();
	expect_unfindable(x, 1);
	command(&b, "check", "checked");

	uint64_t t0 = th_now_ns();
	command(&b, "release", "released");
	expect_removed(x, t0, RELEASE_GONE_MS, "the last release");
	close_pinner(&b);
	expect_wait(download(x), 0);
	expect_published(x, 0);
}

/* ---- (d) delete and download while pinned --------------------------------------------------- */

static void test_pinned_delete_then_download(void **state)
{
	const struct th_chunk *x = &man.chunks[6];
	struct pin_args pa = {.n = 1, .idx = {6}}, pb = {.n = 1, .idx = {8}};
	struct th_child a, b;
	char path[PATH_MAX];
	(void)state;
	dl_chunk_path(path, sizeof(path), env.data_dir, x);
	start_pinner(&a, &pa);
	start_pinner(&b, &pb);
	expect_wait(request_delete(x), 0);
	expect_unfindable(x, 1);

	/* Downloaded again while the pin holds the intact directory: published as it is. */
	uint64_t t0 = th_now_ns();
	expect_wait(download(x), 0);
	print_message("pinned deleted chunk published again after %" PRIu64 " us\n",
		      (th_now_ns() - t0) / 1000);
	expect_published(x, 1);
	command(&a, "check", "checked");

	/* Released: nothing is removed, since the last request wants it. */
	command(&a, "release", "released");
	round_trip();
	expect_published(x, 0);
	assert_true(th_exists(path));
	char trash[PATH_MAX];
	snprintf(trash, sizeof(trash), "%s/trash", env.data_dir);
	assert_int_equal(th_count_entries(trash), 0);

	command(&b, "check", "checked");
	expect_published(&man.chunks[8], 1);
	close_pinner(&a);
	close_pinner(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_pinned_delete_then_release),
	    cmocka_unit_test(test_pinned_delete_then_pinner_killed),
	    cmocka_unit_test(test_two_pinners_one_killed),
	    cmocka_unit_test(test_pinned_delete_then_download),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
