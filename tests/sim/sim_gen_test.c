/*  sim_gen_test.c — unit test of llmq-sim's pure functions (sim/sim_gen.c):
    FNV-1a, canonical request hash, usage and token rules, directives,
    JSON escaping, OpenAI duration and RFC 3339 formats. The integration
    tests (test_sim.py) cover the HTTP side. */
#include "llmq_check.h"
#include "sim.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int s_failures = 0;

/*  CHECK(cond, fmt, ...): a counted check (llmq_check.h) with the values
    that explain the failure on the next line. */
#define CHECK(cond, ...)                                                       \
    LLMQ_CHECK_OR(cond, s_failures++; fprintf(stderr, "  " __VA_ARGS__);       \
                  fputc('\n', stderr))

/*  Bodies the parser rejects, and the parameter it names (NULL: any). */
static const struct {
    sim_op_t op;
    const char *json;
    const char *param;
    const char *what;
} s_rejected[] = {
    {SIM_OP_MESSAGES,
     "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}]}",
     "max_tokens", "anthropic needs max_tokens"},
    {SIM_OP_MESSAGES,
     "{\"model\":\"m\",\"max_tokens\":3,\"messages\":[{\"role\":\"system\","
     "\"content\":\"x\"}]}",
     NULL, "anthropic rejects system role"},
    {SIM_OP_CHAT, "{\"model\":\"m\"}", "messages", "messages required"},
    {SIM_OP_CHAT, "{\"messages\":[]}", "model", "model required"},
    {SIM_OP_CHAT,
     "{\"model\":\"m\",\"max_tokens\":1.5,\"messages\":[{\"role\":\"u\"}]}",
     "max_tokens", "integer max_tokens"},
    {SIM_OP_CHAT, "[1]", NULL, "array body"},
};

static int s_parse(sim_req_t *r, sim_op_t op, const char *json,
                   const char **param)
{
    cJSON *body = cJSON_Parse(json);
    char err[256];
    const char *p = NULL;
    int rc = sim_req_parse(r, op, body, err, sizeof(err), &p);
    if (param)
        *param = p;
    cJSON_Delete(body);
    return rc;
}

static void s_test_formats(void)
{
    CHECK(sim_fnv(SIM_FNV_OFFSET, "", 0) == 0xcbf29ce484222325ULL, "fnv empty");
    CHECK(sim_fnv(SIM_FNV_OFFSET, "a", 1) == 0xaf63dc4c8601ec8cULL, "fnv 'a'");
    CHECK(sim_fnv(SIM_FNV_OFFSET, "foobar", 6) == 0x85944171f73967e8ULL,
          "fnv 'foobar'");
    struct {
        int64_t ms;
        const char *want;
    } d[] = {{0, "0ms"},          {120, "120ms"},   {999, "999ms"},
             {1000, "1s"},        {1500, "1.5s"},   {1234, "1.234s"},
             {60000, "1m0s"},     {360000, "6m0s"}, {90500, "1m30.5s"},
             {3723000, "1h2m3s"}, {-5, "0ms"}};
    for (size_t i = 0; i < sizeof(d) / sizeof(d[0]); i++) {
        char buf[32];
        sim_duration(buf, sizeof(buf), d[i].ms);
        CHECK(strcmp(buf, d[i].want) == 0,
              "duration %" PRId64 ": got %s want %s", d[i].ms, buf, d[i].want);
    }
    char t[48];
    sim_rfc3339(t, sizeof(t), 0);
    CHECK(strcmp(t, "1970-01-01T00:00:00.000Z") == 0, "rfc3339 epoch: %s", t);
    sim_rfc3339(t, sizeof(t), 1795317297123LL);
    CHECK(strcmp(t, "2026-11-22T03:14:57.123Z") == 0, "rfc3339: %s", t);

    struct evbuffer *out = evbuffer_new();
    sim_json_str(out, "a\"b\\c\n\x01");
    size_t n = evbuffer_get_length(out);
    char *s = (char *)evbuffer_pullup(out, -1);
    CHECK(n == strlen("\"a\\\"b\\\\c\\n\\u0001\"") &&
              memcmp(s, "\"a\\\"b\\\\c\\n\\u0001\"", n) == 0,
          "json escape: %.*s", (int)n, s);
    evbuffer_free(out);

    char *text = sim_text(0x0123456789abcdefULL, 5);
    CHECK(strncmp(text, "sim-0123456789abcdef ", 21) == 0, "text prefix: %s",
          text);
    int words = 1;
    for (char *p = text; *p; p++)
        words += *p == ' ';
    CHECK(words == 5, "text words %d", words);
    char *again = sim_text(0x0123456789abcdefULL, 5);
    CHECK(strcmp(text, again) == 0, "text deterministic");
    free(again);
    free(text);
    text = sim_text(42, 1);
    CHECK(strcmp(text, "sim-000000000000002a") == 0, "one word: %s", text);
    free(text);
}

static void s_test_parse(void)
{
    sim_req_t r;
    const char *param;
    //  canonical text and usage rule
    CHECK(s_parse(&r, SIM_OP_CHAT,
                  "{\"model\":\"m\",\"messages\":[{\"role\":\"system\","
                  "\"content\":\"be brief\"},"
                  "{\"role\":\"user\",\"content\":\"hello\"}]}",
                  NULL) == 0,
          "chat parse");
    const char *canon = "m\nsystem:be brief\nuser:hello\n";
    CHECK(r.hash == sim_fnv(SIM_FNV_OFFSET, canon, strlen(canon)),
          "chat canonical hash");
    CHECK(r.prompt_tokens == 4, "prompt tokens ceil(13/4)=4, got %d",
          r.prompt_tokens);
    int natural = 8 + (int)(r.hash % 24);
    CHECK(r.out_tokens == (natural < 16 ? natural : 16), "out tokens rule");
    CHECK(r.max_tokens == 16 && !r.stream, "defaults");
    sim_req_free(&r);
    //  Anthropic system folds into the same canonical text
    CHECK(
        s_parse(
            &r, SIM_OP_MESSAGES,
            "{\"model\":\"m\",\"max_tokens\":5,\"system\":[{\"type\":\"text\","
            "\"text\":\"be "
            "brief\"}],\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
            "\"text\","
            "\"text\":\"hello\"}]}]}",
            NULL) == 0,
        "messages parse");
    CHECK(r.hash == sim_fnv(SIM_FNV_OFFSET, canon, strlen(canon)),
          "anthropic canonical hash");
    CHECK(r.out_tokens <= 5, "max_tokens caps");
    sim_req_free(&r);
    for (size_t k = 0; k < sizeof s_rejected / sizeof s_rejected[0]; k++) {
        param = NULL;
        int rc = s_parse(&r, s_rejected[k].op, s_rejected[k].json, &param);
        const char *want = s_rejected[k].param;
        CHECK(rc == -1 && (!want || (param && strcmp(param, want) == 0)), "%s",
              s_rejected[k].what);
    }
    //  completions and embeddings
    CHECK(s_parse(&r, SIM_OP_COMPLETION,
                  "{\"model\":\"d\",\"prompt\":[\"a\",\"bc\"]}", NULL) == 0,
          "prompts");
    canon = "d\nprompt:a\nprompt:bc\n";
    CHECK(r.hash == sim_fnv(SIM_FNV_OFFSET, canon, strlen(canon)) &&
              r.prompt_tokens == 1,
          "prompt hash");
    sim_req_free(&r);
    CHECK(s_parse(&r, SIM_OP_EMBEDDING,
                  "{\"model\":\"e\",\"input\":[\"a\",\"b\"],\"dimensions\":3}",
                  NULL) == 0,
          "embeddings");
    CHECK(r.n_inputs == 2 && r.dims == 3 && r.input_hash[0] != r.input_hash[1],
          "embedding inputs");
    struct evbuffer *out = evbuffer_new();
    sim_body_embeddings(out, &r);
    size_t n = evbuffer_get_length(out);
    cJSON *j = cJSON_ParseWithLength((const char *)evbuffer_pullup(out, -1), n);
    cJSON *data = cJSON_GetObjectItem(j, "data");
    CHECK(cJSON_GetArraySize(data) == 2 &&
              cJSON_GetArraySize(cJSON_GetObjectItem(
                  cJSON_GetArrayItem(data, 0), "embedding")) == 3,
          "embedding body");
    cJSON_Delete(j);
    evbuffer_free(out);
    sim_req_free(&r);
    CHECK(s_parse(&r, SIM_OP_EMBEDDING, "{\"model\":\"e\",\"input\":[1,2]}",
                  &param) == -1,
          "token input refused");
}

static void s_test_directives(void)
{
    sim_req_t r;
    struct {
        const char *text;
        int code, times, hang, mal, reset, delay, tokens;
        bool ctx, counted;
    } d[] = {
        {"x [[sim:fail=500x2]] y", 500, 2, 0, 0, 0, 0, 0, false, true},
        {"[[sim:fail=400]]", 400, 0, 0, 0, 0, 0, 0, false, false},
        {"[[sim:fail=429x1]]", 429, 1, 0, 0, 0, 0, 0, false, true},
        {"[[sim:hang=1, delay_ms=30]]", 0, 0, 1, 0, 0, 30, 0, false, true},
        {"[[sim:malformed=2]] [[sim:reset]]", 0, 0, 0, 2, 1, 0, 0, false, true},
        {"[[sim:context_length]]", 0, 0, 0, 0, 0, 0, 0, true, false},
        {"[[sim:tokens=3]]", 0, 0, 0, 0, 0, 0, 3, false, false},
        {"[[sim:fail=abc]] [[sim:fail=200]] [[sim:nope=1]]", 0, 0, 0, 0, 0, 0,
         0, false, false},
        {"[[sim:fail=500", 0, 0, 0, 0, 0, 0, 0, false, false},
        {"[[sim:delay_ms=99999999999]]", 0, 0, 0, 0, 0, 3600000, 0, false,
         false},
    };
    for (size_t i = 0; i < sizeof(d) / sizeof(d[0]); i++) {
        cJSON *body = cJSON_CreateObject();
        cJSON_AddStringToObject(body, "model", "m");
        cJSON *msgs = cJSON_AddArrayToObject(body, "messages");
        cJSON *m = cJSON_CreateObject();
        cJSON_AddStringToObject(m, "role", "user");
        cJSON_AddStringToObject(m, "content", d[i].text);
        cJSON_AddItemToArray(msgs, m);
        char err[256];
        const char *param;
        int rc = sim_req_parse(&r, SIM_OP_CHAT, body, err, sizeof(err), &param);
        cJSON_Delete(body);
        CHECK(rc == 0, "parse %s", d[i].text);
        CHECK(r.dir.fail_code == d[i].code && r.dir.fail_times == d[i].times &&
                  r.dir.hang == d[i].hang && r.dir.malformed == d[i].mal &&
                  r.dir.reset == d[i].reset && r.dir.delay_ms == d[i].delay &&
                  r.dir.tokens == d[i].tokens &&
                  r.dir.context_length == d[i].ctx &&
                  r.dir.counted == d[i].counted,
              "directives of '%s'", d[i].text);
        sim_req_free(&r);
    }
}

int main(void)
{
    s_test_formats();
    s_test_parse();
    s_test_directives();
    if (s_failures) {
        fprintf(stderr, "sim_gen_test: %d failure(s)\n", s_failures);
        return 1;
    }
    printf("sim_gen_test: ok\n");
    return 0;
}
