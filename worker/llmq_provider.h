/*  llmq_provider.h - one LLM provider behind a small vtable.

    A worker holds exactly one provider. The worker owns the I/O (libcurl
    multi, retries, limiter); the provider only translates:
      build     OpenAI-shaped request (cJSON) -> URL, headers, JSON body
      parse     HTTP 200 body -> OpenAI-shaped response (cJSON) + usage
      stream    SSE events -> OpenAI chat.completion.chunk objects, and at
                the end the assembled chat.completion + usage
      classify  HTTP status + error body -> llmq_err_t, retryable, message
      headers   rate-limit headers -> llmq_ratelimit_t
      auth      the headers that carry the key (health: GET {base}/models)
      answer    providers without HTTP (echo) answer here at once
      batch     the provider's Batch API: routes, one request as a batch
                line (the same translation as build), a batch object as a
                status, one result line as (custom_id, body | error, usage)
    Providers: openai (any OpenAI-compatible base URL; `sim` is openai at
    llmq-sim), anthropic (Messages API, translated both ways) and echo.
    The llmq_batch_api class runs the Batch API sequence (upload, create,
    poll, fetch, delete) with a borrowed provider: a new provider is one
    file with its own ops table.

    Secrets: the API key lives only in this object and in the header list
    handed to libcurl. No function here puts it in a message, and
    llmq_provider_scrub() removes it from any text that came back from the
    provider before it is logged or sent.

    Ownership: cJSON trees returned belong to the caller; `const` inputs are
    borrowed; llmq_http_t fields belong to the struct (llmq_http_reset).
*/
#ifndef LLMQ_PROVIDER_H_INCLUDED
#define LLMQ_PROVIDER_H_INCLUDED

#include <cjson/cJSON.h>
#include <curl/curl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llmq_limiter.h"
#include "llmq_msg.h"
#include "llmq_value.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    LLMQ_OP_CHAT = 0,
    LLMQ_OP_COMPLETION,
    LLMQ_OP_EMBEDDING,
    LLMQ_OP_UNKNOWN
} llmq_op_t;

/*  "chat", "completion", "embedding" -> op; LLMQ_OP_UNKNOWN otherwise. */
llmq_op_t llmq_op_from_name(const char *name);

/*  Token usage of one answer; -1 where the provider said nothing. */
typedef struct {
    int64_t prompt_tokens;
    int64_t completion_tokens;
    int64_t total_tokens;
    int64_t cached_tokens;    /* prompt_tokens_details.cached_tokens */
    int64_t reasoning_tokens; /* completion_tokens_details.reasoning_tokens */
} llmq_usage_t;

void llmq_usage_init(llmq_usage_t *usage);

/*  A classified failure. code LLMQ_ERR_NONE means no failure. */
typedef struct {
    llmq_err_t code;   /* normalised protocol code */
    int status;        /* HTTP status, 0 if none */
    bool retryable;    /* may the worker try again */
    char message[512]; /* human readable, never holds the key */
} llmq_perr_t;

void llmq_perr_set(llmq_perr_t *err, llmq_err_t code, int status,
                   bool retryable, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

/*  One HTTP request to make. */
typedef struct {
    char *url;                  /* full URL */
    bool post;                  /* POST with body, else GET */
    struct curl_slist *headers; /* includes auth: never log it */
    char *body;                 /* JSON text (POST) */
    size_t body_len;            /* its length */
    bool shared;                /* url and headers are the provider's, made
                                   once (llmq_http_post_text): never free or
                                   append to them */
    int64_t estimate;           /* build_raw: the payload's tokens as
                                   llmq_estimate_tokens_msgpack counts them
                                   with the provider's default max_tokens,
                                   taken on the build's walk */
} llmq_http_t;

/*  Free what an llmq_http_t holds and zero it. */
void llmq_http_reset(llmq_http_t *http);

/*  One request as the worker hands it to the provider. */
typedef struct {
    llmq_op_t op;      /* chat, completion, embedding */
    const char *model; /* the req's model (wins over body.model) */
    bool stream;       /* relay chunks */
    const cJSON *body; /* OpenAI-shaped request body */
} llmq_call_t;

/*  Emitted once per OpenAI chunk while streaming; the chunk is borrowed.
    Return 0 to go on. */
typedef int(llmq_chunk_fn)(const cJSON *chunk, void *arg);

typedef struct _llmq_provider_t llmq_provider_t;
typedef struct _llmq_stream_t llmq_stream_t;

/*  Provider settings (strings borrowed for the call to new; copied). */
typedef struct {
    const char *kind;              /* openai, anthropic, echo, sim */
    const char *base_url;          /* e.g. https://api.openai.com/v1 */
    const char *api_key;           /* may be NULL or "" (echo, local servers) */
    const char *anthropic_version; /* anthropic-version header */
    int64_t default_max_tokens;    /* anthropic needs max_tokens */
} llmq_provider_config_t;

/*  A provider batch object in OpenAI's words. Strings are borrowed from
    the parsed batch object. state: validating, in_progress, finalizing,
    completed, failed, expired, cancelling or cancelled. */
typedef struct {
    const char *id;          /* the provider batch id */
    const char *state;       /* normalised state */
    int64_t total;           /* requests in the batch */
    int64_t done;            /* succeeded */
    int64_t failed;          /* errored, cancelled or expired */
    const char *input_file;  /* file ids, NULL if none (or no files) */
    const char *output_file; /* ... */
    const char *error_file;  /* ... */
    int64_t created_ms;      /* creation time, 0 if unknown */
} llmq_batch_status_t;

/*  One line of a batch's results. body is NULL when the request failed
    (err says why); otherwise it is the answer in OpenAI shape and belongs
    to the struct (llmq_batch_answer_reset). custom_id is borrowed from the
    line. */
typedef struct {
    const char *custom_id; /* as the batch line carried it */
    cJSON *body;           /* OpenAI-shaped answer, or NULL */
    llmq_perr_t err;       /* the classified failure when body is NULL */
    llmq_usage_t usage;    /* tokens of the answer (0 if none) */
} llmq_batch_answer_t;

void llmq_batch_answer_reset(llmq_batch_answer_t *result);

/*  What a Batch API looks like. Routes are relative to the base URL. */
typedef struct {
    const char *batches; /* the batch collection: {batches}/{id}, .../cancel */
    const char *after;   /* list paging parameter (?limit=100&{after}=id) */
    const char *files;   /* input uploaded and results read as files here;
                            NULL: the input goes inline in the create call */
    const char *results; /* results at {batches}/{id}{results}; NULL: in
                            the batch's output and error files */
    const char *head;    /* input framing: head, lines joined by sep, tail */
    const char *sep;     /* ... */
    const char *tail;    /* ... */
    unsigned ops;        /* bit (1 << op) for each op the Batch API runs */
    /*  One request -> one input line {custom_id, ...} (caller's), built
        with the same translation as the realtime request. */
    cJSON *(*line)(const llmq_provider_t *self, const llmq_call_t *call,
                   const char *custom_id, llmq_perr_t *err);
    /*  The create call's body (JSON text, caller's) when the input was
        uploaded as file_id (files only). */
    char *(*create)(llmq_op_t op, const char *job, const char *file_id);
    /*  A batch object -> status. */
    void (*status)(const cJSON *batch, llmq_batch_status_t *status);
    /*  Lookup: 2 if the batch is job's for sure, 1 if it may be (count
        requests, created near time_ms), 0 if not. */
    int (*match)(const cJSON *batch, const char *job, int64_t count,
                 int64_t time_ms);
    /*  One result line -> result. Returns 0, or -1 to skip the line. */
    int (*result)(const llmq_provider_t *self, const cJSON *line,
                  llmq_batch_answer_t *result);
} llmq_batch_ops_t;

typedef struct {
    const char *kind;
    bool http; /* false: answer() instead of HTTP */
    int (*build)(const llmq_provider_t *self, const llmq_call_t *call,
                 llmq_http_t *http, llmq_perr_t *err);
    cJSON *(*parse)(const llmq_provider_t *self, const llmq_call_t *call,
                    const char *body, size_t size, llmq_usage_t *usage,
                    llmq_perr_t *err);
    /*  Streaming: one SSE event; emits zero or more OpenAI chunks. Returns
        0 to go on, 1 when the stream is complete, -1 on error (err set). */
    int (*stream_event)(llmq_stream_t *stream, const char *event,
                        const char *data, size_t size, llmq_chunk_fn *emit,
                        void *arg, llmq_perr_t *err);
    /*  NULL: llmq_classify_http. */
    void (*classify)(const llmq_provider_t *self, int status, const char *body,
                     size_t size, llmq_perr_t *err);
    /*  Append the headers that carry the key; the only place a key is
        formatted. */
    struct curl_slist *(*auth)(const llmq_provider_t *self,
                               struct curl_slist *headers);
    cJSON *(*answer)(const llmq_provider_t *self, const llmq_call_t *call,
                     llmq_usage_t *usage, llmq_perr_t *err);
    const llmq_batch_ops_t *batch; /* NULL: no Batch API */
    /*  Optional, for answers passed through unchanged: the HTTP 200 body
        (JSON text) appended to packer as msgpack in one pass, usage read
        from it, no tree. Returns 0, or -1 (err set, packer as it was).
        NULL: parse() builds a tree and the worker packs it. */
    int (*pack)(const llmq_provider_t *self, const llmq_call_t *call,
                const char *body, size_t size, llmq_packer_t *packer,
                llmq_usage_t *usage, llmq_perr_t *err);
    /*  Optional: build() when the caller lets the provider change the
        body in place (own == call->body; the caller deletes it after), so
        it need not copy it. NULL: build(). */
    int (*build_own)(const llmq_provider_t *self, const llmq_call_t *call,
                     cJSON *own, llmq_http_t *http, llmq_perr_t *err);
    /*  Optional: build() straight from the request payload (msgpack,
        call->body unused), no tree. An error in the payload is
        LLMQ_ERR_INVALID_REQUEST. NULL: the worker makes a tree. */
    int (*build_raw)(const llmq_provider_t *self, const llmq_call_t *call,
                     const void *payload, size_t size, llmq_http_t *http,
                     llmq_perr_t *err);
} llmq_provider_ops_t;

extern const llmq_provider_ops_t llmq_provider_openai_ops;
extern const llmq_provider_ops_t llmq_provider_anthropic_ops;
extern const llmq_provider_ops_t llmq_provider_echo_ops;

/*  Create a provider of the given kind. NULL (and a reason in errbuf) if
    the kind is unknown or a required setting is missing. */
llmq_provider_t *llmq_provider_new(const llmq_provider_config_t *config,
                                   char *errbuf, size_t errlen);

/*  Destroy; wipes the key; NULLs *self_p. Idempotent. */
void llmq_provider_destroy(llmq_provider_t **self_p);

/*  Accessors (borrowed). */
const llmq_provider_ops_t *llmq_provider_ops(const llmq_provider_t *self);
const char *llmq_provider_kind(const llmq_provider_t *self);
const char *llmq_provider_base_url(const llmq_provider_t *self);
const char *llmq_provider_api_key(const llmq_provider_t *self);
const char *llmq_provider_anthropic_version(const llmq_provider_t *self);
int64_t llmq_provider_default_max_tokens(const llmq_provider_t *self);

/*  Thin dispatchers over the vtable. */
bool llmq_provider_uses_http(const llmq_provider_t *self);
int llmq_provider_build(const llmq_provider_t *self, const llmq_call_t *call,
                        llmq_http_t *http, llmq_perr_t *err);
/*  build() from the msgpack payload: 1 when the provider has no
    build_raw (then use a tree), else its 0 or -1. */
int llmq_provider_build_raw(const llmq_provider_t *self,
                            const llmq_call_t *call, const void *payload,
                            size_t size, llmq_http_t *http, llmq_perr_t *err);
/*  build() of a body the provider may change (own == call->body). */
int llmq_provider_build_own(const llmq_provider_t *self,
                            const llmq_call_t *call, cJSON *own,
                            llmq_http_t *http, llmq_perr_t *err);
cJSON *llmq_provider_parse(const llmq_provider_t *self, const llmq_call_t *call,
                           const char *body, size_t size, llmq_usage_t *usage,
                           llmq_perr_t *err);
/*  An HTTP 200 body as the answer's payload (msgpack): through the
    provider's pack() into packer (reused; reset on return) when it has one,
    else parse() and the tree packed. NULL with err set on failure. */
zframe_t *llmq_provider_parse_frame(const llmq_provider_t *self,
                                    const llmq_call_t *call, const char *body,
                                    size_t size, llmq_packer_t *packer,
                                    llmq_usage_t *usage, llmq_perr_t *err);
/*  The provider's HTTP error body as it sent it, as a msgpack value with
    every string (keys too) scrubbed (llmq_provider_scrub's key); NULL when
    the body is not JSON or its msgpack is over max bytes. */
zframe_t *llmq_provider_error_body(const llmq_provider_t *self,
                                   const char *body, size_t size, size_t max);
void llmq_provider_classify(const llmq_provider_t *self, int status,
                            const char *body, size_t size, llmq_perr_t *err);
int llmq_provider_health(const llmq_provider_t *self, llmq_http_t *http);
void llmq_provider_header(const llmq_provider_t *self, llmq_ratelimit_t *rl,
                          const char *name, size_t name_len, const char *value,
                          size_t value_len);
/*  {base_url}{route} (caller's), NULL if out of memory. */
char *llmq_provider_url(const llmq_provider_t *self, const char *route);
/*  Append the auth headers (Content-Type and the like are the caller's). */
struct curl_slist *llmq_provider_auth(const llmq_provider_t *self,
                                      struct curl_slist *headers);
/*  For the providers' auth(): append "<prefix><api key>" (nothing when
    the key is empty); the only place a key is formatted. */
struct curl_slist *llmq_provider_key_header(const llmq_provider_t *self,
                                            struct curl_slist *headers,
                                            const char *prefix);
/*  For the providers' build(): http becomes a POST of body (taken) as
    JSON to {base}{route} with the auth headers. Returns 0, or -1 (err
    set, http reset). */
int llmq_http_post_json(const llmq_provider_t *self, const char *route,
                        cJSON *body, llmq_http_t *http, llmq_perr_t *err);
/*  The same for JSON text (taken): the URL and the header list
    (Content-Type, Expect:, auth, and Accept: text/event-stream when stream)
    are made once per provider and shared (http->shared). */
int llmq_http_post_text(const llmq_provider_t *self, const char *route,
                        char *text, bool stream, llmq_http_t *http,
                        llmq_perr_t *err);
/*  The provider's Batch API, or NULL if it has none. */
const llmq_batch_ops_t *llmq_provider_batch(const llmq_provider_t *self);
cJSON *llmq_provider_answer(const llmq_provider_t *self,
                            const llmq_call_t *call, llmq_usage_t *usage,
                            llmq_perr_t *err);

/*  Streaming state for one transfer: new, feed events, finish. finish()
    returns the assembled final body (chat.completion or text_completion)
    with the usage seen in the stream, or NULL with err set. */
llmq_stream_t *llmq_stream_new(const llmq_provider_t *provider,
                               const llmq_call_t *call);
void llmq_stream_destroy(llmq_stream_t **self_p);
int llmq_stream_event(llmq_stream_t *self, const char *event, const char *data,
                      size_t size, llmq_chunk_fn *emit, void *arg,
                      llmq_perr_t *err);
cJSON *llmq_stream_finish(llmq_stream_t *self, llmq_usage_t *usage,
                          llmq_perr_t *err);
/*  Chunks emitted so far. */
int64_t llmq_stream_chunks(const llmq_stream_t *self);

/*  --- helpers shared by the providers ---------------------------------- */

/*  Apply one response header to rl (x-ratelimit-*, anthropic-ratelimit-*,
    retry-after, retry-after-ms). Names are case-insensitive. */
void llmq_ratelimit_header(llmq_ratelimit_t *rl, const char *name,
                           size_t name_len, const char *value,
                           size_t value_len);

/*  Parse an OpenAI duration ("6m0s", "1.5s", "120ms", "2h3m") into ms;
    -1 if malformed. */
int64_t llmq_parse_duration_ms(const char *text, size_t len);

/*  Common error classification (OpenAI and Anthropic error bodies). */
void llmq_classify_http(const llmq_provider_t *self, int status,
                        const char *body, size_t size, llmq_perr_t *err);

/*  Classify a libcurl failure (timeout, connection refused, reset). */
void llmq_classify_curl(CURLcode code, const char *detail, llmq_perr_t *err);

/*  text from the provider (or built from its words) as it may be sent or
    logged: the API key, and every piece of 8 or more characters from its
    start, replaced by "[redacted]" (llmq_scrub_into, the one scrubber),
    then cut to fit out (size bytes, NUL-terminated). The scrub comes
    before the cut, so every place that cuts a provider text into a buffer
    does it with this call. out may be text (in place). */
void llmq_provider_scrub(const llmq_provider_t *self, char *out, size_t size,
                         const char *text);

/*  Estimated tokens of a request: prompt characters / 4 + max_tokens
    (default_max_tokens when the body sets none). */
int64_t llmq_estimate_tokens(const cJSON *body, int64_t default_max_tokens);
/*  The same estimate from the msgpack payload, no tree. */
int64_t llmq_estimate_tokens_msgpack(const void *data, size_t size,
                                     int64_t default_max_tokens);
/*  llmq_value_buf_json_except (the request payload as JSON text without
    the skip members) that, when estimate is not NULL, also replaces
    *estimate (the default max_tokens on the way in) with
    llmq_estimate_tokens_msgpack's estimate, taken on the same walk. */
int llmq_provider_json_except(llmq_value_buf_t *buf, const void *payload,
                              size_t size, const char *const *skip,
                              size_t nskip, int64_t *estimate, char *errbuf,
                              size_t errlen);

/*  Add "usage" {prompt_tokens, completion_tokens, total_tokens} to an
    OpenAI-shaped body. */
void llmq_usage_add_json(cJSON *body, int64_t prompt_tokens,
                         int64_t completion_tokens);

/*  obj[key] as a number (0 if absent or not a number) and as a string
    (NULL if absent or not a string; borrowed). */
int64_t llmq_json_int(const cJSON *obj, const char *key);
const char *llmq_json_str(const cJSON *obj, const char *key);

/*  Read usage {prompt_tokens, completion_tokens, total_tokens} from an
    OpenAI body's "usage" member. */
void llmq_usage_from_json(const cJSON *usage_obj, llmq_usage_t *usage);
/*  cached_tokens and reasoning_tokens from an OpenAI-shaped body's usage
    details (the answer's tree, where there is one). */
void llmq_usage_details_from_json(const cJSON *body, llmq_usage_t *usage);
/*  The same as llmq_usage_from_json (details too) from the msgpack of a
    "usage" map. */
void llmq_usage_from_msgpack(const uint8_t *data, size_t size,
                             llmq_usage_t *usage);

/*  Internal to the providers: the chunk assembler used by both streaming
    implementations. */
typedef struct _llmq_assembler_t llmq_assembler_t;
llmq_assembler_t *llmq_assembler_new(llmq_op_t op);
void llmq_assembler_destroy(llmq_assembler_t **self_p);
void llmq_assembler_add(llmq_assembler_t *self, const cJSON *chunk);
cJSON *llmq_assembler_result(llmq_assembler_t *self, llmq_usage_t *usage);

/*  A provider's private stream state hangs off this common head. */
struct _llmq_stream_t {
    const llmq_provider_t *provider; /* borrowed */
    llmq_op_t op;                    /* of the call */
    char *model;                     /* of the call */
    llmq_assembler_t *asm_;          /* builds the final body */
    int64_t chunks;                  /* emitted so far */
    bool done;                       /* saw the end of the stream */
    char *msg_id;                    /* anthropic: message id */
    int64_t input_tokens;            /* anthropic: from message_start */
    int64_t output_tokens;           /* anthropic: from message_delta */
    char *stop_reason;               /* anthropic: finish reason (mapped) */
    int tool_index;                  /* anthropic: next tool call index */
    int block_tool[64];              /* anthropic: block -> tool index + 1 */
};

int llmq_provider_test(bool verbose);
/*  The scrubber on provider errors: the key at every offset around every
    cut. Returns 0 on success. */
int llmq_provider_scrub_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
