/* log.c — see log.h. Lines are written with one write(2) so that threads do not interleave. */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int chunkd__log_level = LOG_INFO;

static const char *const names[] = {"error", "warn", "info", "debug"};

int chunkd__log_parse_level(const char *s)
{
	for (int i = 0; i < 4; i++)
		if (strcmp(s, names[i]) == 0)
			return i;
	return -1;
}

void chunkd__log(int level, const char *fmt, ...)
{
	if (level > chunkd__log_level)
		return;
	char buf[1024];
	int n = snprintf(buf, sizeof(buf), "chunkd[%d]: %s: ", (int)getpid(), names[level]);
	va_list ap;
	va_start(ap, fmt);
	int m = vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
	va_end(ap);
	if (m < 0)
		m = 0;
	n += m;
	if ((size_t)n > sizeof(buf) - 2)
		n = sizeof(buf) - 2;
	buf[n++] = '\n';
	ssize_t w = write(STDERR_FILENO, buf, (size_t)n);
	(void)w;
}
