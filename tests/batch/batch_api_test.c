/*  batch_api_test.c - the selftest of worker/llmq_batch_api.c (the
    batch.api ctest), against a real llmq-sim found in $LLMQ_BIN_DIR.

    The class borrows the worker's provider: each Batch API here runs over
    an llmq_provider_t, and the tests check that batch and realtime agree
    where they share a home (the error classifier, the Anthropic request
    translation with tools).
*/
#include <cjson/cJSON.h>
#include <czmq.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "batch_items.h"
#include "llmq_batch_api.h"
#include "llmq_provider.h"
#include "llmq_value.h"

#include "llmq_check.h"
#define S_CHECK(expr) LLMQ_CHECK(expr)

#define S_TEST_KEY "sk-test-SECRET-key-1234"

static int64_t s_int(const cJSON *obj, const char *key)
{
    return llmq_json_int(obj, key);
}

static const char *s_str(const cJSON *obj, const char *key)
{
    return llmq_json_str(obj, key);
}

static int64_t s_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*  Start llmq-sim on an ephemeral port; wait for its ready line (with a
    timeout, no sleeps). Returns the pid and fills url. */
static pid_t s_sim_start(char *url, size_t size)
{
    pid_t pid = llmq_check_sim_start(
        "--api-key " S_TEST_KEY " --batch-validate-ms 30 --batch-progress-ms "
        "150 --batch-finalize-ms 30",
        url, size);
    return pid;
}

static bool s_contains(const void *hay, size_t hlen, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = 0; n && i + n <= hlen; i++)
        if (memcmp((const char *)hay + i, needle, n) == 0)
            return true;
    return false;
}

typedef struct {
    zlist_t *msgs; /* messages sent to "the broker" */
    long bad;      /* messages that held the key */
} s_sink_t;

static void s_test_send(llmq_msg_t **msg_p, void *arg)
{
    s_sink_t *sink = arg;
    /*  Encode it as the worker would and make sure no byte of the key is
        in it. */
    zframe_t *f = llmq_msg_encode(*msg_p, NULL, 0);
    S_CHECK(f);
    const char *key = S_TEST_KEY;
    if (s_contains(zframe_data(f), zframe_size(f), key))
        sink->bad++;
    zframe_t *payload = llmq_msg_payload(*msg_p);
    if (payload && s_contains(zframe_data(payload), zframe_size(payload), key))
        sink->bad++;
    zframe_destroy(&f);
    zlist_append(sink->msgs, *msg_p);
    *msg_p = NULL;
}

/*  Run the multi handle until the sink holds `want` messages and, with
    idle, until no transfer is left. Waits in curl_multi_poll (the
    sockets), 15 s at most. */
static void s_drive(CURLM *multi, llmq_batch_api_t **apis, s_sink_t *sink,
                    size_t want, bool idle)
{
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (true) {
        int running = 0;
        curl_multi_perform(multi, &running);
        CURLMsg *m;
        int left;
        while ((m = curl_multi_info_read(multi, &left))) {
            if (m->msg != CURLMSG_DONE)
                continue;
            bool ours = false;
            for (int i = 0; apis[i] && !ours; i++)
                ours = llmq_batch_api_done(apis[i], m->easy_handle,
                                           m->data.result);
            S_CHECK(ours);
        }
        curl_multi_perform(multi, &running);
        if (zlist_size(sink->msgs) >= want && (!idle || running == 0))
            return;
        clock_gettime(CLOCK_MONOTONIC, &now);
        S_CHECK(now.tv_sec - start.tv_sec < 15);
        curl_multi_poll(multi, NULL, 0, 50, NULL);
    }
}

/*  Items {custom_id: "<i>", body: chat request}; some carry llmq-sim
    directives: item 3 fails with 400, item 5 with context_length. */
static zframe_t *s_test_items(int n, const char *tag)
{
    llmq_packer_t *p = llmq_packer_new();
    llmq_packer_array(p, (size_t)n);
    for (int i = 0; i < n; i++) {
        char cid[16], text[128];
        snprintf(cid, sizeof cid, "%d", i);
        snprintf(text, sizeof text, "%s question %d%s", tag, i,
                 i == 3   ? " [[sim:fail=400]]"
                 : i == 5 ? " [[sim:context_length]]"
                          : "");
        llmq_packer_map(p, 2);
        llmq_packer_str(p, "custom_id");
        llmq_packer_str(p, cid);
        llmq_packer_str(p, "body");
        llmq_packer_map(p, 3);
        llmq_packer_str(p, "model");
        llmq_packer_str(p, "ignored-model");
        llmq_packer_str(p, "max_tokens");
        llmq_packer_int(p, 8);
        llmq_packer_str(p, "messages");
        llmq_packer_array(p, i == 0 ? 2 : 1);
        if (i == 0) {
            llmq_packer_map(p, 2);
            llmq_packer_str(p, "role");
            llmq_packer_str(p, "system");
            llmq_packer_str(p, "content");
            llmq_packer_str(p, "be brief");
        }
        llmq_packer_map(p, 2);
        llmq_packer_str(p, "role");
        llmq_packer_str(p, "user");
        llmq_packer_str(p, "content");
        llmq_packer_str(p, text);
    }
    zframe_t *f = llmq_packer_frame(p);
    llmq_packer_destroy(&p);
    return f;
}

static llmq_provider_t *s_provider(const char *kind, const char *base,
                                   const char *key)
{
    llmq_provider_config_t pc = {kind, base, key, NULL, 0};
    char errbuf[128];
    llmq_provider_t *p = llmq_provider_new(&pc, errbuf, sizeof errbuf);
    S_CHECK(p);
    return p;
}

static llmq_msg_t *s_test_task(llmq_msg_type_t type, const char *job,
                               const char *pb)
{
    llmq_msg_t *m = llmq_msg_new(type);
    llmq_msg_set_job(m, job);
    if (pb)
        llmq_msg_set_provider_batch(m, pb);
    return m;
}

/*  job.submit of job for gpt-4o-mini (chat): two items {custom_id "0" and
    "1", body: one user message each}. */
static llmq_msg_t *s_pair_task(const char *job, const char *text0,
                               const char *text1)
{
    llmq_msg_t *task = s_test_task(LLMQ_MSG_JOB_SUBMIT, job, NULL);
    llmq_msg_set_model(task, "gpt-4o-mini");
    llmq_msg_set_op(task, "chat");
    llmq_packer_t *p = llmq_packer_new();
    llmq_packer_array(p, 2);
    llmq_test_pack_item(p, "0", text0, 0);
    llmq_test_pack_item(p, "1", text1, 0);
    zframe_t *items = llmq_packer_frame(p);
    llmq_packer_destroy(&p);
    llmq_msg_set_payload(task, &items);
    return task;
}

/*  Hand a task to the class and wait for its one job.status answer. */
static llmq_msg_t *s_run_task(CURLM *multi, llmq_batch_api_t **apis,
                              llmq_batch_api_t *api, s_sink_t *sink,
                              llmq_msg_t *task)
{
    S_CHECK(llmq_batch_api_handle(api, task) >= 0);
    llmq_msg_destroy(&task);
    s_drive(multi, apis, sink, 1, false);
    llmq_msg_t *m = zlist_pop(sink->msgs);
    S_CHECK(m && llmq_msg_type(m) == LLMQ_MSG_JOB_STATUS);
    return m;
}

/*  Poll until the provider batch reaches a terminal state. */
static llmq_msg_t *s_poll_until_done(CURLM *multi, llmq_batch_api_t **apis,
                                     llmq_batch_api_t *api, s_sink_t *sink,
                                     const char *job, const char *pb)
{
    for (int i = 0; i < 500; i++) {
        llmq_msg_t *st = s_run_task(multi, apis, api, sink,
                                    s_test_task(LLMQ_MSG_JOB_POLL, job, pb));
        S_CHECK(!llmq_msg_error_code(st));
        const char *state = llmq_msg_state(st);
        if (streq(state, "completed") || streq(state, "cancelled") ||
            streq(state, "failed") || streq(state, "expired"))
            return st;
        llmq_msg_destroy(&st);
        /*  Wait for the sim's next phase on the multi handle (no
            transfers: a bounded wait, not a sleep on a guess). */
        curl_multi_poll(multi, NULL, 0, 20, NULL);
    }
    S_CHECK(false);
    return NULL;
}

/*  Fetch every result page; returns them as one JSON array. */
static cJSON *s_fetch_all(CURLM *multi, llmq_batch_api_t **apis,
                          llmq_batch_api_t *api, s_sink_t *sink,
                          const char *job, const char *pb)
{
    llmq_msg_t *task = s_test_task(LLMQ_MSG_JOB_FETCH, job, pb);
    S_CHECK(llmq_batch_api_handle(api, task) == 0);
    llmq_msg_destroy(&task);
    cJSON *all = cJSON_CreateArray();
    bool final = false;
    while (!final) {
        s_drive(multi, apis, sink, 1, false);
        llmq_msg_t *m = zlist_pop(sink->msgs);
        S_CHECK(m && llmq_msg_type(m) == LLMQ_MSG_JOB_RESULTS);
        S_CHECK(streq(llmq_msg_job(m), job));
        final = llmq_msg_final(m);
        zframe_t *payload = llmq_msg_payload(m);
        cJSON *arr = llmq_value_to_json(zframe_data(payload),
                                        zframe_size(payload), NULL, 0);
        S_CHECK(cJSON_IsArray(arr));
        S_CHECK(cJSON_GetArraySize(arr) == llmq_msg_count(m));
        cJSON *e;
        while ((e = cJSON_DetachItemFromArray(arr, 0)))
            cJSON_AddItemToArray(all, e);
        cJSON_Delete(arr);
        llmq_msg_destroy(&m);
    }
    return all;
}

/*  The body of a blocking GET. */
static size_t s_test_write(char *ptr, size_t size, size_t nmemb, void *arg)
{
    zchunk_extend((zchunk_t *)arg, ptr, size * nmemb);
    return size * nmemb;
}

/*  A blocking GET for the test's own checks. */
static cJSON *s_http_get(const char *url)
{
    CURL *easy = curl_easy_init();
    zchunk_t *data = zchunk_new(NULL, 0);
    struct curl_slist *h =
        curl_slist_append(NULL, "Authorization: Bearer " S_TEST_KEY);
    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, s_test_write);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, data);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, 10000L);
    S_CHECK(curl_easy_perform(easy) == CURLE_OK);
    curl_easy_cleanup(easy);
    curl_slist_free_all(h);
    cJSON *json = cJSON_ParseWithLength((const char *)zchunk_data(data),
                                        zchunk_size(data));
    zchunk_destroy(&data);
    return json;
}

/*  $1 per million tokens in and out, half price in a batch. */
static double s_test_cost(const char *model, int64_t prompt_tokens,
                          int64_t completion_tokens, void *arg)
{
    (void)arg;
    S_CHECK(streq(model, "gpt-4o-mini"));
    return (double)(prompt_tokens + completion_tokens) * 0.5e-6;
}

static const cJSON *s_by_cid(const cJSON *arr, const char *cid)
{
    const cJSON *e;
    cJSON_ArrayForEach(e, arr)
    {
        const char *c = s_str(e, "custom_id");
        if (c && streq(c, cid))
            return e;
    }
    return NULL;
}

static const char *s_err_code(const cJSON *e)
{
    return s_str(cJSON_GetObjectItemCaseSensitive(e, "error"), "code");
}

int llmq_batch_api_test(bool verbose)
{
    printf(" * llmq_batch_api: ");
    fflush(stdout);
    S_CHECK(curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK);
    char url[256], base[300];
    pid_t sim = s_sim_start(url, sizeof url);
    if (sim < 0) {
        printf("FAILED (no llmq-sim)\n");
        return 1;
    }
    snprintf(base, sizeof base, "%s/v1", url);
    CURLM *multi = curl_multi_init();
    s_sink_t sink = {zlist_new(), 0};

    /*  Each Batch API borrows a provider, as the worker's does. */
    llmq_provider_t *prov[] = {
        s_provider("openai", base, S_TEST_KEY),
        s_provider("anthropic", base, S_TEST_KEY),
        s_provider("openai", base, "sk-wrong-key-99999999"),
        s_provider("openai", "http://127.0.0.1:1/v1", S_TEST_KEY),
        s_provider("echo", NULL, NULL)};
    /*  Bad configs: no provider, a provider without a Batch API. */
    llmq_batch_api_config_t cfg = {.results_page = 64, .verbose = verbose};
    S_CHECK(llmq_batch_api_new(&cfg, multi, s_test_send, &sink) == NULL);
    cfg.provider = prov[4];
    S_CHECK(llmq_batch_api_new(&cfg, multi, s_test_send, &sink) == NULL);
    llmq_batch_api_t *one[4];
    for (int i = 0; i < 4; i++) {
        cfg.provider = prov[i];
        one[i] = llmq_batch_api_new(&cfg, multi, s_test_send, &sink);
        S_CHECK(one[i]);
    }
    llmq_batch_api_t *oa = one[0], *an = one[1], *wk = one[2], *dn = one[3];
    llmq_batch_api_set_cost(oa, s_test_cost, NULL);
    llmq_batch_api_t *apis[] = {oa, an, wk, dn, NULL};
    llmq_msg_t *hb = llmq_msg_new(LLMQ_MSG_HB);
    S_CHECK(llmq_batch_api_handle(oa, hb) == -1); /* not a job task */
    llmq_msg_destroy(&hb);

    /*  OpenAI: submit 200 items; the answer names the provider batch. */
    const int n = 200;
    llmq_msg_t *task = s_test_task(LLMQ_MSG_JOB_SUBMIT, "job-oa-1", NULL);
    llmq_msg_set_model(task, "gpt-4o-mini");
    llmq_msg_set_op(task, "chat");
    zframe_t *items = s_test_items(n, "oa");
    llmq_msg_set_payload(task, &items);
    llmq_msg_t *st = s_run_task(multi, apis, oa, &sink, task);
    S_CHECK(!llmq_msg_error_code(st));
    char pb[257];
    snprintf(pb, sizeof pb, "%s", llmq_msg_provider_batch(st));
    S_CHECK(strncmp(pb, "batch_", 6) == 0);
    S_CHECK(streq(llmq_msg_state(st), "validating") ||
            streq(llmq_msg_state(st), "in_progress"));
    llmq_msg_destroy(&st);

    /*  Lookup by the job tag finds it; an unknown job is proven absent. */
    st = s_run_task(multi, apis, oa, &sink,
                    s_test_task(LLMQ_MSG_JOB_POLL, "job-oa-1", ""));
    S_CHECK(streq(llmq_msg_provider_batch(st), pb));
    llmq_msg_destroy(&st);
    st = s_run_task(multi, apis, oa, &sink,
                    s_test_task(LLMQ_MSG_JOB_POLL, "job-never", ""));
    S_CHECK(streq(llmq_msg_error_code(st), "not_found"));
    llmq_msg_destroy(&st);

    st = s_poll_until_done(multi, apis, oa, &sink, "job-oa-1", pb);
    S_CHECK(streq(llmq_msg_state(st), "completed"));
    S_CHECK(llmq_msg_counts_total(st) == n);
    S_CHECK(llmq_msg_counts_done(st) == n - 2);
    S_CHECK(llmq_msg_counts_failed(st) == 2);
    S_CHECK(llmq_msg_output_file(st) && llmq_msg_error_file(st));
    llmq_msg_destroy(&st);

    cJSON *res = s_fetch_all(multi, apis, oa, &sink, "job-oa-1", pb);
    S_CHECK(cJSON_GetArraySize(res) == n);
    for (int i = 0; i < n; i++) {
        char cid[16];
        snprintf(cid, sizeof cid, "%d", i);
        const cJSON *e = s_by_cid(res, cid);
        S_CHECK(e);
        bool ok = cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e, "ok"));
        S_CHECK(ok == (i != 3 && i != 5));
        if (ok) {
            const cJSON *body = cJSON_GetObjectItemCaseSensitive(e, "body");
            S_CHECK(cJSON_IsArray(
                cJSON_GetObjectItemCaseSensitive(body, "choices")));
            /*  One model per file: the job's model replaced the item's. */
            S_CHECK(streq(s_str(body, "model"), "gpt-4o-mini"));
            const cJSON *usage = cJSON_GetObjectItemCaseSensitive(e, "usage");
            S_CHECK(s_int(usage, "prompt_tokens") > 0);
            const cJSON *cost =
                cJSON_GetObjectItemCaseSensitive(usage, "cost_usd");
            S_CHECK(cJSON_IsNumber(cost) &&
                    cost->valuedouble ==
                        (double)s_int(usage, "total_tokens") * 0.5e-6);
        }
    }
    S_CHECK(streq(s_err_code(s_by_cid(res, "3")), "invalid_request"));
    S_CHECK(s_int(cJSON_GetObjectItemCaseSensitive(s_by_cid(res, "3"), "error"),
                  "status") == 400);
    S_CHECK(streq(s_err_code(s_by_cid(res, "5")), "context_length"));
    cJSON_Delete(res);

    /*  Cleanup deletes the input, output and error files. */
    char files_url[400];
    snprintf(files_url, sizeof files_url, "%s/files", base);
    cJSON *files = s_http_get(files_url);
    S_CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(files, "data")) == 3);
    cJSON_Delete(files);
    task = s_test_task(LLMQ_MSG_JOB_CANCEL, "job-oa-1", pb);
    llmq_msg_set_mode(task, "cleanup");
    st = s_run_task(multi, apis, oa, &sink, task);
    S_CHECK(streq(llmq_msg_state(st), "completed"));
    llmq_msg_destroy(&st);
    s_drive(multi, apis, &sink, 0, true);
    files = s_http_get(files_url);
    S_CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(files, "data")) == 0);
    cJSON_Delete(files);

    /*  HTTP 409 on a line: classified as realtime classifies it (one
        classifier), not as a batch-only invalid_request. */
    llmq_perr_t rt;
    const char *conflict = "{\"error\":{\"message\":\"conflict\"}}";
    llmq_provider_classify(prov[0], 409, conflict, strlen(conflict), &rt);
    st = s_run_task(
        multi, apis, oa, &sink,
        s_pair_task("job-oa-409", "calm before 409", "busy [[sim:fail=409]]"));
    snprintf(pb, sizeof pb, "%s", llmq_msg_provider_batch(st));
    llmq_msg_destroy(&st);
    st = s_poll_until_done(multi, apis, oa, &sink, "job-oa-409", pb);
    llmq_msg_destroy(&st);
    res = s_fetch_all(multi, apis, oa, &sink, "job-oa-409", pb);
    const cJSON *e409 =
        cJSON_GetObjectItemCaseSensitive(s_by_cid(res, "1"), "error");
    S_CHECK(s_int(e409, "status") == 409);
    S_CHECK(streq(s_str(e409, "code"), llmq_err_name(rt.code)));
    S_CHECK(streq(s_str(e409, "code"), "provider_error"));
    S_CHECK(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(e409, "retryable")) ==
            rt.retryable);
    cJSON_Delete(res);

    /*  Cancel: a batch with a line that never answers can only end by
        cancel; the partial results come back. */
    st = s_run_task(multi, apis, oa, &sink,
                    s_pair_task("job-oa-2", "fine", "stuck [[sim:hang=1]]"));
    snprintf(pb, sizeof pb, "%s", llmq_msg_provider_batch(st));
    llmq_msg_destroy(&st);
    st = s_run_task(multi, apis, oa, &sink,
                    s_test_task(LLMQ_MSG_JOB_CANCEL, "job-oa-2", pb));
    S_CHECK(streq(llmq_msg_state(st), "cancelling") ||
            streq(llmq_msg_state(st), "cancelled"));
    llmq_msg_destroy(&st);
    st = s_poll_until_done(multi, apis, oa, &sink, "job-oa-2", pb);
    S_CHECK(streq(llmq_msg_state(st), "cancelled"));
    llmq_msg_destroy(&st);
    /*  Cancelling again: the provider says 409, we report its state. */
    st = s_run_task(multi, apis, oa, &sink,
                    s_test_task(LLMQ_MSG_JOB_CANCEL, "job-oa-2", pb));
    S_CHECK(streq(llmq_msg_state(st), "cancelled"));
    llmq_msg_destroy(&st);
    res = s_fetch_all(multi, apis, oa, &sink, "job-oa-2", pb);
    S_CHECK(cJSON_GetArraySize(res) <= 2);
    cJSON_Delete(res);

    /*  Anthropic: 30 items, bodies translated to and from the Messages
        API; lookup by count and time. */
    int64_t submitted = s_wall_ms();
    task = s_test_task(LLMQ_MSG_JOB_SUBMIT, "job-an-1", NULL);
    llmq_msg_set_model(task, "claude-3-5-haiku");
    llmq_msg_set_op(task, "chat");
    items = s_test_items(30, "an");
    llmq_msg_set_payload(task, &items);
    st = s_run_task(multi, apis, an, &sink, task);
    S_CHECK(!llmq_msg_error_code(st));
    snprintf(pb, sizeof pb, "%s", llmq_msg_provider_batch(st));
    S_CHECK(strncmp(pb, "msgbatch_", 9) == 0);
    llmq_msg_destroy(&st);
    task = s_test_task(LLMQ_MSG_JOB_POLL, "job-an-1", "");
    llmq_msg_set_count(task, 30);
    llmq_msg_set_time_ms(task, submitted);
    st = s_run_task(multi, apis, an, &sink, task);
    S_CHECK(streq(llmq_msg_provider_batch(st), pb));
    llmq_msg_destroy(&st);
    task = s_test_task(LLMQ_MSG_JOB_POLL, "job-an-x", "");
    llmq_msg_set_count(task, 31);
    llmq_msg_set_time_ms(task, submitted);
    st = s_run_task(multi, apis, an, &sink, task);
    S_CHECK(streq(llmq_msg_error_code(st), "not_found"));
    llmq_msg_destroy(&st);
    st = s_poll_until_done(multi, apis, an, &sink, "job-an-1", pb);
    S_CHECK(streq(llmq_msg_state(st), "completed"));
    S_CHECK(llmq_msg_counts_total(st) == 30 && llmq_msg_counts_done(st) == 28);
    llmq_msg_destroy(&st);
    res = s_fetch_all(multi, apis, an, &sink, "job-an-1", pb);
    S_CHECK(cJSON_GetArraySize(res) == 30);
    const cJSON *e = s_by_cid(res, "0");
    const cJSON *body = cJSON_GetObjectItemCaseSensitive(e, "body");
    S_CHECK(streq(s_str(body, "object"), "chat.completion"));
    const cJSON *choice = cJSON_GetArrayItem(
        cJSON_GetObjectItemCaseSensitive(body, "choices"), 0);
    const char *content =
        s_str(cJSON_GetObjectItemCaseSensitive(choice, "message"), "content");
    S_CHECK(content && *content);
    S_CHECK(s_int(cJSON_GetObjectItemCaseSensitive(body, "usage"),
                  "prompt_tokens") > 0);
    S_CHECK(streq(s_err_code(s_by_cid(res, "3")), "invalid_request"));
    S_CHECK(s_by_cid(res, "5") &&
            !cJSON_IsTrue(cJSON_GetObjectItem(s_by_cid(res, "5"), "ok")));
    cJSON_Delete(res);
    task = s_test_task(LLMQ_MSG_JOB_CANCEL, "job-an-1", pb);
    llmq_msg_set_mode(task, "cleanup");
    S_CHECK(llmq_batch_api_handle(an, task) == 1); /* nothing to delete */
    llmq_msg_destroy(&task);
    st = zlist_pop(sink.msgs);
    S_CHECK(st && streq(llmq_msg_state(st), "completed"));
    llmq_msg_destroy(&st);

    /*  Failures answer, never crash: a wrong key (auth), a dead server,
        malformed items, a hostile id. */
    st = s_run_task(multi, apis, wk, &sink,
                    s_test_task(LLMQ_MSG_JOB_POLL, "job-w", "batch_x"));
    S_CHECK(streq(llmq_msg_error_code(st), "auth"));
    S_CHECK(llmq_msg_error_status(st) == 401);
    S_CHECK(!strstr(llmq_msg_error_message(st), "sk-wrong-key-99999999"));
    llmq_msg_destroy(&st);
    st = s_run_task(multi, apis, dn, &sink,
                    s_test_task(LLMQ_MSG_JOB_POLL, "job-d", "batch_x"));
    S_CHECK(streq(llmq_msg_error_code(st), "provider_error"));
    llmq_msg_destroy(&st);
    st = s_run_task(multi, apis, oa, &sink,
                    s_test_task(LLMQ_MSG_JOB_POLL, "job-o", "batch_nope"));
    S_CHECK(streq(llmq_msg_error_code(st), "invalid_request"));
    S_CHECK(llmq_msg_error_status(st) == 404);
    llmq_msg_destroy(&st);
    task = s_test_task(LLMQ_MSG_JOB_SUBMIT, "job-bad", NULL);
    llmq_msg_set_model(task, "m");
    llmq_msg_set_op(task, "chat");
    llmq_msg_set_payload_mem(task, "\x91\x01", 2);
    S_CHECK(llmq_batch_api_handle(oa, task) == 1);
    llmq_msg_destroy(&task);
    st = zlist_pop(sink.msgs);
    S_CHECK(streq(llmq_msg_error_code(st), "invalid_request"));
    llmq_msg_destroy(&st);
    task = s_test_task(LLMQ_MSG_JOB_FETCH, "j", "../files");
    S_CHECK(llmq_batch_api_handle(oa, task) == 1);
    llmq_msg_destroy(&task);
    st = zlist_pop(sink.msgs);
    S_CHECK(streq(llmq_msg_error_code(st), "invalid_request"));
    llmq_msg_destroy(&st);
    S_CHECK(sink.bad == 0);

    /*  Nothing was answered twice by the provider. */
    char stats_url[300];
    snprintf(stats_url, sizeof stats_url, "%s/_stats", url);
    cJSON *stats = s_http_get(stats_url);
    S_CHECK(stats);
    S_CHECK(s_int(stats, "double_billed") == 0);
    cJSON_Delete(stats);

    /*  Destroy with a task in flight: handles come off the multi. */
    task = s_test_task(LLMQ_MSG_JOB_POLL, "job-z", "batch_x");
    S_CHECK(llmq_batch_api_handle(oa, task) == 0);
    llmq_msg_destroy(&task);
    S_CHECK(llmq_batch_api_active(oa) == 1);
    for (int i = 0; i < 4; i++)
        llmq_batch_api_destroy(&apis[i]);
    llmq_batch_api_destroy(&apis[0]); /* idempotent */
    for (int i = 0; i < 5; i++)
        llmq_provider_destroy(&prov[i]);
    llmq_msg_t *m;
    while ((m = zlist_pop(sink.msgs)))
        llmq_msg_destroy(&m);
    zlist_destroy(&sink.msgs);
    curl_multi_cleanup(multi);
    kill(sim, SIGTERM);
    waitpid(sim, NULL, 0);
    curl_global_cleanup();
    printf("OK\n");
    return 0;
}

/*  Batch and realtime agree where they share a home: one request
    translation (an Anthropic tool-use request keeps its tools) and one
    error classifier (HTTP 409), for every provider with a Batch API. */
int llmq_batch_api_agree_test(bool verbose)
{
    printf(" * llmq_batch_api (batch = realtime): ");
    fflush(stdout);
    llmq_provider_t *an =
        s_provider("anthropic", "http://127.0.0.1:1/v1", S_TEST_KEY);
    llmq_provider_t *oa =
        s_provider("openai", "http://127.0.0.1:1/v1", S_TEST_KEY);
    cJSON *body = cJSON_Parse(
        "{\"model\":\"x\",\"max_tokens\":64,\"tool_choice\":\"required\","
        "\"messages\":[{\"role\":\"system\",\"content\":\"use tools\"},"
        "{\"role\":\"user\",\"content\":\"weather in Paris?\"}],"
        "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":"
        "\"get_weather\",\"description\":\"the weather\",\"parameters\":"
        "{\"type\":\"object\",\"properties\":{\"city\":{\"type\":"
        "\"string\"}}}}}]}");
    S_CHECK(body);
    llmq_call_t call = {LLMQ_OP_CHAT, "claude-3-5-haiku", false, body};
    llmq_provider_t *both[] = {an, oa};
    for (int i = 0; i < 2; i++) {
        llmq_http_t http;
        llmq_perr_t err;
        memset(&http, 0, sizeof http);
        S_CHECK(llmq_provider_build(both[i], &call, &http, &err) == 0);
        cJSON *realtime = cJSON_Parse(http.body);
        llmq_http_reset(&http);
        const llmq_batch_ops_t *api = llmq_provider_batch(both[i]);
        S_CHECK(api);
        cJSON *line = api->line(both[i], &call, "item-1", &err);
        S_CHECK(line && streq(s_str(line, "custom_id"), "item-1"));
        const cJSON *sent = cJSON_GetObjectItemCaseSensitive(line, "params");
        if (!sent)
            sent = cJSON_GetObjectItemCaseSensitive(line, "body");
        if (verbose) {
            char *text = cJSON_PrintUnformatted(line);
            printf("\n   %s", text);
            free(text);
        }
        /*  The batch line's body is the realtime body, tools and all. */
        S_CHECK(cJSON_Compare(sent, realtime, true));
        const cJSON *tools = cJSON_GetObjectItemCaseSensitive(sent, "tools");
        S_CHECK(cJSON_GetArraySize(tools) == 1);
        const cJSON *tool = cJSON_GetArrayItem(tools, 0);
        const char *name = s_str(tool, "name");
        if (!name)
            name = s_str(cJSON_GetObjectItemCaseSensitive(tool, "function"),
                         "name");
        S_CHECK(name && streq(name, "get_weather"));
        cJSON_Delete(line);
        cJSON_Delete(realtime);
    }
    /*  Anthropic's tools in its own words. */
    llmq_perr_t perr;
    cJSON *line = llmq_provider_batch(an)->line(an, &call, "item-1", &perr);
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(line, "params");
    const cJSON *tool = cJSON_GetArrayItem(
        cJSON_GetObjectItemCaseSensitive(params, "tools"), 0);
    S_CHECK(
        cJSON_IsObject(cJSON_GetObjectItemCaseSensitive(tool, "input_schema")));
    S_CHECK(streq(
        s_str(cJSON_GetObjectItemCaseSensitive(params, "tool_choice"), "type"),
        "any"));
    S_CHECK(streq(s_str(params, "system"), "use tools"));
    cJSON_Delete(line);
    cJSON_Delete(body);

    /*  HTTP 409 (and its neighbours) on a batch result line: the same
        code, retryability and status as a realtime answer. */
    int statuses[] = {400, 401, 404, 408, 409, 413, 422, 429, 500, 503};
    const char *ebody = "{\"error\":{\"message\":\"no\",\"type\":\"x\"}}";
    for (size_t i = 0; i < sizeof statuses / sizeof statuses[0]; i++) {
        llmq_perr_t rt;
        llmq_provider_classify(oa, statuses[i], ebody, strlen(ebody), &rt);
        char text[256];
        snprintf(text, sizeof text,
                 "{\"custom_id\":\"c\",\"response\":{\"status_code\":%d,"
                 "\"body\":%s}}",
                 statuses[i], ebody);
        cJSON *rl = cJSON_Parse(text);
        llmq_batch_answer_t r;
        S_CHECK(llmq_provider_batch(oa)->result(oa, rl, &r) == 0);
        S_CHECK(!r.body && streq(r.custom_id, "c"));
        S_CHECK(r.err.code == rt.code && r.err.retryable == rt.retryable &&
                r.err.status == statuses[i]);
        if (statuses[i] == 409)
            S_CHECK(r.err.code == LLMQ_ERR_PROVIDER_ERROR && r.err.retryable);
        llmq_batch_answer_reset(&r);
        cJSON_Delete(rl);
    }
    llmq_provider_destroy(&an);
    llmq_provider_destroy(&oa);
    printf("OK\n");
    return 0;
}
