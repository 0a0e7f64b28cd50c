/*
 * common.c — see common.h.
 */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

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

pid_t bench_spawn(char *const argv[], const char *log)
{
	pid_t parent = getpid();
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		/* The check after prctl closes the race with a parent that died before it. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		int in = open("/dev/null", O_RDONLY | O_CLOEXEC);
		if (in >= 0)
			dup2(in, STDIN_FILENO);
		if (log) {
			int fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
			if (fd < 0)
				_exit(127);
			dup2(fd, STDOUT_FILENO);
			dup2(fd, STDERR_FILENO);
		}
		execvp(argv[0], argv);
		fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	return pid;
}

int bench_wait_child(pid_t pid, double *cpu_s, long *maxrss_kib)
{
	int st;
	struct rusage ru;
	pid_t r;
	while ((r = wait4(pid, &st, 0, &ru)) < 0 && errno == EINTR)
		;
	if (r < 0)
		return -errno;
	if (cpu_s)
		*cpu_s = (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
			 (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
	if (maxrss_kib)
		*maxrss_kib = ru.ru_maxrss;
	if (WIFEXITED(st))
		return WEXITSTATUS(st);
	return 128 + WTERMSIG(st);
}

int bench_run(char *const argv[], const char *log, double *cpu_s, long *maxrss_kib)
{
	pid_t pid = bench_spawn(argv, log);
	if (pid < 0)
		return pid;
	return bench_wait_child(pid, cpu_s, maxrss_kib);
}

static int rm_one(const char *path, const struct stat *sb, int type, struct FTW *ftw)
{
	if (remove(path) < 0 && errno != ENOENT)
		return -errno;
	return 0;
}

int bench_rm_rf(const char *path)
{
	struct stat sb;
	if (lstat(path, &sb) < 0)
		return errno == ENOENT ? 0 : -errno;
	/* Depth first (FTW_DEPTH), without following links (FTW_PHYS). */
	int r = nftw(path, rm_one, 64, FTW_DEPTH | FTW_PHYS);
	return r < 0 ? -errno : r;
}

double bench_proc_cpu_s(pid_t pid)
{
	char path[64], buf[2048];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = '\0';
	/* The command name may hold spaces and parentheses: fields start after the last ')'. */
	char *p = strrchr(buf, ')');
	if (!p)
		return -1;
	unsigned long long utime, stime;
	/* After ") ": state(3) ppid pgrp session tty_nr tpgid flags minflt cminflt majflt
	 * cmajflt utime(14) stime(15). */
	if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &utime,
		   &stime) != 2)
		return -1;
	return (double)(utime + stime) / (double)sysconf(_SC_CLK_TCK);
}

long bench_proc_status_kib(pid_t pid, const char *key)
{
	char path[64], line[256];
	size_t klen = strlen(key);
	long v = -1;
	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (!strncmp(line, key, klen) && line[klen] == ':') {
			v = strtol(line + klen + 1, NULL, 10);
			break;
		}
	}
	fclose(f);
	return v;
}

void bench_remove_instance(const char *name)
{
	static const char *const sfx[] = {"cat", "req", "lock"};
	char obj[128];
	for (int i = 0; i < 3; i++) {
		snprintf(obj, sizeof(obj), "/chunkd.%s.%s", name, sfx[i]);
		shm_unlink(obj);
	}
}

void bench_loadavg(char *out, size_t len)
{
	double l[3];
	if (getloadavg(l, 3) == 3)
		snprintf(out, len, "%.2f %.2f %.2f", l[0], l[1], l[2]);
	else
		snprintf(out, len, "unknown");
}

int bench_mkdtemp(const char *dir, const char *prefix, char *out, size_t len)
{
	if ((size_t)snprintf(out, len, "%s/%sXXXXXX", dir, prefix) >= len)
		return -ENAMETOOLONG;
	return mkdtemp(out) ? 0 : -errno;
}

const char *bench_fmt_bytes(double bytes, char *out, size_t len)
{
	if (bytes >= 1e9)
		snprintf(out, len, "%.2f GB", bytes / 1e9);
	else if (bytes >= 1e6)
		snprintf(out, len, "%.1f MB", bytes / 1e6);
	else if (bytes >= 1e3)
		snprintf(out, len, "%.1f kB", bytes / 1e3);
	else
		snprintf(out, len, "%.0f B", bytes);
	return out;
}

static int cmp_double_asc(const void *pa, const void *pb)
{
	double a = *(const double *)pa, b = *(const double *)pb;
	return a < b ? -1 : a > b;
}

void bench_sort(double *v, size_t n)
{
	qsort(v, n, sizeof(*v), cmp_double_asc);
}

double bench_percentile(const double *sorted, size_t n, double p)
{
	/* Nearest rank: ceil(p/100 * n), 1-based. */
	size_t rank = (size_t)((p / 100.0) * (double)n);
	if ((double)rank < (p / 100.0) * (double)n)
		rank++;
	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return sorted[rank - 1];
}

void bench_show_log(const char *what, const char *log, int lines)
{
	char n[16];
	snprintf(n, sizeof(n), "%d", lines);
	char *argv[] = {"tail", "-n", n, (char *)log, NULL};
	fprintf(stderr, "%s (%s):\n", what, log);
	fflush(stderr);
	bench_run(argv, NULL, NULL, NULL);
}

/* Wait between two READY polls, giving up as soon as the daemon exits. */
static int idle_daemon(void *arg, uint64_t ns)
{
	struct bench_daemon *d = arg;
	struct pollfd p = {.fd = d->pidfd, .events = POLLIN};
	int ms = (int)(ns / 1000000u);
	if (poll(&p, 1, ms ? ms : 1) > 0)
		return -ECHILD;
	return 0;
}

int bench_daemon_start(struct bench_daemon *d, char *const argv[], const char *log,
		       const char *name, uint64_t wait_ms, chunkd_client **c)
{
	d->log = log;
	d->pidfd = -1;
	bench_remove_instance(name);
	d->pid = bench_spawn(argv, log);
	if (d->pid < 0)
		return d->pid;
	d->pidfd = (int)syscall(SYS_pidfd_open, d->pid, 0);
	int r = d->pidfd < 0 ? -errno : 0;
	if (r == 0)
		r = bench_wait_ready(name, 1000000, bench_now_ns() + wait_ms * 1000000ull, c, NULL,
				     idle_daemon, d);
	if (r < 0) {
		kill(d->pid, SIGKILL);
		bench_wait_child(d->pid, NULL, NULL);
		d->pid = 0;
		if (d->pidfd >= 0)
			close(d->pidfd);
		d->pidfd = -1;
		bench_show_log("the daemon's log", log, 30);
	}
	return r;
}

int bench_daemon_stop(struct bench_daemon *d, uint64_t wait_ms)
{
	if (d->pid <= 0)
		return 0;
	int r = 0;
	kill(d->pid, SIGTERM);
	struct pollfd p = {.fd = d->pidfd, .events = POLLIN};
	if (poll(&p, 1, (int)wait_ms) <= 0) {
		fprintf(stderr, "the daemon (pid %d) did not exit within %llu ms of SIGTERM\n",
			(int)d->pid, (unsigned long long)wait_ms);
		kill(d->pid, SIGKILL);
		r = -ETIMEDOUT;
	}
	int st = bench_wait_child(d->pid, NULL, NULL);
	if (r == 0)
		r = st;
	d->pid = 0;
	close(d->pidfd);
	d->pidfd = -1;
	if (r != 0)
		bench_show_log("the daemon's log", d->log, 30);
	return r;
}

int bench_parse_num(const char *opt, const char *s, uint64_t min, uint64_t max, uint64_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || v < min || v > max) {
		fprintf(stderr, "%s: %s: '%s' is not a number in [%llu, %llu]\n",
			program_invocation_short_name, opt, s, (unsigned long long)min,
			(unsigned long long)max);
		return -1;
	}
	*out = v;
	return 0;
}
