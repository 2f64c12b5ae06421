"""The shared conformance cases (bindings/conformance.json), also run by
the Node package's tests."""
import asyncio
import os
import tempfile
import unittest
from typing import Any, Dict

import llmq_client as L
from llmq_client._core import Core

from _util import ENDPOINT, conformance, live

CASES = conformance()
MODEL = CASES["model"]


class Offline(unittest.TestCase):
    def test_installed(self) -> None:
        where = os.environ.get("LLMQ_TEST_INSTALLED")
        if where:
            self.assertTrue(os.path.abspath(L.__file__).startswith(os.path.abspath(where)),
                            "testing %s, not the installed copy" % L.__file__)

    def test_errors(self) -> None:
        for case in CASES["errors"]:
            e = L.error_from(case["error"], "r-1")
            self.assertEqual(type(e).__name__, case["class"], case)
            for name in case["isa"]:
                self.assertIsInstance(e, getattr(L, name), case)
            self.assertEqual(e.code, case["code"])
            self.assertEqual(e.retryable, case["retryable"], case)
            self.assertEqual(e.status, case["status"])
            self.assertEqual(e.request_id, "r-1")
            if "body" in case:
                assert isinstance(e, L.ProviderError)
                self.assertEqual(e.body, case["body"])

    def test_texts(self) -> None:
        for case in CASES["texts"]:
            self.assertEqual(L.text_of(case["body"]), case["text"], case)

    def test_deltas(self) -> None:
        for case in CASES["deltas"]:
            self.assertEqual(L.delta_of(case["chunk"]), case["delta"], case)

    def test_certs(self) -> None:
        with tempfile.TemporaryDirectory(prefix="llmq-certs-") as d:
            for case in CASES["certs"]:
                path = os.path.join(d, "cert")
                with open(path, "w") as f:
                    f.write(case["text"])
                if case.get("error"):
                    self.assertRaises(ValueError, L.read_cert, path)
                    continue
                self.assertEqual(L.read_cert(path), (case["public"], case["secret"]), case["name"])

    def test_body_over_frame_limit(self) -> None:
        with L.Client("tcp://127.0.0.1:1") as c:
            with self.assertRaises(L.InvalidRequest):
                c.chat(MODEL, "x" * (64 * 1024 * 1024))
            self.assertEqual(c._core.pending, {})

    def test_stream_never_spliced(self) -> None:
        """A chunk stream that restarts (a requeued attempt) after text was
        delivered fails with StreamInterrupted instead of splicing."""
        import msgpack
        core = Core("tcp://127.0.0.1:1", 10.0, 30.0, 1.0, 3.0, None, None, None)
        req = core.submit("chat", MODEL, {"messages": []}, stream=True)

        def chunk(seq: int, text: str, attempt: int = 1) -> None:
            h = {"v": 1, "t": "chunk", "id": req.id, "seq": seq, "attempt": attempt}
            body = {"choices": [{"delta": {"content": text}}]}
            core.on_frames([msgpack.packb(h), msgpack.packb(body)])
        chunk(0, "a")
        chunk(0, "b", 2)       # restarted before anything was read: reset
        self.assertEqual(list(req.pieces), ["b"])
        req.pieces.popleft()
        req.yielded = True
        chunk(1, "c", 2)
        chunk(0, "x", 3)       # restarted after text was read: interrupted
        self.assertTrue(req.done)
        self.assertIsInstance(req.error, L.StreamInterrupted)
        self.assertTrue(req.error is not None and req.error.retryable)


def _check(tc: unittest.TestCase, case: Dict[str, Any], result: Any, pieces: Any,
           error: Any) -> None:
    want = case["expect"]
    if "error" in want:
        tc.assertIsNotNone(error, "%s: no error" % case["name"])
        tc.assertEqual(type(error).__name__, want["error"], case["name"])
        tc.assertIsInstance(error, getattr(L, want.get("isa", "LlmqError")))
        tc.assertEqual(error.code, want["code"])
        if "status" in want:
            tc.assertEqual(error.status, want["status"])
        if "retryable" in want:
            tc.assertEqual(error.retryable, want["retryable"])
        return
    tc.assertIsNone(error, "%s: %r" % (case["name"], error))
    if "text_startswith" in want:
        text = "".join(pieces) if pieces is not None else result.text
        tc.assertTrue(text.startswith(want["text_startswith"]), (case["name"], text))
    if "min_pieces" in want:
        tc.assertGreaterEqual(len(pieces), want["min_pieces"])
        tc.assertTrue(result.usage.total_tokens > 0)
    if want.get("usage"):
        tc.assertGreater(result.usage.total_tokens, 0)
        tc.assertIsNotNone(result.cost_usd)
    if "embeddings" in want:
        tc.assertEqual(len(result.embeddings), want["embeddings"])


def _kwargs(case: Dict[str, Any]) -> Dict[str, Any]:
    """The call's keyword arguments: the case's params and its timeout."""
    kw = dict(case["params"])
    if "timeout_s" in case:
        kw["timeout"] = case["timeout_s"]
    return kw


@live
class Live(unittest.TestCase):
    def test_sync(self) -> None:
        with L.Client(ENDPOINT, timeout=20) as c:
            for case in CASES["live"]:
                with self.subTest(case["name"]):
                    result = pieces = error = None
                    try:
                        if case["call"] == "stream":
                            s = c.stream(MODEL, case["input"], **_kwargs(case))
                            pieces = list(s)
                            result = s.result
                        else:
                            result = getattr(c, case["call"])(MODEL, case["input"], **_kwargs(case))
                    except L.LlmqError as e:
                        error = e
                    _check(self, case, result, pieces, error)

    def test_async(self) -> None:
        async def one(c: Any, case: Dict[str, Any]) -> None:
            result = pieces = error = None
            try:
                if case["call"] == "stream":
                    s = c.stream(MODEL, case["input"], **_kwargs(case))
                    pieces = [p async for p in s]
                    result = s.result
                else:
                    result = await getattr(c, case["call"])(MODEL, case["input"], **_kwargs(case))
            except L.LlmqError as e:
                error = e
            _check(self, case, result, pieces, error)

        async def run() -> None:
            async with L.AsyncClient(ENDPOINT, timeout=20) as c:
                for case in CASES["live"]:
                    with self.subTest(case["name"]):
                        await one(c, case)
        asyncio.run(run())


if __name__ == "__main__":
    unittest.main()
