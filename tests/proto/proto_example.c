/*  proto_example - prints the example headers of proto/PROTOCOL.md, made by
    the codec itself, and checks that the document still shows those bytes.

    Usage: proto_example            print the dumps (paste into PROTOCOL.md)
           proto_example --check FILE   exit 1 if FILE lacks either dump
*/
#include "llmq_msg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static zframe_t *s_req(void)
{
    static const uint8_t meta[] = {0x81, 0xa3, 'r', 'o', 'w', 0x07};
    llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_REQ);
    llmq_msg_set_id(msg, "r-1");
    llmq_msg_set_op(msg, "chat");
    llmq_msg_set_model(msg, "gpt-4o-mini");
    llmq_msg_set_deadline_ms(msg, 30000);
    llmq_msg_set_meta(msg, meta, sizeof meta);
    zframe_t *frame = llmq_msg_encode(msg, NULL, 0);
    llmq_msg_destroy(&msg);
    return frame;
}

static zframe_t *s_res(void)
{
    static const uint8_t meta[] = {0x81, 0xa3, 'r', 'o', 'w', 0x07};
    llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_RES);
    llmq_msg_set_id(msg, "r-1");
    llmq_msg_set_ok(msg, true);
    llmq_msg_set_usage_prompt_tokens(msg, 9);
    llmq_msg_set_usage_completion_tokens(msg, 2);
    llmq_msg_set_usage_total_tokens(msg, 11);
    llmq_msg_set_usage_cost_usd(msg, 0.25);
    llmq_msg_set_latency_ms(msg, 412);
    llmq_msg_set_attempts(msg, 1);
    llmq_msg_set_attempt(msg, 1);
    llmq_msg_set_worker(msg, "w1");
    llmq_msg_set_cached(msg, false);
    llmq_msg_set_meta(msg, meta, sizeof meta);
    zframe_t *frame = llmq_msg_encode(msg, NULL, 0);
    llmq_msg_destroy(&msg);
    return frame;
}

/*  "0000: 8a a1 76 01 ...  |..v.|" lines, 16 bytes each. */
static char *s_dump(zframe_t *frame)
{
    const uint8_t *data = zframe_data(frame);
    size_t size = zframe_size(frame);
    char *out = (char *)calloc(1, (size / 16 + 1) * 80 + 1);
    char *p = out;
    for (size_t off = 0; off < size; off += 16) {
        p += sprintf(p, "%04zx:", off);
        for (size_t k = off; k < off + 16; k++)
            p += k < size ? sprintf(p, " %02x", data[k]) : sprintf(p, "   ");
        p += sprintf(p, "  |");
        for (size_t k = off; k < off + 16 && k < size; k++)
            *p++ = data[k] >= 0x20 && data[k] < 0x7f ? (char)data[k] : '.';
        p += sprintf(p, "|\n");
    }
    return out;
}

static char *s_read(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    char *text = (char *)calloc(1, 1 << 20);
    if (fread(text, 1, (1 << 20) - 1, f) == 0)
        text[0] = 0;
    fclose(f);
    return text;
}

int main(int argc, char **argv)
{
    zframe_t *req = s_req(), *res = s_res();
    char *dumps[2] = {s_dump(req), s_dump(res)};
    int rc = 0;
    if (argc == 3 && strcmp(argv[1], "--check") == 0) {
        char *doc = s_read(argv[2]);
        for (int k = 0; k < 2; k++)
            if (!doc || !strstr(doc, dumps[k])) {
                fprintf(stderr,
                        "proto_example: %s does not show this %s "
                        "header:\n%s",
                        argv[2], k ? "res" : "req", dumps[k]);
                rc = 1;
            }
        free(doc);
        if (rc == 0)
            printf("proto_example: %s shows both example headers\n", argv[2]);
    } else {
        printf("req header, %zu bytes:\n%s\n", zframe_size(req), dumps[0]);
        printf("res header, %zu bytes:\n%s", zframe_size(res), dumps[1]);
    }
    free(dumps[0]);
    free(dumps[1]);
    zframe_destroy(&req);
    zframe_destroy(&res);
    return rc;
}
