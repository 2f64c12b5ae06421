/*  llmq_progress.c - progress bar and summary of `llmq run`.

    Rates are measured from the start of this run (resumed lines are not
    counted as work done now), so req/s and the ETA are honest after a
    resume. The bar is drawn with a carriage return and "erase line", so
    it never scrolls.
*/
#include "llmq_progress.h"
#include "llmq_payload.h"

#include <czmq.h>

struct _llmq_progress_t {
    size_t total;          /* lines to run in this invocation */
    size_t resumed;        /* lines already done before it */
    size_t ok;             /* finished ok */
    size_t failed;         /* finished as error lines */
    int64_t prompt_tokens; /* usage totals */
    int64_t completion_tokens;
    double cost_usd;   /* cost total */
    int64_t started;   /* zclock_mono() at creation */
    int64_t last_draw; /* last redraw */
    bool tty;          /* draw the bar */
    bool drawn;        /* a bar is on screen */
    char note[96];     /* status note, "" for none */
};

llmq_progress_t *llmq_progress_new(size_t total, size_t resumed, bool tty)
{
    llmq_progress_t *self = (llmq_progress_t *)calloc(1, sizeof(*self));
    if (!self)
        return NULL;
    self->total = total;
    self->resumed = resumed;
    self->tty = tty;
    self->started = zclock_mono();
    return self;
}

void llmq_progress_destroy(llmq_progress_t **self_p)
{
    if (self_p && *self_p) {
        llmq_progress_clear(*self_p);
        free(*self_p);
        *self_p = NULL;
    }
}

void llmq_progress_add(llmq_progress_t *self, const llmq_result_t *result)
{
    if (result && result->ok)
        self->ok++;
    else
        self->failed++;
    if (result) {
        /*  A broker older than its usage check may pass a rogue worker's
            NaN or INT64_MIN on: nonsense counts as 0 in the summary. */
        int64_t prompt = result->prompt_tokens;
        int64_t completion = result->completion_tokens;
        double cost = result->cost_usd;
        llmq_usage_clean(&prompt, &completion, NULL, &cost);
        self->prompt_tokens += prompt;
        self->completion_tokens += completion;
        self->cost_usd += cost;
    }
}

/*  1234567 -> "1.2M", 12345 -> "12.3k". */
static void s_human(double value, char *buffer, size_t size)
{
    if (value >= 1e6)
        snprintf(buffer, size, "%.1fM", value / 1e6);
    else if (value >= 1e4)
        snprintf(buffer, size, "%.1fk", value / 1e3);
    else
        snprintf(buffer, size, "%.0f", value);
}

static void s_duration(double seconds, char *buffer, size_t size)
{
    long s = (long)(seconds + 0.5);
    if (s >= 3600)
        snprintf(buffer, size, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60,
                 s % 60);
    else
        snprintf(buffer, size, "%ld:%02ld", s / 60, s % 60);
}

void llmq_progress_draw(llmq_progress_t *self, bool force)
{
    if (!self->tty)
        return;
    int64_t now = zclock_mono();
    if (!force && now - self->last_draw < 100)
        return;
    self->last_draw = now;
    size_t done = self->ok + self->failed;
    double elapsed = (double)(now - self->started) / 1000.0;
    double rate = elapsed > 0 ? (double)done / elapsed : 0;
    double fraction = self->total ? (double)done / (double)self->total : 1.0;
    char bar[32];
    int width = 24, filled = (int)(fraction * width);
    for (int i = 0; i < width; i++)
        bar[i] = i < filled ? '#' : '.';
    bar[width] = 0;
    char eta[32] = "--:--";
    if (rate > 0 && done < self->total)
        s_duration((double)(self->total - done) / rate, eta, sizeof(eta));
    else if (done >= self->total)
        snprintf(eta, sizeof(eta), "0:00");
    char tokens[32];
    s_human((double)(self->prompt_tokens + self->completion_tokens), tokens,
            sizeof(tokens));
    fprintf(stderr,
            "\r\033[K[%s] %zu/%zu %3.0f%% %.1f req/s ETA %s tok %s $%.4f err "
            "%zu%s%s",
            bar, done, self->total, fraction * 100, rate, eta, tokens,
            self->cost_usd, self->failed, *self->note ? "  " : "", self->note);
    fflush(stderr);
    self->drawn = true;
}

void llmq_progress_note(llmq_progress_t *self, const char *note)
{
    snprintf(self->note, sizeof(self->note), "%s", note ? note : "");
}

void llmq_progress_clear(llmq_progress_t *self)
{
    if (self->tty && self->drawn) {
        fprintf(stderr, "\r\033[K");
        fflush(stderr);
        self->drawn = false;
    }
}

size_t llmq_progress_ok(const llmq_progress_t *self)
{
    return self->ok;
}

size_t llmq_progress_failed(const llmq_progress_t *self)
{
    return self->failed;
}

void llmq_progress_summary(llmq_progress_t *self, FILE *out, const char *output,
                           const char *label)
{
    llmq_progress_draw(self, true);
    if (self->tty) {
        fprintf(stderr, "\n");
        self->drawn = false;
    }
    double elapsed = (double)(zclock_mono() - self->started) / 1000.0;
    size_t done = self->ok + self->failed;
    int64_t tokens = self->prompt_tokens + self->completion_tokens;
    fprintf(out, "llmq run: %zu lines", self->total + self->resumed);
    if (self->resumed)
        fprintf(out, " (%zu already done, %zu run now)", self->resumed,
                self->total);
    fprintf(out, ": %zu ok, %zu failed", self->ok, self->failed);
    if (done < self->total)
        fprintf(out, ", %zu not finished", self->total - done);
    fprintf(out, "\n");
    fprintf(out,
            "  tokens: %" PRId64 " (prompt %" PRId64 ", completion %" PRId64
            ")  cost: $%.4f\n",
            tokens, self->prompt_tokens, self->completion_tokens,
            self->cost_usd);
    fprintf(out, "  wall time: %.2f s  throughput: %.1f req/s, %.0f tok/s\n",
            elapsed, elapsed > 0 ? (double)done / elapsed : 0.0,
            elapsed > 0 ? (double)tokens / elapsed : 0.0);
    if (output)
        fprintf(out, "  output: %s\n", output);
    if (label)
        fprintf(out, "  %s\n", label);
    fflush(out);
}
