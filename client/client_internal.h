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
	uint64_t next_ticket; /* atomic: read by chunkd_wait without the lock */
};

/* Record the detail of a failed chunkd_open() for chunkd_last_error() (thread-local). */
void chunkd__set_last_error(const char *msg);

#endif
