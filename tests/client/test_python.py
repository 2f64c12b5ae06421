#!/usr/bin/python3
"""client.python: the Python client package (bindings/python/llmq_client,
from the tree, on /usr/bin/python3) against the real C broker, workers and
llmq-sim: ping, status, synchronous chat, completion and embedding, async
calls through a window of 8, infer_many in input order, streaming, error
results, and a broker kill -9 + restart with requests outstanding (the
client resends; every request answered once). client.python_pkg runs the
package's own suite from an installed copy."""
import asyncio
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import MODEL, Cluster, chat_hash, check, llmqtest, wait_until  # noqa

L = llmqtest.client_module()


def chat(text):
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 16}


def answers(text, body):
    """True if text is the sim's answer to this chat body."""
    return bool(text) and text.startswith("sim-" + chat_hash(MODEL, body["messages"]))


def sync_calls(c):
    check(c.ping(timeout=5).broker.startswith("llmq-broker"), "ping")
    status = c.status(timeout=5)
    check(len(status["workers"]) == 2, "status lists the workers: %r" % status)

    r = c.infer("chat", MODEL, chat("hello from python"))
    check(answers(r.text, chat("hello from python")), "chat text %r" % r.text)
    check(r.usage.total_tokens > 0 and r.worker, "usage and worker: %r" % r)
    r = c.infer("completion", MODEL, {"prompt": "once upon a time", "max_tokens": 8})
    check(r.text and r.text.startswith("sim-"), "completion: %r" % r)
    r = c.infer("embedding", MODEL, {"input": ["a", "b"]})
    check(len(r.body["data"]) == 2 and len(r.body["data"][0]["embedding"]) > 0,
          "embedding: %r" % r)
    try:
        c.infer("chat", MODEL, chat("this one fails [[sim:fail=400]]"))
        check(False, "a failed request returned")
    except L.InvalidRequest as e:
        check(not e.retryable, "invalid_request is not retryable: %r" % e)

    bodies = [chat("many %d" % i) for i in range(50)]
    results = c.infer_many("chat", MODEL, bodies)
    for i, r in enumerate(results):
        check(answers(r.text, bodies[i]), "infer_many order at %d" % i)

    body = chat("stream please [[sim:tokens=12]]")
    s = c.stream(MODEL, body["messages"], max_tokens=16)
    deltas = list(s)
    check(s.result is not None, "stream result")
    check(len(deltas) >= 2 and answers("".join(deltas), body), "stream deltas %r" % deltas[:4])


async def async_window(endpoint):
    """100 calls through a window of 8: each gets its own answer."""
    async with L.AsyncClient(endpoint, concurrency=8) as c:
        bodies = [chat("async %d" % i) for i in range(100)]
        results = await asyncio.gather(*[c.infer("chat", MODEL, b) for b in bodies])
    for i, r in enumerate(results):
        check(answers(r.text, bodies[i]), "async %d got another request's answer" % i)


async def restart(cluster):
    """40 outstanding, the broker kill -9ed and restarted under them (on
    this thread: the loop waits meanwhile): every one answered once."""
    async with L.AsyncClient(cluster.broker.frontend, concurrency=64) as c:
        bodies = [chat("restart %d [[sim:delay_ms=300]]" % i) for i in range(40)]
        tasks = [asyncio.ensure_future(c.infer("chat", MODEL, b)) for b in bodies]
        deadline = asyncio.get_running_loop().time() + 30
        while cluster.sim.stats().get("in_flight", 0) == 0:
            check(asyncio.get_running_loop().time() < deadline, "no request reached the sim")
            await asyncio.sleep(0.01)   # let the client send; polling pace only
        cluster.restart_broker()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        overloaded = 0
        for i, r in enumerate(results):
            # Overloaded is retryable by definition (and seen right after a
            # restart, while workers say hello again): send it again.
            while isinstance(r, L.Overloaded) and overloaded < 40:
                overloaded += 1
                r = await asyncio.gather(c.infer("chat", MODEL, bodies[i]),
                                         return_exceptions=True)
                r = r[0]
            check(not isinstance(r, Exception), "after restart %d: %r" % (i, r))
            check(answers(r.text, bodies[i]), "after restart %d: another answer" % i)
        core = c._core   # the engine's counters: the restart was seen and resent
        check(core.reconnects >= 1 and core.resent >= 1, "no reconnect seen")
        return core.reconnects, core.resent, overloaded


def main():
    cluster = Cluster(workers=2, capacity=16)
    try:
        with L.Client(cluster.broker.frontend, timeout=30) as c:
            sync_calls(c)
        asyncio.run(async_window(cluster.broker.frontend))
        wait_until("an idle cluster before the restart", lambda: cluster.sim.stats().get(
            "in_flight", 1) == 0, 30)
        reconnects, resent, overloaded = asyncio.run(restart(cluster))
        print("client.python: ok (reconnects %d, resent %d, overloaded retried %d)"
              % (reconnects, resent, overloaded))
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
