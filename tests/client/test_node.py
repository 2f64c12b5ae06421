#!/usr/bin/python3
"""client.node: runs test_node.js (the Node client) against a real cluster
started here, installing the npm dependencies first if needed
(bindings/node/install.sh: npm ci from the committed package-lock.json)."""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import MODEL, SOURCE_DIR, Cluster, chat_hash, check, fail  # noqa


def main():
    install = os.path.join(SOURCE_DIR, "bindings", "node", "install.sh")
    r = subprocess.run(["bash", install], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    check(r.returncode == 0, "npm install failed: %s" % r.stdout.decode(errors="replace"))
    texts = ["hello from node", "node stream [[sim:tokens=12]]"]
    texts += ["node async %d" % i for i in range(100)]
    texts += ["node restart %d [[sim:delay_ms=300]]" % i for i in range(30)]
    hashes = {t: "sim-" + chat_hash(MODEL, [{"role": "user", "content": t}]) for t in texts}
    cluster = Cluster(workers=2, capacity=16)
    try:
        env = dict(os.environ, LLMQ_SOURCE_DIR=SOURCE_DIR)
        p = subprocess.Popen(["node", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                   "test_node.js"),
                              cluster.broker.frontend, MODEL, json.dumps(hashes)],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        for line in p.stdout:
            line = line.decode().strip()
            print(line)
            if line == "RESTART":
                cluster.restart_broker()
                p.stdin.write(b"OK\n")
                p.stdin.flush()
        p.wait(timeout=60)
        if p.returncode != 0:
            fail("test_node.js exited with %d" % p.returncode)
    finally:
        cluster.close()


if __name__ == "__main__":
    main()
