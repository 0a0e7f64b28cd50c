/*
 * start.c — bench-start: how long a chunkd daemon takes from exec to READY on a data dir.
 *
 * Each run removes the instance's shared-memory objects (so the daemon creates fresh segments,
 * as on a host's first start), forks and execs chunkd with its stderr on a pipe, and polls the
 * instance through the public API (chunkd_open + chunkd_info, every --poll-us and whenever the
 * daemon writes to the pipe) until the daemon reports CHUNKD_STATE_READY. The time from just before
 * fork() to that observation is the external figure; the daemon's own figure is the "in N ms" of
 * its "ready: ..." log line (measured from after option parsing, so without exec and dynamic
 * loading). Then SIGTERM, and the daemon must exit with status 0 within a deadline.
 *
 * The first run finds the page cache as it is (warm if the data was just generated or used); the
 * following runs are warm by construction, and their median is checked against the target.
 *
 * With --journal FILE, a request journal (made by bench-journal-gen) is installed as
 * DIR/journal before every run (copied, fdatasynced and renamed into place, untimed), so every
 * start replays the same records. The daemon's "journal: replayed N records (M live) in X ms"
 * line gives the replay rate, N / X, checked against its own target.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "chunkd.h"
#include "common.h"

static const char usage[] =
    "Usage: bench-start --data-dir DIR [OPTION]... [-- CHUNKD-OPTION...]\n"
    "Measure the time from exec of chunkd to state READY on DIR, several times.\n"
    "\n"
    "  -d, --data-dir DIR        the data dir to start on (required)\n"
    "  -c, --chunkd PATH         the daemon binary (default: chunkd next to this program)\n"
    "  -n, --name NAME           instance name (default: bench-start-PID); its shared-memory\n"
    "                            objects are removed before and after every run\n"
    "  -r, --runs N              starts in all (default 5); the first finds the page cache as\n"
    "                            it is, the median of the others is the warm figure\n"
    "  -m, --max-chunks N        passed to chunkd (default 131072)\n"
    "  -e, --expect-chunks N     fail unless the daemon publishes exactly N chunks\n"
    "  -w, --wait-ms MS          deadline per start and per stop (default 300000; a cold\n"
    "                            page cache can make the first start take a minute)\n"
    "  -T, --target-ms MS        target for the warm median (default 1000)\n"
    "  -p, --poll-us US          interval between two chunkd_info() polls (default 1000); the\n"
    "                            daemon's log line wakes the poller at once\n"
    "  -j, --journal FILE        install FILE as DIR/journal before every run (a copy; FILE\n"
    "                            stays untouched) and report the daemon's replay rate\n"
    "      --target-rate N       target for the replay rate, records/s (default 1000000)\n"
    "      --strict              exit 1 when the target is missed\n"
    "  -h, --help                show this help and exit\n"
    "\n"
    "Options after \"--\" are passed to chunkd. Result rows are also printed as \"ROW<TAB>...\"\n"
    "lines for bench/run.sh.\n"
    "Exit status: 0 done (target missed too, unless --strict), 1 target missed with --strict,\n"
    "2 bad usage, 3 a start or stop failed (the daemon's log is shown).\n";

#define die(...)                                              \
	do {                                                  \
		fprintf(stderr, "bench-start: " __VA_ARGS__); \
		fputc('\n', stderr);                          \
		exit(3);                                      \
	} while (0)

#define LOG_CAP (1u << 20)

/* One daemon being started: its pid, pidfd and stderr pipe, and what it logged so far. */
struct daemon {
	pid_t pid;
	int pidfd;
	int errfd;
	int exited;
	int eof; /* the pipe reached end of file: stop polling it */
	char *log;
	size_t nlog;
};

static void drain(struct daemon *d)
{
	char buf[4096];
	for (;;) {
		ssize_t n = read(d->errfd, buf, sizeof(buf));
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
			d->eof = 1;
		if (n <= 0)
			return;
		size_t k = (size_t)n;
		if (k > LOG_CAP - 1 - d->nlog)
			k = LOG_CAP - 1 - d->nlog; /* keep the beginning, which holds "ready:" */
		memcpy(d->log + d->nlog, buf, k);
		d->nlog += k;
		d->log[d->nlog] = '\0';
	}
}

/* Wait up to ns for the daemon's pipe or exit, draining the pipe; -ECHILD once it has exited. */
static int idle_daemon(void *arg, uint64_t ns)
{
	struct daemon *d = arg;
	struct pollfd p[2] = {{.fd = d->eof ? -1 : d->errfd, .events = POLLIN},
			      {.fd = d->pidfd, .events = POLLIN}};
	struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000u),
			      .tv_nsec = (long)(ns % 1000000000u)};
	int n = ppoll(p, 2, &ts, NULL);
	if (n < 0 && errno != EINTR)
		return -errno;
	if (p[0].revents)
		drain(d);
	if (p[1].revents & POLLIN) {
		drain(d);
		d->exited = 1;
		return -ECHILD;
	}
	return 0;
}

/* The "ready: ..." line's "in N ms", or -1 if the line is not there (yet). */
static double ready_ms(const struct daemon *d)
{
	const char *p = strstr(d->log, "info: ready: ");
	if (!p)
		return -1;
	const char *eol = strchr(p, '\n');
	if (!eol)
		return -1;
	const char *in = NULL;
	for (const char *q = p; (q = strstr(q, " in ")) && q < eol; q++)
		in = q;
	if (!in)
		return -1;
	return strtod(in + 4, NULL);
}

/* The daemon of the run in progress and its instance, for the exit handler. */
static pid_t live_pid;
static const char *live_name;

static void remove_objects(const char *name)
{
	static const char *const sfx[] = {"cat", "req", "lock"};
	char obj[128];
	for (int i = 0; i < 3; i++) {
		snprintf(obj, sizeof(obj), "/chunkd.%s.%s", name, sfx[i]);
		shm_unlink(obj);
	}
}

/* At any exit: no daemon of ours stays running, and its shared-memory objects go. */
static void cleanup_at_exit(void)
{
	if (live_pid > 0) {
		kill(live_pid, SIGKILL);
		waitpid(live_pid, NULL, 0);
		live_pid = 0;
	}
	if (live_name)
		remove_objects(live_name);
}

static void show_log_and_die(struct daemon *d, const char *what)
{
	drain(d);
	fprintf(stderr, "bench-start: %s; the daemon's log:\n%s", what, d->log);
	exit(3);
}

struct run {
	double ext_ms;    /* fork/exec to READY seen through chunkd_info() */
	double daemon_ms; /* the daemon's "ready: ... in N ms" */
	uint32_t nchunks;
	unsigned long long replayed, live; /* the daemon's "journal: replayed N records (M live)" */
	double replay_ms;                  /* ... "in X ms"; -1 without that line */
};

/* The "journal: replayed N records (M live) in X ms" line; 0 if found, else -1. */
static int replay_line(const struct daemon *d, struct run *out)
{
	const char *p = strstr(d->log, "journal: replayed ");
	if (!p || sscanf(p, "journal: replayed %llu records (%llu live) in %lf ms", &out->replayed,
			 &out->live, &out->replay_ms) != 3)
		return -1;
	return 0;
}

/* Install `src` as DIR/journal: copy to a temporary name, fdatasync, rename over the journal.
 * A rename, not a write in place: DIR/journal may be a hard link shared with another data dir. */
static void install_journal(const char *data_dir, const char *src)
{
	char tmp[PATH_MAX], dst[PATH_MAX], old[PATH_MAX];
	snprintf(tmp, sizeof(tmp), "%s/journal.bench-install", data_dir);
	snprintf(dst, sizeof(dst), "%s/journal", data_dir);
	snprintf(old, sizeof(old), "%s/journal.tmp", data_dir);
	int in = open(src, O_RDONLY | O_CLOEXEC);
	if (in < 0)
		die("%s: %s", src, strerror(errno));
	unlink(tmp);
	int out = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
	if (out < 0)
		die("%s: %s", tmp, strerror(errno));
	for (;;) {
		ssize_t n = copy_file_range(in, NULL, out, NULL, 1 << 30, 0);
		if (n < 0)
			die("copy %s to %s: %s", src, tmp, strerror(errno));
		if (n == 0)
			break;
	}
	if (fdatasync(out) < 0 || close(out) < 0)
		die("%s: %s", tmp, strerror(errno));
	close(in);
	if (rename(tmp, dst) < 0)
		die("rename %s %s: %s", tmp, dst, strerror(errno));
	unlink(old); /* a compaction's leftover: the daemon would remove it, untimed here */
}

static void one_run(char *const *argv, const char *name, uint64_t poll_us, uint64_t wait_ms,
		    uint64_t expect, const char *journal, struct run *out)
{
	struct daemon d;
	memset(&d, 0, sizeof(d));
	d.log = malloc(LOG_CAP);
	if (!d.log)
		die("out of memory");
	d.log[0] = '\0';
	int p[2];
	remove_objects(name);
	if (pipe2(p, O_CLOEXEC) < 0)
		die("pipe2: %s", strerror(errno));

	uint64_t t0 = bench_now_ns();
	d.pid = fork();
	if (d.pid < 0)
		die("fork: %s", strerror(errno));
	live_pid = d.pid;
	if (d.pid == 0) {
		dup2(p[1], STDERR_FILENO);
		execv(argv[0], argv);
		fprintf(stderr, "exec %s: %s\n", argv[0], strerror(errno));
		_exit(127);
	}
	close(p[1]);
	d.errfd = p[0];
	fcntl(d.errfd, F_SETFL, O_NONBLOCK);
	d.pidfd = (int)syscall(SYS_pidfd_open, d.pid, 0);
	if (d.pidfd < 0)
		die("pidfd_open: %s", strerror(errno));

	chunkd_client *c;
	chunkd_instance_info info;
	int r = bench_wait_ready(name, poll_us * 1000, t0 + wait_ms * 1000000ull, &c, &info,
				 idle_daemon, &d);
	uint64_t t1 = bench_now_ns();
	if (r < 0) {
		char why[128];
		snprintf(why, sizeof(why), "the daemon did not become READY: %s",
			 r == -ECHILD ? "it exited" : chunkd_strerror(r));
		show_log_and_die(&d, why);
	}
	if (info.daemon_pid != d.pid)
		show_log_and_die(&d, "READY was reported by another daemon process");
	if (expect && info.nchunks != expect) {
		char why[128];
		snprintf(why, sizeof(why), "the daemon published %u chunks, expected %llu",
			 info.nchunks, (unsigned long long)expect);
		show_log_and_die(&d, why);
	}
	/* The log line follows the READY store; wait for it with the same deadline. */
	uint64_t deadline = t1 + wait_ms * 1000000ull;
	while (ready_ms(&d) < 0 && !d.exited && bench_now_ns() < deadline)
		idle_daemon(&d, 1000000);
	out->daemon_ms = ready_ms(&d);
	if (out->daemon_ms < 0)
		show_log_and_die(&d, "no \"ready: ... in N ms\" line in the daemon's log");
	out->ext_ms = (double)(t1 - t0) / 1e6;
	out->nchunks = info.nchunks;
	out->replay_ms = -1;
	if (replay_line(&d, out) < 0 && journal)
		show_log_and_die(&d, "no \"journal: replayed N records (M live) in X ms\" line in "
				     "the daemon's log");
	chunkd_close(c);

	if (kill(d.pid, SIGTERM) < 0)
		die("kill: %s", strerror(errno));
	deadline = bench_now_ns() + wait_ms * 1000000ull;
	while (!d.exited && bench_now_ns() < deadline)
		idle_daemon(&d, 10000000);
	if (!d.exited)
		show_log_and_die(&d, "the daemon did not exit after SIGTERM");
	int st;
	if (waitpid(d.pid, &st, 0) != d.pid)
		die("waitpid: %s", strerror(errno));
	live_pid = 0;
	drain(&d);
	if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
		show_log_and_die(&d, "the daemon did not exit with status 0 after SIGTERM");
	close(d.pidfd);
	close(d.errfd);
	free(d.log);
	remove_objects(name);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"data-dir", required_argument, NULL, 'd'},
	    {"chunkd", required_argument, NULL, 'c'},
	    {"name", required_argument, NULL, 'n'},
	    {"runs", required_argument, NULL, 'r'},
	    {"max-chunks", required_argument, NULL, 'm'},
	    {"expect-chunks", required_argument, NULL, 'e'},
	    {"wait-ms", required_argument, NULL, 'w'},
	    {"target-ms", required_argument, NULL, 'T'},
	    {"poll-us", required_argument, NULL, 'p'},
	    {"journal", required_argument, NULL, 'j'},
	    {"target-rate", required_argument, NULL, 'R'},
	    {"strict", no_argument, NULL, 'S'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *data_dir = NULL, *chunkd = NULL, *name = NULL, *journal = NULL;
	uint64_t target_rate = 1000000;
	uint64_t runs = 5, max_chunks = 131072, expect = 0, wait_ms = 300000, target_ms = 1000;
	uint64_t poll_us = 1000;
	int strict = 0, c;
	char defname[64], defbin[PATH_MAX + 16];

	while ((c = getopt_long(argc, argv, "d:c:n:r:m:e:w:T:p:j:h", opts, NULL)) != -1) {
		switch (c) {
		case 'd':
			data_dir = optarg;
			break;
		case 'c':
			chunkd = optarg;
			break;
		case 'n':
			name = optarg;
			break;
		case 'r':
			if (bench_parse_num("--runs", optarg, 1, 1000, &runs))
				return 2;
			break;
		case 'm':
			if (bench_parse_num("--max-chunks", optarg, 1, UINT32_MAX, &max_chunks))
				return 2;
			break;
		case 'e':
			if (bench_parse_num("--expect-chunks", optarg, 0, UINT32_MAX, &expect))
				return 2;
			break;
		case 'w':
			if (bench_parse_num("--wait-ms", optarg, 1, 86400000, &wait_ms))
				return 2;
			break;
		case 'T':
			if (bench_parse_num("--target-ms", optarg, 1, 86400000, &target_ms))
				return 2;
			break;
		case 'p':
			if (bench_parse_num("--poll-us", optarg, 1, 1000000, &poll_us))
				return 2;
			break;
		case 'j':
			journal = optarg;
			break;
		case 'R':
			if (bench_parse_num("--target-rate", optarg, 1, UINT32_MAX, &target_rate))
				return 2;
			break;
		case 'S':
			strict = 1;
			break;
		case 'h':
			fputs(usage, stdout);
			return 0;
		default:
			fputs("Try 'bench-start --help'.\n", stderr);
			return 2;
		}
	}
	if (!data_dir) {
		fputs("bench-start: --data-dir is required\nTry 'bench-start --help'.\n", stderr);
		return 2;
	}
	if (!name) {
		snprintf(defname, sizeof(defname), "bench-start-%d", (int)getpid());
		name = defname;
	}
	if (!chunkd) {
		char self[PATH_MAX];
		ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
		if (n < 0)
			die("/proc/self/exe: %s", strerror(errno));
		self[n] = '\0';
		char *slash = strrchr(self, '/');
		if (slash)
			*slash = '\0';
		snprintf(defbin, sizeof(defbin), "%s/chunkd", self);
		chunkd = defbin;
	}

	live_name = name;
	atexit(cleanup_at_exit);

	/* chunkd --data-dir DIR --name NAME --max-chunks N [options after --] */
	char mc[32];
	snprintf(mc, sizeof(mc), "%llu", (unsigned long long)max_chunks);
	int nextra = argc - optind;
	char **av = calloc((size_t)nextra + 8, sizeof(*av));
	if (!av)
		die("out of memory");
	int k = 0;
	av[k++] = (char *)chunkd;
	av[k++] = "--data-dir";
	av[k++] = (char *)data_dir;
	av[k++] = "--name";
	av[k++] = (char *)name;
	av[k++] = "--max-chunks";
	av[k++] = mc;
	for (int i = 0; i < nextra; i++)
		av[k++] = argv[optind + i];
	av[k] = NULL;

	printf("bench-start: %s on %s, %llu runs\n", chunkd, data_dir, (unsigned long long)runs);
	if (journal)
		printf("journal: %s, installed as %s/journal before every run (untimed)\n", journal,
		       data_dir);
	printf("%-5s %-22s %12s %12s %9s", "run", "page cache", "exec->READY", "daemon log",
	       "chunks");
	if (journal)
		printf(" %10s %10s %12s", "replayed", "replay", "records/s");
	printf("\n");
	fflush(stdout);
	struct run *rs = calloc(runs, sizeof(*rs));
	double *ext = calloc(runs, sizeof(double)), *dms = calloc(runs, sizeof(double));
	double *rate = calloc(runs, sizeof(double)), *rms = calloc(runs, sizeof(double));
	if (!rs || !ext || !dms || !rate || !rms)
		die("out of memory");
	for (uint64_t i = 0; i < runs; i++) {
		if (journal)
			install_journal(data_dir, journal);
		one_run(av, name, poll_us, wait_ms, expect, journal, &rs[i]);
		printf("%-5llu %-22s %9.1f ms %9.0f ms %9u", (unsigned long long)i + 1,
		       i == 0 ? "as found (first run)" : "warm", rs[i].ext_ms, rs[i].daemon_ms,
		       rs[i].nchunks);
		if (journal)
			printf(" %10llu %7.1f ms %12.0f", rs[i].replayed, rs[i].replay_ms,
			       (double)rs[i].replayed / (rs[i].replay_ms / 1e3));
		printf("\n");
		fflush(stdout);
	}

	/* The warm runs are all but the first, unless there is only one. */
	size_t w0 = runs > 1 ? 1 : 0, nw = runs - w0;
	for (size_t i = 0; i < nw; i++) {
		ext[i] = rs[w0 + i].ext_ms;
		dms[i] = rs[w0 + i].daemon_ms;
		rms[i] = rs[w0 + i].replay_ms;
		rate[i] = (double)rs[w0 + i].replayed / (rs[w0 + i].replay_ms / 1e3);
	}
	double lo = bench_min(ext, nw), hi = bench_max(ext, nw);
	double med = bench_median(ext, nw), dmed = bench_median(dms, nw);
	int pass = med <= (double)target_ms;
	const char *bench = journal ? "start-journal" : "start";
	char with[96] = "";
	if (journal)
		snprintf(with, sizeof(with), " + journal of %llu records", rs[0].replayed);
	printf("\nstart: %u chunks%s -> ready: %.1f ms (warm, median of %zu; min %.1f, max %.1f; "
	       "daemon's own figure %.0f ms), target <= %llu ms: %s\n",
	       rs[0].nchunks, with, med, nw, lo, hi, dmed, (unsigned long long)target_ms,
	       pass ? "PASS" : "MISS");
	int pass_rate = 1;
	double rmed = 0, rlo = 0, rhi = 0, rmsmed = 0;
	if (journal) {
		rlo = bench_min(rate, nw);
		rhi = bench_max(rate, nw);
		rmed = bench_median(rate, nw);
		rmsmed = bench_median(rms, nw);
		pass_rate = rmed >= (double)target_rate;
		printf("journal replay: %llu records (%llu live) in %.1f ms = %.2f M records/s "
		       "(warm, median of %zu; min %.2f, max %.2f), target >= %.2f M/s: %s\n",
		       rs[0].replayed, rs[0].live, rmsmed, rmed / 1e6, nw, rlo / 1e6, rhi / 1e6,
		       (double)target_rate / 1e6, pass_rate ? "PASS" : "MISS");
	}

	if (bench_eproto_retries)
		printf(
		    "note: chunkd_open() returned -EPROTO %u times while a daemon was creating its "
		    "segments (magic still 0); retried. See bench/README.md.\n",
		    bench_eproto_retries);

	char what[192], v[192], t[64];
	snprintf(what, sizeof(what), "%s: %u chunks%s -> READY, exec to READY, warm", bench,
		 rs[0].nchunks, with);
	snprintf(v, sizeof(v), "%.1f ms (median of %zu; min %.1f, max %.1f)", med, nw, lo, hi);
	snprintf(t, sizeof(t), "<= %llu ms", (unsigned long long)target_ms);
	bench_row(bench, what, v, NULL, t, pass ? "PASS" : "MISS");
	snprintf(what, sizeof(what), "%s: the daemon's own \"ready: ... in N ms\", warm", bench);
	snprintf(v, sizeof(v), "%.0f ms (median of %zu)", dmed, nw);
	bench_row(bench, what, v, NULL, NULL, NULL);
	if (journal) {
		snprintf(what, sizeof(what), "%s: replay (daemon's \"journal: replayed ... in X "
			 "ms\"), warm", bench);
		snprintf(v, sizeof(v), "%.2f M records/s: %llu records (%llu live) in %.1f ms "
			 "(median of %zu; min %.2f, max %.2f M/s)", rmed / 1e6, rs[0].replayed,
			 rs[0].live, rmsmed, nw, rlo / 1e6, rhi / 1e6);
		snprintf(t, sizeof(t), ">= %.2f M records/s", (double)target_rate / 1e6);
		bench_row(bench, what, v, NULL, t, pass_rate ? "PASS" : "MISS");
	}
	snprintf(what, sizeof(what), "%s: first run, page cache as found", bench);
	snprintf(v, sizeof(v), "%.1f ms (daemon: %.0f ms)", rs[0].ext_ms, rs[0].daemon_ms);
	bench_row(bench, what, v, NULL, NULL, NULL);
	free(rate);
	free(rms);
	free(rs);
	free(ext);
	free(dms);
	free(av);
	return strict && !(pass && pass_rate) ? 1 : 0;
}
