#!/usr/bin/python3
"""version_consistency: the version lives in one place, project(VERSION) in
the top CMakeLists.txt (usage: check_version.py VERSION SOURCE_DIR BIN_DIR).

  - every binary's --version prints it (the C targets read the generated
    llmq_version.h, or the worker's compile definition made from it)
  - the bindings, separate packages, carry the same version: the Python
    pyproject.toml and llmq_client.__version__, the Node package.json and
    its package-lock.json
  - no C source or header outside the build tree writes a version string
    of its own (a `#define ...VERSION... "X.Y.Z"`)
Exits 0 when all agree, 1 with every disagreement on stderr."""
import json
import os
import re
import subprocess
import sys

VERSION, SRC, BIN = sys.argv[1], sys.argv[2], sys.argv[3]
BINARIES = ["llmq-broker", "llmq-worker", "llmq", "llmq-sim", "llmq-gateway"]
errors = []


def check(ok, what):
    if not ok:
        errors.append(what)


def read(rel):
    with open(os.path.join(SRC, rel), encoding="utf-8") as f:
        return f.read()


def binaries():
    for name in BINARIES:
        path = os.path.join(BIN, name)
        if not os.path.exists(path):
            errors.append("%s: not built" % name)
            continue
        out = subprocess.run([path, "--version"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
        check(out.split()[-1:] == [VERSION],
              "%s --version says %r, project says %s" % (name, out, VERSION))


def bindings():
    m = re.search(r'^version\s*=\s*"([^"]+)"', read("bindings/python/pyproject.toml"), re.M)
    check(m and m.group(1) == VERSION,
          "bindings/python/pyproject.toml: %s" % (m and m.group(1)))
    m = re.search(r'^__version__\s*=\s*"([^"]+)"',
                  read("bindings/python/llmq_client/__init__.py"), re.M)
    check(m and m.group(1) == VERSION,
          "bindings/python/llmq_client/__init__.py: %s" % (m and m.group(1)))
    pkg = json.loads(read("bindings/node/package.json"))
    check(pkg.get("version") == VERSION, "bindings/node/package.json: %s" % pkg.get("version"))
    lock = json.loads(read("bindings/node/package-lock.json"))
    for where, v in (("version", lock.get("version")),
                     ("packages[\"\"].version", lock.get("packages", {}).get("", {}).get("version"))):
        check(v == VERSION, "bindings/node/package-lock.json %s: %s" % (where, v))


def no_second_home():
    pat = re.compile(r'#\s*define\s+\w*VERSION\w*\s+"\d+\.\d+\.\d+"')
    for top in ("broker", "worker", "client", "proto", "gateway", "sim", "include", "bench"):
        for root, _, files in os.walk(os.path.join(SRC, top)):
            for f in files:
                if f.endswith((".c", ".h")):
                    rel = os.path.relpath(os.path.join(root, f), SRC)
                    for n, line in enumerate(read(rel).splitlines(), 1):
                        check(not pat.search(line), "%s:%d: a second home: %s" % (rel, n, line))


binaries()
bindings()
no_second_home()
for e in errors:
    print("version_consistency: " + e, file=sys.stderr)
if not errors:
    print("version_consistency: %s everywhere (%d binaries, 4 binding files)" %
          (VERSION, len(BINARIES)))
sys.exit(1 if errors else 0)
