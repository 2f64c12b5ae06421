/*  llmq_metrics.h - Prometheus metrics: a small registry and a tiny HTTP
    listener that serves it as text format 0.0.4 on GET /metrics.

    The broker is one thread with no locks, so the registry is not thread
    safe and the listener does no I/O of its own: the owner adds the
    listener's file descriptors to its poll set (llmq_metrics_poll_items) and
    hands readiness back (llmq_metrics_service). Every socket is
    non-blocking; a slow or silent scraper is closed after a few seconds and
    never stalls the loop.

    Families are defined once (name, type, help); series are identified by a
    label list {key, value, key, value, ..., NULL}. Label values are escaped.
    Gauges that mirror live state are refreshed by a collect callback that
    runs just before each render.

    Ownership: strings are copied; llmq_metrics_render returns a string the
    caller frees.
*/
#ifndef LLMQ_METRICS_H_INCLUDED
#define LLMQ_METRICS_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <zmq.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    LLMQ_METRIC_COUNTER,
    LLMQ_METRIC_GAUGE,
    LLMQ_METRIC_HISTOGRAM
} llmq_metric_type_t;

typedef struct _llmq_metrics_t llmq_metrics_t;

/*  Called before each render so the owner can set gauges from live state. */
typedef void(llmq_metrics_collect_fn)(llmq_metrics_t *metrics, void *arg);

/*  Create an empty registry. NULL on failure. */
llmq_metrics_t *llmq_metrics_new(void);

/*  Destroy the registry and close the listener; NULLs *self_p. */
void llmq_metrics_destroy(llmq_metrics_t **self_p);

/*  Define a family. For histograms, buckets are upper bounds in increasing
    order (count of them in nbuckets; +Inf is implied). Returns 0, -1 if the
    name is taken or invalid. */
int llmq_metrics_define(llmq_metrics_t *self, const char *name,
                        llmq_metric_type_t type, const char *help,
                        const double *buckets, size_t nbuckets);

/*  Add to a counter or gauge series (created on first use). labels is a
    NULL-terminated list of key, value pairs, or NULL. Unknown family: no-op. */
void llmq_metrics_add(llmq_metrics_t *self, const char *name,
                      const char *const *labels, double value);

/*  Set a gauge (or counter) series to a value. */
void llmq_metrics_set(llmq_metrics_t *self, const char *name,
                      const char *const *labels, double value);

/*  Record one observation in a histogram series. */
void llmq_metrics_observe(llmq_metrics_t *self, const char *name,
                          const char *const *labels, double value);

/*  A handle on one series, for hot paths: no label formatting or lookup
    per update. Borrowed; valid until the family is reset or the registry
    destroyed. NULL for an unknown family or past the series cap. */
typedef struct _llmq_metric_series_t llmq_metric_series_t;
llmq_metric_series_t *llmq_metrics_series(llmq_metrics_t *self,
                                          const char *name,
                                          const char *const *labels);
/*  Add to a counter/gauge series handle; observe into a histogram one.
    A NULL handle is a no-op. */
void llmq_metrics_series_add(llmq_metric_series_t *series, double value);
void llmq_metrics_series_observe(llmq_metric_series_t *series, double value);

/*  Forget every series of a family (for gauges rebuilt by collect). */
void llmq_metrics_reset(llmq_metrics_t *self, const char *name);

/*  The value of a counter or gauge series, 0 if absent (for tests). */
double llmq_metrics_value(llmq_metrics_t *self, const char *name,
                          const char *const *labels);

/*  Set the callback run before each render. */
void llmq_metrics_set_collect(llmq_metrics_t *self, llmq_metrics_collect_fn *fn,
                              void *arg);

/*  Render everything in Prometheus text format. Caller frees. */
char *llmq_metrics_render(llmq_metrics_t *self);

/*  Listen for HTTP scrapes on "PORT", "HOST:PORT" or "*:PORT" (host defaults
    to 127.0.0.1; "*" means every interface); port 0 picks a free one.
    Returns the bound port, or -1 with errno set. */
int llmq_metrics_listen(llmq_metrics_t *self, const char *address);

/*  The listener's base URL "http://HOST:PORT" (borrowed; scrape
    URL + "/metrics"), NULL if not listening. */
const char *llmq_metrics_url(const llmq_metrics_t *self);

/*  Fill poll items for the listener and its open connections; returns how
    many were written (at most max). */
size_t llmq_metrics_poll_items(llmq_metrics_t *self, zmq_pollitem_t *items,
                               size_t max);

/*  Act on poll results for the items written by llmq_metrics_poll_items
    (accept, read, answer, close), and close connections idle for too long.
    now_ms is a monotonic clock. */
void llmq_metrics_service(llmq_metrics_t *self, const zmq_pollitem_t *items,
                          size_t count, int64_t now_ms);

/*  Tokens and cost by model (PROTOCOL.md 3.8): define the families
    llmq_broker_tokens_total{model,kind} and llmq_broker_cost_usd_total
    {model}; then count one result's usage under model (a bounded label:
    the caller caps the distinct models). The series handles are kept per
    model (one lookup per result): never reset these two families. */
void llmq_metrics_usage_define(llmq_metrics_t *self);
void llmq_metrics_usage(llmq_metrics_t *self, const char *model,
                        int64_t prompt_tokens, int64_t completion_tokens,
                        double cost_usd);

/*  Self test; returns 0 on success. */
int llmq_metrics_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
