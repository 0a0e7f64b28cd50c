/*
 * harness.c — see harness.h.
 */
#include "harness.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "shm/atomics.h"
#include "shm/shm.h"

extern char **environ;

/* ---- environment ---------------------------------------------------------------------------- */

const char *th_bin_dir(void)
{
	return getenv("CHUNKD_BIN_DIR");
}

const char *th_source_dir(void)
{
	return getenv("CHUNKD_SOURCE_DIR");
}

static void skip_test(const char *why)
{
	fprintf(stderr, "SKIP: %s\n", why);
	exit(TH_EXIT_SKIP);
}

void th_require(void)
{
	char path[PATH_MAX];
	if (!th_bin_dir() || !th_source_dir())
		skip_test(
		    "CHUNKD_BIN_DIR and CHUNKD_SOURCE_DIR are not set (run the test via ctest)");
	snprintf(path, sizeof(path), "%s/chunkd", th_bin_dir());
	if (access(path, X_OK) < 0)
		skip_test("the chunkd binary is not built");
	snprintf(path, sizeof(path), "%s/scripts/gen-chunks.py", th_source_dir());
	if (access(path, R_OK) < 0)
		skip_test("scripts/gen-chunks.py is missing");
	const char *const argv[] = {"python3", "-c", "import json, hashlib", NULL};
	if (!th_exited_with(th_run(argv, "/dev/null", "/dev/null", 30000), 0))
		skip_test("python3 is not available");
}

/* ---- time and deadlines --------------------------------------------------------------------- */

uint64_t th_now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void th_deadline_start(struct th_deadline *d, int timeout_ms)
{
	d->end_ns = th_now_ns() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0) * 1000000ull;
}

int th_deadline_passed(const struct th_deadline *d)
{
	return th_now_ns() >= d->end_ns;
}

int th_deadline_left_ms(const struct th_deadline *d)
{
	uint64_t now = th_now_ns();
	return now >= d->end_ns ? 0 : (int)((d->end_ns - now + 999999) / 1000000);
}

void th_pause(void)
{
	struct timespec ts = {.tv_sec = 0, .tv_nsec = TH_POLL_NS};
	nanosleep(&ts, NULL);
}

int th_wait(int (*cond)(void *arg), void *arg, int timeout_ms)
{
	struct th_deadline dl;
	th_deadline_start(&dl, timeout_ms);
	for (;;) {
		if (cond(arg))
			return 0;
		if (th_deadline_passed(&dl))
			return cond(arg) ? 0 : -ETIMEDOUT;
		th_pause();
	}
}

/* ---- files ---------------------------------------------------------------------------------- */

int th_mkdtemp(char *out, size_t len)
{
	const char *tmp = getenv("TMPDIR");
	char tmpl[PATH_MAX], real[PATH_MAX];
	snprintf(tmpl, sizeof(tmpl), "%s/chunkd-test-XXXXXX", tmp && *tmp ? tmp : "/tmp");
	if (!mkdtemp(tmpl)) {
		int e = errno;
		fprintf(stderr, "harness: mkdtemp %s: %s\n", tmpl, strerror(e));
		return -e;
	}
	/* The daemon publishes real paths; compare like with like. */
	if (!realpath(tmpl, real)) {
		int e = errno;
		fprintf(stderr, "harness: realpath %s: %s\n", tmpl, strerror(e));
		rmdir(tmpl);
		return -e;
	}
	if (strlen(real) >= len) {
		rmdir(tmpl);
		return -ENAMETOOLONG;
	}
	strcpy(out, real);
	return 0;
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	int r = flag == FTW_DP ? rmdir(path) : unlink(path);
	if (r < 0 && errno != ENOENT)
		fprintf(stderr, "harness: cannot remove %s: %s\n", path, strerror(errno));
	return 0;
}

int th_rm_rf(const char *path)
{
	if (!path || !*path)
		return 0;
	if (!th_exists(path))
		return 0;
	if (nftw(path, rm_one, 32, FTW_DEPTH | FTW_PHYS) < 0)
		return -errno;
	return th_exists(path) ? -ENOTEMPTY : 0;
}

int th_mkdirs(const char *path, mode_t mode)
{
	char buf[PATH_MAX];
	if (strlen(path) >= sizeof(buf))
		return -ENAMETOOLONG;
	strcpy(buf, path);
	for (char *p = buf + 1;; p++) {
		if (*p == '/' || *p == '\0') {
			char saved = *p;
			*p = '\0';
			if (mkdir(buf, mode) < 0 && errno != EEXIST) {
				int e = errno;
				fprintf(stderr, "harness: mkdir %s: %s\n", buf, strerror(e));
				return -e;
			}
			*p = saved;
			if (saved == '\0')
				return 0;
		}
	}
}

char *th_read_file(const char *path, size_t *len)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return NULL;
	size_t cap = 4096, n = 0;
	char *buf = malloc(cap);
	for (;;) {
		if (!buf)
			break;
		if (n + 1 >= cap) {
			char *p = realloc(buf, cap * 2);
			if (!p) {
				free(buf);
				buf = NULL;
				break;
			}
			buf = p;
			cap *= 2;
		}
		ssize_t r = read(fd, buf + n, cap - 1 - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			int e = errno;
			free(buf);
			buf = NULL;
			errno = e;
			break;
		}
		if (r == 0) {
			buf[n] = '\0';
			if (len)
				*len = n;
			break;
		}
		n += (size_t)r;
	}
	int e = errno;
	close(fd);
	errno = e;
	return buf;
}

int th_write_file(const char *path, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		int e = errno;
		fprintf(stderr, "harness: create %s: %s\n", path, strerror(e));
		return -e;
	}
	const char *p = buf;
	while (len) {
		ssize_t w = write(fd, p, len);
		if (w < 0 && errno == EINTR)
			continue;
		if (w < 0) {
			int e = errno;
			fprintf(stderr, "harness: write %s: %s\n", path, strerror(e));
			close(fd);
			return -e;
		}
		p += w;
		len -= (size_t)w;
	}
	if (close(fd) < 0)
		return -errno;
	return 0;
}

int th_file_contains(const char *path, const char *needle)
{
	char *s = th_read_file(path, NULL);
	if (!s)
		return -errno;
	int found = strstr(s, needle) != NULL;
	free(s);
	return found;
}

int th_wait_file_contains(const char *path, const char *needle, int timeout_ms)
{
	struct th_deadline dl;
	th_deadline_start(&dl, timeout_ms);
	for (;;) {
		if (th_file_contains(path, needle) == 1)
			return 0;
		if (th_deadline_passed(&dl))
			break;
		th_pause();
	}
	char *s = th_read_file(path, NULL);
	fprintf(stderr, "harness: %s does not contain \"%s\" after %d ms; it holds:\n%s\n", path,
		needle, timeout_ms, s ? s : "(unreadable)");
	free(s);
	return -ETIMEDOUT;
}

int th_count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	if (!d)
		return -errno;
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			n++;
	closedir(d);
	return n;
}

int th_exists(const char *path)
{
	struct stat st;
	return lstat(path, &st) == 0;
}

/* ---- processes ------------------------------------------------------------------------------ */

int th_spawn(pid_t *pid, const char *const argv[], const char *out_path, const char *err_path)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t at;
	sigset_t none, all;
	int r;

	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&at);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	if (out_path)
		posix_spawn_file_actions_addopen(&fa, 1, out_path, O_WRONLY | O_CREAT | O_APPEND,
						 0644);
	if (err_path && out_path && !strcmp(err_path, out_path))
		posix_spawn_file_actions_adddup2(&fa, 1, 2);
	else if (err_path)
		posix_spawn_file_actions_addopen(&fa, 2, err_path, O_WRONLY | O_CREAT | O_APPEND,
						 0644);
	/* Whatever the test blocked or redirected, the program starts with the defaults. */
	sigemptyset(&none);
	sigfillset(&all);
	sigdelset(&all, SIGKILL);
	sigdelset(&all, SIGSTOP);
	posix_spawnattr_setsigmask(&at, &none);
	posix_spawnattr_setsigdefault(&at, &all);
	posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
	fflush(NULL);
	r = posix_spawnp(pid, argv[0], &fa, &at, (char *const *)argv, environ);
	posix_spawnattr_destroy(&at);
	posix_spawn_file_actions_destroy(&fa);
	if (r) {
		fprintf(stderr, "harness: cannot spawn %s: %s\n", argv[0], strerror(r));
		return -r;
	}
	return 0;
}

int th_wait_pid(pid_t pid, int timeout_ms, int *status)
{
	struct th_deadline dl;
	th_deadline_start(&dl, timeout_ms);
	for (;;) {
		int st;
		pid_t r = waitpid(pid, &st, WNOHANG);
		if (r == pid) {
			if (status)
				*status = st;
			return 0;
		}
		if (r < 0 && errno != EINTR)
			return -errno;
		if (th_deadline_passed(&dl))
			return -ETIMEDOUT;
		th_pause();
	}
}

int th_run(const char *const argv[], const char *out_path, const char *err_path, int timeout_ms)
{
	pid_t pid;
	int st, r = th_spawn(&pid, argv, out_path, err_path);
	if (r < 0)
		return r;
	r = th_wait_pid(pid, timeout_ms, &st);
	if (r == -ETIMEDOUT) {
		fprintf(stderr, "harness: %s did not finish in %d ms; killing it\n", argv[0],
			timeout_ms);
		kill(pid, SIGKILL);
		waitpid(pid, NULL, 0);
	}
	return r < 0 ? r : st;
}

const char *th_status_str(int status, char *buf, size_t len)
{
	if (status == -ETIMEDOUT)
		snprintf(buf, len, "timed out");
	else if (status < 0)
		snprintf(buf, len, "error: %s", strerror(-status));
	else if (WIFEXITED(status))
		snprintf(buf, len, "exit %d", WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(buf, len, "signal %d (%s)", WTERMSIG(status), strsignal(WTERMSIG(status)));
	else
		snprintf(buf, len, "wait status 0x%x", (unsigned)status);
	return buf;
}

int th_exited_with(int status, int code)
{
	return status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == code;
}

/* ---- ids and CRC32C ------------------------------------------------------------------------- */

uint32_t th_crc32c(uint32_t crc, const void *buf, size_t len)
{
	const uint8_t *p = buf;
	crc = ~crc;
	while (len--) {
		crc ^= *p++;
		for (int k = 0; k < 8; k++)
			crc = crc & 1 ? (crc >> 1) ^ 0x82F63B78u : crc >> 1;
	}
	return ~crc;
}

void th_hex(const chunkd_id *id, char out[2 * CHUNKD_ID_SIZE + 1])
{
	static const char digits[] = "0123456789abcdef";
	for (int i = 0; i < CHUNKD_ID_SIZE; i++) {
		out[2 * i] = digits[id->bytes[i] >> 4];
		out[2 * i + 1] = digits[id->bytes[i] & 15];
	}
	out[2 * CHUNKD_ID_SIZE] = '\0';
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

int th_unhex(const char *hex, chunkd_id *out)
{
	if (strlen(hex) != 2 * CHUNKD_ID_SIZE)
		return -EINVAL;
	for (int i = 0; i < CHUNKD_ID_SIZE; i++) {
		int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -EINVAL;
		out->bytes[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

int th_id_order(const chunkd_id *a, const chunkd_id *b)
{
	for (int i = 0; i < 4; i++) {
		uint64_t x, y;
		memcpy(&x, a->bytes + 8 * i, 8);
		memcpy(&y, b->bytes + 8 * i, 8);
		if (x != y)
			return x < y ? -1 : 1;
	}
	return 0;
}

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

uint64_t th_seed(void)
{
	static uint64_t seed;
	static int done;
	if (!done) {
		const char *env = getenv("CHUNKD_TEST_SEED");
		seed =
		    env && *env ? strtoull(env, NULL, 0) : th_now_ns() ^ (uint64_t)getpid() << 32;
		fprintf(stderr,
			"harness: random seed %" PRIu64 " (set CHUNKD_TEST_SEED to repeat)\n",
			seed);
		done = 1;
	}
	return seed;
}

uint64_t th_rand(uint64_t *state)
{
	return splitmix64(state);
}

void th_make_id(chunkd_id *out, uint32_t tag, uint32_t n)
{
	uint64_t s = ((uint64_t)tag << 32 | n) ^ 0x63686b6474657374ull; /* "chkdtest" */
	for (int i = 0; i < 4; i++) {
		uint64_t w = splitmix64(&s);
		memcpy(out->bytes + 8 * i, &w, 8);
	}
}

/* ---- the generator's manifest --------------------------------------------------------------- */

/*
 * Turns the JSON manifest into lines that C parses without a JSON reader; the file names come
 * last so they may contain spaces. The "end" line proves the conversion ran to completion.
 */
static const char manifest_to_lines[] =
    "import json, sys\n"
    "m = json.load(open(sys.argv[1]))\n"
    "with open(sys.argv[2], 'w') as o:\n"
    "    for c in m['chunks']:\n"
    "        o.write('chunk %s %s %d %d %d %s\\n' % (c['id'], c['dataset'], c['first'],\n"
    "                c['end'], len(c['files']), c['dir']))\n"
    "        for f in c['files']:\n"
    "            crc = f.get('crc32c')\n"
    "            o.write('file %d %s %s\\n' % (f['size'], '-' if crc is None else\n"
    "                    '%08x' % crc, f['name']))\n"
    "    o.write('end %d\\n' % len(m['chunks']))\n";

static int sorted_cmp(const void *pa, const void *pb)
{
	const struct th_chunk *a = *(struct th_chunk *const *)pa,
			      *b = *(struct th_chunk *const *)pb;
	int c = memcmp(a->dataset.bytes, b->dataset.bytes, CHUNKD_ID_SIZE);
	if (c)
		return c;
	return a->first < b->first ? -1 : a->first > b->first;
}

static int parse_lines(char *text, struct th_manifest *m, const char *what)
{
	size_t nchunks = 0, nfiles = 0;
	for (char *p = text; (p = strchr(p, '\n')); p++)
		nfiles++; /* an upper bound of both counts */
	nchunks = nfiles;
	m->chunks = calloc(nchunks ? nchunks : 1, sizeof(*m->chunks));
	m->files = calloc(nfiles ? nfiles : 1, sizeof(*m->files));
	m->datasets = calloc(nchunks ? nchunks : 1, sizeof(*m->datasets));
	if (!m->chunks || !m->files || !m->datasets)
		return -ENOMEM;
	size_t nf = 0, lineno = 0;
	int ended = 0;
	struct th_chunk *cur = NULL;
	char *save = NULL;
	for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
		char a[80], b[80];
		uint64_t x, y;
		unsigned k;
		int off = -1;
		lineno++;
		if (ended)
			goto bad;
		if (!strncmp(line, "chunk ", 6)) {
			if (sscanf(line, "chunk %79s %79s %" SCNu64 " %" SCNu64 " %u %n", a, b, &x,
				   &y, &k, &off) != 5 ||
			    off < 0 || !line[off])
				goto bad;
			if (cur && cur->nfiles != (uint32_t)(&m->files[nf] - cur->files))
				goto bad;
			cur = &m->chunks[m->n++];
			if (th_unhex(a, &cur->id) || th_unhex(b, &cur->dataset) || x >= y ||
			    k > CHUNKD_MAX_FILES || strlen(line + off) >= sizeof(cur->dir))
				goto bad;
			strcpy(cur->id_hex, a);
			strcpy(cur->dataset_hex, b);
			cur->first = x;
			cur->end = y;
			cur->nfiles = k;
			cur->files = &m->files[nf];
			strcpy(cur->dir, line + off);
		} else if (!strncmp(line, "file ", 5)) {
			if (!cur || sscanf(line, "file %" SCNu64 " %79s %n", &x, a, &off) != 2 ||
			    off < 0 || !line[off] || strlen(line + off) > CHUNKD_MAX_NAME ||
			    (uint32_t)(&m->files[nf] - cur->files) >= cur->nfiles)
				goto bad;
			struct th_file *f = &m->files[nf++];
			f->size = x;
			strcpy(f->name, line + off);
			if (strcmp(a, "-")) {
				char *end;
				f->crc32c = (uint32_t)strtoul(a, &end, 16);
				if (*end || strlen(a) != 8)
					goto bad;
				f->has_crc = 1;
			}
		} else if (sscanf(line, "end %u", &k) == 1 && k == m->n) {
			if (cur && cur->nfiles != (uint32_t)(&m->files[nf] - cur->files))
				goto bad;
			ended = 1;
		} else {
			goto bad;
		}
	}
	if (!ended) {
		fprintf(stderr, "harness: %s: truncated (no end line)\n", what);
		return -EINVAL;
	}

	/* The look-up order and the distinct datasets. */
	m->sorted = calloc(m->n ? m->n : 1, sizeof(*m->sorted));
	if (!m->sorted)
		return -ENOMEM;
	for (size_t i = 0; i < m->n; i++) {
		m->sorted[i] = &m->chunks[i];
		size_t j;
		for (j = 0; j < m->ndatasets; j++)
			if (!memcmp(&m->datasets[j], &m->chunks[i].dataset, sizeof(chunkd_id)))
				break;
		if (j == m->ndatasets)
			m->datasets[m->ndatasets++] = m->chunks[i].dataset;
	}
	qsort(m->sorted, m->n, sizeof(*m->sorted), sorted_cmp);
	return 0;
bad:
	fprintf(stderr, "harness: %s: line %zu is malformed\n", what, lineno);
	return -EINVAL;
}

int th_manifest_load(const char *manifest_json, struct th_manifest *m)
{
	char lines[PATH_MAX], err[PATH_MAX];
	memset(m, 0, sizeof(*m));
	snprintf(lines, sizeof(lines), "%s.lines", manifest_json);
	snprintf(err, sizeof(err), "%s.err", manifest_json);
	const char *const argv[] = {"python3", "-c", manifest_to_lines, manifest_json, lines, NULL};
	int st = th_run(argv, NULL, err, 60000);
	if (!th_exited_with(st, 0)) {
		char why[64], *msg = th_read_file(err, NULL);
		fprintf(stderr, "harness: converting %s failed (%s):\n%s\n", manifest_json,
			th_status_str(st, why, sizeof(why)), msg ? msg : "");
		free(msg);
		return st < 0 ? st : -EIO;
	}
	char *text = th_read_file(lines, NULL);
	if (!text)
		return -errno;
	int r = parse_lines(text, m, lines);
	free(text);
	if (r < 0)
		th_manifest_free(m);
	return r;
}

int th_gen_chunks(const char *data_dir, const char *manifest_json, const char *const args[],
		  struct th_manifest *m)
{
	char script[PATH_MAX], err[PATH_MAX];
	const char *argv[64];
	size_t n = 0;
	snprintf(script, sizeof(script), "%s/scripts/gen-chunks.py", th_source_dir());
	snprintf(err, sizeof(err), "%s.gen-err", manifest_json);
	argv[n++] = "python3";
	argv[n++] = script;
	argv[n++] = "--out";
	argv[n++] = data_dir;
	argv[n++] = "--manifest";
	argv[n++] = manifest_json;
	for (size_t i = 0; args && args[i]; i++) {
		if (n + 2 > sizeof(argv) / sizeof(argv[0]))
			return -E2BIG;
		argv[n++] = args[i];
	}
	argv[n] = NULL;
	int st = th_run(argv, NULL, err, 120000);
	if (!th_exited_with(st, 0)) {
		char why[64], *msg = th_read_file(err, NULL);
		fprintf(stderr, "harness: gen-chunks.py failed (%s):\n%s\n",
			th_status_str(st, why, sizeof(why)), msg ? msg : "");
		free(msg);
		return st < 0 ? st : -EIO;
	}
	return th_manifest_load(manifest_json, m);
}

void th_manifest_free(struct th_manifest *m)
{
	free(m->chunks);
	free(m->files);
	free(m->sorted);
	free(m->datasets);
	memset(m, 0, sizeof(*m));
}

const struct th_chunk *th_manifest_find(const struct th_manifest *m, const chunkd_id *dataset,
					uint64_t block)
{
	/* The last chunk ordered at or before (dataset, block). */
	size_t lo = 0, hi = m->n;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		const struct th_chunk *c = m->sorted[mid];
		int d = memcmp(c->dataset.bytes, dataset->bytes, CHUNKD_ID_SIZE);
		if (d < 0 || (d == 0 && c->first <= block))
			lo = mid + 1;
		else
			hi = mid;
	}
	if (lo == 0)
		return NULL;
	const struct th_chunk *c = m->sorted[lo - 1];
	if (memcmp(c->dataset.bytes, dataset->bytes, CHUNKD_ID_SIZE) || block >= c->end)
		return NULL;
	return c;
}

const struct th_chunk *th_manifest_by_id(const struct th_manifest *m, const chunkd_id *id)
{
	for (size_t i = 0; i < m->n; i++)
		if (!memcmp(&m->chunks[i].id, id, sizeof(*id)))
			return &m->chunks[i];
	return NULL;
}

uint64_t th_manifest_max_end(const struct th_manifest *m, const chunkd_id *dataset)
{
	uint64_t end = 0;
	for (size_t i = 0; i < m->n; i++)
		if (!memcmp(&m->chunks[i].dataset, dataset, sizeof(*dataset)) &&
		    m->chunks[i].end > end)
			end = m->chunks[i].end;
	return end;
}

/* ---- writing chunk directories by hand ------------------------------------------------------ */

void th_chunk_dir_name(char *out, size_t len, uint64_t first, uint64_t end, const chunkd_id *id)
{
	char hex[2 * CHUNKD_ID_SIZE + 1];
	th_hex(id, hex);
	snprintf(out, len, "%020" PRIu64 "-%020" PRIu64 "-%s", first, end, hex);
}

int th_write_meta(const char *chunk_dir, const chunkd_id *dataset, const chunkd_id *id,
		  uint64_t first, uint64_t end, uint32_t nfiles, const struct th_file *files)
{
	char ds_hex[2 * CHUNKD_ID_SIZE + 1], id_hex[2 * CHUNKD_ID_SIZE + 1], path[PATH_MAX];
	size_t cap = 512 + (size_t)nfiles * (CHUNKD_MAX_NAME + 64), n = 0;
	char *buf = malloc(cap);
	if (!buf)
		return -ENOMEM;
	th_hex(dataset, ds_hex);
	th_hex(id, id_hex);
	n += (size_t)snprintf(buf + n, cap - n,
			      "chunkd-meta 1\nid %s\ndataset %s\nfirst_block %" PRIu64
			      "\nend_block %" PRIu64 "\nfiles %u\n",
			      id_hex, ds_hex, first, end, nfiles);
	for (uint32_t i = 0; i < nfiles; i++) {
		char crc[16] = "-";
		if (files[i].has_crc)
			snprintf(crc, sizeof(crc), "%08x", files[i].crc32c);
		n += (size_t)snprintf(buf + n, cap - n, "file %" PRIu64 " %s %s\n", files[i].size,
				      crc, files[i].name);
	}
	n += (size_t)snprintf(buf + n, cap - n, "end\n");
	snprintf(path, sizeof(path), "%s/%s", chunk_dir, CHUNKD_META_NAME);
	int r = th_write_file(path, buf, n);
	free(buf);
	return r;
}

int th_write_chunk(const char *data_dir, const chunkd_id *dataset, const chunkd_id *id,
		   uint64_t first, uint64_t end, uint32_t nfiles, uint64_t file_size, char *dir_out,
		   size_t dir_len)
{
	char ds_hex[2 * CHUNKD_ID_SIZE + 1], name[160], dir[PATH_MAX], path[PATH_MAX + 32];
	struct th_file *files = calloc(nfiles ? nfiles : 1, sizeof(*files));
	uint8_t *data = malloc(file_size ? file_size : 1);
	int r = -ENOMEM;
	if (!files || !data)
		goto out;
	th_hex(dataset, ds_hex);
	th_chunk_dir_name(name, sizeof(name), first, end, id);
	snprintf(dir, sizeof(dir), "%s/chunks/%s/%s", data_dir, ds_hex, name);
	r = th_mkdirs(dir, 0755);
	if (r < 0)
		goto out;
	for (uint32_t k = 0; k < nfiles; k++) {
		struct th_file *f = &files[k];
		snprintf(f->name, sizeof(f->name), "file%u.bin", k);
		for (uint64_t i = 0; i < file_size; i++)
			data[i] = (uint8_t)(id->bytes[i % CHUNKD_ID_SIZE] ^ (i * 7 + k));
		f->size = file_size;
		f->crc32c = th_crc32c(0, data, file_size);
		f->has_crc = 1;
		if (snprintf(path, sizeof(path), "%s/%s", dir, f->name) >= (int)sizeof(path)) {
			r = -ENAMETOOLONG;
			goto out;
		}
		r = th_write_file(path, data, file_size);
		if (r < 0)
			goto out;
	}
	r = th_write_meta(dir, dataset, id, first, end, nfiles, files);
	if (r == 0 && dir_out)
		snprintf(dir_out, dir_len, "%s", dir);
out:
	free(files);
	free(data);
	return r;
}

/* ---- instances ------------------------------------------------------------------------------ */

void th_instance_name(char *out, size_t len, const char *tag)
{
	static unsigned counter;
	snprintf(out, len, "t-%.24s-%d-%u", tag, (int)getpid(), counter++);
}

void th_shm_unlink(const char *name)
{
	static const char *const suffixes[] = {"cat", "req", "lock"};
	char obj[128];
	if (!name || !*name)
		return;
	for (int i = 0; i < 3; i++) {
		snprintf(obj, sizeof(obj), "/chunkd.%s.%s", name, suffixes[i]);
		shm_unlink(obj);
	}
}

int th_shm_exists(const char *name, const char *suffix)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "/dev/shm/chunkd.%s.%s", name, suffix);
	return th_exists(path);
}

/* ---- the request segment, inspected read-only ----------------------------------------------- */

int th_client_slot(const char *name, pid_t pid, uint32_t *pins)
{
	struct chunkd_req_map m;
	int r = chunkd__req_attach(name, 0, &m, NULL, 0);
	if (r < 0)
		return r;
	r = -ENOENT;
	for (uint32_t i = 0; i < m.geom.max_clients; i++) {
		const struct chunkd_req_client *cl = chunkd__req_client(&m, i);
		/* Pairs with the client's seq_cst CAS of its owner word and the daemon's reap. */
		uint64_t owner = chunkd__load_acquire(&cl->ctl.owner);
		if (owner != 0 && owner != CHUNKD_OWNER_RECLAIM && CHUNKD_OWNER_PID(owner) == pid) {
			if (pins)
				*pins = chunkd__pins_held(cl);
			r = (int)i;
			break;
		}
	}
	chunkd__req_detach(&m);
	return r;
}

int th_client_owner(const char *name, uint32_t slot, uint64_t *owner)
{
	struct chunkd_req_map m;
	int r = chunkd__req_attach(name, 0, &m, NULL, 0);
	if (r < 0)
		return r;
	if (slot >= m.geom.max_clients) {
		chunkd__req_detach(&m);
		return -ERANGE;
	}
	/* Pairs with the client's seq_cst CAS of its owner word and the daemon's reap. */
	*owner = chunkd__load_acquire(&chunkd__req_client(&m, slot)->ctl.owner);
	chunkd__req_detach(&m);
	return 0;
}

/* Slots not free, those of them naming pid (when pid > 0), and those being reclaimed. */
static int count_slots(const char *name, pid_t pid, int *of_pid, int *reclaiming)
{
	struct chunkd_req_map m;
	int r = chunkd__req_attach(name, 0, &m, NULL, 0);
	if (r < 0)
		return r;
	int n = 0;
	*of_pid = *reclaiming = 0;
	for (uint32_t i = 0; i < m.geom.max_clients; i++) {
		/* Pairs with the client's seq_cst CAS of its owner word and the daemon's reap. */
		uint64_t owner = chunkd__load_acquire(&chunkd__req_client(&m, i)->ctl.owner);
		if (!owner)
			continue;
		n++;
		if (owner == CHUNKD_OWNER_RECLAIM)
			(*reclaiming)++;
		else if (pid > 0 && CHUNKD_OWNER_PID(owner) == pid)
			(*of_pid)++;
	}
	chunkd__req_detach(&m);
	return n;
}

int th_clients_in_use(const char *name, pid_t pid)
{
	int of_pid, reclaiming;
	int n = count_slots(name, pid, &of_pid, &reclaiming);
	return n < 0 || pid <= 0 ? n : of_pid;
}

int th_ring_doorbell(const char *name)
{
	struct chunkd_req_map m;
	int r = chunkd__req_attach(name, 1, &m, NULL, 0);
	if (r < 0)
		return r;
	chunkd__doorbell_ring(m.hdr);
	chunkd__req_detach(&m);
	return 0;
}

int th_need_wake(const char *name)
{
	struct chunkd_req_map m;
	int r = chunkd__req_attach(name, 0, &m, NULL, 0);
	if (r < 0)
		return r;
	/* Pairs with the daemon loop's seq_cst store of 1 before it may block. */
	r = (int)(chunkd__load_seq_cst(&m.hdr->need_wake) & 0x7fffffff);
	chunkd__req_detach(&m);
	return r;
}

int64_t th_index_flips(const char *name)
{
	struct chunkd_cat_map m;
	int r = chunkd__cat_attach(name, 0, &m, NULL, 0);
	if (r < 0)
		return r;
	/* Pairs with the daemon's seq_cst increment after a publication. */
	int64_t f = (int64_t)(chunkd__load_seq_cst(&m.hdr->index_flips) & INT64_MAX);
	chunkd__cat_detach(&m);
	return f;
}

/* ---- the daemon ----------------------------------------------------------------------------- */

int th_daemon_start(struct th_daemon *d, const char *name, const char *data_dir,
		    const char *log_path, const char *const extra[])
{
	char bin[PATH_MAX];
	const char *argv[64];
	size_t n = 0;
	memset(d, 0, sizeof(*d));
	snprintf(d->name, sizeof(d->name), "%s", name);
	snprintf(d->data_dir, sizeof(d->data_dir), "%s", data_dir);
	snprintf(d->log, sizeof(d->log), "%s", log_path);
	snprintf(bin, sizeof(bin), "%s/chunkd", th_bin_dir());
	argv[n++] = bin;
	argv[n++] = "--data-dir";
	argv[n++] = data_dir;
	argv[n++] = "--name";
	argv[n++] = name;
	for (size_t i = 0; extra && extra[i]; i++) {
		if (n + 2 > sizeof(argv) / sizeof(argv[0]))
			return -E2BIG;
		argv[n++] = extra[i];
	}
	argv[n] = NULL;
	/* A fresh log per daemon: tests look for lines this daemon wrote. */
	int fd = open(log_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0) {
		int e = errno;
		fprintf(stderr, "harness: %s: %s\n", log_path, strerror(e));
		return -e;
	}
	close(fd);
	int r = th_spawn(&d->pid, argv, log_path, log_path);
	if (r < 0)
		return r;
	d->running = 1;
	return 0;
}

int th_daemon_running(struct th_daemon *d)
{
	if (!d->running)
		return 0;
	int st;
	pid_t r = waitpid(d->pid, &st, WNOHANG);
	if (r == d->pid) {
		d->running = 0;
		d->status = st;
		return 0;
	}
	return 1;
}

void th_daemon_dump_log(const struct th_daemon *d)
{
	char *s = th_read_file(d->log, NULL);
	fprintf(stderr, "---- %s (daemon pid %d, instance %s) ----\n%s---- end ----\n", d->log,
		(int)d->pid, d->name, s ? s : "(unreadable)\n");
	free(s);
}

int th_daemon_wait_ready(struct th_daemon *d, int timeout_ms, chunkd_instance_info *info)
{
	struct th_deadline dl;
	char why[64];
	int last = 0, mine = 0;
	chunkd_client *c = NULL;
	chunkd_instance_info in;
	memset(&in, 0, sizeof(in));
	th_deadline_start(&dl, timeout_ms);
	for (;;) {
		if (!th_daemon_running(d)) {
			chunkd_close(c);
			fprintf(stderr, "harness: daemon %d exited before READY (%s)\n",
				(int)d->pid, th_status_str(d->status, why, sizeof(why)));
			th_daemon_dump_log(d);
			return -ECHILD;
		}
		if (!c) {
			mine = th_clients_in_use(d->name, getpid());
			if (mine < 0)
				mine = 0; /* no segments yet */
			last = chunkd_open(d->name, &c);
			if (last)
				c = NULL;
		}
		if (c) {
			last = chunkd_info(c, &in);
			if (last || in.daemon_pid != d->pid) {
				/* Still the predecessor's: look again. */
				chunkd_close(c);
				c = NULL;
			} else if (in.state == CHUNKD_STATE_READY) {
				break;
			}
		}
		if (th_deadline_passed(&dl)) {
			chunkd_close(c);
			fprintf(
			    stderr,
			    "harness: daemon %d not READY after %d ms (last chunkd_open/info: %d "
			    "%s; pid %d, state %u)\n",
			    (int)d->pid, timeout_ms, last, chunkd_strerror(last),
			    (int)in.daemon_pid, in.state);
			th_daemon_dump_log(d);
			return -ETIMEDOUT;
		}
		th_pause();
	}
	chunkd_close(c);
	if (info)
		*info = in;
	/* Only the daemon frees a closed client's slot: wait until it has, and has finished every
	 * reclaim (a slot being reclaimed is not free yet either). */
	for (;;) {
		int of_pid, reclaiming;
		if (count_slots(d->name, getpid(), &of_pid, &reclaiming) >= 0 && of_pid <= mine &&
		    reclaiming == 0)
			break;
		if (th_deadline_passed(&dl)) {
			fprintf(stderr,
				"harness: daemon %d is READY but does not free a closed "
				"client's slot\n",
				(int)d->pid);
			th_daemon_dump_log(d);
			return -ETIMEDOUT;
		}
		th_pause();
	}
	return 0;
}

int th_daemon_wait_exit(struct th_daemon *d, int timeout_ms)
{
	struct th_deadline dl;
	th_deadline_start(&dl, timeout_ms);
	while (th_daemon_running(d)) {
		if (th_deadline_passed(&dl)) {
			fprintf(stderr, "harness: daemon %d still running after %d ms\n",
				(int)d->pid, timeout_ms);
			return -ETIMEDOUT;
		}
		th_pause();
	}
	return d->status;
}

int th_daemon_stop(struct th_daemon *d, int timeout_ms)
{
	if (!th_daemon_running(d))
		return d->status;
	kill(d->pid, SIGTERM);
	int r = th_daemon_wait_exit(d, timeout_ms);
	if (r == -ETIMEDOUT) {
		th_daemon_dump_log(d);
		th_daemon_cleanup(d);
	}
	return r;
}

int th_daemon_kill(struct th_daemon *d, int timeout_ms)
{
	if (!th_daemon_running(d))
		return d->status;
	kill(d->pid, SIGKILL);
	return th_daemon_wait_exit(d, timeout_ms);
}

void th_daemon_cleanup(struct th_daemon *d)
{
	if (!d->running || d->pid <= 0)
		return;
	kill(d->pid, SIGKILL);
	if (th_daemon_wait_exit(d, 10000) == -ETIMEDOUT)
		fprintf(stderr, "harness: daemon %d survives SIGKILL\n", (int)d->pid);
}

/* ---- client children ------------------------------------------------------------------------ */

/* Pids of children still running, so that th_env_fini() can kill those a failed test left
 * behind (the th_child structs themselves may be gone with the failed test's stack frame). */
#define MAX_CHILDREN 256
static pid_t children[MAX_CHILDREN];

static void child_register(pid_t pid)
{
	for (int i = 0; i < MAX_CHILDREN; i++)
		if (!children[i]) {
			children[i] = pid;
			return;
		}
}

static void child_unregister(pid_t pid)
{
	for (int i = 0; i < MAX_CHILDREN; i++)
		if (children[i] == pid)
			children[i] = 0;
}

int th_child_start(struct th_child *c, th_child_fn fn, void *arg)
{
	int up[2], down[2];
	memset(c, 0, sizeof(*c));
	c->rfd = c->wfd = -1;
	if (pipe2(up, O_CLOEXEC) < 0)
		return -errno;
	if (pipe2(down, O_CLOEXEC) < 0) {
		int e = errno;
		close(up[0]);
		close(up[1]);
		return -e;
	}
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0) {
		int e = errno;
		close(up[0]);
		close(up[1]);
		close(down[0]);
		close(down[1]);
		return -e;
	}
	if (pid == 0) {
		/* cmocka's handlers would longjmp into the parent's test state: crash plainly. */
		static const int sigs[] = {SIGSEGV, SIGBUS, SIGILL, SIGFPE,
					   SIGABRT, SIGSYS, SIGALRM};
		for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++)
			signal(sigs[i], SIG_DFL);
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		close(up[0]);
		close(down[1]);
		c->pid = getpid();
		c->wfd = up[1];
		c->rfd = down[0];
		c->running = 1;
		signal(SIGPIPE, SIG_IGN);
		int rc = fn(c, arg);
		_exit(rc & 0xff);
	}
	close(up[1]);
	close(down[0]);
	c->pid = pid;
	c->rfd = up[0];
	c->wfd = down[1];
	c->running = 1;
	child_register(pid);
	return 0;
}

static void write_all(int fd, const char *s, size_t n)
{
	while (n) {
		ssize_t w = write(fd, s, n);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return;
		s += w;
		n -= (size_t)w;
	}
}

static void vsay(int fd, const char *prefix, const char *fmt, va_list ap)
{
	char line[1024];
	int n = snprintf(line, sizeof(line), "%s", prefix);
	n += vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
	if (n > (int)sizeof(line) - 2)
		n = (int)sizeof(line) - 2;
	/* One line per message: embedded newlines would break the protocol. */
	for (int i = 0; i < n; i++)
		if (line[i] == '\n')
			line[i] = ' ';
	line[n++] = '\n';
	write_all(fd, line, (size_t)n);
}

void th_say(struct th_child *self, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsay(self->wfd, "", fmt, ap);
	va_end(ap);
}

int th_fail(struct th_child *self, const char *file, int line, const char *fmt, ...)
{
	char prefix[256];
	const char *base = strrchr(file, '/');
	snprintf(prefix, sizeof(prefix), "FAIL %s:%d: ", base ? base + 1 : file, line);
	va_list ap;
	va_start(ap, fmt);
	vsay(self->wfd, prefix, fmt, ap);
	va_end(ap);
	return 1;
}

/* Return the next line from c->rfd into `line` (without the newline). */
static int read_line(struct th_child *c, char *line, size_t len, int timeout_ms)
{
	struct th_deadline dl;
	th_deadline_start(&dl, timeout_ms);
	for (;;) {
		char *nl = memchr(c->in, '\n', c->inlen);
		if (nl || c->inlen == sizeof(c->in) || (c->eof && c->inlen)) {
			size_t n = nl ? (size_t)(nl - c->in) : c->inlen;
			size_t take = n < len - 1 ? n : len - 1;
			memcpy(line, c->in, take);
			line[take] = '\0';
			size_t used = nl ? n + 1 : n;
			memmove(c->in, c->in + used, c->inlen - used);
			c->inlen -= used;
			return (int)take;
		}
		if (c->eof)
			return -EPIPE;
		struct pollfd p = {.fd = c->rfd, .events = POLLIN};
		int r = poll(&p, 1, th_deadline_left_ms(&dl));
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			return -errno;
		if (r == 0)
			return -ETIMEDOUT;
		ssize_t got = read(c->rfd, c->in + c->inlen, sizeof(c->in) - c->inlen);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0)
			return -errno;
		if (got == 0)
			c->eof = 1;
		c->inlen += (size_t)got;
	}
}

int th_hear(struct th_child *self, char *line, size_t len, int timeout_ms)
{
	return read_line(self, line, len, timeout_ms);
}

int th_child_recv(struct th_child *c, char *line, size_t len, int timeout_ms)
{
	int r = read_line(c, line, len, timeout_ms);
	if (r >= 0) {
		int n = snprintf(c->transcript + c->tlen, sizeof(c->transcript) - c->tlen, "%s\n",
				 line);
		if (n > 0)
			c->tlen += (size_t)n;
		if (c->tlen >= sizeof(c->transcript))
			c->tlen = sizeof(c->transcript) - 1;
	}
	return r;
}

int th_child_expect(struct th_child *c, const char *prefix, char *line, size_t len, int timeout_ms)
{
	struct th_deadline dl;
	th_deadline_start(&dl, timeout_ms);
	for (;;) {
		int r = th_child_recv(c, line, len, th_deadline_left_ms(&dl));
		if (r < 0) {
			fprintf(stderr, "harness: child %d: waiting for \"%s\": %s; it said:\n%s\n",
				(int)c->pid, prefix, strerror(-r), c->transcript);
			return r;
		}
		if (!strncmp(line, prefix, strlen(prefix)))
			return 0;
		if (!strncmp(line, "FAIL", 4)) {
			fprintf(stderr, "harness: child %d failed; it said:\n%s\n", (int)c->pid,
				c->transcript);
			return -EPROTO;
		}
	}
}

int th_child_send(struct th_child *c, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsay(c->wfd, "", fmt, ap);
	va_end(ap);
	return 0;
}

static void child_close(struct th_child *c)
{
	if (c->pid <= 0)
		return; /* never started: a zeroed struct */
	if (c->rfd >= 0)
		close(c->rfd);
	if (c->wfd >= 0)
		close(c->wfd);
	c->rfd = c->wfd = -1;
	child_unregister(c->pid);
}

int th_child_finish(struct th_child *c, int timeout_ms)
{
	struct th_deadline dl;
	char line[1024];
	if (!c->running)
		return c->status;
	th_deadline_start(&dl, timeout_ms);
	for (;;) {
		int r = th_child_recv(c, line, sizeof(line), th_deadline_left_ms(&dl));
		if (r == -EPIPE)
			break;
		if (r == -ETIMEDOUT || (r < 0 && th_deadline_passed(&dl))) {
			fprintf(stderr, "harness: child %d did not finish in %d ms; killing it\n",
				(int)c->pid, timeout_ms);
			th_child_kill(c);
			return -ETIMEDOUT;
		}
		if (r < 0)
			break;
	}
	int st = 0;
	int r = th_wait_pid(c->pid, th_deadline_left_ms(&dl), &st);
	if (r < 0) {
		th_child_kill(c);
		return r;
	}
	c->running = 0;
	c->status = st;
	child_close(c);
	return st;
}

void th_child_kill(struct th_child *c)
{
	if (c->running && c->pid > 0) {
		kill(c->pid, SIGKILL);
		int st = 0;
		if (th_wait_pid(c->pid, 10000, &st) == 0)
			c->status = st;
		c->running = 0;
	}
	child_close(c);
}

const char *th_child_output(const struct th_child *c)
{
	return c->transcript;
}

void th_children_kill_all(void)
{
	for (int i = 0; i < MAX_CHILDREN; i++) {
		if (!children[i])
			continue;
		kill(children[i], SIGKILL);
		if (th_wait_pid(children[i], 10000, NULL) < 0)
			fprintf(stderr, "harness: child %d survives SIGKILL\n", (int)children[i]);
		children[i] = 0;
	}
}

/* ---- a test's environment ------------------------------------------------------------------- */

int th_env_init(struct th_env *e, const char *tag)
{
	memset(e, 0, sizeof(*e));
	int r = th_mkdtemp(e->root, sizeof(e->root));
	if (r < 0)
		return r;
	snprintf(e->data_dir, sizeof(e->data_dir), "%s/data", e->root);
	snprintf(e->manifest_json, sizeof(e->manifest_json), "%s/manifest.json", e->root);
	th_instance_name(e->name, sizeof(e->name), tag);
	/* A leftover of an earlier run with the same pid would confuse the test. */
	th_shm_unlink(e->name);
	return 0;
}

int th_env_gen(struct th_env *e, const char *const args[])
{
	th_manifest_free(&e->man);
	return th_gen_chunks(e->data_dir, e->manifest_json, args, &e->man);
}

void th_env_path(const struct th_env *e, char *out, size_t len, const char *rel)
{
	snprintf(out, len, "%s/%s", e->root, rel);
}

int th_env_start(struct th_env *e, const char *const extra[], int timeout_ms,
		 chunkd_instance_info *info)
{
	char log[PATH_MAX];
	snprintf(log, sizeof(log), "%s/daemon-%u.log", e->root, e->nstarts++);
	th_daemon_cleanup(&e->d);
	int r = th_daemon_start(&e->d, e->name, e->data_dir, log, extra);
	if (r < 0)
		return r;
	return th_daemon_wait_ready(&e->d, timeout_ms, info);
}

void th_env_fini(struct th_env *e)
{
	th_children_kill_all();
	th_daemon_cleanup(&e->d);
	for (int i = 0; i < TH_ENV_DAEMONS; i++)
		th_daemon_cleanup(&e->more[i]);
	th_shm_unlink(e->name);
	for (int i = 0; i < TH_ENV_DAEMONS; i++)
		th_shm_unlink(e->more_names[i]);
	th_manifest_free(&e->man);
	if (e->root[0])
		th_rm_rf(e->root);
	memset(e, 0, sizeof(*e));
}

static int proc_state(pid_t pid)
{
	char path[64];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	char *s = th_read_file(path, NULL);
	if (!s)
		return -errno;
	/* "pid (comm) S ...": comm may contain anything, so look after the last ')'. */
	char *p = strrchr(s, ')');
	int st = p && p[1] == ' ' ? p[2] : '?';
	free(s);
	return st;
}

int th_wait_proc_stopped(pid_t pid, int timeout_ms)
{
	struct th_deadline dl;
	th_deadline_start(&dl, timeout_ms);
	for (;;) {
		int st = proc_state(pid);
		if (st == 'T')
			return 0;
		if (st < 0)
			return st;
		if (th_deadline_passed(&dl))
			return -ETIMEDOUT;
		th_pause();
	}
}
