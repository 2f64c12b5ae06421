/*  worker_selftest.c - runs one worker class selftest by name:
    limiter, breaker, sse, provider, config, wmetrics, engine (or all).
    An unknown name is an error (exit 2), never a silent pass. */
#include <stdio.h>
#include <string.h>

#include "llmq_limiter.h"
#include "llmq_provider.h"
#include "llmq_sse.h"
#include "llmq_worker.h"
#include "llmq_worker_config.h"
#include "llmq_wmetrics.h"

typedef struct {
    const char *name;
    int (*test)(bool verbose);
} s_test_t;

static const s_test_t s_tests[] = {
    {"limiter", llmq_limiter_test},
    {"breaker", llmq_breaker_test},
    {"sse", llmq_sse_test},
    {"provider", llmq_provider_test},
    {"config", llmq_worker_config_test},
    {"wmetrics", llmq_wmetrics_test},
    {"engine", llmq_worker_test},
};

#define S_NTESTS (sizeof s_tests / sizeof s_tests[0])

int main(int argc, char **argv)
{
    const char *which = argc > 1 ? argv[1] : "all";
    bool all = strcmp(which, "all") == 0;
    int rc = 0, run = 0;
    for (size_t t = 0; t < S_NTESTS; t++)
        if (all || strcmp(which, s_tests[t].name) == 0) {
            run++;
            rc |= s_tests[t].test(true);
        }
    if (run == 0) {
        fprintf(stderr,
                "worker_selftest: unknown test '%s' (limiter, breaker, sse, "
                "provider, config, wmetrics, engine, all)\n",
                which);
        return 2;
    }
    return rc ? 1 : 0;
}
