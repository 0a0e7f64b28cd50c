#!/usr/bin/env bash
# deps.sh — install the Debian 12 packages that chunkd needs to build, test and run its demo.
#
# Idempotent: it asks dpkg which packages are missing and installs only those, running
# `apt-get update` only when something is missing. Prints what it installs.
#
# Usage: scripts/deps.sh [--check]
#   --check   only report missing packages; exit 1 if any is missing, 0 otherwise.
#
# Needs root (or sudo) when something is missing. CI runs it as root on a fresh Debian 12 machine.
set -euo pipefail

# Each package with the reason it is here. Keep this list the single source of truth: the README
# and docs point at it instead of repeating it.
PACKAGES=(
	build-essential      # gcc, make, libc headers
	gcc                  # the compiler CI uses (gcc-12 on Debian 12)
	cmake                # build system (>= 3.25, CMakeLists.txt)
	pkg-config           # finds liburing, libcurl and cmocka
	liburing-dev         # the daemon's io_uring event loop
	libcurl4-openssl-dev # downloads over HTTP(S)/S3
	libcmocka-dev        # unit tests
	liblmdb-dev          # bench/: LMDB as a comparison point
	python3              # scripts/gen-chunks.py, tests/integration/*.py, the demo
	nginx-light          # integration tests: a real HTTP server on 127.0.0.1 (downloads)
	clang                # second compiler; clang's sanitizers
	libasan8             # gcc-12 AddressSanitizer runtime (scripts/test.sh --sanitize address)
	libubsan1            # gcc-12 UndefinedBehaviorSanitizer runtime
	libtsan2             # gcc-12 ThreadSanitizer runtime (scripts/test.sh --sanitize thread)
	util-linux           # setarch: runs TSan with ASLR off where the kernel needs it; flock
	procps               # ps, pgrep: the scripts inspect processes they started
	curl                 # tests/servers/nginx.sh; bench-download (curl --parallel)
	aria2                # bench-download (aria2c)
)

check_only=0
case "${1:-}" in
--check) check_only=1 ;;
"") ;;
-h | --help)
	sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//'
	exit 0
	;;
*)
	echo "deps.sh: unknown argument '$1' (try --help)" >&2
	exit 2
	;;
esac

installed() {
	# dpkg-query prints nothing useful for unknown packages; only "install ok installed" counts.
	[ "$(dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true)" = "install ok installed" ]
}

if ! command -v dpkg-query >/dev/null 2>&1; then
	echo "deps.sh: dpkg-query not found: this script supports Debian 12 (bookworm) only" >&2
	exit 1
fi

missing=()
for p in "${PACKAGES[@]}"; do
	installed "$p" || missing+=("$p")
done

if [ ${#missing[@]} -eq 0 ]; then
	echo "deps.sh: all ${#PACKAGES[@]} packages are installed"
	exit 0
fi
echo "deps.sh: missing: ${missing[*]}"
if [ $check_only = 1 ]; then
	exit 1
fi

SUDO=()
if [ "$(id -u)" != 0 ]; then
	if command -v sudo >/dev/null 2>&1; then
		SUDO=(sudo)
	else
		echo "deps.sh: not root and no sudo: install these as root: ${missing[*]}" >&2
		exit 1
	fi
fi

# Installing nginx must not start a system nginx on port 80: the tests run their own servers.
# policy-rc.d exiting 101 is Debian's way to tell maintainer scripts not to start services; put
# one in place only if the machine has none, and remove it afterwards.
policy=/usr/sbin/policy-rc.d
own_policy=0
cleanup() {
	if [ $own_policy = 1 ]; then
		"${SUDO[@]}" rm -f "$policy"
	fi
}
trap cleanup EXIT
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
	"${SUDO[@]}" chmod 755 "$policy"
	own_policy=1
fi

export DEBIAN_FRONTEND=noninteractive
apt_opts=(-y -q --no-install-recommends -o DPkg::Lock::Timeout=300)
echo "deps.sh: apt-get update"
"${SUDO[@]}" apt-get -q -o DPkg::Lock::Timeout=300 update
echo "deps.sh: apt-get install ${missing[*]}"
"${SUDO[@]}" apt-get install "${apt_opts[@]}" "${missing[@]}"

still=()
for p in "${missing[@]}"; do
	installed "$p" || still+=("$p")
done
if [ ${#still[@]} -ne 0 ]; then
	echo "deps.sh: still missing after apt-get install: ${still[*]}" >&2
	exit 1
fi
echo "deps.sh: installed ${missing[*]}"
