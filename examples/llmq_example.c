/*  llmq_example.c - the C client API in one page: a synchronous chat, a
    windowed asynchronous run, and a streamed answer.

        llmq_example tcp://127.0.0.1:5555 gpt-4o-mini

    Build: cc llmq_example.c $(pkg-config --cflags --libs libllmq)
    (in this tree it is built as <build>/bin/llmq_example).
*/
#include <llmq.h>
#include <stdio.h>

static void s_print_delta(const char *id, const cJSON *chunk, const char *delta,
                          void *arg)
{
    (void)id;
    (void)chunk;
    (void)arg;
    fputs(delta, stdout);
    fflush(stdout);
}

static cJSON *s_chat(const char *text)
{
    cJSON *body = cJSON_CreateObject();
    cJSON *message = cJSON_CreateObject();
    cJSON_AddStringToObject(message, "role", "user");
    cJSON_AddStringToObject(message, "content", text);
    cJSON_AddItemToArray(cJSON_AddArrayToObject(body, "messages"), message);
    cJSON_AddNumberToObject(body, "max_tokens", 32);
    return body;
}

int main(int argc, char **argv)
{
    const char *endpoint = argc > 1 ? argv[1] : LLMQ_DEFAULT_ENDPOINT;
    const char *model = argc > 2 ? argv[2] : "gpt-4o-mini";
    llmq_client_t *client = llmq_client_new(endpoint);
    if (!client || llmq_client_ping(client, 3000, NULL) < 0) {
        fprintf(stderr, "no broker at %s\n", endpoint);
        llmq_client_destroy(&client);
        return 3;
    }
    int failed = 0;

    //  1. Synchronous: one request, one result.
    cJSON *body = s_chat("Say hello");
    llmq_result_t *result = llmq_infer(client, LLMQ_OP_CHAT, model, body, NULL);
    if (result && result->ok)
        printf("sync: %s (%lld tokens, $%.6f, worker %s)\n",
               llmq_result_text(result), (long long)result->total_tokens,
               result->cost_usd, result->worker ? result->worker : "?");
    else {
        printf("sync failed: %s: %s\n",
               result ? result->error_code : "interrupted",
               result && result->error_message ? result->error_message : "");
        failed++;
    }
    llmq_result_destroy(&result);
    cJSON_Delete(body);

    //  2. Asynchronous: 20 requests, at most 8 outstanding; results come
    //  back as they finish, each with the argument given at submit.
    llmq_client_set_window(client, 8);
    int numbers[20];
    for (int i = 0; i < 20; i++) {
        char text[64];
        snprintf(text, sizeof(text), "Question %d", i);
        numbers[i] = i;
        body = s_chat(text);
        llmq_client_submit(client, LLMQ_OP_CHAT, model, body, NULL,
                           &numbers[i]);
        cJSON_Delete(body);
    }
    int answered = 0;
    while ((result = llmq_client_poll(client, -1))) {
        answered += result->ok;
        failed += !result->ok;
        llmq_result_destroy(&result);
    }
    printf("async: %d of 20 answered\n", answered);

    //  3. Streaming: chunks as they are generated.
    body = s_chat("Tell me a story");
    printf("stream: ");
    result = llmq_stream(client, model, body, s_print_delta, NULL);
    printf("\n");
    failed += !(result && result->ok);
    llmq_result_destroy(&result);
    cJSON_Delete(body);

    llmq_client_destroy(&client);
    return failed ? 1 : 0;
}
