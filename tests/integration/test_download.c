/*
 * test_download.c — the download path end to end, against a real nginx on 127.0.0.1:
 * (a) one client enqueues 50 chunks of 5 files (200000 bytes each) without waiting, then waits
 *     for every ticket; every published byte must equal the origin's, chunkd_list must hold
 *     exactly the 50 ids in (dataset, first_block) order, chunkd_find must answer every chunk's
 *     edges like the manifest, chunkd_status must say PRESENT with all bytes counted, every
 *     .chunkd-meta must list the files with their sizes and CRC-32C, and staging/ and trash/
 *     must be empty;
 * (b) file:// downloads of chunks whose files span several 256 KiB write buffers;
 * (c) files of awkward sizes (empty, one byte, around a write buffer) over http and file://;
 * (d) file names the contract allows but a daemon could trip over (the metadata's temporary
 *     name, leading dots, spaces, the longest name);
 * (e) fewer write buffers than transfers (--buffers 2 --transfers 8): transfers that pause for
 *     a buffer must not keep their partly filled ones, or every buffer ends up held by a paused
 *     transfer and nothing moves until the stall timeout fails them.
 * nginx is started by tests/servers/nginx.sh. The web root comes from gen-chunks.py --flat; the
 * oracle is its manifest and the web root's bytes, and CRCs are computed by the harness's own
 * CRC-32C. Skipped (77) without nginx.
 */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dl_helpers.h"
#include "harness.h"

#define NCHUNKS      50
#define NFILES       5
#define FILE_SIZE    200000
#define NFILE_CHUNKS 3 /* chunks downloaded through file:// */
#define READY_MS     20000
#define WAIT_MS      45000 /* every download of a test case, together */

static struct th_env env;
static struct dl_server web;
static struct th_manifest http_man, file_man;
static char www[PATH_MAX], files_root[PATH_MAX];
static chunkd_client *client;

static int group_setup(void **state)
{
	static const char *const http_gen[] = {"--flat", "--datasets", "3",  "--chunks",
					       "50",     "--files",    "5",  "--size",
					       "200000", "--seed",     "11", NULL};
	/* 600001 bytes: two full write buffers and a partial third, an odd length. */
	static const char *const file_gen[] = {"--flat", "--datasets", "1",  "--chunks",
					       "3",      "--files",    "3",  "--size",
					       "600001", "--seed",     "12", NULL};
	char json[PATH_MAX], state_dir[PATH_MAX];
	(void)state;
	th_require();
	/* The daemon inherits our environment: never send loopback requests through a proxy. */
	setenv("no_proxy", "127.0.0.1,localhost", 1);
	setenv("NO_PROXY", "127.0.0.1,localhost", 1);
	if (th_env_init(&env, "download") < 0)
		goto err;
	th_env_path(&env, state_dir, sizeof(state_dir), "nginx");
	th_env_path(&env, www, sizeof(www), "www");
	if (th_mkdirs(www, 0755) < 0)
		goto err;
	int r = dl_nginx_start(&web, www, state_dir);
	if (r == -ENOENT) {
		th_env_fini(&env);
		fprintf(stderr, "SKIP: nginx is not installed\n");
		exit(TH_EXIT_SKIP);
	}
	if (r < 0)
		goto err;
	th_env_path(&env, files_root, sizeof(files_root), "files");
	th_env_path(&env, json, sizeof(json), "www.json");
	if (th_gen_chunks(www, json, http_gen, &http_man) < 0 || http_man.n != NCHUNKS)
		goto err;
	th_env_path(&env, json, sizeof(json), "files.json");
	if (th_gen_chunks(files_root, json, file_gen, &file_man) < 0 || file_man.n != NFILE_CHUNKS)
		goto err;
	/* An empty data dir: everything the daemon publishes comes through the request path. */
	if (th_env_start(&env, NULL, READY_MS, NULL) < 0)
		goto err;
	r = chunkd_open(env.name, &client);
	if (r < 0) {
		fprintf(stderr, "chunkd_open(%s) = %d (%s)\n", env.name, r, chunkd_strerror(r));
		goto err;
	}
	return 0;
err:
	dl_server_stop(&web);
	th_manifest_free(&http_man);
	th_manifest_free(&file_man);
	th_env_fini(&env);
	return -1;
}

static int group_teardown(void **state)
{
	(void)state;
	chunkd_close(client);
	client = NULL;
	dl_server_stop(&web);
	th_manifest_free(&http_man);
	th_manifest_free(&file_man);
	th_env_fini(&env);
	return 0;
}

/* Enqueue every chunk of `chunks` with URLs under `prefix`, then wait for all of them. */
static void download_all(const struct th_chunk *chunks, size_t n, const char *prefix)
{
	uint64_t *tickets = calloc(n, sizeof(*tickets));
	struct dl_desc d;
	struct th_deadline dl;
	assert_non_null(tickets);
	for (size_t i = 0; i < n; i++) {
		assert_int_equal(dl_desc_init(&d, &chunks[i], prefix), 0);
		int r = chunkd_download(client, &d.c, &tickets[i]);
		dl_desc_fini(&d);
		if (r != 0)
			fail_msg("chunk %zu (%.16s): chunkd_download = %d (%s): %s", i,
				 chunks[i].id_hex, r, chunkd_strerror(r), chunkd_last_error());
	}
	th_deadline_start(&dl, WAIT_MS);
	for (size_t i = 0; i < n; i++) {
		int r = chunkd_wait(client, tickets[i], th_deadline_left_ms(&dl));
		if (r != 0) {
			chunkd_chunk_status st;
			chunkd_status(client, &chunks[i].id, &st);
			th_daemon_dump_log(&env.d);
			fail_msg(
			    "chunk %zu (%.16s): chunkd_wait = %d (%s); status %s, %u attempts, "
			    "%" PRIu64 "/%" PRIu64 " bytes, error %d, http %d: %s",
			    i, chunks[i].id_hex, r, chunkd_strerror(r), dl_state_name(st.state),
			    st.attempts, st.bytes_done, st.bytes_total, st.last_error,
			    st.http_status, st.message);
		}
	}
	free(tickets);
}

/* Everything a client and the data dir show of each chunk, against the origin. */
static void check_published(const struct th_chunk *chunks, size_t n, const char *origin)
{
	char why[DL_WHY_LEN];
	for (size_t i = 0; i < n; i++) {
		if (dl_check_published(client, env.data_dir, origin, &chunks[i], 0, why,
				       sizeof(why)) < 0)
			fail_msg("%s", why);
		chunkd_chunk_status st;
		assert_int_equal(chunkd_status(client, &chunks[i].id, &st), 0);
		/* A healthy origin on loopback: nothing was retried. */
		assert_int_equal(st.attempts, 1);
		assert_int_equal(st.http_status, 0);
	}
}

/* Nothing half-done and nothing deleted: staging/ and trash/ are empty. */
static void check_no_leftovers(void)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/staging", env.data_dir);
	assert_int_equal(th_count_entries(dir), 0);
	snprintf(dir, sizeof(dir), "%s/trash", env.data_dir);
	assert_int_equal(th_count_entries(dir), 0);
}

/* ---- (a) 50 chunks over http ---------------------------------------------------------------- */

static void test_http_50_chunks(void **state)
{
	char prefix[128], hex[2 * CHUNKD_ID_SIZE + 1];
	(void)state;
	dl_http_prefix(prefix, sizeof(prefix), &web, "");
	uint64_t t0 = th_now_ns();
	download_all(http_man.chunks, http_man.n, prefix);
	print_message("50 chunks (%d MB) downloaded in %" PRIu64 " ms\n",
		      NCHUNKS * NFILES * FILE_SIZE / 1000000, (th_now_ns() - t0) / 1000000);
	/* Published means renamed out of staging: nothing may be left there now. */
	check_no_leftovers();
	check_published(http_man.chunks, http_man.n, www);
	/* nginx served each file once. */
	for (size_t i = 0; i < http_man.n; i++) {
		int n = dl_server_requests(&web, http_man.chunks[i].id_hex);
		if (n != NFILES)
			fail_msg("chunk %.16s: nginx logged %d requests, want %d",
				 http_man.chunks[i].id_hex, n, NFILES);
	}

	/* Exactly the 50 ids, each once, in (dataset, first_block) order. */
	chunkd_id ids[2 * NCHUNKS];
	uint8_t seen[NCHUNKS] = {0};
	size_t count = 0;
	assert_int_equal(chunkd_list(client, ids, 2 * NCHUNKS, &count), 0);
	assert_int_equal(count, NCHUNKS);
	const struct th_chunk *prev = NULL;
	for (size_t i = 0; i < count; i++) {
		const struct th_chunk *ch = th_manifest_by_id(&http_man, &ids[i]);
		th_hex(&ids[i], hex);
		if (!ch)
			fail_msg("chunkd_list returned unknown id %s", hex);
		size_t k = (size_t)(ch - http_man.chunks);
		if (seen[k]++)
			fail_msg("chunkd_list returned %s twice", hex);
		if (prev) {
			int o = th_id_order(&prev->dataset, &ch->dataset);
			if (o > 0 || (o == 0 && prev->first >= ch->first))
				fail_msg("chunkd_list: %.16s [%" PRIu64 ") after %.16s [%" PRIu64
					 ")",
					 ch->id_hex, ch->first, prev->id_hex, prev->first);
		}
		prev = ch;
	}

	/* Around every chunk the catalogue answers like the manifest: the block before its first
	 * and its end belong to the neighbour or to nobody. */
	for (size_t i = 0; i < http_man.n; i++) {
		const struct th_chunk *ch = &http_man.chunks[i];
		const uint64_t blocks[2] = {ch->first - 1, ch->end};
		for (int k = ch->first == 0 ? 1 : 0; k < 2; k++) {
			const struct th_chunk *want =
			    th_manifest_find(&http_man, &ch->dataset, blocks[k]);
			chunkd_ref ref;
			int r = chunkd_find(client, &ch->dataset, blocks[k], &ref);
			if (!want) {
				if (r == 0)
					chunkd_release(client, &ref);
				assert_int_equal(r, -ENOENT);
				continue;
			}
			assert_int_equal(r, 0);
			int same = !memcmp(&ref.id, &want->id, sizeof(want->id));
			chunkd_release(client, &ref);
			assert_true(same);
		}
	}

	/* The data dir holds exactly these 50 chunk directories. */
	char dir[PATH_MAX];
	int total = 0;
	for (size_t d = 0; d < http_man.ndatasets; d++) {
		th_hex(&http_man.datasets[d], hex);
		snprintf(dir, sizeof(dir), "%s/chunks/%s", env.data_dir, hex);
		int n = th_count_entries(dir);
		assert_true(n > 0);
		total += n;
	}
	snprintf(dir, sizeof(dir), "%s/chunks", env.data_dir);
	assert_int_equal(th_count_entries(dir), (int)http_man.ndatasets);
	assert_int_equal(total, NCHUNKS);

	chunkd_instance_info in;
	assert_int_equal(chunkd_info(client, &in), 0);
	assert_int_equal(in.nchunks, NCHUNKS);
	assert_true(th_daemon_running(&env.d));
}

/* ---- (b) file:// ---------------------------------------------------------------------------- */

static void test_file_urls(void **state)
{
	char prefix[PATH_MAX + 16];
	(void)state;
	/* file:// plus an absolute path: file:///tmp/... */
	snprintf(prefix, sizeof(prefix), "file://%s", files_root);
	download_all(file_man.chunks, file_man.n, prefix);
	check_no_leftovers();
	check_published(file_man.chunks, file_man.n, files_root);
	/* The http chunks are still there, untouched. */
	char why[DL_WHY_LEN];
	if (dl_check_published(client, env.data_dir, www, &http_man.chunks[0], 0, why,
			       sizeof(why)) < 0)
		fail_msg("%s", why);
}

/* ---- (c) awkward file sizes ----------------------------------------------------------------- */

#define WBUF (256u * 1024) /* the daemon's write buffer size (engine_internal.h: WBUF_SIZE) */

static const uint64_t odd_sizes[] = {0, 1, WBUF - 1, WBUF, WBUF + 1, 3 * WBUF};
#define NODD (sizeof(odd_sizes) / sizeof(odd_sizes[0]))

/*
 * Write a chunk of files with the given names and sizes under root/<dataset>/<id>/ like
 * gen-chunks.py --flat does (random bytes), and describe it in *ch (files points to `files`).
 */
static void make_chunk(struct th_chunk *ch, struct th_file *files, const char *root, uint32_t tag,
		       uint64_t first, const char *const names[], const uint64_t sizes[], size_t n)
{
	char path[2 * PATH_MAX];
	uint64_t seed = tag;
	memset(ch, 0, sizeof(*ch));
	th_make_id(&ch->id, tag, 1);
	th_make_id(&ch->dataset, 0x0dd, 0);
	th_hex(&ch->id, ch->id_hex);
	th_hex(&ch->dataset, ch->dataset_hex);
	ch->first = first;
	ch->end = first + 10;
	ch->nfiles = (uint32_t)n;
	ch->files = files;
	snprintf(ch->dir, sizeof(ch->dir), "%s/%s", ch->dataset_hex, ch->id_hex);
	snprintf(path, sizeof(path), "%s/%s", root, ch->dir);
	assert_int_equal(th_mkdirs(path, 0755), 0);
	for (size_t k = 0; k < n; k++) {
		uint8_t *buf = malloc(sizes[k] + 1);
		assert_non_null(buf);
		for (uint64_t i = 0; i < sizes[k]; i++)
			buf[i] = (uint8_t)th_rand(&seed);
		memset(&files[k], 0, sizeof(files[k]));
		snprintf(files[k].name, sizeof(files[k].name), "%s", names[k]);
		files[k].size = sizes[k];
		snprintf(path, sizeof(path), "%s/%s/%s", root, ch->dir, files[k].name);
		assert_int_equal(th_write_file(path, buf, sizes[k]), 0);
		free(buf);
	}
}

static void test_odd_sizes(void **state)
{
	struct th_chunk ch[2];
	struct th_file files[2][NODD];
	char names[NODD][32], prefix[PATH_MAX + 16];
	const char *name_ptrs[NODD];
	(void)state;
	for (size_t k = 0; k < NODD; k++) {
		snprintf(names[k], sizeof(names[k]), "size-%" PRIu64 ".bin", odd_sizes[k]);
		name_ptrs[k] = names[k];
	}
	make_chunk(&ch[0], files[0], www, 0x0dd1, 100, name_ptrs, odd_sizes, NODD);
	make_chunk(&ch[1], files[1], www, 0x0dd2, 200, name_ptrs, odd_sizes, NODD);
	dl_http_prefix(prefix, sizeof(prefix), &web, "");
	download_all(&ch[0], 1, prefix);
	snprintf(prefix, sizeof(prefix), "file://%s", www);
	download_all(&ch[1], 1, prefix);
	check_no_leftovers();
	check_published(ch, 2, www);
}

/* ---- (d) awkward file names ----------------------------------------------------------------- */

/* Percent-encode everything but unreserved characters (RFC 3986), for an HTTP path segment. */
static void url_encode(char *out, size_t len, const char *s)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t o = 0;
	for (; *s && o + 4 < len; s++) {
		unsigned char c = (unsigned char)*s;
		if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		    c == '-' || c == '.' || c == '_' || c == '~') {
			out[o++] = (char)c;
		} else {
			out[o++] = '%';
			out[o++] = hex[c >> 4];
			out[o++] = hex[c & 15];
		}
	}
	out[o] = '\0';
}

/*
 * Names the contract allows that a daemon could trip over: the metadata's temporary name
 * (docs/on-disk.md writes .chunkd-meta through ".chunkd-meta.tmp"), names starting with dots,
 * the longest name, spaces (leading and trailing too), and a '%'.
 */
static void test_odd_names(void **state)
{
	static char longest[CHUNKD_MAX_NAME + 1];
	const char *names[] = {CHUNKD_META_NAME ".tmp",
			       CHUNKD_META_NAME ".tmp0",
			       "..a",
			       ".b",
			       longest,
			       "a b",
			       " lead",
			       "trail ",
			       "100%"};
	const size_t n = sizeof(names) / sizeof(names[0]);
	uint64_t sizes[sizeof(names) / sizeof(names[0])];
	struct th_file files[sizeof(names) / sizeof(names[0])];
	struct th_chunk ch;
	struct dl_desc d;
	char prefix[128], url[2 * PATH_MAX], enc[3 * CHUNKD_MAX_NAME + 1];
	uint64_t t;
	(void)state;
	memset(longest, 'n', CHUNKD_MAX_NAME);
	for (size_t k = 0; k < n; k++)
		sizes[k] = 1000 + 7 * k;
	make_chunk(&ch, files, www, 0x0dd3, 300, names, sizes, n);
	dl_http_prefix(prefix, sizeof(prefix), &web, "");
	assert_int_equal(dl_desc_init(&d, &ch, prefix), 0);
	for (uint32_t k = 0; k < n; k++) {
		url_encode(enc, sizeof(enc), names[k]);
		snprintf(url, sizeof(url), "%s/%s/%s", prefix, ch.dir, enc);
		assert_int_equal(dl_desc_set_url(&d, k, url), 0);
	}
	int r = chunkd_download(client, &d.c, &t);
	dl_desc_fini(&d);
	if (r != 0)
		fail_msg("chunkd_download = %d (%s): %s", r, chunkd_strerror(r),
			 chunkd_last_error());
	r = chunkd_wait(client, t, WAIT_MS);
	if (r != 0) {
		chunkd_chunk_status st;
		chunkd_status(client, &ch.id, &st);
		fail_msg("chunkd_wait = %d (%s); status %s: %s", r, chunkd_strerror(r),
			 dl_state_name(st.state), st.message);
	}
	check_no_leftovers();
	check_published(&ch, 1, www);
}

/* ---- (e) fewer write buffers than transfers ----------------------------------------------- */

static void test_fewer_buffers_than_transfers(void **state)
{
	enum { NB = 2, NF = 4 };
	static const char *const args[] = {"--buffers", "2", "--transfers", "8", NULL};
	static const char *const names[NF] = {"a.bin", "b.bin", "c.bin", "d.bin"};
	static const uint64_t sizes[NF] = {3 * WBUF + 1, 2 * WBUF - 7, 3 * WBUF + 4097, WBUF + 1};
	struct th_chunk ch[NB];
	struct th_file files[NB][NF];
	char prefix[PATH_MAX + 16];
	(void)state;
	int st = th_daemon_stop(&env.d, 10000);
	assert_true(th_exited_with(st, 0));
	th_assert_ok(th_env_start(&env, args, READY_MS, NULL));
	for (uint32_t i = 0; i < NB; i++)
		make_chunk(&ch[i], files[i], www, 0xb0f0 + i, 1000 + 100 * i, names, sizes, NF);
	dl_http_prefix(prefix, sizeof(prefix), &web, "");
	download_all(ch, NB, prefix);
	check_no_leftovers();
	check_published(ch, NB, www); /* and nothing was retried */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_http_50_chunks),
	    cmocka_unit_test(test_file_urls),
	    cmocka_unit_test(test_odd_sizes),
	    cmocka_unit_test(test_odd_names),
	    cmocka_unit_test(test_fewer_buffers_than_transfers),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
