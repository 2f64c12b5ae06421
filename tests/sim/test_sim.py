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


GROUPS = {"openai": g_openai, "anthropic": g_anthropic, "auth": g_auth}

if __name__ == "__main__":
    run(GROUPS)
