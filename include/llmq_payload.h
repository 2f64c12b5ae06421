/*  llmq_payload.h - the typed payloads of the protocol (PROTOCOL.md,
    section 5): result items, batch items, request keys and the `status`
    map. Only proto/ knows their layout: callers fill C structs and get
    frames, or get C structs back from bytes.

    Array payloads (`batch.add` / `job.submit` items, `batch.results` /
    `job.results` results, `held` keys) are built with an llmq_payload_t:
    add elements one by one (each add says how many bytes it took, so a
    caller can cut pages by size), then take the array as one frame. The
    readers walk such arrays without building a tree: bodies come back as
    the msgpack bytes they arrived as, so the broker stores and forwards a
    body without converting it.

    The `status` payload is one map, encoded from an llmq_status_t and
    decoded into one (llmq_status_decode allocates; llmq_status_destroy
    frees).

    Readers never read past size, never allocate more than a small multiple
    of size, and reject what llmq_value_is_valid rejects (ext types, non-
    string keys, nesting over LLMQ_VALUE_MAX_DEPTH, trailing bytes). They
    are lenient about keys: unknown keys are skipped, absent ones are
    zero / NULL, so newer peers may add keys (PROTOCOL.md, section 9).

    Ownership: llmq_payload_t, frames and llmq_status_t from decode belong
    to the caller; `const char *` and body pointers passed to callbacks are
    borrowed for the duration of the call.
*/
#ifndef LLMQ_PAYLOAD_H_INCLUDED
#define LLMQ_PAYLOAD_H_INCLUDED

#include <czmq.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*  One result item of `batch.results` / `job.results`:
    {custom_id, ok, body | error {code, message, status, retryable},
     usage {prompt_tokens, completion_tokens, total_tokens, cost_usd}}.
    Encoding writes `body` when ok (nil if body is NULL), else `error`
    (code NULL -> "internal", message NULL -> ""), and total_tokens as
    prompt_tokens + completion_tokens. */
typedef struct {
    const char *custom_id;
    bool ok;
    const void *body; /* one msgpack value, or NULL (nil / absent) */
    size_t body_size;
    const char *error_code; /* decode: NULL if absent */
    const char *error_message;
    int64_t error_status; /* provider HTTP status, 0 = none */
    bool error_retryable;
    bool has_retryable; /* decode: `retryable` was present */
    int64_t prompt_tokens;
    int64_t completion_tokens;
    int64_t total_tokens; /* decode only: as on the wire */
    double cost_usd;
} llmq_result_item_t;

/*  ---- building array payloads ---------------------------------------- */

typedef struct _llmq_payload_t llmq_payload_t;

/*  An empty array payload. NULL on allocation failure. */
llmq_payload_t *llmq_payload_new(void);
void llmq_payload_destroy(llmq_payload_t **self_p);

/*  Append one result item. Returns the bytes it took. */
size_t llmq_payload_add_result(llmq_payload_t *self,
                               const llmq_result_item_t *item);

/*  Append one batch item {custom_id, body}: body is one msgpack value
    (body_size bytes, copied). Returns the bytes it took. */
size_t llmq_payload_add_item(llmq_payload_t *self, const char *custom_id,
                             const void *body, size_t body_size);

/*  Append one string (a `held` request key). Returns the bytes it took. */
size_t llmq_payload_add_str(llmq_payload_t *self, const char *value);

/*  Elements and element bytes added since new or the last frame. */
size_t llmq_payload_count(const llmq_payload_t *self);
size_t llmq_payload_bytes(const llmq_payload_t *self);

/*  The array of the elements added, as a new frame; the payload is then
    empty again. NULL on allocation failure. */
zframe_t *llmq_payload_frame(llmq_payload_t *self);

/*  ---- reading array payloads ------------------------------------------ */

/*  Walk a results array. fn gets each item (strings NUL-terminated
    copies, body pointing into data; all borrowed for the call). Stops when
    fn returns non-zero. Returns the number of items visited, or -1 with a
    reason in errbuf (may be NULL) if the payload is not a valid array of
    maps; nothing is visited then. */
typedef int(llmq_result_item_fn)(const llmq_result_item_t *item, void *arg);
long llmq_payload_each_result(const void *data, size_t size,
                              llmq_result_item_fn *fn, void *arg, char *errbuf,
                              size_t errlen);

/*  Walk an array of strings (`held` keys); elements that are not strings
    are skipped. Returns the strings visited, or -1 (nothing visited). */
typedef int(llmq_str_fn)(const char *value, void *arg);
long llmq_payload_each_str(const void *data, size_t size, llmq_str_fn *fn,
                           void *arg, char *errbuf, size_t errlen);

/*  Batch items are read with llmq_value_each_item (llmq_value.h). */

/*  ---- the status map -------------------------------------------------- */

/*  One live worker in `status.workers`. */
typedef struct {
    const char *name;
    const char *pool;
    const char *provider;
    const char **models;
    size_t nmodels;
    int64_t capacity;
    int64_t credit; /* unused credit */
    int64_t in_flight;
    bool healthy;
    const char *limit_group; /* NULL: nil */
    int64_t answered;        /* results it sent */
    int64_t limits_rpm;      /* its share of the group, 0 = unlimited */
    int64_t limits_tpm;
} llmq_status_worker_t;

/*  One queue (lane) in `status.queues`. */
typedef struct {
    const char *model;
    const char *pool; /* NULL: nil (any pool) */
    int64_t depth;
    int64_t workers; /* workers serving it */
} llmq_status_queue_t;

/*  One entry of `status.counters`. */
typedef struct {
    const char *name;
    int64_t value;
} llmq_status_counter_t;

/*  The whole `status` payload. */
typedef struct {
    const char *broker;
    const char *version;
    int64_t uptime_ms;
    llmq_status_worker_t *workers;
    size_t nworkers;
    llmq_status_queue_t *queues;
    size_t nqueues;
    llmq_status_counter_t *counters;
    size_t ncounters;
    void *owned_; /* decode: memory freed by llmq_status_destroy */
} llmq_status_t;

/*  Encode as a new frame. NULL on allocation failure. */
zframe_t *llmq_status_encode(const llmq_status_t *status);

/*  Decode; the caller frees with llmq_status_destroy. NULL with a reason
    in errbuf (may be NULL) on malformed input. */
llmq_status_t *llmq_status_decode(const void *data, size_t size, char *errbuf,
                                  size_t errlen);
void llmq_status_destroy(llmq_status_t **self_p);

/*  ---- usage as reported by a worker ----------------------------------- */

/*  The most one answer may report: more is a rogue or broken worker. */
#define LLMQ_USAGE_MAX_TOKENS 1000000000LL /* tokens of one kind */
#define LLMQ_USAGE_MAX_COST_USD 10000.0    /* dollars */

/*  One answer's usage made sane in place, the one rule for every reader
    of worker-reported usage (broker, batch store, client summary): a
    token count that is negative or over LLMQ_USAGE_MAX_TOKENS becomes 0,
    a cost that is NaN, infinite, negative or over LLMQ_USAGE_MAX_COST_USD
    becomes 0. total_tokens (may be NULL) is checked the same way, against
    twice the bound. Returns how many values were replaced (0: all sane). */
int llmq_usage_clean(int64_t *prompt_tokens, int64_t *completion_tokens,
                     int64_t *total_tokens, double *cost_usd);

/*  ---- request bodies (the broker's response cache, PROTOCOL.md 3.7) --- */

/*  The number under the top-level key `temperature` of a request body (a
    msgpack map), without decoding the rest. Returns 1 with *temperature
    set, 0 if the body has no numeric top-level `temperature`, -1 if the
    bytes are not a readable map. */
int llmq_body_temperature(const void *data, size_t size, double *temperature);

/*  Self test; returns 0 on success. */
int llmq_payload_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
