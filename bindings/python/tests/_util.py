"""Shared helpers of the llmq_client tests. Live tests need a cluster:
LLMQ_TEST_ENDPOINT (broker frontend), LLMQ_TEST_CONTROL (the driver's
control URL: POST /restart-broker); without them they are skipped.
tests/client/test_python_pkg.py starts both."""
import json
import os
import socket
import unittest
import urllib.request
from typing import Any, Dict

HERE = os.path.dirname(os.path.abspath(__file__))
ENDPOINT = os.environ.get("LLMQ_TEST_ENDPOINT", "")
CONTROL = os.environ.get("LLMQ_TEST_CONTROL", "")
CONFORMANCE = os.environ.get("LLMQ_CONFORMANCE",
                             os.path.join(HERE, "..", "..", "conformance.json"))


def conformance() -> Dict[str, Any]:
    with open(CONFORMANCE, encoding="utf-8") as f:
        return json.load(f)  # type: ignore[no-any-return]


def live(cls: Any) -> Any:
    return unittest.skipUnless(ENDPOINT, "no cluster (LLMQ_TEST_ENDPOINT unset)")(cls)


def restart_broker() -> None:
    req = urllib.request.Request(CONTROL + "/restart-broker", method="POST", data=b"")
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 200


def dead_endpoint() -> str:
    """A loopback port nobody listens on."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return "tcp://127.0.0.1:%d" % port
