#!/usr/bin/python3
"""client.broker_restart: kill -9 the broker in the middle of `llmq run`
and start a new one on the same ports. Workers reconnect and say hello
again; the client sees its connection drop, reconnects and resends what
was outstanding. The run completes with every line answered exactly once
and every answer matching its request."""
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import Cluster, bin_path, check, job_files, verify_output, wait_until  # noqa
from test_resume import complete_lines  # noqa
from llmqtest import die_with_parent, sanitizer_report  # noqa

N = 1500


def main():
    _, inp, out, expect = job_files("llmq-client-restart-", N)
    cluster = Cluster(workers=2, capacity=8)
    try:
        args = [bin_path("llmq"), "run", inp, "-o", out, "--broker", cluster.broker.frontend,
                "--model", "sim-model", "--concurrency", "32", "--timeout", "1500"]
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                preexec_fn=die_with_parent)
        wait_until("300 finished lines", lambda: len(complete_lines(out)) >= 300, 60)
        cluster.restart_broker()
        check(proc.poll() is None, "llmq run ended before the restart")
        stdout, stderr = proc.communicate(timeout=120)
        check(proc.returncode == 1, "exit code %d (expected 1); %s" % (proc.returncode, stderr))
        report = sanitizer_report(stderr.decode(errors="replace"))
        check(not report, "sanitizer report from llmq run: %s" % report)
        counts = verify_output(out, expect)
        s = cluster.status()
        check(s and len(s["workers"]) == 2, "workers back at the new broker: %r" % s)
        print("client.broker_restart: completed %r after a broker kill -9" % counts)
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
