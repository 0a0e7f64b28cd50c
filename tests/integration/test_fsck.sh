#!/usr/bin/env bash
# chunkd-fsck on a generated data dir: clean, then one damage at a time (flipped byte, truncated
# file, missing file, extra file, missing metadata). Each must be reported with exit status 1,
# and fsck must never change the tree.
set -euo pipefail
bin=$1 src=$2
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

python3 "$src/scripts/gen-chunks.py" --out "$tmp/d" --datasets 2 --chunks 6 --files 3 \
	--size 5000 --manifest "$tmp/m.json"
snap() { (cd "$tmp/d" && find . -type f -print0 | sort -z | xargs -0 sha256sum); }

"$bin/chunkd-fsck" --data-dir "$tmp/d" > "$tmp/out" || fail "clean tree: exit $?"
grep -q "^6 chunks, 18 files, 90000 bytes verified; 0 problems" "$tmp/out" || fail "summary: $(cat "$tmp/out")"

chunks=("$tmp"/d/chunks/*/*)
expect() { # expect PATTERN: fsck exits 1 and prints PATTERN; the tree is unchanged by fsck
	local before after rc=0
	before=$(snap)
	"$bin/chunkd-fsck" --data-dir "$tmp/d" --quiet > "$tmp/out" || rc=$?
	after=$(snap)
	[ "$rc" = 1 ] || fail "expected exit 1 for '$1', got $rc: $(cat "$tmp/out")"
	grep -q "$1" "$tmp/out" || fail "expected '$1' in: $(cat "$tmp/out")"
	[ "$before" = "$after" ] || fail "fsck changed the tree"
}

# A flipped byte keeps the size: only the CRC can tell.
printf '\xff' | dd of="${chunks[0]}/file1.parquet" bs=1 seek=100 conv=notrunc status=none
expect "file1.parquet: CRC32C"
truncate -s 10 "${chunks[1]}/file0.parquet"
expect "file0.parquet: size 10, metadata says 5000"
rm "${chunks[2]}/file2.parquet"
expect "file2.parquet: missing"
echo extra > "${chunks[3]}/stray"
expect "stray: extra file"
rm "${chunks[4]}/.chunkd-meta"
expect "metadata: missing"
"$bin/chunkd-fsck" --data-dir "$tmp/d" --json > "$tmp/out" || true
python3 -c '
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
s = rows[-1]["summary"]
assert s["problems"] == 5, s
assert len(rows) == 6, rows
' "$tmp/out" || fail "json output: $(cat "$tmp/out")"
"$bin/chunkd-fsck" --help | grep -q "Changes nothing" || fail "--help"
rc=0; "$bin/chunkd-fsck" > /dev/null 2>&1 || rc=$?
[ "$rc" = 2 ] || fail "no --data-dir: exit $rc"
echo "1 passed, 0 failed"
