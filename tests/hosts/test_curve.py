"""hosts.curve: the real llmq-broker, llmq-worker, llmq-sim and `llmq` with
CURVE keys (proto/PROTOCOL.md 1.1).

Shows: with keys, work runs and status answers; an unknown client key, a
client key used as a worker, and a peer without CURVE are refused (no
pong, no status, no work), counted in llmq_broker_auth_denied_total and
logged once per peer; a key added to the client directory is accepted
without a restart, and refused again once deleted. Every wait is a poll with a deadline."""
import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "client"))
import clusterlib as cl  # noqa: E402

LLMQ = cl.bin_path("llmq")


def keygen(directory, name):
    path = os.path.join(directory, name)
    r = subprocess.run([LLMQ, "keygen", path], capture_output=True, text=True, timeout=10)
    cl.check(r.returncode == 0, "llmq keygen %s: %s" % (name, r.stderr))
    cl.check(len(r.stdout.strip()) == 40, "keygen prints the public key")
    cl.check(oct(os.stat(path + "_secret").st_mode & 0o777) == "0o600", "secret file mode 0600")
    return path


def llmq(args, cert=None, broker_key=None, timeout=30, env=None):
    argv = [LLMQ] + args
    if cert:
        argv += ["--curve-cert", cert, "--broker-key", broker_key]
    full = {k: v for k, v in os.environ.items() if not k.startswith("LLMQ_CURVE")}
    full.update(env or {})
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=full)


def metric(url, socket, reason):
    body = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    want = 'llmq_broker_auth_denied_total{socket="%s",reason="%s"} ' % (socket, reason)
    for line in body.splitlines():
        if line.startswith(want):
            return float(line.split()[-1])
    return 0.0


class KeyedBroker(cl.Proc):
    """The broker with CURVE; its stderr (the kit's log file) is read to
    count log lines."""

    def __init__(self, tmp, cert, clients, workers):
        argv = [cl.bin_path("llmq-broker"), "--frontend", "tcp://127.0.0.1:*",
                "--backend", "tcp://127.0.0.1:*", "--metrics", "127.0.0.1:0",
                "--batch-db", "none", "--curve-cert", cert + "_secret"]
        # The allow-lists through the environment (flags work the same).
        super().__init__(argv, env={"LLMQ_CLIENT_KEYS": clients, "LLMQ_WORKER_KEYS": workers})
        self.frontend, self.backend = self.ready["frontend"], self.ready["backend"]
        self.metrics = self.ready["metrics"]

    def log_lines(self, needle):
        with open(self.log_path) as f:
            return [line for line in f if needle in line]


def keyed_worker(backend, sim_url, cert, broker_key, name):
    return cl.Proc([cl.bin_path("llmq-worker"), "--broker", backend, "--provider", "sim",
                    "--base-url", sim_url + "/v1", "--model", cl.MODEL, "--capacity", "8",
                    "--name", name, "--curve-cert", cert + "_secret", "--broker-key", broker_key],
                   env={"OPENAI_API_KEY": "sk-test-key"})


def worker_names(frontend, cert, broker_key):
    r = llmq(["status", "--broker", frontend, "--json"], cert, broker_key)
    if r.returncode != 0:
        return None
    return sorted(w.get("name", "") for w in json.loads(r.stdout).get("workers", []))


def gateway_chat(frontend, tmp, procs, cert, broker_key, want):
    """Start llmq-gateway with CURVE keys from the environment, POST one
    chat; want is the status it must answer, None for anything but 200."""
    gw = cl.Proc([cl.bin_path("llmq-gateway"), "--broker", frontend, "--port", "0",
                  "--data-dir", os.path.join(tmp, "gw-data"), "--timeout-ms", "3s"],
                 env={"LLMQ_CURVE_CERT": cert, "LLMQ_BROKER_KEY": broker_key})
    procs.append(gw)
    body = json.dumps({"model": cl.MODEL, "messages": [{"role": "user", "content": "hi"}]})
    req = urllib.request.Request(gw.ready["url"] + "/v1/chat/completions", data=body.encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        status = urllib.request.urlopen(req, timeout=30).status
    except urllib.error.HTTPError as e:
        status = e.code
    if want is None:
        cl.check(status != 200, "gateway with an unknown key: no answer (%d)" % status)
    else:
        cl.check(status == want, "gateway with keys: status %d" % status)


def main():
    run(cl.temp_dir("llmq-curve-"), [])
    # Every process stops on SIGTERM with exit 0 and a clean log.
    cl.llmqtest.finish()
    print("hosts.curve: OK")


def run(tmp, procs):
    keys = os.path.join(tmp, "keys")
    clients, workers = os.path.join(tmp, "clients"), os.path.join(tmp, "workers")
    for d in (keys, clients, workers):
        os.mkdir(d)
    broker_cert = keygen(keys, "broker")
    alice, stranger, wkey = (keygen(keys, n) for n in ("alice", "stranger", "worker-a"))
    shutil.copy(alice, clients)
    shutil.copy(wkey, workers)

    sim = cl.Sim("--latency-ms", "5")
    procs.append(sim)
    broker = KeyedBroker(tmp, broker_cert, clients, workers)
    procs.append(broker)
    bkey = broker_cert  # the public cert file works as --broker-key
    procs.append(keyed_worker(broker.backend, sim.url, wkey, bkey, "good"))
    cl.wait_until("the keyed worker in status",
                  lambda: worker_names(broker.frontend, alice + "_secret", bkey) == ["good"])

    # The worker reads its keys from the environment too.
    wenv = keygen(keys, "worker-env")
    shutil.copy(wenv, workers)
    procs.append(cl.Proc([cl.bin_path("llmq-worker"), "--broker", broker.backend,
                          "--provider", "sim", "--base-url", sim.url + "/v1",
                          "--model", cl.MODEL, "--name", "good-env"],
                         env={"LLMQ_CURVE_CERT": wenv + "_secret", "LLMQ_BROKER_KEY": bkey}))
    cl.wait_until("the env-keyed worker in status",
                  lambda: worker_names(broker.frontend, alice + "_secret", bkey) ==
                  ["good", "good-env"])

    # 1. Keys: a run through the broker works.
    src, out = os.path.join(tmp, "in.jsonl"), os.path.join(tmp, "out.jsonl")
    with open(src, "w") as f:
        for i in range(20):
            f.write(json.dumps({"custom_id": "q%d" % i, "prompt": "hello %d" % i}) + "\n")
    r = llmq(["run", src, "-o", out, "--broker", broker.frontend, "--quiet"],
             alice + "_secret", bkey, timeout=60)
    cl.check(r.returncode == 0, "keyed run: rc %d %s" % (r.returncode, r.stderr))
    with open(out) as f:
        lines = [json.loads(line) for line in f]
    cl.check(len(lines) == 20 and all(not x.get("error") for x in lines), "20 answers")

    # 1b. llmq-gateway with keys (env, as the others): an HTTP chat through
    # CURVE works; with the stranger's key it answers no chat.
    gateway_chat(broker.frontend, tmp, procs, alice + "_secret", bkey, 200)
    gateway_chat(broker.frontend, tmp, procs, stranger + "_secret", bkey, None)

    # 2. An unknown client key: no pong, no status, a clear timeout.
    for args in (["ping", "--timeout", "1500"], ["status", "--timeout", "1500"]):
        r = llmq(args + ["--broker", broker.frontend], stranger + "_secret", bkey)
        cl.check(r.returncode == 3, "stranger %s refused (rc %d)" % (args[0], r.returncode))
        cl.check("workers" not in r.stdout and "good" not in r.stdout, "stranger sees nothing")
        cl.check("allows this client's key" in r.stderr, "clear hint: %r" % r.stderr)
    cl.wait_until("unknown_key counted",
                  lambda: metric(broker.metrics, "frontend", "unknown_key") >= 1)
    cl.check(len(broker.log_lines("peer=" + open(stranger).read().split('public-key = "')[1][:40]))
             == 1, "one auth_denied log line for the stranger's key")

    # 3. A peer without CURVE: the same silence, counted as a handshake.
    r = llmq(["ping", "--timeout", "1500", "--broker", broker.frontend])
    cl.check(r.returncode == 3, "no-CURVE ping refused")
    cl.wait_until("handshake refusal counted",
                  lambda: metric(broker.metrics, "frontend", "handshake") >= 1)

    # 3b. A wrong broker key (the client encrypts for someone else): refused.
    before = metric(broker.metrics, "frontend", "handshake")
    r = llmq(["ping", "--timeout", "1500", "--broker", broker.frontend], alice + "_secret",
             stranger)
    cl.check(r.returncode == 3, "wrong broker key refused")
    cl.wait_until("wrong broker key counted",
                  lambda: metric(broker.metrics, "frontend", "handshake") > before)

    # 4. A client key used as a worker: refused, never in status, no work.
    procs.append(keyed_worker(broker.backend, sim.url, alice, bkey, "intruder"))
    cl.wait_until("backend refusal counted",
                  lambda: metric(broker.metrics, "backend", "unknown_key") >= 1)
    r = llmq(["run", src, "-o", out + "2", "--broker", broker.frontend, "--quiet"],
             alice + "_secret", bkey, timeout=60)
    cl.check(r.returncode == 0, "run with the intruder around")
    cl.check(worker_names(broker.frontend, alice + "_secret", bkey) == ["good", "good-env"],
             "the intruder never registered")

    # 4b. A worker without CURVE: refused at the handshake, never registered.
    procs.append(cl.Proc([cl.bin_path("llmq-worker"), "--broker", broker.backend,
                          "--provider", "sim", "--base-url", sim.url + "/v1",
                          "--model", cl.MODEL, "--name", "plain"]))
    cl.wait_until("backend handshake refusal counted",
                  lambda: metric(broker.metrics, "backend", "handshake") >= 1)
    cl.check("plain" not in worker_names(broker.frontend, alice + "_secret", bkey),
             "a worker without CURVE never registers")

    # 5. Keys are re-read: the stranger's cert added, then allowed.
    shutil.copy(stranger, clients)
    cl.wait_until("stranger allowed after the copy",
                  lambda: llmq(["ping", "--timeout", "1000", "--broker", broker.frontend],
                               stranger + "_secret", bkey).returncode == 0, timeout=20)
    # ... and revoked by deleting it (new connections are refused again).
    os.unlink(os.path.join(clients, "stranger"))
    cl.wait_until("stranger refused after the delete",
                  lambda: llmq(["ping", "--timeout", "1000", "--broker", broker.frontend],
                               stranger + "_secret", bkey).returncode == 3, timeout=20)
    # Bad key material is a usage error with a reason, never a hang.
    r = llmq(["ping", "--broker", broker.frontend],
             env={"LLMQ_CURVE_CERT": alice, "LLMQ_BROKER_KEY": bkey})
    cl.check(r.returncode == 0, "env keys; NAME finds NAME_secret next to it")
    r = llmq(["ping", "--broker", broker.frontend], os.path.join(tmp, "nope"), bkey)
    cl.check(r.returncode == 2 and "certificate" in r.stderr, "missing cert: rc 2")
    r = llmq(["ping", "--broker", broker.frontend], alice + "_secret", "not-a-key")
    cl.check(r.returncode == 2 and "broker key" in r.stderr, "bad broker key: rc 2")


if __name__ == "__main__":
    main()
