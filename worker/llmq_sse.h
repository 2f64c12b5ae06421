/*  llmq_sse.h - an incremental Server-Sent Events parser.

    Providers stream answers as SSE (text/event-stream). Bytes arrive from
    libcurl in arbitrary pieces: a line, an event, even a CR/LF pair may be
    split between two calls. The parser keeps the unfinished line and the
    event being built, and calls back once per complete event with its
    `event` name ("message" if none) and its `data` (multiple data lines
    joined by "\n"), as the WHATWG spec says: lines end in LF, CRLF or CR; a
    blank line dispatches; lines starting with ':' are comments; one space
    after the colon is dropped; an event with no data is not dispatched.

    Ownership: the strings passed to the callback are borrowed for the call.
*/
#ifndef LLMQ_SSE_H_INCLUDED
#define LLMQ_SSE_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

/*  Called once per event. Return 0 to go on, non-zero to stop parsing
    (feed() then returns that value). */
typedef int(llmq_sse_fn)(const char *event, const char *data, size_t size,
                         void *arg);

typedef struct _llmq_sse_t llmq_sse_t;

/*  Create a parser. max_event bounds the bytes of one event (a line or the
    joined data); past it feed() fails. */
llmq_sse_t *llmq_sse_new(llmq_sse_fn *fn, void *arg, size_t max_event);

/*  Destroy; NULLs *self_p. Idempotent. */
void llmq_sse_destroy(llmq_sse_t **self_p);

/*  Feed bytes. Returns 0, the callback's non-zero value, or -1 if an event
    grew past max_event (the parser is then unusable). */
int llmq_sse_feed(llmq_sse_t *self, const char *data, size_t size);

/*  End of stream: an event not yet ended by a blank line is dropped, as the
    spec says. Returns 0. */
int llmq_sse_finish(llmq_sse_t *self);

/*  Events dispatched so far. */
size_t llmq_sse_count(const llmq_sse_t *self);

/*  Append n bytes of src to a growable, NUL-terminated buffer (*buf of
    *len bytes in *cap), keeping it under max bytes. Returns 0, or -1 (too
    large or out of memory; the buffer is unchanged). The SSE parser's
    lines and events and the worker's HTTP bodies grow this way. */
int llmq_buf_append(char **buf, size_t *len, size_t *cap, const char *src,
                    size_t n, size_t max);

int llmq_sse_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
