/*  llmq_wlog.c - worker log lines (see llmq_wlog.h): all formatting is
    llmq_log's. */
#include "llmq_wlog.h"

#include <stdarg.h>
#include <stdio.h>

void llmq_wlog_setup(const char *name, bool json, bool verbose)
{
    llmq_log_setup(NULL, name ? name : "llmq-worker", json,
                   verbose ? LLMQ_LOG_DEBUG : LLMQ_LOG_INFO);
}

bool llmq_wlog_verbose(void)
{
    return llmq_log_enabled(NULL, LLMQ_LOG_DEBUG);
}

void llmq_wlog(llmq_log_level_t level, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    llmq_log_text_v(NULL, level, "log", fmt, ap);
    va_end(ap);
}
