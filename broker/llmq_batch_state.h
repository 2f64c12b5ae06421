/*  llmq_batch_state.h - the states of a batch and of a provider job.

    Inside the broker a state is an enum; its name (the string the protocol
    sends in `state` and the batch store keeps in its state columns) is
    read and written only at those edges, through the one name table below
    (LLMQ_BATCH_STATES / LLMQ_JOB_STATES). Header only: the store and the
    manager are also compiled alone into the batch selftests. The meaning
    of each state: docs/BATCHES.md.
*/
#ifndef LLMQ_BATCH_STATE_H_INCLUDED
#define LLMQ_BATCH_STATE_H_INCLUDED

#include <stdbool.h>
#include <string.h>

#ifdef __cplusplus
extern "C" {
#endif

/*  Batch states (protocol `state`, batches.state): X(ENUM, "name"). */
#define LLMQ_BATCH_STATES(X)                                                   \
    X(VALIDATING, "validating")   /* open, items arriving */                   \
    X(QUEUED, "queued")           /* provider mode: no job accepted yet */     \
    X(IN_PROGRESS, "in_progress") /* items dispatched / jobs running */        \
    X(FINALIZING, "finalizing")   /* jobs done, results being fetched */       \
    X(COMPLETED, "completed")     /* every item has a result */                \
    X(FAILED, "failed")           /* reserved */                               \
    X(CANCELLING, "cancelling")   /* after batch.cancel */                     \
    X(CANCELLED, "cancelled")     /* cancel finished */                        \
    X(EXPIRED, "expired")         /* completion window passed */

/*  Provider job states, broker side (jobs.state). */
#define LLMQ_JOB_STATES(X)                                                     \
    X(PENDING, "pending")       /* created, never sent */                      \
    X(SUBMITTING, "submitting") /* job.submit handed out */                    \
    X(LOOKUP, "lookup")         /* submit outcome unknown: ask */              \
    X(RUNNING, "running")       /* provider batch id known */                  \
    X(FETCHING, "fetching")     /* provider finished: fetch */                 \
    X(CLEANUP, "cleanup")       /* results stored; provider files to delete    \
                                   (job.cancel, mode cleanup) */               \
    X(DONE, "done")             /* results stored, files gone */               \
    X(FAILED, "failed")         /* never ran; items re-routed */

#define LLMQ_BATCH_STATE_ENUM_(name, text) LLMQ_BATCH_##name,
#define LLMQ_JOB_STATE_ENUM_(name, text) LLMQ_JOB_##name,
typedef enum {
    LLMQ_BATCH_STATES(LLMQ_BATCH_STATE_ENUM_) LLMQ_BATCH_STATE_COUNT
} llmq_batch_state_t;
typedef enum {
    LLMQ_JOB_STATES(LLMQ_JOB_STATE_ENUM_) LLMQ_JOB_STATE_COUNT
} llmq_job_state_t;
#undef LLMQ_BATCH_STATE_ENUM_
#undef LLMQ_JOB_STATE_ENUM_

/*  The name tables, indexed by state (internal). */
#define LLMQ_STATE_NAME_(name, text) text,
static inline const char *const *llmq_batch_state_names_(void)
{
    static const char *const names[] = {LLMQ_BATCH_STATES(LLMQ_STATE_NAME_)};
    return names;
}

static inline const char *const *llmq_job_state_names_(void)
{
    static const char *const names[] = {LLMQ_JOB_STATES(LLMQ_STATE_NAME_)};
    return names;
}
#undef LLMQ_STATE_NAME_

/*  The index of text in names[0..n), or -1 (text NULL or no name). */
static inline int llmq_state_find_(const char *const *names, int n,
                                   const char *text)
{
    for (int i = 0; text && i < n; i++)
        if (strcmp(names[i], text) == 0)
            return i;
    return -1;
}

/*  The state's name (static string); "" for a value out of range. */
static inline const char *llmq_batch_state_name(llmq_batch_state_t state)
{
    return (unsigned)state < LLMQ_BATCH_STATE_COUNT
               ? llmq_batch_state_names_()[state]
               : "";
}

static inline const char *llmq_job_state_name(llmq_job_state_t state)
{
    return (unsigned)state < LLMQ_JOB_STATE_COUNT
               ? llmq_job_state_names_()[state]
               : "";
}

/*  Reads a name into *state. Returns 0, or -1 (state untouched) for a
    string (or NULL) that is no state. */
static inline int llmq_batch_state_parse(const char *name,
                                         llmq_batch_state_t *state)
{
    int i = llmq_state_find_(llmq_batch_state_names_(), LLMQ_BATCH_STATE_COUNT,
                             name);
    if (i >= 0)
        *state = (llmq_batch_state_t)i;
    return i >= 0 ? 0 : -1;
}

static inline int llmq_job_state_parse(const char *name,
                                       llmq_job_state_t *state)
{
    int i =
        llmq_state_find_(llmq_job_state_names_(), LLMQ_JOB_STATE_COUNT, name);
    if (i >= 0)
        *state = (llmq_job_state_t)i;
    return i >= 0 ? 0 : -1;
}

/*  completed, failed, cancelled or expired: the batch changes no more. */
static inline bool llmq_batch_state_terminal(llmq_batch_state_t state)
{
    return state == LLMQ_BATCH_COMPLETED || state == LLMQ_BATCH_FAILED ||
           state == LLMQ_BATCH_CANCELLED || state == LLMQ_BATCH_EXPIRED;
}

#ifdef __cplusplus
}
#endif
#endif
