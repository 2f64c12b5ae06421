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

static char *s_url(const llmq_provider_t *self, const char *route)
{
    const char *base = llmq_provider_base_url(self);
    size_t n = strlen(base) + strlen(route) + 1;
    char *url = malloc(n);
    if (url)
        snprintf(url, n, "%s%s", base, route);
    return url;
}

/*  Authorization header; the only place the key is formatted. */
static struct curl_slist *s_auth(const llmq_provider_t *self,
                                 struct curl_slist *headers)
{
    const char *key = llmq_provider_api_key(self);
    if (key && *key) {
        size_t n = strlen(key) + 32;
        char *h = malloc(n);
        if (!h)
            return headers;
        snprintf(h, n, "Authorization: Bearer %s", key);
        headers = curl_slist_append(headers, h);
        memset(h, 0, n);
        free(h);
    }
    return headers;
}

static int s_build(const llmq_provider_t *self, const llmq_call_t *call,
                   llmq_http_t *http, llmq_perr_t *err)
{
    const char *route = s_route(call->op);
    if (!route) {
        llmq_perr_set(err, LLMQ_ERR_INVALID_REQUEST, 0, false, "unknown op");
        return -1;
    }
    if (!cJSON_IsObject(call->body)) {
        llmq_perr_set(err, LLMQ_ERR_INVALID_REQUEST, 0, false,
                      "request payload must be a map (an OpenAI request body)");
        return -1;
    }
    cJSON *body = cJSON_Duplicate(call->body, true);
    if (!body) {
        llmq_perr_set(err, LLMQ_ERR_INTERNAL, 0, true, "out of memory");
        return -1;
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
    http->body = cJSON_PrintUnformatted(body);
    cJSON_Delete(body);
    http->url = s_url(self, route);
    if (!http->body || !http->url) {
        llmq_http_reset(http);
        llmq_perr_set(err, LLMQ_ERR_INTERNAL, 0, true, "out of memory");
        return -1;
    }
    http->body_len = strlen(http->body);
    http->post = true;
    http->headers = curl_slist_append(NULL, "Content-Type: application/json");
    http->headers = curl_slist_append(http->headers, "Expect:");
    if (call->stream)
        http->headers =
            curl_slist_append(http->headers, "Accept: text/event-stream");
    http->headers = s_auth(self, http->headers);
    return 0;
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
        llmq_provider_scrub(st->provider, err->message);
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

static int s_health(const llmq_provider_t *self, llmq_http_t *http)
{
    http->url = s_url(self, "/models");
    http->post = false;
    http->headers = s_auth(self, NULL);
    return http->url ? 0 : -1;
}

const llmq_provider_ops_t llmq_provider_openai_ops = {
    .kind = "openai",
    .http = true,
    .build = s_build,
    .parse = s_parse,
    .stream_event = s_stream_event,
    .classify = llmq_classify_http,
    .header = llmq_ratelimit_header,
    .health = s_health,
    .answer = NULL,
};
