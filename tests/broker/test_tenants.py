#!/usr/bin/python3
"""test_tenants.py - fair share and byte budgets with a real llmq-broker
(PROTOCOL.md 3.4). A test-driven worker (broker_it.RawWorker) grants one
credit at a time, so the order in which the broker dispatches is seen
exactly; the bound is in queue positions, never in time.

    test_tenants.py fair     tenant B behind tenant A's 100,000 queued
    test_tenants.py bytes    24 x 50 MB past the byte budget: overloaded,
                             broker RSS bounded
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import broker_it as bi  # noqa: E402
import llmqtest  # noqa: E402

N_A = 100000     # tenant A's backlog
N_B = 3          # tenant B's requests sent behind it
BOUND = 2 * N_B  # B's requests are all among the first BOUND dispatches


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return -1


def t_fair(extra=()):
    b = bi.broker("--quiet", "--dead-ms", "600000", "--no-worker-wait-ms", "600000",
                  *extra)
    a, c = bi.Client(b.ready["frontend"]), bi.Client(b.ready["frontend"])
    w = bi.RawWorker(b.ready["backend"], "one", capacity=1)
    w.sync()  # registered, no credit: everything waits
    body = {"messages": [{"role": "user", "content": "x"}]}
    for i in range(N_A):
        a.req("a%d" % i, body=body, tenant="team-a")
    bi.wait_status(a, "A's backlog queued", lambda st: st["counters"]["queued"] == N_A, 120)
    for i in range(N_B):
        c.req("b%d" % i, tenant="team-b")
    st = bi.wait_status(c, "B queued", lambda st: st["counters"]["queued"] == N_A + N_B, 60)
    assert st["counters"]["tenants"] == 2, st["counters"]
    order = []
    for _ in range(BOUND + 2):
        w.send({"t": "credit", "n": 1})
        h, payload = w.expect_req()
        order.append(h.get("tenant"))
        w.answer((h, payload))
    print("first dispatches:", order)
    got = order[:BOUND].count("team-b")
    assert got == N_B, "B's %d requests within the first %d dispatches: %s" % (
        N_B, BOUND, order)
    w.close()
    assert b.stop() == 0


def t_bytes():
    budget = 200 * 1024 * 1024
    b = bi.broker("--quiet", "--dead-ms", "600000", "--no-worker-wait-ms", "600000",
                  "--max-queue", "100", "--max-queue-bytes", str(budget))
    c = bi.Client(b.ready["frontend"])
    w = bi.RawWorker(b.ready["backend"], "none", capacity=1)  # no credit: all wait
    w.sync()
    big = "x" * (50 * 1024 * 1024)
    peak = 0
    answers = {}
    for i in range(24):
        c.req("big%d" % i, body={"messages": [{"role": "user", "content": big}]})
        while True:  # drain what is there, so replies never pile up
            try:
                h, _ = c.recv(timeout=0.01)
            except TimeoutError:
                break
            answers[h["id"]] = h
        peak = max(peak, rss_kb(b.pid))
    while len(answers) < 21:
        h, _ = c.recv(timeout=30)
        answers[h["id"]] = h
        peak = max(peak, rss_kb(b.pid))
    st = bi.status(c)
    peak = max(peak, rss_kb(b.pid))
    over = [h for h in answers.values() if h["error"]["code"] == "overloaded"]
    print("queued %d, overloaded %d, peak RSS %d MB" % (
        st["counters"]["queued"], len(over), peak // 1024))
    assert st["counters"]["queued"] == 3, st["counters"]   # 3 x 50 MB fit in 200 MB
    assert len(over) == 21 and all(h["error"]["retryable"] for h in over), answers
    bound_mb = 200 + 400
    # (Under ASan freed memory stays in its quarantine: no RSS bound.)
    assert peak < bound_mb * 1024 or llmqtest.sanitized(b.pid), \
        "broker RSS %d MB >= %d MB" % (peak // 1024, bound_mb)
    w.close()
    assert b.stop() == 0


def t_cancel():
    """A cancel from another tenant's socket that reuses the routing id
    (ROUTER_HANDOVER) does nothing: clients are (tenant, routing id)."""
    b = bi.broker("--quiet", "--dead-ms", "600000")
    a = bi.Client(b.ready["frontend"], identity="shared-id")
    w = bi.RawWorker(b.ready["backend"], "one", capacity=1)
    w.send({"t": "credit", "n": 1})
    a.req("r1", tenant="team-a")
    req = w.expect_req()
    thief = bi.Client(b.ready["frontend"], identity="shared-id")
    thief.send({"v": 1, "t": "cancel", "id": "r1", "tenant": "team-b"})
    probe = bi.Client(b.ready["frontend"])
    bi.status(thief)  # same connection: the cancel was handled before
    w.answer(req)
    st = bi.wait_status(probe, "r1 answered or cancelled", lambda st:
                        st["counters"]["answered_ok"] + st["counters"]["cancelled"] >= 1)
    assert st["counters"]["cancelled"] == 0, st["counters"]
    w.close()
    assert b.stop() == 0


def batch_call(client, header):
    """Send a batch message; the answers until the last one of the call
    (batch.ack, an error, or batch.status for a cancel)."""
    client.send(dict({"v": 1}, **header))
    got = []
    while True:
        h, _ = client.recv(timeout=10)
        got.append(h)
        if h["t"] in ("batch.ack", "error", "batch.results") or (
                header["t"] == "batch.cancel" and h["t"] == "batch.status"):
            return got


def check_batch_owners(endpoint, owner, other, admin, tag):
    """owner opens a batch; other cannot read, cancel or list it; admin
    (None: no admin case) sees it. Each is a Client; the tenant they
    declare is in tag (or comes from their CURVE key)."""
    def call(c, t, batch, **kw):
        return batch_call(c, dict({"t": t, "batch": batch}, **kw, **tag.get(c, {})))
    got = call(owner, "batch.open", "job-1", mode="realtime", model="m")
    assert got[-1]["t"] == "batch.ack", got
    for t in ("batch.get", "batch.cancel", "batch.close"):
        got = call(other, t, "job-1")
        assert got[-1]["t"] == "error" and got[-1]["code"] == "not_found", (t, got)
    got = call(other, "batch.open", "job-1", mode="realtime", model="m")
    assert got[-1]["t"] == "error", got
    got = call(other, "batch.get", "")
    assert got[-1]["count"] == 0 and len(got) == 1, got
    got = call(owner, "batch.get", "")
    assert got[-1]["count"] == 1 and got[0]["batch"] == "job-1", got
    got = call(owner, "batch.get", "job-1")
    assert got[0]["t"] == "batch.status" and got[0]["state"] == "validating", got
    if admin:
        got = call(admin, "batch.get", "")
        assert got[-1]["count"] == 1, got
        got = call(admin, "batch.cancel", "job-1")
        assert got[-1]["t"] == "batch.status", got
    got = call(owner, "batch.cancel", "job-1")
    assert got[-1]["t"] == "batch.status" and got[-1]["state"] in (
        "cancelled", "cancelling"), got


def t_batch():
    """Batches belong to their declared tenant (no CURVE: advisory)."""
    tmp = llmqtest.temp_dir("llmq-tenants-")
    b = bi.broker("--quiet", "--batch-db", os.path.join(tmp, "b.db"),
                  "--admin-tenant", "root")
    ep = b.ready["frontend"]
    a, o, r = bi.Client(ep), bi.Client(ep), bi.Client(ep)
    check_batch_owners(ep, a, o, r, {a: {"tenant": "team-a"}, o: {"tenant": "team-b"},
                                     r: {"tenant": "root"}})
    assert b.stop() == 0


def t_migrate():
    """A batch database from before owners (user_version 1, no owner
    column) opens; its batches belong to the tenant "": a client that
    declares none sees them, team-b does not."""
    import sqlite3
    tmp = llmqtest.temp_dir("llmq-tenants-")
    db = os.path.join(tmp, "b.db")
    b = bi.broker("--quiet", "--batch-db", db)
    c = bi.Client(b.ready["frontend"])
    got = batch_call(c, {"t": "batch.open", "batch": "old-1", "mode": "realtime",
                         "model": "m"})
    assert got[-1]["t"] == "batch.ack", got
    assert b.stop() == 0
    con = sqlite3.connect(db)
    con.execute("ALTER TABLE batches DROP COLUMN owner")
    con.execute("PRAGMA user_version=1")
    con.commit()
    con.close()
    b = bi.broker("--quiet", "--batch-db", db)
    anon, other = bi.Client(b.ready["frontend"]), bi.Client(b.ready["frontend"])
    got = batch_call(anon, {"t": "batch.get", "batch": "old-1"})
    assert got[0]["t"] == "batch.status", got
    got = batch_call(other, {"t": "batch.get", "batch": "old-1", "tenant": "team-b"})
    assert got[-1]["t"] == "error" and got[-1]["code"] == "not_found", got
    assert b.stop() == 0
    con = sqlite3.connect(db)
    assert con.execute("PRAGMA user_version").fetchone()[0] == 2
    con.close()


class CurveClient(bi.Client):
    """bi.Client over CURVE with the secret certificate at path."""

    def __init__(self, endpoint, path, server_key, identity=None):
        import zmq
        from llmq_client._core import read_cert
        public, secret = read_cert(path + "_secret")
        self.ctx = zmq.Context.instance()
        self.s = self.ctx.socket(zmq.DEALER)
        self.s.setsockopt(zmq.LINGER, 0)
        if identity:
            self.s.setsockopt(zmq.IDENTITY, identity.encode())
        self.s.curve_serverkey = server_key.encode()
        self.s.curve_publickey = public.encode()
        self.s.curve_secretkey = secret.encode()
        self.s.connect(endpoint)


def t_curve():
    """Under CURVE the tenant is the client's key, whatever it declares:
    two keys declaring the same name are two tenants, and one cannot read,
    cancel or list the other's batch; the --admin-key sees everything."""
    import subprocess
    llmqtest.client_module()  # bindings/python on sys.path
    tmp = llmqtest.temp_dir("llmq-tenants-curve-")
    keys, clients, workers = (os.path.join(tmp, d) for d in ("keys", "clients", "workers"))
    for d in (keys, clients, workers):
        os.mkdir(d)
    pub = {}
    for name in ("broker", "alice", "bob", "root"):
        r = subprocess.run([llmqtest.bin_path("llmq"), "keygen", os.path.join(keys, name)],
                           capture_output=True, text=True, timeout=10)
        assert r.returncode == 0, r.stderr
        pub[name] = r.stdout.strip()
        if name != "broker":
            with open(os.path.join(keys, name)) as src, \
                    open(os.path.join(clients, name), "w") as dst:
                dst.write(src.read())
    b = bi.broker("--quiet", "--dead-ms", "600000", "--no-worker-wait-ms", "600000",
                  "--batch-db", os.path.join(tmp, "b.db"),
                  "--curve-cert", os.path.join(keys, "broker_secret"),
                  "--client-keys", clients, "--worker-keys", workers,
                  "--admin-key", pub["root"])
    ep = b.ready["frontend"]
    alice, bob, root = (CurveClient(ep, os.path.join(keys, n), pub["broker"])
                        for n in ("alice", "bob", "root"))
    alice.req("x1", tenant="same")
    bob.req("x2", tenant="same")
    st = bi.wait_status(root, "both queued", lambda st: st["counters"]["queued"] == 2)
    assert st["counters"]["tenants"] == 2, st["counters"]
    # The declared name is ignored for ownership too.
    check_batch_owners(ep, alice, bob, root, {alice: {"tenant": "same"},
                                              bob: {"tenant": "same"}})
    # No routing-id takeover: bob's socket with the routing id alice's
    # socket has is refused (no handover under CURVE); alice keeps it.
    mine = CurveClient(ep, os.path.join(keys, "alice"), pub["broker"], identity="shared")
    bi.status(mine)
    thief = CurveClient(ep, os.path.join(keys, "bob"), pub["broker"], identity="shared")
    thief.send({"v": 1, "t": "status"})
    try:
        h, _ = thief.recv(timeout=2)
        raise AssertionError("a second socket took over the routing id: %r" % h)
    except TimeoutError:
        pass
    assert bi.status(mine)["counters"]["queued"] == 2
    assert b.stop() == 0


def t_caps():
    """Per-tenant caps: past --tenant-max-queue requests (or
    --tenant-max-bytes bytes) a tenant's requests are answered overloaded
    (retryable), while another tenant's are still queued."""
    b = bi.broker("--quiet", "--dead-ms", "600000", "--no-worker-wait-ms", "600000",
                  "--tenant-max-queue", "5", "--tenant-max-bytes", "100000")
    a, o = bi.Client(b.ready["frontend"]), bi.Client(b.ready["frontend"])
    w = bi.RawWorker(b.ready["backend"], "none", capacity=1)  # no credit
    w.sync()
    for i in range(7):
        a.req("a%d" % i, tenant="team-a")
    got = [a.recv(timeout=10)[0] for _ in range(2)]
    assert sorted(h["id"] for h in got) == ["a5", "a6"], got
    assert all(h["error"]["code"] == "overloaded" and h["error"]["retryable"] and
               "tenant queue full" in h["error"]["message"] for h in got), got
    big = {"messages": [{"role": "user", "content": "x" * 60000}]}
    o.req("b0", body=big, tenant="team-b")
    o.req("b1", body=big, tenant="team-b")  # 120 KB > 100 KB
    h, _ = o.recv(timeout=10)
    assert h["id"] == "b1" and h["error"]["code"] == "overloaded", h
    st = bi.status(o)
    assert st["counters"]["queued"] == 6 and st["counters"]["tenants"] == 2, st["counters"]
    w.close()
    assert b.stop() == 0


def t_lanes():
    """A worker serving two lanes: a lane whose clock moved far (tenant A's
    backlog, half dispatched) does not starve behind a fresh lane (tenant
    B's stream on another model): the two heads take turns."""
    b = bi.broker("--quiet", "--dead-ms", "600000", "--no-worker-wait-ms", "600000")
    a, c = bi.Client(b.ready["frontend"]), bi.Client(b.ready["frontend"])
    w = bi.RawWorker(b.ready["backend"], "both", models=("m1", "m2"), capacity=1)
    w.sync()
    for i in range(1000):
        a.req("a%d" % i, model="m1", tenant="team-a")
    bi.wait_status(a, "A queued", lambda st: st["counters"]["queued"] == 1000)
    for _ in range(500):  # lane m1's clock moves 500 turns
        w.send({"t": "credit", "n": 1})
        w.answer(w.expect_req())
    for i in range(10):
        c.req("b%d" % i, model="m2", tenant="team-b")
    bi.wait_status(c, "B queued", lambda st: st["counters"]["queued"] == 510)
    order = []
    for _ in range(10):
        w.send({"t": "credit", "n": 1})
        h, payload = w.expect_req()
        order.append(h.get("tenant"))
        w.answer((h, payload))
    print("next dispatches:", order)
    assert order.count("team-a") >= 4 and order.count("team-b") >= 4, order
    w.close()
    assert b.stop() == 0


def t_daily_cap():
    """--tenant-daily-cap: a tenant whose results cost the cap today gets
    `rate_limited`, not retryable, for its next request, before any worker
    sees it; another tenant is still served; status counts the capped
    tenant and the metrics show each tenant's spend."""
    import urllib.request
    b = bi.broker("--quiet", "--dead-ms", "600000", "--tenant-daily-cap", "0.05",
                  "--metrics", "127.0.0.1:0")
    c = bi.Client(b.ready["frontend"])
    w = bi.RawWorker(b.ready["backend"], "one", capacity=1)

    answers = []
    w.send({"t": "credit", "n": 1})
    for i in range(5):
        c.req("a%d" % i, tenant="team-a")
        # What reaches the worker is answered at $0.02; a refused request
        # never reaches it and its answer comes from the broker.
        while not c.s.poll(50):
            try:
                h, p = w.expect_req(timeout=0.05)
            except TimeoutError:
                continue
            w.send({"t": "res", "id": h["id"], "ok": True,
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                              "total_tokens": 2, "cost_usd": 0.02}}, p)
            w.send({"t": "credit", "n": 1})
        h, _ = c.recv(timeout=10)
        answers.append(h)
    codes = [h["ok"] or h["error"]["code"] for h in answers]
    print("team-a:", codes)
    assert codes == [True, True, True, "rate_limited", "rate_limited"], codes
    assert not answers[3]["error"]["retryable"], answers[3]
    assert "daily spend cap" in answers[3]["error"]["message"], answers[3]
    c.req("b0", tenant="team-b")
    h, p = w.expect_req()
    assert h.get("tenant") == "team-b", h
    w.answer((h, p))
    h, _ = c.recv(timeout=10)
    assert h["id"] == "b0" and h["ok"], h
    st = bi.status(c)
    assert st["counters"]["tenants_at_daily_cap"] == 1, st["counters"]
    text = urllib.request.urlopen(b.ready["metrics"] + "/metrics", timeout=5).read().decode()
    line = [ln for ln in text.splitlines()
            if ln.startswith('llmq_broker_tenant_spend_usd{tenant="team-a"}')]
    assert line and abs(float(line[0].split()[-1]) - 0.06) < 1e-9, line
    w.close()
    assert b.stop() == 0


CASES = {"daily_cap": t_daily_cap, "caps": t_caps, "lanes": t_lanes, "cancel": t_cancel, "batch": t_batch, "migrate": t_migrate, "curve": t_curve, "fair": t_fair, "bytes": t_bytes,
         "fair_off": lambda: t_fair(("--no-fair-share",))}

if __name__ == "__main__":
    llmqtest.main_cases(CASES)
