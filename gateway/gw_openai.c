/*  gw_openai.c - the OpenAI routes: chat and text completions (plain and
    SSE), embeddings (float or base64), models.

    Request bodies go to the broker as they came (JSON -> msgpack, nothing
    dropped); the worker takes `model` and `stream` from the req header.
    Answers are the worker's OpenAI-shaped bodies as they came. Two things
    are the gateway's own: a stream's usage chunk goes out only when the
    caller asked for it (stream_options.include_usage; the worker always
    asks the provider for one), and base64 embeddings are encoded here from
    the floats (little-endian float32, as OpenAI does), so any provider can
    answer them.
*/
#include "gw.h"

#include <math.h>

/*  Parse, check and submit one inference request. */
void gw_openai_infer(gw_call_t *c, llmq_op_t op)
{
    cJSON *body = gw_body_json(c->req, GW_API_OPENAI, c->rid);
    if (!body)
        return;
    cJSON *model = cJSON_GetObjectItem(body, "model");
    if (!cJSON_IsString(model) || !*model->valuestring) {
        gw_reply_error(c->req, GW_API_OPENAI, 400, c->rid,
                       "invalid_request_error", NULL, "model",
                       "you must provide a model parameter");
        cJSON_Delete(body);
        return;
    }
    if (!gw_model_served(c->gw, model->valuestring)) {
        char msg[512];
        snprintf(msg, sizeof msg,
                 "The model `%.256s` does not exist or no worker serves it",
                 model->valuestring);
        gw_reply_error(c->req, GW_API_OPENAI, 404, c->rid,
                       "invalid_request_error", "model_not_found", "model",
                       msg);
        cJSON_Delete(body);
        return;
    }
    gw_req_t *r = gw_req_new(c->gw, c->req, GW_API_OPENAI, c->rid, c->tenant);
    if (!r) {
        cJSON_Delete(body);
        return;
    }
    r->op = op;
    r->model = strdup(model->valuestring);
    r->stream = op != LLMQ_OP_EMBEDDING &&
                cJSON_IsTrue(cJSON_GetObjectItem(body, "stream"));
    r->include_usage = cJSON_IsTrue(cJSON_GetObjectItem(
        cJSON_GetObjectItem(body, "stream_options"), "include_usage"));
    cJSON *enc = cJSON_GetObjectItem(body, "encoding_format");
    if (op == LLMQ_OP_EMBEDDING && cJSON_IsString(enc) &&
        streq(enc->valuestring, "base64")) {
        r->b64 = true;
        cJSON_DeleteItemFromObject(body, "encoding_format");
    }
    gw_submit(r, body, c->trace);
    cJSON_Delete(body);
}

void gw_openai_on_chunk(gw_req_t *r, const cJSON *chunk)
{
    cJSON *choices = cJSON_GetObjectItem(chunk, "choices");
    bool usage_only = cJSON_GetArraySize(choices) == 0 &&
                      cJSON_IsObject(cJSON_GetObjectItem(chunk, "usage"));
    if (usage_only && !r->include_usage)
        return;
    if (usage_only)
        r->usage_sent = true;
    char *text = cJSON_PrintUnformatted(chunk);
    if (text)
        gw_sse_send(r, NULL, text);
    free(text);
}

static const char s_b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/*  An array of numbers as base64 of little-endian float32 (caller frees). */
char *gw_floats_b64(const cJSON *arr)
{
    int n = cJSON_GetArraySize(arr);
    size_t bytes = (size_t)n * 4;
    unsigned char *raw = (unsigned char *)malloc(bytes + 3);
    char *out = (char *)malloc((bytes + 2) / 3 * 4 + 1);
    if (!raw || !out) {
        free(raw);
        free(out);
        return NULL;
    }
    size_t i = 0;
    const cJSON *v;
    cJSON_ArrayForEach(v, arr)
    {
        float f = (float)v->valuedouble;
        uint32_t u;
        memcpy(&u, &f, 4);
        for (int b = 0; b < 4; b++)
            raw[i++] = (unsigned char)(u >> (8 * b));
    }
    size_t o = 0;
    for (i = 0; i < bytes; i += 3) {
        uint32_t w = (uint32_t)raw[i] << 16;
        if (i + 1 < bytes)
            w |= (uint32_t)raw[i + 1] << 8;
        if (i + 2 < bytes)
            w |= raw[i + 2];
        out[o++] = s_b64[(w >> 18) & 63];
        out[o++] = s_b64[(w >> 12) & 63];
        out[o++] = i + 1 < bytes ? s_b64[(w >> 6) & 63] : '=';
        out[o++] = i + 2 < bytes ? s_b64[w & 63] : '=';
    }
    out[o] = '\0';
    free(raw);
    return out;
}

static void s_embeddings_b64(cJSON *body)
{
    cJSON *item;
    cJSON_ArrayForEach(item, cJSON_GetObjectItem(body, "data"))
    {
        cJSON *emb = cJSON_GetObjectItem(item, "embedding");
        if (!cJSON_IsArray(emb))
            continue;
        char *text = gw_floats_b64(emb);
        if (text) {
            cJSON_ReplaceItemInObject(item, "embedding",
                                      cJSON_CreateString(text));
            free(text);
        }
    }
}

/*  The end of a stream: usage chunk if asked and not relayed, [DONE]. */
static void s_stream_end(gw_req_t *r, llmq_result_t *res)
{
    gw_sse_start(r);
    if (res->ok && r->include_usage && !r->usage_sent) {
        cJSON *c = cJSON_CreateObject();
        cJSON *id = cJSON_GetObjectItem(res->body, "id");
        cJSON_AddStringToObject(c, "id",
                                cJSON_IsString(id) ? id->valuestring : r->rid);
        cJSON_AddStringToObject(c, "object", "chat.completion.chunk");
        cJSON_AddNumberToObject(c, "created", (double)(zclock_time() / 1000));
        cJSON_AddStringToObject(c, "model", r->model);
        cJSON_AddArrayToObject(c, "choices");
        cJSON *u = cJSON_AddObjectToObject(c, "usage");
        cJSON_AddNumberToObject(u, "prompt_tokens", (double)res->prompt_tokens);
        cJSON_AddNumberToObject(u, "completion_tokens",
                                (double)res->completion_tokens);
        cJSON_AddNumberToObject(u, "total_tokens", (double)res->total_tokens);
        char *text = cJSON_PrintUnformatted(c);
        gw_sse_send(r, NULL, text);
        free(text);
        cJSON_Delete(c);
    }
    if (!res->ok) {
        cJSON *e = cJSON_CreateObject();
        cJSON *err = cJSON_AddObjectToObject(e, "error");
        cJSON_AddStringToObject(err, "message",
                                res->error_message ? res->error_message
                                                   : res->error_code);
        cJSON_AddStringToObject(err, "type", "server_error");
        cJSON_AddStringToObject(err, "code", res->error_code);
        char *text = cJSON_PrintUnformatted(e);
        gw_sse_send(r, NULL, text);
        free(text);
        cJSON_Delete(e);
    }
    gw_sse_send(r, NULL, "[DONE]");
    gw_sse_end(r);
}

void gw_openai_on_result(gw_req_t *r, llmq_result_t *res)
{
    if (gw_result_common(r, res, s_stream_end))
        return;
    if (r->b64)
        s_embeddings_b64(res->body);
    if (res->body)
        gw_reply_cjson(r->req, 200, r->rid, res->body);
    else
        gw_reply_json(r->req, 200, r->rid, "{}", 2);
}

//  --------------------------------------------------------------------------
//  Models

static cJSON *s_model(const char *id)
{
    cJSON *m = cJSON_CreateObject();
    cJSON_AddStringToObject(m, "id", id);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", 0);
    cJSON_AddStringToObject(m, "owned_by", "llmq");
    return m;
}

/*  The models live workers serve now (not `*`), each once. */
static cJSON *s_model_list(cJSON *status)
{
    cJSON *data = cJSON_CreateArray();
    zhashx_t *seen = zhashx_new();
    cJSON *w;
    cJSON_ArrayForEach(w, cJSON_GetObjectItem(status, "workers"))
    {
        cJSON *m;
        cJSON_ArrayForEach(m, cJSON_GetObjectItem(w, "models"))
        {
            if (!cJSON_IsString(m) || streq(m->valuestring, "*") ||
                zhashx_lookup(seen, m->valuestring))
                continue;
            zhashx_insert(seen, m->valuestring, (void *)1);
            cJSON_AddItemToArray(data, s_model(m->valuestring));
        }
    }
    zhashx_destroy(&seen);
    return data;
}

/*  The same list as Anthropic's SDKs read it (takes data). */
static cJSON *s_anthropic_list(cJSON *data)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *m;
    cJSON_ArrayForEach(m, data)
    {
        const char *id = cJSON_GetObjectItem(m, "id")->valuestring;
        cJSON_DeleteItemFromObject(m, "object");
        cJSON_DeleteItemFromObject(m, "owned_by");
        cJSON_DeleteItemFromObject(m, "created");
        cJSON_AddStringToObject(m, "type", "model");
        cJSON_AddStringToObject(m, "display_name", id);
        cJSON_AddStringToObject(m, "created_at", "1970-01-01T00:00:00Z");
    }
    int n = cJSON_GetArraySize(data);
    cJSON *first =
        n ? cJSON_GetObjectItem(cJSON_GetArrayItem(data, 0), "id") : NULL;
    cJSON *last =
        n ? cJSON_GetObjectItem(cJSON_GetArrayItem(data, n - 1), "id") : NULL;
    cJSON_AddItemToObject(root, "data", data);
    cJSON_AddFalseToObject(root, "has_more");
    cJSON_AddItemToObject(root, "first_id",
                          first ? cJSON_Duplicate(first, 0)
                                : cJSON_CreateNull());
    cJSON_AddItemToObject(root, "last_id",
                          last ? cJSON_Duplicate(last, 0) : cJSON_CreateNull());
    return root;
}

void gw_openai_models(gw_call_t *c)
{
    cJSON *status = gw_status(c->gw);
    if (!status) {
        gw_reply_llmq_error(c->req, GW_API_OPENAI, c->rid, "overloaded", 0,
                            "the broker does not answer");
        return;
    }
    cJSON *data = s_model_list(status);
    const char *one =
        strncmp(c->path, "/v1/models/", 11) == 0 ? c->path + 11 : NULL;
    if (one) {
        cJSON *m;
        cJSON_ArrayForEach(m, data)
        {
            if (streq(cJSON_GetObjectItem(m, "id")->valuestring, one)) {
                gw_reply_cjson(c->req, 200, c->rid, m);
                cJSON_Delete(data);
                return;
            }
        }
        cJSON_Delete(data);
        gw_reply_error(c->req, GW_API_OPENAI, 404, c->rid,
                       "invalid_request_error", "model_not_found", "model",
                       "no live worker serves this model");
        return;
    }
    cJSON *root = gw_header(c->req, "anthropic-version")
                      ? s_anthropic_list(data)
                      : cJSON_CreateObject();
    if (!cJSON_GetObjectItem(root, "data")) {
        cJSON_AddStringToObject(root, "object", "list");
        cJSON_AddItemToObject(root, "data", data);
    }
    gw_reply_cjson(c->req, 200, c->rid, root);
    cJSON_Delete(root);
}
