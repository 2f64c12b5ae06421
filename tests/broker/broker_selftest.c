/*  broker_selftest.c - runs the broker classes' selftests.
    Usage: broker_selftest [queue|metrics|auth|broker|all] [-v]
    An unknown test name is an error (exit 2), never a silent pass. */
#include "llmq_auth.h"
#include "llmq_broker.h"
#include "llmq_metrics.h"
#include "llmq_queue.h"

typedef struct {
    const char *name;
    int (*test)(bool verbose);
} s_test_t;

static const s_test_t s_tests[] = {
    {"queue", llmq_queue_test},
    {"metrics", llmq_metrics_test},
    {"auth", llmq_auth_test},
    {"broker", llmq_broker_test},
};

#define S_NTESTS (sizeof s_tests / sizeof s_tests[0])

int main(int argc, char *argv[])
{
    const char *which = argc > 1 ? argv[1] : "all";
    bool verbose = argc > 2 && streq(argv[2], "-v");
    bool all = streq(which, "all");
    int rc = 0, run = 0;
    for (size_t t = 0; t < S_NTESTS; t++)
        if (all || streq(which, s_tests[t].name)) {
            run++;
            rc |= s_tests[t].test(verbose);
        }
    if (run == 0) {
        fprintf(stderr,
                "broker_selftest: unknown test '%s' "
                "(queue, metrics, auth, broker, all)\n",
                which);
        return 2;
    }
    if (rc)
        fprintf(stderr, "broker_selftest %s: FAILED\n", which);
    return rc ? 1 : 0;
}
