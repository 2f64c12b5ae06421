#!/usr/bin/python3
"""test_models.py - what llmq knows of models, with real processes
(llmq-sim, llmq-broker, llmq-worker; PROTOCOL.md 3.8).

    test_models.py refuse    impossible requests to known models are refused
                             (invalid_request) and llmq-sim sees none of them;
                             a good one is priced from the built-in table;
                             the broker's metrics count tokens and cost by
                             model
    test_models.py learned   a window the worker learned from llmq-sim's
                             /models (max_model_len) is enforced at the broker
    test_models.py base_url  ANTHROPIC_BASE_URL without /v1 (the Anthropic
                             SDK's form) and --provider sim with --base-url /
                             LLMQ_SIM_URL on a non-default port
"""
import os
import sys
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import llmqtest as lt  # noqa: E402

try:
    import msgpack
    import zmq
except ImportError:
    lt.skip("needs python3-zmq and python3-msgpack")

GEN_ROUTES = ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/messages")


def ask(frontend, model, op="chat", body=None, stream=False, timeout=30.0):
    """One request through the broker: its `res` header and payload."""
    s = zmq.Context.instance().socket(zmq.DEALER)
    s.setsockopt(zmq.LINGER, 0)
    s.connect(frontend)
    try:
        h = {"v": 1, "t": "req", "id": "r1", "op": op, "model": model}
        if stream:
            h["stream"] = True
        if body is None:
            body = {"messages": [{"role": "user", "content": "hello"}]}
        s.send_multipart([msgpack.packb(h), msgpack.packb(body)])
        while True:
            lt.check(s.poll(int(timeout * 1000)), "no answer for %s in %.0f s" % (model, timeout))
            frames = s.recv_multipart()
            res = msgpack.unpackb(frames[0], raw=False)
            if res.get("t") == "res":
                return res, (msgpack.unpackb(frames[1], raw=False) if len(frames) > 1 else None)
    finally:
        s.close()


def generated(sim):
    """Requests llmq-sim got on its generation routes."""
    reqs = sim.stats().get("requests", {})
    return sum(sum(reqs.get(r, {}).values()) for r in GEN_ROUTES)


def refused(res, *words):
    err = res.get("error", {})
    lt.check(res.get("ok") is False and err.get("code") == "invalid_request",
             "expected invalid_request, got %r" % res)
    for w in words:
        lt.check(w in err.get("message", ""), "%r not in the message %r" % (w, err))
    print("refused:", err.get("message"))


def wait_worker(broker, n=1):
    def ready():
        s = lt.broker_status(broker.frontend)
        return s and len(s.get("workers", [])) >= n
    lt.wait_until("%d worker(s) at the broker" % n, ready, 30)


def scrape(url):
    with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
        return r.read().decode()


def metric(text, name, **labels):
    """The value of one series, None if absent."""
    want = ",".join('%s="%s"' % kv for kv in labels.items())
    for line in text.splitlines():
        if line.startswith("%s{" % name) and line.split("}")[0][len(name) + 1:] == want:
            return float(line.rsplit(" ", 1)[1])
    return None


def t_refuse():
    sim = lt.Sim()
    b = lt.Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "--metrics", "127.0.0.1:0")
    lt.Worker(b.backend, sim.url, 8, None)  # serves every model, no pricing
    wait_worker(b)
    before = generated(sim)
    res, _ = ask(b.frontend, "gpt-4o-mini",
                 body={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10000000})
    refused(res, "gpt-4o-mini", "10000000", "16384")
    res, _ = ask(b.frontend, "gpt-4o-2024-08-06", body={"max_completion_tokens": 20000,
                                                        "messages": []})
    refused(res, "gpt-4o-2024-08-06", "20000")
    res, _ = ask(b.frontend, "gpt-4o-mini", op="embedding", body={"input": "hello"})
    refused(res, "gpt-4o-mini", "embeddings")
    res, _ = ask(b.frontend, "text-embedding-3-small")
    refused(res, "text-embedding-3-small", "only creates embeddings")
    res, _ = ask(b.frontend, "o1-pro", stream=True)
    refused(res, "o1-pro", "stream")
    big = "x" * (4 * 130000)  # about 130,000 tokens: over gpt-4o-mini's 128,000
    res, _ = ask(b.frontend, "gpt-4o-mini", body={"messages": [{"role": "user", "content": big}]})
    refused(res, "gpt-4o-mini", "128000", "context window")
    lt.check(generated(sim) == before, "llmq-sim saw a refused request: %d -> %d"
             % (before, generated(sim)))
    # A request that fits goes through, priced from the built-in table.
    res, body = ask(b.frontend, "gpt-4o-mini",
                    body={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 50})
    lt.check(res.get("ok") is True, "a fitting request: %r" % res)
    u = res.get("usage", {})
    want = (u["prompt_tokens"] * 0.15 + u["completion_tokens"] * 0.60) / 1e6
    lt.check(u.get("cost_usd", 0) > 0 and abs(u["cost_usd"] - want) < 1e-12,
             "built-in price of gpt-4o-mini: %r (want %r)" % (u, want))
    lt.check(generated(sim) == before + 1, "the fitting request reached llmq-sim")
    # Unknown models are never checked.
    res, _ = ask(b.frontend, "sim-model", body={"messages": [{"role": "user", "content": "x"}],
                                                "max_tokens": 100000})
    lt.check(res.get("ok") is True, "an unknown model passes: %r" % res)
    text = scrape(b.ready["metrics"])
    p = metric(text, "llmq_broker_tokens_total", model="gpt-4o-mini", kind="prompt")
    c = metric(text, "llmq_broker_tokens_total", model="gpt-4o-mini", kind="completion")
    usd = metric(text, "llmq_broker_cost_usd_total", model="gpt-4o-mini")
    lt.check(p == u["prompt_tokens"] and c == u["completion_tokens"],
             "tokens by model in the metrics: %r %r (usage %r)" % (p, c, u))
    lt.check(usd is not None and abs(usd - u["cost_usd"]) < 1e-9, "cost by model: %r" % usd)
    lt.check(metric(text, "llmq_broker_tokens_total", model="sim-model", kind="prompt") > 0,
             "tokens of an unpriced model counted too")
    lt.check(metric(text, "llmq_broker_cost_usd_total", model="sim-model") is None,
             "no cost series for an unpriced model")


def t_learned():
    sim = lt.Sim("--max-model-len", "300")
    b = lt.Broker()
    lt.Worker(b.backend, sim.url, 8, None)
    wait_worker(b)
    before = generated(sim)
    res, _ = ask(b.frontend, "sim-large",
                 body={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 400})
    refused(res, "sim-large", "400", "(300 tokens)")
    res, _ = ask(b.frontend, "sim-large",
                 body={"messages": [{"role": "user", "content": "y" * 1000}], "max_tokens": 60})
    refused(res, "sim-large", "about 251", "60")
    lt.check(generated(sim) == before, "llmq-sim saw a refused request")
    res, _ = ask(b.frontend, "sim-large",
                 body={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 50})
    lt.check(res.get("ok") is True, "within the learned window: %r" % res)
    # The worker's YAML `capabilities` reach the broker too.
    tmp = lt.temp_dir("llmq-models-test")
    cfg = os.path.join(tmp, "worker.yaml")
    with open(cfg, "w") as f:
        f.write("capabilities:\n"
                "  - {model: cfg-model, context: 1000, max_output: 100, features: [chat]}\n")
    lt.Worker(b.backend, sim.url, 8, "cfg-model", "--config", cfg, name="llmq-worker cfg")
    wait_worker(b, 2)
    res, _ = ask(b.frontend, "cfg-model",
                 body={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 200})
    refused(res, "cfg-model", "200", "(100 tokens)")
    res, _ = ask(b.frontend, "cfg-model", stream=True)
    refused(res, "cfg-model", "does not stream")
    lt.check(generated(sim) == before + 1, "llmq-sim saw a refused request")
    res, _ = ask(b.frontend, "cfg-model",
                 body={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 50})
    lt.check(res.get("ok") is True, "within the configured limits: %r" % res)
    # A model the sim does not list stays unknown: not checked.
    res, _ = ask(b.frontend, "other-model",
                 body={"messages": [{"role": "user", "content": "hello"}], "max_tokens": 400})
    lt.check(res.get("ok") is True, "a model /models did not list: %r" % res)


def t_base_url():
    sim = lt.Sim()
    b = lt.Broker()
    # The Anthropic SDK's form: no /v1.
    env = {"ANTHROPIC_API_KEY": lt.SIM_KEY, "ANTHROPIC_BASE_URL": sim.url}
    lt.Proc([lt.bin_path("llmq-worker"), "--broker", b.backend, "--provider", "anthropic",
             "--model", "claude-3-5-haiku-20241022", "--capacity", "4"],
            name="llmq-worker anthropic", env=env)
    # --provider sim on a non-default port: --base-url without /v1, and LLMQ_SIM_URL.
    lt.Proc([lt.bin_path("llmq-worker"), "--broker", b.backend, "--provider", "sim",
             "--base-url", sim.url, "--model", "sim-a", "--capacity", "4"],
            name="llmq-worker sim-a")
    lt.Proc([lt.bin_path("llmq-worker"), "--broker", b.backend, "--provider", "sim",
             "--model", "sim-b", "--capacity", "4"],
            name="llmq-worker sim-b", env={"LLMQ_SIM_URL": sim.url})
    wait_worker(b, 3)
    for model in ("claude-3-5-haiku-20241022", "sim-a", "sim-b"):
        res, body = ask(b.frontend, model,
                        body={"messages": [{"role": "user", "content": "hello"}],
                              "max_tokens": 20})
        lt.check(res.get("ok") is True, "%s: %r" % (model, res))
        lt.check(body and body.get("choices"), "%s: an answer %r" % (model, body))
        u = res.get("usage", {})
        if model.startswith("claude"):
            lt.check(u.get("cost_usd", 0) > 0, "claude priced from the table: %r" % u)
    reqs = sim.stats().get("requests", {})
    lt.check(reqs.get("/v1/messages") == {"200": 1} and
             reqs.get("/v1/chat/completions") == {"200": 2},
             "routes llmq-sim saw: %r" % reqs)


if __name__ == "__main__":
    tests = {"refuse": t_refuse, "learned": t_learned, "base_url": t_base_url}
    name = sys.argv[1] if len(sys.argv) > 1 else ""
    if name not in tests:
        print("usage: test_models.py %s" % "|".join(tests), file=sys.stderr)
        sys.exit(2)
    lt.main(tests[name])
