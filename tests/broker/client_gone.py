#!/usr/bin/python3
"""client_gone.py - work dies with its client (PROTOCOL.md 3.5), with real
processes: llmq-sim (slow, so requests stay queued), llmq-broker,
llmq-worker, and clients in their own processes (the Python binding, the Node binding, or
`llmq run`: the C library and its runner).

    client_gone.py CASE        run one case (see CASES)
    client_gone.py client ...  a Python client process (for the tests)

Cases:
  gone_py, gone_c, gone_node  a client queues 5,000 requests at a worker of capacity 4,
                   then is killed (kill -9). Once the broker counts it gone
                   (status counter `client_gone`), llmq-sim receives at most
                   the worker's capacity more requests, and most of the
                   5,000 never reach it.
  slow_py, slow_c, slow_node  a client whose answers take longer than the broker's
                   client timeout (one at a time, 400 ms each, 10 of them,
                   timeout 2.5 s) but which heartbeats gets every answer;
                   nothing is dropped.
  paused_py, paused_c, paused_node  a client stopped (SIGSTOP) past the timeout is taken
                   for gone; continued, it resends what was dropped (the
                   heartbeat's `pending`) and gets every answer.
  batch_kept       a killed client's durable batch still completes.
  hb_first         a heartbeat sent with nothing pending covers the requests
                   that follow it (the broker remembers it).
  noread           a client sends 3,000 requests whose answers are about
                   40 KB and never reads one: broker RSS stays under 60 MB
                   (without a bound: about 115 MB of queued replies), and
                   the drop is counted and logged (`client_slow`).
Bounds are in requests and bytes, never in time.
"""
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
import llmqtest  # noqa: E402
from llmqtest import Cluster, Proc, check, skip, wait_until  # noqa: E402

CAPACITY = 4            # the worker's in-flight requests
QUEUED = 5000           # what the gone client leaves behind
CLIENT_TIMEOUT_MS = 1500
SELF = os.path.abspath(__file__)


def sim_received(sim):
    """Chat requests llmq-sim received: answered (any status) + in flight."""
    st = sim.stats()
    answered = sum(st.get("requests", {}).get("/v1/chat/completions", {}).values())
    return answered + st.get("in_flight", 0)


def counter(cluster, name):
    st = cluster.status()
    return None if st is None else st.get("counters", {}).get(name)


def need(*bins):
    for b in bins:
        if not llmqtest.have(b):
            skip("%s not built" % b)


def need_pyzmq():
    try:
        import zmq  # noqa: F401
        import msgpack  # noqa: F401
    except ImportError:
        skip("pyzmq or msgpack missing")


# ---------------------------------------------------------------- clients

def client_main(argv):
    """client ENDPOINT N [BATCH_ITEMS]: (submit a realtime batch of
    BATCH_ITEMS,) send N chats at once (the binding heartbeats while it
    waits), print `ready`, wait for every answer, print `done`."""
    endpoint, n = argv[0], int(argv[1])
    llmq_client = llmqtest.client_module()
    with llmq_client.Client(endpoint, timeout=None, broker_timeout=600) as c:
        batch = ""
        if len(argv) > 2:
            items = [{"messages": [{"role": "user", "content": "b%d" % i}], "max_tokens": 4}
                     for i in range(int(argv[2]))]
            batch = c.batches.submit(llmqtest.MODEL, items, mode="realtime")
        print("ready client pid=%d batch=%s" % (os.getpid(), batch), flush=True)
        out = c.infer_many("chat", llmqtest.MODEL,
                           [{"messages": [{"role": "user", "content": "q%d" % i}],
                             "max_tokens": 4} for i in range(n)],
                           concurrency=n, return_exceptions=True)
        bad = [r for r in out if isinstance(r, Exception)]
        print("done ok=%d failed=%d" % (len(out) - len(bad), len(bad)), flush=True)
        return 0 if not bad else 1


def py_client(endpoint, n, *extra):
    return Proc(["/usr/bin/python3", SELF, "client", endpoint, str(n), *extra],
                name="py-client")


#  The same client in Node (bindings/node): n chats at once, then `done`.
NODE_CLIENT = r"""
const L = require(process.argv[1]);
const [endpoint, n] = [process.argv[2], Number(process.argv[3])];
const c = new L.Client(endpoint, { timeout: null, brokerTimeout: 600000 });
console.log("ready client pid=" + process.pid);
const calls = [];
for (let i = 0; i < n; i++)
  calls.push(c.chat("%s", "q" + i, { max_tokens: 4 }).then(() => true, () => false));
Promise.all(calls).then((ok) => {
  const good = ok.filter((x) => x).length;
  console.log("done ok=" + good + " failed=" + (n - good));
  c.close();
});
""" % llmqtest.MODEL


def node_client(endpoint, n):
    node = shutil.which("node")
    index = os.path.join(llmqtest.SOURCE_DIR, "bindings", "node", "index.cjs")
    if not node or not os.path.isdir(os.path.join(llmqtest.SOURCE_DIR, "bindings", "node",
                                                   "node_modules", "zeromq")):
        skip("node or the node binding's zeromq package missing")
    return Proc([node, "-e", NODE_CLIENT, index, endpoint, str(n)], name="node-client")


def said(client):
    """What a client process printed so far."""
    return " ".join(x.decode(errors="replace") if isinstance(x, bytes) else x
                    for x in client.stdout)


def c_client(cluster, n, concurrency):
    """`llmq run` over n prompts (the C library and the runner's step)."""
    tmp = llmqtest.temp_dir("llmq-dies")
    path = os.path.join(tmp, "in.jsonl")
    with open(path, "w") as f:
        for i in range(n):
            f.write('{"custom_id": "c%d", "prompt": "q%d"}\n' % (i, i))
    argv = [llmqtest.bin_path("llmq"), "run", path, "-o", os.path.join(tmp, "out.jsonl"),
            "--broker", cluster.broker.frontend, "--model", llmqtest.MODEL,
            "--concurrency", str(concurrency), "--quiet"]
    return Proc(argv, name="llmq-run", ready=False), os.path.join(tmp, "out.jsonl")


def cluster(latency_ms, *broker_flags):
    return Cluster(workers=1, capacity=CAPACITY, latency_ms=str(latency_ms), ports="any",
                   broker_flags=("--client-timeout", str(CLIENT_TIMEOUT_MS)) + broker_flags)


# ---------------------------------------------------------------- cases

def gone(kind):
    need("llmq-broker", "llmq-worker", "llmq-sim", "llmq")
    need_pyzmq()
    cl = cluster(200)
    try:
        if kind in ("py", "node"):
            start = py_client if kind == "py" else node_client
            client = start(cl.broker.frontend, QUEUED)
            queued = QUEUED - 2 * CAPACITY
        else:
            client, _ = c_client(cl, QUEUED, 3000)
            queued = 3000 - 2 * CAPACITY
        wait_until("the client's requests queued at the broker",
                   lambda: (counter(cl, "queued") or 0) >= queued, timeout=60)
        wait_until("llmq-sim working", lambda: sim_received(cl.sim) > 0, timeout=60)
        at_kill = sim_received(cl.sim)
        client.kill9()

        # Until the broker counts the client gone, or llmq-sim has received
        # far more than the work of the timeout (1.5 s at 20 a second).
        far = at_kill + 400
        wait_until("the broker counts the killed client gone (or llmq-sim gets %d)" % far,
                   lambda: (counter(cl, "client_gone") or 0) > 0
                   or sim_received(cl.sim) >= far, timeout=60)
        at_gone = sim_received(cl.sim)
        check((counter(cl, "client_gone") or 0) > 0,
              "llmq-sim received %d requests after the client was killed, and the "
              "broker still sends its work (client_gone %s)"
              % (at_gone - at_kill, counter(cl, "client_gone")))
        wait_until("nothing left at the broker or llmq-sim",
                   lambda: counter(cl, "queued") == 0 and counter(cl, "in_flight") == 0
                   and cl.sim.stats().get("in_flight", 1) == 0, timeout=60)
        # One more request proves the pipeline still works (and that any
        # late dispatch of the gone client's work would have been seen).
        c = llmqtest.client_module().Client(cl.broker.frontend, timeout=60)
        try:
            check(c.chat(llmqtest.MODEL, "still alive", max_tokens=4).text, "answer after gone")
        finally:
            c.close()
        end = sim_received(cl.sim) - 1
        dropped = counter(cl, "client_gone")
        print("sim received %d at the kill, %d when counted gone, %d at the end; "
              "broker dropped %d requests" % (at_kill, at_gone, end, dropped))
        check(end - at_gone <= CAPACITY,
              "llmq-sim received %d requests after the client was gone (bound %d)"
              % (end - at_gone, CAPACITY))
        check(dropped >= queued - end, "dropped %d, queued %d" % (dropped, queued))
        check("client_gone" in cl.broker.stderr(), "client_gone logged")
        check(cl.broker.stderr().count("client_gone") == 1, "client_gone logged once")
    finally:
        cl.close()


def slow(kind):
    need("llmq-broker", "llmq-worker", "llmq-sim", "llmq")
    need_pyzmq()
    # Capacity 1 at 400 ms: 10 answers take 4 s, more than the client
    # timeout (2.5 heartbeats), and answers keep arriving (the old library
    # pinged only when it heard nothing, so the broker heard nothing from it).
    n = 10
    cl = Cluster(workers=1, capacity=1, latency_ms="400", ports="any",
                 broker_flags=("--client-timeout", "2500"))
    try:
        if kind in ("py", "node"):
            client = (py_client if kind == "py" else node_client)(cl.broker.frontend, n)
            out = wait_until("the client's last line", lambda: "done" in said(client)
                             and said(client), timeout=60)
            check("done ok=%d failed=0" % n in out, "every answer: %r" % out)
            check(client.wait(timeout=60) == 0, "the client exits 0")
        else:
            client, out_path = c_client(cl, n, n)
            rc = client.wait(timeout=60)
            check(rc == 0, "llmq run exit %s\n%s" % (rc, client.tail()))
            with open(out_path) as f:
                lines = [ln for ln in f if ln.strip()]
            check(len(lines) == n and all(llmqtest.out_line_ok(json.loads(ln)) for ln in lines), "every line answered: %r" % lines[:2])
        check(counter(cl, "client_gone") == 0, "nothing dropped: client_gone %s"
              % counter(cl, "client_gone"))
        check("client_gone" not in cl.broker.stderr(), "no client_gone log line")
    finally:
        cl.close()


def paused(kind):
    """A client stopped (SIGSTOP) past the client timeout is taken for gone;
    continued, it learns from its next heartbeat's `pending` that its
    requests were dropped, resends them, and gets every answer."""
    need("llmq-broker", "llmq-worker", "llmq-sim", "llmq")
    need_pyzmq()
    import signal
    n = 400        # 20 answers a second: the stop comes long before the end
    cl = cluster(200)
    try:
        if kind in ("py", "node"):
            client = (py_client if kind == "py" else node_client)(cl.broker.frontend, n)
        else:
            client, out_path = c_client(cl, n, n)
        wait_until("the client's requests at the broker",
                   lambda: (counter(cl, "queued") or 0) + (counter(cl, "in_flight") or 0)
                   >= n - CAPACITY, timeout=60)
        client.send_signal(signal.SIGSTOP)
        wait_until("the broker takes the stopped client for gone",
                   lambda: (counter(cl, "client_gone") or 0) > 0, timeout=30)
        dropped = counter(cl, "client_gone")
        client.send_signal(signal.SIGCONT)
        if kind in ("py", "node"):
            out = wait_until("the continued client's answers", lambda: "done" in said(client)
                             and said(client), timeout=60)
            check("done ok=%d failed=0" % n in out, "every answer: %r" % out)
            check(client.wait(timeout=60) == 0, "the client exits 0")
        else:
            rc = client.wait(timeout=60)
            check(rc == 0, "llmq run exit %s (None: still waiting)\n%s" % (rc, client.tail()))
            with open(out_path) as f:
                lines = [ln for ln in f if ln.strip()]
            check(len(lines) == n and all(llmqtest.out_line_ok(json.loads(ln)) for ln in lines), "every line answered")
        print("%d requests dropped while stopped, all %d answered after SIGCONT" % (dropped, n))
    finally:
        cl.close()


def batch_kept():
    """A killed client's durable batch is not its to lose: its requests are
    dropped, its batch (whose items wait behind them: batches take only the
    credit no request wants) completes."""
    need("llmq-broker", "llmq-worker", "llmq-sim")
    need_pyzmq()
    items = 40
    tmp = llmqtest.temp_dir("llmq-dies-batch")
    cl = Cluster(workers=1, capacity=CAPACITY, latency_ms="200", ports="any", tmp=tmp,
                 broker_flags=("--client-timeout", str(CLIENT_TIMEOUT_MS), "--batch-db",
                               os.path.join(tmp, "batches.db")))
    try:
        client = py_client(cl.broker.frontend, 2000, str(items))
        batch = client.ready["batch"]
        wait_until("the client's requests queued at the broker",
                   lambda: (counter(cl, "queued") or 0) >= 2000 - 2 * CAPACITY, timeout=60)
        client.kill9()
        wait_until("the broker counts the killed client gone",
                   lambda: (counter(cl, "client_gone") or 0) > 0, timeout=60)
        c = llmqtest.client_module().Client(cl.broker.frontend, timeout=30)
        try:
            st = c.batches.wait(batch, timeout=60)
        finally:
            c.close()
        print("client's requests dropped: %d; its batch: %s, %d of %d done"
              % (counter(cl, "client_gone"), st.state, st.counts.done, items))
        check(st.state == "completed" and st.counts.done == items and st.counts.failed == 0,
              "batch %s: %s %r" % (batch, st.state, st.counts))
    finally:
        cl.close()


def hb_first():
    """A heartbeat counts before the requests it covers: a raw client sends
    one heartbeat ping with nothing pending, then 500 requests, then falls
    silent (its socket closed). The broker remembers the heartbeat (its
    client entry did not exist yet) and drops the work."""
    need("llmq-broker", "llmq-worker", "llmq-sim")
    need_pyzmq()
    import msgpack
    import zmq
    cl = cluster(200)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.ROUTING_ID, b"hb-first-%d" % os.getpid())
        sock.setsockopt(zmq.LINGER, 2000)
        sock.connect(cl.broker.frontend)
        sock.send(msgpack.packb({"v": 1, "t": "ping", "heartbeat": True}))
        check(sock.poll(10000), "pong")
        pong = msgpack.unpackb(sock.recv())
        check(pong.get("t") == "pong" and pong.get("pending") == 0, "pong %r" % pong)
        body = msgpack.packb({"messages": [{"role": "user", "content": "x"}], "max_tokens": 4})
        for i in range(500):
            sock.send_multipart([msgpack.packb({"v": 1, "t": "req", "id": "h%d" % i,
                                                "op": "chat", "model": llmqtest.MODEL}), body])
        sock.close()        # lingers until sent, then silence
        wait_until("the requests at the broker",
                   lambda: (counter(cl, "received") or 0) >= 500, timeout=60)
        at_sent = sim_received(cl.sim)
        wait_until("the broker counts the silent client gone (or llmq-sim gets 200 more)",
                   lambda: (counter(cl, "client_gone") or 0) > 0
                   or sim_received(cl.sim) >= at_sent + 200, timeout=60)
        print("sim received %d when the requests were in, %d when counted gone; dropped %s"
              % (at_sent, sim_received(cl.sim), counter(cl, "client_gone")))
        check((counter(cl, "client_gone") or 0) > 0,
              "the broker still sends the silent client's work")
    finally:
        ctx.term()
        cl.close()


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def noread():
    need("llmq-broker", "llmq-worker", "llmq-sim")
    need_pyzmq()
    import msgpack
    import zmq
    n, dims = 4000, 4000      # an embedding of 4,000 numbers: ~40 KB per answer
    bound_mb = 40
    cl = Cluster(workers=1, capacity=64, latency_ms="0", ports="any",
                 broker_flags=("--client-max-bytes", str(8 << 20)))
    ctx = zmq.Context()
    sock = ctx.socket(zmq.DEALER)
    try:
        sock.setsockopt(zmq.ROUTING_ID, b"noread-%d" % os.getpid())
        sock.setsockopt(zmq.RCVHWM, 1)
        sock.setsockopt(zmq.RCVBUF, 65536)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(cl.broker.frontend)
        body = msgpack.packb({"input": "x", "dimensions": dims}, use_bin_type=True)
        peak = [0]

        def answered(upto):
            peak[0] = max(peak[0], rss_kb(cl.broker.p.pid))
            st = cl.status()
            c = st["counters"] if st else {}
            return c.get("received", 0) >= upto and c.get("queued", 1) == 0 \
                and c.get("in_flight", 1) == 0
        # Half at once; the rest in bursts of 100 (6 MB of answers each, under
        # the byte bound), each answered before the next, so the broker
        # forgets the client between bursts: its unread replies still count.
        sent = 0
        for burst in [n // 2] + [100] * ((n - n // 2) // 100):
            for i in range(sent, sent + burst):
                sock.send_multipart([msgpack.packb({"v": 1, "t": "req", "id": "n%d" % i,
                                                    "op": "embedding",
                                                    "model": llmqtest.MODEL},
                                                   use_bin_type=True), body])
            sent += burst
            wait_until("every request answered or dropped", lambda: answered(sent),
                       timeout=120)
        peak[0] = max(peak[0], rss_kb(cl.broker.p.pid))
        log = cl.broker.stderr()
        print("broker RSS peak %.1f MB (bound %d MB); client_slow logged %d time(s)"
              % (peak[0] / 1024.0, bound_mb, log.count("client_slow ")
                 + log.count('"client_slow"')))
        # (Under ASan freed memory stays in its quarantine: no RSS bound.)
        check(peak[0] < bound_mb * 1024 or llmqtest.sanitized(cl.broker.p.pid),
              "broker RSS %.1f MB over %d MB" % (peak[0] / 1024.0, bound_mb))
        check("client_slow" in log, "client_slow logged")
    finally:
        sock.close()
        ctx.term()
        cl.close()


CASES = {
    "gone_py": lambda: gone("py"),
    "gone_c": lambda: gone("c"),
    "slow_py": lambda: slow("py"),
    "slow_c": lambda: slow("c"),
    "gone_node": lambda: gone("node"),
    "slow_node": lambda: slow("node"),
    "paused_node": lambda: paused("node"),
    "paused_py": lambda: paused("py"),
    "paused_c": lambda: paused("c"),
    "batch_kept": batch_kept,
    "hb_first": hb_first,
    "noread": noread,
}


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "client":
        return client_main(sys.argv[2:])
    if len(sys.argv) != 2 or sys.argv[1] not in CASES:
        print("usage: client_gone.py {%s}" % "|".join(CASES), file=sys.stderr)
        return 2
    llmqtest.main(CASES[sys.argv[1]])
    return 0


if __name__ == "__main__":
    sys.exit(main())
