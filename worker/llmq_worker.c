/*  llmq_worker.c - the worker engine (see llmq_worker.h).

    Design. One thread runs one loop:

        wait   epoll_wait over one set holding every curl socket and the
               ZMQ_FDs of the DEALER and the actor's pipe (DRAIN, $TERM)
               (zmq_poll over those and the epoll fd when metrics
               scrapers are served); the timeout is the nearest of:
               heartbeat, curl's timer, a retry coming due, the limiter's
               next start, a health probe, the drain deadline
        curl   epoll events -> curl_multi_socket_action; finished transfers
               -> s_transfer_done (parse, classify, retry or answer)
        zmq    drain the DEALER: req, cancel, limits, hb, error
        timers retries due, heartbeat, broker liveness, breaker probe
        start  jobs waiting for the limiter start as it allows
        credit grant what the limiter lets start within ~1 s, coalesced

    A request ("job") lives from its `req` until its one `res`: QUEUED
    (waiting for the limiter or the breaker), RUNNING (an HTTP attempt on
    curl), WAITING (backoff before the next attempt, in the retry queue by
    due time: proto/llmq_queue.h, the heap the broker's queues use too).
    The broker's credit counts jobs held, so capacity bounds memory: jobs
    keep only the built HTTP request and the answer being received.

    Retries happen here, never in the broker: 408/409/429/5xx, timeouts,
    connection errors and broken JSON, with exponential backoff and full
    jitter, at least the provider's retry-after, up to max_attempts and the
    request's deadline. A stream that already relayed chunks is never
    retried (the client has seen them).

    Delivery across broker restarts (PROTOCOL.md 3.3): the answer to a
    request with a request key (`rkey`), and a stream's chunks, are kept
    (s_held_t) until the broker acks them; after each hello a `held`
    message lists them and the running keyed jobs; a `req` with `resend`
    and a known key is answered from them instead of a provider call.
*/
#include "llmq_worker.h"

#include <curl/curl.h>
#include <openssl/crypto.h>
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include "llmq_batch_api.h"
#include "llmq_curve.h"
#include "llmq_limiter.h"
#include "llmq_msg.h"
#include "llmq_provider.h"
#include "llmq_queue.h"
#include "llmq_sse.h"
#include "llmq_payload.h"
#include "llmq_value.h"
#include "llmq_log.h"
#include "llmq_wmetrics.h"

/*  Largest answer body kept in memory; beyond it the attempt fails. */
#define S_MAX_BODY (64 * 1024 * 1024)
/*  Largest SSE event. */
#define S_MAX_EVENT (8 * 1024 * 1024)
/*  A broker silent for this many heartbeats is dead. */
#define S_HB_LIVENESS 3
/*  Messages read from the DEALER per loop turn, so curl is served too. */
#define S_ZMQ_BATCH 4096
#define S_METRIC_ITEMS 17 /* metrics listener + scrapers served at once */
/*  Held results (PROTOCOL.md 3.3): at most this many, this many bytes, and
    for this long after they were sent, whichever ends first. */
#define S_HELD_MAX 10000
#define S_HELD_BYTES (64 * 1024 * 1024)
#define S_HELD_MS (5 * 60 * 1000)
/*  Request keys per `held` message. */
#define S_HELD_PER_MSG 4096
/*  A provider's error body is passed on up to this size (PROTOCOL 4.2). */
#define S_ERROR_BODY_MAX 16384

typedef enum { S_QUEUED, S_RUNNING, S_WAITING } s_state_t;

typedef struct _s_worker_t s_worker_t;

/*  A result sent for a request with a request key, kept until the broker
    acks it (or it expires), so a resend after a broker restart is answered
    from it instead of a second provider call (PROTOCOL.md 3.3). */
typedef struct {
    char *rkey;       /* request key (key in held) */
    char *id;         /* broker id it was last sent under (key in held_ids) */
    llmq_msg_t *res;  /* the `res` as sent */
    zlistx_t *chunks; /* the chunks sent before it (streams), or NULL */
    size_t bytes;     /* its payload size, for the bound */
    int64_t at;       /* when it was first sent */
    void *handle;     /* in held_order */
} s_held_t;

/*  libcurl 7.88 looks for a reusable connection by walking every connection
    to the host, so one multi handle with 10,000 connections to one provider
    spends its time in that walk. Transfers are spread over shards of at
    most S_SHARD_CONNS connections, each its own multi handle (own
    connection cache), all in the one epoll set. The walk is paid on every
    transfer, busy connections included: 64 per shard costs 7.5k fewer
    instructions per request than 256 at 256 in flight (callgrind.sh); 32
    saves no more. */
#define S_SHARD_CONNS 64

/*  Epoll data tags (the shard index's place) of the actor's pipe and the
    DEALER, whose ZMQ_FDs share the set with curl's sockets (s_wait). */
#define S_TAG_PIPE 0xffffffffu
#define S_TAG_DEALER 0xfffffffeu

/*  A spare job keeps an answer buffer up to this size. */
#define S_SPARE_BUF_MAX 16384

/*  A curl socket as the epoll set holds it (s_on_socket), by fd. */
typedef struct {
    uint32_t events; /* EPOLLIN / EPOLLOUT registered, while in_set */
    uint32_t shard;  /* the shard tagged into its epoll data */
    bool in_set;     /* registered in the epoll set */
    bool watched;    /* curl wants events on it (between its first
                        callback and CURL_POLL_REMOVE) */
    bool ours;       /* opened through s_open_socket: its close comes
                        through s_close_socket, so it may stay in the set
                        while idle */
} s_fd_t;

typedef struct {
    s_worker_t *worker; /* back pointer, for curl callbacks */
    CURLM *multi;       /* this shard's transfers and connections */
    uint32_t index;     /* in worker->shards, tagged into epoll data */
    int64_t due;        /* curl's timer for this multi, -1 = none */
    size_t running;     /* transfers on it */
} s_shard_t;

typedef struct _s_job_t s_job_t;

/*  A job's place in one of the worker's lists (the start queue, the
    timeouts, the connecting): through the jobs, so joining or leaving one
    allocates nothing. */
typedef struct {
    s_job_t *prev, *next; /* neighbours in the list */
    int64_t at;           /* timed lists: when the job is due */
    bool in;              /* in the list */
} s_link_t;

/*  A list of jobs through one of their links. */
typedef struct {
    s_job_t *head, *tail;
    size_t len;
    size_t off; /* offsetof(s_job_t, the link) */
} s_list_t;
struct _s_job_t {
    s_worker_t *worker;   /* back pointer, for curl callbacks */
    char *id;             /* broker's request id (key in jobs) */
    char *rkey;           /* request key (3.3), or NULL */
    zlistx_t *chunks;     /* chunk messages sent, kept for a resend (rkey) */
    llmq_op_t op;         /* chat, completion, embedding */
    char *model;          /* the req's model */
    bool stream;          /* relay chunks */
    bool probe;           /* a health probe, not a request */
    int64_t received_ms;  /* when the req arrived */
    int64_t deadline_at;  /* 0 = none */
    int attempts;         /* HTTP attempts started */
    int64_t estimate;     /* tokens, for the limiter */
    s_state_t state;      /* where it is */
    llmq_http_t http;     /* the request, built once */
    CURL *easy;           /* while RUNNING */
    s_shard_t *shard;     /* the multi it runs on, while RUNNING */
    char *buf;            /* answer body (or error body) */
    size_t len;           /* its length */
    size_t cap;           /* its allocation */
    long status;          /* HTTP status of this attempt */
    bool deadline_cut;    /* this attempt's timeout is the deadline */
    llmq_ratelimit_t rl;  /* this attempt's rate-limit headers */
    char request_id[129]; /* this attempt's x-request-id / request-id */
    struct curl_slist trace_hdr; /* traceparent before shared headers */
    char trace_line[80];         /* its text */
    zframe_t *error_body;        /* this attempt's HTTP error body (scrubbed) */
    llmq_perr_t err;             /* last failure */
    bool stream_failed;          /* stream parse failed (err set) */
    llmq_sse_t *sse;             /* stream parser, per attempt */
    llmq_stream_t *st;           /* stream state, per attempt */
    int64_t seq;                 /* next chunk seq */
    s_link_t queue_link;         /* QUEUED: in the start queue */
    s_link_t timeout_link;       /* RUNNING: in timeouts (when ours) */
    s_link_t connect_link;       /* RUNNING: in connecting (when ours) */
    int64_t queued_ms;           /* QUEUED: since when */
    bool limiter_waited;         /* counted in limiter_waits */
    /*  WAITING: in the worker's retries, seq = when to try again. */
    llmq_queue_node_t retry;
    void *spare_next;   /* in the worker's spare jobs (s_job_free) */
    char id_own[48];    /* id's bytes when short enough (no strdup) */
    char model_own[48]; /* model's, likewise */
};

struct _s_worker_t {
    llmq_worker_config_t *cfg; /* owned */
    llmq_provider_t *provider; /* owned */
    llmq_limiter_t *limiter;   /* owned */
    llmq_breaker_t *breaker;   /* owned */
    zsock_t *dealer;           /* to the broker; NULL until joined */
    s_shard_t *shards;         /* curl multi handles */
    llmq_batch_api_t *batch;   /* provider Batch API tasks, or NULL */
    size_t nshards;
    int epfd;             /* every curl socket of every shard */
    s_fd_t *fds;          /* by fd: what epfd holds for it */
    size_t fds_len;       /* entries in fds */
    zhashx_t *jobs;       /* id -> s_job_t, every request held */
    zhashx_t *running;    /* rkey -> s_job_t (borrowed), jobs with a key */
    zhashx_t *held;       /* rkey -> s_held_t (owns) */
    zhashx_t *held_ids;   /* broker id -> s_held_t (borrowed) */
    zlistx_t *held_order; /* s_held_t oldest first (borrowed) */
    size_t held_bytes;    /* sum of their bytes */
    const char *poison;   /* LLMQ_TEST_POISON: abort on a body with it */
    s_list_t queue;       /* s_job_t waiting to start, FIFO */
    /*  Running attempts whose timeout the loop keeps (s_start_transfer):
        soonest first; and those of them not yet connected, with their
        connect timeout. libcurl's own (CURLOPT_TIMEOUT_MS and
        CURLOPT_CONNECTTIMEOUT_MS) cost it about 1,400 instructions per
        transfer in timer bookkeeping; ours are lists, as every attempt
        but a probe or a deadline-cut one has the same timeouts and starts
        later than the one before. */
    s_list_t timeouts;
    s_list_t connecting;
    /*  WAITING jobs, soonest due first. */
    llmq_queue_t *retries;
    llmq_packer_t *packer; /* answers are packed here (reused) */
    struct {
        const char *url; /* a provider's shared URL (borrowed) */
        CURLU *parsed;   /* it, parsed once */
    } curlu[8];
    CURL **pool;    /* idle easy handles, set up (s_easy_new) */
    s_job_t *spare; /* freed jobs kept for reuse, answer buffer kept */
    size_t spare_len;
    bool no_spare;  /* shutting down: jobs are freed */
    bool proxy_env; /* a proxy variable was set at start */
    size_t pool_len;
    size_t pool_cap;
    s_job_t *probe;        /* health probe in flight, or NULL */
    int64_t probe_at;      /* next start-up probe, 0 = none */
    int64_t probe_backoff; /* start-up probe backoff */
    bool joined;           /* hello sent on the current socket */
    bool rejoin;           /* next hello follows a reconnect (resend) */
    int64_t hello_at;      /* when the last hello went out */
    int64_t outstanding;   /* credit granted, not yet used */
    int64_t hb_at;         /* next heartbeat */
    int64_t broker_seen;   /* last message from the broker */
    int64_t limiter_at;    /* next limiter retry for the queue, 0 none */
    int64_t avg_tokens;    /* running mean of estimates (credit) */
    zsock_t *pipe;         /* the actor's pipe (borrowed) */
    bool pipe_check;       /* ask the pipe for ZMQ_EVENTS before sleeping:
                              used since it last said "no input" */
    bool broker_check;     /* the DEALER has or may have input this turn */
    bool drain_asked;      /* DRAIN came over the pipe */
    bool draining;         /* DRAIN taken, bye sent */
    int64_t drain_at;      /* drain deadline */
    bool terminated;       /* $TERM came over the pipe: stop now */
    int exit_code;         /* sent with STOPPED */
    char stop_text[600];   /* a line for the user, sent with STOPPED */
    bool done;             /* leave the loop */
    unsigned short rng[3]; /* jitter: nrand48's state, ours alone */
    uint64_t answered;     /* counters, for the log */
    uint64_t failed;
    llmq_wmetrics_t *metrics;                /* --metrics, or NULL */
    zcert_t *cert;                           /* CURVE keypair, or NULL */
    char server_key[LLMQ_CURVE_KEY_LEN + 1]; /* broker's public key */
};

/*  --- small helpers --------------------------------------------------------
 */

static int64_t s_now(void)
{
    return zclock_mono();
}

/*  62 random bits: jitter needs spread, not secrecy. */
static uint64_t s_rand(s_worker_t *self)
{
    return (uint64_t)nrand48(self->rng) << 31 | (uint64_t)nrand48(self->rng);
}

static int64_t s_min_due(int64_t a, int64_t b)
{
    if (a <= 0)
        return b;
    if (b <= 0)
        return a;
    return a < b ? a : b;
}

/*  The first job waiting to retry, or NULL. */
static s_job_t *s_retry_first(s_worker_t *self)
{
    llmq_queue_node_t *node = llmq_queue_peek(self->retries);
    return node ? LLMQ_QUEUE_ITEM(node, s_job_t, retry) : NULL;
}

static size_t s_on_write(char *data, size_t size, size_t nmemb, void *arg);
static size_t s_on_header(char *data, size_t size, size_t nmemb, void *arg);
/*  libcurl with CURLOPT_PREREQFUNCTION (7.80): the loop keeps the connect
    timeout too (s_on_prereq ends it); older: libcurl does. */
#ifdef CURL_PREREQFUNC_OK
#define S_OUR_CONNECT_TIMEOUT 1
static int s_on_prereq(void *arg, char *ip, char *local_ip, int port,
                       int local_port);
#endif
static curl_socket_t s_open_socket(void *arg, curlsocktype purpose,
                                   struct curl_sockaddr *address);
static int s_close_socket(void *arg, curl_socket_t fd);

/*  --- easy handle pool ------------------------------------------------------
 */

/*  Set once per handle: what every attempt shares. A handle goes back to
    the pool as it is (no curl_easy_reset), so an attempt sets only what is
    its own (s_start_transfer). Proxies: when no proxy variable is set at
    start (s_proxy_env), "no proxy" is said once here, which spares libcurl
    five getenv calls per transfer; otherwise libcurl reads them as usual. */
static CURL *s_easy_new(s_worker_t *self)
{
    CURL *easy = curl_easy_init();
    if (!easy)
        return NULL;
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, s_on_write);
    curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, s_on_header);
    curl_easy_setopt(easy, CURLOPT_OPENSOCKETFUNCTION, s_open_socket);
    curl_easy_setopt(easy, CURLOPT_OPENSOCKETDATA, self);
    curl_easy_setopt(easy, CURLOPT_CLOSESOCKETFUNCTION, s_close_socket);
    curl_easy_setopt(easy, CURLOPT_CLOSESOCKETDATA, self);
#ifdef S_OUR_CONNECT_TIMEOUT
    curl_easy_setopt(easy, CURLOPT_PREREQFUNCTION, s_on_prereq);
#else
    curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS,
                     (long)self->cfg->connect_timeout_ms);
#endif
    curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(easy, CURLOPT_PIPEWAIT, 1L);
    curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(easy, CURLOPT_TCP_NODELAY, 1L);
    /*  Small receive buffer: answers are a few KB, and 10,000 transfers at
        the default 16 KB each would be most of our memory. */
    curl_easy_setopt(easy, CURLOPT_BUFFERSIZE, 8192L);
    curl_easy_setopt(easy, CURLOPT_USERAGENT,
                     "llmq-worker/" LLMQ_VERSION_STRING);
    if (!self->proxy_env) {
        curl_easy_setopt(easy, CURLOPT_PROXY, "");
        curl_easy_setopt(easy, CURLOPT_NOPROXY, "");
    }
    return easy;
}

/*  Does the environment name a proxy (libcurl's variables)? */
static bool s_proxy_env(void)
{
    static const char *names[] = {"http_proxy",  "HTTP_PROXY", "https_proxy",
                                  "HTTPS_PROXY", "all_proxy",  "ALL_PROXY",
                                  "no_proxy",    "NO_PROXY"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        const char *v = getenv(names[i]);
        if (v && *v)
            return true;
    }
    return false;
}

static CURL *s_easy_get(s_worker_t *self)
{
    if (self->pool_len > 0)
        return self->pool[--self->pool_len];
    return s_easy_new(self);
}

static void s_easy_put(s_worker_t *self, CURL *easy)
{
    if (!easy)
        return;
    /*  Keep at most capacity idle handles: enough for a full load again. */
    if (self->pool_len >= (size_t)self->cfg->capacity + 1) {
        curl_easy_cleanup(easy);
        return;
    }
    if (self->pool_len == self->pool_cap) {
        size_t cap = self->pool_cap ? self->pool_cap * 2 : 64;
        CURL **np = realloc(self->pool, cap * sizeof *np);
        if (!np) {
            curl_easy_cleanup(easy);
            return;
        }
        self->pool = np;
        self->pool_cap = cap;
    }
    self->pool[self->pool_len++] = easy;
}

/*  --- jobs
 * -------------------------------------------------------------------- */

static void s_job_reset_attempt(s_job_t *job)
{
    job->len = 0;
    job->status = 0;
    job->deadline_cut = false;
    job->stream_failed = false;
    llmq_ratelimit_init(&job->rl);
    job->request_id[0] = 0;
    zframe_destroy(&job->error_body);
    llmq_sse_destroy(&job->sse);
    llmq_stream_destroy(&job->st);
}

/*  What a job holds, freed; the job itself and its answer buffer stay. */
static void s_job_clear(s_job_t *job)
{
    llmq_http_reset(&job->http);
    llmq_sse_destroy(&job->sse);
    llmq_stream_destroy(&job->st);
    zframe_destroy(&job->error_body);
    if (job->id != job->id_own)
        free(job->id);
    free(job->rkey);
    zlistx_destroy(&job->chunks);
    if (job->model != job->model_own)
        free(job->model);
}

/*  src copied into own (size bytes) if it fits, else duplicated; NULL if
    out of memory. */
static char *s_job_str(char *own, size_t size, const char *src)
{
    size_t n = strlen(src);
    if (n >= size)
        return strdup(src);
    memcpy(own, src, n + 1);
    return own;
}

/*  A job ended: kept for the next request (up to capacity, with its
    answer buffer, so a steady load allocates neither), else freed. */
static s_link_t *s_link(const s_list_t *list, s_job_t *job)
{
    return (s_link_t *)((char *)job + list->off);
}

/*  job into list after prev (at the head if prev is NULL). */
static void s_list_insert(s_list_t *list, s_job_t *prev, s_job_t *job)
{
    s_link_t *link = s_link(list, job);
    link->prev = prev;
    link->next = prev ? s_link(list, prev)->next : list->head;
    if (link->next)
        s_link(list, link->next)->prev = job;
    else
        list->tail = job;
    if (prev)
        s_link(list, prev)->next = job;
    else
        list->head = job;
    link->in = true;
    list->len++;
}

/*  job out of list, if it is there. */
static void s_list_remove(s_list_t *list, s_job_t *job)
{
    s_link_t *link = s_link(list, job);
    if (!link->in)
        return;
    if (link->prev)
        s_link(list, link->prev)->next = link->next;
    else
        list->head = link->next;
    if (link->next)
        s_link(list, link->next)->prev = link->prev;
    else
        list->tail = link->prev;
    *link = (s_link_t){NULL, NULL, 0, false};
    list->len--;
}

/*  job into a timed list, due at: in order, usually at the tail (a later
    start, the same timeout). */
static void s_list_add_at(s_list_t *list, s_job_t *job, int64_t at)
{
    s_job_t *prev = list->tail;
    while (prev && s_link(list, prev)->at > at)
        prev = s_link(list, prev)->prev;
    s_list_insert(list, prev, job);
    s_link(list, job)->at = at;
}

/*  When the head of a timed list is due; -1 if the list is empty. */
static int64_t s_list_due(const s_list_t *list)
{
    return list->head ? s_link(list, list->head)->at : -1;
}

/*  The attempt ended (or was taken away): its timeouts go. */
static void s_attempt_untimed(s_worker_t *self, s_job_t *job)
{
    s_list_remove(&self->timeouts, job);
    s_list_remove(&self->connecting, job);
}

static void s_job_free(s_job_t **job_p)
{
    s_job_t *job = *job_p;
    if (!job)
        return;
    if (job->worker)
        s_attempt_untimed(job->worker, job);
    s_job_clear(job);
    s_worker_t *self = job->worker;
    if (job->cap > S_SPARE_BUF_MAX) { /* a rare big answer is not kept */
        free(job->buf);
        job->buf = NULL;
        job->cap = 0;
    }
    if (self && !self->no_spare && !job->probe &&
        self->spare_len <= (size_t)self->cfg->capacity) {
        job->spare_next = self->spare;
        self->spare = job;
        self->spare_len++;
    } else {
        free(job->buf);
        free(job);
    }
    *job_p = NULL;
}

/*  A zeroed job, a spare one if any (its answer buffer kept, empty). */
static s_job_t *s_job_get(s_worker_t *self)
{
    s_job_t *job = self->spare;
    if (!job)
        return calloc(1, sizeof(s_job_t));
    self->spare = job->spare_next;
    self->spare_len--;
    char *buf = job->buf;
    size_t cap = job->cap;
    memset(job, 0, sizeof *job);
    job->buf = buf;
    job->cap = cap;
    if (buf)
        buf[0] = 0;
    return job;
}

/*  Free the spare jobs (shutting down). */
static void s_job_spares_free(s_worker_t *self)
{
    self->no_spare = true;
    while (self->spare) {
        s_job_t *job = self->spare;
        self->spare = job->spare_next;
        free(job->buf);
        free(job);
    }
    self->spare_len = 0;
}

/*  Take a job out of whatever it is waiting in (queue, retries, curl). Does
    not free it or remove it from the jobs table. */
static void s_job_detach(s_worker_t *self, s_job_t *job, bool release_tokens)
{
    s_list_remove(&self->queue, job);
    llmq_queue_remove(self->retries, &job->retry);
    s_attempt_untimed(self, job);
    if (job->easy) {
        curl_multi_remove_handle(job->shard->multi, job->easy);
        job->shard->running--;
        s_easy_put(self, job->easy);
        job->easy = NULL;
        if (!job->probe)
            llmq_limiter_release(self->limiter, job->estimate,
                                 release_tokens ? 0 : -1, s_now());
    }
}

/*  --- messages to the broker --------------------------------------------- */

static void s_send(s_worker_t *self, llmq_msg_t **msg_p)
{
    if (!self->dealer) {
        llmq_msg_destroy(msg_p);
        return;
    }
    if (llmq_msg_send(msg_p, self->dealer) != 0)
        llmq_log(NULL, LLMQ_LOG_WARN, "send_failed",
                 LLMQ_LOG_STR("reason", "queue full or encode error"),
                 LLMQ_LOG_END);
}

/*  The Batch API class answers through here. */
static void s_batch_send(llmq_msg_t **msg_p, void *arg)
{
    s_send((s_worker_t *)arg, msg_p);
}

/*  Batch API results are priced from our table, discount included. */
static double s_batch_cost(const char *model, int64_t prompt_tokens,
                           int64_t completion_tokens, void *arg)
{
    return llmq_worker_config_cost((const llmq_worker_config_t *)arg, model,
                                   prompt_tokens, completion_tokens, true);
}

/*  --- held results (PROTOCOL.md 3.3) ---------------------------------------
 */

static void s_held_free(void **item)
{
    s_held_t *h = *item;
    if (!h)
        return;
    free(h->rkey);
    free(h->id);
    llmq_msg_destroy(&h->res);
    zlistx_destroy(&h->chunks);
    free(h);
    *item = NULL;
}

/*  The held results' tables. Returns 0 or -1. */
static int s_held_new(s_worker_t *self)
{
    self->held = zhashx_new();
    self->held_ids = zhashx_new();
    self->held_order = zlistx_new();
    if (!self->held || !self->held_ids || !self->held_order)
        return -1;
    zhashx_set_destructor(self->held, s_held_free);
    return 0;
}

/*  held owns the results; held_ids and held_order borrow them. */
static void s_held_destroy(s_worker_t *self)
{
    zhashx_destroy(&self->held_ids);
    zlistx_destroy(&self->held_order);
    zhashx_destroy(&self->held);
}

static void s_held_drop(s_worker_t *self, s_held_t *h)
{
    zlistx_delete(self->held_order, h->handle);
    zhashx_delete(self->held_ids, h->id);
    self->held_bytes -= h->bytes;
    zhashx_delete(self->held, h->rkey); /* frees h */
}

/*  Drop the oldest held results past the count, byte and age bounds. */
static void s_held_trim(s_worker_t *self, int64_t now)
{
    s_held_t *h;
    while ((h = zlistx_first(self->held_order)) &&
           (zhashx_size(self->held) > S_HELD_MAX ||
            self->held_bytes > S_HELD_BYTES || now - h->at > S_HELD_MS))
        s_held_drop(self, h);
}

/*  Keep a copy of the `res` about to be sent for job, if it has a key. */
static void s_held_keep(s_worker_t *self, s_job_t *job, const llmq_msg_t *m)
{
    if (!job->rkey || !self->held)
        return;
    s_held_t *old = zhashx_lookup(self->held, job->rkey);
    if (old)
        s_held_drop(self, old);
    s_held_t *h = calloc(1, sizeof *h);
    if (!h)
        return;
    h->rkey = strdup(job->rkey);
    h->id = strdup(job->id);
    h->res = llmq_msg_dup(m);
    zframe_t *payload = h->res ? llmq_msg_payload(h->res) : NULL;
    h->bytes = 512 + (payload ? zframe_size(payload) : 0);
    h->chunks = job->chunks; /* the stream so far, for a resend */
    job->chunks = NULL;
    for (llmq_msg_t *c = h->chunks ? zlistx_first(h->chunks) : NULL; c;
         c = zlistx_next(h->chunks))
        h->bytes += 256 + zframe_size(llmq_msg_payload(c));
    h->at = s_now();
    if (!h->rkey || !h->id || !h->res) {
        void *item = h;
        s_held_free(&item);
        return;
    }
    zhashx_insert(self->held, h->rkey, h);
    zhashx_update(self->held_ids, h->id, h);
    h->handle = zlistx_add_end(self->held_order, h);
    self->held_bytes += h->bytes;
    s_held_trim(self, h->at);
}

/*  `ack` from the broker: those results reached their clients. */
static void s_on_ack(s_worker_t *self, llmq_msg_t *msg)
{
    size_t n = llmq_msg_ids_count(msg);
    for (size_t i = 0; i < n; i++) {
        s_held_t *h = zhashx_lookup(self->held_ids, llmq_msg_ids_at(msg, i));
        if (h)
            s_held_drop(self, h);
    }
}

static void s_send(s_worker_t *self, llmq_msg_t **msg_p);

/*  Send the chunks a stream has sent so far again, under broker id id:
    the client keeps those with a seq above the last it has, so after a
    broker restart the stream goes on without a gap. */
static void s_replay_chunks(s_worker_t *self, zlistx_t *chunks, const char *id)
{
    for (llmq_msg_t *c = chunks ? zlistx_first(chunks) : NULL; c;
         c = zlistx_next(chunks)) {
        llmq_msg_t *m = llmq_msg_dup(c);
        if (!m)
            return;
        llmq_msg_set_id(m, id);
        s_send(self, &m);
    }
}

/*  A `req` whose request key we know: a resend after a broker restart.
    A running job takes the new broker id; a held result is sent again
    under it. Returns true if so (no new job). */
static bool s_attach(s_worker_t *self, const char *rkey, const char *id)
{
    s_job_t *job = zhashx_lookup(self->running, rkey);
    if (job) {
        char *nid = strdup(id);
        if (!nid || zhashx_rename(self->jobs, job->id, nid) != 0) {
            free(nid);
            return false;
        }
        if (job->id != job->id_own)
            free(job->id);
        job->id = nid;
        s_replay_chunks(self, job->chunks, id);
        llmq_log(NULL, LLMQ_LOG_DEBUG, "req_attached", LLMQ_LOG_STR("id", id),
                 LLMQ_LOG_END);
        return true;
    }
    s_held_t *h = zhashx_lookup(self->held, rkey);
    char *nid = h ? strdup(id) : NULL;
    llmq_msg_t *m = nid ? llmq_msg_dup(h->res) : NULL;
    if (!m) {
        free(nid);
        return false;
    }
    zhashx_delete(self->held_ids, h->id);
    free(h->id);
    h->id = nid;
    zhashx_update(self->held_ids, h->id, h);
    llmq_msg_set_id(m, id);
    s_replay_chunks(self, h->chunks, id);
    llmq_log(NULL, LLMQ_LOG_DEBUG, "req_from_held", LLMQ_LOG_STR("id", id),
             LLMQ_LOG_END);
    s_send(self, &m);
    return true;
}

/*  After a hello: the request keys we hold a result for or still run. */
static void s_send_held(s_worker_t *self)
{
    zlistx_t *keys = zhashx_keys(self->held);
    zlistx_t *more = zhashx_keys(self->running);
    for (char *k = more ? zlistx_first(more) : NULL; k && keys;
         k = zlistx_next(more))
        zlistx_add_end(keys, k);
    size_t total = keys ? zlistx_size(keys) : 0;
    char *k = total ? zlistx_first(keys) : NULL;
    while (k) {
        size_t n = total > S_HELD_PER_MSG ? S_HELD_PER_MSG : total;
        total -= n;
        llmq_payload_t *pk = llmq_payload_new();
        if (!pk)
            break;
        for (size_t i = 0; i < n && k; i++, k = zlistx_next(keys))
            llmq_payload_add_str(pk, k);
        zframe_t *payload = llmq_payload_frame(pk);
        llmq_payload_destroy(&pk);
        llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_HELD);
        llmq_msg_set_count(m, (int64_t)n);
        llmq_msg_set_payload(m, &payload);
        s_send(self, &m);
    }
    zlistx_destroy(&keys);
    zlistx_destroy(&more);
}

static void s_send_hello(s_worker_t *self)
{
    llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_HELLO);
    llmq_msg_set_worker(m, self->cfg->name);
    llmq_msg_set_pool(m, self->cfg->pool);
    llmq_msg_set_provider(m, self->cfg->provider);
    llmq_msg_set_models(m, (const char *const *)self->cfg->models,
                        self->cfg->models_count);
    llmq_msg_set_capacity(m, self->cfg->capacity);
    if (self->cfg->rpm || self->cfg->tpm) {
        llmq_msg_set_limits_rpm(m, self->cfg->rpm);
        llmq_msg_set_limits_tpm(m, self->cfg->tpm);
    }
    if (self->cfg->limit_group)
        llmq_msg_set_limit_group(m, self->cfg->limit_group);
    llmq_msg_set_batch_api(m, self->batch != NULL);
    llmq_msg_set_version(m, LLMQ_VERSION_STRING);
    if (self->rejoin) //  What the old connection held may be lost (3.3)
        llmq_msg_set_resend(m, true);
    size_t caps_size = 0; /* what we know of our models (3.8) */
    uint8_t *caps = llmq_models_caps_pack(
        self->cfg->known, (const char *const *)self->cfg->models,
        self->cfg->models_count, 32768, &caps_size);
    if (caps)
        llmq_msg_set_caps(m, caps, caps_size);
    free(caps);
    self->rejoin = false;
    s_send(self, &m);
    s_send_held(self);
    self->joined = true;
    self->hello_at = s_now();
    /*  The broker starts (or restarts) our credit at 0 on every hello; the
        main loop grants every free slot again, once (s_grant_credit). */
    self->outstanding = 0;
}

static bool s_healthy(s_worker_t *self)
{
    return llmq_breaker_state(self->breaker) != LLMQ_BREAKER_OPEN;
}

static void s_send_hb(s_worker_t *self)
{
    llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_HB);
    llmq_msg_set_healthy(m, s_healthy(self));
    llmq_msg_set_in_flight(m, (int64_t)zhashx_size(self->jobs));
    s_send(self, &m);
}

static void s_set_ratelimit(llmq_msg_t *m, const llmq_ratelimit_t *rl)
{
    if (rl->remaining_requests >= 0)
        llmq_msg_set_ratelimit_remaining_requests(m, rl->remaining_requests);
    if (rl->remaining_tokens >= 0)
        llmq_msg_set_ratelimit_remaining_tokens(m, rl->remaining_tokens);
    int64_t reset = rl->reset_requests_ms;
    if (rl->reset_tokens_ms > reset)
        reset = rl->reset_tokens_ms;
    if (reset >= 0)
        llmq_msg_set_ratelimit_reset_ms(m, reset);
}

/*  An ok answer: usage, cost and the body (taken). */
static void s_answer_ok(s_worker_t *self, s_job_t *job, llmq_msg_t *m,
                        zframe_t **payload_p, const llmq_usage_t *usage)
{
    llmq_msg_set_ok(m, true);
    if (usage) {
        int64_t p = usage->prompt_tokens > 0 ? usage->prompt_tokens : 0;
        int64_t c = usage->completion_tokens > 0 ? usage->completion_tokens : 0;
        int64_t t = usage->total_tokens >= 0 ? usage->total_tokens : p + c;
        llmq_msg_set_usage_prompt_tokens(m, p);
        llmq_msg_set_usage_completion_tokens(m, c);
        llmq_msg_set_usage_total_tokens(m, t);
        //  Cached prompt tokens and reasoning tokens are priced apart (3.8).
        llmq_tokens_t tokens = {
            p, usage->cached_tokens > 0 ? usage->cached_tokens : 0, c,
            usage->reasoning_tokens > 0 ? usage->reasoning_tokens : 0};
        double cost =
            llmq_worker_config_price(self->cfg, job->model, &tokens, false);
        llmq_msg_set_usage_cost_usd(m, cost);
        llmq_wmetrics_answer(self->metrics, job->model, "ok", p, c, cost);
    } else
        llmq_wmetrics_answer(self->metrics, job->model, "ok", 0, 0, 0);
    llmq_msg_set_payload(m, payload_p);
    self->answered++;
    llmq_log(NULL, LLMQ_LOG_DEBUG, "res", LLMQ_LOG_STR("id", job->id),
             LLMQ_LOG_BOOL("ok", true), LLMQ_LOG_INT("attempts", job->attempts),
             LLMQ_LOG_END);
}

/*  A failed answer: job->err, scrubbed, and the provider's error body. */
static void s_answer_failed(s_worker_t *self, s_job_t *job, llmq_msg_t *m)
{
    llmq_err_t code = job->err.code ? job->err.code : LLMQ_ERR_INTERNAL;
    llmq_provider_scrub(self->provider, job->err.message,
                        sizeof job->err.message, job->err.message);
    llmq_msg_set_ok(m, false);
    llmq_msg_set_failure(m, code, job->err.status, job->err.message);
    llmq_msg_set_error_retryable(m, job->err.retryable);
    if (job->error_body)
        llmq_msg_set_error_body(m, zframe_data(job->error_body),
                                zframe_size(job->error_body));
    llmq_wmetrics_answer(self->metrics, job->model, llmq_err_name(code), 0, 0,
                         0);
    self->failed++;
    llmq_log(NULL, LLMQ_LOG_DEBUG, "res", LLMQ_LOG_STR("id", job->id),
             LLMQ_LOG_BOOL("ok", false),
             LLMQ_LOG_STR("code", llmq_err_name(code)),
             LLMQ_LOG_INT("status", job->err.status),
             LLMQ_LOG_INT("attempts", job->attempts),
             LLMQ_LOG_STR("message", job->err.message), LLMQ_LOG_END);
}

/*  The one answer to a request: ok with the body (*payload_p, taken), or
    the failure in job->err when payload_p is NULL. Removes the job from
    the table and frees it. */
static void s_answer(s_worker_t *self, s_job_t *job, zframe_t **payload_p,
                     const llmq_usage_t *usage)
{
    llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_RES);
    llmq_msg_set_id(m, job->id);
    llmq_msg_set_worker(m, self->cfg->name);
    llmq_msg_set_attempts(m, job->attempts);
    llmq_msg_set_latency_ms(m, s_now() - job->received_ms);
    s_set_ratelimit(m, &job->rl);
    if (job->request_id[0])
        llmq_msg_set_request_id(m, job->request_id);
    if (payload_p && *payload_p)
        s_answer_ok(self, job, m, payload_p, usage);
    else
        s_answer_failed(self, job, m);
    if (job->rkey) {
        zhashx_delete(self->running, job->rkey);
        /*  Only what the provider was asked for is worth keeping: a
            request that never reached it costs nothing to run again. */
        if (job->attempts > 0 && job->err.code != LLMQ_ERR_CANCELLED)
            s_held_keep(self, job, m);
    }
    s_send(self, &m);
    /*  The table's destructor frees the job. */
    zhashx_delete(self->jobs, job->id);
}

/*  s_answer for a body as a tree (echo, streams): packed here. */
static void s_answer_json(s_worker_t *self, s_job_t *job, const cJSON *body,
                          const llmq_usage_t *usage)
{
    llmq_usage_t details = *usage;
    llmq_usage_details_from_json(body, &details);
    usage = &details;
    zframe_t *payload = llmq_value_from_json(body);
    if (!payload)
        /*  Cannot happen for a parsed body short of memory: say so. */
        llmq_perr_set(&job->err, LLMQ_ERR_INTERNAL, 0, false,
                      "cannot encode the answer");
    s_answer(self, job, payload ? &payload : NULL, usage);
}

static void s_fail(s_worker_t *self, s_job_t *job, llmq_err_t code, int status,
                   bool retryable, const char *message)
{
    llmq_perr_set(&job->err, code, status, retryable, "%s", message);
    s_answer(self, job, NULL, NULL);
}

/*  --- streaming -------------------------------------------------------------
 */

static void s_msg_destructor(void **item)
{
    llmq_msg_destroy((llmq_msg_t **)item);
}

static int s_emit_chunk(const cJSON *chunk, void *arg)
{
    s_job_t *job = arg;
    s_worker_t *self = job->worker;
    llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_CHUNK);
    llmq_msg_set_id(m, job->id);
    llmq_msg_set_seq(m, job->seq++);
    zframe_t *payload = llmq_value_from_json(chunk);
    if (!payload) {
        llmq_msg_destroy(&m);
        return -1;
    }
    llmq_msg_set_payload(m, &payload);
    if (job->rkey) {
        /*  Kept until the answer is acked, so a resend after a broker
            restart gets the whole stream (s_replay_chunks). */
        if (!job->chunks)
            job->chunks = zlistx_new();
        if (job->chunks) {
            zlistx_set_destructor(job->chunks, s_msg_destructor);
            llmq_msg_t *copy = llmq_msg_dup(m);
            if (copy)
                zlistx_add_end(job->chunks, copy);
        }
    }
    s_send(self, &m);
    return 0;
}

static int s_sse_event(const char *event, const char *data, size_t size,
                       void *arg)
{
    s_job_t *job = arg;
    int rc = llmq_stream_event(job->st, event, data, size, s_emit_chunk, job,
                               &job->err);
    if (rc < 0) {
        job->stream_failed = true;
        return -1;
    }
    return 0;
}

/*  --- curl callbacks
 * ---------------------------------------------------------- */

static size_t s_on_write(char *data, size_t size, size_t nmemb, void *arg)
{
    s_job_t *job = arg;
    size_t n = size * nmemb;
    if (!job->status)
        curl_easy_getinfo(job->easy, CURLINFO_RESPONSE_CODE, &job->status);
    if (job->st && job->status >= 200 && job->status < 300) {
        if (!job->sse)
            job->sse = llmq_sse_new(s_sse_event, job, S_MAX_EVENT);
        if (!job->sse || llmq_sse_feed(job->sse, data, n) != 0) {
            if (!job->stream_failed) {
                job->stream_failed = true;
                llmq_perr_set(&job->err, LLMQ_ERR_PROVIDER_ERROR, 200, true,
                              "provider stream could not be parsed");
            }
            return 0; /* aborts the transfer */
        }
        return n;
    }
    if (llmq_buf_append(&job->buf, &job->len, &job->cap, data, n,
                        (size_t)S_MAX_BODY + 1))
        return 0; /* too large: aborts the transfer */
    return n;
}

/*  x-request-id (OpenAI and compatible servers) or request-id
    (Anthropic): the provider's id of this answer. */
static bool s_request_id_header(const char *name, size_t len)
{
    return (len == 12 && strncasecmp(name, "x-request-id", 12) == 0) ||
           (len == 10 && strncasecmp(name, "request-id", 10) == 0);
}

/*  Keep a request id: trimmed, printable ASCII only (anything else is not
    an id, and must not reach a header), at most 128 bytes. */
static void s_keep_request_id(s_job_t *job, const char *v, size_t len)
{
    while (len && (*v == ' ' || *v == '\t')) {
        v++;
        len--;
    }
    while (len && (v[len - 1] == '\r' || v[len - 1] == '\n' ||
                   v[len - 1] == ' ' || v[len - 1] == '\t'))
        len--;
    if (len >= sizeof job->request_id)
        len = sizeof job->request_id - 1;
    for (size_t i = 0; i < len; i++)
        if (v[i] < 0x21 || v[i] > 0x7e)
            return;
    memcpy(job->request_id, v, len);
    job->request_id[len] = 0;
}

static size_t s_on_header(char *data, size_t size, size_t nmemb, void *arg)
{
    s_job_t *job = arg;
    size_t n = size * nmemb;
    if (n > 5 && memcmp(data, "HTTP/", 5) == 0) {
        /*  A new response (after 100 Continue or a redirect): start over. */
        llmq_ratelimit_init(&job->rl);
        job->request_id[0] = 0;
        return n;
    }
    const char *colon = memchr(data, ':', n);
    if (!colon)
        return n;
    size_t name_len = (size_t)(colon - data);
    if (s_request_id_header(data, name_len))
        s_keep_request_id(job, colon + 1, n - name_len - 1);
    else
        llmq_provider_header(job->worker->provider, &job->rl, data, name_len,
                             colon + 1, n - name_len - 1);
    return n;
}

#ifdef S_OUR_CONNECT_TIMEOUT
/*  The attempt's connection is up (new or reused): its connect timeout
    is over. */
static int s_on_prereq(void *arg, char *ip, char *local_ip, int port,
                       int local_port)
{
    (void)ip;
    (void)local_ip;
    (void)port;
    (void)local_port;
    s_job_t *job = arg;
    s_list_remove(&job->worker->connecting, job);
    return CURL_PREREQFUNC_OK;
}
#endif

/*  The state of fd, the table grown to hold it; NULL if out of memory. */
static s_fd_t *s_fd(s_worker_t *self, curl_socket_t fd)
{
    if (fd < 0)
        return NULL;
    if ((size_t)fd >= self->fds_len) {
        size_t len = self->fds_len ? self->fds_len : 256;
        while (len <= (size_t)fd)
            len *= 2;
        s_fd_t *grown = realloc(self->fds, len * sizeof *grown);
        if (!grown)
            return NULL;
        memset(grown + self->fds_len, 0, (len - self->fds_len) * sizeof *grown);
        self->fds = grown;
        self->fds_len = len;
    }
    return &self->fds[fd];
}

/*  A connection's socket, opened as libcurl would, and known to be ours:
    libcurl closes it through s_close_socket. */
static curl_socket_t s_open_socket(void *arg, curlsocktype purpose,
                                   struct curl_sockaddr *address)
{
    (void)purpose;
    curl_socket_t fd =
        socket(address->family, address->socktype, address->protocol);
    s_fd_t *st = fd >= 0 ? s_fd((s_worker_t *)arg, fd) : NULL;
    if (st)
        *st = (s_fd_t){.ours = true};
    return fd;
}

/*  Closing a socket takes it out of the epoll set (the kernel does), so
    its state is forgotten before the fd number can be reused. */
static int s_close_socket(void *arg, curl_socket_t fd)
{
    s_worker_t *self = arg;
    if (fd >= 0 && (size_t)fd < self->fds_len)
        self->fds[fd] = (s_fd_t){0};
    return close(fd);
}

/*  curl's wishes for a socket, kept in the epoll set. A kept-alive
    connection is used by one transfer after another, and libcurl asks to
    add it, watch it, and remove it for each: a socket of ours stays in the
    set while idle (a wake-up for it then takes it out: s_curl_events), so
    the next transfer on it costs no epoll_ctl when it wants the same
    events. Others are added and removed as asked. */
static int s_on_socket(CURL *easy, curl_socket_t fd, int what, void *userp,
                       void *socketp)
{
    (void)easy;
    (void)socketp;
    s_shard_t *shard = userp;
    s_worker_t *self = shard->worker;
    s_fd_t *st = s_fd(self, fd), spare = {0};
    if (!st)
        st = &spare; /* out of memory: no state, every change a call */
    if (what == CURL_POLL_REMOVE) {
        st->watched = false;
        if (st->in_set && st->ours && !(st->events & EPOLLOUT))
            return 0;
        epoll_ctl(self->epfd, EPOLL_CTL_DEL, fd, NULL);
        st->in_set = false;
        return 0;
    }
    uint32_t events = (what & CURL_POLL_IN ? EPOLLIN : 0) |
                      (what & CURL_POLL_OUT ? EPOLLOUT : 0);
    st->watched = true;
    if (st->in_set && st->events == events && st->shard == shard->index)
        return 0;
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.data.u64 = ((uint64_t)shard->index << 32) | (uint32_t)fd;
    ev.events = events;
    int op = st->in_set ? EPOLL_CTL_MOD : EPOLL_CTL_ADD;
    int rc = epoll_ctl(self->epfd, op, fd, &ev);
    if (rc != 0 && errno == ENOENT)
        rc = epoll_ctl(self->epfd, EPOLL_CTL_ADD, fd, &ev);
    else if (rc != 0 && errno == EEXIST)
        rc = epoll_ctl(self->epfd, EPOLL_CTL_MOD, fd, &ev);
    st->in_set = rc == 0;
    st->events = events;
    st->shard = shard->index;
    return 0;
}

static int s_on_timer(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    s_shard_t *shard = userp;
    shard->due = timeout_ms < 0 ? -1 : s_now() + timeout_ms;
    return 0;
}

/*  A shared URL (the provider's, stable for its life) parsed once: libcurl
    then copies the parts instead of parsing the text per transfer. NULL if
    it cannot (the text is used). */
static CURLU *s_curlu(s_worker_t *self, const char *url)
{
    size_t n = sizeof self->curlu / sizeof self->curlu[0], i = 0;
    for (; i < n && self->curlu[i].url; i++)
        if (self->curlu[i].url == url)
            return self->curlu[i].parsed;
    if (i == n)
        return NULL;
    CURLU *parsed = curl_url();
    if (!parsed || curl_url_set(parsed, CURLUPART_URL, url, 0) != CURLUE_OK) {
        curl_url_cleanup(parsed);
        return NULL;
    }
    self->curlu[i].url = url;
    self->curlu[i].parsed = parsed;
    return parsed;
}

/*  --- attempts
 * ------------------------------------------------------------------ */

static int s_start_transfer(s_worker_t *self, s_job_t *job, int64_t now)
{
    CURL *easy = s_easy_get(self);
    if (!easy)
        return -1;
    s_job_reset_attempt(job);
    int64_t timeout = self->cfg->timeout_ms;
    if (job->probe && timeout > 10000)
        timeout = 10000; /* a health check answers fast or not at all */
    if (job->deadline_at > 0 && job->deadline_at - now < timeout) {
        timeout = job->deadline_at - now;
        if (timeout < 1)
            timeout = 1;
        job->deadline_cut = true;
    }
    if (job->stream && !job->probe) {
        llmq_call_t call = {job->op, job->model, true, NULL};
        job->st = llmq_stream_new(self->provider, &call);
    }
    CURLU *parsed = job->http.shared ? s_curlu(self, job->http.url) : NULL;
    curl_easy_setopt(easy, CURLOPT_CURLU, parsed);
    if (!parsed)
        curl_easy_setopt(easy, CURLOPT_URL, job->http.url);
    curl_easy_setopt(easy, CURLOPT_HTTPHEADER, job->http.headers);
    if (job->http.post) {
        curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE,
                         (curl_off_t)job->http.body_len);
        curl_easy_setopt(easy, CURLOPT_POSTFIELDS, job->http.body);
    } else
        curl_easy_setopt(easy, CURLOPT_HTTPGET, 1L);
    curl_easy_setopt(easy, CURLOPT_WRITEDATA, job);
    curl_easy_setopt(easy, CURLOPT_HEADERDATA, job);
    curl_easy_setopt(easy, CURLOPT_PRIVATE, job);
    /*  A probe's or a deadline's timeouts are libcurl's; the usual ones
        are the loop's (timeouts, connecting), libcurl's left off. */
    bool ours = !job->probe && !job->deadline_cut;
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, ours ? 0L : (long)timeout);
#ifdef S_OUR_CONNECT_TIMEOUT
    curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS,
                     ours ? 0L : (long)self->cfg->connect_timeout_ms);
    curl_easy_setopt(easy, CURLOPT_PREREQDATA, job);
#endif
    /*  The least busy shard. */
    s_shard_t *shard = &self->shards[0];
    for (size_t i = 1; i < self->nshards; i++)
        if (self->shards[i].running < shard->running)
            shard = &self->shards[i];
    job->easy = easy;
    job->shard = shard;
    job->state = S_RUNNING;
    job->attempts++;
    if (curl_multi_add_handle(shard->multi, easy) != CURLM_OK) {
        job->easy = NULL;
        s_easy_put(self, easy);
        return -1;
    }
    shard->running++;
    if (ours) {
        s_list_add_at(&self->timeouts, job, now + timeout);
#ifdef S_OUR_CONNECT_TIMEOUT
        s_list_add_at(&self->connecting, job,
                      now + self->cfg->connect_timeout_ms);
#endif
    }
    return 0;
}

/*  The circuit is open: queued work waits for the provider to come back
    (the broker may still hold credit granted before, and failing those
    requests at once would turn this worker into a black hole), but at most
    two cool-downs (one probe); then it is answered with its last failure,
   retryable, so the broker can send it elsewhere. */
static void s_expire_held(s_worker_t *self, int64_t now)
{
    s_job_t *job = self->queue.head;
    while (job) {
        s_job_t *next = job->queue_link.next;
        if (now - job->queued_ms >= 2 * self->cfg->breaker_cooldown_ms) {
            s_list_remove(&self->queue, job);
            if (!job->attempts)
                llmq_perr_set(&job->err, LLMQ_ERR_PROVIDER_ERROR, 0, true,
                              "circuit open: the provider is failing");
            job->err.retryable = true;
            s_answer(self, job, NULL, NULL);
        }
        job = next;
    }
}

/*  Start queued jobs as the breaker and the limiter allow. */
static void s_pump(s_worker_t *self, int64_t now)
{
    self->limiter_at = 0;
    s_job_t *job;
    while ((job = self->queue.head)) {
        if (job->deadline_at > 0 && now >= job->deadline_at) {
            s_list_remove(&self->queue, job);
            char text[600];
            if (job->attempts)
                snprintf(text, sizeof text,
                         "deadline reached after %d attempts; last: %s",
                         job->attempts, job->err.message);
            else
                snprintf(text, sizeof text,
                         "deadline reached before the request could start");
            s_fail(self, job, LLMQ_ERR_DEADLINE_EXCEEDED, job->err.status,
                   false, text);
            continue;
        }
        int64_t allowance = llmq_breaker_allowance(
            self->breaker, llmq_limiter_running(self->limiter));
        if (allowance == 0) {
            if (llmq_breaker_state(self->breaker) == LLMQ_BREAKER_OPEN)
                s_expire_held(self, now);
            return;
        }
        int64_t wait = 0;
        if (!llmq_limiter_acquire(self->limiter, job->estimate, now, &wait)) {
            if (!job->limiter_waited)
                llmq_wmetrics_count(self->metrics, "limiter_waits");
            job->limiter_waited = true;
            if (wait > 0)
                self->limiter_at = now + wait;
            return;
        }
        s_list_remove(&self->queue, job);
        if (s_start_transfer(self, job, now) != 0) {
            llmq_limiter_release(self->limiter, job->estimate, 0, now);
            s_fail(self, job, LLMQ_ERR_INTERNAL, 0, true,
                   "cannot start an HTTP transfer");
        }
    }
}

static void s_enqueue(s_worker_t *self, s_job_t *job, bool front)
{
    job->state = S_QUEUED;
    job->queued_ms = s_now();
    s_list_insert(&self->queue, front ? NULL : self->queue.tail, job);
}

/*  Backoff before attempt n+1: full jitter over base * 2^(n-1), capped. */
static int64_t s_backoff(s_worker_t *self, int attempts)
{
    int64_t ceiling = self->cfg->retry_base_ms;
    for (int i = 1; i < attempts && ceiling < self->cfg->retry_cap_ms; i++)
        ceiling *= 2;
    if (ceiling > self->cfg->retry_cap_ms)
        ceiling = self->cfg->retry_cap_ms;
    if (ceiling <= 0)
        return 0;
    return (int64_t)(s_rand(self) % (uint64_t)(ceiling + 1));
}

/*  Is this failure the provider's health (counts for the breaker)? */
static bool s_is_provider_failure(const llmq_perr_t *err)
{
    if (err->status == 429 || err->code == LLMQ_ERR_RATE_LIMITED)
        return false;
    return err->code == LLMQ_ERR_PROVIDER_ERROR ||
           err->code == LLMQ_ERR_TIMEOUT;
}

static void s_probe_done(s_worker_t *self, s_job_t *job, CURLcode rc);
static void s_attempt_failed(s_worker_t *self, s_job_t *job, int64_t now);

/*  A 2xx attempt's answer as the payload (usage set), or NULL (job->err). */
static zframe_t *s_transfer_body(s_worker_t *self, s_job_t *job,
                                 llmq_usage_t *usage)
{
    llmq_call_t call = {job->op, job->model, job->stream, NULL};
    if (!job->st)
        return llmq_provider_parse_frame(self->provider, &call,
                                         job->buf ? job->buf : "", job->len,
                                         self->packer, usage, &job->err);
    if (job->sse)
        llmq_sse_finish(job->sse);
    cJSON *body = llmq_stream_finish(job->st, usage, &job->err);
    if (!body)
        return NULL;
    llmq_usage_details_from_json(body, usage);
    zframe_t *payload = llmq_value_from_json(body);
    cJSON_Delete(body);
    if (!payload)
        llmq_perr_set(&job->err, LLMQ_ERR_INTERNAL, 0, false,
                      "cannot encode the answer");
    return payload;
}

/*  An HTTP error: classified, and its body kept for the answer (4.2). */
static void s_transfer_http_error(s_worker_t *self, s_job_t *job)
{
    llmq_provider_classify(self->provider, (int)job->status, job->buf, job->len,
                           &job->err);
    zframe_destroy(&job->error_body);
    job->error_body = llmq_provider_error_body(self->provider, job->buf,
                                               job->len, S_ERROR_BODY_MAX);
}

/*  A transfer ended: answer, or retry, or fail. */
static void s_transfer_done(s_worker_t *self, s_job_t *job, CURLcode rc,
                            const char *detail)
{
    int64_t now = s_now();
    if (job->probe) {
        s_probe_done(self, job, rc);
        return;
    }
    s_attempt_untimed(self, job);
    curl_multi_remove_handle(job->shard->multi, job->easy);
    job->shard->running--;
    s_easy_put(self, job->easy);
    job->easy = NULL;
    llmq_limiter_observe(self->limiter, &job->rl, now);

    zframe_t *payload = NULL;
    llmq_usage_t usage;
    llmq_usage_init(&usage);
    if (job->stream_failed) {
        /*  err already set by the stream parser */
    } else if (rc == CURLE_OK && job->status >= 200 && job->status < 300)
        payload = s_transfer_body(self, job, &usage);
    else if (rc == CURLE_OK)
        s_transfer_http_error(self, job);
    else if (rc == CURLE_OPERATION_TIMEDOUT && job->deadline_cut)
        llmq_perr_set(&job->err, LLMQ_ERR_DEADLINE_EXCEEDED, 0, false,
                      "deadline reached during attempt %d", job->attempts);
    else
        llmq_classify_curl(rc, detail, &job->err);

    if (job->status == 429)
        llmq_wmetrics_count(self->metrics, "http_429");
    int64_t actual =
        payload && usage.total_tokens >= 0 ? usage.total_tokens : -1;
    llmq_limiter_release(self->limiter, job->estimate, actual, now);

    if (payload) {
        if (llmq_breaker_success(self->breaker, now)) {
            llmq_log(NULL, LLMQ_LOG_INFO, "circuit_closed",
                     LLMQ_LOG_STR("reason", "provider answers again"),
                     LLMQ_LOG_END);
            s_send_hb(self);
        }
        s_answer(self, job, &payload, &usage);
        return;
    }
    s_attempt_failed(self, job, now);
}

/*  An attempt failed (job->err says how): count it for the breaker, then
    retry after a backoff, or answer the failure. */
static void s_attempt_failed(s_worker_t *self, s_job_t *job, int64_t now)
{
    llmq_provider_scrub(self->provider, job->err.message,
                        sizeof job->err.message, job->err.message);
    /*  Only a request's first failure says something about the provider:
        the same request failing again on retry is evidence about that
        request (one bad tenant must not open the circuit for everyone). */
    if (job->attempts == 1 && s_is_provider_failure(&job->err)) {
        if (llmq_breaker_failure(self->breaker, now)) {
            llmq_wmetrics_count(self->metrics, "breaker_opens");
            llmq_log(
                NULL, LLMQ_LOG_WARN, "circuit_open",
                LLMQ_LOG_INT("failures", self->cfg->breaker_failures),
                LLMQ_LOG_STR("last_code", llmq_err_name(job->err.code)),
                LLMQ_LOG_STR("last_message", job->err.message),
                LLMQ_LOG_STR("effect", "no credit until a health probe passes"),
                LLMQ_LOG_END);
            /*  Tell the broker now, not at the next heartbeat. */
            s_send_hb(self);
        }
    }
    bool chunks_seen = job->st && llmq_stream_chunks(job->st) > 0;
    bool again = job->err.retryable &&
                 job->attempts < self->cfg->max_attempts && !chunks_seen &&
                 !(self->draining && now >= self->drain_at);
    if (!again) {
        llmq_log(NULL, LLMQ_LOG_DEBUG, "request_failed",
                 LLMQ_LOG_STR("id", job->id),
                 LLMQ_LOG_STR("code", llmq_err_name(job->err.code)),
                 LLMQ_LOG_INT("attempts", job->attempts), LLMQ_LOG_END);
        s_answer(self, job, NULL, NULL);
        return;
    }
    int64_t delay = s_backoff(self, job->attempts);
    if (job->rl.retry_after_ms > delay)
        delay = job->rl.retry_after_ms;
    if (job->deadline_at > 0 && now + delay >= job->deadline_at) {
        char text[600];
        snprintf(text, sizeof text,
                 "deadline reached after %d attempts; last: %s", job->attempts,
                 job->err.message);
        s_fail(self, job, LLMQ_ERR_DEADLINE_EXCEEDED, job->err.status, false,
               text);
        return;
    }
    llmq_log(NULL, LLMQ_LOG_DEBUG, "retry", LLMQ_LOG_STR("id", job->id),
             LLMQ_LOG_INT("attempt", job->attempts),
             LLMQ_LOG_STR("code", llmq_err_name(job->err.code)),
             LLMQ_LOG_INT("status", job->err.status),
             LLMQ_LOG_INT("delay_ms", delay), LLMQ_LOG_END);
    llmq_wmetrics_count(self->metrics, "retries");
    job->state = S_WAITING;
    if (llmq_queue_push(self->retries, &job->retry, 0, now + delay) != 0)
        s_answer(self, job, NULL, NULL);
}

static void s_check_multi(s_worker_t *self, s_shard_t *shard)
{
    CURLMsg *msg;
    int left;
    while ((msg = curl_multi_info_read(shard->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        /*  Batch API transfers share the multi: theirs first. */
        if (self->batch && llmq_batch_api_done(self->batch, msg->easy_handle,
                                               msg->data.result))
            continue;
        s_job_t *job = NULL;
        curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&job);
        if (job)
            s_transfer_done(self, job, msg->data.result, NULL);
    }
}

/*  --- health probe
 * ---------------------------------------------------------------- */

static void s_probe_start(s_worker_t *self)
{
    s_job_t *job = calloc(1, sizeof *job);
    if (!job)
        return;
    job->worker = self;
    job->probe = true;
    llmq_queue_node_init(&job->retry);
    job->received_ms = s_now();
    if (llmq_provider_health(self->provider, &job->http) != 0 ||
        s_start_transfer(self, job, s_now()) != 0) {
        s_job_free(&job);
        return;
    }
    self->probe = job;
    llmq_breaker_probe_started(self->breaker);
}

/*  The probe's outcome: 0 ok, 3 key rejected, 4 unreachable or failing. */
static int s_probe_outcome(s_worker_t *self, s_job_t *job, CURLcode rc,
                           char *text, size_t len)
{
    const char *base = llmq_provider_base_url(self->provider);
    if (rc != CURLE_OK) {
        snprintf(text, len, "provider %s unreachable: %s", base,
                 curl_easy_strerror(rc));
        return LLMQ_WORKER_EXIT_UNREACHABLE;
    }
    if (job->status == 401 || job->status == 403) {
        snprintf(text, len, "API key rejected by %s (%ld)", base, job->status);
        return LLMQ_WORKER_EXIT_AUTH;
    }
    if (job->status >= 200 && job->status < 300) {
        snprintf(text, len, "provider %s answers (%ld)", base, job->status);
        return 0;
    }
    if (job->status == 404) {
        /*  Some OpenAI-compatible servers have no /models: they are up. */
        snprintf(text, len, "provider %s is up (no /models: %ld)", base,
                 job->status);
        return 0;
    }
    snprintf(text, len, "provider %s unhealthy: HTTP %ld", base, job->status);
    return LLMQ_WORKER_EXIT_UNREACHABLE;
}

static void s_join(s_worker_t *self);

static void s_probe_done(s_worker_t *self, s_job_t *job, CURLcode rc)
{
    int64_t now = s_now();
    curl_multi_remove_handle(job->shard->multi, job->easy);
    job->shard->running--;
    s_easy_put(self, job->easy);
    job->easy = NULL;
    self->probe = NULL;
    char text[600];
    int outcome = s_probe_outcome(self, job, rc, text, sizeof text);
    llmq_provider_scrub(self->provider, text, sizeof text, text);
    if (outcome == 0 && job->status == 200 && job->buf && /* windows, 3.8 */
        llmq_models_learn_json(self->cfg->known, job->buf, job->len) > 0)
        llmq_log(NULL, LLMQ_LOG_INFO, "models_learned",
                 LLMQ_LOG_STR("from", "GET /models"), LLMQ_LOG_END);
    s_job_free(&job);

    if (self->cfg->check_only) {
        /*  The caller prints it (STOPPED). */
        snprintf(self->stop_text, sizeof self->stop_text, "%s", text);
        self->exit_code = outcome;
        self->done = true;
        return;
    }
    if (outcome == LLMQ_WORKER_EXIT_AUTH) {
        llmq_log(NULL, LLMQ_LOG_ERROR, "health_check_failed",
                 LLMQ_LOG_STR("result", text), LLMQ_LOG_END);
        self->exit_code = LLMQ_WORKER_EXIT_AUTH;
        self->done = true;
        return;
    }
    if (!self->dealer) {
        /*  Start-up check. */
        if (outcome == 0) {
            llmq_log(NULL, LLMQ_LOG_INFO, "health_check_passed",
                     LLMQ_LOG_STR("result", text), LLMQ_LOG_END);
            self->probe_at = 0;
            s_join(self);
        } else {
            llmq_log(NULL, LLMQ_LOG_WARN, "health_check_failed",
                     LLMQ_LOG_STR("result", text),
                     LLMQ_LOG_INT("retry_ms", self->probe_backoff),
                     LLMQ_LOG_END);
            self->probe_at = now + self->probe_backoff;
            self->probe_backoff *= 2;
            if (self->probe_backoff > self->cfg->breaker_cooldown_ms)
                self->probe_backoff = self->cfg->breaker_cooldown_ms;
        }
        return;
    }
    llmq_breaker_probe_result(self->breaker, outcome == 0, now);
    if (outcome == 0) {
        llmq_log(NULL, LLMQ_LOG_INFO, "circuit_closed",
                 LLMQ_LOG_STR("reason", "health probe passed"),
                 LLMQ_LOG_STR("result", text), LLMQ_LOG_END);
        s_send_hb(self); /* healthy again: the broker sends work now */
    } else
        llmq_log(NULL, LLMQ_LOG_WARN, "health_probe_failed",
                 LLMQ_LOG_STR("result", text),
                 LLMQ_LOG_STR("effect", "circuit stays open"), LLMQ_LOG_END);
}

/*  --- the broker connection
 * ------------------------------------------------------- */

/*  A ZeroMQ socket's ZMQ_FD into the epoll set, tagged: it wakes the
    loop when the socket may have input (s_wait). The socket's close takes
    the fd out of the set. */
static void s_epoll_zmq(s_worker_t *self, zsock_t *sock, uint32_t tag)
{
    int fd = zsock_fd(sock);
    struct epoll_event ev;
    memset(&ev, 0, sizeof ev);
    ev.events = EPOLLIN;
    ev.data.u64 = ((uint64_t)tag << 32) | (uint32_t)fd;
    if (fd >= 0 && epoll_ctl(self->epfd, EPOLL_CTL_ADD, fd, &ev) != 0 &&
        errno == EEXIST)
        epoll_ctl(self->epfd, EPOLL_CTL_MOD, fd, &ev);
}

static int s_connect(s_worker_t *self)
{
    /*  Out of the epoll set first: libzmq closes the socket's fd later. */
    if (self->dealer)
        epoll_ctl(self->epfd, EPOLL_CTL_DEL, zsock_fd(self->dealer), NULL);
    zsock_destroy(&self->dealer);
    self->dealer = zsock_new(ZMQ_DEALER);
    if (!self->dealer)
        return -1;
    zsock_set_linger(self->dealer, 0);
    zsock_set_sndhwm(self->dealer, 1000000);
    zsock_set_rcvhwm(self->dealer, 1000000);
    zsock_set_sndtimeo(self->dealer, 0);
    /*  Receives never block: s_read_broker reads until there is nothing,
        instead of asking ZMQ_EVENTS before each message (each ask costs
        libzmq a getpid and a poll on its mailbox). */
    zsock_set_rcvtimeo(self->dealer, 0);
    zsock_set_maxmsgsize(self->dealer, LLMQ_MAX_FRAME_SIZE);
    zsock_set_identity(self->dealer, self->cfg->identity);
    zsock_set_reconnect_ivl(self->dealer, 100);
    /*  Back within half a second of a broker restart, well inside its
        recovery time (PROTOCOL.md 3.3), so our `held` report comes before
        the clients' resends are dispatched elsewhere. */
    zsock_set_reconnect_ivl_max(self->dealer, 500);
    if (self->cert)
        llmq_curve_client_apply(self->dealer, self->cert, self->server_key);
    if (zsock_connect(self->dealer, "%s", self->cfg->broker) != 0) {
        llmq_log(NULL, LLMQ_LOG_ERROR, "connect_failed",
                 LLMQ_LOG_STR("broker", self->cfg->broker), LLMQ_LOG_END);
        zsock_destroy(&self->dealer);
        return -1;
    }
    s_epoll_zmq(self, self->dealer, S_TAG_DEALER);
    self->broker_seen = s_now();
    s_send_hello(self);
    return 0;
}

static void s_grant_credit(s_worker_t *self, int64_t now);

/*  Health check passed: join the broker and say we are ready. */
static void s_join(s_worker_t *self)
{
    if (s_connect(self) != 0) {
        self->exit_code = LLMQ_WORKER_EXIT_FAILURE;
        self->done = true;
        return;
    }
    self->hb_at = s_now() + self->cfg->heartbeat_ms;
    llmq_log(NULL, LLMQ_LOG_INFO, "joined",
             LLMQ_LOG_STR("broker", self->cfg->broker),
             LLMQ_LOG_STR("worker", self->cfg->name),
             LLMQ_LOG_STR("pool", self->cfg->pool),
             LLMQ_LOG_STR("provider", self->cfg->provider),
             LLMQ_LOG_INT("capacity", self->cfg->capacity), LLMQ_LOG_END);
    const char *url = llmq_wmetrics_url(self->metrics);
    zstr_sendx(self->pipe, "READY", self->cfg->name, url ? url : "", NULL);
    self->pipe_check = true;
    s_grant_credit(self, s_now());
}

/*  --- requests from the broker
 * ------------------------------------------------------- */

static void s_answer_now(s_worker_t *self, s_job_t *job, const cJSON *body)
{
    /*  echo: no HTTP. A streamed request gets its answer as one chunk. */
    llmq_call_t call = {job->op, job->model, job->stream, body};
    llmq_usage_t usage;
    job->attempts = 1;
    cJSON *answer =
        llmq_provider_answer(self->provider, &call, &usage, &job->err);
    if (!answer) {
        s_answer(self, job, NULL, NULL);
        return;
    }
    if (job->stream && job->op != LLMQ_OP_EMBEDDING) {
        cJSON *chunk = cJSON_Duplicate(answer, true);
        cJSON_ReplaceItemInObjectCaseSensitive(
            chunk, "object", cJSON_CreateString("chat.completion.chunk"));
        cJSON *c;
        cJSON_ArrayForEach(c,
                           cJSON_GetObjectItemCaseSensitive(chunk, "choices"))
        {
            cJSON *msg = cJSON_DetachItemFromObjectCaseSensitive(c, "message");
            if (msg)
                cJSON_AddItemToObject(c, "delta", msg);
        }
        s_emit_chunk(chunk, job);
        cJSON_Delete(chunk);
    }
    s_answer_json(self, job, answer, &usage);
    cJSON_Delete(answer);
}

/*  Pass the request's W3C trace context on to the provider. Only a
    well-formed traceparent (hex digits and dashes) goes into a header, so a
    client cannot inject header lines. */
static void s_add_traceparent(s_job_t *job, const char *trace)
{
    if (!trace || strlen(trace) != 55)
        return;
    for (const char *c = trace; *c; c++)
        if (!((*c >= '0' && *c <= '9') || (*c >= 'a' && *c <= 'f') ||
              *c == '-'))
            return;
    snprintf(job->trace_line, sizeof job->trace_line, "traceparent: %s", trace);
    if (job->http.shared) {
        /*  The provider's list stays as it is: our one line goes first. */
        job->trace_hdr.data = job->trace_line;
        job->trace_hdr.next = job->http.headers;
        job->http.headers = &job->trace_hdr;
    } else
        job->http.headers =
            curl_slist_append(job->http.headers, job->trace_line);
}

/*  Does data[0..size) contain the string needle? */
static bool s_contains(const uint8_t *data, size_t size, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = 0; n && i + n <= size; i++)
        if (data[i] == (uint8_t)needle[0] && !memcmp(data + i, needle, n))
            return true;
    return false;
}

/*  Test hook (LLMQ_TEST_POISON): a request this worker cannot survive.
    It dies as kill -9 would: no answer, no bye. */
static void s_poison_check(s_worker_t *self, zframe_t *payload)
{
    if (self->poison && payload &&
        s_contains(zframe_data(payload), zframe_size(payload), self->poison)) {
        fprintf(stderr, "llmq-worker: LLMQ_TEST_POISON matched: dying\n");
        raise(SIGKILL);
    }
}

static void s_job_build(s_worker_t *self, s_job_t *job, llmq_msg_t *msg);

/*  `req`: a resend we can attach, or a new job (s_job_build) unless the
    broker sent it past our capacity. */
static void s_on_req(s_worker_t *self, llmq_msg_t *msg)
{
    int64_t now = s_now();
    const char *id = llmq_msg_id(msg);
    if (self->outstanding > 0)
        self->outstanding--;
    if (zhashx_lookup(self->jobs, id)) {
        llmq_log(NULL, LLMQ_LOG_WARN, "req_duplicate", LLMQ_LOG_STR("id", id),
                 LLMQ_LOG_STR("effect", "ignored"), LLMQ_LOG_END);
        return;
    }
    /*  Only a resend may be answered from what we hold: a fresh request
        that reuses a key (a client that restarted with the same routing
        id and ids) must not get an earlier run's answer. */
    const char *rkey = llmq_msg_rkey(msg);
    if (rkey && *rkey && llmq_msg_resend(msg) && s_attach(self, rkey, id))
        return;
    s_poison_check(self, llmq_msg_payload(msg));
    s_job_t *job = s_job_get(self);
    if (!job)
        return;
    job->worker = self;
    job->id = s_job_str(job->id_own, sizeof job->id_own, id);
    const char *model = llmq_msg_model(msg);
    job->model =
        s_job_str(job->model_own, sizeof job->model_own, model ? model : "");
    job->op = llmq_op_from_name(llmq_msg_op(msg));
    job->stream = llmq_msg_stream(msg);
    job->received_ms = now;
    llmq_queue_node_init(&job->retry);
    llmq_ratelimit_init(&job->rl);
    if (llmq_msg_deadline_ms(msg) > 0)
        job->deadline_at = now + llmq_msg_deadline_ms(msg);
    if (rkey && *rkey)
        job->rkey = strdup(rkey);
    if (!job->id || !job->model || (rkey && *rkey && !job->rkey)) {
        s_job_free(&job);
        return;
    }
    bool over = (int64_t)zhashx_size(self->jobs) >= self->cfg->capacity;
    zhashx_insert(self->jobs, job->id, job);
    if (job->rkey)
        zhashx_update(self->running, job->rkey, job);

    if (over) {
        /*  The broker sent more than the credit we granted. */
        s_fail(self, job, LLMQ_ERR_OVERLOADED, 0, true,
               "worker at capacity: request sent without credit");
        return;
    }
    s_job_build(self, job, msg);
}

/*  A built job waits for the limiter. */
static void s_job_queue(s_worker_t *self, s_job_t *job, llmq_msg_t *msg)
{
    self->avg_tokens = (self->avg_tokens * 15 + job->estimate) / 16;
    s_add_traceparent(job, llmq_msg_trace(msg));
    s_enqueue(self, job, false);
    s_pump(self, s_now());
}

/*  The provider builds the request from the payload itself (no tree):
    true when it did (or refused the payload), false if it cannot. */
static bool s_job_build_raw(s_worker_t *self, s_job_t *job, llmq_msg_t *msg)
{
    zframe_t *payload = llmq_msg_payload(msg);
    if (!payload || !llmq_provider_uses_http(self->provider))
        return false;
    llmq_call_t call = {job->op, job->model, job->stream, NULL};
    int rc =
        llmq_provider_build_raw(self->provider, &call, zframe_data(payload),
                                zframe_size(payload), &job->http, &job->err);
    if (rc == 1)
        return false;
    if (rc != 0) {
        s_answer(self, job, NULL, NULL);
        return true;
    }
    job->estimate =
        job->http.estimate; /* the provider's default max_tokens
                               is the worker's (--default-max-tokens) */
    s_job_queue(self, job, msg);
    return true;
}

/*  A new job: its op and body checked, then answered at once (a provider
    without HTTP) or its HTTP request built and queued for the limiter. */
static void s_job_build(s_worker_t *self, s_job_t *job, llmq_msg_t *msg)
{
    zframe_t *payload = llmq_msg_payload(msg);
    if (job->op == LLMQ_OP_UNKNOWN) {
        char text[128];
        snprintf(text, sizeof text,
                 "unknown op '%.32s' (chat, completion, embedding)",
                 llmq_msg_op(msg));
        s_fail(self, job, LLMQ_ERR_INVALID_REQUEST, 0, false, text);
        return;
    }
    if (s_job_build_raw(self, job, msg))
        return;
    char why[128] = "";
    cJSON *body =
        payload ? llmq_value_to_json(zframe_data(payload), zframe_size(payload),
                                     why, sizeof why)
                : NULL;
    if (!cJSON_IsObject(body)) {
        cJSON_Delete(body);
        char text[200];
        snprintf(text, sizeof text, "request payload must be a msgpack map%s%s",
                 *why ? ": " : "", why);
        s_fail(self, job, LLMQ_ERR_INVALID_REQUEST, 0, false, text);
        return;
    }
    if (!llmq_provider_uses_http(self->provider)) {
        s_answer_now(self, job, body);
        cJSON_Delete(body);
        return;
    }
    job->estimate = llmq_estimate_tokens(body, self->cfg->default_max_tokens);
    llmq_call_t call = {job->op, job->model, job->stream, body};
    int rc = llmq_provider_build_own(self->provider, &call, body, &job->http,
                                     &job->err);
    cJSON_Delete(body);
    if (rc != 0) {
        s_answer(self, job, NULL, NULL);
        return;
    }
    s_job_queue(self, job, msg);
}

static void s_on_cancel(s_worker_t *self, llmq_msg_t *msg)
{
    s_job_t *job = zhashx_lookup(self->jobs, llmq_msg_id(msg));
    if (!job)
        return;
    s_job_detach(self, job, true);
    s_fail(self, job, LLMQ_ERR_CANCELLED, 0, false, "cancelled");
}

/*  job.*: a provider Batch API task (issue 8), or an answer that this
    worker has none (not announced), never a hang. */
static void s_on_job(s_worker_t *self, llmq_msg_t *msg)
{
    if (self->batch && llmq_batch_api_handle(self->batch, msg) >= 0)
        return;
    llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_JOB_STATUS);
    llmq_msg_set_job(m, llmq_msg_job(msg));
    if (llmq_msg_provider_batch(msg))
        llmq_msg_set_provider_batch(m, llmq_msg_provider_batch(msg));
    llmq_msg_set_state(m, "failed");
    llmq_msg_set_error_code(m, llmq_err_name(LLMQ_ERR_INVALID_REQUEST));
    llmq_msg_set_error_message(
        m, "this worker does not run provider Batch API jobs");
    llmq_msg_set_error_retryable(m, false);
    s_send(self, &m);
}

/*  The broker's work for us, by message type: requests, their cancels and
    acks, Batch API tasks. The connection's own messages (limits, hb,
    errors) are handled in s_handle_broker. */
typedef void(s_action_fn)(s_worker_t *self, llmq_msg_t *msg);
static s_action_fn *const s_actions[LLMQ_MSG_COUNT] = {
    [LLMQ_MSG_REQ] = s_on_req,        [LLMQ_MSG_CANCEL] = s_on_cancel,
    [LLMQ_MSG_ACK] = s_on_ack,        [LLMQ_MSG_JOB_SUBMIT] = s_on_job,
    [LLMQ_MSG_JOB_POLL] = s_on_job,   [LLMQ_MSG_JOB_FETCH] = s_on_job,
    [LLMQ_MSG_JOB_CANCEL] = s_on_job,
};

static void s_handle_broker(s_worker_t *self, llmq_msg_t *msg)
{
    self->broker_seen = s_now();
    llmq_msg_type_t type = llmq_msg_type(msg);
    if (type < LLMQ_MSG_COUNT && s_actions[type]) {
        s_actions[type](self, msg);
        return;
    }
    switch (type) {
    case LLMQ_MSG_LIMITS:
        llmq_limiter_set_rates(self->limiter, llmq_msg_limits_rpm(msg),
                               llmq_msg_limits_tpm(msg), s_now());
        llmq_log(NULL, LLMQ_LOG_INFO, "limits_from_broker",
                 LLMQ_LOG_INT("rpm", llmq_msg_limits_rpm(msg)),
                 LLMQ_LOG_INT("tpm", llmq_msg_limits_tpm(msg)), LLMQ_LOG_END);
        break;
    case LLMQ_MSG_HB:
        break;
    case LLMQ_MSG_ERROR:
        llmq_log(NULL, LLMQ_LOG_WARN, "broker_error",
                 LLMQ_LOG_STR("code", llmq_msg_code(msg)),
                 LLMQ_LOG_STR("message", llmq_msg_message(msg)), LLMQ_LOG_END);
        /*  The broker does not know us (it restarted): hello again. Every
            message we sent before the broker saw our hello comes back as one
            such error; one hello answers them all, so further ones within
            a heartbeat interval of it are stale and ignored. */
        if (!llmq_msg_id(msg) && !self->draining && llmq_msg_message(msg) &&
            streq(llmq_msg_message(msg), "hello first") &&
            (!self->joined ||
             s_now() - self->hello_at >= self->cfg->heartbeat_ms))
            s_send_hello(self);
        break;
    case LLMQ_MSG_INVALID:
        llmq_log(NULL, LLMQ_LOG_WARN, "undecodable_message",
                 LLMQ_LOG_STR("reason", llmq_msg_invalid_reason(msg)),
                 LLMQ_LOG_END);
        break;
    default:
        llmq_log(NULL, LLMQ_LOG_DEBUG, "ignored_message",
                 LLMQ_LOG_STR("type", llmq_msg_type_name(llmq_msg_type(msg))),
                 LLMQ_LOG_END);
        break;
    }
}

/*  --- credit
 * ----------------------------------------------------------------------------
 */

static void s_grant_credit(s_worker_t *self, int64_t now)
{
    if (!self->dealer || !self->joined || self->draining)
        return;
    int64_t held = (int64_t)zhashx_size(self->jobs);
    int64_t slots = self->cfg->capacity - held - self->outstanding;
    if (slots <= 0)
        return;
    int64_t queued = (int64_t)self->queue.len;
    int64_t avail = llmq_limiter_available(self->limiter, self->avg_tokens,
                                           1000, self->cfg->capacity, now);
    int64_t allowance = llmq_breaker_allowance(
        self->breaker, llmq_limiter_running(self->limiter));
    if (allowance >= 0 && allowance < avail)
        avail = allowance;
    int64_t grant = avail - queued - self->outstanding;
    if (grant > slots)
        grant = slots;
    if (grant <= 0)
        return;
    /*  Coalesce: while the broker still holds credit, wait for a useful
        amount rather than sending one credit per finished request. */
    int64_t batch = self->cfg->capacity / 32;
    if (self->outstanding > 0 && grant < batch)
        return;
    llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_CREDIT);
    llmq_msg_set_n(m, grant);
    s_send(self, &m);
    self->outstanding += grant;
}

/*  --- the loop
 * ------------------------------------------------------------------------- */

static void s_start_drain(s_worker_t *self, int64_t now)
{
    self->draining = true;
    self->drain_at = now + self->cfg->drain_ms;
    if (self->dealer) {
        llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_BYE);
        s_send(self, &m);
    }
    llmq_log(NULL, LLMQ_LOG_INFO, "stopping",
             LLMQ_LOG_INT("draining", zhashx_size(self->jobs)),
             LLMQ_LOG_INT("drain_ms", self->cfg->drain_ms), LLMQ_LOG_END);
}

/*  Drain deadline: whatever is left is answered as failed (retryable, so
    the broker can send it elsewhere). */
static void s_abandon_all(s_worker_t *self)
{
    s_job_t *job = zhashx_first(self->jobs);
    while (job) {
        s_job_detach(self, job, false);
        s_fail(self, job, LLMQ_ERR_OVERLOADED, 0, true,
               "worker stopped before the request finished");
        job = zhashx_first(self->jobs);
    }
}

static void s_timers(s_worker_t *self, int64_t now)
{
    /*  Retries due: to the front of the start queue. */
    s_job_t *job;
    while ((job = s_retry_first(self)) && job->retry.seq <= now) {
        llmq_queue_remove(self->retries, &job->retry);
        s_enqueue(self, job, true);
    }
    s_held_trim(self, now);
    if (self->dealer && now >= self->hb_at) {
        s_send_hb(self);
        self->hb_at = now + self->cfg->heartbeat_ms;
    }
    if (self->dealer &&
        now - self->broker_seen > S_HB_LIVENESS * self->cfg->heartbeat_ms) {
        llmq_log(NULL, LLMQ_LOG_WARN, "broker_silent",
                 LLMQ_LOG_STR("broker", self->cfg->broker),
                 LLMQ_LOG_INT("silent_ms", now - self->broker_seen),
                 LLMQ_LOG_STR("effect", "reconnecting"), LLMQ_LOG_END);
        self->rejoin = true;
        if (s_connect(self) != 0) {
            self->exit_code = LLMQ_WORKER_EXIT_FAILURE;
            self->done = true;
            return;
        }
        if (self->draining) {
            llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_BYE);
            s_send(self, &m);
        }
    }
    if (!self->probe) {
        if (!self->dealer && self->probe_at && now >= self->probe_at)
            s_probe_start(self);
        else if (self->dealer && llmq_breaker_probe_due(self->breaker, now))
            s_probe_start(self);
    }
}

static int64_t s_next_wake(s_worker_t *self, int64_t now)
{
    int64_t due = now + self->cfg->heartbeat_ms;
    if (self->dealer)
        due = s_min_due(due, self->hb_at);
    for (size_t i = 0; i < self->nshards; i++)
        if (self->shards[i].due >= 0)
            due = s_min_due(due, self->shards[i].due > now ? self->shards[i].due
                                                           : now);
    if (s_retry_first(self))
        due = s_min_due(due, s_retry_first(self)->retry.seq);
    if (self->timeouts.head)
        due = s_min_due(due, s_list_due(&self->timeouts));
    if (self->connecting.head)
        due = s_min_due(due, s_list_due(&self->connecting));
    if (self->limiter_at && self->queue.len)
        due = s_min_due(due, self->limiter_at);
    if (!self->dealer && self->probe_at)
        due = s_min_due(due, self->probe_at);
    int64_t probe_in =
        self->dealer ? llmq_breaker_probe_in(self->breaker, now) : -1;
    if (probe_in >= 0)
        due = s_min_due(due, now + probe_in);
    if (self->draining)
        due = s_min_due(due, self->drain_at);
    return due > now ? due - now : 0;
}

static void s_curl_events(s_worker_t *self)
{
    struct epoll_event evs[512];
    int running;
    for (int round = 0; round < 64; round++) {
        int n = epoll_wait(self->epfd, evs, 512, 0);
        if (n <= 0)
            break;
        for (int i = 0; i < n; i++) {
            int mask = 0;
            if (evs[i].events & EPOLLIN)
                mask |= CURL_CSELECT_IN;
            if (evs[i].events & EPOLLOUT)
                mask |= CURL_CSELECT_OUT;
            if (evs[i].events & (EPOLLERR | EPOLLHUP))
                mask |= CURL_CSELECT_ERR;
            uint32_t ix = (uint32_t)(evs[i].data.u64 >> 32);
            curl_socket_t fd = (curl_socket_t)(evs[i].data.u64 & 0xffffffffu);
            if (ix >= self->nshards)
                continue; /* the pipe or the DEALER: s_wait asks them */
            if ((size_t)fd < self->fds_len && self->fds[fd].in_set &&
                !self->fds[fd].watched) {
                /*  An idle connection left in the set (s_on_socket): the
                    server closed it, most likely. libcurl finds out when
                    it next looks at it; we stop watching it. */
                epoll_ctl(self->epfd, EPOLL_CTL_DEL, fd, NULL);
                self->fds[fd].in_set = false;
                continue;
            }
            if (ix < self->nshards)
                curl_multi_socket_action(self->shards[ix].multi, fd, mask,
                                         &running);
        }
        for (size_t i = 0; i < self->nshards; i++)
            s_check_multi(self, &self->shards[i]);
        if (n < 512)
            break;
    }
}

static void s_handle_pipe(s_worker_t *self);

/*  s_wait without metrics scrapers: one epoll_wait over curl's sockets
    and the ZMQ_FDs of the pipe and the DEALER (s_epoll_zmq), instead of
    zmq_poll (which polls twice and asks each socket for ZMQ_EVENTS
    before and after). A ZMQ_FD only says "ask ZMQ_EVENTS": input can
    wait with the fd quiet (a send may have taken its signal), so both
    sockets are asked before sleeping, and the loop does not sleep when
    either has input. */
static int s_wait_epoll(s_worker_t *self, int64_t now, bool *curl_ready)
{
    /*  The pipe is only asked when used since it last said "no input"
        (pipe_check): otherwise its fd wakes us for what comes. */
    bool pipe_in =
        self->pipe_check && (zsock_events(self->pipe) & ZMQ_POLLIN) != 0;
    self->pipe_check = false;
    bool broker_in =
        self->dealer && (zsock_events(self->dealer) & ZMQ_POLLIN) != 0;
    int64_t wait = pipe_in || broker_in ? 0 : s_next_wake(self, now);
    struct epoll_event evs[64];
    int n = epoll_wait(self->epfd, evs, 64, (int)wait);
    if (n < 0 && errno != EINTR) {
        llmq_log(NULL, LLMQ_LOG_ERROR, "poll_failed",
                 LLMQ_LOG_STR("error", strerror(errno)), LLMQ_LOG_END);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        uint32_t tag = (uint32_t)(evs[i].data.u64 >> 32);
        if (tag == S_TAG_PIPE && !pipe_in)
            pipe_in = (zsock_events(self->pipe) & ZMQ_POLLIN) != 0;
        else if (tag == S_TAG_DEALER)
            broker_in = true;
        else if (tag < self->nshards)
            *curl_ready = true;
    }
    /*  No input before the sleep and no wake-up for the DEALER: nothing to
        read this turn (what comes later wakes us, or the next turn's ask
        above finds it). */
    self->broker_check = broker_in;
    if (pipe_in)
        s_handle_pipe(self);
    return 0;
}

/*  Wait for the next event: curl's sockets, the actor's pipe, the broker,
    metrics scrapers; the timeout is the nearest timer. Handles a pipe
    command and serves scrapes. Returns -1 if polling failed, else 0 with
    *curl_ready set when curl's sockets are readable. */
static int s_wait(s_worker_t *self, int64_t now, bool *curl_ready)
{
    if (!self->metrics)
        return s_wait_epoll(self, now, curl_ready);
    self->broker_check = true;
    zmq_pollitem_t items[3 + S_METRIC_ITEMS];
    int n = 0;
    items[n++] = (zmq_pollitem_t){NULL, self->epfd, ZMQ_POLLIN, 0};
    items[n++] = (zmq_pollitem_t){zsock_resolve(self->pipe), 0, ZMQ_POLLIN, 0};
    if (self->dealer)
        items[n++] =
            (zmq_pollitem_t){zsock_resolve(self->dealer), 0, ZMQ_POLLIN, 0};
    int first_metric = n;
    n +=
        (int)llmq_wmetrics_poll_items(self->metrics, items + n, S_METRIC_ITEMS);
    int rc = zmq_poll(items, n, (long)s_next_wake(self, now));
    if (rc < 0 && errno != EINTR) {
        llmq_log(NULL, LLMQ_LOG_ERROR, "poll_failed",
                 LLMQ_LOG_STR("error", zmq_strerror(errno)), LLMQ_LOG_END);
        return -1;
    }
    if (rc <= 0)
        return 0;
    if (items[1].revents & ZMQ_POLLIN)
        s_handle_pipe(self);
    llmq_wmetrics_service(self->metrics, items + first_metric,
                          (size_t)(n - first_metric), s_now());
    *curl_ready = (items[0].revents & ZMQ_POLLIN) != 0;
    return 0;
}

/*  curl's timers that came due, per shard. */
static void s_curl_timers(s_worker_t *self, int64_t now)
{
    for (size_t i = 0; i < self->nshards; i++) {
        s_shard_t *shard = &self->shards[i];
        if (shard->due >= 0 && now >= shard->due) {
            int running;
            shard->due = -1;
            curl_multi_socket_action(shard->multi, CURL_SOCKET_TIMEOUT, 0,
                                     &running);
            s_check_multi(self, shard);
        }
    }
}

/*  Attempts whose timeout or connect timeout (ours: s_start_transfer)
    came: ended as libcurl ends a transfer that ran out of time. */
static void s_timeouts(s_worker_t *self, int64_t now)
{
    while (self->timeouts.head && s_list_due(&self->timeouts) <= now)
        s_transfer_done(self, self->timeouts.head, CURLE_OPERATION_TIMEDOUT,
                        NULL);
    while (self->connecting.head && s_list_due(&self->connecting) <= now)
        s_transfer_done(self, self->connecting.head, CURLE_OPERATION_TIMEDOUT,
                        NULL);
}

/*  The broker: everything waiting, in bounded batches. The DEALER's
    receive timeout is 0 (s_connect): a receive with nothing waiting
    returns NULL at once. */
static void s_read_broker(s_worker_t *self)
{
    for (int i = 0; self->dealer && i < S_ZMQ_BATCH; i++) {
        llmq_msg_t *msg = llmq_msg_recv(self->dealer);
        if (!msg)
            break;
        s_handle_broker(self, msg);
        llmq_msg_destroy(&msg);
    }
}

/*  While draining: done once nothing is held, or at the drain deadline
    with whatever is left answered as failed. */
static void s_drain_check(s_worker_t *self, int64_t now)
{
    if (!self->draining)
        return;
    if (zhashx_size(self->jobs) == 0 &&
        (!self->batch || llmq_batch_api_active(self->batch) == 0))
        self->done = true;
    else if (now >= self->drain_at) {
        llmq_log(NULL, LLMQ_LOG_WARN, "drain_time_over",
                 LLMQ_LOG_INT("failed", zhashx_size(self->jobs)), LLMQ_LOG_END);
        s_abandon_all(self);
        self->done = true;
    }
}

/*  DRAIN: say bye and await in-flight work (s_drain_check). A worker that
    has not joined yet, or only checks the provider, has nothing to drain. */
static void s_on_drain(s_worker_t *self)
{
    self->drain_asked = true;
    if (self->draining || self->done)
        return;
    if (self->cfg->check_only || !self->dealer) {
        self->exit_code = LLMQ_WORKER_EXIT_OK;
        self->done = true;
        return;
    }
    s_start_drain(self, s_now());
}

/*  A command from the actor's pipe (llmq_worker.h). */
static void s_handle_pipe(s_worker_t *self)
{
    self->pipe_check = true; /* more may wait; a reply may take a signal */
    zmsg_t *msg = zmsg_recv(self->pipe);
    char *command = msg ? zmsg_popstr(msg) : NULL;
    if (!command || streq(command, "$TERM"))
        self->terminated = true;
    else if (streq(command, "DRAIN"))
        s_on_drain(self);
    else if (streq(command, "COUNTERS"))
        zstr_sendf(self->pipe,
                   "answered=%llu failed=%llu in_flight=%zu queued=%zu "
                   "held=%zu",
                   (unsigned long long)self->answered,
                   (unsigned long long)self->failed, zhashx_size(self->jobs),
                   self->queue.len, zhashx_size(self->held));
    free(command);
    zmsg_destroy(&msg);
}

/*  Start: the provider's health check (the worker joins once it passes),
    or join at once for a provider without HTTP. */
static void s_start(s_worker_t *self)
{
    if (llmq_provider_uses_http(self->provider)) {
        s_probe_start(self);
        if (!self->probe) {
            llmq_log(NULL, LLMQ_LOG_ERROR, "health_check_start_failed",
                     LLMQ_LOG_END);
            self->exit_code = LLMQ_WORKER_EXIT_FAILURE;
            self->done = true;
        }
    } else if (self->cfg->check_only) {
        snprintf(self->stop_text, sizeof self->stop_text,
                 "provider %s needs no HTTP", self->cfg->provider);
        self->done = true;
    } else
        s_join(self);
}

/*  One turn of the loop: wait, then curl's sockets and timers, the broker,
    our timers, starts, credit, and the drain. */
static void s_turn(s_worker_t *self)
{
    bool curl_ready = false;
    if (s_wait(self, s_now(), &curl_ready) < 0) {
        self->exit_code = LLMQ_WORKER_EXIT_FAILURE;
        self->done = true;
        return;
    }
    if (self->terminated || self->done)
        return;
    if (curl_ready)
        s_curl_events(self);
    s_curl_timers(self, s_now());
    s_timeouts(self, s_now());
    if (self->broker_check)
        s_read_broker(self);
    int64_t now = s_now();
    s_timers(self, now);
    s_pump(self, now);
    s_grant_credit(self, now);
    s_drain_check(self, now);
}

/*  Serve until done (drained, or stopped on our own) or $TERM, which stops
    now: what is still held is answered as failed, retryable. */
static void s_run(s_worker_t *self)
{
    s_start(self);
    while (!self->done && !self->terminated)
        s_turn(self);
    if (self->terminated) {
        if (self->dealer && !self->draining) {
            llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_BYE);
            s_send(self, &m);
        }
        s_abandon_all(self);
    }
    if (self->draining)
        llmq_log(NULL, LLMQ_LOG_INFO, "stopped",
                 LLMQ_LOG_INT("answered", self->answered),
                 LLMQ_LOG_INT("failed", self->failed), LLMQ_LOG_END);
    if (self->dealer) {
        /*  Let the last answers and the bye reach the broker. */
        zsock_set_linger(self->dealer, 2000);
        zsock_destroy(&self->dealer);
    }
}

/*  --- new / destroy
 * ---------------------------------------------------------------------- */

static void s_raise_nofile(int64_t capacity)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rlim_t want = rl.rlim_max;
    if (rl.rlim_cur < want) {
        rl.rlim_cur = want;
        setrlimit(RLIMIT_NOFILE, &rl);
        getrlimit(RLIMIT_NOFILE, &rl);
    }
    if ((int64_t)rl.rlim_cur < capacity + 64)
        llmq_log(NULL, LLMQ_LOG_WARN, "nofile_low",
                 LLMQ_LOG_INT("limit", rl.rlim_cur),
                 LLMQ_LOG_INT("capacity", capacity),
                 LLMQ_LOG_STR("effect", "connections will queue"),
                 LLMQ_LOG_END);
}

static void s_job_destructor(void **item)
{
    s_job_t *job = *item;
    s_job_free(&job);
    *item = NULL;
}

/*  CURVE keys from the config, if any. Returns 0 or -1 (reason in errbuf). */
static int s_curve_load(s_worker_t *self, char *errbuf, size_t errlen)
{
    if (!self->cfg->curve_cert || !*self->cfg->curve_cert)
        return 0;
    if (llmq_curve_key_resolve(self->cfg->broker_key, self->server_key, errbuf,
                               errlen) != 0)
        return -1;
    self->cert = llmq_curve_cert_load(self->cfg->curve_cert, errbuf, errlen);
    return self->cert ? 0 : -1;
}

/*  The gauges at scrape time. */
static void s_metrics_state(llmq_wmetrics_state_t *st, void *arg)
{
    s_worker_t *self = (s_worker_t *)arg;
    st->in_flight = zhashx_size(self->jobs);
    st->queued = self->queue.len;
    llmq_breaker_state_t b = llmq_breaker_state(self->breaker);
    st->breaker = b == LLMQ_BREAKER_OPEN        ? "open"
                  : b == LLMQ_BREAKER_HALF_OPEN ? "half_open"
                                                : "closed";
}

/*  --metrics: listen now, so a bad address fails at start. */
static int s_metrics_start(s_worker_t *self, char *errbuf, size_t errlen)
{
    const char *address = self->cfg->metrics;
    if (!address || !*address || streq(address, "0"))
        return 0;
    self->metrics = llmq_wmetrics_new(address, errbuf, errlen);
    if (!self->metrics)
        return -1;
    llmq_wmetrics_set_state(self->metrics, s_metrics_state, self);
    llmq_log(NULL, LLMQ_LOG_INFO, "metrics",
             LLMQ_LOG_STR("url", llmq_wmetrics_url(self->metrics)),
             LLMQ_LOG_END);
    return 0;
}

/*  The epoll set and curl's multi handles, one per shard of at most
    S_SHARD_CONNS connections. Returns 0 or -1. */
static int s_curl_new(s_worker_t *self)
{
    int64_t capacity = self->cfg->capacity;
    self->epfd = epoll_create1(EPOLL_CLOEXEC);
    bool curl_ok = curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK;
    self->proxy_env = s_proxy_env();
    self->nshards = (size_t)(capacity + S_SHARD_CONNS - 1) / S_SHARD_CONNS;
    self->shards = calloc(self->nshards, sizeof(s_shard_t));
    for (size_t i = 0; curl_ok && self->shards && i < self->nshards; i++) {
        s_shard_t *shard = &self->shards[i];
        shard->worker = self;
        shard->index = (uint32_t)i;
        shard->due = -1;
        shard->multi = curl_multi_init();
        curl_ok = shard->multi != NULL;
    }
    if (self->epfd < 0 || !self->shards || !curl_ok)
        return -1;
    long per_shard = (long)((capacity + (int64_t)self->nshards - 1) /
                            (int64_t)self->nshards);
    for (size_t i = 0; i < self->nshards; i++) {
        CURLM *multi = self->shards[i].multi;
        curl_multi_setopt(multi, CURLMOPT_SOCKETFUNCTION, s_on_socket);
        curl_multi_setopt(multi, CURLMOPT_SOCKETDATA, &self->shards[i]);
        curl_multi_setopt(multi, CURLMOPT_TIMERFUNCTION, s_on_timer);
        curl_multi_setopt(multi, CURLMOPT_TIMERDATA, &self->shards[i]);
        curl_multi_setopt(multi, CURLMOPT_MAX_HOST_CONNECTIONS, per_shard);
        curl_multi_setopt(multi, CURLMOPT_MAXCONNECTS, per_shard);
        curl_multi_setopt(multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    }
    return 0;
}

/*  Undo s_curl_new, and free the idle easy handles. */
static void s_curl_destroy(s_worker_t *self)
{
    for (size_t i = 0; i < self->pool_len; i++)
        curl_easy_cleanup(self->pool[i]);
    free(self->pool);
    for (size_t i = 0; i < sizeof self->curlu / sizeof self->curlu[0]; i++)
        curl_url_cleanup(self->curlu[i].parsed);
    llmq_packer_destroy(&self->packer);
    for (size_t i = 0; self->shards && i < self->nshards; i++)
        if (self->shards[i].multi)
            curl_multi_cleanup(self->shards[i].multi);
    free(self->shards);
    free(self->fds);
    if (self->epfd >= 0)
        close(self->epfd);
}

/*  batch_api: provider Batch API tasks (issue 8) on the first shard. */
static void s_batch_new(s_worker_t *self)
{
    llmq_worker_config_t *cfg = self->cfg;
    llmq_batch_api_config_t bc = {
        .provider = self->provider,
        .verbose = cfg->verbose,
    };
    if (llmq_provider_uses_http(self->provider))
        self->batch =
            llmq_batch_api_new(&bc, self->shards[0].multi, s_batch_send, self);
    if (self->batch)
        llmq_batch_api_set_cost(self->batch, s_batch_cost, cfg);
    else
        llmq_log(NULL, LLMQ_LOG_WARN, "batch_api_off",
                 LLMQ_LOG_STR("provider", cfg->provider),
                 LLMQ_LOG_STR("reason", "no Batch API here"), LLMQ_LOG_END);
}

static void s_worker_destroy(s_worker_t **self_p);

/*  A worker from a config (taken, *config_p NULLed even on failure), on
    the actor's pipe. NULL with a reason in errbuf if the provider cannot
    be set up. Does no I/O yet. */
static s_worker_t *s_worker_new(llmq_worker_config_t **config_p, zsock_t *pipe,
                                char *errbuf, size_t errlen)
{
    llmq_worker_config_t *cfg = config_p ? *config_p : NULL;
    if (config_p)
        *config_p = NULL;
    s_worker_t *self = cfg ? calloc(1, sizeof *self) : NULL;
    if (!self) {
        snprintf(errbuf, errlen, cfg ? "out of memory" : "no worker config");
        llmq_worker_config_destroy(&cfg);
        return NULL;
    }
    self->cfg = cfg;
    self->pipe = pipe;
    self->pipe_check = true;
    self->epfd = -1;
    self->exit_code = LLMQ_WORKER_EXIT_OK;
    uint64_t seed = (uint64_t)zclock_time() ^ ((uint64_t)getpid() << 32);
    for (int i = 0; i < 3; i++)
        self->rng[i] = (unsigned short)(seed >> (16 * i));
    self->avg_tokens = cfg->default_max_tokens / 4;
    self->probe_backoff = 1000;
    self->queue.off = offsetof(s_job_t, queue_link);
    self->timeouts.off = offsetof(s_job_t, timeout_link);
    self->connecting.off = offsetof(s_job_t, connect_link);
    llmq_provider_config_t pc = {cfg->provider, cfg->base_url, cfg->api_key,
                                 cfg->anthropic_version,
                                 cfg->default_max_tokens};
    self->provider = llmq_provider_new(&pc, errbuf, errlen);
    if (self->provider && (s_curve_load(self, errbuf, errlen) != 0 ||
                           s_metrics_start(self, errbuf, errlen) != 0)) {
        s_worker_destroy(&self);
        return NULL;
    }
    self->limiter = llmq_limiter_new(cfg->rpm, cfg->tpm, cfg->capacity,
                                     cfg->burst_ms, s_now());
    self->breaker =
        llmq_breaker_new(cfg->breaker_failures, cfg->breaker_cooldown_ms);
    self->jobs = zhashx_new();
    if (self->jobs) {
        /*  Keys borrowed: a job's id lives as long as the job. */
        zhashx_set_key_duplicator(self->jobs, NULL);
        zhashx_set_key_destructor(self->jobs, NULL);
    }
    self->running = zhashx_new();
    const char *poison = getenv("LLMQ_TEST_POISON");
    self->poison = poison && *poison ? poison : NULL;
    self->retries = llmq_queue_new();
    self->packer = llmq_packer_new();
    if (!self->provider || !self->limiter || !self->breaker || !self->jobs ||
        !self->running || s_held_new(self) != 0 || !self->retries ||
        !self->packer || s_curl_new(self) != 0) {
        if (errbuf && !*errbuf)
            snprintf(errbuf, errlen,
                     "cannot set up the worker (out of memory or fds)");
        s_worker_destroy(&self);
        return NULL;
    }
    zhashx_set_destructor(self->jobs, s_job_destructor);
    s_epoll_zmq(self, self->pipe, S_TAG_PIPE);
    s_raise_nofile(cfg->capacity);
    if (cfg->batch_api)
        s_batch_new(self);
    return self;
}

static void s_worker_destroy(s_worker_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    s_worker_t *self = *self_p;
    s_job_spares_free(self);
    /*  Jobs first: they hold curl handles, and running borrows them. */
    for (s_job_t *job = self->jobs ? zhashx_first(self->jobs) : NULL; job;
         job = zhashx_next(self->jobs))
        s_job_detach(self, job, false);
    zhashx_destroy(&self->running);
    zhashx_destroy(&self->jobs);
    s_held_destroy(self);
    llmq_batch_api_destroy(&self->batch);
    if (self->probe) {
        s_job_detach(self, self->probe, false);
        s_job_free(&self->probe);
    }
    llmq_queue_destroy(&self->retries);
    s_curl_destroy(self);
    zsock_destroy(&self->dealer);
    zcert_destroy(&self->cert);
    llmq_wmetrics_destroy(&self->metrics);
    llmq_provider_destroy(&self->provider);
    llmq_limiter_destroy(&self->limiter);
    llmq_breaker_destroy(&self->breaker);
    llmq_worker_config_destroy(&self->cfg);
    free(self);
    *self_p = NULL;
}

/*  After DRAINED or STOPPED: nothing to do but await $TERM. */
static void s_await_term(zsock_t *pipe)
{
    bool term = false;
    while (!term) {
        zmsg_t *msg = zmsg_recv(pipe);
        char *command = msg ? zmsg_popstr(msg) : NULL;
        term = !command || streq(command, "$TERM");
        free(command);
        zmsg_destroy(&msg);
    }
}

/*  The end of a run the caller did not stop with $TERM: DRAINED after a
    DRAIN, else STOPPED with the exit code and a line for the user (err if
    the worker could not start). */
static void s_send_end(zsock_t *pipe, s_worker_t *self, const char *err)
{
    if (self && self->drain_asked && self->exit_code == LLMQ_WORKER_EXIT_OK)
        zstr_send(pipe, "DRAINED");
    else {
        char code[16];
        snprintf(code, sizeof code, "%d",
                 self ? self->exit_code : LLMQ_WORKER_EXIT_FAILURE);
        zstr_sendx(pipe, "STOPPED", code, self ? self->stop_text : err, NULL);
    }
}

void llmq_worker(zsock_t *pipe, void *args)
{
    char err[600] = "";
    s_worker_t *self =
        s_worker_new((llmq_worker_config_t **)args, pipe, err, sizeof err);
    zsock_signal(pipe, 0);
    if (self)
        s_run(self);
    bool terminated = self && self->terminated;
    if (!terminated)
        s_send_end(pipe, self, err);
    s_worker_destroy(&self);
    if (!terminated)
        s_await_term(pipe);
    /*  curl's TLS library keeps state per thread, freed by a thread-exit
        hook that would race the process's exit-time cleanup once the
        caller is past zactor_destroy (a double free): free it now, while
        the caller still waits for us. */
    OPENSSL_thread_stop();
}

/*  --- selftest
   ------------------------------------------------------------------------
   The actor with the echo provider, driven through a ROUTER in this process
   as a broker would: READY, hello, credit, req -> res, a stream, cancel of
   an unknown id, a bad payload, an unknown op, limits, heartbeat, an error
   that asks for hello again, COUNTERS, DRAIN -> bye and DRAINED. Then the
   other ends: --check-only (STOPPED 0), a worker that cannot start (STOPPED
   1 with the reason), and $TERM of a running worker (bye). */

#include "llmq_check.h"
#define CHECK(cond) LLMQ_CHECK_OR(cond, goto fail)

/*  Next message of a type from the worker, skipping heartbeats and credit
    unless asked for; NULL after timeout_ms. */
static llmq_msg_t *s_test_expect(zsock_t *router, llmq_msg_type_t type,
                                 int timeout_ms, int64_t *credit)
{
    int64_t until = zclock_mono() + timeout_ms;
    zpoller_t *poller = zpoller_new(router, NULL);
    llmq_msg_t *found = NULL;
    while (!found && zclock_mono() < until) {
        if (!zpoller_wait(poller, (int)(until - zclock_mono())))
            break;
        llmq_msg_t *m = llmq_msg_recv(router);
        if (!m)
            break;
        if (llmq_msg_type(m) == LLMQ_MSG_CREDIT && credit)
            *credit += llmq_msg_n(m);
        if (llmq_msg_type(m) == type)
            found = m;
        else
            llmq_msg_destroy(&m);
    }
    zpoller_destroy(&poller);
    return found;
}

/*  A ROUTER on a free port, standing in for the broker; its endpoint goes
    to endpoint. NULL if it cannot bind. */
static zsock_t *s_test_router(char *endpoint, size_t size)
{
    zsock_t *router = zsock_new(ZMQ_ROUTER);
    int port = router ? zsock_bind(router, "tcp://127.0.0.1:*") : -1;
    if (port <= 0)
        zsock_destroy(&router);
    snprintf(endpoint, size, "tcp://127.0.0.1:%d", port);
    return router;
}

/*  An echo worker actor for a broker at endpoint, with one more flag (and
    its value) if not NULL. NULL if the config is refused or not taken. */
static zactor_t *s_test_worker(const char *endpoint, const char *flag,
                               const char *value)
{
    char *argv[] = {"llmq-worker",
                    "--provider",
                    "echo",
                    "--broker",
                    (char *)endpoint,
                    "--name",
                    "selftest",
                    "--model",
                    "m1",
                    "--capacity",
                    "64",
                    (char *)flag,
                    (char *)value,
                    NULL};
    int argc = 11 + (flag ? 1 : 0) + (flag && value ? 1 : 0);
    char err[256] = "";
    llmq_worker_config_t *cfg = NULL;
    if (llmq_worker_config_load(&cfg, argc, argv, err, sizeof err) != 0)
        return NULL;
    zactor_t *actor = zactor_new(llmq_worker, &cfg);
    if (cfg) {
        llmq_worker_config_destroy(&cfg);
        zactor_destroy(&actor);
    }
    return actor;
}

/*  The next event from the actor within timeout_ms, or NULL. */
static zmsg_t *s_test_event(zactor_t *actor, int timeout_ms)
{
    zpoller_t *poller = zpoller_new(actor, NULL);
    zmsg_t *msg = zpoller_wait(poller, timeout_ms) ? zmsg_recv(actor) : NULL;
    zpoller_destroy(&poller);
    return msg;
}

/*  Does the event have these frames (NULL ends the list)? Destroys it. */
static bool s_test_event_is(zmsg_t **msg_p, const char *first, ...)
{
    zmsg_t *msg = *msg_p;
    bool same = msg != NULL;
    va_list args;
    va_start(args, first);
    for (const char *want = first; same && want;
         want = va_arg(args, const char *)) {
        char *got = zmsg_popstr(msg);
        same = got && streq(got, want);
        free(got);
    }
    va_end(args);
    zmsg_destroy(msg_p);
    return same;
}

/*  A req from the broker at rid: model m1, a JSON body. */
static int s_test_req(zsock_t *router, zframe_t *rid, const char *id,
                      const char *op, const char *json, bool stream)
{
    llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_REQ);
    llmq_msg_set_routing_id(m, rid);
    llmq_msg_set_id(m, id);
    llmq_msg_set_op(m, op);
    llmq_msg_set_model(m, "m1");
    if (stream)
        llmq_msg_set_stream(m, true);
    zframe_t *payload = llmq_value_from_json_text(json, strlen(json), NULL, 0);
    llmq_msg_set_payload(m, &payload);
    return llmq_msg_send(&m, router);
}

/*  The worker joined: READY, then hello and all its credit on the router.
    Returns the worker's routing id, or NULL. */
static zframe_t *s_test_join(zactor_t *worker, zsock_t *router)
{
    zframe_t *rid = NULL;
    int64_t credit = 0;
    zmsg_t *event = s_test_event(worker, 5000);
    CHECK(s_test_event_is(&event, "READY", "selftest", "", NULL));
    llmq_msg_t *m = s_test_expect(router, LLMQ_MSG_HELLO, 5000, &credit);
    CHECK(m);
    bool hello = streq(llmq_msg_worker(m), "selftest") &&
                 streq(llmq_msg_provider(m), "echo") &&
                 llmq_msg_capacity(m) == 64 && llmq_msg_models_count(m) == 1 &&
                 streq(llmq_msg_models_at(m, 0), "m1");
    rid = zframe_dup(llmq_msg_routing_id(m));
    llmq_msg_destroy(&m);
    CHECK(hello);
    while (credit < 64) {
        m = s_test_expect(router, LLMQ_MSG_CREDIT, 5000, NULL);
        CHECK(m);
        credit += llmq_msg_n(m);
        llmq_msg_destroy(&m);
    }
    CHECK(credit == 64);
    return rid;
fail:
    zframe_destroy(&rid);
    return NULL;
}

/*  Requests: an answer, a stream, a bad payload, an unknown op. */
static int s_test_requests(zsock_t *router, zframe_t *rid)
{
    const char *body =
        "{\"messages\":[{\"role\":\"user\",\"content\":\"ping\"}]}";
    char *json = NULL;
    llmq_msg_t *m = NULL;
    CHECK(s_test_req(router, rid, "r1", "chat", body, false) == 0);
    m = s_test_expect(router, LLMQ_MSG_RES, 5000, NULL);
    CHECK(m && streq(llmq_msg_id(m), "r1") && llmq_msg_ok(m));
    CHECK(streq(llmq_msg_worker(m), "selftest") && llmq_msg_attempts(m) == 1);
    CHECK(llmq_msg_usage_total_tokens(m) > 0);
    zframe_t *payload = llmq_msg_payload(m);
    json = llmq_value_to_json_text(zframe_data(payload), zframe_size(payload),
                                   NULL, 0);
    CHECK(json && strstr(json, "echo: ping"));
    llmq_msg_destroy(&m);

    /*  A stream: one chunk, then the res. */
    CHECK(s_test_req(router, rid, "r2", "chat", body, true) == 0);
    m = s_test_expect(router, LLMQ_MSG_CHUNK, 5000, NULL);
    CHECK(m && streq(llmq_msg_id(m), "r2") && llmq_msg_seq(m) == 0);
    llmq_msg_destroy(&m);
    m = s_test_expect(router, LLMQ_MSG_RES, 5000, NULL);
    CHECK(m && streq(llmq_msg_id(m), "r2") && llmq_msg_ok(m));
    llmq_msg_destroy(&m);

    /*  A cancel for nothing, a payload that is not a map, an unknown op. */
    m = llmq_msg_new(LLMQ_MSG_CANCEL);
    llmq_msg_set_routing_id(m, rid);
    llmq_msg_set_id(m, "nothing");
    CHECK(llmq_msg_send(&m, router) == 0);
    CHECK(s_test_req(router, rid, "r3", "chat", "[1,2]", false) == 0);
    m = s_test_expect(router, LLMQ_MSG_RES, 5000, NULL);
    CHECK(m && streq(llmq_msg_id(m), "r3") && !llmq_msg_ok(m));
    CHECK(streq(llmq_msg_error_code(m), "invalid_request") &&
          !llmq_msg_error_retryable(m));
    llmq_msg_destroy(&m);
    CHECK(s_test_req(router, rid, "r4", "dance", "{}", false) == 0);
    m = s_test_expect(router, LLMQ_MSG_RES, 5000, NULL);
    CHECK(m && streq(llmq_msg_id(m), "r4") &&
          streq(llmq_msg_error_code(m), "invalid_request"));
    llmq_msg_destroy(&m);
    free(json);
    return 0;
fail:
    llmq_msg_destroy(&m);
    free(json);
    return -1;
}

/*  Limits and heartbeats; an error without id makes it say hello again. */
static int s_test_control(zsock_t *router, zframe_t *rid)
{
    llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_LIMITS);
    llmq_msg_set_routing_id(m, rid);
    llmq_msg_set_limits_rpm(m, 600);
    CHECK(llmq_msg_send(&m, router) == 0);
    m = s_test_expect(router, LLMQ_MSG_HB, 3000, NULL);
    CHECK(m && llmq_msg_healthy(m) && llmq_msg_in_flight(m) == 0);
    llmq_msg_destroy(&m);
    m = llmq_msg_new(LLMQ_MSG_ERROR);
    llmq_msg_set_routing_id(m, rid);
    llmq_msg_set_code(m, "bad_message");
    llmq_msg_set_message(m, "hello first");
    CHECK(llmq_msg_send(&m, router) == 0);
    m = s_test_expect(router, LLMQ_MSG_HELLO, 3000, NULL);
    CHECK(m);
    llmq_msg_destroy(&m);
    return 0;
fail:
    llmq_msg_destroy(&m);
    return -1;
}

/*  The pipe: COUNTERS, then DRAIN: bye to the broker, DRAINED to us. */
static int s_test_drain(zactor_t *worker, zsock_t *router)
{
    llmq_msg_t *m = NULL;
    CHECK(zstr_send(worker, "COUNTERS") == 0);
    char *counters = zstr_recv(worker);
    bool two_each = counters && strstr(counters, "answered=2 failed=2 ") &&
                    strstr(counters, "in_flight=0");
    zstr_free(&counters);
    CHECK(two_each);
    CHECK(zstr_send(worker, "DRAIN") == 0);
    m = s_test_expect(router, LLMQ_MSG_BYE, 3000, NULL);
    CHECK(m);
    llmq_msg_destroy(&m);
    zmsg_t *event = s_test_event(worker, 5000);
    CHECK(s_test_event_is(&event, "DRAINED", NULL));
    return 0;
fail:
    llmq_msg_destroy(&m);
    return -1;
}

/*  The other ends: --check-only, a worker that cannot start, $TERM. A
    router of its own: the first one still knows our worker identity. */
static int s_test_ends(void)
{
    llmq_msg_t *m = NULL;
    zmsg_t *event = NULL;
    zactor_t *worker = NULL;
    char endpoint[64];
    zsock_t *router = s_test_router(endpoint, sizeof endpoint);
    CHECK(router);
    worker = s_test_worker(endpoint, "--check-only", NULL);
    CHECK(worker);
    event = s_test_event(worker, 5000);
    CHECK(s_test_event_is(&event, "STOPPED", "0", "provider echo needs no HTTP",
                          NULL));
    zactor_destroy(&worker);
    worker = s_test_worker(endpoint, "--metrics", "127.0.0.1:99999");
    CHECK(worker);
    event = s_test_event(worker, 5000);
    CHECK(s_test_event_is(&event, "STOPPED", "1", NULL));
    zactor_destroy(&worker);
    /*  $TERM while joined: stop now, with a bye. */
    worker = s_test_worker(endpoint, NULL, NULL);
    CHECK(worker);
    event = s_test_event(worker, 5000);
    CHECK(s_test_event_is(&event, "READY", NULL));
    zactor_destroy(&worker);
    m = s_test_expect(router, LLMQ_MSG_BYE, 3000, NULL);
    CHECK(m);
    llmq_msg_destroy(&m);
    zsock_destroy(&router);
    return 0;
fail:
    zactor_destroy(&worker);
    zsock_destroy(&router);
    return -1;
}

int llmq_worker_test(bool verbose)
{
    if (verbose)
        printf(" * llmq_worker: ");
    int result = -1;
    zactor_t *worker = NULL;
    zframe_t *rid = NULL;
    char endpoint[64];
    zsock_t *router = s_test_router(endpoint, sizeof endpoint);
    CHECK(router);
    llmq_log_setup(NULL, "llmq-worker", false,
                   verbose ? LLMQ_LOG_DEBUG : LLMQ_LOG_INFO);
    worker = s_test_worker(endpoint, NULL, NULL);
    CHECK(worker);
    rid = s_test_join(worker, router);
    CHECK(rid);
    CHECK(s_test_requests(router, rid) == 0);
    CHECK(s_test_control(router, rid) == 0);
    CHECK(s_test_drain(worker, router) == 0);
    zactor_destroy(&worker);
    CHECK(s_test_ends() == 0);
    result = 0;
fail:
    zactor_destroy(&worker);
    zframe_destroy(&rid);
    zsock_destroy(&router);
    if (verbose)
        printf(result == 0 ? "OK\n" : "FAILED\n");
    return result;
}
