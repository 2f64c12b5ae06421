#!/usr/bin/python3
"""broker_it.py - integration tests for llmq-broker with real processes.

    broker_it.py test CASE        run one test case (see CASES below)
    broker_it.py worker [flags]   a fake protocol worker (for the tests)

Every test starts a real llmq-broker on ephemeral ports (read back from its
`ready` line) and real worker processes: fake protocol workers (this file in
`worker` mode, so a test controls delays and can kill -9 them) and, where
the binaries exist, llmq-worker and llmq-sim. No sleeps to wait for things:
every wait polls a socket or a pipe with a timeout.
"""
import argparse
import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.request

import msgpack
import zmq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import llmqtest  # noqa: E402
from llmqtest import skip, wait_until  # noqa: E402

BIN = os.environ.get("LLMQ_BIN_DIR", os.path.join(os.path.dirname(__file__), "../../build/bin"))
llmqtest.BIN_DIR = BIN
SELF = os.path.abspath(__file__)
PY = "/usr/bin/python3"


def pack(d):
    return msgpack.packb(d, use_bin_type=True)


def unpack(b):
    return msgpack.unpackb(b, raw=False)


# ---------------------------------------------------------------- processes

class Proc(llmqtest.Proc):
    """A child process whose `ready` line we wait for; stderr to a log that
    is checked when it stops (exit 0, no sanitizer report: llmqtest.Proc)."""

    def __init__(self, argv, name, env=None, timeout=20):
        super().__init__(argv, name=name, env=env, timeout=timeout)


def broker(*extra):
    argv = [os.path.join(BIN, "llmq-broker"), "--frontend", "tcp://127.0.0.1:*",
            "--backend", "tcp://127.0.0.1:*"] + list(extra)
    return Proc(argv, "llmq-broker")


def fake_worker(backend, name, model="m", capacity=4, delay_ms=0, hb_ms=1000, extra=()):
    argv = [PY, SELF, "worker", "--backend", backend, "--name", name, "--model", model,
            "--capacity", str(capacity), "--delay-ms", str(delay_ms), "--hb-ms", str(hb_ms)]
    return Proc(argv + list(extra), "fake worker " + name)


def have(binary):
    return os.access(os.path.join(BIN, binary), os.X_OK)


# ---------------------------------------------------------------- client

class Client:
    def __init__(self, endpoint, identity=None):
        self.ctx = zmq.Context.instance()
        self.s = self.ctx.socket(zmq.DEALER)
        self.s.setsockopt(zmq.LINGER, 0)
        if identity:
            self.s.setsockopt(zmq.IDENTITY, identity.encode())
        self.s.connect(endpoint)

    def req(self, rid, model="m", body=None, **kw):
        h = {"v": 1, "t": "req", "id": rid, "op": "chat", "model": model}
        h.update(kw)
        payload = body if body is not None else {"messages": [{"role": "user", "content": rid}]}
        self.s.send_multipart([pack(h), pack(payload)])

    def send(self, header, payload=None):
        frames = [pack(header)] + ([pack(payload)] if payload is not None else [])
        self.s.send_multipart(frames)

    def recv(self, timeout=10.0):
        """Next message as (header, payload or None); raises on timeout."""
        if not self.s.poll(int(timeout * 1000)):
            raise TimeoutError("no message within %.1f s" % timeout)
        frames = self.s.recv_multipart()
        return unpack(frames[0]), (unpack(frames[1]) if len(frames) > 1 else None)

    def close(self):
        self.s.close()


def run_load(client, n, window, model="m", on_answer=None, timeout=60, prefix="q", **kw):
    """Send n requests keeping `window` outstanding; return {id: res header}.
    Fails if any id is answered twice or an unknown id comes back."""
    answers = {}
    sent = 0
    deadline = time.time() + timeout
    while len(answers) < n:
        while sent < n and sent - len(answers) < window:
            client.req("%s%d" % (prefix, sent), model=model, **kw)
            sent += 1
        if time.time() > deadline:
            raise TimeoutError("only %d of %d answered" % (len(answers), n))
        h, p = client.recv(timeout=max(0.1, deadline - time.time()))
        if h["t"] != "res":
            raise AssertionError("unexpected %r" % h)
        rid = h["id"]
        assert rid.startswith(prefix) and int(rid[len(prefix):]) < sent, "unknown id %r" % rid
        assert rid not in answers, "answered twice: %r" % rid
        if h.get("ok"):
            assert p == {"messages": [{"role": "user", "content": rid}]} or p.get("echo") == rid \
                or "choices" in p, "wrong body for %s: %r" % (rid, p)
        answers[rid] = h
        if on_answer:
            on_answer(len(answers))
    return answers


def count_by_worker(answers):
    counts = {}
    for h in answers.values():
        counts[h.get("worker")] = counts.get(h.get("worker"), 0) + 1
    return counts


# ---------------------------------------------------------------- fake worker

def worker_main(argv):
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--model", default="m")
    ap.add_argument("--capacity", type=int, default=4)
    ap.add_argument("--delay-ms", type=int, default=0)
    ap.add_argument("--hb-ms", type=int, default=1000)
    ap.add_argument("--group", default=None)
    ap.add_argument("--rpm", type=int, default=0)
    a = ap.parse_args(argv)
    # Stopped by the test with SIGTERM: a clean exit (code 0).
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    ctx = zmq.Context()
    s = ctx.socket(zmq.DEALER)
    s.setsockopt(zmq.IDENTITY, ("%s-%d" % (a.name, os.getpid())).encode())
    s.setsockopt(zmq.LINGER, 0)
    s.connect(a.backend)
    hello = {"v": 1, "t": "hello", "worker": a.name, "pool": "fake", "provider": "echo",
             "models": [a.model], "capacity": a.capacity, "version": "test"}
    if a.group:
        hello["limit_group"] = a.group
        hello["limits"] = {"rpm": a.rpm, "tpm": 0}
    s.send(pack(hello))
    s.send(pack({"v": 1, "t": "credit", "n": a.capacity}))
    print("ready fake-worker worker=%s" % a.name, flush=True)
    pending = []            # (due time, id, payload frame)
    streams = set()         # ids that asked for chunks
    next_hb = time.time() + a.hb_ms / 1000.0
    while True:
        now = time.time()
        timeout = next_hb - now
        if pending:
            timeout = min(timeout, pending[0][0] - now)
        if s.poll(max(0, int(timeout * 1000))):
            while s.poll(0):
                frames = s.recv_multipart()
                h = unpack(frames[0])
                if h["t"] == "req":
                    if h.get("stream"):
                        streams.add(h["id"])
                    pending.append((time.time() + a.delay_ms / 1000.0, h["id"], frames[1]))
                    pending.sort(key=lambda x: x[0])
                elif h["t"] == "cancel":
                    for i, item in enumerate(pending):
                        if item[1] == h["id"]:
                            del pending[i]
                            s.send(pack({"v": 1, "t": "res", "id": h["id"], "ok": False,
                                         "error": {"code": "cancelled", "message": "cancelled",
                                                   "retryable": False}}))
                            s.send(pack({"v": 1, "t": "credit", "n": 1}))
                            break
                elif h["t"] == "error" and h.get("message") == "hello first":
                    s.send(pack(hello))
                    s.send(pack({"v": 1, "t": "credit", "n": a.capacity - len(pending)}))
        now = time.time()
        done = 0
        while pending and pending[0][0] <= now:
            _, rid, payload = pending.pop(0)
            if rid in streams:
                streams.discard(rid)
                for seq in range(3):
                    s.send_multipart([pack({"v": 1, "t": "chunk", "id": rid, "seq": seq}),
                                      pack({"object": "chat.completion.chunk", "n": seq})])
            s.send_multipart([pack({"v": 1, "t": "res", "id": rid, "ok": True,
                                    "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                              "total_tokens": 2}}), payload])
            done += 1
        if done:
            s.send(pack({"v": 1, "t": "credit", "n": done}))
        if now >= next_hb:
            s.send(pack({"v": 1, "t": "hb", "healthy": True, "in_flight": len(pending)}))
            next_hb = now + a.hb_ms / 1000.0


# ---------------------------------------------------------------- test cases

def t_spread():
    """Load spreads over workers in proportion to capacity."""
    b = broker("--quiet")
    ws = [fake_worker(b.ready["backend"], "w%d" % c, capacity=c, delay_ms=20) for c in (1, 2, 4)]
    c = Client(b.ready["frontend"])
    answers = run_load(c, 700, 64)
    counts = count_by_worker(answers)
    print("spread by capacity 1/2/4:", counts)
    assert all(h["ok"] for h in answers.values())
    assert counts.get("w4", 0) > counts.get("w2", 0) > counts.get("w1", 0) > 0, counts
    for w in ws:
        w.stop()
    assert b.stop() == 0


def t_kill9():
    """kill -9 of a worker mid-run loses nothing: every request answered once."""
    b = broker("--heartbeat-ms", "200", "--dead-ms", "1000")
    ws = [fake_worker(b.ready["backend"], "k%d" % i, capacity=16, delay_ms=5, hb_ms=200)
          for i in range(3)]
    c = Client(b.ready["frontend"])
    killed = []

    def on_answer(n):
        if n == 400 and not killed:
            ws[0].kill9()
            killed.append(True)
    answers = run_load(c, 2000, 48, on_answer=on_answer, timeout=90)
    assert killed
    bad = [h for h in answers.values() if not h["ok"]]
    assert not bad, bad[:3]
    requeued = [h for h in answers.values() if h.get("attempt", 1) > 1]
    print("answered", len(answers), "requeued", len(requeued), count_by_worker(answers))
    assert len(answers) == 2000
    # Each request the dead worker held was requeued and answered once: the
    # broker's counter is the sum of the extra attempts of the answers (a
    # worker wrongly declared dead on a stalled machine only adds to both).
    st = status(c)
    extra = sum(h.get("attempt", 1) - 1 for h in answers.values())
    assert st["counters"]["requeued"] == extra, (st["counters"], extra)
    # Nothing more arrives: exactly once.
    try:
        h, _ = c.recv(timeout=1.5)
        raise AssertionError("extra message %r" % h)
    except TimeoutError:
        pass
    for w in ws[1:]:
        w.stop()
    assert b.stop() == 0


def t_join():
    """A worker that joins mid-run receives work."""
    b = broker("--quiet")
    w1 = fake_worker(b.ready["backend"], "first", capacity=2, delay_ms=10)
    c = Client(b.ready["frontend"])
    later = []

    def on_answer(n):
        if n == 50 and not later:
            later.append(fake_worker(b.ready["backend"], "second", capacity=8, delay_ms=10))
    answers = run_load(c, 600, 32, on_answer=on_answer)
    counts = count_by_worker(answers)
    print("join:", counts)
    assert counts.get("second", 0) > 0, counts
    w1.stop()
    later[0].stop()
    assert b.stop() == 0


def t_priority_deadline():
    """Higher priority goes first; a deadline expires a queued request."""
    b = broker("--quiet")
    c = Client(b.ready["frontend"])
    for i in range(6):
        c.req("low%d" % i, priority=0)
    c.req("late", priority=0, deadline_ms=150)
    c.req("high", priority=10)
    # The pong comes after the broker queued all eight (one connection, in
    # order), so no request can be dispatched before "high" arrived, however
    # slow this machine is: the worker joins only now.
    c.send({"v": 1, "t": "ping"})
    h, _ = c.recv(timeout=10)
    assert h["t"] == "pong", h
    w = fake_worker(b.ready["backend"], "slow", capacity=1, delay_ms=100)
    order = []
    while len(order) < 8:
        h, _ = c.recv(timeout=10)
        order.append((h["id"], h["ok"], h.get("error", {}).get("code")))
    print("order:", order)
    # Dispatch order: only the served answers (the expired one may come at
    # any point).
    served = [o[0] for o in order if o[1]]
    assert served == ["high"] + ["low%d" % i for i in range(6)], served
    late = [o for o in order if o[0] == "late"][0]
    assert late[1] is False and late[2] == "deadline_exceeded", late
    assert all(o[1] for o in order if o[0] != "late")
    w.stop()
    assert b.stop() == 0


class RawWorker:
    """A worker socket driven step by step by the test."""

    def __init__(self, backend, name, models=("m",), capacity=2, pool="fake"):
        self.s = zmq.Context.instance().socket(zmq.DEALER)
        self.s.setsockopt(zmq.IDENTITY, ("%s-%d" % (name, os.getpid())).encode())
        self.s.setsockopt(zmq.LINGER, 0)
        self.s.connect(backend)
        self.name, self.pool = name, pool
        self.last_sent = 0.0
        self.hello(models, capacity)

    def send(self, header, payload=None):
        header = dict({"v": 1}, **header)
        self.s.send_multipart([pack(header)] + ([payload] if payload is not None else []))
        self.last_sent = time.monotonic()

    def heartbeat(self):
        """A heartbeat if nothing was sent for 200 ms: every wait of this
        worker goes through here, so it stays alive while the test waits on
        it (tests that are not about deaths also run the broker with a long
        --dead-ms, for the waits on other sockets)."""
        if time.monotonic() - self.last_sent >= 0.2:
            self.send({"t": "hb", "healthy": True})

    def poll(self, timeout):
        """Poll for input up to timeout s, heartbeating meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            self.heartbeat()
            left = deadline - time.monotonic()
            if self.s.poll(int(max(0.0, min(left, 0.2)) * 1000)):
                return True
            if left <= 0:
                return False

    def expect(self, kind, timeout=10):
        """The next message of type kind within timeout s (others, such as
        the broker's heartbeats, are skipped but do not extend the wait)."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("no %s within %s s" % (kind, timeout))
            frames = self.s.recv_multipart()
            h = unpack(frames[0])
            if h["t"] == kind:
                return h, (frames[1] if len(frames) > 1 else None)

    def hello(self, models, capacity, **kw):
        self.send(dict({"t": "hello", "worker": self.name, "pool": self.pool, "provider": "echo",
                        "models": list(models), "capacity": capacity, "version": "test"}, **kw))

    def sync(self):
        """Returns once the broker handled everything sent before: an unknown
        message type is answered with an error, in order. Returns the reqs
        received meanwhile."""
        self.send({"t": "sync.probe"})
        reqs = []
        deadline = time.monotonic() + 10
        while True:
            if not self.poll(max(0.0, deadline - time.monotonic())):
                raise TimeoutError("no error for the sync probe")
            frames = self.s.recv_multipart()
            h = unpack(frames[0])
            if h["t"] == "req":
                reqs.append((h, frames[1]))
            elif h["t"] == "error" and "sync.probe" in h.get("message", ""):
                return reqs

    def expect_req(self, timeout=10):
        return self.expect("req", timeout)

    def answer(self, req):
        h, payload = req
        self.send({"t": "res", "id": h["id"], "ok": True}, payload)

    def close(self):
        self.s.close()


def status(client):
    client.send({"v": 1, "t": "status"})
    while True:
        h, p = client.recv(timeout=10)
        if h["t"] == "status":
            return p


def t_rehello():
    """A repeated hello from the same routing id (the same process) refreshes
    the worker's registration and resets its credit, but keeps its in-flight
    requests: nothing is requeued, credit never exceeds free capacity."""
    b = broker("--quiet", "--dead-ms", "600000")
    c = Client(b.ready["frontend"])
    w = RawWorker(b.ready["backend"], "rw", capacity=2)
    w.send({"t": "credit", "n": 2})
    c.req("a")
    c.req("b")
    held = [w.expect_req(), w.expect_req()]
    # The worker says hello again (a stale "hello first") and re-grants what
    # it believes free, as if the two requests were still on their way.
    w.hello(["m", "m2"], 2)
    w.send({"t": "credit", "n": 2})
    c.req("c")
    got = w.sync()
    st = status(c)
    me = [x for x in st["workers"] if x["name"] == "rw"][0]
    assert me["in_flight"] == 2 and me["credit"] == 0, me
    assert sorted(me["models"]) == ["m", "m2"], me
    assert not got, "req beyond capacity: %r" % got
    for r in held:
        w.answer(r)
    answers = {}
    for _ in range(2):
        h, _ = c.recv()
        answers[h["id"]] = h
    assert all(h["ok"] and h.get("attempt", 1) == 1 for h in answers.values()), answers
    # Slots free: credit again; "c" and a request for the new model arrive.
    w.send({"t": "credit", "n": 2})
    c.req("d", model="m2")
    reqs = [w.expect_req(), w.expect_req()]
    assert sorted(r[0]["model"] for r in reqs) == ["m", "m2"], reqs
    for r in reqs:
        w.answer(r)
    for _ in range(2):
        h, _ = c.recv()
        assert h["ok"] and h["id"] in ("c", "d") and h.get("attempt", 1) == 1, h
    st = status(c)
    assert st["counters"]["requeued"] == 0, st["counters"]
    w.close()
    assert b.stop() == 0


def t_wildcard():
    """A worker announcing model "*" serves any model (in its pool); a model
    nobody serves still waits, then gets not_found."""
    b = broker("--quiet", "--dead-ms", "600000", "--no-worker-wait-ms", "300")
    c = Client(b.ready["frontend"])
    w = RawWorker(b.ready["backend"], "any", models=["*"], capacity=4, pool="p1")
    c.req("early", model="queued-first")       # lane exists before the worker
    w.send({"t": "credit", "n": 4})
    c.req("x", model="some-model")
    c.req("y", model="other", pool="p1")
    c.req("z", model="nobody", pool="p2")       # no worker in pool p2
    seen = {}
    for _ in range(3):
        h, p = w.expect_req()
        seen[h["model"]] = (h, p)
        w.answer((h, p))
    assert sorted(seen) == ["other", "queued-first", "some-model"], seen
    got = {}
    for _ in range(4):
        h, _ = c.recv()
        got[h["id"]] = h
    assert all(got[i]["ok"] for i in ("early", "x", "y")), got
    assert got["z"]["error"]["code"] == "not_found", got["z"]
    w.close()
    assert b.stop() == 0


def t_unhealthy():
    """A worker whose heartbeat says healthy=false gets no new requests; its
    credit is kept and used once a heartbeat says healthy again."""
    b = broker("--quiet", "--dead-ms", "600000")
    c = Client(b.ready["frontend"])
    w = RawWorker(b.ready["backend"], "sick", capacity=2)
    w.send({"t": "credit", "n": 2})
    w.send({"t": "hb", "healthy": False, "in_flight": 0})
    assert not w.sync()
    c.req("u1")
    c.req("u2")
    st = status(c)
    me = [x for x in st["workers"] if x["name"] == "sick"][0]
    assert me["credit"] == 2 and not me["healthy"], me
    assert sum(q["depth"] for q in st["queues"]) == 2, st["queues"]
    assert not w.sync(), "req to an unhealthy worker"
    w.send({"t": "hb", "healthy": True, "in_flight": 0})
    reqs = [w.expect_req(), w.expect_req()]
    for r in reqs:
        w.answer(r)
    for _ in range(2):
        h, _ = c.recv()
        assert h["ok"], h
    w.close()
    assert b.stop() == 0


def content_of(payload):
    """The client's text in a req payload (the request's own name here)."""
    return unpack(payload)["messages"][0]["content"]


def wait_status(client, what, pred, timeout=30):
    """Poll the broker's status until pred(status) holds."""
    return wait_until(what, lambda: (lambda st: st if pred(st) else None)(status(client)),
                      timeout, 0.05)


# The rules of broker/README.md ("Behaviour") and PROTOCOL.md section 3 for
# requests whose worker dies or leaves. Deaths are a RawWorker that goes
# silent (its socket closed); the broker is told --dead-ms 2000, and the
# workers that stay alive heartbeat in every wait (RawWorker.poll).
DEATH = ("--quiet", "--heartbeat-ms", "200", "--dead-ms", "2000", "--no-worker-wait-ms", "60000")


def t_requeue_front():
    """A dead worker's requests go back to the FRONT of their queue, with
    attempt 2: before requests that were queued while it held them."""
    b = broker(*DEATH)
    c = Client(b.ready["frontend"])
    doomed = RawWorker(b.ready["backend"], "doomed", capacity=2)
    doomed.send({"t": "credit", "n": 2})
    c.req("r1", tenant="team-a")
    c.req("r2")
    got = [doomed.expect_req() for _ in range(2)]
    held = sorted(content_of(p) for _, p in got)
    assert held == ["r1", "r2"], held
    # The declared tenant reaches the worker with its request, and only there.
    tenants = {content_of(p): h.get("tenant") for h, p in got}
    assert tenants == {"r1": "team-a", "r2": None}, tenants
    for i in range(3):
        c.req("q%d" % i)
    # (>= 3: on a machine stalled for --dead-ms the two may be back already)
    wait_status(c, "three queued", lambda st: st["counters"]["queued"] >= 3)
    doomed.close()          # silent from now on: dead after --dead-ms
    wait_status(c, "the dead worker's two requests requeued",
                lambda st: st["counters"]["requeued"] == 2)
    heir = RawWorker(b.ready["backend"], "heir", capacity=1)
    order = []
    for _ in range(5):
        heir.send({"t": "credit", "n": 1})
        h, payload = heir.expect_req()
        order.append((content_of(payload), h.get("attempt", 1)))
        heir.answer((h, payload))
    print("dispatch order after the death:", order)
    assert sorted(order[:2]) == [("r1", 2), ("r2", 2)], order
    assert order[2:] == [("q0", 1), ("q1", 1), ("q2", 1)], order
    got = {}
    for _ in range(5):
        h, _ = c.recv()
        got[h["id"]] = h
    assert all(h["ok"] and h["worker"] == "heir" for h in got.values()), got
    assert got["r1"]["attempt"] == 2 and got["q0"].get("attempt", 1) == 1, got
    st = status(c)
    assert st["counters"]["requeued"] == 2, st["counters"]
    heir.close()
    assert b.stop() == 0


def t_death_count():
    """Worker deaths are counted apart from max_attempts (PROTOCOL.md 3.3):
    a request with max_attempts 1 whose worker dies is still requeued and
    answered; a request that every worker dies holding (a worker with at
    most 2 in flight: each death adds 3) is abandoned at a death count of
    16, on its 6th death, as `internal`, not retryable, "suspected poison"."""
    b = broker(*DEATH)
    c = Client(b.ready["frontend"])
    c.req("innocent", max_attempts=1)
    w = RawWorker(b.ready["backend"], "victim0", capacity=1)
    w.send({"t": "credit", "n": 1})
    h, _ = w.expect_req(timeout=20)
    w.close()
    heir = RawWorker(b.ready["backend"], "heir", capacity=1)
    heir.send({"t": "credit", "n": 1})
    h, payload = heir.expect_req(timeout=20)
    assert content_of(payload) == "innocent" and h.get("attempt") == 2, h
    heir.answer((h, payload))
    h, _ = c.recv(timeout=20)
    assert h["id"] == "innocent" and h["ok"] and h["attempt"] == 2, h
    heir.close()
    c.req("poison")
    for death in range(1, 7):
        w = RawWorker(b.ready["backend"], "victim%d" % death, capacity=1)
        w.send({"t": "credit", "n": 1})
        h, payload = w.expect_req(timeout=20)
        assert content_of(payload) == "poison" and h.get("attempt") == death, (death, h)
        w.close()
    h, _ = c.recv(timeout=20)
    print("after six deaths:", h)
    assert h["id"] == "poison" and not h["ok"], h
    assert h["error"]["code"] == "internal" and not h["error"]["retryable"], h
    assert "suspected poison request" in h["error"]["message"], h
    assert "death count 18 of 16" in h["error"]["message"], h
    st = status(c)
    assert st["counters"]["requeued"] == 1 + 5, st["counters"]
    assert sum(q["depth"] for q in st["queues"]) == 0, st["queues"]
    assert b.stop() == 0


def t_backstop():
    """A request still at a worker 5 s after its deadline is answered
    deadline_exceeded by the broker, which sends the worker a cancel."""
    b = broker("--quiet", "--dead-ms", "600000")
    c = Client(b.ready["frontend"])
    w = RawWorker(b.ready["backend"], "holder", capacity=1)
    w.send({"t": "credit", "n": 1})
    t0 = time.monotonic()
    # (1.5 s: long enough to reach the worker even on a stalled machine)
    c.req("late", deadline_ms=1500)
    h, _ = w.expect_req()
    bid = h["id"]
    assert 0 < h.get("deadline_ms", 0) <= 1500, h
    # The worker never answers; the broker's backstop answers the client
    # (the worker heartbeats meanwhile, in w.expect below).
    cancel, _ = w.expect("cancel", timeout=30)
    assert cancel["id"] == bid, cancel
    h, _ = c.recv(timeout=10)
    elapsed = time.monotonic() - t0
    print("backstop answered after %.1f s: %r" % (elapsed, h))
    assert h["id"] == "late" and not h["ok"], h
    assert h["error"]["code"] == "deadline_exceeded", h
    assert elapsed >= 1.5 + 5.0 - 0.1, elapsed     # deadline + the broker's grace
    # Its late answer is dropped; the slot is free again.
    w.answer((h | {"id": bid}, pack({"late": True})))
    w.send({"t": "credit", "n": 1})
    c.req("next")
    h, payload = w.expect_req()
    w.answer((h, payload))
    h, _ = c.recv()
    assert h["id"] == "next" and h["ok"], h
    st = status(c)
    assert st["counters"]["expired"] == 1, st["counters"]
    w.close()
    assert b.stop() == 0


def t_rehello_held():
    """A worker that says hello again (it found the broker silent and
    reconnected: its old connection and any `res` queued on it are gone)
    and names in `held` a request the broker still counts in flight at it
    gets that request again, with a new broker id and `resend`, and its
    answer under the new id reaches the client; the old id is stale."""
    b = broker("--quiet", "--dead-ms", "600000")
    c = Client(b.ready["frontend"])
    w = RawWorker(b.ready["backend"], "rejoiner", capacity=2)
    w.send({"t": "credit", "n": 1})
    c.req("lost")
    h1, p1 = w.expect_req()
    assert h1.get("rkey"), h1
    # The `res` the worker sent died with its old connection: it says hello
    # again, marked as after a reconnect, and reports what it holds (the
    # broker resends at the hello).
    w.hello(("m",), 2, resend=True)
    w.send({"t": "held", "count": 1}, pack([h1["rkey"]]))
    c.req("never")   # queued: the worker granted no credit since its hello
    h2, p2 = w.expect_req()
    assert h2["id"] != h1["id"] and h2.get("resend") and h2["rkey"] == h1["rkey"], (h1, h2)
    assert content_of(p2) == "lost", p2
    w.send({"t": "res", "id": h1["id"], "ok": True}, p1)   # stale: dropped
    w.answer((h2, p2))
    h, _ = c.recv()
    assert h["id"] == "lost" and h["ok"], h
    st = status(c)
    me = [x for x in st["workers"] if x["name"] == "rejoiner"]
    assert me and me[0]["in_flight"] == 0, st["workers"]
    assert not w.sync(), "a req sent once more, or without credit"
    # A req the worker never got (lost on the old connection) comes again
    # too: the worker runs it.
    w.send({"t": "credit", "n": 1})
    h3, p3 = w.expect_req()
    assert content_of(p3) == "never", p3
    w.hello(("m",), 2, resend=True)
    h4, p4 = w.expect_req()
    assert h4.get("resend") and h4["rkey"] == h3["rkey"] and h4["id"] != h3["id"], (h3, h4)
    w.answer((h4, p4))
    h, _ = c.recv()
    assert h["id"] == "never" and h["ok"], h
    assert not c.s.poll(300), "a second answer for one request"
    w.close()
    assert b.stop() == 0


def t_bye_inflight():
    """`bye` with requests in flight: the worker gets nothing new, its
    answers still reach the clients (attempt 1, nothing requeued), then the
    broker forgets it."""
    b = broker("--quiet", "--dead-ms", "600000", "--no-worker-wait-ms", "60000")
    c = Client(b.ready["frontend"])
    leaver = RawWorker(b.ready["backend"], "leaver", capacity=3)
    leaver.send({"t": "credit", "n": 3})
    c.req("i1")
    c.req("i2")
    held = [leaver.expect_req(), leaver.expect_req()]
    leaver.send({"t": "bye"})
    # The bye and the client's request travel on different connections:
    # the broker must have handled the bye before n1 exists, and n1 (then
    # the status, on the same connection) before we look for a req.
    assert not leaver.sync(), "a req before the bye"
    c.req("n1")
    st = status(c)
    assert not leaver.sync(), "a req for a worker that said bye"
    me = [x for x in st["workers"] if x["name"] == "leaver"]
    assert me and me[0]["in_flight"] == 2, st["workers"]
    for r in held:
        leaver.answer(r)
    got = {}
    for _ in range(2):
        h, _ = c.recv()
        got[h["id"]] = h
    assert sorted(got) == ["i1", "i2"], got
    assert all(h["ok"] and h["worker"] == "leaver" and h.get("attempt", 1) == 1
               for h in got.values()), got
    wait_status(c, "the leaver forgotten",
                lambda st: not [x for x in st["workers"] if x["name"] == "leaver"])
    assert status(c)["counters"]["requeued"] == 0
    stayer = RawWorker(b.ready["backend"], "stayer", capacity=1)
    stayer.send({"t": "credit", "n": 1})
    h, payload = stayer.expect_req()
    assert content_of(payload) == "n1", h
    stayer.answer((h, payload))
    h, _ = c.recv()
    assert h["id"] == "n1" and h["ok"] and h["worker"] == "stayer", h
    leaver.close()
    stayer.close()
    assert b.stop() == 0


def t_cancel():
    """cancel answers a queued or dispatched request `cancelled`."""
    b = broker("--quiet")
    w = fake_worker(b.ready["backend"], "w", capacity=1, delay_ms=3000)
    c = Client(b.ready["frontend"])
    c.req("busy")       # dispatched, held 3 s
    c.req("queued")     # waits
    c.send({"v": 1, "t": "ping"})
    h, _ = c.recv()
    assert h["t"] == "pong"
    c.send({"v": 1, "t": "cancel", "id": "queued"})
    c.send({"v": 1, "t": "cancel", "id": "busy"})
    c.send({"v": 1, "t": "cancel", "id": "unknown"})
    got = {}
    for _ in range(2):
        h, _ = c.recv(timeout=5)
        got[h["id"]] = h
    assert got["queued"]["error"]["code"] == "cancelled"
    assert got["busy"]["error"]["code"] == "cancelled"
    # The worker got the cancel and its slot back: a new request is served.
    c.req("after")
    w.stop()
    w = fake_worker(b.ready["backend"], "w2", capacity=1, delay_ms=0)
    # (If "after" went to the first worker before it was stopped, it comes
    # back once that worker is declared dead: 3 s of silence.)
    h, _ = c.recv(timeout=30)
    assert h["id"] == "after" and h["ok"], h
    w.stop()
    assert b.stop() == 0


def t_stream():
    """A streamed request: chunks come through in order, then one res."""
    b = broker("--quiet")
    w = fake_worker(b.ready["backend"], "w", capacity=4, delay_ms=10)
    c = Client(b.ready["frontend"])
    c.req("s1", stream=True, meta={"row": 7})
    c.req("plain")
    got = []
    while len([g for g in got if g[0]["t"] == "res"]) < 2:
        got.append(c.recv(timeout=10))
    s1 = [(h["t"], h.get("seq"), p) for h, p in got if h["id"] == "s1"]
    print("stream:", s1)
    assert [x[:2] for x in s1] == [("chunk", 0), ("chunk", 1), ("chunk", 2), ("res", None)], s1
    res = [h for h, p in got if h["id"] == "s1" and h["t"] == "res"][0]
    assert res["ok"] and res["meta"] == {"row": 7} and res["worker"] == "w", res
    assert not [h for h, p in got if h["id"] == "plain" and h["t"] == "chunk"]
    w.stop()
    assert b.stop() == 0


def t_overload():
    """Past --max-queue, requests are answered overloaded (retryable)."""
    b = broker("--quiet", "--max-queue", "10", "--no-worker-wait-ms", "60000", "--drain-ms", "200")
    c = Client(b.ready["frontend"])
    for i in range(25):
        c.req("o%d" % i, model="nobody")
    over = []
    for _ in range(15):
        h, _ = c.recv(timeout=5)
        over.append(h)
    assert all(h["error"]["code"] == "overloaded" and h["error"]["retryable"] for h in over)
    assert sorted(int(h["id"][1:]) for h in over) == list(range(10, 25))
    assert b.stop() == 0


def t_malformed():
    """Garbage from one client disturbs neither the broker nor another client."""
    b = broker("--quiet")
    w = fake_worker(b.ready["backend"], "w", capacity=32)
    bad = Client(b.ready["frontend"], "bad-client")
    good = Client(b.ready["frontend"], "good-client")
    garbage = [b"", b"\xc1", b"\x93\x01\x02", pack({"v": 2, "t": "req"}), pack({"t": "req"}),
               pack({"v": 1, "t": "req", "id": "x", "op": "chat"}),
               pack({"v": 1, "t": "req", "id": 5, "op": "chat", "model": "m"}),
               pack({"v": 1, "t": "nope"}), pack([1, 2, 3]), b"\xdf\xff\xff\xff\xff",
               pack({"v": 1, "t": "ping"}) + b"trailing", os.urandom(2000)]
    for i in range(3000):
        bad.s.send(garbage[i % len(garbage)])
    # Garbage on the worker side too: from a stranger, and from a peer that
    # said hello and then misbehaves (results for ids it never got, huge
    # credit, messages only clients send).
    rogue = Client(b.ready["backend"], "rogue-worker")
    for i in range(500):
        rogue.s.send(garbage[i % len(garbage)])
    rogue.send({"v": 1, "t": "hello", "worker": "rogue", "pool": "p", "provider": "echo",
                "models": ["other"], "capacity": 1})
    rogue.send({"v": 1, "t": "credit", "n": 10 ** 12})
    rogue.send({"v": 1, "t": "res", "id": "r1", "ok": True}, {"x": 1})
    rogue.send({"v": 1, "t": "res", "id": "r99999999999", "ok": True}, {"x": 1})
    rogue.send({"v": 1, "t": "chunk", "id": "rzz", "seq": 1}, {"x": 1})
    rogue.send({"v": 1, "t": "req", "id": "x", "op": "chat", "model": "m"}, {"x": 1})
    rogue.send({"v": 1, "t": "job.status", "job": "j", "state": "completed"})
    bad.s.send_multipart([pack({"v": 1, "t": "ping"}), b"x", b"y"])
    # Over ZMQ_MAXMSGSIZE (64 MiB): the broker's socket drops that peer.
    huge = Client(b.ready["frontend"], "huge-client")
    huge.s.send_multipart([pack({"v": 1, "t": "req", "id": "h", "op": "chat", "model": "m"}),
                           b"\x00" * (65 * 1024 * 1024)])
    answers = run_load(good, 300, 16)
    assert len(answers) == 300 and all(h["ok"] for h in answers.values())
    errors = 0
    while True:
        try:
            h, _ = bad.recv(timeout=3)
        except TimeoutError:
            break
        assert h["t"] == "error" and h["code"] == "bad_message", h
        errors += 1
    print("bad_message replies:", errors)
    assert errors >= 3000
    good.send({"v": 1, "t": "ping"})
    assert good.recv()[0]["t"] == "pong"
    try:
        h, _ = huge.recv(timeout=0.5)
        raise AssertionError("the oversized request was answered: %r" % h)
    except TimeoutError:
        pass
    w.stop()
    assert b.stop() == 0


def t_metrics():
    """The metrics endpoint passes promtool check metrics."""
    promtool = "/usr/bin/promtool"
    if not os.access(promtool, os.X_OK):
        skip("promtool not installed (Debian package prometheus; scripts/setup.sh)")
    b = broker("--quiet", "--metrics", "127.0.0.1:0", "--no-worker-wait-ms", "100")
    assert "metrics" in b.ready, b.ready
    w = fake_worker(b.ready["backend"], "w", capacity=8)
    c = Client(b.ready["frontend"])
    run_load(c, 50, 8)
    c.s.send(b"\xc1")          # a malformed message: a dropped_total series
    h, _ = c.recv()
    assert h["t"] == "error" and h["code"] == "bad_message", h
    c.req("nf", model='we"ird\\model\n')
    h, _ = c.recv()
    assert h["error"]["code"] == "not_found"
    text = urllib.request.urlopen(b.ready["metrics"] + "/metrics", timeout=5).read().decode()
    print(text[:600])
    for family in ("llmq_broker_requests_total", "llmq_broker_request_latency_seconds_bucket",
                   "llmq_broker_queue_depth", "llmq_broker_workers", "llmq_broker_in_flight",
                   "llmq_broker_requeues_total", "llmq_broker_dropped_total"):
        assert family in text, family
    assert 'llmq_broker_dropped_total{reason="bad_message"} 1' in text
    assert 'llmq_broker_requests_total{model="m",outcome="ok"} 50' in text
    r = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                       capture_output=True)
    print("promtool:", r.returncode, r.stdout, r.stderr)
    assert r.returncode == 0, r.stderr
    w.stop()
    assert b.stop() == 0


def t_sigterm():
    """SIGTERM: new requests overloaded, in-flight work finishes, exit 0."""
    b = broker("--drain-ms", "10000")
    w = fake_worker(b.ready["backend"], "w", capacity=4, delay_ms=1500)
    c = Client(b.ready["frontend"])
    for i in range(4):
        c.req("inflight%d" % i)
    c.send({"v": 1, "t": "status"})
    while True:         # wait until all four are at the worker
        h, p = c.recv()
        if p["counters"]["in_flight"] == 4:
            break
        c.send({"v": 1, "t": "status"})
    b.p.send_signal(signal.SIGTERM)
    # The broker is draining once it refuses new work. Until it has seen the
    # signal a new request may still be queued: every answer is kept.
    got = {}
    refused = None
    n = 0
    while refused is None or len([k for k in got if k.startswith("inflight")]) < 4:
        if refused is None:
            c.req("new%d" % n)
            n += 1
        h, _ = c.recv(timeout=10)
        got[h["id"]] = h
        if h["id"].startswith("new") and not h["ok"]:
            assert h["error"]["code"] == "overloaded", h
            assert "shutting down" in h["error"]["message"], h
            refused = h
    assert all(got["inflight%d" % i]["ok"] for i in range(4)), got
    assert b.p.wait(15) == 0
    w.stop()


def t_real_echo():
    """Real llmq-worker processes with the echo provider."""
    if not have("llmq-worker"):
        skip("llmq-worker not built")
    b = broker("--quiet", "--heartbeat-ms", "200", "--dead-ms", "1500")
    ws = [Proc([os.path.join(BIN, "llmq-worker"), "--broker", b.ready["backend"],
                "--provider", "echo", "--model", "m", "--capacity", str(cap),
                "--name", "echo%d" % cap], "llmq-worker") for cap in (4, 16)]
    c = Client(b.ready["frontend"])
    killed = []

    def on_answer(n):
        if n == 1000 and not killed:
            ws[0].kill9()
            killed.append(True)
    answers = run_load(c, 3000, 64, on_answer=on_answer, timeout=90)
    counts = count_by_worker(answers)
    print("real echo:", counts)
    assert len(answers) == 3000 and all(h["ok"] for h in answers.values())
    assert counts.get("echo16", 0) > counts.get("echo4", 0) > 0, counts
    joined = Proc([os.path.join(BIN, "llmq-worker"), "--broker", b.ready["backend"],
                   "--provider", "echo", "--model", "m", "--capacity", "8",
                   "--name", "late"], "llmq-worker")
    answers = run_load(c, 1000, 64, prefix="z")
    counts = count_by_worker(answers)
    print("after join:", counts)
    assert counts.get("late", 0) > 0, counts
    ws[1].stop()
    joined.stop()
    assert b.stop() == 0


def t_real_sim():
    """Real llmq-workers against llmq-sim over HTTP: load follows capacity,
    and a kill -9 mid-run loses nothing (each request answered once)."""
    if not (have("llmq-worker") and have("llmq-sim")):
        skip("llmq-worker or llmq-sim not built")
    sim = llmqtest.Sim("--latency-ms", "40")
    b = broker("--quiet", "--heartbeat-ms", "200", "--dead-ms", "1500")

    def worker(name, cap):
        return llmqtest.Worker(b.ready["backend"], sim.url, cap, "sim-model", "--name", name)
    ws = [worker("s4", 4), worker("s12", 12), worker("victim", 8)]
    c = Client(b.ready["frontend"])
    killed = []

    def on_answer(n):
        if n == 300 and not killed:
            ws[2].kill9()
            killed.append(True)
    answers = run_load(c, 1200, 48, model="sim-model", timeout=100, on_answer=on_answer)
    counts = count_by_worker(answers)
    bad = [h for h in answers.values() if not h["ok"]]
    stats = json.loads(urllib.request.urlopen(sim.url + "/_stats", timeout=5).read())
    print("real sim:", counts, "errors", len(bad), "double_billed", stats.get("double_billed"))
    assert not bad, bad[:3]
    assert counts.get("s12", 0) > counts.get("s4", 0) > 0, counts
    # At least once: only a requeued request can be billed twice, and the
    # sim answered every request at most once more than the clients saw.
    requeued = [h for h in answers.values() if h.get("attempt", 1) > 1]
    st = status(c)
    extra = sum(h.get("attempt", 1) - 1 for h in answers.values())
    assert st["counters"]["requeued"] == extra, (st["counters"], extra)
    assert stats["double_billed"] <= len(requeued), (stats, len(requeued))
    assert stats["answered_ok"] == len(answers) + stats["double_billed"], stats
    try:
        h, _ = c.recv(timeout=1.0)
        raise AssertionError("extra message %r" % h)
    except TimeoutError:
        pass
    for w in ws[:2]:
        w.stop()
    assert b.stop() == 0
    sim.stop()


def t_limit_group():
    """Two real workers in one limit group share llmq-sim's --rpm: no 429,
    and n requests take at least (n - the members' bursts) / rate."""
    if not (have("llmq-worker") and have("llmq-sim")):
        skip("llmq-worker or llmq-sim not built")
    rpm, n = 600, 50
    sim = llmqtest.Sim("--rpm", str(rpm))
    b = broker("--quiet")
    ws = [llmqtest.Worker(b.ready["backend"], sim.url, 8, "sim-model", "--name", "g%d" % i,
                          "--limit-group", "key1", "--rpm", str(rpm))
          for i in range(2)]
    c = Client(b.ready["frontend"])
    # Both workers joined and each got half of the key's rpm from the broker.
    shares = wait_status(c, "both shares", lambda st: [
        w.get("limits", {}).get("rpm") for w in st["workers"]] == [rpm // 2, rpm // 2])
    shares = [w["limits"]["rpm"] for w in shares["workers"]]
    # Each member's bucket holds 1 s of its share (--burst-ms 1000): 5 + 5
    # at once, then 10 a second together. Without the group's shares (or
    # without the limiter) the 50 take far less than the bound.
    bursts = 2 * (rpm // 2) / 60.0
    bound = (n - bursts) / (rpm / 60.0)
    t0 = time.monotonic()
    answers = run_load(c, n, n, model="sim-model", timeout=100)
    elapsed = time.monotonic() - t0
    ok = sum(1 for h in answers.values() if h["ok"])
    stats = json.loads(urllib.request.urlopen(sim.url + "/_stats", timeout=5).read())
    print("limit group: shares", shares, "ok", ok, "in %.2f s (lower bound %.2f s)" % (elapsed, bound),
          "sim stats", {k: stats.get(k) for k in ("rate_limited_429", "double_billed")})
    assert stats.get("rate_limited_429", 0) == 0, stats
    assert ok == n, [h for h in answers.values() if not h["ok"]][:3]
    assert elapsed >= bound - 0.05, "not limited: %.2f s < %.2f s" % (elapsed, bound)
    for w in ws:
        w.stop()
    assert b.stop() == 0
    sim.stop()


def t_json_logs():
    """--json-logs: every stderr line is one JSON object with ts, level,
    component and event, counts as JSON numbers (worker_join's capacity,
    overload_start's queued, drain_start's and drained's counts). A worker
    name with a newline and a terminal escape stays inside its one line,
    escaped, in JSON and text logs alike (include/llmq_log.h)."""
    evil = "evil\nname\x1b[2J"
    for as_json in (True, False):
        b = broker("--max-queue", "2", "--no-worker-wait-ms", "60000", "--drain-ms", "200",
                   *(["--json-logs"] if as_json else []))
        w = RawWorker(b.ready["backend"], evil, models=("m",), capacity=3)
        w.sync()
        c = Client(b.ready["frontend"])
        for i in range(3):              # nobody serves "x": the third is refused
            c.req("j%d" % i, model="x")
        h, _ = c.recv(timeout=10)
        assert h["id"] == "j2" and h["error"]["code"] == "overloaded", h
        b.send_signal(signal.SIGTERM)
        assert b.wait(30) == 0
        text = b.stderr()
        b.check_exit(0)
        w.close()
        c.close()
        assert "\x1b" not in text, "a raw ESC in the log: %r" % text
        lines = [ln for ln in text.split("\n") if ln.strip()]
        if not as_json:
            join = [ln for ln in lines if " worker_join " in ln]
            assert len(join) == 1 and 'worker="evil\\nname\\x1b[2J"' in join[0] \
                and " capacity=3 " in join[0], lines
            assert any(" info llmq-broker start " in ln for ln in lines), lines
            continue
        events = {}
        for ln in lines:
            o = json.loads(ln)              # every line is JSON
            assert isinstance(o, dict) and o["component"] == "llmq-broker", ln
            assert o["level"] in ("debug", "info", "warn", "error"), ln
            assert o["ts"].endswith("Z") and isinstance(o["event"], str), ln
            events.setdefault(o["event"], []).append(o)
        assert set(events) >= {"start", "worker_join", "overload_start", "drain_start",
                               "drained"}, sorted(events)
        j = events["worker_join"][0]
        assert j["worker"] == evil and j["capacity"] == 3 and j["models"] == "m", j
        assert events["overload_start"][0]["queued"] == 2, events["overload_start"]
        assert events["drain_start"][0]["pending"] == 2, events["drain_start"]
        d = events["drained"][0]
        assert d["answered_overloaded"] == 2 and d["left_at_workers"] == 0, d
        print("json logs: " + json.dumps(j))


CASES = {
    "spread": t_spread, "kill9": t_kill9, "join": t_join,
    "priority_deadline": t_priority_deadline, "cancel": t_cancel,
    "rehello": t_rehello, "wildcard": t_wildcard, "unhealthy": t_unhealthy,
    "overload": t_overload, "stream": t_stream, "malformed": t_malformed, "metrics": t_metrics,
    "requeue_front": t_requeue_front, "death_count": t_death_count, "backstop": t_backstop,
    "bye_inflight": t_bye_inflight, "rehello_held": t_rehello_held, "json_logs": t_json_logs,
    "sigterm": t_sigterm, "real_echo": t_real_echo, "real_sim": t_real_sim, "limit_group": t_limit_group,
}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        return worker_main(sys.argv[2:])
    if len(sys.argv) != 3 or sys.argv[1] != "test" or sys.argv[2] not in CASES:
        print("usage: broker_it.py test {%s} | worker ..." % ",".join(CASES))
        return 2
    # Children die with us whatever happens.
    os.setpgrp()
    ok = False
    try:
        CASES[sys.argv[2]]()
        # Every process still running stops on SIGTERM with exit 0 and a
        # log free of sanitizer reports.
        llmqtest.finish()
        ok = True
    finally:
        if not ok:
            llmqtest._stop_all_quietly()
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            os.killpg(0, signal.SIGTERM)
    print("PASS", sys.argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
