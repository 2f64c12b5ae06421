/*  llmq_provider_echo.c - answers at once, without HTTP.

    For broker benchmarks and smoke tests: the answer is a deterministic
    OpenAI-shaped body derived from the request (the last user message
    echoed back, or a small embedding vector per input), so a test can tell
    which request an answer belongs to. Tokens: characters / 4, rounded up.
*/
#include "llmq_provider.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*  FNV-1a, to give echo ids and vectors that depend on the input. */
static uint64_t s_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; s && *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

/*  Text of a message content: a string, or the text parts of an array. */
static void s_content_text(const cJSON *content, char *out, size_t outlen)
{
    out[0] = 0;
    if (cJSON_IsString(content)) {
        snprintf(out, outlen, "%s", content->valuestring);
        return;
    }
    const cJSON *part;
    size_t len = 0;
    cJSON_ArrayForEach(part, content)
    {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (cJSON_IsString(t) && len < outlen)
            len += snprintf(out + len, outlen - len, "%s", t->valuestring);
    }
}

/*  A small vector per input, derived from the request's hash h. */
static cJSON *s_embeddings(const llmq_call_t *call, uint64_t h,
                           int64_t prompt_tokens, llmq_usage_t *usage)
{
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(r, "data");
    const cJSON *input = cJSON_GetObjectItemCaseSensitive(call->body, "input");
    int n = cJSON_IsArray(input) ? cJSON_GetArraySize(input) : 1;
    for (int i = 0; i < n && i < 4096; i++) {
        cJSON *e = cJSON_CreateObject();
        cJSON_AddStringToObject(e, "object", "embedding");
        cJSON_AddNumberToObject(e, "index", i);
        cJSON *v = cJSON_AddArrayToObject(e, "embedding");
        uint64_t x = h + (uint64_t)i;
        for (int k = 0; k < 8; k++) {
            x = x * 6364136223846793005ULL + 1442695040888963407ULL;
            cJSON_AddItemToArray(
                v, cJSON_CreateNumber((double)(x >> 40) / 16777216.0 - 0.5));
        }
        cJSON_AddItemToArray(data, e);
    }
    cJSON_AddStringToObject(r, "model", call->model ? call->model : "echo");
    cJSON *u = cJSON_AddObjectToObject(r, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", (double)prompt_tokens);
    cJSON_AddNumberToObject(u, "total_tokens", (double)prompt_tokens);
    usage->prompt_tokens = prompt_tokens;
    usage->completion_tokens = 0;
    usage->total_tokens = prompt_tokens;
    return r;
}

/*  What echo says back: the prompt, or the last user message. */
static void s_echo_text(const llmq_call_t *call, char *text, size_t size)
{
    text[0] = 0;
    if (call->op == LLMQ_OP_COMPLETION) {
        s_content_text(cJSON_GetObjectItemCaseSensitive(call->body, "prompt"),
                       text, size);
        return;
    }
    const cJSON *m;
    cJSON_ArrayForEach(m,
                       cJSON_GetObjectItemCaseSensitive(call->body, "messages"))
    {
        const char *role = llmq_json_str(m, "role");
        if (role && strcmp(role, "user") == 0)
            s_content_text(cJSON_GetObjectItemCaseSensitive(m, "content"), text,
                           size);
    }
}

static cJSON *s_answer(const llmq_provider_t *self, const llmq_call_t *call,
                       llmq_usage_t *usage, llmq_perr_t *err)
{
    (void)self;
    if (!cJSON_IsObject(call->body)) {
        llmq_perr_set(err, LLMQ_ERR_INVALID_REQUEST, 0, false,
                      "request payload must be a map (an OpenAI request body)");
        return NULL;
    }
    char *prompt_json = cJSON_PrintUnformatted(call->body);
    uint64_t h = s_hash(prompt_json);
    int64_t prompt_tokens =
        prompt_json ? ((int64_t)strlen(prompt_json) + 3) / 4 : 0;
    free(prompt_json);
    if (call->op == LLMQ_OP_EMBEDDING)
        return s_embeddings(call, h, prompt_tokens, usage);

    char text[1024], reply[1100], id[40];
    s_echo_text(call, text, sizeof text);
    snprintf(reply, sizeof reply, "echo: %s", text);
    snprintf(id, sizeof id, "echo-%016llx", (unsigned long long)h);
    int64_t completion_tokens = ((int64_t)strlen(reply) + 3) / 4;
    bool completion = call->op == LLMQ_OP_COMPLETION;
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "id", id);
    cJSON_AddStringToObject(r, "object",
                            completion ? "text_completion" : "chat.completion");
    cJSON_AddNumberToObject(r, "created", 0);
    cJSON_AddStringToObject(r, "model", call->model ? call->model : "echo");
    cJSON *c = cJSON_CreateObject();
    cJSON_AddNumberToObject(c, "index", 0);
    if (completion)
        cJSON_AddStringToObject(c, "text", reply);
    else {
        cJSON *msg = cJSON_AddObjectToObject(c, "message");
        cJSON_AddStringToObject(msg, "role", "assistant");
        cJSON_AddStringToObject(msg, "content", reply);
    }
    cJSON_AddStringToObject(c, "finish_reason", "stop");
    cJSON_AddItemToArray(cJSON_AddArrayToObject(r, "choices"), c);
    llmq_usage_add_json(r, prompt_tokens, completion_tokens);
    usage->prompt_tokens = prompt_tokens;
    usage->completion_tokens = completion_tokens;
    usage->total_tokens = prompt_tokens + completion_tokens;
    return r;
}

const llmq_provider_ops_t llmq_provider_echo_ops = {
    .kind = "echo",
    .http = false,
    .answer = s_answer,
};
