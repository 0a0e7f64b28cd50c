/*
 * engine.h — the download/delete engine: takes requests from the client rings, keeps the desired
 * state per chunk (the last accepted request per id wins), runs transfers through sources
 * (source.h), writes files through io_uring, publishes finished chunks atomically and removes
 * deleted ones once no pin holds them. docs/requests.md describes the state machine.
 */
#ifndef CHUNKD_DAEMON_ENGINE_H
#define CHUNKD_DAEMON_ENGINE_H

#include <stdint.h>

#include "loop.h"

struct engine_config {
	uint32_t chunks_in_flight;   /* downloads running at once (default 4) */
	uint32_t transfers;          /* file transfers running at once (default 16) */
	uint32_t connect_timeout_ms; /* default 10000 */
	uint32_t stall_timeout_ms;   /* abort a transfer slower than 1 KiB/s for this long (30000) */
	uint32_t attempts;           /* attempts per file before the chunk fails (default 5) */
	uint32_t backoff_ms;         /* first retry delay, doubled per attempt (default 100) */
	uint32_t backoff_max_ms;     /* cap of the retry delay (default 10000) */
	uint32_t buffers;            /* write buffers of 256 KiB (default 64) */
	uint32_t checkpoint_mb;      /* fdatasync + record a resume point every N MiB (16) */
};

void chunkd__engine_default_config(struct engine_config *cfg);

/* Create the engine and start reading the request journal in a thread of its own, so that the
 * replay overlaps the start-up scan of chunks/ (which the caller runs next). */
int chunkd__engine_prepare(struct instance *in, struct catalog *cat,
			   const struct engine_config *cfg, struct engine **out);

/* After the scan: join the replay, apply it to the catalogue, resume or purge staging, and
 * attach the engine to the loop's ring. */
int chunkd__engine_start(struct engine *e, struct loop *l);
void chunkd__engine_destroy(struct engine *e);

/* Take every complete record from every client ring. */
void chunkd__engine_intake(struct engine *e);

/* 1 if some live client's ring holds records intake has not taken yet (and intake would take
 * them: 0 while quiescing), else 0. Loads each tail with seq_cst: the loop's half of the
 * need_wake Dekker (docs/shm-layout.md, "Waking the daemon"). */
int chunkd__engine_rings_pending(struct engine *e);

/* A client slot's owner died or closed: take what is left in its ring, forget its waiters, reset
 * its ring and ticket table. Called with the slot in RECLAIM state, before it is freed. */
void chunkd__engine_client_gone(struct engine *e, uint32_t client);

/* Pins changed (a client released a pin on a condemned chunk, or a client went away). */
void chunkd__engine_pins_changed(struct engine *e);

/* Advance timers and start queued work; returns the next deadline (chunkd__mono_ms() clock) or
 * UINT64_MAX when nothing is timed. */
uint64_t chunkd__engine_run(struct engine *e);

/* End of a loop iteration: publish the index, then post ticket results and wake clients. */
void chunkd__engine_flush(struct engine *e);

/* Stop taking new work; returns 1 once nothing is in flight (the loop keeps running until). */
int chunkd__engine_quiesce(struct engine *e);

/* Right after READY: the bookkeeping of replayed deletes of chunks that were gone already
 * (answer their requesters if still attached, forget their journal records). Nothing a
 * client can observe depends on it being done before READY. */
void chunkd__engine_after_ready(struct engine *e);

/* 1 if the engine cannot go on safely (the journal failed): the daemon must stop. */
int chunkd__engine_fatal(struct engine *e);

#endif
