/*  proto_selftest - runs the selftests of the protocol classes.

    Usage: proto_selftest [-v] [msg|value|duration]...   (no name: all of them)
    Each class's selftest aborts on the first failed check, so ctest sees a
    crash with the failing line on stderr.
*/
#include "llmq_duration.h"
#include "llmq_log.h"
#include "llmq_msg.h"
#include "llmq_payload.h"
#include "llmq_value.h"

#include <stdio.h>
#include <string.h>

typedef struct {
    const char *name;
    int (*test)(bool verbose);
} s_test_t;

static const s_test_t s_tests[] = {
    {"msg", llmq_msg_test},         {"value", llmq_value_test},
    {"payload", llmq_payload_test}, {"duration", llmq_duration_test},
    {"log", llmq_log_test},
};

int main(int argc, char **argv)
{
    bool verbose = false;
    int selected = 0, failed = 0;
    for (int k = 1; k < argc; k++) {
        bool known = strcmp(argv[k], "-v") == 0;
        if (known)
            verbose = true;
        for (size_t t = 0; t < sizeof s_tests / sizeof s_tests[0]; t++)
            known = known || strcmp(argv[k], s_tests[t].name) == 0;
        if (!known) {
            fprintf(stderr, "proto_selftest: unknown test '%s'\n", argv[k]);
            return 2;
        }
    }
    for (size_t t = 0; t < sizeof s_tests / sizeof s_tests[0]; t++) {
        bool run = true;
        int names = 0;
        for (int k = 1; k < argc; k++)
            if (strcmp(argv[k], "-v") != 0) {
                names++;
                run = names == 1 ? false : run;
            }
        for (int k = 1; k < argc; k++)
            if (strcmp(argv[k], s_tests[t].name) == 0)
                run = true;
        if (!run)
            continue;
        selected++;
        if (s_tests[t].test(verbose) != 0) {
            fprintf(stderr, "proto_selftest: %s FAILED\n", s_tests[t].name);
            failed++;
        }
    }
    if (selected == 0) {
        fprintf(stderr, "usage: proto_selftest [-v] [msg|value|duration]...\n");
        return 2;
    }
    printf("proto_selftest: %d run, %d failed\n", selected, failed);
    return failed ? 1 : 0;
}
