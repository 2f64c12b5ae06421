/*  proto_selftest - runs the selftests of the protocol classes.

    Usage: proto_selftest [-v] [msg|value|payload|duration|log|models|all]...
   (llmq_check.h) Each class's selftest aborts on the first failed check, so
   ctest sees a crash with the failing line on stderr.
*/
#include "llmq_check.h"
#include "llmq_duration.h"
#include "llmq_log.h"
#include "llmq_models.h"
#include "llmq_msg.h"
#include "llmq_payload.h"
#include "llmq_value.h"

static const llmq_selftest_t s_tests[] = {
    {"msg", llmq_msg_test},         {"value", llmq_value_test},
    {"payload", llmq_payload_test}, {"duration", llmq_duration_test},
    {"log", llmq_log_test},         {"models", llmq_models_test},
};

LLMQ_SELFTEST_MAIN("proto_selftest", s_tests)
