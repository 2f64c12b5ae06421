/*  llmq_batch_api.c - the providers' Batch APIs, worker side (issue 8).

    Design. A task (one job.* message from the broker) is a short chain of
    HTTP calls, each a curl easy handle on the worker's multi handle:

      submit, OpenAI     upload (POST /files) -> create (POST /batches)
      submit, Anthropic  create (POST /messages/batches)
      poll               get (GET /batches/{id}), or list pages for a lookup
      fetch, OpenAI      get -> download output -> download errors -> answer
                         -> delete input, output and error files
      fetch, Anthropic   download results (GET .../{id}/results) -> answer
      cancel             cancel (POST .../{id}/cancel) -> get -> answer

    When a call completes, s_on_call() looks at the task's type and step and
    either starts the next call or answers the broker and frees the task. A
    task keeps nothing after it answered: the broker holds every id.

    Failures are answered, never retried here: a failed task is a job.status
    with state "failed" and an error, and the broker decides (it retries
    polls later, looks a failed submit up before resubmitting).
*/
#include "llmq_batch_api.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <czmq.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "llmq_value.h"

#define S_MAX_RESPONSE (1024LL * 1024 * 1024) /* largest body we keep */
#define S_PAGE_BYTES (16LL * 1024 * 1024)     /* job.results payload cap */
#define S_LIST_PAGES 20                       /* lookup: pages of 100 */

typedef enum { K_OPENAI, K_ANTHROPIC } s_kind_t;

/*  What a call is for. */
typedef enum {
    ST_UPLOAD,     /* POST /files */
    ST_CREATE,     /* POST /batches or /messages/batches */
    ST_GET,        /* GET the batch */
    ST_LIST,       /* GET the list (lookup) */
    ST_DL_OUT,     /* OpenAI output file */
    ST_DL_ERR,     /* OpenAI error file */
    ST_DL_RESULTS, /* Anthropic results */
    ST_CANCEL,     /* POST .../cancel */
    ST_DELETE      /* DELETE /files/{id}, nobody waits */
} s_step_t;

typedef struct _llmq_batch_api_t self_t;

/*  One job.* task in progress. */
typedef struct {
    self_t *owner;
    llmq_msg_type_t type; /* JOB_SUBMIT, JOB_POLL, ... */
    char job[65];
    char pb[257]; /* provider batch id */
    char model[257];
    char op[17];
    int64_t time_ms; /* lookup: when submitted */
    int64_t count;   /* lookup: items in the job */
    char output_file[257];
    char error_file[257];
    char uploaded[257]; /* submit: file to clean on error */
    char *create_body;  /* submit: JSON for the create call */
    char *upload;       /* submit: the JSONL file */
    size_t upload_len;
    size_t upload_pos;   /* read position of curl */
    int pages;           /* lookup pages read */
    llmq_packer_t *page; /* fetch: result maps being packed */
    int64_t page_count;
    int64_t page_bytes;
    int64_t results; /* fetch: results sent */
    bool cleanup;    /* job.cancel, mode cleanup */
} s_task_t;

/*  One HTTP call on the multi handle. */
typedef struct {
    self_t *owner;
    s_task_t *task; /* NULL: fire and forget */
    s_step_t step;
    CURL *easy;
    struct curl_slist *headers;
    curl_mime *mime;
    char *body; /* request body (owned) */
    char *data; /* response body */
    size_t len, cap;
    bool too_big; /* response over S_MAX_RESPONSE */
} s_call_t;

struct _llmq_batch_api_t {
    s_kind_t kind;  /* which API */
    char *base_url; /* with /v1, no trailing slash */
    char *api_key;  /* header only, never logged */
    char *version;  /* anthropic-version */
    int64_t default_max_tokens;
    int64_t timeout_ms;
    int64_t results_page;
    bool verbose;
    llmq_batch_api_cost_fn *cost; /* result pricing, or NULL */
    void *cost_arg;               /* for cost() */
    CURLM *multi;                 /* the worker's (borrowed) */
    llmq_batch_api_send_fn *send;
    void *send_arg;
    zlistx_t *calls; /* s_call_t * in flight */
    size_t tasks;    /* tasks in progress */
};

/*  ---- helpers ----------------------------------------------------------- */

static int64_t s_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*  Remove every occurrence of the API key from a text we are about to send
    or log: provider error messages sometimes echo request headers. */
static void s_scrub(self_t *self, char *text)
{
    size_t klen = self->api_key ? strlen(self->api_key) : 0;
    if (!text || klen < 4)
        return;
    char *p;
    while ((p = strstr(text, self->api_key)))
        memset(p, '*', klen);
}

static void s_task_destroy(s_task_t **task_p)
{
    s_task_t *t = *task_p;
    if (!t)
        return;
    free(t->create_body);
    free(t->upload);
    llmq_packer_destroy(&t->page);
    t->owner->tasks--;
    free(t);
    *task_p = NULL;
}

static void s_send(self_t *self, llmq_msg_t *msg)
{
    self->send(&msg, self->send_arg);
    llmq_msg_destroy(&msg); /* in case the callback did not take it */
}

/*  Answer a failed task and free it. */
static void s_fail(s_task_t **task_p, llmq_err_t err, int status,
                   const char *message)
{
    s_task_t *t = *task_p;
    self_t *self = t->owner;
    llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_JOB_STATUS);
    llmq_msg_set_job(m, t->job);
    llmq_msg_set_provider_batch(m, t->pb);
    llmq_msg_set_state(m, "failed");
    char text[512];
    snprintf(text, sizeof text, "%s", message ? message : "failed");
    s_scrub(self, text);
    llmq_msg_set_failure(m, err, status, text);
    llmq_msg_clear(m, LLMQ_F_ok); /* set_failure is made for res */
    if (self->verbose)
        zsys_info("batch api: job %s failed: %s (%s, %d)", t->job, text,
                  llmq_err_name(err), status);
    s_send(self, m);
    s_task_destroy(task_p);
}

/*  Classify an HTTP failure the protocol's way. */
static llmq_err_t s_classify(long status, const char *code)
{
    if (code && (strstr(code, "context_length") || strstr(code, "too long")))
        return LLMQ_ERR_CONTEXT_LENGTH;
    if (status == 401 || status == 403)
        return LLMQ_ERR_AUTH;
    if (status == 429)
        return LLMQ_ERR_RATE_LIMITED;
    if (status == 408)
        return LLMQ_ERR_TIMEOUT;
    if (status == 400 || status == 404 || status == 409 || status == 413 ||
        status == 422)
        return LLMQ_ERR_INVALID_REQUEST;
    return LLMQ_ERR_PROVIDER_ERROR;
}

/*  The provider's error message from an error body (OpenAI {error:
    {message, code}}, Anthropic {type: error, error: {type, message}}). */
static void s_error_text(const cJSON *json, char *msg, size_t size,
                         const char **code)
{
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(json, "error");
    const cJSON *m = cJSON_GetObjectItemCaseSensitive(e, "message");
    const cJSON *c = cJSON_GetObjectItemCaseSensitive(e, "code");
    if (!cJSON_IsString(c))
        c = cJSON_GetObjectItemCaseSensitive(e, "type");
    snprintf(msg, size, "%s", cJSON_IsString(m) ? m->valuestring : "");
    *code = cJSON_IsString(c) ? c->valuestring : NULL;
}

static size_t s_write_cb(char *ptr, size_t size, size_t nmemb, void *arg)
{
    s_call_t *c = arg;
    size_t n = size * nmemb;
    if (c->len + n + 1 > (size_t)S_MAX_RESPONSE) {
        c->too_big = true;
        return 0; /* aborts the transfer */
    }
    if (c->len + n + 1 > c->cap) {
        size_t cap = c->cap ? c->cap : 16384;
        while (cap < c->len + n + 1)
            cap *= 2;
        char *data = realloc(c->data, cap);
        if (!data)
            return 0;
        c->data = data;
        c->cap = cap;
    }
    memcpy(c->data + c->len, ptr, n);
    c->len += n;
    c->data[c->len] = 0;
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

/*  Start a call. body (JSON text, taken) or mime (taken) may be NULL.
    Returns 0, or -1 (nothing started; body and mime freed). */
static int s_call(self_t *self, s_task_t *task, s_step_t step,
                  const char *method, const char *route, char *body,
                  curl_mime *mime)
{
    s_call_t *c = calloc(1, sizeof *c);
    if (!c) {
        free(body);
        if (mime)
            curl_mime_free(mime);
        return -1;
    }
    c->owner = self;
    c->task = task;
    c->step = step;
    c->body = body;
    c->mime = mime;
    c->easy = curl_easy_init();
    if (!c->easy) {
        c->owner = self;
        s_call_free(&c);
        return -1;
    }
    char url[1024];
    snprintf(url, sizeof url, "%s%s", self->base_url, route);
    curl_easy_setopt(c->easy, CURLOPT_URL, url);
    curl_easy_setopt(c->easy, CURLOPT_PRIVATE, c);
    curl_easy_setopt(c->easy, CURLOPT_WRITEFUNCTION, s_write_cb);
    curl_easy_setopt(c->easy, CURLOPT_WRITEDATA, c);
    curl_easy_setopt(c->easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c->easy, CURLOPT_TIMEOUT_MS, (long)self->timeout_ms);
    curl_easy_setopt(c->easy, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
    curl_easy_setopt(c->easy, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(c->easy, CURLOPT_USERAGENT, "llmq-worker");
    char line[2048];
    if (self->kind == K_OPENAI) {
        snprintf(line, sizeof line, "Authorization: Bearer %s",
                 self->api_key ? self->api_key : "");
        c->headers = curl_slist_append(c->headers, line);
    } else {
        snprintf(line, sizeof line, "x-api-key: %s",
                 self->api_key ? self->api_key : "");
        c->headers = curl_slist_append(c->headers, line);
        snprintf(line, sizeof line, "anthropic-version: %s", self->version);
        c->headers = curl_slist_append(c->headers, line);
    }
    /*  The header line held the key: wipe the stack copy. */
    memset(line, 0, sizeof line);
    if (body) {
        c->headers =
            curl_slist_append(c->headers, "Content-Type: application/json");
        curl_easy_setopt(c->easy, CURLOPT_POSTFIELDS, body);
        curl_easy_setopt(c->easy, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)strlen(body));
    }
    if (step == ST_UPLOAD && task && task->upload) {
        /*  multipart/form-data: purpose=batch, file=<the JSONL>. */
        mime = c->mime = curl_mime_init(c->easy);
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
        curl_mime_data_cb(part, (curl_off_t)task->upload_len, s_read_cb,
                          s_seek_cb, NULL, task);
    }
    if (mime)
        curl_easy_setopt(c->easy, CURLOPT_MIMEPOST, mime);
    curl_easy_setopt(c->easy, CURLOPT_HTTPHEADER, c->headers);
    if (streq(method, "POST") && !body && !mime)
        curl_easy_setopt(c->easy, CURLOPT_POSTFIELDS, "");
    else if (!streq(method, "GET") && !streq(method, "POST"))
        curl_easy_setopt(c->easy, CURLOPT_CUSTOMREQUEST, method);
    if (curl_multi_add_handle(self->multi, c->easy) != CURLM_OK) {
        curl_easy_cleanup(c->easy);
        c->easy = NULL;
        s_call_free(&c);
        return -1;
    }
    zlistx_add_end(self->calls, c);
    if (self->verbose)
        zsys_info("batch api: %s %s%s", method, self->base_url, route);
    return 0;
}

/*  Start a call for a task; on failure answer the task. Returns 0 or -1
    (task answered and freed). */
static int s_task_call(s_task_t **task_p, s_step_t step, const char *method,
                       const char *route, char *body, curl_mime *mime)
{
    if (s_call((*task_p)->owner, *task_p, step, method, route, body, mime)) {
        s_fail(task_p, LLMQ_ERR_INTERNAL, 0, "cannot start HTTP transfer");
        return -1;
    }
    return 0;
}

/*  ---- status ------------------------------------------------------------ */

static int64_t s_int(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : 0;
}

static const char *s_str(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

/*  RFC 3339 (UTC, "2026-11-22T03:06:28.123Z") to ms; 0 if unreadable. */
static int64_t s_rfc3339_ms(const char *text)
{
    if (!text)
        return 0;
    struct tm tm = {0};
    double sec = 0;
    if (sscanf(text, "%d-%d-%dT%d:%d:%lf", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
               &tm.tm_hour, &tm.tm_min, &sec) != 6)
        return 0;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    tm.tm_sec = (int)sec;
    time_t t = timegm(&tm);
    return (int64_t)t * 1000 + (int64_t)((sec - (int)sec) * 1000);
}

/*  Normalised state and counts of a provider batch object. */
typedef struct {
    const char *state;
    int64_t total, done, failed;
    const char *id, *input_file, *output_file, *error_file;
    int64_t created_ms;
} s_status_t;

static void s_parse_status(self_t *self, const cJSON *b, s_status_t *s)
{
    memset(s, 0, sizeof *s);
    s->id = s_str(b, "id");
    if (self->kind == K_OPENAI) {
        const char *st = s_str(b, "status");
        static const char *known[] = {"validating", "in_progress", "finalizing",
                                      "completed",  "failed",      "expired",
                                      "cancelling", "cancelled"};
        s->state = "in_progress";
        for (size_t i = 0; st && i < sizeof known / sizeof known[0]; i++)
            if (streq(st, known[i]))
                s->state = known[i];
        const cJSON *rc = cJSON_GetObjectItemCaseSensitive(b, "request_counts");
        s->total = s_int(rc, "total");
        s->done = s_int(rc, "completed");
        s->failed = s_int(rc, "failed");
        s->input_file = s_str(b, "input_file_id");
        s->output_file = s_str(b, "output_file_id");
        s->error_file = s_str(b, "error_file_id");
        s->created_ms = s_int(b, "created_at") * 1000;
        return;
    }
    /*  Anthropic: in_progress | canceling | ended; an ended batch was
        cancelled if a cancel was initiated, expired if nothing ran. */
    const char *st = s_str(b, "processing_status");
    const cJSON *rc = cJSON_GetObjectItemCaseSensitive(b, "request_counts");
    int64_t ok = s_int(rc, "succeeded"), err = s_int(rc, "errored"),
            canceled = s_int(rc, "canceled"), expired = s_int(rc, "expired");
    s->total = s_int(rc, "processing") + ok + err + canceled + expired;
    s->done = ok;
    s->failed = err + canceled + expired;
    s->created_ms = s_rfc3339_ms(s_str(b, "created_at"));
    if (st && streq(st, "canceling"))
        s->state = "cancelling";
    else if (st && streq(st, "ended")) {
        if (s_str(b, "cancel_initiated_at"))
            s->state = "cancelled";
        else if (ok + err == 0 && expired > 0)
            s->state = "expired";
        else
            s->state = "completed";
    } else
        s->state = "in_progress";
}

/*  Answer a task with the batch's status and free the task. */
static void s_answer_status(s_task_t **task_p, const cJSON *batch)
{
    s_task_t *t = *task_p;
    self_t *self = t->owner;
    s_status_t s;
    s_parse_status(self, batch, &s);
    llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_JOB_STATUS);
    llmq_msg_set_job(m, t->job);
    llmq_msg_set_provider_batch(m, s.id ? s.id : t->pb);
    llmq_msg_set_state(m, s.state);
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

static const char *s_endpoint(const char *op)
{
    if (streq(op, "chat"))
        return "/v1/chat/completions";
    if (streq(op, "completion"))
        return "/v1/completions";
    if (streq(op, "embedding"))
        return "/v1/embeddings";
    return NULL;
}

/*  OpenAI chat body -> Anthropic Messages params. */
static cJSON *s_to_anthropic(self_t *self, const cJSON *body, const char *model)
{
    cJSON *p = cJSON_CreateObject();
    cJSON_AddStringToObject(p, "model", model);
    int64_t max_tokens = s_int(body, "max_tokens");
    if (max_tokens <= 0)
        max_tokens = s_int(body, "max_completion_tokens");
    if (max_tokens <= 0)
        max_tokens = self->default_max_tokens;
    cJSON_AddNumberToObject(p, "max_tokens", (double)max_tokens);
    const cJSON *msgs = cJSON_GetObjectItemCaseSensitive(body, "messages");
    cJSON *out = cJSON_AddArrayToObject(p, "messages");
    char *system = NULL;
    size_t system_len = 0;
    const cJSON *m;
    cJSON_ArrayForEach(m, msgs)
    {
        const char *role = s_str(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!role || !content)
            continue;
        if (streq(role, "system") || streq(role, "developer")) {
            if (cJSON_IsString(content)) {
                size_t n = strlen(content->valuestring);
                char *s = realloc(system, system_len + n + 2);
                if (!s)
                    continue;
                system = s;
                if (system_len)
                    system[system_len++] = '\n';
                memcpy(system + system_len, content->valuestring, n + 1);
                system_len += n;
            }
            continue;
        }
        cJSON *om = cJSON_CreateObject();
        cJSON_AddStringToObject(
            om, "role", streq(role, "assistant") ? "assistant" : "user");
        cJSON_AddItemToObject(om, "content", cJSON_Duplicate(content, true));
        cJSON_AddItemToArray(out, om);
    }
    if (system) {
        cJSON_AddStringToObject(p, "system", system);
        free(system);
    }
    static const char *copy[] = {"temperature", "top_p", "top_k"};
    for (size_t i = 0; i < sizeof copy / sizeof copy[0]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(body, copy[i]);
        if (cJSON_IsNumber(v))
            cJSON_AddNumberToObject(p, copy[i], v->valuedouble);
    }
    const cJSON *stop = cJSON_GetObjectItemCaseSensitive(body, "stop");
    if (cJSON_IsString(stop)) {
        cJSON *a = cJSON_AddArrayToObject(p, "stop_sequences");
        cJSON_AddItemToArray(a, cJSON_CreateString(stop->valuestring));
    } else if (cJSON_IsArray(stop))
        cJSON_AddItemToObject(p, "stop_sequences", cJSON_Duplicate(stop, true));
    return p;
}

/*  A growable text buffer for the JSONL file / request body. */
typedef struct {
    char *data;
    size_t len, cap;
    bool failed;
} s_buf_t;

static void s_buf_add(s_buf_t *b, const char *text, size_t n)
{
    if (b->failed)
        return;
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 65536;
        while (cap < b->len + n + 1)
            cap *= 2;
        char *d = realloc(b->data, cap);
        if (!d) {
            b->failed = true;
            return;
        }
        b->data = d;
        b->cap = cap;
    }
    memcpy(b->data + b->len, text, n);
    b->len += n;
    b->data[b->len] = 0;
}

typedef struct {
    s_task_t *task;
    s_buf_t buf;
    int64_t n;
    char err[160];
} s_build_t;

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
    cJSON *line = cJSON_CreateObject();
    cJSON_AddStringToObject(line, "custom_id", custom_id);
    if (self->kind == K_OPENAI) {
        /*  One model per file: the job's model wins over the item's. */
        cJSON_DeleteItemFromObjectCaseSensitive(json, "model");
        cJSON_AddStringToObject(json, "model", t->model);
        cJSON_AddStringToObject(line, "method", "POST");
        cJSON_AddStringToObject(line, "url", s_endpoint(t->op));
        cJSON_AddItemToObject(line, "body", json);
    } else {
        cJSON_AddItemToObject(line, "params",
                              s_to_anthropic(self, json, t->model));
        cJSON_Delete(json);
    }
    char *text = cJSON_PrintUnformatted(line);
    cJSON_Delete(line);
    if (!text) {
        snprintf(b->err, sizeof b->err, "out of memory");
        return 1;
    }
    if (self->kind == K_ANTHROPIC && b->n > 0)
        s_buf_add(&b->buf, ",", 1);
    s_buf_add(&b->buf, text, strlen(text));
    if (self->kind == K_OPENAI)
        s_buf_add(&b->buf, "\n", 1);
    free(text);
    b->n++;
    return b->buf.failed;
}

/*  Returns 0 if the HTTP work started, 1 if the task was answered (failed)
    at once. */
static int s_start_submit(s_task_t **task_p, llmq_msg_t *msg)
{
    s_task_t *t = *task_p;
    self_t *self = t->owner;
    if (!s_endpoint(t->op) ||
        (self->kind == K_ANTHROPIC && !streq(t->op, "chat"))) {
        s_fail(task_p, LLMQ_ERR_INVALID_REQUEST, 0,
               "op not supported by this provider's Batch API");
        return 1;
    }
    zframe_t *payload = llmq_msg_payload(msg);
    s_build_t b = {.task = t};
    if (self->kind == K_ANTHROPIC)
        s_buf_add(&b.buf, "{\"requests\":[", 13);
    char err[128] = "";
    long n = payload ? llmq_value_each_item(zframe_data(payload),
                                            zframe_size(payload), s_build_fn,
                                            &b, err, sizeof err)
                     : -1;
    if (n <= 0 || *b.err || b.buf.failed || b.n != n) {
        char text[300];
        snprintf(text, sizeof text, "bad job items: %s",
                 *b.err   ? b.err
                 : *err   ? err
                 : n == 0 ? "empty"
                          : "none");
        free(b.buf.data);
        s_fail(task_p, LLMQ_ERR_INVALID_REQUEST, 0, text);
        return 1;
    }
    if (self->kind == K_ANTHROPIC) {
        s_buf_add(&b.buf, "]}", 2);
        if (b.buf.failed) {
            free(b.buf.data);
            s_fail(task_p, LLMQ_ERR_INTERNAL, 0, "out of memory");
            return 1;
        }
        return s_task_call(task_p, ST_CREATE, "POST", "/messages/batches",
                           b.buf.data, NULL)
                   ? 1
                   : 0;
    }
    /*  OpenAI: the create call's body is ready now; the upload goes
        first. */
    cJSON *create = cJSON_CreateObject();
    cJSON_AddStringToObject(create, "endpoint", s_endpoint(t->op));
    cJSON_AddStringToObject(create, "completion_window", "24h");
    cJSON *meta = cJSON_AddObjectToObject(create, "metadata");
    cJSON_AddStringToObject(meta, "llmq_job", t->job);
    t->create_body = cJSON_PrintUnformatted(create);
    cJSON_Delete(create);

    /*  The JSONL stays in the task and curl reads it from there (no copy
        of a file that may be 200 MB). */
    t->upload = b.buf.data;
    t->upload_len = b.buf.len;
    if (!t->create_body) {
        s_fail(task_p, LLMQ_ERR_INTERNAL, 0, "out of memory");
        return 1;
    }
    return s_task_call(task_p, ST_UPLOAD, "POST", "/files", NULL, NULL) ? 1 : 0;
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
        t->page = llmq_packer_new();
    llmq_packer_t *p = t->page;
    size_t before = 0;
    llmq_packer_data(p, &before);
    llmq_packer_map(p, 4);
    llmq_packer_str(p, "custom_id");
    llmq_packer_str(p, custom_id);
    llmq_packer_str(p, "ok");
    llmq_packer_bool(p, ok);
    if (ok) {
        llmq_packer_str(p, "body");
        if (body)
            llmq_packer_json(p, body);
        else
            llmq_packer_nil(p);
    } else {
        char text[1024];
        snprintf(text, sizeof text, "%s", message ? message : "");
        s_scrub(t->owner, text);
        llmq_packer_str(p, "error");
        llmq_packer_map(p, 4);
        llmq_packer_str(p, "code");
        llmq_packer_str(p, llmq_err_name(err));
        llmq_packer_str(p, "message");
        llmq_packer_str(p, text);
        llmq_packer_str(p, "status");
        llmq_packer_int(p, status);
        llmq_packer_str(p, "retryable");
        llmq_packer_bool(p, retryable);
    }
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
    llmq_packer_str(p, "usage");
    llmq_packer_map(p, 4);
    llmq_packer_str(p, "prompt_tokens");
    llmq_packer_int(p, prompt_tokens);
    llmq_packer_str(p, "completion_tokens");
    llmq_packer_int(p, completion_tokens);
    llmq_packer_str(p, "total_tokens");
    llmq_packer_int(p, prompt_tokens + completion_tokens);
    llmq_packer_str(p, "cost_usd");
    llmq_packer_double(p, cost);
    size_t after = 0;
    llmq_packer_data(p, &after);
    t->page_count++;
    t->page_bytes += (int64_t)(after - before);
    if (t->page_count >= t->owner->results_page ||
        t->page_bytes >= S_PAGE_BYTES)
        s_page_send(t, false);
}

static void s_page_send(s_task_t *t, bool final)
{
    llmq_packer_t *out = llmq_packer_new();
    llmq_packer_array(out, (size_t)t->page_count);
    if (t->page) {
        size_t size = 0;
        const uint8_t *data = llmq_packer_data(t->page, &size);
        llmq_packer_raw(out, data, size);
        llmq_packer_reset(t->page);
    }
    zframe_t *frame = llmq_packer_frame(out);
    llmq_packer_destroy(&out);
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

/*  Anthropic message -> OpenAI chat.completion. */
static cJSON *s_from_anthropic(const cJSON *msg, int64_t *pt, int64_t *ct)
{
    cJSON *out = cJSON_CreateObject();
    const char *id = s_str(msg, "id");
    cJSON_AddStringToObject(out, "id", id ? id : "");
    cJSON_AddStringToObject(out, "object", "chat.completion");
    cJSON_AddNumberToObject(out, "created", (double)(s_wall_ms() / 1000));
    const char *model = s_str(msg, "model");
    cJSON_AddStringToObject(out, "model", model ? model : "");
    s_buf_t text = {0};
    const cJSON *block;
    cJSON_ArrayForEach(block, cJSON_GetObjectItemCaseSensitive(msg, "content"))
    {
        const char *type = s_str(block, "type");
        const char *t = s_str(block, "text");
        if (type && streq(type, "text") && t)
            s_buf_add(&text, t, strlen(t));
    }
    const char *stop = s_str(msg, "stop_reason");
    const char *finish = !stop                       ? "stop"
                         : streq(stop, "max_tokens") ? "length"
                         : streq(stop, "tool_use")   ? "tool_calls"
                                                     : "stop";
    cJSON *choices = cJSON_AddArrayToObject(out, "choices");
    cJSON *choice = cJSON_CreateObject();
    cJSON_AddNumberToObject(choice, "index", 0);
    cJSON *message = cJSON_AddObjectToObject(choice, "message");
    cJSON_AddStringToObject(message, "role", "assistant");
    cJSON_AddStringToObject(message, "content", text.data ? text.data : "");
    cJSON_AddStringToObject(choice, "finish_reason", finish);
    cJSON_AddItemToArray(choices, choice);
    free(text.data);
    const cJSON *usage = cJSON_GetObjectItemCaseSensitive(msg, "usage");
    *pt = s_int(usage, "input_tokens");
    *ct = s_int(usage, "output_tokens");
    cJSON *u = cJSON_AddObjectToObject(out, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", (double)*pt);
    cJSON_AddNumberToObject(u, "completion_tokens", (double)*ct);
    cJSON_AddNumberToObject(u, "total_tokens", (double)(*pt + *ct));
    return out;
}

/*  One line of an OpenAI output or error file. */
static void s_openai_line(s_task_t *t, const cJSON *line)
{
    const char *cid = s_str(line, "custom_id");
    if (!cid)
        return;
    const cJSON *resp = cJSON_GetObjectItemCaseSensitive(line, "response");
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(line, "error");
    int64_t status = s_int(resp, "status_code");
    const cJSON *body = cJSON_GetObjectItemCaseSensitive(resp, "body");
    if (status == 200 && cJSON_IsObject(body)) {
        const cJSON *usage = cJSON_GetObjectItemCaseSensitive(body, "usage");
        s_result(t, cid, true, body, LLMQ_ERR_NONE, 0, NULL, false,
                 s_int(usage, "prompt_tokens"),
                 s_int(usage, "completion_tokens"));
        return;
    }
    if (cJSON_IsObject(err) && !cJSON_IsObject(resp)) {
        /*  The line never ran (batch_expired, cancelled): the same request
            can succeed later, so it is retryable. */
        const char *code = s_str(err, "code");
        bool expired = code && strstr(code, "expired");
        s_result(t, cid, false, NULL,
                 expired ? LLMQ_ERR_DEADLINE_EXCEEDED : LLMQ_ERR_PROVIDER_ERROR,
                 0, s_str(err, "message"), true, 0, 0);
        return;
    }
    char msg[512];
    const char *code = NULL;
    s_error_text(body, msg, sizeof msg, &code);
    llmq_err_t e = s_classify((long)status, code);
    s_result(t, cid, false, NULL, e, status, *msg ? msg : "request failed",
             llmq_err_retryable(e), 0, 0);
}

/*  One line of Anthropic results. */
static void s_anthropic_line(s_task_t *t, const cJSON *line)
{
    const char *cid = s_str(line, "custom_id");
    const cJSON *result = cJSON_GetObjectItemCaseSensitive(line, "result");
    const char *type = s_str(result, "type");
    if (!cid || !type)
        return;
    if (streq(type, "succeeded")) {
        int64_t pt = 0, ct = 0;
        cJSON *body = s_from_anthropic(
            cJSON_GetObjectItemCaseSensitive(result, "message"), &pt, &ct);
        s_result(t, cid, true, body, LLMQ_ERR_NONE, 0, NULL, false, pt, ct);
        cJSON_Delete(body);
        return;
    }
    if (streq(type, "canceled")) {
        s_result(t, cid, false, NULL, LLMQ_ERR_CANCELLED, 0,
                 "batch cancelled before this request ran", false, 0, 0);
        return;
    }
    if (streq(type, "expired")) {
        s_result(t, cid, false, NULL, LLMQ_ERR_DEADLINE_EXCEEDED, 0,
                 "batch expired before this request ran", true, 0, 0);
        return;
    }
    /*  errored: {error: {type: error, error: {type, message}}} or the
        inner object directly. */
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(result, "error");
    const cJSON *inner = cJSON_GetObjectItemCaseSensitive(e, "error");
    if (cJSON_IsObject(inner))
        e = inner;
    const char *etype = s_str(e, "type");
    const char *message = s_str(e, "message");
    llmq_err_t err = LLMQ_ERR_PROVIDER_ERROR;
    int64_t status = 500;
    if (etype && (streq(etype, "invalid_request_error") ||
                  streq(etype, "not_found_error"))) {
        err = LLMQ_ERR_INVALID_REQUEST;
        status = streq(etype, "not_found_error") ? 404 : 400;
        if (message && strstr(message, "too long"))
            err = LLMQ_ERR_CONTEXT_LENGTH;
    } else if (etype && (streq(etype, "authentication_error") ||
                         streq(etype, "permission_error"))) {
        err = LLMQ_ERR_AUTH;
        status = streq(etype, "permission_error") ? 403 : 401;
    } else if (etype && streq(etype, "rate_limit_error")) {
        err = LLMQ_ERR_RATE_LIMITED;
        status = 429;
    } else if (etype && streq(etype, "overloaded_error"))
        status = 529;
    s_result(t, cid, false, NULL, err, status,
             message ? message : "request failed", llmq_err_retryable(err), 0,
             0);
}

/*  Parse a JSONL body line by line. */
static void s_jsonl(s_task_t *t, const char *data, size_t len,
                    void (*fn)(s_task_t *, const cJSON *))
{
    const char *p = data, *end = data + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        if (le > p) {
            cJSON *line = cJSON_ParseWithLength(p, (size_t)(le - p));
            if (line)
                fn(t, line);
            cJSON_Delete(line);
        }
        p = le + 1;
    }
}

static void s_delete_file(self_t *self, const char *id)
{
    if (!id || !*id)
        return;
    char route[300];
    snprintf(route, sizeof route, "/files/%s", id);
    /*  Nobody waits for it: a failed delete only leaves a file behind. */
    if (s_call(self, NULL, ST_DELETE, "DELETE", route, NULL, NULL))
        zsys_warning("batch api: cannot delete file %s", id);
}

/*  Fetch (OpenAI): download what is left, or answer and clean up. */
static void s_fetch_next(s_task_t **task_p)
{
    s_task_t *t = *task_p;
    char route[300];
    if (*t->output_file) {
        snprintf(route, sizeof route, "/files/%s/content", t->output_file);
        s_task_call(task_p, ST_DL_OUT, "GET", route, NULL, NULL);
        return;
    }
    if (*t->error_file) {
        snprintf(route, sizeof route, "/files/%s/content", t->error_file);
        s_task_call(task_p, ST_DL_ERR, "GET", route, NULL, NULL);
        return;
    }
    s_page_send(t, true);
    s_task_destroy(task_p);
}

/*  ---- call completion --------------------------------------------------- */

static void s_on_call(s_call_t *c, CURLcode result)
{
    self_t *self = c->owner;
    long status = 0;
    curl_easy_getinfo(c->easy, CURLINFO_RESPONSE_CODE, &status);
    if (!c->task) {
        if (result != CURLE_OK || status >= 300)
            zsys_warning("batch api: cleanup call failed (%ld)", status);
        return;
    }
    s_task_t *t = c->task;
    if (result != CURLE_OK) {
        char text[200];
        snprintf(text, sizeof text, "HTTP transfer failed: %s",
                 c->too_big ? "response too large"
                            : curl_easy_strerror(result));
        s_fail(&t,
               result == CURLE_OPERATION_TIMEDOUT ? LLMQ_ERR_TIMEOUT
                                                  : LLMQ_ERR_PROVIDER_ERROR,
               0, text);
        return;
    }
    cJSON *json = NULL;
    bool jsonl = c->step == ST_DL_OUT || c->step == ST_DL_ERR ||
                 c->step == ST_DL_RESULTS;
    if (!jsonl && c->data)
        json = cJSON_ParseWithLength(c->data, c->len);
    if (status < 200 || status >= 300) {
        char msg[512], text[700];
        const char *code = NULL;
        if (jsonl && c->data)
            json = cJSON_ParseWithLength(c->data, c->len);
        s_error_text(json, msg, sizeof msg, &code);
        llmq_err_t err = s_classify(status, code);
        if (c->step == ST_CANCEL && status == 409) {
            /*  Already ended or cancelling: report its state instead. */
            char route[300];
            snprintf(route, sizeof route, "%s/%s",
                     self->kind == K_OPENAI ? "/batches" : "/messages/batches",
                     t->pb);
            cJSON_Delete(json);
            s_task_call(&t, ST_GET, "GET", route, NULL, NULL);
            return;
        }
        snprintf(text, sizeof text, "HTTP %ld%s%s", status, *msg ? ": " : "",
                 msg);
        if (c->step == ST_CREATE && *t->uploaded)
            s_delete_file(self, t->uploaded);
        cJSON_Delete(json);
        s_fail(&t, err, (int)status, text);
        return;
    }
    if (!jsonl && !cJSON_IsObject(json)) {
        cJSON_Delete(json);
        s_fail(&t, LLMQ_ERR_PROVIDER_ERROR, (int)status,
               "provider answered with malformed JSON");
        return;
    }
    char route[300];
    switch (c->step) {
    case ST_UPLOAD: {
        const char *id = s_str(json, "id");
        if (!id || strlen(id) > 256) {
            cJSON_Delete(json);
            s_fail(&t, LLMQ_ERR_PROVIDER_ERROR, (int)status,
                   "file upload answer has no id");
            return;
        }
        snprintf(t->uploaded, sizeof t->uploaded, "%s", id);
        free(t->upload); /* uploaded: the memory can go now */
        t->upload = NULL;
        t->upload_len = 0;
        cJSON *create = cJSON_Parse(t->create_body);
        cJSON_AddStringToObject(create, "input_file_id", id);
        char *body = cJSON_PrintUnformatted(create);
        cJSON_Delete(create);
        cJSON_Delete(json);
        s_task_call(&t, ST_CREATE, "POST", "/batches", body, NULL);
        return;
    }
    case ST_CREATE:
        if (!s_str(json, "id")) {
            cJSON_Delete(json);
            s_fail(&t, LLMQ_ERR_PROVIDER_ERROR, (int)status,
                   "batch create answer has no id");
            return;
        }
        s_answer_status(&t, json);
        cJSON_Delete(json);
        return;
    case ST_CANCEL:
        s_answer_status(&t, json);
        cJSON_Delete(json);
        return;
    case ST_GET:
        if (t->cleanup) {
            /*  The broker has stored the results: the provider's copies
                can go. Deletes run on their own; the answer goes now. */
            s_status_t s;
            s_parse_status(self, json, &s);
            s_delete_file(self, s.input_file);
            s_delete_file(self, s.output_file);
            s_delete_file(self, s.error_file);
            s_answer_status(&t, json);
            cJSON_Delete(json);
            return;
        }
        if (t->type != LLMQ_MSG_JOB_FETCH || self->kind != K_OPENAI) {
            s_answer_status(&t, json);
            cJSON_Delete(json);
            return;
        }
        {
            s_status_t s;
            s_parse_status(self, json, &s);
            if (s.output_file)
                snprintf(t->output_file, sizeof t->output_file, "%s",
                         s.output_file);
            if (s.error_file)
                snprintf(t->error_file, sizeof t->error_file, "%s",
                         s.error_file);
        }
        cJSON_Delete(json);
        s_fetch_next(&t);
        return;
    case ST_LIST: {
        const cJSON *data = cJSON_GetObjectItemCaseSensitive(json, "data");
        const cJSON *b, *found = NULL;
        int candidates = 0;
        cJSON_ArrayForEach(b, data)
        {
            if (self->kind == K_OPENAI) {
                const cJSON *meta =
                    cJSON_GetObjectItemCaseSensitive(b, "metadata");
                const char *tag = s_str(meta, "llmq_job");
                if (tag && streq(tag, t->job)) {
                    found = b;
                    candidates = 1;
                    break;
                }
            } else {
                /*  No metadata at Anthropic: same request count, created
                    within 10 minutes of the recorded submit. */
                s_status_t s;
                s_parse_status(self, b, &s);
                int64_t skew = s.created_ms - t->time_ms;
                if (s.total == t->count &&
                    (t->time_ms == 0 || (skew > -600000 && skew < 600000))) {
                    found = b;
                    candidates++;
                }
            }
        }
        if (candidates == 1) {
            s_answer_status(&t, found);
            cJSON_Delete(json);
            return;
        }
        if (candidates > 1) {
            cJSON_Delete(json);
            s_fail(&t, LLMQ_ERR_INTERNAL, 0,
                   "lookup is ambiguous: several provider batches match");
            return;
        }
        const cJSON *more = cJSON_GetObjectItemCaseSensitive(json, "has_more");
        const char *last = s_str(json, "last_id");
        if (cJSON_IsTrue(more) && last && ++t->pages < S_LIST_PAGES) {
            snprintf(route, sizeof route, "%s?limit=100&%s=%s",
                     self->kind == K_OPENAI ? "/batches" : "/messages/batches",
                     self->kind == K_OPENAI ? "after" : "after_id", last);
            cJSON_Delete(json);
            s_task_call(&t, ST_LIST, "GET", route, NULL, NULL);
            return;
        }
        cJSON_Delete(json);
        /*  Proven absent: the broker may submit again. */
        s_fail(&t, LLMQ_ERR_NOT_FOUND, 0, "no provider batch carries this job");
        return;
    }
    case ST_DL_OUT:
    case ST_DL_ERR:
        s_jsonl(t, c->data ? c->data : "", c->len, s_openai_line);
        if (c->step == ST_DL_OUT)
            *t->output_file = 0;
        else
            *t->error_file = 0;
        s_fetch_next(&t);
        return;
    case ST_DL_RESULTS:
        s_jsonl(t, c->data ? c->data : "", c->len, s_anthropic_line);
        s_page_send(t, true);
        s_task_destroy(&t);
        return;
    case ST_DELETE:
        break;
    }
    cJSON_Delete(json);
}

/*  ---- lifecycle and entry points ------------------------------------------
 */

llmq_batch_api_t *llmq_batch_api_new(const llmq_batch_api_config_t *cfg,
                                     CURLM *multi, llmq_batch_api_send_fn *send,
                                     void *arg)
{
    if (!cfg || !cfg->kind || !cfg->base_url || !*cfg->base_url || !multi ||
        !send)
        return NULL;
    s_kind_t kind;
    if (streq(cfg->kind, "openai") || streq(cfg->kind, "sim"))
        kind = K_OPENAI;
    else if (streq(cfg->kind, "anthropic"))
        kind = K_ANTHROPIC;
    else
        return NULL;
    self_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->kind = kind;
    self->base_url = strdup(cfg->base_url);
    size_t n = strlen(self->base_url);
    while (n > 0 && self->base_url[n - 1] == '/')
        self->base_url[--n] = 0;
    self->api_key = strdup(cfg->api_key ? cfg->api_key : "");
    self->version =
        strdup(cfg->anthropic_version ? cfg->anthropic_version : "2023-06-01");
    self->default_max_tokens =
        cfg->default_max_tokens > 0 ? cfg->default_max_tokens : 1024;
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
    if (self->api_key)
        memset(self->api_key, 0, strlen(self->api_key));
    free(self->api_key);
    free(self->base_url);
    free(self->version);
    free(self);
    *self_p = NULL;
}

int llmq_batch_api_handle(llmq_batch_api_t *self, llmq_msg_t *msg)
{
    llmq_msg_type_t type = llmq_msg_type(msg);
    if (type != LLMQ_MSG_JOB_SUBMIT && type != LLMQ_MSG_JOB_POLL &&
        type != LLMQ_MSG_JOB_FETCH && type != LLMQ_MSG_JOB_CANCEL)
        return -1;
    s_task_t *t = calloc(1, sizeof *t);
    if (!t)
        return -1;
    t->owner = self;
    self->tasks++;
    t->type = type;
    snprintf(t->job, sizeof t->job, "%s",
             llmq_msg_job(msg) ? llmq_msg_job(msg) : "");
    snprintf(t->pb, sizeof t->pb, "%s",
             llmq_msg_provider_batch(msg) ? llmq_msg_provider_batch(msg) : "");
    snprintf(t->model, sizeof t->model, "%s",
             llmq_msg_model(msg) ? llmq_msg_model(msg) : "");
    snprintf(t->op, sizeof t->op, "%s",
             llmq_msg_op(msg) ? llmq_msg_op(msg) : "chat");
    t->time_ms = llmq_msg_time_ms(msg);
    t->count = llmq_msg_count(msg);
    if (llmq_msg_output_file(msg))
        snprintf(t->output_file, sizeof t->output_file, "%s",
                 llmq_msg_output_file(msg));
    if (llmq_msg_error_file(msg))
        snprintf(t->error_file, sizeof t->error_file, "%s",
                 llmq_msg_error_file(msg));
    /*  Ids go into URL paths: refuse anything but plain id characters. */
    for (const char *p = t->pb; *p; p++)
        if (!(isalnum((unsigned char)*p) || *p == '_' || *p == '-' ||
              *p == '.')) {
            s_fail(&t, LLMQ_ERR_INVALID_REQUEST, 0, "bad provider batch id");
            return 1;
        }
    const char *base =
        self->kind == K_OPENAI ? "/batches" : "/messages/batches";
    char route[400];
    int rc = 0;
    switch (type) {
    case LLMQ_MSG_JOB_SUBMIT:
        return s_start_submit(&t, msg);
    case LLMQ_MSG_JOB_POLL:
        if (!*t->pb) {
            snprintf(route, sizeof route, "%s?limit=100", base);
            rc = s_task_call(&t, ST_LIST, "GET", route, NULL, NULL);
        } else {
            snprintf(route, sizeof route, "%s/%s", base, t->pb);
            rc = s_task_call(&t, ST_GET, "GET", route, NULL, NULL);
        }
        break;
    case LLMQ_MSG_JOB_FETCH:
        if (!*t->pb) {
            s_fail(&t, LLMQ_ERR_INVALID_REQUEST, 0, "fetch needs a batch id");
            return 1;
        }
        snprintf(route, sizeof route, "%s/%s%s", base, t->pb,
                 self->kind == K_OPENAI ? "" : "/results");
        rc = s_task_call(&t, self->kind == K_OPENAI ? ST_GET : ST_DL_RESULTS,
                         "GET", route, NULL, NULL);
        break;
    case LLMQ_MSG_JOB_CANCEL:
        t->cleanup = llmq_msg_mode(msg) && streq(llmq_msg_mode(msg), "cleanup");
        if (t->cleanup && (self->kind == K_ANTHROPIC || !*t->pb)) {
            /*  Anthropic keeps no files of ours (its results expire on
                their own): nothing to delete. */
            llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_JOB_STATUS);
            llmq_msg_set_job(m, t->job);
            llmq_msg_set_provider_batch(m, t->pb);
            llmq_msg_set_state(m, "completed");
            s_send(self, m);
            s_task_destroy(&t);
            return 1;
        }
        if (t->cleanup) {
            snprintf(route, sizeof route, "%s/%s", base, t->pb);
            rc = s_task_call(&t, ST_GET, "GET", route, NULL, NULL);
            break;
        }
        if (!*t->pb) {
            s_fail(&t, LLMQ_ERR_INVALID_REQUEST, 0, "cancel needs a batch id");
            return 1;
        }
        snprintf(route, sizeof route, "%s/%s/cancel", base, t->pb);
        rc = s_task_call(&t, ST_CANCEL, "POST", route, NULL, NULL);
        break;
    default:
        break;
    }
    return rc ? 1 : 0;
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

/*  ---- selftest ----------------------------------------------------------- */

#include "llmq_check.h"
#define S_CHECK(expr) LLMQ_CHECK(expr)

#define S_TEST_KEY "sk-test-SECRET-key-1234"

/*  Start llmq-sim on an ephemeral port; wait for its ready line (with a
    timeout, no sleeps). Returns the pid and fills url. */
static pid_t s_sim_start(char *url, size_t size)
{
    const char *dir = getenv("LLMQ_BIN_DIR");
    char path[512];
    snprintf(path, sizeof path, "%s/llmq-sim", dir ? dir : ".");
    if (access(path, X_OK) != 0) {
        fprintf(stderr, "llmq-sim not found at %s (set LLMQ_BIN_DIR)\n", path);
        return -1;
    }
    int fds[2];
    S_CHECK(pipe(fds) == 0);
    pid_t pid = fork();
    S_CHECK(pid >= 0);
    if (pid == 0) {
        /*  If the test dies (a failed check aborts), the sim goes too. */
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        dup2(fds[1], 1);
        close(fds[0]);
        close(fds[1]);
        execl(path, "llmq-sim", "--port", "0", "--quiet", "--api-key",
              S_TEST_KEY, "--batch-validate-ms", "30", "--batch-progress-ms",
              "150", "--batch-finalize-ms", "30", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    char line[512] = "";
    size_t len = 0;
    struct timespec start;
    clock_gettime(CLOCK_MONOTONIC, &start);
    while (len < sizeof line - 1 && !strchr(line, '\n')) {
        struct pollfd pfd = {.fd = fds[0], .events = POLLIN};
        int rc = poll(&pfd, 1, 10000);
        if (rc <= 0)
            break;
        ssize_t n = read(fds[0], line + len, sizeof line - 1 - len);
        if (n <= 0)
            break;
        len += (size_t)n;
        line[len] = 0;
    }
    close(fds[0]);
    const char *u = strstr(line, "url=");
    if (strncmp(line, "ready llmq-sim", 14) != 0 || !u) {
        kill(pid, SIGTERM);
        waitpid(pid, NULL, 0);
        return -1;
    }
    snprintf(url, size, "%.*s", (int)strcspn(u + 4, " \r\n"), u + 4);
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

static llmq_msg_t *s_test_task(llmq_msg_type_t type, const char *job,
                               const char *pb)
{
    llmq_msg_t *m = llmq_msg_new(type);
    llmq_msg_set_job(m, job);
    if (pb)
        llmq_msg_set_provider_batch(m, pb);
    return m;
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

/*  A blocking GET for the test's own checks. */
static cJSON *s_http_get(const char *url)
{
    CURL *easy = curl_easy_init();
    s_call_t c = {0};
    struct curl_slist *h =
        curl_slist_append(NULL, "Authorization: Bearer " S_TEST_KEY);
    curl_easy_setopt(easy, CURLOPT_URL, url);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, h);
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, s_write_cb);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, &c);
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, 10000L);
    S_CHECK(curl_easy_perform(easy) == CURLE_OK);
    curl_easy_cleanup(easy);
    curl_slist_free_all(h);
    cJSON *json = c.data ? cJSON_ParseWithLength(c.data, c.len) : NULL;
    free(c.data);
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

    /*  Bad configs. */
    llmq_batch_api_config_t cfg = {.kind = "openai",
                                   .base_url = base,
                                   .api_key = S_TEST_KEY,
                                   .results_page = 64,
                                   .verbose = verbose};
    llmq_batch_api_config_t bad = cfg;
    bad.kind = "cohere";
    S_CHECK(llmq_batch_api_new(&bad, multi, s_test_send, &sink) == NULL);
    bad = cfg;
    bad.base_url = "";
    S_CHECK(llmq_batch_api_new(&bad, multi, s_test_send, &sink) == NULL);

    llmq_batch_api_t *oa = llmq_batch_api_new(&cfg, multi, s_test_send, &sink);
    llmq_batch_api_set_cost(oa, s_test_cost, NULL);
    cfg.kind = "anthropic";
    llmq_batch_api_t *an = llmq_batch_api_new(&cfg, multi, s_test_send, &sink);
    llmq_batch_api_config_t wrong = cfg;
    wrong.kind = "openai";
    wrong.api_key = "sk-wrong-key-99999999";
    llmq_batch_api_t *wk =
        llmq_batch_api_new(&wrong, multi, s_test_send, &sink);
    llmq_batch_api_config_t down = cfg;
    down.kind = "openai";
    down.base_url = "http://127.0.0.1:1/v1";
    llmq_batch_api_t *dn = llmq_batch_api_new(&down, multi, s_test_send, &sink);
    S_CHECK(oa && an && wk && dn);
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

    /*  Cancel: a batch with a line that never answers can only end by
        cancel; the partial results come back. */
    task = s_test_task(LLMQ_MSG_JOB_SUBMIT, "job-oa-2", NULL);
    llmq_msg_set_model(task, "gpt-4o-mini");
    llmq_msg_set_op(task, "chat");
    llmq_packer_t *p = llmq_packer_new();
    llmq_packer_array(p, 2);
    for (int i = 0; i < 2; i++) {
        llmq_packer_map(p, 2);
        llmq_packer_str(p, "custom_id");
        llmq_packer_str(p, i ? "1" : "0");
        llmq_packer_str(p, "body");
        llmq_packer_map(p, 1);
        llmq_packer_str(p, "messages");
        llmq_packer_array(p, 1);
        llmq_packer_map(p, 2);
        llmq_packer_str(p, "role");
        llmq_packer_str(p, "user");
        llmq_packer_str(p, "content");
        llmq_packer_str(p, i ? "stuck [[sim:hang=1]]" : "fine");
    }
    items = llmq_packer_frame(p);
    llmq_packer_destroy(&p);
    llmq_msg_set_payload(task, &items);
    st = s_run_task(multi, apis, oa, &sink, task);
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
