#!/usr/bin/python3
"""test_secrets.py - keys that a provider echoes, and usage a worker lies
about, through the real processes (issue 13). One scenario per run:

  leak      llmq-sim echoes the worker's API key in its error message
            ([[sim:fail=400,echo_key=N]]) at every offset N around every
            cut a message meets on its way (the provider text 200 / 400,
            the worker's 512 / 600 / 700 / 1,024 buffers, the log's 2,048):
            `llmq run` (realtime), a realtime batch and a provider (Batch
            API) batch. No piece of 8 or more characters from the start of
            the key may appear in the client's output, any process log
            (broker, worker, llmq), or the batch database files.
  rogue     a stand-in worker (the protocol spoken by hand) answers with
            cost NaN / inf / -1 / 1e300 and tokens INT64_MIN / -5 / 10^15:
            the client's `res`, `llmq run`'s summary, the broker's status
            counter and metric, and the batch database show sane numbers.

Waits are polls with deadlines (llmqtest.wait_until), never sleeps.
"""
import glob
import json
import math
import os
import sqlite3
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import llmqtest as kit  # noqa: E402
from llmqtest import check, fail, wait_until  # noqa: E402

KEY = "sk-LEAK-0123456789abcdefghijKLMNOPQRSTuvwxyz4242"
PIECE = KEY[:8]  # any prefix of 8 or more characters holds this
CUTS = (200, 400, 512, 600, 700, 1024, 2048)
MODEL = kit.MODEL


def offsets():
    """Every offset where the key straddles a cut, with some room on both
    sides for the words put in front of the message ("HTTP 400: ")."""
    out = set()
    for c in CUTS:
        out.update(range(max(0, c - len(KEY) - 16), c + 3))
    return sorted(out)


def leaks(path):
    with open(path, "rb") as f:
        data = f.read()
    return PIECE.encode() in data


def stop_keep_log(proc, tmp):
    """Stop proc (SIGTERM, exit 0 checked) and return a copy of its whole
    log in tmp (the kit removes the log itself once it is checked)."""
    import signal
    proc.send_signal(signal.SIGTERM)
    check(proc.wait(30) is not None, "%s did not stop" % proc.name)
    copy = os.path.join(tmp, "%s-%d.log" % (proc.name.replace(" ", "_"), proc.proc.pid))
    with open(copy, "w") as f:
        f.write(proc.stderr())
    proc.check_exit(0)
    return copy


def check_no_leak(groups):
    """groups: (what, paths); every file must exist and hold no piece of
    the key. All groups are looked at before failing, to say where."""
    found = []
    for what, paths in groups:
        missing = [p for p in paths if not os.path.exists(p)]
        check(not missing, "%s: no such file %r" % (what, missing))
        for p in paths:
            with open(p, "rb") as f:
                data = f.read()
            at = data.find(PIECE.encode())
            if at >= 0:
                found.append("%s: %s (%d pieces): ...%r..." % (
                    what, os.path.basename(p), data.count(PIECE.encode()),
                    data[max(0, at - 30):at + 30]))
    check(not found, "a piece of the key leaked:\n  " + "\n  ".join(found))


def write_run_input(path, offs, tag, model=MODEL):
    with open(path, "w") as f:
        for n in offs:
            text = "%s %d [[sim:fail=400,echo_key=%d]]" % (tag, n, n)
            f.write(json.dumps({"custom_id": "%s-%d" % (tag, n), "method": "POST",
                                "url": "/v1/chat/completions",
                                "body": {"model": model, "max_tokens": 4,
                                         "messages": [{"role": "user", "content": text}]}})
                    + "\n")


def keep(tmp, name, text):
    path = os.path.join(tmp, name)
    with open(path, "w") as f:
        f.write(text)
    return path


def failed(row):
    """An OUT line that failed: no response (error set), or the provider's
    HTTP error (response with a status that is not 2xx, error null)."""
    resp = row.get("response")
    return bool(row.get("error")) or not (resp and 200 <= resp["status_code"] < 300)


def error_message(row):
    """The error message of a failed OUT line, wherever it is."""
    if row.get("error"):
        return row["error"]["message"]
    err = ((row.get("response") or {}).get("body") or {}).get("error") or {}
    return str(err.get("message", ""))


def run_paths(fe, tmp, offs, model, tag, batch_modes):
    """Every offset through `llmq run` and one batch per mode in
    batch_modes, for model. Returns (files written, rows with the marker)."""
    files, marked = [], 0
    for mode in ("run",) + tuple(batch_modes):
        name = "%s-%s" % (tag, mode)
        inp, out = os.path.join(tmp, name + ".jsonl"), os.path.join(tmp, name + ".out.jsonl")
        write_run_input(inp, offs, name, model)
        if mode == "run":
            args = ["run", inp, "-o", out, "--concurrency", "64"]
        else:
            args = ["batch", "submit", inp, "--mode", mode, "-o", out, "--quiet"]
        rc, stdout, stderr = kit.run_llmq(args + ["--broker", fe], timeout=180)
        check(rc == 1, "%s: every line fails (exit 1): rc %d: %s" % (name, rc, stderr[-2000:]))
        rows = [json.loads(line) for line in open(out)]
        check(len(rows) == len(offs) and all(failed(r) for r in rows),
              "%s: %d error rows for %d inputs: %r" % (name, len(rows), len(offs), rows[:1]))
        marked += sum("[redacted]" in error_message(r) for r in rows)
        files += [out, keep(tmp, name + ".stdout", stdout), keep(tmp, name + ".stderr", stderr)]
    return files, marked


def t_leak():
    tmp = kit.temp_dir("llmq-secrets-leak-")
    db = os.path.join(tmp, "batches.db")
    # --api-key: the sim takes no other key, so the key echoed is KEY.
    sim = kit.Sim("--api-key", KEY, "--batch-validate-ms", "50", "--batch-progress-ms", "200",
                  "--batch-finalize-ms", "50")
    broker = kit.Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "--batch-db", db,
                        "--batch-poll-ms", "50", "--verbose")
    # --verbose: the workers log every failure with its message.
    worker = kit.Worker(broker.backend, sim.url, 64, MODEL, "--batch-api", "--verbose",
                        env={"LLMQ_API_KEY": KEY})
    anthropic = kit.Proc([kit.bin_path("llmq-worker"), "--broker", broker.backend,
                          "--provider", "anthropic", "--base-url", sim.url + "/v1",
                          "--model", "claude-sim", "--capacity", "64", "--batch-api",
                          "--verbose"], name="llmq-worker-anthropic",
                         env={"LLMQ_API_KEY": KEY})
    fe = broker.frontend
    wait_until("the workers at the broker",
               lambda: len((kit.broker_status(fe) or {}).get("workers", [])) == 2, 30)
    offs = offsets()
    # OpenAI: realtime, realtime batch, provider batch; Anthropic: realtime
    # and provider batch (a realtime batch is the realtime path again).
    outputs, marked = run_paths(fe, tmp, offs, MODEL, "oa", ("realtime", "provider"))
    more, marked2 = run_paths(fe, tmp, offs, "claude-sim", "an", ("provider",))
    outputs += more
    batches = sim.stats()["batches"]
    check(batches["openai"]["created"] >= 1 and batches["anthropic"]["created"] >= 1,
          "the provider batches ran at the sim: %r" % batches)

    # The database as stored: the error texts are in it.
    con = sqlite3.connect(db)
    try:
        n = con.execute("SELECT count(*) FROM results WHERE error_message LIKE "
                        "'%[redacted]%'").fetchone()[0]
    except sqlite3.Error as e:
        n = -1
        print("note: cannot query results (%s); checking the files only" % e, file=sys.stderr)
    finally:
        con.close()
    logs = [stop_keep_log(worker, tmp), stop_keep_log(anthropic, tmp),
            stop_keep_log(broker, tmp)]
    check_no_leak((("client output", outputs), ("process logs", logs),
                   ("batch database", glob.glob(db + "*"))))
    # Not vacuous: the texts checked hold the messages, the key shown as
    # the marker where it was whole.
    check(marked and marked2, "the echoed key is shown as [redacted] (%d, %d rows)"
          % (marked, marked2))
    check(n != 0, "the batch db holds the scrubbed messages")
    check(any("[redacted]" in open(p, errors="replace").read() for p in logs),
          "the worker's --verbose log shows the failures (scrubbed)")
    print("leak: %d offsets x 5 paths (openai: run, realtime batch, provider batch; "
          "anthropic: run, provider batch), no piece of the key anywhere" % len(offs))
    sim.stop()
    kit.finish()


# ---------------------------------------------------------------- rogue worker

BAD = [  # (cost, prompt tokens, completion tokens, total tokens)
    (float("nan"), -9223372036854775808, -5, -9223372036854775808),
    (float("inf"), 10 ** 15, 3, 10 ** 15),
    (-1.0, 4, -9223372036854775808, 0),
    (1e300, 2, 2, 4),
]
GOOD = (0.5, 10, 5, 15)
# A name that would forge a log line and clear the terminal if written raw.
ROGUE_NAME = "rogue\n2026-12-02T00:00:00.000Z info llmq-broker forged=1\x1b[2J\xc2\x9b"


class RogueWorker(threading.Thread):
    """A worker that speaks the protocol by hand and lies about usage: the
    i-th request gets BAD[i % len(BAD)], every fifth GOOD."""

    def __init__(self, backend, capacity=8):
        super().__init__(daemon=True)
        import msgpack
        import zmq
        self.msgpack, self.zmq = msgpack, zmq
        self.s = zmq.Context.instance().socket(zmq.DEALER)
        self.s.setsockopt(zmq.IDENTITY, b"rogue-%d" % os.getpid())
        self.s.setsockopt(zmq.LINGER, 0)
        self.s.connect(backend)
        self.capacity, self.n, self.stop_flag = capacity, 0, False
        self.send({"t": "hello", "worker": ROGUE_NAME, "pool": "fake", "provider": "echo",
                   "models": [MODEL], "capacity": capacity, "version": "test"})
        self.send({"t": "credit", "n": capacity})

    def send(self, header, payload=None):
        header = dict({"v": 1}, **header)
        frames = [self.msgpack.packb(header, use_bin_type=True)]
        if payload is not None:
            frames.append(payload)
        self.s.send_multipart(frames)

    def usage(self):
        k = self.n
        self.n += 1
        cost, p, c, t = GOOD if k % 5 == 4 else BAD[k % len(BAD)]
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": t, "cost_usd": cost}

    def run(self):
        last_hb = 0.0
        while not self.stop_flag:
            if time.monotonic() - last_hb > 0.2:
                self.send({"t": "hb", "healthy": True})
                last_hb = time.monotonic()
            if not self.s.poll(100):
                continue
            frames = self.s.recv_multipart()
            h = self.msgpack.unpackb(frames[0], raw=False)
            if h.get("t") != "req":
                continue
            body = self.msgpack.packb({"id": "x", "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "ok"},
                 "finish_reason": "stop"}]}, use_bin_type=True)
            self.send({"t": "res", "id": h["id"], "ok": True, "usage": self.usage()}, body)
            self.send({"t": "credit", "n": 1})

    def close(self):
        self.stop_flag = True
        self.join(5)
        self.s.close()


def sane(x, bound):
    return isinstance(x, (int, float)) and math.isfinite(x) and 0 <= x <= bound


def t_rogue():
    tmp = kit.temp_dir("llmq-secrets-rogue-")
    db = os.path.join(tmp, "batches.db")
    # --verbose: the broker also dumps every message (names in it too).
    broker = kit.Broker("tcp://127.0.0.1:*", "tcp://127.0.0.1:*", "--batch-db", db,
                        "--batch-poll-ms", "50", "--verbose")
    fe = broker.frontend
    rogue = RogueWorker(broker.backend)
    rogue.start()
    try:
        wait_until("the rogue worker at the broker",
                   lambda: len((kit.broker_status(fe) or {}).get("workers", [])) == 1, 30)
        n = 20
        inp, out = os.path.join(tmp, "in.jsonl"), os.path.join(tmp, "out.jsonl")
        with open(inp, "w") as f:
            for i in range(n):
                f.write(json.dumps({"custom_id": "r-%d" % i, "method": "POST",
                                    "url": "/v1/chat/completions",
                                    "body": {"model": MODEL, "messages": [
                                        {"role": "user", "content": "q%d" % i}]}}) + "\n")
        # 1. `llmq run`: each line's usage, and the summary.
        rc, stdout, stderr = kit.run_llmq(["run", inp, "-o", out, "--broker", fe])
        check(rc == 0, "llmq run: rc %d: %s" % (rc, stderr[-2000:]))
        rows = [json.loads(line) for line in open(out)]
        check(len(rows) == n, "%d rows" % len(rows))
        for r in rows:
            u = (r.get("response") or {}).get("body", {}).get("usage") or r.get("usage") or {}
            for k, v in u.items():
                check(sane(v, 2e9), "row %s: usage %s = %r" % (r["custom_id"], k, v))
        summary = stdout + stderr
        for word in ("nan", "inf", "-9223372036854775", "1e+300", "$-"):
            check(word not in summary.lower(), "summary shows %r: %s" % (word, summary))
        # 2. The broker counted them (status) and logged the worker once.
        st = kit.broker_status(fe)
        bad = st["counters"].get("bad_usage") if isinstance(st["counters"], dict) else \
            {c["name"]: c["value"] for c in st["counters"]}.get("bad_usage")
        check(bad == n - n // 5, "status bad_usage = %r, expected %d" % (bad, n - n // 5))
        # 3. A realtime batch: the db and `llmq batch status`.
        rc, stdout, stderr = kit.run_llmq(["batch", "submit", inp, "--mode", "realtime", "-o",
                                           os.path.join(tmp, "b.jsonl"), "--quiet",
                                           "--broker", fe])
        check(rc == 0, "batch: rc %d: %s" % (rc, stderr[-2000:]))
        rc, stdout, stderr = kit.run_llmq(["batch", "list", "--broker", fe])
        bid = next(line.split()[0] for line in stdout.splitlines() if "completed" in line)
        rc, stdout, stderr = kit.run_llmq(["batch", "status", bid, "--json", "--broker", fe])
        bst = json.loads(stdout)
        for k in ("prompt_tokens", "completion_tokens", "total_tokens", "cost_usd"):
            if k in bst:
                check(sane(bst[k], 1e12), "batch status %s = %r" % (k, bst[k]))
        check(bst.get("cost_usd", 0) <= n * GOOD[0] + 1e-9, "batch cost: %r" % bst)
    finally:
        rogue.close()
    log = open(stop_keep_log(broker, tmp), errors="replace").read()
    check(log.count("worker_bad_usage") == 1, "the rogue worker is logged once:\n%s" % log[-3000:])
    forged = [line for line in log.splitlines() if "forged=1" in line and not line.startswith(
        ("20", "    ", "llmq_msg"))] + [line for line in log.splitlines()
                                        if line.startswith("2026-12-02T00:00:00")]
    check(not forged and "\x1b" not in log and "\u009b" not in log,
          "the worker's name is escaped in the broker's log: %r" % forged)
    con = sqlite3.connect(db)
    try:
        for table, cols in (("batches", "prompt_tokens, completion_tokens, cost_usd"),
                            ("results", "prompt_tokens, completion_tokens, cost_usd")):
            try:
                rows = con.execute("SELECT %s FROM %s" % (cols, table)).fetchall()
            except sqlite3.Error as e:
                fail("batch db %s: %s" % (table, e))
            check(rows, "batch db %s: rows" % table)
            for row in rows:
                check(all(v is not None and sane(v, 1e12) for v in row),
                      "batch db %s: %r" % (table, row))
    finally:
        con.close()
    print("rogue: %d answers with bad usage: client, summary, status, db sane" % (n - n // 5))
    kit.finish()


SCENARIOS = {"leak": t_leak, "rogue": t_rogue}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in SCENARIOS:
        print("usage: test_secrets.py " + "|".join(SCENARIOS), file=sys.stderr)
        sys.exit(2)
    kit.BIN_DIR = os.environ.get("LLMQ_BIN_DIR", kit.BIN_DIR)
    SCENARIOS[sys.argv[1]]()
