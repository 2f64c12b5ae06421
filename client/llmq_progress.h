/*  llmq_progress.h - progress bar and summary of `llmq run`.

    The bar is one line on stderr, redrawn at most ten times a second, only
    when stderr is a terminal: done/total, percent, req/s, ETA, tokens,
    cost, errors. The summary is a few lines for humans at the end.

    Ownership: the progress object belongs to the caller.
*/
#ifndef LLMQ_PROGRESS_H_INCLUDED
#define LLMQ_PROGRESS_H_INCLUDED

#include "llmq_client.h"
#include <stdio.h>

typedef struct _llmq_progress_t llmq_progress_t;

/*  total: lines to run now; resumed: lines already done in OUT. tty: draw
    the bar (the caller decides, usually isatty(2) && !quiet). */
llmq_progress_t *llmq_progress_new(size_t total, size_t resumed, bool tty);
void llmq_progress_destroy(llmq_progress_t **self_p);

/*  Count one finished line: a result, or (result NULL) a line that failed
    before it was sent. */
void llmq_progress_add(llmq_progress_t *self, const llmq_result_t *result);

/*  Redraw the bar if due (force: now). */
void llmq_progress_draw(llmq_progress_t *self, bool force);

/*  A one-line status note shown in the bar ("broker silent, resending"),
    NULL to clear. */
void llmq_progress_note(llmq_progress_t *self, const char *note);

/*  Erase the bar (before printing other lines). */
void llmq_progress_clear(llmq_progress_t *self);

size_t llmq_progress_ok(const llmq_progress_t *self);
size_t llmq_progress_failed(const llmq_progress_t *self);

/*  Print the final summary. label, if not NULL, is printed as its own line
    (the "SIMULATED" notice). */
void llmq_progress_summary(llmq_progress_t *self, FILE *out, const char *output,
                           const char *label);

#endif
