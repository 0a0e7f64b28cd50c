/*
 * pinblocks.c — process-local ownership of pin blocks (docs/shm-layout.md, "Pin blocks").
 *
 * Rules that make plain stores safe: a thread stores a non-zero word only into an entry of a
 * block it owns (found 0 by its own load), or by CAS into an entry of a SHARED block; SHARED never
 * goes back to FREE, so a CAS taker and a plain taker never meet on an entry. A block changes
 * owner only by CAS on its owner word: FREE -> thread, FREE -> SHARED, and dead thread -> thread
 * or SHARED. Any thread may clear any entry (a release stores 0 over its own pin).
 */
#include <errno.h>
#include <signal.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "pinblocks.h"
#include "shm/atomics.h"

/* Thread words: a process-wide thread number (never reused) << 22 | the kernel tid (< 2^22, the
 * largest pid_max). The number makes a reused tid a different owner; the tid lets another thread
 * see that the owner has exited. */
#define TID_BITS 22
static uint64_t next_thread = 1; /* atomic */
static uint64_t next_serial = 1; /* atomic */

/* The calling thread's word (0 until its first claim). */
static __thread uint64_t my_word __attribute__((tls_model("initial-exec")));

/* A cached NO_BLOCK is looked at again every RETRY_EVERY takes, since blocks of exited threads
 * become claimable. */
#define RETRY_EVERY 256u
__thread struct chunkd_pb_cache chunkd__pb_cache __attribute__((tls_model("initial-exec")));

static uint64_t thread_word(void)
{
	if (!my_word) {
		uint64_t n = chunkd__fetch_add(&next_thread, 1, __ATOMIC_RELAXED);
		my_word = n << TID_BITS | ((uint64_t)syscall(SYS_gettid) & ((1u << TID_BITS) - 1));
	}
	return my_word;
}

/* The owner thread of word w (a thread word) has exited: its tid is gone from this process. A
 * live owner keeps its tid, so a reused tid can only make this answer "alive": never wrong. */
static int owner_exited(uint64_t w)
{
	pid_t tid = (pid_t)(w & ((1u << TID_BITS) - 1));
	return syscall(SYS_tgkill, getpid(), tid, 0) < 0 && errno == ESRCH;
}

void chunkd__pb_init(struct chunkd_pin_blocks *pb)
{
	for (uint32_t b = 0; b < CHUNKD_PIN_BLOCKS; b++)
		chunkd__store_relaxed(&pb->owner[b], 0);
	chunkd__store_relaxed(&pb->shared, 0);
	pb->serial = chunkd__fetch_add(&next_serial, 1, __ATOMIC_RELAXED);
}

/* Claim a block for the calling thread: its own from before, a FREE one, or one of an exited
 * thread. */
static uint32_t claim(struct chunkd_pin_blocks *pb)
{
	uint64_t me = thread_word();
	for (uint32_t b = 0; b < CHUNKD_PIN_BLOCKS; b++)
		if (chunkd__load_relaxed(&pb->owner[b]) == me)
			return b;
	for (uint32_t b = 0; b < CHUNKD_PIN_BLOCKS; b++) {
		uint64_t w = 0;
		/* Relaxed suffices: the block's entries are ordered by the pin protocol itself,
		 * and an exited owner's last stores happened before its exit. */
		if (chunkd__load_relaxed(&pb->owner[b]) == 0 &&
		    __atomic_compare_exchange_n(&pb->owner[b], &w, me, 0, __ATOMIC_ACQ_REL,
						__ATOMIC_RELAXED))
			return b;
	}
	for (uint32_t b = 0; b < CHUNKD_PIN_BLOCKS; b++) {
		uint64_t w = chunkd__load_relaxed(&pb->owner[b]);
		if (w != 0 && w != CHUNKD_PB_SHARED && owner_exited(w) &&
		    __atomic_compare_exchange_n(&pb->owner[b], &w, me, 0, __ATOMIC_ACQ_REL,
						__ATOMIC_RELAXED))
			return b;
	}
	return CHUNKD_PIN_NO_BLOCK;
}

void chunkd__pb_taker_slow(struct chunkd_pin_blocks *pb, struct chunkd_pin_taker *t)
{
	struct chunkd_pb_cache *c = &chunkd__pb_cache;
	if (c->serial != pb->serial || ++c->retry % RETRY_EVERY == 0) {
		c->block = claim(pb);
		c->serial = pb->serial;
	}
	t->block = c->block;
	/* Acquire: pairs with the release OR in chunkd__pb_grow, after the owner word says SHARED. */
	t->cas_mask = chunkd__load_acquire(&pb->shared);
}

int chunkd__pb_grow(struct chunkd_pin_blocks *pb)
{
	for (int pass = 0; pass < 2; pass++) {
		for (uint32_t b = 0; b < CHUNKD_PIN_BLOCKS; b++) {
			uint64_t w = chunkd__load_relaxed(&pb->owner[b]);
			if (pass == 0 ? w != 0 : (w == 0 || w == CHUNKD_PB_SHARED || !owner_exited(w)))
				continue;
			if (__atomic_compare_exchange_n(&pb->owner[b], &w, CHUNKD_PB_SHARED, 0,
							__ATOMIC_ACQ_REL, __ATOMIC_RELAXED)) {
				/* Release: the SHARED owner word before the mask bit. */
				__atomic_fetch_or(&pb->shared, 1ull << b, __ATOMIC_RELEASE);
				return 0;
			}
		}
	}
	return -ENOBUFS;
}
