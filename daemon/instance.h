/*
 * instance.h — owning a chunkd instance: the data-dir lock, the name lock and the shared-memory
 * segments. One daemon per data dir and per name; both locks are flock()s the kernel drops when
 * the daemon dies, so a dead daemon's instance is taken over without any manual clean-up.
 */
#ifndef CHUNKD_DAEMON_INSTANCE_H
#define CHUNKD_DAEMON_INSTANCE_H

#include <stdint.h>

#include "shm/shm.h"

struct instance {
	char name[CHUNKD_NAME_MAX + 1];
	char data_dir[CHUNKD_DATA_DIR_MAX]; /* absolute, no trailing slash */
	int data_fd;                        /* data_dir, O_RDONLY|O_DIRECTORY (fsyncable) */
	int dir_lock_fd;
	int name_lock_fd;
	struct chunkd_cat_map cat;
	struct chunkd_req_map req;
	int adopted; /* the segments were taken over from a previous daemon */
};

/* Lock the data dir and the name, then adopt the segments a previous daemon of the instance left
 * (same layout, size and data dir: clients, pins, rings and the catalogue are kept), or create
 * fresh ones.
 * Logs the reason of any failure. Returns 0 or a negative errno; on failure nothing is held. */
int chunkd__instance_open(struct instance *in, const char *name, const char *data_dir,
			  uint32_t max_chunks, uint32_t max_clients);

/* Mark the header STOPPED (segments stay, so clients keep the last catalogue), unmap and unlock. */
void chunkd__instance_close(struct instance *in);

/* Longest data dir accepted: the chunk path (data dir + "/chunks/" + 171 bytes) must fit a slot. */
#define CHUNKD_DATA_DIR_USABLE (CHUNKD_SLOT_PATH_MAX - 1 - 8 - 171 - 1)

uint64_t chunkd__now_ns(void);

#endif
