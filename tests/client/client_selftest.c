/*  client_selftest.c - runs the selftests of the client classes. */
#include "llmq.h"
#include "llmq_curve.h"
#include "llmq_jsonl.h"
#include "llmq_runner.h"

#include <string.h>

int main(int argc, char **argv)
{
    bool verbose = argc > 1 && strcmp(argv[1], "-v") == 0;
    int failures = 0;
    failures += llmq_jsonl_test(verbose);
    failures += llmq_client_test(verbose);
    failures += llmq_curve_test(verbose);
    failures += llmq_runner_test(verbose);
    return failures ? 1 : 0;
}
