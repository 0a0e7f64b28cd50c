/*
 * worker.c — an example chunkd worker: attach to an instance, look blocks up, read the chunk's
 * files while the chunk is pinned, release. Copy from here; every chunkd call is explained.
 *
 * Build it in the tree (build/bin/chunkd-example-worker), or against an installed libchunkd:
 *
 *	cc -std=c11 -D_GNU_SOURCE worker.c $(pkg-config --cflags --libs chunkd) -o worker
 *
 * Run it next to a daemon (scripts/demo.sh does all of this):
 *
 *	chunkd --data-dir /tmp/data --name demo &
 *	chunkd-example-worker --name demo --wait-ready 10 DATASET_HEX:BLOCK ...
 *
 * Exit status: 0 every block was found and read, 1 an error, 2 bad usage, 3 some block is in no
 * chunk (and nothing else failed).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <chunkd.h>

static const char usage[] =
    "Usage: chunkd-example-worker [OPTION]... [DATASET_HEX:BLOCK]...\n"
    "Attach to a chunkd instance, print its state and how many chunks it publishes, then for\n"
    "each DATASET_HEX:BLOCK find the chunk that holds the block, print it, read one of its\n"
    "files and release it. Without arguments, look up the first block of a few listed chunks.\n"
    "\n"
    "  -n, --name NAME          instance to attach to (default: $CHUNKD_NAME, else \"default\")\n"
    "  -w, --wait-ready SECS    wait up to SECS seconds for a live daemon in state READY\n"
    "                           (default: do not wait; fail if the instance does not exist)\n"
    "  -l, --list N             chunks to look up when no block is given (default 3)\n"
    "  -h, --help               show this help and exit\n"
    "\n"
    "DATASET_HEX is the dataset id as 64 hex digits, BLOCK a decimal block number.\n"
    "Exit status: 0 all found and read, 1 error, 2 bad usage, 3 some block is in no chunk.\n";

#define PROG "chunkd-example-worker"

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

/* Parse "DATASET_HEX:BLOCK": exactly 64 hex digits, a colon and a decimal number. */
static int parse_target(const char *s, chunkd_id *dataset, uint64_t *block)
{
	const char *colon = strchr(s, ':');
	if (!colon || colon - s != 2 * CHUNKD_ID_SIZE)
		return -1;
	for (int i = 0; i < CHUNKD_ID_SIZE; i++) {
		int hi = hex_value(s[2 * i]), lo = hex_value(s[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return -1;
		dataset->bytes[i] = (uint8_t)(hi << 4 | lo);
	}
	const char *num = colon + 1;
	char *end;
	if (*num < '0' || *num > '9')
		return -1;
	errno = 0;
	unsigned long long v = strtoull(num, &end, 10);
	if (errno || *end)
		return -1;
	*block = v;
	return 0;
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
 * Without blocks on the command line: list the published chunk ids, ask chunkd_status() for the
 * dataset and first block of the first few, and look those blocks up.
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

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"name", required_argument, NULL, 'n'},
	    {"wait-ready", required_argument, NULL, 'w'},
	    {"list", required_argument, NULL, 'l'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	const char *name = NULL;
	int wait_s = 0;
	long nlist = 3;
	int o;
	while ((o = getopt_long(argc, argv, "n:w:l:h", opts, NULL)) != -1) {
		char *end;
		switch (o) {
		case 'n':
			name = optarg;
			break;
		case 'w':
			wait_s = (int)strtol(optarg, &end, 10);
			if (*end || end == optarg || wait_s < 0 || wait_s > 3600) {
				fprintf(stderr, PROG ": --wait-ready: '%s' is not 0-3600 seconds\n",
					optarg);
				return 2;
			}
			break;
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
	/* Check every argument before attaching, so that a typo costs no client slot. */
	for (int i = optind; i < argc; i++) {
		chunkd_id ds;
		uint64_t block;
		if (parse_target(argv[i], &ds, &block) < 0) {
			fprintf(stderr,
				PROG ": '%s' is not DATASET_HEX:BLOCK (64 hex digits, ':', a "
				     "decimal block)\n",
				argv[i]);
			return 2;
		}
	}

	/* A program built against this header must run with a compatible library. */
	if (chunkd_check_version(CHUNKD_VERSION_MAJOR, CHUNKD_VERSION_MINOR) < 0) {
		fprintf(stderr, PROG ": built for libchunkd %d.%d, but the library is %d\n",
			CHUNKD_VERSION_MAJOR, CHUNKD_VERSION_MINOR, chunkd_version());
		return 1;
	}

	chunkd_client *c = NULL;
	if (attach(name, wait_s, &c) < 0)
		return 1;

	chunkd_instance_info info;
	int r = chunkd_info(c, &info);
	if (r < 0) {
		fprintf(stderr, PROG ": chunkd_info: %s\n", chunkd_strerror(r));
		chunkd_close(c);
		return 1;
	}
	printf("instance: daemon pid %d (%s), state %s, %u chunks published, data dir %s\n",
	       (int)info.daemon_pid, info.daemon_alive ? "alive" : "not running",
	       state_name(info.state), info.nchunks, info.data_dir);

	/* chunkd_list() with no room just counts; a consistent snapshot of the catalogue. */
	size_t count;
	r = chunkd_list(c, NULL, 0, &count);
	if (r < 0) {
		fprintf(stderr, PROG ": chunkd_list: %s\n", chunkd_strerror(r));
		chunkd_close(c);
		return 1;
	}
	printf("list: %zu chunks\n", count);

	int ret = 0;
	if (optind == argc) {
		ret = lookup_listed(c, (size_t)nlist);
	} else {
		for (int i = optind; i < argc; i++) {
			chunkd_id ds;
			uint64_t block;
			parse_target(argv[i], &ds, &block);
			ret = worse(ret, lookup(c, &ds, block));
		}
	}

	/* Detach. chunkd_close() would also release any pin still held. */
	chunkd_close(c);
	return ret;
}
