/*
 * loop.h — the daemon's io_uring event loop. Everything the daemon reacts to arrives as a
 * completion: signals (signalfd), the request segment's doorbell (a waker thread turns futex
 * wake-ups into eventfd counts), client deaths (one pidfd poll per attached client), sockets of
 * transfers (libcurl's multi_socket interface), and file-system operations of downloads and
 * deletes. The loop blocks in io_uring_submit_and_wait_timeout() with the nearest timer as its
 * timeout: an idle daemon uses no CPU.
 *
 * Every submission carries a pointer to a `struct op`; its callback runs when the completion
 * arrives. The memory of an op must stay valid until then, so objects that own ops free
 * themselves only after their last op completed ("defer frees").
 */
#ifndef CHUNKD_DAEMON_LOOP_H
#define CHUNKD_DAEMON_LOOP_H

#include <liburing.h>
#include <stdint.h>

#include "catalog.h"
#include "instance.h"

struct loop;
struct op;
typedef void (*op_fn)(struct loop *l, struct op *op, int res, uint32_t flags);

struct op {
	op_fn fn;
};

struct engine;

struct loop {
	struct io_uring ring;
	struct instance *in;
	struct catalog *cat;
	struct engine *eng;
	int stopping;
};

/* An SQE for `op` (never NULL: submits to make room when the ring is full). */
struct io_uring_sqe *chunkd__loop_sqe(struct loop *l, struct op *op);

/* Run until SIGTERM or SIGINT. The caller has blocked those signals in every thread.
 * The loop takes a prepared engine (chunkd__engine_prepare), owns it from here on and destroys
 * it. on_ready(arg) is called once the engine replayed the journal and the first index is
 * published, before the first wait. Returns 0, or a negative errno if the loop could not be
 * set up. */
int chunkd__loop_run(struct instance *in, struct catalog *cat, struct engine *eng,
		     void (*on_ready)(void *arg), void *arg);

/* Monotonic clock in milliseconds. */
uint64_t chunkd__mono_ms(void);

#endif
