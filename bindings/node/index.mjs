// llmq-client, ES module entry: the same classes as the CommonJS entry.
import cjs from "./index.cjs";

export const {
  Client, Stream, Batches, Result, textOf, deltaOf, readCert, PROTOCOL_VERSION, DEFAULT_ENDPOINT,
  LlmqError, InvalidRequest, ContextLength, ContentFilter, AuthError, NotFound, RateLimited,
  ProviderError, Timeout, DeadlineExceeded, Unavailable, Overloaded, Cancelled, InternalError,
  StreamInterrupted, ERROR_CLASSES, errorFrom,
} = cjs;
export default cjs;
