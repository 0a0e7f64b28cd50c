/*
 * test_robust.c — crashes and misuse around a running instance:
 * (a) a client killed with SIGKILL while holding pins: the daemon survives, reaps its slot and
 *     pins, other clients keep working and new ones attach;
 * (b) more clients than --max-clients: -EUSERS, and a slot frees up when a holder dies or closes;
 * (c) the daemon killed with SIGKILL: clients keep answering from the last catalogue, never hang,
 *     and see daemon_alive 0; attaching still works;
 * (d) a second daemon on the same data dir or the same name refuses with exit status 1;
 * (e) after the daemon was SIGKILLed a new one takes over the name and the data dir;
 * (f) chunkd_open errors: no such instance, bad names, segments of another layout.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h> /* after the four above, which it needs */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "shm/layout.h"

#define READY_MS 20000
#define CHILD_MS 20000
#define HANG_S   10 /* a client call that takes this long is a hang: SIGALRM kills the child */

static const char *const gen_args[] = {"--datasets", "4",  "--chunks", "60", "--files", "1",
				       "--size",     "64", "--seed",   "3",  NULL};

static int setup(void **state)
{
	struct th_env *e = calloc(1, sizeof(*e));
	if (!e)
		return -1;
	if (th_env_init(e, "robust") < 0 || th_env_gen(e, gen_args) < 0) {
		th_env_fini(e);
		free(e);
		return -1;
	}
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct th_env *e = *state;
	th_env_fini(e);
	free(e);
	return 0;
}

/* ---- client helpers (run in children) ------------------------------------------------------- */

/* Find every manifest chunk by its first and last block and compare; releases the pins. */
static int check_all(struct th_child *self, chunkd_client *c, const struct th_manifest *m)
{
	for (size_t i = 0; i < m->n; i++) {
		const struct th_chunk *ch = &m->chunks[i];
		const uint64_t blocks[] = {ch->first, ch->end - 1};
		for (int k = 0; k < 2; k++) {
			chunkd_ref ref;
			int r = chunkd_find(c, &ch->dataset, blocks[k], &ref);
			TH_CHECK(self, r == 0,
				 "chunk %.16s block %" PRIu64 ": chunkd_find = %d (%s)", ch->id_hex,
				 blocks[k], r, chunkd_strerror(r));
			int ok = !memcmp(&ref.id, &ch->id, sizeof(ch->id)) &&
				 ref.first_block == ch->first && ref.end_block == ch->end;
			chunkd_release(c, &ref);
			TH_CHECK(self, ok, "chunk %.16s block %" PRIu64 ": found another chunk",
				 ch->id_hex, blocks[k]);
		}
	}
	chunkd_id unknown;
	chunkd_ref ref;
	th_make_id(&unknown, 0xbad, 0);
	int r = chunkd_find(c, &unknown, 1, &ref);
	TH_CHECK(self, r == -ENOENT, "unknown dataset: chunkd_find = %d", r);
	size_t count = 0;
	r = chunkd_list(c, NULL, 0, &count);
	TH_CHECK(self, r == 0 && count == m->n, "chunkd_list = %d, count %zu, want %zu", r, count,
		 m->n);
	return 0;
}

struct client_args {
	const struct th_env *e;
	int pins;      /* pins to take and hold after attaching */
	int expect_rc; /* what chunkd_open must return */
};

/*
 * A client that attaches, pins `pins` chunks, says "attached", and then obeys the parent: "check"
 * (look everything up, say "checked"), "close" (close and exit 0). It never exits on its own.
 */
static int client_main(struct th_child *self, void *arg)
{
	const struct client_args *a = arg;
	chunkd_client *c;
	static chunkd_ref refs[CHUNKD_PINS_PER_CLIENT];
	char cmd[64];
	int r = chunkd_open(a->e->name, &c);
	TH_CHECK(self, r == a->expect_rc, "chunkd_open = %d (%s), want %d: %s", r,
		 chunkd_strerror(r), a->expect_rc, chunkd_last_error());
	if (r < 0) {
		th_say(self, "refused");
		return 0;
	}
	for (int i = 0; i < a->pins; i++) {
		const struct th_chunk *ch = &a->e->man.chunks[(size_t)i % a->e->man.n];
		r = chunkd_find(c, &ch->dataset, ch->first, &refs[i]);
		TH_CHECK(self, r == 0, "pin %d: chunkd_find = %d", i, r);
	}
	th_say(self, "attached");
	for (;;) {
		r = th_hear(self, cmd, sizeof(cmd), 60000);
		TH_CHECK(self, r >= 0, "no command from the parent: %d", r);
		if (!strcmp(cmd, "check")) {
			alarm(HANG_S);
			if (check_all(self, c, &a->e->man))
				return 1;
			alarm(0);
			th_say(self, "checked");
		} else if (!strcmp(cmd, "close")) {
			chunkd_close(c);
			th_say(self, "closed");
			return 0;
		}
	}
}

static void start_client(struct th_child *ch, struct client_args *a)
{
	char line[256];
	th_assert_ok(th_child_start(ch, client_main, a));
	if (th_child_expect(ch, a->expect_rc ? "refused" : "attached", line, sizeof(line),
			    CHILD_MS))
		fail_msg("client %d did not attach; it said:\n%s", (int)ch->pid,
			 th_child_output(ch));
}

static void client_check(struct th_child *ch)
{
	char line[256];
	th_child_send(ch, "check");
	if (th_child_expect(ch, "checked", line, sizeof(line), CHILD_MS))
		fail_msg("client %d: check failed; it said:\n%s", (int)ch->pid,
			 th_child_output(ch));
}

/* The test process as a client: open (or fail), with the message on failure. */
static chunkd_client *open_or_fail(const char *name)
{
	chunkd_client *c = NULL;
	int r = chunkd_open(name, &c);
	if (r)
		fail_msg("chunkd_open(%s) = %d (%s): %s", name, r, chunkd_strerror(r),
			 chunkd_last_error());
	return c;
}

/* ---- (a) a client killed while holding pins ------------------------------------------------- */

static void test_killed_client_is_reaped(void **state)
{
	struct th_env *e = *state;
	static const char *const args[] = {"--log-level", "debug", "--max-clients", "8", NULL};
	struct th_child holder, other, late;
	char line[256];
	uint32_t pins = 0;
	th_assert_ok(th_env_start(e, args, READY_MS, NULL));

	struct client_args ha = {.e = e, .pins = 40}, oa = {.e = e};
	start_client(&other, &oa);
	start_client(&holder, &ha);
	int slot = th_client_slot(e->name, holder.pid, &pins);
	assert_true(slot >= 0);
	assert_int_equal(pins, 40);
	/* The daemon watches the holder's pidfd from now on: its death, not a later scan, must
	 * free the slot. */
	snprintf(line, sizeof(line), "client pid %d attached", (int)holder.pid);
	th_assert_ok(th_wait_file_contains(e->d.log, line, 10000));

	th_child_kill(&holder);
	snprintf(line, sizeof(line), "client pid %d (slot %d) is gone", (int)holder.pid, slot);
	th_assert_ok(th_wait_file_contains(e->d.log, line, 10000));
	struct th_deadline dl;
	for (th_deadline_start(&dl, 10000); th_client_slot(e->name, holder.pid, NULL) != -ENOENT;
	     th_pause())
		if (th_deadline_passed(&dl))
			fail_msg("slot %d still names the dead client %d", slot, (int)holder.pid);

	/* The daemon is alive and serving; the other client works; a new one attaches. */
	assert_true(th_daemon_running(&e->d));
	client_check(&other);
	start_client(&late, &oa);
	client_check(&late);
	th_child_send(&late, "close");
	th_child_send(&other, "close");
	th_assert_child_ok(&late, CHILD_MS);
	th_assert_child_ok(&other, CHILD_MS);
	chunkd_instance_info in;
	chunkd_client *c = open_or_fail(e->name);
	assert_int_equal(chunkd_info(c, &in), 0);
	assert_int_equal(in.daemon_alive, 1);
	assert_int_equal(in.state, CHUNKD_STATE_READY);
	chunkd_close(c);
	assert_true(th_exited_with(th_daemon_stop(&e->d, 10000), 0));
}

/* ---- (b) more clients than --max-clients ---------------------------------------------------- */

static void test_max_clients(void **state)
{
	struct th_env *e = *state;
	static const char *const args[] = {"--max-clients", "4", NULL};
	struct th_child ch[4], extra;
	chunkd_client *c, *c2;
	th_assert_ok(th_env_start(e, args, READY_MS, NULL));

	struct client_args a = {.e = e, .pins = 3};
	for (int i = 0; i < 4; i++)
		start_client(&ch[i], &a);
	/* All four slots are taken: this process, and a fifth client process, are refused. */
	int r = chunkd_open(e->name, &c);
	assert_int_equal(r, -EUSERS);
	assert_non_null(strstr(chunkd_last_error(), "4"));
	struct client_args refused = {.e = e, .expect_rc = -EUSERS};
	start_client(&extra, &refused);
	th_assert_child_ok(&extra, CHILD_MS);

	/* One holder dies: its slot comes back once the daemon has reaped it. */
	th_child_kill(&ch[0]);
	struct th_deadline dl;
	for (th_deadline_start(&dl, 10000); (r = chunkd_open(e->name, &c)) != 0; th_pause()) {
		if (r != -EUSERS)
			fail_msg("chunkd_open = %d (%s): %s", r, chunkd_strerror(r),
				 chunkd_last_error());
		if (th_deadline_passed(&dl))
			fail_msg("the dead client's slot is still taken after 10 s");
	}
	/* Full again, this time with a handle of ours among the four. */
	assert_int_equal(chunkd_open(e->name, &c2), -EUSERS);

	/* One holder closes and exits: its slot comes back too. */
	th_child_send(&ch[1], "close");
	th_assert_child_ok(&ch[1], CHILD_MS);
	for (th_deadline_start(&dl, 10000); (r = chunkd_open(e->name, &c2)) != 0; th_pause()) {
		if (r != -EUSERS)
			fail_msg("chunkd_open = %d (%s): %s", r, chunkd_strerror(r),
				 chunkd_last_error());
		if (th_deadline_passed(&dl))
			fail_msg("the closed client's slot is still taken after 10 s");
	}
	/* Our own handles close; the remaining holders still work. */
	chunkd_close(c);
	chunkd_close(c2);
	client_check(&ch[2]);
	client_check(&ch[3]);
	th_child_send(&ch[2], "close");
	th_child_send(&ch[3], "close");
	th_assert_child_ok(&ch[2], CHILD_MS);
	th_assert_child_ok(&ch[3], CHILD_MS);
	/* Everyone has gone: every slot is free again. */
	for (th_deadline_start(&dl, 10000); th_clients_in_use(e->name, 0) != 0; th_pause())
		if (th_deadline_passed(&dl))
			fail_msg("%d client slots still taken after every client left",
				 th_clients_in_use(e->name, 0));
	assert_true(th_exited_with(th_daemon_stop(&e->d, 10000), 0));
}

/* ---- (c) the daemon killed under its clients ------------------------------------------------ */

struct orphan_args {
	const struct th_env *e;
	pid_t daemon;
	int wait_for_go; /* attach before the kill, check after the parent says "go" */
};

static int orphan_main(struct th_child *self, void *arg)
{
	const struct orphan_args *a = arg;
	chunkd_client *c;
	chunkd_instance_info in;
	chunkd_ref held[8];
	char cmd[64];
	alarm(HANG_S);
	int r = chunkd_open(a->e->name, &c);
	TH_CHECK(self, r == 0, "chunkd_open = %d (%s): %s", r, chunkd_strerror(r),
		 chunkd_last_error());
	if (a->wait_for_go) {
		/* Pins held across the daemon's death. */
		for (int i = 0; i < 8; i++) {
			const struct th_chunk *ch = &a->e->man.chunks[i];
			r = chunkd_find(c, &ch->dataset, ch->first, &held[i]);
			TH_CHECK(self, r == 0, "pin %d: chunkd_find = %d", i, r);
		}
		alarm(0);
		th_say(self, "attached");
		r = th_hear(self, cmd, sizeof(cmd), 30000);
		TH_CHECK(self, r >= 0 && !strcmp(cmd, "go"), "no go from the parent: %d", r);
		alarm(HANG_S);
	}
	if (check_all(self, c, &a->e->man))
		return 1;
	r = chunkd_info(c, &in);
	TH_CHECK(self, r == 0, "chunkd_info = %d", r);
	TH_CHECK(self, in.daemon_alive == 0, "daemon_alive %d after SIGKILL", in.daemon_alive);
	TH_CHECK(self, in.daemon_pid == a->daemon, "daemon_pid %d, want %d", (int)in.daemon_pid,
		 (int)a->daemon);
	TH_CHECK(self, in.nchunks == a->e->man.n, "nchunks %u", in.nchunks);
	if (a->wait_for_go) {
		/* The pinned directories are still there and readable. */
		for (int i = 0; i < 8; i++) {
			char p[PATH_MAX + CHUNKD_MAX_NAME + 2];
			const struct th_chunk *ch = &a->e->man.chunks[i];
			snprintf(p, sizeof(p), "%s/%s", held[i].path, ch->files[0].name);
			size_t len = 0;
			char *data = th_read_file(p, &len);
			TH_CHECK(self,
				 data && len == ch->files[0].size &&
				     th_crc32c(0, data, len) == ch->files[0].crc32c,
				 "pinned file %s is not the generated one", p);
			free(data);
			chunkd_release(c, &held[i]);
		}
	}
	chunkd_close(c);
	alarm(0);
	th_say(self, "ok");
	return 0;
}

static void test_daemon_killed(void **state)
{
	struct th_env *e = *state;
	struct th_child before, after;
	char line[256];
	th_assert_ok(th_env_start(e, NULL, READY_MS, NULL));
	struct orphan_args a = {.e = e, .daemon = e->d.pid, .wait_for_go = 1};
	th_assert_ok(th_child_start(&before, orphan_main, &a));
	if (th_child_expect(&before, "attached", line, sizeof(line), CHILD_MS))
		fail_msg("client did not attach:\n%s", th_child_output(&before));

	int st = th_daemon_kill(&e->d, 10000);
	assert_true(st >= 0 && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
	/* A client attached before the kill, and one attaching after it. */
	th_child_send(&before, "go");
	th_assert_child_ok(&before, CHILD_MS);
	struct orphan_args b = {.e = e, .daemon = e->d.pid};
	th_assert_ok(th_child_start(&after, orphan_main, &b));
	th_assert_child_ok(&after, CHILD_MS);
	/* The segments survive the daemon. */
	assert_true(th_shm_exists(e->name, "cat"));
	assert_true(th_shm_exists(e->name, "req"));
}

/* ---- (d) a second daemon ------------------------------------------------------------------- */

static void expect_refusal(struct th_daemon *d, const char *needle)
{
	char why[64];
	int st = th_daemon_wait_exit(d, 10000);
	if (!th_exited_with(st, 1)) {
		th_daemon_dump_log(d);
		fail_msg("second daemon: %s, want exit 1", th_status_str(st, why, sizeof(why)));
	}
	if (th_file_contains(d->log, needle) != 1) {
		th_daemon_dump_log(d);
		fail_msg("second daemon's stderr does not say \"%s\"", needle);
	}
}

static void test_second_daemon_refused(void **state)
{
	struct th_env *e = *state;
	chunkd_instance_info before, now;
	char log[PATH_MAX], dir[PATH_MAX];
	th_assert_ok(th_env_start(e, NULL, READY_MS, &before));

	/* Same data dir, another name. */
	th_instance_name(e->more_names[0], sizeof(e->more_names[0]), "robust-other");
	th_env_path(e, log, sizeof(log), "second-same-dir.log");
	th_assert_ok(th_daemon_start(&e->more[0], e->more_names[0], e->data_dir, log, NULL));
	expect_refusal(&e->more[0], "in use");
	chunkd_client *c;
	/* The refused daemon published nothing under its name. */
	assert_int_equal(chunkd_open(e->more_names[0], &c), -ENOENT);

	/* Same name, another data dir. */
	th_env_path(e, dir, sizeof(dir), "other-data");
	th_env_path(e, log, sizeof(log), "second-same-name.log");
	th_assert_ok(th_daemon_start(&e->more[1], e->name, dir, log, NULL));
	expect_refusal(&e->more[1], "live chunkd");

	/* The first daemon was not disturbed: same process, same epoch, same catalogue. */
	assert_true(th_daemon_running(&e->d));
	setenv("CHUNKD_NAME", e->name, 1); /* and a NULL name means $CHUNKD_NAME */
	int r = chunkd_open(NULL, &c);
	unsetenv("CHUNKD_NAME");
	if (r)
		fail_msg("chunkd_open(NULL) with CHUNKD_NAME set = %d (%s)", r, chunkd_strerror(r));
	assert_int_equal(chunkd_info(c, &now), 0);
	assert_int_equal(now.daemon_pid, e->d.pid);
	assert_int_equal(now.daemon_alive, 1);
	assert_int_equal(now.epoch, before.epoch);
	assert_int_equal(now.state, CHUNKD_STATE_READY);
	assert_int_equal(now.nchunks, e->man.n);
	assert_string_equal(now.data_dir, e->data_dir);
	chunkd_close(c);
	struct th_child ch;
	struct client_args a = {.e = e};
	start_client(&ch, &a);
	client_check(&ch);
	th_child_send(&ch, "close");
	th_assert_child_ok(&ch, CHILD_MS);
	assert_true(th_exited_with(th_daemon_stop(&e->d, 10000), 0));
}

/* ---- (e) taking over after a crash --------------------------------------------------------- */

static void test_takeover_after_kill(void **state)
{
	struct th_env *e = *state;
	chunkd_instance_info first, second;
	struct th_child old;
	th_assert_ok(th_env_start(e, NULL, READY_MS, &first));
	/* A client of the old daemon, holding pins through the crash and the takeover. */
	struct client_args a = {.e = e, .pins = 5};
	start_client(&old, &a);
	pid_t dead = e->d.pid;
	int st = th_daemon_kill(&e->d, 10000);
	assert_true(st >= 0 && WIFSIGNALED(st));

	/* Same name, same data dir: both locks died with the old daemon. */
	th_assert_ok(th_env_start(e, NULL, READY_MS, &second));
	assert_true(second.daemon_pid != dead);
	assert_int_equal(second.epoch, first.epoch + 1);
	assert_int_equal(second.nchunks, e->man.n);
	char line[128];
	snprintf(line, sizeof(line), "taking over instance '%s' from daemon pid %d", e->name,
		 (int)dead);
	if (th_file_contains(e->d.log, "taking over") != 1) {
		th_daemon_dump_log(&e->d);
		fail_msg("the new daemon's log does not say \"taking over\"");
	}
	if (th_file_contains(e->d.log, line) != 1)
		print_message("note: the log does not say \"%s\"\n", line);

	/* The old client still answers (from the catalogue it mapped), a new client too. */
	client_check(&old);
	struct th_child fresh;
	struct client_args b = {.e = e, .pins = 5};
	start_client(&fresh, &b);
	client_check(&fresh);
	th_child_send(&old, "close");
	th_child_send(&fresh, "close");
	th_assert_child_ok(&old, CHILD_MS);
	th_assert_child_ok(&fresh, CHILD_MS);
	assert_true(th_exited_with(th_daemon_stop(&e->d, 10000), 0));
}

/* ---- regression: a chunkd_close() right at the daemon's loop start ------------------------- */

#define LOOP_START_ROUNDS    150
#define LOOP_START_BUDGET_MS 12000
#define WAKER_TIMEOUT_MS     5000 /* daemon/loop.c WAKER_TIMEOUT_S: its waker rechecks that often */

/*
 * A client that attaches while the daemon starts and closes as soon as it reports READY (what
 * th_daemon_wait_ready() and any impatient worker do) must get its slot freed, without any later
 * doorbell ring. The daemon starts its waker thread, which takes its first look at the doorbell
 * only when it gets to run; a ring between the loop's first sync_clients() and that first look
 * is lost, and the closed slot stays taken until some other client rings. Each round restarts
 * the daemon and closes at READY; the window is narrow, so the test tries many rounds.
 */
static void test_close_at_loop_start_is_seen(void **state)
{
	struct th_env *e = *state;
	char log[PATH_MAX], why[64];
	struct th_deadline budget;
	int round;
	static const char *const args[] = {"--log-level", "debug", NULL};
	th_env_path(e, log, sizeof(log), "loop-start.log");
	th_deadline_start(&budget, LOOP_START_BUDGET_MS);
	for (round = 0; round < LOOP_START_ROUNDS && !th_deadline_passed(&budget); round++) {
		struct th_daemon *d = &e->d;
		chunkd_client *c = NULL;
		chunkd_instance_info in;
		struct th_deadline dl;
		th_assert_ok(th_daemon_start(d, e->name, e->data_dir, log, args));
		/* Attach to this daemon's segments (the previous round's stay until it replaces
		 * them), then watch the state through the same handle and close at READY. */
		for (th_deadline_start(&dl, READY_MS);; th_pause()) {
			if (th_deadline_passed(&dl) || !th_daemon_running(d)) {
				th_daemon_dump_log(d);
				fail_msg("round %d: the daemon did not start", round);
			}
			if (!c && chunkd_open(e->name, &c) != 0) {
				c = NULL;
				continue;
			}
			if (chunkd_info(c, &in) != 0 || in.daemon_pid != d->pid) {
				chunkd_close(c);
				c = NULL;
				continue;
			}
			if (in.state == CHUNKD_STATE_READY)
				break;
		}
		chunkd_close(c);
		/* A daemon that saw the ring frees the slot within milliseconds; one that lost
		 * it does not even when its waker times out and looks again. */
		th_deadline_start(&dl, WAKER_TIMEOUT_MS + 2000);
		while (th_clients_in_use(e->name, 0) != 0) {
			if (th_deadline_passed(&dl)) {
				th_daemon_dump_log(d);
				fail_msg(
				    "round %d: a client that closed right when the daemon became "
				    "READY still holds its slot %d ms later: the daemon lost its "
				    "doorbell ring (daemon/loop.c: the waker thread reads the "
				    "doorbell's first value only when it runs, after the loop's "
				    "first sync_clients(); read it before that sync and hand it to "
				    "the waker)",
				    round, WAKER_TIMEOUT_MS + 2000);
			}
			th_pause();
		}
		int st = th_daemon_stop(d, 10000);
		if (!th_exited_with(st, 0))
			fail_msg("round %d: SIGTERM: %s", round,
				 th_status_str(st, why, sizeof(why)));
	}
	print_message("%d rounds\n", round);
}

/* ---- (f) chunkd_open errors ----------------------------------------------------------------- */

/* Create /chunkd.NAME.cat of `size` bytes with a header of the given words. */
static void fake_catalogue(const char *name, size_t size, uint64_t magic, uint32_t format,
			   uint32_t version)
{
	char obj[128];
	snprintf(obj, sizeof(obj), "/chunkd.%s.cat", name);
	shm_unlink(obj);
	int fd = shm_open(obj, O_RDWR | O_CREAT | O_EXCL, 0644);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)size), 0);
	if (size >= sizeof(struct chunkd_cat_hdr)) {
		struct chunkd_cat_hdr h;
		memset(&h, 0, sizeof(h));
		h.magic = magic;
		h.format = format;
		h.version = version;
		h.max_chunks = 16;
		assert_int_equal(pwrite(fd, &h, sizeof(h), 0), (ssize_t)sizeof(h));
	}
	close(fd);
}

static void test_open_errors(void **state)
{
	struct th_env *e = *state;
	chunkd_client *c = (chunkd_client *)&c; /* must be reset to NULL on failure */
	char want[64];
	(void)e;

	/* No such instance. */
	assert_int_equal(chunkd_open(e->name, &c), -ENOENT);
	assert_null(c);
	assert_true(strlen(chunkd_last_error()) > 0);

	/* Bad names. */
	char longname[80];
	memset(longname, 'a', 65);
	longname[65] = '\0';
	const char *const bad[] = {"a/b",       "white space", "semi;colon",
				   "tab\tname", "..\x01",      longname};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		int r = chunkd_open(bad[i], &c);
		if (r != -EINVAL)
			fail_msg("chunkd_open(\"%s\") = %d, want -EINVAL", bad[i], r);
	}
	assert_int_equal(chunkd_open(e->name, NULL), -EINVAL);
	/* 64 bytes is still a valid name: it just does not exist. */
	longname[64] = '\0';
	assert_int_equal(chunkd_open(longname, &c), -ENOENT);

	/* Right magic, another layout word, version 1. */
	uint32_t other = CHUNKD_SHM_FORMAT ^ 0x00ff0000u;
	fake_catalogue(e->name, 2 * CHUNKD_PAGE, CHUNKD_CAT_MAGIC, other, 1);
	assert_int_equal(chunkd_open(e->name, &c), -EPROTO);
	snprintf(want, sizeof(want), "0x%08x", other);
	if (!strstr(chunkd_last_error(), want))
		fail_msg("-EPROTO message \"%s\" does not name the segment's format %s",
			 chunkd_last_error(), want);
	snprintf(want, sizeof(want), "0x%08x", CHUNKD_SHM_FORMAT);
	if (!strstr(chunkd_last_error(), want))
		fail_msg("-EPROTO message \"%s\" does not name the library's format %s",
			 chunkd_last_error(), want);

	/* Right magic and layout word, a version from the future. */
	fake_catalogue(e->name, 2 * CHUNKD_PAGE, CHUNKD_CAT_MAGIC, CHUNKD_SHM_FORMAT,
		       CHUNKD_SHM_VERSION + 7);
	assert_int_equal(chunkd_open(e->name, &c), -EPROTO);
	snprintf(want, sizeof(want), "version %u", CHUNKD_SHM_VERSION + 7);
	if (!strstr(chunkd_last_error(), want))
		fail_msg("-EPROTO message \"%s\" does not say \"%s\"", chunkd_last_error(), want);
	snprintf(want, sizeof(want), "version %u", CHUNKD_SHM_VERSION);
	if (!strstr(chunkd_last_error(), want))
		fail_msg("-EPROTO message \"%s\" does not say \"%s\"", chunkd_last_error(), want);

	/* Not a chunkd segment at all. */
	fake_catalogue(e->name, 2 * CHUNKD_PAGE, 0x0123456789abcdefull, CHUNKD_SHM_FORMAT,
		       CHUNKD_SHM_VERSION);
	assert_int_equal(chunkd_open(e->name, &c), -EPROTO);

	/* A segment still being created: empty, or initialised up to the version word. */
	fake_catalogue(e->name, 0, 0, 0, 0);
	assert_int_equal(chunkd_open(e->name, &c), -EAGAIN);
	fake_catalogue(e->name, 2 * CHUNKD_PAGE, CHUNKD_CAT_MAGIC, CHUNKD_SHM_FORMAT, 0);
	assert_int_equal(chunkd_open(e->name, &c), -EAGAIN);
	assert_null(c);
	th_shm_unlink(e->name);
}

int main(void)
{
	th_require();
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_killed_client_is_reaped, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_max_clients, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_daemon_killed, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_second_daemon_refused, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_takeover_after_kill, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_open_errors, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_close_at_loop_start_is_seen, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
