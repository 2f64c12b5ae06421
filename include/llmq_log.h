/*  llmq_log.h - one log line per event, for every llmq binary.

    A line is an event name plus typed key/values (string, integer, double,
    boolean), rendered as text or as JSON:

        2026-12-02T07:00:00.123Z info llmq-broker worker_join worker=w1
   capacity=8
        {"ts":"2026-...","level":"info","component":"llmq-broker",
         "event":"worker_join","worker":"w1","capacity":8}

    Text values that hold a space, a quote, a control character (newline,
    ESC, ...) or bytes that are not UTF-8 are quoted and escaped, so a name
    a peer chose can never forge a line or move the terminal's cursor. JSON
    numbers are JSON numbers. Secrets registered with llmq_log_add_secret
    are replaced by "[redacted]" in every string value, and so is any piece
    of 8 or more characters from the start of one (a key cut by a length
    limit), before long values are cut.

    A logger is an opaque llmq_log_t, or NULL: the process-wide logger that
    library code (the client API, the codec, the batch store) logs through,
    which each binary's main sets up once from its flags (--json-logs,
    --verbose, --quiet). Lines are written with one call on the FILE (stderr
    unless told otherwise), so lines from threads never interleave.

    Use:
        llmq_log (NULL, LLMQ_LOG_INFO, "worker_join",
                  LLMQ_LOG_STR ("worker", name), LLMQ_LOG_INT ("capacity", 8),
                  LLMQ_LOG_END);

    Plain C, libc only, so llmq-sim compiles proto/llmq_log.c into itself.
*/
#ifndef LLMQ_LOG_H_INCLUDED
#define LLMQ_LOG_H_INCLUDED

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#ifdef __cplusplus
extern "C" {
#endif

/*  Levels, lowest first. A logger prints lines at or above its threshold;
    LLMQ_LOG_OFF as the threshold prints nothing. */
typedef enum {
    LLMQ_LOG_DEBUG = 0,
    LLMQ_LOG_INFO,
    LLMQ_LOG_WARN,
    LLMQ_LOG_ERROR,
    LLMQ_LOG_OFF
} llmq_log_level_t;

/*  The type of one value; LLMQ_LOG_T_END ends a list. */
typedef enum {
    LLMQ_LOG_T_END = 0,
    LLMQ_LOG_T_STR,
    LLMQ_LOG_T_INT,
    LLMQ_LOG_T_DBL,
    LLMQ_LOG_T_BOOL
} llmq_log_type_t;

/*  One key/value. Strings are borrowed for the call (NULL logs as ""). */
typedef struct {
    const char *key;      //  Key (a literal: printed as is)
    llmq_log_type_t type; //  Which member of value is set
    union {
        const char *s;
        int64_t i;
        double d;
        bool b;
    } value;
} llmq_log_field_t;

/*  Key/values in llmq_log's argument list: each expands to the type, the
    key and the value cast to what llmq_log reads, so any integer type or
    float can be passed as is. */
#define LLMQ_LOG_STR(k, v) LLMQ_LOG_T_STR, (const char *)(k), (const char *)(v)
#define LLMQ_LOG_INT(k, v) LLMQ_LOG_T_INT, (const char *)(k), (int64_t)(v)
#define LLMQ_LOG_DBL(k, v) LLMQ_LOG_T_DBL, (const char *)(k), (double)(v)
#define LLMQ_LOG_BOOL(k, v) LLMQ_LOG_T_BOOL, (const char *)(k), (int)((v) != 0)
#define LLMQ_LOG_END LLMQ_LOG_T_END

/*  At most this many key/values are printed per line (more are dropped). */
#define LLMQ_LOG_FIELDS_MAX 32
/*  String values longer than this (bytes) are cut, marked with "...". */
#define LLMQ_LOG_VALUE_MAX 2048

typedef struct _llmq_log_t llmq_log_t;

/*  A logger named component (copied; printed on every line): text, level
    info, on stderr. NULL on allocation failure. */
llmq_log_t *llmq_log_new(const char *component);

/*  Destroy the logger (not the FILE); idempotent, NULLs the pointer. */
void llmq_log_destroy(llmq_log_t **self_p);

/*  One call for a binary's main: component name (copied; NULL keeps it),
    JSON or text, threshold. self NULL: the process-wide logger. */
void llmq_log_setup(llmq_log_t *self, const char *component, bool json,
                    llmq_log_level_t level);

/*  Threshold (LLMQ_LOG_OFF: silent). self NULL: the process-wide logger. */
void llmq_log_set_level(llmq_log_t *self, llmq_log_level_t level);

/*  Output stream (borrowed: must outlive the logger; NULL: stderr). */
void llmq_log_set_file(llmq_log_t *self, FILE *file);

/*  True if a line at level would be printed (to skip building it). */
bool llmq_log_enabled(llmq_log_t *self, llmq_log_level_t level);

/*  Never print secret (copied), nor a piece of 8 or more characters from
    its start, in any string value. Secrets shorter than 8 characters are
    matched whole; empty or NULL ones are ignored. Returns 0, or -1 when
    out of memory (the secret is then not registered). */
int llmq_log_add_secret(llmq_log_t *self, const char *secret);

/*  The one scrubber (the logger's, and the worker's for provider texts):
    text (len bytes, need not end in NUL) with each of secrets[0..count)
    and each piece of 8 or more characters from the start of one (a key
    cut by a length limit) replaced by "[redacted]". Secrets shorter than 8
    characters are matched whole; NULL or empty ones are ignored. Returns a
    fresh NUL-terminated string (the caller frees it), its length in *len_p
    (may be NULL); NULL when out of memory. */
char *llmq_scrub(const char *text, size_t len, const char *const *secrets,
                 size_t count, size_t *len_p);

/*  Scrub, then cut: text scrubbed as llmq_scrub does, then copied into out
    (size bytes, always NUL-terminated) and cut to fit, never inside a UTF-8
    sequence. The cut comes after the scrub, so it can leave no piece of a
    secret of 8 or more characters. out may be text (in place). Out of
    memory: out is "". Returns the bytes written (without the NUL). */
size_t llmq_scrub_into(char *out, size_t size, const char *text, size_t len,
                       const char *const *secrets, size_t count);

/*  Log event at level with the key/values that follow (LLMQ_LOG_STR, ...),
    ended by LLMQ_LOG_END. */
void llmq_log(llmq_log_t *self, llmq_log_level_t level, const char *event, ...);

/*  The same with a va_list (for wrappers with their own signature). */
void llmq_log_v(llmq_log_t *self, llmq_log_level_t level, const char *event,
                va_list args);

/*  The same with an array of count fields. */
void llmq_log_fields(llmq_log_t *self, llmq_log_level_t level,
                     const char *event, const llmq_log_field_t *fields,
                     size_t count);

/*  A free-text line (printf format) as event with one key, "msg". For
    code that has not been given event names yet. */
void llmq_log_text(llmq_log_t *self, llmq_log_level_t level, const char *event,
                   const char *format, ...)
    __attribute__((format(printf, 4, 5)));
void llmq_log_text_v(llmq_log_t *self, llmq_log_level_t level,
                     const char *event, const char *format, va_list args)
    __attribute__((format(printf, 4, 0)));

/*  The line llmq_log_fields would print (no newline), fresh: the caller
    frees it. NULL when out of memory. Threshold not applied. */
char *llmq_log_format(llmq_log_t *self, llmq_log_level_t level,
                      const char *event, const llmq_log_field_t *fields,
                      size_t count);

/*  "debug", "info", "warn", "error", "off"; and back ("warning" too).
    Returns 0, or -1 (and *level_p untouched) for an unknown name. */
const char *llmq_log_level_name(llmq_log_level_t level);
int llmq_log_level_parse(const char *name, llmq_log_level_t *level_p);

/*  Self test; returns 0 on success. */
int llmq_log_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
