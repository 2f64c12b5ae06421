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
    assert peak < bound_mb * 1024, "broker RSS %d MB >= %d MB" % (peak // 1024, bound_mb)
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


CASES = {"cancel": t_cancel, "fair": t_fair, "bytes": t_bytes,
         "fair_off": lambda: t_fair(("--no-fair-share",))}

if __name__ == "__main__":
    os.setpgrp()
    ok = False
    try:
        CASES[sys.argv[1]]()
        llmqtest.finish()
        ok = True
    finally:
        if not ok:
            llmqtest._stop_all_quietly()
    print("PASS", sys.argv[1])
