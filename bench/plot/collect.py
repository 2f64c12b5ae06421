#!/usr/bin/python3
"""Collects the data behind the plots of BENCHMARKS.md, then draws them.

    bench/plot/collect.py [--runs 3] [--smoke] [--out DIR] [--no-plot]

Three series, each point the median of --runs runs (min and max kept too):

  workers-echo.dat   max req/s through llmq-broker and through the raw
                     zmq_proxy baseline (llmq-bench-broker proxy) against the
                     number of echo workers (1, 2, 4, 8): 1 client, 1 KB
                     payloads, window 512 (bench/broker's load generator).
  workers-sim.dat    req/s of `llmq run` (--sim-waves x 256 x workers
                     prompts: the same number of 200 ms windows at every
                     point, so the ceiling is reachable; 2,048 outstanding)
                     against the number of llmq-workers (capacity 256 each)
                     serving llmq-sim at 200 ms latency: what adding a
                     worker buys when the provider is slow. Also the CPU
                     per request (us, median run) of each process: the
                     `llmq run` client, the broker, the workers together,
                     the sim; and the machine's busy share of the run (all
                     cores), to tell which process limits it.
  latency-load.dat   p50 and p99 latency against offered load (open loop,
                     paced sends) through llmq-broker and the raw proxy, with
                     2 echo workers and 1 KB payloads.

  e2e.dat            with --e2e-json FILE (bench_e2e.py's --json output, run-all
                     passes it): wall time and CPU of each end-to-end client.

Then runs plot.gp (gnuplot, Debian's gnuplot-nox) to write the PNGs next to
the data. Each .dat starts with a comment naming the machine and load.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "lib"))
import benchlib  # noqa: E402


def echo_cluster(bindir, system, nworkers, capacity, log):
    """Start llmq-broker (or the raw proxy) and NWORKERS echo workers.
    Returns (procs, frontend)."""
    gen = os.path.join(bindir, "llmq-bench-broker")
    if system == "broker":
        mid = benchlib.start([os.path.join(bindir, "llmq-broker"), "--quiet",
                              "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*"],
                             stderr=log)
        mode = "llmq"
    else:
        mid = benchlib.start([gen, "proxy", "--frontend", "tcp://127.0.0.1:*",
                              "--backend", "tcp://127.0.0.1:*"], stderr=log)
        mode = "raw"
    procs = [mid]
    for _ in range(nworkers):
        procs.append(benchlib.start([gen, "worker", "--connect", mid.ready["backend"], "--mode", mode,
                                     "--capacity", str(capacity)], stderr=log))
    return procs, mid.ready["frontend"]


def gen_client(bindir, frontend, requests, window, rate=0, warmup=True):
    """Run the load generator once; returns its JSON summary."""
    gen = os.path.join(bindir, "llmq-bench-broker")
    if warmup:
        # connections, worker hellos and credit settle before the measured run
        subprocess.run([gen, "client", "--connect", frontend, "--requests", "200", "--window", "50"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
    cmd = [gen, "client", "--connect", frontend, "--requests", str(requests), "--window", str(window)]
    if rate:
        cmd += ["--rate", str(rate)]
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, timeout=300)
    for line in r.stdout.splitlines():
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError("load generator printed no result (rc %s)" % r.returncode)


def write_dat(path, comment, columns, rows):
    """Write one series, and show it on stdout too (run-all keeps that)."""
    with open(path, "w") as f:
        f.write("%s\n# %s\n" % (comment, " ".join(columns)))
        for row in rows:
            f.write(" ".join(benchlib.fmt(x, 3) if isinstance(x, float) else str(x) for x in row) + "\n")
    with open(path) as f:
        print("%s:\n```\n%s```" % (os.path.basename(path), f.read()))


def series_workers_echo(a, bindir, log):
    rows = []
    for n in a.echo_workers:
        row = [n]
        for system in ("broker", "raw"):
            vals = []
            for _ in range(a.runs):
                procs, fe = echo_cluster(bindir, system, n, 256, log)
                try:
                    vals.append(gen_client(bindir, fe, a.echo_requests, 512)["rps"])
                finally:
                    benchlib.stop_all(procs)
            row += list(benchlib.stats(vals))
            print("plot: echo %d workers %s: %.0f req/s" % (n, system, row[-3]), file=sys.stderr)
        rows.append(row)
    write_dat(os.path.join(a.out, "workers-echo.dat"), benchlib.header("throughput against echo workers"),
              ["workers", "broker_med", "broker_min", "broker_max", "raw_med", "raw_min", "raw_max"], rows)


def sim_input(tmp, lines):
    src = os.path.join(tmp, "in-%d.jsonl" % lines)
    with open(src, "w") as f:
        for i in range(lines):
            f.write(json.dumps({"custom_id": "p%d" % i, "method": "POST", "url": "/v1/chat/completions",
                                "body": {"model": "sim-model", "max_tokens": 16,
                                         "messages": [{"role": "user", "content": "plot prompt %d" % i}]}}) + "\n")
    return src


def series_workers_sim(a, bindir, log):
    """A fixed number of lines (the old 5,000) caps the ratio to the ceiling
    by its last partial window: 5,000 lines through 2,048 slots take 3
    windows of 200 ms, at best 81% of 8 x 1,280 req/s. With --sim-waves W,
    n workers get W x 256 x n lines: W whole windows at every point."""
    tmp = tempfile.mkdtemp(prefix="llmq-bench-plot-")
    sim = benchlib.start([os.path.join(bindir, "llmq-sim"), "--port", "0", "--quiet",
                          "--latency-ms", str(a.sim_latency)], stderr=log)
    env = dict(os.environ, LLMQ_API_KEY="bench-key")
    rows = []
    try:
        for n in a.sim_workers:
            lines = a.sim_waves * 256 * n if a.sim_waves else a.sim_lines
            src = sim_input(tmp, lines)
            vals, cpus = [], []
            for rnd in range(a.runs):
                broker = benchlib.start([os.path.join(bindir, "llmq-broker"), "--quiet",
                                         "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*"],
                                        stderr=log)
                procs = [broker]
                try:
                    for i in range(n):
                        procs.append(benchlib.start(
                            [os.path.join(bindir, "llmq-worker"), "--broker", broker.ready["backend"],
                             "--provider", "openai", "--base-url", sim.ready["url"] + "/v1",
                             "--model", "sim-model", "--capacity", "256", "--name", "plot-w%d" % i],
                            env=env, stderr=log))
                    dst = os.path.join(tmp, "out-%d-%d.jsonl" % (n, rnd))
                    pids = [broker.pid, sim.pid] + [p.pid for p in procs[1:]]
                    cpu0, busy0 = [benchlib.cpu_seconds([p]) for p in pids], s_busy()
                    wall, client, rc = benchlib.run_timed(
                        [os.path.join(bindir, "llmq"), "run", src, "-o", dst, "--broker",
                         broker.ready["frontend"], "--concurrency", "2048", "--quiet"], timeout=300)
                    cpu1, busy1 = [benchlib.cpu_seconds([p]) for p in pids], s_busy()
                    if rc != 0:
                        raise RuntimeError("llmq run failed (%s) with %d workers" % (rc, n))
                    vals.append(lines / wall)
                    d = [(y - x) * 1e6 / lines for x, y in zip(cpu0, cpu1)]
                    cpus.append((vals[-1], [client * 1e6 / lines, d[0], sum(d[2:]), d[1],
                                            (busy1 - busy0) / (wall * os.cpu_count())]))
                finally:
                    benchlib.stop_all(procs)
            per = sorted(cpus)[len(cpus) // 2][1]  # the median run's split
            rows.append([n] + list(benchlib.stats(vals)) + [256 * n / (a.sim_latency / 1000.0)] + per
                        + [lines])
            print("plot: sim %d workers: %.0f req/s; CPU us/request client %.0f, broker %.0f, "
                  "workers %.0f, sim %.0f; machine busy %.0f%%"
                  % (n, rows[-1][1], per[0], per[1], per[2], per[3], 100 * per[4]), file=sys.stderr)
    finally:
        benchlib.stop_all([sim])
    write_dat(os.path.join(a.out, "workers-sim.dat"),
              benchlib.header("llmq run throughput against llmq-workers, llmq-sim %d ms" % a.sim_latency),
              ["workers", "med", "min", "max", "ceiling", "client_us", "broker_us", "workers_us",
               "sim_us", "busy", "lines"], rows)


def s_busy():
    """CPU seconds the whole machine was busy so far (/proc/stat: all but
    idle and iowait)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return (sum(v[:8]) - v[3] - v[4]) / benchlib.CLK_TCK


def series_latency_load(a, bindir, log):
    rows = []
    for rate in a.rates:
        row = [rate]
        for system in ("broker", "raw"):
            p50s, p99s = [], []
            for _ in range(a.runs):
                procs, fe = echo_cluster(bindir, system, 2, 256, log)
                try:
                    r = gen_client(bindir, fe, max(1000, int(rate * a.seconds)), 1000000, rate=rate)
                finally:
                    benchlib.stop_all(procs)
                p50s.append(r["p50_us"] / 1000.0)
                p99s.append(r["p99_us"] / 1000.0)
            row += list(benchlib.stats(p50s)) + list(benchlib.stats(p99s))
            print("plot: %d req/s %s: p50 %.2f ms p99 %.2f ms" % (rate, system, row[-6], row[-3]),
                  file=sys.stderr)
        rows.append(row)
    cols = ["offered"]
    for s in ("broker", "raw"):
        for p in ("p50", "p99"):
            cols += ["%s_%s_med" % (s, p), "%s_%s_min" % (s, p), "%s_%s_max" % (s, p)]
    write_dat(os.path.join(a.out, "latency-load.dat"),
              benchlib.header("latency against offered load, 2 echo workers, 1 KB (ms)"), cols, rows)


def series_e2e(a):
    """Bars of the end-to-end part from its JSON (medians, min, max)."""
    with open(a.e2e_json) as f:
        d = json.load(f)
    labels = {"llmq": "llmq run", "embedded": "llmq run (embedded)", "aiohttp": "asyncio+aiohttp",
              "node": "openai SDK", "seq": "sequential"}
    rows = []
    for v in ("llmq", "embedded", "aiohttp", "node"):
        rs = d["results"].get(v) or []
        if rs:
            rows.append(['"%s"' % labels[v]] + list(benchlib.stats([r["wall_s"] for r in rs]))
                        + list(benchlib.stats([r["cpu_s"] for r in rs])))
    write_dat(os.path.join(a.out, "e2e.dat"), "# end to end (from %s), %s" % (
                  os.path.basename(a.e2e_json), d.get("machine", "")),
              ["client", "wall_med", "wall_min", "wall_max", "cpu_med", "cpu_min", "cpu_max"], rows)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=None)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--series", default="workers-echo,workers-sim,latency-load")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--no-plot", action="store_true")
    ap.add_argument("--e2e-json", default=None, help="also plot bench_e2e.py's results from this file")
    ap.add_argument("--sim-waves", type=int, default=10,
                    help="workers-sim: lines = this x 256 x workers (0: 5,000 lines at every point)")
    ap.add_argument("--sim-workers", dest="sim_workers_arg", default=None,
                    help="workers-sim: worker counts, comma separated (default 1,2,4,8)")
    a = ap.parse_args()
    if a.series == "":
        a.series = "none"
    a.echo_workers, a.echo_requests = [1, 2, 4, 8], 50000
    a.sim_workers, a.sim_lines, a.sim_latency = [1, 2, 4, 8], 5000, 200
    a.rates, a.seconds = [1000, 2000, 5000, 10000, 20000], 2.0
    if a.smoke:
        a.runs, a.echo_workers, a.echo_requests = 1, [1, 2], 2000
        a.sim_workers, a.sim_lines, a.sim_latency = [1, 2], 300, 50
        a.sim_waves = 0
        a.rates, a.seconds = [1000, 5000], 0.5
    if a.sim_workers_arg:
        a.sim_workers = [int(x) for x in a.sim_workers_arg.split(",")]
    bindir = benchlib.bin_dir(a.bin)
    benchlib.raise_nofile()
    os.makedirs(a.out, exist_ok=True)
    series = a.series.split(",")
    with open(os.path.join(a.out, "collect.log"), "w") as log:
        if "workers-echo" in series:
            series_workers_echo(a, bindir, log)
        if "workers-sim" in series:
            series_workers_sim(a, bindir, log)
        if "latency-load" in series:
            series_latency_load(a, bindir, log)
        if a.e2e_json and os.path.exists(a.e2e_json):
            series_e2e(a)
    os.remove(os.path.join(a.out, "collect.log"))
    if not a.no_plot:
        r = subprocess.run(["gnuplot", "-e", "dir='%s'; simlines=%d; simwaves=%d; simlat=%d"
                            % (a.out, a.sim_lines, a.sim_waves, a.sim_latency),
                            os.path.join(HERE, "plot.gp")])
        return r.returncode
    return 0


if __name__ == "__main__":
    sys.exit(main())
