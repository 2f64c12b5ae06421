/*  gw_selftest.c - the gateway's pure parts without a network: Anthropic
    <-> OpenAI translation (text, images, system, stop sequences, tools,
    tool calls and results, stop reasons), base64 embeddings, multipart
    parsing, the error code -> HTTP status map, and the key file with its
    reload. The HTTP routes are tested end to end in tests/gateway.
*/
#include "gw.h"

#include <unistd.h>

static int s_failures = 0;

#include "llmq_check.h"
#define S_CHECK(cond) LLMQ_CHECK_COUNT(cond, s_failures)

static const char *s_get(const cJSON *root, const char *path)
{
    //  "a.0.b" -> root.a[0].b as a string ("" if absent)
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    const cJSON *cur = root;
    char *save = NULL;
    for (char *k = strtok_r(buf, ".", &save); k && cur;
         k = strtok_r(NULL, ".", &save))
        cur = (*k >= '0' && *k <= '9') ? cJSON_GetArrayItem(cur, atoi(k))
                                       : cJSON_GetObjectItem(cur, k);
    return cJSON_IsString(cur) ? cur->valuestring : "";
}

static void s_test_to_openai(void)
{
    cJSON *a = cJSON_Parse(
        "{\"model\":\"m\",\"max_tokens\":9,\"system\":[{\"type\":\"text\","
        "\"text\":\"sys\"}],\"stop_sequences\":[\"X\"],\"tools\":[{\"name\":"
        "\"f\",\"description\":\"d\",\"input_schema\":{\"type\":\"object\"}}],"
        "\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"text\","
        "\"text\":\"hi\"},{\"type\":\"image\",\"source\":{\"type\":\"base64\","
        "\"media_type\":\"image/png\",\"data\":\"QQ==\"}}]},{\"role\":"
        "\"assistant\",\"content\":[{\"type\":\"tool_use\",\"id\":\"t1\","
        "\"name\":\"f\",\"input\":{\"x\":1}}]},{\"role\":\"user\",\"content\":"
        "[{\"type\":\"tool_result\",\"tool_use_id\":\"t1\",\"content\":"
        "\"42\"}]}]}");
    char err[128] = "";
    cJSON *o = gw_anthropic_to_openai(a, err, sizeof err);
    S_CHECK(o != NULL);
    S_CHECK(streq(s_get(o, "messages.0.role"), "system"));
    S_CHECK(streq(s_get(o, "messages.0.content"), "sys"));
    S_CHECK(streq(s_get(o, "messages.1.content.0.text"), "hi"));
    S_CHECK(streq(s_get(o, "messages.1.content.1.image_url.url"),
                  "data:image/png;base64,QQ=="));
    S_CHECK(streq(s_get(o, "messages.2.tool_calls.0.function.name"), "f"));
    S_CHECK(streq(s_get(o, "messages.2.tool_calls.0.function.arguments"),
                  "{\"x\":1}"));
    S_CHECK(streq(s_get(o, "messages.3.role"), "tool"));
    S_CHECK(streq(s_get(o, "messages.3.tool_call_id"), "t1"));
    S_CHECK(streq(s_get(o, "messages.3.content"), "42"));
    S_CHECK(streq(s_get(o, "stop.0"), "X"));
    S_CHECK(streq(s_get(o, "tools.0.function.name"), "f"));
    S_CHECK(cJSON_GetObjectItem(o, "max_tokens")->valueint == 9);
    cJSON_Delete(o);
    cJSON_DeleteItemFromObject(a, "max_tokens");
    S_CHECK(gw_anthropic_to_openai(a, err, sizeof err) == NULL);
    S_CHECK(strstr(err, "max_tokens") != NULL);
    cJSON_Delete(a);
}

static void s_test_to_anthropic(void)
{
    cJSON *o = cJSON_Parse(
        "{\"id\":\"c1\",\"choices\":[{\"message\":{\"content\":\"hello\","
        "\"tool_calls\":[{\"id\":\"t\",\"function\":{\"name\":\"f\","
        "\"arguments\":\"{\\\"y\\\":2}\"}}]},\"finish_reason\":\"tool_"
        "calls\"}]}");
    cJSON *a = gw_openai_to_anthropic(o, "m", 3, 4);
    S_CHECK(streq(s_get(a, "id"), "msg_c1"));
    S_CHECK(streq(s_get(a, "type"), "message"));
    S_CHECK(streq(s_get(a, "content.0.text"), "hello"));
    S_CHECK(streq(s_get(a, "content.1.type"), "tool_use"));
    S_CHECK(streq(s_get(a, "content.1.name"), "f"));
    S_CHECK(cJSON_GetObjectItem(
                cJSON_GetObjectItem(
                    cJSON_GetArrayItem(cJSON_GetObjectItem(a, "content"), 1),
                    "input"),
                "y")
                ->valueint == 2);
    S_CHECK(streq(s_get(a, "stop_reason"), "tool_use"));
    S_CHECK(
        cJSON_GetObjectItem(cJSON_GetObjectItem(a, "usage"), "output_tokens")
            ->valueint == 4);
    cJSON_Delete(a);
    cJSON_Delete(o);
}

static void s_test_b64(void)
{
    cJSON *arr = cJSON_Parse("[1.0]");
    char *b = gw_floats_b64(arr);
    S_CHECK(b && streq(b, "AACAPw==")); //  00 00 80 3f
    free(b);
    cJSON_Delete(arr);
    arr = cJSON_Parse("[1.0, -2.0]");
    b = gw_floats_b64(arr);
    S_CHECK(b && streq(b, "AACAPwAAAMA=")); //  + 00 00 00 c0
    free(b);
    cJSON_Delete(arr);
}

static void s_test_multipart(void)
{
    const char *body = "--XyZ\r\nContent-Disposition: form-data; "
                       "name=\"purpose\"\r\n\r\nbatch\r\n--XyZ\r\n"
                       "Content-Disposition: form-data; name=\"file\"; "
                       "filename=\"in.jsonl\"\r\nContent-Type: "
                       "application/jsonl\r\n\r\n{\"a\":1}\n\r\n--XyZ--\r\n";
    gw_part_t parts[4];
    int n = gw_multipart(body, strlen(body), "XyZ", parts, 4);
    S_CHECK(n == 2);
    S_CHECK(n == 2 && streq(parts[0].name, "purpose") && parts[0].len == 5);
    S_CHECK(n == 2 && streq(parts[1].name, "file") &&
            streq(parts[1].filename, "in.jsonl") && parts[1].len == 8 &&
            memcmp(parts[1].data, "{\"a\":1}\n", 8) == 0);
    S_CHECK(gw_multipart(body, 30, "XyZ", parts, 4) == -1); //  cut short
    S_CHECK(gw_multipart("garbage", 7, "XyZ", parts, 4) == -1);
}

static void s_test_status_map(void)
{
    S_CHECK(gw_http_status_of("auth") == 401);
    S_CHECK(gw_http_status_of("not_found") == 404);
    S_CHECK(gw_http_status_of("overloaded") == 429);
    S_CHECK(gw_http_status_of("provider_error") == 502);
    S_CHECK(gw_http_status_of("invalid_request") == 400);
    S_CHECK(gw_http_status_of("no-such-code") == 500);
}

static void s_test_keys(void)
{
    char path[] = "/tmp/llmq-gw-keys-XXXXXX";
    int fd = mkstemp(path);
    S_CHECK(fd >= 0);
    const char *v1 = "# comment\nk1 alice\n  k2\tbob # trailing\n\nk3\n";
    S_CHECK(write(fd, v1, strlen(v1)) == (ssize_t)strlen(v1));
    close(fd);
    gw_keys_t *keys = gw_keys_new(path);
    S_CHECK(keys != NULL);
    if (keys) {
        S_CHECK(streq(gw_keys_tenant(keys, "k1"), "alice"));
        S_CHECK(streq(gw_keys_tenant(keys, "k2"), "bob"));
        S_CHECK(streq(gw_keys_tenant(keys, "k3"), "default"));
        S_CHECK(gw_keys_tenant(keys, "nope") == NULL);
        FILE *f = fopen(path, "w");
        fputs("k9 carol\n", f); //  other size: reloaded even in the same ns
        fclose(f);
        gw_keys_reload(keys);
        S_CHECK(gw_keys_tenant(keys, "k1") == NULL);
        S_CHECK(streq(gw_keys_tenant(keys, "k9"), "carol"));
        unlink(path);
        gw_keys_reload(keys); //  unreadable: keeps the keys
        S_CHECK(streq(gw_keys_tenant(keys, "k9"), "carol"));
    }
    gw_keys_destroy(&keys);
    S_CHECK(keys == NULL);
    S_CHECK(gw_keys_new("/nonexistent/keys") == NULL);
}

//  The small shared helpers: tables, strings or null, paths with an id.
static void s_test_helpers(void)
{
    static const char *const table[][2] = {
        {"a", "1"}, {"b", "2"}, {NULL, NULL}};
    S_CHECK(streq(gw_lookup(table, "b", "?"), "2"));
    S_CHECK(streq(gw_lookup(table, "c", "?"), "?"));
    S_CHECK(gw_lookup(table, NULL, NULL) == NULL);
    cJSON *o = cJSON_Parse("{\"s\":\"x\",\"n\":1}");
    S_CHECK(streq(gw_str(o, "s", NULL), "x"));
    S_CHECK(streq(gw_str(o, "n", "none"), "none"));
    gw_json_add_text(o, "t", "y");
    gw_json_add_text(o, "z", NULL);
    S_CHECK(streq(gw_str(o, "t", NULL), "y"));
    S_CHECK(cJSON_IsNull(cJSON_GetObjectItem(o, "z")));
    cJSON_Delete(o);
    char id[72], tail[32];
    gw_call_t c = {.path = "/v1/batches/batch_1/cancel"};
    gw_path_id(&c, "/v1/batches", id, tail);
    S_CHECK(streq(id, "batch_1") && streq(tail, "cancel"));
    c.path = "/v1/batches";
    gw_path_id(&c, "/v1/batches", id, tail);
    S_CHECK(!*id && !*tail);
    S_CHECK(gw_api_of("/v1/messages/batches") == GW_API_ANTHROPIC);
    S_CHECK(gw_api_of("/v1/batches") == GW_API_OPENAI);
}

int main(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    zsys_init();
    s_test_to_openai();
    s_test_to_anthropic();
    s_test_b64();
    s_test_multipart();
    s_test_status_map();
    s_test_keys();
    s_test_helpers();
    printf("gw_selftest: %s\n", s_failures ? "FAILED" : "OK");
    return s_failures ? 1 : 0;
}
