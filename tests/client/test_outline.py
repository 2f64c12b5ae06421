#!/usr/bin/python3
"""client.outline.*: the OUT lines of `llmq run` match OpenAI's Batch API
output format field by field (issue 15), end to end through a real broker.

    test_outline.py fake   a scripted protocol worker (this process) answers
                           with request_id, error.body, model, cached, cost
                           and attempts: every field of the line is known
    test_outline.py sim    real llmq-worker + llmq-sim: successes, HTTP
                           errors with code and param, a line that never
                           reaches the provider

OpenAI's line: {"id": "batch_req_...", "custom_id", "response":
{"status_code", "request_id", "body"} | null, "error": {"code", "message"} |
null}; an HTTP error from the provider is a response (its status, request id
and error body unchanged) with error null; llmq's own fields live in the
"llmq" object only. ids are unique per line and per run.

`sim` checks response.request_id (the provider's x-request-id) and the
error body passed through only when the worker sends them (res request_id
and error.body, PROTOCOL.md 4.2): a worker that sends no request_id at all
is older than that, and the test exits 77 after all its other checks."""
import json
import os
import re
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import (Broker, Cluster, MODEL, check, read_jsonl,  # noqa: E402
                        run_llmq, temp_dir)
import llmqtest  # noqa: E402

TOP_KEYS = ["id", "custom_id", "response", "error", "llmq"]
RESPONSE_KEYS = ["status_code", "request_id", "body"]
ERROR_KEYS = ["code", "message"]
LLMQ_KEYS = ["cost_usd", "cached", "traceparent", "model", "worker", "attempts", "error_code"]
OPENAI_ERROR_KEYS = {"message", "type", "param", "code"}
ID_RE = re.compile(r"^batch_req_[0-9a-f]{32}$")
TRACE_RE = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-01$")
GIVEN_TRACE = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def check_shape(r):
    """OpenAI's line, field by field, and the llmq object's types."""
    cid = r.get("custom_id")
    check(list(r) == TOP_KEYS, "%s: keys %r, want %r" % (cid, list(r), TOP_KEYS))
    check(isinstance(cid, str) and cid, "custom_id %r" % cid)
    check(ID_RE.match(r["id"]), "%s: id %r" % (cid, r["id"]))
    resp, err = r["response"], r["error"]
    check((resp is None) != (err is None), "%s: exactly one of response and error: %r" % (cid, r))
    if resp is not None:
        check(list(resp) == RESPONSE_KEYS, "%s: response keys %r" % (cid, list(resp)))
        check(type(resp["status_code"]) is int, "%s: status_code %r" % (cid, resp))
        check(isinstance(resp["request_id"], str), "%s: request_id %r" % (cid, resp))
        check(isinstance(resp["body"], dict), "%s: body %r" % (cid, resp))
    else:
        check(list(err) == ERROR_KEYS, "%s: error keys %r" % (cid, list(err)))
        check(isinstance(err["code"], str) and err["code"] and isinstance(err["message"], str),
              "%s: error %r" % (cid, err))
    x = r["llmq"]
    check(list(x) == LLMQ_KEYS, "%s: llmq keys %r" % (cid, list(x)))
    check(type(x["cost_usd"]) in (int, float) and x["cost_usd"] >= 0, "%s: cost %r" % (cid, x))
    check(type(x["cached"]) is bool and type(x["attempts"]) is int, "%s: llmq %r" % (cid, x))
    check(x["error_code"] is None or isinstance(x["error_code"], str), "%s: %r" % (cid, x))
    ok = resp is not None and 200 <= resp["status_code"] < 300
    check(ok == (x["error_code"] is None), "%s: error_code iff failed: %r" % (cid, r))


def check_ids(rows, other_run=()):
    ids = [r["id"] for r in rows]
    check(len(set(ids)) == len(ids), "ids repeat within a run: %r" % ids)
    check(not set(ids) & set(other_run), "ids repeat across runs: %r" % (set(ids) & set(other_run)))


def check_openai_error_body(cid, body, param, code):
    e = body.get("error") if isinstance(body, dict) else None
    check(list(body) == ["error"] and isinstance(e, dict) and set(e) == OPENAI_ERROR_KEYS,
          "%s: not OpenAI's error body: %r" % (cid, body))
    check(e["param"] == param and e["code"] == code,
          "%s: param/code not passed through: %r, want %r/%r" % (cid, e, param, code))


def by_id(rows):
    return {r["custom_id"]: r for r in rows}


# ---------------------------------------------------------------- fake worker

class FakeWorker(threading.Thread):
    """A protocol worker in a thread: answers each req by its prompt's
    keyword, remembers what it sent (bodies by request_id) and the traces
    it received."""

    NAME = "outline-fake"

    def __init__(self, backend, model):
        super().__init__(daemon=True)
        import msgpack
        import zmq
        self.msgpack = msgpack
        self.zmq = zmq
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.IDENTITY, ("%s-%d" % (self.NAME, os.getpid())).encode())
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(backend)
        self.model = model
        self.stop = threading.Event()
        self.sent = {}          # request_id -> body sent
        self.reqs = 0           # reqs received
        self.n = 0

    def send(self, header, payload=None):
        frames = [self.msgpack.packb(dict({"v": 1}, **header), use_bin_type=True)]
        if payload is not None:
            frames.append(self.msgpack.packb(payload, use_bin_type=True))
        self.sock.send_multipart(frames)

    def hello(self):
        self.send({"t": "hello", "worker": self.NAME, "pool": "fake", "provider": "echo",
                   "models": [self.model], "capacity": 16, "version": "test"})
        self.send({"t": "credit", "n": 16})

    def answer(self, h, body):
        self.n += 1
        self.reqs += 1
        rid = "req_fake_%d" % self.n
        text = body["messages"][-1]["content"]
        res = {"t": "res", "id": h["id"], "attempts": 2, "request_id": rid}
        if "FAIL400" in text:
            ebody = {"error": {"message": "Invalid 'temperature': 9 > 2.", "type":
                               "invalid_request_error", "param": "temperature",
                               "code": "invalid_value"}}
            self.sent[rid] = ebody
            res.update(ok=False, error={"code": "invalid_request", "message": "bad temperature",
                                        "status": 400, "retryable": False, "body": ebody})
            return self.send(res)
        if "NOREQID429" in text:
            del res["request_id"]
            res.update(ok=False, error={"code": "rate_limited", "message": "slow down",
                                        "status": 429, "retryable": False})
            return self.send(res)
        if "TIMEOUT" in text:
            res.update(ok=False, error={"code": "timeout", "message": "provider timed out",
                                        "status": 0, "retryable": False})
            return self.send(res)
        out = {"id": "chatcmpl-fake-%d" % self.n, "object": "chat.completion",
               "model": self.model, "rid": rid, "trace_seen": h.get("trace"),
               "choices": [{"index": 0, "message": {"role": "assistant",
                                                    "content": "\u00e9\u2028 \"q\" \\ \x01"},
                            "finish_reason": "stop"}],
               "x": [0.1, -7, 2 ** 63 - 1, None, True, {}, []],
               "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}}
        self.sent[rid] = out
        res.update(ok=True, usage={"prompt_tokens": 3, "completion_tokens": 5,
                                   "total_tokens": 8, "cost_usd": 0.00125})
        if "ALIAS" in text:
            res["model"] = "real-model"
        if "CACHED" in text:
            res["cached"] = True
        self.send(res, out)

    def run(self):
        self.hello()
        next_hb = 0.0
        while not self.stop.is_set():
            if time.monotonic() >= next_hb:
                self.send({"t": "hb", "healthy": True})
                next_hb = time.monotonic() + 0.2
            if not self.sock.poll(100):
                continue
            frames = self.sock.recv_multipart()
            h = self.msgpack.unpackb(frames[0], raw=False)
            if h["t"] == "req":
                self.answer(h, self.msgpack.unpackb(frames[1], raw=False))
                self.send({"t": "credit", "n": 1})
            elif h["t"] == "error" and h.get("message") == "hello first":
                self.hello()
        self.sock.close()


def write_lines(path, lines):
    with open(path, "w") as f:
        for line in lines:
            f.write((line if isinstance(line, str) else json.dumps(line)) + "\n")


def fake_input(path):
    write_lines(path, [
        {"custom_id": "ok-%d" % i, "prompt": "hello %d" % i} for i in range(5)] + [
        {"custom_id": "alias", "prompt": "ALIAS"},
        {"custom_id": "cached", "prompt": "CACHED"},
        {"custom_id": "traced", "prompt": "hi", "metadata": {"traceparent": GIVEN_TRACE}},
        {"custom_id": "fail400", "prompt": "FAIL400"},
        {"custom_id": "noreqid429", "prompt": "NOREQID429"},
        {"custom_id": "timeout", "prompt": "TIMEOUT"},
        {"custom_id": "bad-url", "url": "/v1/images", "body": {}}])


def check_fake_ok(w, cid, r):
    resp, x = r["response"], r["llmq"]
    check(r["error"] is None and resp["status_code"] == 200, "%s: %r" % (cid, r))
    rid = resp["request_id"]
    check(rid in w.sent and resp["body"] == w.sent[rid],
          "%s: body not the worker's, byte for byte: %r" % (cid, resp))
    check(TRACE_RE.match(x["traceparent"] or "") and x["traceparent"] == resp["body"]["trace_seen"],
          "%s: traceparent %r, on the wire %r" % (cid, x["traceparent"], resp["body"]["trace_seen"]))
    check(x["cost_usd"] == 0.00125 and x["attempts"] == 2 and x["worker"] == FakeWorker.NAME,
          "%s: llmq %r" % (cid, x))
    check(x["model"] == ("real-model" if cid == "alias" else MODEL), "%s: model %r" % (cid, x))
    check(x["cached"] == (cid == "cached"), "%s: cached %r" % (cid, x))


def check_fake_rows(w, rows):
    check([r["custom_id"] for r in rows][:5] == ["ok-%d" % i for i in range(5)], "order")
    rows_by = by_id(rows)
    for r in rows:
        check_shape(r)
    for cid in ["ok-%d" % i for i in range(5)] + ["alias", "cached", "traced"]:
        check_fake_ok(w, cid, rows_by[cid])
    check(rows_by["traced"]["llmq"]["traceparent"] == GIVEN_TRACE, "the line's own traceparent")
    traces = [r["llmq"]["traceparent"] for r in rows if r["llmq"]["traceparent"]]
    check(len(set(traces)) == len(traces), "a traceparent per line: %r" % traces)
    r = rows_by["fail400"]
    check(r["error"] is None and r["response"]["status_code"] == 400, "fail400: %r" % r)
    check(r["response"]["body"] == w.sent[r["response"]["request_id"]], "fail400 body: %r" % r)
    check_openai_error_body("fail400", r["response"]["body"], "temperature", "invalid_value")
    check(r["llmq"]["error_code"] == "invalid_request", "fail400 llmq: %r" % r)
    r = rows_by["noreqid429"]   # an older worker: the body is rebuilt
    check(r["error"] is None and r["response"]["status_code"] == 429 and
          r["response"]["request_id"] == "", "noreqid429: %r" % r)
    check_openai_error_body("noreqid429", r["response"]["body"], None, None)
    check(r["response"]["body"]["error"]["message"] == "slow down", "noreqid429 message")
    for cid, code in (("timeout", "timeout"), ("bad-url", "invalid_request")):
        r = rows_by[cid]
        check(r["response"] is None and r["error"]["code"] == code, "%s: %r" % (cid, r))


def test_fake():
    try:
        import msgpack  # noqa: F401
        import zmq  # noqa: F401
    except ImportError as e:
        llmqtest.skip("python3-zmq and python3-msgpack are needed: %s" % e)
    tmp = temp_dir("llmq-outline-fake-")
    inp, out, out2 = (os.path.join(tmp, n) for n in ("in.jsonl", "out.jsonl", "out2.jsonl"))
    fake_input(inp)
    broker = Broker()
    w = FakeWorker(broker.backend, MODEL)
    w.start()
    try:
        args = ["--broker", broker.frontend, "--model", MODEL, "--quiet"]
        rc, _, stderr = run_llmq(["run", inp, "-o", out] + args)
        check(rc == 1, "exit code %d (1: failed lines); %s" % (rc, stderr))
        rows = read_jsonl(out)
        check(len(rows) == 12, "%d lines" % len(rows))
        check_fake_rows(w, rows)
        check_ids(rows)
        # A second run: new ids, new traceparents (except the line's own).
        rc, _, stderr = run_llmq(["run", inp, "-o", out2] + args)
        rows2 = read_jsonl(out2)
        check_fake_rows(w, rows2)
        check_ids(rows2, [r["id"] for r in rows])
        t1 = {r["llmq"]["traceparent"] for r in rows if r["custom_id"] != "traced"} - {None}
        check(not t1 & {r["llmq"]["traceparent"] for r in rows2}, "traceparents repeat across runs")
        # Resume reads the lines back: HTTP errors (error null) count as
        # failed lines, and --retry-failed runs them again.
        reqs = w.reqs
        rc, _, stderr = run_llmq(["run", inp, "-o", out] + args)
        check(rc == 1 and "already complete: 12 lines, 8 ok, 4 failed" in stderr,
              "rerun: rc %d, %s" % (rc, stderr))
        check(w.reqs == reqs, "a complete OUT sent requests again")
        rc, _, stderr = run_llmq(["run", inp, "-o", out, "--retry-failed"] + args)
        check(w.reqs == reqs + 3, "--retry-failed sent %d requests, want 3" % (w.reqs - reqs))
        check_fake_rows(w, read_jsonl(out))
        print("client.outline.fake: %d lines, every field as OpenAI's; ids and traces unique "
              "per line and run; resume counts HTTP errors as failed" % len(rows))
    finally:
        w.stop.set()
        w.join(5)


# ---------------------------------------------------------------- real worker

def test_sim():
    tmp = temp_dir("llmq-outline-sim-")
    inp, out = os.path.join(tmp, "in.jsonl"), os.path.join(tmp, "out.jsonl")
    write_lines(inp, [
        {"custom_id": "ok-%d" % i, "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": MODEL, "messages": [{"role": "user", "content": "q %d" % i}],
                  "max_tokens": 8}} for i in range(4)] + [
        {"custom_id": "traced", "prompt": "hi", "metadata": {"traceparent": GIVEN_TRACE}},
        {"custom_id": "ctx", "prompt": "long [[sim:context_length]]"},
        {"custom_id": "auth", "prompt": "key [[sim:fail=401]]"},
        {"custom_id": "reset", "prompt": "gone [[sim:reset=1000]]"},
        {"custom_id": "nomodel", "prompt": "x", "model": "no-such-model"}])
    cluster = Cluster(workers=1, capacity=8, broker_flags=("--no-worker-wait-ms", "300"))
    try:
        # No --model: each line's own (sim-model: the cluster's default).
        rc, _, stderr = run_llmq(["run", inp, "-o", out, "--broker", cluster.broker.frontend,
                                  "--quiet"], timeout=180)
        check(rc == 1, "exit code %d (1: failed lines); %s" % (rc, stderr))
        rows = read_jsonl(out)
        check(len(rows) == 9, "%d lines" % len(rows))
        for r in rows:
            check_shape(r)
        check_ids(rows)
        rows_by = by_id(rows)
        for cid in ["ok-%d" % i for i in range(4)] + ["traced"]:
            r = rows_by[cid]
            check(r["error"] is None and r["response"]["status_code"] == 200 and
                  r["response"]["body"]["object"] == "chat.completion", "%s: %r" % (cid, r))
            check(TRACE_RE.match(r["llmq"]["traceparent"] or ""), "%s: trace %r" % (cid, r))
            check(r["llmq"]["model"] == MODEL and r["llmq"]["worker"], "%s: %r" % (cid, r))
        check(rows_by["traced"]["llmq"]["traceparent"] == GIVEN_TRACE, "the line's traceparent")
        for cid, status in (("ctx", 400), ("auth", 401)):
            r = rows_by[cid]
            check(r["error"] is None and r["response"]["status_code"] == status and
                  isinstance(r["response"]["body"].get("error"), dict), "%s: %r" % (cid, r))
        r = rows_by["reset"]
        check(r["response"] is None and r["error"]["code"], "no HTTP answer: %r" % r)
        r = rows_by["nomodel"]      # llmq's own refusal: no provider involved
        check(r["response"] is None and r["error"]["code"] == "not_found" and
              r["llmq"]["error_code"] == "not_found" and r["llmq"]["worker"] is None,
              "no worker for the model: %r" % r)
        # What only a worker that passes them on can give: the provider's
        # x-request-id and its error body (res request_id, error.body).
        rids = [r["response"]["request_id"] for r in rows if r["response"]]
        if not any(rid.startswith("req_sim") for rid in rids):
            llmqtest.skip("the worker sends no res request_id (x-request-id): request ids %r; "
                          "every other check passed" % rids)
        check(all(rid.startswith("req_sim") for rid in rids), "request ids: %r" % rids)
        check(len(set(rids)) == len(rids), "request ids repeat: %r" % rids)
        check_openai_error_body("ctx", rows_by["ctx"]["response"]["body"], "messages",
                                "context_length_exceeded")
        check_openai_error_body("auth", rows_by["auth"]["response"]["body"], None,
                                "invalid_api_key")
        print("client.outline.sim: %d lines as OpenAI's, request ids and error bodies passed "
              "through" % len(rows))
    finally:
        cluster.close()


if __name__ == "__main__":
    llmqtest.main_cases({"fake": test_fake, "sim": test_sim})
