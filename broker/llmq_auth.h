/*  llmq_auth.h - the broker's CURVE gatekeeper (proto/PROTOCOL.md 1.1).

    A ZAP handler (RFC 27) that allows clients and workers by public key,
    with one allow-list per socket: the frontend's ZAP domain checks the
    client directory, the backend's the worker directory, so a client key
    can never register as a worker. CZMQ's zauth keeps one list per
    process, hence this small class. It owns no thread: the broker adds its
    sockets to its own poll set (llmq_auth_poll_items) and hands readiness
    back (llmq_auth_service), like the metrics listener.

    Directories are zcertstores on disk: a lookup re-reads a directory
    whose files changed, so keys are added and revoked without a restart.
    Refusals the ZAP handler cannot see (a peer without CURVE, or one that
    has the wrong broker key) fail the handshake earlier; a socket monitor
    on each ROUTER reports those. Every refusal is passed to the owner's
    callback, with `first` true the first time that peer (key, or address
    when no key is known) is refused, so the owner logs once per peer.

    Only one llmq_auth_t per process: ZeroMQ's ZAP endpoint is one fixed
    inproc address per context.

    Ownership: strings are borrowed and copied when kept; the cert passed to
    llmq_auth_server_apply stays the caller's.
*/
#ifndef LLMQ_AUTH_H_INCLUDED
#define LLMQ_AUTH_H_INCLUDED

#include <czmq.h>
#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _llmq_auth_t llmq_auth_t;

/*  Which ROUTER a peer tried. */
typedef enum { LLMQ_AUTH_FRONTEND = 0, LLMQ_AUTH_BACKEND = 1 } llmq_auth_side_t;

/*  A refused peer: side, reason ("unknown_key" or "handshake"), peer (a
    public key in Z85 or an address), first (first refusal of this peer). */
typedef void(llmq_auth_denied_fn)(llmq_auth_side_t side, const char *reason,
                                  const char *peer, bool first, void *arg);

/*  Bind the ZAP handler. client_dir and worker_dir hold the public
    certificates of allowed clients and workers; both must exist. Returns
    NULL with the reason in err on failure. */
llmq_auth_t *llmq_auth_new(const char *client_dir, const char *worker_dir,
                           char *err, size_t size);

/*  Unbind and free; NULLs *self_p. Idempotent. */
void llmq_auth_destroy(llmq_auth_t **self_p);

/*  Make sock a CURVE server with cert's keypair, in side's ZAP domain, and
    watch its handshake failures. Call before binding. Returns 0 or -1. */
int llmq_auth_server_apply(llmq_auth_t *self, zsock_t *sock, zcert_t *cert,
                           llmq_auth_side_t side);

/*  Refusals go to fn (may be NULL). */
void llmq_auth_set_denied(llmq_auth_t *self, llmq_auth_denied_fn *fn,
                          void *arg);

/*  Poll items for the ZAP socket and the monitors; returns how many were
    written (at most max). */
size_t llmq_auth_poll_items(llmq_auth_t *self, zmq_pollitem_t *items,
                            size_t max);

/*  Answer ZAP requests and read monitor events for the items written by
    llmq_auth_poll_items. Never blocks. */
void llmq_auth_service(llmq_auth_t *self, const zmq_pollitem_t *items,
                       size_t count);

/*  Self test; returns 0 on success. */
int llmq_auth_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
