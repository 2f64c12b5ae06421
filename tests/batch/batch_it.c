/*  batch_it.c - the batch manager and the provider Batch API class wired
    together against a real llmq-sim, with broker crashes (issue 8).

    A "rig" stands in for the broker's and the worker's loops: it moves the
    manager's job.* tasks to llmq_batch_api and the answers back, every
    message encoded and decoded by the real codec on the way, so the wire
    carries exactly what the integrated broker and worker will carry.

    Scenario (OpenAI): a 120,000-item auto batch with a 24 h window becomes
    three provider jobs on llmq-sim. The broker process is killed (SIGKILL)
    twice: first right after the provider created the first batch but
    before the broker heard of it (the job is `submitting`), then while the
    three provider batches are in progress. Each restart resumes from the
    SQLite file. At the end every result is there in input order, the
    permanent per-item errors are reported, llmq-sim created exactly three
    batches, ran every line once (nothing billed twice), and no file is left
    on it. Then a smaller Anthropic batch runs through Message Batches.

    Usage: llmq_batch_it [-v]   (llmq-sim from $LLMQ_BIN_DIR)
*/
#include <cjson/cJSON.h>
#include <czmq.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include "batch_items.h"
#include "llmq_batch.h"
#include "llmq_batch_api.h"
#include "llmq_batch_store.h"
#include "llmq_value.h"

#include "llmq_check.h"
#define CHECK(expr) LLMQ_CHECK(expr)

#define KEY "sk-it-key-0001"
#define TOTAL 120000
#define PERM_EVERY 10000 /* item i % PERM_EVERY == 7 fails with 400 */

static bool s_verbose = false;

static int64_t s_now(void)
{
    return zclock_time();
}

static pid_t s_sim_start(char *url, size_t size)
{
    pid_t pid = llmq_check_sim_start(
        "--api-key " KEY " --batch-validate-ms 100 --batch-progress-ms 1000 "
        "--batch-finalize-ms 100",
        url, size);
    CHECK(pid > 0);
    return pid;
}

/*  Through the codec, as on a socket: encode the header, decode it again,
    move the payload. */
static llmq_msg_t *s_wire(llmq_msg_t **msg_p)
{
    llmq_msg_t *msg = *msg_p;
    char err[200] = "";
    zframe_t *header = llmq_msg_encode(msg, err, sizeof err);
    if (!header)
        fprintf(stderr, "encode %s: %s\n",
                llmq_msg_type_name(llmq_msg_type(msg)), err);
    CHECK(header);
    zframe_t *payload = llmq_msg_take_payload(msg);
    llmq_msg_t *copy = llmq_msg_decode(zframe_data(header), zframe_size(header),
                                       payload != NULL, err, sizeof err);
    if (!copy)
        fprintf(stderr, "decode: %s\n", err);
    CHECK(copy);
    if (payload)
        llmq_msg_set_payload(copy, &payload);
    zframe_destroy(&header);
    llmq_msg_destroy(msg_p);
    return copy;
}

/*  ---- the rig: broker side (manager) + worker side (batch api) --------- */

typedef struct {
    llmq_batch_t *mgr;
    llmq_batch_api_t *api;
    llmq_provider_t *prov; /* the worker's provider, borrowed by api */
    CURLM *multi;
    zlist_t *inbox; /* worker -> broker messages */
    const char *pool;
    const char *provider;
    bool freeze_on_submit; /* crash point 1: never deliver the first
                              submit's answer */
    int freeze_fd;         /* where to say "frozen" */
} s_rig_t;

static s_rig_t *s_rig;

static void s_to_broker(llmq_msg_t **msg_p, void *arg)
{
    s_rig_t *rig = arg;
    if (rig->freeze_on_submit && llmq_msg_type(*msg_p) == LLMQ_MSG_JOB_STATUS &&
        llmq_msg_provider_batch(*msg_p) && *llmq_msg_provider_batch(*msg_p)) {
        /*  The provider has created the batch; the broker dies before it
            learns the id. */
        CHECK(write(rig->freeze_fd, "A", 1) == 1);
        while (true)
            pause();
    }
    zlist_append(rig->inbox, *msg_p);
    *msg_p = NULL;
}

static bool s_pool_fn(const char *model, const char *pool, char *pool_out,
                      size_t pool_size, char *provider_out,
                      size_t provider_size, void *arg)
{
    (void)model;
    (void)pool;
    s_rig_t *rig = arg;
    snprintf(pool_out, pool_size, "%s", rig->pool);
    snprintf(provider_out, provider_size, "%s", rig->provider);
    return true;
}

/*  The worker's price: $1 per million tokens, half price in a batch. */
static double s_cost(const char *model, int64_t prompt_tokens,
                     int64_t completion_tokens, void *arg)
{
    (void)model;
    (void)arg;
    return (double)(prompt_tokens + completion_tokens) * 0.5e-6;
}

static s_rig_t *s_rig_new(const char *db, const char *url, const char *provider,
                          int tasks)
{
    s_rig_t *rig = calloc(1, sizeof *rig);
    llmq_batch_config_t bc;
    llmq_batch_config_defaults(&bc);
    bc.poll_interval_ms = 150;
    /*  Generous: a loaded machine (sanitizers, parallel tests) must not
        turn a slow upload into a lookup. */
    bc.task_timeout_ms = 30000;
    bc.results_max_items = 5000;
    bc.resubmit_failed = false; /* no realtime worker in this rig */
    /*  Broker 1 runs one task at a time, so its crash point is exact (no
        second upload half done when it dies). */
    bc.max_tasks_per_pool = tasks;
    rig->mgr = llmq_batch_new(db, &bc, s_now());
    CHECK(rig->mgr);
    rig->pool = "pool-1";
    rig->provider = provider;
    llmq_batch_set_pool_fn(rig->mgr, s_pool_fn, rig);
    rig->multi = curl_multi_init();
    rig->inbox = zlist_new();
    char base[300];
    snprintf(base, sizeof base, "%s/v1", url);
    llmq_provider_config_t pc = {provider, base, KEY, NULL, 0};
    rig->prov = llmq_provider_new(&pc, NULL, 0);
    llmq_batch_api_config_t ac = {
        .provider = rig->prov, .results_page = 2000, .verbose = s_verbose};
    rig->api = llmq_batch_api_new(&ac, rig->multi, s_to_broker, rig);
    CHECK(rig->api);
    llmq_batch_api_set_cost(rig->api, s_cost, NULL);
    return rig;
}

static void s_rig_destroy(s_rig_t **rig_p)
{
    s_rig_t *rig = *rig_p;
    llmq_batch_api_destroy(&rig->api);
    llmq_provider_destroy(&rig->prov);
    curl_multi_cleanup(rig->multi);
    llmq_msg_t *m;
    while ((m = zlist_pop(rig->inbox)))
        llmq_msg_destroy(&m);
    zlist_destroy(&rig->inbox);
    llmq_batch_destroy(&rig->mgr);
    free(rig);
    *rig_p = NULL;
}

/*  One turn of both loops. */
static void s_rig_step(s_rig_t *rig)
{
    int64_t now = s_now();
    llmq_batch_tick(rig->mgr, now);
    llmq_msg_t *t;
    while ((t = llmq_batch_next_job_task(rig->mgr, rig->pool, now))) {
        llmq_msg_t *w = s_wire(&t);
        CHECK(llmq_batch_api_handle(rig->api, w) >= 0);
        llmq_msg_destroy(&w);
    }
    int running = 0;
    curl_multi_perform(rig->multi, &running);
    CURLMsg *cm;
    int left;
    while ((cm = curl_multi_info_read(rig->multi, &left)))
        if (cm->msg == CURLMSG_DONE)
            CHECK(llmq_batch_api_done(rig->api, cm->easy_handle,
                                      cm->data.result));
    llmq_msg_t *m;
    while ((m = zlist_pop(rig->inbox))) {
        llmq_msg_t *w = s_wire(&m);
        llmq_batch_on_job_msg(rig->mgr, w, s_now());
        llmq_msg_destroy(&w);
    }
    /*  Wait on the transfers' sockets (bounded), not on a guess. */
    curl_multi_poll(rig->multi, NULL, 0, 20, NULL);
}

/*  A client message through the codec; returns the replies. */
static zlist_t *s_client(s_rig_t *rig, llmq_msg_t *msg)
{
    llmq_msg_t *w = s_wire(&msg);
    zlist_t *replies = zlist_new();
    CHECK(llmq_batch_handle(rig->mgr, w, replies, s_now()) == 0);
    llmq_msg_destroy(&w);
    zlist_t *out = zlist_new();
    llmq_msg_t *r;
    while ((r = zlist_pop(replies)))
        zlist_append(out, s_wire(&r));
    zlist_destroy(&replies);
    return out;
}

/*  batch.add of the items packed in *p_p (taken) as part seq; returns the
    replies. */
static zlist_t *s_batch_add(s_rig_t *rig, const char *batch, int64_t seq,
                            llmq_packer_t **p_p)
{
    zframe_t *items = llmq_packer_frame(*p_p);
    llmq_packer_destroy(p_p);
    llmq_msg_t *add = llmq_msg_new(LLMQ_MSG_BATCH_ADD);
    llmq_msg_set_batch(add, batch);
    llmq_msg_set_seq(add, seq);
    llmq_msg_set_payload(add, &items);
    return s_client(rig, add);
}

static void s_replies_destroy(zlist_t **list_p)
{
    llmq_msg_t *m;
    while ((m = zlist_pop(*list_p)))
        llmq_msg_destroy(&m);
    zlist_destroy(list_p);
}

static char *s_batch_state(s_rig_t *rig, const char *batch)
{
    llmq_msg_t *get = llmq_msg_new(LLMQ_MSG_BATCH_GET);
    llmq_msg_set_batch(get, batch);
    llmq_msg_set_after(get, 1u << 30); /* status only */
    zlist_t *r = s_client(rig, get);
    llmq_msg_t *st = zlist_first(r);
    CHECK(st && llmq_msg_type(st) == LLMQ_MSG_BATCH_STATUS);
    char *state = strdup(llmq_msg_state(st));
    s_replies_destroy(&r);
    return state;
}

static void s_submit(s_rig_t *rig, const char *batch, const char *model,
                     int64_t total)
{
    llmq_msg_t *open = llmq_msg_new(LLMQ_MSG_BATCH_OPEN);
    llmq_msg_set_batch(open, batch);
    llmq_msg_set_mode(open, "auto");
    llmq_msg_set_model(open, model);
    llmq_msg_set_completion_window(open, "24h");
    zlist_t *r = s_client(rig, open);
    CHECK(llmq_msg_type(zlist_first(r)) == LLMQ_MSG_BATCH_ACK);
    s_replies_destroy(&r);
    const int64_t per = 10000;
    for (int64_t seq = 0; seq * per < total; seq++) {
        int64_t n = total - seq * per < per ? total - seq * per : per;
        llmq_packer_t *p = llmq_packer_new();
        llmq_packer_array(p, (size_t)n);
        for (int64_t i = seq * per; i < seq * per + n; i++) {
            char cid[32], text[96];
            snprintf(cid, sizeof cid, "c%lld", (long long)i);
            snprintf(text, sizeof text, "item %lld%s", (long long)i,
                     i % PERM_EVERY == 7 ? " [[sim:fail=400]]" : "");
            llmq_test_pack_item(p, cid, text, 4);
        }
        r = s_batch_add(rig, batch, seq, &p);
        CHECK(llmq_msg_accepted(zlist_first(r)) == n);
        s_replies_destroy(&r);
    }
    llmq_msg_t *close = llmq_msg_new(LLMQ_MSG_BATCH_CLOSE);
    llmq_msg_set_batch(close, batch);
    r = s_client(rig, close);
    CHECK(llmq_msg_count(zlist_first(r)) == total);
    s_replies_destroy(&r);
}

/*  Run until the batch is finished (60 s at most). */
static void s_run_until_done(s_rig_t *rig, const char *batch)
{
    int64_t start = s_now();
    while (true) {
        s_rig_step(rig);
        char *state = s_batch_state(rig, batch);
        bool done = streq(state, "completed") || streq(state, "failed") ||
                    streq(state, "cancelled") || streq(state, "expired");
        free(state);
        if (done)
            break;
        CHECK(s_now() - start < 60000);
    }
    /*  Let the cleanup tasks and the file deletes finish. */
    llmq_batch_stats_t st;
    //  Bounded by time, not by rounds: under sanitizers on a loaded machine
    //  2,000 rounds were not always enough for the deletes to reach the sim.
    int64_t cleanup_start = s_now();
    while (s_now() - cleanup_start < 60000) {
        s_rig_step(rig);
        llmq_batch_stats(rig->mgr, &st);
        int running = 1;
        curl_multi_perform(rig->multi, &running);
        if (st.jobs_active == 0 && st.tasks_in_flight == 0 && running == 0 &&
            llmq_batch_api_active(rig->api) == 0)
            break;
    }
}

/*  Every result in input order; returns how many failed. */
static int64_t s_check_results(s_rig_t *rig, const char *batch, int64_t total)
{
    int64_t after = 0, failed = 0;
    bool final = false;
    while (!final) {
        llmq_msg_t *get = llmq_msg_new(LLMQ_MSG_BATCH_GET);
        llmq_msg_set_batch(get, batch);
        llmq_msg_set_after(get, after);
        zlist_t *r = s_client(rig, get);
        llmq_msg_t *st = zlist_first(r);
        llmq_msg_t *res = zlist_next(r);
        CHECK(st && res && llmq_msg_type(res) == LLMQ_MSG_BATCH_RESULTS);
        zframe_t *payload = llmq_msg_payload(res);
        cJSON *arr = llmq_value_to_json(zframe_data(payload),
                                        zframe_size(payload), NULL, 0);
        CHECK(cJSON_IsArray(arr) && cJSON_GetArraySize(arr) > 0);
        const cJSON *e;
        cJSON_ArrayForEach(e, arr)
        {
            char want[32];
            snprintf(want, sizeof want, "c%lld", (long long)after);
            const cJSON *cid = cJSON_GetObjectItem(e, "custom_id");
            CHECK(cJSON_IsString(cid) && streq(cid->valuestring, want));
            bool ok = cJSON_IsTrue(cJSON_GetObjectItem(e, "ok"));
            CHECK(ok == (after % PERM_EVERY != 7));
            if (!ok) {
                const cJSON *err = cJSON_GetObjectItem(e, "error");
                CHECK(streq(cJSON_GetObjectItem(err, "code")->valuestring,
                            "invalid_request"));
                failed++;
            } else {
                const cJSON *body = cJSON_GetObjectItem(e, "body");
                CHECK(cJSON_IsArray(cJSON_GetObjectItem(body, "choices")));
            }
            after++;
        }
        cJSON_Delete(arr);
        CHECK(llmq_msg_cursor(res) == after);
        final = llmq_msg_final(res);
        if (final) {
            CHECK(streq(llmq_msg_state(st), "completed"));
            CHECK(llmq_msg_counts_total(st) == total);
            CHECK(llmq_msg_counts_done(st) == total);
            CHECK(llmq_msg_counts_failed(st) == failed);
            /*  Batch usage and cost: the sum of the lines, at the Batch
                API price the worker reported. */
            double want = (double)llmq_msg_usage_total_tokens(st) * 0.5e-6;
            CHECK(llmq_msg_usage_total_tokens(st) > 0);
            CHECK(llmq_msg_usage_cost_usd(st) > want * 0.999999 &&
                  llmq_msg_usage_cost_usd(st) < want * 1.000001);
        }
        s_replies_destroy(&r);
    }
    CHECK(after == total);
    return failed;
}

static cJSON *s_sim_stats(const char *url)
{
    char cmd[400];
    snprintf(cmd, sizeof cmd, "%s/_stats", url);
    CURL *easy = curl_easy_init();
    char *buf = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&buf, &len);
    curl_easy_setopt(easy, CURLOPT_URL, cmd);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, mem);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, 10000L);
    CHECK(curl_easy_perform(easy) == CURLE_OK);
    curl_easy_cleanup(easy);
    fclose(mem);
    cJSON *json = cJSON_Parse(buf);
    free(buf);
    CHECK(json);
    return json;
}

static int64_t s_num(const cJSON *root, const char *a, const char *b,
                     const char *c)
{
    const cJSON *v = cJSON_GetObjectItem(root, a);
    if (b)
        v = cJSON_GetObjectItem(v, b);
    if (c)
        v = cJSON_GetObjectItem(v, c);
    CHECK(cJSON_IsNumber(v));
    return (int64_t)v->valuedouble;
}

typedef struct {
    int jobs, with_id, attempts_max;
} s_jobs_t;

static int s_job_fn(const llmq_batch_job_t *job, void *arg)
{
    s_jobs_t *j = arg;
    j->jobs++;
    if (*job->provider_batch)
        j->with_id++;
    if (job->attempts > j->attempts_max)
        j->attempts_max = (int)job->attempts;
    return 0;
}

static s_jobs_t s_peek_jobs(const char *db)
{
    s_jobs_t j = {0};
    llmq_batch_store_t *store = llmq_batch_store_new(db);
    CHECK(store);
    llmq_batch_store_job_each(store, 0, s_job_fn, &j);
    llmq_batch_store_destroy(&store);
    return j;
}

int main(int argc, char *argv[])
{
    s_verbose = argc > 1 && streq(argv[1], "-v");
    setvbuf(stdout, NULL, _IONBF, 0);
    CHECK(curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK);
    char url[256];
    pid_t sim = s_sim_start(url, sizeof url);
    char dir[] = "/tmp/llmq-batch-it-XXXXXX";
    CHECK(mkdtemp(dir));
    char db[300];
    snprintf(db, sizeof db, "%s/batches.db", dir);
    int64_t t0 = s_now();

    /*  Broker 1: takes the batch, cuts it into jobs, hands out the first
        job.submit; dies right after the provider created that batch and
        before the broker recorded the id. */
    int fds[2];
    CHECK(pipe(fds) == 0);
    pid_t child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        close(fds[0]);
        s_rig = s_rig_new(db, url, "openai", 1);
        s_submit(s_rig, "big", "gpt-4o-mini", TOTAL);
        s_rig->freeze_on_submit = true;
        s_rig->freeze_fd = fds[1];
        while (true)
            s_rig_step(s_rig);
    }
    close(fds[1]);
    char c = 0;
    struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
    CHECK(poll(&pfd, 1, 60000) == 1 && read(fds[0], &c, 1) == 1 && c == 'A');
    kill(child, SIGKILL);
    CHECK(waitpid(child, NULL, 0) == child);
    close(fds[0]);
    s_jobs_t j = s_peek_jobs(db);
    CHECK(j.jobs == 3 && j.with_id == 0);
    printf("broker 1 killed with a submit in flight (%.1f s)\n",
           (s_now() - t0) / 1000.0);

    /*  Broker 2: restarts, looks the first job up (found by its metadata
        tag, not resubmitted), submits the other two, and dies while the
        three provider batches are in progress. */
    CHECK(pipe(fds) == 0);
    child = fork();
    CHECK(child >= 0);
    if (child == 0) {
        close(fds[0]);
        s_rig = s_rig_new(db, url, "openai", 4);
        llmq_batch_store_t *peek = llmq_batch_store_new(db);
        while (true) {
            s_rig_step(s_rig);
            s_jobs_t pj = {0};
            llmq_batch_store_job_each(peek, 0, s_job_fn, &pj);
            if (pj.with_id == 3) {
                CHECK(write(fds[1], "B", 1) == 1);
                while (true)
                    pause();
            }
        }
    }
    close(fds[1]);
    pfd.fd = fds[0];
    CHECK(poll(&pfd, 1, 60000) == 1 && read(fds[0], &c, 1) == 1 && c == 'B');
    kill(child, SIGKILL);
    CHECK(waitpid(child, NULL, 0) == child);
    close(fds[0]);
    j = s_peek_jobs(db);
    CHECK(j.jobs == 3 && j.with_id == 3 && j.attempts_max == 1);
    cJSON *stats = s_sim_stats(url);
    CHECK(s_num(stats, "batches", "openai", "created") == 3);
    CHECK(s_num(stats, "batches", "openai", "completed") < 3);
    cJSON_Delete(stats);
    printf("broker 2 killed with 3 provider batches in progress (%.1f s)\n",
           (s_now() - t0) / 1000.0);

    /*  Broker 3: resumes polling, fetches, cleans up. */
    s_rig = s_rig_new(db, url, "openai", 4);
    s_run_until_done(s_rig, "big");
    printf("batch completed (%.1f s)\n", (s_now() - t0) / 1000.0);
    int64_t failed = s_check_results(s_rig, "big", TOTAL);
    CHECK(failed == TOTAL / PERM_EVERY);
    stats = s_sim_stats(url);
    CHECK(s_num(stats, "batches", "openai", "created") == 3);
    CHECK(s_num(stats, "batches", "openai", "completed") == 3);
    CHECK(s_num(stats, "batches", "lines_ok", NULL) +
              s_num(stats, "batches", "lines_error", NULL) ==
          TOTAL);
    CHECK(s_num(stats, "double_billed", NULL, NULL) == 0);
    CHECK(s_num(stats, "files", "count", NULL) == 0);
    cJSON_Delete(stats);
    j = s_peek_jobs(db);
    CHECK(j.attempts_max == 1);
    printf("120,000 items: 3 OpenAI batches, every result in order, %lld "
           "permanent errors reported, nothing submitted or billed twice, "
           "no file left (%.1f s)\n",
           (long long)failed, (s_now() - t0) / 1000.0);

    /*  Anthropic Message Batches through the same manager. */
    s_rig_destroy(&s_rig);
    s_rig = s_rig_new(db, url, "anthropic", 4);
    s_submit(s_rig, "claude", "claude-3-5-haiku", 2500);
    s_run_until_done(s_rig, "claude");
    int64_t an_failed = 0;
    {
        llmq_msg_t *get = llmq_msg_new(LLMQ_MSG_BATCH_GET);
        llmq_msg_set_batch(get, "claude");
        zlist_t *r = s_client(s_rig, get);
        llmq_msg_t *st = zlist_first(r);
        CHECK(streq(llmq_msg_state(st), "completed"));
        CHECK(streq(llmq_msg_mode(st), "provider"));
        CHECK(llmq_msg_counts_done(st) == 2500);
        an_failed = llmq_msg_counts_failed(st);
        CHECK(an_failed == 1);
        /*  Half price: cost is from the worker (0 here); tokens counted. */
        CHECK(llmq_msg_usage_prompt_tokens(st) > 0);
        s_replies_destroy(&r);
    }
    stats = s_sim_stats(url);
    CHECK(s_num(stats, "batches", "anthropic", "created") == 1);
    CHECK(s_num(stats, "double_billed", NULL, NULL) == 0);
    cJSON_Delete(stats);
    printf("2,500 items through Anthropic Message Batches (%.1f s)\n",
           (s_now() - t0) / 1000.0);

    /*  Cancel reaches the provider: a batch with a line that never
        answers is cancelled by the client; the provider batch is
        cancelled, its partial results fetched, the rest answered
        `cancelled`. */
    s_rig_destroy(&s_rig);
    s_rig = s_rig_new(db, url, "openai", 4);
    {
        llmq_msg_t *open = llmq_msg_new(LLMQ_MSG_BATCH_OPEN);
        llmq_msg_set_batch(open, "stuck");
        llmq_msg_set_mode(open, "provider");
        llmq_msg_set_model(open, "gpt-4o-mini");
        zlist_t *r = s_client(s_rig, open);
        s_replies_destroy(&r);
        llmq_packer_t *p = llmq_packer_new();
        llmq_packer_array(p, 50);
        for (int i = 0; i < 50; i++) {
            char cid[16];
            snprintf(cid, sizeof cid, "s%d", i);
            llmq_test_pack_item(p, cid,
                                i == 49 ? "stuck [[sim:hang=1]]" : "fine", 0);
        }
        r = s_batch_add(s_rig, "stuck", 1, &p);
        s_replies_destroy(&r);
        llmq_msg_t *close = llmq_msg_new(LLMQ_MSG_BATCH_CLOSE);
        llmq_msg_set_batch(close, "stuck");
        r = s_client(s_rig, close);
        s_replies_destroy(&r);
        /*  Run until the provider batch is in progress. */
        int64_t start = s_now();
        while (true) {
            s_rig_step(s_rig);
            char *state = s_batch_state(s_rig, "stuck");
            bool running = streq(state, "in_progress");
            free(state);
            if (running)
                break;
            CHECK(s_now() - start < 30000);
        }
        llmq_msg_t *cancel = llmq_msg_new(LLMQ_MSG_BATCH_CANCEL);
        llmq_msg_set_batch(cancel, "stuck");
        r = s_client(s_rig, cancel);
        CHECK(streq(llmq_msg_state(zlist_first(r)), "cancelling"));
        s_replies_destroy(&r);
        s_run_until_done(s_rig, "stuck");
        llmq_msg_t *get = llmq_msg_new(LLMQ_MSG_BATCH_GET);
        llmq_msg_set_batch(get, "stuck");
        r = s_client(s_rig, get);
        llmq_msg_t *st = zlist_first(r);
        CHECK(streq(llmq_msg_state(st), "cancelled"));
        CHECK(llmq_msg_counts_done(st) == 50);
        CHECK(llmq_msg_counts_failed(st) >= 1); /* the stuck line at least */
        llmq_msg_t *res = zlist_next(r);
        CHECK(llmq_msg_final(res) && llmq_msg_cursor(res) == 50);
        s_replies_destroy(&r);
    }
    stats = s_sim_stats(url);
    CHECK(s_num(stats, "batches", "openai", "cancelled") == 1);
    CHECK(s_num(stats, "double_billed", NULL, NULL) == 0);
    CHECK(s_num(stats, "files", "count", NULL) == 0);
    cJSON_Delete(stats);
    printf("cancel reached the provider (%.1f s)\n", (s_now() - t0) / 1000.0);

    s_rig_destroy(&s_rig);
    //  The simulator stops cleanly on SIGTERM (a sanitizer report or a crash
    //  at shutdown is a non-zero status).
    kill(sim, SIGTERM);
    int status = 0;
    CHECK(waitpid(sim, &status, 0) == sim);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(llmq_check_rmtree(dir) == 0);
    curl_global_cleanup();
    printf("batch_it: OK\n");
    return 0;
}
