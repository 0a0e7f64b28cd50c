/*
 * requests.c — libchunkd's request half: chunkd_download, chunkd_delete, chunkd_wait and
 * chunkd_status. The ring and ticket protocol is in docs/shm-layout.md, "Requests".
 *
 * Enqueues never block: a full ring or ticket table is -EAGAIN. The only lock is the handle's
 * process-private mutex serialising producers of this one ring; the daemon never sees it.
 */
#include <errno.h>
#include <limits.h>
#include <linux/futex.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "chunkd.h"
#include "client_internal.h"
#include "shm/atomics.h"
#include "shm/records.h"

/* Is ticket t's table entry free for reuse? Its previous occupant t - N must be done; the
 * handle's first N tickets find the table as the daemon reset it. */
static int ticket_entry_free(const chunkd_client *c, uint64_t t)
{
	if (t - c->first_ticket < CHUNKD_TICKETS)
		return 1;
	/* Pairs with the daemon's release store of done. */
	return chunkd__load_acquire(&c->me->tickets[t % CHUNKD_TICKETS].done) ==
	       t - CHUNKD_TICKETS;
}

enum { ENC_DOWNLOAD, ENC_DELETE };

static int enqueue(chunkd_client *c, int kind, const void *arg, uint64_t *ticket)
{
	uint32_t len = kind == ENC_DOWNLOAD ? (uint32_t)chunkd__rec_download_len(arg)
					    : (uint32_t)sizeof(struct chunkd_rec_delete);
	int r = 0;
	pthread_mutex_lock(&c->sq_lock);
	uint64_t t = chunkd__load_relaxed(&c->next_ticket);
	uint64_t new_tail;
	uint8_t *dst;
	if (!ticket_entry_free(c, t) || !(dst = chunkd__sq_reserve(c->me, len, &new_tail))) {
		r = -EAGAIN;
		goto out;
	}
	if (kind == ENC_DOWNLOAD)
		chunkd__rec_encode_download(arg, t, dst, len);
	else
		chunkd__rec_encode_delete(arg, t, dst, len);
	chunkd__sq_commit(c->me, new_tail);
	/* Relaxed is enough: chunkd_wait only uses it to reject tickets never issued. */
	chunkd__store_relaxed(&c->next_ticket, t + 1);
	if (ticket)
		*ticket = t;
out:
	pthread_mutex_unlock(&c->sq_lock);
	/* After the release store of sq_tail in chunkd__sq_commit: rings only if the daemon's loop
	 * may be blocked. */
	if (r == 0)
		chunkd__doorbell_ring_if_idle(c->req.hdr);
	return r;
}

int chunkd_download(chunkd_client *c, const chunkd_chunk *chunk, uint64_t *ticket)
{
	char why[160];
	if (!c)
		return -EINVAL;
	int r = chunkd__check_chunk(chunk, why, sizeof(why));
	if (r < 0) {
		chunkd__set_last_error(why);
		return r;
	}
	return enqueue(c, ENC_DOWNLOAD, chunk, ticket);
}

int chunkd_delete(chunkd_client *c, const chunkd_id *id, uint64_t *ticket)
{
	if (!c || !id)
		return -EINVAL;
	return enqueue(c, ENC_DELETE, id, ticket);
}

static uint64_t mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

int chunkd_wait(chunkd_client *c, uint64_t ticket, int timeout_ms)
{
	if (!c || ticket < c->first_ticket || ticket >= chunkd__load_relaxed(&c->next_ticket))
		return -EINVAL;
	struct chunkd_ticket_slot *e = &c->me->tickets[ticket % CHUNKD_TICKETS];
	uint32_t *seq = &c->me->d.cq_seq;
	uint64_t deadline = timeout_ms < 0 ? UINT64_MAX : mono_ms() + (uint64_t)timeout_ms;
	for (;;) {
		/* Pairs with the daemon's release increment after posting results. */
		uint32_t s = chunkd__load_acquire(seq);
		/* Pairs with the daemon's release store of done (result is written before it). */
		uint64_t done = chunkd__load_acquire(&e->done);
		if (done == ticket)
			return chunkd__load_relaxed(&e->result);
		if (done > ticket)
			return -ESTALE;
		uint64_t now = mono_ms();
		if (now >= deadline)
			return -ETIMEDOUT;
		/* Sleep until the daemon posts something, at most 1 s, then recheck anyway. */
		uint64_t left = deadline - now < 1000 ? deadline - now : 1000;
		struct timespec ts = {.tv_sec = (time_t)(left / 1000),
				      .tv_nsec = (long)(left % 1000) * 1000000};
		syscall(SYS_futex, seq, FUTEX_WAIT, s, &ts, NULL, 0);
	}
}

static uint32_t public_state(uint32_t slot_state)
{
	switch (slot_state) {
	case CHUNKD_SLOT_QUEUED:
		return CHUNKD_CHUNK_QUEUED;
	case CHUNKD_SLOT_DOWNLOADING:
		return CHUNKD_CHUNK_DOWNLOADING;
	case CHUNKD_SLOT_FAILED:
		return CHUNKD_CHUNK_FAILED;
	case CHUNKD_SLOT_PUBLISHED:
		return CHUNKD_CHUNK_PRESENT;
	case CHUNKD_SLOT_CONDEMNED:
		return CHUNKD_CHUNK_DELETING;
	default:
		return CHUNKD_CHUNK_ABSENT;
	}
}

int chunkd_status(chunkd_client *c, const chunkd_id *id, chunkd_chunk_status *st)
{
	if (!c || !id || !st)
		return -EINVAL;
	memset(st, 0, sizeof(*st));
	uint64_t key[4];
	memcpy(key, id->bytes, sizeof(key));
	struct chunkd_idx_id e;
	int r = chunkd__idx_find_id(&c->cat, key, &e);
	if (r == -ENOENT)
		return 0; /* ABSENT */
	if (r < 0)
		return r;
	struct chunkd_slot_copy s;
	r = chunkd__slot_read(&c->cat, e.slot, &s);
	if (r < 0)
		return r;
	/* The index may be a moment older than the slot: the slot must still be this incarnation
	 * of this id, else the chunk went away in between. */
	if (CHUNKD_GS_GEN(s.gen_state) != e.gen || memcmp(s.id, key, sizeof(key)))
		return 0;
	st->state = public_state(CHUNKD_GS_STATE(s.gen_state));
	st->attempts = s.attempts;
	st->last_error = s.last_error;
	st->http_status = s.http_status;
	st->nfiles = s.nfiles;
	st->bytes_done = s.bytes_done;
	st->bytes_total = s.bytes_total;
	st->first_block = s.first_block;
	st->end_block = s.end_block;
	memcpy(st->dataset.bytes, s.dataset, sizeof(st->dataset.bytes));
	memcpy(st->message, s.message, sizeof(st->message));
	st->message[sizeof(st->message) - 1] = '\0';
	st->pins = chunkd__pins_count(&c->req, e.slot, e.gen);
	return 0;
}
