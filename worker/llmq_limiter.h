/*  llmq_limiter.h - how much work a worker may start, and when.

    One limiter per worker (per API key share). It combines:
      - a token bucket for requests per minute (rpm) and one for tokens per
        minute (tpm); a request's tokens are estimated before it starts
        (prompt characters / 4 + max_tokens) and reconciled with the real
        usage when it ends;
      - a concurrency cap (HTTP attempts running at once);
      - what the provider says: x-ratelimit-* / anthropic-ratelimit-*
        headers lower the buckets (adaptive throttling) and teach the rates
        when none are configured; retry-after pauses all starts.
    The worker asks it how many requests could start within a horizon (its
    credit to the broker) and whether one may start now.

    Time is passed in by the caller (milliseconds, monotonic), so the class
    is deterministic and its selftest needs no sleeps.
*/
#ifndef LLMQ_LIMITER_H_INCLUDED
#define LLMQ_LIMITER_H_INCLUDED

#include <stdbool.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/*  Rate-limit facts read from one provider response. -1 means "not sent". */
typedef struct {
    int64_t limit_requests;     /* requests per window the key may make */
    int64_t limit_tokens;       /* tokens per window */
    int64_t remaining_requests; /* requests left in the window */
    int64_t remaining_tokens;   /* tokens left in the window */
    int64_t reset_requests_ms;  /* until the request window is full again */
    int64_t reset_tokens_ms;    /* until the token window is full again */
    int64_t retry_after_ms;     /* retry-after / retry-after-ms */
} llmq_ratelimit_t;

/*  Set every field to -1. */
void llmq_ratelimit_init(llmq_ratelimit_t *rl);

typedef struct _llmq_limiter_t llmq_limiter_t;

/*  Create a limiter: rpm and tpm are per-minute rates (0 = unlimited),
    concurrency the most attempts running at once (0 = unlimited). The
    buckets start full. burst_ms is how much of a minute's rate may be spent
    at once (bucket size = rate * burst_ms / 60000, at least one request). */
llmq_limiter_t *llmq_limiter_new(int64_t rpm, int64_t tpm, int64_t concurrency,
                                 int64_t burst_ms, int64_t now_ms);

/*  Destroy; NULLs *self_p. Idempotent. */
void llmq_limiter_destroy(llmq_limiter_t **self_p);

/*  Change the rates (broker `limits`, or config). 0 = unlimited. A rate set
    here wins over a rate learned from headers. */
void llmq_limiter_set_rates(llmq_limiter_t *self, int64_t rpm, int64_t tpm,
                            int64_t now_ms);

/*  The rates in force (configured, else learned; 0 = unlimited). */
int64_t llmq_limiter_rpm(const llmq_limiter_t *self);
int64_t llmq_limiter_tpm(const llmq_limiter_t *self);

/*  Try to start one attempt estimated at `tokens`. Returns true and takes a
    request, the tokens and a concurrency slot; or false and sets *wait_ms
    to how long until it could succeed (-1: when a running attempt ends). */
bool llmq_limiter_acquire(llmq_limiter_t *self, int64_t tokens, int64_t now_ms,
                          int64_t *wait_ms);

/*  An attempt started with acquire() ended: frees its slot and corrects
    the token bucket by (actual - estimate). actual < 0: unknown, keep the
    estimate. */
void llmq_limiter_release(llmq_limiter_t *self, int64_t estimate,
                          int64_t actual, int64_t now_ms);

/*  How many attempts of `tokens` each could start within horizon_ms from
    now, counting the concurrency cap. Returns at most `ceiling`. */
int64_t llmq_limiter_available(llmq_limiter_t *self, int64_t tokens,
                               int64_t horizon_ms, int64_t ceiling,
                               int64_t now_ms);

/*  Feed the provider's rate-limit facts from a response. */
void llmq_limiter_observe(llmq_limiter_t *self, const llmq_ratelimit_t *rl,
                          int64_t now_ms);

/*  Start nothing for ms from now (retry-after); pauses only lengthen. */
void llmq_limiter_pause(llmq_limiter_t *self, int64_t ms, int64_t now_ms);

/*  Milliseconds until the pause ends (0 if not paused). */
int64_t llmq_limiter_paused_for(const llmq_limiter_t *self, int64_t now_ms);

/*  Attempts running now. */
int64_t llmq_limiter_running(const llmq_limiter_t *self);

int llmq_limiter_test(bool verbose);

/*  --- circuit breaker ---------------------------------------------------
    Opens after `failures` consecutive provider failures (5xx, timeouts,
    connection errors, broken answers; never 4xx or 429). While open no work
    starts; after cooldown_ms a health probe is due; a good probe half-opens
    it (one trial request), a good trial closes it, any failure reopens it. */
typedef enum {
    LLMQ_BREAKER_CLOSED = 0,
    LLMQ_BREAKER_OPEN,
    LLMQ_BREAKER_HALF_OPEN
} llmq_breaker_state_t;

typedef struct _llmq_breaker_t llmq_breaker_t;

llmq_breaker_t *llmq_breaker_new(int64_t failures, int64_t cooldown_ms);
void llmq_breaker_destroy(llmq_breaker_t **self_p);
llmq_breaker_state_t llmq_breaker_state(const llmq_breaker_t *self);
const char *llmq_breaker_state_name(const llmq_breaker_t *self);

/*  Force the open state now (e.g. the provider is unreachable at start). */
void llmq_breaker_trip(llmq_breaker_t *self, int64_t now_ms);

/*  Record an attempt's outcome. Returns true if this call changed the
    state (so the caller can log it). */
bool llmq_breaker_success(llmq_breaker_t *self, int64_t now_ms);
bool llmq_breaker_failure(llmq_breaker_t *self, int64_t now_ms);

/*  How many attempts may start now: unlimited (-1) when closed, 1 or 0
    when half-open (the trial), 0 when open. `running` is how many attempts
    are running. */
int64_t llmq_breaker_allowance(const llmq_breaker_t *self, int64_t running);

/*  Open and the cool-down has passed: time for a health probe. */
bool llmq_breaker_probe_due(const llmq_breaker_t *self, int64_t now_ms);

/*  Milliseconds until the probe is due (-1 if not open). */
int64_t llmq_breaker_probe_in(const llmq_breaker_t *self, int64_t now_ms);

/*  A probe is running (so probe_due says false until its result). */
void llmq_breaker_probe_started(llmq_breaker_t *self);

/*  The probe's outcome: ok half-opens, else the cool-down starts again. */
void llmq_breaker_probe_result(llmq_breaker_t *self, bool ok, int64_t now_ms);

int llmq_breaker_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
