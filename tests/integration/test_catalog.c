/*
 * test_catalog.c — a daemon publishes a data dir of 1000 chunks in 20 datasets, and a client in
 * another process finds, lists and reads them. Every answer is checked against the generator's
 * manifest (an independent oracle: a sorted copy searched by th_manifest_find()), and file bytes
 * against the generator's CRC32C computed by the test's own CRC implementation.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h> /* after the four above, which it needs */

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"

#define NCHUNKS          1000
#define NDATASETS        20
#define RANDOM_LOOKUPS   50000
#define CHILD_TIMEOUT_MS 30000
#define MAX_CHUNKS       4096 /* --max-chunks: a small catalogue segment */
#define MAX_CLIENTS      32

static struct th_env env;

static int group_setup(void **state)
{
	static const char *const gen[] = {"--datasets", "20",  "--chunks", "1000", "--files", "2",
					  "--size",     "512", "--seed",   "7",    NULL};
	static const char *const daemon_args[] = {"--max-chunks", "4096", "--max-clients", "32",
						  NULL};
	(void)state;
	th_require();
	if (th_env_init(&env, "catalog") < 0 || th_env_gen(&env, gen) < 0)
		goto err;
	if (env.man.n != NCHUNKS || env.man.ndatasets != NDATASETS) {
		fprintf(stderr, "manifest has %zu chunks in %zu datasets\n", env.man.n,
			env.man.ndatasets);
		goto err;
	}
	if (th_env_start(&env, daemon_args, 20000, NULL) < 0)
		goto err;
	return 0;
err:
	th_env_fini(&env);
	return -1;
}

static int group_teardown(void **state)
{
	(void)state;
	th_env_fini(&env);
	return 0;
}

/* ---- checks shared by the children ---------------------------------------------------------- */

/*
 * Look up (dataset, block) through the library and compare with the manifest: the same chunk with
 * the same range and directory, or -ENOENT when the manifest has none. Releases the pin.
 */
static int check_find(struct th_child *self, chunkd_client *c, const chunkd_id *ds, uint64_t block)
{
	const struct th_chunk *want = th_manifest_find(&env.man, ds, block);
	chunkd_ref ref;
	char hex[2 * CHUNKD_ID_SIZE + 1], path[PATH_MAX];
	memset(&ref, 0, sizeof(ref));
	int r = chunkd_find(c, ds, block, &ref);
	th_hex(ds, hex);
	if (!want) {
		TH_CHECK(self, r == -ENOENT,
			 "dataset %.16s block %" PRIu64 ": want -ENOENT, got %d (%s) [%" PRIu64
			 ", %" PRIu64 ")",
			 hex, block, r, chunkd_strerror(r), ref.first_block, ref.end_block);
		return 0;
	}
	TH_CHECK(self, r == 0,
		 "dataset %.16s block %" PRIu64 ": want chunk %.16s [%" PRIu64 ", %" PRIu64
		 "), got %d (%s)",
		 hex, block, want->id_hex, want->first, want->end, r, chunkd_strerror(r));
	char got[2 * CHUNKD_ID_SIZE + 1], got_path[PATH_MAX];
	th_hex(&ref.id, got);
	snprintf(got_path, sizeof(got_path), "%s", ref.path ? ref.path : "(null)");
	snprintf(path, sizeof(path), "%s/%s", env.data_dir, want->dir);
	int ok = !memcmp(&ref.id, &want->id, sizeof(ref.id)) &&
		 !memcmp(&ref.dataset, ds, sizeof(*ds)) && ref.first_block == want->first &&
		 ref.end_block == want->end && !strcmp(got_path, path) &&
		 ref.first_block <= block && block < ref.end_block;
	chunkd_release(c, &ref);
	TH_CHECK(self, ok,
		 "dataset %.16s block %" PRIu64 ": want %.16s [%" PRIu64 ", %" PRIu64
		 ") at %s, got "
		 "%.16s [%" PRIu64 ", %" PRIu64 ") at %s",
		 hex, block, want->id_hex, want->first, want->end, path, got, ref.first_block,
		 ref.end_block, got_path);
	return 0;
}

static int open_client(struct th_child *self, chunkd_client **c)
{
	int r = chunkd_open(env.name, c);
	TH_CHECK(self, r == 0, "chunkd_open(%s) = %d (%s): %s", env.name, r, chunkd_strerror(r),
		 chunkd_last_error());
	return 0;
}

/* ---- finds ---------------------------------------------------------------------------------- */

static int child_find(struct th_child *self, void *arg)
{
	uint64_t seed = *(const uint64_t *)arg;
	chunkd_client *c;
	unsigned long n = 0;
	if (open_client(self, &c))
		return 1;
	/* Every chunk's edges: first, end - 1, end (the next chunk or nothing), first - 1. */
	for (size_t i = 0; i < env.man.n; i++) {
		const struct th_chunk *ch = &env.man.chunks[i];
		const uint64_t blocks[] = {ch->first, ch->end - 1, ch->end, ch->first - 1};
		for (size_t k = 0; k < 4; k++, n++) {
			if (k == 3 && ch->first == 0)
				continue;
			if (check_find(self, c, &ch->dataset, blocks[k]))
				return 1;
		}
	}
	/* The extremes of every dataset, and random blocks in and around its chunks. */
	for (size_t d = 0; d < env.man.ndatasets; d++) {
		const chunkd_id *ds = &env.man.datasets[d];
		const uint64_t blocks[] = {0, 1, UINT64_MAX, UINT64_MAX - 1,
					   th_manifest_max_end(&env.man, ds)};
		for (size_t k = 0; k < sizeof(blocks) / sizeof(blocks[0]); k++, n++)
			if (check_find(self, c, ds, blocks[k]))
				return 1;
	}
	for (int i = 0; i < RANDOM_LOOKUPS; i++, n++) {
		const chunkd_id *ds = &env.man.datasets[th_rand(&seed) % env.man.ndatasets];
		uint64_t block = th_rand(&seed) % (th_manifest_max_end(&env.man, ds) + 100);
		if (check_find(self, c, ds, block))
			return 1;
	}
	/* A dataset the daemon never heard of, and one that differs from a real one in a byte. */
	chunkd_id unknown, near = env.man.datasets[0];
	th_make_id(&unknown, 0xdead, 1);
	near.bytes[CHUNKD_ID_SIZE - 1] ^= 1;
	const uint64_t probes[] = {0, env.man.chunks[0].first, env.man.chunks[0].end - 1,
				   UINT64_MAX};
	for (size_t k = 0; k < sizeof(probes) / sizeof(probes[0]); k++, n += 2) {
		if (check_find(self, c, &unknown, probes[k]) ||
		    check_find(self, c, &near, probes[k]))
			return 1;
	}
	/* Bad arguments. */
	chunkd_ref ref;
	int r = chunkd_find(NULL, &env.man.datasets[0], 0, &ref);
	TH_CHECK(self, r == -EINVAL, "chunkd_find(NULL client) = %d", r);
	r = chunkd_find(c, NULL, 0, &ref);
	TH_CHECK(self, r == -EINVAL, "chunkd_find(NULL dataset) = %d", r);
	r = chunkd_find(c, &env.man.datasets[0], 0, NULL);
	TH_CHECK(self, r == -EINVAL, "chunkd_find(NULL ref) = %d", r);
	chunkd_close(c);
	th_say(self, "checked %lu look-ups", n);
	return 0;
}

static void test_find(void **state)
{
	struct th_child ch;
	uint64_t seed = th_seed();
	(void)state;
	th_assert_ok(th_child_start(&ch, child_find, &seed));
	th_assert_child_ok(&ch, CHILD_TIMEOUT_MS);
	print_message("%s", th_child_output(&ch));
}

/* ---- list ----------------------------------------------------------------------------------- */

static int child_list(struct th_child *self, void *arg)
{
	chunkd_client *c;
	size_t count = 0;
	chunkd_id *ids = calloc(2 * NCHUNKS, sizeof(*ids));
	uint8_t *seen = calloc(env.man.n, 1);
	(void)arg;
	TH_CHECK(self, ids && seen, "out of memory");
	if (open_client(self, &c))
		return 1;

	/* Room for all: every manifest id exactly once, in (dataset, first_block) order. */
	int r = chunkd_list(c, ids, 2 * NCHUNKS, &count);
	TH_CHECK(self, r == 0 && count == NCHUNKS, "chunkd_list(cap %d) = %d, count %zu",
		 2 * NCHUNKS, r, count);
	const struct th_chunk *prev = NULL;
	for (size_t i = 0; i < count; i++) {
		const struct th_chunk *ch = th_manifest_by_id(&env.man, &ids[i]);
		char hex[2 * CHUNKD_ID_SIZE + 1];
		th_hex(&ids[i], hex);
		TH_CHECK(self, ch, "chunkd_list returned id %s, which is not in the manifest", hex);
		TH_CHECK(self, !seen[ch - env.man.chunks], "chunkd_list returned %s twice", hex);
		seen[ch - env.man.chunks] = 1;
		if (prev) {
			int o = th_id_order(&prev->dataset, &ch->dataset);
			TH_CHECK(self, o < 0 || (o == 0 && prev->first < ch->first),
				 "ids %zu and %zu are not in (dataset, first_block) order", i - 1,
				 i);
		}
		prev = ch;
	}

	/* Smaller caps fill what fits and still report the full count. */
	const size_t caps[] = {NCHUNKS, NCHUNKS - 1, 10, 1};
	for (size_t k = 0; k < sizeof(caps) / sizeof(caps[0]); k++) {
		chunkd_id *part = calloc(caps[k] + 1, sizeof(*part));
		TH_CHECK(self, part, "out of memory");
		memset(&part[caps[k]], 0xa5, sizeof(*part)); /* a canary after the room */
		count = 0;
		r = chunkd_list(c, part, caps[k], &count);
		TH_CHECK(self, r == 0 && count == NCHUNKS, "chunkd_list(cap %zu) = %d, count %zu",
			 caps[k], r, count);
		TH_CHECK(self, !memcmp(part, ids, caps[k] * sizeof(*ids)),
			 "chunkd_list(cap %zu) differs from the first %zu ids of the full list",
			 caps[k], caps[k]);
		for (size_t b = 0; b < sizeof(chunkd_id); b++)
			TH_CHECK(self, part[caps[k]].bytes[b] == 0xa5,
				 "chunkd_list(cap %zu) wrote past the room", caps[k]);
		free(part);
	}
	count = 0;
	r = chunkd_list(c, NULL, 0, &count);
	TH_CHECK(self, r == 0 && count == NCHUNKS, "chunkd_list(NULL, 0) = %d, count %zu", r,
		 count);

	r = chunkd_list(NULL, ids, 1, &count);
	TH_CHECK(self, r == -EINVAL, "chunkd_list(NULL client) = %d", r);
	r = chunkd_list(c, NULL, 1, &count);
	TH_CHECK(self, r == -EINVAL, "chunkd_list(NULL ids, cap 1) = %d", r);
	r = chunkd_list(c, ids, 1, NULL);
	TH_CHECK(self, r == -EINVAL, "chunkd_list(NULL count) = %d", r);
	chunkd_close(c);
	free(ids);
	free(seen);
	return 0;
}

static void test_list(void **state)
{
	struct th_child ch;
	(void)state;
	th_assert_ok(th_child_start(&ch, child_list, NULL));
	th_assert_child_ok(&ch, CHILD_TIMEOUT_MS);
}

/* ---- file contents -------------------------------------------------------------------------- */

static int check_file(struct th_child *self, const char *dir, const struct th_file *f)
{
	char path[PATH_MAX + CHUNKD_MAX_NAME + 2];
	uint8_t buf[65536];
	snprintf(path, sizeof(path), "%s/%s", dir, f->name);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	TH_CHECK(self, fd >= 0, "open %s: %s", path, strerror(errno));
	uint64_t size = 0;
	uint32_t crc = 0;
	for (;;) {
		ssize_t n = read(fd, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			break;
		crc = th_crc32c(crc, buf, (size_t)n);
		size += (uint64_t)n;
	}
	close(fd);
	TH_CHECK(self, size == f->size, "%s: %" PRIu64 " bytes, the manifest says %" PRIu64, path,
		 size, f->size);
	TH_CHECK(self, f->has_crc, "%s: the manifest has no CRC32C (generate small files)", path);
	TH_CHECK(self, crc == f->crc32c, "%s: CRC32C %08x, the manifest says %08x", path, crc,
		 f->crc32c);
	return 0;
}

static int child_files(struct th_child *self, void *arg)
{
	chunkd_client *c;
	unsigned long nfiles = 0;
	(void)arg;
	if (open_client(self, &c))
		return 1;
	for (size_t i = 0; i < env.man.n; i++) {
		const struct th_chunk *ch = &env.man.chunks[i];
		chunkd_ref ref;
		int r = chunkd_find(c, &ch->dataset, ch->first + (ch->end - ch->first) / 2, &ref);
		TH_CHECK(self, r == 0, "chunk %.16s: chunkd_find = %d", ch->id_hex, r);
		TH_CHECK(self, !memcmp(&ref.id, &ch->id, sizeof(ch->id)),
			 "chunk %.16s: wrong chunk", ch->id_hex);
		TH_CHECK(self, ch->nfiles == 2, "chunk %.16s: %u files in the manifest", ch->id_hex,
			 ch->nfiles);
		/* Read through the pinned path, not through the data dir we know. */
		for (uint32_t k = 0; k < ch->nfiles; k++, nfiles++)
			if (check_file(self, ref.path, &ch->files[k]))
				return 1;
		chunkd_release(c, &ref);
	}
	chunkd_close(c);
	th_say(self, "read %lu files", nfiles);
	return 0;
}

static void test_files(void **state)
{
	struct th_child ch;
	(void)state;
	th_assert_ok(th_child_start(&ch, child_files, NULL));
	th_assert_child_ok(&ch, CHILD_TIMEOUT_MS);
}

/* ---- the pin table -------------------------------------------------------------------------- */

static int child_pins(struct th_child *self, void *arg)
{
	chunkd_client *c;
	static chunkd_ref refs[CHUNKD_PINS_PER_CLIENT + 1];
	const struct th_chunk *ch = &env.man.chunks[3];
	(void)arg;
	if (open_client(self, &c))
		return 1;
	/* Every entry can hold a pin, then the table is full, and a release frees one entry. */
	for (int i = 0; i < CHUNKD_PINS_PER_CLIENT; i++) {
		int r = chunkd_find(c, &ch->dataset, ch->first, &refs[i]);
		TH_CHECK(self, r == 0, "pin %d: chunkd_find = %d (%s)", i, r, chunkd_strerror(r));
	}
	int r = chunkd_find(c, &ch->dataset, ch->first, &refs[CHUNKD_PINS_PER_CLIENT]);
	TH_CHECK(self, r == -ENOBUFS, "pin %d of %d: chunkd_find = %d, want -ENOBUFS",
		 CHUNKD_PINS_PER_CLIENT + 1, CHUNKD_PINS_PER_CLIENT, r);
	/* A look-up that finds nothing needs no entry. */
	r = chunkd_find(c, &ch->dataset, UINT64_MAX, &refs[CHUNKD_PINS_PER_CLIENT]);
	TH_CHECK(self, r == -ENOENT, "full table, missing block: chunkd_find = %d", r);
	chunkd_release(c, &refs[100]);
	chunkd_release(c, &refs[100]); /* twice: a no-op */
	r = chunkd_find(c, &ch->dataset, ch->first, &refs[100]);
	TH_CHECK(self, r == 0, "after one release: chunkd_find = %d", r);
	r = chunkd_find(c, &ch->dataset, ch->first, &refs[CHUNKD_PINS_PER_CLIENT]);
	TH_CHECK(self, r == -ENOBUFS, "full again: chunkd_find = %d", r);
	for (int i = 0; i < CHUNKD_PINS_PER_CLIENT; i++)
		chunkd_release(c, &refs[i]);
	/* All entries are free again. */
	for (int i = 0; i < CHUNKD_PINS_PER_CLIENT; i++) {
		r = chunkd_find(c, &ch->dataset, ch->end - 1, &refs[i]);
		TH_CHECK(self, r == 0, "after releasing all, pin %d: chunkd_find = %d", i, r);
	}
	chunkd_release(NULL, &refs[0]);
	chunkd_release(c, NULL);
	/* Closing with pins held drops them. */
	chunkd_close(c);
	chunkd_close(NULL);
	return 0;
}

static void test_pin_table(void **state)
{
	struct th_child ch;
	(void)state;
	th_assert_ok(th_child_start(&ch, child_pins, NULL));
	th_assert_child_ok(&ch, CHILD_TIMEOUT_MS);
}

/* ---- chunkd_info ---------------------------------------------------------------------------- */

static int child_info(struct th_child *self, void *arg)
{
	chunkd_client *c;
	chunkd_instance_info in;
	pid_t daemon = *(const pid_t *)arg;
	if (open_client(self, &c))
		return 1;
	int r = chunkd_info(c, &in);
	TH_CHECK(self, r == 0, "chunkd_info = %d", r);
	TH_CHECK(self, in.daemon_pid == daemon, "daemon_pid %d, want %d", (int)in.daemon_pid,
		 (int)daemon);
	TH_CHECK(self, in.daemon_alive == 1, "daemon_alive %d", in.daemon_alive);
	TH_CHECK(self, in.state == CHUNKD_STATE_READY, "state %u, want READY", in.state);
	TH_CHECK(self, in.nchunks == NCHUNKS, "nchunks %u, want %d", in.nchunks, NCHUNKS);
	TH_CHECK(self, in.max_chunks == MAX_CHUNKS, "max_chunks %u, want %d", in.max_chunks,
		 MAX_CHUNKS);
	TH_CHECK(self, in.max_clients == MAX_CLIENTS, "max_clients %u, want %d", in.max_clients,
		 MAX_CLIENTS);
	TH_CHECK(self, in.epoch >= 1, "epoch %" PRIu64, in.epoch);
	TH_CHECK(self, in.start_time_ns > 0 && in.heartbeat_ns >= in.start_time_ns,
		 "start %" PRIu64 " heartbeat %" PRIu64, in.start_time_ns, in.heartbeat_ns);
	TH_CHECK(self, !strcmp(in.data_dir, env.data_dir), "data_dir '%s', want '%s'", in.data_dir,
		 env.data_dir);
	r = chunkd_info(NULL, &in);
	TH_CHECK(self, r == -EINVAL, "chunkd_info(NULL client) = %d", r);
	r = chunkd_info(c, NULL);
	TH_CHECK(self, r == -EINVAL, "chunkd_info(NULL info) = %d", r);
	chunkd_close(c);
	return 0;
}

static void test_info(void **state)
{
	struct th_child ch;
	(void)state;
	th_assert_ok(th_child_start(&ch, child_info, &env.d.pid));
	th_assert_child_ok(&ch, CHILD_TIMEOUT_MS);
	/* The daemon served all of the above and is still there. */
	assert_true(th_daemon_running(&env.d));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_info),      cmocka_unit_test(test_find),
	    cmocka_unit_test(test_list),      cmocka_unit_test(test_files),
	    cmocka_unit_test(test_pin_table),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
