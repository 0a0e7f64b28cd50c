/*
 * test_restart.c — the daemon's start-up scan and restart:
 * - malformed chunk directories (no metadata, garbage metadata, metadata disagreeing with the
 *   directory's name, a listed file missing or of the wrong size, a badly named directory, a file
 *   or a symlink where a chunk directory belongs, a dataset directory that is not 64 hex digits)
 *   are skipped, reported in the log, and left on disk untouched;
 * - of two chunks whose ranges overlap in one dataset, or that share an id, one is published;
 * - leftovers in staging/ and trash/ (files, nested directories, symlinks into chunks/) are
 *   removed at every start, without following the symlinks;
 * - SIGTERM stops the daemon with exit status 0 and state STOPPED, the last catalogue stays
 *   readable, and a new daemon republishes exactly the same catalogue with the next epoch.
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

#define MAX_KNOWN 512

/* What the test did to a chunk directory, and so what the daemon must do with it. */
enum role {
	ROLE_OK,     /* well-formed: published */
	ROLE_BROKEN, /* malformed: skipped, reported, left alone */
	ROLE_PAIR,   /* one of two that conflict: exactly one of the pair is published */
};

struct known {
	chunkd_id id, dataset;
	uint64_t first, end;
	char path[PATH_MAX]; /* absolute directory (or entry) path */
	char rel[512];       /* below DATA_DIR/chunks/, as the daemon logs it */
	enum role role;
	int pair;   /* ROLE_PAIR: index of the other member */
	char *meta; /* ROLE_BROKEN: the metadata file's bytes before the start, or NULL */
	size_t meta_len;
	const char *what;
};

/* A published chunk as seen by a client. */
struct seen {
	chunkd_id id, dataset;
	uint64_t first, end;
	char path[PATH_MAX];
};

static struct th_env env;
static struct known known[MAX_KNOWN];
static size_t nknown;
static size_t npairs, nbroken, nok;
static char leftovers_staging[PATH_MAX], leftovers_trash[PATH_MAX];

/* The catalogue published by the first daemon, compared with the restarted one. */
static struct seen first_run[MAX_KNOWN];
static size_t first_run_n;
static uint64_t first_epoch;

/* k->path from k->rel (through a copy: both live in known[]). */
static void set_path(struct known *k)
{
	char tmp[sizeof(k->path)];
	snprintf(tmp, sizeof(tmp), "%s/chunks/%s", env.data_dir, k->rel);
	memcpy(k->path, tmp, sizeof(tmp));
}

static struct known *add_known(const struct th_chunk *c, enum role role, const char *what)
{
	struct known *k = &known[nknown++];
	memset(k, 0, sizeof(*k));
	k->id = c->id;
	k->dataset = c->dataset;
	k->first = c->first;
	k->end = c->end;
	snprintf(k->rel, sizeof(k->rel), "%s", c->dir + strlen("chunks/"));
	snprintf(k->path, sizeof(k->path), "%s/%s", env.data_dir, c->dir);
	k->role = role;
	k->what = what;
	return k;
}

/* A chunk directory written by the test (not in the manifest). */
static struct known *add_extra(const chunkd_id *ds, uint32_t n, uint64_t first, uint64_t end,
			       enum role role, const char *what)
{
	struct known *k = &known[nknown++];
	char ds_hex[2 * CHUNKD_ID_SIZE + 1], name[160];
	memset(k, 0, sizeof(*k));
	th_make_id(&k->id, 0x7e57, n);
	k->dataset = *ds;
	k->first = first;
	k->end = end;
	th_hex(ds, ds_hex);
	th_chunk_dir_name(name, sizeof(name), first, end, &k->id);
	snprintf(k->rel, sizeof(k->rel), "%s/%s", ds_hex, name);
	set_path(k);
	k->role = role;
	k->what = what;
	return k;
}

static void path_join(char *out, size_t len, const char *dir, const char *name)
{
	snprintf(out, len, "%s/%s", dir, name);
}

/* Remember the metadata bytes of a broken chunk, to check that the daemon left them alone. */
static int remember_meta(struct known *k)
{
	char p[PATH_MAX + 32];
	path_join(p, sizeof(p), k->path, CHUNKD_META_NAME);
	k->meta = th_read_file(p, &k->meta_len);
	return 0;
}

/* Fill staging/ and trash/ with leftovers: files, nested directories, symlinks into chunks/. */
static int make_leftovers(const char *tag)
{
	char p[PATH_MAX + 64], chunks[PATH_MAX];
	path_join(chunks, sizeof(chunks), env.data_dir, "chunks");
	snprintf(leftovers_staging, sizeof(leftovers_staging), "%s/staging", env.data_dir);
	snprintf(leftovers_trash, sizeof(leftovers_trash), "%s/trash", env.data_dir);
	const char *const bases[] = {leftovers_staging, leftovers_trash};
	for (int b = 0; b < 2; b++) {
		snprintf(p, sizeof(p), "%s/%s-a/b/c", bases[b], tag);
		if (th_mkdirs(p, 0755) < 0)
			return -1;
		snprintf(p, sizeof(p), "%s/%s-a/b/c/partial.parquet", bases[b], tag);
		if (th_write_file(p, "partial", 7) < 0)
			return -1;
		snprintf(p, sizeof(p), "%s/%s-a/top.tmp", bases[b], tag);
		if (th_write_file(p, "x", 1) < 0)
			return -1;
		snprintf(p, sizeof(p), "%s/%s-file.tmp", bases[b], tag);
		if (th_write_file(p, "leftover", 8) < 0)
			return -1;
		snprintf(p, sizeof(p), "%s/%s-empty", bases[b], tag);
		if (mkdir(p, 0755) < 0)
			return -1;
		snprintf(p, sizeof(p), "%s/%s-readonly", bases[b], tag);
		if (mkdir(p, 0755) < 0)
			return -1;
		snprintf(p, sizeof(p), "%s/%s-readonly/f", bases[b], tag);
		if (th_write_file(p, "f", 1) < 0 || chmod(p, 0444) < 0)
			return -1;
		snprintf(p, sizeof(p), "%s/%s-readonly", bases[b], tag);
		if (chmod(p, 0555) < 0)
			return -1;
		/* Purging must remove the links, never what they point at. */
		snprintf(p, sizeof(p), "%s/%s-link-to-chunks", bases[b], tag);
		if (symlink(chunks, p) < 0)
			return -1;
		snprintf(p, sizeof(p), "%s/%s-a/b/link-to-chunks", bases[b], tag);
		if (symlink(chunks, p) < 0)
			return -1;
	}
	return 0;
}

static int group_setup(void **state)
{
	static const char *const gen[] = {"--datasets", "5",   "--chunks", "200", "--files", "2",
					  "--size",     "256", "--seed",   "11",  NULL};
	char p[PATH_MAX + 64];
	(void)state;
	th_require();
	if (th_env_init(&env, "restart") < 0 || th_env_gen(&env, gen) < 0)
		goto err;

	/* Assign roles to manifest chunks in order; the overlap partners need room inside. */
	const struct role_spec {
		const char *what;
		enum role role;
		int need_len3;
	} roles[] = {
	    {"no metadata file", ROLE_BROKEN, 0},
	    {"garbage metadata", ROLE_BROKEN, 0},
	    {"metadata end_block disagrees with the name", ROLE_BROKEN, 0},
	    {"metadata id disagrees with the name", ROLE_BROKEN, 0},
	    {"a listed file is missing", ROLE_BROKEN, 0},
	    {"a file has the wrong size", ROLE_BROKEN, 0},
	    {"directory name is not <first>-<end>-<id>", ROLE_BROKEN, 0},
	    {"overlapped by a chunk starting inside it", ROLE_PAIR, 1},
	    {"overlapped by a chunk with the same first block", ROLE_PAIR, 0},
	    {"its id is also used in another dataset", ROLE_PAIR, 0},
	};
	const size_t nroles = sizeof(roles) / sizeof(roles[0]);
	size_t next = 0;
	struct known *k[16];
	for (size_t i = 0; i < env.man.n; i++) {
		const struct th_chunk *c = &env.man.chunks[i];
		/* Every 7th chunk gets the next role, so the victims spread over the datasets. */
		if (next < nroles && i % 7 == 3 &&
		    (!roles[next].need_len3 || c->end - c->first >= 3)) {
			k[next] = add_known(c, roles[next].role, roles[next].what);
			next++;
		} else {
			add_known(c, ROLE_OK, "well-formed");
		}
	}
	if (next < nroles) {
		fprintf(stderr, "not enough chunks for every role\n");
		goto err;
	}

	/* 0: no metadata file. */
	path_join(p, sizeof(p), k[0]->path, CHUNKD_META_NAME);
	if (unlink(p) < 0)
		goto err;
	/* 1: garbage metadata. */
	path_join(p, sizeof(p), k[1]->path, CHUNKD_META_NAME);
	if (th_write_file(p, "garbage\n\xff\xfe not a metadata file\n", 31) < 0)
		goto err;
	/* 2 and 3: well-formed metadata describing another chunk than the directory name. */
	const struct th_chunk *c2 = th_manifest_by_id(&env.man, &k[2]->id);
	if (th_write_meta(k[2]->path, &c2->dataset, &c2->id, c2->first, c2->end + 1, c2->nfiles,
			  c2->files) < 0)
		goto err;
	const struct th_chunk *c3 = th_manifest_by_id(&env.man, &k[3]->id);
	chunkd_id other_id;
	th_make_id(&other_id, 0x7e57, 999);
	if (th_write_meta(k[3]->path, &c3->dataset, &other_id, c3->first, c3->end, c3->nfiles,
			  c3->files) < 0)
		goto err;
	/* 4: a listed file is missing. */
	path_join(p, sizeof(p), k[4]->path, "file1.parquet");
	if (unlink(p) < 0)
		goto err;
	/* 5: a file one byte short. */
	path_join(p, sizeof(p), k[5]->path, "file0.parquet");
	if (truncate(p, 255) < 0)
		goto err;
	/* 6: a directory name the daemon cannot parse. */
	char ds_hex[2 * CHUNKD_ID_SIZE + 1], bad[PATH_MAX];
	th_hex(&k[6]->dataset, ds_hex);
	snprintf(k[6]->rel, sizeof(k[6]->rel), "%s/bad-name-%s", ds_hex,
		 th_manifest_by_id(&env.man, &k[6]->id)->id_hex);
	snprintf(bad, sizeof(bad), "%s/chunks/%s", env.data_dir, k[6]->rel);
	if (rename(k[6]->path, bad) < 0)
		goto err;
	snprintf(k[6]->path, sizeof(k[6]->path), "%s", bad);

	/* 7: a well-formed chunk starting inside it. */
	struct known *x = add_extra(&k[7]->dataset, 1, k[7]->first + 1, k[7]->first + 2, ROLE_PAIR,
				    "starts inside another chunk");
	if (th_write_chunk(env.data_dir, &x->dataset, &x->id, x->first, x->end, 1, 100, NULL, 0))
		goto err;
	x->pair = (int)(k[7] - known);
	k[7]->pair = (int)(x - known);
	/* 8: a well-formed chunk with the same first block. */
	x = add_extra(&k[8]->dataset, 2, k[8]->first, k[8]->first + 1, ROLE_PAIR,
		      "same first block as another chunk");
	if (th_write_chunk(env.data_dir, &x->dataset, &x->id, x->first, x->end, 1, 100, NULL, 0))
		goto err;
	x->pair = (int)(k[8] - known);
	k[8]->pair = (int)(x - known);
	/* 9: the same id in another dataset, in a range nobody else uses there. */
	const chunkd_id *ds9 = NULL;
	for (size_t d = 0; d < env.man.ndatasets && !ds9; d++)
		if (memcmp(&env.man.datasets[d], &k[9]->dataset, sizeof(chunkd_id)))
			ds9 = &env.man.datasets[d];
	uint64_t f9 = th_manifest_max_end(&env.man, ds9) + 10;
	x = &known[nknown++];
	memset(x, 0, sizeof(*x));
	x->id = k[9]->id;
	x->dataset = *ds9;
	x->first = f9;
	x->end = f9 + 5;
	x->role = ROLE_PAIR;
	x->what = "same id as a chunk of another dataset";
	char name9[160];
	th_chunk_dir_name(name9, sizeof(name9), x->first, x->end, &x->id);
	th_hex(&x->dataset, ds_hex);
	snprintf(x->rel, sizeof(x->rel), "%s/%s", ds_hex, name9);
	set_path(x);
	if (th_write_chunk(env.data_dir, &x->dataset, &x->id, x->first, x->end, 1, 100, NULL, 0))
		goto err;
	x->pair = (int)(k[9] - known);
	k[9]->pair = (int)(x - known);
	npairs = 3;

	/* Entries that are not chunk directories at all. */
	struct known *e;
	e = &known[nknown++];
	memset(e, 0, sizeof(*e));
	e->role = ROLE_BROKEN;
	e->what = "dataset directory is not 64 hex digits";
	snprintf(e->rel, sizeof(e->rel), "zz-not-a-dataset");
	set_path(e);
	snprintf(p, sizeof(p), "%s/%s", e->path, "00000000000000000001-00000000000000000002-x");
	if (th_mkdirs(p, 0755) < 0)
		goto err;
	e = &known[nknown++];
	memset(e, 0, sizeof(*e));
	e->role = ROLE_BROKEN;
	e->what = "a regular file in chunks/";
	snprintf(e->rel, sizeof(e->rel), "README");
	set_path(e);
	if (th_write_file(e->path, "not a dataset\n", 14) < 0)
		goto err;
	/* A regular file with a chunk directory's name. */
	const chunkd_id *ds0 = &env.man.datasets[0];
	e = add_extra(ds0, 3, th_manifest_max_end(&env.man, ds0) + 100,
		      th_manifest_max_end(&env.man, ds0) + 110, ROLE_BROKEN,
		      "a regular file named like a chunk directory");
	if (th_write_file(e->path, "file\n", 5) < 0)
		goto err;
	/* A symlink with a chunk directory's name, to a well-formed chunk outside the data dir. */
	e = add_extra(ds0, 4, th_manifest_max_end(&env.man, ds0) + 200,
		      th_manifest_max_end(&env.man, ds0) + 210, ROLE_BROKEN,
		      "a symlink to a chunk directory");
	char outside[PATH_MAX], target[PATH_MAX];
	th_env_path(&env, outside, sizeof(outside), "outside");
	if (th_write_chunk(outside, &e->dataset, &e->id, e->first, e->end, 1, 50, target,
			   sizeof(target)) < 0 ||
	    symlink(target, e->path) < 0)
		goto err;

	for (size_t i = 0; i < nknown; i++) {
		if (known[i].role == ROLE_BROKEN) {
			remember_meta(&known[i]);
			nbroken++;
		}
		nok += known[i].role == ROLE_OK;
	}
	if (make_leftovers("run1") < 0) {
		fprintf(stderr, "cannot make leftovers: %s\n", strerror(errno));
		goto err;
	}
	return 0;
err:
	fprintf(stderr, "setup failed (errno %s)\n", strerror(errno));
	th_env_fini(&env);
	return -1;
}

static int group_teardown(void **state)
{
	(void)state;
	for (size_t i = 0; i < nknown; i++)
		free(known[i].meta);
	th_env_fini(&env);
	return 0;
}

/* ---- checks --------------------------------------------------------------------------------- */

/* Is k published? Its first block finds it, with its range and path. */
static int is_published(chunkd_client *c, const struct known *k, struct seen *out)
{
	chunkd_ref ref;
	int r = chunkd_find(c, &k->dataset, k->first, &ref);
	if (r == -ENOENT)
		return 0;
	assert_int_equal(r, 0);
	int same = !memcmp(&ref.id, &k->id, sizeof(k->id));
	if (same) {
		assert_int_equal(ref.first_block, k->first);
		assert_int_equal(ref.end_block, k->end);
		assert_string_equal(ref.path, k->path);
		if (out) {
			out->id = ref.id;
			out->dataset = ref.dataset;
			out->first = ref.first_block;
			out->end = ref.end_block;
			snprintf(out->path, sizeof(out->path), "%s", ref.path);
		}
	}
	chunkd_release(c, &ref);
	return same;
}

/*
 * Check the catalogue of the running (or stopped) instance against the roles and return it in
 * (dataset, first) order as chunkd_list reports it.
 */
static void check_catalogue(struct seen *out, size_t *nout)
{
	chunkd_client *c;
	static chunkd_id ids[MAX_KNOWN];
	size_t count = 0;
	int r = chunkd_open(env.name, &c);
	if (r)
		fail_msg("chunkd_open: %d (%s): %s", r, chunkd_strerror(r), chunkd_last_error());
	assert_int_equal(chunkd_list(c, ids, MAX_KNOWN, &count), 0);
	/* Every well-formed chunk, and one of each conflicting pair. */
	assert_int_equal(count, nok + npairs);

	for (size_t i = 0; i < nknown; i++) {
		const struct known *k = &known[i];
		int pub;
		switch (k->role) {
		case ROLE_OK:
			if (!is_published(c, k, NULL))
				fail_msg("well-formed chunk %s is not published", k->rel);
			break;
		case ROLE_BROKEN:
			/* Entries without a chunk name have a zero dataset: never found. */
			if (is_published(c, k, NULL))
				fail_msg("malformed chunk (%s) %s is published", k->what, k->rel);
			break;
		case ROLE_PAIR:
			pub = is_published(c, k, NULL) + is_published(c, &known[k->pair], NULL);
			if (pub != 1)
				fail_msg("%s: %d of the pair %s / %s are published, want exactly 1",
					 k->what, pub, k->rel, known[k->pair].rel);
			break;
		}
	}
	/* The list holds exactly what the look-ups found, in (dataset, first_block) order. */
	for (size_t i = 0; i < count; i++) {
		const struct known *k = NULL;
		/* The duplicated id belongs to two entries; the published one is listed. */
		for (size_t j = 0; j < nknown && !k; j++)
			if (!memcmp(&known[j].id, &ids[i], sizeof(ids[i])) &&
			    is_published(c, &known[j], NULL))
				k = &known[j];
		if (!k) {
			char hex[2 * CHUNKD_ID_SIZE + 1];
			th_hex(&ids[i], hex);
			fail_msg("listed id %s is not a published chunk", hex);
		}
		assert_true(is_published(c, k, &out[i]));
		if (i > 0) {
			int o = th_id_order(&out[i - 1].dataset, &out[i].dataset);
			if (!(o < 0 || (o == 0 && out[i - 1].first < out[i].first)))
				fail_msg(
				    "list entries %zu and %zu are not in (dataset, first) order",
				    i - 1, i);
		}
	}
	*nout = count;
	chunkd_close(c);
}

/* Malformed entries are reported in the log and still on disk, metadata bytes unchanged. */
static void check_broken_kept(const char *log)
{
	char line[PATH_MAX + 64], p[PATH_MAX + 32];
	for (size_t i = 0; i < nknown; i++) {
		const struct known *k = &known[i];
		if (k->role != ROLE_BROKEN)
			continue;
		snprintf(line, sizeof(line), "skipping %s/chunks/%s", env.data_dir, k->rel);
		if (th_file_contains(log, line) != 1) {
			th_daemon_dump_log(&env.d);
			fail_msg("the log does not report the malformed entry (%s): \"%s\"",
				 k->what, line);
		}
		if (!th_exists(k->path))
			fail_msg("malformed entry (%s) %s was removed", k->what, k->path);
		if (k->meta) {
			size_t len = 0;
			path_join(p, sizeof(p), k->path, CHUNKD_META_NAME);
			char *now = th_read_file(p, &len);
			if (!now || len != k->meta_len || memcmp(now, k->meta, len))
				fail_msg("the metadata of malformed chunk %s changed", k->rel);
			free(now);
		}
	}
	/* Pairs: the loser is reported and kept too. */
	if (th_file_contains(log, "overlap") != 1 ||
	    th_file_contains(log, "already published") != 1) {
		th_daemon_dump_log(&env.d);
		fail_msg("the log does not report the overlapping chunks and the duplicate id");
	}
	for (size_t i = 0; i < nknown; i++)
		if (known[i].role == ROLE_PAIR && !th_exists(known[i].path))
			fail_msg("conflicting chunk %s was removed", known[i].path);
}

static void check_leftovers_gone(void)
{
	assert_int_equal(th_count_entries(leftovers_staging), 0);
	assert_int_equal(th_count_entries(leftovers_trash), 0);
}

/* ---- tests ---------------------------------------------------------------------------------- */

static void test_first_start(void **state)
{
	chunkd_instance_info in;
	(void)state;
	th_assert_ok(th_env_start(&env, NULL, 20000, &in));
	first_epoch = in.epoch;
	check_leftovers_gone();
	check_catalogue(first_run, &first_run_n);
	assert_int_equal(in.nchunks, first_run_n);
	check_broken_kept(env.d.log);
	print_message("published %zu chunks, skipped %zu malformed entries and %zu conflicts\n",
		      first_run_n, nbroken, npairs);
}

static void test_stop_keeps_catalogue(void **state)
{
	chunkd_client *c;
	chunkd_instance_info in;
	char why[64];
	(void)state;
	if (!th_daemon_running(&env.d))
		th_assert_ok(th_env_start(&env, NULL, 20000, NULL));
	int st = th_daemon_stop(&env.d, 10000);
	if (!th_exited_with(st, 0)) {
		th_daemon_dump_log(&env.d);
		fail_msg("SIGTERM: daemon %s, want exit 0", th_status_str(st, why, sizeof(why)));
	}
	/* The segments stay: a client attaches to the stopped instance and reads it. */
	int r = chunkd_open(env.name, &c);
	if (r)
		fail_msg("chunkd_open after stop: %d (%s): %s", r, chunkd_strerror(r),
			 chunkd_last_error());
	assert_int_equal(chunkd_info(c, &in), 0);
	assert_int_equal(in.state, CHUNKD_STATE_STOPPED);
	assert_int_equal(in.daemon_pid, env.d.pid);
	assert_int_equal(in.daemon_alive, 0);
	assert_int_equal(in.nchunks, first_run_n);
	chunkd_close(c);
	struct seen *now = calloc(MAX_KNOWN, sizeof(*now));
	size_t n = 0;
	assert_non_null(now);
	check_catalogue(now, &n);
	assert_int_equal(n, first_run_n);
	free(now);
}

static void test_restart_same_catalogue(void **state)
{
	chunkd_instance_info in;
	char why[64];
	(void)state;
	if (th_daemon_running(&env.d))
		assert_true(th_exited_with(th_daemon_stop(&env.d, 10000), 0));
	assert_int_equal(make_leftovers("run2"), 0);
	th_assert_ok(th_env_start(&env, NULL, 20000, &in));
	assert_int_equal(in.epoch, first_epoch + 1);
	assert_int_equal(in.state, CHUNKD_STATE_READY);
	check_leftovers_gone();

	struct seen *now = calloc(MAX_KNOWN, sizeof(*now));
	size_t n = 0;
	assert_non_null(now);
	check_catalogue(now, &n);
	assert_int_equal(n, first_run_n);
	for (size_t i = 0; i < n; i++) {
		char a[2 * CHUNKD_ID_SIZE + 1], b[2 * CHUNKD_ID_SIZE + 1];
		th_hex(&first_run[i].id, a);
		th_hex(&now[i].id, b);
		if (strcmp(a, b) || first_run[i].first != now[i].first ||
		    first_run[i].end != now[i].end || strcmp(first_run[i].path, now[i].path))
			fail_msg("entry %zu: first run %s [%" PRIu64 ", %" PRIu64
				 "), restart %s [%" PRIu64 ", %" PRIu64 ")",
				 i, a, first_run[i].first, first_run[i].end, b, now[i].first,
				 now[i].end);
	}
	free(now);
	check_broken_kept(env.d.log);

	/* And once more through a clean stop. */
	int st = th_daemon_stop(&env.d, 10000);
	if (!th_exited_with(st, 0))
		fail_msg("SIGTERM: daemon %s, want exit 0", th_status_str(st, why, sizeof(why)));
	assert_int_equal(th_file_contains(env.d.log, "stopped"), 1);
}

/* Every chunk directory gone while the daemon was down: the restarted daemon adopts the
 * segments, finds none of the published chunks, and drops them all with one index publication
 * for the lot (one per chunk would rewrite the whole index each time: quadratic). */
static void test_restart_all_dirs_gone(void **state)
{
	chunkd_instance_info in;
	char chunks[PATH_MAX];
	(void)state;
	if (th_daemon_running(&env.d))
		assert_true(th_exited_with(th_daemon_stop(&env.d, 10000), 0));
	int64_t before = th_index_flips(env.name);
	assert_true(before > 0);
	snprintf(chunks, sizeof(chunks), "%s/chunks", env.data_dir);
	th_assert_ok(th_rm_rf(chunks));
	th_assert_ok(th_env_start(&env, NULL, 20000, &in));
	assert_int_equal(in.nchunks, 0);
	int64_t after = th_index_flips(env.name);
	print_message("%zu published chunks dropped with %lld index publications\n", first_run_n,
		      (long long)(after - before));
	assert_true(first_run_n > 20);
	assert_true(after - before <= 3);
	assert_true(th_exited_with(th_daemon_stop(&env.d, 10000), 0));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_first_start),
	    cmocka_unit_test(test_stop_keeps_catalogue),
	    cmocka_unit_test(test_restart_same_catalogue),
	    cmocka_unit_test(test_restart_all_dirs_gone),
	};
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
