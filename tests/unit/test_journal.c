/*
 * test_journal.c — the request journal (daemon/journal.c; docs/journal.md).
 *
 * Every test runs in its own mkdtemp() directory and holds the journal to a model: the list of
 * records appended, in order, and per chunk id the last one (minus the forgotten ones while they
 * are forgotten). Replay must give back exactly the appended sequence, field by field and file
 * name by file name; the live index must equal the model. Crashes are simulated three ways:
 * by cutting or damaging the file as a crash or bad media would, by building the on-disk states a
 * crash inside compaction can leave, and by running compaction in a child process that a fault
 * hook kills (_exit) just before each of its steps. A last test measures replay speed and prints
 * it; speed is reported, never asserted.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "journal.h"
#include "meta.h"

#define HDR_LEN 24u /* the file header, as docs/journal.md draws it */
#define REC_HDR 72u /* a DELETE record */

/* ---- randomness: xorshift64*, deterministic per seed ----------------------------------------- */

static uint64_t rnd_next(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 2685821657736338717ull;
}

static uint64_t g_rs = 0x853c49e6748fea9bull;

static uint64_t rnd(void)
{
	return rnd_next(&g_rs);
}

/* ---- a temporary data directory per test ----------------------------------------------------- */

struct env {
	char dir[4096];
	int dirfd;
};

static int setup(void **state)
{
	struct env *e = calloc(1, sizeof(*e));
	if (!e)
		return -1;
	const char *tmp = getenv("TMPDIR");
	snprintf(e->dir, sizeof(e->dir), "%s/chunkd-journal-XXXXXX", tmp ? tmp : "/tmp");
	if (!mkdtemp(e->dir))
		return -1;
	e->dirfd = open(e->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (e->dirfd < 0)
		return -1;
	*state = e;
	return 0;
}

static int teardown(void **state)
{
	struct env *e = *state;
	DIR *d = fdopendir(dup(e->dirfd));
	struct dirent *de;
	while (d && (de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			if (unlinkat(e->dirfd, de->d_name, 0) < 0)
				unlinkat(e->dirfd, de->d_name, AT_REMOVEDIR);
	if (d)
		closedir(d);
	close(e->dirfd);
	rmdir(e->dir);
	free(e);
	return 0;
}

static off_t file_size(int dirfd, const char *name)
{
	struct stat sb;
	if (fstatat(dirfd, name, &sb, AT_SYMLINK_NOFOLLOW) < 0)
		return -1;
	return sb.st_size;
}

/* Read a whole file into a malloc()ed buffer; *len its size. */
static uint8_t *slurp(int dirfd, const char *name, size_t *len)
{
	int fd = openat(dirfd, name, O_RDONLY | O_CLOEXEC);
	assert_true(fd >= 0);
	struct stat sb;
	assert_int_equal(fstat(fd, &sb), 0);
	uint8_t *p = malloc((size_t)sb.st_size + 1);
	assert_non_null(p);
	assert_int_equal(pread(fd, p, (size_t)sb.st_size, 0), sb.st_size);
	close(fd);
	*len = (size_t)sb.st_size;
	return p;
}

/* Replace a file's content with len bytes. */
static void spit(int dirfd, const char *name, const void *p, size_t len)
{
	int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	assert_true(fd >= 0);
	assert_int_equal(pwrite(fd, p, len, 0), (ssize_t)len);
	close(fd);
}

static int exists(int dirfd, const char *name)
{
	return faccessat(dirfd, name, F_OK, AT_SYMLINK_NOFOLLOW) == 0;
}

/* ---- random descriptors, regenerated from a seed --------------------------------------------- */

/*
 * A random, valid file name: any byte but NUL, '/' and '\n' (spaces and non-UTF-8 included), 1 to
 * 24 bytes, one in 16 up to the 255-byte limit (`big` only).
 */
static size_t gen_name(uint64_t *s, char *out, int big)
{
	for (;;) {
		size_t n = big && rnd_next(s) % 16 == 0 ? 1 + rnd_next(s) % CHUNKD_MAX_NAME
							: 1 + rnd_next(s) % 24;
		for (size_t i = 0; i < n; i++) {
			char c;
			do
				c = (char)(1 + rnd_next(s) % 255);
			while (c == '/' || c == '\n');
			out[i] = c;
		}
		out[n] = '\0';
		if (chunkd__check_file_name(out, n) == 0)
			return n;
	}
}

/* A random, valid URL: a scheme and printable ASCII, one in 32 up to the 4096-byte limit. */
static void gen_url(uint64_t *s, char *out, int big)
{
	static const char *const schemes[] = {"http://", "https://", "s3://", "file://"};
	const char *sch = schemes[rnd_next(s) % 4];
	size_t sl = strlen(sch);
	size_t n = big && rnd_next(s) % 32 == 0 ? 1 + rnd_next(s) % (CHUNKD_MAX_URL - sl)
						: 1 + rnd_next(s) % 100;
	memcpy(out, sch, sl);
	for (size_t i = 0; i < n; i++)
		out[sl + i] = (char)(0x21 + rnd_next(s) % (0x7f - 0x21));
	out[sl + n] = '\0';
}

/* The descriptor of seed `seed` for chunk `id`: same seed, same descriptor. */
static void gen_dl(uint64_t seed, const uint64_t id[4], uint64_t ticket, int big,
		   struct chunkd_dl *dl)
{
	uint64_t s = seed | 1;
	dl->ticket = ticket;
	memcpy(dl->id, id, 32);
	for (int i = 0; i < 4; i++)
		dl->dataset[i] = rnd_next(&s);
	dl->first_block = rnd_next(&s) >> 1;
	dl->end_block = dl->first_block + 1 + rnd_next(&s) % 100000;
	dl->nfiles = big && rnd_next(&s) % 32 == 0 ? 1 + rnd_next(&s) % CHUNKD_MAX_FILES
						   : 1 + rnd_next(&s) % 6;
	for (uint32_t i = 0; i < dl->nfiles; i++) {
		size_t n;
		int dup;
		do {
			n = gen_name(&s, dl->files[i].name, big);
			dup = 0;
			for (uint32_t k = 0; k < i; k++)
				dup |= !strcmp(dl->files[k].name, dl->files[i].name);
		} while (dup);
		(void)n;
		gen_url(&s, dl->files[i].url, big);
	}
}

static uint32_t dl_size(const struct chunkd_dl *dl)
{
	size_t n = 124;
	for (uint32_t i = 0; i < dl->nfiles; i++)
		n += 4 + strlen(dl->files[i].name) + strlen(dl->files[i].url);
	return (uint32_t)((n + 7) & ~(size_t)7);
}

/* ---- the model ------------------------------------------------------------------------------- */

struct mrec {
	uint32_t type;
	uint32_t client;
	uint64_t ts, owner, ticket, seed;
	uint64_t id[4];
	uint32_t pool; /* index of the id in the model's pool */
	uint32_t size; /* the record's length in the file */
	int big;
};

/* model_append() draws DOWNLOAD descriptors until their record is at least this long. */
static uint32_t g_min_size;

struct model {
	uint32_t npool;
	uint64_t (*ids)[4];
	long *last;     /* per pool id: index in recs of its last record, -1 none */
	int *forgotten; /* per pool id: forgotten since its last record */
	struct mrec *recs;
	size_t n, cap;
	struct chunkd_dl *dl; /* scratch */
};

/*
 * A pool of ids, including the shapes a weak hash would choke on: ids that differ in one word
 * only, and counters in the last word of otherwise zero ids.
 */
static void model_init(struct model *m, uint32_t npool)
{
	memset(m, 0, sizeof(*m));
	m->npool = npool;
	m->ids = calloc(npool, sizeof(*m->ids));
	m->last = malloc(npool * sizeof(*m->last));
	m->forgotten = calloc(npool, sizeof(*m->forgotten));
	m->dl = malloc(sizeof(*m->dl));
	assert_true(m->ids && m->last && m->forgotten && m->dl);
	for (uint32_t i = 0; i < npool; i++) {
		m->last[i] = -1;
		switch (i % 3) {
		case 0:
			for (int w = 0; w < 4; w++)
				m->ids[i][w] = rnd();
			break;
		case 1:
			m->ids[i][3] = i;
			break;
		default:
			m->ids[i][0] = 0x1111111111111111ull;
			m->ids[i][1] = i;
			m->ids[i][2] = 0x2222222222222222ull;
			break;
		}
	}
}

static void model_free(struct model *m)
{
	free(m->ids);
	free(m->last);
	free(m->forgotten);
	free(m->recs);
	free(m->dl);
}

/* Append a random record for pool id p to the journal and to the model. */
static void model_append(struct chunkd_journal *j, struct model *m, uint32_t p, uint32_t type,
			 int big)
{
	if (m->n == m->cap) {
		m->cap = m->cap ? m->cap * 2 : 1024;
		m->recs = realloc(m->recs, m->cap * sizeof(*m->recs));
		assert_non_null(m->recs);
	}
	struct mrec *r = &m->recs[m->n];
	memset(r, 0, sizeof(*r));
	r->type = type;
	r->client = (uint32_t)rnd();
	r->ts = rnd() | 1;
	r->owner = rnd();
	r->ticket = rnd();
	r->seed = rnd();
	if (type == CHUNKD_JREC_DOWNLOAD)
		for (;;) {
			gen_dl(r->seed, m->ids[p], r->ticket, big, m->dl);
			if (dl_size(m->dl) >= g_min_size)
				break;
			r->seed = rnd();
		}
	r->pool = p;
	r->big = big;
	memcpy(r->id, m->ids[p], 32);
	struct chunkd_jrec jr = {.type = type,
				 .ts_ns = r->ts,
				 .client = r->client,
				 .owner = r->owner,
				 .ticket = r->ticket};
	memcpy(jr.id, r->id, 32);
	r->size = REC_HDR;
	if (type == CHUNKD_JREC_DOWNLOAD) {
		gen_dl(r->seed, r->id, r->ticket, big, m->dl);
		jr.dl = m->dl;
		r->size = dl_size(m->dl);
	}
	assert_int_equal(chunkd__journal_append(j, &jr), 0);
	m->last[p] = (long)m->n;
	m->forgotten[p] = 0;
	m->n++;
}

static void model_forget(struct chunkd_journal *j, struct model *m, uint32_t p)
{
	chunkd__journal_forget(j, m->ids[p]);
	m->forgotten[p] = 1;
}

/* Does the replayed record r equal the model record e? */
static int rec_equal(const struct chunkd_jrec *r, const struct mrec *e, struct chunkd_dl *tmp)
{
	if (r->type != e->type || r->ts_ns != e->ts || r->client != e->client ||
	    r->owner != e->owner || r->ticket != e->ticket || memcmp(r->id, e->id, 32))
		return 0;
	if (r->type == CHUNKD_JREC_DELETE)
		return r->dl == NULL;
	const struct chunkd_dl *d = r->dl;
	if (!d)
		return 0;
	gen_dl(e->seed, e->id, e->ticket, e->big, tmp);
	if (d->ticket != tmp->ticket || memcmp(d->id, tmp->id, 32) ||
	    memcmp(d->dataset, tmp->dataset, 32) || d->first_block != tmp->first_block ||
	    d->end_block != tmp->end_block || d->nfiles != tmp->nfiles)
		return 0;
	for (uint32_t i = 0; i < d->nfiles; i++)
		if (strcmp(d->files[i].name, tmp->files[i].name) ||
		    strcmp(d->files[i].url, tmp->files[i].url))
			return 0;
	return 1;
}

/* Replay context: compares each replayed record with the expected sequence. */
struct rctx {
	const struct mrec *const *exp; /* expected records, in order */
	size_t nexp;
	size_t seen;
	long first_bad; /* index of the first mismatch, -1 none */
	long abort_at;  /* return -ECANCELED at this record, -1 never */
	struct chunkd_dl *tmp;
};

static int on_replay(const struct chunkd_jrec *r, void *arg)
{
	struct rctx *c = arg;
	if ((long)c->seen == c->abort_at)
		return -ECANCELED;
	if (c->first_bad < 0 && (c->seen >= c->nexp || !rec_equal(r, c->exp[c->seen], c->tmp)))
		c->first_bad = (long)c->seen;
	c->seen++;
	return 0;
}

/* Expected replay sequence: the model's records [from, to). Free with free(). */
static const struct mrec **seq_of(const struct model *m, size_t from, size_t to)
{
	const struct mrec **v = malloc((to - from + 1) * sizeof(*v));
	assert_non_null(v);
	for (size_t i = from; i < to; i++)
		v[i - from] = &m->recs[i];
	return v;
}

/* Open the journal, expecting the replay to give exactly `exp` (n records). */
static struct chunkd_journal *open_expect(int dirfd, const struct mrec *const *exp, size_t n,
					  struct chunkd_journal_stats *st)
{
	struct chunkd_journal *j = NULL;
	struct chunkd_journal_stats dummy;
	struct rctx c = {.exp = exp, .nexp = n, .first_bad = -1, .abort_at = -1};
	c.tmp = malloc(sizeof(*c.tmp));
	assert_non_null(c.tmp);
	if (!st)
		st = &dummy;
	int rc = chunkd__journal_open(dirfd, &j, on_replay, &c, st);
	free(c.tmp);
	assert_int_equal(rc, 0);
	assert_int_equal(c.first_bad, -1);
	assert_int_equal(c.seen, n);
	assert_int_equal(st->records, n);
	return j;
}

/*
 * The live index must equal the model: per pool id, present iff the model has a last record and
 * (when `honour_forget`) it is not forgotten, with that record's type, timestamp and size; and
 * the bytes at its offset (when on disk) must be that record. No other id may be live.
 */
static void check_live(struct chunkd_journal *j, const struct model *m, int honour_forget)
{
	int fd = chunkd__journal_fd(j);
	struct stat sb;
	assert_int_equal(fstat(fd, &sb), 0);
	uint8_t *buf = malloc(300 * 1024);
	assert_non_null(buf);
	uint64_t count = 0;
	for (uint32_t p = 0; p < m->npool; p++) {
		struct chunkd_journal_entry e;
		int rc = chunkd__journal_live(j, m->ids[p], &e);
		int want = m->last[p] >= 0 && !(honour_forget && m->forgotten[p]);
		if (!want) {
			assert_int_equal(rc, -ENOENT);
			continue;
		}
		assert_int_equal(rc, 0);
		count++;
		const struct mrec *r = &m->recs[m->last[p]];
		assert_int_equal(e.type, r->type);
		assert_int_equal(e.ts_ns, r->ts);
		assert_int_equal(e.size, r->size);
		assert_int_equal(e.off % 8, 0);
		assert_true(e.off >= HDR_LEN);
		if (e.off + e.size > (uint64_t)sb.st_size)
			continue; /* still pending */
		assert_int_equal(pread(fd, buf, e.size, (off_t)e.off), e.size);
		uint32_t crc, len;
		memcpy(&crc, buf, 4);
		memcpy(&len, buf + 4, 4);
		assert_int_equal(len, e.size);
		assert_int_equal(crc, chunkd__crc32c(0, buf + 4, e.size - 4));
		assert_memory_equal(buf + 40, r->id, 32);
		uint64_t ticket;
		memcpy(&ticket, buf + 32, 8);
		assert_int_equal(ticket, r->ticket);
	}
	free(buf);
	struct chunkd_journal_stats st;
	chunkd__journal_stats(j, &st);
	assert_int_equal(st.live_records, count);
}

/* The live records of the model (indices in m->recs, which later appends may move) in the order
 * of their offsets in the journal. */
static size_t *live_in_file_order(struct chunkd_journal *j, const struct model *m, size_t *n)
{
	size_t *v = malloc((m->npool + 1) * sizeof(*v));
	uint64_t *off = malloc((m->npool + 1) * sizeof(*off));
	assert_true(v && off);
	*n = 0;
	for (uint32_t p = 0; p < m->npool; p++) {
		struct chunkd_journal_entry e;
		if (chunkd__journal_live(j, m->ids[p], &e) == 0) {
			/* insertion sort by offset: pools are small */
			size_t k = (*n)++;
			while (k > 0 && off[k - 1] > e.off) {
				off[k] = off[k - 1];
				v[k] = v[k - 1];
				k--;
			}
			off[k] = e.off;
			v[k] = (size_t)m->last[p];
		}
	}
	free(off);
	return v;
}

/* A random workload: nrec appends over the pool (DOWNLOAD with probability 60%), a forget after
 * one append in ten, and a sync after one in fifty. */
static void workload(struct chunkd_journal *j, struct model *m, size_t nrec, int big)
{
	for (size_t i = 0; i < nrec; i++) {
		uint32_t p = (uint32_t)(rnd() % m->npool);
		model_append(j, m, p, rnd() % 10 < 6 ? CHUNKD_JREC_DOWNLOAD : CHUNKD_JREC_DELETE,
			     big);
		if (rnd() % 10 == 0)
			model_forget(j, m, (uint32_t)(rnd() % m->npool));
		if (rnd() % 50 == 0)
			assert_int_equal(chunkd__journal_sync(j), 0);
	}
}

static struct chunkd_journal *open_new(int dirfd)
{
	struct chunkd_journal *j = NULL;
	struct chunkd_journal_stats st;
	assert_int_equal(chunkd__journal_open(dirfd, &j, NULL, NULL, &st), 0);
	return j;
}

/* Forgets are not durable: after a reopen without compaction, every id's last record is live. */
static void model_unforget(struct model *m)
{
	memset(m->forgotten, 0, m->npool * sizeof(*m->forgotten));
}

/* ---- tests ----------------------------------------------------------------------------------- */

/* A missing journal is created with a bare header; reopening it replays nothing. */
static void test_create(void **state)
{
	struct env *e = *state;
	struct chunkd_journal *j = NULL;
	struct chunkd_journal_stats st;
	assert_int_equal(chunkd__journal_open(e->dirfd, &j, NULL, NULL, &st), 0);
	assert_int_equal(st.created, 1);
	assert_int_equal(st.records, 0);
	assert_int_equal(st.file_bytes, HDR_LEN);
	assert_int_equal(file_size(e->dirfd, "journal"), HDR_LEN);
	assert_false(exists(e->dirfd, "journal.tmp"));
	chunkd__journal_close(j);

	size_t len;
	uint8_t *h = slurp(e->dirfd, "journal", &len);
	assert_memory_equal(h, "CNKDJRN1", 8);
	uint32_t v[4];
	memcpy(v, h + 8, 16);
	assert_int_equal(v[0], 2);       /* version */
	assert_int_equal(v[1], HDR_LEN); /* header length */
	assert_int_equal(v[2], 0);       /* flags */
	assert_int_equal(v[3], chunkd__crc32c(0, h, 20));
	free(h);

	assert_int_equal(chunkd__journal_open(e->dirfd, &j, NULL, NULL, &st), 0);
	assert_int_equal(st.created, 0);
	assert_int_equal(st.records, 0);
	assert_int_equal(st.cut, CHUNKD_JOURNAL_CUT_NONE);
	assert_string_equal(st.why, "");
	chunkd__journal_close(j);
	chunkd__journal_close(NULL);
}

/*
 * Round trip: random records with random descriptors (up to 64 files, 255-byte names, 4096-byte
 * URLs), appends interleaved with forgets and syncs; the live index equals "last record per id,
 * minus forgotten"; after a reopen the replayed sequence equals what was appended, and the live
 * index equals "last record per id" (a forget is not durable without a compaction).
 */
static void test_round_trip(void **state)
{
	struct env *e = *state;
	struct model m;
	model_init(&m, 300);
	struct chunkd_journal *j = open_new(e->dirfd);
	workload(j, &m, 3000, 1);
	check_live(j, &m, 1);
	assert_int_equal(chunkd__journal_sync(j), 0);
	assert_int_equal(chunkd__journal_durable_seq(j), 3000);
	assert_int_equal(chunkd__journal_last_seq(j), 3000);
	check_live(j, &m, 1);
	struct chunkd_journal_stats st;
	chunkd__journal_stats(j, &st);
	assert_int_equal(st.file_bytes, file_size(e->dirfd, "journal"));
	chunkd__journal_close(j);

	const struct mrec **seq = seq_of(&m, 0, m.n);
	j = open_expect(e->dirfd, seq, m.n, &st);
	assert_int_equal(st.cut, CHUNKD_JOURNAL_CUT_NONE);
	model_unforget(&m);
	check_live(j, &m, 1);

	/* Appends continue after the replayed records; a second reopen sees both. */
	size_t before = m.n;
	workload(j, &m, 500, 1);
	assert_int_equal(chunkd__journal_sync(j), 0);
	assert_int_equal(chunkd__journal_last_seq(j), m.n - before);
	chunkd__journal_close(j);
	free(seq);
	seq = seq_of(&m, 0, m.n);
	j = open_expect(e->dirfd, seq, m.n, NULL);
	model_unforget(&m);
	check_live(j, &m, 1);
	chunkd__journal_close(j);
	free(seq);
	model_free(&m);
}

/* Every descriptor replay would refuse is refused by append, and nothing is appended. */
static void test_append_rejects_invalid(void **state)
{
	struct env *e = *state;
	struct chunkd_journal *j = open_new(e->dirfd);
	struct chunkd_dl *dl = malloc(sizeof(*dl));
	assert_non_null(dl);
	uint64_t id[4] = {1, 2, 3, 4};
	struct chunkd_jrec r = {.type = CHUNKD_JREC_DOWNLOAD, .ts_ns = 5, .dl = dl};
	memcpy(r.id, id, 32);

	gen_dl(7, id, 0, 0, dl);
	assert_int_equal(chunkd__journal_append(j, &r), 0); /* the base case is valid */
	chunkd__journal_forget(j, id);
	const void *buf;
	size_t len0, len;
	uint64_t off;
	assert_int_equal(chunkd__journal_pending(j, &buf, &len0, &off), 0);

	static const char *const cases[] = {
	    "type 0",         "type 3",          "download without dl", "dl->id differs",
	    "nfiles 0",       "nfiles 65",       "first == end",        "name with /",
	    "name .",         "name ..",         "name .chunkd-meta",   "name empty",
	    "name 256 bytes", "duplicate name",  "url scheme ftp",      "url with space",
	    "url 4097 bytes", "url scheme only", "url with DEL",
	};
	for (size_t c = 0; c < sizeof(cases) / sizeof(cases[0]); c++) {
		gen_dl(7, id, 0, 0, dl);
		if (dl->nfiles < 2) {
			dl->nfiles = 2;
			strcpy(dl->files[1].name, "second");
			strcpy(dl->files[1].url, "https://example.org/second");
		}
		r.type = CHUNKD_JREC_DOWNLOAD;
		r.dl = dl;
		switch (c) {
		case 0:
			r.type = 0;
			break;
		case 1:
			r.type = 3;
			break;
		case 2:
			r.dl = NULL;
			break;
		case 3:
			dl->id[2] ^= 1;
			break;
		case 4:
			dl->nfiles = 0;
			break;
		case 5:
			dl->nfiles = 65;
			break;
		case 6:
			dl->end_block = dl->first_block;
			break;
		case 7:
			strcpy(dl->files[1].name, "a/b");
			break;
		case 8:
			strcpy(dl->files[1].name, ".");
			break;
		case 9:
			strcpy(dl->files[1].name, "..");
			break;
		case 10:
			strcpy(dl->files[1].name, ".chunkd-meta");
			break;
		case 11:
			dl->files[1].name[0] = '\0';
			break;
		case 12: /* no NUL within the limit */
			memset(dl->files[1].name, 'n', 256);
			break;
		case 13:
			strcpy(dl->files[1].name, dl->files[0].name);
			break;
		case 14:
			strcpy(dl->files[1].url, "ftp://example.org/x");
			break;
		case 15:
			strcpy(dl->files[1].url, "https://example.org/a b");
			break;
		case 16:
			memcpy(dl->files[1].url, "https://", 8);
			memset(dl->files[1].url + 8, 'u', CHUNKD_MAX_URL + 1 - 8);
			break;
		case 17:
			strcpy(dl->files[1].url, "https://");
			break;
		case 18:
			strcpy(dl->files[1].url, "https://example.org/\x7f");
			break;
		}
		int rc = chunkd__journal_append(j, &r);
		if (rc != -EINVAL)
			fail_msg("case '%s': append returned %d, want -EINVAL", cases[c], rc);
	}
	/* The refusals left no trace. */
	assert_int_equal(chunkd__journal_pending(j, &buf, &len, &off), 0);
	assert_int_equal(len, len0);
	assert_int_equal(chunkd__journal_last_seq(j), 1);
	assert_int_equal(chunkd__journal_live(j, id, NULL), -ENOENT);

	/* A DELETE ignores dl; a limit-sized descriptor is accepted. */
	r.type = CHUNKD_JREC_DELETE;
	r.dl = NULL;
	assert_int_equal(chunkd__journal_append(j, &r), 0);
	r.type = CHUNKD_JREC_DOWNLOAD;
	r.dl = dl;
	dl->nfiles = CHUNKD_MAX_FILES;
	dl->first_block = 0;
	dl->end_block = UINT64_MAX;
	memcpy(dl->id, id, 32);
	for (uint32_t i = 0; i < CHUNKD_MAX_FILES; i++) {
		memset(dl->files[i].name, 'a' + (i % 26), CHUNKD_MAX_NAME);
		dl->files[i].name[CHUNKD_MAX_NAME] = '\0';
		dl->files[i].name[0] = (char)('0' + i / 26);
		memcpy(dl->files[i].url, "file://", 7);
		memset(dl->files[i].url + 7, 'x', CHUNKD_MAX_URL - 7);
		dl->files[i].url[CHUNKD_MAX_URL] = '\0';
	}
	assert_int_equal(chunkd__journal_append(j, &r), 0);
	struct chunkd_journal_entry ent;
	assert_int_equal(chunkd__journal_live(j, id, &ent), 0);
	assert_int_equal(ent.size, dl_size(dl));
	assert_int_equal(chunkd__journal_sync(j), 0);
	chunkd__journal_close(j);

	struct chunkd_journal_stats st;
	assert_int_equal(chunkd__journal_open(e->dirfd, &j, NULL, NULL, &st), 0);
	assert_int_equal(st.records, 3);
	assert_int_equal(st.cut, CHUNKD_JOURNAL_CUT_NONE);
	chunkd__journal_close(j);
	free(dl);
}

/*
 * Torn tail: the file cut at every byte offset inside its last record (as a crash during its
 * commit leaves it). Every earlier record is replayed, the torn one is not, the file is truncated
 * back to the end of the last good record and the cut is reported; appends then continue there.
 */
static void test_torn_tail_every_byte(void **state)
{
	struct env *e = *state;
	struct model m;
	model_init(&m, 40);
	struct chunkd_journal *j = open_new(e->dirfd);
	for (int i = 0; i < 20; i++)
		model_append(j, &m, (uint32_t)(rnd() % m.npool),
			     i % 2 ? CHUNKD_JREC_DELETE : CHUNKD_JREC_DOWNLOAD, 0);
	assert_int_equal(chunkd__journal_sync(j), 0);
	uint64_t start = (uint64_t)file_size(e->dirfd, "journal");
	/* The victim: a DOWNLOAD of several hundred bytes, so that many cuts land in its files. */
	g_min_size = 400;
	model_append(j, &m, 0, CHUNKD_JREC_DOWNLOAD, 0);
	g_min_size = 0;
	assert_int_equal(chunkd__journal_sync(j), 0);
	chunkd__journal_close(j);
	size_t full_len;
	uint8_t *full = slurp(e->dirfd, "journal", &full_len);
	uint64_t end = full_len;
	assert_int_equal(end, start + m.recs[20].size);

	const struct mrec **seq = seq_of(&m, 0, 21);
	for (uint64_t L = start; L <= end; L++) {
		spit(e->dirfd, "journal", full, L);
		struct chunkd_journal_stats st;
		size_t nexp = L == end ? 21 : 20;
		j = open_expect(e->dirfd, seq, nexp, &st);
		if (L == start || L == end) {
			assert_int_equal(st.cut, CHUNKD_JOURNAL_CUT_NONE);
			assert_int_equal(st.cut_bytes, 0);
		} else {
			if (st.cut != CHUNKD_JOURNAL_CUT_TORN)
				fail_msg("cut at %llu: kind %u (%s), want TORN",
					 (unsigned long long)(L - start), st.cut, st.why);
			assert_int_equal(st.cut_offset, start);
			assert_int_equal(st.cut_bytes, L - start);
			assert_true(st.why[0] != '\0');
		}
		uint64_t good = L == end ? end : start;
		assert_int_equal(file_size(e->dirfd, "journal"), good);
		assert_int_equal(st.file_bytes, good);

		/* Appends go right after the last good record and survive a reopen. */
		uint64_t id[4] = {L, 0, 0, 0};
		struct chunkd_jrec r = {.type = CHUNKD_JREC_DELETE, .ts_ns = L, .ticket = ~L};
		memcpy(r.id, id, 32);
		assert_int_equal(chunkd__journal_append(j, &r), 0);
		struct chunkd_journal_entry ent;
		assert_int_equal(chunkd__journal_live(j, id, &ent), 0);
		assert_int_equal(ent.off, good);
		assert_int_equal(chunkd__journal_sync(j), 0);
		chunkd__journal_close(j);
		assert_int_equal(chunkd__journal_open(e->dirfd, &j, NULL, NULL, &st), 0);
		assert_int_equal(st.records, nexp + 1);
		assert_int_equal(st.cut, CHUNKD_JOURNAL_CUT_NONE);
		assert_int_equal(chunkd__journal_live(j, id, &ent), 0);
		assert_int_equal(ent.off, good);
		chunkd__journal_close(j);
	}
	free(seq);
	free(full);
	model_free(&m);
}

/* Offset of model record k in a journal holding exactly the model's records, all synced. */
static uint64_t rec_off(const struct model *m, size_t k)
{
	uint64_t off = HDR_LEN;
	for (size_t i = 0; i < k; i++)
		off += m->recs[i].size;
	return off;
}

/*
 * A damaged record in the middle (one byte flipped: in the CRC, the length, the header fields or
 * the descriptor): replay stops right before it, reports where and why, and truncates there.
 */
static void test_corrupt_middle(void **state)
{
	struct env *e = *state;
	struct model m;
	model_init(&m, 20);
	struct chunkd_journal *j = open_new(e->dirfd);
	for (int i = 0; i < 30; i++)
		model_append(j, &m, (uint32_t)(rnd() % m.npool),
			     i % 3 ? CHUNKD_JREC_DOWNLOAD : CHUNKD_JREC_DELETE, 0);
	assert_int_equal(chunkd__journal_sync(j), 0);
	chunkd__journal_close(j);
	size_t len;
	uint8_t *orig = slurp(e->dirfd, "journal", &len);
	uint8_t *copy = malloc(len);
	const struct mrec **seq = seq_of(&m, 0, m.n);

	static const size_t ks[] = {0, 1, 2, 14, 15, 28, 29};
	for (size_t ki = 0; ki < sizeof(ks) / sizeof(ks[0]); ki++) {
		size_t k = ks[ki];
		uint64_t off = rec_off(&m, k);
		uint32_t size = m.recs[k].size;
		/* Bytes of the CRC, the length, ts, type, client, owner, ticket, id, descriptor. */
		size_t where[] = {0, 3, 4, 5, 8, 16, 20, 24, 32, 40, 71, size - 1, size / 2, 100};
		for (size_t wi = 0; wi < sizeof(where) / sizeof(where[0]); wi++) {
			size_t w = where[wi];
			if (w >= size)
				continue;
			memcpy(copy, orig, len);
			copy[off + w] ^= 0x40;
			spit(e->dirfd, "journal", copy, len);
			struct chunkd_journal_stats st;
			j = open_expect(e->dirfd, seq, k, &st);
			assert_true(st.cut != CHUNKD_JOURNAL_CUT_NONE);
			/* Outside the length field, the damage is a CRC mismatch; in the middle of
			 * the file that is corruption, not a torn write. */
			if ((w < 4 || w >= 8) && k + 1 < m.n) {
				if (st.cut != CHUNKD_JOURNAL_CUT_CORRUPT)
					fail_msg("record %zu byte %zu: kind %u (%s), want CORRUPT",
						 k, w, st.cut, st.why);
				assert_non_null(strstr(st.why, "CRC"));
			}
			assert_int_equal(st.cut_offset, off);
			assert_int_equal(st.cut_bytes, len - off);
			assert_int_equal(file_size(e->dirfd, "journal"), off);
			chunkd__journal_close(j);
		}
	}
	free(seq);
	free(copy);
	free(orig);
	model_free(&m);
}

/* Rewrite the CRC of the record at off (size bytes) in buf: for records that are well sealed but
 * whose content breaks a rule. */
static void reseal(uint8_t *buf, uint64_t off, uint32_t size)
{
	uint32_t crc = chunkd__crc32c(0, buf + off + 4, size - 4);
	memcpy(buf + off, &crc, 4);
}

/*
 * A record with a valid CRC but content the daemon would refuse from a ring (a name with '/' or
 * '\n', an unknown type, non-zero padding after the type or at the end, nfiles 0, an empty range,
 * a DOWNLOAD turned DELETE, a name length past the record) stops replay as corruption, whatever
 * its position.
 */
static void test_invalid_content(void **state)
{
	struct env *e = *state;
	struct model m;
	model_init(&m, 10);
	struct chunkd_journal *j = open_new(e->dirfd);
	for (int i = 0; i < 10; i++)
		model_append(j, &m, (uint32_t)i, CHUNKD_JREC_DOWNLOAD, 0);
	assert_int_equal(chunkd__journal_sync(j), 0);
	chunkd__journal_close(j);
	size_t len;
	uint8_t *orig = slurp(e->dirfd, "journal", &len);
	uint8_t *copy = malloc(len);
	const struct mrec **seq = seq_of(&m, 0, m.n);

	int padded = 0;
	for (int c = 0; c < 9; c++) {
		for (size_t k = 4; k < 10; k += 5) { /* one in the middle, the last one */
			uint64_t off = rec_off(&m, k);
			uint32_t size = m.recs[k].size;
			uint8_t *r = copy + off;
			memcpy(copy, orig, len);
			uint16_t big = 300;
			if (c == 8) {
				/* Non-zero padding after the last URL, when the record has any. */
				gen_dl(m.recs[k].seed, m.recs[k].id, m.recs[k].ticket, 0, m.dl);
				size_t used = 124;
				for (uint32_t i = 0; i < m.dl->nfiles; i++)
					used += 4 + strlen(m.dl->files[i].name) +
						strlen(m.dl->files[i].url);
				if (used == size)
					continue;
				padded++;
			}
			switch (c) {
			case 0:
				r[124 + 4] = '/';
				break; /* first name byte */
			case 1:
				r[16] = 7;
				break; /* type */
			case 2:
				r[18] = 1;
				break; /* padding after the type */
			case 3:
				memset(r + 120, 0, 4);
				break; /* nfiles 0 */
			case 4:
				memcpy(r + 112, r + 104, 8);
				break; /* end_block = first_block */
			case 5:
				r[16] = CHUNKD_JREC_DELETE;
				break; /* a DELETE with a descriptor */
			case 6:
				memcpy(r + 124, &big, 2);
				break; /* name runs past the record */
			case 7:
				r[124 + 4] = '\n';
				break;
			case 8:
				r[size - 1] = 'x';
				break;
			}
			reseal(copy, off, size);
			spit(e->dirfd, "journal", copy, len);
			struct chunkd_journal_stats st;
			j = open_expect(e->dirfd, seq, k, &st);
			if (st.cut != CHUNKD_JOURNAL_CUT_CORRUPT)
				fail_msg("case %d record %zu: kind %u (%s), want CORRUPT", c, k,
					 st.cut, st.why);
			assert_null(strstr(st.why, "CRC"));
			assert_int_equal(st.cut_offset, off);
			assert_int_equal(file_size(e->dirfd, "journal"), off);
			chunkd__journal_close(j);
		}
	}
	assert_true(padded > 0); /* 7 in 8 records have padding; the seed makes it so here */
	free(seq);
	free(copy);
	free(orig);
	model_free(&m);
}

/* Zeros at the end (blocks allocated by a commit that never reached them) are a torn tail. */
static void test_zero_tail_is_torn(void **state)
{
	struct env *e = *state;
	struct model m;
	model_init(&m, 10);
	struct chunkd_journal *j = open_new(e->dirfd);
	for (int i = 0; i < 5; i++)
		model_append(j, &m, (uint32_t)i, CHUNKD_JREC_DOWNLOAD, 0);
	assert_int_equal(chunkd__journal_sync(j), 0);
	chunkd__journal_close(j);
	uint64_t good = (uint64_t)file_size(e->dirfd, "journal");
	/* The last record's header is there but its tail reads as zeros, then 4 KiB more zeros. */
	int fd = openat(e->dirfd, "journal", O_RDWR | O_CLOEXEC);
	uint64_t last = rec_off(&m, 4);
	uint8_t zeros[4096] = {0};
	assert_int_equal(pwrite(fd, zeros, good - last - 80, (off_t)(last + 80)),
			 (ssize_t)(good - last - 80));
	assert_int_equal(ftruncate(fd, (off_t)(good + 4096)), 0);
	close(fd);
	const struct mrec **seq = seq_of(&m, 0, m.n);
	struct chunkd_journal_stats st;
	j = open_expect(e->dirfd, seq, 4, &st);
	assert_int_equal(st.cut, CHUNKD_JOURNAL_CUT_TORN);
	assert_int_equal(st.cut_offset, last);
	assert_int_equal(st.cut_bytes, good + 4096 - last);
	chunkd__journal_close(j);
	/* Only zeros after the good records: a bad length (0), still a torn tail. */
	fd = openat(e->dirfd, "journal", O_RDWR | O_CLOEXEC);
	assert_int_equal(ftruncate(fd, (off_t)last), 0);
	assert_int_equal(ftruncate(fd, (off_t)(last + 8192)), 0);
	close(fd);
	j = open_expect(e->dirfd, seq, 4, &st);
	assert_int_equal(st.cut, CHUNKD_JOURNAL_CUT_TORN);
	assert_int_equal(st.cut_offset, last);
	chunkd__journal_close(j);
	free(seq);
	model_free(&m);
}

/* A file that is not a journal this code can read is refused with -EPROTO and left untouched. */
static void test_bad_header(void **state)
{
	struct env *e = *state;
	struct chunkd_journal *j = open_new(e->dirfd);
	uint64_t id[4] = {9, 9, 9, 9};
	struct chunkd_jrec r = {.type = CHUNKD_JREC_DELETE, .ts_ns = 1};
	memcpy(r.id, id, 32);
	assert_int_equal(chunkd__journal_append(j, &r), 0);
	assert_int_equal(chunkd__journal_sync(j), 0);
	chunkd__journal_close(j);
	size_t glen;
	uint8_t *good = slurp(e->dirfd, "journal", &glen);

	for (int c = 0; c < 8; c++) {
		uint8_t buf[256];
		size_t len = glen;
		memcpy(buf, good, glen);
		const char *want = NULL;
		switch (c) {
		case 0: /* a foreign file */
			len = (size_t)snprintf((char *)buf, sizeof(buf),
					       "# not a journal at all, but someone's notes\n%s",
					       "with more than a header's worth of bytes\n");
			want = "magic";
			break;
		case 1:
			len = 0;
			want = "shorter";
			break;
		case 2:
			len = 10;
			want = "shorter";
			break;
		case 3:
			len = HDR_LEN - 1;
			want = "shorter";
			break;
		case 4: /* a future version, properly sealed */
			buf[8] = 3;
			{
				uint32_t crc = chunkd__crc32c(0, buf, 20);
				memcpy(buf + 20, &crc, 4);
			}
			want = "version";
			break;
		case 5:
			buf[12] ^= 1;
			want = "CRC";
			break; /* header length, CRC now wrong */
		case 6:
			buf[21] ^= 1;
			want = "CRC";
			break;
		case 7: /* unknown flags, properly sealed */
			buf[16] = 1;
			{
				uint32_t crc = chunkd__crc32c(0, buf, 20);
				memcpy(buf + 20, &crc, 4);
			}
			want = "flags";
			break;
		}
		spit(e->dirfd, "journal", buf, len);
		struct chunkd_journal_stats st;
		j = (struct chunkd_journal *)1;
		int rc = chunkd__journal_open(e->dirfd, &j, NULL, NULL, &st);
		if (rc != -EPROTO)
			fail_msg("case %d: open returned %d, want -EPROTO", c, rc);
		assert_null(j);
		if (!strstr(st.why, want))
			fail_msg("case %d: why '%s' does not mention '%s'", c, st.why, want);
		size_t after_len;
		uint8_t *after = slurp(e->dirfd, "journal", &after_len);
		assert_int_equal(after_len, len);
		assert_memory_equal(after, buf, len);
		free(after);
	}

	/* Not a regular file: a directory, a symlink, a FIFO. */
	assert_int_equal(unlinkat(e->dirfd, "journal", 0), 0);
	assert_int_equal(mkdirat(e->dirfd, "journal", 0700), 0);
	assert_int_equal(chunkd__journal_open(e->dirfd, &j, NULL, NULL, NULL), -EISDIR);
	assert_int_equal(unlinkat(e->dirfd, "journal", AT_REMOVEDIR), 0);
	spit(e->dirfd, "target", good, glen);
	assert_int_equal(symlinkat("target", e->dirfd, "journal"), 0);
	assert_int_equal(chunkd__journal_open(e->dirfd, &j, NULL, NULL, NULL), -ELOOP);
	assert_int_equal(unlinkat(e->dirfd, "journal", 0), 0);
	assert_int_equal(mkfifoat(e->dirfd, "journal", 0600), 0);
	assert_int_equal(chunkd__journal_open(e->dirfd, &j, NULL, NULL, NULL), -EPROTO);
	assert_int_equal(unlinkat(e->dirfd, "journal", 0), 0);
	free(good);
}

/* A replay callback's error aborts the open with that error and changes nothing on disk. */
static void test_replay_abort(void **state)
{
	struct env *e = *state;
	struct model m;
	model_init(&m, 10);
	struct chunkd_journal *j = open_new(e->dirfd);
	workload(j, &m, 50, 0);
	assert_int_equal(chunkd__journal_sync(j), 0);
	chunkd__journal_close(j);
	off_t size = file_size(e->dirfd, "journal");
	const struct mrec **seq = seq_of(&m, 0, m.n);
	struct rctx c = {.exp = seq, .nexp = m.n, .first_bad = -1, .abort_at = 7};
	c.tmp = malloc(sizeof(*c.tmp));
	assert_int_equal(chunkd__journal_open(e->dirfd, &j, on_replay, &c, NULL), -ECANCELED);
	assert_int_equal(c.seen, 7);
	assert_int_equal(c.first_bad, -1);
	assert_int_equal(file_size(e->dirfd, "journal"), size);
	free(c.tmp);
	free(seq);
	model_free(&m);
}

/*
 * The seeds' "hash table with file offset, value size and timestamp": many ids of hostile shapes,
 * appended, superseded and forgotten at random (forgets exercise the backward-shift deletion and
 * the dense array's moves), checked against the model.
 */
static void test_index_model(void **state)
{
	struct env *e = *state;
	struct model m;
	model_init(&m, 20000);
	struct chunkd_journal *j = open_new(e->dirfd);
	for (int round = 0; round < 4; round++) {
		for (int i = 0; i < 30000; i++) {
			uint32_t p = (uint32_t)(rnd() % m.npool);
			if (rnd() % 3 == 0)
				model_forget(j, &m, p);
			else
				model_append(j, &m, p, CHUNKD_JREC_DELETE, 0);
		}
		check_live(j, &m, 1);
	}
	/* Forget everything: the index is empty. */
	for (uint32_t p = 0; p < m.npool; p++)
		model_forget(j, &m, p);
	check_live(j, &m, 1);
	struct chunkd_journal_stats st;
	chunkd__journal_stats(j, &st);
	assert_int_equal(st.live_records, 0);
	assert_int_equal(st.live_bytes, 0);
	chunkd__journal_close(j);
	model_free(&m);
}

/*
 * Compaction equivalence: after random appends and forgets, compaction keeps exactly the live
 * set (same records, same content), the file shrinks to header + live bytes, the index points at
 * valid records of the new file, appends continue after it, and a reopen replays the live records
 * in file order followed by the later appends.
 */
static void test_compaction(void **state)
{
	struct env *e = *state;
	struct model m;
	model_init(&m, 150);
	struct chunkd_journal *j = open_new(e->dirfd);
	assert_int_equal(chunkd__journal_should_compact(j), 0);
	workload(j, &m, 4000, 1);
	/* Leave some of it pending: compaction must make those durable too. */
	const void *buf;
	size_t plen;
	uint64_t poff;
	assert_int_equal(chunkd__journal_pending(j, &buf, &plen, &poff), 0);
	assert_true(plen > 0);
	struct chunkd_journal_stats st;
	chunkd__journal_stats(j, &st);
	uint64_t before = st.file_bytes;
	chunkd__journal_set_compact_floor(j, 0);
	assert_int_equal(chunkd__journal_should_compact(j), 1);
	struct stat sb_old, sb_new;
	assert_int_equal(fstat(chunkd__journal_fd(j), &sb_old), 0);

	assert_int_equal(chunkd__journal_compact(j), 0);
	assert_int_equal(fstat(chunkd__journal_fd(j), &sb_new), 0);
	assert_true(sb_old.st_ino != sb_new.st_ino); /* appends go to the new file */
	assert_int_equal(chunkd__journal_durable_seq(j), chunkd__journal_last_seq(j));
	assert_false(exists(e->dirfd, "journal.tmp"));
	chunkd__journal_stats(j, &st);
	assert_int_equal(st.file_bytes, HDR_LEN + st.live_bytes);
	assert_int_equal(file_size(e->dirfd, "journal"), st.file_bytes);
	assert_true(st.file_bytes < before);
	assert_int_equal(chunkd__journal_should_compact(j), 0);
	check_live(j, &m, 1);

	/* The new file holds exactly the live records, in their old order. */
	size_t nlive;
	size_t *live = live_in_file_order(j, &m, &nlive);
	assert_int_equal(nlive, st.live_records);
	int *forgotten_at_compaction = malloc(m.npool * sizeof(int));
	memcpy(forgotten_at_compaction, m.forgotten, m.npool * sizeof(int));

	/* Appends and forgets go on in the new file. */
	size_t mark = m.n;
	workload(j, &m, 500, 1);
	assert_int_equal(chunkd__journal_sync(j), 0);
	check_live(j, &m, 1);
	chunkd__journal_close(j);

	const struct mrec **seq = malloc((nlive + m.n - mark + 1) * sizeof(*seq));
	for (size_t i = 0; i < nlive; i++)
		seq[i] = &m.recs[live[i]];
	for (size_t i = mark; i < m.n; i++)
		seq[nlive + i - mark] = &m.recs[i];
	j = open_expect(e->dirfd, seq, nlive + m.n - mark, &st);
	assert_int_equal(st.cut, CHUNKD_JOURNAL_CUT_NONE);
	/* An id is live iff its last record is in the file: appended after the compaction, or
	 * live at the compaction. Forgets after the compaction are undone by the reopen, as
	 * documented. */
	for (uint32_t p = 0; p < m.npool; p++)
		m.forgotten[p] = m.last[p] < (long)mark && forgotten_at_compaction[p];
	free(forgotten_at_compaction);
	check_live(j, &m, 1);

	/* Compacting twice in a row: the second one finds nothing to drop but works. */
	chunkd__journal_set_compact_floor(j, 0);
	assert_int_equal(chunkd__journal_compact(j), 0);
	assert_int_equal(chunkd__journal_compact(j), 0);
	check_live(j, &m, 1);
	chunkd__journal_close(j);
	free(seq);
	free(live);
	model_free(&m);
}

/* Keep function of test_compaction_keeps_what_it_is_told: the records whose ticket is a
 * multiple of 3; counts its calls and checks it sees only header fields. */
struct keep_ctx {
	size_t calls;
	int saw_dl;
};

static int keep_thirds(const struct chunkd_jrec *r, void *arg)
{
	struct keep_ctx *k = arg;
	k->calls++;
	if (r->dl)
		k->saw_dl = 1;
	return r->ticket % 3 == 0;
}

/*
 * chunkd__journal_set_keep: compaction keeps, besides the live records, exactly the superseded
 * ones the keep function asks for (here: ticket % 3 == 0, also of forgotten ids), in their old
 * order, so that a reopen replays them before their id's live record; the index is unchanged,
 * their bytes count as live for should_compact (no compaction again right away), and a journal
 * without a keep function drops them at its next compaction.
 */
static void test_compaction_keeps_what_it_is_told(void **state)
{
	struct env *e = *state;
	struct model m;
	struct keep_ctx k = {0};
	model_init(&m, 60);
	struct chunkd_journal *j = open_new(e->dirfd);
	workload(j, &m, 3000, 0);
	chunkd__journal_set_compact_floor(j, 0);
	chunkd__journal_set_keep(j, keep_thirds, &k);
	assert_int_equal(chunkd__journal_compact(j), 0);

	/* Expected: every record that is live, or superseded/forgotten with a kept ticket. */
	const struct mrec **seq = malloc((m.n + 1) * sizeof(*seq));
	assert_non_null(seq);
	size_t n = 0, nkept = 0, superseded = 0;
	uint64_t kept_bytes = 0;
	for (size_t i = 0; i < m.n; i++) {
		uint32_t p = m.recs[i].pool;
		int live = m.last[p] == (long)i && !m.forgotten[p];
		if (!live)
			superseded++;
		if (live || m.recs[i].ticket % 3 == 0) {
			seq[n++] = &m.recs[i];
			if (!live) {
				nkept++;
				kept_bytes += m.recs[i].size;
			}
		}
	}
	assert_true(nkept > 50); /* the case is exercised */
	assert_int_equal(k.calls, superseded);
	assert_false(k.saw_dl);
	struct chunkd_journal_stats st;
	chunkd__journal_stats(j, &st);
	assert_int_equal(st.file_bytes, HDR_LEN + st.live_bytes + kept_bytes);
	assert_int_equal(chunkd__journal_should_compact(j), 0);
	check_live(j, &m, 1);
	chunkd__journal_close(j);

	j = open_expect(e->dirfd, seq, n, &st);
	assert_int_equal(st.cut, CHUNKD_JOURNAL_CUT_NONE);
	/* The reopen brings forgotten ids back when a kept record names them (documented for
	 * forget: replay sees a record until a compaction drops it); the live ones are as before. */
	for (uint32_t p = 0; p < m.npool; p++)
		if (m.last[p] >= 0 && !m.forgotten[p]) {
			struct chunkd_journal_entry je;
			assert_int_equal(chunkd__journal_live(j, m.ids[p], &je), 0);
			assert_int_equal(je.type, m.recs[m.last[p]].type);
		}
	/* No keep function: the next compaction drops what was kept. */
	chunkd__journal_set_compact_floor(j, 0);
	assert_int_equal(chunkd__journal_compact(j), 0);
	chunkd__journal_stats(j, &st);
	assert_true(st.file_bytes < HDR_LEN + st.live_bytes + kept_bytes);
	chunkd__journal_close(j);
	free(seq);
	model_free(&m);
}

/* Replay callback of test_refused_records: copies what it sees. */
struct seen_rec {
	uint32_t type;
	uint64_t ticket;
	int32_t refused;
};
struct seen {
	struct seen_rec v[16];
	size_t n;
};

static int see(const struct chunkd_jrec *r, void *arg)
{
	struct seen *s = arg;
	if (s->n < 16)
		s->v[s->n++] = (struct seen_rec){r->type, r->ticket, r->refused};
	return 0;
}

/* Append r to the closed journal in dirfd and make it durable. */
static void append_durably(int dirfd, const struct chunkd_jrec *r)
{
	struct chunkd_journal *j;
	assert_int_equal(chunkd__journal_open(dirfd, &j, NULL, NULL, NULL), 0);
	assert_int_equal(chunkd__journal_append(j, r), 0);
	assert_int_equal(chunkd__journal_sync(j), 0);
	chunkd__journal_close(j);
}

/* Open the journal in dirfd, recording what replay passes into *s (emptied first). */
static struct chunkd_journal *open_seen(int dirfd, struct seen *s, struct chunkd_journal_stats *st)
{
	struct chunkd_journal *j;
	memset(s, 0, sizeof(*s));
	assert_int_equal(chunkd__journal_open(dirfd, &j, see, s, st), 0);
	return j;
}

/* Rewrite the journal's header as version 1 (what daemons before refused records wrote). */
static void make_version1(int dirfd)
{
	size_t len;
	uint8_t *h = slurp(dirfd, "journal", &len);
	uint32_t one = 1;
	memcpy(h + 8, &one, 4);
	uint32_t crc = chunkd__crc32c(0, h, 20);
	memcpy(h + 20, &crc, 4);
	spit(dirfd, "journal", h, len);
	free(h);
}

/*
 * Refused records (version 2): a refused download is appended and replayed with its errno, but
 * never becomes live (the id's live record stays the accepted one, also across a reopen), and
 * compaction drops it. Invalid refusals are refused by append. A version 1 journal is read and
 * rewritten as version 2 at open; a flagged record in a version 1 file is damage (cut).
 */
static void test_refused_records(void **state)
{
	struct env *e = *state;
	struct chunkd_dl *dl = malloc(sizeof(*dl)), *dl2 = malloc(sizeof(*dl2));
	uint64_t id[4] = {1, 2, 3, 4};
	struct chunkd_journal_entry je;
	struct chunkd_journal_stats st;
	assert_non_null(dl);
	assert_non_null(dl2);
	gen_dl(11, id, 1, 0, dl);
	gen_dl(12, id, 2, 0, dl2);
	struct chunkd_journal *j = open_new(e->dirfd);
	struct chunkd_jrec ok = {.type = CHUNKD_JREC_DOWNLOAD, .client = 3, .owner = 9, .ticket = 1,
				 .dl = dl};
	memcpy(ok.id, id, sizeof(id));
	struct chunkd_jrec no = ok;
	no.ticket = 2;
	no.dl = dl2;
	no.refused = -EEXIST;
	assert_int_equal(chunkd__journal_append(j, &ok), 0);
	assert_int_equal(chunkd__journal_live(j, id, &je), 0);
	uint64_t live_off = je.off;
	assert_int_equal(chunkd__journal_append(j, &no), 0);
	assert_int_equal(chunkd__journal_live(j, id, &je), 0);
	assert_int_equal(je.off, live_off); /* still the accepted one */
	/* Invalid refusals. */
	struct chunkd_jrec bad = no;
	bad.refused = -256;
	assert_int_equal(chunkd__journal_append(j, &bad), -EINVAL);
	bad.refused = 5;
	assert_int_equal(chunkd__journal_append(j, &bad), -EINVAL);
	bad = no;
	bad.type = CHUNKD_JREC_DELETE;
	bad.dl = NULL;
	assert_int_equal(chunkd__journal_append(j, &bad), -EINVAL);
	assert_int_equal(chunkd__journal_sync(j), 0);
	chunkd__journal_close(j);

	struct seen s;
	j = open_seen(e->dirfd, &s, &st);
	assert_int_equal(st.cut, CHUNKD_JOURNAL_CUT_NONE);
	assert_int_equal(s.n, 2);
	assert_int_equal(s.v[0].refused, 0);
	assert_int_equal(s.v[1].refused, -EEXIST);
	assert_int_equal(s.v[1].ticket, 2);
	assert_int_equal(chunkd__journal_live(j, id, &je), 0);
	assert_int_equal(je.off, live_off);
	assert_int_equal(st.live_records, 1);
	chunkd__journal_set_compact_floor(j, 0);
	assert_int_equal(chunkd__journal_compact(j), 0);
	chunkd__journal_close(j);
	j = open_seen(e->dirfd, &s, &st);
	assert_int_equal(s.n, 1); /* the refused record is gone, the accepted one stays */
	assert_int_equal(s.v[0].ticket, 1);
	chunkd__journal_close(j);

	/* A version 1 file: replayed, then copied whole (superseded records too: their requests
	 * may still wait) under a version 2 header. */
	struct chunkd_jrec again = ok;
	again.ticket = 3;
	append_durably(e->dirfd, &again);
	make_version1(e->dirfd);
	j = open_seen(e->dirfd, &s, &st);
	assert_int_equal(s.n, 2);
	assert_int_equal(st.upgraded, 1);
	chunkd__journal_close(j);
	size_t len;
	uint8_t *h = slurp(e->dirfd, "journal", &len);
	assert_int_equal(h[8], 2);
	free(h);
	j = open_seen(e->dirfd, &s, &st);
	assert_int_equal(st.upgraded, 0);
	assert_int_equal(s.n, 2); /* ticket 1's record survived the upgrade */
	assert_int_equal(s.v[0].ticket, 1);
	assert_int_equal(s.v[1].ticket, 3);
	chunkd__journal_close(j);

	/* A refused record in a version 1 file is damage: replay stops there. */
	append_durably(e->dirfd, &no);
	make_version1(e->dirfd);
	j = open_seen(e->dirfd, &s, &st);
	assert_int_equal(s.n, 2);
	assert_int_equal(st.cut, CHUNKD_JOURNAL_CUT_CORRUPT); /* CRC-valid, bad content */
	assert_non_null(strstr(st.why, "padding"));
	chunkd__journal_close(j);
	free(dl);
	free(dl2);
}

/* The expected sequence after a compaction that forgot the ids with forget[p]: each remaining
 * id's last record, in append order. */
static const struct mrec **compacted_seq(const struct model *m, const int *forget, size_t *n)
{
	const struct mrec **v = malloc((m->n + 1) * sizeof(*v));
	assert_non_null(v);
	*n = 0;
	for (size_t i = 0; i < m->n; i++) {
		uint32_t p = m->recs[i].pool;
		if (m->last[p] == (long)i && !forget[p])
			v[(*n)++] = &m->recs[i];
	}
	return v;
}

/*
 * Crash states of compaction, built on disk: journal.tmp half-written (or complete) beside the
 * old journal → the old journal is used and the tmp removed; the new journal alone → the
 * compacted live set. Also a journal.tmp with no journal (a crash while creating it).
 */
static void test_compaction_crash_states(void **state)
{
	struct env *e = *state;
	struct model m;
	model_init(&m, 60);
	struct chunkd_journal *j = open_new(e->dirfd);
	workload(j, &m, 1500, 0);
	assert_int_equal(chunkd__journal_sync(j), 0);
	chunkd__journal_close(j);
	size_t old_len, new_len;
	uint8_t *old = slurp(e->dirfd, "journal", &old_len);

	/* The new file, as compaction writes it. */
	int *forget = calloc(m.npool, sizeof(*forget));
	for (uint32_t p = 0; p < m.npool; p += 4)
		forget[p] = 1;
	j = open_new(e->dirfd);
	for (uint32_t p = 0; p < m.npool; p++)
		if (forget[p])
			chunkd__journal_forget(j, m.ids[p]);
	assert_int_equal(chunkd__journal_compact(j), 0);
	chunkd__journal_close(j);
	uint8_t *new = slurp(e->dirfd, "journal", &new_len);
	assert_true(new_len < old_len);

	const struct mrec **all = seq_of(&m, 0, m.n);
	size_t ncomp;
	const struct mrec **comp = compacted_seq(&m, forget, &ncomp);
	size_t cuts[] = {0, 1, HDR_LEN, HDR_LEN + 5, new_len / 2, new_len - 1, new_len};
	for (size_t c = 0; c < sizeof(cuts) / sizeof(cuts[0]); c++) {
		spit(e->dirfd, "journal", old, old_len);
		spit(e->dirfd, "journal.tmp", new, cuts[c]);
		struct chunkd_journal_stats st;
		j = open_expect(e->dirfd, all, m.n, &st);
		assert_int_equal(st.tmp_removed, 1);
		assert_int_equal(st.cut, CHUNKD_JOURNAL_CUT_NONE);
		assert_false(exists(e->dirfd, "journal.tmp"));
		assert_int_equal(file_size(e->dirfd, "journal"), old_len);
		chunkd__journal_close(j);
	}
	/* After the rename: the new file, whose replay is the compacted live set. */
	spit(e->dirfd, "journal", new, new_len);
	struct chunkd_journal_stats st;
	j = open_expect(e->dirfd, comp, ncomp, &st);
	assert_int_equal(st.tmp_removed, 0);
	memcpy(m.forgotten, forget, m.npool * sizeof(*forget));
	check_live(j, &m, 1);
	chunkd__journal_close(j);

	/* No journal, a leftover tmp: a crash while creating the journal. */
	assert_int_equal(unlinkat(e->dirfd, "journal", 0), 0);
	spit(e->dirfd, "journal.tmp", new, 10);
	j = open_expect(e->dirfd, NULL, 0, &st);
	assert_int_equal(st.created, 1);
	assert_int_equal(st.tmp_removed, 1);
	assert_false(exists(e->dirfd, "journal.tmp"));
	chunkd__journal_close(j);
	free(all);
	free(comp);
	free(forget);
	free(old);
	free(new);
	model_free(&m);
}

static int g_crash_point;

static int crash_hook(int point, void *arg)
{
	(void)arg;
	if (point == g_crash_point)
		_exit(0);
	return 0;
}

struct fail_at {
	int point;
	int err;
	int calls;
};

static int fail_hook(int point, void *arg)
{
	struct fail_at *f = arg;
	if (point != f->point)
		return 0;
	f->calls++;
	return f->err;
}

/*
 * A crash just before each step of compaction, in a child process killed by the fault hook: the
 * reopened journal is the old one (before the rename: the full sequence; the forgets were never
 * durable) or the new one (once renamed: the compacted live set), never a mix, never a loss, and
 * journal.tmp is gone.
 */
static void test_compaction_crash_points(void **state)
{
	struct env *e = *state;
	struct model m;
	model_init(&m, 60);
	struct chunkd_journal *j = open_new(e->dirfd);
	workload(j, &m, 1500, 0);
	assert_int_equal(chunkd__journal_sync(j), 0);
	chunkd__journal_close(j);
	size_t old_len;
	uint8_t *old = slurp(e->dirfd, "journal", &old_len);
	int *forget = calloc(m.npool, sizeof(*forget));
	for (uint32_t p = 1; p < m.npool; p += 3)
		forget[p] = 1;
	const struct mrec **all = seq_of(&m, 0, m.n);
	size_t ncomp;
	const struct mrec **comp = compacted_seq(&m, forget, &ncomp);

	static const int points[] = {CHUNKD_JFAULT_COMPACT_WRITE, CHUNKD_JFAULT_COMPACT_FSYNC,
				     CHUNKD_JFAULT_COMPACT_RENAME, CHUNKD_JFAULT_COMPACT_DIRSYNC};
	for (size_t pi = 0; pi < sizeof(points) / sizeof(points[0]); pi++) {
		spit(e->dirfd, "journal", old, old_len);
		fflush(NULL);
		pid_t pid = fork();
		assert_true(pid >= 0);
		if (pid == 0) {
			struct chunkd_journal *cj = NULL;
			if (chunkd__journal_open(e->dirfd, &cj, NULL, NULL, NULL))
				_exit(2);
			for (uint32_t p = 0; p < m.npool; p++)
				if (forget[p])
					chunkd__journal_forget(cj, m.ids[p]);
			g_crash_point = points[pi];
			chunkd__journal_set_fault_hook(cj, crash_hook, NULL);
			chunkd__journal_compact(cj);
			_exit(3); /* the hook never fired */
		}
		int status;
		assert_int_equal(waitpid(pid, &status, 0), pid);
		assert_true(WIFEXITED(status));
		assert_int_equal(WEXITSTATUS(status), 0);
		int renamed = points[pi] == CHUNKD_JFAULT_COMPACT_DIRSYNC;
		struct chunkd_journal_stats st;
		j = renamed ? open_expect(e->dirfd, comp, ncomp, &st)
			    : open_expect(e->dirfd, all, m.n, &st);
		assert_int_equal(st.cut, CHUNKD_JOURNAL_CUT_NONE);
		/* Before the rename journal.tmp exists (created before the first write). */
		assert_int_equal(st.tmp_removed, !renamed);
		assert_false(exists(e->dirfd, "journal.tmp"));
		if (renamed)
			memcpy(m.forgotten, forget, m.npool * sizeof(*forget));
		else
			model_unforget(&m);
		check_live(j, &m, 1);
		chunkd__journal_close(j);
	}
	free(all);
	free(comp);
	free(forget);
	free(old);
	model_free(&m);
}

/*
 * I/O errors injected at each step of compaction. Before the rename: compaction fails, the old
 * journal and the index are untouched, journal.tmp is gone, and the journal goes on working.
 * At the directory fsync (after the rename): the error is sticky, and the journal on disk is the
 * new one.
 */
static void test_compaction_errors(void **state)
{
	struct env *e = *state;
	static const int points[] = {CHUNKD_JFAULT_COMPACT_WRITE, CHUNKD_JFAULT_COMPACT_FSYNC,
				     CHUNKD_JFAULT_COMPACT_RENAME, CHUNKD_JFAULT_COMPACT_DIRSYNC};
	for (size_t pi = 0; pi < sizeof(points) / sizeof(points[0]); pi++) {
		struct model m;
		model_init(&m, 40);
		if (exists(e->dirfd, "journal"))
			assert_int_equal(unlinkat(e->dirfd, "journal", 0), 0);
		struct chunkd_journal *j = open_new(e->dirfd);
		workload(j, &m, 600, 0);
		assert_int_equal(chunkd__journal_sync(j), 0);
		off_t size = file_size(e->dirfd, "journal");
		int *forget = calloc(m.npool, sizeof(*forget));
		for (uint32_t p = 0; p < m.npool; p += 2) {
			forget[p] = 1;
			model_forget(j, &m, p);
		}
		struct fail_at f = {.point = points[pi], .err = -EIO};
		chunkd__journal_set_fault_hook(j, fail_hook, &f);
		assert_int_equal(chunkd__journal_compact(j), -EIO);
		assert_int_equal(f.calls, 1);
		assert_false(exists(e->dirfd, "journal.tmp"));
		chunkd__journal_set_fault_hook(j, NULL, NULL);
		if (points[pi] != CHUNKD_JFAULT_COMPACT_DIRSYNC) {
			assert_int_equal(file_size(e->dirfd, "journal"), size);
			check_live(j, &m, 1);
			size_t mark = m.n;
			workload(j, &m, 50, 0);
			assert_int_equal(chunkd__journal_sync(j), 0);
			check_live(j, &m, 1);
			chunkd__journal_close(j);
			const struct mrec **all = seq_of(&m, 0, m.n);
			j = open_expect(e->dirfd, all, m.n, NULL);
			(void)mark;
			chunkd__journal_close(j);
			free(all);
		} else {
			/* Sticky: nothing more is accepted. */
			struct chunkd_jrec r = {.type = CHUNKD_JREC_DELETE, .ts_ns = 1};
			const void *buf;
			size_t len;
			uint64_t off;
			assert_int_equal(chunkd__journal_append(j, &r), -EIO);
			assert_int_equal(chunkd__journal_sync(j), -EIO);
			assert_int_equal(chunkd__journal_pending(j, &buf, &len, &off), -EIO);
			assert_int_equal(chunkd__journal_begin_commit(j), -EIO);
			assert_int_equal(chunkd__journal_compact(j), -EIO);
			chunkd__journal_close(j);
			size_t ncomp;
			/* Every forget counts, the workload's too. */
			const struct mrec **comp = compacted_seq(&m, m.forgotten, &ncomp);
			j = open_expect(e->dirfd, comp, ncomp, NULL);
			check_live(j, &m, 1);
			chunkd__journal_close(j);
			free(comp);
		}
		free(forget);
		model_free(&m);
	}
}

/* An error writing or fsyncing in chunkd__journal_sync() is sticky; the disk keeps what was
 * durable before it. */
static void test_sync_errors(void **state)
{
	struct env *e = *state;
	static const int points[] = {CHUNKD_JFAULT_SYNC_WRITE, CHUNKD_JFAULT_SYNC_FDATASYNC};
	for (size_t pi = 0; pi < 2; pi++) {
		struct model m;
		model_init(&m, 20);
		if (exists(e->dirfd, "journal"))
			assert_int_equal(unlinkat(e->dirfd, "journal", 0), 0);
		struct chunkd_journal *j = open_new(e->dirfd);
		workload(j, &m, 40, 0);
		assert_int_equal(chunkd__journal_sync(j), 0);
		size_t durable = m.n;
		model_append(j, &m, 0, CHUNKD_JREC_DELETE, 0);
		struct fail_at f = {.point = points[pi], .err = -ENOSPC};
		chunkd__journal_set_fault_hook(j, fail_hook, &f);
		assert_int_equal(chunkd__journal_sync(j), -ENOSPC);
		assert_int_equal(chunkd__journal_durable_seq(j), durable);
		chunkd__journal_set_fault_hook(j, NULL, NULL);
		assert_int_equal(chunkd__journal_sync(j), -ENOSPC);
		struct chunkd_jrec r = {.type = CHUNKD_JREC_DELETE, .ts_ns = 1};
		assert_int_equal(chunkd__journal_append(j, &r), -ENOSPC);
		chunkd__journal_close(j);
		/* SYNC_WRITE failed before writing: only the durable records. SYNC_FDATASYNC
		 * failed after the write: the page cache has the record (this is not a power loss).
		 */
		size_t n = points[pi] == CHUNKD_JFAULT_SYNC_WRITE ? durable : m.n;
		const struct mrec **seq = seq_of(&m, 0, n);
		j = open_expect(e->dirfd, seq, n, NULL);
		chunkd__journal_close(j);
		free(seq);
		model_free(&m);
	}
}

/*
 * The group-commit API as the loop drives it: begin freezes the pending bytes, appends in between
 * go to a second buffer placed after them, the frozen bytes stay put while the second buffer
 * grows, each commit lands at its offset, and everything survives a reopen. A commit that never
 * ends (a crash mid-write) leaves a torn tail; a failed one is sticky.
 */
static void test_group_commit(void **state)
{
	struct env *e = *state;
	struct model m;
	model_init(&m, 50);
	struct chunkd_journal *j = open_new(e->dirfd);
	int fd = chunkd__journal_fd(j);
	const void *buf, *buf2;
	size_t len, len2;
	uint64_t off, off2;

	assert_int_equal(chunkd__journal_pending(j, &buf, &len, &off), 0);
	assert_int_equal(len, 0);
	assert_int_equal(off, HDR_LEN);
	model_append(j, &m, 1, CHUNKD_JREC_DOWNLOAD, 0);
	model_append(j, &m, 2, CHUNKD_JREC_DELETE, 0);
	assert_int_equal(chunkd__journal_pending(j, &buf, &len, &off), 0);
	assert_int_equal(len, m.recs[0].size + m.recs[1].size);
	assert_int_equal(off, HDR_LEN);
	assert_int_equal(chunkd__journal_begin_commit(j), 0);
	assert_int_equal(chunkd__journal_begin_commit(j), -EBUSY);
	assert_int_equal(chunkd__journal_sync(j), -EBUSY);
	assert_int_equal(chunkd__journal_compact(j), -EBUSY);
	uint8_t *frozen = malloc(len);
	memcpy(frozen, buf, len);

	/* Appends while the commit is in flight, enough to grow the second buffer many times. */
	for (int i = 0; i < 3000; i++)
		model_append(j, &m, (uint32_t)(3 + i % 40), CHUNKD_JREC_DOWNLOAD, 0);
	assert_memory_equal(buf, frozen, len);
	assert_int_equal(chunkd__journal_pending(j, &buf2, &len2, &off2), 0);
	assert_int_equal(off2, HDR_LEN + len);
	struct chunkd_journal_entry ent;
	assert_int_equal(chunkd__journal_live(j, m.ids[3], &ent), 0);
	assert_true(ent.off >= off2);
	assert_int_equal(chunkd__journal_live(j, m.ids[1], &ent), 0);
	assert_int_equal(ent.off, HDR_LEN);
	assert_int_equal(chunkd__journal_durable_seq(j), 0);

	/* The loop's write and fdatasync, then end. */
	assert_int_equal(pwrite(fd, buf, len, (off_t)off), (ssize_t)len);
	assert_int_equal(fdatasync(fd), 0);
	chunkd__journal_end_commit(j, 0);
	assert_int_equal(chunkd__journal_durable_seq(j), 2);
	chunkd__journal_end_commit(j, 0); /* none in flight: nothing happens */
	assert_int_equal(chunkd__journal_durable_seq(j), 2);

	/* The next commit: pending, begin, write, end. */
	assert_int_equal(chunkd__journal_pending(j, &buf, &len, &off), 0);
	assert_int_equal(off, off2);
	assert_int_equal(len, len2);
	assert_int_equal(chunkd__journal_begin_commit(j), 0);
	model_append(j, &m, 7, CHUNKD_JREC_DELETE, 0); /* goes to the next commit */
	assert_int_equal(pwrite(fd, buf, len, (off_t)off), (ssize_t)len);
	assert_int_equal(fdatasync(fd), 0);
	chunkd__journal_end_commit(j, 0);
	assert_int_equal(chunkd__journal_durable_seq(j), m.n - 1);
	assert_int_equal(chunkd__journal_last_seq(j), m.n);
	check_live(j, &m, 1);
	/* The last record by a synchronous sync, which sees no commit in flight. */
	assert_int_equal(chunkd__journal_sync(j), 0);
	assert_int_equal(chunkd__journal_durable_seq(j), m.n);
	chunkd__journal_close(j);

	const struct mrec **seq = seq_of(&m, 0, m.n);
	j = open_expect(e->dirfd, seq, m.n, NULL);
	free(seq);

	/* A commit whose write was cut short by a crash: never ended, the handle just dropped. */
	fd = chunkd__journal_fd(j);
	size_t durable = m.n;
	model_append(j, &m, 8, CHUNKD_JREC_DOWNLOAD, 0);
	model_append(j, &m, 9, CHUNKD_JREC_DOWNLOAD, 0);
	assert_int_equal(chunkd__journal_pending(j, &buf, &len, &off), 0);
	assert_int_equal(chunkd__journal_begin_commit(j), 0);
	size_t part = m.recs[durable].size + 40;
	assert_int_equal(pwrite(fd, buf, part, (off_t)off), (ssize_t)part);
	chunkd__journal_close(j);
	seq = seq_of(&m, 0, m.n);
	struct chunkd_journal_stats st;
	j = open_expect(e->dirfd, seq, durable + 1, &st);
	assert_int_equal(st.cut, CHUNKD_JOURNAL_CUT_TORN);
	assert_int_equal(st.cut_offset, off + m.recs[durable].size);
	assert_int_equal(st.cut_bytes, 40);
	m.n = durable + 1;

	/* A failed commit is sticky. */
	model_append(j, &m, 10, CHUNKD_JREC_DELETE, 0);
	assert_int_equal(chunkd__journal_begin_commit(j), 0);
	chunkd__journal_end_commit(j, -EIO);
	struct chunkd_jrec r = {.type = CHUNKD_JREC_DELETE, .ts_ns = 1};
	assert_int_equal(chunkd__journal_append(j, &r), -EIO);
	assert_int_equal(chunkd__journal_pending(j, &buf, &len, &off), -EIO);
	assert_int_equal(chunkd__journal_begin_commit(j), -EIO);
	assert_int_equal(chunkd__journal_sync(j), -EIO);
	chunkd__journal_close(j);
	free(seq);
	free(frozen);
	model_free(&m);
}

/* should_compact(): more than twice the live bytes, and above the floor. */
static void test_should_compact(void **state)
{
	struct env *e = *state;
	struct chunkd_journal *j = open_new(e->dirfd);
	uint64_t id[4] = {0};
	struct chunkd_jrec r = {.type = CHUNKD_JREC_DELETE, .ts_ns = 1};
	/* 20000 distinct ids: all live, never worth compacting. */
	for (uint64_t i = 0; i < 20000; i++) {
		id[0] = i;
		memcpy(r.id, id, 32);
		assert_int_equal(chunkd__journal_append(j, &r), 0);
	}
	chunkd__journal_set_compact_floor(j, 0);
	assert_int_equal(chunkd__journal_should_compact(j), 0);
	chunkd__journal_set_compact_floor(j, CHUNKD_JOURNAL_COMPACT_FLOOR);
	/* Supersede them all twice: the file is over 1 MiB (60000 * 72 bytes) and 3x live. */
	for (int round = 0; round < 2; round++)
		for (uint64_t i = 0; i < 20000; i++) {
			id[0] = i;
			memcpy(r.id, id, 32);
			assert_int_equal(chunkd__journal_append(j, &r), 0);
		}
	assert_int_equal(chunkd__journal_should_compact(j), 1);
	chunkd__journal_set_compact_floor(j, 8u << 20);
	assert_int_equal(chunkd__journal_should_compact(j), 0);
	chunkd__journal_set_compact_floor(j, CHUNKD_JOURNAL_COMPACT_FLOOR);
	assert_int_equal(chunkd__journal_compact(j), 0);
	assert_int_equal(chunkd__journal_should_compact(j), 0);
	struct chunkd_journal_stats st;
	chunkd__journal_stats(j, &st);
	assert_int_equal(st.live_records, 20000);
	assert_int_equal(st.file_bytes, HDR_LEN + 20000 * REC_HDR);
	chunkd__journal_close(j);
}

/* ---- replay speed (printed, never asserted) -------------------------------------------------- */

static int count_cb(const struct chunkd_jrec *r, void *arg)
{
	uint64_t *n = arg;
	*n += r->type;
	return 0;
}

static void bench_open(int dirfd, const char *what, uint64_t nrec, int cold)
{
	if (cold) {
		/* Drop this file's pages (only its own: the test must not disturb the host). */
		int fd = openat(dirfd, "journal", O_RDONLY | O_CLOEXEC);
		assert_true(fd >= 0);
		assert_int_equal(fdatasync(fd), 0);
		assert_int_equal(posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED), 0);
		close(fd);
	}
	struct chunkd_journal *j = NULL;
	struct chunkd_journal_stats st;
	uint64_t sum = 0;
	assert_int_equal(chunkd__journal_open(dirfd, &j, count_cb, &sum, &st), 0);
	assert_int_equal(st.records, nrec);
	assert_int_equal(st.cut, CHUNKD_JOURNAL_CUT_NONE);
	double s = (double)st.replay_ns / 1e9;
	printf("journal replay (%s, %s): %llu records, %.1f MB in %.1f ms: %.2f M records/s, "
	       "%.0f MB/s\n",
	       what, cold ? "cold cache" : "page cache", (unsigned long long)st.records,
	       (double)st.file_bytes / 1e6, s * 1e3, (double)st.records / s / 1e6,
	       (double)st.file_bytes / s / 1e6);
	fflush(stdout);
	chunkd__journal_close(j);
}

static void test_replay_speed(void **state)
{
	struct env *e = *state;
	const uint64_t ndel = 1000000, ndl = 200000;
	struct chunkd_journal *j = open_new(e->dirfd);
	uint64_t s = 42;
	struct chunkd_jrec r = {.type = CHUNKD_JREC_DELETE, .ts_ns = 1};
	for (uint64_t i = 0; i < ndel; i++) {
		for (int w = 0; w < 4; w++)
			r.id[w] = rnd_next(&s);
		r.ticket = i;
		assert_int_equal(chunkd__journal_append(j, &r), 0);
	}
	assert_int_equal(chunkd__journal_sync(j), 0);
	chunkd__journal_close(j);
	bench_open(e->dirfd, "1M DELETE", ndel, 0);
	bench_open(e->dirfd, "1M DELETE", ndel, 1);
	assert_int_equal(unlinkat(e->dirfd, "journal", 0), 0);

	/* 200k DOWNLOAD records of 5 files with realistic names and URLs (~700 bytes each). */
	static const char *const names[5] = {"blocks.parquet", "transactions.parquet",
					     "logs.parquet", "traces.parquet", "index.json"};
	struct chunkd_dl *dl = malloc(sizeof(*dl));
	j = open_new(e->dirfd);
	r.type = CHUNKD_JREC_DOWNLOAD;
	r.dl = dl;
	dl->nfiles = 5;
	for (uint64_t i = 0; i < ndl; i++) {
		for (int w = 0; w < 4; w++)
			dl->id[w] = r.id[w] = rnd_next(&s);
		dl->dataset[0] = 7;
		dl->first_block = i * 10000;
		dl->end_block = dl->first_block + 10000;
		char hex[65];
		chunkd__hex_encode((const uint8_t *)dl->id, 32, hex);
		for (int f = 0; f < 5; f++) {
			strcpy(dl->files[f].name, names[f]);
			snprintf(dl->files[f].url, sizeof(dl->files[f].url),
				 "https://mirror-%d.example.org/eth/%020llu/%s/%s", (int)(i % 4),
				 (unsigned long long)dl->first_block, hex, names[f]);
		}
		assert_int_equal(chunkd__journal_append(j, &r), 0);
	}
	assert_int_equal(chunkd__journal_sync(j), 0);
	chunkd__journal_close(j);
	bench_open(e->dirfd, "200k DOWNLOAD x 5 files", ndl, 0);
	bench_open(e->dirfd, "200k DOWNLOAD x 5 files", ndl, 1);
	free(dl);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_create, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_round_trip, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_append_rejects_invalid, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_torn_tail_every_byte, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_corrupt_middle, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_invalid_content, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_zero_tail_is_torn, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_bad_header, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_replay_abort, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_index_model, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_compaction, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_compaction_keeps_what_it_is_told, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_refused_records, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_compaction_crash_states, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_compaction_crash_points, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_compaction_errors, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_sync_errors, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_group_commit, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_should_compact, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_replay_speed, setup, teardown),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
