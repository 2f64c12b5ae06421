"""AsyncClient: the asyncio llmq client on zmq.asyncio. One reader task
per client pumps the socket; calls are coroutines."""
from __future__ import annotations

import asyncio
import time
from typing import (Any, AsyncIterator, Callable, Dict, List, Mapping, Optional,
                    Sequence, Tuple, Union)

import zmq
import zmq.asyncio

from . import _batch
from ._core import DEFAULT, ConnectionInfo, Core, Header, Messages, Req, chat_body, decode
from .errors import Cancelled, LlmqError, Timeout, Unavailable
from .types import BatchResult, BatchStatus, Pong, Result

_DEFAULT: Any = DEFAULT


class AsyncClient(ConnectionInfo):
    """The asyncio twin of Client (same arguments, same calls, awaited).
    Use ``async with AsyncClient(...) as c:`` or call ``await c.close()``."""

    def __init__(self, endpoint: Optional[str] = None, *, timeout: Optional[float] = 60.0,
                 broker_timeout: Optional[float] = None, concurrency: int = 256,
                 heartbeat: float = 1.0, liveness: float = 3.0,
                 curve_cert: Optional[str] = None, broker_key: Optional[str] = None,
                 routing_id: Optional[str] = None,
                 context: Optional[zmq.asyncio.Context] = None) -> None:
        self._core = Core(endpoint, timeout, broker_timeout, heartbeat, liveness,
                          curve_cert, broker_key, routing_id)
        self.concurrency = max(1, int(concurrency))
        self._ctx = context or zmq.asyncio.Context.instance()
        self._sock: Any = None
        self._mon: Any = None
        self._send_sock: Any = None
        self._reader: Optional["asyncio.Task[None]"] = None
        self._inbox_event: Optional[asyncio.Event] = None
        self._lock: Optional[asyncio.Lock] = None
        self._core.on_inbox = self._inbox_arrived
        self._connect()
        self.batches = AsyncBatches(self)

    def _connect(self) -> None:
        self._close_socket()
        self._sock, self._mon = self._core.open_socket(self._ctx)
        # Sends and non-blocking receives go through a plain socket sharing
        # the same handle: no future per message.
        self._send_sock = zmq.Socket.shadow(self._sock.underlying)

    def _close_socket(self) -> None:
        if self._sock is not None:
            try:
                self._sock.disable_monitor()
            except zmq.ZMQError:
                pass
            self._mon.close(linger=0)
            self._sock.close(linger=0)
            self._sock = self._mon = self._send_sock = None

    async def close(self) -> None:
        self._core.closed = True
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):
                pass
            self._reader = None
        self._close_socket()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _inbox_arrived(self) -> None:
        if self._inbox_event is not None:
            self._inbox_event.set()

    def _start(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._run())
        self._core.flush(self._send_sock)

    async def _run(self) -> None:
        core = self._core
        while not core.closed:
            poller = zmq.asyncio.Poller()
            sock, mon = self._sock, self._mon
            poller.register(sock, zmq.POLLIN)
            poller.register(mon, zmq.POLLIN)
            while sock is self._sock and not core.closed:
                # Sends go through the plain shadow socket, which may consume
                # the edge of ZMQ_FD: ask ZMQ_EVENTS before waiting on it.
                if self._send_sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
                    events = {sock: zmq.POLLIN}
                    await asyncio.sleep(0)
                else:
                    events = dict(await poller.poll(int(core.heartbeat * 250)))
                if mon in events:
                    while True:
                        try:
                            core.on_monitor(await mon.recv_multipart(zmq.NOBLOCK))
                        except zmq.Again:
                            break
                if sock in events:
                    core.read_all(self._send_sock)
                if core.tick():
                    self._reconnect()
                core.flush(self._send_sock)

    def _reconnect(self) -> None:
        self._connect()
        self._core.reconnected()
        self._core.flush(self._send_sock)

    # -- requests ----------------------------------------------------------
    def _submit(self, op: str, model: str, body: Any, stream: bool, timeout: Any,
                kw: Dict[str, Any]) -> Req:
        req = self._core.submit_call(op, model, body, stream, timeout, kw)
        self._start()
        return req

    async def _wait(self, req: Req) -> Result:
        if not req.done:
            fut: "asyncio.Future[None]" = asyncio.get_running_loop().create_future()

            def wake() -> None:
                if req.done and not fut.done():
                    fut.set_result(None)
            req.notify = wake
            try:
                await fut
            except asyncio.CancelledError:
                self.cancel(req.id)
                self._core.finish(req, None, Cancelled("call cancelled", request_id=req.id))
                raise
        return req.outcome()

    async def infer(self, op: str, model: str, body: Mapping[str, Any], *,
                    timeout: Optional[float] = _DEFAULT, request_id: Optional[str] = None,
                    pool: Optional[str] = None, priority: Optional[int] = None,
                    meta: Any = None, header: Optional[Mapping[str, Any]] = None) -> Result:
        """One request; returns its Result or raises an LlmqError. Cancelling
        the awaiting task cancels the request at the broker."""
        return await self._wait(self._submit(op, model, body, False, timeout, dict(
            request_id=request_id, pool=pool, priority=priority, meta=meta, header=header)))

    async def chat(self, model: str, messages: Messages, *,
                   timeout: Optional[float] = _DEFAULT, request_id: Optional[str] = None,
                   pool: Optional[str] = None, priority: Optional[int] = None,
                   meta: Any = None, header: Optional[Mapping[str, Any]] = None,
                   **params: Any) -> Result:
        return await self.infer("chat", model, chat_body(messages, params), timeout=timeout,
                                request_id=request_id, pool=pool, priority=priority,
                                meta=meta, header=header)

    async def complete(self, model: str, prompt: str, *, timeout: Optional[float] = _DEFAULT,
                       request_id: Optional[str] = None, pool: Optional[str] = None,
                       priority: Optional[int] = None, meta: Any = None,
                       header: Optional[Mapping[str, Any]] = None, **params: Any) -> Result:
        return await self.infer("completion", model, dict(params, prompt=prompt),
                                timeout=timeout, request_id=request_id, pool=pool,
                                priority=priority, meta=meta, header=header)

    async def embed(self, model: str, input: Union[str, Sequence[str]], *,
                    timeout: Optional[float] = _DEFAULT, request_id: Optional[str] = None,
                    pool: Optional[str] = None, priority: Optional[int] = None,
                    meta: Any = None, header: Optional[Mapping[str, Any]] = None,
                    **params: Any) -> Result:
        body = dict(params, input=input if isinstance(input, str) else list(input))
        return await self.infer("embedding", model, body, timeout=timeout,
                                request_id=request_id, pool=pool, priority=priority,
                                meta=meta, header=header)

    def stream(self, model: str, messages: Messages, *, timeout: Optional[float] = _DEFAULT,
               request_id: Optional[str] = None, pool: Optional[str] = None,
               priority: Optional[int] = None, meta: Any = None,
               header: Optional[Mapping[str, Any]] = None, **params: Any) -> "AsyncStream":
        """Streaming chat: ``async for piece in client.stream(...)``; the
        stream's .result holds the final Result afterwards."""
        return AsyncStream(self, lambda: self._submit(
            "chat", model, chat_body(messages, params), True, timeout,
            dict(request_id=request_id, pool=pool, priority=priority, meta=meta,
                 header=header)))

    async def infer_many(self, op: str, model: str, bodies: Sequence[Mapping[str, Any]], *,
                         concurrency: Optional[int] = None,
                         timeout: Optional[float] = _DEFAULT,
                         return_exceptions: bool = False, pool: Optional[str] = None,
                         priority: Optional[int] = None,
                         header: Optional[Mapping[str, Any]] = None) -> List[Any]:
        """Every body, at most `concurrency` in flight; Results in input
        order (see Client.infer_many)."""
        window = max(1, concurrency or self.concurrency)
        out: List[Any] = [None] * len(bodies)
        nxt = 0
        first_error: List[LlmqError] = []
        loop = asyncio.get_running_loop()
        all_done: "asyncio.Future[None]" = loop.create_future()
        live = 0

        def launch() -> None:
            nonlocal nxt, live
            while nxt < len(bodies) and live < window:
                i = nxt
                nxt += 1
                req = self._submit(op, model, bodies[i], False, timeout, dict(
                    pool=pool, priority=priority, header=header))
                live += 1
                req.notify = (lambda r, i: lambda: finished(r, i))(req, i)
                if req.done:
                    finished(req, i)

        def finished(req: Req, i: int) -> None:
            nonlocal live
            if not req.done or out[i] is not None:
                return
            live -= 1
            out[i] = req.result if req.error is None else req.error
            if req.error is not None and not first_error:
                first_error.append(req.error)
            if nxt < len(bodies):
                launch()
            elif live == 0 and not all_done.done():
                all_done.set_result(None)

        if not bodies:
            return out
        launch()
        try:
            await all_done
        except asyncio.CancelledError:
            for r in list(self._core.pending.values()):
                self.cancel(r.id)
            raise
        if first_error and not return_exceptions:
            raise first_error[0]
        return out

    def cancel(self, request_id: str) -> None:
        """Cancel an outstanding request: its call raises Cancelled."""
        self._core.cancel(request_id)
        if self._send_sock is not None:
            self._core.flush(self._send_sock)

    # -- control -----------------------------------------------------------
    async def _exchange(self, header: Header, payload: Optional[bytes],
                        match: Callable[[Header], bool], n: int = 1,
                        timeout: Optional[float] = None
                        ) -> List[Tuple[Header, Optional[bytes]]]:
        if self._lock is None:
            self._lock = asyncio.Lock()
            self._inbox_event = asyncio.Event()
        async with self._lock:
            return await self._exchange_locked(header, payload, match, n, timeout)

    async def _exchange_locked(self, header: Header, payload: Optional[bytes],
                               match: Callable[[Header], bool], n: int,
                               timeout: Optional[float]) -> List[Tuple[Header, Optional[bytes]]]:
        core = self._core
        event = self._inbox_event
        assert event is not None
        deadline = time.monotonic() + (timeout or core.broker_timeout)
        while True:
            core.inbox.clear()
            core.send(header, payload)
            self._start()
            got: List[Tuple[Header, Optional[bytes]]] = []
            try_until = min(deadline, time.monotonic() + core.liveness)
            while time.monotonic() < try_until:
                event.clear()
                if core.take_replies(match, n, got):
                    return got
                try:
                    await asyncio.wait_for(event.wait(), try_until - time.monotonic())
                except asyncio.TimeoutError:
                    pass
            if time.monotonic() >= deadline:
                raise Unavailable("broker unreachable: no answer from %s" % core.endpoint)
            self._reconnect()

    async def ping(self, timeout: Optional[float] = None) -> Pong:
        h, _ = (await self._exchange({"t": "ping"}, None, lambda h: h.get("t") == "pong",
                                     timeout=timeout))[0]
        return Pong(str(h.get("broker", "")), str(h.get("version", "")),
                    int(h.get("time_ms") or 0))

    async def status(self, timeout: Optional[float] = None) -> Dict[str, Any]:
        _, p = (await self._exchange({"t": "status"}, None, lambda h: h.get("t") == "status",
                                     timeout=timeout))[0]
        value = decode(p) if p else {}
        return value if isinstance(value, dict) else {}


class AsyncStream:
    """``async for piece in stream``; .result and .text as for Stream."""

    def __init__(self, client: AsyncClient, start: Callable[[], Req]) -> None:
        self._client = client
        self._start = start
        self._req: Optional[Req] = None
        self.result: Optional[Result] = None
        self._parts: List[str] = []

    @property
    def text(self) -> str:
        return "".join(self._parts)

    def __aiter__(self) -> AsyncIterator[str]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[str]:
        req = self._req = self._start()
        event = asyncio.Event()
        req.notify = event.set
        try:
            while True:
                while req.pieces:
                    req.yielded = True
                    piece = req.pieces.popleft()
                    self._parts.append(piece)
                    yield piece
                if req.done:
                    break
                event.clear()
                if not req.pieces and not req.done:
                    await event.wait()
            self.result = req.outcome()
        finally:
            if not req.done:
                self._client.cancel(req.id)
                self._client._core.finish(req, None, Cancelled("stream abandoned",
                                                               request_id=req.id))


class AsyncBatches:
    """Durable batches (PROTOCOL.md section 7): client.batches."""

    def __init__(self, client: AsyncClient) -> None:
        self._c = client

    async def submit(self, model: str, items: Sequence[Any], *, mode: str = "auto",
                     op: str = "chat", batch_id: Optional[str] = None,
                     pool: Optional[str] = None, completion_window: Optional[str] = None,
                     priority: Optional[int] = None) -> str:
        batch = batch_id or _batch.new_batch_id()
        await self._c._exchange(_batch.open_header(batch, model, mode, op, pool,
                                                   completion_window, priority),
                                None, _batch.is_ack(batch))
        for seq, payload in enumerate(_batch.add_payloads(_batch.normalize(items)), 1):
            await self._c._exchange({"t": "batch.add", "batch": batch, "seq": seq}, payload,
                                    _batch.is_ack(batch, "seq", seq))
        await self._c._exchange({"t": "batch.close", "batch": batch}, None,
                                _batch.is_ack(batch, "count"))
        return batch

    async def _get(self, batch: str, after: Optional[int]
                   ) -> Tuple[BatchStatus, List[BatchResult], int, bool]:
        h: Header = {"t": "batch.get", "batch": batch}
        if after is not None:
            h["after"] = after
        return _batch.page(await self._c._exchange(h, None, _batch.is_get_reply(batch), n=2))

    async def status(self, batch: str) -> BatchStatus:
        return (await self._get(batch, _batch.AFTER_END))[0]

    async def results(self, batch: str) -> List[BatchResult]:
        out: List[BatchResult] = []
        after: Optional[int] = None
        while True:
            _, page, cursor, final = await self._get(batch, after)
            out.extend(page)
            if final or not page:
                return out
            after = cursor

    async def cancel(self, batch: str) -> BatchStatus:
        h, _ = (await self._c._exchange({"t": "batch.cancel", "batch": batch}, None,
                                        _batch.is_status(batch)))[0]
        return BatchStatus.from_wire(h)

    async def wait(self, batch: str, *, timeout: Optional[float] = None,
                   poll_interval: float = 0.5) -> BatchStatus:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            st = await self.status(batch)
            if st.done:
                return st
            if deadline is not None and time.monotonic() >= deadline:
                raise Timeout("batch %s still %s" % (batch, st.state))
            await asyncio.sleep(poll_interval)


