/*
 * source_http.c — http:// and https:// through libcurl's multi_socket interface on the daemon's
 * io_uring (man CURLMOPT_SOCKETFUNCTION, CURLMOPT_TIMERFUNCTION):
 *
 * - the socket callback records what curl wants for a socket; after every curl call the wanted
 *   sockets get a oneshot POLL_ADD, re-armed after curl_multi_socket_action() handled it;
 * - CURL_POLL_REMOVE cancels the poll; the socket's record is freed by the poll's own completion
 *   (so a completion never finds freed memory);
 * - the timer callback sets a deadline that the loop passes to io_uring_submit_and_wait_timeout;
 * - bytes go to chunkd__xfer_deliver(); when it has no buffer the write callback returns
 *   CURL_WRITEFUNC_PAUSE and the engine resumes the transfer when a buffer comes back.
 *
 * Receive buffer: HTTP_BUFFER_SIZE (CURLOPT_BUFFERSIZE) instead of curl's 16 KiB, so that one
 * poll and one recv move up to a write buffer's worth; on a local origin those two system calls
 * per 16 KiB were most of the loop thread's (bench/README.md, "Analysis ... 5. Download"). The
 * write callback still gets at most CURL_MAX_WRITE_SIZE (16 KiB) per call: curl chops bodies.
 *
 * Policy: HTTP/1.1, no redirects (a 3xx is a failure), connect timeout. Stalls are detected by
 * the engine (no byte for --stall-timeout; curl's low-speed check averages over seconds and
 * reacts late). Only 2xx bodies are written; a body shorter than Content-Length is a failure.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "engine_internal.h"
#include "log.h"

/* curl's receive buffer per transfer (curl allocates it once per easy handle). */
#define HTTP_BUFFER_SIZE WBUF_SIZE

struct csock {
	struct op op;
	struct http_state *h;
	curl_socket_t fd;
	int want;    /* POLLIN | POLLOUT wanted by curl */
	int armed;   /* a POLL_ADD is in flight */
	int removed; /* curl is done with the socket: free once not armed */
	struct csock *next_dirty;
	int dirty;
};

struct http_state {
	struct engine *e;
	CURLM *multi;
	uint64_t deadline; /* curl's timer, mono ms; UINT64_MAX = none */
	struct csock *dirty;
	uint32_t armed; /* polls in flight */
	int in_curl;    /* inside a curl call: defer re-arming */
};

static struct http_state *H(struct engine *e)
{
	return *chunkd__engine_http(e);
}

static void mark_dirty(struct http_state *h, struct csock *cs)
{
	if (cs->dirty)
		return;
	cs->dirty = 1;
	cs->next_dirty = h->dirty;
	h->dirty = cs;
}

static void on_poll(struct loop *l, struct op *op, int res, uint32_t flags);

/* Arm polls for sockets whose wants changed; free removed ones. */
static void rearm(struct http_state *h)
{
	struct loop *l = chunkd__engine_loop(h->e);
	while (h->dirty) {
		struct csock *cs = h->dirty;
		h->dirty = cs->next_dirty;
		cs->dirty = 0;
		if (cs->armed)
			continue; /* its completion re-arms with the current wants */
		if (cs->removed) {
			free(cs);
			continue;
		}
		if (cs->want) {
			cs->op.fn = on_poll;
			io_uring_prep_poll_add(chunkd__loop_sqe(l, &cs->op), cs->fd,
					       (unsigned)cs->want);
			cs->armed = 1;
			h->armed++;
		}
	}
}

static void check_done(struct http_state *h);

static void action(struct http_state *h, curl_socket_t fd, int ev)
{
	int running;
	h->in_curl = 1;
	curl_multi_socket_action(h->multi, fd, ev, &running);
	h->in_curl = 0;
	check_done(h);
	rearm(h);
}

static void on_poll(struct loop *l, struct op *op, int res, uint32_t flags)
{
	struct csock *cs = (struct csock *)op;
	struct http_state *h = cs->h;
	cs->armed = 0;
	h->armed--;
	if (cs->removed) {
		free(cs);
		return;
	}
	int ev = 0;
	if (res > 0) {
		if (res & POLLIN)
			ev |= CURL_CSELECT_IN;
		if (res & POLLOUT)
			ev |= CURL_CSELECT_OUT;
		if (res & (POLLERR | POLLHUP))
			ev |= CURL_CSELECT_ERR;
	}
	mark_dirty(h, cs); /* re-arm after curl has seen the event */
	if (ev)
		action(h, cs->fd, ev);
	else
		rearm(h);
}

static int sock_cb(CURL *easy, curl_socket_t s, int what, void *userp, void *socketp)
{
	struct http_state *h = userp;
	struct csock *cs = socketp;
	if (what == CURL_POLL_REMOVE) {
		if (cs) {
			cs->removed = 1;
			cs->want = 0;
			curl_multi_assign(h->multi, s, NULL);
			if (cs->armed) {
				/* Cancel; the poll's completion frees cs. */
				struct loop *l = chunkd__engine_loop(h->e);
				io_uring_prep_poll_remove(chunkd__loop_sqe(l, NULL),
							  (uint64_t)(uintptr_t)cs);
			} else {
				mark_dirty(h, cs);
			}
		}
		return 0;
	}
	if (!cs) {
		cs = calloc(1, sizeof(*cs));
		if (!cs)
			return -1;
		cs->h = h;
		cs->fd = s;
		curl_multi_assign(h->multi, s, cs);
	}
	cs->want = ((what & CURL_POLL_IN) ? POLLIN : 0) | ((what & CURL_POLL_OUT) ? POLLOUT : 0);
	mark_dirty(h, cs);
	return 0;
}

static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
	struct http_state *h = userp;
	h->deadline = timeout_ms < 0 ? UINT64_MAX : chunkd__mono_ms() + (uint64_t)timeout_ms;
	return 0;
}

/* Case-insensitive "Name:" prefix match; returns the value (trimmed) or NULL. */
static const char *header_value(const char *line, size_t len, const char *name, char *out,
				size_t outlen)
{
	size_t n = strlen(name);
	if (len <= n || strncasecmp(line, name, n) != 0 || line[n] != ':')
		return NULL;
	const char *v = line + n + 1, *end = line + len;
	while (v < end && (*v == ' ' || *v == '\t'))
		v++;
	while (end > v && (end[-1] == '\r' || end[-1] == '\n' || end[-1] == ' '))
		end--;
	size_t k = (size_t)(end - v) < outlen - 1 ? (size_t)(end - v) : outlen - 1;
	memcpy(out, v, k);
	out[k] = '\0';
	return out;
}

/* Response headers: the validator for a later resume (ETag preferred, else Last-Modified),
 * and the start of a 206's Content-Range. A new status line resets them (e.g. after a 100). */
static size_t header_cb(char *line, size_t size, size_t nmemb, void *ud)
{
	struct xfer *x = ud;
	size_t len = size * nmemb;
	char v[150]; /* shorter than x->validator, which prefixes a kind letter */
	if (len >= 5 && !strncmp(line, "HTTP/", 5)) {
		x->range_start = UINT64_MAX;
		x->resp_etag = 0;
	} else if (header_value(line, len, "ETag", v, sizeof(v))) {
		snprintf(x->validator, sizeof(x->validator), "E%s", v);
		x->resp_etag = 1;
	} else if (header_value(line, len, "Last-Modified", v, sizeof(v))) {
		if (!x->resp_etag)
			snprintf(x->validator, sizeof(x->validator), "L%s", v);
	} else if (header_value(line, len, "Content-Range", v, sizeof(v))) {
		unsigned long long a, b, t;
		if (sscanf(v, "bytes %llu-%llu/%llu", &a, &b, &t) >= 2)
			x->range_start = a;
		else if (sscanf(v, "bytes */%llu", &t) == 1)
			x->range_total = t;
	}
	return len;
}

static size_t write_cb(char *ptr, size_t size, size_t nmemb, void *ud)
{
	struct xfer *x = ud;
	size_t n = size * nmemb;
	if (x->http_status == 0) {
		long code = 0;
		curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
		x->http_status = code;
		if (x->start_off && code == 200) {
			chunkd__xfer_restart_at_zero(x->eng, x);
		} else if (x->start_off && code == 206 && x->range_start != x->start_off) {
			x->result = -EIO;
			snprintf(x->msg, sizeof(x->msg), "%s: 206 for the wrong range from %s",
				 chunkd__xfer_name(x), chunkd__xfer_url(x));
			return 0;
		}
	}
	if (x->http_status / 100 != 2)
		return 0; /* not a body we want: abort (reported as the HTTP status) */
	long r = chunkd__xfer_deliver(x->eng, x, ptr, n);
	if (r == 0)
		return CURL_WRITEFUNC_PAUSE;
	return r < 0 ? 0 : (size_t)r;
}

/* Map a finished transfer's curl result to an errno and a message. */
static int classify(struct xfer *x, CURLcode rc, const char *url, char *msg, size_t msglen)
{
	long code = 0;
	curl_easy_getinfo(x->easy, CURLINFO_RESPONSE_CODE, &code);
	x->http_status = code;
	if (rc == CURLE_OK && code == 416 && x->start_off && x->range_total == x->start_off) {
		/* We asked for the bytes after the end: the file was complete already. */
		return 0;
	}
	if (rc == CURLE_WRITE_ERROR && x->result)
		return snprintf(msg, msglen, "%s", x->msg), x->result;
	if (rc == CURLE_OK || (rc == CURLE_WRITE_ERROR && code / 100 != 2)) {
		if (code / 100 != 2) {
			snprintf(msg, msglen, "%s: HTTP %ld%s from %s", chunkd__xfer_name(x), code,
				 code / 100 == 3 ? " (redirects are not followed)" : "", url);
			return -EREMOTEIO;
		}
		curl_off_t cl = -1;
		curl_easy_getinfo(x->easy, CURLINFO_CONTENT_LENGTH_DOWNLOAD_T, &cl);
		if (cl >= 0 && (uint64_t)cl != x->received - x->start_off) {
			snprintf(msg, msglen, "%s: short body, got %llu bytes of Content-Length %lld "
				 "from %s", chunkd__xfer_name(x),
				 (unsigned long long)(x->received - x->start_off), (long long)cl, url);
			return -EIO;
		}
		return 0;
	}
	int err;
	switch (rc) {
	case CURLE_COULDNT_CONNECT:
		err = -ECONNREFUSED;
		break;
	case CURLE_OPERATION_TIMEDOUT:
		err = -ETIMEDOUT;
		break;
	case CURLE_COULDNT_RESOLVE_HOST:
		err = -EHOSTUNREACH;
		break;
	case CURLE_RECV_ERROR:
	case CURLE_SEND_ERROR:
	case CURLE_GOT_NOTHING:
		err = -ECONNRESET;
		break;
	case CURLE_PARTIAL_FILE:
		err = -EIO;
		break;
	case CURLE_WRITE_ERROR:
		err = x->result ? x->result : -EIO;
		break;
	default:
		err = -EIO;
		break;
	}
	snprintf(msg, msglen, "%s: %s (%s)", chunkd__xfer_name(x), curl_easy_strerror(rc), url);
	return err;
}

static void check_done(struct http_state *h)
{
	CURLMsg *m;
	int left;
	while ((m = curl_multi_info_read(h->multi, &left))) {
		if (m->msg != CURLMSG_DONE)
			continue;
		struct xfer *x = NULL;
		curl_easy_getinfo(m->easy_handle, CURLINFO_PRIVATE, (char **)&x);
		char msg[CHUNKD_SLOT_MSG_MAX];
		msg[0] = '\0';
		char *eurl = NULL;
		curl_easy_getinfo(m->easy_handle, CURLINFO_EFFECTIVE_URL, &eurl);
		int err = classify(x, m->data.result, eurl ? eurl : "?", msg, sizeof(msg));
		long status = x->http_status;
		curl_multi_remove_handle(h->multi, m->easy_handle);
		curl_easy_cleanup(m->easy_handle);
		x->easy = NULL;
		curl_slist_free_all(x->headers);
		x->headers = NULL;
		chunkd__xfer_finished(h->e, x, err, status, msg);
	}
}

static int http_start(struct engine *e, struct xfer *x)
{
	struct http_state *h = H(e);
	const struct engine_config *cfg = chunkd__engine_config(e);
	CURL *c = curl_easy_init();
	if (!c)
		return -ENOMEM;
	x->easy = c;
	x->http_status = 0;
	curl_easy_setopt(c, CURLOPT_URL, chunkd__xfer_url(x));
	curl_easy_setopt(c, CURLOPT_PRIVATE, x);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, write_cb);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, header_cb);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, x);
	x->range_total = UINT64_MAX;
	x->resp_etag = 0;
	if (x->start_off) {
		/* Resume: the rest of the file, only if it is still the same file (If-Range with
		 * its validator); otherwise the origin answers 200 with all of it. */
		char range[32], ifr[sizeof(x->validator) + 16];
		snprintf(range, sizeof(range), "%llu-", (unsigned long long)x->start_off);
		curl_easy_setopt(c, CURLOPT_RANGE, range);
		snprintf(ifr, sizeof(ifr), "If-Range: %s", x->validator + 1);
		x->headers = curl_slist_append(NULL, ifr);
		curl_easy_setopt(c, CURLOPT_HTTPHEADER, x->headers);
	}
	curl_easy_setopt(c, CURLOPT_BUFFERSIZE, (long)HTTP_BUFFER_SIZE);
	curl_easy_setopt(c, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT_MS, (long)cfg->connect_timeout_ms);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_USERAGENT, "chunkd/" "0.1");
	CURLMcode rc = curl_multi_add_handle(h->multi, c);
	if (rc != CURLM_OK) {
		curl_easy_cleanup(c);
		x->easy = NULL;
		return -ENOMEM;
	}
	/* curl starts the transfer from its timer callback (timeout 0): the loop runs it. */
	return 0;
}

static void http_cancel(struct engine *e, struct xfer *x)
{
	struct http_state *h = H(e);
	if (!x->easy)
		return;
	h->in_curl = 1;
	curl_multi_remove_handle(h->multi, x->easy);
	h->in_curl = 0;
	curl_easy_cleanup(x->easy);
	x->easy = NULL;
	curl_slist_free_all(x->headers);
	x->headers = NULL;
	rearm(h);
}

static void http_resume(struct engine *e, struct xfer *x)
{
	struct http_state *h = H(e);
	if (!x->easy)
		return;
	h->in_curl = 1;
	curl_easy_pause(x->easy, CURLPAUSE_CONT);
	h->in_curl = 0;
	check_done(h);
	rearm(h);
}

const struct source_ops chunkd__source_http = {
	.scheme = "http",
	.start = http_start,
	.cancel = http_cancel,
	.resume = http_resume,
};

int chunkd__http_init(struct engine *e, const struct engine_config *cfg)
{
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		return -EIO;
	struct http_state *h = calloc(1, sizeof(*h));
	if (!h)
		return -ENOMEM;
	h->e = e;
	h->deadline = UINT64_MAX;
	h->multi = curl_multi_init();
	if (!h->multi) {
		free(h);
		return -ENOMEM;
	}
	curl_multi_setopt(h->multi, CURLMOPT_SOCKETFUNCTION, sock_cb);
	curl_multi_setopt(h->multi, CURLMOPT_SOCKETDATA, h);
	curl_multi_setopt(h->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
	curl_multi_setopt(h->multi, CURLMOPT_TIMERDATA, h);
	curl_multi_setopt(h->multi, CURLMOPT_MAX_TOTAL_CONNECTIONS, (long)cfg->transfers);
	*chunkd__engine_http(e) = h;
	return 0;
}

void chunkd__http_cleanup(struct engine *e)
{
	struct http_state *h = H(e);
	if (!h)
		return;
	curl_multi_cleanup(h->multi);
	while (h->dirty) {
		struct csock *cs = h->dirty;
		h->dirty = cs->next_dirty;
		if (cs->removed && !cs->armed)
			free(cs);
	}
	free(h);
	*chunkd__engine_http(e) = NULL;
	curl_global_cleanup();
}

uint64_t chunkd__http_run(struct engine *e)
{
	struct http_state *h = H(e);
	if (h->deadline != UINT64_MAX && chunkd__mono_ms() >= h->deadline) {
		h->deadline = UINT64_MAX;
		action(h, CURL_SOCKET_TIMEOUT, 0);
	}
	rearm(h);
	return h->deadline;
}

int chunkd__http_idle(struct engine *e)
{
	return H(e)->armed == 0;
}
