/*  llmq_wlog.h - the worker's log lines: one line per event on stderr,
    plain text or JSON (--json-logs). Debug lines only with --verbose.
    Callers never pass secrets: the API key stays inside llmq_provider.
*/
#ifndef LLMQ_WLOG_H_INCLUDED
#define LLMQ_WLOG_H_INCLUDED

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    LLMQ_LOG_DEBUG = 0,
    LLMQ_LOG_INFO,
    LLMQ_LOG_WARN,
    LLMQ_LOG_ERROR
} llmq_log_level_t;

/*  Set the format, verbosity and the name printed on each line
    (borrowed: must outlive logging). */
void llmq_wlog_setup(const char *name, bool json, bool verbose);

/*  True if debug lines are printed (to skip building them). */
bool llmq_wlog_verbose(void);

void llmq_wlog(llmq_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#ifdef __cplusplus
}
#endif
#endif
