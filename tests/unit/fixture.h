/*
 * fixture.h — shared-memory fixtures for unit tests: a catalogue and a request segment in
 * anonymous MAP_SHARED memory (inherited across fork), laid out exactly as the daemon lays out the
 * real segments, without a daemon.
 */
#ifndef CHUNKD_TEST_FIXTURE_H
#define CHUNKD_TEST_FIXTURE_H

#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "shm/atomics.h"
#include "shm/shm.h"

static inline void fixture_cat(struct chunkd_cat_map *m, uint32_t max_chunks)
{
	struct chunkd_cat_geom g;
	chunkd__cat_geometry(max_chunks, &g);
	void *p = mmap(NULL, g.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		abort();
	memset(m, 0, sizeof(*m));
	chunkd__cat_bind(m, p, &g);
	m->writable = 1;
	struct chunkd_cat_hdr *h = m->hdr;
	h->magic = CHUNKD_CAT_MAGIC;
	h->format = CHUNKD_SHM_FORMAT;
	h->max_chunks = max_chunks;
	h->size = g.size;
	h->slots_off = g.slots_off;
	h->index_off[0] = g.index_off[0];
	h->index_off[1] = g.index_off[1];
	h->index_bytes = g.index_bytes;
	pthread_rwlockattr_t ra;
	pthread_rwlockattr_init(&ra);
	pthread_rwlockattr_setpshared(&ra, PTHREAD_PROCESS_SHARED);
	pthread_rwlock_init(&h->lock, &ra);
	pthread_rwlockattr_destroy(&ra);
	chunkd__store_release(&h->version, CHUNKD_SHM_VERSION);
}

static inline void fixture_req(struct chunkd_req_map *m, uint32_t max_clients)
{
	struct chunkd_req_geom g;
	chunkd__req_geometry(max_clients, &g);
	void *p = mmap(NULL, g.size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED)
		abort();
	memset(m, 0, sizeof(*m));
	chunkd__req_bind(m, p, &g);
	struct chunkd_req_hdr *h = m->hdr;
	h->magic = CHUNKD_REQ_MAGIC;
	h->format = CHUNKD_SHM_FORMAT;
	h->max_clients = max_clients;
	h->pins_per_client = CHUNKD_PINS_PER_CLIENT;
	h->client_stride = g.client_stride;
	h->clients_off = g.clients_off;
	h->size = g.size;
	chunkd__store_release(&h->version, CHUNKD_SHM_VERSION);
}

static inline void fixture_cat_free(struct chunkd_cat_map *m)
{
	munmap(m->hdr, m->size);
}

static inline void fixture_req_free(struct chunkd_req_map *m)
{
	munmap(m->hdr, m->size);
}

static inline uint64_t fixture_now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* xorshift64*: deterministic test randomness, one state per thread/process. */
static inline uint64_t fixture_rand(uint64_t *s)
{
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 2685821657736338717ull;
}

#endif
