#!/usr/bin/python3
"""tests.kit: the shared test kit (llmqtest.py) catches what it promises:
a sanitizer report in a process's stderr, a non-zero exit after SIGTERM, a
process that ignores SIGTERM; skip() exits 77; temp_dir()s are removed
however the test ends. Each case runs a small test in a child python that
uses the kit on a fake process. Then the launchers on the real binaries:
Sim answers with chat_hash's text, Cluster's workers reach the broker and
its restart_broker keeps the ports, broker_ping of nothing is None."""
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

# temp_dir: removed at exit, after a failure too (the path is printed).
for ending, want_rc in (("llmqtest.finish()", 0), ("llmqtest.fail('on purpose')", 1)):
    rc, out = case("", 0, body="print('DIR=' + llmqtest.temp_dir('llmq-kit-')); " + ending)
    path = [ln[4:] for ln in out.splitlines() if ln.startswith("DIR=")]
    if rc != want_rc or not path or os.path.exists(path[0]):
        print("FAIL: temp_dir after %s: exit %d, %r\n%s" % (ending, rc, path, out[-2000:]),
              file=sys.stderr)
        sys.exit(1)
    print("ok: temp_dir removed after %s" % ending)


def launchers():
    if not all(llmqtest.have(b) for b in ("llmq-sim", "llmq-broker", "llmq-worker")):
        print("launchers not checked: llmq-sim, llmq-broker or llmq-worker not built")
        return
    messages = [{"role": "user", "content": "kit"}]
    with llmqtest.Sim() as sim:
        st, _, body = sim.json("POST", "/v1/chat/completions",
                               {"model": llmqtest.MODEL, "messages": messages})
        text = body["choices"][0]["message"]["content"] if st == 200 else ""
        llmqtest.check(text.startswith("sim-" + llmqtest.chat_hash(llmqtest.MODEL, messages)),
                       "Sim's answer %r is not chat_hash's" % text)
    print("ok: Sim answers with chat_hash's text")
    c = llmqtest.Cluster(workers=1, capacity=2)
    try:
        st = c.status()
        llmqtest.check(st and len(st["workers"]) == 1, "one worker at the broker: %r" % st)
        fe, be = c.broker.frontend, c.broker.backend
        c.restart_broker()
        llmqtest.check((c.broker.frontend, c.broker.backend) == (fe, be), "same ports")
        c.wait_workers(1)
        llmqtest.check(llmqtest.broker_ping(fe, 3.0).startswith("llmq-broker"), "ping")
    finally:
        c.close()
    print("ok: Cluster starts, restart_broker keeps the ports, the worker comes back")
    llmqtest.check(llmqtest.broker_ping("tcp://127.0.0.1:%d" % llmqtest.low_port()) is None,
                   "broker_ping of nothing is None")
    print("ok: broker_ping of nothing is None")


sys.path.insert(0, HERE)
import llmqtest  # noqa: E402
llmqtest.main(launchers)
print("tests.kit: ok")
