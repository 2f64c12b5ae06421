/*  llmq_curve.h - CURVE keys for llmq peers (proto/PROTOCOL.md 1.1).

    Certificates are CZMQ zcert files: NAME (public key) and NAME_secret
    (public and secret key). A broker's public key is given either as its
    40-character Z85 text or as the path of its public certificate file.
    These helpers load and check keys with a reason on failure, so that
    every binary reports bad keys the same way, and apply them to sockets.

    Ownership: a returned zcert_t belongs to the caller (zcert_destroy);
    string arguments are borrowed. Errors are written to err (size bytes),
    never containing a secret key.
*/
#ifndef LLMQ_CURVE_H_INCLUDED
#define LLMQ_CURVE_H_INCLUDED

#include <czmq.h>
#include <stdbool.h>
#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LLMQ_CURVE_KEY_LEN 40 /* Z85 text of a 32-byte key */

/*  Load a secret certificate: path is NAME_secret, or NAME when NAME_secret
    exists next to it. Returns NULL (reason in err) when the file is missing,
    unreadable, or holds no valid secret key. */
zcert_t *llmq_curve_cert_load(const char *path, char *err, size_t size);

/*  Resolve a broker key given as Z85 text or as a certificate path into
    out (LLMQ_CURVE_KEY_LEN + 1 bytes). Returns 0, or -1 (reason in err). */
int llmq_curve_key_resolve(const char *key_or_path, char *out, char *err,
                           size_t size);

/*  Make sock a CURVE client of the broker with public key server_key (Z85),
    using cert's keypair. Call before connecting. */
void llmq_curve_client_apply(zsock_t *sock, zcert_t *cert,
                             const char *server_key);

/*  Client side: a certificate and a broker key go together (NULL or ""
    counts as unset). Returns 1 when both are set, 0 when neither, -1 when
    only one is (reason in err). */
int llmq_curve_wanted(const char *cert_path, const char *broker_key, char *err,
                      size_t size);

/*  Write a new keypair: NAME (public) and NAME_secret (mode 0600).
    Refuses to overwrite existing files. Returns 0, or -1 (reason in err). */
int llmq_curve_keygen(const char *name, char *err, size_t size);

/*  Self test; returns 0 on success. */
int llmq_curve_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
