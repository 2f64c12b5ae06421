/*  gw_bench_direct.c - the gateway benchmark's baseline: the same chat
    requests sent straight to the broker through libllmq, closed loop with
    a fixed number outstanding (as wrk keeps one request per connection).

    Usage: gw_bench_direct BROKER MODEL BODY.json SECONDS CONCURRENCY
    Prints one JSON line: {"requests", "errors", "seconds", "rps",
    "p50_us", "p99_us"} with per-request latency measured in microseconds
    from submit to result.
*/
#include "llmq.h"

#include <czmq.h>
#include <poll.h>

typedef struct {
    int64_t *lat;    /* latencies (us) */
    size_t n, cap;   /* count, capacity */
    int64_t errors;  /* failed results */
    int64_t *starts; /* submit time per slot */
} s_bench_t;

static int s_cmp(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void s_on_result(llmq_result_t *res, void *arg)
{
    s_bench_t *b = (s_bench_t *)arg;
    size_t slot = (size_t)(uintptr_t)res->arg;
    if (!res->ok)
        b->errors++;
    if (b->n == b->cap) {
        b->cap = b->cap ? b->cap * 2 : 65536;
        b->lat = (int64_t *)realloc(b->lat, b->cap * sizeof *b->lat);
    }
    b->lat[b->n++] = zclock_usecs() - b->starts[slot];
    b->starts[slot] = -1; //  free for the next submit
}

int main(int argc, char **argv)
{
    if (argc != 6) {
        fprintf(stderr, "usage: gw_bench_direct BROKER MODEL BODY.json "
                        "SECONDS CONCURRENCY\n");
        return 2;
    }
    zsys_init();
    zsys_handler_set(NULL);
    char *json = NULL;
    zfile_t *f = zfile_new(NULL, argv[3]);
    zchunk_t *chunk =
        f && zfile_input(f) == 0 ? zfile_read(f, zfile_cursize(f), 0) : NULL;
    if (!chunk) {
        fprintf(stderr, "gw_bench_direct: cannot read %s\n", argv[3]);
        return 2;
    }
    json = zchunk_strdup(chunk);
    cJSON *body = cJSON_Parse(json);
    int64_t seconds = atoll(argv[4]);
    size_t conc = (size_t)atoll(argv[5]);
    llmq_client_t *client = llmq_client_new(argv[1]);
    if (!body || !client || conc == 0)
        return 2;
    s_bench_t b = {0};
    b.starts = (int64_t *)malloc(conc * sizeof *b.starts);
    for (size_t i = 0; i < conc; i++)
        b.starts[i] = -1;
    llmq_client_set_window(client, conc);
    llmq_client_set_callback(client, s_on_result, &b);
    int64_t t0 = zclock_usecs(), end = t0 + seconds * 1000000;
    while (zclock_usecs() < end && !zsys_interrupted) {
        for (size_t i = 0; i < conc; i++)
            if (b.starts[i] < 0) {
                b.starts[i] = zclock_usecs();
                llmq_client_submit(client, LLMQ_OP_CHAT, argv[2], body, NULL,
                                   (void *)(uintptr_t)i);
            }
        //  Results go to the callback; wait on the socket only when no
        //  input is queued (ZMQ_FD is edge-triggered: check first) and no
        //  slot was freed (refill first).
        size_t before = b.n;
        if (llmq_client_process(client) == 0 && b.n == before) {
            struct pollfd pfd = {llmq_client_fd(client), POLLIN, 0};
            poll(&pfd, 1, 1);
        }
    }
    double secs = (double)(zclock_usecs() - t0) / 1e6;
    llmq_client_wait(client, 5000);
    qsort(b.lat, b.n, sizeof *b.lat, s_cmp);
    printf("{\"requests\":%zu,\"errors\":%" PRId64 ",\"seconds\":%.3f,"
           "\"rps\":%.0f,\"p50_us\":%" PRId64 ",\"p99_us\":%" PRId64 "}\n",
           b.n, b.errors, secs, (double)b.n / secs, b.n ? b.lat[b.n / 2] : 0,
           b.n ? b.lat[b.n * 99 / 100] : 0);
    llmq_client_destroy(&client);
    cJSON_Delete(body);
    free(json);
    zchunk_destroy(&chunk);
    zfile_destroy(&f);
    free(b.lat);
    free(b.starts);
    return 0;
}
