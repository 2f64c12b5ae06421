#!/usr/bin/python3
"""Rate-limit use (issue 7, part 4): how much of a provider's requests-per-
minute limit llmq sustains, and how many 429s it provokes on the way.

    bench/ratelimit/bench_ratelimit.py [--rpm 600,120] [--seconds 120] [--runs 3] [--smoke]

Two limits by default: R = 600 (more than the 256 requests a worker starts
at once: adaptive throttling can learn the limit before it is hit) and
R = 120 (less than that burst: only a configured limit avoids 429s).

llmq-sim enforces `--rpm R` per API key over fixed 60 s windows and sends
the x-ratelimit-* headers (sim/README.md, "Rate limits"). A window opens at
the key's first request, so in the D = 120 s after the first request a
client can be answered at most 2R times: "fraction of R" = answered 200 in
those D seconds / (R * ceil(D / 60)), at most 1.

Setups (each its own llmq-sim, llmq-broker, worker(s) and `llmq run` of a
file far longer than D allows, --concurrency 1000, so demand always exceeds
the limit):
  worker-rpm     1 worker, `--rpm R` configured (token bucket in the worker)
  headers        1 worker, no limit configured: it learns from the response
                 headers, 429s and retry-after (adaptive throttling)
  group-rpm      2 workers, `--rpm R --limit-group g`: the broker splits R
  group-headers  2 workers on the same key, no limit configured
  sdk            the baseline: no llmq, bench/e2e/node/client.mjs (the official
                 `openai` SDK, its default 2 retries honouring retry-after,
                 p-limit 1000) straight at the sim
Every setup and run goes at the same time (the load is ~R/60 req/s each, so
they do not disturb each other): the whole part takes D plus a few seconds.
Counted from the sim's /_stats at D: answered 200 and 429s sent. Also from
the client's output at D: lines that failed (429 after the worker's retries).
"""
import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import benchlib  # noqa: E402

SETUPS = {
    "worker-rpm": (1, True, False),
    "headers": (1, False, False),
    "group-rpm": (2, True, True),
    "group-headers": (2, False, False),
    "sdk": (0, False, False),
}
NAMES = {
    "worker-rpm": "1 worker, `--rpm R` configured",
    "headers": "1 worker, headers only (no limit configured)",
    "group-rpm": "2 workers, `--rpm R --limit-group g`",
    "group-headers": "2 workers, same key, headers only",
    "sdk": "baseline: `openai` npm SDK + p-limit(1000), no broker",
}


# t0 is when a poll of the sim first saw a request, a little after the
# request itself (polls of up to 50 setups in turn), so the figures are taken
# this much before t0 + D: never inside a third 60 s window of the sim.
MARGIN_S = 0.5


def stats(url):
    with urllib.request.urlopen(url + "/_stats", timeout=10) as r:
        return json.loads(r.read())


def out_counts(path):
    return benchlib.count_results(path)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=None)
    ap.add_argument("--rpm", default="600,120", help="R values, comma-separated (all run at once)")
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--setups", default=",".join(SETUPS))
    ap.add_argument("--smoke", action="store_true", help="R=120 over 4 s, 1 run")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.smoke:
        args.rpm, args.seconds, args.runs = "120", 4.0, 1
    rpms = [int(x) for x in str(args.rpm).split(",")]
    bindir = benchlib.bin_dir(args.bin)
    benchlib.raise_nofile()
    setups = args.setups.split(",")
    if "sdk" in setups:
        err = benchlib.ensure_npm(os.path.join(HERE, "..", "e2e", "node"), "openai")
        if err:
            print("ratelimit: skipping the sdk baseline: %s" % err, file=sys.stderr)
            setups.remove("sdk")
    tmp = tempfile.mkdtemp(prefix="llmq-bench-rl-")
    log = open(os.path.join(tmp, "servers.log"), "w")
    srcs = {}
    for rpm in rpms:
        srcs[rpm] = os.path.join(tmp, "in-%d.jsonl" % rpm)
        with open(srcs[rpm], "w") as f:
            for i in range(int(rpm * max(args.seconds, 60) / 60 * 3) + 200):
                f.write(json.dumps({"custom_id": "r%d" % i, "method": "POST", "url": "/v1/chat/completions",
                                    "body": {"model": "sim-model", "max_tokens": 8,
                                             "messages": [{"role": "user", "content": "rate %d" % i}]}}) + "\n")
    procs, runs = [], []
    env = dict(os.environ, LLMQ_API_KEY="bench-key")
    try:
        # ---- start every setup's servers
        for rpm, name, rnd in [(r, n, i) for r in rpms for n in setups for i in range(args.runs)]:
                nworkers, configured, group = SETUPS[name]
                src = srcs[rpm]
                sim = benchlib.start([os.path.join(bindir, "llmq-sim"), "--port", "0", "--quiet",
                                      "--latency-ms", "50", "--rpm", str(rpm)], stderr=log)
                out = os.path.join(tmp, "out-%d-%s-%d.jsonl" % (rpm, name, rnd))
                if name == "sdk":
                    procs.append(sim)
                    runs.append({"setup": name, "round": rnd, "rpm": rpm, "sim": sim, "out": out,
                                 "cmd": ["node", os.path.join(HERE, "..", "e2e", "node", "client.mjs"),
                                         src, out, sim.ready["url"] + "/v1", "1000"]})
                    continue
                broker = benchlib.start([os.path.join(bindir, "llmq-broker"), "--quiet",
                                         "--frontend", "tcp://127.0.0.1:*", "--drain-ms", "200",
                                         "--backend", "tcp://127.0.0.1:*"], stderr=log)
                procs += [sim, broker]
                for i in range(nworkers):
                    cmd = [os.path.join(bindir, "llmq-worker"), "--broker", broker.ready["backend"],
                           "--provider", "openai", "--base-url", sim.ready["url"] + "/v1",
                           "--model", "sim-model", "--name", "%s-%d-w%d" % (name, rnd, i), "--drain-ms", "200"]
                    if configured:
                        cmd += ["--rpm", str(rpm)]
                    if group:
                        cmd += ["--limit-group", "g"]
                    procs.append(benchlib.start(cmd, env=env, stderr=log))
                runs.append({"setup": name, "round": rnd, "rpm": rpm, "sim": sim, "out": out,
                             "cmd": [os.path.join(bindir, "llmq"), "run", src, "-o", out, "--broker",
                                     broker.ready["frontend"], "--concurrency", "1000", "--quiet"]})
        # ---- start every client, then take each setup's figures D after its first request
        for r in runs:
            r["client"] = subprocess.Popen(
                r["cmd"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
            r["t0"] = None
        deadline = time.monotonic() + args.seconds + 30
        pending = list(runs)
        while pending and time.monotonic() < deadline:
            now = time.monotonic()
            for r in list(pending):
                url = r["sim"].ready["url"]
                if r["t0"] is None:
                    if stats(url)["total"] > 0:
                        r["t0"] = now
                elif now >= r["t0"] + args.seconds - MARGIN_S:
                    st = stats(url)
                    ok, failed = out_counts(r["out"])
                    r.update(answered=st["answered_ok"], r429=st["rate_limited_by_limit"],
                             r429_all=st["rate_limited_429"], client_ok=ok, client_failed=failed,
                             load=benchlib.loadavg())
                    r["client"].kill()
                    r["client"].wait()
                    pending.remove(r)
            waits = [r["t0"] + args.seconds - MARGIN_S - time.monotonic() for r in pending if r["t0"] is not None]
            waiting_t0 = any(r["t0"] is None for r in pending)
            time.sleep(0.02 if waiting_t0 or not waits else max(0.0, min(min(waits), 1.0)))
    finally:
        for r in runs:
            if "client" in r and r["client"].poll() is None:
                r["client"].kill()
                r["client"].wait()
        benchlib.stop_all(procs)
        log.close()

    print(benchlib.header("rate-limit use, llmq-sim --rpm R, %g s after the first request" % args.seconds))
    print()
    print("| R | setup | answered 200 (ceiling) | fraction of R | 429s from the sim | lines failed (client) |")
    print("|---|---|---|---|---|---|")
    failures = []
    summary = {}
    for rpm in rpms:
        # Fixed 60 s windows, the first opening at the first request: at
        # most R per started window.
        cap = rpm * math.ceil(args.seconds / 60)
        for name in setups:
            rs = [r for r in runs if r["setup"] == name and r["rpm"] == rpm and "answered" in r]
            if len(rs) < args.runs:
                failures.append("R=%d %s: %d of %d runs finished" % (rpm, name, len(rs), args.runs))
            if not rs:
                continue
            fr = [r["answered"] / cap for r in rs]
            summary["%d/%s" % (rpm, name)] = [
                {k: r[k] for k in ("round", "answered", "r429", "r429_all", "client_ok",
                                   "client_failed", "load")} for r in rs]
            print("| %d | %s | %s (%d) | %s | %s | %s |" % (
                rpm, NAMES[name], benchlib.fmt_mmm([r["answered"] for r in rs], 0), cap,
                benchlib.fmt_mmm(fr, 3), benchlib.fmt_mmm([r["r429"] for r in rs], 0),
                benchlib.fmt_mmm([r["client_failed"] for r in rs], 0)))
    print()
    print("Ceiling: R per started 60 s window of the sim in %g s; %d runs of each setup, all at once."
          % (args.seconds, args.runs))
    shutil.rmtree(tmp, ignore_errors=True)
    return benchlib.report_end(failures, args.json, args, summary)


if __name__ == "__main__":
    sys.exit(main())
