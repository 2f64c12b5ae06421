/*  llmq_limiter.c - token buckets, concurrency cap, provider feedback, and
    the circuit breaker.

    Design: the buckets are continuous (level += rate * dt), refilled lazily
    whenever the limiter is asked something, and hold at most burst_ms worth
    of the rate, so a fresh or idle worker cannot fire a whole minute's
    allowance at once (providers count in windows we cannot see; a small
    bucket is the safe side). A request bigger than the token bucket may
    start when the bucket is full and drives it negative: debt paid back by
    waiting. The provider's own counters only ever lower our levels (a stale
    header from an early response must not raise them), and a retry-after
    or a remaining count of zero pauses all starts until the reset.
*/
#include "llmq_limiter.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct _llmq_limiter_t {
    int64_t cfg_rpm;      /* configured requests per minute (0 = none) */
    int64_t cfg_tpm;      /* configured tokens per minute (0 = none) */
    int64_t learned_rpm;  /* from x-ratelimit-limit-requests (0 = none) */
    int64_t learned_tpm;  /* from x-ratelimit-limit-tokens (0 = none) */
    int64_t concurrency;  /* most attempts at once (0 = unlimited) */
    int64_t burst_ms;     /* bucket size, in ms of rate */
    double req_level;     /* requests in the bucket */
    double tok_level;     /* tokens in the bucket (may be negative: debt) */
    int64_t last_ms;      /* time of the last refill */
    int64_t paused_until; /* no starts before this time */
    int64_t running;      /* attempts running */
};

void llmq_ratelimit_init(llmq_ratelimit_t *rl)
{
    rl->limit_requests = -1;
    rl->limit_tokens = -1;
    rl->remaining_requests = -1;
    rl->remaining_tokens = -1;
    rl->reset_requests_ms = -1;
    rl->reset_tokens_ms = -1;
    rl->retry_after_ms = -1;
}

static double s_cap(int64_t rate, int64_t burst_ms)
{
    double cap = (double)rate * (double)burst_ms / 60000.0;
    return cap < 1.0 ? 1.0 : cap;
}

int64_t llmq_limiter_rpm(const llmq_limiter_t *self)
{
    return self->cfg_rpm > 0 ? self->cfg_rpm : self->learned_rpm;
}

int64_t llmq_limiter_tpm(const llmq_limiter_t *self)
{
    return self->cfg_tpm > 0 ? self->cfg_tpm : self->learned_tpm;
}

/*  Bring both buckets up to now. */
static void s_refill(llmq_limiter_t *self, int64_t now_ms)
{
    int64_t dt = now_ms - self->last_ms;
    if (dt <= 0)
        return;
    self->last_ms = now_ms;
    int64_t rpm = llmq_limiter_rpm(self);
    int64_t tpm = llmq_limiter_tpm(self);
    if (rpm > 0) {
        double cap = s_cap(rpm, self->burst_ms);
        self->req_level += (double)rpm * (double)dt / 60000.0;
        if (self->req_level > cap)
            self->req_level = cap;
    }
    if (tpm > 0) {
        double cap = s_cap(tpm, self->burst_ms);
        self->tok_level += (double)tpm * (double)dt / 60000.0;
        if (self->tok_level > cap)
            self->tok_level = cap;
    }
}

llmq_limiter_t *llmq_limiter_new(int64_t rpm, int64_t tpm, int64_t concurrency,
                                 int64_t burst_ms, int64_t now_ms)
{
    llmq_limiter_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->cfg_rpm = rpm > 0 ? rpm : 0;
    self->cfg_tpm = tpm > 0 ? tpm : 0;
    self->concurrency = concurrency > 0 ? concurrency : 0;
    self->burst_ms = burst_ms > 0 ? burst_ms : 1000;
    self->req_level = s_cap(self->cfg_rpm, self->burst_ms);
    self->tok_level = s_cap(self->cfg_tpm, self->burst_ms);
    self->last_ms = now_ms;
    return self;
}

void llmq_limiter_destroy(llmq_limiter_t **self_p)
{
    if (self_p && *self_p) {
        free(*self_p);
        *self_p = NULL;
    }
}

void llmq_limiter_set_rates(llmq_limiter_t *self, int64_t rpm, int64_t tpm,
                            int64_t now_ms)
{
    s_refill(self, now_ms);
    self->cfg_rpm = rpm > 0 ? rpm : 0;
    self->cfg_tpm = tpm > 0 ? tpm : 0;
    /*  A smaller share applies at once; a larger one fills up over time. */
    double rcap = s_cap(llmq_limiter_rpm(self), self->burst_ms);
    double tcap = s_cap(llmq_limiter_tpm(self), self->burst_ms);
    if (self->req_level > rcap)
        self->req_level = rcap;
    if (self->tok_level > tcap)
        self->tok_level = tcap;
}

bool llmq_limiter_acquire(llmq_limiter_t *self, int64_t tokens, int64_t now_ms,
                          int64_t *wait_ms)
{
    s_refill(self, now_ms);
    int64_t wait = 0;
    if (self->paused_until > now_ms)
        wait = self->paused_until - now_ms;
    int64_t rpm = llmq_limiter_rpm(self);
    int64_t tpm = llmq_limiter_tpm(self);
    if (rpm > 0 && self->req_level < 1.0) {
        int64_t w =
            (int64_t)((1.0 - self->req_level) * 60000.0 / (double)rpm) + 1;
        if (w > wait)
            wait = w;
    }
    if (tpm > 0 && tokens > 0) {
        double cap = s_cap(tpm, self->burst_ms);
        double need = (double)tokens < cap ? (double)tokens : cap;
        if (self->tok_level < need) {
            int64_t w =
                (int64_t)((need - self->tok_level) * 60000.0 / (double)tpm) + 1;
            if (w > wait)
                wait = w;
        }
    }
    if (self->concurrency > 0 && self->running >= self->concurrency) {
        if (wait_ms)
            *wait_ms = -1;
        return false;
    }
    if (wait > 0) {
        if (wait_ms)
            *wait_ms = wait;
        return false;
    }
    if (rpm > 0)
        self->req_level -= 1.0;
    if (tpm > 0 && tokens > 0)
        self->tok_level -= (double)tokens;
    self->running++;
    if (wait_ms)
        *wait_ms = 0;
    return true;
}

void llmq_limiter_release(llmq_limiter_t *self, int64_t estimate,
                          int64_t actual, int64_t now_ms)
{
    s_refill(self, now_ms);
    if (self->running > 0)
        self->running--;
    if (actual >= 0 && llmq_limiter_tpm(self) > 0) {
        self->tok_level -= (double)(actual - estimate);
        double cap = s_cap(llmq_limiter_tpm(self), self->burst_ms);
        if (self->tok_level > cap)
            self->tok_level = cap;
    }
}

int64_t llmq_limiter_available(llmq_limiter_t *self, int64_t tokens,
                               int64_t horizon_ms, int64_t ceiling,
                               int64_t now_ms)
{
    s_refill(self, now_ms);
    int64_t n = ceiling;
    int64_t paused = llmq_limiter_paused_for(self, now_ms);
    if (paused >= horizon_ms)
        return 0;
    int64_t t = horizon_ms - paused;
    if (self->concurrency > 0 && self->concurrency - self->running < n)
        n = self->concurrency - self->running;
    int64_t rpm = llmq_limiter_rpm(self);
    if (rpm > 0) {
        double can = self->req_level + (double)rpm * (double)t / 60000.0;
        if ((double)n > can)
            n = (int64_t)can;
    }
    int64_t tpm = llmq_limiter_tpm(self);
    if (tpm > 0 && tokens > 0) {
        double cap = s_cap(tpm, self->burst_ms);
        double per = (double)tokens < cap ? (double)tokens : cap;
        double can =
            (self->tok_level + (double)tpm * (double)t / 60000.0) / per;
        if ((double)n > can)
            n = (int64_t)can;
    }
    return n > 0 ? n : 0;
}

/*  A remaining count from the provider (-1: none) lowers a bucket's level
    (when that rate is limited) and, at 0, pauses until its reset. */
static void s_lower(llmq_limiter_t *self, double *level, int64_t rate,
                    int64_t remaining, int64_t reset_ms, int64_t now_ms)
{
    if (remaining < 0)
        return;
    if (rate > 0 && *level > (double)remaining)
        *level = (double)remaining;
    if (remaining == 0)
        llmq_limiter_pause(self, reset_ms > 0 ? reset_ms : 1000, now_ms);
}

void llmq_limiter_observe(llmq_limiter_t *self, const llmq_ratelimit_t *rl,
                          int64_t now_ms)
{
    s_refill(self, now_ms);
    /*  Learn the key's rates when none were configured. */
    if (rl->limit_requests > 0 && rl->limit_requests != self->learned_rpm) {
        bool first = llmq_limiter_rpm(self) == 0;
        self->learned_rpm = rl->limit_requests;
        if (first)
            self->req_level = s_cap(llmq_limiter_rpm(self), self->burst_ms);
    }
    if (rl->limit_tokens > 0 && rl->limit_tokens != self->learned_tpm) {
        bool first = llmq_limiter_tpm(self) == 0;
        self->learned_tpm = rl->limit_tokens;
        if (first)
            self->tok_level = s_cap(llmq_limiter_tpm(self), self->burst_ms);
    }
    /*  The provider's counters only lower ours. */
    s_lower(self, &self->req_level, llmq_limiter_rpm(self),
            rl->remaining_requests, rl->reset_requests_ms, now_ms);
    s_lower(self, &self->tok_level, llmq_limiter_tpm(self),
            rl->remaining_tokens, rl->reset_tokens_ms, now_ms);
    if (rl->retry_after_ms > 0)
        llmq_limiter_pause(self, rl->retry_after_ms, now_ms);
}

void llmq_limiter_pause(llmq_limiter_t *self, int64_t ms, int64_t now_ms)
{
    if (ms > 0 && now_ms + ms > self->paused_until)
        self->paused_until = now_ms + ms;
}

int64_t llmq_limiter_paused_for(const llmq_limiter_t *self, int64_t now_ms)
{
    return self->paused_until > now_ms ? self->paused_until - now_ms : 0;
}

int64_t llmq_limiter_running(const llmq_limiter_t *self)
{
    return self->running;
}

/*  --- circuit breaker --------------------------------------------------- */

struct _llmq_breaker_t {
    llmq_breaker_state_t state; /* closed, open or half-open */
    int64_t threshold;          /* consecutive failures that open it */
    int64_t cooldown_ms;        /* open this long before a probe */
    int64_t failures;           /* consecutive failures so far */
    int64_t opened_ms; /* when it (re)opened or the last probe failed */
    bool probing;      /* a health probe is running */
};

llmq_breaker_t *llmq_breaker_new(int64_t failures, int64_t cooldown_ms)
{
    llmq_breaker_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->threshold = failures > 0 ? failures : 5;
    self->cooldown_ms = cooldown_ms > 0 ? cooldown_ms : 30000;
    return self;
}

void llmq_breaker_destroy(llmq_breaker_t **self_p)
{
    if (self_p && *self_p) {
        free(*self_p);
        *self_p = NULL;
    }
}

llmq_breaker_state_t llmq_breaker_state(const llmq_breaker_t *self)
{
    return self->state;
}

const char *llmq_breaker_state_name(const llmq_breaker_t *self)
{
    switch (self->state) {
    case LLMQ_BREAKER_CLOSED:
        return "closed";
    case LLMQ_BREAKER_OPEN:
        return "open";
    case LLMQ_BREAKER_HALF_OPEN:
        return "half-open";
    }
    return "?";
}

void llmq_breaker_trip(llmq_breaker_t *self, int64_t now_ms)
{
    self->state = LLMQ_BREAKER_OPEN;
    self->opened_ms = now_ms;
    self->probing = false;
}

bool llmq_breaker_success(llmq_breaker_t *self, int64_t now_ms)
{
    (void)now_ms;
    self->failures = 0;
    /*  An answer from an attempt started before the breaker opened says the
        provider works again, as a trial would. */
    if (self->state != LLMQ_BREAKER_CLOSED) {
        self->state = LLMQ_BREAKER_CLOSED;
        self->probing = false;
        return true;
    }
    return false;
}

bool llmq_breaker_failure(llmq_breaker_t *self, int64_t now_ms)
{
    self->failures++;
    if (self->state == LLMQ_BREAKER_HALF_OPEN ||
        (self->state == LLMQ_BREAKER_CLOSED &&
         self->failures >= self->threshold)) {
        llmq_breaker_trip(self, now_ms);
        return true;
    }
    return false;
}

int64_t llmq_breaker_allowance(const llmq_breaker_t *self, int64_t running)
{
    switch (self->state) {
    case LLMQ_BREAKER_CLOSED:
        return -1;
    case LLMQ_BREAKER_HALF_OPEN:
        return running > 0 ? 0 : 1;
    case LLMQ_BREAKER_OPEN:
        return 0;
    }
    return 0;
}

bool llmq_breaker_probe_due(const llmq_breaker_t *self, int64_t now_ms)
{
    return self->state == LLMQ_BREAKER_OPEN && !self->probing &&
           now_ms - self->opened_ms >= self->cooldown_ms;
}

int64_t llmq_breaker_probe_in(const llmq_breaker_t *self, int64_t now_ms)
{
    if (self->state != LLMQ_BREAKER_OPEN || self->probing)
        return -1;
    int64_t left = self->opened_ms + self->cooldown_ms - now_ms;
    return left > 0 ? left : 0;
}

void llmq_breaker_probe_started(llmq_breaker_t *self)
{
    self->probing = true;
}

void llmq_breaker_probe_result(llmq_breaker_t *self, bool ok, int64_t now_ms)
{
    self->probing = false;
    if (self->state != LLMQ_BREAKER_OPEN)
        return;
    /*  The probe is a health check of the provider (its /models route),
        never a queued request: one client's request that always fails
        cannot keep the circuit open for everyone. A passing probe closes
        the circuit. */
    if (ok) {
        self->state = LLMQ_BREAKER_CLOSED;
        self->failures = 0;
    } else
        self->opened_ms = now_ms;
}

/*  --- selftests ---------------------------------------------------------- */

#include "llmq_check.h"
#define CHECK(cond) LLMQ_CHECK_RET(cond)

int llmq_limiter_test(bool verbose)
{
    if (verbose)
        printf(" * llmq_limiter: ");
    int64_t now = 1000000, wait;

    /*  Unlimited: only the concurrency cap counts. */
    llmq_limiter_t *lim = llmq_limiter_new(0, 0, 2, 1000, now);
    CHECK(lim);
    CHECK(llmq_limiter_available(lim, 100, 1000, 1000, now) == 2);
    CHECK(llmq_limiter_acquire(lim, 100, now, &wait));
    CHECK(llmq_limiter_acquire(lim, 100, now, &wait));
    CHECK(!llmq_limiter_acquire(lim, 100, now, &wait) && wait == -1);
    CHECK(llmq_limiter_available(lim, 100, 1000, 1000, now) == 0);
    llmq_limiter_release(lim, 100, 50, now);
    CHECK(llmq_limiter_running(lim) == 1);
    CHECK(llmq_limiter_acquire(lim, 100, now, &wait));
    llmq_limiter_destroy(&lim);
    CHECK(lim == NULL);
    llmq_limiter_destroy(&lim);

    /*  rpm 600 = 10/s, bucket of one second = 10 requests. */
    lim = llmq_limiter_new(600, 0, 0, 1000, now);
    CHECK(llmq_limiter_rpm(lim) == 600);
    CHECK(llmq_limiter_available(lim, 0, 1000, 1000, now) == 20);
    for (int i = 0; i < 10; i++)
        CHECK(llmq_limiter_acquire(lim, 0, now, &wait));
    CHECK(!llmq_limiter_acquire(lim, 0, now, &wait));
    CHECK(wait > 0 && wait <= 101);
    CHECK(llmq_limiter_available(lim, 0, 1000, 1000, now) == 10);
    now += 100;
    CHECK(llmq_limiter_acquire(lim, 0, now, &wait));
    CHECK(!llmq_limiter_acquire(lim, 0, now, &wait));
    /*  Over a simulated minute at most rpm + bucket start. */
    int started = 0;
    for (int64_t t = 0; t < 60000; t += 10) {
        while (llmq_limiter_acquire(lim, 0, now + t, &wait)) {
            started++;
            llmq_limiter_release(lim, 0, -1, now + t);
        }
    }
    CHECK(started <= 600 && started >= 590);
    now += 60000;
    /*  Broker share lowers the rate at once. */
    llmq_limiter_set_rates(lim, 60, 0, now);
    CHECK(llmq_limiter_rpm(lim) == 60);
    CHECK(llmq_limiter_available(lim, 0, 1000, 1000, now) <= 2);
    llmq_limiter_destroy(&lim);

    /*  tpm: 60,000 tokens/min = 1,000/s; a 1,500-token request may start on
        a full bucket and leaves a debt. */
    lim = llmq_limiter_new(0, 60000, 0, 1000, now);
    CHECK(llmq_limiter_acquire(lim, 1500, now, &wait));
    CHECK(!llmq_limiter_acquire(lim, 100, now, &wait));
    CHECK(wait > 500);
    /*  Reconciliation: the answer used only 100 tokens: 1,400 come back. */
    llmq_limiter_release(lim, 1500, 100, now);
    CHECK(llmq_limiter_acquire(lim, 100, now, &wait));
    CHECK(llmq_limiter_available(lim, 500, 1000, 1000, now) >= 2);
    llmq_limiter_destroy(&lim);

    /*  Provider feedback: learned rates, remaining 0 pauses, retry-after. */
    lim = llmq_limiter_new(0, 0, 0, 1000, now);
    llmq_ratelimit_t rl;
    llmq_ratelimit_init(&rl);
    CHECK(rl.remaining_requests == -1);
    rl.limit_requests = 120;
    rl.remaining_requests = 0;
    rl.reset_requests_ms = 500;
    llmq_limiter_observe(lim, &rl, now);
    CHECK(llmq_limiter_rpm(lim) == 120);
    CHECK(llmq_limiter_paused_for(lim, now) == 500);
    CHECK(!llmq_limiter_acquire(lim, 0, now, &wait) && wait >= 500);
    CHECK(llmq_limiter_available(lim, 0, 400, 100, now) == 0);
    now += 500;
    CHECK(llmq_limiter_acquire(lim, 0, now, &wait));
    llmq_ratelimit_init(&rl);
    rl.retry_after_ms = 2000;
    llmq_limiter_observe(lim, &rl, now);
    CHECK(llmq_limiter_paused_for(lim, now) == 2000);
    llmq_limiter_pause(lim, 100, now); /* pauses only lengthen */
    CHECK(llmq_limiter_paused_for(lim, now) == 2000);
    /*  A configured rate wins over the learned one. */
    llmq_limiter_set_rates(lim, 30, 0, now);
    CHECK(llmq_limiter_rpm(lim) == 30);
    llmq_limiter_set_rates(lim, 0, 0, now);
    CHECK(llmq_limiter_rpm(lim) == 120);
    llmq_limiter_destroy(&lim);

    if (verbose)
        printf("OK\n");
    return 0;
}

int llmq_breaker_test(bool verbose)
{
    if (verbose)
        printf(" * llmq_breaker: ");
    int64_t now = 5000;
    llmq_breaker_t *br = llmq_breaker_new(3, 1000);
    CHECK(br);
    CHECK(llmq_breaker_state(br) == LLMQ_BREAKER_CLOSED);
    CHECK(llmq_breaker_allowance(br, 10) == -1);
    CHECK(!llmq_breaker_failure(br, now));
    CHECK(!llmq_breaker_failure(br, now));
    CHECK(!llmq_breaker_success(br, now)); /* resets the count */
    CHECK(!llmq_breaker_failure(br, now));
    CHECK(!llmq_breaker_failure(br, now));
    CHECK(llmq_breaker_failure(br, now)); /* third in a row opens */
    CHECK(llmq_breaker_state(br) == LLMQ_BREAKER_OPEN);
    CHECK(strcmp(llmq_breaker_state_name(br), "open") == 0);
    CHECK(llmq_breaker_allowance(br, 0) == 0);
    CHECK(!llmq_breaker_probe_due(br, now + 999));
    CHECK(llmq_breaker_probe_in(br, now + 400) == 600);
    CHECK(llmq_breaker_probe_due(br, now + 1000));
    llmq_breaker_probe_started(br);
    CHECK(!llmq_breaker_probe_due(br, now + 1000));
    llmq_breaker_probe_result(br, false, now + 1000); /* cool down again */
    CHECK(llmq_breaker_state(br) == LLMQ_BREAKER_OPEN);
    CHECK(!llmq_breaker_probe_due(br, now + 1500));
    CHECK(llmq_breaker_probe_due(br, now + 2000));
    llmq_breaker_probe_started(br);
    llmq_breaker_probe_result(br, true, now + 2000);
    CHECK(llmq_breaker_state(br) == LLMQ_BREAKER_CLOSED); /* probe closes */
    CHECK(llmq_breaker_allowance(br, 0) == -1);
    CHECK(!llmq_breaker_failure(br, now + 2100)); /* counts from 0 again */
    llmq_breaker_trip(br, now);
    CHECK(llmq_breaker_state(br) == LLMQ_BREAKER_OPEN);
    llmq_breaker_destroy(&br);
    CHECK(br == NULL);
    if (verbose)
        printf("OK\n");
    return 0;
}
