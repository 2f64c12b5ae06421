#!/usr/bin/python3
"""Client CPU of `llmq run`, as instructions per input line (issue 19):
valgrind --tool=callgrind counts (repeatable on a loaded machine, unlike
CPU seconds).

    bench/run/callgrind_run.py [--lines 1000,3000] BIN_DIR [BIN_DIR...]

Starts one cluster (tests/lib/llmqtest.py: llmq-sim at 0 ms, a broker, two
workers; from $LLMQ_BIN_DIR, else the first BIN_DIR), then for each BIN_DIR runs its `llmq run
IN -o OUT --broker EP --quiet` under callgrind on inputs of each size (the
OpenAI Batch format of bench/run/bench_run_memory.py). Instructions per
line = the difference between the two sizes' totals divided by the
difference in lines, so start-up and shutdown cancel out. Prints one line
per BIN_DIR, and the ratio of each to the first.
"""
import os
import re
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "lib"))


def total_ir(llmq, src, dst, endpoint, tmp):
    out = os.path.join(tmp, "cg.out")
    env = dict(os.environ)
    env.pop("LLMQ_ENDPOINT", None)
    subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out, llmq, "run",
                    src, "-o", dst, "--broker", endpoint, "--model", "sim-model", "--quiet"],
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
    with open(out) as f:
        for line in f:
            m = re.match(r"(?:summary|totals): (\d+)", line)
            if m:
                return int(m.group(1))
    raise SystemExit("no callgrind totals in " + out)


def main():
    args = sys.argv[1:]
    sizes = [1000, 3000]
    if args and args[0] == "--lines":
        sizes = [int(x) for x in args[1].split(",")]
        args = args[2:]
    if not args:
        print(__doc__)
        return 2
    os.environ.setdefault("LLMQ_BIN_DIR", os.path.abspath(args[0]))
    import llmqtest
    from bench_run_memory import write_input
    tmp = tempfile.mkdtemp(prefix="llmq-callgrind-run-")
    cluster = llmqtest.Cluster(workers=2, capacity=64, latency_ms="0")
    try:
        base = None
        for bindir in args:
            irs = []
            for n in sizes:
                src = os.path.join(tmp, "in-%d.jsonl" % n)
                write_input(src, n)
                dst = os.path.join(tmp, "out.jsonl")
                if os.path.exists(dst):
                    os.unlink(dst)
                irs.append(total_ir(os.path.join(bindir, "llmq"), src, dst,
                                    cluster.broker.frontend, tmp))
            per_line = (irs[1] - irs[0]) / (sizes[1] - sizes[0])
            base = base or per_line
            print("%s: %.0f instructions per line (%s lines: %s), %.2fx the first"
                  % (bindir, per_line, ",".join(map(str, sizes)), ",".join(map(str, irs)),
                     per_line / base))
    finally:
        cluster.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
