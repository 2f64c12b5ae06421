/*  llmq_runner.h - the run engine: every line of a JSONL file through the
    broker, results to an output file.

    A runner reads IN (one request per line, llmq_jsonl.h) as a stream,
    indexes the whole lines of an existing OUT (resume: only lines OUT does
    not answer yet are sent), appends each result to OUT as it arrives (one
    write per line, so a kill leaves a valid prefix) and at the end rewrites
    OUT in input order (temp file + rename), copying each line from its
    offset. Its memory is the window, plus 16 bytes per line of a resumed
    OUT (the index of what is done), never the lines: what grows with the
    input goes to unlinked spill files next to OUT.

    It keeps up to `window` requests in flight and adapts that window
    (AIMD): a line answered `overloaded` halves the
    window (at most every 250 ms) and is sent again after a jittered,
    doubling backoff; every answered line grows the window back by 1/window.

    A cost cap (config.max_cost_usd) sums the cost of this run's answers
    (the workers' usage cost_usd; a non-finite or negative value counts as
    0). Once the sum reaches the cap the runner sends nothing more, new
    lines and retries alike: the requests in flight finish and are written,
    and the lines never answered stay out of OUT, so a rerun (with no cap,
    or a higher one) sends them. The run spends at most the cap plus what
    one window of requests in flight costs.

    The runner does no output of its own and owns no thread: the caller
    connects an llmq_client_t, hands it to llmq_runner_start(), then calls
    llmq_runner_step() until it returns 0 or -1, doing its own work (signals,
    progress, an embedded cluster's health) between steps. A step waits on
    the client's socket (llmq_client_fd) or for the next backed-off retry,
    never in a sleep. Users: the `llmq run` command, the batch submit path
    (its checks of IN and OUT) and, later, the HTTP gateway.

    Ownership: the runner belongs to the caller; the client given to
    llmq_runner_start() is borrowed and must outlive the runner's steps.
    Config strings are copied. Results given to the line callback are
    borrowed.
*/
#ifndef LLMQ_RUNNER_H_INCLUDED
#define LLMQ_RUNNER_H_INCLUDED

#include "llmq_client.h"
#include <czmq.h>

#ifdef __cplusplus
extern "C" {
#endif

/*  Defaults for zero fields of the config. */
#define LLMQ_RUNNER_WINDOW 64      /* requests in flight */
#define LLMQ_RUNNER_RETRIES 6      /* `overloaded` answers sent again */
#define LLMQ_RUNNER_BACKOFF_MS 250 /* first retry after about this */

typedef struct _llmq_runner_t llmq_runner_t;

/*  Called for every line finished by this run, in the order they finish:
    result is the broker's answer (borrowed), or NULL for a line that
    failed before it was sent (an unusable line). */
typedef void(llmq_runner_line_fn)(const char *custom_id,
                                  const llmq_result_t *result, void *arg);

typedef struct {
    const char *input;   /* IN path ("-": stdin) */
    const char *output;  /* OUT path ("-": stdout, nothing to resume) */
    bool retry_failed;   /* OUT's error lines run again */
    const char *model;   /* every line's model, or NULL: the line's own,
                            else the default given to llmq_runner_start */
    int window;          /* most requests in flight; 0: default */
    int retries;         /* overloaded answers sent again; 0: default,
                            < 0: none */
    int backoff_ms;      /* first backoff; 0: default */
    llmq_opts_t request; /* per-request options (borrowed strings) */
    double max_cost_usd; /* stop sending once this run's answers cost
                            this much (USD); 0 (or not > 0): no cap */
    llmq_runner_line_fn *on_line; /* NULL: none */
    void *on_line_arg;            /* argument of on_line */
} llmq_runner_config_t;

typedef struct {
    size_t total;          /* input lines */
    size_t resumed;        /* lines OUT answered before this run */
    size_t resumed_failed; /* of which error lines */
    size_t todo;           /* lines to run now */
    size_t finished;       /* of todo: answered by an OUT line */
    size_t failed;         /* of finished: error lines */
    size_t retried;        /* overloaded answers sent again */
    size_t in_flight;      /* requests outstanding */
    size_t backed_off;     /* lines waiting for their retry */
    int window;            /* the window in use now (at most config's) */
    double spent_usd;      /* cost of this run's answers (finite, >= 0) */
    bool capped;           /* spent_usd reached max_cost_usd: no more sends;
                              todo - finished lines are left out of OUT */
    bool complete;         /* OUT answered every line before this run */
    bool unreachable;      /* stopped: no broker answered (give-up) */
} llmq_runner_stats_t;

/*  Read IN, refuse duplicate custom_ids, index OUT's whole lines (a partial
    last line, as a kill leaves, is cut off: OUT is rewritten) and open OUT
    for appending if any line is left to run. Nothing is sent yet. When
    OUT already answers every line, stats.complete is set and OUT is left
    untouched. Returns NULL with the reason in err (one or more lines,
    '\n' between them), errno EINVAL when IN or OUT cannot be used (a
    usage error), else the system's error. */
llmq_runner_t *llmq_runner_new(const llmq_runner_config_t *config, char *err,
                               size_t err_size);

/*  Destroy the runner (OUT keeps what was written: call
    llmq_runner_finish first for the ordered file). NULLs *self_p.
    Idempotent. */
void llmq_runner_destroy(llmq_runner_t **self_p);

/*  The models the lines left to run name (at most max distinct names, in
    input order, borrowed from the runner): what an embedded cluster must
    serve. None when config.model is set (every line uses it). Returns how
    many were stored in names. */
size_t llmq_runner_models(llmq_runner_t *self, const char **names, size_t max);

/*  Run on client (borrowed; its window is set to the runner's).
    default_model: for lines that name none (copied). Returns 0 or -1. */
int llmq_runner_start(llmq_runner_t *self, llmq_client_t *client,
                      const char *default_model);

/*  Send what the window allows, wait up to timeout_ms for the client's
    socket (or less, until the next retry is due), write every result
    that came. Returns 1 while lines are left (also after a signal cut the
    wait short: the caller checks its own flags), 0 when every line is
    finished or the cost cap stopped the run (stats.capped: the lines in
    flight are finished and written, the others left for a rerun), -1
    when the run stopped: not started, or no broker answered
    for the client's give-up time (stats.unreachable; the lines in flight
    are not written, so a rerun sends them again). */
int llmq_runner_step(llmq_runner_t *self, int timeout_ms);

/*  Close the appender and rewrite OUT in input order (atomically; OUT "-"
    is left as streamed). Call once at the end, also after an interrupt.
    Returns 0, or -1 with errno. */
int llmq_runner_finish(llmq_runner_t *self);

void llmq_runner_stats(llmq_runner_t *self, llmq_runner_stats_t *stats);

/*  Helpers the batch submit path shares with the runner. */

/*  0 if every item of items (llmq_jsonl_item_t) has its own custom_id;
    else -1 with the first duplicates and a summary in err (lines). */
int llmq_runner_check_ids(zlistx_t *items, char *err, size_t err_size);

/*  True when OUT (not "-") has a line for every item of items (not
    empty); *failed_p gets how many of those are error lines. */
bool llmq_runner_complete(zlistx_t *items, const char *output,
                          bool retry_failed, size_t *failed_p);

/*  Self test against the client's fake broker; returns 0 on success. */
int llmq_runner_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
