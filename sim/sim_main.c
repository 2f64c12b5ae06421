/*  sim_main.c — llmq-sim: server, routing, auth, rate limits, faults, timers.

    One libevent loop serves every connection. A generation request is parsed
    once (sim_gen.c), checked (auth, model, rate limit), then decided: answer,
    fail, hang, break or reset, by its directives first and the fault flags
    second. Answers that must wait (latency, jitter, token rate, delay_ms)
    sit in a "pending" record with its own timer; the timer sends the reply,
    or the next SSE event of a stream. Nothing ever blocks the loop.

    evhttp ownership rules this file relies on (libevent 2.1):
    - a request we have not answered stays valid even if its client leaves:
      evhttp only detaches it (evhttp_request_get_connection() becomes NULL)
      and evhttp_send_reply / evhttp_send_reply_end then just free it;
    - evhttp_send_reply_start and _chunk need a live connection, so we check
      before each of them;
    - freeing a connection frees the request it holds, so a request held by
      a hang is tracked per connection and forgotten in the close callback.
*/
#include "sim.h"
#include "sim_http.h"

#include <errno.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <getopt.h>

#include "llmq.h" /* LLMQ_VERSION_STRING */
#include "llmq_duration.h"
#include "llmq_log.h"
#include <inttypes.h>
#include <math.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <event2/bufferevent.h>
#include <event2/event_struct.h>
#include <event2/keyvalq_struct.h>

//  --- configuration -----------------------------------------------------

typedef struct {
    const char *host;      //  listen address
    int port;              //  listen port (0 = ephemeral)
    int64_t latency_ms;    //  fixed latency per answer
    int64_t jitter_ms;     //  + uniform 0..jitter
    double tokens_per_sec; //  output rate (0 = instant)
    int64_t rpm, tpm;      //  limits per API key (0 = none)
    char **api_keys;       //  accepted keys (NULL = any non-empty)
    int n_api_keys;
    char **models; //  accepted models (NULL = any)
    int n_models;
    double p500, p503, p429, phang, pmalformed, preset;
    uint64_t seed;
    int64_t hang_ms;       //  drop a hung connection after this (0 = never)
    int64_t max_body;      //  request body limit in bytes
    int64_t max_model_len; //  /v1/models reports it (vLLM's key); 0 = not
    sim_batch_cfg_t batch;
    bool quiet;
    bool exit_with_parent; //  SIGTERM ourselves when the parent dies
} s_cfg_t;

//  --- small maps ----------------------------------------------------------

//  Open-addressing uint64 -> uint64 map; key 0 is reserved for empty slots.
typedef struct {
    uint64_t *keys;
    uint64_t *vals;
    size_t cap; //  power of two
    size_t n;
} s_map_t;

static void s_map_clear(s_map_t *m)
{
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof(*m));
}

//  Returns the value slot for key, creating it (value 0) when create is
//  true; NULL if absent (or out of memory).
static uint64_t *s_map_slot(s_map_t *m, uint64_t key, bool create)
{
    if (key == 0)
        key = 1;
    if (create && (m->n + 1) * 2 > m->cap) {
        size_t ncap = m->cap ? m->cap * 2 : 1024;
        uint64_t *nk = calloc(ncap, sizeof(uint64_t));
        uint64_t *nv = calloc(ncap, sizeof(uint64_t));
        if (!nk || !nv) {
            free(nk);
            free(nv);
            return NULL;
        }
        for (size_t i = 0; i < m->cap; i++) {
            if (!m->keys[i])
                continue;
            size_t j = (m->keys[i] * 0x9E3779B97F4A7C15ULL) & (ncap - 1);
            while (nk[j])
                j = (j + 1) & (ncap - 1);
            nk[j] = m->keys[i];
            nv[j] = m->vals[i];
        }
        free(m->keys);
        free(m->vals);
        m->keys = nk;
        m->vals = nv;
        m->cap = ncap;
    }
    if (!m->cap)
        return NULL;
    size_t j = (key * 0x9E3779B97F4A7C15ULL) & (m->cap - 1);
    while (m->keys[j]) {
        if (m->keys[j] == key)
            return &m->vals[j];
        j = (j + 1) & (m->cap - 1);
    }
    if (!create)
        return NULL;
    m->keys[j] = key;
    m->vals[j] = 0;
    m->n++;
    return &m->vals[j];
}

//  --- state -----------------------------------------------------------------

typedef struct sim_s sim_t;

//  A reply waiting for its timer: a whole body, an SSE stream or a reset.
typedef enum { P_REPLY, P_STREAM, P_RESET } s_pkind_t;

typedef struct s_pending {
    struct s_pending *prev, *next; //  in sim->pending
    sim_t *sim;
    struct event timer;
    struct evhttp_request *req;
    s_pkind_t kind;
    int route;
    int status;            //  P_REPLY: HTTP status
    int stat_code;         //  code counted in stats (status or S_*)
    struct evbuffer *body; //  P_REPLY: body to send
    uint64_t bill_key;     //  counted for double billing on 200
    bool bill;
    //  P_STREAM
    sim_req_t r; //  (no embeddings: input_hash is NULL)
    char id[48];
    long created;
    char *text; //  whole reply text
    size_t pos; //  next byte of text to stream
    bool started;
    int64_t interval_ms; //  between tokens
} s_pending_t;

//  Per-connection record, found by evhttp_connection pointer.
typedef struct s_conn {
    struct s_conn *next; //  bucket chain
    struct evhttp_connection *evcon;
    sim_t *sim;
    struct evhttp_request *hung; //  request held by a hang, or NULL
    struct event *watch;         //  EOF watch while hung
    struct event *hang_timer;    //  --hang-ms
} s_conn_t;

#define S_CONN_BUCKETS 65536
#define S_MAX_KEYS 100000    //  rate-limit windows tracked
#define S_MAX_BILLED 8000000 //  request keys remembered (~256 MB)

//  Stats codes that are not HTTP statuses.
enum { S_HANG = 1, S_RESET = 2, S_MALFORMED = 3 };

typedef struct {
    uint64_t key;       //  hash of the API key
    int64_t start;      //  window start (monotonic ms)
    int64_t reqs, toks; //  used in this window
} s_window_t;

struct sim_s {
    s_cfg_t cfg;
    sim_http_t net; //  loop, URL, ids, keys, reply statistics
    struct evhttp *http;
    struct event *sigint, *sigterm;
    uint64_t rng;
    s_pending_t *pending; //  all waiting replies
    s_conn_t **conns;     //  S_CONN_BUCKETS chains
    s_map_t arrivals;     //  request key -> arrivals (directives)
    s_map_t billed;       //  request keys answered 200
    s_map_t window_ix;    //  api key hash -> index in windows
    s_window_t *windows;
    size_t n_windows, cap_windows;
    sim_batches_t *batches;
    const struct timeval *latency_tv; //  common timeout for --latency-ms
    //  statistics (replies per route: net.stats)
    uint64_t limited_by_limit, double_billed, answered_ok;
    uint64_t prompt_tokens, completion_tokens;
    int64_t peak_concurrent, connections, peak_connections;
    int64_t started_ms;
};

static const char *s_route_names[SIM_R_COUNT] = {
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/embeddings",
    "/v1/messages",
    "/v1/models",
    "/v1/files",
    "/v1/files/{id}",
    "/v1/files/{id}/content",
    "/v1/batches",
    "/v1/batches/{id}",
    "/v1/batches/{id}/cancel",
    "/v1/messages/batches",
    "/v1/messages/batches/{id}",
    "/v1/messages/batches/{id}/results",
    "/v1/messages/batches/{id}/cancel",
    "/_stats",
    "/_reset",
    "/health",
    "other"};

static const char *s_default_models[] = {
    "sim-small", "sim-large", "gpt-4o-mini", "text-embedding-3-small",
    "claude-3-5-haiku-20241022"};

//  --- helpers ---------------------------------------------------------------

//  Uniform double in [0, 1).
static double s_rand01(sim_t *sim)
{
    uint64_t x = sim->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    sim->rng = x;
    return (double)((x * 0x2545F4914F6CDD1DULL) >> 11) / 9007199254740992.0;
}

//  A 200 answer for request key: counts double billing.
static void s_bill(sim_t *sim, uint64_t key)
{
    sim->answered_ok++;
    //  Past the bound only keys already known are checked, so a very long
    //  load test cannot eat the machine's memory; /_stats says so.
    uint64_t *slot =
        s_map_slot(&sim->billed, key, sim->billed.n < S_MAX_BILLED);
    if (!slot)
        return;
    if (*slot)
        sim->double_billed++;
    *slot = 1;
}

//  --- connections
//  -------------------------------------------------------------

static size_t s_conn_bucket(struct evhttp_connection *evcon)
{
    return (size_t)(((uintptr_t)evcon >> 4) * 0x9E3779B97F4A7C15ULL >> 48) &
           (S_CONN_BUCKETS - 1);
}

static s_conn_t *s_conn_find(sim_t *sim, struct evhttp_connection *evcon)
{
    for (s_conn_t *c = sim->conns[s_conn_bucket(evcon)]; c; c = c->next)
        if (c->evcon == evcon)
            return c;
    return NULL;
}

static void s_conn_closed(struct evhttp_connection *evcon, void *arg)
{
    s_conn_t *conn = arg;
    sim_t *sim = conn->sim;
    s_conn_t **pp = &sim->conns[s_conn_bucket(evcon)];
    while (*pp && *pp != conn)
        pp = &(*pp)->next;
    if (*pp)
        *pp = conn->next;
    if (conn->watch)
        event_free(conn->watch);
    if (conn->hang_timer)
        event_free(conn->hang_timer);
    if (conn->hung) {
        //  Detached by evhttp (client left first): the request is ours to
        //  free. Still attached: evhttp frees it with the connection.
        if (evhttp_request_get_connection(conn->hung) == NULL)
            evhttp_request_free(conn->hung);
        sim_done(&sim->net);
    }
    sim->connections--;
    free(conn);
}

//  The connection record of a request; created (and counted) on first sight.
static s_conn_t *s_conn_of(sim_t *sim, struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    if (!evcon)
        return NULL;
    s_conn_t *conn = s_conn_find(sim, evcon);
    if (conn)
        return conn;
    conn = calloc(1, sizeof(*conn));
    if (!conn)
        return NULL;
    conn->evcon = evcon;
    conn->sim = sim;
    size_t b = s_conn_bucket(evcon);
    conn->next = sim->conns[b];
    sim->conns[b] = conn;
    evhttp_connection_set_closecb(evcon, s_conn_closed, conn);
    if (++sim->connections > sim->peak_connections)
        sim->peak_connections = sim->connections;
    return conn;
}

static void s_hang_watch(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    s_conn_t *conn = arg;
    char ch;
    ssize_t n = recv(fd, &ch, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0 ||
        (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
        evhttp_connection_free(conn->evcon); //  -> s_conn_closed
    else if (n > 0) {
        //  The client pipelined another request; we cannot tell EOF any
        //  more, so stop watching (the hang timer, if any, still applies).
        event_free(conn->watch);
        conn->watch = NULL;
    }
}

static void s_hang_expired(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    s_conn_t *conn = arg;
    evhttp_connection_free(conn->evcon); //  -> s_conn_closed
}

//  Holds req forever (or --hang-ms): no answer, ever.
static void s_hang(sim_t *sim, struct evhttp_request *req, int route)
{
    sim_count(&sim->net, route, S_HANG);
    s_conn_t *conn = s_conn_of(sim, req);
    if (!conn || conn->hung) {
        //  Cannot track it: give up the connection instead of leaking it.
        struct evhttp_connection *evcon = evhttp_request_get_connection(req);
        if (evcon)
            evhttp_connection_free(evcon);
        else
            evhttp_request_free(req);
        sim_done(&sim->net);
        return;
    }
    conn->hung = req;
    struct bufferevent *bev = evhttp_connection_get_bufferevent(conn->evcon);
    evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
    if (fd >= 0) {
        conn->watch = event_new(sim->net.base, fd, EV_READ | EV_PERSIST,
                                s_hang_watch, conn);
        if (conn->watch)
            event_add(conn->watch, NULL);
    }
    if (sim->cfg.hang_ms > 0) {
        conn->hang_timer = evtimer_new(sim->net.base, s_hang_expired, conn);
        struct timeval tv = {sim->cfg.hang_ms / 1000,
                             (sim->cfg.hang_ms % 1000) * 1000};
        if (conn->hang_timer)
            evtimer_add(conn->hang_timer, &tv);
    }
}

//  Closes the request's connection abruptly (RST, no answer).
static void s_reset_now(sim_t *sim, struct evhttp_request *req, int route)
{
    sim_count(&sim->net, route, S_RESET);
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    if (evcon) {
        struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
        evutil_socket_t fd = bev ? bufferevent_getfd(bev) : -1;
        if (fd >= 0) {
            struct linger lg = {1, 0};
            setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
        }
        evhttp_connection_free(evcon);
    } else
        evhttp_request_free(req);
    sim_done(&sim->net);
}

//  --- pending replies -------------------------------------------------------

static void s_pending_fire(evutil_socket_t fd, short what, void *arg);

static s_pending_t *s_pending_new(sim_t *sim, struct evhttp_request *req,
                                  s_pkind_t kind, int route)
{
    s_pending_t *p = calloc(1, sizeof(*p));
    if (!p)
        return NULL;
    p->sim = sim;
    p->req = req;
    p->kind = kind;
    p->route = route;
    evtimer_assign(&p->timer, sim->net.base, s_pending_fire, p);
    p->next = sim->pending;
    if (sim->pending)
        sim->pending->prev = p;
    sim->pending = p;
    return p;
}

static void s_pending_free(s_pending_t *p)
{
    sim_t *sim = p->sim;
    evtimer_del(&p->timer);
    if (p->prev)
        p->prev->next = p->next;
    else
        sim->pending = p->next;
    if (p->next)
        p->next->prev = p->prev;
    if (p->body)
        evbuffer_free(p->body);
    free(p->text);
    free(p);
}

static void s_pending_arm(s_pending_t *p, int64_t ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    //  Most timers wait exactly --latency-ms: libevent keeps timers of one
    //  "common timeout" in a FIFO queue instead of its heap, O(1) each.
    if (ms > 0 && ms == p->sim->cfg.latency_ms && p->sim->latency_tv)
        evtimer_add(&p->timer, p->sim->latency_tv);
    else
        evtimer_add(&p->timer, &tv);
}

//  Sends the next piece of a stream; returns true when the stream is over.
static bool s_stream_step(s_pending_t *p)
{
    sim_t *sim = p->sim;
    struct evhttp_request *req = p->req;
    if (evhttp_request_get_connection(req) == NULL) {
        //  Client gone. Like a real provider we did the work and bill it,
        //  so a client that times out and retries shows up as double billed.
        if (!p->started) {
            sim_count(&sim->net, p->route, 200);
            s_bill(sim, p->bill_key);
        }
        evhttp_send_reply_end(req);
        sim_done(&sim->net);
        return true;
    }
    struct evbuffer *out = evbuffer_new();
    if (!p->started) {
        sim_header(req, "Content-Type", "text/event-stream; charset=utf-8");
        sim_header(req, "Cache-Control", "no-cache");
        evhttp_send_reply_start(req, 200, "OK");
        sim_count(&sim->net, p->route, 200);
        s_bill(sim, p->bill_key);
        sim_sse_head(out, &p->r, p->id, p->created);
        p->started = true;
    }
    size_t len = strlen(p->text);
    //  At an instant rate the whole stream goes in one write.
    do {
        if (p->pos >= len)
            break;
        size_t end = p->pos + 1;
        while (end < len && p->text[end] != ' ')
            end++;
        sim_sse_word(out, &p->r, p->id, p->created, p->text + p->pos,
                     end - p->pos);
        p->pos = end;
    } while (p->interval_ms == 0);
    bool over = p->pos >= len;
    if (over)
        sim_sse_tail(out, &p->r, p->id, p->created);
    evhttp_send_reply_chunk(req, out);
    evbuffer_free(out);
    if (over) {
        evhttp_send_reply_end(req);
        sim_done(&sim->net);
    }
    return over;
}

static void s_pending_fire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    s_pending_t *p = arg;
    sim_t *sim = p->sim;
    switch (p->kind) {
    case P_REPLY:
        if (p->bill)
            s_bill(sim, p->bill_key);
        sim_header(p->req, "Content-Type", "application/json");
        sim_count(&sim->net, p->route, p->stat_code);
        evhttp_send_reply(p->req, p->status, NULL, p->body);
        sim_done(&sim->net);
        break;
    case P_RESET:
        s_reset_now(sim, p->req, p->route);
        break;
    case P_STREAM:
        if (!s_stream_step(p)) {
            s_pending_arm(p, p->interval_ms);
            return;
        }
        break;
    }
    s_pending_free(p);
}

//  --- auth and rate limits
//  ----------------------------------------------------

static s_window_t *s_window(sim_t *sim, uint64_t keyhash)
{
    uint64_t *ix = s_map_slot(&sim->window_ix, keyhash, false);
    if (!ix) {
        if (sim->n_windows >= S_MAX_KEYS ||
            !(ix = s_map_slot(&sim->window_ix, keyhash, true)))
            return &sim->windows[0]; //  shared overflow window
        if (sim->n_windows == sim->cap_windows) {
            size_t ncap = sim->cap_windows * 2;
            s_window_t *nw = realloc(sim->windows, ncap * sizeof(s_window_t));
            if (!nw)
                return &sim->windows[0];
            sim->windows = nw;
            sim->cap_windows = ncap;
        }
        *ix = sim->n_windows++;
        memset(&sim->windows[*ix], 0, sizeof(s_window_t));
        sim->windows[*ix].key = keyhash;
        sim->windows[*ix].start = -1;
    }
    return &sim->windows[*ix];
}

//  Rate-limit headers, [OpenAI, Anthropic]: requests limit, remaining,
//  reset, then the same three for tokens.
static const char *const s_limit_headers[2][6] = {
    {"x-ratelimit-limit-requests", "x-ratelimit-remaining-requests",
     "x-ratelimit-reset-requests", "x-ratelimit-limit-tokens",
     "x-ratelimit-remaining-tokens", "x-ratelimit-reset-tokens"},
    {"anthropic-ratelimit-requests-limit",
     "anthropic-ratelimit-requests-remaining",
     "anthropic-ratelimit-requests-reset", "anthropic-ratelimit-tokens-limit",
     "anthropic-ratelimit-tokens-remaining",
     "anthropic-ratelimit-tokens-reset"}};

//  Fixed 60 s window per API key, starting at the key's first request after
//  the previous window ended. A request is admitted when one more request
//  fits under rpm and its tokens (prompt + completion) fit under tpm; 429s
//  consume nothing. Adds the rate-limit headers; returns -1 after a 429.
static int s_ratelimit(sim_t *sim, struct evhttp_request *req, int route,
                       bool anthropic, uint64_t keyhash, int64_t tokens)
{
    if (!sim->cfg.rpm && !sim->cfg.tpm)
        return 0;
    s_window_t *w = s_window(sim, keyhash);
    int64_t now = sim_mono_ms();
    if (w->start < 0 || now - w->start >= 60000) {
        w->start = now;
        w->reqs = w->toks = 0;
    }
    int64_t reset_ms = w->start + 60000 - now;
    bool over_r = sim->cfg.rpm && w->reqs + 1 > sim->cfg.rpm;
    bool over_t = sim->cfg.tpm && w->toks + tokens > sim->cfg.tpm;
    if (!over_r && !over_t) {
        w->reqs++;
        w->toks += tokens;
    }
    char v[64], reset[48];
    if (anthropic)
        sim_rfc3339(reset, sizeof(reset), sim_wall_ms() + reset_ms);
    else
        sim_duration(reset, sizeof(reset), reset_ms);
    const char *const *names = s_limit_headers[anthropic ? 1 : 0];
    int64_t limit[2] = {sim->cfg.rpm, sim->cfg.tpm};
    int64_t left[2] = {sim->cfg.rpm - w->reqs,
                       sim->cfg.tpm - w->toks > 0 ? sim->cfg.tpm - w->toks : 0};
    for (int k = 0; k < 2; k++) {
        if (!limit[k])
            continue;
        snprintf(v, sizeof(v), "%" PRId64, limit[k]);
        sim_header(req, names[3 * k], v);
        snprintf(v, sizeof(v), "%" PRId64, left[k]);
        sim_header(req, names[3 * k + 1], v);
        sim_header(req, names[3 * k + 2], reset);
    }
    if (!over_r && !over_t)
        return 0;
    int64_t secs = (reset_ms + 999) / 1000;
    snprintf(v, sizeof(v), "%" PRId64, reset_ms > 0 ? reset_ms : 1);
    if (!anthropic)
        sim_header(req, "retry-after-ms", v);
    snprintf(v, sizeof(v), "%" PRId64, secs < 1 ? 1 : secs);
    sim_header(req, "retry-after", v);
    sim->limited_by_limit++;
    char msg[256];
    if (over_r)
        snprintf(msg, sizeof(msg),
                 "Rate limit reached on requests per min (RPM): Limit %" PRId64
                 ", Used %" PRId64 ", Requested 1. Please try again in %s.",
                 sim->cfg.rpm, w->reqs, v);
    else
        snprintf(msg, sizeof(msg),
                 "Rate limit reached on tokens per min (TPM): Limit %" PRId64
                 ", Used %" PRId64 ", Requested %" PRId64
                 ". Please try again in %ss.",
                 sim->cfg.tpm, w->toks, tokens, v);
    if (anthropic)
        sim_reply_error(&sim->net, req, route, true, 429, msg, NULL, NULL);
    else {
        struct evbuffer *body = evbuffer_new();
        sim_err_openai(body, msg, over_r ? "requests" : "tokens", NULL,
                       "rate_limit_exceeded");
        sim_reply_json(&sim->net, req, route, 429, body);
        evbuffer_free(body);
    }
    return -1;
}

//  --- generation routes
//  -------------------------------------------------------

typedef enum { A_OK, A_FAIL, A_HANG, A_MALFORMED, A_RESET } s_action_t;

//  What the request's directives decide for this arrival (A_OK: nothing).
//  offline (a batch line): reset and malformed directives do not apply.
static s_action_t s_directives(sim_t *sim, const sim_req_t *r, bool offline,
                               int *fail_code, bool *context_length)
{
    const sim_dir_t *d = &r->dir;
    *context_length = false;
    if (d->context_length) {
        *fail_code = 400;
        *context_length = true;
        return A_FAIL;
    }
    uint64_t k = 0;
    if (d->counted) {
        uint64_t *slot = s_map_slot(&sim->arrivals, r->hash, true);
        k = slot ? ++*slot : 1;
    }
    if (!offline && d->reset && k <= (uint64_t)d->reset)
        return A_RESET;
    if (d->hang && k <= (uint64_t)d->hang)
        return A_HANG;
    if (!offline && d->malformed && k <= (uint64_t)d->malformed)
        return A_MALFORMED;
    if (d->fail_code && (d->fail_times == 0 || k <= (uint64_t)d->fail_times)) {
        *fail_code = d->fail_code;
        return A_FAIL;
    }
    return A_OK;
}

//  Decides what happens to this arrival: directives first, then the fault
//  flags (one uniform draw against cumulative probabilities).
static s_action_t s_decide(sim_t *sim, const sim_req_t *r, int *fail_code,
                           bool *context_length)
{
    s_action_t act = s_directives(sim, r, false, fail_code, context_length);
    if (act != A_OK)
        return act;
    const s_cfg_t *c = &sim->cfg;
    if (c->p500 + c->p503 + c->p429 + c->phang + c->pmalformed + c->preset <= 0)
        return A_OK;
    double x = s_rand01(sim), acc = 0;
    if (x < (acc += c->p500)) {
        *fail_code = 500;
        return A_FAIL;
    }
    if (x < (acc += c->p503)) {
        *fail_code = 503;
        return A_FAIL;
    }
    if (x < (acc += c->p429)) {
        *fail_code = 429;
        return A_FAIL;
    }
    if (x < (acc += c->phang))
        return A_HANG;
    if (x < (acc += c->pmalformed))
        return A_MALFORMED;
    if (x < acc + c->preset)
        return A_RESET;
    return A_OK;
}

static const char *s_fail_message(int code)
{
    switch (code) {
    case 400:
        return "Simulated bad request.";
    case 401:
        return "Incorrect API key provided.";
    case 403:
        return "Simulated permission denied.";
    case 404:
        return "Simulated not found.";
    case 408:
        return "Simulated request timeout.";
    case 409:
        return "Simulated conflict.";
    case 422:
        return "Simulated unprocessable entity.";
    case 429:
        return "Rate limit reached (simulated). Please try again in 1s.";
    case 500:
        return "The server had an error while processing your request. Sorry "
               "about that!";
    case 502:
        return "Bad gateway.";
    case 503:
        return "The engine is currently overloaded, please try again later.";
    case 504:
        return "Gateway timeout.";
    case 529:
        return "Overloaded";
    default:
        return "Simulated error.";
    }
}

//  The message of a failure: with echo_key=N, N 'A's, the request's key,
//  then the usual words (a provider that echoes request headers). Fresh.
static char *s_echo_message(const sim_req_t *r, const char *key, int code)
{
    const char *words = s_fail_message(code);
    size_t off = (size_t)r->dir.echo_key, klen = strlen(key);
    char *msg = malloc(off + klen + strlen(words) + 2);
    if (!msg)
        return NULL;
    memset(msg, 'A', off);
    memcpy(msg + off, key, klen);
    msg[off + klen] = ' ';
    strcpy(msg + off + klen + 1, words);
    return msg;
}

//  The error body of a failure decided by s_decide; key is the request's
//  (for echo_key; may be NULL).
static void s_fail_body(struct evbuffer *out, bool anthropic, int code,
                        bool context_length, const sim_req_t *r,
                        const char *key)
{
    char *echo = r->dir.echo_key >= 0 && key && !context_length
                     ? s_echo_message(r, key, code)
                     : NULL;
    if (echo) {
        if (anthropic)
            sim_err_anthropic(out, sim_anthropic_type(code), echo);
        else
            sim_err_openai(out, echo, sim_openai_type(code), NULL, NULL);
        free(echo);
        return;
    }
    if (context_length) {
        char msg[256];
        snprintf(msg, sizeof(msg),
                 anthropic ? "prompt is too long: %d tokens > 8192 maximum"
                           : "This model's maximum context length is 8192 "
                             "tokens. However, your messages "
                             "resulted in %d tokens. Please reduce the length "
                             "of the messages.",
                 r->prompt_tokens + 8192);
        if (anthropic)
            sim_err_anthropic(out, "invalid_request_error", msg);
        else
            sim_err_openai(out, msg, "invalid_request_error", "messages",
                           "context_length_exceeded");
        return;
    }
    if (anthropic)
        sim_err_anthropic(out, sim_anthropic_type(code), s_fail_message(code));
    else
        sim_err_openai(out, s_fail_message(code), sim_openai_type(code), NULL,
                       code == 429   ? "rate_limit_exceeded"
                       : code == 401 ? "invalid_api_key"
                                     : NULL);
}

static bool s_model_ok(sim_t *sim, const char *model)
{
    if (!sim->cfg.n_models)
        return true;
    for (int i = 0; i < sim->cfg.n_models; i++)
        if (strcmp(model, sim->cfg.models[i]) == 0)
            return true;
    return false;
}

static void s_make_id(sim_t *sim, sim_op_t op, char *id, size_t cap)
{
    const char *prefix = op == SIM_OP_CHAT         ? "chatcmpl-sim"
                         : op == SIM_OP_COMPLETION ? "cmpl-sim"
                         : op == SIM_OP_MESSAGES   ? "msg_sim"
                                                   : "emb-sim";
    snprintf(id, cap, "%s%012" PRIx64, prefix, sim_next_id(&sim->net));
}

//  Parses body for op and checks its model. Returns 0 with *r filled (the
//  caller must sim_req_free it), or 400/404 with the error body, in the
//  API's shape, appended to out.
static int s_prepare(sim_t *sim, sim_op_t op, const cJSON *body, sim_req_t *r,
                     struct evbuffer *out)
{
    bool anth = op == SIM_OP_MESSAGES;
    char err[256];
    const char *param = NULL;
    if (sim_req_parse(r, op, body, err, sizeof(err), &param)) {
        if (anth)
            sim_err_anthropic(out, "invalid_request_error", err);
        else
            sim_err_openai(out, err, "invalid_request_error", param, NULL);
        return 400;
    }
    if (!s_model_ok(sim, r->model)) {
        char msg[SIM_MODEL_MAX + 96];
        snprintf(msg, sizeof(msg),
                 anth ? "model: %s"
                      : "The model `%s` does not exist or you do not have "
                        "access to it.",
                 r->model);
        if (anth)
            sim_err_anthropic(out, "not_found_error", msg);
        else
            sim_err_openai(out, msg, "invalid_request_error", "model",
                           "model_not_found");
        sim_req_free(r);
        return 404;
    }
    return 0;
}

//  Reads and prepares the request body. Returns 0 with *r filled, or -1
//  after answering 400/404.
static int s_gen_request(sim_t *sim, struct evhttp_request *req, int route,
                         sim_op_t op, sim_req_t *r)
{
    bool anth = op == SIM_OP_MESSAGES;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    const char *data = len ? (const char *)evbuffer_pullup(in, -1) : "";
    cJSON *body = cJSON_ParseWithLength(data, len);
    if (!body) {
        sim_reply_error(&sim->net, req, route, anth, 400,
                        "We could not parse the JSON body of your request. "
                        "(HINT: This likely means "
                        "you aren't using your HTTP library correctly.)",
                        NULL, NULL);
        return -1;
    }
    struct evbuffer *out = evbuffer_new();
    int status = s_prepare(sim, op, body, r, out);
    cJSON_Delete(body);
    if (status)
        sim_reply_json(&sim->net, req, route, status, out);
    evbuffer_free(out);
    return status ? -1 : 0;
}

//  One answer being made: what s_handle_gen decided and its timing.
typedef struct {
    int route;
    bool anth;         //  Anthropic shape
    char id[48];       //  response id
    int64_t delay;     //  ms before the (first) answer
    int64_t per_token; //  ms between output tokens
    long created;      //  unix seconds
} s_gen_t;

//  A streamed success: the pending record sends one SSE event per timer.
static void s_gen_stream(sim_t *sim, struct evhttp_request *req,
                         const s_gen_t *g, sim_req_t *r)
{
    s_pending_t *p = s_pending_new(sim, req, P_STREAM, g->route);
    char *text = sim_text(r->hash, r->out_tokens);
    if (!p || !text) {
        free(text);
        if (p)
            s_pending_free(p);
        sim_reply_error(&sim->net, req, g->route, g->anth, 500, "out of memory",
                        NULL, NULL);
        sim_req_free(r);
        return;
    }
    sim->prompt_tokens += (uint64_t)r->prompt_tokens;
    sim->completion_tokens += (uint64_t)r->out_tokens;
    p->r = *r; //  no embeddings here: nothing owned
    p->text = text;
    p->interval_ms = g->per_token;
    p->created = g->created;
    p->bill_key = r->hash;
    snprintf(p->id, sizeof(p->id), "%s", g->id);
    if (g->delay == 0 && g->per_token == 0) {
        if (s_stream_step(p))
            s_pending_free(p);
    } else
        s_pending_arm(p, g->delay);
}

//  Sends out (taken) now or from a timer after delay.
static void s_gen_send(sim_t *sim, struct evhttp_request *req, const s_gen_t *g,
                       int status, int stat_code, struct evbuffer *out,
                       bool bill, uint64_t bill_key)
{
    if (g->delay <= 0) {
        if (bill)
            s_bill(sim, bill_key);
        sim_header(req, "Content-Type", "application/json");
        sim_count(&sim->net, g->route, stat_code);
        evhttp_send_reply(req, status, NULL, out);
        sim_done(&sim->net);
        evbuffer_free(out);
        return;
    }
    s_pending_t *p = s_pending_new(sim, req, P_REPLY, g->route);
    if (!p) {
        evbuffer_free(out);
        sim_reply_error(&sim->net, req, g->route, g->anth, 500, "out of memory",
                        NULL, NULL);
        return;
    }
    p->status = status;
    p->stat_code = stat_code;
    p->body = out;
    p->bill = bill;
    p->bill_key = bill_key;
    s_pending_arm(p, g->delay);
}

//  A whole JSON answer: success, failure or broken JSON.
static void s_gen_whole(sim_t *sim, struct evhttp_request *req, s_gen_t *g,
                        s_action_t act, int fail_code, bool ctx,
                        const sim_req_t *r)
{
    struct evbuffer *out = evbuffer_new();
    int status = 200, stat_code = 200;
    bool bill = false;
    if (act == A_FAIL) {
        status = stat_code = fail_code;
        s_fail_body(out, g->anth, fail_code, ctx, r, sim_key(req, g->anth));
        if (fail_code == 429) {
            sim_header(req, "retry-after", "1");
            if (!g->anth)
                sim_header(req, "retry-after-ms", "1000");
        }
    } else {
        char *text =
            r->op == SIM_OP_EMBEDDING ? NULL : sim_text(r->hash, r->out_tokens);
        sim_body(out, r, g->id, g->created, text ? text : "");
        free(text);
        if (act == A_MALFORMED) {
            //  Cut the body in half: a 200 whose JSON never closes.
            size_t n = evbuffer_get_length(out);
            struct evbuffer *cut = evbuffer_new();
            evbuffer_remove_buffer(out, cut, n / 2);
            evbuffer_free(out);
            out = cut;
            stat_code = S_MALFORMED;
        } else {
            bill = true;
            sim->prompt_tokens += (uint64_t)r->prompt_tokens;
            sim->completion_tokens += (uint64_t)r->out_tokens;
            if (r->op != SIM_OP_EMBEDDING)
                g->delay += g->per_token * r->out_tokens;
        }
    }
    s_gen_send(sim, req, g, status, stat_code, out, bill, r->hash);
}

//  POST of a generation route: auth, body, model, rate limit, then the
//  decided action (hang, reset, stream or a whole answer).
static void s_handle_gen(sim_t *sim, struct evhttp_request *req, int route,
                         sim_op_t op)
{
    s_gen_t g = {.route = route, .anth = op == SIM_OP_MESSAGES};
    uint64_t keyhash = 0;
    sim_req_t r;
    //  The id first, so every answer has its request id, failures of auth
    //  and rate limits too (as OpenAI and Anthropic send theirs).
    char rid[40];
    s_make_id(sim, op, g.id, sizeof(g.id));
    snprintf(rid, sizeof(rid), "req_sim%012" PRIx64, sim->net.next_id);
    sim_header(req, g.anth ? "request-id" : "x-request-id", rid);
    if (sim_auth(&sim->net, req, route, g.anth, &keyhash) ||
        s_gen_request(sim, req, route, op, &r))
        return;
    if (s_ratelimit(sim, req, route, g.anth, keyhash,
                    r.prompt_tokens + r.out_tokens)) {
        sim_req_free(&r);
        return;
    }

    int fail_code = 0;
    bool ctx = false;
    s_action_t act = s_decide(sim, &r, &fail_code, &ctx);
    if (act == A_HANG) {
        s_hang(sim, req, route);
        sim_req_free(&r);
        return;
    }
    g.delay = sim->cfg.latency_ms + r.dir.delay_ms;
    if (sim->cfg.jitter_ms > 0)
        g.delay += (int64_t)(s_rand01(sim) * (double)(sim->cfg.jitter_ms + 1));
    g.per_token = sim->cfg.tokens_per_sec > 0
                      ? (int64_t)llround(1000.0 / sim->cfg.tokens_per_sec)
                      : 0;
    g.created = (long)(sim_wall_ms() / 1000);
    if (act == A_RESET) {
        s_pending_t *p = s_pending_new(sim, req, P_RESET, route);
        if (!p)
            s_reset_now(sim, req, route);
        else
            s_pending_arm(p, g.delay);
    } else if (act == A_OK && r.stream && op != SIM_OP_EMBEDDING) {
        s_gen_stream(sim, req, &g, &r);
        return; //  r now belongs to the stream
    } else
        s_gen_whole(sim, req, &g, act, fail_code, ctx, &r);
    sim_req_free(&r);
}

//  sim_batch_exec_fn: answers one batch line offline (see sim.h).
static int s_exec_line(void *arg, sim_op_t op, const cJSON *body,
                       const char *key, struct evbuffer *out)
{
    sim_t *sim = arg;
    sim_req_t r;
    int status = s_prepare(sim, op, body, &r, out);
    if (status)
        return status;
    //  Directives only: flag faults model transport failures, which a
    //  provider's batch runner retries internally.
    int code = 0;
    bool ctx = false;
    s_action_t act = s_directives(sim, &r, true, &code, &ctx);
    if (act == A_HANG) {
        sim_req_free(&r);
        return 0;
    }
    if (act == A_FAIL) {
        s_fail_body(out, op == SIM_OP_MESSAGES, code, ctx, &r, key);
        sim_req_free(&r);
        return code;
    }
    char id[48];
    s_make_id(sim, op, id, sizeof(id));
    char *text = op == SIM_OP_EMBEDDING ? NULL : sim_text(r.hash, r.out_tokens);
    sim_body(out, &r, id, (long)(sim_wall_ms() / 1000), text ? text : "");
    free(text);
    s_bill(sim, r.hash);
    sim->prompt_tokens += (uint64_t)r.prompt_tokens;
    sim->completion_tokens += (uint64_t)r.out_tokens;
    sim_req_free(&r);
    return 200;
}

//  --- other routes
//  ------------------------------------------------------------

static void s_handle_models(sim_t *sim, struct evhttp_request *req,
                            const char *path)
{
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    bool anth = evhttp_find_header(in, "x-api-key") &&
                evhttp_find_header(in, "anthropic-version");
    if (sim_auth(&sim->net, req, SIM_R_MODELS, anth, NULL))
        return;
    const char **names =
        sim->cfg.n_models ? (const char **)sim->cfg.models : s_default_models;
    int n = sim->cfg.n_models
                ? sim->cfg.n_models
                : (int)(sizeof(s_default_models) / sizeof(s_default_models[0]));
    const char *one = strncmp(path, "/v1/models/", 11) == 0 ? path + 11 : NULL;
    struct evbuffer *out = evbuffer_new();
    long created = (long)(sim->started_ms / 1000);
    char date[48];
    sim_rfc3339(date, sizeof(date), sim->started_ms);
    if (one) {
        if (!s_model_ok(sim, one)) {
            evbuffer_free(out);
            sim_reply_error(&sim->net, req, SIM_R_MODELS, anth, 404,
                            "model not found", "model", "model_not_found");
            return;
        }
        if (anth) {
            evbuffer_add_printf(out, "{\"type\":\"model\",\"id\":");
            sim_json_str(out, one);
            evbuffer_add_printf(out, ",\"display_name\":");
            sim_json_str(out, one);
            evbuffer_add_printf(out, ",\"created_at\":\"%s\"}", date);
        } else {
            evbuffer_add_printf(out, "{\"id\":");
            sim_json_str(out, one);
            evbuffer_add_printf(out,
                                ",\"object\":\"model\",\"created\":%ld,\"owned_"
                                "by\":\"llmq-sim\"}",
                                created);
        }
        sim_reply_json(&sim->net, req, SIM_R_MODELS, 200, out);
        evbuffer_free(out);
        return;
    }
    evbuffer_add_printf(out, anth ? "{\"data\":["
                                  : "{\"object\":\"list\",\"data\":[");
    for (int i = 0; i < n; i++) {
        if (anth) {
            evbuffer_add_printf(out,
                                "%s{\"type\":\"model\",\"id\":", i ? "," : "");
            sim_json_str(out, names[i]);
            evbuffer_add_printf(out, ",\"display_name\":");
            sim_json_str(out, names[i]);
            evbuffer_add_printf(out, ",\"created_at\":\"%s\"}", date);
        } else {
            evbuffer_add_printf(out, "%s{\"id\":", i ? "," : "");
            sim_json_str(out, names[i]);
            evbuffer_add_printf(out,
                                ",\"object\":\"model\",\"created\":%ld,\"owned_"
                                "by\":\"llmq-sim\"",
                                created);
            if (sim->cfg.max_model_len > 0) //  as vLLM reports its window
                evbuffer_add_printf(out, ",\"max_model_len\":%lld",
                                    (long long)sim->cfg.max_model_len);
            evbuffer_add_printf(out, "}");
        }
    }
    if (anth) {
        evbuffer_add_printf(out, "],\"has_more\":false,\"first_id\":");
        sim_json_str(out, names[0]);
        evbuffer_add_printf(out, ",\"last_id\":");
        sim_json_str(out, names[n - 1]);
        evbuffer_add_printf(out, "}");
    } else
        evbuffer_add_printf(out, "]}");
    sim_reply_json(&sim->net, req, SIM_R_MODELS, 200, out);
    evbuffer_free(out);
}

static void s_handle_stats(sim_t *sim, struct evhttp_request *req)
{
    struct evbuffer *out = evbuffer_new();
    evbuffer_add_printf(out, "{\"requests\":{");
    bool first_route = true;
    for (int r = 0; r < SIM_R_COUNT; r++) {
        if (!sim->net.stats[r][0].code)
            continue;
        evbuffer_add_printf(out, "%s\"%s\":{", first_route ? "" : ",",
                            s_route_names[r]);
        first_route = false;
        for (int i = 0; i < SIM_STATS_CODES && sim->net.stats[r][i].code; i++) {
            int code = sim->net.stats[r][i].code;
            const char *name = code == S_HANG        ? "hang"
                               : code == S_RESET     ? "reset"
                               : code == S_MALFORMED ? "malformed"
                                                     : NULL;
            if (name)
                evbuffer_add_printf(out, "%s\"%s\":%" PRIu64, i ? "," : "",
                                    name, sim->net.stats[r][i].count);
            else
                evbuffer_add_printf(out, "%s\"%d\":%" PRIu64, i ? "," : "",
                                    code, sim->net.stats[r][i].count);
        }
        evbuffer_add_printf(out, "}");
    }
    evbuffer_add_printf(
        out,
        "},\"total\":%" PRIu64 ",\"rate_limited_429\":%" PRIu64
        ",\"rate_limited_by_limit\":%" PRIu64 ",\"peak_concurrent\":%" PRId64
        ",\"in_flight\":%" PRId64 ",\"connections\":%" PRId64
        ",\"peak_connections\":%" PRId64 ",\"answered_ok\":%" PRIu64
        ",\"double_billed\":%" PRIu64 ",\"billing_saturated\":%s"
        ",\"tokens\":{\"prompt\":%" PRIu64 ",\"completion\":%" PRIu64 "}"
        ",\"uptime_ms\":%" PRId64,
        sim->net.total, sim->net.rate_limited, sim->limited_by_limit,
        sim->peak_concurrent,
        sim->net.in_flight - 1, //  not counting this /_stats request
        sim->connections, sim->peak_connections, sim->answered_ok,
        sim->double_billed, sim->billed.n >= S_MAX_BILLED ? "true" : "false",
        sim->prompt_tokens, sim->completion_tokens,
        sim_mono_ms() - sim->started_ms);
    sim_batches_stats(sim->batches, out);
    evbuffer_add_printf(out, "}");
    sim_reply_json(&sim->net, req, SIM_R_STATS, 200, out);
    evbuffer_free(out);
}

//  Clears statistics, directive counters, billing memory and rate-limit
//  windows, and drops hung requests (their connections are closed).
static void s_handle_reset(sim_t *sim, struct evhttp_request *req)
{
    for (size_t b = 0; b < S_CONN_BUCKETS; b++) {
        s_conn_t *c = sim->conns[b];
        while (c) {
            s_conn_t *next = c->next;
            if (c->hung)
                evhttp_connection_free(c->evcon); //  -> s_conn_closed frees c
            c = next;
        }
    }
    memset(sim->net.stats, 0, sizeof(sim->net.stats));
    sim->net.total = sim->net.rate_limited = sim->limited_by_limit = 0;
    sim->double_billed = sim->answered_ok = 0;
    sim->prompt_tokens = sim->completion_tokens = 0;
    sim->peak_concurrent = sim->net.in_flight;
    sim->peak_connections = sim->connections;
    s_map_clear(&sim->arrivals);
    s_map_clear(&sim->billed);
    s_map_clear(&sim->window_ix);
    sim->n_windows = 1;
    sim->windows[0].start = -1;
    sim_reply_text(&sim->net, req, SIM_R_RESET, 200, "{\"ok\":true}");
}

//  What serves a route.
typedef enum {
    H_GEN,      //  s_handle_gen with op
    H_MODELS,   //  s_handle_models
    H_FILES,    //  sim_batches_files
    H_BATCHES,  //  sim_batches_openai
    H_MBATCHES, //  sim_batches_anthropic
    H_STATS,    //  s_handle_stats
    H_RESET,    //  s_handle_reset
    H_HEALTH    //  {"status":"ok"}
} s_handler_t;

//  The routing table: an exact path, or with subtree also path/...; a
//  method other than cmd (0: any) is answered 405 under route.
static const struct {
    const char *path;
    bool subtree;
    enum evhttp_cmd_type cmd;
    int route;
    s_handler_t handler;
    sim_op_t op;
} s_routes[] = {
    {"/v1/chat/completions", false, EVHTTP_REQ_POST, SIM_R_CHAT, H_GEN,
     SIM_OP_CHAT},
    {"/v1/messages", false, EVHTTP_REQ_POST, SIM_R_MESSAGES, H_GEN,
     SIM_OP_MESSAGES},
    {"/v1/completions", false, EVHTTP_REQ_POST, SIM_R_COMPLETIONS, H_GEN,
     SIM_OP_COMPLETION},
    {"/v1/embeddings", false, EVHTTP_REQ_POST, SIM_R_EMBEDDINGS, H_GEN,
     SIM_OP_EMBEDDING},
    {"/v1/models", true, EVHTTP_REQ_GET, SIM_R_MODELS, H_MODELS, 0},
    {"/v1/files", true, 0, SIM_R_FILES, H_FILES, 0},
    {"/v1/batches", true, 0, SIM_R_BATCHES, H_BATCHES, 0},
    {"/v1/messages/batches", true, 0, SIM_R_MBATCHES, H_MBATCHES, 0},
    {"/_stats", false, EVHTTP_REQ_GET, SIM_R_STATS, H_STATS, 0},
    {"/_reset", false, EVHTTP_REQ_POST, SIM_R_RESET, H_RESET, 0},
    {"/health", false, 0, SIM_R_HEALTH, H_HEALTH, 0}};
#define S_N_ROUTES (sizeof(s_routes) / sizeof(s_routes[0]))

//  The entry of s_routes that path falls under, or -1.
static int s_route_of(const char *path)
{
    for (size_t i = 0; i < S_N_ROUTES; i++) {
        size_t n = strlen(s_routes[i].path);
        if (strncmp(path, s_routes[i].path, n) == 0 &&
            (path[n] == 0 || (s_routes[i].subtree && path[n] == '/')))
            return (int)i;
    }
    return -1;
}

//  One entry point for every request: route by method and path.
static void s_on_request(struct evhttp_request *req, void *arg)
{
    sim_t *sim = arg;
    if (++sim->net.in_flight > sim->peak_concurrent)
        sim->peak_concurrent = sim->net.in_flight;
    s_conn_of(sim, req);
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *path = uri ? evhttp_uri_get_path(uri) : NULL;
    if (!path)
        path = "";
    int i = s_route_of(path);
    if (i < 0) {
        char msg[300];
        snprintf(msg, sizeof(msg), "Unknown request URL: %.200s.", path);
        sim_reply_error(&sim->net, req, SIM_R_OTHER, false, 404, msg, NULL,
                        "unknown_url");
        return;
    }
    if (s_routes[i].cmd && cmd != s_routes[i].cmd) {
        sim_reply_error(&sim->net, req, s_routes[i].route, false, 405,
                        "Method not allowed.", NULL, NULL);
        return;
    }
    switch (s_routes[i].handler) {
    case H_GEN:
        s_handle_gen(sim, req, s_routes[i].route, s_routes[i].op);
        break;
    case H_MODELS:
        s_handle_models(sim, req, path);
        break;
    case H_FILES:
        sim_batches_files(sim->batches, req, path);
        break;
    case H_BATCHES:
        sim_batches_openai(sim->batches, req, path);
        break;
    case H_MBATCHES:
        sim_batches_anthropic(sim->batches, req, path);
        break;
    case H_STATS:
        s_handle_stats(sim, req);
        break;
    case H_RESET:
        s_handle_reset(sim, req);
        break;
    case H_HEALTH:
        sim_reply_text(&sim->net, req, SIM_R_HEALTH, 200,
                       "{\"status\":\"ok\"}");
        break;
    }
}

//  --- flags and main -------------------------------------------------------

//  The --help text.
static const char s_help[] =
    "usage: llmq-sim [flags]\n"
    "OpenAI- and Anthropic-compatible HTTP simulator (one event loop, "
    "replies from timers).\n"
    "\n"
    "server\n"
    "  --host ADDR             listen address (default 127.0.0.1)\n"
    "  --port N                listen port (default 8089; 0 = ephemeral). "
    "Prints\n"
    "                          'ready llmq-sim url=http://HOST:PORT' once "
    "listening\n"
    "  --max-body BYTES        largest request body (default 268435456)\n"
    "  --max-model-len N       GET /v1/models lists max_model_len N for each\n"
    "                          model, as vLLM does (default 0: not listed)\n"
    "  --quiet                 no log lines on stderr\n"
    "  --exit-with-parent      stop when the process that started it dies\n"
    "                          (tests: no orphan left if the test aborts)\n"
    "  --help, -h              this text\n"
    "  --version               print the version\n"
    "timing (durations: a bare number is ms; or 500ms, 2s, 1m)\n"
    "  --latency-ms N          fixed latency before each answer (default "
    "0)\n"
    "  --jitter-ms N           + uniform random 0..N ms (default 0)\n"
    "  --tokens-per-sec R      output token rate; adds tokens/R to whole "
    "answers and\n"
    "                          paces SSE events (default 0 = instant)\n"
    "  --random-text           filler words drawn afresh per answer (not "
    "a function\n"
    "                          of the request; the sim-<hash> prefix "
    "stays)\n"
    "auth and limits\n"
    "  --api-key KEY           accepted key (repeatable); default: any "
    "non-empty key\n"
    "  --models A,B,...        accepted models (others: 404 "
    "model_not_found); default: any\n"
    "  --rpm N                 requests per minute per API key (0 = "
    "unlimited)\n"
    "  --tpm N                 tokens per minute per API key (0 = "
    "unlimited); a request\n"
    "                          costs prompt_tokens + completion_tokens\n"
    "faults (probabilities 0..1, one draw per generation request)\n"
    "  --p500 P --p503 P --p429 P   answer with that status (429 with "
    "retry-after: 1)\n"
    "  --phang P               never answer (see --hang-ms)\n"
    "  --pmalformed P          200 with truncated JSON\n"
    "  --preset P              close the connection with a TCP reset\n"
    "  --hang-ms N             close a hung connection after N ms (default "
    "0 = never)\n"
    "  --seed N                random seed for faults and jitter (default "
    "1)\n"
    "batches\n"
    "  --batch-validate-ms N   time in 'validating' (default 1000)\n"
    "  --batch-progress-ms N   time to process all lines (default 5000)\n"
    "  --batch-finalize-ms N   time in 'finalizing'/'cancelling' (default "
    "1000)\n"
    "  --batch-expire-ms N     completion window (default 86400000)\n"
    "  --max-file-store BYTES  memory for files and batch results (default "
    "1073741824)\n"
    "\n"
    "directives, anywhere in a message's text: [[sim:key=value,...]]\n"
    "  fail=CODE        fail every arrival with CODE (400, 401, 403, 404, "
    "429, 500, 503, 529...)\n"
    "  fail=CODExN      fail the first N arrivals of this same request, "
    "then succeed\n"
    "  hang=N           never answer the first N arrivals\n"
    "  malformed=N      broken JSON for the first N arrivals\n"
    "  reset=N          reset the connection for the first N arrivals\n"
    "  delay_ms=N       add N ms to every arrival\n"
    "  tokens=N         emit N output tokens (still capped by max_tokens)\n"
    "  context_length   400 context_length_exceeded, every arrival\n"
    "  echo_key=N       a failure's message echoes the request's API key "
    "after N 'A's\n"
    "\n"
    "routes: POST /v1/chat/completions /v1/completions /v1/embeddings "
    "/v1/messages;\n"
    "GET /v1/models; files: POST/GET /v1/files, GET/DELETE /v1/files/{id}, "
    "GET /v1/files/{id}/content;\n"
    "POST/GET /v1/batches, GET /v1/batches/{id}, POST "
    "/v1/batches/{id}/cancel;\n"
    "POST/GET /v1/messages/batches, GET "
    "/v1/messages/batches/{id}[/results], POST .../{id}/cancel;\n"
    "GET /_stats, POST /_reset, GET /health. Details: sim/README.md\n";

static void s_usage(FILE *f)
{
    fputs(s_help, f);
}

static int s_num(const char *flag, const char *s, double lo, double hi,
                 double *out)
{
    char *end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || !end || end == s || *end || v < lo || v > hi || v != v) {
        fprintf(stderr,
                "llmq-sim: bad value for --%s: '%s' (expected %g..%g)\n", flag,
                s, lo, hi);
        return -1;
    }
    *out = v;
    return 0;
}

/*  A duration flag (llmq_duration_parse: "250" is ms, "2s", "500ms"). */
static int s_ms(const char *flag, const char *s, int64_t lo, int64_t *out)
{
    int64_t ms = 0;
    if (llmq_duration_parse(s, &ms, NULL) || ms < lo) {
        fprintf(stderr,
                "llmq-sim: bad value for --%s: '%s' (expected a duration: ms, "
                "or with a unit: 500ms, 2s, 1m)\n",
                flag, s);
        return -1;
    }
    *out = ms;
    return 0;
}

//  How a flag's value is read (into the s_cfg_t field at off).
typedef enum {
    K_STR,    //  const char *, the argument itself
    K_INT,    //  int, a number in lo..hi
    K_I64,    //  int64_t, a number in lo..hi
    K_U64,    //  uint64_t, a number in lo..hi
    K_DBL,    //  double, a number in lo..hi
    K_MS,     //  int64_t, a duration >= lo
    K_TRUE,   //  bool set to true (no argument)
    K_KEY,    //  --api-key: appended to api_keys
    K_MODELS, //  --models: comma list appended to models
    K_RANDOM, //  --random-text (a sim_gen.c global)
    K_HELP,
    K_VERSION
} s_kind_t;

typedef struct {
    const char *name; //  long flag
    s_kind_t kind;
    double lo, hi; //  bounds of a number (lo only for a duration)
    size_t off;    //  field in s_cfg_t
} s_flag_t;

//  Where a flag's value goes: a field of s_cfg_t.
#define C_(field) offsetof(s_cfg_t, field)

static const s_flag_t s_flags[] = {
    {"host", K_STR, 0, 0, C_(host)},
    {"port", K_INT, 0, 65535, C_(port)},
    {"latency-ms", K_MS, 0, 0, C_(latency_ms)},
    {"jitter-ms", K_MS, 0, 0, C_(jitter_ms)},
    {"tokens-per-sec", K_DBL, 0, 1e9, C_(tokens_per_sec)},
    {"rpm", K_I64, 0, 1e15, C_(rpm)},
    {"tpm", K_I64, 0, 1e15, C_(tpm)},
    {"api-key", K_KEY, 0, 0, C_(api_keys)},
    {"models", K_MODELS, 0, 0, C_(models)},
    {"p500", K_DBL, 0, 1, C_(p500)},
    {"p503", K_DBL, 0, 1, C_(p503)},
    {"p429", K_DBL, 0, 1, C_(p429)},
    {"phang", K_DBL, 0, 1, C_(phang)},
    {"pmalformed", K_DBL, 0, 1, C_(pmalformed)},
    {"preset", K_DBL, 0, 1, C_(preset)},
    {"hang-ms", K_MS, 0, 0, C_(hang_ms)},
    {"seed", K_U64, 0, 1.8e19, C_(seed)},
    {"random-text", K_RANDOM, 0, 0, 0},
    {"batch-validate-ms", K_MS, 0, 0, C_(batch.validate_ms)},
    {"batch-progress-ms", K_MS, 0, 0, C_(batch.progress_ms)},
    {"batch-finalize-ms", K_MS, 0, 0, C_(batch.finalize_ms)},
    {"batch-expire-ms", K_MS, 1, 0, C_(batch.expire_ms)},
    {"max-body", K_I64, 1024, 1e12, C_(max_body)},
    {"max-model-len", K_I64, 0, 1e12, C_(max_model_len)},
    {"max-file-store", K_I64, 0, 1e13, C_(batch.max_store)},
    {"quiet", K_TRUE, 0, 0, C_(quiet)},
    {"exit-with-parent", K_TRUE, 0, 0, C_(exit_with_parent)},
    {"help", K_HELP, 0, 0, 0},
    {"version", K_VERSION, 0, 0, 0},
};
#define S_N_FLAGS (sizeof(s_flags) / sizeof(s_flags[0]))
#undef C_

//  Appends item to the array *list of *n pointers. Returns 0 or -1.
static int s_append(char ***list, int *n, char *item)
{
    char **k = realloc(*list, sizeof(char *) * (size_t)(*n + 1));
    if (!k)
        return -1;
    *list = k;
    (*list)[(*n)++] = item;
    return 0;
}

//  Reads one flag's argument into c. Returns 0 or -1 (message printed);
//  --help and --version exit.
static int s_apply_flag(s_cfg_t *c, const s_flag_t *f, char *arg)
{
    void *field = (char *)c + f->off;
    double v = 0;
    if (f->kind >= K_INT && f->kind <= K_DBL &&
        s_num(f->name, arg, f->lo, f->hi, &v))
        return -1;
    switch (f->kind) {
    case K_STR:
        *(const char **)field = arg;
        return 0;
    case K_INT:
        *(int *)field = (int)v;
        return 0;
    case K_I64:
        *(int64_t *)field = (int64_t)v;
        return 0;
    case K_U64:
        *(uint64_t *)field = (uint64_t)v;
        return 0;
    case K_DBL:
        *(double *)field = v;
        return 0;
    case K_MS:
        return s_ms(f->name, arg, (int64_t)f->lo, (int64_t *)field);
    case K_TRUE:
        *(bool *)field = true;
        return 0;
    case K_KEY:
        if (!*arg) {
            fprintf(stderr, "llmq-sim: --api-key must not be empty\n");
            return -1;
        }
        return s_append(&c->api_keys, &c->n_api_keys, arg);
    case K_MODELS: {
        char *list = strdup(arg), *save = NULL;
        for (char *m = strtok_r(list, ",", &save); m;
             m = strtok_r(NULL, ",", &save))
            if (s_append(&c->models, &c->n_models, strdup(m)))
                return -1;
        free(list);
        return 0;
    }
    case K_RANDOM:
        sim_random_text = true;
        return 0;
    case K_HELP:
        s_usage(stdout);
        exit(0);
    case K_VERSION:
        printf("llmq-sim %s\n", LLMQ_VERSION_STRING);
        exit(0);
    }
    return -1;
}

//  Parses the command line into c (see s_usage). Returns 0 or -1 with the
//  reason on stderr.
static int s_parse_flags(s_cfg_t *c, int argc, char **argv)
{
    struct option opts[S_N_FLAGS + 1];
    for (size_t i = 0; i < S_N_FLAGS; i++) {
        s_kind_t k = s_flags[i].kind;
        bool bare =
            k == K_TRUE || k == K_RANDOM || k == K_HELP || k == K_VERSION;
        opts[i] = (struct option){s_flags[i].name,
                                  bare ? no_argument : required_argument, 0,
                                  256 + (int)i};
    }
    opts[S_N_FLAGS] = (struct option){0, 0, 0, 0};
    int ch;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        if (ch == 'h') {
            s_usage(stdout);
            exit(0);
        }
        if (ch < 256 || ch >= 256 + (int)S_N_FLAGS) {
            fprintf(stderr,
                    "llmq-sim: unknown or incomplete flag '%s' (see --help)\n",
                    argv[optind - 1]);
            return -1;
        }
        if (s_apply_flag(c, &s_flags[ch - 256], optarg))
            return -1;
    }
    if (optind < argc) {
        fprintf(stderr, "llmq-sim: unexpected argument '%s' (see --help)\n",
                argv[optind]);
        return -1;
    }
    if (c->p500 + c->p503 + c->p429 + c->phang + c->pmalformed + c->preset >
        1.0 + 1e-9) {
        fprintf(stderr,
                "llmq-sim: fault probabilities add up to more than 1\n");
        return -1;
    }
    return 0;
}

static void s_on_signal(evutil_socket_t sig, short what, void *arg)
{
    (void)sig;
    (void)what;
    event_base_loopbreak(((sim_t *)arg)->net.base);
}

//  Raise the fd limit so 10,000+ connections fit.
static void s_raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

//  Our own listening socket: evhttp's bind uses a backlog of 128, too small
//  for a thousand connections arriving at once.
static int s_listen(const char *host, int port, int *bound_port)
{
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        //  A name such as "localhost": take its first IPv4 address.
        struct addrinfo hints, *ai = NULL;
        memset(&hints, 0, sizeof(hints));
        hints.ai_family = AF_INET;
        hints.ai_socktype = SOCK_STREAM;
        if (getaddrinfo(host, NULL, &hints, &ai) != 0 || !ai) {
            fprintf(
                stderr,
                "llmq-sim: --host: cannot resolve '%s' to an IPv4 address\n",
                host);
            return -2;
        }
        sa.sin_addr = ((struct sockaddr_in *)ai->ai_addr)->sin_addr;
        freeaddrinfo(ai);
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(fd, 4096)) {
        fprintf(stderr, "llmq-sim: cannot listen on %s:%d: %s\n", host, port,
                strerror(errno));
        close(fd);
        return -1;
    }
    socklen_t len = sizeof(sa);
    getsockname(fd, (struct sockaddr *)&sa, &len);
    *bound_port = ntohs(sa.sin_port);
    return fd;
}

//  The defaults of every flag not zero.
static void s_cfg_defaults(s_cfg_t *c)
{
    c->host = "127.0.0.1";
    c->port = 8089;
    c->seed = 1;
    c->max_body = 268435456;
    c->batch.validate_ms = 1000;
    c->batch.progress_ms = 5000;
    c->batch.finalize_ms = 1000;
    c->batch.expire_ms = 86400000;
    c->batch.max_store = 1073741824LL;
}

//  Process-wide settings: signals, fd limit, allocator.
static void s_process_setup(void)
{
    signal(SIGPIPE, SIG_IGN);
    s_raise_nofile();
#ifdef __GLIBC__
    //  evhttp allocates many ~1-4 KB buffers per request; with glibc's fast
    //  bins on, they keep triggering malloc_consolidate. Off (together with
    //  the epoll changelist below) a request costs 15-20% less CPU here.
    mallopt(M_MXFAST, 0);
#endif
}

//  The event loop, with the changelist: it folds evhttp's many read/write
//  enable toggles per request into at most one epoll_ctl per fd per loop
//  iteration. NULL if out of memory.
static struct event_base *s_base_new(void)
{
    struct event_config *ecfg = event_config_new();
    if (ecfg)
        event_config_set_flag(ecfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
    struct event_base *base = ecfg ? event_base_new_with_config(ecfg) : NULL;
    if (ecfg)
        event_config_free(ecfg);
    return base ? base : event_base_new();
}

//  Binds, sets up the server and prints the ready line. Returns 0, or the
//  exit code (1, or 2 for a bad address).
static int s_start(sim_t *sim)
{
    s_cfg_t *c = &sim->cfg;
    sim->rng =
        c->seed ? c->seed * 0x9E3779B97F4A7C15ULL : 0x853c49e6748fea9bULL;
    sim->started_ms = sim_mono_ms();
    sim->conns = calloc(S_CONN_BUCKETS, sizeof(s_conn_t *));
    sim->cap_windows = 64;
    sim->windows = calloc(sim->cap_windows, sizeof(s_window_t));
    sim->net.base = s_base_new();
    sim->http = sim->net.base ? evhttp_new(sim->net.base) : NULL;
    if (!sim->conns || !sim->windows || !sim->http) {
        fprintf(stderr, "llmq-sim: out of memory\n");
        return 1;
    }
    sim->n_windows = 1; //  [0] is the shared overflow window
    sim->windows[0].start = -1;
    int port = 0;
    int fd = s_listen(c->host, c->port, &port);
    if (fd < 0)
        return fd == -2 ? 2 : 1;
    if (!evhttp_accept_socket_with_handle(sim->http, fd)) {
        fprintf(stderr, "llmq-sim: cannot accept on socket\n");
        return 1;
    }
    evhttp_set_gencb(sim->http, s_on_request, sim);
    evhttp_set_max_body_size(sim->http, c->max_body);
    evhttp_set_max_headers_size(sim->http, 65536);
    evhttp_set_allowed_methods(sim->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST |
                                              EVHTTP_REQ_DELETE |
                                              EVHTTP_REQ_HEAD | EVHTTP_REQ_PUT);
    //  Idle keep-alive connections are closed after 10 minutes.
    evhttp_set_timeout(sim->http, 600);
    snprintf(sim->net.url, sizeof(sim->net.url), "http://%s:%d", c->host, port);
    if (c->latency_ms > 0) {
        struct timeval tv = {c->latency_ms / 1000,
                             (c->latency_ms % 1000) * 1000};
        sim->latency_tv = event_base_init_common_timeout(sim->net.base, &tv);
    }
    sim->net.api_keys = c->api_keys;
    sim->net.n_api_keys = c->n_api_keys;
    sim->batches = sim_batches_new(&sim->net, &c->batch, s_exec_line, sim);
    sim->sigint = evsignal_new(sim->net.base, SIGINT, s_on_signal, sim);
    sim->sigterm = evsignal_new(sim->net.base, SIGTERM, s_on_signal, sim);
    event_add(sim->sigint, NULL);
    event_add(sim->sigterm, NULL);
    printf("ready llmq-sim url=%s\n", sim->net.url);
    fflush(stdout);
    return 0;
}

//  Frees the server: pending replies first (they point at requests), then
//  the server (which closes connections and frees their requests).
static void s_stop(sim_t *sim)
{
    s_pending_t *p = sim->pending;
    while (p) {
        s_pending_t *next = p->next;
        if (evhttp_request_get_connection(p->req) == NULL)
            evhttp_request_free(p->req);
        s_pending_free(p);
        p = next;
    }
    evhttp_free(sim->http);
    sim_batches_destroy(&sim->batches);
    event_free(sim->sigint);
    event_free(sim->sigterm);
    event_base_free(sim->net.base);
    s_map_clear(&sim->arrivals);
    s_map_clear(&sim->billed);
    s_map_clear(&sim->window_ix);
    free(sim->windows);
    free(sim->conns);
}

int main(int argc, char **argv)
{
    static sim_t s_sim; //  big (stats table): keep it off the stack
    sim_t *sim = &s_sim;
    s_cfg_t *c = &sim->cfg;
    s_cfg_defaults(c);
    if (s_parse_flags(c, argc, argv))
        return 2;
    if (c->exit_with_parent) {
        //  The parent may already be gone (then we were reparented).
        pid_t parent = getppid();
        prctl(PR_SET_PDEATHSIG, SIGTERM);
        if (getppid() != parent || parent == 1)
            return 0;
    }
    s_process_setup();
    int rc = s_start(sim);
    if (rc)
        return rc;
    llmq_log_setup(NULL, "llmq-sim", false,
                   c->quiet ? LLMQ_LOG_OFF : LLMQ_LOG_INFO);
    llmq_log(
        NULL, LLMQ_LOG_INFO, "listening", LLMQ_LOG_STR("url", sim->net.url),
        LLMQ_LOG_INT("latency_ms", c->latency_ms),
        LLMQ_LOG_INT("jitter_ms", c->jitter_ms),
        LLMQ_LOG_DBL("tokens_per_s", c->tokens_per_sec),
        LLMQ_LOG_INT("rpm", c->rpm), LLMQ_LOG_INT("tpm", c->tpm), LLMQ_LOG_END);

    event_base_dispatch(sim->net.base);

    llmq_log(NULL, LLMQ_LOG_INFO, "stopping",
             LLMQ_LOG_INT("served", sim->net.total), LLMQ_LOG_END);
    s_stop(sim);
    for (int i = 0; i < c->n_models; i++)
        free(c->models[i]);
    free(c->models);
    free(c->api_keys);
    return 0;
}
