"""hosts.netns: llmq across hosts, each host a Linux network namespace.

Topology: a hub namespace holds a bridge; every host namespace has one veth
(eth0) to it, with an address in 198.18.0.0/24 (RFC 2544 benchmarking
space, never routed). Hosts: broker, llmq-sim, worker hosts w1 w2 (w3 joins
mid-run), a client, an intruder. CURVE is on.

Shows (counts, never timings):
  spread    every worker host holds work during a run;
  link down w2's link goes down mid-run: the broker declares it dead,
            requeues its requests, and the run completes, all answered;
  join      with w1 alone the broker never has more than w1's capacity in
            flight; once w3 joins mid-run it has more, and w3 holds work;
  refusals  a client with an unknown key gets no pong; a worker with a
            client's key never appears in status; a broker without keys
            warns when it binds a host address;
  latency   throughput with 20 ms added each way beside the figure without
            (printed, not asserted): tc netem on every host where the kernel
            has it, else a delaying TCP relay (delay_proxy.py) in front of
            the broker's two ports and the sim.

Needs root and iproute2; exits 77 (skip) with the reason otherwise. Every
namespace and process is removed on any exit. Waits are polls with
deadlines."""
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "client"))
import clusterlib as cl  # noqa: E402

TAG = "lq%06x" % os.getpid()  # interface names stay within 15 bytes
HOSTS = {"b": 1, "s": 2, "w1": 11, "w2": 12, "w3": 13, "c": 20, "x": 30}
CAP = 4          # requests in flight per worker
SIM_MS = 40      # llmq-sim latency per answer


def ns(host):
    return TAG + host


def addr(host):
    return "198.18.0.%d" % HOSTS[host]


def sh(*argv, check=True):
    r = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and r.returncode != 0:
        cl.fail("%s: %s" % (" ".join(argv), r.stderr.strip()))
    return r


def skip(reason):
    print("hosts.netns: SKIP: " + reason, file=sys.stderr)
    sys.exit(77)


def preflight():
    if os.geteuid() != 0:
        skip("needs root (ip netns)")
    if not shutil.which("ip"):
        skip("no `ip` (apt-get install iproute2)")
    probe = TAG + "probe"
    r = sh("ip", "netns", "add", probe, check=False)
    if r.returncode != 0:
        skip("network namespaces unavailable: " + r.stderr.strip())
    r = sh("ip", "-n", probe, "link", "add", "br0", "type", "bridge", check=False)
    sh("ip", "netns", "del", probe, check=False)
    if r.returncode != 0:
        skip("no bridge support: " + r.stderr.strip())


def reap_stale():
    """Namespaces left by a run that was killed (SIGKILL skips cleanup):
    lq<pid in hex><host> whose pid is gone."""
    r = sh("ip", "netns", "list", check=False)
    for line in r.stdout.splitlines():
        name = line.split()[0] if line.split() else ""
        if re.match(r"^lq[0-9a-f]{6}[a-z]", name) and \
                not os.path.exists("/proc/%d" % int(name[2:8], 16)):
            sh("ip", "netns", "del", name, check=False)


class Net:
    """The namespaces and links; teardown() removes all of them."""

    def __init__(self):
        self.made = []
        self.hub = ns("hub")
        self._add_ns(self.hub)
        sh("ip", "-n", self.hub, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.hub, "link", "set", "br0", "up")

    def _add_ns(self, name):
        sh("ip", "netns", "add", name)
        self.made.append(name)
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def add_host(self, host):
        name, port = ns(host), "%sp%s" % (TAG, host)
        self._add_ns(name)
        sh("ip", "link", "add", port, "netns", self.hub, "type", "veth",
           "peer", "name", "eth0", "netns", name)
        sh("ip", "-n", self.hub, "link", "set", port, "master", "br0")
        sh("ip", "-n", self.hub, "link", "set", port, "up")
        sh("ip", "-n", name, "addr", "add", addr(host) + "/24", "dev", "eth0")
        sh("ip", "-n", name, "link", "set", "eth0", "up")

    def link(self, host, state):
        sh("ip", "-n", self.hub, "link", "set", "%sp%s" % (TAG, host), state)
        sh("ip", "-n", ns(host), "link", "set", "eth0", state)

    def netem(self, hosts, delay_ms):
        """Add delay on every host's eth0; False where netem is missing."""
        for h in hosts:
            r = sh("ip", "netns", "exec", ns(h), "tc", "qdisc", "replace", "dev",
                   "eth0", "root", "netem", "delay", "%dms" % delay_ms, check=False)
            if r.returncode != 0:
                print("netem unavailable: " + r.stderr.strip(), file=sys.stderr)
                return False
        return True

    def teardown(self):
        for name in reversed(self.made):
            sh("ip", "netns", "del", name, check=False)


def in_ns(host, argv):
    return ["ip", "netns", "exec", ns(host)] + argv


class Site:
    """Keys, processes and the client commands of one run."""

    def __init__(self, tmp, net):
        self.tmp, self.net, self.procs, self.workers = tmp, net, [], {}
        self.keys = os.path.join(tmp, "keys")
        for d in ("keys", "clients", "workers"):
            os.mkdir(os.path.join(tmp, d))
        for name in ("broker", "client", "stranger", "w1", "w2", "w3"):
            r = sh(cl.bin_path("llmq"), "keygen", self.key(name))
        for name in ("w1", "w2", "w3"):
            shutil.copy(self.key(name), os.path.join(tmp, "workers"))
        shutil.copy(self.key("client"), os.path.join(tmp, "clients"))
        del r

    def key(self, name):
        return os.path.join(self.keys, name)

    def start(self, host, argv, env=None):
        p = cl.Proc(in_ns(host, argv), env=env)
        self.procs.append(p)
        return p

    def start_sim(self):
        p = self.start("s", [cl.bin_path("llmq-sim"), "--host", addr("s"), "--port", "0",
                             "--quiet", "--latency-ms", str(SIM_MS), "--exit-with-parent"])
        self.sim_url = p.ready["url"]

    def start_broker(self):
        ep = "tcp://%s:*" % addr("b")
        p = self.start("b", [cl.bin_path("llmq-broker"), "--frontend", ep, "--backend", ep,
                             "--batch-db", "none", "--heartbeat-ms", "300",
                             "--dead-ms", "1500", "--metrics", addr("b") + ":0",
                             "--curve-cert", self.key("broker_secret"),
                             "--client-keys", os.path.join(self.tmp, "clients"),
                             "--worker-keys", os.path.join(self.tmp, "workers")])
        self.frontend, self.backend = p.ready["frontend"], p.ready["backend"]
        self.metrics = p.ready["metrics"]

    def start_worker(self, host, key, name=None, backend=None, sim_url=None):
        return self.start(host, [
            cl.bin_path("llmq-worker"), "--broker", backend or self.backend,
            "--provider", "sim", "--base-url", (sim_url or self.sim_url) + "/v1",
            "--model", cl.MODEL, "--capacity", str(CAP), "--name", name or host,
            "--heartbeat-ms", "300", "--metrics", "127.0.0.1:0",
            "--curve-cert", self.key(key + "_secret"), "--broker-key", self.key("broker")],
            env={"OPENAI_API_KEY": "sk-test"})

    def start_proxy(self, host, target, delay_ms):
        """A delay_proxy.py on host's address in front of target (host:port)."""
        p = self.start(host, [sys.executable, os.path.join(os.path.dirname(__file__),
                                                           "delay_proxy.py"),
                              addr(host), target, str(delay_ms)])
        return "%s:%s" % (addr(host), p.ready["port"])

    def served(self, host, worker):
        """llmq_worker_requests_total{outcome="ok"} of a worker, scraped in
        its own namespace (its metrics listen on that host's loopback)."""
        r = subprocess.run(in_ns(host, ["curl", "-s", worker.ready["metrics"] + "/metrics"]),
                           capture_output=True, text=True, timeout=20)
        return sum(float(line.split()[-1]) for line in r.stdout.splitlines()
                   if line.startswith("llmq_worker_requests_total{")
                   and 'outcome="ok"' in line)

    def llmq(self, args, key="client", timeout=60):
        argv = in_ns("c", [cl.bin_path("llmq")] + args +
                     ["--broker", self.frontend, "--curve-cert", self.key(key + "_secret"),
                      "--broker-key", self.key("broker")])
        return subprocess.run(argv, capture_output=True, text=True, timeout=timeout)

    def status(self):
        r = self.llmq(["status", "--json"], timeout=20)
        return json.loads(r.stdout) if r.returncode == 0 else None

    def kill_all(self):
        for p in reversed(self.procs):
            p.kill()


class Run:
    """`llmq run` of n prompts in the client namespace, in the background,
    with the broker's status sampled until it ends."""

    def __init__(self, site, n, tag, frontend=None):
        self.site, self.samples, self.n = site, [], n
        self.src = os.path.join(site.tmp, tag + ".jsonl")
        self.out = os.path.join(site.tmp, tag + ".out.jsonl")
        with open(self.src, "w") as f:
            for i in range(n):
                f.write(json.dumps({"custom_id": "%s-%d" % (tag, i),
                                    "prompt": "%s %d" % (tag, i)}) + "\n")
        self.started = time.monotonic()
        self.proc = subprocess.Popen(in_ns("c", [
            cl.bin_path("llmq"), "run", self.src, "-o", self.out, "--quiet",
            "--concurrency", "64", "--broker", frontend or site.frontend,
            "--curve-cert", site.key("client_secret"), "--broker-key", site.key("broker")]),
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            preexec_fn=cl._die_with_parent)
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()

    def _sample(self):
        while self.proc.poll() is None:
            st = self.site.status()
            if st:
                self.samples.append((time.monotonic(), st))

    def finish(self, timeout=120):
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            cl.fail("run %s did not finish" % self.src)
        self.elapsed = time.monotonic() - self.started
        self.thread.join(30)
        err = self.proc.stderr.read()
        cl.check(self.proc.returncode == 0, "run rc %d: %s" % (self.proc.returncode, err))
        with open(self.out) as f:
            lines = [json.loads(line) for line in f]
        bad = [x for x in lines if x.get("error")]
        cl.check(len(lines) == self.n and not bad,
                 "%d of %d answered, errors: %s" % (len(lines), self.n, bad[:2]))
        return self.n / self.elapsed

    def busy(self, name):
        return any(w["name"] == name and w["in_flight"] > 0
                   for _, st in self.samples for w in st.get("workers", []))


def in_flight(st):
    return sum(w["in_flight"] for w in st.get("workers", []))


def names(st):
    return sorted(w["name"] for w in (st or {}).get("workers", []))


def phase_spread(site):
    run = Run(site, 300, "spread")
    rate = run.finish()
    served = {h: site.served(h, site.workers[h]) for h in ("w1", "w2")}
    for host in ("w1", "w2"):
        cl.check(run.busy(host), "worker host %s held work" % host)
        cl.check(served[host] > 0, "worker host %s answered requests" % host)
    cl.check(sum(served.values()) == 300, "every request answered once: %s" % served)
    print("spread: 300 requests, w1 answered %d, w2 %d, %.0f req/s" %
          (served["w1"], served["w2"], rate))
    return rate


def phase_link_down(site):
    before = site.status()["counters"]["requeued"]
    run = Run(site, 1000, "linkdown")
    cl.wait_until("w2 holding work", lambda: run.busy("w2"), timeout=60)
    site.net.link("w2", "down")
    cl.wait_until("w2 declared dead", lambda: "w2" not in names(site.status()), timeout=30)
    run.finish()
    requeued = site.status()["counters"]["requeued"] - before
    cl.check(requeued >= 1, "w2's in-flight requests were requeued (%d)" % requeued)
    print("link down: w2 dead, %d requeued, 1000/1000 answered" % requeued)


def phase_join(site):
    run = Run(site, 900, "join")
    cl.wait_until("w1 alone busy", lambda: len(run.samples) >= 5 and run.busy("w1"),
                  timeout=60)
    alone = list(run.samples)
    site.net.add_host("w3")
    site.workers["w3"] = site.start_worker("w3", "w3")
    cl.wait_until("w3 in status", lambda: run.busy("w3") or run.proc.poll() is not None,
                  timeout=60)
    run.finish()
    joined = [st for _, st in run.samples if "w3" in names(st)]
    peak_alone = max(in_flight(st) for _, st in alone)
    peak_joined = max((in_flight(st) for st in joined), default=0)
    cl.check(peak_alone <= CAP, "w1 alone: at most %d in flight (%d)" % (CAP, peak_alone))
    cl.check(run.busy("w3") and peak_joined > CAP,
             "with w3: more than %d in flight (%d), w3 busy" % (CAP, peak_joined))
    print("join: in flight at most %d with w1 alone, up to %d with w3" %
          (peak_alone, peak_joined))
    print("join: throughput %s (answered per second before / after w3)" %
          _rates(run.samples))


def _rates(samples):
    """Answered-per-second before and after w3 appears, from status counters."""
    def ok(st):
        return st["counters"]["answered_ok"]
    split = next((i for i, (_, st) in enumerate(samples) if "w3" in names(st)), None)
    if split is None or split < 2 or len(samples) - split < 2:
        return "n/a"
    (t0, a), (t1, b) = samples[0], samples[split - 1]
    (t2, c), (t3, d) = samples[split], samples[-1]
    return "%.0f / %.0f" % ((ok(b) - ok(a)) / max(t1 - t0, 1e-3),
                           (ok(d) - ok(c)) / max(t3 - t2, 1e-3))


def phase_refusals(site):
    r = site.llmq(["ping", "--timeout", "1500"], key="stranger")
    cl.check(r.returncode == 3 and "pong" not in r.stdout, "unknown client key refused")
    site.net.add_host("x")
    site.start_worker("x", "client")
    cl.wait_until("the intruder refused at the backend", lambda: _denied(site, "backend"),
                  timeout=30)
    cl.check("x" not in names(site.status()), "a client key never registers as a worker")
    print("refusals: unknown client key and client-key worker refused")


def phase_insecure(site):
    """A broker without keys on a host address warns, once, for that socket."""
    p = subprocess.Popen(in_ns("b", [cl.bin_path("llmq-broker"), "--batch-db", "none",
                                     "--frontend", "tcp://%s:*" % addr("b"),
                                     "--backend", "tcp://127.0.0.1:*"]),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         preexec_fn=cl._die_with_parent)
    lines = []
    try:
        deadline = time.monotonic() + 20
        while not any(" start " in x for x in lines) and time.monotonic() < deadline:
            r, _, _ = select.select([p.stderr], [], [], 1.0)
            if r:
                lines.append(p.stderr.readline())
    finally:
        p.kill()
        p.wait()
    warned = [x for x in lines if "insecure_bind" in x]
    cl.check(len(warned) == 1 and addr("b") in warned[0],
             "one insecure_bind warning, for the host address: %s" % lines)
    print("insecure: " + warned[0].strip())


def _denied(site, socket):
    r = subprocess.run(in_ns("b", ["curl", "-s", site.metrics + "/metrics"]),
                       capture_output=True, text=True, timeout=20)
    want = 'llmq_broker_auth_denied_total{socket="%s",reason="unknown_key"}' % socket
    return any(line.startswith(want) and float(line.split()[-1]) >= 1
               for line in r.stdout.splitlines())


def phase_latency(site):
    """20 ms each way on every link: netem, else delaying relays."""
    plain = Run(site, 300, "plain").finish()
    hosts = ["b", "s", "w1", "w3", "c"]
    if site.net.netem(hosts, 20):
        how, slow = "tc netem on every host", Run(site, 300, "netem").finish()
    else:
        how, slow = "delay_proxy.py relays (no netem in this kernel)", _relayed(site)
    print("latency: throughput %.0f req/s without, %.0f req/s with 20 ms each way "
          "(%s; 2 workers x %d in flight, sim %d ms)" % (plain, slow, how, CAP, SIM_MS))


def _relayed(site):
    """Workers and client through relays that delay 20 ms each way."""
    fe = site.start_proxy("b", site.frontend[len("tcp://"):], 20)
    be = site.start_proxy("b", site.backend[len("tcp://"):], 20)
    sim = site.start_proxy("s", site.sim_url[len("http://"):], 20)
    for host in ("w1", "w3"):
        site.workers[host].kill(signal.SIGTERM)
        site.workers[host] = site.start_worker(host, host, name=host + "-slow",
                                               backend="tcp://" + be,
                                               sim_url="http://" + sim)
    cl.wait_until("the relayed workers joined",
                  lambda: names(site.status()) == ["w1-slow", "w3-slow"], timeout=30)
    return Run(site, 300, "relayed", frontend="tcp://" + fe).finish()


def main():
    preflight()
    reap_stale()
    # ctest's timeout and ^C: run the finally blocks below.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    net, site, tmp = None, None, tempfile.mkdtemp(prefix="llmq-netns-%d-" % os.getpid())
    try:
        net = Net()
        for host in ("b", "s", "w1", "w2", "c"):
            net.add_host(host)
        site = Site(tmp, net)
        site.start_sim()
        site.start_broker()
        site.workers = {h: site.start_worker(h, h) for h in ("w1", "w2")}
        cl.wait_until("w1 and w2 joined", lambda: names(site.status()) == ["w1", "w2"])
        phase_spread(site)
        phase_link_down(site)
        phase_join(site)
        phase_refusals(site)
        phase_insecure(site)
        phase_latency(site)
    finally:
        if site:
            site.kill_all()
        if net:
            net.teardown()
        shutil.rmtree(tmp, ignore_errors=True)
    print("hosts.netns: OK")


if __name__ == "__main__":
    main()
