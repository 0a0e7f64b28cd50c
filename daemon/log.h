/* log.h — the daemon's stderr logger: one line per event, "chunkd[pid]: level: message". */
#ifndef CHUNKD_DAEMON_LOG_H
#define CHUNKD_DAEMON_LOG_H

enum log_level { LOG_ERROR = 0, LOG_WARN = 1, LOG_INFO = 2, LOG_DEBUG = 3 };

extern int chunkd__log_level;

/* Parse "error", "warn", "info" or "debug"; -1 if unknown. */
int chunkd__log_parse_level(const char *s);

__attribute__((format(printf, 2, 3))) void chunkd__log(int level, const char *fmt, ...);

#define log_error(...) chunkd__log(LOG_ERROR, __VA_ARGS__)
#define log_warn(...) chunkd__log(LOG_WARN, __VA_ARGS__)
#define log_info(...) chunkd__log(LOG_INFO, __VA_ARGS__)
#define log_debug(...)                                                                           \
	do {                                                                                      \
		if (chunkd__log_level >= LOG_DEBUG)                                               \
			chunkd__log(LOG_DEBUG, __VA_ARGS__);                                      \
	} while (0)

#endif
