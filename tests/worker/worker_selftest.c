/*  worker_selftest.c - runs one worker class selftest by name:
    limiter, breaker, sse, provider, config, wmetrics, engine. */
#include <stdio.h>
#include <string.h>

#include "llmq_limiter.h"
#include "llmq_provider.h"
#include "llmq_sse.h"
#include "llmq_worker.h"
#include "llmq_worker_config.h"
#include "llmq_wmetrics.h"

int main(int argc, char **argv)
{
    const char *which = argc > 1 ? argv[1] : "all";
    bool all = strcmp(which, "all") == 0;
    int rc = 0;
    if (all || strcmp(which, "limiter") == 0)
        rc |= llmq_limiter_test(true);
    if (all || strcmp(which, "breaker") == 0)
        rc |= llmq_breaker_test(true);
    if (all || strcmp(which, "sse") == 0)
        rc |= llmq_sse_test(true);
    if (all || strcmp(which, "provider") == 0)
        rc |= llmq_provider_test(true);
    if (all || strcmp(which, "config") == 0)
        rc |= llmq_worker_config_test(true);
    if (all || strcmp(which, "wmetrics") == 0)
        rc |= llmq_wmetrics_test(true);
    if (all || strcmp(which, "engine") == 0)
        rc |= llmq_worker_test(true);
    return rc ? 1 : 0;
}
