/*
 * loop.c — see loop.h.
 */
#include "loop.h"

#include <errno.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "engine.h"
#include "log.h"
#include "shm/atomics.h"

/* How long the waker thread sleeps in FUTEX_WAIT before rechecking on its own. */
#define WAKER_TIMEOUT_S 5

uint64_t chunkd__mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* A pidfd watch. Heap-allocated and freed by its own completion: after a cancel the
 * completion still arrives and must find valid memory. */
struct watch {
	struct op op;
	uint32_t client;
	uint64_t owner;
	int pidfd;
	int cancelled;
	struct watch *next_cancelled; /* freed by its completion, or at exit if none comes */
};

struct fdpoll {
	struct op op;
	int fd;
};

struct daemon_loop {
	struct loop l;
	struct fdpoll sig, bell;
	uint32_t waker_stop; /* atomic */
	uint32_t bell_seen;  /* the doorbell value the first sync_clients() accounts for */
	struct watch **w;    /* per client slot, NULL = not watched */
	struct watch *cancelled; /* watches whose cancellation has not completed yet */
	uint32_t nclients;   /* private copy of the geometry: never re-read from shared memory */
};

struct io_uring_sqe *chunkd__loop_sqe(struct loop *l, struct op *op)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&l->ring);
	while (!sqe) {
		io_uring_submit(&l->ring);
		sqe = io_uring_get_sqe(&l->ring);
	}
	io_uring_sqe_set_data(sqe, op);
	return sqe;
}

static void arm_poll(struct loop *l, struct op *op, int fd)
{
	io_uring_prep_poll_add(chunkd__loop_sqe(l, op), fd, POLLIN);
}

/* The waker thread: FUTEX_WAIT on the doorbell (with a timeout and a recheck), and turn every
 * change of it into an eventfd count that the ring sees. */
static void *waker_main(void *arg)
{
	struct daemon_loop *d = arg;
	uint32_t *bell = &d->l.in->req.hdr->doorbell;
	/* Read before the loop's first scan of the clients (see chunkd__loop_run): every ring
	 * after that scan started changes the word from this value and is seen. */
	uint32_t seen = d->bell_seen;
	while (!chunkd__load_acquire(&d->waker_stop)) {
		struct timespec ts = {.tv_sec = WAKER_TIMEOUT_S};
		long w = syscall(SYS_futex, bell, FUTEX_WAIT, seen, &ts, NULL, 0);
		int timed_out = w < 0 && errno == ETIMEDOUT;
		/* Pairs with the release increment in chunkd__doorbell_ring. */
		uint32_t v = chunkd__load_acquire(bell);
		/* No ring for a whole timeout and need_wake 0: the loop is busy, or a client took
		 * the 1 and stopped before its ring (docs/shm-layout.md, "Waking the daemon").
		 * Either way a spare look is harmless, and it bounds what such a client can delay.
		 * An idle loop leaves 1 there, so an idle daemon never gets here. Relaxed: only a
		 * hint. */
		if (v != seen ||
		    (timed_out && chunkd__load_relaxed(&d->l.in->req.hdr->need_wake) == 0)) {
			seen = v;
			uint64_t one = 1;
			ssize_t n = write(d->bell.fd, &one, sizeof(one));
			(void)n;
		}
	}
	return NULL;
}

/* A client slot is dead or closed: let the engine take its remaining requests, then drop its
 * pins and free the slot. The CAS to RECLAIM makes sure the slot still holds the word we
 * judged (a live client cannot be evicted by a stale view). */
static void reap(struct daemon_loop *d, uint32_t i, uint64_t owner)
{
	struct chunkd_req_client *cl = chunkd__req_client(&d->l.in->req, i);
	uint64_t expect = owner;
	/* Before the CAS (which orders it): a RECLAIM word always comes with the owner it
	 * replaced, even for a daemon that finds it after this one was killed. */
	if (owner != CHUNKD_OWNER_RECLAIM)
		chunkd__store_relaxed(&cl->d.reclaim_owner, owner & ~CHUNKD_OWNER_CLOSED);
	if (!chunkd__cas_seq_cst(&cl->ctl.owner, &expect, CHUNKD_OWNER_RECLAIM))
		return;
	uint32_t held = chunkd__pins_held(cl);
	for (uint32_t p = 0; p < CHUNKD_PINS_PER_CLIENT; p++)
		chunkd__store_seq_cst(&cl->pins[p], 0);
	chunkd__store_relaxed(&cl->ctl.attach_ns, 0);
	/* The engine takes what is left in the ring and frees the slot (owner word 0) once those
	 * requests are durable in the journal. */
	chunkd__engine_client_gone(d->l.eng, i);
	if (owner & CHUNKD_OWNER_CLOSED)
		log_debug("client pid %d (slot %u) closed", (int)CHUNKD_OWNER_PID(owner), i);
	else if (owner != CHUNKD_OWNER_RECLAIM)
		log_info("client pid %d (slot %u) is gone; dropped its %u pin%s",
			 (int)CHUNKD_OWNER_PID(owner), i, held, held == 1 ? "" : "s");
	if (held)
		chunkd__engine_pins_changed(d->l.eng);
}

static void on_pidfd(struct loop *l, struct op *op, int res, uint32_t flags)
{
	struct daemon_loop *d = (struct daemon_loop *)l;
	struct watch *w = (struct watch *)op;
	if (w->cancelled) {
		struct watch **pp = &d->cancelled;
		while (*pp && *pp != w)
			pp = &(*pp)->next_cancelled;
		if (*pp)
			*pp = w->next_cancelled;
	}
	close(w->pidfd);
	if (!w->cancelled) {
		d->w[w->client] = NULL;
		if (res < 0)
			log_warn("pidfd poll for client slot %u failed: %s", w->client, strerror(-res));
		reap(d, w->client, w->owner);
	}
	free(w);
}

static void unwatch(struct daemon_loop *d, uint32_t i)
{
	struct watch *w = d->w[i];
	if (!w)
		return;
	w->cancelled = 1;
	w->next_cancelled = d->cancelled;
	d->cancelled = w;
	/* The poll's own completion (with -ECANCELED) frees w. */
	struct io_uring_sqe *sqe = chunkd__loop_sqe(&d->l, NULL);
	io_uring_prep_poll_remove(sqe, (uint64_t)(uintptr_t)w);
	d->w[i] = NULL;
}

/* Bring the set of watched pidfds in line with the client table. Owner words are untrusted:
 * a word is watched only if a pidfd for its pid opens and the start time matches, which also
 * proves the pidfd refers to the process that wrote the word. */
static void sync_clients(struct daemon_loop *d)
{
	for (uint32_t i = 0; i < d->nclients; i++) {
		struct chunkd_req_client *cl = chunkd__req_client(&d->l.in->req, i);
		/* Pairs with the client's seq_cst CAS/store of its owner word. */
		uint64_t owner = chunkd__load_acquire(&cl->ctl.owner);
		uint64_t watched = d->w[i] ? d->w[i]->owner : 0;
		if (owner == watched)
			continue;
		unwatch(d, i);
		if (owner == 0)
			continue;
		if (owner == CHUNKD_OWNER_RECLAIM) {
			/* A previous daemon died while reclaiming this slot: finish the job. */
			reap(d, i, owner);
			continue;
		}
		pid_t pid = CHUNKD_OWNER_PID(owner);
		int fd = pid > 0 && !(owner & CHUNKD_OWNER_CLOSED)
				 ? (int)syscall(SYS_pidfd_open, pid, 0)
				 : -1;
		if (fd < 0 || !chunkd__owner_alive(owner)) {
			if (fd >= 0)
				close(fd);
			reap(d, i, owner);
			continue;
		}
		struct watch *w = calloc(1, sizeof(*w));
		if (!w) {
			close(fd);
			continue; /* retried at the next doorbell */
		}
		w->op.fn = on_pidfd;
		w->client = i;
		w->owner = owner;
		w->pidfd = fd;
		d->w[i] = w;
		arm_poll(&d->l, &w->op, fd);
		log_debug("client pid %d attached (slot %u)", (int)pid, i);
	}
}

static void on_signal(struct loop *l, struct op *op, int res, uint32_t flags)
{
	struct daemon_loop *d = (struct daemon_loop *)l;
	struct signalfd_siginfo si;
	while (read(d->sig.fd, &si, sizeof(si)) == sizeof(si)) {
		if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
			log_info("received %s, stopping", si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
			l->stopping = 1;
		}
	}
	arm_poll(l, &d->sig.op, d->sig.fd);
}

static void on_doorbell(struct loop *l, struct op *op, int res, uint32_t flags)
{
	struct daemon_loop *d = (struct daemon_loop *)l;
	uint64_t n;
	ssize_t r = read(d->bell.fd, &n, sizeof(n));
	(void)r;
	sync_clients(d);
	chunkd__engine_intake(l->eng);
	/* A ring may also mean a pin on a condemned chunk was released. */
	chunkd__engine_pins_changed(l->eng);
	arm_poll(l, &d->bell.op, d->bell.fd);
}

/* The loop may block next: from here on an enqueue must ring the doorbell. Store need_wake = 1,
 * then look at every ring; records that arrived before the store are taken now, and the wait
 * becomes a zero timeout (the next iteration acts on them). docs/shm-layout.md, "Waking the
 * daemon": the store and the tail loads are the loop's half of a Dekker pair with
 * chunkd__doorbell_ring_if_idle, so a record is either seen here or its client rings. */
static void take_before_block(struct daemon_loop *d, struct __kernel_timespec *ts,
			      struct __kernel_timespec **tsp)
{
	uint32_t *need_wake = &d->l.in->req.hdr->need_wake;
	/* Pairs with the client's seq_cst fence and load of need_wake after its sq_tail store. */
	chunkd__store_seq_cst(need_wake, 1);
	if (!chunkd__engine_rings_pending(d->l.eng))
		return;
	/* Awake after all: relaxed, the loop scans again before it next may block. */
	chunkd__store_relaxed(need_wake, 0);
	chunkd__engine_intake(d->l.eng);
	ts->tv_sec = 0;
	ts->tv_nsec = 0;
	*tsp = ts;
}

int chunkd__loop_run(struct instance *in, struct catalog *cat, struct engine *eng,
		     void (*on_ready)(void *arg), void *ready_arg)
{
	struct daemon_loop *d = calloc(1, sizeof(*d));
	if (!d) {
		chunkd__engine_destroy(eng);
		return -ENOMEM;
	}
	struct loop *l = &d->l;
	l->in = in;
	l->cat = cat;
	l->eng = eng; /* ours from here on: destroyed on every way out */
	d->nclients = in->req.geom.max_clients;
	d->sig.fd = d->bell.fd = -1;
	int r = -ENOMEM;
	d->w = calloc(d->nclients, sizeof(*d->w));
	if (!d->w)
		goto err_free;

	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	d->sig.fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	d->bell.fd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (d->sig.fd < 0 || d->bell.fd < 0) {
		r = -errno;
		log_error("signalfd/eventfd: %s", strerror(-r));
		goto err_fds;
	}
	d->sig.op.fn = on_signal;
	d->bell.op.fn = on_doorbell;
	r = io_uring_queue_init(1024, &l->ring, 0);
	if (r < 0) {
		log_error("io_uring_queue_init: %s", strerror(-r));
		goto err_fds;
	}
	r = chunkd__engine_start(eng, l);
	if (r < 0) {
		log_error("cannot start the engine: %s", strerror(-r));
		goto err_engine;
	}
	/* Snapshot the doorbell before the first sync_clients(): a client that attaches or closes
	 * after this load rings it, and the waker, starting from this value, reports that. Reading
	 * it in the waker instead would lose rings that land before the thread runs. Pairs with the
	 * release increment in chunkd__doorbell_ring. */
	d->bell_seen = chunkd__load_acquire(&in->req.hdr->doorbell);
	pthread_t waker;
	r = -pthread_create(&waker, NULL, waker_main, d);
	if (r < 0) {
		log_error("cannot start the waker thread: %s", strerror(-r));
		goto err_engine;
	}

	arm_poll(l, &d->sig.op, d->sig.fd);
	arm_poll(l, &d->bell.op, d->bell.fd);
	/* Everything already in the rings, whether or not its client rang, and whatever need_wake
	 * a dead daemon left: the first take_before_block() stores 1 and looks again. */
	sync_clients(d);
	chunkd__engine_intake(l->eng);
	chunkd__engine_flush(l->eng);
	if (on_ready)
		on_ready(ready_arg);
	chunkd__engine_after_ready(l->eng);
	uint32_t *need_wake = &in->req.hdr->need_wake;
	int quiesced = 0;
	while (!quiesced) {
		uint64_t deadline = chunkd__engine_run(l->eng);
		chunkd__engine_flush(l->eng);
		if (chunkd__engine_fatal(l->eng) && !l->stopping) {
			log_error("stopping: requests can no longer be made durable");
			l->stopping = 2;
		}
		if (l->stopping && chunkd__engine_quiesce(l->eng)) {
			quiesced = 1;
			break;
		}
		chunkd__store_relaxed(&in->cat.hdr->heartbeat_ns, chunkd__now_ns());
		struct __kernel_timespec ts, *tsp = NULL;
		if (deadline != UINT64_MAX) {
			uint64_t now = chunkd__mono_ms();
			uint64_t ms = deadline > now ? deadline - now : 0;
			ts.tv_sec = (long long)(ms / 1000);
			ts.tv_nsec = (long long)(ms % 1000) * 1000000;
			tsp = &ts;
		}
		if (!tsp || ts.tv_sec || ts.tv_nsec)
			take_before_block(d, &ts, &tsp);
		struct io_uring_cqe *cqe;
		r = io_uring_submit_and_wait_timeout(&l->ring, &cqe, 1, tsp, NULL);
		if (r < 0 && r != -ETIME && r != -EINTR) {
			log_error("io_uring_submit_and_wait_timeout: %s", strerror(-r));
			break;
		}
		/* Awake: enqueues need not ring until the next take_before_block(). Relaxed: a
		 * client that still reads 1 only rings in vain. */
		if (chunkd__load_relaxed(need_wake))
			chunkd__store_relaxed(need_wake, 0);
		unsigned head, n = 0;
		io_uring_for_each_cqe(&l->ring, head, cqe)
		{
			struct op *op = io_uring_cqe_get_data(cqe);
			int res = cqe->res;
			uint32_t fl = cqe->flags;
			n++;
			/* Mark it seen before the callback: callbacks submit, and may wait. */
			io_uring_cq_advance(&l->ring, 1);
			if (op)
				op->fn(l, op, res, fl);
		}
	}
	r = l->stopping == 2 ? -EIO : 0;
	chunkd__store_release(&in->cat.hdr->state, (uint32_t)CHUNKD_STATE_STOPPING);

	/* Pairs with the acquire load in waker_main. */
	chunkd__store_release(&d->waker_stop, 1);
	chunkd__doorbell_ring(in->req.hdr);
	pthread_join(waker, NULL);
err_engine:
	chunkd__engine_destroy(l->eng);
	l->eng = NULL;
	io_uring_queue_exit(&l->ring);
err_fds:
	for (uint32_t i = 0; i < d->nclients; i++)
		if (d->w[i]) {
			close(d->w[i]->pidfd);
			free(d->w[i]);
		}
	/* The ring is gone: completions of cancelled watches will never come. */
	while (d->cancelled) {
		struct watch *w = d->cancelled;
		d->cancelled = w->next_cancelled;
		close(w->pidfd);
		free(w);
	}
	if (d->sig.fd >= 0)
		close(d->sig.fd);
	if (d->bell.fd >= 0)
		close(d->bell.fd);
err_free:
	chunkd__engine_destroy(l->eng); /* NULL once destroyed above */
	free(d->w);
	free(d);
	return r;
}
