#!/usr/bin/python3
"""bench_cache.py - a response-cache hit beside a normal request, same run
(PROTOCOL.md 3.7).

    bench_cache.py [--bin DIR] [--trials 3] [--requests 20000] [--window 64]
                   [--latency-requests 2000] [--smoke] [--json OUT]
    bench_cache.py --callgrind [--bin DIR] [--kinds off,normal,miss,hit]

Each trial starts two llmq-brokers, one without and one with `--cache FILE`
(a fresh temp file), each with 2 echo workers (`llmq-bench-broker worker
--mode llmq`, capacity 64: they answer at once with the request body, so
the worker costs almost nothing), and one client (this script, pyzmq) that
sends 1 KB chat bodies (msgpack). Kinds of request, in an order that
alternates per trial:

  off     broker without --cache: a normal request (the baseline)
  normal  broker with --cache, a request that is not cacheable (no `cache`
          flag, no temperature: the broker scans the body for
          `temperature` and dispatches)
  miss    broker with --cache, `cache: true`, a new body each time: hashed,
          sent to a worker, its answer stored in SQLite
  hit     broker with --cache, `cache: true`, the same body (stored once
          first): answered by the broker from SQLite, no worker

For each kind: `--requests` requests with `--window` outstanding -> req/s
and the broker's CPU per request (utime+stime of the broker process, all
threads, / requests); then `--latency-requests` requests one at a time ->
p50 / p99 round trip seen by the client. The client is Python, the same
for every kind, so its cost is in every latency equally. Prints a Markdown
table (median of trials, min..max) and optionally writes raw numbers.

--callgrind instead counts the broker's instructions per request of each
kind (valgrind --tool=callgrind; repeatable on a loaded machine, unlike
CPU time): the broker runs 1,000 then 3,000 requests of the kind (window
--window, one broker each), and the difference of the totals / 2,000 is the
cost of one request, start-up and shutdown cancelled out. `--callgrind
--kinds off --bin BASELINE` counts a broker built before the cache, to see
what the cache costs when it is off.
"""
import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

import msgpack
import zmq

HERE = os.path.dirname(os.path.abspath(__file__))
KINDS = ["off", "normal", "miss", "hit"]

# One home for process helpers: bench_broker.py, beside this file.
sys.path.insert(0, HERE)
from bench_broker import cpu_seconds, start, stop  # noqa: E402


def body(text):
    """A ~1 KB chat body (msgpack), unique by text."""
    return msgpack.packb({"messages": [{"role": "user", "content": text + "x" * 1000}],
                          "max_tokens": 16})


class Setup:
    """A broker (with or without --cache) and its echo workers."""

    def __init__(self, a, cache_path, prefix=()):
        argv = list(prefix) + [os.path.join(a.bin, "llmq-broker"), "--quiet", "--batch-db", "none",
                "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*"]
        if cache_path:
            argv += ["--cache", cache_path]
        self.broker, ep = start(argv)
        self.procs = [self.broker]
        for _ in range(2):
            w, _ = start([os.path.join(a.bin, "llmq-bench-broker"), "worker", "--connect",
                          ep["backend"], "--mode", "llmq", "--capacity", "64"])
            self.procs.append(w)
        self.s = zmq.Context.instance().socket(zmq.DEALER)
        self.s.setsockopt(zmq.LINGER, 0)
        self.s.connect(ep["frontend"])
        while True:  # until the broker has both workers (status, not a sleep)
            self.s.send(msgpack.packb({"v": 1, "t": "status"}))
            frames = self.s.recv_multipart()
            if len(msgpack.unpackb(frames[1])["workers"]) == 2:
                break
        self.seq = 0

    def send(self, payload, cache):
        self.seq += 1
        h = {"v": 1, "t": "req", "id": "q%d" % self.seq, "op": "chat", "model": "bench"}
        if cache:
            h["cache"] = True
        self.s.send_multipart([msgpack.packb(h), payload])
        return h["id"]

    def recv(self):
        if not self.s.poll(30000):
            raise RuntimeError("no answer within 30 s")
        h = msgpack.unpackb(self.s.recv_multipart()[0])
        if h.get("t") != "res" or not h.get("ok"):
            raise RuntimeError("unexpected answer %r" % h)
        return h

    def counters(self):
        self.s.send(msgpack.packb({"v": 1, "t": "status"}))
        return msgpack.unpackb(self.s.recv_multipart()[1])["counters"]

    def close(self):
        self.s.close()
        stop(self.procs)


def payloads(kind, n, trial):
    if kind == "miss":
        return [body("miss %d %d " % (trial, i)) for i in range(n)], True
    if kind == "hit":
        return [body("hit %d " % trial)] * n, True
    return [body("normal")] * n, False


def run_kind(st, kind, a, trial):
    """Window run (req/s, broker CPU) then sequential run (latency)."""
    loads, cache = payloads(kind, a.requests, trial)
    if kind == "hit":
        st.send(loads[0], True)  # store it once
        st.recv()
    c0 = st.counters()
    cpu0, t0 = cpu_seconds(st.broker.pid), time.perf_counter()
    sent = done = cached = 0
    while done < a.requests:
        while sent < a.requests and sent - done < a.window:
            st.send(loads[sent], cache)
            sent += 1
        cached += bool(st.recv().get("cached"))
        done += 1
    seconds = time.perf_counter() - t0
    cpu = cpu_seconds(st.broker.pid) - cpu0
    lat_loads, _ = payloads(kind, a.latency_requests, trial + 1000)
    if kind == "hit":
        lat_loads = loads[:a.latency_requests]
    lat = []
    for p in lat_loads:
        t = time.perf_counter()
        st.send(p, cache)
        st.recv()
        lat.append((time.perf_counter() - t) * 1e6)
    lat.sort()
    c1 = st.counters()
    return {"kind": kind, "rps": a.requests / seconds,
            "cpu_us": cpu * 1e6 / a.requests, "cached": cached,
            "dispatched": c1["dispatched"] - c0["dispatched"],
            "p50_us": lat[len(lat) // 2], "p99_us": lat[int(len(lat) * 0.99)]}


def trial_run(a, trial):
    tmp = tempfile.mkdtemp(prefix="llmq-bench-cache-")
    order = KINDS if trial % 2 == 0 else list(reversed(KINDS))
    rows = []
    try:
        for kind in order:
            st = Setup(a, None if kind == "off" else os.path.join(tmp, "c%s.db" % kind))
            try:
                rows.append(run_kind(st, kind, a, trial))
            finally:
                st.close()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return rows


def window_only(st, kind, n, trial, window=64):
    loads, cache = payloads(kind, n, trial)
    if kind == "hit":
        st.send(loads[0], True)
        st.recv()
    sent = done = 0
    while done < n:
        while sent < n and sent - done < window:
            st.send(loads[sent], cache)
            sent += 1
        st.recv()
        done += 1


def callgrind(a):
    """Instructions per request of each kind (see the module doc)."""
    tmp = tempfile.mkdtemp(prefix="llmq-bench-cache-cg-")
    out = {}
    try:
        for kind in a.kinds:
            totals = []
            for n in (1000, 3000):
                cg = os.path.join(tmp, "cg.%s.%d" % (kind, n))
                st = Setup(a, None if kind == "off" else os.path.join(tmp, "c%s%d.db" % (kind, n)),
                           ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + cg])
                try:
                    window_only(st, kind, n, n, a.window)
                finally:
                    st.close()
                with open(cg) as f:
                    totals += [int(line.split()[1]) for line in f if line.startswith("summary:")]
            out[kind] = (totals[1] - totals[0]) / 2000.0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print("| kind (window %d, 1 KB chat) | broker instructions per request | / off |" % a.window)
    print("|---|---|---|")
    for kind in a.kinds:
        print("| %s | %.0f | %.2f |" % (kind, out[kind], out[kind] / out.get("off", out[kind])))
    return out


def fmt(values, f="%.1f"):
    m = statistics.median(values)
    return (f + " (" + f + ".." + f + ")") % (m, min(values), max(values))


def table(all_rows, a):
    by = {k: [r for r in all_rows if r["kind"] == k] for k in KINDS}
    names = {"off": "normal, broker without --cache", "normal": "normal, --cache on (not cacheable)",
             "miss": "`cache: true`, miss (dispatched + stored)", "hit": "`cache: true`, hit"}
    lines = ["| %d x 1 KB chat, window %d; latency: %d one at a time | req/s | broker CPU us/req | p50 latency us | p99 latency us | reached a worker |"
             % (a.requests, a.window, a.latency_requests), "|---|---|---|---|---|---|"]
    for k in KINDS:
        rs = by[k]
        lines.append("| %s | %s | %s | %s | %s | %d of %d |" % (
            names[k], fmt([r["rps"] for r in rs], "%.0f"), fmt([r["cpu_us"] for r in rs]),
            fmt([r["p50_us"] for r in rs], "%.0f"), fmt([r["p99_us"] for r in rs], "%.0f"),
            rs[0]["dispatched"], a.requests + a.latency_requests))
    hit = statistics.median(r["cpu_us"] for r in by["hit"])
    off = statistics.median(r["cpu_us"] for r in by["off"])
    lines.append("")
    lines.append("hit / normal (cache off): broker CPU per request %s, p50 latency %.2f"
                 % ("%.2f" % (hit / off) if off > 0 else "n/a (too few requests to measure)",
                    statistics.median(r["p50_us"] for r in by["hit"]) /
                    statistics.median(r["p50_us"] for r in by["off"])))
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.environ.get("LLMQ_BIN_DIR",
                                                    os.path.join(HERE, "../../build/bin")))
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--requests", type=int, default=20000)
    ap.add_argument("--window", type=int, default=64)
    ap.add_argument("--latency-requests", type=int, default=2000)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script works")
    ap.add_argument("--json", help="write raw numbers here")
    ap.add_argument("--callgrind", action="store_true",
                    help="instructions per request instead (valgrind)")
    ap.add_argument("--kinds", default=",".join(KINDS), help="--callgrind: which kinds")
    a = ap.parse_args()
    a.kinds = a.kinds.split(",")
    if a.callgrind:
        callgrind(a)
        return 0
    if a.smoke:
        a.trials, a.requests, a.latency_requests = 1, 500, 100
    load0 = os.getloadavg()
    rows = []
    for t in range(a.trials):
        rows += trial_run(a, t)
    load1 = os.getloadavg()
    print(table(rows, a))
    print("\nload average at start %.1f / %.1f / %.1f, at end %.1f / %.1f / %.1f (%d cores)"
          % (load0 + load1 + (os.cpu_count(),)))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"config": vars(a), "rows": rows, "load": [load0, load1]}, f, indent=1)
    # The bench checks what it measures: hits never reach a worker.
    bad = [r for r in rows if r["kind"] == "hit" and (r["dispatched"] or r["cached"] != a.requests)]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
