/*
 * test_shm.c — layout, naming, geometry, attach checks and process identity (shm/shm.c,
 * shm/proc.c).
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "fixture.h"

static void test_names(void **state)
{
	char out[CHUNKD_NAME_MAX + 1];
	unsetenv("CHUNKD_NAME");
	assert_int_equal(chunkd__name_resolve(NULL, out), 0);
	assert_string_equal(out, "default");
	setenv("CHUNKD_NAME", "from-env", 1);
	assert_int_equal(chunkd__name_resolve(NULL, out), 0);
	assert_string_equal(out, "from-env");
	assert_int_equal(chunkd__name_resolve("", out), 0);
	assert_string_equal(out, "from-env");
	unsetenv("CHUNKD_NAME");
	assert_int_equal(chunkd__name_resolve("a.B_9-z", out), 0);
	assert_int_equal(chunkd__name_resolve("a/b", out), -EINVAL);
	assert_int_equal(chunkd__name_resolve("a b", out), -EINVAL);
	assert_int_equal(chunkd__name_resolve("ü", out), -EINVAL);
	char longname[CHUNKD_NAME_MAX + 2];
	memset(longname, 'x', sizeof(longname) - 1);
	longname[CHUNKD_NAME_MAX + 1] = '\0';
	assert_int_equal(chunkd__name_resolve(longname, out), -EINVAL);
	longname[CHUNKD_NAME_MAX] = '\0';
	assert_int_equal(chunkd__name_resolve(longname, out), 0);
	char obj[128];
	chunkd__shm_object(obj, sizeof(obj), "x", "cat");
	assert_string_equal(obj, "/chunkd.x.cat");
}

static void test_geometry(void **state)
{
	uint32_t caps[] = {1, 7, 64, 65536, CHUNKD_LIMIT_MAX_CHUNKS};
	for (size_t i = 0; i < sizeof(caps) / sizeof(caps[0]); i++) {
		struct chunkd_cat_geom g;
		chunkd__cat_geometry(caps[i], &g);
		assert_int_equal(g.slots_off % CHUNKD_PAGE, 0);
		assert_int_equal(g.index_off[0] % CHUNKD_PAGE, 0);
		assert_int_equal(g.index_bytes % CHUNKD_PAGE, 0);
		assert_true(g.index_off[0] >= g.slots_off + (uint64_t)caps[i] * sizeof(struct chunkd_slot));
		assert_int_equal(g.index_off[1], g.index_off[0] + g.index_bytes);
		assert_int_equal(g.states_off, g.index_off[1] + g.index_bytes);
		assert_int_equal(g.states_off % CHUNKD_PAGE, 0);
		assert_true(g.size >= g.states_off + (uint64_t)caps[i] * 8);
		assert_int_equal(g.ranges_off % CHUNKD_CACHELINE, 0);
		assert_int_equal(g.ids_off % CHUNKD_CACHELINE, 0);
		assert_true(g.ranges_off >= g.ds_off + (uint64_t)caps[i] * 40);
		assert_true(g.ids_off >= g.ranges_off + (uint64_t)caps[i] * 56);
		assert_true(g.index_bytes >= g.ids_off + (uint64_t)caps[i] * 40);
	}
	struct chunkd_req_geom r;
	chunkd__req_geometry(256, &r);
	assert_int_equal(r.client_stride % CHUNKD_PAGE, 0);
	assert_true(r.client_stride >= sizeof(struct chunkd_req_client));
	assert_int_equal(r.size, CHUNKD_PAGE + 256 * r.client_stride);
	/* The format word names the version and the record sizes. */
	assert_int_equal(CHUNKD_SHM_FORMAT >> 24, CHUNKD_SHM_VERSION);
	assert_int_equal((CHUNKD_SHM_FORMAT >> 16) & 0xff, sizeof(struct chunkd_slot) / 64);
	assert_int_equal(CHUNKD_SHM_FORMAT & 0xff, sizeof(void *));
}

/* Write a catalogue object by hand, then attach to it. */
static void write_cat(const char *name, uint64_t magic, uint32_t format, uint32_t version)
{
	struct chunkd_cat_geom g;
	chunkd__cat_geometry(16, &g);
	char obj[128];
	chunkd__shm_object(obj, sizeof(obj), name, "cat");
	shm_unlink(obj);
	int fd = shm_open(obj, O_RDWR | O_CREAT, 0600);
	assert_true(fd >= 0);
	assert_int_equal(ftruncate(fd, (off_t)g.size), 0);
	struct chunkd_cat_hdr h;
	memset(&h, 0, sizeof(h));
	h.magic = magic;
	h.format = format;
	h.version = version;
	h.max_chunks = 16;
	h.size = g.size;
	h.slots_off = g.slots_off;
	h.index_off[0] = g.index_off[0];
	h.index_off[1] = g.index_off[1];
	h.index_bytes = g.index_bytes;
	assert_int_equal(pwrite(fd, &h, sizeof(h), 0), (ssize_t)sizeof(h));
	close(fd);
}

static void test_attach_checks(void **state)
{
	char name[64], obj[128], err[256];
	snprintf(name, sizeof(name), "unit-shm-%d", (int)getpid());
	chunkd__shm_object(obj, sizeof(obj), name, "cat");
	struct chunkd_cat_map m;

	assert_int_equal(chunkd__cat_attach(name, 0, &m, err, sizeof(err)), -ENOENT);
	assert_non_null(strstr(err, "no such chunkd instance"));

	write_cat(name, CHUNKD_CAT_MAGIC, CHUNKD_SHM_FORMAT, CHUNKD_SHM_VERSION);
	assert_int_equal(chunkd__cat_attach(name, 0, &m, err, sizeof(err)), 0);
	assert_int_equal(m.geom.max_chunks, 16);
	chunkd__cat_detach(&m);

	write_cat(name, CHUNKD_CAT_MAGIC, CHUNKD_SHM_FORMAT, 0);
	assert_int_equal(chunkd__cat_attach(name, 0, &m, err, sizeof(err)), -EAGAIN);

	write_cat(name, 0x1234, CHUNKD_SHM_FORMAT, CHUNKD_SHM_VERSION);
	assert_int_equal(chunkd__cat_attach(name, 0, &m, err, sizeof(err)), -EPROTO);
	assert_non_null(strstr(err, "bad magic"));

	write_cat(name, CHUNKD_CAT_MAGIC, 0x07080840u, 7);
	assert_int_equal(chunkd__cat_attach(name, 0, &m, err, sizeof(err)), -EPROTO);
	char want[64];
	snprintf(want, sizeof(want), "version 7 (format 0x07080840)");
	assert_non_null(strstr(err, want));
	snprintf(want, sizeof(want), "speaks version %u", CHUNKD_SHM_VERSION);
	assert_non_null(strstr(err, want));

	/* A header whose geometry disagrees with the object's size. */
	write_cat(name, CHUNKD_CAT_MAGIC, CHUNKD_SHM_FORMAT, CHUNKD_SHM_VERSION);
	int fd = shm_open(obj, O_RDWR, 0);
	uint32_t big = 1u << 20;
	assert_int_equal(pwrite(fd, &big, sizeof(big), offsetof(struct chunkd_cat_hdr, max_chunks)),
			 4);
	close(fd);
	assert_int_equal(chunkd__cat_attach(name, 0, &m, err, sizeof(err)), -EPROTO);
	assert_non_null(strstr(err, "geometry"));
	shm_unlink(obj);
}

static void test_owner_identity(void **state)
{
	uint64_t me = chunkd__owner_of(0);
	assert_true(me != 0);
	assert_int_equal(CHUNKD_OWNER_PID(me), getpid());
	assert_true(chunkd__owner_alive(me));
	assert_int_equal(chunkd__owner_of(getpid()), me);
	/* Same pid, another start time: a recycled pid must not pass. */
	assert_false(chunkd__owner_alive(me + (1ull << 22)));
	assert_false(chunkd__owner_alive(0));
	assert_false(chunkd__owner_alive(CHUNKD_OWNER_RECLAIM));

	int pfd[2];
	assert_int_equal(pipe(pfd), 0);
	pid_t pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		char ch;
		close(pfd[1]);
		(void)!read(pfd[0], &ch, 1); /* wait until told to exit */
		_exit(0);
	}
	close(pfd[0]);
	uint64_t child = chunkd__owner_of(pid);
	assert_true(child != 0);
	assert_true(chunkd__owner_alive(child));
	close(pfd[1]);
	/* Exited but not yet reaped: a zombie counts as dead. Wait for it with a deadline. */
	uint64_t t0 = fixture_now_ms();
	while (chunkd__owner_alive(child) && fixture_now_ms() - t0 < 10000)
		usleep(1000);
	assert_false(chunkd__owner_alive(child));
	int st;
	assert_int_equal(waitpid(pid, &st, 0), pid);
	assert_false(chunkd__owner_alive(child));
}

/* The enqueue's conditional ring (shm/shm.c): it rings only when need_wake reads 1, takes the 1,
 * and rings once for it. A header in private memory: FUTEX_WAKE without a waiter is harmless.
 * Each step: the need_wake the loop left (-1: leave the word as the last step left it), then
 * whether the call rings, and the doorbell and need_wake it leaves. */
static void test_doorbell_ring_if_idle(void **state)
{
	static struct chunkd_req_hdr hdr __attribute__((aligned(CHUNKD_PAGE)));
	static const struct {
		int set;
		int rang;
		uint32_t bell, need_wake;
	} steps[] = {
	    {0, 0, 41, 0},  /* the loop is awake: no ring, nothing written */
	    {1, 1, 42, 0},  /* it may be blocked: one ring, and the 1 is taken */
	    {-1, 0, 42, 0}, /* the next enqueue, before the loop stores 1 again: no ring */
	    {1, 1, 43, 0},  /* the loop blocked again: the next enqueue rings again */
	    {2, 0, 43, 2},  /* the word is client-writable: only 1 means "may be blocked" */
	};
	memset(&hdr, 0, sizeof(hdr));
	hdr.doorbell = 41;
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		if (steps[i].set >= 0)
			hdr.need_wake = (uint32_t)steps[i].set;
		assert_int_equal(chunkd__doorbell_ring_if_idle(&hdr), steps[i].rang);
		assert_int_equal(hdr.doorbell, steps[i].bell);
		assert_int_equal(hdr.need_wake, steps[i].need_wake);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_names),
		cmocka_unit_test(test_geometry),
		cmocka_unit_test(test_attach_checks),
		cmocka_unit_test(test_owner_identity),
		cmocka_unit_test(test_doorbell_ring_if_idle),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
