/*  make_corpus.c - writes the fuzzer's seed corpus (proto/fuzz/corpus/).

    Usage: fuzz_make_corpus DIR

    Each file is one fuzz input: a first byte saying whether a payload frame
    follows (bit 0), then the bytes. Seeds: every message type with only its
    required fields and with every field set, payload values (a chat request,
    a response, batch items, a status payload), the typed payloads as
    llmq_payload.c writes them, and a few broken headers, so
    the fuzzer starts from every branch of the decoder. The files are made
    by the codec itself, never by hand, and committed.
*/
#include "llmq_msg.h"
#include "llmq_payload.h"
#include "llmq_value.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LLMQ_REQ(field) LLMQ_F_##field,
#define LLMQ_MSG(ID, name, payload, required)                                  \
    static const int s_req_##ID[] = {required - 1};
#include "llmq_proto.def"

typedef struct {
    llmq_msg_type_t type;
    bool payload; /* the type takes a payload (OPT or REQ) */
    const int *required;
} seed_t;

static const seed_t s_seeds[] = {
#define LLMQ_PAYLOAD_NONE false
#define LLMQ_PAYLOAD_OPT true
#define LLMQ_PAYLOAD_REQ true
#define LLMQ_MSG(ID, name, payload, required)                                  \
    {LLMQ_MSG_##ID, LLMQ_PAYLOAD_##payload, s_req_##ID},
#include "llmq_proto.def"
};

static const char *s_dir;

static void s_write(const char *name, bool payload, const void *data,
                    size_t size)
{
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", s_dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "fuzz_make_corpus: cannot write %s\n", path);
        exit(1);
    }
    fputc(payload ? 1 : 0, f);
    fwrite(data, 1, size, f);
    fclose(f);
}

static size_t s_max(int f)
{
    static const size_t max[] = {
#define LLMQ_FIELD(name, group, key, kind, max) max,
#include "llmq_proto.def"
    };
    return max[f];
}

/*  A short sample value for field f (by its kind, through the setters). */
static void s_set(llmq_msg_t *msg, int f)
{
    static const char *models[] = {"gpt-4o-mini", "claude-3-5-haiku"};
    static const uint8_t meta[] = {0x81, 0xa3, 'r', 'u', 'n', 0x07};
    int n = 0;
#define LLMQ_SEED_STR(name)                                                    \
    {                                                                          \
        char text[64];                                                         \
        size_t len = strlen(#name) < s_max(f) ? strlen(#name) : s_max(f);      \
        memcpy(text, #name, len);                                              \
        text[len] = 0;                                                         \
        llmq_msg_set_##name(msg, text);                                        \
    }
#define LLMQ_SEED_INT(name) llmq_msg_set_##name(msg, f * 37 - 100);
#define LLMQ_SEED_BOOL(name) llmq_msg_set_##name(msg, f % 2);
#define LLMQ_SEED_DBL(name) llmq_msg_set_##name(msg, 0.5 + f);
#define LLMQ_SEED_RAW(name) llmq_msg_set_##name(msg, meta, sizeof meta);
#define LLMQ_SEED_STRS(name) llmq_msg_set_##name(msg, models, 2);
#define LLMQ_FIELD(name, group, key, kind, max)                                \
    if (f == n++)                                                              \
    LLMQ_SEED_##kind(name)
#include "llmq_proto.def"
}

static void s_write_msg(const char *name, llmq_msg_t *msg, bool payload)
{
    char err[256];
    zframe_t *frame = llmq_msg_encode(msg, err, sizeof err);
    if (!frame) {
        fprintf(stderr, "fuzz_make_corpus: %s: %s\n", name, err);
        exit(1);
    }
    s_write(name, payload, zframe_data(frame), zframe_size(frame));
    zframe_destroy(&frame);
}

static void s_messages(void)
{
    char name[64];
    for (size_t k = 0; k < sizeof s_seeds / sizeof s_seeds[0]; k++) {
        const seed_t *s = &s_seeds[k];
        llmq_msg_t *msg = llmq_msg_new(s->type);
        for (const int *r = s->required; *r >= 0; r++)
            s_set(msg, *r);
        snprintf(name, sizeof name, "msg-%s-min", llmq_msg_type_name(s->type));
        s_write_msg(name, msg, s->payload);
        for (int f = 0; f < LLMQ_F_COUNT; f++)
            s_set(msg, f);
        snprintf(name, sizeof name, "msg-%s-full", llmq_msg_type_name(s->type));
        s_write_msg(name, msg, s->payload);
        llmq_msg_destroy(&msg);
    }
}

static void s_json(const char *name, const char *json)
{
    char err[256];
    zframe_t *frame =
        llmq_value_from_json_text(json, strlen(json), err, sizeof err);
    if (!frame) {
        fprintf(stderr, "fuzz_make_corpus: %s: %s\n", name, err);
        exit(1);
    }
    s_write(name, false, zframe_data(frame), zframe_size(frame));
    zframe_destroy(&frame);
}

static void s_values(void)
{
    s_json(
        "value-chat-request",
        "{\"model\":\"gpt-4o-mini\",\"temperature\":0.2,\"max_tokens\":64,"
        "\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
        "{\"role\":\"user\",\"content\":\"Caf\\u00e9?\"}],\"stream\":false}");
    s_json("value-chat-response",
           "{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion\","
           "\"created\":1732240000,\"model\":\"gpt-4o-mini\",\"choices\":[{"
           "\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"Yes."
           "\"},\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":9,"
           "\"completion_tokens\":2,\"total_tokens\":11}}");
    s_json("value-embedding",
           "{\"object\":\"list\",\"data\":[{\"object\":\"embedding\",\"index\":"
           "0,\"embedding\":[0.0023,-0.0093,1e-7,-1.5e300]}],"
           "\"big\":12345678901234567890,\"neg\":-9223372036854775808}");
    s_json("value-batch-items",
           "[{\"custom_id\":\"req-1\",\"body\":{\"messages\":[{\"role\":"
           "\"user\",\"content\":\"hi\"}]}},{\"custom_id\":\"req-2\",\"body\":"
           "{\"prompt\":\"x\"},\"extra\":null}]");
    s_json("value-batch-results",
           "[{\"custom_id\":\"req-1\",\"ok\":false,\"error\":{\"code\":"
           "\"rate_limited\",\"message\":\"429\",\"status\":429,\"retryable\":"
           "true},\"usage\":{\"total_tokens\":0}}]");
    s_json(
        "value-status",
        "{\"broker\":\"b1\",\"version\":\"0.1.0\",\"uptime_ms\":1200,"
        "\"workers\":[{\"name\":\"w1\",\"pool\":\"sim\",\"provider\":\"sim\","
        "\"models\":[\"m\"],\"capacity\":64,\"credit\":3,\"in_flight\":61,"
        "\"healthy\":true,\"limit_group\":null}],\"queues\":[{\"model\":"
        "\"m\",\"pool\":\"sim\",\"depth\":0}],\"counters\":{\"received\":1}}");
    s_json("value-scalars",
           "[null,true,false,0,-1,127,128,-33,65536,1.5,\"\"]");
}

static void s_write_frame(const char *name, zframe_t *frame)
{
    if (!frame) {
        fprintf(stderr, "fuzz_make_corpus: %s: encode failed\n", name);
        exit(1);
    }
    s_write(name, false, zframe_data(frame), zframe_size(frame));
    zframe_destroy(&frame);
}

static int s_add_result(const llmq_result_item_t *item, void *arg)
{
    llmq_payload_add_result((llmq_payload_t *)arg, item);
    return 0;
}

/*  The typed payloads, made by their own encoders: results read from JSON
    and written again (the bytes every peer sends), items, keys, status. */
static void s_payloads(void)
{
    const char *json =
        "[{\"custom_id\":\"0\",\"ok\":true,\"body\":{\"id\":\"r1\","
        "\"n\":[1]},\"usage\":{\"prompt_tokens\":9,\"completion_tokens\":2,"
        "\"cost_usd\":0.0011}},{\"custom_id\":\"1\",\"ok\":false,\"error\":"
        "{\"code\":\"rate_limited\",\"message\":\"429\",\"status\":429,"
        "\"retryable\":true}}]";
    zframe_t *page = llmq_value_from_json_text(json, strlen(json), NULL, 0);
    llmq_payload_t *pl = llmq_payload_new();
    if (!page || llmq_payload_each_result(zframe_data(page), zframe_size(page),
                                          s_add_result, pl, NULL, 0) != 2)
        exit(1);
    zframe_destroy(&page);
    s_write_frame("payload-results", llmq_payload_frame(pl));
    llmq_payload_add_item(pl, "req-1", "\x81\xa1n\x01", 4);
    llmq_payload_add_item(pl, "req-2", "\xc0", 1);
    s_write_frame("payload-items", llmq_payload_frame(pl));
    llmq_payload_add_str(pl, "636c69656e742d39:x1");
    s_write_frame("payload-keys", llmq_payload_frame(pl));
    llmq_payload_destroy(&pl);
    const char *models[] = {"m", "*"};
    llmq_status_worker_t w = {"w1", "sim", "sim", models, 2,  64, 3,
                              61,   true,  "g1",  7,      60, 0};
    llmq_status_queue_t q = {"m", NULL, 2, 1};
    llmq_status_counter_t c[] = {{"received", 1}, {"queued", 2}};
    llmq_status_t st = {"b1", "0.1.0", 1200, &w, 1, &q, 1, c, 2, NULL};
    s_write_frame("payload-status", llmq_status_encode(&st));
}

/*  Broken on purpose: the fuzzer mutates these into their neighbours. */
static void s_broken(void)
{
    static const struct {
        const char *name;
        const char *bytes;
        size_t size;
    } seeds[] = {
        {"bad-map32-bomb", "\xdf\xff\xff\xff\xff\xa1v\x01", 8},
        {"bad-array-nesting", "\x81\xa1x\x91\x91\x91\x91\x91\x91\x91\xc0", 11},
        {"bad-version-2", "\x82\xa1v\x02\xa1t\xa4ping", 10},
        {"bad-ext-value", "\x83\xa1v\x01\xa1t\xa2hb\xa1n\xd4\x01\x00", 12},
        {"bad-str32", "\x82\xa1v\x01\xa1t\xdb\xff\xff\xff\xff", 10},
        {"bad-float-header", "\xcb\x3f\xf0\x00\x00\x00\x00\x00\x00", 9},
    };
    for (size_t k = 0; k < sizeof seeds / sizeof seeds[0]; k++)
        s_write(seeds[k].name, false, seeds[k].bytes, seeds[k].size);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: fuzz_make_corpus DIR\n");
        return 2;
    }
    s_dir = argv[1];
    s_messages();
    s_values();
    s_payloads();
    s_broken();
    printf("fuzz_make_corpus: wrote the seed corpus to %s\n", s_dir);
    return 0;
}
