/*  llmq_batch_api.h - the providers' Batch APIs, worker side (issue 8).

    Runs the broker's job.* tasks against OpenAI's Files + Batches API or
    Anthropic's Message Batches API, without blocking: the class adds easy
    handles to a CURLM that the worker's loop owns, and the loop tells it
    when each transfer completes. The worker keeps no job state between
    tasks (workers are stateless): every task carries what it needs, and the
    answer goes back as job.status / job.results through a send callback.

      job.submit {job, model, op} + items  ->  build JSONL (OpenAI: {custom_id,
          method, url, body}; Anthropic: {custom_id, params}), upload it
          (multipart, purpose=batch) and create the batch with completion
          window 24h and metadata {llmq_job: job}  ->  job.status {job,
          provider_batch, state}
      job.poll {job, provider_batch}       ->  job.status {state, counts,
          output_file, error_file}
      job.poll {job, provider_batch: ""}   ->  lookup: list the provider's
          batches and find the one tagged {llmq_job: job} (OpenAI), or the
          one created near time_ms with `count` requests (Anthropic, which
          has no metadata); job.status with its id, or error not_found
      job.fetch {job, provider_batch}      ->  job.results pages {job, final}
          + [{custom_id, ok, body | error, usage}], bodies in OpenAI shape
          whatever the provider (custom_id as the broker sent it)
      job.cancel {job, provider_batch}     ->  job.status
      job.cancel {job, provider_batch, mode: "cleanup"}  ->  delete the
          batch's input, output and error files (sent by the broker once
          the results are committed)  ->  job.status

    A task that fails answers job.status {job, provider_batch, state:
    "failed", error {code, message, status, retryable}} with no counts: the
    broker retries later or gives up, by its own rules (docs/BATCHES.md).

    What differs between the providers' Batch APIs (routes, the batch line
    of a request, the status of a batch, a result line, auth headers, error
    classification) is the provider's (llmq_batch_ops_t in llmq_provider.h):
    this class runs the sequence over the worker's provider object, so a
    request is translated and a failure classified as in realtime mode.

    The API key is sent only in request headers; it never appears in a
    message, a log line or an error text (provider messages are scrubbed).

    Ownership: the config's provider is borrowed (it must outlive the
    object); messages given to the send
    callback belong to it (llmq_msg_t **, NULLed); messages passed to
    handle() are borrowed.
*/
#ifndef LLMQ_BATCH_API_H_INCLUDED
#define LLMQ_BATCH_API_H_INCLUDED

#include <curl/curl.h>
#include <stdbool.h>
#include <stdint.h>

#include "llmq_msg.h"
#include "llmq_provider.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _llmq_batch_api_t llmq_batch_api_t;

typedef struct {
    const llmq_provider_t *provider; /* the worker's, borrowed: it must
                                        outlive the object; its kind says
                                        which Batch API (routes, lines,
                                        results, auth, errors) */
    int64_t timeout_ms;              /* per HTTP transfer (0: 600 s) */
    int64_t results_page;            /* results per job.results (0: 1000) */
    bool verbose;                    /* log each call (never its headers) */
} llmq_batch_api_config_t;

/*  Price of one result line in USD, Batch API discount included: the
    worker passes its price table (llmq_worker_config_cost with batch =
    true). */
typedef double(llmq_batch_api_cost_fn)(const char *model, int64_t prompt_tokens,
                                       int64_t completion_tokens, void *arg);

/*  Where answers go: the worker sends the message to the broker. The
    callback takes the message (and NULLs *msg_p). */
typedef void(llmq_batch_api_send_fn)(llmq_msg_t **msg_p, void *arg);

/*  Create, sharing the worker's curl multi handle. Returns NULL on a bad
    config (no provider, or a provider without a Batch API). */
llmq_batch_api_t *llmq_batch_api_new(const llmq_batch_api_config_t *cfg,
                                     CURLM *multi, llmq_batch_api_send_fn *send,
                                     void *arg);

/*  Price results with fn (usage.cost_usd of each job.results line);
    without it the cost is 0. */
void llmq_batch_api_set_cost(llmq_batch_api_t *self, llmq_batch_api_cost_fn *fn,
                             void *arg);

/*  Abort every transfer (removing its handle from the multi) and free.
    Tasks in progress get no answer: the broker's task timeout covers
    them. Idempotent. */
void llmq_batch_api_destroy(llmq_batch_api_t **self_p);

/*  Start a job.submit / poll / fetch / cancel. Returns 0 if the task was
    started (its answer comes through send), 1 if the message was answered
    at once (bad task: a job.status error went through send), -1 if msg is
    not a job task. */
int llmq_batch_api_handle(llmq_batch_api_t *self, llmq_msg_t *msg);

/*  The worker's loop got CURLMSG_DONE for easy: if the handle is ours,
    process it (removing and cleaning it up, maybe starting the next step)
    and return true; else return false and touch nothing. */
bool llmq_batch_api_done(llmq_batch_api_t *self, CURL *easy, CURLcode result);

/*  Tasks in progress (for the worker's drain on `bye`). */
size_t llmq_batch_api_active(llmq_batch_api_t *self);

/*  Self test against a real llmq-sim (found in $LLMQ_BIN_DIR), started
    with --port 0 and short batch timings. Returns 0 on success. It lives
    in tests/batch/batch_api_test.c (the class file keeps the sequence). */
int llmq_batch_api_test(bool verbose);

/*  Batch and realtime agree (request translation with tools, the error
    classifier); no network. Also in tests/batch/batch_api_test.c. */
int llmq_batch_api_agree_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
