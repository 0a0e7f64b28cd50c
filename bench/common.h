/*
 * common.h — helpers shared by the benchmarks: clocks, medians, waiting for a daemon to become
 * ready, and the result rows that bench/run.sh collects into one table.
 */
#ifndef CHUNKD_BENCH_COMMON_H
#define CHUNKD_BENCH_COMMON_H

#include <stddef.h>
#include <stdint.h>

#include "chunkd.h"

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t bench_now_ns(void);

/* Median of n values (n >= 1); v is reordered. For an even n, the mean of the middle two. */
double bench_median(double *v, size_t n);

/* Smallest and largest of n values (n >= 1). */
double bench_min(const double *v, size_t n);
double bench_max(const double *v, size_t n);

/*
 * Called between two polls of bench_wait_ready(): wait for at most `ns` nanoseconds (for example
 * in ppoll() on a pipe to drain, or a plain nanosleep) and return 0, or a negative errno to give
 * up (for example because the daemon being waited for has exited).
 */
typedef int (*bench_idle_fn)(void *arg, uint64_t ns);

/*
 * bench_wait_ready — attach to instance `name` and wait until its daemon reports
 * CHUNKD_STATE_READY, polling every `poll_ns` nanoseconds until `deadline_ns` (CLOCK_MONOTONIC).
 * A poll costs a few system calls (chunkd_info() reads /proc), so a short interval takes CPU
 * from the daemon being timed.
 * @out     receives the open handle; the caller closes it.
 * @info    receives the chunkd_info() that showed READY (may be NULL).
 * @idle    how to wait between polls (NULL: nanosleep); may abort the wait.
 * @return  0; -ETIMEDOUT; the idle function's error; or chunkd_open()'s error other than
 *          -ENOENT and -EAGAIN (which mean "not created yet" and are retried) and other than a
 *          -EPROTO lasting less than a second (a segment caught between sizing and header).
 */
int bench_wait_ready(const char *name, uint64_t poll_ns, uint64_t deadline_ns, chunkd_client **out,
		     chunkd_instance_info *info, bench_idle_fn idle, void *arg);

/* How many times bench_wait_ready() retried a transient -EPROTO (see above), in all. */
extern unsigned bench_eproto_retries;

/*
 * bench_row — print one result row for bench/run.sh's summary table, tab-separated after the
 * "ROW" tag: benchmark, what was measured, value, ratio (or "-"), target (or "-"), status
 * (PASS, MISS or "-"). Humans read the text printed around it; run.sh greps "^ROW\t".
 */
void bench_row(const char *bench, const char *what, const char *value, const char *ratio,
	       const char *target, const char *status);

#endif
