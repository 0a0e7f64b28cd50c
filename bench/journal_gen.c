/*
 * journal_gen.c — bench-journal-gen: write a request journal for bench-start --journal, with the
 * daemon's own journal code (daemon/journal.c), so that the file is exactly what a daemon would
 * have written.
 *
 * For a data dir of published chunks it writes, in one seeded random interleaving:
 *   - one DOWNLOAD record per published chunk, with the chunk's descriptor as it is on disk (id,
 *     dataset, block range and file names from its .chunkd-meta; URLs of a realistic shape), the
 *     requests that made the daemon download those chunks;
 *   - DELETE records of ids the data dir does not hold (deletes that reached their goal long
 *     ago), as many as needed to reach --records records in all.
 * Records carry a client slot, an owner word that no live process has, and increasing tickets.
 *
 * The journal is built in a fresh directory next to --out with chunkd__journal_open() +
 * chunkd__journal_append() + chunkd__journal_sync(), then renamed to --out. bench-start copies
 * it into the data dir before every start, so each start replays the same file.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common.h"
#include "journal.h"
#include "meta.h"

static const char usage[] =
    "Usage: bench-journal-gen --data-dir DIR --out FILE [OPTION]...\n"
    "Write a chunkd request journal (daemon/journal.c's format) for the published chunks of DIR:\n"
    "a DOWNLOAD record per chunk, with its on-disk descriptor, and DELETE records of unknown ids\n"
    "up to --records records in all, interleaved at random.\n"
    "\n"
    "  -d, --data-dir DIR    a chunkd data dir (chunks/<dataset>/<first>-<end>-<id>/.chunkd-meta)\n"
    "  -o, --out FILE        the journal to write (replaced atomically)\n"
    "  -n, --records N       records in all (default 1000000; at least one per chunk)\n"
    "  -s, --seed N          interleaving and id seed (default 1)\n"
    "  -h, --help            show this help and exit\n"
    "\n"
    "Prints the counts and the file size. Exit status: 0 done, 2 bad usage, 3 failure.\n";

#define die(...)                                                    \
	do {                                                        \
		fprintf(stderr, "bench-journal-gen: " __VA_ARGS__); \
		fputc('\n', stderr);                                \
		exit(3);                                            \
	} while (0)

/* The owner word of the requests: start time 12345 ticks, pid 4194303 (never alive together). */
#define FAKE_OWNER ((12345ull << 22) | 4194303u)
#define NCLIENTS   64

static uint64_t rng_state;

static uint64_t rng_next(void)
{
	/* splitmix64 */
	uint64_t z = (rng_state += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

struct pub {
	uint64_t id[4];
	char ds_hex[65];
	char rel[64 + 1 + 256]; /* <dataset-hex>/<dir name> */
};

/* The published chunks: every chunks/<dataset>/<dir> whose name parses. */
static struct pub *scan(const char *data, size_t *n)
{
	char path[PATH_MAX];
	snprintf(path, sizeof(path), "%s/chunks", data);
	DIR *top = opendir(path);
	if (!top)
		die("%s: %s", path, strerror(errno));
	struct pub *v = NULL;
	size_t nv = 0, cap = 0;
	struct dirent *de;
	while ((de = readdir(top))) {
		uint8_t ds[32];
		if (strlen(de->d_name) != 64 || chunkd__hex_decode(de->d_name, 64, ds))
			continue;
		char sub[PATH_MAX + 80];
		snprintf(sub, sizeof(sub), "%s/%s", path, de->d_name);
		DIR *d = opendir(sub);
		if (!d)
			die("%s: %s", sub, strerror(errno));
		struct dirent *ce;
		while ((ce = readdir(d))) {
			uint64_t first, end;
			uint8_t id[32];
			if (chunkd__meta_parse_dir_name(ce->d_name, &first, &end, id) < 0)
				continue;
			if (nv == cap) {
				cap = cap ? 2 * cap : 4096;
				v = realloc(v, cap * sizeof(*v));
				if (!v)
					die("out of memory");
			}
			memcpy(v[nv].id, id, sizeof(v[nv].id));
			memcpy(v[nv].ds_hex, de->d_name, 65);
			snprintf(v[nv].rel, sizeof(v[nv].rel), "%s/%s", de->d_name, ce->d_name);
			nv++;
		}
		closedir(d);
	}
	closedir(top);
	*n = nv;
	return v;
}

/* The DOWNLOAD descriptor of a published chunk, from its .chunkd-meta. */
static void load_dl(int chunks_fd, const struct pub *p, struct chunkd_meta *m,
		    struct chunkd_dl *dl)
{
	char why[128] = "";
	int fd = openat(chunks_fd, p->rel, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		die("chunks/%s: %s", p->rel, strerror(errno));
	int r = chunkd__meta_read_at(fd, m, why, sizeof(why));
	close(fd);
	if (r < 0)
		die("chunks/%s/%s: %s %s", p->rel, CHUNKD_META_NAME, strerror(-r), why);
	char id_hex[65];
	chunkd__hex_encode(m->id, 32, id_hex);
	memcpy(dl->id, m->id, sizeof(dl->id));
	memcpy(dl->dataset, m->dataset, sizeof(dl->dataset));
	dl->first_block = m->first_block;
	dl->end_block = m->end_block;
	dl->nfiles = m->nfiles;
	for (uint32_t k = 0; k < m->nfiles; k++) {
		snprintf(dl->files[k].name, sizeof(dl->files[k].name), "%s", m->files[k].name);
		snprintf(dl->files[k].url, sizeof(dl->files[k].url),
			 "http://origin.example.net:8080/%.16s/%s/%s", p->ds_hex, id_hex,
			 m->files[k].name);
	}
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"data-dir", required_argument, NULL, 'd'}, {"out", required_argument, NULL, 'o'},
	    {"records", required_argument, NULL, 'n'},  {"seed", required_argument, NULL, 's'},
	    {"help", no_argument, NULL, 'h'},           {NULL, 0, NULL, 0},
	};
	const char *data = NULL, *out = NULL;
	uint64_t records = 1000000, seed = 1;
	int c;
	while ((c = getopt_long(argc, argv, "d:o:n:s:h", opts, NULL)) != -1) {
		switch (c) {
		case 'd':
			data = optarg;
			break;
		case 'o':
			out = optarg;
			break;
		case 'n':
			if (bench_parse_num("--records", optarg, 1, 1000000000, &records))
				return 2;
			break;
		case 's':
			if (bench_parse_num("--seed", optarg, 0, UINT64_MAX, &seed))
				return 2;
			break;
		case 'h':
			fputs(usage, stdout);
			return 0;
		default:
			fputs("Try 'bench-journal-gen --help'.\n", stderr);
			return 2;
		}
	}
	if (!data || !out) {
		fputs("bench-journal-gen: --data-dir and --out are required\n"
		      "Try 'bench-journal-gen --help'.\n",
		      stderr);
		return 2;
	}
	rng_state = seed;

	size_t npub;
	struct pub *pub = scan(data, &npub);
	if (npub > records)
		die("%zu published chunks need at least %zu records (--records)", npub, npub);
	/* Visit the published chunks in a random order. */
	for (size_t i = npub; i > 1; i--) {
		size_t k = (size_t)(rng_next() % i);
		struct pub t = pub[i - 1];
		pub[i - 1] = pub[k];
		pub[k] = t;
	}

	/* A fresh directory next to --out for journal.c to create its file in. */
	char tmpdir[PATH_MAX], jpath[PATH_MAX + 16], cpath[PATH_MAX + 16];
	snprintf(tmpdir, sizeof(tmpdir), "%s.gen.XXXXXX", out);
	if (!mkdtemp(tmpdir))
		die("mkdtemp %s: %s", tmpdir, strerror(errno));
	int dirfd = open(tmpdir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	snprintf(cpath, sizeof(cpath), "%s/chunks", data);
	int chunks_fd = open(cpath, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (dirfd < 0 || chunks_fd < 0)
		die("open: %s", strerror(errno));
	struct chunkd_journal *j;
	struct chunkd_journal_stats st;
	int r = chunkd__journal_open(dirfd, &j, NULL, NULL, &st);
	if (r < 0)
		die("chunkd__journal_open: %s %s", strerror(-r), st.why);

	struct chunkd_dl *dl = calloc(1, sizeof(*dl));
	struct chunkd_meta *m = calloc(1, sizeof(*m));
	if (!dl || !m)
		die("out of memory");
	uint64_t left_dl = npub, left = records, ndl = 0, ndel = 0, ticket = 0;
	while (left) {
		ticket++;
		struct chunkd_jrec rec = {.client = (uint32_t)(ticket % NCLIENTS),
					  .owner = FAKE_OWNER,
					  .ticket = ticket};
		/* A download with probability (downloads left) / (records left). */
		if (left_dl && rng_next() % left < left_dl) {
			const struct pub *p = &pub[npub - left_dl];
			load_dl(chunks_fd, p, m, dl);
			dl->ticket = rec.ticket;
			rec.type = CHUNKD_JREC_DOWNLOAD;
			memcpy(rec.id, p->id, sizeof(rec.id));
			rec.dl = dl;
			left_dl--;
			ndl++;
		} else {
			rec.type = CHUNKD_JREC_DELETE;
			for (int w = 0; w < 4; w++)
				rec.id[w] = rng_next();
			ndel++;
		}
		r = chunkd__journal_append(j, &rec);
		if (r < 0)
			die("chunkd__journal_append: %s", strerror(-r));
		left--;
		if (ticket % 65536 == 0 && (r = chunkd__journal_sync(j)) < 0)
			die("chunkd__journal_sync: %s", strerror(-r));
	}
	r = chunkd__journal_sync(j);
	if (r < 0)
		die("chunkd__journal_sync: %s", strerror(-r));
	chunkd__journal_stats(j, &st);
	chunkd__journal_close(j);
	snprintf(jpath, sizeof(jpath), "%s/%s", tmpdir, CHUNKD_JOURNAL_NAME);
	if (rename(jpath, out) < 0)
		die("rename %s %s: %s", jpath, out, strerror(errno));
	close(dirfd);
	close(chunks_fd);
	if (rmdir(tmpdir) < 0)
		die("rmdir %s: %s", tmpdir, strerror(errno));
	printf("bench-journal-gen: %s: %llu records (%llu DOWNLOAD of published chunks, %llu "
	       "DELETE of unknown ids), %llu bytes\n",
	       out, (unsigned long long)records, (unsigned long long)ndl, (unsigned long long)ndel,
	       (unsigned long long)st.file_bytes);
	free(dl);
	free(m);
	free(pub);
	return 0;
}
