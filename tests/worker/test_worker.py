"""Integration tests: the real llmq-worker against the real llmq-sim, driven
through a ROUTER harness that speaks the wire protocol (wharness.py).

Usage: test_worker.py GROUP  (one ctest per group: worker.<group>)."""
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from wharness import Harness, Sim, check, content, read_line  # noqa: E402
import llmqtest  # noqa: E402  (tests/lib, on the path through wharness)

FAST = ["--retry-base-ms", "20", "--retry-cap-ms", "100"]


def with_sim(sim_flags, worker_flags, fn, env=None):
    sim = Sim(*sim_flags)
    h = None
    try:
        h = Harness("--provider", "sim", "--base-url", sim.base, "--model", "sim-small",
                    *worker_flags, env=env)
        fn(sim, h)
        check(h.terminate() == 0, "worker exit code on SIGTERM")
    finally:
        if h:
            h.close()
        sim.close()


def t_success(sim, h):
    hello = h.hello
    check(hello["provider"] == "sim" and hello["models"] == ["sim-small"], "hello fields")
    check(hello["capacity"] == 256 and hello["version"], "hello capacity/version")
    h.wait(lambda: h.credit > 0, 10, "credit after hello")
    for i in range(5):
        hd, body = h.chat("ok%d" % i, "hello %d" % i)
        check(hd["ok"] is True, "ok: %r" % (hd,))
        check(content(body).startswith("sim-"), "content from the sim")
        check(hd["attempts"] == 1 and hd["worker"] == hello["worker"], "attempts/worker")
        u = hd["usage"]
        check(u["prompt_tokens"] > 0 and u["completion_tokens"] > 0 and
              u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], "usage")
        check(abs(u["cost_usd"] - (u["prompt_tokens"] * 1.0 + u["completion_tokens"] * 2.0) / 1e6) < 1e-12,
              "cost from the pricing table: %r" % u)
        check(hd["latency_ms"] >= 0, "latency")
    # completion and embedding ops
    h.req("c1", {"prompt": "once upon", "max_tokens": 8}, op="completion")
    hd, body = h.result("c1")
    check(hd["ok"] and body["object"] == "text_completion", "completion: %r" % (body,))
    h.req("e1", {"input": ["a", "b"]}, op="embedding", model="text-embedding-3-small")
    hd, body = h.result("e1")
    check(hd["ok"] and len(body["data"]) == 2, "embedding: %r" % (body,))
    # heartbeats carry health and in-flight
    h.wait(lambda: len(h.hbs) > 0, 5, "heartbeat")
    check(h.hbs[-1]["healthy"] is True and "in_flight" in h.hbs[-1], "hb fields")


def success():
    cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    cfg.write("pricing:\n  - {model: sim-small, input: 1.0, output: 2.0}\n")
    cfg.close()
    try:
        with_sim([], ["--config", cfg.name], t_success)
    finally:
        os.unlink(cfg.name)


def t_stream(sim, h):
    h.req("s1", {"messages": [{"role": "user", "content": "tell me"}], "max_tokens": 12}, stream=True)
    hd, body = h.result("s1")
    check(hd["ok"], "stream res ok")
    chunks = h.chunks.get("s1", [])
    check(len(chunks) >= 3, "chunks relayed: %d" % len(chunks))
    check([c[0]["seq"] for c in chunks] == list(range(len(chunks))), "seq 0..n in order")
    text = "".join((c[1]["choices"][0]["delta"].get("content") or "")
                   for c in chunks if c[1].get("choices"))
    check(text == content(body) and text.startswith("sim-"), "assembled body = chunks")
    check(hd["usage"]["completion_tokens"] > 0, "stream usage")
    check(body["usage"]["total_tokens"] == hd["usage"]["total_tokens"], "usage in body")


def stream():
    with_sim([], [], t_stream)


def t_faults(sim, h):
    # 500 twice, then success: three attempts
    hd, body = h.chat("f500", "[[sim:fail=500x2]] please")
    check(hd["ok"] and hd["attempts"] == 3, "500x2 then ok: %r" % (hd,))
    # 503 and 529 are retried too
    hd, _ = h.chat("f503", "[[sim:fail=503x1]] please")
    check(hd["ok"] and hd["attempts"] == 2, "503x1: %r" % (hd,))
    # 429 with retry-after 1: retried after at least that long
    hd, _ = h.chat("f429", "[[sim:fail=429x1]] please")
    check(hd["ok"] and hd["attempts"] == 2, "429x1: %r" % (hd,))
    check(hd["latency_ms"] >= 900, "retry-after honoured (%d ms)" % hd["latency_ms"])
    # hang -> timeout -> retry
    hd, _ = h.chat("fhang", "[[sim:hang=1]] please")
    check(hd["ok"] and hd["attempts"] == 2, "hang then ok: %r" % (hd,))
    # broken JSON once, then fine; broken every time: provider_error after retries
    hd, _ = h.chat("fmal", "[[sim:malformed=1]] please")
    check(hd["ok"] and hd["attempts"] == 2, "malformed then ok: %r" % (hd,))
    hd, _ = h.chat("fmal9", "[[sim:malformed=9]] please")
    check(not hd["ok"] and hd["error"]["code"] == "provider_error" and hd["attempts"] == 3,
          "malformed always: %r" % (hd,))
    check(hd["error"]["retryable"] is True, "provider_error is retryable")
    # connection reset once
    hd, _ = h.chat("freset", "[[sim:reset=1]] please")
    # (curl itself may resend on a fresh connection when a reused one died)
    check(hd["ok"] and hd["attempts"] in (1, 2), "reset then ok: %r" % (hd,))
    # permanent 400: one attempt, not retryable, provider status kept
    hd, _ = h.chat("f400", "[[sim:fail=400]] please")
    check(not hd["ok"] and hd["attempts"] == 1, "400 not retried: %r" % (hd,))
    e = hd["error"]
    check(e["code"] == "invalid_request" and e["status"] == 400 and e["retryable"] is False,
          "400 classified: %r" % (e,))
    hd, _ = h.chat("fctx", "[[sim:context_length]] please")
    check(hd["error"]["code"] == "context_length" and hd["attempts"] == 1, "context_length: %r" % (hd,))
    hd, _ = h.chat("f401", "[[sim:fail=401]] please")
    check(hd["error"]["code"] == "auth" and hd["attempts"] == 1, "401 -> auth: %r" % (hd,))
    # 500 every time: provider_error after max attempts
    hd, _ = h.chat("f500x9", "[[sim:fail=500x9]] please")
    check(not hd["ok"] and hd["error"]["code"] == "provider_error" and hd["error"]["status"] == 500
          and hd["attempts"] == 3, "500 always: %r" % (hd,))
    # a deadline shorter than a hang: deadline_exceeded, never a late answer
    h.req("fdl", {"messages": [{"role": "user", "content": "[[sim:hang=1]] slow"}]}, deadline_ms=300)
    hd, _ = h.result("fdl")
    check(not hd["ok"] and hd["error"]["code"] == "deadline_exceeded", "deadline: %r" % (hd,))
    # cancel: the transfer is aborted and answered cancelled
    h.req("fcan", {"messages": [{"role": "user", "content": "[[sim:delay_ms=5000]] wait"}]})
    h.pump(0.2)
    h.send("cancel", id="fcan")
    hd, _ = h.result("fcan", timeout=3)
    check(hd["error"]["code"] == "cancelled", "cancel: %r" % (hd,))
    # trace context: a good traceparent is passed on, a bad one ignored
    tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    h.req("ftrace", {"messages": [{"role": "user", "content": "t"}]}, trace=tp)
    check(h.result("ftrace")[0]["ok"], "traceparent")
    h.req("fbadtrace", {"messages": [{"role": "user", "content": "t"}]}, trace="x\r\nX-Evil: 1")
    check(h.result("fbadtrace")[0]["ok"], "bad trace ignored")
    # bad payload
    h.wait(lambda: h.credit > 0, 10, "credit")
    h.credit -= 1
    h.send("req", [1, 2, 3], id="fbad", op="chat", model="sim-small")
    hd, _ = h.result("fbad")
    check(hd["error"]["code"] == "invalid_request", "bad payload: %r" % (hd,))


def faults():
    with_sim([], FAST + ["--timeout-ms", "1500", "--max-attempts", "3",
                         "--breaker-failures", "100"], t_faults)


# The limiter's bucket holds --burst-ms (default 1000) of the rate: at rpm R
# a fresh worker may start R/60 requests at once, then R/60 a second. So n
# requests take at least (n - burst) / rate, however fast the machine: a
# lower bound on the elapsed time proves the limiting (a slow machine can
# only make it longer). The counts are several times the burst, so without
# the limiter the bound fails by far (the sim answers in milliseconds).
RATE_RPM = 600          # 10 a second, burst 10
RATE_N = 50             # >= (50 - 10) / 10 = 4 s


def t_rpm(sim, h):
    import time
    check(h.hello["limits"]["rpm"] == RATE_RPM, "hello announces the key's rpm")
    t0 = time.monotonic()
    for i in range(RATE_N):
        h.req("r%d" % i, {"messages": [{"role": "user", "content": "n %d" % i}], "max_tokens": 4},
              timeout=30)
    for i in range(RATE_N):
        hd, _ = h.result("r%d" % i)
        check(hd["ok"] and hd["attempts"] == 1, "rpm request ok: %r" % (hd,))
    elapsed = time.monotonic() - t0
    burst = RATE_RPM * 1000 / 60000
    bound = (RATE_N - burst) / (RATE_RPM / 60.0)
    print("worker.rpm: %d requests at %d rpm in %.2f s (lower bound %.2f s)"
          % (RATE_N, RATE_RPM, elapsed, bound))
    check(elapsed >= bound - 0.05, "%d requests at %d rpm took %.2f s < %.2f s: not limited"
          % (RATE_N, RATE_RPM, elapsed, bound))
    st = sim.stats()
    check(st["rate_limited_429"] == 0, "no 429 from the sim: %r" % st)
    # every credit was backed by the limiter: never more than its burst + 1 s
    check(max(m[0]["n"] for m in h.received if m[0]["t"] == "credit") <= 2 * burst + 1,
          "credit follows the limiter")


TPM = 12000             # 200 tokens a second, burst 200


def t_tpm(sim, h):
    # Each request costs at least its max_tokens (the limiter's estimate is
    # prompt chars / 4 + max_tokens; the real usage corrects it, so count
    # min(usage, max_tokens)): n requests need sum - burst tokens of refill,
    # all but the last before it starts.
    import time
    n, max_tokens = 40, 20
    t0 = time.monotonic()
    for i in range(n):
        h.req("t%d" % i, {"messages": [{"role": "user", "content": "tokens please, number %d" % i}],
                          "max_tokens": max_tokens}, timeout=30)
    charged = []
    for i in range(n):
        hd, _ = h.result("t%d" % i)
        check(hd["ok"] and hd["attempts"] == 1, "tpm request ok: %r" % (hd,))
        charged.append(min(hd["usage"]["total_tokens"], max_tokens))
    elapsed = time.monotonic() - t0
    burst = TPM * 1000 / 60000
    bound = (sum(sorted(charged)[:-1]) - burst) / (TPM / 60.0)
    print("worker.tpm: %d requests (%d tokens) at %d tpm in %.2f s (lower bound %.2f s)"
          % (n, sum(charged), TPM, elapsed, bound))
    check(bound > 2.0, "the tpm test no longer exceeds the burst: bound %.2f s" % bound)
    check(elapsed >= bound - 0.05, "%d requests at %d tpm took %.2f s < %.2f s: not limited"
          % (n, TPM, elapsed, bound))
    st = sim.stats()
    check(st["rate_limited_429"] == 0, "no 429 from the sim: %r" % st)


def rpm():
    with_sim(["--rpm", str(RATE_RPM)], ["--rpm", str(RATE_RPM)], t_rpm)
    with_sim(["--tpm", str(TPM)], ["--tpm", str(TPM)], t_tpm)


def t_capacity(sim, h):
    """A req beyond the worker's capacity (the broker never sends one) is
    answered `overloaded` (retryable) at once; the ones within are served."""
    cap = h.hello["capacity"]
    h.wait(lambda: h.credit >= cap, 10, "full credit")
    for i in range(cap + 2):     # credit ignored on purpose for the last two
        h.send("req", {"messages": [{"role": "user", "content": "slow %d [[sim:delay_ms=1500]]" % i}],
                       "max_tokens": 4}, id="c%d" % i, op="chat", model="sim-small", attempt=1)
    for i in (cap, cap + 1):
        hd, _ = h.result("c%d" % i, timeout=10)
        check(not hd["ok"] and hd["error"]["code"] == "overloaded" and hd["error"]["retryable"],
              "req past capacity: %r" % (hd,))
    for i in range(cap):
        hd, _ = h.result("c%d" % i, timeout=30)
        check(hd["ok"], "req within capacity: %r" % (hd,))
    # At once, not after a slot freed: in the order the worker sent them
    # (h.received keeps it, however late this process reads), the refusals
    # come before the first held answer.
    order = [m[0]["id"] for m in h.received if m[0]["t"] == "res"]
    first_held = min(order.index("c%d" % i) for i in range(cap))
    check(order.index("c%d" % cap) < first_held and order.index("c%d" % (cap + 1)) < first_held,
          "overloaded answered only after a held request finished: %r" % order)


def capacity():
    with_sim([], ["--capacity", "3"], t_capacity)


def t_breaker(sim, h):
    # three final failures in a row (one attempt each) open the circuit
    for i in range(3):
        hd, _ = h.chat("b%d" % i, "[[sim:fail=500x1]] breaker %d" % i)
        check(not hd["ok"] and hd["error"]["code"] == "provider_error", "failure %d" % i)
    h.wait(lambda: h.hbs and h.hbs[-1]["healthy"] is False, 5, "hb healthy=false")
    # no credit while open (the harness counts what it was granted)
    granted = sum(m[0]["n"] for m in h.received if m[0]["t"] == "credit")
    h.pump(0.3)
    check(sum(m[0]["n"] for m in h.received if m[0]["t"] == "credit") == granted or
          h.hbs[-1]["healthy"], "no credit while the circuit is open")
    # a request sent now (on credit granted before) is held, not failed: the
    # health probe after the cool-down half-opens the circuit and it becomes
    # the trial request
    h.req("held", {"messages": [{"role": "user", "content": "all good now"}]})
    hd, _ = h.result("held", timeout=15)
    check(hd["ok"] and hd["attempts"] == 1, "held request served after recovery: %r" % (hd,))
    h.wait(lambda: h.hbs[-1]["healthy"] is True, 5, "healthy again")
    h.wait(lambda: h.credit >= 8, 5, "credit after the circuit closed")
    hd, _ = h.chat("after", "still good")
    check(hd["ok"], "closed again")
    log = h.stderr()
    check("circuit_open" in log and "circuit_closed" in log, "breaker transitions logged")


def breaker():
    with_sim([], FAST + ["--max-attempts", "1", "--breaker-failures", "3",
                         "--breaker-cooldown-ms", "1500"], t_breaker)
    # the provider stays down: held work is answered (retryable) after two
    # cool-downs, and the worker keeps probing, unhealthy
    sim = Sim()
    h = Harness("--provider", "sim", "--base-url", sim.base, "--model", "sim-small",
                *FAST, "--max-attempts", "1", "--breaker-failures", "2",
                "--breaker-cooldown-ms", "400")
    try:
        for i in range(2):
            h.chat("d%d" % i, "[[sim:fail=500x1]] down %d" % i)
        h.wait(lambda: h.hbs and h.hbs[-1]["healthy"] is False, 5, "open")
        sim.close()
        h.req("held", {"messages": [{"role": "user", "content": "anyone?"}]})
        hd, _ = h.result("held", timeout=10)
        check(not hd["ok"] and hd["error"]["retryable"] and hd["error"]["code"] == "provider_error",
              "held request answered retryable: %r" % (hd,))
        check("health_probe_failed" in h.stderr(), "probes go on")
        check(h.terminate() == 0, "exit 0")
    finally:
        h.close()
        sim.close()


KEY = "sk-llmq-SECRET-7f3a9c2e41d8b6"


def t_secrets(sim, h):
    h.chat("k1", "hello")
    h.chat("k2", "[[sim:fail=500x9]] x")
    h.chat("k3", "[[sim:fail=400]] x")
    h.chat("k4", "[[sim:fail=401]] x")
    h.chat("k5", "[[sim:malformed=9]] x")
    h.req("k6", {"messages": [{"role": "user", "content": "s"}]}, stream=True)
    h.result("k6")


def secrets():
    sim = Sim("--api-key", KEY)
    h = None
    try:
        h = Harness("--provider", "openai", "--base-url", sim.base, "--model", "sim-small",
                    "--verbose", *FAST, "--max-attempts", "2", env={"OPENAI_API_KEY": KEY})
        t_secrets(sim, h)
        check(h.terminate() == 0, "exit 0")
        everything = h.stdout + h.stderr() + repr(h.received)
        check(KEY not in everything, "the API key leaked")
        check(KEY[8:20] not in everything, "part of the API key leaked")
        h.close()
        h = None
        # a rejected key: clear error, exit code 3, and still no key
        h = Harness("--provider", "openai", "--base-url", sim.base, "--model", "m",
                    env={"OPENAI_API_KEY": KEY + "-wrong"}, wait_ready=False)
        rc = h.proc.wait(timeout=20)
        err = h.stderr()
        check(rc == 3, "exit code 3 for a rejected key, got %d: %s" % (rc, err))
        check("API key rejected by %s (401)" % sim.base in err, "clear message: %s" % err)
        check(KEY not in err and KEY not in h.proc.stdout.read().decode(), "key in output")
    finally:
        if h:
            h.close()
        sim.close()


def sim_post(sim, body, key, path="/chat/completions", anthropic=False):
    """POST body to the sim directly: (status, headers, parsed body)."""
    import json
    import urllib.error
    import urllib.request
    headers = {"Content-Type": "application/json"}
    if anthropic:
        headers.update({"x-api-key": key, "anthropic-version": "2023-06-01"})
    else:
        headers["Authorization"] = "Bearer " + key
    req = urllib.request.Request(sim.base + path, data=json.dumps(body).encode(),
                                 headers=headers, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.headers, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.headers, json.loads(e.read())


def t_provider_answer(sim, h):
    # ok: the sim's x-request-id (req_sim<n>, n also in the answer's id)
    hd, body = h.chat("p1", "hello")
    check(hd["ok"] and body["id"].startswith("chatcmpl-sim"), "ok: %r" % (hd,))
    want = "req_sim" + body["id"][len("chatcmpl-sim"):]
    check(hd.get("request_id") == want, "request_id %r, want %r" % (hd.get("request_id"), want))
    # an HTTP error: the body exactly as the sim sends it (code, param kept)
    text = "[[sim:context_length]] too long"
    hd, _ = h.chat("p2", text)
    st, hdrs, direct = sim_post(sim, {"model": "sim-small", "max_tokens": 16,
                                      "messages": [{"role": "user", "content": text}]}, KEY)
    check(st == 400 and direct["error"]["code"] == "context_length_exceeded" and
          direct["error"]["param"] == "messages", "the sim's own error body: %r" % (direct,))
    e = hd.get("error", {})
    check(not hd["ok"] and e.get("status") == 400 and e.get("code") == "context_length",
          "context_length answer: %r" % (hd,))
    check(e.get("body") == direct, "error.body %r, want %r" % (e.get("body"), direct))
    check(str(hd.get("request_id", "")).startswith("req_sim"), "request_id on an error: %r" % (hd,))
    # a key echoed in the provider's error body is redacted there, and only there
    hd, _ = h.chat("p3", "[[sim:fail=400,echo_key=5]] x")
    b = hd.get("error", {}).get("body") or {}
    msg = (b.get("error") or {}).get("message", "")
    check(msg.startswith("AAAAA[redacted]") and b["error"].get("type") == "invalid_request_error"
          and "param" in b["error"] and "code" in b["error"], "scrubbed body: %r" % (b,))
    check(KEY not in repr(h.received) and KEY[8:20] not in repr(h.received), "key in a res")
    # no HTTP answer: no body
    hd, _ = h.chat("p4", "[[sim:reset=9]] x")
    check(not hd["ok"] and "body" not in hd.get("error", {}), "no body without HTTP: %r" % (hd,))


def t_provider_answer_anthropic(sim, h):
    hd, body = h.chat("q1", "hello")
    check(hd["ok"] and str(hd.get("request_id", "")).startswith("req_sim"),
          "anthropic request-id: %r" % (hd,))
    hd, _ = h.chat("q2", "[[sim:fail=400]] x")
    b = hd.get("error", {}).get("body") or {}
    check(b.get("type") == "error" and b.get("error", {}).get("type") == "invalid_request_error",
          "anthropic error body as sent: %r" % (hd,))


def provider_answer():
    sim = Sim("--api-key", KEY, "--api-key", "sk-ant-test")
    h = None
    try:
        h = Harness("--provider", "openai", "--base-url", sim.base, "--model", "sim-small",
                    *FAST, "--max-attempts", "2", env={"OPENAI_API_KEY": KEY})
        t_provider_answer(sim, h)
        check(h.terminate() == 0, "exit 0")
        check(KEY not in h.stdout + h.stderr(), "the API key leaked in logs")
        h.close()
        h = Harness("--provider", "anthropic", "--base-url", sim.base, "--model", "claude-x",
                    *FAST, env={"ANTHROPIC_API_KEY": "sk-ant-test"})
        t_provider_answer_anthropic(sim, h)
        check(h.terminate() == 0, "exit 0")
    finally:
        if h:
            h.close()
        sim.close()
    provider_answer_broker()


def provider_answer_broker():
    """The same fields reach a client through the real broker."""
    import time
    import msgpack
    import zmq
    c = llmqtest.Cluster(workers=1, capacity=8, latency_ms="0")
    d = None
    try:
        d = zmq.Context.instance().socket(zmq.DEALER)
        d.linger = 0
        d.connect(c.broker.frontend)

        def ask(rid, text):
            head = {"v": 1, "t": "req", "id": rid, "op": "chat", "model": llmqtest.MODEL}
            body = {"messages": [{"role": "user", "content": text}], "max_tokens": 8}
            d.send_multipart([msgpack.packb(head), msgpack.packb(body)])
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                if not d.poll(200):
                    continue
                frames = d.recv_multipart()
                h = msgpack.unpackb(frames[0], raw=False)
                if h.get("t") == "res" and h.get("id") == rid:
                    p = msgpack.unpackb(frames[1], raw=False) if len(frames) > 1 else None
                    return h, p
            raise AssertionError("no res for %s" % rid)

        h, body = ask("b1", "hello")
        want = "req_sim" + body["id"][len("chatcmpl-sim"):]
        check(h.get("request_id") == want, "request_id via the broker: %r" % (h,))
        h, _ = ask("b2", "[[sim:context_length]] x")
        e = (h.get("error", {}).get("body") or {}).get("error", {})
        check(e.get("code") == "context_length_exceeded" and e.get("param") == "messages",
              "error.body via the broker: %r" % (h,))
        h, _ = ask("b3", "[[sim:fail=400,echo_key=3]] x")
        e = (h.get("error", {}).get("body") or {}).get("error", {})
        check(e.get("message", "").startswith("AAA[redacted]"), "scrubbed via the broker: %r" % (h,))
    finally:
        if d is not None:
            d.close()
        c.close()


def t_drain(sim, h):
    for i in range(5):
        h.req("d%d" % i, {"messages": [{"role": "user", "content": "[[sim:delay_ms=1500]] %d" % i}]})
    h.pump(0.3)
    h.sigterm()
    h.wait(lambda: any(m[0]["t"] == "bye" for m in h.received), 5, "bye")
    rc = h.terminate(timeout=20)
    check(rc == 0, "exit 0 after drain")
    for i in range(5):
        check(h.results.get("d%d" % i, ({}, None))[0].get("ok"), "in-flight d%d finished" % i)
    bye_at = next(i for i, m in enumerate(h.received) if m[0]["t"] == "bye")
    check(not any(m[0]["t"] == "credit" for m in h.received[bye_at:]), "no credit after bye")


def drain():
    sim = Sim()
    h = Harness("--provider", "sim", "--base-url", sim.base, "--model", "sim-small")
    try:
        t_drain(sim, h)
        # a drain bound: requests still running at the bound are answered failed
        h.close()
        h = Harness("--provider", "sim", "--base-url", sim.base, "--model", "sim-small",
                    "--drain-ms", "300")
        h.req("x", {"messages": [{"role": "user", "content": "[[sim:delay_ms=5000]] x"}]})
        h.pump(0.2)
        rc = h.terminate(timeout=10)
        check(rc == 0, "exit 0 at the drain bound")
        hd = h.results["x"][0]
        check(not hd["ok"] and hd["error"]["retryable"], "abandoned request answered: %r" % hd)
    finally:
        h.close()
        sim.close()


def t_anthropic(sim, h):
    hd, body = h.chat("a1", "hi claude")
    check(hd["ok"] and content(body).startswith("sim-"), "anthropic chat: %r" % (body,))
    check(body["object"] == "chat.completion" and body["choices"][0]["finish_reason"] in ("stop", "length"),
          "OpenAI shape")
    check(hd["usage"]["total_tokens"] == hd["usage"]["prompt_tokens"] + hd["usage"]["completion_tokens"],
          "usage names")
    h.req("a2", {"messages": [{"role": "system", "content": "be brief"},
                              {"role": "user", "content": "stream please"}]}, stream=True)
    hd, body = h.result("a2")
    chunks = h.chunks.get("a2", [])
    text = "".join((c[1]["choices"][0]["delta"].get("content") or "")
                   for c in chunks if c[1].get("choices"))
    check(hd["ok"] and text == content(body) and text.startswith("sim-"), "anthropic stream")
    check(hd["usage"]["completion_tokens"] > 0, "stream usage")
    h.req("a3", {"input": "x"}, op="embedding")
    hd, _ = h.result("a3")
    check(hd["error"]["code"] == "invalid_request" and hd["attempts"] == 0, "no embeddings: %r" % (hd,))
    hd, _ = h.chat("a4", "[[sim:fail=529x1]] overloaded")
    check(hd["ok"] and hd["attempts"] == 2, "529 retried: %r" % (hd,))


def anthropic():
    sim = Sim()
    h = None
    try:
        h = Harness("--provider", "anthropic", "--base-url", sim.base, "--model", "claude-x",
                    *FAST, env={"ANTHROPIC_API_KEY": "sk-ant-test"})
        t_anthropic(sim, h)
        check(h.terminate() == 0, "exit 0")
    finally:
        if h:
            h.close()
        sim.close()


def cli():
    import subprocess
    from wharness import WORKER
    r = subprocess.run([WORKER, "--help"], capture_output=True, text=True, timeout=10)
    check(r.returncode == 0, "--help exits 0")
    for flag in ["--broker", "--name", "--pool", "--provider", "--base-url", "--model", "--capacity",
                 "--rpm", "--tpm", "--limit-group", "--max-attempts", "--timeout-ms",
                 "--retry-base-ms", "--retry-cap-ms", "--breaker-failures", "--breaker-cooldown-ms",
                 "--drain-ms", "--config", "--verbose", "--json-logs", "--help", "--check-only"]:
        check(flag in r.stdout, "--help lists " + flag)
    r = subprocess.run([WORKER, "--capacity", "lots"], capture_output=True, text=True, timeout=10)
    check(r.returncode == 2 and "--capacity" in r.stderr, "bad flag: exit 2")
    r = subprocess.run([WORKER, "--no-such-flag"], capture_output=True, text=True, timeout=10)
    check(r.returncode == 2, "unknown flag: exit 2")
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write("provider: sim\ncapacity: 8\nretry:\n  max_attempts: many\n")
    try:
        r = subprocess.run([WORKER, "--config", f.name], capture_output=True, text=True, timeout=10)
        check(r.returncode == 2 and ("%s:4:" % f.name) in r.stderr, "config error names file:line: %s"
              % r.stderr)
    finally:
        os.unlink(f.name)
    ex = os.path.join(os.environ.get("LLMQ_SOURCE_DIR", "."), "examples", "worker.yaml")
    if os.path.exists(ex):
        sim = Sim()
        try:
            r = subprocess.run([WORKER, "--config", ex, "--base-url", sim.base, "--check-only"],
                               capture_output=True, text=True, timeout=20,
                               env=dict(os.environ, OPENAI_API_KEY="sk-x"))
            check(r.returncode == 0 and r.stdout.startswith("ok:"), "example config checks: %s %s"
                  % (r.stdout, r.stderr))
        finally:
            sim.close()
    # unreachable provider with --check-only: exit 4
    r = subprocess.run([WORKER, "--provider", "sim", "--base-url", "http://127.0.0.1:1/v1",
                        "--check-only"], capture_output=True, text=True, timeout=20)
    check(r.returncode == 4 and "unreachable" in r.stderr, "unreachable: %d %s" % (r.returncode, r.stderr))
    # JSON logs are JSON
    sim = Sim()
    try:
        h = Harness("--provider", "sim", "--base-url", sim.base, "--json-logs")
        h.terminate()
        import json
        lines = [ln for ln in h.stderr().splitlines() if ln.strip()]
        check(lines and all(json.loads(ln)["component"] == "llmq-worker" for ln in lines), "json logs")
        h.close()
    finally:
        sim.close()


def reconnect():
    """The broker goes silent: the worker says hello again on a new socket; a
    broker `error` (it forgot us) also brings a new hello: one, however many
    "hello first" errors arrive (one per message sent before it), and after
    it credit for every free slot, granted once."""
    sim = Sim()
    h = Harness("--provider", "sim", "--base-url", sim.base, "--model", "sim-small",
                "--capacity", "8", heartbeats=False)
    try:
        hellos = lambda: sum(1 for m in h.received if m[0]["t"] == "hello")
        check(hellos() == 1, "one hello")
        h.wait(lambda: h.credit == 8, 5, "credit for every slot")
        # The first heartbeat comes one interval after the hello: from then on
        # a "hello first" is not a stale echo of the hello's own round trip.
        h.wait(lambda: len(h.hbs) >= 1, 5, "first heartbeat")
        for _ in range(5):
            h.send("error", code="bad_message", message="hello first")
        h.wait(lambda: hellos() == 2, 5, "hello after error")
        h.wait(lambda: h.credit == 8, 5, "credit again after hello")
        # Until the next heartbeat: no second hello, no extra credit (the
        # harness resets its credit count at each hello, as the broker does).
        n_hb = len(h.hbs)
        h.wait(lambda: len(h.hbs) > n_hb, 5, "next heartbeat")
        check(hellos() == 2, "one hello for five errors, got %d" % hellos())
        check(h.credit == 8, "credit granted once after hello: %d" % h.credit)
        # An error that is not "hello first" brings no hello.
        h.send("error", code="bad_message", message="unexpected message type from a worker")
        n_hb = len(h.hbs)
        h.wait(lambda: len(h.hbs) > n_hb, 5, "heartbeat after other error")
        check(hellos() == 2, "no hello for another error")
        # we never answer heartbeats: after 3 s of silence it reconnects
        h.wait(lambda: hellos() == 3, 10, "hello after broker silence")
        marks = [m[0].get("resend", False) for m in h.received if m[0]["t"] == "hello"]
        check(marks == [False, False, True],
              "only the hello after a reconnect asks for resends: %r" % marks)
        h.heartbeats = True
        hd, _ = h.chat("after", "still there")
        check(hd["ok"], "serves after reconnect")
        check(h.terminate() == 0, "exit 0")
    finally:
        h.close()
        sim.close()


def t_load(sim, h):
    """Many requests at once, mixed faults, streams and cancels: every one is
    answered exactly once (the harness rejects a second res)."""
    kinds = ["plain", "[[sim:fail=500x1]]", "[[sim:malformed=1]]", "[[sim:fail=429x1]]",
             "[[sim:fail=400]]", "stream", "cancel", "[[sim:reset=1]]"]
    ids = []
    for i in range(400):
        kind = kinds[i % len(kinds)]
        rid = "L%d" % i
        text = "load %d %s" % (i, "" if kind in ("plain", "stream", "cancel") else kind)
        if kind == "cancel":
            text += " [[sim:delay_ms=3000]]"
        h.req(rid, {"messages": [{"role": "user", "content": text}], "max_tokens": 8},
              stream=(kind == "stream"))
        if kind == "cancel":
            h.send("cancel", id=rid)
        ids.append((rid, kind))
    for rid, kind in ids:
        hd, body = h.result(rid, timeout=40)
        if kind == "[[sim:fail=400]]":
            check(hd["error"]["code"] == "invalid_request", "400 under load")
        elif kind == "cancel":
            check(hd["error"]["code"] == "cancelled", "cancel under load: %r" % hd)
        else:
            check(hd["ok"] and content(body).startswith("sim-"), "ok under load: %r" % (hd,))
    check(sim.stats()["double_billed"] == 0, "nothing answered 200 twice")


def load():
    with_sim([], FAST + ["--capacity", "64", "--max-attempts", "3", "--breaker-failures", "1000"],
             t_load)


def batchapi():
    """--batch-api: job.submit / poll / fetch through the worker reach the
    sim's OpenAI Batch API (the class is issue 8's; this checks the wiring:
    shared curl multi, job.* routing, answers through the DEALER)."""
    sim = Sim("--batch-validate-ms", "50", "--batch-progress-ms", "150",
              "--batch-finalize-ms", "30")
    cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    cfg.write("pricing:\n  - {model: sim-small, input: 1.0, output: 2.0, batch_discount: 0.5}\n")
    cfg.close()
    h = Harness("--provider", "sim", "--base-url", sim.base, "--model", "sim-small",
                "--batch-api", "--config", cfg.name)
    os.unlink(cfg.name)
    try:
        check(h.hello["batch_api"] is True, "hello announces batch_api")
        items = [{"custom_id": "c%d" % i,
                  "body": {"messages": [{"role": "user", "content": "item %d" % i}],
                           "max_tokens": 8}} for i in range(3)]
        h.send("job.submit", items, job="j1", model="sim-small", op="chat")
        status = lambda: [m[0] for m in h.received if m[0]["t"] == "job.status"]
        h.wait(lambda: status(), 20, "job.status after submit")
        st = status()[-1]
        check(st.get("provider_batch") and "error" not in st, "submitted: %r" % st)
        pb = st["provider_batch"]
        for _ in range(100):
            n = len(status())
            h.send("job.poll", job="j1", provider_batch=pb)
            h.wait(lambda: len(status()) > n, 20, "job.status after poll")
            if status()[-1]["state"] == "completed":
                break
            h.pump(0.1)
        check(status()[-1]["state"] == "completed", "batch completed: %r" % status()[-1])
        h.send("job.fetch", job="j1", provider_batch=pb)
        res = lambda: [m for m in h.received if m[0]["t"] == "job.results"]
        h.wait(lambda: any(m[0]["final"] for m in res()), 20, "final job.results")
        got = [r for m in res() for r in (m[1] or [])]
        check(sorted(r["custom_id"] for r in got) == ["c0", "c1", "c2"] and all(r["ok"] for r in got),
              "results: %r" % got)
        for r in got:
            u = r["usage"]
            want = (u["prompt_tokens"] * 1.0 + u["completion_tokens"] * 2.0) / 1e6 * 0.5
            check(abs(u.get("cost_usd", 0) - want) < 1e-12, "batch price with discount: %r" % u)
        check(h.terminate() == 0, "exit 0")
    finally:
        h.close()
        sim.close()


def broker():
    """The whole path: a client DEALER -> the real llmq-broker -> two real
    llmq-workers (one limit group) -> the real llmq-sim, and back."""
    import subprocess
    import msgpack
    import zmq
    from wharness import BIN_DIR
    sim = Sim()
    key = "sk-llmq-BROKER-TEST-91c0ffee"
    procs = []
    try:
        # llmqtest.Proc: stderr to a log, exit 0 and no sanitizer report
        # checked when stopped.
        br = llmqtest.Proc([os.path.join(BIN_DIR, "llmq-broker"), "--frontend", "tcp://127.0.0.1:*",
                            "--backend", "tcp://127.0.0.1:*"], name="llmq-broker")
        procs.append(br)
        fields = br.ready
        for i in range(2):
            w = llmqtest.Proc([os.path.join(BIN_DIR, "llmq-worker"), "--broker", fields["backend"],
                               "--provider", "openai", "--base-url", sim.base, "--model", "sim-small",
                               "--limit-group", "g", "--rpm", "6000", "--verbose"] + FAST,
                              name="llmq-worker", env={"OPENAI_API_KEY": key})
            procs.append(w)
        ctx = zmq.Context.instance()
        c = ctx.socket(zmq.DEALER)
        c.linger = 0
        c.connect(fields["frontend"])
        out = {}

        def send(rid, text, **kw):
            h = {"v": 1, "t": "req", "id": rid, "op": "chat", "model": "sim-small"}
            h.update(kw)
            c.send_multipart([msgpack.packb(h), msgpack.packb(
                {"messages": [{"role": "user", "content": text}], "max_tokens": 8})])

        def collect(n, timeout=30):
            import time
            deadline = time.monotonic() + timeout
            while sum(1 for v in out.values() if "res" in v) < n:
                check(time.monotonic() < deadline, "answers through the broker: %r" % out)
                if c.poll(200):
                    fr = c.recv_multipart()
                    h = msgpack.unpackb(fr[0], raw=False)
                    p = msgpack.unpackb(fr[1], raw=False) if len(fr) > 1 else None
                    d = out.setdefault(h.get("id"), {})
                    if h["t"] == "chunk":
                        d.setdefault("chunks", []).append(p)
                    else:
                        d[h["t"]] = (h, p)

        for i in range(20):
            send("ok%d" % i, "through the broker %d" % i)
        send("st", "stream it", stream=True)
        send("f500", "[[sim:fail=500x2]] flaky")
        send("f400", "[[sim:fail=400]] bad")
        collect(23)
        workers = set()
        for i in range(20):
            h, p = out["ok%d" % i]["res"]
            check(h["ok"] and content(p).startswith("sim-"), "ok through the broker: %r" % (h,))
            workers.add(h["worker"])
        h, p = out["st"]["res"]
        check(h["ok"] and len(out["st"].get("chunks", [])) >= 3, "stream through the broker")
        check(out["f500"]["res"][0]["ok"] and out["f500"]["res"][0]["attempts"] == 3, "retried in the worker")
        e = out["f400"]["res"][0]["error"]
        check(e["code"] == "invalid_request" and e["status"] == 400, "400 through the broker: %r" % e)
        everything = repr(out)
        for w in procs[1:]:
            everything += w.stderr()
            w.stop(timeout=20)
        everything += br.stderr()
        br.stop(timeout=20)
        check("limits_from_broker rpm=3000" in everything, "group share applied")
        check(key not in everything, "the API key leaked")
        c.close()
    finally:
        for p in procs:
            if p.running():
                p.kill9()
        sim.close()


GROUPS = {"broker": broker, "batchapi": batchapi, "load": load, "success": success, "stream": stream, "faults": faults, "rpm": rpm,
          "circuit": breaker, "capacity": capacity, "secrets": secrets, "drain": drain, "anthropic": anthropic,
          "cli": cli, "reconnect": reconnect, "provider_answer": provider_answer}

if __name__ == "__main__":
    names = sys.argv[1:] or list(GROUPS)
    for n in names:
        GROUPS[n]()
        print("worker.%s: OK" % n)
