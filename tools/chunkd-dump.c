/*
 * chunkd-dump — print what a chunkd instance's shared memory says: the catalogue header, slot
 * counts, the chunk table and the attached clients, as text or as one JSON object.
 *
 * The tool must never disturb the daemon or its clients, so it only ever reads:
 * - both segments are mapped read-only (chunkd__cat_attach / chunkd__req_attach, writable = 0);
 * - it never takes the catalogue rwlock (docs/shm-layout.md: no client and no tool does);
 * - slots are read through chunkd__slot_read, whose seqlock retries are bounded, so a daemon
 *   killed inside a write section costs one "inconsistent" row, never a hang;
 * - pages of a segment that were never written are not touched at all (see "Data pages").
 *
 * Each slot and the index header are read consistently on their own, but the dump as a whole is
 * not a snapshot: against a busy daemon, the counts (first pass) and the table (second pass) may
 * disagree by the chunks that changed in between.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <time.h>
#include <unistd.h>

#include "shm/atomics.h"
#include "shm/seqlock.h"
#include "shm/shm.h"

static const char usage[] =
    "Usage: chunkd-dump [OPTION]...\n"
    "Print the state of a chunkd instance from its shared memory, without disturbing it:\n"
    "the daemon (pid, liveness, state, start and heartbeat), the catalogue (capacity, index),\n"
    "slot counts by state, the chunk table and the attached clients.\n"
    "\n"
    "  -n, --name NAME   instance to inspect (default: $CHUNKD_NAME, else \"default\")\n"
    "  -j, --json        print one JSON object (full hex ids, raw nanosecond times)\n"
    "  -c, --chunks      show the chunk table\n"
    "  -C, --clients     show the attached clients\n"
    "  -h, --help        show this help and exit\n"
    "\n"
    "Without --chunks or --clients both tables are shown; the header and counts always are.\n"
    "The heartbeat is the daemon's last event-loop iteration: an idle daemon does not update\n"
    "it, so its age alone does not mean the daemon is stuck; 'alive' is checked with the\n"
    "daemon's pid and process start time. Slots and the index are each read consistently,\n"
    "but the dump as a whole is not an atomic snapshot of a busy instance. A slot whose write\n"
    "never finished (its daemon died mid-write) is shown as 'inconsistent'.\n"
    "Exit status: 0 success, 1 the instance does not exist or could not be (fully) read,\n"
    "2 bad usage.\n";

#define PROG "chunkd-dump"

struct options {
	const char *name;
	int json;
	int chunks;
	int clients;
};

/* ---- data pages ------------------------------------------------------------------------------
 *
 * A shared-memory object is sparse: the daemon sizes it with ftruncate and only writes the slots
 * and client entries it uses. Reading a never-written page through a mapping, even a read-only
 * one, makes tmpfs allocate it: a full scan would grow a 65536-slot catalogue by 32 MiB (2 GiB at
 * the slot limit), and would die of SIGBUS when /dev/shm is full. So the tool asks the kernel
 * where the data is (lseek SEEK_DATA/SEEK_HOLE) and treats a range in a hole as never written:
 * slots FREE at generation 0, client entries unowned. A page written after the lseek is missed,
 * exactly as if it had been read just before the write. Nothing ever punches holes in a segment.
 *
 * The kernel can only answer for an fd, and the attach functions close theirs, so the object is
 * opened again; /proc/self/maps proves that the new fd and the mapping are the same object (a
 * restarted daemon replaces the objects). If anything fails, every page counts as data: correct
 * output at the cost of the memory the tool wanted to save.
 */

#define DATA_UNIT 4096u /* granularity of the bitmap; holes are at least page aligned */

struct datamap {
	uint8_t *bits; /* bit i: bytes [i * DATA_UNIT, (i + 1) * DATA_UNIT) hold data */
	size_t units;
	int all; /* no information: treat everything as data */
};

/* 1 if the mapping that starts at `base` maps the file `st` describes from offset 0. */
static int mapping_is(const void *base, const struct stat *st)
{
	FILE *f = fopen("/proc/self/maps", "re");
	if (!f)
		return 0;
	char *line = NULL;
	size_t cap = 0;
	int same = 0;
	while (getline(&line, &cap, f) > 0) {
		unsigned long lo, hi, off, ino;
		unsigned maj, min;
		if (sscanf(line, "%lx-%lx %*s %lx %x:%x %lu", &lo, &hi, &off, &maj, &min, &ino) !=
		    6)
			continue;
		if (lo != (unsigned long)(uintptr_t)base)
			continue;
		same = off == 0 && ino == (unsigned long)st->st_ino && maj == major(st->st_dev) &&
		       min == minor(st->st_dev);
		break;
	}
	free(line);
	fclose(f);
	return same;
}

static void datamap_init(struct datamap *d, const char *name, const char *suffix, const void *base,
			 size_t size)
{
	memset(d, 0, sizeof(*d));
	d->all = 1;
	char obj[CHUNKD_NAME_MAX + 32];
	chunkd__shm_object(obj, sizeof(obj), name, suffix);
	int fd = shm_open(obj, O_RDONLY | O_CLOEXEC, 0);
	if (fd < 0)
		return;
	struct stat st;
	if (fstat(fd, &st) < 0 || (uint64_t)st.st_size != size || !mapping_is(base, &st))
		goto out;
	d->units = (size + DATA_UNIT - 1) / DATA_UNIT;
	d->bits = calloc((d->units + 7) / 8, 1);
	if (!d->bits)
		goto out;
	off_t pos = 0;
	while ((uint64_t)pos < size) {
		off_t data = lseek(fd, pos, SEEK_DATA);
		if (data < 0) {
			if (errno == ENXIO)
				break; /* no data after pos */
			goto out_free;
		}
		off_t hole = lseek(fd, data, SEEK_HOLE);
		if (hole < 0 || hole <= data)
			goto out_free;
		if ((uint64_t)hole > size)
			hole = (off_t)size;
		for (size_t u = (size_t)data / DATA_UNIT;
		     u < ((size_t)hole + DATA_UNIT - 1) / DATA_UNIT; u++)
			d->bits[u / 8] |= (uint8_t)(1u << (u % 8));
		pos = hole;
	}
	d->all = 0;
	goto out;
out_free:
	free(d->bits);
	d->bits = NULL;
out:
	close(fd);
}

/* 1 if any byte of [off, off + len) may hold data. */
static int datamap_has(const struct datamap *d, uint64_t off, uint64_t len)
{
	if (d->all)
		return 1;
	for (uint64_t u = off / DATA_UNIT; u <= (off + len - 1) / DATA_UNIT && u < d->units; u++)
		if (d->bits[u / 8] & (1u << (u % 8)))
			return 1;
	return 0;
}

/* ---- reading the instance -------------------------------------------------------------------- */

struct index_info {
	int ok; /* 0: the active copy stayed inconsistent for CHUNKD_SEQ_SPINS reads */
	uint32_t active, nds, nranges, nids;
};

struct counts {
	uint32_t by_state[6]; /* enum chunkd_slot_state */
	uint32_t other;       /* a state word outside the enum */
	uint32_t inconsistent;
};

/* A client entry with a non-zero owner word. The word may carry CHUNKD_OWNER_CLOSED (the client
 * called chunkd_close; the daemon frees the entry) or be CHUNKD_OWNER_RECLAIM. */
struct client_row {
	uint32_t index;
	uint64_t owner;
	uint64_t attach_ns;
	uint32_t held;
	int alive;
	uint64_t ring_used; /* bytes enqueued and not yet taken by the daemon */
	uint32_t rejected;  /* records the daemon refused */
	uint32_t cq_seq;    /* completion wake-ups posted */
};

struct dump {
	char name[CHUNKD_NAME_MAX + 1];
	const struct options *o;
	struct chunkd_cat_map cat;
	struct chunkd_req_map req;
	int have_req;
	struct datamap cat_data, req_data;

	/* Header words, each loaded once so that every section prints the same value. */
	uint64_t daemon, epoch, start_ns, heartbeat_ns, flips, now_ns;
	uint32_t state, nchunks, version;
	int daemon_alive;
	char data_dir[CHUNKD_DATA_DIR_MAX];
	struct index_info idx;
	struct counts counts;

	struct client_row *clients;
	uint32_t nclients;
	uint64_t *pins; /* every pin word of every owned client entry, sorted */
	size_t npins;
};

static uint64_t now_realtime_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static void read_header(struct dump *d)
{
	const struct chunkd_cat_hdr *h = d->cat.hdr;
	/* Pairs with the daemon's release store of version after initialising the segment; the
	 * write-once fields below (data_dir among them) were stored before it. */
	d->version = chunkd__load_acquire(&h->version);
	/* Pairs with the daemon's release stores of state (READY, STOPPING, STOPPED). */
	d->state = chunkd__load_acquire(&h->state);
	d->daemon = chunkd__load_relaxed(&h->daemon);
	d->epoch = chunkd__load_relaxed(&h->epoch);
	d->start_ns = chunkd__load_relaxed(&h->start_time_ns);
	d->heartbeat_ns = chunkd__load_relaxed(&h->heartbeat_ns);
	d->nchunks = chunkd__load_relaxed(&h->nchunks);
	d->flips = chunkd__load_relaxed(&h->index_flips);
	d->daemon_alive = chunkd__owner_alive(d->daemon);
	d->now_ns = now_realtime_ns();
	/* Written once before version, but never trust it to be terminated. */
	memcpy(d->data_dir, h->data_dir, sizeof(d->data_dir));
	d->data_dir[sizeof(d->data_dir) - 1] = '\0';
}

/* The active index copy's header, read under its seqlock like a look-up does (index.c). */
static void read_index(struct dump *d)
{
	memset(&d->idx, 0, sizeof(d->idx));
	for (uint32_t tries = 0; tries < CHUNKD_SEQ_SPINS; tries++) {
		/* Pairs with the release store of index_active in chunkd__idx_publish. */
		uint32_t a = chunkd__load_acquire(&d->cat.hdr->index_active) & 1u;
		const struct chunkd_idx_hdr *ih = d->cat.idx[a].hdr;
		uint32_t q = chunkd__seq_read_begin(&ih->seq);
		if (q & 1u) {
			chunkd__cpu_relax();
			continue;
		}
		uint32_t nds = chunkd__load_relaxed(&ih->nds);
		uint32_t nranges = chunkd__load_relaxed(&ih->nranges);
		uint32_t nids = chunkd__load_relaxed(&ih->nids);
		if (chunkd__seq_read_retry(&ih->seq, q))
			continue;
		d->idx = (struct index_info){
		    .ok = 1, .active = a, .nds = nds, .nranges = nranges, .nids = nids};
		return;
	}
}

static int u64_cmp(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

/* One pass over the client table: the rows to print and every pin word, sorted, so that a
 * chunk's pins are found by binary search. Counting per chunk with chunkd__pins_count instead
 * would rescan all max_clients x CHUNKD_PINS_PER_CLIENT entries for every chunk (seconds on a
 * full catalogue); the rule is the same: pins of entries whose owner word is non-zero, matched
 * on the whole word gen << 32 | slot + 1. */
static int read_clients(struct dump *d)
{
	const struct chunkd_req_map *m = &d->req;
	uint32_t n = m->geom.max_clients;
	d->clients = calloc(n, sizeof(*d->clients));
	if (!d->clients)
		return -ENOMEM;
	size_t cap = 0;
	for (uint32_t i = 0; i < n; i++) {
		uint64_t off = m->geom.clients_off + (uint64_t)i * m->geom.client_stride;
		if (!datamap_has(&d->req_data, off, sizeof(struct chunkd_req_client_ctl)))
			continue; /* never written: never owned */
		const struct chunkd_req_client *cl = chunkd__req_client(m, i);
		/* Informational: nothing read below is ordered after the owner word anyway. */
		uint64_t owner = chunkd__load_relaxed(&cl->ctl.owner);
		if (owner == 0)
			continue;
		struct client_row *r = &d->clients[d->nclients++];
		r->index = i;
		r->owner = owner;
		r->attach_ns = chunkd__load_relaxed(&cl->ctl.attach_ns);
		r->held = chunkd__pins_held(cl);
		/* Informational, like the owner: tail and head are read without ordering. */
		uint64_t tail = chunkd__load_relaxed(&cl->ctl.sq_tail);
		uint64_t head = chunkd__load_relaxed(&cl->d.sq_head);
		r->ring_used = tail >= head ? tail - head : 0;
		r->rejected = chunkd__load_relaxed(&cl->d.rejected);
		r->cq_seq = chunkd__load_relaxed(&cl->d.cq_seq);
		r->alive = owner != CHUNKD_OWNER_RECLAIM &&
			   chunkd__owner_alive(owner & ~CHUNKD_OWNER_CLOSED);
		for (uint32_t p = 0; p < CHUNKD_PINS_PER_CLIENT; p++) {
			uint64_t w = chunkd__load_relaxed(&cl->pins[p]);
			if (w == 0)
				continue;
			if (d->npins == cap) {
				cap = cap ? 2 * cap : 1024;
				uint64_t *np = realloc(d->pins, cap * sizeof(*np));
				if (!np)
					return -ENOMEM;
				d->pins = np;
			}
			d->pins[d->npins++] = w;
		}
	}
	if (d->npins)
		qsort(d->pins, d->npins, sizeof(*d->pins), u64_cmp);
	return 0;
}

/* Pins held on incarnation (slot, gen). */
static uint32_t pins_on(const struct dump *d, uint32_t slot, uint32_t gen)
{
	uint64_t want = CHUNKD_PIN_WORD(slot, gen);
	size_t lo = 0, hi = d->npins;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		if (d->pins[mid] < want)
			lo = mid + 1;
		else
			hi = mid;
	}
	uint32_t n = 0;
	while (lo < d->npins && d->pins[lo++] == want)
		n++;
	return n;
}

/* ---- formatting ------------------------------------------------------------------------------ */

static const char *daemon_state_name(uint32_t s)
{
	switch (s) {
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

static const char *const slot_state_names[6] = {"free",   "queued",    "downloading",
						"failed", "published", "condemned"};

/* The order counts are printed in: the steady state first. */
static const uint32_t count_order[5] = {CHUNKD_SLOT_PUBLISHED, CHUNKD_SLOT_QUEUED,
					CHUNKD_SLOT_DOWNLOADING, CHUNKD_SLOT_FAILED,
					CHUNKD_SLOT_CONDEMNED};

static const char *slot_state_name(uint32_t s)
{
	return s < 6 ? slot_state_names[s] : "unknown";
}

/* "2026-01-02T03:04:05.678Z", or "-" for 0 (never set). */
static void iso_time(uint64_t ns, char out[32])
{
	if (ns == 0) {
		strcpy(out, "-");
		return;
	}
	time_t t = (time_t)(ns / 1000000000ull);
	struct tm tm;
	if (!gmtime_r(&t, &tm)) {
		strcpy(out, "?");
		return;
	}
	size_t n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm);
	snprintf(out + n, 32 - n, ".%03uZ", (unsigned)(ns / 1000000ull % 1000));
}

/* Seconds from ns to now; negative if the clock went back. */
static double age_s(const struct dump *d, uint64_t ns)
{
	return ((double)d->now_ns - (double)ns) / 1e9;
}

static void hex_id(const uint64_t words[4], char out[2 * CHUNKD_ID_SIZE + 1])
{
	static const char digits[] = "0123456789abcdef";
	uint8_t b[CHUNKD_ID_SIZE];
	memcpy(b, words, sizeof(b)); /* ids live in shared memory as their bytes, word by word */
	for (int i = 0; i < CHUNKD_ID_SIZE; i++) {
		out[2 * i] = digits[b[i] >> 4];
		out[2 * i + 1] = digits[b[i] & 15];
	}
	out[2 * CHUNKD_ID_SIZE] = '\0';
}

static int utf8_valid(const unsigned char *s)
{
	while (*s) {
		int n = *s < 0x80             ? 0
			: (*s & 0xe0) == 0xc0 ? 1
			: (*s & 0xf0) == 0xe0 ? 2
			: (*s & 0xf8) == 0xf0 ? 3
					      : -1;
		if (n < 0)
			return 0;
		s++;
		for (int i = 0; i < n; i++, s++)
			if ((*s & 0xc0) != 0x80)
				return 0;
	}
	return 1;
}

/* A JSON string. Paths are bytes: valid UTF-8 passes through; otherwise bytes >= 0x80 are
 * written as U+0080..U+00FF, so that the output always parses. */
static void json_str(const char *s)
{
	int raw = utf8_valid((const unsigned char *)s);
	putchar('"');
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if (*p == '"' || *p == '\\')
			printf("\\%c", *p);
		else if (*p < 0x20 || (*p >= 0x80 && !raw))
			printf("\\u%04x", *p);
		else
			putchar(*p);
	}
	putchar('"');
}

/* ---- sections -------------------------------------------------------------------------------- */

static void print_header(const struct dump *d)
{
	const struct chunkd_cat_hdr *h = d->cat.hdr;
	char start[32], beat[32];
	iso_time(d->start_ns, start);
	iso_time(d->heartbeat_ns, beat);
	pid_t pid = CHUNKD_OWNER_PID(d->daemon);
	if (d->o->json) {
		printf("{\"name\":");
		json_str(d->name);
		printf(",\"magic\":\"0x%016llx\",\"format\":\"0x%08x\",\"version\":%u",
		       (unsigned long long)h->magic, h->format, d->version);
		printf(",\"daemon\":{\"pid\":%d,\"alive\":%s,\"owner\":\"0x%016llx\"}", (int)pid,
		       d->daemon_alive ? "true" : "false", (unsigned long long)d->daemon);
		printf(",\"state\":\"%s\",\"state_code\":%u", daemon_state_name(d->state),
		       d->state);
		printf(",\"epoch\":%llu", (unsigned long long)d->epoch);
		printf(",\"start_time\":\"%s\",\"start_time_ns\":%llu,\"start_age_s\":%.3f", start,
		       (unsigned long long)d->start_ns, age_s(d, d->start_ns));
		printf(",\"heartbeat\":\"%s\",\"heartbeat_ns\":%llu,\"heartbeat_age_s\":%.3f", beat,
		       (unsigned long long)d->heartbeat_ns, age_s(d, d->heartbeat_ns));
		printf(",\"data_dir\":");
		json_str(d->data_dir);
		printf(",\"max_chunks\":%u,\"nchunks\":%u,\"catalogue_bytes\":%llu", h->max_chunks,
		       d->nchunks, (unsigned long long)d->cat.size);
		printf(",\"slots_offset\":%llu,\"slot_bytes\":%zu",
		       (unsigned long long)d->cat.geom.slots_off, sizeof(struct chunkd_slot));
		if (d->have_req)
			printf(",\"max_clients\":%u,\"pins_per_client\":%u",
			       d->req.geom.max_clients, (unsigned)CHUNKD_PINS_PER_CLIENT);
		else
			printf(",\"max_clients\":null,\"pins_per_client\":null");
		printf(",\"index\":{\"flips\":%llu,\"consistent\":%s", (unsigned long long)d->flips,
		       d->idx.ok ? "true" : "false");
		if (d->idx.ok)
			printf(",\"active\":%u,\"datasets\":%u,\"ranges\":%u,\"ids\":%u",
			       d->idx.active, d->idx.nds, d->idx.nranges, d->idx.nids);
		printf("}");
		return;
	}
	printf("instance   %s\n", d->name);
	printf("layout     magic 0x%016llx, format 0x%08x, version %u\n",
	       (unsigned long long)h->magic, h->format, d->version);
	printf("daemon     pid %d (%s), state %s", (int)pid,
	       d->daemon_alive ? "alive" : "not running", daemon_state_name(d->state));
	if (d->state < CHUNKD_STATE_STARTING || d->state > CHUNKD_STATE_STOPPED)
		printf(" (%u)", d->state);
	printf(", epoch %llu\n", (unsigned long long)d->epoch);
	printf("started    %s (%.1f s ago)\n", start, age_s(d, d->start_ns));
	printf("heartbeat  %s (%.1f s ago)\n", beat, age_s(d, d->heartbeat_ns));
	printf("data dir   %s\n", d->data_dir);
	printf("catalogue  %u chunks published, %u slots, %.1f MiB\n", d->nchunks, h->max_chunks,
	       (double)d->cat.size / (1024.0 * 1024.0));
	if (d->idx.ok)
		printf("index      copy %u active, %llu flips: %u datasets, %u ranges, %u ids\n",
		       d->idx.active, (unsigned long long)d->flips, d->idx.nds, d->idx.nranges,
		       d->idx.nids);
	else
		printf("index      %llu flips; the active copy stayed inconsistent\n",
		       (unsigned long long)d->flips);
	if (d->have_req)
		printf("clients    %u attached of %u slots, %u pins each\n", d->nclients,
		       d->req.geom.max_clients, (unsigned)CHUNKD_PINS_PER_CLIENT);
	else
		printf("clients    unknown (request segment not readable)\n");
}

static void print_counts(const struct dump *d)
{
	const struct counts *c = &d->counts;
	if (d->o->json) {
		printf(",\"counts\":{");
		for (int k = 0; k < 5; k++)
			printf("\"%s\":%u,", slot_state_names[count_order[k]],
			       c->by_state[count_order[k]]);
		printf("\"unknown\":%u,\"inconsistent\":%u,\"datasets\":", c->other,
		       c->inconsistent);
		if (d->idx.ok)
			printf("%u}", d->idx.nds);
		else
			printf("null}");
		return;
	}
	printf("slots      ");
	for (int k = 0; k < 5; k++)
		printf("%s %u, ", slot_state_names[count_order[k]], c->by_state[count_order[k]]);
	printf("inconsistent %u", c->inconsistent);
	if (c->other)
		printf(", unknown %u", c->other);
	printf("\n");
	if (d->idx.ok)
		printf("datasets   %u\n", d->idx.nds);
	else
		printf("datasets   unknown\n");
}

/* Walk every slot that may hold data. With emit = 0 only count them; with emit = 1 print the
 * chunk table. Returns the number of rows. */
static uint32_t walk_slots(struct dump *d, int emit)
{
	const struct chunkd_cat_map *m = &d->cat;
	int json = d->o->json;
	uint32_t rows = 0;
	struct chunkd_slot_copy c;
	if (emit && json)
		printf(",\"chunks\":[");
	if (emit && !json)
		printf("\n%7s %-11s %5s %-12s %-64s %12s %12s %6s %12s %12s %5s\n", "SLOT",
		       "STATE", "GEN", "DATASET", "ID", "FIRST", "END", "NFILES", "DONE", "BYTES",
		       "PINS");
	for (uint32_t i = 0; i < m->geom.max_chunks; i++) {
		uint64_t off = m->geom.slots_off + (uint64_t)i * sizeof(struct chunkd_slot);
		if (!datamap_has(&d->cat_data, off, sizeof(struct chunkd_slot)))
			continue; /* never written: FREE at generation 0 */
		int r = chunkd__slot_read(m, i, &c);
		uint32_t state = CHUNKD_GS_STATE(c.gen_state);
		if (r == 0 && state == CHUNKD_SLOT_FREE)
			continue;
		if (!emit) {
			if (r < 0)
				d->counts.inconsistent++;
			else if (state < 6)
				d->counts.by_state[state]++;
			else
				d->counts.other++;
			continue;
		}
		if (json)
			printf("%s{\"slot\":%u", rows ? "," : "", i);
		rows++;
		if (r < 0) {
			if (json)
				printf(",\"state\":\"inconsistent\"}");
			else
				printf(
				    "%7u inconsistent (a write never finished: its daemon may have "
				    "died mid-write)\n",
				    i);
			continue;
		}
		uint32_t gen = CHUNKD_GS_GEN(c.gen_state);
		char id[2 * CHUNKD_ID_SIZE + 1], ds[2 * CHUNKD_ID_SIZE + 1], pins[16];
		hex_id(c.id, id);
		hex_id(c.dataset, ds);
		if (d->have_req)
			snprintf(pins, sizeof(pins), "%u", pins_on(d, i, gen));
		else
			strcpy(pins, json ? "null" : "?");
		if (json) {
			char pub[32];
			iso_time(c.published_ns, pub);
			printf(",\"state\":\"%s\",\"state_code\":%u,\"gen\":%u",
			       slot_state_name(state), state, gen);
			printf(",\"dataset\":\"%s\",\"id\":\"%s\",\"first\":%llu,\"end\":%llu", ds,
			       id, (unsigned long long)c.first_block,
			       (unsigned long long)c.end_block);
			printf(",\"nfiles\":%u,\"bytes\":%llu,\"bytes_done\":%llu,\"pins\":%s",
			       c.nfiles, (unsigned long long)c.bytes_total,
			       (unsigned long long)c.bytes_done, pins);
			printf(",\"attempts\":%u,\"last_error\":%d,\"published\":\"%s\"",
			       c.attempts, c.last_error, pub);
			printf(",\"published_ns\":%llu,\"path\":",
			       (unsigned long long)c.published_ns);
			json_str(c.path);
			printf(",\"http_status\":%d,\"message\":", c.http_status);
			json_str(c.message);
			printf("}");
		} else {
			ds[12] = '\0'; /* like a short git hash: the table stays readable */
			printf("%7u %-11s %5u %-12s %-64s %12llu %12llu %6u %12llu %12llu %5s\n", i,
			       slot_state_name(state), gen, ds, id,
			       (unsigned long long)c.first_block, (unsigned long long)c.end_block,
			       c.nfiles, (unsigned long long)c.bytes_done,
			       (unsigned long long)c.bytes_total, pins);
			/* The last failure, if any, on its own line: it does not fit a column. */
			if (c.message[0] || c.http_status || c.last_error)
				printf("%7s last failure: %s (error %d, HTTP %d, %u attempts)\n",
				       "", c.message[0] ? c.message : "-", c.last_error,
				       c.http_status, c.attempts);
		}
	}
	if (emit && json)
		printf("]");
	return rows;
}

static void print_clients(const struct dump *d)
{
	int json = d->o->json;
	if (!d->have_req) {
		if (json)
			printf(",\"clients\":null");
		return;
	}
	if (json)
		printf(",\"clients\":[");
	else
		printf("\n%6s %8s %-5s %-24s %6s %12s %8s\n", "CLIENT", "PID", "ALIVE", "ATTACHED",
		       "PINS", "RING", "REJECTED");
	for (uint32_t k = 0; k < d->nclients; k++) {
		const struct client_row *r = &d->clients[k];
		int reclaim = r->owner == CHUNKD_OWNER_RECLAIM;
		int closed = !reclaim && (r->owner & CHUNKD_OWNER_CLOSED);
		char at[32];
		iso_time(r->attach_ns, at);
		if (json) {
			printf("%s{\"slot\":%u,\"pid\":%d,\"alive\":%s,\"closed\":%s,"
			       "\"reclaiming\":%s,\"owner\":\"0x%016llx\",\"attach_time\":\"%s\","
			       "\"attach_ns\":%llu,\"pins\":%u,\"ring_used\":%llu,"
			       "\"ring_size\":%u,\"rejected\":%u,\"completions\":%u}",
			       k ? "," : "", r->index,
			       reclaim ? 0 : (int)CHUNKD_OWNER_PID(r->owner),
			       r->alive ? "true" : "false", closed ? "true" : "false",
			       reclaim ? "true" : "false", (unsigned long long)r->owner, at,
			       (unsigned long long)r->attach_ns, r->held,
			       (unsigned long long)r->ring_used, CHUNKD_SQ_BYTES, r->rejected,
			       r->cq_seq);
		} else if (reclaim) {
			printf("%6u %8s %-5s %-24s %6u (the daemon is reclaiming this slot)\n",
			       r->index, "-", "no", at, r->held);
		} else {
			char ring[32];
			snprintf(ring, sizeof(ring), "%llu/%uK", (unsigned long long)r->ring_used,
				 CHUNKD_SQ_BYTES / 1024);
			printf("%6u %8d %-5s %-24s %6u %12s %8u%s\n", r->index,
			       (int)CHUNKD_OWNER_PID(r->owner), r->alive ? "yes" : "no", at,
			       r->held, ring, r->rejected,
			       closed ? " (closed; the daemon frees the slot)" : "");
		}
	}
	if (json)
		printf("]");
	else if (d->nclients == 0)
		printf("%6s (no clients attached)\n", "-");
}

/* ---- main ------------------------------------------------------------------------------------ */

static int parse_args(int argc, char **argv, struct options *o)
{
	static const struct option opts[] = {
	    {"name", required_argument, NULL, 'n'}, {"json", no_argument, NULL, 'j'},
	    {"chunks", no_argument, NULL, 'c'},     {"clients", no_argument, NULL, 'C'},
	    {"help", no_argument, NULL, 'h'},       {NULL, 0, NULL, 0},
	};
	memset(o, 0, sizeof(*o));
	int c;
	while ((c = getopt_long(argc, argv, "n:jcCh", opts, NULL)) != -1) {
		switch (c) {
		case 'n':
			o->name = optarg;
			break;
		case 'j':
			o->json = 1;
			break;
		case 'c':
			o->chunks = 1;
			break;
		case 'C':
			o->clients = 1;
			break;
		case 'h':
			fputs(usage, stdout);
			exit(0);
		default:
			fputs("Try '" PROG " --help'.\n", stderr);
			return -1;
		}
	}
	if (optind < argc) {
		fprintf(stderr, PROG ": unexpected argument '%s'\nTry '" PROG " --help'.\n",
			argv[optind]);
		return -1;
	}
	if (!o->chunks && !o->clients)
		o->chunks = o->clients = 1;
	return 0;
}

int main(int argc, char **argv)
{
	struct options o;
	if (parse_args(argc, argv, &o) < 0)
		return 2;
	struct dump d;
	memset(&d, 0, sizeof(d));
	d.o = &o;
	if (chunkd__name_resolve(o.name, d.name) < 0) {
		fprintf(stderr, PROG ": bad instance name '%s': use 1-64 bytes of [A-Za-z0-9._-]\n",
			o.name ? o.name : getenv("CHUNKD_NAME"));
		return 2;
	}

	char err[256] = "";
	int r = chunkd__cat_attach(d.name, 0, &d.cat, err, sizeof(err));
	if (r == -ENOENT) {
		fprintf(stderr, PROG ": no instance '%s' (is chunkd running?)\n", d.name);
		return 1;
	}
	if (r < 0) {
		fprintf(stderr, PROG ": instance '%s': %s%s\n", d.name, err,
			r == -EAGAIN ? " (try again)" : "");
		return 1;
	}
	int status = 0;
	/* A missing or unreadable request segment (a daemon that died while creating it) still
	 * leaves a catalogue worth showing: print it, without clients and pins, and exit 1. */
	r = chunkd__req_attach(d.name, 0, &d.req, err, sizeof(err));
	if (r < 0) {
		fprintf(stderr, PROG ": instance '%s': %s; clients and pins are not shown\n",
			d.name, err);
		status = 1;
	} else {
		d.have_req = 1;
		datamap_init(&d.req_data, d.name, "req", d.req.hdr, d.req.size);
		if (read_clients(&d) < 0) {
			fprintf(stderr, PROG ": out of memory\n");
			status = 1;
			goto out;
		}
	}
	datamap_init(&d.cat_data, d.name, "cat", d.cat.hdr, d.cat.size);
	read_header(&d);
	read_index(&d);
	walk_slots(&d, 0);

	print_header(&d);
	print_counts(&d);
	if (o.chunks)
		walk_slots(&d, 1);
	if (o.clients)
		print_clients(&d);
	if (o.json)
		printf("}\n");
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fprintf(stderr, PROG ": writing the output: %s\n", strerror(errno));
		status = 1;
	}
out:
	free(d.clients);
	free(d.pins);
	free(d.cat_data.bits);
	free(d.req_data.bits);
	if (d.have_req)
		chunkd__req_detach(&d.req);
	chunkd__cat_detach(&d.cat);
	return status;
}
