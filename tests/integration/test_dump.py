#!/usr/bin/env python3
"""Integration test of chunkd-dump against a real chunkd daemon.

Usage: test_dump.py BIN_DIR SOURCE_DIR

Generates 30 chunks in 3 datasets with scripts/gen-chunks.py, starts BIN_DIR/chunkd on them under
a per-test instance name, waits (polling chunkd-dump, with a deadline) for READY, and checks:
- --json parses and lists exactly the manifest's chunks (ids, datasets, ranges, sizes, paths),
  with header, counts and index consistent with them;
- dumping never makes the kernel allocate catalogue pages (the sparse slot array stays sparse);
- a worker process pinning a chunk twice through libchunkd (ctypes) shows up with its pid and
  both pins, on the chunk and on the client, and disappears after chunkd_close; with the daemon
  stopped, its closed entry stays and is shown closed (alive, then not alive once it exits);
- text mode and the --chunks / --clients selections; $CHUNKD_NAME as the default name;
- a missing instance exits 1 with its message; a foreign layout exits 1 with the attach error;
  bad usage exits 2;
- after SIGTERM the dump shows STOPPED, daemon not alive, and the catalogue still readable;
- a slot left mid-write (odd seqlock counter) is reported as inconsistent, promptly.
Exit 0 pass, 1 fail, 77 skip. Cleans up the daemon, /dev/shm/chunkd.NAME.* and the temp dir.
"""
import ctypes
import json
import mmap
import os
import select
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time

DEADLINE_S = 20.0
NCHUNKS, NDATASETS, NFILES, FILE_SIZE = 30, 3, 2, 4096
CAT_MAGIC = 0x31544143444B4E43
MAX_CHUNKS, MAX_CLIENTS = 65536, 16
SLOT_SEQ_OFF = 8  # struct chunkd_slot: u64 gen_state, then u32 seq (shm/layout.h)


class Fail(Exception):
    pass


def check(cond, what, got=None, want=None):
    if not cond:
        msg = what
        if got is not None or want is not None:
            msg += "\n    got:  %r\n    want: %r" % (got, want)
        raise Fail(msg)


def eq(got, want, what):
    check(got == want, what, got, want)


class Ctx:
    def __init__(self, bin_dir, src_dir):
        self.dump_bin = os.path.join(bin_dir, "chunkd-dump")
        self.chunkd_bin = os.path.join(bin_dir, "chunkd")
        self.lib = os.path.join(os.path.dirname(bin_dir), "lib", "libchunkd.so")
        self.gen = os.path.join(src_dir, "scripts", "gen-chunks.py")
        self.tmp = tempfile.mkdtemp(prefix="chunkd-test-dump.")
        self.data = os.path.join(self.tmp, "data")
        self.name = "dumptest-%d" % os.getpid()
        self.names = [self.name]
        self.daemon = None
        self.children = []
        self.daemon_log = os.path.join(self.tmp, "chunkd.log")

    def dump(self, *args, env=None):
        p = subprocess.run([self.dump_bin] + list(args), capture_output=True, text=True,
                           timeout=DEADLINE_S, env=env)
        return p.returncode, p.stdout, p.stderr

    def dump_json(self, *args):
        rc, out, err = self.dump("--name", self.name, "--json", *args)
        eq(rc, 0, "chunkd-dump --json exit status (stderr: %s)" % err.strip())
        try:
            return json.loads(out)
        except ValueError as e:
            raise Fail("chunkd-dump --json output does not parse: %s\n%s" % (e, out[:2000]))

    def cleanup(self):
        for p in self.children:
            if p.poll() is None:
                p.kill()
                p.wait()
        if self.daemon and self.daemon.poll() is None:
            self.daemon.kill()
            self.daemon.wait()
        for n in self.names:
            for suffix in ("cat", "req", "lock"):
                try:
                    os.unlink("/dev/shm/chunkd.%s.%s" % (n, suffix))
                except FileNotFoundError:
                    pass
        shutil.rmtree(self.tmp, ignore_errors=True)

    def daemon_stderr(self):
        try:
            with open(self.daemon_log) as f:
                return f.read()
        except OSError:
            return ""


def cat_blocks(ctx):
    return os.stat("/dev/shm/chunkd.%s.cat" % ctx.name).st_blocks


def wait_ready(ctx):
    """Poll chunkd-dump until the daemon says READY; fail at the deadline."""
    deadline = time.monotonic() + DEADLINE_S
    last = "no dump yet"
    while time.monotonic() < deadline:
        check(ctx.daemon.poll() is None, "chunkd exited early with status %s:\n%s"
              % (ctx.daemon.returncode, ctx.daemon_stderr()))
        rc, out, err = ctx.dump("--name", ctx.name, "--json")
        if rc == 0:
            try:
                obj = json.loads(out)
                if obj.get("state") == "READY":
                    return obj
                last = "state %s" % obj.get("state")
            except ValueError as e:
                last = "unparsable JSON (%s)" % e
        else:
            last = "exit %d: %s" % (rc, err.strip())
        time.sleep(0.02)
    raise Fail("chunkd did not become READY within %.0f s (last: %s)\n%s"
               % (DEADLINE_S, last, ctx.daemon_stderr()))


def check_catalogue(ctx, obj, manifest, state, alive):
    """Header, counts, index and chunk table against the manifest."""
    eq(obj["name"], ctx.name, "name")
    eq(obj["magic"], "0x%016x" % CAT_MAGIC, "magic")
    eq(obj["version"], int(obj["format"], 16) >> 24, "layout version matches the format word")
    eq(obj["state"], state, "daemon state")
    eq(obj["daemon"]["pid"], ctx.daemon.pid, "daemon pid")
    eq(obj["daemon"]["alive"], alive, "daemon alive")
    eq(obj["epoch"], 1, "epoch of a fresh instance")
    eq(obj["data_dir"], os.path.realpath(ctx.data), "data dir")
    eq(obj["max_chunks"], MAX_CHUNKS, "max_chunks")
    eq(obj["max_clients"], MAX_CLIENTS, "max_clients")
    eq(obj["nchunks"], NCHUNKS, "nchunks")
    now = time.time_ns()
    check(0 < obj["start_time_ns"] <= obj["heartbeat_ns"] <= now,
          "start <= heartbeat <= now", (obj["start_time_ns"], obj["heartbeat_ns"]), now)
    check(now - obj["start_time_ns"] < 600e9, "start time is recent", obj["start_time"])
    check(obj["start_time"].endswith("Z") and "T" in obj["start_time"], "ISO-8601 UTC time",
          obj["start_time"])
    idx = obj["index"]
    check(idx["consistent"] and idx["flips"] >= 1, "index readable and published", idx)
    eq((idx["datasets"], idx["ranges"], idx["ids"]), (NDATASETS, NCHUNKS, NCHUNKS),
       "index datasets/ranges/ids")
    eq(obj["counts"], {"published": NCHUNKS, "queued": 0, "downloading": 0, "failed": 0,
                       "condemned": 0, "unknown": 0, "inconsistent": 0,
                       "datasets": NDATASETS}, "counts")

    want = {c["id"]: c for c in manifest["chunks"]}
    got_ids = [c.get("id") for c in obj["chunks"]]
    eq(len(got_ids), len(set(got_ids)), "no chunk listed twice")
    eq(sorted(got_ids), sorted(want), "chunk ids")
    slots = set()
    for c in obj["chunks"]:
        m = want[c["id"]]
        what = "chunk %s" % c["id"]
        eq(c["state"], "published", what + " state")
        check(c["gen"] >= 1, what + " gen >= 1", c["gen"])
        eq((c["dataset"], c["first"], c["end"]), (m["dataset"], m["first"], m["end"]),
           what + " dataset/first/end")
        eq(c["nfiles"], len(m["files"]), what + " nfiles")
        eq(c["bytes"], sum(f["size"] for f in m["files"]), what + " bytes")
        eq(c["path"], os.path.join(os.path.realpath(ctx.data), m["dir"]), what + " path")
        eq((c["attempts"], c["last_error"], c["http_status"], c["message"]), (0, 0, 0, ""),
           what + " attempts/last_error/http_status/message of a chunk found on disk")
        check(c["published_ns"] >= obj["start_time_ns"], what + " published after the start",
              c["published"])
        check(0 <= c["slot"] < obj["max_chunks"], what + " slot in range", c["slot"])
        slots.add(c["slot"])
    eq(len(slots), NCHUNKS, "distinct slots")


# A worker process: pins one chunk twice through libchunkd (ctypes) and says "pinned ID"; at the
# next line on stdin releases both pins and closes the handle and says "closed"; at the next line
# exits. argv: LIB NAME DATASET_HEX BLOCK [enqueue]; with "enqueue" it also enqueues a delete of
# an unknown chunk id (a no-op for a daemon) before saying "pinned".
CLIENT = r"""
import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
class Ref(ctypes.Structure):  # chunkd_ref in include/chunkd.h
    _fields_ = [("id", ctypes.c_uint8 * 32), ("dataset", ctypes.c_uint8 * 32),
                ("first_block", ctypes.c_uint64), ("end_block", ctypes.c_uint64),
                ("path", ctypes.c_char_p), ("_pin", ctypes.c_uint32),
                ("_slot", ctypes.c_uint32), ("_word", ctypes.c_uint64)]
lib.chunkd_open.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]
lib.chunkd_find.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint64,
                            ctypes.POINTER(Ref)]
lib.chunkd_release.argtypes = [ctypes.c_void_p, ctypes.POINTER(Ref)]
lib.chunkd_close.argtypes = [ctypes.c_void_p]
c = ctypes.c_void_p()
r = lib.chunkd_open(sys.argv[2].encode(), ctypes.byref(c))
if r:
    print("error chunkd_open %d" % r, flush=True); sys.exit(1)
refs = [Ref(), Ref()]
for ref in refs:
    r = lib.chunkd_find(c, bytes.fromhex(sys.argv[3]), int(sys.argv[4]), ctypes.byref(ref))
    if r:
        print("error chunkd_find %d" % r, flush=True); sys.exit(1)
if len(sys.argv) > 5:
    lib.chunkd_delete.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
    r = lib.chunkd_delete(c, b"\xee" * 32, None)
    if r:
        print("error chunkd_delete %d" % r, flush=True); sys.exit(1)
print("pinned %s" % bytes(refs[0].id).hex(), flush=True)
sys.stdin.readline()
for ref in refs:
    lib.chunkd_release(c, ctypes.byref(ref))
lib.chunkd_close(c)
print("closed", flush=True)
sys.stdin.readline()
"""


def die_with_parent():
    """preexec_fn: a child (daemon, worker) gets SIGKILL if the test dies without cleaning up
    (a ctest timeout, a crash), instead of running on as an orphan."""
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def client_env(lib):
    """A sanitizer build's libchunkd needs its runtimes loaded first: preload them."""
    env = dict(os.environ)
    p = subprocess.run(["ldd", lib], capture_output=True, text=True)
    pre = [line.split("=>")[1].split()[0] for line in p.stdout.splitlines()
           if "=>" in line and ("libasan" in line or "libubsan" in line or "libtsan" in line)]
    if pre:
        env["LD_PRELOAD"] = " ".join(pre)
        env["ASAN_OPTIONS"] = "detect_leaks=0"  # the interpreter's own allocations
    return env


class Worker:
    """The CLIENT script in a child process, driven line by line with a deadline."""

    def __init__(self, ctx, target, enqueue=False):
        check(os.path.exists(ctx.lib), "libchunkd not built: %s" % ctx.lib)
        self.deadline = time.monotonic() + DEADLINE_S
        self.proc = subprocess.Popen([sys.executable, "-c", CLIENT, ctx.lib, ctx.name,
                                      target["dataset"], str(target["first"])] +
                                     (["enqueue"] if enqueue else []),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     env=client_env(ctx.lib), preexec_fn=die_with_parent)
        ctx.children.append(self.proc)
        self.pid = self.proc.pid
        eq(self.read_line(), "pinned %s" % target["id"], "worker pinned the target")

    def read_line(self):
        while True:
            left = self.deadline - time.monotonic()
            check(left > 0, "worker did not answer before the deadline")
            r, _, _ = select.select([self.proc.stdout], [], [], left)
            if r:
                line = self.proc.stdout.readline()
                check(line != "", "worker exited early (status %s)" % self.proc.poll())
                return line.strip()

    def release_and_close(self):
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        eq(self.read_line(), "closed", "worker released and closed")

    def exit(self):
        self.proc.stdin.write("go\n")
        self.proc.stdin.flush()
        try:
            rc = self.proc.wait(timeout=max(self.deadline - time.monotonic(), 0.1))
        except subprocess.TimeoutExpired:
            raise Fail("worker did not exit before the deadline")
        eq(rc, 0, "worker exit status")


def entries_of(obj, pid):
    return [c for c in obj["clients"] if c["pid"] == pid]


def check_pinned(ctx, target, worker):
    """The dump while the worker holds two pins on target."""
    obj = ctx.dump_json()
    pins = {c["id"]: c["pins"] for c in obj["chunks"]}
    eq(pins[target["id"]], 2, "pins on the pinned chunk")
    eq(sum(pins.values()), 2, "pins on all chunks")
    mine = entries_of(obj, worker.pid)
    eq(len(mine), 1, "the worker listed once (%r)" % obj["clients"])
    eq((mine[0]["alive"], mine[0]["pins"], mine[0]["closed"], mine[0]["reclaiming"]),
       (True, 2, False, False), "worker alive/pins/closed/reclaiming")
    check(abs(mine[0]["attach_ns"] - time.time_ns()) < 600e9, "attach time is recent",
          mine[0]["attach_time"])
    rc, out, err = ctx.dump("--name", ctx.name, "--clients")
    eq(rc, 0, "text --clients exit status")
    # Rows: CLIENT PID ALIVE ATTACHED PINS.
    rows = [l.split() for l in out.splitlines() if l.split() and l.split()[0].isdigit()]
    check([str(worker.pid), "yes", "2"] in [[f[1], f[2], f[4]] for f in rows if len(f) >= 5],
          "text client table lists the worker as alive with 2 pins", out)


def check_pins_live(ctx, manifest):
    """With the daemon running: pins show up, and the closed worker's entry goes away."""
    target = manifest["chunks"][7]
    w = Worker(ctx, target)
    check_pinned(ctx, target, w)
    w.release_and_close()
    obj = ctx.dump_json()
    eq(sum(c["pins"] for c in obj["chunks"]), 0, "no pins after release")
    # chunkd_close marks the entry closed and the daemon frees it when woken: it must be gone
    # before the deadline, and until then be shown closed with no pins.
    while entries_of(obj, w.pid):
        eq([(c["closed"], c["pins"]) for c in entries_of(obj, w.pid)], [(True, 0)],
           "a closing worker's entry")
        check(time.monotonic() < w.deadline, "client entry still taken %.0f s after "
              "chunkd_close" % DEADLINE_S, entries_of(obj, w.pid))
        time.sleep(0.02)
        obj = ctx.dump_json()
    w.exit()


def check_pins_stopped(ctx, manifest):
    """With the daemon stopped, nobody frees a closed entry: the dump must show it closed,
    alive while the worker runs and not alive once it has exited."""
    target = manifest["chunks"][11]
    w = Worker(ctx, target, enqueue=True)
    check_pinned(ctx, target, w)
    # With no daemon to take it, the worker's delete record (48 bytes) stays in its ring.
    eq([(c["ring_used"], c["ring_size"], c["rejected"]) for c in entries_of(ctx.dump_json(), w.pid)],
       [(48, 1 << 20, 0)], "ring usage of a client whose request no daemon has taken")
    rc, out, _ = ctx.dump("--name", ctx.name, "--clients")
    check(rc == 0 and "48/1024K" in out, "text shows the ring usage", out)
    w.release_and_close()
    obj = ctx.dump_json()
    eq(sum(c["pins"] for c in obj["chunks"]), 0, "no pins after release")
    eq([(c["alive"], c["closed"], c["reclaiming"], c["pins"]) for c in entries_of(obj, w.pid)],
       [(True, True, False, 0)], "closed entry of a running worker, no daemon to free it")
    rc, out, _ = ctx.dump("--name", ctx.name, "--clients")
    check(rc == 0 and "(closed; the daemon frees the slot)" in out, "text shows the closed "
          "entry", out)
    w.exit()
    obj = ctx.dump_json()
    eq([(c["alive"], c["closed"]) for c in entries_of(obj, w.pid)], [(False, True)],
       "closed entry of an exited worker")


def check_text(ctx, manifest):
    rc, out, err = ctx.dump("--name", ctx.name)
    eq(rc, 0, "text mode exit status (stderr: %s)" % err.strip())
    eq(err, "", "text mode stderr")
    for needle in ("instance   %s" % ctx.name, "pid %d (alive), state READY" % ctx.daemon.pid,
                   "published %d," % NCHUNKS, "datasets   %d" % NDATASETS, "SLOT", "CLIENT"):
        check(needle in out, "text output contains %r" % needle, out)
    for c in manifest["chunks"]:
        check(c["id"] in out, "text output lists chunk %s" % c["id"], out)

    rc, out, _ = ctx.dump("--name", ctx.name, "--chunks")
    check(rc == 0 and "SLOT" in out and "CLIENT" not in out, "--chunks shows only chunks", out)
    rc, out, _ = ctx.dump("--name", ctx.name, "--clients")
    check(rc == 0 and "CLIENT" in out and "SLOT" not in out, "--clients shows only clients", out)
    obj = ctx.dump_json("--chunks")
    check("chunks" in obj and "clients" not in obj, "--json --chunks selects chunks", list(obj))
    obj = ctx.dump_json("--clients")
    check("clients" in obj and "chunks" not in obj, "--json --clients selects clients", list(obj))

    env = dict(os.environ, CHUNKD_NAME=ctx.name)
    rc, out, _ = ctx.dump("--json", env=env)
    eq((rc, json.loads(out)["name"] if rc == 0 else None), (0, ctx.name),
       "$CHUNKD_NAME names the default instance")


def check_errors(ctx):
    missing = "dumpmissing-%d" % os.getpid()
    rc, out, err = ctx.dump("--name", missing)
    eq((rc, out, err), (1, "", "chunkd-dump: no instance '%s' (is chunkd running?)\n" % missing),
       "missing instance")

    # A catalogue of another layout: right magic, foreign format word, marked initialised.
    fake = "dumpfake-%d" % os.getpid()
    ctx.names.append(fake)
    with open("/dev/shm/chunkd.%s.cat" % fake, "wb") as f:
        f.write(struct.pack("=QII", CAT_MAGIC, 0xDEADBEEF, 1).ljust(4096, b"\0"))
    rc, out, err = ctx.dump("--name", fake)
    eq(rc, 1, "foreign layout exit status")
    # The detail is the attach error buffer's (shm.c); it must name the foreign format word.
    check(err.startswith("chunkd-dump: instance '%s': catalogue: " % fake) and
          "0xdeadbeef" in err and out == "", "foreign layout message", err)

    for args in (["--bogus"], ["extra"], ["--name", "bad/name"], ["--name"]):
        rc, out, err = ctx.dump(*args)
        eq((rc, out), (2, ""), "bad usage %r: exit status and stdout" % args)
        check("chunkd-dump" in err, "bad usage %r explains itself on stderr" % args, err)
    rc, out, _ = ctx.dump("--help")
    check(rc == 0 and out.startswith("Usage: chunkd-dump"), "--help", (rc, out[:80]))


def check_inconsistent_slot(ctx, obj, slot):
    """Leave a slot's seqlock odd, as a daemon killed mid-write would, and dump it."""
    off = obj["slots_offset"] + slot * obj["slot_bytes"] + SLOT_SEQ_OFF
    with open("/dev/shm/chunkd.%s.cat" % ctx.name, "r+b") as f:
        m = mmap.mmap(f.fileno(), off + 4)
        seq = struct.unpack_from("=I", m, off)[0]
        eq(seq % 2, 0, "slot %d seqlock is even before the test" % slot)
        struct.pack_into("=I", m, off, seq + 1)
        m.close()
    t0 = time.monotonic()
    obj = ctx.dump_json()
    check(time.monotonic() - t0 < 10, "dump with a stuck slot returns promptly",
          time.monotonic() - t0)
    rows = [c for c in obj["chunks"] if c["slot"] == slot]
    eq(rows, [{"slot": slot, "state": "inconsistent"}], "stuck slot row")
    eq((obj["counts"]["inconsistent"], obj["counts"]["published"]), (1, NCHUNKS - 1),
       "counts with a stuck slot")
    rc, out, _ = ctx.dump("--name", ctx.name, "--chunks")
    check(rc == 0 and any(l.split()[:2] == [str(slot), "inconsistent"]
                          for l in out.splitlines()), "text shows the stuck slot", out)


def run(ctx):
    for path in (ctx.dump_bin, ctx.chunkd_bin):
        check(os.access(path, os.X_OK), "binary missing: %s" % path)
    manifest_path = os.path.join(ctx.tmp, "manifest.json")
    subprocess.run([sys.executable, ctx.gen, "--out", ctx.data, "--datasets", str(NDATASETS),
                    "--chunks", str(NCHUNKS), "--files", str(NFILES), "--size", str(FILE_SIZE),
                    "--manifest", manifest_path], check=True, timeout=120)
    with open(manifest_path) as f:
        manifest = json.load(f)
    eq(len(manifest["chunks"]), NCHUNKS, "manifest size")

    check_errors(ctx)

    with open(ctx.daemon_log, "w") as log:
        ctx.daemon = subprocess.Popen([ctx.chunkd_bin, "--data-dir", ctx.data, "--name",
                                       ctx.name, "--max-chunks", str(MAX_CHUNKS),
                                       "--max-clients", str(MAX_CLIENTS)],
                                      stdout=log, stderr=log, preexec_fn=die_with_parent)
    wait_ready(ctx)
    obj = ctx.dump_json()
    check_catalogue(ctx, obj, manifest, "READY", True)
    eq(obj["clients"], [], "no clients attached yet")

    # The slot array is sparse (30 of 65536 slots used) and the daemon writes only what it uses;
    # the dumps so far (the polling included) must have left it that way, and so must another.
    before = cat_blocks(ctx)
    used, size = before * 512, os.stat("/dev/shm/chunkd.%s.cat" % ctx.name).st_size
    check(used < 1 << 20, "the catalogue stays sparse: %d KiB of %d KiB allocated (did a dump "
          "read never-written pages, or does the daemon now write them?)"
          % (used >> 10, size >> 10))
    ctx.dump_json()
    ctx.dump("--name", ctx.name)
    eq(cat_blocks(ctx), before, "catalogue blocks allocated after more dumps")

    check_text(ctx, manifest)
    check_pins_live(ctx, manifest)

    ctx.daemon.send_signal(signal.SIGTERM)
    try:
        rc = ctx.daemon.wait(timeout=DEADLINE_S)
    except subprocess.TimeoutExpired:
        raise Fail("chunkd did not exit within %.0f s of SIGTERM" % DEADLINE_S)
    eq(rc, 0, "chunkd exit status after SIGTERM")
    obj = ctx.dump_json()
    check_catalogue(ctx, obj, manifest, "STOPPED", False)
    rc, out, _ = ctx.dump("--name", ctx.name)
    check(rc == 0 and "pid %d (not running), state STOPPED" % ctx.daemon.pid in out,
          "text shows the stopped daemon", out)

    check_pins_stopped(ctx, manifest)
    check_inconsistent_slot(ctx, obj, obj["chunks"][3]["slot"])


def on_signal(signo, _frame):
    raise Fail("killed by signal %d" % signo)


def main():
    if len(sys.argv) != 3:
        sys.stderr.write("usage: test_dump.py BIN_DIR SOURCE_DIR\n")
        return 2
    if not os.path.isdir("/dev/shm"):
        print("SKIP: no /dev/shm")
        return 77
    ctx = Ctx(os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2]))
    # Turn SIGTERM/SIGINT into an exception so that the clean-up below still runs.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        run(ctx)
    except Fail as e:
        print("FAIL: %s" % e)
        log = ctx.daemon_stderr()
        if log:
            print("--- chunkd log ---\n" + log)
        return 1
    finally:
        ctx.cleanup()
    print("PASS: chunkd-dump (instance %s)" % ctx.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
