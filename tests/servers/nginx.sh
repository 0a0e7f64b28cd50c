#!/usr/bin/env bash
# nginx.sh - a throw-away nginx serving a directory on 127.0.0.1, for chunkd's tests.
#
#   nginx.sh start ROOT_DIR STATE_DIR   write STATE_DIR/nginx.conf, start nginx on a free port,
#                                       wait until it answers, print "PORT <n>" (also kept in
#                                       STATE_DIR/port)
#   nginx.sh stop STATE_DIR             stop it and wait until it is gone (no-op if not running)
#
# Everything nginx writes stays in STATE_DIR: nginx.pid, error.log, access.log (one JSON line per
# request: t, method, path, range, if_range, status, bytes, conn, conn_req, like
# fault_server.py's log) and temp directories. The server has sendfile and keep-alive on, serves
# ranges and If-Range (nginx's ETag is "<mtime hex>-<size hex>"), and no directory listings.
#
# Exit status: 0; 77 (skip) when nginx is not installed ($NGINX, default /usr/sbin/nginx, from
# Debian's nginx-light); 1 on any failure, with the reason and the tail of error.log on stderr.
set -eu

NGINX=${NGINX:-/usr/sbin/nginx}
START_TIMEOUT=${NGINX_START_TIMEOUT:-10} # seconds to wait for nginx to answer
STOP_TIMEOUT=${NGINX_STOP_TIMEOUT:-10}   # seconds to wait for it to exit

die() {
	echo "nginx.sh: $*" >&2
	exit 1
}

usage() {
	echo "usage: nginx.sh start ROOT_DIR STATE_DIR | nginx.sh stop STATE_DIR" >&2
	exit 2
}

# Seconds since the epoch, with fractions, for deadlines.
now() {
	date +%s.%N
}

before() { # before DEADLINE: is it still earlier than DEADLINE?
	awk -v now="$(now)" -v d="$1" 'BEGIN { exit !(now < d) }'
}

# alive PID: does process PID exist and has it not exited? Orphaned nginx masters are reaped by
# PID 1, which may take a while: a zombie counts as gone.
alive() {
	local st
	st=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null) || return 1
	[ -n "$st" ] && [ "${st%% *}" != Z ]
}

# wait_gone PID SECONDS: wait until process PID (not necessarily our child) has exited; false
# if it is still there after SECONDS. A pidfd wakes us exactly when it exits (Python: $PYTHON, or
# python3); without Python, poll with a short pause until the deadline.
wait_gone() {
	local py=${PYTHON:-python3}
	if command -v "$py" >/dev/null 2>&1; then
		"$py" - "$1" "$2" <<'PY'
import os, select, sys
try:
    fd = os.pidfd_open(int(sys.argv[1]))
except ProcessLookupError:
    sys.exit(0)
sys.exit(0 if select.select([fd], [], [], float(sys.argv[2]))[0] else 1)
PY
		return
	fi
	local deadline
	deadline=$(awk -v n="$(now)" -v t="$2" 'BEGIN { printf "%.3f", n + t }')
	while alive "$1"; do
		before "$deadline" || return 1
		sleep 0.02
	done
}

# Is a TCP port on 127.0.0.1 free? A refused connection says nobody listens there.
port_free() {
	! (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

write_conf() { # write_conf ROOT STATE PORT
	local user=""
	# Run as root (tests do), the workers would default to "nobody", who cannot read the
	# test's private temp directories.
	if [ "$(id -u)" = 0 ]; then
		user="user root root;"
	fi
	cat >"$2/nginx.conf" <<EOF
# Written by tests/servers/nginx.sh; regenerated at every start.
$user
worker_processes 1;
daemon on;
pid $2/nginx.pid;
error_log $2/error.log info;

events {
	worker_connections 256;
}

http {
	default_type application/octet-stream;
	log_format chunkd_json escape=json
		'{"t":\$msec,"method":"\$request_method","path":"\$request_uri",'
		'"range":"\$http_range","if_range":"\$http_if_range","status":\$status,'
		'"bytes":\$body_bytes_sent,"conn":\$connection,"conn_req":\$connection_requests}';
	access_log $2/access.log chunkd_json;
	client_body_temp_path $2/tmp/body;
	proxy_temp_path $2/tmp/proxy;
	fastcgi_temp_path $2/tmp/fastcgi;
	uwsgi_temp_path $2/tmp/uwsgi;
	scgi_temp_path $2/tmp/scgi;

	sendfile on;
	tcp_nopush on;
	keepalive_timeout 65;
	keepalive_requests 100000;

	server {
		listen 127.0.0.1:$3;
		server_name localhost;
		root $1;
		autoindex off;
	}
}
EOF
}

start() { # start ROOT STATE
	[ -x "$NGINX" ] || {
		echo "nginx.sh: $NGINX is not installed (apt-get install nginx-light); skipping" >&2
		exit 77
	}
	[ -d "$1" ] || die "root $1 is not a directory"
	mkdir -p "$2/tmp" || die "cannot create $2/tmp"
	local root state pid
	root=$(cd "$1" && pwd)
	state=$(cd "$2" && pwd)
	if [ -s "$state/nginx.pid" ] && alive "$(cat "$state/nginx.pid")"; then
		die "nginx already runs for $state (pid $(cat "$state/nginx.pid"))"
	fi
	rm -f "$state/nginx.pid" "$state/port"

	# Ports below the kernel's ephemeral range (32768+ by default), so that outgoing
	# connections never hold the one picked. nginx itself retries a busy port for 2.5 s, so
	# skip ports something already listens on, and try another if the bind still loses a race.
	local port=""
	for _ in $(seq 1 20); do
		port=$((20000 + RANDOM % 12000))
		port_free "$port" || continue
		write_conf "$root" "$state" "$port"
		if "$NGINX" -p "$state/" -c "$state/nginx.conf" -e "$state/error.log" \
			</dev/null >>"$state/nginx.out" 2>&1; then
			break
		fi
		grep -q "Address already in use" "$state/error.log" "$state/nginx.out" 2>/dev/null ||
			{ tail -n 20 "$state/error.log" "$state/nginx.out" >&2 2>/dev/null; die "nginx failed to start"; }
		port=""
	done
	[ -n "$port" ] || die "no free port after 20 tries"

	# The daemonised master writes its pid file after the launcher exits; wait for it and for
	# an HTTP answer (any status) on the port.
	local deadline code
	deadline=$(awk -v n="$(now)" -v t="$START_TIMEOUT" 'BEGIN { printf "%.3f", n + t }')
	while :; do
		code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 \
			"http://127.0.0.1:$port/" 2>/dev/null || true)
		if [ -s "$state/nginx.pid" ] && [ "${code:-000}" != 000 ]; then
			break
		fi
		before "$deadline" || {
			tail -n 20 "$state/error.log" >&2 2>/dev/null
			stop "$state" || true
			die "nginx did not answer on port $port within ${START_TIMEOUT}s"
		}
	done
	echo "$port" >"$state/port"
	echo "PORT $port"
}

stop() { # stop STATE
	local state="$1" pid
	[ -s "$state/nginx.pid" ] || return 0
	pid=$(cat "$state/nginx.pid")
	if ! alive "$pid"; then
		rm -f "$state/nginx.pid"
		return 0
	fi
	# TERM is nginx's fast shutdown: open connections are closed, not drained.
	kill -TERM "$pid" 2>/dev/null || true
	if ! wait_gone "$pid" "$STOP_TIMEOUT"; then
		echo "nginx.sh: nginx $pid ignored SIGTERM for ${STOP_TIMEOUT}s; killing it" >&2
		# The daemonised master leads its own process group (setsid), workers included:
		# kill the group, so that no orphaned worker keeps the port open.
		kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
		wait_gone "$pid" 5 || die "nginx $pid does not die"
	fi
	rm -f "$state/nginx.pid"
}

case "${1:-}" in
start)
	[ $# = 3 ] || usage
	start "$2" "$3"
	;;
stop)
	[ $# = 2 ] || usage
	[ -d "$2" ] || exit 0
	stop "$(cd "$2" && pwd)"
	;;
*)
	usage
	;;
esac
