/*  sim.h — internal interface of llmq-sim, the OpenAI- and
    Anthropic-compatible HTTP simulator.

    llmq-sim is one process, one libevent loop: evhttp parses requests, the
    handlers answer at once or arm a timer (latency, token rate, directives),
    and batch jobs advance from timers too. Nothing blocks and nothing is
    threaded, so there are no locks anywhere.

    The code is split in three parts:
    - sim_gen.c   : pure functions: hashing, request parsing (canonical text,
                    usage, directives) and the JSON/SSE bodies of each API.
    - sim_main.c  : flags, server, routing, auth, rate limits, faults,
                    deferred replies, statistics.
    - sim_batch.c : in-memory files, OpenAI Batch API, Anthropic Message
                    Batches.
*/
#ifndef LLMQ_SIM_H_INCLUDED
#define LLMQ_SIM_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <cjson/cJSON.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>

#include "sim_http.h"

#define SIM_DEFAULT_MAX_TOKENS 16
#define SIM_MAX_FORCED_TOKENS 65536
#define SIM_MODEL_MAX 256

//  What an endpoint does with a request body.
typedef enum {
    SIM_OP_CHAT = 0,   //  POST /v1/chat/completions
    SIM_OP_COMPLETION, //  POST /v1/completions
    SIM_OP_EMBEDDING,  //  POST /v1/embeddings
    SIM_OP_MESSAGES    //  POST /v1/messages (Anthropic)
} sim_op_t;

//  Directives found in the request's text: [[sim:key=value,...]].
typedef struct {
    int fail_code;       //  HTTP status to fail with (0: none)
    int fail_times;      //  fail the first N arrivals; 0 = every arrival
    int hang;            //  never answer the first N arrivals
    int malformed;       //  broken JSON for the first N arrivals
    int reset;           //  close the connection for the first N arrivals
    int delay_ms;        //  extra delay on every arrival
    int tokens;          //  force the output token count (still <= max_tokens)
    bool context_length; //  400 context_length_exceeded, every arrival
    int echo_key;        //  error message: this many 'A's, then the key
                         //  of the request (-1: no echo)
    bool counted;        //  some directive depends on the arrival count
} sim_dir_t;

//  A parsed generation request: everything needed to answer it.
typedef struct {
    sim_op_t op;
    char model[SIM_MODEL_MAX]; //  request's model (truncated if longer)
    uint64_t hash;             //  FNV-1a 64 of the canonical request text
    size_t prompt_chars;       //  bytes of message contents (usage rule)
    int prompt_tokens;         //  ceil(prompt_chars / 4), min 1
    int max_tokens;            //  the request's cap (default 16)
    int out_tokens;            //  words we will emit
    bool length_cut;           //  out_tokens was cut by max_tokens
    bool stream;               //  SSE answer
    bool include_usage;        //  stream_options.include_usage (OpenAI)
    int dims;                  //  embeddings: vector dimension
    int n_inputs;              //  embeddings: number of input strings
    uint64_t *input_hash;      //  embeddings: hash per input (owned)
    sim_dir_t dir;             //  directives
} sim_req_t;

//  --- sim_gen.c ----------------------------------------------------------

//  FNV-1a 64: start from SIM_FNV_OFFSET, fold bytes in.
#define SIM_FNV_OFFSET 0xcbf29ce484222325ULL
uint64_t sim_fnv(uint64_t h, const void *data, size_t len);

//  Parses and validates a request body for op. Returns 0, or -1 with a
//  message in err and the offending parameter name in *param (may be NULL).
//  On success the caller must sim_req_free(r).
int sim_req_parse(sim_req_t *r, sim_op_t op, const cJSON *body, char *err,
                  size_t errlen, const char **param);
void sim_req_free(sim_req_t *r);

//  The reply text: "sim-<16 hex of hash>" then count-1 filler words, joined
//  by single spaces. Fresh string, caller frees.
char *sim_text(uint64_t hash, int count);

//  --random-text: the filler words after "sim-<hash>" are drawn afresh for
//  every answer (a non-deterministic provider, to make a spliced stream
//  visible in tests). Off by default.
extern bool sim_random_text;

//  The first needle[0..nlen) in hay[0..hlen), or NULL (memmem, portably).
const char *sim_memfind(const char *hay, size_t hlen, const char *needle,
                        size_t nlen);

//  Appends s as a JSON string literal (quoted, escaped).
void sim_json_str(struct evbuffer *out, const char *s);

//  Whole (non-streaming) response bodies.
void sim_body_chat(struct evbuffer *out, const sim_req_t *r, const char *id,
                   long created, const char *text);
void sim_body_completion(struct evbuffer *out, const sim_req_t *r,
                         const char *id, long created, const char *text);
void sim_body_messages(struct evbuffer *out, const sim_req_t *r, const char *id,
                       const char *text);
void sim_body_embeddings(struct evbuffer *out, const sim_req_t *r);
//  Dispatches on r->op.
void sim_body(struct evbuffer *out, const sim_req_t *r, const char *id,
              long created, const char *text);

//  SSE pieces. word is the text of one token (with its leading space).
void sim_sse_head(struct evbuffer *out, const sim_req_t *r, const char *id,
                  long created);
void sim_sse_word(struct evbuffer *out, const sim_req_t *r, const char *id,
                  long created, const char *word, size_t len);
void sim_sse_tail(struct evbuffer *out, const sim_req_t *r, const char *id,
                  long created);

//  Error bodies in each API's shape. param and code may be NULL (-> null).
void sim_err_openai(struct evbuffer *out, const char *message, const char *type,
                    const char *param, const char *code);
void sim_err_anthropic(struct evbuffer *out, const char *type,
                       const char *message);
//  The OpenAI error type / Anthropic error type for an HTTP status.
const char *sim_openai_type(int status);
const char *sim_anthropic_type(int status);

//  OpenAI duration format: "120ms", "1s", "1.5s", "6m0s", "1h2m3s".
void sim_duration(char *buf, size_t cap, int64_t ms);
//  RFC 3339 UTC time of a wall-clock time in ms: 2024-09-24T18:37:24.100Z.
void sim_rfc3339(char *buf, size_t cap, int64_t wall_ms);

//  --- sim_batch.c -------------------------------------------------------

typedef struct sim_batches_s sim_batches_t;

typedef struct {
    int64_t validate_ms; //  time in "validating"
    int64_t progress_ms; //  time to process all lines
    int64_t finalize_ms; //  time in "finalizing" / "cancelling"
    int64_t expire_ms;   //  completion window
    int64_t max_store;   //  bytes of files kept in memory
} sim_batch_cfg_t;

//  Answers one batch line offline (no latency, no flag faults, no rate
//  limits; directives apply). Appends the response body (success or error in
//  the API's shape) to out and returns its HTTP status; returns 0 when the
//  line is stuck (hang directive: it never completes). sim_main.c gives it,
//  so a 200 counts for double billing like a realtime answer.
//  key is the API key the batch was created with (for echo_key).
typedef int(sim_batch_exec_fn)(void *arg, sim_op_t op, const cJSON *body,
                               const char *key, struct evbuffer *out);

//  http is borrowed (it outlives the batches); exec(exec_arg, ...) answers
//  each line.
sim_batches_t *sim_batches_new(sim_http_t *http, const sim_batch_cfg_t *cfg,
                               sim_batch_exec_fn *exec, void *exec_arg);
void sim_batches_destroy(sim_batches_t **self_p);
//  Route handlers; path is the request path, req is answered.
void sim_batches_files(sim_batches_t *self, struct evhttp_request *req,
                       const char *path);
void sim_batches_openai(sim_batches_t *self, struct evhttp_request *req,
                        const char *path);
void sim_batches_anthropic(sim_batches_t *self, struct evhttp_request *req,
                           const char *path);
//  Appends the "batches" and "files" members (with leading comma) to /_stats.
void sim_batches_stats(sim_batches_t *self, struct evbuffer *out);

#endif
