/*
 * test_semantics.c — the request contract of include/chunkd.h (and the choices docs/requests.md
 * makes where it is silent), checked against a running daemon and real origins on 127.0.0.1:
 * - chunkd_download's -EINVAL matrix, and the limits it must accept;
 * - a download of a published chunk with the same descriptor is 0 at once (even from a dead
 *   mirror); another descriptor for the id, or a range overlapping another chunk, is -EEXIST;
 * - delete of an unknown chunk is 0; a delete during a download cancels it (-ECANCELED, staging
 *   emptied, chunk ABSENT), and a download after it brings the chunk back; the last of a
 *   download/delete/download burst wins;
 * - chunkd_wait's timeouts and its -EINVAL for tickets never issued, -ESTALE for overwritten ones;
 * - a failed download (HTTP 404, --attempts 2): FAILED with -EREMOTEIO, HTTP 404 and a message,
 *   retried from scratch by the next download;
 * - -EAGAIN once CHUNKD_TICKETS_PER_CLIENT requests are outstanding (daemon SIGSTOPped), and
 *   every one of them completes after SIGCONT.
 * Origins: nginx (tests/servers/nginx.sh) for full-speed files and 404s, fault_server.py's
 * "slow" answers for downloads that must stay in flight. Skipped (77) without nginx.
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

#define NCHUNKS  12
#define READY_MS 20000
#define WAIT_MS  20000 /* one download from the fast origin, or a cancellation */
#define QUICK_MS 2000  /* an answer the daemon gives without any I/O */
#define ATTEMPTS 2     /* --attempts */
/* The fault server's slow answers: 4 KiB/s keeps a 200000-byte file in flight for most of a
 * minute, above curl's low-speed limit (1 KiB/s), so the daemon never aborts it as stalled. */
#define SLOW_PATH "/fault/slow-4096"

static struct th_env env;
static struct dl_server web, faults;
static struct th_manifest man;
static char www[PATH_MAX], fast[128], slow[128];
static chunkd_client *client;

/* Manifest chunks by role; chunks of one dataset have even indices, the other's odd ones. */
enum {
	C_PUBLISHED = 0, /* published by test_published_again, used by the -EEXIST cases */
	C_CANCEL = 1,    /* deleted while downloading, then downloaded again */
	C_BURST = 2,     /* download, delete, download enqueued together */
	C_REPLACE = 3,   /* published, then delete + download enqueued together */
	C_FAIL = 4,      /* a 404 on one file, then retried with the file back */
	C_FAIL_DEL = 5,  /* a 404, then deleted while FAILED */
	C_BUSY = 6,      /* downloading slowly while other descriptors try its id and range */
	C_EAGAIN = 7,    /* 7..11: downloads among the outstanding requests of test_eagain */
};

static int group_setup(void **state)
{
	static const char *const gen[] = {"--flat", "--datasets", "2",  "--chunks",
					  "12",     "--files",    "3",  "--size",
					  "200000", "--seed",     "21", NULL};
	static const char *const daemon_args[] = {"--attempts", "2", "--backoff", "10", NULL};
	char json[PATH_MAX], state_dir[PATH_MAX];
	(void)state;
	th_require();
	setenv("no_proxy", "127.0.0.1,localhost", 1);
	setenv("NO_PROXY", "127.0.0.1,localhost", 1);
	if (th_env_init(&env, "semantics") < 0)
		goto err;
	th_env_path(&env, www, sizeof(www), "www");
	th_env_path(&env, state_dir, sizeof(state_dir), "nginx");
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
	th_env_path(&env, json, sizeof(json), "www.json");
	if (th_gen_chunks(www, json, gen, &man) < 0 || man.n != NCHUNKS)
		goto err;
	th_env_path(&env, state_dir, sizeof(state_dir), "faults");
	if (dl_fault_start(&faults, www, state_dir, 10000) < 0)
		goto err;
	dl_http_prefix(fast, sizeof(fast), &web, "");
	dl_http_prefix(slow, sizeof(slow), &faults, SLOW_PATH);
	if (th_env_start(&env, daemon_args, READY_MS, NULL) < 0)
		goto err;
	r = chunkd_open(env.name, &client);
	if (r < 0) {
		fprintf(stderr, "chunkd_open(%s) = %d (%s)\n", env.name, r, chunkd_strerror(r));
		goto err;
	}
	return 0;
err:
	dl_server_stop(&faults);
	dl_server_stop(&web);
	th_manifest_free(&man);
	th_env_fini(&env);
	return -1;
}

static int group_teardown(void **state)
{
	(void)state;
	chunkd_close(client);
	client = NULL;
	dl_server_stop(&faults);
	dl_server_stop(&web);
	th_manifest_free(&man);
	th_env_fini(&env);
	return 0;
}

/* ---- helpers -------------------------------------------------------------------------------- */

static const struct th_chunk *chunk(int role)
{
	return &man.chunks[role];
}

/* Enqueue a download of ch with URLs under prefix; returns its ticket. */
static uint64_t download(const struct th_chunk *ch, const char *prefix)
{
	struct dl_desc d;
	uint64_t t = 0;
	assert_int_equal(dl_desc_init(&d, ch, prefix), 0);
	int r = chunkd_download(client, &d.c, &t);
	dl_desc_fini(&d);
	if (r != 0)
		fail_msg("chunkd_download(%.16s) = %d (%s): %s", ch->id_hex, r, chunkd_strerror(r),
			 chunkd_last_error());
	return t;
}

static uint64_t request_delete(const chunkd_id *id)
{
	uint64_t t = 0;
	assert_int_equal(chunkd_delete(client, id, &t), 0);
	return t;
}

/* chunkd_wait, failing with the daemon's log and the chunk's status unless it returns want. */
static void expect_wait(uint64_t t, int timeout_ms, int want, const struct th_chunk *ch)
{
	int r = chunkd_wait(client, t, timeout_ms);
	if (r == want)
		return;
	chunkd_chunk_status st;
	memset(&st, 0, sizeof(st));
	if (ch)
		chunkd_status(client, &ch->id, &st);
	th_daemon_dump_log(&env.d);
	fail_msg("ticket %" PRIu64 " (chunk %.16s): chunkd_wait = %d (%s), want %d (%s); status "
		 "%s, %u attempts, error %d, http %d: %s",
		 t, ch ? ch->id_hex : "-", r, chunkd_strerror(r), want, chunkd_strerror(want),
		 dl_state_name(st.state), st.attempts, st.last_error, st.http_status, st.message);
}

static void expect_published(const struct th_chunk *ch)
{
	char why[DL_WHY_LEN];
	if (dl_check_published(client, env.data_dir, www, ch, 0, why, sizeof(why)) < 0)
		fail_msg("%s", why);
}

/* The chunk is gone for clients: not findable, not listed, status ABSENT (within a deadline:
 * the slot is freed once the removal or cancellation is done), no directory. */
static void expect_absent(const struct th_chunk *ch)
{
	chunkd_ref ref;
	chunkd_chunk_status st;
	char path[PATH_MAX];
	int r = chunkd_find(client, &ch->dataset, ch->first, &ref);
	if (r == 0) {
		chunkd_release(client, &ref);
		fail_msg("chunk %.16s is still findable", ch->id_hex);
	}
	assert_int_equal(r, -ENOENT);
	size_t count = 0;
	chunkd_id ids[4 * NCHUNKS];
	assert_int_equal(chunkd_list(client, ids, 4 * NCHUNKS, &count), 0);
	for (size_t i = 0; i < count && i < 4 * NCHUNKS; i++)
		if (!memcmp(&ids[i], &ch->id, sizeof(ch->id)))
			fail_msg("chunk %.16s is still listed", ch->id_hex);
	r = dl_wait_state(client, &ch->id, CHUNKD_CHUNK_ABSENT, WAIT_MS, &st);
	if (r < 0)
		fail_msg("chunk %.16s: status %s, want ABSENT (%d)", ch->id_hex,
			 dl_state_name(st.state), r);
	dl_chunk_path(path, sizeof(path), env.data_dir, ch);
	assert_int_equal(dl_wait_gone(path, WAIT_MS), 0);
}

/* Nothing half-downloaded or half-deleted is left (within a deadline: cancellation and removal
 * finish after the tickets' results). */
static void expect_clean(void)
{
	char dir[PATH_MAX];
	snprintf(dir, sizeof(dir), "%s/staging", env.data_dir);
	assert_int_equal(dl_wait_empty_dir(dir, WAIT_MS), 0);
	snprintf(dir, sizeof(dir), "%s/trash", env.data_dir);
	assert_int_equal(dl_wait_empty_dir(dir, WAIT_MS), 0);
}

/* Wait until the chunk is DOWNLOADING with some bytes received: the transfers are running. */
static void wait_downloading(const struct th_chunk *ch)
{
	struct th_deadline dl;
	chunkd_chunk_status st;
	th_deadline_start(&dl, WAIT_MS);
	for (;;) {
		assert_int_equal(chunkd_status(client, &ch->id, &st), 0);
		if (st.state == CHUNKD_CHUNK_DOWNLOADING && st.bytes_done > 0)
			break;
		/* ABSENT until the daemon has taken the request from the ring. */
		if (st.state != CHUNKD_CHUNK_ABSENT && st.state != CHUNKD_CHUNK_QUEUED &&
		    st.state != CHUNKD_CHUNK_DOWNLOADING)
			fail_msg("chunk %.16s: status %s while waiting for DOWNLOADING", ch->id_hex,
				 dl_state_name(st.state));
		if (th_deadline_passed(&dl))
			fail_msg("chunk %.16s: still %s with %" PRIu64 " bytes after %d ms",
				 ch->id_hex, dl_state_name(st.state), st.bytes_done, WAIT_MS);
		th_pause();
	}
	/* Still far from done: the slow origin needs most of a minute per file. */
	assert_true(st.bytes_done < dl_chunk_bytes(ch));
}

/* ---- -EINVAL -------------------------------------------------------------------------------- */

static int try_download(const chunkd_chunk *c)
{
	uint64_t t = 0;
	return chunkd_download(client, c, &t);
}

/* Enqueue a descriptor the contract accepts, then delete it so that it leaves nothing behind.
 * The download must not come back -EINVAL from the daemon either (its intake checks again). */
static void accepted_then_deleted(const chunkd_chunk *c, const char *what)
{
	uint64_t t = 0, td;
	int r = chunkd_download(client, c, &t);
	if (r != 0)
		fail_msg("%s: chunkd_download = %d (%s): %s", what, r, chunkd_strerror(r),
			 chunkd_last_error());
	td = request_delete(&c->id);
	r = chunkd_wait(client, t, WAIT_MS);
	/* Cancelled by the delete, or failed against the unreachable port first. */
	if (r == -EINVAL || r == 0 || r == -ETIMEDOUT)
		fail_msg("%s: the download's ticket = %d (%s)", what, r, chunkd_strerror(r));
	expect_wait(td, WAIT_MS, 0, NULL);
	chunkd_chunk_status st;
	r = dl_wait_state(client, &c->id, CHUNKD_CHUNK_ABSENT, WAIT_MS, &st);
	if (r < 0)
		fail_msg("%s: status %s after its delete", what, dl_state_name(st.state));
}

/* The library's version against the header's: before 1.0 only the same minor is compatible
 * (0.2 changed the size of chunkd_ref). */
static void test_version(void **state)
{
	(void)state;
	assert_int_equal(chunkd_version(), CHUNKD_VERSION_NUMBER);
	assert_int_equal(chunkd_check_version(CHUNKD_VERSION_MAJOR, CHUNKD_VERSION_MINOR), 0);
	assert_int_equal(chunkd_check_version(CHUNKD_VERSION_MAJOR + 1, 0), -EPROTO);
	assert_int_equal(chunkd_check_version(CHUNKD_VERSION_MAJOR, CHUNKD_VERSION_MINOR + 1),
			 -EPROTO);
	if (CHUNKD_VERSION_MAJOR == 0 && CHUNKD_VERSION_MINOR > 0)
		assert_int_equal(
		    chunkd_check_version(CHUNKD_VERSION_MAJOR, CHUNKD_VERSION_MINOR - 1), -EPROTO);
}

static void test_einval(void **state)
{
	static chunkd_file files[CHUNKD_MAX_FILES + 1];
	static char names[CHUNKD_MAX_FILES + 1][16];
	static char long_name[CHUNKD_MAX_NAME + 2], long_url[CHUNKD_MAX_URL + 2];
	chunkd_chunk c;
	chunkd_file one;
	(void)state;
	/* Nothing listens on port 1: an accepted download fails at once if it ever starts. */
	for (int i = 0; i <= CHUNKD_MAX_FILES; i++) {
		snprintf(names[i], sizeof(names[i]), "f%d", i);
		files[i].name = names[i];
		files[i].url = "http://127.0.0.1:1/x";
	}
	memset(&c, 0, sizeof(c));
	th_make_id(&c.id, 0xe1, 1);
	th_make_id(&c.dataset, 0xe1, 2);
	c.first_block = 10;
	c.end_block = 20;
	c.files = files;
	c.nfiles = 1;

	/* A ticket before and after the matrix: nothing in between may have been issued. */
	chunkd_id nobody;
	th_make_id(&nobody, 0xe1, 3);
	uint64_t before = request_delete(&nobody);
	size_t count0 = 0;
	assert_int_equal(chunkd_list(client, NULL, 0, &count0), 0);

	/* Arguments. */
	assert_int_equal(chunkd_download(NULL, &c, NULL), -EINVAL);
	assert_int_equal(chunkd_download(client, NULL, NULL), -EINVAL);
	assert_int_equal(chunkd_delete(NULL, &c.id, NULL), -EINVAL);
	assert_int_equal(chunkd_delete(client, NULL, NULL), -EINVAL);
	chunkd_chunk_status st;
	assert_int_equal(chunkd_status(NULL, &c.id, &st), -EINVAL);
	assert_int_equal(chunkd_status(client, NULL, &st), -EINVAL);
	assert_int_equal(chunkd_status(client, &c.id, NULL), -EINVAL);

	/* File count. */
	c.nfiles = 0;
	assert_int_equal(try_download(&c), -EINVAL);
	c.nfiles = CHUNKD_MAX_FILES + 1;
	assert_int_equal(try_download(&c), -EINVAL);
	c.nfiles = 1;
	c.files = NULL;
	assert_int_equal(try_download(&c), -EINVAL);
	c.files = &one;

	/* Names. */
	memset(long_name, 'n', CHUNKD_MAX_NAME + 1);
	static const char *const bad_names[] = {"",   ".",  "..",   CHUNKD_META_NAME, "a/b",
						"/a", "a/", "a\nb", long_name};
	one.url = "http://127.0.0.1:1/x";
	for (size_t i = 0; i < sizeof(bad_names) / sizeof(bad_names[0]); i++) {
		one.name = bad_names[i];
		if (try_download(&c) != -EINVAL)
			fail_msg("name '%.40s' (%zu bytes) accepted", bad_names[i],
				 strlen(bad_names[i]));
	}
	one.name = NULL;
	assert_int_equal(try_download(&c), -EINVAL);

	/* Duplicate names, adjacent or not. */
	chunkd_file dup[3] = {{"a", "http://127.0.0.1:1/a"},
			      {"b", "http://127.0.0.1:1/b"},
			      {"a", "http://127.0.0.1:1/c"}};
	c.files = dup;
	c.nfiles = 3;
	assert_int_equal(try_download(&c), -EINVAL);
	dup[2].name = "b";
	assert_int_equal(try_download(&c), -EINVAL);
	c.files = &one;
	c.nfiles = 1;

	/* URLs. */
	memcpy(long_url, "http://h/", 9);
	memset(long_url + 9, 'u', CHUNKD_MAX_URL + 1 - 9);
	long_url[CHUNKD_MAX_URL + 1] = '\0';
	static const char *const bad_urls[] = {
	    "",
	    "ftp://127.0.0.1/x",
	    "127.0.0.1/x",
	    "gopher://h/x",
	    "http://h/a b",
	    "http://h/a\tb",
	    "http://h/a\nb",
	    "http://h/\x01",
	    "http://h/\x7f",
	    "file:/x",
	    "httpx://h/x",
	};
	one.name = "a";
	for (size_t i = 0; i < sizeof(bad_urls) / sizeof(bad_urls[0]); i++) {
		one.url = bad_urls[i];
		if (try_download(&c) != -EINVAL)
			fail_msg("URL '%s' accepted", bad_urls[i]);
	}
	one.url = long_url; /* CHUNKD_MAX_URL + 1 bytes */
	assert_int_equal(try_download(&c), -EINVAL);
	one.url = NULL;
	assert_int_equal(try_download(&c), -EINVAL);
	one.url = "http://127.0.0.1:1/x";

	/* Ranges. */
	c.first_block = c.end_block = 20;
	assert_int_equal(try_download(&c), -EINVAL);
	c.first_block = 21;
	assert_int_equal(try_download(&c), -EINVAL);
	c.first_block = UINT64_MAX;
	c.end_block = 0;
	assert_int_equal(try_download(&c), -EINVAL);

	/* None of that issued a ticket or reached the daemon. */
	assert_int_equal(chunkd_wait(client, before + 1, 0), -EINVAL);
	uint64_t after = request_delete(&nobody);
	assert_int_equal(after, before + 1);
	expect_wait(before, QUICK_MS, 0, NULL);
	expect_wait(after, QUICK_MS, 0, NULL);

	/* The limits themselves are accepted, by the library and by the daemon's intake. */
	c.first_block = 0;
	c.end_block = 1;
	c.files = files;
	c.nfiles = CHUNKD_MAX_FILES;
	accepted_then_deleted(&c, "64 files");
	c.nfiles = 1;
	memset(long_name, 'n', CHUNKD_MAX_NAME);
	long_name[CHUNKD_MAX_NAME] = '\0';
	static const char *const good_names[] = {
	    long_name, ".a", "..a", "a b", " ", "a.chunkd-meta", CHUNKD_META_NAME ".tmp"};
	c.files = &one;
	for (size_t i = 0; i < sizeof(good_names) / sizeof(good_names[0]); i++) {
		one.name = good_names[i];
		accepted_then_deleted(&c, good_names[i]);
	}
	one.name = "a";
	long_url[CHUNKD_MAX_URL] = '\0'; /* exactly CHUNKD_MAX_URL bytes */
	one.url = long_url;
	accepted_then_deleted(&c, "a URL of CHUNKD_MAX_URL bytes");
	static const char *const good_urls[] = {"https://127.0.0.1:1/x", "s3://bucket/key",
						"file:///nonexistent/x"};
	for (size_t i = 0; i < sizeof(good_urls) / sizeof(good_urls[0]); i++) {
		one.url = good_urls[i];
		accepted_then_deleted(&c, good_urls[i]);
	}
	c.first_block = UINT64_MAX - 1;
	c.end_block = UINT64_MAX;
	one.url = "http://127.0.0.1:1/x";
	accepted_then_deleted(&c, "the range [2^64 - 2, 2^64 - 1)");

	size_t count1 = 0;
	assert_int_equal(chunkd_list(client, NULL, 0, &count1), 0);
	assert_int_equal(count1, count0);
	assert_true(th_daemon_running(&env.d));
}

/* ---- published chunks: same descriptor, other descriptors, overlaps ------------------------- */

static void test_published_again(void **state)
{
	const struct th_chunk *a = chunk(C_PUBLISHED);
	char dead[160];
	(void)state;
	expect_wait(download(a, fast), WAIT_MS, 0, a);
	expect_published(a);

	/* Again, from a mirror that would answer 404 for every file: the daemon has the chunk and
	 * must not download anything. */
	snprintf(dead, sizeof(dead), "%s/no-such-mirror", fast);
	uint64_t t0 = th_now_ns();
	expect_wait(download(a, dead), QUICK_MS, 0, a);
	print_message("published chunk requested again: 0 after %" PRIu64 " us\n",
		      (th_now_ns() - t0) / 1000);
	expect_published(a);
	assert_int_equal(dl_server_requests(&web, "no-such-mirror"), 0);
	chunkd_chunk_status st;
	assert_int_equal(chunkd_status(client, &a->id, &st), 0);
	assert_int_equal(st.attempts, 1);
}

/* A descriptor for chunk a's id (or a's dataset) with one thing changed. */
static void expect_eexist(const struct dl_desc *d, const char *what)
{
	uint64_t t = 0;
	int r = chunkd_download(client, &d->c, &t);
	if (r != 0)
		fail_msg("%s: chunkd_download = %d (%s)", what, r, chunkd_strerror(r));
	r = chunkd_wait(client, t, QUICK_MS);
	if (r != -EEXIST)
		fail_msg("%s: chunkd_wait = %d (%s), want -EEXIST", what, r, chunkd_strerror(r));
}

static void eexist_matrix(const struct th_chunk *a, const char *prefix)
{
	struct dl_desc d;
	chunkd_file files3[3];

	/* The same id with another descriptor. */
	assert_int_equal(dl_desc_init(&d, a, prefix), 0);
	d.c.end_block = a->end + 1;
	expect_eexist(&d, "same id, longer range");
	d.c.end_block = a->end;
	d.c.first_block = a->first + 1;
	expect_eexist(&d, "same id, shorter range");
	d.c.first_block = a->first;
	th_make_id(&d.c.dataset, 0xe2, 1);
	expect_eexist(&d, "same id, other dataset");
	d.c.dataset = a->dataset;
	d.c.nfiles = a->nfiles - 1;
	expect_eexist(&d, "same id, one file less");
	d.c.nfiles = a->nfiles;
	memcpy(files3, d.files, sizeof(files3));
	d.files[0] = files3[1];
	d.files[1] = files3[0];
	expect_eexist(&d, "same id, files in another order");
	memcpy(d.files, files3, sizeof(files3));
	d.files[2].name = "renamed.parquet";
	expect_eexist(&d, "same id, a file renamed");
	d.files[2].name = files3[2].name;

	/* Other ids whose ranges overlap a's in its dataset: equal, its first block, its last
	 * block, inside it, across its end, across its start, everything. */
	uint64_t ranges[7][2] = {
	    {a->first, a->end},
	    {a->first, a->first + 1},
	    {a->end - 1, a->end},
	    {a->first + (a->end - a->first) / 2, a->first + (a->end - a->first) / 2 + 1},
	    {a->end - 1, a->end + 100},
	    {a->first > 0 ? a->first - 1 : 0, a->first + 1},
	    {0, UINT64_MAX},
	};
	for (size_t i = 0; i < sizeof(ranges) / sizeof(ranges[0]); i++) {
		char what[96];
		th_make_id(&d.c.id, 0xe3, (uint32_t)i);
		d.c.first_block = ranges[i][0];
		d.c.end_block = ranges[i][1];
		snprintf(what, sizeof(what), "other id, range [%" PRIu64 ", %" PRIu64 ")",
			 ranges[i][0], ranges[i][1]);
		expect_eexist(&d, what);
		chunkd_chunk_status st;
		assert_int_equal(chunkd_status(client, &d.c.id, &st), 0);
		if (st.state != CHUNKD_CHUNK_ABSENT)
			fail_msg("%s: the refused chunk is %s", what, dl_state_name(st.state));
	}
	dl_desc_fini(&d);
}

static void test_eexist_published(void **state)
{
	const struct th_chunk *a = chunk(C_PUBLISHED);
	(void)state;
	eexist_matrix(a, fast);
	/* a itself is untouched. */
	expect_published(a);

	/* Adjacent ranges do not overlap: [end, end + 1) with a's files under another id. */
	struct th_chunk b = *a;
	th_make_id(&b.id, 0xe4, 1);
	th_hex(&b.id, b.id_hex);
	b.first = a->end;
	b.end = a->end + 1;
	/* Same dataset, same web directory as a (the URLs name a's files). */
	expect_wait(download(&b, fast), WAIT_MS, 0, &b);
	expect_published(&b);
	expect_published(a);
	expect_wait(request_delete(&b.id), WAIT_MS, 0, &b);
	expect_absent(&b);
	expect_clean();
}

static void test_eexist_downloading(void **state)
{
	const struct th_chunk *c = chunk(C_BUSY);
	(void)state;
	uint64_t t = download(c, slow);
	wait_downloading(c);
	/* The id is known (being downloaded): another descriptor is refused, the same one joins. */
	eexist_matrix(c, fast);
	uint64_t t2 = download(c, fast);
	assert_int_equal(chunkd_wait(client, t2, 0), -ETIMEDOUT);
	/* Both waiters are cancelled by one delete. */
	uint64_t td = request_delete(&c->id);
	expect_wait(t, WAIT_MS, -ECANCELED, c);
	expect_wait(t2, WAIT_MS, -ECANCELED, c);
	expect_wait(td, WAIT_MS, 0, c);
	expect_absent(c);
	expect_clean();
}

/* ---- deletes -------------------------------------------------------------------------------- */

static void test_delete_unknown(void **state)
{
	chunkd_id id;
	(void)state;
	th_make_id(&id, 0xd1, 1);
	expect_wait(request_delete(&id), QUICK_MS, 0, NULL);
	/* Twice, and with a status that stays ABSENT. */
	expect_wait(request_delete(&id), QUICK_MS, 0, NULL);
	chunkd_chunk_status st;
	assert_int_equal(chunkd_status(client, &id, &st), 0);
	assert_int_equal(st.state, CHUNKD_CHUNK_ABSENT);
}

static void test_delete_cancels_download(void **state)
{
	const struct th_chunk *c = chunk(C_CANCEL);
	(void)state;
	uint64_t t = download(c, slow);
	wait_downloading(c);

	/* chunkd_wait on a pending ticket: 0 polls, a short timeout expires in about its time. */
	assert_int_equal(chunkd_wait(client, t, 0), -ETIMEDOUT);
	uint64_t t0 = th_now_ns();
	assert_int_equal(chunkd_wait(client, t, 300), -ETIMEDOUT);
	uint64_t took_ms = (th_now_ns() - t0) / 1000000;
	if (took_ms < 290 || took_ms > 2000)
		fail_msg("chunkd_wait(300 ms) returned -ETIMEDOUT after %" PRIu64 " ms", took_ms);

	uint64_t td = request_delete(&c->id);
	expect_wait(t, WAIT_MS, -ECANCELED, c);
	expect_wait(td, WAIT_MS, 0, c);
	expect_absent(c);
	expect_clean();

	/* A download after the delete brings it back. */
	expect_wait(download(c, fast), WAIT_MS, 0, c);
	expect_published(c);
	expect_clean();
}

static void test_last_request_wins(void **state)
{
	const struct th_chunk *u = chunk(C_BURST), *r = chunk(C_REPLACE);
	(void)state;
	/* Download (slow), delete, download (fast) enqueued back to back: it ends present. */
	uint64_t t1 = download(u, slow);
	uint64_t t2 = request_delete(&u->id);
	uint64_t t3 = download(u, fast);
	expect_wait(t1, WAIT_MS, -ECANCELED, u);
	expect_wait(t2, WAIT_MS, 0, u);
	expect_wait(t3, WAIT_MS, 0, u);
	expect_published(u);
	expect_clean();

	/* A published chunk deleted and downloaded again at once: removed, then downloaded anew. */
	expect_wait(download(r, fast), WAIT_MS, 0, r);
	t1 = request_delete(&r->id);
	t2 = download(r, fast);
	expect_wait(t1, WAIT_MS, 0, r);
	expect_wait(t2, WAIT_MS, 0, r);
	expect_published(r);
	expect_clean();

	/* And once more ending with a delete: absent. */
	t1 = request_delete(&r->id);
	t2 = download(r, slow);
	t3 = request_delete(&r->id);
	expect_wait(t1, WAIT_MS, 0, r);
	/*
	 * The download in the middle is either cancelled by the last delete, or, when the daemon
	 * takes it while the first delete's directory is still intact, done at once by publishing
	 * that directory again (docs/requests.md: "deleted, still pinned" includes "not yet
	 * removed") before the last delete removes it. Both orders keep "the last request wins".
	 */
	int r2 = chunkd_wait(client, t2, WAIT_MS);
	if (r2 != 0 && r2 != -ECANCELED)
		fail_msg("download between two deletes: chunkd_wait = %d (%s)", r2,
			 chunkd_strerror(r2));
	expect_wait(t3, WAIT_MS, 0, r);
	expect_absent(r);
	expect_clean();
}

/*
 * Regression: a download of a deleted chunk whose directory is being removed (renamed into
 * trash/, files being unlinked) must wait for the removal and then download the chunk again
 * (docs/requests.md, "deleted, being removed"). The client asks right after its delete's ticket
 * said 0, which is when the daemon has just started the removal. Each round must end with the
 * chunk published again; the daemon must not answer -EEXIST ("another descriptor") for the
 * very descriptor the chunk was published with.
 */
static void test_download_during_removal_not_eexist(void **state)
{
	const struct th_chunk *r = chunk(C_REPLACE);
	(void)state;
	expect_wait(download(r, fast), WAIT_MS, 0, r);
	for (int round = 0; round < 10; round++) {
		expect_wait(request_delete(&r->id), WAIT_MS, 0, r);
		uint64_t t = download(r, fast);
		int res = chunkd_wait(client, t, WAIT_MS);
		if (res != 0) {
			chunkd_chunk_status st;
			chunkd_status(client, &r->id, &st);
			fail_msg(
			    "round %d: download right after the delete: chunkd_wait = %d (%s); "
			    "status %s",
			    round, res, chunkd_strerror(res), dl_state_name(st.state));
		}
		expect_published(r);
	}
	expect_clean();
}

/* ---- chunkd_wait ---------------------------------------------------------------------------- */

static void test_wait_bad_tickets(void **state)
{
	chunkd_id id;
	(void)state;
	th_make_id(&id, 0xd2, 1);
	uint64_t t = request_delete(&id);
	expect_wait(t, QUICK_MS, 0, NULL);
	assert_int_equal(chunkd_wait(client, 0, 0), -EINVAL);
	assert_int_equal(chunkd_wait(client, t + 1, 0), -EINVAL);
	assert_int_equal(chunkd_wait(client, t + 1, 100), -EINVAL);
	assert_int_equal(chunkd_wait(client, UINT64_MAX, -1), -EINVAL);
	assert_int_equal(chunkd_wait(NULL, t, 0), -EINVAL);
	/* A done ticket keeps its result. */
	assert_int_equal(chunkd_wait(client, t, 0), 0);
	assert_int_equal(chunkd_wait(client, t, -1), 0);

	/* Tickets belong to their handle: a fresh handle has issued none. */
	chunkd_client *other;
	assert_int_equal(chunkd_open(env.name, &other), 0);
	assert_int_equal(chunkd_wait(other, 1, 0), -EINVAL);
	assert_int_equal(chunkd_wait(other, t, 0), -EINVAL);
	chunkd_close(other);
}

/* ---- failures ------------------------------------------------------------------------------- */

/* Hide file k of ch from the origin (nginx answers 404), or bring it back. */
static void hide_file(const struct th_chunk *ch, uint32_t k, int hide)
{
	char a[2 * PATH_MAX], b[2 * PATH_MAX + 8];
	snprintf(a, sizeof(a), "%s/%s/%s", www, ch->dir, ch->files[k].name);
	snprintf(b, sizeof(b), "%s.hidden", a);
	if (hide)
		assert_int_equal(rename(a, b), 0);
	else
		assert_int_equal(rename(b, a), 0);
}

static void expect_failed_404(const struct th_chunk *ch, uint64_t t)
{
	chunkd_chunk_status st;
	expect_wait(t, WAIT_MS, -EREMOTEIO, ch);
	assert_int_equal(chunkd_status(client, &ch->id, &st), 0);
	if (st.state != CHUNKD_CHUNK_FAILED || st.last_error != -EREMOTEIO ||
	    st.http_status != 404 || !strstr(st.message, "404") || st.attempts != ATTEMPTS ||
	    st.nfiles != ch->nfiles || st.first_block != ch->first || st.end_block != ch->end)
		fail_msg("chunk %.16s: status %s, %u attempts, error %d, http %d, message '%s', "
			 "%u files, [%" PRIu64 ", %" PRIu64 "); want FAILED, %d attempts, "
			 "-EREMOTEIO, 404 and a message naming it",
			 ch->id_hex, dl_state_name(st.state), st.attempts, st.last_error,
			 st.http_status, st.message, st.nfiles, st.first_block, st.end_block,
			 ATTEMPTS);
	print_message("failed chunk's message: %s\n", st.message);
	chunkd_ref ref;
	assert_int_equal(chunkd_find(client, &ch->dataset, ch->first, &ref), -ENOENT);
	char path[PATH_MAX];
	dl_chunk_path(path, sizeof(path), env.data_dir, ch);
	assert_false(th_exists(path));
	expect_clean();
}

static void test_failed_download(void **state)
{
	const struct th_chunk *f = chunk(C_FAIL), *g = chunk(C_FAIL_DEL);
	(void)state;
	/* One file of three is missing: the chunk fails as a whole. */
	hide_file(f, 1, 1);
	expect_failed_404(f, download(f, fast));

	/* Downloaded again with the file back: retried from scratch, and published. */
	hide_file(f, 1, 0);
	expect_wait(download(f, fast), WAIT_MS, 0, f);
	expect_published(f);
	chunkd_chunk_status st;
	assert_int_equal(chunkd_status(client, &f->id, &st), 0);
	assert_int_equal(st.http_status, 0);
	expect_clean();

	/* A failed chunk deleted: ABSENT, and its range is free again. */
	hide_file(g, 0, 1);
	expect_failed_404(g, download(g, fast));
	expect_wait(request_delete(&g->id), WAIT_MS, 0, g);
	expect_absent(g);
	hide_file(g, 0, 0);
	expect_wait(download(g, fast), WAIT_MS, 0, g);
	expect_published(g);
}

/* ---- -EAGAIN and -ESTALE -------------------------------------------------------------------- */

static void test_eagain(void **state)
{
	chunkd_client *c;
	uint64_t *tickets = calloc(CHUNKD_TICKETS_PER_CLIENT + 1, sizeof(*tickets));
	const int ndl = NCHUNKS - C_EAGAIN;
	struct th_deadline dl;
	(void)state;
	assert_non_null(tickets);
	assert_int_equal(chunkd_open(env.name, &c), 0);

	/* A stopped daemon completes nothing: requests pile up in the ring. */
	assert_int_equal(kill(env.d.pid, SIGSTOP), 0);
	assert_int_equal(th_wait_proc_stopped(env.d.pid, 5000), 0);
	int n = 0, r = 0;
	for (; n <= CHUNKD_TICKETS_PER_CLIENT; n++) {
		if (n < ndl) {
			struct dl_desc d;
			assert_int_equal(dl_desc_init(&d, chunk(C_EAGAIN + n), fast), 0);
			r = chunkd_download(c, &d.c, &tickets[n]);
			dl_desc_fini(&d);
		} else {
			chunkd_id id;
			th_make_id(&id, 0xa6, (uint32_t)n);
			r = chunkd_delete(c, &id, &tickets[n]);
		}
		if (r < 0)
			break;
		/* Tickets of a handle are consecutive (their first is opaque). */
		assert_int_equal(tickets[n], tickets[0] + (uint64_t)n);
	}
	int wait0 = chunkd_wait(c, tickets[0], 0);
	kill(env.d.pid, SIGCONT);
	assert_int_equal(r, -EAGAIN);
	assert_int_equal(n, CHUNKD_TICKETS_PER_CLIENT);
	assert_int_equal(wait0, -ETIMEDOUT);

	/* Every outstanding request completes. */
	th_deadline_start(&dl, 30000);
	for (int i = 0; i < n; i++) {
		r = chunkd_wait(c, tickets[i], th_deadline_left_ms(&dl));
		if (r != 0)
			fail_msg("request %d of %d (ticket %" PRIu64 "): chunkd_wait = %d (%s)", i,
				 n, tickets[i], r, chunkd_strerror(r));
	}
	for (int i = 0; i < ndl; i++)
		expect_published(chunk(C_EAGAIN + i));

	/* Room again; the 1025th ticket reuses the first one's entry, whose result is then gone. */
	chunkd_id id;
	uint64_t t;
	th_make_id(&id, 0xa6, 99999);
	assert_int_equal(chunkd_delete(c, &id, &t), 0);
	assert_int_equal(t, tickets[0] + CHUNKD_TICKETS_PER_CLIENT);
	r = chunkd_wait(c, t, WAIT_MS);
	assert_int_equal(r, 0);
	assert_int_equal(chunkd_wait(c, tickets[0], 0), -ESTALE);
	assert_int_equal(chunkd_wait(c, tickets[1], 0), 0);
	chunkd_close(c);
	free(tickets);
	assert_true(th_daemon_running(&env.d));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_version),
	    cmocka_unit_test(test_einval),
	    cmocka_unit_test(test_published_again),
	    cmocka_unit_test(test_eexist_published),
	    cmocka_unit_test(test_eexist_downloading),
	    cmocka_unit_test(test_delete_unknown),
	    cmocka_unit_test(test_delete_cancels_download),
	    cmocka_unit_test(test_last_request_wins),
	    cmocka_unit_test(test_download_during_removal_not_eexist),
	    cmocka_unit_test(test_wait_bad_tickets),
	    cmocka_unit_test(test_failed_download),
	    cmocka_unit_test(test_eagain),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
