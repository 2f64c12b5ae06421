#!/usr/bin/python3
"""test_cache.py - the broker's response cache (PROTOCOL.md 3.7) with real
processes: llmq-broker --cache, llmq-worker, llmq-sim (which counts the
answers it served: /_stats answered_ok), or a test-driven worker
(broker_it.RawWorker) where the order of events must be exact.

    test_cache.py flight    100 identical requests at once reach llmq-sim
                            once; all ok, 99 `cached`
    test_cache.py restart   the cache survives a broker kill -9
    test_cache.py ttl       an answer past --cache-ttl is asked again
    test_cache.py bytes     --cache-max-bytes evicts the least recently used
    test_cache.py warm      temperature 0.7 (no flag), `cache` false, a
                            stream: never cached
    test_cache.py fail      the first of a flight fails: retryable -> a
                            waiter is dispatched in its place; cancelled ->
                            the same; invalid_request -> every waiter gets it;
                            a waiter's deadline holds
    test_cache.py foreign   --cache on a file that is not a cache: refused
    test_cache.py tenant    tenants share answers; not with --cache-per-tenant
    test_cache.py cli       `llmq run --cache` twice: the second run asks
                            no provider; without --cache (and temperature
                            unset) lines are not cached
"""
import json
import os
import sys
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import broker_it as bi  # noqa: E402
import llmqtest  # noqa: E402

MODEL = llmqtest.MODEL


def body(text, temperature=None):
    b = {"messages": [{"role": "user", "content": text}], "max_tokens": 8}
    if temperature is not None:
        b["temperature"] = temperature
    return b


class Setup:
    """llmq-sim + llmq-broker --cache FILE + one llmq-worker."""

    def __init__(self, tmp, *broker_flags, latency_ms="5", capacity=200):
        self.tmp = tmp
        self.path = os.path.join(tmp, "cache.db")
        self.flags = ("--quiet", "--batch-db", "none", "--cache", self.path) + broker_flags
        self.sim = llmqtest.Sim("--latency-ms", latency_ms)
        self.capacity = capacity
        self.port_fe, self.port_be = llmqtest.low_port(), llmqtest.low_port()
        self.start()

    def start(self):
        self.broker = llmqtest.Broker("tcp://127.0.0.1:%d" % self.port_fe,
                                      "tcp://127.0.0.1:%d" % self.port_be, *self.flags)
        self.client = bi.Client(self.broker.frontend)
        if not getattr(self, "worker", None):
            self.worker = llmqtest.Worker(self.broker.backend, self.sim.url, self.capacity)
        bi.wait_status(self.client, "a worker", lambda st: len(st["workers"]) == 1)

    def served(self):
        return self.sim.stats()["answered_ok"]

    def counters(self):
        return bi.status(self.client)["counters"]

    def ask(self, rid, b, **kw):
        """One request, its answer (header, payload)."""
        self.client.req(rid, model=MODEL, body=b, **kw)
        while True:
            h, p = self.client.recv(timeout=30)
            if h["t"] == "res" and h["id"] == rid:
                return h, p

    def close(self):
        self.client.close()
        self.worker.stop()
        self.broker.stop()
        self.sim.close()


def t_flight():
    s = Setup(llmqtest.temp_dir("llmq-cache-flight"), "--metrics", "127.0.0.1:0",
              latency_ms="300")
    before = s.served()
    b = body("the same question")
    for i in range(100):
        s.client.req("f%d" % i, model=MODEL, body=b, cache=True)
    answers = {}
    while len(answers) < 100:
        h, p = s.client.recv(timeout=30)
        if h["t"] != "res":
            continue
        assert h["id"] not in answers, "answered twice: %r" % h
        assert h["ok"], h
        assert "choices" in p, p
        answers[h["id"]] = (h, p)
    cached = [h for h, _ in answers.values() if h.get("cached")]
    bodies = {repr(p) for _, p in answers.values()}
    served = s.served() - before
    print("served by llmq-sim: %d, cached: %d, distinct bodies: %d" %
          (served, len(cached), len(bodies)))
    assert served == 1, "llmq-sim served %d, not 1" % served
    assert len(cached) == 99, len(cached)
    assert len(bodies) == 1
    first = [h for h, _ in answers.values() if not h.get("cached")][0]
    assert first.get("worker") and first.get("attempt") == 1, first
    for h in cached:
        assert h.get("attempt") == 0 and "worker" not in h, h
        assert h["usage"]["cost_usd"] == 0 and \
            h["usage"]["total_tokens"] == first["usage"]["total_tokens"], h
    c = s.counters()
    assert c["cache_misses"] == 1 and c["cache_hits"] == 99 and c["cache_stored"] == 1, c
    assert c["cache_entries"] == 1 and c["cache_bytes"] > 0, c
    # One more, later: a hit from the file, not from the flight.
    h, _ = s.ask("again", b, cache=True)
    assert h["ok"] and h.get("cached") and s.served() - before == 1, h
    text = urllib.request.urlopen(s.broker.ready["metrics"] + "/metrics", timeout=5).read()
    metrics = dict(line.rsplit(" ", 1) for line in text.decode().splitlines()
                   if line.startswith("llmq_broker_cache"))
    print(metrics)
    assert float(metrics["llmq_broker_cache_hits_total"]) == 100, metrics
    assert float(metrics["llmq_broker_cache_misses_total"]) == 1, metrics
    assert float(metrics["llmq_broker_cache_waits_total"]) == 99, metrics
    assert float(metrics["llmq_broker_cache_entries"]) == 1, metrics
    s.close()


def t_restart():
    s = Setup(llmqtest.temp_dir("llmq-cache-restart"))
    before = s.served()
    b = body("survive a restart", temperature=0)  # no flag: temperature 0
    h, p1 = s.ask("r1", b)
    assert h["ok"] and not h.get("cached") and s.served() - before == 1, h
    # The broker commits its cache writes at the end of the loop turn that
    # answered: any later answer (this status) comes after the commit.
    assert s.counters()["cache_entries"] == 1
    s.client.close()
    s.broker.kill9()
    s.start()
    c = s.counters()
    assert c["cache_entries"] == 1, c
    h, p2 = s.ask("r2", b)
    assert h["ok"] and h.get("cached"), h
    assert p2 == p1, (p1, p2)
    assert s.served() - before == 1, "llmq-sim served it again"
    s.close()


def t_ttl():
    s = Setup(llmqtest.temp_dir("llmq-cache-ttl"), "--cache-ttl", "300ms")
    before = s.served()
    b = body("short lived", temperature=0)
    h, _ = s.ask("t0", b)
    assert h["ok"] and not h.get("cached"), h
    n = [0]

    def asked_again():
        n[0] += 1
        h, _ = s.ask("t%d" % n[0], b)
        assert h["ok"], h
        return not h.get("cached")
    llmqtest.wait_until("the answer to expire", asked_again, timeout=20, interval=0.05)
    assert s.served() - before == 2
    c = s.counters()
    assert c["cache_expired"] >= 1 and c["cache_entries"] == 1, c
    s.close()


def t_bytes():
    s = Setup(llmqtest.temp_dir("llmq-cache-bytes"), "--cache-max-bytes", "4000")
    before = s.served()
    for i in range(40):
        h, _ = s.ask("b%d" % i, body("question %d" % i), cache=True)
        assert h["ok"] and not h.get("cached"), h
    c = s.counters()
    print("after 40 answers:", {k: v for k, v in c.items() if k.startswith("cache")})
    assert c["cache_bytes"] <= 4000 and c["cache_evictions"] > 0, c
    assert c["cache_entries"] < 40 and c["cache_stored"] == 40, c
    h, _ = s.ask("last", body("question 39"), cache=True)  # newest: kept
    assert h.get("cached"), h
    h, _ = s.ask("first", body("question 0"), cache=True)  # oldest: evicted
    assert not h.get("cached"), h
    assert s.served() - before == 41
    s.close()


def t_warm():
    s = Setup(llmqtest.temp_dir("llmq-cache-warm"), latency_ms="100")
    before = s.served()
    cases = [("warm", body("warm", temperature=0.7), {}),
             ("nocache", body("cold but refused", temperature=0), {"cache": False}),
             ("stream", body("a stream", temperature=0), {"cache": True, "stream": True})]
    for name, b, kw in cases:
        for i in range(3):
            s.client.req("%s%d" % (name, i), model=MODEL, body=b, **kw)
        done = 0
        while done < 3:
            h, _ = s.client.recv(timeout=30)
            if h["t"] != "res":
                continue
            assert h["ok"] and not h.get("cached"), h
            done += 1
    assert s.served() - before == 9, s.served() - before
    c = s.counters()
    assert c["cache_misses"] == 0 and c["cache_entries"] == 0 and c["cache_waits"] == 0, c
    text = urllib.request.urlopen(s.sim.url + "/_stats", timeout=5).read()
    assert text
    s.close()


def recv_res(client, n, timeout=10):
    out = {}
    while len(out) < n:
        h, p = client.recv(timeout=timeout)
        if h["t"] == "res":
            assert h["id"] not in out, h
            out[h["id"]] = (h, p)
    return out


def t_fail():
    tmp = llmqtest.temp_dir("llmq-cache-fail")
    b = bi.broker("--quiet", "--dead-ms", "600000", "--batch-db", "none",
                  "--cache", os.path.join(tmp, "c.db"))
    lead, wait = bi.Client(b.ready["frontend"]), bi.Client(b.ready["frontend"])
    w = bi.RawWorker(b.ready["backend"], "one", capacity=10)
    w.sync()
    w.send({"t": "credit", "n": 10})
    # 1. The first answers a retryable error: one waiter is dispatched.
    q = body("retry me")
    lead.req("L", body=q, cache=True)
    first = w.expect_req()
    for i in range(5):
        wait.req("w%d" % i, body=q, cache=True)
    bi.wait_status(wait, "5 waiters", lambda st: st["counters"]["cache_waits"] == 5)
    assert w.sync() == [], "a waiter reached the worker"
    w.send({"t": "res", "id": first[0]["id"], "ok": False,
            "error": {"code": "provider_error", "message": "boom", "retryable": True}})
    h, _ = lead.recv()
    assert h["id"] == "L" and not h["ok"] and h["error"]["code"] == "provider_error", h
    second = w.expect_req()
    assert w.sync() == [], "more than one waiter was dispatched"
    w.answer(second)
    got = recv_res(wait, 5)
    assert all(h["ok"] for h, _ in got.values()), got
    cached = sorted(i for i, (h, _) in got.items() if h.get("cached"))
    assert cached == ["w1", "w2", "w3", "w4"], cached  # w0 was asked
    # 2. The first is cancelled by its client: the same.
    q = body("cancel me")
    lead.req("C", body=q, cache=True)
    first = w.expect_req()
    for i in range(3):
        wait.req("c%d" % i, body=q, cache=True)
    bi.wait_status(wait, "3 more waiters", lambda st: st["counters"]["cache_waits"] == 8)
    lead.send({"v": 1, "t": "cancel", "id": "C"})
    h, _ = lead.recv()
    assert h["id"] == "C" and h["error"]["code"] == "cancelled", h
    w.expect("cancel")
    second = w.expect_req()
    w.answer(second)
    got = recv_res(wait, 3)
    assert all(h["ok"] for h, _ in got.values()), got
    # 3. invalid_request: the same body fails the same way; no new dispatch.
    q = body("bad request")
    lead.req("B", body=q, cache=True)
    first = w.expect_req()
    for i in range(3):
        wait.req("i%d" % i, body=q, cache=True)
    bi.wait_status(wait, "3 more waiters", lambda st: st["counters"]["cache_waits"] == 11)
    w.send({"t": "res", "id": first[0]["id"], "ok": False,
            "error": {"code": "invalid_request", "message": "no", "retryable": False}})
    lead.recv()
    got = recv_res(wait, 3)
    assert all(h["error"]["code"] == "invalid_request" for h, _ in got.values()), got
    assert w.sync() == [], "a waiter of a shared error was dispatched"
    # 4. A waiter's own deadline still holds; the first is not touched.
    q = body("slow one")
    lead.req("S", body=q, cache=True)
    first = w.expect_req()
    wait.req("d0", body=q, cache=True, deadline_ms=300)
    h, _ = wait.recv()
    assert h["id"] == "d0" and h["error"]["code"] == "deadline_exceeded", h
    w.answer(first)
    h, _ = lead.recv()
    assert h["id"] == "S" and h["ok"] and not h.get("cached"), h
    c = bi.status(wait)["counters"]
    assert c["cache_entries"] == 3 and c["cache_stored"] == 3, c
    for x in (lead, wait, w):
        x.close()
    assert b.stop() == 0


def t_foreign():
    tmp = llmqtest.temp_dir("llmq-cache-foreign")
    path = os.path.join(tmp, "prompts.jsonl")
    text = b'{"messages": []}\n' * 300
    with open(path, "wb") as f:
        f.write(text)
    p = llmqtest.Proc([llmqtest.bin_path("llmq-broker"), "--frontend", "tcp://127.0.0.1:*",
                       "--backend", "tcp://127.0.0.1:*", "--batch-db", "none",
                       "--cache", path], name="llmq-broker", ready=False)
    rc = p.wait(timeout=20)
    err = p.stderr()
    p.check_exit(expect_rc=None)
    assert rc != 0 and path in err and "not an llmq cache" in err, (rc, err)
    with open(path, "rb") as f:
        assert f.read() == text, "the file was changed"


def t_cli():
    s = Setup(llmqtest.temp_dir("llmq-cache-cli"))
    inp = os.path.join(s.tmp, "in.jsonl")
    with open(inp, "w") as f:
        for i in range(20):
            f.write(json.dumps({"custom_id": "c%d" % i,
                                "body": {"messages": [{"role": "user", "content": "p%d" % i}]}})
                    + "\n")

    def run(name, *flags):
        out = os.path.join(s.tmp, name)
        rc, _, err = llmqtest.run_llmq(["run", inp, "-o", out, "--broker", s.broker.frontend,
                                        "--model", MODEL, "--quiet", *flags])
        assert rc == 0, err
        with open(out) as f:
            return [json.loads(line) for line in f]
    before = s.served()
    assert len(run("plain.jsonl")) == 20
    assert s.served() - before == 20 and s.counters()["cache_entries"] == 0
    assert len(run("first.jsonl", "--cache")) == 20
    assert s.served() - before == 40
    lines = run("second.jsonl", "--cache")
    assert len(lines) == 20 and s.served() - before == 40, "the second run asked llmq-sim"
    assert s.counters()["cache_hits"] == 20
    s.close()


def t_tenant():
    """Shared by tenants by default; --cache-per-tenant keeps them apart."""
    for flags, shared in (((), True), (("--cache-per-tenant",), False)):
        s = Setup(llmqtest.temp_dir("llmq-cache-tenant"), *flags)
        before = s.served()
        b = body("tenant question", temperature=0)
        h, _ = s.ask("a", b, tenant="team-a")
        assert h["ok"] and not h.get("cached"), h
        h, _ = s.ask("b", b, tenant="team-b")
        assert h["ok"] and bool(h.get("cached")) == shared, (flags, h)
        h, _ = s.ask("a2", b, tenant="team-a")
        assert h.get("cached"), h
        assert s.served() - before == (1 if shared else 2)
        s.close()


CASES = {"tenant": t_tenant, "cli": t_cli, "flight": t_flight, "restart": t_restart, "ttl": t_ttl, "bytes": t_bytes,
         "warm": t_warm, "fail": t_fail, "foreign": t_foreign}

if __name__ == "__main__":
    llmqtest.main_cases(CASES)
