/*
 * atomics.h — the only place chunkd spells memory orders.
 *
 * Every use of an acquire or release helper carries a one-line comment at the call site naming the
 * access it pairs with. Data shared through seqlocks is read and written with the relaxed helpers
 * so that racing accesses are atomic (plain racing accesses would be undefined behaviour).
 */
#ifndef CHUNKD_SHM_ATOMICS_H
#define CHUNKD_SHM_ATOMICS_H

#include <stddef.h>
#include <stdint.h>

#define chunkd__load_relaxed(p) __atomic_load_n((p), __ATOMIC_RELAXED)
#define chunkd__load_acquire(p) __atomic_load_n((p), __ATOMIC_ACQUIRE)
#define chunkd__load_seq_cst(p) __atomic_load_n((p), __ATOMIC_SEQ_CST)
#define chunkd__store_relaxed(p, v) __atomic_store_n((p), (v), __ATOMIC_RELAXED)
#define chunkd__store_release(p, v) __atomic_store_n((p), (v), __ATOMIC_RELEASE)
#define chunkd__store_seq_cst(p, v) __atomic_store_n((p), (v), __ATOMIC_SEQ_CST)
#define chunkd__fetch_add(p, v, mo) __atomic_fetch_add((p), (v), (mo))
#define chunkd__exchange_seq_cst(p, v) __atomic_exchange_n((p), (v), __ATOMIC_SEQ_CST)
#define chunkd__fence_acquire() __atomic_thread_fence(__ATOMIC_ACQUIRE)
#define chunkd__fence_release() __atomic_thread_fence(__ATOMIC_RELEASE)
#define chunkd__fence_seq_cst() __atomic_thread_fence(__ATOMIC_SEQ_CST)

/* Compare-and-swap with seq_cst on success and relaxed on failure; *expected is updated. */
#define chunkd__cas_seq_cst(p, expected, desired)                                                 \
	__atomic_compare_exchange_n((p), (expected), (desired), 0, __ATOMIC_SEQ_CST,               \
				    __ATOMIC_RELAXED)

/* Four-word ids (chunk id, dataset id) as they live in shared memory. */
static inline void chunkd__load_id_relaxed(uint64_t dst[4], const uint64_t src[4])
{
	for (int i = 0; i < 4; i++)
		dst[i] = chunkd__load_relaxed(&src[i]);
}

static inline void chunkd__store_id_relaxed(uint64_t dst[4], const uint64_t src[4])
{
	for (int i = 0; i < 4; i++)
		chunkd__store_relaxed(&dst[i], src[i]);
}

/* Copy n 64-bit words into shared memory with relaxed stores (bulk writes inside a seqlock). */
static inline void chunkd__copy_out_relaxed(uint64_t *dst, const uint64_t *src, size_t n)
{
	for (size_t i = 0; i < n; i++)
		chunkd__store_relaxed(&dst[i], src[i]);
}

#endif
