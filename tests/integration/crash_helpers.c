/*
 * crash_helpers.c — see crash_helpers.h.
 */
#include "crash_helpers.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- the fault server's request log, with the headers of a resume ---------------------------- */

/* The value of "key" in one flat JSON object (the server's own lines): a pointer to its first
 * character, or NULL. */
static const char *json_value(const char *line, const char *key)
{
	char pat[64];
	snprintf(pat, sizeof(pat), "\"%s\"", key);
	for (const char *p = strstr(line, pat); p; p = strstr(p + 1, pat)) {
		const char *v = p + strlen(pat);
		while (*v == ' ')
			v++;
		if (*v != ':')
			continue;
		for (v++; *v == ' '; v++)
			;
		return v;
	}
	return NULL;
}

/* A JSON string value (only \" and \\ escapes occur here) into out; null gives "". 0 or
 * -EPROTO. */
static int json_string(const char *v, char *out, size_t len)
{
	size_t k = 0;
	out[0] = '\0';
	if (v && !strncmp(v, "null", 4))
		return 0;
	if (!v || *v != '"')
		return -EPROTO;
	for (v++; *v && *v != '"'; v++) {
		if (*v == '\\' && v[1])
			v++;
		if (k + 1 < len)
			out[k++] = *v;
	}
	out[k] = '\0';
	return *v == '"' ? 0 : -EPROTO;
}

static int parse_req(const char *line, struct cr_req *q)
{
	memset(q, 0, sizeof(*q));
	const char *t = json_value(line, "mono");
	if (json_string(json_value(line, "path"), q->path, sizeof(q->path)) < 0 || !q->path[0] ||
	    !t || !isdigit((unsigned char)*t) ||
	    json_string(json_value(line, "range"), q->range, sizeof(q->range)) < 0 ||
	    json_string(json_value(line, "if_range"), q->if_range, sizeof(q->if_range)) < 0)
		return -EPROTO;
	q->t = strtod(t, NULL);
	char *query = strchr(q->path, '?');
	if (query)
		*query = '\0';
	json_string(json_value(line, "outcome"), q->outcome, sizeof(q->outcome));
	const char *v = json_value(line, "status");
	q->status = v && isdigit((unsigned char)*v) ? atoi(v) : 0;
	v = json_value(line, "bytes");
	q->bytes = v && isdigit((unsigned char)*v) ? strtoull(v, NULL, 10) : 0;
	return 0;
}

int cr_requests(const char *log, const char *suffix, struct cr_req *out, size_t cap, size_t *n)
{
	size_t len, sl = strlen(suffix);
	*n = 0;
	char *text = th_read_file(log, &len);
	if (!text)
		return errno == ENOENT ? 0 : -errno;
	int r = 0;
	for (char *line = text, *next; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		if (!*line)
			continue;
		struct cr_req q;
		if (parse_req(line, &q) < 0) {
			fprintf(stderr, "crash_helpers: %s: cannot parse: %s\n", log, line);
			r = -EPROTO;
			break;
		}
		size_t pl = strlen(q.path);
		if (pl < sl || strcmp(q.path + pl - sl, suffix))
			continue;
		if (*n < cap) {
			/* By start time: the log is in completion order. */
			size_t j = *n;
			for (; j > 0 && out[j - 1].t > q.t; j--)
				out[j] = out[j - 1];
			out[j] = q;
		}
		(*n)++;
	}
	free(text);
	return r;
}

int cr_wait_requests(const char *log, const char *suffix, size_t want, int timeout_ms,
		     struct cr_req *out, size_t cap, size_t *n)
{
	struct th_deadline dl;
	for (th_deadline_start(&dl, timeout_ms);; th_pause()) {
		int r = cr_requests(log, suffix, out, cap, n);
		if (r < 0)
			return r;
		if (*n >= want)
			return 0;
		if (th_deadline_passed(&dl)) {
			fprintf(stderr,
				"crash_helpers: %zu of %zu requests for %s in %s after %d ms\n", *n,
				want, suffix, log, timeout_ms);
			return -ETIMEDOUT;
		}
	}
}

int cr_range_from(const char *range, uint64_t *from)
{
	char *end;
	if (strncmp(range, "bytes=", 6) || !isdigit((unsigned char)range[6]))
		return -EINVAL;
	errno = 0;
	unsigned long long v = strtoull(range + 6, &end, 10);
	if (errno || strcmp(end, "-"))
		return -EINVAL;
	*from = v;
	return 0;
}

int cr_fault_etag(const char *path, char *out, size_t len)
{
	struct stat st;
	if (stat(path, &st) < 0)
		return -errno;
	uint64_t ns = (uint64_t)st.st_mtim.tv_sec * 1000000000ull + (uint64_t)st.st_mtim.tv_nsec;
	snprintf(out, len, "\"%llx-%llx\"", (unsigned long long)st.st_size, (unsigned long long)ns);
	return 0;
}

/* ---- staging and the resume file ------------------------------------------------------------ */

void cr_staging_path(char *out, size_t len, const char *data_dir, const chunkd_id *id,
		     const char *suffix)
{
	char hex[2 * CHUNKD_ID_SIZE + 1];
	th_hex(id, hex);
	snprintf(out, len, "%s/staging/%s%s", data_dir, hex, suffix);
}

/* A record's check, " <crc32c of its body>\n", computed with the harness's own CRC-32C
 * (independent of the daemon's table and SSE4.2 code it checks). */
#define CR_RESUME_BODY (CR_RESUME_REC - 10)
static void resume_check(const char *rec, char check[16])
{
	snprintf(check, 16, " %08x\n", th_crc32c(0, rec, CR_RESUME_BODY));
}

int cr_resume_parse(const char *rec, uint32_t idx, struct cr_resume *r)
{
	char body[CR_RESUME_REC], check[16];
	size_t blen = CR_RESUME_BODY;
	memset(r, 0, sizeof(*r));
	resume_check(rec, check);
	if (memcmp(rec + blen, check, 10) != 0)
		return -EBADMSG;
	memcpy(body, rec, blen);
	body[blen] = '\0';
	for (size_t k = blen; k > 0 && body[k - 1] == ' '; k--)
		body[k - 1] = '\0';
	unsigned i, crc;
	unsigned long long bytes;
	char kind;
	int off = 0;
	if (sscanf(body, "%u %llu %x %c %n", &i, &bytes, &crc, &kind, &off) != 4 || !off ||
	    i != idx)
		return -EBADMSG;
	if (kind == '-')
		return 0;
	r->found = 1;
	r->bytes = bytes;
	r->kind = kind;
	snprintf(r->validator, sizeof(r->validator), "%s", body + off);
	return 0;
}

void cr_resume_format(char *rec, uint32_t idx, uint64_t bytes, uint32_t crc, char kind,
		      const char *validator)
{
	size_t blen = CR_RESUME_BODY;
	char check[16];
	int n = snprintf(rec, blen + 1, "%u %llu %08x %c %s", idx, (unsigned long long)bytes, crc,
			 kind, validator && *validator ? validator : "-");
	memset(rec + n, ' ', blen - (size_t)n);
	resume_check(rec, check);
	memcpy(rec + blen, check, 10);
}

int cr_resume_read(const char *data_dir, const chunkd_id *id, uint32_t idx, struct cr_resume *r)
{
	char path[PATH_MAX];
	size_t len = 0;
	memset(r, 0, sizeof(*r));
	cr_staging_path(path, sizeof(path), data_dir, id, ".resume");
	char *text = th_read_file(path, &len);
	if (!text)
		return errno == ENOENT ? 0 : -errno;
	/* A record read while the daemon rewrites it may be torn: then it counts as missing, as
	 * it does for the daemon. */
	if (len >= (size_t)(idx + 1) * CR_RESUME_REC)
		(void)cr_resume_parse(text + (size_t)idx * CR_RESUME_REC, idx, r);
	free(text);
	return 0;
}

int cr_wait_resume(const char *data_dir, const chunkd_id *id, uint32_t idx, uint64_t min_bytes,
		   int timeout_ms, struct cr_resume *r)
{
	struct th_deadline dl;
	for (th_deadline_start(&dl, timeout_ms);; th_pause()) {
		int e = cr_resume_read(data_dir, id, idx, r);
		if (e < 0)
			return e;
		if (r->found && r->bytes >= min_bytes)
			return 0;
		if (th_deadline_passed(&dl)) {
			fprintf(stderr,
				"crash_helpers: no resume point of %" PRIu64 "+ bytes for file %u "
				"after %d ms (found %d, %" PRIu64 " bytes)\n",
				min_bytes, idx, timeout_ms, r->found, r->bytes);
			return -ETIMEDOUT;
		}
	}
}

/* ---- a supervisor ---------------------------------------------------------------------------- */

void cr_sup_init(struct cr_sup *s, struct th_env *env, const char *const args[])
{
	memset(s, 0, sizeof(*s));
	s->env = env;
	s->args = args;
}

void cr_sup_log(const struct cr_sup *s, unsigned n, char *out, size_t len)
{
	snprintf(out, len, "%s/daemon-%u.log", s->env->root, n);
}

int cr_sup_spawn(struct cr_sup *s)
{
	char log[PATH_MAX];
	cr_sup_log(s, s->env->nstarts++, log, sizeof(log));
	th_daemon_cleanup(&s->env->d);
	int r = th_daemon_start(&s->env->d, s->env->name, s->env->data_dir, log, s->args);
	if (r == 0)
		s->spawns++;
	return r;
}

int cr_sup_kill(struct cr_sup *s)
{
	struct th_daemon *d = &s->env->d;
	char why[64];
	if (!th_daemon_running(d)) {
		fprintf(stderr, "crash_helpers: daemon %d exited on its own (%s)\n", (int)d->pid,
			th_status_str(d->status, why, sizeof(why)));
		th_daemon_dump_log(d);
		return -ECHILD;
	}
	kill(d->pid, SIGKILL);
	int st = th_daemon_wait_exit(d, 10000);
	if (st < 0)
		return st;
	/* It may have died of something else just before the signal arrived. */
	if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL) {
		fprintf(stderr, "crash_helpers: daemon %d ended with %s, not by our SIGKILL\n",
			(int)d->pid, th_status_str(st, why, sizeof(why)));
		th_daemon_dump_log(d);
		return -ECHILD;
	}
	s->kills++;
	return 0;
}

int cr_daemon_ready(chunkd_client *c, const struct th_daemon *d)
{
	chunkd_instance_info in;
	return chunkd_info(c, &in) == 0 && in.daemon_pid == d->pid && in.daemon_alive &&
	       in.state == CHUNKD_STATE_READY;
}

/* ---- checks --------------------------------------------------------------------------------- */

int cr_fsck(const char *data_dir, const char *out_path, int timeout_ms)
{
	char bin[PATH_MAX];
	snprintf(bin, sizeof(bin), "%s/chunkd-fsck", th_bin_dir());
	const char *const argv[] = {bin, "--data-dir", data_dir, "--quiet", NULL};
	unlink(out_path);
	int st = th_run(argv, out_path, out_path, timeout_ms);
	if (!th_exited_with(st, 0)) {
		char why[64];
		char *text = th_read_file(out_path, NULL);
		fprintf(stderr, "crash_helpers: chunkd-fsck --data-dir %s: %s:\n%s\n", data_dir,
			th_status_str(st, why, sizeof(why)), text ? text : "(no output)");
		free(text);
	}
	return st;
}

int64_t cr_file_size(const char *path)
{
	struct stat st;
	if (stat(path, &st) < 0)
		return -errno;
	return (int64_t)st.st_size;
}

int cr_count_lines(const char *path, const char *needle)
{
	char *text = th_read_file(path, NULL);
	if (!text)
		return -errno;
	int n = 0;
	for (char *line = text, *next; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		if (strstr(line, needle))
			n++;
	}
	free(text);
	return n;
}

int cr_find_line(const char *path, const char *needle, char *out, size_t len)
{
	char *text = th_read_file(path, NULL);
	if (!text)
		return -errno;
	int r = -ENOENT;
	for (char *line = text, *next; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		if (strstr(line, needle)) {
			snprintf(out, len, "%s", line);
			r = 0;
			break;
		}
	}
	free(text);
	return r;
}

int cr_wait_state(chunkd_client *c, const chunkd_id *id, uint32_t state, int timeout_ms,
		  chunkd_chunk_status *st)
{
	struct th_deadline dl;
	for (th_deadline_start(&dl, timeout_ms);; th_pause()) {
		int r = chunkd_status(c, id, st);
		if (r < 0 && r != -EAGAIN)
			return r;
		if (r == 0 && st->state == state)
			return 0;
		if (th_deadline_passed(&dl))
			return -ETIMEDOUT;
	}
}

static int gone(void *path)
{
	return !th_exists(path);
}

int cr_wait_gone(const char *path, int timeout_ms)
{
	return th_wait(gone, (void *)path, timeout_ms);
}

int cr_file_equal(const char *path, const void *data, size_t len, char *why, size_t whylen)
{
	size_t got;
	char *text = th_read_file(path, &got);
	if (!text) {
		snprintf(why, whylen, "%s: %s", path, strerror(errno));
		return -1;
	}
	int r = 0;
	if (got != len || memcmp(text, data, len)) {
		size_t at = 0;
		while (at < got && at < len && ((const uint8_t *)data)[at] == (uint8_t)text[at])
			at++;
		snprintf(why, whylen, "%s: %zu bytes, expected %zu; first difference at byte %zu",
			 path, got, len, at);
		r = -1;
	}
	free(text);
	return r;
}

int cr_append(const char *path, const void *buf, size_t len)
{
	int fd = open(path, O_WRONLY | O_APPEND | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t w = write(fd, buf, len);
	int r = w == (ssize_t)len ? 0 : w < 0 ? -errno : -EIO;
	if (r == 0 && fsync(fd) < 0)
		r = -errno;
	close(fd);
	return r;
}

int cr_rewrite_origin(const char *path, size_t size, uint64_t seed, int shift_s, uint8_t **data)
{
	struct stat st;
	*data = NULL;
	if (stat(path, &st) < 0)
		return -errno;
	uint8_t *buf = malloc(size ? size : 1);
	if (!buf)
		return -ENOMEM;
	uint64_t s = seed;
	for (size_t i = 0; i < size; i += 8) {
		uint64_t w = th_rand(&s);
		memcpy(buf + i, &w, size - i < 8 ? size - i : 8);
	}
	/* A new file renamed over the old one, as a web root is updated. */
	char tmp[PATH_MAX];
	snprintf(tmp, sizeof(tmp), "%s.new", path);
	int r = th_write_file(tmp, buf, size);
	struct timespec ts[2] = {st.st_atim, st.st_mtim};
	ts[1].tv_sec += shift_s;
	if (r == 0 && utimensat(AT_FDCWD, tmp, ts, 0) < 0)
		r = -errno;
	if (r == 0 && rename(tmp, path) < 0)
		r = -errno;
	if (r < 0) {
		unlink(tmp);
		free(buf);
		return r;
	}
	*data = buf;
	return 0;
}
