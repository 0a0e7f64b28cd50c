/*
 * loop.h — the daemon's io_uring event loop. Everything the daemon reacts to arrives as a
 * completion: signals (signalfd), the request segment's doorbell (a waker thread turns futex
 * wake-ups into eventfd counts), and client deaths (one pidfd poll per attached client). The loop
 * blocks in io_uring_submit_and_wait() when there is nothing to do: an idle daemon uses no CPU.
 */
#ifndef CHUNKD_DAEMON_LOOP_H
#define CHUNKD_DAEMON_LOOP_H

#include "catalog.h"
#include "instance.h"

/* Run until SIGTERM or SIGINT. The caller has blocked those signals in every thread.
 * Returns 0, or a negative errno if the loop could not be set up. */
int chunkd__loop_run(struct instance *in, struct catalog *cat);

#endif
