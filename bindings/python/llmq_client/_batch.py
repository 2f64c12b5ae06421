"""Batch messages (proto/PROTOCOL.md section 7.1), shared by both clients."""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple

import msgpack

from .types import BatchResult, BatchStatus

Header = Dict[str, Any]
Match = Callable[[Header], bool]
ADD_ITEMS = 1000
ADD_BYTES = 4 * 1024 * 1024
AFTER_END = 1 << 62     # an `after` beyond the end: a status poll


def new_batch_id() -> str:
    return "py-" + os.urandom(8).hex()


def normalize(items: Iterable[Any]) -> List[Dict[str, Any]]:
    """Items are {custom_id, body} maps, or bare request bodies (custom_id
    becomes the index)."""
    out = []
    for i, item in enumerate(items):
        if isinstance(item, Mapping) and "body" in item and "custom_id" in item:
            out.append({"custom_id": str(item["custom_id"]), "body": item["body"]})
        else:
            out.append({"custom_id": str(i), "body": item})
    return out


def add_payloads(items: List[Dict[str, Any]]) -> List[bytes]:
    """The items cut into batch.add payloads of <= ADD_ITEMS items and
    about ADD_BYTES each."""
    out: List[bytes] = []
    part: List[bytes] = []
    size = 0
    for item in items:
        packed = msgpack.packb(item, use_bin_type=True)
        if part and (len(part) >= ADD_ITEMS or size + len(packed) > ADD_BYTES):
            out.append(_array(part))
            part, size = [], 0
        part.append(packed)
        size += len(packed)
    if part:
        out.append(_array(part))
    return out


def _array(packed: List[bytes]) -> bytes:
    n = len(packed)
    head = bytes([0x90 | n]) if n < 16 else (b"\xdc" + n.to_bytes(2, "big") if n < 65536
                                            else b"\xdd" + n.to_bytes(4, "big"))
    return head + b"".join(packed)


def open_header(batch: str, model: str, mode: str, op: str, pool: Optional[str],
                completion_window: Optional[str], priority: Optional[int]) -> Header:
    h: Header = {"t": "batch.open", "batch": batch, "mode": mode, "model": model, "op": op}
    for k, v in (("pool", pool), ("completion_window", completion_window),
                 ("priority", priority)):
        if v is not None:
            h[k] = v
    return h


def is_ack(batch: str, key: Optional[str] = None, value: Any = None) -> Match:
    def match(h: Header) -> bool:
        if h.get("batch") != batch or h.get("t") not in ("batch.ack", "error"):
            return False
        return h.get("t") == "error" or key is None or (
            key in h and (value is None or h[key] == value))
    return match


def is_status(batch: str) -> Match:
    return lambda h: h.get("batch") == batch and h.get("t") in ("batch.status", "error")


def is_get_reply(batch: str) -> Match:
    return lambda h: h.get("batch") == batch and h.get("t") in (
        "batch.status", "batch.results", "error")


def page(replies: List[Tuple[Header, Optional[bytes]]]) -> Tuple[BatchStatus, List[BatchResult],
                                                                  int, bool]:
    """(status, results, cursor, final) of a batch.get's two replies."""
    status_h = next(h for h, _ in replies if h.get("t") == "batch.status")
    res_h, payload = next((h, p) for h, p in replies if h.get("t") == "batch.results")
    raw = msgpack.unpackb(payload, raw=False, strict_map_key=False) if payload else []
    results = [BatchResult.from_wire(r) for r in raw] if isinstance(raw, list) else []
    return (BatchStatus.from_wire(status_h), results, int(res_h.get("cursor") or 0),
            bool(res_h.get("final")))
