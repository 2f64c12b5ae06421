"""llmq-gateway over plain HTTP: error shapes and statuses of both APIs
(401, 404 model_not_found, 400 bad JSON, 400 with the provider's refusal,
429 + retry-after when the broker is overloaded, 405), x-request-id,
traceparent, the key file reloaded without restart, the Anthropic stream's
raw event order, and the limits: body size, header size, connections, time,
and an HTTP client that disconnects cancels its broker request."""
import json
import signal
import socket
import threading
import time

from gwlib import KEY, MODEL, GwCluster, check, wait_until

CHAT = "/v1/chat/completions"


def chat_body(text, **kw):
    body = {"model": MODEL, "messages": [{"role": "user", "content": text}], "max_tokens": 5}
    body.update(kw)
    return body


def openai_error(data, code=None):
    check(isinstance(data, dict) and isinstance(data.get("error"), dict), "OpenAI error shape: %r" % data)
    e = data["error"]
    check(set(("message", "type", "param", "code")) <= set(e), "OpenAI error keys: %r" % e)
    if code:
        check(e["code"] == code, "code %r, want %r" % (e["code"], code))


def anthropic_error(data, etype):
    check(isinstance(data, dict) and data.get("type") == "error", "Anthropic error shape: %r" % data)
    check(data["error"]["type"] == etype and data["error"]["message"], "Anthropic error %r" % data)


def worker_busy(c):
    st = c.status()
    return st is None or any(w.get("in_flight", 0) for w in st.get("workers", []))


def test_auth_and_ids(c):
    gw = c.gateway
    st, h, data = gw.json("POST", CHAT, chat_body("x"), {"Authorization": None})
    check(st == 401 and h.get("x-request-id"), "no key: 401 with x-request-id")
    openai_error(data, "invalid_api_key")
    st, h, data = gw.json("POST", "/v1/messages", {"model": MODEL, "max_tokens": 5, "messages": []},
                          {"Authorization": None, "x-api-key": "wrong", "anthropic-version": "2023-06-01"})
    check(st == 401, "bad x-api-key: 401")
    anthropic_error(data, "authentication_error")
    st, h, data = gw.json("POST", CHAT, chat_body("hello"), {"x-request-id": "my-req-42",
                          "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"})
    check(st == 200 and h.get("x-request-id") == "my-req-42", "x-request-id echoed: %r" % h)
    # A new key works once the gateway sees the file changed: no restart.
    with open(c.keys, "a") as f:
        f.write("sk-added-later tenant-b\n")
    wait_until("the new key accepted", lambda: gw.request(
        "GET", "/v1/models", headers={"Authorization": "Bearer sk-added-later"})[0] == 200, 10)
    # Each key's tenant goes to the broker with the request (the declared
    # tenant, PROTOCOL.md); the broker runs --verbose here and prints it.
    st, _, _ = gw.json("POST", CHAT, chat_body("for tenant b"),
                       {"Authorization": "Bearer sk-added-later"})
    check(st == 200, "tenant b's chat")
    log = c.broker.stderr()
    check('tenant: "tenant-a"' in log and 'tenant: "tenant-b"' in log,
          "both keys' tenants reached the broker")
    check("sk-added-later" not in log and KEY not in log, "no API key in the broker's log")
    print("ok auth, key reload, x-request-id, tenants")


def test_error_shapes(c):
    gw = c.gateway
    st, _, data = gw.json("POST", CHAT, chat_body("x", model="no-such-model"))
    check(st == 404, "unknown model 404")
    openai_error(data, "model_not_found")
    st, _, data = gw.json("POST", "/v1/messages", {"model": "no-such-model", "max_tokens": 5,
                                                  "messages": [{"role": "user", "content": "x"}]})
    check(st == 404, "anthropic unknown model 404")
    anthropic_error(data, "not_found_error")
    st, _, data = gw.json("POST", CHAT, "{not json")
    check(st == 400, "bad JSON 400")
    openai_error(data)
    st, _, data = gw.json("POST", CHAT, chat_body("refuse this [[sim:fail=400]]"))
    check(st == 400, "provider refusal 400, got %d" % st)
    openai_error(data)
    check("Simulated bad request" in data["error"]["message"], "provider's message kept: %r" % data)
    st, _, data = gw.json("POST", "/v1/messages", {"model": MODEL, "max_tokens": 5,
                                                  "messages": [{"role": "user", "content": "no [[sim:fail=400]]"}]})
    check(st == 400, "anthropic provider refusal 400")
    anthropic_error(data, "invalid_request_error")
    st, _, data = gw.json("GET", CHAT)
    check(st == 405, "GET on a POST route: 405")
    st, _, data = gw.json("GET", "/v1/nothing")
    check(st == 404, "unknown route 404")
    openai_error(data)
    print("ok error shapes")


def test_anthropic_stream_order(c):
    gw = c.gateway
    st, h, data = gw.request("POST", "/v1/messages", {"model": MODEL, "max_tokens": 4, "stream": True,
                                                     "messages": [{"role": "user", "content": "s"}]})
    check(st == 200 and h["content-type"].startswith("text/event-stream"), "SSE answer")
    events = [l[7:] for l in data.decode().split("\n") if l.startswith("event: ")]
    order = []
    for e in events:
        if not order or order[-1] != e:
            order.append(e)
    want = ["message_start", "content_block_start", "ping", "content_block_delta",
            "content_block_stop", "message_delta", "message_stop"]
    check(order == want, "event order %r" % order)
    st, _, data = gw.request("POST", CHAT, chat_body("s", stream=True))
    lines = [l for l in data.decode().split("\n") if l.startswith("data: ")]
    check(lines[-1] == "data: [DONE]", "OpenAI stream ends with [DONE]")
    print("ok stream formats")


def test_body_and_header_limits(c):
    gw = c.gateway
    st, _, _ = gw.request("POST", CHAT, json.dumps(chat_body("x" * 200000)))
    check(st == 413, "body over --max-body: 413, got %d" % st)
    st, _, _ = gw.request("GET", "/v1/models", headers={"X-Big": "y" * 40000})
    check(st in (400, 413, 431), "headers over --max-headers refused, got %d" % st)
    print("ok body and header limits")


def test_time_limit(c):
    gw = c.gateway
    t0 = time.monotonic()
    st, h, data = gw.json("POST", CHAT, chat_body("slow [[sim:delay_ms=20000]]"))
    elapsed = time.monotonic() - t0
    check(st == 504 and elapsed >= 0.9, "time limit: 504 after ~1 s, got %d after %.1f" % (st, elapsed))
    openai_error(data, "timeout")
    check(h.get("x-request-id"), "x-request-id on a 504")
    # Cancelled at the broker: nothing left at the worker (it would hold
    # the request 20 s).
    wait_until("the request cancelled", lambda: not worker_busy(c), 15)
    print("ok time limit cancels")


def test_disconnect_cancels(c):
    gw = c.gateway
    body = json.dumps(chat_body("leave [[sim:delay_ms=30000]]")).encode()
    s = socket.create_connection((gw.host, gw.port))
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + KEY.encode() +
              b"\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)

    wait_until("the request at a worker", lambda: worker_busy(c), 10)
    s.close()
    # The worker would hold it 30 s; the cancel frees it long before.
    wait_until("the request cancelled", lambda: not worker_busy(c), 15)
    print("ok disconnect cancels the broker request")


def test_connection_limit(c):
    gw = c.gateway
    held = []
    for _ in range(3):  # --max-conns 3
        s = socket.create_connection((gw.host, gw.port))
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        check(b"200" in s.recv(4096), "health on a kept-alive connection")
        held.append(s)
    st, h, data = gw.json("GET", "/v1/models")
    check(st == 503, "fourth connection refused with 503, got %d" % st)
    openai_error(data, "too_many_connections")
    for s in held:
        s.close()
    wait_until("a connection slot again", lambda: gw.request("GET", "/v1/models")[0] == 200, 10)
    print("ok connection limit")


def test_overloaded(c):
    gw = c.gateway
    results = []

    def one(i):
        results.append(gw.request("POST", CHAT, chat_body("busy %d [[sim:delay_ms=1500]]" % i)))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    limited = [r for r in results if r[0] == 429]
    check(limited, "some requests 429 when the broker queue is full: %r" % [r[0] for r in results])
    check(all(r[1].get("retry-after") for r in limited), "429 carries retry-after")
    openai_error(json.loads(limited[0][2]), "overloaded")
    check(any(r[0] == 200 for r in results), "the others are served")
    print("ok overloaded -> 429 + retry-after")


def test_drain(c):
    """SIGTERM: no new connections, the request in flight still answered,
    then the gateway exits on its own."""
    gw = c.gateway
    results = []
    t = threading.Thread(target=lambda: results.append(
        gw.request("POST", CHAT, chat_body("drain [[sim:delay_ms=1500]]"))))
    t.start()
    wait_until("the request at a worker", lambda: worker_busy(c), 10)
    gw.proc.send_signal(signal.SIGTERM)

    def refused():
        try:
            socket.create_connection((gw.host, gw.port), timeout=1).close()
            return False
        except OSError:
            return True
    wait_until("the listening socket closed", refused, 10)
    t.join(30)
    check(results and results[0][0] == 200, "request in flight answered during the drain: %r" % results)
    check(gw.proc.wait(timeout=15) == 0, "gateway exits 0 after the drain")
    print("ok SIGTERM drains")


def test_json_logs(c):
    """--json-logs --verbose: every stderr line of the gateway is one JSON
    object (ts, level, component, event); a request is a `request` event
    with its id, method and path; a key file reload says how many keys as
    a JSON number."""
    gw = c.gateway
    st, _, _ = gw.json("GET", "/v1/models", headers={"Authorization": "Bearer " + KEY})
    check(st == 200, "models with the key")
    with open(c.keys, "a") as f:
        f.write("sk-json-logs tenant-j\n")
    wait_until("the added key accepted", lambda: gw.request(
        "GET", "/v1/models", headers={"Authorization": "Bearer sk-json-logs"})[0] == 200, 10)
    events = {}
    for line in gw.stderr().splitlines():
        if line.strip():
            o = json.loads(line)        # every line is JSON
            check(o["component"] == "llmq-gateway" and o["level"] in ("info", "warn", "error")
                  and o["ts"].endswith("Z"), "log line: %r" % line)
            events.setdefault(o["event"], []).append(o)
    check(any(e["method"] == "GET" and e["path"] == "/v1/models" and e["rid"].startswith("req_")
              for e in events.get("request", [])), "request events: %r" % events.get("request"))
    reload = events.get("keys_reloaded", [])
    check(reload and isinstance(reload[-1]["keys"], int) and reload[-1]["keys"] >= 2,
          "keys_reloaded with a count: %r" % reload)
    check("sk-json-logs" not in gw.stderr() and KEY not in gw.stderr(), "no API key in the log")
    print("ok JSON logs")


def main():
    c = GwCluster(workers=1, capacity=2, broker_flags=("--max-queue", "2", "--verbose"),
                  gateway_flags=("--max-body", "65536", "--max-headers", "16384",
                                 "--max-conns", "3", "--timeout-ms", "1000"))
    try:
        test_auth_and_ids(c)
        test_error_shapes(c)
        test_anthropic_stream_order(c)
        test_body_and_header_limits(c)
        test_time_limit(c)
        test_disconnect_cancels(c)
        test_connection_limit(c)
        # no connection or time limits; JSON logs, every request logged
        c.gateway_flags = ("--keys", c.keys, "--json-logs", "--verbose")
        c.restart_gateway()
        test_overloaded(c)
        test_json_logs(c)
        test_drain(c)
    finally:
        c.close()
    print("gateway http: ok")


if __name__ == "__main__":
    main()
