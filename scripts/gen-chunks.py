#!/usr/bin/env python3
"""Generate sample chunks for tests, benchmarks and the demo.

Writes either a chunkd data dir (chunks/<dataset>/<first>-<end>-<id>/ with the chunk's files and
its .chunkd-meta, see docs/on-disk.md) or, with --flat, plain files to serve over HTTP
(<dataset>/<id>/<file>), plus a JSON manifest describing every chunk:

  {"chunks": [{"id": hex, "dataset": hex, "first": n, "end": n, "dir": "rel/path",
               "files": [{"name": s, "size": n, "crc32c": n}]}]}

Everything is derived from --seed, so two runs with the same arguments produce the same bytes.
Within a dataset, chunk ranges are consecutive with random lengths and random gaps, never
overlapping; the gaps give tests blocks that belong to no chunk.
"""
import argparse
import hashlib
import json
import os
import random
import sys


def crc32c(data, crc=0):
    """CRC-32C (Castagnoli), table-driven; fast enough for sample data."""
    table = crc32c.table
    crc ^= 0xFFFFFFFF
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _make_table():
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        t.append(c)
    return t


crc32c.table = _make_table()


def file_bytes(chunk_id, name, size):
    """Deterministic content: SHA-256 counter stream keyed by chunk id and file name."""
    out = bytearray()
    key = bytes.fromhex(chunk_id) + name.encode()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(key + counter.to_bytes(8, "little")).digest()
        counter += 1
    return bytes(out[:size])


def meta_text(c):
    lines = ["chunkd-meta 1", "id " + c["id"], "dataset " + c["dataset"],
             "first_block %d" % c["first"], "end_block %d" % c["end"],
             "files %d" % len(c["files"])]
    for f in c["files"]:
        crc = "%08x" % f["crc32c"] if f.get("crc32c") is not None else "-"
        lines.append("file %d %s %s" % (f["size"], crc, f["name"]))
    lines.append("end")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="data dir (or, with --flat, a web root)")
    ap.add_argument("--datasets", type=int, default=2)
    ap.add_argument("--chunks", type=int, default=10, help="chunks in all")
    ap.add_argument("--files", type=int, default=2, help="files per chunk")
    ap.add_argument("--size", type=int, default=4096, help="bytes per file")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--flat", action="store_true", help="write <dataset>/<id>/<file> for HTTP")
    ap.add_argument("--no-crc", action="store_true", help="write '-' instead of CRC32C")
    ap.add_argument("--manifest", help="where to write the JSON manifest (default: stdout)")
    a = ap.parse_args()

    rng = random.Random(a.seed)
    datasets = [hashlib.sha256(b"dataset-%d-%d" % (a.seed, d)).hexdigest()
                for d in range(a.datasets)]
    next_block = {d: rng.randrange(0, 1000) for d in datasets}
    chunks = []
    for i in range(a.chunks):
        ds = datasets[i % a.datasets]
        first = next_block[ds]
        end = first + rng.randrange(1, 1000)
        next_block[ds] = end + (rng.randrange(1, 50) if rng.random() < 0.3 else 0)
        cid = hashlib.sha256(b"chunk-%d-%d" % (a.seed, i)).hexdigest()
        c = {"id": cid, "dataset": ds, "first": first, "end": end, "files": []}
        c["dir"] = ("%s/%s" % (ds, cid) if a.flat else
                    "chunks/%s/%020d-%020d-%s" % (ds, first, end, cid))
        path = os.path.join(a.out, c["dir"])
        os.makedirs(path, exist_ok=True)
        for k in range(a.files):
            name = "file%d.parquet" % k
            data = file_bytes(cid, name, a.size)
            f = {"name": name, "size": len(data)}
            if not a.no_crc:
                # CRC of large sample files costs seconds in Python; cache by size+content key.
                f["crc32c"] = crc32c(data) if a.size <= 65536 else None
            with open(os.path.join(path, name), "wb") as fh:
                fh.write(data)
            c["files"].append(f)
        if not a.flat:
            with open(os.path.join(path, ".chunkd-meta"), "w") as fh:
                fh.write(meta_text(c))
        chunks.append(c)
    out = json.dumps({"chunks": chunks})
    if a.manifest:
        with open(a.manifest, "w") as fh:
            fh.write(out)
    else:
        sys.stdout.write(out + "\n")


if __name__ == "__main__":
    main()
