/*
 * download.c — bench-download: chunkd downloading chunks from a local nginx, fsynced and
 * published, against curl --parallel, aria2c and a plain cp -r of the same bytes, in one run.
 *
 * The origin is a web root written by scripts/gen-chunks.py --flat (<dataset>/<id>/<file>),
 * served by tests/servers/nginx.sh on 127.0.0.1. Every method moves the same files (by default
 * 100 chunks x 5 files x 1.6 MB = 800 MB) onto the same file system:
 *
 *   chunkd   A daemon on a fresh data dir, started and READY before the clock starts. One client
 *            enqueues every chunk (chunkd_download, URLs on nginx), then waits for every ticket.
 *            Wall time: from the first enqueue to the last chunkd_wait() returning, i.e. until
 *            every file, .chunkd-meta and directory is fsynced, renamed into place and findable.
 *            Daemon CPU: utime + stime of /proc/PID/stat (all threads, io_uring workers
 *            included) after minus before. Peak RSS: VmHWM of /proc/PID/status.
 *   curl     curl --parallel --parallel-max 16 with one url/output pair per file (--config),
 *            then sync(1). Wall time from the spawn of curl to the end of sync.
 *   aria2c   aria2c -j 16 --file-allocation=none with an input file naming every URL and its
 *            output, then sync(1).
 *   cp       cp -r of the web root, then sync(1): the same bytes from the page cache to the disk
 *            without any network, the disk's limit for this workload.
 *   floor    The least CPU this machine spends to receive the bytes over HTTP and make them
 *            durable, as a reference for the daemon's CPU target: a child process of this
 *            program fetches every file over one keep-alive HTTP/1.1 connection and moves the
 *            body from the socket into the file with splice(2) through a pipe (no copy into
 *            user memory: the page-cache write is the only copy), then fsyncs the file and each
 *            chunk directory. No checksum, no event loop, no bookkeeping: less work than any
 *            daemon that must also verify and publish. CPU: the child's rusage.
 *
 * Nothing is dropped from the page cache (the machine is shared, and that needs root): the origin
 * is read once before the first timed run, so every method finds it cached, and every method's
 * output is deleted and the file system synced (untimed) before the next method starts. Each
 * repetition runs every method once, in an order rotated from one repetition to the next; the
 * table shows the median over repetitions, ratios are medians of per-repetition ratios. After
 * every run the output is compared byte for byte with the origin (for chunkd: through
 * chunkd_find(), in the published chunk directory).
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "chunkd.h"
#include "common.h"

#ifndef CHUNKD_SOURCE_DIR
#define CHUNKD_SOURCE_DIR "."
#endif

static const char usage[] =
    "Usage: bench-download --web-root DIR [OPTION]... [-- CHUNKD-OPTION...]\n"
    "Download every file of a gen-chunks.py --flat web root from a local nginx with chunkd,\n"
    "curl --parallel and aria2c, and copy it with cp -r, each followed by making it durable;\n"
    "print wall time, CPU and peak RSS per method and check the targets.\n"
    "\n"
    "  -W, --web-root DIR    the origin: <dataset-hex>/<id-hex>/<file> (required)\n"
    "  -w, --work DIR        where outputs, data dirs and logs go (default: $TMPDIR or /tmp);\n"
    "                        a fresh subdirectory is made and removed at the end\n"
    "  -r, --reps N          repetitions of every method (default 3)\n"
    "  -P, --parallel N      curl --parallel-max and aria2c -j (default 16)\n"
    "  -c, --chunkd PATH     the daemon (default: chunkd next to this program)\n"
    "  -N, --nginx-sh PATH   tests/servers/nginx.sh (default: the source tree's)\n"
    "      --only METHODS    comma-separated subset of chunkd,curl,aria2c,cp,floor (targets that\n"
    "                        need a missing method are not checked)\n"
    "      --keep-logs       keep the work directory's logs (the daemon's, nginx's)\n"
    "      --strict          exit 1 when a target is missed\n"
    "  -h, --help            show this help and exit\n"
    "\n"
    "Options after \"--\" are passed to chunkd. Needs nginx (nginx-light), curl, aria2c, cp and\n"
    "sync in $PATH. Result rows are also printed as \"ROW<TAB>...\" lines for bench/run.sh.\n"
    "Targets: chunkd wall <= 1.25x cp -r + sync and <= 0.8x curl --parallel + sync; daemon CPU\n"
    "<= 0.5 s per GB; daemon peak RSS <= 64 MB. The floor method (this program splicing every\n"
    "file from the socket into its place over one connection, then fsync, no checksum) is the\n"
    "reference for the CPU target: the least CPU this machine spends on the bytes.\n"
    "Exit status: 0 done (targets missed too, unless --strict), 1 a target missed with --strict,\n"
    "2 bad usage, 3 set-up or a method failed, 4 wrong bytes (the message names the file).\n";

#define die(...)                                                 \
	do {                                                     \
		fprintf(stderr, "bench-download: " __VA_ARGS__); \
		fputc('\n', stderr);                             \
		exit(3);                                         \
	} while (0)

#define NAME_LEN 256

struct file {
	char name[NAME_LEN];
	uint64_t size;
};

struct chunk {
	char ds_hex[65], id_hex[65];
	chunkd_id id, dataset;
	uint64_t first, end;
	uint32_t nfiles;
	struct file *files;
};

enum method { M_CHUNKD, M_CURL, M_ARIA2, M_CP, M_FLOOR, M_COUNT };

static const char *const method_keys[M_COUNT] = {"chunkd", "curl", "aria2c", "cp", "floor"};

struct sample {
	double wall_s; /* see the header comment for where each clock starts and stops */
	double cpu_s;  /* chunkd: the daemon's; others: the tool's and sync's (wait4 rusage) */
	long rss_kib;  /* chunkd: VmHWM; others: the tool's ru_maxrss */
	double sync_s; /* others: the part of wall_s spent in sync(1); chunkd: 0 */
};

struct bench {
	const char *root;
	char work[PATH_MAX / 2]; /* short enough for every path built under it */
	char state[PATH_MAX];    /* nginx.sh's state dir */
	const char *nginx_sh;
	const char *chunkd;
	char **chunkd_extra;
	int nextra;
	int port;
	unsigned parallel;
	struct chunk *chunks;
	size_t nchunks, nfiles;
	uint64_t bytes;
	char name[64]; /* the daemon's instance */
};

/* ---- clean-up at any exit -------------------------------------------------------------------- */

static struct bench *live_bench;
static pid_t live_daemon;
static int keep_logs;

static void cleanup_at_exit(void)
{
	struct bench *b = live_bench;
	if (live_daemon > 0) {
		kill(live_daemon, SIGKILL);
		waitpid(live_daemon, NULL, 0);
		live_daemon = 0;
	}
	if (!b)
		return;
	live_bench = NULL;
	if (b->state[0]) {
		char *argv[] = {(char *)b->nginx_sh, "stop", b->state, NULL};
		bench_run(argv, NULL, NULL, NULL);
	}
	bench_remove_instance(b->name);
	if (!b->work[0])
		return;
	if (!keep_logs) {
		bench_rm_rf(b->work);
		return;
	}
	/* Keep the logs, remove the bulk. */
	static const char *const bulk[] = {"out", "data", "nginx/tmp"};
	for (size_t i = 0; i < sizeof(bulk) / sizeof(bulk[0]); i++) {
		char p[PATH_MAX + 32];
		snprintf(p, sizeof(p), "%s/%s", b->work, bulk[i]);
		bench_rm_rf(p);
	}
	fprintf(stderr, "bench-download: logs kept in %s\n", b->work);
}

static void on_signal(int sig)
{
	/* exit() runs cleanup_at_exit: nginx stopped, daemon killed, work dir removed. */
	exit(128 + sig);
}

/* ---- the origin ------------------------------------------------------------------------------ */

static int hex_nibble(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

static int hex_to_id(const char *s, chunkd_id *out)
{
	if (strlen(s) != 64)
		return -1;
	for (int i = 0; i < 32; i++) {
		int h = hex_nibble(s[2 * i]), l = hex_nibble(s[2 * i + 1]);
		if (h < 0 || l < 0)
			return -1;
		out->bytes[i] = (uint8_t)(h << 4 | l);
	}
	return 0;
}

static int file_cmp(const void *a, const void *b)
{
	return strcmp(((const struct file *)a)->name, ((const struct file *)b)->name);
}

static int chunk_cmp(const void *pa, const void *pb)
{
	const struct chunk *a = pa, *b = pb;
	int c = strcmp(a->ds_hex, b->ds_hex);
	return c ? c : strcmp(a->id_hex, b->id_hex);
}

/* Read <root>/<dataset-hex>/<id-hex>/<file>. Block ranges are not part of a flat web root; chunk
 * i (in dataset, id order) gets blocks [1000 i, 1000 i + 1000), which never overlap. */
static void scan_root(struct bench *b)
{
	DIR *top = opendir(b->root);
	if (!top)
		die("%s: %s", b->root, strerror(errno));
	size_t cap = 0;
	struct dirent *de;
	while ((de = readdir(top))) {
		chunkd_id ds;
		if (hex_to_id(de->d_name, &ds))
			continue;
		char dpath[PATH_MAX + 80];
		snprintf(dpath, sizeof(dpath), "%s/%s", b->root, de->d_name);
		DIR *dd = opendir(dpath);
		if (!dd)
			die("%s: %s", dpath, strerror(errno));
		struct dirent *ce;
		while ((ce = readdir(dd))) {
			chunkd_id id;
			if (hex_to_id(ce->d_name, &id))
				continue;
			if (b->nchunks == cap) {
				cap = cap ? 2 * cap : 128;
				b->chunks = realloc(b->chunks, cap * sizeof(*b->chunks));
				if (!b->chunks)
					die("out of memory");
			}
			struct chunk *c = &b->chunks[b->nchunks++];
			memset(c, 0, sizeof(*c));
			memcpy(c->ds_hex, de->d_name, 65); /* 64 hex digits and the NUL */
			memcpy(c->id_hex, ce->d_name, 65);
			c->dataset = ds;
			c->id = id;
			c->files = calloc(CHUNKD_MAX_FILES, sizeof(*c->files));
			if (!c->files)
				die("out of memory");
			char cpath[PATH_MAX + 400];
			snprintf(cpath, sizeof(cpath), "%s/%s", dpath, ce->d_name);
			DIR *fd = opendir(cpath);
			if (!fd)
				die("%s: %s", cpath, strerror(errno));
			struct dirent *fe;
			while ((fe = readdir(fd))) {
				struct stat st;
				if (fe->d_name[0] == '.')
					continue;
				if (fstatat(dirfd(fd), fe->d_name, &st, 0) < 0 ||
				    !S_ISREG(st.st_mode))
					continue;
				if (c->nfiles == CHUNKD_MAX_FILES)
					die("%s: more than %d files", cpath, CHUNKD_MAX_FILES);
				if (strlen(fe->d_name) >= NAME_LEN)
					die("%s/%s: name too long", cpath, fe->d_name);
				snprintf(c->files[c->nfiles].name, NAME_LEN, "%s", fe->d_name);
				c->files[c->nfiles].size = (uint64_t)st.st_size;
				c->nfiles++;
				b->bytes += (uint64_t)st.st_size;
			}
			closedir(fd);
			if (!c->nfiles)
				die("%s: no files", cpath);
			qsort(c->files, c->nfiles, sizeof(*c->files), file_cmp);
			b->nfiles += c->nfiles;
		}
		closedir(dd);
	}
	closedir(top);
	if (!b->nchunks)
		die("%s: no <dataset-hex>/<id-hex>/ directories (gen-chunks.py --flat makes them)",
		    b->root);
	qsort(b->chunks, b->nchunks, sizeof(*b->chunks), chunk_cmp);
	for (size_t i = 0; i < b->nchunks; i++) {
		b->chunks[i].first = 1000 * (uint64_t)i;
		b->chunks[i].end = 1000 * (uint64_t)i + 1000;
	}
}

static char cmp_a[1 << 20], cmp_b[1 << 20];

/* Read the whole file (to warm the page cache) into nothing; its size, or -1. */
static long long read_all(const char *path)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -1;
	long long total = 0;
	ssize_t n;
	while ((n = read(fd, cmp_a, sizeof(cmp_a))) > 0)
		total += n;
	close(fd);
	return n < 0 ? -1 : total;
}

/* Compare two files byte for byte: 0 same; -1 with why filled. */
static int same_bytes(const char *a, const char *b, char *why, size_t len)
{
	int fa = open(a, O_RDONLY | O_CLOEXEC), fb = open(b, O_RDONLY | O_CLOEXEC);
	int r = -1;
	if (fa < 0 || fb < 0) {
		snprintf(why, len, "cannot open %s: %s", fa < 0 ? a : b, strerror(errno));
		goto out;
	}
	for (uint64_t off = 0;;) {
		ssize_t na = read(fa, cmp_a, sizeof(cmp_a)), nb = 0;
		while (na > 0 && nb < na) {
			ssize_t k = read(fb, cmp_b + nb, (size_t)(na - nb));
			if (k <= 0)
				break;
			nb += k;
		}
		if (na < 0 || nb < 0) {
			snprintf(why, len, "read error");
			goto out;
		}
		if (na == 0) {
			if (read(fb, cmp_b, 1) != 0) {
				snprintf(why, len, "%s is longer than the origin %s", b, a);
				goto out;
			}
			r = 0;
			goto out;
		}
		if (nb != na) {
			snprintf(why, len, "%s is shorter than the origin %s (%llu bytes)", b, a,
				 (unsigned long long)(off + (uint64_t)nb));
			goto out;
		}
		if (memcmp(cmp_a, cmp_b, (size_t)na)) {
			snprintf(why, len, "%s differs from the origin %s near offset %llu", b, a,
				 (unsigned long long)off);
			goto out;
		}
		off += (uint64_t)na;
	}
out:
	if (fa >= 0)
		close(fa);
	if (fb >= 0)
		close(fb);
	return r;
}

static void wrong_bytes(const char *method, const char *why)
{
	fprintf(stderr, "bench-download: WRONG BYTES (%s): %s\n", method, why);
	exit(4);
}

/* Check a tool's output tree <out>/<dataset>/<id>/<file> against the origin. */
static void verify_tree(const struct bench *b, const char *out, const char *method)
{
	char why[PATH_MAX * 2 + 128], o[PATH_MAX + 256], p[PATH_MAX + 256];
	for (size_t i = 0; i < b->nchunks; i++) {
		const struct chunk *c = &b->chunks[i];
		for (uint32_t k = 0; k < c->nfiles; k++) {
			snprintf(o, sizeof(o), "%s/%s/%s/%s", b->root, c->ds_hex, c->id_hex,
				 c->files[k].name);
			snprintf(p, sizeof(p), "%s/%s/%s/%s", out, c->ds_hex, c->id_hex,
				 c->files[k].name);
			if (same_bytes(o, p, why, sizeof(why)))
				wrong_bytes(method, why);
		}
	}
}

/* ---- nginx ----------------------------------------------------------------------------------- */

static void nginx_start(struct bench *b)
{
	char out[PATH_MAX + 32];
	snprintf(b->state, sizeof(b->state), "%s/nginx", b->work);
	if (mkdir(b->state, 0755) < 0)
		die("mkdir %s: %s", b->state, strerror(errno));
	snprintf(out, sizeof(out), "%s/nginx.sh.out", b->work);
	char *argv[] = {(char *)b->nginx_sh, "start", (char *)b->root, b->state, NULL};
	int r = bench_run(argv, out, NULL, NULL);
	FILE *f = fopen(out, "r");
	char line[256];
	while (f && fgets(line, sizeof(line), f))
		if (sscanf(line, "PORT %d", &b->port) == 1)
			break;
	if (f)
		fclose(f);
	if (r != 0 || b->port <= 0) {
		char *cat[] = {"cat", out, NULL};
		bench_run(cat, NULL, NULL, NULL);
		if (r == 77)
			die("nginx is not installed (apt-get install nginx-light)");
		die("%s start failed (status %d)", b->nginx_sh, r);
	}
}

/* ---- the methods ----------------------------------------------------------------------------- */

static void run_or_die(char *const argv[], const char *log, double *cpu, long *rss)
{
	int r = bench_run(argv, log, cpu, rss);
	if (r != 0) {
		fprintf(stderr, "bench-download: %s exited with status %d; its output (%s):\n",
			argv[0], r, log ? log : "-");
		if (log) {
			char *cat[] = {"tail", "-n", "30", (char *)log, NULL};
			bench_run(cat, NULL, NULL, NULL);
		}
		exit(3);
	}
}

/* sync(1) as a child, so that its CPU can be counted with the tool's. */
static double sync_all(const struct bench *b)
{
	double cpu = 0;
	char *argv[] = {"sync", NULL};
	run_or_die(argv, NULL, &cpu, NULL);
	return cpu;
}

static void out_dir(const struct bench *b, char *out, size_t len)
{
	snprintf(out, len, "%s/out", b->work);
}

/* Run a tool, then sync(1), timing both, and compare its output tree with the origin. */
static void time_tool(struct bench *b, char *const argv[], const char *log, const char *out,
		      const char *what, struct sample *s)
{
	double cpu = 0;
	uint64_t t0 = bench_now_ns();
	run_or_die(argv, log, &cpu, &s->rss_kib);
	uint64_t t1 = bench_now_ns();
	double sync_cpu = sync_all(b);
	uint64_t t2 = bench_now_ns();
	s->wall_s = (double)(t2 - t0) / 1e9;
	s->sync_s = (double)(t2 - t1) / 1e9;
	s->cpu_s = cpu + sync_cpu;
	verify_tree(b, out, what);
}

static void run_curl(struct bench *b, struct sample *s)
{
	char out[PATH_MAX], cfg[PATH_MAX + 16], log[PATH_MAX + 16], par[16];
	out_dir(b, out, sizeof(out));
	snprintf(cfg, sizeof(cfg), "%s/curl.cfg", b->work);
	snprintf(log, sizeof(log), "%s/curl.log", b->work);
	snprintf(par, sizeof(par), "%u", b->parallel);
	FILE *f = fopen(cfg, "w");
	if (!f)
		die("%s: %s", cfg, strerror(errno));
	for (size_t i = 0; i < b->nchunks; i++) {
		const struct chunk *c = &b->chunks[i];
		for (uint32_t k = 0; k < c->nfiles; k++) {
			fprintf(f, "url = \"http://127.0.0.1:%d/%s/%s/%s\"\n", b->port, c->ds_hex,
				c->id_hex, c->files[k].name);
			fprintf(f, "output = \"%s/%s/%s/%s\"\n", out, c->ds_hex, c->id_hex,
				c->files[k].name);
		}
	}
	if (fclose(f))
		die("%s: %s", cfg, strerror(errno));
	char *argv[] = {"curl", "--parallel", "--parallel-max", par, "--create-dirs", "--fail",
			"--silent", "--show-error", "--config", cfg, NULL};
	time_tool(b, argv, log, out, "curl", s);
}

static void run_aria2(struct bench *b, struct sample *s)
{
	char out[PATH_MAX], in[PATH_MAX + 16], log[PATH_MAX + 16], par[16];
	out_dir(b, out, sizeof(out));
	snprintf(in, sizeof(in), "%s/aria2c.input", b->work);
	snprintf(log, sizeof(log), "%s/aria2c.log", b->work);
	snprintf(par, sizeof(par), "%u", b->parallel);
	FILE *f = fopen(in, "w");
	if (!f)
		die("%s: %s", in, strerror(errno));
	for (size_t i = 0; i < b->nchunks; i++) {
		const struct chunk *c = &b->chunks[i];
		for (uint32_t k = 0; k < c->nfiles; k++)
			fprintf(f, "http://127.0.0.1:%d/%s/%s/%s\n  dir=%s/%s/%s\n  out=%s\n",
				b->port, c->ds_hex, c->id_hex, c->files[k].name, out, c->ds_hex,
				c->id_hex, c->files[k].name);
	}
	if (fclose(f))
		die("%s: %s", in, strerror(errno));
	/* --file-allocation=none: write as the data arrives, like curl and chunkd (aria2c's
	 * default, prealloc, would first write every file full of zeros). */
	char *argv[] = {"aria2c", "-j", par, "--input-file", in, "--file-allocation=none",
			"--allow-overwrite=true", "--auto-file-renaming=false", "--quiet=true",
			NULL};
	time_tool(b, argv, log, out, "aria2c", s);
}

static void run_cp(struct bench *b, struct sample *s)
{
	char out[PATH_MAX];
	out_dir(b, out, sizeof(out));
	/* out does not exist: cp -r makes it a copy of the root, <out>/<dataset>/<id>/<file>. */
	char *argv[] = {"cp", "-r", (char *)b->root, out, NULL};
	time_tool(b, argv, NULL, out, "cp", s);
}

/* ---- floor: splice from the socket into the files ------------------------------------------ */

static int floor_connect(int port)
{
	int s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (s < 0 || connect(s, (struct sockaddr *)&a, sizeof(a)) < 0)
		return -1;
	return s;
}

/* Send a GET, read the response header (peeked, then consumed exactly): the body's length, or
 * -1 on anything but "200" with a Content-Length. */
static long long floor_get(int s, const char *path)
{
	char req[1024], buf[8192];
	int n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", path);
	if (n <= 0 || n >= (int)sizeof(req) || write(s, req, (size_t)n) != n)
		return -1;
	ssize_t hl = 0;
	for (;;) {
		ssize_t r = recv(s, buf, sizeof(buf) - 1, MSG_PEEK);
		if (r <= 0)
			return -1;
		buf[r] = '\0';
		char *e = strstr(buf, "\r\n\r\n");
		if (e) {
			hl = e + 4 - buf;
			e[2] = '\0';
			break;
		}
		if (r == (ssize_t)sizeof(buf) - 1)
			return -1; /* a header this long is not nginx's */
	}
	char *cl = strcasestr(buf, "\r\nContent-Length:");
	if (strncmp(buf, "HTTP/1.1 200 ", 13) || !cl || recv(s, buf, (size_t)hl, 0) != hl)
		return -1;
	return strtoll(cl + 17, NULL, 10);
}

/* In the child: fetch every file; 0 or exit status 1 after a message. */
static int floor_child(const struct bench *b, const char *out)
{
	char path[PATH_MAX + 512], url[600];
	int p[2];
	int s = floor_connect(b->port);
	if (s < 0 || pipe2(p, O_CLOEXEC) < 0) {
		fprintf(stderr, "bench-download: floor: connect or pipe: %s\n", strerror(errno));
		return 1;
	}
	fcntl(p[1], F_SETPIPE_SZ, 1 << 20); /* fewer round trips through the pipe; best effort */
	for (size_t i = 0; i < b->nchunks; i++) {
		const struct chunk *c = &b->chunks[i];
		snprintf(path, sizeof(path), "%s/%s", out, c->ds_hex);
		mkdir(path, 0755);
		snprintf(path, sizeof(path), "%s/%s/%s", out, c->ds_hex, c->id_hex);
		if (mkdir(path, 0755) < 0) {
			fprintf(stderr, "bench-download: floor: mkdir %s: %s\n", path, strerror(errno));
			return 1;
		}
		for (uint32_t k = 0; k < c->nfiles; k++) {
			snprintf(url, sizeof(url), "/%s/%s/%s", c->ds_hex, c->id_hex, c->files[k].name);
			long long left = floor_get(s, url);
			if (left != (long long)c->files[k].size) {
				fprintf(stderr, "bench-download: floor: GET %s: bad response\n", url);
				return 1;
			}
			snprintf(path, sizeof(path), "%s/%s/%s/%s", out, c->ds_hex, c->id_hex,
				 c->files[k].name);
			int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
			if (fd < 0) {
				fprintf(stderr, "bench-download: floor: %s: %s\n", path, strerror(errno));
				return 1;
			}
			while (left > 0) {
				ssize_t r = splice(s, NULL, p[1], NULL, (size_t)left, SPLICE_F_MOVE);
				if (r <= 0) {
					fprintf(stderr, "bench-download: floor: splice from the socket: "
						"%s\n", r < 0 ? strerror(errno) : "end of stream");
					return 1;
				}
				left -= r;
				while (r > 0) {
					ssize_t w = splice(p[0], NULL, fd, NULL, (size_t)r, SPLICE_F_MOVE);
					if (w <= 0) {
						fprintf(stderr, "bench-download: floor: splice into %s: "
							"%s\n", path, strerror(errno));
						return 1;
					}
					r -= w;
				}
			}
			if (fsync(fd) < 0 || close(fd) < 0) {
				fprintf(stderr, "bench-download: floor: fsync %s: %s\n", path,
					strerror(errno));
				return 1;
			}
		}
		snprintf(path, sizeof(path), "%s/%s/%s", out, c->ds_hex, c->id_hex);
		int dfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (dfd < 0 || fsync(dfd) < 0) {
			fprintf(stderr, "bench-download: floor: fsync %s: %s\n", path, strerror(errno));
			return 1;
		}
		close(dfd);
	}
	return 0;
}

static void run_floor(struct bench *b, struct sample *s)
{
	char out[PATH_MAX];
	out_dir(b, out, sizeof(out));
	if (mkdir(out, 0755) < 0)
		die("mkdir %s: %s", out, strerror(errno));
	fflush(NULL);
	uint64_t t0 = bench_now_ns();
	pid_t pid = fork();
	if (pid < 0)
		die("fork: %s", strerror(errno));
	if (pid == 0)
		_exit(floor_child(b, out));
	int r = bench_wait_child(pid, &s->cpu_s, &s->rss_kib);
	s->wall_s = (double)(bench_now_ns() - t0) / 1e9;
	s->sync_s = 0;
	if (r != 0)
		die("the floor method failed (status %d)", r);
	verify_tree(b, out, "floor");
}

static void run_chunkd(struct bench *b, struct sample *s)
{
	char data[PATH_MAX], log[PATH_MAX + 16];
	out_dir(b, data, sizeof(data)); /* the data dir takes the place of the tools' output */
	snprintf(log, sizeof(log), "%s/chunkd.log", b->work);
	bench_remove_instance(b->name);

	char **argv = calloc((size_t)b->nextra + 8, sizeof(*argv));
	if (!argv)
		die("out of memory");
	int k = 0;
	argv[k++] = (char *)b->chunkd;
	argv[k++] = "--data-dir";
	argv[k++] = data;
	argv[k++] = "--name";
	argv[k++] = b->name;
	for (int i = 0; i < b->nextra; i++)
		argv[k++] = b->chunkd_extra[i];
	argv[k] = NULL;
	struct bench_daemon dm;
	chunkd_client *c;
	int r = bench_daemon_start(&dm, argv, log, b->name, 60000, &c);
	free(argv);
	if (r < 0)
		die("the daemon did not become READY: %s",
		    r == -ECHILD ? "it exited" : chunkd_strerror(r));
	live_daemon = dm.pid;
	pid_t pid = dm.pid;

	/* Descriptors and URLs are built before the clock starts. */
	uint64_t *tickets = calloc(b->nchunks, sizeof(*tickets));
	chunkd_chunk *desc = calloc(b->nchunks, sizeof(*desc));
	chunkd_file *files = calloc(b->nfiles, sizeof(*files));
	char (*url)[512] = calloc(b->nfiles, sizeof(*url));
	if (!tickets || !desc || !files || !url)
		die("out of memory");
	for (size_t i = 0, n = 0; i < b->nchunks; i++) {
		const struct chunk *ch = &b->chunks[i];
		desc[i] = (chunkd_chunk){.id = ch->id,
					 .dataset = ch->dataset,
					 .first_block = ch->first,
					 .end_block = ch->end,
					 .files = &files[n],
					 .nfiles = ch->nfiles};
		for (uint32_t f = 0; f < ch->nfiles; f++, n++) {
			snprintf(url[n], sizeof(url[n]), "http://127.0.0.1:%d/%s/%s/%s", b->port,
				 ch->ds_hex, ch->id_hex, ch->files[f].name);
			files[n].name = ch->files[f].name;
			files[n].url = url[n];
		}
	}
	double cpu0 = bench_proc_cpu_s(pid);
	uint64_t t0 = bench_now_ns();
	for (size_t i = 0; i < b->nchunks; i++) {
		r = chunkd_download(c, &desc[i], &tickets[i]);
		if (r < 0)
			die("chunkd_download(chunk %zu): %s", i, chunkd_strerror(r));
	}
	for (size_t i = 0; i < b->nchunks; i++) {
		r = chunkd_wait(c, tickets[i], 600000);
		if (r < 0) {
			bench_show_log("the daemon's log", log, 30);
			die("chunkd_wait(chunk %s): %s", b->chunks[i].id_hex, chunkd_strerror(r));
		}
	}
	uint64_t t1 = bench_now_ns();
	double cpu1 = bench_proc_cpu_s(pid);
	s->wall_s = (double)(t1 - t0) / 1e9;
	s->cpu_s = cpu1 - cpu0;
	s->rss_kib = bench_proc_status_kib(pid, "VmHWM");
	if (cpu0 < 0 || cpu1 < 0 || s->rss_kib < 0)
		die("cannot read /proc/%d", (int)pid);

	/* Every chunk findable, in its published directory, with the origin's bytes. */
	char why[PATH_MAX * 2 + 128], o[PATH_MAX + 256], p[PATH_MAX + 256];
	for (size_t i = 0; i < b->nchunks; i++) {
		const struct chunk *ch = &b->chunks[i];
		chunkd_ref ref;
		r = chunkd_find(c, &ch->dataset, ch->first, &ref);
		if (r < 0) {
			snprintf(why, sizeof(why), "chunk %s is not findable: %s", ch->id_hex,
				 chunkd_strerror(r));
			wrong_bytes("chunkd", why);
		}
		if (memcmp(&ref.id, &ch->id, sizeof(ref.id)))
			wrong_bytes("chunkd", "chunkd_find returned another chunk");
		for (uint32_t f = 0; f < ch->nfiles; f++) {
			snprintf(o, sizeof(o), "%s/%s/%s/%s", b->root, ch->ds_hex, ch->id_hex,
				 ch->files[f].name);
			snprintf(p, sizeof(p), "%s/%s", ref.path, ch->files[f].name);
			if (same_bytes(o, p, why, sizeof(why)))
				wrong_bytes("chunkd", why);
		}
		chunkd_release(c, &ref);
	}
	chunkd_close(c);
	free(tickets);
	free(desc);
	free(files);
	free(url);

	r = bench_daemon_stop(&dm, 60000);
	live_daemon = 0;
	if (r != 0)
		die("the daemon did not stop cleanly after SIGTERM (status %d)", r);
	bench_remove_instance(b->name);
}

/* ---- main ------------------------------------------------------------------------------------ */

static int parse_only(const char *s, int want[M_COUNT])
{
	char buf[128];
	snprintf(buf, sizeof(buf), "%s", s);
	memset(want, 0, sizeof(int) * M_COUNT);
	for (char *save = NULL, *t = strtok_r(buf, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
		int m;
		for (m = 0; m < M_COUNT; m++)
			if (!strcmp(t, method_keys[m]))
				break;
		if (m == M_COUNT) {
			fprintf(stderr, "bench-download: --only: unknown method '%s'\n", t);
			return -1;
		}
		want[m] = 1;
	}
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"web-root", required_argument, NULL, 'W'},
	    {"work", required_argument, NULL, 'w'},
	    {"reps", required_argument, NULL, 'r'},
	    {"parallel", required_argument, NULL, 'P'},
	    {"chunkd", required_argument, NULL, 'c'},
	    {"nginx-sh", required_argument, NULL, 'N'},
	    {"only", required_argument, NULL, 'O'},
	    {"keep-logs", no_argument, NULL, 'K'},
	    {"strict", no_argument, NULL, 'S'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	static struct bench b;
	const char *work_parent = NULL;
	uint64_t reps = 3, parallel = 16;
	int strict = 0, want[M_COUNT] = {1, 1, 1, 1, 1}, c;
	char defbin[PATH_MAX + 16];

	b.nginx_sh = CHUNKD_SOURCE_DIR "/tests/servers/nginx.sh";
	while ((c = getopt_long(argc, argv, "W:w:r:P:c:N:h", opts, NULL)) != -1) {
		switch (c) {
		case 'W':
			b.root = optarg;
			break;
		case 'w':
			work_parent = optarg;
			break;
		case 'r':
			if (bench_parse_num("--reps", optarg, 1, 1000, &reps))
				return 2;
			break;
		case 'P':
			if (bench_parse_num("--parallel", optarg, 1, 1024, &parallel))
				return 2;
			break;
		case 'c':
			b.chunkd = optarg;
			break;
		case 'N':
			b.nginx_sh = optarg;
			break;
		case 'O':
			if (parse_only(optarg, want))
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
			fputs("Try 'bench-download --help'.\n", stderr);
			return 2;
		}
	}
	if (!b.root) {
		fputs("bench-download: --web-root is required\nTry 'bench-download --help'.\n",
		      stderr);
		return 2;
	}
	b.parallel = (unsigned)parallel;
	b.chunkd_extra = argv + optind;
	b.nextra = argc - optind;
	if (!work_parent)
		work_parent = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
	/* Absolute: the paths go into file:// URLs and to a daemon with another working dir. */
	char work_abs[PATH_MAX];
	if (!realpath(work_parent, work_abs))
		die("%s: %s", work_parent, strerror(errno));
	work_parent = work_abs;
	if (!b.chunkd) {
		char self[PATH_MAX];
		ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
		if (n < 0)
			die("/proc/self/exe: %s", strerror(errno));
		self[n] = '\0';
		char *slash = strrchr(self, '/');
		if (slash)
			*slash = '\0';
		snprintf(defbin, sizeof(defbin), "%s/chunkd", self);
		b.chunkd = defbin;
	}
	snprintf(b.name, sizeof(b.name), "bench-dl-%d", (int)getpid());

	scan_root(&b);
	char load0[64], load1[64], sz[32];
	bench_loadavg(load0, sizeof(load0));
	int r = bench_mkdtemp(work_parent, "bench-download.", b.work, sizeof(b.work));
	if (r < 0)
		die("mkdtemp in %s: %s", work_parent, strerror(-r));
	live_bench = &b;
	atexit(cleanup_at_exit);
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	signal(SIGHUP, on_signal);
	nginx_start(&b);

	/* Warm the origin once: every method then reads it from the page cache. */
	char path[PATH_MAX + 256];
	for (size_t i = 0; i < b.nchunks; i++)
		for (uint32_t f = 0; f < b.chunks[i].nfiles; f++) {
			snprintf(path, sizeof(path), "%s/%s/%s/%s", b.root, b.chunks[i].ds_hex,
				 b.chunks[i].id_hex, b.chunks[i].files[f].name);
			if (read_all(path) != (long long)b.chunks[i].files[f].size)
				die("%s: cannot read it whole", path);
		}

	printf("bench-download: %zu chunks, %zu files, %s from nginx on 127.0.0.1:%d (%s)\n",
	       b.nchunks, b.nfiles, bench_fmt_bytes((double)b.bytes, sz, sizeof(sz)), b.port,
	       b.root);
	printf("work dir %s; %llu repetitions, order rotated; origin read once before timing, "
	       "nothing dropped from the page cache\n",
	       b.work, (unsigned long long)reps);
	printf("%-4s %-8s %10s %9s %9s %10s\n", "rep", "method", "wall s", "(sync s)", "CPU s",
	       "peak RSS");
	fflush(stdout);

	struct sample *smp[M_COUNT];
	for (int m = 0; m < M_COUNT; m++) {
		smp[m] = calloc(reps, sizeof(*smp[m]));
		if (!smp[m])
			die("out of memory");
	}
	char out[PATH_MAX];
	out_dir(&b, out, sizeof(out));
	for (uint64_t rep = 0; rep < reps; rep++) {
		for (int k = 0; k < M_COUNT; k++) {
			int m = (int)((rep + (uint64_t)k) % M_COUNT);
			if (!want[m])
				continue;
			/* The same start for every method: no output of ours, nothing dirty. */
			r = bench_rm_rf(out);
			if (r < 0)
				die("rm -r %s: %s", out, strerror(-r));
			sync_all(&b);
			struct sample *s = &smp[m][rep];
			switch (m) {
			case M_CHUNKD:
				run_chunkd(&b, s);
				break;
			case M_CURL:
				run_curl(&b, s);
				break;
			case M_ARIA2:
				run_aria2(&b, s);
				break;
			case M_CP:
				run_cp(&b, s);
				break;
			case M_FLOOR:
				run_floor(&b, s);
				break;
			}
			char syn[32] = "-";
			if (m != M_CHUNKD && m != M_FLOOR)
				snprintf(syn, sizeof(syn), "%.3f", s->sync_s);
			printf("%-4llu %-8s %10.3f %9s %9.3f %7.1f MB\n",
			       (unsigned long long)rep + 1, method_keys[m], s->wall_s, syn,
			       s->cpu_s, (double)s->rss_kib / 1024);
			fflush(stdout);
		}
	}
	bench_rm_rf(out);
	bench_loadavg(load1, sizeof(load1));

	/* Medians over repetitions; ratios are medians of per-repetition ratios. */
	double *v = calloc(reps, sizeof(double));
	if (!v)
		die("out of memory");
	double wall[M_COUNT] = {0}, wmin[M_COUNT] = {0}, wmax[M_COUNT] = {0}, cpu[M_COUNT] = {0};
	double rss_max[M_COUNT] = {0}, vs_cp[M_COUNT] = {0}, syncm[M_COUNT] = {0};
	for (int m = 0; m < M_COUNT; m++) {
		if (!want[m])
			continue;
		for (uint64_t i = 0; i < reps; i++)
			v[i] = smp[m][i].wall_s;
		wmin[m] = bench_min(v, reps);
		wmax[m] = bench_max(v, reps);
		wall[m] = bench_median(v, reps);
		for (uint64_t i = 0; i < reps; i++)
			v[i] = smp[m][i].cpu_s;
		cpu[m] = bench_median(v, reps);
		for (uint64_t i = 0; i < reps; i++)
			v[i] = smp[m][i].sync_s;
		syncm[m] = bench_median(v, reps);
		for (uint64_t i = 0; i < reps; i++)
			v[i] = (double)smp[m][i].rss_kib;
		rss_max[m] = bench_max(v, reps) / 1024;
		if (want[M_CP]) {
			for (uint64_t i = 0; i < reps; i++)
				v[i] = smp[m][i].wall_s / smp[M_CP][i].wall_s;
			vs_cp[m] = bench_median(v, reps);
		}
	}
	double gb = (double)b.bytes / 1e9;
	char label[M_COUNT][96];
	snprintf(label[M_CHUNKD], sizeof(label[0]), "%s",
		 "chunkd: enqueue all, wait all (fsync, publish)");
	snprintf(label[M_CURL], sizeof(label[0]), "curl --parallel --parallel-max %u + sync",
		 b.parallel);
	snprintf(label[M_ARIA2], sizeof(label[0]), "aria2c -j %u --file-allocation=none + sync",
		 b.parallel);
	snprintf(label[M_CP], sizeof(label[0]), "cp -r + sync (the disk limit)");
	snprintf(label[M_FLOOR], sizeof(label[0]), "floor: splice socket->file, fsync (CPU ref.)");
	printf("\n%s in %zu files; median of %llu repetitions (min, max); CPU: chunkd's daemon, "
	       "else the tool + sync(1); RSS: daemon VmHWM, else the tool's maxrss (max over "
	       "reps)\n",
	       bench_fmt_bytes((double)b.bytes, sz, sizeof(sz)), b.nfiles,
	       (unsigned long long)reps);
	printf("%-48s %8s %8s %8s %8s %8s %10s %7s %9s\n", "method", "wall s", "min", "max",
	       "(sync s)", "MB/s", "vs cp+sync", "CPU s", "peak RSS");
	for (int m = 0; m < M_COUNT; m++) {
		if (!want[m])
			continue;
		char ratio[32] = "-", syn[32] = "-";
		if (want[M_CP])
			snprintf(ratio, sizeof(ratio), "%.2fx", vs_cp[m]);
		if (m != M_CHUNKD && m != M_FLOOR)
			snprintf(syn, sizeof(syn), "%.3f", syncm[m]);
		printf("%-48s %8.3f %8.3f %8.3f %8s %8.0f %10s %7.3f %6.1f MB\n", label[m], wall[m],
		       wmin[m], wmax[m], syn, (double)b.bytes / 1e6 / wall[m], ratio, cpu[m],
		       rss_max[m]);
	}

	/* Targets. */
	int missed = 0;
	char val[512], what[512], rat[64];
	for (int m = 0; m < M_COUNT; m++) {
		if (!want[m])
			continue;
		snprintf(what, sizeof(what), "download: %s", label[m]);
		char syn[48] = "";
		if (m != M_CHUNKD && m != M_FLOOR)
			snprintf(syn, sizeof(syn), " (sync %.2f s)", syncm[m]);
		snprintf(val, sizeof(val), "%.2f s%s, min %.2f, max %.2f; %.0f MB/s; CPU %.2f s; "
			 "peak RSS %.1f MB", wall[m], syn, wmin[m], wmax[m],
			 (double)b.bytes / 1e6 / wall[m], cpu[m], rss_max[m]);
		if (want[M_CP])
			snprintf(rat, sizeof(rat), "%.2fx cp+sync", vs_cp[m]);
		else
			snprintf(rat, sizeof(rat), "-");
		bench_row("download", what, val, rat, NULL, NULL);
	}
	printf("\n");
	if (want[M_CHUNKD] && want[M_CP]) {
		int pass = vs_cp[M_CHUNKD] <= 1.25;
		missed |= !pass;
		printf("target: chunkd wall <= 1.25x cp -r + sync:        %5.2fx       %s\n",
		       vs_cp[M_CHUNKD], pass ? "PASS" : "MISS");
		snprintf(val, sizeof(val), "%.2fx cp+sync", vs_cp[M_CHUNKD]);
		bench_row("download", "target: chunkd wall vs cp -r + sync", val, NULL, "<= 1.25x",
			  pass ? "PASS" : "MISS");
	}
	if (want[M_CHUNKD] && want[M_CURL]) {
		for (uint64_t i = 0; i < reps; i++)
			v[i] = smp[M_CHUNKD][i].wall_s / smp[M_CURL][i].wall_s;
		double x = bench_median(v, reps);
		int pass = x <= 0.8;
		missed |= !pass;
		printf("target: chunkd wall <= 0.8x curl --parallel+sync: %5.2fx       %s\n", x,
		       pass ? "PASS" : "MISS");
		snprintf(val, sizeof(val), "%.2fx curl", x);
		bench_row("download", "target: chunkd wall vs curl --parallel + sync", val, NULL,
			  "<= 0.8x", pass ? "PASS" : "MISS");
	}
	if (want[M_CHUNKD]) {
		double per_gb = cpu[M_CHUNKD] / gb;
		int pass = per_gb <= 0.5;
		missed |= !pass;
		printf("target: daemon CPU <= 0.5 s per GB:               %5.3f s/GB  %s\n", per_gb,
		       pass ? "PASS" : "MISS");
		snprintf(val, sizeof(val), "%.3f s/GB (%.3f s for %s)", per_gb, cpu[M_CHUNKD],
			 bench_fmt_bytes((double)b.bytes, sz, sizeof(sz)));
		char fl[64] = "-";
		if (want[M_FLOOR]) {
			double floor_gb = cpu[M_FLOOR] / gb;
			snprintf(fl, sizeof(fl), "%.2fx floor", per_gb / floor_gb);
			printf("        reference: the floor method's CPU      %5.3f s/GB  (%s: chunkd "
			       "%.2fx the floor)%s\n",
			       floor_gb, floor_gb > 0.5 ? "above the target" : "below the target",
			       per_gb / floor_gb,
			       floor_gb > 0.5 ? "; receiving and writing the bytes alone costs more "
						"here" : "");
			snprintf(what, sizeof(what), "%.3f s/GB (median of %llu runs)", floor_gb,
				 (unsigned long long)reps);
			bench_row("download", "reference: floor CPU per GB (splice, fsync, no checksum)",
				  what, NULL, NULL, NULL);
		}
		bench_row("download", "target: daemon CPU per GB", val, fl, "<= 0.5 s/GB",
			  pass ? "PASS" : "MISS");
		pass = rss_max[M_CHUNKD] <= 64;
		missed |= !pass;
		printf("target: daemon peak RSS <= 64 MB:                 %5.1f MB    %s\n",
		       rss_max[M_CHUNKD], pass ? "PASS" : "MISS");
		snprintf(val, sizeof(val), "%.1f MB (VmHWM, max of %llu runs)", rss_max[M_CHUNKD],
			 (unsigned long long)reps);
		bench_row("download", "target: daemon peak RSS", val, NULL, "<= 64 MB",
			  pass ? "PASS" : "MISS");
		printf("verified: chunkd published all %zu chunks, byte-identical to the origin "
		       "(chunkd_find + compare)\n", b.nchunks);
	}
	printf("load: %s before, %s after\n", load0, load1);
	for (int m = 0; m < M_COUNT; m++)
		free(smp[m]);
	free(v);
	return strict && missed ? 1 : 0;
}
