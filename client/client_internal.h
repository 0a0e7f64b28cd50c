/* client_internal.h — helpers shared by the client library's files. */
#ifndef CHUNKD_CLIENT_INTERNAL_H
#define CHUNKD_CLIENT_INTERNAL_H

#include <pthread.h>
#include <stdint.h>

#include "shm/shm.h"

struct chunkd_client {
	struct chunkd_cat_map cat;
	struct chunkd_req_map req;
	struct chunkd_req_client *me;
	uint32_t my_index;
	uint64_t owner;
	char name[CHUNKD_NAME_MAX + 1];
	/* Request producer state, process-private: no other process ever takes this mutex. */
	pthread_mutex_t sq_lock;
	uint64_t next_ticket;  /* atomic: read by chunkd_wait without the lock */
	uint64_t first_ticket; /* this handle's first ticket (chunkd__ticket_base) */
};

/*
 * The first ticket of a new handle: larger than every ticket any earlier handle of this process
 * issued. The daemon tells requests apart by (client slot, owner word, ticket), and the owner
 * word (pid and start time) is the same for every handle of one process, which may get the slot
 * of a handle it closed before: tickets restarting at 1 would make a restarted daemon skip the
 * new handle's requests as journaled already, and post the old handle's results into the new
 * one's ticket table. It is the CLOCK_MONOTONIC time in ns, or above the highest ticket a closed
 * handle of this process issued (chunkd__ticket_floor_raise), whichever is larger.
 */
uint64_t chunkd__ticket_base(void);
void chunkd__ticket_floor_raise(uint64_t next_ticket);

/* Record the detail of a failed chunkd_open() for chunkd_last_error() (thread-local). */
void chunkd__set_last_error(const char *msg);

#endif
