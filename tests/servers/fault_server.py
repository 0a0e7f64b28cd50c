#!/usr/bin/env python3
"""fault_server.py - an HTTP/1.1 file server that misbehaves on request, for chunkd's tests.

Serves the files under --root on 127.0.0.1 (GET and HEAD, keep-alive, single byte ranges with
If-Range) and injects faults chosen per request, either by a path prefix or by a query string:

    /fault/SPEC/path/to/file        or        /path/to/file?fault=SPEC

SPEC is a comma-separated list of faults; each may end in "@K" to apply only to the first K
requests carrying this SPEC for this file (counted per (SPEC, file) since the server started):

    NNN             respond with status NNN (300..599, e.g. 404, 500, 503) and a short body
    fail-first-K    the first K requests get 503, later ones are served ("503@K")
    redirect        302 to the same file without the fault (absolute URL on this server)
    drop            close the connection without sending anything
    truncate        declare the full Content-Length, send half the body, close (FIN)
    reset           declare the full Content-Length, send half the body, reset (RST)
    stall           send half the body, then send nothing for --stall-seconds (or until the
                    client gives up or the server stops), then close without the rest
    short           declare the full Content-Length but send 10 bytes fewer, then close (FIN):
                    the body falls just short of its Content-Length. (A well-formed response
                    of a shorter file cannot be told from a file that is shorter: the
                    descriptors carry no sizes.)
    slow[-RATE]     send the body at RATE bytes/s (default --slow-rate)

Examples: "/fault/fail-first-2/a.bin" (503, 503, then 200), "?fault=truncate@1" (the first
request is cut, a retry with Range resumes), "/fault/slow-20000,stall/a.bin".

Ranges: "Range: bytes=A-B", "bytes=A-" and "bytes=-N" get 206 with Content-Range; a range that
starts past the end gets 416; several ranges or a malformed header are ignored (200, full body),
as RFC 9110 allows. With If-Range, the range is honoured only if the value equals the file's
ETag (strong: "<size hex>-<mtime_ns hex>", quoted) or its Last-Modified date exactly; otherwise
the full file is sent with 200. Body faults apply to the range being sent.

Every request is logged as one JSON line to --log when it completes: t (wall clock at start),
mono and mono_end (CLOCK_MONOTONIC, the same clock C's clock_gettime uses), method, path (as
requested), file, fault, n (request number for this SPEC and file), range, if_range, status,
declared (Content-Length sent), bytes (body bytes sent), outcome (ok, truncated, reset,
stalled, client_closed, dropped) and conn_req (1 for a new connection, then 2, 3... for
keep-alive requests on it).

Prints "PORT <n>" on stdout once listening (--port 0 picks a free port). SIGTERM or SIGINT stop
it cleanly (stalled responses are cut short) with exit status 0. Standard library only.
"""

import argparse
import email.utils
import fcntl
import http.server
import json
import os
import posixpath
import re
import select
import signal
import socket
import struct
import sys
import termios
import threading
import time
import urllib.parse

CHUNK = 64 * 1024

stop_event = threading.Event()


class Fault:
    """One item of a SPEC: kind ("status", "redirect", "drop", "truncate", "reset", "stall",
    "short", "slow"), an argument (status code or rate) and the request limit K (None = always)."""

    def __init__(self, kind, arg=None, limit=None):
        self.kind, self.arg, self.limit = kind, arg, limit


def parse_spec(spec, slow_rate):
    """Parse a SPEC into a list of Faults; raises ValueError with a message on bad input."""
    faults = []
    for item in spec.split(","):
        item = item.strip()
        if not item:
            continue
        limit = None
        if "@" in item:
            item, _, k = item.partition("@")
            if not k.isdigit():
                raise ValueError("bad @K in %r" % item)
            limit = int(k)
        m = re.fullmatch(r"fail-first-(\d+)", item)
        if m:
            faults.append(Fault("status", 503, int(m.group(1))))
            continue
        if re.fullmatch(r"\d{3}", item) and 300 <= int(item) <= 599:
            faults.append(Fault("status", int(item), limit))
            continue
        m = re.fullmatch(r"slow(?:-(\d+))?", item)
        if m:
            rate = int(m.group(1)) if m.group(1) else slow_rate
            if rate <= 0:
                raise ValueError("slow rate must be positive")
            faults.append(Fault("slow", rate, limit))
            continue
        if item in ("redirect", "drop", "truncate", "reset", "stall", "short"):
            faults.append(Fault(item, None, limit))
            continue
        raise ValueError("unknown fault %r" % item)
    return faults


def parse_range(value, size):
    """(start, end) inclusive for a single satisfiable byte range, "unsatisfiable", or None
    when the header is to be ignored (malformed, several ranges)."""
    m = re.fullmatch(r"\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*", value)
    if not m or (m.group(1) == "" and m.group(2) == ""):
        return None
    a, b = m.groups()
    if a == "":
        n = int(b)
        if n == 0 or size == 0:
            return "unsatisfiable"
        return (max(0, size - n), size - 1)
    start = int(a)
    end = int(b) if b else size - 1
    if b and end < start:
        return None
    if start >= size:
        return "unsatisfiable"
    return (start, min(end, size - 1))


class State:
    """Server-wide state: configuration, per-(SPEC, file) request counters and the log."""

    def __init__(self, args):
        self.root = os.path.realpath(args.root)
        self.stall_seconds = args.stall_seconds
        self.slow_rate = args.slow_rate
        self.lock = threading.Lock()
        self.counters = {}
        self.log = open(args.log, "a", encoding="utf-8") if args.log else None

    def count(self, key):
        with self.lock:
            n = self.counters.get(key, 0) + 1
            self.counters[key] = n
            return n

    def write_log(self, entry):
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self.lock:
            if self.log:  # None after shutdown: late handlers log nothing
                self.log.write(line)
                self.log.flush()


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "chunkd-fault-server/1"

    def setup(self):
        super().setup()
        self.conn_requests = 0

    def log_message(self, format, *args):
        pass  # the JSON log replaces the default stderr log

    def do_GET(self):
        self.serve(head=False)

    def do_HEAD(self):
        self.serve(head=True)

    # ---- the request ---------------------------------------------------------------------

    def serve(self, head):
        st = self.server.state
        self.conn_requests += 1
        self.entry = {
            "t": time.time(),
            "mono": time.monotonic(),
            "method": self.command,
            "path": self.path,
            "file": None,
            "fault": None,
            "n": None,
            "range": self.headers.get("Range"),
            "if_range": self.headers.get("If-Range"),
            "status": None,
            "declared": None,
            "bytes": 0,
            "outcome": "ok",
            "conn_req": self.conn_requests,
        }
        try:
            self.route(head)
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            self.entry["outcome"] = "client_closed"
            self.close_connection = True
        finally:
            self.entry["mono_end"] = time.monotonic()
            st.write_log(self.entry)

    def route(self, head):
        st = self.server.state
        split = urllib.parse.urlsplit(self.path)
        path = urllib.parse.unquote(split.path)
        query = urllib.parse.parse_qsl(split.query, keep_blank_values=True)
        spec = None
        if path.startswith("/fault/"):
            spec, _, path = path[len("/fault/"):].partition("/")
            path = "/" + path
        else:
            for k, v in query:
                if k == "fault":
                    spec = v
            query = [(k, v) for k, v in query if k != "fault"]
        rel = posixpath.normpath("/" + path.lstrip("/")).lstrip("/")
        self.entry["file"] = rel
        faults = []
        if spec is not None:
            self.entry["fault"] = spec
            self.entry["n"] = n = st.count((spec, rel))
            try:
                faults = parse_spec(spec, st.slow_rate)
            except ValueError as e:
                return self.send_simple(400, "bad fault spec: %s\n" % e)
            faults = [f for f in faults if f.limit is None or n <= f.limit]
        kinds = {}
        for f in faults:
            kinds.setdefault(f.kind, f)  # the first of each kind wins

        if "drop" in kinds:
            self.entry["outcome"] = "dropped"
            self.close_connection = True
            return
        if "status" in kinds:
            code = kinds["status"].arg
            return self.send_simple(code, "fault %d\n" % code)
        if "redirect" in kinds:
            host = self.headers.get("Host") or "%s:%d" % self.server.server_address[:2]
            loc = "http://%s/%s" % (host, urllib.parse.quote(rel))
            if query:
                loc += "?" + urllib.parse.urlencode(query)
            return self.send_simple(302, "", [("Location", loc)])

        full = os.path.realpath(os.path.join(st.root, rel))
        if not (full == st.root or full.startswith(st.root + os.sep)) or not os.path.isfile(full):
            return self.send_simple(404, "not found\n")
        try:
            f = open(full, "rb")
        except OSError:
            return self.send_simple(404, "not found\n")
        with f:
            self.send_file(f, head, kinds)

    # ---- responses -----------------------------------------------------------------------

    def send_simple(self, code, body, headers=()):
        data = body.encode()
        self.send_response(code)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.entry["status"] = code
        self.entry["declared"] = len(data)
        if self.command != "HEAD":
            self.wfile.write(data)
            self.entry["bytes"] = len(data)

    def send_file(self, f, head, kinds):
        fs = os.fstat(f.fileno())
        size = fs.st_size
        etag = '"%x-%x"' % (size, fs.st_mtime_ns)
        last_modified = email.utils.formatdate(fs.st_mtime, usegmt=True)

        start, end, code = 0, size - 1, 200
        rng = self.headers.get("Range")
        if rng is not None:
            if_range = self.headers.get("If-Range")
            if if_range is not None:
                v = if_range.strip()
                honour = v == etag if v.startswith('"') else v == last_modified
            else:
                honour = True
            r = parse_range(rng, size) if honour else None
            if r == "unsatisfiable":
                return self.send_simple(416, "", [("Content-Range", "bytes */%d" % size)])
            if r is not None:
                start, end, code = r[0], r[1], 206
        length = end - start + 1

        declared = length
        send = length
        cut = next((k for k in ("truncate", "reset", "stall") if k in kinds), None)
        if cut:
            send = length // 2
        elif "short" in kinds:
            cut = "truncate"  # same ending as truncate: close after the short body
            send = max(0, length - 10)

        self.send_response(code)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(declared))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("ETag", etag)
        self.send_header("Last-Modified", last_modified)
        if code == 206:
            self.send_header("Content-Range", "bytes %d-%d/%d" % (start, end, size))
        self.end_headers()
        self.entry["status"] = code
        self.entry["declared"] = declared
        if head:
            return

        f.seek(start)
        rate = kinds["slow"].arg if "slow" in kinds else None
        self.copy(f, send, rate)
        if cut == "truncate":
            self.entry["outcome"] = "truncated"
            self.close_connection = True
        elif cut == "reset":
            self.entry["outcome"] = "reset"
            self.reset()
        elif cut == "stall":
            self.entry["outcome"] = "stalled" if self.stall() else "client_closed"
            self.close_connection = True

    def copy(self, f, n, rate):
        """Send n bytes of f, at most rate bytes/s if rate is set."""
        t0 = time.monotonic()
        sent = 0
        step = CHUNK if rate is None else max(1, min(CHUNK, rate // 20))
        while sent < n:
            data = f.read(min(step, n - sent))
            if not data:
                break  # the file shrank under us; the client sees a short body
            self.wfile.write(data)
            sent += len(data)
            self.entry["bytes"] = sent
            if rate is not None:
                delay = t0 + sent / rate - time.monotonic()
                if delay > 0 and stop_event.wait(delay):
                    self.close_connection = True
                    return

    def reset(self):
        """Abort the connection: SO_LINGER 0 makes close() send RST instead of FIN.

        An RST discards data still queued, so first wait (bounded) until the client has
        acknowledged everything sent: it then holds exactly the bytes logged."""
        self.close_connection = True
        sock = self.connection
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline and not stop_event.is_set():
            queued = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))
            if queued[0] == 0:
                break
            stop_event.wait(0.002)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # The socket closes for real only once the buffered reader lets go of it (wfile holds
        # no reference, and handle_one_request() still flushes it after we return).
        self.rfile.close()
        sock.close()

    def stall(self):
        """Send nothing for stall_seconds, watching for the client closing the connection (so
        the log says when it gave up). Returns False if it did."""
        deadline = time.monotonic() + self.server.state.stall_seconds
        sock = self.connection
        while not stop_event.is_set():
            left = deadline - time.monotonic()
            if left <= 0:
                return True
            readable, _, _ = select.select([sock], [], [], min(left, 0.2))
            if not readable:
                continue
            try:
                if sock.recv(1, socket.MSG_PEEK) == b"":
                    return False
            except OSError:
                return False
            # The client sent more (a pipelined request): it stays readable; just wait.
            stop_event.wait(min(max(left, 0), 0.2))
        return True


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request, client_address):
        # A client that vanished mid-request is routine here; anything else goes to stderr.
        exc = sys.exc_info()[1]
        if isinstance(exc, (ConnectionError, socket.timeout)):
            return
        super().handle_error(request, client_address)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", required=True, help="directory to serve")
    ap.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    ap.add_argument("--bind", default="127.0.0.1", help="address to listen on")
    ap.add_argument("--log", help="append one JSON line per request to this file")
    ap.add_argument("--stall-seconds", type=float, default=30.0)
    ap.add_argument("--slow-rate", type=int, default=64 * 1024, help="bytes/s for 'slow'")
    args = ap.parse_args()
    if not os.path.isdir(args.root):
        ap.error("--root %s is not a directory" % args.root)

    state = State(args)
    server = Server((args.bind, args.port), Handler)
    server.state = state
    print("PORT %d" % server.server_address[1], flush=True)

    def on_signal(signum, frame):
        stop_event.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    t = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True)
    t.start()
    while not stop_event.wait(1.0):
        pass
    server.shutdown()
    server.server_close()
    if state.log:
        with state.lock:
            state.log.close()
            state.log = None
    return 0


if __name__ == "__main__":
    sys.exit(main())
