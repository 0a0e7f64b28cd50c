/*
 * test_faults.c — the fault matrix: one daemon downloads single-file chunks from
 * tests/servers/fault_server.py on 127.0.0.1, each chunk's URL asking the server for one fault.
 * For every fault that persists:
 *
 *   - the ticket ends with the fault's error, and chunkd_status says FAILED with that last_error,
 *     the HTTP status when there is one, and a message naming the URL and what went wrong;
 *   - nothing is published: chunkd_find is -ENOENT at its blocks, chunkd_list leaves it out, no
 *     directory in chunks/, and staging/ empties (within a deadline);
 *   - the file was requested exactly ATTEMPTS times (the server's JSON-lines log), and the gaps
 *     between requests follow the backoff: gap k (after attempt k) is at least the jitter's lower
 *     bound min(BACKOFF << (k-1), BACKOFF_MAX) / 2, and at most that delay plus the time the
 *     failed attempt itself may take plus a scheduling tolerance.
 *
 * And a server that recovers (fails the first K < ATTEMPTS requests) ends PUBLISHED, with the
 * file byte-identical to the origin after exactly K + 1 requests.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h> /* after the four above, which it needs */

#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fault_helpers.h"
#include "harness.h"

#define ATTEMPTS       4
#define BACKOFF_MS     50
#define BACKOFF_MAX_MS 150 /* the third retry delay (200) is capped */
#define STALL_MS       1000
#define READY_MS       20000
#define WAIT_MS        60000
#define WAIT_SLICE_MS  500
#define LEFTOVER_MS    10000
#define LOG_MS         10000 /* the server logs a request within this after it completed */
#define SLACK_MS       300   /* scheduling tolerance above the largest expected gap */
#define EARLY_MS       2     /* timestamp granularity tolerance below the smallest expected gap */
#define STR_(x)        #x
#define STR(x)         STR_(x)

static const char *const gen_args[] = {"--flat", "--datasets", "1",     "--chunks", "12", "--files",
				       "1",      "--size",     "65536", "--seed",   "9",  NULL};

struct fcase {
	const char *name;
	const char *spec;  /* the fault, in fault_server.py's syntax (see fault_prefix()) */
	int err;           /* expected wait result and last_error (0: recovers and publishes) */
	int http;          /* expected http_status, 0 when the failure is not an HTTP status */
	const char *msg;   /* the cause, one of these '|'-separated words in the status message
			    * (case-insensitive) besides the file's name */
	int fail_ms;       /* how long one failed attempt may take */
	uint32_t requests; /* expected requests of the file (0: see "drop") */
};

static const struct fcase cases[] = {
    {"404", "404", -EREMOTEIO, 404, "404", 200, ATTEMPTS},
    {"500", "500", -EREMOTEIO, 500, "500", 200, ATTEMPTS},
    {"503", "503", -EREMOTEIO, 503, "503", 200, ATTEMPTS},
    /* The full Content-Length, half the body, then FIN. */
    {"truncated", "truncate", -EIO, 0, "partial|short|truncated|bytes", 200, ATTEMPTS},
    /* The full Content-Length, all but the last 10 bytes, then FIN. */
    {"short", "short", -EIO, 0, "partial|short|truncated|bytes", 200, ATTEMPTS},
    /* The full Content-Length, half the body, then RST. */
    {"reset", "reset", -ECONNRESET, 0, "reset|receiving|recv", 200, ATTEMPTS},
    /* Half the body, then nothing: the daemon gives up after --stall-timeout. */
    {"stall", "stall", -ETIMEDOUT, 0, "timeout|timed out|slow|stall", 2 * STALL_MS + 1200,
     ATTEMPTS},
    {"redirect", "redirect", -EREMOTEIO, 302, "redirect", 200, ATTEMPTS},
    /* The connection closed before any response. libcurl itself sends the request again on a
     * fresh connection when a reused keep-alive connection closes without a response (RFC 9110
     * 9.3.2 allows it for GET), so the server may see up to two requests per attempt: the
     * count is checked against [ATTEMPTS, 2 * ATTEMPTS] and the spacing is not (0 below). */
    {"drop", "drop", -ECONNRESET, 0, "nothing|closed|empty|no response", 200, 0},
    /* 503, 503, then the file. */
    {"recovers", "fail-first-2", 0, 0, "", 200, 3},
};
#define NCASES (sizeof(cases) / sizeof(cases[0]))
_Static_assert(NCASES <= 16, "room for every case's message");

static struct {
	struct th_env env;
	struct fh_server srv;
	struct fh_origin bytes;
	char www[PATH_MAX];
	char base[128];
	chunkd_client *c;
	char messages[16][sizeof(((chunkd_chunk_status *)0)->message)]; /* per case, once run */
	char urls[16][512];
} F;

static int group_setup(void **state)
{
	/* clang-format off */
	static const char *const daemon_args[] = {
		"--attempts", STR(ATTEMPTS),
		"--backoff", STR(BACKOFF_MS),
		"--backoff-max", STR(BACKOFF_MAX_MS),
		"--stall-timeout", STR(STALL_MS),
		"--connect-timeout", "2000",
		"--chunks-in-flight", "16",
		"--log-level", "debug",
		NULL};
	/* clang-format on */
	char dir[PATH_MAX];
	(void)state;
	th_require();
	if (!fh_server_available("fault_server.py")) {
		fprintf(stderr, "test_faults: tests/servers/fault_server.py missing\n");
		exit(TH_EXIT_SKIP);
	}
	if (th_env_init(&F.env, "faults") < 0)
		goto err;
	snprintf(F.www, sizeof(F.www), "%s/www", F.env.root);
	if (th_gen_chunks(F.www, F.env.manifest_json, gen_args, &F.env.man) < 0 ||
	    F.env.man.n < NCASES || fh_origin_load(&F.bytes, F.www, &F.env.man) < 0)
		goto err;
	th_env_path(&F.env, dir, sizeof(dir), "fault");
	if (fh_fault_start(&F.srv, F.www, dir, 20000) < 0)
		goto err;
	fh_server_url(&F.srv, F.base, sizeof(F.base));
	if (th_env_start(&F.env, daemon_args, READY_MS, NULL) < 0)
		goto err;
	if (chunkd_open(F.env.name, &F.c) < 0)
		goto err;
	return 0;
err:
	fh_server_stop(&F.srv);
	fh_origin_free(&F.bytes);
	th_env_fini(&F.env);
	return -1;
}

static int group_teardown(void **state)
{
	(void)state;
	chunkd_close(F.c);
	th_daemon_cleanup(&F.env.d);
	fh_server_stop(&F.srv);
	fh_origin_free(&F.bytes);
	th_env_fini(&F.env);
	return 0;
}

/* The URL prefix that makes the server apply `spec` to the files below it. */
static void fault_prefix(char *out, size_t len, const char *spec)
{
	snprintf(out, len, "%s/fault/%s", F.base, spec);
}

/* The retry delay after attempt k (1-based), before jitter. */
static uint64_t delay_ms(uint32_t k)
{
	uint64_t d = BACKOFF_MS;
	for (uint32_t i = 1; i < k && d < BACKOFF_MAX_MS; i++)
		d *= 2;
	return d < BACKOFF_MAX_MS ? d : BACKOFF_MAX_MS;
}

/*
 * The requests of the file (up to cap in sel, sorted by start; *all holds them, the caller
 * frees): their number. The server logs a request when it completes, which may be a little
 * after the daemon saw the outcome, so wait (with a deadline) until there are at least `want`.
 */
static size_t requests_of(const struct th_chunk *ch, const struct fh_req **sel, size_t cap,
			  struct fh_req **all, size_t want)
{
	char suffix[1024];
	struct th_deadline dl;
	snprintf(suffix, sizeof(suffix), "/%s/%s", ch->dir, ch->files[0].name);
	for (th_deadline_start(&dl, LOG_MS);; th_pause()) {
		size_t n;
		th_assert_ok(fh_log_load(F.srv.log, all, &n));
		size_t k = fh_log_select(*all, n, suffix, sel, cap);
		if (k >= want || th_deadline_passed(&dl))
			return k;
		free(*all);
		*all = NULL;
	}
}

/* 1 if text contains one of the '|'-separated words (case-insensitive). */
static int says(const char *text, const char *words)
{
	char w[64];
	for (const char *p = words; *p;) {
		size_t n = strcspn(p, "|");
		snprintf(w, sizeof(w), "%.*s", (int)n, p);
		if (strcasestr(text, w))
			return 1;
		p += n + (p[n] == '|');
	}
	return 0;
}

/* Fail, with the daemon's log, if the daemon is gone. */
static void daemon_alive(const char *name)
{
	if (th_daemon_running(&F.env.d))
		return;
	th_daemon_dump_log(&F.env.d);
	char why[64];
	fail_msg("%s: the daemon exited (%s); its log is above", name,
		 th_status_str(F.env.d.status, why, sizeof(why)));
}

/*
 * chunkd_wait in slices, failing at once if the daemon dies (a dead daemon posts nothing, and
 * chunkd_wait keeps waiting for a successor). -ETIMEDOUT is both the stall's final result and a
 * slice that timed out: a slice that returns before its time is a result, and so is the answer
 * for an ended ticket, which comes at once. Returns the result; *waited_ms since t0.
 */
static int wait_ticket(const char *name, uint64_t ticket, uint64_t t0, uint64_t *waited_ms)
{
	for (;;) {
		uint64_t s0 = th_now_ns();
		int r = chunkd_wait(F.c, ticket, WAIT_SLICE_MS);
		uint64_t now = th_now_ns();
		*waited_ms = (now - t0) / 1000000;
		if (r != -ETIMEDOUT || now - s0 < (uint64_t)WAIT_SLICE_MS * 1000000 ||
		    *waited_ms >= WAIT_MS)
			return r;
		daemon_alive(name);
	}
}

static void run_case(const struct fcase *fc, const struct th_chunk *ch)
{
	char prefix[256], why[FH_WHY_LEN], sts[512], path[PATH_MAX];
	struct fh_desc d;
	uint64_t ticket;
	chunkd_chunk_status st;
	daemon_alive(fc->name); /* a case after a crash fails at once */
	th_assert_ok(chunkd_status(F.c, &ch->id, &st));
	assert_int_equal(st.state, CHUNKD_CHUNK_ABSENT);
	fault_prefix(prefix, sizeof(prefix), fc->spec);
	th_assert_ok(fh_desc_init(&d, ch, prefix));
	uint64_t t0 = th_now_ns();
	th_assert_ok(chunkd_download(F.c, &d.c, &ticket));
	uint64_t waited_ms;
	int r = wait_ticket(fc->name, ticket, t0, &waited_ms);
	th_assert_ok(chunkd_status(F.c, &ch->id, &st));
	fh_status_str(&st, sts, sizeof(sts));
	size_t ci = (size_t)(fc - cases);
	if (st.state == CHUNKD_CHUNK_FAILED) {
		snprintf(F.messages[ci], sizeof(F.messages[ci]), "%s", st.message);
		snprintf(F.urls[ci], sizeof(F.urls[ci]), "%s", d.urls[0]);
	}
	if (waited_ms >= WAIT_MS)
		fail_msg("%s: chunkd_wait = %d after %" PRIu64 " ms: the ticket never ended; %s",
			 fc->name, r, waited_ms, sts);
	if (r != fc->err)
		fail_msg(
		    "%s: chunkd_wait = %d (%s), want %d (%s); %s; the origin's file has %" PRIu64
		    " bytes",
		    fc->name, r, chunkd_strerror(r), fc->err, chunkd_strerror(fc->err), sts,
		    ch->files[0].size);
	fh_chunk_path(path, sizeof(path), F.env.data_dir, ch);

	if (fc->err == 0) {
		/* Recovered: published, byte-identical, after the expected attempts, with no
		 * failure left in its status (error, HTTP status, message). */
		if (st.state != CHUNKD_CHUNK_PRESENT || st.last_error || st.http_status ||
		    st.message[0] || st.attempts != fc->requests)
			fail_msg("%s: %s; want PRESENT after %u attempts", fc->name, sts,
				 fc->requests);
		chunkd_ref ref;
		th_assert_ok(chunkd_find(F.c, &ch->dataset, ch->first, &ref));
		int same = !memcmp(&ref.id, &ch->id, sizeof(ch->id)) && !strcmp(ref.path, path);
		int bad =
		    fh_check_dir(path, fh_origin_find(&F.bytes, &ch->id), NULL, why, sizeof(why));
		chunkd_release(F.c, &ref);
		assert_true(same);
		if (bad)
			fail_msg("%s: %s", fc->name, why);
	} else {
		if (st.state != CHUNKD_CHUNK_FAILED || st.last_error != fc->err ||
		    st.attempts != ATTEMPTS || (fc->http && st.http_status != fc->http))
			fail_msg("%s: %s; want FAILED, last_error %d (%s), %d attempts, http %d",
				 fc->name, sts, fc->err, chunkd_strerror(fc->err), ATTEMPTS,
				 fc->http);
		/* Nothing published. */
		const uint64_t blocks[] = {ch->first, ch->end - 1};
		for (int k = 0; k < 2; k++) {
			chunkd_ref ref;
			r = chunkd_find(F.c, &ch->dataset, blocks[k], &ref);
			if (r == 0)
				chunkd_release(F.c, &ref);
			if (r != -ENOENT)
				fail_msg("%s: chunkd_find(%" PRIu64 ") = %d", fc->name, blocks[k],
					 r);
		}
		chunkd_id ids[64];
		size_t n = 0;
		th_assert_ok(chunkd_list(F.c, ids, 64, &n));
		for (size_t k = 0; k < n && k < 64; k++)
			if (!memcmp(&ids[k], &ch->id, sizeof(ch->id)))
				fail_msg("%s: the failed chunk is listed", fc->name);
		if (th_exists(path))
			fail_msg("%s: %s exists", fc->name, path);
	}
	if (fh_wait_no_leftovers(F.env.data_dir, LEFTOVER_MS, why, sizeof(why)) < 0)
		fail_msg("%s: leftovers after %d ms:%s", fc->name, LEFTOVER_MS, why);

	/* The server's view: the number of requests and their spacing. */
	const struct fh_req *sel[16];
	struct fh_req *all = NULL;
	size_t n = requests_of(ch, sel, 16, &all, fc->requests ? fc->requests : ATTEMPTS);
	char times[1024] = "";
	for (size_t k = 0; k < n && k < 16; k++) {
		size_t l = strlen(times);
		snprintf(times + l, sizeof(times) - l, " %.3f", sel[k]->t - sel[0]->t);
	}
	if (fc->requests ? n != fc->requests : n < ATTEMPTS || n > 2 * ATTEMPTS || n > 16) {
		free(all);
		fail_msg("%s: %zu requests of %s (at +s:%s), want %u", fc->name, n,
			 ch->files[0].name, times, fc->requests ? fc->requests : ATTEMPTS);
	}
	/* Each failed attempt ends within its allowance (the server logs when the client went). */
	for (uint32_t k = 0; fc->err && k < n; k++) {
		double took = (sel[k]->t_end - sel[k]->t) * 1000.0;
		if (took > fc->fail_ms + SLACK_MS) {
			free(all);
			fail_msg(
			    "%s: attempt %u lasted %.0f ms at the server (%s), want at most %d "
			    "(--stall-timeout %d); requests at +s:%s",
			    fc->name, k + 1, took, sel[k]->outcome, fc->fail_ms + SLACK_MS,
			    STALL_MS, times);
		}
	}
	for (uint32_t k = 1; fc->requests && k < n; k++) {
		double gap = (sel[k]->t - sel[k - 1]->t) * 1000.0;
		uint64_t dm = delay_ms(k);
		double lo = (double)(dm / 2) - EARLY_MS;
		double hi = (double)(dm + (uint64_t)fc->fail_ms + SLACK_MS);
		if (gap < lo || gap > hi) {
			free(all);
			fail_msg("%s: gap %u between requests is %.1f ms, want [%.0f, %.0f] (delay "
				 "%" PRIu64 " ms with jitter [d/2, d]); requests at +s:%s",
				 fc->name, k, gap, lo, hi, dm, times);
		}
	}
	/* A redirect is not followed: its target is never asked for. */
	if (fc->http == 302)
		for (size_t k = 0; k < n; k++)
			if (sel[k]->status && sel[k]->status != 302) {
				free(all);
				fail_msg("%s: request %zu answered %d", fc->name, k,
					 sel[k]->status);
			}
	free(all);
	fprintf(stderr, "test_faults: %s: %.1f s: %s; %zu requests at +s:%s\n", fc->name,
		(double)waited_ms / 1e3, sts, n, times);
	daemon_alive(fc->name);
}

/*
 * test_fault_messages — the status message of every failed case says what went wrong (one of the
 * case's words) and names the file, whatever the length of the URL: a chunk has up to 64 files,
 * and the message is all a user sees. Checked apart from the cases so that each case reports
 * its own behaviour.
 */
static void test_fault_messages(void **state)
{
	unsigned bad = 0, checked = 0;
	(void)state;
	for (size_t i = 0; i < NCASES; i++) {
		const struct fcase *fc = &cases[i];
		const char *name = F.env.man.chunks[i].files[0].name;
		if (!fc->err || !F.urls[i][0])
			continue; /* recovers, or the download did not fail */
		checked++;
		if (strstr(F.messages[i], name) && says(F.messages[i], fc->msg))
			continue;
		bad++;
		fprintf(stderr,
			"test_faults: %s: message \"%s\" should name %s and say one of "
			"\"%s\" (URL %s, %zu bytes)\n",
			fc->name, F.messages[i], name, fc->msg, F.urls[i], strlen(F.urls[i]));
	}
	if (bad)
		fail_msg(
		    "%u of %u failure messages do not say what went wrong to which file (printed "
		    "above)",
		    bad, checked);
}

#define CASE(i, name)                                      \
	static void test_fault_##name(void **state)        \
	{                                                  \
		(void)state;                               \
		run_case(&cases[i], &F.env.man.chunks[i]); \
	}
CASE(0, 404)
CASE(1, 500)
CASE(2, 503)
CASE(3, truncated)
CASE(4, short)
CASE(5, reset)
CASE(6, stall)
CASE(7, redirect)
CASE(8, drop)
CASE(9, recovers)
_Static_assert(NCASES == 10, "one test function per case");

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_fault_404),      cmocka_unit_test(test_fault_500),
	    cmocka_unit_test(test_fault_503),      cmocka_unit_test(test_fault_truncated),
	    cmocka_unit_test(test_fault_short),    cmocka_unit_test(test_fault_reset),
	    cmocka_unit_test(test_fault_stall),    cmocka_unit_test(test_fault_redirect),
	    cmocka_unit_test(test_fault_drop),     cmocka_unit_test(test_fault_recovers),
	    cmocka_unit_test(test_fault_messages),
	};
	/* CHUNKD_TEST_FILTER=pattern runs only the matching cases, e.g. "test_fault_stall". */
	const char *filter = getenv("CHUNKD_TEST_FILTER");
	if (filter && *filter)
		cmocka_set_test_filter(filter);
	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
