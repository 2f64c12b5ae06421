#!/usr/bin/python3
"""client.spend: `llmq run --max-cost USD` against a real cluster (llmq-sim,
llmq-broker, two llmq-workers pricing sim-model from a pricing table).

The capped run stops sending once its answers cost the cap: it exits 4, its
summary gives the amount spent and the lines not run, and OUT holds only
finished lines (no error lines for the lines never sent), in input order.
What it spent (recomputed here from the usage in OUT and the price table)
reached the cap and passed it by less than one window of requests (the ones
in flight when the cap was reached), and llmq-sim answered exactly the lines
in OUT. A rerun without the cap runs only the rest: every line exactly once
in OUT, and no request answered twice by llmq-sim. With --quiet and -o -,
the finished lines go to stdout and the cap is said on stderr."""
import json
import os
import re
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from llmqtest import Cluster, check, main, out_line_ok, run_llmq, temp_dir  # noqa: E402

N = 200            # input lines
WINDOW = 8         # --concurrency
PRICE_IN, PRICE_OUT = 1000.0, 2000.0   # USD per million tokens: ~$0.05 a line
CAP = 1.0          # reached after about 20 lines


def read_out(path):
    """OUT's rows; every line whole."""
    with open(path, "rb") as f:
        data = f.read()
    check(data == b"" or data.endswith(b"\n"), "%s ends in a partial line" % path)
    return [json.loads(line) for line in data.split(b"\n")[:-1]]


def cost(row):
    """What the worker charged for a row: its usage at the table's prices."""
    usage = row["response"]["body"]["usage"]
    return (usage["prompt_tokens"] * PRICE_IN + usage["completion_tokens"] * PRICE_OUT) / 1e6


def check_order(rows, ids):
    """rows: each custom_id of ids at most once, in input order."""
    seen = [r["custom_id"] for r in rows]
    check(len(seen) == len(set(seen)), "a line twice in OUT: %r" % seen)
    position = {cid: i for i, cid in enumerate(ids)}
    check(all(cid in position for cid in seen), "a line not in the input: %r" % seen)
    check([position[c] for c in seen] == sorted(position[c] for c in seen),
          "OUT not in input order: %r" % seen)


def capped_run(cluster, args, inp, out, ids):
    """The run with --max-cost: stops at the cap, OUT has finished lines only.
    Returns how many lines it finished."""
    rc, stdout, stderr = run_llmq(args + ["--max-cost", str(CAP)])
    check(rc == 4, "capped run: exit %d, expected 4 (--max-cost reached)\n%s%s"
          % (rc, stdout, stderr[-2000:]))
    rows = read_out(out)
    check_order(rows, ids)
    check(all(out_line_ok(r) for r in rows), "an error line in OUT: %r"
          % [r for r in rows if r["error"] is not None][:2])
    costs = [cost(r) for r in rows]
    spent = sum(costs)
    # Reached, and passed by less than the window in flight at that moment.
    check(spent >= CAP, "stopped at $%.6f, before the cap $%.2f" % (spent, CAP))
    check(spent - CAP < WINDOW * max(costs),
          "spent $%.6f: more than one window (%d x $%.6f) past the cap $%.2f"
          % (spent, WINDOW, max(costs), CAP))
    check(len(rows) < N, "every line ran: the cap did not stop the run")
    said = re.search(r"--max-cost reached: \$([0-9.]+) spent \(cap \$([0-9.]+)\); "
                     r"(\d+) lines not run", stdout)
    check(said, "summary does not report the cap:\n%s" % stdout)
    check(abs(float(said.group(1)) - spent) < 1e-5 and float(said.group(2)) == CAP
          and int(said.group(3)) == N - len(rows), "summary %r; OUT: $%.6f, %d lines left"
          % (said.group(0), spent, N - len(rows)))
    check("%d not finished" % (N - len(rows)) in stdout, "summary counts:\n%s" % stdout)
    # Every request the run sent was answered and written: nothing reached
    # the provider that is not in OUT.
    cluster.wait_idle()
    stats = cluster.sim.stats()
    check(stats["answered_ok"] == len(rows), "sim answered %d, OUT holds %d"
          % (stats["answered_ok"], len(rows)))
    print("capped run: %d of %d lines, $%.4f spent (cap $%.2f, line at most $%.4f)"
          % (len(rows), N, spent, CAP, max(costs)))
    return len(rows)


def scenario():
    tmp = temp_dir("llmq-client-spend-")
    inp, out, prices = (os.path.join(tmp, n) for n in ("in.jsonl", "out.jsonl", "prices.yaml"))
    with open(prices, "w") as f:
        f.write("pricing:\n  - {model: sim-model, input: %r, output: %r}\n" % (PRICE_IN, PRICE_OUT))
    ids = ["q-%d" % i for i in range(N)]
    with open(inp, "w") as f:
        for i, cid in enumerate(ids):
            f.write(json.dumps({"custom_id": cid, "prompt": "question number %d" % i,
                                "max_tokens": 16}) + "\n")
    cluster = Cluster(workers=2, capacity=8, worker_flags=("--config", prices), tmp=tmp)
    try:
        args = ["run", inp, "-o", out, "--broker", cluster.broker.frontend, "--model",
                "sim-model", "--concurrency", str(WINDOW)]
        done = capped_run(cluster, args, inp, out, ids)

        # The rerun without the cap resumes: only the lines left are sent.
        rc, stdout, stderr = run_llmq(args)
        check(rc == 0, "rerun: exit %d\n%s%s" % (rc, stdout, stderr[-2000:]))
        check("%d already done" % done in stdout, "rerun summary:\n%s" % stdout)
        rows = read_out(out)
        check([r["custom_id"] for r in rows] == ids, "rerun: OUT is not every line once, "
              "in order (%d lines)" % len(rows))
        check(all(out_line_ok(r) for r in rows), "rerun: an error line in OUT")
        cluster.wait_idle()
        stats = cluster.sim.stats()
        check(stats["answered_ok"] == N and stats["double_billed"] == 0,
              "sim answered %d (double billed %d), expected %d once each"
              % (stats["answered_ok"], stats["double_billed"], N))

        # --quiet with -o -: the lines that ran on stdout, the cap on stderr.
        rc, stdout, stderr = run_llmq(args[:3] + ["-"] + args[4:] +
                                      ["--max-cost", str(CAP), "--quiet"])
        rows = [json.loads(line) for line in stdout.splitlines()]
        check(rc == 4 and 0 < len(rows) < N and all(out_line_ok(r) for r in rows),
              "-o - --quiet: exit %d, %d lines\n%s" % (rc, len(rows), stderr[-2000:]))
        check(re.search(r"llmq run: --max-cost reached: .* %d lines not run\n" % (N - len(rows)),
                        stderr), "-o - --quiet: stderr %r" % stderr[-2000:])
    finally:
        cluster.close()


if __name__ == "__main__":
    main(scenario)
