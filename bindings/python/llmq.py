"""llmq.py - a small pure-Python client for the llmq broker.

Speaks the wire protocol (proto/PROTOCOL.md) directly with pyzmq and
msgpack, as Debian ships them (python3-zmq, python3-msgpack; run with
/usr/bin/python3). No C extension, no other dependency.

    import llmq
    c = llmq.Client("tcp://127.0.0.1:5555")
    r = c.infer("chat", "gpt-4o-mini", {"messages": [{"role": "user", "content": "hi"}]})
    print(r.ok, r.text, r.usage)

    ids = [c.submit("chat", model, body) for body in bodies]   # async, windowed
    for r in c.results():                                      # as they finish
        ...
    for delta in c.stream("gpt-4o-mini", body):                # streaming
        print(delta, end="", flush=True)
    print(c.last_result.usage)

Reliability is the same lazy pirate as the C client: while requests are
outstanding the client pings a silent broker every second; after `timeout`
seconds of silence, or when the connection drops (a restarted broker answers
pings but has lost our requests), it opens a new socket with the same
routing id and resends every outstanding request. The broker ignores resends of requests it
still has pending and the client drops answers for ids it no longer waits
for, so each request gets exactly one result.
"""

import collections
import os
import time

import msgpack
import zmq

__all__ = ["Client", "Result", "PROTOCOL_VERSION", "DEFAULT_ENDPOINT"]

PROTOCOL_VERSION = 1
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
MAX_MESSAGE = 64 * 1024 * 1024
OPS = ("chat", "completion", "embedding")


class Result:
    """One finished request. ok is True when body holds the response."""

    def __init__(self, header, body, arg=None, resends=0, elapsed=0.0):
        self.id = header.get("id")
        self.ok = bool(header.get("ok"))
        self.body = body
        self.usage = dict(header.get("usage") or {})
        self.latency_ms = header.get("latency_ms", 0)
        self.attempts = header.get("attempts", 0)
        self.attempt = header.get("attempt", 0)
        self.worker = header.get("worker")
        self.cached = bool(header.get("cached"))
        self.meta = header.get("meta")
        self.error = None if self.ok else dict(header.get("error") or {"code": "internal"})
        self.arg = arg
        self.resends = resends
        self.elapsed = elapsed

    @property
    def text(self):
        """choices[0].message.content (chat) or choices[0].text, else None."""
        try:
            choice = self.body["choices"][0]
        except (TypeError, KeyError, IndexError):
            return None
        message = choice.get("message") or {}
        return message.get("content", choice.get("text"))

    def __repr__(self):
        if self.ok:
            return "Result(id=%r, ok=True, text=%r, usage=%r)" % (self.id, self.text, self.usage)
        return "Result(id=%r, ok=False, error=%r)" % (self.id, self.error)


def _decode(frame):
    return msgpack.unpackb(frame, raw=False, strict_map_key=False)


class Client:
    """A DEALER connection to the broker frontend."""

    def __init__(self, endpoint=DEFAULT_ENDPOINT, timeout=3.0, window=256,
                 give_up=None, context=None):
        self.endpoint = endpoint
        self.timeout = float(timeout)
        self.heartbeat = min(1.0, self.timeout / 3)
        self.window = max(1, int(window))
        self.give_up = give_up
        self.routing_id = b"llmq-py-" + os.urandom(8).hex().encode()
        self.ctx = context or zmq.Context.instance()
        self.sock = None
        self.monitor = None
        self._pending = collections.OrderedDict()   # id -> request dict
        self._ready = collections.deque()            # finished Results
        self._next = 0
        self._last_recv = time.monotonic()
        self._last_heard = self._last_recv
        self._last_ping = 0.0
        self._pong = None
        self._status = None
        self._dropped = False
        self._last_reconnect = 0.0
        self.reconnects = 0
        self.resent = 0
        self.duplicates = 0
        self.last_result = None
        self._connect()

    # -- socket ----------------------------------------------------------
    def _connect(self):
        self._close_socket()
        s = self.ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.ROUTING_ID, self.routing_id)
        s.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 100000)
        s.setsockopt(zmq.RCVHWM, 100000)
        # A restarted broker answers pings but has forgotten our requests:
        # a dropped connection, not silence, is what tells us.
        self.monitor = s.get_monitor_socket(zmq.EVENT_DISCONNECTED)
        s.connect(self.endpoint)
        self.sock = s
        self.poller = zmq.Poller()
        self.poller.register(self.sock, zmq.POLLIN)
        self.poller.register(self.monitor, zmq.POLLIN)

    def _close_socket(self):
        if getattr(self, "sock", None) is not None:
            try:
                self.sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self.monitor.close(linger=0)
            self.sock.close(linger=0)
            self.sock = None

    def close(self):
        self._close_socket()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _send(self, header, payload=None):
        header = dict(header)
        header["v"] = PROTOCOL_VERSION
        frames = [msgpack.packb(header, use_bin_type=True)]
        if payload is not None:
            frames.append(payload)
        try:
            self.sock.send_multipart(frames, flags=zmq.NOBLOCK)
        except zmq.Again:
            pass    # the next reconnect resends it

    def _send_request(self, req):
        header = {"t": "req", "id": req["id"], "op": req["op"], "model": req["model"]}
        header.update(req["opts"])
        if req["stream"]:
            header["stream"] = True
        if "deadline_ms" in header:
            left = header["deadline_ms"] - int((time.monotonic() - req["sent_at"]) * 1000)
            header["deadline_ms"] = max(1, left)
        self._send(header, req["payload"])

    # -- the pump --------------------------------------------------------
    def _pump(self, timeout):
        """Wait up to timeout seconds for input, handle it, run timers."""
        wait = min(timeout, self.heartbeat / 4) if timeout is not None else self.heartbeat / 4
        events = dict(self.poller.poll(max(0, int(wait * 1000))))
        if self.monitor in events:
            dropped = False
            while True:
                try:
                    self.monitor.recv_multipart(zmq.NOBLOCK)
                    dropped = True
                except zmq.Again:
                    break
            if dropped and self._pending:
                self._dropped = True    # reconnect in _timers, once per heartbeat
        if self.sock in events:
            while True:
                try:
                    frames = self.sock.recv_multipart(zmq.NOBLOCK)
                except zmq.Again:
                    break
                self._last_recv = self._last_heard = time.monotonic()
                self._handle(frames)
        self._timers()

    def _handle(self, frames):
        try:
            header = _decode(frames[0])
            if not isinstance(header, dict) or header.get("v") != PROTOCOL_VERSION:
                return
        except Exception:
            return      # not ours to crash on: drop it
        t = header.get("t")
        payload = frames[1] if len(frames) > 1 else None
        if t == "res":
            req = self._pending.pop(header.get("id"), None)
            if req is None:
                self.duplicates += 1
                return
            body = None
            if payload:
                try:
                    body = _decode(payload)
                except Exception:
                    header = dict(header, ok=False,
                                  error={"code": "internal", "message": "bad response body",
                                         "retryable": True})
            self._ready.append(Result(header, body, req["arg"], req["resends"],
                                      time.monotonic() - req["sent_at"]))
        elif t == "chunk":
            req = self._pending.get(header.get("id"))
            if req is None or req["on_chunk"] is None or payload is None:
                return
            seq = header.get("seq", 0)
            if seq <= req["last_seq"]:
                return      # a resend restarted the stream
            req["last_seq"] = seq
            try:
                chunk = _decode(payload)
            except Exception:
                return
            req["on_chunk"](chunk, _delta(chunk))
        elif t == "pong":
            self._pong = "%s %s" % (header.get("broker"), header.get("version"))
        elif t == "status":
            self._status = _decode(payload) if payload else {}
        elif t == "error":
            req = self._pending.pop(header.get("id"), None)
            if req is not None:
                h = {"id": req["id"], "ok": False,
                     "error": {"code": header.get("code"), "message": header.get("message")}}
                self._ready.append(Result(h, None, req["arg"], req["resends"]))

    def _timers(self):
        if not self._pending:
            self._dropped = False
            return
        now = time.monotonic()
        if self.give_up and now - self._last_heard >= self.give_up:
            for req in list(self._pending.values()):
                h = {"id": req["id"], "ok": False,
                     "error": {"code": "timeout", "message": "broker unreachable",
                               "retryable": True}}
                self._ready.append(Result(h, None, req["arg"], req["resends"]))
            self._pending.clear()
            return
        silent = now - self._last_recv
        if self._dropped and now - self._last_reconnect >= self.heartbeat:
            self._reconnect()
        elif silent >= self.timeout:
            self._reconnect()
        elif silent >= self.heartbeat and now - self._last_ping >= self.heartbeat:
            self._send({"t": "ping"})
            self._last_ping = now

    def _reconnect(self):
        """Lazy pirate: new socket, same identity, resend everything."""
        self._connect()
        self._dropped = False
        self._last_reconnect = time.monotonic()
        self.reconnects += 1
        for req in self._pending.values():
            req["resends"] += 1
            self.resent += 1
            self._send_request(req)
        now = time.monotonic()
        self._last_recv = now
        self._send({"t": "ping"})
        self._last_ping = now

    # -- public API ------------------------------------------------------
    def ping(self, timeout=3.0):
        """Returns "broker version" or None if no pong came in time."""
        self._pong = None
        self._send({"t": "ping"})
        deadline = time.monotonic() + timeout
        while self._pong is None and time.monotonic() < deadline:
            self._pump(deadline - time.monotonic())
        return self._pong

    def status(self, timeout=3.0):
        """The broker's status map, or None."""
        self._status = None
        self._send({"t": "status"})
        deadline = time.monotonic() + timeout
        while self._status is None and time.monotonic() < deadline:
            self._pump(deadline - time.monotonic())
        return self._status

    def submit(self, op, model, body, arg=None, on_chunk=None, **opts):
        """Send a request; blocks while the window is full. opts: pool,
        deadline_ms, priority, max_attempts, cache, trace, meta. Returns its id."""
        if op not in OPS:
            raise ValueError("op must be one of %s" % (OPS,))
        if not model:
            raise ValueError("model is required")
        while len(self._pending) >= self.window:
            self._pump(None)
        self._next += 1
        now = time.monotonic()
        if not self._pending:
            self._last_recv = self._last_heard = now
        req = {"id": "p%d" % self._next, "op": op, "model": model,
               "payload": msgpack.packb(body, use_bin_type=True),
               "opts": {k: v for k, v in opts.items() if v is not None},
               "stream": on_chunk is not None, "on_chunk": on_chunk, "arg": arg,
               "sent_at": now, "last_seq": -1, "resends": 0}
        self._pending[req["id"]] = req
        self._send_request(req)
        return req["id"]

    def poll(self, timeout=None):
        """Next finished Result, or None on timeout / when nothing is left."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._ready:
            if not self._pending:
                return None
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return None
            self._pump(left)
        return self._ready.popleft()

    def results(self):
        """Yield results until nothing is outstanding."""
        while True:
            r = self.poll()
            if r is None:
                return
            yield r

    def outstanding(self):
        return len(self._pending)

    def cancel(self, request_id):
        if request_id in self._pending:
            self._send({"t": "cancel", "id": request_id})

    def _wait_for(self, request_id):
        while True:
            for i, r in enumerate(self._ready):
                if r.id == request_id:
                    del self._ready[i]
                    return r
            self._pump(None)

    def infer(self, op, model, body, **opts):
        """Synchronous: send and wait for this request's Result."""
        return self._wait_for(self.submit(op, model, body, **opts))

    def chat(self, model, prompt, **fields):
        """Convenience: one user message."""
        body = dict(fields, messages=[{"role": "user", "content": prompt}])
        return self.infer("chat", model, body)

    def stream(self, model, body, **opts):
        """Generator of text deltas as they arrive; the final Result is in
        self.last_result afterwards."""
        deltas = collections.deque()
        request_id = self.submit("chat", model, body,
                                 on_chunk=lambda chunk, delta: deltas.append(delta), **opts)
        self.last_result = None
        while True:
            while deltas:
                yield deltas.popleft()
            for i, r in enumerate(self._ready):
                if r.id == request_id:
                    del self._ready[i]
                    while deltas:
                        yield deltas.popleft()
                    self.last_result = r
                    return
            self._pump(None)

    def infer_many(self, op, model, bodies, **opts):
        """Run all bodies through the window; Results in input order."""
        out = [None] * len(bodies)
        marker = object()
        index = {}
        for i, body in enumerate(bodies):
            index[self.submit(op, model, body, arg=marker, **opts)] = i
            self._collect(index, out)
        while any(r is None for r in out):
            self._pump(None)
            self._collect(index, out)
        return out

    def _collect(self, index, out):
        keep = collections.deque()
        while self._ready:
            r = self._ready.popleft()
            if r.id in index:
                out[index.pop(r.id)] = r
            else:
                keep.append(r)
        self._ready = keep


def _delta(chunk):
    try:
        choice = chunk["choices"][0]
    except (TypeError, KeyError, IndexError):
        return ""
    delta = choice.get("delta") or {}
    text = delta.get("content")
    if text is None:
        text = choice.get("text")
    return text or ""
