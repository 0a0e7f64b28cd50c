/*
 * loop.c — see loop.h.
 */
#include "loop.h"

#include <errno.h>
#include <liburing.h>
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

#include "log.h"
#include "shm/atomics.h"

/* user_data of a submission: kind << 56 | client index << 32 | tag. */
enum ev_kind { EV_SIGNAL = 1, EV_DOORBELL = 2, EV_PIDFD = 3, EV_IGNORE = 4 };
#define UD(kind, idx, tag) (((uint64_t)(kind) << 56) | ((uint64_t)(idx) << 32) | (uint32_t)(tag))
#define UD_KIND(u) ((unsigned)((u) >> 56))
#define UD_IDX(u) ((uint32_t)(((u) >> 32) & 0xffffff))
#define UD_TAG(u) ((uint32_t)(u))

/* How long the waker thread sleeps in FUTEX_WAIT before rechecking on its own. */
#define WAKER_TIMEOUT_S 5

struct watched {
	uint64_t owner; /* owner word being watched, 0 = none */
	int pidfd;
	uint32_t tag; /* identifies the armed poll; completions with another tag are stale */
};

struct loop {
	struct io_uring ring;
	struct instance *in;
	struct catalog *cat;
	int sigfd, evfd;
	uint32_t waker_stop; /* atomic */
	struct watched *w;
	uint32_t nclients; /* private copy of the geometry: never re-read from shared memory */
	uint32_t next_tag;
	int stopping;
};

static struct io_uring_sqe *get_sqe(struct loop *l)
{
	struct io_uring_sqe *sqe = io_uring_get_sqe(&l->ring);
	if (!sqe) {
		io_uring_submit(&l->ring);
		sqe = io_uring_get_sqe(&l->ring);
	}
	return sqe; /* never NULL right after a submit: the ring has free entries */
}

static void arm_poll(struct loop *l, int fd, uint64_t ud)
{
	struct io_uring_sqe *sqe = get_sqe(l);
	io_uring_prep_poll_add(sqe, fd, POLLIN);
	io_uring_sqe_set_data64(sqe, ud);
}

/* The waker thread: FUTEX_WAIT on the doorbell (with a timeout and a recheck), and turn every
 * change of it into an eventfd count that the ring sees. */
static void *waker_main(void *arg)
{
	struct loop *l = arg;
	uint32_t *bell = &l->in->req.hdr->doorbell;
	/* Pairs with the release increment in chunkd__doorbell_ring. */
	uint32_t seen = chunkd__load_acquire(bell);
	while (!chunkd__load_acquire(&l->waker_stop)) {
		struct timespec ts = {.tv_sec = WAKER_TIMEOUT_S};
		syscall(SYS_futex, bell, FUTEX_WAIT, seen, &ts, NULL, 0);
		/* Pairs with the release increment in chunkd__doorbell_ring. */
		uint32_t v = chunkd__load_acquire(bell);
		if (v != seen) {
			seen = v;
			uint64_t one = 1;
			ssize_t n = write(l->evfd, &one, sizeof(one));
			(void)n;
		}
	}
	return NULL;
}

static void unwatch(struct loop *l, uint32_t i)
{
	struct watched *w = &l->w[i];
	if (w->pidfd >= 0) {
		struct io_uring_sqe *sqe = get_sqe(l);
		io_uring_prep_poll_remove(sqe, UD(EV_PIDFD, i, w->tag));
		io_uring_sqe_set_data64(sqe, UD(EV_IGNORE, 0, 0));
		close(w->pidfd);
	}
	w->pidfd = -1;
	w->owner = 0;
	w->tag = 0;
}

/* A client process is gone: drop its pins and free its slot. The CAS to RECLAIM makes sure the
 * slot still belongs to the dead process (a new client may already have taken a freed slot). */
static void reap(struct loop *l, uint32_t i, uint64_t owner)
{
	struct chunkd_req_client *cl = chunkd__req_client(&l->in->req, i);
	uint64_t expect = owner;
	if (!chunkd__cas_seq_cst(&cl->ctl.owner, &expect, CHUNKD_OWNER_RECLAIM))
		return;
	uint32_t held = chunkd__pins_held(cl);
	for (uint32_t p = 0; p < CHUNKD_PINS_PER_CLIENT; p++)
		chunkd__store_relaxed(&cl->pins[p], 0);
	chunkd__store_relaxed(&cl->ctl.attach_ns, 0);
	/* seq_cst: the cleared pins precede the free owner word for any scanner or new client. */
	chunkd__store_seq_cst(&cl->ctl.owner, 0);
	log_info("client pid %d (slot %u) is gone; dropped its %u pin%s", (int)CHUNKD_OWNER_PID(owner),
		 i, held, held == 1 ? "" : "s");
}

/* Bring the set of watched pidfds in line with the client table. Owner words are untrusted:
 * a word is watched only if a pidfd for its pid opens and the start time matches, which also
 * proves the pidfd refers to the process that wrote the word. */
static void sync_clients(struct loop *l)
{
	for (uint32_t i = 0; i < l->nclients; i++) {
		struct chunkd_req_client *cl = chunkd__req_client(&l->in->req, i);
		/* Pairs with the client's seq_cst CAS/store of its owner word. */
		uint64_t owner = chunkd__load_acquire(&cl->ctl.owner);
		struct watched *w = &l->w[i];
		if (owner == w->owner)
			continue;
		unwatch(l, i);
		if (owner == 0 || owner == CHUNKD_OWNER_RECLAIM)
			continue;
		pid_t pid = CHUNKD_OWNER_PID(owner);
		int fd = pid > 0 ? (int)syscall(SYS_pidfd_open, pid, 0) : -1;
		if (fd < 0 || !chunkd__owner_alive(owner)) {
			if (fd >= 0)
				close(fd);
			reap(l, i, owner);
			continue;
		}
		w->owner = owner;
		w->pidfd = fd;
		w->tag = ++l->next_tag;
		arm_poll(l, fd, UD(EV_PIDFD, i, w->tag));
		log_debug("client pid %d attached (slot %u)", (int)pid, i);
	}
}

static void on_signal(struct loop *l)
{
	struct signalfd_siginfo si;
	while (read(l->sigfd, &si, sizeof(si)) == sizeof(si)) {
		if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
			log_info("received %s, stopping", si.ssi_signo == SIGTERM ? "SIGTERM" : "SIGINT");
			l->stopping = 1;
		}
	}
}

static void handle(struct loop *l, struct io_uring_cqe *cqe)
{
	uint64_t ud = io_uring_cqe_get_data64(cqe);
	switch (UD_KIND(ud)) {
	case EV_SIGNAL:
		on_signal(l);
		arm_poll(l, l->sigfd, UD(EV_SIGNAL, 0, 0));
		break;
	case EV_DOORBELL: {
		uint64_t n;
		ssize_t r = read(l->evfd, &n, sizeof(n));
		(void)r;
		sync_clients(l);
		arm_poll(l, l->evfd, UD(EV_DOORBELL, 0, 0));
		break;
	}
	case EV_PIDFD: {
		uint32_t i = UD_IDX(ud);
		if (i >= l->nclients || l->w[i].tag != UD_TAG(ud) || l->w[i].pidfd < 0)
			break; /* stale: that watch was cancelled */
		if (cqe->res < 0) {
			log_warn("pidfd poll for client slot %u failed: %s", i, strerror(-cqe->res));
			break;
		}
		uint64_t owner = l->w[i].owner;
		close(l->w[i].pidfd);
		l->w[i].pidfd = -1;
		l->w[i].owner = 0;
		reap(l, i, owner);
		break;
	}
	default:
		break;
	}
}

int chunkd__loop_run(struct instance *in, struct catalog *cat)
{
	struct loop l;
	memset(&l, 0, sizeof(l));
	l.in = in;
	l.cat = cat;
	l.nclients = in->req.geom.max_clients;
	int r = -ENOMEM;
	l.w = calloc(l.nclients, sizeof(*l.w));
	if (!l.w)
		return r;
	for (uint32_t i = 0; i < l.nclients; i++)
		l.w[i].pidfd = -1;

	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	l.sigfd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	l.evfd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	if (l.sigfd < 0 || l.evfd < 0) {
		r = -errno;
		log_error("signalfd/eventfd: %s", strerror(-r));
		goto err_fds;
	}
	r = io_uring_queue_init(256, &l.ring, 0);
	if (r < 0) {
		log_error("io_uring_queue_init: %s", strerror(-r));
		goto err_fds;
	}
	pthread_t waker;
	r = -pthread_create(&waker, NULL, waker_main, &l);
	if (r < 0) {
		log_error("cannot start the waker thread: %s", strerror(-r));
		goto err_ring;
	}

	arm_poll(&l, l.sigfd, UD(EV_SIGNAL, 0, 0));
	arm_poll(&l, l.evfd, UD(EV_DOORBELL, 0, 0));
	sync_clients(&l);
	while (!l.stopping) {
		chunkd__catalog_flush(cat);
		chunkd__store_relaxed(&in->cat.hdr->heartbeat_ns, chunkd__now_ns());
		r = io_uring_submit_and_wait(&l.ring, 1);
		if (r < 0 && r != -EINTR) {
			log_error("io_uring_submit_and_wait: %s", strerror(-r));
			break;
		}
		struct io_uring_cqe *cqe;
		unsigned head, n = 0;
		io_uring_for_each_cqe(&l.ring, head, cqe)
		{
			handle(&l, cqe);
			n++;
		}
		io_uring_cq_advance(&l.ring, n);
	}
	r = 0;
	chunkd__store_release(&in->cat.hdr->state, (uint32_t)CHUNKD_STATE_STOPPING);

	/* Pairs with the acquire load in waker_main. */
	chunkd__store_release(&l.waker_stop, 1);
	chunkd__doorbell_ring(in->req.hdr);
	pthread_join(waker, NULL);
err_ring:
	io_uring_queue_exit(&l.ring);
err_fds:
	for (uint32_t i = 0; i < l.nclients; i++)
		if (l.w[i].pidfd >= 0)
			close(l.w[i].pidfd);
	if (l.sigfd >= 0)
		close(l.sigfd);
	if (l.evfd >= 0)
		close(l.evfd);
	free(l.w);
	return r;
}
