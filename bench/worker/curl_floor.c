/*  curl_floor.c - the floor for bench/worker/callgrind.sh: a tuned libcurl
    client doing only HTTP, what llmq-worker's per-request cost is measured
    against.

    It POSTs the body llmq-worker sends for bench_worker's request (same
    headers: Content-Type, Expect:, Authorization, User-Agent) to
    {BASE}/chat/completions, keeping IN_FLIGHT transfers running on curl
    multi handles of 64 connections each (as the worker shards them),
    driven by one epoll set and curl_multi_socket_action (the worker's
    loop), with easy handles set up once and reused, keep-alive
    connections, the URL parsed once (CURLOPT_CURLU), and the answer
    appended to a reused buffer and dropped. No
    JSON, no messages, no limiter: libcurl's own cost per request.
    LLMQ_FLOOR_WORKER_OPTS=1 adds the libcurl options llmq-worker sets
    (header callback, connect and transfer timeouts, HTTP/2 over TLS,
    pipewait, keep-alive probes, 8 KB buffer): what those cost libcurl.

    usage: curl_floor BASE_URL REQUESTS [IN_FLIGHT]
*/
#include <curl/curl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#define S_SHARD 64
#define S_MAX_SHARDS 64

typedef struct _s_floor_t s_floor_t;
typedef struct {
    s_floor_t *f;
    CURLM *multi;
    int index;
    long due; /* curl's timer, monotonic ms; -1 none */
} s_shard_t;

struct _s_floor_t {
    s_shard_t shards[S_MAX_SHARDS];
    int nshards;
    int epfd;
    char body[256]; /* the request body */
    struct curl_slist *headers;
    char url[512];
    CURLU *parsed; /* url, parsed once */
    long done, failed;
};

typedef struct {
    char *buf;
    size_t len, cap;
} s_answer_t;

static size_t s_on_write(char *data, size_t size, size_t nmemb, void *arg)
{
    s_answer_t *a = arg;
    size_t n = size * nmemb;
    if (a->len + n > a->cap) {
        size_t cap = (a->len + n) * 2;
        char *b = realloc(a->buf, cap);
        if (!b)
            return 0;
        a->buf = b;
        a->cap = cap;
    }
    memcpy(a->buf + a->len, data, n);
    a->len += n;
    return n;
}

static int s_on_socket(CURL *easy, curl_socket_t fd, int what, void *userp,
                       void *socketp)
{
    (void)easy;
    (void)socketp;
    s_shard_t *sh = userp;
    s_floor_t *f = sh->f;
    if (what == CURL_POLL_REMOVE) {
        epoll_ctl(f->epfd, EPOLL_CTL_DEL, fd, NULL);
        return 0;
    }
    struct epoll_event ev = {0};
    ev.data.u64 = (uint64_t)sh->index << 32 | (uint32_t)fd;
    ev.events = (what & CURL_POLL_IN ? EPOLLIN : 0) |
                (what & CURL_POLL_OUT ? EPOLLOUT : 0);
    if (epoll_ctl(f->epfd, EPOLL_CTL_MOD, fd, &ev) != 0)
        epoll_ctl(f->epfd, EPOLL_CTL_ADD, fd, &ev);
    return 0;
}

static long s_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*  Headers, looked at and dropped (LLMQ_FLOOR_WORKER_OPTS). */
static size_t s_on_header(char *data, size_t size, size_t nmemb, void *arg)
{
    (void)data;
    (void)arg;
    return size * nmemb;
}

static int s_on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    ((s_shard_t *)userp)->due = timeout_ms < 0 ? -1 : s_now() + timeout_ms;
    return 0;
}

/*  One easy handle, set up once. */
static CURL *s_easy(s_floor_t *f, s_answer_t *a)
{
    CURL *e = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_CURLU, f->parsed); /* parsed once */
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, f->headers);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, f->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE_LARGE,
                     (curl_off_t)strlen(f->body));
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, s_on_write);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, a);
    curl_easy_setopt(e, CURLOPT_PRIVATE, a);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_NODELAY, 1L);
    curl_easy_setopt(e, CURLOPT_USERAGENT, "llmq-worker/0.0.0");
    curl_easy_setopt(e, CURLOPT_PROXY, "");
    curl_easy_setopt(e, CURLOPT_NOPROXY, "");
    if (getenv("LLMQ_FLOOR_WORKER_OPTS")) {
        /*  The options llmq-worker needs on top (s_easy_new and
            s_start_transfer): what they cost libcurl itself. */
        curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, s_on_header);
        curl_easy_setopt(e, CURLOPT_HEADERDATA, a);
        curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, 10000L);
        curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, 60000L);
        curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
        curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
        curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
        curl_easy_setopt(e, CURLOPT_BUFFERSIZE, 8192L);
    }
    return e;
}

/*  Finished transfers: count, and start the next on the same handle. */
static void s_reap(s_floor_t *f, s_shard_t *sh, long *started, long total)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(sh->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *e = msg->easy_handle;
        long status = 0;
        curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
        if (msg->data.result == CURLE_OK && status == 200)
            f->done++;
        else
            f->failed++;
        s_answer_t *a = NULL;
        curl_easy_getinfo(e, CURLINFO_PRIVATE, (char **)&a);
        a->len = 0;
        curl_multi_remove_handle(sh->multi, e);
        if (*started < total) {
            (*started)++;
            curl_multi_add_handle(sh->multi, e);
        }
    }
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: curl_floor BASE_URL REQUESTS [IN_FLIGHT]\n");
        return 2;
    }
    long total = atol(argv[2]), width = argc > 3 ? atol(argv[3]) : 256;
    curl_global_init(CURL_GLOBAL_DEFAULT);
    s_floor_t f = {.epfd = epoll_create1(0)};
    snprintf(f.url, sizeof f.url, "%s/chat/completions", argv[1]);
    f.parsed = curl_url();
    curl_url_set(f.parsed, CURLUPART_URL, f.url, 0);
    snprintf(f.body, sizeof f.body,
             "{\"messages\":[{\"role\":\"user\",\"content\":\"bench 1\"}],"
             "\"max_tokens\":16,\"model\":\"sim-small\"}");
    f.headers = curl_slist_append(NULL, "Content-Type: application/json");
    f.headers = curl_slist_append(f.headers, "Expect:");
    f.headers =
        curl_slist_append(f.headers, "Authorization: Bearer sk-llmq-sim");
    f.nshards = (int)((width + S_SHARD - 1) / S_SHARD);
    if (f.nshards > S_MAX_SHARDS)
        f.nshards = S_MAX_SHARDS;
    for (int k = 0; k < f.nshards; k++) {
        s_shard_t *sh = &f.shards[k];
        *sh = (s_shard_t){&f, curl_multi_init(), k, -1};
        curl_multi_setopt(sh->multi, CURLMOPT_SOCKETFUNCTION, s_on_socket);
        curl_multi_setopt(sh->multi, CURLMOPT_SOCKETDATA, sh);
        curl_multi_setopt(sh->multi, CURLMOPT_TIMERFUNCTION, s_on_timer);
        curl_multi_setopt(sh->multi, CURLMOPT_TIMERDATA, sh);
    }
    s_answer_t *answers = calloc((size_t)width, sizeof *answers);
    CURL **easies = calloc((size_t)width, sizeof *easies);
    long started = 0;
    for (long i = 0; i < width && started < total; i++, started++) {
        easies[i] = s_easy(&f, &answers[i]);
        curl_multi_add_handle(f.shards[i % f.nshards].multi, easies[i]);
    }
    int running = 1;
    while (f.done + f.failed < total) {
        struct epoll_event ev[256];
        long now = s_now(), wait = 1000;
        for (int k = 0; k < f.nshards; k++)
            if (f.shards[k].due >= 0 && f.shards[k].due - now < wait)
                wait = f.shards[k].due > now ? f.shards[k].due - now : 0;
        int n = epoll_wait(f.epfd, ev, 256, (int)wait);
        now = s_now();
        for (int k = 0; k < f.nshards; k++)
            if (f.shards[k].due >= 0 && f.shards[k].due <= now) {
                f.shards[k].due = -1;
                curl_multi_socket_action(f.shards[k].multi, CURL_SOCKET_TIMEOUT,
                                         0, &running);
            }
        for (int i = 0; i < n; i++) {
            int mask = (ev[i].events & EPOLLIN ? CURL_CSELECT_IN : 0) |
                       (ev[i].events & EPOLLOUT ? CURL_CSELECT_OUT : 0);
            s_shard_t *sh = &f.shards[ev[i].data.u64 >> 32];
            curl_multi_socket_action(sh->multi,
                                     (curl_socket_t)(uint32_t)ev[i].data.u64,
                                     mask, &running);
        }
        for (int k = 0; k < f.nshards; k++)
            s_reap(&f, &f.shards[k], &started, total);
    }
    printf("requests=%ld done=%ld failed=%ld\n", total, f.done, f.failed);
    for (long i = 0; i < width; i++)
        if (easies[i]) {
            curl_multi_remove_handle(f.shards[i % f.nshards].multi, easies[i]);
            curl_easy_cleanup(easies[i]);
            free(answers[i].buf);
        }
    free(easies);
    free(answers);
    for (int k = 0; k < f.nshards; k++)
        curl_multi_cleanup(f.shards[k].multi);
    curl_slist_free_all(f.headers);
    curl_url_cleanup(f.parsed);
    close(f.epfd);
    curl_global_cleanup();
    return f.failed ? 1 : 0;
}
