/*
 * lookup.c — bench-lookup: what a chunkd_find() + chunkd_release() costs, measured against the
 * same look-up in plain private memory and against LMDB, in one run with one query sequence.
 *
 * Methods, all answering "which chunk of dataset D holds block B" for the same queries:
 *
 *   in-process  The shared index's layout and look-up (shm/index.c): the dataset found through
 *               an open-addressing hash of 40-byte entries (the same hash function, seeded),
 *               then a binary search of the dataset's first blocks in a dense u64 array, then
 *               the one 56-byte range entry, in malloc()ed memory, without seqlock, atomics or
 *               pins. This is the floor that chunkd's look-up is measured against.
 *   chunkd      The real client API against a running daemon: chunkd_find() + chunkd_release().
 *   LMDB        One B-tree keyed by dataset (32 bytes) || big-endian first block (8 bytes), the
 *               value end block || chunk id. Look-up: MDB_SET_RANGE on dataset || block + 1, then
 *               MDB_PREV. Three ways to hold the read snapshot:
 *                 txn/lookup    mdb_txn_begin + mdb_cursor_open ... close + abort per look-up:
 *                               the equivalent of chunkd's pin (a snapshot per look-up);
 *                 renew/lookup  one txn handle reused with mdb_txn_reset/renew (and a cursor
 *                               renewed) per look-up: still a snapshot per look-up;
 *                 one txn       a single read txn for the whole pass: no per-look-up snapshot,
 *                               so not equivalent, shown as LMDB's floor.
 *   (previous)  Not chunkd any more: the layout chunkd had before (datasets sorted by id and
 *               binary-searched, then a binary search over the 56-byte range entries), shown to
 *               measure what the current layout buys.
 *
 * The reference index is built from the data dir itself: chunk directory names encode dataset,
 * first block, end block and id (docs/on-disk.md). bench-lookup first checks that the daemon
 * publishes exactly those chunks in the same order (chunkd_list), then runs every query once
 * through every method and aborts on the first result that differs from a brute-force scan
 * (rc, id, range, and for chunkd the chunk path). Timed passes then run the methods in rotating
 * order, each pass over the whole query sequence, and compare a checksum of the results.
 */
#include <dirent.h>
#include <endian.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <lmdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "chunkd.h"
#include "common.h"
#include "shm/layout.h" /* chunkd__idx_hash: the reference hashes like the shared index */

static const char usage[] =
    "Usage: bench-lookup [OPTION]...\n"
    "Measure find+release ns/op of chunkd against an in-process index of the same shape and\n"
    "against LMDB, on the chunks of a running chunkd instance, with one random query sequence.\n"
    "\n"
    "  -n, --name NAME       chunkd instance (default: $CHUNKD_NAME, else \"default\")\n"
    "  -d, --data-dir DIR    data dir to build the reference from (default: the daemon's)\n"
    "  -q, --queries N       queries per pass (default 1000000)\n"
    "  -r, --reps N          timed passes per method, each after an untimed warm-up over a\n"
    "                        fifth of the queries; the table shows the median (default 11)\n"
    "  -s, --seed N          query sequence seed (default 1)\n"
    "  -w, --wait-ms MS      deadline for the daemon to become READY (default 120000)\n"
    "  -t, --tmp DIR         where to create the LMDB environment (default: $TMPDIR or /tmp)\n"
    "      --pairs N         then N adjacent passes of the in-process index and chunkd, the\n"
    "                        order alternating, each after its warm-up: the <= 1.5x target is\n"
    "                        the median of their ratios (default 21)\n"
    "      --only METHOD     after the verification, time only METHOD (ref, chunkd, lmdb-txn,\n"
    "                        lmdb-renew, lmdb-one, previous) and print its figure alone: for\n"
    "                        profiling with perf; no targets are checked\n"
    "      --strict          exit 1 when a target is missed\n"
    "  -h, --help            show this help and exit\n"
    "\n"
    "Targets: chunkd <= 1.5x the in-process index, and >= 5x faster than LMDB with a read txn\n"
    "per look-up. Result rows are also printed as \"ROW<TAB>...\" lines for bench/run.sh.\n"
    "Exit status: 0 done (targets missed too, unless --strict), 1 a target missed with --strict,\n"
    "2 bad usage, 3 set-up failed, 4 wrong result (the message names the query).\n";

#define die(...)                                               \
	do {                                                   \
		fprintf(stderr, "bench-lookup: " __VA_ARGS__); \
		fputc('\n', stderr);                           \
		exit(3);                                       \
	} while (0)

#define wrong(...)                                                           \
	do {                                                                 \
		fprintf(stderr, "bench-lookup: WRONG RESULT: " __VA_ARGS__); \
		fputc('\n', stderr);                                         \
		exit(4);                                                     \
	} while (0)

/* ---- the in-process reference index -------------------------------------------------------- */

/* Same sizes and order as struct chunkd_idx_ds and struct chunkd_idx_range (shm/layout.h). */
struct ref_ds {
	uint64_t id[4];
	uint32_t start;
	uint32_t count;
};

struct ref_range {
	uint64_t first;
	uint64_t end;
	uint32_t slot;
	uint32_t gen;
	uint64_t id[4];
};

_Static_assert(sizeof(struct ref_ds) == 40, "same shape as the shared index's ds entry");
_Static_assert(sizeof(struct ref_range) == 56, "same shape as the shared index's range entry");

struct ref_index {
	struct ref_ds *ds;
	uint32_t nds;
	struct ref_range *ranges;
	uint32_t nranges;
};

/* A chunk found on disk. */
struct entry {
	uint64_t dataset[4];
	uint64_t id[4];
	uint64_t first, end;
};

/* What a look-up answers; compared between methods. */
struct result {
	int rc;
	uint64_t first, end;
	uint64_t id[4];
};

static int id_cmp(const uint64_t a[4], const uint64_t b[4])
{
	for (int i = 0; i < 4; i++)
		if (a[i] != b[i])
			return a[i] < b[i] ? -1 : 1;
	return 0;
}

static int entry_cmp(const void *pa, const void *pb)
{
	const struct entry *a = pa, *b = pb;
	int c = id_cmp(a->dataset, b->dataset);
	if (c)
		return c;
	return a->first < b->first ? -1 : a->first > b->first;
}

/*
 * The look-up of chunkd's previous index layout: a lower bound over the sorted datasets, then
 * the last range with first <= block over the 56-byte range entries. noinline, like a call into
 * libchunkd, so that the compiler cannot hoist work out of the timed loop.
 */
__attribute__((noinline)) static int prev_find(const struct ref_index *x, const uint64_t ds[4],
					       uint64_t block, struct result *out)
{
	uint32_t lo = 0, hi = x->nds;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (id_cmp(ds, x->ds[mid].id) > 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == x->nds || id_cmp(ds, x->ds[lo].id) != 0)
		return -ENOENT;
	uint32_t start = x->ds[lo].start;
	uint32_t count = x->ds[lo].count;
	lo = start;
	hi = start + count;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (x->ranges[mid].first <= block)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == start)
		return -ENOENT;
	const struct ref_range *r = &x->ranges[lo - 1];
	if (block >= r->end)
		return -ENOENT;
	out->first = r->first;
	out->end = r->end;
	memcpy(out->id, r->id, sizeof(out->id));
	return 0;
}

/* The slowest possible answer, to check ref_find: scan the dataset's ranges one by one. */
static int brute_find(const struct ref_index *x, uint32_t dsi, uint64_t block, struct result *out)
{
	const struct ref_ds *d = &x->ds[dsi];
	for (uint32_t i = d->start; i < d->start + d->count; i++) {
		const struct ref_range *r = &x->ranges[i];
		if (r->first <= block && block < r->end) {
			out->first = r->first;
			out->end = r->end;
			memcpy(out->id, r->id, sizeof(out->id));
			return 0;
		}
	}
	return -ENOENT;
}

/*
 * The reference: shm/index.c's layout and look-up (chunkd__idx_find) in private memory. The
 * dataset table is an open-addressing hash of 40-byte entries (id, start, count; count 0 =
 * empty) at most half full, probed linearly from chunkd__idx_hash(); firsts[] holds the ranges'
 * first blocks densely; the range entry is read once at the end.
 */
struct hash_index {
	struct ref_ds *hash;
	uint32_t hmask;
	uint64_t seed;
	uint64_t *firsts; /* ranges[i].first, dense */
	const struct ref_range *ranges;
};

static void hash_build(struct hash_index *p, const struct ref_index *x)
{
	uint32_t cap = 16;
	while (cap < 2 * x->nds)
		cap <<= 1;
	p->hmask = cap - 1;
	p->seed = 0x243F6A8885A308D3ull; /* any value: the daemon picks one per start */
	p->hash = calloc(cap, sizeof(*p->hash));
	p->firsts = calloc(x->nranges ? x->nranges : 1, sizeof(*p->firsts));
	if (!p->hash || !p->firsts)
		die("out of memory");
	for (uint32_t d = 0; d < x->nds; d++) {
		uint32_t h = chunkd__idx_hash(x->ds[d].id, p->seed) & p->hmask;
		while (p->hash[h].count)
			h = (h + 1) & p->hmask;
		p->hash[h] = x->ds[d];
	}
	for (uint32_t i = 0; i < x->nranges; i++)
		p->firsts[i] = x->ranges[i].first;
	p->ranges = x->ranges;
}

__attribute__((noinline)) static int ref_find(const struct hash_index *p, const uint64_t ds[4],
					      uint64_t block, struct result *out)
{
	const struct ref_ds *d = NULL;
	uint32_t h = chunkd__idx_hash(ds, p->seed);
	for (uint32_t k = 0; k <= p->hmask; k++, h++) {
		const struct ref_ds *e = &p->hash[h & p->hmask];
		if (!e->count)
			return -ENOENT;
		if (id_cmp(ds, e->id) == 0) {
			d = e;
			break;
		}
	}
	if (!d)
		return -ENOENT;
	uint32_t lo = d->start, hi = d->start + d->count;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (p->firsts[mid] <= block)
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == d->start)
		return -ENOENT;
	const struct ref_range *r = &p->ranges[lo - 1];
	if (block >= r->end)
		return -ENOENT;
	out->first = r->first;
	out->end = r->end;
	memcpy(out->id, r->id, sizeof(out->id));
	return 0;
}

static int hex_nibble(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* 64 lowercase hex digits to 32 bytes stored into four native words, as the client does. */
static int hex_to_id(const char *s, uint64_t out[4])
{
	uint8_t b[32];
	for (int i = 0; i < 32; i++) {
		int h = hex_nibble(s[2 * i]), l = hex_nibble(s[2 * i + 1]);
		if (h < 0 || l < 0)
			return -1;
		b[i] = (uint8_t)(h << 4 | l);
	}
	memcpy(out, b, sizeof(b));
	return 0;
}

static void id_to_hex(const uint64_t id[4], char out[65])
{
	uint8_t b[32];
	memcpy(b, id, sizeof(b));
	for (int i = 0; i < 32; i++)
		snprintf(out + 2 * i, 3, "%02x", b[i]);
}

static int parse_u64_digits(const char *s, int n, uint64_t *out)
{
	uint64_t v = 0;
	for (int i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9' || v > (UINT64_MAX - 9) / 10)
			return -1;
		v = v * 10 + (uint64_t)(s[i] - '0');
	}
	*out = v;
	return 0;
}

/* "<first:020>-<end:020>-<id-hex>" (docs/on-disk.md). */
static int parse_dir_name(const char *name, struct entry *e)
{
	if (strlen(name) != 20 + 1 + 20 + 1 + 64 || name[20] != '-' || name[41] != '-')
		return -1;
	if (parse_u64_digits(name, 20, &e->first) || parse_u64_digits(name + 21, 20, &e->end) ||
	    hex_to_id(name + 42, e->id) || e->first >= e->end)
		return -1;
	return 0;
}

/* Scan DIR/chunks/<dataset-hex>/<dir name> into a sorted array of entries. */
static struct entry *scan_data_dir(const char *dir, size_t *n)
{
	char path[4096 + 16];
	snprintf(path, sizeof(path), "%s/chunks", dir);
	DIR *top = opendir(path);
	if (!top)
		die("%s: %s", path, strerror(errno));
	struct entry *v = NULL;
	size_t nv = 0, cap = 0;
	struct dirent *de;
	while ((de = readdir(top))) {
		uint64_t ds[4];
		if (strlen(de->d_name) != 64 || hex_to_id(de->d_name, ds))
			continue;
		char sub[4096 + 96];
		if (snprintf(sub, sizeof(sub), "%s/%s", path, de->d_name) >= (int)sizeof(sub))
			die("%s/%s: path too long", path, de->d_name);
		DIR *d = opendir(sub);
		if (!d)
			die("%s: %s", sub, strerror(errno));
		struct dirent *ce;
		while ((ce = readdir(d))) {
			struct entry e;
			if (parse_dir_name(ce->d_name, &e))
				continue;
			memcpy(e.dataset, ds, sizeof(ds));
			if (nv == cap) {
				cap = cap ? 2 * cap : 4096;
				v = realloc(v, cap * sizeof(*v));
				if (!v)
					die("out of memory");
			}
			v[nv++] = e;
		}
		closedir(d);
	}
	closedir(top);
	qsort(v, nv, sizeof(*v), entry_cmp);
	*n = nv;
	return v;
}

static void ref_build(struct ref_index *x, const struct entry *e, size_t n)
{
	x->ranges = calloc(n ? n : 1, sizeof(*x->ranges));
	x->ds = calloc(n ? n : 1, sizeof(*x->ds));
	if (!x->ranges || !x->ds)
		die("out of memory");
	x->nds = 0;
	for (size_t i = 0; i < n; i++) {
		if (i == 0 || id_cmp(e[i].dataset, e[i - 1].dataset) != 0) {
			memcpy(x->ds[x->nds].id, e[i].dataset, sizeof(e[i].dataset));
			x->ds[x->nds].start = (uint32_t)i;
			x->nds++;
		} else if (e[i].first < e[i - 1].end) {
			die("chunks overlap in the data dir (blocks %llu..%llu and %llu..%llu); "
			    "the "
			    "daemon skips one of them, so this data dir cannot be a reference",
			    (unsigned long long)e[i - 1].first, (unsigned long long)e[i - 1].end,
			    (unsigned long long)e[i].first, (unsigned long long)e[i].end);
		}
		x->ds[x->nds - 1].count++;
		struct ref_range *r = &x->ranges[i];
		r->first = e[i].first;
		r->end = e[i].end;
		r->slot = (uint32_t)i;
		r->gen = 1;
		memcpy(r->id, e[i].id, sizeof(r->id));
	}
	x->nranges = (uint32_t)n;
}

/* ---- LMDB ------------------------------------------------------------------------------------ */

struct lmdb_bench {
	char dir[4096];
	MDB_env *env;
	MDB_dbi dbi;
	MDB_txn *rtxn;    /* the renew/lookup handle, reset between look-ups */
	MDB_cursor *rcur; /* its cursor */
};

#define mdb_check(call)                                          \
	do {                                                     \
		int rc_ = (call);                                \
		if (rc_)                                         \
			die("%s: %s", #call, mdb_strerror(rc_)); \
	} while (0)

/* The environment's directory while it exists, so that an exit through die() removes it. */
static char lmdb_dir_to_remove[4096];

static void lmdb_remove_dir(void)
{
	char p[sizeof(lmdb_dir_to_remove) + 16];
	if (!lmdb_dir_to_remove[0])
		return;
	snprintf(p, sizeof(p), "%s/data.mdb", lmdb_dir_to_remove);
	unlink(p);
	snprintf(p, sizeof(p), "%s/lock.mdb", lmdb_dir_to_remove);
	unlink(p);
	rmdir(lmdb_dir_to_remove);
	lmdb_dir_to_remove[0] = '\0';
}

static void lmdb_build(struct lmdb_bench *l, const char *tmp, const struct ref_index *x)
{
	snprintf(l->dir, sizeof(l->dir), "%s/bench-lookup-lmdb.XXXXXX", tmp);
	if (!mkdtemp(l->dir))
		die("mkdtemp %s: %s", l->dir, strerror(errno));
	memcpy(lmdb_dir_to_remove, l->dir, sizeof(lmdb_dir_to_remove));
	atexit(lmdb_remove_dir);
	mdb_check(mdb_env_create(&l->env));
	mdb_check(mdb_env_set_mapsize(l->env, (size_t)1 << 30));
	/* Durability does not matter for a throw-away environment; the read path is unchanged. */
	mdb_check(mdb_env_open(l->env, l->dir, MDB_NOSYNC | MDB_NOMETASYNC, 0600));
	MDB_txn *w;
	mdb_check(mdb_txn_begin(l->env, NULL, 0, &w));
	mdb_check(mdb_dbi_open(w, NULL, 0, &l->dbi));
	for (uint32_t d = 0; d < x->nds; d++) {
		for (uint32_t i = x->ds[d].start; i < x->ds[d].start + x->ds[d].count; i++) {
			const struct ref_range *r = &x->ranges[i];
			uint8_t k[40], v[40];
			uint64_t be = htobe64(r->first);
			memcpy(k, x->ds[d].id, 32);
			memcpy(k + 32, &be, 8);
			memcpy(v, &r->end, 8);
			memcpy(v + 8, r->id, 32);
			MDB_val key = {sizeof(k), k}, val = {sizeof(v), v};
			mdb_check(mdb_put(w, l->dbi, &key, &val, MDB_NOOVERWRITE));
		}
	}
	mdb_check(mdb_txn_commit(w));
	mdb_check(mdb_txn_begin(l->env, NULL, MDB_RDONLY, &l->rtxn));
	mdb_check(mdb_cursor_open(l->rtxn, l->dbi, &l->rcur));
	mdb_txn_reset(l->rtxn);
}

static void lmdb_destroy(struct lmdb_bench *l)
{
	mdb_cursor_close(l->rcur);
	mdb_txn_abort(l->rtxn);
	mdb_env_close(l->env);
	lmdb_remove_dir();
}

/* The chunk of `ds` holding `block` through an open cursor. block < UINT64_MAX. */
static inline int lmdb_find(MDB_cursor *cur, const chunkd_id *ds, uint64_t block,
			    struct result *out)
{
	uint8_t k[40];
	uint64_t be = htobe64(block + 1);
	memcpy(k, ds->bytes, 32);
	memcpy(k + 32, &be, 8);
	MDB_val key = {sizeof(k), k}, val;
	/* The first key >= dataset || block + 1; the entry before it is the last with first <=
	 * block, when it belongs to the same dataset. */
	int rc = mdb_cursor_get(cur, &key, &val, MDB_SET_RANGE);
	if (rc == MDB_NOTFOUND)
		rc = mdb_cursor_get(cur, &key, &val, MDB_LAST);
	else if (rc == 0)
		rc = mdb_cursor_get(cur, &key, &val, MDB_PREV);
	if (rc == MDB_NOTFOUND)
		return -ENOENT;
	if (rc)
		die("mdb_cursor_get: %s", mdb_strerror(rc));
	if (key.mv_size != 40 || val.mv_size != 40 || memcmp(key.mv_data, ds->bytes, 32) != 0)
		return -ENOENT;
	uint64_t end;
	memcpy(&end, val.mv_data, 8);
	if (block >= end)
		return -ENOENT;
	memcpy(&be, (const uint8_t *)key.mv_data + 32, 8);
	out->first = be64toh(be);
	out->end = end;
	memcpy(out->id, (const uint8_t *)val.mv_data + 8, 32);
	return 0;
}

/* A read txn and a cursor per look-up. */
__attribute__((noinline)) static int lmdb_find_txn(struct lmdb_bench *l, const chunkd_id *ds,
						   uint64_t block, struct result *out)
{
	MDB_txn *t;
	MDB_cursor *cur;
	mdb_check(mdb_txn_begin(l->env, NULL, MDB_RDONLY, &t));
	mdb_check(mdb_cursor_open(t, l->dbi, &cur));
	int r = lmdb_find(cur, ds, block, out);
	mdb_cursor_close(cur);
	mdb_txn_abort(t);
	return r;
}

/* One txn handle and cursor, renewed for every look-up. */
__attribute__((noinline)) static int lmdb_find_renew(struct lmdb_bench *l, const chunkd_id *ds,
						     uint64_t block, struct result *out)
{
	mdb_check(mdb_txn_renew(l->rtxn));
	mdb_check(mdb_cursor_renew(l->rtxn, l->rcur));
	int r = lmdb_find(l->rcur, ds, block, out);
	mdb_txn_reset(l->rtxn);
	return r;
}

/* ---- queries and passes --------------------------------------------------------------------- */

struct query {
	uint32_t ds; /* index into the dataset id array */
	uint32_t _pad;
	uint64_t block;
};

enum method { M_REF, M_CHUNKD, M_LMDB_TXN, M_LMDB_RENEW, M_LMDB_ONE, M_PREV, M_COUNT };

static const char *const method_keys[M_COUNT] = {"ref",        "chunkd",   "lmdb-txn",
						 "lmdb-renew", "lmdb-one", "previous"};

static const char *const method_names[M_COUNT] = {
    "in-process index (private memory, no atomics)",
    "chunkd_find + chunkd_release",
    "LMDB, read txn per look-up (begin/abort)",
    "LMDB, txn reset/renew per look-up",
    "LMDB, one read txn for the whole pass",
    "(previous layout) in-process, sorted datasets + 56-byte ranges",
};

struct bench {
	struct ref_index x;
	struct hash_index p; /* the reference, built from x */
	chunkd_id *dsids; /* x.ds[i].id as chunkd ids */
	struct query *q;
	size_t nq;
	chunkd_client *c;
	struct lmdb_bench l;
	char data_dir[PATH_MAX];
};

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

/* A random dataset, and a block uniform over [its first chunk's first, its last chunk's end):
 * queries hit except in the gaps between chunks, which the generator leaves at random. */
static void make_queries(struct bench *b, uint64_t seed)
{
	b->q = calloc(b->nq, sizeof(*b->q));
	if (!b->q)
		die("out of memory for %zu queries", b->nq);
	for (size_t i = 0; i < b->nq; i++) {
		uint32_t d = (uint32_t)(splitmix64(&seed) % b->x.nds);
		const struct ref_ds *ds = &b->x.ds[d];
		uint64_t lo = b->x.ranges[ds->start].first;
		uint64_t hi = b->x.ranges[ds->start + ds->count - 1].end;
		b->q[i].ds = d;
		b->q[i].block = lo + splitmix64(&seed) % (hi - lo);
	}
}

/* What the timed passes accumulate so that the compiler keeps every look-up, and so that the
 * methods can be compared pass by pass. */
static inline uint64_t mix(uint64_t sum, uint64_t first, uint64_t id0)
{
	return (sum ^ (first + id0)) * 0x100000001B3ull;
}

/* One timed pass of method m over the first nq queries. Returns ns; *sum and *hits receive the
 * result digest. */
static uint64_t run_pass(struct bench *b, enum method m, size_t nq, uint64_t *sum, size_t *hits)
{
	uint64_t s = 0;
	size_t h = 0;
	struct result res;
	chunkd_ref ref;
	MDB_txn *t = NULL;
	MDB_cursor *cur = NULL;

	if (m == M_LMDB_ONE) {
		mdb_check(mdb_txn_begin(b->l.env, NULL, MDB_RDONLY, &t));
		mdb_check(mdb_cursor_open(t, b->l.dbi, &cur));
	}
	uint64_t t0 = bench_now_ns();
	switch (m) {
	case M_REF:
		for (size_t i = 0; i < nq; i++) {
			if (ref_find(&b->p, b->x.ds[b->q[i].ds].id, b->q[i].block, &res) == 0) {
				s = mix(s, res.first, res.id[0]);
				h++;
			}
		}
		break;
	case M_CHUNKD:
		for (size_t i = 0; i < nq; i++) {
			int r = chunkd_find(b->c, &b->dsids[b->q[i].ds], b->q[i].block, &ref);
			if (r == 0) {
				uint64_t id0;
				memcpy(&id0, ref.id.bytes, 8);
				s = mix(s, ref.first_block, id0);
				h++;
				chunkd_release(b->c, &ref);
			} else if (r != -ENOENT) {
				die("chunkd_find: %s", chunkd_strerror(r));
			}
		}
		break;
	case M_LMDB_TXN:
		for (size_t i = 0; i < nq; i++) {
			if (lmdb_find_txn(&b->l, &b->dsids[b->q[i].ds], b->q[i].block, &res) == 0) {
				s = mix(s, res.first, res.id[0]);
				h++;
			}
		}
		break;
	case M_LMDB_RENEW:
		for (size_t i = 0; i < nq; i++) {
			if (lmdb_find_renew(&b->l, &b->dsids[b->q[i].ds], b->q[i].block, &res) ==
			    0) {
				s = mix(s, res.first, res.id[0]);
				h++;
			}
		}
		break;
	case M_LMDB_ONE:
		for (size_t i = 0; i < nq; i++) {
			if (lmdb_find(cur, &b->dsids[b->q[i].ds], b->q[i].block, &res) == 0) {
				s = mix(s, res.first, res.id[0]);
				h++;
			}
		}
		break;
	case M_PREV:
		for (size_t i = 0; i < nq; i++) {
			if (prev_find(&b->x, b->x.ds[b->q[i].ds].id, b->q[i].block, &res) == 0) {
				s = mix(s, res.first, res.id[0]);
				h++;
			}
		}
		break;
	case M_COUNT:
		break;
	}
	uint64_t ns = bench_now_ns() - t0;
	if (cur) {
		mdb_cursor_close(cur);
		mdb_txn_abort(t);
	}
	*sum = s;
	*hits = h;
	return ns;
}

static void same_result(size_t i, const char *what, const struct result *want, int rc,
			const struct result *got)
{
	if (rc != want->rc)
		wrong("query %zu: %s returned %d, the reference %d", i, what, rc, want->rc);
	if (rc == 0 &&
	    (got->first != want->first || got->end != want->end || id_cmp(got->id, want->id) != 0))
		wrong("query %zu: %s found blocks [%llu, %llu), the reference [%llu, %llu) (or the "
		      "ids differ)",
		      i, what, (unsigned long long)got->first, (unsigned long long)got->end,
		      (unsigned long long)want->first, (unsigned long long)want->end);
}

/* Every query once through every method, compared with a brute-force scan. Returns hits. */
static size_t verify_all(struct bench *b)
{
	size_t hits = 0;
	char path[4096 + 256], hex[65 + 8], dshex[65 + 8];
	struct result want, got;
	for (size_t i = 0; i < b->nq; i++) {
		const struct query *q = &b->q[i];
		const chunkd_id *ds = &b->dsids[q->ds];
		want.rc = brute_find(&b->x, q->ds, q->block, &want);
		hits += want.rc == 0;

		int rc = ref_find(&b->p, b->x.ds[q->ds].id, q->block, &got);
		same_result(i, "the in-process index", &want, rc, &got);
		rc = prev_find(&b->x, b->x.ds[q->ds].id, q->block, &got);
		same_result(i, "the previous in-process layout", &want, rc, &got);
		rc = lmdb_find_txn(&b->l, ds, q->block, &got);
		same_result(i, "LMDB (txn per look-up)", &want, rc, &got);
		rc = lmdb_find_renew(&b->l, ds, q->block, &got);
		same_result(i, "LMDB (reset/renew)", &want, rc, &got);

		chunkd_ref ref;
		rc = chunkd_find(b->c, ds, q->block, &ref);
		if (rc != 0 && rc != -ENOENT)
			die("chunkd_find: %s", chunkd_strerror(rc));
		if (rc == 0) {
			got.first = ref.first_block;
			got.end = ref.end_block;
			memcpy(got.id, ref.id.bytes, sizeof(got.id));
		}
		same_result(i, "chunkd_find", &want, rc, &got);
		if (rc == 0) {
			if (memcmp(ref.dataset.bytes, ds->bytes, sizeof(ds->bytes)) != 0)
				wrong("query %zu: chunkd_find returned another dataset", i);
			id_to_hex(want.id, hex);
			id_to_hex(b->x.ds[q->ds].id, dshex);
			snprintf(path, sizeof(path), "%s/chunks/%s/%020llu-%020llu-%s", b->data_dir,
				 dshex, (unsigned long long)want.first,
				 (unsigned long long)want.end, hex);
			if (!ref.path || strcmp(ref.path, path) != 0)
				wrong("query %zu: chunkd_find's path is %s, expected %s", i,
				      ref.path ? ref.path : "NULL", path);
			chunkd_release(b->c, &ref);
		}
	}
	/* LMDB gives a thread one read txn at a time (its reader slot is thread-local), so the
	 * long txn is checked in a loop of its own. */
	MDB_txn *t;
	MDB_cursor *cur;
	mdb_check(mdb_txn_begin(b->l.env, NULL, MDB_RDONLY, &t));
	mdb_check(mdb_cursor_open(t, b->l.dbi, &cur));
	for (size_t i = 0; i < b->nq; i++) {
		const struct query *q = &b->q[i];
		want.rc = ref_find(&b->p, b->x.ds[q->ds].id, q->block, &want);
		int rc = lmdb_find(cur, &b->dsids[q->ds], q->block, &got);
		same_result(i, "LMDB (one txn)", &want, rc, &got);
	}
	mdb_cursor_close(cur);
	mdb_txn_abort(t);
	return hits;
}

/* The daemon must publish exactly the reference's chunks, in the same order. */
static void check_published(struct bench *b)
{
	size_t n = 0;
	int r = chunkd_list(b->c, NULL, 0, &n);
	if (r < 0)
		die("chunkd_list: %s", chunkd_strerror(r));
	chunkd_id *ids = calloc(n ? n : 1, sizeof(*ids));
	if (!ids)
		die("out of memory");
	size_t m = 0;
	r = chunkd_list(b->c, ids, n, &m);
	if (r < 0)
		die("chunkd_list: %s", chunkd_strerror(r));
	if (m != b->x.nranges)
		die("the daemon publishes %zu chunks, the data dir %s has %u well-named ones", m,
		    b->data_dir, b->x.nranges);
	for (size_t i = 0; i < m; i++)
		if (memcmp(ids[i].bytes, b->x.ranges[i].id, CHUNKD_ID_SIZE) != 0)
			wrong(
			    "chunkd_list entry %zu differs from the data dir's chunk in that place "
			    "of (dataset, first block) order",
			    i);
	free(ids);
}

static int parse_size(const char *opt, const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || v < min || v > max) {
		fprintf(stderr, "bench-lookup: %s: '%s' is not a number in [%llu, %llu]\n", opt, s,
			(unsigned long long)min, (unsigned long long)max);
		return -1;
	}
	*out = v;
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"name", required_argument, NULL, 'n'},
	    {"data-dir", required_argument, NULL, 'd'},
	    {"queries", required_argument, NULL, 'q'},
	    {"reps", required_argument, NULL, 'r'},
	    {"seed", required_argument, NULL, 's'},
	    {"wait-ms", required_argument, NULL, 'w'},
	    {"tmp", required_argument, NULL, 't'},
	    {"strict", no_argument, NULL, 'S'},
	    {"only", required_argument, NULL, 'O'},
	    {"pairs", required_argument, NULL, 'P'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *name = NULL, *data_dir = NULL, *tmp = getenv("TMPDIR");
	uint64_t nq = 1000000, reps = 11, seed = 1, wait_ms = 120000, pairs = 21;
	int strict = 0, only = -1, missed = 0, c;

	while ((c = getopt_long(argc, argv, "n:d:q:r:s:w:t:h", opts, NULL)) != -1) {
		switch (c) {
		case 'n':
			name = optarg;
			break;
		case 'd':
			data_dir = optarg;
			break;
		case 'q':
			if (parse_size("--queries", optarg, 1, 1ull << 30, &nq))
				return 2;
			break;
		case 'r':
			if (parse_size("--reps", optarg, 1, 1000, &reps))
				return 2;
			break;
		case 's':
			if (parse_size("--seed", optarg, 0, UINT64_MAX, &seed))
				return 2;
			break;
		case 'w':
			if (parse_size("--wait-ms", optarg, 0, 86400000, &wait_ms))
				return 2;
			break;
		case 't':
			tmp = optarg;
			break;
		case 'S':
			strict = 1;
			break;
		case 'P':
			if (parse_size("--pairs", optarg, 1, 1000, &pairs))
				return 2;
			break;
		case 'O':
			for (int m = 0; m < M_COUNT; m++)
				if (strcmp(optarg, method_keys[m]) == 0)
					only = m;
			if (only < 0) {
				fprintf(stderr, "bench-lookup: --only: unknown method '%s'\n",
					optarg);
				return 2;
			}
			break;
		case 'h':
			fputs(usage, stdout);
			return 0;
		default:
			fputs("Try 'bench-lookup --help'.\n", stderr);
			return 2;
		}
	}
	if (optind < argc) {
		fprintf(stderr,
			"bench-lookup: unexpected argument '%s'\nTry 'bench-lookup --help'.\n",
			argv[optind]);
		return 2;
	}
	if (!tmp || !*tmp)
		tmp = "/tmp";

	struct bench b;
	memset(&b, 0, sizeof(b));
	b.nq = nq;
	chunkd_instance_info info;
	int r = bench_wait_ready(name, 1000000, bench_now_ns() + wait_ms * 1000000ull, &b.c, &info,
				 NULL, NULL);
	if (r < 0)
		die("instance '%s' not READY within %llu ms: %s", name ? name : "(default)",
		    (unsigned long long)wait_ms, chunkd_strerror(r));
	/* The daemon stores the real path of its data dir, and chunk paths below it. */
	if (!realpath(data_dir ? data_dir : info.data_dir, b.data_dir))
		die("%s: %s", data_dir ? data_dir : info.data_dir, strerror(errno));

	size_t ne;
	struct entry *e = scan_data_dir(b.data_dir, &ne);
	if (ne == 0)
		die("no chunk directories in %s/chunks", b.data_dir);
	ref_build(&b.x, e, ne);
	free(e);
	b.dsids = calloc(b.x.nds, sizeof(*b.dsids));
	if (!b.dsids)
		die("out of memory");
	for (uint32_t i = 0; i < b.x.nds; i++)
		memcpy(b.dsids[i].bytes, b.x.ds[i].id, CHUNKD_ID_SIZE);
	check_published(&b);
	hash_build(&b.p, &b.x);
	lmdb_build(&b.l, tmp, &b.x);
	make_queries(&b, seed);

	printf("bench-lookup: instance '%s' (daemon pid %d), %u chunks in %u datasets from %s\n",
	       name ? name : "(default)", (int)info.daemon_pid, b.x.nranges, b.x.nds, b.data_dir);
	fflush(stdout);
	size_t hits = verify_all(&b);
	double hit_pct = 100.0 * (double)hits / (double)b.nq;
	printf("verified: %zu queries through all %d methods agree with a brute-force scan "
	       "(%zu hits = %.2f%%, chunk paths checked)\n",
	       b.nq, M_COUNT, hits, hit_pct);

	double *ns[M_COUNT];
	for (int m = 0; m < M_COUNT; m++) {
		ns[m] = calloc(reps, sizeof(double));
		if (!ns[m])
			die("out of memory");
	}
	if (only >= 0) {
		for (uint64_t rep = 0; rep < reps; rep++) {
			uint64_t sum;
			size_t h;
			ns[0][rep] =
			    (double)run_pass(&b, (enum method)only, b.nq, &sum, &h) / (double)b.nq;
		}
		printf("%s: %.1f ns/op (median of %llu passes)\n", method_names[only],
		       bench_median(ns[0], reps), (unsigned long long)reps);
		goto out;
	}
	/* Rotate the order of the methods from one repetition to the next, so that drift on the
	 * machine (other load, frequency) spreads over all of them. */
	size_t warm = b.nq / 5;
	for (uint64_t rep = 0; rep < reps; rep++) {
		uint64_t want_sum = 0;
		size_t want_hits = 0;
		for (int k = 0; k < M_COUNT; k++) {
			enum method m = (enum method)((rep + (uint64_t)k) % M_COUNT);
			uint64_t sum;
			size_t h;
			/* Warm up: the previous method's data (the reference's private copy is as
			 * large as the shared index) has pushed this one's out of the caches. Without
			 * this, the method after the reference in the rotation paid for it. */
			run_pass(&b, m, warm, &sum, &h);
			uint64_t t = run_pass(&b, m, b.nq, &sum, &h);
			ns[m][rep] = (double)t / (double)b.nq;
			if (k == 0) {
				want_sum = sum;
				want_hits = h;
			} else if (sum != want_sum || h != want_hits) {
				wrong("timed pass %llu: %s disagrees with %s (digest or hit count)",
				      (unsigned long long)rep, method_names[m],
				      method_names[(rep) % M_COUNT]);
			}
		}
	}

	/*
	 * The 1.5x target compares two passes of ~0.1 s each, but a repetition of the rotation
	 * above spreads six methods (the LMDB ones ~0.7 s each) over a few seconds, and on a shared
	 * VM the machine's speed drifts on that scale: the same build measured 1.44x and 1.72x in
	 * consecutive runs. So the target gets pairs of its own: the reference and chunkd back to
	 * back, each after its warm-up, the order alternating so that neither always goes first.
	 */
	double *pair = calloc(pairs, sizeof(double));
	if (!pair)
		die("out of memory");
	for (uint64_t k = 0; k < pairs; k++) {
		double t[2];
		uint64_t sums[2];
		size_t hs[2];
		for (int j = 0; j < 2; j++) {
			enum method m = ((k + (uint64_t)j) & 1) ? M_CHUNKD : M_REF;
			uint64_t sum;
			size_t h;
			run_pass(&b, m, warm, &sum, &h);
			t[m == M_CHUNKD] = (double)run_pass(&b, m, b.nq, &sums[j], &hs[j]);
		}
		if (sums[0] != sums[1] || hs[0] != hs[1])
			wrong("pair %llu: chunkd and the in-process index disagree (digest or hit "
			      "count)",
			      (unsigned long long)k);
		pair[k] = t[1] / t[0];
	}
	double ratio = bench_median(pair, pairs); /* sorts pair[] */
	double pq1 = pair[pairs / 4], pq3 = pair[(3 * pairs) / 4];
	free(pair);

	/*
	 * Ratios are taken per repetition, where the passes of both methods ran within a few
	 * seconds of each other, and their median is reported: a burst of load from elsewhere on
	 * the machine slows both passes of a repetition rather than skewing the ratio.
	 */
	double rel[M_COUNT], med[M_COUNT], lo[M_COUNT], hi[M_COUNT];
	double *pr = calloc(reps, sizeof(double));
	if (!pr)
		die("out of memory");
	double rq1 = 0, rq3 = 0;
	for (int m = 0; m < M_COUNT; m++) {
		for (uint64_t rep = 0; rep < reps; rep++)
			pr[rep] = ns[m][rep] / ns[M_REF][rep];
		rel[m] = bench_median(pr, reps);
		if (m == M_CHUNKD) { /* how much it moved between repetitions (pr is sorted now) */
			rq1 = pr[reps / 4];
			rq3 = pr[(3 * reps) / 4];
		}
	}
	for (uint64_t rep = 0; rep < reps; rep++)
		pr[rep] = ns[M_LMDB_TXN][rep] / ns[M_CHUNKD][rep];
	double speedup = bench_median(pr, reps);
	for (uint64_t rep = 0; rep < reps; rep++)
		pr[rep] = ns[M_LMDB_RENEW][rep] / ns[M_CHUNKD][rep];
	double speedup_renew = bench_median(pr, reps);
	free(pr);
	for (int m = 0; m < M_COUNT; m++) {
		lo[m] = bench_min(ns[m], reps);
		hi[m] = bench_max(ns[m], reps);
		med[m] = bench_median(ns[m], reps);
	}

	printf("\n%zu random queries per pass (%.2f%% hit), %llu passes per method; ns per find "
	       "(+ release); ratios are medians of per-pass ratios\n",
	       b.nq, hit_pct, (unsigned long long)reps);
	printf("%-54s %8s %8s %8s %14s\n", "method", "median", "min", "max", "vs in-process");
	for (int m = 0; m < M_COUNT; m++)
		printf("%-54s %8.1f %8.1f %8.1f %13.2fx\n", method_names[m], med[m], lo[m], hi[m],
		       rel[m]);

	int pass_ratio = ratio <= 1.5, pass_speedup = speedup >= 5.0;
	missed = strict && !(pass_ratio && pass_speedup);
	printf("\ntarget: chunkd <= 1.5x in-process:                   %5.2fx        %s\n", ratio,
	       pass_ratio ? "PASS" : "MISS");
	printf("target: chunkd >= 5x faster than LMDB txn/look-up:   %5.2fx faster %s\n", speedup,
	       pass_speedup ? "PASS" : "MISS");
	printf("info:   chunkd vs in-process, %llu pairs, quartiles:      %.2fx to %.2fx\n",
	       (unsigned long long)pairs, pq1, pq3);
	printf("info:   chunkd vs in-process in the rotation: %.2fx, quartiles %.2fx to %.2fx\n",
	       rel[M_CHUNKD], rq1, rq3);
	printf("info:   chunkd vs LMDB reset/renew per look-up:      %5.2fx faster\n\n",
	       speedup_renew);

	char v[160], rt[32], what[160];
	snprintf(v, sizeof(v), "%u chunks, %u datasets; %zu queries, %.2f%% hit; median of %llu",
		 b.x.nranges, b.x.nds, b.nq, hit_pct, (unsigned long long)reps);
	bench_row("lookup", "set-up", v, NULL, NULL, NULL);
	for (int m = 0; m < M_COUNT; m++) {
		snprintf(v, sizeof(v), "%.1f ns/op", med[m]);
		snprintf(rt, sizeof(rt), "%.2fx", rel[m]);
		bench_row("lookup", method_names[m], v, rt, m == M_REF ? "reference" : NULL, NULL);
	}
	snprintf(v, sizeof(v), "%.2fx in-process (median of %llu adjacent pairs)", ratio,
		 (unsigned long long)pairs);
	bench_row("lookup", "target: chunkd vs in-process", v, NULL, "<= 1.5x",
		  pass_ratio ? "PASS" : "MISS");
	snprintf(v, sizeof(v), "%.2fx faster", speedup);
	snprintf(what, sizeof(what), "target: chunkd vs %s", method_names[M_LMDB_TXN]);
	bench_row("lookup", what, v, NULL, ">= 5x faster", pass_speedup ? "PASS" : "MISS");
	snprintf(v, sizeof(v), "%.2fx faster", speedup_renew);
	snprintf(what, sizeof(what), "chunkd vs %s", method_names[M_LMDB_RENEW]);
	bench_row("lookup", what, v, NULL, NULL, NULL);

out:
	for (int m = 0; m < M_COUNT; m++)
		free(ns[m]);
	lmdb_destroy(&b.l);
	chunkd_close(b.c);
	free(b.q);
	free(b.dsids);
	free(b.p.hash);
	free(b.p.firsts);
	free(b.x.ds);
	free(b.x.ranges);
	return missed;
}
