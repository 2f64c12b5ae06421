#!/usr/bin/python3
"""client.run_memory: `llmq run` on a file much larger than its window holds
the window, not the file (issue 19), and keeps its guarantees.

5,000 lines, two in three of them padded to about 16 KB with a field the
run does not send (about 50 MB in all), window 64, against a real cluster:
  1. a run killed (SIGKILL) midway leaves whole lines; the sim billed
     nothing twice;
  2. the rerun finishes: OUT has every custom_id exactly once, in input
     order, each with its own answer; the only requests billed twice are
     those answered after the kill that never reached OUT;
  3. the same file from stdin (`llmq run -`) to a new OUT: complete and in
     input order;
  and the peak RSS (VmHWM) of every `llmq run` stays under half the input
  (the engine before issue 19 held every line: above the input's size).
"""
import json
import os
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import (Cluster, bin_path, check, job_files,  # noqa
                        verify_output, wait_until)
from llmqtest import complete_lines, die_with_parent, sanitized  # noqa

N = 5000
WINDOW = 64
PAD = 16000


def pad_input(path):
    """A large field on every line that the run does not send: top-level
    `pad` of the batch and prompt forms (a messages line sends its other
    keys, so it stays as it is)."""
    with open(path) as f:
        rows = [json.loads(line) for line in f]
    with open(path, "w") as f:
        for i, row in enumerate(rows):
            if "body" in row or "prompt" in row:
                row["pad"] = "%05d" % i + "x" * PAD
            f.write(json.dumps(row) + "\n")
    return os.path.getsize(path)


def vm_hwm_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Run:
    """`llmq run` in the background; peak keeps its largest VmHWM seen."""

    def __init__(self, args, stdin=None):
        env = dict(os.environ)
        env.pop("LLMQ_ENDPOINT", None)
        self.proc = subprocess.Popen([bin_path("llmq"), *args], stdin=stdin,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     env=env, preexec_fn=die_with_parent)
        self.peak, self.asan = 0, False

    def sample(self):
        if self.proc.poll() is None:
            self.asan = self.asan or sanitized(self.proc.pid)
            self.peak = max(self.peak, vm_hwm_kb(self.proc.pid))
        return self.proc.poll() is not None

    def wait(self, timeout=120):
        wait_until("llmq run to exit", self.sample, timeout, interval=0.02)
        err = self.proc.stderr.read().decode(errors="replace")
        self.proc.stderr.close()
        return self.proc.returncode, err

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        self.proc.stderr.close()

    def check_peak(self, limit_kb, what):
        if not self.asan:
            check(0 < self.peak < limit_kb, "%s: peak RSS %d KiB, expected under %d KiB "
                  "(half the input)" % (what, self.peak, limit_kb))
        print("%s: peak RSS %d KiB" % (what, self.peak))


def main():
    _, inp, out, expect = job_files("llmq-client-runmem-", N)
    limit_kb = pad_input(inp) // 2 // 1024
    cluster = Cluster(workers=2, capacity=32)
    try:
        args = ["run", inp, "-o", out, "--broker", cluster.broker.frontend, "--model",
                "sim-model", "--concurrency", str(WINDOW), "--quiet"]
        run = Run(args)
        wait_until("1,500 finished lines",
                   lambda: run.sample() or len(complete_lines(out)) >= 1500, 120, interval=0.02)
        run.kill()
        run.check_peak(limit_kb, "killed run")
        first = complete_lines(out)
        check(1500 <= len(first) < N, "killed run finished %d lines" % len(first))
        cluster.wait_idle()
        before = cluster.sim.stats()
        lost = before["answered_ok"] - sum(1 for ok in first.values() if ok)
        check(0 <= lost <= WINDOW, "answered but not recorded: %d (window %d)" % (lost, WINDOW))
        check(before["double_billed"] == 0, "double billed before the rerun: %r" % before)

        run = Run(args)
        rc, err = run.wait()
        check(rc == 1, "rerun exit code %d (expected 1: some lines fail); %s" % (rc, err))
        run.check_peak(limit_kb, "rerun")
        verify_output(out, expect)
        after = cluster.sim.stats()
        check(after["double_billed"] == lost,
              "double billed %d, expected %d (answered after the kill)"
              % (after["double_billed"], lost))

        # IN from stdin: the run reads it twice (a spill copy).
        out2 = out + ".stdin.jsonl"
        with open(inp, "rb") as f:
            run = Run(["run", "-", "-o", out2, "--broker", cluster.broker.frontend, "--model",
                       "sim-model", "--concurrency", str(WINDOW), "--quiet"], stdin=f)
            rc, err = run.wait()
        check(rc == 1, "stdin run exit code %d; %s" % (rc, err))
        run.check_peak(limit_kb, "stdin run")
        verify_output(out2, expect)
        leftovers = [n for n in os.listdir(os.path.dirname(out)) if n.startswith(".llmq-run-")]
        check(not leftovers, "spill files left: %r" % leftovers)
    finally:
        cluster.close()
    print("client.run_memory: ok (%d lines, window %d, %d answered after the kill)" % (N, WINDOW, lost))


if __name__ == "__main__":
    main()
