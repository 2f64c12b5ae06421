"""Helpers for the llmq-gateway tests: a cluster (llmq-sim, llmq-broker,
llmq-worker from tests/client/clusterlib.py) plus llmq-gateway on free
ports, a small HTTP client, and the SDK runner. Runs on /usr/bin/python3."""
import http.client
import json
import os
import shutil
import signal
import sys
import tempfile
import urllib.parse

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "client"))
from clusterlib import (  # noqa: E402,F401
    MODEL, Broker, Cluster, Proc, bin_path, check, fail, wait_until, _low_port)

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = "sk-gw-test-1"


class Gateway(Proc):
    def __init__(self, broker, data_dir, *flags):
        super().__init__([bin_path("llmq-gateway"), "--broker", broker, "--port", "0",
                          "--data-dir", data_dir, *flags])
        self.url = self.ready["url"]
        u = urllib.parse.urlparse(self.url)
        self.host, self.port = u.hostname, u.port

    def request(self, method, path, body=None, headers=None, timeout=30):
        """(status, headers dict lower-cased, body bytes)."""
        c = http.client.HTTPConnection(self.host, self.port, timeout=timeout)
        h = {"Authorization": "Bearer " + KEY}
        h.update(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        c.request(method, path, body=body, headers={k: v for k, v in h.items() if v is not None})
        r = c.getresponse()
        data = r.read()
        hdrs = {k.lower(): v for k, v in r.getheaders()}
        c.close()
        return r.status, hdrs, data

    def json(self, method, path, body=None, headers=None, timeout=30):
        status, hdrs, data = self.request(method, path, body, headers, timeout)
        try:
            return status, hdrs, json.loads(data)
        except ValueError:
            return status, hdrs, data


class GwCluster(Cluster):
    """sim + broker (its batch DB in a temp dir) + workers + gateway."""

    def __init__(self, workers=1, capacity=32, broker_flags=(), gateway_flags=(), keys=True):
        self.tmp = tempfile.mkdtemp(prefix="llmq-gw-test-")
        self.db = os.path.join(self.tmp, "batches.db")
        self.broker_flags = ("--batch-db", self.db) + tuple(broker_flags)
        super().__init__(workers=workers, capacity=capacity, broker_flags=self.broker_flags)
        self.keys = os.path.join(self.tmp, "keys")
        with open(self.keys, "w") as f:
            f.write("# key tenant\n%s tenant-a\n" % KEY)
        self.data = os.path.join(self.tmp, "data")
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

    def restart_broker(self):
        """kill -9 the broker, start a new one on the same ports and DB."""
        fe, be = self.broker.frontend, self.broker.backend
        self.broker.kill(signal.SIGKILL)
        self.procs.remove(self.broker)
        self.broker = Broker(fe, be, *self.broker_flags)
        self.procs.append(self.broker)

    def close(self):
        super().close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def skip(reason):
    print("SKIP: " + reason, file=sys.stderr)
    sys.exit(77)


def need_sdks():
    if not shutil.which("node"):
        skip("node is not installed (scripts/setup.sh installs it)")
    for mod in ("openai", "@anthropic-ai/sdk"):
        if not os.path.isdir(os.path.join(HERE, "node_modules", mod)):
            skip("tests/gateway/node_modules/%s missing: run tests/gateway/install.sh" % mod)
