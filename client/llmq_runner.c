/*  llmq_runner.c - the run engine of `llmq run` (see llmq_runner.h).

    The input lines live in `items` (input order); `lines` maps custom_id
    to OUT's line, kept by the resume and added as results arrive, so the
    ordered rewrite at the end is one pass over items. `todo` lists the
    items OUT does not answer yet; a request carries the address of its
    todo slot as its arg, so a result finds its line without a lookup.

    The window: cwnd (a double: grown by 1/cwnd per answer, halved by an
    `overloaded` answer at most every S_CUT_MS) bounds the requests in
    flight; lines answered `overloaded` wait in `backoff` until their due
    time. A step fills the window (due retries first), waits on the
    client's socket fd with poll() (no longer than until the next retry is
    due, and S_TIMERS_MS at most so the client's heartbeat timers run) and
    writes every result that came.

    The cost cap: every result of ours adds its cost to stats.spent_usd;
    once that reaches max_cost_usd, s_fill sends nothing more and a step
    ends the run (returns 0, stats.capped) when nothing is in flight. The
    lines never answered have no OUT line, so the ordered rewrite leaves
    them out and a rerun finds them to do.
*/
#include "llmq_runner.h"
#include "llmq_jsonl.h"

#include <errno.h>
#include <math.h>
#include <poll.h>
#include <unistd.h>

/*  One burst of overloaded answers is one signal: halve at most this
    often. */
#define S_CUT_MS 250
/*  Longest wait on the socket: the client's timers (heartbeat, reconnect,
    give-up) run after each wait. */
#define S_TIMERS_MS 250

typedef struct {
    size_t index; /* position in todo */
    int64_t due;  /* zclock_mono() time to send it again */
} s_retry_t;

/*  A line of this run: its input item and how often it was answered
    `overloaded`. A request's arg is its s_line_t. */
typedef struct {
    llmq_jsonl_item_t *item; /* the input line (the items list owns it) */
    int tries;               /* overloaded answers so far */
} s_line_t;

/*  The files of a run: IN's lines, OUT's lines and OUT's appender. */
typedef struct {
    char *input;                 /* IN path */
    char *output;                /* OUT path */
    zlistx_t *items;             /* every input line, in input order */
    zhashx_t *lines;             /* custom_id -> OUT line (kept and new) */
    llmq_jsonl_writer_t *writer; /* appends to OUT as results arrive */
} s_files_t;

struct _llmq_runner_t {
    s_files_t files;              /* IN and OUT */
    char *model;                  /* every line's model, or NULL */
    char *default_model;          /* for lines naming none, or NULL */
    bool retry_failed;            /* OUT's error lines run again */
    int window;                   /* most requests in flight */
    int retries;                  /* overloaded answers sent again */
    int backoff_ms;               /* first backoff */
    llmq_opts_t request;          /* per-request options */
    double max_cost_usd;          /* cost cap; 0: none */
    llmq_runner_line_fn *on_line; /* finished-line callback, or NULL */
    void *on_line_arg;            /* its argument */
    s_line_t *todo;               /* the lines OUT does not answer yet */
    zlistx_t *backoff;            /* s_retry_t: lines waiting to resend */
    llmq_client_t *client;        /* borrowed, from start */
    double cwnd;                  /* the window in use (AIMD) */
    int64_t last_cut;             /* zclock_mono() when cwnd was halved */
    size_t next;                  /* next todo index never sent */
    size_t in_flight;             /* our requests the client holds */
    llmq_runner_stats_t stats;    /* counts and flags */
};

static int s_load(llmq_runner_t *self, char *err, size_t err_size);

//  --------------------------------------------------------------------------
//  Constructor and destructor

static void s_free_item(void **item)
{
    free(*item);
    *item = NULL;
}

llmq_runner_t *llmq_runner_new(const llmq_runner_config_t *config, char *err,
                               size_t err_size)
{
    char scratch[1];
    if (!err || !err_size) {
        err = scratch;
        err_size = sizeof scratch;
    }
    *err = 0;
    if (!config || !config->input || !config->output) {
        snprintf(err, err_size, "the runner needs an input and an output");
        errno = EINVAL;
        return NULL;
    }
    llmq_runner_t *self = (llmq_runner_t *)calloc(1, sizeof(*self));
    if (!self)
        return NULL;
    self->files.input = strdup(config->input);
    self->files.output = strdup(config->output);
    self->model = config->model ? strdup(config->model) : NULL;
    self->retry_failed = config->retry_failed;
    self->window = config->window > 0 ? config->window : LLMQ_RUNNER_WINDOW;
    self->retries = config->retries > 0    ? config->retries
                    : config->retries == 0 ? LLMQ_RUNNER_RETRIES
                                           : 0;
    self->backoff_ms =
        config->backoff_ms > 0 ? config->backoff_ms : LLMQ_RUNNER_BACKOFF_MS;
    self->request = config->request;
    //  Not > 0 (NaN included): no cap.
    self->max_cost_usd = config->max_cost_usd > 0 ? config->max_cost_usd : 0;
    self->on_line = config->on_line;
    self->on_line_arg = config->on_line_arg;
    self->cwnd = self->window;
    self->backoff = zlistx_new();
    if (self->backoff)
        zlistx_set_destructor(self->backoff, s_free_item);
    if (!self->files.input || !self->files.output || !self->backoff ||
        s_load(self, err, err_size) != 0) {
        int saved = errno;
        llmq_runner_destroy(&self);
        errno = saved;
    }
    return self;
}

static void s_files_close(s_files_t *files)
{
    llmq_jsonl_writer_destroy(&files->writer);
    zhashx_destroy(&files->lines);
    zlistx_destroy(&files->items);
    free(files->output);
    free(files->input);
}

void llmq_runner_destroy(llmq_runner_t **self_p)
{
    llmq_runner_t *self = self_p ? *self_p : NULL;
    if (!self)
        return;
    s_files_close(&self->files);
    zlistx_destroy(&self->backoff);
    free(self->todo);
    free(self->default_model);
    free(self->model);
    free(self);
    *self_p = NULL;
}

//  --------------------------------------------------------------------------
//  Loading: IN, OUT's lines, what is left to do

/*  Of items, count those that lines answers (*failed_p: error lines among
    them); todo, if not NULL, receives the others (*todo_count_p). Returns
    how many lines answers. */
static size_t s_count(zlistx_t *items, zhashx_t *lines, size_t *failed_p,
                      s_line_t *todo, size_t *todo_count_p)
{
    size_t answered = 0;
    *failed_p = 0;
    for (llmq_jsonl_item_t *item = (llmq_jsonl_item_t *)zlistx_first(items);
         item; item = (llmq_jsonl_item_t *)zlistx_next(items)) {
        const char *line = (const char *)zhashx_lookup(lines, item->custom_id);
        if (line) {
            answered++;
            //  An error line kept by the resume is still a failed line.
            if (llmq_jsonl_line_failed(line))
                (*failed_p)++;
        } else if (todo)
            todo[(*todo_count_p)++].item = item;
    }
    return answered;
}

/*  Fail a load: the reason in err, errno code. Returns -1. */
static int s_fail(char *err, size_t err_size, int code, const char *what,
                  const char *path)
{
    int saved = errno;
    snprintf(err, err_size, "cannot %s %s: %s", what, path, strerror(saved));
    errno = code ? code : saved == EINVAL ? EIO : saved;
    return -1;
}

/*  Read IN, refuse duplicates, keep OUT's whole lines and list what is
    left; open OUT for appending if anything is. Returns 0 or -1. */
static int s_load(llmq_runner_t *self, char *err, size_t err_size)
{
    s_files_t *files = &self->files;
    errno = EINVAL;
    files->items = llmq_jsonl_read_input(files->input, false, err, err_size);
    if (!files->items || llmq_runner_check_ids(files->items, err, err_size))
        return (errno = EINVAL), -1;
    size_t dropped = 0, total = zlistx_size(files->items);
    files->lines = llmq_jsonl_scan_output(files->output, self->retry_failed,
                                          &dropped, err, err_size);
    self->todo = (s_line_t *)calloc(total + 1, sizeof(*self->todo));
    if (!files->lines)
        return (errno = EINVAL), -1;
    if (!self->todo)
        return (errno = ENOMEM), -1;
    llmq_runner_stats_t *stats = &self->stats;
    stats->total = total;
    stats->resumed = s_count(files->items, files->lines, &stats->resumed_failed,
                             self->todo, &stats->todo);
    //  OUT already answers every line: a rerun of a finished run.
    stats->complete =
        total > 0 && stats->todo == 0 && !streq(files->output, "-");
    if (stats->complete)
        return 0;
    //  A kill leaves a partial last line: rewrite OUT with the whole lines
    //  before appending to it.
    if (dropped > 0 && llmq_jsonl_write_ordered(files->output, files->items,
                                                files->lines) != 0)
        return s_fail(err, err_size, 0, "rewrite", files->output);
    if (stats->todo > 0 &&
        !(files->writer = llmq_jsonl_writer_new(files->output)))
        return s_fail(err, err_size, EINVAL, "write", files->output);
    return 0;
}

int llmq_runner_check_ids(zlistx_t *items, char *err, size_t err_size)
{
    zhashx_t *seen = zhashx_new();
    size_t duplicates = 0, used = 0;
    for (llmq_jsonl_item_t *item = (llmq_jsonl_item_t *)zlistx_first(items);
         item && seen; item = (llmq_jsonl_item_t *)zlistx_next(items)) {
        llmq_jsonl_item_t *first =
            (llmq_jsonl_item_t *)zhashx_lookup(seen, item->custom_id);
        if (!first) {
            zhashx_insert(seen, item->custom_id, item);
            continue;
        }
        if (++duplicates <= 5 && used < err_size)
            used += (size_t)snprintf(
                err + used, err_size - used,
                "line %zu: duplicate custom_id '%s' (first on line %zu)\n",
                item->line_no, item->custom_id, first->line_no);
    }
    zhashx_destroy(&seen);
    if (!duplicates)
        return 0;
    if (used < err_size)
        snprintf(err + used, err_size - used,
                 "%zu duplicate custom_id%s: every line needs its own "
                 "custom_id (results are matched by it); nothing was sent",
                 duplicates, duplicates == 1 ? "" : "s");
    return -1;
}

bool llmq_runner_complete(zlistx_t *items, const char *output,
                          bool retry_failed, size_t *failed_p)
{
    *failed_p = 0;
    if (streq(output, "-") || zlistx_size(items) == 0)
        return false;
    char err[512] = "";
    zhashx_t *lines =
        llmq_jsonl_scan_output(output, retry_failed, NULL, err, sizeof err);
    bool complete = lines && s_count(items, lines, failed_p, NULL, NULL) ==
                                 zlistx_size(items);
    zhashx_destroy(&lines);
    return complete;
}

size_t llmq_runner_models(llmq_runner_t *self, const char **names, size_t max)
{
    size_t count = 0;
    zhashx_t *named = self->model ? NULL : zhashx_new();
    for (size_t i = 0; named && i < self->stats.todo && count < max; i++) {
        const char *model = self->todo[i].item->model;
        if (model && !zhashx_lookup(named, model)) {
            zhashx_insert(named, model, (void *)model);
            names[count++] = model;
        }
    }
    zhashx_destroy(&named);
    return count;
}

//  --------------------------------------------------------------------------
//  Running: send, back off, collect, wait

int llmq_runner_start(llmq_runner_t *self, llmq_client_t *client,
                      const char *default_model)
{
    if (!self || !client)
        return -1;
    self->client = client;
    free(self->default_model);
    self->default_model = default_model ? strdup(default_model) : NULL;
    llmq_client_set_window(client, (size_t)self->window);
    //  Bodies go to OUT as they came: no tree per result.
    llmq_client_set_raw_bodies(client, true);
    return 0;
}

/*  A finished line: to OUT, to the table, to the caller. Takes line. */
static void s_answered(llmq_runner_t *self, llmq_jsonl_item_t *item, char *line,
                       const llmq_result_t *result)
{
    if (line) {
        llmq_jsonl_writer_write(self->files.writer, line);
        zhashx_update(self->files.lines, item->custom_id, line);
    }
    self->stats.finished++;
    if (!result || !result->ok)
        self->stats.failed++;
    if (self->on_line)
        self->on_line(item->custom_id, result, self->on_line_arg);
}

/*  Submit one todo line; a line that cannot be sent is answered at once
    by an error line. Returns -1 if a signal cut the submit short (the
    line is not sent). */
static int s_send(llmq_runner_t *self, size_t index)
{
    llmq_jsonl_item_t *item = self->todo[index].item;
    const char *reason = item->error ? item->error : "out of memory";
    cJSON *body = item->error ? NULL : llmq_jsonl_item_body(item);
    if (body) {
        const char *model = self->model   ? self->model
                            : item->model ? item->model
                                          : self->default_model;
        //  The body names the model the broker routes on.
        cJSON_DeleteItemFromObject(body, "model");
        cJSON_AddStringToObject(body, "model", model);
        //  One traceparent per line: the line's own, else a fresh one.
        char trace[LLMQ_JSONL_TRACEPARENT_SIZE];
        llmq_opts_t opts = self->request;
        opts.trace = llmq_jsonl_traceparent(item->line,
                                            item->line ? strlen(item->line) : 0,
                                            item->line_no, trace);
        int rc = llmq_client_submit(self->client, item->op, model, body, &opts,
                                    &self->todo[index]);
        int saved = errno;
        //  The client keeps its own copy: free the tree now.
        cJSON_Delete(item->body);
        item->body = NULL;
        if (rc == 0) {
            self->in_flight++;
            return 0;
        }
        if (saved == EINTR)
            return -1;
        reason = saved == EMSGSIZE ? "request too large for the protocol's "
                                     "64 MiB frame limit"
                                   : "request body could not be encoded";
    }
    s_answered(self, item,
               llmq_jsonl_error_line(item->custom_id, NULL, "invalid_request",
                                     reason, 0),
               NULL);
    return 0;
}

/*  Queue todo line index to be sent again at due. */
static void s_retry_at(llmq_runner_t *self, size_t index, int64_t due)
{
    s_retry_t *again = (s_retry_t *)calloc(1, sizeof(*again));
    if (!again)
        return;
    again->index = index;
    again->due = due;
    zlistx_add_end(self->backoff, again);
}

/*  Take the first backed-off line that is due; false if none is. */
static bool s_take_due(llmq_runner_t *self, size_t *index_p)
{
    int64_t now = zclock_mono();
    for (s_retry_t *retry = (s_retry_t *)zlistx_first(self->backoff); retry;
         retry = (s_retry_t *)zlistx_next(self->backoff))
        if (retry->due <= now) {
            *index_p = retry->index;
            zlistx_delete(self->backoff, zlistx_cursor(self->backoff));
            return true;
        }
    return false;
}

/*  Fill the window: lines due for a retry first, then new ones; nothing
    once the cost cap is reached. */
static void s_fill(llmq_runner_t *self)
{
    while (!self->stats.capped && self->in_flight < (size_t)self->cwnd) {
        size_t index;
        if (!s_take_due(self, &index)) {
            if (self->next >= self->stats.todo)
                break;
            index = self->next++;
        }
        if (s_send(self, index) != 0) {
            s_retry_at(self, index, 0);
            break;
        }
    }
}

/*  A line answered `overloaded` (a full queue: a capacity problem, not the
    line's): fewer in flight, and send it again after a jittered doubling
    backoff, so retries do not come back as one herd. */
static void s_back_off(llmq_runner_t *self, size_t index)
{
    int64_t now = zclock_mono();
    if (now - self->last_cut >= S_CUT_MS) {
        self->cwnd = self->cwnd / 2 < 1 ? 1 : self->cwnd / 2;
        self->last_cut = now;
    }
    int64_t delay = (int64_t)self->backoff_ms << self->todo[index].tries;
    s_retry_at(self, index, now + delay / 2 + randof((int)(delay / 2) + 1));
    self->todo[index].tries++;
    self->stats.retried++;
}

/*  Count what a result cost (a value that is not finite or is negative
    counts as 0: a rogue worker must not lift the cap); at the cap, stop
    sending. */
static void s_spend(llmq_runner_t *self, const llmq_result_t *result)
{
    double cost = result->cost_usd;
    if (isfinite(cost) && cost > 0)
        self->stats.spent_usd += cost;
    if (self->max_cost_usd > 0 && self->stats.spent_usd >= self->max_cost_usd)
        self->stats.capped = true;
}

/*  One result of ours: written, backed off, or (broker unreachable) left
    out of OUT so that a rerun runs the line. */
static void s_on_result(llmq_runner_t *self, llmq_result_t *result)
{
    if (!result->arg)
        return; //  not one of ours
    size_t index = (size_t)((s_line_t *)result->arg - self->todo);
    if (index >= self->stats.todo)
        return;
    self->in_flight--;
    s_spend(self, result);
    llmq_jsonl_item_t *item = self->todo[index].item;
    if (!result->ok && streq(result->error_code, "timeout") &&
        result->error_message &&
        streq(result->error_message, "broker unreachable"))
        self->stats.unreachable = true;
    else if (!result->ok && streq(result->error_code, "overloaded") &&
             self->todo[index].tries < self->retries)
        s_back_off(self, index);
    else {
        s_answered(self, item, llmq_jsonl_result_line(item->custom_id, result),
                   result);
        free(item->line);
        item->line = NULL;
        //  Window back up by one per window of answers.
        if (self->cwnd < self->window)
            self->cwnd += 1.0 / self->cwnd;
    }
}

/*  Let the client handle what its socket holds and run its timers. */
static void s_process(llmq_runner_t *self)
{
    for (int rounds = 0; rounds < 100; rounds++)
        if (llmq_client_process(self->client) != 1)
            break;
}

/*  How long a step may wait: timeout_ms, cut to S_TIMERS_MS while
    requests are in flight and to the next retry's due time. */
static int s_wait_ms(llmq_runner_t *self, int timeout_ms)
{
    int64_t wait = timeout_ms > 0 ? timeout_ms : 0;
    if (self->in_flight > 0 && wait > S_TIMERS_MS)
        wait = S_TIMERS_MS;
    int64_t now = zclock_mono();
    for (s_retry_t *retry = (s_retry_t *)zlistx_first(self->backoff); retry;
         retry = (s_retry_t *)zlistx_next(self->backoff))
        if (retry->due - now < wait)
            wait = retry->due > now ? retry->due - now : 0;
    return (int)wait;
}

/*  Wait for the client's socket (its fd is edge-triggered: handle what is
    queued first), then let the client read it. */
static void s_wait(llmq_runner_t *self, int timeout_ms)
{
    s_process(self);
    if (llmq_client_ready(self->client) > 0)
        return;
    struct pollfd item = {llmq_client_fd(self->client), POLLIN, 0};
    if (poll(&item, 1, s_wait_ms(self, timeout_ms)) < 0 && errno == EINTR)
        return; //  a signal: the caller looks at its flags
    s_process(self);
}

/*  Whether the run is over: every line finished, or the cost cap reached
    and nothing left in flight. */
static bool s_done(llmq_runner_t *self)
{
    return self->stats.finished >= self->stats.todo ||
           (self->stats.capped && self->in_flight == 0);
}

int llmq_runner_step(llmq_runner_t *self, int timeout_ms)
{
    if (!self || !self->client || self->stats.unreachable)
        return -1;
    if (s_done(self))
        return 0;
    s_fill(self);
    s_wait(self, timeout_ms);
    llmq_result_t *result;
    while (llmq_client_ready(self->client) > 0 &&
           (result = llmq_client_poll(self->client, 0))) {
        s_on_result(self, result);
        llmq_result_destroy(&result);
    }
    llmq_jsonl_writer_sync(self->files.writer, 1000);
    if (self->stats.unreachable)
        return -1;
    return s_done(self) ? 0 : 1;
}

int llmq_runner_finish(llmq_runner_t *self)
{
    s_files_t *files = &self->files;
    llmq_jsonl_writer_destroy(&files->writer);
    if (self->stats.complete)
        return 0;
    return llmq_jsonl_write_ordered(files->output, files->items, files->lines);
}

void llmq_runner_stats(llmq_runner_t *self, llmq_runner_stats_t *stats)
{
    *stats = self->stats;
    stats->in_flight = self->in_flight;
    stats->backed_off = zlistx_size(self->backoff);
    stats->window = (int)self->cwnd;
}

//  --------------------------------------------------------------------------
//  Selftest: runs files through the client's fake broker (llmq_client.c),
//  which echoes a body's "echo" and fails a body with "fail" with that
//  error code.

#include "llmq_check.h"
#define CHECK(cond) LLMQ_CHECK_COUNT(cond, failures)

#define S_TEST_LINES 300

/*  What the line callback saw. */
typedef struct {
    llmq_runner_t *runner; /* the runner of the run */
    int window;            /* its configured window */
    int min_window;        /* smallest window seen */
    bool regrown;          /* the full window again after a cut */
    int64_t start;         /* zclock_mono() at the start */
    int64_t l2_ms;         /* when line l2 (always overloaded) was done */
    const char *out;       /* OUT to check at the first line, or NULL */
    int bad_lines;         /* lines of OUT then that are not JSON */
} s_test_seen_t;

/*  Lines of path that are not whole JSON objects. */
static int s_test_bad_lines(const char *path)
{
    int bad = 0;
    FILE *file = fopen(path, "r");
    char line[4096];
    while (file && fgets(line, sizeof line, file)) {
        cJSON *json = cJSON_Parse(line);
        bad += !cJSON_IsObject(json) || !strchr(line, '\n');
        cJSON_Delete(json);
    }
    if (file)
        fclose(file);
    return file ? bad : 1;
}

static void s_test_on_line(const char *custom_id, const llmq_result_t *result,
                           void *arg)
{
    (void)result;
    s_test_seen_t *seen = (s_test_seen_t *)arg;
    llmq_runner_stats_t stats;
    llmq_runner_stats(seen->runner, &stats);
    if (stats.window < seen->min_window)
        seen->min_window = stats.window;
    if (seen->min_window < seen->window && stats.window == seen->window)
        seen->regrown = true;
    if (streq(custom_id, "l2"))
        seen->l2_ms = zclock_mono() - seen->start;
    //  The first line appended after a resume: OUT is whole lines.
    if (seen->out && stats.finished == 1)
        seen->bad_lines = s_test_bad_lines(seen->out);
}

/*  IN: l2 and l7 always overloaded, l5 unusable, the others echoed. */
static void s_test_input(const char *path, int count)
{
    FILE *file = fopen(path, "w");
    for (int i = 1; file && i <= count; i++)
        if (i == 2 || i == 7)
            fprintf(file,
                    "{\"custom_id\":\"l%d\",\"body\":{\"fail\":"
                    "\"overloaded\"}}\n",
                    i);
        else if (i == 5)
            fprintf(file, "{\"custom_id\":\"l5\",\"body\":5}\n");
        else
            fprintf(file,
                    "{\"custom_id\":\"l%d\",\"body\":{\"echo\":\"n%d\"}}\n", i,
                    i);
    if (file)
        fclose(file);
}

/*  Run config through client to its end. Returns the last step's code;
    stats_p gets the runner's stats, sent_p the requests the client sent. */
static int s_test_run(llmq_runner_config_t *config, llmq_client_t *client,
                      llmq_runner_stats_t *stats_p, uint64_t *sent_p)
{
    s_test_seen_t *seen = (s_test_seen_t *)config->on_line_arg;
    llmq_client_stats_t before, after;
    llmq_client_stats(client, &before);
    llmq_runner_t *runner = llmq_runner_new(config, NULL, 0);
    if (!runner)
        return -2;
    seen->runner = runner;
    seen->window = seen->min_window = config->window;
    seen->start = zclock_mono();
    int rc = llmq_runner_start(runner, client, "m");
    int64_t deadline = zclock_mono() + 20000;
    while (rc == 0 && zclock_mono() < deadline &&
           (rc = llmq_runner_step(runner, 100)) == 1)
        rc = 0;
    if (llmq_runner_finish(runner) != 0)
        rc = -3;
    llmq_runner_stats(runner, stats_p);
    llmq_runner_destroy(&runner);
    llmq_client_stats(client, &after);
    *sent_p = after.sent - before.sent;
    return rc;
}

/*  OUT holds count lines, l1..l<count> in order; marker, if not NULL, is
    in the first line. Returns the number of problems. */
static int s_test_ordered(const char *path, int count, const char *marker)
{
    int failures = 0, n = 0;
    FILE *file = fopen(path, "r");
    char line[4096];
    while (file && fgets(line, sizeof line, file)) {
        char id[32];
        snprintf(id, sizeof id, "\"custom_id\":\"l%d\"", ++n);
        CHECK(strstr(line, id));
        if (n == 1 && marker)
            CHECK(strstr(line, marker));
        if (n == 2)
            CHECK(strstr(line, "overloaded"));
        if (n == 3)
            CHECK(strstr(line, "\"content\":\"n3\""));
    }
    if (file)
        fclose(file);
    CHECK(n == count);
    return failures;
}

/*  OUT cut down as a kill leaves it: l1 (a line of an earlier run, with
    a marker), l2..l10 as they are, and a partial line. */
static void s_test_cut(const char *path)
{
    char text[16][4096];
    int n = 0;
    FILE *file = fopen(path, "r");
    while (file && n < 10 && fgets(text[n], sizeof text[n], file))
        n++;
    if (file)
        fclose(file);
    file = fopen(path, "w");
    if (!file)
        return;
    fprintf(file,
            "{\"id\":\"x\",\"custom_id\":\"l1\",\"response\":{"
            "\"status_code\":200,\"body\":{\"kept\":1}},\"error\":null}\n");
    for (int i = 1; i < n; i++)
        fputs(text[i], file);
    fputs("{\"custom_id\":\"l11\",\"resp", file);
    fclose(file);
}

/*  Reruns of a finished OUT: complete as it is; with retry_failed, only
    the error lines are sent again (l5 is unusable: never sent). */
static int s_test_rerun(llmq_runner_config_t *config, llmq_client_t *client)
{
    int failures = 0;
    llmq_runner_t *runner = llmq_runner_new(config, NULL, 0);
    llmq_runner_stats_t stats = {0};
    if (runner)
        llmq_runner_stats(runner, &stats);
    CHECK(stats.complete && stats.todo == 0 && stats.resumed_failed == 3);
    llmq_runner_destroy(&runner);
    zlistx_t *items = llmq_jsonl_read_input(config->input, false, NULL, 0);
    size_t failed = 0;
    CHECK(items && llmq_runner_complete(items, config->output, false, &failed));
    CHECK(failed == 3);
    zlistx_destroy(&items);

    config->retry_failed = true;
    uint64_t sent = 0;
    CHECK(s_test_run(config, client, &stats, &sent) == 0);
    config->retry_failed = false;
    CHECK(stats.resumed == S_TEST_LINES - 3 && stats.todo == 3);
    CHECK(sent == 2 * 4);
    failures += s_test_ordered(config->output, S_TEST_LINES, NULL);
    return failures;
}

/*  Two lines with one custom_id: refused before anything is sent. */
static int s_test_duplicates(const char *path)
{
    int failures = 0;
    FILE *file = fopen(path, "w");
    if (file) {
        fputs("{\"custom_id\":\"d\",\"prompt\":\"a\"}\nb\n"
              "{\"custom_id\":\"d\",\"prompt\":\"c\"}\n",
              file);
        fclose(file);
    }
    llmq_runner_config_t config = {.input = path, .output = "-"};
    char err[1024] = "";
    errno = 0;
    llmq_runner_t *runner = llmq_runner_new(&config, err, sizeof err);
    CHECK(!runner && errno == EINVAL);
    CHECK(strstr(err, "line 3: duplicate custom_id 'd' (first on line 1)"));
    CHECK(strstr(err, "1 duplicate custom_id: "));
    llmq_runner_destroy(&runner);
    return failures;
}

/*  No broker answers: the run stops, the lines in flight stay out of OUT
    (a rerun sends them). */
static int s_test_unreachable(llmq_runner_config_t *config)
{
    int failures = 0;
    zsock_t *mute = zsock_new(ZMQ_ROUTER);
    int port = mute ? zsock_bind(mute, "tcp://127.0.0.1:*") : -1;
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", port);
    llmq_client_t *client = port > 0 ? llmq_client_new(endpoint) : NULL;
    CHECK(client);
    if (client) {
        llmq_client_set_timeout(client, 200);
        llmq_client_set_give_up(client, 400);
        llmq_runner_stats_t stats;
        uint64_t sent = 0;
        CHECK(s_test_run(config, client, &stats, &sent) == -1);
        CHECK(stats.unreachable && stats.finished < stats.todo);
        CHECK(sent == 8 && stats.in_flight == 0);
    }
    llmq_client_destroy(&client);
    zsock_destroy(&mute);
    return failures;
}

/*  OUT holds exactly the lines l1..l<count>, in order, each once and
    answered. Returns the number of problems. */
static int s_test_prefix(const char *path, size_t count)
{
    int failures = 0;
    size_t n = 0;
    FILE *file = fopen(path, "r");
    char line[4096];
    while (file && fgets(line, sizeof line, file)) {
        char id[48];
        snprintf(id, sizeof id, "\"custom_id\":\"l%zu\"", ++n);
        CHECK(strstr(line, id) && strstr(line, "\"error\":null"));
    }
    if (file)
        fclose(file);
    CHECK(file && n == count);
    return failures;
}

/*  Costs that are not finite or are negative count as nothing. */
static int s_test_spend(llmq_runner_config_t *config)
{
    int failures = 0;
    config->max_cost_usd = 1.0;
    llmq_runner_t *runner = llmq_runner_new(config, NULL, 0);
    CHECK(runner);
    if (!runner)
        return failures;
    llmq_result_t result = {0};
    const double rogue[] = {NAN, -INFINITY, -0.75, INFINITY, 0.25};
    for (size_t i = 0; i < sizeof rogue / sizeof rogue[0]; i++) {
        result.cost_usd = rogue[i];
        s_spend(runner, &result);
    }
    llmq_runner_stats_t stats;
    llmq_runner_stats(runner, &stats);
    CHECK(stats.spent_usd == 0.25 && !stats.capped);
    result.cost_usd = 0.75;
    s_spend(runner, &result);
    llmq_runner_stats(runner, &stats);
    CHECK(stats.spent_usd == 1.0 && stats.capped);
    llmq_runner_destroy(&runner);
    config->max_cost_usd = 0;
    return failures;
}

/*  The cost cap: the fake broker prices every answer at $0.50, so a cap
    of $0.50 x S_CAP_LINES is reached after S_CAP_LINES answers; with a
    window of S_CAP_WINDOW at most that many more are in flight then,
    finish and are written. The other lines are left out of OUT, and a
    rerun without the cap sends just those: every line once. */
#define S_CAP_INPUT 200
#define S_CAP_LINES 20
#define S_CAP_WINDOW 8
static int s_test_cap(const char *in, const char *out, llmq_client_t *client)
{
    int failures = 0;
    FILE *file = fopen(in, "w");
    for (int i = 1; file && i <= S_CAP_INPUT; i++)
        fprintf(file, "{\"custom_id\":\"l%d\",\"body\":{\"echo\":\"n%d\"}}\n",
                i, i);
    if (file)
        fclose(file);
    s_test_seen_t seen = {0};
    llmq_runner_config_t config = {.input = in,
                                   .output = out,
                                   .window = S_CAP_WINDOW,
                                   .on_line = s_test_on_line,
                                   .on_line_arg = &seen};
    failures += s_test_spend(&config);

    config.max_cost_usd = 0.5 * S_CAP_LINES;
    llmq_runner_stats_t stats;
    uint64_t sent = 0;
    CHECK(s_test_run(&config, client, &stats, &sent) == 0);
    CHECK(stats.capped && stats.in_flight == 0);
    CHECK(stats.finished >= S_CAP_LINES &&
          stats.finished <= S_CAP_LINES + S_CAP_WINDOW);
    CHECK(sent == stats.finished && stats.failed == 0);
    CHECK(stats.spent_usd == 0.5 * (double)stats.finished);
    failures += s_test_prefix(out, stats.finished);

    //  The rerun without the cap: only the lines left, every line once.
    size_t done = stats.finished;
    config.max_cost_usd = 0;
    CHECK(s_test_run(&config, client, &stats, &sent) == 0);
    CHECK(!stats.capped && stats.resumed == done);
    CHECK(stats.todo == S_CAP_INPUT - done && sent == S_CAP_INPUT - done);
    CHECK(stats.finished == stats.todo);
    failures += s_test_prefix(out, S_CAP_INPUT);
    return failures;
}

int llmq_runner_test(bool verbose)
{
    int failures = 0;
    printf(" * llmq_runner: ");
    char dir[] = "/tmp/llmq-runner-test-XXXXXX";
    CHECK(mkdtemp(dir));
    char *in = zsys_sprintf("%s/in.jsonl", dir);
    char *out = zsys_sprintf("%s/out.jsonl", dir);
    char *lost = zsys_sprintf("%s/lost.jsonl", dir);
    char *dup = zsys_sprintf("%s/dup.jsonl", dir);
    char *cap_in = zsys_sprintf("%s/cap-in.jsonl", dir);
    char *cap_out = zsys_sprintf("%s/cap-out.jsonl", dir);
    s_test_input(in, S_TEST_LINES);
    zactor_t *broker = zactor_new(llmq_client_fake_broker, NULL);
    int port = 0;
    zsock_recv(broker, "i", &port);
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", port);
    llmq_client_t *client = llmq_client_new(endpoint);
    CHECK(client);
    llmq_client_set_verbose(client, verbose);

    //  A fresh run: the overloaded lines shrink the window, come back
    //  after their backoffs (about 20 + 40 + 80 ms, at least half) and
    //  end as error lines; the window grows back; OUT is in input order.
    s_test_seen_t seen = {0};
    llmq_runner_config_t config = {.input = in,
                                   .output = out,
                                   .window = 8,
                                   .retries = 3,
                                   .backoff_ms = 20,
                                   .on_line = s_test_on_line,
                                   .on_line_arg = &seen};
    llmq_runner_stats_t stats;
    uint64_t sent = 0;
    CHECK(s_test_run(&config, client, &stats, &sent) == 0);
    CHECK(stats.todo == S_TEST_LINES && stats.finished == S_TEST_LINES);
    CHECK(stats.failed == 3 && stats.retried == 2 * 3);
    CHECK(sent == S_TEST_LINES - 1 + 2 * 3);
    CHECK(seen.min_window <= 4 && seen.regrown);
    CHECK(seen.l2_ms >= 10 + 20 + 40);
    failures += s_test_ordered(out, S_TEST_LINES, NULL);
    failures += s_test_rerun(&config, client);

    //  Resume after a kill: the partial line goes, the whole lines stay
    //  as they are, only the other lines are sent.
    s_test_cut(out);
    seen.out = out;
    CHECK(s_test_run(&config, client, &stats, &sent) == 0);
    CHECK(seen.bad_lines == 0);
    seen.out = NULL;
    CHECK(stats.resumed == 10 && stats.resumed_failed == 3);
    CHECK(stats.todo == S_TEST_LINES - 10 && sent == S_TEST_LINES - 10);
    failures += s_test_ordered(out, S_TEST_LINES, "\"kept\":1");

    failures += s_test_duplicates(dup);
    failures += s_test_cap(cap_in, cap_out, client);
    config.output = lost;
    failures += s_test_unreachable(&config);

    llmq_client_destroy(&client);
    zactor_destroy(&broker);
    const char *paths[] = {in, out, lost, dup, cap_in, cap_out};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
        unlink(paths[i]);
    rmdir(dir);
    zstr_free(&in);
    zstr_free(&out);
    zstr_free(&lost);
    zstr_free(&dup);
    zstr_free(&cap_in);
    zstr_free(&cap_out);
    printf(failures ? "FAILED\n" : "OK\n");
    return failures ? 1 : 0;
}
