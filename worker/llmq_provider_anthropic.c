/*  llmq_provider_anthropic.c - the Anthropic Messages API, translated from
    and to the OpenAI shape.

    Requests: system (and developer) messages become the top-level `system`;
    tool calls and tool results become tool_use / tool_result blocks; OpenAI
    tools become Anthropic tools; `stop` becomes stop_sequences; max_tokens
    is required by Anthropic and defaults from the config. A completion
    request's prompt becomes one user message. There is no embeddings API:
    those requests fail at once with invalid_request.
    Answers: text blocks joined into message.content, tool_use blocks into
    tool_calls, stop_reason into finish_reason (end_turn and stop_sequence
    -> stop, max_tokens -> length, tool_use -> tool_calls, refusal ->
    content_filter), usage input/output tokens into prompt/completion/total.
    Streams: message_start / content_block_* / message_delta / message_stop
    events become OpenAI chat.completion.chunk objects.
*/
#include "llmq_provider.h"
#include "llmq_sse.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/*  anthropic-version and x-api-key. */
static struct curl_slist *s_auth(const llmq_provider_t *self,
                                 struct curl_slist *headers)
{
    char line[128];
    snprintf(line, sizeof line, "anthropic-version: %s",
             llmq_provider_anthropic_version(self));
    headers = curl_slist_append(headers, line);
    return llmq_provider_key_header(self, headers, "x-api-key: ");
}

/*  The text of the text parts (or blocks) of an array, joined (caller's;
    "" if none, NULL if out of memory); *any says whether there was one. */
static char *s_join_text(const cJSON *parts, bool *any)
{
    char *text = NULL;
    size_t len = 0, cap = 0;
    *any = false;
    if (llmq_buf_append(&text, &len, &cap, "", 0, SIZE_MAX))
        return NULL;
    const cJSON *p;
    cJSON_ArrayForEach(p, parts)
    {
        const char *type = llmq_json_str(p, "type");
        const char *t = llmq_json_str(p, "text");
        if (t && (!type || strcmp(type, "text") == 0) &&
            llmq_buf_append(&text, &len, &cap, t, strlen(t), SIZE_MAX) == 0)
            *any = true;
    }
    return text;
}

/*  Append text (a string or text parts) to the growing system prompt. */
static void s_add_system(char **system, const cJSON *content)
{
    bool any = false;
    char *text = cJSON_IsString(content)  ? strdup(content->valuestring)
                 : cJSON_IsArray(content) ? s_join_text(content, &any)
                                          : NULL;
    size_t old = *system ? strlen(*system) : 0;
    char *ns = text ? realloc(*system, old + strlen(text) + 3) : NULL;
    if (ns) {
        if (old)
            memcpy(ns + old, "\n\n", 3);
        else
            ns[0] = 0;
        strcat(ns, text);
        *system = ns;
    }
    free(text);
}

/*  OpenAI content (string or parts) -> Anthropic content. */
static cJSON *s_content(const cJSON *content)
{
    if (cJSON_IsString(content))
        return cJSON_CreateString(content->valuestring);
    cJSON *blocks = cJSON_CreateArray();
    const cJSON *p;
    cJSON_ArrayForEach(p, content)
    {
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(p, "type");
        if (cJSON_IsString(type) &&
            strcmp(type->valuestring, "image_url") == 0) {
            const cJSON *iu = cJSON_GetObjectItemCaseSensitive(p, "image_url");
            const cJSON *url = cJSON_GetObjectItemCaseSensitive(iu, "url");
            if (cJSON_IsString(url)) {
                cJSON *b = cJSON_CreateObject();
                cJSON_AddStringToObject(b, "type", "image");
                cJSON *src = cJSON_AddObjectToObject(b, "source");
                cJSON_AddStringToObject(src, "type", "url");
                cJSON_AddStringToObject(src, "url", url->valuestring);
                cJSON_AddItemToArray(blocks, b);
            }
            continue;
        }
        cJSON_AddItemToArray(blocks, cJSON_Duplicate(p, true));
    }
    return blocks;
}

/*  OpenAI messages -> Anthropic messages + system. */
static int s_messages(const cJSON *messages, cJSON *out, char **system,
                      llmq_perr_t *err)
{
    const cJSON *m;
    cJSON_ArrayForEach(m, messages)
    {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
        if (!cJSON_IsString(role)) {
            llmq_perr_set(err, LLMQ_ERR_INVALID_REQUEST, 0, false,
                          "every message needs a role");
            return -1;
        }
        const char *r = role->valuestring;
        if (strcmp(r, "system") == 0 || strcmp(r, "developer") == 0) {
            s_add_system(system, content);
            continue;
        }
        cJSON *am = cJSON_CreateObject();
        if (strcmp(r, "tool") == 0) {
            cJSON_AddStringToObject(am, "role", "user");
            cJSON *blocks = cJSON_AddArrayToObject(am, "content");
            cJSON *b = cJSON_CreateObject();
            cJSON_AddStringToObject(b, "type", "tool_result");
            const cJSON *tid =
                cJSON_GetObjectItemCaseSensitive(m, "tool_call_id");
            cJSON_AddStringToObject(
                b, "tool_use_id", cJSON_IsString(tid) ? tid->valuestring : "");
            if (content)
                cJSON_AddItemToObject(b, "content", s_content(content));
            cJSON_AddItemToArray(blocks, b);
        } else if (strcmp(r, "assistant") == 0 &&
                   cJSON_IsArray(
                       cJSON_GetObjectItemCaseSensitive(m, "tool_calls"))) {
            cJSON_AddStringToObject(am, "role", "assistant");
            cJSON *blocks = cJSON_AddArrayToObject(am, "content");
            if (cJSON_IsString(content) && *content->valuestring) {
                cJSON *b = cJSON_CreateObject();
                cJSON_AddStringToObject(b, "type", "text");
                cJSON_AddStringToObject(b, "text", content->valuestring);
                cJSON_AddItemToArray(blocks, b);
            }
            const cJSON *tc;
            cJSON_ArrayForEach(
                tc, cJSON_GetObjectItemCaseSensitive(m, "tool_calls"))
            {
                const cJSON *f =
                    cJSON_GetObjectItemCaseSensitive(tc, "function");
                const cJSON *id = cJSON_GetObjectItemCaseSensitive(tc, "id");
                const cJSON *name = cJSON_GetObjectItemCaseSensitive(f, "name");
                const cJSON *args =
                    cJSON_GetObjectItemCaseSensitive(f, "arguments");
                cJSON *b = cJSON_CreateObject();
                cJSON_AddStringToObject(b, "type", "tool_use");
                cJSON_AddStringToObject(
                    b, "id", cJSON_IsString(id) ? id->valuestring : "");
                cJSON_AddStringToObject(
                    b, "name", cJSON_IsString(name) ? name->valuestring : "");
                cJSON *input = cJSON_IsString(args)
                                   ? cJSON_Parse(args->valuestring)
                                   : NULL;
                cJSON_AddItemToObject(b, "input",
                                      input ? input : cJSON_CreateObject());
                cJSON_AddItemToArray(blocks, b);
            }
        } else {
            cJSON_AddStringToObject(
                am, "role", strcmp(r, "assistant") == 0 ? "assistant" : "user");
            cJSON_AddItemToObject(am, "content",
                                  content ? s_content(content)
                                          : cJSON_CreateString(""));
        }
        cJSON_AddItemToArray(out, am);
    }
    return 0;
}

/*  OpenAI tools and tool_choice -> Anthropic tools and tool_choice in
    body ("none" sends no tools). */
static void s_tools(const cJSON *in, cJSON *body)
{
    const cJSON *tools = cJSON_GetObjectItemCaseSensitive(in, "tools");
    const cJSON *choice = cJSON_GetObjectItemCaseSensitive(in, "tool_choice");
    const char *mode = cJSON_IsString(choice) ? choice->valuestring : NULL;
    if (!cJSON_IsArray(tools) || (mode && strcmp(mode, "none") == 0))
        return;
    cJSON *at = cJSON_AddArrayToObject(body, "tools");
    const cJSON *t;
    cJSON_ArrayForEach(t, tools)
    {
        const cJSON *f = cJSON_GetObjectItemCaseSensitive(t, "function");
        if (!cJSON_IsObject(f))
            continue;
        cJSON *a = cJSON_CreateObject();
        const char *name = llmq_json_str(f, "name");
        const char *desc = llmq_json_str(f, "description");
        const cJSON *params = cJSON_GetObjectItemCaseSensitive(f, "parameters");
        cJSON_AddStringToObject(a, "name", name ? name : "");
        if (desc)
            cJSON_AddStringToObject(a, "description", desc);
        if (cJSON_IsObject(params))
            cJSON_AddItemToObject(a, "input_schema",
                                  cJSON_Duplicate(params, true));
        else {
            cJSON *schema = cJSON_AddObjectToObject(a, "input_schema");
            cJSON_AddStringToObject(schema, "type", "object");
        }
        cJSON_AddItemToArray(at, a);
    }
    const char *forced = llmq_json_str(
        cJSON_GetObjectItemCaseSensitive(choice, "function"), "name");
    if (mode && strcmp(mode, "required") == 0) {
        cJSON *tc = cJSON_AddObjectToObject(body, "tool_choice");
        cJSON_AddStringToObject(tc, "type", "any");
    } else if (forced) {
        cJSON *tc = cJSON_AddObjectToObject(body, "tool_choice");
        cJSON_AddStringToObject(tc, "type", "tool");
        cJSON_AddStringToObject(tc, "name", forced);
    }
}

/*  max_tokens (required here), sampling settings and stop sequences. */
static void s_settings(const llmq_provider_t *self, const cJSON *in,
                       cJSON *body)
{
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(in, "max_tokens");
    if (!cJSON_IsNumber(mt))
        mt = cJSON_GetObjectItemCaseSensitive(in, "max_completion_tokens");
    cJSON_AddNumberToObject(
        body, "max_tokens",
        cJSON_IsNumber(mt) ? mt->valuedouble
                           : (double)llmq_provider_default_max_tokens(self));
    static const char *same[] = {"temperature", "top_p", "top_k", "metadata"};
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(in, same[i]);
        if (v && !cJSON_IsNull(v))
            cJSON_AddItemToObject(body, same[i], cJSON_Duplicate(v, true));
    }
    const cJSON *stop = cJSON_GetObjectItemCaseSensitive(in, "stop");
    if (cJSON_IsString(stop)) {
        cJSON *ss = cJSON_AddArrayToObject(body, "stop_sequences");
        cJSON_AddItemToArray(ss, cJSON_CreateString(stop->valuestring));
    } else if (cJSON_IsArray(stop))
        cJSON_AddItemToObject(body, "stop_sequences",
                              cJSON_Duplicate(stop, true));
}

/*  The Messages API body for an OpenAI-shaped call (caller's), realtime
    and batch alike; NULL (err set) on a bad call. */
static cJSON *s_params(const llmq_provider_t *self, const llmq_call_t *call,
                       llmq_perr_t *err)
{
    if (call->op == LLMQ_OP_EMBEDDING) {
        llmq_perr_set(err, LLMQ_ERR_INVALID_REQUEST, 0, false,
                      "the anthropic provider has no embeddings API");
        return NULL;
    }
    if (call->op != LLMQ_OP_CHAT && call->op != LLMQ_OP_COMPLETION) {
        llmq_perr_set(err, LLMQ_ERR_INVALID_REQUEST, 0, false, "unknown op");
        return NULL;
    }
    const cJSON *in = call->body;
    if (!cJSON_IsObject(in)) {
        llmq_perr_set(err, LLMQ_ERR_INVALID_REQUEST, 0, false,
                      "request payload must be a map (an OpenAI request body)");
        return NULL;
    }
    cJSON *body = cJSON_CreateObject();
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(in, "model");
    cJSON_AddStringToObject(body, "model",
                            call->model && *call->model ? call->model
                            : cJSON_IsString(model)     ? model->valuestring
                                                        : "");
    char *system = NULL;
    cJSON *messages = cJSON_AddArrayToObject(body, "messages");
    if (call->op == LLMQ_OP_COMPLETION) {
        const cJSON *prompt = cJSON_GetObjectItemCaseSensitive(in, "prompt");
        cJSON *um = cJSON_CreateObject();
        cJSON_AddStringToObject(um, "role", "user");
        cJSON_AddStringToObject(
            um, "content", cJSON_IsString(prompt) ? prompt->valuestring : "");
        cJSON_AddItemToArray(messages, um);
    } else if (s_messages(cJSON_GetObjectItemCaseSensitive(in, "messages"),
                          messages, &system, err)) {
        cJSON_Delete(body);
        free(system);
        return NULL;
    }
    if (system) {
        cJSON_AddStringToObject(body, "system", system);
        free(system);
    }
    s_settings(self, in, body);
    s_tools(in, body);
    return body;
}

static int s_build(const llmq_provider_t *self, const llmq_call_t *call,
                   llmq_http_t *http, llmq_perr_t *err)
{
    cJSON *body = s_params(self, call, err);
    if (!body)
        return -1;
    if (call->stream)
        cJSON_AddTrueToObject(body, "stream");
    return llmq_http_post_json(self, "/messages", body, http, err);
}

static const char *s_finish_reason(const char *stop_reason)
{
    if (!stop_reason)
        return NULL;
    if (strcmp(stop_reason, "max_tokens") == 0)
        return "length";
    if (strcmp(stop_reason, "tool_use") == 0)
        return "tool_calls";
    if (strcmp(stop_reason, "refusal") == 0)
        return "content_filter";
    return "stop"; /* end_turn, stop_sequence, pause_turn */
}

/*  The tool_use blocks of a message's content as OpenAI tool_calls. */
static cJSON *s_tool_calls(const cJSON *content)
{
    cJSON *tool_calls = cJSON_CreateArray();
    const cJSON *b;
    cJSON_ArrayForEach(b, content)
    {
        const char *type = llmq_json_str(b, "type");
        if (!type || strcmp(type, "tool_use") != 0)
            continue;
        cJSON *tc = cJSON_CreateObject();
        const char *id = llmq_json_str(b, "id");
        const char *name = llmq_json_str(b, "name");
        cJSON_AddStringToObject(tc, "id", id ? id : "");
        cJSON_AddStringToObject(tc, "type", "function");
        cJSON *f = cJSON_AddObjectToObject(tc, "function");
        cJSON_AddStringToObject(f, "name", name ? name : "");
        char *args = cJSON_PrintUnformatted(
            cJSON_GetObjectItemCaseSensitive(b, "input"));
        cJSON_AddStringToObject(f, "arguments", args ? args : "{}");
        free(args);
        cJSON_AddItemToArray(tool_calls, tc);
    }
    return tool_calls;
}

/*  A Messages API message (with a content array) -> the OpenAI answer
    (caller's) and its usage; realtime and batch alike. */
static cJSON *s_message(const llmq_call_t *call, const cJSON *in,
                        llmq_usage_t *usage)
{
    const cJSON *content = cJSON_GetObjectItemCaseSensitive(in, "content");
    /*  Join text blocks; collect tool_use blocks. */
    bool any_text = false;
    char *text = s_join_text(content, &any_text);
    cJSON *tool_calls = s_tool_calls(content);
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(in, "usage");
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(u, "input_tokens");
    const cJSON *ot = cJSON_GetObjectItemCaseSensitive(u, "output_tokens");
    /*  Anthropic counts cache reads and writes apart from input_tokens;
        OpenAI's prompt_tokens holds them all, cached_tokens the reads. */
    int64_t cache_read = llmq_json_int(u, "cache_read_input_tokens");
    usage->prompt_tokens = (cJSON_IsNumber(it) ? (int64_t)it->valuedouble : 0) +
                           cache_read +
                           llmq_json_int(u, "cache_creation_input_tokens");
    usage->completion_tokens =
        cJSON_IsNumber(ot) ? (int64_t)ot->valuedouble : 0;
    usage->total_tokens = usage->prompt_tokens + usage->completion_tokens;

    const cJSON *id = cJSON_GetObjectItemCaseSensitive(in, "id");
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(in, "model");
    const cJSON *sr = cJSON_GetObjectItemCaseSensitive(in, "stop_reason");
    const char *finish =
        s_finish_reason(cJSON_IsString(sr) ? sr->valuestring : NULL);

    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "id", cJSON_IsString(id) ? id->valuestring : "");
    cJSON_AddStringToObject(r, "object",
                            call->op == LLMQ_OP_COMPLETION ? "text_completion"
                                                           : "chat.completion");
    cJSON_AddNumberToObject(r, "created", (double)time(NULL));
    cJSON_AddStringToObject(r, "model",
                            cJSON_IsString(model) ? model->valuestring
                            : call->model         ? call->model
                                                  : "");
    cJSON *choices = cJSON_AddArrayToObject(r, "choices");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    if (call->op == LLMQ_OP_COMPLETION) {
        cJSON_AddStringToObject(c, "text", text ? text : "");
        cJSON_Delete(tool_calls);
    } else {
        cJSON *msg = cJSON_AddObjectToObject(c, "message");
        cJSON_AddStringToObject(msg, "role", "assistant");
        if (any_text || cJSON_GetArraySize(tool_calls) == 0)
            cJSON_AddStringToObject(msg, "content", text ? text : "");
        else
            cJSON_AddNullToObject(msg, "content");
        if (cJSON_GetArraySize(tool_calls) > 0)
            cJSON_AddItemToObject(msg, "tool_calls", tool_calls);
        else
            cJSON_Delete(tool_calls);
    }
    if (finish)
        cJSON_AddStringToObject(c, "finish_reason", finish);
    else
        cJSON_AddNullToObject(c, "finish_reason");
    cJSON_AddItemToArray(choices, c);
    llmq_usage_add_json(r, usage->prompt_tokens, usage->completion_tokens);
    if (cache_read > 0)
        cJSON_AddNumberToObject(
            cJSON_AddObjectToObject(cJSON_GetObjectItem(r, "usage"),
                                    "prompt_tokens_details"),
            "cached_tokens", (double)cache_read);
    free(text);
    return r;
}

static cJSON *s_parse(const llmq_provider_t *self, const llmq_call_t *call,
                      const char *body, size_t size, llmq_usage_t *usage,
                      llmq_perr_t *err)
{
    (void)self;
    cJSON *in = cJSON_ParseWithLength(body, size);
    if (!cJSON_IsObject(in) ||
        !cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(in, "content"))) {
        cJSON_Delete(in);
        llmq_perr_set(err, LLMQ_ERR_PROVIDER_ERROR, 200, true,
                      "provider answered with malformed JSON (%zu bytes)",
                      size);
        return NULL;
    }
    cJSON *r = s_message(call, in, usage);
    cJSON_Delete(in);
    return r;
}

/*  An empty OpenAI chunk for this stream: {id, object, created, model,
    choices: [{index 0, delta {}, finish_reason null}]}; returns the delta. */
static cJSON *s_chunk(llmq_stream_t *st, cJSON **delta)
{
    cJSON *c = cJSON_CreateObject();
    cJSON_AddStringToObject(c, "id", st->msg_id ? st->msg_id : "");
    cJSON_AddStringToObject(c, "object", "chat.completion.chunk");
    cJSON_AddNumberToObject(c, "created", (double)time(NULL));
    cJSON_AddStringToObject(c, "model", st->model ? st->model : "");
    cJSON *choices = cJSON_AddArrayToObject(c, "choices");
    if (delta) {
        cJSON *ch = cJSON_CreateObject();
        cJSON_AddNumberToObject(ch, "index", 0);
        *delta = cJSON_AddObjectToObject(ch, "delta");
        cJSON_AddNullToObject(ch, "finish_reason");
        cJSON_AddItemToArray(choices, ch);
    }
    return c;
}

static int s_emit(llmq_stream_t *st, cJSON *chunk, llmq_chunk_fn *emit,
                  void *arg, llmq_perr_t *err)
{
    if (st->op == LLMQ_OP_COMPLETION) {
        /*  text_completion chunks: choices[].text instead of delta. */
        cJSON_ReplaceItemInObjectCaseSensitive(
            chunk, "object", cJSON_CreateString("text_completion"));
        cJSON *ch;
        cJSON_ArrayForEach(ch,
                           cJSON_GetObjectItemCaseSensitive(chunk, "choices"))
        {
            cJSON *delta = cJSON_DetachItemFromObjectCaseSensitive(ch, "delta");
            const cJSON *content =
                cJSON_GetObjectItemCaseSensitive(delta, "content");
            cJSON_AddStringToObject(
                ch, "text",
                cJSON_IsString(content) ? content->valuestring : "");
            cJSON_Delete(delta);
        }
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

/*  Where one stream event's chunks go. */
typedef struct {
    llmq_stream_t *st;   /* the stream */
    llmq_chunk_fn *emit; /* the worker's callback */
    void *arg;           /* for emit */
    llmq_perr_t *err;    /* set on failure */
} s_out_t;

static int s_ev_message_start(s_out_t *o, const cJSON *ev)
{
    llmq_stream_t *st = o->st;
    cJSON *delta = NULL;
    int rc = 0;
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(ev, "message");
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(msg, "id");
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(msg, "model");
    if (cJSON_IsString(id) && !st->msg_id)
        st->msg_id = strdup(id->valuestring);
    if (cJSON_IsString(model)) {
        free(st->model);
        st->model = strdup(model->valuestring);
    }
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(msg, "usage");
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(u, "input_tokens");
    const cJSON *ot = cJSON_GetObjectItemCaseSensitive(u, "output_tokens");
    if (cJSON_IsNumber(it))
        st->input_tokens = (int64_t)it->valuedouble;
    if (cJSON_IsNumber(ot))
        st->output_tokens = (int64_t)ot->valuedouble;
    cJSON *c = s_chunk(st, &delta);
    cJSON_AddStringToObject(delta, "role", "assistant");
    cJSON_AddStringToObject(delta, "content", "");
    rc = s_emit(st, c, o->emit, o->arg, o->err);
    return rc;
}

/*  A chunk whose delta carries one tool call {index, function {arguments}}
    (with id, type and name when start); emitted. */
static int s_emit_tool(s_out_t *o, int tool, const cJSON *start,
                       const char *arguments)
{
    cJSON *delta = NULL;
    cJSON *c = s_chunk(o->st, &delta);
    cJSON *tc = cJSON_CreateObject();
    cJSON_AddNumberToObject(tc, "index", tool);
    if (start) {
        const char *id = llmq_json_str(start, "id");
        cJSON_AddStringToObject(tc, "id", id ? id : "");
        cJSON_AddStringToObject(tc, "type", "function");
    }
    cJSON *f = cJSON_AddObjectToObject(tc, "function");
    if (start) {
        const char *name = llmq_json_str(start, "name");
        cJSON_AddStringToObject(f, "name", name ? name : "");
    }
    cJSON_AddStringToObject(f, "arguments", arguments ? arguments : "");
    cJSON_AddItemToArray(cJSON_AddArrayToObject(delta, "tool_calls"), tc);
    return s_emit(o->st, c, o->emit, o->arg, o->err);
}

/*  The content block's index, -1 if none or out of our range. */
static int s_block(const cJSON *ev)
{
    int64_t block = llmq_json_int(ev, "index");
    return cJSON_IsNumber(cJSON_GetObjectItemCaseSensitive(ev, "index")) &&
                   block >= 0 && block < 64
               ? (int)block
               : -1;
}

/*  A tool_use block starts: a tool call with its id and name. */
static int s_ev_content_block_start(s_out_t *o, const cJSON *ev)
{
    llmq_stream_t *st = o->st;
    const cJSON *cb = cJSON_GetObjectItemCaseSensitive(ev, "content_block");
    const char *type = llmq_json_str(cb, "type");
    int block = s_block(ev);
    if (!type || strcmp(type, "tool_use") != 0 || block < 0)
        return 0;
    int tool = st->tool_index++;
    st->block_tool[block] = tool + 1;
    return s_emit_tool(o, tool, cb, "");
}

/*  Text, or a piece of a tool call's arguments. */
static int s_ev_content_block_delta(s_out_t *o, const cJSON *ev)
{
    llmq_stream_t *st = o->st;
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(ev, "delta");
    const char *type = llmq_json_str(d, "type");
    int block = s_block(ev);
    if (type && strcmp(type, "text_delta") == 0) {
        const char *text = llmq_json_str(d, "text");
        cJSON *delta = NULL;
        cJSON *c = s_chunk(st, &delta);
        cJSON_AddStringToObject(delta, "content", text ? text : "");
        return s_emit(st, c, o->emit, o->arg, o->err);
    }
    if (type && strcmp(type, "input_json_delta") == 0 && block >= 0 &&
        st->block_tool[block] > 0)
        return s_emit_tool(o, st->block_tool[block] - 1, NULL,
                           llmq_json_str(d, "partial_json"));
    return 0;
}

static int s_ev_message_delta(s_out_t *o, const cJSON *ev)
{
    llmq_stream_t *st = o->st;
    const cJSON *d = cJSON_GetObjectItemCaseSensitive(ev, "delta");
    const cJSON *sr = cJSON_GetObjectItemCaseSensitive(d, "stop_reason");
    const char *finish =
        s_finish_reason(cJSON_IsString(sr) ? sr->valuestring : NULL);
    if (finish) {
        free(st->stop_reason);
        st->stop_reason = strdup(finish);
    }
    const cJSON *ot = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(ev, "usage"), "output_tokens");
    if (cJSON_IsNumber(ot))
        st->output_tokens = (int64_t)ot->valuedouble;
    return 0;
}

/*  The finish chunk and the usage chunk; 1: the stream is complete. */
static int s_ev_message_stop(s_out_t *o, const cJSON *ev)
{
    (void)ev;
    llmq_stream_t *st = o->st;
    cJSON *delta = NULL;
    cJSON *c = s_chunk(st, &delta);
    cJSON *ch =
        cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(c, "choices"), 0);
    cJSON_ReplaceItemInObjectCaseSensitive(
        ch, "finish_reason",
        cJSON_CreateString(st->stop_reason ? st->stop_reason : "stop"));
    int rc = s_emit(st, c, o->emit, o->arg, o->err);
    if (rc == 0) {
        /*  The usage chunk, as OpenAI's include_usage sends it. */
        c = s_chunk(st, NULL);
        llmq_usage_add_json(c, st->input_tokens > 0 ? st->input_tokens : 0,
                            st->output_tokens > 0 ? st->output_tokens : 0);
        rc = s_emit(st, c, o->emit, o->arg, o->err);
    }
    return rc == 0 ? 1 : rc;
}

/*  An error event ends the stream, classified as an HTTP answer. */
static int s_ev_error(s_out_t *o, const cJSON *ev)
{
    llmq_stream_t *st = o->st;
    char *text = cJSON_PrintUnformatted(ev);
    const cJSON *et = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(ev, "error"), "type");
    int status =
        cJSON_IsString(et) && strcmp(et->valuestring, "overloaded_error") == 0
            ? 529
            : 500;
    if (cJSON_IsString(et) && strcmp(et->valuestring, "rate_limit_error") == 0)
        status = 429;
    llmq_classify_http(st->provider, status, text, text ? strlen(text) : 0,
                       o->err);
    llmq_provider_scrub(st->provider, o->err->message, sizeof o->err->message,
                        o->err->message);
    free(text);
    return -1;
}

/*  One SSE event -> zero or more chunks; 1 when the message stopped. */
static int s_stream_event(llmq_stream_t *st, const char *event,
                          const char *data, size_t size, llmq_chunk_fn *emit,
                          void *arg, llmq_perr_t *err)
{
    static const struct {
        const char *type;
        int (*fn)(s_out_t *o, const cJSON *ev);
    } handlers[] = {{"message_start", s_ev_message_start},
                    {"content_block_start", s_ev_content_block_start},
                    {"content_block_delta", s_ev_content_block_delta},
                    {"message_delta", s_ev_message_delta},
                    {"message_stop", s_ev_message_stop},
                    {"error", s_ev_error}};
    cJSON *ev = cJSON_ParseWithLength(data, size);
    if (!cJSON_IsObject(ev)) {
        cJSON_Delete(ev);
        llmq_perr_set(err, LLMQ_ERR_PROVIDER_ERROR, 200, true,
                      "provider streamed malformed JSON");
        return -1;
    }
    const char *type = llmq_json_str(ev, "type");
    if (!type)
        type = event;
    s_out_t out = {st, emit, arg, err};
    int rc = 0;
    /*  ping, content_block_stop and unknown events carry nothing for us. */
    for (size_t i = 0; i < sizeof handlers / sizeof handlers[0]; i++)
        if (strcmp(type, handlers[i].type) == 0)
            rc = handlers[i].fn(&out, ev);
    cJSON_Delete(ev);
    return rc;
}

/*  --- Message Batches API: the requests go inline ----------------------- */

/*  {custom_id, params}: params is the realtime body (tools and all). */
static cJSON *s_batch_line(const llmq_provider_t *self, const llmq_call_t *call,
                           const char *custom_id, llmq_perr_t *err)
{
    cJSON *params = s_params(self, call, err);
    if (!params)
        return NULL;
    cJSON *line = cJSON_CreateObject();
    cJSON_AddStringToObject(line, "custom_id", custom_id);
    cJSON_AddItemToObject(line, "params", params);
    return line;
}

/*  RFC 3339 (UTC, "2026-11-22T03:06:28.123Z") to ms; 0 if unreadable. */
static int64_t s_rfc3339_ms(const char *text)
{
    struct tm tm = {0};
    double sec = 0;
    if (!text || sscanf(text, "%d-%d-%dT%d:%d:%lf", &tm.tm_year, &tm.tm_mon,
                        &tm.tm_mday, &tm.tm_hour, &tm.tm_min, &sec) != 6)
        return 0;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    tm.tm_sec = (int)sec;
    return (int64_t)timegm(&tm) * 1000 + (int64_t)((sec - (int)sec) * 1000);
}

/*  in_progress | canceling | ended; an ended batch was cancelled if a
    cancel was initiated, expired if nothing ran. */
static void s_batch_status(const cJSON *b, llmq_batch_status_t *s)
{
    memset(s, 0, sizeof *s);
    s->id = llmq_json_str(b, "id");
    const char *st = llmq_json_str(b, "processing_status");
    const cJSON *rc = cJSON_GetObjectItemCaseSensitive(b, "request_counts");
    int64_t ok = llmq_json_int(rc, "succeeded");
    int64_t err = llmq_json_int(rc, "errored");
    int64_t canceled = llmq_json_int(rc, "canceled");
    int64_t expired = llmq_json_int(rc, "expired");
    s->total = llmq_json_int(rc, "processing") + ok + err + canceled + expired;
    s->done = ok;
    s->failed = err + canceled + expired;
    s->created_ms = s_rfc3339_ms(llmq_json_str(b, "created_at"));
    s->state = "in_progress";
    if (st && strcmp(st, "canceling") == 0)
        s->state = "cancelling";
    else if (st && strcmp(st, "ended") == 0)
        s->state = llmq_json_str(b, "cancel_initiated_at") ? "cancelled"
                   : ok + err == 0 && expired > 0          ? "expired"
                                                           : "completed";
}

/*  No metadata here: the same request count, created within 10 minutes of
    the recorded submit. */
static int s_batch_match(const cJSON *b, const char *job, int64_t count,
                         int64_t time_ms)
{
    (void)job;
    llmq_batch_status_t s;
    s_batch_status(b, &s);
    int64_t skew = s.created_ms - time_ms;
    return s.total == count &&
           (time_ms == 0 || (skew > -600000 && skew < 600000));
}

/*  An error type as the HTTP status the realtime API answers it with. */
static int s_error_status(const char *type)
{
    static const struct {
        const char *type;
        int status;
    } map[] = {{"invalid_request_error", 400},
               {"authentication_error", 401},
               {"permission_error", 403},
               {"not_found_error", 404},
               {"request_too_large", 413},
               {"rate_limit_error", 429},
               {"api_error", 500},
               {"overloaded_error", 529}};
    for (size_t i = 0; type && i < sizeof map / sizeof map[0]; i++)
        if (strcmp(type, map[i].type) == 0)
            return map[i].status;
    return 500;
}

/*  {custom_id, result {type: succeeded | errored | canceled | expired,
    message | error}}. */
static int s_batch_result(const llmq_provider_t *self, const cJSON *line,
                          llmq_batch_answer_t *r)
{
    memset(r, 0, sizeof *r);
    r->custom_id = llmq_json_str(line, "custom_id");
    const cJSON *result = cJSON_GetObjectItemCaseSensitive(line, "result");
    const char *type = llmq_json_str(result, "type");
    if (!r->custom_id || !type)
        return -1;
    const cJSON *msg = cJSON_GetObjectItemCaseSensitive(result, "message");
    llmq_call_t call = {LLMQ_OP_CHAT, NULL, false, NULL};
    if (strcmp(type, "succeeded") == 0 &&
        cJSON_IsArray(cJSON_GetObjectItemCaseSensitive(msg, "content")))
        r->body = s_message(&call, msg, &r->usage);
    else if (strcmp(type, "succeeded") == 0)
        llmq_perr_set(&r->err, LLMQ_ERR_PROVIDER_ERROR, 200, true,
                      "provider answered with a malformed message");
    else if (strcmp(type, "canceled") == 0)
        llmq_perr_set(&r->err, LLMQ_ERR_CANCELLED, 0, false,
                      "batch cancelled before this request ran");
    else if (strcmp(type, "expired") == 0)
        llmq_perr_set(&r->err, LLMQ_ERR_DEADLINE_EXCEEDED, 0, true,
                      "batch expired before this request ran");
    else {
        /*  errored: {error: {type: error, error: {type, message}}}, or the
            inner object directly: classified as realtime would. */
        const cJSON *e = cJSON_GetObjectItemCaseSensitive(result, "error");
        const cJSON *inner = cJSON_GetObjectItemCaseSensitive(e, "error");
        int status = s_error_status(
            llmq_json_str(cJSON_IsObject(inner) ? inner : e, "type"));
        cJSON *wrap = cJSON_CreateObject();
        cJSON_AddItemToObject(
            wrap, "error",
            cJSON_Duplicate(cJSON_IsObject(inner) ? inner : e, true));
        char *text = cJSON_PrintUnformatted(wrap);
        cJSON_Delete(wrap);
        llmq_provider_classify(self, status, text, text ? strlen(text) : 0,
                               &r->err);
        free(text);
    }
    return 0;
}

static const llmq_batch_ops_t s_batch = {
    .batches = "/messages/batches",
    .after = "after_id",
    .files = NULL,
    .results = "/results",
    .head = "{\"requests\":[",
    .sep = ",",
    .tail = "]}",
    .ops = 1u << LLMQ_OP_CHAT,
    .line = s_batch_line,
    .create = NULL,
    .status = s_batch_status,
    .match = s_batch_match,
    .result = s_batch_result,
};

const llmq_provider_ops_t llmq_provider_anthropic_ops = {
    .kind = "anthropic",
    .http = true,
    .build = s_build,
    .parse = s_parse,
    .stream_event = s_stream_event,
    .auth = s_auth,
    .batch = &s_batch,
};
