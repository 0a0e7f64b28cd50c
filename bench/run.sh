#!/usr/bin/env bash
# bench/run.sh — run chunkd's benchmarks and print one table of results.
#
# 1. Build chunkd, bench-start and bench-lookup (unless --no-build).
# 2. Generate the data dir once with scripts/gen-chunks.py and cache it under
#    BUILD/bench-data/, keyed by the generator's parameters.
# 3. bench-start: exec chunkd on the data dir several times, exec -> READY.
# 4. Start one daemon (instance bench-PID), run bench-lookup against it, stop it with SIGTERM.
# 5. Print the machine, the command and the table; keep every output in BUILD/bench-results/.
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
DO_BUILD=1
STRICT=()

usage() {
	cat <<EOF
Usage: bench/run.sh [OPTION]...
Run the chunkd benchmarks (bench-start, bench-lookup) on generated data and print a table.

  --build-dir DIR   CMake build directory (default: $ROOT/build)
  --no-build        use the binaries already in the build directory
  --chunks N        chunks to generate (default $CHUNKS)
  --datasets N      datasets they are spread over (default $DATASETS)
  --files N         files per chunk (default $FILES)
  --size N          bytes per file (default $SIZE)
  --seed N          generator and query seed (default $SEED)
  --queries N       bench-lookup queries per pass (default $QUERIES)
  --reps N          bench-lookup passes per method (default $REPS)
  --runs N          bench-start daemon starts (default $RUNS; the first is not counted as warm)
  --strict          exit non-zero when a target is missed
  -h, --help        show this help and exit

The data dir is cached as BUILD/bench-data/c<chunks>-d<datasets>-f<files>-s<size>-seed<seed>;
delete it to regenerate. Outputs go to BUILD/bench-results/<date>/. Needs python3.
EOF
}

num() {
	[[ $2 =~ ^[0-9]+$ ]] || { echo "bench/run.sh: $1: '$2' is not a number" >&2; exit 2; }
	echo "$2"
}

CMDLINE="bench/run.sh${*:+ $*}"
while [[ $# -gt 0 ]]; do
	case $1 in
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
	--strict) STRICT=(--strict) ;;
	-h | --help) usage; exit 0 ;;
	*) echo "bench/run.sh: unknown option '$1'" >&2; echo "Try 'bench/run.sh --help'." >&2; exit 2 ;;
	esac
	shift
done
[[ $CHUNKS -lt $MAX_CHUNKS ]] || MAX_CHUNKS=$((CHUNKS + 1024))

BIN=$BUILD/bin
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
}
trap cleanup EXIT

if [[ $DO_BUILD == 1 ]]; then
	if [[ ! -f $BUILD/CMakeCache.txt ]]; then
		cmake -S "$ROOT" -B "$BUILD" -DCHUNKD_WERROR=ON >/dev/null
	fi
	cmake --build "$BUILD" -j2 --target chunkd bench-lookup bench-start >/dev/null
fi
for b in chunkd bench-lookup bench-start; do
	[[ -x $BIN/$b ]] || { echo "bench/run.sh: $BIN/$b is missing (build it first)" >&2; exit 3; }
done

# Other work on the machine skews every figure; the summary shows the load around the run.
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=$BUILD/bench-results/$STAMP
mkdir -p "$OUT"

# ---- data --------------------------------------------------------------------------------------
DATA=$BUILD/bench-data/c$CHUNKS-d$DATASETS-f$FILES-s$SIZE-seed$SEED
if [[ ! -e $DATA.complete ]]; then
	echo "generating $CHUNKS chunks in $DATASETS datasets into $DATA ..."
	rm -rf "$DATA" "$DATA.manifest.json"
	mkdir -p "$(dirname "$DATA")"
	t0=$(date +%s%N)
	python3 "$ROOT/scripts/gen-chunks.py" --out "$DATA" --datasets "$DATASETS" \
		--chunks "$CHUNKS" --files "$FILES" --size "$SIZE" --seed "$SEED" \
		--manifest "$DATA.manifest.json"
	t1=$(date +%s%N)
	# The marker is written last, so an interrupted generation is redone from scratch.
	touch "$DATA.complete"
	echo "generated in $(((t1 - t0) / 1000000)) ms"
else
	echo "using cached data dir $DATA"
fi

# ---- start -------------------------------------------------------------------------------------
# Exit status 1 of a benchmark means "a target was missed" (with --strict): finish the table first.
MISSED=0
check_status() {
	case $1 in
	0) ;;
	1) MISSED=1 ;;
	*) echo "bench/run.sh: $2 failed with status $1" >&2; exit "$1" ;;
	esac
}

echo
rc=0
"$BIN/bench-start" --data-dir "$DATA" --chunkd "$BIN/chunkd" --name "$NAME_START" \
	--runs "$RUNS" --max-chunks "$MAX_CHUNKS" --expect-chunks "$CHUNKS" "${STRICT[@]}" |
	tee "$OUT/start.txt" || rc=$?
check_status "$rc" bench-start

# ---- lookup ------------------------------------------------------------------------------------
echo
"$BIN/chunkd" --data-dir "$DATA" --name "$NAME" --max-chunks "$MAX_CHUNKS" 2>"$OUT/daemon.log" &
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
if [[ $rc != 0 ]]; then
	echo "bench/run.sh: the lookup daemon exited with status $rc after SIGTERM; its log:" >&2
	cat "$OUT/daemon.log" >&2
	exit 3
fi

# ---- summary -----------------------------------------------------------------------------------
{
	echo "date:    $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
	echo "machine: $(nproc) CPUs, $(grep -m1 '^model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), Linux $(uname -r)"
	echo "commit:  $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$ROOT" diff --quiet HEAD 2>/dev/null || echo ' (with uncommitted changes)')"
	echo "command: $CMDLINE"
	echo "load:    $LOAD_BEFORE before, $(cut -d' ' -f1-3 /proc/loadavg) after (1/5/15-minute load averages; other work on the machine inflates every figure)"
	echo "data:    $DATA ($CHUNKS chunks, $DATASETS datasets, $FILES x $SIZE B files)"
	echo
	echo "| benchmark | measured | result | vs in-process | target | status |"
	echo "|---|---|---|---|---|---|"
	cat "$OUT/start.txt" "$OUT/lookup.txt" | awk -F'\t' '$1 == "ROW" {
		printf "| %s | %s | %s | %s | %s | %s |\n", $2, $3, $4, $5, $6, $7 }'
} >"$OUT/summary.md"
echo
echo "==== summary ($OUT/summary.md) ===="
cat "$OUT/summary.md"
exit "$MISSED"
