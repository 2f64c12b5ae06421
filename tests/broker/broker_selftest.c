/*  broker_selftest.c - runs the broker classes' selftests.
    Usage: broker_selftest [-v]
   [queue|metrics|auth|broker|cache|route|yaml|all]... (llmq_check.h). An
   unknown test name is an error (exit 2), never a silent pass. */
#include "llmq_auth.h"
#include "llmq_broker.h"
#include "llmq_cache.h"
#include "llmq_check.h"
#include "llmq_metrics.h"
#include "llmq_queue.h"
#include "llmq_route.h"
#include "llmq_yaml.h"

static const llmq_selftest_t s_tests[] = {
    {"queue", llmq_queue_test}, {"metrics", llmq_metrics_test},
    {"auth", llmq_auth_test},   {"broker", llmq_broker_test},
    {"cache", llmq_cache_test}, {"route", llmq_route_test},
    {"yaml", llmq_yaml_test},
};

LLMQ_SELFTEST_MAIN("broker_selftest", s_tests)
