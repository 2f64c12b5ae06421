#!/usr/bin/python3
"""test_routes.py - routes on the broker (PROTOCOL.md 3.6), real processes.

    test_routes.py CASE

Cases:
  kill      a chain falls over when the first model's only worker is
            killed (SIGKILL): requests after the kill are answered by the
            next model, and the res `model` says so
  breaker   a chain falls over when the first model's breaker opens (its
            worker's llmq-sim fails every request): once the worker says
            unhealthy, requests go straight to the next model (attempt 1)
            and the sim sees no more of them
  error     a retryable error answer (after the worker's retries) moves the
            request to the next model; a non-retryable one is the answer
  weights   a 70/30 alias over two pools splits 10,000 requests within 3
            points (echo workers; counted by the res `worker`)
  reload    SIGHUP with new weights: they take effect; a changed file is
            read without a signal; a bad file keeps the old table (logged
            once); a bad file at start is exit 2;
            examples/routes.yaml loads (LLMQ_ROUTES)

llmq-broker, llmq-worker (echo and sim providers) and llmq-sim as they are
built; a raw DEALER client (pyzmq + msgpack), so every res header field is
seen as sent. Waits are polls with deadlines, never sleeps.
"""
import os
import signal
import sys
import time

import msgpack
import zmq

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import llmqtest  # noqa: E402
from llmqtest import check, fail, wait_until  # noqa: E402


# ---------------------------------------------------------------- processes

def broker(routes, *flags):
    return llmqtest.Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "--routes", routes,
                           "--batch-db", "none", *flags)


M1_TO_M2 = "routes:\n  - name: m1\n    fallback: [m2]\n"


def routed_broker(tmp, text, *flags):
    """A broker whose routes file (tmp/routes.yaml) holds text."""
    routes = os.path.join(tmp, "routes.yaml")
    write(routes, text)
    return broker(routes, *flags)


def echo_worker(backend, name, model, pool, capacity=64):
    argv = [llmqtest.bin_path("llmq-worker"), "--broker", backend, "--provider", "echo",
            "--name", name, "--pool", pool, "--capacity", str(capacity)]
    if model:
        argv += ["--model", model]
    return llmqtest.Proc(argv, name="llmq-worker " + name)


def sim_worker(backend, sim, name, model, *flags):
    return llmqtest.Worker(backend, sim.url, 16, model, "--name", name, "--pool", name,
                           *flags, name="llmq-worker " + name)


def write(path, text):
    """Replace path's content at once (rename), as an editor or a deploy
    tool would: the broker never reads half a file."""
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def rewrite_unseen(path, text):
    """Rewrite path in place with text of the same size and put its
    modification time back: a file watcher cannot tell it changed."""
    st = os.stat(path)
    with open(path, "r+") as f:
        check(len(text) == st.st_size, "rewrite_unseen: sizes differ")
        f.write(text)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def status(b):
    s = llmqtest.broker_status(b.frontend)
    check(s is not None, "no status from the broker")
    return s


def wait_workers(b, names):
    def ready():
        s = llmqtest.broker_status(b.frontend)
        live = {w["name"] for w in (s or {}).get("workers", []) if w.get("healthy", True)}
        return set(names) <= live
    wait_until("workers %s at the broker" % sorted(names), ready, 30)


# ---------------------------------------------------------------- client

class Client:
    """A DEALER that sends requests and returns their res headers."""

    def __init__(self, endpoint):
        self.s = zmq.Context.instance().socket(zmq.DEALER)
        self.s.setsockopt(zmq.LINGER, 0)
        self.s.connect(endpoint)
        self.n = 0

    def run(self, model, count, content="hello", window=400, timeout=120.0, **fields):
        """Send count requests for model, at most window outstanding;
        return their res headers in send order."""
        body = msgpack.packb({"messages": [{"role": "user", "content": content}],
                              "max_tokens": 8})
        ids, got = [], {}
        sent = 0
        deadline = time.monotonic() + timeout
        while len(got) < count:
            while sent < count and sent - len(got) < window:
                self.n += 1
                rid = "r%d" % self.n
                header = {"v": 1, "t": "req", "id": rid, "op": "chat", "model": model}
                header.update(fields)
                self.s.send_multipart([msgpack.packb(header), body])
                ids.append(rid)
                sent += 1
            if time.monotonic() > deadline:
                fail("%d of %d answers for %s" % (len(got), count, model))
            if self.s.poll(200):
                frames = self.s.recv_multipart()
                h = msgpack.unpackb(frames[0], raw=False)
                if h.get("t") == "res" and h.get("id") in ids:
                    got[h["id"]] = h
        return [got[i] for i in ids]

    def close(self):
        self.s.close()


def metric(b, series):
    """The value of one series on the broker's /metrics (0 if absent)."""
    import urllib.request
    with urllib.request.urlopen(b.ready["metrics"], timeout=10) as r:
        text = r.read().decode()
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0


def by(results, key):
    counts = {}
    for h in results:
        counts[h.get(key)] = counts.get(h.get(key), 0) + 1
    return counts


def all_ok(results, what):
    bad = [h for h in results if not h.get("ok")]
    check(not bad, "%s: %d failed, first: %r" % (what, len(bad), bad[:1]))


# ---------------------------------------------------------------- cases

def case_kill(tmp):
    b = routed_broker(tmp, M1_TO_M2, "--metrics", "127.0.0.1:0")
    w1 = echo_worker(b.backend, "w1", "m1", "p1")
    echo_worker(b.backend, "w2", "m2", "p2")
    wait_workers(b, ["w1", "w2"])
    c = Client(b.frontend)
    before = c.run("m1", 50)
    all_ok(before, "before the kill")
    check(by(before, "worker") == {"w1": 50}, "before the kill: %r" % by(before, "worker"))
    check(all("model" not in h for h in before), "model set though m1 answered")
    w1.kill9()
    after = c.run("m1", 50, timeout=60)
    all_ok(after, "after the kill")
    check(by(after, "worker") == {"w2": 50}, "after the kill: %r" % by(after, "worker"))
    check(by(after, "model") == {"m2": 50}, "res model after the kill: %r" % by(after, "model"))
    s = status(b)
    check(s["counters"].get("routes") == 1, "status routes: %r" % s["counters"])
    check(s["counters"].get("fallbacks", 0) >= 50, "status fallbacks: %r" % s["counters"])
    moved = metric(b, 'llmq_broker_fallbacks_total{route="m1",reason="no_worker"}')
    check(moved >= 50, "llmq_broker_fallbacks_total: %r" % moved)
    c.close()


def chats(sim):
    """Chat requests llmq-sim received, whatever it answered."""
    return sum(sim.stats()["requests"].get("/v1/chat/completions", {}).values())


def case_breaker(tmp):
    sim = llmqtest.Sim("--p500", "1")   # every generation request: 500
    b = routed_broker(tmp, M1_TO_M2)
    sim_worker(b.backend, sim, "w1", "m1", "--max-attempts", "1", "--breaker-failures", "3",
               "--breaker-cooldown-ms", "600000")
    echo_worker(b.backend, "w2", "m2", "p2")
    wait_workers(b, ["w1", "w2"])
    c = Client(b.frontend)
    # Until the breaker opens, each request fails at w1 first (retryable),
    # then moves on: the client still gets an answer from m2.
    first = []
    for _ in range(10):
        first += c.run("m1", 1)
        w1 = [w for w in status(b)["workers"] if w["name"] == "w1"]
        if w1 and not w1[0]["healthy"]:
            break
    print("before the breaker opened: %d requests, attempts %r"
          % (len(first), by(first, "attempt")))
    all_ok(first, "while the breaker opens")
    check(by(first, "model") == {"m2": len(first)}, "before: %r" % by(first, "model"))
    wait_until("w1 unhealthy at the broker",
               lambda: any(w["name"] == "w1" and not w["healthy"]
                           for w in status(b)["workers"]), 30)
    seen = chats(sim)
    print("the sim saw %d chat requests before" % seen)
    after = c.run("m1", 40, timeout=30)
    all_ok(after, "with the breaker open")
    check(by(after, "worker") == {"w2": 40}, "breaker open: %r" % by(after, "worker"))
    check(by(after, "model") == {"m2": 40}, "res model: %r" % by(after, "model"))
    check(by(after, "attempt") == {1: 40},
          "breaker open: requests went to w1 first: %r" % by(after, "attempt"))
    check(chats(sim) == seen, "the sim got %d requests with the breaker open"
          % (chats(sim) - seen))
    c.close()


def case_error(tmp):
    sim = llmqtest.Sim()
    b = routed_broker(tmp, M1_TO_M2)
    sim_worker(b.backend, sim, "w1", "m1", "--max-attempts", "2", "--retry-base-ms", "10",
               "--breaker-failures", "1000")
    echo_worker(b.backend, "w2", "m2", "p2")
    wait_workers(b, ["w1", "w2"])
    c = Client(b.frontend)
    ok = c.run("m1", 5)
    all_ok(ok, "plain")
    check(by(ok, "worker") == {"w1": 5}, "plain: %r" % by(ok, "worker"))
    moved = c.run("m1", 5, content="[[sim:fail=503]] please")
    all_ok(moved, "after a retryable error")
    check(by(moved, "model") == {"m2": 5}, "after 503: %r" % by(moved, "model"))
    check(by(moved, "attempt") == {2: 5}, "after 503: attempt %r" % by(moved, "attempt"))
    final = c.run("m1", 3, content="[[sim:fail=400]] please")
    check(all(not h["ok"] and h["error"]["code"] == "invalid_request" for h in final),
          "a non-retryable error must be the answer: %r" % final[:1])
    check(all("model" not in h for h in final), "model set on m1's own error")
    c.close()


ROUTES_7030 = """# a 70/30 alias over two pools
routes:
  - name: gpt-x
    targets:
      - {model: gpt-x, pool: pa, weight: %d}
      - {model: gpt-x, pool: pb, weight: %d}
"""


def split(c, n):
    results = c.run("gpt-x", n)
    all_ok(results, "weighted")
    counts = by(results, "worker")
    check(set(counts) <= {"wa", "wb"}, "unexpected workers %r" % counts)
    check(all("model" not in h for h in results), "model set though gpt-x answered")
    return counts.get("wa", 0) / n, counts


def case_weights(tmp):
    b = routed_broker(tmp, ROUTES_7030 % (70, 30))
    echo_worker(b.backend, "wa", None, "pa", capacity=256)
    echo_worker(b.backend, "wb", None, "pb", capacity=256)
    wait_workers(b, ["wa", "wb"])
    c = Client(b.frontend)
    share, counts = split(c, 10000)
    print("70/30 over 10,000 requests: %r (pa %.2f%%)" % (counts, share * 100))
    check(abs(share - 0.70) <= 0.03, "70/30 split off by more than 3 points: %r" % counts)
    c.close()


def wait_log(proc, text, after):
    wait_until("'%s' in the broker's log" % text,
               lambda: proc.stderr().count(text) > after, 20)


def case_reload(tmp):
    routes = os.path.join(tmp, "routes.yaml")
    bad = "routes:\n  - name: gpt-x\n    targets: [{model: gpt-x, weight: 0}]\n"
    write(os.path.join(tmp, "bad.yaml"), bad)
    p = llmqtest.Proc([llmqtest.bin_path("llmq-broker"), "--frontend", "tcp://127.0.0.1:*",
                       "--backend", "tcp://127.0.0.1:*", "--batch-db", "none",
                       "--routes", os.path.join(tmp, "bad.yaml")], name="bad broker",
                      ready=False)
    check(p.wait(20) is not None, "a bad routes file at start: still running")
    check("bad.yaml:2: route 'gpt-x'" in p.stderr(), "no file:line reason: %r" % p.stderr())
    p.check_exit(2)
    # The documented example loads (through LLMQ_ROUTES).
    example = os.path.join(llmqtest.SOURCE_DIR, "examples", "routes.yaml")
    e = llmqtest.Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "--batch-db", "none",
                        name="example broker", env=dict(os.environ, LLMQ_ROUTES=example))
    check(status(e)["counters"].get("routes") == 4, "examples/routes.yaml: %r"
          % status(e)["counters"])
    e.stop()

    write(routes, ROUTES_7030 % (70, 30))
    b = broker(routes)
    echo_worker(b.backend, "wa", None, "pa", capacity=256)
    echo_worker(b.backend, "wb", None, "pb", capacity=256)
    wait_workers(b, ["wa", "wb"])
    c = Client(b.frontend)
    share, counts = split(c, 1000)
    check(abs(share - 0.70) <= 0.03, "before the reload: %r" % counts)
    # SIGHUP: the new weights are written in place with the same size and
    # modification time, so only the signal can make the broker see them.
    loaded = b.stderr().count("routes_loaded")
    rewrite_unseen(routes, ROUTES_7030 % (10, 90))
    b.send_signal(signal.SIGHUP)
    wait_log(b, "routes_loaded", loaded)
    share, counts = split(c, 1000)
    check(abs(share - 0.10) <= 0.03, "after SIGHUP, 10/90 expected: %r" % counts)
    # A bad file (a changed file is read again without a signal) is
    # refused once, and the table stays.
    write(routes, bad)
    wait_log(b, "routes_reload_failed", 0)
    check("routes.yaml:2: route 'gpt-x': target 1 (gpt-x): weight 0" in b.stderr(),
          "reload error without file:line: %s" % b.tail())
    share, counts = split(c, 1000)
    check(abs(share - 0.10) <= 0.03, "a bad file must keep 10/90: %r" % counts)
    check(status(b)["counters"].get("routes") == 1, "routes after a bad reload")
    b.send_signal(signal.SIGHUP)   # and SIGHUP says so again
    wait_log(b, "routes_reload_failed", 1)
    # A good file written over it: read within a second, no signal.
    loaded = b.stderr().count("routes_loaded")
    write(routes, ROUTES_7030 % (50, 50))
    wait_log(b, "routes_loaded", loaded)
    share, counts = split(c, 1000)
    check(abs(share - 0.50) <= 0.03, "after the file changed, 50/50 expected: %r" % counts)
    check(b.stderr().count("routes_reload_failed") == 2,
          "a bad file is reported once per reading: %s" % b.tail())
    c.close()


CASES = {"kill": case_kill, "breaker": case_breaker, "error": case_error,
         "weights": case_weights, "reload": case_reload}


def main():
    if len(sys.argv) != 2 or sys.argv[1] not in CASES:
        print("usage: test_routes.py %s" % "|".join(CASES), file=sys.stderr)
        sys.exit(2)
    for binary in ("llmq-broker", "llmq-worker", "llmq-sim"):
        if not llmqtest.have(binary):
            llmqtest.skip("%s is not built" % binary)
    tmp = llmqtest.temp_dir("llmq-routes-")
    CASES[sys.argv[1]](tmp)
    llmqtest.finish()
    print("ok: routes.%s" % sys.argv[1])


if __name__ == "__main__":
    main()
