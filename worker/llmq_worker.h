/*  llmq_worker.h - the worker engine: one provider, one thread, one loop.

    A worker connects a DEALER to the broker's backend, says hello, grants
    credit as its limiter allows, runs each request it gets as HTTP
    transfers on libcurl multi (retries, backoff, circuit breaker inside),
    relays stream chunks, and answers every request with exactly one `res`.
    ZeroMQ and curl share one poll (curl's sockets sit in an epoll set whose
    fd is polled next to the DEALER), so heartbeats go out while thousands
    of transfers run. Semantics: proto/PROTOCOL.md, "Worker <-> broker".

    Ownership: llmq_worker_new takes the config (and NULLs the caller's
    pointer, even on failure).
*/
#ifndef LLMQ_WORKER_H_INCLUDED
#define LLMQ_WORKER_H_INCLUDED

#include <stdbool.h>

#include "llmq_worker_config.h"

#ifdef __cplusplus
extern "C" {
#endif

/*  Exit codes of llmq_worker_run (and of the llmq-worker process):
    stopped cleanly (SIGTERM, drained); could not set up; the provider
    rejected the API key; --check-only found the provider unreachable. */
#define LLMQ_WORKER_EXIT_OK 0
#define LLMQ_WORKER_EXIT_FAILURE 1
#define LLMQ_WORKER_EXIT_AUTH 3
#define LLMQ_WORKER_EXIT_UNREACHABLE 4

typedef struct _llmq_worker_t llmq_worker_t;

/*  Create a worker from a config (taken). NULL with a reason in errbuf if
    the provider cannot be set up. Does no I/O yet. */
llmq_worker_t *llmq_worker_new(llmq_worker_config_t **config_p, char *errbuf,
                               size_t errlen);

/*  Destroy; NULLs *self_p. Idempotent. */
void llmq_worker_destroy(llmq_worker_t **self_p);

/*  Run until stopped: health check, hello, serve. With check_only, do the
    health check only. Returns one of the exit codes above. */
int llmq_worker_run(llmq_worker_t *self);

/*  Ask every running worker of this process to drain and stop; a second
    call stops at once. Async-signal-safe: call it from SIGTERM. */
void llmq_worker_stop(void);

int llmq_worker_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
