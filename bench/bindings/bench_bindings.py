#!/usr/bin/python3
"""Bindings benchmark (issue 16): N requests through the Python and Node
packages against a hand-written asyncio + aiohttp client, same run, same
llmq-sim.

    bench/bindings/bench_bindings.py [--requests 10000] [--concurrency 1024]
        [--latency-ms 200] [--runs 3] [--workers 4] [--smoke] [--json FILE]

One llmq-sim (--latency-ms, every prompt different) serves every variant,
one after the other, round after round:

  python-async  AsyncClient.infer_many(concurrency=C) through an
                llmq-broker and W llmq-workers (capacity C/W each)
  python-sync   Client.infer_many(concurrency=C), same cluster
  node          Client.inferMany({concurrency: C}), same cluster
  aiohttp       bench/bindings/aiohttp_client.py: asyncio + aiohttp
                straight at the sim, C connections, C in flight

For each: wall time and the client process's CPU seconds (user + system,
from wait4), and for the bindings the broker's and workers' CPU (from
/proc) on the side; median (min..max) over the rounds, ratios against
aiohttp in the same round. Prints a markdown table.
"""
import argparse
import json
import os
import sys
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import benchlib  # noqa: E402

PY = "/usr/bin/python3"
NAMES = {"python-async": "Python `AsyncClient.infer_many`",
         "python-sync": "Python `Client.infer_many`",
         "node": "Node `Client.inferMany`",
         "aiohttp": "hand-written asyncio + aiohttp (baseline)"}


def http(url, method="GET"):
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"{}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=10000)
    ap.add_argument("--concurrency", type=int, default=1024)
    ap.add_argument("--variants", default="python-async,python-sync,node,aiohttp")
    benchlib.add_common_args(ap)
    ap.add_argument("--timeout", type=float, default=600)
    args = ap.parse_args()
    if args.smoke:
        args.requests, args.concurrency, args.runs, args.latency_ms = 300, 64, 1, 20
        args.workers = 2
    variants = args.variants.split(",")
    if "node" in variants and not os.path.isdir(os.path.join(
            HERE, "..", "..", "bindings", "node", "node_modules", "zeromq")):
        print("bindings: node skipped (run bindings/node/install.sh)", file=sys.stderr)
        variants.remove("node")
    bindir = benchlib.bin_dir(args.bin)
    benchlib.raise_nofile()
    capacity = max(1, args.concurrency // args.workers)
    log = open(os.devnull, "w")
    procs = []
    results = {v: [] for v in variants}
    failures = []
    try:
        sim, broker, workers = benchlib.start_cluster(
            bindir, procs, args.workers, capacity, log=log,
            sim_flags=("--latency-ms", str(args.latency_ms)), broker_flags=("--batch-db", "none"))
        sim_url = sim.ready["url"]
        endpoint = broker.ready["frontend"]
        cluster = [broker.pid] + [w.pid for w in workers]
        n, c = str(args.requests), str(args.concurrency)
        cmds = {"python-async": [PY, os.path.join(HERE, "py_client.py"), "async", endpoint, n, c],
                "python-sync": [PY, os.path.join(HERE, "py_client.py"), "sync", endpoint, n, c],
                "node": ["node", os.path.join(HERE, "node_client.mjs"), endpoint, n, c],
                "aiohttp": [PY, os.path.join(HERE, "aiohttp_client.py"), sim_url + "/v1", n, c]}
        for rnd in range(args.runs):
            for v in variants:
                http(sim_url + "/_reset", "POST")
                sim0, cl0 = sim.cpu(), benchlib.cpu_seconds(cluster)
                wall, cpu, rc = benchlib.run_timed(cmds[v], timeout=args.timeout, stderr=log)
                sim1, cl1 = sim.cpu(), benchlib.cpu_seconds(cluster)
                st = http(sim_url + "/_stats")
                r = {"round": rnd, "wall_s": wall, "client_cpu_s": cpu, "rc": rc,
                     "cluster_cpu_s": 0.0 if v == "aiohttp" else cl1 - cl0,
                     "sim_cpu_s": sim1 - sim0, "peak": st.get("peak_concurrent"),
                     "sim_ok": st.get("answered_ok"), "load": benchlib.loadavg()}
                results[v].append(r)
                if rc != 0:
                    failures.append("%s round %d: rc=%s" % (v, rnd, rc))
                print("bindings: %s round %d: %.2f s, client cpu %.2f s, cluster cpu %.2f s, "
                      "peak %s in flight" % (v, rnd, wall, cpu, r["cluster_cpu_s"], r["peak"]),
                      file=sys.stderr)
    finally:
        benchlib.stop_all(procs)
        log.close()

    print(benchlib.header("bindings, %d requests, %d in flight, llmq-sim latency %d ms, "
                          "%d workers x capacity %d" % (args.requests, args.concurrency,
                                                        args.latency_ms, args.workers, capacity)))
    print()
    print("| client | wall s | req/s | client CPU s | client CPU ms/request "
          "| broker + workers CPU s | wall vs aiohttp | client CPU vs aiohttp |")
    print("|---|---|---|---|---|---|---|---|")
    base = results.get("aiohttp") or []
    for v, rs in benchlib.measured(results, variants):
        walls = [r["wall_s"] for r in rs]
        cpus = [r["client_cpu_s"] for r in rs]
        if base and v != "aiohttp":
            wr = benchlib.fmt_mmm([r["wall_s"] / b["wall_s"] for r, b in zip(rs, base)], 2, "x")
            cr = benchlib.fmt_mmm([r["client_cpu_s"] / b["client_cpu_s"]
                                   for r, b in zip(rs, base)], 2, "x")
        else:
            wr = cr = "1 (baseline)"
        cl = "-" if v == "aiohttp" else benchlib.fmt_mmm([r["cluster_cpu_s"] for r in rs])
        print("| %s | %s | %s | %s | %s | %s | %s | %s |" % (
            NAMES[v], benchlib.fmt_mmm(walls),
            benchlib.fmt_mmm([args.requests / w for w in walls], 0), benchlib.fmt_mmm(cpus),
            benchlib.fmt_mmm([1000 * x / args.requests for x in cpus], 2), cl, wr, cr))
    print()
    print("Machine: %s" % benchlib.machine())
    return benchlib.report_end(failures, args.json, args, results)


if __name__ == "__main__":
    sys.exit(main())
