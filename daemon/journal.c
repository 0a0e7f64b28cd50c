/*
 * journal.c — see journal.h; docs/journal.md draws the format and argues crash safety.
 *
 * Layout of this file: byte helpers and the record codec, the live index (an open-addressing
 * hash over a dense entry array), a block reader shared by replay and compaction, then open,
 * append, group commit, compaction and close.
 */
#include "journal.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "meta.h"

/*
 * Every integer in the file is little-endian. The codec copies host integers with memcpy(), which
 * is only right on a little-endian host; the daemon runs on x86-64 and arm64 (little-endian).
 */
#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the journal codec assumes a little-endian host"
#endif

/* ---- format constants (docs/journal.md draws them) ------------------------------------------- */

static const char jmagic[8] = {'C', 'N', 'K', 'D', 'J', 'R', 'N', '1'};

#define JHDR_LEN 24u /* file header: magic, version, header length, flags, header CRC */
#define JHDR_CRC 20u /* offset of the header CRC; it covers bytes [0, JHDR_CRC) */

/* Offsets in a record. */
#define R_CRC    0u
#define R_LEN    4u
#define R_TS     8u
#define R_TYPE   16u
#define R_FLAGS  17u /* version 2: F_REFUSED or 0 (version 1: 0) */
#define R_ERRNO  18u /* version 2: with F_REFUSED, the errno (1-255); else 0 */
#define R_PAD    19u
#define R_CLIENT 20u
#define R_OWNER  24u
#define R_TICKET 32u
#define R_ID     40u
#define F_REFUSED 1u
#define R_HDR    72u /* the common part; a DELETE record is exactly this */
#define R_DS     72u
#define R_FIRST  104u
#define R_END    112u
#define R_NFILES 120u
#define R_FILES  124u /* per file: u16 name_len, u16 url_len, name, url */

#define ALIGN8(x) (((x) + 7u) & ~(size_t)7u)

/* The longest record: a DOWNLOAD with CHUNKD_MAX_FILES files of the longest name and URL. */
#define R_MAX ALIGN8(R_FILES + (size_t)CHUNKD_MAX_FILES * (4 + CHUNKD_MAX_NAME + CHUNKD_MAX_URL))

_Static_assert(R_HDR % 8 == 0, "a DELETE record is a whole number of 8-byte words");
_Static_assert(R_MAX < UINT32_MAX, "record lengths fit the u32 len field");
_Static_assert(CHUNKD_MAX_NAME <= UINT16_MAX && CHUNKD_MAX_URL <= UINT16_MAX,
	       "name and URL lengths fit their u16 fields");

/* Replay and compaction read the file in blocks of this size, which must hold a whole record. */
#define READ_BLOCK (4u << 20)
_Static_assert(READ_BLOCK >= 2 * R_MAX, "a block holds the longest record with room to spare");

/* Compaction writes journal.tmp in blocks of this size (records are copied whole, so >= R_MAX). */
#define WRITE_BLOCK (4u << 20)
_Static_assert(WRITE_BLOCK >= R_MAX, "a write block holds the longest record");

/* A commit buffer above this size is freed after its commit rather than kept for reuse. */
#define BUF_KEEP (16u << 20)

/* Replay hashes this many records ahead and prefetches their table slots (see replay_file). */
#define PREFETCH_BATCH 32

/* Index arrays of at least this size are mmap()ed with transparent huge pages (see big_alloc). */
#define BIG_ALLOC (2u << 20)

/* ---- the handle ------------------------------------------------------------------------------ */

/* One live record of the index. Entries are dense (ents[0..nents)); the hash table points here. */
struct jent {
	uint64_t id[4];
	uint64_t off;
	uint64_t ts_ns;
	uint32_t size;
	uint32_t type;
};

struct jbuf {
	uint8_t *p;
	size_t len, cap;
};

struct chunkd_journal {
	int fd;    /* the journal file, O_RDWR */
	int dirfd; /* our duplicate of the data directory */
	int err;   /* sticky error, 0 while healthy */

	/*
	 * Everything before durable_end is on disk and fdatasynced. When a commit is in flight,
	 * bufs[!cur] holds its frozen bytes, which go at durable_end; bufs[cur] accumulates the
	 * next commit's bytes, which go right after them (or at durable_end with none in flight).
	 */
	uint64_t durable_end;
	struct jbuf bufs[2];
	int cur;
	int in_flight;
	uint64_t last_seq, frozen_seq, durable_seq;

	/*
	 * The live index: ents[] dense, tab[] an open-addressing table with linear probing, each
	 * slot 0 (empty) or (hash32 << 32 | (entry index + 1)). Keeping the hash in the slot lets a
	 * probe skip most foreign entries without touching ents[], and lets the table grow and
	 * delete (backward shift) without rehashing ids. The load is kept at or below one half.
	 */
	struct jent *ents;
	uint32_t nents, ents_cap;
	uint64_t *tab;
	uint32_t tmask;
	uint64_t live_bytes;

	uint32_t file_version; /* of the file in use: 1 (no refused records) or 2 */
	uint64_t floor;
	/* Superseded records the last compaction kept (chunkd__journal_set_keep): bytes that the
	 * next compaction will probably keep too, so should_compact counts them as live. */
	uint64_t kept_bytes;
	chunkd_journal_keep_fn keep;
	void *keep_arg;
	struct chunkd_journal_stats open_st;
	int (*hook)(int point, void *arg);
	void *hook_arg;
};

/* ---- small helpers --------------------------------------------------------------------------- */

static uint32_t get32(const uint8_t *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return v;
}

static uint64_t get64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return v;
}

static uint16_t get16(const uint8_t *p)
{
	uint16_t v;
	memcpy(&v, p, 2);
	return v;
}

static void put16(uint8_t *p, uint16_t v)
{
	memcpy(p, &v, 2);
}

static void put32(uint8_t *p, uint32_t v)
{
	memcpy(p, &v, 4);
}

static void put64(uint8_t *p, uint64_t v)
{
	memcpy(p, &v, 8);
}

static uint64_t now_ns(clockid_t clk)
{
	struct timespec ts;
	clock_gettime(clk, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

__attribute__((format(printf, 2, 3))) static void set_why(struct chunkd_journal_stats *st,
							  const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(st->why, sizeof(st->why), fmt, ap);
	va_end(ap);
}

static int fault(struct chunkd_journal *j, int point)
{
	return j->hook ? j->hook(point, j->hook_arg) : 0;
}

/* pwrite() all n bytes at off, retrying short writes and EINTR. */
static int pwrite_all(int fd, const void *buf, size_t n, uint64_t off)
{
	const uint8_t *p = buf;
	while (n) {
		ssize_t w = pwrite(fd, p, n, (off_t)off);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (w == 0)
			return -EIO;
		p += w;
		n -= (size_t)w;
		off += (uint64_t)w;
	}
	return 0;
}

static int set_sticky(struct chunkd_journal *j, int err)
{
	if (!j->err)
		j->err = err;
	return j->err;
}

/*
 * Memory for the index arrays. Replay touches the hash table at random, one cache miss per
 * record, and with 4 KiB pages each miss is also a TLB miss (a costly two-level walk under a
 * hypervisor). Large arrays therefore get their own mapping with MADV_HUGEPAGE (advice only: the
 * kernel may ignore it), and grow with mremap(), which moves pages instead of copying bytes.
 * Memory is zeroed either way.
 */
static void *big_alloc(size_t size)
{
	if (size < BIG_ALLOC)
		return calloc(1, size);
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		return NULL;
	madvise(p, size, MADV_HUGEPAGE);
	return p;
}

static void big_free(void *p, size_t size)
{
	if (!p)
		return;
	if (size < BIG_ALLOC)
		free(p);
	else
		munmap(p, size);
}

static void *big_realloc(void *p, size_t old, size_t size)
{
	if (size < BIG_ALLOC)
		return realloc(p, size);
	if (old < BIG_ALLOC) {
		void *n = big_alloc(size);
		if (n && p)
			memcpy(n, p, old);
		if (n)
			free(p);
		return n;
	}
	void *n = mremap(p, old, size, MREMAP_MAYMOVE);
	if (n == MAP_FAILED)
		return NULL;
	madvise(n, size, MADV_HUGEPAGE);
	return n;
}

/* ---- the descriptor rules and the record codec ----------------------------------------------- */

/*
 * The rules the daemon applies to a ring record's descriptor, on a decoded descriptor whose
 * name and URL lengths are in nl[] and ul[]. Append and replay both use it, so the journal never
 * writes a record that its own replay would refuse.
 */
static const char *dl_problem(const struct chunkd_dl *dl, const uint16_t *nl, const uint16_t *ul,
			      uint32_t *bad_file)
{
	if (dl->nfiles == 0 || dl->nfiles > CHUNKD_MAX_FILES)
		return "nfiles is not in 1..64";
	if (dl->first_block >= dl->end_block)
		return "first_block >= end_block";
	for (uint32_t i = 0; i < dl->nfiles; i++) {
		*bad_file = i;
		if (chunkd__check_file_name(dl->files[i].name, nl[i]) < 0)
			return "bad file name";
		if (chunkd__check_url(dl->files[i].url, ul[i]) < 0)
			return "bad URL";
		for (uint32_t k = 0; k < i; k++)
			if (nl[k] == nl[i] && !memcmp(dl->files[k].name, dl->files[i].name, nl[i]))
				return "duplicate file name";
	}
	return NULL;
}

/* Encode r (validated) into p, which has room for `size` bytes, the record's length. */
static void encode(uint8_t *p, size_t size, const struct chunkd_jrec *r, uint64_t ts,
		   const uint16_t *nl, const uint16_t *ul, uint32_t version)
{
	memset(p, 0, R_FILES < size ? R_FILES : size);
	put32(p + R_LEN, (uint32_t)size);
	put64(p + R_TS, ts);
	p[R_TYPE] = (uint8_t)r->type;
	if (r->refused && version >= 2) {
		p[R_FLAGS] = F_REFUSED;
		p[R_ERRNO] = (uint8_t)-r->refused;
	}
	put32(p + R_CLIENT, r->client);
	put64(p + R_OWNER, r->owner);
	put64(p + R_TICKET, r->ticket);
	memcpy(p + R_ID, r->id, 32);
	if (r->type == CHUNKD_JREC_DOWNLOAD) {
		const struct chunkd_dl *dl = r->dl;
		memcpy(p + R_DS, dl->dataset, 32);
		put64(p + R_FIRST, dl->first_block);
		put64(p + R_END, dl->end_block);
		put32(p + R_NFILES, dl->nfiles);
		uint8_t *q = p + R_FILES;
		for (uint32_t i = 0; i < dl->nfiles; i++) {
			put16(q, nl[i]);
			put16(q + 2, ul[i]);
			memcpy(q + 4, dl->files[i].name, nl[i]);
			memcpy(q + 4 + nl[i], dl->files[i].url, ul[i]);
			q += 4 + nl[i] + ul[i];
		}
		memset(q, 0, (size_t)(p + size - q));
	}
	put32(p + R_CRC, chunkd__crc32c(0, p + 4, size - 4));
}

/*
 * Check and decode the record of `len` bytes at p (len already checked: >= R_HDR, a multiple of
 * 8, <= R_MAX). A DOWNLOAD's descriptor goes into *dl. Returns 0, or -EBADMSG (CRC) /
 * -EINVAL (content) with *why set.
 */
static int decode(const uint8_t *p, size_t len, uint32_t version, struct chunkd_jrec *r,
		  struct chunkd_dl *dl, char *why, size_t whylen)
{
	uint32_t crc = chunkd__crc32c(0, p + 4, len - 4);
	if (crc != get32(p + R_CRC)) {
		snprintf(why, whylen, "bad CRC (stored %08x, computed %08x)", get32(p + R_CRC),
			 crc);
		return -EBADMSG;
	}
	r->type = p[R_TYPE];
	r->ts_ns = get64(p + R_TS);
	r->client = get32(p + R_CLIENT);
	r->owner = get64(p + R_OWNER);
	r->ticket = get64(p + R_TICKET);
	memcpy(r->id, p + R_ID, 32);
	r->dl = NULL;
	r->refused = 0;
	if (p[R_PAD] || (version < 2 && (p[R_FLAGS] || p[R_ERRNO]))) {
		snprintf(why, whylen, "non-zero padding after the type");
		return -EINVAL;
	}
	if (p[R_FLAGS] & ~F_REFUSED || !(p[R_FLAGS] & F_REFUSED) != !p[R_ERRNO] ||
	    (p[R_FLAGS] && p[R_TYPE] != CHUNKD_JREC_DOWNLOAD)) {
		snprintf(why, whylen, "bad flags %#x (errno %u) for record type %u", p[R_FLAGS],
			 p[R_ERRNO], p[R_TYPE]);
		return -EINVAL;
	}
	if (p[R_FLAGS])
		r->refused = -(int32_t)p[R_ERRNO];
	if (r->type == CHUNKD_JREC_DELETE) {
		if (len != R_HDR) {
			snprintf(why, whylen, "DELETE record of %zu bytes (want %u)", len, R_HDR);
			return -EINVAL;
		}
		return 0;
	}
	if (r->type != CHUNKD_JREC_DOWNLOAD) {
		snprintf(why, whylen, "unknown record type %u", r->type);
		return -EINVAL;
	}
	if (len < R_FILES) {
		snprintf(why, whylen, "DOWNLOAD record of %zu bytes is too short", len);
		return -EINVAL;
	}
	dl->ticket = r->ticket;
	memcpy(dl->id, r->id, 32);
	memcpy(dl->dataset, p + R_DS, 32);
	dl->first_block = get64(p + R_FIRST);
	dl->end_block = get64(p + R_END);
	dl->nfiles = get32(p + R_NFILES);
	if (dl->nfiles == 0 || dl->nfiles > CHUNKD_MAX_FILES) {
		snprintf(why, whylen, "nfiles %u is not in 1..%d", dl->nfiles, CHUNKD_MAX_FILES);
		return -EINVAL;
	}
	uint16_t nl[CHUNKD_MAX_FILES], ul[CHUNKD_MAX_FILES];
	const uint8_t *q = p + R_FILES, *end = p + len;
	for (uint32_t i = 0; i < dl->nfiles; i++) {
		if (end - q < 4) {
			snprintf(why, whylen, "record ends in file %u", i);
			return -EINVAL;
		}
		nl[i] = get16(q);
		ul[i] = get16(q + 2);
		q += 4;
		/* Bounded before copying: the fixed arrays hold at most the limits plus a NUL. */
		if (nl[i] > CHUNKD_MAX_NAME || ul[i] > CHUNKD_MAX_URL ||
		    (size_t)(end - q) < (size_t)nl[i] + ul[i]) {
			snprintf(why, whylen, "file %u: lengths %u/%u do not fit the record", i,
				 nl[i], ul[i]);
			return -EINVAL;
		}
		memcpy(dl->files[i].name, q, nl[i]);
		dl->files[i].name[nl[i]] = '\0';
		memcpy(dl->files[i].url, q + nl[i], ul[i]);
		dl->files[i].url[ul[i]] = '\0';
		q += nl[i] + ul[i];
	}
	size_t used = (size_t)(q - p);
	if (ALIGN8(used) != len) {
		snprintf(why, whylen, "record of %zu bytes holds %zu bytes of fields", len, used);
		return -EINVAL;
	}
	for (; q < end; q++)
		if (*q) {
			snprintf(why, whylen, "non-zero padding at the end");
			return -EINVAL;
		}
	uint32_t bad = 0;
	const char *problem = dl_problem(dl, nl, ul, &bad);
	if (problem) {
		snprintf(why, whylen, "file %u: %s", bad, problem);
		return -EINVAL;
	}
	r->dl = dl;
	return 0;
}

/* ---- the live index -------------------------------------------------------------------------- */

static uint64_t mix64(uint64_t x)
{
	/* MurmurHash3's finaliser: every input bit affects every output bit. */
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdull;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ull;
	x ^= x >> 33;
	return x;
}

/* Ids come from clients and need not be random (a counter in one word would do), so all four
 * words are mixed. The result is never 0 in the slot since the entry index + 1 is not. */
static uint32_t id_hash(const uint64_t id[4])
{
	return (uint32_t)mix64(id[0] ^ mix64(id[1] ^ mix64(id[2] ^ mix64(id[3] + 1))));
}

static int id_eq(const uint64_t a[4], const uint64_t b[4])
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3])) == 0;
}

#define SLOT(h, idx) (((uint64_t)(h) << 32) | ((uint64_t)(idx) + 1))
#define SLOT_HASH(s) ((uint32_t)((s) >> 32))
#define SLOT_IDX(s)  ((uint32_t)(s)-1)

/* The table slot holding id, or -1 with *empty set to the first empty slot of its probe run. */
static int64_t tab_find(const struct chunkd_journal *j, const uint64_t id[4], uint32_t h,
			uint32_t *empty)
{
	/* Terminates: the load is at most one half, so an empty slot exists. */
	for (uint32_t i = h & j->tmask;; i = (i + 1) & j->tmask) {
		uint64_t s = j->tab[i];
		if (!s) {
			if (empty)
				*empty = i;
			return -1;
		}
		if (SLOT_HASH(s) == h && id_eq(j->ents[SLOT_IDX(s)].id, id))
			return i;
	}
}

static int tab_resize(struct chunkd_journal *j, uint32_t cap)
{
	uint64_t *t = big_alloc((size_t)cap * sizeof(*t));
	if (!t)
		return -ENOMEM;
	uint32_t mask = cap - 1;
	for (uint32_t i = 0; j->tab && i <= j->tmask; i++) {
		uint64_t s = j->tab[i];
		if (!s)
			continue;
		uint32_t k = SLOT_HASH(s) & mask;
		while (t[k])
			k = (k + 1) & mask;
		t[k] = s;
	}
	if (j->tab)
		big_free(j->tab, ((size_t)j->tmask + 1) * sizeof(*t));
	j->tab = t;
	j->tmask = mask;
	return 0;
}

/* Room for n entries in ents[] and a table that holds them at a load of at most one half. */
static int index_reserve(struct chunkd_journal *j, uint64_t n)
{
	if (n > (1u << 30))
		return -ENOMEM;
	if (n > j->ents_cap) {
		uint32_t cap = j->ents_cap;
		while (cap < n)
			cap *= 2;
		struct jent *e = big_realloc(j->ents, (size_t)j->ents_cap * sizeof(*e),
					     (size_t)cap * sizeof(*e));
		if (!e)
			return -ENOMEM;
		j->ents = e;
		j->ents_cap = cap;
	}
	if (n * 2 > (uint64_t)j->tmask + 1) {
		uint32_t cap = j->tmask + 1;
		while ((uint64_t)cap < n * 2)
			cap *= 2;
		return tab_resize(j, cap);
	}
	return 0;
}

/* Empty slot i, shifting later members of its probe run back (no tombstones). */
static void tab_delete(struct chunkd_journal *j, uint32_t i)
{
	uint32_t m = j->tmask;
	for (uint32_t k = (i + 1) & m;; k = (k + 1) & m) {
		uint64_t s = j->tab[k];
		if (!s)
			break;
		/* s may fill the hole at i iff i lies on its probe path: between home and k. */
		uint32_t home = SLOT_HASH(s) & m;
		if (((k - home) & m) >= ((k - i) & m)) {
			j->tab[i] = s;
			i = k;
		}
	}
	j->tab[i] = 0;
}

/* Make id's live record the one at off, inserting it if new; h is id_hash(id). */
static int index_put(struct chunkd_journal *j, const uint64_t id[4], uint32_t h, uint64_t off,
		     uint32_t size, uint32_t type, uint64_t ts)
{
	uint32_t empty = 0;
	int64_t i = tab_find(j, id, h, &empty);
	struct jent *e;
	if (i >= 0) {
		e = &j->ents[SLOT_IDX(j->tab[i])];
		j->live_bytes -= e->size;
	} else {
		if (j->nents == j->ents_cap ||
		    (uint64_t)(j->nents + 1) * 2 > (uint64_t)j->tmask + 1) {
			int rc = index_reserve(j, (uint64_t)j->nents * 2);
			if (rc)
				return rc;
			tab_find(j, id, h, &empty);
		}
		e = &j->ents[j->nents];
		memcpy(e->id, id, 32);
		j->tab[empty] = SLOT(h, j->nents);
		j->nents++;
	}
	e->off = off;
	e->size = size;
	e->type = type;
	e->ts_ns = ts;
	j->live_bytes += size;
	return 0;
}

static int index_init(struct chunkd_journal *j)
{
	j->ents_cap = 1024;
	j->ents = big_alloc(j->ents_cap * sizeof(*j->ents));
	if (!j->ents)
		return -ENOMEM;
	return tab_resize(j, 2048);
}

static void index_free(struct chunkd_journal *j)
{
	big_free(j->ents, (size_t)j->ents_cap * sizeof(*j->ents));
	if (j->tab)
		big_free(j->tab, ((size_t)j->tmask + 1) * sizeof(*j->tab));
}

/* ---- a block reader over [start, size) of a file --------------------------------------------- */

struct reader {
	int fd;
	uint8_t *buf;
	uint64_t base; /* file offset of buf[0] */
	size_t lo, hi; /* buf[lo, hi) is read and not yet consumed */
	uint64_t size; /* read no further than this */
};

/* Make at least n bytes from base + lo available in buf[lo, ...). The caller knows that the
 * file has them (base + lo + n <= size): running out early is -EIO. */
static int reader_need(struct reader *rd, size_t n)
{
	if (rd->hi - rd->lo >= n)
		return 0;
	memmove(rd->buf, rd->buf + rd->lo, rd->hi - rd->lo);
	rd->base += rd->lo;
	rd->hi -= rd->lo;
	rd->lo = 0;
	/* Fill the whole block, not just n bytes: one read() serves many records. */
	while (rd->hi < n) {
		uint64_t left = rd->size - (rd->base + rd->hi);
		size_t want = READ_BLOCK - rd->hi < left ? READ_BLOCK - rd->hi : (size_t)left;
		if (!want)
			return -EIO;
		ssize_t r = pread(rd->fd, rd->buf + rd->hi, want, (off_t)(rd->base + rd->hi));
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return -EIO; /* the file shrank under us */
		rd->hi += (size_t)r;
	}
	return 0;
}

/* Are all bytes of [from, size) zero? (Unwritten blocks of an interrupted commit read as zeros.) */
static int zero_from(struct reader *rd, uint64_t from)
{
	while (from < rd->size) {
		size_t n = rd->size - from < READ_BLOCK ? (size_t)(rd->size - from) : READ_BLOCK;
		ssize_t r = pread(rd->fd, rd->buf, n, (off_t)from);
		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			return 0;
		for (ssize_t i = 0; i < r; i++)
			if (rd->buf[i])
				return 0;
		from += (uint64_t)r;
	}
	return 1;
}

/* ---- open and replay ------------------------------------------------------------------------- */

static int keep_all(const struct chunkd_jrec *r, void *arg);

static void header_bytes(uint8_t h[JHDR_LEN])
{
	memset(h, 0, JHDR_LEN);
	memcpy(h, jmagic, 8);
	put32(h + 8, CHUNKD_JOURNAL_VERSION);
	put32(h + 12, JHDR_LEN);
	put32(h + 16, 0); /* flags: none defined */
	put32(h + JHDR_CRC, chunkd__crc32c(0, h, JHDR_CRC));
}

/*
 * Create the journal durably: the header goes into journal.tmp, which is fsynced and then renamed
 * to journal (never over an existing one), and the directory is fsynced. A crash leaves either no
 * journal (and maybe a journal.tmp, removed at the next open) or one with a complete header.
 */
static int create_journal(struct chunkd_journal *j)
{
	uint8_t h[JHDR_LEN];
	header_bytes(h);
	int fd = openat(j->dirfd, CHUNKD_JOURNAL_TMP_NAME,
			O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (fd < 0)
		return -errno;
	int rc = pwrite_all(fd, h, JHDR_LEN, 0);
	if (!rc && fsync(fd) < 0)
		rc = -errno;
	if (!rc && renameat2(j->dirfd, CHUNKD_JOURNAL_TMP_NAME, j->dirfd, CHUNKD_JOURNAL_NAME,
			     RENAME_NOREPLACE) < 0)
		rc = -errno;
	if (rc) {
		unlinkat(j->dirfd, CHUNKD_JOURNAL_TMP_NAME, 0);
		close(fd);
		return rc;
	}
	/* From here the name is taken; a failed directory fsync is reported, the file kept. */
	if (fsync(j->dirfd) < 0) {
		rc = -errno;
		close(fd);
		return rc;
	}
	j->fd = fd;
	j->durable_end = JHDR_LEN;
	return 0;
}

/* Check the file header. -EPROTO with st->why on anything this version cannot read. */
static int check_header(struct chunkd_journal *j, uint64_t size, struct chunkd_journal_stats *st)
{
	uint8_t h[JHDR_LEN];
	if (size < JHDR_LEN) {
		set_why(st, "not a chunkd journal: %llu bytes, shorter than the %u-byte header",
			(unsigned long long)size, JHDR_LEN);
		return -EPROTO;
	}
	ssize_t r;
	do
		r = pread(j->fd, h, JHDR_LEN, 0);
	while (r < 0 && errno == EINTR);
	if (r < 0)
		return -errno;
	if (r != JHDR_LEN)
		return -EIO;
	if (memcmp(h, jmagic, 8)) {
		set_why(st, "not a chunkd journal: bad magic (want CNKDJRN1)");
		return -EPROTO;
	}
	if (get32(h + 8) != CHUNKD_JOURNAL_VERSION && get32(h + 8) != 1) {
		set_why(st, "unsupported journal version %u (this daemon reads versions 1 and %u)",
			get32(h + 8), CHUNKD_JOURNAL_VERSION);
		return -EPROTO;
	}
	if (get32(h + JHDR_CRC) != chunkd__crc32c(0, h, JHDR_CRC)) {
		set_why(st, "journal header CRC mismatch");
		return -EPROTO;
	}
	if (get32(h + 12) != JHDR_LEN || get32(h + 16) != 0) {
		set_why(st, "journal header length %u or flags %#x unknown to version %u",
			get32(h + 12), get32(h + 16), get32(h + 8));
		return -EPROTO;
	}
	j->file_version = get32(h + 8);
	return 0;
}

/*
 * Stop replay at the record at `off`: truncate the file there and fsync it, and record the cut.
 * Everything after off was either never acknowledged (a torn commit) or is unreachable anyway
 * (records are only found by scanning from the start), and appends must not follow garbage.
 */
static int cut_at(struct chunkd_journal *j, uint64_t off, uint64_t size, uint32_t kind,
		  struct chunkd_journal_stats *st)
{
	st->cut = kind;
	st->cut_offset = off;
	st->cut_bytes = size - off;
	if (ftruncate(j->fd, (off_t)off) < 0 || fsync(j->fd) < 0)
		return -errno;
	return 0;
}

/*
 * Hash the ids of up to PREFETCH_BATCH records whose headers are in the buffer from rd->lo on and
 * prefetch their table slots, so that the batch's cache misses overlap instead of stalling one
 * record at a time. The walk trusts the length fields only to find the next header: the main loop
 * checks every record before using it and stops at the first bad one, so a bad length here costs
 * only useless prefetches. Returns the number of hashes put in h[] (at least one when a header is
 * there), h[i] being the hash of the i-th record from rd->lo.
 */
static unsigned prefetch_batch(const struct chunkd_journal *j, const struct reader *rd, uint32_t *h)
{
	size_t q = rd->lo;
	unsigned n = 0;
	while (n < PREFETCH_BATCH && q + R_HDR <= rd->hi) {
		const uint8_t *p = rd->buf + q;
		uint64_t id[4];
		memcpy(id, p + R_ID, 32);
		h[n] = id_hash(id);
		__builtin_prefetch(&j->tab[h[n] & j->tmask]);
		n++;
		uint32_t len = get32(p + R_LEN);
		if (len < R_HDR || len % 8 || len > R_MAX)
			break;
		q += len;
	}
	return n;
}

/*
 * Size the index for the whole file at once, estimating the record count from the first block's
 * average record size: growing by doubling would rehash the table several times, each time with
 * a cache miss per entry. Capped at the catalogue's largest size; an error only loses the hint.
 */
static void presize(struct chunkd_journal *j, struct reader *rd)
{
	uint64_t n = 0, bytes = 0;
	for (size_t q = rd->lo; q + R_HDR <= rd->hi;) {
		uint32_t len = get32(rd->buf + q + R_LEN);
		if (len < R_HDR || len % 8 || len > R_MAX)
			break;
		n++;
		bytes += len;
		q += len;
	}
	if (!n)
		return;
	uint64_t est = (rd->size - JHDR_LEN) / (bytes / n) + 1;
	(void)index_reserve(j, est < (1u << 22) ? est : (1u << 22));
}

static int replay_file(struct chunkd_journal *j, uint64_t size, chunkd_journal_replay_fn fn,
		       void *arg, struct chunkd_journal_stats *st)
{
	struct reader rd = {.fd = j->fd, .base = JHDR_LEN, .size = size};
	struct chunkd_dl *dl = malloc(sizeof(*dl));
	rd.buf = malloc(READ_BLOCK);
	int rc = 0;
	if (!dl || !rd.buf) {
		rc = -ENOMEM;
		goto out;
	}
	uint64_t off = JHDR_LEN;
	char why[96];
	uint32_t hs[PREFETCH_BATCH];
	unsigned nh = 0, ih = 0;
	if (size - off >= R_HDR) {
		rc = reader_need(&rd, R_HDR); /* fills the first block */
		if (rc)
			goto out;
		presize(j, &rd);
	}
	while (off < size) {
		uint64_t left = size - off;
		uint32_t kind = CHUNKD_JOURNAL_CUT_CORRUPT;
		if (left < R_HDR) {
			kind = CHUNKD_JOURNAL_CUT_TORN;
			snprintf(why, sizeof(why), "incomplete record header (%llu bytes)",
				 (unsigned long long)left);
			goto bad;
		}
		rc = reader_need(&rd, R_HDR);
		if (rc)
			goto out;
		if (ih == nh) {
			nh = prefetch_batch(j, &rd, hs);
			ih = 0;
		}
		const uint8_t *p = rd.buf + rd.lo;
		uint32_t len = get32(p + R_LEN);
		if (len < R_HDR || len % 8 || len > R_MAX) {
			snprintf(why, sizeof(why), "bad record length %u", len);
			if (zero_from(&rd, off))
				kind = CHUNKD_JOURNAL_CUT_TORN;
			goto bad;
		}
		if (len > left) {
			kind = CHUNKD_JOURNAL_CUT_TORN;
			snprintf(why, sizeof(why), "record of %u bytes, %llu left in the file", len,
				 (unsigned long long)left);
			goto bad;
		}
		rc = reader_need(&rd, len);
		if (rc)
			goto out;
		p = rd.buf + rd.lo;
		struct chunkd_jrec r;
		int d = decode(p, len, j->file_version, &r, dl, why, sizeof(why));
		if (d == -EBADMSG) {
			/* A CRC mismatch is what a torn write looks like when it is the last thing
			 * in the file, or followed only by unwritten (zero) blocks. */
			if (zero_from(&rd, off + len))
				kind = CHUNKD_JOURNAL_CUT_TORN;
			goto bad;
		}
		if (d)
			goto bad; /* a CRC-valid record with bad content: never a torn write */
		if (fn) {
			rc = fn(&r, arg);
			if (rc)
				goto out;
		}
		/* hs[ih] hashed this record's id, read from the same bytes before the checks. */
		assert(hs[ih] == id_hash(r.id));
		rc = r.refused ? 0 : index_put(j, r.id, hs[ih], off, len, r.type, r.ts_ns);
		ih++;
		if (rc)
			goto out;
		st->records++;
		rd.lo += len;
		off += len;
		continue;
	bad:
		set_why(st, "%s", why);
		rc = cut_at(j, off, size, kind, st);
		size = off;
		break;
	}
	j->durable_end = size;
out:
	free(rd.buf);
	free(dl);
	return rc;
}

int chunkd__journal_open(int dirfd, struct chunkd_journal **out, chunkd_journal_replay_fn replay,
			 void *arg, struct chunkd_journal_stats *st)
{
	struct chunkd_journal_stats dummy;
	if (!st)
		st = &dummy;
	memset(st, 0, sizeof(*st));
	if (!out)
		return -EINVAL;
	*out = NULL;
	uint64_t t0 = now_ns(CLOCK_MONOTONIC);

	struct chunkd_journal *j = calloc(1, sizeof(*j));
	if (!j)
		return -ENOMEM;
	j->fd = -1;
	j->floor = CHUNKD_JOURNAL_COMPACT_FLOOR;
	int rc = index_init(j);
	if (rc)
		goto err_free;
	j->dirfd = fcntl(dirfd, F_DUPFD_CLOEXEC, 0);
	if (j->dirfd < 0) {
		rc = -errno;
		goto err_free;
	}

	/* A journal.tmp is the new file of a compaction that did not reach its rename (or whose
	 * rename was not made durable): journal still holds every record, so it goes. */
	if (unlinkat(j->dirfd, CHUNKD_JOURNAL_TMP_NAME, 0) == 0)
		st->tmp_removed = 1;
	else if (errno != ENOENT) {
		rc = -errno;
		goto err_dir;
	}

	/* O_NONBLOCK so that a FIFO in its place cannot hang the open; cleared below, since
	 * io_uring would turn it into -EAGAIN on the loop's writes. */
	j->fd = openat(j->dirfd, CHUNKD_JOURNAL_NAME, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
	if (j->fd < 0 && errno == ENOENT) {
		rc = create_journal(j);
		if (rc)
			goto err_dir;
		j->file_version = CHUNKD_JOURNAL_VERSION;
		st->created = 1;
	} else if (j->fd < 0) {
		rc = -errno;
		goto err_dir;
	} else {
		struct stat sb;
		if (fstat(j->fd, &sb) < 0) {
			rc = -errno;
			goto err_fd;
		}
		if (!S_ISREG(sb.st_mode)) {
			set_why(st, "journal is not a regular file");
			rc = -EPROTO;
			goto err_fd;
		}
		if (fcntl(j->fd, F_SETFL, 0) < 0) {
			rc = -errno;
			goto err_fd;
		}
		rc = check_header(j, (uint64_t)sb.st_size, st);
		if (rc)
			goto err_fd;
		rc = replay_file(j, (uint64_t)sb.st_size, replay, arg, st);
		if (rc)
			goto err_fd;
	}
	/* A version 1 file is copied whole, every record as it is (a version 1 record reads the
	 * same in version 2), under a version 2 header before anything is appended: refused
	 * records may follow. Whole, because the caller cannot have said yet which superseded
	 * records still wait for an answer. If that fails (a full disk), the file stays version 1
	 * and refused records are written the version 1 way until a compaction succeeds. */
	if (j->file_version < CHUNKD_JOURNAL_VERSION && j->durable_end > JHDR_LEN) {
		j->keep = keep_all; /* no keep function can be set before open returns */
		rc = chunkd__journal_compact(j);
		j->keep = NULL;
		if (rc == 0)
			st->upgraded = 1;
		else if (j->err)
			goto err_fd; /* the rename happened but may not be durable: sticky */
		rc = 0;
	}

	st->replay_ns = now_ns(CLOCK_MONOTONIC) - t0;
	st->live_records = j->nents;
	st->live_bytes = j->live_bytes;
	st->file_bytes = j->durable_end;
	j->open_st = *st;
	*out = j;
	return 0;

err_fd:
	close(j->fd);
err_dir:
	close(j->dirfd);
err_free:
	index_free(j);
	free(j);
	return rc;
}

void chunkd__journal_close(struct chunkd_journal *j)
{
	if (!j)
		return;
	if (j->fd >= 0)
		close(j->fd);
	close(j->dirfd);
	free(j->bufs[0].p);
	free(j->bufs[1].p);
	index_free(j);
	free(j);
}

/* ---- append, forget, lookup ------------------------------------------------------------------ */

/* File offset of the next appended byte. */
static uint64_t logical_end(const struct chunkd_journal *j)
{
	uint64_t end = j->durable_end + j->bufs[j->cur].len;
	if (j->in_flight)
		end += j->bufs[!j->cur].len;
	return end;
}

int chunkd__journal_append(struct chunkd_journal *j, const struct chunkd_jrec *r)
{
	if (j->err)
		return j->err;
	uint16_t nl[CHUNKD_MAX_FILES], ul[CHUNKD_MAX_FILES];
	size_t size = R_HDR;
	if (r->type == CHUNKD_JREC_DOWNLOAD) {
		const struct chunkd_dl *dl = r->dl;
		if (!dl || !id_eq(dl->id, r->id) || dl->nfiles == 0 ||
		    dl->nfiles > CHUNKD_MAX_FILES)
			return -EINVAL;
		size = R_FILES;
		for (uint32_t i = 0; i < dl->nfiles; i++) {
			size_t n = strnlen(dl->files[i].name, CHUNKD_MAX_NAME + 1);
			size_t u = strnlen(dl->files[i].url, CHUNKD_MAX_URL + 1);
			if (n > CHUNKD_MAX_NAME || u > CHUNKD_MAX_URL)
				return -EINVAL;
			nl[i] = (uint16_t)n;
			ul[i] = (uint16_t)u;
			size += 4 + n + u;
		}
		uint32_t bad;
		if (dl_problem(dl, nl, ul, &bad))
			return -EINVAL;
		size = ALIGN8(size);
	} else if (r->type != CHUNKD_JREC_DELETE) {
		return -EINVAL;
	}
	if (r->refused && (r->type != CHUNKD_JREC_DOWNLOAD || r->refused < -255 || r->refused > 0))
		return -EINVAL;
	assert(size <= R_MAX); /* replay refuses longer records */

	struct jbuf *b = &j->bufs[j->cur];
	if (b->cap - b->len < size) {
		size_t cap = b->cap ? b->cap * 2 : 64 * 1024;
		while (cap - b->len < size)
			cap *= 2;
		uint8_t *p = realloc(b->p, cap);
		if (!p)
			return -ENOMEM;
		b->p = p;
		b->cap = cap;
	}
	uint64_t off = logical_end(j);
	uint64_t ts = r->ts_ns ? r->ts_ns : now_ns(CLOCK_REALTIME);
	/* A version 1 file cannot say "refused" (its upgrade failed): such a record is written
	 * and indexed as accepted, as version 1 always did. */
	int refused = r->refused && j->file_version >= 2;
	int rc = refused ? 0 : index_put(j, r->id, id_hash(r->id), off, (uint32_t)size, r->type, ts);
	if (rc)
		return rc;
	encode(b->p + b->len, size, r, ts, nl, ul, j->file_version);
	b->len += size;
	j->last_seq++;
	return 0;
}

void chunkd__journal_forget(struct chunkd_journal *j, const uint64_t id[4])
{
	int64_t i = tab_find(j, id, id_hash(id), NULL);
	if (i < 0)
		return;
	uint32_t idx = SLOT_IDX(j->tab[i]);
	j->live_bytes -= j->ents[idx].size;
	tab_delete(j, (uint32_t)i);
	/* Keep ents[] dense: move the last entry into the hole and repoint its slot. */
	uint32_t last = j->nents - 1;
	if (idx != last) {
		j->ents[idx] = j->ents[last];
		uint32_t h = id_hash(j->ents[idx].id);
		uint32_t k = h & j->tmask;
		while (j->tab[k] != SLOT(h, last))
			k = (k + 1) & j->tmask;
		j->tab[k] = SLOT(h, idx);
	}
	j->nents--;
}

int chunkd__journal_live(const struct chunkd_journal *j, const uint64_t id[4],
			 struct chunkd_journal_entry *out)
{
	int64_t i = tab_find(j, id, id_hash(id), NULL);
	if (i < 0)
		return -ENOENT;
	if (out) {
		const struct jent *e = &j->ents[SLOT_IDX(j->tab[i])];
		out->off = e->off;
		out->size = e->size;
		out->type = e->type;
		out->ts_ns = e->ts_ns;
	}
	return 0;
}

/* ---- group commit ---------------------------------------------------------------------------- */

int chunkd__journal_pending(const struct chunkd_journal *j, const void **buf, size_t *len,
			    uint64_t *file_off)
{
	if (j->err)
		return j->err;
	const struct jbuf *b = &j->bufs[j->cur];
	*buf = b->p;
	*len = b->len;
	*file_off = j->durable_end + (j->in_flight ? j->bufs[!j->cur].len : 0);
	return 0;
}

int chunkd__journal_begin_commit(struct chunkd_journal *j)
{
	if (j->err)
		return j->err;
	if (j->in_flight)
		return -EBUSY;
	j->in_flight = 1;
	j->frozen_seq = j->last_seq;
	j->cur = !j->cur;
	/* The other buffer was emptied by the last end_commit (or never used). */
	assert(j->bufs[j->cur].len == 0);
	return 0;
}

void chunkd__journal_end_commit(struct chunkd_journal *j, int result)
{
	if (!j->in_flight)
		return;
	struct jbuf *f = &j->bufs[!j->cur];
	j->in_flight = 0;
	if (result) {
		/* Where the bytes went is unknown now: nothing more may be written after them. */
		set_sticky(j, result < 0 ? result : -EIO);
		return;
	}
	j->durable_end += f->len;
	j->durable_seq = j->frozen_seq;
	f->len = 0;
	if (f->cap > BUF_KEEP) {
		free(f->p);
		f->p = NULL;
		f->cap = 0;
	}
}

int chunkd__journal_sync(struct chunkd_journal *j)
{
	if (j->err)
		return j->err;
	if (j->in_flight)
		return -EBUSY;
	struct jbuf *b = &j->bufs[j->cur];
	if (!b->len)
		return 0;
	int rc = fault(j, CHUNKD_JFAULT_SYNC_WRITE);
	if (!rc)
		rc = pwrite_all(j->fd, b->p, b->len, j->durable_end);
	if (!rc)
		rc = fault(j, CHUNKD_JFAULT_SYNC_FDATASYNC);
	if (!rc && fdatasync(j->fd) < 0)
		rc = -errno;
	if (rc)
		return set_sticky(j, rc);
	j->durable_end += b->len;
	j->durable_seq = j->last_seq;
	b->len = 0;
	return 0;
}

int chunkd__journal_fd(const struct chunkd_journal *j)
{
	return j->fd;
}

uint64_t chunkd__journal_last_seq(const struct chunkd_journal *j)
{
	return j->last_seq;
}

uint64_t chunkd__journal_durable_seq(const struct chunkd_journal *j)
{
	return j->durable_seq;
}

/* ---- compaction ------------------------------------------------------------------------------ */

int chunkd__journal_should_compact(const struct chunkd_journal *j)
{
	uint64_t size = logical_end(j);
	return size > j->floor && size > 2 * (JHDR_LEN + j->live_bytes + j->kept_bytes);
}

void chunkd__journal_set_compact_floor(struct chunkd_journal *j, uint64_t bytes)
{
	j->floor = bytes;
}

void chunkd__journal_set_keep(struct chunkd_journal *j, chunkd_journal_keep_fn keep, void *arg)
{
	j->keep = keep;
	j->keep_arg = arg;
}

/* A keep function that keeps everything (upgrading a version 1 file). */
static int keep_all(const struct chunkd_jrec *r, void *arg)
{
	(void)r;
	(void)arg;
	return 1;
}

/* Whether compaction keeps the superseded record at p: the caller's keep function says so. */
static int keep_superseded(const struct chunkd_journal *j, const uint8_t *p)
{
	if (!j->keep)
		return 0;
	struct chunkd_jrec r = {.type = p[R_TYPE],
				.refused = p[R_FLAGS] & F_REFUSED ? -(int32_t)p[R_ERRNO] : 0,
				.ts_ns = get64(p + R_TS),
				.client = get32(p + R_CLIENT),
				.owner = get64(p + R_OWNER),
				.ticket = get64(p + R_TICKET),
				.dl = NULL};
	memcpy(r.id, p + R_ID, 32);
	return j->keep(&r, j->keep_arg) != 0;
}

/*
 * Copy the live records of the (synced) journal into tfd, in file order, by one sequential scan:
 * a record is live iff the index points at its offset. A superseded record is copied too when
 * the keep function asks for it (it stays before its id's live record: file order). Each copied
 * record's CRC is checked again, since the copy is what survives. new_off[i] receives the new
 * offset of ents[i]; *end the new size; *kept the bytes of kept superseded records.
 */
static int copy_live(struct chunkd_journal *j, int tfd, uint64_t *new_off, uint64_t *end,
		     uint64_t *kept)
{
	struct reader rd = {.fd = j->fd, .base = JHDR_LEN, .size = j->durable_end};
	uint8_t *obuf = malloc(WRITE_BLOCK);
	rd.buf = malloc(READ_BLOCK);
	int rc = 0;
	if (!obuf || !rd.buf) {
		rc = -ENOMEM;
		goto out;
	}
	header_bytes(obuf);
	size_t olen = JHDR_LEN;
	uint64_t obase = 0, copied = 0;
	for (uint64_t off = JHDR_LEN; off < j->durable_end;) {
		if (j->durable_end - off < R_HDR) {
			rc = -EIO;
			goto out;
		}
		rc = reader_need(&rd, R_HDR);
		if (rc)
			goto out;
		uint32_t len = get32(rd.buf + rd.lo + R_LEN);
		if (len < R_HDR || len % 8 || len > R_MAX || len > j->durable_end - off) {
			rc = -EIO;
			goto out;
		}
		rc = reader_need(&rd, len);
		if (rc)
			goto out;
		const uint8_t *p = rd.buf + rd.lo;
		uint64_t id[4];
		memcpy(id, p + R_ID, 32);
		int64_t i = tab_find(j, id, id_hash(id), NULL);
		int live = i >= 0 && j->ents[SLOT_IDX(j->tab[i])].off == off;
		if (live || keep_superseded(j, p)) {
			if (get32(p + R_CRC) != chunkd__crc32c(0, p + 4, len - 4)) {
				rc = -EIO;
				goto out;
			}
			if (WRITE_BLOCK - olen < len) {
				rc = fault(j, CHUNKD_JFAULT_COMPACT_WRITE);
				if (!rc)
					rc = pwrite_all(tfd, obuf, olen, obase);
				if (rc)
					goto out;
				obase += olen;
				olen = 0;
			}
			memcpy(obuf + olen, p, len);
			if (live) {
				new_off[SLOT_IDX(j->tab[i])] = obase + olen;
				copied++;
			} else {
				*kept += len;
			}
			olen += len;
		}
		rd.lo += len;
		off += len;
	}
	/* Every live entry must have been found where the index says; else the index and the file
	 * disagree and the new file would lose records. */
	if (copied != j->nents) {
		rc = -EIO;
		goto out;
	}
	rc = fault(j, CHUNKD_JFAULT_COMPACT_WRITE);
	if (!rc)
		rc = pwrite_all(tfd, obuf, olen, obase);
	*end = obase + olen;
out:
	free(rd.buf);
	free(obuf);
	return rc;
}

int chunkd__journal_compact(struct chunkd_journal *j)
{
	if (j->err)
		return j->err;
	if (j->in_flight)
		return -EBUSY;
	/* The scan below reads records from the file only: first put the pending ones there. */
	int rc = chunkd__journal_sync(j);
	if (rc)
		return rc;
	uint64_t *new_off = malloc(((size_t)j->nents + 1) * sizeof(*new_off));
	if (!new_off)
		return -ENOMEM;

	/* A journal.tmp here can only be a leftover of an earlier failed attempt. */
	if (unlinkat(j->dirfd, CHUNKD_JOURNAL_TMP_NAME, 0) < 0 && errno != ENOENT) {
		rc = -errno;
		goto err_free;
	}
	int tfd = openat(j->dirfd, CHUNKD_JOURNAL_TMP_NAME,
			 O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
	if (tfd < 0) {
		rc = -errno;
		goto err_free;
	}
	uint64_t end = 0, kept = 0;
	rc = copy_live(j, tfd, new_off, &end, &kept);
	if (rc)
		goto err_tmp;
	/* The new file's bytes must be on disk before its name can replace the old journal. */
	rc = fault(j, CHUNKD_JFAULT_COMPACT_FSYNC);
	if (!rc && fsync(tfd) < 0)
		rc = -errno;
	if (rc)
		goto err_tmp;
	rc = fault(j, CHUNKD_JFAULT_COMPACT_RENAME);
	if (!rc && renameat(j->dirfd, CHUNKD_JOURNAL_TMP_NAME, j->dirfd, CHUNKD_JOURNAL_NAME) < 0)
		rc = -errno;
	if (rc)
		goto err_tmp;

	/*
	 * journal now names the new file. Switch to it whatever happens next: the old inode is
	 * unlinked, so appending there would write into nothing.
	 */
	close(j->fd);
	j->fd = tfd;
	j->durable_end = end;
	j->kept_bytes = kept;
	j->file_version = CHUNKD_JOURNAL_VERSION;
	for (uint32_t i = 0; i < j->nents; i++)
		j->ents[i].off = new_off[i];
	free(new_off);
	/*
	 * Until the directory is fsynced a crash may bring back the old journal; records appended
	 * to the new file alone would then be lost. So a failure here is sticky: nothing more is
	 * committed, and the daemon restarts from whichever file the directory holds (both have
	 * every record acknowledged so far).
	 */
	rc = fault(j, CHUNKD_JFAULT_COMPACT_DIRSYNC);
	if (!rc && fsync(j->dirfd) < 0)
		rc = -errno;
	if (rc)
		return set_sticky(j, rc);
	return 0;

err_tmp:
	close(tfd);
	unlinkat(j->dirfd, CHUNKD_JOURNAL_TMP_NAME, 0);
err_free:
	free(new_off);
	return rc;
}

void chunkd__journal_stats(const struct chunkd_journal *j, struct chunkd_journal_stats *st)
{
	*st = j->open_st;
	st->live_records = j->nents;
	st->live_bytes = j->live_bytes;
	st->file_bytes = logical_end(j);
}

void chunkd__journal_set_fault_hook(struct chunkd_journal *j, int (*hook)(int point, void *arg),
				    void *arg)
{
	j->hook = hook;
	j->hook_arg = arg;
}
