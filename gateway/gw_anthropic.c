/*  gw_anthropic.c - POST /v1/messages: the Anthropic Messages API.

    The wire carries OpenAI-shaped bodies (proto/PROTOCOL.md 5.2) and the
    workers translate to and from each provider's own format, so the gateway
    translates an Anthropic request into the OpenAI shape once, here, and
    the OpenAI-shaped answer back: text and image content, system prompts,
    stop sequences, tools and tool calls. No wire change, and any worker
    (OpenAI, Anthropic, sim) can serve an Anthropic-shaped caller.

    A stream goes out in Anthropic's event order: message_start,
    content_block_start, ping, content_block_delta..., content_block_stop,
    message_delta (stop_reason, output usage), message_stop.
*/
#include "gw.h"

//  --------------------------------------------------------------------------
//  Request: Anthropic -> OpenAI

/*  Text of a content value: a string, or the text blocks of an array. */
static char *s_text_of(const cJSON *content)
{
    if (cJSON_IsString(content))
        return strdup(content->valuestring);
    size_t len = 0;
    const cJSON *b;
    cJSON_ArrayForEach(b, content)
    {
        const cJSON *t = cJSON_GetObjectItem(b, "text");
        if (cJSON_IsString(t))
            len += strlen(t->valuestring) + 1;
    }
    char *out = (char *)calloc(1, len + 1);
    cJSON_ArrayForEach(b, content)
    {
        const cJSON *t = cJSON_GetObjectItem(b, "text");
        if (out && cJSON_IsString(t)) {
            if (*out)
                strcat(out, "\n");
            strcat(out, t->valuestring);
        }
    }
    return out;
}

/*  {"type": "text", "text": text}: a text block (Anthropic) or content part
    (OpenAI), which have the same shape. */
static cJSON *s_text_block(const char *text)
{
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "type", "text");
    cJSON_AddStringToObject(b, "text", text);
    return b;
}

/*  One content block as an OpenAI content part (text or image). */
static cJSON *s_part(const cJSON *block)
{
    const cJSON *type = cJSON_GetObjectItem(block, "type");
    if (!cJSON_IsString(type))
        return NULL;
    if (!streq(type->valuestring, "image"))
        return s_text_block(gw_str(block, "text", ""));
    const cJSON *src = cJSON_GetObjectItem(block, "source");
    const char *url = gw_str(src, "url", NULL);
    char *u = url ? strdup(url)
                  : zsys_sprintf("data:%s;base64,%s",
                                 gw_str(src, "media_type", "image/png"),
                                 gw_str(src, "data", ""));
    cJSON *part = cJSON_CreateObject();
    cJSON_AddStringToObject(part, "type", "image_url");
    cJSON_AddStringToObject(cJSON_AddObjectToObject(part, "image_url"), "url",
                            u);
    free(u);
    return part;
}

/*  tool_use blocks of an assistant turn as OpenAI tool_calls. */
static void s_tool_calls(cJSON *msg, const cJSON *content)
{
    cJSON *calls = NULL;
    const cJSON *b;
    cJSON_ArrayForEach(b, content)
    {
        const cJSON *type = cJSON_GetObjectItem(b, "type");
        if (!cJSON_IsString(type) || !streq(type->valuestring, "tool_use"))
            continue;
        if (!calls)
            calls = cJSON_AddArrayToObject(msg, "tool_calls");
        cJSON *call = cJSON_CreateObject();
        cJSON_AddStringToObject(call, "id", gw_str(b, "id", ""));
        cJSON_AddStringToObject(call, "type", "function");
        cJSON *fn = cJSON_AddObjectToObject(call, "function");
        cJSON_AddStringToObject(fn, "name", gw_str(b, "name", ""));
        char *args = cJSON_PrintUnformatted(cJSON_GetObjectItem(b, "input"));
        cJSON_AddStringToObject(fn, "arguments", args ? args : "{}");
        free(args);
        cJSON_AddItemToArray(calls, call);
    }
}

/*  One Anthropic message -> one or more OpenAI messages (tool results
    become `tool` messages). */
static void s_message(cJSON *out, const cJSON *m)
{
    const cJSON *content = cJSON_GetObjectItem(m, "content");
    const char *r = gw_str(m, "role", "user");
    const cJSON *b;
    const cJSON *blocks = cJSON_IsArray(content) ? content : NULL;
    cJSON_ArrayForEach(b, blocks)
    {
        const cJSON *type = cJSON_GetObjectItem(b, "type");
        if (!cJSON_IsString(type) || !streq(type->valuestring, "tool_result"))
            continue;
        cJSON *tm = cJSON_CreateObject();
        cJSON_AddStringToObject(tm, "role", "tool");
        cJSON_AddStringToObject(tm, "tool_call_id",
                                gw_str(b, "tool_use_id", ""));
        char *text = s_text_of(cJSON_GetObjectItem(b, "content"));
        cJSON_AddStringToObject(tm, "content", text ? text : "");
        free(text);
        cJSON_AddItemToArray(out, tm);
    }
    cJSON *msg = cJSON_CreateObject();
    cJSON_AddStringToObject(msg, "role", r);
    if (cJSON_IsString(content))
        cJSON_AddStringToObject(msg, "content", content->valuestring);
    else {
        cJSON *parts = cJSON_AddArrayToObject(msg, "content");
        cJSON_ArrayForEach(b, content)
        {
            const cJSON *type = cJSON_GetObjectItem(b, "type");
            if (cJSON_IsString(type) && (streq(type->valuestring, "text") ||
                                         streq(type->valuestring, "image")))
                cJSON_AddItemToArray(parts, s_part(b));
        }
        s_tool_calls(msg, content);
        if (cJSON_GetArraySize(parts) == 0 &&
            cJSON_GetObjectItem(msg, "tool_calls"))
            cJSON_ReplaceItemInObject(msg, "content", cJSON_CreateNull());
        else if (cJSON_GetArraySize(parts) == 0) {
            cJSON_Delete(msg);
            return;
        }
    }
    cJSON_AddItemToArray(out, msg);
}

static void s_tools(cJSON *oa, const cJSON *tools)
{
    if (!cJSON_IsArray(tools))
        return;
    cJSON *out = cJSON_AddArrayToObject(oa, "tools");
    const cJSON *t;
    cJSON_ArrayForEach(t, tools)
    {
        cJSON *tool = cJSON_CreateObject();
        cJSON_AddStringToObject(tool, "type", "function");
        cJSON *fn = cJSON_AddObjectToObject(tool, "function");
        const char *keys[][2] = {{"name", "name"},
                                 {"description", "description"},
                                 {"input_schema", "parameters"}};
        for (int i = 0; i < 3; i++) {
            const cJSON *v = cJSON_GetObjectItem(t, keys[i][0]);
            if (v)
                cJSON_AddItemToObject(fn, keys[i][1], cJSON_Duplicate(v, 1));
        }
        cJSON_AddItemToArray(out, tool);
    }
}

cJSON *gw_anthropic_to_openai(const cJSON *body, char *err, size_t errsz)
{
    const cJSON *messages = cJSON_GetObjectItem(body, "messages");
    const cJSON *max_tokens = cJSON_GetObjectItem(body, "max_tokens");
    if (!cJSON_IsArray(messages)) {
        snprintf(err, errsz, "messages: Field required");
        return NULL;
    }
    if (!cJSON_IsNumber(max_tokens)) {
        snprintf(err, errsz, "max_tokens: Field required");
        return NULL;
    }
    cJSON *oa = cJSON_CreateObject();
    cJSON *out = cJSON_AddArrayToObject(oa, "messages");
    const cJSON *system = cJSON_GetObjectItem(body, "system");
    if (system) {
        char *text = s_text_of(system);
        cJSON *sm = cJSON_CreateObject();
        cJSON_AddStringToObject(sm, "role", "system");
        cJSON_AddStringToObject(sm, "content", text ? text : "");
        free(text);
        cJSON_AddItemToArray(out, sm);
    }
    const cJSON *m;
    cJSON_ArrayForEach(m, messages) s_message(out, m);
    cJSON_AddNumberToObject(oa, "max_tokens", max_tokens->valuedouble);
    const char *same[] = {"temperature", "top_p", "model"};
    for (int i = 0; i < 3; i++) {
        const cJSON *v = cJSON_GetObjectItem(body, same[i]);
        if (v)
            cJSON_AddItemToObject(oa, same[i], cJSON_Duplicate(v, 1));
    }
    const cJSON *stop = cJSON_GetObjectItem(body, "stop_sequences");
    if (cJSON_IsArray(stop))
        cJSON_AddItemToObject(oa, "stop", cJSON_Duplicate(stop, 1));
    s_tools(oa, cJSON_GetObjectItem(body, "tools"));
    return oa;
}

//  --------------------------------------------------------------------------
//  Answer: OpenAI -> Anthropic

//  OpenAI's finish_reason -> Anthropic's stop_reason (else end_turn).
static const char *const s_stop_reasons[][2] = {{"length", "max_tokens"},
                                                {"tool_calls", "tool_use"},
                                                {"content_filter", "refusal"},
                                                {NULL, NULL}};

/*  The end of an answer: stop_reason (from choice's finish_reason) and
    stop_sequence in stop, token counts in usage's "usage". */
static void s_stop_and_usage(cJSON *stop, cJSON *usage, const cJSON *choice,
                             int64_t in_tokens, int64_t out_tokens)
{
    cJSON_AddStringToObject(stop, "stop_reason",
                            gw_lookup(s_stop_reasons,
                                      gw_str(choice, "finish_reason", NULL),
                                      "end_turn"));
    cJSON_AddNullToObject(stop, "stop_sequence");
    cJSON *u = cJSON_AddObjectToObject(usage, "usage");
    cJSON_AddNumberToObject(u, "input_tokens", (double)in_tokens);
    cJSON_AddNumberToObject(u, "output_tokens", (double)out_tokens);
}

static void s_tool_use_blocks(cJSON *content, const cJSON *message)
{
    const cJSON *call;
    cJSON_ArrayForEach(call, cJSON_GetObjectItem(message, "tool_calls"))
    {
        const cJSON *fn = cJSON_GetObjectItem(call, "function");
        const char *args = gw_str(fn, "arguments", NULL);
        cJSON *b = cJSON_CreateObject();
        cJSON_AddStringToObject(b, "type", "tool_use");
        cJSON_AddStringToObject(b, "id", gw_str(call, "id", ""));
        cJSON_AddStringToObject(b, "name", gw_str(fn, "name", ""));
        cJSON *input = args ? cJSON_Parse(args) : NULL;
        cJSON_AddItemToObject(b, "input", input ? input : cJSON_CreateObject());
        cJSON_AddItemToArray(content, b);
    }
}

cJSON *gw_openai_to_anthropic(const cJSON *body, const char *model,
                              int64_t in_tokens, int64_t out_tokens)
{
    const cJSON *choice =
        cJSON_GetArrayItem(cJSON_GetObjectItem(body, "choices"), 0);
    const cJSON *message = cJSON_GetObjectItem(choice, "message");
    const cJSON *text = cJSON_GetObjectItem(message, "content");
    cJSON *a = cJSON_CreateObject();
    char *mid = zsys_sprintf("msg_%s", gw_str(body, "id", "llmq"));
    cJSON_AddStringToObject(a, "id", mid);
    free(mid);
    cJSON_AddStringToObject(a, "type", "message");
    cJSON_AddStringToObject(a, "role", "assistant");
    cJSON_AddStringToObject(a, "model", model);
    cJSON *content = cJSON_AddArrayToObject(a, "content");
    if (cJSON_IsString(text) && *text->valuestring)
        cJSON_AddItemToArray(content, s_text_block(text->valuestring));
    s_tool_use_blocks(content, message);
    s_stop_and_usage(a, a, choice, in_tokens, out_tokens);
    return a;
}

//  --------------------------------------------------------------------------
//  The route

void gw_anthropic_messages(gw_call_t *c)
{
    cJSON *body = gw_body_json(c->req, GW_API_ANTHROPIC, c->rid);
    if (!body)
        return;
    const cJSON *model = cJSON_GetObjectItem(body, "model");
    char err[256] = "";
    cJSON *oa = cJSON_IsString(model)
                    ? gw_anthropic_to_openai(body, err, sizeof err)
                    : NULL;
    if (!oa) {
        gw_reply_error(c->req, GW_API_ANTHROPIC, 400, c->rid, NULL, NULL, NULL,
                       *err ? err : "model: Field required");
        cJSON_Delete(body);
        return;
    }
    if (!gw_model_served(c->gw, model->valuestring)) {
        char msg[400];
        snprintf(msg, sizeof msg, "model: %.256s", model->valuestring);
        gw_reply_error(c->req, GW_API_ANTHROPIC, 404, c->rid, NULL, NULL, NULL,
                       msg);
    } else {
        gw_req_t *r =
            gw_req_new(c->gw, c->req, GW_API_ANTHROPIC, c->rid, c->tenant);
        if (r) {
            r->op = LLMQ_OP_CHAT;
            r->model = strdup(model->valuestring);
            r->stream = cJSON_IsTrue(cJSON_GetObjectItem(body, "stream"));
            gw_submit(r, oa, c->trace);
        }
    }
    cJSON_Delete(oa);
    cJSON_Delete(body);
}

//  --------------------------------------------------------------------------
//  Streams

static void s_event(gw_req_t *r, const char *event, cJSON *data)
{
    cJSON_AddStringToObject(data, "type", event);
    char *text = cJSON_PrintUnformatted(data);
    if (text)
        gw_sse_send(r, event, text);
    free(text);
    cJSON_Delete(data);
}

/*  message_start, content_block_start and ping, once per stream. */
static void s_stream_open(gw_req_t *r, const char *id)
{
    if (r->block_open)
        return;
    r->block_open = true;
    cJSON *d = cJSON_CreateObject();
    cJSON *m = cJSON_AddObjectToObject(d, "message");
    char *mid = zsys_sprintf("msg_%s", id ? id : r->rid);
    cJSON_AddStringToObject(m, "id", mid);
    free(mid);
    cJSON_AddStringToObject(m, "type", "message");
    cJSON_AddStringToObject(m, "role", "assistant");
    cJSON_AddArrayToObject(m, "content");
    cJSON_AddStringToObject(m, "model", r->model);
    cJSON_AddNullToObject(m, "stop_reason");
    cJSON_AddNullToObject(m, "stop_sequence");
    cJSON *u = cJSON_AddObjectToObject(m, "usage");
    cJSON_AddNumberToObject(u, "input_tokens", 0);
    cJSON_AddNumberToObject(u, "output_tokens", 0);
    s_event(r, "message_start", d);
    d = cJSON_CreateObject();
    cJSON_AddNumberToObject(d, "index", 0);
    cJSON_AddItemToObject(d, "content_block", s_text_block(""));
    s_event(r, "content_block_start", d);
    s_event(r, "ping", cJSON_CreateObject());
}

void gw_anthropic_on_chunk(gw_req_t *r, const cJSON *chunk)
{
    const cJSON *id = cJSON_GetObjectItem(chunk, "id");
    s_stream_open(r, cJSON_IsString(id) ? id->valuestring : NULL);
    const cJSON *choice =
        cJSON_GetArrayItem(cJSON_GetObjectItem(chunk, "choices"), 0);
    const cJSON *text =
        cJSON_GetObjectItem(cJSON_GetObjectItem(choice, "delta"), "content");
    if (!cJSON_IsString(text) || !*text->valuestring)
        return;
    cJSON *d = cJSON_CreateObject();
    cJSON_AddNumberToObject(d, "index", 0);
    cJSON *delta = cJSON_AddObjectToObject(d, "delta");
    cJSON_AddStringToObject(delta, "type", "text_delta");
    cJSON_AddStringToObject(delta, "text", text->valuestring);
    s_event(r, "content_block_delta", d);
}

static void s_stream_close(gw_req_t *r, llmq_result_t *res)
{
    s_stream_open(r, NULL);
    cJSON *d = cJSON_CreateObject();
    cJSON_AddNumberToObject(d, "index", 0);
    s_event(r, "content_block_stop", d);
    if (res->ok) {
        const cJSON *choice =
            cJSON_GetArrayItem(cJSON_GetObjectItem(res->body, "choices"), 0);
        d = cJSON_CreateObject();
        s_stop_and_usage(cJSON_AddObjectToObject(d, "delta"), d, choice,
                         res->prompt_tokens, res->completion_tokens);
        s_event(r, "message_delta", d);
        s_event(r, "message_stop", cJSON_CreateObject());
    } else {
        d = cJSON_CreateObject();
        cJSON *e = cJSON_AddObjectToObject(d, "error");
        cJSON_AddStringToObject(e, "type", "api_error");
        cJSON_AddStringToObject(e, "message",
                                res->error_message ? res->error_message
                                                   : res->error_code);
        s_event(r, "error", d);
    }
    gw_sse_end(r);
}

void gw_anthropic_on_result(gw_req_t *r, llmq_result_t *res)
{
    if (gw_result_common(r, res, s_stream_close))
        return;
    cJSON *a = gw_openai_to_anthropic(res->body, r->model, res->prompt_tokens,
                                      res->completion_tokens);
    gw_reply_cjson(r->req, 200, r->rid, a);
    cJSON_Delete(a);
}
