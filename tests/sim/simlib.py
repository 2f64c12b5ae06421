"""Helpers for llmq-sim integration tests: the real binary on an ephemeral
port (llmqtest.Sim, the shared kit's launcher), HTTP with http.client, polls
with timeouts (no sleeps), and groups of checks that report every failure."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import llmqtest  # noqa: E402
from llmqtest import Sim, chat_hash, fnv1a64  # noqa: E402,F401

BIN = llmqtest.bin_path("llmq-sim")
KEY = llmqtest.SIM_KEY


def poll(fn, timeout=20, what="condition"):
    """Calls fn until it returns a truthy value (returned) or the test fails
    at timeout (llmqtest.wait_until; each call is a real HTTP round trip)."""
    return llmqtest.wait_until(what, fn, timeout, interval=0.02)


def sse_events(raw: bytes):
    """Parses an SSE body into a list of (event, data) tuples."""
    out = []
    for block in raw.decode().split("\n\n"):
        if not block.strip():
            continue
        ev, data = None, []
        for line in block.split("\n"):
            if line.startswith("event: "):
                ev = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        out.append((ev, "\n".join(data)))
    return out


_failures = []


def check(cond, msg):
    if not cond:
        _failures.append(msg)
        print("FAIL:", msg, file=sys.stderr)


def run(groups):
    names = sys.argv[1:] or list(groups)
    for n in names:
        print("== %s" % n, file=sys.stderr)
        groups[n]()
    if _failures:
        print("%d check(s) failed" % len(_failures), file=sys.stderr)
        sys.exit(1)
    print("ok", file=sys.stderr)
