#!/usr/bin/python3
"""Retry tails (issue 11): a JSONL file of prompts through `llmq run` and
through a hand-written asyncio + aiohttp client that retries like the
OpenAI SDK (aiohttp_retry_client.py: 5 attempts, 0.5 s * 2^n backoff with
jitter, capped at 8 s, retry-after honoured), against one llmq-sim with
transient faults: 500 and 503 and a cut JSON body (no 429s).

    bench/e2e/bench_faults.py [--lines 5000] [--runs 3] [--fault 0.05] [--bin DIR]

llmq: llmq-broker + W llmq-workers (capacity C each, W*C = the
concurrency), `llmq run --concurrency W*C`. Rounds alternate the two
clients; /_reset before each run. Prints wall times (median, min..max), the
ratio llmq / aiohttp per round, failed lines and the sim's double_billed.
"""
import argparse
import json
import os
import sys
import tempfile
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
sys.path.insert(0, HERE)
import benchlib  # noqa: E402
from bench_e2e import count_ok, write_input  # noqa: E402

PY = "/usr/bin/python3"


def http(url, method="GET"):
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=None)
    ap.add_argument("--lines", type=int, default=5000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--latency-ms", type=int, default=200)
    ap.add_argument("--fault", type=float, default=0.05, help="total fault probability")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--capacity", type=int, default=128)
    ap.add_argument("--smoke", action="store_true")
    args = ap.parse_args()
    if args.smoke:
        args.lines, args.runs = 500, 1
    conc = args.workers * args.capacity
    bindir = benchlib.bin_dir(args.bin)
    benchlib.raise_nofile()
    tmp = tempfile.mkdtemp(prefix="llmq-bench-faults-")
    src = os.path.join(tmp, "in.jsonl")
    write_input(src, args.lines)
    log = open(os.path.join(tmp, "servers.log"), "w")
    f = args.fault
    procs = []
    rows = {"llmq": [], "aiohttp": []}
    try:
        sim, broker, _ = benchlib.start_cluster(
            bindir, procs, args.workers, args.capacity, log=log, name="faults-w",
            sim_flags=("--latency-ms", str(args.latency_ms), "--p500", str(f * 0.4),
                       "--p503", str(f * 0.4), "--pmalformed", str(f * 0.2)),
            broker_flags=("--batch-db", "none"))
        url = sim.ready["url"]
        for rnd in range(args.runs):
            for variant in ("llmq", "aiohttp"):
                dst = os.path.join(tmp, "out-%s-%d.jsonl" % (variant, rnd))
                http(url + "/_reset", "POST")
                if variant == "llmq":
                    cmd = [os.path.join(bindir, "llmq"), "run", src, "-o", dst, "--broker",
                           broker.ready["frontend"], "--concurrency", str(conc), "--quiet"]
                else:
                    cmd = [PY, os.path.join(HERE, "aiohttp_retry_client.py"), src, dst,
                           url + "/v1", str(conc), "5"]
                wall, cpu, rc = benchlib.run_timed(cmd, timeout=600, stderr=log)
                st = http(url + "/_stats")
                ok = count_ok(dst)
                faults = sum(v for route in st["requests"].values() for k, v in route.items()
                             if k in ("500", "503", "malformed"))
                rows[variant].append({"wall": wall, "cpu": cpu, "rc": rc, "ok": ok,
                                      "faults": faults, "double_billed": st["double_billed"]})
                print("faults: %s round %d: %.2f s, %d/%d ok, %d faults injected, rc %s"
                      % (variant, rnd, wall, ok, args.lines, faults, rc), file=sys.stderr)
    finally:
        benchlib.stop_all(procs)
    print("| client | wall s, median (min..max) | failed lines | faults injected per run | double_billed |")
    print("|---|---|---|---|---|")
    for v in ("llmq", "aiohttp"):
        rs = rows[v]
        print("| %s | %s | %s | %s | %s |" % (
            "`llmq run` (2 workers x 128)" if v == "llmq" else "asyncio + aiohttp, 5 attempts",
            benchlib.fmt_mmm([r["wall"] for r in rs], 2),
            "/".join(str(args.lines - r["ok"]) for r in rs),
            "/".join(str(r["faults"]) for r in rs),
            "/".join(str(r["double_billed"]) for r in rs)))
    ratios = [a["wall"] / b["wall"] for a, b in zip(rows["llmq"], rows["aiohttp"])]
    print("\nllmq / aiohttp per round: %s (load %s)" % (
        ", ".join("%.2f" % r for r in ratios), benchlib.loadavg()))


if __name__ == "__main__":
    main()
