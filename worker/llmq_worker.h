/*  llmq_worker.h - the worker engine as a CZMQ actor: one provider, one
    thread, one loop.

    A worker connects a DEALER to the broker's backend, says hello, grants
    credit as its limiter allows, runs each request it gets as HTTP
    transfers on libcurl multi (retries, backoff, circuit breaker inside),
    relays stream chunks, and answers every request with exactly one `res`.
    ZeroMQ and curl share one poll (curl's sockets sit in an epoll set whose
    fd is polled next to the DEALER and the actor's pipe), so heartbeats go
    out while thousands of transfers run. Semantics: proto/PROTOCOL.md,
    "Worker <-> broker".

    Usage (this is what worker/main.c does; the broker's actor, llmq_broker.h,
    has the same pipe contract):

        llmq_worker_config_t *config = NULL;
        llmq_worker_config_load (&config, argc, argv, err, sizeof err);
        zactor_t *worker = zactor_new (llmq_worker, &config);  // takes it
        zmsg_t *event = zmsg_recv (worker);   // "READY", name, metrics URL
        ...
        zstr_send (worker, "DRAIN");          // graceful stop (SIGTERM)
        event = zmsg_recv (worker);           // "DRAINED"
        zactor_destroy (&worker);

    Pipe commands: "$TERM" (stop now: requests still held are answered
    `overloaded`, retryable, and a worker that did not drain says bye),
    "DRAIN" (bye to the broker, await in-flight work for at most drain_ms,
    answer what is left as failed, then send "DRAINED"), "COUNTERS" (replies
    one string "answered=.. failed=.. in_flight=.. queued=.. held=.." for
    tests).

    Events the actor sends, unasked: "READY", name, metrics URL or "" (the
    health check passed and the hello went out; once), and "STOPPED", exit
    code, message when it stops on its own (--check-only done, API key
    rejected, could not start or lost its socket): the code is one of the
    exit codes below, the message a line for the user ("ok: " on stdout for
    0, else on stderr) or "". After "DRAINED" or "STOPPED" the actor only
    awaits $TERM.

    Signals are the caller's: the actor installs no handler and uses no
    process globals, so a test runs it in-process.

    Ownership: zactor_new (llmq_worker, &config) takes the config (an
    llmq_worker_config_t *) and NULLs the caller's pointer before zactor_new
    returns, even when the worker cannot start.
*/
#ifndef LLMQ_WORKER_H_INCLUDED
#define LLMQ_WORKER_H_INCLUDED

#include <czmq.h>
#include <stdbool.h>

#include "llmq_worker_config.h"

#ifdef __cplusplus
extern "C" {
#endif

/*  Exit codes (of llmq-worker, and in "STOPPED"): stopped cleanly (SIGTERM,
    drained); could not set up; the provider rejected the API key;
    --check-only found the provider unreachable. */
#define LLMQ_WORKER_EXIT_OK 0
#define LLMQ_WORKER_EXIT_FAILURE 1
#define LLMQ_WORKER_EXIT_AUTH 3
#define LLMQ_WORKER_EXIT_UNREACHABLE 4

/*  The actor: zactor_new (llmq_worker, (llmq_worker_config_t **) &config).
    Health check, hello, serve; with check_only, the health check only. */
void llmq_worker(zsock_t *pipe, void *args);

/*  Self test; returns 0 on success. */
int llmq_worker_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
