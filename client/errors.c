/*
 * errors.c — chunkd_strerror() and chunkd_last_error().
 */
#include <errno.h>
#include <string.h>

#include "chunkd.h"
#include "client_internal.h"

static __thread char last_error[256];

void chunkd__set_last_error(const char *msg)
{
	size_t n = strlen(msg);
	if (n >= sizeof(last_error))
		n = sizeof(last_error) - 1;
	memcpy(last_error, msg, n);
	last_error[n] = '\0';
}

const char *chunkd_last_error(void)
{
	return last_error;
}

const char *chunkd_strerror(int err)
{
	switch (err) {
	case 0:
		return "success";
	case -ENOENT:
		return "no such chunk, or no such chunkd instance";
	case -EINVAL:
		return "invalid argument";
	case -EPROTO:
		return "shared-memory layout or library version mismatch";
	case -EAGAIN:
		return "try again: the instance is starting, or the catalogue stayed inconsistent";
	case -EACCES:
		return "permission denied on the instance's shared memory";
	case -EUSERS:
		return "all client slots of the instance are in use";
	case -ENOBUFS:
		return "pin table full: too many chunks pinned through this handle";
	case -ENOMEM:
		return "out of memory";
	case -ENAMETOOLONG:
		return "name or path too long";
	case -EEXIST:
		return "chunk exists with another descriptor, or overlaps another chunk";
	case -ETIMEDOUT:
		return "timed out";
	case -ECANCELED:
		return "superseded by a later request for the same chunk";
	case -EREMOTEIO:
		return "remote server error";
	}
	if (err < 0) {
		/* strerrordesc_np returns static text, unlike strerror. */
		const char *s = strerrordesc_np(-err);
		if (s)
			return s;
	}
	return "unknown error";
}
