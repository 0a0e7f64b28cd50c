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

#define CHUNKD_SHM_VERSION 8u
#define CHUNKD_CAT_MAGIC 0x31544143444b4e43ull /* "CNKDCAT1" little-endian */
#define CHUNKD_REQ_MAGIC 0x31514552444b4e43ull /* "CNKDREQ1" little-endian */

#define CHUNKD_CACHELINE 64u
#define CHUNKD_PAGE 4096u
#define CHUNKD_NAME_MAX 64u       /* bytes in an instance name */
#define CHUNKD_DATA_DIR_MAX 260u  /* bytes in the data dir path, with NUL */
#define CHUNKD_SLOT_PATH_MAX 384u /* bytes in a chunk directory path, with NUL */
#define CHUNKD_SLOT_MSG_MAX 120u  /* bytes in a slot's failure message, with NUL */

#define CHUNKD_DEFAULT_MAX_CHUNKS 65536u
#define CHUNKD_DEFAULT_MAX_CLIENTS 64u
#define CHUNKD_LIMIT_MAX_CHUNKS (1u << 22)
#define CHUNKD_LIMIT_MAX_CLIENTS 4096u

/* Slot states (low 32 bits of a slot's gen_state word in states[]). Only PUBLISHED is findable. */
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

	/* Daemon identity and the index, atomics written by the daemon. Every chunkd_find reads
	 * index_active and index_flips: nothing written often may share their cache line. */
	uint64_t daemon;        /* owner word of the running daemon, 0 = none */
	uint64_t epoch;         /* daemon starts on this segment */
	uint64_t start_time_ns; /* CLOCK_REALTIME */
	uint32_t state;         /* enum chunkd_state */
	uint32_t nchunks;       /* published chunks */
	uint32_t index_active;  /* 0 or 1: the index copy readers use */
	uint32_t slot_hwm;      /* slots [slot_hwm, max_chunks) were never used (adoption reads less) */
	uint64_t index_flips;   /* index publications; seq_cst increment (the pin protocol) */
	uint8_t _pad3[CHUNKD_CACHELINE - 48];

	/* Daemon-only process-shared rwlock; never taken by clients or tools. */
	union {
		pthread_rwlock_t lock;
		uint8_t _lock_space[2 * CHUNKD_CACHELINE];
	};

	/* Liveness, on a line of its own: the loop stores it every iteration. */
	uint64_t heartbeat_ns; /* CLOCK_REALTIME of the last loop iteration */
	uint8_t _pad4[CHUNKD_PAGE - 10 * CHUNKD_CACHELINE - 8];
};

struct chunkd_slot {
	uint64_t _reserved; /* zero (the slot's gen_state lives in the dense states[] array) */
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
	int32_t http_status;             /* last HTTP status seen, 0 if none */
	uint32_t _pad;
	char message[CHUNKD_SLOT_MSG_MAX]; /* last failure, human-readable, NUL-terminated */
} __attribute__((aligned(CHUNKD_CACHELINE)));

struct chunkd_idx_hdr {
	uint32_t seq; /* seqlock over this copy */
	uint32_t nds;
	uint32_t nranges;
	uint32_t nids;
	uint32_t hmask; /* dataset hash capacity - 1 (a power of two minus one) */
	uint32_t _pad0;
	uint64_t hseed; /* dataset hash seed, chosen by the daemon at start */
	uint8_t _pad[CHUNKD_CACHELINE - 32];
};

/* A dataset hash-table entry (open addressing, linear probing); count 0 = empty. */
struct chunkd_idx_ds {
	uint64_t id[4];
	uint32_t start; /* first entry in firsts[] and ranges[] */
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
	struct chunkd_idx_ds *ds;      /* the dataset hash table, hmask + 1 entries in use */
	uint64_t *firsts;              /* ranges[i].first, dense: the block search reads these */
	struct chunkd_idx_range *ranges;
	struct chunkd_idx_id *ids;
};

/* Dataset hash: each of the four id words, xored with the seed (rotated differently per word),
 * multiplied by its own odd constant, the products xored. The four multiplies are independent,
 * so the hash adds one multiply's latency to a look-up, where a chain of four added four. */
static inline uint64_t chunkd__rotl64(uint64_t x, unsigned r)
{
	return (x << r) | (x >> (64 - r));
}

static inline uint32_t chunkd__idx_hash(const uint64_t id[4], uint64_t seed)
{
	uint64_t x = ((id[0] ^ seed) * 0x9E3779B97F4A7C15ull) ^
		     ((id[1] ^ chunkd__rotl64(seed, 16)) * 0xC2B2AE3D27D4EB4Full) ^
		     ((id[2] ^ chunkd__rotl64(seed, 32)) * 0x165667B19E3779F9ull) ^
		     ((id[3] ^ chunkd__rotl64(seed, 48)) * 0xD6E8FEB86659FD93ull);
	return (uint32_t)(x >> 32);
}

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
	uint8_t _pad1[CHUNKD_CACHELINE - 4];
	/* Atomic, 1 = the daemon's loop may be blocked: an enqueue must ring the doorbell. The loop
	 * stores 1 (seq_cst) before it may block and 0 when awake; a client that reads 1 exchanges
	 * it to 0 and rings if it got the 1 (docs/shm-layout.md, "Waking the daemon"). */
	uint32_t need_wake;
	uint8_t _pad2[CHUNKD_PAGE - 2 * CHUNKD_CACHELINE - 4];
};

/* Marks a client slot the daemon is reclaiming (never a valid owner word: pid 0). */
#define CHUNKD_OWNER_RECLAIM (~0ull << 22)
/* Set in the owner word by chunkd_close(): the daemon drains the ring, then frees the slot.
 * Start times stay below 2^41 ticks, so bit 63 of a real owner word is always clear. */
#define CHUNKD_OWNER_CLOSED (1ull << 63)

/* Request ring and ticket table geometry (per client). */
#define CHUNKD_SQ_BYTES (1u << 20) /* fits two of the largest possible records */
#define CHUNKD_TICKETS ((uint32_t)CHUNKD_TICKETS_PER_CLIENT) /* outstanding requests */
#define CHUNKD_REC_ALIGN 16u

/* Line 0 of a client slot: written by the client (owner also by the daemon, see docs). */
struct chunkd_req_client_ctl {
	uint64_t owner;   /* atomic owner word: start_ticks << 22 | pid; 0 = free */
	uint64_t attach_ns;
	uint64_t sq_tail; /* atomic: bytes ever enqueued; client stores with release */
	uint8_t _pad[CHUNKD_CACHELINE - 24];
};

/* Line 1 of a client slot: written by the daemon only. */
struct chunkd_req_client_daemon {
	uint64_t sq_head;   /* atomic: bytes ever consumed; daemon stores with release */
	uint32_t cq_seq;    /* futex word: bumped (release) after posting ticket results */
	uint32_t rejected;  /* records the daemon refused as malformed (counter) */
	/* The owner word the daemon replaced with CHUNKD_OWNER_RECLAIM (stored before that CAS):
	 * a daemon that finds a slot in RECLAIM at start journals its remaining requests under
	 * the client that made them. 0 when unknown. */
	uint64_t reclaim_owner;
	uint8_t _pad[CHUNKD_CACHELINE - 24];
};

/* A ticket's result: daemon stores result, then done = ticket (release). */
struct chunkd_ticket_slot {
	uint64_t done;
	int32_t result;
	uint32_t _pad;
};

struct chunkd_req_client {
	struct chunkd_req_client_ctl ctl;
	struct chunkd_req_client_daemon d;
	uint64_t pins[CHUNKD_PINS_PER_CLIENT];
	struct chunkd_ticket_slot tickets[CHUNKD_TICKETS];
	uint8_t _pad[CHUNKD_PAGE - (2 * CHUNKD_CACHELINE + 8 * CHUNKD_PINS_PER_CLIENT +
				    16 * CHUNKD_TICKETS) % CHUNKD_PAGE];
	uint8_t sq[CHUNKD_SQ_BYTES]; /* written by the client between sq_head and sq_tail */
} __attribute__((aligned(CHUNKD_CACHELINE)));

/* ---- request records (in a client's sq ring) ------------------------------------------------ */

enum chunkd_rec_type {
	CHUNKD_REC_PAD = 1,      /* filler up to the end of the ring; skip */
	CHUNKD_REC_DOWNLOAD = 2, /* chunkd_rec_download + files */
	CHUNKD_REC_DELETE = 3,   /* chunkd_rec_delete */
};

struct chunkd_rec_hdr {
	uint32_t len;  /* whole record, header included, a multiple of CHUNKD_REC_ALIGN */
	uint16_t type; /* enum chunkd_rec_type */
	uint16_t nfiles;
	uint64_t ticket;
};

/* Followed by nfiles times: u16 name_len, u16 url_len, name bytes, url bytes (no NULs),
 * then zero padding up to CHUNKD_REC_ALIGN. */
struct chunkd_rec_download {
	struct chunkd_rec_hdr h;
	uint64_t id[4];
	uint64_t dataset[4];
	uint64_t first_block;
	uint64_t end_block;
};

struct chunkd_rec_delete {
	struct chunkd_rec_hdr h;
	uint64_t id[4];
};

#define CHUNKD_REC_MAX                                                                            \
	((sizeof(struct chunkd_rec_download) + CHUNKD_MAX_FILES * (4u + CHUNKD_MAX_NAME +          \
								    CHUNKD_MAX_URL) +                \
	  CHUNKD_REC_ALIGN - 1) / CHUNKD_REC_ALIGN * CHUNKD_REC_ALIGN)

_Static_assert(sizeof(struct chunkd_cat_hdr) == CHUNKD_PAGE, "cat header is one page");
_Static_assert(offsetof(struct chunkd_cat_hdr, daemon) == 7 * CHUNKD_CACHELINE,
	       "daemon identity starts its own cache line");
_Static_assert(offsetof(struct chunkd_cat_hdr, lock) == 8 * CHUNKD_CACHELINE,
	       "the rwlock starts its own cache line");
_Static_assert(sizeof(pthread_rwlock_t) <= 2 * CHUNKD_CACHELINE, "rwlock fits its space");
_Static_assert(offsetof(struct chunkd_cat_hdr, heartbeat_ns) == 10 * CHUNKD_CACHELINE,
	       "the heartbeat has its own cache line");
_Static_assert(sizeof(struct chunkd_slot) == 640, "slot is 640 bytes");
_Static_assert(offsetof(struct chunkd_slot, path) % 8 == 0, "path is word aligned");
_Static_assert(sizeof(struct chunkd_idx_hdr) == CHUNKD_CACHELINE, "index header is one line");
_Static_assert(sizeof(struct chunkd_idx_ds) == 40, "ds entry");
_Static_assert(sizeof(struct chunkd_idx_range) == 56, "range entry");
_Static_assert(sizeof(struct chunkd_idx_id) == 40, "id entry");
_Static_assert(sizeof(struct chunkd_req_hdr) == CHUNKD_PAGE, "req header is one page");
_Static_assert(offsetof(struct chunkd_req_hdr, doorbell) == CHUNKD_CACHELINE,
	       "doorbell has its own cache line");
_Static_assert(offsetof(struct chunkd_req_hdr, need_wake) == 2 * CHUNKD_CACHELINE,
	       "need_wake has its own cache line");
_Static_assert(sizeof(struct chunkd_req_client_ctl) == CHUNKD_CACHELINE, "client ctl line");
_Static_assert(offsetof(struct chunkd_req_client, d) == CHUNKD_CACHELINE,
	       "daemon-written line follows the client's");
_Static_assert(offsetof(struct chunkd_req_client, pins) == 2 * CHUNKD_CACHELINE,
	       "pins start on their own line");
_Static_assert(offsetof(struct chunkd_req_client, sq) % CHUNKD_PAGE == 0, "ring is page aligned");
_Static_assert((CHUNKD_SQ_BYTES & (CHUNKD_SQ_BYTES - 1)) == 0, "ring size is a power of two");
_Static_assert(2 * CHUNKD_REC_MAX <= CHUNKD_SQ_BYTES, "the ring fits two largest records");
_Static_assert(sizeof(struct chunkd_rec_hdr) == 16, "record header");
_Static_assert(sizeof(struct chunkd_rec_download) == 96, "download record");
_Static_assert(sizeof(struct chunkd_rec_delete) == 48, "delete record");

/* The layout word; see docs/shm-layout.md. */
#define CHUNKD_SHM_FORMAT                                                                         \
	((CHUNKD_SHM_VERSION << 24) | ((uint32_t)(sizeof(struct chunkd_slot) / 64) << 16) |         \
	 ((uint32_t)(sizeof(struct chunkd_cat_hdr) / 64) << 8) | (uint32_t)sizeof(void *))

#endif
