"use strict";
/* The error classes of llmq-client: one per error code of the protocol
   (proto/PROTOCOL.md section 6), under LlmqError. Same names as Python's. */

class LlmqError extends Error {
  constructor(message = "", { code, status, retryable, requestId } = {}) {
    const cls = new.target;
    const c = code || cls.code;
    super(message ? `${c}: ${message}${status ? ` (HTTP ${status})` : ""}` : c);
    this.name = cls.name;
    this.code = c;
    this.detail = message;
    this.status = Number.isInteger(status) && status > 0 ? status : null;
    this.retryable = typeof retryable === "boolean" ? retryable : cls.defaultRetryable;
    this.requestId = requestId || null;
  }
}
LlmqError.code = "internal";
LlmqError.defaultRetryable = false;

function define(name, base, code, retryable) {
  const cls = { [name]: class extends base {} }[name];
  cls.code = code;
  cls.defaultRetryable = retryable === undefined ? base.defaultRetryable : retryable;
  return cls;
}

const InvalidRequest = define("InvalidRequest", LlmqError, "invalid_request", false);
const ContextLength = define("ContextLength", InvalidRequest, "context_length");
const ContentFilter = define("ContentFilter", InvalidRequest, "content_filter");
const AuthError = define("AuthError", LlmqError, "auth", false);
const NotFound = define("NotFound", LlmqError, "not_found", false);
const RateLimited = define("RateLimited", LlmqError, "rate_limited", true);
const ProviderError = define("ProviderError", LlmqError, "provider_error", true);
Object.defineProperty(ProviderError.prototype, "body", {
  get() {
    return this.detail;
  },
});
const Timeout = define("Timeout", LlmqError, "timeout", true);
const DeadlineExceeded = define("DeadlineExceeded", Timeout, "deadline_exceeded", false);
const Unavailable = define("Unavailable", LlmqError, "unavailable", true);
const Overloaded = define("Overloaded", Unavailable, "overloaded");
const Cancelled = define("Cancelled", LlmqError, "cancelled", false);
const InternalError = define("InternalError", LlmqError, "internal", true);
const StreamInterrupted = define("StreamInterrupted", LlmqError, "stream_interrupted", true);

const ERROR_CLASSES = {
  bad_message: InvalidRequest,
  invalid_request: InvalidRequest,
  context_length: ContextLength,
  content_filter: ContentFilter,
  auth: AuthError,
  not_found: NotFound,
  rate_limited: RateLimited,
  provider_error: ProviderError,
  timeout: Timeout,
  deadline_exceeded: DeadlineExceeded,
  overloaded: Overloaded,
  unavailable: Unavailable,
  cancelled: Cancelled,
  internal: InternalError,
  stream_interrupted: StreamInterrupted,
};

/** The error for a protocol error map {code, message, status, retryable}. */
function errorFrom(err, requestId) {
  const e = err && typeof err === "object" ? err : {};
  const code = typeof e.code === "string" && e.code ? e.code : "internal";
  const Cls = ERROR_CLASSES[code] || LlmqError;
  return new Cls(typeof e.message === "string" ? e.message : "", {
    code, status: e.status, retryable: e.retryable, requestId,
  });
}

module.exports = {
  LlmqError, InvalidRequest, ContextLength, ContentFilter, AuthError, NotFound, RateLimited,
  ProviderError, Timeout, DeadlineExceeded, Unavailable, Overloaded, Cancelled, InternalError,
  StreamInterrupted, ERROR_CLASSES, errorFrom,
};
