#!/usr/bin/env bash
# test_servers.sh - self-test of the test servers in tests/servers/: fault_server.py (files,
# faults, ranges, If-Range, its JSON log, SIGTERM) and nginx.sh (start, files, ranges, If-Range,
# stop). Registered with CTest; exit 0 pass, 1 fail, 77 skip (no python3, curl or nginx: the
# fault-server half still runs when only nginx is missing, and its failures still fail).
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
PY=${PYTHON:-}
[ -n "$PY" ] || PY=$(command -v python3 || true)
[ -n "$PY" ] || { echo "SKIP: python3 not found"; exit 77; }
# Resolve wrappers such as pyenv shims once: each start through them costs ~0.5 s.
PY=$("$PY" -c 'import sys; print(sys.executable)') || { echo "SKIP: $PY does not run"; exit 77; }
export PYTHON=$PY
command -v curl >/dev/null || { echo "SKIP: curl not found"; exit 77; }

WORK=$(mktemp -d /tmp/chunkd-servers.XXXXXX)
ROOT=$WORK/root
SERVER_PID=""
FAILS=0
CHECKS=0

cleanup() {
	if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
		kill -KILL "$SERVER_PID" 2>/dev/null
		wait "$SERVER_PID" 2>/dev/null
	fi
	"$HERE/nginx.sh" stop "$WORK/nginx" >/dev/null 2>&1
	rm -rf "$WORK"
}
trap cleanup EXIT

fail() {
	echo "FAIL: $*"
	FAILS=$((FAILS + 1))
}

# check NAME GOT WANT
check() {
	CHECKS=$((CHECKS + 1))
	if [ "$2" = "$3" ]; then
		echo "ok: $1"
	else
		fail "$1: got '$2', want '$3'"
	fi
}

# fetch OUTFILE CURL_ARGS...: prints "<status> <bytes> <curl exit>".
fetch() {
	local out=$1 rc res
	shift
	res=$(curl -s -o "$out" -w '%{http_code} %{size_download}' "$@")
	rc=$?
	echo "$res $rc"
}

# header NAME CURL_ARGS...: the value of response header NAME.
header() {
	local name=$1
	shift
	curl -s -o /dev/null -D - "$@" | tr -d '\r' |
		awk -v n="$name" -F': ' 'tolower($1) == tolower(n) { print $2 }'
}

# same_bytes FILE OFFSET COUNT: does FILE hold bytes [OFFSET, OFFSET+COUNT) of $ROOT/a.bin?
same_bytes() {
	cmp -s "$1" <(tail -c +"$(($2 + 1))" "$ROOT/a.bin" | head -c "$3") && echo same || echo differ
}

# Centiseconds since boot: a monotonic clock read without starting a process.
uptime_cs() {
	local up _
	read -r up _ </proc/uptime
	echo "${up/./}"
}

# check_log NAME EXPR WANT: a Python expression over L, the list of requests in the fault
# server's log, must print as WANT. A line is written when its request completes, which can be
# just after the client got its last byte: re-read the log until it holds, for up to 5 s.
check_log() {
	CHECKS=$((CHECKS + 1))
	local got
	got=$("$PY" - "$WORK/fault.log" "$2" "$3" <<'EOF'
import json, sys, time
end = time.monotonic() + 5
while True:
    try:
        L = [json.loads(line) for line in open(sys.argv[1])]
        got = str(eval(sys.argv[2]))
    except (IndexError, KeyError, ValueError) as e:
        got = "error: %r" % e
    if got == sys.argv[3] or time.monotonic() > end:
        print(got)
        break
    time.sleep(0.01)  # a poll interval under a deadline, not a synchronising sleep
EOF
)
	if [ "$got" = "$3" ]; then
		echo "ok: $1"
	else
		fail "$1: got '$got', want '$3'"
	fi
}

# exited PID: has our child PID exited (it stays a zombie until we wait for it)?
exited() {
	! kill -0 "$1" 2>/dev/null || [[ "$(ps -o stat= -p "$1")" == Z* ]]
}

# wait_for DESCRIPTION SECONDS COMMAND...: poll COMMAND until it succeeds; fail at the deadline.
wait_for() {
	local what=$1 end=$(($(uptime_cs) + $2 * 100))
	shift 2
	until "$@"; do
		if [ "$(uptime_cs)" -gt "$end" ]; then
			fail "timed out waiting for $what"
			return 1
		fi
		sleep 0.01 # the poll interval; the condition and the deadline decide
	done
}

mkdir -p "$ROOT/sub"
head -c 300000 /dev/urandom >"$ROOT/a.bin"
printf 'hello, chunkd\n' >"$ROOT/sub/b.txt"
A=300000
HALF=150000

# ---- fault_server.py ------------------------------------------------------------------------

echo "# fault_server.py"
coproc FS { exec "$PY" "$HERE/fault_server.py" --root "$ROOT" --port 0 --log "$WORK/fault.log"; }
SERVER_PID=$FS_PID
line=""
read -r -t 10 -u "${FS[0]}" line
case "$line" in
"PORT "[0-9]*) PORT=${line#PORT } ;;
*)
	fail "fault_server.py did not print its port (got '$line')"
	exit 1
	;;
esac
U=http://127.0.0.1:$PORT
O=$WORK/out

check "plain GET" "$(fetch "$O" "$U/a.bin")" "200 $A 0"
check "plain GET bytes" "$(same_bytes "$O" 0 $A)" same
check "HEAD Content-Length" "$(header Content-Length -I "$U/a.bin")" "$A"
check "missing file" "$(fetch "$O" "$U/nope.bin")" "404 10 0"
check "escape attempt stays in root" "$(fetch "$O" "$U/%2e%2e/%2e%2e/etc/passwd")" "404 10 0"
check "/fault/404" "$(fetch "$O" "$U/fault/404/a.bin")" "404 10 0"
check "?fault=500" "$(fetch "$O" "$U/a.bin?fault=500")" "500 10 0"
check "fail-first-1: 1st" "$(fetch "$O" "$U/fault/fail-first-1/a.bin")" "503 10 0"
check "fail-first-1: 2nd" "$(fetch "$O" "$U/fault/fail-first-1/a.bin")" "200 $A 0"
check "fail-first-1: bytes" "$(same_bytes "$O" 0 $A)" same
check "fail-first-2 by query: 1st" "$(fetch "$O" "$U/sub/b.txt?fault=fail-first-2")" "503 10 0"
check "fail-first-2 by query: 2nd" "$(fetch "$O" "$U/sub/b.txt?fault=fail-first-2")" "503 10 0"
check "fail-first-2 by query: 3rd" "$(fetch "$O" "$U/sub/b.txt?fault=fail-first-2")" "200 14 0"
check "bad spec" "$(fetch "$O" "$U/fault/nonsense/a.bin" | cut -d' ' -f1)" 400

# Ranges and If-Range.
check "Range" "$(fetch "$O" -r 1000-1999 "$U/a.bin")" "206 1000 0"
check "Range bytes" "$(same_bytes "$O" 1000 1000)" same
check "Content-Range" "$(header Content-Range -r 1000-1999 "$U/a.bin")" "bytes 1000-1999/$A"
check "open Range" "$(fetch "$O" -r 299990- "$U/a.bin")" "206 10 0"
check "suffix Range" "$(fetch "$O" -r -100 "$U/a.bin")" "206 100 0"
check "suffix Range bytes" "$(same_bytes "$O" 299900 100)" same
check "unsatisfiable Range" "$(fetch "$O" -r $A- "$U/a.bin" | cut -d' ' -f1)" 416
check "several ranges: ignored" "$(fetch "$O" -r 0-1,5-6 "$U/a.bin")" "200 $A 0"
ETAG=$(header ETag "$U/a.bin")
LM=$(header Last-Modified "$U/a.bin")
check "If-Range mismatch: full 200" "$(fetch "$O" -r 1000-1999 -H 'If-Range: "0-0"' "$U/a.bin")" \
	"200 $A 0"
check "If-Range mismatch bytes" "$(same_bytes "$O" 0 $A)" same
check "If-Range ETag match" "$(fetch "$O" -r 1000-1999 -H "If-Range: $ETAG" "$U/a.bin")" \
	"206 1000 0"
check "If-Range date match" "$(fetch "$O" -r 0-9 -H "If-Range: $LM" "$U/a.bin")" "206 10 0"
check "If-Range weak ETag: full 200" "$(fetch "$O" -r 0-9 -H "If-Range: W/$ETAG" "$U/a.bin")" \
	"200 $A 0"
touch -d '2001-01-01' "$ROOT/a.bin"
check "If-Range after the file changed" "$(fetch "$O" -r 0-9 -H "If-Range: $ETAG" "$U/a.bin")" \
	"200 $A 0"

# Body faults. curl: 18 = partial file, 52 = empty reply, 56 = receive failure, 28 = timeout.
check "truncate" "$(fetch "$O" "$U/fault/truncate/a.bin")" "200 $HALF 18"
check "truncate bytes" "$(same_bytes "$O" 0 $HALF)" same
check "truncate on a Range" "$(fetch "$O" -r 0-999 "$U/fault/truncate/a.bin")" "206 500 18"
res=$(fetch "$O" "$U/fault/reset/a.bin")
check "reset: curl error" "${res##* }" 56
check_log "reset: server sent half" '[e["bytes"] for e in L if e["fault"] == "reset"][-1]' $HALF
check "short: body below Content-Length" "$(fetch "$O" "$U/fault/short/a.bin")" "200 $((A - 10)) 18"
check "short bytes" "$(same_bytes "$O" 0 $((A - 10)))" same
check "drop" "$(fetch "$O" "$U/fault/drop/a.bin")" "000 0 52"
check "redirect" "$(fetch "$O" "$U/fault/redirect/a.bin")" "302 0 0"
check "redirect Location" "$(header Location "$U/a.bin?fault=redirect&k=v")" "$U/a.bin?k=v"
check "redirect followed" "$(fetch "$O" -L "$U/fault/redirect/a.bin")" "200 $A 0"
check "truncate@1: first cut" "$(fetch "$O" "$U/fault/truncate@1/a.bin")" "200 $HALF 18"
check "truncate@1: resumed" "$(fetch "$O" -C - "$U/fault/truncate@1/a.bin" | cut -d' ' -f1,3)" \
	"206 0"
check "truncate@1: resumed file" "$(same_bytes "$O" 0 $A)" same

res=$(curl -s -o "$O" -r 0-49999 -w '%{http_code} %{size_download} %{time_total}' \
	"$U/fault/slow-100000/a.bin")
check "slow-100000: 50000 bytes" "${res% *}" "206 50000"
check "slow-100000 took >= 0.4 s" "$(awk -v t="${res##* }" 'BEGIN { print (t >= 0.4) }')" 1

# A stall that the client gives up on after 1 s: the log says when it closed.
check "stall: client times out" "$(fetch "$O" --max-time 1 "$U/fault/stall/a.bin")" "200 $HALF 28"
check_log "stall: outcome" '[e["outcome"] for e in L if e["fault"] == "stall"][0]' client_closed
check_log "stall: ended with the client (< 3 s)" \
	'[e["mono_end"] - e["mono"] < 3 for e in L if e["fault"] == "stall"][0]' True

# Keep-alive: two requests, one connection.
check "keep-alive" "$(curl -s -o /dev/null -o /dev/null -w '%{num_connects} ' "$U/a.bin" "$U/a.bin")" \
	"1 0 "

# The log: one line per request, with what tests assert on.
check_log "log: Range recorded" \
	'[e["status"] for e in L if e["range"] == "bytes=1000-1999" and not e["if_range"]][0]' 206
check_log "log: fail-first-1 numbering" \
	'[(e["n"], e["status"]) for e in L if e["fault"] == "fail-first-1"]' "[(1, 503), (2, 200)]"
check_log "log: truncate outcome" '[e["outcome"] for e in L if e["fault"] == "truncate"][0]' \
	truncated
check_log "log: keep-alive numbering" \
	'sorted(e["conn_req"] for e in L if e["path"] == "/a.bin" and e["range"] is None)[-1] >= 2' True
check_log "log: every line complete" \
	'all({"t", "mono", "mono_end", "method", "path", "status", "bytes", "outcome"} <= set(e) for e in L)' \
	True

# SIGTERM with a stalled response in flight: a clean, prompt exit.
curl -s -N -o "$WORK/stalled" --max-time 30 "$U/fault/stall/a.bin" &
CURL_PID=$!
got_half() {
	[ "$(stat -c %s "$WORK/stalled" 2>/dev/null || echo 0)" = $HALF ]
}
wait_for "half of the stalled body" 10 got_half
kill -TERM "$SERVER_PID"
wait_for "fault_server.py to exit after SIGTERM" 5 exited "$SERVER_PID" ||
	kill -KILL "$SERVER_PID" # so that the wait below cannot hang
wait "$SERVER_PID"
check "SIGTERM: exit status" $? 0
SERVER_PID=""
wait "$CURL_PID" 2>/dev/null

# ---- nginx.sh -------------------------------------------------------------------------------

echo "# nginx.sh"
NG=$WORK/nginx
mkdir -p "$NG"
out=$("$HERE/nginx.sh" start "$ROOT" "$NG")
rc=$?
if [ $rc = 77 ]; then
	echo "SKIP: nginx not installed ($CHECKS checks of fault_server.py, $FAILS failed)"
	[ $FAILS = 0 ] || exit 1
	exit 77
fi
check "nginx.sh start" "$rc ${out%% *}" "0 PORT"
NP=${out#PORT }
N=http://127.0.0.1:$NP
check "nginx: GET" "$(fetch "$O" "$N/a.bin")" "200 $A 0"
check "nginx: bytes" "$(same_bytes "$O" 0 $A)" same
check "nginx: missing" "$(fetch "$O" "$N/nope.bin" | cut -d' ' -f1)" 404
check "nginx: Range" "$(fetch "$O" -r 1000-1999 "$N/a.bin")" "206 1000 0"
check "nginx: Range bytes" "$(same_bytes "$O" 1000 1000)" same
NETAG=$(header ETag "$N/a.bin")
check "nginx: If-Range match" "$(fetch "$O" -r 0-9 -H "If-Range: $NETAG" "$N/a.bin")" "206 10 0"
check "nginx: If-Range mismatch" "$(fetch "$O" -r 0-9 -H 'If-Range: "0-0"' "$N/a.bin")" \
	"200 $A 0"
check "nginx: second start refused" "$("$HERE/nginx.sh" start "$ROOT" "$NG" >/dev/null 2>&1; echo $?)" 1
check "nginx: access log is JSON" \
	"$("$PY" -c 'import json,sys; L=[json.loads(x) for x in open(sys.argv[1])]; print(any(e["range"] == "bytes=1000-1999" and e["status"] == 206 for e in L))' "$NG/access.log")" \
	True
NPID=$(cat "$NG/nginx.pid")
t0=$(uptime_cs)
"$HERE/nginx.sh" stop "$NG"
check "nginx.sh stop" $? 0
check "nginx.sh stop is prompt (< 3 s)" "$(($(uptime_cs) - t0 < 300))" 1
check "nginx: master gone" "$(exited "$NPID" && echo yes)" yes
check "nginx: port closed" "$(fetch /dev/null "$N/a.bin" | cut -d' ' -f1,3)" "000 7"
"$HERE/nginx.sh" stop "$NG"
check "nginx.sh stop again" $? 0

echo "# $CHECKS checks, $FAILS failed"
[ $FAILS = 0 ]
