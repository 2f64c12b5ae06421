"""The cluster the binding package tests run against: llmq-sim, a real
llmq-broker and two llmq-workers (serving any model, one HTTP attempt, no
circuit breaker) on free ports, plus a small HTTP control server through
which a test asks for a broker kill -9 and restart on the same ports
(POST /restart-broker answers once the new broker is ready)."""
import http.server
import queue
import os
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import SOURCE_DIR, Cluster, temp_dir  # noqa: F401

BROKER_FLAGS = ("--no-worker-wait-ms", "5000", "--max-queue", "96")


class BindingsCluster(Cluster):
    """The kit's cluster with workers for every model (`*`), failing fast
    (one HTTP attempt, no circuit breaker), and the control server."""

    def __init__(self, workers=2, capacity=32):
        super().__init__(workers, capacity, broker_flags=BROKER_FLAGS, model=None,
                         worker_flags=("--max-attempts", "1", "--breaker-failures", "1000000"))
        self.endpoint = self.broker.frontend
        self.restarts = 0
        self._jobs = queue.Queue()
        self._http = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.control = "http://127.0.0.1:%d" % self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, daemon=True).start()

    def serve(self, seconds):
        """Run the restarts the control server asked for, on this (the main)
        thread: children die with the thread that started them
        (PR_SET_PDEATHSIG), so never on a request thread."""
        try:
            done = self._jobs.get(timeout=seconds)
        except queue.Empty:
            return
        try:
            self.restart_broker()
        finally:
            done.set()

    def restart_broker(self):
        super().restart_broker()
        self.restarts += 1

    def _handler(self):
        cluster = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):
                if self.path == "/restart-broker":
                    done = threading.Event()
                    cluster._jobs.put(done)
                    done.wait(60)
                    body = b"ok\n"
                    self.send_response(200)
                else:
                    body = b"unknown\n"
                    self.send_response(404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass
        return Handler

    def env(self):
        return {"LLMQ_TEST_ENDPOINT": self.endpoint, "LLMQ_TEST_CONTROL": self.control,
                "LLMQ_TEST_SIM": self.sim.url, "LLMQ_TEST_WORKERS": str(len(self.workers)),
                "LLMQ_CONFORMANCE": os.path.join(SOURCE_DIR, "bindings", "conformance.json")}

    def close(self):
        self._http.shutdown()
        super().close()


def run_suite(name, argv, env, cwd):
    """Run a binding's test suite (argv) against a fresh BindingsCluster
    whose endpoints are added to env; stop the cluster after."""
    cluster = BindingsCluster()
    try:
        run(argv, env=dict(env, **cluster.env()), cwd=cwd, cluster=cluster)
        print("%s: ok (broker restarts %d)" % (name, cluster.restarts))
    finally:
        cluster.close()


def run(argv, timeout=240, cluster=None, **kw):
    """Run a step (its output goes to ours), serving the cluster's control
    requests meanwhile; fail the test on a non-zero exit or when it takes
    longer than timeout seconds."""
    print("+ " + " ".join(argv), flush=True)
    p = subprocess.Popen(argv, **kw)
    deadline = time.monotonic() + timeout
    while p.poll() is None and time.monotonic() < deadline:
        if cluster is not None:
            cluster.serve(0.05)
        else:
            try:
                p.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
    rc = p.poll()
    if rc is None:
        p.kill()
        p.wait()
        print("FAIL: %s took over %d s" % (argv[0], timeout), file=sys.stderr, flush=True)
        sys.exit(1)
    if rc != 0:
        print("FAIL: %s exited with %d" % (argv[0], rc), file=sys.stderr, flush=True)
        sys.exit(1)
