/*  llmq_duration.c - duration flag values: "250", "250ms", "2s", "1.5m",
    "1h" (see llmq_duration.h). A bare number is milliseconds everywhere.
*/
#include "llmq_duration.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*  The longest duration any flag takes: a year, in ms. */
#define S_MAX_MS (366.0 * 24 * 3600 * 1000)

int llmq_duration_parse(const char *text, int64_t *ms_p, bool *bare_p)
{
    if (!text || !*text || *text == '-' || *text == '+' || *text == ' ')
        return -1;
    char *end = NULL;
    errno = 0;
    double value = strtod(text, &end);
    if (errno || end == text || !(value >= 0))
        return -1;
    //  strtod also takes "inf", "nan" and hex: digits and one dot only.
    for (const char *p = text; p < end; p++)
        if (!((*p >= '0' && *p <= '9') || *p == '.'))
            return -1;
    double scale;
    if (!*end || !strcmp(end, "ms"))
        scale = 1;
    else if (!strcmp(end, "s"))
        scale = 1000;
    else if (!strcmp(end, "m") || !strcmp(end, "min"))
        scale = 60 * 1000;
    else if (!strcmp(end, "h"))
        scale = 3600 * 1000;
    else
        return -1;
    double ms = value * scale;
    if (ms > S_MAX_MS)
        return -1;
    *ms_p = (int64_t)llround(ms);
    if (bare_p)
        *bare_p = *end == 0;
    return 0;
}

int llmq_duration_test(bool verbose)
{
    struct {
        const char *text;
        int64_t ms; /* -1: rejected */
        bool bare;
    } cases[] = {
        {"0", 0, true},          {"250", 250, true},     {"250ms", 250, false},
        {"2s", 2000, false},     {"1.5s", 1500, false},  {"5m", 300000, false},
        {"2min", 120000, false}, {"1h", 3600000, false}, {"0.5", 1, true},
        {"", -1, false},         {"-1", -1, false},      {"2 s", -1, false},
        {"s", -1, false},        {"1x", -1, false},      {"inf", -1, false},
        {"nan", -1, false},      {"0x10", -1, false},    {"1e3", -1, false},
        {"9999h", -1, false},    {" 1", -1, false}};
    int failures = 0;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        int64_t ms = -1;
        bool bare = false;
        int rc = llmq_duration_parse(cases[i].text, &ms, &bare);
        bool ok = cases[i].ms < 0
                      ? rc == -1
                      : rc == 0 && ms == cases[i].ms && bare == cases[i].bare;
        if (!ok) {
            fprintf(stderr, "llmq_duration: '%s' -> rc %d, %lld ms\n",
                    cases[i].text, rc, (long long)ms);
            failures++;
        }
    }
    if (verbose)
        printf("llmq_duration: %zu cases, %d failures\n",
               sizeof cases / sizeof cases[0], failures);
    return failures ? -1 : 0;
}
