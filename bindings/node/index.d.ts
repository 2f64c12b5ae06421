// Types of llmq-client (the Node client for the llmq broker, proto/PROTOCOL.md v1).

export const PROTOCOL_VERSION: 1;
export const DEFAULT_ENDPOINT: string;

export type Op = "chat" | "completion" | "embedding";
export type Message = { role: string; content: string | null; [key: string]: unknown };
export type Messages = string | Message[];

export interface ClientOptions {
  /** ms a request may take (sent as its deadline); null: no limit. Default 60000. */
  timeout?: number | null;
  /** ms of broker silence after which outstanding calls reject with Unavailable. Default $LLMQ_GIVE_UP_MS or 30000. */
  brokerTimeout?: number;
  /** requests inferMany keeps in flight. Default 256. */
  concurrency?: number;
  /** ms between pings to a silent broker. Default 1000. */
  heartbeat?: number;
  /** ms of silence before reconnecting and resending (lazy pirate). Default 3000. */
  liveness?: number;
  /** ms an idle socket stays open; then it is closed so the process can exit. Default 500. */
  idleCloseMs?: number;
  /** own secret certificate (CZMQ zcert file); default $LLMQ_CURVE_CERT. */
  curveCert?: string;
  /** broker public key (40-char Z85) or its public cert file; default $LLMQ_BROKER_KEY. */
  brokerKey?: string;
  routingId?: string;
}

export interface RequestOptions {
  timeout?: number | null;
  requestId?: string;
  pool?: string;
  priority?: number;
  meta?: unknown;
  /** extra header fields (cache, trace, max_attempts, deadline_ms, ...) */
  header?: Record<string, unknown>;
  /** aborting cancels the request (it rejects with Cancelled) */
  signal?: AbortSignal;
}

/** Request options plus body fields (max_tokens, temperature, ...). */
export type CallOptions = RequestOptions & { [bodyField: string]: unknown };

export interface Usage {
  promptTokens: number;
  completionTokens: number;
  totalTokens: number;
  costUsd: number | null;
}

export declare class Result {
  readonly id: string;
  readonly op: Op;
  readonly model: string;
  /** the OpenAI-style response body */
  readonly body: any;
  readonly usage: Usage;
  readonly latencyMs: number;
  readonly attempts: number;
  readonly attempt: number;
  readonly worker: string | null;
  readonly cached: boolean;
  readonly meta: unknown;
  readonly elapsedMs: number;
  readonly text: string | null;
  readonly costUsd: number | null;
  readonly finishReason: string | null;
  readonly embeddings: number[][];
}

export interface Pong { broker: string; version: string; timeMs: number }

export interface BatchStatus {
  batch: string;
  state: string;
  mode: string | null;
  model: string | null;
  counts: { total: number; done: number; failed: number };
  usage: Usage;
  error: LlmqError | null;
  /** true in a terminal state (completed, cancelled, expired, failed) */
  done: boolean;
}

export interface BatchResult {
  customId: string;
  ok: boolean;
  body: any;
  error: LlmqError | null;
  usage: Usage;
  text: string | null;
}

export type BatchItem = { custom_id: string; body: Record<string, unknown> } | Record<string, unknown>;

export interface BatchSubmitOptions {
  mode?: "auto" | "realtime" | "provider";
  op?: Op;
  batchId?: string;
  pool?: string;
  completionWindow?: string;
  priority?: number;
}

export declare class Batches {
  submit(model: string, items: BatchItem[], options?: BatchSubmitOptions): Promise<string>;
  status(batch: string): Promise<BatchStatus>;
  results(batch: string): Promise<BatchResult[]>;
  cancel(batch: string): Promise<BatchStatus>;
  wait(batch: string, options?: { timeout?: number; pollInterval?: number }): Promise<BatchStatus>;
  list(): Promise<BatchStatus[]>;
}

export declare class Stream implements AsyncIterable<string> {
  /** the final Result, once the loop ended */
  readonly result: Result | null;
  /** the text delivered so far */
  readonly text: string;
  readonly id: string | null;
  [Symbol.asyncIterator](): AsyncIterator<string>;
}

export declare class Client {
  constructor(endpoint?: string, options?: ClientOptions);
  readonly endpoint: string;
  readonly batches: Batches;
  readonly reconnects: number;
  readonly resent: number;
  concurrency: number;
  ping(options?: { timeout?: number }): Promise<Pong>;
  status(options?: { timeout?: number }): Promise<Record<string, any>>;
  infer(op: Op, model: string, body: Record<string, unknown>, options?: RequestOptions): Promise<Result>;
  chat(model: string, messages: Messages, options?: CallOptions): Promise<Result>;
  complete(model: string, prompt: string, options?: CallOptions): Promise<Result>;
  embed(model: string, input: string | string[], options?: CallOptions): Promise<Result>;
  stream(model: string, messages: Messages, options?: CallOptions): Stream;
  inferMany(op: Op, model: string, bodies: Record<string, unknown>[],
            options?: RequestOptions & { concurrency?: number; returnErrors?: false }): Promise<Result[]>;
  inferMany(op: Op, model: string, bodies: Record<string, unknown>[],
            options: RequestOptions & { concurrency?: number; returnErrors: true }): Promise<(Result | LlmqError)[]>;
  cancel(requestId: string): void;
  close(): void;
}

export interface ErrorInit { code?: string; status?: number | null; retryable?: boolean; requestId?: string | null }

export declare class LlmqError extends Error {
  constructor(message?: string, init?: ErrorInit);
  /** the protocol's error code: rate_limited, timeout, provider_error, ... */
  readonly code: string;
  /** the error's message without the code prefix */
  readonly detail: string;
  /** the provider's HTTP status, if any */
  readonly status: number | null;
  readonly retryable: boolean;
  readonly requestId: string | null;
}
export declare class InvalidRequest extends LlmqError {}
export declare class ContextLength extends InvalidRequest {}
export declare class ContentFilter extends InvalidRequest {}
export declare class AuthError extends LlmqError {}
export declare class NotFound extends LlmqError {}
export declare class RateLimited extends LlmqError {}
export declare class ProviderError extends LlmqError {
  /** the provider's error message */
  readonly body: string;
}
export declare class Timeout extends LlmqError {}
export declare class DeadlineExceeded extends Timeout {}
export declare class Unavailable extends LlmqError {}
export declare class Overloaded extends Unavailable {}
export declare class Cancelled extends LlmqError {}
export declare class InternalError extends LlmqError {}
export declare class StreamInterrupted extends LlmqError {}
export const ERROR_CLASSES: Record<string, typeof LlmqError>;
export function errorFrom(err: { code?: string; message?: string; status?: number; retryable?: boolean } | null | undefined,
                          requestId?: string): LlmqError;
export function textOf(body: unknown): string | null;
export function deltaOf(chunk: unknown): string;
export function readCert(path: string): { publicKey: string; secretKey: string | null };
