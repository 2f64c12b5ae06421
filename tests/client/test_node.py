#!/usr/bin/python3
"""client.node: runs test_node.js (the Node client) against a real cluster
started here, installing the npm dependencies first if needed
(bindings/node/install.sh: npm ci from the committed package-lock.json)."""
import json
import os
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from clusterlib import MODEL, SOURCE_DIR, Cluster, chat_hash, check, fail  # noqa
from llmqtest import die_with_parent, skip  # noqa


def main():
    if not shutil.which("node"):
        skip("node is not installed (Debian package nodejs; scripts/setup.sh)")
    install = os.path.join(SOURCE_DIR, "bindings", "node", "install.sh")
    r = subprocess.run(["bash", install], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if r.returncode != 0:
        # No npm or no registry here: the modules of package-lock.json are
        # missing, so the Node client cannot be loaded.
        skip("npm modules not installed (bindings/node/install.sh failed): %s"
             % r.stdout.decode(errors="replace").strip()[-500:])
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
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env,
                             preexec_fn=die_with_parent)
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
