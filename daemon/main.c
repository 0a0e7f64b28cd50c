/*
 * main.c — the chunkd daemon: options, start-up (locks, segments, scan), the event loop, stop.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "catalog.h"
#include "engine.h"
#include "instance.h"
#include "log.h"
#include "loop.h"
#include "shm/atomics.h"
#include "store.h"

static const char usage[] =
	"Usage: chunkd --data-dir DIR [OPTION]...\n"
	"Keep chunks of blockchain data on local disk and publish them to worker processes\n"
	"through shared memory (see include/chunkd.h for the client API).\n"
	"\n"
	"  -d, --data-dir DIR       where chunks live (created if missing); one daemon per dir\n"
	"  -n, --name NAME          instance name, the key clients open (default: $CHUNKD_NAME,\n"
	"                           else \"default\"); 1-64 bytes of [A-Za-z0-9._-]\n"
	"      --max-chunks N       catalogue capacity (default 65536)\n"
	"      --max-clients N      client slots (default 64)\n"
	"      --scan-threads N     threads for the start-up scan (default: 2 x online CPUs)\n"
	"\n"
	"Download policy:\n"
	"      --chunks-in-flight N chunks downloading at once (default 4)\n"
	"      --transfers N        file transfers at once (default 16)\n"
	"      --connect-timeout MS connect timeout (default 10000)\n"
	"      --stall-timeout MS   abort a transfer below 1 KiB/s for this long (default 30000)\n"
	"      --attempts N         attempts per file before the chunk fails (default 5)\n"
	"      --backoff MS         first retry delay, doubled per attempt, with jitter (100)\n"
	"      --backoff-max MS     cap of the retry delay (default 10000)\n"
	"      --buffers N          256 KiB write buffers (default 64)\n"
	"      --checkpoint MIB     fdatasync and record a resume point every MIB (default 16)\n"
	"\n"
	"  -l, --log-level LEVEL    error, warn, info (default) or debug\n"
	"  -h, --help               show this help and exit\n"
	"  -V, --version            show the version and exit\n"
	"\n"
	"Runs in the foreground and logs to stderr. SIGTERM or SIGINT stops it (exit status 0);\n"
	"the shared-memory segments stay, so attached workers keep the last catalogue.\n"
	"Exit status: 0 stopped by a signal, 1 start-up failed, 2 bad usage.\n"
	"Shared memory: /dev/shm/chunkd.NAME.{cat,req,lock}. On-disk layout: docs/on-disk.md.\n";

static int parse_u32(const char *opt, const char *s, uint32_t min, uint32_t max, uint32_t *out)
{
	char *end;
	errno = 0;
	unsigned long long v = strtoull(s, &end, 10);
	if (errno || end == s || *end || s[0] == '-' || v < min || v > max) {
		fprintf(stderr, "chunkd: %s: '%s' is not a number in [%u, %u]\n", opt, s, min, max);
		return -1;
	}
	*out = (uint32_t)v;
	return 0;
}

struct ready_ctx {
	struct instance *in;
	struct scan_stats *st;
	struct timespec *t0;
};

/* Called by the loop once the disk scan, the journal replay and the first index publication are
 * done: only then does the instance say READY. */
static void on_ready(void *arg)
{
	struct ready_ctx *rc = arg;
	struct instance *in = rc->in;
	struct scan_stats *st = rc->st;
	struct timespec t1;
	/* Pairs with acquire loads of state by clients and tools (chunkd_info, chunkd-dump). */
	chunkd__store_release(&in->cat.hdr->state, (uint32_t)CHUNKD_STATE_READY);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	double ms = (double)(t1.tv_sec - rc->t0->tv_sec) * 1e3 +
		    (double)(t1.tv_nsec - rc->t0->tv_nsec) / 1e6;
	log_info("ready: instance '%s', data dir %s: %u chunks in %u datasets (%.1f GB), %u "
		 "malformed skipped, %u overlapping skipped, %u leftovers purged, %u stale slots "
		 "dropped, in %.0f ms",
		 in->name, in->data_dir, st->published, st->datasets, (double)st->bytes / 1e9,
		 st->skipped, st->overlaps, st->purged, st->dropped, ms);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"data-dir", required_argument, NULL, 'd'},
		{"name", required_argument, NULL, 'n'},
		{"max-chunks", required_argument, NULL, 'C'},
		{"max-clients", required_argument, NULL, 'K'},
		{"scan-threads", required_argument, NULL, 'T'},
		{"log-level", required_argument, NULL, 'l'},
		{"chunks-in-flight", required_argument, NULL, 1001},
		{"transfers", required_argument, NULL, 1002},
		{"connect-timeout", required_argument, NULL, 1003},
		{"stall-timeout", required_argument, NULL, 1004},
		{"attempts", required_argument, NULL, 1005},
		{"backoff", required_argument, NULL, 1006},
		{"backoff-max", required_argument, NULL, 1007},
		{"buffers", required_argument, NULL, 1008},
		{"checkpoint", required_argument, NULL, 1009},
		{"help", no_argument, NULL, 'h'},
		{"version", no_argument, NULL, 'V'},
		{NULL, 0, NULL, 0},
	};
	const char *data_dir = NULL, *name = NULL;
	uint32_t max_chunks = CHUNKD_DEFAULT_MAX_CHUNKS, max_clients = CHUNKD_DEFAULT_MAX_CLIENTS;
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN);
	uint32_t scan_threads = ncpu > 0 ? (uint32_t)(2 * ncpu) : 2;
	struct engine_config cfg;
	chunkd__engine_default_config(&cfg);
	int c, lidx;
	while ((c = getopt_long(argc, argv, "d:n:l:hV", opts, &lidx)) != -1) {
		uint32_t *target = NULL, lo = 1, hi = 1000000;
		switch (c) {
		case 1001:
			target = &cfg.chunks_in_flight;
			hi = 1024;
			break;
		case 1002:
			target = &cfg.transfers;
			hi = 4096;
			break;
		case 1003:
			target = &cfg.connect_timeout_ms;
			lo = 100;
			hi = 600000;
			break;
		case 1004:
			target = &cfg.stall_timeout_ms;
			lo = 1000;
			hi = 3600000;
			break;
		case 1005:
			target = &cfg.attempts;
			hi = 1000;
			break;
		case 1006:
			target = &cfg.backoff_ms;
			hi = 3600000;
			break;
		case 1007:
			target = &cfg.backoff_max_ms;
			hi = 3600000;
			break;
		case 1008:
			target = &cfg.buffers;
			lo = 2;
			hi = 65536;
			break;
		case 1009:
			target = &cfg.checkpoint_mb;
			hi = 65536;
			break;
		case 'd':
			data_dir = optarg;
			break;
		case 'n':
			name = optarg;
			break;
		case 'C':
			if (parse_u32("--max-chunks", optarg, 1, CHUNKD_LIMIT_MAX_CHUNKS, &max_chunks))
				return 2;
			break;
		case 'K':
			if (parse_u32("--max-clients", optarg, 1, CHUNKD_LIMIT_MAX_CLIENTS,
				      &max_clients))
				return 2;
			break;
		case 'T':
			if (parse_u32("--scan-threads", optarg, 1, 64, &scan_threads))
				return 2;
			break;
		case 'l':
			chunkd__log_level = chunkd__log_parse_level(optarg);
			if (chunkd__log_level < 0) {
				fprintf(stderr, "chunkd: --log-level: '%s' is not error, warn, info "
						"or debug\n", optarg);
				return 2;
			}
			break;
		case 'h':
			fputs(usage, stdout);
			return 0;
		case 'V':
			printf("chunkd %d.%d.%d (shared-memory layout %u)\n", CHUNKD_VERSION_MAJOR,
			       CHUNKD_VERSION_MINOR, CHUNKD_VERSION_PATCH, CHUNKD_SHM_VERSION);
			return 0;
		default:
			fputs("Try 'chunkd --help'.\n", stderr);
			return 2;
		}
		if (target) {
			char opt[64];
			snprintf(opt, sizeof(opt), "--%s", opts[lidx].name);
			if (parse_u32(opt, optarg, lo, hi, target))
				return 2;
		}
	}
	if (cfg.backoff_max_ms < cfg.backoff_ms)
		cfg.backoff_max_ms = cfg.backoff_ms;
	if (optind < argc) {
		fprintf(stderr, "chunkd: unexpected argument '%s'\nTry 'chunkd --help'.\n",
			argv[optind]);
		return 2;
	}
	if (!data_dir) {
		fputs("chunkd: --data-dir is required\nTry 'chunkd --help'.\n", stderr);
		return 2;
	}

	/* Signals are taken through a signalfd in the loop; block them in every thread first. */
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	pthread_sigmask(SIG_BLOCK, &set, NULL);
	signal(SIGPIPE, SIG_IGN);

	struct timespec t0;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	struct instance in;
	if (chunkd__instance_open(&in, name, data_dir, max_chunks, max_clients) < 0)
		return 1;
	struct catalog cat;
	if (chunkd__catalog_init(&cat, &in.cat, &in.req) < 0) {
		log_error("out of memory for a catalogue of %u chunks", max_chunks);
		chunkd__instance_close(&in);
		return 1;
	}
	struct scan_stats st;
	memset(&st, 0, sizeof(st));
	/* The engine starts replaying the request journal in a thread while chunks/ is scanned. */
	struct engine *eng = NULL;
	if (chunkd__store_prepare(&in, &st) < 0 || chunkd__engine_prepare(&in, &cat, &cfg, &eng) < 0 ||
	    chunkd__store_scan(&in, &cat, scan_threads, &st) < 0) {
		chunkd__engine_destroy(eng);
		chunkd__catalog_free_all(&cat);
		chunkd__instance_close(&in);
		return 1;
	}
	struct ready_ctx rc = {&in, &st, &t0};
	int r = chunkd__loop_run(&in, &cat, eng, on_ready, &rc);
	chunkd__catalog_free_all(&cat);
	chunkd__instance_close(&in);
	log_info("stopped");
	return r < 0 ? 1 : 0;
}
