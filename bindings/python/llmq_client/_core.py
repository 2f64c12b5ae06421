"""The protocol engine shared by Client and AsyncClient: request
bookkeeping, frame handling, the lazy-pirate timers and CURVE keys. It does
no waiting itself; the clients pump it (proto/PROTOCOL.md)."""
from __future__ import annotations

import collections
import os
import time
from typing import Any, Callable, Deque, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import msgpack
import zmq
from zmq.utils.monitor import parse_monitor_message

from .errors import (AuthError, InvalidRequest, LlmqError, StreamInterrupted, Timeout, Unavailable,
                     error_from)
from .types import Result, Usage, delta_of

#  The timeout argument left out: the client's own timeout applies.
DEFAULT: Any = object()

PROTOCOL_VERSION = 1
DEFAULT_ENDPOINT = "tcp://127.0.0.1:5555"
MAX_MESSAGE = 64 * 1024 * 1024
MAX_BODY = MAX_MESSAGE - 65536     # the whole message: body + header (<= 64 KiB)
OPS = ("chat", "completion", "embedding")
GRACE = 1.0   # seconds the client waits past a request's deadline for the broker's answer

Frames = List[bytes]
Messages = Union[str, Sequence[Mapping[str, Any]]]
Header = Dict[str, Any]


def resolve_endpoint(endpoint: Optional[str]) -> str:
    return endpoint or os.environ.get("LLMQ_ENDPOINT") or DEFAULT_ENDPOINT


def give_up_default(fallback: float = 30.0) -> float:
    """Seconds of broker silence before calls fail: $LLMQ_GIVE_UP_MS (ms,
    or a duration such as 90s / 2m / 500ms; 0: never), else fallback."""
    text = os.environ.get("LLMQ_GIVE_UP_MS", "").strip()
    if not text:
        return fallback
    for unit, scale in (("ms", 0.001), ("s", 1.0), ("m", 60.0), ("h", 3600.0)):
        if text.endswith(unit) and text[:-len(unit)].replace(".", "", 1).isdigit():
            value = float(text[:-len(unit)]) * scale
            break
    else:
        value = float(text) / 1000 if text.isdigit() else fallback
    return value if value > 0 else float("inf")


def read_cert(path: str) -> Tuple[str, Optional[str]]:
    """(public key, secret key or None) of a CZMQ zcert file (ZPL text)."""
    public: Optional[str] = None
    secret: Optional[str] = None
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, sep, value = line.strip().partition("=")
            if not sep:
                continue
            value = value.strip().strip('"')
            if key.strip() == "public-key":
                public = value
            elif key.strip() == "secret-key":
                secret = value
    if public is None or len(public) != 40:
        raise ValueError("%s: no curve public-key in this certificate" % path)
    if secret is not None and len(secret) != 40:
        raise ValueError("%s: malformed curve secret-key" % path)
    return public, secret


def curve_keys(curve_cert: Optional[str],
               broker_key: Optional[str]) -> Optional[Tuple[str, str, str]]:
    """(broker public, own public, own secret) Z85 keys, or None without
    CURVE. curve_cert: our secret cert file (NAME_secret; NAME works when
    NAME_secret exists); broker_key: 40-char Z85 or the broker's public
    cert file; both or neither (PROTOCOL.md 1.1). Defaults:
    $LLMQ_CURVE_CERT, $LLMQ_BROKER_KEY."""
    cert = curve_cert if curve_cert is not None else os.environ.get("LLMQ_CURVE_CERT")
    bkey = broker_key if broker_key is not None else os.environ.get("LLMQ_BROKER_KEY")
    if not cert and not bkey:
        return None
    if not bkey:
        raise ValueError("CURVE: curve_cert given but no broker_key (or LLMQ_BROKER_KEY)")
    if not cert:
        raise ValueError("CURVE: broker_key given but no curve_cert (or LLMQ_CURVE_CERT)")
    server = bkey if len(bkey) == 40 and not os.path.exists(bkey) else read_cert(bkey)[0]
    public, secret = read_cert(cert)
    if secret is None and os.path.exists(cert + "_secret"):
        public, secret = read_cert(cert + "_secret")
    if secret is None:
        raise ValueError("CURVE: %s has no secret-key (pass the NAME_secret file)" % cert)
    return server, public, secret


def chat_body(messages: Messages, params: Mapping[str, Any]) -> Dict[str, Any]:
    if isinstance(messages, str):
        msgs: List[Any] = [{"role": "user", "content": messages}]
    else:
        msgs = [dict(m) for m in messages]
    body = dict(params)
    body["messages"] = msgs
    return body


def decode(frame: bytes) -> Any:
    return msgpack.unpackb(frame, raw=False, strict_map_key=False)


class Req:
    """One outstanding request."""
    __slots__ = ("id", "op", "model", "header", "payload", "stream", "sent", "expires",
                 "resends", "seq", "attempt", "yielded", "pieces", "result", "error", "done",
                 "notify", "mark")

    def __init__(self, rid: str, op: str, model: str, header: Header, payload: bytes,
                 stream: bool, timeout: Optional[float]) -> None:
        self.id = rid
        self.op = op
        self.model = model
        self.header = header
        self.payload = payload
        self.stream = stream
        self.sent = time.monotonic()
        self.expires = None if timeout is None else self.sent + timeout + GRACE
        self.resends = 0
        self.seq = -1
        self.attempt = 0
        self.yielded = False
        self.pieces: Deque[str] = collections.deque()
        self.result: Optional[Result] = None
        self.error: Optional[LlmqError] = None
        self.done = False
        self.notify: Optional[Callable[[], None]] = None
        self.mark = 0           # submission number, for the pong's `pending`

    def outcome(self) -> Result:
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class Core:
    """State of one client connection, without any I/O wait."""

    def __init__(self, endpoint: Optional[str], timeout: Optional[float],
                 broker_timeout: Optional[float], heartbeat: float, liveness: float,
                 curve_cert: Optional[str], broker_key: Optional[str],
                 routing_id: Optional[str]) -> None:
        self.endpoint = resolve_endpoint(endpoint)
        self.timeout = timeout
        self.broker_timeout = give_up_default() if broker_timeout is None else float(broker_timeout)
        self.heartbeat = float(heartbeat)
        self.liveness = max(float(liveness), self.heartbeat)
        self.curve = curve_keys(curve_cert, broker_key)
        rid = routing_id or "llmq-py-" + os.urandom(8).hex()
        self.routing_id = rid.encode()
        self.pending: Dict[str, Req] = {}
        self.inbox: Deque[Tuple[Header, Optional[bytes]]] = collections.deque(maxlen=4096)
        self.outbox: Deque[Frames] = collections.deque()
        self.on_inbox: Optional[Callable[[], None]] = None
        self.next_id = 0
        now = time.monotonic()
        self.last_recv = self.last_heard = now
        self.last_ping = 0.0
        self.submitted = 0      # requests submitted so far
        self.ping_mark = 0      # submitted when the last ping went out
        self.pings_out = 0      # pings not yet answered
        self.last_reconnect = 0.0
        self.last_scan = 0.0
        self.dropped = False
        self.auth_failed = False
        self.reconnects = 0
        self.resent = 0
        self.closed = False

    # -- sockets -----------------------------------------------------------
    def open_socket(self, ctx: "zmq.Context[Any]") -> Tuple[Any, Any]:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.ROUTING_ID, self.routing_id)
        s.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SNDHWM, 100000)
        s.setsockopt(zmq.RCVHWM, 100000)
        if self.curve is not None:
            server, public, secret = self.curve
            s.setsockopt(zmq.CURVE_SERVERKEY, server.encode())
            s.setsockopt(zmq.CURVE_PUBLICKEY, public.encode())
            s.setsockopt(zmq.CURVE_SECRETKEY, secret.encode())
        # A restarted broker answers pings but has forgotten our requests:
        # a dropped connection, not silence, is what tells us.
        events = zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_FAILED_AUTH
        mon = s.get_monitor_socket(events)
        s.connect(self.endpoint)
        return s, mon

    def on_monitor(self, msg: Frames) -> None:
        try:
            event = parse_monitor_message(msg)["event"]
        except Exception:
            return
        if event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self.auth_failed = True
        elif event == zmq.EVENT_DISCONNECTED and self.pending:
            self.dropped = True

    def flush(self, sock: "zmq.Socket[Any]") -> None:
        while self.outbox:
            try:
                sock.send_multipart(self.outbox.popleft(), flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                pass    # the next reconnect resends requests; control calls retry

    def send(self, header: Header, payload: Optional[bytes] = None) -> None:
        h = dict(header)
        h["v"] = PROTOCOL_VERSION
        frames = [msgpack.packb(h, use_bin_type=True)]
        if payload is not None:
            frames.append(payload)
        self.outbox.append(frames)

    # -- requests ----------------------------------------------------------
    def submit_call(self, op: str, model: str, body: Any, stream: bool, timeout: Any,
                    kw: Dict[str, Any]) -> Req:
        """submit() for the clients' calls: timeout DEFAULT is the client's."""
        return self.submit(op, model, body, stream=stream,
                           timeout=self.timeout if timeout is DEFAULT else timeout, **kw)

    def submit(self, op: str, model: str, body: Any, *, stream: bool = False,
               timeout: Optional[float] = None, request_id: Optional[str] = None,
               pool: Optional[str] = None, priority: Optional[int] = None,
               meta: Any = None, header: Optional[Mapping[str, Any]] = None) -> Req:
        if op not in OPS:
            raise ValueError("op must be one of %s" % (OPS,))
        if not model:
            raise ValueError("model is required")
        if self.closed:
            raise LlmqError("client is closed", code="internal")
        h: Header = {"t": "req", "op": op, "model": model}
        if header:
            h.update({k: v for k, v in header.items() if v is not None})
        for key, value in (("pool", pool), ("priority", priority), ("meta", meta)):
            if value is not None:
                h[key] = value
        if stream:
            h["stream"] = True
        if timeout is not None and "deadline_ms" not in h:
            h["deadline_ms"] = max(1, int(timeout * 1000))
        if request_id is None:
            self.next_id += 1
            request_id = "p%d" % self.next_id
        if request_id in self.pending:
            raise ValueError("request id %r is already outstanding" % request_id)
        h["id"] = request_id
        payload = msgpack.packb(body, use_bin_type=True)
        if len(payload) > MAX_BODY:
            # a broker drops a frame over the limit with the connection, and
            # every resend would do the same (PROTOCOL.md 3.1, 8)
            raise InvalidRequest("request body of %d bytes is over the %d-byte frame limit"
                                 % (len(payload), MAX_BODY))
        req = Req(request_id, op, model, h, payload, stream, timeout)
        self.submitted += 1
        req.mark = self.submitted
        idle = not self.pending
        if idle:
            self.last_recv = self.last_heard = req.sent
        self.pending[request_id] = req
        self.send_req(req)
        if idle:
            self.ping(req.sent)   # work outstanding: heartbeat from now on
        return req

    def send_req(self, req: Req, resend: bool = False) -> None:
        h = req.header
        if "deadline_ms" in h or resend:
            h = dict(h)
        if "deadline_ms" in h:
            left = h["deadline_ms"] - int((time.monotonic() - req.sent) * 1000)
            h["deadline_ms"] = max(1, left)
        if resend:
            # PROTOCOL.md 3.3: a resend is marked, so a broker that restarted
            # can attach it to the worker that still holds it; a stream says
            # which chunks it has seen.
            h["resend"] = True
            if req.stream and req.seq >= 0:
                h["seq"] = req.seq
        self.send(h, req.payload)

    def cancel(self, request_id: str) -> None:
        if request_id in self.pending:
            self.send({"t": "cancel", "id": request_id})

    def finish(self, req: Req, result: Optional[Result], error: Optional[LlmqError]) -> None:
        if req.done:
            return
        self.pending.pop(req.id, None)
        req.result, req.error, req.done = result, error, True
        if req.notify is not None:
            req.notify()

    def take_replies(self, match: Callable[[Header], bool], n: int,
                     got: List[Tuple[Header, Optional[bytes]]]) -> bool:
        """Move the inbox's messages that match into got (an error reply
        raises); True once got holds n."""
        while self.inbox:
            h, p = self.inbox.popleft()
            if not match(h):
                continue
            if h.get("t") == "error":
                raise error_from(h)
            got.append((h, p))
            if len(got) == n:
                return True
        return False

    # -- input -------------------------------------------------------------
    def read_all(self, sock: Any) -> None:
        """Handle every message waiting on sock (a plain, non-blocking read)."""
        while True:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.on_frames(frames)

    def on_frames(self, frames: Frames) -> None:
        self.last_recv = self.last_heard = time.monotonic()
        if not 1 <= len(frames) <= 2:
            return
        try:
            header = decode(frames[0])
        except Exception:
            return      # not ours to crash on: drop it
        if not isinstance(header, dict) or header.get("v") != PROTOCOL_VERSION:
            return
        payload = frames[1] if len(frames) > 1 else None
        t = header.get("t")
        if t == "res":
            self._on_res(header, payload)
        elif t == "chunk":
            self._on_chunk(header, payload)
        elif t == "pong":
            self._on_pong(header)
            self.inbox.append((header, payload))
            if self.on_inbox is not None:
                self.on_inbox()
        elif t == "error" and isinstance(header.get("id"), str) and header["id"] in self.pending:
            req = self.pending[header["id"]]
            self.finish(req, None, error_from(header, req.id))
        else:
            self.inbox.append((header, payload))
            if self.on_inbox is not None:
                self.on_inbox()

    def _on_res(self, h: Header, payload: Optional[bytes]) -> None:
        req = self.pending.get(h.get("id"))  # type: ignore[arg-type]
        if req is None:
            return      # a duplicate, or for a request we gave up on
        if not h.get("ok"):
            err = h.get("error") if isinstance(h.get("error"), Mapping) else None
            self.finish(req, None, error_from(err, req.id))
            return
        try:
            body = decode(payload) if payload else None
        except Exception:
            self.finish(req, None, error_from({"code": "internal",
                                               "message": "bad response body"}, req.id))
            return
        res = Result(req.id, req.op, req.model, body, Usage.from_wire(h.get("usage")),
                     int(h.get("latency_ms") or 0), int(h.get("attempts") or 0),
                     int(h.get("attempt") or 0), h.get("worker"), bool(h.get("cached")),
                     h.get("meta"), time.monotonic() - req.sent)
        self.finish(req, res, None)

    def _on_chunk(self, h: Header, payload: Optional[bytes]) -> None:
        req = self.pending.get(h.get("id"))  # type: ignore[arg-type]
        if req is None or not req.stream or payload is None:
            return
        seq = h.get("seq") if isinstance(h.get("seq"), int) else 0
        attempt = h.get("attempt") if isinstance(h.get("attempt"), int) else 0
        assert isinstance(seq, int) and isinstance(attempt, int)
        if seq <= req.seq or (attempt and req.attempt and attempt != req.attempt):
            # A new dispatch attempt restarted the stream: never splice.
            if req.yielded:
                self.cancel(req.id)
                self.finish(req, None, StreamInterrupted(
                    "the stream restarted after its worker died; send the request again",
                    request_id=req.id))
                return
            req.pieces.clear()
        req.seq = seq
        req.attempt = attempt or req.attempt
        try:
            piece = delta_of(decode(payload))
        except Exception:
            return
        if piece:
            req.pieces.append(piece)
            if req.notify is not None:
                req.notify()

    # -- timers ------------------------------------------------------------
    def tick(self) -> bool:
        """Run the timers; True when the caller must reconnect."""
        if not self.pending:
            self.dropped = False
            return False
        now = time.monotonic()
        if now - self.last_scan >= 0.1:     # the timeout scan is O(pending): 10 times a second
            self.last_scan = now
            for req in [r for r in self.pending.values()
                        if r.expires is not None and now >= r.expires]:
                self.cancel(req.id)
                self.finish(req, None, Timeout("no answer within the client's timeout",
                                               request_id=req.id))
        if self.auth_failed:
            self.fail_all(AuthError("the broker refused this client's CURVE key", code="auth"))
            return False
        if now - self.last_heard >= self.broker_timeout:
            self.fail_all(Unavailable("broker unreachable: no answer from %s for %.0f s"
                                      % (self.endpoint, self.broker_timeout)))
            return False
        silent = now - self.last_recv
        if self.dropped and now - self.last_reconnect >= self.heartbeat:
            return True
        if silent >= self.liveness:
            return True
        if now - self.last_ping >= self.heartbeat:
            # answers flowing or not: the broker must hear from us while we
            # wait, or it takes us for gone and drops our work (PROTOCOL.md 3.5)
            self.ping(now)
        return False

    def ping(self, now: float) -> None:
        """A heartbeat: a ping that puts us under the broker's silence rule."""
        self.send({"t": "ping", "heartbeat": True})
        self.last_ping = now
        self.ping_mark = self.submitted
        self.pings_out += 1

    def _on_pong(self, h: Header) -> None:
        """The pong to our latest heartbeat says how many of our requests the
        broker holds; answers it sent before come before it. Waiting for more
        of those sent before that ping means the broker dropped some (it took
        us for gone, or we were slow to read): resend all outstanding, it
        ignores what it still holds (PROTOCOL.md 3.5)."""
        held = h.get("pending")
        if not isinstance(held, int) or isinstance(held, bool):
            return              # not a heartbeat's pong, or an older broker
        self.pings_out = max(0, self.pings_out - 1)
        if self.pings_out:
            return              # a later heartbeat is still unanswered
        waiting = sum(1 for r in self.pending.values() if r.mark <= self.ping_mark)
        if waiting > held:
            for req in self.pending.values():
                req.resends += 1
                self.resent += 1
                self.send_req(req, resend=True)

    def fail_all(self, err: LlmqError) -> None:
        for req in list(self.pending.values()):
            e = type(err)(err.message, code=err.code, request_id=req.id)
            self.finish(req, None, e)

    def reconnected(self) -> None:
        """After the client opened a new socket: resend everything."""
        self.dropped = False
        now = time.monotonic()
        self.last_reconnect = self.last_recv = now
        self.reconnects += 1
        self.outbox.clear()
        self.pings_out = 0      # the old socket's pongs are lost
        for req in self.pending.values():
            req.resends += 1
            self.resent += 1
            self.send_req(req, resend=True)
        self.ping(now)


class ConnectionInfo:
    """What Client and AsyncClient both report about their connection: read
    from their Core, so the twins keep one copy."""

    _core: Core

    @property
    def endpoint(self) -> str:
        return self._core.endpoint

    @property
    def reconnects(self) -> int:
        return self._core.reconnects

    @property
    def resent(self) -> int:
        return self._core.resent
