/*
 * source_file.c — file:// URLs, the local data source: the file is copied through io_uring,
 * reading into a write buffer and handing it to chunkd__xfer_deliver(), one read in flight per
 * transfer. Reads go through the engine's buffers so that the CRC32C is computed like for HTTP.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "engine_internal.h"

#define READ_SIZE (128u * 1024)

struct fsrc {
	uint8_t buf[READ_SIZE];
	uint64_t off;
	uint32_t pending; /* bytes read but not yet delivered (paused) */
	int reading;
	int cancelled;
};

static void issue_read(struct engine *e, struct xfer *x);

/* Hand the pending bytes over; returns 1 if the transfer should go on reading. */
static int deliver_pending(struct engine *e, struct xfer *x)
{
	struct fsrc *f = (struct fsrc *)x->src_state;
	if (!f->pending)
		return 1;
	long r = chunkd__xfer_deliver(e, x, f->buf, f->pending);
	if (r == 0)
		return 0; /* paused: resume() calls us again */
	if (r < 0) {
		chunkd__xfer_finished(e, x, 0, 0, NULL); /* the engine already has the error */
		return 0;
	}
	f->off += f->pending;
	f->pending = 0;
	return 1;
}

static void on_read(struct loop *l, struct op *op, int res, uint32_t flags)
{
	struct xfer *x = (struct xfer *)((char *)op - offsetof(struct xfer, src_op));
	struct engine *e = l->eng;
	struct fsrc *f = (struct fsrc *)x->src_state;
	f->reading = 0;
	chunkd__xfer_op_end(x);
	if (f->cancelled) {
		chunkd__xfer_source_released(e, x);
		return;
	}
	if (res < 0) {
		char msg[CHUNKD_SLOT_MSG_MAX];
		snprintf(msg, sizeof(msg), "%s: read: %s (%s)", chunkd__xfer_name(x), strerror(-res),
			 chunkd__xfer_url(x));
		chunkd__xfer_finished(e, x, res, 0, msg);
		return;
	}
	if (res == 0) {
		if (f->off != x->src_size) {
			char msg[CHUNKD_SLOT_MSG_MAX];
			snprintf(msg, sizeof(msg), "%s: the source shrank while copying (%s)",
				 chunkd__xfer_name(x), chunkd__xfer_url(x));
			chunkd__xfer_finished(e, x, -EIO, 0, msg);
			return;
		}
		chunkd__xfer_finished(e, x, 0, 0, NULL);
		return;
	}
	f->pending = (uint32_t)res;
	if (deliver_pending(e, x))
		issue_read(e, x);
}

static void issue_read(struct engine *e, struct xfer *x)
{
	struct fsrc *f = (struct fsrc *)x->src_state;
	x->src_op.fn = on_read;
	io_uring_prep_read(chunkd__loop_sqe(chunkd__engine_loop(e), &x->src_op), x->src_fd, f->buf,
			   READ_SIZE, f->off);
	f->reading = 1;
	chunkd__xfer_op_begin(x);
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* The local path of a file:// URL: percent-decoded (URLs cannot hold spaces, so a file name
 * with one arrives as %20); an encoded NUL or a bad escape is refused. */
static int url_path(const char *url, char *out, size_t outlen)
{
	const char *p = url + strlen("file://");
	size_t n = 0;
	if (p[0] != '/')
		return -EINVAL; /* file://host/... is not a local file */
	for (; *p; p++) {
		char c = *p;
		if (c == '%') {
			int hi = hexval(p[1]), lo = hi < 0 ? -1 : hexval(p[2]);
			if (lo < 0 || (hi == 0 && lo == 0))
				return -EINVAL;
			c = (char)(hi * 16 + lo);
			p += 2;
		}
		if (n + 1 >= outlen)
			return -ENAMETOOLONG;
		out[n++] = c;
	}
	out[n] = '\0';
	return 0;
}

static int file_start(struct engine *e, struct xfer *x)
{
	char path[CHUNKD_MAX_URL + 1];
	int pr = url_path(chunkd__xfer_url(x), path, sizeof(path));
	if (pr < 0)
		return pr;
	struct fsrc *f = calloc(1, sizeof(*f));
	if (!f)
		return -ENOMEM;
	x->src_fd = open(path, O_RDONLY | O_CLOEXEC);
	if (x->src_fd < 0) {
		int err = -errno;
		free(f);
		return err;
	}
	struct stat st;
	if (fstat(x->src_fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		close(x->src_fd);
		x->src_fd = -1;
		free(f);
		return -EINVAL;
	}
	x->src_size = (uint64_t)st.st_size;
	x->src_state = f;
	issue_read(e, x);
	return 0;
}

static void file_cancel(struct engine *e, struct xfer *x)
{
	struct fsrc *f = (struct fsrc *)x->src_state;
	if (!f)
		return;
	f->cancelled = 1;
	if (!f->reading)
		chunkd__xfer_source_released(e, x);
	/* Otherwise the read's completion releases it. */
}

static void file_resume(struct engine *e, struct xfer *x)
{
	struct fsrc *f = (struct fsrc *)x->src_state;
	if (f && !f->reading && !f->cancelled && deliver_pending(e, x))
		issue_read(e, x);
}

static void file_release(struct xfer *x)
{
	if (x->src_fd >= 0)
		close(x->src_fd);
	x->src_fd = -1;
	free(x->src_state);
	x->src_state = NULL;
}

const struct source_ops chunkd__source_file = {
	.scheme = "file",
	.start = file_start,
	.cancel = file_cancel,
	.resume = file_resume,
	.release = file_release,
};
