/*  selftest.c - runs the batch classes' selftests (issue 8).

    Usage: llmq_batch_selftest [-v] [store|batch|api|agree|module ...]
    With no class names it runs every class built into this executable
    (each executable is built with the classes it can link: see
    CMakeLists.txt).
    The `api` test needs llmq-sim: it is found in $LLMQ_BIN_DIR.
*/
#include <czmq.h>

#ifdef LLMQ_BATCH_STORE
#include "llmq_batch_store.h"
#endif
#ifdef LLMQ_BATCH_MANAGER
#include "llmq_batch.h"
#endif
#ifdef LLMQ_BATCH_API
#include "llmq_batch_api.h"
#endif
#ifdef LLMQ_BATCH_MODULE
#include "llmq_batch_module.h"
#endif

typedef struct {
    const char *name;
    int (*test)(bool verbose);
} s_test_t;

static const s_test_t s_tests[] = {
#ifdef LLMQ_BATCH_STORE
    {"store", llmq_batch_store_test},
#endif
#ifdef LLMQ_BATCH_MANAGER
    {"batch", llmq_batch_test},
#endif
#ifdef LLMQ_BATCH_API
    {"api", llmq_batch_api_test},         /* against llmq-sim */
    {"agree", llmq_batch_api_agree_test}, /* batch = realtime */
#endif
#ifdef LLMQ_BATCH_MODULE
    {"module", llmq_batch_module_test},
#endif
};

int main(int argc, char *argv[])
{
    bool verbose = false;
    int named = 0;
    for (int i = 1; i < argc; i++) {
        if (streq(argv[i], "-v"))
            verbose = true;
        else
            named++;
    }
    size_t count = sizeof s_tests / sizeof s_tests[0];
    for (size_t t = 0; t < count; t++) {
        bool run = named == 0;
        for (int i = 1; i < argc && !run; i++)
            run = streq(argv[i], s_tests[t].name);
        if (run && s_tests[t].test(verbose) != 0)
            return 1;
    }
    for (int i = 1; i < argc; i++) {
        bool known = streq(argv[i], "-v");
        for (size_t t = 0; t < count && !known; t++)
            known = streq(argv[i], s_tests[t].name);
        if (!known) {
            fprintf(stderr, "unknown test: %s\n", argv[i]);
            return 2;
        }
    }
    return 0;
}
