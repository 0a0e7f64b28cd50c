/*
 * records.h — request records in a client's ring: validation of chunk descriptors (the same rules
 * on both sides: the client checks to give a clear -EINVAL, the daemon checks again because the
 * ring is untrusted), encoding (client) and decoding (daemon), and the ring itself.
 */
#ifndef CHUNKD_SHM_RECORDS_H
#define CHUNKD_SHM_RECORDS_H

#include <stddef.h>
#include <stdint.h>

#include "layout.h"

/* A decoded, validated download request (daemon memory; ~280 KiB, allocate it). */
struct chunkd_dl_file {
	char name[CHUNKD_MAX_NAME + 1];
	char url[CHUNKD_MAX_URL + 1];
};

struct chunkd_dl {
	uint64_t ticket;
	uint64_t id[4], dataset[4];
	uint64_t first_block, end_block;
	uint32_t nfiles;
	struct chunkd_dl_file files[CHUNKD_MAX_FILES];
};

/* 0 if `name` (len bytes) may name a chunk file; -EINVAL otherwise. */
int chunkd__check_file_name(const char *name, size_t len);

/* 0 if `url` (len bytes) is an acceptable URL: 1..CHUNKD_MAX_URL bytes of printable ASCII
 * without spaces, scheme http://, https://, s3:// or file:// (lowercase); -EINVAL otherwise. */
int chunkd__check_url(const char *url, size_t len);

/* Validate a public descriptor; on -EINVAL, `why` (may be NULL) says what is wrong. */
int chunkd__check_chunk(const chunkd_chunk *c, char *why, size_t whylen);

/* Encode a validated descriptor as a download record; returns its length (a multiple of
 * CHUNKD_REC_ALIGN, at most CHUNKD_REC_MAX) or -ENOSPC. */
int chunkd__rec_encode_download(const chunkd_chunk *c, uint64_t ticket, void *buf, size_t cap);

/* Encode a delete record; returns its length. */
int chunkd__rec_encode_delete(const chunkd_id *id, uint64_t ticket, void *buf, size_t cap);

/* Decode and validate a download record copied out of a ring (`len` bytes, daemon memory).
 * 0 or -EBADMSG (malformed) / -EINVAL (well-formed but invalid descriptor). */
int chunkd__rec_decode_download(const void *rec, size_t len, struct chunkd_dl *out, char *why,
				size_t whylen);

/* ---- the ring ----------------------------------------------------------------------------- */

/* Client: reserve room for one record of len bytes (aligned) in cl's ring, writing a PAD record
 * first when it would not fit before the end. Returns where to write it, or NULL when the ring is
 * full now. Single producer: the caller serialises reserve and commit. */
uint8_t *chunkd__sq_reserve(struct chunkd_req_client *cl, uint32_t len, uint64_t *new_tail);

/* Client: publish everything reserved up to new_tail. Does not ring the doorbell. */
void chunkd__sq_commit(struct chunkd_req_client *cl, uint64_t new_tail);

/* Length of the download record for a validated descriptor. */
size_t chunkd__rec_download_len(const chunkd_chunk *c);

/* Daemon: take the next record at *head (the daemon's private copy) into buf (cap >=
 * CHUNKD_REC_MAX). Returns the record length (> 0), 0 when the ring is empty, or -EBADMSG when
 * the ring holds garbage (then *head has been moved to the tail: everything pending is
 * dropped). PAD records are skipped internally. `tail` is the value loaded (acquire) once per
 * pass. */
int chunkd__sq_pop(const struct chunkd_req_client *cl, uint64_t *head, uint64_t tail, void *buf,
		   size_t cap);

#endif
