/*
 * chunkd-fsck — verify the published chunks of a data dir against their metadata: every listed
 * file present, regular, of the recorded size and CRC32C; no file that the metadata does not
 * list. Reads only; never changes anything, so it is safe beside a running daemon (a chunk the
 * daemon removes meanwhile is reported as vanished, not as damaged).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "meta.h"

static const char usage[] =
	"Usage: chunkd-fsck --data-dir DIR [--json] [--quiet]\n"
	"Verify every published chunk under DIR/chunks against its .chunkd-meta: files present,\n"
	"sizes and CRC32C equal, no extra files. Changes nothing.\n"
	"\n"
	"  -d, --data-dir DIR   the daemon's data directory\n"
	"      --json           one JSON object per problem, then a summary object\n"
	"  -q, --quiet          print only problems and the summary\n"
	"  -h, --help           show this help and exit\n"
	"\n"
	"Exit status: 0 all chunks verified, 1 problems found, 2 bad usage or DIR unreadable.\n";

struct totals {
	unsigned long chunks, files, problems, vanished;
	unsigned long long bytes;
};

static int json, quiet;

static void problem(struct totals *t, const char *chunk, const char *file, const char *what)
{
	t->problems++;
	if (json)
		printf("{\"chunk\":\"%s\",\"file\":\"%s\",\"problem\":\"%s\"}\n", chunk,
		       file ? file : "", what);
	else
		printf("PROBLEM chunks/%s%s%s: %s\n", chunk, file ? "/" : "", file ? file : "",
		       what);
}

/* CRC32C of a whole file, read in large blocks. */
static int crc_file(int dirfd, const char *name, uint32_t *crc, uint64_t *size)
{
	int fd = openat(dirfd, name, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	static uint8_t buf[1 << 20];
	uint32_t c = 0;
	uint64_t n = 0;
	for (;;) {
		ssize_t r = read(fd, buf, sizeof(buf));
		if (r < 0) {
			int e = errno;
			close(fd);
			return -e;
		}
		if (r == 0)
			break;
		c = chunkd__crc32c(c, buf, (size_t)r);
		n += (uint64_t)r;
	}
	close(fd);
	*crc = c;
	*size = n;
	return 0;
}

static void check_chunk(struct totals *t, int dsfd, const char *ds, const char *name)
{
	char rel[512], why[256], what[600];
	snprintf(rel, sizeof(rel), "%s/%s", ds, name);
	int fd = openat(dsfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0) {
		if (errno == ENOENT) {
			t->vanished++;
			return;
		}
		snprintf(what, sizeof(what), "cannot open: %s", strerror(errno));
		problem(t, rel, NULL, what);
		return;
	}
	static struct chunkd_meta m;
	int r = chunkd__meta_read_at(fd, &m, why, sizeof(why));
	if (r < 0) {
		snprintf(what, sizeof(what), "metadata: %s", r == -ENOENT ? "missing" : why);
		problem(t, rel, NULL, what);
		close(fd);
		return;
	}
	t->chunks++;
	int bad = 0;
	for (uint32_t i = 0; i < m.nfiles; i++) {
		uint32_t crc = 0;
		uint64_t size = 0;
		r = crc_file(fd, m.files[i].name, &crc, &size);
		t->files++;
		if (r < 0) {
			snprintf(what, sizeof(what), "%s", r == -ENOENT ? "missing" : strerror(-r));
			problem(t, rel, m.files[i].name, what);
			bad = 1;
			continue;
		}
		t->bytes += size;
		if (size != m.files[i].size) {
			snprintf(what, sizeof(what), "size %llu, metadata says %llu",
				 (unsigned long long)size, (unsigned long long)m.files[i].size);
			problem(t, rel, m.files[i].name, what);
			bad = 1;
		} else if (m.files[i].has_crc && crc != m.files[i].crc32c) {
			snprintf(what, sizeof(what), "CRC32C %08x, metadata says %08x", crc,
				 m.files[i].crc32c);
			problem(t, rel, m.files[i].name, what);
			bad = 1;
		}
	}
	/* Extra files: anything but the listed files and the metadata. */
	int dfd = dup(fd);
	DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
	struct dirent *de;
	while (d && (de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, "..") ||
		    !strcmp(de->d_name, CHUNKD_META_NAME))
			continue;
		int listed = 0;
		for (uint32_t i = 0; i < m.nfiles && !listed; i++)
			listed = !strcmp(de->d_name, m.files[i].name);
		if (!listed) {
			problem(t, rel, de->d_name, "extra file, not in the metadata");
			bad = 1;
		}
	}
	if (d)
		closedir(d);
	close(fd);
	if (!bad && !quiet && !json)
		printf("ok      chunks/%s (%u files)\n", rel, m.nfiles);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"data-dir", required_argument, NULL, 'd'},
		{"json", no_argument, NULL, 'j'},
		{"quiet", no_argument, NULL, 'q'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *dir = NULL;
	int c;
	while ((c = getopt_long(argc, argv, "d:qh", opts, NULL)) != -1) {
		switch (c) {
		case 'd':
			dir = optarg;
			break;
		case 'j':
			json = 1;
			break;
		case 'q':
			quiet = 1;
			break;
		case 'h':
			fputs(usage, stdout);
			return 0;
		default:
			fputs("Try 'chunkd-fsck --help'.\n", stderr);
			return 2;
		}
	}
	if (!dir || optind < argc) {
		fputs("chunkd-fsck: --data-dir is required\nTry 'chunkd-fsck --help'.\n", stderr);
		return 2;
	}
	char path[4096];
	snprintf(path, sizeof(path), "%s/chunks", dir);
	int cfd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *top = cfd >= 0 ? fdopendir(cfd) : NULL;
	if (!top) {
		fprintf(stderr, "chunkd-fsck: %s: %s\n", path, strerror(errno));
		return 2;
	}
	struct totals t = {0};
	struct dirent *de;
	while ((de = readdir(top))) {
		if (de->d_name[0] == '.')
			continue;
		int dsfd = openat(cfd, de->d_name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (dsfd < 0)
			continue;
		DIR *ds = fdopendir(dsfd);
		struct dirent *ce;
		while (ds && (ce = readdir(ds)))
			if (ce->d_name[0] != '.')
				check_chunk(&t, dsfd, de->d_name, ce->d_name);
		if (ds)
			closedir(ds);
	}
	closedir(top);
	if (json)
		printf("{\"summary\":{\"chunks\":%lu,\"files\":%lu,\"bytes\":%llu,\"problems\":%lu,"
		       "\"vanished\":%lu}}\n",
		       t.chunks, t.files, t.bytes, t.problems, t.vanished);
	else
		printf("%lu chunks, %lu files, %llu bytes verified; %lu problem%s%s\n", t.chunks,
		       t.files, t.bytes, t.problems, t.problems == 1 ? "" : "s",
		       t.vanished ? " (some chunks were removed while checking)" : "");
	return t.problems ? 1 : 0;
}
