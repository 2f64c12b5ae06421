/*  broker_selftest.c - runs the broker classes' selftests.
    Usage: broker_selftest [queue|metrics|auth|broker|all] [-v]     */
#include "llmq_auth.h"
#include "llmq_broker.h"
#include "llmq_metrics.h"
#include "llmq_queue.h"

int main(int argc, char *argv[])
{
    const char *which = argc > 1 ? argv[1] : "all";
    bool verbose = argc > 2 && streq(argv[2], "-v");
    int rc = 0;
    if (streq(which, "queue") || streq(which, "all"))
        rc |= llmq_queue_test(verbose);
    if (streq(which, "metrics") || streq(which, "all"))
        rc |= llmq_metrics_test(verbose);
    if (streq(which, "auth") || streq(which, "all"))
        rc |= llmq_auth_test(verbose);
    if (streq(which, "broker") || streq(which, "all"))
        rc |= llmq_broker_test(verbose);
    if (rc)
        fprintf(stderr, "broker_selftest %s: FAILED\n", which);
    return rc ? 1 : 0;
}
