/*  llmq_client.h - the llmq client API: talk to an llmq broker.

    A client is one DEALER socket connected to the broker's frontend, with a
    stable random routing id. Requests are OpenAI-style bodies (JSON in, as a
    cJSON tree or text); results carry the response body, token usage, cost,
    latency, attempts and the worker that served them, or an error {code,
    message, status, retryable} with the protocol's normalised codes.

    Three ways to use it:
      - synchronous: llmq_infer() sends one request and waits for its result;
        llmq_stream() does the same and calls back for every streamed chunk;
      - asynchronous: llmq_client_submit() keeps up to `window` requests
        outstanding (it pumps the socket while the window is full), and
        llmq_client_poll() hands back results as they complete (or a result
        callback receives them);
      - batch helper: llmq_infer_many() runs N requests through the window and
        returns their results in input order.

    Reliability (lazy pirate, with heartbeats): the client has no thread; all
    work happens inside its calls. While requests are outstanding it pings
    the broker whenever the broker has been silent for a second; if the broker
    stays silent for the liveness timeout (default 3 s), or the TCP
    connection to it drops (a restarted broker answers pings, but it has
    forgotten our requests), the client closes its socket, opens a new one
    with the SAME routing id and resends every outstanding request. The
    broker ignores a resend of a request it still has pending and a late
    duplicate answer is dropped by the client, so each request gets exactly
    one result. A long generation is not a failure by itself: only broker
    silence or a dropped connection causes a resend. A request is never lost;
    the give-up time is the only way outstanding requests fail without an
    answer: when no broker has answered for LLMQ_CLIENT_GIVE_UP_MS (60 s;
    env LLMQ_GIVE_UP_MS, a duration such as 90s; llmq_client_set_give_up;
    0: never), they fail with error `timeout` "broker unreachable", so no
    call hangs.

    Threads: a client is not thread-safe (it is one ZeroMQ socket); use it
    from one thread at a time, or one client per thread.

    Ownership: llmq_client_new() and every llmq_result_t returned belong to
    the caller (llmq_result_destroy). `const` arguments are borrowed and
    copied when kept. Results given to a result callback are borrowed: they
    are destroyed when the callback returns.
*/
#ifndef LLMQ_CLIENT_H_INCLUDED
#define LLMQ_CLIENT_H_INCLUDED

#include <cjson/cJSON.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*  Defaults. */
#define LLMQ_DEFAULT_ENDPOINT "tcp://127.0.0.1:5555"
#define LLMQ_CLIENT_WINDOW 256        /* outstanding requests */
#define LLMQ_CLIENT_HEARTBEAT_MS 1000 /* heartbeat ping while busy */
#define LLMQ_CLIENT_TIMEOUT_MS 3000   /* broker dead when silent this long */
#define LLMQ_CLIENT_GIVE_UP_MS 60000  /* fail outstanding work after this */

typedef enum {
    LLMQ_OP_CHAT = 0,
    LLMQ_OP_COMPLETION,
    LLMQ_OP_EMBEDDING
} llmq_op_t;

/*  One finished request. Fields that the broker did not send are 0/NULL. */
typedef struct {
    char *id;              /* the client's request id */
    void *arg;             /* the caller's argument given at submit */
    llmq_op_t op;          /* what was asked */
    bool ok;               /* true: body holds the response */
    cJSON *body;           /* OpenAI-style response body (owned), or NULL */
    int64_t prompt_tokens; /* usage */
    int64_t completion_tokens;
    int64_t total_tokens;
    double cost_usd;      /* cost as priced by the worker */
    int64_t latency_ms;   /* broker: receive to answer */
    int64_t elapsed_ms;   /* client: first send to result */
    int attempts;         /* provider HTTP attempts (worker retries) */
    int attempt;          /* broker dispatch attempt (requeues) */
    int resends;          /* times this client resent it (reconnects) */
    char *worker;         /* worker that answered, or NULL */
    bool cached;          /* no worker asked: the broker's cache (3.7) */
    char *error_code;     /* protocol code ("rate_limited"), NULL if ok */
    char *error_message;  /* provider or broker message, never a secret */
    int error_status;     /* provider HTTP status, 0 if none */
    bool error_retryable; /* the same request may succeed later */
    char *request_id;     /* the provider's request id (`x-request-id`),
                             or NULL when the worker sent none */
    char *model;          /* the model that answered (the res `model`
                             when an alias or a fallback changed it), else
                             the model asked */
    char *trace;          /* the W3C traceparent sent with the request, or
                             NULL */
    uint8_t *error_body;  /* the provider's HTTP error body as it sent it,
                             as msgpack (llmq_value.h reads it), or NULL */
    size_t error_body_size;
    uint8_t *body_msgpack; /* with llmq_client_set_raw_bodies(): the
                              response body as msgpack (owned; body is then
                              NULL), else NULL */
    size_t body_msgpack_size;
} llmq_result_t;

/*  Streaming: called for each chunk in order. chunk is one OpenAI
    `chat.completion.chunk` object (borrowed); delta is its first choice's
    delta.content (or text), "" when none. */
typedef void(llmq_chunk_fn)(const char *id, const cJSON *chunk,
                            const char *delta, void *arg);

/*  Result callback: result is borrowed and destroyed after the call. */
typedef void(llmq_result_fn)(llmq_result_t *result, void *arg);

/*  Per-request options; pass NULL for defaults. Zero fields mean "unset". */
typedef struct {
    const char *pool;        /* route to this provider pool */
    int64_t deadline_ms;     /* relative deadline; 0: none */
    int64_t priority;        /* higher first */
    int max_attempts;        /* broker dispatch attempts; 0: broker default */
    bool cache;              /* `cache: true`: deterministic (3.7) */
    const char *trace;       /* W3C traceparent */
    const char *tenant;      /* declared tenant (advisory, PROTOCOL.md) */
    llmq_chunk_fn *on_chunk; /* non-NULL: ask for a stream */
    void *chunk_arg;         /* argument for on_chunk */
} llmq_opts_t;

typedef struct _llmq_client_t llmq_client_t;

/*  Counters, for progress displays and tests. */
typedef struct {
    uint64_t sent;       /* requests sent the first time */
    uint64_t resent;     /* requests resent after a reconnect */
    uint64_t reconnects; /* sockets replaced */
    uint64_t results;    /* results delivered */
    uint64_t duplicates; /* answers for ids no longer outstanding */
    uint64_t pings;      /* pings sent */
} llmq_client_stats_t;

/*  Create a client connected to endpoint (NULL: LLMQ_DEFAULT_ENDPOINT).
    Connecting is asynchronous: this succeeds even if no broker is up yet.
    Returns NULL on a bad endpoint. */
llmq_client_t *llmq_client_new(const char *endpoint);

/*  Connection options for llmq_client_new_with; zero fields are unset. */
typedef struct {
    const char *curve_cert; /* CURVE: own secret certificate file (from
                               `llmq keygen NAME`: NAME or NAME_secret) */
    const char *broker_key; /* the broker's public key: 40-char Z85 text or
                               the path of its public certificate file */
    const char *tenant;     /* declared tenant of every request and batch
                               call without CURVE (advisory; default
                               $LLMQ_TENANT; PROTOCOL.md 3.4) */
} llmq_client_options_t;

/*  Like llmq_client_new, with options (NULL: none). CURVE needs both
    curve_cert and broker_key (proto/PROTOCOL.md 1.1); a broker that refuses
    the key answers nothing, so calls time out as with a dead broker.
    Returns NULL on a bad endpoint or bad keys, with the reason in err
    (err_size bytes; err may be NULL). */
llmq_client_t *llmq_client_new_with(const char *endpoint,
                                    const llmq_client_options_t *options,
                                    char *err, size_t err_size);

/*  Destroy the client; outstanding requests are abandoned (the broker still
    runs them). NULLs *self_p. Idempotent. */
void llmq_client_destroy(llmq_client_t **self_p);

/*  Settings. timeout: broker liveness (ms, >= 100). window: max outstanding
    requests (>= 1). give_up: fail outstanding requests with error `timeout`
    after the broker has been silent this long (default
    LLMQ_CLIENT_GIVE_UP_MS or $LLMQ_GIVE_UP_MS; 0: never).
    verbose: log reconnects and drops through zsys. */
void llmq_client_set_timeout(llmq_client_t *self, int timeout_ms);
void llmq_client_set_window(llmq_client_t *self, size_t window);
void llmq_client_set_give_up(llmq_client_t *self, int give_up_ms);
void llmq_client_set_verbose(llmq_client_t *self, bool verbose);

/*  Raw bodies: results keep the response body as the msgpack bytes that
    came (body_msgpack) instead of decoding it into a cJSON tree (body stays
    NULL, llmq_result_text() gives NULL): for callers that write or forward
    the body as is (`llmq run` writes it straight to JSON text). Default
    false. */
void llmq_client_set_raw_bodies(llmq_client_t *self, bool raw);

/*  Deliver results to fn instead of the poll queue (NULL: back to polling). */
void llmq_client_set_callback(llmq_client_t *self, llmq_result_fn *fn,
                              void *arg);

const char *llmq_client_endpoint(const llmq_client_t *self);
const char *llmq_client_routing_id(const llmq_client_t *self);
void llmq_client_stats(const llmq_client_t *self, llmq_client_stats_t *stats);

/*  Ping the broker; returns the round trip in ms (>= 0) or -1 if no pong
    came within timeout_ms. version_p, if not NULL, receives a fresh copy of
    the broker's "name version" string on success. */
int llmq_client_ping(llmq_client_t *self, int timeout_ms, char **version_p);

/*  Ask for the broker's status; returns its JSON (caller owns) or NULL. */
cJSON *llmq_client_status(llmq_client_t *self, int timeout_ms);

/*  Submit one request. body is an OpenAI request body (copied). Blocks,
    pumping the socket, while the window is full. Returns 0, or -1 on bad
    arguments or a body larger than the protocol's frame limit (errno
    EMSGSIZE); the request is then not sent and no result will come.
    arg comes back in the result, so the caller can match results to
    requests without knowing ids. */
int llmq_client_submit(llmq_client_t *self, llmq_op_t op, const char *model,
                       const cJSON *body, const llmq_opts_t *opts, void *arg);

/*  Same with the body as JSON text of len bytes. */
int llmq_client_submit_text(llmq_client_t *self, llmq_op_t op,
                            const char *model, const char *json, size_t len,
                            const llmq_opts_t *opts, void *arg);

/*  Same with the body already msgpack (one value of size bytes, copied;
    llmq_value.h builds it from JSON text without a cJSON tree). */
int llmq_client_submit_msgpack(llmq_client_t *self, llmq_op_t op,
                               const char *model, const void *msgpack,
                               size_t size, const llmq_opts_t *opts, void *arg);

/*  Next finished result (caller owns), waiting up to timeout_ms (-1: until
    one is ready). Returns NULL on timeout, on interrupt, or at once when
    nothing is outstanding and nothing is ready. */
llmq_result_t *llmq_client_poll(llmq_client_t *self, int timeout_ms);

/*  Pump until nothing is outstanding or timeout_ms passed (-1: no limit).
    Returns the number still outstanding (0: all done). */
size_t llmq_client_wait(llmq_client_t *self, int timeout_ms);

/*  Requests sent and not answered yet; results ready for poll. */
size_t llmq_client_outstanding(const llmq_client_t *self);
size_t llmq_client_ready(const llmq_client_t *self);

/*  Cancel an outstanding request by id; its result (error `cancelled`) still
    arrives. Returns 0, or -1 if the id is not outstanding. */
int llmq_client_cancel(llmq_client_t *self, const char *id);

/*  Event-loop integration (for programs with their own loop, such as
    llmq-gateway). llmq_client_fd() is the ZeroMQ socket's ZMQ_FD: readable
    (edge-triggered) when the socket may have input; it changes when the
    client replaces its socket after a broker restart, so read it again after
    every llmq_client_process(). llmq_client_process() handles all input
    without waiting, runs the heartbeat timers and delivers results to the
    callback; call it when the fd is readable, after every submit or cancel,
    and about every 250 ms: it sends the heartbeat without which a broker
    takes a client silent for its --client-timeout (10 s) for gone and drops
    its requests (PROTOCOL.md 3.5). Returns 1 if input is still queued (call
    again soon), 0 otherwise, -1 if interrupted. */
int llmq_client_fd(const llmq_client_t *self);
int llmq_client_process(llmq_client_t *self);

/*  Cancel the outstanding request submitted with this arg (see
    llmq_client_cancel). Returns 0, or -1 if none is outstanding. */
int llmq_client_cancel_arg(llmq_client_t *self, const void *arg);

/*  Synchronous inference: send and wait for this request's result (other
    results stay queued for poll). Returns NULL only on bad arguments or an
    interrupt; failures come back as a result with ok == false. */
llmq_result_t *llmq_infer(llmq_client_t *self, llmq_op_t op, const char *model,
                          const cJSON *body, const llmq_opts_t *opts);
llmq_result_t *llmq_infer_text(llmq_client_t *self, llmq_op_t op,
                               const char *model, const char *json,
                               const llmq_opts_t *opts);

/*  Streaming chat: like llmq_infer, calling on_chunk for every chunk. */
llmq_result_t *llmq_stream(llmq_client_t *self, const char *model,
                           const cJSON *body, llmq_chunk_fn *on_chunk,
                           void *arg);

/*  Run count requests through the window; returns a new array of count
    results in input order (free each with llmq_result_destroy, then the
    array with free), or NULL on bad arguments or an interrupt. */
llmq_result_t **llmq_infer_many(llmq_client_t *self, llmq_op_t op,
                                const char *model, const cJSON *const *bodies,
                                size_t count, const llmq_opts_t *opts);

/*  Destroy a result; NULLs *self_p. Idempotent. */
void llmq_result_destroy(llmq_result_t **self_p);

/*  The answer's text: choices[0].message.content (chat), choices[0].text
    (completion), or NULL (embeddings, failures). Borrowed from the body. */
const char *llmq_result_text(const llmq_result_t *self);

/*  "chat", "completion", "embedding"; and back (-1 if unknown). */
const char *llmq_op_name(llmq_op_t op);
int llmq_op_from_name(const char *name);

/*  Batches (docs/BATCHES.md): durable broker-side batches. The broker
    stores every item and result, so the client may disconnect and fetch
    results later from any connection. Every call sends one batch.* message
    and waits for its answer; all of them are idempotent on the broker, so a
    call resends (on a fresh socket) when the broker stays silent for the
    liveness timeout, until the give-up time (default 60 s). They return 0,
    or -1 with the reason in llmq_batch_error(). */
typedef struct {
    const char *mode; /* "auto" (NULL), "realtime", "provider" */
    const char *pool; /* restrict to a pool, or NULL */
    const char *op;   /* "chat" (NULL), "completion", "embedding" */
    const char *completion_window; /* e.g. "24h", or NULL */
    int64_t priority;              /* as for requests */
} llmq_batch_opts_t;

typedef struct {
    char batch[65];
    char state[17];  /* validating queued in_progress finalizing completed
                        cancelling cancelled expired failed */
    char mode[17];   /* resolved: realtime or provider ("" before close) */
    char model[257]; /* set by llmq_batch_list only */
    int64_t total, done, failed;
    /* provider mode: the provider's request counts at its last poll (-1:
       no provider job); results come only when the provider is done */
    int64_t provider_done, provider_failed;
    int64_t prompt_tokens, completion_tokens, total_tokens;
    double cost_usd; /* with the Batch API discount for provider batches */
} llmq_batch_status_t;

/*  True for completed, cancelled, expired and failed. */
bool llmq_batch_state_final(const char *state);

int llmq_batch_open(llmq_client_t *self, const char *batch, const char *model,
                    const llmq_batch_opts_t *opts);
/*  Add items: a JSON array of {custom_id, body} (all or nothing). seq is the
    caller's counter of adds for this batch (0, 1, 2 ...): resending the same
    seq stores nothing twice. accepted_p (may be NULL) gets the items stored. */
int llmq_batch_add(llmq_client_t *self, const char *batch, int64_t seq,
                   const cJSON *items, int64_t *accepted_p);
/*  No more items; count_p (may be NULL) gets the batch's item count. */
int llmq_batch_close(llmq_client_t *self, const char *batch, int64_t *count_p);
/*  Status, and (if results_p) one page of results in input order from index
    `after`: a new array of *count_p results (id = custom_id; free each with
    llmq_result_destroy, then the array), *cursor_p to pass as the next
    `after`, *final_p true when the batch is finished and read to its end. */
int llmq_batch_get(llmq_client_t *self, const char *batch, int64_t after,
                   llmq_batch_status_t *status, llmq_result_t ***results_p,
                   size_t *count_p, int64_t *cursor_p, bool *final_p);
/*  Every result of a finished batch, in input order (reads all pages).
    NULL with llmq_batch_error() set if the batch is unknown or not
    finished yet. */
llmq_result_t **llmq_batch_results(llmq_client_t *self, const char *batch,
                                   size_t *count_p);
int llmq_batch_cancel(llmq_client_t *self, const char *batch,
                      llmq_batch_status_t *status);
/*  The broker's batches (the 1,000 most recent, oldest first): a new array
    of *count_p entries (free it), or NULL on failure (count 0: empty). */
llmq_batch_status_t *llmq_batch_list(llmq_client_t *self, size_t *count_p);
/*  "code: message" of the last failed batch call ("" if none). */
const char *llmq_batch_error(const llmq_client_t *self);

/*  Self test against an in-process fake broker; returns 0 on success. */
int llmq_client_test(bool verbose);

/*  That selftest's fake broker, a zactor_fn for other selftests: answers
    pings, echoes a request's "echo", fails one with the error code named
    by its "fail". args: NULL (binds a free port), or an int * port. Sends
    the bound port (int, "i") on the pipe. */
struct _zsock_t;
void llmq_client_fake_broker(struct _zsock_t *pipe, void *args);

#ifdef __cplusplus
}
#endif
#endif
