"""Helpers for the client end-to-end tests: the cluster launchers of the
shared kit (tests/lib/llmqtest.py: llmq-sim, llmq-broker and llmq-worker on
free ports, ready lines, polls with deadlines, never sleeps) and the
JSONL input/output checks of `llmq run`. Runs on /usr/bin/python3
(python3-zmq, python3-msgpack)."""
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import llmqtest  # noqa: E402
from llmqtest import (  # noqa: E402,F401
    BIN_DIR, MODEL, SOURCE_DIR, VERBOSE, Broker, Cluster, Proc, Sim, Worker, bin_path,
    broker_status, chat_hash, check, fail, fnv1a64, low_port, temp_dir, wait_until)

_low_port = low_port


run_llmq = llmqtest.run_llmq


def read_jsonl(path):
    with open(path, "rb") as f:
        data = f.read()
    lines = data.split(b"\n")
    check(lines[-1] == b"", "%s does not end with a newline" % path)
    return [json.loads(line) for line in lines[:-1]]


def job_files(prefix, n, **kw):
    """A temp dir (llmqtest.temp_dir) with in.jsonl written by write_input
    (n lines, kw passed on); returns (dir, in path, out path, expect)."""
    tmp = temp_dir(prefix)
    inp, out = os.path.join(tmp, "in.jsonl"), os.path.join(tmp, "out.jsonl")
    return tmp, inp, out, write_input(inp, n, **kw)


def write_input(path, n, fault_every=(10, 25), start=0):
    """n lines in mixed formats. Every fault_every[0]-th line carries
    [[sim:fail=500x1]] (a transient fault: the worker retries, the line ends
    ok); every fault_every[1]-th carries [[sim:fail=400]] (permanent: an
    error line). Returns {custom_id: (kind, messages)} with kind in ok,
    retry, fail."""
    expect = {}
    with open(path, "w") as f:
        for i in range(start, start + n):
            cid = "req-%05d" % i
            kind = "ok"
            text = "Question %d: what is %d times %d?" % (i, i, i + 1)
            if fault_every[1] and i % fault_every[1] == 7:
                kind = "fail"
                text += " [[sim:fail=400]]"
            elif fault_every[0] and i % fault_every[0] == 3:
                kind = "retry"
                text += " [[sim:fail=500x1]]"
            messages = [{"role": "user", "content": text}]
            form = i % 3
            if form == 0:
                line = {"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                        "body": {"model": MODEL, "messages": messages, "max_tokens": 16}}
            elif form == 1:
                line = {"custom_id": cid, "prompt": text, "max_tokens": 16}
            else:
                line = {"custom_id": cid, "messages": messages, "max_tokens": 16}
            f.write(json.dumps(line) + "\n")
            expect[cid] = (kind, messages)
    return expect


def verify_output(path, expect, ordered=True):
    """Every custom_id answered exactly once, in input order; ok lines carry
    the sim's answer for their own request; failures are error lines."""
    rows = read_jsonl(path)
    ids = [r["custom_id"] for r in rows]
    check(len(ids) == len(set(ids)), "duplicate custom_ids in %s" % path)
    check(set(ids) == set(expect), "custom_ids differ: missing %s, extra %s" % (
        sorted(set(expect) - set(ids))[:5], sorted(set(ids) - set(expect))[:5]))
    if ordered:
        check(ids == list(expect), "output is not in input order")
    counts = {"ok": 0, "retry": 0, "fail": 0}
    for r in rows:
        kind, messages = expect[r["custom_id"]]
        counts[kind] += 1
        if kind == "fail":
            # The sim's HTTP 400: a response with its status and error body,
            # error null (OpenAI's batch output), llmq's code in llmq.
            check(r["error"] is None and r["response"]["status_code"] == 400
                  and "error" in r["response"]["body"]
                  and r["llmq"]["error_code"] == "invalid_request",
                  "%s should be an HTTP 400 line: %r" % (r["custom_id"], r))
            continue
        check(llmqtest.out_line_ok(r), "%s failed: %r" % (r["custom_id"], r))
        check(r["response"]["status_code"] == 200, "%s status" % r["custom_id"])
        content = r["response"]["body"]["choices"][0]["message"]["content"]
        want = "sim-" + chat_hash(MODEL, messages)
        check(content.startswith(want), "%s answered with another request's content: %r vs %r"
              % (r["custom_id"], content[:24], want))
    return counts
