/*
 * meta.h — a chunk's on-disk metadata: the `.chunkd-meta` file inside every chunk directory, the
 * chunk directory's name, and the hex and CRC32C helpers they need. docs/on-disk.md describes the
 * data directory and the file format; this module is its executable form.
 *
 * Everything here is pure computation except chunkd__meta_read_at() and chunkd__meta_write_at(),
 * and nothing takes a lock or keeps state, so every function may be called from any thread.
 * Functions returning int return a non-negative value on success or a negative errno.
 */
#ifndef CHUNKD_DAEMON_META_H
#define CHUNKD_DAEMON_META_H

#include <stddef.h>
#include <stdint.h>

#include "chunkd.h"

#define CHUNKD_META_VERSION 1u           /* the number on the first line, "chunkd-meta 1" */
#define CHUNKD_META_MAX     (64u * 1024) /* bytes in a metadata file; larger is -E2BIG */

/*
 * A chunk directory is named "<first:020>-<end:020>-<id-hex>" (CHUNKD_META_DIR_NAME_LEN bytes)
 * and lives in DATA_DIR/chunks/<dataset-hex>/, so its path below DATA_DIR/chunks/ is
 * CHUNKD_META_REL_PATH_LEN bytes.
 */
#define CHUNKD_META_HEX_LEN      (2 * CHUNKD_ID_SIZE)
#define CHUNKD_META_DIR_NAME_LEN (20 + 1 + 20 + 1 + CHUNKD_META_HEX_LEN)
#define CHUNKD_META_REL_PATH_LEN (CHUNKD_META_HEX_LEN + 1 + CHUNKD_META_DIR_NAME_LEN)

struct chunkd_meta_file {
	char name[CHUNKD_MAX_NAME + 1]; /* NUL-terminated; see chunkd__meta_check_name() */
	uint64_t size;                  /* bytes */
	uint32_t crc32c;                /* meaningful only when has_crc */
	int has_crc;                    /* 1: crc32c is known, 0: written as "-" */
};

struct chunkd_meta {
	uint8_t id[CHUNKD_ID_SIZE], dataset[CHUNKD_ID_SIZE];
	uint64_t first_block, end_block; /* blocks [first_block, end_block), first < end */
	uint32_t nfiles;                 /* 1..CHUNKD_MAX_FILES; files[nfiles..] are unused */
	struct chunkd_meta_file files[CHUNKD_MAX_FILES];
};

/* ---- hex ------------------------------------------------------------------------------- */

/* chunkd__hex_encode — write the n bytes at `in` as 2n lowercase hex digits and a NUL to out. */
void chunkd__hex_encode(const uint8_t *in, size_t n, char *out);

/*
 * chunkd__hex_decode — decode `hexlen` hex digits (either case) into hexlen / 2 bytes at `out`.
 * @return 0; -EINVAL hexlen is odd or a character is not a hex digit (out is then unspecified).
 */
int chunkd__hex_decode(const char *in, size_t hexlen, uint8_t *out);

/* ---- validation and names -------------------------------------------------------------- */

/*
 * chunkd__meta_check_name — is the `len` bytes at `name` a valid chunk file name? Valid: 1 to
 * CHUNKD_MAX_NAME bytes, no '/', no '\n', no NUL, not "." or "..", not CHUNKD_META_NAME. Any
 * other byte is allowed (spaces included; names are not checked to be UTF-8). The client library
 * will use the same rule to refuse a chunk before sending it to the daemon.
 * @return 0; -EINVAL.
 */
int chunkd__meta_check_name(const char *name, size_t len);

/*
 * chunkd__meta_dir_name — the chunk's directory name "<first:020>-<end:020>-<id-hex>", which
 * sorts by first block. Zero-padded to 20 digits; the id in lowercase hex.
 * @out     room for outlen bytes; receives CHUNKD_META_DIR_NAME_LEN bytes and a NUL.
 * @return  CHUNKD_META_DIR_NAME_LEN; -ENOSPC outlen < CHUNKD_META_DIR_NAME_LEN + 1.
 */
int chunkd__meta_dir_name(const struct chunkd_meta *m, char *out, size_t outlen);

/*
 * chunkd__meta_parse_dir_name — parse a NUL-terminated chunk directory name made by
 * chunkd__meta_dir_name(). Only that exact form is accepted (20 digits each, lowercase hex,
 * first < end), so one chunk has exactly one directory name.
 * @return 0 and *first, *end, id filled; -EINVAL (outputs unspecified).
 */
int chunkd__meta_parse_dir_name(const char *name, uint64_t *first, uint64_t *end,
				uint8_t id[CHUNKD_ID_SIZE]);

/* ---- the metadata file ------------------------------------------------------------------ */

/*
 * chunkd__meta_format — serialise `m` in the text format of docs/on-disk.md.
 * @buf     receives the text and a terminating NUL (not counted in the length). A buffer of
 *          CHUNKD_META_MAX bytes always suffices.
 * @return  length of the text; -ENOSPC buflen is too small; -EINVAL `m` would not parse back
 *          (nfiles out of range, first_block >= end_block, a bad or duplicate name).
 */
int chunkd__meta_format(const struct chunkd_meta *m, char *buf, size_t buflen);

/*
 * chunkd__meta_parse — parse the `len` bytes at `buf` (need not be NUL-terminated) into `m`.
 * The parser is strict: every line in order, nothing after "end", canonical decimals; see
 * docs/on-disk.md. Reads no byte outside buf[0..len).
 * @reason  if not NULL, receives a NUL-terminated human-readable message on failure, such as
 *          "line 3: bad hex in dataset", truncated to reasonlen bytes. Untouched on success.
 * @return  0; -EINVAL malformed; -E2BIG len > CHUNKD_META_MAX. On failure `m` is unspecified.
 *          On success files[nfiles..] are untouched.
 */
int chunkd__meta_parse(const char *buf, size_t len, struct chunkd_meta *m, char *reason,
		       size_t reasonlen);

/*
 * chunkd__meta_read_at — read and parse CHUNKD_META_NAME in the chunk directory open as `dirfd`.
 * Built for the start-up scan, which calls it once per chunk: one openat(), normally one read()
 * into a CHUNKD_META_MAX-byte stack buffer (callers' threads need that much stack), one close();
 * no allocation, no stdio. The file is opened with O_NOFOLLOW | O_NONBLOCK, so a symlink fails
 * and a FIFO does not hang.
 * @reason  as for chunkd__meta_parse(), filled for -EINVAL and -E2BIG.
 * @return  0; -ENOENT no metadata file; -E2BIG larger than CHUNKD_META_MAX; -EINVAL malformed;
 *          -ELOOP it is a symlink; other negative errnos from openat() or read() (e.g. -EISDIR).
 * Blocks: on disk I/O.
 */
int chunkd__meta_read_at(int dirfd, struct chunkd_meta *m, char *reason, size_t reasonlen);

/*
 * chunkd__meta_read_in — as chunkd__meta_read_at() for the chunk directory `dir` (one path
 * component, at most CHUNKD_MAX_NAME bytes) below `parentfd`, without opening the directory:
 * the start-up scan saves two syscalls per chunk. The caller has made sure `dir` is a
 * directory and not a symlink (O_NOFOLLOW covers only the metadata file itself).
 */
int chunkd__meta_read_in(int parentfd, const char *dir, struct chunkd_meta *m, char *reason,
			 size_t reasonlen);

/*
 * chunkd__meta_write_at — durably (re)place CHUNKD_META_NAME in the directory open as `dirfd`:
 * write a temporary file, fsync it, renameat() it over CHUNKD_META_NAME, fsync the directory.
 * The temporary name never collides with a file listed in `m`. When the directory is then
 * renamed elsewhere (staging into chunks/), the caller fsyncs the directories involved.
 * @dirfd   a directory opened for reading (not O_PATH: it is fsynced).
 * @return  0; -EINVAL `m` is invalid (see chunkd__meta_format); other negative errnos from
 *          openat/write/fsync/renameat. On failure the temporary file is removed and any
 *          previous CHUNKD_META_NAME is intact. Blocks: on disk I/O, including two fsyncs.
 */
int chunkd__meta_write_at(int dirfd, const struct chunkd_meta *m);

/* ---- CRC32C ---------------------------------------------------------------------------- */

/*
 * chunkd__crc32c — CRC-32C (Castagnoli, reflected polynomial 0x82F63B78, as in iSCSI, ext4 and
 * Btrfs), continued from `crc`: start with 0, and crc32c(crc32c(0, a), b) == crc32c(0, ab).
 * chunkd__crc32c(0, "123456789", 9) == 0xE3069283. Uses the SSE4.2 crc32 instruction when the
 * CPU has it (checked once at run time; three interleaved streams on blocks of 768 bytes and
 * more), else software slice-by-8.
 */
uint32_t chunkd__crc32c(uint32_t crc, const void *buf, size_t len);

/*
 * chunkd__crc32c_copy — copy len bytes from src to dst (which must not overlap) and return
 * chunkd__crc32c(crc, src, len), in one pass over the data: each 8-byte word is loaded once, fed
 * to the CRC and stored. Allocates nothing, never blocks; any thread.
 */
uint32_t chunkd__crc32c_copy(uint32_t crc, void *dst, const void *src, size_t len);

/* chunkd__crc32c_sw — the software slice-by-8 path of chunkd__crc32c(), for tests to compare. */
uint32_t chunkd__crc32c_sw(uint32_t crc, const void *buf, size_t len);

#endif /* CHUNKD_DAEMON_META_H */
