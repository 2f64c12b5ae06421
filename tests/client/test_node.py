#!/usr/bin/python3
"""client.node: bindings/node packed (npm pack) and installed from the tree
into a scratch project (npm install of the tarball; its dependencies from
npm's cache or the registry), and its tests (node --test: shared
conformance cases, calls, streams, batches, every error class, a broker
restart mid-call, a script that never calls close(), the README's examples)
run there against a real cluster."""
import glob
import json
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bindings_cluster import run, run_suite, temp_dir  # noqa
from clusterlib import SOURCE_DIR  # noqa


def main():
    if not shutil.which("node") or not shutil.which("npm"):
        print("node/npm not installed (scripts/setup.sh installs them)", file=sys.stderr)
        sys.exit(77)
    src = os.path.join(SOURCE_DIR, "bindings", "node")
    run(["bash", os.path.join(src, "install.sh")])
    tmp = temp_dir("llmq-bindings-node-")
    npm = ["npm", "--no-audit", "--no-fund", "--loglevel=error", "--prefer-offline"]
    run(npm + ["pack", "--pack-destination", tmp, src], cwd=tmp)
    tarball = glob.glob(os.path.join(tmp, "llmq-client-*.tgz"))[0]
    proj = os.path.join(tmp, "proj")
    os.makedirs(os.path.join(proj, "test"))
    with open(os.path.join(proj, "package.json"), "w") as f:
        json.dump({"name": "llmq-client-scratch", "private": True, "type": "module"}, f)
    run(npm + ["install", tarball, "@msgpack/msgpack@3"], cwd=proj, timeout=300)
    for name in os.listdir(os.path.join(src, "test")):
        shutil.copy(os.path.join(src, "test", name), os.path.join(proj, "test", name))
    tests = sorted(glob.glob(os.path.join(proj, "test", "*.test.mjs")))
    run_suite("client.node", ["node", "--test", "--test-concurrency=1"] + tests,
              dict(os.environ, LLMQ_TEST_INSTALLED=proj), proj)


if __name__ == "__main__":
    main()
