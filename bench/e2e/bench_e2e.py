#!/usr/bin/python3
"""End-to-end benchmark (issue 7, part 3): a JSONL file of prompts through
`llmq run` against the clients people write instead.

    bench/e2e/bench_e2e.py [--lines 10000] [--runs 3] [--smoke] [--bin DIR]
                           [--baseline-bin DIR]

One llmq-sim (--latency-ms 200, every prompt different so nothing is
cached or double billed) serves every variant, one after the other, round
after round (so slow drift of the machine hits all of them alike):

  llmq     `llmq run IN -o OUT --broker EP --concurrency W*C` against an
           llmq-broker with W llmq-workers (provider openai at the sim,
           capacity C each): W*C requests in flight. Broker and workers are
           started once and stay up between rounds, as a cluster would.
  embedded `llmq run IN -o OUT --provider openai --base-url SIM --workers W
           --capacity C --concurrency W*C`: the one-command form, which
           starts its own broker and workers and stops them at the end
           (start-up and shutdown included in the time and CPU).
  aiohttp  bench/e2e/aiohttp_client.py: asyncio + aiohttp, W*C at once.
  node     bench/e2e/node/client.mjs: the official `openai` npm SDK with
           p-limit(W*C) (npm ci is run once if node_modules is missing).
  base     (with --baseline-bin DIR) as llmq, with DIR's llmq, llmq-broker
           and llmq-workers (their own broker and workers, the same sim),
           in the same rounds: before/after of a change in one run.
  seq      bench/e2e/seq_client.py: one request at a time over one keep-alive
           connection; only --seq-lines lines, extrapolated to --lines. The
           runs of this one go at the same time (each is 99% waiting).

For each: wall time, CPU seconds of everything but the sim (client; for
llmq also broker and workers, read from /proc), the sim's own CPU
separately (the same work for all), ratios against llmq in the same round.
For llmq (and base) a second table splits the CPU per request by process:
the `llmq run` client (its rusage), the broker, each worker (/proc), the
whole pipeline, and the sim apart.
Prints markdown tables; --json FILE writes the raw numbers.
"""
import argparse
import json
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

PY = "/usr/bin/python3"  # Debian's, where python3-aiohttp is installed


def http(url, method="GET"):
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


def write_input(path, n):
    """N chat requests in the OpenAI Batch API input format; each prompt is
    different (about 200 bytes), max_tokens 16."""
    with open(path, "w") as f:
        for i in range(n):
            body = {"model": "sim-model", "max_tokens": 16,
                    "messages": [{"role": "user",
                                  "content": "Prompt %d: summarise in one sentence why a message "
                                             "broker in front of a rate-limited LLM API helps "
                                             "an evaluation run finish sooner. (%d)" % (i, i * 7919)}]}
            f.write(json.dumps({"custom_id": "req-%d" % i, "method": "POST",
                                "url": "/v1/chat/completions", "body": body}) + "\n")


def count_ok(path):
    return benchlib.count_results(path)[0]


def start_llmq(bindir, procs, sim_url, workers, capacity, log, name):
    """A broker and WORKERS llmq-workers of BINDIR against the sim at
    SIM_URL (the baseline's cluster: the sim is shared). Returns (broker,
    workers)."""
    def go(cmd, env=None):
        p = benchlib.start(cmd, env=env, stderr=log)
        procs.append(p)
        return p
    broker = go([os.path.join(bindir, "llmq-broker"), "--quiet", "--frontend",
                 "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*"])
    env = dict(os.environ, LLMQ_API_KEY="bench-key")
    ws = [go([os.path.join(bindir, "llmq-worker"), "--broker", broker.ready["backend"],
              "--provider", "openai", "--base-url", sim_url + "/v1", "--model", "sim-model",
              "--capacity", str(capacity), "--name", "%s%d" % (name, i)], env)
          for i in range(workers)]
    return broker, ws


def split_table(results, variants, names, lines, workers):
    """CPU per request (us) by process, median (min..max) over the rounds."""
    rows = [(v, rs) for v, rs in benchlib.measured(results, variants) if v in ("llmq", "base")]
    if not rows:
        return
    us = lambda xs: benchlib.fmt_mmm([1e6 * x / lines for x in xs], 1)  # noqa: E731
    print()
    print("CPU per request by process, us (median of the rounds, min..max):")
    print()
    print("| client | `llmq run` | broker | " + " | ".join("worker %d" % i for i in range(workers))
          + " | workers | pipeline | sim (apart) |")
    print("|---|---|---|" + "---|" * workers + "---|---|---|")
    for v, rs in rows:
        cells = [us([r["client_cpu_s"] for r in rs]), us([r["broker_cpu_s"] for r in rs])]
        cells += [us([r["worker_cpu_s"][i] for r in rs]) for i in range(workers)]
        cells += [us([sum(r["worker_cpu_s"]) for r in rs]), us([r["cpu_s"] for r in rs]),
                  us([r["sim_cpu_s"] for r in rs])]
        print("| %s | %s |" % (names[v], " | ".join(cells)))
    if results.get("base") and results.get("llmq"):
        pairs = list(zip(results["llmq"], results["base"]))
        def ratio(key):
            xs = [a[key] / b[key] for a, b in pairs if b[key]]
            return benchlib.fmt_mmm(xs, 2, "x") if xs else "n/a (no CPU tick measured)"
        print()
        print("llmq / baseline, per round: pipeline CPU %s (client %s, broker %s, workers %s); "
              "wall %s." % (ratio("cpu_s"), ratio("client_cpu_s"), ratio("broker_cpu_s"),
                            ratio("workers_cpu_s"), ratio("wall_s")))
    if results.get("aiohttp") and results.get("llmq"):
        pairs = list(zip(results["llmq"], results["aiohttp"]))
        print("asyncio + aiohttp / llmq pipeline CPU, per round: %s (the issue's goal: 5x or more, "
              "at no more wall time: wall %s)." % (
                  benchlib.fmt_mmm([b["cpu_s"] / a["cpu_s"] for a, b in pairs if a["cpu_s"]]
                                   or [float("nan")], 2, "x"),
                  benchlib.fmt_mmm([b["wall_s"] / a["wall_s"] for a, b in pairs], 2, "x")))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    benchlib.add_common_args(ap, smoke_help="a few seconds: 300 lines, 1 run, 20 sequential")
    ap.add_argument("--lines", type=int, default=10000)
    ap.add_argument("--seq-lines", type=int, default=200)
    ap.add_argument("--capacity", type=int, default=256)
    ap.add_argument("--variants", default="llmq,base,embedded,aiohttp,node,seq",
                    help="base runs only with --baseline-bin")
    ap.add_argument("--baseline-bin", default=None,
                    help="also run `llmq run` + broker + workers from this directory "
                         "(variant base), interleaved with llmq in the same rounds")
    ap.add_argument("--timeout", type=int, default=300, help="per client run, seconds")
    args = ap.parse_args()
    if args.smoke:
        args.lines, args.runs, args.seq_lines, args.latency_ms = 300, 1, 20, 50
        args.workers, args.capacity = 2, 64
    variants = [v for v in args.variants.split(",") if v != "base" or args.baseline_bin]
    conc = args.workers * args.capacity
    bindir = benchlib.bin_dir(args.bin)
    benchlib.raise_nofile()
    if "node" in variants:
        err = benchlib.ensure_npm(os.path.join(HERE, "node"), "openai")
        if err:
            print("e2e: skipping node: %s" % err, file=sys.stderr)
            variants.remove("node")

    tmp = tempfile.mkdtemp(prefix="llmq-bench-e2e-")
    src = os.path.join(tmp, "in.jsonl")
    write_input(src, args.lines)
    log = open(os.path.join(tmp, "servers.log"), "w")
    procs = []
    results = {v: [] for v in variants}
    failures = []
    try:
        sim, broker, workers = benchlib.start_cluster(
            bindir, procs, args.workers, args.capacity, log=log,
            sim_flags=("--latency-ms", str(args.latency_ms)))
        sim_url = sim.ready["url"]
        clusters = {"llmq": (bindir, broker, workers)}
        if "base" in variants:
            bb, bw = start_llmq(args.baseline_bin, procs, sim_url, args.workers, args.capacity,
                                log, "bench-b")
            clusters["base"] = (args.baseline_bin, bb, bw)

        def once(variant, rnd):
            dst = os.path.join(tmp, "out-%s-%d.jsonl" % (variant, rnd))
            http(sim_url + "/_reset", "POST")
            cbin, cbroker, cworkers = clusters.get(variant, (bindir, broker, []))
            if variant in ("llmq", "base"):
                cmd = [os.path.join(cbin, "llmq"), "run", src, "-o", dst, "--broker",
                       cbroker.ready["frontend"], "--concurrency", str(conc), "--quiet"]
            elif variant == "embedded":
                cmd = [os.path.join(bindir, "llmq"), "run", src, "-o", dst, "--provider", "openai",
                       "--base-url", sim_url + "/v1", "--workers", str(args.workers),
                       "--capacity", str(args.capacity), "--concurrency", str(conc), "--quiet"]
            elif variant == "aiohttp":
                cmd = [PY, os.path.join(HERE, "aiohttp_client.py"), src, dst, sim_url + "/v1", str(conc)]
            elif variant == "node":
                cmd = ["node", os.path.join(HERE, "node", "client.mjs"), src, dst, sim_url + "/v1", str(conc)]
            pids = [cbroker.pid] + [w.pid for w in cworkers]
            sim0, cl0 = sim.cpu(), [benchlib.cpu_seconds([p]) for p in pids]
            # embedded: the key its workers send; no LLMQ_ENDPOINT, so it starts its own cluster
            venv = dict(os.environ, OPENAI_API_KEY="bench-key")
            venv.pop("LLMQ_ENDPOINT", None)
            wall, cpu, rc = benchlib.run_timed(cmd, timeout=args.timeout, stderr=log, env=venv)
            sim1, cl1 = sim.cpu(), [benchlib.cpu_seconds([p]) for p in pids]
            own = [b - a for a, b in zip(cl0, cl1)] if variant in clusters else [0.0] * len(pids)
            st = http(sim_url + "/_stats")
            ok = count_ok(dst)
            r = {"round": rnd, "wall_s": wall, "client_cpu_s": cpu,
                 "cluster_cpu_s": sum(own), "broker_cpu_s": own[0],
                 "worker_cpu_s": own[1:], "workers_cpu_s": sum(own[1:]),
                 "sim_cpu_s": sim1 - sim0, "rc": rc, "ok": ok, "lines": args.lines,
                 "sim_ok": st.get("answered_ok"), "double_billed": st.get("double_billed"),
                 "peak_concurrent": st.get("peak_concurrent"), "load": benchlib.loadavg()}
            r["cpu_s"] = r["client_cpu_s"] + r["cluster_cpu_s"]
            if rc != 0 or ok != args.lines:
                failures.append("%s round %d: rc=%s ok=%d/%d" % (variant, rnd, rc, ok, args.lines))
            return r

        for rnd in range(args.runs):
            for v in variants:
                if v != "seq":
                    results[v].append(once(v, rnd))
                    print("e2e: %s round %d: %.2f s, cpu %.2f s (sim %.2f s), peak %s in flight"
                          % (v, rnd, results[v][-1]["wall_s"], results[v][-1]["cpu_s"],
                             results[v][-1]["sim_cpu_s"], results[v][-1]["peak_concurrent"]),
                          file=sys.stderr)

        if "seq" in variants:
            # The sequential runs go together: each waits on the sim 99% of the time.
            http(sim_url + "/_reset", "POST")
            sim0 = sim.cpu()
            runs = []
            for rnd in range(args.runs):
                dst = os.path.join(tmp, "out-seq-%d.jsonl" % rnd)
                t0 = time.monotonic()
                p = subprocess.Popen([PY, os.path.join(HERE, "seq_client.py"), src, dst, sim_url + "/v1",
                                      str(args.seq_lines)], stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=log)
                runs.append((p, t0, dst, rnd))
            for p, t0, dst, rnd in runs:
                _, status, ru = os.wait4(p.pid, 0)
                p.returncode = os.waitstatus_to_exitcode(status)
                wall = time.monotonic() - t0
                scale = args.lines / args.seq_lines
                ok = count_ok(dst)
                results["seq"].append({"round": rnd, "wall_s": wall * scale, "measured_wall_s": wall,
                                       "cpu_s": (ru.ru_utime + ru.ru_stime) * scale,
                                       "client_cpu_s": (ru.ru_utime + ru.ru_stime) * scale,
                                       "cluster_cpu_s": 0.0, "rc": p.returncode, "ok": ok,
                                       "lines": args.seq_lines, "load": benchlib.loadavg()})
                if p.returncode != 0 or ok != args.seq_lines:
                    failures.append("seq round %d: rc=%s ok=%d/%d" % (rnd, p.returncode, ok, args.seq_lines))
            sim_seq = (sim.cpu() - sim0) / args.runs * (args.lines / args.seq_lines)
            for r in results["seq"]:
                r["sim_cpu_s"] = sim_seq
    finally:
        benchlib.stop_all(procs)
        log.close()

    # ---- the table
    print(benchlib.header("end to end, %d prompts, llmq-sim latency %d ms, %d workers x capacity %d"
                          % (args.lines, args.latency_ms, args.workers, args.capacity)))
    print()
    print("| client | in flight | wall s | req/s | CPU s (all but sim) | CPU ms/request | sim CPU s "
          "| wall vs llmq | CPU vs llmq |")
    print("|---|---|---|---|---|---|---|---|---|")
    base = results.get("llmq") or []
    names = {"llmq": "`llmq run` (broker + %d workers)" % args.workers,
             "base": "`llmq run` (broker + %d workers), baseline bin" % args.workers,
             "embedded": "`llmq run`, embedded cluster (%d workers, start-up included)" % args.workers,
             "aiohttp": "Python asyncio + aiohttp", "node": "`openai` npm SDK + p-limit",
             "seq": "sequential loop (%d lines, extrapolated)" % args.seq_lines}
    for v, rs in benchlib.measured(results, variants):
        walls = [r["wall_s"] for r in rs]
        cpus = [r["cpu_s"] for r in rs]
        rps = [args.lines / r["wall_s"] for r in rs]
        cpr = [1000 * r["cpu_s"] / args.lines for r in rs]
        sims = [r["sim_cpu_s"] for r in rs]
        if base and v != "llmq":
            # ratio to llmq of the same round (seq: to the median llmq run)
            bw = benchlib.stats([b["wall_s"] for b in base])[0]
            bc = benchlib.stats([b["cpu_s"] for b in base])[0]
            if v == "seq":
                wr = [r["wall_s"] / bw for r in rs]
                cr = [r["cpu_s"] / bc for r in rs]
            else:
                wr = [r["wall_s"] / b["wall_s"] for r, b in zip(rs, base)]
                cr = [r["cpu_s"] / b["cpu_s"] for r, b in zip(rs, base)]
            wrs, crs = benchlib.fmt_mmm(wr, 2, "x"), benchlib.fmt_mmm(cr, 2, "x")
        else:
            wrs = crs = "1 (baseline)"
        inflight = 1 if v == "seq" else conc
        print("| %s | %d | %s | %s | %s | %s | %s | %s | %s |" % (
            names[v], inflight, benchlib.fmt_mmm(walls), benchlib.fmt_mmm(rps, 0), benchlib.fmt_mmm(cpus),
            benchlib.fmt_mmm(cpr, 2), benchlib.fmt_mmm(sims), wrs, crs))
    if base:
        cl = [r["cluster_cpu_s"] for r in base]
        cc = [r["client_cpu_s"] for r in base]
        print()
        print("llmq CPU split: `llmq run` client %s s, broker + workers %s s." % (
            benchlib.fmt_mmm(cc), benchlib.fmt_mmm(cl)))
    split_table(results, variants, names, args.lines, args.workers)
    shutil.rmtree(tmp, ignore_errors=True)
    return benchlib.report_end(failures, args.json, args, results)


if __name__ == "__main__":
    sys.exit(main())
