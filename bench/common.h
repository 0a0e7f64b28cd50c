/*
 * common.h — helpers shared by the benchmarks: clocks, medians, waiting for a daemon to become
 * ready, and the result rows that bench/run.sh collects into one table.
 */
#ifndef CHUNKD_BENCH_COMMON_H
#define CHUNKD_BENCH_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "chunkd.h"

/* CLOCK_MONOTONIC in nanoseconds. */
uint64_t bench_now_ns(void);

/* Parse a decimal option value in [min, max] into *out; on error print "PROG: OPT: 'S' is not a
 * number in [MIN, MAX]" to stderr and return -1. */
int bench_parse_num(const char *opt, const char *s, uint64_t min, uint64_t max, uint64_t *out);

/* Median of n values (n >= 1); v is reordered (sorted). For an even n, the mean of the middle
 * two. */
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


/* ---- processes, files and /proc (bench-download, bench-request, bench-start) ----------------- */

/*
 * bench_spawn — start argv[0] (searched in $PATH when it has no '/') with stdin from /dev/null
 * and stdout and stderr appended to `log` (NULL: inherited). The child gets SIGKILL when this
 * process dies (PR_SET_PDEATHSIG), so that no tool outlives an aborted benchmark.
 * @return  the child's pid, or a negative errno.
 */
pid_t bench_spawn(char *const argv[], const char *log);

/*
 * bench_wait_child — wait for child `pid` to exit.
 * @cpu_s   if not NULL, receives the child's user + system CPU seconds (wait4's rusage).
 * @maxrss  if not NULL, receives its peak resident set in KiB (ru_maxrss).
 * @return  the exit status (0-255), 128 + the signal that killed it, or a negative errno.
 */
int bench_wait_child(pid_t pid, double *cpu_s, long *maxrss_kib);

/* bench_run — bench_spawn + bench_wait_child; the same return values. */
int bench_run(char *const argv[], const char *log, double *cpu_s, long *maxrss_kib);

/* bench_rm_rf — remove `path` and everything below it (no-op if missing); 0 or a negative errno.
 * Does not follow symbolic links. */
int bench_rm_rf(const char *path);

/* bench_proc_cpu_s — user + system CPU seconds of process pid so far, all its threads (fields
 * utime and stime of /proc/PID/stat, in clock ticks); -1 if it cannot be read. */
double bench_proc_cpu_s(pid_t pid);

/* bench_proc_status_kib — the value in KiB of line `key` (e.g. "VmHWM") of /proc/PID/status;
 * -1 if missing. */
long bench_proc_status_kib(pid_t pid, const char *key);

/* bench_remove_instance — remove the shared-memory objects /dev/shm/chunkd.NAME.{cat,req,lock} */
void bench_remove_instance(const char *name);

/* bench_loadavg — the 1, 5 and 15-minute load averages as "a b c" into out. */
void bench_loadavg(char *out, size_t len);

/* bench_mkdtemp — create a fresh directory "<dir>/<prefix>XXXXXX" into out (len bytes);
 * 0 or a negative errno. */
int bench_mkdtemp(const char *dir, const char *prefix, char *out, size_t len);

/* bench_percentile — the p-th percentile (0 < p <= 100) of n sorted values: the smallest value
 * with at least p % of the values at or below it. */
double bench_percentile(const double *sorted, size_t n, double p);

/* bench_sort — sort n values in place, ascending. */
void bench_sort(double *v, size_t n);

/*
 * A chunkd daemon started by a benchmark (bench-download, bench-request): its pid, a pidfd to
 * notice its exit, and the log file its stdout and stderr go to.
 */
struct bench_daemon {
	pid_t pid;
	int pidfd;
	const char *log;
};

/*
 * bench_daemon_start — spawn argv (chunkd and its options, --name name among them) with its
 * output appended to `log`, wait up to wait_ms for the instance to report READY and attach.
 * @c       receives the open handle; the caller closes it.
 * @return  0; -ECHILD the daemon exited first; -ETIMEDOUT; another negative errno. On failure
 *          the daemon is killed and reaped, and the tail of its log is printed on stderr.
 */
int bench_daemon_start(struct bench_daemon *d, char *const argv[], const char *log,
		       const char *name, uint64_t wait_ms, chunkd_client **c);

/*
 * bench_daemon_stop — SIGTERM, then wait up to wait_ms for the exit (SIGKILL after that).
 * @return  the exit status (0 is a clean stop), 128 + signal, or a negative errno. A non-zero
 *          result prints the tail of the log on stderr. Safe on a daemon already stopped.
 */
int bench_daemon_stop(struct bench_daemon *d, uint64_t wait_ms);

/* bench_show_log — the last `lines` lines of file `log` on stderr, under a heading. */
void bench_show_log(const char *what, const char *log, int lines);

/* bench_fmt_bytes — "800.0 MB" (decimal units) into out. */
const char *bench_fmt_bytes(double bytes, char *out, size_t len);

#endif
