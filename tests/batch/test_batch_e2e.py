"""batch.e2e.*: durable batches through the real processes (issue 8):
llmq-sim (OpenAI batch endpoints), llmq-broker (--batch-db), llmq-worker
--batch-api and the `llmq batch` CLI. One scenario per run:

  provider  a provider-mode batch comes back in input order, per-item
            permanent errors reported, one provider batch, files cleaned
  restart   broker kill -9 while the provider batch runs, restart on the
            same db: the batch completes, nothing lost, nothing submitted
            twice (sim /_stats: created == 1, double_billed == 0)
  detach    `llmq batch submit --detach`, then `llmq batch results` later
            from another process; `llmq batch list` shows it
  cancel    `llmq batch cancel` reaches the provider; unfinished items are
            answered `cancelled`
  auto      auto mode: a small batch runs realtime, a large one (above
            --batch-threshold, with a batch_api pool) goes to the provider
  anthropic the same through an anthropic worker (Message Batches)
  large     120,000 items in an auto batch -> 3 OpenAI provider batches
  fairness  a realtime batch of 50,000 items and one worker of capacity 1:
            an interactive request sent mid-batch runs before at most a
            couple of further batch items (measured by the simulator's
            answer order, not by time)

Waits are polls with deadlines (clusterlib.wait_until), never sleeps.
"""
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "client"))
import clusterlib as cl  # noqa: E402
from clusterlib import check, fail, wait_until  # noqa: E402

MODEL = cl.MODEL
def sim_batch_ms(progress_ms):
    """llmq-sim's batch timing: validation and finalizing 50 ms, in
    progress for progress_ms."""
    return ("--batch-validate-ms", "50", "--batch-progress-ms", progress_ms,
            "--batch-finalize-ms", "50")


SIM_FAST = sim_batch_ms("300")
BROKER_FAST = ("--batch-poll-ms", "50", "--batch-task-timeout-ms", "3000")


class Setup(cl.Cluster):
    """The kit's cluster with the batch DB in its temp dir; workers: one
    tuple of extra flags per worker (the default: one --batch-api)."""

    def __init__(self, sim_flags=SIM_FAST, broker_flags=(), workers=(("--batch-api",),),
                 capacity=8, sim_latency="0"):
        tmp = tempfile.mkdtemp(prefix="llmq-batch-e2e-")
        self.db = os.path.join(tmp, "batches.db")
        super().__init__(workers, capacity, sim_flags=sim_flags, latency_ms=sim_latency,
                         broker_flags=("--batch-db", self.db) + BROKER_FAST + tuple(broker_flags),
                         ports="any", tmp=tmp)

    def llmq(self, *args, timeout=120):
        return cl.run_llmq([*args, "--broker", self.broker.frontend], timeout=timeout)

    def status(self, bid):
        rc, out, err = self.llmq("batch", "status", bid, "--json")
        check(rc == 0, "llmq batch status %s: rc %d: %s" % (bid, rc, err))
        return json.loads(out)


# custom_id -> (model, messages) of every item written: each answer must be
# the sim's answer to its own request ("sim-" + the hash of its canonical
# text, sim/README.md), so a body given to the wrong item is caught.
REQUESTS = {}


def write_items(path, n, bad=(), tag="q", model=MODEL):
    """n OpenAI batch input lines; indexes in bad carry a permanent provider
    error (context length). Returns the custom_ids in order."""
    ids = []
    with open(path, "w") as f:
        for i in range(n):
            cid = "%s-%05d" % (tag, i)
            text = "%s question %d" % (tag, i)
            if i in bad:
                text += " [[sim:context_length]]"
            f.write(json.dumps({"custom_id": cid, "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": model, "max_tokens": 8,
                                         "messages": [{"role": "user", "content": text}]}}) + "\n")
            ids.append(cid)
            REQUESTS[cid] = (model, [{"role": "user", "content": text}])
    return ids


def check_results(path, ids, bad=(), cancelled_ok=False):
    rows = cl.read_jsonl(path)
    got = [r["custom_id"] for r in rows]
    check(got == ids, "results not in input order or incomplete: %d rows for %d ids, first "
          "difference %r" % (len(got), len(ids),
                             next(((a, b) for a, b in zip(got, ids) if a != b), None)))
    errors = {}
    for i, r in enumerate(rows):
        if i in bad:
            # OpenAI's batch output: a provider's HTTP error is a response
            # with its status and error null; llmq's code is llmq.error_code.
            http_error = r["error"] is None and r["response"]["status_code"] >= 400
            check(r["error"] is not None or http_error,
                  "%s should have failed: %r" % (r["custom_id"], r))
            errors[i] = r["error"]["code"] if r["error"] else r["llmq"]["error_code"]
        elif r["error"] is not None:
            if cancelled_ok and r["error"]["code"] == "cancelled":
                errors[i] = "cancelled"
                continue
            fail("%s failed: %r" % (r["custom_id"], r["error"]))
        else:
            check(r["response"]["status_code"] == 200, "%s: status" % r["custom_id"])
            content = r["response"]["body"]["choices"][0]["message"]["content"]
            check(content.startswith("sim-"), "%s: not a sim answer" % r["custom_id"])
            if r["custom_id"] in REQUESTS:
                want = "sim-" + cl.chat_hash(*REQUESTS[r["custom_id"]])
                check(content.startswith(want), "%s answered with another item's body: %r, "
                      "expected %r..." % (r["custom_id"], content[:40], want))
    return rows, errors


def submit(s, infile, *flags, detach=True):
    args = ["batch", "submit", infile, "--quiet", *flags]
    if detach:
        args.append("--detach")
    rc, out, err = s.llmq(*args)
    check(rc in (0, 1) and out.strip(), "batch submit: rc %d: %s" % (rc, err))
    return out.split()[0], rc, err


def t_provider():
    s = Setup()
    try:
        bad = {3, 77, 150}
        ids = write_items(s.path("in.jsonl"), 200, bad)
        rc, out, err = s.llmq("batch", "submit", s.path("in.jsonl"), "--mode", "provider",
                              "-o", s.path("out.jsonl"))
        check(rc == 1, "3 items fail: exit 1, got %d: %s" % (rc, err))
        bid = out.split()[0]
        check("provider" in err and "completed" in err, "progress shows the states: %s" % err)
        _, errors = check_results(s.path("out.jsonl"), ids, bad)
        check(set(errors) == bad, "per-item errors: %r" % errors)
        st = s.status(bid)
        check(st["state"] == "completed" and st["mode"] == "provider", "status: %r" % st)
        check(st["total"] == 200 and st["done"] == 200 and st["failed"] == 3, "counts: %r" % st)
        check(st["total_tokens"] > 0, "usage counted: %r" % st)
        stats = s.sim.stats()
        check(stats["batches"]["openai"]["created"] == 1, "one provider batch: %r" % stats["batches"])
        check(stats["double_billed"] == 0, "double billed")
        check(stats["batches"]["lines_ok"] + stats["batches"]["lines_error"] == 200,
              "every line ran once, through the Batch API: %r" % stats["batches"])
        # (Not checked: no /v1/chat/completions calls. Under a parallel ctest a
        # leftover worker of another test may reach this sim on a reused port.)
        # Cleanup deletes the provider files once the results are committed.
        wait_until("provider files deleted",
                   lambda: s.sim.stats()["requests"].get("/v1/files/{id}", {}).get("200", 0) >= 2, 30)
    finally:
        s.close()


def t_restart():
    # Long enough at the provider for the kill to land while it runs.
    s = Setup(sim_flags=sim_batch_ms("2500"))
    try:
        bad = {10, 250}
        ids = write_items(s.path("in.jsonl"), 300, bad)
        bid, _, _ = submit(s, s.path("in.jsonl"), "--mode", "provider")
        wait_until("the provider batch created",
                   lambda: s.sim.stats()["batches"]["openai"]["created"] == 1, 30)
        wait_until("the broker to know it runs",
                   lambda: s.status(bid)["state"] in ("in_progress", "finalizing", "completed"), 30)
        s.restart_broker()
        rc, out, err = s.llmq("batch", "results", bid, "-o", s.path("out.jsonl"), "--quiet")
        check(rc == 1, "results after restart: exit 1 (2 bad items), got %d: %s" % (rc, err))
        _, errors = check_results(s.path("out.jsonl"), ids, bad)
        check(set(errors) == bad, "per-item errors: %r" % errors)
        stats = s.sim.stats()
        check(stats["batches"]["openai"]["created"] == 1,
              "submitted once: %r" % stats["batches"])
        check(stats["double_billed"] == 0, "double billed")
        check(stats["batches"]["lines_ok"] + stats["batches"]["lines_error"] == 300,
              "each line ran once: %r" % stats["batches"])
    finally:
        s.close()


def t_detach():
    s = Setup()
    try:
        ids = write_items(s.path("in.jsonl"), 120, tag="d")
        bid, rc, err = submit(s, s.path("in.jsonl"), "--mode", "realtime")
        check(rc == 0, "detached submit exits 0: %s" % err)
        rc, out, err = s.llmq("batch", "results", bid, "-o", s.path("out.jsonl"), "--quiet")
        check(rc == 0, "results: rc %d: %s" % (rc, err))
        check_results(s.path("out.jsonl"), ids)
        st = s.status(bid)
        check(st["mode"] == "realtime" and st["state"] == "completed", "status: %r" % st)
        rc, out, err = s.llmq("batch", "list")
        check(rc == 0 and bid in out and "completed" in out, "list: %s %s" % (out, err))
        rc, out, err = s.llmq("batch", "status", "no-such-batch")
        check(rc != 0 and "not_found" in err, "unknown batch: rc %d %s" % (rc, err))
    finally:
        s.close()


def t_cancel():
    # The provider would take a minute: the cancel has to reach it.
    s = Setup(sim_flags=sim_batch_ms("60000"))
    try:
        ids = write_items(s.path("in.jsonl"), 50, tag="c")
        bid, _, _ = submit(s, s.path("in.jsonl"), "--mode", "provider")
        wait_until("the provider batch running",
                   lambda: s.status(bid)["state"] == "in_progress"
                   and s.sim.stats()["batches"]["openai"]["created"] == 1, 30)
        rc, out, err = s.llmq("batch", "cancel", bid)
        check(rc == 0 and out.split()[1] in ("cancelling", "cancelled"), "cancel: %s %s" % (out, err))
        rc, out, err = s.llmq("batch", "results", bid, "-o", s.path("out.jsonl"), "--quiet")
        check(rc == 1, "cancelled batch: exit 1, got %d: %s" % (rc, err))
        rows, errors = check_results(s.path("out.jsonl"), ids, cancelled_ok=True)
        check(s.status(bid)["state"] == "cancelled", "state cancelled")
        check(len(errors) > 0, "unfinished items answered cancelled")
        wait_until("cancel reached the provider",
                   lambda: s.sim.stats()["batches"]["openai"]["cancelled"] == 1, 30)
    finally:
        s.close()


def t_auto():
    s = Setup(broker_flags=("--batch-threshold", "40"))
    try:
        small = write_items(s.path("small.jsonl"), 10, tag="s")
        large = write_items(s.path("large.jsonl"), 60, tag="l")
        rc, out, err = s.llmq("batch", "submit", s.path("small.jsonl"), "-o", s.path("small.out"),
                              "--quiet")
        check(rc == 0, "small: rc %d %s" % (rc, err))
        check(s.status(out.split()[0])["mode"] == "realtime", "small batch -> realtime")
        check_results(s.path("small.out"), small)
        # `llmq run --mode auto` is the same path, with the progress display.
        rc, out, err = s.llmq("run", s.path("large.jsonl"), "-o", s.path("large.out"),
                              "--mode", "auto")
        check(rc == 0, "large: rc %d %s" % (rc, err))
        check(s.status(out.split()[0])["mode"] == "provider", "large batch -> provider")
        check("(provider)" in err, "progress shows the provider mode: %s" % err)
        check_results(s.path("large.out"), large)
        check(s.sim.stats()["batches"]["openai"]["created"] == 1, "one provider batch")
    finally:
        s.close()


def t_fairness():
    # One worker, capacity 1: every dispatch slot is visible in the order
    # of the simulator's response ids (a counter in arrival order). A slot
    # lasts 150 ms, far longer than reading the status and sending the
    # request take (even under sanitizers), so the count below is the
    # broker's ordering, not a race.
    s = Setup(workers=((),), capacity=1, sim_latency="150")
    try:
        n = 50000
        ids = write_items(s.path("big.jsonl"), n, tag="f")
        bid, _, _ = submit(s, s.path("big.jsonl"), "--mode", "realtime")
        wait_until("the batch running", lambda: s.status(bid)["done"] >= 3, 60)
        client = cl.llmqtest.client_module().Client(s.broker.frontend)
        try:
            before = s.status(bid)["done"]
            #  An error raises (the test fails with it).
            res = client.infer("chat", MODEL, {"model": MODEL, "messages": [
                {"role": "user", "content": "interactive"}]})
        finally:
            client.close()
        mark = res.body["id"]
        rc, out, err = s.llmq("batch", "cancel", bid)
        check(rc == 0, "cancel: %s" % err)
        rc, out, err = s.llmq("batch", "results", bid, "-o", s.path("big.out"), "--quiet",
                              timeout=60)
        rows = cl.read_jsonl(s.path("big.out"))
        check([r["custom_id"] for r in rows] == ids, "cancelled batch: every item answered in order")
        # Batch items that reached the simulator after `before` was read and
        # before the interactive request did.
        ahead = [i for i, r in enumerate(rows)
                 if i >= before and r["error"] is None and r["response"]["body"]["id"] < mark]
        print("interactive answered after %d further batch items (done before: %d)"
              % (len(ahead), before))
        check(len(ahead) <= 3, "interactive request waited for %d batch items" % len(ahead))
    finally:
        s.close()


def t_large():
    # The scenario through the real processes: 120,000 items in an
    # auto batch -> 3 OpenAI provider batches (50k, 50k, 20k), every result
    # in input order, permanent errors reported.
    s = Setup()
    try:
        n = 120000
        bad = {5, 50007, 119999}
        ids = write_items(s.path("in.jsonl"), n, bad, tag="L")
        rc, out, err = s.llmq("batch", "submit", s.path("in.jsonl"), "-o", s.path("out.jsonl"),
                              "--quiet", timeout=150)
        check(rc == 1, "3 items fail: exit 1, got %d: %s" % (rc, err))
        _, errors = check_results(s.path("out.jsonl"), ids, bad)
        check(set(errors) == bad, "per-item errors: %r" % errors)
        check(s.status(out.split()[0])["mode"] == "provider", "auto -> provider")
        stats = s.sim.stats()
        check(stats["batches"]["openai"]["created"] == 3, "3 provider batches: %r" % stats["batches"])
        check(stats["double_billed"] == 0, "double billed")
        check(stats["batches"]["lines_ok"] + stats["batches"]["lines_error"] == n,
              "each line ran once: %r" % stats["batches"])
    finally:
        s.close()


def t_anthropic():
    # Anthropic Message Batches through an anthropic worker: results come
    # back OpenAI-shaped, in input order, the permanent error reported.
    s = Setup(workers=())
    try:
        w = cl.Proc([cl.bin_path("llmq-worker"), "--broker", s.broker.backend, "--provider",
                     "anthropic", "--base-url", s.sim.url + "/v1", "--model", "claude-sim",
                     "--batch-api"], env={"ANTHROPIC_API_KEY": "sk-ant-test"})
        s.procs.append(w)
        s.wait_workers(1)
        bad = {4}
        ids = write_items(s.path("in.jsonl"), 40, bad, tag="a", model="claude-sim")
        rc, out, err = s.llmq("batch", "submit", s.path("in.jsonl"), "--mode", "provider",
                              "-o", s.path("out.jsonl"), "--quiet")
        check(rc == 1, "1 item fails: exit 1, got %d: %s" % (rc, err))
        rows, errors = check_results(s.path("out.jsonl"), ids, bad)
        check(errors == {4: "context_length"}, "per-item errors: %r" % errors)
        check(rows[0]["response"]["body"]["object"] == "chat.completion", "OpenAI-shaped body")
        stats = s.sim.stats()
        check(stats["batches"]["anthropic"]["created"] == 1, "one message batch: %r" % stats["batches"])
        check(stats["batches"]["lines_ok"] + stats["batches"]["lines_error"] == 40, "each line once")
    finally:
        s.close()


SCENARIOS = {"anthropic": t_anthropic, "large": t_large, "provider": t_provider, "restart": t_restart, "detach": t_detach,
             "cancel": t_cancel, "auto": t_auto, "fairness": t_fairness}

if __name__ == "__main__":
    if len(sys.argv) != 2 or sys.argv[1] not in SCENARIOS:
        print("usage: test_batch_e2e.py " + "|".join(SCENARIOS), file=sys.stderr)
        sys.exit(2)
    SCENARIOS[sys.argv[1]]()
    print("ok " + sys.argv[1])
