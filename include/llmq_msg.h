/*  llmq_msg.h - one wire protocol message (proto/PROTOCOL.md, v1).

    A message is a header (a msgpack map with `v`, `t` and typed fields, all
    listed once in llmq_proto.def) plus an optional opaque payload frame. On a
    ROUTER socket it also carries the peer's routing id.

    The codec copies every decoded string out of the frame, so a message never
    points into socket memory. The payload is kept as the zframe it arrived in
    (or, with LLMQ_MSG_RECV_PAYLOAD_MSG, the zmq_msg_t) and can be moved to
    another message or socket without a copy (zero-copy forwarding).
    No msgpack type appears in this header: only proto/ knows the wire layout.

    Ownership: llmq_msg_new and llmq_msg_recv return objects the caller owns;
    `const char *` results are borrowed from the message and live until the
    field is set again or the message is destroyed; `zframe_t **` arguments
    take the frame and NULL the caller's pointer, even on failure.
*/
#ifndef LLMQ_MSG_H_INCLUDED
#define LLMQ_MSG_H_INCLUDED

#include <czmq.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LLMQ_PROTOCOL_VERSION 1
/*  Largest header frame the codec decodes; larger ones are bad_message. */
#define LLMQ_MAX_HEADER_SIZE (64 * 1024)
/*  Largest whole message a socket accepts (ZMQ_MAXMSGSIZE): 64 MiB. */
#define LLMQ_MAX_FRAME_SIZE (64LL * 1024 * 1024)

/*  Message types. LLMQ_MSG_INVALID is what llmq_msg_recv returns for input
    it could not decode: the routing id (if any) is set so the receiver can
    reply with an `error` {code: bad_message}, and llmq_msg_invalid_reason()
    says why. It is never encoded. */
typedef enum {
    LLMQ_MSG_INVALID = 0,
#define LLMQ_MSG(ID, name, payload, required) LLMQ_MSG_##ID,
#include "llmq_proto.def"
    LLMQ_MSG_COUNT
} llmq_msg_type_t;

/*  Field ids, one per LLMQ_FIELD line: LLMQ_F_<name>. */
typedef enum {
#define LLMQ_FIELD(name, group, key, kind, max) LLMQ_F_##name,
#include "llmq_proto.def"
    LLMQ_F_COUNT
} llmq_field_t;

/*  Normalised error codes: LLMQ_ERR_<ID>. LLMQ_ERR_NONE is 0. */
typedef enum {
    LLMQ_ERR_NONE = 0,
#define LLMQ_ERR(ID, code, retryable) LLMQ_ERR_##ID,
#include "llmq_proto.def"
    LLMQ_ERR_COUNT
} llmq_err_t;

typedef struct _llmq_msg_t llmq_msg_t;

/*  Create an empty message of the given type. Returns NULL on bad type. */
llmq_msg_t *llmq_msg_new(llmq_msg_type_t type);

/*  Destroy a message and everything it owns; NULLs *self_p. Idempotent. */
void llmq_msg_destroy(llmq_msg_t **self_p);

/*  Deep copy (fields, routing id and payload). Caller owns the copy. */
llmq_msg_t *llmq_msg_dup(const llmq_msg_t *self);

llmq_msg_type_t llmq_msg_type(const llmq_msg_t *self);

/*  The `t` name of a type ("req", "batch.add"), or "invalid". */
const char *llmq_msg_type_name(llmq_msg_type_t type);

/*  Type for a `t` name, LLMQ_MSG_INVALID if unknown. */
llmq_msg_type_t llmq_msg_type_from_name(const char *name);

/*  For LLMQ_MSG_INVALID messages: a human-readable reason (never NULL). */
const char *llmq_msg_invalid_reason(const llmq_msg_t *self);

/*  True if the field is set. */
bool llmq_msg_has(const llmq_msg_t *self, llmq_field_t field);

/*  Unset a field. */
void llmq_msg_clear(llmq_msg_t *self, llmq_field_t field);

/*  The field table of llmq_proto.def: C name ("usage_cost_usd"), map key
    ("cost_usd") and group ("usage", or NULL for a top-level key). NULL for
    an unknown field id. Strings are static. */
const char *llmq_msg_field_name(llmq_field_t field);
const char *llmq_msg_field_key(llmq_field_t field);
const char *llmq_msg_field_group(llmq_field_t field);

/*  Typed accessors, generated from llmq_proto.def:
      STR   const char *llmq_msg_<f>(msg)           NULL if absent
            void llmq_msg_set_<f>(msg, const char *) NULL clears; copies
      INT   int64_t llmq_msg_<f>(msg)               0 if absent
            void llmq_msg_set_<f>(msg, int64_t)
      BOOL  bool llmq_msg_<f>(msg)                  false if absent
            void llmq_msg_set_<f>(msg, bool)
      DBL   double llmq_msg_<f>(msg)                0.0 if absent
            void llmq_msg_set_<f>(msg, double)
      RAW   const uint8_t *llmq_msg_<f>(msg, size_t *size)  NULL if absent
            void llmq_msg_set_<f>(msg, const void *data, size_t size)
            (data must be one complete msgpack value; copied)
      STRS  size_t llmq_msg_<f>_count(msg)
            const char *llmq_msg_<f>_at(msg, size_t index)
            void llmq_msg_set_<f>(msg, const char *const *items, size_t count)
    Setting a value longer than the field's limit truncates nothing: the
    message fails to encode (llmq_msg_encode returns NULL). */
#define LLMQ_ACCESSOR_STR(name)                                                \
    const char *llmq_msg_##name(const llmq_msg_t *self);                       \
    void llmq_msg_set_##name(llmq_msg_t *self, const char *value);
#define LLMQ_ACCESSOR_INT(name)                                                \
    int64_t llmq_msg_##name(const llmq_msg_t *self);                           \
    void llmq_msg_set_##name(llmq_msg_t *self, int64_t value);
#define LLMQ_ACCESSOR_BOOL(name)                                               \
    bool llmq_msg_##name(const llmq_msg_t *self);                              \
    void llmq_msg_set_##name(llmq_msg_t *self, bool value);
#define LLMQ_ACCESSOR_DBL(name)                                                \
    double llmq_msg_##name(const llmq_msg_t *self);                            \
    void llmq_msg_set_##name(llmq_msg_t *self, double value);
#define LLMQ_ACCESSOR_RAW(name)                                                \
    const uint8_t *llmq_msg_##name(const llmq_msg_t *self, size_t *size);      \
    void llmq_msg_set_##name(llmq_msg_t *self, const void *data, size_t size);
#define LLMQ_ACCESSOR_STRS(name)                                               \
    size_t llmq_msg_##name##_count(const llmq_msg_t *self);                    \
    const char *llmq_msg_##name##_at(const llmq_msg_t *self, size_t index);    \
    void llmq_msg_set_##name(llmq_msg_t *self, const char *const *items,       \
                             size_t count);
#define LLMQ_FIELD(name, group, key, kind, max) LLMQ_ACCESSOR_##kind(name)
#include "llmq_proto.def"

/*  Payload frame (borrowed; NULL if none). */
zframe_t *llmq_msg_payload(const llmq_msg_t *self);

/*  The payload's bytes (borrowed, until the payload changes) and size,
    whichever way it was received, without making a frame of it. NULL
    (size 0) if there is none. */
const void *llmq_msg_payload_data(const llmq_msg_t *self, size_t *size);

/*  Set the payload, taking the frame (NULL removes it). */
void llmq_msg_set_payload(llmq_msg_t *self, zframe_t **payload_p);

/*  Set the payload from bytes (copied). */
void llmq_msg_set_payload_mem(llmq_msg_t *self, const void *data, size_t size);

/*  Remove the payload and give it to the caller (NULL if none). This is how
    the broker forwards a payload to another peer without copying it. */
zframe_t *llmq_msg_take_payload(llmq_msg_t *self);

/*  Move the payload into *out (initialised here; the caller sends or
    closes it): without a copy if it was received with
    LLMQ_MSG_RECV_PAYLOAD_MSG. Returns 0, or -1 (out untouched) if there
    is none. */
int llmq_msg_take_payload_msg(llmq_msg_t *self, zmq_msg_t *out);

/*  The peer's authenticated identity of a message read from a ROUTER: the
    User-Id its ZAP handler gave the connection (llmq-broker: the CURVE
    public key, Z85). NULL without ZAP, or for a message built here. Not on
    the wire and not copied by llmq_msg_dup. */
const char *llmq_msg_user_id(const llmq_msg_t *self);

/*  Routing id of the peer on a ROUTER socket (borrowed; NULL if none). */
zframe_t *llmq_msg_routing_id(const llmq_msg_t *self);

/*  The routing id's bytes (borrowed; NULL and 0 if none), without making
    a frame of a received one. */
const uint8_t *llmq_msg_routing_id_data(const llmq_msg_t *self, size_t *size);

/*  Set the routing id (copied). On send through a ROUTER it is the first
    frame. */
void llmq_msg_set_routing_id(llmq_msg_t *self, const zframe_t *routing_id);

/*  Encode the header map (not the payload, not the routing id) into a new
    frame. Returns NULL, with a reason in errbuf (may be NULL), if a required
    field is missing, a value exceeds its limit or the type is invalid.
    A `res` or `chunk` received with LLMQ_MSG_RECV_SPLICE is spliced:
    the received bytes of the top-level keys not set or cleared since are
    copied, the changed ones written after them (the same map, in another
    key order; unknown top-level keys dropped as by a full encode, unknown
    keys inside a group kept as received unless the group changed). */
zframe_t *llmq_msg_encode(const llmq_msg_t *self, char *errbuf, size_t errlen);

/*  As llmq_msg_encode, into *out (initialised here on success: the caller
    sends or closes it): no zframe for a hot path that sends with
    zmq_msg_send. Returns 0, or -1 with a reason in errbuf. */
int llmq_msg_encode_msg(const llmq_msg_t *self, zmq_msg_t *out, char *errbuf,
                        size_t errlen);

/*  One top-level STR, INT or BOOL field of a header written without a
    message (llmq_msg_encode_entries). */
typedef struct {
    llmq_field_t field; /* LLMQ_F_<name> */
    const char *str;    /* STR: the value; NULL: absent, not written */
    int64_t num;        /* INT: the value; BOOL: 0 false, else true */
} llmq_msg_entry_t;

/*  As llmq_msg_encode_msg for a message of type holding just these
    fields, without making one: for a hot path that writes the same type
    again and again (the broker's `req` to a worker). Entries come in
    catalogue order (llmq_proto.def), each field once; the bytes are those
    llmq_msg_encode writes, and the checks the same (required fields,
    limits, UTF-8). Strings are borrowed for the call. Returns 0, or -1
    with a reason in errbuf (may be NULL). */
int llmq_msg_encode_entries(llmq_msg_type_t type,
                            const llmq_msg_entry_t *entries, size_t count,
                            zmq_msg_t *out, char *errbuf, size_t errlen);

/*  Decode a header from bytes. Returns a new message, or NULL with a reason
    in errbuf (may be NULL). Never reads past size, never allocates more than
    a small multiple of size, never asserts on input. Enforces the type's
    required fields, value kinds and limits, and the payload rule when
    has_payload says whether a payload frame followed. Unknown keys are
    skipped. */
llmq_msg_t *llmq_msg_decode(const void *data, size_t size, bool has_payload,
                            char *errbuf, size_t errlen);

/*  Send on a socket: [routing id] + header + [payload]. Destroys the message
    and NULLs *self_p whether or not the send worked. Returns 0 or -1 (encode
    failure is -1 and is logged: msg_send_failed, llmq_log.h). A ROUTER needs
    a routing id. */
int llmq_msg_send(llmq_msg_t **self_p, void *sock);

/*  Receive one message. On a ROUTER socket (zsock_type == ZMQ_ROUTER) the
    first frame is taken as the routing id. A message that does not decode,
    or has more frames than the protocol allows, comes back as a message of
    type LLMQ_MSG_INVALID, with its routing id and reason, and with the `id`
    field set if the header had a readable one. Returns NULL only if the
    receive was interrupted. */
llmq_msg_t *llmq_msg_recv(void *sock);

/*  As llmq_msg_recv, with flags: LLMQ_MSG_RECV_NO_USER_ID skips the lookup
    of the peer's ZAP User-Id (llmq_msg_user_id then returns NULL), which
    costs a metadata search per message on a socket without CURVE. */
#define LLMQ_MSG_RECV_NO_USER_ID 1
/*  LLMQ_MSG_RECV_SPLICE: a `res` or `chunk` keeps its received header until
    destroyed, so that encoding it again splices (llmq_msg_encode): for a
    process that forwards them (the broker). */
#define LLMQ_MSG_RECV_SPLICE 2
/*  LLMQ_MSG_RECV_PAYLOAD_MSG: keep the payload as the zmq_msg_t libzmq
    gave, for llmq_msg_take_payload_msg (no zframe; llmq_msg_payload
    still works, making a frame of a copy): for a process that forwards
    payloads (the broker's results). */
#define LLMQ_MSG_RECV_PAYLOAD_MSG 4
/*  LLMQ_MSG_RECV_ROUTER: the caller knows sock is a ROUTER (its routing id
    comes first), so the socket's type is not looked up per message. */
#define LLMQ_MSG_RECV_ROUTER 8
llmq_msg_t *llmq_msg_recv_ex(void *sock, int flags);

/*  Wait up to timeout_ms for the next message of a type, skipping `hb` and
    `ack` (unless that is the type asked for); tick (may be NULL) runs
    before every wait of at most 50 ms, so a peer can keep beating. Returns
    the message (caller owns), or NULL on timeout or when another type
    arrives (printed on stderr and destroyed). */
typedef void(llmq_msg_tick_fn)(void *arg);
llmq_msg_t *llmq_msg_expect(void *sock, llmq_msg_type_t type, int timeout_ms,
                            llmq_msg_tick_fn *tick, void *arg);

/*  Error codes: the wire string ("rate_limited"), whether it is retryable by
    default, and the code for a wire string (LLMQ_ERR_NONE if unknown). */
const char *llmq_err_name(llmq_err_t err);
bool llmq_err_retryable(llmq_err_t err);
llmq_err_t llmq_err_from_name(const char *name);

/*  Convenience: fill a `res` as a failure: ok=false, error {code, message,
    status (0 = absent), retryable = the code's default}. message is copied;
    it must never hold a secret. */
void llmq_msg_set_failure(llmq_msg_t *self, llmq_err_t err, int status,
                          const char *message);

/*  Print the message on stderr in a readable form (for debugging). */
void llmq_msg_print(const llmq_msg_t *self);

/*  Self test; returns 0 on success. */
int llmq_msg_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
