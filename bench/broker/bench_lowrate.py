#!/usr/bin/env python3
"""bench_lowrate.py - the broker's CPU, wake-ups and system calls per request
at the end-to-end bench's rate (10,000 prompts, llmq-sim at 200 ms, about
5k requests/s through real workers), where wake-ups, not instructions, set
its cost.

    bench_lowrate.py [--bin DIR] [--baseline-bin DIR] [--runs 3]

Each run is one `bench/e2e/bench_e2e.py --variants llmq --runs 1` with
`perf stat --per-thread` attached to its llmq-broker (task-clock,
context-switches, raw_syscalls:sys_enter; needs perf and tracepoint
access). With --baseline-bin the two alternate, run after run. Prints per
request, for all of the broker's threads and for its main thread (the
actor's loop): CPU us, context switches, system calls; then the medians.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
E2E = os.path.join(HERE, "..", "e2e", "bench_e2e.py")
EVENTS = "task-clock,context-switches,raw_syscalls:sys_enter"


def find_broker(exe, parent, deadline):
    """The pid of a process running exe below parent, or None."""
    while time.time() < deadline:
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.path.realpath(f"/proc/{pid}/exe") != exe:
                    continue
                p = int(pid)
                while p > 1:  # walk up to the bench process
                    if p == parent:
                        return int(pid)
                    with open(f"/proc/{p}/stat") as f:
                        p = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
        time.sleep(0.02)
    return None


def one_run(bindir, lines):
    """perf stat's per-thread counts for one bench run, per request."""
    exe = os.path.realpath(os.path.join(bindir, "llmq-broker"))
    with tempfile.TemporaryDirectory(prefix="llmq-lowrate-") as tmp:
        out = os.path.join(tmp, "perf.csv")
        bench = subprocess.Popen(
            [sys.executable, E2E, "--variants", "llmq", "--runs", "1",
             "--lines", str(lines), "--bin", bindir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pid = find_broker(exe, bench.pid, time.time() + 30)
        if pid is None:
            bench.kill()
            bench.wait()
            sys.exit("no llmq-broker found under the bench")
        perf = subprocess.Popen(["perf", "stat", "-x,", "--per-thread", "-e",
                                 EVENTS, "-p", str(pid), "-o", out])
        rc = bench.wait()
        perf.wait()
        if rc != 0:
            sys.exit(f"bench_e2e.py failed ({rc})")
        threads = {}
        with open(out) as f:
            for row in f:
                cols = row.strip().split(",")
                if len(cols) < 4 or not cols[1].replace(".", "").isdigit():
                    continue
                name, value, event = cols[0], float(cols[1]), cols[3]
                threads.setdefault(name, {})[event] = value
    main = max((t for t in threads if t.startswith("llmq-broker")),
               key=lambda t: threads[t].get("task-clock", 0))

    def per_request(counts):
        return (counts.get("task-clock", 0) * 1000 / lines,  # ms -> us
                counts.get("context-switches", 0) / lines,
                counts.get("raw_syscalls:sys_enter", 0) / lines)

    total = {}
    for counts in threads.values():
        for event, value in counts.items():
            total[event] = total.get(event, 0) + value
    return per_request(total) + per_request(threads[main])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bin", default=os.path.join(HERE, "..", "..", "build",
                                                  "bin"))
    ap.add_argument("--baseline-bin")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--lines", type=int, default=10000)
    args = ap.parse_args()
    systems = [("broker", args.bin)]
    if args.baseline_bin:
        systems.append(("baseline", args.baseline_bin))
    results = {name: [] for name, _ in systems}
    head = ("| run | binaries | us/req | ctxsw/req | syscalls/req | main thread"
            " us/req | ctxsw/req | syscalls/req |")
    print(head)
    print("|" + "---|" * 8)
    for run in range(args.runs):
        for name, bindir in systems:
            r = one_run(os.path.abspath(bindir), args.lines)
            results[name].append(r)
            print(f"| {run} | {name} | " +
                  " | ".join(f"{v:.2f}" for v in r) + " |", flush=True)
    for name, rows in results.items():
        med = [statistics.median(col) for col in zip(*rows)]
        print(f"| median | {name} | " + " | ".join(f"{v:.2f}" for v in med) +
              " |")


if __name__ == "__main__":
    main()
