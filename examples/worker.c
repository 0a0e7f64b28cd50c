/*
 * worker.c — an example chunkd worker. It shows the whole client API: attach to an instance,
 * request downloads and wait for them, look blocks up, read the chunk's files while the chunk is
 * pinned, release, ask for a chunk's status and delete chunks. Copy from here; every chunkd call
 * is explained.
 *
 * Build it in the tree (build/bin/chunkd-example-worker), or against an installed libchunkd:
 *
 *	cc -std=c11 -D_GNU_SOURCE worker.c $(pkg-config --cflags --libs chunkd) -o worker
 *
 * Run it next to a daemon (scripts/demo.sh does all of this, with chunks served by nginx):
 *
 *	chunkd --data-dir /tmp/data --name demo &
 *	chunkd-example-worker --name demo --wait-ready 10 info
 *	chunkd-example-worker --name demo download http://127.0.0.1:8080 < chunks.list
 *	chunkd-example-worker --name demo find DATASET_HEX:BLOCK ...
 *	chunkd-example-worker --name demo status ID_HEX ...
 *	chunkd-example-worker --name demo delete ID_HEX ...
 *
 * Exit status: 0 success, 1 an error, 2 bad usage, 3 (find) some block is in no chunk and nothing
 * else failed.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <chunkd.h>

static const char usage[] =
    "Usage: chunkd-example-worker [OPTION]... [COMMAND] [ARG]...\n"
    "Attach to a chunkd instance, print its state, then run COMMAND:\n"
    "\n"
    "  find [DATASET_HEX:BLOCK]...  (the default) for each block, find the chunk that holds it,\n"
    "                               print it, read one of its files and release it; without\n"
    "                               blocks, look up the first block of a few listed chunks\n"
    "  info                         print the instance and how many chunks it publishes\n"
    "  download URL_PREFIX [LIST]   request the chunks of LIST (default: standard input) and\n"
    "                               wait until they are published\n"
    "  status ID_HEX...             print the daemon's view of these chunks\n"
    "  delete ID_HEX...             delete these chunks and wait until they are unfindable\n"
    "\n"
    "  -n, --name NAME          instance to attach to (default: $CHUNKD_NAME, else \"default\")\n"
    "  -w, --wait-ready SECS    wait up to SECS seconds for a live daemon in state READY\n"
    "                           (default: do not wait; fail if the instance does not exist)\n"
    "  -l, --list N             chunks to look up when find has no block (default 3)\n"
    "  -t, --timeout SECS       how long download and delete wait for the daemon (default 60)\n"
    "  -h, --help               show this help and exit\n"
    "\n"
    "DATASET_HEX and ID_HEX are 64 hex digits, BLOCK a decimal block number. LIST has one chunk\n"
    "per line, 'ID_HEX DATASET_HEX FIRST_BLOCK END_BLOCK NAME...', and file NAME is fetched\n"
    "from URL_PREFIX/DATASET_HEX/ID_HEX/NAME (the layout of scripts/gen-chunks.py --flat).\n"
    "Exit status: 0 success, 1 error, 2 bad usage, 3 (find) some block is in no chunk.\n";

#define PROG         "chunkd-example-worker"
#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

enum { EXIT_NOT_FOUND = 3 };

static uint64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void id_to_hex(const chunkd_id *id, char out[2 * CHUNKD_ID_SIZE + 1])
{
	static const char digits[] = "0123456789abcdef";
	for (int i = 0; i < CHUNKD_ID_SIZE; i++) {
		out[2 * i] = digits[id->bytes[i] >> 4];
		out[2 * i + 1] = digits[id->bytes[i] & 15];
	}
	out[2 * CHUNKD_ID_SIZE] = '\0';
}

static int hex_value(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Parse an id (chunk or dataset): exactly 64 hex digits, the first `len` bytes of s. */
static int parse_id(const char *s, size_t len, chunkd_id *id)
{
	if (len != 2 * CHUNKD_ID_SIZE)
		return -1;
	for (int i = 0; i < CHUNKD_ID_SIZE; i++) {
		int hi = hex_value(s[2 * i]), lo = hex_value(s[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -1;
		id->bytes[i] = (uint8_t)(hi << 4 | lo);
	}
	return 0;
}

/* Parse a whole string as a decimal number (no sign, no spaces). */
static int parse_u64(const char *s, uint64_t *v)
{
	char *end;
	if (*s < '0' || *s > '9')
		return -1;
	errno = 0;
	unsigned long long x = strtoull(s, &end, 10);
	if (errno || *end)
		return -1;
	*v = x;
	return 0;
}

/* Parse "DATASET_HEX:BLOCK": exactly 64 hex digits, a colon and a decimal number. */
static int parse_target(const char *s, chunkd_id *dataset, uint64_t *block)
{
	const char *colon = strchr(s, ':');
	if (!colon || parse_id(s, (size_t)(colon - s), dataset) < 0)
		return -1;
	return parse_u64(colon + 1, block);
}

static const char *state_name(uint32_t state)
{
	switch (state) {
	case CHUNKD_STATE_STARTING:
		return "STARTING";
	case CHUNKD_STATE_READY:
		return "READY";
	case CHUNKD_STATE_STOPPING:
		return "STOPPING";
	case CHUNKD_STATE_STOPPED:
		return "STOPPED";
	default:
		return "UNKNOWN";
	}
}

static const char *chunk_state_name(uint32_t state)
{
	switch (state) {
	case CHUNKD_CHUNK_ABSENT:
		return "absent";
	case CHUNKD_CHUNK_QUEUED:
		return "queued";
	case CHUNKD_CHUNK_DOWNLOADING:
		return "downloading";
	case CHUNKD_CHUNK_PRESENT:
		return "present";
	case CHUNKD_CHUNK_DELETING:
		return "deleting";
	case CHUNKD_CHUNK_FAILED:
		return "failed";
	default:
		return "unknown";
	}
}

/*
 * Attach to the instance. chunkd_open() maps the daemon's shared memory and claims a client slot;
 * it does not talk to the daemon, so it succeeds even while no daemon runs, as long as the
 * segments exist. With wait_s > 0 we wait until a live daemon has finished its start-up scan:
 * - -ENOENT (no segments yet) and -EAGAIN (the daemon is still creating them) are retried;
 * - a handle on segments whose daemon is dead is closed and opened again, because a starting
 *   daemon replaces the segments with new ones and an old handle would never see it.
 * chunkd has no "ready" notification for clients, so this polls the state with a deadline.
 */
static int attach(const char *name, int wait_s, chunkd_client **out)
{
	const uint64_t deadline = now_ms() + (uint64_t)wait_s * 1000u;
	chunkd_instance_info info;
	int r;

	for (;;) {
		chunkd_client *c = NULL;
		/* NULL name: the library uses $CHUNKD_NAME, else "default". */
		r = chunkd_open(name, &c);
		if (r == 0) {
			/* chunkd_info reads the catalogue header and checks whether the daemon
			 * process that wrote it is still alive. */
			r = chunkd_info(c, &info);
			if (r == 0 && (wait_s == 0 ||
				       (info.daemon_alive && info.state == CHUNKD_STATE_READY))) {
				*out = c;
				return 0;
			}
			chunkd_close(c);
			if (r < 0)
				break;
			r = -EAGAIN;
		} else if (r != -ENOENT && r != -EAGAIN) {
			break; /* -EPROTO, -EACCES, -EUSERS, ...: waiting will not help. */
		}
		if (wait_s == 0 || now_ms() >= deadline)
			break;
		struct timespec poll = {0, 20 * 1000 * 1000};
		nanosleep(&poll, NULL);
	}

	/* chunkd_strerror() turns any return value into text. chunkd_open() also leaves a more
	 * specific message in chunkd_last_error() (per thread), e.g. both layout versions of an
	 * -EPROTO: prefer it when there is one. */
	const char *detail = chunkd_last_error();
	fprintf(stderr, PROG ": cannot attach to instance '%s': %s\n",
		name ? name : (getenv("CHUNKD_NAME") ? getenv("CHUNKD_NAME") : "default"),
		*detail ? detail : chunkd_strerror(r));
	if (wait_s > 0 && (r == -ENOENT || r == -EAGAIN))
		fprintf(stderr, PROG ": no live daemon reached READY within %d s\n", wait_s);
	return r;
}

/*
 * Read one file of a pinned chunk: the first regular file by name, skipping the metadata file.
 * The path and the files under it stay unchanged until chunkd_release(): open or mmap what you
 * need while the chunk is pinned. After the release the path must not be used (the daemon may
 * delete the chunk), though an fd or mapping opened before it still reads the same bytes: Linux
 * keeps a deleted file's data while it is open.
 */
static int read_first_file(const char *dir_path)
{
	DIR *dir = opendir(dir_path);
	if (!dir) {
		fprintf(stderr, PROG ": opendir %s: %s\n", dir_path, strerror(errno));
		return -1;
	}
	char first[CHUNKD_MAX_NAME + 1] = "";
	struct dirent *e;
	while ((e = readdir(dir)) != NULL) {
		if (e->d_name[0] == '.' && (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") ||
					    !strcmp(e->d_name, CHUNKD_META_NAME)))
			continue;
		if (strlen(e->d_name) > CHUNKD_MAX_NAME)
			continue;
		if (!first[0] || strcmp(e->d_name, first) < 0)
			snprintf(first, sizeof(first), "%s", e->d_name);
	}
	if (!first[0]) {
		fprintf(stderr, PROG ": %s: no files\n", dir_path);
		closedir(dir);
		return -1;
	}
	int fd = openat(dirfd(dir), first, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		fprintf(stderr, PROG ": open %s/%s: %s\n", dir_path, first, strerror(errno));
		closedir(dir);
		return -1;
	}
	static char buf[1 << 16];
	uint64_t total = 0;
	ssize_t n;
	while ((n = read(fd, buf, sizeof(buf))) != 0) {
		if (n < 0) {
			if (errno == EINTR)
				continue;
			fprintf(stderr, PROG ": read %s/%s: %s\n", dir_path, first,
				strerror(errno));
			close(fd);
			closedir(dir);
			return -1;
		}
		total += (uint64_t)n;
	}
	printf("    read  %s: %" PRIu64 " bytes\n", first, total);
	close(fd);
	closedir(dir);
	return 0;
}

/*
 * Find the chunk of `dataset` that holds `block`, use it, release it.
 * Returns 0 found and read, EXIT_NOT_FOUND no such chunk, 1 an error.
 */
static int lookup(chunkd_client *c, const chunkd_id *dataset, uint64_t block)
{
	char ds_hex[2 * CHUNKD_ID_SIZE + 1], id_hex[2 * CHUNKD_ID_SIZE + 1];
	id_to_hex(dataset, ds_hex);

	/*
	 * chunkd_find() is the hot path: a binary search in shared memory, no syscall, no lock, no
	 * allocation. On success it has pinned the chunk: until chunkd_release() the daemon will
	 * neither delete nor change the directory ref.path, even if someone asks it to delete the
	 * chunk meanwhile. A handle holds at most CHUNKD_PINS_PER_CLIENT pins (-ENOBUFS beyond), so
	 * release every ref you no longer need.
	 */
	chunkd_ref ref;
	int r = chunkd_find(c, dataset, block, &ref);
	if (r == -ENOENT) {
		printf("find  dataset %s block %" PRIu64 ": in no published chunk\n", ds_hex,
		       block);
		return EXIT_NOT_FOUND;
	}
	if (r < 0) {
		/* -EAGAIN: the catalogue stayed inconsistent (a daemon died mid-write); retry
		 * later. -ENOBUFS: this handle holds too many pins. */
		fprintf(stderr, PROG ": chunkd_find(%s, %" PRIu64 "): %s\n", ds_hex, block,
			chunkd_strerror(r));
		return 1;
	}
	id_to_hex(&ref.id, id_hex);
	printf("find  dataset %s block %" PRIu64 "\n", ds_hex, block);
	printf("    chunk %s blocks [%" PRIu64 ", %" PRIu64 ")\n", id_hex, ref.first_block,
	       ref.end_block);
	printf("    path  %s\n", ref.path);

	int ret = read_first_file(ref.path) == 0 ? 0 : 1;

	/* Unpin. ref.path points into shared memory and must not be used after this. */
	chunkd_release(c, &ref);
	return ret;
}

/* Combine two exit statuses: an error (1) outranks a block in no chunk (3), which outranks 0. */
static int worse(int a, int b)
{
	if (a == 1 || b == 1)
		return 1;
	return a ? a : b;
}

/*
 * find without blocks: list the published chunk ids, ask chunkd_status() for the dataset and
 * first block of the first few, and look those blocks up.
 */
static int lookup_listed(chunkd_client *c, size_t n)
{
	size_t count = 0;
	chunkd_id *ids = n ? calloc(n, sizeof(*ids)) : NULL;
	if (n && !ids) {
		fprintf(stderr, PROG ": out of memory\n");
		return 1;
	}
	int r = chunkd_list(c, ids, n, &count);
	if (r < 0) {
		fprintf(stderr, PROG ": chunkd_list: %s\n", chunkd_strerror(r));
		free(ids);
		return 1;
	}
	int ret = 0;
	for (size_t i = 0; i < n && i < count; i++) {
		/* chunkd_status() reads the daemon's record of one chunk, including chunks that are
		 * still downloading; it pins nothing. */
		chunkd_chunk_status st;
		r = chunkd_status(c, &ids[i], &st);
		if (r < 0) {
			fprintf(stderr, PROG ": chunkd_status: %s\n", chunkd_strerror(r));
			ret = 1;
			continue;
		}
		if (st.state != CHUNKD_CHUNK_PRESENT)
			continue; /* Deleted since the list was taken. */
		ret = worse(ret, lookup(c, &st.dataset, st.first_block));
	}
	free(ids);
	return ret;
}

/*
 * status: print the daemon's view of each chunk. chunkd_status() only reads shared memory; it
 * answers for chunks in every state, and an id the daemon does not know is "absent", not an
 * error. For a failed download, last_error, http_status and message say why.
 */
static int show_status(chunkd_client *c, const chunkd_id *id)
{
	char id_hex[2 * CHUNKD_ID_SIZE + 1], ds_hex[2 * CHUNKD_ID_SIZE + 1];
	chunkd_chunk_status st;
	id_to_hex(id, id_hex);
	int r = chunkd_status(c, id, &st);
	if (r < 0) {
		fprintf(stderr, PROG ": chunkd_status(%s): %s\n", id_hex, chunkd_strerror(r));
		return 1;
	}
	printf("status chunk %s: %s\n", id_hex, chunk_state_name(st.state));
	if (st.state == CHUNKD_CHUNK_ABSENT)
		return 0;
	id_to_hex(&st.dataset, ds_hex);
	printf("    dataset %s blocks [%" PRIu64 ", %" PRIu64 ")\n", ds_hex, st.first_block,
	       st.end_block);
	printf("    %u files, %" PRIu64 " of %" PRIu64 " bytes, attempts %u, pins %u\n", st.nfiles,
	       st.bytes_done, st.bytes_total, st.attempts, st.pins);
	if (st.last_error)
		printf("    last error: %s, HTTP status %d: %s\n", chunkd_strerror(st.last_error),
		       (int)st.http_status, st.message);
	return 0;
}

/*
 * One request of this run, a download or a delete. A download keeps its whole descriptor here
 * until the end, so that it can be sent again after an -EAGAIN; chunkd_download() itself copies
 * it, and a program that does not need to retry may free it as soon as the call returns.
 */
struct request {
	chunkd_chunk chunk; /* a delete uses only chunk.id */
	chunkd_file files[CHUNKD_MAX_FILES];
	char *line;      /* download: the list line; the file names point into it */
	uint64_t ticket; /* from chunkd_download/chunkd_delete, 0 if it was not accepted */
	int result;      /* chunkd_wait()'s answer, or the enqueue error */
};

static void free_requests(struct request *reqs, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		for (uint32_t k = 0; k < reqs[i].chunk.nfiles; k++)
			free((char *)reqs[i].files[k].url);
		free(reqs[i].line);
	}
	free(reqs);
}

/*
 * Read the chunk list of download: one chunk per line,
 *
 *	ID_HEX DATASET_HEX FIRST_BLOCK END_BLOCK NAME...
 *
 * and file NAME is fetched from PREFIX/DATASET_HEX/ID_HEX/NAME, the layout that
 * scripts/gen-chunks.py --flat writes for a web root. Blank lines and lines starting with '#'
 * are skipped. Why not read gen-chunks.py's JSON manifest? A JSON parser would be most of this
 * file and teach nothing about chunkd, so scripts/demo.sh turns the manifest into these lines
 * with a few lines of python3; a real worker gets its descriptors from wherever its jobs come
 * from. Names and URLs are not checked here: chunkd_download() does that, and says what is wrong.
 * Returns 0, or -1 after printing what is wrong with the list.
 */
static int read_list(FILE *f, const char *fname, const char *prefix, struct request **out,
		     size_t *nout)
{
	struct request *reqs = NULL;
	size_t n = 0, cap = 0, lineno = 0;
	int plen = (int)strlen(prefix);
	while (plen > 0 && prefix[plen - 1] == '/')
		plen--; /* "http://host/" and "http://host" mean the same */

	for (;;) {
		/* The four fields, the names, and one more to notice too many names. */
		char *line = NULL, *save, *tok[4 + CHUNKD_MAX_FILES + 1];
		size_t len = 0;
		int ntok = 0;
		lineno++;
		if (getline(&line, &len, f) < 0) {
			free(line);
			if (ferror(f)) {
				fprintf(stderr, PROG ": read %s: %s\n", fname, strerror(errno));
				goto err;
			}
			break;
		}
		for (char *t = strtok_r(line, " \t\r\n", &save); t && ntok < (int)ARRAY_LEN(tok);
		     t = strtok_r(NULL, " \t\r\n", &save))
			tok[ntok++] = t;
		if (ntok == 0 || tok[0][0] == '#') {
			free(line);
			continue;
		}
		if (n == cap) {
			cap = cap ? 2 * cap : 16;
			struct request *bigger = realloc(reqs, cap * sizeof(*reqs));
			if (!bigger) {
				free(line);
				fprintf(stderr, PROG ": out of memory\n");
				goto err;
			}
			reqs = bigger;
		}
		struct request *rq = &reqs[n++];
		memset(rq, 0, sizeof(*rq));
		rq->line = line;
		rq->chunk.files = rq->files;
		if (ntok < 5 || parse_id(tok[0], strlen(tok[0]), &rq->chunk.id) < 0 ||
		    parse_id(tok[1], strlen(tok[1]), &rq->chunk.dataset) < 0 ||
		    parse_u64(tok[2], &rq->chunk.first_block) < 0 ||
		    parse_u64(tok[3], &rq->chunk.end_block) < 0) {
			fprintf(stderr,
				PROG ": %s:%zu: expected 'ID_HEX DATASET_HEX FIRST_BLOCK END_BLOCK "
				     "NAME...'\n",
				fname, lineno);
			goto err;
		}
		if (ntok > 4 + CHUNKD_MAX_FILES) {
			fprintf(stderr, PROG ": %s:%zu: more than %d files\n", fname, lineno,
				CHUNKD_MAX_FILES);
			goto err;
		}
		for (int k = 4; k < ntok; k++) {
			chunkd_file *file = &rq->files[rq->chunk.nfiles];
			char *url;
			if (asprintf(&url, "%.*s/%s/%s/%s", plen, prefix, tok[1], tok[0], tok[k]) <
			    0) {
				fprintf(stderr, PROG ": out of memory\n");
				goto err;
			}
			file->name = tok[k];
			file->url = url;
			rq->chunk.nfiles++;
		}
	}
	if (n == 0) {
		fprintf(stderr, PROG ": %s: no chunks\n", fname);
		goto err;
	}
	*out = reqs;
	*nout = n;
	return 0;
err:
	free_requests(reqs, n);
	return -1;
}

/* Milliseconds left until `deadline`, as chunkd_wait() takes them. */
static int ms_left(uint64_t deadline)
{
	uint64_t now = now_ms();
	if (now >= deadline)
		return 0;
	return deadline - now > INT_MAX ? INT_MAX : (int)(deadline - now);
}

/*
 * Wait for one request and print its outcome. chunkd_wait() sleeps on a futex until the daemon
 * posts results; 0 means the goal is reached: a download is published (findable now), a delete
 * is no longer findable. Any other value is the request's failure, and chunkd_status() has the
 * daemon's detail: the errno of the last failed attempt, the HTTP status and a message.
 * Returns 0 done, 1 failed.
 */
static int finish(chunkd_client *c, struct request *rq, int is_delete, uint64_t deadline,
		  int timeout_s)
{
	const char *what = is_delete ? "delete" : "download";
	char id_hex[2 * CHUNKD_ID_SIZE + 1];
	chunkd_chunk_status st;
	id_to_hex(&rq->chunk.id, id_hex);
	if (rq->ticket == 0)
		return 1; /* Not accepted; already reported. */

	rq->result = chunkd_wait(c, rq->ticket, ms_left(deadline));
	if (chunkd_status(c, &rq->chunk.id, &st) < 0)
		memset(&st, 0, sizeof(st)); /* -EAGAIN: report without the detail */
	if (rq->result == 0) {
		if (is_delete)
			printf("    deleted    %s (now %s)\n", id_hex, chunk_state_name(st.state));
		else
			printf("    published  %s blocks [%" PRIu64 ", %" PRIu64 "): %u files, "
			       "%" PRIu64 " bytes\n",
			       id_hex, rq->chunk.first_block, rq->chunk.end_block, st.nfiles,
			       st.bytes_total);
		return 0;
	}
	/* -ETIMEDOUT is both "not done yet" (our deadline passed) and a download that failed by
	 * timing out; the chunk's state tells them apart. */
	if (rq->result == -ETIMEDOUT && st.state != CHUNKD_CHUNK_FAILED) {
		fprintf(stderr, PROG ": %s %s: not done after %d s: %s", what, id_hex, timeout_s,
			chunk_state_name(st.state));
		if (!is_delete)
			fprintf(stderr, ", %" PRIu64 " of %" PRIu64 " bytes, attempt %u",
				st.bytes_done, st.bytes_total, st.attempts);
		fputc('\n', stderr);
		return 1;
	}
	fprintf(stderr, PROG ": %s %s: %s", what, id_hex, chunkd_strerror(rq->result));
	if (st.last_error) {
		fprintf(stderr, " (after %u attempts", st.attempts);
		if (st.last_error != rq->result)
			fprintf(stderr, "; last: %s", chunkd_strerror(st.last_error));
		if (st.http_status)
			fprintf(stderr, "; HTTP status %d", (int)st.http_status);
		fputc(')', stderr);
		if (st.message[0])
			fprintf(stderr, ": %s", st.message);
	}
	fputc('\n', stderr);
	return 1;
}

/*
 * Send every request, then wait for them all, with one deadline for the whole batch.
 * chunkd_download() and chunkd_delete() never block: they copy the request into this client's
 * ring in shared memory and return a ticket. They answer -EAGAIN when the ring or the ticket
 * table (CHUNKD_TICKETS_PER_CLIENT) is full; the cure is to wait for an earlier request, which
 * frees its entry, and to try again. Requests are waited for in the order they were sent.
 * Returns how many failed.
 */
static size_t submit(chunkd_client *c, struct request *reqs, size_t n, int is_delete, int timeout_s)
{
	const uint64_t deadline = now_ms() + (uint64_t)timeout_s * 1000u;
	size_t waited = 0, failed = 0;
	char id_hex[2 * CHUNKD_ID_SIZE + 1];

	for (size_t i = 0; i < n; i++) {
		struct request *rq = &reqs[i];
		int r;
		for (;;) {
			if (is_delete)
				r = chunkd_delete(c, &rq->chunk.id, &rq->ticket);
			else
				r = chunkd_download(c, &rq->chunk, &rq->ticket);
			if (r != -EAGAIN || waited == i)
				break;
			failed += finish(c, &reqs[waited++], is_delete, deadline, timeout_s);
		}
		if (r < 0) {
			/* -EINVAL: a bad descriptor. libchunkd leaves the reason (which file, what
			 * is wrong with it) in chunkd_last_error(). */
			const char *detail = r == -EINVAL ? chunkd_last_error() : "";
			id_to_hex(&rq->chunk.id, id_hex);
			fprintf(stderr, PROG ": %s %s: %s%s%s\n",
				is_delete ? "chunkd_delete" : "chunkd_download", id_hex,
				chunkd_strerror(r), *detail ? ": " : "", detail);
			rq->ticket = 0;
			rq->result = r;
		}
	}
	while (waited < n)
		failed += finish(c, &reqs[waited++], is_delete, deadline, timeout_s);
	return failed;
}

/* download and delete: send the requests, wait for them, print a one-line summary. */
static int run_requests(chunkd_client *c, struct request *reqs, size_t n, int is_delete,
			int timeout_s)
{
	const uint64_t start = now_ms();
	size_t failed = submit(c, reqs, n, is_delete, timeout_s);
	uint64_t files = 0;
	for (size_t i = 0; i < n; i++)
		files += reqs[i].chunk.nfiles;
	if (is_delete)
		printf("delete: %zu of %zu chunks no longer findable, in %.2f s\n", n - failed, n,
		       (double)(now_ms() - start) / 1000);
	else
		printf("download: %zu of %zu chunks (%" PRIu64 " files) published, in %.2f s\n",
		       n - failed, n, files, (double)(now_ms() - start) / 1000);
	return failed ? 1 : 0;
}

enum command { CMD_FIND, CMD_INFO, CMD_DOWNLOAD, CMD_STATUS, CMD_DELETE };

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"name", required_argument, NULL, 'n'},       /* every command */
	    {"wait-ready", required_argument, NULL, 'w'}, /* every command */
	    {"list", required_argument, NULL, 'l'},       /* find */
	    {"timeout", required_argument, NULL, 't'},    /* download, delete */
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *name = NULL;
	int wait_s = 0, timeout_s = 60;
	long nlist = 3;
	int o;
	while ((o = getopt_long(argc, argv, "n:w:l:t:h", opts, NULL)) != -1) {
		char *end;
		switch (o) {
		case 'n':
			name = optarg;
			break;
		case 'w':
		case 't': {
			long v = strtol(optarg, &end, 10);
			if (*end || end == optarg || v < 0 || v > 3600) {
				fprintf(stderr, PROG ": --%s: '%s' is not 0-3600 seconds\n",
					o == 'w' ? "wait-ready" : "timeout", optarg);
				return 2;
			}
			if (o == 'w')
				wait_s = (int)v;
			else
				timeout_s = (int)v;
			break;
		}
		case 'l':
			nlist = strtol(optarg, &end, 10);
			if (*end || end == optarg || nlist < 0 || nlist > 1000000) {
				fprintf(stderr, PROG ": --list: '%s' is not 0-1000000\n", optarg);
				return 2;
			}
			break;
		case 'h':
			fputs(usage, stdout);
			return 0;
		default:
			fputs("Try '" PROG " --help'.\n", stderr);
			return 2;
		}
	}

	/* The command; without one (or with blocks right away), find. */
	static const char *const commands[] = {"find", "info", "download", "status", "delete"};
	enum command cmd = CMD_FIND;
	for (size_t k = 0; optind < argc && k < ARRAY_LEN(commands); k++) {
		if (!strcmp(argv[optind], commands[k])) {
			cmd = (enum command)k;
			optind++;
			break;
		}
	}
	char **args = argv + optind;
	int nargs = argc - optind;

	/* Check every argument before attaching, so that a typo costs no client slot. */
	struct request *reqs = NULL;
	size_t nreqs = 0;
	switch (cmd) {
	case CMD_FIND:
		for (int i = 0; i < nargs; i++) {
			chunkd_id ds;
			uint64_t block;
			if (parse_target(args[i], &ds, &block) < 0) {
				fprintf(stderr,
					PROG ": '%s' is %sDATASET_HEX:BLOCK (64 hex digits, ':', "
					     "a decimal block)\n",
					args[i],
					strchr(args[i], ':') ? "not " : "neither a command nor ");
				return 2;
			}
		}
		break;
	case CMD_INFO:
		if (nargs != 0) {
			fprintf(stderr, PROG ": info takes no arguments\n");
			return 2;
		}
		break;
	case CMD_DOWNLOAD: {
		if (nargs < 1 || nargs > 2) {
			fprintf(stderr, PROG ": usage: download URL_PREFIX [LIST]\n");
			return 2;
		}
		const char *fname = nargs == 2 ? args[1] : "-";
		FILE *f = strcmp(fname, "-") ? fopen(fname, "r") : stdin;
		if (!f) {
			fprintf(stderr, PROG ": %s: %s\n", fname, strerror(errno));
			return 1;
		}
		int r =
		    read_list(f, strcmp(fname, "-") ? fname : "(stdin)", args[0], &reqs, &nreqs);
		if (f != stdin)
			fclose(f);
		if (r < 0)
			return 2;
		break;
	}
	case CMD_STATUS:
	case CMD_DELETE:
		if (nargs == 0) {
			fprintf(stderr, PROG ": %s needs chunk ids\n", commands[cmd]);
			return 2;
		}
		reqs = calloc((size_t)nargs, sizeof(*reqs));
		if (!reqs) {
			fprintf(stderr, PROG ": out of memory\n");
			return 1;
		}
		for (nreqs = 0; nreqs < (size_t)nargs; nreqs++) {
			const char *s = args[nreqs];
			if (parse_id(s, strlen(s), &reqs[nreqs].chunk.id) < 0) {
				fprintf(stderr, PROG ": '%s' is not a chunk id (64 hex digits)\n",
					s);
				free(reqs);
				return 2;
			}
		}
		break;
	}

	/* A program built against this header must run with a compatible library. */
	if (chunkd_check_version(CHUNKD_VERSION_MAJOR, CHUNKD_VERSION_MINOR) < 0) {
		fprintf(stderr, PROG ": built for libchunkd %d.%d, but the library is %d\n",
			CHUNKD_VERSION_MAJOR, CHUNKD_VERSION_MINOR, chunkd_version());
		free_requests(reqs, nreqs);
		return 1;
	}

	chunkd_client *c = NULL;
	if (attach(name, wait_s, &c) < 0) {
		free_requests(reqs, nreqs);
		return 1;
	}

	chunkd_instance_info info;
	int r = chunkd_info(c, &info);
	if (r < 0) {
		fprintf(stderr, PROG ": chunkd_info: %s\n", chunkd_strerror(r));
		chunkd_close(c);
		free_requests(reqs, nreqs);
		return 1;
	}
	printf("instance: daemon pid %d (%s), state %s, %u chunks published, data dir %s\n",
	       (int)info.daemon_pid, info.daemon_alive ? "alive" : "not running",
	       state_name(info.state), info.nchunks, info.data_dir);

	int ret = 0;
	switch (cmd) {
	case CMD_FIND:
	case CMD_INFO: {
		/* chunkd_list() with no room only counts: a consistent snapshot of the catalogue.
		 */
		size_t count;
		r = chunkd_list(c, NULL, 0, &count);
		if (r < 0) {
			fprintf(stderr, PROG ": chunkd_list: %s\n", chunkd_strerror(r));
			ret = 1;
			break;
		}
		printf("list: %zu chunks\n", count);
		if (cmd == CMD_INFO)
			break;
		if (nargs == 0)
			ret = lookup_listed(c, (size_t)nlist);
		for (int i = 0; i < nargs; i++) {
			chunkd_id ds;
			uint64_t block;
			parse_target(args[i], &ds, &block);
			ret = worse(ret, lookup(c, &ds, block));
		}
		break;
	}
	case CMD_DOWNLOAD:
	case CMD_DELETE:
		ret = run_requests(c, reqs, nreqs, cmd == CMD_DELETE, timeout_s);
		break;
	case CMD_STATUS:
		for (size_t i = 0; i < nreqs; i++)
			ret |= show_status(c, &reqs[i].chunk.id);
		break;
	}

	/* Detach. chunkd_close() would also release any pin still held. */
	chunkd_close(c);
	free_requests(reqs, nreqs);
	return ret;
}
