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
/usr/bin/python3 with the standard library only (broker_status() also
imports the llmq_client package from bindings/python, which needs pyzmq).

The one launcher of each binary the tests start:
  Sim(*flags)        llmq-sim on a free port, with an HTTP client
  Broker(fe, be)     llmq-broker (ephemeral or given ports)
  Worker(be, url)    llmq-worker against a Sim
  Cluster(...)       Sim + Broker + Workers, restartable broker, temp dir
plus chat_hash() (llmq-sim's answer to a chat) and broker_status().
"""
import atexit
import http.client
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

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


def sanitized(pid):
    """True if process pid runs with AddressSanitizer (its quarantine keeps
    freed memory, so RSS bounds do not hold there)."""
    try:
        with open("/proc/%d/maps" % pid) as f:
            return any("libasan" in line for line in f)
    except OSError:
        return False


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

    def kill(self, sig=signal.SIGKILL):
        """SIGKILL: a crash on purpose (kill9). Any other signal: a clean
        stop, checked (stop)."""
        if sig == signal.SIGKILL:
            self.kill9()
        else:
            self.stop(sig)

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


_TEMP_DIRS = []   # temp_dir()s, removed when the test process ends


def temp_dir(prefix):
    """A fresh temp dir (unique: tempfile.mkdtemp) that is removed when the
    test ends however it ends, after its processes are stopped; kept with
    LLMQ_TEST_VERBOSE for a look afterwards."""
    d = tempfile.mkdtemp(prefix=prefix)
    _TEMP_DIRS.append(d)
    return d


def _remove_temp_dirs():
    if VERBOSE:
        for d in _TEMP_DIRS:
            print("kept %s" % d, file=sys.stderr)
        return
    for d in _TEMP_DIRS:
        shutil.rmtree(d, ignore_errors=True)


#  At exit, last registered first: stop what still runs (a test that ended
#  with an exception never reached finish(): its logs are shown), then
#  remove the temp dirs.
atexit.register(_remove_temp_dirs)
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


def main_cases(cases, argv=None):
    """A test file of named cases: `prog CASE` runs cases[CASE] as main()
    does, in its own process group (its children die with it), and prints
    PASS CASE; an unknown or missing name is a usage error (exit 2), never
    a silent pass."""
    argv = sys.argv if argv is None else argv
    if len(argv) != 2 or argv[1] not in cases:
        print("usage: %s %s" % (os.path.basename(argv[0]), "|".join(cases)), file=sys.stderr)
        sys.exit(2)
    os.setpgrp()
    main(cases[argv[1]])
    print("PASS", argv[1])


#  ---------------------------------------------------------------- launchers

MODEL = "sim-model"     # the model the test workers serve
SIM_KEY = "sk-test-key"  # the provider key the test workers send to llmq-sim


def out_line_ok(row):
    """An `llmq run` OUT line answered ok: OpenAI's batch output, where an
    HTTP error is a response with its status and `error` null, so ok means
    no error and a 2xx response."""
    resp = row.get("response")
    return row.get("error") is None and bool(resp) and 200 <= resp["status_code"] < 300


def complete_lines(path):
    """custom_id -> ok of the whole lines of an OUT file (the part after the
    last newline is what a kill leaves: not a line)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return {}
    return {row["custom_id"]: out_line_ok(row)
            for row in (json.loads(line) for line in data.split(b"\n")[:-1])}


def fnv1a64(data):
    h = 0xcbf29ce484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001b3) & 0xFFFFFFFFFFFFFFFF
    return h


def chat_hash(model, messages, system=None):
    """llmq-sim's canonical hash of a chat request (sim/README.md): its
    answer text starts with "sim-" + this."""
    text = model + "\n"
    if system is not None:
        text += "system:" + system + "\n"
    for m in messages:
        c = m.get("content")
        if isinstance(c, list):
            c = "".join(p.get("text", "") for p in c if p.get("type") == "text")
        text += m["role"] + ":" + (c or "") + "\n"
    return "%016x" % fnv1a64(text.encode())


class HttpProc(Proc):
    """A process whose ready line carries url=http://host:port, with a small
    HTTP client for it."""

    default_headers = {}   # added to every request (a value None: left out)

    def __init__(self, argv, **kw):
        super().__init__(argv, **kw)
        self.url = self.ready.get("url", "")
        u = urllib.parse.urlparse(self.url)
        self.host, self.port = u.hostname, u.port

    def conn(self, timeout=10):
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def request(self, method, path, body=None, headers=None, timeout=10):
        """(status, headers dict lower-cased, body bytes). A dict or list
        body is sent as JSON; str or bytes as they are. A header given as
        None is not sent."""
        h = dict(self.default_headers)
        h.update(headers or {})
        if isinstance(body, (dict, list)):
            body = json.dumps(body)
            h.setdefault("Content-Type", "application/json")
        c = self.conn(timeout)
        try:
            c.request(method, path, body=body,
                      headers={k: v for k, v in h.items() if v is not None})
            r = c.getresponse()
            data = r.read()
            return r.status, {k.lower(): v for k, v in r.getheaders()}, data
        finally:
            c.close()

    def json(self, method, path, body=None, headers=None, timeout=10, **kw):
        """request() with the body decoded: JSON, None if empty, else the
        bytes."""
        status, hdrs, data = self.request(method, path, body, headers, timeout=timeout, **kw)
        if not data:
            return status, hdrs, None
        try:
            return status, hdrs, json.loads(data)
        except ValueError:
            return status, hdrs, data


class Sim(HttpProc):
    """The real llmq-sim on a free port (--port 0 --quiet unless given)."""

    def __init__(self, *flags, timeout=20.0, env=None, name="llmq-sim"):
        argv = [bin_path("llmq-sim")]
        if "--port" not in flags:
            argv += ["--port", "0"]
        argv += ["--quiet", *flags]
        super().__init__(argv, name=name, timeout=timeout, env=env)
        check(self.ready_line.startswith("ready llmq-sim url="),
              "no ready line from llmq-sim: %r" % self.ready_line)

    def request(self, method, path, body=None, headers=None, auth=True,
                anthropic=False, timeout=10, raw=None):
        """As HttpProc.request, with the test key (OpenAI or Anthropic
        style) unless auth is false; raw: bytes sent as the body."""
        h = dict(headers or {})
        if auth and anthropic:
            h.setdefault("x-api-key", SIM_KEY)
            h.setdefault("anthropic-version", "2023-06-01")
        elif auth:
            h.setdefault("Authorization", "Bearer " + SIM_KEY)
        return super().request(method, path, raw if body is None else body, h, timeout)

    def stats(self):
        return self.json("GET", "/_stats", auth=False)[2]

    def reset(self):
        return self.json("POST", "/_reset", auth=False)[2]

    def close(self):
        self.stop(timeout=20)

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


class Broker(Proc):
    """The real llmq-broker; frontend/backend are the bound endpoints."""

    def __init__(self, frontend="tcp://127.0.0.1:*", backend="tcp://127.0.0.1:*", *flags,
                 name="llmq-broker", env=None):
        super().__init__([bin_path("llmq-broker"), "--frontend", frontend,
                          "--backend", backend, *flags], name=name, env=env)
        self.frontend = self.ready["frontend"]
        self.backend = self.ready["backend"]


class Worker(Proc):
    """The real llmq-worker serving model (every model if None) from a
    Sim at sim_url with the test key."""

    def __init__(self, backend, sim_url, capacity=32, model=MODEL, *flags, env=None,
                 name="llmq-worker"):
        argv = [bin_path("llmq-worker"), "--broker", backend, "--provider", "sim",
                "--base-url", sim_url + "/v1"]
        if model is not None:
            argv += ["--model", model]
        full_env = {"OPENAI_API_KEY": SIM_KEY}
        full_env.update(env or {})
        super().__init__(argv + ["--capacity", str(capacity), *flags], name=name,
                         env=full_env)


def low_port():
    """A free port below the kernel's (32768+) and ZeroMQ's (49152+)
    ephemeral ranges: restart_broker binds the same ports again after a
    kill -9, and no process of a test running in parallel can be handed such
    a port in between (as it can a freed ephemeral one)."""
    import random
    import socket
    for _ in range(200):
        port = random.randint(20000, 32000)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", port))
            return port
        except OSError:
            continue
        finally:
            s.close()
    raise RuntimeError("no free port in 20000..32000")


DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"   # where llmq looks for a broker


def client_module():
    """The llmq_client package of this tree (bindings/python)."""
    python_dir = os.path.join(SOURCE_DIR, "bindings", "python")
    if python_dir not in sys.path:
        sys.path.insert(0, python_dir)
    import llmq_client
    return llmq_client


def _ask_broker(endpoint, timeout, ask):
    llmq_client = client_module()
    c = llmq_client.Client(endpoint, timeout=timeout)
    try:
        return ask(c)
    except llmq_client.LlmqError:
        return None
    finally:
        c.close()


def broker_status(endpoint, timeout=3.0):
    """The broker's status map (PROTOCOL.md 5.3), or None if it does not
    answer in timeout."""
    return _ask_broker(endpoint, timeout, lambda c: c.status(timeout=timeout))


def broker_ping(endpoint=DEFAULT_ENDPOINT, timeout=0.3):
    """"<broker name> <version>" from the broker at endpoint, or None if
    nothing answers in timeout."""
    def ping(c):
        pong = c.ping(timeout=timeout)
        return "%s %s" % (pong.broker, pong.version)
    return _ask_broker(endpoint, timeout, ping)


def skip_if_default_broker(what):
    """Skip (exit 77) if a broker answers at llmq's default endpoint: an
    `llmq` with no --broker would use it, not an embedded cluster."""
    if broker_ping(DEFAULT_ENDPOINT) is not None:
        skip("a broker answers at %s: %s" % (DEFAULT_ENDPOINT, what))


class Cluster:
    """llmq-sim + llmq-broker + workers; close() stops them all (SIGTERM,
    checked) and removes the temp dir.

    workers: a count, or one tuple of extra flags per worker. latency_ms:
    llmq-sim's --latency-ms (None: give it in sim_flags, or none). The broker
    binds free low ports (restart_broker reuses them) unless ports="any"
    (tcp://127.0.0.1:*). tmp: a temp dir (temp_dir()) the cluster
    removes at close(), e.g. the one its --batch-db is in."""

    def __init__(self, workers=2, capacity=32, sim_flags=(), broker_flags=(),
                 worker_flags=(), model=MODEL, latency_ms="5", ports="low",
                 tmp=None, wait=True):
        self.procs = []
        self.workers = []
        self.capacity, self.model = capacity, model
        self.worker_flags = tuple(worker_flags)
        self.tmp = tmp
        self.broker_flags = tuple(broker_flags)
        latency = ("--latency-ms", str(latency_ms)) if latency_ms is not None else ()
        self.sim = Sim(*latency, *sim_flags)
        self.procs.append(self.sim)
        if ports == "low":
            fe, be = ("tcp://127.0.0.1:%d" % low_port() for _ in range(2))
        else:
            fe = be = "tcp://127.0.0.1:*"
        self.start_broker(fe, be)
        each = [()] * workers if isinstance(workers, int) else list(workers)
        for flags in each:
            self.add_worker(capacity, *flags)
        if wait:
            self.wait_workers(len(each))

    def path(self, name):
        return os.path.join(self.tmp, name)

    def start_broker(self, frontend, backend):
        self.broker = Broker(frontend, backend, *self.broker_flags)
        self.procs.append(self.broker)
        return self.broker

    def add_worker(self, capacity=None, *flags):
        w = Worker(self.broker.backend, self.sim.url, capacity or self.capacity, self.model,
                   *self.worker_flags, *flags)
        self.workers.append(w)
        self.procs.append(w)
        return w

    def status(self):
        return broker_status(self.broker.frontend)

    def wait_workers(self, n, timeout=30.0):
        """Until the broker lists n healthy workers."""
        def ready():
            s = broker_status(self.broker.frontend)
            if not s:
                return False
            live = [w for w in s.get("workers", []) if w.get("healthy", True)]
            return len(live) >= n
        wait_until("%d workers at the broker" % n, ready, timeout)

    def restart_broker(self, sig=signal.SIGKILL, outage=0.0):
        """Stop the broker (kill -9 by default), leave it down for outage
        seconds (the scenario, not a wait), start a new one on the same
        ports with the same flags."""
        fe, be = self.broker.frontend, self.broker.backend
        self.broker.kill(sig)
        self.procs.remove(self.broker)
        if outage:
            select.select([], [], [], outage)
        return self.start_broker(fe, be)

    def wait_idle(self, timeout=60.0):
        """Until the broker has nothing queued or in flight and the sim has
        nothing in flight: every request sent so far has been answered."""
        def idle():
            s = broker_status(self.broker.frontend)
            if not s:
                return False
            counters = s.get("counters", {})
            if counters.get("queued", 0) or counters.get("in_flight", 0):
                return False
            if any(w.get("in_flight", 0) for w in s.get("workers", [])):
                return False
            return self.sim.stats().get("in_flight", 1) == 0
        wait_until("an idle cluster", idle, timeout)

    def close(self):
        for p in reversed(self.procs):
            p.kill(signal.SIGTERM)
        if self.tmp:
            shutil.rmtree(self.tmp, ignore_errors=True)
