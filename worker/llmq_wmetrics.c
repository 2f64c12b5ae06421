/*  llmq_wmetrics.c - the worker's own Prometheus metrics (see the header).

    Contents: families, new and destroy, the collect callback (gauges from
    the owner's live state), counting, and pass-through to the listener.
*/
#include "llmq_wmetrics.h"
#include "llmq_metrics.h"

#include <czmq.h>

#define s_MAX_MODELS 200 //  Distinct model labels before "_other"

struct _llmq_wmetrics_t {
    llmq_metrics_t *metrics;    //  Registry and listener (broker's class)
    zhashx_t *models;           //  Model names in use as labels
    llmq_wmetrics_state_fn *fn; //  Owner's live state, or NULL
    void *arg;                  //  Its argument
    int64_t started;            //  zclock_mono() at new
};

static void s_define(llmq_metrics_t *m)
{
    static const struct {
        const char *name, *help;
        llmq_metric_type_t type;
    } families[] = {
        {"llmq_worker_requests_total", "Requests answered, by outcome",
         LLMQ_METRIC_COUNTER},
        {"llmq_worker_errors_total", "Failed requests by error code",
         LLMQ_METRIC_COUNTER},
        {"llmq_worker_retries_total", "HTTP attempts retried",
         LLMQ_METRIC_COUNTER},
        {"llmq_worker_http_429_total", "Provider answers with status 429",
         LLMQ_METRIC_COUNTER},
        {"llmq_worker_limiter_waits_total",
         "Requests that waited for the rate limiter", LLMQ_METRIC_COUNTER},
        {"llmq_worker_breaker_opens_total", "Times the circuit opened",
         LLMQ_METRIC_COUNTER},
        {"llmq_worker_breaker_state", "Circuit breaker state (1 = current)",
         LLMQ_METRIC_GAUGE},
        {"llmq_worker_tokens_total", "Tokens used, by kind",
         LLMQ_METRIC_COUNTER},
        {"llmq_worker_cost_usd_total", "Cost as priced by the worker",
         LLMQ_METRIC_COUNTER},
        {"llmq_worker_in_flight", "Requests held", LLMQ_METRIC_GAUGE},
        {"llmq_worker_queued", "Requests waiting for the limiter or breaker",
         LLMQ_METRIC_GAUGE},
        {"llmq_worker_uptime_seconds", "Seconds since start",
         LLMQ_METRIC_GAUGE},
    };
    for (size_t i = 0; i < sizeof(families) / sizeof(families[0]); i++)
        llmq_metrics_define(m, families[i].name, families[i].type,
                            families[i].help, NULL, 0);
    const char *counters[] = {"retries", "http_429", "limiter_waits",
                              "breaker_opens"};
    for (size_t i = 0; i < 4; i++) {
        char name[64];
        snprintf(name, sizeof(name), "llmq_worker_%s_total", counters[i]);
        llmq_metrics_add(m, name, NULL, 0);
    }
}

static void s_collect(llmq_metrics_t *m, void *arg)
{
    llmq_wmetrics_t *self = (llmq_wmetrics_t *)arg;
    llmq_wmetrics_state_t st = {0, 0, "closed"};
    if (self->fn)
        self->fn(&st, self->arg);
    llmq_metrics_set(m, "llmq_worker_in_flight", NULL, (double)st.in_flight);
    llmq_metrics_set(m, "llmq_worker_queued", NULL, (double)st.queued);
    const char *states[] = {"closed", "open", "half_open"};
    for (size_t i = 0; i < 3; i++) {
        const char *labels[] = {"state", states[i], NULL};
        llmq_metrics_set(m, "llmq_worker_breaker_state", labels,
                         streq(st.breaker, states[i]) ? 1 : 0);
    }
    llmq_metrics_set(m, "llmq_worker_uptime_seconds", NULL,
                     (double)(zclock_mono() - self->started) / 1000.0);
}

llmq_wmetrics_t *llmq_wmetrics_new(const char *address, char *err, size_t size)
{
    llmq_wmetrics_t *self = (llmq_wmetrics_t *)calloc(1, sizeof(*self));
    if (!self)
        return NULL;
    self->metrics = llmq_metrics_new();
    self->models = zhashx_new();
    self->started = zclock_mono();
    if (!self->metrics || !self->models) {
        snprintf(err, size, "out of memory");
        llmq_wmetrics_destroy(&self);
        return NULL;
    }
    s_define(self->metrics);
    llmq_metrics_set_collect(self->metrics, s_collect, self);
    if (llmq_metrics_listen(self->metrics, address) < 0) {
        snprintf(err, size, "--metrics: cannot listen on %s: %s", address,
                 strerror(errno));
        llmq_wmetrics_destroy(&self);
        return NULL;
    }
    return self;
}

void llmq_wmetrics_destroy(llmq_wmetrics_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    llmq_wmetrics_t *self = *self_p;
    llmq_metrics_destroy(&self->metrics);
    zhashx_destroy(&self->models);
    free(self);
    *self_p = NULL;
}

void llmq_wmetrics_set_state(llmq_wmetrics_t *self, llmq_wmetrics_state_fn *fn,
                             void *arg)
{
    if (self) {
        self->fn = fn;
        self->arg = arg;
    }
}

const char *llmq_wmetrics_url(const llmq_wmetrics_t *self)
{
    return self ? llmq_metrics_url(self->metrics) : NULL;
}

//  Bounded label cardinality: clients pick model names on "*" workers.
static const char *s_model(llmq_wmetrics_t *self, const char *model)
{
    if (!model)
        return "";
    if (zhashx_lookup(self->models, model))
        return model;
    if (zhashx_size(self->models) >= s_MAX_MODELS)
        return "_other";
    zhashx_insert(self->models, model, (void *)1);
    return model;
}

void llmq_wmetrics_answer(llmq_wmetrics_t *self, const char *model,
                          const char *outcome, int64_t prompt_tokens,
                          int64_t completion_tokens, double cost_usd)
{
    if (!self)
        return;
    const char *m = s_model(self, model);
    const char *labels[] = {"model", m, "outcome", outcome, NULL};
    llmq_metrics_add(self->metrics, "llmq_worker_requests_total", labels, 1);
    if (!streq(outcome, "ok")) {
        const char *code[] = {"code", outcome, NULL};
        llmq_metrics_add(self->metrics, "llmq_worker_errors_total", code, 1);
        return;
    }
    const char *prompt[] = {"model", m, "kind", "prompt", NULL};
    const char *completion[] = {"model", m, "kind", "completion", NULL};
    const char *cost[] = {"model", m, NULL};
    llmq_metrics_add(self->metrics, "llmq_worker_tokens_total", prompt,
                     (double)prompt_tokens);
    llmq_metrics_add(self->metrics, "llmq_worker_tokens_total", completion,
                     (double)completion_tokens);
    llmq_metrics_add(self->metrics, "llmq_worker_cost_usd_total", cost,
                     cost_usd);
}

void llmq_wmetrics_count(llmq_wmetrics_t *self, const char *what)
{
    if (!self)
        return;
    char name[64];
    snprintf(name, sizeof(name), "llmq_worker_%s_total", what);
    llmq_metrics_add(self->metrics, name, NULL, 1);
}

size_t llmq_wmetrics_poll_items(llmq_wmetrics_t *self, zmq_pollitem_t *items,
                                size_t max)
{
    return self ? llmq_metrics_poll_items(self->metrics, items, max) : 0;
}

void llmq_wmetrics_service(llmq_wmetrics_t *self, const zmq_pollitem_t *items,
                           size_t count, int64_t now_ms)
{
    if (self)
        llmq_metrics_service(self->metrics, items, count, now_ms);
}

char *llmq_wmetrics_render(llmq_wmetrics_t *self)
{
    return self ? llmq_metrics_render(self->metrics) : NULL;
}

//  --------------------------------------------------------------------------
//  Self test: counting, gauges from the owner's state, bounded model labels.

static void s_test_state(llmq_wmetrics_state_t *st, void *arg)
{
    (void)arg;
    st->in_flight = 3;
    st->queued = 1;
    st->breaker = "open";
}

#include "llmq_check.h"
#define CHECK(x) LLMQ_CHECK_OR(x, rc = 1; goto done)

int llmq_wmetrics_test(bool verbose)
{
    int rc = 0;
    char err[256], *text = NULL;
    llmq_wmetrics_t *self = NULL;
    CHECK(llmq_wmetrics_new("127.0.0.1:99999", err, sizeof(err)) == NULL);
    self = llmq_wmetrics_new("127.0.0.1:0", err, sizeof(err));
    CHECK(self && llmq_wmetrics_url(self));
    llmq_wmetrics_set_state(self, s_test_state, NULL);
    llmq_wmetrics_answer(self, "m", "ok", 10, 5, 0.25);
    llmq_wmetrics_answer(self, "m", "rate_limited", 0, 0, 0);
    llmq_wmetrics_count(self, "retries");
    llmq_wmetrics_count(self, "retries");
    for (int i = 0; i < s_MAX_MODELS + 5; i++) {
        char model[16];
        snprintf(model, sizeof(model), "x%d", i);
        llmq_wmetrics_answer(self, model, "ok", 0, 0, 0);
    }
    text = llmq_wmetrics_render(self);
    CHECK(text);
    CHECK(strstr(text,
                 "llmq_worker_requests_total{model=\"m\",outcome=\"ok\"} 1"));
    CHECK(strstr(text, "llmq_worker_errors_total{code=\"rate_limited\"} 1"));
    CHECK(strstr(text,
                 "llmq_worker_tokens_total{model=\"m\",kind=\"prompt\"} 10"));
    CHECK(strstr(text, "llmq_worker_cost_usd_total{model=\"m\"} 0.25"));
    CHECK(strstr(text, "llmq_worker_retries_total 2"));
    CHECK(strstr(text, "llmq_worker_in_flight 3"));
    CHECK(strstr(text, "llmq_worker_breaker_state{state=\"open\"} 1"));
    CHECK(strstr(text, "model=\"_other\",outcome=\"ok\"} 6"));
    llmq_wmetrics_count(NULL, "retries"); //  Off: no-ops
    CHECK(llmq_wmetrics_render(NULL) == NULL);
done:
    free(text);
    llmq_wmetrics_destroy(&self);
    if (verbose && !rc)
        printf("llmq_wmetrics: OK\n");
    return rc;
}
