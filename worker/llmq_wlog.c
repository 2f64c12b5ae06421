/*  llmq_wlog.c - worker log lines (see llmq_wlog.h). */
#include "llmq_wlog.h"

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

static const char *s_name = "llmq-worker"; /* printed on every line */
static bool s_json = false;                /* JSON lines instead of text */
static bool s_verbose = false;             /* print debug lines */

void llmq_wlog_setup(const char *name, bool json, bool verbose)
{
    if (name)
        s_name = name;
    s_json = json;
    s_verbose = verbose;
}

bool llmq_wlog_verbose(void)
{
    return s_verbose;
}

void llmq_wlog(llmq_log_level_t level, const char *fmt, ...)
{
    if (level == LLMQ_LOG_DEBUG && !s_verbose)
        return;
    static const char *names[] = {"debug", "info", "warn", "error"};
    static const char letters[] = "DIWE";
    char msg[2048];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    gmtime_r(&tv.tv_sec, &tm);
    char ts[40];
    size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(ts + n, sizeof ts - n, ".%03dZ", (int)(tv.tv_usec / 1000));
    if (s_json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "ts", ts);
        cJSON_AddStringToObject(o, "level", names[level]);
        cJSON_AddStringToObject(o, "component", s_name);
        cJSON_AddStringToObject(o, "msg", msg);
        char *line = cJSON_PrintUnformatted(o);
        if (line)
            fprintf(stderr, "%s\n", line);
        free(line);
        cJSON_Delete(o);
    } else
        fprintf(stderr, "%s %c %s: %s\n", ts, letters[level], s_name, msg);
}
