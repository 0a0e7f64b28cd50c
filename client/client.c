/*
 * client.c — libchunkd: attach to an instance, find and pin chunks, list them.
 *
 * Nothing here takes a lock: the catalogue is read through seqlocks, pins are single-word CAS and
 * stores into this client's own table, and the client slot is claimed with one CAS. A process
 * killed at any instruction leaves either a free slot or a fully claimed one with whole pin words,
 * which the daemon reclaims when the process's pidfd reports its death.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "chunkd.h"
#include "client_internal.h"
#include "shm/atomics.h"
#include "shm/shm.h"

/* Where each thread starts looking for a free pin entry: spreads threads over the table. */
static __thread uint32_t pin_hint __attribute__((tls_model("initial-exec")));

/* Above every ticket a closed handle of this process issued (atomic; see chunkd__ticket_base). */
static uint64_t ticket_floor;

uint64_t chunkd__ticket_base(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	uint64_t t = (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec + 1;
	uint64_t floor = chunkd__load_relaxed(&ticket_floor);
	return t > floor ? t : floor;
}

void chunkd__ticket_floor_raise(uint64_t next_ticket)
{
	uint64_t cur = chunkd__load_relaxed(&ticket_floor);
	while (cur < next_ticket &&
	       !__atomic_compare_exchange_n(&ticket_floor, &cur, next_ticket, 1, __ATOMIC_RELAXED,
					    __ATOMIC_RELAXED))
		;
}

static uint64_t now_realtime_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_REALTIME, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

int chunkd_open(const char *name, chunkd_client **out)
{
	char err[256] = "";
	int r;

	chunkd__set_last_error("");
	if (!out)
		return -EINVAL;
	*out = NULL;
	chunkd_client *c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	r = chunkd__name_resolve(name, c->name);
	if (r < 0) {
		chunkd__set_last_error("bad instance name (1-64 bytes of [A-Za-z0-9._-])");
		goto err_free;
	}
	r = chunkd__cat_attach(c->name, 0, &c->cat, err, sizeof(err));
	if (r < 0)
		goto err_msg;
	r = chunkd__req_attach(c->name, 1, &c->req, err, sizeof(err));
	if (r < 0)
		goto err_cat;

	c->owner = chunkd__owner_of(0);
	if (c->owner == 0) {
		r = -EIO;
		snprintf(err, sizeof(err), "cannot read this process's start time from /proc");
		goto err_req;
	}
	r = -EUSERS;
	snprintf(err, sizeof(err), "all %u client slots are in use", c->req.geom.max_clients);
	for (uint32_t i = 0; i < c->req.geom.max_clients; i++) {
		struct chunkd_req_client *cl = chunkd__req_client(&c->req, i);
		uint64_t expect = 0;
		if (chunkd__load_relaxed(&cl->ctl.owner) != 0)
			continue;
		/* One CAS records pid and start time together. seq_cst: precedes our first pin
		 * CAS in the total order (see chunkd__pins_count). */
		if (chunkd__cas_seq_cst(&cl->ctl.owner, &expect, c->owner)) {
			c->me = cl;
			c->my_index = i;
			r = 0;
			break;
		}
	}
	if (r < 0)
		goto err_req;
	/* A slot is freed only with an empty pin table; clearing again costs nothing. */
	for (uint32_t i = 0; i < CHUNKD_PINS_PER_CLIENT; i++)
		if (chunkd__load_relaxed(&c->me->pins[i]) != 0)
			chunkd__pin_clear(c->me, i);
	chunkd__store_relaxed(&c->me->ctl.attach_ns, now_realtime_ns());
	/* The daemon resets a slot's ring and tickets before freeing it, so we start at its tail,
	 * with tickets above every one this process issued before (chunkd__ticket_base). */
	c->first_ticket = c->next_ticket = chunkd__ticket_base();
	pthread_mutex_init(&c->sq_lock, NULL);
	/* Tell the daemon about the new client so that it watches the process's pidfd. */
	chunkd__doorbell_ring(c->req.hdr);
	*out = c;
	return 0;

err_req:
	chunkd__req_detach(&c->req);
err_cat:
	chunkd__cat_detach(&c->cat);
err_msg:
	chunkd__set_last_error(err);
err_free:
	free(c);
	return r;
}

void chunkd_close(chunkd_client *c)
{
	if (!c)
		return;
	for (uint32_t i = 0; i < CHUNKD_PINS_PER_CLIENT; i++)
		if (chunkd__load_relaxed(&c->me->pins[i]) != 0)
			chunkd__pin_clear(c->me, i);
	/* seq_cst: the cleared pins precede the closed mark for any scanner. Only the daemon frees
	 * the slot, after it has taken every request still in our ring. */
	chunkd__ticket_floor_raise(chunkd__load_relaxed(&c->next_ticket));
	chunkd__store_seq_cst(&c->me->ctl.owner, c->owner | CHUNKD_OWNER_CLOSED);
	/* Wake the daemon: it drains and frees the slot, and rescans pins of condemned chunks. */
	chunkd__doorbell_ring(c->req.hdr);
	chunkd__req_detach(&c->req);
	chunkd__cat_detach(&c->cat);
	pthread_mutex_destroy(&c->sq_lock);
	free(c);
}

int chunkd_find(chunkd_client *c, const chunkd_id *dataset, uint64_t block, chunkd_ref *ref)
{
	if (!c || !dataset || !ref)
		return -EINVAL;
	uint64_t ds[4];
	memcpy(ds, dataset->bytes, sizeof(ds));
	struct chunkd_idx_range e;
	uint64_t flips;
	int pi = chunkd__pin_find(&c->cat, c->me, c->req.hdr, &pin_hint, ds, block, &e, &flips);
	if (pi < 0)
		return pi;
	memcpy(ref->id.bytes, e.id, CHUNKD_ID_SIZE);
	ref->dataset = *dataset;
	ref->first_block = e.first;
	ref->end_block = e.end;
	/* Immutable while pinned: the daemon never rewrites a pinned incarnation. */
	ref->path = c->cat.slots[e.slot].path;
	ref->_pin = (uint32_t)pi;
	ref->_slot = e.slot;
	ref->_word = CHUNKD_PIN_WORD(e.slot, e.gen);
	ref->_flips = flips;
	return 0;
}

void chunkd_release(chunkd_client *c, chunkd_ref *ref)
{
	if (!c || !ref || ref->_pin >= CHUNKD_PINS_PER_CLIENT || ref->_word == 0)
		return;
	chunkd__pin_release(&c->cat, c->me, c->req.hdr, ref->_pin, ref->_word, ref->_flips);
	/* The next pin of this thread takes the entry just freed: its cache line is ours. */
	pin_hint = ref->_pin;
	ref->_word = 0;
	ref->path = NULL;
}

int chunkd_list(chunkd_client *c, chunkd_id *ids, size_t cap, size_t *count)
{
	if (!c || !count || (cap && !ids))
		return -EINVAL;
	return chunkd__idx_list(&c->cat, ids, cap, count);
}

int chunkd_info(chunkd_client *c, chunkd_instance_info *info)
{
	if (!c || !info)
		return -EINVAL;
	const struct chunkd_cat_hdr *h = c->cat.hdr;
	memset(info, 0, sizeof(*info));
	uint64_t owner = chunkd__load_relaxed(&h->daemon);
	info->daemon_pid = CHUNKD_OWNER_PID(owner);
	info->daemon_alive = chunkd__owner_alive(owner);
	info->state = chunkd__load_relaxed(&h->state);
	info->nchunks = chunkd__load_relaxed(&h->nchunks);
	info->max_chunks = c->cat.geom.max_chunks;
	info->max_clients = c->req.geom.max_clients;
	info->epoch = chunkd__load_relaxed(&h->epoch);
	info->start_time_ns = chunkd__load_relaxed(&h->start_time_ns);
	info->heartbeat_ns = chunkd__load_relaxed(&h->heartbeat_ns);
	/* data_dir is written once before the segment's version; the attach acquired that. */
	memcpy(info->data_dir, h->data_dir, sizeof(info->data_dir));
	info->data_dir[sizeof(info->data_dir) - 1] = '\0';
	return 0;
}

int chunkd_version(void)
{
	return CHUNKD_VERSION_NUMBER;
}

int chunkd_check_version(int major, int minor)
{
	if (major != CHUNKD_VERSION_MAJOR)
		return -EPROTO;
	/* Before 1.0 a minor release may change the ABI (chunkd.h). */
	if (CHUNKD_VERSION_MAJOR == 0)
		return minor == CHUNKD_VERSION_MINOR ? 0 : -EPROTO;
	return minor <= CHUNKD_VERSION_MINOR ? 0 : -EPROTO;
}
