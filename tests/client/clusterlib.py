"""Helpers for the client end-to-end tests: start the real llmq-sim,
llmq-broker and llmq-worker binaries on ephemeral ports, read their `ready`
lines, wait on polls with deadlines (never sleeps), and check results.
Runs on /usr/bin/python3 (python3-zmq, python3-msgpack)."""
import http.client
import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.parse

BIN_DIR = os.environ.get("LLMQ_BIN_DIR", "build/bin")
SOURCE_DIR = os.environ.get("LLMQ_SOURCE_DIR",
                            os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
sys.path.insert(0, os.path.join(SOURCE_DIR, "bindings", "python"))
import llmq  # noqa: E402  (the Python client, used to watch the broker)

MODEL = "sim-model"
VERBOSE = bool(os.environ.get("LLMQ_TEST_VERBOSE"))


def bin_path(name):
    return os.path.join(BIN_DIR, name)


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def chat_hash(model, messages):
    """llmq-sim's canonical hash of a chat request (sim/README.md)."""
    text = model + "\n"
    for m in messages:
        text += m["role"] + ":" + (m.get("content") or "") + "\n"
    return "%016x" % fnv1a64(text.encode())


def fail(message):
    print("FAIL: " + message, file=sys.stderr)
    sys.exit(1)


def check(cond, message):
    if not cond:
        fail(message)


def wait_until(what, predicate, timeout=30.0, interval=0.05):
    """Poll predicate until it returns a true value or the deadline passes.
    The interval is the poll period of a readiness check, not a guess at
    how long something takes: the deadline is the only timing."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            fail("timed out waiting for " + what)
        select.select([], [], [], interval)


class Proc:
    """A child process that prints `ready <name> k=v ...` on stdout."""

    def __init__(self, argv, env=None, timeout=20.0):
        self.argv = argv
        stderr = None if VERBOSE else subprocess.DEVNULL
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=stderr, env=full_env,
                                     preexec_fn=_die_with_parent)
        line = self._readline(timeout)
        if not line.startswith("ready "):
            self.kill()
            fail("no ready line from %s: %r" % (argv[0], line))
        self.ready = dict(kv.split("=", 1) for kv in line.split()[2:] if "=" in kv)

    def _readline(self, timeout):
        deadline = time.monotonic() + timeout
        buf = b""
        fd = self.proc.stdout.fileno()
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                break
            ch = os.read(fd, 1)
            if not ch:
                break
            buf += ch
        return buf.decode(errors="replace").strip()

    def kill(self, sig=signal.SIGKILL):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _die_with_parent():
    # Children never outlive the test, even if it is killed (PR_SET_PDEATHSIG).
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except Exception:
        pass


class Sim(Proc):
    def __init__(self, *flags):
        super().__init__([bin_path("llmq-sim"), "--port", "0", "--quiet", *flags])
        self.url = self.ready["url"]
        u = urllib.parse.urlparse(self.url)
        self.host, self.port = u.hostname, u.port

    def stats(self):
        c = http.client.HTTPConnection(self.host, self.port, timeout=10)
        c.request("GET", "/_stats")
        r = c.getresponse()
        body = json.loads(r.read())
        c.close()
        return body


class Broker(Proc):
    def __init__(self, frontend="tcp://127.0.0.1:*", backend="tcp://127.0.0.1:*", *flags):
        super().__init__([bin_path("llmq-broker"), "--frontend", frontend,
                          "--backend", backend, *flags])
        self.frontend = self.ready["frontend"]
        self.backend = self.ready["backend"]


class Worker(Proc):
    def __init__(self, backend, sim_url, capacity=32, model=MODEL, *flags):
        super().__init__([bin_path("llmq-worker"), "--broker", backend, "--provider", "sim",
                          "--base-url", sim_url + "/v1", "--model", model,
                          "--capacity", str(capacity), *flags],
                         env={"OPENAI_API_KEY": "sk-test-key"})


def _low_port():
    """A free port below the kernel's (32768+) and ZeroMQ's (49152+)
    ephemeral ranges: restart_broker binds the same ports again after a
    kill -9, and no process of a test running in parallel can be handed such
    a port in between (as it can a freed ephemeral one)."""
    import random
    import socket
    for _ in range(200):
        port = random.randint(20000, 32000)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free port in 20000..32000")


class Cluster:
    """sim + broker + n workers. close() stops everything."""

    def __init__(self, workers=2, capacity=32, sim_flags=(), broker_flags=()):
        self.procs = []
        self.sim = Sim("--latency-ms", "5", *sim_flags)
        self.procs.append(self.sim)
        self.broker = Broker("tcp://127.0.0.1:%d" % _low_port(),
                             "tcp://127.0.0.1:%d" % _low_port(), *broker_flags)
        self.procs.append(self.broker)
        self.workers = []
        for _ in range(workers):
            self.add_worker(capacity)
        self.wait_workers(workers)

    def add_worker(self, capacity=32):
        w = Worker(self.broker.backend, self.sim.url, capacity)
        self.workers.append(w)
        self.procs.append(w)
        return w

    def client(self):
        return llmq.Client(self.broker.frontend)

    def status(self):
        c = self.client()
        try:
            return c.status(timeout=3.0)
        finally:
            c.close()

    def wait_workers(self, n, timeout=30.0):
        """Until the broker lists n workers with credit to take work."""
        def ready():
            s = self.status()
            if not s:
                return False
            live = [w for w in s.get("workers", []) if w.get("healthy", True)]
            return len(live) >= n
        wait_until("%d workers at the broker" % n, ready, timeout)

    def restart_broker(self):
        """kill -9 the broker, start a new one on the same ports."""
        fe, be = self.broker.frontend, self.broker.backend
        self.broker.kill(signal.SIGKILL)
        self.procs.remove(self.broker)
        self.broker = Broker(fe, be)
        self.procs.append(self.broker)

    def wait_idle(self, timeout=60.0):
        """Until the broker has nothing queued or in flight and the sim has
        nothing in flight: every request sent so far has been answered."""
        def idle():
            s = self.status()
            if not s:
                return False
            counters = s.get("counters", {})
            if counters.get("queued", 0) or counters.get("in_flight", 0):
                return False
            if any(w.get("in_flight", 0) for w in s.get("workers", [])):
                return False
            return self.sim.stats().get("in_flight", 1) == 0
        wait_until("an idle cluster", idle, timeout)

    def close(self):
        for p in reversed(self.procs):
            p.kill(signal.SIGTERM)


def run_llmq(args, timeout=120, env=None):
    """Run the llmq CLI; returns (rc, stdout, stderr)."""
    full_env = dict(os.environ)
    full_env.pop("LLMQ_ENDPOINT", None)
    full_env.update(env or {})
    # Under ASan/UBSan a report must not pass for exit code 1 ("some lines
    # failed"): give sanitizer failures their own code and look for reports.
    full_env["ASAN_OPTIONS"] = full_env.get("ASAN_OPTIONS", "") + ":exitcode=86"
    p = subprocess.run([bin_path("llmq"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout, env=full_env)
    stderr = p.stderr.decode(errors="replace")
    check(p.returncode != 86 and "Sanitizer" not in stderr and "runtime error:" not in stderr,
          "sanitizer report from llmq %s:\n%s" % (" ".join(args), stderr[-3000:]))
    # Every exit path destroys its sockets: CZMQ reports any left open.
    check("dangling" not in stderr,
          "dangling socket reported by llmq %s:\n%s" % (" ".join(args), stderr[-3000:]))
    return p.returncode, p.stdout.decode(errors="replace"), stderr


def read_jsonl(path):
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    check(lines[-1] == b"", "%s does not end with a newline" % path)
    return [json.loads(line) for line in lines[:-1]]


def write_input(path, n, fault_every=(10, 25), start=0):
    """n lines in mixed formats. Every fault_every[0]-th line carries
    [[sim:fail=500x1]] (a transient fault: the worker retries, the line ends
    ok); every fault_every[1]-th carries [[sim:fail=400]] (permanent: an
    error line). Returns {custom_id: (kind, messages)} with kind in ok,
    retry, fail."""
    expect = {}
    with open(path, "w") as f:
        for i in range(start, start + n):
            cid = "req-%05d" % i
            kind = "ok"
            text = "Question %d: what is %d times %d?" % (i, i, i + 1)
            if fault_every[1] and i % fault_every[1] == 7:
                kind = "fail"
                text += " [[sim:fail=400]]"
            elif fault_every[0] and i % fault_every[0] == 3:
                kind = "retry"
                text += " [[sim:fail=500x1]]"
            messages = [{"role": "user", "content": text}]
            form = i % 3
            if form == 0:
                line = {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": MODEL, "messages": messages, "max_tokens": 16}}
            elif form == 1:
                line = {"custom_id": cid, "prompt": text, "max_tokens": 16}
            else:
                line = {"custom_id": cid, "messages": messages, "max_tokens": 16}
            f.write(json.dumps(line) + "\n")
            expect[cid] = (kind, messages)
    return expect


def verify_output(path, expect, ordered=True):
    """Every custom_id answered exactly once, in input order; ok lines carry
    the sim's answer for their own request; failures are error lines."""
    rows = read_jsonl(path)
    ids = [r["custom_id"] for r in rows]
    check(len(ids) == len(set(ids)), "duplicate custom_ids in %s" % path)
    check(set(ids) == set(expect), "custom_ids differ: missing %s, extra %s" % (
        sorted(set(expect) - set(ids))[:5], sorted(set(ids) - set(expect))[:5]))
    if ordered:
        check(ids == list(expect), "output is not in input order")
    counts = {"ok": 0, "retry": 0, "fail": 0}
    for r in rows:
        kind, messages = expect[r["custom_id"]]
        counts[kind] += 1
        if kind == "fail":
            check(r["error"] and r["error"]["code"] == "invalid_request",
                  "%s should be an invalid_request error line: %r" % (r["custom_id"], r))
            continue
        check(r["error"] is None, "%s failed: %r" % (r["custom_id"], r["error"]))
        check(r["response"]["status_code"] == 200, "%s status" % r["custom_id"])
        content = r["response"]["body"]["choices"][0]["message"]["content"]
        want = "sim-" + chat_hash(MODEL, messages)
        check(content.startswith(want), "%s answered with another request's content: %r vs %r"
              % (r["custom_id"], content[:24], want))
    return counts
