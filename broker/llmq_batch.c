/*  llmq_batch.c - the broker's batch manager (issue 8).

    Design. Every batch the broker knows lives in the store; the batches that
    are not finished (and any a client asked about) are also loaded here as
    s_batch_t, with what only matters while the broker runs: the prefetched
    pending items, the set of items in flight, the round-robin tick, and the
    batch's provider jobs with the job.* task each has outstanding.

    The manager is a set of event handlers (client message, worker result,
    job message, tick) that each end in a consistent state, and writes to the
    store in this order (docs/BATCHES.md, "Durability"):
      - batch.open / add / close / cancel: committed before the ack goes out;
      - job.submit: the job row is committed as `submitting` before the task
        is returned to the broker, so a job is never sent unrecorded;
      - job.status with a provider batch id: committed at once;
      - job.results: committed per message, results are INSERT OR IGNORE so a
        re-fetch after a crash never duplicates;
      - realtime results: grouped (commit_every, or at the next tick); a crash
        loses at most those, and their items are dispatched again (delivery is
        at least once, as for single requests).

    Fairness. Realtime dispatch takes the highest priority among batches that
    have work the worker can serve, and among those the batch served longest
    ago, so equal-priority batches interleave item by item. The broker asks
    only when single requests leave credit unused, so batches never delay an
    interactive request by more than the one dispatch in progress.
*/
#include "llmq_batch.h"

#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "llmq_batch_store.h"
#include "llmq_payload.h"
#include "llmq_log.h"
#include "llmq_value.h"

/*  Batch and job states are enums (llmq_batch_state.h): their names appear
    only where a message or the store needs them. */

#define S_PREFETCH 256                     /* pending items loaded at once */
#define S_MAX_PAYLOAD (60LL * 1024 * 1024) /* job.submit under 64 MiB */

/*  A pending realtime item, loaded from the store. */
typedef struct {
    int64_t index;
    zframe_t *body; /* msgpack request body */
} s_item_t;

typedef struct _s_batch_t s_batch_t;

/*  A provider job in memory: its row plus the task outstanding. */
typedef struct {
    llmq_batch_job_t row; /* as stored */
    s_batch_t *batch;     /* owner (borrowed) */
    llmq_msg_type_t task; /* job.* outstanding, or INVALID */
    int64_t task_sent_ms; /* when that task was handed out */
    int64_t next_ms;      /* earliest time for the next task */
    bool cancel_sent;     /* job.cancel answered this run */
} s_job_t;

struct _s_batch_t {
    llmq_batch_rec_t rec;  /* the stored row (kept in sync) */
    bool dirty;            /* rec changed since written */
    bool dispatching;      /* realtime items may go out */
    bool bad_usage_logged; /* said once that a result's usage was nonsense */
    int64_t scan_next;     /* next index to scan for pending */
    zlistx_t *ready;       /* s_item_t *, in dispatch order */
    zhashx_t *in_flight;   /* "index" -> s_item_t * (no body) */
    zhashx_t *retries;     /* "index" -> failed rounds so far
                              (intptr_t, retryable failures) */
    uint64_t rr_tick;      /* last served (round robin) */
    zlistx_t *jobs;        /* s_job_t *, by first item */
    bool expired;          /* window passed */
};

struct _llmq_batch_t {
    llmq_batch_config_t cfg;     /* tunables */
    llmq_batch_store_t *store;   /* the durable state */
    zhashx_t *batches;           /* wire id -> s_batch_t * (owns) */
    zhashx_t *by_bid;            /* "bid" -> s_batch_t * (borrowed) */
    zhashx_t *jobs;              /* job id -> s_job_t * (borrowed) */
    llmq_batch_pool_fn *pool_fn; /* batch_api pool lookup */
    void *pool_arg;
    uint64_t rr_clock;   /* round-robin counter */
    int64_t uncommitted; /* realtime results in open tx */
    uint32_t job_seq;    /* for job ids */
};

/*  ---- small helpers ---------------------------------------------------- */

/*  A job whose items are settled (its results are stored or re-routed). */
#define S_JOB_OVER(j)                                                          \
    ((j)->row.state == LLMQ_JOB_DONE || (j)->row.state == LLMQ_JOB_FAILED ||   \
     (j)->row.state == LLMQ_JOB_CLEANUP)

/*  A growable array of integers (zlistx cannot hold index 0). */
typedef struct {
    int64_t *v;
    size_t n, cap;
} s_ints_t;

static void s_ints_push(s_ints_t *a, int64_t x)
{
    if (a->n == a->cap) {
        size_t cap = a->cap ? a->cap * 2 : 64;
        int64_t *v = realloc(a->v, cap * sizeof *v);
        if (!v)
            return; /* out of memory: the item is retried later */
        a->v = v;
        a->cap = cap;
    }
    a->v[a->n++] = x;
}

static void s_set_state(s_batch_t *b, llmq_batch_state_t state, int64_t now_ms)
{
    if (b->rec.state != state) {
        b->rec.state = state;
        b->rec.updated_ms = now_ms;
        b->dirty = true;
    }
}

static void s_item_destroy(void **item_p)
{
    s_item_t *item = *item_p;
    if (item) {
        zframe_destroy(&item->body);
        free(item);
        *item_p = NULL;
    }
}

static void s_job_destroy(void **job_p)
{
    free(*job_p);
    *job_p = NULL;
}

static void s_batch_destroy(void **batch_p)
{
    s_batch_t *b = *batch_p;
    if (b) {
        zlistx_destroy(&b->ready);
        zhashx_destroy(&b->in_flight);
        zhashx_destroy(&b->retries);
        zlistx_destroy(&b->jobs);
        free(b);
        *batch_p = NULL;
    }
}

static s_batch_t *s_batch_new(const llmq_batch_rec_t *rec)
{
    s_batch_t *b = calloc(1, sizeof *b);
    if (!b)
        return NULL;
    b->rec = *rec;
    b->ready = zlistx_new();
    zlistx_set_destructor(b->ready, s_item_destroy);
    b->in_flight = zhashx_new();
    zhashx_set_destructor(b->in_flight, s_item_destroy);
    b->retries = zhashx_new();
    b->jobs = zlistx_new();
    zlistx_set_destructor(b->jobs, s_job_destroy);
    return b;
}

/*  Seconds in a completion window such as "24h", "90m", "3600s", "2d";
    -1 if malformed. */
static int64_t s_window_s(const char *window)
{
    if (!window || !*window)
        return 0;
    char *end = NULL;
    long long v = strtoll(window, &end, 10);
    if (end == window || v <= 0 || v > 365LL * 24 * 3600)
        return -1;
    int64_t mult = 0;
    if (streq(end, "s"))
        mult = 1;
    else if (streq(end, "m"))
        mult = 60;
    else if (streq(end, "h"))
        mult = 3600;
    else if (streq(end, "d"))
        mult = 86400;
    return mult ? v * mult : -1;
}

static void s_reply_error(zlist_t *replies, llmq_msg_t *req, llmq_err_t err,
                          const char *batch, const char *message)
{
    llmq_msg_t *r = llmq_msg_new(LLMQ_MSG_ERROR);
    llmq_msg_set_routing_id(r, llmq_msg_routing_id(req));
    llmq_msg_set_code(r, llmq_err_name(err));
    llmq_msg_set_message(r, message);
    if (batch && strlen(batch) <= 64)
        llmq_msg_set_batch(r, batch);
    zlist_append(replies, r);
}

static llmq_msg_t *s_reply(zlist_t *replies, llmq_msg_t *req,
                           llmq_msg_type_t type, const char *batch)
{
    llmq_msg_t *r = llmq_msg_new(type);
    llmq_msg_set_routing_id(r, llmq_msg_routing_id(req));
    llmq_msg_set_batch(r, batch);
    zlist_append(replies, r);
    return r;
}

static void s_fill_status(llmq_msg_t *r, const s_batch_t *b)
{
    llmq_msg_set_state(r, llmq_batch_state_name(b->rec.state));
    llmq_msg_set_counts_total(r, b->rec.total);
    llmq_msg_set_counts_done(r, b->rec.done);
    llmq_msg_set_counts_failed(r, b->rec.failed);
    llmq_msg_set_usage_prompt_tokens(r, b->rec.prompt_tokens);
    llmq_msg_set_usage_completion_tokens(r, b->rec.completion_tokens);
    llmq_msg_set_usage_total_tokens(r, b->rec.prompt_tokens +
                                           b->rec.completion_tokens);
    llmq_msg_set_usage_cost_usd(r, b->rec.cost_usd);
    if (*b->rec.mode)
        llmq_msg_set_mode(r, b->rec.mode);
    //  The provider's own counts: results arrive only at the end.
    if (b->jobs && zlistx_size(b->jobs) > 0) {
        int64_t done = 0, failed = 0;
        for (s_job_t *j = zlistx_first(b->jobs); j; j = zlistx_next(b->jobs)) {
            done += j->row.done;
            failed += j->row.failed;
        }
        llmq_msg_set_provider_done(r, done);
        llmq_msg_set_provider_failed(r, failed);
    }
}

/*  Write dirty batch rows and commit. */
int llmq_batch_flush(llmq_batch_t *self)
{
    int rc = 0;
    for (s_batch_t *b = zhashx_first(self->batches); b;
         b = zhashx_next(self->batches)) {
        if (b->dirty) {
            if (llmq_batch_store_begin(self->store) ||
                llmq_batch_store_batch_update(self->store, &b->rec))
                rc = -1;
            else
                b->dirty = false;
        }
    }
    if (llmq_batch_store_commit(self->store))
        rc = -1;
    self->uncommitted = 0;
    return rc;
}

/*  Store one result for batch b and account for it. from_provider applies
    the Batch API price. Returns 1 stored, 0 duplicate, -1 error. */
static int s_put_result(llmq_batch_t *self, s_batch_t *b,
                        llmq_batch_result_t *res, bool from_provider,
                        int64_t now_ms)
{
    /*  Realtime results were checked by the broker; provider pages were
        not: the one rule (llmq_usage_clean) before anything is summed. */
    if (llmq_usage_clean(&res->prompt_tokens, &res->completion_tokens, NULL,
                         &res->cost_usd) &&
        !b->bad_usage_logged) {
        b->bad_usage_logged = true;
        llmq_log(NULL, LLMQ_LOG_WARN, "batch_bad_usage",
                 LLMQ_LOG_STR("batch", b->rec.bid),
                 LLMQ_LOG_STR("detail", "NaN, infinite, negative or absurd "
                                        "usage counted as 0 (logged once)"),
                 LLMQ_LOG_END);
    }
    if (from_provider)
        res->cost_usd *= self->cfg.provider_price;
    if (llmq_batch_store_begin(self->store))
        return -1;
    int rc = llmq_batch_store_result_put(self->store, b->rec.bid, res);
    if (rc == 1) {
        b->rec.done++;
        if (!res->ok)
            b->rec.failed++;
        b->rec.prompt_tokens += res->prompt_tokens;
        b->rec.completion_tokens += res->completion_tokens;
        b->rec.cost_usd += res->cost_usd;
        b->rec.updated_ms = now_ms;
        b->dirty = true;
    }
    return rc;
}

/*  Error results for every item of b in [first, first + count) that has
    none yet and is not in flight. */
typedef struct {
    llmq_batch_t *self;
    s_batch_t *batch;
    const char *code;
    const char *message;
    int64_t now_ms;
    s_ints_t indices;
} s_fill_t;

static int s_collect_fn(int64_t index, const char *custom_id, const void *body,
                        size_t body_size, void *arg)
{
    (void)custom_id;
    (void)body;
    (void)body_size;
    s_fill_t *f = arg;
    char key[24];
    snprintf(key, sizeof key, "%lld", (long long)index);
    if (!zhashx_lookup(f->batch->in_flight, key))
        s_ints_push(&f->indices, index);
    return 0;
}

static void s_fail_pending(llmq_batch_t *self, s_batch_t *b, int64_t first,
                           int64_t count, llmq_err_t err, const char *message,
                           int64_t now_ms)
{
    s_fill_t f = {self, b, llmq_err_name(err), message, now_ms, {0}};
    /*  Collect first: the store's read cursor must be finished before the
        same connection writes. */
    llmq_batch_store_item_each(self->store, b->rec.bid, first, count, true,
                               s_collect_fn, &f);
    for (size_t i = 0; i < f.indices.n; i++) {
        llmq_batch_result_t r = {.index = f.indices.v[i],
                                 .ok = false,
                                 .error_code = f.code,
                                 .error_message = message,
                                 .error_retryable = llmq_err_retryable(err)};
        s_put_result(self, b, &r, false, now_ms);
    }
    free(f.indices.v);
    /*  Items waiting in memory are now answered. */
    zlistx_purge(b->ready);
    b->scan_next = b->rec.total;
}

/*  Finish a batch when every item has a result (or the remainder must be
    answered because it was cancelled or expired). */
static void s_check_done(llmq_batch_t *self, s_batch_t *b, int64_t now_ms)
{
    if (llmq_batch_state_terminal(b->rec.state) || !b->rec.closed)
        return;
    for (s_job_t *j = zlistx_first(b->jobs); j; j = zlistx_next(b->jobs))
        if (!S_JOB_OVER(j))
            return;
    bool cancelling = b->rec.state == LLMQ_BATCH_CANCELLING;
    if ((cancelling || b->expired) && b->rec.done < b->rec.total)
        s_fail_pending(
            self, b, 0, -1,
            cancelling ? LLMQ_ERR_CANCELLED : LLMQ_ERR_DEADLINE_EXCEEDED,
            cancelling ? "batch cancelled" : "batch completion window expired",
            now_ms);
    if (zhashx_size(b->in_flight) > 0 || b->rec.done < b->rec.total)
        return;
    s_set_state(b,
                cancelling   ? LLMQ_BATCH_CANCELLED
                : b->expired ? LLMQ_BATCH_EXPIRED
                             : LLMQ_BATCH_COMPLETED,
                now_ms);
    b->dispatching = false;
    zlistx_purge(b->ready);
}

/*  ---- provider jobs: chunking -------------------------------------------- */

typedef struct {
    int64_t max_items;
    int64_t max_bytes;   /* estimated JSONL file bytes */
    int64_t max_payload; /* job.submit msgpack bytes */
    int64_t first, count, bytes, payload;
    s_ints_t cuts; /* (first, count) pairs */
} s_chunk_t;

/*  A JSONL line is about the body as JSON plus the wrapper; JSON text is at
    most ~2x its msgpack (numbers, escapes), so the estimate errs large. */
static int64_t s_line_bytes(size_t body_size)
{
    return (int64_t)body_size * 2 + 160;
}

static int s_chunk_fn(int64_t index, const char *custom_id, const void *body,
                      size_t body_size, void *arg)
{
    (void)custom_id;
    (void)body;
    s_chunk_t *c = arg;
    int64_t line = s_line_bytes(body_size);
    int64_t wire = (int64_t)body_size + 40;
    if (c->count > 0 &&
        (c->count + 1 > c->max_items || c->bytes + line > c->max_bytes ||
         c->payload + wire > c->max_payload)) {
        s_ints_push(&c->cuts, c->first);
        s_ints_push(&c->cuts, c->count);
        c->first = index;
        c->count = c->bytes = c->payload = 0;
    }
    if (c->count == 0)
        c->first = index;
    c->count++;
    c->bytes += line;
    c->payload += wire;
    return 0;
}

static s_job_t *s_job_attach(llmq_batch_t *self, s_batch_t *b,
                             const llmq_batch_job_t *row)
{
    s_job_t *j = calloc(1, sizeof *j);
    if (!j)
        return NULL;
    j->row = *row;
    j->batch = b;
    j->task = LLMQ_MSG_INVALID;
    zlistx_add_end(b->jobs, j);
    zhashx_insert(self->jobs, j->row.id, j);
    return j;
}

/*  Cut a closed provider-mode batch into jobs and store them. */
static int s_make_jobs(llmq_batch_t *self, s_batch_t *b, const char *pool,
                       const char *provider, int64_t now_ms)
{
    bool anthropic = streq(provider, "anthropic");
    s_chunk_t c = {0};
    c.max_items = anthropic ? 100000 : 50000;
    c.max_bytes = anthropic ? 256LL * 1000 * 1000 : 200LL * 1000 * 1000;
    if (self->cfg.max_job_items > 0 && self->cfg.max_job_items < c.max_items)
        c.max_items = self->cfg.max_job_items;
    if (self->cfg.max_job_bytes > 0 && self->cfg.max_job_bytes < c.max_bytes)
        c.max_bytes = self->cfg.max_job_bytes;
    c.max_payload = S_MAX_PAYLOAD;
    if (llmq_batch_store_item_each(self->store, b->rec.bid, 0, -1, false,
                                   s_chunk_fn, &c) < 0) {
        free(c.cuts.v);
        return -1;
    }
    if (c.count > 0) {
        s_ints_push(&c.cuts, c.first);
        s_ints_push(&c.cuts, c.count);
    }
    if (c.cuts.n % 2 || llmq_batch_store_begin(self->store)) {
        free(c.cuts.v);
        return -1;
    }
    int rc = 0;
    int n = 0;
    for (size_t i = 0; i + 1 < c.cuts.n; i += 2) {
        llmq_batch_job_t row = {0};
        /*  Unique over the store's life, even if a bid is reused after a
            delete: bid, ordinal and a per-process sequence mixed with the
            clock. */
        snprintf(row.id, sizeof row.id, "j%lld.%d.%x%04x",
                 (long long)b->rec.bid, n++, (unsigned)(now_ms & 0xffffff),
                 (unsigned)(++self->job_seq & 0xffff));
        row.bid = b->rec.bid;
        snprintf(row.pool, sizeof row.pool, "%s", pool);
        snprintf(row.provider, sizeof row.provider, "%s", provider);
        row.state = LLMQ_JOB_PENDING;
        row.first = c.cuts.v[i];
        row.count = c.cuts.v[i + 1];
        row.updated_ms = now_ms;
        if (llmq_batch_store_job_insert(self->store, &row) ||
            !s_job_attach(self, b, &row)) {
            rc = -1;
            break;
        }
    }
    free(c.cuts.v);
    snprintf(b->rec.pool, sizeof b->rec.pool, "%s", pool);
    snprintf(b->rec.provider, sizeof b->rec.provider, "%s", provider);
    b->dirty = true;
    return rc;
}

/*  ---- lifecycle --------------------------------------------------------- */

void llmq_batch_config_defaults(llmq_batch_config_t *cfg)
{
    memset(cfg, 0, sizeof *cfg);
    cfg->auto_threshold = 1000;
    cfg->provider_price = 1.0;
    cfg->poll_interval_ms = 30000;
    cfg->task_timeout_ms = 120000;
    cfg->max_tasks_per_pool = 4;
    cfg->submit_grace_ms = 30 * 60 * 1000;
    cfg->resubmit_failed = true;
    cfg->results_max_items = 1000;
    cfg->results_max_bytes = 4 * 1024 * 1024;
    cfg->commit_every = 512;
    cfg->item_attempts = 3;
}

static void s_index_batch(llmq_batch_t *self, s_batch_t *b)
{
    char key[24];
    snprintf(key, sizeof key, "%lld", (long long)b->rec.bid);
    zhashx_insert(self->batches, b->rec.id, b);
    zhashx_insert(self->by_bid, key, b);
}

typedef struct {
    llmq_batch_t *self;
    int64_t now_ms;
    zlistx_t *loaded;
} s_resume_t;

static int s_resume_batch_fn(const llmq_batch_rec_t *rec, void *arg)
{
    s_resume_t *r = arg;
    if (llmq_batch_state_terminal(rec->state))
        return 0;
    s_batch_t *b = s_batch_new(rec);
    if (!b)
        return -1;
    s_index_batch(r->self, b);
    zlistx_add_end(r->loaded, b);
    return 0;
}

static int s_resume_job_fn(const llmq_batch_job_t *row, void *arg)
{
    s_resume_t *r = arg;
    char key[24];
    snprintf(key, sizeof key, "%lld", (long long)row->bid);
    s_batch_t *b = zhashx_lookup(r->self->by_bid, key);
    if (!b)
        return 0;
    s_job_t *j = s_job_attach(r->self, b, row);
    if (j && j->row.state == LLMQ_JOB_SUBMITTING) {
        /*  We crashed between recording the job and learning its provider
            batch id: the submit may or may not have reached the provider.
            Ask (job.poll by job tag) before any resubmission. */
        j->row.state = LLMQ_JOB_LOOKUP;
    }
    return 0;
}

llmq_batch_t *llmq_batch_new(const char *path, const llmq_batch_config_t *cfg,
                             int64_t now_ms)
{
    llmq_batch_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    if (cfg)
        self->cfg = *cfg;
    else
        llmq_batch_config_defaults(&self->cfg);
    self->store = llmq_batch_store_new(path);
    if (!self->store) {
        free(self);
        return NULL;
    }
    self->batches = zhashx_new();
    zhashx_set_destructor(self->batches, s_batch_destroy);
    self->by_bid = zhashx_new();
    self->jobs = zhashx_new();

    /*  Resume: load unfinished batches and their jobs; realtime items
        without a result are pending again (their dispatch was not
        recorded, by design), counts are recomputed from the results. */
    s_resume_t r = {self, now_ms, zlistx_new()};
    llmq_batch_store_batch_each(self->store, s_resume_batch_fn, &r);
    llmq_batch_store_job_each(self->store, 0, s_resume_job_fn, &r);
    for (s_batch_t *b = zlistx_first(r.loaded); b; b = zlistx_next(r.loaded)) {
        int64_t done = 0, failed = 0;
        if (llmq_batch_store_result_count(self->store, b->rec.bid, &done,
                                          &failed) == 0 &&
            (done != b->rec.done || failed != b->rec.failed)) {
            b->rec.done = done;
            b->rec.failed = failed;
            b->dirty = true;
        }
        if (streq(b->rec.mode, "realtime"))
            b->dispatching = true;
        else if (streq(b->rec.mode, "provider") && b->rec.closed &&
                 zlistx_size(b->jobs) > 0) {
            /*  A provider batch whose jobs all ended may have a realtime
                tail of retried items. */
            bool open = false;
            for (s_job_t *j = zlistx_first(b->jobs); j;
                 j = zlistx_next(b->jobs))
                if (!S_JOB_OVER(j))
                    open = true;
            if (!open && self->cfg.resubmit_failed)
                b->dispatching = true;
        }
        s_check_done(self, b, now_ms);
    }
    zlistx_destroy(&r.loaded);
    llmq_batch_flush(self);
    return self;
}

void llmq_batch_destroy(llmq_batch_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    llmq_batch_t *self = *self_p;
    llmq_batch_flush(self);
    zhashx_destroy(&self->jobs);
    zhashx_destroy(&self->by_bid);
    zhashx_destroy(&self->batches);
    llmq_batch_store_destroy(&self->store);
    free(self);
    *self_p = NULL;
}

void llmq_batch_set_pool_fn(llmq_batch_t *self, llmq_batch_pool_fn *fn,
                            void *arg)
{
    self->pool_fn = fn;
    self->pool_arg = arg;
}

/*  Find a batch, loading a finished one from the store on demand. */
static s_batch_t *s_lookup(llmq_batch_t *self, const char *id)
{
    s_batch_t *b = zhashx_lookup(self->batches, id);
    if (b)
        return b;
    llmq_batch_rec_t rec;
    if (llmq_batch_store_batch_get(self->store, id, &rec))
        return NULL;
    b = s_batch_new(&rec);
    if (b)
        s_index_batch(self, b);
    return b;
}

/*  May the sender of msg see a batch of this owner? The broker puts the
    sender's tenant in `tenant` (PROTOCOL.md 3.4); a message without one is
    the admin's, or an embedded caller's, and sees every batch. */
static bool s_visible(const char *owner, const llmq_msg_t *msg)
{
    const char *tenant = llmq_msg_tenant(msg);
    return !tenant || streq(tenant, owner);
}

/*  The batch msg names, or NULL after an error reply (not_found: unknown,
    or another tenant's). */
static s_batch_t *s_lookup_or_reply(llmq_batch_t *self, llmq_msg_t *msg,
                                    zlist_t *replies)
{
    const char *id = llmq_msg_batch(msg);
    s_batch_t *b = s_lookup(self, id);
    if (b && !s_visible(b->rec.owner, msg))
        b = NULL;
    if (!b)
        s_reply_error(replies, msg, LLMQ_ERR_NOT_FOUND, id, "unknown batch");
    return b;
}

/*  ---- client messages ---------------------------------------------------- */

static void s_handle_open(llmq_batch_t *self, llmq_msg_t *msg, zlist_t *replies,
                          int64_t now_ms)
{
    const char *id = llmq_msg_batch(msg);
    const char *mode = llmq_msg_mode(msg);
    const char *op = llmq_msg_op(msg) ? llmq_msg_op(msg) : "chat";
    const char *pool = llmq_msg_pool(msg) ? llmq_msg_pool(msg) : "";
    const char *window =
        llmq_msg_completion_window(msg) ? llmq_msg_completion_window(msg) : "";
    if (!*id) {
        s_reply_error(replies, msg, LLMQ_ERR_INVALID_REQUEST, id,
                      "batch id is empty");
        return;
    }
    if (!streq(mode, "auto") && !streq(mode, "realtime") &&
        !streq(mode, "provider")) {
        s_reply_error(replies, msg, LLMQ_ERR_INVALID_REQUEST, id,
                      "mode must be auto, realtime or provider");
        return;
    }
    if (!streq(op, "chat") && !streq(op, "completion") &&
        !streq(op, "embedding")) {
        s_reply_error(replies, msg, LLMQ_ERR_INVALID_REQUEST, id,
                      "op must be chat, completion or embedding");
        return;
    }
    int64_t window_s = s_window_s(window);
    if (window_s < 0) {
        s_reply_error(replies, msg, LLMQ_ERR_INVALID_REQUEST, id,
                      "completion_window must look like 24h, 90m or 2d");
        return;
    }
    s_batch_t *b = s_lookup(self, id);
    if (b) {
        /*  A resend of the same open is acknowledged again; anything else
            under an existing id is refused. */
        if (s_visible(b->rec.owner, msg) &&
            streq(b->rec.requested_mode, mode) &&
            streq(b->rec.model, llmq_msg_model(msg)) && streq(b->rec.op, op) &&
            streq(b->rec.pool, pool))
            s_reply(replies, msg, LLMQ_MSG_BATCH_ACK, id);
        else
            s_reply_error(replies, msg, LLMQ_ERR_INVALID_REQUEST, id,
                          "a batch with this id exists");
        return;
    }
    llmq_batch_rec_t rec = {0};
    snprintf(rec.id, sizeof rec.id, "%s", id);
    snprintf(rec.owner, sizeof rec.owner, "%s",
             llmq_msg_tenant(msg) ? llmq_msg_tenant(msg) : "");
    snprintf(rec.requested_mode, sizeof rec.requested_mode, "%s", mode);
    if (!streq(mode, "auto"))
        snprintf(rec.mode, sizeof rec.mode, "%s", mode);
    snprintf(rec.model, sizeof rec.model, "%s", llmq_msg_model(msg));
    snprintf(rec.pool, sizeof rec.pool, "%s", pool);
    snprintf(rec.op, sizeof rec.op, "%s", op);
    rec.state = LLMQ_BATCH_VALIDATING;
    snprintf(rec.completion_window, sizeof rec.completion_window, "%s", window);
    zframe_t *rid = llmq_msg_routing_id(msg);
    if (rid && zframe_size(rid) * 2 < sizeof rec.client) {
        char *hex = zframe_strhex(rid);
        snprintf(rec.client, sizeof rec.client, "%s", hex);
        free(hex);
    }
    rec.priority = llmq_msg_priority(msg);
    rec.created_ms = rec.updated_ms = now_ms;
    rec.deadline_ms = window_s > 0 ? now_ms + window_s * 1000 : 0;
    if (llmq_batch_flush(self) || llmq_batch_store_begin(self->store) ||
        llmq_batch_store_batch_insert(self->store, &rec) ||
        llmq_batch_flush(self)) {
        llmq_batch_store_rollback(self->store);
        s_reply_error(replies, msg, LLMQ_ERR_INTERNAL, id,
                      "batch store write failed");
        return;
    }
    b = s_batch_new(&rec);
    s_index_batch(self, b);
    b->dispatching = streq(rec.mode, "realtime");
    s_reply(replies, msg, LLMQ_MSG_BATCH_ACK, id);
}

typedef struct {
    llmq_batch_t *self;
    s_batch_t *batch;
    int64_t next; /* next index to assign */
    int failed;
} s_add_t;

static int s_add_fn(const char *custom_id, const void *body, size_t body_size,
                    void *arg)
{
    s_add_t *a = arg;
    if (llmq_batch_store_item_insert(a->self->store, a->batch->rec.bid, a->next,
                                     custom_id, body, body_size)) {
        a->failed = 1;
        return 1;
    }
    a->next++;
    return 0;
}

static void s_handle_add(llmq_batch_t *self, s_batch_t *b, llmq_msg_t *msg,
                         zlist_t *replies, int64_t now_ms)
{
    const char *id = llmq_msg_batch(msg);
    int64_t seq = llmq_msg_seq(msg);
    int64_t first = 0, accepted = 0;
    if (llmq_batch_store_add_lookup(self->store, b->rec.bid, seq, &first,
                                    &accepted) == 0) {
        /*  A resend (the client lost our ack): same answer, nothing
            stored twice. */
        llmq_msg_t *r = s_reply(replies, msg, LLMQ_MSG_BATCH_ACK, id);
        llmq_msg_set_seq(r, seq);
        llmq_msg_set_accepted(r, accepted);
        return;
    }
    if (b->rec.closed || llmq_batch_state_terminal(b->rec.state) ||
        b->rec.state == LLMQ_BATCH_CANCELLING) {
        s_reply_error(replies, msg, LLMQ_ERR_INVALID_REQUEST, id,
                      "batch is closed");
        return;
    }
    zframe_t *payload = llmq_msg_payload(msg);
    char err[128] = "";
    /*  Validate the whole array before storing anything: a batch.add is
        all or nothing. */
    long n = payload ? llmq_value_each_item(zframe_data(payload),
                                            zframe_size(payload), NULL, NULL,
                                            err, sizeof err)
                     : -1;
    if (n < 0) {
        char text[200];
        snprintf(text, sizeof text, "bad items: %s", *err ? err : "none");
        s_reply_error(replies, msg, LLMQ_ERR_INVALID_REQUEST, id, text);
        return;
    }
    s_add_t a = {self, b, b->rec.total, 0};
    /*  Commit pending realtime results first: a rollback below must undo
        this add only. */
    if (llmq_batch_flush(self) == 0 && llmq_batch_store_begin(self->store) == 0)
        llmq_value_each_item(zframe_data(payload), zframe_size(payload),
                             s_add_fn, &a, NULL, 0);
    else
        a.failed = 1;
    if (!a.failed && llmq_batch_store_add_record(self->store, b->rec.bid, seq,
                                                 b->rec.total, n) == 0) {
        int64_t old_total = b->rec.total;
        b->rec.total += n;
        b->rec.updated_ms = now_ms;
        b->dirty = true;
        if (llmq_batch_flush(self) == 0) {
            llmq_msg_t *r = s_reply(replies, msg, LLMQ_MSG_BATCH_ACK, id);
            llmq_msg_set_seq(r, seq);
            llmq_msg_set_accepted(r, n);
            return;
        }
        b->rec.total = old_total;
    }
    /*  Whatever was written is undone; the client may resend. */
    llmq_batch_store_rollback(self->store);
    b->dirty = false;
    s_reply_error(replies, msg, LLMQ_ERR_INTERNAL, id,
                  "batch store write failed");
}

/*  Decide auto mode and prepare a closed batch for running. */
static void s_start(llmq_batch_t *self, s_batch_t *b, int64_t now_ms)
{
    char pool[129] = "", provider[33] = "";
    bool has_pool = self->pool_fn &&
                    self->pool_fn(b->rec.model, b->rec.pool, pool, sizeof pool,
                                  provider, sizeof provider, self->pool_arg);
    if (streq(b->rec.requested_mode, "auto")) {
        /*  Provider batches finish within the provider's 24 h window: a
            client window shorter than that rules them out. */
        int64_t window = s_window_s(b->rec.completion_window);
        bool window_ok = window == 0 || window >= 24 * 3600;
        bool provider_mode =
            has_pool && b->rec.total >= self->cfg.auto_threshold && window_ok;
        snprintf(b->rec.mode, sizeof b->rec.mode, "%s",
                 provider_mode ? "provider" : "realtime");
        b->dirty = true;
    }
    if (b->rec.total == 0) {
        s_check_done(self, b, now_ms);
        return;
    }
    if (streq(b->rec.mode, "realtime")) {
        b->dispatching = true;
        s_set_state(b, LLMQ_BATCH_IN_PROGRESS, now_ms);
    } else if (has_pool) {
        if (s_make_jobs(self, b, pool, provider, now_ms) == 0)
            s_set_state(b, LLMQ_BATCH_QUEUED, now_ms);
    } else
        /*  Provider mode requested and no batch_api pool yet: queued until
            one joins (tick retries). */
        s_set_state(b, LLMQ_BATCH_QUEUED, now_ms);
}

static void s_handle_close(llmq_batch_t *self, s_batch_t *b, llmq_msg_t *msg,
                           zlist_t *replies, int64_t now_ms)
{
    const char *id = llmq_msg_batch(msg);
    if (!b->rec.closed) {
        b->rec.closed = true;
        b->rec.updated_ms = now_ms;
        b->dirty = true;
        if (!llmq_batch_state_terminal(b->rec.state) &&
            b->rec.state != LLMQ_BATCH_CANCELLING)
            s_start(self, b, now_ms);
        s_check_done(self, b, now_ms);
        if (llmq_batch_flush(self)) {
            s_reply_error(replies, msg, LLMQ_ERR_INTERNAL, id,
                          "batch store write failed");
            return;
        }
    }
    llmq_msg_t *r = s_reply(replies, msg, LLMQ_MSG_BATCH_ACK, id);
    llmq_msg_set_count(r, b->rec.total);
}

typedef struct {
    llmq_payload_t *entries; /* the results page being built */
    int64_t count;
    int64_t bytes;
    int64_t max_items;
    int64_t max_bytes;
    int64_t next; /* cursor after the last packed */
} s_results_t;

static int s_results_fn(const llmq_batch_result_t *r, void *arg)
{
    s_results_t *c = arg;
    int64_t size = (int64_t)r->body_size + 128 +
                   (r->error_message ? (int64_t)strlen(r->error_message) : 0);
    if (!c->entries || c->count >= c->max_items ||
        (c->count > 0 && c->bytes + size > c->max_bytes))
        return 1;
    llmq_result_item_t item = {.custom_id = r->custom_id,
                               .ok = r->ok,
                               .body = r->body,
                               .body_size = r->body_size,
                               .error_code = r->error_code,
                               .error_message = r->error_message,
                               .error_status = r->error_status,
                               .error_retryable = r->error_retryable,
                               .prompt_tokens = r->prompt_tokens,
                               .completion_tokens = r->completion_tokens,
                               .cost_usd = r->cost_usd};
    llmq_payload_add_result(c->entries, &item);
    c->count++;
    c->bytes += size;
    c->next = r->index + 1;
    return 0;
}

/*  batch.get with batch "" lists the batches: one batch.status each (the
    1,000 most recent, oldest first), then batch.ack {batch "", count}. */
typedef struct {
    llmq_batch_t *self;
    zlist_t *list;
    const llmq_msg_t *msg; /* the request: whose batches to list */
} s_list_t;

#define S_LIST_MAX 1000

static int s_list_fn(const llmq_batch_rec_t *rec, void *arg)
{
    s_list_t *l = arg;
    if (!s_visible(rec->owner, l->msg))
        return 0;
    /*  The in-memory record is newer than the row of an active batch. */
    s_batch_t *live = zhashx_lookup(l->self->batches, rec->id);
    llmq_msg_t *st = llmq_msg_new(LLMQ_MSG_BATCH_STATUS);
    if (!st)
        return 1;
    s_batch_t tmp;
    memset(&tmp, 0, sizeof tmp);
    tmp.rec = *rec;
    llmq_msg_set_batch(st, rec->id);
    s_fill_status(st, live ? live : &tmp);
    if (*rec->model)
        llmq_msg_set_model(st, rec->model);
    zlist_append(l->list, st);
    if (zlist_size(l->list) > S_LIST_MAX) {
        llmq_msg_t *old = zlist_pop(l->list);
        llmq_msg_destroy(&old);
    }
    return 0;
}

static void s_handle_list(llmq_batch_t *self, llmq_msg_t *msg, zlist_t *replies)
{
    s_list_t l = {self, zlist_new(), msg};
    llmq_batch_store_batch_each(self->store, s_list_fn, &l);
    int64_t count = 0;
    llmq_msg_t *st;
    while ((st = zlist_pop(l.list))) {
        llmq_msg_set_routing_id(st, llmq_msg_routing_id(msg));
        zlist_append(replies, st);
        count++;
    }
    zlist_destroy(&l.list);
    llmq_msg_t *ack = s_reply(replies, msg, LLMQ_MSG_BATCH_ACK, "");
    llmq_msg_set_count(ack, count);
}

static void s_handle_get(llmq_batch_t *self, llmq_msg_t *msg, zlist_t *replies)
{
    const char *id = llmq_msg_batch(msg);
    if (!*id) {
        s_handle_list(self, msg, replies);
        return;
    }
    s_batch_t *b = s_lookup_or_reply(self, msg, replies);
    if (!b)
        return;
    llmq_msg_t *st = s_reply(replies, msg, LLMQ_MSG_BATCH_STATUS, id);
    s_fill_status(st, b);

    int64_t after = llmq_msg_after(msg);
    if (after < 0)
        after = 0;
    s_results_t c = {
        llmq_payload_new(),          0,    0, self->cfg.results_max_items,
        self->cfg.results_max_bytes, after};
    /*  Contiguous: results come in input order and the cursor never moves
        past an item that is still running. */
    llmq_batch_store_result_each(self->store, b->rec.bid, after, true,
                                 s_results_fn, &c);
    zframe_t *frame = c.entries ? llmq_payload_frame(c.entries) : NULL;
    llmq_payload_destroy(&c.entries);

    llmq_msg_t *res = s_reply(replies, msg, LLMQ_MSG_BATCH_RESULTS, id);
    llmq_msg_set_cursor(res, c.next);
    llmq_msg_set_final(res, llmq_batch_state_terminal(b->rec.state) &&
                                c.next >= b->rec.total);
    llmq_msg_set_payload(res, &frame);
}

static void s_handle_cancel(llmq_batch_t *self, s_batch_t *b, llmq_msg_t *msg,
                            zlist_t *replies, int64_t now_ms)
{
    const char *id = llmq_msg_batch(msg);
    if (!llmq_batch_state_terminal(b->rec.state)) {
        s_set_state(b, LLMQ_BATCH_CANCELLING, now_ms);
        b->dispatching = false;
        zlistx_purge(b->ready);
        /*  No more items: a cancelled batch is closed. */
        b->rec.closed = true;
        for (s_job_t *j = zlistx_first(b->jobs); j; j = zlistx_next(b->jobs)) {
            /*  A job never started fails here. One whose submit outcome
                is unknown (lookup, submitting) is left alone: a later
                lookup could still find it, and then it is cancelled at the
                provider too if the answer names a provider batch. */
            if (j->row.state == LLMQ_JOB_PENDING) {
                j->row.state = LLMQ_JOB_FAILED;
                j->row.updated_ms = now_ms;
                llmq_batch_store_begin(self->store);
                llmq_batch_store_job_update(self->store, &j->row);
            }
            j->next_ms = 0;
        }
        s_check_done(self, b, now_ms);
        llmq_batch_flush(self);
    }
    llmq_msg_t *st = s_reply(replies, msg, LLMQ_MSG_BATCH_STATUS, id);
    s_fill_status(st, b);
}

int llmq_batch_handle(llmq_batch_t *self, llmq_msg_t *msg, zlist_t *replies,
                      int64_t now_ms)
{
    llmq_msg_type_t type = llmq_msg_type(msg);
    switch (type) {
    case LLMQ_MSG_BATCH_OPEN:
        s_handle_open(self, msg, replies, now_ms);
        return 0;
    case LLMQ_MSG_BATCH_GET:
        s_handle_get(self, msg, replies);
        return 0;
    case LLMQ_MSG_BATCH_ADD:
    case LLMQ_MSG_BATCH_CLOSE:
    case LLMQ_MSG_BATCH_CANCEL:
        break;
    default:
        return -1;
    }
    /*  The others name a batch that must exist. */
    s_batch_t *b = s_lookup_or_reply(self, msg, replies);
    if (!b)
        return 0;
    if (type == LLMQ_MSG_BATCH_ADD)
        s_handle_add(self, b, msg, replies, now_ms);
    else if (type == LLMQ_MSG_BATCH_CLOSE)
        s_handle_close(self, b, msg, replies, now_ms);
    else
        s_handle_cancel(self, b, msg, replies, now_ms);
    return 0;
}

/*  ---- realtime dispatch ------------------------------------------------- */

static int s_prefetch_fn(int64_t index, const char *custom_id, const void *body,
                         size_t body_size, void *arg)
{
    (void)custom_id;
    s_batch_t *b = arg;
    char key[24];
    snprintf(key, sizeof key, "%lld", (long long)index);
    if (!zhashx_lookup(b->in_flight, key)) {
        s_item_t *item = calloc(1, sizeof *item);
        if (!item)
            return 1;
        item->index = index;
        item->body = zframe_new(body, body_size);
        zlistx_add_end(b->ready, item);
    }
    b->scan_next = index + 1;
    /*  Keep memory bounded whatever the batch size. */
    return zlistx_size(b->ready) >= S_PREFETCH;
}

/*  Make sure b has ready items if its store has pending ones. */
static bool s_has_ready(llmq_batch_t *self, s_batch_t *b)
{
    if (!b->dispatching)
        return false;
    while (zlistx_size(b->ready) == 0 && b->scan_next < b->rec.total) {
        /*  Items of provider jobs still open belong to the provider (a
            job that ended early must not pull its neighbours into
            realtime): scan only the segments between open jobs. */
        int64_t end = b->rec.total;
        bool jumped = false;
        for (s_job_t *j = zlistx_first(b->jobs); j; j = zlistx_next(b->jobs)) {
            if (S_JOB_OVER(j))
                continue;
            int64_t jend = j->row.first + j->row.count;
            if (b->scan_next >= j->row.first && b->scan_next < jend) {
                b->scan_next = jend;
                jumped = true;
                break;
            }
            if (j->row.first > b->scan_next && j->row.first < end)
                end = j->row.first;
        }
        if (jumped)
            continue;
        int64_t before = b->scan_next;
        llmq_batch_store_item_each(self->store, b->rec.bid, b->scan_next,
                                   end - b->scan_next, true, s_prefetch_fn, b);
        /*  Nothing pending (or all in flight) in this segment: go past it.
            Otherwise the prefetch stopped at its limit with items ready. */
        if (zlistx_size(b->ready) == 0 || b->scan_next == before)
            b->scan_next = end;
    }
    return zlistx_size(b->ready) > 0;
}

bool llmq_batch_has_items(llmq_batch_t *self)
{
    for (s_batch_t *b = zhashx_first(self->batches); b;
         b = zhashx_next(self->batches))
        if (b->dispatching &&
            (zlistx_size(b->ready) > 0 || b->scan_next < b->rec.total))
            return true;
    return false;
}

llmq_msg_t *llmq_batch_next_item(llmq_batch_t *self,
                                 llmq_batch_serves_fn *serves, void *arg,
                                 int64_t now_ms)
{
    s_batch_t *best = NULL;
    for (s_batch_t *b = zhashx_first(self->batches); b;
         b = zhashx_next(self->batches)) {
        if (!b->dispatching)
            continue;
        if (serves && !serves(b->rec.model, b->rec.pool, arg))
            continue;
        if (best && (b->rec.priority < best->rec.priority ||
                     (b->rec.priority == best->rec.priority &&
                      b->rr_tick >= best->rr_tick)))
            continue;
        if (!s_has_ready(self, b))
            continue;
        best = b;
    }
    if (!best)
        return NULL;
    s_item_t *item = zlistx_detach(best->ready, NULL);
    best->rr_tick = ++self->rr_clock;
    char key[24];
    snprintf(key, sizeof key, "%lld", (long long)item->index);
    zframe_t *body = item->body;
    item->body = NULL;
    zhashx_insert(best->in_flight, key, item);
    if (best->rec.state == LLMQ_BATCH_VALIDATING ||
        best->rec.state == LLMQ_BATCH_QUEUED)
        s_set_state(best, LLMQ_BATCH_IN_PROGRESS, now_ms);

    llmq_msg_t *req = llmq_msg_new(LLMQ_MSG_REQ);
    char id[48];
    snprintf(id, sizeof id, "b%lld.%lld", (long long)best->rec.bid,
             (long long)item->index);
    llmq_msg_set_id(req, id);
    llmq_msg_set_op(req, best->rec.op);
    llmq_msg_set_model(req, best->rec.model);
    if (*best->rec.pool)
        llmq_msg_set_pool(req, best->rec.pool);
    llmq_msg_set_priority(req, best->rec.priority);
    llmq_msg_set_payload(req, &body);
    return req;
}

/*  Parse an item key "b<bid>.<index>". */
static s_batch_t *s_key_batch(llmq_batch_t *self, const char *key,
                              int64_t *index)
{
    if (!key || key[0] != 'b')
        return NULL;
    char *end = NULL;
    long long bid = strtoll(key + 1, &end, 10);
    if (!end || *end != '.' || bid <= 0)
        return NULL;
    char *end2 = NULL;
    long long idx = strtoll(end + 1, &end2, 10);
    if (!end2 || *end2 || idx < 0)
        return NULL;
    char bkey[24];
    snprintf(bkey, sizeof bkey, "%lld", bid);
    *index = idx;
    return zhashx_lookup(self->by_bid, bkey);
}

/*  Put an item (not in flight, no result) back among the ready ones; its
    body is read again from the store. */
static void s_requeue(llmq_batch_t *self, s_batch_t *b, int64_t index,
                      bool front)
{
    int64_t saved = b->scan_next;
    zlistx_t *keep = b->ready;
    b->ready = zlistx_new();
    zlistx_set_destructor(b->ready, s_item_destroy);
    llmq_batch_store_item_each(self->store, b->rec.bid, index, 1, true,
                               s_prefetch_fn, b);
    s_item_t *item = zlistx_detach(b->ready, NULL);
    zlistx_destroy(&b->ready);
    b->ready = keep;
    b->scan_next = saved;
    if (item && front)
        zlistx_add_start(b->ready, item);
    else if (item)
        zlistx_add_end(b->ready, item);
}

int llmq_batch_on_item_result(llmq_batch_t *self, const char *key,
                              llmq_msg_t *res, int64_t now_ms)
{
    int64_t index = 0;
    s_batch_t *b = s_key_batch(self, key, &index);
    if (!b)
        return 1;
    char ikey[24];
    snprintf(ikey, sizeof ikey, "%lld", (long long)index);
    if (!zhashx_lookup(b->in_flight, ikey))
        return 1;
    zhashx_delete(b->in_flight, ikey);
    llmq_batch_result_t r = {.index = index};
    r.ok = llmq_msg_ok(res);
    zframe_t *payload = llmq_msg_payload(res);
    if (r.ok && payload) {
        r.body = zframe_data(payload);
        r.body_size = zframe_size(payload);
    }
    if (!r.ok) {
        r.error_code =
            llmq_msg_error_code(res) ? llmq_msg_error_code(res) : "internal";
        r.error_message = llmq_msg_error_message(res);
        r.error_status = llmq_msg_error_status(res);
        r.error_retryable = llmq_msg_error_retryable(res);
    }
    if (!r.ok && r.error_retryable && b->dispatching) {
        /*  The worker already retried with backoff; a failure that may
            pass later gets another round (behind the ready items) before
            it becomes the item's result. */
        intptr_t tries = (intptr_t)zhashx_lookup(b->retries, ikey);
        if (tries + 1 < self->cfg.item_attempts) {
            zhashx_update(b->retries, ikey, (void *)(tries + 1));
            s_requeue(self, b, index, false);
            return 2;
        }
    }
    zhashx_delete(b->retries, ikey);
    r.prompt_tokens = llmq_msg_usage_prompt_tokens(res);
    r.completion_tokens = llmq_msg_usage_completion_tokens(res);
    r.cost_usd = llmq_msg_usage_cost_usd(res);
    int rc = s_put_result(self, b, &r, false, now_ms);
    if (rc < 0)
        /*  Not stored: the item runs again (at least once). */
        b->scan_next = 0;
    if (++self->uncommitted >= self->cfg.commit_every)
        llmq_batch_flush(self);
    s_check_done(self, b, now_ms);
    return rc == 1 ? 0 : 1;
}

void llmq_batch_item_return(llmq_batch_t *self, const char *key, int64_t now_ms)
{
    int64_t index = 0;
    s_batch_t *b = s_key_batch(self, key, &index);
    if (!b)
        return;
    char ikey[24];
    snprintf(ikey, sizeof ikey, "%lld", (long long)index);
    if (!zhashx_lookup(b->in_flight, ikey))
        return;
    zhashx_delete(b->in_flight, ikey);
    if (!b->dispatching) {
        /*  Cancelled or expired meanwhile: this may have been the last
            item the batch waited for. */
        s_check_done(self, b, now_ms);
        return;
    }
    /*  Back to the front so it is not starved behind the whole batch. */
    s_requeue(self, b, index, true);
}

/*  ---- provider jobs ----------------------------------------------------- */

static int s_job_save(llmq_batch_t *self, s_job_t *j, int64_t now_ms)
{
    j->row.updated_ms = now_ms;
    if (llmq_batch_store_begin(self->store) ||
        llmq_batch_store_job_update(self->store, &j->row))
        return -1;
    return 0;
}

typedef struct {
    llmq_payload_t *items; /* the job.submit payload being built */
    int64_t count;
} s_submit_t;

static int s_submit_fn(int64_t index, const char *custom_id, const void *body,
                       size_t body_size, void *arg)
{
    (void)custom_id;
    s_submit_t *s = arg;
    /*  The provider's custom_id is the item index: unique in the file
        whatever the client's custom_ids are, and maps straight back. */
    char cid[24];
    snprintf(cid, sizeof cid, "%lld", (long long)index);
    llmq_payload_add_item(s->items, cid, body, body_size);
    s->count++;
    return 0;
}

static llmq_msg_t *s_task(s_job_t *j, llmq_msg_type_t type, int64_t now_ms)
{
    llmq_msg_t *m = llmq_msg_new(type);
    llmq_msg_set_job(m, j->row.id);
    llmq_msg_set_provider_batch(m, j->row.provider_batch);
    /*  The worker prices result lines by model. */
    llmq_msg_set_model(m, j->batch->rec.model);
    if (*j->row.pool)
        llmq_msg_set_pool(m, j->row.pool);
    if (*j->row.output_file)
        llmq_msg_set_output_file(m, j->row.output_file);
    if (*j->row.error_file)
        llmq_msg_set_error_file(m, j->row.error_file);
    j->task = type;
    j->task_sent_ms = now_ms;
    return m;
}

static llmq_msg_t *s_job_submit(llmq_batch_t *self, s_job_t *j, int64_t now_ms)
{
    s_batch_t *b = j->batch;
    s_submit_t s = {llmq_payload_new(), 0};
    if (!s.items)
        return NULL;
    llmq_batch_store_item_each(self->store, b->rec.bid, j->row.first,
                               j->row.count, false, s_submit_fn, &s);
    if (s.count != j->row.count) {
        llmq_payload_destroy(&s.items);
        return NULL;
    }
    /*  Durable before sent: if we crash after this commit, restart finds
        `submitting` and looks the job up instead of resubmitting it. */
    j->row.state = LLMQ_JOB_SUBMITTING;
    j->row.attempts++;
    j->row.submitted_ms = now_ms;
    if (s_job_save(self, j, now_ms) || llmq_batch_flush(self)) {
        llmq_payload_destroy(&s.items);
        j->row.state = LLMQ_JOB_PENDING;
        return NULL;
    }
    llmq_msg_t *m = s_task(j, LLMQ_MSG_JOB_SUBMIT, now_ms);
    llmq_msg_clear(m, LLMQ_F_provider_batch);
    llmq_msg_set_model(m, b->rec.model);
    llmq_msg_set_op(m, b->rec.op);
    llmq_msg_set_completion_window(m, "24h");
    llmq_msg_set_count(m, j->row.count);
    zframe_t *frame = llmq_payload_frame(s.items);
    llmq_payload_destroy(&s.items);
    llmq_msg_set_payload(m, &frame);
    return m;
}

/*  The next task a job needs now, or NULL. */
static llmq_msg_t *s_job_next(llmq_batch_t *self, s_job_t *j, int64_t now_ms)
{
    if (j->task != LLMQ_MSG_INVALID || now_ms < j->next_ms)
        return NULL;
    llmq_job_state_t state = j->row.state;
    bool cancelling = j->batch->rec.state == LLMQ_BATCH_CANCELLING;
    if (state == LLMQ_JOB_PENDING)
        return cancelling ? NULL : s_job_submit(self, j, now_ms);
    if (state == LLMQ_JOB_LOOKUP) {
        /*  job.poll with an empty provider_batch: find the provider batch
            tagged {llmq_job: id} (docs/BATCHES.md, "Restart"). */
        llmq_msg_t *m = s_task(j, LLMQ_MSG_JOB_POLL, now_ms);
        llmq_msg_set_provider_batch(m, "");
        llmq_msg_set_time_ms(m, j->row.submitted_ms);
        llmq_msg_set_count(m, j->row.count);
        return m;
    }
    if (state == LLMQ_JOB_RUNNING) {
        if (cancelling && !j->cancel_sent)
            return s_task(j, LLMQ_MSG_JOB_CANCEL, now_ms);
        return s_task(j, LLMQ_MSG_JOB_POLL, now_ms);
    }
    if (state == LLMQ_JOB_FETCHING)
        return s_task(j, LLMQ_MSG_JOB_FETCH, now_ms);
    if (state == LLMQ_JOB_CLEANUP) {
        /*  Only now that the results are committed may the provider's
            copies (input, output and error files) go: a crash before this
            point re-fetches them. */
        llmq_msg_t *m = s_task(j, LLMQ_MSG_JOB_CANCEL, now_ms);
        llmq_msg_set_mode(m, "cleanup");
        return m;
    }
    return NULL;
}

/*  Tasks outstanding for a pool. */
static int64_t s_pool_busy(llmq_batch_t *self, const char *pool)
{
    int64_t busy = 0;
    for (s_job_t *j = zhashx_first(self->jobs); j; j = zhashx_next(self->jobs))
        if (j->task != LLMQ_MSG_INVALID && streq(j->row.pool, pool))
            busy++;
    return busy;
}

llmq_msg_t *llmq_batch_next_job_task(llmq_batch_t *self, const char *pool,
                                     int64_t now_ms)
{
    if (pool && s_pool_busy(self, pool) >= self->cfg.max_tasks_per_pool)
        return NULL;
    /*  Oldest batch first, jobs in item order: zhashx has no order, so
        pick the best candidate by (bid, first). The candidates are copied
        out first: s_pool_busy iterates the same hash, which would reset
        this loop's cursor. */
    size_t n = zhashx_size(self->jobs), k = 0;
    s_job_t **cand = n ? calloc(n, sizeof *cand) : NULL;
    if (!cand)
        return NULL;
    for (s_job_t *j = zhashx_first(self->jobs); j && k < n;
         j = zhashx_next(self->jobs))
        cand[k++] = j;
    s_job_t *best = NULL;
    for (size_t i = 0; i < k; i++) {
        s_job_t *j = cand[i];
        if (j->task != LLMQ_MSG_INVALID || now_ms < j->next_ms ||
            (pool && !streq(j->row.pool, pool)))
            continue;
        if (j->row.state == LLMQ_JOB_DONE || j->row.state == LLMQ_JOB_FAILED)
            continue;
        if (j->row.state == LLMQ_JOB_PENDING &&
            j->batch->rec.state == LLMQ_BATCH_CANCELLING)
            continue;
        if (best &&
            (j->row.bid > best->row.bid ||
             (j->row.bid == best->row.bid && j->row.first > best->row.first)))
            continue;
        if (!pool &&
            s_pool_busy(self, j->row.pool) >= self->cfg.max_tasks_per_pool)
            continue;
        best = j;
    }
    free(cand);
    return best ? s_job_next(self, best, now_ms) : NULL;
}

void llmq_batch_task_unsent(llmq_batch_t *self, llmq_msg_t *task,
                            int64_t now_ms)
{
    const char *id = task ? llmq_msg_job(task) : NULL;
    s_job_t *j = id ? zhashx_lookup(self->jobs, id) : NULL;
    if (!j || j->task != llmq_msg_type(task))
        return;
    if (j->task == LLMQ_MSG_JOB_SUBMIT && j->row.state == LLMQ_JOB_SUBMITTING) {
        /*  It never left the broker: the provider cannot have it. */
        j->row.state = LLMQ_JOB_PENDING;
        j->row.attempts--;
        s_job_save(self, j, now_ms);
        llmq_batch_flush(self);
    }
    j->task = LLMQ_MSG_INVALID;
    j->next_ms = now_ms + self->cfg.poll_interval_ms;
}

/*  A job ended at the provider and its results are in: items without a
    result are retried in realtime or answered with an error. */
static void s_job_finished(llmq_batch_t *self, s_job_t *j, bool ran,
                           int64_t now_ms)
{
    s_batch_t *b = j->batch;
    j->row.state = ran ? LLMQ_JOB_CLEANUP : LLMQ_JOB_FAILED;
    s_job_save(self, j, now_ms);
    bool cancelling = b->rec.state == LLMQ_BATCH_CANCELLING;
    if (!cancelling) {
        if (self->cfg.resubmit_failed) {
            /*  Leftovers go to realtime dispatch; the scan skips items that
                have results. */
            b->dispatching = true;
            if (b->scan_next > j->row.first)
                b->scan_next = j->row.first;
        } else {
            const char *ps = j->row.provider_state;
            llmq_batch_state_t pst = LLMQ_BATCH_FAILED;
            llmq_batch_state_parse(ps, &pst);
            llmq_err_t err =
                pst == LLMQ_BATCH_EXPIRED     ? LLMQ_ERR_DEADLINE_EXCEEDED
                : pst == LLMQ_BATCH_CANCELLED ? LLMQ_ERR_CANCELLED
                                              : LLMQ_ERR_PROVIDER_ERROR;
            char text[128];
            snprintf(text, sizeof text, "provider batch %s",
                     *ps ? ps : "failed");
            s_fail_pending(self, b, j->row.first, j->row.count, err, text,
                           now_ms);
        }
    }
    s_check_done(self, b, now_ms);
}

/*  Update the batch's state from its jobs. */
static void s_batch_from_jobs(s_batch_t *b, int64_t now_ms)
{
    if (llmq_batch_state_terminal(b->rec.state) ||
        b->rec.state == LLMQ_BATCH_CANCELLING)
        return;
    bool running = false, fetching = false, open = false;
    for (s_job_t *j = zlistx_first(b->jobs); j; j = zlistx_next(b->jobs)) {
        if (j->row.state == LLMQ_JOB_RUNNING)
            running = true;
        else if (j->row.state == LLMQ_JOB_FETCHING)
            fetching = true;
        else if (!S_JOB_OVER(j))
            open = true;
    }
    if (running || (fetching && open))
        s_set_state(b, LLMQ_BATCH_IN_PROGRESS, now_ms);
    else if (fetching)
        s_set_state(b, LLMQ_BATCH_FINALIZING, now_ms);
    else if (!open && b->dispatching)
        /*  Every job ended; retried lines run in realtime now. */
        s_set_state(b, LLMQ_BATCH_IN_PROGRESS, now_ms);
}

/*  job.status for a job whose submit outcome is unknown (submitting or
    lookup). Returns true when that settles it, false when the provider
    batch turned out to exist (the job is now running) and msg is to be
    read as a poll answer. */
static bool s_on_submit_status(llmq_batch_t *self, s_job_t *j, llmq_msg_t *msg,
                               int64_t now_ms)
{
    const char *pb = llmq_msg_provider_batch(msg);
    const char *code = llmq_msg_error_code(msg);
    bool not_found =
        code && j->row.state == LLMQ_JOB_LOOKUP && streq(code, "not_found");
    if (pb && *pb) {
        /*  The provider batch exists: record its id before anything
            else happens to this job. */
        snprintf(j->row.provider_batch, sizeof j->row.provider_batch, "%s", pb);
        j->row.state = LLMQ_JOB_RUNNING;
        return false;
    }
    if (not_found && now_ms - j->row.submitted_ms < self->cfg.submit_grace_ms) {
        /*  Not there yet proves nothing while the first submit may
            still be uploading (a slow 200 MB file outlives a task
            timeout): ask again later. */
        j->next_ms = now_ms + self->cfg.poll_interval_ms;
    } else if (not_found) {
        /*  The lookup proved the provider never created it, and no
            submit of it can still be running: now, and only now, may
            it be submitted again. */
        j->row.state = LLMQ_JOB_PENDING;
        s_job_save(self, j, now_ms);
        if (j->batch->rec.state == LLMQ_BATCH_CANCELLING)
            s_job_finished(self, j, false, now_ms);
        llmq_batch_flush(self);
    } else if (code && j->row.state == LLMQ_JOB_SUBMITTING) {
        llmq_err_t err = llmq_err_from_name(code);
        if (err != LLMQ_ERR_NONE && !llmq_msg_error_retryable(msg) &&
            !llmq_err_retryable(err)) {
            /*  The provider refused the file for good: the job never
                ran; its items go the realtime way or fail. */
            s_job_finished(self, j, false, now_ms);
            s_batch_from_jobs(j->batch, now_ms);
        } else {
            /*  A transient failure may still have created the batch
                (timeout after the create call): look it up first. */
            j->row.state = LLMQ_JOB_LOOKUP;
            j->next_ms = now_ms + self->cfg.poll_interval_ms;
            s_job_save(self, j, now_ms);
        }
        llmq_batch_flush(self);
    } else
        j->next_ms = now_ms + self->cfg.poll_interval_ms;
    return true;
}

static void s_on_job_status(llmq_batch_t *self, s_job_t *j, llmq_msg_t *msg,
                            int64_t now_ms)
{
    const char *code = llmq_msg_error_code(msg);
    llmq_batch_state_t pstate = llmq_batch_normalise_state(llmq_msg_state(msg));
    bool was_cancel = j->task == LLMQ_MSG_JOB_CANCEL;
    j->task = LLMQ_MSG_INVALID;

    if (j->row.state == LLMQ_JOB_CLEANUP) {
        /*  Cleanup answered; a failed delete only leaves a file at the
            provider (logged), it never holds the batch back. */
        if (code)
            llmq_log(NULL, LLMQ_LOG_WARN, "batch_job_cleanup_failed",
                     LLMQ_LOG_STR("job", j->row.id), LLMQ_LOG_STR("code", code),
                     LLMQ_LOG_END);
        j->row.state = LLMQ_JOB_DONE;
        s_job_save(self, j, now_ms);
        llmq_batch_flush(self);
        return;
    }

    if (j->row.state == LLMQ_JOB_SUBMITTING ||
        j->row.state == LLMQ_JOB_LOOKUP) {
        if (s_on_submit_status(self, j, msg, now_ms))
            return;
    } else if (code && !llmq_msg_has(msg, LLMQ_F_state)) {
        j->next_ms = now_ms + self->cfg.poll_interval_ms;
        return;
    }
    if (was_cancel)
        j->cancel_sent = true;
    if (code &&
        (j->row.state == LLMQ_JOB_RUNNING ||
         j->row.state == LLMQ_JOB_FETCHING) &&
        !llmq_msg_has(msg, LLMQ_F_counts_total)) {
        /*  A poll that failed (network, 5xx): try again later. */
        j->next_ms = now_ms + self->cfg.poll_interval_ms;
        s_job_save(self, j, now_ms);
        llmq_batch_flush(self);
        return;
    }
    snprintf(j->row.provider_state, sizeof j->row.provider_state, "%s",
             llmq_batch_state_name(pstate));
    if (llmq_msg_output_file(msg))
        snprintf(j->row.output_file, sizeof j->row.output_file, "%s",
                 llmq_msg_output_file(msg));
    if (llmq_msg_error_file(msg))
        snprintf(j->row.error_file, sizeof j->row.error_file, "%s",
                 llmq_msg_error_file(msg));
    j->row.done = llmq_msg_counts_done(msg);
    j->row.failed = llmq_msg_counts_failed(msg);
    if (j->row.state == LLMQ_JOB_RUNNING && llmq_batch_state_terminal(pstate))
        j->row.state = LLMQ_JOB_FETCHING;
    j->next_ms = j->row.state == LLMQ_JOB_FETCHING
                     ? 0
                     : now_ms + self->cfg.poll_interval_ms;
    s_job_save(self, j, now_ms);
    s_batch_from_jobs(j->batch, now_ms);
    llmq_batch_flush(self);
}

typedef struct {
    llmq_batch_t *self;
    s_job_t *j;
    int64_t now_ms;
} s_job_page_t;

/*  One result line of a job.results page: stored as the item's result,
    its body as the bytes the worker sent. */
static int s_job_result_fn(const llmq_result_item_t *e, void *arg)
{
    s_job_page_t *page = arg;
    llmq_batch_t *self = page->self;
    s_job_t *j = page->j;
    s_batch_t *b = j->batch;
    if (!e->custom_id || !*e->custom_id)
        return 0;
    char *end = NULL;
    long long index = strtoll(e->custom_id, &end, 10);
    /*  Only lines of this job's own range count. */
    if (!end || *end || index < j->row.first ||
        index >= j->row.first + j->row.count)
        return 0;
    llmq_batch_result_t r = {.index = index,
                             .ok = e->ok,
                             .prompt_tokens = e->prompt_tokens,
                             .completion_tokens = e->completion_tokens,
                             .cost_usd = e->cost_usd};
    if (r.ok) {
        r.body = e->body;
        r.body_size = e->body ? e->body_size : 0;
    } else {
        r.error_code = e->error_code ? e->error_code : "provider_error";
        r.error_message = e->error_message;
        r.error_status = e->error_status;
        r.error_retryable =
            e->has_retryable
                ? e->error_retryable
                : llmq_err_retryable(llmq_err_from_name(r.error_code));
        /*  A line that may succeed later is run again in realtime
            (if configured): not stored as its final result. */
        if (r.error_retryable && self->cfg.resubmit_failed &&
            b->rec.state != LLMQ_BATCH_CANCELLING)
            return 0;
    }
    s_put_result(self, b, &r, true, page->now_ms);
    return 0;
}

static void s_on_job_results(llmq_batch_t *self, s_job_t *j, llmq_msg_t *msg,
                             int64_t now_ms)
{
    s_batch_t *b = j->batch;
    zframe_t *payload = llmq_msg_payload(msg);
    s_job_page_t page = {self, j, now_ms};
    if (!payload ||
        llmq_payload_each_result(zframe_data(payload), zframe_size(payload),
                                 s_job_result_fn, &page, NULL, 0) < 0) {
        /*  A page we cannot read proves nothing, not even `final`: were it
            honoured, the job's items would look unanswered and run (and be
            paid for) again. Drop it; the fetch task times out and runs
            again. */
        llmq_log(NULL, LLMQ_LOG_WARN, "batch_job_results_dropped",
                 LLMQ_LOG_STR("job", j->row.id), LLMQ_LOG_END);
        return;
    }
    if (llmq_msg_final(msg)) {
        j->task = LLMQ_MSG_INVALID;
        s_job_finished(self, j, true, now_ms);
        s_batch_from_jobs(b, now_ms);
    } else
        j->task_sent_ms = now_ms; /* more pages coming: still alive */
    llmq_batch_flush(self);
}

int llmq_batch_on_job_msg(llmq_batch_t *self, llmq_msg_t *msg, int64_t now_ms)
{
    const char *id = llmq_msg_job(msg);
    s_job_t *j = id ? zhashx_lookup(self->jobs, id) : NULL;
    if (!j || j->row.state == LLMQ_JOB_DONE || j->row.state == LLMQ_JOB_FAILED)
        return 1;
    if (llmq_msg_type(msg) == LLMQ_MSG_JOB_STATUS)
        s_on_job_status(self, j, msg, now_ms);
    else if (llmq_msg_type(msg) == LLMQ_MSG_JOB_RESULTS) {
        if (j->row.state != LLMQ_JOB_FETCHING)
            return 1;
        s_on_job_results(self, j, msg, now_ms);
    } else
        return 1;
    return 0;
}

/*  ---- timed work --------------------------------------------------------- */

void llmq_batch_tick(llmq_batch_t *self, int64_t now_ms)
{
    for (s_batch_t *b = zhashx_first(self->batches); b;
         b = zhashx_next(self->batches)) {
        if (llmq_batch_state_terminal(b->rec.state))
            continue;
        /*  A window that passed: realtime work stops, what is left is
            answered deadline_exceeded. Provider jobs keep their own 24 h
            window and are not cut short. */
        if (b->rec.deadline_ms > 0 && now_ms >= b->rec.deadline_ms &&
            !b->expired && zlistx_size(b->jobs) == 0) {
            b->expired = true;
            b->rec.closed = true;
            b->dispatching = false;
            zlistx_purge(b->ready);
            b->dirty = true;
            s_check_done(self, b, now_ms);
        }
        /*  Provider mode still waiting for a batch_api pool. */
        if (b->rec.closed && streq(b->rec.mode, "provider") &&
            zlistx_size(b->jobs) == 0 && b->rec.total > 0 &&
            b->rec.state == LLMQ_BATCH_QUEUED)
            s_start(self, b, now_ms);
    }
    /*  Tasks never answered (worker died or the message was lost). */
    for (s_job_t *j = zhashx_first(self->jobs); j;
         j = zhashx_next(self->jobs)) {
        if (j->task == LLMQ_MSG_INVALID ||
            now_ms - j->task_sent_ms < self->cfg.task_timeout_ms)
            continue;
        if (j->task == LLMQ_MSG_JOB_SUBMIT &&
            j->row.state == LLMQ_JOB_SUBMITTING) {
            /*  The submit may have reached the provider: ask, never blindly
                resubmit. */
            j->row.state = LLMQ_JOB_LOOKUP;
            s_job_save(self, j, now_ms);
        }
        j->task = LLMQ_MSG_INVALID;
        j->next_ms = now_ms;
    }
    llmq_batch_flush(self);
}

void llmq_batch_stats(llmq_batch_t *self, llmq_batch_stats_t *stats)
{
    memset(stats, 0, sizeof *stats);
    for (s_batch_t *b = zhashx_first(self->batches); b;
         b = zhashx_next(self->batches)) {
        if (!llmq_batch_state_terminal(b->rec.state))
            stats->batches_active++;
        if (b->dispatching)
            stats->items_pending +=
                (int64_t)zlistx_size(b->ready) + (b->rec.total - b->scan_next);
        stats->items_in_flight += (int64_t)zhashx_size(b->in_flight);
    }
    for (s_job_t *j = zhashx_first(self->jobs); j;
         j = zhashx_next(self->jobs)) {
        if (!S_JOB_OVER(j))
            stats->jobs_active++;
        if (j->task != LLMQ_MSG_INVALID)
            stats->tasks_in_flight++;
    }
}

llmq_batch_state_t llmq_batch_normalise_state(const char *s)
{
    static const struct {
        const char *provider;
        llmq_batch_state_t state;
    } other[] = {{"canceling", LLMQ_BATCH_CANCELLING},
                 {"canceled", LLMQ_BATCH_CANCELLED},
                 {"ended", LLMQ_BATCH_COMPLETED},
                 {"pending", LLMQ_BATCH_QUEUED},
                 {"submitted", LLMQ_BATCH_QUEUED}};
    llmq_batch_state_t state = LLMQ_BATCH_IN_PROGRESS;
    if (!s || llmq_batch_state_parse(s, &state) == 0)
        return state;
    for (size_t i = 0; i < sizeof other / sizeof other[0]; i++)
        if (streq(s, other[i].provider))
            return other[i].state;
    return LLMQ_BATCH_IN_PROGRESS;
}

/*  ---- selftest ---------------------------------------------------------- */

#include "llmq_check.h"
#define S_CHECK(expr) LLMQ_CHECK(expr)

/*  The test's pool table: one batch_api pool for "gpt-batch". */
static bool s_test_pool_fn(const char *model, const char *pool, char *pool_out,
                           size_t pool_size, char *provider_out,
                           size_t provider_size, void *arg)
{
    const char *provider = arg;
    if (!streq(model, "gpt-batch") || (*pool && !streq(pool, "oa")))
        return false;
    snprintf(pool_out, pool_size, "oa");
    snprintf(provider_out, provider_size, "%s", provider);
    return true;
}

static bool s_test_serves_fn(const char *model, const char *pool, void *arg)
{
    (void)pool;
    return !arg || streq(model, (const char *)arg);
}

/*  Run one client message and return its first reply (the list keeps the
    rest for the caller to look at; it is purged on the next call). */
static llmq_msg_t *s_t_run(llmq_batch_t *m, zlist_t *replies, llmq_msg_t *msg,
                           int64_t now)
{
    llmq_msg_t *r;
    while ((r = zlist_pop(replies)))
        llmq_msg_destroy(&r);
    S_CHECK(llmq_batch_handle(m, msg, replies, now) == 0);
    llmq_msg_destroy(&msg);
    return zlist_first(replies);
}

static llmq_msg_t *s_t_open(llmq_batch_t *m, zlist_t *replies, const char *id,
                            const char *mode, const char *model,
                            const char *window, int64_t priority, int64_t now)
{
    llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_BATCH_OPEN);
    llmq_msg_set_batch(msg, id);
    llmq_msg_set_mode(msg, mode);
    llmq_msg_set_model(msg, model);
    if (window)
        llmq_msg_set_completion_window(msg, window);
    llmq_msg_set_priority(msg, priority);
    zframe_t *rid = zframe_new("client-1", 8);
    llmq_msg_set_routing_id(msg, rid);
    zframe_destroy(&rid);
    return s_t_run(m, replies, msg, now);
}

/*  A response or request body from JSON text. */
static zframe_t *s_t_json(const char *text)
{
    zframe_t *frame = llmq_value_from_json_text(text, strlen(text), NULL, 0);
    S_CHECK(frame);
    return frame;
}

static llmq_msg_t *s_t_add(llmq_batch_t *m, zlist_t *replies, const char *id,
                           int64_t seq, int64_t first, int64_t n, int64_t now)
{
    llmq_payload_t *p = llmq_payload_new();
    for (int64_t i = first; i < first + n; i++) {
        char cid[32], text[128];
        snprintf(cid, sizeof cid, "c%lld", (long long)i);
        snprintf(text, sizeof text,
                 "{\"max_tokens\":16,\"messages\":[{\"role\":\"user\","
                 "\"content\":\"question %lld\"}]}",
                 (long long)i);
        zframe_t *body = s_t_json(text);
        llmq_payload_add_item(p, cid, zframe_data(body), zframe_size(body));
        zframe_destroy(&body);
    }
    zframe_t *frame = llmq_payload_frame(p);
    llmq_payload_destroy(&p);
    llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_BATCH_ADD);
    llmq_msg_set_batch(msg, id);
    llmq_msg_set_seq(msg, seq);
    llmq_msg_set_payload(msg, &frame);
    return s_t_run(m, replies, msg, now);
}

static llmq_msg_t *s_t_simple(llmq_batch_t *m, zlist_t *replies,
                              llmq_msg_type_t type, const char *id, int64_t now)
{
    llmq_msg_t *msg = llmq_msg_new(type);
    llmq_msg_set_batch(msg, id);
    return s_t_run(m, replies, msg, now);
}

/*  A worker's answer to a dispatched item: ok for most, a permanent error
    for every 10th item. */
static llmq_msg_t *s_t_res(llmq_msg_t *req)
{
    const char *key = llmq_msg_id(req);
    const char *dot = strchr(key, '.');
    long long index = dot ? atoll(dot + 1) : -1;
    llmq_msg_t *res = llmq_msg_new(LLMQ_MSG_RES);
    llmq_msg_set_id(res, key);
    if (index % 10 == 9) {
        llmq_msg_set_failure(res, LLMQ_ERR_CONTEXT_LENGTH, 400, "too long");
        return res;
    }
    llmq_msg_set_ok(res, true);
    llmq_msg_set_usage_prompt_tokens(res, 10);
    llmq_msg_set_usage_completion_tokens(res, 5);
    llmq_msg_set_usage_cost_usd(res, 0.01);
    char text[48];
    snprintf(text, sizeof text, "{\"echo\":%lld}", index);
    zframe_t *frame = s_t_json(text);
    llmq_msg_set_payload(res, &frame);
    return res;
}

/*  One result of a page: the next in input order, a body or an error. */
typedef struct {
    int64_t after;   /* index expected next */
    int64_t *failed; /* failures seen */
} s_t_seen_t;

static int s_t_seen_fn(const llmq_result_item_t *e, void *arg)
{
    s_t_seen_t *page = arg;
    char want[32];
    snprintf(want, sizeof want, "c%lld", (long long)page->after);
    S_CHECK(e->custom_id && streq(e->custom_id, want));
    if (!e->ok) {
        S_CHECK(e->error_code);
        (*page->failed)++;
    } else
        S_CHECK(e->body);
    page->after++;
    return 0;
}

/*  Fetch every result with batch.get, following the cursor; check they come
    in input order. Returns how many were fetched; *final set when the
    broker said final. Counts failures in *failed. */
static int64_t s_t_get_all(llmq_batch_t *m, zlist_t *replies, const char *id,
                           bool *final, int64_t *failed, int64_t now)
{
    int64_t after = 0, seen = 0;
    *final = false;
    *failed = 0;
    for (int round = 0; round < 100000; round++) {
        llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_BATCH_GET);
        llmq_msg_set_batch(msg, id);
        llmq_msg_set_after(msg, after);
        llmq_msg_t *st = s_t_run(m, replies, msg, now);
        S_CHECK(st && llmq_msg_type(st) == LLMQ_MSG_BATCH_STATUS);
        llmq_msg_t *rs = zlist_next(replies);
        S_CHECK(rs && llmq_msg_type(rs) == LLMQ_MSG_BATCH_RESULTS);
        zframe_t *payload = llmq_msg_payload(rs);
        s_t_seen_t page = {after, failed};
        S_CHECK(llmq_payload_each_result(zframe_data(payload),
                                         zframe_size(payload), s_t_seen_fn,
                                         &page, NULL, 0) >= 0);
        int64_t n = page.after - after;
        after = page.after;
        seen += n;
        S_CHECK(llmq_msg_cursor(rs) == after);
        if (llmq_msg_final(rs)) {
            *final = true;
            break;
        }
        if (n == 0)
            break;
    }
    return seen;
}

/*  Answer a job task the way a worker does against a provider whose batch
    finished with every line ok except every 1000th (a permanent 400) and
    every 997th (a retryable 500). */
static void s_t_job_results(llmq_batch_t *m, llmq_msg_t *task, int64_t first,
                            int64_t count, int64_t page, bool final,
                            int64_t now)
{
    for (int64_t at = first; at < first + count; at += page) {
        int64_t n = at + page > first + count ? first + count - at : page;
        llmq_payload_t *p = llmq_payload_new();
        for (int64_t i = at; i < at + n; i++) {
            char cid[24], text[48];
            snprintf(cid, sizeof cid, "%lld", (long long)i);
            snprintf(text, sizeof text, "{\"echo\":%lld}", (long long)i);
            bool perm = i % 1000 == 999, transient = i % 997 == 996;
            zframe_t *body = s_t_json(text);
            llmq_result_item_t e = {.custom_id = cid,
                                    .ok = !perm && !transient,
                                    .body = zframe_data(body),
                                    .body_size = zframe_size(body),
                                    .error_code = perm ? "invalid_request"
                                                       : "provider_error",
                                    .error_message = "line failed",
                                    .error_status = perm ? 400 : 500,
                                    .error_retryable = !perm,
                                    .prompt_tokens = 10,
                                    .completion_tokens = 5,
                                    .cost_usd = 0.002};
            llmq_payload_add_result(p, &e);
            zframe_destroy(&body);
        }
        zframe_t *frame = llmq_payload_frame(p);
        llmq_payload_destroy(&p);
        llmq_msg_t *r = llmq_msg_new(LLMQ_MSG_JOB_RESULTS);
        llmq_msg_set_job(r, llmq_msg_job(task));
        llmq_msg_set_final(r, final && at + n >= first + count);
        llmq_msg_set_payload(r, &frame);
        S_CHECK(llmq_batch_on_job_msg(m, r, now) == 0);
        llmq_msg_destroy(&r);
    }
}

static llmq_msg_t *s_t_job_status(const char *job, const char *pb,
                                  const char *state, int64_t total)
{
    llmq_msg_t *r = llmq_msg_new(LLMQ_MSG_JOB_STATUS);
    llmq_msg_set_job(r, job);
    llmq_msg_set_state(r, state);
    if (pb)
        llmq_msg_set_provider_batch(r, pb);
    llmq_msg_set_counts_total(r, total);
    llmq_msg_set_counts_done(r, streq(state, "completed") ? total : 0);
    if (streq(state, "completed"))
        llmq_msg_set_output_file(r, "file-out");
    return r;
}

/*  Answer every cleanup task (job.cancel, mode cleanup) outstanding. */
static int s_t_cleanups(llmq_batch_t *m, int64_t now)
{
    int n = 0;
    llmq_msg_t *t;
    while ((t = llmq_batch_next_job_task(m, "oa", now))) {
        S_CHECK(llmq_msg_type(t) == LLMQ_MSG_JOB_CANCEL);
        S_CHECK(streq(llmq_msg_mode(t), "cleanup"));
        llmq_msg_t *st = llmq_msg_new(LLMQ_MSG_JOB_STATUS);
        llmq_msg_set_job(st, llmq_msg_job(t));
        llmq_msg_set_state(st, "completed");
        S_CHECK(llmq_batch_on_job_msg(m, st, now) == 0);
        llmq_msg_destroy(&st);
        llmq_msg_destroy(&t);
        n++;
    }
    return n;
}

static int s_t_count_jobs(const llmq_batch_job_t *job, void *arg)
{
    (void)job;
    (*(int *)arg)++;
    return 0;
}

/*  The state a batch-manager test carries from step to step. */
typedef struct {
    const char *path;        /* the database */
    bool verbose;            /* print numbers */
    llmq_batch_config_t cfg; /* the manager's configuration */
    llmq_batch_t *m;         /* the manager under test */
    zlist_t *replies;        /* the replies of the last client message */
    int64_t now;             /* the test's clock */
    char ids[3][65];         /* the provider test's job ids, in order */
    int64_t transient;       /* lines failing with a retryable error */
    int64_t perm;            /* lines failing for good */
} s_t_fx_t;

/*  The big provider batch's size. */
#define S_T_TOTAL 120000

/*  Starts a test at clock now on path with cfg (NULL: defaults). */
static void s_t_fx_init(s_t_fx_t *fx, const char *path, bool verbose,
                        const llmq_batch_config_t *cfg, int64_t now)
{
    memset(fx, 0, sizeof *fx);
    fx->path = path;
    fx->verbose = verbose;
    llmq_batch_config_defaults(&fx->cfg);
    if (cfg)
        fx->cfg = *cfg;
    fx->replies = zlist_new();
    fx->now = now;
    fx->m = llmq_batch_new(path, cfg, now);
    S_CHECK(fx->m);
}

/*  Ends a test: the manager (twice: destroy is idempotent) and replies. */
static void s_t_fx_fini(s_t_fx_t *fx)
{
    llmq_batch_destroy(&fx->m);
    llmq_batch_destroy(&fx->m);
    llmq_msg_t *r;
    while ((r = zlist_pop(fx->replies)))
        llmq_msg_destroy(&r);
    zlist_destroy(&fx->replies);
}

/*  A restart: the manager is destroyed and made again from the database
    with cfg (NULL: defaults) and, if provider is set, the pool table. */
static void s_t_restart(s_t_fx_t *fx, const llmq_batch_config_t *cfg,
                        const char *provider)
{
    llmq_batch_destroy(&fx->m);
    fx->m = llmq_batch_new(fx->path, cfg, fx->now);
    S_CHECK(fx->m);
    if (provider)
        llmq_batch_set_pool_fn(fx->m, s_test_pool_fn, (void *)provider);
}

/*  batch.open, one batch.add of n items, batch.close; the close's reply. */
static llmq_msg_t *s_t_batch(s_t_fx_t *fx, const char *id, const char *mode,
                             const char *model, const char *window,
                             int64_t priority, int64_t n)
{
    s_t_open(fx->m, fx->replies, id, mode, model, window, priority, fx->now);
    s_t_add(fx->m, fx->replies, id, 1, 0, n, fx->now);
    return s_t_simple(fx->m, fx->replies, LLMQ_MSG_BATCH_CLOSE, id, fx->now);
}

/*  batch.get of id: its status. */
static llmq_msg_t *s_t_get(s_t_fx_t *fx, const char *id)
{
    return s_t_simple(fx->m, fx->replies, LLMQ_MSG_BATCH_GET, id, fx->now);
}

/*  Answers a dispatched item with s_t_res; takes req. */
static void s_t_answer(s_t_fx_t *fx, llmq_msg_t **req)
{
    llmq_msg_t *res = s_t_res(*req);
    S_CHECK(llmq_batch_on_item_result(fx->m, llmq_msg_id(*req), res, fx->now) ==
            0);
    llmq_msg_destroy(&res);
    llmq_msg_destroy(req);
}

/*  Answers every item dispatched to a worker serving model; how many. */
static int64_t s_t_answer_all(s_t_fx_t *fx, const char *model)
{
    int64_t n = 0;
    llmq_msg_t *req;
    while ((req = llmq_batch_next_item(fx->m, s_test_serves_fn, (void *)model,
                                       fx->now))) {
        s_t_answer(fx, &req);
        n++;
    }
    return n;
}

/*  A job.status from the worker, which the manager takes (0). */
static void s_t_job_say(s_t_fx_t *fx, const char *job, const char *pb,
                        const char *state, int64_t total)
{
    llmq_msg_t *st = s_t_job_status(job, pb, state, total);
    S_CHECK(llmq_batch_on_job_msg(fx->m, st, fx->now) == 0);
    llmq_msg_destroy(&st);
}

/*  The next n job tasks of pool "oa" into tasks; each of type. */
static void s_t_tasks(s_t_fx_t *fx, llmq_msg_t **tasks, int n,
                      llmq_msg_type_t type)
{
    for (int i = 0; i < n; i++) {
        tasks[i] = llmq_batch_next_job_task(fx->m, "oa", fx->now);
        S_CHECK(tasks[i] && llmq_msg_type(tasks[i]) == type);
    }
}

/*  Realtime bad input: unknown batch, bad mode, bad window, bad items. */
static void s_tr_bad_input(s_t_fx_t *fx)
{
    llmq_batch_t *m = fx->m;
    int64_t now = fx->now;
    llmq_msg_t *r = s_t_get(fx, "nope");
    S_CHECK(llmq_msg_type(r) == LLMQ_MSG_ERROR &&
            streq(llmq_msg_code(r), "not_found"));
    r = s_t_open(m, fx->replies, "x", "fast", "gpt", NULL, 0, now);
    S_CHECK(streq(llmq_msg_code(r), "invalid_request"));
    r = s_t_open(m, fx->replies, "x", "auto", "gpt", "soon", 0, now);
    S_CHECK(streq(llmq_msg_code(r), "invalid_request"));
    S_CHECK(llmq_batch_handle(m, r, fx->replies, now) == -1); /* not batch.* */
}

/*  Two realtime batches of equal priority and one of higher, and one for
    a model no worker serves. */
static void s_tr_fill(s_t_fx_t *fx)
{
    llmq_batch_t *m = fx->m;
    zlist_t *replies = fx->replies;
    int64_t now = fx->now;
    llmq_msg_t *r =
        s_t_open(m, replies, "rt1", "realtime", "gpt", NULL, 0, now);
    S_CHECK(llmq_msg_type(r) == LLMQ_MSG_BATCH_ACK);
    S_CHECK(llmq_msg_routing_id(r) &&
            zframe_streq(llmq_msg_routing_id(r), "client-1"));
    r = s_t_open(m, replies, "rt1", "realtime", "gpt", NULL, 0, now);
    S_CHECK(llmq_msg_type(r) == LLMQ_MSG_BATCH_ACK); /* resend */
    r = s_t_open(m, replies, "rt1", "realtime", "other", NULL, 0, now);
    S_CHECK(llmq_msg_type(r) == LLMQ_MSG_ERROR); /* clash */
    r = s_t_add(m, replies, "rt1", 1, 0, 300, now);
    S_CHECK(llmq_msg_type(r) == LLMQ_MSG_BATCH_ACK);
    S_CHECK(llmq_msg_seq(r) == 1 && llmq_msg_accepted(r) == 300);
    r = s_t_add(m, replies, "rt1", 1, 0, 300, now); /* resend */
    S_CHECK(llmq_msg_accepted(r) == 300);
    r = s_t_add(m, replies, "rt1", 2, 300, 200, now);
    S_CHECK(llmq_msg_accepted(r) == 200);
    /*  A malformed add is refused whole. */
    llmq_msg_t *bad = llmq_msg_new(LLMQ_MSG_BATCH_ADD);
    llmq_msg_set_batch(bad, "rt1");
    llmq_msg_set_seq(bad, 3);
    llmq_msg_set_payload_mem(bad,
                             "\x91\x81\xa4"
                             "body"
                             "\x01",
                             8);
    r = s_t_run(m, replies, bad, now);
    S_CHECK(llmq_msg_type(r) == LLMQ_MSG_ERROR &&
            streq(llmq_msg_code(r), "invalid_request"));
    r = s_t_simple(m, replies, LLMQ_MSG_BATCH_CLOSE, "rt1", now);
    S_CHECK(llmq_msg_type(r) == LLMQ_MSG_BATCH_ACK && llmq_msg_count(r) == 500);
    r = s_t_add(m, replies, "rt1", 4, 500, 1, now);
    S_CHECK(llmq_msg_type(r) == LLMQ_MSG_ERROR); /* closed */

    s_t_batch(fx, "rt2", "realtime", "gpt", NULL, 0, 100);
    s_t_batch(fx, "hi", "realtime", "gpt", NULL, 9, 3);
    s_t_open(m, replies, "other", "realtime", "llama", NULL, 20, now);
    s_t_add(m, replies, "other", 1, 0, 2, now);
    S_CHECK(llmq_batch_has_items(m));
}

/*  A worker serving only "gpt": the high-priority batch first, then rt1
    and rt2 alternate; "llama" items never go to it. Returns the 103
    requests in flight (the caller's). */
static zlistx_t *s_tr_dispatch(s_t_fx_t *fx)
{
    zlistx_t *reqs = zlistx_new();
    for (int i = 0; i < 3; i++) {
        llmq_msg_t *req =
            llmq_batch_next_item(fx->m, s_test_serves_fn, "gpt", fx->now);
        S_CHECK(req && streq(llmq_msg_model(req), "gpt"));
        S_CHECK(llmq_msg_priority(req) == 9);
        zlistx_add_end(reqs, req);
    }
    char prev = 0;
    int alternations = 0;
    for (int i = 0; i < 100; i++) {
        llmq_msg_t *req =
            llmq_batch_next_item(fx->m, s_test_serves_fn, "gpt", fx->now);
        S_CHECK(req && llmq_msg_payload(req));
        char which = strncmp(llmq_msg_id(req), "b2.", 3) == 0 ? 'a' : 'b';
        if (prev && which != prev)
            alternations++;
        prev = which;
        zlistx_add_end(reqs, req);
    }
    S_CHECK(alternations == 99);
    return reqs;
}

/*  Answer all in flight (takes reqs); one item is given back and
    re-dispatched. Then a few more of rt1 go out and the manager "crashes"
    with them in flight. */
static void s_tr_answer_crash(s_t_fx_t *fx, zlistx_t *reqs)
{
    llmq_batch_t *m = fx->m;
    int64_t now = fx->now;
    llmq_msg_t *req = zlistx_first(reqs);
    llmq_batch_item_return(m, llmq_msg_id(req), now);
    llmq_msg_t *again = llmq_batch_next_item(m, s_test_serves_fn, "gpt", now);
    S_CHECK(again && streq(llmq_msg_id(again), llmq_msg_id(req)));
    llmq_msg_destroy(&again);
    for (req = zlistx_first(reqs); req; req = zlistx_next(reqs)) {
        llmq_msg_t *res = s_t_res(req);
        S_CHECK(llmq_batch_on_item_result(m, llmq_msg_id(req), res, now) == 0);
        /*  A duplicate answer is dropped. */
        S_CHECK(llmq_batch_on_item_result(m, llmq_msg_id(req), res, now) == 1);
        llmq_msg_destroy(&res);
        llmq_msg_destroy(&req);
    }
    zlistx_purge(reqs);
    S_CHECK(llmq_batch_on_item_result(m, "b99.1", NULL, now) == 1);
    S_CHECK(llmq_batch_on_item_result(m, "junk", NULL, now) == 1);

    for (int i = 0; i < 5; i++)
        zlistx_add_end(reqs,
                       llmq_batch_next_item(m, s_test_serves_fn, "gpt", now));
    llmq_batch_destroy(&fx->m);
    for (req = zlistx_first(reqs); req; req = zlistx_next(reqs))
        llmq_msg_destroy(&req);
    zlistx_destroy(&reqs);
}

/*  Restart: everything not answered is dispatched again; then results
    page by page with a small limit. */
static void s_tr_restart(s_t_fx_t *fx)
{
    fx->m = llmq_batch_new(fx->path, NULL, fx->now);
    S_CHECK(fx->m);
    int64_t served = s_t_answer_all(fx, "gpt");
    S_CHECK(served == 500 + 100 + 3 - 103 + 0); /* 103 answered before */
    bool final = false;
    int64_t failed = 0;
    S_CHECK(s_t_get_all(fx->m, fx->replies, "rt1", &final, &failed, fx->now) ==
            500);
    S_CHECK(final && failed == 50);
    llmq_msg_t *r = s_t_get(fx, "rt2");
    S_CHECK(streq(llmq_msg_state(r), "completed"));
    S_CHECK(llmq_msg_counts_total(r) == 100 && llmq_msg_counts_done(r) == 100);
    S_CHECK(llmq_msg_counts_failed(r) == 10);
    S_CHECK(llmq_msg_usage_prompt_tokens(r) == 900);
    S_CHECK(llmq_msg_usage_cost_usd(r) > 0.899 &&
            llmq_msg_usage_cost_usd(r) < 0.901); /* no discount */
    fx->cfg.results_max_items = 7;
    s_t_restart(fx, &fx->cfg, NULL);
    S_CHECK(s_t_get_all(fx->m, fx->replies, "rt1", &final, &failed, fx->now) ==
            500);
    S_CHECK(final);
}

/*  Cancel with an item in flight: cancelling until it is answered, then
    cancelled; the rest answered `cancelled`. Cancel reaches the llama
    batch, which no worker serves. */
static void s_tr_cancel(s_t_fx_t *fx)
{
    llmq_batch_t *m = fx->m;
    s_t_open(m, fx->replies, "c1", "realtime", "gpt", NULL, 0, fx->now);
    s_t_add(m, fx->replies, "c1", 1, 0, 50, fx->now);
    llmq_msg_t *req = llmq_batch_next_item(m, s_test_serves_fn, "gpt", fx->now);
    S_CHECK(req && strstr(llmq_msg_id(req), ".0"));
    llmq_msg_t *r =
        s_t_simple(m, fx->replies, LLMQ_MSG_BATCH_CANCEL, "c1", fx->now);
    S_CHECK(llmq_msg_type(r) == LLMQ_MSG_BATCH_STATUS);
    S_CHECK(streq(llmq_msg_state(r), "cancelling"));
    S_CHECK(llmq_batch_next_item(m, s_test_serves_fn, "gpt", fx->now) == NULL);
    s_t_answer(fx, &req);
    r = s_t_get(fx, "c1");
    S_CHECK(streq(llmq_msg_state(r), "cancelled"));
    S_CHECK(llmq_msg_counts_done(r) == 50 && llmq_msg_counts_failed(r) == 49);
    bool final = false;
    int64_t failed = 0;
    S_CHECK(s_t_get_all(m, fx->replies, "c1", &final, &failed, fx->now) == 50);
    S_CHECK(final && failed == 49);
}

/*  Expiry: a 1-minute window passes with items left; the item in flight
    comes back after the deadline: still stored. */
static void s_tr_expiry(s_t_fx_t *fx)
{
    llmq_batch_t *m = fx->m;
    s_t_open(m, fx->replies, "ex", "realtime", "gpt", "1m", 0, fx->now);
    s_t_add(m, fx->replies, "ex", 1, 0, 10, fx->now);
    llmq_msg_t *req = llmq_batch_next_item(m, s_test_serves_fn, "gpt", fx->now);
    llmq_batch_tick(m, fx->now + 59000);
    llmq_msg_t *r = s_t_get(fx, "ex");
    S_CHECK(streq(llmq_msg_state(r), "in_progress"));
    llmq_batch_tick(m, fx->now + 61000);
    s_t_answer(fx, &req);
    r = s_t_get(fx, "ex");
    S_CHECK(streq(llmq_msg_state(r), "expired"));
    S_CHECK(llmq_msg_counts_done(r) == 10 && llmq_msg_counts_failed(r) == 9);
}

/*  A retryable failure gets more rounds (3 in all), behind the other
    items; then it is the item's result. */
static void s_tr_retry(s_t_fx_t *fx)
{
    s_t_batch(fx, "rtry", "realtime", "gpt", NULL, 0, 3);
    int rounds = 0;
    llmq_msg_t *req;
    while (
        (req = llmq_batch_next_item(fx->m, s_test_serves_fn, "gpt", fx->now))) {
        bool first = strstr(llmq_msg_id(req), ".0") != NULL &&
                     *(strstr(llmq_msg_id(req), ".0") + 2) == 0;
        if (!first) {
            s_t_answer(fx, &req);
            continue;
        }
        llmq_msg_t *res = llmq_msg_new(LLMQ_MSG_RES);
        llmq_msg_set_id(res, llmq_msg_id(req));
        llmq_msg_set_failure(res, LLMQ_ERR_PROVIDER_ERROR, 503, "busy");
        rounds++;
        S_CHECK(llmq_batch_on_item_result(fx->m, llmq_msg_id(req), res,
                                          fx->now) == (rounds < 3 ? 2 : 0));
        llmq_msg_destroy(&res);
        llmq_msg_destroy(&req);
    }
    S_CHECK(rounds == 3);
    llmq_msg_t *r = s_t_get(fx, "rtry");
    S_CHECK(streq(llmq_msg_state(r), "completed"));
    S_CHECK(llmq_msg_counts_done(r) == 3 && llmq_msg_counts_failed(r) == 1);

    llmq_batch_stats_t stats;
    llmq_batch_stats(fx->m, &stats);
    S_CHECK(stats.items_in_flight == 0);
    S_CHECK(stats.batches_active == 1); /* "other": nobody serves llama */
}

/*  A larger realtime batch end to end through the manager: batch.add,
    dispatch, results, batch.get. Numbers printed, never asserted. 20,000
    items when numbers are wanted; fewer otherwise (the suite also runs
    this under valgrind). */
static void s_tr_bulk(s_t_fx_t *fx)
{
    bool numbers = fx->verbose || getenv("LLMQ_BENCH");
    const int64_t bulk = numbers ? 20000 : 2000;
    int64_t t0 = zclock_usecs();
    s_t_open(fx->m, fx->replies, "bulk", "realtime", "gpt", NULL, 0, fx->now);
    for (int64_t seq = 0; seq < bulk / 1000; seq++)
        s_t_add(fx->m, fx->replies, "bulk", seq, seq * 1000, 1000, fx->now);
    s_t_simple(fx->m, fx->replies, LLMQ_MSG_BATCH_CLOSE, "bulk", fx->now);
    int64_t t1 = zclock_usecs();
    int64_t answered = s_t_answer_all(fx, "gpt");
    llmq_batch_flush(fx->m);
    int64_t t2 = zclock_usecs();
    S_CHECK(answered == bulk);
    bool final = false;
    int64_t failed = 0;
    S_CHECK(s_t_get_all(fx->m, fx->replies, "bulk", &final, &failed, fx->now) ==
            bulk);
    int64_t t3 = zclock_usecs();
    S_CHECK(final && failed == bulk / 10);
    if (numbers)
        printf("\n   manager, %lld items: batch.add %.0f items/s, dispatch+"
               "result %.0f items/s, batch.get %.0f results/s\n   ",
               (long long)bulk, bulk * 1e6 / (double)(t1 - t0 + 1),
               bulk * 1e6 / (double)(t2 - t1 + 1),
               bulk * 1e6 / (double)(t3 - t2 + 1));
}

static void s_test_realtime(const char *path, bool verbose)
{
    s_t_fx_t fx;
    s_t_fx_init(&fx, path, verbose, NULL, 1000000);
    s_tr_bad_input(&fx);
    s_tr_fill(&fx);
    s_tr_answer_crash(&fx, s_tr_dispatch(&fx));
    s_tr_restart(&fx);
    s_tr_cancel(&fx);
    s_tr_expiry(&fx);
    s_tr_retry(&fx);
    s_tr_bulk(&fx);
    s_t_fx_fini(&fx);
    if (verbose)
        printf("realtime ok; ");
}

/*  Auto below the threshold, with a short window, or for a model no
    batch_api pool serves: realtime. */
static void s_tp_auto_realtime(s_t_fx_t *fx)
{
    const char *ids[] = {"a-small", "a-hurry", "a-nopool"};
    const char *models[] = {"gpt-batch", "gpt-batch", "gpt"};
    const char *windows[] = {NULL, "1h", NULL};
    const int64_t counts[] = {999, 1000, 1000};
    for (int i = 0; i < 3; i++) {
        s_t_batch(fx, ids[i], "auto", models[i], windows[i], 0, counts[i]);
        llmq_msg_t *r = s_t_get(fx, ids[i]);
        S_CHECK(streq(llmq_msg_mode(r), "realtime"));
    }
    llmq_msg_t *r = NULL;
    for (int i = 0; i < 3; i++)
        r = s_t_simple(fx->m, fx->replies, LLMQ_MSG_BATCH_CANCEL, ids[i],
                       fx->now);
    S_CHECK(streq(llmq_msg_state(r), "cancelled"));
}

/*  120,000 items in auto mode with a 24 h window: provider mode, three
    OpenAI jobs of at most 50,000. */
static void s_tp_big(s_t_fx_t *fx)
{
    llmq_batch_t *m = fx->m;
    llmq_msg_t *r =
        s_t_open(m, fx->replies, "big", "auto", "gpt-batch", "24h", 0, fx->now);
    S_CHECK(llmq_msg_type(r) == LLMQ_MSG_BATCH_ACK);
    for (int64_t seq = 0; seq < 12; seq++) {
        r = s_t_add(m, fx->replies, "big", seq, seq * 10000, 10000, fx->now);
        S_CHECK(llmq_msg_accepted(r) == 10000);
    }
    r = s_t_simple(m, fx->replies, LLMQ_MSG_BATCH_CLOSE, "big", fx->now);
    S_CHECK(llmq_msg_count(r) == S_T_TOTAL);
    r = s_t_get(fx, "big");
    S_CHECK(streq(llmq_msg_mode(r), "provider"));
    S_CHECK(streq(llmq_msg_state(r), "queued"));
    S_CHECK(llmq_batch_next_item(m, s_test_serves_fn, "gpt-batch", fx->now) ==
            NULL);
    S_CHECK(llmq_batch_next_job_task(m, "elsewhere", fx->now) == NULL);
}

/*  First task: job.submit of items 0..49999, recorded `submitting` before
    we see it (a second connection reads the file). A task the broker
    could not send (no worker of the pool left) is given back: a submit
    goes back to pending, as if never made. Keeps the job in ids[0]. */
static void s_tp_first_submit(s_t_fx_t *fx)
{
    llmq_batch_t *m = fx->m;
    llmq_msg_t *t1 = llmq_batch_next_job_task(m, NULL, fx->now); /* any pool */
    S_CHECK(t1 && llmq_msg_type(t1) == LLMQ_MSG_JOB_SUBMIT);
    S_CHECK(streq(llmq_msg_pool(t1), "oa"));
    char first_job[65];
    snprintf(first_job, sizeof first_job, "%s", llmq_msg_job(t1));
    llmq_batch_task_unsent(m, t1, fx->now);
    llmq_msg_destroy(&t1);
    /*  Given back for later: the other jobs come first now. */
    int others = 0;
    while ((t1 = llmq_batch_next_job_task(m, "oa", fx->now))) {
        S_CHECK(!streq(llmq_msg_job(t1), first_job));
        llmq_batch_task_unsent(m, t1, fx->now);
        llmq_msg_destroy(&t1);
        others++;
    }
    S_CHECK(others == 2);
    fx->now += fx->cfg.poll_interval_ms;
    t1 = llmq_batch_next_job_task(m, "oa", fx->now);
    S_CHECK(t1 && llmq_msg_type(t1) == LLMQ_MSG_JOB_SUBMIT);
    S_CHECK(streq(llmq_msg_job(t1), first_job));
    S_CHECK(streq(llmq_msg_model(t1), "gpt-batch"));
    S_CHECK(streq(llmq_msg_completion_window(t1), "24h"));
    S_CHECK(llmq_msg_count(t1) == 50000);
    zframe_t *payload = llmq_msg_payload(t1);
    S_CHECK(llmq_value_each_item(zframe_data(payload), zframe_size(payload),
                                 NULL, NULL, NULL, 0) == 50000);
    llmq_batch_store_t *peek = llmq_batch_store_new(fx->path);
    llmq_batch_job_t row;
    S_CHECK(llmq_batch_store_job_get(peek, llmq_msg_job(t1), &row) == 0);
    S_CHECK(row.state == LLMQ_JOB_SUBMITTING && row.attempts == 1);
    S_CHECK(row.first == 0 && row.count == 50000);
    int jobs = 0;
    llmq_batch_store_job_each(peek, row.bid, s_t_count_jobs, &jobs);
    S_CHECK(jobs == 3);
    llmq_batch_store_destroy(&peek);
    snprintf(fx->ids[0], sizeof fx->ids[0], "%s", llmq_msg_job(t1));
    llmq_msg_destroy(&t1);
}

/*  The next task is a lookup of job (job.poll with no provider batch). */
static void s_tp_lookup(s_t_fx_t *fx, const char *job, int64_t count)
{
    llmq_msg_t *t = llmq_batch_next_job_task(fx->m, "oa", fx->now);
    S_CHECK(t && llmq_msg_type(t) == LLMQ_MSG_JOB_POLL);
    S_CHECK(streq(llmq_msg_job(t), job));
    S_CHECK(streq(llmq_msg_provider_batch(t), ""));
    S_CHECK(count < 0 || llmq_msg_count(t) == count);
    llmq_msg_destroy(&t);
}

/*  Crash before the worker answers. On restart the job is looked up,
    never resubmitted blindly. Not found at the provider, but the first
    submit may still be uploading: no resubmission within the grace
    period, only another lookup later; past it, not found is proof: submit
    again. Returns the three submits (the caller's), job 1 first. */
static zlistx_t *s_tp_crash_submitting(s_t_fx_t *fx)
{
    const char *job1 = fx->ids[0];
    s_t_restart(fx, &fx->cfg, "openai");
    s_tp_lookup(fx, job1, 50000);
    llmq_msg_t *st = llmq_msg_new(LLMQ_MSG_JOB_STATUS);
    llmq_msg_set_job(st, job1);
    llmq_msg_set_state(st, "failed");
    llmq_msg_set_code(st, "x"); /* top-level noise is ignored */
    llmq_msg_set_error_code(st, "not_found");
    S_CHECK(llmq_batch_on_job_msg(fx->m, st, fx->now) == 0);
    zlistx_t *tasks = zlistx_new();
    llmq_msg_t *t;
    while ((t = llmq_batch_next_job_task(fx->m, "oa", fx->now))) {
        /*  The other jobs go ahead; job 1 is not submitted again. */
        S_CHECK(llmq_msg_type(t) == LLMQ_MSG_JOB_SUBMIT);
        S_CHECK(!streq(llmq_msg_job(t), job1));
        zlistx_add_end(tasks, t);
    }
    S_CHECK(zlistx_size(tasks) == 2);
    fx->now += fx->cfg.poll_interval_ms;
    s_tp_lookup(fx, job1, -1);
    fx->now += fx->cfg.submit_grace_ms;
    S_CHECK(llmq_batch_on_job_msg(fx->m, st, fx->now) == 0);
    llmq_msg_destroy(&st);
    t = llmq_batch_next_job_task(fx->m, "oa", fx->now);
    S_CHECK(t && llmq_msg_type(t) == LLMQ_MSG_JOB_SUBMIT);
    S_CHECK(streq(llmq_msg_job(t), job1));
    zlistx_add_start(tasks, t);
    S_CHECK(llmq_batch_next_job_task(fx->m, "oa", fx->now) == NULL);
    S_CHECK(zlistx_size(tasks) == 3);
    return tasks;
}

/*  The worker submits the three jobs (takes tasks): provider batches
    batch_A, _B, _C, validating; their ids kept in fx->ids. */
static void s_tp_submitted(s_t_fx_t *fx, zlistx_t *tasks)
{
    static const char *pbs[] = {"batch_A", "batch_B", "batch_C"};
    char job1[65];
    snprintf(job1, sizeof job1, "%s", fx->ids[0]);
    int n = 0;
    for (llmq_msg_t *t = zlistx_first(tasks); t; t = zlistx_next(tasks), n++) {
        S_CHECK(llmq_msg_type(t) == LLMQ_MSG_JOB_SUBMIT);
        S_CHECK(llmq_msg_count(t) == (n < 2 ? 50000 : 20000));
        snprintf(fx->ids[n], sizeof fx->ids[n], "%s", llmq_msg_job(t));
        s_t_job_say(fx, fx->ids[n], pbs[n], "validating", 0);
        llmq_msg_destroy(&t);
    }
    zlistx_destroy(&tasks);
    S_CHECK(streq(fx->ids[0], job1));
    llmq_msg_t *r = s_t_get(fx, "big");
    S_CHECK(streq(llmq_msg_state(r), "in_progress"));
    /*  Nothing to do until the poll interval passes. */
    S_CHECK(llmq_batch_next_job_task(fx->m, "oa", fx->now + 10) == NULL);
}

/*  Crash again while running: the provider ids survive; restart polls
    them at once; all three completed: finalizing. */
static void s_tp_crash_running(s_t_fx_t *fx)
{
    fx->now += 5000;
    s_t_restart(fx, &fx->cfg, "openai");
    llmq_msg_t *polls[3];
    s_t_tasks(fx, polls, 3, LLMQ_MSG_JOB_POLL);
    for (int round = 0; round < 3; round++) {
        llmq_msg_t *t = polls[round];
        const char *pb = llmq_msg_provider_batch(t);
        S_CHECK(streq(pb, "batch_A") || streq(pb, "batch_B") ||
                streq(pb, "batch_C"));
        s_t_job_say(fx, llmq_msg_job(t), pb, "completed",
                    streq(pb, "batch_C") ? 20000 : 50000);
        llmq_msg_destroy(&t);
    }
    llmq_msg_t *r = s_t_get(fx, "big");
    S_CHECK(streq(llmq_msg_state(r), "finalizing"));
}

/*  Fetch: results in pages of 5000; garbage pages are dropped, `final`
    included: nothing settles. Then a crash after part of the first job's
    results. */
static void s_tp_fetch_garbage(s_t_fx_t *fx)
{
    llmq_msg_t *t = llmq_batch_next_job_task(fx->m, "oa", fx->now);
    S_CHECK(t && llmq_msg_type(t) == LLMQ_MSG_JOB_FETCH);
    S_CHECK(streq(llmq_msg_output_file(t), "file-out"));
    S_CHECK(streq(llmq_msg_job(t), fx->ids[0]));
    llmq_msg_t *junk = llmq_msg_new(LLMQ_MSG_JOB_RESULTS);
    llmq_msg_set_job(junk, fx->ids[0]);
    llmq_msg_set_final(junk, true);
    llmq_msg_set_payload_mem(junk, "\xc1\x00", 2);
    llmq_batch_on_job_msg(fx->m, junk, fx->now);
    llmq_msg_set_payload_mem(junk, "\x92\x01", 2); /* truncated */
    llmq_batch_on_job_msg(fx->m, junk, fx->now);
    /*  Readable, but ids that are not this job's: nothing stored. */
    llmq_msg_set_final(junk, false);
    llmq_msg_set_payload_mem(junk,
                             "\x91\x81\xa9"
                             "custom_id\xa3"
                             "abc",
                             16);
    llmq_batch_on_job_msg(fx->m, junk, fx->now);
    llmq_msg_destroy(&junk);
    llmq_msg_t *r = s_t_get(fx, "big");
    S_CHECK(llmq_msg_counts_done(r) == 0);
    s_t_job_results(fx->m, t, 0, 30000, 5000, false, fx->now);
    llmq_msg_destroy(&t);
}

/*  Job 1 ended, jobs 2 and 3 still run at the provider: the realtime
    retries take job 1's lines only (given back here). */
static void s_tp_retries_of_job1(s_t_fx_t *fx)
{
    zlistx_t *taken = zlistx_new();
    llmq_msg_t *rq;
    while ((rq = llmq_batch_next_item(fx->m, s_test_serves_fn, "gpt-batch",
                                      fx->now))) {
        const char *dot = strchr(llmq_msg_id(rq), '.');
        S_CHECK(atoll(dot + 1) < 50000);
        zlistx_add_end(taken, rq);
    }
    int64_t want = 0;
    for (int64_t i = 0; i < 50000; i++)
        want += i % 997 == 996 && i % 1000 != 999;
    S_CHECK((int64_t)zlistx_size(taken) == want);
    while ((rq = zlistx_detach(taken, NULL))) {
        llmq_batch_item_return(fx->m, llmq_msg_id(rq), fx->now);
        llmq_msg_destroy(&rq);
    }
    zlistx_destroy(&taken);
}

/*  After the crash a re-fetch stores nothing twice; results arrive in any
    order within a job. Provider files are deleted only after the results
    are stored. */
static void s_tp_refetch(s_t_fx_t *fx)
{
    s_t_restart(fx, &fx->cfg, "openai");
    llmq_msg_t *polls[3];
    s_t_tasks(fx, polls, 3, LLMQ_MSG_JOB_FETCH);
    for (int round = 0; round < 3; round++) {
        llmq_msg_t *t = polls[round];
        int64_t first = streq(llmq_msg_job(t), fx->ids[0])   ? 0
                        : streq(llmq_msg_job(t), fx->ids[1]) ? 50000
                                                             : 100000;
        s_t_job_results(fx->m, t, first, first == 100000 ? 20000 : 50000, 5000,
                        true, fx->now);
        if (round == 0) {
            S_CHECK(first == 0);
            s_tp_retries_of_job1(fx);
        }
        llmq_msg_destroy(&t);
    }
    S_CHECK(s_t_cleanups(fx->m, fx->now) == 3);
    S_CHECK(llmq_batch_next_job_task(fx->m, "oa", fx->now + 100000) == NULL);
}

/*  Transient failures (every 997th) run again in realtime; then the batch
    is complete: provider lines at half price, realtime retries at full
    price. */
static void s_tp_transient(s_t_fx_t *fx)
{
    llmq_msg_t *r = s_t_get(fx, "big");
    for (int64_t i = 0; i < S_T_TOTAL; i++) {
        if (i % 1000 == 999)
            fx->perm++;
        else if (i % 997 == 996)
            fx->transient++;
    }
    S_CHECK(llmq_msg_counts_done(r) == S_T_TOTAL - fx->transient);
    S_CHECK(llmq_msg_counts_failed(r) == fx->perm);
    S_CHECK(streq(llmq_msg_state(r), "in_progress"));
    int64_t served = 0;
    llmq_msg_t *req;
    while ((req = llmq_batch_next_item(fx->m, s_test_serves_fn, "gpt-batch",
                                       fx->now))) {
        const char *dot = strchr(llmq_msg_id(req), '.');
        S_CHECK(atoll(dot + 1) % 997 == 996 && atoll(dot + 1) % 1000 != 999);
        llmq_msg_t *res = llmq_msg_new(LLMQ_MSG_RES);
        llmq_msg_set_id(res, llmq_msg_id(req));
        llmq_msg_set_ok(res, true);
        llmq_msg_set_usage_cost_usd(res, 0.002);
        llmq_msg_set_payload_mem(res, "\x80", 1);
        S_CHECK(llmq_batch_on_item_result(fx->m, llmq_msg_id(req), res,
                                          fx->now) == 0);
        llmq_msg_destroy(&res);
        llmq_msg_destroy(&req);
        served++;
    }
    S_CHECK(served == fx->transient);
    bool final = false;
    int64_t failed = 0;
    S_CHECK(s_t_get_all(fx->m, fx->replies, "big", &final, &failed, fx->now) ==
            S_T_TOTAL);
    S_CHECK(final && failed == fx->perm);
    r = s_t_get(fx, "big");
    S_CHECK(streq(llmq_msg_state(r), "completed"));
    double want = (double)(S_T_TOTAL - fx->transient) * 0.001 +
                  (double)fx->transient * 0.002;
    S_CHECK(llmq_msg_usage_cost_usd(r) > want - 1e-6 &&
            llmq_msg_usage_cost_usd(r) < want + 1e-6);
}

/*  Anthropic limits: 120,000 items -> 2 jobs (100,000 + 20,000). A submit
    timeout turns into a lookup. Returns the two submits in a1, a2. */
static void s_tp_anthropic(s_t_fx_t *fx, llmq_msg_t **a1, llmq_msg_t **a2)
{
    llmq_batch_t *m = fx->m;
    int64_t later = fx->now + fx->cfg.task_timeout_ms + 1;
    llmq_batch_set_pool_fn(m, s_test_pool_fn, "anthropic");
    s_t_open(m, fx->replies, "anth", "provider", "gpt-batch", NULL, 0, fx->now);
    for (int64_t seq = 0; seq < 12; seq++)
        s_t_add(m, fx->replies, "anth", seq, seq * 10000, 10000, fx->now);
    s_t_simple(m, fx->replies, LLMQ_MSG_BATCH_CLOSE, "anth", fx->now);
    *a1 = llmq_batch_next_job_task(m, "oa", fx->now);
    *a2 = llmq_batch_next_job_task(m, "oa", fx->now);
    S_CHECK(*a1 && *a2 && llmq_msg_count(*a1) == 100000 &&
            llmq_msg_count(*a2) == 20000);
    S_CHECK(llmq_batch_next_job_task(m, "oa", fx->now) == NULL);
    s_t_job_say(fx, llmq_msg_job(*a1), "msgbatch_1", "in_progress", 0);
    llmq_batch_tick(m, later);
    llmq_msg_t *t = llmq_batch_next_job_task(m, "oa", later);
    S_CHECK(t && llmq_msg_type(t) == LLMQ_MSG_JOB_POLL);
    if (streq(llmq_msg_job(t), llmq_msg_job(*a1))) {
        llmq_msg_destroy(&t);
        t = llmq_batch_next_job_task(m, "oa", later);
    }
    S_CHECK(t && streq(llmq_msg_job(t), llmq_msg_job(*a2)));
    S_CHECK(streq(llmq_msg_provider_batch(t), "")); /* lookup */
    s_t_job_say(fx, llmq_msg_job(*a2), "msgbatch_2", "in_progress", 0);
    llmq_msg_destroy(&t);
    fx->now += fx->cfg.task_timeout_ms + 2;
    /*  Drain any poll left outstanding. */
    llmq_batch_tick(m, fx->now + fx->cfg.task_timeout_ms + 1);
    fx->now += fx->cfg.task_timeout_ms + 2;
}

/*  The anthropic fetch after a cancel: the first job (a1) got 10 lines done
    before it; the second none (an empty final page). */
static void s_tp_anthropic_fetch(s_t_fx_t *fx, const llmq_msg_t *a1)
{
    llmq_msg_t *polls[2];
    s_t_tasks(fx, polls, 2, LLMQ_MSG_JOB_FETCH);
    for (int round = 0; round < 2; round++) {
        llmq_msg_t *t = polls[round];
        bool first_job = streq(llmq_msg_job(t), llmq_msg_job(a1));
        s_t_job_results(fx->m, t, first_job ? 0 : 100000, first_job ? 10 : 0,
                        5000, true, fx->now);
        if (!first_job) {
            llmq_msg_t *fin = llmq_msg_new(LLMQ_MSG_JOB_RESULTS);
            llmq_msg_set_job(fin, llmq_msg_job(t));
            llmq_msg_set_final(fin, true);
            llmq_msg_set_payload_mem(fin, "\x90", 1);
            S_CHECK(llmq_batch_on_job_msg(fx->m, fin, fx->now) == 0);
            llmq_msg_destroy(&fin);
        }
        llmq_msg_destroy(&t);
    }
}

/*  Cancel reaches the provider: both jobs cancelled there, their lines
    fetched, files cleaned up. A late message for a finished job is
    dropped. */
static void s_tp_anthropic_cancel(s_t_fx_t *fx)
{
    llmq_msg_t *a1, *a2;
    s_tp_anthropic(fx, &a1, &a2);
    llmq_msg_t *r =
        s_t_simple(fx->m, fx->replies, LLMQ_MSG_BATCH_CANCEL, "anth", fx->now);
    S_CHECK(streq(llmq_msg_state(r), "cancelling"));
    llmq_msg_t *polls[2];
    s_t_tasks(fx, polls, 2, LLMQ_MSG_JOB_CANCEL);
    for (int round = 0; round < 2; round++) {
        llmq_msg_t *t = polls[round];
        s_t_job_say(fx, llmq_msg_job(t), llmq_msg_provider_batch(t),
                    "cancelled", 0);
        llmq_msg_destroy(&t);
    }
    s_tp_anthropic_fetch(fx, a1);
    llmq_msg_destroy(&a1);
    llmq_msg_destroy(&a2);
    S_CHECK(s_t_cleanups(fx->m, fx->now) == 2);
    r = s_t_get(fx, "anth");
    S_CHECK(streq(llmq_msg_state(r), "cancelled"));
    S_CHECK(llmq_msg_counts_done(r) == S_T_TOTAL);
    S_CHECK(llmq_msg_counts_failed(r) == S_T_TOTAL - 10);

    llmq_msg_t *st = s_t_job_status(fx->ids[0], "batch_A", "completed", 1);
    S_CHECK(llmq_batch_on_job_msg(fx->m, st, fx->now) == 1);
    llmq_msg_destroy(&st);
}

static void s_test_provider(const char *path, bool verbose)
{
    llmq_batch_config_t cfg;
    llmq_batch_config_defaults(&cfg);
    cfg.provider_price = 0.5; /* as if the worker reported list prices */
    cfg.poll_interval_ms = 1000;
    cfg.results_max_items = 100000;
    cfg.results_max_bytes = 64 * 1024 * 1024;
    s_t_fx_t fx;
    s_t_fx_init(&fx, path, verbose, &cfg, 5000000);
    llmq_batch_set_pool_fn(fx.m, s_test_pool_fn, "openai");
    s_tp_auto_realtime(&fx);
    s_tp_big(&fx);
    s_tp_first_submit(&fx);
    s_tp_submitted(&fx, s_tp_crash_submitting(&fx));
    s_tp_crash_running(&fx);
    s_tp_fetch_garbage(&fx);
    s_tp_refetch(&fx);
    s_tp_transient(&fx);
    s_tp_anthropic_cancel(&fx);
    s_t_fx_fini(&fx);
    if (verbose)
        printf("provider ok; ");
}

/*  Batch and job states: names at the edges only (llmq_batch_state.h). */
static void s_test_states(void)
{
    //  Every name reads back as its own state, and names are unique.
    for (int i = 0; i < LLMQ_BATCH_STATE_COUNT; i++) {
        llmq_batch_state_t s = LLMQ_BATCH_STATE_COUNT;
        const char *name = llmq_batch_state_name((llmq_batch_state_t)i);
        S_CHECK(*name && strlen(name) < 17); //  fits the store's columns
        S_CHECK(llmq_batch_state_parse(name, &s) == 0 && (int)s == i);
    }
    for (int i = 0; i < LLMQ_JOB_STATE_COUNT; i++) {
        llmq_job_state_t s = LLMQ_JOB_STATE_COUNT;
        const char *name = llmq_job_state_name((llmq_job_state_t)i);
        S_CHECK(*name && strlen(name) < 17);
        S_CHECK(llmq_job_state_parse(name, &s) == 0 && (int)s == i);
    }
    //  The wire and database strings stay what they were.
    S_CHECK(strcmp(llmq_batch_state_name(LLMQ_BATCH_IN_PROGRESS),
                   "in_progress") == 0);
    S_CHECK(strcmp(llmq_job_state_name(LLMQ_JOB_SUBMITTING), "submitting") ==
            0);
    //  Unknown names and values.
    llmq_batch_state_t b = LLMQ_BATCH_QUEUED;
    S_CHECK(llmq_batch_state_parse("canceling", &b) == -1 &&
            b == LLMQ_BATCH_QUEUED);
    S_CHECK(llmq_batch_state_parse(NULL, &b) == -1);
    llmq_job_state_t j = LLMQ_JOB_DONE;
    S_CHECK(llmq_job_state_parse("submitted", &j) == -1 && j == LLMQ_JOB_DONE);
    S_CHECK(*llmq_batch_state_name(LLMQ_BATCH_STATE_COUNT) == 0);
    S_CHECK(*llmq_job_state_name((llmq_job_state_t)-1) == 0);
    //  Terminal states.
    S_CHECK(llmq_batch_state_terminal(LLMQ_BATCH_EXPIRED));
    S_CHECK(!llmq_batch_state_terminal(LLMQ_BATCH_CANCELLING));
    //  Provider statuses.
    S_CHECK(llmq_batch_normalise_state("ended") == LLMQ_BATCH_COMPLETED);
    S_CHECK(llmq_batch_normalise_state("canceling") == LLMQ_BATCH_CANCELLING);
    S_CHECK(llmq_batch_normalise_state("canceled") == LLMQ_BATCH_CANCELLED);
    S_CHECK(llmq_batch_normalise_state("submitted") == LLMQ_BATCH_QUEUED);
    S_CHECK(llmq_batch_normalise_state("finalizing") == LLMQ_BATCH_FINALIZING);
    S_CHECK(llmq_batch_normalise_state("weird") == LLMQ_BATCH_IN_PROGRESS);
    S_CHECK(llmq_batch_normalise_state(NULL) == LLMQ_BATCH_IN_PROGRESS);
}

int llmq_batch_test(bool verbose)
{
    printf(" * llmq_batch: ");
    s_test_states();
    char dir[] = "/tmp/llmq-batch-XXXXXX";
    S_CHECK(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/batches.db", dir);
    s_test_realtime(path, verbose);
    s_test_provider(path, verbose);
    if (llmq_check_rmtree(dir) != 0)
        llmq_log(NULL, LLMQ_LOG_WARN, "test_cleanup_failed",
                 LLMQ_LOG_STR("dir", dir), LLMQ_LOG_END);
    printf("OK\n");
    return 0;
}
