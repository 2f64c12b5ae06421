"""Live tests of Client and AsyncClient against a real broker, workers and
llmq-sim: calls, ordering, streams, batches, every exception type, and a
broker kill -9 + restart while calls are outstanding."""
import asyncio
import json
import os
import threading
import time
import unittest
import urllib.request
from typing import Any, List

import llmq_client as L

from _util import ENDPOINT, conformance, dead_endpoint, live, restart_broker

MODEL = conformance()["model"]


def sim_hash(text: str) -> str:
    """llmq-sim's answer prefix for one user message (sim/README.md)."""
    h = 0xcbf29ce484222325
    for b in ("%s\nuser:%s\n" % (MODEL, text)).encode():
        h = ((h ^ b) * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return "sim-%016x" % h


def body(text: str) -> Any:
    return {"messages": [{"role": "user", "content": text}], "max_tokens": 8}


def wait_sim_in_flight(n: int, timeout: float = 20.0) -> None:
    """Poll llmq-sim until n requests are in flight there (bounded)."""
    url = os.environ["LLMQ_TEST_SIM"] + "/_stats"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=5) as r:
            if json.loads(r.read()).get("in_flight", 0) >= n:
                return
        threading.Event().wait(0.02)
    raise AssertionError("never %d requests in flight at the sim" % n)


def wait_sim_idle(timeout: float = 30.0) -> None:
    """Poll llmq-sim until nothing is in flight there: no late answer of
    an earlier test reaches the restarted broker."""
    url = os.environ["LLMQ_TEST_SIM"] + "/_stats"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with urllib.request.urlopen(url, timeout=5) as r:
            if json.loads(r.read()).get("in_flight", 0) == 0:
                return
        threading.Event().wait(0.02)
    raise AssertionError("llmq-sim never idle")


def restart_when_busy(n: int) -> threading.Thread:
    """Kill -9 and restart the broker once n requests are at the sim."""
    wait_sim_idle()
    t = threading.Thread(target=lambda: (wait_sim_in_flight(n), restart_broker()))
    t.start()
    return t


@live
class Sync(unittest.TestCase):
    def setUp(self) -> None:
        self.c = L.Client(ENDPOINT, timeout=30, broker_timeout=20)

    def tearDown(self) -> None:
        self.c.close()

    def test_ping_status(self) -> None:
        p = self.c.ping()
        self.assertEqual(p.broker, "llmq-broker")
        self.assertTrue(p.version)
        st = self.c.status()
        self.assertGreaterEqual(len(st["workers"]), 1)

    def test_calls(self) -> None:
        r = self.c.chat(MODEL, "sync hello", max_tokens=8, meta={"row": 7})
        self.assertTrue(r.text and r.text.startswith(sim_hash("sync hello")))
        self.assertEqual(r.meta, {"row": 7})
        self.assertGreater(r.usage.total_tokens, 0)
        self.assertTrue(r.worker)
        r = self.c.chat(MODEL, [{"role": "system", "content": "s"},
                                {"role": "user", "content": "two"}])
        self.assertTrue(r.text and r.text.startswith("sim-"))
        self.assertTrue((self.c.complete(MODEL, "once", max_tokens=4).text or "").startswith("sim-"))
        self.assertEqual(len(self.c.embed(MODEL, "one").embeddings), 1)

    def test_infer_many_order(self) -> None:
        texts = ["many %d" % i for i in range(120)]
        rs = self.c.infer_many("chat", MODEL, [body(t) for t in texts], concurrency=16)
        for t, r in zip(texts, rs):
            self.assertTrue(r.text.startswith(sim_hash(t)), t)
        rs = self.c.infer_many("chat", MODEL, [body("ok"), body("no [[sim:fail=400]]")],
                               return_exceptions=True)
        self.assertIsInstance(rs[0], L.Result)
        self.assertIsInstance(rs[1], L.InvalidRequest)
        with self.assertRaises(L.InvalidRequest):
            self.c.infer_many("chat", MODEL, [body("ok"), body("no [[sim:fail=400]]")])

    def test_stream(self) -> None:
        s = self.c.stream(MODEL, "sync stream [[sim:tokens=10]]")
        pieces = list(s)
        self.assertGreaterEqual(len(pieces), 2)
        self.assertTrue(s.text.startswith(sim_hash("sync stream [[sim:tokens=10]]")))
        self.assertIsNotNone(s.result)
        # leaving the loop early cancels the request
        s = self.c.stream(MODEL, "early [[sim:tokens=50,delay_ms=200]]")
        for _ in s:
            break
        self.assertEqual(self.c._core.pending, {})

    def test_client_timeout(self) -> None:
        t0 = time.monotonic()
        with self.assertRaises(L.Timeout) as cm:
            self.c.chat(MODEL, "slow [[sim:delay_ms=5000]]", timeout=0.3,
                        header={"deadline_ms": 60000})
        self.assertIs(type(cm.exception), L.Timeout)
        self.assertLess(time.monotonic() - t0, 5)

    def test_not_found(self) -> None:
        with self.assertRaises(L.NotFound):
            self.c.chat(MODEL, "nobody", pool="no-such-pool")

    def test_unavailable(self) -> None:
        t0 = time.monotonic()
        with L.Client(dead_endpoint(), broker_timeout=1.0) as c:
            with self.assertRaises(L.Unavailable):
                c.chat(MODEL, "anyone?")
            with self.assertRaises(L.Unavailable):
                c.ping()
        self.assertGreaterEqual(time.monotonic() - t0, 1.0)

    def test_default_bound(self) -> None:
        c = L.Client(dead_endpoint())
        self.assertEqual(c._core.broker_timeout, 30.0)
        c.close()

    def test_batches(self) -> None:
        items = [{"custom_id": "c%d" % i, "body": body("batch %d" % i)} for i in range(30)]
        items.append({"custom_id": "bad", "body": body("x [[sim:fail=400]]")})
        b = self.c.batches.submit(MODEL, items, mode="realtime")
        st = self.c.batches.wait(b, timeout=60, poll_interval=0.1)
        self.assertEqual(st.state, "completed")
        self.assertEqual(st.counts.total, 31)
        rs = self.c.batches.results(b)
        self.assertEqual([r.custom_id for r in rs], [it["custom_id"] for it in items])
        for i, r in enumerate(rs[:30]):
            self.assertTrue(r.ok and (r.text or "").startswith(sim_hash("batch %d" % i)))
        self.assertFalse(rs[30].ok)
        self.assertIsInstance(rs[30].error, L.InvalidRequest)
        slow = self.c.batches.submit(MODEL, [body("slow %d [[sim:delay_ms=3000]]" % i)
                                             for i in range(200)], mode="realtime")
        st = self.c.batches.cancel(slow)
        self.assertIn(st.state, ("cancelling", "cancelled"))
        self.assertEqual(self.c.batches.wait(slow, timeout=60, poll_interval=0.1).state,
                         "cancelled")
        with self.assertRaises(L.NotFound):
            self.c.batches.status("no-such-batch")

    def test_broker_restart(self) -> None:
        texts = ["restart sync %d [[sim:delay_ms=300]]" % i for i in range(30)]
        t = restart_when_busy(5)
        rs = self.c.infer_many("chat", MODEL, [body(x) for x in texts], concurrency=30,
                               return_exceptions=True)
        t.join()
        for i, r in enumerate(rs):
            if isinstance(r, L.LlmqError) and r.retryable:
                rs[i] = self.c.infer("chat", MODEL, body(texts[i]))     # e.g. overloaded
            self.assertTrue(rs[i].text.startswith(sim_hash(texts[i])), rs[i])
        self.assertGreaterEqual(self.c.reconnects, 1)


@live
class Async(unittest.TestCase):
    def run_async(self, coro: Any) -> Any:
        return asyncio.run(coro)

    def test_calls_and_gather(self) -> None:
        async def go() -> None:
            async with L.AsyncClient(ENDPOINT, timeout=30) as c:
                self.assertEqual((await c.ping()).broker, "llmq-broker")
                r = await c.chat(MODEL, "async hello", max_tokens=8)
                self.assertTrue((r.text or "").startswith(sim_hash("async hello")))
                texts = ["gather %d" % i for i in range(50)]
                rs = await asyncio.gather(*(c.chat(MODEL, t) for t in texts))
                for t, r in zip(texts, rs):
                    self.assertTrue((r.text or "").startswith(sim_hash(t)))
                texts = ["amany %d" % i for i in range(150)]
                rs2 = await c.infer_many("chat", MODEL, [body(t) for t in texts], concurrency=20)
                for t, r in zip(texts, rs2):
                    self.assertTrue(r.text.startswith(sim_hash(t)))
                s = c.stream(MODEL, "async stream [[sim:tokens=10]]")
                pieces = [p async for p in s]
                self.assertGreaterEqual(len(pieces), 2)
                self.assertTrue(s.text.startswith(sim_hash("async stream [[sim:tokens=10]]")))
                self.assertEqual(len((await c.embed(MODEL, ["a", "b", "c"])).embeddings), 3)
        self.run_async(go())

    def test_errors(self) -> None:
        async def go() -> None:
            async with L.AsyncClient(ENDPOINT, timeout=30) as c:
                with self.assertRaises(L.RateLimited):
                    await c.chat(MODEL, "x [[sim:fail=429]]")
                with self.assertRaises(L.ProviderError) as pe:
                    await c.chat(MODEL, "x [[sim:fail=502]]")
                self.assertEqual(pe.exception.status, 502)
                self.assertTrue(pe.exception.body)
                with self.assertRaises(L.Timeout):
                    await c.chat(MODEL, "slow [[sim:delay_ms=5000]]", timeout=0.3,
                                 header={"deadline_ms": 60000})
                with self.assertRaises(L.DeadlineExceeded):
                    await c.chat(MODEL, "slow [[sim:delay_ms=5000]]", timeout=0.3)
                # Cancelled: the broker answers our cancel
                task = asyncio.ensure_future(c.chat(MODEL, "cancel me [[sim:delay_ms=5000]]",
                                                    request_id="cancel-me"))
                while "cancel-me" not in c._core.pending:
                    await asyncio.sleep(0)
                c.cancel("cancel-me")
                with self.assertRaises(L.Cancelled):
                    await task
                # Cancelling the awaiting task cancels the request too
                task = asyncio.ensure_future(c.chat(MODEL, "drop me [[sim:delay_ms=5000]]"))
                await asyncio.sleep(0)
                task.cancel()
                with self.assertRaises(asyncio.CancelledError):
                    await task
                self.assertEqual(c._core.pending, {})
                # Overloaded: more than the broker's queue (--max-queue 96) at once
                rs = await c.infer_many("chat", MODEL, [body("flood %d [[sim:delay_ms=1000]]" % i)
                                                        for i in range(260)],
                                        concurrency=260, return_exceptions=True)
                kinds = {type(r).__name__ for r in rs}
                self.assertIn("Overloaded", kinds)
                over = next(r for r in rs if isinstance(r, L.Overloaded))
                self.assertIsInstance(over, L.Unavailable)
                self.assertTrue(over.retryable)
            async with L.AsyncClient(dead_endpoint(), broker_timeout=1.0) as d:
                with self.assertRaises(L.Unavailable):
                    await d.chat(MODEL, "anyone?")
        self.run_async(go())

    def test_batches(self) -> None:
        async def go() -> None:
            async with L.AsyncClient(ENDPOINT, timeout=30) as c:
                b = await c.batches.submit(MODEL, [body("abatch %d" % i) for i in range(12)],
                                           mode="realtime")
                st = await c.batches.wait(b, timeout=60, poll_interval=0.1)
                self.assertEqual((st.state, st.counts.done), ("completed", 12))
                rs = await c.batches.results(b)
                self.assertEqual([r.custom_id for r in rs], [str(i) for i in range(12)])
                self.assertTrue(all(r.ok for r in rs))
        self.run_async(go())

    def test_broker_restart(self) -> None:
        async def go() -> None:
            async with L.AsyncClient(ENDPOINT, timeout=30, broker_timeout=20) as c:
                texts = ["restart async %d [[sim:delay_ms=300]]" % i for i in range(30)]
                t = restart_when_busy(5)
                rs: List[Any] = await c.infer_many("chat", MODEL, [body(x) for x in texts],
                                                   concurrency=30, return_exceptions=True)
                await asyncio.get_running_loop().run_in_executor(None, t.join)
                for i, r in enumerate(rs):
                    if isinstance(r, L.LlmqError) and r.retryable:
                        rs[i] = await c.infer("chat", MODEL, body(texts[i]))
                    self.assertTrue(rs[i].text.startswith(sim_hash(texts[i])), rs[i])
                self.assertGreaterEqual(c.reconnects, 1)
        self.run_async(go())


if __name__ == "__main__":
    unittest.main()
