/*
 * engine.c — see engine.h and docs/requests.md.
 *
 * Every chunk the daemon knows has a catalogue slot; a chunk with work to do also has a job
 * (jobs[slot]). A job's `want` is the last accepted request for its id (present or absent); the
 * state machine below only ever moves towards it:
 *
 *   download:  QUEUED -> MKDIR -> RUNNING (files) -> META -> DIRSYNC -> RENAME -> PARENTSYNC
 *              -> published (job freed)
 *   delete:    CONDEMNED (waits for pins) -> TRASH (rename into trash/) -> UNLINK (files, then
 *              the dir) -> slot freed (job freed, or restarted when a download came meanwhile)
 *   cancel:    any download step -> CANCEL (wait for ops in flight) -> staging removed -> slot
 *              freed (or failed, for a download whose attempts ran out)
 *
 * Blocking calls: open/close, directory listing and the resume file's small in-place pwrite run
 * synchronously (metadata operations on the data dir's own file system, and a page-cache copy of
 * at most 256 bytes per file); data writes, fsync, mkdirat, renameat and unlinkat go through
 * io_uring.
 */
#include "engine_internal.h"

#include <assert.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <linux/futex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "journal.h"
#include "log.h"
#include "meta.h"
#include "shm/atomics.h"
#include "store.h"

enum job_state {
	J_QUEUED,
	J_MKDIR,
	J_RUNNING,
	J_META,
	J_DIRSYNC,
	J_RENAME,
	J_PARENTSYNC,
	J_CANCEL,    /* download abandoned: waiting for ops, then staging is removed */
	J_SUSPEND,   /* daemon stopping: waiting for ops, then staging is kept resumable */
	J_CONDEMNED, /* published chunk deleted: unfindable, waiting for pins */
	J_TRASH,     /* rename into trash/ in flight */
	J_UNLINK,    /* unlinking the files in trash/ */
};

enum { RUN_DOWNLOAD = 1, RUN_DELETE = 2 };

/* A download descriptor as the engine keeps it: packed in one allocation (dl_pack). */
struct dlc {
	uint64_t ticket;
	uint64_t id[4], dataset[4];
	uint64_t first_block, end_block;
	uint32_t nfiles;
	struct dlc_file {
		char *name;
		char *url;
	} files[];
};

struct waiter {
	uint32_t client;
	uint64_t owner;
	uint64_t ticket;
};

struct job {
	struct op op; /* the job's own step op (mkdir, meta write, fsync, rename, unlink) */
	uint32_t slot;
	enum job_state state;
	int want_present;
	struct dlc *dl; /* descriptor of the download (NULL for a condemned chunk) */
	struct chunkd_slot_copy desc; /* private copy of the slot's seqlocked fields */
	struct xfer *x;
	uint32_t files_done;
	uint32_t inflight; /* ops of the job and its transfers in flight */
	int dirfd;         /* staging dir (download) or trash dir (delete), -1 when closed */
	char tmpname[96];  /* entry name in staging/ or trash/ */
	int resume_fd;     /* staging/<tmpname>.resume, open once written, -1 when closed */
	char *resume_buf;  /* its records, RESUME_REC bytes per file */
	int fail_err;      /* download failed for good: error to report */
	char fail_msg[CHUNKD_SLOT_MSG_MAX];
	long fail_http;
	struct waiter *waiters;
	uint32_t nwaiters, capwaiters;
	char *meta_buf;
	int running;          /* 0, or RUN_*: counted and linked in the run list */
	enum job_state was;   /* the step a cancellation interrupted */
	int in_chunks;        /* a cancelled download had already been renamed into chunks/ */
	int dead;             /* freed by job_free; the struct waits in the graveyard */
	struct job *next;     /* queue link (graveyard link once dead) */
	struct job *next_run; /* run list link */
};

struct post {
	uint32_t client;
	uint64_t owner;
	uint64_t ticket;
	int32_t result;
	uint64_t seq; /* journal records up to this one must be durable before it is posted */
};

/* A replayed delete whose id had no replay entry when it was read (the common case: a delete of
 * a chunk that is gone). Decided after the scan, when the catalogue is known. */
struct absent {
	uint64_t id[4];
	uint32_t client;
	uint64_t owner;
	uint64_t ticket;
};

/* What the journal said about one chunk id (start-up replay, before the engine applies it). */
struct replayed {
	uint64_t id[4];
	uint32_t type;      /* CHUNKD_JREC_DOWNLOAD or CHUNKD_JREC_DELETE */
	struct dlc *dl; /* DOWNLOAD: the last descriptor */
	struct waiter *w;   /* requesters still waiting for this desired state */
	uint32_t nw, capw;
	uint64_t order;     /* position of its last record, to apply in journal order */
};

/* Desired ranges per dataset, for the overlap check. */
struct dsrange {
	uint64_t first, end;
	uint32_t slot;
};

struct dsv {
	uint64_t dataset[4];
	uint32_t n, cap;
	struct dsrange *v;
};

struct engine {
	struct loop *l;
	struct engine_config cfg;
	struct catalog *cat;
	struct instance *in;
	struct job **jobs; /* by slot */
	struct job *queue_head, *queue_tail;
	struct job *run_list;  /* started downloads and removals */
	struct job *condemned; /* deleted chunks waiting for their pins to go */
	struct job *graveyard; /* jobs ended during this loop iteration, freed at its end */
	uint32_t running_jobs, running_xfers, deleting;
	struct wbuf *free_bufs;
	uint32_t nfree_bufs;
	struct wbuf *bufs;
	uint8_t *buf_mem;
	struct xfer *paused;
	struct post *posts;
	uint32_t nposts, capposts;
	uint8_t *woken; /* per client */
	uint64_t *head;  /* daemon-private ring heads, per client */
	uint32_t nclients;
	uint8_t *rec; /* CHUNKD_REC_MAX bytes to copy a record into */
	struct chunkd_dl *dl_scratch;
	struct dsv *ds; /* open addressing by dataset */
	uint32_t dsmask;
	int staging_fd, trash_fd, chunks_fd;
	uint64_t seq; /* for unique staging/trash names */
	uint64_t rng;
	int more_intake;
	int pins_dirty;
	int quiescing;
	struct http_state *http;
	/* The request journal and its group commit. */
	struct chunkd_journal *jr;
	struct op commit_op;
	int commit_inflight;    /* completions still to come for the commit in flight (0-2) */
	int heads_ready;        /* the last commit completed: release head_commit after posting */
	int commit_res;
	uint64_t *head_commit;  /* per client: ring head covered by the commit in flight */
	uint32_t *ring_gen;     /* per client: bumped when its ring is reset */
	uint32_t *gen_commit;   /* ring_gen at the commit's start */
	uint64_t *gone_seq;     /* per client being reclaimed: journal seq to wait for, or 0 */
	uint8_t *gone;          /* per client: reclaim waiting for the journal */
	/* Start-up replay. */
	struct replayed *rp;
	uint32_t nrp, caprp;
	uint64_t *replay_owner, *replay_ticket; /* per client: the last journaled request */
	/* Per client: the ring's tail at start. Only records before it can have been journaled
	 * by an earlier daemon (the skip by ticket applies to them alone: after a reboot a new
	 * process may carry an old owner word, and CLOCK_MONOTONIC tickets start low again). */
	uint64_t *skip_end;
	uint64_t replay_order;
	uint32_t *rpi_slots; /* hash of replay entries: index + 1, 0 = empty */
	struct absent *absent; /* replayed deletes that no other record of their id follows */
	uint32_t nabsent, capabsent;
	pthread_t replay_thread; /* opens and replays the journal while the disk scan runs */
	int replay_started, replay_result;
	struct chunkd_journal_stats jstats;
	uint32_t rpi_mask;
	int fatal;
};

void chunkd__xfer_op_begin(struct xfer *x)
{
	x->inflight++;
	x->job->inflight++;
}

void chunkd__xfer_op_end(struct xfer *x)
{
	x->inflight--;
	x->job->inflight--;
}

const char *chunkd__xfer_name(const struct xfer *x)
{
	return x->job->dl->files[x->idx].name;
}

const char *chunkd__xfer_url(const struct xfer *x)
{
	return x->job->dl->files[x->idx].url;
}

struct loop *chunkd__engine_loop(struct engine *e)
{
	return e->l;
}

struct http_state **chunkd__engine_http(struct engine *e)
{
	return &e->http;
}

const struct engine_config *chunkd__engine_config(struct engine *e)
{
	return &e->cfg;
}

void chunkd__engine_default_config(struct engine_config *cfg)
{
	cfg->chunks_in_flight = 4;
	cfg->transfers = 16;
	cfg->connect_timeout_ms = 10000;
	cfg->stall_timeout_ms = 30000;
	cfg->attempts = 5;
	cfg->backoff_ms = 100;
	cfg->backoff_max_ms = 10000;
	cfg->buffers = 64;
	cfg->checkpoint_mb = 16;
}

static void job_step(struct engine *e, struct job *j);
static void job_advance(struct engine *e, struct job *j);
static void journal_forget_delete(struct engine *e, const uint64_t id[4]);
static void job_fail_or_cancel_done(struct engine *e, struct job *j);
static void start_cancel(struct engine *e, struct job *j);
static void condemned_add(struct engine *e, struct job *j);
static void condemned_remove(struct engine *e, struct job *j);

/* ---- dataset ranges (overlap check) ------------------------------------------------------- */

static struct dsv *dsv_get(struct engine *e, const uint64_t ds[4], int create)
{
	uint64_t h = (ds[0] ^ ds[1] ^ ds[2] ^ ds[3]) * 0x9E3779B97F4A7C15ull;
	for (uint32_t i = (uint32_t)(h >> 32) & e->dsmask;; i = (i + 1) & e->dsmask) {
		struct dsv *v = &e->ds[i];
		if (v->cap == 0) {
			if (!create)
				return NULL;
			memcpy(v->dataset, ds, sizeof(v->dataset));
			v->cap = 4;
			v->v = malloc(sizeof(*v->v) * v->cap);
			return v->v ? v : NULL;
		}
		if (!chunkd__id_cmp(v->dataset, ds))
			return v;
	}
}

/* Index of the first range with first >= f. */
static uint32_t dsv_lower(const struct dsv *v, uint64_t f)
{
	uint32_t lo = 0, hi = v->n;
	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;
		if (v->v[mid].first < f)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

static int dsv_overlaps(struct engine *e, const uint64_t ds[4], uint64_t first, uint64_t end)
{
	struct dsv *v = dsv_get(e, ds, 0);
	if (!v || v->n == 0)
		return 0;
	uint32_t i = dsv_lower(v, first);
	if (i < v->n && v->v[i].first < end)
		return 1;
	return i > 0 && v->v[i - 1].end > first;
}

static int dsv_add(struct engine *e, const uint64_t ds[4], uint64_t first, uint64_t end,
		   uint32_t slot)
{
	struct dsv *v = dsv_get(e, ds, 1);
	if (!v)
		return -ENOMEM;
	if (v->n == v->cap) {
		struct dsrange *p = realloc(v->v, sizeof(*p) * v->cap * 2);
		if (!p)
			return -ENOMEM;
		v->v = p;
		v->cap *= 2;
	}
	uint32_t i = dsv_lower(v, first);
	memmove(&v->v[i + 1], &v->v[i], sizeof(*v->v) * (v->n - i));
	v->v[i] = (struct dsrange){first, end, slot};
	v->n++;
	return 0;
}

static void dsv_remove(struct engine *e, const uint64_t ds[4], uint64_t first, uint32_t slot)
{
	struct dsv *v = dsv_get(e, ds, 0);
	if (!v)
		return;
	uint32_t i = dsv_lower(v, first);
	if (i < v->n && v->v[i].slot == slot && v->v[i].first == first) {
		memmove(&v->v[i], &v->v[i + 1], sizeof(*v->v) * (v->n - i - 1));
		v->n--;
	}
}

/* ---- results ------------------------------------------------------------------------------ */

static void post(struct engine *e, uint32_t client, uint64_t owner, uint64_t ticket, int result)
{
	if (e->nposts == e->capposts) {
		uint32_t nc = e->capposts ? e->capposts * 2 : 256;
		struct post *p = realloc(e->posts, sizeof(*p) * nc);
		if (!p) {
			log_error("out of memory posting a result; client %u ticket %llu not woken",
				  client, (unsigned long long)ticket);
			return;
		}
		e->posts = p;
		e->capposts = nc;
	}
	e->posts[e->nposts++] = (struct post){client, owner, ticket, result,
					      e->jr ? chunkd__journal_last_seq(e->jr) : 0};
}

static void post_waiters(struct engine *e, struct job *j, int result)
{
	for (uint32_t i = 0; i < j->nwaiters; i++)
		post(e, j->waiters[i].client, j->waiters[i].owner, j->waiters[i].ticket, result);
	j->nwaiters = 0;
}

static int add_waiter(struct job *j, uint32_t client, uint64_t owner, uint64_t ticket)
{
	if (j->nwaiters == j->capwaiters) {
		uint32_t nc = j->capwaiters ? j->capwaiters * 2 : 4;
		struct waiter *p = realloc(j->waiters, sizeof(*p) * nc);
		if (!p)
			return -ENOMEM;
		j->waiters = p;
		j->capwaiters = nc;
	}
	j->waiters[j->nwaiters++] = (struct waiter){client, owner, ticket};
	return 0;
}

/* ---- slots -------------------------------------------------------------------------------- */

static void slot_sync(struct engine *e, struct job *j)
{
	pthread_rwlock_wrlock(&e->cat->cat->hdr->lock);
	chunkd__slot_write(&e->cat->cat->slots[j->slot], &j->desc);
	pthread_rwlock_unlock(&e->cat->cat->hdr->lock);
}

static void set_msg(char *dst, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void set_msg(char *dst, const char *fmt, ...)
{
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(dst, CHUNKD_SLOT_MSG_MAX, fmt, ap);
	va_end(ap);
}

static struct job *job_new(struct engine *e, uint32_t slot)
{
	struct job *j = calloc(1, sizeof(*j));
	if (!j)
		return NULL;
	j->op.fn = NULL;
	j->slot = slot;
	j->dirfd = -1;
	j->resume_fd = -1;
	e->jobs[slot] = j;
	return j;
}

static void xfers_free(struct job *j)
{
	if (!j->x)
		return;
	for (uint32_t i = 0; i < (j->dl ? j->dl->nfiles : 0); i++) {
		if (j->x[i].fd >= 0)
			close(j->x[i].fd);
		free(j->x[i].wq);
	}
	free(j->x);
	j->x = NULL;
}

static void job_unrun(struct engine *e, struct job *j);
static void resume_close(struct job *j);

static void job_free(struct engine *e, struct job *j)
{
	assert(j->inflight == 0);
	job_unrun(e, j);
	if (e->jobs[j->slot] == j)
		e->jobs[j->slot] = NULL;
	xfers_free(j);
	resume_close(j);
	if (j->dirfd >= 0)
		close(j->dirfd);
	free(j->dl);
	free(j->waiters);
	free(j->meta_buf);
	j->dl = NULL;
	j->waiters = NULL;
	j->meta_buf = NULL;
	j->dirfd = -1;
	/* The struct itself lives until the end of the loop iteration: a caller walking the jobs
	 * may still hold it after a call that ended it, and checks `dead`. */
	j->dead = 1;
	j->next = e->graveyard;
	e->graveyard = j;
}

static void bury(struct engine *e)
{
	while (e->graveyard) {
		struct job *j = e->graveyard;
		e->graveyard = j->next;
		free(j);
	}
}

/* Take a job off the run list (a started download or removal that has ended). */
static void job_unrun(struct engine *e, struct job *j)
{
	if (!j->running)
		return;
	struct job **pp = &e->run_list;
	while (*pp && *pp != j)
		pp = &(*pp)->next_run;
	if (*pp)
		*pp = j->next_run;
	if (j->running == RUN_DELETE)
		e->deleting--;
	else
		e->running_jobs--;
	j->running = 0;
}

/* Put a job on the run list, counted as a download or as a removal. */
static void job_run(struct engine *e, struct job *j, int kind)
{
	j->running = kind;
	j->next_run = e->run_list;
	e->run_list = j;
	if (kind == RUN_DELETE)
		e->deleting++;
	else
		e->running_jobs++;
}

static void queue_push(struct engine *e, struct job *j)
{
	j->next = NULL;
	if (e->queue_tail)
		e->queue_tail->next = j;
	else
		e->queue_head = j;
	e->queue_tail = j;
}

static void queue_remove(struct engine *e, struct job *j)
{
	struct job **pp = &e->queue_head, *prev = NULL;
	while (*pp && *pp != j) {
		prev = *pp;
		pp = &(*pp)->next;
	}
	if (!*pp)
		return;
	*pp = j->next;
	if (e->queue_tail == j)
		e->queue_tail = prev;
	j->next = NULL;
}

/* Free a slot whose chunk is gone from disk (or never reached it). */
static void slot_free(struct engine *e, uint32_t slot)
{
	struct chunkd_slot_copy s;
	if (chunkd__slot_read(e->cat->cat, slot, &s) == 0)
		dsv_remove(e, s.dataset, s.first_block, slot);
	chunkd__catalog_set_state(e->cat, slot, CHUNKD_SLOT_CONDEMNED);
	chunkd__catalog_release_slot(e->cat, slot);
}

/* ---- requests ----------------------------------------------------------------------------- */

static void make_rel_path(const struct dlc *dl, char *out, size_t outlen)
{
	char ds[65], id[65];
	chunkd__hex_encode((const uint8_t *)dl->dataset, 32, ds);
	chunkd__hex_encode((const uint8_t *)dl->id, 32, id);
	snprintf(out, outlen, "%s/%020llu-%020llu-%s", ds, (unsigned long long)dl->first_block,
		 (unsigned long long)dl->end_block, id);
}

/* Same chunk? Dataset, range and file names in order; URLs may differ (mirrors). */
static int same_desc_dl(const struct dlc *a, const struct dlc *b)
{
	if (chunkd__id_cmp(a->dataset, b->dataset) || a->first_block != b->first_block ||
	    a->end_block != b->end_block || a->nfiles != b->nfiles)
		return 0;
	for (uint32_t i = 0; i < a->nfiles; i++)
		if (strcmp(a->files[i].name, b->files[i].name))
			return 0;
	return 1;
}

/* Compare a request with a published chunk: its slot and its metadata file. */
static int same_desc_published(struct engine *e, uint32_t slot, const struct dlc *dl)
{
	struct chunkd_slot_copy s;
	if (chunkd__slot_read(e->cat->cat, slot, &s) < 0)
		return 0;
	if (chunkd__id_cmp(s.dataset, dl->dataset) || s.first_block != dl->first_block ||
	    s.end_block != dl->end_block || s.nfiles != dl->nfiles)
		return 0;
	int fd = open(s.path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0)
		return 0;
	struct chunkd_meta *m = malloc(sizeof(*m));
	int same = m && chunkd__meta_read_at(fd, m, NULL, 0) == 0 && m->nfiles == dl->nfiles;
	for (uint32_t i = 0; same && i < dl->nfiles; i++)
		same = !strcmp(m->files[i].name, dl->files[i].name);
	free(m);
	close(fd);
	return same;
}

/* Pack a descriptor into one allocation sized to its strings. */
static struct dlc *dl_pack_files(const struct dlc *hdr, const char *const *names,
				 const char *const *urls)
{
	size_t n = sizeof(struct dlc) + hdr->nfiles * sizeof(hdr->files[0]);
	for (uint32_t i = 0; i < hdr->nfiles; i++)
		n += strlen(names[i]) + strlen(urls[i]) + 2;
	struct dlc *p = malloc(n);
	if (!p)
		return NULL;
	*p = *hdr;
	char *q = (char *)&p->files[hdr->nfiles];
	for (uint32_t i = 0; i < hdr->nfiles; i++) {
		size_t a = strlen(names[i]) + 1, b = strlen(urls[i]) + 1;
		p->files[i].name = memcpy(q, names[i], a);
		p->files[i].url = memcpy(q + a, urls[i], b);
		q += a + b;
	}
	return p;
}

static struct dlc *dl_dup(const struct dlc *dl)
{
	const char *names[CHUNKD_MAX_FILES] = {0}, *urls[CHUNKD_MAX_FILES] = {0};
	for (uint32_t i = 0; i < dl->nfiles; i++) {
		names[i] = dl->files[i].name;
		urls[i] = dl->files[i].url;
	}
	return dl_pack_files(dl, names, urls);
}

/* The compact copy of a decoded descriptor (struct chunkd_dl is ~280 KiB of fixed arrays). */
static struct dlc *dl_pack(const struct chunkd_dl *d)
{
	struct dlc hdr;
	const char *names[CHUNKD_MAX_FILES] = {0}, *urls[CHUNKD_MAX_FILES] = {0};
	hdr.ticket = d->ticket;
	memcpy(hdr.id, d->id, sizeof(hdr.id));
	memcpy(hdr.dataset, d->dataset, sizeof(hdr.dataset));
	hdr.first_block = d->first_block;
	hdr.end_block = d->end_block;
	hdr.nfiles = d->nfiles;
	for (uint32_t i = 0; i < d->nfiles; i++) {
		names[i] = d->files[i].name;
		urls[i] = d->files[i].url;
	}
	return dl_pack_files(&hdr, names, urls);
}

/* Allocate a slot and a queued job for a new download, waited for by ws[0..nws). Returns 0 or
 * a negative errno (then the caller owns the waiters' results). */
static int new_download(struct engine *e, const struct dlc *dl, const struct waiter *ws,
			uint32_t nws)
{
	if (dsv_overlaps(e, dl->dataset, dl->first_block, dl->end_block))
		return -EEXIST;
	struct chunkd_slot_copy d;
	memset(&d, 0, sizeof(d));
	memcpy(d.id, dl->id, 32);
	memcpy(d.dataset, dl->dataset, 32);
	d.first_block = dl->first_block;
	d.end_block = dl->end_block;
	d.nfiles = dl->nfiles;
	char rel[CHUNKD_META_REL_PATH_LEN + 1];
	make_rel_path(dl, rel, sizeof(rel));
	/* Fits: instance.c bounds the data dir by CHUNKD_DATA_DIR_USABLE. */
	if (snprintf(d.path, sizeof(d.path), "%s/chunks/%s", e->in->data_dir, rel) >=
	    (int)sizeof(d.path))
		return -ENAMETOOLONG;
	int slot = chunkd__catalog_alloc(e->cat, &d, CHUNKD_SLOT_QUEUED);
	if (slot < 0)
		return slot;
	struct job *j = job_new(e, (uint32_t)slot);
	struct dlc *copy = dl_dup(dl);
	if (!j || !copy || dsv_add(e, dl->dataset, dl->first_block, dl->end_block,
				   (uint32_t)slot) < 0) {
		free(copy);
		if (j)
			job_free(e, j);
		chunkd__catalog_set_state(e->cat, (uint32_t)slot, CHUNKD_SLOT_CONDEMNED);
		chunkd__catalog_release_slot(e->cat, (uint32_t)slot);
		return -ENOMEM;
	}
	j->dl = copy;
	j->desc = d;
	j->want_present = 1;
	j->state = J_QUEUED;
	for (uint32_t i = 0; i < nws; i++)
		if (add_waiter(j, ws[i].client, ws[i].owner, ws[i].ticket) < 0)
			post(e, ws[i].client, ws[i].owner, ws[i].ticket, -ENOMEM);
	queue_push(e, j);
	return 0;
}

/*
 * A download request: start, join or answer it. Returns 0 when it was accepted (it is the chunk's
 * last request now: a job, a waiter, or 0 posted at once), or the negative errno it was refused
 * with (posted; the chunk's desired state is unchanged), which the journal records as refused.
 */
static int on_download(struct engine *e, const struct dlc *dl, uint32_t client, uint64_t owner)
{
	struct waiter me = {client, owner, dl->ticket};
	int slot = chunkd__catalog_lookup(e->cat, dl->id);
	if (slot < 0) {
		int r = new_download(e, dl, &me, 1);
		if (r < 0)
			post(e, client, owner, dl->ticket, r);
		return r < 0 ? r : 0;
	}
	struct job *j = e->jobs[slot];
	uint32_t st = e->cat->sp[slot].state;
	if (st == CHUNKD_SLOT_PUBLISHED) {
		int r = same_desc_published(e, (uint32_t)slot, dl) ? 0 : -EEXIST;
		post(e, client, owner, dl->ticket, r);
		return r;
	}
	if (!j) { /* a failed download keeps its slot without a job */
		if (st != CHUNKD_SLOT_FAILED) {
			post(e, client, owner, dl->ticket, -EIO);
			return -EIO;
		}
		struct chunkd_slot_copy s;
		if (chunkd__slot_read(e->cat->cat, slot, &s) < 0 ||
		    chunkd__id_cmp(s.dataset, dl->dataset) || s.first_block != dl->first_block ||
		    s.end_block != dl->end_block || s.nfiles != dl->nfiles) {
			post(e, client, owner, dl->ticket, -EEXIST);
			return -EEXIST;
		}
		/* Retry a failed chunk from scratch: a new slot and job. */
		dsv_remove(e, s.dataset, s.first_block, (uint32_t)slot);
		chunkd__catalog_set_state(e->cat, (uint32_t)slot, CHUNKD_SLOT_CONDEMNED);
		chunkd__catalog_release_slot(e->cat, (uint32_t)slot);
		int r = new_download(e, dl, &me, 1);
		if (r < 0)
			post(e, client, owner, dl->ticket, r);
		return r < 0 ? r : 0;
	}
	const struct dlc *have = j->dl;
	if (have && !same_desc_dl(have, dl)) {
		post(e, client, owner, dl->ticket, -EEXIST);
		return -EEXIST;
	}
	/* A deleted chunk (condemned, or already moving to trash: its metadata may be gone)
	 * is compared with what its slot recorded. */
	if (!have && (chunkd__id_cmp(j->desc.dataset, dl->dataset) ||
		      j->desc.first_block != dl->first_block || j->desc.end_block != dl->end_block ||
		      j->desc.nfiles != dl->nfiles)) {
		post(e, client, owner, dl->ticket, -EEXIST);
		return -EEXIST;
	}
	if (j->state == J_CONDEMNED) {
		/* Deleted but still intact (pins hold it): bring it back as it is. */
		dsv_add(e, dl->dataset, dl->first_block, dl->end_block, (uint32_t)slot);
		chunkd__catalog_set_state(e->cat, (uint32_t)slot, CHUNKD_SLOT_PUBLISHED);
		condemned_remove(e, j);
		post_waiters(e, j, 0);
		post(e, client, owner, dl->ticket, 0);
		job_free(e, j);
		return 0;
	}
	if (!j->want_present) {
		/* Being cancelled or removed: download it again once that is done. A cancelled
		 * download keeps its slot, so its range is reserved again now; a removal frees
		 * the slot and new_download() reserves it then. */
		if (j->state == J_CANCEL) {
			if (dsv_overlaps(e, dl->dataset, dl->first_block, dl->end_block) ||
			    dsv_add(e, dl->dataset, dl->first_block, dl->end_block,
				    (uint32_t)slot) < 0) {
				post(e, client, owner, dl->ticket, -EEXIST);
				return -EEXIST;
			}
		}
		j->want_present = 1;
		free(j->dl);
		j->dl = dl_dup(dl);
		if (!j->dl) {
			j->want_present = 0;
			post(e, client, owner, dl->ticket, -ENOMEM);
			return -ENOMEM;
		}
	}
	if (add_waiter(j, client, owner, dl->ticket) < 0) {
		post(e, client, owner, dl->ticket, -ENOMEM);
		return -ENOMEM;
	}
	return 0;
}


static void on_delete(struct engine *e, const uint64_t id[4], uint64_t ticket, uint32_t client,
		      uint64_t owner)
{
	int slot = chunkd__catalog_lookup(e->cat, id);
	if (slot < 0) {
		journal_forget_delete(e, id);
		post(e, client, owner, ticket, 0);
		return;
	}
	struct job *j = e->jobs[slot];
	uint32_t st = e->cat->sp[slot].state;
	struct chunkd_slot_copy s;
	if (!j && st == CHUNKD_SLOT_PUBLISHED) {
		j = job_new(e, (uint32_t)slot);
		if (!j || chunkd__slot_read(e->cat->cat, slot, &s) < 0) {
			if (j)
				job_free(e, j);
			post(e, client, owner, ticket, -ENOMEM);
			return;
		}
		j->desc = s;
		j->state = J_CONDEMNED;
		j->want_present = 0;
		dsv_remove(e, s.dataset, s.first_block, (uint32_t)slot);
		/* Unfindable at the next index flush, which happens before this result is posted. */
		chunkd__catalog_set_state(e->cat, (uint32_t)slot, CHUNKD_SLOT_CONDEMNED);
		condemned_add(e, j);
		post(e, client, owner, ticket, 0);
		return;
	}
	if (!j) { /* failed: nothing on disk */
		slot_free(e, (uint32_t)slot);
		journal_forget_delete(e, id);
		post(e, client, owner, ticket, 0);
		return;
	}
	/* A download in some state, or a removal already under way. */
	post_waiters(e, j, -ECANCELED);
	if (j->want_present && j->dl)
		dsv_remove(e, j->dl->dataset, j->dl->first_block, (uint32_t)slot);
	j->want_present = 0;
	if (j->state == J_QUEUED) {
		/* A queued download may own a staging dir a previous daemon left for it to
		 * resume (kept by purge_staging): it goes with the download. */
		char name[2 * CHUNKD_ID_SIZE + 16];
		chunkd__hex_encode((const uint8_t *)id, CHUNKD_ID_SIZE, name);
		chunkd__rm_tree_at(e->staging_fd, name);
		strcat(name, ".resume");
		unlinkat(e->staging_fd, name, 0);
		queue_remove(e, j);
		job_free(e, j);
		slot_free(e, (uint32_t)slot);
		journal_forget_delete(e, id);
	} else if (j->state <= J_PARENTSYNC) {
		start_cancel(e, j);
	}
	/* Otherwise (J_CANCEL, J_CONDEMNED, J_TRASH, J_UNLINK) it is on its way out already. */
	post(e, client, owner, ticket, 0);
}

/* Take up to `budget` records from client i's ring. Returns 1 if more remain. */
/* Append a request taken from a ring to the journal; `refused` is 0 or the negative errno a
 * download was refused with (journaled too, so that a restart answers it and skips its ring
 * record, but never the chunk's live record). A journal that cannot take it any more (a write or
 * fsync failed) makes durability impossible: the daemon stops rather than pretend. */
static void journal_request(struct engine *e, uint32_t type, uint32_t client, uint64_t owner,
			    uint64_t ticket, const uint64_t id[4], const struct chunkd_dl *dl,
			    int refused)
{
	struct chunkd_jrec r = {.type = type, .client = client, .owner = owner, .ticket = ticket,
				.dl = dl, .refused = refused < -255 ? -EINVAL : refused};
	memcpy(r.id, id, sizeof(r.id));
	int err = chunkd__journal_append(e->jr, &r);
	if (err < 0 && !e->fatal) {
		log_error("journal: cannot append a request: %s; stopping", strerror(-err));
		e->fatal = 1;
	}
}

/* The desired state of id became "absent" and was reached: its DELETE record is not needed. */
static void journal_forget_delete(struct engine *e, const uint64_t id[4])
{
	struct chunkd_journal_entry je;
	if (e->jr && chunkd__journal_live(e->jr, id, &je) == 0 && je.type == CHUNKD_JREC_DELETE)
		chunkd__journal_forget(e->jr, id);
}

static int intake_client(struct engine *e, uint32_t i, uint64_t owner, uint32_t budget)
{
	struct chunkd_req_client *cl = chunkd__req_client(&e->in->req, i);
	/* Pairs with the client's release store of sq_tail after writing the record. */
	uint64_t tail = chunkd__load_acquire(&cl->ctl.sq_tail);
	uint64_t head = e->head[i];
	int more = 0;
	while (head != tail) {
		if (budget-- == 0) {
			more = 1;
			break;
		}
		uint64_t pos = head;
		int n = chunkd__sq_pop(cl, &head, tail, e->rec, CHUNKD_REC_MAX);
		if (n == 0)
			break;
		const struct chunkd_rec_hdr *h = (const struct chunkd_rec_hdr *)e->rec;
		char why[160] = "";
		/* At or below the client's last journaled ticket: a valid record was journaled before
		 * a restart and replayed already. An invalid one never was (its -EINVAL may not have
		 * been posted when the daemon died): it is refused again. */
		int replayed = n > 0 && owner && owner == e->replay_owner[i] &&
			       h->ticket <= e->replay_ticket[i] && pos < e->skip_end[i];
		if (n < 0) {
			log_warn("client pid %d (slot %u): garbage in its request ring; skipped to the "
				 "tail", (int)CHUNKD_OWNER_PID(owner), i);
			chunkd__fetch_add(&cl->d.rejected, 1, __ATOMIC_RELAXED);
			break;
		}
		if (h->type == CHUNKD_REC_DOWNLOAD) {
			int r = chunkd__rec_decode_download(e->rec, (size_t)n, e->dl_scratch, why,
							    sizeof(why));
			if (r == 0 && replayed)
				continue;
			if (r == 0) {
				/* Decided first, then journaled as accepted or refused: a refused
				 * download must not become the chunk's live record. Its results
				 * (posted meanwhile) wait for this record to be durable. */
				uint32_t np = e->nposts;
				struct dlc *d = dl_pack(e->dl_scratch);
				int res = d ? on_download(e, d, i, owner) : -ENOMEM;
				if (!d)
					post(e, i, owner, h->ticket, -ENOMEM);
				free(d);
				journal_request(e, CHUNKD_JREC_DOWNLOAD, i, owner, h->ticket,
						e->dl_scratch->id, e->dl_scratch, res < 0 ? res : 0);
				uint64_t seq = chunkd__journal_last_seq(e->jr);
				for (uint32_t k = np; k < e->nposts; k++)
					e->posts[k].seq = seq;
				continue;
			}
			log_warn("client pid %d (slot %u): rejected download (ticket %llu): %s",
				 (int)CHUNKD_OWNER_PID(owner), i, (unsigned long long)h->ticket, why);
		} else if (h->type == CHUNKD_REC_DELETE && (size_t)n >= sizeof(struct chunkd_rec_delete) &&
			   h->len == (uint32_t)n) {
			uint64_t id[4];
			if (replayed)
				continue;
			memcpy(id, ((const struct chunkd_rec_delete *)e->rec)->id, sizeof(id));
			journal_request(e, CHUNKD_JREC_DELETE, i, owner, h->ticket, id, NULL, 0);
			on_delete(e, id, h->ticket, i, owner);
			continue;
		} else {
			log_warn("client pid %d (slot %u): unknown record type %u",
				 (int)CHUNKD_OWNER_PID(owner), i, h->type);
		}
		if (!replayed) /* counted by the daemon that saw it first */
			chunkd__fetch_add(&cl->d.rejected, 1, __ATOMIC_RELAXED);
		post(e, i, owner, h->ticket, -EINVAL);
	}
	/* The ring space is freed (sq_head stored) only once these records are durable in the
	 * journal: see commit_done(). A crash before that leaves them in the ring, where the next
	 * daemon reads them again (and skips those its journal replay already has). */
	e->head[i] = head;
	return more;
}

void chunkd__engine_intake(struct engine *e)
{
	e->more_intake = 0;
	if (e->quiescing)
		return; /* stopping: requests stay in the rings for the next daemon */
	for (uint32_t i = 0; i < e->nclients; i++) {
		struct chunkd_req_client *cl = chunkd__req_client(&e->in->req, i);
		uint64_t owner = chunkd__load_acquire(&cl->ctl.owner);
		if (owner == 0 || owner == CHUNKD_OWNER_RECLAIM)
			continue;
		if (intake_client(e, i, owner & ~CHUNKD_OWNER_CLOSED, 256))
			e->more_intake = 1;
	}
}

int chunkd__engine_rings_pending(struct engine *e)
{
	if (e->quiescing)
		return 0; /* intake takes nothing now: the records wait for the next daemon */
	for (uint32_t i = 0; i < e->nclients; i++) {
		struct chunkd_req_client *cl = chunkd__req_client(&e->in->req, i);
		/* Pairs with the client's seq_cst CAS/store of its owner word. */
		uint64_t owner = chunkd__load_acquire(&cl->ctl.owner);
		if (owner == 0 || owner == CHUNKD_OWNER_RECLAIM)
			continue;
		/* seq_cst, after the loop's seq_cst store of need_wake = 1: pairs with the client's
		 * release store of sq_tail and its seq_cst fence before it loads need_wake. The
		 * tail is untrusted and only compared; intake validates it. */
		if (chunkd__load_seq_cst(&cl->ctl.sq_tail) != e->head[i])
			return 1;
	}
	return 0;
}

/* Reset a reclaimed client's ring and tickets and free its slot. */
static void finish_gone(struct engine *e, uint32_t client)
{
	struct chunkd_req_client *cl = chunkd__req_client(&e->in->req, client);
	e->gone[client] = 0;
	e->head[client] = 0;
	e->ring_gen[client]++;
	e->replay_owner[client] = 0;
	e->skip_end[client] = 0;
	chunkd__store_relaxed(&cl->d.reclaim_owner, 0);
	chunkd__store_relaxed(&cl->ctl.sq_tail, 0);
	chunkd__store_relaxed(&cl->d.sq_head, 0);
	for (uint32_t t = 0; t < CHUNKD_TICKETS; t++) {
		chunkd__store_relaxed(&cl->tickets[t].done, 0);
		chunkd__store_relaxed(&cl->tickets[t].result, 0);
	}
	/* seq_cst: the reset ring precedes the free owner word for the next client's CAS. */
	chunkd__store_seq_cst(&cl->ctl.owner, 0);
}

void chunkd__engine_client_gone(struct engine *e, uint32_t client)
{
	/* Accepted requests are never lost: take everything still in the ring, as requests of the
	 * client that made them (the owner word it had, kept in reclaim_owner), so that records a
	 * killed daemon journaled already are recognised and skipped, and the journal names the
	 * right requester. Their waiters and results are dropped below. */
	struct chunkd_req_client *cl = chunkd__req_client(&e->in->req, client);
	uint64_t owner = chunkd__load_relaxed(&cl->d.reclaim_owner) & ~CHUNKD_OWNER_CLOSED;
	while (intake_client(e, client, owner, UINT32_MAX))
		;
	e->replay_owner[client] = 0; /* the slot's owner word is RECLAIM now */
	/* Forget the client's waiters; their jobs go on. */
	for (uint32_t s = 0; s < e->cat->cap; s++) {
		struct job *j = e->jobs[s];
		if (!j)
			continue;
		uint32_t k = 0;
		for (uint32_t w = 0; w < j->nwaiters; w++)
			if (j->waiters[w].client != client)
				j->waiters[k++] = j->waiters[w];
		j->nwaiters = k;
	}
	for (uint32_t p = 0; p < e->nposts; p++)
		if (e->posts[p].client == client)
			e->posts[p].owner = 0;
	/* The slot is freed once what we just took is durable: until then a crash must find the
	 * records still in the ring. */
	e->gone[client] = 1;
	e->gone_seq[client] = chunkd__journal_last_seq(e->jr);
	if (!e->commit_inflight && chunkd__journal_durable_seq(e->jr) >= e->gone_seq[client])
		finish_gone(e, client);
}

void chunkd__engine_pins_changed(struct engine *e)
{
	e->pins_dirty = 1;
}

/* ---- write buffers ------------------------------------------------------------------------ */

static struct wbuf *buf_get(struct engine *e)
{
	struct wbuf *b = e->free_bufs;
	if (b) {
		e->free_bufs = b->next;
		e->nfree_bufs--;
		b->len = b->done = 0;
		b->next = NULL;
	}
	return b;
}

static void buf_put(struct engine *e, struct wbuf *b)
{
	b->x = NULL;
	b->next = e->free_bufs;
	e->free_bufs = b;
	e->nfree_bufs++;
	/* Resume paused transfers now that there is room. */
	while (e->paused && e->nfree_bufs > 0) {
		struct xfer *x = e->paused;
		e->paused = x->next_paused;
		x->next_paused = NULL;
		if (x->paused) {
			x->paused = 0;
			x->last_data_ms = chunkd__mono_ms(); /* waiting for a buffer is not a stall */
			if (x->state == X_RUNNING && x->src->resume)
				x->src->resume(e, x);
		}
	}
}

static void xfer_check_drained(struct engine *e, struct xfer *x);
static void write_resume(struct engine *e, struct job *j);

static void on_checkpoint(struct loop *l, struct op *op, int res, uint32_t flags)
{
	struct xfer *x = (struct xfer *)((char *)op - offsetof(struct xfer, ckpt_op));
	struct engine *e = l->eng;
	chunkd__xfer_op_end(x);
	if (res == 0 && x->result == 0 && x->job->state == J_RUNNING) {
		x->ckpt = x->ckpt_pending;
		x->ckpt_crc = x->ckpt_pending_crc;
		write_resume(e, x->job);
	}
	x->ckpt_pending = 0;
	xfer_check_drained(e, x);
}

/* Every checkpoint_mb MiB of written prefix: fdatasync, then record the prefix and its CRC in
 * the job's resume file (after the fdatasync completed, so the record never claims more than
 * the disk holds). */
static void maybe_checkpoint(struct engine *e, struct xfer *x)
{
	uint64_t every = (uint64_t)e->cfg.checkpoint_mb << 20;
	if (x->ckpt_pending || x->fd < 0 || x->result || x->prefix - x->ckpt < every)
		return;
	x->ckpt_pending = x->prefix;
	x->ckpt_pending_crc = x->prefix_crc;
	x->ckpt_op.fn = on_checkpoint;
	io_uring_prep_fsync(chunkd__loop_sqe(e->l, &x->ckpt_op), x->fd, IORING_FSYNC_DATASYNC);
	chunkd__xfer_op_begin(x);
}

static void on_write(struct loop *l, struct op *op, int res, uint32_t flags)
{
	struct wbuf *b = (struct wbuf *)op;
	struct xfer *x = b->x;
	struct engine *e = l->eng;
	struct job *j = x->job;
	j->inflight--;
	x->inflight--;
	if (res > 0 && x->result == 0 && x->fd >= 0 && b->done + (uint32_t)res < b->len) {
		/* A short write: continue with the rest. */
		b->done += (uint32_t)res;
		io_uring_prep_write(chunkd__loop_sqe(l, &b->op), x->fd, b->data + b->done,
				    b->len - b->done, b->off + b->done);
		j->inflight++;
		x->inflight++;
		return;
	}
	if (res < 0 && x->result == 0) {
		x->result = res;
		set_msg(x->msg, "writing %s: %s", j->dl->files[x->idx].name, strerror(-res));
	} else if (res == 0 && x->result == 0) {
		x->result = -EIO;
		set_msg(x->msg, "writing %s: wrote nothing", j->dl->files[x->idx].name);
	} else if (res > 0) {
		x->written += b->len;
		x->wq[b->wrec].done = 1;
		while (x->wq_head != x->wq_tail && x->wq[x->wq_head % e->cfg.buffers].done) {
			struct wrec *w = &x->wq[x->wq_head++ % e->cfg.buffers];
			x->prefix = w->end;
			x->prefix_crc = w->crc_end;
		}
		maybe_checkpoint(e, x);
	}
	buf_put(e, b);
	xfer_check_drained(e, x);
}

static void submit_buf(struct engine *e, struct xfer *x, struct wbuf *b)
{
	b->x = x;
	b->crc_end = x->crc;
	b->wrec = x->wq_tail++ % e->cfg.buffers;
	x->wq[b->wrec] = (struct wrec){b->off + b->len, b->crc_end, 0};
	b->op.fn = on_write;
	io_uring_prep_write(chunkd__loop_sqe(e->l, &b->op), x->fd, b->data, b->len, b->off);
	x->inflight++;
	x->job->inflight++;
}

long chunkd__xfer_deliver(struct engine *e, struct xfer *x, const void *data, size_t n)
{
	if (x->result || x->job->state != J_RUNNING || !x->job->want_present)
		return -1;
	size_t space = x->cur ? WBUF_SIZE - x->cur->len : 0;
	assert(n <= WBUF_SIZE); /* so one free buffer always makes room for a paused transfer */
	if (space < n && e->nfree_bufs == 0) {
		/* No buffer for the rest: pause. A paused transfer holds no buffer (its partly
		 * filled one is written now), so buffers held by paused transfers can never starve
		 * every transfer (--buffers below --transfers). */
		if (x->cur) {
			assert(x->cur->len > 0); /* a buffer is taken only to be filled */
			submit_buf(e, x, x->cur);
			x->cur = NULL;
		}
		if (!x->paused) {
			x->paused = 1;
			x->next_paused = e->paused;
			e->paused = x;
		}
		return 0;
	}
	const uint8_t *p = data;
	size_t left = n;
	while (left) {
		if (!x->cur) {
			x->cur = buf_get(e);
			x->cur->off = x->received + (n - left);
		}
		size_t k = WBUF_SIZE - x->cur->len;
		if (k > left)
			k = left;
		/* Piece by piece, so that x->crc covers exactly the bytes up to a buffer's end
		 * when it is submitted (the resume checkpoint records it); the CRC is computed
		 * while copying, one pass over the bytes. */
		x->crc = chunkd__crc32c_copy(x->crc, x->cur->data + x->cur->len, p, k);
		x->cur->len += (uint32_t)k;
		p += k;
		left -= k;
		if (x->cur->len == WBUF_SIZE) {
			submit_buf(e, x, x->cur);
			x->cur = NULL;
		}
	}
	x->received += n;
	x->job->desc.bytes_done += n;
	x->last_data_ms = chunkd__mono_ms();
	return (long)n;
}

/* ---- transfers ---------------------------------------------------------------------------- */

static const struct source_ops *source_for(const char *url)
{
	if (!strncmp(url, "http://", 7) || !strncmp(url, "https://", 8))
		return &chunkd__source_http;
	if (!strncmp(url, "file://", 7))
		return &chunkd__source_file;
	return NULL;
}

static void xfer_fail(struct engine *e, struct xfer *x, int err, const char *fmt, ...)
	__attribute__((format(printf, 4, 5)));
static void xfer_fail(struct engine *e, struct xfer *x, int err, const char *fmt, ...)
{
	if (x->result)
		return;
	x->result = err;
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(x->msg, sizeof(x->msg), fmt, ap);
	va_end(ap);
}

void chunkd__xfer_restart_at_zero(struct engine *e, struct xfer *x)
{
	struct job *j = x->job;
	log_info("chunk slot %u: the origin sent all of %s instead of the range; starting it over",
		 j->slot, j->dl->files[x->idx].name);
	j->desc.bytes_done -= x->received < j->desc.bytes_done ? x->received : j->desc.bytes_done;
	x->received = x->prefix = x->ckpt = x->start_off = 0;
	x->crc = x->prefix_crc = x->ckpt_crc = 0;
	if (x->resume_recorded)
		write_resume(e, j); /* its record of the old prefix must go before the bytes */
	if (x->fd >= 0 && ftruncate(x->fd, 0) < 0)
		xfer_fail(e, x, -errno, "truncating %s: %s", j->dl->files[x->idx].name,
			  strerror(errno));
}

/*
 * The job's resume file, staging/<id>.resume (docs/on-disk.md): one record of RESUME_REC bytes
 * per file of the chunk, record i at offset i * RESUME_REC:
 *
 *   "<index> <bytes> <crc32c> <kind> <validator>" padded with spaces, " <check>\n"
 *
 * kind D: the file is complete (fsynced), P: bytes [0, <bytes>) are durable (fdatasynced), -:
 * nothing recorded; validator "-" if none; check is the CRC32C of the record's bytes before it,
 * in 8 hex digits. Every change rewrites all records in place with one pwrite() into the file,
 * which stays open while the download runs: no temporary file and no rename per completed file
 * (on a file system mounted with discard, replacing a file through a rename cost a synchronous
 * discard, on the loop thread, every time). A record a crash tore fails its check and is
 * ignored: that file starts over, which is always safe. A record is written only after the
 * fsync or fdatasync that made what it claims durable has completed.
 */
#define RESUME_REC 256u
#define RESUME_CHECK 10u /* " %08x\n" */
_Static_assert(CHUNKD_MAX_FILES <= 64, "write_resume() keeps a bit per file in a u64");
_Static_assert(sizeof(((struct xfer *)0)->validator) + 64 < RESUME_REC - RESUME_CHECK,
	       "a record's fields and longest validator fit its body");

/* The job's resume file name in staging/: "<tmpname>.resume". */
#define RESUME_NAME_LEN (sizeof(((struct job *)0)->tmpname) + 16)
static void resume_name(const struct job *j, char out[RESUME_NAME_LEN])
{
	snprintf(out, RESUME_NAME_LEN, "%s.resume", j->tmpname);
}

/* A record's check, " <crc32c of its body>\n" (RESUME_CHECK bytes and a NUL), into out. */
static void resume_check(const char *rec, char out[RESUME_CHECK + 1])
{
	uint32_t crc = chunkd__crc32c(0, rec, RESUME_REC - RESUME_CHECK);
	snprintf(out, RESUME_CHECK + 1, " %08x\n", crc);
}

static void resume_close(struct job *j)
{
	if (j->resume_fd >= 0)
		close(j->resume_fd);
	j->resume_fd = -1;
	free(j->resume_buf);
	j->resume_buf = NULL;
}

/* Close the job's resume file and remove it from staging/. */
static void resume_remove(struct engine *e, struct job *j)
{
	char name[RESUME_NAME_LEN];
	resume_close(j);
	resume_name(j, name);
	unlinkat(e->staging_fd, name, 0);
}

/* Format file i's record into rec (RESUME_REC bytes); returns its kind. */
static char resume_format(const struct xfer *x, uint32_t i, char *rec)
{
	int done = x->state == X_DONE;
	uint64_t bytes = done ? x->received : x->ckpt;
	uint32_t crc = done ? x->crc : x->ckpt_crc;
	char kind = done ? 'D' : 'P';
	if (!bytes || (!done && !x->validator[0])) {
		bytes = 0;
		crc = 0;
		kind = '-';
	}
	size_t body = RESUME_REC - RESUME_CHECK;
	int n = snprintf(rec, body + 1, "%u %llu %08x %c %s", i, (unsigned long long)bytes, crc,
			 kind, x->validator[0] ? x->validator : "-");
	assert(n > 0 && (size_t)n < body); /* validator < 160 bytes */
	memset(rec + n, ' ', body - (size_t)n);
	char check[RESUME_CHECK + 1];
	resume_check(rec, check);
	memcpy(rec + body, check, RESUME_CHECK);
	return kind;
}

static void write_resume(struct engine *e, struct job *j)
{
	size_t len = (size_t)j->dl->nfiles * RESUME_REC;
	if (!j->resume_buf && !(j->resume_buf = malloc(len)))
		return; /* progress only: a restart fetches more again */
	uint64_t recorded = 0; /* bit i: file i has a D or P record (CHUNKD_MAX_FILES <= 64) */
	for (uint32_t i = 0; i < j->dl->nfiles; i++)
		if (resume_format(&j->x[i], i, j->resume_buf + (size_t)i * RESUME_REC) != '-')
			recorded |= 1ull << i;
	if (j->resume_fd < 0) {
		char name[RESUME_NAME_LEN];
		resume_name(j, name);
		/* No O_TRUNC: every write covers all records; bytes after them are ignored. */
		j->resume_fd = openat(e->staging_fd, name, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
		if (j->resume_fd < 0)
			return;
	}
	if (pwrite(j->resume_fd, j->resume_buf, len, 0) != (ssize_t)len) {
		close(j->resume_fd); /* reopened by the next write */
		j->resume_fd = -1;
		return;
	}
	for (uint32_t i = 0; i < j->dl->nfiles; i++)
		j->x[i].resume_recorded = (int)((recorded >> i) & 1);
}

/* A staging dir survived: read the resume file and set what each transfer can continue from.
 * Records that fail their check, and files whose recorded size does not match the file on disk,
 * start over. */
static void read_resume(struct engine *e, struct job *j)
{
	char name[RESUME_NAME_LEN];
	size_t len = (size_t)j->dl->nfiles * RESUME_REC;
	resume_name(j, name);
	int fd = openat(e->staging_fd, name, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return;
	char *buf = malloc(len);
	ssize_t n = buf ? pread(fd, buf, len, 0) : -1;
	close(fd);
	for (uint32_t i = 0; n > 0 && i < (uint32_t)n / RESUME_REC; i++) {
		char *rec = buf + (size_t)i * RESUME_REC, *body_end = rec + RESUME_REC - RESUME_CHECK;
		char check[RESUME_CHECK + 1];
		resume_check(rec, check);
		if (memcmp(body_end, check, RESUME_CHECK) != 0)
			continue; /* torn, or not this format */
		*body_end = '\0';
		while (body_end > rec && body_end[-1] == ' ')
			*--body_end = '\0';
		unsigned idx, crc;
		unsigned long long bytes;
		char kind;
		int off = 0;
		if (sscanf(rec, "%u %llu %x %c %n", &idx, &bytes, &crc, &kind, &off) != 4 ||
		    idx != i || off == 0 || kind == '-')
			continue;
		struct xfer *x = &j->x[idx];
		x->resume_recorded = 1;
		struct stat st;
		if (fstatat(j->dirfd, j->dl->files[idx].name, &st, AT_SYMLINK_NOFOLLOW) < 0 ||
		    (uint64_t)st.st_size < bytes)
			continue;
		const char *v = rec + off;
		snprintf(x->validator, sizeof(x->validator), "%s", strcmp(v, "-") ? v : "");
		if (kind == 'D' && (uint64_t)st.st_size == bytes) {
			x->resume_done = 1;
			x->received = x->prefix = x->ckpt = bytes;
			x->crc = x->prefix_crc = x->ckpt_crc = crc;
		} else if (kind == 'P' && x->validator[0]) {
			x->resume_from = bytes;
			x->resume_crc = crc;
		}
	}
	free(buf);
}

static void xfer_start(struct engine *e, struct xfer *x)
{
	struct job *j = x->job;
	const struct dlc_file *f = &j->dl->files[x->idx];
	uint64_t from = x->resume_from;
	x->resume_from = 0; /* a retry after a failure starts over */
	x->result = 0;
	x->finished = 0;
	x->received = x->written = x->prefix = x->ckpt = 0;
	x->crc = x->prefix_crc = x->ckpt_crc = 0;
	x->wq_head = x->wq_tail = 0;
	x->start_off = 0;
	x->range_start = UINT64_MAX;
	x->http_status = 0;
	x->msg[0] = '\0';
	x->state = X_RUNNING;
	x->last_data_ms = chunkd__mono_ms();
	x->attempts++;
	if (x->attempts > j->desc.attempts)
		j->desc.attempts = x->attempts; /* the chunk's attempts: its most-tried file's */
	e->running_xfers++;
	if (!from && x->resume_recorded)
		write_resume(e, j); /* the file starts over: its old record must go first */
	x->fd = openat(j->dirfd, f->name, O_WRONLY | O_CREAT | (from ? 0 : O_TRUNC) | O_CLOEXEC,
		       0644);
	if (x->fd >= 0 && from && ftruncate(x->fd, (off_t)from) < 0) {
		close(x->fd);
		x->fd = -1;
	}
	if (x->fd < 0) {
		xfer_fail(e, x, -errno, "%s: creating it in staging: %s", f->name, strerror(errno));
		x->finished = 1;
		xfer_check_drained(e, x);
		return;
	}
	if (from) {
		/* Continue after the durable prefix a previous daemon recorded. */
		x->received = x->prefix = x->ckpt = x->start_off = from;
		x->crc = x->prefix_crc = x->ckpt_crc = x->resume_crc;
		j->desc.bytes_done += from;
		log_info("chunk slot %u: resuming %s at byte %llu", j->slot, f->name,
			 (unsigned long long)from);
	} else {
		x->validator[0] = '\0';
	}
	x->src = source_for(f->url);
	int r = x->src ? x->src->start(e, x) : -EPROTONOSUPPORT;
	if (r < 0) {
		if (r == -EPROTONOSUPPORT)
			xfer_fail(e, x, r, "%s: scheme not supported yet (%s)", f->name, f->url);
		else
			xfer_fail(e, x, r, "%s: %s (%s)", f->name, strerror(-r), f->url);
		x->finished = 1;
		xfer_check_drained(e, x);
	}
}

void chunkd__xfer_source_released(struct engine *e, struct xfer *x)
{
	if (x->src && x->src->release)
		x->src->release(x);
	if (x->job->state == J_CANCEL)
		job_fail_or_cancel_done(e, x->job);
}

void chunkd__xfer_finished(struct engine *e, struct xfer *x, int err, long http_status,
			   const char *msg)
{
	if (x->src && x->src->release)
		x->src->release(x);
	x->finished = 1;
	x->http_status = http_status;
	if (err && !x->result) {
		x->result = err;
		snprintf(x->msg, sizeof(x->msg), "%s", msg ? msg : strerror(-err));
	}
	if (!x->result && x->cur) {
		if (x->cur->len) {
			submit_buf(e, x, x->cur);
		} else {
			buf_put(e, x->cur);
		}
		x->cur = NULL;
	}
	xfer_check_drained(e, x);
}

static void on_fsync_file(struct loop *l, struct op *op, int res, uint32_t flags)
{
	struct xfer *x = (struct xfer *)((char *)op - offsetof(struct xfer, fsync_op));
	struct engine *e = l->eng;
	x->job->inflight--;
	x->inflight--;
	if (res < 0 && !x->result)
		xfer_fail(e, x, res, "fsync %s: %s", x->job->dl->files[x->idx].name, strerror(-res));
	x->state = X_DRAINING;
	xfer_check_drained(e, x);
}

static uint64_t backoff(struct engine *e, uint32_t attempt)
{
	uint64_t d = e->cfg.backoff_ms;
	for (uint32_t i = 1; i < attempt && d < e->cfg.backoff_max_ms; i++)
		d *= 2;
	if (d > e->cfg.backoff_max_ms)
		d = e->cfg.backoff_max_ms;
	/* Jitter: uniformly in [d/2, d]. */
	e->rng = e->rng * 6364136223846793005ull + 1442695040888963407ull;
	return d / 2 + (e->rng >> 33) % (d / 2 + 1);
}

/* Called whenever a transfer may have reached a resting point: the source finished and no
 * write is in flight. Then: fsync a good file, or schedule a retry / fail the chunk. */
static void xfer_check_drained(struct engine *e, struct xfer *x)
{
	struct job *j = x->job;
	if (!x->finished || x->inflight)
		return;
	if (x->state == X_RUNNING)
		e->running_xfers--;
	if (x->cur) {
		buf_put(e, x->cur);
		x->cur = NULL;
	}
	if (j->state != J_RUNNING) {
		x->state = X_IDLE;
		job_advance(e, j);
		return;
	}
	if (x->result == 0 && x->state == X_RUNNING) {
		x->state = X_FSYNC;
		x->fsync_op.fn = on_fsync_file;
		io_uring_prep_fsync(chunkd__loop_sqe(e->l, &x->fsync_op), x->fd, 0);
		x->inflight++;
		j->inflight++;
		return;
	}
	if (x->fd >= 0) {
		close(x->fd);
		x->fd = -1;
	}
	if (x->result == 0) {
		x->state = X_DONE;
		j->files_done++;
		j->desc.bytes_total += x->received;
		write_resume(e, j); /* a restart will not fetch this file again */
		log_debug("chunk slot %u: file %s done (%llu bytes)", j->slot,
			  j->dl->files[x->idx].name, (unsigned long long)x->received);
		job_advance(e, j);
		return;
	}
	/* Failed attempt. */
	j->desc.last_error = x->result;
	j->desc.http_status = (int32_t)x->http_status;
	snprintf(j->desc.message, sizeof(j->desc.message), "%s", x->msg);
	j->desc.bytes_done -= x->received < j->desc.bytes_done ? x->received : j->desc.bytes_done;
	log_info("chunk slot %u: %s (attempt %u of %u)", j->slot, x->msg, x->attempts,
		 e->cfg.attempts);
	if (x->attempts >= e->cfg.attempts) {
		j->fail_err = x->result;
		j->fail_http = x->http_status;
		snprintf(j->fail_msg, sizeof(j->fail_msg), "%s", x->msg);
		x->state = X_IDLE;
		start_cancel(e, j);
		return;
	}
	x->state = X_RETRY;
	x->retry_at = chunkd__mono_ms() + backoff(e, x->attempts);
	slot_sync(e, j);
}

/* ---- job steps ---------------------------------------------------------------------------- */

static void on_job_op(struct loop *l, struct op *op, int res, uint32_t flags);

static void job_submit_op(struct engine *e, struct job *j, struct io_uring_sqe **sqe)
{
	j->op.fn = on_job_op;
	*sqe = chunkd__loop_sqe(e->l, &j->op);
	j->inflight++;
}

static void job_published(struct engine *e, struct job *j)
{
	j->desc.last_error = 0; /* a published chunk has no failure to report */
	j->desc.http_status = 0;
	j->desc.message[0] = '\0';
	j->desc.bytes_done = j->desc.bytes_total;
	slot_sync(e, j);
	chunkd__catalog_set_state(e->cat, j->slot, CHUNKD_SLOT_PUBLISHED);
	log_info("published chunk slot %u: %s (%u files, %llu bytes)", j->slot, j->desc.path,
		 j->dl->nfiles, (unsigned long long)j->desc.bytes_total);
	post_waiters(e, j, 0);
	job_unrun(e, j);
	job_free(e, j);
}

/* Write the metadata file: build it, open it, submit the write (its fsync follows). */
static int job_write_meta(struct engine *e, struct job *j)
{
	struct chunkd_meta *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	memcpy(m->id, j->dl->id, 32);
	memcpy(m->dataset, j->dl->dataset, 32);
	m->first_block = j->dl->first_block;
	m->end_block = j->dl->end_block;
	m->nfiles = j->dl->nfiles;
	for (uint32_t i = 0; i < m->nfiles; i++) {
		snprintf(m->files[i].name, sizeof(m->files[i].name), "%s", j->dl->files[i].name);
		m->files[i].size = j->x[i].received;
		m->files[i].crc32c = j->x[i].crc;
		m->files[i].has_crc = 1;
	}
	j->meta_buf = malloc(CHUNKD_META_MAX);
	int n = j->meta_buf ? chunkd__meta_format(m, j->meta_buf, CHUNKD_META_MAX) : -ENOMEM;
	free(m);
	if (n < 0)
		return n;
	/* O_TRUNC: a daemon that died after writing it left one behind in the resumed staging dir. */
	int fd = openat(j->dirfd, CHUNKD_META_NAME, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd < 0)
		return -errno;
	/* Reuse the first transfer's fd slot to remember it for the fsync and close. */
	j->x[0].fd = fd;
	struct io_uring_sqe *sqe;
	job_submit_op(e, j, &sqe);
	io_uring_prep_write(sqe, fd, j->meta_buf, (unsigned)n, 0);
	sqe->flags |= IOSQE_IO_LINK;
	job_submit_op(e, j, &sqe); /* the same op: its callback runs twice */
	io_uring_prep_fsync(sqe, fd, 0);
	return 0;
}

static void job_fail_or_cancel_done(struct engine *e, struct job *j);
static void on_removal_op(struct engine *e, struct job *j, int res);

/* Run the next step of a download. */
static void job_step(struct engine *e, struct job *j)
{
	struct io_uring_sqe *sqe;
	char rel[CHUNKD_META_REL_PATH_LEN + 1];
	switch (j->state) {
	case J_MKDIR:
		job_submit_op(e, j, &sqe);
		io_uring_prep_mkdirat(sqe, e->staging_fd, j->tmpname, 0755);
		break;
	case J_META: {
		int r = job_write_meta(e, j);
		if (r < 0) {
			j->fail_err = r;
			set_msg(j->fail_msg, "writing metadata: %s", strerror(-r));
			start_cancel(e, j);
		}
		break;
	}
	case J_DIRSYNC:
		job_submit_op(e, j, &sqe);
		io_uring_prep_fsync(sqe, j->dirfd, 0);
		break;
	case J_RENAME: {
		char ds[65];
		chunkd__hex_encode((const uint8_t *)j->dl->dataset, 32, ds);
		if (mkdirat(e->chunks_fd, ds, 0755) == 0)
			fsync(e->chunks_fd); /* a new dataset dir must survive too */
		make_rel_path(j->dl, rel, sizeof(rel));
		job_submit_op(e, j, &sqe);
		io_uring_prep_renameat(sqe, e->staging_fd, j->tmpname, e->chunks_fd, rel,
				       RENAME_NOREPLACE);
		/* renameat reads both paths at submission in this kernel: strings on the stack
		 * must outlive io_uring_submit, so submit now. */
		io_uring_submit(&e->l->ring);
		break;
	}
	case J_PARENTSYNC: {
		char ds[65];
		chunkd__hex_encode((const uint8_t *)j->dl->dataset, 32, ds);
		int fd = openat(e->chunks_fd, ds, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (fd < 0) {
			log_error("chunk slot %u: open %s: %s", j->slot, ds, strerror(errno));
			job_published(e, j); /* the rename is done; durability degraded */
			break;
		}
		close(j->dirfd);
		j->dirfd = fd;
		job_submit_op(e, j, &sqe);
		io_uring_prep_fsync(sqe, fd, 0);
		break;
	}
	default:
		break;
	}
}

/* Files all done: move on to the metadata. Called when a transfer reaches a resting state. */
static void job_suspend_done(struct engine *e, struct job *j);

static void job_advance(struct engine *e, struct job *j)
{
	if (j->state == J_CANCEL) {
		job_fail_or_cancel_done(e, j);
		return;
	}
	if (j->state == J_SUSPEND) {
		job_suspend_done(e, j);
		return;
	}
	if (j->state != J_RUNNING)
		return;
	if (j->files_done == j->dl->nfiles) {
		slot_sync(e, j);
		j->state = J_META;
		job_step(e, j);
	}
}

static void on_job_op(struct loop *l, struct op *op, int res, uint32_t flags)
{
	struct job *j = (struct job *)op;
	struct engine *e = l->eng;
	j->inflight--;
	if (j->state == J_CANCEL) {
		if (j->was == J_RENAME && res == 0)
			j->in_chunks = 1; /* the rename won the race with the cancellation */
		job_fail_or_cancel_done(e, j);
		return;
	}
	if (j->state == J_TRASH || j->state == J_UNLINK) {
		on_removal_op(e, j, res);
		return;
	}
	switch (j->state) {
	case J_MKDIR:
		if (res < 0 && res != -EEXIST) {
			j->fail_err = res;
			set_msg(j->fail_msg, "mkdir in staging: %s", strerror(-res));
			start_cancel(e, j);
			return;
		}
		j->dirfd = openat(e->staging_fd, j->tmpname, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
		if (j->dirfd < 0) {
			j->fail_err = -errno;
			set_msg(j->fail_msg, "open staging dir: %s", strerror(errno));
			start_cancel(e, j);
			return;
		}
		j->state = J_RUNNING;
		for (uint32_t i = 0; i < j->dl->nfiles; i++)
			j->x[i].state = X_IDLE;
		if (res == -EEXIST) {
			/* A previous daemon left this download behind: continue it. */
			read_resume(e, j);
			for (uint32_t i = 0; i < j->dl->nfiles; i++) {
				struct xfer *x = &j->x[i];
				if (!x->resume_done)
					continue;
				x->state = X_DONE;
				j->files_done++;
				j->desc.bytes_total += x->received;
				j->desc.bytes_done += x->received;
			}
			log_info("chunk slot %u: resuming from staging (%u of %u files complete)",
				 j->slot, j->files_done, j->dl->nfiles);
		} else {
			resume_remove(e, j); /* stale, from a cancelled incarnation */
		}
		chunkd__catalog_set_state(e->cat, j->slot, CHUNKD_SLOT_DOWNLOADING);
		job_advance(e, j); /* every file may be complete already */
		break;
	case J_META:
		if (res < 0 && !j->fail_err) {
			j->fail_err = res;
			set_msg(j->fail_msg, "writing metadata: %s", strerror(-res));
		}
		if (j->inflight)
			return; /* the write and the fsync complete separately */
		close(j->x[0].fd);
		j->x[0].fd = -1;
		if (j->fail_err) {
			start_cancel(e, j);
			return;
		}
		j->state = J_DIRSYNC;
		job_step(e, j);
		break;
	case J_DIRSYNC:
		if (res < 0) {
			j->fail_err = res;
			set_msg(j->fail_msg, "fsync staging dir: %s", strerror(-res));
			start_cancel(e, j);
			return;
		}
		j->state = J_RENAME;
		job_step(e, j);
		break;
	case J_RENAME:
		if (res == -EEXIST) {
			/* A directory is in the way that is not a published copy of this chunk
			 * (the id's slot is ours): a leftover the start-up scan reported as
			 * malformed. chunkd never deletes those by itself; fail visibly. */
			j->fail_err = -EEXIST;
			set_msg(j->fail_msg, "its directory in chunks/ exists and is not a "
				"published chunk: remove it, then download again");
			log_error("chunk slot %u: %s exists and is not a published chunk (see the "
				  "start-up scan's warnings); remove it and download again", j->slot,
				  j->desc.path);
			start_cancel(e, j);
			return;
		}
		if (res < 0) {
			j->fail_err = res;
			set_msg(j->fail_msg, "rename into chunks/: %s", strerror(-res));
			start_cancel(e, j);
			return;
		}
		resume_remove(e, j);
		j->tmpname[0] = '\0'; /* nothing left in staging */
		j->state = J_PARENTSYNC;
		job_step(e, j);
		break;
	case J_PARENTSYNC:
		if (res < 0)
			log_error("chunk slot %u: fsync of its dataset dir: %s", j->slot,
				  strerror(-res));
		job_published(e, j);
		break;
	default:
		break;
	}
}

/* Abandon a download (deleted, or failed for good): stop sources, wait for every op. */
static void start_cancel(struct engine *e, struct job *j)
{
	enum job_state was = j->state;
	if (was == J_CANCEL)
		return;
	j->state = J_CANCEL;
	j->was = was;
	if (was == J_PARENTSYNC)
		j->in_chunks = 1; /* renamed, not yet published: remove it from chunks/ */
	if (was == J_QUEUED) {
		queue_remove(e, j);
		job_fail_or_cancel_done(e, j);
		return;
	}
	for (uint32_t i = 0; j->x && i < j->dl->nfiles; i++) {
		struct xfer *x = &j->x[i];
		if (x->state == X_RUNNING && !x->finished) {
			if (x->src)
				x->src->cancel(e, x);
			x->finished = 1;
			e->running_xfers--;
			x->state = X_IDLE;
			if (x->cur) {
				buf_put(e, x->cur);
				x->cur = NULL;
			}
		}
	}
	job_fail_or_cancel_done(e, j);
}

/* Finish a cancellation once no op of the job is in flight. */
static void job_fail_or_cancel_done(struct engine *e, struct job *j)
{
	if (j->inflight)
		return;
	uint32_t slot = j->slot;
	if (j->tmpname[0]) {
		int r = chunkd__rm_tree_at(e->staging_fd, j->tmpname);
		if (r < 0)
			log_warn("chunk slot %u: removing staging/%s: %s", slot, j->tmpname,
				 strerror(-r));
		resume_remove(e, j);
		j->tmpname[0] = '\0';
	}
	if (j->in_chunks) {
		/* Renamed into chunks/ but never published: move it to trash/ first, so that a
		 * crash half way through the removal leaves nothing in chunks/ (trash/ is purged
		 * at start). */
		char rel[CHUNKD_META_REL_PATH_LEN + 1], gone[96];
		make_rel_path(j->dl, rel, sizeof(rel));
		snprintf(gone, sizeof(gone), "unpublished.%llu", (unsigned long long)++e->seq);
		int r = renameat(e->chunks_fd, rel, e->trash_fd, gone) < 0 ? -errno : 0;
		if (r == 0)
			r = chunkd__rm_tree_at(e->trash_fd, gone);
		if (r < 0)
			log_warn("chunk slot %u: removing unpublished chunks/%s: %s", slot, rel,
				 strerror(-r));
		j->in_chunks = 0;
	}
	if (j->dirfd >= 0) {
		close(j->dirfd);
		j->dirfd = -1;
	}
	xfers_free(j);
	job_unrun(e, j);
	if (j->want_present && j->fail_err) {
		/* Failed for good: keep the slot in FAILED with the error. */
		j->desc.last_error = j->fail_err;
		j->desc.http_status = (int32_t)j->fail_http;
		snprintf(j->desc.message, sizeof(j->desc.message), "%s", j->fail_msg);
		slot_sync(e, j);
		/* The chunk is still wanted, so its range stays reserved (until a delete). */
		chunkd__catalog_set_state(e->cat, slot, CHUNKD_SLOT_FAILED);
		log_warn("chunk slot %u failed: %s", slot, j->fail_msg);
		post_waiters(e, j, j->fail_err);
		job_free(e, j);
		return;
	}
	if (j->want_present) {
		/* Cancelled and then wanted again: start over with the same slot. */
		j->state = J_QUEUED;
		j->fail_err = 0;
		j->files_done = 0;
		j->desc.bytes_done = j->desc.bytes_total = 0;
		j->desc.attempts = 0;
		chunkd__catalog_set_state(e->cat, slot, CHUNKD_SLOT_QUEUED);
		queue_push(e, j);
		return;
	}
	post_waiters(e, j, -ECANCELED);
	uint64_t id[4];
	memcpy(id, j->desc.id, sizeof(id));
	job_free(e, j);
	slot_free(e, slot);
	journal_forget_delete(e, id);
}

/* ---- removal of deleted chunks ------------------------------------------------------------ */

static int u64_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* Every pin word held by an attached client, sorted. seq_cst loads: they follow our CONDEMNED
 * stores (docs/shm-layout.md, pin protocol). */
static uint64_t *pins_snapshot(struct engine *e, size_t *n)
{
	size_t cap = 0, k = 0;
	uint64_t *v = NULL;
	for (uint32_t c = 0; c < e->nclients; c++) {
		struct chunkd_req_client *cl = chunkd__req_client(&e->in->req, c);
		if (chunkd__load_seq_cst(&cl->ctl.owner) == 0)
			continue;
		for (uint32_t i = 0; i < CHUNKD_PINS_PER_CLIENT; i++) {
			uint64_t w = chunkd__load_seq_cst(&cl->pins[i]);
			if (!w)
				continue;
			if (k == cap) {
				cap = cap ? cap * 2 : 256;
				uint64_t *p = realloc(v, cap * sizeof(*v));
				if (!p) {
					free(v);
					*n = SIZE_MAX; /* unknown: treat everything as pinned */
					return NULL;
				}
				v = p;
			}
			v[k++] = w;
		}
	}
	if (k)
		qsort(v, k, sizeof(*v), u64_cmp);
	*n = k;
	return v;
}

static void start_trash(struct engine *e, struct job *j)
{
	char rel[CHUNKD_META_REL_PATH_LEN + 1], id[65];
	size_t dl = strlen(e->in->data_dir) + strlen("/chunks/");
	snprintf(rel, sizeof(rel), "%s", j->desc.path + dl);
	chunkd__hex_encode((const uint8_t *)j->desc.id, 32, id);
	snprintf(j->tmpname, sizeof(j->tmpname), "%s.%llu", id, (unsigned long long)++e->seq);
	j->state = J_TRASH;
	job_run(e, j, RUN_DELETE);
	struct io_uring_sqe *sqe;
	job_submit_op(e, j, &sqe);
	io_uring_prep_renameat(sqe, e->chunks_fd, rel, e->trash_fd, j->tmpname, 0);
	io_uring_submit(&e->l->ring); /* rel lives on this stack frame */
}

/* A pin scan that could not allocate its snapshot is tried again after this long. */
#define PINS_RETRY_MS 100

/* Start removing condemned chunks that no pin holds any more. Returns when to scan again
 * regardless of wake-ups (a scan that ran out of memory), else UINT64_MAX. */
static uint64_t check_condemned(struct engine *e)
{
	if (!e->pins_dirty || !e->condemned)
		return UINT64_MAX;
	e->pins_dirty = 0;
	/* The condemned slots' states[] must say so before the scan (catalog.h). */
	chunkd__catalog_settle(e->cat);
	size_t n;
	uint64_t *pins = pins_snapshot(e, &n);
	if (n == SIZE_MAX) {
		/* Out of memory: keep everything, and look again shortly, not only when some
		 * unrelated event wakes the loop. */
		e->pins_dirty = 1;
		return chunkd__mono_ms() + PINS_RETRY_MS;
	}
	struct job **pp = &e->condemned;
	while (*pp) {
		struct job *j = *pp;
		uint64_t w = CHUNKD_PIN_WORD(j->slot, e->cat->sp[j->slot].gen);
		if (n && bsearch(&w, pins, n, sizeof(*pins), u64_cmp)) {
			pp = &j->next;
			continue;
		}
		*pp = j->next;
		j->next = NULL;
		start_trash(e, j);
	}
	free(pins);
	return UINT64_MAX;
}

static void condemned_add(struct engine *e, struct job *j)
{
	j->next = e->condemned;
	e->condemned = j;
	e->pins_dirty = 1;
}

static void condemned_remove(struct engine *e, struct job *j)
{
	struct job **pp = &e->condemned;
	while (*pp && *pp != j)
		pp = &(*pp)->next;
	if (*pp)
		*pp = j->next;
	j->next = NULL;
}

/* The chunk's directory is gone: free the slot, and download again if that was asked for. */
static void removal_done(struct engine *e, struct job *j)
{
	uint32_t slot = j->slot;
	struct dlc *dl = j->want_present ? j->dl : NULL;
	struct waiter *ws = j->waiters;
	uint32_t nws = j->nwaiters;
	j->dl = NULL;
	j->waiters = NULL;
	j->nwaiters = 0;
	log_info("removed chunk slot %u: %s", slot, j->desc.path);
	uint64_t id[4];
	memcpy(id, j->desc.id, sizeof(id));
	job_free(e, j);
	slot_free(e, slot);
	if (!dl)
		journal_forget_delete(e, id);
	if (dl) {
		int r = new_download(e, dl, ws, nws);
		if (r < 0)
			for (uint32_t i = 0; i < nws; i++)
				post(e, ws[i].client, ws[i].owner, ws[i].ticket, r);
	}
	free(dl);
	free(ws);
}

static void unlink_files(struct engine *e, struct job *j)
{
	j->state = J_UNLINK;
	j->dirfd = openat(e->trash_fd, j->tmpname, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	DIR *d = j->dirfd >= 0 ? fdopendir(dup(j->dirfd)) : NULL;
	struct io_uring_sqe *sqe;
	if (d) {
		/* Names must stay valid until submission: keep them in one buffer. */
		size_t cap = 4096, len = 0;
		char *names = malloc(cap);
		struct dirent *de;
		while (names && (de = readdir(d))) {
			if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
				continue;
			size_t n = strlen(de->d_name) + 1;
			if (len + n > cap) {
				char *p = realloc(names, cap * 2 + n);
				if (!p)
					break;
				names = p;
				cap = cap * 2 + n;
			}
			memcpy(names + len, de->d_name, n);
			len += n;
		}
		closedir(d);
		for (size_t off = 0; names && off < len; off += strlen(names + off) + 1) {
			job_submit_op(e, j, &sqe);
			io_uring_prep_unlinkat(sqe, j->dirfd, names + off, 0);
		}
		io_uring_submit(&e->l->ring);
		free(names);
	}
	if (j->inflight == 0) {
		job_submit_op(e, j, &sqe);
		io_uring_prep_unlinkat(sqe, e->trash_fd, j->tmpname, AT_REMOVEDIR);
		io_uring_submit(&e->l->ring);
		j->tmpname[0] = '\0';
	}
}

static void on_removal_op(struct engine *e, struct job *j, int res)
{
	if (j->state == J_TRASH) {
		if (res < 0) {
			log_error("chunk slot %u: moving %s to trash: %s", j->slot, j->desc.path,
				  strerror(-res));
			if (res != -ENOENT) {
				/* Leave it in place and unfindable; a restart retries. */
				job_unrun(e, j);
				return;
			}
			removal_done(e, j);
			return;
		}
		unlink_files(e, j);
		return;
	}
	/* J_UNLINK: file unlinks, then the directory itself. */
	if (res < 0 && res != -ENOENT)
		log_warn("chunk slot %u: unlink in trash: %s", j->slot, strerror(-res));
	if (j->inflight)
		return;
	if (j->tmpname[0]) {
		struct io_uring_sqe *sqe;
		if (j->dirfd >= 0) {
			close(j->dirfd);
			j->dirfd = -1;
		}
		job_submit_op(e, j, &sqe);
		io_uring_prep_unlinkat(sqe, e->trash_fd, j->tmpname, AT_REMOVEDIR);
		io_uring_submit(&e->l->ring);
		j->tmpname[0] = '\0';
		return;
	}
	removal_done(e, j);
}

/* ---- driving ------------------------------------------------------------------------------ */

static void start_job(struct engine *e, struct job *j)
{
	/* The staging dir is named by the chunk id alone, so that a restarted daemon finds what
	 * a previous one left and resumes it. */
	chunkd__hex_encode((const uint8_t *)j->dl->id, 32, j->tmpname);
	j->x = calloc(j->dl->nfiles, sizeof(*j->x));
	for (uint32_t i = 0; j->x && i < j->dl->nfiles; i++) {
		j->x[i].wq = calloc(e->cfg.buffers, sizeof(struct wrec));
		if (!j->x[i].wq) {
			xfers_free(j);
			break;
		}
	}
	if (!j->x) {
		queue_push(e, j); /* try again later */
		return;
	}
	for (uint32_t i = 0; i < j->dl->nfiles; i++) {
		j->x[i].eng = e;
		j->x[i].job = j;
		j->x[i].idx = i;
		j->x[i].fd = -1;
		j->x[i].src_fd = -1;
		j->x[i].state = X_IDLE;
	}
	j->files_done = 0;
	j->state = J_MKDIR;
	job_run(e, j, RUN_DOWNLOAD);
	job_step(e, j);
}

uint64_t chunkd__engine_run(struct engine *e)
{
	uint64_t now = chunkd__mono_ms(), deadline = UINT64_MAX;
	if (e->more_intake) {
		chunkd__engine_intake(e);
		if (e->more_intake)
			deadline = now;
	}
	uint64_t rescan = check_condemned(e);
	if (rescan < deadline)
		deadline = rescan;
	/* Deletes of undesired data go first: no new download starts while a removal runs. */
	while (!e->quiescing && e->deleting == 0 && e->queue_head &&
	       e->running_jobs < e->cfg.chunks_in_flight) {
		struct job *j = e->queue_head;
		e->queue_head = j->next;
		if (!e->queue_head)
			e->queue_tail = NULL;
		j->next = NULL;
		start_job(e, j);
	}
	for (struct job *j = e->run_list, *next; j; j = next) {
		next = j->next_run;
		if (j->state != J_RUNNING)
			continue;
		int progressed = 0;
		/* Starting or failing a transfer can end the job (its last attempt): stop at once
		 * then (the job's memory stays valid until the iteration ends, see job_free). */
		for (uint32_t i = 0; !j->dead && j->state == J_RUNNING && i < j->dl->nfiles; i++) {
			struct xfer *x = &j->x[i];
			if (x->state == X_RETRY && x->retry_at > now) {
				if (x->retry_at < deadline)
					deadline = x->retry_at;
				continue;
			}
			if ((x->state == X_IDLE || x->state == X_RETRY) && !e->quiescing &&
			    e->running_xfers < e->cfg.transfers)
				xfer_start(e, x);
			if (x->state == X_RUNNING && !x->finished && !x->paused) {
				/* A stall: no byte for --stall-timeout (a paused transfer waits for
				 * our disk, not for the network, and does not count). */
				uint64_t due = x->last_data_ms + e->cfg.stall_timeout_ms;
				if (due <= now) {
					if (x->src)
						x->src->cancel(e, x);
					xfer_fail(e, x, -ETIMEDOUT,
						  "%s: stalled, no data for %u ms (%s)",
						  j->dl->files[i].name, e->cfg.stall_timeout_ms,
						  j->dl->files[i].url);
					chunkd__xfer_finished(e, x, 0, x->http_status, NULL);
					continue;
				}
				if (due < deadline)
					deadline = due;
			}
			if (x->state == X_RUNNING)
				progressed = 1;
		}
		if (progressed && !j->dead && j->state == J_RUNNING)
			slot_sync(e, j); /* progress for chunkd_status and chunkd-dump */
	}
	/* curl's timers can end transfers (a failure schedules a retry), and so can a failed
	 * start above: the retry times are collected after everything else has run, or the loop
	 * would sleep past them until some unrelated event (seen: a 1 s late retry). */
	uint64_t h = chunkd__http_run(e);
	if (h < deadline)
		deadline = h;
	for (struct job *j = e->run_list; j; j = j->next_run) {
		if (j->dead || j->state != J_RUNNING)
			continue;
		/* At the transfer cap, a finishing transfer's completion wakes the loop: no
		 * deadline then, or a due retry would make it spin. */
		if (e->quiescing || e->running_xfers >= e->cfg.transfers)
			break;
		for (uint32_t i = 0; i < j->dl->nfiles; i++) {
			const struct xfer *x = &j->x[i];
			if (x->state == X_RETRY && x->retry_at < deadline)
				deadline = x->retry_at;
			if (x->state == X_IDLE)
				deadline = now; /* startable now: go round again at once */
		}
	}
	return deadline;
}

/* Store the ring heads the journal has made durable: the clients may reuse that space. */
static void release_heads(struct engine *e, const uint64_t *heads, const uint32_t *gens)
{
	for (uint32_t c = 0; c < e->nclients; c++) {
		if (gens && gens[c] != e->ring_gen[c])
			continue; /* the ring was reset meanwhile */
		struct chunkd_req_client *cl = chunkd__req_client(&e->in->req, c);
		uint64_t h = heads ? heads[c] : e->head[c];
		if (chunkd__load_relaxed(&cl->d.sq_head) != h)
			/* Frees the ring space; pairs with the client's acquire load of sq_head. */
			chunkd__store_release(&cl->d.sq_head, h);
	}
	for (uint32_t c = 0; c < e->nclients; c++)
		if (e->gone[c] && chunkd__journal_durable_seq(e->jr) >= e->gone_seq[c])
			finish_gone(e, c);
}

static void on_commit(struct loop *l, struct op *op, int res, uint32_t flags)
{
	struct engine *e = l->eng;
	if (res < 0 && e->commit_res == 0)
		e->commit_res = res;
	if (--e->commit_inflight)
		return; /* the write and the fdatasync complete separately */
	chunkd__journal_end_commit(e->jr, e->commit_res);
	if (e->commit_res < 0) {
		log_error("journal: commit failed: %s; stopping", strerror(-e->commit_res));
		e->fatal = 1;
		return;
	}
	/* The ring heads move in chunkd__engine_flush, after the results are posted: a record
	 * that was not journaled (refused as invalid) is answered before its ring space is
	 * freed, so a crash in between makes the next daemon answer it again. */
	e->heads_ready = 1;
}

/*
 * Compaction's keep function (chunkd__journal_set_keep): a superseded record stays while its
 * request still waits for its result, i.e. it names a waiter of the job of its id. After the
 * results of everything durable are delivered (compact() below), the only such requests are
 * downloads that joined a running download of the same chunk: dropped, a restart would not know
 * to answer their tickets (test_durable f).
 */
static int keep_unanswered(const struct chunkd_jrec *r, void *arg)
{
	struct engine *e = arg;
	if (r->type != CHUNKD_JREC_DOWNLOAD)
		return 0;
	int slot = chunkd__catalog_lookup(e->cat, r->id);
	struct job *j = slot >= 0 ? e->jobs[slot] : NULL;
	if (!j || j->dead || !j->want_present)
		return 0;
	for (uint32_t w = 0; w < j->nwaiters; w++)
		if (j->waiters[w].client == r->client && j->waiters[w].owner == r->owner &&
		    j->waiters[w].ticket == r->ticket)
			return 1;
	return 0;
}

/* Post every result whose request is durable: the ticket entries, then one cq_seq bump and
 * FUTEX_WAKE per client woken. Results of requests not yet durable stay queued. */
static void deliver_posts(struct engine *e)
{
	uint64_t durable = chunkd__journal_durable_seq(e->jr);
	uint32_t keep = 0;
	for (uint32_t i = 0; i < e->nposts; i++) {
		struct post *p = &e->posts[i];
		if (p->seq > durable) {
			e->posts[keep++] = *p; /* its request is not durable yet */
			continue;
		}
		if (p->owner == 0 || p->client >= e->nclients)
			continue;
		struct chunkd_req_client *cl = chunkd__req_client(&e->in->req, p->client);
		uint64_t owner = chunkd__load_acquire(&cl->ctl.owner) & ~CHUNKD_OWNER_CLOSED;
		if (owner != p->owner)
			continue; /* that client is gone; its slot may belong to another now */
		struct chunkd_ticket_slot *t = &cl->tickets[p->ticket % CHUNKD_TICKETS];
		/* Answered already (a replayed request), or the entry belongs to a later ticket:
		 * never overwrite it. Only the daemon writes done, so this check is not racy. */
		if (chunkd__load_relaxed(&t->done) >= p->ticket)
			continue;
		chunkd__store_relaxed(&t->result, p->result);
		/* Pairs with the client's acquire load of done in chunkd_wait. */
		chunkd__store_release(&t->done, p->ticket);
		e->woken[p->client] = 1;
	}
	e->nposts = keep;
	for (uint32_t c = 0; c < e->nclients; c++) {
		if (!e->woken[c])
			continue;
		e->woken[c] = 0;
		struct chunkd_req_client *cl = chunkd__req_client(&e->in->req, c);
		/* Pairs with the client's acquire load of cq_seq before it checks its ticket. */
		chunkd__fetch_add(&cl->d.cq_seq, 1, __ATOMIC_RELEASE);
		syscall(SYS_futex, &cl->d.cq_seq, FUTEX_WAKE, INT_MAX, NULL, NULL, 0);
	}
}

/*
 * Compaction drops superseded records. That is safe only for requests whose tickets are
 * answered: make everything pending durable, deliver the results that were waiting for it, and
 * only then rewrite the file, keeping the records of requests still waiting (keep_unanswered).
 * Compacting first left a window, the rename and the directory's fsync, in which a kill lost
 * the tickets of requests that a later record of the same id superseded in that very commit;
 * and journaling the joined downloads again after the compaction left one until that sync.
 * Synchronous, like the compaction itself. A failed sync is fatal (e->fatal); a failed
 * compaction only waits for the next try, unless the journal can no longer be trusted.
 */
static void compact(struct engine *e)
{
	int r = chunkd__journal_sync(e->jr);
	if (r < 0) {
		log_error("journal: commit failed: %s; stopping", strerror(-r));
		e->fatal = 1;
		return;
	}
	deliver_posts(e);
	release_heads(e, NULL, NULL);
	r = chunkd__journal_compact(e->jr);
	if (r < 0) {
		log_error("journal: compaction failed: %s", strerror(-r));
		if (r != -EBUSY && r != -ENOMEM && r != -EIO)
			e->fatal = 1;
		return; /* the records are durable; compaction is tried again later */
	}
	struct chunkd_journal_stats st;
	chunkd__journal_stats(e->jr, &st);
	log_info("journal: compacted to %llu live records, %llu bytes",
		 (unsigned long long)st.live_records, (unsigned long long)st.file_bytes);
}

/* Group commit: everything journaled in this iteration is written and fdatasynced together,
 * through io_uring, one commit in flight at a time. */
static void commit(struct engine *e)
{
	const void *buf;
	size_t len;
	uint64_t off;
	if (e->commit_inflight || e->fatal || chunkd__journal_pending(e->jr, &buf, &len, &off) < 0)
		return;
	if (len == 0) {
		/* Nothing waits for the disk: the rings' read positions are final already. */
		release_heads(e, NULL, NULL);
		return;
	}
	if (chunkd__journal_should_compact(e->jr)) {
		compact(e);
		return;
	}
	if (chunkd__journal_begin_commit(e->jr) < 0)
		return;
	memcpy(e->head_commit, e->head, sizeof(*e->head) * e->nclients);
	memcpy(e->gen_commit, e->ring_gen, sizeof(*e->ring_gen) * e->nclients);
	e->commit_op.fn = on_commit;
	e->commit_res = 0;
	int fd = chunkd__journal_fd(e->jr);
	struct io_uring_sqe *sqe = chunkd__loop_sqe(e->l, &e->commit_op);
	io_uring_prep_write(sqe, fd, buf, (unsigned)len, off);
	sqe->flags |= IOSQE_IO_LINK;
	sqe = chunkd__loop_sqe(e->l, &e->commit_op);
	io_uring_prep_fsync(sqe, fd, IORING_FSYNC_DATASYNC);
	e->commit_inflight = 2;
}

void chunkd__engine_flush(struct engine *e)
{
	/* Publish first: a result says "findable" or "unfindable" only once the index does. Then
	 * post what is durable, and only then free the ring space of a completed commit (a
	 * request's record leaves its ring after its result is posted: see on_commit). */
	chunkd__catalog_flush(e->cat);
	deliver_posts(e);
	if (e->heads_ready) {
		e->heads_ready = 0;
		release_heads(e, e->head_commit, e->gen_commit);
	}
	commit(e); /* a compaction in it posts what it made durable */
	bury(e);
}

static int rp_requester_here(struct engine *e, const struct chunkd_jrec *r);

void chunkd__engine_after_ready(struct engine *e)
{
	for (uint32_t i = 0; i < e->nabsent; i++) {
		const struct absent *a = &e->absent[i];
		struct chunkd_jrec rq = {.client = a->client, .owner = a->owner, .ticket = a->ticket};
		if (rp_requester_here(e, &rq))
			post(e, a->client, a->owner, a->ticket, 0);
		journal_forget_delete(e, a->id);
	}
	free(e->absent);
	e->absent = NULL;
	e->nabsent = e->capabsent = 0;
}

int chunkd__engine_fatal(struct engine *e)
{
	return e->fatal;
}

/* Stop a running download so that a later daemon can resume it: stop the sources, let the
 * writes in flight land, then fdatasync each file and record its prefix (job_suspend_done). */
static void job_suspend(struct engine *e, struct job *j)
{
	j->state = J_SUSPEND;
	for (uint32_t i = 0; i < j->dl->nfiles; i++) {
		struct xfer *x = &j->x[i];
		if (x->state != X_RUNNING || x->finished)
			continue;
		if (x->src)
			x->src->cancel(e, x);
		x->finished = 1;
		e->running_xfers--;
		x->state = X_IDLE;
		if (x->cur) {
			buf_put(e, x->cur); /* unwritten bytes: fetched again on resume */
			x->cur = NULL;
		}
	}
	job_suspend_done(e, j);
}

static void job_suspend_done(struct engine *e, struct job *j)
{
	if (j->inflight)
		return;
	for (uint32_t i = 0; i < j->dl->nfiles; i++) {
		struct xfer *x = &j->x[i];
		if (x->fd < 0 || x->state == X_DONE || !x->prefix || x->result)
			continue;
		/* Stopping: a synchronous fdatasync per file is fine here. */
		if (fdatasync(x->fd) == 0) {
			x->ckpt = x->prefix;
			x->ckpt_crc = x->prefix_crc;
		}
	}
	write_resume(e, j);
	resume_close(j);
	xfers_free(j);
	if (j->dirfd >= 0) {
		close(j->dirfd);
		j->dirfd = -1;
	}
	j->tmpname[0] = '\0';
	job_unrun(e, j);
	log_info("chunk slot %u: download suspended; staging kept for a resume", j->slot);
	j->state = J_QUEUED; /* it stays wanted; the request journal brings it back */
}

int chunkd__engine_quiesce(struct engine *e)
{
	if (!e->quiescing) {
		e->quiescing = 1;
	}
	/* Suspend downloads that are moving bytes; let the short steps (mkdir, metadata,
	 * rename, fsyncs) finish on their own. */
	for (struct job *j = e->run_list, *next; j; j = next) {
		next = j->next_run;
		if (j->running == RUN_DOWNLOAD && j->state == J_RUNNING)
			job_suspend(e, j);
	}
	for (struct job *j = e->run_list; j; j = j->next_run)
		if (j->inflight)
			return 0;
	if (e->commit_inflight || !chunkd__http_idle(e))
		return 0;
	/* Everything taken from the rings is durable before we go, and the rings say so. */
	if (chunkd__journal_sync(e->jr) == 0) {
		deliver_posts(e);
		release_heads(e, NULL, NULL);
	}
	chunkd__engine_flush(e);
	return 1;
}


/* ---- start-up: journal replay ---------------------------------------------------------------- */

/* The entry for id in the replay table (linear search is too slow for 100k ids: a hash of
 * indexes into e->rp, grown as needed). */

static uint32_t rp_hash(const uint64_t id[4])
{
	return (uint32_t)(((id[0] ^ id[1] ^ id[2] ^ id[3]) * 0x9E3779B97F4A7C15ull) >> 32);
}

/* The table position of id: its entry, or the empty position where it would go. The table is
 * at most half full, so the probe ends. */
static uint32_t rp_probe(const struct engine *e, const uint64_t id[4])
{
	uint32_t h = rp_hash(id) & e->rpi_mask;
	while (e->rpi_slots[h] && chunkd__id_cmp(e->rp[e->rpi_slots[h] - 1].id, id))
		h = (h + 1) & e->rpi_mask;
	return h;
}

static struct replayed *rp_get(struct engine *e, const uint64_t id[4])
{
	if (!e->rpi_slots || 2 * (e->nrp + 1) > e->rpi_mask + 1) {
		uint32_t cap = e->rpi_slots ? 2 * (e->rpi_mask + 1) : 1024;
		uint32_t *ns = calloc(cap, sizeof(*ns));
		if (!ns)
			return NULL;
		for (uint32_t i = 0; i < e->nrp; i++) {
			uint32_t h = rp_hash(e->rp[i].id) & (cap - 1);
			while (ns[h])
				h = (h + 1) & (cap - 1);
			ns[h] = i + 1;
		}
		free(e->rpi_slots);
		e->rpi_slots = ns;
		e->rpi_mask = cap - 1;
	}
	uint32_t h = rp_probe(e, id);
	if (e->rpi_slots[h])
		return &e->rp[e->rpi_slots[h] - 1];
	if (e->nrp == e->caprp) {
		uint32_t nc = e->caprp ? 2 * e->caprp : 1024;
		struct replayed *p = realloc(e->rp, sizeof(*p) * nc);
		if (!p)
			return NULL;
		e->rp = p;
		e->caprp = nc;
	}
	struct replayed *p = &e->rp[e->nrp];
	memset(p, 0, sizeof(*p));
	memcpy(p->id, id, sizeof(p->id));
	e->rpi_slots[h] = ++e->nrp;
	return p;
}

/* The entry for id if the replay has one, without creating it. */
static struct replayed *rp_find(struct engine *e, const uint64_t id[4])
{
	if (!e->rpi_slots)
		return NULL;
	uint32_t h = rp_probe(e, id);
	return e->rpi_slots[h] ? &e->rp[e->rpi_slots[h] - 1] : NULL;
}

/* A replayed request's result goes to its client only if that slot still has the same owner
 * (a restart of the workers makes most journaled requesters gone). */
static int rp_requester_here(struct engine *e, const struct chunkd_jrec *r)
{
	if (r->client >= e->nclients || r->owner == 0)
		return 0;
	struct chunkd_req_client *cl = chunkd__req_client(&e->in->req, r->client);
	return (chunkd__load_relaxed(&cl->ctl.owner) & ~CHUNKD_OWNER_CLOSED) == r->owner;
}

static void rp_post_all(struct engine *e, struct replayed *p, int result)
{
	for (uint32_t i = 0; i < p->nw; i++)
		post(e, p->w[i].client, p->w[i].owner, p->w[i].ticket, result);
	p->nw = 0;
}

static int rp_add_waiter(struct replayed *p, const struct chunkd_jrec *r)
{
	if (p->nw == p->capw) {
		uint32_t nc = p->capw ? 2 * p->capw : 2;
		struct waiter *w = realloc(p->w, sizeof(*w) * nc);
		if (!w)
			return -ENOMEM;
		p->w = w;
		p->capw = nc;
	}
	p->w[p->nw++] = (struct waiter){r->client, r->owner, r->ticket};
	return 0;
}

/* Replay callback: fold the journal into the last request per id, with the requesters who may
 * still be waiting for it. Results superseded within the journal are posted as they were then
 * (a ticket already answered is never overwritten, see chunkd__engine_flush). */
static int replay_cb(const struct chunkd_jrec *r, void *arg)
{
	struct engine *e = arg;
	if (r->client < e->nclients) {
		e->replay_owner[r->client] = r->owner;
		e->replay_ticket[r->client] = r->ticket;
	}
	if (r->refused) {
		/* Refused when it was taken: answered so again, and no part of any chunk's state. */
		post(e, r->client, r->owner, r->ticket, r->refused);
		return 0;
	}
	if (r->type == CHUNKD_JREC_DELETE && !rp_find(e, r->id)) {
		/* The common case: a delete that no earlier record of its id needs folding into.
		 * It takes no replay entry (a million deletes of gone chunks would cost a table
		 * entry each); chunkd__engine_start decides it against the catalogue. */
		if (e->nabsent == e->capabsent) {
			uint32_t nc = e->capabsent ? 2 * e->capabsent : 4096;
			struct absent *a = realloc(e->absent, sizeof(*a) * nc);
			if (!a)
				return -ENOMEM;
			e->absent = a;
			e->capabsent = nc;
		}
		struct absent *a = &e->absent[e->nabsent++];
		memcpy(a->id, r->id, sizeof(a->id));
		a->client = r->client;
		a->owner = r->owner;
		a->ticket = r->ticket;
		return 0;
	}
	struct replayed *p = rp_get(e, r->id);
	if (!p)
		return -ENOMEM;
	p->order = ++e->replay_order;
	if (r->type == CHUNKD_JREC_DELETE) {
		rp_post_all(e, p, p->type == CHUNKD_JREC_DOWNLOAD ? -ECANCELED : 0);
		free(p->dl);
		p->dl = NULL;
		p->type = CHUNKD_JREC_DELETE;
		return rp_add_waiter(p, r);
	}
	struct dlc *d = dl_pack(r->dl);
	if (!d)
		return -ENOMEM;
	if (p->type == CHUNKD_JREC_DOWNLOAD && same_desc_dl(p->dl, d)) {
		free(p->dl);
		p->dl = d; /* the latest URLs */
		return rp_add_waiter(p, r);
	}
	if (p->type == CHUNKD_JREC_DOWNLOAD) {
		free(d);
		post(e, r->client, r->owner, r->ticket, -EEXIST);
		return 0;
	}
	rp_post_all(e, p, 0); /* a delete reached its goal before this download */
	p->type = CHUNKD_JREC_DOWNLOAD;
	p->dl = d;
	return rp_add_waiter(p, r);
}

static int rp_order_cmp(const void *a, const void *b)
{
	const struct replayed *x = a, *y = b;
	return x->order < y->order ? -1 : x->order > y->order;
}

/* Apply the replayed desired state, in journal order, through the same paths as live
 * requests (they are idempotent: a published chunk answers 0, an unknown delete answers 0). */
static void replay_apply(struct engine *e)
{
	if (e->nrp)
		qsort(e->rp, e->nrp, sizeof(*e->rp), rp_order_cmp);
	free(e->rpi_slots);
	e->rpi_slots = NULL;
	uint32_t downloads = 0, deletes = 0;
	for (uint32_t i = 0; i < e->nrp; i++) {
		struct replayed *p = &e->rp[i];
		struct waiter none = {UINT32_MAX, 0, 0};
		uint32_t nw = p->nw ? p->nw : 1;
		int slot = chunkd__catalog_lookup(e->cat, p->id);
		if (p->type == CHUNKD_JREC_DOWNLOAD && slot >= 0 && !e->jobs[slot] &&
		    e->cat->sp[slot].state == CHUNKD_SLOT_PUBLISHED &&
		    !chunkd__id_cmp(e->cat->cat->slots[slot].dataset, p->dl->dataset) &&
		    e->cat->cat->slots[slot].first_block == p->dl->first_block &&
		    e->cat->cat->slots[slot].end_block == p->dl->end_block) {
			/* The common case at start: the chunk this request asked for is on disk.
			 * (Live requests also compare the file names, reading the metadata; a
			 * replayed one was checked when it was accepted.) */
			for (uint32_t k = 0; k < p->nw; k++)
				post(e, p->w[k].client, p->w[k].owner, p->w[k].ticket, 0);
			downloads++;
			free(p->dl);
			free(p->w);
			continue;
		}
		for (uint32_t k = 0; k < nw; k++) {
			const struct waiter *w = p->nw ? &p->w[k] : &none;
			if (p->type == CHUNKD_JREC_DOWNLOAD) {
				p->dl->ticket = w->ticket;
				on_download(e, p->dl, w->client, w->owner);
			} else {
				on_delete(e, p->id, w->ticket, w->client, w->owner);
			}
		}
		if (p->type == CHUNKD_JREC_DOWNLOAD)
			downloads++;
		else
			deletes++;
		free(p->dl);
		free(p->w);
	}
	free(e->rp);
	e->rp = NULL;
	e->nrp = e->caprp = 0;
	if (downloads || deletes)
		log_info("journal: %u chunks wanted present, %u wanted absent", downloads, deletes);
}

/* Staging entries of downloads nobody wants any more go; the others are resumed. */
static void purge_staging(struct engine *e)
{
	int fd = dup(e->staging_fd);
	DIR *d = fd >= 0 ? fdopendir(fd) : NULL;
	if (!d)
		return;
	struct dirent *de;
	uint32_t kept = 0, removed = 0;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		uint8_t id8[32];
		uint64_t id[4];
		int keep = strlen(de->d_name) >= 64 &&
			   chunkd__hex_decode(de->d_name, 64, id8) == 0 &&
			   (de->d_name[64] == '\0' || !strcmp(de->d_name + 64, ".resume"));
		if (keep) {
			memcpy(id, id8, sizeof(id));
			int slot = chunkd__catalog_lookup(e->cat, id);
			struct job *j = slot >= 0 ? e->jobs[slot] : NULL;
			keep = j && j->want_present && j->state == J_QUEUED;
		}
		if (keep) {
			kept++;
			continue;
		}
		int r = chunkd__rm_tree_at(e->staging_fd, de->d_name);
		if (r < 0)
			log_warn("staging/%s: cannot remove: %s", de->d_name, strerror(-r));
		else
			removed++;
	}
	closedir(d);
	if (kept || removed)
		log_info("staging: kept %u entr%s to resume, removed %u unwanted", kept,
			 kept == 1 ? "y" : "ies", removed);
}

static void *replay_main(void *arg)
{
	struct engine *e = arg;
	e->replay_result = chunkd__journal_open(e->in->data_fd, &e->jr, replay_cb, e, &e->jstats);
	return NULL;
}

int chunkd__engine_prepare(struct instance *in, struct catalog *cat,
			   const struct engine_config *cfg, struct engine **out)
{
	struct engine *e = calloc(1, sizeof(*e));
	if (!e)
		return -ENOMEM;
	e->cfg = *cfg;
	e->cat = cat;
	e->in = in;
	e->nclients = in->req.geom.max_clients;
	e->rng = (uint64_t)getpid() * 0x9E3779B97F4A7C15ull;
	e->staging_fd = e->trash_fd = e->chunks_fd = -1;
	int r = -ENOMEM;
	uint32_t dscap = 1;
	while (dscap < 2 * e->cat->cap)
		dscap <<= 1;
	e->dsmask = dscap - 1;
	e->jobs = calloc(e->cat->cap, sizeof(*e->jobs));
	e->woken = calloc(e->nclients, 1);
	e->head = calloc(e->nclients, sizeof(*e->head));
	e->head_commit = calloc(e->nclients, sizeof(*e->head_commit));
	e->ring_gen = calloc(e->nclients, sizeof(*e->ring_gen));
	e->gen_commit = calloc(e->nclients, sizeof(*e->gen_commit));
	e->gone_seq = calloc(e->nclients, sizeof(*e->gone_seq));
	e->gone = calloc(e->nclients, 1);
	e->replay_owner = calloc(e->nclients, sizeof(*e->replay_owner));
	e->replay_ticket = calloc(e->nclients, sizeof(*e->replay_ticket));
	e->skip_end = calloc(e->nclients, sizeof(*e->skip_end));
	e->rec = malloc(CHUNKD_REC_MAX);
	e->dl_scratch = malloc(sizeof(*e->dl_scratch));
	e->ds = calloc(dscap, sizeof(*e->ds));
	e->bufs = calloc(cfg->buffers, sizeof(*e->bufs));
	e->buf_mem = malloc((size_t)cfg->buffers * WBUF_SIZE);
	if (!e->jobs || !e->woken || !e->head || !e->rec || !e->dl_scratch || !e->ds || !e->bufs ||
	    !e->buf_mem || !e->head_commit || !e->ring_gen || !e->gen_commit || !e->gone_seq ||
	    !e->gone || !e->replay_owner || !e->replay_ticket || !e->skip_end)
		goto err;
	for (uint32_t i = 0; i < cfg->buffers; i++) {
		e->bufs[i].data = e->buf_mem + (size_t)i * WBUF_SIZE;
		buf_put(e, &e->bufs[i]);
	}
	e->staging_fd = openat(e->in->data_fd, "staging", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	e->trash_fd = openat(e->in->data_fd, "trash", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	e->chunks_fd = openat(e->in->data_fd, "chunks", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (e->staging_fd < 0 || e->trash_fd < 0 || e->chunks_fd < 0) {
		r = -errno;
		goto err;
	}
	r = chunkd__http_init(e, cfg);
	if (r < 0)
		goto err;
	/* The journal is read and folded by its own thread while the caller scans chunks/: the
	 * replay touches only the engine's replay state, never the catalogue. */
	r = -pthread_create(&e->replay_thread, NULL, replay_main, e);
	if (r < 0)
		goto err;
	e->replay_started = 1;
	*out = e;
	return 0;
err:
	chunkd__engine_destroy(e);
	return r;
}

int chunkd__engine_start(struct engine *e, struct loop *l)
{
	int r;
	e->l = l;
	pthread_join(e->replay_thread, NULL);
	e->replay_started = 0;
	const struct chunkd_journal_stats js = e->jstats;
	if (e->replay_result < 0) {
		log_error("journal %s/journal: %s%s%s", e->in->data_dir, strerror(-e->replay_result),
			  js.why[0] ? ": " : "", js.why);
		return e->replay_result;
	}
	chunkd__journal_set_keep(e->jr, keep_unanswered, e);
	/* The published chunks' ranges take part in the overlap check. */
	for (uint32_t i = 0; i < e->cat->npub; i++) {
		const struct chunkd_idx_entry *p = &e->cat->pub[i];
		if (dsv_add(e, p->dataset, p->first, p->end, p->slot) < 0)
			return -ENOMEM;
	}
	/* Condemned chunks of an adopted catalogue: still wanted gone, removed once unpinned. */
	for (uint32_t s = 0; s < e->cat->cap; s++) {
		if (e->cat->sp[s].state != CHUNKD_SLOT_CONDEMNED)
			continue;
		struct job *j = job_new(e, s);
		if (!j || chunkd__slot_read(e->cat->cat, s, &j->desc) < 0) {
			if (j)
				job_free(e, j);
			return -ENOMEM;
		}
		j->state = J_CONDEMNED;
		condemned_add(e, j);
	}
	/* Ring heads: the daemon starts where the rings stand (a fresh segment: 0). */
	for (uint32_t c = 0; c < e->nclients; c++) {
		struct chunkd_req_client *cl = chunkd__req_client(&e->in->req, c);
		e->head[c] = chunkd__load_acquire(&cl->d.sq_head);
		/* Untrusted, only compared: a client that lies about it only mislabels its own. */
		e->skip_end[c] = chunkd__load_acquire(&cl->ctl.sq_tail);
	}
	if (js.cut == CHUNKD_JOURNAL_CUT_TORN)
		log_warn("journal: torn tail, truncated %llu bytes at offset %llu",
			 (unsigned long long)js.cut_bytes, (unsigned long long)js.cut_offset);
	else if (js.cut == CHUNKD_JOURNAL_CUT_CORRUPT)
		log_error("journal: corrupt record at offset %llu (%s): replay stops there, "
			  "truncated %llu bytes", (unsigned long long)js.cut_offset, js.why,
			  (unsigned long long)js.cut_bytes);
	log_info("journal: replayed %llu records (%llu live) in %.1f ms",
		 (unsigned long long)js.records, (unsigned long long)js.live_records,
		 (double)js.replay_ns / 1e6);
	if (js.upgraded)
		log_info("journal: rewritten in format version %u (was 1)", CHUNKD_JOURNAL_VERSION);
	/* Deletes without a replay entry, in journal order: a later record of the same id made
	 * one (a download: replay_cb folds deletes after an entry into it), and it decides, while
	 * the delete reached its goal before that download, as replay_cb answers the deletes it
	 * folds; a chunk that is here is deleted; a chunk that is gone only has its record
	 * forgotten (and its requester answered, if still attached). */
	uint32_t keep = 0;
	for (uint32_t i = 0; i < e->nabsent; i++) {
		const struct absent *a = &e->absent[i];
		if (rp_find(e, a->id)) {
			/* Its ticket may never have been answered: a daemon killed between a commit
			 * and the posting of its results (test_durable h). */
			post(e, a->client, a->owner, a->ticket, 0);
			continue;
		}
		if (chunkd__catalog_lookup(e->cat, a->id) >= 0) {
			on_delete(e, a->id, a->ticket, a->client, a->owner);
			continue;
		}
		/* Gone already: nothing to do before READY (see chunkd__engine_after_ready). */
		e->absent[keep++] = *a;
	}
	e->nabsent = keep;
	replay_apply(e);
	purge_staging(e);
	r = 0;
	return r;
}

void chunkd__engine_destroy(struct engine *e)
{
	if (!e)
		return;
	if (e->replay_started)
		pthread_join(e->replay_thread, NULL);
	chunkd__http_cleanup(e);
	for (uint32_t s = 0; e->jobs && s < e->cat->cap; s++)
		if (e->jobs[s]) {
			e->jobs[s]->inflight = 0;
			e->jobs[s]->running = 0;
			job_free(e, e->jobs[s]);
		}
	bury(e);
	for (uint32_t i = 0; e->ds && i <= e->dsmask; i++)
		free(e->ds[i].v);
	if (e->staging_fd >= 0)
		close(e->staging_fd);
	if (e->trash_fd >= 0)
		close(e->trash_fd);
	if (e->chunks_fd >= 0)
		close(e->chunks_fd);
	free(e->jobs);
	free(e->woken);
	free(e->head);
	free(e->head_commit);
	free(e->ring_gen);
	free(e->gen_commit);
	free(e->gone_seq);
	free(e->gone);
	free(e->replay_owner);
	free(e->replay_ticket);
	free(e->skip_end);
	for (uint32_t i = 0; i < e->nrp; i++) {
		free(e->rp[i].dl);
		free(e->rp[i].w);
	}
	free(e->rp);
	free(e->absent);
	free(e->rpi_slots);
	e->rpi_slots = NULL;
	chunkd__journal_close(e->jr);
	free(e->rec);
	free(e->dl_scratch);
	free(e->ds);
	free(e->bufs);
	free(e->buf_mem);
	free(e->posts);
	free(e);
}
