/*
 * dl_helpers.c — see dl_helpers.h.
 */
#include "dl_helpers.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

/* ---- origins ------------------------------------------------------------------------------ */

static void servers_path(char *out, size_t len, const char *script)
{
	snprintf(out, len, "%s/tests/servers/%s", th_source_dir(), script);
}

/* The "PORT n" line of a server's output, 0 while there is none. */
static int read_port(const char *out)
{
	char *s = th_read_file(out, NULL);
	char *p = s ? strstr(s, "PORT ") : NULL;
	int port = p && strchr(p, '\n') ? atoi(p + 5) : 0;
	free(s);
	return port;
}

int dl_nginx_start(struct dl_server *s, const char *root, const char *state)
{
	char script[PATH_MAX];
	memset(s, 0, sizeof(*s));
	servers_path(script, sizeof(script), "nginx.sh");
	int r = th_mkdirs(state, 0755);
	if (r < 0)
		return r;
	snprintf(s->state, sizeof(s->state), "%s", state);
	snprintf(s->out, sizeof(s->out), "%s/nginx.sh.out", state);
	snprintf(s->log, sizeof(s->log), "%s/access.log", state);
	const char *const argv[] = {"bash", script, "start", root, state, NULL};
	/* nginx.sh waits for nginx itself (10 s by default); this is only a backstop. */
	int st = th_run(argv, s->out, s->out, 30000);
	if (th_exited_with(st, TH_EXIT_SKIP))
		return -ENOENT;
	if (th_exited_with(st, 0))
		s->port = read_port(s->out);
	if (s->port <= 0) {
		char why[64], *out = th_read_file(s->out, NULL);
		fprintf(stderr, "dl_helpers: nginx.sh start: %s:\n%s\n",
			th_status_str(st, why, sizeof(why)), out ? out : "");
		free(out);
		dl_server_stop(s);
		return -EIO;
	}
	return 0;
}

int dl_fault_start(struct dl_server *s, const char *root, const char *dir, int timeout_ms)
{
	char script[PATH_MAX];
	struct th_deadline dl;
	memset(s, 0, sizeof(*s));
	servers_path(script, sizeof(script), "fault_server.py");
	int r = th_mkdirs(dir, 0755);
	if (r < 0)
		return r;
	snprintf(s->out, sizeof(s->out), "%s/fault_server.out", dir);
	snprintf(s->log, sizeof(s->log), "%s/fault_server.log", dir);
	pid_t parent = getpid();
	fflush(NULL);
	pid_t pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		/* Never outlive the test, even when it crashes. */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(127);
		sigset_t none;
		sigemptyset(&none);
		sigprocmask(SIG_SETMASK, &none, NULL);
		int in = open("/dev/null", O_RDONLY);
		int out = open(s->out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (in < 0 || out < 0)
			_exit(127);
		dup2(in, 0);
		dup2(out, 1);
		dup2(out, 2);
		execlp("python3", "python3", script, "--root", root, "--port", "0", "--log", s->log,
		       (char *)NULL);
		_exit(127);
	}
	s->pid = pid;
	th_deadline_start(&dl, timeout_ms);
	while ((s->port = read_port(s->out)) <= 0) {
		int st;
		if (th_wait_pid(pid, 0, &st) == 0) {
			char why[64], *out = th_read_file(s->out, NULL);
			fprintf(stderr, "dl_helpers: fault_server.py exited (%s):\n%s\n",
				th_status_str(st, why, sizeof(why)), out ? out : "");
			free(out);
			s->pid = 0;
			return -EIO;
		}
		if (th_deadline_passed(&dl)) {
			fprintf(stderr, "dl_helpers: fault_server.py printed no port in %d ms\n",
				timeout_ms);
			dl_server_stop(s);
			return -ETIMEDOUT;
		}
		th_pause();
	}
	return 0;
}

void dl_server_stop(struct dl_server *s)
{
	if (s->pid > 0) {
		kill(s->pid, SIGTERM);
		if (th_wait_pid(s->pid, 10000, NULL) < 0) {
			kill(s->pid, SIGKILL);
			th_wait_pid(s->pid, 5000, NULL);
		}
		s->pid = 0;
	} else if (s->state[0]) {
		char script[PATH_MAX];
		servers_path(script, sizeof(script), "nginx.sh");
		const char *const argv[] = {"bash", script, "stop", s->state, NULL};
		int st = th_run(argv, s->out, s->out, 30000);
		if (!th_exited_with(st, 0))
			fprintf(stderr, "dl_helpers: nginx.sh stop %s failed\n", s->state);
		s->state[0] = '\0';
	}
	s->port = 0;
}

void dl_http_prefix(char *out, size_t len, const struct dl_server *s, const char *path)
{
	snprintf(out, len, "http://127.0.0.1:%d%s", s->port, path);
}

int dl_server_requests(const struct dl_server *s, const char *needle)
{
	char *text = th_read_file(s->log, NULL);
	if (!text)
		return errno == ENOENT ? 0 : -errno;
	int n = 0;
	for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
		char *p = strstr(line, "\"path\":\"");
		char *end = p ? strchr(p + 8, '"') : NULL;
		if (end) {
			*end = '\0';
			n += strstr(p + 8, needle) != NULL;
		}
	}
	free(text);
	return n;
}

/* ---- chunk descriptors ---------------------------------------------------------------------- */

int dl_desc_init(struct dl_desc *d, const struct th_chunk *ch, const char *prefix)
{
	memset(d, 0, sizeof(*d));
	if (ch->nfiles > CHUNKD_MAX_FILES)
		return -EINVAL;
	d->c.id = ch->id;
	d->c.dataset = ch->dataset;
	d->c.first_block = ch->first;
	d->c.end_block = ch->end;
	d->c.files = d->files;
	d->c.nfiles = ch->nfiles;
	for (uint32_t k = 0; k < ch->nfiles; k++) {
		d->names[k] = strdup(ch->files[k].name);
		if (asprintf(&d->urls[k], "%s/%s/%s", prefix, ch->dir, ch->files[k].name) < 0)
			d->urls[k] = NULL;
		if (!d->names[k] || !d->urls[k]) {
			dl_desc_fini(d);
			return -ENOMEM;
		}
		d->files[k].name = d->names[k];
		d->files[k].url = d->urls[k];
	}
	return 0;
}

void dl_desc_fini(struct dl_desc *d)
{
	for (uint32_t k = 0; k < CHUNKD_MAX_FILES; k++) {
		free(d->names[k]);
		free(d->urls[k]);
		d->names[k] = d->urls[k] = NULL;
	}
}

int dl_desc_set_url(struct dl_desc *d, uint32_t k, const char *url)
{
	char *u = strdup(url);
	if (!u)
		return -ENOMEM;
	free(d->urls[k]);
	d->urls[k] = u;
	d->files[k].url = u;
	return 0;
}

uint64_t dl_chunk_bytes(const struct th_chunk *ch)
{
	uint64_t sum = 0;
	for (uint32_t k = 0; k < ch->nfiles; k++)
		sum += ch->files[k].size;
	return sum;
}

/* ---- checks of published chunks ------------------------------------------------------------- */

int dl_files_equal(const char *a, const char *b, char *why, size_t whylen)
{
	size_t la = 0, lb = 0;
	char *x = th_read_file(a, &la);
	int ea = errno;
	char *y = th_read_file(b, &lb);
	int eb = errno;
	int r = -1;
	if (!x)
		snprintf(why, whylen, "%s: %s", a, strerror(ea));
	else if (!y)
		snprintf(why, whylen, "%s: %s", b, strerror(eb));
	else if (la != lb)
		snprintf(why, whylen, "%s has %zu bytes, %s has %zu", a, la, b, lb);
	else if (memcmp(x, y, la)) {
		size_t i = 0;
		while (x[i] == y[i])
			i++;
		snprintf(why, whylen, "%s and %s differ at byte %zu of %zu", a, b, i, la);
	} else
		r = 0;
	free(x);
	free(y);
	return r;
}

int dl_check_chunk_dir(const char *dir, const char *origin, const struct th_chunk *ch, char *why,
		       size_t whylen)
{
	char a[PATH_MAX + 300], b[PATH_MAX + 600];
	DIR *d = opendir(dir);
	if (!d) {
		snprintf(why, whylen, "opendir %s: %s", dir, strerror(errno));
		return -1;
	}
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
		uint32_t k = 0;
		while (k < ch->nfiles && strcmp(ch->files[k].name, de->d_name))
			k++;
		if (k == ch->nfiles) {
			snprintf(why, whylen, "%s: unexpected entry '%s'", dir, de->d_name);
			r = -1;
		}
		seen++;
	}
	closedir(d);
	if (r < 0)
		return r;
	if (!meta || seen != ch->nfiles) {
		snprintf(why, whylen, "%s: %u of %u files%s", dir, seen, ch->nfiles,
			 meta ? "" : ", no " CHUNKD_META_NAME);
		return -1;
	}
	for (uint32_t k = 0; k < ch->nfiles; k++) {
		snprintf(a, sizeof(a), "%s/%s", dir, ch->files[k].name);
		snprintf(b, sizeof(b), "%s/%s/%s", origin, ch->dir, ch->files[k].name);
		if (dl_files_equal(a, b, why, whylen) < 0)
			return -1;
	}
	return 0;
}

/* The next line of s (advancing *pos), NUL-terminated in place; NULL at the end of the text or
 * when the last line has no newline. */
static char *next_line(char *s, size_t len, size_t *pos)
{
	if (*pos >= len)
		return NULL;
	char *start = s + *pos, *nl = memchr(start, '\n', len - *pos);
	if (!nl)
		return NULL;
	*nl = '\0';
	*pos = (size_t)(nl - s) + 1;
	return start;
}

/* A decimal u64 without sign or leading zero, the whole string. */
static int parse_dec(const char *s, uint64_t *out)
{
	if (!*s || (s[0] == '0' && s[1]) || *s < '0' || *s > '9')
		return -1;
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || *end)
		return -1;
	*out = v;
	return 0;
}

static int crc_of_file(const char *path, uint32_t *crc)
{
	size_t len = 0;
	char *buf = th_read_file(path, &len);
	if (!buf)
		return -errno;
	*crc = th_crc32c(0, buf, len);
	free(buf);
	return 0;
}

int dl_check_meta(const char *dir, const char *origin, const struct th_chunk *ch, char *why,
		  size_t whylen)
{
	char path[PATH_MAX + 300], want[200];
	size_t len = 0, pos = 0;
	snprintf(path, sizeof(path), "%s/%s", dir, CHUNKD_META_NAME);
	char *text = th_read_file(path, &len);
	if (!text) {
		snprintf(why, whylen, "%s: %s", path, strerror(errno));
		return -1;
	}
	int r = -1;
	char *line;
	uint64_t v;
	const char *fixed[6];
	char l_id[80], l_ds[80], l_first[40], l_end[40], l_files[20];
	snprintf(l_id, sizeof(l_id), "id %s", ch->id_hex);
	snprintf(l_ds, sizeof(l_ds), "dataset %s", ch->dataset_hex);
	snprintf(l_first, sizeof(l_first), "first_block %" PRIu64, ch->first);
	snprintf(l_end, sizeof(l_end), "end_block %" PRIu64, ch->end);
	snprintf(l_files, sizeof(l_files), "files %u", ch->nfiles);
	fixed[0] = "chunkd-meta 1";
	fixed[1] = l_id;
	fixed[2] = l_ds;
	fixed[3] = l_first;
	fixed[4] = l_end;
	fixed[5] = l_files;
	for (int i = 0; i < 6; i++) {
		line = next_line(text, len, &pos);
		if (!line || strcmp(line, fixed[i])) {
			snprintf(why, whylen, "%s line %d: '%s', want '%s'", path, i + 1,
				 line ? line : "(missing)", fixed[i]);
			goto out;
		}
	}
	for (uint32_t k = 0; k < ch->nfiles; k++) {
		const struct th_file *f = &ch->files[k];
		char origin_file[PATH_MAX + 600];
		uint32_t crc = 0;
		line = next_line(text, len, &pos);
		/* "file SIZE CRC NAME": the name is the rest of the line after the third space. */
		char *s1 = line ? strchr(line, ' ') : NULL;
		char *s2 = s1 ? strchr(s1 + 1, ' ') : NULL;
		char *s3 = s2 ? strchr(s2 + 1, ' ') : NULL;
		if (!s3 || strncmp(line, "file ", 5)) {
			snprintf(why, whylen, "%s file line %u: '%s'", path, k, line ? line : "");
			goto out;
		}
		*s2 = *s3 = '\0';
		if (parse_dec(s1 + 1, &v) < 0 || v != f->size) {
			snprintf(why, whylen, "%s: file %s has size '%s', want %" PRIu64, path,
				 f->name, s1 + 1, f->size);
			goto out;
		}
		if (strcmp(s3 + 1, f->name)) {
			snprintf(why, whylen, "%s file line %u: name '%s', want '%s'", path, k,
				 s3 + 1, f->name);
			goto out;
		}
		snprintf(origin_file, sizeof(origin_file), "%s/%s/%s", origin, ch->dir, f->name);
		int e = crc_of_file(origin_file, &crc);
		if (e < 0) {
			snprintf(why, whylen, "%s: %s", origin_file, strerror(-e));
			goto out;
		}
		/* The daemon computes the CRC of every byte it downloads, so it is never "-". */
		snprintf(want, sizeof(want), "%08" PRIx32, crc);
		if (strcmp(s2 + 1, want)) {
			snprintf(why, whylen, "%s: file %s has CRC '%s', want %s", path, f->name,
				 s2 + 1, want);
			goto out;
		}
	}
	line = next_line(text, len, &pos);
	if (!line || strcmp(line, "end") || pos != len) {
		snprintf(why, whylen,
			 "%s: '%s' and %zu more bytes where \"end\" and nothing else "
			 "should be",
			 path, line ? line : "(missing)", len - pos);
		goto out;
	}
	r = 0;
out:
	free(text);
	return r;
}

void dl_chunk_path(char *out, size_t len, const char *data_dir, const struct th_chunk *ch)
{
	char name[128];
	th_chunk_dir_name(name, sizeof(name), ch->first, ch->end, &ch->id);
	snprintf(out, len, "%s/chunks/%s/%s", data_dir, ch->dataset_hex, name);
}

int dl_check_published(chunkd_client *c, const char *data_dir, const char *origin,
		       const struct th_chunk *ch, int pins, char *why, size_t whylen)
{
	char path[PATH_MAX];
	const uint64_t blocks[2] = {ch->first, ch->end - 1};
	dl_chunk_path(path, sizeof(path), data_dir, ch);
	for (int k = 0; k < 2; k++) {
		chunkd_ref ref;
		memset(&ref, 0, sizeof(ref));
		int r = chunkd_find(c, &ch->dataset, blocks[k], &ref);
		if (r < 0) {
			snprintf(why, whylen,
				 "chunk %.16s: chunkd_find(block %" PRIu64 ") = %d (%s)",
				 ch->id_hex, blocks[k], r, chunkd_strerror(r));
			return -1;
		}
		int same = !memcmp(&ref.id, &ch->id, sizeof(ch->id)) &&
			   !memcmp(&ref.dataset, &ch->dataset, sizeof(ch->dataset)) &&
			   ref.first_block == ch->first && ref.end_block == ch->end && ref.path &&
			   !strcmp(ref.path, path);
		if (!same) {
			char got[2 * CHUNKD_ID_SIZE + 1];
			th_hex(&ref.id, got);
			snprintf(why, whylen,
				 "chunk %.16s block %" PRIu64 ": found %.16s [%" PRIu64 ", %" PRIu64
				 ") at %s, want [%" PRIu64 ", %" PRIu64 ") at %s",
				 ch->id_hex, blocks[k], got, ref.first_block, ref.end_block,
				 ref.path ? ref.path : "(null)", ch->first, ch->end, path);
			chunkd_release(c, &ref);
			return -1;
		}
		/* Read the files while the pin holds them. */
		r = k == 0 ? dl_check_chunk_dir(ref.path, origin, ch, why, whylen) : 0;
		if (r == 0 && k == 0)
			r = dl_check_meta(ref.path, origin, ch, why, whylen);
		chunkd_release(c, &ref);
		if (r < 0)
			return -1;
	}
	chunkd_chunk_status st;
	int r = chunkd_status(c, &ch->id, &st);
	uint64_t bytes = dl_chunk_bytes(ch);
	if (r < 0) {
		snprintf(why, whylen, "chunk %.16s: chunkd_status = %d (%s)", ch->id_hex, r,
			 chunkd_strerror(r));
		return -1;
	}
	if (st.state != CHUNKD_CHUNK_PRESENT || st.nfiles != ch->nfiles ||
	    st.first_block != ch->first || st.end_block != ch->end ||
	    memcmp(&st.dataset, &ch->dataset, sizeof(ch->dataset)) || st.bytes_done != bytes ||
	    st.bytes_total != bytes || st.last_error != 0 || st.message[0] != '\0' ||
	    (pins >= 0 && st.pins != (uint32_t)pins)) {
		snprintf(why, whylen,
			 "chunk %.16s: status %s nfiles %u [%" PRIu64 ", %" PRIu64
			 ") bytes %" PRIu64 "/%" PRIu64 " error %d '%s' pins %u; want PRESENT, %u "
			 "files, [%" PRIu64 ", %" PRIu64 "), %" PRIu64 "/%" PRIu64
			 " bytes, no error, "
			 "%d pins",
			 ch->id_hex, dl_state_name(st.state), st.nfiles, st.first_block,
			 st.end_block, st.bytes_done, st.bytes_total, st.last_error, st.message,
			 st.pins, ch->nfiles, ch->first, ch->end, bytes, bytes, pins);
		return -1;
	}
	return 0;
}

/* ---- waiting -------------------------------------------------------------------------------- */

int dl_wait_gone(const char *path, int timeout_ms)
{
	struct th_deadline dl;
	th_deadline_start(&dl, timeout_ms);
	while (th_exists(path)) {
		if (th_deadline_passed(&dl))
			return th_exists(path) ? -ETIMEDOUT : 0;
		th_pause();
	}
	return 0;
}

static void print_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	fprintf(stderr, "dl_helpers: %s still holds:", dir);
	while (d && (de = readdir(d)))
		if (strcmp(de->d_name, ".") && strcmp(de->d_name, ".."))
			fprintf(stderr, " %s", de->d_name);
	fprintf(stderr, "\n");
	if (d)
		closedir(d);
}

int dl_wait_empty_dir(const char *dir, int timeout_ms)
{
	struct th_deadline dl;
	th_deadline_start(&dl, timeout_ms);
	for (;;) {
		int n = th_count_entries(dir);
		if (n == 0)
			return 0;
		if (n < 0) {
			fprintf(stderr, "dl_helpers: %s: %s\n", dir, strerror(-n));
			return n;
		}
		if (th_deadline_passed(&dl)) {
			print_entries(dir);
			return -ETIMEDOUT;
		}
		th_pause();
	}
}

int dl_wait_state(chunkd_client *c, const chunkd_id *id, uint32_t state, int timeout_ms,
		  chunkd_chunk_status *st)
{
	struct th_deadline dl;
	th_deadline_start(&dl, timeout_ms);
	for (;;) {
		int r = chunkd_status(c, id, st);
		if (r < 0 && r != -EAGAIN)
			return r;
		if (r == 0 && st->state == state)
			return 0;
		if (th_deadline_passed(&dl))
			return -ETIMEDOUT;
		th_pause();
	}
}

const char *dl_state_name(uint32_t state)
{
	static const char *const names[] = {"ABSENT",  "QUEUED",   "DOWNLOADING",
					    "PRESENT", "DELETING", "FAILED"};
	return state < sizeof(names) / sizeof(names[0]) ? names[state] : "?";
}
