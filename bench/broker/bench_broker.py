#!/usr/bin/python3
"""bench_broker.py - llmq-broker against a raw zmq_proxy, in the same run.

    bench_broker.py [--bin DIR] [--baseline-bin DIR] [--trials 3] [--smoke] [--json OUT]

Parts (each trial runs both systems back to back, alternating which goes
first, so that machine noise hits both):
  throughput  C clients x N requests (1 KB payload, window W each) through
              W workers: llmq-broker with credit-based echo workers, and
              llmq-bench-broker's raw zmq_proxy ROUTER-DEALER with the same
              echo workers in raw mode. Reports req/s, p50/p99 latency,
              and the middle process's CPU per request (utime+stime).
              With --baseline-bin DIR, DIR's llmq-broker runs in every
              trial too (before/after of a change, same run).
  load        latency at fixed offered loads (1k and 5k req/s in total).
  real        (opt-in, with throughput) the broker again with real
              `llmq-worker --provider echo` processes instead of bench workers.
  tenants     (opt-in) the broker alone, each client its own declared
              tenant, fair share on beside --no-fair-share (PROTOCOL.md 3.4).
  memory      1,000,000 queued 1 KB requests (no worker for their model):
              broker RSS and ping round trips while the queue is full.
  callgrind   (opt-in) the middle process (broker, then raw proxy) under
              `valgrind --tool=callgrind`, with the throughput part's clients
              and workers but --callgrind-requests per client: instructions
              per request (all threads, libzmq's I/O thread included;
              counted from after the workers joined to the last answer) and
              the top functions by self cost. Repeatable where CPU seconds
              on a shared machine are not: the number to compare before and
              after a change (--bin and --baseline-bin in one run).

Prints a Markdown summary (median of the trials, min..max, ratios) and
optionally writes all raw numbers as JSON.
"""
import argparse
import json
import os
import select
import statistics
import subprocess
import sys
import time

import msgpack
import zmq

HERE = os.path.dirname(os.path.abspath(__file__))
TICK = os.sysconf("SC_CLK_TCK")


def start(argv):
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    deadline = time.time() + 20
    while time.time() < deadline:
        r, _, _ = select.select([p.stdout], [], [], 0.2)
        if r:
            line = p.stdout.readline()
            if line.startswith("ready "):
                return p, dict(x.split("=", 1) for x in line.split()[2:] if "=" in x)
            if not line:
                break
    p.kill()
    raise RuntimeError("no ready line from %s" % argv[0])


def cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_mb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return 0.0


def stop(procs):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def callgrind_total(path):
    """Total instructions (Ir) of a callgrind dump."""
    with open(path) as f:
        for line in f:
            if line.startswith(("summary:", "totals:")):
                return int(line.split()[1])
    raise RuntimeError("no totals in %s" % path)


def callgrind_top(path, per, n=15):
    """The n functions of largest self cost: (Ir per request, name)."""
    out = subprocess.run(["callgrind_annotate", "--threshold=100", "--inclusive=no", path],
                         capture_output=True, text=True).stdout
    top = []
    for line in out.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) == 2 and parts[0].replace(",", "").isdigit() and ":" in parts[1]:
            name = parts[1].split(" [")[0].split(")", 1)[-1].strip()
            if "clone.S" in name or "pthread_create" in name or name.startswith("???:0x"):
                continue  # thread entry points: their cost is everybody's
            top.append((int(parts[0].replace(",", "")) / per, name))
        if len(top) >= n:
            break
    return top


def run_system(a, system, requests, window, rate=0, bindir=None, callgrind=None):
    """One run of `system` (broker or raw); returns a dict of numbers.
    callgrind: a path prefix to run the middle under callgrind."""
    if system == "broker-base":
        bindir, system = a.baseline_bin, "broker"  # the same run, the baseline's broker
    bindir = bindir or a.bin
    bench = os.path.join(bindir, "llmq-bench-broker")
    wrap = (["valgrind", "--tool=callgrind", "--callgrind-out-file=" + callgrind]
            if callgrind else [])
    if system.startswith("broker"):
        # broker-fair / broker-fifo: each client its own tenant, fair share
        # on / off (--no-fair-share); the tenants part compares the two.
        mid, ep = start(wrap + [os.path.join(bindir, "llmq-broker"), "--quiet",
                                "--frontend", "tcp://127.0.0.1:*",
                                "--backend", "tcp://127.0.0.1:*"]
                        + (["--no-fair-share"] if system == "broker-fifo" else []))
        wmode = "llmq"
    else:
        mid, ep = start(wrap + [bench, "proxy"])
        wmode = "raw"
    procs = [mid]
    try:
        for i in range(a.workers):
            if system == "broker+llmq-worker":
                # The real worker with its echo provider (no HTTP).
                argv = [os.path.join(a.bin, "llmq-worker"), "--broker", ep["backend"],
                        "--provider", "echo", "--model", "bench", "--name", "echo%d" % i,
                        "--capacity", str(a.capacity)]
            else:
                argv = [bench, "worker", "--connect", ep["backend"], "--mode", wmode,
                        "--capacity", str(a.capacity)]
            w, _ = start(argv)
            procs.append(w)
        if system.startswith("broker"):
            # Wait until the broker has every worker (status), not a sleep.
            s = zmq.Context.instance().socket(zmq.DEALER)
            s.setsockopt(zmq.LINGER, 0)
            s.connect(ep["frontend"])
            while True:
                s.send(msgpack.packb({"v": 1, "t": "status"}))
                frames = s.recv_multipart()
                if len(msgpack.unpackb(frames[1])["workers"]) == a.workers:
                    break
            s.close()
        if callgrind:
            subprocess.run(["callgrind_control", "-z", str(mid.pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
        cpu0 = cpu_seconds(mid.pid)
        clients = []
        for i in range(a.clients):
            argv = [bench, "client", "--connect", ep["frontend"], "--requests", str(requests),
                    "--window", str(window), "--size", str(a.size)]
            if system in ("broker-fair", "broker-fifo"):
                argv += ["--tenant", "tenant-%d" % i]
            if rate:
                argv += ["--rate", str(rate)]
            c, _ = start(argv)
            clients.append(c)
        results = []
        for c in clients:
            out, _ = c.communicate(timeout=600)
            results.append(json.loads(out.strip().splitlines()[-1]))
        cpu1 = cpu_seconds(mid.pid)
        if callgrind:
            subprocess.run(["callgrind_control", "-d", str(mid.pid)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True)
    finally:
        stop(procs)
    total = sum(r["count"] for r in results)
    seconds = max(r["seconds"] for r in results)
    extra = {}
    if callgrind:
        dump = callgrind + ".1"
        extra = {"ir_per_req": callgrind_total(dump) / max(1, total),
                 "top": callgrind_top(dump, max(1, total))}
    return dict(extra, **{
        "system": system, "requests": total, "errors": sum(r["errors"] for r in results),
        "seconds": seconds, "rps": total / seconds,
        "p50_us": statistics.median(r["p50_us"] for r in results),
        "p99_us": max(r["p99_us"] for r in results),
        "cpu_us_per_req": (cpu1 - cpu0) * 1e6 / max(1, total),
    })


def callgrind_part(a):
    """Instructions per request of the middle, under callgrind: the broker
    of --bin (and of --baseline-bin if given) and the raw proxy."""
    import tempfile
    tmp = tempfile.mkdtemp(prefix="llmq-bench-callgrind-")
    runs = [("broker", a.bin, "broker")]
    if a.baseline_bin:
        runs.append(("broker", a.baseline_bin, "broker (baseline bin)"))
    runs.append(("raw", a.bin, "raw"))
    out = []
    for system, bindir, label in runs:
        path = os.path.join(tmp, "cg-%d" % len(out))
        r = run_system(a, system, a.callgrind_requests, a.window, bindir=bindir,
                       callgrind=path)
        r["label"] = label
        out.append(r)
        print("callgrind %-22s %9.0f instructions/request (%d requests, errors %d)"
              % (label, r["ir_per_req"], r["requests"], r["errors"]), file=sys.stderr)
        for ir, name in r["top"]:
            print("    %9.0f  %s" % (ir, name), file=sys.stderr)
    return out


def memory_part(a, count):
    """Queue `count` 1 KB requests with no worker; RSS and ping latency."""
    broker, ep = start([os.path.join(a.bin, "llmq-broker"), "--quiet",
                        "--frontend", "tcp://127.0.0.1:*", "--backend", "tcp://127.0.0.1:*",
                        "--max-queue", str(count + 10), "--no-worker-wait-ms", "86400000",
                        "--drain-ms", "0"])
    try:
        rss0 = rss_mb(broker.pid)
        ctx = zmq.Context.instance()
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.SNDHWM, 0)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IDENTITY, b"memory-client")
        s.connect(ep["frontend"])
        body = msgpack.packb({"messages": [{"role": "user", "content": "x" * 990}]})
        assert 1000 <= len(body) <= 1024, len(body)
        t0 = time.time()
        for i in range(count):
            s.send_multipart([msgpack.packb({"v": 1, "t": "req", "id": "m%d" % i, "op": "chat",
                                             "model": "nobody-serves-this"}), body])
        ping = ctx.socket(zmq.DEALER)
        ping.setsockopt(zmq.LINGER, 0)
        ping.connect(ep["frontend"])
        queued = 0
        while queued < count:
            ping.send(msgpack.packb({"v": 1, "t": "status"}))
            if not ping.poll(60000):
                raise RuntimeError("status not answered")
            frames = ping.recv_multipart()
            queued = msgpack.unpackb(frames[1])["counters"]["queued"]
        fill_s = time.time() - t0
        # The broker hands freed receive buffers back to the OS every 5 s
        # while its queue is large: report the settled RSS (and the peak).
        rss_peak = rss_mb(broker.pid)
        settle = time.time() + 12
        rss1 = rss_peak
        while time.time() < settle:
            ping.send(msgpack.packb({"v": 1, "t": "ping"}))
            ping.poll(10000)
            ping.recv_multipart()
            rss1 = rss_mb(broker.pid)
            rss_peak = max(rss_peak, rss1)
            time.sleep(0.5)
        rtts = []
        for _ in range(20):
            t = time.perf_counter()
            ping.send(msgpack.packb({"v": 1, "t": "ping"}))
            if not ping.poll(10000):
                raise RuntimeError("ping not answered")
            ping.recv_multipart()
            rtts.append((time.perf_counter() - t) * 1000)
        s.close()
        ping.close()
    finally:
        broker.kill()
        broker.wait()
    return {"queued": count, "fill_seconds": fill_s, "rss_idle_mb": rss0, "rss_mb": rss1,
            "rss_peak_mb": rss_peak,
            "bytes_per_request": (rss1 - rss0) * 1024 * 1024 / count,
            "ping_ms_median": statistics.median(rtts), "ping_ms_max": max(rtts)}


def med(values):
    return statistics.median(values), min(values), max(values)


def fmt(values, f="%.0f"):
    m, lo, hi = med(values)
    return (f + " (" + f + ".." + f + ")") % (m, lo, hi)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default=os.environ.get("LLMQ_BIN_DIR",
                                                    os.path.join(HERE, "../../build/bin")))
    ap.add_argument("--baseline-bin", help="throughput and callgrind parts: also the "
                    "broker of this directory (before/after in one run)")
    ap.add_argument("--callgrind-requests", type=int, default=2500,
                    help="callgrind part: requests per client")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--capacity", type=int, default=64)
    ap.add_argument("--requests", type=int, default=50000, help="per client")
    ap.add_argument("--window", type=int, default=128, help="outstanding per client")
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--memory", type=int, default=1000000, help="queued requests (0 = skip)")
    ap.add_argument("--parts", default="throughput,load,memory")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script works")
    ap.add_argument("--json", help="write raw numbers here")
    a = ap.parse_args()
    if a.smoke:
        a.trials, a.requests, a.memory, a.callgrind_requests = 1, 2000, 20000, 200
    parts = a.parts.split(",")
    out = {"config": vars(a), "throughput": [], "load": [], "memory": None}

    real = "real" in parts and os.access(os.path.join(a.bin, "llmq-worker"), os.X_OK)
    if "throughput" in parts:
        for t in range(a.trials):
            order = ["broker", "raw"] if t % 2 == 0 else ["raw", "broker"]
            if a.baseline_bin:
                order.insert(1, "broker-base")
            if real:
                order.append("broker+llmq-worker")
            for system in order:
                r = run_system(a, system, a.requests, a.window)
                r["trial"], r["system"] = t, system
                out["throughput"].append(r)
                print("throughput trial %d %-6s %8.0f req/s p50 %6.0f us p99 %6.0f us "
                      "cpu %5.1f us/req errors %d" % (t, system, r["rps"], r["p50_us"],
                                                      r["p99_us"], r["cpu_us_per_req"], r["errors"]),
                      file=sys.stderr)
    if "load" in parts:
        for total_rate in (1000, 5000):
            per_client = total_rate // a.clients
            n = per_client * (2 if a.smoke else 5)
            for t in range(a.trials):
                for system in (["broker", "raw"] if t % 2 == 0 else ["raw", "broker"]):
                    r = run_system(a, system, n, 1000000, rate=per_client)
                    r.update(trial=t, offered=total_rate)
                    out["load"].append(r)
                    print("load %5d/s trial %d %-6s p50 %6.0f us p99 %6.0f us cpu %5.1f us/req"
                          % (total_rate, t, system, r["p50_us"], r["p99_us"], r["cpu_us_per_req"]),
                          file=sys.stderr)
    if "tenants" in parts:
        out["tenants"] = []
        for t in range(a.trials):
            for system in (["broker-fair", "broker-fifo"] if t % 2 == 0
                           else ["broker-fifo", "broker-fair"]):
                r = run_system(a, system, a.requests, a.window)
                r["trial"] = t
                out["tenants"].append(r)
                print("tenants trial %d %-11s %8.0f req/s p50 %6.0f us p99 %6.0f us "
                      "cpu %5.1f us/req errors %d" % (t, system, r["rps"], r["p50_us"],
                                                      r["p99_us"], r["cpu_us_per_req"], r["errors"]),
                      file=sys.stderr)
    if "callgrind" in parts:
        out["callgrind"] = callgrind_part(a)
    if "memory" in parts and a.memory:
        out["memory"] = memory_part(a, a.memory)
        print("memory:", out["memory"], file=sys.stderr)

    # ---- Markdown summary
    lines = []
    th = out["throughput"]
    if th:
        b = [r for r in th if r["system"] == "broker"]
        r_ = [r for r in th if r["system"] == "raw"]
        ratios = [x["rps"] / y["rps"] for x, y in zip(sorted(b, key=lambda r: r["trial"]),
                                                      sorted(r_, key=lambda r: r["trial"]))]
        # (A tiny --smoke run can measure 0 CPU ticks: no ratio then.)
        cpu_ratios = [x["cpu_us_per_req"] / y["cpu_us_per_req"] if y["cpu_us_per_req"]
                      else float("nan")
                      for x, y in zip(sorted(b, key=lambda r: r["trial"]),
                                      sorted(r_, key=lambda r: r["trial"]))]
        lines += ["| %d clients x %d workers, %d B payload, window %d | llmq-broker | raw zmq_proxy | ratio |"
                  % (a.clients, a.workers, a.size, a.window),
                  "|---|---|---|---|",
                  "| throughput, req/s | %s | %s | %s |" % (fmt([x["rps"] for x in b]),
                                                            fmt([x["rps"] for x in r_]),
                                                            fmt(ratios, "%.2f")),
                  "| latency p50, us | %s | %s | |" % (fmt([x["p50_us"] for x in b]),
                                                      fmt([x["p50_us"] for x in r_])),
                  "| latency p99, us | %s | %s | |" % (fmt([x["p99_us"] for x in b]),
                                                      fmt([x["p99_us"] for x in r_])),
                  "| middle CPU per request, us | %s | %s | %s |"
                  % (fmt([x["cpu_us_per_req"] for x in b], "%.1f"),
                     fmt([x["cpu_us_per_req"] for x in r_], "%.1f"), fmt(cpu_ratios, "%.2f"))]
        bb = sorted([r for r in th if r["system"] == "broker-base"], key=lambda r: r["trial"])
        if bb:
            rs = sorted(r_, key=lambda r: r["trial"])
            lines += ["| baseline broker (--baseline-bin), same trials: req/s; CPU us/request "
                      "| %s; %s | | %s; %s |"
                      % (fmt([x["rps"] for x in bb]), fmt([x["cpu_us_per_req"] for x in bb], "%.1f"),
                         fmt([x["rps"] / y["rps"] for x, y in zip(bb, rs)], "%.2f"),
                         fmt([x["cpu_us_per_req"] / y["cpu_us_per_req"] if y["cpu_us_per_req"]
                              else float("nan") for x, y in zip(bb, rs)], "%.2f"))]
        rw = sorted([r for r in th if r["system"] == "broker+llmq-worker"],
                    key=lambda r: r["trial"])
        if rw:
            rw_ratios = [x["rps"] / y["rps"] for x, y in zip(rw, sorted(r_, key=lambda r: r["trial"]))]
            lines += ["| with %d real `llmq-worker --provider echo`: req/s; p50 / p99 us; "
                      "broker CPU us/req | %s; %s / %s; %s | | %s |"
                      % (a.workers, fmt([x["rps"] for x in rw]), fmt([x["p50_us"] for x in rw]),
                         fmt([x["p99_us"] for x in rw]),
                         fmt([x["cpu_us_per_req"] for x in rw], "%.1f"), fmt(rw_ratios, "%.2f"))]
    tn = out.get("tenants") or []
    if tn:
        fair = sorted([r for r in tn if r["system"] == "broker-fair"], key=lambda r: r["trial"])
        fifo = sorted([r for r in tn if r["system"] == "broker-fifo"], key=lambda r: r["trial"])
        lines += ["", "| %d clients = %d tenants x %d workers | fair share on | off "
                  "(--no-fair-share) | on / off |" % (a.clients, a.clients, a.workers),
                  "|---|---|---|---|",
                  "| throughput, req/s | %s | %s | %s |"
                  % (fmt([x["rps"] for x in fair]), fmt([x["rps"] for x in fifo]),
                     fmt([x["rps"] / y["rps"] for x, y in zip(fair, fifo)], "%.2f")),
                  "| broker CPU per request, us | %s | %s | %s |"
                  % (fmt([x["cpu_us_per_req"] for x in fair], "%.1f"),
                     fmt([x["cpu_us_per_req"] for x in fifo], "%.1f"),
                     fmt([x["cpu_us_per_req"] / y["cpu_us_per_req"] if y["cpu_us_per_req"]
                          else float("nan") for x, y in zip(fair, fifo)], "%.2f"))]
    for total_rate in (1000, 5000):
        ld = [r for r in out["load"] if r["offered"] == total_rate]
        if not ld:
            continue
        b = [r for r in ld if r["system"] == "broker"]
        r_ = [r for r in ld if r["system"] == "raw"]
        lines += ["| offered %d req/s: p50 / p99 latency, us | %s / %s | %s / %s | |"
                  % (total_rate, fmt([x["p50_us"] for x in b]), fmt([x["p99_us"] for x in b]),
                     fmt([x["p50_us"] for x in r_]), fmt([x["p99_us"] for x in r_]))]
    cg = out.get("callgrind") or []
    if cg:
        raw = [r for r in cg if r["system"] == "raw"]
        lines += ["", "| callgrind, %d clients x %d workers, %d requests each | instructions "
                  "per request | vs raw |" % (a.clients, a.workers, a.callgrind_requests),
                  "|---|---|---|"]
        for r in cg:
            lines.append("| %s | %.0f | %.2fx |" % (r["label"], r["ir_per_req"],
                                                   r["ir_per_req"] / raw[0]["ir_per_req"]))
    if out["memory"]:
        m = out["memory"]
        lines += ["", "Memory: %d queued 1 KB requests: broker RSS %.0f MB (peak %.0f MB, idle "
                  "%.0f MB, %.0f bytes per queued request), filled in %.1f s; ping while "
                  "full: median %.2f ms, max %.2f ms."
                  % (m["queued"], m["rss_mb"], m["rss_peak_mb"], m["rss_idle_mb"],
                     m["bytes_per_request"],
                     m["fill_seconds"], m["ping_ms_median"], m["ping_ms_max"])]
    print("\n".join(lines))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    errors = sum(r["errors"] for r in out["throughput"] + out["load"] + tn)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
