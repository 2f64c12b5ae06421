/*  llmq_batch_api.c - the providers' Batch APIs, worker side (issue 8).

    Design. A task (one job.* message from the broker) is a short chain of
    HTTP calls, each a curl easy handle on the worker's multi handle:

      submit             [upload the input (POST {files})] -> create
                         (POST {batches})
      poll               get (GET {batches}/{id}), or list pages for a lookup
      fetch              get -> download the output and error files, or
                         download {batches}/{id}{results} -> answer
      cancel             cancel (POST {batches}/{id}/cancel) -> answer
      cancel (cleanup)   get -> delete the input, output and error files

    This file keeps only that sequence. What a provider's Batch API looks
    like (routes, one request as a batch line, a batch object as a status,
    one result line as an answer or a classified error, the auth headers)
    is the provider's, through its ops table (llmq_provider.h): the worker's
    provider object is borrowed, so a batch request reaches the provider
    through the same translation and its failures are classified by the
    same rules as a realtime request.

    When a call completes, s_on_call() looks at the task's step and either
    starts the next call or answers the broker and frees the task. A task
    keeps nothing after it answered: the broker holds every id.

    Failures are answered, never retried here: a failed task is a job.status
    with state "failed" and an error, and the broker decides (it retries
    polls later, looks a failed submit up before resubmitting).
*/
#include "llmq_batch_api.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <czmq.h>
#include <stdio.h>
#include <string.h>

#include "llmq_log.h"
#include "llmq_payload.h"
#include "llmq_sse.h"
#include "llmq_value.h"

#define S_MAX_RESPONSE (1024LL * 1024 * 1024) /* largest body we keep */
#define S_PAGE_BYTES (16LL * 1024 * 1024)     /* job.results payload cap */
#define S_LIST_PAGES 20                       /* lookup: pages of 100 */

/*  What a call is for. */
typedef enum {
    ST_UPLOAD,     /* POST {files} */
    ST_CREATE,     /* POST {batches} */
    ST_GET,        /* GET the batch */
    ST_LIST,       /* GET the list (lookup) */
    ST_DL_OUT,     /* the output file */
    ST_DL_ERR,     /* the error file */
    ST_DL_RESULTS, /* {batches}/{id}{results} */
    ST_CANCEL,     /* POST .../cancel */
    ST_DELETE      /* DELETE {files}/{id}, nobody waits */
} s_step_t;

typedef struct _llmq_batch_api_t self_t;

/*  One job.* task in progress. */
typedef struct {
    self_t *owner;        /* the class */
    llmq_msg_type_t type; /* JOB_SUBMIT, JOB_POLL, ... */
    char job[65];         /* the broker's job id */
    char pb[257];         /* provider batch id */
    char model[257];      /* submit: the job's model */
    llmq_op_t op;         /* submit: the job's op */
    int64_t time_ms;      /* lookup: when submitted */
    int64_t count;        /* lookup: items in the job */
    char output_file[257];
    char error_file[257];
    char uploaded[257];   /* submit: file to clean on error */
    char *upload;         /* submit: the input file */
    size_t upload_len;    /* its length */
    size_t upload_pos;    /* read position of curl */
    int pages;            /* lookup pages read */
    llmq_payload_t *page; /* fetch: the results page being built */
    int64_t page_count;   /* results in page */
    int64_t page_bytes;   /* their size */
    int64_t results;      /* fetch: results sent */
    bool cleanup;         /* job.cancel, mode cleanup */
} s_task_t;

/*  One HTTP call on the multi handle. */
typedef struct {
    self_t *owner;              /* the class */
    s_task_t *task;             /* NULL: fire and forget */
    s_step_t step;              /* what it is for */
    CURL *easy;                 /* its handle */
    struct curl_slist *headers; /* holds the key: never logged */
    curl_mime *mime;            /* upload form */
    char *body;                 /* request body (owned) */
    char *data;                 /* response body */
    size_t len, cap;            /* its length and allocation */
    bool too_big;               /* response over S_MAX_RESPONSE */
} s_call_t;

struct _llmq_batch_api_t {
    const llmq_provider_t *provider; /* the worker's (borrowed) */
    const llmq_batch_ops_t *api;     /* its Batch API */
    int64_t timeout_ms;              /* per transfer */
    int64_t results_page;            /* results per job.results */
    bool verbose;                    /* log each call */
    llmq_batch_api_cost_fn *cost;    /* result pricing, or NULL */
    void *cost_arg;                  /* for cost() */
    CURLM *multi;                    /* the worker's (borrowed) */
    llmq_batch_api_send_fn *send;    /* answers go here */
    void *send_arg;                  /* for send() */
    zlistx_t *calls;                 /* s_call_t * in flight */
    size_t tasks;                    /* tasks in progress */
};

/*  ---- helpers ----------------------------------------------------------- */

/*  text without the API key, cut to out (size bytes): provider error
    messages sometimes echo request headers. The scrub comes first. */
static void s_scrub(self_t *self, char *out, size_t size, const char *text)
{
    llmq_provider_scrub(self->provider, out, size, text);
}

/*  obj[key] as a string, or NULL. */
static const char *s_str(const cJSON *obj, const char *key)
{
    return llmq_json_str(obj, key);
}

static void s_task_destroy(s_task_t **task_p)
{
    s_task_t *t = *task_p;
    if (!t)
        return;
    free(t->upload);
    llmq_payload_destroy(&t->page);
    t->owner->tasks--;
    free(t);
    *task_p = NULL;
}

static void s_send(self_t *self, llmq_msg_t *msg)
{
    self->send(&msg, self->send_arg);
    llmq_msg_destroy(&msg); /* in case the callback did not take it */
}

/*  A job.status for the task (caller's). */
static llmq_msg_t *s_status_msg(s_task_t *t, const char *pb, const char *state)
{
    llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_JOB_STATUS);
    llmq_msg_set_job(m, t->job);
    llmq_msg_set_provider_batch(m, pb);
    llmq_msg_set_state(m, state);
    return m;
}

/*  Answer a failed task and free it. */
static void s_fail(s_task_t **task_p, llmq_err_t err, int status,
                   const char *message)
{
    s_task_t *t = *task_p;
    self_t *self = t->owner;
    llmq_msg_t *m = s_status_msg(t, t->pb, "failed");
    char text[512];
    s_scrub(self, text, sizeof text, message ? message : "failed");
    llmq_msg_set_failure(m, err, status, text);
    llmq_msg_clear(m, LLMQ_F_ok); /* set_failure is made for res */
    if (self->verbose)
        llmq_log(NULL, LLMQ_LOG_INFO, "batch_api_job_failed",
                 LLMQ_LOG_STR("job", t->job), LLMQ_LOG_STR("error", text),
                 LLMQ_LOG_STR("code", llmq_err_name(err)),
                 LLMQ_LOG_INT("status", status), LLMQ_LOG_END);
    s_send(self, m);
    s_task_destroy(task_p);
}

static size_t s_write_cb(char *ptr, size_t size, size_t nmemb, void *arg)
{
    s_call_t *c = arg;
    size_t n = size * nmemb;
    if (llmq_buf_append(&c->data, &c->len, &c->cap, ptr, n,
                        (size_t)S_MAX_RESPONSE)) {
        c->too_big = c->len + n + 1 > (size_t)S_MAX_RESPONSE;
        return 0; /* aborts the transfer */
    }
    return n;
}

/*  curl reads the upload from the task's buffer. */
static size_t s_read_cb(char *buffer, size_t size, size_t nitems, void *arg)
{
    s_task_t *t = arg;
    size_t n = size * nitems;
    size_t left = t->upload_len - t->upload_pos;
    if (n > left)
        n = left;
    memcpy(buffer, t->upload + t->upload_pos, n);
    t->upload_pos += n;
    return n;
}

static int s_seek_cb(void *arg, curl_off_t offset, int origin)
{
    s_task_t *t = arg;
    if (origin != SEEK_SET || offset < 0 || (size_t)offset > t->upload_len)
        return CURL_SEEKFUNC_FAIL;
    t->upload_pos = (size_t)offset;
    return CURL_SEEKFUNC_OK;
}

static void s_call_free(s_call_t **call_p)
{
    s_call_t *c = *call_p;
    if (!c)
        return;
    if (c->easy) {
        curl_multi_remove_handle(c->owner->multi, c->easy);
        curl_easy_cleanup(c->easy);
    }
    curl_slist_free_all(c->headers);
    if (c->mime)
        curl_mime_free(c->mime);
    free(c->body);
    free(c->data);
    free(c);
    *call_p = NULL;
}

/*  multipart/form-data: purpose=batch, file=<the input>, read by curl
    from the task (no copy of a file that may be 200 MB). */
static curl_mime *s_upload_form(CURL *easy, s_task_t *task)
{
    curl_mime *mime = curl_mime_init(easy);
    curl_mimepart *part = curl_mime_addpart(mime);
    curl_mime_name(part, "purpose");
    curl_mime_data(part, "batch", CURL_ZERO_TERMINATED);
    part = curl_mime_addpart(mime);
    curl_mime_name(part, "file");
    char filename[96];
    snprintf(filename, sizeof filename, "llmq-%s.jsonl", task->job);
    curl_mime_filename(part, filename);
    curl_mime_type(part, "application/jsonl");
    task->upload_pos = 0;
    curl_mime_data_cb(part, (curl_off_t)task->upload_len, s_read_cb, s_seek_cb,
                      NULL, task);
    return mime;
}

/*  The easy handle of a call: URL, callbacks, timeouts, the provider's
    auth headers, the body or form, the method. */
static int s_call_setup(s_call_t *c, const char *method, const char *route)
{
    self_t *self = c->owner;
    char *url = llmq_provider_url(self->provider, route);
    if (!url)
        return -1;
    curl_easy_setopt(c->easy, CURLOPT_URL, url);
    free(url);
    curl_easy_setopt(c->easy, CURLOPT_PRIVATE, c);
    curl_easy_setopt(c->easy, CURLOPT_WRITEFUNCTION, s_write_cb);
    curl_easy_setopt(c->easy, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(c->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c->easy, CURLOPT_TIMEOUT_MS, (long)self->timeout_ms);
    curl_easy_setopt(c->easy, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(c->easy, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(c->easy, CURLOPT_USERAGENT, "llmq-worker");
    c->headers = llmq_provider_auth(self->provider, NULL);
    if (c->body) {
        c->headers =
            curl_slist_append(c->headers, "Content-Type: application/json");
        curl_easy_setopt(c->easy, CURLOPT_POSTFIELDS, c->body);
        curl_easy_setopt(c->easy, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)strlen(c->body));
    }
    if (c->step == ST_UPLOAD && c->task && c->task->upload)
        c->mime = s_upload_form(c->easy, c->task);
    if (c->mime)
        curl_easy_setopt(c->easy, CURLOPT_MIMEPOST, c->mime);
    curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER, c->headers);
    if (streq(method, "POST") && !c->body && !c->mime)
        curl_easy_setopt(c->easy, CURLOPT_POSTFIELDS, "");
    else if (!streq(method, "GET") && !streq(method, "POST"))
        curl_easy_setopt(c->easy, CURLOPT_CUSTOMREQUEST, method);
    return 0;
}

/*  Start a call. body (JSON text, taken) may be NULL. Returns 0, or -1
    (nothing started; body freed). */
static int s_call(self_t *self, s_task_t *task, s_step_t step,
                  const char *method, const char *route, char *body)
{
    s_call_t *c = calloc(1, sizeof *c);
    if (!c) {
        free(body);
        return -1;
    }
    c->owner = self;
    c->task = task;
    c->step = step;
    c->body = body;
    c->easy = curl_easy_init();
    if (!c->easy || s_call_setup(c, method, route) ||
        curl_multi_add_handle(self->multi, c->easy) != CURLM_OK) {
        if (c->easy)
            curl_easy_cleanup(c->easy);
        c->easy = NULL;
        s_call_free(&c);
        return -1;
    }
    zlistx_add_end(self->calls, c);
    if (self->verbose)
        llmq_log(NULL, LLMQ_LOG_INFO, "batch_api_call",
                 LLMQ_LOG_STR("method", method),
                 LLMQ_LOG_STR("url", llmq_provider_base_url(self->provider)),
                 LLMQ_LOG_STR("route", route), LLMQ_LOG_END);
    return 0;
}

/*  Start a call for a task; on failure answer the task. Returns 0 or -1
    (task answered and freed). */
static int s_task_call(s_task_t **task_p, s_step_t step, const char *method,
                       const char *route, char *body)
{
    if (s_call((*task_p)->owner, *task_p, step, method, route, body)) {
        s_fail(task_p, LLMQ_ERR_INTERNAL, 0, "cannot start HTTP transfer");
        return -1;
    }
    return 0;
}

/*  GET {batches}/{pb}{suffix} for the task. */
static int s_task_get(s_task_t **task_p, s_step_t step, const char *suffix)
{
    s_task_t *t = *task_p;
    char route[400];
    snprintf(route, sizeof route, "%s/%s%s", t->owner->api->batches, t->pb,
             suffix);
    return s_task_call(task_p, step, "GET", route, NULL);
}

/*  ---- status ------------------------------------------------------------ */

/*  Answer a task with the batch's status and free the task. */
static void s_answer_status(s_task_t **task_p, const cJSON *batch)
{
    s_task_t *t = *task_p;
    self_t *self = t->owner;
    llmq_batch_status_t s;
    self->api->status(batch, &s);
    llmq_msg_t *m = s_status_msg(t, s.id ? s.id : t->pb, s.state);
    llmq_msg_set_counts_total(m, s.total);
    llmq_msg_set_counts_done(m, s.done);
    llmq_msg_set_counts_failed(m, s.failed);
    if (s.output_file && strlen(s.output_file) <= 256)
        llmq_msg_set_output_file(m, s.output_file);
    if (s.error_file && strlen(s.error_file) <= 256)
        llmq_msg_set_error_file(m, s.error_file);
    s_send(self, m);
    s_task_destroy(task_p);
}

/*  ---- submit ------------------------------------------------------------ */

/*  A growable text buffer for the input file / request body. */
typedef struct {
    char *data;
    size_t len, cap;
    bool failed;
} s_buf_t;

static void s_buf_add(s_buf_t *b, const char *text)
{
    if (!b->failed && llmq_buf_append(&b->data, &b->len, &b->cap, text,
                                      strlen(text), SIZE_MAX))
        b->failed = true;
}

typedef struct {
    s_task_t *task; /* the submit */
    s_buf_t buf;    /* the input so far */
    int64_t n;      /* lines in it */
    char err[300];  /* why an item was refused */
} s_build_t;

/*  One item -> one batch line, by the provider's translation. */
static int s_build_fn(const char *custom_id, const void *body, size_t body_size,
                      void *arg)
{
    s_build_t *b = arg;
    s_task_t *t = b->task;
    self_t *self = t->owner;
    cJSON *json = llmq_value_to_json(body, body_size, NULL, 0);
    if (!cJSON_IsObject(json)) {
        cJSON_Delete(json);
        snprintf(b->err, sizeof b->err, "item %s: body is not an object",
                 custom_id);
        return 1;
    }
    llmq_call_t call = {t->op, t->model, false, json};
    llmq_perr_t perr;
    cJSON *line = self->api->line(self->provider, &call, custom_id, &perr);
    cJSON_Delete(json);
    char *text = line ? cJSON_PrintUnformatted(line) : NULL;
    cJSON_Delete(line);
    if (!text) {
        snprintf(b->err, sizeof b->err, "item %.64s: %.200s", custom_id,
                 line ? "out of memory" : perr.message);
        return 1;
    }
    if (b->n > 0)
        s_buf_add(&b->buf, self->api->sep);
    s_buf_add(&b->buf, text);
    free(text);
    b->n++;
    return b->buf.failed;
}

/*  Returns 0 if the HTTP work started, 1 if the task was answered (failed)
    at once. */
static int s_start_submit(s_task_t **task_p, llmq_msg_t *msg)
{
    s_task_t *t = *task_p;
    const llmq_batch_ops_t *api = t->owner->api;
    if (t->op == LLMQ_OP_UNKNOWN || !(api->ops & (1u << t->op))) {
        s_fail(task_p, LLMQ_ERR_INVALID_REQUEST, 0,
               "op not supported by this provider's Batch API");
        return 1;
    }
    zframe_t *payload = llmq_msg_payload(msg);
    s_build_t b = {.task = t};
    s_buf_add(&b.buf, api->head);
    char err[128] = "";
    long n = payload ? llmq_value_each_item(zframe_data(payload),
                                            zframe_size(payload), s_build_fn,
                                            &b, err, sizeof err)
                     : -1;
    s_buf_add(&b.buf, api->tail);
    if (n <= 0 || *b.err || b.buf.failed || b.n != n) {
        char text[500];
        snprintf(text, sizeof text, "bad job items: %s",
                 *b.err         ? b.err
                 : *err         ? err
                 : b.buf.failed ? "out of memory"
                 : n == 0       ? "empty"
                                : "none");
        free(b.buf.data);
        s_fail(task_p, LLMQ_ERR_INVALID_REQUEST, 0, text);
        return 1;
    }
    if (!api->files)
        return s_task_call(task_p, ST_CREATE, "POST", api->batches, b.buf.data)
                   ? 1
                   : 0;
    /*  The input stays in the task and curl reads it from there. */
    t->upload = b.buf.data;
    t->upload_len = b.buf.len;
    return s_task_call(task_p, ST_UPLOAD, "POST", api->files, NULL) ? 1 : 0;
}

/*  ---- fetch ------------------------------------------------------------- */

/*  Pack one result map into the task's page; send the page when full. */
static void s_page_send(s_task_t *t, bool final);

static void s_result(s_task_t *t, const char *custom_id, bool ok,
                     const cJSON *body, llmq_err_t err, int64_t status,
                     const char *message, bool retryable, int64_t prompt_tokens,
                     int64_t completion_tokens)
{
    if (!t->page)
        t->page = llmq_payload_new();
    if (!t->page)
        return;
    self_t *self = t->owner;
    double cost = 0;
    if (self->cost && (prompt_tokens || completion_tokens)) {
        const char *model = *t->model ? t->model : NULL;
        if (!model && body)
            model = s_str(body, "model");
        if (model)
            cost = self->cost(model, prompt_tokens, completion_tokens,
                              self->cost_arg);
    }
    char text[1024];
    s_scrub(t->owner, text, sizeof text, message ? message : "");
    /*  A body too deep to encode goes out as nil, as it always did. */
    zframe_t *packed = ok && body ? llmq_value_from_json(body) : NULL;
    llmq_result_item_t item = {.custom_id = custom_id,
                               .ok = ok,
                               .body = packed ? zframe_data(packed) : NULL,
                               .body_size = packed ? zframe_size(packed) : 0,
                               .error_code = llmq_err_name(err),
                               .error_message = text,
                               .error_status = status,
                               .error_retryable = retryable,
                               .prompt_tokens = prompt_tokens,
                               .completion_tokens = completion_tokens,
                               .cost_usd = cost};
    t->page_bytes += (int64_t)llmq_payload_add_result(t->page, &item);
    zframe_destroy(&packed);
    t->page_count++;
    if (t->page_count >= t->owner->results_page ||
        t->page_bytes >= S_PAGE_BYTES)
        s_page_send(t, false);
}

static void s_page_send(s_task_t *t, bool final)
{
    if (!t->page)
        t->page = llmq_payload_new();
    zframe_t *frame = t->page ? llmq_payload_frame(t->page) : NULL;
    llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_JOB_RESULTS);
    llmq_msg_set_job(m, t->job);
    llmq_msg_set_provider_batch(m, t->pb);
    llmq_msg_set_final(m, final);
    llmq_msg_set_count(m, t->page_count);
    llmq_msg_set_payload(m, &frame);
    t->results += t->page_count;
    t->page_count = 0;
    t->page_bytes = 0;
    s_send(t->owner, m);
}

/*  One result line, read by the provider. */
static void s_line(s_task_t *t, const cJSON *line)
{
    self_t *self = t->owner;
    llmq_batch_answer_t r;
    if (self->api->result(self->provider, line, &r))
        return;
    if (r.body)
        s_result(t, r.custom_id, true, r.body, LLMQ_ERR_NONE, 0, NULL, false,
                 r.usage.prompt_tokens, r.usage.completion_tokens);
    else
        s_result(t, r.custom_id, false, NULL, r.err.code, r.err.status,
                 r.err.message, r.err.retryable, 0, 0);
    llmq_batch_answer_reset(&r);
}

/*  Parse a JSONL body line by line. */
static void s_jsonl(s_task_t *t, const char *data, size_t len)
{
    const char *p = data, *end = data + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        if (le > p) {
            cJSON *line = cJSON_ParseWithLength(p, (size_t)(le - p));
            if (line)
                s_line(t, line);
            cJSON_Delete(line);
        }
        p = le + 1;
    }
}

static void s_delete_file(self_t *self, const char *id)
{
    if (!id || !*id || !self->api->files)
        return;
    char route[300];
    snprintf(route, sizeof route, "%s/%s", self->api->files, id);
    /*  Nobody waits for it: a failed delete only leaves a file behind. */
    if (s_call(self, NULL, ST_DELETE, "DELETE", route, NULL))
        llmq_log(NULL, LLMQ_LOG_WARN, "batch_api_delete_failed",
                 LLMQ_LOG_STR("file", id), LLMQ_LOG_END);
}

/*  Fetch from files: download what is left, or answer. */
static void s_fetch_next(s_task_t **task_p)
{
    s_task_t *t = *task_p;
    const char *files = t->owner->api->files;
    char route[300];
    if (*t->output_file || *t->error_file) {
        bool out = *t->output_file;
        snprintf(route, sizeof route, "%s/%s/content", files,
                 out ? t->output_file : t->error_file);
        s_task_call(task_p, out ? ST_DL_OUT : ST_DL_ERR, "GET", route, NULL);
        return;
    }
    s_page_send(t, true);
    s_task_destroy(task_p);
}

/*  ---- call completion --------------------------------------------------- */

/*  The input is uploaded: create the batch over it. */
static void s_on_upload(s_task_t **task_p, const cJSON *json)
{
    s_task_t *t = *task_p;
    const llmq_batch_ops_t *api = t->owner->api;
    const char *id = llmq_json_str(json, "id");
    if (!id || strlen(id) > 256) {
        s_fail(task_p, LLMQ_ERR_PROVIDER_ERROR, 200,
               "file upload answer has no id");
        return;
    }
    snprintf(t->uploaded, sizeof t->uploaded, "%s", id);
    free(t->upload); /* uploaded: the memory can go now */
    t->upload = NULL;
    t->upload_len = 0;
    char *body = api->create(t->op, t->job, id);
    if (!body) {
        s_fail(task_p, LLMQ_ERR_INTERNAL, 0, "out of memory");
        return;
    }
    s_task_call(task_p, ST_CREATE, "POST", api->batches, body);
}

/*  The batch object: answer with its status, clean its files up, or fetch
    its result files. */
static void s_on_get(s_task_t **task_p, const cJSON *json)
{
    s_task_t *t = *task_p;
    self_t *self = t->owner;
    llmq_batch_status_t s;
    self->api->status(json, &s);
    if (t->cleanup) {
        /*  The broker has stored the results: the provider's copies can
            go. Deletes run on their own; the answer goes now. */
        s_delete_file(self, s.input_file);
        s_delete_file(self, s.output_file);
        s_delete_file(self, s.error_file);
    }
    if (t->type != LLMQ_MSG_JOB_FETCH) {
        s_answer_status(task_p, json);
        return;
    }
    if (s.output_file)
        snprintf(t->output_file, sizeof t->output_file, "%s", s.output_file);
    if (s.error_file)
        snprintf(t->error_file, sizeof t->error_file, "%s", s.error_file);
    s_fetch_next(task_p);
}

/*  One page of the provider's batches: find the job's, or read on. */
static void s_on_list(s_task_t **task_p, const cJSON *json)
{
    s_task_t *t = *task_p;
    const llmq_batch_ops_t *api = t->owner->api;
    const cJSON *b, *found = NULL;
    int candidates = 0;
    cJSON_ArrayForEach(b, cJSON_GetObjectItemCaseSensitive(json, "data"))
    {
        int match = api->match(b, t->job, t->count, t->time_ms);
        if (match) {
            found = b;
            candidates = match == 2 ? 1 : candidates + 1;
        }
        if (match == 2)
            break;
    }
    if (candidates == 1) {
        s_answer_status(task_p, found);
        return;
    }
    if (candidates > 1) {
        s_fail(task_p, LLMQ_ERR_INTERNAL, 0,
               "lookup is ambiguous: several provider batches match");
        return;
    }
    const char *last = llmq_json_str(json, "last_id");
    if (cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(json, "has_more")) &&
        last && ++t->pages < S_LIST_PAGES) {
        char route[400];
        snprintf(route, sizeof route, "%s?limit=100&%s=%s", api->batches,
                 api->after, last);
        s_task_call(task_p, ST_LIST, "GET", route, NULL);
        return;
    }
    /*  Proven absent: the broker may submit again. */
    s_fail(task_p, LLMQ_ERR_NOT_FOUND, 0, "no provider batch carries this job");
}

/*  A results file is in: answer its lines, then fetch on. */
static void s_on_download(s_call_t *c, s_task_t **task_p)
{
    s_task_t *t = *task_p;
    s_jsonl(t, c->data ? c->data : "", c->len);
    if (c->step == ST_DL_OUT)
        *t->output_file = 0;
    else if (c->step == ST_DL_ERR)
        *t->error_file = 0;
    if (c->step != ST_DL_RESULTS) {
        s_fetch_next(task_p);
        return;
    }
    s_page_send(t, true);
    s_task_destroy(task_p);
}

/*  The provider said no (HTTP status >= 300). */
static void s_on_http_error(s_call_t *c, s_task_t **task_p, long status)
{
    self_t *self = c->owner;
    if (c->step == ST_CANCEL && status == 409) {
        /*  Already ended or cancelling: report its state instead. */
        s_task_get(task_p, ST_GET, "");
        return;
    }
    /*  One classifier for realtime and batch calls. */
    llmq_perr_t err;
    llmq_provider_classify(self->provider, (int)status, c->data, c->len, &err);
    char text[700];
    if (strncmp(err.message, "HTTP ", 5) == 0)
        snprintf(text, sizeof text, "%s", err.message);
    else
        snprintf(text, sizeof text, "HTTP %ld: %s", status, err.message);
    if (c->step == ST_CREATE && *(*task_p)->uploaded)
        s_delete_file(self, (*task_p)->uploaded);
    s_fail(task_p, err.code, (int)status, text);
}

static void s_on_call(s_call_t *c, CURLcode result)
{
    long status = 0;
    curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status);
    s_task_t *t = c->task;
    if (!t) {
        if (result != CURLE_OK || status >= 300)
            llmq_log(NULL, LLMQ_LOG_WARN, "batch_api_cleanup_failed",
                     LLMQ_LOG_INT("status", status), LLMQ_LOG_END);
        return;
    }
    if (result != CURLE_OK) {
        llmq_perr_t err;
        llmq_classify_curl(result, c->too_big ? "response too large" : NULL,
                           &err);
        s_fail(&t, err.code, 0, err.message);
        return;
    }
    if (status < 200 || status >= 300) {
        s_on_http_error(c, &t, status);
        return;
    }
    if (c->step == ST_DL_OUT || c->step == ST_DL_ERR ||
        c->step == ST_DL_RESULTS) {
        s_on_download(c, &t);
        return;
    }
    cJSON *json = c->data ? cJSON_ParseWithLength(c->data, c->len) : NULL;
    if (!cJSON_IsObject(json))
        s_fail(&t, LLMQ_ERR_PROVIDER_ERROR, (int)status,
               "provider answered with malformed JSON");
    else if (c->step == ST_UPLOAD)
        s_on_upload(&t, json);
    else if (c->step == ST_CREATE && !llmq_json_str(json, "id"))
        s_fail(&t, LLMQ_ERR_PROVIDER_ERROR, (int)status,
               "batch create answer has no id");
    else if (c->step == ST_CREATE || c->step == ST_CANCEL)
        s_answer_status(&t, json);
    else if (c->step == ST_GET)
        s_on_get(&t, json);
    else if (c->step == ST_LIST)
        s_on_list(&t, json);
    cJSON_Delete(json);
}

/*  ---- lifecycle and entry points ---------------------------------------- */

llmq_batch_api_t *llmq_batch_api_new(const llmq_batch_api_config_t *cfg,
                                     CURLM *multi, llmq_batch_api_send_fn *send,
                                     void *arg)
{
    if (!cfg || !cfg->provider || !llmq_provider_batch(cfg->provider) ||
        !multi || !send)
        return NULL;
    self_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->provider = cfg->provider;
    self->api = llmq_provider_batch(cfg->provider);
    self->timeout_ms = cfg->timeout_ms > 0 ? cfg->timeout_ms : 600000;
    self->results_page = cfg->results_page > 0 ? cfg->results_page : 1000;
    self->verbose = cfg->verbose;
    self->multi = multi;
    self->send = send;
    self->send_arg = arg;
    self->calls = zlistx_new();
    return self;
}

void llmq_batch_api_set_cost(llmq_batch_api_t *self, llmq_batch_api_cost_fn *fn,
                             void *arg)
{
    self->cost = fn;
    self->cost_arg = arg;
}

void llmq_batch_api_destroy(llmq_batch_api_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    self_t *self = *self_p;
    s_call_t *c;
    /*  Tasks can own several calls over time but only one at a time:
        free each task with its call. */
    while ((c = zlistx_detach(self->calls, NULL))) {
        s_task_t *t = c->task;
        s_call_free(&c);
        s_task_destroy(&t);
    }
    zlistx_destroy(&self->calls);
    free(self);
    *self_p = NULL;
}

/*  A new task from a job.* message (NULL if out of memory). */
static s_task_t *s_task_new(self_t *self, llmq_msg_t *msg)
{
    s_task_t *t = calloc(1, sizeof *t);
    if (!t)
        return NULL;
    t->owner = self;
    self->tasks++;
    t->type = llmq_msg_type(msg);
    const char *pb = llmq_msg_provider_batch(msg);
    const char *model = llmq_msg_model(msg);
    const char *out = llmq_msg_output_file(msg);
    const char *err = llmq_msg_error_file(msg);
    snprintf(t->job, sizeof t->job, "%s",
             llmq_msg_job(msg) ? llmq_msg_job(msg) : "");
    snprintf(t->pb, sizeof t->pb, "%s", pb ? pb : "");
    snprintf(t->model, sizeof t->model, "%s", model ? model : "");
    snprintf(t->output_file, sizeof t->output_file, "%s", out ? out : "");
    snprintf(t->error_file, sizeof t->error_file, "%s", err ? err : "");
    t->op = llmq_op_from_name(llmq_msg_op(msg) ? llmq_msg_op(msg) : "chat");
    t->time_ms = llmq_msg_time_ms(msg);
    t->count = llmq_msg_count(msg);
    t->cleanup = t->type == LLMQ_MSG_JOB_CANCEL && llmq_msg_mode(msg) &&
                 streq(llmq_msg_mode(msg), "cleanup");
    return t;
}

/*  job.cancel: cancel the batch, or (cleanup) delete its files. */
static int s_start_cancel(s_task_t **task_p)
{
    s_task_t *t = *task_p;
    if (t->cleanup && (!t->owner->api->files || !*t->pb)) {
        /*  No files of ours at the provider (results inline expire on
            their own): nothing to delete. */
        s_send(t->owner, s_status_msg(t, t->pb, "completed"));
        s_task_destroy(task_p);
        return 1;
    }
    if (t->cleanup)
        return s_task_get(task_p, ST_GET, "") ? 1 : 0;
    if (!*t->pb) {
        s_fail(task_p, LLMQ_ERR_INVALID_REQUEST, 0, "cancel needs a batch id");
        return 1;
    }
    char route[400];
    snprintf(route, sizeof route, "%s/%s/cancel", t->owner->api->batches,
             t->pb);
    return s_task_call(task_p, ST_CANCEL, "POST", route, NULL) ? 1 : 0;
}

int llmq_batch_api_handle(llmq_batch_api_t *self, llmq_msg_t *msg)
{
    llmq_msg_type_t type = llmq_msg_type(msg);
    if (type != LLMQ_MSG_JOB_SUBMIT && type != LLMQ_MSG_JOB_POLL &&
        type != LLMQ_MSG_JOB_FETCH && type != LLMQ_MSG_JOB_CANCEL)
        return -1;
    s_task_t *t = s_task_new(self, msg);
    if (!t)
        return -1;
    /*  Ids go into URL paths: refuse anything but plain id characters. */
    for (const char *p = t->pb; *p; p++)
        if (!(isalnum((unsigned char)*p) || *p == '_' || *p == '-' ||
              *p == '.')) {
            s_fail(&t, LLMQ_ERR_INVALID_REQUEST, 0, "bad provider batch id");
            return 1;
        }
    char route[400];
    switch (type) {
    case LLMQ_MSG_JOB_SUBMIT:
        return s_start_submit(&t, msg);
    case LLMQ_MSG_JOB_POLL:
        if (*t->pb)
            return s_task_get(&t, ST_GET, "") ? 1 : 0;
        snprintf(route, sizeof route, "%s?limit=100", self->api->batches);
        return s_task_call(&t, ST_LIST, "GET", route, NULL) ? 1 : 0;
    case LLMQ_MSG_JOB_FETCH:
        if (!*t->pb) {
            s_fail(&t, LLMQ_ERR_INVALID_REQUEST, 0, "fetch needs a batch id");
            return 1;
        }
        if (self->api->results)
            return s_task_get(&t, ST_DL_RESULTS, self->api->results) ? 1 : 0;
        return s_task_get(&t, ST_GET, "") ? 1 : 0;
    default:
        return s_start_cancel(&t);
    }
}

bool llmq_batch_api_done(llmq_batch_api_t *self, CURL *easy, CURLcode result)
{
    s_call_t *c = NULL;
    void *handle = NULL;
    for (c = zlistx_first(self->calls); c; c = zlistx_next(self->calls))
        if (c->easy == easy) {
            handle = zlistx_cursor(self->calls);
            break;
        }
    if (!c)
        return false;
    zlistx_detach(self->calls, handle);
    s_on_call(c, result);
    s_call_free(&c);
    return true;
}

size_t llmq_batch_api_active(llmq_batch_api_t *self)
{
    return self->tasks;
}
