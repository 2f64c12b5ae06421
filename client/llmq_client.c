/*  llmq_client.c - the llmq client: requests over one DEALER socket.

    Design. The client owns no thread: every public call pumps the socket
    itself (s_pump), so a program that never calls in is never surprised by
    a callback. Outstanding requests live in a list in submission order (it
    owns them) plus a hash from id to request; each keeps its msgpack
    payload so it can be resent unchanged. Finished results wait in a ready
    list until poll() takes them or, when a result callback is set, until
    the end of the pump hands them to it.

    Reliability is the lazy pirate pattern with heartbeats (ZeroMQ guide,
    chapter 4). Any message from the broker is a sign of life. While
    requests are outstanding the client pings it every
    LLMQ_CLIENT_HEARTBEAT_MS, answers flowing or not: the ping is also its
    own heartbeat, without which the broker would take it for gone and drop
    its work (PROTOCOL.md 3.5; it goes out from every pump: poll, wait,
    infer, process). After `timeout` ms of
    silence it replaces the socket (same routing id, so the broker sees the
    same client) and resends every outstanding request in submission order.
    Silence is not enough on its own: a broker restarted on the same port
    answers pings at once, yet has lost everything we sent the old one. So
    a socket monitor watches for the connection dropping, and a drop with
    requests outstanding triggers the same reconnect and resend (at most
    once per heartbeat, so a peer that keeps dropping us is not hammered).
    The broker ignores a resent id it still has pending, and an answer for
    an id that is no longer outstanding is dropped here: each request gets
    exactly one result. Slow answers are not failures.
*/
#include "llmq_client.h"
#include "llmq_duration.h"
#include "llmq_log.h"
#include "llmq_curve.h"
#include "llmq_msg.h"
#include "llmq_payload.h"
#include "llmq_value.h"

#include <czmq.h>
#include <errno.h>
#include <inttypes.h>

/*  One outstanding request. */
typedef struct {
    char *id;                /* client id, unique among outstanding */
    llmq_op_t op;            /* operation */
    char *model;             /* model name */
    zmq_msg_t payload;       /* msgpack body, kept for resends (each send
                                shares it: zmq_msg_copy) */
    char *pool;              /* optional pool, or NULL */
    char *trace;             /* optional traceparent, or NULL */
    char *tenant;            /* declared tenant, or NULL */
    int64_t deadline_ms;     /* relative deadline at first send, 0: none */
    int64_t priority;        /* priority */
    int max_attempts;        /* 0: broker default */
    bool cache;              /* cache allowed */
    llmq_chunk_fn *on_chunk; /* stream callback, or NULL */
    void *chunk_arg;         /* its argument */
    void *arg;               /* caller's argument, returned in the result */
    int64_t sent_at;         /* zclock_mono() at first send */
    int64_t last_seq;        /* highest chunk seq delivered, -1: none */
    int resends;             /* times resent after reconnects */
    uint64_t seq;            /* submission number (next_id when sent) */
    bool orphan;             /* its caller gave up waiting: drop the result */
    void *handle;            /* our item in self->order */
} s_request_t;

struct _llmq_client_t {
    char *endpoint;            /* broker frontend endpoint */
    char routing_id[40];       /* stable across reconnects */
    zsock_t *sock;             /* DEALER to the broker */
    zsock_t *monitor;          /* PAIR receiving sock's connection events */
    unsigned monitor_seq;      /* makes monitor endpoints unique */
    int64_t monitor_at;        /* zclock_mono() the monitor was last read */
    zlistx_t *order;           /* s_request_t, submission order (owns) */
    zhashx_t *pending;         /* id -> s_request_t (borrowed from order) */
    zlistx_t *ready;           /* finished llmq_result_t (owns) */
    size_t window;             /* max outstanding */
    int timeout_ms;            /* broker liveness */
    int heartbeat_ms;          /* ping (heartbeat) interval while busy */
    int give_up_ms;            /* 0: never give up */
    char *tenant;              /* declared tenant of every message, or NULL */
    bool verbose;              /* log reconnects and drops */
    bool raw_bodies;           /* results keep bodies as msgpack bytes */
    llmq_result_fn *callback;  /* result callback, or NULL (poll mode) */
    void *callback_arg;        /* its argument */
    int hold;                  /* >0: keep results in ready (infer running) */
    uint64_t next_id;          /* request id counter */
    int64_t last_recv;         /* last sign of life (reset on reconnect) */
    int64_t last_heard;        /* last real message, for give-up */
    int64_t last_ping;         /* last ping sent */
    uint64_t ping_mark;        /* next_id when the last ping went out */
    int pings_out;             /* pings sent and not yet ponged */
    int64_t last_reconnect;    /* last socket replacement */
    bool dropped;              /* connection dropped, reconnect pending */
    llmq_client_stats_t stats; /* counters */
    bool got_pong;             /* a pong arrived since the last ping() */
    char *pong_version;        /* "broker version" from the last pong */
    cJSON *status;             /* last status reply, or NULL */
    zlist_t *batch_in;         /* batch.* replies awaiting a batch call */
    char batch_error[600];     /* last batch call failure */
    zcert_t *cert;             /* CURVE keypair, or NULL */
    char server_key[LLMQ_CURVE_KEY_LEN + 1]; /* broker's public key (Z85) */
};

static int s_pump(llmq_client_t *self, int timeout_ms);
/*  A busy socket's monitor is read at least this often (ms). */
#define S_MONITOR_MS 10
static void s_drain_to_callback(llmq_client_t *self);

static void s_request_destroy(s_request_t **self_p)
{
    if (self_p && *self_p) {
        s_request_t *self = *self_p;
        free(self->id);
        free(self->model);
        free(self->pool);
        free(self->trace);
        free(self->tenant);
        zmq_msg_close(&self->payload);
        free(self);
        *self_p = NULL;
    }
}

static void s_request_destructor(void **item)
{
    s_request_destroy((s_request_t **)item);
}

static void s_result_destructor(void **item)
{
    llmq_result_destroy((llmq_result_t **)item);
}

static char *s_strdup_or_null(const char *s)
{
    return s ? strdup(s) : NULL;
}

/*  A fresh DEALER with our routing id. ZMQ_MAXMSGSIZE bounds what a broker
    (or anything else at that address) can make us allocate; linger 0 so a
    dead broker never blocks destroy; a large send HWM so a full window of
    resends never blocks, and a send timeout as a last guard. */
static zsock_t *s_socket_new(llmq_client_t *self)
{
    zsock_t *sock = zsock_new(ZMQ_DEALER);
    if (!sock)
        return NULL;
    zsock_set_identity(sock, self->routing_id);
    zsock_set_maxmsgsize(sock, (int)LLMQ_MAX_FRAME_SIZE);
    zsock_set_linger(sock, 0);
    zsock_set_sndhwm(sock, 100000);
    zsock_set_rcvhwm(sock, 100000);
    zsock_set_sndtimeo(sock, 1000);
    //  Receives never block: s_drain reads until EAGAIN, s_pump waits.
    zsock_set_rcvtimeo(sock, 0);
    if (self->cert)
        llmq_curve_client_apply(sock, self->cert, self->server_key);
    if (zsock_connect(sock, "%s", self->endpoint) != 0) {
        zsock_destroy(&sock);
        return NULL;
    }
    return sock;
}

/*  Watch the socket's connection events. A broker that restarts comes back
    on the same address and answers pings, so silence alone would never
    tell us it forgot our requests: a dropped connection does. */
static zsock_t *s_monitor_new(llmq_client_t *self, zsock_t *sock)
{
    char endpoint[96];
    snprintf(endpoint, sizeof(endpoint), "inproc://llmq-client-monitor-%p-%u",
             (void *)self, ++self->monitor_seq);
    if (zmq_socket_monitor(zsock_resolve(sock), endpoint,
                           ZMQ_EVENT_DISCONNECTED) != 0)
        return NULL;
    zsock_t *monitor = zsock_new(ZMQ_PAIR);
    if (monitor && zsock_connect(monitor, "%s", endpoint) != 0)
        zsock_destroy(&monitor);
    return monitor;
}

/*  Close the socket and its monitor. */
static void s_socket_close(llmq_client_t *self)
{
    if (self->sock)
        zmq_socket_monitor(zsock_resolve(self->sock), NULL, 0);
    zsock_destroy(&self->monitor);
    zsock_destroy(&self->sock);
}

//  --------------------------------------------------------------------------
//  Create a client

llmq_client_t *llmq_client_new(const char *endpoint)
{
    return llmq_client_new_with(endpoint, NULL, NULL, 0);
}

//  The declared tenant of every message (PROTOCOL.md 3.4, advisory):
//  options->tenant, else $LLMQ_TENANT, else none.
static void s_tenant_default(llmq_client_t *self,
                             const llmq_client_options_t *options)
{
    const char *tenant =
        options && options->tenant ? options->tenant : getenv("LLMQ_TENANT");
    if (tenant && *tenant)
        self->tenant = strndup(tenant, 128);
}

//  Load the CURVE keys of options into self. Returns 0 or -1 (err set).
static int s_curve_load(llmq_client_t *self,
                        const llmq_client_options_t *options, char *err,
                        size_t size)
{
    if (!options)
        return 0;
    int wanted =
        llmq_curve_wanted(options->curve_cert, options->broker_key, err, size);
    if (wanted <= 0)
        return wanted;
    if (llmq_curve_key_resolve(options->broker_key, self->server_key, err,
                               size) != 0)
        return -1;
    self->cert = llmq_curve_cert_load(options->curve_cert, err, size);
    return self->cert ? 0 : -1;
}

llmq_client_t *llmq_client_new_with(const char *endpoint,
                                    const llmq_client_options_t *options,
                                    char *err, size_t err_size)
{
    char scratch[16];
    if (!err) {
        err = scratch;
        err_size = sizeof(scratch);
    }
    *err = 0;
    llmq_client_t *self = (llmq_client_t *)calloc(1, sizeof(*self));
    if (!self)
        return NULL;
    self->endpoint = strdup(endpoint ? endpoint : LLMQ_DEFAULT_ENDPOINT);
    //  A random routing id: unique per client object, kept on reconnect.
    //  It starts with a non-zero byte as ZeroMQ requires.
    uint64_t r1 =
        (uint64_t)randof(0x7fffffff) << 32 ^ (uint64_t)randof(0x7fffffff);
    uint64_t r2 = (uint64_t)getpid() << 20 ^ (uint64_t)zclock_usecs();
    snprintf(self->routing_id, sizeof(self->routing_id),
             "llmq-%016" PRIx64 "%04" PRIx64, r1 ^ r2,
             (uint64_t)randof(0xffff));
    self->order = zlistx_new();
    self->pending = zhashx_new();
    self->ready = zlistx_new();
    if (!self->endpoint || !self->order || !self->pending || !self->ready) {
        snprintf(err, err_size, "out of memory");
        llmq_client_destroy(&self);
        return NULL;
    }
    if (s_curve_load(self, options, err, err_size) != 0) {
        llmq_client_destroy(&self);
        return NULL;
    }
    zlistx_set_destructor(self->order, s_request_destructor);
    //  pending's keys are its requests' ids, borrowed: an entry leaves
    //  before its request (s_finish), so no copy per request.
    zhashx_set_key_duplicator(self->pending, NULL);
    zhashx_set_key_destructor(self->pending, NULL);
    zlistx_set_destructor(self->ready, s_result_destructor);
    self->window = LLMQ_CLIENT_WINDOW;
    self->timeout_ms = LLMQ_CLIENT_TIMEOUT_MS;
    self->heartbeat_ms = LLMQ_CLIENT_HEARTBEAT_MS;
    self->give_up_ms = LLMQ_CLIENT_GIVE_UP_MS;
    const char *give_up = getenv("LLMQ_GIVE_UP_MS");
    int64_t env_ms = 0;
    if (give_up && *give_up && !llmq_duration_parse(give_up, &env_ms, NULL) &&
        env_ms <= INT32_MAX)
        self->give_up_ms = (int)env_ms;
    s_tenant_default(self, options);
    self->sock = s_socket_new(self);
    if (!self->sock) {
        snprintf(err, err_size, "bad endpoint '%s'", self->endpoint);
        llmq_client_destroy(&self);
        return NULL;
    }
    self->monitor = s_monitor_new(self, self->sock);
    self->last_recv = self->last_heard = zclock_mono();
    return self;
}

//  --------------------------------------------------------------------------
//  Destroy a client

void llmq_client_destroy(llmq_client_t **self_p)
{
    if (self_p && *self_p) {
        llmq_client_t *self = *self_p;
        s_socket_close(self);
        zhashx_destroy(&self->pending);
        zlistx_destroy(&self->order);
        zlistx_destroy(&self->ready);
        cJSON_Delete(self->status);
        llmq_msg_t *bm;
        while (self->batch_in && (bm = (llmq_msg_t *)zlist_pop(self->batch_in)))
            llmq_msg_destroy(&bm);
        zlist_destroy(&self->batch_in);
        free(self->pong_version);
        free(self->endpoint);
        free(self->tenant);
        zcert_destroy(&self->cert);
        free(self);
        *self_p = NULL;
    }
}

void llmq_client_set_timeout(llmq_client_t *self, int timeout_ms)
{
    self->timeout_ms = timeout_ms < 100 ? 100 : timeout_ms;
    //  Ping a few times within one liveness period.
    self->heartbeat_ms = self->timeout_ms / 3 < LLMQ_CLIENT_HEARTBEAT_MS
                             ? self->timeout_ms / 3
                             : LLMQ_CLIENT_HEARTBEAT_MS;
}

void llmq_client_set_window(llmq_client_t *self, size_t window)
{
    self->window = window < 1 ? 1 : window;
}

void llmq_client_set_give_up(llmq_client_t *self, int give_up_ms)
{
    self->give_up_ms = give_up_ms < 0 ? 0 : give_up_ms;
}

void llmq_client_set_verbose(llmq_client_t *self, bool verbose)
{
    self->verbose = verbose;
}

void llmq_client_set_raw_bodies(llmq_client_t *self, bool raw)
{
    self->raw_bodies = raw;
}

void llmq_client_set_callback(llmq_client_t *self, llmq_result_fn *fn,
                              void *arg)
{
    self->callback = fn;
    self->callback_arg = arg;
}

const char *llmq_client_endpoint(const llmq_client_t *self)
{
    return self->endpoint;
}

const char *llmq_client_routing_id(const llmq_client_t *self)
{
    return self->routing_id;
}

void llmq_client_stats(const llmq_client_t *self, llmq_client_stats_t *stats)
{
    *stats = self->stats;
}

//  --------------------------------------------------------------------------
//  Sending

static void s_send_ping(llmq_client_t *self)
{
    llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_PING);
    //  Every ping of this library is a heartbeat (PROTOCOL.md 3.5): it pings
    //  while it has work outstanding, so the broker may judge it by silence.
    if (msg)
        llmq_msg_set_heartbeat(msg, true);
    llmq_msg_send(&msg, zsock_resolve(self->sock));
    self->ping_mark = self->next_id;
    self->pings_out++;
    self->last_ping = zclock_mono();
    self->stats.pings++;
}

/*  Send (or resend) one request. A failed send is not fatal: the request
    stays outstanding and the next reconnect resends it. The header is
    written straight from the request (no message object: the fields in
    catalogue order, absent ones NULL), the payload shared with the
    request's copy (no frame, no copy of the body). */
static void s_send_request(llmq_client_t *self, s_request_t *req)
{
    llmq_msg_entry_t fields[13];
    size_t n = 0;
    const char *tenant = req->tenant ? req->tenant : self->tenant;
    fields[n++] = (llmq_msg_entry_t){LLMQ_F_id, req->id, 0};
    fields[n++] = (llmq_msg_entry_t){LLMQ_F_op, llmq_op_name(req->op), 0};
    fields[n++] = (llmq_msg_entry_t){LLMQ_F_model, req->model, 0};
    fields[n++] = (llmq_msg_entry_t){LLMQ_F_pool, req->pool, 0};
    if (req->on_chunk)
        fields[n++] = (llmq_msg_entry_t){LLMQ_F_stream, NULL, 1};
    if (req->deadline_ms > 0) {
        //  Relative deadline: what is left of it now.
        int64_t left = req->deadline_ms - (zclock_mono() - req->sent_at);
        fields[n++] =
            (llmq_msg_entry_t){LLMQ_F_deadline_ms, NULL, left > 1 ? left : 1};
    }
    if (req->priority)
        fields[n++] = (llmq_msg_entry_t){LLMQ_F_priority, NULL, req->priority};
    if (req->cache)
        fields[n++] = (llmq_msg_entry_t){LLMQ_F_cache, NULL, 1};
    if (req->max_attempts > 0)
        fields[n++] =
            (llmq_msg_entry_t){LLMQ_F_max_attempts, NULL, req->max_attempts};
    fields[n++] = (llmq_msg_entry_t){LLMQ_F_trace, req->trace, 0};
    //  A resend says so (the broker attaches it to a worker that holds it,
    //  PROTOCOL.md 3.3), and a stream says which chunks we already have.
    if (req->resends > 0 && req->on_chunk && req->last_seq >= 0)
        fields[n++] = (llmq_msg_entry_t){LLMQ_F_seq, NULL, req->last_seq};
    if (req->resends > 0)
        fields[n++] = (llmq_msg_entry_t){LLMQ_F_resend, NULL, 1};
    fields[n++] = (llmq_msg_entry_t){LLMQ_F_tenant, tenant, 0};
    char reason[160] = "";
    zmq_msg_t header, payload;
    void *sock = zsock_resolve(self->sock);
    int rc = llmq_msg_encode_entries(LLMQ_MSG_REQ, fields, n, &header, reason,
                                     sizeof reason);
    if (rc != 0)
        llmq_log(NULL, LLMQ_LOG_WARN, "msg_send_failed",
                 LLMQ_LOG_STR("type", "req"), LLMQ_LOG_STR("reason", reason),
                 LLMQ_LOG_END);
    else if (zmq_msg_send(&header, sock, ZMQ_SNDMORE) == -1) {
        zmq_msg_close(&header);
        rc = -1;
    } else {
        zmq_msg_init(&payload);
        zmq_msg_copy(&payload, &req->payload);
        if ((rc = zmq_msg_send(&payload, sock, 0) == -1 ? -1 : 0) != 0)
            zmq_msg_close(&payload);
    }
    if (rc != 0 && self->verbose)
        llmq_log(NULL, LLMQ_LOG_WARN, "client_send_failed",
                 LLMQ_LOG_STR("id", req->id), LLMQ_LOG_END);
}

/*  The broker has been silent too long, or our connection to it dropped:
    new socket, same identity, resend everything outstanding in submission
    order. */
static void s_reconnect(llmq_client_t *self, const char *why)
{
    if (self->verbose)
        llmq_log(
            NULL, LLMQ_LOG_INFO, "client_reconnect",
            LLMQ_LOG_STR("broker", self->endpoint), LLMQ_LOG_STR("why", why),
            LLMQ_LOG_INT("resending", zlistx_size(self->order)), LLMQ_LOG_END);
    zsock_t *sock = s_socket_new(self);
    if (!sock)
        return; //  try again on the next timer
    s_socket_close(self);
    self->sock = sock;
    self->monitor = s_monitor_new(self, sock);
    self->stats.reconnects++;
    self->dropped = false;
    self->last_reconnect = zclock_mono();
    s_request_t *req = (s_request_t *)zlistx_first(self->order);
    while (req) {
        req->resends++;
        self->stats.resent++;
        s_send_request(self, req);
        req = (s_request_t *)zlistx_next(self->order);
    }
    self->last_recv = zclock_mono();
    self->pings_out = 0; //  the old socket's pongs are lost
    s_send_ping(self);
}

/*  The pong to our latest heartbeat says how many of our requests the
    broker holds. Answers it sent before the pong came before it, so if we
    still wait for more of those sent before that ping, the broker dropped
    some (it took us for gone, or dropped a reply we were slow to read):
    resend everything outstanding; it ignores what it still holds
    (PROTOCOL.md 3.5). */
static void s_check_pending(llmq_client_t *self, llmq_msg_t *pong)
{
    if (self->pings_out > 0)
        self->pings_out--;
    if (self->pings_out > 0 || !llmq_msg_has(pong, LLMQ_F_pending))
        return;
    int64_t waiting = 0;
    s_request_t *req = (s_request_t *)zlistx_first(self->order);
    for (; req; req = (s_request_t *)zlistx_next(self->order))
        if (req->seq <= self->ping_mark)
            waiting++;
    if (waiting <= llmq_msg_pending(pong))
        return;
    if (self->verbose)
        llmq_log(NULL, LLMQ_LOG_WARN, "client_resend_dropped",
                 LLMQ_LOG_INT("waiting", waiting),
                 LLMQ_LOG_INT("broker_holds", llmq_msg_pending(pong)),
                 LLMQ_LOG_END);
    for (req = (s_request_t *)zlistx_first(self->order); req;
         req = (s_request_t *)zlistx_next(self->order)) {
        req->resends++;
        self->stats.resent++;
        s_send_request(self, req);
    }
}

//  --------------------------------------------------------------------------
//  Results

/*  Finish a request: take it off the outstanding lists, queue its result. */
static void s_finish(llmq_client_t *self, s_request_t *req,
                     llmq_result_t *result)
{
    result->arg = req->arg;
    result->op = req->op;
    result->resends = req->resends;
    result->elapsed_ms = zclock_mono() - req->sent_at;
    //  req goes: the result takes its id and trace, and the model asked
    //  when the res did not name the one that answered.
    result->trace = req->trace;
    req->trace = NULL;
    if (!result->model) {
        result->model = req->model;
        req->model = NULL;
    }
    bool orphan = req->orphan;
    zhashx_delete(self->pending, req->id);
    result->id = req->id;
    req->id = NULL;
    zlistx_delete(self->order, req->handle); //  destroys req
    if (orphan) {
        llmq_result_destroy(&result);
        return;
    }
    zlistx_add_end(self->ready, result);
    self->stats.results++;
}

static void s_set_error(llmq_result_t *result, const char *code,
                        const char *message, int status, bool retryable)
{
    result->ok = false;
    free(result->error_code);
    free(result->error_message);
    result->error_code = strdup(code ? code : "internal");
    result->error_message = strdup(message ? message : "");
    result->error_status = status;
    result->error_retryable = retryable;
}

/*  A copy of size bytes, or NULL (also when size is 0). */
static uint8_t *s_memdup(const void *data, size_t size)
{
    uint8_t *copy = data && size ? (uint8_t *)malloc(size) : NULL;
    if (copy)
        memcpy(copy, data, size);
    return copy;
}

/*  The body of a res: kept as its msgpack bytes (raw bodies, no decode at
    all: a bad body shows when it is written) or decoded into a tree; and
    the provider's error body, as its bytes. */
static void s_res_body(llmq_client_t *self, llmq_result_t *result,
                       llmq_msg_t *msg)
{
    size_t size = 0;
    const uint8_t *error_body = llmq_msg_error_body(msg, &size);
    if ((result->error_body = s_memdup(error_body, size)))
        result->error_body_size = size;
    if (self->raw_bodies) {
        //  Received as libzmq's message (s_drain): its bytes copied once,
        //  no frame made.
        zmq_msg_t body;
        if (llmq_msg_take_payload_msg(msg, &body) != 0)
            return;
        size_t n = zmq_msg_size(&body);
        if ((result->body_msgpack = s_memdup(zmq_msg_data(&body), n)))
            result->body_msgpack_size = n;
        zmq_msg_close(&body);
        return;
    }
    zframe_t *payload = llmq_msg_payload(msg);
    if (!payload || zframe_size(payload) == 0)
        return;
    char reason[128] = "";
    result->body = llmq_value_to_json(
        zframe_data(payload), zframe_size(payload), reason, sizeof(reason));
    if (!result->body && result->ok)
        s_set_error(result, "internal", "response body is not valid msgpack", 0,
                    true);
}

static void s_handle_res(llmq_client_t *self, llmq_msg_t *msg)
{
    const char *id = llmq_msg_id(msg);
    s_request_t *req =
        id ? (s_request_t *)zhashx_lookup(self->pending, id) : NULL;
    if (!req) {
        //  A late answer to something already answered (a resend's twin).
        self->stats.duplicates++;
        return;
    }
    llmq_result_t *result = (llmq_result_t *)calloc(1, sizeof(*result));
    if (!result)
        return;
    result->ok = llmq_msg_ok(msg);
    result->prompt_tokens = llmq_msg_usage_prompt_tokens(msg);
    result->completion_tokens = llmq_msg_usage_completion_tokens(msg);
    result->total_tokens = llmq_msg_usage_total_tokens(msg);
    if (!result->total_tokens)
        result->total_tokens =
            result->prompt_tokens + result->completion_tokens;
    result->cost_usd = llmq_msg_usage_cost_usd(msg);
    result->latency_ms = llmq_msg_latency_ms(msg);
    result->attempts = (int)llmq_msg_attempts(msg);
    result->attempt = (int)llmq_msg_attempt(msg);
    result->worker = s_strdup_or_null(llmq_msg_worker(msg));
    result->cached = llmq_msg_cached(msg);
    result->request_id = s_strdup_or_null(llmq_msg_request_id(msg));
    //  The model that answered: most often the one asked, which s_finish
    //  then moves over from the request (no copy).
    const char *model = llmq_msg_model(msg);
    if (model && (!req->model || strcmp(model, req->model) != 0))
        result->model = strdup(model);
    s_res_body(self, result, msg);
    if (!llmq_msg_ok(msg)) {
        const char *code = llmq_msg_error_code(msg);
        s_set_error(result, code ? code : "internal",
                    llmq_msg_error_message(msg),
                    (int)llmq_msg_error_status(msg),
                    llmq_msg_has(msg, LLMQ_F_error_retryable)
                        ? llmq_msg_error_retryable(msg)
                        : llmq_err_retryable(llmq_err_from_name(code)));
    }
    s_finish(self, req, result);
}

static void s_handle_chunk(llmq_client_t *self, llmq_msg_t *msg)
{
    const char *id = llmq_msg_id(msg);
    s_request_t *req =
        id ? (s_request_t *)zhashx_lookup(self->pending, id) : NULL;
    if (!req || !req->on_chunk)
        return;
    //  After a resend the stream may start again: deliver each seq once.
    int64_t seq = llmq_msg_seq(msg);
    if (seq <= req->last_seq)
        return;
    req->last_seq = seq;
    zframe_t *payload = llmq_msg_payload(msg);
    if (!payload)
        return;
    cJSON *chunk =
        llmq_value_to_json(zframe_data(payload), zframe_size(payload), NULL, 0);
    if (!chunk)
        return;
    const char *delta = "";
    cJSON *choice =
        cJSON_GetArrayItem(cJSON_GetObjectItem(chunk, "choices"), 0);
    cJSON *content =
        cJSON_GetObjectItem(cJSON_GetObjectItem(choice, "delta"), "content");
    if (!cJSON_IsString(content))
        content = cJSON_GetObjectItem(choice, "text");
    if (cJSON_IsString(content))
        delta = content->valuestring;
    req->on_chunk(req->id, chunk, delta, req->chunk_arg);
    cJSON_Delete(chunk);
}

static void s_handle_error(llmq_client_t *self, llmq_msg_t *msg)
{
    const char *id = llmq_msg_id(msg);
    s_request_t *req =
        id ? (s_request_t *)zhashx_lookup(self->pending, id) : NULL;
    if (!req) {
        if (self->verbose)
            llmq_log(NULL, LLMQ_LOG_WARN, "client_broker_error",
                     LLMQ_LOG_STR("code", llmq_msg_code(msg)),
                     LLMQ_LOG_STR("message", llmq_msg_message(msg)),
                     LLMQ_LOG_END);
        return;
    }
    llmq_result_t *result = (llmq_result_t *)calloc(1, sizeof(*result));
    if (!result)
        return;
    const char *code = llmq_msg_code(msg);
    s_set_error(result, code, llmq_msg_message(msg), 0,
                llmq_err_retryable(llmq_err_from_name(code)));
    s_finish(self, req, result);
}

static void s_handle(llmq_client_t *self, llmq_msg_t *msg)
{
    //  Answers to batch calls wait for the call to look at them.
    llmq_msg_type_t type = llmq_msg_type(msg);
    if (self->batch_in &&
        (type == LLMQ_MSG_BATCH_ACK || type == LLMQ_MSG_BATCH_STATUS ||
         type == LLMQ_MSG_BATCH_RESULTS ||
         (type == LLMQ_MSG_ERROR && !llmq_msg_id(msg)))) {
        llmq_msg_t *copy = llmq_msg_dup(msg);
        if (copy)
            zlist_append(self->batch_in, copy);
        return;
    }
    switch (type) {
    case LLMQ_MSG_RES:
        s_handle_res(self, msg);
        break;
    case LLMQ_MSG_CHUNK:
        s_handle_chunk(self, msg);
        break;
    case LLMQ_MSG_PONG: {
        self->got_pong = true;
        s_check_pending(self, msg);
        free(self->pong_version);
        const char *broker = llmq_msg_broker(msg);
        const char *version = llmq_msg_version(msg);
        self->pong_version = zsys_sprintf("%s %s", broker ? broker : "?",
                                          version ? version : "?");
        break;
    }
    case LLMQ_MSG_STATUS: {
        zframe_t *payload = llmq_msg_payload(msg);
        cJSON_Delete(self->status);
        self->status = payload
                           ? llmq_value_to_json(zframe_data(payload),
                                                zframe_size(payload), NULL, 0)
                           : NULL;
        if (!self->status)
            self->status = cJSON_CreateObject();
        break;
    }
    case LLMQ_MSG_ERROR:
        s_handle_error(self, msg);
        break;
    default:
        if (self->verbose)
            llmq_log(
                NULL, LLMQ_LOG_WARN, "client_dropped",
                LLMQ_LOG_STR("type", llmq_msg_type_name(llmq_msg_type(msg))),
                LLMQ_LOG_STR("reason", llmq_msg_type(msg) == LLMQ_MSG_INVALID
                                           ? llmq_msg_invalid_reason(msg)
                                           : "unexpected"),
                LLMQ_LOG_END);
        break;
    }
}

/*  Fail everything outstanding (give-up): the only way a request ends
    without the broker's answer. */
static void s_give_up(llmq_client_t *self)
{
    s_request_t *req;
    while ((req = (s_request_t *)zlistx_first(self->order))) {
        llmq_result_t *result = (llmq_result_t *)calloc(1, sizeof(*result));
        if (!result)
            return;
        s_set_error(result, "timeout", "broker unreachable", 0, true);
        s_finish(self, req, result);
    }
}

/*  Heartbeat timers: run after every wait. */
static void s_timers(llmq_client_t *self)
{
    if (zlistx_size(self->order) == 0) {
        self->dropped = false; //  nothing to resend
        return;
    }
    int64_t now = zclock_mono();
    if (self->give_up_ms && now - self->last_heard >= self->give_up_ms) {
        s_give_up(self);
        return;
    }
    int64_t silent = now - self->last_recv;
    if (self->dropped && now - self->last_reconnect >= self->heartbeat_ms)
        s_reconnect(self, "disconnected");
    else if (silent >= self->timeout_ms)
        s_reconnect(self, "silent");
    else if (now - self->last_ping >= self->heartbeat_ms)
        //  Whether or not answers flow: the broker must hear from us while
        //  we wait for anything (PROTOCOL.md 3.5).
        s_send_ping(self);
}

/*  The monitor said the connection dropped (broker crashed or restarted):
    whatever it held for us may be gone. Only outstanding work needs a
    resend. Returns 0, or -1 if interrupted. */
static int s_read_monitor(llmq_client_t *self)
{
    bool dropped = false;
    while (zsock_events(self->monitor) & ZMQ_POLLIN) {
        zmsg_t *event = zmsg_recv(self->monitor);
        if (!event)
            return -1;
        zmsg_destroy(&event);
        dropped = true;
    }
    //  Reconnect at once, but not more than once per heartbeat (a peer that
    //  is not a broker could drop us in a tight loop).
    if (dropped && zlistx_size(self->order) > 0)
        self->dropped = true;
    return 0;
}

/*  Handle every message queued on the socket, without waiting: receive
    until EAGAIN (the socket's receive timeout is 0). A message that is
    there costs no system call; asking ZMQ_EVENTS before each one cost two
    (a getpid and a poll in libzmq). Returns 1 if the budget ran out (input
    may be left), 0 when drained, -1 if interrupted. */
static int s_drain(llmq_client_t *self)
{
    for (int budget = 10000; budget > 0; budget--) {
        //  The payload as libzmq's message: no zframe for a res body
        //  (s_res_body); the other paths make one when they ask.
        llmq_msg_t *msg =
            llmq_msg_recv_ex(self->sock, LLMQ_MSG_RECV_PAYLOAD_MSG);
        if (!msg)
            return errno == EAGAIN ? 0 : -1;
        self->last_recv = self->last_heard = zclock_mono();
        s_handle(self, msg);
        llmq_msg_destroy(&msg);
    }
    return 1;
}

/*  Handle what is queued; if nothing was and timeout_ms allows (-1: the
    heartbeat period), wait for input and handle it; then run the timers.
    The monitor is looked at when we wait, and at least every
    S_MONITOR_MS of a busy socket. Returns 1 if input may be left (the
    drain's budget ran out), 0, or -1 if interrupted. */
static int s_pump(llmq_client_t *self, int timeout_ms)
{
    int rc = s_drain(self);
    if (rc < 0)
        return -1;
    bool polled = false;
    if (rc == 0 && timeout_ms != 0) {
        int wait = self->heartbeat_ms / 4 > 0 ? self->heartbeat_ms / 4 : 1;
        if (timeout_ms > 0 && timeout_ms < wait)
            wait = timeout_ms;
        zmq_pollitem_t items[2] = {
            {zsock_resolve(self->sock), 0, ZMQ_POLLIN, 0},
            {self->monitor ? zsock_resolve(self->monitor) : NULL, 0, ZMQ_POLLIN,
             0}};
        int ready = zmq_poll(items, self->monitor ? 2 : 1, wait);
        if (ready == -1 && errno == EINTR)
            return -1;
        polled = true;
        if (ready > 0 && (items[0].revents & ZMQ_POLLIN))
            rc = s_drain(self);
        if (rc < 0)
            return -1;
    }
    int64_t now = zclock_mono();
    if (self->monitor && (polled || now - self->monitor_at >= S_MONITOR_MS)) {
        self->monitor_at = now;
        if (s_read_monitor(self) != 0)
            return -1;
    }
    s_timers(self);
    s_drain_to_callback(self);
    return rc;
}

static void s_drain_to_callback(llmq_client_t *self)
{
    if (!self->callback || self->hold > 0)
        return;
    llmq_result_t *result;
    while ((result = (llmq_result_t *)zlistx_detach(self->ready, NULL))) {
        self->callback(result, self->callback_arg);
        llmq_result_destroy(&result);
    }
}

//  --------------------------------------------------------------------------
//  Ping and status

int llmq_client_ping(llmq_client_t *self, int timeout_ms, char **version_p)
{
    int64_t start = zclock_mono();
    self->got_pong = false;
    s_send_ping(self);
    while (!self->got_pong) {
        int64_t left = timeout_ms - (zclock_mono() - start);
        if (left <= 0 || s_pump(self, (int)left) < 0)
            return -1;
    }
    if (version_p)
        *version_p = s_strdup_or_null(self->pong_version);
    return (int)(zclock_mono() - start);
}

cJSON *llmq_client_status(llmq_client_t *self, int timeout_ms)
{
    cJSON_Delete(self->status);
    self->status = NULL;
    llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_STATUS);
    llmq_msg_send(&msg, zsock_resolve(self->sock));
    int64_t start = zclock_mono();
    while (!self->status) {
        int64_t left = timeout_ms - (zclock_mono() - start);
        if (left <= 0 || s_pump(self, (int)left) < 0)
            return NULL;
    }
    cJSON *status = self->status;
    self->status = NULL;
    return status;
}

//  --------------------------------------------------------------------------
//  Submit

/*  "r<n>" (caller frees), or NULL: the id of the n-th request. */
static char *s_request_id(uint64_t n)
{
    char text[24];
    char *p = text + sizeof text;
    *--p = 0;
    do
        *--p = (char)('0' + n % 10);
    while (n /= 10);
    *--p = 'r';
    return strdup(p);
}

/*  Take payload (NULL: none; else moved into the request, or closed);
    queue and send the request. */
static int s_submit_msg(llmq_client_t *self, llmq_op_t op, const char *model,
                        zmq_msg_t *payload, const llmq_opts_t *opts, void *arg)
{
    if (!payload)
        return -1;
    if (!model || !*model || (int)op < 0 || op > LLMQ_OP_EMBEDDING) {
        zmq_msg_close(payload);
        return -1;
    }
    //  A frame over the protocol's limit would be dropped by the broker
    //  (and resent after every reconnect, forever): refuse it here.
    if (zmq_msg_size(payload) > (size_t)LLMQ_MAX_FRAME_SIZE - 4096) {
        zmq_msg_close(payload);
        errno = EMSGSIZE;
        return -1;
    }
    //  Window full: pump until a slot frees up.
    while (zlistx_size(self->order) >= self->window)
        if (s_pump(self, -1) < 0) {
            zmq_msg_close(payload);
            return -1;
        }
    s_request_t *req = (s_request_t *)calloc(1, sizeof(*req));
    if (!req) {
        zmq_msg_close(payload);
        return -1;
    }
    zmq_msg_init(&req->payload);
    zmq_msg_move(&req->payload, payload);
    req->id = s_request_id(++self->next_id);
    req->seq = self->next_id;
    req->op = op;
    req->model = strdup(model);
    if (!req->id || !req->model) {
        s_request_destroy(&req);
        return -1;
    }
    req->last_seq = -1;
    req->arg = arg;
    if (opts) {
        req->pool = s_strdup_or_null(opts->pool);
        req->trace = s_strdup_or_null(opts->trace);
        req->tenant = s_strdup_or_null(opts->tenant);
        req->deadline_ms = opts->deadline_ms;
        req->priority = opts->priority;
        req->max_attempts = opts->max_attempts;
        req->cache = opts->cache;
        req->on_chunk = opts->on_chunk;
        req->chunk_arg = opts->chunk_arg;
    }
    req->sent_at = zclock_mono();
    //  Coming back from idle: the liveness clock starts now, not at the
    //  last message we happened to receive long ago.
    if (zlistx_size(self->order) == 0)
        self->last_recv = self->last_heard = req->sent_at;
    req->handle = zlistx_add_end(self->order, req);
    zhashx_insert(self->pending, req->id, req);
    self->stats.sent++;
    s_send_request(self, req);
    //  Work outstanding again: heartbeat from now on, starting at once.
    if (zlistx_size(self->order) == 1)
        s_send_ping(self);
    return 0;
}

/*  s_submit_msg with the payload as a frame (taken; NULL: none). */
static int s_submit(llmq_client_t *self, llmq_op_t op, const char *model,
                    zframe_t **payload_p, const llmq_opts_t *opts, void *arg)
{
    zframe_t *frame = *payload_p;
    *payload_p = NULL;
    zmq_msg_t payload;
    int rc =
        frame && zmq_msg_init_size(&payload, zframe_size(frame)) == 0 ? 0 : -1;
    if (rc == 0)
        memcpy(zmq_msg_data(&payload), zframe_data(frame), zframe_size(frame));
    zframe_destroy(&frame);
    return rc == 0 ? s_submit_msg(self, op, model, &payload, opts, arg) : -1;
}

int llmq_client_submit(llmq_client_t *self, llmq_op_t op, const char *model,
                       const cJSON *body, const llmq_opts_t *opts, void *arg)
{
    if (!body)
        return -1;
    zframe_t *payload = llmq_value_from_json(body);
    return s_submit(self, op, model, &payload, opts, arg);
}

int llmq_client_submit_text(llmq_client_t *self, llmq_op_t op,
                            const char *model, const char *json, size_t len,
                            const llmq_opts_t *opts, void *arg)
{
    if (!json)
        return -1;
    zframe_t *payload = llmq_value_from_json_text(json, len, NULL, 0);
    return s_submit(self, op, model, &payload, opts, arg);
}

int llmq_client_submit_msgpack(llmq_client_t *self, llmq_op_t op,
                               const char *model, const void *msgpack,
                               size_t size, const llmq_opts_t *opts, void *arg)
{
    if (!msgpack || !size)
        return -1;
    //  The bytes copied once, into the message every send shares.
    zmq_msg_t payload;
    if (zmq_msg_init_size(&payload, size) != 0)
        return -1;
    memcpy(zmq_msg_data(&payload), msgpack, size);
    return s_submit_msg(self, op, model, &payload, opts, arg);
}

//  --------------------------------------------------------------------------
//  Poll, wait, cancel

llmq_result_t *llmq_client_poll(llmq_client_t *self, int timeout_ms)
{
    int64_t start = zclock_mono();
    while (zlistx_size(self->ready) == 0) {
        if (zlistx_size(self->order) == 0)
            return NULL;
        int left = -1;
        if (timeout_ms >= 0) {
            left = (int)(timeout_ms - (zclock_mono() - start));
            if (left < 0)
                return NULL;
        }
        if (s_pump(self, left) < 0)
            return NULL;
        if (timeout_ms == 0)
            break;
    }
    return (llmq_result_t *)zlistx_detach(self->ready, NULL);
}

size_t llmq_client_wait(llmq_client_t *self, int timeout_ms)
{
    int64_t start = zclock_mono();
    while (zlistx_size(self->order) > 0) {
        int left = -1;
        if (timeout_ms >= 0) {
            left = (int)(timeout_ms - (zclock_mono() - start));
            if (left < 0)
                break;
        }
        if (s_pump(self, left) < 0)
            break;
    }
    s_drain_to_callback(self);
    return zlistx_size(self->order);
}

size_t llmq_client_outstanding(const llmq_client_t *self)
{
    return zlistx_size(self->order);
}

size_t llmq_client_ready(const llmq_client_t *self)
{
    return zlistx_size(self->ready);
}

int llmq_client_cancel(llmq_client_t *self, const char *id)
{
    if (!id || !zhashx_lookup(self->pending, id))
        return -1;
    llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_CANCEL);
    llmq_msg_set_id(msg, id);
    return llmq_msg_send(&msg, zsock_resolve(self->sock));
}

//  --------------------------------------------------------------------------
//  Event-loop integration

int llmq_client_fd(const llmq_client_t *self)
{
    return self && self->sock ? (int)zsock_fd(self->sock) : -1;
}

int llmq_client_process(llmq_client_t *self)
{
    return s_pump(self, 0);
}

int llmq_client_cancel_arg(llmq_client_t *self, const void *arg)
{
    s_request_t *req = (s_request_t *)zlistx_first(self->order);
    while (req && req->arg != arg)
        req = (s_request_t *)zlistx_next(self->order);
    return req ? llmq_client_cancel(self, req->id) : -1;
}

//  --------------------------------------------------------------------------
//  Synchronous calls

/*  Take the ready result whose arg is in [lo, hi), or NULL. */
static llmq_result_t *s_take_ready(llmq_client_t *self, const void *lo,
                                   const void *hi)
{
    llmq_result_t *result = (llmq_result_t *)zlistx_first(self->ready);
    while (result) {
        if ((const char *)result->arg >= (const char *)lo &&
            (const char *)result->arg < (const char *)hi) {
            void *handle = zlistx_cursor(self->ready);
            return (llmq_result_t *)zlistx_detach(self->ready, handle);
        }
        result = (llmq_result_t *)zlistx_next(self->ready);
    }
    return NULL;
}

/*  A synchronous call was interrupted: nobody will collect the results of
    its requests (args in [lo, hi)), so drop those that are ready and mark
    the outstanding ones to be dropped when they finish. */
static void s_orphan(llmq_client_t *self, const void *lo, const void *hi)
{
    llmq_result_t *result;
    while ((result = s_take_ready(self, lo, hi)))
        llmq_result_destroy(&result);
    s_request_t *req = (s_request_t *)zlistx_first(self->order);
    while (req) {
        if ((const char *)req->arg >= (const char *)lo &&
            (const char *)req->arg < (const char *)hi) {
            req->orphan = true;
            req->arg = NULL;
        }
        req = (s_request_t *)zlistx_next(self->order);
    }
}

/*  Submit with a private token as arg and pump until its result is back. */
static llmq_result_t *s_infer(llmq_client_t *self, llmq_op_t op,
                              const char *model, zframe_t **payload_p,
                              const llmq_opts_t *opts)
{
    char token;
    self->hold++;
    llmq_result_t *result = NULL;
    if (s_submit(self, op, model, payload_p, opts, &token) == 0) {
        while (!(result = s_take_ready(self, &token, &token + 1)))
            if (s_pump(self, -1) < 0) {
                //  Interrupted: the token dies with this call.
                result = s_take_ready(self, &token, &token + 1);
                if (!result)
                    s_orphan(self, &token, &token + 1);
                break;
            }
    }
    self->hold--;
    if (result)
        result->arg = NULL;
    s_drain_to_callback(self);
    return result;
}

llmq_result_t *llmq_infer(llmq_client_t *self, llmq_op_t op, const char *model,
                          const cJSON *body, const llmq_opts_t *opts)
{
    if (!body)
        return NULL;
    zframe_t *payload = llmq_value_from_json(body);
    return s_infer(self, op, model, &payload, opts);
}

llmq_result_t *llmq_infer_text(llmq_client_t *self, llmq_op_t op,
                               const char *model, const char *json,
                               const llmq_opts_t *opts)
{
    if (!json)
        return NULL;
    zframe_t *payload = llmq_value_from_json_text(json, strlen(json), NULL, 0);
    return s_infer(self, op, model, &payload, opts);
}

llmq_result_t *llmq_stream(llmq_client_t *self, const char *model,
                           const cJSON *body, llmq_chunk_fn *on_chunk,
                           void *arg)
{
    llmq_opts_t opts = {0};
    opts.on_chunk = on_chunk;
    opts.chunk_arg = arg;
    return llmq_infer(self, LLMQ_OP_CHAT, model, body, on_chunk ? &opts : NULL);
}

llmq_result_t **llmq_infer_many(llmq_client_t *self, llmq_op_t op,
                                const char *model, const cJSON *const *bodies,
                                size_t count, const llmq_opts_t *opts)
{
    llmq_result_t **results =
        (llmq_result_t **)calloc(count ? count : 1, sizeof(*results));
    //  Each request's arg points at its own slot: results land by index.
    char *slots = (char *)calloc(count ? count : 1, 1);
    if (!results || !slots) {
        free(results);
        free(slots);
        return NULL;
    }
    self->hold++;
    size_t submitted = 0, done = 0;
    bool interrupted = false;
    while (done < count && !interrupted) {
        //  Keep the window full; submit() itself pumps when it is.
        while (submitted < count && zlistx_size(self->order) < self->window) {
            llmq_result_t *failed = NULL;
            if (llmq_client_submit(self, op, model, bodies[submitted], opts,
                                   slots + submitted) != 0) {
                failed = (llmq_result_t *)calloc(1, sizeof(*failed));
                if (failed)
                    s_set_error(failed, "invalid_request",
                                "request body could not be encoded", 0, false);
                results[submitted] = failed;
                done++;
            }
            submitted++;
        }
        llmq_result_t *result;
        while ((result = s_take_ready(self, slots, slots + count))) {
            size_t index = (size_t)((char *)result->arg - slots);
            result->arg = NULL;
            results[index] = result;
            done++;
        }
        if (done < count && s_pump(self, -1) < 0)
            interrupted = true;
    }
    if (interrupted)
        s_orphan(self, slots, slots + count);
    self->hold--;
    free(slots);
    if (interrupted) {
        for (size_t i = 0; i < count; i++)
            llmq_result_destroy(&results[i]);
        free(results);
        return NULL;
    }
    return results;
}

//  --------------------------------------------------------------------------
//  Results and names

void llmq_result_destroy(llmq_result_t **self_p)
{
    if (self_p && *self_p) {
        llmq_result_t *self = *self_p;
        free(self->id);
        cJSON_Delete(self->body);
        free(self->worker);
        free(self->error_code);
        free(self->error_message);
        free(self->request_id);
        free(self->model);
        free(self->trace);
        free(self->error_body);
        free(self->body_msgpack);
        free(self);
        *self_p = NULL;
    }
}

const char *llmq_result_text(const llmq_result_t *self)
{
    if (!self || !self->ok || !self->body)
        return NULL;
    cJSON *choice =
        cJSON_GetArrayItem(cJSON_GetObjectItem(self->body, "choices"), 0);
    cJSON *content =
        cJSON_GetObjectItem(cJSON_GetObjectItem(choice, "message"), "content");
    if (!cJSON_IsString(content))
        content = cJSON_GetObjectItem(choice, "text");
    return cJSON_IsString(content) ? content->valuestring : NULL;
}

static const char *s_op_names[] = {"chat", "completion", "embedding"};

const char *llmq_op_name(llmq_op_t op)
{
    return (int)op >= 0 && op <= LLMQ_OP_EMBEDDING ? s_op_names[op] : "chat";
}

int llmq_op_from_name(const char *name)
{
    for (int i = 0; name && i < 3; i++)
        if (streq(name, s_op_names[i]))
            return i;
    return -1;
}

//  --------------------------------------------------------------------------
//  Batches: one batch.* message, one answer (two for batch.get, n + 1 for
//  the list). Every batch message is idempotent on the broker, so a call
//  that hears nothing for the liveness timeout resends on a fresh socket
//  (the broker may have restarted) until the give-up time.

#define S_BATCH_GIVE_UP_MS 60000

bool llmq_batch_state_final(const char *state)
{
    return state && (streq(state, "completed") || streq(state, "cancelled") ||
                     streq(state, "expired") || streq(state, "failed"));
}

const char *llmq_batch_error(const llmq_client_t *self)
{
    return self->batch_error;
}

static void s_batch_drop_in(llmq_client_t *self)
{
    llmq_msg_t *m;
    while ((m = (llmq_msg_t *)zlist_pop(self->batch_in)))
        llmq_msg_destroy(&m);
}

/*  Send msg (taken) and collect the answers for its batch into out until one
    of type `last` arrives (for an add: with the same seq). An error naming
    the batch (or naming nothing) ends the call with -1. */
static int s_batch_call(llmq_client_t *self, llmq_msg_t *msg,
                        llmq_msg_type_t last, zlist_t *out)
{
    self->batch_error[0] = '\0';
    if (!msg)
        return -1;
    if (self->tenant && !llmq_msg_tenant(msg))
        llmq_msg_set_tenant(msg, self->tenant);
    if (!self->batch_in && !(self->batch_in = zlist_new())) {
        llmq_msg_destroy(&msg);
        return -1;
    }
    char batch[80];
    snprintf(batch, sizeof batch, "%s",
             llmq_msg_batch(msg) ? llmq_msg_batch(msg) : "");
    bool is_add = llmq_msg_type(msg) == LLMQ_MSG_BATCH_ADD;
    int64_t seq = llmq_msg_seq(msg);
    bool is_list = llmq_msg_type(msg) == LLMQ_MSG_BATCH_GET && !*batch;
    int give_up = self->give_up_ms > 0 ? self->give_up_ms : S_BATCH_GIVE_UP_MS;
    int64_t start = zclock_mono();
    int rc = -1;
    while (rc == -1) {
        s_batch_drop_in(self);
        llmq_msg_t *copy = llmq_msg_dup(msg);
        if (!copy || llmq_msg_send(&copy, zsock_resolve(self->sock))) {
            snprintf(self->batch_error, sizeof self->batch_error,
                     "internal: cannot send %s",
                     llmq_msg_type_name(llmq_msg_type(msg)));
            break;
        }
        int64_t attempt_start = zclock_mono();
        bool done = false;
        while (!done) {
            int64_t now = zclock_mono();
            if (now - start >= give_up) {
                snprintf(self->batch_error, sizeof self->batch_error,
                         "timeout: broker %s did not answer", self->endpoint);
                goto finish;
            }
            if (now - attempt_start >= self->timeout_ms)
                break; //  silent: resend on a new socket
            if (s_pump(self, (int)(self->timeout_ms - (now - attempt_start))) <
                0) {
                snprintf(self->batch_error, sizeof self->batch_error,
                         "interrupted: batch call interrupted");
                goto finish;
            }
            llmq_msg_t *m;
            while (!done && (m = (llmq_msg_t *)zlist_pop(self->batch_in))) {
                const char *mb = llmq_msg_batch(m);
                llmq_msg_type_t t = llmq_msg_type(m);
                if (t == LLMQ_MSG_ERROR && (!mb || streq(mb, batch))) {
                    snprintf(self->batch_error, sizeof self->batch_error,
                             "%s: %s",
                             llmq_msg_code(m) ? llmq_msg_code(m) : "error",
                             llmq_msg_message(m) ? llmq_msg_message(m) : "");
                    llmq_msg_destroy(&m);
                    rc = -2;
                    done = true;
                } else if (!mb ||
                           (!streq(mb, batch) &&
                            !(is_list && t == LLMQ_MSG_BATCH_STATUS)) ||
                           (is_add && t == LLMQ_MSG_BATCH_ACK &&
                            llmq_msg_seq(m) != seq))
                    llmq_msg_destroy(&m); //  stale: an earlier call's
                else {
                    bool end = t == last;
                    zlist_append(out, m);
                    if (end) {
                        rc = 0;
                        done = true;
                    }
                }
            }
        }
        if (rc == -1) {
            //  Nothing complete: forget partial answers, resend.
            llmq_msg_t *m;
            while ((m = (llmq_msg_t *)zlist_pop(out)))
                llmq_msg_destroy(&m);
            s_reconnect(self, "silent on a batch call");
        }
    }
finish:
    llmq_msg_destroy(&msg);
    s_batch_drop_in(self);
    if (rc != 0) {
        llmq_msg_t *m;
        while ((m = (llmq_msg_t *)zlist_pop(out)))
            llmq_msg_destroy(&m);
    }
    return rc == 0 ? 0 : -1;
}

static void s_batch_status_fill(llmq_batch_status_t *st, const llmq_msg_t *m)
{
    memset(st, 0, sizeof *st);
    snprintf(st->batch, sizeof st->batch, "%s",
             llmq_msg_batch(m) ? llmq_msg_batch(m) : "");
    snprintf(st->state, sizeof st->state, "%s",
             llmq_msg_state(m) ? llmq_msg_state(m) : "");
    snprintf(st->mode, sizeof st->mode, "%s",
             llmq_msg_mode(m) ? llmq_msg_mode(m) : "");
    snprintf(st->model, sizeof st->model, "%s",
             llmq_msg_model(m) ? llmq_msg_model(m) : "");
    st->total = llmq_msg_counts_total(m);
    st->done = llmq_msg_counts_done(m);
    st->failed = llmq_msg_counts_failed(m);
    bool provider = llmq_msg_has(m, LLMQ_F_provider_done);
    st->provider_done = provider ? llmq_msg_provider_done(m) : -1;
    st->provider_failed = provider ? llmq_msg_provider_failed(m) : -1;
    st->prompt_tokens = llmq_msg_usage_prompt_tokens(m);
    st->completion_tokens = llmq_msg_usage_completion_tokens(m);
    st->total_tokens = llmq_msg_usage_total_tokens(m);
    st->cost_usd = llmq_msg_usage_cost_usd(m);
}

/*  Run a batch call (takes msg): the first answer of type last goes to
    *answer_p and the first batch.status before it to *status_p (either may
    be NULL; the caller destroys what it gets); the rest is dropped. */
static int s_batch_simple(llmq_client_t *self, llmq_msg_t *msg,
                          llmq_msg_type_t last, llmq_msg_t **status_p,
                          llmq_msg_t **answer_p)
{
    zlist_t *out = zlist_new();
    if (!out) {
        llmq_msg_destroy(&msg);
        return -1;
    }
    int rc = s_batch_call(self, msg, last, out);
    llmq_msg_t *m;
    while ((m = (llmq_msg_t *)zlist_pop(out))) {
        if (answer_p && !*answer_p && llmq_msg_type(m) == last)
            *answer_p = m;
        else if (status_p && !*status_p &&
                 llmq_msg_type(m) == LLMQ_MSG_BATCH_STATUS)
            *status_p = m;
        else
            llmq_msg_destroy(&m);
    }
    zlist_destroy(&out);
    return rc;
}

int llmq_batch_open(llmq_client_t *self, const char *batch, const char *model,
                    const llmq_batch_opts_t *opts)
{
    if (!batch || !*batch || !model)
        return -1;
    llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_BATCH_OPEN);
    llmq_msg_set_batch(msg, batch);
    llmq_msg_set_model(msg, model);
    llmq_msg_set_mode(msg, opts && opts->mode ? opts->mode : "auto");
    if (opts && opts->pool)
        llmq_msg_set_pool(msg, opts->pool);
    if (opts && opts->op)
        llmq_msg_set_op(msg, opts->op);
    if (opts && opts->completion_window)
        llmq_msg_set_completion_window(msg, opts->completion_window);
    if (opts && opts->priority)
        llmq_msg_set_priority(msg, opts->priority);
    return s_batch_simple(self, msg, LLMQ_MSG_BATCH_ACK, NULL, NULL);
}

int llmq_batch_add(llmq_client_t *self, const char *batch, int64_t seq,
                   const cJSON *items, int64_t *accepted_p)
{
    if (!batch || !cJSON_IsArray(items))
        return -1;
    zframe_t *payload = llmq_value_from_json(items);
    if (!payload)
        return -1;
    llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_BATCH_ADD);
    llmq_msg_set_batch(msg, batch);
    llmq_msg_set_seq(msg, seq);
    llmq_msg_set_payload(msg, &payload);
    llmq_msg_t *ack = NULL;
    int rc = s_batch_simple(self, msg, LLMQ_MSG_BATCH_ACK, NULL, &ack);
    if (rc == 0 && accepted_p)
        *accepted_p = llmq_msg_accepted(ack);
    llmq_msg_destroy(&ack);
    return rc;
}

int llmq_batch_close(llmq_client_t *self, const char *batch, int64_t *count_p)
{
    if (!batch)
        return -1;
    llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_BATCH_CLOSE);
    llmq_msg_set_batch(msg, batch);
    llmq_msg_t *ack = NULL;
    int rc = s_batch_simple(self, msg, LLMQ_MSG_BATCH_ACK, NULL, &ack);
    if (rc == 0 && count_p)
        *count_p = llmq_msg_count(ack);
    llmq_msg_destroy(&ack);
    return rc;
}

int llmq_batch_cancel(llmq_client_t *self, const char *batch,
                      llmq_batch_status_t *status)
{
    if (!batch)
        return -1;
    llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_BATCH_CANCEL);
    llmq_msg_set_batch(msg, batch);
    llmq_msg_t *st = NULL;
    int rc = s_batch_simple(self, msg, LLMQ_MSG_BATCH_STATUS, NULL, &st);
    if (rc == 0 && status)
        s_batch_status_fill(status, st);
    llmq_msg_destroy(&st);
    return rc;
}

/*  The results of one batch.results page, as client results. */
typedef struct {
    llmq_result_t **results; /* room for every item of the page */
    size_t count;
    bool raw; /* bodies kept as msgpack bytes (raw bodies) */
} s_page_t;

/*  One result item {custom_id, ok, body | error, usage} as a client
    result. */
static int s_batch_result(const llmq_result_item_t *e, void *arg)
{
    s_page_t *page = (s_page_t *)arg;
    llmq_result_t *r = (llmq_result_t *)calloc(1, sizeof(*r));
    if (!r)
        return 0;
    r->id = strdup(e->custom_id ? e->custom_id : "");
    r->ok = e->ok;
    if (e->body && page->raw) {
        if ((r->body_msgpack = s_memdup(e->body, e->body_size)))
            r->body_msgpack_size = e->body_size;
    } else if (e->body)
        r->body = llmq_value_to_json(e->body, e->body_size, NULL, 0);
    r->prompt_tokens = e->prompt_tokens;
    r->completion_tokens = e->completion_tokens;
    r->total_tokens = e->total_tokens;
    r->cost_usd = e->cost_usd;
    if (!r->ok) {
        const char *code = e->error_code ? e->error_code : "internal";
        bool retryable = e->has_retryable
                             ? e->error_retryable
                             : llmq_err_retryable(llmq_err_from_name(code));
        s_set_error(r, code, e->error_message ? e->error_message : "",
                    (int)e->error_status, retryable);
    }
    page->results[page->count++] = r;
    return 0;
}

/*  The results array of a batch.results message; NULL on failure. */
static llmq_result_t **s_batch_results(llmq_msg_t *m, bool raw, size_t *count_p)
{
    zframe_t *payload = llmq_msg_payload(m);
    const void *data = payload ? zframe_data(payload) : NULL;
    size_t size = payload ? zframe_size(payload) : 0;
    long n = llmq_payload_each_result(data, size, NULL, NULL, NULL, 0);
    s_page_t page = {NULL, 0, raw};
    page.results =
        (llmq_result_t **)calloc(n > 0 ? (size_t)n : 1, sizeof(*page.results));
    if (page.results && n > 0)
        llmq_payload_each_result(data, size, s_batch_result, &page, NULL, 0);
    *count_p = page.count;
    return page.results;
}

int llmq_batch_get(llmq_client_t *self, const char *batch, int64_t after,
                   llmq_batch_status_t *status, llmq_result_t ***results_p,
                   size_t *count_p, int64_t *cursor_p, bool *final_p)
{
    if (!batch || !*batch)
        return -1;
    llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_BATCH_GET);
    llmq_msg_set_batch(msg, batch);
    llmq_msg_set_after(msg, after);
    llmq_msg_t *st = NULL, *rs = NULL;
    int rc = s_batch_simple(self, msg, LLMQ_MSG_BATCH_RESULTS, &st, &rs);
    if (st && status)
        s_batch_status_fill(status, st);
    if (rs && cursor_p)
        *cursor_p = llmq_msg_cursor(rs);
    if (rs && final_p)
        *final_p = llmq_msg_final(rs);
    if (rs && results_p) {
        size_t k = 0;
        *results_p = s_batch_results(rs, self->raw_bodies, &k);
        if (count_p)
            *count_p = k;
        if (!*results_p)
            rc = -1;
    }
    llmq_msg_destroy(&st);
    llmq_msg_destroy(&rs);
    return rc;
}

llmq_result_t **llmq_batch_results(llmq_client_t *self, const char *batch,
                                   size_t *count_p)
{
    *count_p = 0;
    size_t count = 0, size = 0;
    llmq_result_t **all = NULL;
    int64_t after = 0;
    while (true) {
        llmq_batch_status_t st;
        llmq_result_t **page = NULL;
        size_t n = 0;
        int64_t cursor = after;
        bool final = false;
        if (llmq_batch_get(self, batch, after, &st, &page, &n, &cursor, &final))
            goto failed;
        if (!llmq_batch_state_final(st.state) && after == 0) {
            for (size_t i = 0; i < n; i++)
                llmq_result_destroy(&page[i]);
            free(page);
            snprintf(self->batch_error, sizeof self->batch_error,
                     "not_finished: batch %s is %s (%lld of %lld done)", batch,
                     st.state, (long long)st.done, (long long)st.total);
            goto failed;
        }
        if (count + n > size) {
            size_t grow = (count + n) * 2 + 16;
            llmq_result_t **bigger =
                (llmq_result_t **)realloc(all, grow * sizeof(*all));
            if (!bigger) {
                for (size_t i = 0; i < n; i++)
                    llmq_result_destroy(&page[i]);
                free(page);
                goto failed;
            }
            all = bigger;
            size = grow;
        }
        for (size_t i = 0; i < n; i++)
            all[count++] = page[i];
        free(page);
        if (final)
            break;
        if (cursor <= after && n == 0) {
            snprintf(self->batch_error, sizeof self->batch_error,
                     "internal: batch %s results stopped at %lld", batch,
                     (long long)after);
            goto failed;
        }
        after = cursor;
    }
    *count_p = count;
    if (!all)
        all = (llmq_result_t **)calloc(1, sizeof(*all));
    return all;
failed:
    for (size_t i = 0; i < count; i++)
        llmq_result_destroy(&all[i]);
    free(all);
    return NULL;
}

llmq_batch_status_t *llmq_batch_list(llmq_client_t *self, size_t *count_p)
{
    *count_p = 0;
    llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_BATCH_GET);
    llmq_msg_set_batch(msg, ""); //  "" = list (PROTOCOL.md)
    zlist_t *out = zlist_new();
    if (!out) {
        llmq_msg_destroy(&msg);
        return NULL;
    }
    int rc = s_batch_call(self, msg, LLMQ_MSG_BATCH_ACK, out);
    llmq_batch_status_t *list =
        rc == 0
            ? (llmq_batch_status_t *)calloc(zlist_size(out) + 1, sizeof(*list))
            : NULL;
    size_t n = 0;
    llmq_msg_t *m;
    while ((m = (llmq_msg_t *)zlist_pop(out))) {
        if (list && llmq_msg_type(m) == LLMQ_MSG_BATCH_STATUS)
            s_batch_status_fill(&list[n++], m);
        llmq_msg_destroy(&m);
    }
    zlist_destroy(&out);
    *count_p = n;
    return list;
}

//  --------------------------------------------------------------------------
//  Selftest: a fake broker actor on a real TCP socket. It answers ping with
//  pong and every req with an ok res echoing the request body; told "HOLD"
//  it swallows everything (a hung or dead broker), told "RELEASE" it answers
//  everything it swallowed, resends included, so the client sees duplicates.

static void s_fake_res(zsock_t *router, llmq_msg_t *req)
{
    if (llmq_msg_stream(req)) {
        for (int seq = 0; seq < 3; seq++) {
            llmq_msg_t *chunk = llmq_msg_new(LLMQ_MSG_CHUNK);
            llmq_msg_set_routing_id(chunk, llmq_msg_routing_id(req));
            llmq_msg_set_id(chunk, llmq_msg_id(req));
            llmq_msg_set_seq(chunk, seq);
            char text[64];
            snprintf(text, sizeof(text),
                     "{\"choices\":[{\"delta\":{\"content\":\"t%d \"}}]}", seq);
            zframe_t *payload =
                llmq_value_from_json_text(text, strlen(text), NULL, 0);
            llmq_msg_set_payload(chunk, &payload);
            llmq_msg_send(&chunk, zsock_resolve(router));
        }
    }
    llmq_msg_t *res = llmq_msg_new(LLMQ_MSG_RES);
    llmq_msg_set_routing_id(res, llmq_msg_routing_id(req));
    llmq_msg_set_id(res, llmq_msg_id(req));
    zframe_t *body = llmq_msg_payload(req);
    cJSON *json =
        body ? llmq_value_to_json(zframe_data(body), zframe_size(body), NULL, 0)
             : NULL;
    cJSON *fail = cJSON_GetObjectItem(json, "fail");
    if (cJSON_IsString(fail)) {
        llmq_msg_set_failure(res, llmq_err_from_name(fail->valuestring), 400,
                             "asked to fail");
    } else {
        llmq_msg_set_ok(res, true);
        llmq_msg_set_usage_prompt_tokens(res, 3);
        llmq_msg_set_usage_completion_tokens(res, 4);
        llmq_msg_set_usage_total_tokens(res, 7);
        llmq_msg_set_usage_cost_usd(res, 0.5);
        llmq_msg_set_worker(res, "fake");
        llmq_msg_set_attempts(res, 1);
        cJSON *answer = cJSON_CreateObject();
        cJSON *choices = cJSON_AddArrayToObject(answer, "choices");
        cJSON *choice = cJSON_CreateObject();
        cJSON_AddItemToArray(choices, choice);
        cJSON *message = cJSON_AddObjectToObject(choice, "message");
        cJSON *echo = cJSON_GetObjectItem(json, "echo");
        cJSON_AddStringToObject(message, "content",
                                cJSON_IsString(echo) ? echo->valuestring : "?");
        zframe_t *payload = llmq_value_from_json(answer);
        llmq_msg_set_payload(res, &payload);
        cJSON_Delete(answer);
    }
    cJSON_Delete(json);
    llmq_msg_send(&res, zsock_resolve(router));
}

static void s_fake_broker(zsock_t *pipe, void *args)
{
    int want = args ? *(int *)args : 0;
    zsock_t *router = zsock_new(ZMQ_ROUTER);
    //  A reconnecting client reuses its routing id: let the new connection
    //  take it over from the old one.
    zsock_set_router_handover(router, 1);
    int port = want ? -1 : zsock_bind(router, "tcp://127.0.0.1:*");
    if (want) {
        //  The previous broker's socket is closed by ZeroMQ's I/O thread
        //  after it returned: retry until the port is free again.
        for (int tries = 0; tries < 500 && port < 0; tries++)
            if ((port = zsock_bind(router, "tcp://127.0.0.1:%d", want)) < 0)
                zclock_sleep(10);
    }
    zsock_signal(pipe, 0);
    zsock_send(pipe, "i", port);
    zpoller_t *poller = zpoller_new(pipe, router, NULL);
    zlistx_t *held = zlistx_new();
    zlistx_set_destructor(held, (zlistx_destructor_fn *)llmq_msg_destroy);
    bool holding = false;
    while (true) {
        zsock_t *which = (zsock_t *)zpoller_wait(poller, -1);
        if (which == pipe) {
            char *command = zstr_recv(pipe);
            if (!command || streq(command, "$TERM")) {
                zstr_free(&command);
                break;
            }
            if (streq(command, "HOLD"))
                holding = true;
            else if (streq(command, "COUNT")) {
                zstr_free(&command);
                zsock_send(pipe, "i", (int)zlistx_size(held));
                continue;
            } else if (streq(command, "RELEASE")) {
                holding = false;
                llmq_msg_t *req;
                while ((req = (llmq_msg_t *)zlistx_detach(held, NULL))) {
                    s_fake_res(router, req);
                    llmq_msg_destroy(&req);
                }
            }
            zstr_free(&command);
            zsock_signal(pipe, 0);
        } else if (which == router) {
            llmq_msg_t *msg = llmq_msg_recv(zsock_resolve(router));
            if (!msg)
                break;
            if (holding && llmq_msg_type(msg) == LLMQ_MSG_REQ)
                zlistx_add_end(held, msg);
            else {
                if (llmq_msg_type(msg) == LLMQ_MSG_PING && !holding) {
                    llmq_msg_t *pong = llmq_msg_new(LLMQ_MSG_PONG);
                    llmq_msg_set_routing_id(pong, llmq_msg_routing_id(msg));
                    llmq_msg_set_broker(pong, "fake");
                    llmq_msg_set_version(pong, "0");
                    llmq_msg_set_time_ms(pong, zclock_time());
                    llmq_msg_send(&pong, zsock_resolve(router));
                } else if (llmq_msg_type(msg) == LLMQ_MSG_REQ)
                    s_fake_res(router, msg);
                llmq_msg_destroy(&msg);
            }
        } else
            break;
    }
    zlistx_destroy(&held);
    zpoller_destroy(&poller);
    zsock_destroy(&router);
}

void llmq_client_fake_broker(zsock_t *pipe, void *args)
{
    s_fake_broker(pipe, args);
}

static int s_test_callbacks = 0;
static void s_test_callback(llmq_result_t *result, void *arg)
{
    (void)arg;
    if (result->ok)
        s_test_callbacks++;
}

static int s_test_chunks = 0;
static void s_test_chunk(const char *id, const cJSON *chunk, const char *delta,
                         void *arg)
{
    (void)id;
    (void)chunk;
    (void)arg;
    if (*delta == 't')
        s_test_chunks++;
}

#include "llmq_check.h"
#define CHECK(cond) LLMQ_CHECK_COUNT(cond, failures)

//  The selftest's state from step to step: the fake broker, its endpoint,
//  the client under test and a request body.
typedef struct {
    zactor_t *broker;          //  The fake broker
    int port;                  //  Its port, kept over a restart
    char endpoint[64];         //  tcp://127.0.0.1:port
    llmq_client_t *client;     //  The client under test
    cJSON *body;               //  A request body the steps share
    llmq_client_stats_t stats; //  The client's stats, last read
    bool verbose;              //  The test's -v
} s_test_fx_t;

//  Tells the fake broker command and waits for its signal.
static void s_test_tell(s_test_fx_t *fx, const char *command)
{
    zstr_send(fx->broker, command);
    zsock_wait(fx->broker);
}

//  Polls the client's results until none comes within timeout ms;
//  returns how many were ok.
static int s_test_drain(llmq_client_t *client, int timeout)
{
    int ok = 0;
    llmq_result_t *result;
    while ((result = llmq_client_poll(client, timeout))) {
        ok += result->ok;
        llmq_result_destroy(&result);
    }
    return ok;
}

//  A body over the protocol's frame limit is refused, not sent.
static int s_test_too_big(llmq_client_t *lonely)
{
    int failures = 0;
    size_t big = (size_t)LLMQ_MAX_FRAME_SIZE + 16;
    char *json = (char *)malloc(big + 16);
    if (json && lonely) {
        memcpy(json, "{\"x\":\"", 6);
        memset(json + 6, 'a', big);
        memcpy(json + 6 + big, "\"}", 3);
        errno = 0;
        CHECK(llmq_client_submit_text(lonely, LLMQ_OP_CHAT, "m", json, big + 8,
                                      NULL, NULL) == -1);
        CHECK(errno == EMSGSIZE);
        CHECK(llmq_client_outstanding(lonely) == 0);
    }
    free(json);
    return failures;
}

//  No broker answers (a socket that takes our messages and never replies):
//  a call gives up after the default bound, here set by LLMQ_GIVE_UP_MS,
//  with a clear error, instead of hanging.
static int s_test_mute(s_test_fx_t *fx)
{
    (void)fx;
    int failures = 0;
    zsock_t *mute = zsock_new(ZMQ_ROUTER);
    int mute_port = mute ? zsock_bind(mute, "tcp://127.0.0.1:*") : -1;
    CHECK(mute_port > 0);
    char mute_ep[64];
    snprintf(mute_ep, sizeof mute_ep, "tcp://127.0.0.1:%d", mute_port);
    setenv("LLMQ_GIVE_UP_MS", "600ms", 1);
    llmq_client_t *lonely = llmq_client_new(mute_ep);
    unsetenv("LLMQ_GIVE_UP_MS");
    CHECK(lonely);
    llmq_client_set_timeout(lonely, 200);
    int64_t start = zclock_mono();
    llmq_result_t *r =
        lonely ? llmq_infer_text(lonely, LLMQ_OP_CHAT, "m", "{}", NULL) : NULL;
    CHECK(r && !r->ok && streq(r->error_code, "timeout"));
    CHECK(r && strstr(r->error_message, "broker unreachable"));
    CHECK(zclock_mono() - start >= 600);
    llmq_result_destroy(&r);
    failures += s_test_too_big(lonely);
    llmq_client_destroy(&lonely);
    zsock_destroy(&mute);
    return failures;
}

//  The client meets the fake broker; synchronous calls, ok and failed.
static int s_test_sync(s_test_fx_t *fx)
{
    int failures = 0;
    llmq_client_t *client = fx->client = llmq_client_new(fx->endpoint);
    CHECK(client);
    llmq_client_set_verbose(client, fx->verbose);
    llmq_client_set_timeout(client, 300);
    char *version = NULL;
    CHECK(llmq_client_ping(client, 5000, &version) >= 0);
    CHECK(version && streq(version, "fake 0"));
    free(version);

    llmq_result_t *result = llmq_infer_text(client, LLMQ_OP_CHAT, "m",
                                            "{\"echo\":\"hello\"}", NULL);
    CHECK(result && result->ok);
    CHECK(result && streq(llmq_result_text(result), "hello"));
    CHECK(result && result->total_tokens == 7 && result->cost_usd == 0.5);
    CHECK(result && result->worker && streq(result->worker, "fake"));
    llmq_result_destroy(&result);
    result = llmq_infer_text(client, LLMQ_OP_CHAT, "m",
                             "{\"fail\":\"invalid_request\"}", NULL);
    CHECK(result && !result->ok);
    CHECK(result && streq(result->error_code, "invalid_request"));
    CHECK(result && result->error_status == 400 && !result->error_retryable);
    llmq_result_destroy(&result);
    CHECK(llmq_infer_text(client, LLMQ_OP_CHAT, "m", "{broken", NULL) == NULL);
    CHECK(llmq_client_submit_text(client, LLMQ_OP_CHAT, NULL, "{}", 2, NULL,
                                  NULL) == -1);
    return failures;
}

//  Streaming; then async with a small window, results matched by arg.
static int s_test_async(s_test_fx_t *fx)
{
    int failures = 0;
    llmq_client_t *client = fx->client;
    fx->body = cJSON_Parse("{\"echo\":\"streamed\"}");
    llmq_result_t *result =
        llmq_stream(client, "m", fx->body, s_test_chunk, NULL);
    CHECK(result && result->ok && s_test_chunks == 3);
    llmq_result_destroy(&result);

    llmq_client_set_window(client, 4);
    int args[50];
    for (int i = 0; i < 50; i++) {
        args[i] = i;
        char json[64];
        snprintf(json, sizeof(json), "{\"echo\":\"n%d\"}", i);
        CHECK(llmq_client_submit_text(client, LLMQ_OP_CHAT, "m", json,
                                      strlen(json), NULL, &args[i]) == 0);
        CHECK(llmq_client_outstanding(client) <= 4);
    }
    int seen = 0;
    bool matched = true;
    while ((result = llmq_client_poll(client, 5000))) {
        char expect[16];
        snprintf(expect, sizeof(expect), "n%d", *(int *)result->arg);
        if (!llmq_result_text(result) ||
            !streq(llmq_result_text(result), expect))
            matched = false;
        seen++;
        llmq_result_destroy(&result);
    }
    CHECK(seen == 50 && matched);
    return failures;
}

//  Batch helper: input order. Callback mode.
static int s_test_many(s_test_fx_t *fx)
{
    int failures = 0;
    llmq_client_t *client = fx->client;
    llmq_client_set_window(client, 8);
    cJSON *bodies[20];
    for (int i = 0; i < 20; i++) {
        char json[64];
        snprintf(json, sizeof(json), "{\"echo\":\"b%d\"}", i);
        bodies[i] = cJSON_Parse(json);
    }
    llmq_result_t **many = llmq_infer_many(
        client, LLMQ_OP_CHAT, "m", (const cJSON *const *)bodies, 20, NULL);
    CHECK(many);
    for (int i = 0; many && i < 20; i++) {
        char expect[16];
        snprintf(expect, sizeof(expect), "b%d", i);
        CHECK(many[i] && many[i]->ok &&
              streq(llmq_result_text(many[i]), expect));
        llmq_result_destroy(&many[i]);
    }
    free(many);
    for (int i = 0; i < 20; i++)
        cJSON_Delete(bodies[i]);

    llmq_client_set_callback(client, s_test_callback, NULL);
    for (int i = 0; i < 10; i++)
        llmq_client_submit(client, LLMQ_OP_CHAT, "m", fx->body, NULL, NULL);
    CHECK(llmq_client_wait(client, 5000) == 0);
    CHECK(s_test_callbacks == 10);
    llmq_client_set_callback(client, NULL, NULL);
    return failures;
}

//  Lazy pirate: the broker goes silent with requests outstanding; the
//  client must reconnect and resend, and after the broker answers
//  everything (originals and resends) each request has one result.
static int s_test_pirate(s_test_fx_t *fx)
{
    int failures = 0;
    llmq_client_t *client = fx->client;
    llmq_client_set_window(client, 100);
    s_test_tell(fx, "HOLD");
    for (int i = 0; i < 10; i++)
        llmq_client_submit(client, LLMQ_OP_CHAT, "m", fx->body, NULL, NULL);
    llmq_client_stats(client, &fx->stats);
    uint64_t reconnects = fx->stats.reconnects;
    //  Pump until the client has reconnected at least once.
    while (fx->stats.reconnects == reconnects) {
        CHECK(llmq_client_poll(client, 100) == NULL);
        llmq_client_stats(client, &fx->stats);
    }
    CHECK(fx->stats.resent >= 10);
    //  Release only once the broker holds originals and resends, or its
    //  answers could race the new connection's handshake.
    int held = 0;
    for (int tries = 0; tries < 500 && held < 20; tries++) {
        llmq_client_poll(client, 10);
        zstr_send(fx->broker, "COUNT");
        zsock_recv(fx->broker, "i", &held);
    }
    CHECK(held >= 20);
    s_test_tell(fx, "RELEASE");
    CHECK(s_test_drain(client, 5000) == 10);
    return failures;
}

//  Late twins of the resent requests arrive after their results: pump
//  until the client has seen at least one and dropped it. Then give-up: a
//  silent broker fails outstanding requests only when asked.
static int s_test_twins(s_test_fx_t *fx)
{
    int failures = 0;
    llmq_client_t *client = fx->client;
    cJSON_Delete(fx->body);
    fx->body = cJSON_Parse("{\"echo\":\"x\"}");
    llmq_result_t *result;
    for (int tries = 0; tries < 50 && fx->stats.duplicates == 0; tries++) {
        result = llmq_infer(client, LLMQ_OP_CHAT, "m", fx->body, NULL);
        llmq_result_destroy(&result);
        llmq_client_stats(client, &fx->stats);
    }
    CHECK(fx->stats.duplicates >= 1);
    CHECK(llmq_client_outstanding(client) == 0);

    llmq_client_set_give_up(client, 500);
    s_test_tell(fx, "HOLD");
    result = llmq_infer(client, LLMQ_OP_CHAT, "m", fx->body, NULL);
    CHECK(result && !result->ok && streq(result->error_code, "timeout"));
    llmq_result_destroy(&result);
    return failures;
}

//  Broker restart: the new broker answers pings, so silence never comes;
//  the dropped connection must make the client resend.
static int s_test_restart(s_test_fx_t *fx)
{
    int failures = 0;
    llmq_client_t *client = fx->client;
    llmq_client_set_give_up(client, 0);
    llmq_client_set_timeout(client, 60000);
    s_test_tell(fx, "RELEASE");
    CHECK(llmq_client_ping(client, 5000, NULL) >= 0);
    s_test_tell(fx, "HOLD");
    for (int i = 0; i < 5; i++)
        llmq_client_submit(client, LLMQ_OP_CHAT, "m", fx->body, NULL, NULL);
    //  Make sure the held broker got them before it dies.
    CHECK(llmq_client_poll(client, 200) == NULL);
    zactor_destroy(&fx->broker);
    fx->broker = zactor_new(s_fake_broker, &fx->port);
    int port2 = 0;
    zsock_recv(fx->broker, "i", &port2);
    CHECK(port2 == fx->port);
    CHECK(s_test_drain(client, 10000) == 5);
    llmq_client_stats(client, &fx->stats);
    CHECK(fx->stats.reconnects >= 2);
    return failures;
}

//  A client to nowhere: ping times out, nothing crashes; names.
static int s_test_nowhere(s_test_fx_t *fx)
{
    (void)fx;
    int failures = 0;
    llmq_client_t *client = llmq_client_new("tcp://127.0.0.1:1");
    CHECK(client && llmq_client_ping(client, 100, NULL) == -1);
    llmq_client_destroy(&client);
    CHECK(llmq_client_new("bogus://") == NULL);
    CHECK(llmq_op_from_name("embedding") == LLMQ_OP_EMBEDDING);
    CHECK(llmq_op_from_name("nope") == -1);
    return failures;
}

int llmq_client_test(bool verbose)
{
    int failures = 0;
    printf(" * llmq_client: ");
    s_test_fx_t fx = {.verbose = verbose};
    fx.broker = zactor_new(s_fake_broker, NULL);
    zsock_recv(fx.broker, "i", &fx.port);
    snprintf(fx.endpoint, sizeof(fx.endpoint), "tcp://127.0.0.1:%d", fx.port);
    //  The steps, in order: each goes on from where the last one left.
    static int (*const steps[])(s_test_fx_t *) = {
        s_test_mute,   s_test_sync,  s_test_async,  s_test_many,
        s_test_pirate, s_test_twins, s_test_restart};
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++)
        failures += steps[i](&fx);
    cJSON_Delete(fx.body);
    llmq_client_destroy(&fx.client);
    llmq_client_destroy(&fx.client);
    zactor_destroy(&fx.broker);
    failures += s_test_nowhere(&fx);

    printf(failures ? "FAILED\n" : "OK\n");
    return failures ? 1 : 0;
}
