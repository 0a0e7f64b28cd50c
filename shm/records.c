/*
 * records.c — see records.h. The record format is drawn in layout.h (struct chunkd_rec_*) and
 * the ring protocol in docs/shm-layout.md, "Requests".
 */
#include "records.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "atomics.h"

#define ALIGN_REC(x) (((x) + CHUNKD_REC_ALIGN - 1) / CHUNKD_REC_ALIGN * CHUNKD_REC_ALIGN)

__attribute__((format(printf, 3, 4))) static int fail(char *why, size_t whylen, const char *fmt,
						      ...)
{
	if (why && whylen) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(why, whylen, fmt, ap);
		va_end(ap);
	}
	return -EINVAL;
}

int chunkd__check_file_name(const char *name, size_t len)
{
	if (len == 0 || len > CHUNKD_MAX_NAME)
		return -EINVAL;
	if ((len == 1 && name[0] == '.') || (len == 2 && name[0] == '.' && name[1] == '.'))
		return -EINVAL;
	if (len == sizeof(CHUNKD_META_NAME) - 1 && !memcmp(name, CHUNKD_META_NAME, len))
		return -EINVAL;
	for (size_t i = 0; i < len; i++)
		if (name[i] == '/' || name[i] == '\n' || name[i] == '\0')
			return -EINVAL;
	return 0;
}

int chunkd__check_url(const char *url, size_t len)
{
	static const char *const schemes[] = {"http://", "https://", "s3://", "file://"};
	if (len == 0 || len > CHUNKD_MAX_URL)
		return -EINVAL;
	for (size_t i = 0; i < len; i++)
		if ((unsigned char)url[i] <= 0x20 || (unsigned char)url[i] >= 0x7f)
			return -EINVAL;
	for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++) {
		size_t n = strlen(schemes[i]);
		if (len > n && !memcmp(url, schemes[i], n))
			return 0;
	}
	return -EINVAL;
}

int chunkd__check_chunk(const chunkd_chunk *c, char *why, size_t whylen)
{
	if (!c)
		return fail(why, whylen, "chunk is NULL");
	if (c->nfiles == 0 || c->nfiles > CHUNKD_MAX_FILES)
		return fail(why, whylen, "nfiles %u is not in 1..%d", c->nfiles, CHUNKD_MAX_FILES);
	if (!c->files)
		return fail(why, whylen, "files is NULL");
	if (c->first_block >= c->end_block)
		return fail(why, whylen, "first_block %llu >= end_block %llu",
			    (unsigned long long)c->first_block, (unsigned long long)c->end_block);
	for (uint32_t i = 0; i < c->nfiles; i++) {
		const chunkd_file *f = &c->files[i];
		if (!f->name || !f->url)
			return fail(why, whylen, "file %u: NULL name or url", i);
		size_t nl = strnlen(f->name, CHUNKD_MAX_NAME + 1);
		if (chunkd__check_file_name(f->name, nl) < 0)
			return fail(why, whylen, "file %u: bad name (empty, too long, '/', '.', '..' "
				    "or " CHUNKD_META_NAME ")", i);
		size_t ul = strnlen(f->url, CHUNKD_MAX_URL + 1);
		if (chunkd__check_url(f->url, ul) < 0)
			return fail(why, whylen, "file %u: bad URL (scheme must be http, https, s3 or "
				    "file; at most %d printable bytes)", i, CHUNKD_MAX_URL);
		for (uint32_t k = 0; k < i; k++)
			if (!strcmp(c->files[k].name, f->name))
				return fail(why, whylen, "file %u: duplicate name", i);
	}
	return 0;
}

size_t chunkd__rec_download_len(const chunkd_chunk *c)
{
	size_t len = sizeof(struct chunkd_rec_download);
	for (uint32_t i = 0; i < c->nfiles; i++)
		len += 4 + strlen(c->files[i].name) + strlen(c->files[i].url);
	return ALIGN_REC(len);
}

int chunkd__rec_encode_download(const chunkd_chunk *c, uint64_t ticket, void *buf, size_t cap)
{
	size_t len = chunkd__rec_download_len(c);
	if (len > cap)
		return -ENOSPC;
	memset(buf, 0, len);
	struct chunkd_rec_download *r = buf;
	r->h.len = (uint32_t)len;
	r->h.type = CHUNKD_REC_DOWNLOAD;
	r->h.nfiles = (uint16_t)c->nfiles;
	r->h.ticket = ticket;
	memcpy(r->id, c->id.bytes, 32);
	memcpy(r->dataset, c->dataset.bytes, 32);
	r->first_block = c->first_block;
	r->end_block = c->end_block;
	uint8_t *p = (uint8_t *)(r + 1);
	for (uint32_t i = 0; i < c->nfiles; i++) {
		uint16_t nl = (uint16_t)strlen(c->files[i].name);
		uint16_t ul = (uint16_t)strlen(c->files[i].url);
		memcpy(p, &nl, 2);
		memcpy(p + 2, &ul, 2);
		memcpy(p + 4, c->files[i].name, nl);
		memcpy(p + 4 + nl, c->files[i].url, ul);
		p += 4 + nl + ul;
	}
	return (int)len;
}

int chunkd__rec_encode_delete(const chunkd_id *id, uint64_t ticket, void *buf, size_t cap)
{
	size_t len = ALIGN_REC(sizeof(struct chunkd_rec_delete));
	if (len > cap)
		return -ENOSPC;
	memset(buf, 0, len);
	struct chunkd_rec_delete *r = buf;
	r->h.len = (uint32_t)len;
	r->h.type = CHUNKD_REC_DELETE;
	r->h.ticket = ticket;
	memcpy(r->id, id->bytes, 32);
	return (int)len;
}

int chunkd__rec_decode_download(const void *rec, size_t len, struct chunkd_dl *out, char *why,
				size_t whylen)
{
	const struct chunkd_rec_download *r = rec;
	if (len < sizeof(*r) || r->h.len != len || r->h.type != CHUNKD_REC_DOWNLOAD) {
		fail(why, whylen, "malformed download record");
		return -EBADMSG;
	}
	out->ticket = r->h.ticket;
	memcpy(out->id, r->id, 32);
	memcpy(out->dataset, r->dataset, 32);
	out->first_block = r->first_block;
	out->end_block = r->end_block;
	out->nfiles = r->h.nfiles;
	if (out->nfiles == 0 || out->nfiles > CHUNKD_MAX_FILES)
		return fail(why, whylen, "nfiles %u is not in 1..%d", out->nfiles, CHUNKD_MAX_FILES);
	if (out->first_block >= out->end_block)
		return fail(why, whylen, "first_block >= end_block");
	const uint8_t *p = (const uint8_t *)(r + 1), *end = (const uint8_t *)rec + len;
	for (uint32_t i = 0; i < out->nfiles; i++) {
		uint16_t nl, ul;
		if (end - p < 4) {
			fail(why, whylen, "record truncated in file %u", i);
			return -EBADMSG;
		}
		memcpy(&nl, p, 2);
		memcpy(&ul, p + 2, 2);
		p += 4;
		if ((size_t)(end - p) < (size_t)nl + ul) {
			fail(why, whylen, "record truncated in file %u", i);
			return -EBADMSG;
		}
		if (chunkd__check_file_name((const char *)p, nl) < 0)
			return fail(why, whylen, "file %u: bad name", i);
		if (chunkd__check_url((const char *)p + nl, ul) < 0)
			return fail(why, whylen, "file %u: bad URL", i);
		memcpy(out->files[i].name, p, nl);
		out->files[i].name[nl] = '\0';
		memcpy(out->files[i].url, p + nl, ul);
		out->files[i].url[ul] = '\0';
		p += nl + ul;
		for (uint32_t k = 0; k < i; k++)
			if (!strcmp(out->files[k].name, out->files[i].name))
				return fail(why, whylen, "file %u: duplicate name", i);
	}
	/* Only the zero padding of the encoder may follow: anything else means the record is not
	 * what a client encoded (a flipped nfiles would otherwise decode as another request). */
	if (ALIGN_REC((size_t)(p - (const uint8_t *)rec)) != len) {
		fail(why, whylen, "trailing bytes after the last file");
		return -EBADMSG;
	}
	for (; p < end; p++)
		if (*p) {
			fail(why, whylen, "non-zero padding");
			return -EBADMSG;
		}
	return 0;
}

uint8_t *chunkd__sq_reserve(struct chunkd_req_client *cl, uint32_t len, uint64_t *new_tail)
{
	/* Pairs with the daemon's release store of sq_head after consuming. */
	uint64_t head = chunkd__load_acquire(&cl->d.sq_head);
	uint64_t tail = chunkd__load_relaxed(&cl->ctl.sq_tail);
	uint64_t off = tail % CHUNKD_SQ_BYTES;
	uint64_t pad = CHUNKD_SQ_BYTES - off < len ? CHUNKD_SQ_BYTES - off : 0;
	if (tail - head > CHUNKD_SQ_BYTES || CHUNKD_SQ_BYTES - (tail - head) < pad + len)
		return NULL;
	if (pad) {
		/* Written now, published together with the record by the commit. */
		struct chunkd_rec_hdr h = {.len = (uint32_t)pad, .type = CHUNKD_REC_PAD};
		memcpy(&cl->sq[off], &h, sizeof(h));
		off = 0;
	}
	*new_tail = tail + pad + len;
	return &cl->sq[off];
}

void chunkd__sq_commit(struct chunkd_req_client *cl, uint64_t new_tail)
{
	/* Publishes the record bytes; pairs with the daemon's acquire load of sq_tail in intake
	 * (and its seq_cst load in chunkd__engine_rings_pending). */
	chunkd__store_release(&cl->ctl.sq_tail, new_tail);
}

int chunkd__sq_pop(const struct chunkd_req_client *cl, uint64_t *head, uint64_t tail, void *buf,
		   size_t cap)
{
	for (;;) {
		uint64_t h = *head;
		if (h == tail)
			return 0;
		if (tail - h > CHUNKD_SQ_BYTES || h % CHUNKD_REC_ALIGN)
			goto garbage;
		uint64_t off = h % CHUNKD_SQ_BYTES;
		struct chunkd_rec_hdr hdr;
		/* Copy first, validate the copy: the client may rewrite the bytes at any time. */
		memcpy(&hdr, &cl->sq[off], sizeof(hdr));
		if (hdr.len < sizeof(hdr) || hdr.len % CHUNKD_REC_ALIGN || hdr.len > tail - h ||
		    hdr.len > CHUNKD_SQ_BYTES - off)
			goto garbage;
		if (hdr.type == CHUNKD_REC_PAD) {
			if (off + hdr.len != CHUNKD_SQ_BYTES)
				goto garbage;
			*head = h + hdr.len;
			continue;
		}
		if (hdr.len > cap)
			goto garbage;
		memcpy(buf, &cl->sq[off], hdr.len);
		*head = h + hdr.len;
		return (int)hdr.len;
	}
garbage:
	*head = tail;
	return -EBADMSG;
}
