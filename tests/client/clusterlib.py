"""Helpers for the client end-to-end tests: start the real llmq-sim,
llmq-broker and llmq-worker binaries on ephemeral ports, read their `ready`
lines, wait on polls with deadlines (never sleeps), and check results.
Runs on /usr/bin/python3 (python3-zmq, python3-msgpack)."""
import http.client
import json
import os
import signal
import sys
import urllib.parse

BIN_DIR = os.environ.get("LLMQ_BIN_DIR", "build/bin")
SOURCE_DIR = os.environ.get("LLMQ_SOURCE_DIR",
                            os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
sys.path.insert(0, os.path.join(SOURCE_DIR, "bindings", "python"))
import llmq  # noqa: E402  (the Python client, used to watch the broker)
sys.path.insert(0, os.path.join(SOURCE_DIR, "tests", "lib"))
import llmqtest  # noqa: E402

MODEL = "sim-model"
VERBOSE = bool(os.environ.get("LLMQ_TEST_VERBOSE"))


bin_path = llmqtest.bin_path


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


fail = llmqtest.fail
check = llmqtest.check
wait_until = llmqtest.wait_until


class Proc(llmqtest.Proc):
    """A child process that prints `ready <name> k=v ...` on stdout; its
    stderr goes to a log that is checked when it stops (llmqtest.Proc)."""

    def __init__(self, argv, env=None, timeout=20.0):
        super().__init__(argv, env=env, timeout=timeout)

    def kill(self, sig=signal.SIGKILL):
        """SIGKILL: a crash on purpose. SIGTERM: a clean stop, checked
        (exit 0, no sanitizer report)."""
        if sig == signal.SIGKILL:
            self.kill9()
        else:
            self.stop(sig)


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


run_llmq = llmqtest.run_llmq


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
