#!/usr/bin/python3
"""client.python: the pure-Python client (bindings/python/llmq.py) against
the real C broker, workers and llmq-sim: ping, status, synchronous chat,
completion and embedding, async submit/poll through a window, infer_many in
input order, streaming, error results, and a broker kill -9 + restart with
requests outstanding (the client resends; every request answered once)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import MODEL, Cluster, chat_hash, check  # noqa
import llmq  # noqa


def chat(text):
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 16}


def main():
    cluster = Cluster(workers=2, capacity=16)
    try:
        c = llmq.Client(cluster.broker.frontend, timeout=1.5)
        check(c.ping().startswith("llmq-broker"), "ping")
        status = c.status()
        check(len(status["workers"]) == 2, "status lists the workers: %r" % status)

        r = c.infer("chat", MODEL, chat("hello from python"))
        check(r.ok, "chat failed: %r" % r)
        want = "sim-" + chat_hash(MODEL, chat("hello from python")["messages"])
        check(r.text.startswith(want), "chat text %r, want %s" % (r.text, want))
        check(r.usage.get("total_tokens", 0) > 0 and r.worker, "usage and worker: %r" % vars(r))

        r = c.infer("completion", MODEL, {"prompt": "once upon a time", "max_tokens": 8})
        check(r.ok and r.text and r.text.startswith("sim-"), "completion: %r" % r)
        r = c.infer("embedding", MODEL, {"input": ["a", "b"]})
        check(r.ok and len(r.body["data"]) == 2 and len(r.body["data"][0]["embedding"]) > 0,
              "embedding: %r" % r)

        r = c.infer("chat", MODEL, chat("this one fails [[sim:fail=400]]"))
        check(not r.ok and r.error["code"] == "invalid_request" and not r.error.get("retryable"),
              "error result: %r" % r)

        # async through a window of 8
        c.window = 8
        ids = {}
        for i in range(100):
            ids[c.submit("chat", MODEL, chat("async %d" % i), arg=i)] = i
            check(c.outstanding() <= 8, "window exceeded")
        got = {}
        for r in c.results():
            check(r.ok, "async %r" % r)
            got[r.arg] = r.text
        check(sorted(got) == list(range(100)), "async results: %d" % len(got))
        for i, text in got.items():
            check(text.startswith("sim-" + chat_hash(MODEL, chat("async %d" % i)["messages"])),
                  "async %d got another request's answer" % i)

        bodies = [chat("many %d" % i) for i in range(50)]
        results = c.infer_many("chat", MODEL, bodies)
        for i, r in enumerate(results):
            check(r.ok and r.text.startswith("sim-" + chat_hash(MODEL, bodies[i]["messages"])),
                  "infer_many order at %d" % i)

        deltas = list(c.stream(MODEL, chat("stream please [[sim:tokens=12]]")))
        check(c.last_result is not None and c.last_result.ok, "stream result: %r" % c.last_result)
        text = "".join(deltas)
        want = "sim-" + chat_hash(MODEL, chat("stream please [[sim:tokens=12]]")["messages"])
        check(len(deltas) >= 2 and text.startswith(want), "stream deltas %r" % deltas[:4])

        # Broker kill -9 and restart with 40 requests outstanding.
        c.window = 64
        for i in range(40):
            c.submit("chat", MODEL, chat("restart %d [[sim:delay_ms=300]]" % i), arg=i)
        cluster.restart_broker()
        got = {}
        overloaded = 0
        for r in c.results():
            if not r.ok and r.error.get("code") == "overloaded" and overloaded < 40:
                # Retryable by definition (and seen right after a restart,
                # while workers say hello again): send it again.
                overloaded += 1
                c.submit("chat", MODEL, chat("restart %d [[sim:delay_ms=300]]" % r.arg), arg=r.arg)
                continue
            check(r.ok, "after restart: %r" % r)
            check(r.arg not in got, "request %d answered twice" % r.arg)
            got[r.arg] = r
        check(sorted(got) == list(range(40)), "after restart: %d results" % len(got))
        check(c.reconnects >= 1 and c.resent >= 1, "no reconnect seen")
        c.close()
        print("client.python: ok (reconnects %d, resent %d, overloaded retried %d)"
              % (c.reconnects, c.resent, overloaded))
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
