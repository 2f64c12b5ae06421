/*  selftest.c - runs the batch classes' selftests (issue 8).

    Usage: llmq_batch_selftest [-v] [store|batch|api|agree|module|all]...
    (llmq_check.h)
    With no class names it runs every class built into this executable
    (each executable is built with the classes it can link: see
    CMakeLists.txt).
    The `api` test needs llmq-sim: it is found in $LLMQ_BIN_DIR.
*/
#include "llmq_check.h"

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

static const llmq_selftest_t s_tests[] = {
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

LLMQ_SELFTEST_MAIN("llmq_batch_selftest", s_tests)
