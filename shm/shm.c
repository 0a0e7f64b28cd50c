/*
 * shm.c — naming, geometry and attaching to a chunkd instance's shared memory.
 */
#include "shm.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "atomics.h"
#include "seqlock.h"

#define ALIGN_UP(x, a) (((x) + (a)-1) / (a) * (a))

int chunkd__name_resolve(const char *name, char out[CHUNKD_NAME_MAX + 1])
{
	if (!name || !*name)
		name = getenv("CHUNKD_NAME");
	if (!name || !*name)
		name = "default";
	size_t n = strlen(name);
	if (n > CHUNKD_NAME_MAX)
		return -EINVAL;
	for (size_t i = 0; i < n; i++) {
		char ch = name[i];
		int ok = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
			 (ch >= '0' && ch <= '9') || ch == '.' || ch == '_' || ch == '-';
		if (!ok)
			return -EINVAL;
	}
	memcpy(out, name, n + 1);
	return 0;
}

void chunkd__shm_object(char *buf, size_t len, const char *name, const char *suffix)
{
	snprintf(buf, len, "/chunkd.%s.%s", name, suffix);
}

void chunkd__cat_geometry(uint32_t max_chunks, struct chunkd_cat_geom *g)
{
	memset(g, 0, sizeof(*g));
	g->max_chunks = max_chunks;
	g->slots_off = CHUNKD_PAGE;
	g->hash_cap = 16;
	while (g->hash_cap < 2 * (uint64_t)max_chunks)
		g->hash_cap <<= 1;
	g->ds_off = sizeof(struct chunkd_idx_hdr);
	g->firsts_off = ALIGN_UP(g->ds_off + (uint64_t)g->hash_cap * sizeof(struct chunkd_idx_ds),
				 CHUNKD_CACHELINE);
	g->ranges_off = ALIGN_UP(g->firsts_off + (uint64_t)max_chunks * sizeof(uint64_t),
				 CHUNKD_CACHELINE);
	g->ids_off = ALIGN_UP(g->ranges_off +
				      (uint64_t)max_chunks * sizeof(struct chunkd_idx_range),
			      CHUNKD_CACHELINE);
	g->index_bytes = ALIGN_UP(g->ids_off + (uint64_t)max_chunks * sizeof(struct chunkd_idx_id),
				  CHUNKD_PAGE);
	g->index_off[0] =
		ALIGN_UP(g->slots_off + (uint64_t)max_chunks * sizeof(struct chunkd_slot), CHUNKD_PAGE);
	g->index_off[1] = g->index_off[0] + g->index_bytes;
	g->states_off = g->index_off[1] + g->index_bytes;
	g->size = g->states_off + ALIGN_UP((uint64_t)max_chunks * 8, CHUNKD_PAGE);
}

void chunkd__req_geometry(uint32_t max_clients, struct chunkd_req_geom *g)
{
	memset(g, 0, sizeof(*g));
	g->max_clients = max_clients;
	g->client_stride = ALIGN_UP(sizeof(struct chunkd_req_client), CHUNKD_PAGE);
	g->clients_off = CHUNKD_PAGE;
	g->size = g->clients_off + (uint64_t)max_clients * g->client_stride;
}

void chunkd__cat_bind(struct chunkd_cat_map *m, void *base, const struct chunkd_cat_geom *g)
{
	uint8_t *b = base;
	m->hdr = base;
	m->slots = (struct chunkd_slot *)(b + g->slots_off);
	m->states = (uint64_t *)(b + g->states_off);
	for (int i = 0; i < 2; i++) {
		uint8_t *ix = b + g->index_off[i];
		m->idx[i].hdr = (struct chunkd_idx_hdr *)ix;
		m->idx[i].ds = (struct chunkd_idx_ds *)(ix + g->ds_off);
		m->idx[i].firsts = (uint64_t *)(ix + g->firsts_off);
		m->idx[i].ranges = (struct chunkd_idx_range *)(ix + g->ranges_off);
		m->idx[i].ids = (struct chunkd_idx_id *)(ix + g->ids_off);
	}
	m->geom = *g;
	m->size = g->size;
}

void chunkd__req_bind(struct chunkd_req_map *m, void *base, const struct chunkd_req_geom *g)
{
	m->hdr = base;
	m->clients = (uint8_t *)base + g->clients_off;
	m->geom = *g;
	m->size = g->size;
}

__attribute__((format(printf, 3, 4))) static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	if (!err || !errlen)
		return;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* Open and map an existing object; checks it is at least one page. */
static int map_object(const char *name, const char *suffix, int writable, void **base,
		      size_t *size, char *err, size_t errlen)
{
	char obj[CHUNKD_NAME_MAX + 32];
	chunkd__shm_object(obj, sizeof(obj), name, suffix);
	int fd = shm_open(obj, writable ? O_RDWR : O_RDONLY, 0);
	if (fd < 0) {
		int e = errno;
		set_err(err, errlen, "%s: %s", obj,
			e == ENOENT ? "no such chunkd instance (is the daemon running?)" : strerror(e));
		return -e;
	}
	struct stat st;
	if (fstat(fd, &st) < 0) {
		int e = errno;
		close(fd);
		set_err(err, errlen, "%s: fstat: %s", obj, strerror(e));
		return -e;
	}
	if ((size_t)st.st_size < CHUNKD_PAGE) {
		close(fd);
		set_err(err, errlen, "%s: segment is being created", obj);
		return -EAGAIN;
	}
	void *p = mmap(NULL, (size_t)st.st_size, PROT_READ | (writable ? PROT_WRITE : 0), MAP_SHARED,
		       fd, 0);
	int e = errno;
	close(fd);
	if (p == MAP_FAILED) {
		set_err(err, errlen, "%s: mmap: %s", obj, strerror(e));
		return -e;
	}
	*base = p;
	*size = (size_t)st.st_size;
	return 0;
}

/* Common header checks: ready flag, magic, format. The ready flag comes first: a daemon sizes a
 * new object (all zeros) before it writes the header, so a zero version means "not yet", not a
 * foreign file. */
static int check_header(const char *what, const uint64_t *magic, uint64_t want_magic,
			const uint32_t *format, const uint32_t *version, char *err, size_t errlen)
{
	/* Pairs with the daemon's release store of version after initialising the segment. */
	uint32_t v = chunkd__load_acquire(version);
	if (v == 0) {
		set_err(err, errlen, "%s: the daemon is still initialising the segment", what);
		return -EAGAIN;
	}
	uint64_t mg = chunkd__load_relaxed(magic);
	uint32_t f = chunkd__load_relaxed(format);
	if (mg != want_magic) {
		set_err(err, errlen, "%s: bad magic 0x%016llx (not a chunkd segment, or other endianness)",
			what, (unsigned long long)mg);
		return -EPROTO;
	}
	if (v != CHUNKD_SHM_VERSION || f != CHUNKD_SHM_FORMAT) {
		set_err(err, errlen,
			"%s: shared-memory layout version %u (format 0x%08x), this library speaks "
			"version %u (format 0x%08x)",
			what, v, f, CHUNKD_SHM_VERSION, CHUNKD_SHM_FORMAT);
		return -EPROTO;
	}
	return 0;
}

int chunkd__cat_attach(const char *name, int writable, struct chunkd_cat_map *m, char *err,
		       size_t errlen)
{
	void *base;
	size_t size;
	memset(m, 0, sizeof(*m));
	int r = map_object(name, "cat", writable, &base, &size, err, errlen);
	if (r < 0)
		return r;
	struct chunkd_cat_hdr *h = base;
	r = check_header("catalogue", &h->magic, CHUNKD_CAT_MAGIC, &h->format, &h->version, err,
			 errlen);
	if (r < 0)
		goto err_unmap;
	struct chunkd_cat_geom g;
	chunkd__cat_geometry(h->max_chunks, &g);
	if (h->max_chunks == 0 || h->max_chunks > CHUNKD_LIMIT_MAX_CHUNKS || g.size != size ||
	    h->size != size || h->slots_off != g.slots_off || h->index_off[0] != g.index_off[0] ||
	    h->index_off[1] != g.index_off[1] || h->index_bytes != g.index_bytes) {
		set_err(err, errlen, "catalogue: geometry does not match its size (%zu bytes)", size);
		r = -EPROTO;
		goto err_unmap;
	}
	chunkd__cat_bind(m, base, &g);
	m->writable = writable;
	return 0;
err_unmap:
	munmap(base, size);
	return r;
}

int chunkd__req_attach(const char *name, int writable, struct chunkd_req_map *m, char *err,
		       size_t errlen)
{
	void *base;
	size_t size;
	memset(m, 0, sizeof(*m));
	int r = map_object(name, "req", writable, &base, &size, err, errlen);
	if (r < 0)
		return r;
	struct chunkd_req_hdr *h = base;
	r = check_header("request segment", &h->magic, CHUNKD_REQ_MAGIC, &h->format, &h->version,
			 err, errlen);
	if (r < 0)
		goto err_unmap;
	struct chunkd_req_geom g;
	chunkd__req_geometry(h->max_clients, &g);
	if (h->max_clients == 0 || h->max_clients > CHUNKD_LIMIT_MAX_CLIENTS || g.size != size ||
	    h->size != size || h->client_stride != g.client_stride ||
	    h->clients_off != g.clients_off || h->pins_per_client != CHUNKD_PINS_PER_CLIENT) {
		set_err(err, errlen, "request segment: geometry does not match its size (%zu bytes)",
			size);
		r = -EPROTO;
		goto err_unmap;
	}
	chunkd__req_bind(m, base, &g);
	return 0;
err_unmap:
	munmap(base, size);
	return r;
}

void chunkd__cat_detach(struct chunkd_cat_map *m)
{
	if (m->hdr)
		munmap(m->hdr, m->size);
	memset(m, 0, sizeof(*m));
}

void chunkd__req_detach(struct chunkd_req_map *m)
{
	if (m->hdr)
		munmap(m->hdr, m->size);
	memset(m, 0, sizeof(*m));
}

void chunkd__doorbell_ring(struct chunkd_req_hdr *hdr)
{
	/* Orders the caller's earlier stores (a cleared pin, a new owner) before the ring; pairs
	 * with the acquire load of the doorbell in the daemon's waker thread. */
	chunkd__fetch_add(&hdr->doorbell, 1, __ATOMIC_RELEASE);
	syscall(SYS_futex, &hdr->doorbell, FUTEX_WAKE, 1, NULL, NULL, 0);
}

int chunkd__doorbell_ring_if_idle(struct chunkd_req_hdr *hdr)
{
	/* Dekker with the daemon's loop: we did store sq_tail (release); fence; load need_wake, the
	 * loop does store need_wake = 1; load sq_tail, all seq_cst, so one of us sees the other's
	 * store. The fence keeps our tail store from passing the load below. */
	chunkd__fence_seq_cst();
	/* Pairs with the loop's seq_cst store of 1 before it may block (daemon/loop.c). */
	if (chunkd__load_seq_cst(&hdr->need_wake) != 1)
		return 0; /* the loop is awake and scans every ring before it blocks */
	/* Of the producers that saw 1, the one that takes it rings; the others need not. */
	if (chunkd__exchange_seq_cst(&hdr->need_wake, 0) != 1)
		return 0;
	chunkd__doorbell_ring(hdr);
	return 1;
}

int chunkd__slot_read(const struct chunkd_cat_map *m, uint32_t slot, struct chunkd_slot_copy *out)
{
	const struct chunkd_slot *s = &m->slots[slot];
	for (uint32_t tries = 0; tries < CHUNKD_SEQ_SPINS; tries++) {
		uint32_t q = chunkd__seq_read_begin(&s->seq);
		if (q & 1u) {
			chunkd__cpu_relax();
			continue;
		}
		out->gen_state = chunkd__load_relaxed(&m->states[slot]);
		out->nfiles = chunkd__load_relaxed(&s->nfiles);
		chunkd__load_id_relaxed(out->id, s->id);
		chunkd__load_id_relaxed(out->dataset, s->dataset);
		out->first_block = chunkd__load_relaxed(&s->first_block);
		out->end_block = chunkd__load_relaxed(&s->end_block);
		out->bytes_total = chunkd__load_relaxed(&s->bytes_total);
		out->bytes_done = chunkd__load_relaxed(&s->bytes_done);
		out->attempts = chunkd__load_relaxed(&s->attempts);
		out->last_error = chunkd__load_relaxed(&s->last_error);
		out->published_ns = chunkd__load_relaxed(&s->published_ns);
		const uint64_t *src = (const uint64_t *)s->path;
		uint64_t *dst = (uint64_t *)out->path;
		for (size_t i = 0; i < CHUNKD_SLOT_PATH_MAX / 8; i++)
			dst[i] = chunkd__load_relaxed(&src[i]);
		out->http_status = chunkd__load_relaxed(&s->http_status);
		src = (const uint64_t *)s->message;
		dst = (uint64_t *)out->message;
		for (size_t i = 0; i < CHUNKD_SLOT_MSG_MAX / 8; i++)
			dst[i] = chunkd__load_relaxed(&src[i]);
		if (!chunkd__seq_read_retry(&s->seq, q)) {
			out->path[CHUNKD_SLOT_PATH_MAX - 1] = '\0';
			out->message[CHUNKD_SLOT_MSG_MAX - 1] = '\0';
			return 0;
		}
	}
	return -EAGAIN;
}

void chunkd__slot_write(struct chunkd_slot *s, const struct chunkd_slot_copy *in)
{
	chunkd__seq_write_begin(&s->seq);
	chunkd__store_relaxed(&s->nfiles, in->nfiles);
	chunkd__store_id_relaxed(s->id, in->id);
	chunkd__store_id_relaxed(s->dataset, in->dataset);
	chunkd__store_relaxed(&s->first_block, in->first_block);
	chunkd__store_relaxed(&s->end_block, in->end_block);
	chunkd__store_relaxed(&s->bytes_total, in->bytes_total);
	chunkd__store_relaxed(&s->bytes_done, in->bytes_done);
	chunkd__store_relaxed(&s->attempts, in->attempts);
	chunkd__store_relaxed(&s->last_error, in->last_error);
	chunkd__store_relaxed(&s->published_ns, in->published_ns);
	chunkd__copy_out_relaxed((uint64_t *)s->path, (const uint64_t *)in->path,
				 CHUNKD_SLOT_PATH_MAX / 8);
	chunkd__store_relaxed(&s->http_status, in->http_status);
	chunkd__copy_out_relaxed((uint64_t *)s->message, (const uint64_t *)in->message,
				 CHUNKD_SLOT_MSG_MAX / 8);
	chunkd__seq_write_end(&s->seq);
}
