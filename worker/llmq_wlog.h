/*  llmq_wlog.h - the worker's free-text log lines, a thin wrapper over the
    process-wide logger (include/llmq_log.h): each line is the event "log"
    with its text under "msg", plain text or JSON (--json-logs) like every
    other llmq log line. Debug lines only with --verbose. New code logs
    events with typed key/values through llmq_log() instead.
    Callers never pass secrets: the API key stays inside llmq_provider (and
    is registered with llmq_log_add_secret all the same).
*/
#ifndef LLMQ_WLOG_H_INCLUDED
#define LLMQ_WLOG_H_INCLUDED

#include "llmq_log.h"

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

/*  Set up the process-wide logger: the name printed on each line (copied),
    JSON or text, debug lines or not. */
void llmq_wlog_setup(const char *name, bool json, bool verbose);

/*  True if debug lines are printed (to skip building them). */
bool llmq_wlog_verbose(void);

/*  One free-text line (printf format) at level. */
void llmq_wlog(llmq_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#ifdef __cplusplus
}
#endif
#endif
