#!/usr/bin/python3
"""client.run: `llmq run` end to end on 1,200 lines through a real broker,
workers and llmq-sim, with faults injected by sim directives: every
custom_id answered exactly once and in input order, every answer belongs to
its own request (sim hash), transient faults (500 once) end ok after the
worker's retry, permanent faults (400) are error lines, unparsable lines are
error lines, and the exit code is 1. Nothing is billed twice."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import Cluster, check, job_files, run_llmq, verify_output, read_jsonl  # noqa

N = 1200


def main():
    _, inp, out, expect = job_files("llmq-client-run-", N)
    # Two lines the client cannot use, and a blank line that is skipped.
    with open(inp, "a") as f:
        f.write('{"custom_id": "broken", "prompt": \n\n')
        f.write('{"custom_id": "bad-url", "url": "/v1/images", "body": {}}\n')
    cluster = Cluster(workers=3, capacity=32)
    try:
        rc, stdout, stderr = run_llmq(["run", inp, "-o", out, "--broker", cluster.broker.frontend,
                                       "--model", "sim-model", "--concurrency", "64"])
        check(rc == 1, "exit code %d, expected 1 (some lines failed); stderr: %s" % (rc, stderr))
        rows = read_jsonl(out)
        check(len(rows) == N + 2, "%d output lines, expected %d" % (len(rows), N + 2))
        tail = {r["custom_id"]: r for r in rows[N:]}
        check(set(tail) == {"line-%d" % (N + 1), "bad-url"}, "error lines: %r" % list(tail))
        for r in tail.values():
            check(r["error"]["code"] == "invalid_request" and r["response"] is None,
                  "bad input line: %r" % r)
        # verify the requests' lines only (the two bad lines are checked above)
        with open(out) as f:
            lines = f.readlines()
        with open(out + ".req", "w") as f:
            f.writelines(lines[:N])
        counts = verify_output(out + ".req", expect)
        check(counts["retry"] > 50 and counts["fail"] > 20, "fault mix: %r" % counts)
        check("%d ok, %d failed" % (counts["ok"] + counts["retry"], counts["fail"] + 2) in stdout,
              "summary: %s" % stdout)
        check("SIMULATED" in stdout, "the summary must say results are simulated")
        stats = cluster.sim.stats()
        check(stats["double_billed"] == 0, "double billed: %r" % stats)
        check(stats["answered_ok"] == counts["ok"] + counts["retry"],
              "sim answered %d ok, expected %d" % (stats["answered_ok"], counts["ok"] + counts["retry"]))
        print("client.run: %d lines, %r, sim %d requests" % (N + 2, counts, stats["total"]))
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
