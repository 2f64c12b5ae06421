/*  gw_broker.c - the broker client inside the gateway's libevent loop.

    The inference client runs in callback mode. Its ZeroMQ socket's ZMQ_FD is
    edge-triggered, so we process the socket (llmq_client_process) when the
    fd is readable, after every submit or cancel (a send can swallow the
    edge: the "kick" event, coalesced to one per loop turn), and every
    250 ms for heartbeats and reconnects. After a reconnect the socket, and
    so its fd, is new: we compare and re-register after every process.

    Two synchronous clients never have requests outstanding, so their
    blocking calls never run our result callbacks: `stat` asks for the
    broker's status (the loop, cached 1 s, 250 ms at most), `ctl` makes the
    batch calls in the jobs actor (gw_jobs.c).
*/
#include "gw.h"

#define GW_TICK_MS 250
#define GW_STATUS_MAX_AGE_MS 1000

static void s_on_zmq(evutil_socket_t fd, short what, void *arg);

/*  Process the client's input; re-register if the socket changed. */
static void s_process(gw_t *gw)
{
    int more = llmq_client_process(gw->client);
    int fd = llmq_client_fd(gw->client);
    if (fd != gw->zmq_fd && fd >= 0) {
        event_free(gw->zmq_ev);
        gw->zmq_fd = fd;
        gw->zmq_ev =
            event_new(gw->base, fd, EV_READ | EV_PERSIST, s_on_zmq, gw);
        event_add(gw->zmq_ev, NULL);
        more = 1; //  the new socket may hold input already
    }
    if (more > 0)
        event_active(gw->kick, EV_TIMEOUT, 0);
}

static void s_on_zmq(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    s_process((gw_t *)arg);
}

static void s_on_kick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    s_process((gw_t *)arg);
}

static void s_on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    gw_t *gw = (gw_t *)arg;
    s_process(gw);
    if (gw->keys)
        gw_keys_reload(gw->keys);
}

void gw_kick(gw_t *gw)
{
    event_active(gw->kick, EV_TIMEOUT, 0);
}

//  --------------------------------------------------------------------------
//  Requests

gw_req_t *gw_req_new(gw_t *gw, struct evhttp_request *req, gw_api_t api,
                     const char *rid, const char *tenant)
{
    gw_req_t *r = (gw_req_t *)calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->gw = gw;
    r->req = req;
    r->api = api;
    snprintf(r->rid, sizeof r->rid, "%s", rid);
    r->tenant = strdup(tenant ? tenant : "default");
    r->t0 = zclock_usecs();
    //  Listed so that requests the broker never answers (a cancel that
    //  meets no broker) are still freed when the gateway stops.
    if (gw->reqs)
        r->handle = zlistx_add_end(gw->reqs, r);
    return r;
}

void gw_req_free(gw_req_t **self_p)
{
    if (self_p && *self_p) {
        gw_req_t *r = *self_p;
        if (r->conn)
            r->conn->cur = NULL;
        if (r->timer)
            event_free(r->timer);
        if (r->handle)
            zlistx_delete(r->gw->reqs, r->handle);
        free(r->model);
        free(r->tenant);
        free(r);
        *self_p = NULL;
    }
}

/*  The request is answered (or its client gone): detach it from its HTTP
    connection so a later close does not cancel a finished request. */
static void s_detach(gw_req_t *r)
{
    if (r->conn)
        r->conn->cur = NULL;
    r->conn = NULL;
    r->req = NULL;
}

/*  Time limit: answer 504 now, cancel at the broker, free on its result. */
//  The answer to a request past the gateway's time limit: 504, or the end
//  of a stream already started.
static void s_reply_time_limit(gw_req_t *r)
{
    if (r->req && !r->started)
        gw_reply_error(r->req, r->api, 504, r->rid, "server_error", "timeout",
                       NULL,
                       "the request did not finish within the gateway's "
                       "time limit");
    else if (r->req)
        gw_sse_end(r);
}

static void s_on_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    gw_req_t *r = (gw_req_t *)arg;
    s_reply_time_limit(r);
    s_detach(r);
    llmq_client_cancel_arg(r->gw->client, r);
    gw_kick(r->gw);
}

static void s_on_chunk(const char *id, const cJSON *chunk, const char *delta,
                       void *arg)
{
    (void)id;
    (void)delta;
    gw_req_t *r = (gw_req_t *)arg;
    if (!r->req)
        return;
    if (!evhttp_request_get_connection(r->req))
        return;
    r->chunks++;
    if (r->api == GW_API_ANTHROPIC)
        gw_anthropic_on_chunk(r, chunk);
    else
        gw_openai_on_chunk(r, chunk);
}

static void s_on_result(llmq_result_t *res, void *arg)
{
    (void)arg;
    gw_req_t *r = (gw_req_t *)res->arg;
    if (!r)
        return;
    if (r->req && res->error_code &&
        streq(res->error_code, "deadline_exceeded")) {
        //  The broker's deadline is our own time limit (gw_submit): which
        //  clock fires first must not change the client's answer.
        s_reply_time_limit(r);
    } else if (r->req) {
        if (r->api == GW_API_ANTHROPIC)
            gw_anthropic_on_result(r, res);
        else
            gw_openai_on_result(r, res);
        r->gw->served++;
    }
    s_detach(r);
    gw_req_free(&r);
}

/*  Send r to the broker; on success the broker's result frees r. On
    failure r is answered here and freed. Returns 0 or -1. */
int gw_submit(gw_req_t *r, const cJSON *body, const char *trace)
{
    gw_t *gw = r->gw;
    llmq_opts_t opts = {0};
    opts.trace = trace;
    opts.tenant = r->tenant; //  the API key's tenant (PROTOCOL.md: advisory)
    opts.deadline_ms = gw->cfg.timeout_ms;
    if (r->stream) {
        opts.on_chunk = s_on_chunk;
        opts.chunk_arg = r;
    }
    if (llmq_client_submit(gw->client, r->op, r->model, body, &opts, r) != 0) {
        gw_reply_error(r->req, r->api, 400, r->rid, "invalid_request_error",
                       NULL, NULL, "request cannot be sent to the broker");
        gw_req_free(&r);
        return -1;
    }
    r->conn = gw_conn_lookup(gw, r->req);
    if (r->conn)
        r->conn->cur = r;
    r->timer = evtimer_new(gw->base, s_on_timeout, r);
    struct timeval tv = {gw->cfg.timeout_ms / 1000,
                         (gw->cfg.timeout_ms % 1000) * 1000};
    evtimer_add(r->timer, &tv);
    gw_kick(gw);
    return 0;
}

//  --------------------------------------------------------------------------
//  Server-sent events

void gw_sse_start(gw_req_t *r)
{
    if (r->started || !r->req || !evhttp_request_get_connection(r->req))
        return;
    struct evkeyvalq *out = evhttp_request_get_output_headers(r->req);
    evhttp_add_header(out, "Content-Type", "text/event-stream");
    evhttp_add_header(out, "Cache-Control", "no-cache");
    evhttp_add_header(out, "x-request-id", r->rid);
    evhttp_send_reply_start(r->req, 200, "OK");
    r->started = true;
}

void gw_sse_send(gw_req_t *r, const char *event, const char *data)
{
    if (!r->req || !evhttp_request_get_connection(r->req))
        return;
    gw_sse_start(r);
    struct evbuffer *buf = evbuffer_new();
    if (event)
        evbuffer_add_printf(buf, "event: %s\n", event);
    evbuffer_add_printf(buf, "data: %s\n\n", data);
    evhttp_send_reply_chunk(r->req, buf);
    evbuffer_free(buf);
}

void gw_sse_end(gw_req_t *r)
{
    if (r->req)
        evhttp_send_reply_end(r->req); //  frees it even if the client left
    s_detach(r);
}

//  --------------------------------------------------------------------------
//  Status (models)

/*  The broker's status, at most a second old; NULL if it does not answer.
    Borrowed: valid until the next call. */
cJSON *gw_status(gw_t *gw)
{
    int64_t now = zclock_mono();
    if (gw->status && now - gw->status_at < GW_STATUS_MAX_AGE_MS)
        return gw->status;
    if (now < gw->broker_down_until)
        return gw->status;
    //  A short wait: this blocks the loop. A broker that does not answer
    //  is asked again only after two seconds (the broker decides then).
    cJSON *status = llmq_client_status(gw->stat, 250);
    if (!status) {
        gw->broker_down_until = now + 2000;
        return gw->status;
    }
    cJSON_Delete(gw->status);
    gw->status = status;
    gw->status_at = now;
    return status;
}

/*  False only when the broker's status says no live worker serves model
    (nor `*`); true when unsure, so the broker decides. */
bool gw_model_served(gw_t *gw, const char *model)
{
    cJSON *status = gw_status(gw);
    cJSON *workers = status ? cJSON_GetObjectItem(status, "workers") : NULL;
    if (!cJSON_IsArray(workers))
        return true;
    cJSON *w;
    cJSON_ArrayForEach(w, workers)
    {
        cJSON *m;
        cJSON_ArrayForEach(m, cJSON_GetObjectItem(w, "models"))
        {
            if (cJSON_IsString(m) &&
                (streq(m->valuestring, model) || streq(m->valuestring, "*")))
                return true;
        }
    }
    return false;
}

//  --------------------------------------------------------------------------
//  Start and stop

int gw_broker_start(gw_t *gw)
{
    gw->reqs = zlistx_new();
    if (!gw->reqs)
        return -1;
    llmq_client_options_t opts = {.curve_cert = gw->cfg.curve_cert,
                                  .broker_key = gw->cfg.broker_key};
    char err[512] = "";
    gw->client = llmq_client_new_with(gw->cfg.broker, &opts, err, sizeof err);
    gw->ctl = llmq_client_new_with(gw->cfg.broker, &opts, err, sizeof err);
    gw->stat = llmq_client_new_with(gw->cfg.broker, &opts, err, sizeof err);
    if (!gw->client || !gw->ctl || !gw->stat) {
        llmq_log(NULL, LLMQ_LOG_ERROR, "start_failed",
                 LLMQ_LOG_STR("broker", gw->cfg.broker),
                 LLMQ_LOG_STR("reason", err), LLMQ_LOG_END);
        return -1;
    }
    llmq_client_set_window(gw->client, 1000000);
    llmq_client_set_callback(gw->client, s_on_result, gw);
    llmq_client_set_give_up(gw->ctl, 10000);
    gw->zmq_fd = llmq_client_fd(gw->client);
    gw->zmq_ev =
        event_new(gw->base, gw->zmq_fd, EV_READ | EV_PERSIST, s_on_zmq, gw);
    gw->kick = event_new(gw->base, -1, 0, s_on_kick, gw);
    gw->tick = event_new(gw->base, -1, EV_PERSIST, s_on_tick, gw);
    struct timeval tv = {0, GW_TICK_MS * 1000};
    if (!gw->zmq_ev || !gw->kick || !gw->tick || event_add(gw->zmq_ev, NULL) ||
        event_add(gw->tick, &tv))
        return -1;
    return 0;
}

void gw_broker_stop(gw_t *gw)
{
    if (gw->zmq_ev)
        event_free(gw->zmq_ev);
    if (gw->kick)
        event_free(gw->kick);
    if (gw->tick)
        event_free(gw->tick);
    gw->zmq_ev = gw->kick = gw->tick = NULL;
    llmq_client_destroy(&gw->client);
    llmq_client_destroy(&gw->ctl);
    llmq_client_destroy(&gw->stat);
    gw_req_t *r;
    while (gw->reqs && (r = (gw_req_t *)zlistx_first(gw->reqs)))
        gw_req_free(&r);
    zlistx_destroy(&gw->reqs);
    cJSON_Delete(gw->status);
    gw->status = NULL;
}
