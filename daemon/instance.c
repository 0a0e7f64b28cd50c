/*
 * instance.c — see instance.h.
 */
#include "instance.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "shm/atomics.h"

uint64_t chunkd__now_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Make the data dir absolute (creating it if missing) and check its length. */
static int resolve_data_dir(const char *dir, char out[CHUNKD_DATA_DIR_MAX])
{
	char buf[PATH_MAX];
	if (mkdir(dir, 0755) < 0 && errno != EEXIST) {
		int e = errno;
		log_error("data dir %s: cannot create: %s", dir, strerror(e));
		return -e;
	}
	if (!realpath(dir, buf)) {
		int e = errno;
		log_error("data dir %s: %s", dir, strerror(e));
		return -e;
	}
	if (strlen(buf) > CHUNKD_DATA_DIR_USABLE) {
		log_error("data dir %s: path longer than %d bytes (chunk paths must fit the catalogue)",
			  buf, (int)CHUNKD_DATA_DIR_USABLE);
		return -ENAMETOOLONG;
	}
	strcpy(out, buf);
	return 0;
}

/* flock a file exclusively without blocking; returns the fd, or -EWOULDBLOCK / -errno. */
static int lock_file(int fd)
{
	if (flock(fd, LOCK_EX | LOCK_NB) < 0) {
		int e = errno;
		close(fd);
		return -e;
	}
	return fd;
}

static int lock_data_dir(struct instance *in)
{
	int fd = openat(in->data_fd, "chunkd.lock", O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0) {
		int e = errno;
		log_error("%s/chunkd.lock: %s", in->data_dir, strerror(e));
		return -e;
	}
	int r = lock_file(fd);
	if (r == -EWOULDBLOCK) {
		char pid[32] = "?";
		int rfd = openat(in->data_fd, "chunkd.lock", O_RDONLY | O_CLOEXEC);
		if (rfd >= 0) {
			ssize_t n = read(rfd, pid, sizeof(pid) - 1);
			pid[n > 0 ? n : 0] = '\0';
			pid[strcspn(pid, "\n")] = '\0';
			close(rfd);
		}
		log_error("data dir %s is in use by another chunkd (pid %s)", in->data_dir, pid);
		return -EBUSY;
	}
	if (r < 0) {
		log_error("%s/chunkd.lock: flock: %s", in->data_dir, strerror(-r));
		return r;
	}
	char pid[32];
	int n = snprintf(pid, sizeof(pid), "%d\n", (int)getpid());
	if (ftruncate(r, 0) < 0 || pwrite(r, pid, (size_t)n, 0) != n)
		log_warn("%s/chunkd.lock: cannot record pid: %s", in->data_dir, strerror(errno));
	in->dir_lock_fd = r;
	return 0;
}

static int lock_name(struct instance *in)
{
	char obj[CHUNKD_NAME_MAX + 32];
	chunkd__shm_object(obj, sizeof(obj), in->name, "lock");
	int fd = shm_open(obj, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (fd < 0) {
		int e = errno;
		log_error("%s: %s", obj, strerror(e));
		return -e;
	}
	int r = lock_file(fd);
	if (r == -EWOULDBLOCK) {
		struct chunkd_cat_map m;
		if (chunkd__cat_attach(in->name, 0, &m, NULL, 0) == 0) {
			log_error("instance '%s' is served by a live chunkd (pid %d, data dir %s)",
				  in->name, (int)CHUNKD_OWNER_PID(chunkd__load_relaxed(&m.hdr->daemon)),
				  m.hdr->data_dir);
			chunkd__cat_detach(&m);
		} else {
			log_error("instance '%s' is served by a live chunkd", in->name);
		}
		return -EBUSY;
	}
	if (r < 0) {
		log_error("%s: flock: %s", obj, strerror(-r));
		return r;
	}
	in->name_lock_fd = r;
	return 0;
}

/* Create a fresh shm object of `size` bytes with `mode`, replacing any old one; map it RW. */
static int create_object(const char *name, const char *suffix, mode_t mode, uint64_t size,
			 void **base)
{
	char obj[CHUNKD_NAME_MAX + 32];
	chunkd__shm_object(obj, sizeof(obj), name, suffix);
	shm_unlink(obj);
	int fd = shm_open(obj, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode);
	if (fd < 0) {
		int e = errno;
		log_error("%s: shm_open: %s", obj, strerror(e));
		return -e;
	}
	/* shm_open's mode is filtered by the umask; the request segment must stay writable by the
	 * workers, so set the mode explicitly. */
	if (fchmod(fd, mode) < 0 || ftruncate(fd, (off_t)size) < 0) {
		int e = errno;
		log_error("%s: sizing to %llu bytes: %s", obj, (unsigned long long)size, strerror(e));
		close(fd);
		shm_unlink(obj);
		return -e;
	}
	void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
	int e = errno;
	close(fd);
	if (p == MAP_FAILED) {
		log_error("%s: mmap %llu bytes: %s", obj, (unsigned long long)size, strerror(e));
		shm_unlink(obj);
		return -e;
	}
	*base = p;
	return 0;
}

/* The process-shared rwlock of a catalogue: (re)initialised by every daemon that takes the
 * segment, since a predecessor killed while holding it would have wedged it forever. */
static void init_lock(struct chunkd_cat_hdr *h)
{
	pthread_rwlockattr_t ra;
	pthread_rwlockattr_init(&ra);
	pthread_rwlockattr_setpshared(&ra, PTHREAD_PROCESS_SHARED);
	pthread_rwlockattr_setkind_np(&ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&h->lock, &ra);
	pthread_rwlockattr_destroy(&ra);
}

/* Make a seqlock counter even again: a writer killed inside its write section left it odd.
 * The data it protects is rewritten by this daemon before anyone relies on it. */
static int repair_seq(uint32_t *seq)
{
	uint32_t v = chunkd__load_relaxed(seq);
	if (!(v & 1u))
		return 0;
	/* Pairs with readers' acquire loads: the data is as the dead writer left it, and a reader
	 * that accepts it is racing a rewrite that the catalogue flush publishes anyway. */
	chunkd__store_release(seq, v + 1);
	return 1;
}

/* Take over the segments of a dead daemon of the same instance, keeping every client slot,
 * pin, queued request and the published catalogue, so that attached workers notice nothing.
 * Returns 0, or a negative errno when they cannot be adopted (the caller recreates them). */
static int adopt_segments(struct instance *in, uint32_t max_chunks, uint32_t max_clients)
{
	struct chunkd_cat_map cat;
	struct chunkd_req_map req;
	char why[256];
	int r = chunkd__cat_attach(in->name, 1, &cat, why, sizeof(why));
	if (r == -ENOENT)
		return r;
	if (r < 0) {
		log_info("recreating instance '%s' segments: %s", in->name, why);
		return r;
	}
	if (cat.geom.max_chunks != max_chunks || strcmp(cat.hdr->data_dir, in->data_dir)) {
		log_info("recreating instance '%s' segments: they were made for %u chunks in %s, "
			 "this daemon has %u chunks in %s", in->name, cat.geom.max_chunks,
			 cat.hdr->data_dir, max_chunks, in->data_dir);
		chunkd__cat_detach(&cat);
		return -ESTALE;
	}
	r = chunkd__req_attach(in->name, 1, &req, why, sizeof(why));
	if (r == 0 && req.geom.max_clients != max_clients) {
		snprintf(why, sizeof(why), "--max-clients changed from %u to %u",
			 req.geom.max_clients, max_clients);
		chunkd__req_detach(&req);
		r = -ESTALE;
	}
	if (r < 0) {
		log_info("recreating instance '%s' segments: %s", in->name, why);
		chunkd__cat_detach(&cat);
		return r;
	}
	struct chunkd_cat_hdr *h = cat.hdr;
	uint64_t owner = chunkd__load_relaxed(&h->daemon);
	init_lock(h);
	uint32_t repaired = 0, hwm = chunkd__load_relaxed(&h->slot_hwm);
	if (hwm > max_chunks)
		hwm = max_chunks;
	for (uint32_t i = 0; i < hwm; i++)
		repaired += (uint32_t)repair_seq(&cat.slots[i].seq);
	for (int k = 0; k < 2; k++)
		repaired += (uint32_t)repair_seq(&cat.idx[k].hdr->seq);
	chunkd__store_relaxed(&h->daemon, chunkd__owner_of(0));
	chunkd__fetch_add(&h->epoch, 1, __ATOMIC_RELAXED);
	chunkd__store_relaxed(&h->start_time_ns, chunkd__now_ns());
	chunkd__store_relaxed(&h->heartbeat_ns, chunkd__now_ns());
	chunkd__store_release(&h->state, (uint32_t)CHUNKD_STATE_STARTING);
	in->cat = cat;
	in->req = req;
	in->adopted = 1;
	log_info("taking over instance '%s' from daemon pid %d (no longer running): adopted its "
		 "segments, clients and pins (epoch %llu)", in->name, (int)CHUNKD_OWNER_PID(owner),
		 (unsigned long long)chunkd__load_relaxed(&h->epoch));
	if (repaired)
		log_info("repaired %u seqlock counter%s left odd by the previous daemon", repaired,
			 repaired == 1 ? "" : "s");
	return 0;
}

static int create_segments(struct instance *in, uint32_t max_chunks, uint32_t max_clients)
{
	uint64_t epoch = 0;
	struct chunkd_cat_map old;
	char why[256];
	int r = chunkd__cat_attach(in->name, 0, &old, why, sizeof(why));
	if (r == 0) {
		uint64_t owner = chunkd__load_relaxed(&old.hdr->daemon);
		epoch = chunkd__load_relaxed(&old.hdr->epoch);
		if (owner)
			log_info("taking over instance '%s' from daemon pid %d (no longer running)",
				 in->name, (int)CHUNKD_OWNER_PID(owner));
		chunkd__cat_detach(&old);
	} else if (r != -ENOENT) {
		log_info("replacing instance '%s' segments: %s", in->name, why);
	}

	struct chunkd_cat_geom cg;
	struct chunkd_req_geom rg;
	chunkd__cat_geometry(max_chunks, &cg);
	chunkd__req_geometry(max_clients, &rg);
	void *cbase, *rbase;
	r = create_object(in->name, "cat", 0644, cg.size, &cbase);
	if (r < 0)
		return r;
	r = create_object(in->name, "req", 0666, rg.size, &rbase);
	if (r < 0) {
		munmap(cbase, cg.size);
		return r;
	}
	chunkd__cat_bind(&in->cat, cbase, &cg);
	in->cat.writable = 1;
	chunkd__req_bind(&in->req, rbase, &rg);

	/* The catalogue: fresh pages are zero, i.e. every slot FREE with gen 0 and both index
	 * copies empty and even. */
	struct chunkd_cat_hdr *h = in->cat.hdr;
	h->magic = CHUNKD_CAT_MAGIC;
	h->format = CHUNKD_SHM_FORMAT;
	h->max_chunks = max_chunks;
	h->size = cg.size;
	h->slots_off = cg.slots_off;
	h->index_off[0] = cg.index_off[0];
	h->index_off[1] = cg.index_off[1];
	h->index_bytes = cg.index_bytes;
	snprintf(h->data_dir, sizeof(h->data_dir), "%s", in->data_dir);
	init_lock(h);
	chunkd__store_relaxed(&h->daemon, chunkd__owner_of(0));
	chunkd__store_relaxed(&h->epoch, epoch + 1);
	chunkd__store_relaxed(&h->start_time_ns, chunkd__now_ns());
	chunkd__store_relaxed(&h->heartbeat_ns, chunkd__now_ns());
	chunkd__store_relaxed(&h->state, (uint32_t)CHUNKD_STATE_STARTING);
	/* Ready flag; pairs with the acquire load of version in chunkd__cat_attach. */
	chunkd__store_release(&h->version, CHUNKD_SHM_VERSION);

	struct chunkd_req_hdr *q = in->req.hdr;
	q->magic = CHUNKD_REQ_MAGIC;
	q->format = CHUNKD_SHM_FORMAT;
	q->max_clients = max_clients;
	q->pins_per_client = CHUNKD_PINS_PER_CLIENT;
	q->client_stride = rg.client_stride;
	q->clients_off = rg.clients_off;
	q->size = rg.size;
	/* Ready flag; pairs with the acquire load of version in chunkd__req_attach. */
	chunkd__store_release(&q->version, CHUNKD_SHM_VERSION);
	return 0;
}

int chunkd__instance_open(struct instance *in, const char *name, const char *data_dir,
			  uint32_t max_chunks, uint32_t max_clients)
{
	memset(in, 0, sizeof(*in));
	in->data_fd = in->dir_lock_fd = in->name_lock_fd = -1;
	int r = chunkd__name_resolve(name, in->name);
	if (r < 0) {
		log_error("bad instance name '%s': use 1-64 bytes of [A-Za-z0-9._-]", name);
		return r;
	}
	r = resolve_data_dir(data_dir, in->data_dir);
	if (r < 0)
		return r;
	in->data_fd = open(in->data_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (in->data_fd < 0) {
		r = -errno;
		log_error("data dir %s: %s", in->data_dir, strerror(-r));
		return r;
	}
	r = lock_data_dir(in);
	if (r < 0)
		goto err_fd;
	r = lock_name(in);
	if (r < 0)
		goto err_dir_lock;
	r = adopt_segments(in, max_chunks, max_clients);
	if (r < 0)
		r = create_segments(in, max_chunks, max_clients);
	if (r < 0)
		goto err_name_lock;
	return 0;

err_name_lock:
	close(in->name_lock_fd);
err_dir_lock:
	close(in->dir_lock_fd);
err_fd:
	close(in->data_fd);
	return r;
}

void chunkd__instance_close(struct instance *in)
{
	if (in->cat.hdr) {
		chunkd__store_relaxed(&in->cat.hdr->heartbeat_ns, chunkd__now_ns());
		chunkd__store_release(&in->cat.hdr->state, (uint32_t)CHUNKD_STATE_STOPPED);
		munmap(in->cat.hdr, in->cat.size);
	}
	if (in->req.hdr)
		munmap(in->req.hdr, in->req.size);
	close(in->name_lock_fd);
	close(in->dir_lock_fd);
	close(in->data_fd);
	memset(in, 0, sizeof(*in));
}
