/* client_internal.h — helpers shared by the client library's files. */
#ifndef CHUNKD_CLIENT_INTERNAL_H
#define CHUNKD_CLIENT_INTERNAL_H

/* Record the detail of a failed chunkd_open() for chunkd_last_error() (thread-local). */
void chunkd__set_last_error(const char *msg);

#endif
