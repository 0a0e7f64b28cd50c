/*
 * meta.c — the chunk metadata file, chunk directory names, hex and CRC32C. See meta.h for the
 * contract of each function and docs/on-disk.md for the format.
 *
 * The parser runs once per chunk at every daemon start (100k chunks is normal), so it allocates
 * nothing, copies little, and formats a message only when it fails.
 */
#include "meta.h"

#include <assert.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#define U64_DIGITS 20 /* decimal digits of UINT64_MAX */

/*
 * The longest text chunkd__meta_format() can produce, with its NUL: every number at its widest,
 * every file with a CRC and a CHUNKD_MAX_NAME-byte name.
 */
#define META_FORMAT_MAX                                                                   \
	(sizeof "chunkd-meta 1\n" - 1 + sizeof "id \n" - 1 + CHUNKD_META_HEX_LEN +        \
	 sizeof "dataset \n" - 1 + CHUNKD_META_HEX_LEN + sizeof "first_block \n" - 1 +    \
	 U64_DIGITS + sizeof "end_block \n" - 1 + U64_DIGITS + sizeof "files 64\n" - 1 +  \
	 CHUNKD_MAX_FILES * (sizeof "file   \n" - 1 + U64_DIGITS + 8 + CHUNKD_MAX_NAME) + \
	 sizeof "end\n" - 1 + 1)

_Static_assert(META_FORMAT_MAX <= CHUNKD_META_MAX, "a formatted chunk always fits the limit");
_Static_assert(CHUNKD_MAX_FILES == 64, "META_FORMAT_MAX spells \"files 64\"");
_Static_assert(CHUNKD_META_DIR_NAME_LEN == 106 && CHUNKD_META_REL_PATH_LEN == 171,
	       "docs/on-disk.md gives these lengths");

/* ---- hex ------------------------------------------------------------------------------- */

static const char hex_digits[16] = "0123456789abcdef";

static int hex_value(unsigned char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

void chunkd__hex_encode(const uint8_t *in, size_t n, char *out)
{
	for (size_t i = 0; i < n; i++) {
		out[2 * i] = hex_digits[in[i] >> 4];
		out[2 * i + 1] = hex_digits[in[i] & 15];
	}
	out[2 * n] = '\0';
}

int chunkd__hex_decode(const char *in, size_t hexlen, uint8_t *out)
{
	if (hexlen % 2)
		return -EINVAL;
	for (size_t i = 0; i < hexlen; i += 2) {
		int hi = hex_value((unsigned char)in[i]);
		int lo = hex_value((unsigned char)in[i + 1]);

		if (hi < 0 || lo < 0)
			return -EINVAL;
		out[i / 2] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

/* ---- small parsers and writers ---------------------------------------------------------- */

enum { NUM_OK = 0, NUM_SYNTAX = -1, NUM_RANGE = -2 };

/*
 * A canonical decimal u64: 1 to 20 digits, no sign, no leading zero unless the number is 0, so
 * that every value has exactly one spelling. Returns NUM_OK, NUM_SYNTAX or NUM_RANGE (overflow).
 */
static int parse_u64(const char *s, size_t n, uint64_t *out)
{
	uint64_t v = 0;

	if (n == 0 || (n > 1 && s[0] == '0'))
		return NUM_SYNTAX;
	for (size_t i = 0; i < n; i++) {
		unsigned d;

		if (s[i] < '0' || s[i] > '9')
			return NUM_SYNTAX;
		d = (unsigned)(s[i] - '0');
		if (v > (UINT64_MAX - d) / 10)
			return NUM_RANGE;
		v = v * 10 + d;
	}
	*out = v;
	return NUM_OK;
}

/* Exactly 8 hex digits (either case) into a u32, most significant digit first. */
static int parse_crc(const char *s, size_t n, uint32_t *out)
{
	uint32_t v = 0;

	if (n != 8)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		int d = hex_value((unsigned char)s[i]);

		if (d < 0)
			return -EINVAL;
		v = v << 4 | (uint32_t)d;
	}
	*out = v;
	return 0;
}

/* An output cursor; `pos` may run past `cap`, which the caller checks once at the end. */
struct out {
	char *buf;
	size_t cap, pos;
};

static void put_mem(struct out *o, const char *s, size_t n)
{
	if (o->pos < o->cap && n <= o->cap - o->pos)
		memcpy(o->buf + o->pos, s, n);
	o->pos += n;
}

static void put_str(struct out *o, const char *s)
{
	put_mem(o, s, strlen(s));
}

/* `v` in decimal, left-padded with zeros to `width` digits (0: no padding). */
static void put_u64(struct out *o, uint64_t v, size_t width)
{
	char tmp[U64_DIGITS];
	size_t n = 0;

	do {
		tmp[sizeof tmp - 1 - n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n < width)
		tmp[sizeof tmp - 1 - n++] = '0';
	put_mem(o, tmp + sizeof tmp - n, n);
}

static void put_hex(struct out *o, const uint8_t *in, size_t n)
{
	char tmp[CHUNKD_META_HEX_LEN + 1];

	assert(n <= CHUNKD_ID_SIZE);
	chunkd__hex_encode(in, n, tmp);
	put_mem(o, tmp, 2 * n);
}

/* NUL-terminate and return the length, or -ENOSPC if the text and its NUL did not fit. */
static int out_finish(struct out *o)
{
	if (o->pos >= o->cap)
		return -ENOSPC;
	o->buf[o->pos] = '\0';
	return (int)o->pos;
}

/* ---- names ------------------------------------------------------------------------------ */

/* What is wrong with a chunk file name, or NULL if nothing. */
static const char *name_problem(const char *name, size_t len)
{
	static const char meta_name[] = CHUNKD_META_NAME;

	if (len == 0)
		return "empty file name";
	if (len > CHUNKD_MAX_NAME)
		return "file name longer than 255 bytes";
	if (memchr(name, '/', len))
		return "'/' in file name";
	if (memchr(name, '\n', len))
		return "newline in file name";
	if (memchr(name, '\0', len))
		return "NUL byte in file name";
	if ((len == 1 && name[0] == '.') || (len == 2 && name[0] == '.' && name[1] == '.'))
		return "file name is '.' or '..'";
	if (len == sizeof meta_name - 1 && memcmp(name, meta_name, len) == 0)
		return "file name " CHUNKD_META_NAME " is reserved";
	return NULL;
}

_Static_assert(CHUNKD_MAX_NAME == 255, "name_problem() spells the limit");

int chunkd__meta_check_name(const char *name, size_t len)
{
	if (!name)
		return -EINVAL;
	return name_problem(name, len) ? -EINVAL : 0;
}

int chunkd__meta_dir_name(const struct chunkd_meta *m, char *out, size_t outlen)
{
	struct out o = {out, outlen, 0};

	put_u64(&o, m->first_block, U64_DIGITS);
	put_mem(&o, "-", 1);
	put_u64(&o, m->end_block, U64_DIGITS);
	put_mem(&o, "-", 1);
	put_hex(&o, m->id, CHUNKD_ID_SIZE);
	assert(o.pos == CHUNKD_META_DIR_NAME_LEN);
	return out_finish(&o);
}

int chunkd__meta_parse_dir_name(const char *name, uint64_t *first, uint64_t *end,
				uint8_t id[CHUNKD_ID_SIZE])
{
	const char *hex;

	if (strnlen(name, CHUNKD_META_DIR_NAME_LEN + 1) != CHUNKD_META_DIR_NAME_LEN)
		return -EINVAL;
	hex = name + 2 * (U64_DIGITS + 1);
	if (name[U64_DIGITS] != '-' || name[2 * U64_DIGITS + 1] != '-')
		return -EINVAL;
	/*
	 * Fixed-width digits: parse_u64() refuses leading zeros, so check and skip them here. An
	 * all-zero field is the number 0.
	 */
	for (int f = 0; f < 2; f++) {
		const char *s = name + f * (U64_DIGITS + 1);
		size_t z = 0;

		while (z < U64_DIGITS - 1 && s[z] == '0')
			z++;
		if (parse_u64(s + z, U64_DIGITS - z, f ? end : first) != NUM_OK)
			return -EINVAL;
	}
	if (*first >= *end)
		return -EINVAL;
	/* Lowercase only, so that a chunk has exactly one directory name. */
	for (int i = 0; i < CHUNKD_META_HEX_LEN; i++)
		if (hex[i] >= 'A' && hex[i] <= 'F')
			return -EINVAL;
	return chunkd__hex_decode(hex, CHUNKD_META_HEX_LEN, id);
}

/* ---- format ----------------------------------------------------------------------------- */

/* The invariants the parser enforces, for a struct built in memory. */
static int meta_valid(const struct chunkd_meta *m)
{
	if (m->nfiles < 1 || m->nfiles > CHUNKD_MAX_FILES || m->first_block >= m->end_block)
		return 0;
	for (uint32_t i = 0; i < m->nfiles; i++) {
		const char *name = m->files[i].name;

		if (name_problem(name, strnlen(name, sizeof m->files[i].name)))
			return 0;
		for (uint32_t j = 0; j < i; j++)
			if (strcmp(name, m->files[j].name) == 0)
				return 0;
	}
	return 1;
}

int chunkd__meta_format(const struct chunkd_meta *m, char *buf, size_t buflen)
{
	struct out o = {buf, buflen, 0};

	if (!meta_valid(m))
		return -EINVAL;
	put_str(&o, "chunkd-meta 1\nid ");
	put_hex(&o, m->id, CHUNKD_ID_SIZE);
	put_str(&o, "\ndataset ");
	put_hex(&o, m->dataset, CHUNKD_ID_SIZE);
	put_str(&o, "\nfirst_block ");
	put_u64(&o, m->first_block, 0);
	put_str(&o, "\nend_block ");
	put_u64(&o, m->end_block, 0);
	put_str(&o, "\nfiles ");
	put_u64(&o, m->nfiles, 0);
	put_str(&o, "\n");
	for (uint32_t i = 0; i < m->nfiles; i++) {
		const struct chunkd_meta_file *f = &m->files[i];

		put_str(&o, "file ");
		put_u64(&o, f->size, 0);
		put_str(&o, " ");
		if (f->has_crc) {
			uint8_t be[4] = {(uint8_t)(f->crc32c >> 24), (uint8_t)(f->crc32c >> 16),
					 (uint8_t)(f->crc32c >> 8), (uint8_t)f->crc32c};

			put_hex(&o, be, sizeof be);
		} else {
			put_str(&o, "-");
		}
		put_str(&o, " ");
		put_str(&o, f->name);
		put_str(&o, "\n");
	}
	put_str(&o, "end\n");
	assert(o.pos < META_FORMAT_MAX);
	return out_finish(&o);
}

/* ---- parse ------------------------------------------------------------------------------ */

/* The unread input, line by line. */
struct cursor {
	const char *p, *end;
	unsigned line; /* 1-based number of the line last taken */
	char *reason;
	size_t reasonlen;
};

__attribute__((format(printf, 2, 3))) static int fail(struct cursor *c, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (!c->reason || c->reasonlen == 0)
		return -EINVAL;
	n = snprintf(c->reason, c->reasonlen, "line %u: ", c->line);
	if (n >= 0 && (size_t)n < c->reasonlen) {
		va_start(ap, fmt);
		vsnprintf(c->reason + n, c->reasonlen - (size_t)n, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

/* Take the next line: *s, *n get its bytes without the '\n'. `what` names the expected line. */
static int next_line(struct cursor *c, const char *what, const char **s, size_t *n)
{
	const char *nl;

	c->line++;
	if (c->p == c->end)
		return fail(c, "missing '%s' line", what);
	nl = memchr(c->p, '\n', (size_t)(c->end - c->p));
	if (!nl)
		return fail(c, "no newline at end of line");
	*s = c->p;
	*n = (size_t)(nl - c->p);
	c->p = nl + 1;
	return 0;
}

/* Take the line "<key> <value>"; *v, *vn get the value (the rest of the line). */
static int keyed_line(struct cursor *c, const char *key, const char **v, size_t *vn)
{
	/* Initialised for the compiler, which cannot see that fail() returns non-zero. */
	size_t klen = strlen(key), n = 0;
	const char *s = NULL;
	int err;

	err = next_line(c, key, &s, &n);
	if (err)
		return err;
	if (n <= klen || memcmp(s, key, klen) != 0 || s[klen] != ' ')
		return fail(c, "expected '%s'", key);
	*v = s + klen + 1;
	*vn = n - klen - 1;
	return 0;
}

static int id_line(struct cursor *c, const char *key, uint8_t out[CHUNKD_ID_SIZE])
{
	const char *v = NULL;
	size_t vn = 0;
	int err;

	err = keyed_line(c, key, &v, &vn);
	if (err)
		return err;
	if (vn != CHUNKD_META_HEX_LEN || chunkd__hex_decode(v, vn, out))
		return fail(c, "bad hex in %s (want %d hex digits)", key, CHUNKD_META_HEX_LEN);
	return 0;
}

/* A number field of a line: `what` names it in messages. */
static int number(struct cursor *c, const char *what, const char *s, size_t n, uint64_t *out)
{
	switch (parse_u64(s, n, out)) {
	case NUM_OK:
		return 0;
	case NUM_RANGE:
		return fail(c, "%s does not fit in 64 bits", what);
	default:
		return fail(c, "bad number in %s (want decimal digits, no sign, no leading zero)",
			    what);
	}
}

static int number_line(struct cursor *c, const char *key, uint64_t *out)
{
	const char *v;
	size_t vn;
	int err;

	err = keyed_line(c, key, &v, &vn);
	if (err)
		return err;
	return number(c, key, v, vn, out);
}

/* "file <size> <crc32c or -> <name>"; `namelen` gets the name's length. */
static int file_line(struct cursor *c, struct chunkd_meta_file *f, size_t *namelen)
{
	const char *v, *sp1, *sp2, *vend, *problem;
	size_t vn;
	int err;

	err = keyed_line(c, "file", &v, &vn);
	if (err)
		return err;
	vend = v + vn;
	sp1 = memchr(v, ' ', vn);
	sp2 = sp1 ? memchr(sp1 + 1, ' ', (size_t)(vend - sp1 - 1)) : NULL;
	if (!sp2)
		return fail(c, "expected 'file <size> <crc32c> <name>'");
	err = number(c, "file size", v, (size_t)(sp1 - v), &f->size);
	if (err)
		return err;
	if (sp2 - sp1 == 2 && sp1[1] == '-') {
		f->has_crc = 0;
		f->crc32c = 0;
	} else if (parse_crc(sp1 + 1, (size_t)(sp2 - sp1 - 1), &f->crc32c) == 0) {
		f->has_crc = 1;
	} else {
		return fail(c, "bad crc32c (want 8 hex digits or '-')");
	}
	*namelen = (size_t)(vend - sp2 - 1);
	problem = name_problem(sp2 + 1, *namelen);
	if (problem)
		return fail(c, "%s", problem);
	memcpy(f->name, sp2 + 1, *namelen);
	f->name[*namelen] = '\0';
	return 0;
}

int chunkd__meta_parse(const char *buf, size_t len, struct chunkd_meta *m, char *reason,
		       size_t reasonlen)
{
	struct cursor c = {buf, buf + len, 0, reason, reasonlen};
	uint16_t namelen[CHUNKD_MAX_FILES];
	unsigned first_file_line;
	const char *s = NULL, *nul;
	uint64_t nfiles;
	size_t n = 0;
	int err;

	if (len > CHUNKD_META_MAX) {
		if (reason && reasonlen)
			snprintf(reason, reasonlen, "larger than %u bytes", CHUNKD_META_MAX);
		return -E2BIG;
	}
	if (len == 0) {
		if (reason && reasonlen)
			snprintf(reason, reasonlen, "empty file");
		return -EINVAL;
	}
	/* No valid line holds a NUL byte; refusing them up front keeps names C strings. */
	nul = memchr(buf, '\0', len);
	if (nul) {
		c.line = 1;
		for (const char *p = buf; (p = memchr(p, '\n', (size_t)(nul - p))); p++)
			c.line++;
		return fail(&c, "NUL byte");
	}

	err = next_line(&c, "chunkd-meta", &s, &n);
	if (err)
		return err;
	if (n != sizeof "chunkd-meta 1" - 1 || memcmp(s, "chunkd-meta 1", n) != 0) {
		if (n > 0 && s[n - 1] == '\r')
			return fail(&c, "line ends in \\r (lines must end in \\n only)");
		if (n > 12 && memcmp(s, "chunkd-meta ", 12) == 0) /* 12 == strlen("chunkd-meta ") */
			return fail(&c, "unsupported format version (this chunkd reads 1)");
		return fail(&c, "not a chunkd metadata file (want 'chunkd-meta 1')");
	}
	err = id_line(&c, "id", m->id);
	if (!err)
		err = id_line(&c, "dataset", m->dataset);
	if (!err)
		err = number_line(&c, "first_block", &m->first_block);
	if (!err)
		err = number_line(&c, "end_block", &m->end_block);
	if (err)
		return err;
	if (m->first_block >= m->end_block)
		return fail(&c, "first_block must be below end_block");
	err = number_line(&c, "files", &nfiles);
	if (err)
		return err;
	if (nfiles < 1 || nfiles > CHUNKD_MAX_FILES)
		return fail(&c, "files must be 1 to %d", CHUNKD_MAX_FILES);
	m->nfiles = (uint32_t)nfiles;

	first_file_line = c.line + 1;
	for (uint32_t i = 0; i < m->nfiles; i++) {
		struct chunkd_meta_file *f = &m->files[i];
		size_t nl = 0;

		err = file_line(&c, f, &nl);
		if (err)
			return err;
		namelen[i] = (uint16_t)nl;
		/* At most 64 * 63 / 2 comparisons, nearly all decided by the length. */
		for (uint32_t j = 0; j < i; j++)
			if (namelen[j] == nl && memcmp(m->files[j].name, f->name, nl) == 0)
				return fail(&c, "duplicate file name (as on line %u)",
					    first_file_line + j);
	}

	err = next_line(&c, "end", &s, &n);
	if (err)
		return err;
	if (n != 3 || memcmp(s, "end", 3) != 0) {
		if (n >= 5 && memcmp(s, "file ", 5) == 0)
			return fail(&c, "more file lines than 'files %u'", m->nfiles);
		return fail(&c, "expected 'end'");
	}
	if (c.p != c.end) {
		c.line++;
		return fail(&c, "data after 'end'");
	}
	return 0;
}

/* ---- files ------------------------------------------------------------------------------ */

static int read_meta_path(int dirfd, const char *path, struct chunkd_meta *m, char *reason,
			  size_t reasonlen)
{
	/* One byte more than the limit, to tell "exactly the limit" from "too large". */
	char buf[CHUNKD_META_MAX + 1];
	size_t len = 0;
	int fd, err = 0;

	fd = openat(dirfd, path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
	if (fd < 0)
		return -errno;
	while (len < sizeof buf) {
		ssize_t n = read(fd, buf + len, sizeof buf - len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			err = -errno;
			break;
		}
		if (n == 0)
			break;
		len += (size_t)n;
		/*
		 * A short read from a regular file is the end of the file on local filesystems,
		 * but not on every filesystem (FUSE), and confirming it costs a second read() per
		 * chunk. A line "end" is the last line of every valid file and is no other line
		 * (file lines start with "file "), so text ending in "\nend\n" is complete: stop.
		 * Anything else is read to the end, so that the parser sees all of it.
		 */
		if (len >= 5 && memcmp(buf + len - 5, "\nend\n", 5) == 0)
			break;
	}
	close(fd);
	if (err)
		return err;
	return chunkd__meta_parse(buf, len, m, reason, reasonlen);
}

int chunkd__meta_read_at(int dirfd, struct chunkd_meta *m, char *reason, size_t reasonlen)
{
	return read_meta_path(dirfd, CHUNKD_META_NAME, m, reason, reasonlen);
}

int chunkd__meta_read_in(int parentfd, const char *dir, struct chunkd_meta *m, char *reason,
			 size_t reasonlen)
{
	char path[CHUNKD_MAX_NAME + sizeof(CHUNKD_META_NAME) + 2];
	if (snprintf(path, sizeof(path), "%s/%s", dir, CHUNKD_META_NAME) >= (int)sizeof(path))
		return -ENAMETOOLONG;
	return read_meta_path(parentfd, path, m, reason, reasonlen);
}

static int write_all(int fd, const char *buf, size_t len)
{
	while (len) {
		ssize_t n = write(fd, buf, len);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/*
 * The temporary file's name: ".chunkd-meta.tmp", or with a number appended if the chunk has a
 * file of that name (any name but CHUNKD_META_NAME is a legal chunk file name, and the chunk's
 * own files must never be truncated). Of 65 candidates at most 64 are taken.
 */
static void tmp_name(const struct chunkd_meta *m, char *out, size_t outlen)
{
	for (unsigned k = 0;; k++) {
		int taken = 0;

		if (k)
			snprintf(out, outlen, "%s.tmp%u", CHUNKD_META_NAME, k);
		else
			snprintf(out, outlen, "%s.tmp", CHUNKD_META_NAME);
		for (uint32_t i = 0; i < m->nfiles && !taken; i++)
			taken = strcmp(m->files[i].name, out) == 0;
		if (!taken)
			return;
		assert(k < CHUNKD_MAX_FILES);
	}
}

int chunkd__meta_write_at(int dirfd, const struct chunkd_meta *m)
{
	char buf[META_FORMAT_MAX], tmp[32];
	int len, fd, err;

	len = chunkd__meta_format(m, buf, sizeof buf);
	if (len < 0)
		return len;
	tmp_name(m, tmp, sizeof tmp);

	fd = openat(dirfd, tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW | O_NOCTTY,
		    0644);
	if (fd < 0)
		return -errno;
	err = write_all(fd, buf, (size_t)len);
	if (err)
		goto err_close;
	if (fsync(fd)) {
		err = -errno;
		goto err_close;
	}
	/* Linux frees the descriptor even when close() fails; the error still matters. */
	if (close(fd)) {
		err = -errno;
		goto err_unlink;
	}
	if (renameat(dirfd, tmp, dirfd, CHUNKD_META_NAME)) {
		err = -errno;
		goto err_unlink;
	}
	/* The rename is durable only once the directory is. */
	if (fsync(dirfd))
		return -errno;
	return 0;

err_close:
	close(fd);
err_unlink:
	unlinkat(dirfd, tmp, 0);
	return err;
}

/* ---- CRC32C ----------------------------------------------------------------------------- */

#define CRC32C_POLY 0x82F63B78u /* Castagnoli, bit-reflected */

/*
 * Slice-by-8 tables: crc_table[0] is the classic byte table; crc_table[k][b] is the CRC of byte b
 * followed by k zero bytes, so eight table lookups advance the CRC by eight bytes.
 */
static uint32_t crc_table[8][256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;
static uint32_t (*crc_impl)(uint32_t crc, const uint8_t *p, size_t len);

static uint32_t crc32c_slice8(uint32_t crc, const uint8_t *p, size_t len)
{
	while (len && ((uintptr_t)p & 7)) {
		crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
		len--;
	}
	while (len >= 8) {
		uint64_t v;

		memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
		v = __builtin_bswap64(v);
#endif
		v ^= crc;
		crc = crc_table[7][v & 0xff] ^ crc_table[6][(v >> 8) & 0xff] ^
		      crc_table[5][(v >> 16) & 0xff] ^ crc_table[4][(v >> 24) & 0xff] ^
		      crc_table[3][(v >> 32) & 0xff] ^ crc_table[2][(v >> 40) & 0xff] ^
		      crc_table[1][(v >> 48) & 0xff] ^ crc_table[0][v >> 56];
		p += 8;
		len -= 8;
	}
	while (len--)
		crc = crc_table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return crc;
}

#if defined(__x86_64__) && defined(__GNUC__)
#define CRC32C_HW 1

/*
 * The SSE4.2 crc32 instruction computes exactly CRC-32C, eight bytes per instruction, but one
 * instruction depends on the previous one's result (3 cycles of latency, 1 of throughput). So
 * large blocks are split into three lanes of equal length, CRCed in three independent streams
 * and combined: for the raw register (no inversion), crc(A || B) = shift(crc(A), |B|) ^ crc0(B),
 * where crc0 starts from 0 and shift(c, n) is c times x^(8n) modulo the polynomial, a linear map
 * applied by four lookups in a table made for that n (crc_shift_init()). This is the scheme of
 * Mark Adler's crc32c.c and of the Linux kernel's crc32c-pcl-intel.
 */
#define CRC_LONG 4096 /* lane length of a long block: 12 KiB per block */
#define CRC_SHORT 256 /* lane length of a short block: 768 bytes per block */
static uint32_t crc_long[4][256], crc_short[4][256];

/* Fill t with the shift-by-n-zero-bytes map: t[k][b] = shift(b << 8k, n). */
static void crc_shift_init(uint32_t t[4][256], size_t n)
{
	uint32_t basis[32];

	for (int i = 0; i < 32; i++) {
		uint32_t reg = 1u << i;

		for (size_t k = 0; k < n; k++)
			reg = crc_table[0][reg & 0xff] ^ (reg >> 8);
		basis[i] = reg;
	}
	for (int k = 0; k < 4; k++)
		for (uint32_t b = 0; b < 256; b++) {
			uint32_t v = 0;

			for (int i = 0; i < 8; i++)
				if (b & (1u << i))
					v ^= basis[8 * k + i];
			t[k][b] = v;
		}
}

static inline uint32_t crc_shift(const uint32_t t[4][256], uint32_t c)
{
	return t[0][c & 0xff] ^ t[1][(c >> 8) & 0xff] ^ t[2][(c >> 16) & 0xff] ^ t[3][c >> 24];
}

/* Three lanes of `lane` bytes each at p, CRC continued from c; with COPY, also stored at d. */
__attribute__((target("sse4.2"), always_inline)) static inline uint64_t
crc_lanes(uint64_t c, uint8_t *d, const uint8_t *p, size_t lane, const uint32_t t[4][256],
	  int copy)
{
	uint64_t c1 = 0, c2 = 0;

	for (size_t i = 0; i < lane; i += 8) {
		uint64_t v0, v1, v2;

		memcpy(&v0, p + i, 8);
		memcpy(&v1, p + lane + i, 8);
		memcpy(&v2, p + 2 * lane + i, 8);
		c = __builtin_ia32_crc32di(c, v0);
		c1 = __builtin_ia32_crc32di(c1, v1);
		c2 = __builtin_ia32_crc32di(c2, v2);
		if (copy) {
			memcpy(d + i, &v0, 8);
			memcpy(d + lane + i, &v1, 8);
			memcpy(d + 2 * lane + i, &v2, 8);
		}
	}
	c = crc_shift(t, (uint32_t)c) ^ c1;
	return crc_shift(t, (uint32_t)c) ^ c2;
}

/* As many whole blocks of three `lane`-byte lanes as *len holds, advancing *p, *d and *len. */
__attribute__((target("sse4.2"), always_inline)) static inline uint64_t
crc_blocks(uint64_t c, uint8_t **d, const uint8_t **p, size_t *len, size_t lane,
	   const uint32_t t[4][256], int copy)
{
	while (*len >= 3 * lane) {
		c = crc_lanes(c, *d, *p, lane, t, copy);
		*p += 3 * lane;
		if (copy)
			*d += 3 * lane;
		*len -= 3 * lane;
	}
	return c;
}

/* The raw CRC register over len bytes at p; with COPY, the bytes are also stored at d. The one
 * body serves both, so that a copying CRC and a plain one can never disagree. */
__attribute__((target("sse4.2"), always_inline)) static inline uint32_t
crc_hw(uint32_t crc, uint8_t *d, const uint8_t *p, size_t len, int copy)
{
	uint64_t c;

	while (len && ((uintptr_t)p & 7)) {
		if (copy)
			*d++ = *p;
		crc = __builtin_ia32_crc32qi(crc, *p++);
		len--;
	}
	c = crc;
	c = crc_blocks(c, &d, &p, &len, CRC_LONG, crc_long, copy);
	c = crc_blocks(c, &d, &p, &len, CRC_SHORT, crc_short, copy);
	while (len >= 8) {
		uint64_t v;

		memcpy(&v, p, 8);
		c = __builtin_ia32_crc32di(c, v);
		if (copy) {
			memcpy(d, &v, 8);
			d += 8;
		}
		p += 8;
		len -= 8;
	}
	crc = (uint32_t)c;
	while (len--) {
		if (copy)
			*d++ = *p;
		crc = __builtin_ia32_crc32qi(crc, *p++);
	}
	return crc;
}

__attribute__((target("sse4.2"))) static uint32_t crc32c_sse42(uint32_t crc, const uint8_t *p,
							       size_t len)
{
	return crc_hw(crc, NULL, p, len, 0);
}

__attribute__((target("sse4.2"))) static uint32_t crc32c_copy_sse42(uint32_t crc, uint8_t *d,
								    const uint8_t *p, size_t len)
{
	return crc_hw(crc, d, p, len, 1);
}
#else
#define CRC32C_HW 0
#endif

static uint32_t crc32c_copy_sw(uint32_t crc, uint8_t *d, const uint8_t *p, size_t len)
{
	memcpy(d, p, len);
	return crc32c_slice8(crc, p, len);
}

static uint32_t (*crc_copy_impl)(uint32_t crc, uint8_t *d, const uint8_t *p, size_t len);

static void crc_init(void)
{
	for (uint32_t b = 0; b < 256; b++) {
		uint32_t crc = b;

		for (int i = 0; i < 8; i++)
			crc = (crc >> 1) ^ (CRC32C_POLY & (0u - (crc & 1)));
		crc_table[0][b] = crc;
	}
	for (uint32_t b = 0; b < 256; b++)
		for (int k = 1; k < 8; k++)
			crc_table[k][b] =
			    (crc_table[k - 1][b] >> 8) ^ crc_table[0][crc_table[k - 1][b] & 0xff];
	crc_impl = crc32c_slice8;
	crc_copy_impl = crc32c_copy_sw;
#if CRC32C_HW
	if (__builtin_cpu_supports("sse4.2")) {
		crc_shift_init(crc_long, CRC_LONG);
		crc_shift_init(crc_short, CRC_SHORT);
		crc_impl = crc32c_sse42;
		crc_copy_impl = crc32c_copy_sse42;
	}
#endif
}

uint32_t chunkd__crc32c(uint32_t crc, const void *buf, size_t len)
{
	pthread_once(&crc_once, crc_init);
	return ~crc_impl(~crc, buf, len);
}

uint32_t chunkd__crc32c_copy(uint32_t crc, void *dst, const void *src, size_t len)
{
	pthread_once(&crc_once, crc_init);
	return ~crc_copy_impl(~crc, dst, src, len);
}

uint32_t chunkd__crc32c_sw(uint32_t crc, const void *buf, size_t len)
{
	pthread_once(&crc_once, crc_init);
	return ~crc32c_slice8(~crc, buf, len);
}
