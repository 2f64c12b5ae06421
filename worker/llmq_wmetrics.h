/*  llmq_wmetrics.h - the worker's own Prometheus metrics (--metrics).

    The worker is one thread with one poll loop, like the broker, so it
    reuses the broker's registry and non-blocking HTTP listener
    (broker/llmq_metrics.h): the loop adds llmq_wmetrics_poll_items to its
    poll set and hands readiness back to llmq_wmetrics_service. This class
    only defines the worker's families and keeps model labels bounded
    (models come from requests when a worker serves "*").

    Families: llmq_worker_requests_total{model,outcome} (outcome = ok or the
    error code), llmq_worker_errors_total{code}, llmq_worker_retries_total,
    llmq_worker_http_429_total, llmq_worker_limiter_waits_total,
    llmq_worker_breaker_opens_total, llmq_worker_breaker_state{state} (1 for
    the current one), llmq_worker_tokens_total{model,kind},
    llmq_worker_cost_usd_total{model}, llmq_worker_in_flight,
    llmq_worker_queued, llmq_worker_uptime_seconds.

    Every method takes NULL for self and then does nothing, so the worker
    calls them whether or not --metrics is on.

    Ownership: strings are borrowed (labels are copied by the registry).
*/
#ifndef LLMQ_WMETRICS_H_INCLUDED
#define LLMQ_WMETRICS_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _llmq_wmetrics_t llmq_wmetrics_t;

/*  Live state for the gauges, filled by the owner before each scrape. */
typedef struct {
    size_t in_flight;    /* requests held */
    size_t queued;       /* waiting for the limiter or the breaker */
    const char *breaker; /* "closed", "open", "half_open" */
} llmq_wmetrics_state_t;

typedef void(llmq_wmetrics_state_fn)(llmq_wmetrics_state_t *state, void *arg);

/*  Listen on "PORT" or "HOST:PORT" (host 127.0.0.1 by default, "*" every
    interface). Returns NULL with the reason in err. */
llmq_wmetrics_t *llmq_wmetrics_new(const char *address, char *err, size_t size);
void llmq_wmetrics_destroy(llmq_wmetrics_t **self_p);

/*  Where to read the gauges from at scrape time. */
void llmq_wmetrics_set_state(llmq_wmetrics_t *self, llmq_wmetrics_state_fn *fn,
                             void *arg);

/*  "http://HOST:PORT" (borrowed), or NULL. */
const char *llmq_wmetrics_url(const llmq_wmetrics_t *self);

/*  One answer: outcome "ok" or an error code name; tokens and cost for ok. */
void llmq_wmetrics_answer(llmq_wmetrics_t *self, const char *model,
                          const char *outcome, int64_t prompt_tokens,
                          int64_t completion_tokens, double cost_usd);

/*  Count one event of a counter without labels: "retries", "http_429",
    "limiter_waits", "breaker_opens". */
void llmq_wmetrics_count(llmq_wmetrics_t *self, const char *what);

size_t llmq_wmetrics_poll_items(llmq_wmetrics_t *self, zmq_pollitem_t *items,
                                size_t max);
void llmq_wmetrics_service(llmq_wmetrics_t *self, const zmq_pollitem_t *items,
                           size_t count, int64_t now_ms);

/*  Render the text format (caller frees); for tests. */
char *llmq_wmetrics_render(llmq_wmetrics_t *self);

/*  Self test; returns 0 on success. */
int llmq_wmetrics_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
