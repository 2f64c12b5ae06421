#!/usr/bin/python3
"""client.embedded_batch.*: `llmq run --mode provider` with no broker (issue
18). llmq starts its embedded cluster with a batch database beside OUT and
workers with --batch-api; the provider is an llmq-sim on a free port, found
the way a user's SDK variables point at a provider (OPENAI_API_KEY +
OPENAI_BASE_URL, or ANTHROPIC_API_KEY + ANTHROPIC_BASE_URL).

  openai     2,000 lines through the OpenAI Batch API: every line once, in
             input order, no realtime call, double_billed 0; the database is
             removed once OUT is written; a rerun says it is complete, exit 0
  anthropic  the same through Anthropic Message Batches
  kill9      the run killed with kill -9 while the provider batch runs
             (its children die with it), then the same command again: the
             SAME provider batch finishes (one batch in the sim's stats)
  sigint     the same with Ctrl-C (SIGINT): exit 130, "rerun the same
             command", then the rerun finishes the same batch
  changed    interrupted, then IN changes: the rerun is a new batch and
             the stale one is cancelled at the provider
  submit     `llmq batch submit FILE -o OUT` on the embedded cluster, and
             `-o -`: results on stdout in input order

Waits are polls with deadlines, never sleeps. Skips (77) if a broker
answers at the default endpoint (llmq would use it, not an embedded one).
"""
import os
import re
import signal
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import clusterlib as cl  # noqa: E402
from clusterlib import check, wait_until  # noqa: E402
from llmqtest import out_line_ok  # noqa: E402

N = 2000


def write_lines(path, n, tag="e"):
    ids = []
    with open(path, "w") as f:
        for i in range(n):
            cid = "%s-%05d" % (tag, i)
            f.write('{"custom_id": "%s", "prompt": "%s question %d", "max_tokens": 8}\n'
                    % (cid, tag, i))
            ids.append(cid)
    return ids


def env_for(sim, provider):
    env = {"LLMQ_BIN_DIR": os.path.dirname(cl.bin_path("llmq")), "OPENAI_API_KEY": "",
           "ANTHROPIC_API_KEY": "", "OPENAI_BASE_URL": "", "ANTHROPIC_BASE_URL": ""}
    if provider == "openai":
        env.update(OPENAI_API_KEY="sk-test", OPENAI_BASE_URL=sim.url + "/v1")
    else:
        env.update(ANTHROPIC_API_KEY="sk-ant-test", ANTHROPIC_BASE_URL=sim.url + "/v1")
    return env


def full_env(env):
    e = dict(os.environ)
    e.pop("LLMQ_ENDPOINT", None)
    e.update(env)
    return e


def check_out(path, ids):
    rows = cl.read_jsonl(path)
    check([r["custom_id"] for r in rows] == ids,
          "%s: %d rows for %d ids, or not in input order" % (path, len(rows), len(ids)))
    for r in rows:
        check(out_line_ok(r), "%s failed: %r" % (r["custom_id"], r))
        check(r["response"]["body"]["choices"][0]["message"]["content"].startswith("sim-"),
              "%s: not a sim answer" % r["custom_id"])


def check_sim(sim, kind, lines):
    st = sim.stats()
    b = st["batches"]
    check(b[kind]["created"] == 1, "one %s provider batch: %r" % (kind, b))
    check(b["lines_ok"] + b["lines_error"] == lines, "every line ran once: %r" % b)
    check(st["double_billed"] == 0, "double billed: %r" % st["double_billed"])
    realtime = sum(sum(v.values()) for k, v in st["requests"].items()
                   if k in ("/v1/chat/completions", "/v1/messages"))
    check(realtime == 0, "realtime calls reached the provider: %r" % st["requests"])


def no_dangling(err):
    check("dangling" not in err, "dangling socket noise:\n%s" % err[-2000:])


def t_provider(kind):
    tmp = cl.temp_dir("llmq-embedded-batch-")
    sim = provider_sim("1500")
    inp = os.path.join(tmp, "in.jsonl")
    out = os.path.join(tmp, "results", "out.jsonl")  # the directory is created
    ids = write_lines(inp, N)
    env = env_for(sim, kind)
    args = ["run", inp, "-o", out, "--mode", "provider", "--workers", "2",
            "--batch-poll-ms", "100ms"]
    rc, stdout, err = cl.run_llmq(args, env=env)
    check(rc == 0, "run --mode provider: rc %d\n%s\n%s" % (rc, stdout, err[-3000:]))
    no_dangling(err)
    check("provider %s" % kind in err, "the cluster's provider: %s" % err[-2000:])
    check("(provider)" in err and "in_progress" in err and "completed" in err,
          "progress shows the provider's states: %s" % err[-2000:])
    check(re.search(r"provider: [1-9][0-9]*/%d done" % N, err),
          "progress shows the provider's counts: %s" % err[-2000:])
    check_out(out, ids)
    check_sim(sim, "openai" if kind == "openai" else "anthropic", N)
    check(not os.path.exists(out + ".llmq-batch.db"), "database left after a finished run")
    rc, stdout, err = cl.run_llmq(args, env=env)
    check(rc == 0 and "already complete" in err, "rerun: rc %d %s" % (rc, err))
    check(sim.stats()["batches"]["openai" if kind == "openai" else "anthropic"]["created"] == 1,
          "the rerun submitted nothing")
    print("ok %s: %d lines through one %s batch" % (kind, N, kind))


def provider_progress(sim):
    """request_counts.completed of the sim's OpenAI batch (0 if none)."""
    body = sim.json("GET", "/v1/batches", headers={"Authorization": "Bearer sk-test"})[2]
    return max([b.get("request_counts", {}).get("completed", 0) for b in body.get("data", [])]
               or [0])


def scratch_files():
    """(in.jsonl, out.jsonl) paths in a fresh temp dir."""
    tmp = cl.temp_dir("llmq-embedded-batch-")
    return os.path.join(tmp, "in.jsonl"), os.path.join(tmp, "out.jsonl")


def provider_sim(progress_ms):
    """llmq-sim whose batches stay in progress for progress_ms."""
    return cl.Sim("--batch-validate-ms", "50", "--batch-progress-ms", progress_ms,
                  "--batch-finalize-ms", "50")


def start_provider_run(sim, inp, out, workers):
    """`llmq run --mode provider` in the background against sim (OpenAI),
    once its provider batch is created; returns (argv, the process)."""
    args = [cl.bin_path("llmq"), "run", inp, "-o", out, "--mode", "provider",
            "--workers", str(workers), "--batch-poll-ms", "100"]
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         env=full_env(env_for(sim, "openai")))
    wait_until("the provider batch created",
               lambda: sim.stats()["batches"]["openai"]["created"] == 1, 60)
    return args, p


def t_kill9(sig=signal.SIGKILL):
    inp, out = scratch_files()
    sim = provider_sim("4000")
    ids = write_lines(inp, N, tag="k")
    env = env_for(sim, "openai")
    args, p = start_provider_run(sim, inp, out, 2)
    try:
        if sig == signal.SIGKILL:
            # Mid-way: the provider has run part of the lines.
            wait_until("the provider batch half-way", lambda: provider_progress(sim) > 0, 60)
            done = provider_progress(sim)
            check(done < N, "killed too late: %d of %d done" % (done, N))
            print("kill -9 with %d of %d lines done at the provider" % (done, N))
        p.send_signal(sig)
    finally:
        p.wait(timeout=30)
    if sig == signal.SIGINT:
        err = p.stderr.read().decode(errors="replace")
        check(p.returncode == 130 and "rerun the same command" in err,
              "Ctrl-C: rc %d %s" % (p.returncode, err[-2000:]))
        no_dangling(err)
    # Its children die with it (PR_SET_PDEATHSIG): the db stays, the
    # provider batch runs on at the provider.
    check(os.path.exists(out + ".llmq-batch.db"), "database kept after kill -9")
    check(not os.path.exists(out), "no OUT before the batch finished")
    rc, stdout, err = cl.run_llmq(args[1:], env=env)
    check(rc == 0, "rerun after kill -9: rc %d\n%s" % (rc, err[-3000:]))
    no_dangling(err)
    check("resuming batch" in err, "the rerun resumed the batch: %s" % err[-2000:])
    check_out(out, ids)
    check_sim(sim, "openai", N)
    print("ok %s: the same provider batch finished after the rerun"
          % ("kill9" if sig == signal.SIGKILL else "sigint"))


def t_changed():
    # Interrupted, then the input changes: the rerun is a new batch (its id
    # hashes the lines) and the old one, whose results would go nowhere, is
    # cancelled at the provider.
    inp, out = scratch_files()
    # Long enough at the provider that the rerun finds the old batch
    # still running (every batch takes that long in the sim).
    sim = provider_sim("12s")
    write_lines(inp, 100, tag="c")
    env = env_for(sim, "openai")
    args, p = start_provider_run(sim, inp, out, 1)
    try:
        p.send_signal(signal.SIGINT)
    finally:
        p.wait(timeout=30)
    check(p.returncode == 130, "Ctrl-C: rc %d" % p.returncode)
    ids = write_lines(inp, 60, tag="d")
    rc, stdout, err = cl.run_llmq(args[1:], env=env, timeout=100)
    check(rc == 0, "rerun: rc %d %s" % (rc, err[-2000:]))
    if os.environ.get("LLMQ_TEST_VERBOSE"):
        print(err)
    check("cancelling batch run-" in err, "the stale batch is cancelled: %s" % err[-2000:])
    check_out(out, ids)
    b = sim.stats()["batches"]["openai"]
    check(b["created"] == 2 and b["cancelled"] == 1, "one cancelled, one new: %r" % b)
    print("ok changed: the stale batch was cancelled at the provider")


def t_submit():
    inp, out = scratch_files()
    sim = provider_sim("1500")
    ids = write_lines(inp, 30, tag="s")
    env = env_for(sim, "openai")
    rc, stdout, err = cl.run_llmq(["batch", "submit", inp, "-o", out, "--mode", "provider",
                                   "--workers", "1", "--batch-poll-ms", "100"], env=env)
    check(rc == 0, "batch submit: rc %d\n%s" % (rc, err[-3000:]))
    no_dangling(err)
    check(stdout.startswith("run-"), "the batch id on stdout: %r" % stdout)
    check_out(out, ids)
    # -o -: the results, in input order, are stdout (the id and the
    # summary go to stderr then).
    rc, stdout, err = cl.run_llmq(["run", inp, "-o", "-", "--mode", "realtime",
                                   "--workers", "1", "--batch-poll-ms", "100"], env=env)
    check(rc == 0, "run -o -: rc %d\n%s" % (rc, err[-3000:]))
    no_dangling(err)
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    import json
    check([json.loads(ln)["custom_id"] for ln in lines] == ids, "stdout rows: %r" % stdout[:500])
    print("ok submit")


def main():
    cl.llmqtest.skip_if_default_broker("llmq would use it, no embedded cluster")
    which = sys.argv[1] if len(sys.argv) > 1 else ""
    if which in ("openai", "anthropic"):
        t_provider(which)
    elif which == "kill9":
        t_kill9()
    elif which == "sigint":
        t_kill9(signal.SIGINT)
    elif which == "changed":
        t_changed()
    elif which == "submit":
        t_submit()
    else:
        print("usage: test_embedded_batch.py openai|anthropic|kill9|sigint|changed|submit", file=sys.stderr)
        sys.exit(2)
    cl.llmqtest.finish()   # the sim stops cleanly (exit 0, no sanitizer report)


if __name__ == "__main__":
    main()
