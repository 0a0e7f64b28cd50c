/*
 * test_meta.c — unit tests of daemon/meta.c: the .chunkd-meta format and its strict parser,
 * chunk directory names, hex, CRC32C, and reading and writing the file in a directory.
 *
 * Every parse runs on a copy of the input that ends at a PROT_NONE page, so a read past the end
 * crashes the test instead of passing unnoticed (as picohttpparser's test.c does).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h> /* after the four above, which it needs */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "meta.h"

/* ---- fixtures --------------------------------------------------------------------------- */

#define HEX_A       "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"
#define HEX_B       "fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0efeeedecebeae9e8e7e6e5e4e3e2e1e0"
#define HEX_A_UPPER "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F"
#define HEX_B_UPPER "FFFEFDFCFBFAF9F8F7F6F5F4F3F2F1F0EFEEEDECEBEAE9E8E7E6E5E4E3E2E1E0"

#define L_MAGIC "chunkd-meta 1\n"
#define L_ID    "id " HEX_A "\n"
#define L_DS    "dataset " HEX_B "\n"
#define L_FIRST "first_block 1000\n"
#define L_END   "end_block 2000\n"
#define L_FILES "files 2\n"
#define L_F1    "file 123 e3069283 blocks.parquet\n"
#define L_F2    "file 0 - my file.txt\n"
#define L_TAIL  "end\n"
#define HEAD    L_MAGIC L_ID L_DS L_FIRST L_END
#define VALID   HEAD L_FILES L_F1 L_F2 L_TAIL

/* The chunk that VALID describes. */
static void sample(struct chunkd_meta *m)
{
	memset(m, 0, sizeof *m);
	for (int i = 0; i < 32; i++) {
		m->id[i] = (uint8_t)i;
		m->dataset[i] = (uint8_t)(0xff - i);
	}
	m->first_block = 1000;
	m->end_block = 2000;
	m->nfiles = 2;
	strcpy(m->files[0].name, "blocks.parquet");
	m->files[0].size = 123;
	m->files[0].crc32c = 0xe3069283;
	m->files[0].has_crc = 1;
	strcpy(m->files[1].name, "my file.txt");
}

/* The largest chunk: every field at its widest. */
static void sample_max(struct chunkd_meta *m)
{
	memset(m, 0xab, sizeof m->id + sizeof m->dataset);
	m->first_block = UINT64_MAX - 1;
	m->end_block = UINT64_MAX;
	m->nfiles = CHUNKD_MAX_FILES;
	for (int i = 0; i < CHUNKD_MAX_FILES; i++) {
		struct chunkd_meta_file *f = &m->files[i];

		memset(f->name, 'n', CHUNKD_MAX_NAME);
		f->name[0] = (char)('0' + i / 10);
		f->name[1] = (char)('0' + i % 10);
		f->name[CHUNKD_MAX_NAME] = '\0';
		f->size = UINT64_MAX;
		f->crc32c = 0xfedcba98u;
		f->has_crc = 1;
	}
}

static void assert_meta_equal(const struct chunkd_meta *a, const struct chunkd_meta *b)
{
	assert_memory_equal(a->id, b->id, sizeof a->id);
	assert_memory_equal(a->dataset, b->dataset, sizeof a->dataset);
	assert_int_equal(a->first_block, b->first_block);
	assert_int_equal(a->end_block, b->end_block);
	assert_int_equal(a->nfiles, b->nfiles);
	for (uint32_t i = 0; i < a->nfiles; i++) {
		assert_string_equal(a->files[i].name, b->files[i].name);
		assert_int_equal(a->files[i].size, b->files[i].size);
		assert_int_equal(a->files[i].has_crc, b->files[i].has_crc);
		if (a->files[i].has_crc)
			assert_int_equal(a->files[i].crc32c, b->files[i].crc32c);
	}
}

/* chunkd__meta_parse() on a copy of the input placed right before an inaccessible page. */
static int parse_guarded(const char *text, size_t len, struct chunkd_meta *m, char *reason,
			 size_t reasonlen)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	size_t data = (len + page - 1) / page * page;
	char *map, *copy;
	int err;

	map = mmap(NULL, data + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	assert_true(map != MAP_FAILED);
	assert_int_equal(mprotect(map + data, page, PROT_NONE), 0);
	copy = map + data - len;
	memcpy(copy, text, len);
	err = chunkd__meta_parse(copy, len, m, reason, reasonlen);
	munmap(map, data + page);
	return err;
}

#define assert_reason(reason, want)                                                          \
	do {                                                                                 \
		if (!strstr((reason), (want)))                                               \
			fail_msg("reason \"%s\" does not contain \"%s\"", (reason), (want)); \
	} while (0)

/* ---- format and parse ------------------------------------------------------------------- */

/* The exact bytes of the format are pinned: other tools read these files. */
static void test_format_exact(void **state)
{
	struct chunkd_meta m;
	char buf[CHUNKD_META_MAX];

	(void)state;
	sample(&m);
	assert_int_equal(chunkd__meta_format(&m, buf, sizeof buf), sizeof VALID - 1);
	assert_string_equal(buf, VALID);
}

static void test_round_trip(void **state)
{
	struct chunkd_meta m, back;
	char buf[CHUNKD_META_MAX], reason[128] = "";
	int len;

	(void)state;
	sample(&m);
	len = chunkd__meta_format(&m, buf, sizeof buf);
	assert_true(len > 0);
	assert_int_equal(parse_guarded(buf, (size_t)len, &back, reason, sizeof reason), 0);
	assert_string_equal(reason, ""); /* untouched on success */
	assert_meta_equal(&m, &back);
}

static void test_round_trip_max(void **state)
{
	static struct chunkd_meta m, back;
	static char buf[CHUNKD_META_MAX];
	char reason[128] = "";
	int len;

	(void)state;
	sample_max(&m);
	len = chunkd__meta_format(&m, buf, sizeof buf);
	assert_true(len > 0);
	assert_true((size_t)len < sizeof buf);
	print_message("largest metadata file: %d bytes\n", len);
	assert_int_equal(parse_guarded(buf, (size_t)len, &back, reason, sizeof reason), 0);
	assert_meta_equal(&m, &back);
}

/* Names are the rest of the line: spaces anywhere, non-ASCII bytes, a final \r, survive. */
static void test_round_trip_odd_names(void **state)
{
	static const char *names[] = {
	    " leading space",
	    "trailing space ",
	    "two  spaces",
	    "\xc3\xa9t\xc3\xa9",
	    "cr\r",
	    "-",
	    ".chunkd-meta.tmp",
	    "...",
	    ".chunkd-meta2",
	    "tab\there",
	};
	struct chunkd_meta m, back;
	char buf[CHUNKD_META_MAX], reason[128];
	int len;

	(void)state;
	sample(&m);
	m.nfiles = sizeof names / sizeof names[0];
	for (uint32_t i = 0; i < m.nfiles; i++) {
		strcpy(m.files[i].name, names[i]);
		m.files[i].size = i;
		m.files[i].has_crc = (int)(i & 1);
		m.files[i].crc32c = m.files[i].has_crc ? 0x0000000fu * i : 0;
	}
	len = chunkd__meta_format(&m, buf, sizeof buf);
	assert_true(len > 0);
	assert_int_equal(parse_guarded(buf, (size_t)len, &back, reason, sizeof reason), 0);
	assert_meta_equal(&m, &back);
}

/* Uppercase hex is read; lowercase is written. */
static void test_parse_uppercase_hex(void **state)
{
	static const char text[] =
	    L_MAGIC "id " HEX_A_UPPER "\ndataset " HEX_B_UPPER "\n" L_FIRST L_END L_FILES
		    "file 123 E3069283 blocks.parquet\n" L_F2 L_TAIL;
	struct chunkd_meta m, want;
	char buf[CHUNKD_META_MAX], reason[128] = "";

	(void)state;
	assert_int_equal(parse_guarded(text, sizeof text - 1, &m, reason, sizeof reason), 0);
	sample(&want);
	assert_meta_equal(&m, &want);
	assert_int_equal(chunkd__meta_format(&m, buf, sizeof buf), sizeof VALID - 1);
	assert_string_equal(buf, VALID);
}

struct bad_case {
	const char *what;
	const char *text;
	size_t len; /* texts may hold NUL bytes */
	int err;
	const char *reason;
};

#define BAD(what, text, err, reason)                     \
	{                                                \
		what, text, sizeof text - 1, err, reason \
	}

#define N16     "nnnnnnnnnnnnnnnn"
#define N64     N16 N16 N16 N16
#define NAME255 N64 N64 N64 N16 N16 N16 "nnnnnnnnnnnnnnn"
_Static_assert(sizeof NAME255 == 256, "NAME255 is 255 bytes");
#define HEAD_EXTREMES                                                                \
	L_MAGIC L_ID L_DS "first_block 0\nend_block 18446744073709551615\nfiles 1\n" \
			  "file 18446744073709551615 00000000 " NAME255 "\nend\n"
#define FILES1(line) HEAD "files 1\n" line L_TAIL
#define HEX_A63      "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1"

static void test_parse_extremes(void **state)
{
	static const char text[] = HEAD_EXTREMES;
	struct chunkd_meta m;
	char reason[128] = "";

	(void)state;
	assert_int_equal(parse_guarded(text, sizeof text - 1, &m, reason, sizeof reason), 0);
	assert_int_equal(m.first_block, 0);
	assert_int_equal(m.end_block, UINT64_MAX);
	assert_int_equal(m.nfiles, 1);
	assert_int_equal(m.files[0].size, UINT64_MAX);
	assert_int_equal(m.files[0].has_crc, 1);
	assert_int_equal(m.files[0].crc32c, 0);
	assert_int_equal(strlen(m.files[0].name), CHUNKD_MAX_NAME);
}

static const struct bad_case bad_cases[] = {
    /* Whole-file structure. */
    BAD("empty input", "", -EINVAL, "empty file"),
    BAD("just a newline", "\n", -EINVAL, "line 1: not a chunkd metadata file"),
    BAD("no trailing newline", HEAD L_FILES L_F1 L_F2 "end", -EINVAL,
	"line 9: no newline at end of line"),
    BAD("missing end", HEAD L_FILES L_F1 L_F2, -EINVAL, "line 9: missing 'end' line"),
    BAD("trailing garbage", VALID "x\n", -EINVAL, "line 10: data after 'end'"),
    BAD("trailing garbage, no newline", VALID "x", -EINVAL, "line 10: data after 'end'"),
    BAD("trailing empty line", VALID "\n", -EINVAL, "line 10: data after 'end'"),
    BAD("second end", VALID "end\n", -EINVAL, "line 10: data after 'end'"),
    BAD("truncated in the middle", L_MAGIC "id 0001", -EINVAL, "line 2: no newline"),
    BAD("CRLF line ends", "chunkd-meta 1\r\n", -EINVAL, "line 1: line ends in \\r"),
    BAD("NUL byte in id", L_MAGIC "id 00\0ab\n", -EINVAL, "line 2: NUL byte"),
    BAD("NUL byte after end", VALID "\0", -EINVAL, "line 10: NUL byte"),

    /* The magic line. */
    BAD("missing magic", L_ID L_DS L_FIRST L_END L_FILES L_F1 L_F2 L_TAIL, -EINVAL,
	"line 1: not a chunkd metadata file"),
    BAD("version 2", "chunkd-meta 2\n" L_ID, -EINVAL, "line 1: unsupported format version"),
    BAD("version 10", "chunkd-meta 10\n" L_ID, -EINVAL, "line 1: unsupported format version"),
    BAD("magic in capitals", "CHUNKD-META 1\n" L_ID, -EINVAL, "line 1: not a chunkd"),
    BAD("blank line first", "\n" VALID, -EINVAL, "line 1: not a chunkd"),

    /* Missing and reordered lines. */
    BAD("missing id", L_MAGIC L_DS L_FIRST L_END L_FILES L_F1 L_F2 L_TAIL, -EINVAL,
	"line 2: expected 'id'"),
    BAD("dataset before id", L_MAGIC L_DS L_ID L_FIRST L_END L_FILES L_F1 L_F2 L_TAIL, -EINVAL,
	"line 2: expected 'id'"),
    BAD("missing dataset", L_MAGIC L_ID L_FIRST L_END L_FILES L_F1 L_F2 L_TAIL, -EINVAL,
	"line 3: expected 'dataset'"),
    BAD("end_block before first_block", L_MAGIC L_ID L_DS L_END L_FIRST L_FILES L_F1 L_F2 L_TAIL,
	-EINVAL, "line 4: expected 'first_block'"),
    BAD("missing end_block", L_MAGIC L_ID L_DS L_FIRST L_FILES L_F1 L_F2 L_TAIL, -EINVAL,
	"line 5: expected 'end_block'"),
    BAD("missing files", HEAD L_F1 L_F2 L_TAIL, -EINVAL, "line 6: expected 'files'"),
    BAD("file lines before files", HEAD L_F1 L_FILES L_F2 L_TAIL, -EINVAL,
	"line 6: expected 'files'"),
    BAD("end before file lines", HEAD L_FILES L_TAIL L_F1 L_F2, -EINVAL, "line 7: expected 'file'"),
    BAD("blank line in the middle", L_MAGIC L_ID "\n" L_DS, -EINVAL, "line 3: expected 'dataset'"),
    BAD("stops after the header", HEAD, -EINVAL, "line 6: missing 'files' line"),
    BAD("key without value", L_MAGIC "id\n", -EINVAL, "line 2: expected 'id'"),
    BAD("key with tab", L_MAGIC "id\t" HEX_A "\n", -EINVAL, "line 2: expected 'id'"),
    BAD("key prefix", L_MAGIC "identity " HEX_A "\n", -EINVAL, "line 2: expected 'id'"),

    /* Hex. */
    BAD("id 63 digits", L_MAGIC "id " HEX_A63 "\n" L_DS, -EINVAL, "line 2: bad hex in id"),
    BAD("id 65 digits", L_MAGIC "id " HEX_A "0\n" L_DS, -EINVAL, "line 2: bad hex in id"),
    BAD("id with g", L_MAGIC "id g" HEX_A "\n", -EINVAL, "line 2: bad hex in id"),
    BAD("id empty", L_MAGIC "id \n", -EINVAL, "line 2: bad hex in id"),
    BAD("id with trailing space", L_MAGIC "id " HEX_A " \n", -EINVAL, "line 2: bad hex in id"),
    BAD("id with two spaces", L_MAGIC "id  " HEX_A "\n", -EINVAL, "line 2: bad hex in id"),
    BAD("id with 0x", L_MAGIC "id 0x" HEX_A "\n", -EINVAL, "line 2: bad hex in id"),
    BAD("dataset with z", L_MAGIC L_ID "dataset z" HEX_B "\n", -EINVAL,
	"line 3: bad hex in dataset"),

    /* Decimals. */
    BAD("first_block with +", L_MAGIC L_ID L_DS "first_block +1000\n", -EINVAL,
	"line 4: bad number in first_block"),
    BAD("first_block negative", L_MAGIC L_ID L_DS "first_block -1\n", -EINVAL,
	"line 4: bad number in first_block"),
    BAD("first_block leading zero", L_MAGIC L_ID L_DS "first_block 01000\n", -EINVAL,
	"line 4: bad number in first_block"),
    BAD("first_block 00", L_MAGIC L_ID L_DS "first_block 00\n", -EINVAL,
	"line 4: bad number in first_block"),
    BAD("first_block empty", L_MAGIC L_ID L_DS "first_block \n", -EINVAL,
	"line 4: bad number in first_block"),
    BAD("first_block trailing space", L_MAGIC L_ID L_DS "first_block 1000 \n", -EINVAL,
	"line 4: bad number in first_block"),
    BAD("first_block two spaces", L_MAGIC L_ID L_DS "first_block  1000\n", -EINVAL,
	"line 4: bad number in first_block"),
    BAD("first_block hex", L_MAGIC L_ID L_DS "first_block 0x10\n", -EINVAL,
	"line 4: bad number in first_block"),
    BAD("first_block exponent", L_MAGIC L_ID L_DS "first_block 1e3\n", -EINVAL,
	"line 4: bad number in first_block"),
    BAD("end_block 2^64", L_MAGIC L_ID L_DS L_FIRST "end_block 18446744073709551616\n", -EINVAL,
	"line 5: end_block does not fit in 64 bits"),
    BAD("end_block 10^20", L_MAGIC L_ID L_DS L_FIRST "end_block 100000000000000000000\n", -EINVAL,
	"line 5: end_block does not fit in 64 bits"),
    BAD("end_block 30 digits",
	L_MAGIC L_ID L_DS L_FIRST "end_block 999999999999999999999999999999\n", -EINVAL,
	"line 5: end_block does not fit in 64 bits"),

    /* Range. */
    BAD("first == end", L_MAGIC L_ID L_DS "first_block 7\nend_block 7\n", -EINVAL,
	"line 5: first_block must be below end_block"),
    BAD("first > end", L_MAGIC L_ID L_DS "first_block 8\nend_block 7\n", -EINVAL,
	"line 5: first_block must be below end_block"),

    /* File count. */
    BAD("files 0", HEAD "files 0\n" L_TAIL, -EINVAL, "line 6: files must be 1 to 64"),
    BAD("files 65", HEAD "files 65\n" L_F1, -EINVAL, "line 6: files must be 1 to 64"),
    BAD("files 2^64", HEAD "files 18446744073709551616\n", -EINVAL,
	"line 6: files does not fit in 64 bits"),
    BAD("files 2^32 + 1", HEAD "files 4294967297\n", -EINVAL, "line 6: files must be 1 to 64"),
    BAD("files -1", HEAD "files -1\n", -EINVAL, "line 6: bad number in files"),
    BAD("files 02", HEAD "files 02\n" L_F1 L_F2 L_TAIL, -EINVAL, "line 6: bad number in files"),
    BAD("more file lines than files", HEAD "files 1\n" L_F1 L_F2 L_TAIL, -EINVAL,
	"line 8: more file lines than 'files 1'"),
    BAD("fewer file lines than files", HEAD "files 3\n" L_F1 L_F2 L_TAIL, -EINVAL,
	"line 9: expected 'file'"),

    /* File lines. */
    BAD("file without crc", FILES1("file 123 name\n"), -EINVAL,
	"line 7: expected 'file <size> <crc32c> <name>'"),
    BAD("file with size only", FILES1("file 123\n"), -EINVAL, "line 7: expected 'file <size>"),
    BAD("file keyword only", FILES1("file\n"), -EINVAL, "line 7: expected 'file'"),
    BAD("file size negative", FILES1("file -1 - a\n"), -EINVAL, "line 7: bad number in file size"),
    BAD("file size empty", FILES1("file  - a\n"), -EINVAL, "line 7: bad number in file size"),
    BAD("file size leading zero", FILES1("file 0123 - a\n"), -EINVAL,
	"line 7: bad number in file size"),
    BAD("file size 2^64", FILES1("file 18446744073709551616 - a\n"), -EINVAL,
	"line 7: file size does not fit in 64 bits"),
    BAD("crc 7 digits", FILES1("file 1 e306928 a\n"), -EINVAL, "line 7: bad crc32c"),
    BAD("crc 9 digits", FILES1("file 1 e30692830 a\n"), -EINVAL, "line 7: bad crc32c"),
    BAD("crc not hex", FILES1("file 1 e306928g a\n"), -EINVAL, "line 7: bad crc32c"),
    BAD("crc --", FILES1("file 1 -- a\n"), -EINVAL, "line 7: bad crc32c"),
    BAD("crc empty", FILES1("file 1  a\n"), -EINVAL, "line 7: bad crc32c"),
    BAD("crc 0x", FILES1("file 1 0x123456 a\n"), -EINVAL, "line 7: bad crc32c"),

    /* File names. */
    BAD("name empty", FILES1("file 1 - \n"), -EINVAL, "line 7: empty file name"),
    BAD("name with slash", FILES1("file 1 - a/b\n"), -EINVAL, "line 7: '/' in file name"),
    BAD("name is slash", FILES1("file 1 - /\n"), -EINVAL, "line 7: '/' in file name"),
    BAD("name is .", FILES1("file 1 - .\n"), -EINVAL, "line 7: file name is '.' or '..'"),
    BAD("name is ..", FILES1("file 1 - ..\n"), -EINVAL, "line 7: file name is '.' or '..'"),
    BAD("name is .chunkd-meta", FILES1("file 1 - .chunkd-meta\n"), -EINVAL,
	"line 7: file name .chunkd-meta is reserved"),
    BAD("name 256 bytes", FILES1("file 1 - x" NAME255 "\n"), -EINVAL,
	"line 7: file name longer than 255 bytes"),
    BAD("name with NUL", FILES1("file 1 - a\0b\n"), -EINVAL, "line 7: NUL byte"),
    BAD("duplicate names", HEAD "files 3\n" L_F1 L_F2 "file 5 - blocks.parquet\n" L_TAIL, -EINVAL,
	"line 9: duplicate file name (as on line 7)"),
};

static void test_parse_malformed(void **state)
{
	(void)state;

	for (size_t i = 0; i < sizeof bad_cases / sizeof bad_cases[0]; i++) {
		const struct bad_case *bc = &bad_cases[i];
		struct chunkd_meta m;
		char reason[160] = "";
		int err;

		err = parse_guarded(bc->text, bc->len, &m, reason, sizeof reason);
		if (err != bc->err || !strstr(reason, bc->reason))
			fail_msg("case \"%s\": got %d \"%s\", want %d \"%s\"", bc->what, err,
				 reason, bc->err, bc->reason);
	}
}

static void test_parse_too_large(void **state)
{
	static char big[CHUNKD_META_MAX + 1];
	struct chunkd_meta m;
	char reason[128] = "";

	(void)state;
	memset(big, 'x', sizeof big);
	memcpy(big, VALID, sizeof VALID - 1);
	assert_int_equal(parse_guarded(big, sizeof big, &m, reason, sizeof reason), -E2BIG);
	assert_reason(reason, "larger than 65536 bytes");
	/* At the limit it is parsed (and is malformed). */
	assert_int_equal(parse_guarded(big, CHUNKD_META_MAX, &m, reason, sizeof reason), -EINVAL);
	assert_reason(reason, "line 10: data after 'end'");
}

/* Every proper prefix of a valid file is refused; so is a NULL reason buffer handled. */
static void test_parse_truncations(void **state)
{
	struct chunkd_meta m;
	char reason[128];

	(void)state;
	for (size_t len = 0; len < sizeof VALID - 1; len++)
		assert_int_equal(parse_guarded(VALID, len, &m, reason, sizeof reason), -EINVAL);
	assert_int_equal(parse_guarded(VALID, sizeof VALID - 1, &m, NULL, 0), 0);
	assert_int_equal(parse_guarded(VALID, 10, &m, NULL, 0), -EINVAL);
	assert_int_equal(parse_guarded(VALID, 10, &m, reason, 0), -EINVAL);
}

/* A reason longer than its buffer is cut and still NUL-terminated. */
static void test_parse_reason_truncated(void **state)
{
	struct chunkd_meta m;
	char reason[8];

	(void)state;
	memset(reason, 'z', sizeof reason);
	assert_int_equal(parse_guarded("x\n", 2, &m, reason, sizeof reason), -EINVAL);
	assert_string_equal(reason, "line 1:");
	memset(reason, 'z', sizeof reason);
	assert_int_equal(parse_guarded("x\n", 2, &m, reason, 1), -EINVAL);
	assert_int_equal(reason[0], '\0');
	assert_int_equal(reason[1], 'z');
}

/* Random byte edits of a valid file never crash the parser, and what it accepts round-trips. */
static void test_parse_mutations(void **state)
{
	static const char alphabet[] = "\n \0-0189afAF/.x\r";
	struct chunkd_meta m, back;
	char text[sizeof VALID + 16], out[CHUNKD_META_MAX], reason[160];
	unsigned seed = 12345, accepted = 0;

	(void)state;
	for (int iter = 0; iter < 50000; iter++) {
		size_t len = sizeof VALID - 1;
		int edits;

		memcpy(text, VALID, len);
		seed = seed * 1103515245u + 12345u;
		edits = 1 + (int)(seed >> 16) % 3;
		for (int e = 0; e < edits; e++) {
			size_t pos;
			char c;

			seed = seed * 1103515245u + 12345u;
			pos = (seed >> 8) % len;
			seed = seed * 1103515245u + 12345u;
			c = (seed >> 20) & 1 ? alphabet[(seed >> 8) % (sizeof alphabet - 1)]
					     : (char)(seed >> 12);
			switch ((seed >> 24) % 3) {
			case 0: /* replace */
				text[pos] = c;
				break;
			case 1: /* delete */
				if (len > 1) {
					memmove(text + pos, text + pos + 1, len - pos - 1);
					len--;
				}
				break;
			default: /* insert */
				if (len < sizeof text) {
					memmove(text + pos + 1, text + pos, len - pos);
					text[pos] = c;
					len++;
				}
			}
		}
		if (parse_guarded(text, len, &m, reason, sizeof reason) == 0) {
			int n = chunkd__meta_format(&m, out, sizeof out);

			accepted++;
			assert_true(n > 0);
			assert_int_equal(
			    parse_guarded(out, (size_t)n, &back, reason, sizeof reason), 0);
			assert_meta_equal(&m, &back);
		}
	}
	print_message("mutations accepted: %u of 50000\n", accepted);
}

static void test_format_nospace(void **state)
{
	struct chunkd_meta m;
	char buf[sizeof VALID + 8];

	(void)state;
	sample(&m);
	for (size_t cap = 0; cap < sizeof VALID; cap++) {
		memset(buf, 'z', sizeof buf);
		assert_int_equal(chunkd__meta_format(&m, buf, cap), -ENOSPC);
		/* Nothing is written past the capacity. */
		for (size_t i = cap; i < sizeof buf; i++)
			assert_int_equal(buf[i], 'z');
	}
	assert_int_equal(chunkd__meta_format(&m, buf, sizeof VALID), sizeof VALID - 1);
}

static void test_format_invalid(void **state)
{
	struct chunkd_meta m;
	char buf[CHUNKD_META_MAX];

	(void)state;
	sample(&m);
	m.nfiles = 0;
	assert_int_equal(chunkd__meta_format(&m, buf, sizeof buf), -EINVAL);
	m.nfiles = CHUNKD_MAX_FILES + 1;
	assert_int_equal(chunkd__meta_format(&m, buf, sizeof buf), -EINVAL);

	sample(&m);
	m.end_block = m.first_block;
	assert_int_equal(chunkd__meta_format(&m, buf, sizeof buf), -EINVAL);

	sample(&m);
	strcpy(m.files[1].name, m.files[0].name);
	assert_int_equal(chunkd__meta_format(&m, buf, sizeof buf), -EINVAL);

	sample(&m);
	strcpy(m.files[1].name, "a/b");
	assert_int_equal(chunkd__meta_format(&m, buf, sizeof buf), -EINVAL);

	sample(&m);
	strcpy(m.files[1].name, "line\nbreak");
	assert_int_equal(chunkd__meta_format(&m, buf, sizeof buf), -EINVAL);

	sample(&m);
	m.files[1].name[0] = '\0';
	assert_int_equal(chunkd__meta_format(&m, buf, sizeof buf), -EINVAL);

	sample(&m);
	memset(m.files[1].name, 'a', sizeof m.files[1].name); /* no NUL */
	assert_int_equal(chunkd__meta_format(&m, buf, sizeof buf), -EINVAL);

	sample(&m);
	strcpy(m.files[1].name, CHUNKD_META_NAME);
	assert_int_equal(chunkd__meta_format(&m, buf, sizeof buf), -EINVAL);
}

static void test_check_name(void **state)
{
	char n255[CHUNKD_MAX_NAME + 1];

	(void)state;
	memset(n255, 'a', sizeof n255);
	assert_int_equal(chunkd__meta_check_name("a", 1), 0);
	assert_int_equal(chunkd__meta_check_name("with space", 10), 0);
	assert_int_equal(chunkd__meta_check_name("...", 3), 0);
	assert_int_equal(chunkd__meta_check_name(".chunkd-met", 11), 0);
	assert_int_equal(chunkd__meta_check_name(".chunkd-meta", 11), 0); /* len counts */
	assert_int_equal(chunkd__meta_check_name(n255, CHUNKD_MAX_NAME), 0);

	assert_int_equal(chunkd__meta_check_name(n255, CHUNKD_MAX_NAME + 1), -EINVAL);
	assert_int_equal(chunkd__meta_check_name("", 0), -EINVAL);
	assert_int_equal(chunkd__meta_check_name(NULL, 1), -EINVAL);
	assert_int_equal(chunkd__meta_check_name(".", 1), -EINVAL);
	assert_int_equal(chunkd__meta_check_name("..", 2), -EINVAL);
	assert_int_equal(chunkd__meta_check_name(".chunkd-meta", 12), -EINVAL);
	assert_int_equal(chunkd__meta_check_name("a/b", 3), -EINVAL);
	assert_int_equal(chunkd__meta_check_name("a\nb", 3), -EINVAL);
	assert_int_equal(chunkd__meta_check_name("a\0b", 3), -EINVAL);
}

/* ---- directory names -------------------------------------------------------------------- */

static void test_dir_name(void **state)
{
	struct chunkd_meta m;
	char name[CHUNKD_META_DIR_NAME_LEN + 1];
	uint8_t id[32];
	uint64_t first, end;

	(void)state;
	sample(&m);
	assert_int_equal(chunkd__meta_dir_name(&m, name, sizeof name), CHUNKD_META_DIR_NAME_LEN);
	assert_string_equal(name, "00000000000000001000-00000000000000002000-" HEX_A);
	assert_int_equal(chunkd__meta_parse_dir_name(name, &first, &end, id), 0);
	assert_int_equal(first, 1000);
	assert_int_equal(end, 2000);
	assert_memory_equal(id, m.id, 32);

	m.first_block = 0;
	m.end_block = UINT64_MAX;
	assert_int_equal(chunkd__meta_dir_name(&m, name, sizeof name), CHUNKD_META_DIR_NAME_LEN);
	assert_string_equal(name, "00000000000000000000-18446744073709551615-" HEX_A);
	assert_int_equal(chunkd__meta_parse_dir_name(name, &first, &end, id), 0);
	assert_int_equal(first, 0);
	assert_int_equal(end, UINT64_MAX);

	assert_int_equal(chunkd__meta_dir_name(&m, name, sizeof name - 1), -ENOSPC);
	assert_int_equal(CHUNKD_META_REL_PATH_LEN, 171);
}

/* Directory names sort by first block, as strings. */
static void test_dir_name_sorts(void **state)
{
	struct chunkd_meta a, b;
	char na[CHUNKD_META_DIR_NAME_LEN + 1], nb[CHUNKD_META_DIR_NAME_LEN + 1];

	(void)state;
	sample(&a);
	sample(&b);
	memset(a.id, 0xff, sizeof a.id);
	memset(b.id, 0x00, sizeof b.id);
	a.first_block = 9;
	a.end_block = 10;
	b.first_block = 10;
	b.end_block = 11;
	chunkd__meta_dir_name(&a, na, sizeof na);
	chunkd__meta_dir_name(&b, nb, sizeof nb);
	assert_true(strcmp(na, nb) < 0);
}

static void test_dir_name_malformed(void **state)
{
	static const char *bad[] = {
	    "",
	    "00000000000000001000-00000000000000002000-" HEX_A "0",
	    "0000000000000001000-00000000000000002000-" HEX_A "0",
	    "00000000000000001000-00000000000000002000-" HEX_A "/",
	    "00000000000000001000_00000000000000002000-" HEX_A,
	    "00000000000000001000-00000000000000002000_" HEX_A,
	    "0000000000000000100a-00000000000000002000-" HEX_A,
	    "+0000000000000001000-00000000000000002000-" HEX_A,
	    "-0000000000000001000-00000000000000002000-" HEX_A "",
	    "00000000000000002000-00000000000000002000-" HEX_A,
	    "00000000000000002001-00000000000000002000-" HEX_A,
	    "00000000000000001000-99999999999999999999-" HEX_A,
	    "00000000000000001000-18446744073709551616-" HEX_A,
	    "00000000000000001000-00000000000000002000-"
	    "000102030405060708090A0B0C0D0E0F101112131415161718191a1b1c1d1e1f",
	    "00000000000000001000-00000000000000002000-"
	    "000102030405060708090g0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
	    "00000000000000001000-00000000000000002000- "
	    "00102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
	};
	uint8_t id[32];
	uint64_t first, end;

	(void)state;
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		if (chunkd__meta_parse_dir_name(bad[i], &first, &end, id) != -EINVAL)
			fail_msg("dir name \"%s\" was accepted", bad[i]);
}

/* ---- hex -------------------------------------------------------------------------------- */

static void test_hex(void **state)
{
	static const uint8_t bytes[] = {0x00, 0x01, 0x7f, 0x80, 0xab, 0xcd, 0xef, 0xff};
	uint8_t back[sizeof bytes];
	char hex[2 * sizeof bytes + 1];

	(void)state;
	chunkd__hex_encode(bytes, sizeof bytes, hex);
	assert_string_equal(hex, "00017f80abcdefff");
	assert_int_equal(chunkd__hex_decode(hex, 16, back), 0);
	assert_memory_equal(back, bytes, sizeof bytes);
	assert_int_equal(chunkd__hex_decode("00017F80ABCDEFFF", 16, back), 0);
	assert_memory_equal(back, bytes, sizeof bytes);
	assert_int_equal(chunkd__hex_decode("aBcD", 4, back), 0);
	assert_int_equal(back[0], 0xab);
	assert_int_equal(back[1], 0xcd);

	chunkd__hex_encode(bytes, 0, hex);
	assert_string_equal(hex, "");
	assert_int_equal(chunkd__hex_decode("", 0, back), 0);

	assert_int_equal(chunkd__hex_decode("abc", 3, back), -EINVAL);
	assert_int_equal(chunkd__hex_decode("0g", 2, back), -EINVAL);
	assert_int_equal(chunkd__hex_decode("g0", 2, back), -EINVAL);
	assert_int_equal(chunkd__hex_decode(" 0", 2, back), -EINVAL);
	assert_int_equal(chunkd__hex_decode("0\0", 2, back), -EINVAL);
	assert_int_equal(chunkd__hex_decode("0x", 2, back), -EINVAL);
	assert_int_equal(chunkd__hex_decode("/:", 2, back), -EINVAL); /* around '0'-'9' */
	assert_int_equal(chunkd__hex_decode("@G", 2, back), -EINVAL); /* around 'A'-'F' */
	assert_int_equal(chunkd__hex_decode("`g", 2, back), -EINVAL); /* around 'a'-'f' */
}

/* ---- CRC32C ----------------------------------------------------------------------------- */

static void test_crc32c_vectors(void **state)
{
	uint8_t buf[48];

	(void)state;
	assert_int_equal(chunkd__crc32c(0, "123456789", 9), 0xe3069283u);
	assert_int_equal(chunkd__crc32c_sw(0, "123456789", 9), 0xe3069283u);
	assert_int_equal(chunkd__crc32c(0, "", 0), 0);
	assert_int_equal(chunkd__crc32c(0, "a", 1), 0xc1d04330u);
	assert_int_equal(chunkd__crc32c(0, "The quick brown fox jumps over the lazy dog", 43),
			 0x22620404u);

	/* RFC 3720 (iSCSI) appendix B.4. */
	memset(buf, 0, 32);
	assert_int_equal(chunkd__crc32c(0, buf, 32), 0x8a9136aau);
	memset(buf, 0xff, 32);
	assert_int_equal(chunkd__crc32c(0, buf, 32), 0x62a8ab43u);
	for (int i = 0; i < 32; i++)
		buf[i] = (uint8_t)i;
	assert_int_equal(chunkd__crc32c(0, buf, 32), 0x46dd794eu);
	for (int i = 0; i < 32; i++)
		buf[i] = (uint8_t)(31 - i);
	assert_int_equal(chunkd__crc32c(0, buf, 32), 0x113fdb5cu);
	static const uint8_t iscsi_read[48] = {
	    0x01, 0xc0, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	    0x00, 0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x00, 0x00, 0x04, 0x00,
	    0x00, 0x00, 0x00, 0x14, 0x00, 0x00, 0x00, 0x18, 0x28, 0x00, 0x00, 0x00,
	    0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
	};
	assert_int_equal(chunkd__crc32c(0, iscsi_read, 48), 0xd9963a56u);
	assert_int_equal(chunkd__crc32c_sw(0, iscsi_read, 48), 0xd9963a56u);
}

/* Incremental equals one-shot, at every split; hardware and software agree at every alignment. */
static void test_crc32c_incremental(void **state)
{
	static uint8_t buf[4096 + 8];
	unsigned seed = 1;
	uint32_t whole;

	(void)state;
	for (size_t i = 0; i < sizeof buf; i++) {
		seed = seed * 1103515245u + 12345u;
		buf[i] = (uint8_t)(seed >> 16);
	}
	whole = chunkd__crc32c(0, buf, 1000);
	assert_int_equal(chunkd__crc32c_sw(0, buf, 1000), whole);
	for (size_t split = 0; split <= 1000; split++) {
		uint32_t c = chunkd__crc32c(0, buf, split);

		assert_int_equal(chunkd__crc32c(c, buf + split, 1000 - split), whole);
		c = chunkd__crc32c_sw(0, buf, split);
		assert_int_equal(chunkd__crc32c_sw(c, buf + split, 1000 - split), whole);
	}
	for (size_t off = 0; off < 8; off++)
		for (size_t len = 0; len <= 70; len++)
			assert_int_equal(chunkd__crc32c(0, buf + off, len),
					 chunkd__crc32c_sw(0, buf + off, len));
	assert_int_equal(chunkd__crc32c(0, buf + 3, 4096), chunkd__crc32c_sw(0, buf + 3, 4096));
}

/*
 * The three-stream path (blocks of 3 x 4096 and 3 x 256 bytes) at lengths around every block
 * size and at every alignment, against the software CRC; and chunkd__crc32c_copy() returns the
 * same CRC and copies exactly the bytes, touching nothing around them.
 */
static void test_crc32c_streams_and_copy(void **state)
{
	enum { MAX = 3 * 4096 * 3 + 3 * 256 * 2 + 100 };
	static uint8_t src[MAX + 8], dst[MAX + 16];
	static const size_t lens[] = {0,	 1,	7,     8,     767,   768,   769,	  775,
				      776,	 1535,	1536,  1537,  12287, 12288, 12289,	  12288 + 768,
				      12288 + 775, 13055, 24576, 24577, 36864, 36864 + 1536, MAX};
	unsigned seed = 7;

	(void)state;
	for (size_t i = 0; i < sizeof src; i++) {
		seed = seed * 1103515245u + 12345u;
		src[i] = (uint8_t)(seed >> 16);
	}
	for (size_t li = 0; li < sizeof lens / sizeof lens[0]; li++)
		for (size_t off = 0; off < 8; off++) {
			size_t len = lens[li], doff = (off * 3) % 8 + 1;
			uint32_t want = chunkd__crc32c_sw(0x12345678u, src + off, len);

			assert_int_equal(chunkd__crc32c(0x12345678u, src + off, len), want);
			memset(dst, 0xa5, sizeof dst);
			assert_int_equal(chunkd__crc32c_copy(0x12345678u, dst + doff, src + off, len),
					 want);
			assert_memory_equal(dst + doff, src + off, len);
			assert_int_equal(dst[doff - 1], 0xa5);
			assert_int_equal(dst[doff + len], 0xa5);
		}
}

/* A file's CRC built piece by piece, as chunkd__xfer_deliver() does with curl's pieces (16 KiB
 * and odd sizes) cut again at write buffer boundaries, equals the CRC of the whole. */
static void test_crc32c_copy_pieces(void **state)
{
	enum { TOTAL = 700 * 1024, WBUF = 256 * 1024 };
	uint8_t *src = malloc(TOTAL), *dst = malloc(TOTAL);
	static const size_t pieces[] = {16384, 1, 13, 16384, 4095, 8, 12289, 769, 65536, 3000};
	unsigned seed = 3;

	(void)state;
	assert_non_null(src);
	assert_non_null(dst);
	for (size_t i = 0; i < TOTAL; i++) {
		seed = seed * 1103515245u + 12345u;
		src[i] = (uint8_t)(seed >> 16);
	}
	uint32_t crc = 0;
	size_t at = 0;
	for (size_t pi = 0; at < TOTAL; pi++) {
		size_t n = pieces[pi % (sizeof pieces / sizeof pieces[0])];

		if (n > TOTAL - at)
			n = TOTAL - at;
		while (n) {
			size_t k = WBUF - at % WBUF; /* room left in the current buffer */

			if (k > n)
				k = n;
			crc = chunkd__crc32c_copy(crc, dst + at, src + at, k);
			at += k;
			n -= k;
		}
	}
	assert_int_equal(crc, chunkd__crc32c_sw(0, src, TOTAL));
	assert_int_equal(crc, chunkd__crc32c(0, src, TOTAL));
	assert_memory_equal(dst, src, TOTAL);
	free(src);
	free(dst);
}

/* ---- files in a directory --------------------------------------------------------------- */

struct tmpdir {
	char path[64];
	int fd;
};

static int tmpdir_setup(void **state)
{
	struct tmpdir *t = calloc(1, sizeof *t);

	if (!t)
		return -1;
	snprintf(t->path, sizeof t->path, "/tmp/test_meta.XXXXXX");
	if (!mkdtemp(t->path)) {
		free(t);
		return -1;
	}
	t->fd = open(t->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (t->fd < 0) {
		rmdir(t->path);
		free(t);
		return -1;
	}
	*state = t;
	return 0;
}

/* Remove what the tests made: plain entries, and a directory called .chunkd-meta. */
static int tmpdir_teardown(void **state)
{
	struct tmpdir *t = *state;
	DIR *d = opendir(t->path);
	struct dirent *e;

	while (d && (e = readdir(d))) {
		if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0)
			continue;
		if (unlinkat(t->fd, e->d_name, 0) && errno == EISDIR)
			unlinkat(t->fd, e->d_name, AT_REMOVEDIR);
	}
	if (d)
		closedir(d);
	close(t->fd);
	rmdir(t->path);
	free(t);
	return 0;
}

/* The names in the directory, sorted and joined with ',' into out. */
static void list_dir(const struct tmpdir *t, char *out, size_t outlen)
{
	struct dirent **names;
	int n = scandir(t->path, &names, NULL, alphasort);
	size_t pos = 0;

	assert_true(n >= 0);
	out[0] = '\0';
	for (int i = 0; i < n; i++) {
		if (strcmp(names[i]->d_name, ".") && strcmp(names[i]->d_name, ".."))
			pos += (size_t)snprintf(out + pos, outlen - pos, "%s%s", pos ? "," : "",
						names[i]->d_name);
		free(names[i]);
	}
	free(names);
}

static void write_file(const struct tmpdir *t, const char *name, const void *data, size_t len)
{
	int fd = openat(t->fd, name, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);

	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, len), (ssize_t)len);
	close(fd);
}

static void test_read_missing(void **state)
{
	struct tmpdir *t = *state;
	struct chunkd_meta m;
	char reason[128] = "";

	assert_int_equal(chunkd__meta_read_at(t->fd, &m, reason, sizeof reason), -ENOENT);
	assert_int_equal(chunkd__meta_read_at(-1, &m, reason, sizeof reason), -EBADF);
}

static void test_write_read(void **state)
{
	struct tmpdir *t = *state;
	static struct chunkd_meta m, back;
	char reason[128] = "", names[256];

	sample(&m);
	assert_int_equal(chunkd__meta_write_at(t->fd, &m), 0);
	assert_int_equal(chunkd__meta_read_at(t->fd, &back, reason, sizeof reason), 0);
	assert_meta_equal(&m, &back);
	list_dir(t, names, sizeof names);
	assert_string_equal(names, ".chunkd-meta"); /* no temporary file left */

	/* Replace it with the largest metadata there is. */
	sample_max(&m);
	assert_int_equal(chunkd__meta_write_at(t->fd, &m), 0);
	assert_int_equal(chunkd__meta_read_at(t->fd, &back, reason, sizeof reason), 0);
	assert_meta_equal(&m, &back);
	list_dir(t, names, sizeof names);
	assert_string_equal(names, ".chunkd-meta");
}

/* The temporary file must not be one of the chunk's own files, which are legal names. */
static void test_write_keeps_file_named_like_tmp(void **state)
{
	struct tmpdir *t = *state;
	struct chunkd_meta m, back;
	char reason[128] = "", names[256], data[16] = "";
	int fd;

	sample(&m);
	m.nfiles = 3;
	strcpy(m.files[0].name, ".chunkd-meta.tmp");
	strcpy(m.files[1].name, ".chunkd-meta.tmp1");
	strcpy(m.files[2].name, "x");
	write_file(t, ".chunkd-meta.tmp", "precious0", 9);
	write_file(t, ".chunkd-meta.tmp1", "precious1", 9);
	assert_int_equal(chunkd__meta_write_at(t->fd, &m), 0);
	list_dir(t, names, sizeof names);
	assert_string_equal(names, ".chunkd-meta,.chunkd-meta.tmp,.chunkd-meta.tmp1");
	fd = openat(t->fd, ".chunkd-meta.tmp", O_RDONLY);
	assert_int_equal(read(fd, data, sizeof data), 9);
	close(fd);
	assert_string_equal(data, "precious0");
	fd = openat(t->fd, ".chunkd-meta.tmp1", O_RDONLY);
	assert_int_equal(read(fd, data, sizeof data), 9);
	close(fd);
	assert_string_equal(data, "precious1");
	assert_int_equal(chunkd__meta_read_at(t->fd, &back, reason, sizeof reason), 0);
	assert_meta_equal(&m, &back);
}

/* A temporary file left by a crash is overwritten and renamed, not a failure. */
static void test_write_over_leftover_tmp(void **state)
{
	struct tmpdir *t = *state;
	struct chunkd_meta m;
	char names[256];

	write_file(t, ".chunkd-meta.tmp", "half a meta", 11);
	sample(&m);
	assert_int_equal(chunkd__meta_write_at(t->fd, &m), 0);
	list_dir(t, names, sizeof names);
	assert_string_equal(names, ".chunkd-meta");
}

static void test_write_invalid(void **state)
{
	struct tmpdir *t = *state;
	struct chunkd_meta m;
	char names[256];

	sample(&m);
	m.nfiles = 0;
	assert_int_equal(chunkd__meta_write_at(t->fd, &m), -EINVAL);
	list_dir(t, names, sizeof names);
	assert_string_equal(names, "");
	sample(&m);
	assert_int_equal(chunkd__meta_write_at(-1, &m), -EBADF);
}

static void test_read_malformed(void **state)
{
	struct tmpdir *t = *state;
	struct chunkd_meta m;
	char reason[128] = "";

	write_file(t, CHUNKD_META_NAME, VALID "x", sizeof VALID);
	assert_int_equal(chunkd__meta_read_at(t->fd, &m, reason, sizeof reason), -EINVAL);
	assert_reason(reason, "line 10: data after 'end'");

	/* Data after a complete-looking "end" line is still seen. */
	write_file(t, CHUNKD_META_NAME, VALID VALID, 2 * (sizeof VALID - 1));
	assert_int_equal(chunkd__meta_read_at(t->fd, &m, reason, sizeof reason), -EINVAL);
	assert_reason(reason, "line 10: data after 'end'");

	write_file(t, CHUNKD_META_NAME, "", 0);
	assert_int_equal(chunkd__meta_read_at(t->fd, &m, reason, sizeof reason), -EINVAL);
	assert_reason(reason, "empty file");
}

static void test_read_too_large(void **state)
{
	struct tmpdir *t = *state;
	static char big[CHUNKD_META_MAX + 1];
	struct chunkd_meta m;
	char reason[128] = "";

	memset(big, '\n', sizeof big);
	write_file(t, CHUNKD_META_NAME, big, sizeof big);
	assert_int_equal(chunkd__meta_read_at(t->fd, &m, reason, sizeof reason), -E2BIG);
	assert_reason(reason, "larger than 65536 bytes");
	write_file(t, CHUNKD_META_NAME, big, sizeof big - 1);
	assert_int_equal(chunkd__meta_read_at(t->fd, &m, reason, sizeof reason), -EINVAL);
	/* Ending in "\nend\n" must not stop a full buffer from being reported as too large. */
	memcpy(big + sizeof big - 5, "\nend\n", 5);
	write_file(t, CHUNKD_META_NAME, big, sizeof big);
	assert_int_equal(chunkd__meta_read_at(t->fd, &m, reason, sizeof reason), -E2BIG);
}

static void test_read_not_a_file(void **state)
{
	struct tmpdir *t = *state;
	struct chunkd_meta m;
	char reason[128] = "";

	/* A symlink, even to a valid file, is refused. */
	write_file(t, "real", VALID, sizeof VALID - 1);
	assert_int_equal(symlinkat("real", t->fd, CHUNKD_META_NAME), 0);
	assert_int_equal(chunkd__meta_read_at(t->fd, &m, reason, sizeof reason), -ELOOP);
	assert_int_equal(unlinkat(t->fd, CHUNKD_META_NAME, 0), 0);

	/* A FIFO does not block the reader. */
	assert_int_equal(mkfifoat(t->fd, CHUNKD_META_NAME, 0600), 0);
	assert_int_equal(chunkd__meta_read_at(t->fd, &m, reason, sizeof reason), -EINVAL);
	assert_int_equal(unlinkat(t->fd, CHUNKD_META_NAME, 0), 0);

	assert_int_equal(mkdirat(t->fd, CHUNKD_META_NAME, 0700), 0);
	assert_int_equal(chunkd__meta_read_at(t->fd, &m, reason, sizeof reason), -EISDIR);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_format_exact),
	    cmocka_unit_test(test_round_trip),
	    cmocka_unit_test(test_round_trip_max),
	    cmocka_unit_test(test_round_trip_odd_names),
	    cmocka_unit_test(test_parse_uppercase_hex),
	    cmocka_unit_test(test_parse_extremes),
	    cmocka_unit_test(test_parse_malformed),
	    cmocka_unit_test(test_parse_too_large),
	    cmocka_unit_test(test_parse_truncations),
	    cmocka_unit_test(test_parse_reason_truncated),
	    cmocka_unit_test(test_parse_mutations),
	    cmocka_unit_test(test_format_nospace),
	    cmocka_unit_test(test_format_invalid),
	    cmocka_unit_test(test_check_name),
	    cmocka_unit_test(test_dir_name),
	    cmocka_unit_test(test_dir_name_sorts),
	    cmocka_unit_test(test_dir_name_malformed),
	    cmocka_unit_test(test_hex),
	    cmocka_unit_test(test_crc32c_vectors),
	    cmocka_unit_test(test_crc32c_incremental),
	    cmocka_unit_test(test_crc32c_streams_and_copy),
	    cmocka_unit_test(test_crc32c_copy_pieces),
	    cmocka_unit_test_setup_teardown(test_read_missing, tmpdir_setup, tmpdir_teardown),
	    cmocka_unit_test_setup_teardown(test_write_read, tmpdir_setup, tmpdir_teardown),
	    cmocka_unit_test_setup_teardown(test_write_keeps_file_named_like_tmp, tmpdir_setup,
					    tmpdir_teardown),
	    cmocka_unit_test_setup_teardown(test_write_over_leftover_tmp, tmpdir_setup,
					    tmpdir_teardown),
	    cmocka_unit_test_setup_teardown(test_write_invalid, tmpdir_setup, tmpdir_teardown),
	    cmocka_unit_test_setup_teardown(test_read_malformed, tmpdir_setup, tmpdir_teardown),
	    cmocka_unit_test_setup_teardown(test_read_too_large, tmpdir_setup, tmpdir_teardown),
	    cmocka_unit_test_setup_teardown(test_read_not_a_file, tmpdir_setup, tmpdir_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
