#!/usr/bin/python3
"""broker.cli: llmq-broker's command line, flag by flag (its flags come
from one table in broker/main.c).

  - --help names every flag; -h and --help exit 0; --version prints the
    project version
  - every flag that takes a value refuses garbage and out-of-range values:
    exit 2, with the flag named on stderr
  - unknown flags, stray arguments, a missing value and --dead-ms not above
    --heartbeat-ms: exit 2
  - a broker given every flag at the edge of its range (and every bare
    flag) starts (ready line) and drains on SIGTERM (exit 0)"""
import os
import select
import signal
import subprocess
import sys
import tempfile
import time

BIN = os.path.join(os.environ.get("LLMQ_BIN_DIR", "build/bin"), "llmq-broker")

#  flag -> (bad values, an edge value that is accepted); None: no value.
VALUED = {
    "--max-queue": (["x", "0", "100000001"], "1"),
    "--no-worker-wait-ms": (["x", "-1", "86400001"], "0"),
    "--drain-ms": (["soon", "86400001"], "0"),
    "--heartbeat-ms": (["x", "9"], "10"),
    "--dead-ms": (["x", "29", "3600001"], "3600000"),
    "--default-deadline": (["x", "2000000001"], "2000000000"),
    "--recovery-ms": (["x", "3600001"], "0"),
    "--batch-threshold": (["x", "0", "1000000001"], "1000000000"),
    "--batch-poll-ms": (["x", "9"], "10"),
    "--batch-task-timeout-ms": (["x", "99"], "86400000"),
    "--batch-submit-grace-ms": (["x", "2592000001"], "720h"),
    "--batch-provider-price": (["x", "-1", "100.5", ""], "100"),
}
BARE = ["--batch-no-resubmit", "--json-logs", "--verbose", "--quiet"]
OTHER = ["--frontend", "--backend", "--metrics", "--name", "--batch-db", "--curve-cert",
         "--client-keys", "--worker-keys", "--version", "--help"]
failures = []


def check(ok, what):
    if not ok:
        failures.append(what)
        print("FAIL: " + what, file=sys.stderr)


def run(*args):
    r = subprocess.run([BIN, *args], capture_output=True, text=True, timeout=30)
    return r.returncode, r.stdout, r.stderr


def help_and_version():
    rc, out, _ = run("--help")
    check(rc == 0, "--help exits 0")
    for flag in list(VALUED) + BARE + OTHER:
        check(flag in out, "--help names " + flag)
    rc, out2, _ = run("-h")
    check(rc == 0 and out2 == out, "-h is --help")
    rc, out, _ = run("--version")
    check(rc == 0 and out.startswith("llmq-broker "), "--version: %r" % out)


def refusals():
    for flag, (bad, _) in VALUED.items():
        for value in bad:
            rc, _, err = run(flag, value)
            check(rc == 2 and err.startswith("llmq-broker:") and flag in err,
                  "%s %r: exit 2 naming the flag (rc %d, %r)" % (flag, value, rc, err))
    for args in (["--nope"], ["extra"], ["--frontend"], ["--heartbeat-ms", "100", "--dead-ms", "100"]):
        rc, _, err = run(*args)
        check(rc == 2 and err.startswith("llmq-broker:"), "%s: exit 2 (rc %d)" % (args, rc))


def edges():
    with tempfile.TemporaryDirectory(prefix="llmq-broker-cli-") as tmp:
        argv = [BIN, "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*",
                "--name", "cli-edges", "--batch-db", os.path.join(tmp, "b.db")]
        for flag, (_, good) in VALUED.items():
            argv += [flag, good]
        argv += BARE
        p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        try:
            ready = b""
            deadline = time.monotonic() + 30
            while not ready.endswith(b"\n") and time.monotonic() < deadline and p.poll() is None:
                if select.select([p.stdout], [], [], 0.5)[0]:
                    ready += os.read(p.stdout.fileno(), 4096)
            check(ready.startswith(b"ready llmq-broker frontend=tcp://127.0.0.1:"),
                  "every flag at its edge: ready (%r, rc %r)" % (ready, p.poll()))
            p.send_signal(signal.SIGTERM)
            check(p.wait(timeout=30) == 0, "SIGTERM: drained, exit 0")
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            p.stdout.close()


def main():
    if not os.access(BIN, os.X_OK):
        print("broker.cli: %s not built" % BIN, file=sys.stderr)
        return 77
    help_and_version()
    refusals()
    edges()
    print("broker.cli: %s" % ("FAILED" if failures else "OK"))
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
