/*  llmq_batch_module.c - the batch manager as a broker plug-in (issue 8).

    Design: a thin adapter. Every callback of llmq_broker_module_t maps to
    one llmq_batch call; the only logic here is the job task pump on each
    tick (hand every due job.* task to a worker of its pool, give back what
    cannot be sent) and the clock (the manager wants wall-clock ms, which
    mean the same after a restart).
*/
#include "llmq_batch_module.h"
#include "llmq_log.h"

#include <string.h>

#include "llmq_payload.h"
#include "llmq_value.h"

/*  The plug-in's state. */
typedef struct {
    llmq_broker_core_t *core;     /* the broker (borrowed) */
    llmq_batch_module_arg_t *arg; /* the caller's (borrowed) */
    llmq_batch_t *batches;        /* the manager */
} s_state_t;

static bool s_pool_fn(const char *model, const char *pool, char *pool_out,
                      size_t pool_size, char *provider_out,
                      size_t provider_size, void *arg)
{
    s_state_t *self = arg;
    return self->arg->pool_lookup(self->core, model, pool, pool_out, pool_size,
                                  provider_out, provider_size);
}

static void *s_create(llmq_broker_core_t *core, void *arg)
{
    llmq_batch_module_arg_t *barg = arg;
    s_state_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->core = core;
    self->arg = barg;
    self->batches = llmq_batch_new(barg->path, &barg->config, zclock_time());
    if (!self->batches) {
        free(self);
        return NULL;
    }
    if (barg->pool_lookup && barg->send_worker)
        llmq_batch_set_pool_fn(self->batches, s_pool_fn, self);
    return self;
}

static void s_destroy(void **state_p)
{
    s_state_t *self = *state_p;
    if (self) {
        llmq_batch_destroy(&self->batches);
        free(self);
        *state_p = NULL;
    }
}

static void s_client_msg(void *state, llmq_msg_t **msg_p)
{
    s_state_t *self = state;
    zlist_t *replies = zlist_new();
    if (llmq_batch_handle(self->batches, *msg_p, replies, zclock_time()) == 0) {
        llmq_msg_t *r;
        while ((r = zlist_pop(replies)))
            llmq_broker_reply(self->core, &r);
    }
    zlist_destroy(&replies);
    llmq_msg_destroy(msg_p);
}

static void s_worker_msg(void *state, llmq_msg_t **msg_p)
{
    s_state_t *self = state;
    llmq_batch_on_job_msg(self->batches, *msg_p, zclock_time());
    llmq_msg_destroy(msg_p);
}

static void s_tick(void *state, int64_t now_mono)
{
    (void)now_mono; /* the manager keeps wall-clock time */
    s_state_t *self = state;
    int64_t now = zclock_time();
    llmq_batch_tick(self->batches, now);
    if (!self->arg->send_worker)
        return;
    llmq_msg_t *task;
    while ((task = llmq_batch_next_job_task(self->batches, NULL, now))) {
        const char *pool = llmq_msg_pool(task) ? llmq_msg_pool(task) : "";
        char pool_copy[129];
        snprintf(pool_copy, sizeof pool_copy, "%s", pool);
        if (self->arg->send_worker(self->core, pool_copy, &task) != 0) {
            llmq_batch_task_unsent(self->batches, task, now);
            llmq_msg_destroy(&task);
        }
    }
}

static llmq_msg_t *s_next_item(void *state, llmq_broker_serves_fn *serves,
                               void *serves_arg)
{
    s_state_t *self = state;
    return llmq_batch_next_item(self->batches, serves, serves_arg,
                                zclock_time());
}

static void s_item_result(void *state, llmq_msg_t **res_p)
{
    s_state_t *self = state;
    llmq_batch_on_item_result(self->batches, llmq_msg_id(*res_p), *res_p,
                              zclock_time());
    llmq_msg_destroy(res_p);
}

static void s_item_returned(void *state, const char *id)
{
    s_state_t *self = state;
    llmq_batch_item_return(self->batches, id, zclock_time());
}

void llmq_batch_module_arg_defaults(llmq_batch_module_arg_t *arg,
                                    const char *path)
{
    memset(arg, 0, sizeof *arg);
    arg->path = path;
    llmq_batch_config_defaults(&arg->config);
}

void llmq_batch_module_init(llmq_broker_module_t *module,
                            llmq_batch_module_arg_t *arg)
{
    memset(module, 0, sizeof *module);
    module->name = "batch";
    module->create = s_create;
    module->destroy = s_destroy;
    module->client_msg = s_client_msg;
    module->worker_msg = s_worker_msg;
    module->tick = s_tick;
    module->next_item = s_next_item;
    module->item_result = s_item_result;
    module->item_returned = s_item_returned;
    module->arg = arg;
}

/*  ---- selftest ---------------------------------------------------------- */

#include "llmq_check.h"
#define S_CHECK(expr) LLMQ_CHECK(expr)

typedef struct {
    zsock_t *worker;   /* fake worker (DEALER) */
    zsock_t *client;   /* client (DEALER) */
    int64_t next_beat; /* worker heartbeat due */
} s_t_peers_t;

/*  The fake worker keeps beating while a test waits. */
static void s_t_tick(void *arg)
{
    s_t_peers_t *p = arg;
    if (p->worker && zclock_mono() >= p->next_beat) {
        llmq_msg_t *hb = llmq_msg_new(LLMQ_MSG_HB);
        llmq_msg_set_healthy(hb, true);
        llmq_msg_send(&hb, p->worker);
        p->next_beat = zclock_mono() + 300;
    }
}

/*  Next message of `type` on sock, skipping heartbeats. NULL on timeout
    or another type. */
static llmq_msg_t *s_t_expect(s_t_peers_t *p, zsock_t *sock,
                              llmq_msg_type_t type, int timeout_ms)
{
    return llmq_msg_expect(sock, type, timeout_ms, s_t_tick, p);
}

static void s_t_credit(s_t_peers_t *p, int64_t n)
{
    llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_CREDIT);
    llmq_msg_set_n(m, n);
    llmq_msg_send(&m, p->worker);
}

static void s_t_connect(s_t_peers_t *p, zactor_t *broker)
{
    char *fe = NULL, *be = NULL, *me = NULL;
    S_CHECK(llmq_broker_endpoints(broker, &fe, &be, &me) == 0);
    p->worker = zsock_new(ZMQ_DEALER);
    zsock_set_identity(p->worker, "batch-worker");
    S_CHECK(zsock_connect(p->worker, "%s", be) == 0);
    p->client = zsock_new(ZMQ_DEALER);
    zsock_set_identity(p->client, "batch-client");
    S_CHECK(zsock_connect(p->client, "%s", fe) == 0);
    zstr_free(&fe);
    zstr_free(&be);
    zstr_free(&me);
    llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_HELLO);
    llmq_msg_set_worker(m, "batch-worker");
    llmq_msg_set_pool(m, "p1");
    llmq_msg_set_provider(m, "echo");
    const char *models[] = {"m1"};
    llmq_msg_set_models(m, models, 1);
    llmq_msg_set_capacity(m, 4);
    llmq_msg_set_version(m, "test");
    llmq_msg_send(&m, p->worker);
    s_t_credit(p, 4);
    p->next_beat = 0;
}

static void s_t_disconnect(s_t_peers_t *p)
{
    zsock_destroy(&p->worker);
    zsock_destroy(&p->client);
}

/*  Answer a req as an echo worker does, and grant the slot again. */
static void s_t_answer(s_t_peers_t *p, llmq_msg_t **req_p)
{
    llmq_msg_t *res = llmq_msg_new(LLMQ_MSG_RES);
    llmq_msg_set_id(res, llmq_msg_id(*req_p));
    llmq_msg_set_ok(res, true);
    llmq_msg_set_usage_prompt_tokens(res, 2);
    llmq_msg_set_usage_completion_tokens(res, 1);
    zframe_t *payload = llmq_msg_take_payload(*req_p);
    llmq_msg_set_payload(res, &payload);
    llmq_msg_send(&res, p->worker);
    llmq_msg_destroy(req_p);
    s_t_credit(p, 1);
}

static void s_t_batch(s_t_peers_t *p, const char *id, int n)
{
    llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_BATCH_OPEN);
    llmq_msg_set_batch(m, id);
    llmq_msg_set_mode(m, "realtime");
    llmq_msg_set_model(m, "m1");
    llmq_msg_send(&m, p->client);
    m = s_t_expect(p, p->client, LLMQ_MSG_BATCH_ACK, 5000);
    S_CHECK(m);
    llmq_msg_destroy(&m);
    llmq_payload_t *pk = llmq_payload_new();
    for (int i = 0; i < n; i++) {
        char cid[32], text[128];
        snprintf(cid, sizeof cid, "c%d", i);
        snprintf(text, sizeof text, "\"%s item %d\"", id, i);
        zframe_t *body = llmq_value_from_json_text(text, strlen(text), NULL, 0);
        S_CHECK(body);
        llmq_payload_add_item(pk, cid, zframe_data(body), zframe_size(body));
        zframe_destroy(&body);
    }
    zframe_t *items = llmq_payload_frame(pk);
    llmq_payload_destroy(&pk);
    m = llmq_msg_new(LLMQ_MSG_BATCH_ADD);
    llmq_msg_set_batch(m, id);
    llmq_msg_set_seq(m, 1);
    llmq_msg_set_payload(m, &items);
    llmq_msg_send(&m, p->client);
    m = s_t_expect(p, p->client, LLMQ_MSG_BATCH_ACK, 5000);
    S_CHECK(m && llmq_msg_accepted(m) == n);
    llmq_msg_destroy(&m);
    m = llmq_msg_new(LLMQ_MSG_BATCH_CLOSE);
    llmq_msg_set_batch(m, id);
    llmq_msg_send(&m, p->client);
    m = s_t_expect(p, p->client, LLMQ_MSG_BATCH_ACK, 5000);
    S_CHECK(m && llmq_msg_count(m) == n);
    llmq_msg_destroy(&m);
}

/*  One result of s_t_results: the next in input order, its body the echo
    of its item. */
typedef struct {
    const char *id;
    int64_t after;
} s_t_seen_t;

static int s_t_result(const llmq_result_item_t *item, void *arg)
{
    s_t_seen_t *seen = arg;
    char cid[32], text[128];
    snprintf(cid, sizeof cid, "c%lld", (long long)seen->after);
    snprintf(text, sizeof text, "\"%s item %lld\"", seen->id,
             (long long)seen->after);
    S_CHECK(item->custom_id && streq(item->custom_id, cid));
    char *body = item->body ? llmq_value_to_json_text(item->body,
                                                      item->body_size, NULL, 0)
                            : NULL;
    S_CHECK(body && streq(body, text));
    free(body);
    seen->after++;
    return 0;
}

/*  Fetch all results; check input order and that each body is the echo of
    its item. */
static void s_t_results(s_t_peers_t *p, const char *id, int n)
{
    s_t_seen_t seen = {id, 0};
    bool final = false;
    while (!final) {
        llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_BATCH_GET);
        llmq_msg_set_batch(m, id);
        llmq_msg_set_after(m, seen.after);
        llmq_msg_send(&m, p->client);
        llmq_msg_t *st = s_t_expect(p, p->client, LLMQ_MSG_BATCH_STATUS, 5000);
        llmq_msg_t *rs = s_t_expect(p, p->client, LLMQ_MSG_BATCH_RESULTS, 5000);
        S_CHECK(st && rs);
        zframe_t *payload = llmq_msg_payload(rs);
        S_CHECK(llmq_payload_each_result(zframe_data(payload),
                                         zframe_size(payload), s_t_result,
                                         &seen, NULL, 0) > 0);
        final = llmq_msg_final(rs);
        if (final) {
            S_CHECK(streq(llmq_msg_state(st), "completed"));
            S_CHECK(llmq_msg_counts_done(st) == n);
            S_CHECK(llmq_msg_usage_total_tokens(st) == 3 * n);
        }
        llmq_msg_destroy(&st);
        llmq_msg_destroy(&rs);
    }
    S_CHECK(seen.after == n);
}

/*  The worker answers the next n requests. */
static void s_t_answer_next(s_t_peers_t *p, int64_t n)
{
    for (int64_t i = 0; i < n; i++) {
        llmq_msg_t *m = s_t_expect(p, p->worker, LLMQ_MSG_REQ, 5000);
        S_CHECK(m);
        s_t_answer(p, &m);
    }
}

/*  ping/pong: the broker has taken in what the client sent before. Returns
    the pong (NULL on timeout). */
static llmq_msg_t *s_t_ping(s_t_peers_t *p)
{
    llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_PING);
    llmq_msg_send(&m, p->client);
    return s_t_expect(p, p->client, LLMQ_MSG_PONG, 5000);
}

/*  A realtime batch fills the worker's four slots, an interactive request
    arrives and takes the very next free slot, ahead of 196 batch items. */
static void s_t_interactive(s_t_peers_t *p)
{
    s_t_batch(p, "rt", 200);
    llmq_msg_t *held[4];
    for (int i = 0; i < 4; i++) {
        held[i] = s_t_expect(p, p->worker, LLMQ_MSG_REQ, 5000);
        S_CHECK(held[i]);
    }
    llmq_msg_t *m = llmq_msg_new(LLMQ_MSG_REQ);
    llmq_msg_set_id(m, "interactive");
    llmq_msg_set_op(m, "chat");
    llmq_msg_set_model(m, "m1");
    llmq_msg_set_payload_mem(m, "\xabinteractive", 12);
    llmq_msg_send(&m, p->client);
    m = s_t_ping(p);
    S_CHECK(m);
    llmq_msg_destroy(&m);
    s_t_answer(p, &held[0]);
    m = s_t_expect(p, p->worker, LLMQ_MSG_REQ, 5000);
    S_CHECK(m && llmq_msg_payload(m) && zframe_size(llmq_msg_payload(m)) == 12);
    S_CHECK(memcmp(zframe_data(llmq_msg_payload(m)), "\xabinteractive", 12) ==
            0);
    s_t_answer(p, &m);
    for (int i = 1; i < 4; i++)
        s_t_answer(p, &held[i]);
    s_t_answer_next(p, 200 - 4);
    m = s_t_expect(p, p->client, LLMQ_MSG_RES, 5000);
    S_CHECK(m && streq(llmq_msg_id(m), "interactive") && llmq_msg_ok(m));
    llmq_msg_destroy(&m);
    s_t_results(p, "rt", 200);
}

/*  Restart with items in flight: answered ones are kept, the rest (those
    in flight included) run on the new broker, made from config. */
static void s_t_restart(s_t_peers_t *p, zactor_t **broker,
                        llmq_broker_config_t *config)
{
    s_t_batch(p, "rt2", 100);
    s_t_answer_next(p, 30);
    /*  Let the broker take the 30th answer before it stops. */
    llmq_msg_t *m = s_t_ping(p);
    llmq_msg_destroy(&m);
    s_t_disconnect(p);
    zactor_destroy(broker);
    *broker = zactor_new(llmq_broker, config);
    S_CHECK(*broker);
    s_t_connect(p, *broker);
    /*  What the store kept: every answer the old broker took in (an
        answer still in its socket when it stopped runs again: at least
        once). */
    m = llmq_msg_new(LLMQ_MSG_BATCH_GET);
    llmq_msg_set_batch(m, "rt2");
    llmq_msg_set_after(m, 1000);
    llmq_msg_send(&m, p->client);
    m = s_t_expect(p, p->client, LLMQ_MSG_BATCH_STATUS, 5000);
    S_CHECK(m);
    int64_t kept = llmq_msg_counts_done(m);
    llmq_msg_destroy(&m);
    m = s_t_expect(p, p->client, LLMQ_MSG_BATCH_RESULTS, 5000);
    llmq_msg_destroy(&m);
    S_CHECK(kept > 0 && kept <= 30);
    s_t_answer_next(p, 100 - kept);
    s_t_results(p, "rt2", 100);
    /*  And a batch from before the restart is still there. */
    s_t_results(p, "rt", 200);
}

int llmq_batch_module_test(bool verbose)
{
    printf(" * llmq_batch_module: ");
    fflush(stdout);
    char dir[] = "/tmp/llmq-batch-module-XXXXXX";
    S_CHECK(mkdtemp(dir));
    char path[256];
    snprintf(path, sizeof path, "%s/batches.db", dir);
    llmq_batch_module_arg_t arg;
    llmq_batch_module_arg_defaults(&arg, path);
    llmq_broker_module_t module;
    llmq_batch_module_init(&module, &arg);
    llmq_broker_config_t config;
    llmq_broker_config_defaults(&config);
    config.frontend = "tcp://127.0.0.1:*";
    config.backend = "tcp://127.0.0.1:*";
    config.metrics = NULL;
    config.quiet = !verbose;
    config.module = &module;
    zactor_t *broker = zactor_new(llmq_broker, &config);
    S_CHECK(broker);
    s_t_peers_t p = {0};
    s_t_connect(&p, broker);
    s_t_interactive(&p);
    s_t_restart(&p, &broker, &config);
    s_t_disconnect(&p);
    zactor_destroy(&broker);
    if (llmq_check_rmtree(dir) != 0)
        llmq_log(NULL, LLMQ_LOG_WARN, "test_cleanup_failed",
                 LLMQ_LOG_STR("dir", dir), LLMQ_LOG_END);
    printf("OK\n");
    return 0;
}
