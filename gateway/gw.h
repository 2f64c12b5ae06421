/*  gw.h - llmq-gateway internals: the OpenAI- and Anthropic-compatible HTTP
    front door onto an llmq broker.

    One libevent loop serves every HTTP connection and also watches the
    broker client's ZeroMQ socket (llmq_client_fd), so the gateway never
    blocks on inference. Each HTTP request becomes one gw_req_t; a request
    that reached the broker lives until the broker's result arrives, even if
    its HTTP client left (then the gateway cancels it at the broker and only
    frees it when the `cancelled` result comes back).

    Files:
      gw_main.c       flags, start-up, signals, the ready line
      gw_http.c       evhttp setup, routing, connections, limits, request ids,
                      replies and errors in each API's shape
      gw_keys.c       the API key file (key -> tenant), reloaded on change
      gw_broker.c     the broker client inside the loop: submit, results,
                      streams, cancel on disconnect, the time limit
      gw_openai.c     /v1/chat/completions, /v1/completions, /v1/embeddings,
                      /v1/models
      gw_anthropic.c  /v1/messages: Anthropic <-> OpenAI translation and the
                      Anthropic stream events
      gw_files.c      /v1/files: file bodies and metadata under --data-dir
      gw_jobs.c       the actor that runs the Files and Batches routes
      gw_batches.c    /v1/batches on durable broker batches
      gw_msg_batches.c  /v1/messages/batches (Anthropic Message Batches)

    Ownership: gw_req_t belongs to the gateway until gw_req_free(); borrowed
    `const char *` everywhere else.
*/
#ifndef GW_H_INCLUDED
#define GW_H_INCLUDED

#include "llmq.h"
#include "llmq_log.h"

#include <czmq.h>
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#define GW_NAME "llmq-gateway"

typedef enum { GW_API_OPENAI = 0, GW_API_ANTHROPIC } gw_api_t;

typedef struct gw_keys_t gw_keys_t;

/*  Settings from the command line. */
typedef struct {
    const char *host;        /* listen address */
    int port;                /* listen port, 0: ephemeral */
    const char *broker;      /* broker frontend endpoint */
    const char *curve_cert;  /* CURVE: own secret certificate, or NULL */
    const char *broker_key;  /* CURVE: broker's public key or cert file */
    const char *keys_path;   /* API key file, NULL: no auth */
    const char *data_dir;    /* files and batch mapping */
    int64_t max_body;        /* request body bytes */
    int64_t max_headers;     /* request header bytes */
    int64_t max_conns;       /* open HTTP connections */
    int64_t timeout_ms;      /* whole-request time limit */
    int64_t drain_ms;        /* on SIGTERM: await requests this long */
    int64_t idle_timeout_ms; /* idle keep-alive / slow client read */
    bool verbose;            /* log every request */
    bool json_logs;          /* log lines as JSON objects */
} gw_cfg_t;

/*  The gateway. */
typedef struct {
    gw_cfg_t cfg;                         /* settings */
    struct event_base *base;              /* the one loop */
    struct evhttp *http;                  /* HTTP server */
    struct evhttp_bound_socket *listener; /* our listening socket */
    struct event *drain;                  /* after SIGTERM: polls for the end */
    int64_t drain_until;           /* zclock_mono deadline of the drain */
    int signals;                   /* SIGINT/SIGTERM seen */
    llmq_client_t *client;         /* async inference client (callback mode) */
    llmq_client_t *ctl;            /* synchronous client of the jobs actor */
    llmq_client_t *stat;           /* synchronous client: status (loop) */
    zactor_t *jobs;                /* runs Files and Batches routes */
    struct event *jobs_ev;         /* readable on the actor pipe's ZMQ_FD */
    struct event *jobs_kick;       /* drain the pipe after a send */
    struct event *zmq_ev;          /* readable on the client's ZMQ_FD */
    int zmq_fd;                    /* fd zmq_ev watches */
    struct event *kick;            /* deferred llmq_client_process */
    struct event *tick;            /* 250 ms: heartbeats, key reload */
    gw_keys_t *keys;               /* API keys, or NULL: auth off */
    zhashx_t *conns;               /* evcon pointer text -> gw_conn_t */
    zlistx_t *reqs;                /* every live gw_req_t (freed at stop) */
    cJSON *status;                 /* last broker status, or NULL */
    int64_t status_at;             /* when it was fetched (zclock_mono) */
    atomic_uint_fast64_t next_rid; /* id counter (loop and jobs actor) */
    uint32_t nonce;                /* random per process, in every id */
    uint64_t served, errors;       /* counters */
    int64_t broker_down_until;     /* ctl calls failed: skip until then */
} gw_t;

/*  One HTTP connection (for the connection limit and disconnect cancel). */
typedef struct gw_req_t gw_req_t;
typedef struct gw_job_t gw_job_t;
typedef struct {
    gw_t *gw;                        /* owner */
    struct evhttp_connection *evcon; /* the connection */
    gw_req_t *cur;                   /* request waiting on the broker */
    gw_job_t *job;                   /* or a job in the jobs actor */
    char key[32];                    /* our key in gw->conns */
} gw_conn_t;

/*  One HTTP request that went to the broker. */
struct gw_req_t {
    gw_t *gw;                   /* owner */
    struct evhttp_request *req; /* NULL once answered or its client left */
    gw_conn_t *conn;            /* its connection record, or NULL */
    gw_api_t api;               /* error and answer shape */
    llmq_op_t op;               /* chat, completion, embedding */
    char rid[72];               /* x-request-id */
    char *model;                /* model asked for */
    char *tenant;               /* from the API key */
    bool stream;                /* SSE answer */
    bool include_usage;         /* OpenAI stream_options.include_usage */
    bool usage_sent;            /* a usage chunk went out */
    bool started;               /* SSE headers sent */
    bool b64;                   /* embeddings: encode as base64 */
    bool block_open;            /* anthropic: content block started */
    int64_t chunks;             /* chunks relayed */
    int64_t t0;                 /* zclock_usecs at arrival */
    struct event *timer;        /* time limit */
    void *handle;               /* its place in gw->reqs */
};

/*  gw_http.c */
int gw_http_start(gw_t *gw, int *bound_port);
void gw_http_stop(gw_t *gw);
const char *gw_header(struct evhttp_request *req, const char *name);
/*  Send (or, in the jobs actor, capture) a reply; body is drained. */
void gw_reply_raw(struct evhttp_request *req, int status,
                  struct evbuffer *body);
gw_conn_t *gw_conn_lookup(gw_t *gw, struct evhttp_request *req);
void gw_reply_json(struct evhttp_request *req, int status, const char *rid,
                   const char *json, size_t len);
void gw_reply_cjson(struct evhttp_request *req, int status, const char *rid,
                    const cJSON *json);
void gw_reply_error(struct evhttp_request *req, gw_api_t api, int status,
                    const char *rid, const char *type, const char *code,
                    const char *param, const char *message);
void gw_reply_llmq_error(struct evhttp_request *req, gw_api_t api,
                         const char *rid, const char *code, int status,
                         const char *message);
char *gw_body_text(struct evhttp_request *req, size_t *len_p);
cJSON *gw_body_json(struct evhttp_request *req, gw_api_t api, const char *rid);
void gw_new_id(gw_t *gw, const char *prefix, char *out, size_t size);
int gw_http_status_of(const char *code);
/*  obj's string member key (borrowed), or dflt. */
const char *gw_str(const cJSON *obj, const char *key, const char *dflt);
/*  key: text, or JSON null when text is NULL. */
void gw_json_add_text(cJSON *obj, const char *key, const char *text);
/*  The value of key in table (pairs {key, value}, ended by {NULL, NULL}),
    or dflt when key is NULL or not in it. */
const char *gw_lookup(const char *const table[][2], const char *key,
                      const char *dflt);

/*  gw_keys.c */
gw_keys_t *gw_keys_new(const char *path);
void gw_keys_destroy(gw_keys_t **self_p);
void gw_keys_reload(gw_keys_t *self);
const char *gw_keys_tenant(gw_keys_t *self, const char *key);

/*  gw_broker.c */
int gw_broker_start(gw_t *gw);
void gw_broker_stop(gw_t *gw);
gw_req_t *gw_req_new(gw_t *gw, struct evhttp_request *req, gw_api_t api,
                     const char *rid, const char *tenant);
void gw_req_free(gw_req_t **self_p);
int gw_submit(gw_req_t *r, const cJSON *body, const char *trace);
void gw_kick(gw_t *gw);
cJSON *gw_status(gw_t *gw);
bool gw_model_served(gw_t *gw, const char *model);
void gw_sse_start(gw_req_t *r);
void gw_sse_send(gw_req_t *r, const char *event, const char *data);
void gw_sse_end(gw_req_t *r);

/*  Route handlers; each gets the request, the tenant, the request id. */
typedef struct {
    gw_t *gw;
    struct evhttp_request *req;
    const char *tenant;
    const char *rid;
    const char *trace;
    const char *path;            /* decoded path without the query */
    const char *query;           /* raw query string, or NULL */
    enum evhttp_cmd_type method; /* GET, POST, DELETE */
} gw_call_t;

typedef void(gw_route_fn)(gw_call_t *c);

/*  "/PREFIX/ID/TAIL" in c->path: ID (up to 71 bytes) and TAIL (up to 31),
    each "" when absent. */
void gw_path_id(const gw_call_t *c, const char *prefix, char id[72],
                char tail[32]);

/*  A route handler: id "" on routes without one; cancel from the route. */
typedef void(gw_id_fn)(gw_call_t *c, const char *id, bool cancel);

/*  One route: the path prefix, the method, whether an id follows the
    prefix, the part after the id ("" for none), the handler and what it
    gets as cancel. */
typedef struct {
    const char *prefix;
    enum evhttp_cmd_type method;
    bool has_id;
    const char *tail;
    gw_id_fn *fn;
    bool cancel;
} gw_route_t;

/*  Run the first of routes (ended by a NULL fn) that matches c, or answer
    404 "unknown route" in the error shape of c's API. */
void gw_route(gw_call_t *c, const gw_route_t *routes);

/*  Anthropic for /v1/messages..., else OpenAI. */
gw_api_t gw_api_of(const char *path);

/*  What every API's answer handler does first: a stream the client has
    seen chunks of (or a good one) ends with stream_end; a failure gets the
    API's error reply. Returns true when res is answered so. */
bool gw_result_common(gw_req_t *r, llmq_result_t *res,
                      void (*stream_end)(gw_req_t *r, llmq_result_t *res));

/*  gw_jobs.c: Files and Batches routes in an actor, off the loop */
int gw_jobs_start(gw_t *gw);
void gw_jobs_stop(gw_t *gw);
void gw_jobs_submit(gw_call_t *c, gw_route_fn *route);
void gw_job_gone(gw_job_t *job);
bool gw_job_capture(struct evhttp_request *req, int status,
                    struct evbuffer *body);

void gw_openai_infer(gw_call_t *c, llmq_op_t op);
void gw_openai_models(gw_call_t *c);
char *gw_floats_b64(const cJSON *arr);
void gw_openai_on_chunk(gw_req_t *r, const cJSON *chunk);
void gw_openai_on_result(gw_req_t *r, llmq_result_t *res);
void gw_anthropic_messages(gw_call_t *c);
void gw_anthropic_on_chunk(gw_req_t *r, const cJSON *chunk);
void gw_anthropic_on_result(gw_req_t *r, llmq_result_t *res);
cJSON *gw_anthropic_to_openai(const cJSON *body, char *err, size_t errsz);
cJSON *gw_openai_to_anthropic(const cJSON *body, const char *model,
                              int64_t in_tokens, int64_t out_tokens);

/*  gw_files.c */
typedef struct {
    const char *data;   /* part body (points into the request body) */
    size_t len;         /* its length */
    char name[64];      /* form field name */
    char filename[256]; /* file name, "" if none */
} gw_part_t;
/*  Split a multipart/form-data body into at most max parts; returns how
    many, or -1 if it is malformed. */
int gw_multipart(const char *body, size_t len, const char *boundary,
                 gw_part_t *parts, int max);
void gw_files_route(gw_call_t *c);
char *gw_file_read(gw_t *gw, const char *id, size_t *len_p);
int gw_file_write(gw_t *gw, const char *purpose, const char *filename,
                  const char *data, size_t len, char *id_out, size_t id_size);
cJSON *gw_file_object(gw_t *gw, const char *id);
int gw_store_write(gw_t *gw, const char *kind, const char *id,
                   const cJSON *json);
cJSON *gw_store_read(gw_t *gw, const char *kind, const char *id);
zlist_t *gw_store_list(gw_t *gw, const char *kind);

/*  gw_batches.c: the routes of both batch APIs */
void gw_batches_route(gw_call_t *c);
int gw_batch_create(gw_call_t *c, const char *id, cJSON *rec, cJSON *items,
                    const char *op);
int gw_batch_status(gw_t *gw, const char *id, char *state, size_t ssize,
                    int64_t counts[3], char *err, size_t errsz);
cJSON *gw_batch_record(gw_call_t *c, gw_api_t api, const char *id);
cJSON **gw_batch_records(gw_t *gw, const char *api, size_t *n_p);
/*  {"custom_id": custom_id, "body": body} at the end of items; takes body. */
void gw_batch_add_item(cJSON *items, const char *custom_id, cJSON *body);
void gw_batch_paging(gw_call_t *c, char *after, size_t asize, int *limit);

/*  gw_msg_batches.c: Anthropic Message Batches (routed by gw_batches.c) */
gw_id_fn gw_msg_batch_create, gw_msg_batch_list, gw_msg_batch_get,
    gw_msg_batch_results;

#endif
