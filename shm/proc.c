/*
 * proc.c — process identity: a pid plus the process's start time, so that a recycled pid is never
 * mistaken for the process that wrote an owner word.
 */
#include "shm.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Field 22 of /proc/PID/stat: start time in clock ticks after boot. The command name (field 2) is
 * in parentheses and may contain spaces or ')', so parsing starts after the last ')'. */
static int start_ticks(pid_t pid, uint64_t *out, char *state)
{
	char path[64], buf[1024];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ssize_t n = read(fd, buf, sizeof(buf) - 1);
	int e = errno;
	close(fd);
	if (n <= 0)
		return n < 0 ? -e : -EIO;
	buf[n] = '\0';
	char *p = strrchr(buf, ')');
	if (!p)
		return -EIO;
	p++;
	/* Field 3, the state: a zombie ('Z') or dead ('X') process has exited. */
	*state = p[0] == ' ' ? p[1] : '?';
	/* After ')' come fields 3.. separated by single spaces; we want field 22. */
	for (int field = 2; field < 22; field++) {
		p = strchr(p, ' ');
		if (!p)
			return -EIO;
		p++;
	}
	char *end;
	errno = 0;
	unsigned long long v = strtoull(p, &end, 10);
	if (errno || end == p)
		return -EIO;
	*out = v;
	return 0;
}

uint64_t chunkd__owner_of(pid_t pid)
{
	if (pid == 0)
		pid = getpid();
	if (pid <= 0 || pid >= (1 << 22))
		return 0;
	uint64_t t;
	char state;
	if (start_ticks(pid, &t, &state) < 0 || state == 'Z' || state == 'X')
		return 0;
	return ((t & ((1ull << 42) - 1)) << 22) | (uint64_t)pid;
}

int chunkd__owner_alive(uint64_t owner)
{
	pid_t pid = CHUNKD_OWNER_PID(owner);
	if (owner == 0 || owner == CHUNKD_OWNER_RECLAIM || pid <= 0)
		return 0;
	if (kill(pid, 0) < 0 && errno != EPERM)
		return 0;
	return chunkd__owner_of(pid) == owner;
}
