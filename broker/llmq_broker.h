/*  llmq_broker.h - the llmq broker as a CZMQ actor.

    One thread, one poll loop over the frontend ROUTER (clients), the backend
    ROUTER (workers), the metrics listener and timers; no locks. Requests
    wait in per-(model, pool) queues ordered by priority then arrival and go
    to workers only against credit the workers granted. Semantics are those
    of proto/PROTOCOL.md.

    Usage (this is what broker/main.c does):

        llmq_broker_config_t config;
        llmq_broker_config_defaults (&config);
        config.frontend = "tcp://127.0.0.1:*";
        zactor_t *broker = zactor_new (llmq_broker, &config);
        char *frontend, *backend, *metrics;
        if (llmq_broker_endpoints (broker, &frontend, &backend, &metrics) == 0)
            ...   // bound: "tcp://127.0.0.1:41234" ...
        zstr_send (broker, "DRAIN");          // graceful stop (SIGTERM)
        char *event = zstr_recv (broker);     // "DRAINED"
        zactor_destroy (&broker);

    Pipe commands: "$TERM" (stop now), "ENDPOINTS" (replies three strings:
    frontend, backend, metrics URL or ""; or "ERROR", reason), "DRAIN"
    (refuse new requests with `overloaded`, await in-flight work for at most
    drain_ms, then answer what is left `overloaded` and send "DRAINED"),
    "COUNTERS" (replies one string "received=.. dispatched=.. ..." for tests),
    "ROUTES" (read the routes file again: SIGHUP; a bad file is logged and
    the old routes stay; no reply).

    Extension: a module (the batch manager, issue 8) plugs in through
    llmq_broker_module_t. It sees the client and worker messages the broker
    does not handle itself (batch.*, job.*) and gets a tick. It feeds work
    two ways: pull (next_item: spare worker credit that no waiting client
    request wants is offered to it; results come back to item_result, a
    dead worker's items to item_returned), or push (llmq_broker_submit
    queues a request like a client's; its result comes to a callback).

    Ownership: the config is copied by the actor before zactor_new returns;
    strings from llmq_broker_endpoints belong to the caller.
*/
#ifndef LLMQ_BROKER_H_INCLUDED
#define LLMQ_BROKER_H_INCLUDED

#include <czmq.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llmq_msg.h"

#ifdef __cplusplus
extern "C" {
#endif

/*  The actor's state, as seen by a plug-in module. */
typedef struct _llmq_broker_core_t llmq_broker_core_t;

/*  Result of an internally submitted request: takes the `res` (its id is the
    id given at submit). Called from the broker thread. */
typedef void(llmq_broker_result_fn)(llmq_msg_t **res_p, void *arg);

/*  What a worker serves, for a module choosing work for it. */
typedef bool(llmq_broker_serves_fn)(const char *model, const char *pool,
                                    void *arg);

/*  A plug-in module (the batch store). Every callback is optional. */
typedef struct {
    const char *name;
    /*  Create the module's state once the sockets are bound. NULL = fail. */
    void *(*create)(llmq_broker_core_t *core, void *arg);
    void (*destroy)(void **state_p);
    /*  A client message the broker does not handle (batch.*); take it.
        Reply with llmq_broker_reply. */
    void (*client_msg)(void *state, llmq_msg_t **msg_p);
    /*  A worker message the broker does not handle (job.*); take it. */
    void (*worker_msg)(void *state, llmq_msg_t **msg_p);
    /*  Called on every loop turn that ran timers (about every 100 ms). */
    void (*tick)(void *state, int64_t now_ms);
    /*  Pull dispatch: a worker has credit that no waiting request wants
        (client requests always go first). Return a `req` (id = the
        module's key, op, model, optional pool and priority, payload) that
        serves(model, pool, serves_arg) accepts, or NULL. The broker sends
        it to that worker at once, never queues it. */
    llmq_msg_t *(*next_item)(void *state, llmq_broker_serves_fn *serves,
                             void *serves_arg);
    /*  The worker's `res` for an item from next_item (id = the key); take
        it. Late or duplicate answers are dropped before this. */
    void (*item_result)(void *state, llmq_msg_t **res_p);
    /*  An item's worker died or left: the module takes it back (the broker
        does not requeue module items, so their order stays the module's). */
    void (*item_returned)(void *state, const char *id);
    void *arg; //  Passed to create
} llmq_broker_module_t;

typedef struct {
    const char *frontend;  //  Client endpoint, bound; "tcp://127.0.0.1:5555"
    const char *backend;   //  Worker endpoint, bound; "tcp://127.0.0.1:5556"
    const char *metrics;   //  "PORT" or "HOST:PORT"; NULL or "0" = off
    const char *name;      //  Broker name in pong and status
    size_t max_queue;      //  Queued requests in all queues; past it overloaded
    int no_worker_wait_ms; //  How long a request waits for a worker to join
    int drain_ms;          //  Bound on the SIGTERM drain
    int heartbeat_ms;      //  Heartbeat interval (1000)
    int dead_ms;           //  Silence after which a worker is dead (3000)
    int inflight_grace_ms; //  A dispatched request past its deadline by this
                           //  much is answered deadline_exceeded (5000)
    int default_deadline_ms; //  Deadline of a client request that sets none
                             //  (600000; 0 = none)
    int recovery_ms;         //  After start, resends wait this long for a
                             //  worker's `held` report (-1 = dead_ms)
    int client_timeout_ms;   //  A heartbeating client silent this long has
                             //  gone: its work is dropped (10000; 0 = off)
    size_t client_hwm;       //  Replies queued per client, at most (10000;
                             //  0 = 1,000,000, the old bound)
    size_t client_max_bytes; //  Reply payload bytes queued per client, at
                             //  most (64 MiB; 0 = unbounded)
    bool json_logs;          //  Log lines as JSON objects
    bool quiet;              //  No event logs at all (benchmarks)
    bool verbose;            //  Log every message (debugging)
    const llmq_broker_module_t *module; //  Batch plug-in, NULL = none
    const char *curve_cert;  //  CURVE: the broker's secret cert, NULL = off
    const char *client_keys; //  Directory of allowed client public certs
    const char *worker_keys; //  Directory of allowed worker public certs
    //  Tenants (PROTOCOL.md 3.4); 0 = no cap.
    size_t max_queue_bytes;     //  Payload bytes waiting, all tenants
    size_t tenant_max_queue;    //  Requests waiting, per tenant
    size_t tenant_max_bytes;    //  Payload bytes waiting, per tenant
    size_t tenant_max_inflight; //  Requests in the broker, per tenant
    double tenant_daily_usd;    //  Cost per tenant per UTC day (0: no cap)
    bool no_fair_share;         //  Plain arrival order within a priority
    const char *admin_key;      //  CURVE key (Z85) that sees every batch
    const char *admin_tenant;   //  Without CURVE: the declared admin name
    //  Response cache (PROTOCOL.md 3.7); cache_path NULL = off; 0 = default.
    const char *cache_path; //  SQLite file
    size_t cache_max_bytes; //  Stored body bytes (256 MiB)
    int64_t cache_ttl_ms;   //  Age of an entry (24 h)
    bool cache_per_tenant;  //  The tenant is part of the key
    const char *routes;     //  Routes file (PROTOCOL.md 3.6), NULL = none; a
                            //  bad one fails the start (ENDPOINTS: ERROR)
} llmq_broker_config_t;

/*  Fill a config with the defaults above. */
void llmq_broker_config_defaults(llmq_broker_config_t *config);

/*  The actor: zactor_new (llmq_broker, (llmq_broker_config_t *) config). */
void llmq_broker(zsock_t *pipe, void *args);

/*  Ask a running broker actor for its bound endpoints. Returns 0, or -1 if
    the broker failed to start (reason logged). *metrics is "" when off. */
int llmq_broker_endpoints(zactor_t *broker, char **frontend, char **backend,
                          char **metrics);

/*  For modules: queue a request generated inside the broker. req must be a
    `req` (op, model, optional pool, priority, deadline_ms, max_attempts,
    stream is ignored) with a payload; its id comes back on the result.
    Takes the message. Returns 0, or -1 (then fn is never called). */
int llmq_broker_submit(llmq_broker_core_t *core, llmq_msg_t **req_p,
                       llmq_broker_result_fn *fn, void *arg);

/*  For modules: send a message to a client (its routing id must be set).
    Takes the message. */
void llmq_broker_reply(llmq_broker_core_t *core, llmq_msg_t **msg_p);

/*  For modules (provider batches): a live, healthy, not leaving worker
    with batch_api that serves model (and pool, if not NULL or ""): copy
    its pool and provider kind, return true. */
bool llmq_broker_batch_pool(llmq_broker_core_t *core, const char *model,
                            const char *pool, char *pool_out, size_t pool_size,
                            char *provider_out, size_t provider_size);

/*  For modules: send msg (a job.* task) to one of pool's batch_api workers,
    round robin. Takes the message and returns 0 (a failed send counts as a
    lost task); -1 if there is no such worker (msg then untouched). */
int llmq_broker_send_job(llmq_broker_core_t *core, const char *pool,
                         llmq_msg_t **msg_p);

/*  Self test; returns 0 on success. */
int llmq_broker_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
