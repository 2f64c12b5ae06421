#!/usr/bin/env python3
"""Integration tests for llmq-sim: every route over real HTTP.
Usage: test_sim.py [group ...]; each ctest runs one group."""
import json
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from simlib import Sim, KEY, check, chat_hash, fnv1a64, poll, run, sse_events  # noqa: E402

MSGS = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]


def g_openai():
    with Sim() as s:
        # chat completion: shape, hash, usage rule
        st, h, b = s.json("POST", "/v1/chat/completions", {"model": "gpt-x", "messages": MSGS})
        check(st == 200, "chat 200")
        check(b["object"] == "chat.completion" and b["model"] == "gpt-x", "chat shape")
        c = b["choices"][0]
        check(c["message"]["role"] == "assistant" and c["index"] == 0, "chat choice")
        text = c["message"]["content"]
        hx = chat_hash("gpt-x", MSGS)
        check(text.startswith("sim-" + hx), "chat content carries the request hash")
        words = text.split(" ")
        n = int(hx, 16)
        check(len(words) == min(16, 8 + n % 24), "output token count rule")
        u = b["usage"]
        chars = len("be brief") + len("hello")
        check(u["prompt_tokens"] == max(1, (chars + 3) // 4), "prompt_tokens rule")
        check(u["completion_tokens"] == len(words), "completion_tokens = words")
        check(u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"], "total_tokens")
        check(c["finish_reason"] in ("stop", "length"), "finish_reason")
        check(h.get("x-request-id", "").startswith("req_"), "x-request-id header")
        # deterministic: same request, same text
        st, h, b2 = s.json("POST", "/v1/chat/completions", {"model": "gpt-x", "messages": MSGS})
        check(b2["choices"][0]["message"]["content"] == text, "deterministic content")
        # max_tokens cut -> length
        st, h, b = s.json("POST", "/v1/chat/completions",
                          {"model": "gpt-x", "messages": MSGS, "max_tokens": 2})
        check(b["usage"]["completion_tokens"] == 2 and b["choices"][0]["finish_reason"] == "length",
              "max_tokens 2 -> 2 words, length")
        st, h, b = s.json("POST", "/v1/chat/completions",
                          {"model": "gpt-x", "messages": MSGS, "max_completion_tokens": 1})
        check(b["usage"]["completion_tokens"] == 1, "max_completion_tokens honoured")
        # content parts
        parts = [{"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}]
        st, h, b = s.json("POST", "/v1/chat/completions", {"model": "m", "messages": parts})
        check(b["choices"][0]["message"]["content"].startswith("sim-" + chat_hash("m", parts)),
              "content parts hashed")
        # streaming chat with usage
        st, h, raw = s.request("POST", "/v1/chat/completions",
                               {"model": "gpt-x", "messages": MSGS, "stream": True,
                                "stream_options": {"include_usage": True}})
        check(st == 200 and h.get("content-type", "").startswith("text/event-stream"), "sse 200")
        evs = sse_events(raw)
        check(evs[-1][1] == "[DONE]", "stream ends with [DONE]")
        chunks = [json.loads(d) for _, d in evs[:-1]]
        check(all(c["object"] == "chat.completion.chunk" for c in chunks), "chunk objects")
        check(chunks[0]["choices"][0]["delta"].get("role") == "assistant", "first delta has role")
        streamed = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
        check(streamed == text, "streamed text equals whole text")
        fin = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
        check(len(fin) == 1, "one finish chunk")
        check(chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == len(words),
              "usage chunk last")
        # stream without usage: no usage chunk
        st, h, raw = s.request("POST", "/v1/chat/completions",
                               {"model": "gpt-x", "messages": MSGS, "stream": True})
        chunks = [json.loads(d) for _, d in sse_events(raw)[:-1]]
        check(all(c["choices"] for c in chunks) and "usage" not in chunks[-1], "no usage chunk")
        # completions
        st, h, b = s.json("POST", "/v1/completions", {"model": "davinci", "prompt": "Say hi"})
        check(st == 200 and b["object"] == "text_completion", "completions shape")
        hx = "%016x" % fnv1a64(b"davinci\nprompt:Say hi\n")
        check(b["choices"][0]["text"].startswith("sim-" + hx), "completion hash")
        st, h, raw = s.request("POST", "/v1/completions",
                               {"model": "davinci", "prompt": "Say hi", "stream": True})
        evs = sse_events(raw)
        check(evs[-1][1] == "[DONE]", "completion stream [DONE]")
        streamed = "".join(json.loads(d)["choices"][0]["text"] for _, d in evs[:-1])
        check(streamed == b["choices"][0]["text"], "completion stream text")
        # embeddings
        st, h, b = s.json("POST", "/v1/embeddings", {"model": "emb", "input": ["a", "b", "a"]})
        check(st == 200 and b["object"] == "list" and len(b["data"]) == 3, "embeddings shape")
        v = [d["embedding"] for d in b["data"]]
        check(len(v[0]) == 8 and v[0] == v[2] and v[0] != v[1], "embeddings deterministic, dim 8")
        check(abs(sum(x * x for x in v[0]) - 1.0) < 1e-3, "unit vectors")
        st, h, b = s.json("POST", "/v1/embeddings", {"model": "emb", "input": "a", "dimensions": 32})
        check(len(b["data"][0]["embedding"]) == 32, "dimensions honoured")
        # models
        st, h, b = s.json("GET", "/v1/models")
        check(st == 200 and b["object"] == "list" and b["data"][0]["object"] == "model", "models list")
        st, h, b = s.json("GET", "/v1/models/gpt-x")
        check(st == 200 and b["id"] == "gpt-x", "model get")
        # errors: bad JSON, missing fields, unknown route, method
        st, h, b = s.json("POST", "/v1/chat/completions", raw=b"{nope")
        check(st == 400 and set(b["error"]) == {"message", "type", "param", "code"}, "bad json 400 shape")
        st, h, b = s.json("POST", "/v1/chat/completions", {"model": "m"})
        check(st == 400 and b["error"]["param"] == "messages", "missing messages")
        st, h, b = s.json("POST", "/v1/chat/completions", {"messages": MSGS})
        check(st == 400 and b["error"]["param"] == "model", "missing model")
        st, h, b = s.json("POST", "/v1/chat/completions", {"model": "m", "messages": MSGS, "max_tokens": 0})
        check(st == 400, "max_tokens 0 rejected")
        st, h, b = s.json("GET", "/v1/nothing")
        check(st == 404 and "error" in b, "unknown route 404")
        st, h, b = s.json("GET", "/v1/chat/completions")
        check(st == 405, "GET on chat 405")
        st = s.stats()
        check(st["requests"]["/v1/chat/completions"]["200"] >= 5, "stats count chat 200s")


def g_anthropic():
    with Sim() as s:
        body = {"model": "claude-x", "max_tokens": 64, "system": "be brief",
                "messages": [{"role": "user", "content": "hello"}]}
        st, h, b = s.json("POST", "/v1/messages", body, anthropic=True)
        check(st == 200 and b["type"] == "message" and b["role"] == "assistant", "messages shape")
        text = b["content"][0]["text"]
        check(b["content"][0]["type"] == "text", "text block")
        # same canonical text as the OpenAI request with a system message
        hx = chat_hash("claude-x", [{"role": "user", "content": "hello"}], system="be brief")
        check(hx == chat_hash("claude-x", MSGS), "system folds like an OpenAI system message")
        check(text.startswith("sim-" + hx), "anthropic hash")
        check(b["usage"]["input_tokens"] == (len("be brief") + len("hello") + 3) // 4, "input_tokens")
        check(b["usage"]["output_tokens"] == len(text.split(" ")), "output_tokens")
        check(b["stop_reason"] in ("end_turn", "max_tokens"), "stop_reason")
        check(h.get("request-id", "").startswith("req_"), "request-id header")
        # streaming event sequence
        st, h, raw = s.request("POST", "/v1/messages", dict(body, stream=True), anthropic=True)
        evs = sse_events(raw)
        names = [e for e, _ in evs]
        check(names[0] == "message_start" and names[1] == "content_block_start", "stream start")
        check(names[-3:] == ["content_block_stop", "message_delta", "message_stop"], "stream end")
        deltas = [json.loads(d)["delta"]["text"] for e, d in evs if e == "content_block_delta"]
        check("".join(deltas) == text, "streamed text")
        md = json.loads([d for e, d in evs if e == "message_delta"][0])
        check(md["usage"]["output_tokens"] == len(deltas), "message_delta usage")
        for e, d in evs:
            check(json.loads(d)["type"] == e, "event name matches data type: " + e)
        # validation: max_tokens required, anthropic-version required, auth
        st, h, b = s.json("POST", "/v1/messages", {"model": "c", "messages": body["messages"]},
                          anthropic=True)
        check(st == 400 and b["type"] == "error" and b["error"]["type"] == "invalid_request_error",
              "max_tokens required")
        st, h, b = s.json("POST", "/v1/messages", body, anthropic=True,
                          auth=False)
        check(st == 401 and b["error"]["type"] == "authentication_error", "anthropic 401")
        st, h, b = s.json("POST", "/v1/messages", body, auth=False, headers={"x-api-key": KEY})
        check(st == 400 and "anthropic-version" in b["error"]["message"], "anthropic-version required")
        st, h, b = s.json("GET", "/v1/models", anthropic=True)
        check(st == 200 and b["data"][0]["type"] == "model" and "has_more" in b, "anthropic models")


def g_auth():
    with Sim("--api-key", "good1", "--api-key", "good2") as s:
        body = {"model": "m", "messages": MSGS}
        st, h, b = s.json("POST", "/v1/chat/completions", body, auth=False)
        check(st == 401 and b["error"]["code"] == "invalid_api_key", "no key 401")
        st, h, b = s.json("POST", "/v1/chat/completions", body,
                          headers={"Authorization": "Bearer sk-secret-wrong"})
        check(st == 401, "wrong key 401")
        check(b"sk-secret-wrong" not in json.dumps(b).encode(), "key never echoed")
        for k in ("good1", "good2"):
            st, h, b = s.json("POST", "/v1/chat/completions", body,
                              headers={"Authorization": "Bearer " + k})
            check(st == 200, "accepted key " + k)
        st, h, b = s.json("POST", "/v1/messages", {"model": "m", "max_tokens": 5, "messages": MSGS[1:]},
                          headers={"x-api-key": "bad"}, anthropic=True)
        check(st == 401 and b["type"] == "error", "anthropic wrong key")
        st, h, b = s.json("GET", "/v1/models", auth=False)
        check(st == 401, "models needs auth")
        check(s.stats()["requests"]["/v1/chat/completions"]["401"] == 2, "401s counted")
    with Sim("--models", "a,b") as s:
        st, h, b = s.json("POST", "/v1/chat/completions", {"model": "zzz", "messages": MSGS})
        check(st == 404 and b["error"]["code"] == "model_not_found", "unknown model 404")
        st, h, b = s.json("GET", "/v1/models")
        check([m["id"] for m in b["data"]] == ["a", "b"], "models flag lists models")


import re
import socket as _socket
import threading
import http.client
from datetime import datetime

DUR = re.compile(r"^(\d+ms|(\d+h)?(\d+m)?\d+(\.\d+)?s)$")


def chat(s, content, model="m", key=None, timeout=10, **extra):
    body = {"model": model, "messages": [{"role": "user", "content": content}], **extra}
    h = {"Authorization": "Bearer " + key} if key else None
    return s.request("POST", "/v1/chat/completions", body, headers=h, timeout=timeout)


def g_limits():
    with Sim("--rpm", "3") as s:
        for i in range(3):
            st, h, b = chat(s, "x%d" % i)
            check(st == 200, "rpm request %d ok" % i)
            check(h.get("x-ratelimit-limit-requests") == "3", "limit-requests header")
            check(h.get("x-ratelimit-remaining-requests") == str(2 - i), "remaining-requests %d" % i)
            check(DUR.match(h.get("x-ratelimit-reset-requests", "")), "reset-requests duration format")
        st, h, b = chat(s, "x3")
        b = json.loads(b)
        check(st == 429 and b["error"]["code"] == "rate_limit_exceeded"
              and b["error"]["type"] == "requests", "429 past rpm")
        check(int(h.get("retry-after", "0")) >= 1, "retry-after seconds")
        check(0 < int(h.get("retry-after-ms", "0")) <= 60000, "retry-after-ms")
        check(h.get("x-ratelimit-remaining-requests") == "0", "remaining 0 on 429")
        st, h, b = chat(s, "x4", key="other-key")
        check(st == 200, "limits are per API key")
        # anthropic headers
        body = {"model": "c", "max_tokens": 8, "messages": [{"role": "user", "content": "a"}]}
        for i in range(3):
            st, h, b = s.request("POST", "/v1/messages", body, anthropic=True,
                                 headers={"x-api-key": "akey"})
            if st == 200:
                check(h.get("anthropic-ratelimit-requests-limit") == "3", "anthropic limit header")
                check(h.get("anthropic-ratelimit-requests-remaining") == str(2 - i), "anthropic remaining")
                reset = h.get("anthropic-ratelimit-requests-reset", "")
                check(datetime.strptime(reset, "%Y-%m-%dT%H:%M:%S.%fZ") is not None, "RFC 3339 reset")
        st, h, b = s.request("POST", "/v1/messages", body, anthropic=True, headers={"x-api-key": "akey"})
        b = json.loads(b)
        check(st == 429 and b["type"] == "error" and b["error"]["type"] == "rate_limit_error",
              "anthropic 429 shape")
        check(int(h.get("retry-after", "0")) >= 1, "anthropic retry-after")
        stt = s.stats()
        check(stt["rate_limited_429"] == 2 and stt["rate_limited_by_limit"] == 2, "429s in stats")
        s.reset()
        st, h, b = chat(s, "after reset")
        check(st == 200 and h.get("x-ratelimit-remaining-requests") == "2", "/_reset clears windows")
    with Sim("--tpm", "60") as s:
        seen = []
        for i in range(20):
            st, h, b = chat(s, "tokens %d" % i)
            seen.append(st)
            if st == 200:
                b = json.loads(b)
                check(h.get("x-ratelimit-limit-tokens") == "60", "limit-tokens")
                check(int(h["x-ratelimit-remaining-tokens"]) >= 0, "remaining-tokens")
                check(DUR.match(h.get("x-ratelimit-reset-tokens", "")), "reset-tokens format")
            else:
                b = json.loads(b)
                check(st == 429 and b["error"]["type"] == "tokens", "tpm 429 type tokens")
                break
        check(seen[-1] == 429 and seen.count(200) >= 2, "tpm eventually limits")


def expect_reset(fn):
    try:
        fn()
    except (ConnectionResetError, http.client.RemoteDisconnected, BrokenPipeError):
        return True
    return False


def expect_timeout(fn):
    try:
        fn()
    except (TimeoutError, _socket.timeout):
        return True
    return False


def g_faults():
    for flag, code in (("--p500", 500), ("--p503", 503), ("--p429", 429)):
        with Sim(flag, "1") as s:
            st, h, b = chat(s, "f")
            b = json.loads(b)
            check(st == code and set(b["error"]) == {"message", "type", "param", "code"},
                  "%s -> %d with OpenAI error body" % (flag, code))
            if code == 429:
                check(h.get("retry-after") == "1" and h.get("retry-after-ms") == "1000",
                      "p429 retry-after 1")
            st, h, b = s.request("POST", "/v1/messages",
                                 {"model": "c", "max_tokens": 4, "messages": [{"role": "user", "content": "a"}]},
                                 anthropic=True)
            b = json.loads(b)
            check(st == code and b["type"] == "error", "%s anthropic shape" % flag)
            st, h, b = s.request("GET", "/v1/models")
            check(st == 200, "faults only hit generation routes")
    with Sim("--pmalformed", "1") as s:
        st, h, b = chat(s, "f")
        bad = False
        try:
            json.loads(b)
        except ValueError:
            bad = True
        check(st == 200 and bad, "pmalformed -> 200 with broken JSON")
        check(s.stats()["requests"]["/v1/chat/completions"].get("malformed") == 1, "malformed counted")
    with Sim("--preset", "1") as s:
        check(expect_reset(lambda: chat(s, "r")), "preset -> connection reset")
        check(s.stats()["requests"]["/v1/chat/completions"].get("reset") == 1, "reset counted")
    with Sim("--phang", "1") as s:
        check(expect_timeout(lambda: chat(s, "h", timeout=0.5)), "phang -> no answer")
        # the client closed its socket: the simulator notices and drops it
        poll(lambda: s.stats()["in_flight"] == 0, what="hung request released on client close")
        check(s.stats()["requests"]["/v1/chat/completions"].get("hang") == 1, "hang counted")
    with Sim("--phang", "1", "--hang-ms", "200") as s:
        check(expect_reset(lambda: chat(s, "h", timeout=20)), "hang-ms closes the connection")
    with Sim() as s:
        # /_reset releases hung requests: their clients see the connection close
        res = {}
        t = threading.Thread(target=lambda: res.update(
            closed=expect_reset(lambda: chat(s, "z [[sim:hang=1]]", timeout=20))))
        t.start()
        poll(lambda: s.stats()["in_flight"] == 1, what="hung request held")
        s.reset()
        t.join(20)
        check(res.get("closed") is True, "/_reset closes hung connections")
        check(s.stats()["in_flight"] == 0, "nothing in flight after /_reset")
    # a client leaving in the middle of a paced stream is noticed and cleaned up
    with Sim("--tokens-per-sec", "20") as s:
        c = s.conn()
        body = {"model": "m", "max_tokens": 40, "stream": True,
                "messages": [{"role": "user", "content": "long [[sim:tokens=40]]"}]}
        c.request("POST", "/v1/chat/completions", json.dumps(body),
                  {"Authorization": "Bearer " + KEY, "Content-Type": "application/json"})
        r = c.getresponse()
        check(r.status == 200 and r.readline().startswith(b"data: "), "paced stream started")
        c.sock.shutdown(_socket.SHUT_RDWR)
        c.close()
        poll(lambda: s.stats()["in_flight"] == 0, what="abandoned stream released")
    with Sim("--p500", "0.5", "--seed", "7") as s:
        codes = [chat(s, "mix %d" % i)[0] for i in range(100)]
        check(200 in codes and 500 in codes and set(codes) <= {200, 500}, "p500 0.5 mixes")
    # stream requests get faults before the stream starts
    with Sim("--p503", "1") as s:
        st, h, b = chat(s, "s", stream=True)
        check(st == 503 and json.loads(b)["error"]["type"] == "server_error", "stream fault is JSON")


def g_directives():
    with Sim() as s:
        seq = [chat(s, "a [[sim:fail=500x2]]")[0] for _ in range(3)]
        check(seq == [500, 500, 200], "fail=500x2 -> 500,500,200 (got %s)" % seq)
        seq = [chat(s, "b [[sim:fail=503x1]]")[0] for _ in range(2)]
        check(seq == [503, 200], "fail=503x1")
        st, h, b = chat(s, "c [[sim:fail=429x1]]")
        check(st == 429 and h.get("retry-after") == "1"
              and json.loads(b)["error"]["code"] == "rate_limit_exceeded", "fail=429x1 + retry-after")
        check(chat(s, "c [[sim:fail=429x1]]")[0] == 200, "then 200")
        seq = [chat(s, "d [[sim:fail=400]]")[0] for _ in range(3)]
        check(seq == [400, 400, 400], "fail=400 permanent")
        st, h, b = chat(s, "e [[sim:fail=401]]")
        check(st == 401 and json.loads(b)["error"]["code"] == "invalid_api_key", "fail=401")
        check(expect_timeout(lambda: chat(s, "f [[sim:hang=1]]", timeout=0.5)), "hang=1 first")
        check(chat(s, "f [[sim:hang=1]]")[0] == 200, "hang=1 then answers")
        st, h, b = chat(s, "g [[sim:malformed=1]]")
        try:
            json.loads(b)
            ok = False
        except ValueError:
            ok = True
        check(st == 200 and ok, "malformed=1 first is broken")
        st, h, b = chat(s, "g [[sim:malformed=1]]")
        check(json.loads(b)["object"] == "chat.completion", "malformed=1 then valid")
        check(expect_reset(lambda: chat(s, "h [[sim:reset=1]]")), "reset=1 first")
        check(chat(s, "h [[sim:reset=1]]")[0] == 200, "reset=1 then 200")
        st, h, b = chat(s, "i [[sim:context_length]]")
        b = json.loads(b)
        check(st == 400 and b["error"]["code"] == "context_length_exceeded"
              and b["error"]["param"] == "messages", "context_length")
        # echo_key: a provider that echoes the request's key in its error
        st, h, b = chat(s, "m [[sim:fail=400,echo_key=5]]", key="sk-echo-me-123")
        check(st == 400 and json.loads(b)["error"]["message"].startswith(
            "AAAAAsk-echo-me-123 "), "echo_key=5 (got %s)" % b)
        st, h, b = chat(s, "m2 [[sim:echo_key=5]]", key="sk-echo-me-123")
        check(st == 200 and b"sk-echo" not in b, "echo_key without a failure")
        st, h, b = chat(s, "j [[sim:tokens=3]]", max_tokens=100)
        check(json.loads(b)["usage"]["completion_tokens"] == 3, "tokens=3")
        st, h, b = chat(s, "k [[sim:fail=500x1, delay_ms=1]]")
        check(st == 500, "two directives in one block")
        # delay_ms: the request is pending (in flight) while the delay runs
        res = {}
        t = threading.Thread(target=lambda: res.update(r=chat(s, "l [[sim:delay_ms=3000]]")))
        t.start()
        poll(lambda: s.stats()["in_flight"] == 1, what="delayed request in flight")
        t.join(10)
        check(res.get("r", (0,))[0] == 200, "delay_ms answers")
        # anthropic shapes
        ab = {"model": "c", "max_tokens": 8, "messages": [{"role": "user", "content": "m [[sim:fail=529]]"}]}
        st, h, b = s.json("POST", "/v1/messages", ab, anthropic=True)
        check(st == 529 and b["error"]["type"] == "overloaded_error", "anthropic 529")
        ab["messages"][0]["content"] = "n [[sim:context_length]]"
        st, h, b = s.json("POST", "/v1/messages", ab, anthropic=True)
        check(st == 400 and "prompt is too long" in b["error"]["message"], "anthropic context_length")
        # counters are per request body, and /_reset clears them
        s.reset()
        check(chat(s, "a [[sim:fail=500x2]]")[0] == 500, "reset clears directive counters")
        # stream + directive
        st, h, b = chat(s, "o [[sim:fail=500x1]]", stream=True)
        check(st == 500, "stream directive fail")
        st, h, raw = chat(s, "o [[sim:fail=500x1]]", stream=True)
        check(st == 200 and sse_events(raw)[-1][1] == "[DONE]", "stream after fail")


def g_stats():
    with Sim() as s:
        check(chat(s, "A")[0] == 200, "A")
        check(s.stats()["double_billed"] == 0, "no double billing yet")
        chat(s, "A")
        check(s.stats()["double_billed"] == 1, "A twice -> 1")
        chat(s, "B")
        chat(s, "C [[sim:fail=500x1]]")
        chat(s, "C [[sim:fail=500x1]]")
        st = s.stats()
        check(st["double_billed"] == 1, "retried failure is not double billed")
        check(st["answered_ok"] == 4, "answered_ok")
        check(st["requests"]["/v1/chat/completions"] == {"200": 4, "500": 1}, "by route and status")
        check(st["total"] == 5 + 2, "total counts every request (earlier stats calls too)")
        check(st["peak_concurrent"] >= 1 and st["in_flight"] == 0, "in_flight/peak")
        s.reset()
        st = s.stats()
        check(st["double_billed"] == 0 and st["total"] == 1, "reset clears stats")
    # concurrency: replies come from timers, so many requests are in flight at once
    # a long latency keeps the test robust on a slow machine: all N must be
    # in flight at once before the first timer fires
    with Sim("--latency-ms", "2500", "--jitter-ms", "50") as s:
        N = 40
        res = []
        lock = threading.Lock()

        def one(i):
            r = chat(s, "c%d" % i)
            with lock:
                res.append(r[0])
        ts = [threading.Thread(target=one, args=(i,)) for i in range(N)]
        for t in ts:
            t.start()
        poll(lambda: s.stats()["in_flight"] >= N, what="all requests in flight at once")
        for t in ts:
            t.join(20)
        check(res.count(200) == N, "all answered")
        st = s.stats()
        check(st["peak_concurrent"] >= N and st["peak_connections"] >= N, "peaks recorded")
    with Sim("--tokens-per-sec", "500", "--latency-ms", "5") as s:
        st, h, raw = chat(s, "paced", stream=True)
        evs = sse_events(raw)
        check(st == 200 and evs[-1][1] == "[DONE]", "paced stream completes")
        st, h, b = chat(s, "paced")
        check(st == 200 and json.loads(b)["choices"][0]["message"]["content"].startswith("sim-"),
              "paced whole answer")


def multipart(fields, files):
    boundary = "----llmqsimtestboundary"
    out = b""
    for k, v in fields.items():
        out += ("--%s\r\nContent-Disposition: form-data; name=\"%s\"\r\n\r\n%s\r\n"
                % (boundary, k, v)).encode()
    for k, (fname, data) in files.items():
        out += ("--%s\r\nContent-Disposition: form-data; name=\"%s\"; filename=\"%s\"\r\n"
                "Content-Type: application/jsonl\r\n\r\n" % (boundary, k, fname)).encode()
        out += data + b"\r\n"
    out += ("--%s--\r\n" % boundary).encode()
    return out, "multipart/form-data; boundary=" + boundary


def upload(s, data, purpose="batch"):
    body, ctype = multipart({"purpose": purpose}, {"file": ("in.jsonl", data)})
    st, h, b = s.request("POST", "/v1/files", raw=body, headers={"Content-Type": ctype})
    return st, json.loads(b)


def jsonl(lines):
    return ("\n".join(json.dumps(x) for x in lines) + "\n").encode()


def batch_line(cid, content, url="/v1/chat/completions"):
    if url == "/v1/embeddings":
        body = {"model": "emb", "input": content}
    else:
        body = {"model": "m", "messages": [{"role": "user", "content": content}]}
    return {"custom_id": cid, "method": "POST", "url": url, "body": body}


FAST = ("--batch-validate-ms", "30", "--batch-progress-ms", "60", "--batch-finalize-ms", "30")


def wait_batch(s, bid, states, path="/v1/batches/"):
    return poll(lambda: (lambda b: b if b.get("status", b.get("processing_status")) in states else None)(
        s.json("GET", path + bid, anthropic=path.startswith("/v1/messages"))[2]),
        what="batch %s in %s" % (bid, states))


def g_batch_openai():
    with Sim(*FAST) as s:
        lines = [batch_line("r%d" % i, "q%d" % i) for i in range(5)]
        lines.append(batch_line("bad", "z [[sim:fail=400]]"))
        data = jsonl(lines)
        st, f = upload(s, data)
        check(st == 200 and f["object"] == "file" and f["purpose"] == "batch"
              and f["bytes"] == len(data) and f["filename"] == "in.jsonl", "file upload")
        st, h, b = s.request("GET", "/v1/files/%s/content" % f["id"])
        check(st == 200 and b == data, "file content round trip")
        st, h, b = s.json("GET", "/v1/files/" + f["id"])
        check(st == 200 and b["id"] == f["id"], "file get")
        st, h, b = s.json("GET", "/v1/files")
        check(any(x["id"] == f["id"] for x in b["data"]), "file list")
        st, h, b = s.json("POST", "/v1/batches", {"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                                                  "completion_window": "24h", "metadata": {"k": "v"}})
        check(st == 200 and b["object"] == "batch" and b["status"] == "validating", "batch created validating")
        check(b["metadata"] == {"k": "v"} and b["request_counts"]["total"] == 0, "metadata kept")
        bid = b["id"]
        b = wait_batch(s, bid, ("completed", "failed"))
        check(b["status"] == "completed", "batch completed")
        check(b["created_at"] <= b["in_progress_at"] <= b["finalizing_at"] <= b["completed_at"],
              "timestamps ordered")
        check(b["request_counts"] == {"total": 6, "completed": 5, "failed": 1}, "request_counts")
        st, h, out = s.request("GET", "/v1/files/%s/content" % b["output_file_id"])
        rows = [json.loads(x) for x in out.decode().splitlines()]
        check(len(rows) == 5 and [r["custom_id"] for r in rows] == ["r%d" % i for i in range(5)],
              "output lines in input order")
        for r, line in zip(rows, lines):
            check(r["id"].startswith("batch_req_") and r["error"] is None, "output line shape")
            resp = r["response"]
            check(resp["status_code"] == 200 and resp["request_id"].startswith("req_"), "status_code 200")
            hx = chat_hash("m", line["body"]["messages"])
            check(resp["body"]["choices"][0]["message"]["content"].startswith("sim-" + hx),
                  "batch answer belongs to its line")
        st, h, err = s.request("GET", "/v1/files/%s/content" % b["error_file_id"])
        erows = [json.loads(x) for x in err.decode().splitlines()]
        check(len(erows) == 1 and erows[0]["custom_id"] == "bad"
              and erows[0]["response"]["status_code"] == 400
              and "error" in erows[0]["response"]["body"], "error file line")
        st, h, b2 = s.json("GET", "/v1/batches")
        check(b2["object"] == "list" and b2["data"][0]["id"] == bid, "batch list")
        st, h, b2 = s.json("POST", "/v1/batches/%s/cancel" % bid)
        check(st == 409, "cannot cancel a completed batch")
        # double billing across batch and realtime
        before = s.stats()["double_billed"]
        chat(s, "q0")
        check(s.stats()["double_billed"] == before + 1, "realtime repeat of a batch line is double billed")
        st = s.stats()
        check(st["batches"]["openai"]["completed"] == 1 and st["batches"]["lines_ok"] == 5, "batch stats")
        # embeddings endpoint
        st, f2 = upload(s, jsonl([batch_line("e1", "hello", "/v1/embeddings")]))
        st, h, b = s.json("POST", "/v1/batches", {"input_file_id": f2["id"], "endpoint": "/v1/embeddings",
                                                  "completion_window": "24h"})
        b = wait_batch(s, b["id"], ("completed", "failed"))
        st, h, out = s.request("GET", "/v1/files/%s/content" % b["output_file_id"])
        check(json.loads(out)["response"]["body"]["object"] == "list", "embeddings batch")
        # validation failure
        st, f3 = upload(s, jsonl([batch_line("a", "x")]) + b"{not json\n")
        st, h, b = s.json("POST", "/v1/batches", {"input_file_id": f3["id"], "endpoint": "/v1/chat/completions",
                                                  "completion_window": "24h"})
        b = wait_batch(s, b["id"], ("completed", "failed"))
        check(b["status"] == "failed" and b["errors"]["data"][0]["code"] == "invalid_json_line"
              and b["errors"]["data"][0]["line"] == 2 and b["failed_at"], "invalid line -> failed")
        st, f4 = upload(s, jsonl([batch_line("a", "x"), batch_line("a", "y")]))
        st, h, b = s.json("POST", "/v1/batches", {"input_file_id": f4["id"], "endpoint": "/v1/chat/completions",
                                                  "completion_window": "24h"})
        b = wait_batch(s, b["id"], ("completed", "failed"))
        check(b["status"] == "failed" and b["errors"]["data"][0]["code"] == "duplicate_custom_id", "dup ids")
        # bad create requests
        st, h, b = s.json("POST", "/v1/batches", {"input_file_id": "file-nope", "endpoint": "/v1/chat/completions",
                                                  "completion_window": "24h"})
        check(st == 400 and b["error"]["param"] == "input_file_id", "unknown input file")
        st, h, b = s.json("POST", "/v1/batches", {"input_file_id": f["id"], "endpoint": "/v1/x",
                                                  "completion_window": "24h"})
        check(st == 400 and b["error"]["param"] == "endpoint", "bad endpoint")
        st, h, b = s.json("GET", "/v1/batches/batch_nope")
        check(st == 404, "unknown batch 404")
        st, h, b = s.json("DELETE", "/v1/files/" + f["id"])
        check(st == 200 and b["deleted"] is True, "file delete")
        st, h, b = s.json("GET", "/v1/files/" + f["id"])
        check(st == 404, "deleted file is gone")
        st, h, b = s.json("POST", "/v1/files", raw=b"x", headers={"Content-Type": "text/plain"})
        check(st == 400, "upload needs multipart")
    # expiry: a hung line never completes, the window closes
    with Sim(*FAST, "--batch-expire-ms", "1500") as s:
        st, f = upload(s, jsonl([batch_line("ok", "fine"), batch_line("stuck", "x [[sim:hang=1]]")]))
        st, h, b = s.json("POST", "/v1/batches", {"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                                                  "completion_window": "24h"})
        b = wait_batch(s, b["id"], ("expired", "completed"))
        check(b["status"] == "expired" and b["expired_at"], "batch expired")
        st, h, out = s.request("GET", "/v1/files/%s/content" % b["output_file_id"])
        check(json.loads(out)["custom_id"] == "ok", "completed lines kept on expiry")
        st, h, err = s.request("GET", "/v1/files/%s/content" % b["error_file_id"])
        e = json.loads(err)
        check(e["custom_id"] == "stuck" and e["response"] is None
              and e["error"]["code"] == "batch_expired", "expired line in error file")
    # cancel while in progress
    with Sim("--batch-validate-ms", "0", "--batch-progress-ms", "100000", "--batch-finalize-ms", "30") as s:
        st, f = upload(s, jsonl([batch_line("c%d" % i, "x%d" % i) for i in range(40)]))
        st, h, b = s.json("POST", "/v1/batches", {"input_file_id": f["id"], "endpoint": "/v1/chat/completions",
                                                  "completion_window": "24h"})
        bid = b["id"]
        wait_batch(s, bid, ("in_progress",))
        st, h, b = s.json("POST", "/v1/batches/%s/cancel" % bid)
        check(st == 200 and b["status"] == "cancelling" and b["cancelling_at"], "cancelling")
        b = wait_batch(s, bid, ("cancelled",))
        check(b["cancelled_at"] and b["request_counts"]["completed"] < 40, "cancelled early")


def g_batch_anthropic():
    with Sim(*FAST) as s:
        reqs = [{"custom_id": "a%d" % i, "params": {"model": "c", "max_tokens": 32,
                 "messages": [{"role": "user", "content": "q%d" % i}]}} for i in range(3)]
        reqs.append({"custom_id": "bad", "params": {"model": "c", "max_tokens": 32,
                     "messages": [{"role": "user", "content": "x [[sim:fail=400]]"}]}})
        st, h, b = s.json("POST", "/v1/messages/batches", {"requests": reqs}, anthropic=True)
        check(st == 200 and b["type"] == "message_batch" and b["processing_status"] == "in_progress",
              "message batch created")
        check(b["request_counts"]["processing"] == 4 and b["results_url"] is None, "counts at start")
        bid = b["id"]
        b = wait_batch(s, bid, ("ended",), path="/v1/messages/batches/")
        check(b["request_counts"] == {"processing": 0, "succeeded": 3, "errored": 1, "canceled": 0,
                                      "expired": 0}, "final counts")
        check(b["ended_at"] and b["results_url"].endswith("/v1/messages/batches/%s/results" % bid), "results_url")
        st, h, raw = s.request("GET", "/v1/messages/batches/%s/results" % bid, anthropic=True)
        rows = [json.loads(x) for x in raw.decode().splitlines()]
        check([r["custom_id"] for r in rows] == ["a0", "a1", "a2", "bad"], "results in order")
        for r, q in zip(rows[:3], reqs):
            msg = r["result"]["message"]
            hx = chat_hash("c", q["params"]["messages"])
            check(r["result"]["type"] == "succeeded" and msg["content"][0]["text"].startswith("sim-" + hx),
                  "succeeded result belongs to its request")
        check(rows[3]["result"]["type"] == "errored"
              and rows[3]["result"]["error"]["error"]["type"] == "invalid_request_error", "errored result")
        st, h, b = s.json("GET", "/v1/messages/batches", anthropic=True)
        check(b["data"][0]["id"] == bid and b["has_more"] is False, "list message batches")
        st, h, b = s.json("POST", "/v1/messages/batches", {"requests": [{"custom_id": "x", "params": {"model": "c"}}]},
                          anthropic=True)
        check(st == 400 and b["type"] == "error", "invalid params rejected at create")
        st, h, b = s.json("GET", "/v1/messages/batches/msgbatch_nope", anthropic=True)
        check(st == 404 and b["error"]["type"] == "not_found_error", "unknown message batch")
    with Sim("--batch-validate-ms", "0", "--batch-progress-ms", "100000", "--batch-finalize-ms", "30") as s:
        reqs = [{"custom_id": "a%d" % i, "params": {"model": "c", "max_tokens": 8,
                 "messages": [{"role": "user", "content": "q%d" % i}]}} for i in range(40)]
        st, h, b = s.json("POST", "/v1/messages/batches", {"requests": reqs}, anthropic=True)
        bid = b["id"]
        st, h, b = s.json("GET", "/v1/messages/batches/%s/results" % bid, anthropic=True)
        check(st == 400, "results before end refused")
        st, h, b = s.json("POST", "/v1/messages/batches/%s/cancel" % bid, anthropic=True)
        check(st == 200 and b["processing_status"] == "canceling" and b["cancel_initiated_at"], "canceling")
        b = wait_batch(s, bid, ("ended",), path="/v1/messages/batches/")
        check(b["request_counts"]["canceled"] > 0, "canceled count")
        st, h, raw = s.request("GET", "/v1/messages/batches/%s/results" % bid, anthropic=True)
        types = {json.loads(x)["result"]["type"] for x in raw.decode().splitlines()}
        check("canceled" in types, "canceled results")
    with Sim(*FAST, "--batch-expire-ms", "1500") as s:
        reqs = [{"custom_id": "ok", "params": {"model": "c", "max_tokens": 8,
                 "messages": [{"role": "user", "content": "fine"}]}},
                {"custom_id": "stuck", "params": {"model": "c", "max_tokens": 8,
                 "messages": [{"role": "user", "content": "x [[sim:hang=1]]"}]}}]
        st, h, b = s.json("POST", "/v1/messages/batches", {"requests": reqs}, anthropic=True)
        b = wait_batch(s, b["id"], ("ended",), path="/v1/messages/batches/")
        check(b["request_counts"]["expired"] == 1 and b["request_counts"]["succeeded"] == 1, "expired count")
        st, h, raw = s.request("GET", "/v1/messages/batches/%s/results" % b["id"], anthropic=True)
        types = [json.loads(x)["result"]["type"] for x in raw.decode().splitlines()]
        check(types == ["succeeded", "expired"], "expired result")


def g_cli():
    import subprocess
    from simlib import BIN
    r = subprocess.run([BIN, "--help"], capture_output=True, text=True, timeout=10)
    check(r.returncode == 0, "--help exits 0")
    for flag in ("--host", "--port", "--latency-ms", "--jitter-ms", "--tokens-per-sec", "--rpm", "--tpm",
                 "--api-key", "--models", "--p500", "--p503", "--p429", "--phang", "--pmalformed",
                 "--preset", "--hang-ms", "--seed", "--batch-validate-ms", "--batch-progress-ms",
                 "--batch-finalize-ms", "--batch-expire-ms", "--max-body", "--max-file-store",
                 "--quiet", "--exit-with-parent", "--help", "fail=CODExN", "hang=N", "malformed=N", "reset=N",
                 "delay_ms=N", "context_length"):
        check(flag in r.stdout, "--help mentions " + flag)
    for bad in (["--nope"], ["--p500", "2"], ["--port", "x"], ["--latency-ms"], ["extra"],
                ["--p500", "0.6", "--p503", "0.6"], ["--api-key", ""]):
        r = subprocess.run([BIN, *bad], capture_output=True, text=True, timeout=10)
        check(r.returncode == 2 and "llmq-sim:" in r.stderr, "bad flags exit 2: %s" % bad)
    # --exit-with-parent: the simulator stops when its parent dies
    sh = subprocess.Popen(["/bin/sh", "-c", BIN + " --port 0 --quiet --exit-with-parent & echo $!; read x"],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    # The pid (from the shell) and the sim's ready line may come in either order.
    lines = [sh.stdout.readline(), sh.stdout.readline()]
    ready = [l for l in lines if l.startswith(b"ready llmq-sim")]
    pids = [l for l in lines if l.strip().isdigit()]
    check(len(ready) == 1 and len(pids) == 1, "child sim ready and its pid: %r" % lines)
    pid = int(pids[0])
    sh.stdin.close()
    sh.wait(10)
    sh.stdout.close()

    def gone():
        try:
            with open("/proc/%d/stat" % pid) as f:
                return f.read().split(")")[-1].split()[0] in ("Z", "X")
        except OSError:
            return True
    poll(gone, what="llmq-sim exits with its parent")
    with Sim("--max-body", "2048") as s:
        st, h, b = s.request("POST", "/v1/chat/completions", raw=b"x" * 5000,
                             headers={"Content-Type": "application/json"})
        check(st == 413, "body over --max-body -> 413")
        st, h, b = chat(s, "still fine")
        check(st == 200, "server fine after oversized body")
        # garbage on the wire never kills the server
        for junk in (b"\x00\xff\r\n\r\n", b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: -5\r\n\r\n",
                     b"GET / HTTP/1.1\r\n" + b"X: " + b"y" * 100000 + b"\r\n\r\n"):
            c = _socket.create_connection((s.host, s.port), timeout=5)
            try:
                c.sendall(junk)
                c.shutdown(_socket.SHUT_WR)
                while c.recv(65536):
                    pass
            except OSError:
                pass
            c.close()
        st, h, b = chat(s, "after junk")
        check(st == 200, "server fine after junk input")
        for bad_body in ({"model": 5, "messages": []}, {"model": "m", "messages": [5]},
                         {"model": "m", "messages": [{"role": "user", "content": 7}]},
                         {"model": "m", "messages": MSGS, "stream": "yes"},
                         [1, 2], "str", None):
            st, h, b = s.json("POST", "/v1/chat/completions", raw=json.dumps(bad_body).encode())
            check(st == 400 and "error" in b, "bad body %r -> 400" % (bad_body,))


GROUPS = {"cli": g_cli, "openai": g_openai, "anthropic": g_anthropic, "auth": g_auth, "limits": g_limits,
          "faults": g_faults, "directives": g_directives, "stats": g_stats,
          "batch_openai": g_batch_openai, "batch_anthropic": g_batch_anthropic}

if __name__ == "__main__":
    run(GROUPS)
