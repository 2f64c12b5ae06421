#!/usr/bin/python3
"""tests.kit: the shared test kit (llmqtest.py) catches what it promises:
a sanitizer report in a process's stderr, a non-zero exit after SIGTERM, a
process that ignores SIGTERM; skip() exits 77. Each case runs a small test
in a child python that uses the kit on a fake process."""
import os
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))

PRELUDE = """
import sys, signal
sys.path.insert(0, %r)
import llmqtest
""" % HERE

# A fake server: prints a ready line, then does what the case says on SIGTERM.
FAKE = """
import os, signal, sys
def on_term(*_):
    sys.stderr.write(%r)
    sys.stderr.flush()
    os._exit(%d)
signal.signal(signal.SIGTERM, %s)
print("ready fake k=v", flush=True)
while True:
    signal.pause()
"""


def case(stderr_text, rc, handler="on_term", body="p.stop(timeout=%(t)s)", t=10):
    fake = FAKE % (stderr_text, rc, handler)
    code = PRELUDE + ("p = llmqtest.Proc([sys.executable, '-c', %r], name='fake')\n"
                      "assert p.ready == {'k': 'v'}, p.ready\n" % fake) + \
        (body % {"t": t}) + "\nprint('KIT-PASSED')\n"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    return r.returncode, r.stdout + r.stderr


def expect(name, got, want_rc, want_text):
    rc, out = got
    if rc != want_rc or want_text not in out:
        print("FAIL: %s: exit %d (want %d), output:\n%s" % (name, rc, want_rc, out[-2000:]),
              file=sys.stderr)
        sys.exit(1)
    print("ok: %s" % name)


expect("clean stop passes", case("", 0), 0, "KIT-PASSED")
expect("ASan report fails", case("==1==ERROR: AddressSanitizer: heap-use-after-free\n", 0),
       1, "sanitizer report")
expect("UBSan report fails", case("x.c:3:5: runtime error: signed integer overflow\n", 0),
       1, "sanitizer report")
expect("leak report fails", case("==1==ERROR: LeakSanitizer: detected memory leaks\n", 0),
       1, "sanitizer report")
expect("exit 1 after SIGTERM fails", case("", 1), 1, "exited with 1")
expect("ignoring SIGTERM fails", case("", 0, handler="signal.SIG_IGN", t=1), 1,
       "did not exit")
expect("finish() checks what is left", case("", 3, body="llmqtest.finish()"), 1, "exited with 3")
expect("kill9 is not an error", case("", 0, body="p.kill9(); llmqtest.finish()"), 0, "KIT-PASSED")
rc, out = case("", 0, body="llmqtest.skip('no such tool')")
expect("skip exits 77 with the reason", (rc, out), 77, "SKIP: no such tool")
print("tests.kit: ok")
