/*  gw_jobs.c - Files and Batches routes run off the event loop.

    Their broker calls are synchronous (batch.open/add/close/get/cancel,
    reading every result of a finished batch) and their file work can be
    large, so they run in one CZMQ actor with its own broker client (the
    `ctl` client). The loop never waits on them: inference keeps flowing
    while a batch of 50,000 results is written out or the broker is down.

    A job carries a stand-alone evhttp request (`fake`) holding a copy of
    the caller's headers and its body, so the route code reads and answers
    it exactly as it would the real one; gw_reply_raw() captures the answer
    when it is the current job's fake request (a thread-local says which).
    The actor sends the job back over its pipe; the loop copies the fake's
    output headers to the real request and sends the reply. A caller that
    left meanwhile only gets its job dropped.

    Threads: the actor touches only the job's fake request and output, the
    file store and `ctl`; the loop touches only the real request, `gone`
    and the connection record.
*/
#include "gw.h"

struct gw_job_t {
    gw_t *gw;                    /* owner */
    struct evhttp_request *req;  /* the real request (loop), NULL if gone */
    struct evhttp_request *fake; /* stand-alone copy (actor) */
    gw_conn_t *conn;             /* its connection record, or NULL */
    gw_route_fn *route;          /* what to run */
    gw_call_t call;              /* the call, with req = fake */
    char rid[72];                /* request id */
    char *tenant, *path, *query; /* owned copies for the call */
    int status;                  /* captured answer: status, 0 if none */
    struct evbuffer *out;        /* captured answer: body */
};

static _Thread_local gw_job_t *s_current;

/*  Capture the answer if req is the running job's fake; returns true then.
    Called by gw_reply_raw() before it would send. */
bool gw_job_capture(struct evhttp_request *req, int status,
                    struct evbuffer *body)
{
    if (!s_current || req != s_current->fake)
        return false;
    s_current->status = status;
    evbuffer_add_buffer(s_current->out, body);
    return true;
}

static void s_job_free(gw_job_t **job_p)
{
    gw_job_t *job = *job_p;
    if (!job)
        return;
    if (job->conn)
        job->conn->job = NULL;
    if (job->fake)
        evhttp_request_free(job->fake);
    if (job->out)
        evbuffer_free(job->out);
    free(job->tenant);
    free(job->path);
    free(job->query);
    free(job);
    *job_p = NULL;
}

static void s_actor(zsock_t *pipe, void *args)
{
    gw_t *gw = (gw_t *)args;
    zsock_signal(pipe, 0);
    while (!zsys_interrupted) {
        char *cmd = NULL;
        void *ptr = NULL;
        if (zsock_recv(pipe, "sp", &cmd, &ptr) != 0)
            break;
        bool term = cmd && streq(cmd, "$TERM");
        zstr_free(&cmd);
        if (term)
            break;
        gw_job_t *job = (gw_job_t *)ptr;
        if (!job)
            continue;
        s_current = job;
        job->route(&job->call);
        s_current = NULL;
        zsock_send(pipe, "sp", "DONE", job);
    }
    (void)gw;
}

/*  Answer one finished job on its real request. */
static void s_finish(gw_t *gw, gw_job_t *job)
{
    (void)gw;
    if (job->req) {
        struct evkeyvalq *from = evhttp_request_get_output_headers(job->fake);
        struct evkeyvalq *to = evhttp_request_get_output_headers(job->req);
        for (struct evkeyval *h = from->tqh_first; h; h = h->next.tqe_next)
            evhttp_add_header(to, h->key, h->value);
        if (job->status)
            evhttp_send_reply(job->req, job->status, NULL, job->out);
        else
            gw_reply_error(job->req, GW_API_OPENAI, 500, job->rid,
                           "server_error", NULL, NULL, "no answer");
    }
    s_job_free(&job);
}

static void s_on_done(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    gw_t *gw = (gw_t *)arg;
    while (zsock_events(gw->jobs) & ZMQ_POLLIN) {
        char *cmd = NULL;
        void *ptr = NULL;
        if (zsock_recv(gw->jobs, "sp", &cmd, &ptr) != 0)
            break;
        zstr_free(&cmd);
        if (ptr)
            s_finish(gw, (gw_job_t *)ptr);
    }
}

/*  A copy of the caller's request the actor may read on its own. */
static struct evhttp_request *s_fake(struct evhttp_request *req)
{
    struct evhttp_request *fake = evhttp_request_new(NULL, NULL);
    if (!fake)
        return NULL;
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    for (struct evkeyval *h = in->tqh_first; h; h = h->next.tqe_next)
        evhttp_add_header(evhttp_request_get_input_headers(fake), h->key,
                          h->value);
    evbuffer_add_buffer(evhttp_request_get_input_buffer(fake),
                        evhttp_request_get_input_buffer(req));
    return fake;
}

void gw_jobs_submit(gw_call_t *c, gw_route_fn *route)
{
    gw_job_t *job = (gw_job_t *)calloc(1, sizeof *job);
    if (!job || !(job->fake = s_fake(c->req)) || !(job->out = evbuffer_new())) {
        s_job_free(&job);
        gw_reply_error(c->req, GW_API_OPENAI, 500, c->rid, "server_error", NULL,
                       NULL, "out of memory");
        return;
    }
    job->gw = c->gw;
    job->req = c->req;
    job->route = route;
    snprintf(job->rid, sizeof job->rid, "%s", c->rid);
    job->tenant = strdup(c->tenant ? c->tenant : "default");
    job->path = strdup(c->path);
    job->query = c->query ? strdup(c->query) : NULL;
    job->call = *c;
    job->call.req = job->fake;
    job->call.rid = job->rid;
    job->call.tenant = job->tenant;
    job->call.path = job->path;
    job->call.query = job->query;
    job->call.trace = NULL;
    job->conn = gw_conn_lookup(c->gw, c->req);
    if (job->conn)
        job->conn->job = job;
    zsock_send(c->gw->jobs, "sp", "JOB", job);
    event_active(c->gw->jobs_kick, EV_TIMEOUT, 0); //  the send may eat the edge
}

/*  The job's caller left: drop its answer when it comes back. */
void gw_job_gone(gw_job_t *job)
{
    if (job->req && evhttp_request_get_connection(job->req) == NULL)
        evhttp_request_free(job->req);
    job->req = NULL;
    job->conn = NULL;
}

int gw_jobs_start(gw_t *gw)
{
    gw->jobs = zactor_new(s_actor, gw);
    if (!gw->jobs)
        return -1;
    gw->jobs_ev = event_new(gw->base, zsock_fd(gw->jobs), EV_READ | EV_PERSIST,
                            s_on_done, gw);
    gw->jobs_kick = event_new(gw->base, -1, 0, s_on_done, gw);
    return gw->jobs_ev && gw->jobs_kick ? event_add(gw->jobs_ev, NULL) : -1;
}

void gw_jobs_stop(gw_t *gw)
{
    zactor_destroy(&gw->jobs); //  waits for the job in progress
    if (gw->jobs_ev)
        event_free(gw->jobs_ev);
    if (gw->jobs_kick)
        event_free(gw->jobs_kick);
    gw->jobs_ev = gw->jobs_kick = NULL;
}
