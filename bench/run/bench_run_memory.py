#!/usr/bin/python3
"""`llmq run` memory (issue 19): peak RSS of the `llmq run` process against
the size of its input.

    bench/run/bench_run_memory.py [--sizes 200000,1000000,2000000]
        [--baseline-bin DIR] [--baseline-sizes 200000] [--smoke] [--bin DIR]
        [--json FILE]

For each size N: an N-line input in the OpenAI Batch format (about 330
bytes a line, every prompt different), then `llmq run IN -o OUT
--provider sim --sim-latency-ms 0 --quiet` with no broker: the embedded
cluster (llmq-sim at 0 ms, broker, --workers workers) that `llmq run`
starts and stops itself. The peak RSS is VmHWM of the `llmq run` process
only (/proc/PID/status, sampled every 20 ms until it exits; the embedded
broker, workers and sim are its children and are not counted). Then OUT is
checked: N lines, every custom_id once, in input order.

--baseline-bin DIR runs the same for --baseline-sizes with another build's
`llmq` (the binaries of main before the change), in the same run.
Prints a markdown table; --json FILE writes the raw numbers.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import benchlib  # noqa: E402

# The input: the end-to-end bench's (one home for the 10,000-prompt file).
sys.path.insert(0, os.path.join(HERE, "..", "e2e"))
from bench_e2e import write_input  # noqa: E402,F401


def vm_hwm_kb(pid):
    """VmHWM of pid in KiB, or None once it is gone."""
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def check_output(path, n):
    """'' if path holds n lines req-0..req-<n-1> in order, else why not."""
    i = 0
    with open(path, "rb") as f:
        for line in f:
            want = b'"custom_id":"req-%d"' % i
            if want not in line[:200].replace(b'": "', b'":"'):
                return "line %d is not req-%d" % (i + 1, i)
            i += 1
    return "" if i == n else "%d lines, expected %d" % (i, n)


def run_once(llmq, src, dst, n, args, log):
    """Run llmq on src; returns a result dict."""
    cmd = [llmq, "run", src, "-o", dst, "--provider", "sim", "--sim-latency-ms", "0",
           "--workers", str(args.workers), "--quiet"]
    if args.concurrency:
        cmd += ["--concurrency", str(args.concurrency)]
    env = dict(os.environ)
    env.pop("LLMQ_ENDPOINT", None)
    env.pop("OPENAI_API_KEY", None)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, env=env)
    peak = 0
    deadline = start + args.timeout
    while proc.poll() is None and time.monotonic() < deadline:
        hwm = vm_hwm_kb(proc.pid)
        if hwm:
            peak = max(peak, hwm)
        time.sleep(0.02)
    if proc.poll() is None:
        proc.kill()
    rc = proc.wait()
    wall = time.monotonic() - start
    problem = check_output(dst, n) if rc == 0 else "exit %d" % rc
    return {"lines": n, "peak_rss_kb": peak, "wall_s": wall, "rc": rc, "problem": problem,
            "in_bytes": os.path.getsize(src), "load": benchlib.loadavg()}


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=None, help="llmq binaries (default $LLMQ_BIN_DIR or build-bench/bin)")
    ap.add_argument("--baseline-bin", default=None, help="binaries to compare with (same run)")
    ap.add_argument("--sizes", default="200000,1000000,2000000")
    ap.add_argument("--baseline-sizes", default="200000")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=0, help="0: llmq's default window")
    ap.add_argument("--timeout", type=int, default=3600, help="per run, seconds")
    ap.add_argument("--smoke", action="store_true", help="5,000 lines (ctest)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.smoke:
        args.sizes, args.baseline_sizes, args.workers = "5000", "5000", 2
    sizes = [int(s) for s in args.sizes.split(",") if s]
    base_sizes = [int(s) for s in args.baseline_sizes.split(",") if s] if args.baseline_bin else []
    bindir = benchlib.bin_dir(args.bin)
    benchlib.raise_nofile()
    tmp = tempfile.mkdtemp(prefix="llmq-bench-run-")
    log = open(os.path.join(tmp, "run.log"), "w")
    rows, failures = [], []
    try:
        for n in sorted(set(sizes + base_sizes)):
            src = os.path.join(tmp, "in-%d.jsonl" % n)
            write_input(src, n)
            for label, bdir, want in (("baseline", args.baseline_bin, base_sizes),
                                      ("llmq", bindir, sizes)):
                if n not in want:
                    continue
                dst = os.path.join(tmp, "out-%s-%d.jsonl" % (label, n))
                r = run_once(os.path.join(bdir, "llmq"), src, dst, n, args, log)
                r["variant"] = label
                rows.append(r)
                if r["problem"]:
                    failures.append("%s %d lines: %s" % (label, n, r["problem"]))
                os.unlink(dst)
            os.unlink(src)
    finally:
        log.close()
    print(benchlib.header("llmq run memory"))
    print()
    print("| build | lines | input | peak RSS of `llmq run` | RSS / input line | wall |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print("| %s | %d | %.0f MB | %.1f MB | %.0f B | %.1f s |" % (
            r["variant"], r["lines"], r["in_bytes"] / 1e6, r["peak_rss_kb"] / 1024,
            r["peak_rss_kb"] * 1024 / r["lines"], r["wall_s"]))
    if not failures:
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print("(kept %s)" % tmp, file=sys.stderr)
    return benchlib.report_end(failures, args.json, args, rows)


if __name__ == "__main__":
    sys.exit(main())
