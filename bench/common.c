/*
 * common.c — see common.h.
 */
#include "common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

unsigned bench_eproto_retries;

uint64_t bench_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_double(const void *pa, const void *pb)
{
	double a = *(const double *)pa, b = *(const double *)pb;
	return a < b ? -1 : a > b;
}

double bench_median(double *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_double);
	return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double bench_min(const double *v, size_t n)
{
	double m = v[0];
	for (size_t i = 1; i < n; i++)
		if (v[i] < m)
			m = v[i];
	return m;
}

double bench_max(const double *v, size_t n)
{
	double m = v[0];
	for (size_t i = 1; i < n; i++)
		if (v[i] > m)
			m = v[i];
	return m;
}

static int idle_sleep(void *arg, uint64_t ns)
{
	struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u),
			      .tv_nsec = (long)(ns % 1000000000u)};
	nanosleep(&ts, NULL);
	return 0;
}

int bench_wait_ready(const char *name, uint64_t poll_ns, uint64_t deadline_ns, chunkd_client **out,
		     chunkd_instance_info *info, bench_idle_fn idle, void *arg)
{
	chunkd_client *c = NULL;
	chunkd_instance_info in;
	int r;

	if (!idle)
		idle = idle_sleep;
	*out = NULL;
	uint64_t eproto_since = 0;
	for (;;) {
		if (!c) {
			r = chunkd_open(name, &c);
			/* A daemon sizes a new segment before it writes the header, so an attach in
			 * that window can read magic 0 and report -EPROTO instead of -EAGAIN. A
			 * real layout mismatch persists: give up on it after a second. */
			if (r == -EPROTO) {
				bench_eproto_retries++;
				if (!eproto_since)
					eproto_since = bench_now_ns();
				else if (bench_now_ns() - eproto_since > 1000000000u)
					return r;
			} else if (r < 0 && r != -ENOENT && r != -EAGAIN) {
				return r;
			}
		}
		if (c && chunkd_info(c, &in) == 0 && in.daemon_alive) {
			if (in.state == CHUNKD_STATE_READY) {
				*out = c;
				if (info)
					*info = in;
				return 0;
			}
		} else if (c) {
			/* A dead daemon's segment: the next daemon replaces the object (unlink and
			 * create), so this mapping would never change. Attach again. */
			chunkd_close(c);
			c = NULL;
		}
		if (bench_now_ns() >= deadline_ns) {
			r = -ETIMEDOUT;
			break;
		}
		r = idle(arg, poll_ns);
		if (r < 0)
			break;
	}
	chunkd_close(c);
	return r;
}

void bench_row(const char *bench, const char *what, const char *value, const char *ratio,
	       const char *target, const char *status)
{
	printf("ROW\t%s\t%s\t%s\t%s\t%s\t%s\n", bench, what, value, ratio ? ratio : "-",
	       target ? target : "-", status ? status : "-");
	fflush(stdout);
}
