/*
 * fault_helpers.c — see fault_helpers.h.
 */
#include "fault_helpers.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "shm/atomics.h"
#include "shm/shm.h"

/* ---- origins -------------------------------------------------------------------------------- */

static void script_path(char *out, size_t len, const char *script)
{
	snprintf(out, len, "%s/tests/servers/%s", th_source_dir(), script);
}

int fh_server_available(const char *script)
{
	char p[PATH_MAX];
	script_path(p, sizeof(p), script);
	return access(p, R_OK) == 0;
}

/* The port of the first "PORT n" line of the file: > 0, or 0 when there is none yet. */
static int port_from(const char *path)
{
	size_t len;
	char *text = th_read_file(path, &len);
	int port = 0;
	if (!text)
		return 0;
	for (char *line = text; line && *line;
	     line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
		if (!strncmp(line, "PORT ", 5)) {
			port = atoi(line + 5);
			break;
		}
	}
	free(text);
	return port > 0 && port < 65536 ? port : 0;
}

static void dump_file(const char *what, const char *path)
{
	size_t len;
	char *text = th_read_file(path, &len);
	fprintf(stderr, "---- %s (%s) ----\n%s\n---- end ----\n", what, path,
		text ? text : "(none)");
	free(text);
}

static int server_init(struct fh_server *s, enum fh_kind kind, const char *root, const char *dir)
{
	memset(s, 0, sizeof(*s));
	s->kind = kind;
	int r = th_mkdirs(dir, 0755);
	if (r < 0)
		return r;
	snprintf(s->root, sizeof(s->root), "%s", root);
	snprintf(s->state, sizeof(s->state), "%s/state", dir);
	snprintf(s->log, sizeof(s->log), "%s/requests.jsonl", dir);
	snprintf(s->out, sizeof(s->out), "%s/server.out", dir);
	return th_mkdirs(s->state, 0755);
}

int fh_nginx_start(struct fh_server *s, const char *root, const char *dir, int timeout_ms)
{
	char script[PATH_MAX];
	script_path(script, sizeof(script), "nginx.sh");
	if (access(script, R_OK) != 0)
		return -ENOENT;
	int r = server_init(s, FH_NGINX, root, dir);
	if (r < 0)
		return r;
	const char *argv[] = {"bash", script, "start", s->root, s->state, NULL};
	int st = th_run(argv, s->out, s->out, timeout_ms);
	s->port = port_from(s->out);
	if (th_exited_with(st, TH_EXIT_SKIP)) {
		dump_file("nginx.sh output", s->out);
		s->state[0] = '\0';
		return -ENOSYS;
	}
	if (!th_exited_with(st, 0) || !s->port) {
		char why[64];
		fprintf(stderr, "fault_helpers: nginx.sh start: %s, port %d\n",
			th_status_str(st, why, sizeof(why)), s->port);
		dump_file("nginx.sh output", s->out);
		fh_server_stop(s);
		return -EIO;
	}
	return 0;
}

int fh_fault_start(struct fh_server *s, const char *root, const char *dir, int timeout_ms)
{
	char script[PATH_MAX];
	script_path(script, sizeof(script), "fault_server.py");
	if (access(script, R_OK) != 0)
		return -ENOENT;
	int r = server_init(s, FH_FAULT, root, dir);
	if (r < 0)
		return r;
	const char *argv[] = {"python3", "-u", script,  "--root", s->root,
			      "--port",  "0",  "--log", s->log,   NULL};
	r = th_spawn(&s->pid, argv, s->out, s->out);
	if (r < 0) {
		s->pid = 0;
		return r;
	}
	struct th_deadline dl;
	for (th_deadline_start(&dl, timeout_ms); !(s->port = port_from(s->out)); th_pause()) {
		int status;
		if (th_wait_pid(s->pid, 0, &status) == 0) {
			char why[64];
			fprintf(stderr, "fault_helpers: fault_server.py exited: %s\n",
				th_status_str(status, why, sizeof(why)));
			s->pid = 0;
			dump_file("fault_server.py output", s->out);
			return -ECHILD;
		}
		if (th_deadline_passed(&dl)) {
			fprintf(stderr, "fault_helpers: fault_server.py printed no port\n");
			dump_file("fault_server.py output", s->out);
			fh_server_stop(s);
			return -ETIMEDOUT;
		}
	}
	return 0;
}

void fh_server_stop(struct fh_server *s)
{
	if (s->kind == FH_NGINX && s->state[0]) {
		char script[PATH_MAX];
		script_path(script, sizeof(script), "nginx.sh");
		const char *argv[] = {"bash", script, "stop", s->state, NULL};
		int st = th_run(argv, s->out, s->out, 10000);
		if (!th_exited_with(st, 0)) {
			char why[64];
			fprintf(stderr, "fault_helpers: nginx.sh stop: %s\n",
				th_status_str(st, why, sizeof(why)));
		}
		s->state[0] = '\0';
	}
	if (s->pid > 0) {
		int status;
		kill(s->pid, SIGTERM);
		if (th_wait_pid(s->pid, 5000, &status) < 0) {
			kill(s->pid, SIGKILL);
			th_wait_pid(s->pid, 5000, &status);
		}
		s->pid = 0;
	}
	s->port = 0;
}

void fh_server_url(const struct fh_server *s, char *out, size_t len)
{
	snprintf(out, len, "http://127.0.0.1:%d", s->port);
}

/* ---- the fault server's request log --------------------------------------------------------- */

/* The value of "key" in a flat JSON object: a pointer to its first character (the opening quote
 * of a string), or NULL. Good enough for the server's own lines: no nested objects with the
 * same keys. */
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
		v++;
		while (*v == ' ')
			v++;
		return v;
	}
	return NULL;
}

/* Copy a JSON string value (without escapes beyond \" and \\) into out. 0 or -EPROTO. */
static int json_string(const char *v, char *out, size_t len)
{
	size_t k = 0;
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

int fh_log_load(const char *log, struct fh_req **out, size_t *n)
{
	size_t len;
	char *text = th_read_file(log, &len);
	*out = NULL;
	*n = 0;
	if (!text) {
		if (errno == ENOENT) /* no request yet */
			return 0;
		return -errno;
	}
	size_t cap = 0;
	struct fh_req *v = NULL;
	int r = 0;
	for (char *line = text, *next; line && *line; line = next) {
		next = strchr(line, '\n');
		if (next)
			*next++ = '\0';
		if (!*line)
			continue;
		if (*n == cap) {
			cap = cap ? 2 * cap : 64;
			struct fh_req *p = realloc(v, cap * sizeof(*v));
			if (!p) {
				r = -ENOMEM;
				break;
			}
			v = p;
		}
		struct fh_req *q = &v[*n];
		memset(q, 0, sizeof(*q));
		snprintf(q->raw, sizeof(q->raw), "%s", line);
		/* "mono": CLOCK_MONOTONIC at the request's start; "t": the wall clock. */
		const char *t = json_value(line, "mono");
		if (!t)
			t = json_value(line, "t");
		if (json_string(json_value(line, "path"), q->path, sizeof(q->path)) < 0 || !t ||
		    !(isdigit((unsigned char)*t))) {
			fprintf(stderr, "fault_helpers: %s: cannot parse: %s\n", log, line);
			r = -EPROTO;
			break;
		}
		q->t = strtod(t, NULL);
		const char *te = json_value(line, "mono_end");
		q->t_end = te && isdigit((unsigned char)*te) ? strtod(te, NULL) : q->t;
		char *query = strchr(q->path, '?');
		if (query)
			*query = '\0';
		json_string(json_value(line, "outcome"), q->outcome, sizeof(q->outcome));
		const char *st = json_value(line, "status");
		q->status = st && isdigit((unsigned char)*st) ? atoi(st) : 0;
		(*n)++;
	}
	free(text);
	if (r < 0) {
		free(v);
		*n = 0;
		return r;
	}
	*out = v;
	return 0;
}

size_t fh_log_select(const struct fh_req *v, size_t n, const char *suffix,
		     const struct fh_req **out, size_t cap)
{
	size_t k = 0, sl = strlen(suffix);
	for (size_t i = 0; i < n; i++) {
		size_t pl = strlen(v[i].path);
		if (pl < sl || strcmp(v[i].path + pl - sl, suffix))
			continue;
		if (k < cap) {
			/* Insertion by start time: the log is in completion order. */
			size_t j = k;
			for (; j > 0 && out[j - 1]->t > v[i].t; j--)
				out[j] = out[j - 1];
			out[j] = &v[i];
		}
		k++;
	}
	return k;
}

/* ---- chunk descriptors ---------------------------------------------------------------------- */

int fh_desc_init(struct fh_desc *d, const struct th_chunk *ch, const char *prefix)
{
	memset(d, 0, sizeof(*d));
	if (ch->nfiles == 0 || ch->nfiles > CHUNKD_MAX_FILES)
		return -EINVAL;
	d->c.id = ch->id;
	d->c.dataset = ch->dataset;
	d->c.first_block = ch->first;
	d->c.end_block = ch->end;
	d->c.nfiles = ch->nfiles;
	d->c.files = d->files;
	for (uint32_t k = 0; k < ch->nfiles; k++) {
		snprintf(d->names[k], sizeof(d->names[k]), "%s", ch->files[k].name);
		if (snprintf(d->urls[k], sizeof(d->urls[k]), "%s/%s/%s", prefix, ch->dir,
			     ch->files[k].name) >= (int)sizeof(d->urls[k]))
			return -ENAMETOOLONG;
		d->files[k].name = d->names[k];
		d->files[k].url = d->urls[k];
	}
	return 0;
}

/* ---- checks --------------------------------------------------------------------------------- */

void fh_chunk_path(char *out, size_t len, const char *data_dir, const struct th_chunk *ch)
{
	char name[128];
	th_chunk_dir_name(name, sizeof(name), ch->first, ch->end, &ch->id);
	snprintf(out, len, "%s/chunks/%s/%s", data_dir, ch->dataset_hex, name);
}

void fh_origin_free(struct fh_origin *o)
{
	for (size_t i = 0; o->chunks && i < o->n; i++) {
		struct fh_origin_chunk *c = &o->chunks[i];
		for (uint32_t k = 0; c->data && k < c->ch->nfiles; k++)
			free(c->data[k]);
		free(c->data);
		free(c->len);
	}
	free(o->chunks);
	memset(o, 0, sizeof(*o));
}

int fh_origin_load(struct fh_origin *o, const char *root, const struct th_manifest *m)
{
	memset(o, 0, sizeof(*o));
	o->chunks = calloc(m->n ? m->n : 1, sizeof(*o->chunks));
	if (!o->chunks)
		return -ENOMEM;
	o->n = m->n;
	for (size_t i = 0; i < m->n; i++) {
		struct fh_origin_chunk *c = &o->chunks[i];
		c->ch = &m->chunks[i];
		c->data = calloc(c->ch->nfiles, sizeof(*c->data));
		c->len = calloc(c->ch->nfiles, sizeof(*c->len));
		if (!c->data || !c->len) {
			fh_origin_free(o);
			return -ENOMEM;
		}
		for (uint32_t k = 0; k < c->ch->nfiles; k++) {
			char p[PATH_MAX];
			snprintf(p, sizeof(p), "%s/%s/%s", root, c->ch->dir, c->ch->files[k].name);
			c->data[k] = (uint8_t *)th_read_file(p, &c->len[k]);
			if (!c->data[k]) {
				int e = errno;
				fprintf(stderr, "fault_helpers: %s: %s\n", p, strerror(e));
				fh_origin_free(o);
				return -e;
			}
		}
	}
	return 0;
}

const struct fh_origin_chunk *fh_origin_find(const struct fh_origin *o, const chunkd_id *id)
{
	for (size_t i = 0; i < o->n; i++)
		if (!memcmp(&o->chunks[i].ch->id, id, sizeof(*id)))
			return &o->chunks[i];
	return NULL;
}

int fh_check_dir(const char *dir, const struct fh_origin_chunk *oc, uint64_t *bytes, char *why,
		 size_t whylen)
{
	const struct th_chunk *ch = oc->ch;
	DIR *d = opendir(dir);
	if (!d) {
		snprintf(why, whylen, "%s: %s", dir, strerror(errno));
		return -1;
	}
	int dfd = dirfd(d);
	uint32_t seen = 0;
	int meta = 0, r = 0;
	struct dirent *de;
	while (r == 0 && (de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		if (!strcmp(de->d_name, CHUNKD_META_NAME)) {
			meta = 1;
			continue;
		}
		uint32_t k;
		for (k = 0; k < ch->nfiles; k++)
			if (!strcmp(ch->files[k].name, de->d_name))
				break;
		if (k == ch->nfiles) {
			snprintf(why, whylen, "%s: unexpected entry %s", dir, de->d_name);
			r = -1;
			break;
		}
		seen++;
		int fd = openat(dfd, de->d_name, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
		if (fd < 0) {
			snprintf(why, whylen, "%s/%s: %s", dir, de->d_name, strerror(errno));
			r = -1;
			break;
		}
		size_t want = oc->len[k], off = 0;
		uint8_t buf[65536];
		for (;;) {
			ssize_t got = read(fd, buf, sizeof(buf));
			if (got < 0) {
				snprintf(why, whylen, "%s/%s: read: %s", dir, de->d_name,
					 strerror(errno));
				r = -1;
				break;
			}
			if (got == 0)
				break;
			if (off + (size_t)got > want ||
			    memcmp(buf, oc->data[k] + off, (size_t)got)) {
				size_t at = off;
				while (at < want && at - off < (size_t)got &&
				       buf[at - off] == oc->data[k][at])
					at++;
				snprintf(why, whylen,
					 "%s/%s: differs from the origin at byte %zu (origin has "
					 "%zu bytes)",
					 dir, de->d_name, at, want);
				r = -1;
				break;
			}
			off += (size_t)got;
		}
		close(fd);
		if (r == 0 && off != want) {
			snprintf(why, whylen, "%s/%s: %zu bytes, the origin has %zu", dir,
				 de->d_name, off, want);
			r = -1;
		}
		if (r == 0 && bytes)
			*bytes += off;
	}
	closedir(d);
	if (r == 0 && seen != ch->nfiles) {
		snprintf(why, whylen, "%s: %u of %u files", dir, seen, ch->nfiles);
		r = -1;
	}
	if (r == 0 && !meta) {
		snprintf(why, whylen, "%s: no %s", dir, CHUNKD_META_NAME);
		r = -1;
	}
	return r;
}

/* Append the entries of data_dir/sub to why; their number, or a negative errno. */
static int list_entries(const char *data_dir, const char *sub, char *why, size_t whylen)
{
	char p[PATH_MAX];
	snprintf(p, sizeof(p), "%s/%s", data_dir, sub);
	DIR *d = opendir(p);
	if (!d)
		return errno == ENOENT ? 0 : -errno;
	int n = 0;
	struct dirent *de;
	while ((de = readdir(d))) {
		if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
			continue;
		n++;
		if (why) {
			size_t l = strlen(why);
			if (l + 1 < whylen)
				snprintf(why + l, whylen - l, " %s/%s", sub, de->d_name);
		}
	}
	closedir(d);
	return n;
}

int fh_leftovers(const char *data_dir, char *why, size_t whylen)
{
	if (why && whylen)
		why[0] = '\0';
	int a = list_entries(data_dir, "staging", why, whylen);
	if (a < 0)
		return a;
	int b = list_entries(data_dir, "trash", why, whylen);
	if (b < 0)
		return b;
	return a + b;
}

int fh_wait_no_leftovers(const char *data_dir, int timeout_ms, char *why, size_t whylen)
{
	struct th_deadline dl;
	for (th_deadline_start(&dl, timeout_ms);; th_pause()) {
		int n = fh_leftovers(data_dir, why, whylen);
		if (n == 0)
			return 0;
		if (n < 0)
			return n;
		if (th_deadline_passed(&dl))
			return -ETIMEDOUT;
	}
}

const char *fh_state_name(uint32_t state)
{
	switch (state) {
	case CHUNKD_CHUNK_ABSENT:
		return "ABSENT";
	case CHUNKD_CHUNK_QUEUED:
		return "QUEUED";
	case CHUNKD_CHUNK_DOWNLOADING:
		return "DOWNLOADING";
	case CHUNKD_CHUNK_PRESENT:
		return "PRESENT";
	case CHUNKD_CHUNK_DELETING:
		return "DELETING";
	case CHUNKD_CHUNK_FAILED:
		return "FAILED";
	default:
		return "?";
	}
}

void fh_status_str(const chunkd_chunk_status *st, char *out, size_t len)
{
	snprintf(out, len,
		 "state %s, attempts %u, last_error %d (%s), http %d, pins %u, bytes %" PRIu64
		 "/%" PRIu64 ", message \"%s\"",
		 fh_state_name(st->state), st->attempts, st->last_error,
		 st->last_error ? chunkd_strerror(st->last_error) : "-", st->http_status, st->pins,
		 st->bytes_done, st->bytes_total, st->message);
}

/* ---- the caller's own request ring ---------------------------------------------------------- */

int fh_ring_open(struct fh_ring *r, const char *name)
{
	memset(r, 0, sizeof(*r));
	struct chunkd_req_map *m = calloc(1, sizeof(*m));
	if (!m)
		return -ENOMEM;
	char err[256] = "";
	int rc = chunkd__req_attach(name, 0, m, err, sizeof(err));
	if (rc < 0) {
		fprintf(stderr, "fault_helpers: attaching to %s: %d %s\n", name, rc, err);
		free(m);
		return rc;
	}
	pid_t me = getpid();
	for (uint32_t i = 0; i < m->geom.max_clients; i++) {
		const struct chunkd_req_client *cl = chunkd__req_client(m, i);
		/* Pairs with the client library's CAS of the owner word at chunkd_open(). */
		uint64_t owner = chunkd__load_acquire(&cl->ctl.owner);
		if (owner && owner != CHUNKD_OWNER_RECLAIM && !(owner & CHUNKD_OWNER_CLOSED) &&
		    CHUNKD_OWNER_PID(owner) == me) {
			r->map = m;
			r->slot = cl;
			return 0;
		}
	}
	chunkd__req_detach(m);
	free(m);
	return -ENOENT;
}

int fh_ring_wait_taken(struct fh_ring *r, int timeout_ms)
{
	const struct chunkd_req_client *cl = r->slot;
	struct th_deadline dl;
	/* Our own tail: we wrote it, so a relaxed load sees our latest store. */
	uint64_t tail = chunkd__load_relaxed(&cl->ctl.sq_tail);
	for (th_deadline_start(&dl, timeout_ms);; th_pause()) {
		/* Pairs with the daemon's release store of sq_head after it applied the records. */
		uint64_t head = chunkd__load_acquire(&cl->d.sq_head);
		if (head == tail)
			return 0;
		if (th_deadline_passed(&dl)) {
			fprintf(stderr,
				"fault_helpers: pid %d: ring head %" PRIu64 ", tail %" PRIu64
				" after %d ms\n",
				(int)getpid(), head, tail, timeout_ms);
			return -ETIMEDOUT;
		}
	}
}

void fh_ring_close(struct fh_ring *r)
{
	if (r->map) {
		chunkd__req_detach(r->map);
		free(r->map);
	}
	memset(r, 0, sizeof(*r));
}

/* ---- finds --------------------------------------------------------------------------------- */

int fh_find(chunkd_client *c, const chunkd_id *dataset, uint64_t block, chunkd_ref *ref,
	    uint64_t *eagain)
{
	int r = chunkd_find(c, dataset, block, ref);
	for (int i = 0; r == -EAGAIN && i < FH_FIND_RETRIES; i++) {
		__atomic_fetch_add(eagain, 1, __ATOMIC_RELAXED);
		th_pause();
		r = chunkd_find(c, dataset, block, ref);
	}
	return r;
}

/* ---- processes ------------------------------------------------------------------------------ */

int fh_proc_cpu_ticks(pid_t pid, uint64_t *ticks)
{
	char p[64];
	size_t len;
	snprintf(p, sizeof(p), "/proc/%d/stat", (int)pid);
	char *text = th_read_file(p, &len);
	if (!text)
		return -errno;
	/* The command may contain spaces and parentheses: fields start after the last ')'. */
	char *s = strrchr(text, ')');
	unsigned long long ut = 0, stime = 0;
	int r = -EPROTO;
	/* After ')': state(3) ppid pgrp session tty_nr tpgid flags minflt cminflt majflt cmajflt
	 * utime(14) stime(15). */
	if (s && sscanf(s + 1, " %*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut,
			&stime) == 2) {
		*ticks = ut + stime;
		r = 0;
	}
	free(text);
	return r;
}
