#!/usr/bin/env bash
# test.sh — install dependencies, configure, build and run every chunkd test.
#
# Usage: scripts/test.sh [--sanitize address,undefined|thread] [--build-dir DIR] [--] [CTEST ARG]...
#   --sanitize LIST   build with these sanitizers (Debug build): address,undefined (ASan+UBSan,
#                     default dir build-asan/) or thread (TSan, default dir build-tsan/).
#   --build-dir DIR   where to build (default: build/, or the sanitizer's dir above).
#   --no-deps         do not run scripts/deps.sh first.
#   CTEST ARG...      passed to ctest, e.g. -R unit -j2, or -L integration.
#
# Warnings are errors (-DCHUNKD_WERROR=ON). ctest runs with --output-on-failure --timeout 300.
# Exit status: 0 all tests passed (or were skipped), 1 a build or test failure, 2 bad usage,
# 77 the sanitizer cannot run on this machine (only --sanitize thread, explained on stderr).
# The last line printed is a summary: "test.sh: N passed, N failed, N skipped".
# Tests find the sanitizer in $CHUNKD_TEST_SANITIZER (empty without one).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
sanitize=""
build_dir=""
run_deps=1
ctest_args=()

usage() {
	awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
}

while [ $# -gt 0 ]; do
	case "$1" in
	--sanitize)
		[ $# -ge 2 ] || { echo "test.sh: --sanitize needs a value" >&2; exit 2; }
		sanitize=$2
		shift 2
		;;
	--sanitize=*)
		sanitize=${1#--sanitize=}
		shift
		;;
	--build-dir)
		[ $# -ge 2 ] || { echo "test.sh: --build-dir needs a value" >&2; exit 2; }
		build_dir=$2
		shift 2
		;;
	--build-dir=*)
		build_dir=${1#--build-dir=}
		shift
		;;
	--no-deps)
		run_deps=0
		shift
		;;
	-h | --help)
		usage
		exit 0
		;;
	--)
		shift
		ctest_args+=("$@")
		break
		;;
	*)
		ctest_args+=("$1")
		shift
		;;
	esac
done

case "$sanitize" in
"") kind=plain default_dir=build ;;
address | undefined | address,undefined | undefined,address) kind=asan default_dir=build-asan ;;
thread) kind=tsan default_dir=build-tsan ;;
*)
	echo "test.sh: --sanitize '$sanitize': expected address,undefined or thread" >&2
	exit 2
	;;
esac
build_dir=${build_dir:-$root/$default_dir}
mkdir -p "$build_dir"
build_dir=$(cd "$build_dir" && pwd)
label="${sanitize:-no sanitizer}, $build_dir"
t0=$(date +%s)

summary() { # summary PASSED|FAILED passed failed skipped
	echo "test.sh: $1 ($label, $(($(date +%s) - t0)) s)"
	echo "test.sh: $2 passed, $3 failed, $4 skipped"
}

if [ $run_deps = 1 ]; then
	"$root/scripts/deps.sh"
fi

# Sanitizer run-time options. Ours come first so that the caller's own settings win.
# CHUNKD_TEST_SANITIZER tells tests which sanitizer they run under (empty: none), so that a test
# may scale its iteration counts or deadlines to the sanitizer's slowdown.
export CHUNKD_TEST_SANITIZER="$sanitize"
runner=()
case $kind in
asan)
	asan_opts="detect_leaks=1:abort_on_error=1:halt_on_error=1:strict_string_checks=1"
	export ASAN_OPTIONS="$asan_opts${ASAN_OPTIONS:+:$ASAN_OPTIONS}"
	export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1${UBSAN_OPTIONS:+:$UBSAN_OPTIONS}"
	;;
tsan)
	export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1${TSAN_OPTIONS:+:$TSAN_OPTIONS}"
	;;
esac

# Can a program built with these sanitizers run here at all? Two known obstacles:
# - TSan in gcc 12 maps its shadow at fixed addresses and aborts with "unexpected memory mapping"
#   on kernels with high mmap ASLR entropy (vm.mmap_rnd_bits > 28); running it with ASLR off
#   (setarch -R, inherited by every child) avoids that without touching the machine's settings.
# - LeakSanitizer needs ptrace-like access to stop threads; some containers forbid it.
# A tiny threaded program answers both questions in well under a second.
probe_dir=$(mktemp -d "${TMPDIR:-/tmp}/chunkd-probe.XXXXXX")
trap 'rm -rf "$probe_dir"' EXIT
probe() { # probe -> 0 if the sanitizer works, with the reason of a failure in $probe_dir/out
	cat >"$probe_dir/p.c" <<-'EOF'
		#include <pthread.h>
		#include <stdlib.h>
		static int shared;
		static void *run(void *arg)
		{
			__atomic_fetch_add(&shared, 1, __ATOMIC_RELAXED);
			return arg;
		}
		int main(void)
		{
			pthread_t t;
			void *p = malloc(16);
			if (pthread_create(&t, NULL, run, p) || pthread_join(t, NULL))
				return 1;
			free(p);
			return 0;
		}
	EOF
	cc -fsanitize="$sanitize" -g -pthread "$probe_dir/p.c" -o "$probe_dir/p" \
		>"$probe_dir/out" 2>&1 || return 1
	"${runner[@]}" "$probe_dir/p" >>"$probe_dir/out" 2>&1
}
if [ $kind != plain ] && ! probe; then
	if [ $kind = tsan ] && grep -q "unexpected memory mapping" "$probe_dir/out" &&
		runner=(setarch "$(uname -m)" -R) && probe; then
		bits=$(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo '?')
		echo "test.sh: TSan needs ASLR off on this kernel (vm.mmap_rnd_bits = $bits):" \
			"running ctest under ${runner[*]}"
	elif [ $kind = asan ] && grep -q "LeakSanitizer has encountered a fatal error" \
		"$probe_dir/out" && ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=0" probe; then
		echo "test.sh: LeakSanitizer cannot run here (no ptrace): leak checks are off" >&2
		export ASAN_OPTIONS="$ASAN_OPTIONS:detect_leaks=0"
	else
		echo "test.sh: a program built with -fsanitize=$sanitize cannot run here:" >&2
		sed 's/^/    /' "$probe_dir/out" | head -20 >&2
		if [ $kind = tsan ]; then
			summary "SKIPPED: TSan cannot run here" 0 0 0
			exit 77
		fi
		summary FAILED 0 1 0
		exit 1
	fi
fi

cmake_args=(-S "$root" -B "$build_dir" -DCHUNKD_WERROR=ON)
if [ $kind = plain ]; then
	cmake_args+=(-DCHUNKD_SANITIZE=)
else
	# Benchmarks measure the optimised build; under a sanitizer they would only slow the build.
	cmake_args+=(-DCMAKE_BUILD_TYPE=Debug "-DCHUNKD_SANITIZE=$sanitize" -DCHUNKD_BENCH=OFF)
fi
echo "test.sh: configuring $build_dir"
if ! cmake "${cmake_args[@]}"; then
	summary "FAILED: cmake configure" 0 1 0
	exit 1
fi
echo "test.sh: building with $(nproc) jobs"
if ! cmake --build "$build_dir" -j "$(nproc)"; then
	summary "FAILED: build" 0 1 0
	exit 1
fi

# Run the tests. ctest's own log lines are parsed for the summary: one "N/M Test #K: name ..."
# line per test, ending in "Passed", "***Skipped"/"Not Run", or a failure.
log="$build_dir/test.sh.log"
echo "test.sh: ctest ${ctest_args[*]}"
set +e
(cd "$build_dir" && "${runner[@]}" ctest --output-on-failure --timeout 300 --no-tests=error \
	"${ctest_args[@]}") | tee "$log"
rc=${PIPESTATUS[0]}
set -e
results=$(grep -E '^ *[0-9]+/[0-9]+ Test +#[0-9]+: ' "$log" || true)
passed=$(grep -c ' Passed ' <<<"$results" || true)
skipped=$(grep -c -E '\*\*\*Skipped|\*\*\*Not Run|  Not Run' <<<"$results" || true)
total=$(grep -c . <<<"$results" || true)
failed=$((total - passed - skipped))
if [ "$rc" -ne 0 ] && [ "$failed" -eq 0 ]; then
	failed=1 # ctest failed without a test line (no tests found, a ctest error): count it.
fi
if [ "$rc" -eq 0 ] && [ "$failed" -eq 0 ]; then
	summary PASSED "$passed" 0 "$skipped"
	exit 0
fi
summary "FAILED (ctest exit $rc; log in $log)" "$passed" "$failed" "$skipped"
exit 1
