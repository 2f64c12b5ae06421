/*  worker_selftest.c - runs the worker classes' selftests.
    Usage: worker_selftest [-v]
   [limiter|breaker|sse|provider|scrub|config|wmetrics| engine|all]...
   (llmq_check.h). An unknown name is an error (exit 2), never a silent pass. */
#include "llmq_check.h"
#include "llmq_limiter.h"
#include "llmq_provider.h"
#include "llmq_sse.h"
#include "llmq_worker.h"
#include "llmq_worker_config.h"
#include "llmq_wmetrics.h"

static const llmq_selftest_t s_tests[] = {
    {"limiter", llmq_limiter_test},
    {"breaker", llmq_breaker_test},
    {"sse", llmq_sse_test},
    {"provider", llmq_provider_test},
    {"scrub", llmq_provider_scrub_test},
    {"config", llmq_worker_config_test},
    {"wmetrics", llmq_wmetrics_test},
    {"engine", llmq_worker_test},
};

LLMQ_SELFTEST_MAIN("worker_selftest", s_tests)
