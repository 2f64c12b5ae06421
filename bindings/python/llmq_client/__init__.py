"""llmq_client: Python client for the llmq broker (proto/PROTOCOL.md v1).

    from llmq_client import Client
    with Client("tcp://127.0.0.1:5555") as c:
        print(c.chat("gpt-4o-mini", "Hello").text)

Client is synchronous; AsyncClient is the asyncio twin. Failures raise
LlmqError subclasses (RateLimited, Timeout, ProviderError, Unavailable, ...).
"""
from ._core import DEFAULT_ENDPOINT, PROTOCOL_VERSION, read_cert
from .aio import AsyncBatches, AsyncClient, AsyncStream
from .client import Batches, Client, Stream
from .errors import (ERROR_CLASSES, AuthError, Cancelled, ContentFilter, ContextLength,
                     DeadlineExceeded, InternalError, InvalidRequest, LlmqError, NotFound,
                     Overloaded, ProviderError, RateLimited, StreamInterrupted, Timeout,
                     Unavailable, error_from)
from .types import (BatchResult, BatchStatus, Counts, Pong, Result, Usage, delta_of, text_of)

__version__ = "0.2.0"
__all__ = [
    "Client", "AsyncClient", "Stream", "AsyncStream", "Batches", "AsyncBatches",
    "Result", "Usage", "Pong", "BatchStatus", "BatchResult", "Counts",
    "LlmqError", "InvalidRequest", "ContextLength", "ContentFilter", "AuthError", "NotFound",
    "RateLimited", "ProviderError", "Timeout", "DeadlineExceeded", "Unavailable", "Overloaded",
    "Cancelled", "InternalError", "StreamInterrupted", "ERROR_CLASSES", "error_from",
    "text_of", "delta_of", "read_cert", "DEFAULT_ENDPOINT", "PROTOCOL_VERSION", "__version__",
]
