"""Client: the synchronous llmq client (one DEALER socket, pumped by the
calling thread). Not thread-safe: use one Client per thread."""
from __future__ import annotations

import time
from typing import (Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple,
                    Union)

import zmq

from . import _batch
from ._core import DEFAULT, ConnectionInfo, Core, Header, Messages, Req, chat_body
from .errors import Cancelled, LlmqError, Unavailable
from .types import BatchResult, BatchStatus, Pong, Result

_DEFAULT: Any = DEFAULT


class Client(ConnectionInfo):
    """A connection to an llmq broker's frontend.

    endpoint: ``tcp://host:5555`` (default $LLMQ_ENDPOINT, else
    tcp://127.0.0.1:5555). timeout: seconds a request may take (sent to the
    broker as its deadline; None: no limit). broker_timeout: seconds of
    broker silence after which outstanding calls raise Unavailable (default
    $LLMQ_GIVE_UP_MS, else 30 s).
    concurrency: requests infer_many keeps in flight. curve_cert /
    broker_key: CURVE (default $LLMQ_CURVE_CERT / $LLMQ_BROKER_KEY)."""

    def __init__(self, endpoint: Optional[str] = None, *, timeout: Optional[float] = 60.0,
                 broker_timeout: Optional[float] = None, concurrency: int = 256,
                 heartbeat: float = 1.0, liveness: float = 3.0,
                 curve_cert: Optional[str] = None, broker_key: Optional[str] = None,
                 routing_id: Optional[str] = None,
                 context: Optional["zmq.Context[Any]"] = None) -> None:
        self._core = Core(endpoint, timeout, broker_timeout, heartbeat, liveness,
                          curve_cert, broker_key, routing_id)
        self.concurrency = max(1, int(concurrency))
        self._ctx: "zmq.Context[Any]" = context or zmq.Context.instance()
        self._sock: Any = None
        self._mon: Any = None
        self._poller = zmq.Poller()
        self._connect()
        self.batches = Batches(self)

    # -- socket ------------------------------------------------------------
    def _connect(self) -> None:
        self._close_socket()
        self._sock, self._mon = self._core.open_socket(self._ctx)
        self._poller = zmq.Poller()
        self._poller.register(self._sock, zmq.POLLIN)
        self._poller.register(self._mon, zmq.POLLIN)

    def _close_socket(self) -> None:
        if self._sock is not None:
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self._mon.close(linger=0)
            self._sock.close(linger=0)
            self._sock = self._mon = None

    def close(self) -> None:
        """Close the socket; outstanding calls are abandoned."""
        self._core.closed = True
        self._close_socket()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _pump(self, wait: float) -> None:
        """Wait up to `wait` seconds for input, handle it, run the timers."""
        core = self._core
        core.flush(self._sock)
        wait = max(0.0, min(wait, core.heartbeat / 4))
        events = dict(self._poller.poll(int(wait * 1000)))
        if self._mon in events:
            while True:
                try:
                    core.on_monitor(self._mon.recv_multipart(zmq.NOBLOCK))
                except zmq.Again:
                    break
        if self._sock in events:
            core.read_all(self._sock)
        if core.tick():
            self._reconnect()
        core.flush(self._sock)

    def _reconnect(self) -> None:
        """Lazy pirate: a new socket, the same identity, resend everything."""
        self._connect()
        self._core.reconnected()

    def _wait(self, req: Req) -> Result:
        while not req.done:
            self._pump(1.0)
        return req.outcome()

    # -- requests ----------------------------------------------------------
    def _submit(self, op: str, model: str, body: Any, stream: bool, timeout: Any,
                kw: Dict[str, Any]) -> Req:
        req = self._core.submit_call(op, model, body, stream, timeout, kw)
        self._core.flush(self._sock)
        return req

    def infer(self, op: str, model: str, body: Mapping[str, Any], *,
              timeout: Optional[float] = _DEFAULT, request_id: Optional[str] = None,
              pool: Optional[str] = None, priority: Optional[int] = None, meta: Any = None,
              header: Optional[Mapping[str, Any]] = None) -> Result:
        """One request (op: chat, completion or embedding) with an
        OpenAI-style body; returns its Result or raises an LlmqError."""
        return self._wait(self._submit(op, model, body, False, timeout, dict(
            request_id=request_id, pool=pool, priority=priority, meta=meta, header=header)))

    def chat(self, model: str, messages: Messages, *, timeout: Optional[float] = _DEFAULT,
             request_id: Optional[str] = None, pool: Optional[str] = None,
             priority: Optional[int] = None, meta: Any = None,
             header: Optional[Mapping[str, Any]] = None, **params: Any) -> Result:
        """Chat completion. messages: a list of {role, content} or one user
        message as a string; params go into the body (max_tokens, ...)."""
        return self.infer("chat", model, chat_body(messages, params), timeout=timeout,
                          request_id=request_id, pool=pool, priority=priority, meta=meta,
                          header=header)

    def complete(self, model: str, prompt: str, *, timeout: Optional[float] = _DEFAULT,
                 request_id: Optional[str] = None, pool: Optional[str] = None,
                 priority: Optional[int] = None, meta: Any = None,
                 header: Optional[Mapping[str, Any]] = None, **params: Any) -> Result:
        """Text completion of a prompt."""
        return self.infer("completion", model, dict(params, prompt=prompt), timeout=timeout,
                          request_id=request_id, pool=pool, priority=priority, meta=meta,
                          header=header)

    def embed(self, model: str, input: Union[str, Sequence[str]], *,
              timeout: Optional[float] = _DEFAULT, request_id: Optional[str] = None,
              pool: Optional[str] = None, priority: Optional[int] = None, meta: Any = None,
              header: Optional[Mapping[str, Any]] = None, **params: Any) -> Result:
        """Embeddings of one text or a list (Result.embeddings)."""
        body = dict(params, input=input if isinstance(input, str) else list(input))
        return self.infer("embedding", model, body, timeout=timeout, request_id=request_id,
                          pool=pool, priority=priority, meta=meta, header=header)

    def stream(self, model: str, messages: Messages, *, timeout: Optional[float] = _DEFAULT,
               request_id: Optional[str] = None, pool: Optional[str] = None,
               priority: Optional[int] = None, meta: Any = None,
               header: Optional[Mapping[str, Any]] = None, **params: Any) -> "Stream":
        """Streaming chat: iterate the returned Stream for text pieces; its
        .result holds the final Result afterwards."""
        req = self._submit("chat", model, chat_body(messages, params), True, timeout, dict(
            request_id=request_id, pool=pool, priority=priority, meta=meta, header=header))
        return Stream(self, req)

    def infer_many(self, op: str, model: str, bodies: Sequence[Mapping[str, Any]], *,
                   concurrency: Optional[int] = None, timeout: Optional[float] = _DEFAULT,
                   return_exceptions: bool = False, pool: Optional[str] = None,
                   priority: Optional[int] = None,
                   header: Optional[Mapping[str, Any]] = None) -> List[Any]:
        """Every body, at most `concurrency` in flight; the Results in input
        order. A failure raises (the first one, after all finished) unless
        return_exceptions: then the LlmqError takes its place in the list."""
        window = max(1, concurrency or self.concurrency)
        out: List[Any] = [None] * len(bodies)
        live: Dict[int, Req] = {}
        first_error: Optional[LlmqError] = None
        nxt = 0
        while nxt < len(bodies) or live:
            while nxt < len(bodies) and len(live) < window:
                live[nxt] = self._submit(op, model, bodies[nxt], False, timeout, dict(
                    pool=pool, priority=priority, header=header))
                nxt += 1
            self._pump(1.0)
            for i in [i for i, r in live.items() if r.done]:
                r = live.pop(i)
                out[i] = r.result if r.error is None else r.error
                if r.error is not None and first_error is None:
                    first_error = r.error
        if first_error is not None and not return_exceptions:
            raise first_error
        return out

    def cancel(self, request_id: str) -> None:
        """Cancel an outstanding request: it raises Cancelled."""
        self._core.cancel(request_id)
        self._core.flush(self._sock)

    # -- control -----------------------------------------------------------
    def _exchange(self, header: Header, payload: Optional[bytes],
                  match: Callable[[Header], bool], n: int = 1,
                  timeout: Optional[float] = None) -> List[Tuple[Header, Optional[bytes]]]:
        """Send a control message and collect n matching replies; resend on a
        new socket after `liveness` of silence (every control message is
        idempotent); Unavailable after broker_timeout."""
        core = self._core
        deadline = time.monotonic() + (timeout or core.broker_timeout)
        while True:
            core.inbox.clear()
            core.send(header, payload)
            got: List[Tuple[Header, Optional[bytes]]] = []
            try_until = min(deadline, time.monotonic() + core.liveness)
            while time.monotonic() < try_until:
                self._pump(try_until - time.monotonic())
                if core.take_replies(match, n, got):
                    return got
            if time.monotonic() >= deadline:
                raise Unavailable("broker unreachable: no answer from %s" % core.endpoint)
            self._reconnect()

    def ping(self, timeout: Optional[float] = None) -> Pong:
        """The broker's name, version and clock; Unavailable if it is silent."""
        h, _ = self._exchange({"t": "ping"}, None, lambda h: h.get("t") == "pong",
                              timeout=timeout)[0]
        return Pong(str(h.get("broker", "")), str(h.get("version", "")),
                    int(h.get("time_ms") or 0))

    def status(self, timeout: Optional[float] = None) -> Dict[str, Any]:
        """The broker's status map (PROTOCOL.md 5.3)."""
        _, p = self._exchange({"t": "status"}, None, lambda h: h.get("t") == "status",
                              timeout=timeout)[0]
        from ._core import decode
        value = decode(p) if p else {}
        return value if isinstance(value, dict) else {}


class Stream:
    """The text pieces of a streaming chat, as they arrive. Breaking out of
    the loop cancels the request. .result: the final Result; .text: the
    whole text so far."""

    def __init__(self, client: Client, req: Req) -> None:
        self._client = client
        self._req = req
        self.result: Optional[Result] = None
        self._parts: List[str] = []

    @property
    def id(self) -> str:
        return self._req.id

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def __iter__(self) -> Iterator[str]:
        req = self._req
        try:
            while True:
                while req.pieces:
                    req.yielded = True
                    piece = req.pieces.popleft()
                    self._parts.append(piece)
                    yield piece
                if req.done:
                    break
                self._client._pump(1.0)
            self.result = req.outcome()
        finally:
            self._abandon()

    def _abandon(self) -> None:
        req = self._req
        if not req.done:
            self._client.cancel(req.id)
            self._client._core.finish(req, None, Cancelled("stream abandoned",
                                                           request_id=req.id))

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc: object) -> None:
        self._abandon()


class Batches:
    """Durable batches (PROTOCOL.md section 7): client.batches."""

    def __init__(self, client: Client) -> None:
        self._c = client

    def submit(self, model: str, items: Sequence[Any], *, mode: str = "auto",
               op: str = "chat", batch_id: Optional[str] = None, pool: Optional[str] = None,
               completion_window: Optional[str] = None,
               priority: Optional[int] = None) -> str:
        """Open a batch, add every item ({custom_id, body}, or a bare body
        whose custom_id becomes its index), close it; returns the batch id."""
        batch = batch_id or _batch.new_batch_id()
        self._c._exchange(_batch.open_header(batch, model, mode, op, pool, completion_window,
                                             priority), None, _batch.is_ack(batch))
        for seq, payload in enumerate(_batch.add_payloads(_batch.normalize(items)), 1):
            self._c._exchange({"t": "batch.add", "batch": batch, "seq": seq}, payload,
                              _batch.is_ack(batch, "seq", seq))
        self._c._exchange({"t": "batch.close", "batch": batch}, None,
                          _batch.is_ack(batch, "count"))
        return batch

    def _get(self, batch: str, after: Optional[int]) -> Tuple[BatchStatus, List[BatchResult],
                                                              int, bool]:
        h: Header = {"t": "batch.get", "batch": batch}
        if after is not None:
            h["after"] = after
        return _batch.page(self._c._exchange(h, None, _batch.is_get_reply(batch), n=2))

    def status(self, batch: str) -> BatchStatus:
        return self._get(batch, _batch.AFTER_END)[0]

    def results(self, batch: str) -> List[BatchResult]:
        """Every finished result, in input order (all of them once the
        batch is done)."""
        out: List[BatchResult] = []
        after: Optional[int] = None
        while True:
            _, page, cursor, final = self._get(batch, after)
            out.extend(page)
            if final or not page:
                return out
            after = cursor

    def cancel(self, batch: str) -> BatchStatus:
        h, _ = self._c._exchange({"t": "batch.cancel", "batch": batch}, None,
                                 _batch.is_status(batch))[0]
        return BatchStatus.from_wire(h)

    def wait(self, batch: str, *, timeout: Optional[float] = None,
             poll_interval: float = 0.5) -> BatchStatus:
        """Poll until the batch is in a terminal state; Timeout if it is not
        within `timeout` seconds."""
        from .errors import Timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = self.status(batch)
            if st.done:
                return st
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout("batch %s still %s" % (batch, st.state))
            until = time.monotonic() + poll_interval
            while time.monotonic() < until:
                self._c._pump(until - time.monotonic())
