#!/usr/bin/python3
"""client.resume: kill -9 `llmq run` mid-run, then rerun the same command.
The killed run leaves whole lines (at most one partial last line); the
rerun keeps them, runs only the rest, and never sends a finished line
again: the sim bills nothing twice except requests that were answered
after the kill and so never reached OUT (at-least-once, counted exactly)."""
import os
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import (Cluster, bin_path, check, job_files, read_jsonl, run_llmq,  # noqa
                        verify_output, wait_until)
import json  # noqa
from llmqtest import complete_lines, die_with_parent  # noqa

N = 1500


def main():
    _, inp, out, expect = job_files("llmq-client-resume-", N)
    cluster = Cluster(workers=2, capacity=8)
    try:
        args = [bin_path("llmq"), "run", inp, "-o", out, "--broker", cluster.broker.frontend,
                "--model", "sim-model", "--concurrency", "16", "--quiet"]
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=die_with_parent)
        wait_until("300 finished lines", lambda: len(complete_lines(out)) >= 300, 60)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        first = complete_lines(out)
        check(300 <= len(first) < N, "killed run finished %d lines" % len(first))
        # Whatever the dead client had in flight still runs: let it settle,
        # then count what the sim answered that never reached OUT.
        cluster.wait_idle()
        before = cluster.sim.stats()
        ok_in_out = sum(1 for ok in first.values() if ok)
        lost = before["answered_ok"] - ok_in_out
        check(0 <= lost <= 16, "answered but not recorded: %d (window 16)" % lost)
        check(before["double_billed"] == 0, "double billed before the rerun: %r" % before)

        # A kill can leave a partial last line (a write cut short): add one,
        # for a line that is not done. The rerun drops it and runs that line.
        partial_id = next(cid for cid in expect if cid not in first)
        with open(out, "rb") as f:
            data = f.read()
        data = data[:data.rfind(b"\n") + 1]
        with open(out, "wb") as f:
            f.write(data + b'{"id": "batch_req_x", "custom_id": "%s", "response": {"status_'
                    % partial_id.encode())

        rc, stdout, stderr = run_llmq(["run", inp, "-o", out, "--broker", cluster.broker.frontend,
                                       "--model", "sim-model", "--concurrency", "16"])
        check(rc == 1, "rerun exit code %d (expected 1: some lines fail); %s" % (rc, stderr))
        check("%d already done" % len(first) in stdout, "resume summary: %s" % stdout)
        counts = verify_output(out, expect)
        after = cluster.sim.stats()
        ok_total = counts["ok"] + counts["retry"]
        # Finished lines were not sent again: the only requests billed twice
        # are the `lost` ones, and the rerun sent exactly the missing lines.
        check(after["double_billed"] == lost,
              "double billed %d, expected %d" % (after["double_billed"], lost))
        check(after["answered_ok"] - before["answered_ok"] == ok_total - ok_in_out,
              "rerun answered %d ok, expected %d" % (after["answered_ok"] - before["answered_ok"],
                                                    ok_total - ok_in_out))
        check(partial_id in {r["custom_id"] for r in read_jsonl(out)}, "partial line rerun")

        # --retry-failed: the error lines (and only those) run again; they
        # fail again ([[sim:fail=400]]), every other line is kept.
        failed = counts["fail"]
        check(failed > 0, "the input has permanent failures")
        rc, stdout, stderr = run_llmq(["run", inp, "-o", out, "--broker", cluster.broker.frontend,
                                       "--model", "sim-model", "--concurrency", "16",
                                       "--retry-failed"])
        check(rc == 1, "--retry-failed exit code %d; %s" % (rc, stderr))
        check("%d already done" % (N - failed) in stdout, "--retry-failed summary: %s" % stdout)
        again = cluster.sim.stats()

        def chat_400(st):
            return st["requests"].get("/v1/chat/completions", {}).get("400", 0)
        sent = sum(sum(v for k, v in by.items()) for by in again["requests"].values()
                   if by) - sum(sum(v for k, v in by.items()) for by in after["requests"].values()
                                if by)
        check(chat_400(again) - chat_400(after) == failed and again["answered_ok"] ==
              after["answered_ok"], "--retry-failed: %d more 400s, %d more ok, expected %d and 0"
              % (chat_400(again) - chat_400(after), again["answered_ok"] - after["answered_ok"],
                 failed))
        print("--retry-failed: %d requests reached the sim (stats calls included)" % sent)
        check(verify_output(out, expect) == counts, "output after --retry-failed")

        # A kill during a resume that dropped a partial line leaves whole,
        # valid lines: the partial line is cut away before the first append
        # (else it glues itself to the next line, which then parses as
        # nothing and is lost).
        with open(out, "rb") as f:
            lines = f.read().split(b"\n")
        keep = N // 3
        with open(out, "wb") as f:
            f.write(b"\n".join(lines[:keep]) + b'\n{"id": "batch_req_y", "custom_id": "req-0')
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                preexec_fn=die_with_parent)
        wait_until("%d finished lines" % (keep + 50),
                   lambda: len(complete_lines(out)) >= keep + 50, 60)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        with open(out, "rb") as f:
            whole = f.read().split(b"\n")[:-1]
        for i, line in enumerate(whole):
            try:
                json.loads(line)
            except ValueError:
                check(False, "line %d of OUT after a killed resume is not JSON: %r" % (i, line[:120]))
        rc, stdout, stderr = run_llmq(["run", inp, "-o", out, "--broker", cluster.broker.frontend,
                                       "--model", "sim-model", "--concurrency", "16"])
        check(rc == 1, "final rerun exit code %d; %s" % (rc, stderr))
        check(verify_output(out, expect) == counts, "output after the second kill")
        print("client.resume: killed after %d lines, %d lost in flight, rerun completed %r"
              % (len(first), lost, counts))
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
