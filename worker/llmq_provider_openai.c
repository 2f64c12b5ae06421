/*  llmq_provider_openai.c - OpenAI and every OpenAI-compatible server
    (vLLM, llama.cpp server, Ollama, llmq-sim).

    Requests are already OpenAI-shaped: the provider only sets the model
    (the req header wins over the body), forces `stream` to what the worker
    relays, asks for usage in streams (stream_options.include_usage) and
    picks the route by op. Answers are passed through unchanged once they
    parse; usage is read from them.
*/
#include "llmq_provider.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *s_route(llmq_op_t op)
{
    switch (op) {
    case LLMQ_OP_CHAT:
        return "/chat/completions";
    case LLMQ_OP_COMPLETION:
        return "/completions";
    case LLMQ_OP_EMBEDDING:
        return "/embeddings";
    default:
        return NULL;
    }
}

/*  Authorization: Bearer. */
static struct curl_slist *s_auth(const llmq_provider_t *self,
                                 struct curl_slist *headers)
{
    return llmq_provider_key_header(self, headers, "Authorization: Bearer ");
}

/*  The request body: the call's model wins, stream as the worker relays;
    own (the call's body, ours to change) or a copy. Returns NULL (err set)
    on a bad call. */
static cJSON *s_body(const llmq_call_t *call, cJSON *own, llmq_perr_t *err)
{
    if (!s_route(call->op)) {
        llmq_perr_set(err, LLMQ_ERR_INVALID_REQUEST, 0, false, "unknown op");
        return NULL;
    }
    if (!cJSON_IsObject(call->body)) {
        llmq_perr_set(err, LLMQ_ERR_INVALID_REQUEST, 0, false,
                      "request payload must be a map (an OpenAI request body)");
        return NULL;
    }
    /*  The caller's tree when it lets us change it (the worker's, from
        the msgpack payload): no copy. */
    cJSON *body = own ? own : cJSON_Duplicate(call->body, true);
    if (!body) {
        llmq_perr_set(err, LLMQ_ERR_INTERNAL, 0, true, "out of memory");
        return NULL;
    }
    if (call->model && *call->model) {
        cJSON_DeleteItemFromObjectCaseSensitive(body, "model");
        cJSON_AddStringToObject(body, "model", call->model);
    }
    cJSON_DeleteItemFromObjectCaseSensitive(body, "stream");
    cJSON_DeleteItemFromObjectCaseSensitive(body, "stream_options");
    if (call->stream && call->op != LLMQ_OP_EMBEDDING) {
        cJSON_AddTrueToObject(body, "stream");
        cJSON *so = cJSON_AddObjectToObject(body, "stream_options");
        cJSON_AddTrueToObject(so, "include_usage");
    }
    return body;
}

static int s_build_own(const llmq_provider_t *self, const llmq_call_t *call,
                       cJSON *own, llmq_http_t *http, llmq_perr_t *err)
{
    cJSON *body = s_body(call, own, err);
    if (!body)
        return -1;
    char *text = cJSON_PrintUnformatted(body);
    if (body != own)
        cJSON_Delete(body);
    return llmq_http_post_text(self, s_route(call->op), text, call->stream,
                               http, err);
}

/*  The request body straight from the payload: its members but model
    (when the call names one), stream and stream_options, then those as
    s_body sets them: the text s_body's tree prints, without the tree. */
static int s_build_raw(const llmq_provider_t *self, const llmq_call_t *call,
                       const void *payload, size_t size, llmq_http_t *http,
                       llmq_perr_t *err)
{
    if (!s_route(call->op)) {
        llmq_perr_set(err, LLMQ_ERR_INVALID_REQUEST, 0, false, "unknown op");
        return -1;
    }
    static const char *const skip[] = {"stream", "stream_options", "model"};
    bool model = call->model && *call->model;
    llmq_value_buf_t b = {0};
    char why[128] = "";
    int64_t estimate = llmq_provider_default_max_tokens(self);
    int n = llmq_provider_json_except(&b, payload, size, skip, model ? 3 : 2,
                                      &estimate, why, sizeof why);
    if (n < 0) {
        free(b.data);
        llmq_perr_set(err, LLMQ_ERR_INVALID_REQUEST, 0, false,
                      "request payload must be a msgpack map: %s", why);
        return -1;
    }
    if (model) {
        if (n++)
            llmq_value_buf_add(&b, ",", 1);
        llmq_value_buf_add(&b, "\"model\":", 8);
        llmq_value_buf_str(&b, call->model, strlen(call->model));
    }
    static const char stream[] =
        "\"stream\":true,\"stream_options\":{\"include_usage\":true}";
    if (call->stream && call->op != LLMQ_OP_EMBEDDING) {
        if (n++)
            llmq_value_buf_add(&b, ",", 1);
        llmq_value_buf_add(&b, stream, sizeof stream - 1);
    }
    llmq_value_buf_add(&b, "}", 1);
    if (b.oom) {
        free(b.data);
        llmq_perr_set(err, LLMQ_ERR_INTERNAL, 0, true, "out of memory");
        return -1;
    }
    if (llmq_http_post_text(self, s_route(call->op), b.data, call->stream, http,
                            err))
        return -1;
    http->estimate = estimate;
    return 0;
}

static int s_build(const llmq_provider_t *self, const llmq_call_t *call,
                   llmq_http_t *http, llmq_perr_t *err)
{
    return s_build_own(self, call, NULL, http, err);
}

static cJSON *s_parse(const llmq_provider_t *self, const llmq_call_t *call,
                      const char *body, size_t size, llmq_usage_t *usage,
                      llmq_perr_t *err)
{
    (void)self;
    cJSON *json = cJSON_ParseWithLength(body, size);
    if (!cJSON_IsObject(json)) {
        cJSON_Delete(json);
        llmq_perr_set(err, LLMQ_ERR_PROVIDER_ERROR, 200, true,
                      "provider answered with malformed JSON (%zu bytes)",
                      size);
        return NULL;
    }
    const char *need = call->op == LLMQ_OP_EMBEDDING ? "data" : "choices";
    if (!cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(json, need))) {
        cJSON_Delete(json);
        llmq_perr_set(err, LLMQ_ERR_PROVIDER_ERROR, 200, true,
                      "provider answer has no '%s' array", need);
        return NULL;
    }
    llmq_usage_from_json(cJSON_GetObjectItemCaseSensitive(json, "usage"),
                         usage);
    return json;
}

/*  The answer passed through: JSON text to msgpack in one pass that also
    notes where the required array and the usage are (parse()'s checks
    without a tree or a second walk); the usage is read from its msgpack. */
static int s_pack(const llmq_provider_t *self, const llmq_call_t *call,
                  const char *body, size_t size, llmq_packer_t *packer,
                  llmq_usage_t *usage, llmq_perr_t *err)
{
    (void)self;
    const char *keys[2] = {call->op == LLMQ_OP_EMBEDDING ? "data" : "choices",
                           "usage"};
    llmq_value_ref_t found[2];
    if (llmq_packer_json_object_find(packer, body, size, keys, 2, found, NULL,
                                     0)) {
        llmq_perr_set(err, LLMQ_ERR_PROVIDER_ERROR, 200, true,
                      "provider answered with malformed JSON (%zu bytes)",
                      size);
        return -1;
    }
    if (found[0].kind != 'a') {
        llmq_packer_reset(packer);
        llmq_perr_set(err, LLMQ_ERR_PROVIDER_ERROR, 200, true,
                      "provider answer has no '%s' array", keys[0]);
        return -1;
    }
    if (found[1].kind == 'm')
        llmq_usage_from_msgpack(found[1].data, found[1].size, usage);
    return 0;
}

static int s_stream_event(llmq_stream_t *st, const char *event,
                          const char *data, size_t size, llmq_chunk_fn *emit,
                          void *arg, llmq_perr_t *err)
{
    (void)event;
    if (size == 6 && memcmp(data, "[DONE]", 6) == 0)
        return 1;
    cJSON *chunk = cJSON_ParseWithLength(data, size);
    if (!cJSON_IsObject(chunk)) {
        cJSON_Delete(chunk);
        llmq_perr_set(err, LLMQ_ERR_PROVIDER_ERROR, 200, true,
                      "provider streamed malformed JSON");
        return -1;
    }
    const cJSON *e = cJSON_GetObjectItemCaseSensitive(chunk, "error");
    if (e) {
        char *text = cJSON_PrintUnformatted(chunk);
        llmq_classify_http(st->provider, 500, text, text ? strlen(text) : 0,
                           err);
        free(text);
        llmq_provider_scrub(st->provider, err->message, sizeof err->message,
                            err->message);
        cJSON_Delete(chunk);
        return -1;
    }
    llmq_assembler_add(st->asm_, chunk);
    st->chunks++;
    int rc = emit ? emit(chunk, arg) : 0;
    cJSON_Delete(chunk);
    if (rc) {
        llmq_perr_set(err, LLMQ_ERR_CANCELLED, 0, false, "stream stopped");
        return -1;
    }
    return 0;
}

/*  --- Batch API: Files + Batches, one JSONL file per job --------------- */

/*  {custom_id, method, url, body}: the realtime body, never streamed. */
static cJSON *s_batch_line(const llmq_provider_t *self, const llmq_call_t *call,
                           const char *custom_id, llmq_perr_t *err)
{
    (void)self;
    llmq_call_t once = *call;
    once.stream = false;
    cJSON *body = s_body(&once, NULL, err);
    if (!body)
        return NULL;
    char url[64];
    snprintf(url, sizeof url, "/v1%s", s_route(call->op));
    cJSON *line = cJSON_CreateObject();
    cJSON_AddStringToObject(line, "custom_id", custom_id);
    cJSON_AddStringToObject(line, "method", "POST");
    cJSON_AddStringToObject(line, "url", url);
    cJSON_AddItemToObject(line, "body", body);
    return line;
}

/*  The batch over the uploaded file, tagged with the job for lookups. */
static char *s_batch_create(llmq_op_t op, const char *job, const char *file_id)
{
    char url[64];
    snprintf(url, sizeof url, "/v1%s", s_route(op) ? s_route(op) : "");
    cJSON *create = cJSON_CreateObject();
    cJSON_AddStringToObject(create, "input_file_id", file_id);
    cJSON_AddStringToObject(create, "endpoint", url);
    cJSON_AddStringToObject(create, "completion_window", "24h");
    cJSON *meta = cJSON_AddObjectToObject(create, "metadata");
    cJSON_AddStringToObject(meta, "llmq_job", job);
    char *text = cJSON_PrintUnformatted(create);
    cJSON_Delete(create);
    return text;
}

static void s_batch_status(const cJSON *b, llmq_batch_status_t *s)
{
    static const char *known[] = {"validating", "in_progress", "finalizing",
                                  "completed",  "failed",      "expired",
                                  "cancelling", "cancelled"};
    memset(s, 0, sizeof *s);
    s->id = llmq_json_str(b, "id");
    const char *st = llmq_json_str(b, "status");
    s->state = "in_progress";
    for (size_t i = 0; st && i < sizeof known / sizeof known[0]; i++)
        if (strcmp(st, known[i]) == 0)
            s->state = known[i];
    const cJSON *rc = cJSON_GetObjectItemCaseSensitive(b, "request_counts");
    s->total = llmq_json_int(rc, "total");
    s->done = llmq_json_int(rc, "completed");
    s->failed = llmq_json_int(rc, "failed");
    s->input_file = llmq_json_str(b, "input_file_id");
    s->output_file = llmq_json_str(b, "output_file_id");
    s->error_file = llmq_json_str(b, "error_file_id");
    s->created_ms = llmq_json_int(b, "created_at") * 1000;
}

/*  The create call tagged the batch with metadata {llmq_job}. */
static int s_batch_match(const cJSON *b, const char *job, int64_t count,
                         int64_t time_ms)
{
    (void)count;
    (void)time_ms;
    const char *tag = llmq_json_str(
        cJSON_GetObjectItemCaseSensitive(b, "metadata"), "llmq_job");
    return tag && strcmp(tag, job) == 0 ? 2 : 0;
}

/*  One line of the output or error file: {custom_id, response
    {status_code, body}, error}. */
static int s_batch_result(const llmq_provider_t *self, const cJSON *line,
                          llmq_batch_answer_t *r)
{
    memset(r, 0, sizeof *r);
    r->custom_id = llmq_json_str(line, "custom_id");
    if (!r->custom_id)
        return -1;
    const cJSON *resp = cJSON_GetObjectItemCaseSensitive(line, "response");
    const cJSON *error = cJSON_GetObjectItemCaseSensitive(line, "error");
    int status = (int)llmq_json_int(resp, "status_code");
    const cJSON *body = cJSON_GetObjectItemCaseSensitive(resp, "body");
    if (status == 200 && cJSON_IsObject(body)) {
        r->body = cJSON_Duplicate(body, true);
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(body, "usage");
        r->usage.prompt_tokens = llmq_json_int(u, "prompt_tokens");
        r->usage.completion_tokens = llmq_json_int(u, "completion_tokens");
        return 0;
    }
    if (cJSON_IsObject(error) && !cJSON_IsObject(resp)) {
        /*  The line never ran (batch_expired, cancelled): the same request
            can succeed later, so it is retryable. */
        const char *code = llmq_json_str(error, "code");
        const char *message = llmq_json_str(error, "message");
        llmq_perr_set(&r->err,
                      code && strstr(code, "expired")
                          ? LLMQ_ERR_DEADLINE_EXCEEDED
                          : LLMQ_ERR_PROVIDER_ERROR,
                      0, true, "batch line failed");
        /*  The provider's words: scrubbed before the cut to the buffer. */
        if (message)
            llmq_provider_scrub(self, r->err.message, sizeof r->err.message,
                                message);
        return 0;
    }
    /*  It ran and failed: the realtime classifier on its status and body. */
    char *text = body ? cJSON_PrintUnformatted(body) : NULL;
    llmq_provider_classify(self, status, text, text ? strlen(text) : 0,
                           &r->err);
    free(text);
    return 0;
}

static const llmq_batch_ops_t s_batch = {
    .batches = "/batches",
    .after = "after",
    .files = "/files",
    .results = NULL,
    .head = "",
    .sep = "\n",
    .tail = "\n",
    .ops =
        1u << LLMQ_OP_CHAT | 1u << LLMQ_OP_COMPLETION | 1u << LLMQ_OP_EMBEDDING,
    .line = s_batch_line,
    .create = s_batch_create,
    .status = s_batch_status,
    .match = s_batch_match,
    .result = s_batch_result,
};

const llmq_provider_ops_t llmq_provider_openai_ops = {
    .kind = "openai",
    .http = true,
    .build = s_build,
    .parse = s_parse,
    .stream_event = s_stream_event,
    .auth = s_auth,
    .batch = &s_batch,
    .pack = s_pack,
    .build_own = s_build_own,
    .build_raw = s_build_raw,
};
