/*
 * store.c — see store.h.
 *
 * The start-up scan reads one metadata file and stats every listed file per chunk; with 100k
 * chunks that is ~600k syscalls, so datasets are spread over a few threads. Each thread only
 * reads the disk and fills its own candidate list; slots are allocated afterwards by the calling
 * thread, which is the catalogue's only writer.
 */
#include "store.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "log.h"
#include "meta.h"

int chunkd__rm_tree_at(int dirfd, const char *name)
{
	if (unlinkat(dirfd, name, 0) == 0 || errno == ENOENT)
		return 0;
	if (errno != EISDIR && errno != EPERM)
		return -errno;
	int fd = openat(dirfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	DIR *d = fdopendir(fd);
	if (!d) {
		int e = errno;
		close(fd);
		return -e;
	}
	int r = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		int e = chunkd__rm_tree_at(fd, de->d_name);
		if (e < 0 && r == 0)
			r = e;
	}
	closedir(d);
	if (unlinkat(dirfd, name, AT_REMOVEDIR) < 0 && errno != ENOENT && r == 0)
		r = -errno;
	return r;
}

/* Empty the directory `sub` of the data dir; returns entries removed or a negative errno. */
static int purge_dir(struct instance *in, const char *sub)
{
	int fd = openat(in->data_fd, sub, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	DIR *d = fdopendir(fd);
	if (!d) {
		int e = errno;
		close(fd);
		return -e;
	}
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		int r = chunkd__rm_tree_at(fd, de->d_name);
		if (r < 0)
			log_warn("%s/%s/%s: cannot remove: %s", in->data_dir, sub, de->d_name,
				 strerror(-r));
		else
			n++;
	}
	closedir(d);
	return n;
}

int chunkd__store_prepare(struct instance *in, struct scan_stats *st)
{
	static const char *const subs[] = {"chunks", "staging", "trash"};
	for (int i = 0; i < 3; i++) {
		if (mkdirat(in->data_fd, subs[i], 0755) < 0 && errno != EEXIST) {
			int e = errno;
			log_error("%s/%s: %s", in->data_dir, subs[i], strerror(e));
			return -e;
		}
	}
	/* staging/ is left to the engine: after the journal's replay it resumes the downloads
	 * still wanted and removes the rest. */
	for (int i = 2; i < 3; i++) {
		int n = purge_dir(in, subs[i]);
		if (n < 0) {
			log_error("%s/%s: %s", in->data_dir, subs[i], strerror(-n));
			return n;
		}
		if (n > 0)
			log_info("purged %d leftover entr%s from %s/", n, n == 1 ? "y" : "ies",
				 subs[i]);
		st->purged += (uint32_t)n;
	}
	return 0;
}

/* A well-formed chunk found by the scan. */
struct candidate {
	struct chunkd_idx_entry e;
	uint32_t nfiles;
	uint64_t bytes;
	char rel[CHUNKD_META_REL_PATH_LEN + 1]; /* <dataset-hex>/<dir name> */
};

struct scan_job {
	struct instance *in;
	int chunks_fd;
	char (*datasets)[CHUNKD_META_HEX_LEN + 1];
	uint32_t ndatasets;
	uint32_t next; /* atomic: next dataset to scan */
	pthread_mutex_t lock;
	struct candidate *cands;
	size_t ncands, capcands;
	uint32_t skipped;
};

static void skip(struct scan_job *j, const char *rel, const char *why)
{
	log_warn("skipping %s/chunks/%s: %s", j->in->data_dir, rel, why);
	__atomic_fetch_add(&j->skipped, 1, __ATOMIC_RELAXED);
}

/* Check one chunk dir; on success fill *c. */
static int check_chunk(struct scan_job *j, int dsfd, const uint8_t dataset[32], const char *dsname,
		       const char *name, unsigned char d_type, struct candidate *c)
{
	char rel[CHUNKD_META_HEX_LEN + 2 + 256], why[600];
	snprintf(rel, sizeof(rel), "%s/%s", dsname, name);
	uint64_t first, end;
	uint8_t id[32];
	if (chunkd__meta_parse_dir_name(name, &first, &end, id) < 0) {
		skip(j, rel, "name is not <first:020>-<end:020>-<id-hex>");
		return -EINVAL;
	}
	/* The directory entry's type saves opening the chunk dir (two syscalls of about six per
	 * chunk): a real directory is read through paths below the dataset dir. A symlink or
	 * anything else is refused as opening it with O_DIRECTORY | O_NOFOLLOW would. */
	int fd = -1;
	if (d_type == DT_LNK || (d_type != DT_DIR && d_type != DT_UNKNOWN)) {
		snprintf(why, sizeof(why), "cannot open: %s",
			 strerror(d_type == DT_LNK ? ELOOP : ENOTDIR));
		skip(j, rel, why);
		return -EINVAL;
	}
	if (d_type == DT_UNKNOWN) {
		fd = openat(dsfd, name, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
		if (fd < 0) {
			snprintf(why, sizeof(why), "cannot open: %s", strerror(errno));
			skip(j, rel, why);
			return -EINVAL;
		}
	}
	struct chunkd_meta *m = malloc(sizeof(*m));
	int r = !m ? -ENOMEM
		   : fd >= 0 ? chunkd__meta_read_at(fd, m, why, sizeof(why))
			     : chunkd__meta_read_in(dsfd, name, m, why, sizeof(why));
	if (r == -ENOENT)
		snprintf(why, sizeof(why), "no %s file", CHUNKD_META_NAME);
	else if (r < 0 && r != -EINVAL && r != -E2BIG)
		snprintf(why, sizeof(why), "%s: %s", CHUNKD_META_NAME, strerror(-r));
	if (r == 0) {
		if (memcmp(m->id, id, 32) || memcmp(m->dataset, dataset, 32) ||
		    m->first_block != first || m->end_block != end) {
			snprintf(why, sizeof(why), "metadata disagrees with the directory's path");
			r = -EINVAL;
		}
	}
	uint64_t bytes = 0;
	for (uint32_t i = 0; r == 0 && i < m->nfiles; i++) {
		struct stat st;
		char fpath[CHUNKD_META_DIR_NAME_LEN + CHUNKD_MAX_NAME + 2];
		int sr;
		if (fd >= 0) {
			sr = fstatat(fd, m->files[i].name, &st, AT_SYMLINK_NOFOLLOW);
		} else {
			/* name was validated as a chunk dir name: the path always fits. */
			snprintf(fpath, sizeof(fpath), "%s/%s", name, m->files[i].name);
			sr = fstatat(dsfd, fpath, &st, AT_SYMLINK_NOFOLLOW);
		}
		if (sr < 0) {
			snprintf(why, sizeof(why), "file '%s': %s", m->files[i].name, strerror(errno));
			r = -EINVAL;
		} else if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size != m->files[i].size) {
			snprintf(why, sizeof(why),
				 "file '%s': %s %lld bytes, metadata says %llu", m->files[i].name,
				 S_ISREG(st.st_mode) ? "has" : "is not a regular file;",
				 (long long)st.st_size, (unsigned long long)m->files[i].size);
			r = -EINVAL;
		}
		bytes += m->files[i].size;
	}
	if (fd >= 0)
		close(fd);
	if (r < 0) {
		skip(j, rel, why);
		free(m);
		return r;
	}
	memcpy(c->e.dataset, dataset, 32);
	memcpy(c->e.id, id, 32);
	c->e.first = first;
	c->e.end = end;
	c->nfiles = m->nfiles;
	c->bytes = bytes;
	/* Both names were validated above: exactly 64 and CHUNKD_META_DIR_NAME_LEN bytes. */
	memcpy(c->rel, rel, CHUNKD_META_REL_PATH_LEN);
	c->rel[CHUNKD_META_REL_PATH_LEN] = '\0';
	free(m);
	return 0;
}

static int push(struct candidate **v, size_t *n, size_t *cap, const struct candidate *c)
{
	if (*n == *cap) {
		size_t nc = *cap ? *cap * 2 : 1024;
		struct candidate *p = realloc(*v, nc * sizeof(*p));
		if (!p)
			return -ENOMEM;
		*v = p;
		*cap = nc;
	}
	(*v)[(*n)++] = *c;
	return 0;
}

static void scan_dataset(struct scan_job *j, const char *dsname, struct candidate **v, size_t *n,
			 size_t *cap)
{
	uint8_t dataset[32];
	chunkd__hex_decode(dsname, CHUNKD_META_HEX_LEN, dataset);
	int dsfd = openat(j->chunks_fd, dsname, O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
	if (dsfd < 0) {
		skip(j, dsname, strerror(errno));
		return;
	}
	DIR *d = fdopendir(dsfd);
	if (!d) {
		close(dsfd);
		return;
	}
	struct dirent *de;
	struct candidate c;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (check_chunk(j, dsfd, dataset, dsname, de->d_name, de->d_type, &c) == 0 &&
		    push(v, n, cap, &c) < 0)
			skip(j, de->d_name, "out of memory");
	}
	closedir(d);
}

static void *scan_thread(void *arg)
{
	struct scan_job *j = arg;
	struct candidate *v = NULL;
	size_t n = 0, cap = 0;
	for (;;) {
		uint32_t k = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
		if (k >= j->ndatasets)
			break;
		scan_dataset(j, j->datasets[k], &v, &n, &cap);
	}
	pthread_mutex_lock(&j->lock);
	for (size_t i = 0; i < n; i++)
		if (push(&j->cands, &j->ncands, &j->capcands, &v[i]) < 0)
			skip(j, v[i].rel, "out of memory");
	pthread_mutex_unlock(&j->lock);
	free(v);
	return NULL;
}

static int cand_cmp(const void *a, const void *b)
{
	return chunkd__idx_entry_cmp(&((const struct candidate *)a)->e,
				     &((const struct candidate *)b)->e);
}

/* A dataset directory name: exactly 64 lowercase hex digits (one spelling per dataset). */
static int is_hex64(const char *s)
{
	size_t n = 0;
	for (; s[n]; n++)
		if (!((s[n] >= '0' && s[n] <= '9') || (s[n] >= 'a' && s[n] <= 'f')))
			return 0;
	return n == CHUNKD_META_HEX_LEN;
}

int chunkd__store_scan(struct instance *in, struct catalog *cat, unsigned threads,
		       struct scan_stats *st)
{
	struct scan_job j;
	memset(&j, 0, sizeof(j));
	j.in = in;
	pthread_mutex_init(&j.lock, NULL);
	j.chunks_fd = openat(in->data_fd, "chunks", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (j.chunks_fd < 0) {
		int e = errno;
		log_error("%s/chunks: %s", in->data_dir, strerror(e));
		return -e;
	}
	/* List dataset directories. */
	int dfd = dup(j.chunks_fd);
	DIR *d = dfd >= 0 ? fdopendir(dfd) : NULL;
	if (!d) {
		int e = errno;
		if (dfd >= 0)
			close(dfd);
		close(j.chunks_fd);
		return -e;
	}
	uint32_t capds = 0;
	struct dirent *de;
	int r = 0;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (!is_hex64(de->d_name)) {
			skip(&j, de->d_name, "not a dataset directory (64 lowercase hex digits)");
			continue;
		}
		if (j.ndatasets == capds) {
			capds = capds ? capds * 2 : 256;
			void *p = realloc(j.datasets, capds * sizeof(*j.datasets));
			if (!p) {
				r = -ENOMEM;
				break;
			}
			j.datasets = p;
		}
		memcpy(j.datasets[j.ndatasets++], de->d_name, CHUNKD_META_HEX_LEN + 1); /* checked */
	}
	closedir(d);
	if (r < 0)
		goto out;

	if (threads < 1)
		threads = 1;
	if (threads > j.ndatasets)
		threads = j.ndatasets ? j.ndatasets : 1;
	pthread_t tids[64];
	if (threads > 64)
		threads = 64;
	unsigned started = 0;
	for (unsigned t = 1; t < threads; t++)
		if (pthread_create(&tids[started], NULL, scan_thread, &j) == 0)
			started++;
	scan_thread(&j);
	for (unsigned t = 0; t < started; t++)
		pthread_join(tids[t], NULL);

	if (j.ncands)
		qsort(j.cands, j.ncands, sizeof(*j.cands), cand_cmp);
	/* Publish in (dataset, first) order; a range overlapping its predecessor is skipped.
	 * An adopted catalogue already holds slots: a chunk on disk keeps its slot (and so the
	 * pins on it), and slots whose chunk is not on disk any more are freed below. */
	uint8_t *seen = calloc(cat->cap, 1);
	if (!seen) {
		r = -ENOMEM;
		goto out;
	}
	const struct candidate *prev = NULL;
	struct chunkd_slot_copy desc;
	for (size_t i = 0; i < j.ncands; i++) {
		const struct candidate *c = &j.cands[i];
		if (prev && chunkd__id_cmp(prev->e.dataset, c->e.dataset) == 0 &&
		    c->e.first < prev->e.end) {
			log_warn("skipping %s/chunks/%s: its blocks overlap chunks/%s",
				 in->data_dir, c->rel, prev->rel);
			st->overlaps++;
			continue;
		}
		int s = chunkd__catalog_lookup(cat, c->e.id);
		if (s >= 0 && !seen[s] &&
		    chunkd__id_cmp(cat->cat->slots[s].dataset, c->e.dataset) == 0 &&
		    cat->cat->slots[s].first_block == c->e.first &&
		    cat->cat->slots[s].end_block == c->e.end) {
			/* Adopted. A download that reached chunks/ before its daemon died is
			 * complete on disk: publish it. A condemned one stays condemned. */
			seen[s] = 1;
			uint32_t state = cat->sp[s].state;
			if (state != CHUNKD_SLOT_PUBLISHED && state != CHUNKD_SLOT_CONDEMNED)
				chunkd__catalog_set_state(cat, (uint32_t)s, CHUNKD_SLOT_PUBLISHED);
			goto counted;
		}
		memset(&desc, 0, sizeof(desc));
		memcpy(desc.id, c->e.id, 32);
		memcpy(desc.dataset, c->e.dataset, 32);
		desc.first_block = c->e.first;
		desc.end_block = c->e.end;
		desc.nfiles = c->nfiles;
		desc.bytes_total = desc.bytes_done = c->bytes;
		/* Fits: instance.c bounds the data dir by CHUNKD_DATA_DIR_USABLE. */
		if (snprintf(desc.path, sizeof(desc.path), "%s/chunks/%s", in->data_dir, c->rel) >=
		    (int)sizeof(desc.path))
			continue;
		s = chunkd__catalog_alloc(cat, &desc, CHUNKD_SLOT_PUBLISHED);
		if (s == -ENOSPC) {
			st->no_room++;
			continue;
		}
		if (s < 0) {
			log_warn("skipping %s/chunks/%s: chunk id already published",
				 in->data_dir, c->rel);
			st->overlaps++;
			continue;
		}
		seen[s] = 1;
	counted:
		if (!prev || chunkd__id_cmp(prev->e.dataset, c->e.dataset) != 0)
			st->datasets++;
		st->published++;
		st->bytes += c->bytes;
		prev = c;
	}
	/* Adopted slots without a directory: their chunk is gone (or never arrived). Downloads
	 * still wanted come back from the request journal. */
	for (uint32_t s = 0; s < cat->cap; s++) {
		if (!seen[s] && cat->sp[s].state != CHUNKD_SLOT_FREE)
			chunkd__catalog_set_state(cat, s, CHUNKD_SLOT_CONDEMNED);
	}
	/* One flip for all of them (release_slot would flush once per published slot: a full
	 * index rewrite each, quadratic in the catalogue), then free the slots. */
	chunkd__catalog_settle(cat);
	for (uint32_t s = 0; s < cat->cap; s++) {
		if (seen[s] || cat->sp[s].state == CHUNKD_SLOT_FREE)
			continue;
		chunkd__catalog_release_slot(cat, s);
		st->dropped++;
	}
	free(seen);
	if (st->no_room)
		log_error("catalogue full: %u chunk dirs not published (raise --max-chunks above %u)",
			  st->no_room, cat->cap);
	chunkd__catalog_flush(cat);
	st->skipped = j.skipped;
out:
	free(j.cands);
	free(j.datasets);
	close(j.chunks_fd);
	pthread_mutex_destroy(&j.lock);
	return r;
}
