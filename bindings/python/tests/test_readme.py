"""Every ```python block of the README runs as written against the
cluster (LLMQ_ENDPOINT set to it)."""
import os
import re
import subprocess
import sys
import unittest

from _util import ENDPOINT, HERE, live

README = os.path.join(HERE, "..", "README.md")


def blocks() -> list:
    with open(README, encoding="utf-8") as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


@live
class Readme(unittest.TestCase):
    def test_examples(self) -> None:
        found = blocks()
        self.assertGreaterEqual(len(found), 3)
        for i, code in enumerate(found):
            with self.subTest(block=i):
                p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                   timeout=120, env=dict(os.environ, LLMQ_ENDPOINT=ENDPOINT))
                self.assertEqual(p.returncode, 0, "README block %d:\n%s\n%s" % (i, code, p.stderr))
                self.assertTrue(p.stdout.strip(), "block %d printed nothing" % i)


if __name__ == "__main__":
    unittest.main()


@live
class Cli(unittest.TestCase):
    def run_cli(self, *args: str) -> "subprocess.CompletedProcess[str]":
        return subprocess.run([sys.executable, "-m", "llmq_client", *args], capture_output=True,
                              text=True, timeout=60, env=dict(os.environ, LLMQ_ENDPOINT=ENDPOINT))

    def test_cli(self) -> None:
        p = self.run_cli("ping")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTrue(p.stdout.startswith("llmq-broker "))
        p = self.run_cli("chat", "gpt-4o-mini", "hi from the cli", "--max-tokens", "4")
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertTrue(p.stdout.startswith("sim-"))
        p = self.run_cli("chat", "gpt-4o-mini", "streamed [[sim:tokens=5]]", "--stream")
        self.assertTrue(p.returncode == 0 and p.stdout.startswith("sim-"), p.stderr)
        p = self.run_cli("chat", "gpt-4o-mini", "bad [[sim:fail=400]]")
        self.assertEqual(p.returncode, 1)
        self.assertIn("invalid_request", p.stderr)
        self.assertEqual(self.run_cli("--version").returncode, 0)
        self.assertEqual(self.run_cli("--help").returncode, 0)
