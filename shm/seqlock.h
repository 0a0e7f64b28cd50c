/*
 * seqlock.h — a sequence lock in C11 atomics, after Boehm, "Can seqlocks get along with
 * programming language memory models?" (MSPC 2012).
 *
 * One writer at a time (the daemon serialises its writers with the catalogue rwlock); any number
 * of readers in any process, which never write shared memory. Protected data must be accessed
 * with relaxed atomics on both sides (atomics.h).
 *
 * Readers bound their retries: a writer killed inside a write section leaves the counter odd
 * forever, and a reader must report -EAGAIN instead of hanging (rule: a process can die at any
 * instruction).
 */
#ifndef CHUNKD_SHM_SEQLOCK_H
#define CHUNKD_SHM_SEQLOCK_H

#include <stdint.h>

#include "atomics.h"

/* Read attempts before a reader gives up with -EAGAIN. A write section is a few hundred
 * nanoseconds; this covers a writer that is descheduled mid-section for a while. */
#define CHUNKD_SEQ_SPINS 100000u

static inline void chunkd__cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ __volatile__("yield");
#endif
}

/* Writer: enter. */
static inline void chunkd__seq_write_begin(uint32_t *seq)
{
	uint32_t s = chunkd__load_relaxed(seq);
	chunkd__store_relaxed(seq, s + 1);
	/* Orders the odd counter before the data stores; pairs with the reader's acquire fence. */
	chunkd__fence_release();
}

/* Writer: leave. */
static inline void chunkd__seq_write_end(uint32_t *seq)
{
	uint32_t s = chunkd__load_relaxed(seq);
	/* Publishes the data stores; pairs with the reader's acquire load in seq_read_begin. */
	chunkd__store_release(seq, s + 1);
}

/* Reader: start a section. Returns the counter to pass to seq_read_retry; odd means "a writer is
 * inside", and the caller should retry (the check happens in seq_read_retry). */
static inline uint32_t chunkd__seq_read_begin(const uint32_t *seq)
{
	/* Pairs with the writer's release store in seq_write_end. */
	return chunkd__load_acquire(seq);
}

/* Reader: end a section; returns non-zero if the data read since begin must be discarded. */
static inline int chunkd__seq_read_retry(const uint32_t *seq, uint32_t start)
{
	/* Orders the relaxed data loads before the reload; pairs with the writer's release fence. */
	chunkd__fence_acquire();
	return (start & 1u) || chunkd__load_relaxed(seq) != start;
}

#endif
