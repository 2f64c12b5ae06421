"""llmqtest.py - the shared kit of llmq's Python tests.

Every process a test starts goes through Proc: its stderr goes to a log
file, its `ready` line is read with a deadline, and when the test stops it
(SIGTERM) it must exit 0 with no sanitizer report in its log
(AddressSanitizer, LeakSanitizer, UBSan's `runtime error`). A process the
test kills on purpose (SIGKILL) is only scanned. finish() stops and checks
whatever is still running: call it at the end of a test (or use main()).

A test that cannot run here calls skip(reason): exit 77, which ctest's
SKIP_RETURN_CODE shows as skipped, with the reason on stderr.

Waits are polls with deadlines (wait_until), never sleeps. Runs on
/usr/bin/python3 with the standard library only.
"""
import atexit
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time

BIN_DIR = os.environ.get("LLMQ_BIN_DIR", "build/bin")
SOURCE_DIR = os.environ.get("LLMQ_SOURCE_DIR",
                            os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))
VERBOSE = bool(os.environ.get("LLMQ_TEST_VERBOSE"))
SKIP = 77

#  What a sanitizer writes when it finds something (ASan, LSan, UBSan, TSan).
SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "LeakSanitizer",
                   "runtime error:", "WARNING: ThreadSanitizer", "ERROR: ThreadSanitizer")


def bin_path(name):
    return os.path.join(BIN_DIR, name)


def have(binary):
    return os.access(bin_path(binary), os.X_OK)


def skip(reason):
    """This test cannot run here: say why, exit 77 (ctest: skipped)."""
    print("SKIP: " + reason, file=sys.stderr, flush=True)
    _stop_all_quietly(show=False)
    sys.exit(SKIP)


def fail(message):
    print("FAIL: " + message, file=sys.stderr, flush=True)
    _stop_all_quietly(show=True)
    sys.exit(1)


def check(cond, message):
    if not cond:
        fail(message)


def wait_until(what, predicate, timeout=30.0, interval=0.05):
    """Poll predicate until it returns a true value (returned) or the
    deadline passes (the test fails). The interval only paces the polling;
    the deadline is the only timing."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            fail("timed out waiting for " + what)
        select.select([], [], [], interval)


def sanitizer_report(text):
    """The first line of a sanitizer report in text, or None."""
    for line in text.splitlines():
        if any(mark in line for mark in SANITIZER_MARKS):
            return line.strip()
    return None


def die_with_parent():
    """preexec_fn for any subprocess a test starts: it gets SIGKILL when the
    test process ends, however that happens (PR_SET_PDEATHSIG), so a failed
    test leaves nothing running."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    except Exception:
        pass


class Proc:
    """A child process. If ready is true it must print `ready <name> k=v ...`
    on stdout within timeout; the pairs are in self.ready."""

    ALL = []   # every Proc of this test, for finish()

    def __init__(self, argv, name=None, env=None, timeout=20.0, ready=True, stdin=None):
        self.argv = list(argv)
        self.name = name or os.path.basename(argv[0])
        self.killed = False        # SIGKILLed on purpose: exit code not checked
        self.checked = False
        fd, self.log_path = tempfile.mkstemp(prefix="llmq-test-%s-" % self.name.replace(" ", "_"),
                                             suffix=".log")
        self.log = os.fdopen(fd, "wb")
        full_env = dict(os.environ)
        full_env.update(env or {})
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self.log,
                                     stdin=stdin, env=full_env, preexec_fn=die_with_parent)
        self.p = self.proc          # the name broker_it.py uses
        Proc.ALL.append(self)
        self.ready = {}
        self.ready_line = ""
        if ready:
            line = self.readline(timeout)
            self.ready_line = line
            if not line.startswith("ready "):
                self.kill9()
                fail("no ready line from %s: %r (exit %s)\n%s"
                     % (self.name, line, self.proc.returncode, self.tail()))
            self.ready = dict(kv.split("=", 1) for kv in line.split()[2:] if "=" in kv)
        # Whatever the process prints later is read (and kept in self.stdout):
        # a full pipe would block it.
        self.stdout = []
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        fd = self.proc.stdout.fileno()
        try:
            while True:
                chunk = os.read(fd, 65536)
                if not chunk:
                    return
                self.stdout.append(chunk)
        except (OSError, ValueError):
            return

    @property
    def pid(self):
        return self.proc.pid

    def readline(self, timeout):
        """One line of stdout within timeout ('' if none)."""
        deadline = time.monotonic() + timeout
        buf = b""
        fd = self.proc.stdout.fileno()
        while not buf.endswith(b"\n"):
            left = deadline - time.monotonic()
            if left <= 0:
                break
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                break
            ch = os.read(fd, 1)
            if not ch:
                break
            buf += ch
        return buf.decode(errors="replace").strip()

    def stderr(self):
        self.log.flush()
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")

    def tail(self, n=3000):
        return "--- stderr of %s (pid %d) ---\n%s" % (self.name, self.proc.pid, self.stderr()[-n:])

    def running(self):
        return self.proc.poll() is None

    def kill9(self):
        """SIGKILL on purpose (a crash the test simulates)."""
        self.killed = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def send_signal(self, sig):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)

    def wait(self, timeout=30):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, sig=signal.SIGTERM, timeout=30, expect_rc=0):
        """Stop (SIGTERM) and check: exit code expect_rc and a clean log.
        Returns the exit code; a process that does not stop in timeout is
        killed and the test fails."""
        if self.checked:
            return self.proc.returncode
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                fail("%s did not exit within %d s of signal %d\n%s"
                     % (self.name, timeout, sig, self.tail()))
        self.check_exit(expect_rc)
        return self.proc.returncode

    def check_exit(self, expect_rc=0):
        """The process has exited: expect_rc (unless killed on purpose) and
        no sanitizer report."""
        self.checked = True
        report = sanitizer_report(self.stderr())
        if report:
            fail("sanitizer report from %s: %s\n%s" % (self.name, report, self.tail(6000)))
        rc = self.proc.returncode
        if not self.killed and expect_rc is not None and rc != expect_rc:
            fail("%s exited with %s (expected %s)\n%s" % (self.name, rc, expect_rc, self.tail()))
        self._cleanup()

    def _cleanup(self):
        if not VERBOSE:
            try:
                self.log.close()
                os.unlink(self.log_path)
            except OSError:
                pass


def finish():
    """Stop every process still running (SIGTERM, newest first) and check
    every process of the test: exit 0 and clean logs."""
    for p in reversed(Proc.ALL):
        if not p.checked:
            p.stop()
    Proc.ALL.clear()


def _stop_all_quietly(show=True):
    """On failure, skip or an exception: stop everything, check nothing;
    with show, print the end of each process's log (the test failed)."""
    for p in reversed(Proc.ALL):
        if p.checked:
            continue
        if p.proc.poll() is None:
            p.proc.send_signal(signal.SIGTERM)
            try:
                p.proc.wait(10)
            except subprocess.TimeoutExpired:
                p.proc.kill()
                p.proc.wait()
        text = p.stderr()
        if show or sanitizer_report(text) or VERBOSE:
            print(p.tail(6000 if sanitizer_report(text) else 1500), file=sys.stderr)
        p.checked = True
        p._cleanup()
    Proc.ALL.clear()


#  A test that ends with an exception (an assert) never reached finish():
#  whatever still runs is stopped, and the logs are shown.
atexit.register(_stop_all_quietly)


def run_llmq(args, timeout=120, env=None, stdin=None):
    """Run the llmq CLI to completion; returns (rc, stdout, stderr). A
    sanitizer report fails the test (ASan's exit code is 86 here, so a
    report cannot pass for exit code 1, "some lines failed")."""
    full_env = dict(os.environ)
    full_env.pop("LLMQ_ENDPOINT", None)
    full_env.update(env or {})
    full_env["ASAN_OPTIONS"] = full_env.get("ASAN_OPTIONS", "") + ":exitcode=86"
    p = subprocess.run([bin_path("llmq"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout, env=full_env, input=stdin)
    stderr = p.stderr.decode(errors="replace")
    report = sanitizer_report(stderr)
    check(p.returncode != 86 and not report,
          "sanitizer report from llmq %s: %s\n%s" % (" ".join(args), report, stderr[-3000:]))
    # Every exit path destroys its sockets: CZMQ reports any left open.
    check("dangling" not in stderr,
          "dangling socket reported by llmq %s:\n%s" % (" ".join(args), stderr[-3000:]))
    return p.returncode, p.stdout.decode(errors="replace"), stderr


def main(fn):
    """Run fn(), then finish(): the test passes only if every process it
    started stopped cleanly."""
    fn()
    finish()
