"""Helpers for the llmq-gateway tests: a cluster of the shared kit
(tests/lib/llmqtest.py: llmq-sim, llmq-broker, llmq-worker) plus
llmq-gateway on free ports, and the SDK runner. Runs on /usr/bin/python3."""
import os
import shutil
import signal
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "lib"))
from llmqtest import (  # noqa: E402,F401
    MODEL, Broker, Cluster, HttpProc, Proc, bin_path, check, fail, skip, wait_until)

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = "sk-gw-test-1"


class Gateway(HttpProc):
    """llmq-gateway on a free port; requests carry the test key (pass
    {"Authorization": None} to send none)."""

    default_headers = {"Authorization": "Bearer " + KEY}

    def __init__(self, broker, data_dir, *flags):
        super().__init__([bin_path("llmq-gateway"), "--broker", broker, "--port", "0",
                          "--data-dir", data_dir, *flags])

    def request(self, method, path, body=None, headers=None, timeout=30):
        return super().request(method, path, body, headers, timeout)

    def json(self, method, path, body=None, headers=None, timeout=30):
        return super().json(method, path, body, headers, timeout)


class GwCluster(Cluster):
    """sim + broker (its batch DB in a temp dir) + workers + gateway."""

    def __init__(self, workers=1, capacity=32, broker_flags=(), gateway_flags=(), keys=True):
        tmp = tempfile.mkdtemp(prefix="llmq-gw-test-")
        self.db = os.path.join(tmp, "batches.db")
        super().__init__(workers, capacity, broker_flags=("--batch-db", self.db) + tuple(broker_flags),
                         tmp=tmp)
        self.keys = self.path("keys")
        with open(self.keys, "w") as f:
            f.write("# key tenant\n%s tenant-a\n" % KEY)
        self.data = self.path("data")
        self.gateway_flags = (("--keys", self.keys) if keys else ()) + tuple(gateway_flags)
        self.gateway = None
        self.start_gateway()

    def start_gateway(self):
        self.gateway = Gateway(self.broker.frontend, self.data, *self.gateway_flags)
        self.procs.append(self.gateway)
        return self.gateway

    def restart_gateway(self):
        self.gateway.kill(signal.SIGKILL)
        self.procs.remove(self.gateway)
        return self.start_gateway()


def need_sdks():
    if not shutil.which("node"):
        skip("node is not installed (scripts/setup.sh installs it)")
    for mod in ("openai", "@anthropic-ai/sdk"):
        if not os.path.isdir(os.path.join(HERE, "node_modules", mod)):
            skip("tests/gateway/node_modules/%s missing: run tests/gateway/install.sh" % mod)
