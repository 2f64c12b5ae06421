#!/usr/bin/python3
"""Delivery under churn (issue 11, PROTOCOL.md 3.3), with the real
binaries on free ports and llmq-sim as the provider.

  test_churn.py restart   kill -9 of the broker mid-run, new broker on the
                          same ports: every line answered once and correct,
                          llmq-sim's double_billed 0
  test_churn.py restart_slow  the same with 4 s without a broker (every
                          running request finishes meanwhile and is held)
  test_churn.py sigterm   the same with SIGTERM (drain) instead of kill -9
  test_churn.py sigterm_short  SIGTERM with a 300 ms drain: what still runs
                          at the workers is held and attached, not paid twice
  test_churn.py workers   one worker kill -9'd every 2 s and replaced: no
                          line fails; double_billed at most the requests in
                          flight at the killed workers (reported)
  test_churn.py poison    a request that kills every worker it reaches
                          (LLMQ_TEST_POISON) fails after a bounded number of
                          deaths; the others succeed
  test_churn.py stream    a stream whose worker dies mid-way ends with
                          "stream interrupted", never spliced (--random-text)
  test_churn.py stream_restart  a stream across a broker kill -9 goes on
                          where it was (attached), one provider call
  test_churn.py deadline  a request without a deadline at a provider that
                          never answers ends with the broker's default
  test_churn.py breaker   3 always-500 requests among 1,000 good ones on one
                          worker: the circuit never opens, the good ones
                          all succeed

LLMQ_CHURN_LINES scales the two big runs (default 6000)."""
import json
import os
import select
import signal
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import (Proc, bin_path, check, job_files, llmqtest, read_jsonl,  # noqa
                        run_llmq, temp_dir, verify_output, wait_until, MODEL)
from test_resume import complete_lines  # noqa

LINES = int(os.environ.get("LLMQ_CHURN_LINES", "6000"))


class Worker(Proc):
    def __init__(self, backend, sim_url, capacity, env=None, stderr_path=None, *flags):
        self.stderr_path = stderr_path
        full = {"OPENAI_API_KEY": "sk-test-key"}
        full.update(env or {})
        argv = [bin_path("llmq-worker"), "--broker", backend, "--provider", "sim",
                "--base-url", sim_url + "/v1", "--model", MODEL,
                "--capacity", str(capacity), *flags]
        if stderr_path:
            # Proc discards stderr; keep it for the log checks.
            argv = ["/bin/sh", "-c", 'exec "$@" 2>>' + stderr_path, "sh"] + argv
        super().__init__(argv, env=full)
        self.name = self.ready.get("worker")


class Cluster(llmqtest.Cluster):
    """The kit's cluster with churn's workers (an environment, a stderr
    log kept for the checks)."""

    def __init__(self, workers, capacity, sim_flags=(), worker_env=None, broker_flags=(),
                 stderr_path=None):
        self.worker_env = worker_env
        self.stderr_path = stderr_path
        super().__init__(workers, capacity, sim_flags=sim_flags, broker_flags=broker_flags,
                         latency_ms=None)

    def add_worker(self, capacity=None, *flags):
        w = Worker(self.broker.backend, self.sim.url, capacity or self.capacity,
                   self.worker_env, self.stderr_path, *flags)
        self.workers.append(w)
        self.procs.append(w)
        return w

    def live_workers(self):
        s = self.status()
        return s.get("workers", []) if s else []


def start_run(inp, out, broker, concurrency, extra=()):
    args = [bin_path("llmq"), "run", inp, "-o", out, "--broker", broker,
            "--model", MODEL, "--concurrency", str(concurrency), *extra]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def finish(proc, timeout):
    stdout, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stdout.decode(errors="replace"), stderr.decode(errors="replace")


def test_restart(sig, outage=0.0, broker_flags=()):
    _, inp, out, expect = job_files("llmq-churn-restart-", LINES, fault_every=(0, 0))
    cluster = Cluster(4, 256, sim_flags=("--latency-ms", "1000"), broker_flags=broker_flags)
    try:
        proc = start_run(inp, out, cluster.broker.frontend, 1024, ("--timeout", "1500"))
        wait_until("a quarter of the lines", lambda: len(complete_lines(out)) >= LINES // 4, 120)
        in_flight = cluster.sim.stats().get("in_flight", 0)
        cluster.restart_broker(sig, outage)
        check(proc.poll() is None, "llmq run ended before the restart")
        rc, _, stderr = finish(proc, 300)
        check(rc == 0, "llmq run rc %d: %s" % (rc, stderr[-2000:]))
        counts = verify_output(out, expect)
        stats = cluster.sim.stats()
        print("churn.%s: %d lines %r, sim in flight at the restart %d, double_billed %d, "
              "answered_ok %d" % ("restart" if sig == signal.SIGKILL else "sigterm", LINES,
                                  counts, in_flight, stats["double_billed"], stats["answered_ok"]))
        check(stats["double_billed"] == 0, "double billed: %r" % stats)
        check(stats["answered_ok"] == LINES, "provider answered %d, want %d"
              % (stats["answered_ok"], LINES))
    finally:
        cluster.close()


def test_workers():
    _, inp, out, expect = job_files("llmq-churn-workers-", LINES, fault_every=(0, 0))
    cluster = Cluster(4, 256, sim_flags=("--latency-ms", "1000"))
    kills, at_risk = 0, 0
    try:
        proc = start_run(inp, out, cluster.broker.frontend, 1024, ("--timeout", "3000"))
        next_kill = time.monotonic() + 2.0
        while proc.poll() is None:
            select.select([], [], [], 0.05)
            if time.monotonic() < next_kill:
                continue
            next_kill += 2.0
            victim = cluster.workers.pop(0)
            held = [w.get("in_flight", 0) for w in cluster.live_workers()
                    if w.get("name") == victim.name]
            victim.kill(signal.SIGKILL)
            cluster.procs.remove(victim)
            kills += 1
            at_risk += held[0] if held else cluster.capacity
            cluster.add_worker()
        rc, _, stderr = finish(proc, 60)
        check(rc == 0, "llmq run rc %d (lines failed?): %s" % (rc, stderr[-2000:]))
        counts = verify_output(out, expect)
        stats = cluster.sim.stats()
        # What the broker sent again because its worker died: the requests
        # that were in flight at the killed workers.
        requeued = cluster.status()["counters"]["requeued"]
        print("churn.workers: %d lines %r, %d workers killed holding about %d requests, "
              "%d requeued, double_billed %d" % (LINES, counts, kills, at_risk, requeued,
                                                 stats["double_billed"]))
        check(kills >= 2, "the run ended before two kills")
        check(stats["double_billed"] <= requeued, "double billed %d > %d requeued"
              % (stats["double_billed"], requeued))
    finally:
        cluster.close()


def test_poison():
    tmp = temp_dir("llmq-churn-poison-")
    inp, out = os.path.join(tmp, "in.jsonl"), os.path.join(tmp, "out.jsonl")
    n = 60
    with open(inp, "w") as f:
        for i in range(n):
            text = "Question %d" % i + (" POISON-PILL-%d" % os.getpid() if i == 17 else "")
            f.write(json.dumps({"custom_id": "q%02d" % i, "prompt": text}) + "\n")
    env = {"LLMQ_TEST_POISON": "POISON-PILL-%d" % os.getpid()}
    cluster = Cluster(3, 8, sim_flags=("--latency-ms", "200"), worker_env=env)
    deaths = 0
    try:
        proc = start_run(inp, out, cluster.broker.frontend, 16, ("--timeout", "3000"))
        deadline = time.monotonic() + 150
        while proc.poll() is None and time.monotonic() < deadline:
            select.select([], [], [], 0.05)
            for w in list(cluster.workers):
                if w.proc.poll() is not None:
                    deaths += 1
                    cluster.workers.remove(w)
                    cluster.procs.remove(w)
                    cluster.add_worker()
        rc, _, stderr = finish(proc, 30)
        rows = {r["custom_id"]: r for r in read_jsonl(out)}
        check(len(rows) == n, "%d lines answered, want %d" % (len(rows), n))
        bad = rows["q17"]
        check(bad["error"] and bad["error"]["code"] == "internal" and
              "poison" in bad["error"]["message"], "poison line: %r" % bad)
        others = [r for k, r in rows.items() if k != "q17" and r["error"]]
        check(not others, "innocent lines failed: %r" % others[:3])
        check(rc == 1, "llmq run rc %d (one failed line expected)" % rc)
        check(1 <= deaths <= 16, "%d worker deaths (bound: 16)" % deaths)
        print("churn.poison: stopped after %d worker deaths: %s" % (deaths, bad["error"]["message"]))
    finally:
        cluster.close()


def start_chat(cluster, max_tokens, prompt, words):
    """Start `llmq chat` streaming prompt; returns (process, the bytes it
    printed) once it has streamed more than `words` words (30 s at most)."""
    p = subprocess.Popen([bin_path("llmq"), "chat", "--broker", cluster.broker.frontend,
                          "--model", MODEL, "--max-tokens", max_tokens, prompt],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    fd = p.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + 30
    while seen.count(b" ") < words and time.monotonic() < deadline:
        r, _, _ = select.select([fd], [], [], 0.5)
        if r:
            seen += os.read(fd, 4096)
    check(seen.startswith(b"sim-"), "no stream started: %r" % seen)
    return p, seen


def test_stream():
    cluster = Cluster(1, 8, sim_flags=("--latency-ms", "10", "--tokens-per-sec", "10",
                                       "--random-text"))
    try:
        p, seen = start_chat(cluster, "200", "tell me [[sim:tokens=200]]", 3)
        victim = cluster.workers.pop(0)
        victim.kill(signal.SIGKILL)
        cluster.procs.remove(victim)
        cluster.add_worker()   # a requeue would have a taker
        rest, stderr = p.communicate(timeout=60)
        text = (seen + rest).decode(errors="replace")
        stderr = stderr.decode(errors="replace")
        check(p.returncode != 0, "chat succeeded after its worker died: %r" % text)
        check("stream interrupted after" in stderr, "no clear error: %r" % stderr)
        check(text.count("sim-") == 1, "spliced stream: %r" % text)
        chats = cluster.sim.stats()["requests"].get("/v1/chat/completions", {})
        check(sum(chats.values()) == 1, "the stream was sent again: %r" % chats)
        print("churn.stream: %s" % stderr.strip())
    finally:
        cluster.close()


def test_stream_restart():
    """A stream whose broker is killed mid-way continues: the resend (with
    the last seq the client has) is attached to the worker's running
    stream, so the client gets the rest, not a second start."""
    cluster = Cluster(1, 8, sim_flags=("--latency-ms", "10", "--tokens-per-sec", "8",
                                       "--random-text"))
    try:
        p, seen = start_chat(cluster, "100", "go on [[sim:tokens=40]]", 4)
        cluster.restart_broker(signal.SIGKILL)
        rest, stderr = p.communicate(timeout=90)
        text = (seen + rest).decode(errors="replace").strip()
        stderr = stderr.decode(errors="replace")
        check(p.returncode == 0, "chat failed after a broker restart: %r %r" % (text, stderr))
        check(text.count("sim-") == 1 and len(text.split()) == 40,
              "spliced or cut stream (%d words): %r" % (len(text.split()), text))
        stats = cluster.sim.stats()
        check(stats["double_billed"] == 0 and stats["answered_ok"] == 1,
              "the stream was sent again: %r" % stats)
        print("churn.stream_restart: 40 words, one provider call, across a broker kill -9")
    finally:
        cluster.close()


def test_breaker():
    tmp = temp_dir("llmq-churn-breaker-")
    inp, out = os.path.join(tmp, "in.jsonl"), os.path.join(tmp, "out.jsonl")
    log = os.path.join(tmp, "worker.log")
    n, bad = 1000, {100, 400, 700}
    with open(inp, "w") as f:
        for i in range(n):
            text = "Good question %d" % i
            if i in bad:
                text = "Bad question %d [[sim:fail=500]]" % i
            f.write(json.dumps({"custom_id": "b%04d" % i, "prompt": text}) + "\n")
    cluster = Cluster(1, 64, sim_flags=("--latency-ms", "20"), stderr_path=log)
    try:
        rc, _, stderr = run_llmq(["run", inp, "-o", out, "--broker", cluster.broker.frontend,
                                  "--model", MODEL, "--concurrency", "64"], timeout=120)
        rows = read_jsonl(out)
        # The sim's 500s are HTTP answers: a response with status 500 and
        # error null (OpenAI's batch output), llmq's code in llmq.error_code.
        failed = [r for r in rows if r["llmq"]["error_code"]]
        check(sorted(r["custom_id"] for r in failed) == ["b%04d" % i for i in sorted(bad)],
              "failed lines: %r" % [(r["custom_id"], r["llmq"]) for r in failed][:5])
        check(all(r["llmq"]["error_code"] == "provider_error" and r["error"] is None
                  and r["response"]["status_code"] == 500 for r in failed), "codes %r" % failed)
        with open(log) as f:
            text = f.read()
        check("circuit_open" not in text, "the circuit opened:\n" + text[-2000:])
        print("churn.breaker: %d good lines ok, %d always-500 lines failed, circuit stayed closed"
              % (n - len(failed), len(failed)))
    finally:
        cluster.close()


def test_deadline():
    """A request that sets no deadline gets the broker's default: a
    provider that never answers cannot hold it forever."""
    tmp = temp_dir("llmq-churn-deadline-")
    inp, out = os.path.join(tmp, "in.jsonl"), os.path.join(tmp, "out.jsonl")
    with open(inp, "w") as f:
        f.write(json.dumps({"custom_id": "h1", "prompt": "wait [[sim:hang=100]]"}) + "\n")
        f.write(json.dumps({"custom_id": "ok1", "prompt": "fine"}) + "\n")
    cluster = Cluster(1, 8, broker_flags=("--default-deadline", "1500"))
    try:
        start = time.monotonic()
        rc, _, stderr = run_llmq(["run", inp, "-o", out, "--broker", cluster.broker.frontend,
                                  "--model", MODEL], timeout=120)
        rows = {r["custom_id"]: r for r in read_jsonl(out)}
        check(llmqtest.out_line_ok(rows["ok1"]), "ok1: %r" % rows["ok1"])
        err = rows["h1"]["error"]
        check(err and err["code"] == "deadline_exceeded", "h1: %r" % rows["h1"])
        print("churn.deadline: hung request answered %s after %.1f s (default deadline 1.5 s)"
              % (err["code"], time.monotonic() - start))
    finally:
        cluster.close()


def main():
    what = sys.argv[1] if len(sys.argv) > 1 else ""
    tests = {"restart": lambda: test_restart(signal.SIGKILL),
             "restart_slow": lambda: test_restart(signal.SIGKILL, 4.0),
             "sigterm": lambda: test_restart(signal.SIGTERM),
             "sigterm_short": lambda: test_restart(signal.SIGTERM, 0.0, ("--drain-ms", "300")),
             "workers": test_workers, "poison": test_poison, "stream": test_stream,
             "breaker": test_breaker, "deadline": test_deadline,
             "stream_restart": test_stream_restart}
    if what not in tests:
        print("usage: test_churn.py " + "|".join(tests), file=sys.stderr)
        sys.exit(2)
    tests[what]()


if __name__ == "__main__":
    main()
