#!/usr/bin/python3
"""client.python_pkg: bindings/python installed from the tree into a
scratch prefix (pip install --target, offline, no build isolation), checked
with mypy --strict when Debian's mypy is there, and its unittest suite
(bindings/python/tests: shared conformance cases, sync and async calls,
streams, batches, every exception type, a broker restart mid-call, the
README's examples) run with the installed copy against a real cluster."""
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bindings_cluster import run, run_suite, temp_dir  # noqa
from clusterlib import SOURCE_DIR  # noqa

PY = "/usr/bin/python3"


def main():
    src = os.path.join(SOURCE_DIR, "bindings", "python")
    tmp = temp_dir("llmq-bindings-py-")
    copy = os.path.join(tmp, "src")
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns(
        "build", "*.egg-info", "__pycache__"))
    site = os.path.join(tmp, "site")
    run([PY, "-m", "pip", "install", "--quiet", "--no-index", "--no-build-isolation",
         "--no-deps", "--disable-pip-version-check", "--target", site, copy],
        env=dict(os.environ, PIP_ROOT_USER_ACTION="ignore"))
    if shutil.which("mypy"):
        run(["mypy", "--config-file", os.path.join(copy, "pyproject.toml"),
             os.path.join(site, "llmq_client")], cwd=tmp)
    else:
        print("mypy not installed: type check skipped")
    run_suite("client.python_pkg", [PY, "-m", "unittest", "discover", "-v", "-s",
                                    os.path.join(src, "tests"), "-t", os.path.join(src, "tests")],
              dict(os.environ, PYTHONPATH=site, LLMQ_TEST_INSTALLED=site), tmp)


if __name__ == "__main__":
    main()
