/*
 * request.c — bench-request: what chunkd_download() costs the caller, and how long a request
 * takes to reach the daemon and come back, against a request/response of the same bytes over a
 * Unix socket, in one run.
 *
 * Set-up: a daemon of our own on a fresh data dir (nothing else talks to it), and one chunk of 5
 * small files published through it (file:// URLs). The timed requests all use that chunk's
 * descriptor (same id, dataset, range and file names) with realistic http:// URLs (~120 bytes,
 * never fetched: the daemon answers a download of a published identical chunk at once).
 *
 *   enqueue            ns per chunkd_download() call (validate, encode into the shared ring,
 *                      ring the doorbell if the daemon's loop may be blocked), timed over
 *                      batches of --batch calls; between batches (untimed) every ticket is
 *                      waited for, so the ring never fills and every call takes the fast path.
 *                      The daemon works on the requests meanwhile, on the other core.
 *   encode only        chunkd's validation + record encoding into private memory
 *                      (chunkd__check_chunk + chunkd__rec_encode_download): the part of an
 *                      enqueue that is not the shared ring and the doorbell.
 *   Unix socket RTT    a server process on a socketpair(AF_UNIX, SOCK_STREAM): the client
 *                      writes the same encoded record (same length), the server reads it whole
 *                      and writes a 16-byte reply, the client reads the reply. ns per round trip,
 *                      timed like the enqueues, plus its per-request latency distribution; in
 *                      three placements (unpinned; both on one CPU; on two CPUs).
 *   enqueue -> done    per request: chunkd_download() of the published chunk, then
 *                      chunkd_wait() until it returns 0. This is the daemon's whole path for a
 *                      request it can answer at once: doorbell -> waker thread -> eventfd ->
 *                      loop -> intake (decode, validate, journal append) -> group commit of the
 *                      journal (one write + fdatasync through io_uring) -> result posted ->
 *                      futex wake. One request at a time, so each pays a whole commit.
 *   enqueue -> seen    per request: chunkd_download() of a chunk the daemon does not know (a
 *                      fresh id, a file:// URL that does not exist), then spinning on
 *                      chunkd_status() until the chunk is no longer ABSENT: the daemon has
 *                      taken the request out of the ring and published the chunk's slot (QUEUED)
 *                      in the index, before its journal commit. The chunk is then deleted and
 *                      both tickets are waited for (untimed).
 *
 * Target: enqueue >= 10x faster than the Unix-socket round trip, against the cheapest placement
 * of each pass (median of per-pass ratios).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "chunkd.h"
#include "common.h"
#include "shm/records.h"

static const char usage[] =
    "Usage: bench-request [OPTION]... [-- CHUNKD-OPTION...]\n"
    "Measure the cost of chunkd_download() (5 files) against a live daemon of its own, and the\n"
    "request latencies, against a request/response of the same bytes over a Unix socket.\n"
    "\n"
    "  -w, --work DIR        where the daemon's data dir and log go (default: $TMPDIR or /tmp);\n"
    "                        a fresh subdirectory is made and removed at the end\n"
    "  -c, --chunkd PATH     the daemon (default: chunkd next to this program)\n"
    "  -i, --iters N         timed enqueues (and socket round trips) per pass (default 50000)\n"
    "  -b, --batch N         enqueues between two waits (default 256; at most 1024)\n"
    "  -p, --passes N        passes; the table shows the median (default 7)\n"
    "  -l, --latency N       requests per latency measurement (default 2000)\n"
    "      --keep-logs       keep the work directory (the daemon's log)\n"
    "      --strict          exit 1 when the target is missed\n"
    "  -h, --help            show this help and exit\n"
    "\n"
    "Options after \"--\" are passed to chunkd. Result rows are also printed as \"ROW<TAB>...\"\n"
    "lines for bench/run.sh. Target: an enqueue >= 10x faster than the Unix-socket round trip.\n"
    "Exit status: 0 done (target missed too, unless --strict), 1 target missed with --strict,\n"
    "2 bad usage, 3 set-up failed or a request failed.\n";

#define die(...)                                                \
	do {                                                    \
		fprintf(stderr, "bench-request: " __VA_ARGS__); \
		fputc('\n', stderr);                            \
		exit(3);                                        \
	} while (0)

#define NFILES 5

/*
 * The socket baseline in three placements, because a round trip's cost depends on where the two
 * processes run, and in a VM a wake-up of an idle vCPU is expensive: unpinned (where the
 * scheduler puts them, as with a real daemon), both pinned to one CPU (every wake-up is a context
 * switch on that CPU), pinned to two CPUs (every wake-up crosses CPUs).
 */
enum { U_FREE, U_SAME, U_OTHER, U_COUNT };

static const char *const uds_names[U_COUNT] = {
    "Unix socket round trip, unpinned",
    "Unix socket round trip, both pinned to one CPU",
    "Unix socket round trip, pinned to two CPUs",
};

struct uds {
	int fd;
	pid_t pid;
	int cpu_client, cpu_server; /* -1: not pinned */
};

static struct uds udsv[U_COUNT];
static cpu_set_t orig_mask;

static char work[PATH_MAX / 2];
static char inst[64];
static struct bench_daemon daemon_;
static int keep_logs;

static void cleanup_at_exit(void)
{
	for (int u = 0; u < U_COUNT; u++) {
		if (udsv[u].pid > 0) {
			kill(udsv[u].pid, SIGKILL);
			waitpid(udsv[u].pid, NULL, 0);
			udsv[u].pid = 0;
		}
	}
	if (daemon_.pid > 0) {
		kill(daemon_.pid, SIGKILL);
		waitpid(daemon_.pid, NULL, 0);
		daemon_.pid = 0;
	}
	if (inst[0])
		bench_remove_instance(inst);
	if (work[0] && !keep_logs)
		bench_rm_rf(work);
	else if (work[0])
		fprintf(stderr, "bench-request: work directory kept: %s\n", work);
	work[0] = '\0';
}

static void on_signal(int sig)
{
	exit(128 + sig);
}

/* ---- the descriptor -------------------------------------------------------------------------- */

struct desc {
	chunkd_chunk c;
	chunkd_file files[NFILES];
	char names[NFILES][32];
	char urls[NFILES][PATH_MAX + 128];
};

static void hex(const uint8_t *b, size_t n, char *out)
{
	for (size_t i = 0; i < n; i++)
		snprintf(out + 2 * i, 3, "%02x", b[i]);
}

/* A deterministic id from a counter (splitmix64 words). */
static void make_id(uint64_t seed, chunkd_id *id)
{
	for (int w = 0; w < 4; w++) {
		uint64_t z = seed * 4 + (uint64_t)w + 0x9E3779B97F4A7C15ull;
		z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
		z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
		z ^= z >> 31;
		memcpy(id->bytes + 8 * w, &z, 8);
	}
}

/* The chunk: dataset 1, blocks [first, first + 1000), NFILES files named like a real chunk's. */
static void desc_init(struct desc *d, uint64_t idseed, uint64_t first)
{
	memset(d, 0, sizeof(*d));
	make_id(idseed, &d->c.id);
	make_id(1ull << 40, &d->c.dataset);
	d->c.first_block = first;
	d->c.end_block = first + 1000;
	d->c.files = d->files;
	d->c.nfiles = NFILES;
	for (int k = 0; k < NFILES; k++) {
		snprintf(d->names[k], sizeof(d->names[k]), "file%d.parquet", k);
		d->files[k].name = d->names[k];
		d->files[k].url = d->urls[k];
	}
}

/* URLs of the shape a worker would send: an origin, the dataset and id, the file name. */
static void desc_http_urls(struct desc *d)
{
	char ds[65], id[65];
	hex(d->c.dataset.bytes, 32, ds);
	hex(d->c.id.bytes, 32, id);
	for (int k = 0; k < NFILES; k++)
		snprintf(d->urls[k], sizeof(d->urls[k]), "http://10.20.30.40:8080/%.16s/%s/%s", ds,
			 id, d->names[k]);
}

static int wait_ok(chunkd_client *c, uint64_t t, const char *what)
{
	int r = chunkd_wait(c, t, 60000);
	if (r != 0)
		die("%s: chunkd_wait: %s", what, chunkd_strerror(r));
	return r;
}

/* ---- the Unix-socket baseline ---------------------------------------------------------------- */

static int read_full(int fd, void *buf, size_t len)
{
	size_t got = 0;
	while (got < len) {
		ssize_t n = read(fd, (char *)buf + got, len - got);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		got += (size_t)n;
	}
	return 0;
}

static int write_full(int fd, const void *buf, size_t len)
{
	size_t put = 0;
	while (put < len) {
		ssize_t n = write(fd, (const char *)buf + put, len - put);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		put += (size_t)n;
	}
	return 0;
}

/* The server: read one request of len bytes, answer 16 bytes (its ticket and a result), until
 * the client closes the socket. */
static void uds_server(int fd, size_t len)
{
	char *buf = malloc(len);
	uint64_t reply[2] = {0, 0};
	if (!buf)
		_exit(1);
	while (read_full(fd, buf, len) == 0) {
		memcpy(&reply[0], buf + 8, sizeof(reply[0])); /* the record's ticket field */
		reply[1] = 0;
		if (write_full(fd, reply, sizeof(reply)))
			break;
	}
	_exit(0);
}

static void pin(int cpu)
{
	cpu_set_t set;
	CPU_ZERO(&set);
	CPU_SET(cpu, &set);
	if (sched_setaffinity(0, sizeof(set), &set) < 0)
		die("sched_setaffinity(CPU %d): %s", cpu, strerror(errno));
}

static void unpin(void)
{
	sched_setaffinity(0, sizeof(orig_mask), &orig_mask);
}

static void uds_start(struct uds *u, size_t len)
{
	int sv[2];
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair: %s", strerror(errno));
	pid_t parent = getpid();
	u->pid = fork();
	if (u->pid < 0)
		die("fork: %s", strerror(errno));
	if (u->pid == 0) {
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(1);
		close(sv[0]);
		/* The client ends of the servers forked before: the client's close() must be
		 * the last one, or those servers never see the end of their stream. */
		for (int i = 0; i < U_COUNT; i++)
			if (&udsv[i] != u && udsv[i].pid > 0)
				close(udsv[i].fd);
		if (u->cpu_server >= 0)
			pin(u->cpu_server);
		uds_server(sv[1], len);
	}
	close(sv[1]);
	u->fd = sv[0];
}

static void uds_roundtrip(int fd, const void *req, size_t len)
{
	uint64_t reply[2];
	if (write_full(fd, req, len) || read_full(fd, reply, sizeof(reply)))
		die("Unix socket round trip failed: %s", strerror(errno));
}

/* ---- passes ---------------------------------------------------------------------------------- */

/* ns per enqueue over `iters` calls in batches; every ticket is waited for between batches. */
static double pass_enqueue(chunkd_client *c, const struct desc *d, uint64_t iters, uint32_t batch,
			   uint64_t *tickets)
{
	uint64_t timed = 0;
	for (uint64_t done = 0; done < iters;) {
		uint32_t n = iters - done < batch ? (uint32_t)(iters - done) : batch;
		uint64_t t0 = bench_now_ns();
		for (uint32_t i = 0; i < n; i++) {
			int r = chunkd_download(c, &d->c, &tickets[i]);
			if (r != 0)
				die("chunkd_download: %s (the ring should never fill: the batch is "
				    "waited for)", chunkd_strerror(r));
		}
		timed += bench_now_ns() - t0;
		for (uint32_t i = 0; i < n; i++)
			wait_ok(c, tickets[i], "enqueue pass");
		done += n;
	}
	return (double)timed / (double)iters;
}

/* ns per validation + encoding into private memory. */
static double pass_encode(const struct desc *d, uint64_t iters, uint8_t *buf, size_t cap)
{
	uint64_t sum = 0;
	uint64_t t0 = bench_now_ns();
	for (uint64_t i = 0; i < iters; i++) {
		if (chunkd__check_chunk(&d->c, NULL, 0) < 0)
			die("chunkd__check_chunk refused the descriptor");
		int n = chunkd__rec_encode_download(&d->c, i + 1, buf, cap);
		if (n < 0)
			die("chunkd__rec_encode_download: %s", strerror(-n));
		sum += buf[(size_t)n - 1]; /* keep the work */
	}
	uint64_t t = bench_now_ns() - t0;
	if (sum == UINT64_MAX)
		printf("(never)\n");
	return (double)t / (double)iters;
}

static double pass_uds(const struct uds *u, uint8_t *req, size_t len, uint64_t iters)
{
	if (u->cpu_client >= 0)
		pin(u->cpu_client);
	uint64_t t0 = bench_now_ns();
	for (uint64_t i = 0; i < iters; i++) {
		memcpy(req + 8, &i, sizeof(i)); /* a different ticket each time, as in the ring */
		uds_roundtrip(u->fd, req, len);
	}
	double ns = (double)(bench_now_ns() - t0) / (double)iters;
	unpin();
	return ns;
}

struct lat {
	double p50, p99, mean, max;
};

static void lat_stats(double *v, size_t n, struct lat *out)
{
	double sum = 0;
	for (size_t i = 0; i < n; i++)
		sum += v[i];
	bench_sort(v, n);
	out->p50 = bench_percentile(v, n, 50);
	out->p99 = bench_percentile(v, n, 99);
	out->max = v[n - 1];
	out->mean = sum / (double)n;
}

/* ---- main ------------------------------------------------------------------------------------ */

static void fmt_lat(char *out, size_t len, const struct lat *l)
{
	snprintf(out, len, "p50 %.1f us, p99 %.1f us (mean %.1f, max %.1f)", l->p50 / 1e3,
		 l->p99 / 1e3, l->mean / 1e3, l->max / 1e3);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"work", required_argument, NULL, 'w'},
	    {"chunkd", required_argument, NULL, 'c'},
	    {"iters", required_argument, NULL, 'i'},
	    {"batch", required_argument, NULL, 'b'},
	    {"passes", required_argument, NULL, 'p'},
	    {"latency", required_argument, NULL, 'l'},
	    {"keep-logs", no_argument, NULL, 'K'},
	    {"strict", no_argument, NULL, 'S'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *work_parent = NULL, *chunkd = NULL;
	uint64_t iters = 50000, batch = 256, passes = 7, nlat = 2000;
	int strict = 0, c;
	char defbin[PATH_MAX + 16];

	while ((c = getopt_long(argc, argv, "w:c:i:b:p:l:h", opts, NULL)) != -1) {
		switch (c) {
		case 'w':
			work_parent = optarg;
			break;
		case 'c':
			chunkd = optarg;
			break;
		case 'i':
			if (bench_parse_num("--iters", optarg, 1, 100000000, &iters))
				return 2;
			break;
		case 'b':
			if (bench_parse_num("--batch", optarg, 1, CHUNKD_TICKETS_PER_CLIENT, &batch))
				return 2;
			break;
		case 'p':
			if (bench_parse_num("--passes", optarg, 1, 1000, &passes))
				return 2;
			break;
		case 'l':
			if (bench_parse_num("--latency", optarg, 1, 10000000, &nlat))
				return 2;
			break;
		case 'K':
			keep_logs = 1;
			break;
		case 'S':
			strict = 1;
			break;
		case 'h':
			fputs(usage, stdout);
			return 0;
		default:
			fputs("Try 'bench-request --help'.\n", stderr);
			return 2;
		}
	}
	if (!work_parent)
		work_parent = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	/* Absolute: the paths go into file:// URLs and to a daemon with another working dir. */
	char work_abs[PATH_MAX];
	if (!realpath(work_parent, work_abs))
		die("%s: %s", work_parent, strerror(errno));
	work_parent = work_abs;
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

	char load0[64], load1[64];
	bench_loadavg(load0, sizeof(load0));
	int r = bench_mkdtemp(work_parent, "bench-request.", work, sizeof(work));
	if (r < 0)
		die("mkdtemp in %s: %s", work_parent, strerror(-r));
	snprintf(inst, sizeof(inst), "bench-req-%d", (int)getpid());
	atexit(cleanup_at_exit);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGHUP, on_signal);

	/* The origin of the one published chunk: NFILES small files. */
	char origin[PATH_MAX / 2 + 16], data[PATH_MAX], log[PATH_MAX];
	snprintf(origin, sizeof(origin), "%s/origin", work);
	snprintf(data, sizeof(data), "%s/data", work);
	snprintf(log, sizeof(log), "%s/chunkd.log", work);
	if (mkdir(origin, 0755) < 0)
		die("mkdir %s: %s", origin, strerror(errno));
	struct desc pub;
	desc_init(&pub, 1, 1000);
	for (int k = 0; k < NFILES; k++) {
		char p[PATH_MAX + 64], buf[4096];
		snprintf(p, sizeof(p), "%s/%s", origin, pub.names[k]);
		memset(buf, 'a' + k, sizeof(buf));
		int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
		if (fd < 0 || write_full(fd, buf, sizeof(buf)) || close(fd))
			die("%s: %s", p, strerror(errno));
		snprintf(pub.urls[k], sizeof(pub.urls[k]), "file://%s", p);
	}

	/* chunkd --data-dir DATA --name INST [options after --] */
	int nextra = argc - optind, k = 0;
	char **av = calloc((size_t)nextra + 8, sizeof(*av));
	if (!av)
		die("out of memory");
	av[k++] = (char *)chunkd;
	av[k++] = "--data-dir";
	av[k++] = data;
	av[k++] = "--name";
	av[k++] = inst;
	for (int i = 0; i < nextra; i++)
		av[k++] = argv[optind + i];
	av[k] = NULL;
	chunkd_client *cl;
	r = bench_daemon_start(&daemon_, av, log, inst, 60000, &cl);
	free(av);
	if (r < 0)
		die("the daemon did not become READY: %s",
		    r == -ECHILD ? "it exited" : chunkd_strerror(r));

	uint64_t t;
	r = chunkd_download(cl, &pub.c, &t);
	if (r < 0)
		die("chunkd_download: %s", chunkd_strerror(r));
	wait_ok(cl, t, "publishing the chunk");

	/* From now on: the same descriptor with http:// URLs (the daemon keeps its bytes). */
	struct desc d = pub;
	d.c.files = d.files;
	for (int i = 0; i < NFILES; i++) {
		d.files[i].name = d.names[i];
		d.files[i].url = d.urls[i];
	}
	desc_http_urls(&d);
	size_t reclen = chunkd__rec_download_len(&d.c);
	uint8_t *rec = malloc(CHUNKD_REC_MAX);
	uint64_t *tickets = calloc(batch, sizeof(*tickets));
	if (!rec || !tickets)
		die("out of memory");
	if (chunkd__rec_encode_download(&d.c, 1, rec, CHUNKD_REC_MAX) != (int)reclen)
		die("encoded length differs from chunkd__rec_download_len");
	/* The socket servers: unpinned, and if two CPUs are allowed, pinned both ways. */
	if (sched_getaffinity(0, sizeof(orig_mask), &orig_mask) < 0)
		die("sched_getaffinity: %s", strerror(errno));
	int cpus[2] = {-1, -1}, ncpu = 0;
	for (int i = 0; i < CPU_SETSIZE && ncpu < 2; i++)
		if (CPU_ISSET(i, &orig_mask))
			cpus[ncpu++] = i;
	int nu = ncpu >= 2 ? U_COUNT : U_OTHER;
	udsv[U_FREE].cpu_client = udsv[U_FREE].cpu_server = -1;
	udsv[U_SAME].cpu_client = udsv[U_SAME].cpu_server = cpus[0];
	udsv[U_OTHER].cpu_client = cpus[0];
	udsv[U_OTHER].cpu_server = cpus[1];
	for (int u = 0; u < nu; u++)
		uds_start(&udsv[u], reclen);

	printf("bench-request: daemon %s (pid %d, fresh data dir), one published chunk of %d "
	       "files; request record %zu bytes (URLs of %zu bytes)\n",
	       chunkd, (int)daemon_.pid, NFILES, reclen, strlen(d.urls[0]));
	printf("%llu passes of %llu enqueues (waited for every %llu) and %llu socket round trips "
	       "per placement; ns per call\n",
	       (unsigned long long)passes, (unsigned long long)iters, (unsigned long long)batch,
	       (unsigned long long)iters);
	printf("%-5s %10s %10s %12s %12s %12s\n", "pass", "enqueue", "encode", "socket free",
	       "socket 1 CPU", "socket 2 CPU");
	fflush(stdout);

	/* Warm-up: one short pass of each, untimed. */
	pass_enqueue(cl, &d, batch, (uint32_t)batch, tickets);
	for (int u = 0; u < nu; u++)
		pass_uds(&udsv[u], rec, reclen, 1000);

	double *enq = calloc(passes, sizeof(double)), *enc = calloc(passes, sizeof(double));
	double *ratio = calloc(passes, sizeof(double)), *uds[U_COUNT];
	for (int u = 0; u < U_COUNT; u++)
		uds[u] = calloc(passes, sizeof(double));
	if (!enq || !enc || !ratio || !uds[0] || !uds[1] || !uds[2])
		die("out of memory");
	for (uint64_t p = 0; p < passes; p++) {
		/* Alternate the order, so that drift in the machine's load hits both alike. */
		if (p % 2 == 0)
			enq[p] = pass_enqueue(cl, &d, iters, (uint32_t)batch, tickets);
		for (int o = 0; o < nu; o++) {
			int u = (int)((p + (uint64_t)o) % (uint64_t)nu);
			uds[u][p] = pass_uds(&udsv[u], rec, reclen, iters);
		}
		if (p % 2 == 1)
			enq[p] = pass_enqueue(cl, &d, iters, (uint32_t)batch, tickets);
		enc[p] = pass_encode(&d, iters, rec, CHUNKD_REC_MAX);
		/* The target compares with the cheapest placement of this pass. */
		double best = uds[U_FREE][p];
		for (int u = 1; u < nu; u++)
			if (uds[u][p] < best)
				best = uds[u][p];
		ratio[p] = best / enq[p];
		printf("%-5llu %10.1f %10.1f %12.1f %12.1f", (unsigned long long)p + 1, enq[p],
		       enc[p], uds[U_FREE][p], uds[U_SAME][p]);
		if (nu > U_OTHER)
			printf(" %12.1f", uds[U_OTHER][p]);
		printf("\n");
		fflush(stdout);
	}
	/* pass_encode overwrote the record's ticket; restore a plausible one. */
	chunkd__rec_encode_download(&d.c, 1, rec, CHUNKD_REC_MAX);

	/* Latencies, one request at a time; the sockets' first, right after their passes. */
	double *lv = calloc(nlat, sizeof(double));
	if (!lv)
		die("out of memory");
	struct lat l_done, l_seen, l_uds[U_COUNT];
	for (int u = 0; u < nu; u++) {
		if (udsv[u].cpu_client >= 0)
			pin(udsv[u].cpu_client);
		for (uint64_t i = 0; i < nlat; i++) {
			uint64_t t0 = bench_now_ns();
			uds_roundtrip(udsv[u].fd, rec, reclen);
			lv[i] = (double)(bench_now_ns() - t0);
		}
		unpin();
		lat_stats(lv, nlat, &l_uds[u]);
	}

	for (uint64_t i = 0; i < nlat; i++) {
		uint64_t t0 = bench_now_ns();
		r = chunkd_download(cl, &d.c, &t);
		if (r != 0)
			die("chunkd_download: %s", chunkd_strerror(r));
		r = chunkd_wait(cl, t, 60000);
		lv[i] = (double)(bench_now_ns() - t0);
		if (r != 0)
			die("enqueue -> done: chunkd_wait: %s", chunkd_strerror(r));
	}
	lat_stats(lv, nlat, &l_done);

	struct desc fresh;
	for (uint64_t i = 0; i < nlat; i++) {
		desc_init(&fresh, 1000 + i, 1000000 + 1000 * i);
		for (int f = 0; f < NFILES; f++)
			snprintf(fresh.urls[f], sizeof(fresh.urls[f]), "file://%s/missing-%d",
				 origin, f);
		chunkd_chunk_status st;
		uint64_t td, tx;
		uint64_t t0 = bench_now_ns();
		r = chunkd_download(cl, &fresh.c, &td);
		if (r != 0)
			die("chunkd_download: %s", chunkd_strerror(r));
		uint64_t deadline = t0 + 60000000000ull, t1;
		for (;;) {
			r = chunkd_status(cl, &fresh.c.id, &st);
			t1 = bench_now_ns();
			if (r == 0 && st.state != CHUNKD_CHUNK_ABSENT)
				break;
			if (r < 0 && r != -EAGAIN)
				die("chunkd_status: %s", chunkd_strerror(r));
			if (t1 > deadline)
				die("enqueue -> seen: the chunk stayed ABSENT for 60 s");
		}
		lv[i] = (double)(t1 - t0);
		r = chunkd_delete(cl, &fresh.c.id, &tx);
		if (r != 0)
			die("chunkd_delete: %s", chunkd_strerror(r));
		r = chunkd_wait(cl, td, 60000);
		if (r != 0 && r != -ECANCELED && r != -ENOENT)
			die("enqueue -> seen: the download's ticket: %s", chunkd_strerror(r));
		wait_ok(cl, tx, "enqueue -> seen: the delete");
	}
	lat_stats(lv, nlat, &l_seen);

	for (int u = 0; u < nu; u++) {
		close(udsv[u].fd);
		waitpid(udsv[u].pid, NULL, 0);
		udsv[u].pid = 0;
	}
	chunkd_close(cl);
	r = bench_daemon_stop(&daemon_, 60000);
	if (r != 0)
		die("the daemon did not stop cleanly after SIGTERM (status %d)", r);
	bench_loadavg(load1, sizeof(load1));

	double m_enq = bench_median(enq, passes), m_enc = bench_median(enc, passes);
	double m_ratio = bench_median(ratio, passes);
	double lo_enq = bench_min(enq, passes), hi_enq = bench_max(enq, passes);
	double m_uds[U_COUNT], lo_uds[U_COUNT], hi_uds[U_COUNT];
	for (int u = 0; u < nu; u++) {
		lo_uds[u] = bench_min(uds[u], passes);
		hi_uds[u] = bench_max(uds[u], passes);
		m_uds[u] = bench_median(uds[u], passes);
	}
	int pass = m_ratio >= 10;

	char v[256], sd[160], ss[160], su[U_COUNT][160], what[160];
	fmt_lat(sd, sizeof(sd), &l_done);
	fmt_lat(ss, sizeof(ss), &l_seen);
	for (int u = 0; u < nu; u++)
		fmt_lat(su[u], sizeof(su[u]), &l_uds[u]);
	printf("\nmedian of %llu passes (min, max); latencies over %llu requests, one at a time\n",
	       (unsigned long long)passes, (unsigned long long)nlat);
	printf("%-58s %10s %9s %9s\n", "per call", "ns/op", "min", "max");
	printf("%-58s %10.1f %9.1f %9.1f\n", "chunkd_download, 5 files (enqueue)", m_enq, lo_enq,
	       hi_enq);
	printf("%-58s %10.1f\n", "  of which validate + encode in private memory", m_enc);
	for (int u = 0; u < nu; u++)
		printf("%-58s %10.1f %9.1f %9.1f\n", uds_names[u], m_uds[u], lo_uds[u], hi_uds[u]);
	printf("%-58s %s\n", "latency: chunkd enqueue -> chunkd_wait returns (done)", sd);
	printf("%-58s %s\n", "latency: chunkd enqueue -> chunkd_status not ABSENT (seen)", ss);
	for (int u = 0; u < nu; u++) {
		snprintf(what, sizeof(what), "latency: %s", uds_names[u]);
		printf("%-58s %s\n", what, su[u]);
	}
	printf("\ntarget: enqueue >= 10x faster than the cheapest Unix-socket round trip: %.1fx  "
	       "%s\n", m_ratio, pass ? "PASS" : "MISS");
	printf("load: %s before, %s after\n", load0, load1);

	snprintf(v, sizeof(v), "%.0f ns/op (min %.0f, max %.0f); record %zu B", m_enq, lo_enq,
		 hi_enq, reclen);
	bench_row("request", "request: chunkd_download enqueue, 5 files, live daemon", v, NULL,
		  NULL, NULL);
	snprintf(v, sizeof(v), "%.0f ns/op", m_enc);
	bench_row("request", "request: of which validate + encode (private memory)", v, NULL, NULL,
		  NULL);
	for (int u = 0; u < nu; u++) {
		char rt[32];
		snprintf(what, sizeof(what), "request: %s, same bytes, 16-byte reply",
			 uds_names[u]);
		snprintf(v, sizeof(v), "%.0f ns/op (min %.0f, max %.0f)", m_uds[u], lo_uds[u],
			 hi_uds[u]);
		snprintf(rt, sizeof(rt), "%.1fx enqueue", m_uds[u] / m_enq);
		bench_row("request", what, v, rt, NULL, NULL);
	}
	bench_row("request", "request: latency enqueue -> wait returns (published chunk; incl. "
		  "journal fdatasync)", sd, NULL, NULL, NULL);
	bench_row("request", "request: latency enqueue -> chunkd_status not ABSENT (new chunk)", ss,
		  NULL, NULL, NULL);
	for (int u = 0; u < nu; u++) {
		snprintf(what, sizeof(what), "request: latency %s", uds_names[u]);
		bench_row("request", what, su[u], NULL, NULL, NULL);
	}
	snprintf(v, sizeof(v), "%.1fx faster", m_ratio);
	bench_row("request", "target: enqueue vs the cheapest Unix socket round trip", v, NULL,
		  ">= 10x faster", pass ? "PASS" : "MISS");

	free(enq);
	free(enc);
	for (int u = 0; u < U_COUNT; u++)
		free(uds[u]);
	free(ratio);
	free(lv);
	free(rec);
	free(tickets);
	return strict && !pass ? 1 : 0;
}
