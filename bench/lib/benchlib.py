"""benchlib - shared helpers of the llmq benchmark scripts (bench/*).

Every benchmark here starts real processes, waits for their `ready` line,
drives load, and reads what each process cost from /proc: CPU seconds
(user + system, the process and all its live descendants), resident memory,
wall time. Figures on a shared 2-core machine are noisy, so every scenario
runs several times and is quoted as median and min..max (`stats`), next to
a baseline measured in the same run.

Use it from Python (`sys.path.insert(0, <bench/lib>)`, `import benchlib`)
or from a shell through its command line:

    benchlib.py cpu PID...        CPU seconds of each pid's process tree, summed
    benchlib.py rss PID...        resident KiB of each pid's process tree, summed
    benchlib.py stats X X X       "median min max" of the numbers
    benchlib.py timed -- CMD...   run CMD; print "wall_s cpu_s rc" (CPU of CMD
                                  and every descendant it waited for)
    benchlib.py machine           one line: CPU model, cores, memory, kernel, load

Only the standard library: runs on Debian's /usr/bin/python3 as is.
"""

import os
import resource
import select
import signal
import statistics
import subprocess
import sys
import threading
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024


def bin_dir(default=None):
    """Where the llmq binaries are: $LLMQ_BIN_DIR, else DEFAULT, else
    <repo>/build-bench/bin (what bench/run-all.sh builds)."""
    if os.environ.get("LLMQ_BIN_DIR"):
        return os.environ["LLMQ_BIN_DIR"]
    if default:
        return default
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(here, "..", "..", "build-bench", "bin")


def raise_nofile():
    """Thousands of sockets at once: lift the soft fd limit to the hard one
    (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# ---------------------------------------------------------------------------
# Processes


class Proc:
    """A server process started by `start`: .pid, .popen, .ready (the
    key=value pairs of its ready line), .line (the whole line)."""

    def __init__(self, popen, line, name):
        self.popen = popen
        self.pid = popen.pid
        self.line = line
        self.name = name
        self.ready = {}
        for word in line.split()[2:]:
            if "=" in word:
                k, v = word.split("=", 1)
                self.ready[k] = v
        # Keep reading stdout so a chatty child never blocks on a full pipe.
        self._drain = threading.Thread(target=self._drain_stdout, daemon=True)
        self._drain.start()

    def _drain_stdout(self):
        try:
            for _ in self.popen.stdout:
                pass
        except (ValueError, OSError):
            pass

    def cpu(self):
        """CPU seconds of this process and its descendants so far."""
        return cpu_seconds([self.pid])

    def rss_kb(self):
        return rss_kb([self.pid])

    def alive(self):
        return self.popen.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=10):
        """Signal the process and reap it; SIGKILL after TIMEOUT seconds."""
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(sig)
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        return self.popen.returncode


def start(cmd, timeout=15, env=None, stderr=None, name=None):
    """Start CMD (a list) and wait up to TIMEOUT seconds for the line that
    begins with `ready `. Returns a Proc; raises RuntimeError if the process
    exits or stays silent. STDERR: a file object, or None for /dev/null."""
    name = name or os.path.basename(cmd[0])
    popen = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                             stderr=stderr if stderr is not None else subprocess.DEVNULL,
                             stdin=subprocess.DEVNULL, env=env, text=True, bufsize=1)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            popen.kill()
            popen.wait()
            raise RuntimeError("%s: no ready line within %ss" % (name, timeout))
        r, _, _ = select.select([popen.stdout], [], [], left)
        if not r:
            continue
        line = popen.stdout.readline()
        if not line:
            popen.wait()
            raise RuntimeError("%s exited (%s) before its ready line" % (name, popen.returncode))
        if line.startswith("ready "):
            return Proc(popen, line.strip(), name)


def stop_all(procs, timeout=5):
    """Stop every Proc in PROCS: SIGTERM to all (last started first), then
    SIGKILL to whatever still runs TIMEOUT seconds later."""
    procs = [p for p in reversed(procs) if p is not None]
    for p in procs:
        if p.popen.poll() is None:
            try:
                p.popen.send_signal(signal.SIGTERM)
            except OSError:
                pass
    deadline = time.monotonic() + timeout
    for p in procs:
        try:
            p.popen.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.popen.kill()
            p.popen.wait()


def start_cluster(bindir, procs, workers, capacity, sim_flags=(), broker_flags=(),
                  name="bench-w", log=None):
    """llmq-sim + llmq-broker (--quiet, ephemeral ports) + WORKERS llmq-workers
    (openai provider against the sim, model sim-model, named NAME0...), each
    started with `start` and appended to PROCS as it starts (stop_all stops
    what did start if a later one fails). Returns (sim, broker, workers)."""
    def go(cmd, env=None):
        p = start(cmd, env=env, stderr=log)
        procs.append(p)
        return p
    sim = go([os.path.join(bindir, "llmq-sim"), "--port", "0", "--quiet", *sim_flags])
    broker = go([os.path.join(bindir, "llmq-broker"), "--quiet", "--frontend", "tcp://127.0.0.1:*",
                 "--backend", "tcp://127.0.0.1:*", *broker_flags])
    env = dict(os.environ, LLMQ_API_KEY="bench-key")
    ws = [go([os.path.join(bindir, "llmq-worker"), "--broker", broker.ready["backend"],
              "--provider", "openai", "--base-url", sim.ready["url"] + "/v1",
              "--model", "sim-model", "--capacity", str(capacity), "--name", "%s%d" % (name, i)],
             env)
          for i in range(workers)]
    return sim, broker, ws


def count_results(path):
    """(ok, failed) answer lines of an `llmq run` style output file (ok:
    response.status_code 200); (0, 0) if it does not exist."""
    import json
    ok = failed = 0
    try:
        with open(path) as f:
            for line in f:
                try:
                    d = json.loads(line)
                except ValueError:
                    continue
                if (d.get("response") or {}).get("status_code") == 200:
                    ok += 1
                else:
                    failed += 1
    except OSError:
        pass
    return ok, failed


def add_common_args(ap, workers=4, smoke_help=None):
    """The options every cluster benchmark takes: --bin, --runs,
    --latency-ms, --workers, --smoke, --json."""
    ap.add_argument("--bin", default=None, help="llmq binaries (default $LLMQ_BIN_DIR or build-bench/bin)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--latency-ms", type=int, default=200)
    ap.add_argument("--workers", type=int, default=workers)
    ap.add_argument("--smoke", action="store_true", help=smoke_help or "tiny sizes, one run (ctest)")
    ap.add_argument("--json", default=None, help="write the raw numbers here")


def measured(results, variants):
    """(variant, its runs) for each variant, in order, that has runs."""
    return [(v, results[v]) for v in variants if results.get(v)]


def report_end(failures, json_path, args, results):
    """The end of a benchmark: the failures (if any) under the table, the
    raw numbers to json_path (if given); returns the exit code."""
    if failures:
        print()
        print("FAILURES: " + "; ".join(failures))
    if json_path:
        import json
        with open(json_path, "w") as f:
            json.dump({"args": vars(args), "results": results, "failures": failures,
                       "machine": machine()}, f, indent=1)
    return 1 if failures else 0


def ensure_npm(nodedir, module):
    """Install NODEDIR's locked npm dependencies (`npm ci`) unless MODULE is
    already in its node_modules. Returns None, or why node cannot be used."""
    import shutil
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm not installed"
    if not os.path.isdir(os.path.join(nodedir, "node_modules", module)):
        r = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--silent"], cwd=nodedir,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, timeout=300)
        if r.returncode != 0:
            return "npm ci failed: " + r.stderr.strip()[-200:]
    return None


# ---------------------------------------------------------------------------
# /proc accounting


def _stat_fields(pid):
    try:
        with open("/proc/%d/stat" % pid) as f:
            data = f.read()
    except OSError:
        return None
    # comm may hold spaces and parentheses: split after the last ')'.
    rest = data[data.rindex(")") + 2:].split()
    return rest  # rest[0] is field 3 (state)


def _children_map():
    kids = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        f = _stat_fields(int(entry))
        if f is None:
            continue
        kids.setdefault(int(f[1]), []).append(int(entry))
    return kids


def tree(pids):
    """PIDS and all their live descendants."""
    kids = _children_map()
    out, todo = [], list(pids)
    while todo:
        p = todo.pop()
        if p in out:
            continue
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def cpu_seconds(pids):
    """User + system CPU seconds of the process trees of PIDS (live
    processes; a reaped child's time is in its parent's cutime/cstime, which
    is counted too)."""
    total = 0
    for p in tree(pids):
        f = _stat_fields(p)
        if f is None:
            continue
        # fields 14..17: utime stime cutime cstime (rest[11..14])
        total += int(f[11]) + int(f[12]) + int(f[13]) + int(f[14])
    return total / CLK_TCK


def rss_kb(pids):
    """Resident set size in KiB, summed over the process trees of PIDS."""
    total = 0
    for p in tree(pids):
        try:
            with open("/proc/%d/statm" % p) as f:
                total += int(f.read().split()[1]) * PAGE_KB
        except OSError:
            pass
    return total


def run_timed(cmd, timeout=None, env=None, stdout=None, stderr=None):
    """Run CMD to completion. Returns (wall_s, cpu_s, rc): CPU of CMD and
    every descendant it reaped (rusage of the child itself includes those).
    On TIMEOUT the process group is killed and rc is None."""
    t0 = time.monotonic()
    popen = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL,
                             stdout=stdout if stdout is not None else subprocess.DEVNULL,
                             stderr=stderr if stderr is not None else subprocess.DEVNULL,
                             start_new_session=True)
    rc = None
    deadline = None if timeout is None else t0 + timeout
    while True:
        pid, status, ru = os.wait4(popen.pid, os.WNOHANG)
        if pid:
            rc = os.waitstatus_to_exitcode(status)
            break
        if deadline is not None and time.monotonic() > deadline:
            os.killpg(popen.pid, signal.SIGKILL)
            pid, status, ru = os.wait4(popen.pid, 0)
            rc = None
            break
        # wait4 has no timeout: poll (5 ms, small against runs of seconds)
        time.sleep(0.005)
    wall = time.monotonic() - t0
    popen.returncode = rc if rc is not None else -9
    return wall, ru.ru_utime + ru.ru_stime, rc


# ---------------------------------------------------------------------------
# Statistics and formatting


def stats(xs):
    """(median, min, max) of a non-empty list of numbers."""
    xs = sorted(xs)
    return statistics.median(xs), xs[0], xs[-1]


def fmt(x, digits=None):
    """A number with a sensible number of digits for a table."""
    if x is None:
        return "-"
    if digits is None:
        ax = abs(x)
        digits = 0 if ax >= 100 else 1 if ax >= 10 else 2 if ax >= 1 else 3
    return "%.*f" % (digits, x)


def fmt_mmm(xs, digits=None, unit=""):
    """'median (min..max)' of XS."""
    m, lo, hi = stats(xs)
    return "%s%s (%s..%s)" % (fmt(m, digits), unit, fmt(lo, digits), fmt(hi, digits))


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def machine():
    """One line describing this machine."""
    model = "?"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    return "%s, %d cores, %.0f GiB, Linux %s, load %s" % (
        model, os.cpu_count(), mem_kb / 1048576, os.uname().release, loadavg())


def header(title):
    """First line of every part's output: what, when, where, how loaded."""
    return "# %s: %s UTC, %s" % (title, time.strftime("%Y-%m-%dT%H:%M", time.gmtime()), machine())


def _main(argv):
    if len(argv) < 2:
        print(__doc__)
        return 2
    cmd = argv[1]
    if cmd == "cpu":
        print("%.2f" % cpu_seconds([int(p) for p in argv[2:]]))
    elif cmd == "rss":
        print(rss_kb([int(p) for p in argv[2:]]))
    elif cmd == "stats":
        m, lo, hi = stats([float(x) for x in argv[2:]])
        print(m, lo, hi)
    elif cmd == "timed":
        rest = argv[2:]
        if rest and rest[0] == "--":
            rest = rest[1:]
        wall, cpu, rc = run_timed(rest, stdout=sys.stdout, stderr=sys.stderr)
        print("%.3f %.3f %s" % (wall, cpu, rc))
    elif cmd == "machine":
        print(machine())
    else:
        print(__doc__)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(_main(sys.argv))
