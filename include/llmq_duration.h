/*  llmq_duration.h - one way to write a duration on every command line.

    Every llmq binary (llmq, llmq-broker, llmq-worker, llmq-sim) reads its
    duration flags through llmq_duration_parse(): a bare number is
    milliseconds (the unit of every `-ms` flag), and a unit suffix says
    otherwise: `500ms`, `2s`, `1.5s`, `5m`, `1h`. Plain C, no dependencies,
    so llmq-sim compiles proto/llmq_duration.c into itself.
*/
#ifndef LLMQ_DURATION_H_INCLUDED
#define LLMQ_DURATION_H_INCLUDED

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*  Parse text as a duration into *ms_p (rounded to whole ms). Returns 0,
    or -1 on garbage, a negative value or one above a year (then *ms_p is
    untouched). If bare_p is not NULL it is set to true when the text had
    no unit (for flags that used to take seconds and warn about it). */
int llmq_duration_parse(const char *text, int64_t *ms_p, bool *bare_p);

/*  Self test; returns 0 on success. */
int llmq_duration_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
