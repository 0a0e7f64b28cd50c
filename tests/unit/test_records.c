/*
 * test_records.c — request records and the request ring (shm/records.c; docs/shm-layout.md,
 * "Requests: the ring and the ticket table").
 *
 * The descriptor checks are held to the chunkd_download() contract in include/chunkd.h: for every
 * rule a case just inside and a case just outside it. The decoder is the daemon's parser of
 * untrusted bytes: it is fed every truncation of valid records and random corruptions, each
 * placed right before a PROT_NONE page so that a read past the end faults (as picohttpparser's
 * test.c does), and every record it accepts must pass chunkd__check_chunk() again. The ring is
 * run against a model across many wraps (and across the 2^64 wrap of its byte counters), with
 * abandoned reservations (a client killed mid-enqueue) and hostile head, tail and header states,
 * and finally by a producer and a consumer in two processes (and two threads, for TSan).
 */
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "fixture.h"
#include "shm/records.h"

#define SQ     CHUNKD_SQ_BYTES
#define DL_HDR sizeof(struct chunkd_rec_download)

/* ---- helpers: guarded buffers ------------------------------------------------------------- */

/* A buffer whose end touches a PROT_NONE page: touching a byte past the end faults. */
struct guard {
	uint8_t *map;
	size_t maplen;
	uint8_t *end; /* first byte of the PROT_NONE page */
};

static struct guard guard; /* room for CHUNKD_REC_MAX bytes before the guard page */

static void guard_init(struct guard *g, size_t cap)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	size_t data = (cap + pg - 1) / pg * pg;
	g->maplen = data + pg;
	g->map = mmap(NULL, g->maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (g->map == MAP_FAILED || mprotect(g->map + data, pg, PROT_NONE) != 0)
		abort();
	g->end = g->map + data;
}

/*
 * Where a len-byte buffer starts so that it ends at the guard page. The decoder reads structs, so
 * the start stays 8-byte aligned: when len is not a multiple of 8 up to 7 bytes of slack remain
 * before the guard page, and decode_guarded() also decodes an exact-size heap copy, in which
 * AddressSanitizer sees those bytes.
 */
static uint8_t *guard_at(const struct guard *g, size_t len)
{
	return g->end - ((len + 7) & ~(size_t)7);
}

/* ---- helpers: descriptors ------------------------------------------------------------------- */

/* A descriptor with its own storage; one spare file and one spare byte in every string so that
 * the over-limit cases (65 files, 256-byte names, 4097-byte URLs) can be built. */
struct desc {
	chunkd_chunk c;
	chunkd_file files[CHUNKD_MAX_FILES + 1];
	char names[CHUNKD_MAX_FILES + 1][CHUNKD_MAX_NAME + 2];
	char urls[CHUNKD_MAX_FILES + 1][CHUNKD_MAX_URL + 2];
};

static struct desc *desc_new(uint32_t nfiles)
{
	struct desc *d = calloc(1, sizeof(*d));
	assert_non_null(d);
	for (uint32_t i = 0; i < CHUNKD_MAX_FILES + 1; i++) {
		snprintf(d->names[i], sizeof(d->names[i]), "file-%u.bin", i);
		snprintf(d->urls[i], sizeof(d->urls[i]), "https://example.com/data/file-%u.bin", i);
		d->files[i].name = d->names[i];
		d->files[i].url = d->urls[i];
	}
	memset(d->c.id.bytes, 0x11, sizeof(d->c.id.bytes));
	memset(d->c.dataset.bytes, 0x22, sizeof(d->c.dataset.bytes));
	d->c.first_block = 1000;
	d->c.end_block = 2000;
	d->c.files = d->files;
	d->c.nfiles = nfiles;
	return d;
}

/* chunkd__check_chunk(), which must explain every rejection. */
static int check(const chunkd_chunk *c)
{
	char why[160];
	memset(why, 0, sizeof(why));
	int r = chunkd__check_chunk(c, why, sizeof(why));
	if (r < 0)
		assert_true(why[0] != '\0');
	return r;
}

static void fill(char *dst, char ch, size_t n)
{
	memset(dst, ch, n);
	dst[n] = '\0';
}

/* Mostly short lengths, often the extremes 1 and max. */
static size_t rand_len(uint64_t *s, size_t max)
{
	switch (fixture_rand(s) % 8) {
	case 0:
		return max;
	case 1:
		return 1;
	case 2:
		return 1 + fixture_rand(s) % max;
	default:
		return 1 + fixture_rand(s) % (max < 40 ? max : 40);
	}
}

/* Any bytes but NUL, '/' and '\n': the contract allows control characters and non-ASCII. */
static void rand_name(uint64_t *s, char *dst, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		char ch;
		do
			ch = (char)(1 + fixture_rand(s) % 255);
		while (ch == '/' || ch == '\n');
		dst[i] = ch;
	}
	dst[len] = '\0';
}

static void rand_url(uint64_t *s, char *dst, size_t len)
{
	static const char *const schemes[] = {"http://", "https://", "s3://", "file://"};
	const char *sc = schemes[fixture_rand(s) % 4];
	size_t n = strlen(sc);
	if (len <= n)
		len = n + 1;
	memcpy(dst, sc, n);
	for (size_t i = n; i < len; i++)
		dst[i] = (char)(0x21 + fixture_rand(s) % (0x7f - 0x21)); /* printable, no space */
	dst[len] = '\0';
}

static void rand_desc(struct desc *d, uint64_t *s)
{
	uint32_t n = fixture_rand(s) % 8 == 0 ? CHUNKD_MAX_FILES
					      : 1 + (uint32_t)(fixture_rand(s) % CHUNKD_MAX_FILES);
	for (uint32_t i = 0; i < n; i++) {
		/* Redraw names that the rules forbid or that repeat an earlier one. */
		for (;;) {
			size_t nl = rand_len(s, CHUNKD_MAX_NAME);
			rand_name(s, d->names[i], nl);
			int dup = 0;
			for (uint32_t k = 0; k < i; k++)
				dup |= !strcmp(d->names[k], d->names[i]);
			if (!dup && chunkd__check_file_name(d->names[i], nl) == 0)
				break;
		}
		rand_url(s, d->urls[i], rand_len(s, CHUNKD_MAX_URL));
	}
	for (int k = 0; k < 4; k++) {
		uint64_t a = fixture_rand(s), b = fixture_rand(s);
		memcpy(d->c.id.bytes + 8 * k, &a, 8);
		memcpy(d->c.dataset.bytes + 8 * k, &b, 8);
	}
	d->c.first_block = fixture_rand(s) % 2 ? fixture_rand(s) : fixture_rand(s) % 1000;
	if (d->c.first_block == UINT64_MAX)
		d->c.first_block--;
	uint64_t room = UINT64_MAX - d->c.first_block;
	d->c.end_block = d->c.first_block + 1 + fixture_rand(s) % (room < 100000 ? room : 100000);
	d->c.nfiles = n;
}

/* The largest descriptor the contract allows: 64 files, 255-byte names, 4096-byte URLs. */
static void largest_desc(struct desc *d)
{
	for (uint32_t i = 0; i < CHUNKD_MAX_FILES; i++) {
		fill(d->names[i], 'n', CHUNKD_MAX_NAME);
		snprintf(d->names[i], 8, "%07u", i); /* distinct; snprintf's NUL is overwritten */
		d->names[i][7] = 'n';
		memcpy(d->urls[i], "s3://", 5);
		fill(d->urls[i] + 5, 'u', CHUNKD_MAX_URL - 5);
	}
	d->c.nfiles = CHUNKD_MAX_FILES;
}

/* Bytes of a download record before its zero padding. */
static size_t body_len(const chunkd_chunk *c)
{
	size_t len = DL_HDR;
	for (uint32_t i = 0; i < c->nfiles; i++)
		len += 4 + strlen(c->files[i].name) + strlen(c->files[i].url);
	return len;
}

/* ---- helpers: decoding ---------------------------------------------------------------------- */

static struct chunkd_dl *dl_a, *dl_b;

/*
 * Decode `len` bytes of `rec` twice — right before the guard page and from an exact-size heap
 * copy — and require the same answer; on failure the decoder must say why.
 */
static int decode_guarded(const void *rec, size_t len, struct chunkd_dl *out)
{
	char why[160] = "";
	uint8_t *g = guard_at(&guard, len);
	memcpy(g, rec, len);
	int r = chunkd__rec_decode_download(g, len, out, why, sizeof(why));
	uint8_t *h = malloc(len ? len : 1);
	assert_non_null(h);
	memcpy(h, rec, len);
	char why2[160] = "";
	int r2 = chunkd__rec_decode_download(h, len, dl_b, why2, sizeof(why2));
	free(h);
	assert_int_equal(r, r2);
	if (r < 0)
		assert_true(why[0] != '\0');
	return r;
}

/* A decoded record must satisfy the rules of chunkd_download() again, with terminated strings. */
static void assert_revalidates(const struct chunkd_dl *dl)
{
	static chunkd_file files[CHUNKD_MAX_FILES];
	assert_in_range(dl->nfiles, 1, CHUNKD_MAX_FILES);
	for (uint32_t i = 0; i < dl->nfiles; i++) {
		assert_non_null(memchr(dl->files[i].name, 0, sizeof(dl->files[i].name)));
		assert_non_null(memchr(dl->files[i].url, 0, sizeof(dl->files[i].url)));
		files[i].name = dl->files[i].name;
		files[i].url = dl->files[i].url;
	}
	chunkd_chunk c = {.first_block = dl->first_block,
			  .end_block = dl->end_block,
			  .files = files,
			  .nfiles = dl->nfiles};
	memcpy(c.id.bytes, dl->id, sizeof(c.id.bytes));
	memcpy(c.dataset.bytes, dl->dataset, sizeof(c.dataset.bytes));
	char why[160] = "";
	int r = chunkd__check_chunk(&c, why, sizeof(why));
	if (r)
		print_error("decoded record does not revalidate: %s\n", why);
	assert_int_equal(r, 0);
}

static void assert_decoded_equals(const struct chunkd_dl *dl, const chunkd_chunk *c,
				  uint64_t ticket)
{
	assert_int_equal(dl->ticket, ticket);
	assert_memory_equal(dl->id, c->id.bytes, 32);
	assert_memory_equal(dl->dataset, c->dataset.bytes, 32);
	assert_int_equal(dl->first_block, c->first_block);
	assert_int_equal(dl->end_block, c->end_block);
	assert_int_equal(dl->nfiles, c->nfiles);
	for (uint32_t i = 0; i < c->nfiles; i++) {
		assert_string_equal(dl->files[i].name, c->files[i].name);
		assert_string_equal(dl->files[i].url, c->files[i].url);
	}
}

/* ---- descriptor checks: the chunkd_download() contract -------------------------------------- */

static void test_check_nfiles(void **state)
{
	struct desc *d = desc_new(1);
	assert_int_equal(check(&d->c), 0);
	d->c.nfiles = CHUNKD_MAX_FILES;
	assert_int_equal(check(&d->c), 0);
	d->c.nfiles = 0;
	assert_int_equal(check(&d->c), -EINVAL);
	d->c.nfiles = CHUNKD_MAX_FILES + 1; /* 65 well-formed, distinct files */
	assert_int_equal(check(&d->c), -EINVAL);
	d->c.nfiles = UINT32_MAX;
	assert_int_equal(check(&d->c), -EINVAL);
	free(d);
}

static void test_check_names(void **state)
{
	static const struct {
		const char *name;
		int want;
	} cases[] = {
	    {"a", 0},
	    {"data.bin", 0},
	    {"...", 0},
	    {".a", 0},
	    {"..a", 0},
	    {"a.", 0},
	    {".chunkd-meta.tmp", 0},
	    {".CHUNKD-META", 0}, /* names are case-sensitive */
	    {"chunkd-meta", 0},
	    {"with space", 0},
	    {"tab\there", 0}, /* only '/' and '\n' are forbidden characters */
	    {"cr\r", 0},
	    {"\x01\x7f", 0},
	    {"\xc3\xa9t\xc3\xa9", 0}, /* UTF-8 */
	    {"\xff", 0},
	    {"", -EINVAL},
	    {".", -EINVAL},
	    {"..", -EINVAL},
	    {CHUNKD_META_NAME, -EINVAL},
	    {"/", -EINVAL},
	    {"a/b", -EINVAL},
	    {"/a", -EINVAL},
	    {"a/", -EINVAL},
	    {"../a", -EINVAL},
	    {"\n", -EINVAL},
	    {"a\nb", -EINVAL},
	    {"a\n", -EINVAL},
	};
	struct desc *d = desc_new(5);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(d->names[3], sizeof(d->names[3]), "%s", cases[i].name);
		int r = check(&d->c);
		if (r != cases[i].want)
			print_error("name case %zu (\"%s\")\n", i, cases[i].name);
		assert_int_equal(r, cases[i].want);
		/* The daemon's side applies the same rule to the bytes it copied out. */
		assert_int_equal(chunkd__check_file_name(cases[i].name, strlen(cases[i].name)),
				 cases[i].want);
	}
	snprintf(d->names[3], sizeof(d->names[3]), "file-3.bin");
	/* Length: 255 bytes is the limit, at both ends of the file list. */
	fill(d->names[0], 'x', CHUNKD_MAX_NAME);
	fill(d->names[4], 'y', CHUNKD_MAX_NAME);
	assert_int_equal(check(&d->c), 0);
	fill(d->names[4], 'y', CHUNKD_MAX_NAME + 1);
	assert_int_equal(check(&d->c), -EINVAL);
	fill(d->names[4], 'y', CHUNKD_MAX_NAME);
	fill(d->names[0], 'x', CHUNKD_MAX_NAME + 1);
	assert_int_equal(check(&d->c), -EINVAL);

	/* Byte-counted names as the decoder sees them: NUL inside, prefixes of forbidden names. */
	assert_int_equal(chunkd__check_file_name("a\0b", 3), -EINVAL);
	assert_int_equal(chunkd__check_file_name("\0", 1), -EINVAL);
	assert_int_equal(chunkd__check_file_name("..", 1), -EINVAL);  /* "." */
	assert_int_equal(chunkd__check_file_name("...", 2), -EINVAL); /* ".." */
	assert_int_equal(chunkd__check_file_name(CHUNKD_META_NAME, sizeof(CHUNKD_META_NAME) - 2),
			 0);
	assert_int_equal(chunkd__check_file_name("abc", 0), -EINVAL);
	free(d);
}

static void test_check_urls(void **state)
{
	static const struct {
		const char *url;
		int want;
	} cases[] = {
	    {"http://h/x", 0},
	    {"https://h/x", 0},
	    {"s3://bucket/key", 0},
	    {"file:///tmp/x", 0},
	    {"http://h:8080/a?b=c&d=%20#f", 0},
	    {"https://h/~!$'()*+,;=:@[]{}|^`\"<>\\", 0},
	    {"", -EINVAL},
	    {"ftp://h/x", -EINVAL},
	    {"http:/x", -EINVAL},
	    {"http:x", -EINVAL},
	    {"http//x", -EINVAL},
	    {"httpx://h", -EINVAL},
	    {"xhttp://h", -EINVAL},
	    {"https:/x", -EINVAL},
	    {"s3:/b", -EINVAL},
	    {"file:/x", -EINVAL},
	    {"/tmp/x", -EINVAL},
	    /* A scheme alone names nothing (chunkd.h is silent; records.c requires a byte more). */
	    {"http://", -EINVAL},
	    {"https://", -EINVAL},
	    {"s3://", -EINVAL},
	    {"file://", -EINVAL},
	    {"HTTP://h/x", -EINVAL}, /* schemes are lowercase only */
	    {"Https://h/x", -EINVAL},
	    {"S3://b/k", -EINVAL},
	    {"FILE:///x", -EINVAL},
	    {"http://h/a b", -EINVAL},
	    {" http://h/x", -EINVAL},
	    {"http://h/x ", -EINVAL},
	    {"http://h/\t", -EINVAL},
	    {"http://h/\r", -EINVAL},
	    {"http://h/\n", -EINVAL},
	    {"http://h/\x01", -EINVAL},
	    {"http://h/\x1f", -EINVAL},
	    {"http://h/\x7f", -EINVAL}, /* DEL is a control character */
	    /* Beyond the chunkd.h wording but per records.h: printable ASCII only. */
	    {"http://h/\x80", -EINVAL},
	    {"http://h/\xc3\xa9", -EINVAL},
	};
	struct desc *d = desc_new(3);
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		snprintf(d->urls[1], sizeof(d->urls[1]), "%s", cases[i].url);
		int r = check(&d->c);
		if (r != cases[i].want)
			print_error("URL case %zu (\"%s\")\n", i, cases[i].url);
		assert_int_equal(r, cases[i].want);
		assert_int_equal(chunkd__check_url(cases[i].url, strlen(cases[i].url)),
				 cases[i].want);
	}
	snprintf(d->urls[1], sizeof(d->urls[1]), "http://h/x");
	/* Length: 4096 bytes is the limit, for every scheme. */
	static const char *const schemes[] = {"http://", "https://", "s3://", "file://"};
	for (size_t k = 0; k < 4; k++) {
		size_t n = strlen(schemes[k]);
		memcpy(d->urls[2], schemes[k], n);
		fill(d->urls[2] + n, 'u', CHUNKD_MAX_URL - n);
		assert_int_equal(check(&d->c), 0);
		fill(d->urls[2] + n, 'u', CHUNKD_MAX_URL + 1 - n);
		assert_int_equal(check(&d->c), -EINVAL);
		fill(d->urls[2] + n, 'u', 1);
		assert_int_equal(check(&d->c), 0);
	}
	assert_int_equal(chunkd__check_url("http://h/\0x", 11), -EINVAL);
	assert_int_equal(chunkd__check_url("http://h", 0), -EINVAL);
	free(d);
}

static void test_check_duplicates(void **state)
{
	struct desc *d = desc_new(CHUNKD_MAX_FILES);
	assert_int_equal(check(&d->c), 0);
	strcpy(d->names[63], d->names[0]);
	assert_int_equal(check(&d->c), -EINVAL);
	snprintf(d->names[63], sizeof(d->names[63]), "file-63.bin");
	strcpy(d->names[40], d->names[39]);
	assert_int_equal(check(&d->c), -EINVAL);
	/* Near misses are distinct names; the same URL twice is allowed. */
	strcpy(d->names[39], "a");
	strcpy(d->names[40], "A");
	assert_int_equal(check(&d->c), 0);
	strcpy(d->names[40], "ab");
	assert_int_equal(check(&d->c), 0);
	strcpy(d->urls[5], d->urls[6]);
	assert_int_equal(check(&d->c), 0);
	free(d);
}

static void test_check_blocks(void **state)
{
	struct desc *d = desc_new(2);
	static const struct {
		uint64_t first, end;
		int want;
	} cases[] = {
	    {0, 1, 0},
	    {1000, 1001, 0},
	    {0, UINT64_MAX, 0},
	    {UINT64_MAX - 1, UINT64_MAX, 0},
	    {0, 0, -EINVAL},
	    {5, 5, -EINVAL},
	    {6, 5, -EINVAL},
	    {UINT64_MAX, UINT64_MAX, -EINVAL},
	    {UINT64_MAX, 0, -EINVAL},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		d->c.first_block = cases[i].first;
		d->c.end_block = cases[i].end;
		assert_int_equal(check(&d->c), cases[i].want);
	}
	free(d);
}

static void test_check_nulls(void **state)
{
	struct desc *d = desc_new(CHUNKD_MAX_FILES);
	assert_int_equal(check(NULL), -EINVAL);
	d->c.files = NULL;
	assert_int_equal(check(&d->c), -EINVAL);
	d->c.files = d->files;
	d->files[63].name = NULL;
	assert_int_equal(check(&d->c), -EINVAL);
	d->files[63].name = d->names[63];
	d->files[0].url = NULL;
	assert_int_equal(check(&d->c), -EINVAL);
	d->files[0].url = d->urls[0];
	assert_int_equal(check(&d->c), 0);

	/* `why` may be NULL, and a short one is truncated, not overrun. */
	d->c.nfiles = 0;
	assert_int_equal(chunkd__check_chunk(&d->c, NULL, 0), -EINVAL);
	assert_int_equal(chunkd__check_chunk(&d->c, NULL, 100), -EINVAL);
	char why[8];
	memset(why, 'Z', sizeof(why));
	assert_int_equal(chunkd__check_chunk(&d->c, why, 4), -EINVAL);
	assert_int_equal(strlen(why), 3);
	assert_int_equal(why[4], 'Z');
	assert_int_equal(chunkd__check_chunk(&d->c, why, 0), -EINVAL);
	free(d);
}

/* Strings are read with bounded lengths: an unterminated over-long name or URL ending at a
 * PROT_NONE page is rejected without reading past the limit + 1. */
static void test_check_bounded_reads(void **state)
{
	struct desc *d = desc_new(1);
	char *name = (char *)guard.end - (CHUNKD_MAX_NAME + 1);
	memset(name, 'n', CHUNKD_MAX_NAME + 1);
	d->files[0].name = name;
	assert_int_equal(check(&d->c), -EINVAL);
	d->files[0].name = d->names[0];
	char *url = (char *)guard.end - (CHUNKD_MAX_URL + 1);
	memcpy(url, "http://", 7);
	memset(url + 7, 'u', CHUNKD_MAX_URL + 1 - 7);
	d->files[0].url = url;
	assert_int_equal(check(&d->c), -EINVAL);
	free(d);
}

/* ---- record encoding and decoding ----------------------------------------------------------- */

/* Encode into a buffer ending at the guard page, check the length rules, decode, compare, and
 * re-encode the decoded form: the bytes must be identical (the encoding is canonical). */
static void roundtrip(const chunkd_chunk *c, uint64_t ticket, uint8_t *copy)
{
	assert_int_equal(check(c), 0);
	size_t len = chunkd__rec_download_len(c);
	assert_int_equal(len % CHUNKD_REC_ALIGN, 0);
	assert_true(len >= body_len(c) && len < body_len(c) + CHUNKD_REC_ALIGN);
	assert_true(len <= CHUNKD_REC_MAX);

	uint8_t *buf = guard.end - len;
	memset(buf, 0xa5, len);
	assert_int_equal(chunkd__rec_encode_download(c, ticket, buf, len - 1), -ENOSPC);
	for (size_t i = 0; i < len; i++)
		assert_int_equal(buf[i], 0xa5); /* -ENOSPC writes nothing */
	assert_int_equal(chunkd__rec_encode_download(c, ticket, buf, len), (int)len);
	const struct chunkd_rec_download *r = (const void *)buf;
	assert_int_equal(r->h.len, len);
	assert_int_equal(r->h.type, CHUNKD_REC_DOWNLOAD);
	assert_int_equal(r->h.nfiles, c->nfiles);
	for (size_t i = body_len(c); i < len; i++)
		assert_int_equal(buf[i], 0); /* zero padding */
	memcpy(copy, buf, len);

	assert_int_equal(decode_guarded(copy, len, dl_a), 0);
	assert_decoded_equals(dl_a, c, ticket);
	assert_revalidates(dl_a);

	static chunkd_file files[CHUNKD_MAX_FILES];
	chunkd_chunk again = {.first_block = dl_a->first_block,
			      .end_block = dl_a->end_block,
			      .files = files,
			      .nfiles = dl_a->nfiles};
	memcpy(again.id.bytes, dl_a->id, 32);
	memcpy(again.dataset.bytes, dl_a->dataset, 32);
	for (uint32_t i = 0; i < dl_a->nfiles; i++)
		files[i] = (chunkd_file){dl_a->files[i].name, dl_a->files[i].url};
	assert_int_equal(chunkd__rec_encode_download(&again, dl_a->ticket, buf, len), (int)len);
	assert_memory_equal(buf, copy, len);
}

static void test_roundtrip_random(void **state)
{
	struct desc *d = desc_new(1);
	uint8_t *copy = malloc(CHUNKD_REC_MAX);
	assert_non_null(copy);
	uint64_t seed = 0x5eed0001, maxlen = 0;
	for (int it = 0; it < 400; it++) {
		rand_desc(d, &seed);
		roundtrip(&d->c, fixture_rand(&seed), copy);
		size_t len = chunkd__rec_download_len(&d->c);
		maxlen = len > maxlen ? len : maxlen;
	}
	print_message("largest random record: %llu bytes\n", (unsigned long long)maxlen);
	free(copy);
	free(d);
}

static void test_roundtrip_largest(void **state)
{
	struct desc *d = desc_new(1);
	largest_desc(d);
	uint8_t *copy = malloc(CHUNKD_REC_MAX);
	assert_non_null(copy);
	assert_int_equal(chunkd__rec_download_len(&d->c), CHUNKD_REC_MAX);
	roundtrip(&d->c, UINT64_MAX, copy);
	/* Two of them fit in an empty ring wherever it starts (the PAD in between included). */
	struct chunkd_req_map req;
	fixture_req(&req, 1);
	struct chunkd_req_client *cl = chunkd__req_client(&req, 0);
	uint64_t starts[] = {0, SQ - 16, SQ / 2, SQ - CHUNKD_REC_MAX + 16};
	for (size_t k = 0; k < sizeof(starts) / sizeof(starts[0]); k++) {
		cl->ctl.sq_tail = cl->d.sq_head = 7 * (uint64_t)SQ + starts[k];
		uint64_t nt;
		for (int i = 0; i < 2; i++) {
			uint8_t *p = chunkd__sq_reserve(cl, CHUNKD_REC_MAX, &nt);
			assert_non_null(p);
			assert_int_equal(
			    chunkd__rec_encode_download(&d->c, (uint64_t)i + 1, p, CHUNKD_REC_MAX),
			    CHUNKD_REC_MAX);
			chunkd__sq_commit(cl, nt);
		}
		uint64_t head = cl->d.sq_head;
		for (int i = 0; i < 2; i++) {
			int r = chunkd__sq_pop(cl, &head, cl->ctl.sq_tail, copy, CHUNKD_REC_MAX);
			assert_int_equal(r, CHUNKD_REC_MAX);
			assert_int_equal(decode_guarded(copy, (size_t)r, dl_a), 0);
			assert_decoded_equals(dl_a, &d->c, (uint64_t)i + 1);
		}
		assert_int_equal(head, cl->ctl.sq_tail);
	}
	fixture_req_free(&req);
	free(copy);
	free(d);
}

static void test_encode_delete(void **state)
{
	chunkd_id id;
	for (int i = 0; i < 32; i++)
		id.bytes[i] = (uint8_t)(i * 7 + 1);
	uint8_t *buf = guard.end - sizeof(struct chunkd_rec_delete);
	memset(buf, 0xa5, sizeof(struct chunkd_rec_delete));
	assert_int_equal(
	    chunkd__rec_encode_delete(&id, 9, buf, sizeof(struct chunkd_rec_delete) - 1), -ENOSPC);
	assert_int_equal(buf[0], 0xa5);
	assert_int_equal(chunkd__rec_encode_delete(&id, 9, buf, sizeof(struct chunkd_rec_delete)),
			 (int)sizeof(struct chunkd_rec_delete));
	const struct chunkd_rec_delete *r = (const void *)buf;
	assert_int_equal(r->h.len, sizeof(struct chunkd_rec_delete));
	assert_int_equal(r->h.len % CHUNKD_REC_ALIGN, 0);
	assert_int_equal(r->h.type, CHUNKD_REC_DELETE);
	assert_int_equal(r->h.ticket, 9);
	assert_memory_equal(r->id, id.bytes, 32);
	/* A delete record is not a download record. */
	assert_int_equal(decode_guarded(buf, sizeof(struct chunkd_rec_delete), dl_a), -EBADMSG);
}

/* A medium record with padding, names and URLs of assorted lengths, for the hostile tests. */
static struct desc *medium_desc(void)
{
	struct desc *d = desc_new(7);
	fill(d->names[2], 'n', CHUNKD_MAX_NAME);
	fill(d->names[4], 'm', 1);
	snprintf(d->urls[3], sizeof(d->urls[3]), "file:///a");
	memcpy(d->urls[5], "s3://b/", 7);
	fill(d->urls[5] + 7, 'k', 1500);
	assert_int_equal(check(&d->c), 0);
	assert_true(body_len(&d->c) % CHUNKD_REC_ALIGN != 0); /* some padding to cut */
	return d;
}

/*
 * Truncate a valid record at every length. As is, the header's length no longer matches: always
 * -EBADMSG. With the header's length patched to the cut (a consistent lie), the parser has to
 * find the cut itself: -EBADMSG anywhere inside the files, and also when only padding is
 * missing (a record's length is exactly its body rounded up to CHUNKD_REC_ALIGN, nothing else).
 */
static void truncations(const chunkd_chunk *c, size_t step)
{
	size_t len = chunkd__rec_download_len(c), body = body_len(c);
	uint8_t *rec = malloc(len), *cut = malloc(len);
	assert_non_null(rec);
	assert_non_null(cut);
	assert_int_equal(chunkd__rec_encode_download(c, 42, rec, len), (int)len);
	unsigned ok = 0;
	for (size_t n = 0; n < len; n += (n < 2 * DL_HDR || n + 2 * step > len) ? 1 : step) {
		assert_int_equal(decode_guarded(rec, n, dl_a), -EBADMSG);
		memcpy(cut, rec, n);
		if (n >= sizeof(uint32_t)) {
			uint32_t l = (uint32_t)n;
			memcpy(cut, &l, sizeof(l));
		}
		int r = decode_guarded(cut, n, dl_a);
		if (r != -EBADMSG)
			print_error("cut at %zu of %zu (body %zu)\n", n, len, body);
		assert_int_equal(r, -EBADMSG);
		ok += n >= body;
	}
	/* Some cuts fell in the padding, and the whole record still decodes. */
	assert_int_equal(ok, len - body);
	assert_int_equal(decode_guarded(rec, len, dl_a), 0);
	assert_decoded_equals(dl_a, c, 42);
	free(rec);
	free(cut);
}

static void test_decode_truncations(void **state)
{
	struct desc *d = medium_desc();
	truncations(&d->c, 1);
	largest_desc(d);
	truncations(&d->c, 97); /* every cut near both ends, sampled in between */
	free(d);
}

/* Offsets of each file's u16 name and URL lengths in the encoding of c. */
static size_t length_fields(const chunkd_chunk *c, size_t *offs)
{
	size_t n = 0, p = DL_HDR;
	for (uint32_t i = 0; i < c->nfiles; i++) {
		offs[n++] = p;
		offs[n++] = p + 2;
		p += 4 + strlen(c->files[i].name) + strlen(c->files[i].url);
	}
	return n;
}

static void test_decode_flips(void **state)
{
	struct desc *d = medium_desc();
	size_t len = chunkd__rec_download_len(&d->c);
	uint8_t *rec = malloc(len), *work = malloc(len > 8192 ? len : 8192);
	assert_non_null(rec);
	assert_non_null(work);
	assert_int_equal(chunkd__rec_encode_download(&d->c, 7, rec, len), (int)len);
	size_t offs[2 * CHUNKD_MAX_FILES];
	size_t noffs = length_fields(&d->c, offs);
	uint64_t seed = 0xf11b5, n_ok = 0, n_inval = 0, n_badmsg = 0;
	for (int it = 0; it < 30000; it++) {
		memcpy(work, rec, len);
		int k = 1 + (int)(fixture_rand(&seed) % 6);
		for (int j = 0; j < k; j++) {
			uint64_t x = fixture_rand(&seed);
			size_t at = (size_t)(fixture_rand(&seed) % len);
			switch (x % 5) {
			case 0: /* a random byte anywhere */
				work[at] = (uint8_t)(x >> 8);
				break;
			case 1: /* one bit anywhere */
				work[at] ^= (uint8_t)(1u << ((x >> 8) % 8));
				break;
			case 2: /* a byte of the fixed header (after len) */
				work[4 + (x >> 8) % (DL_HDR - 4)] = (uint8_t)(x >> 16);
				break;
			case 3: { /* a name or URL length: random, extreme or off by a little */
				static const uint16_t special[] = {0,    1,    255,   256,
								   4096, 4097, 0xffff};
				uint16_t v;
				size_t o = offs[(x >> 8) % noffs];
				memcpy(&v, work + o, 2);
				if ((x >> 20) % 3 == 0)
					v = special[(x >> 24) % 7];
				else if ((x >> 20) % 3 == 1)
					v = (uint16_t)(v + (int)((x >> 24) % 9) - 4);
				else
					v = (uint16_t)(x >> 32);
				memcpy(work + o, &v, 2);
				break;
			}
			default: { /* nfiles */
				uint16_t v = (uint16_t)((x >> 8) % 3 ? (x >> 16) % 70 : x >> 16);
				memcpy(work + offsetof(struct chunkd_rec_hdr, nfiles), &v, 2);
				break;
			}
			}
		}
		int r = decode_guarded(work, len, dl_a);
		if (r == 0) {
			assert_revalidates(dl_a);
			n_ok++;
		} else if (r == -EINVAL) {
			n_inval++;
		} else {
			assert_int_equal(r, -EBADMSG);
			n_badmsg++;
		}
	}
	print_message("flips: %llu decoded and revalidated, %llu -EINVAL, %llu -EBADMSG\n",
		      (unsigned long long)n_ok, (unsigned long long)n_inval,
		      (unsigned long long)n_badmsg);
	/* Every outcome must be exercised, or the mutations are not reaching the parser. */
	assert_true(n_ok > 100 && n_inval > 100 && n_badmsg > 100);

	/* Garbage behind a plausible header, at every length up to two pages. */
	for (size_t n = DL_HDR; n < 8192; n++) {
		for (size_t i = 0; i < n; i++)
			work[i] = (uint8_t)fixture_rand(&seed);
		struct chunkd_rec_hdr h = {.len = (uint32_t)n,
					   .type = CHUNKD_REC_DOWNLOAD,
					   .nfiles = (uint16_t)(1 + n % CHUNKD_MAX_FILES)};
		memcpy(work, &h, sizeof(h));
		memset(work + offsetof(struct chunkd_rec_download, first_block), 0, 8);
		int r = decode_guarded(work, n, dl_a);
		if (r == 0)
			assert_revalidates(dl_a);
		else
			assert_true(r == -EBADMSG || r == -EINVAL);
	}
	free(rec);
	free(work);
	free(d);
}

/* Targeted corruptions of a one-file record, each with the answer it must get. */
static void test_decode_fields(void **state)
{
	struct desc *d = desc_new(2);
	snprintf(d->names[1], sizeof(d->names[1]), "ab");
	snprintf(d->urls[1], sizeof(d->urls[1]), "http://h/xyz");
	size_t len = chunkd__rec_download_len(&d->c);
	uint8_t *rec = malloc(len + 8192), *w = malloc(len + 8192);
	assert_non_null(rec);
	assert_non_null(w);
	assert_int_equal(chunkd__rec_encode_download(&d->c, 3, rec, len), (int)len);
	size_t offs[4];
	length_fields(&d->c, offs);
	size_t f1 = offs[2]; /* file 1: u16 2, u16 12, "ab", "http://h/xyz" */
	struct chunkd_rec_download *r;
	uint16_t v;

#define RESET()      (memcpy(w, rec, len), r = (struct chunkd_rec_download *)w)
#define EXPECT(want) assert_int_equal(decode_guarded(w, len, dl_a), (want))
	RESET();
	EXPECT(0);
	RESET(), r->h.type = CHUNKD_REC_DELETE, EXPECT(-EBADMSG);
	RESET(), r->h.type = CHUNKD_REC_PAD, EXPECT(-EBADMSG);
	RESET(), r->h.type = 0, EXPECT(-EBADMSG);
	RESET(), r->h.len = (uint32_t)len + 16, EXPECT(-EBADMSG);
	RESET(), r->h.len = (uint32_t)len - 16, EXPECT(-EBADMSG);
	RESET(), r->h.len = 0, EXPECT(-EBADMSG);
	RESET(), r->h.nfiles = 0;
	assert_true(decode_guarded(w, len, dl_a) < 0);
	RESET(), r->h.nfiles = CHUNKD_MAX_FILES + 1;
	assert_true(decode_guarded(w, len, dl_a) < 0);
	RESET(), r->h.nfiles = 0xffff;
	assert_true(decode_guarded(w, len, dl_a) < 0);
	RESET(), r->h.nfiles = 3; /* a third file would start in the zero padding */
	assert_true(decode_guarded(w, len, dl_a) < 0);
	RESET(), r->end_block = r->first_block, EXPECT(-EINVAL);
	RESET(), r->first_block = UINT64_MAX, EXPECT(-EINVAL);
	v = 0, RESET(), memcpy(w + f1, &v, 2), EXPECT(-EINVAL); /* empty name */
	v = 0xffff, RESET(), memcpy(w + f1, &v, 2), EXPECT(-EBADMSG);
	v = 0, RESET(), memcpy(w + f1 + 2, &v, 2), EXPECT(-EINVAL); /* empty URL */
	v = 0xffff, RESET(), memcpy(w + f1 + 2, &v, 2), EXPECT(-EBADMSG);
	RESET(), w[f1 + 4 + 1] = '/', EXPECT(-EINVAL);
	RESET(), w[f1 + 4 + 1] = '\n', EXPECT(-EINVAL);
	RESET(), w[f1 + 4 + 1] = '\0', EXPECT(-EINVAL);
	RESET(), w[f1 + 4] = '.', w[f1 + 5] = '.', EXPECT(-EINVAL);
	RESET(), w[f1 + 4 + 2 + 8] = ' ', EXPECT(-EINVAL);
	RESET(), w[f1 + 4 + 2 + 8] = '\0', EXPECT(-EINVAL);
	RESET(), w[f1 + 4 + 2] = 'H', EXPECT(-EINVAL);
	/* Name length 3 swallows the URL's first byte: the URL no longer has a scheme. */
	v = 3, RESET(), memcpy(w + f1, &v, 2), EXPECT(-EINVAL);
#undef EXPECT
#undef RESET

	/* Over-long strings that are present in full: -EINVAL, never a write past the fields. */
	{
		struct desc *e = desc_new(1);
		fill(e->names[0], 'n', CHUNKD_MAX_NAME + 1);
		fill(e->urls[0], 'u', CHUNKD_MAX_URL + 1);
		memcpy(e->urls[0], "file://", 7);
		size_t l2 = chunkd__rec_download_len(&e->c);
		assert_true(l2 <= len + 8192);
		/* The encoder does not validate; it is only ever given validated descriptors. */
		assert_int_equal(chunkd__rec_encode_download(&e->c, 1, w, l2), (int)l2);
		assert_int_equal(decode_guarded(w, l2, dl_a), -EINVAL);
		fill(e->names[0], 'n', CHUNKD_MAX_NAME);
		l2 = chunkd__rec_download_len(&e->c);
		assert_int_equal(chunkd__rec_encode_download(&e->c, 1, w, l2), (int)l2);
		assert_int_equal(decode_guarded(w, l2, dl_a), -EINVAL);
		fill(e->urls[0] + 7, 'u', CHUNKD_MAX_URL - 7);
		l2 = chunkd__rec_download_len(&e->c);
		assert_int_equal(chunkd__rec_encode_download(&e->c, 1, w, l2), (int)l2);
		assert_int_equal(decode_guarded(w, l2, dl_a), 0);
		free(e);
	}
	/* Duplicate names decoded from the ring. */
	strcpy(d->names[1], d->names[0]);
	len = chunkd__rec_download_len(&d->c);
	assert_int_equal(chunkd__rec_encode_download(&d->c, 3, w, len), (int)len);
	assert_int_equal(decode_guarded(w, len, dl_a), -EINVAL);
	/* Lengths below the fixed header never touch the bytes. */
	for (size_t n = 0; n < DL_HDR; n++)
		assert_int_equal(chunkd__rec_decode_download(guard.end - n, n, dl_a, NULL, 0),
				 -EBADMSG);
	free(rec);
	free(w);
	free(d);
}

/* ---- the ring ------------------------------------------------------------------------------- */

/*
 * Ring test records: the header (type DOWNLOAD or DELETE, never PAD; ticket = sequence number,
 * nfiles = its low bits), an FNV-1a checksum of everything after it, then bytes drawn from a
 * generator seeded by the sequence number. The length is a function of the sequence number too,
 * so the consumer knows exactly what to expect.
 */
#define RING_MIN 32u

static uint64_t seq_seed(uint64_t seq)
{
	return (seq + 1) * 0x9e3779b97f4a7c15ull | 1;
}

static uint32_t ring_rec_len(uint64_t seq, unsigned big_one_in)
{
	uint64_t s = seq_seed(seq) ^ 0xabcdef;
	uint64_t x = fixture_rand(&s), y = fixture_rand(&s);
	uint64_t units;
	if (x % big_one_in == 0)
		units = y % ((CHUNKD_REC_MAX - RING_MIN) / CHUNKD_REC_ALIGN + 1);
	else if (x % 8 == 1)
		units = y % (32768 / CHUNKD_REC_ALIGN);
	else
		units = y % 128;
	return RING_MIN + (uint32_t)units * CHUNKD_REC_ALIGN;
}

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;
	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

static void ring_rec_fill(uint8_t *p, uint64_t seq, uint32_t len)
{
	struct chunkd_rec_hdr h = {.len = len,
				   .type = seq % 2 ? CHUNKD_REC_DOWNLOAD : CHUNKD_REC_DELETE,
				   .nfiles = (uint16_t)seq,
				   .ticket = seq};
	memcpy(p, &h, sizeof(h));
	uint64_t s = seq_seed(seq);
	for (uint32_t i = 24; i < len; i += 8) {
		uint64_t x = fixture_rand(&s);
		memcpy(p + i, &x, 8);
	}
	uint64_t sum = fnv1a(p + 24, len - 24);
	memcpy(p + 16, &sum, 8);
}

/* 0 if p holds record seq of len bytes; otherwise which part is wrong. */
static const char *ring_rec_check(const uint8_t *p, int r, uint64_t seq, uint32_t len)
{
	struct chunkd_rec_hdr h;
	if (r != (int)len)
		return "length";
	memcpy(&h, p, sizeof(h));
	if (h.len != len || h.ticket != seq || h.nfiles != (uint16_t)seq ||
	    h.type != (seq % 2 ? CHUNKD_REC_DOWNLOAD : CHUNKD_REC_DELETE))
		return "header";
	uint64_t sum;
	memcpy(&sum, p + 16, 8);
	if (sum != fnv1a(p + 24, len - 24))
		return "checksum";
	return NULL;
}

struct model {
	struct chunkd_req_client *cl;
	uint64_t head; /* the consumer's private head; published to sq_head after each pop */
	uint64_t qseq[SQ / RING_MIN + 1];
	uint32_t qlen[SQ / RING_MIN + 1];
	size_t qfirst, qn;
	uint64_t next_seq, base;
	uint64_t pushes, pads, full, abandoned, pops, empty;
	uint8_t *buf;
};

#define QCAP (SQ / RING_MIN + 1)

/* One enqueue; `commit` 0 plays a client killed between writing the record and committing it. */
static void model_push(struct model *m, uint32_t len, int commit)
{
	struct chunkd_req_client *cl = m->cl;
	uint64_t tail = chunkd__load_relaxed(&cl->ctl.sq_tail);
	uint64_t head = chunkd__load_relaxed(&cl->d.sq_head);
	uint64_t off = tail % SQ, pad = SQ - off < len ? SQ - off : 0;
	int fits = SQ - (tail - head) >= pad + len;
	uint64_t nt = 0;
	uint8_t *p = chunkd__sq_reserve(cl, len, &nt);
	if (!fits) {
		assert_null(p);
		m->full++;
		return;
	}
	assert_non_null(p);
	assert_int_equal(nt, tail + pad + len);
	assert_ptr_equal(p, &cl->sq[(tail + pad) % SQ]);
	assert_int_equal(chunkd__load_relaxed(&cl->ctl.sq_tail), tail); /* nothing published yet */
	if (!commit) {
		/* Bytes that would pass for the next record, and a few that would not. */
		ring_rec_fill(p, m->next_seq, len);
		memset(p + len / 2, 0xee, len / 2);
		m->abandoned++;
		return;
	}
	ring_rec_fill(p, m->next_seq, len);
	chunkd__sq_commit(cl, nt);
	assert_true(nt - head <= SQ);
	assert_true(m->qn < QCAP);
	size_t at = (m->qfirst + m->qn++) % QCAP;
	m->qseq[at] = m->next_seq++;
	m->qlen[at] = len;
	m->pushes++;
	m->pads += pad != 0;
}

static void model_pop(struct model *m)
{
	/* Pairs with the release store of sq_tail in chunkd__sq_commit. */
	uint64_t tail = chunkd__load_acquire(&m->cl->ctl.sq_tail);
	int r = chunkd__sq_pop(m->cl, &m->head, tail, m->buf, CHUNKD_REC_MAX);
	if (m->qn == 0) {
		assert_int_equal(r, 0);
		assert_int_equal(m->head, tail);
		m->empty++;
	} else {
		const char *bad = ring_rec_check(m->buf, r, m->qseq[m->qfirst], m->qlen[m->qfirst]);
		if (bad)
			print_error("record %llu: bad %s (r %d)\n",
				    (unsigned long long)m->qseq[m->qfirst], bad, r);
		assert_null(bad);
		m->qfirst = (m->qfirst + 1) % QCAP;
		m->qn--;
		m->pops++;
	}
	/* Hands the space back; pairs with the acquire load of sq_head in chunkd__sq_reserve. */
	chunkd__store_release(&m->cl->d.sq_head, m->head);
}

static struct model *model_new(struct chunkd_req_client *cl, uint64_t base)
{
	struct model *m = calloc(1, sizeof(*m));
	assert_non_null(m);
	m->buf = malloc(CHUNKD_REC_MAX);
	assert_non_null(m->buf);
	m->cl = cl;
	m->base = m->head = base;
	m->next_seq = 1;
	cl->ctl.sq_tail = cl->d.sq_head = base;
	return m;
}

static void model_free(struct model *m)
{
	free(m->buf);
	free(m);
}

/*
 * Random pushes (some abandoned) and pops, in push-heavy and pop-heavy phases so the ring is
 * often full and often empty, until the ring wrapped many times. Run from two starting points:
 * 0, and just below 2^64 so that the byte counters themselves wrap.
 */
static void model_run(uint64_t base, uint64_t seed)
{
	struct chunkd_req_map req;
	fixture_req(&req, 2);
	struct model *m = model_new(chunkd__req_client(&req, 1), base);
	uint64_t step = 0;
	while (m->cl->ctl.sq_tail - base < 60ull * SQ) {
		int push_pct = (step++ / 2000) % 2 ? 80 : 35;
		uint64_t x = fixture_rand(&seed);
		if ((int)(x % 100) < push_pct) {
			int commit = (x >> 8) % 40 != 0;
			model_push(m, ring_rec_len(fixture_rand(&seed), 48), commit);
		} else {
			for (uint64_t k = 1 + (x >> 8) % 3; k; k--)
				model_pop(m);
		}
	}
	while (m->qn)
		model_pop(m);
	model_pop(m); /* empty */
	assert_int_equal(m->head, m->cl->ctl.sq_tail);
	print_message("base %#llx: %llu records (%llu behind a PAD), %llu refused as full, "
		      "%llu abandoned, %llu wraps\n",
		      (unsigned long long)base, (unsigned long long)m->pushes,
		      (unsigned long long)m->pads, (unsigned long long)m->full,
		      (unsigned long long)m->abandoned,
		      (unsigned long long)((m->cl->ctl.sq_tail - base) / SQ));
	assert_true(m->pads >= 40);
	assert_true(m->full >= 100);
	assert_true(m->abandoned >= 10);
	assert_true(m->empty >= 10);
	model_free(m);
	fixture_req_free(&req);
}

static void test_ring_model(void **state)
{
	model_run(0, 0x21);
	model_run(UINT64_MAX - 3 * (uint64_t)SQ + 1 - SQ / 2, 0x22); /* 16-aligned, wraps 2^64 */
}

/* The ring holds exactly SQ bytes: no more, no fewer, with and without a PAD. */
static void test_ring_full_exact(void **state)
{
	struct chunkd_req_map req;
	fixture_req(&req, 1);
	struct chunkd_req_client *cl = chunkd__req_client(&req, 0);
	uint64_t nt;
	uint8_t *p;

	/* 256 records of 4 KiB fill 1 MiB; then not even 16 bytes fit. */
	for (uint32_t i = 0; i < SQ / 4096; i++) {
		p = chunkd__sq_reserve(cl, 4096, &nt);
		assert_non_null(p);
		assert_ptr_equal(p, &cl->sq[i * 4096]);
		ring_rec_fill(p, i + 1, 4096);
		chunkd__sq_commit(cl, nt);
	}
	assert_null(chunkd__sq_reserve(cl, 4096, &nt));
	assert_null(chunkd__sq_reserve(cl, 16, &nt));
	/* The consumer frees one record: exactly one fits again, at offset 0. */
	uint64_t head = 0;
	uint8_t *buf = malloc(CHUNKD_REC_MAX);
	assert_non_null(buf);
	assert_null(ring_rec_check(
	    buf, chunkd__sq_pop(cl, &head, cl->ctl.sq_tail, buf, CHUNKD_REC_MAX), 1, 4096));
	assert_null(chunkd__sq_reserve(cl, 16, &nt)); /* not yet published */
	chunkd__store_release(&cl->d.sq_head, head);
	p = chunkd__sq_reserve(cl, 4096, &nt);
	assert_ptr_equal(p, &cl->sq[0]);
	assert_null(chunkd__sq_reserve(cl, 4112, &nt));

	/* An empty ring 32 bytes before its end: a 48-byte record needs a 32-byte PAD first. */
	uint64_t t = 5 * (uint64_t)SQ - 32;
	cl->ctl.sq_tail = cl->d.sq_head = t;
	p = chunkd__sq_reserve(cl, 32, &nt); /* fits exactly, no PAD */
	assert_ptr_equal(p, &cl->sq[SQ - 32]);
	assert_int_equal(nt, t + 32);
	p = chunkd__sq_reserve(cl, 48, &nt);
	assert_ptr_equal(p, &cl->sq[0]);
	assert_int_equal(nt, t + 80);
	struct chunkd_rec_hdr pad;
	memcpy(&pad, &cl->sq[SQ - 32], sizeof(pad));
	assert_int_equal(pad.type, CHUNKD_REC_PAD);
	assert_int_equal(pad.len, 32);
	/* Free space 64 < 32 + 48: refused although 64 bytes are free in total. */
	cl->d.sq_head = t + 64 - SQ;
	assert_null(chunkd__sq_reserve(cl, 48, &nt));
	cl->d.sq_head = t + 80 - SQ;
	assert_non_null(chunkd__sq_reserve(cl, 48, &nt));
	cl->d.sq_head = t + 79 - SQ;
	assert_null(chunkd__sq_reserve(cl, 48, &nt));

	/* Larger than the ring: never. The whole ring in one record: only when empty at 0. */
	cl->ctl.sq_tail = cl->d.sq_head = 0;
	assert_null(chunkd__sq_reserve(cl, SQ + 16, &nt));
	assert_non_null(chunkd__sq_reserve(cl, SQ, &nt));
	cl->ctl.sq_tail = cl->d.sq_head = 16;
	assert_null(chunkd__sq_reserve(cl, SQ, &nt));

	/* A head ahead of the tail, or more than a ring behind it, is not space. */
	cl->ctl.sq_tail = 4096;
	cl->d.sq_head = 8192;
	assert_null(chunkd__sq_reserve(cl, 16, &nt));
	cl->ctl.sq_tail = 3 * (uint64_t)SQ;
	cl->d.sq_head = SQ - 16;
	assert_null(chunkd__sq_reserve(cl, 16, &nt));
	free(buf);
	fixture_req_free(&req);
}

/* A client killed after reserving and writing but before committing leaves nothing visible, and
 * the next producer on the ring overwrites its bytes. */
static void test_ring_killed_mid_enqueue(void **state)
{
	struct chunkd_req_map req;
	fixture_req(&req, 1);
	struct chunkd_req_client *cl = chunkd__req_client(&req, 0);
	uint8_t *buf = malloc(CHUNKD_REC_MAX);
	assert_non_null(buf);
	uint64_t nt, head = 0;

	uint8_t *p = chunkd__sq_reserve(cl, 256, &nt);
	ring_rec_fill(p, 1, 256); /* complete and valid, but never committed */
	assert_int_equal(
	    chunkd__sq_pop(cl, &head, chunkd__load_acquire(&cl->ctl.sq_tail), buf, CHUNKD_REC_MAX),
	    0);
	assert_int_equal(head, 0);

	/* A committed record, then an uncommitted one: only the first is seen. */
	p = chunkd__sq_reserve(cl, 64, &nt);
	assert_ptr_equal(p, &cl->sq[0]);
	ring_rec_fill(p, 2, 64);
	chunkd__sq_commit(cl, nt);
	p = chunkd__sq_reserve(cl, 128, &nt);
	ring_rec_fill(p, 3, 128);
	uint64_t tail = chunkd__load_acquire(&cl->ctl.sq_tail);
	assert_null(
	    ring_rec_check(buf, chunkd__sq_pop(cl, &head, tail, buf, CHUNKD_REC_MAX), 2, 64));
	assert_int_equal(chunkd__sq_pop(cl, &head, tail, buf, CHUNKD_REC_MAX), 0);
	/* The next producer reuses the space. */
	p = chunkd__sq_reserve(cl, 48, &nt);
	assert_ptr_equal(p, &cl->sq[64]);
	ring_rec_fill(p, 4, 48);
	chunkd__sq_commit(cl, nt);
	tail = chunkd__load_acquire(&cl->ctl.sq_tail);
	assert_null(
	    ring_rec_check(buf, chunkd__sq_pop(cl, &head, tail, buf, CHUNKD_REC_MAX), 4, 48));
	assert_int_equal(chunkd__sq_pop(cl, &head, tail, buf, CHUNKD_REC_MAX), 0);

	/* Killed after the PAD was written (reserve writes it) but before the commit. */
	cl->ctl.sq_tail = cl->d.sq_head = head = SQ - 64;
	p = chunkd__sq_reserve(cl, 96, &nt);
	assert_ptr_equal(p, &cl->sq[0]);
	ring_rec_fill(p, 5, 96);
	tail = chunkd__load_acquire(&cl->ctl.sq_tail);
	assert_int_equal(chunkd__sq_pop(cl, &head, tail, buf, CHUNKD_REC_MAX), 0);
	assert_int_equal(head, SQ - 64);
	/* A smaller record fits before the end and overwrites the stale PAD. */
	p = chunkd__sq_reserve(cl, 64, &nt);
	assert_ptr_equal(p, &cl->sq[SQ - 64]);
	ring_rec_fill(p, 6, 64);
	chunkd__sq_commit(cl, nt);
	tail = chunkd__load_acquire(&cl->ctl.sq_tail);
	assert_null(
	    ring_rec_check(buf, chunkd__sq_pop(cl, &head, tail, buf, CHUNKD_REC_MAX), 6, 64));
	assert_int_equal(chunkd__sq_pop(cl, &head, tail, buf, CHUNKD_REC_MAX), 0);
	assert_int_equal(head, SQ);
	free(buf);
	fixture_req_free(&req);
}

/* Write a record header at ring offset off. */
static void put_hdr(struct chunkd_req_client *cl, uint64_t off, uint32_t len, uint16_t type)
{
	struct chunkd_rec_hdr h = {.len = len, .type = type, .ticket = 77};
	memcpy(&cl->sq[off % SQ], &h, sizeof(h));
}

/* Pop from a hostile state: the answer must be -EBADMSG with head moved to tail. */
static void expect_garbage(struct chunkd_req_client *cl, uint64_t head, uint64_t tail, size_t cap,
			   uint8_t *buf)
{
	int r = chunkd__sq_pop(cl, &head, tail, buf, cap);
	assert_int_equal(r, -EBADMSG);
	assert_int_equal(head, tail);
	/* And the next pass sees an empty ring, not the same garbage again. */
	assert_int_equal(chunkd__sq_pop(cl, &head, tail, buf, cap), 0);
}

static void test_ring_hostile(void **state)
{
	struct chunkd_req_map req;
	fixture_req(&req, 1);
	struct chunkd_req_client *cl = chunkd__req_client(&req, 0);
	uint8_t *buf = malloc(CHUNKD_REC_MAX);
	assert_non_null(buf);
	uint64_t b = 9 * (uint64_t)SQ, head;

	/* The client claims more than a ring's worth of bytes, or a tail behind the head. */
	put_hdr(cl, 0, 64, CHUNKD_REC_DELETE);
	expect_garbage(cl, b, b + SQ + 16, CHUNKD_REC_MAX, buf);
	expect_garbage(cl, b, b + UINT64_MAX / 2, CHUNKD_REC_MAX, buf);
	expect_garbage(cl, b, b - 16, CHUNKD_REC_MAX, buf);
	/* A misaligned head (the daemon's copy is private, but prove the check anyway). */
	put_hdr(cl, 8, 64, CHUNKD_REC_DELETE);
	expect_garbage(cl, b + 8, b + 8 + 64, CHUNKD_REC_MAX, buf);
	/* Header lengths: 0, below the header, unaligned, beyond the tail, beyond the end. */
	put_hdr(cl, 0, 0, CHUNKD_REC_DELETE);
	expect_garbage(cl, b, b + 64, CHUNKD_REC_MAX, buf);
	put_hdr(cl, 0, 8, CHUNKD_REC_DELETE);
	expect_garbage(cl, b, b + 64, CHUNKD_REC_MAX, buf);
	put_hdr(cl, 0, 24, CHUNKD_REC_DELETE);
	expect_garbage(cl, b, b + 64, CHUNKD_REC_MAX, buf);
	put_hdr(cl, 0, 80, CHUNKD_REC_DELETE);
	expect_garbage(cl, b, b + 64, CHUNKD_REC_MAX, buf);
	put_hdr(cl, 0, UINT32_MAX & ~15u, CHUNKD_REC_DELETE);
	expect_garbage(cl, b, b + SQ, CHUNKD_REC_MAX, buf);
	put_hdr(cl, SQ - 32, 64, CHUNKD_REC_DELETE); /* a record may not wrap */
	expect_garbage(cl, b + SQ - 32, b + SQ + 32, CHUNKD_REC_MAX, buf);
	/* Larger than the consumer's buffer. */
	put_hdr(cl, 0, 128, CHUNKD_REC_DOWNLOAD);
	expect_garbage(cl, b, b + 128, 64, buf);
	/* PADs that do not end exactly at the end of the ring, or run past the tail. A good
	 * record follows each bad PAD, so a pop that skipped the PAD would return it. */
	put_hdr(cl, 0, 32, CHUNKD_REC_PAD);
	ring_rec_fill(&cl->sq[32], 1, 32);
	expect_garbage(cl, b, b + 64, CHUNKD_REC_MAX, buf);
	put_hdr(cl, SQ - 64, 32, CHUNKD_REC_PAD);
	ring_rec_fill(&cl->sq[SQ - 32], 1, 32);
	expect_garbage(cl, b + SQ - 64, b + SQ, CHUNKD_REC_MAX, buf);
	put_hdr(cl, SQ - 64, 64, CHUNKD_REC_PAD);
	expect_garbage(cl, b + SQ - 64, b + SQ - 32, CHUNKD_REC_MAX, buf);
	/* A good record, then garbage: the record is returned, then everything else dropped. */
	ring_rec_fill(&cl->sq[0], 1, 64);
	put_hdr(cl, 64, 0, CHUNKD_REC_DELETE);
	head = b;
	assert_null(
	    ring_rec_check(buf, chunkd__sq_pop(cl, &head, b + 4096, buf, CHUNKD_REC_MAX), 1, 64));
	expect_garbage(cl, head, b + 4096, CHUNKD_REC_MAX, buf);

	/* Legal corner cases: a PAD that ends the data, and a PAD covering the whole ring. */
	put_hdr(cl, SQ - 64, 64, CHUNKD_REC_PAD);
	head = b + SQ - 64;
	assert_int_equal(chunkd__sq_pop(cl, &head, b + SQ, buf, CHUNKD_REC_MAX), 0);
	assert_int_equal(head, b + SQ);
	put_hdr(cl, 0, SQ, CHUNKD_REC_PAD);
	head = b;
	assert_int_equal(chunkd__sq_pop(cl, &head, b + SQ, buf, CHUNKD_REC_MAX), 0);
	assert_int_equal(head, b + SQ);
	/* PAD, then a full-ring PAD: more than a ring of bytes in total, refused. */
	put_hdr(cl, SQ - 64, 64, CHUNKD_REC_PAD);
	expect_garbage(cl, b + SQ - 64, b + 2 * (uint64_t)SQ, CHUNKD_REC_MAX, buf);

	/*
	 * Random rings: a chain of plausible records (PADs where a record would not fit before the
	 * end) laid over random bytes, a few of its headers corrupted, and a head and tail that
	 * may or may not match it. pop must always finish with head == tail, in bounded steps.
	 */
	uint64_t seed = 0xbad, n_bad = 0, n_rec = 0, n_empty = 0;
	for (int it = 0; it < 3000; it++) {
		uint64_t *w = (uint64_t *)cl->sq;
		if (it % 100 == 0)
			for (size_t i = 0; i < SQ / 8; i++)
				w[i] = fixture_rand(&seed);
		uint64_t x = fixture_rand(&seed);
		uint64_t start =
		    (fixture_rand(&seed) & ~(uint64_t)(SQ - 1)) +
		    (x % 8 == 0 ? SQ - 16 * (1 + (x >> 3) % 4) : (x >> 3) % (SQ / 16) * 16);
		uint64_t at = start;
		uint32_t nchain = 1 + (uint32_t)(fixture_rand(&seed) % 200);
		for (uint32_t k = 0; k < nchain; k++) {
			uint64_t y = fixture_rand(&seed);
			uint32_t len = y % 50 == 0 ? (uint32_t)(y >> 8) % CHUNKD_REC_MAX & ~15u
						   : 16 + (uint32_t)((y >> 8) % 64) * 16;
			len = len ? len : 16;
			uint64_t off = at % SQ;
			if (SQ - off < len) {
				put_hdr(cl, off, (uint32_t)(SQ - off), CHUNKD_REC_PAD);
				at += SQ - off;
				off = 0;
			}
			put_hdr(cl, off, len,
				(y >> 40) % 2 ? CHUNKD_REC_DELETE : CHUNKD_REC_DOWNLOAD);
			if ((y >> 48) % 64 == 0) /* corrupt this header */
				put_hdr(cl, off, (uint32_t)(y >> 20) % 4096,
					(y >> 33) % 2 ? CHUNKD_REC_PAD : CHUNKD_REC_DELETE);
			at += len;
			if (at - start > SQ)
				break;
		}
		head = start;
		uint64_t tail;
		switch ((x >> 24) % 6) {
		case 0: /* anywhere within a ring */
			tail = head + (x >> 28) % (SQ + 1);
			break;
		case 1: /* anywhere at all */
			tail = fixture_rand(&seed);
			break;
		case 2: /* a misaligned head */
			head += 1 + (x >> 28) % 15;
			tail = at;
			break;
		default: /* the end of the chain, within a ring or not */
			tail = at;
			break;
		}
		int r, steps = 0;
		while ((r = chunkd__sq_pop(cl, &head, tail, buf, CHUNKD_REC_MAX)) > 0) {
			assert_true(r % CHUNKD_REC_ALIGN == 0 && (size_t)r <= CHUNKD_REC_MAX);
			assert_true(++steps <= (int)(SQ / 16));
			n_rec++;
		}
		assert_true(r == 0 || r == -EBADMSG);
		assert_int_equal(head, tail);
		if (r)
			n_bad++;
		else
			n_empty++;
	}
	print_message("random rings: %llu records, %llu ended as garbage, %llu drained\n",
		      (unsigned long long)n_rec, (unsigned long long)n_bad,
		      (unsigned long long)n_empty);
	assert_true(n_rec > 0 && n_bad > 0 && n_empty > 0);
	free(buf);
	fixture_req_free(&req);
}

/* ---- one producer, one consumer, concurrently ----------------------------------------------- */

#define MP_RECORDS     100000
#define MP_DEADLINE_MS 60000
#define MP_BIG_ONE_IN  512

struct mp {
	struct chunkd_req_client *cl;
	uint32_t stop; /* set by a failing consumer: the producer gives up */
	uint64_t n;
	uint64_t deadline_ms;
	int result;
	pid_t child; /* the producer process, if any: its death ends the wait */
	int child_status;
	int child_reaped;
};

/* The client side: reserve, write, commit; wait (yielding) while the ring is full. */
static int produce(struct mp *mp)
{
	for (uint64_t seq = 1; seq <= mp->n; seq++) {
		uint32_t len = ring_rec_len(seq, MP_BIG_ONE_IN);
		uint64_t nt;
		uint8_t *p;
		while (!(p = chunkd__sq_reserve(mp->cl, len, &nt))) {
			if (chunkd__load_relaxed(&mp->stop) || fixture_now_ms() > mp->deadline_ms)
				return -1;
			sched_yield();
		}
		ring_rec_fill(p, seq, len);
		chunkd__sq_commit(mp->cl, nt);
	}
	return 0;
}

/* The daemon side: one acquire load of the tail per pass, pop everything, publish the head. */
static int consume(struct mp *mp, char *err, size_t errlen)
{
	uint8_t *buf = malloc(CHUNKD_REC_MAX);
	if (!buf)
		return snprintf(err, errlen, "out of memory"), -1;
	uint64_t head = chunkd__load_relaxed(&mp->cl->d.sq_head), seq = 1;
	int rc = 0;
	while (seq <= mp->n) {
		/* Pairs with the producer's release store of sq_tail in chunkd__sq_commit. */
		uint64_t tail = chunkd__load_acquire(&mp->cl->ctl.sq_tail);
		int r, got = 0;
		while ((r = chunkd__sq_pop(mp->cl, &head, tail, buf, CHUNKD_REC_MAX)) > 0) {
			const char *bad =
			    ring_rec_check(buf, r, seq, ring_rec_len(seq, MP_BIG_ONE_IN));
			if (bad) {
				snprintf(err, errlen, "record %llu: bad %s",
					 (unsigned long long)seq, bad);
				rc = -1;
				goto out;
			}
			seq++;
			got++;
		}
		if (r < 0) {
			snprintf(err, errlen, "pop: %d before record %llu", r,
				 (unsigned long long)seq);
			rc = -1;
			goto out;
		}
		/* Hands the space back; pairs with the acquire load in chunkd__sq_reserve. */
		chunkd__store_release(&mp->cl->d.sq_head, head);
		if (!got) {
			if (mp->child_reaped) {
				/* One more pass after its death: its last commit is visible now. */
				snprintf(err, errlen,
					 "producer died (status %#x) before record %llu",
					 mp->child_status, (unsigned long long)seq);
				rc = -1;
				goto out;
			}
			if (mp->child &&
			    waitpid(mp->child, &mp->child_status, WNOHANG) == mp->child) {
				mp->child_reaped = 1;
				continue;
			}
			if (fixture_now_ms() > mp->deadline_ms) {
				snprintf(err, errlen, "deadline passed at record %llu",
					 (unsigned long long)seq);
				rc = -1;
				goto out;
			}
			sched_yield();
		}
	}
	if (head != chunkd__load_acquire(&mp->cl->ctl.sq_tail)) {
		snprintf(err, errlen, "bytes left after the last record");
		rc = -1;
	}
out:
	if (rc)
		chunkd__store_relaxed(&mp->stop, 1);
	free(buf);
	return rc;
}

static void mp_report(struct mp *mp)
{
	print_message("%llu records, %llu bytes, %llu wraps\n", (unsigned long long)mp->n,
		      (unsigned long long)mp->cl->ctl.sq_tail,
		      (unsigned long long)(mp->cl->ctl.sq_tail / SQ));
	assert_true(mp->cl->ctl.sq_tail / SQ >= 20);
}

static void test_ring_processes(void **state)
{
	struct chunkd_req_map req;
	fixture_req(&req, 1);
	struct mp *mp =
	    mmap(NULL, sizeof(*mp), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	assert_true(mp != MAP_FAILED);
	*mp = (struct mp){.cl = chunkd__req_client(&req, 0),
			  .n = MP_RECORDS,
			  .deadline_ms = fixture_now_ms() + MP_DEADLINE_MS};
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0)
		_exit(produce(mp) == 0 ? 0 : 1);
	mp->child = pid;
	char err[200] = "";
	int rc = consume(mp, err, sizeof(err));
	int st = mp->child_status;
	if (!mp->child_reaped)
		assert_int_equal(waitpid(pid, &st, 0), pid);
	if (rc)
		print_error("consumer: %s\n", err);
	assert_int_equal(rc, 0);
	assert_true(WIFEXITED(st));
	assert_int_equal(WEXITSTATUS(st), 0);
	mp_report(mp);
	munmap(mp, sizeof(*mp));
	fixture_req_free(&req);
}

static void *producer_thread(void *p)
{
	struct mp *mp = p;
	mp->result = produce(mp);
	return NULL;
}

static void test_ring_threads(void **state)
{
	struct chunkd_req_map req;
	fixture_req(&req, 1);
	static struct mp mp;
	mp = (struct mp){.cl = chunkd__req_client(&req, 0),
			 .n = MP_RECORDS / 4,
			 .deadline_ms = fixture_now_ms() + MP_DEADLINE_MS};
	pthread_t t;
	assert_int_equal(pthread_create(&t, NULL, producer_thread, &mp), 0);
	char err[200] = "";
	int rc = consume(&mp, err, sizeof(err));
	pthread_join(t, NULL);
	if (rc)
		print_error("consumer: %s\n", err);
	assert_int_equal(rc, 0);
	assert_int_equal(mp.result, 0);
	mp_report(&mp);
	fixture_req_free(&req);
}

static int setup(void **state)
{
	guard_init(&guard, CHUNKD_REC_MAX + 4096);
	dl_a = malloc(sizeof(*dl_a));
	dl_b = malloc(sizeof(*dl_b));
	return dl_a && dl_b ? 0 : -1;
}

static int teardown(void **state)
{
	munmap(guard.map, guard.maplen);
	free(dl_a);
	free(dl_b);
	return 0;
}

/* Regression: a record with files left over after nfiles, or junk after the last file, used
 * to decode as another valid request. */
static void test_decode_rejects_trailing_bytes(void **state)
{
	(void)state;
	chunkd_file f[3] = {{"a", "http://h/a"}, {"b", "http://h/b"}, {"c", "http://h/c"}};
	chunkd_chunk c = {.first_block = 1, .end_block = 2, .files = f, .nfiles = 3};
	uint8_t rec[512];
	int len = chunkd__rec_encode_download(&c, 7, rec, sizeof(rec));
	assert_true(len > 0);
	static struct chunkd_dl dl;
	assert_int_equal(chunkd__rec_decode_download(rec, (size_t)len, &dl, NULL, 0), 0);
	((struct chunkd_rec_download *)rec)->h.nfiles = 1;
	assert_int_equal(chunkd__rec_decode_download(rec, (size_t)len, &dl, NULL, 0), -EBADMSG);
	((struct chunkd_rec_download *)rec)->h.nfiles = 3;
	rec[len - 1] = 0x55; /* in the padding */
	assert_int_equal(chunkd__rec_decode_download(rec, (size_t)len, &dl, NULL, 0), -EBADMSG);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_check_nfiles),
	    cmocka_unit_test(test_check_names),
	    cmocka_unit_test(test_check_urls),
	    cmocka_unit_test(test_check_duplicates),
	    cmocka_unit_test(test_check_blocks),
	    cmocka_unit_test(test_check_nulls),
	    cmocka_unit_test(test_check_bounded_reads),
	    cmocka_unit_test(test_roundtrip_random),
	    cmocka_unit_test(test_roundtrip_largest),
	    cmocka_unit_test(test_encode_delete),
	    cmocka_unit_test(test_decode_truncations),
		cmocka_unit_test(test_decode_rejects_trailing_bytes),
	    cmocka_unit_test(test_decode_flips),
	    cmocka_unit_test(test_decode_fields),
	    cmocka_unit_test(test_ring_model),
	    cmocka_unit_test(test_ring_full_exact),
	    cmocka_unit_test(test_ring_killed_mid_enqueue),
	    cmocka_unit_test(test_ring_hostile),
	    cmocka_unit_test(test_ring_processes),
	    cmocka_unit_test(test_ring_threads),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
