"""The exceptions of llmq_client: one class per error code of the protocol
(proto/PROTOCOL.md section 6), in a small hierarchy under LlmqError."""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Type


class LlmqError(Exception):
    """Any failure reported by llmq or by this client.

    code: the protocol's error code (``rate_limited``, ``timeout``, ...);
    status: the provider's HTTP status, if any; retryable: whether sending
    the same request again may succeed; request_id: the request's id."""

    code: str = "internal"
    default_retryable: bool = False

    def __init__(self, message: str = "", *, code: Optional[str] = None,
                 status: Optional[int] = None, retryable: Optional[bool] = None,
                 request_id: Optional[str] = None) -> None:
        super().__init__(message or (code or self.code))
        self.message = message
        if code is not None:
            self.code = code
        self.status = status
        self.retryable = self.default_retryable if retryable is None else retryable
        self.request_id = request_id

    def __str__(self) -> str:
        text = "%s: %s" % (self.code, self.message) if self.message else self.code
        return text + (" (HTTP %d)" % self.status if self.status else "")


class InvalidRequest(LlmqError):
    """The request is wrong (invalid_request, bad_message); do not resend."""
    code = "invalid_request"


class ContextLength(InvalidRequest):
    code = "context_length"


class ContentFilter(InvalidRequest):
    code = "content_filter"


class AuthError(LlmqError):
    """The provider refused the API key (auth), or the broker refused our
    CURVE key."""
    code = "auth"


class NotFound(LlmqError):
    """No worker serves the model (or pool), or an unknown batch."""
    code = "not_found"


class RateLimited(LlmqError):
    code = "rate_limited"
    default_retryable = True


class ProviderError(LlmqError):
    """The provider failed (5xx, unparseable answers) after the worker's
    retries. status: its HTTP status; body: its error message."""
    code = "provider_error"
    default_retryable = True

    @property
    def body(self) -> str:
        return self.message


class Timeout(LlmqError):
    """The request took too long: the provider timed out (timeout), or the
    client's own timeout passed."""
    code = "timeout"
    default_retryable = True


class DeadlineExceeded(Timeout):
    """The request's deadline passed at the broker."""
    code = "deadline_exceeded"
    default_retryable = False


class Unavailable(LlmqError):
    """No broker answered within the client's broker_timeout."""
    code = "unavailable"
    default_retryable = True


class Overloaded(Unavailable):
    """The broker's queue is full or it is shutting down."""
    code = "overloaded"


class Cancelled(LlmqError):
    code = "cancelled"


class InternalError(LlmqError):
    code = "internal"
    default_retryable = True


class StreamInterrupted(LlmqError):
    """A stream was restarted by the broker (its worker died) after some
    text had been delivered; the text so far is not part of the answer.
    Send the request again."""
    code = "stream_interrupted"
    default_retryable = True


ERROR_CLASSES: Dict[str, Type[LlmqError]] = {
    "bad_message": InvalidRequest,
    "invalid_request": InvalidRequest,
    "context_length": ContextLength,
    "content_filter": ContentFilter,
    "auth": AuthError,
    "not_found": NotFound,
    "rate_limited": RateLimited,
    "provider_error": ProviderError,
    "timeout": Timeout,
    "deadline_exceeded": DeadlineExceeded,
    "overloaded": Overloaded,
    "unavailable": Unavailable,
    "cancelled": Cancelled,
    "internal": InternalError,
    "stream_interrupted": StreamInterrupted,
}


def error_from(err: Optional[Mapping[str, Any]], request_id: Optional[str] = None) -> LlmqError:
    """The exception for a protocol error map {code, message, status, retryable}."""
    err = err or {}
    code = str(err.get("code") or "internal")
    cls = ERROR_CLASSES.get(code, LlmqError)
    status = err.get("status")
    retryable = err.get("retryable")
    return cls(str(err.get("message") or ""), code=code,
               status=status if isinstance(status, int) and status > 0 else None,
               retryable=retryable if isinstance(retryable, bool) else None,
               request_id=request_id)
