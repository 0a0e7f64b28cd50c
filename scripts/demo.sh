#!/usr/bin/env bash
# demo.sh — chunkd end to end in one command: build, generate sample chunks, start a daemon, look
# blocks up with the example worker, inspect the instance with chunkd-dump, stop, clean up.
#
# Usage: scripts/demo.sh [--build-dir DIR] [--keep]
#   --build-dir DIR   build tree to use (default: build/; configured and built if needed)
#   --keep            leave the data dir and log in place (printed at the end) for a closer look
#
# Everything it creates lives in a temporary directory and in /dev/shm/chunkd.demo-PID.*, and is
# removed on exit, whatever happens. Exit status 0 only if every step did what it should.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=$root/build
keep=0
while [ $# -gt 0 ]; do
	case "$1" in
	--build-dir)
		[ $# -ge 2 ] || { echo "demo.sh: --build-dir needs a value" >&2; exit 2; }
		build=$2
		shift 2
		;;
	--keep)
		keep=1
		shift
		;;
	-h | --help)
		sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
		exit 0
		;;
	*)
		echo "demo.sh: unknown argument '$1' (try --help)" >&2
		exit 2
		;;
	esac
done

name=demo-$$
tmp=""
daemon_pid=""
STOP_TIMEOUT=10  # seconds a daemon gets to exit after SIGTERM before SIGKILL
READY_TIMEOUT=30 # seconds the daemon gets to publish its catalogue

step() { printf '\n== %s\n' "$*"; }
fail() {
	echo "demo.sh: FAILED: $*" >&2
	exit 1
}

# stop_daemon: SIGTERM, then wait for the exit with a deadline; SIGKILL if it passes.
# Returns the daemon's exit status.
stop_daemon() {
	local pid=$daemon_pid rc=0 watchdog
	daemon_pid=""
	kill -TERM "$pid" 2>/dev/null || true
	# The watchdog kills the daemon only if it has not exited by the deadline. Its own sleep is
	# ended with it, so nothing lingers holding our stdout open.
	(
		trap 'kill "$s" 2>/dev/null; exit 0' TERM
		sleep "$STOP_TIMEOUT" &
		s=$!
		wait "$s"
		echo "demo.sh: chunkd did not exit ${STOP_TIMEOUT} s after SIGTERM: SIGKILL" >&2
		kill -KILL "$pid" 2>/dev/null
	) &
	watchdog=$!
	wait "$pid" || rc=$?
	kill -TERM "$watchdog" 2>/dev/null || true
	wait "$watchdog" 2>/dev/null || true
	return "$rc"
}

show_log() {
	if [ -n "$tmp" ] && [ -s "$tmp/chunkd.log" ]; then
		echo "-- daemon log ($tmp/chunkd.log):"
		sed 's/^/   | /' "$tmp/chunkd.log"
	fi
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [ -n "$daemon_pid" ]; then
		stop_daemon || true
	fi
	if [ $rc -ne 0 ]; then
		show_log
	fi
	rm -f /dev/shm/chunkd."$name".cat /dev/shm/chunkd."$name".req /dev/shm/chunkd."$name".lock
	if [ -n "$tmp" ]; then
		if [ $keep = 1 ]; then
			echo "demo.sh: kept $tmp"
		else
			rm -rf "$tmp"
		fi
	fi
	exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

step "1. dependencies and build ($build)"
"$root/scripts/deps.sh"
if [ ! -f "$build/CMakeCache.txt" ]; then
	cmake -S "$root" -B "$build"
fi
cmake --build "$build" -j "$(nproc)" --target chunkd chunkd-dump chunkd-example-worker
bin=$build/bin
for b in chunkd chunkd-dump chunkd-example-worker; do
	[ -x "$bin/$b" ] || fail "$bin/$b was not built"
done

step "2. sample data: 2 datasets, 12 chunks of 2 files (scripts/gen-chunks.py)"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/chunkd-demo.XXXXXX")
python3 "$root/scripts/gen-chunks.py" --out "$tmp/data" --datasets 2 --chunks 12 --files 2 \
	--size 65536 --seed 7 --manifest "$tmp/manifest.json"
# Pick lookups from the manifest: three blocks inside chunks (first block, a middle block, last
# block) and one block past a dataset's last chunk, which is in no chunk.
python3 - "$tmp/manifest.json" >"$tmp/picks" <<'EOF'
import json, sys
chunks = json.load(open(sys.argv[1]))["chunks"]
a, b, c = chunks[0], chunks[1], chunks[-1]
for ch, block in ((a, a["first"]), (b, (b["first"] + b["end"]) // 2), (c, c["end"] - 1)):
    print("hit %s:%d %s %d %s" % (ch["dataset"], block, ch["id"], ch["files"][0]["size"],
                                  ch["files"][0]["name"]))
ds = a["dataset"]
print("miss %s:%d - 0 -" % (ds, max(ch["end"] for ch in chunks if ch["dataset"] == ds)))
EOF
(cd "$tmp/data" && find chunks -mindepth 2 -maxdepth 2 -type d | sort) >"$tmp/dirs"
sed -n 's|^|   DATA_DIR/|; 1,3p' "$tmp/dirs"
echo "   ... ($(wc -l <"$tmp/dirs") chunk directories, each with file0.parquet, file1.parquet and" \
	".chunkd-meta)"

step "3. start the daemon: chunkd --data-dir DATA_DIR --name $name"
"$bin/chunkd" --data-dir "$tmp/data" --name "$name" 2>"$tmp/chunkd.log" &
daemon_pid=$!
echo "   pid $daemon_pid, log in $tmp/chunkd.log"

step "4. the example worker: wait for READY, list, find three blocks, read a file of each"
hits=() ids=()
while read -r kind target id size file; do
	if [ "$kind" = hit ]; then
		hits+=("$target")
		ids+=("$id $size $file")
	else
		miss=$target
	fi
done <"$tmp/picks"
rc=0
"$bin/chunkd-example-worker" --name "$name" --wait-ready "$READY_TIMEOUT" "${hits[@]}" \
	>"$tmp/worker.out" || rc=$?
sed 's/^/   /' "$tmp/worker.out"
if ! kill -0 "$daemon_pid" 2>/dev/null; then
	fail "the daemon exited"
fi
[ $rc = 0 ] || fail "the worker exited with status $rc (expected 0)"
for e in "${ids[@]}"; do
	read -r id size file <<<"$e"
	grep -q "chunk $id " "$tmp/worker.out" || fail "the worker did not find chunk $id"
	grep -q "read  $file: $size bytes" "$tmp/worker.out" ||
		fail "the worker did not read $size bytes of $file of chunk $id"
done
echo "   ok: the three chunks match the manifest"

step "5. a block that is in no chunk: the worker exits with status 3"
rc=0
"$bin/chunkd-example-worker" --name "$name" "$miss" >"$tmp/worker.out" || rc=$?
sed 's/^/   /' "$tmp/worker.out"
[ $rc = 3 ] || fail "the worker exited with status $rc (expected 3: not found)"

step "6. without arguments: list chunk ids, look up the first block of two of them"
"$bin/chunkd-example-worker" --name "$name" --list 2 | sed 's/^/   /'

step "7. chunkd-dump --name $name"
"$bin/chunkd-dump" --name "$name" | sed 's/^/   /'

step "8. stop: SIGTERM"
rc=0
stop_daemon || rc=$?
[ $rc = 0 ] || fail "chunkd exited with status $rc after SIGTERM (expected 0)"
state=$("$bin/chunkd-dump" --name "$name" --json |
	python3 -c 'import json, sys; print(json.load(sys.stdin)["state"])')
echo "   exit status 0; state now $state (the last catalogue stays readable until the"
echo "   segments /dev/shm/chunkd.$name.* are removed)"
[ "$state" = STOPPED ] || fail "state is $state after SIGTERM (expected STOPPED)"
show_log

step "demo passed"
echo "   next: README.md, docs/architecture.md, examples/worker.c"
