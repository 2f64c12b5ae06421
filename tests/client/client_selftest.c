/*  client_selftest.c - runs the selftests of the client classes.
    Usage: llmq_client_selftest [-v] [jsonl|client|curve|runner|all]...
    (llmq_check.h). An unknown name is an error (exit 2). */
#include "llmq.h"
#include "llmq_check.h"
#include "llmq_curve.h"
#include "llmq_jsonl.h"
#include "llmq_runner.h"

static const llmq_selftest_t s_tests[] = {
    {"jsonl", llmq_jsonl_test},
    {"client", llmq_client_test},
    {"curve", llmq_curve_test},
    {"runner", llmq_runner_test},
};

LLMQ_SELFTEST_MAIN("llmq_client_selftest", s_tests)
