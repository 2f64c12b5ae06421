/*  llmq_batch.h - the broker's batch manager (issue 8).

    Pure logic over llmq_batch_store: no sockets, no timers of its own. The
    broker feeds it messages and the current time and sends what it returns:

      client batch.* message  -> llmq_batch_handle()        -> replies
      spare credit for model  -> llmq_batch_next_item()     -> a `req`
      worker `res` for it     -> llmq_batch_on_item_result()
      request lost/requeued   -> llmq_batch_item_return()
      batch_api pool idle     -> llmq_batch_next_job_task() -> a `job.*`
      worker job.status/results -> llmq_batch_on_job_msg()
      every ~100 ms           -> llmq_batch_tick()   (commits, timeouts)

    Modes: `realtime` items are dispatched one by one like requests, round-
    robin across batches of the highest priority that has work; `provider`
    batches are cut into provider jobs (OpenAI: <= 50,000 requests and
    <= 200 MB per file; Anthropic: <= 100,000 requests and <= 256 MB; and
    every job.submit payload under the 64 MiB frame limit) that workers of a
    batch_api pool submit, poll and fetch; `auto` resolves at batch.close.

    Durability: everything a client was acknowledged, and every provider job
    before its job.submit is handed out, is committed to SQLite first.
    docs/BATCHES.md has the full rules and the restart procedure.

    Ownership: messages passed in are borrowed (the caller destroys them);
    messages returned, and those appended to `replies`, belong to the caller.
*/
#ifndef LLMQ_BATCH_H_INCLUDED
#define LLMQ_BATCH_H_INCLUDED

#include <czmq.h>
#include <stdbool.h>
#include <stdint.h>

#include "llmq_batch_state.h"
#include "llmq_msg.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _llmq_batch_t llmq_batch_t;

/*  Tunables (the broker's config file section `batches`). */
typedef struct {
    int64_t auto_threshold;     /* auto -> provider at >= this many items
                                   (default 1000) */
    double provider_price;      /* multiplier on the cost_usd workers
                                   report for provider-mode results (1.0:
                                   the worker's price table already applies
                                   the Batch API discount; 0.5 if workers
                                   report list prices) */
    int64_t poll_interval_ms;   /* job.poll period per running job (30 s) */
    int64_t task_timeout_ms;    /* a job task unanswered this long is
                                   handed out again (120 s) */
    int64_t max_tasks_per_pool; /* job tasks outstanding per pool (4) */
    int64_t submit_grace_ms;    /* a lookup that finds nothing proves a job
                                   absent only this long after its submit
                                   was handed out: beyond the worker's
                                   upload + create timeouts (30 min) */
    bool resubmit_failed;       /* provider lines that failed retryably or
                                   expired: run them in realtime (true) or
                                   report them as errors (false) */
    int64_t max_job_items;      /* 0: the provider's own limit */
    int64_t max_job_bytes;      /* 0: min(provider limit, 60 MiB payload) */
    int64_t results_max_items;  /* per batch.results message (1000) */
    int64_t results_max_bytes;  /* per batch.results payload (4 MiB) */
    int64_t commit_every;       /* realtime results per transaction (512) */
    int64_t item_attempts;      /* rounds a realtime item gets when its
                                   worker answers a retryable failure (3) */
} llmq_batch_config_t;

/*  Fill cfg with the defaults above. */
void llmq_batch_config_defaults(llmq_batch_config_t *cfg);

/*  The broker answers: which pool with batch_api serves this model (pool is
    the batch's pool, "" for any)? Fill pool_out and provider_out (provider
    kind: openai, anthropic, sim) and return true, or return false. */
typedef bool(llmq_batch_pool_fn)(const char *model, const char *pool,
                                 char *pool_out, size_t pool_size,
                                 char *provider_out, size_t provider_size,
                                 void *arg);

/*  The broker answers: can the worker at hand serve this model and pool? */
typedef bool(llmq_batch_serves_fn)(const char *model, const char *pool,
                                   void *arg);

/*  Open the store at path (created if missing) and resume every batch that
    is not finished: realtime items without a result become pending again,
    provider jobs continue from their recorded state (a job recorded as
    `submitting` is looked up at the provider before any resubmission).
    cfg may be NULL for defaults. Returns NULL if the store cannot open. */
llmq_batch_t *llmq_batch_new(const char *path, const llmq_batch_config_t *cfg,
                             int64_t now_ms);

/*  Commit pending writes and close. Idempotent. */
void llmq_batch_destroy(llmq_batch_t **self_p);

/*  Install the pool lookup used by auto and provider mode. Without one no
    pool has batch_api and every batch runs in realtime. */
void llmq_batch_set_pool_fn(llmq_batch_t *self, llmq_batch_pool_fn *fn,
                            void *arg);

/*  Handle a client batch.open / add / close / get / cancel. Appends the
    reply messages (routing id copied from msg) to replies, a zlist_t of
    llmq_msg_t * the caller sends and destroys. Returns 0, or -1 if msg is
    not a batch message (nothing appended). Errors go back as `error`
    {code, message, batch}. */
int llmq_batch_handle(llmq_batch_t *self, llmq_msg_t *msg, zlist_t *replies,
                      int64_t now_ms);

/*  Realtime dispatch. The broker calls this when a worker has spare credit
    that no single request wants (single requests go first). serves (may be
    NULL: anything) says what the worker can take. Returns a new `req`
    {id, op, model, priority, pool?} with the item body as payload, or NULL
    if no batch has work for that worker. The `id` is the item key
    (<= 32 bytes, unique in this store) the broker must give back to
    on_item_result or item_return. */
llmq_msg_t *llmq_batch_next_item(llmq_batch_t *self,
                                 llmq_batch_serves_fn *serves, void *arg,
                                 int64_t now_ms);

/*  True if some realtime batch has items waiting (cheap; for the broker's
    decision to ask next_item at all). */
bool llmq_batch_has_items(llmq_batch_t *self);

/*  The final `res` for an item key: stores the result (ok body or error,
    usage). A retryable failure (error.retryable) puts the item back for
    another round, up to item_attempts rounds. Unknown keys and duplicates
    are dropped. Returns 0 if stored, 1 if dropped, 2 if queued again. */
int llmq_batch_on_item_result(llmq_batch_t *self, const char *key,
                              llmq_msg_t *res, int64_t now_ms);

/*  The broker could not complete an item (its worker died and it will not
    retry it itself): the item goes back to the front of its batch. */
void llmq_batch_item_return(llmq_batch_t *self, const char *key,
                            int64_t now_ms);

/*  Provider jobs. The broker calls this for each pool that has a live
    worker with batch_api (on tick, and when such a worker joins), and sends
    each returned message to one of that pool's workers, until it returns
    NULL. A job.submit is committed to the store as `submitting` before it
    is returned. */
llmq_msg_t *llmq_batch_next_job_task(llmq_batch_t *self, const char *pool,
                                     int64_t now_ms);
/*  (pool NULL: a task for any pool; it carries `pool`.) */

/*  The broker could not send a task next_job_task gave it (no live worker
    of that pool): take it back. A job.submit returns to `pending` (it never
    left); others are retried after poll_interval_ms. task is borrowed. */
void llmq_batch_task_unsent(llmq_batch_t *self, llmq_msg_t *task,
                            int64_t now_ms);

/*  A worker's job.status or job.results. Returns 0 if it was for a known
    job, 1 if dropped. */
int llmq_batch_on_job_msg(llmq_batch_t *self, llmq_msg_t *msg, int64_t now_ms);

/*  Timed work: commit realtime results, expire batches past their window,
    retry lost job tasks. Call every 100 ms to 1 s. */
void llmq_batch_tick(llmq_batch_t *self, int64_t now_ms);

/*  Commit whatever is pending now (also done by tick and destroy). */
int llmq_batch_flush(llmq_batch_t *self);

/*  Counters for `status` and metrics. */
typedef struct {
    int64_t batches_active;  /* not in a terminal state */
    int64_t items_pending;   /* realtime items waiting (loaded batches) */
    int64_t items_in_flight; /* realtime items dispatched */
    int64_t jobs_active;     /* provider jobs not done */
    int64_t tasks_in_flight; /* job.* messages awaiting an answer */
} llmq_batch_stats_t;
void llmq_batch_stats(llmq_batch_t *self, llmq_batch_stats_t *stats);

/*  Normalise a provider's batch status to the protocol's set: OpenAI
    (validating, in_progress, finalizing, completed, failed, expired,
    cancelling, cancelled) and Anthropic (in_progress, canceling, ended).
    Unknown or NULL input gives IN_PROGRESS. */
llmq_batch_state_t llmq_batch_normalise_state(const char *provider_status);

/*  Self test (real SQLite in a temp dir, no sockets). Returns 0. */
int llmq_batch_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
