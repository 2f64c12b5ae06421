#!/usr/bin/python3
"""Interop: a Python client (pyzmq + msgpack, as in PROTOCOL.md section 11)
against the C codec, served by `proto_codec echo` on tcp://127.0.0.1:*.

Checks that headers packed by Python's msgpack decode in C, that C-encoded
headers decode in Python with the types PROTOCOL.md promises, that payloads
survive msgpack -> JSON -> msgpack, and that malformed input comes back as
`error` {code: bad_message} with a reason.
"""
import os
import subprocess
import sys

import msgpack
import zmq

TIMEOUT_MS = 10000


def start_server():
    bindir = os.environ.get("LLMQ_BIN_DIR", "build/bin")
    proc = subprocess.Popen([os.path.join(bindir, "proto_codec"), "echo"],
                            stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    assert line[:2] == ["ready", "proto_codec"], line
    return proc, line[2].split("=", 1)[1]


def roundtrip(sock, frames):
    sock.send_multipart(frames)
    if not sock.poll(TIMEOUT_MS):
        raise AssertionError("no answer within %d ms" % TIMEOUT_MS)
    reply = sock.recv_multipart()
    return msgpack.unpackb(reply[0]), reply[1:]


def main():
    proc, endpoint = start_server()
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.ROUTING_ID, b"py-client")
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    checks = 0
    try:
        # the example client of PROTOCOL.md
        header = {"v": 1, "t": "req", "id": "r-1", "op": "chat",
                  "model": "gpt-4o-mini", "meta": {"row": 7, "tags": ["a"]},
                  "pool": None, "future_key": [1, {"x": 2}]}
        body = {"messages": [{"role": "user", "content": "Héllo"}],
                "max_tokens": 32, "temperature": 0.5,
                "seed": 1234567890123456}
        h, rest = roundtrip(sock, [msgpack.packb(header), msgpack.packb(body)])
        assert h["v"] == 1 and h["t"] == "res" and h["id"] == "r-1", h
        assert h["ok"] is True and h["meta"] == header["meta"], h
        assert isinstance(h["usage"]["total_tokens"], int), h
        assert isinstance(h["usage"]["cost_usd"], float), h
        assert msgpack.unpackb(rest[0]) == body, msgpack.unpackb(rest[0])
        checks += 1

        h, _ = roundtrip(sock, [msgpack.packb({"t": "ping", "v": 1})])
        assert h["t"] == "pong" and isinstance(h["time_ms"], int), h
        checks += 1

        items = [{"custom_id": "c%d" % k, "body": {"prompt": "p%d" % k}}
                 for k in range(5)]
        h, _ = roundtrip(sock, [msgpack.packb({"v": 1, "t": "batch.add",
                                               "batch": "b1", "seq": 3}),
                                msgpack.packb(items)])
        assert h["t"] == "batch.ack" and h["accepted"] == 5 and h["seq"] == 3, h
        checks += 1

        hello = {"v": 1, "t": "hello", "worker": "w", "pool": "p",
                 "provider": "sim", "models": ["m1", "m2"], "capacity": 8,
                 "limits": {"rpm": 60, "tpm": 0}}
        h, _ = roundtrip(sock, [msgpack.packb(hello)])
        assert h["t"] == "credit" and h["n"] == 2, h
        checks += 1

        bad = [
            ([b"\xc1"], "reserved byte"),
            ([msgpack.packb({"v": 2, "t": "ping"})], "unsupported version 2"),
            ([msgpack.packb({"v": 1, "t": "nope"})], "unknown type 'nope'"),
            ([msgpack.packb({"v": 1, "t": "req", "id": "r-9", "op": "chat"}),
              msgpack.packb({})], "missing required 'model'"),
            ([msgpack.packb({"v": 1, "t": "req", "id": "r-9", "op": 1,
                             "model": "m"}), msgpack.packb({})],
             "'op' wrong type"),
            ([msgpack.packb({"v": 1, "t": "ping"}), b"\xc0"],
             "payload not allowed"),
            ([msgpack.packb({"v": 1, "t": "ping"}), b"", b""],
             "too many frames (3)"),
            ([msgpack.packb([1, 2])], "header is not a map"),
            ([b"\xdf\xff\xff\xff\xff"], "count exceeds bytes left"),
            ([msgpack.packb({"v": 1, "t": "hb", "x": msgpack.ExtType(1, b"")})
              + b""], None),
        ]
        for frames, reason in bad:
            if reason is None:  # ext under an unknown key is skipped: no reply
                sock.send_multipart(frames)
                continue
            h, _ = roundtrip(sock, frames)
            assert h["t"] == "error" and h["code"] == "bad_message", h
            assert reason in h["message"], (reason, h)
            checks += 1
        # the id of a rejected request is named in the error
        h, _ = roundtrip(sock, [msgpack.packb({"v": 1, "t": "req", "id": "r-9",
                                               "op": "chat"}),
                                msgpack.packb({})])
        assert h.get("id") == "r-9", h
        checks += 1

        sock.send_multipart([msgpack.packb({"v": 1, "t": "bye"})])
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
        ctx.term()
    print("interop.py: %d checks passed" % checks)


if __name__ == "__main__":
    sys.exit(main())
