/*  line_bench.c - what `llmq run` spends per result line on its side of a
    `res`: decode the response body and write the OUT line. Compiled
    against any tree's libllmq (bench/outline/callgrind.sh builds it twice:
    before and after), it runs N results of a typical chat completion and is
    measured with callgrind's instruction count (repeatable on a busy
    machine). Before (no LLMQ_JSONL_LINE_ID_SIZE): the client decodes the
    msgpack body into a cJSON tree, the line builder duplicates it into the
    line's tree and prints it. After: the client keeps the msgpack bytes
    (raw bodies) and the line is written as text straight from them.

    line_bench N    N result lines (default 10000); prints a checksum
*/
#include "llmq_client.h"
#include "llmq_jsonl.h"
#include "llmq_value.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*  A chat completion as llmq-sim and OpenAI answer it (about 700 bytes). */
static const char *s_body =
    "{\"id\":\"chatcmpl-sim000000012345\",\"object\":\"chat.completion\","
    "\"created\":1764669600,\"model\":\"gpt-4o-mini-2024-07-18\","
    "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
    "\"content\":\"sim-3f2a9c1d: The answer to question 1234 is that the "
    "product of 1234 and 1235 is 1523990. Multiplying the two numbers "
    "gives this result, which you can check by long multiplication.\","
    "\"refusal\":null,\"annotations\":[]},\"logprobs\":null,"
    "\"finish_reason\":\"stop\"}],\"usage\":{\"prompt_tokens\":19,"
    "\"completion_tokens\":42,\"total_tokens\":61,"
    "\"prompt_tokens_details\":{\"cached_tokens\":0,\"audio_tokens\":0},"
    "\"completion_tokens_details\":{\"reasoning_tokens\":0,\"audio_tokens\":0,"
    "\"accepted_prediction_tokens\":0,\"rejected_prediction_tokens\":0}},"
    "\"service_tier\":\"default\",\"system_fingerprint\":\"fp_sim0001\"}";

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 10000;
    zframe_t *frame =
        llmq_value_from_json_text(s_body, strlen(s_body), NULL, 0);
    if (!frame)
        return 1;
    unsigned long sum = 0;
    for (long i = 0; i < n; i++) {
        llmq_result_t *r = (llmq_result_t *)calloc(1, sizeof(*r));
        r->ok = true;
        r->cost_usd = 0.0000123;
        r->attempts = 1;
        r->worker = strdup("sim-vm-1");
#ifdef LLMQ_JSONL_LINE_ID_SIZE
        //  After: the res payload kept as bytes (s_res_body, raw bodies).
        r->body_msgpack = (uint8_t *)malloc(zframe_size(frame));
        memcpy(r->body_msgpack, zframe_data(frame), zframe_size(frame));
        r->body_msgpack_size = zframe_size(frame);
        r->request_id = strdup("req_sim000000012345");
        r->trace = strdup("00-4bf92f3577b34da6a3ce929d0e0e4736-"
                          "00f067aa0ba902b7-01");
#else
        //  Before: the res payload decoded into a tree (s_handle_res).
        r->body =
            llmq_value_to_json(zframe_data(frame), zframe_size(frame), NULL, 0);
#endif
        char custom_id[32];
        snprintf(custom_id, sizeof custom_id, "req-%05ld", i);
        char *line = llmq_jsonl_result_line(custom_id, r);
        sum += line ? strlen(line) : 0;
        free(line);
        llmq_result_destroy(&r);
    }
    zframe_destroy(&frame);
    printf("%lu\n", sum);
    return 0;
}
