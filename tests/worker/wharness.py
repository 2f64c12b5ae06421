"""A broker stand-in for worker tests: a ROUTER that speaks the llmq wire
protocol (proto/PROTOCOL.md) to one real llmq-worker, plus helpers to start
the real llmq-sim. Every wait is a poll with a timeout, never a sleep.

Frames on the ROUTER: [routing id, header (msgpack map), payload?]."""
import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

import msgpack
import zmq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import llmqtest  # noqa: E402

BIN_DIR = os.environ.get("LLMQ_BIN_DIR", "build/bin")
SIM = os.path.join(BIN_DIR, "llmq-sim")
WORKER = os.path.join(BIN_DIR, "llmq-worker")


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def read_line(proc, timeout):
    """One line from proc.stdout within timeout (None if none)."""
    deadline = time.monotonic() + timeout
    buf = b""
    fd = proc.stdout.fileno()
    while not buf.endswith(b"\n"):
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            return None
        ch = os.read(fd, 1)
        if not ch:
            return None
        buf += ch
    return buf.decode()


class Sim(llmqtest.Proc):
    """The real llmq-sim on an ephemeral port (llmqtest.Proc: stderr to a
    log, checked at close: exit 0 on SIGTERM, no sanitizer report)."""

    def __init__(self, *flags, port=0):
        super().__init__([SIM, "--port", str(port), "--quiet", *flags], name="llmq-sim",
                         timeout=10)
        check(self.ready_line.startswith("ready llmq-sim url="),
              "no ready line from llmq-sim: %r" % self.ready_line)
        self.url = self.ready["url"]
        self.base = self.url + "/v1"
        self.port = int(self.url.rsplit(":", 1)[1])

    def stats(self):
        with urllib.request.urlopen(self.url + "/_stats", timeout=10) as r:
            return json.loads(r.read())

    def close(self):
        self.stop(timeout=20)


class Harness:
    """A ROUTER on tcp://127.0.0.1:* and the real llmq-worker connected to it."""

    def __init__(self, *flags, env=None, wait_ready=True, heartbeats=True):
        self.heartbeats = heartbeats   # send hb every second, as a broker does
        self.hb_at = 0.0
        self.ctx = zmq.Context.instance()
        self.router = self.ctx.socket(zmq.ROUTER)
        self.router.linger = 0
        port = self.router.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = "tcp://127.0.0.1:%d" % port
        self.log = tempfile.NamedTemporaryFile(prefix="llmq-worker-test-", suffix=".log", delete=False)
        e = dict(os.environ)
        e.update(env or {})
        self.proc = subprocess.Popen([WORKER, "--broker", self.endpoint, *flags],
                                     stdout=subprocess.PIPE, stderr=self.log, env=e)
        self.rid = None
        self.hello = None
        self.credit = 0
        self.results = {}      # id -> (header, payload)
        self.chunks = {}       # id -> [(header, payload)]
        self.received = []     # every (header, payload), for secret checks
        self.hbs = []
        self.termed = False
        self.stdout = ""
        if wait_ready:
            line = read_line(self.proc, 20)
            check(line and line.startswith("ready llmq-worker worker="),
                  "no ready line from llmq-worker: %r\n%s" % (line, self.stderr()))
            self.stdout += line
            self.wait(lambda: self.hello is not None, 10, "hello")

    # --- wire ------------------------------------------------------------
    def send(self, t, payload=None, **fields):
        check(self.rid is not None, "no worker connected")
        h = {"v": 1, "t": t}
        h.update(fields)
        frames = [self.rid, msgpack.packb(h)]
        if payload is not None:
            frames.append(msgpack.packb(payload))
        self.router.send_multipart(frames)

    def _handle(self, frames):
        self.rid = frames[0]
        h = msgpack.unpackb(frames[1], raw=False)
        p = msgpack.unpackb(frames[2], raw=False) if len(frames) > 2 else None
        self.received.append((h, p))
        t = h.get("t")
        if t == "hello":
            self.hello = h
            self.credit = 0
        elif t == "credit":
            self.credit += h["n"]
        elif t == "res":
            check(h["id"] not in self.results, "second res for %s" % h["id"])
            self.results[h["id"]] = (h, p)
        elif t == "chunk":
            self.chunks.setdefault(h["id"], []).append((h, p))
        elif t == "hb":
            self.hbs.append(h)

    def pump(self, timeout):
        """Receive whatever arrives within timeout seconds (at least one poll)."""
        now = time.monotonic()
        if self.heartbeats and self.rid is not None and now >= self.hb_at:
            self.send("hb")
            self.hb_at = now + 1.0
        timeout = min(timeout, max(0.0, self.hb_at - now)) if self.heartbeats else timeout
        if self.router.poll(int(timeout * 1000)):
            while self.router.poll(0):
                self._handle(self.router.recv_multipart())

    def wait(self, cond, timeout, what):
        deadline = time.monotonic() + timeout
        while not cond():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("timed out waiting for %s\n%s" % (what, self.stderr()))
            if self.proc.poll() is not None and not self.router.poll(0):
                raise AssertionError("worker exited (%s) while waiting for %s\n%s"
                                     % (self.proc.returncode, what, self.stderr()))
            self.pump(min(left, 0.2))

    # --- requests ------------------------------------------------------------
    def req(self, rid, body, op="chat", model="sim-small", timeout=20, **fields):
        """Send a req against credit (waits for credit, as a broker must)."""
        self.wait(lambda: self.credit > 0, timeout, "credit")
        self.credit -= 1
        self.send("req", body, id=rid, op=op, model=model, attempt=1, **fields)

    def result(self, rid, timeout=30):
        self.wait(lambda: rid in self.results, timeout, "res " + rid)
        return self.results[rid]

    def chat(self, rid, text, timeout=30, **fields):
        self.req(rid, {"messages": [{"role": "user", "content": text}], "max_tokens": 16}, **fields)
        return self.result(rid, timeout)

    # --- process -------------------------------------------------------------
    def sigterm(self):
        """One SIGTERM (a second one means: stop now)."""
        self.termed = True
        self.proc.send_signal(signal.SIGTERM)

    def stderr(self):
        self.log.flush()
        with open(self.log.name, "rb") as f:
            return f.read().decode(errors="replace")

    def terminate(self, timeout=30):
        """SIGTERM; keep receiving until the worker exits; returns its code."""
        if self.proc.poll() is None and not self.termed:
            self.sigterm()
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < deadline:
            self.pump(0.1)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError("worker did not exit on SIGTERM\n" + self.stderr())
        self.pump(0.05)
        rest = self.proc.stdout.read()
        if rest:
            self.stdout += rest.decode(errors="replace")
        return self.proc.returncode

    def close(self):
        """Kill the worker if still running (a test that failed), and fail
        on any sanitizer report in its log."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.router.close()
        report = llmqtest.sanitizer_report(self.stderr())
        text = self.stderr()
        self.log.close()
        os.unlink(self.log.name)
        check(not report, "sanitizer report from llmq-worker: %s\n%s" % (report, text[-6000:]))


def content(payload):
    return payload["choices"][0]["message"]["content"]
