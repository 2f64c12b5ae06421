"""Helpers for llmq-sim integration tests: start the real binary on an
ephemeral port, talk HTTP with http.client, poll with timeouts (no sleeps)."""
import http.client
import json
import os
import select
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import llmqtest  # noqa: E402

BIN = os.path.join(os.environ.get("LLMQ_BIN_DIR", "build/bin"), "llmq-sim")
KEY = "sk-test-key"


def fnv1a64(data: bytes) -> int:
    h = 0xcbf29ce484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def chat_hash(model, messages, system=None):
    """Canonical text as documented in sim/README.md."""
    text = model + "\n"
    if system is not None:
        text += "system:" + system + "\n"
    for m in messages:
        c = m.get("content")
        if isinstance(c, list):
            c = "".join(p.get("text", "") for p in c if p.get("type") == "text")
        text += m["role"] + ":" + (c or "") + "\n"
    return "%016x" % fnv1a64(text.encode())


class Sim(llmqtest.Proc):
    """The real llmq-sim (llmqtest.Proc: stderr to a log, checked at close:
    exit 0 on SIGTERM and no sanitizer report)."""

    def __init__(self, *flags, timeout=10):
        super().__init__([BIN, "--port", "0", "--quiet", *flags], name="llmq-sim",
                         timeout=timeout)
        if not self.ready_line.startswith("ready llmq-sim url="):
            raise RuntimeError("no ready line from llmq-sim: %r" % self.ready_line)
        self.url = self.ready["url"]
        u = urllib.parse.urlparse(self.url)
        self.host, self.port = u.hostname, u.port

    def conn(self, timeout=10):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, auth=True,
                anthropic=False, timeout=10, raw=None):
        """Returns (status, headers dict (lower-case), body bytes)."""
        h = dict(headers or {})
        if auth:
            if anthropic:
                h.setdefault("x-api-key", KEY)
                h.setdefault("anthropic-version", "2023-06-01")
            else:
                h.setdefault("Authorization", "Bearer " + KEY)
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            h.setdefault("Content-Type", "application/json")
        c = self.conn(timeout)
        try:
            c.request(method, path, body=data, headers=h)
            r = c.getresponse()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read()
        finally:
            c.close()

    def json(self, method, path, body=None, **kw):
        st, h, b = self.request(method, path, body, **kw)
        return st, h, json.loads(b) if b else None

    def stats(self):
        return self.json("GET", "/_stats", auth=False)[2]

    def reset(self):
        return self.json("POST", "/_reset", auth=False)[2]

    def close(self):
        self.stop(timeout=20)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def poll(fn, timeout=20, what="condition"):
    """Calls fn until it returns a truthy value or timeout; returns it. Each
    call is a real HTTP round trip, so this is not a busy spin on a sleep."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for " + what)
        select.select([], [], [], 0.02)   # pace the polling a little


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
