/*
 * layout.h — the shared-memory layout of a chunkd instance. docs/shm-layout.md draws it and says
 * who writes each field under which rule; this file is its executable form. Change a size or an
 * offset here and CHUNKD_SHM_VERSION must change too.
 */
#ifndef CHUNKD_SHM_LAYOUT_H
#define CHUNKD_SHM_LAYOUT_H

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "chunkd.h"

#define CHUNKD_SHM_VERSION 1u
#define CHUNKD_CAT_MAGIC 0x31544143444b4e43ull /* "CNKDCAT1" little-endian */
#define CHUNKD_REQ_MAGIC 0x31514552444b4e43ull /* "CNKDREQ1" little-endian */

#define CHUNKD_CACHELINE 64u
#define CHUNKD_PAGE 4096u
#define CHUNKD_NAME_MAX 64u       /* bytes in an instance name */
#define CHUNKD_DATA_DIR_MAX 260u  /* bytes in the data dir path, with NUL */
#define CHUNKD_SLOT_PATH_MAX 384u /* bytes in a chunk directory path, with NUL */

#define CHUNKD_DEFAULT_MAX_CHUNKS 65536u
#define CHUNKD_DEFAULT_MAX_CLIENTS 256u
#define CHUNKD_LIMIT_MAX_CHUNKS (1u << 22)
#define CHUNKD_LIMIT_MAX_CLIENTS 4096u

/* Slot states (low 32 bits of gen_state). Only PUBLISHED is findable. */
enum chunkd_slot_state {
	CHUNKD_SLOT_FREE = 0,
	CHUNKD_SLOT_QUEUED = 1,
	CHUNKD_SLOT_DOWNLOADING = 2,
	CHUNKD_SLOT_FAILED = 3,
	CHUNKD_SLOT_PUBLISHED = 4,
	CHUNKD_SLOT_CONDEMNED = 5,
};

#define CHUNKD_GEN_STATE(gen, state) (((uint64_t)(gen) << 32) | (uint32_t)(state))
#define CHUNKD_GS_GEN(gs) ((uint32_t)((gs) >> 32))
#define CHUNKD_GS_STATE(gs) ((uint32_t)(gs))

/* A pin entry: gen << 32 | (slot + 1); 0 is an empty entry. */
#define CHUNKD_PIN_WORD(slot, gen) (((uint64_t)(gen) << 32) | ((uint64_t)(slot) + 1u))
#define CHUNKD_PIN_SLOT(w) ((uint32_t)(w) - 1u)
#define CHUNKD_PIN_GEN(w) ((uint32_t)((w) >> 32))

/* ---- /chunkd.NAME.cat ------------------------------------------------------------------- */

struct chunkd_cat_hdr {
	/* Written once at creation, before version. */
	uint64_t magic;
	uint32_t format;
	uint32_t version; /* atomic; written last (release): non-zero = initialised */
	uint32_t max_chunks;
	uint32_t _pad0;
	uint64_t size;
	uint64_t slots_off;
	uint64_t index_off[2];
	uint64_t index_bytes;
	char data_dir[CHUNKD_DATA_DIR_MAX];
	uint8_t _pad1[CHUNKD_CACHELINE * 7 - 64 - CHUNKD_DATA_DIR_MAX];

	/* Daemon identity and liveness, atomics written by the daemon. */
	uint64_t daemon;        /* owner word of the running daemon, 0 = none */
	uint64_t epoch;         /* daemon starts on this segment */
	uint64_t start_time_ns; /* CLOCK_REALTIME */
	uint64_t heartbeat_ns;  /* CLOCK_REALTIME of the last loop iteration */
	uint32_t state;         /* enum chunkd_state */
	uint32_t nchunks;       /* published chunks */
	uint32_t index_active;  /* 0 or 1: the index copy readers use */
	uint32_t _pad2;
	uint64_t index_flips;
	uint8_t _pad3[CHUNKD_CACHELINE - 56];

	/* Daemon-only process-shared rwlock; never taken by clients or tools. */
	union {
		pthread_rwlock_t lock;
		uint8_t _lock_space[2 * CHUNKD_CACHELINE];
	};
	uint8_t _pad4[CHUNKD_PAGE - 10 * CHUNKD_CACHELINE];
};

struct chunkd_slot {
	uint64_t gen_state; /* atomic, seq_cst: gen << 32 | state */
	uint32_t seq;       /* seqlock over everything below */
	uint32_t nfiles;
	uint64_t id[4];
	uint64_t dataset[4];
	uint64_t first_block;
	uint64_t end_block;
	uint64_t bytes_total;
	uint64_t bytes_done;
	uint32_t attempts;
	int32_t last_error;
	uint64_t published_ns;
	char path[CHUNKD_SLOT_PATH_MAX]; /* read with relaxed 64-bit loads under the seqlock */
} __attribute__((aligned(CHUNKD_CACHELINE)));

struct chunkd_idx_hdr {
	uint32_t seq; /* seqlock over this copy */
	uint32_t nds;
	uint32_t nranges;
	uint32_t nids;
	uint8_t _pad[CHUNKD_CACHELINE - 16];
};

struct chunkd_idx_ds {
	uint64_t id[4];
	uint32_t start; /* first entry in ranges[] */
	uint32_t count;
};

struct chunkd_idx_range {
	uint64_t first;
	uint64_t end;
	uint32_t slot;
	uint32_t gen;
	uint64_t id[4];
};

struct chunkd_idx_id {
	uint64_t id[4];
	uint32_t slot;
	uint32_t gen;
};

/* Pointers into one index copy. */
struct chunkd_idx_view {
	struct chunkd_idx_hdr *hdr;
	struct chunkd_idx_ds *ds;
	struct chunkd_idx_range *ranges;
	struct chunkd_idx_id *ids;
};

/* ---- /chunkd.NAME.req ------------------------------------------------------------------- */

struct chunkd_req_hdr {
	uint64_t magic;
	uint32_t format;
	uint32_t version; /* atomic; written last (release) */
	uint32_t max_clients;
	uint32_t pins_per_client;
	uint64_t client_stride;
	uint64_t clients_off;
	uint64_t size;
	uint8_t _pad0[CHUNKD_CACHELINE - 48];
	uint32_t doorbell; /* futex word: any process increments and wakes; the daemon waits */
	uint8_t _pad1[CHUNKD_PAGE - CHUNKD_CACHELINE - 4];
};

/* Marks a client slot the daemon is reclaiming (never a valid owner word: pid 0). */
#define CHUNKD_OWNER_RECLAIM (~0ull << 22)

struct chunkd_req_client_ctl {
	uint64_t owner; /* atomic owner word: start_ticks << 22 | pid; 0 = free */
	uint64_t attach_ns;
	uint8_t _pad[CHUNKD_CACHELINE - 16];
};

struct chunkd_req_client {
	struct chunkd_req_client_ctl ctl;
	uint64_t pins[CHUNKD_PINS_PER_CLIENT];
} __attribute__((aligned(CHUNKD_CACHELINE)));

_Static_assert(sizeof(struct chunkd_cat_hdr) == CHUNKD_PAGE, "cat header is one page");
_Static_assert(offsetof(struct chunkd_cat_hdr, daemon) == 7 * CHUNKD_CACHELINE,
	       "daemon identity starts its own cache line");
_Static_assert(offsetof(struct chunkd_cat_hdr, lock) == 8 * CHUNKD_CACHELINE,
	       "the rwlock starts its own cache line");
_Static_assert(sizeof(pthread_rwlock_t) <= 2 * CHUNKD_CACHELINE, "rwlock fits its space");
_Static_assert(sizeof(struct chunkd_slot) == 512, "slot is 512 bytes");
_Static_assert(offsetof(struct chunkd_slot, path) % 8 == 0, "path is word aligned");
_Static_assert(sizeof(struct chunkd_idx_hdr) == CHUNKD_CACHELINE, "index header is one line");
_Static_assert(sizeof(struct chunkd_idx_ds) == 40, "ds entry");
_Static_assert(sizeof(struct chunkd_idx_range) == 56, "range entry");
_Static_assert(sizeof(struct chunkd_idx_id) == 40, "id entry");
_Static_assert(sizeof(struct chunkd_req_hdr) == CHUNKD_PAGE, "req header is one page");
_Static_assert(offsetof(struct chunkd_req_hdr, doorbell) == CHUNKD_CACHELINE,
	       "doorbell has its own cache line");
_Static_assert(sizeof(struct chunkd_req_client_ctl) == CHUNKD_CACHELINE, "client ctl line");
_Static_assert(offsetof(struct chunkd_req_client, pins) == CHUNKD_CACHELINE,
	       "pins start on their own line");

/* The layout word; see docs/shm-layout.md. */
#define CHUNKD_SHM_FORMAT                                                                         \
	((CHUNKD_SHM_VERSION << 24) | ((uint32_t)(sizeof(struct chunkd_slot) / 64) << 16) |         \
	 ((uint32_t)(sizeof(struct chunkd_cat_hdr) / 64) << 8) | (uint32_t)sizeof(void *))

#endif
