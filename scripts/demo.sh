#!/usr/bin/env bash
# demo.sh — chunkd end to end in one command: build, serve sample chunks over HTTP with nginx,
# start a daemon on an empty data dir, and drive it with the example worker: download every chunk,
# show one chunk's status, find blocks and read a file, delete chunks; then inspect the instance
# with chunkd-dump, stop the daemon and nginx, clean up.
#
# Usage: scripts/demo.sh [--build-dir DIR] [--keep]
#   --build-dir DIR   build tree to use (default: build/; configured and built if needed)
#   --keep            leave the temporary directory (web root, data dir, logs) for a closer look
#
# Everything it creates lives in a temporary directory and in /dev/shm/chunkd.demo-PID.*, and is
# removed on exit, whatever happens; nginx (tests/servers/nginx.sh) listens on a free port of
# 127.0.0.1 only. Exit status 0 only if every step did what it should.
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
		sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
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
nginx_state=""
STOP_TIMEOUT=10    # seconds a daemon gets to exit after SIGTERM before SIGKILL
READY_TIMEOUT=30   # seconds the daemon gets to publish its catalogue
REQUEST_TIMEOUT=30 # seconds the worker waits for all downloads (or all deletes)

step() { printf '\n== %s\n' "$*"; }
fail() {
	echo "demo.sh: FAILED: $*" >&2
	exit 1
}

# wait_exit PID SECONDS: wait until process PID has exited, woken by a pidfd the moment it does;
# false if it still runs after SECONDS. (bash's wait has no timeout.)
wait_exit() {
	python3 - "$1" "$2" <<'EOF'
import os, select, sys
try:
    fd = os.pidfd_open(int(sys.argv[1]))
except ProcessLookupError:
    sys.exit(0)
sys.exit(0 if select.select([fd], [], [], float(sys.argv[2]))[0] else 1)
EOF
}

# stop_daemon: SIGTERM, then wait for the exit with a deadline; SIGKILL if it passes.
# Returns the daemon's exit status.
stop_daemon() {
	local pid=$daemon_pid rc=0
	daemon_pid=""
	kill -TERM "$pid" 2>/dev/null || true
	if ! wait_exit "$pid" "$STOP_TIMEOUT"; then
		echo "demo.sh: chunkd did not exit ${STOP_TIMEOUT} s after SIGTERM: SIGKILL" >&2
		kill -KILL "$pid" 2>/dev/null || true
	fi
	wait "$pid" || rc=$?
	return "$rc"
}

stop_nginx() {
	local state=$nginx_state
	nginx_state=""
	"$root/tests/servers/nginx.sh" stop "$state"
}

# show_log [brief]: the daemon's log. brief (after success) leaves out its line per published or
# removed chunk; after a failure, the last 60 lines are shown.
show_log() {
	local log=$tmp/chunkd.log n
	[ -n "$tmp" ] && [ -s "$log" ] || return 0
	n=$(wc -l <"$log")
	if [ "${1:-}" = brief ]; then
		echo "-- daemon log ($log):"
		grep -v -e ': published chunk slot ' -e ': removed chunk slot ' "$log" |
			sed 's/^/   | /'
		echo "   | ($(grep -c ': published chunk slot ' "$log") 'published chunk' and" \
			"$(grep -c ': removed chunk slot ' "$log") 'removed chunk' lines left out)"
	else
		echo "-- daemon log ($log, $([ "$n" -le 60 ] || echo "last 60 of ")$n lines):"
		tail -n 60 "$log" | sed 's/^/   | /'
	fi
}

cleanup() {
	local rc=$?
	trap - EXIT INT TERM
	if [ -n "$daemon_pid" ]; then
		stop_daemon || true
	fi
	if [ -n "$nginx_state" ]; then
		stop_nginx || true
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

# worker ARG...: run the example worker on the demo's instance. Its output is shown indented and
# kept in $tmp/worker.out (its errors go straight to stderr); its exit status is left in $wrc.
wrc=0
worker() {
	wrc=0
	"$bin/chunkd-example-worker" --name "$name" "$@" >"$tmp/worker.out" || wrc=$?
	sed 's/^/   /' "$tmp/worker.out"
	kill -0 "$daemon_pid" 2>/dev/null || fail "the daemon exited"
}
expect_rc() { # expect_rc N WHAT: the last worker run exited with status N
	[ "$wrc" = "$1" ] || fail "the worker ($2) exited with status $wrc (expected $1)"
}
expect_out() { # expect_out TEXT: the last worker run printed a line containing TEXT
	grep -qF -- "$1" "$tmp/worker.out" || fail "the worker did not print '$1'"
}

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

step "2. sample data: 3 datasets, 12 chunks of 3 files of 300 kB (scripts/gen-chunks.py --flat)"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/chunkd-demo.XXXXXX")
python3 "$root/scripts/gen-chunks.py" --flat --out "$tmp/www" --datasets 3 --chunks 12 \
	--files 3 --size 300000 --seed 7 --manifest "$tmp/manifest.json"
# From the JSON manifest, with python3, two plain files for the shell and the worker:
# - chunks.list, the worker's download list: "ID DATASET FIRST END NAME..." per chunk (the worker
#   stays free of a JSON parser; see read_list() in examples/worker.c);
# - plan, what to check: "hit DATASET:BLOCK ID FILE SIZE" for the first block of the first chunk
#   and a middle block of the second, "miss DATASET:BLOCK WHERE" for a block in a gap between
#   two chunks (past the last chunk if the data has no gap), "delete ID DATASET:FIRST" for three
#   chunks to delete, "total CHUNKS FILES BYTES", and "status ID BYTES" for the chunk to show.
python3 - "$tmp/manifest.json" "$tmp/chunks.list" "$tmp/plan" <<'EOF'
import json, sys
chunks = json.load(open(sys.argv[1]))["chunks"]
with open(sys.argv[2], "w") as out:
    for c in chunks:
        print(c["id"], c["dataset"], c["first"], c["end"], *[f["name"] for f in c["files"]],
              file=out)

def size(c):
    return sum(f["size"] for f in c["files"])

def first_file(c):  # the worker reads the first file by name
    return min(c["files"], key=lambda f: f["name"])

with open(sys.argv[3], "w") as out:
    a, b = chunks[0], chunks[1]
    for c, block in ((a, a["first"]), (b, (b["first"] + b["end"]) // 2)):
        f = first_file(c)
        print("hit %s:%d %s %s %d" % (c["dataset"], block, c["id"], f["name"], f["size"]),
              file=out)
    gap = None
    for ds in sorted({c["dataset"] for c in chunks}):
        mine = sorted((c for c in chunks if c["dataset"] == ds), key=lambda c: c["first"])
        for x, y in zip(mine, mine[1:]):
            if gap is None and x["end"] < y["first"]:
                gap = "%s:%d in-the-gap-[%d,%d)" % (ds, x["end"], x["end"], y["first"])
    if gap is None:
        last = max(c["end"] for c in chunks if c["dataset"] == a["dataset"])
        gap = "%s:%d past-the-last-chunk" % (a["dataset"], last)
    print("miss", gap, file=out)
    for c in (a, chunks[5], chunks[10]):
        print("delete %s %s:%d" % (c["id"], c["dataset"], c["first"]), file=out)
    print("total %d %d %d" % (len(chunks), sum(len(c["files"]) for c in chunks),
                              sum(size(c) for c in chunks)), file=out)
    print("status %s %d" % (b["id"], size(b)), file=out)
EOF
hits=() hit_checks=() del_ids=() del_targets=()
while read -r kind a b c d; do
	case $kind in
	hit) hits+=("$a") hit_checks+=("$b $c $d") ;;
	miss) miss=$a miss_where=${b//-/ } ;;
	delete) del_ids+=("$a") del_targets+=("$b") ;;
	total) nchunks=$a nfiles=$b nbytes=$c ;;
	status) status_id=$a status_bytes=$b ;;
	esac
done <"$tmp/plan"
echo "   web root $tmp/www: $nchunks chunks, $nfiles files, $nbytes bytes, as DATASET/ID/FILE"
echo "   download list $tmp/chunks.list, from manifest.json (ids shortened here):"
awk 'NR <= 2 { $1 = substr($1, 1, 12) "..."; $2 = substr($2, 1, 12) "..."; print "   " $0 }' \
	"$tmp/chunks.list"
echo "   ..."

step "3. serve the web root with nginx on 127.0.0.1 (tests/servers/nginx.sh)"
mkdir "$tmp/nginx"
nginx_state=$tmp/nginx
port=$("$root/tests/servers/nginx.sh" start "$tmp/www" "$nginx_state" | sed -n 's/^PORT //p') ||
	fail "tests/servers/nginx.sh could not start nginx (see above)"
[ -n "$port" ] || fail "tests/servers/nginx.sh printed no port"
url=http://127.0.0.1:$port
# One file by hand, so that a web root nginx cannot read fails here rather than in the worker.
probe=$(head -n 1 "$tmp/chunks.list" | awk '{ print $2 "/" $1 "/" $5 }')
code=$(curl -s -o /dev/null -w '%{http_code} %{size_download}' "$url/$probe" || true)
echo "   $url: GET /DATASET/ID/$(basename "$probe") of the first chunk: HTTP ${code% *}," \
	"${code#* } bytes"
[ "${code%% *}" = 200 ] || fail "nginx answered '$code' for $url/$probe"

step "4. start the daemon on an empty data dir: chunkd --data-dir DATA_DIR --name $name"
"$bin/chunkd" --data-dir "$tmp/data" --name "$name" 2>"$tmp/chunkd.log" &
daemon_pid=$!
echo "   pid $daemon_pid, data dir $tmp/data, log $tmp/chunkd.log"
echo "   worker --wait-ready $READY_TIMEOUT info: wait until the daemon is READY"
worker --wait-ready "$READY_TIMEOUT" info
expect_rc 0 info
expect_out "state READY, 0 chunks published"

step "5. worker download $url < chunks.list: request all $nchunks, wait for their tickets"
worker --timeout "$REQUEST_TIMEOUT" download "$url" <"$tmp/chunks.list"
expect_rc 0 download
expect_out "download: $nchunks of $nchunks chunks ($nfiles files) published"

step "6. worker status: chunkd_status() of one chunk"
worker status "$status_id"
expect_rc 0 status
expect_out "status chunk $status_id: present"
expect_out "$status_bytes of $status_bytes bytes"

step "7. worker find: a first block, a middle block, a block $miss_where"
worker find "${hits[@]}" "$miss"
expect_rc 3 "find (3: a block in no chunk)"
for e in "${hit_checks[@]}"; do
	read -r id file size <<<"$e"
	expect_out "chunk $id "
	grep -A 2 "chunk $id " "$tmp/worker.out" | grep -qF "read  $file: $size bytes" ||
		fail "the worker did not read $size bytes of $file of chunk $id"
done
expect_out "dataset ${miss%%:*} block ${miss#*:}: in no published chunk"
echo "   ok: the two chunks and file sizes match the manifest; the gap is in no chunk"

step "8. worker delete: ${#del_ids[@]} chunks, then find their first blocks"
worker --timeout "$REQUEST_TIMEOUT" delete "${del_ids[@]}"
expect_rc 0 delete
expect_out "delete: ${#del_ids[@]} of ${#del_ids[@]} chunks no longer findable"
worker find "${del_targets[@]}"
expect_rc 3 "find of deleted chunks"
[ "$(grep -c ': in no published chunk$' "$tmp/worker.out")" = "${#del_ids[@]}" ] ||
	fail "a deleted chunk was still found"
worker status "${del_ids[0]}"
expect_rc 0 status
grep -qE ": (deleting|absent)$" "$tmp/worker.out" || fail "the deleted chunk's state is wrong"

step "9. summary"
worker info
expect_rc 0 info
left=$((nchunks - ${#del_ids[@]}))
expect_out "$left chunks published"
echo "   downloaded $nchunks chunks ($nfiles files, $nbytes bytes) from nginx to an empty data dir"
echo "   found ${#hits[@]} blocks and read a file of each; 1 block in no chunk"
echo "   deleted ${#del_ids[@]} chunks, no longer found; $left chunks published"

step "10. chunkd-dump --name $name"
"$bin/chunkd-dump" --name "$name" | sed 's/^/   /'

step "11. stop: SIGTERM to chunkd, then nginx"
rc=0
stop_daemon || rc=$?
[ $rc = 0 ] || fail "chunkd exited with status $rc after SIGTERM (expected 0)"
state=$("$bin/chunkd-dump" --name "$name" --json |
	python3 -c 'import json, sys; print(json.load(sys.stdin)["state"])')
echo "   chunkd: exit status 0; state now $state (the last catalogue stays readable until the"
echo "   segments /dev/shm/chunkd.$name.* are removed)"
[ "$state" = STOPPED ] || fail "state is $state after SIGTERM (expected STOPPED)"
stop_nginx || fail "nginx did not stop"
echo "   nginx: stopped"
show_log brief

step "demo passed"
echo "   next: README.md, docs/architecture.md, examples/worker.c"
