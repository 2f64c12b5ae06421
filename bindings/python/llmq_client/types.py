"""Result types of llmq_client (dataclasses)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional

from .errors import LlmqError, error_from

TERMINAL_STATES = ("completed", "cancelled", "expired", "failed")


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0
    cost_usd: Optional[float] = None

    @classmethod
    def from_wire(cls, m: Any) -> "Usage":
        if not isinstance(m, Mapping):
            return cls()
        cost = m.get("cost_usd")
        return cls(int(m.get("prompt_tokens") or 0), int(m.get("completion_tokens") or 0),
                   int(m.get("total_tokens") or 0),
                   float(cost) if isinstance(cost, (int, float)) else None)


def text_of(body: Any) -> Optional[str]:
    """choices[0].message.content (chat) or choices[0].text, else None."""
    try:
        choice = body["choices"][0]
    except (TypeError, KeyError, IndexError):
        return None
    if not isinstance(choice, Mapping):
        return None
    message = choice.get("message")
    if isinstance(message, Mapping) and isinstance(message.get("content"), str):
        return str(message["content"])
    text = choice.get("text")
    return text if isinstance(text, str) else None


def delta_of(chunk: Any) -> str:
    """The text of one chat.completion.chunk (or a text completion chunk)."""
    try:
        choice = chunk["choices"][0]
    except (TypeError, KeyError, IndexError):
        return ""
    if not isinstance(choice, Mapping):
        return ""
    delta = choice.get("delta")
    if isinstance(delta, Mapping) and isinstance(delta.get("content"), str):
        return str(delta["content"])
    text = choice.get("text")
    return text if isinstance(text, str) else ""


@dataclass
class Result:
    """One successful answer. body is the OpenAI-style response body."""
    id: str
    op: str
    model: str
    body: Any
    usage: Usage = field(default_factory=Usage)
    latency_ms: int = 0
    attempts: int = 0
    attempt: int = 0
    worker: Optional[str] = None
    cached: bool = False
    meta: Any = None
    elapsed: float = 0.0

    @property
    def text(self) -> Optional[str]:
        return text_of(self.body)

    @property
    def cost_usd(self) -> Optional[float]:
        return self.usage.cost_usd

    @property
    def finish_reason(self) -> Optional[str]:
        try:
            reason = self.body["choices"][0].get("finish_reason")
        except (TypeError, KeyError, IndexError, AttributeError):
            return None
        return reason if isinstance(reason, str) else None

    @property
    def embeddings(self) -> List[List[float]]:
        data = self.body.get("data") if isinstance(self.body, Mapping) else None
        if not isinstance(data, list):
            return []
        return [list(d.get("embedding") or []) for d in data if isinstance(d, Mapping)]


@dataclass
class Pong:
    broker: str
    version: str
    time_ms: int


@dataclass
class Counts:
    total: int = 0
    done: int = 0
    failed: int = 0


@dataclass
class BatchStatus:
    batch: str
    state: str
    mode: Optional[str] = None
    model: Optional[str] = None
    counts: Counts = field(default_factory=Counts)
    usage: Usage = field(default_factory=Usage)
    error: Optional[LlmqError] = None

    @property
    def done(self) -> bool:
        return self.state in TERMINAL_STATES

    @classmethod
    def from_wire(cls, h: Mapping[str, Any]) -> "BatchStatus":
        c = h.get("counts") if isinstance(h.get("counts"), Mapping) else {}
        assert isinstance(c, Mapping)
        return cls(str(h.get("batch", "")), str(h.get("state", "")), h.get("mode"), h.get("model"),
                   Counts(int(c.get("total") or 0), int(c.get("done") or 0),
                          int(c.get("failed") or 0)),
                   Usage.from_wire(h.get("usage")),
                   error_from(h["error"]) if isinstance(h.get("error"), Mapping) else None)


@dataclass
class BatchResult:
    """One item's result: body when ok, else error."""
    custom_id: str
    ok: bool
    body: Any = None
    error: Optional[LlmqError] = None
    usage: Usage = field(default_factory=Usage)

    @property
    def text(self) -> Optional[str]:
        return text_of(self.body)

    @classmethod
    def from_wire(cls, m: Any) -> "BatchResult":
        if not isinstance(m, Mapping):
            return cls("", False, None, error_from({"code": "internal",
                                                    "message": "malformed result"}))
        ok = bool(m.get("ok"))
        err = None if ok else error_from(m.get("error") if isinstance(m.get("error"), Mapping)
                                         else None)
        return cls(str(m.get("custom_id", "")), ok, m.get("body"), err,
                   Usage.from_wire(m.get("usage")))


BatchItem = Dict[str, Any]
