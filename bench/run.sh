#!/usr/bin/env bash
# bench/run.sh — run chunkd's benchmarks and print one table of results.
#
# 1. Build chunkd and the benchmark programs (unless --no-build).
# 2. Generate the data once and cache it under BUILD/bench-data/, keyed by the parameters:
#    the data dir of --chunks small chunks (gen-chunks.py), the web root of the download
#    benchmark (gen-chunks.py --flat), and a copy of the data dir (hard links) with a request
#    journal made by bench-journal-gen.
# 3. bench-start: exec chunkd on the data dir several times, exec -> READY.
# 4. Start one daemon (instance bench-PID), run bench-lookup against it, stop it with SIGTERM.
# 5. bench-download: chunkd, curl --parallel, aria2c and cp -r moving the web root's files from a
#    local nginx (or the disk) to the disk, each made durable, and the floor method (splice from
#    the socket into the files), the reference for the daemon's CPU target.
# 6. bench-request: chunkd_download() enqueue cost and request latencies against a daemon of
#    its own, beside a Unix-socket round trip.
# 7. bench-start --journal: READY and journal replay rate with the journal's 1M records.
# 8. Print the machine, the command and the table; keep every output in BUILD/bench-results/.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD=$ROOT/build
CHUNKS=100000
DATASETS=1000
FILES=1
SIZE=64
SEED=1
QUERIES=1000000
REPS=11
RUNS=5
MAX_CHUNKS=131072
DL_CHUNKS=100
DL_FILES=5
DL_SIZE=1600000
DL_REPS=3
REQ_ITERS=50000
REQ_PASSES=7
REQ_LATENCY=2000
JOURNAL_RECORDS=1000000
ALL_BENCHES="start lookup download request journal"
ONLY=$ALL_BENCHES
DO_BUILD=1
STRICT=()

usage() {
	cat <<EOF
Usage: bench/run.sh [OPTION]...
Run the chunkd benchmarks on generated data and print one table.

  --only LIST       comma-separated subset of: ${ALL_BENCHES// /,}
                    (default: all; "journal" is bench-start with a request journal)
  --build-dir DIR   CMake build directory (default: $ROOT/build)
  --no-build        use the binaries already in the build directory
  --strict          exit non-zero when a target is missed
  -h, --help        show this help and exit

start, lookup, journal:
  --chunks N        chunks to generate (default $CHUNKS)
  --datasets N      datasets they are spread over (default $DATASETS)
  --files N         files per chunk (default $FILES)
  --size N          bytes per file (default $SIZE)
  --seed N          generator and query seed (default $SEED)
  --queries N       bench-lookup queries per pass (default $QUERIES)
  --reps N          bench-lookup passes per method (default $REPS)
  --runs N          bench-start daemon starts (default $RUNS; the first is not counted as warm)
  --journal-records N   records in the journal of the "journal" start (default $JOURNAL_RECORDS)
download:
  --dl-chunks N     chunks in the web root (default $DL_CHUNKS)
  --dl-files N      files per chunk (default $DL_FILES)
  --dl-size N       bytes per file (default $DL_SIZE)
  --dl-reps N       repetitions of every method (default $DL_REPS)
request:
  --req-iters N     enqueues (and socket round trips) per pass (default $REQ_ITERS)
  --req-passes N    passes (default $REQ_PASSES)
  --req-latency N   requests per latency figure (default $REQ_LATENCY)

Data is cached under BUILD/bench-data/ (delete an entry to regenerate it):
  c<chunks>-d<datasets>-f<files>-s<size>-seed<seed>            data dir (start, lookup)
  web-c<n>-d4-f<files>-s<size>-seed<seed>                     web root (download)
  c...-seed<seed>-journal and c...-seed<seed>-journal-<n>.journal   data dir + journal (journal)
Outputs go to BUILD/bench-results/<date>/; temporary files to BUILD/bench-work/ (removed).
Needs python3; download also nginx, curl and aria2c (scripts/deps.sh).
EOF
}

num() {
	[[ $2 =~ ^[0-9]+$ ]] || { echo "bench/run.sh: $1: '$2' is not a number" >&2; exit 2; }
	echo "$2"
}

CMDLINE="bench/run.sh${*:+ $*}"
while [[ $# -gt 0 ]]; do
	case $1 in
	--only)
		ONLY=${2//,/ }
		for b in $ONLY; do
			[[ " $ALL_BENCHES " == *" $b "* ]] ||
				{ echo "bench/run.sh: --only: unknown benchmark '$b'" >&2; exit 2; }
		done
		shift
		;;
	--build-dir) BUILD=$(realpath -m "$2"); shift ;;
	--no-build) DO_BUILD=0 ;;
	--chunks) CHUNKS=$(num "$1" "$2"); shift ;;
	--datasets) DATASETS=$(num "$1" "$2"); shift ;;
	--files) FILES=$(num "$1" "$2"); shift ;;
	--size) SIZE=$(num "$1" "$2"); shift ;;
	--seed) SEED=$(num "$1" "$2"); shift ;;
	--queries) QUERIES=$(num "$1" "$2"); shift ;;
	--reps) REPS=$(num "$1" "$2"); shift ;;
	--runs) RUNS=$(num "$1" "$2"); shift ;;
	--journal-records) JOURNAL_RECORDS=$(num "$1" "$2"); shift ;;
	--dl-chunks) DL_CHUNKS=$(num "$1" "$2"); shift ;;
	--dl-files) DL_FILES=$(num "$1" "$2"); shift ;;
	--dl-size) DL_SIZE=$(num "$1" "$2"); shift ;;
	--dl-reps) DL_REPS=$(num "$1" "$2"); shift ;;
	--req-iters) REQ_ITERS=$(num "$1" "$2"); shift ;;
	--req-passes) REQ_PASSES=$(num "$1" "$2"); shift ;;
	--req-latency) REQ_LATENCY=$(num "$1" "$2"); shift ;;
	--strict) STRICT=(--strict) ;;
	-h | --help) usage; exit 0 ;;
	*) echo "bench/run.sh: unknown option '$1'" >&2; echo "Try 'bench/run.sh --help'." >&2; exit 2 ;;
	esac
	shift
done
[[ $CHUNKS -lt $MAX_CHUNKS ]] || MAX_CHUNKS=$((CHUNKS + 1024))

want() { [[ " $ONLY " == *" $1 "* ]]; }

BIN=$BUILD/bin
WORK=$BUILD/bench-work
NAME=bench-$$
NAME_START=bench-$$-start
DAEMON_PID=

# shellcheck disable=SC2317 # called through the EXIT trap
cleanup() {
	if [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null; then
		kill -KILL "$DAEMON_PID" 2>/dev/null || true
		wait "$DAEMON_PID" 2>/dev/null || true
	fi
	rm -f /dev/shm/chunkd."$NAME".{cat,req,lock} /dev/shm/chunkd."$NAME_START".{cat,req,lock}
	rmdir "$WORK" 2>/dev/null || true
}
trap cleanup EXIT

PROGS=(chunkd)
want start || want journal && PROGS+=(bench-start)
want lookup && PROGS+=(bench-lookup)
want download && PROGS+=(bench-download)
want request && PROGS+=(bench-request)
want journal && PROGS+=(bench-journal-gen)
if [[ $DO_BUILD == 1 ]]; then
	if [[ ! -f $BUILD/CMakeCache.txt ]]; then
		cmake -S "$ROOT" -B "$BUILD" -DCHUNKD_WERROR=ON >/dev/null
	fi
	cmake --build "$BUILD" -j2 --target "${PROGS[@]}" >/dev/null
fi
for b in "${PROGS[@]}"; do
	[[ -x $BIN/$b ]] || { echo "bench/run.sh: $BIN/$b is missing (build it first)" >&2; exit 3; }
done
if want download; then
	for t in nginx curl aria2c; do
		p=$t
		[[ $t == nginx ]] && p=${NGINX:-/usr/sbin/nginx}
		command -v "$p" >/dev/null || {
			echo "bench/run.sh: $t is missing (scripts/deps.sh installs it)" >&2
			exit 3
		}
	done
fi
mkdir -p "$WORK"

# Other work on the machine skews every figure; the summary shows the load around the run.
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$BUILD/bench-results/$STAMP
mkdir -p "$OUT"

# ---- data --------------------------------------------------------------------------------------
# generate DIR DESCRIPTION GEN-ARGS...: run gen-chunks.py into DIR unless DIR.complete exists.
# The marker is written last, so an interrupted generation is redone from scratch.
generate() {
	local dir=$1 what=$2
	shift 2
	if [[ -e $dir.complete ]]; then
		echo "using cached $what $dir"
		return
	fi
	echo "generating $what into $dir ..."
	rm -rf "$dir" "$dir.manifest.json"
	mkdir -p "$(dirname "$dir")"
	local t0 t1
	t0=$(date +%s%N)
	python3 "$ROOT/scripts/gen-chunks.py" --out "$dir" "$@" --manifest "$dir.manifest.json"
	t1=$(date +%s%N)
	touch "$dir.complete"
	echo "generated in $(((t1 - t0) / 1000000)) ms"
}

DATA=$BUILD/bench-data/c$CHUNKS-d$DATASETS-f$FILES-s$SIZE-seed$SEED
if want start || want lookup || want journal; then
	generate "$DATA" "data dir ($CHUNKS chunks)" --datasets "$DATASETS" --chunks "$CHUNKS" \
		--files "$FILES" --size "$SIZE" --seed "$SEED"
fi
WEB=$BUILD/bench-data/web-c$DL_CHUNKS-d4-f$DL_FILES-s$DL_SIZE-seed$SEED
if want download; then
	generate "$WEB" "web root ($DL_CHUNKS chunks x $DL_FILES files x $DL_SIZE B)" --flat \
		--datasets 4 --chunks "$DL_CHUNKS" --files "$DL_FILES" --size "$DL_SIZE" \
		--seed "$SEED"
fi
DATA_J=$DATA-journal
JOURNAL=$DATA_J-$JOURNAL_RECORDS.journal
if want journal; then
	# The same chunks, hard-linked (files are never written after publication), in a data dir
	# of its own: its journal never disturbs the start figures of the plain data dir. The lock
	# file and the journal get inodes of their own.
	if [[ ! -e $DATA_J.complete ]]; then
		echo "linking $DATA_J from $DATA ..."
		rm -rf "$DATA_J"
		cp -al "$DATA" "$DATA_J"
		rm -f "$DATA_J/chunkd.lock" "$DATA_J/journal" "$DATA_J/journal.tmp"
		touch "$DATA_J.complete"
	fi
	if [[ ! -e $JOURNAL.complete ]]; then
		rm -f "$JOURNAL"
		"$BIN/bench-journal-gen" --data-dir "$DATA_J" --out "$JOURNAL" \
			--records "$JOURNAL_RECORDS" --seed "$SEED"
		touch "$JOURNAL.complete"
	else
		echo "using cached journal $JOURNAL"
	fi
fi

# Exit status 1 of a benchmark means "a target was missed" (with --strict): finish the table first.
MISSED=0
check_status() {
	case $1 in
	0) ;;
	1) MISSED=1 ;;
	*) echo "bench/run.sh: $2 failed with status $1" >&2; exit "$1" ;;
	esac
}

# ---- start -------------------------------------------------------------------------------------
if want start; then
	echo
	rc=0
	"$BIN/bench-start" --data-dir "$DATA" --chunkd "$BIN/chunkd" --name "$NAME_START" \
		--runs "$RUNS" --max-chunks "$MAX_CHUNKS" --expect-chunks "$CHUNKS" "${STRICT[@]}" |
		tee "$OUT/start.txt" || rc=$?
	check_status "$rc" bench-start
fi

# ---- lookup ------------------------------------------------------------------------------------
if want lookup; then
	echo
	"$BIN/chunkd" --data-dir "$DATA" --name "$NAME" --max-chunks "$MAX_CHUNKS" \
		2>"$OUT/daemon.log" &
	DAEMON_PID=$!
	# bench-lookup waits for READY itself, with a deadline.
	rc=0
	"$BIN/bench-lookup" --name "$NAME" --data-dir "$DATA" --queries "$QUERIES" --reps "$REPS" \
		--seed "$SEED" "${STRICT[@]}" | tee "$OUT/lookup.txt" || rc=$?
	check_status "$rc" bench-lookup
	kill -TERM "$DAEMON_PID"
	# A deadline for the daemon's exit: a watchdog kills it if SIGTERM is not enough.
	(sleep 30 && kill -KILL "$DAEMON_PID" 2>/dev/null) &
	WATCHDOG=$!
	rc=0
	wait "$DAEMON_PID" || rc=$?
	kill "$WATCHDOG" 2>/dev/null || true
	wait "$WATCHDOG" 2>/dev/null || true
	DAEMON_PID=
	rm -f /dev/shm/chunkd."$NAME".{cat,req,lock}
	if [[ $rc != 0 ]]; then
		echo "bench/run.sh: the lookup daemon exited with status $rc after SIGTERM; its log:" >&2
		cat "$OUT/daemon.log" >&2
		exit 3
	fi
fi

# ---- download ----------------------------------------------------------------------------------
if want download; then
	echo
	rc=0
	"$BIN/bench-download" --web-root "$WEB" --work "$WORK" --reps "$DL_REPS" \
		--chunkd "$BIN/chunkd" --nginx-sh "$ROOT/tests/servers/nginx.sh" "${STRICT[@]}" |
		tee "$OUT/download.txt" || rc=$?
	check_status "$rc" bench-download
fi

# ---- request -----------------------------------------------------------------------------------
if want request; then
	echo
	rc=0
	"$BIN/bench-request" --work "$WORK" --chunkd "$BIN/chunkd" --iters "$REQ_ITERS" \
		--passes "$REQ_PASSES" --latency "$REQ_LATENCY" "${STRICT[@]}" |
		tee "$OUT/request.txt" || rc=$?
	check_status "$rc" bench-request
fi

# ---- start with a journal ----------------------------------------------------------------------
if want journal; then
	echo
	rc=0
	"$BIN/bench-start" --data-dir "$DATA_J" --journal "$JOURNAL" --chunkd "$BIN/chunkd" \
		--name "$NAME_START" --runs "$RUNS" --max-chunks "$MAX_CHUNKS" \
		--expect-chunks "$CHUNKS" "${STRICT[@]}" | tee "$OUT/start-journal.txt" || rc=$?
	check_status "$rc" "bench-start --journal"
fi

# ---- summary -----------------------------------------------------------------------------------
{
	echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
	echo "machine: $(nproc) CPUs, $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), Linux $(uname -r)"
	echo "commit:  $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
	echo "command: $CMDLINE"
	echo "load:    $LOAD_BEFORE before, $(cut -d' ' -f1-3 /proc/loadavg) after (1/5/15-minute load averages; other work on the machine inflates every figure)"
	if want start || want lookup || want journal; then
		echo "data:    $DATA ($CHUNKS chunks, $DATASETS datasets, $FILES x $SIZE B files)"
	fi
	if want download; then
		echo "web:     $WEB ($DL_CHUNKS chunks x $DL_FILES files x $DL_SIZE B)"
	fi
	if want journal; then
		echo "journal: $JOURNAL ($JOURNAL_RECORDS records)"
	fi
	echo
	echo "| benchmark | measured | result | ratio | target | status |"
	echo "|---|---|---|---|---|---|"
	for f in start lookup download request start-journal; do
		[[ -f $OUT/$f.txt ]] && cat "$OUT/$f.txt"
	done | awk -F'\t' '$1 == "ROW" {
		ratio = $5
		if ($2 == "lookup" && ratio != "-")
			ratio = ratio " in-process"
		printf "| %s | %s | %s | %s | %s | %s |\n", $2, $3, $4, ratio, $6, $7 }'
} >"$OUT/summary.md"
echo
echo "==== summary ($OUT/summary.md) ===="
cat "$OUT/summary.md"
exit "$MISSED"
