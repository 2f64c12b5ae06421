/*  llmq_msg.c - one wire protocol message: fields, codec, send/recv.

    Everything here is driven by llmq_proto.def through X-macros: the field
    table (name, group, key, kind, limit), each message's required fields and
    payload rule, and the typed accessors. A message stores one slot per
    field, so accessors are an array index; the codec walks the table.

    Decoding uses the bounded reader of llmq_mpread.h rather than msgpack-c's
    unpacker: it never allocates for a claimed count, never reads past the
    frame, and every failure has a short reason that goes back to the peer
    in an `error` {code: bad_message}. Strings are copied out, so a message
    never points into socket memory. Encoding uses msgpack-c's packer.

    On a socket a message is [routing id] header [payload]. The payload is
    kept as the zframe it arrived in, so it can be forwarded without a copy.
*/
#include "llmq_msg.h"
#include "llmq_log.h"
#include "llmq_mpread.h"
#include "llmq_value.h"

#include <msgpack.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*  Value nesting allowed inside a header (unknown keys, meta). */
#define S_MAX_DEPTH LLMQ_VALUE_MAX_DEPTH
/*  Longest item of a STRS field. */
#define S_MAX_STRS_ITEM 256
/*  Longest `t` value we bother to look up. */
#define S_MAX_TYPE_NAME 32

/*  ---- the catalogue, from llmq_proto.def ------------------------------ */

typedef enum { S_STR, S_INT, S_BOOL, S_DBL, S_RAW, S_STRS } s_kind_t;
typedef enum { S_PAYLOAD_NONE, S_PAYLOAD_OPT, S_PAYLOAD_REQ } s_payload_t;

typedef struct {
    const char *name;  /* C name, as in llmq_msg_<name>() */
    const char *group; /* nested map key, or NULL for a top-level key */
    const char *key;   /* map key on the wire */
    s_kind_t kind;     /* value kind */
    size_t max;        /* STR bytes, STRS items, RAW encoded bytes */
} s_field_t;

static const s_field_t s_fields[LLMQ_F_COUNT] = {
#define LLMQ_FIELD(name, group, key, kind, max)                                \
    {#name, group, key, S_##kind, max},
#include "llmq_proto.def"
};

/*  Required fields per message type, each list ending with -1. */
#define LLMQ_REQ(field) LLMQ_F_##field,
#define LLMQ_MSG(ID, name, payload, required)                                  \
    static const int s_req_##ID[] = {required - 1};
#include "llmq_proto.def"
static const int s_req_INVALID[] = {-1};

typedef struct {
    const char *name;    /* `t` on the wire */
    s_payload_t payload; /* payload frame rule */
    const int *required; /* field ids, -1 terminated */
} s_msgdef_t;

static const s_msgdef_t s_msgs[LLMQ_MSG_COUNT] = {
    {"invalid", S_PAYLOAD_NONE, s_req_INVALID},
#define LLMQ_MSG(ID, name, payload, required)                                  \
    {name, S_PAYLOAD_##payload, s_req_##ID},
#include "llmq_proto.def"
};

typedef struct {
    const char *name; /* wire code */
    bool retryable;   /* default for error.retryable */
} s_errdef_t;

static const s_errdef_t s_errs[LLMQ_ERR_COUNT] = {
    {"none", false},
#define LLMQ_ERR(ID, code, retryable) {code, retryable},
#include "llmq_proto.def"
};

/*  ---- the message ----------------------------------------------------- */

typedef struct {
    bool set; /* field present */
    union {
        char *s;   /* STR */
        int64_t i; /* INT */
        bool b;    /* BOOL */
        double d;  /* DBL */
        struct {
            uint8_t *data;
            size_t size;
        } raw; /* RAW: one encoded msgpack value */
        struct {
            char **items;
            size_t count;
        } strs; /* STRS */
    };
} s_value_t;

struct _llmq_msg_t {
    llmq_msg_type_t type;           /* LLMQ_MSG_INVALID for bad input */
    zframe_t *routing_id;           /* ROUTER peer, or NULL */
    zframe_t *payload;              /* opaque payload frame, or NULL */
    char *reason;                   /* why the input was INVALID */
    char *user_id;                  /* the peer's ZAP User-Id, or NULL */
    s_value_t values[LLMQ_F_COUNT]; /* one slot per field of the .def */
};

llmq_msg_t *llmq_msg_new(llmq_msg_type_t type)
{
    if ((int)type < 0 || type >= LLMQ_MSG_COUNT)
        return NULL;
    llmq_msg_t *self = (llmq_msg_t *)calloc(1, sizeof *self);
    if (self)
        self->type = type;
    return self;
}

static void s_free_strs(char **items, size_t count)
{
    for (size_t k = 0; k < count; k++)
        free(items[k]);
    free(items);
}

/*  Release whatever the field owns and mark it absent. */
static void s_unset(llmq_msg_t *self, llmq_field_t f)
{
    s_value_t *v = &self->values[f];
    if (!v->set)
        return;
    if (s_fields[f].kind == S_STR)
        free(v->s);
    else if (s_fields[f].kind == S_RAW)
        free(v->raw.data);
    else if (s_fields[f].kind == S_STRS)
        s_free_strs(v->strs.items, v->strs.count);
    memset(v, 0, sizeof *v);
}

void llmq_msg_destroy(llmq_msg_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    llmq_msg_t *self = *self_p;
    for (int f = 0; f < LLMQ_F_COUNT; f++)
        s_unset(self, (llmq_field_t)f);
    zframe_destroy(&self->routing_id);
    zframe_destroy(&self->payload);
    free(self->reason);
    free(self->user_id);
    free(self);
    *self_p = NULL;
}

/*  ---- field storage ---------------------------------------------------- */

static int s_set_strn(llmq_msg_t *self, llmq_field_t f, const char *s,
                      size_t len)
{
    char *copy = (char *)malloc(len + 1);
    if (!copy)
        return -1;
    memcpy(copy, s, len);
    copy[len] = 0;
    s_unset(self, f);
    self->values[f].s = copy;
    self->values[f].set = true;
    return 0;
}

static int s_set_raw(llmq_msg_t *self, llmq_field_t f, const void *data,
                     size_t size)
{
    uint8_t *copy = (uint8_t *)malloc(size ? size : 1);
    if (!copy)
        return -1;
    if (size)
        memcpy(copy, data, size);
    s_unset(self, f);
    self->values[f].raw.data = copy;
    self->values[f].raw.size = size;
    self->values[f].set = true;
    return 0;
}

static int s_set_strs(llmq_msg_t *self, llmq_field_t f,
                      const char *const *items, size_t count)
{
    char **copy = (char **)calloc(count ? count : 1, sizeof(char *));
    if (!copy)
        return -1;
    for (size_t k = 0; k < count; k++) {
        copy[k] = strdup(items[k] ? items[k] : "");
        if (!copy[k]) {
            s_free_strs(copy, k);
            return -1;
        }
    }
    s_unset(self, f);
    self->values[f].strs.items = copy;
    self->values[f].strs.count = count;
    self->values[f].set = true;
    return 0;
}

static void s_set_scalar(llmq_msg_t *self, llmq_field_t f, s_value_t v)
{
    s_unset(self, f);
    v.set = true;
    self->values[f] = v;
}

static const s_value_t *s_get(const llmq_msg_t *self, llmq_field_t f)
{
    return self && self->values[f].set ? &self->values[f] : NULL;
}

/*  ---- generated accessors --------------------------------------------- */

#undef LLMQ_ACCESSOR_STR
#undef LLMQ_ACCESSOR_INT
#undef LLMQ_ACCESSOR_BOOL
#undef LLMQ_ACCESSOR_DBL
#undef LLMQ_ACCESSOR_RAW
#undef LLMQ_ACCESSOR_STRS
#define LLMQ_ACCESSOR_STR(name)                                                \
    const char *llmq_msg_##name(const llmq_msg_t *self)                        \
    {                                                                          \
        const s_value_t *v = s_get(self, LLMQ_F_##name);                       \
        return v ? v->s : NULL;                                                \
    }                                                                          \
    void llmq_msg_set_##name(llmq_msg_t *self, const char *value)              \
    {                                                                          \
        if (value)                                                             \
            s_set_strn(self, LLMQ_F_##name, value, strlen(value));             \
        else                                                                   \
            s_unset(self, LLMQ_F_##name);                                      \
    }
#define LLMQ_ACCESSOR_SCALAR(name, ctype, member)                              \
    ctype llmq_msg_##name(const llmq_msg_t *self)                              \
    {                                                                          \
        const s_value_t *v = s_get(self, LLMQ_F_##name);                       \
        return v ? v->member : (ctype)0;                                       \
    }                                                                          \
    void llmq_msg_set_##name(llmq_msg_t *self, ctype value)                    \
    {                                                                          \
        s_value_t v = {.member = value};                                       \
        s_set_scalar(self, LLMQ_F_##name, v);                                  \
    }
#define LLMQ_ACCESSOR_INT(name) LLMQ_ACCESSOR_SCALAR(name, int64_t, i)
#define LLMQ_ACCESSOR_BOOL(name) LLMQ_ACCESSOR_SCALAR(name, bool, b)
#define LLMQ_ACCESSOR_DBL(name) LLMQ_ACCESSOR_SCALAR(name, double, d)
#define LLMQ_ACCESSOR_RAW(name)                                                \
    const uint8_t *llmq_msg_##name(const llmq_msg_t *self, size_t *size)       \
    {                                                                          \
        const s_value_t *v = s_get(self, LLMQ_F_##name);                       \
        if (size)                                                              \
            *size = v ? v->raw.size : 0;                                       \
        return v ? v->raw.data : NULL;                                         \
    }                                                                          \
    void llmq_msg_set_##name(llmq_msg_t *self, const void *data, size_t size)  \
    {                                                                          \
        if (data)                                                              \
            s_set_raw(self, LLMQ_F_##name, data, size);                        \
        else                                                                   \
            s_unset(self, LLMQ_F_##name);                                      \
    }
#define LLMQ_ACCESSOR_STRS(name)                                               \
    size_t llmq_msg_##name##_count(const llmq_msg_t *self)                     \
    {                                                                          \
        const s_value_t *v = s_get(self, LLMQ_F_##name);                       \
        return v ? v->strs.count : 0;                                          \
    }                                                                          \
    const char *llmq_msg_##name##_at(const llmq_msg_t *self, size_t index)     \
    {                                                                          \
        const s_value_t *v = s_get(self, LLMQ_F_##name);                       \
        return v && index < v->strs.count ? v->strs.items[index] : NULL;       \
    }                                                                          \
    void llmq_msg_set_##name(llmq_msg_t *self, const char *const *items,       \
                             size_t count)                                     \
    {                                                                          \
        if (items || count == 0)                                               \
            s_set_strs(self, LLMQ_F_##name, items, items ? count : 0);         \
        else                                                                   \
            s_unset(self, LLMQ_F_##name);                                      \
    }
#define LLMQ_FIELD(name, group, key, kind, max) LLMQ_ACCESSOR_##kind(name)
#include "llmq_proto.def"

/*  ---- simple methods --------------------------------------------------- */

llmq_msg_t *llmq_msg_dup(const llmq_msg_t *self)
{
    if (!self)
        return NULL;
    llmq_msg_t *copy = llmq_msg_new(self->type);
    if (!copy)
        return NULL;
    int rc = 0;
    for (int f = 0; f < LLMQ_F_COUNT && rc == 0; f++) {
        const s_value_t *v = s_get(self, (llmq_field_t)f);
        if (!v)
            continue;
        if (s_fields[f].kind == S_STR)
            rc = s_set_strn(copy, (llmq_field_t)f, v->s, strlen(v->s));
        else if (s_fields[f].kind == S_RAW)
            rc = s_set_raw(copy, (llmq_field_t)f, v->raw.data, v->raw.size);
        else if (s_fields[f].kind == S_STRS)
            rc = s_set_strs(copy, (llmq_field_t)f,
                            (const char *const *)v->strs.items, v->strs.count);
        else
            copy->values[f] = *v;
    }
    if (self->routing_id)
        copy->routing_id = zframe_dup(self->routing_id);
    if (self->payload)
        copy->payload = zframe_dup(self->payload);
    if (self->reason)
        copy->reason = strdup(self->reason);
    if (rc)
        llmq_msg_destroy(&copy);
    return copy;
}

llmq_msg_type_t llmq_msg_type(const llmq_msg_t *self)
{
    return self ? self->type : LLMQ_MSG_INVALID;
}

const char *llmq_msg_type_name(llmq_msg_type_t type)
{
    if ((int)type < 0 || type >= LLMQ_MSG_COUNT)
        return "invalid";
    return s_msgs[type].name;
}

static llmq_msg_type_t s_type_from_namen(const char *name, size_t len)
{
    for (int t = 1; t < LLMQ_MSG_COUNT; t++)
        if (strlen(s_msgs[t].name) == len &&
            memcmp(s_msgs[t].name, name, len) == 0)
            return (llmq_msg_type_t)t;
    return LLMQ_MSG_INVALID;
}

llmq_msg_type_t llmq_msg_type_from_name(const char *name)
{
    return name ? s_type_from_namen(name, strlen(name)) : LLMQ_MSG_INVALID;
}

const char *llmq_msg_invalid_reason(const llmq_msg_t *self)
{
    if (!self)
        return "no message";
    if (self->reason)
        return self->reason;
    return self->type == LLMQ_MSG_INVALID ? "invalid message" : "";
}

bool llmq_msg_has(const llmq_msg_t *self, llmq_field_t field)
{
    if ((int)field < 0 || field >= LLMQ_F_COUNT)
        return false;
    return s_get(self, field) != NULL;
}

void llmq_msg_clear(llmq_msg_t *self, llmq_field_t field)
{
    if (self && (int)field >= 0 && field < LLMQ_F_COUNT)
        s_unset(self, field);
}

const char *llmq_msg_field_name(llmq_field_t field)
{
    if ((int)field < 0 || field >= LLMQ_F_COUNT)
        return NULL;
    return s_fields[field].name;
}

const char *llmq_msg_field_key(llmq_field_t field)
{
    if ((int)field < 0 || field >= LLMQ_F_COUNT)
        return NULL;
    return s_fields[field].key;
}

const char *llmq_msg_field_group(llmq_field_t field)
{
    if ((int)field < 0 || field >= LLMQ_F_COUNT)
        return NULL;
    return s_fields[field].group;
}

/*  ---- payload and routing id ------------------------------------------ */

zframe_t *llmq_msg_payload(const llmq_msg_t *self)
{
    return self ? self->payload : NULL;
}

void llmq_msg_set_payload(llmq_msg_t *self, zframe_t **payload_p)
{
    zframe_t *payload = payload_p ? *payload_p : NULL;
    if (payload_p)
        *payload_p = NULL;
    if (!self) {
        zframe_destroy(&payload);
        return;
    }
    zframe_destroy(&self->payload);
    self->payload = payload;
}

void llmq_msg_set_payload_mem(llmq_msg_t *self, const void *data, size_t size)
{
    zframe_t *frame = zframe_new(data, size);
    llmq_msg_set_payload(self, &frame);
}

zframe_t *llmq_msg_take_payload(llmq_msg_t *self)
{
    if (!self)
        return NULL;
    zframe_t *payload = self->payload;
    self->payload = NULL;
    return payload;
}

const char *llmq_msg_user_id(const llmq_msg_t *self)
{
    return self->user_id;
}

zframe_t *llmq_msg_routing_id(const llmq_msg_t *self)
{
    return self ? self->routing_id : NULL;
}

void llmq_msg_set_routing_id(llmq_msg_t *self, const zframe_t *routing_id)
{
    if (!self)
        return;
    zframe_destroy(&self->routing_id);
    if (routing_id)
        self->routing_id = zframe_dup((zframe_t *)routing_id);
}

/*  ---- encode ----------------------------------------------------------- */

static int s_errf(char *errbuf, size_t errlen, const char *fmt, ...)
{
    if (errbuf && errlen) {
        va_list args;
        va_start(args, fmt);
        vsnprintf(errbuf, errlen, fmt, args);
        va_end(args);
    }
    return -1;
}

/*  Display name of a field in reasons: "id" or "usage.prompt_tokens". */
static const char *s_field_label(llmq_field_t f, char *buf, size_t len)
{
    if (!s_fields[f].group)
        return s_fields[f].key;
    snprintf(buf, len, "%s.%s", s_fields[f].group, s_fields[f].key);
    return buf;
}

/*  A STR value must be UTF-8 within its limit (a C string has no NUL). */
static int s_check_field(const llmq_msg_t *self, llmq_field_t f, char *errbuf,
                         size_t errlen)
{
    const s_value_t *v = &self->values[f];
    const s_field_t *def = &s_fields[f];
    /*  Numbers and booleans need no check: skip the label's snprintf, which
        showed up in the broker's per-message profile. */
    if (def->kind != S_STR && def->kind != S_RAW && def->kind != S_STRS)
        return 0;
    char label[64];
    const char *name = s_field_label(f, label, sizeof label);
    if (def->kind == S_STR) {
        size_t len = strlen(v->s);
        if (len > def->max)
            return s_errf(errbuf, errlen, "'%s' too long (%zu > %zu bytes)",
                          name, len, def->max);
        if (!llmq_mp_utf8((const uint8_t *)v->s, len))
            return s_errf(errbuf, errlen, "'%s' invalid UTF-8", name);
    } else if (def->kind == S_RAW) {
        if (v->raw.size > def->max)
            return s_errf(errbuf, errlen, "'%s' too large (%zu > %zu bytes)",
                          name, v->raw.size, def->max);
        if (!llmq_value_is_valid(v->raw.data, v->raw.size))
            return s_errf(errbuf, errlen, "'%s' invalid msgpack value", name);
    } else if (def->kind == S_STRS) {
        if (v->strs.count > def->max)
            return s_errf(errbuf, errlen, "'%s' too many items (%zu > %zu)",
                          name, v->strs.count, def->max);
        for (size_t k = 0; k < v->strs.count; k++)
            if (strlen(v->strs.items[k]) > S_MAX_STRS_ITEM ||
                !llmq_mp_utf8((const uint8_t *)v->strs.items[k],
                              strlen(v->strs.items[k])))
                return s_errf(errbuf, errlen, "'%s' bad item %zu", name, k);
    }
    return 0;
}

/*  Required fields present and every set field within its limits. */
static int s_check(const llmq_msg_t *self, char *errbuf, size_t errlen)
{
    char label[64];
    for (const int *r = s_msgs[self->type].required; *r >= 0; r++)
        if (!self->values[*r].set)
            return s_errf(errbuf, errlen, "missing required '%s'",
                          s_field_label((llmq_field_t)*r, label, sizeof label));
    for (int f = 0; f < LLMQ_F_COUNT; f++)
        if (self->values[f].set &&
            s_check_field(self, (llmq_field_t)f, errbuf, errlen))
            return -1;
    return 0;
}

static void s_pack_str(msgpack_packer *pk, const char *s)
{
    size_t len = strlen(s);
    msgpack_pack_str(pk, len);
    msgpack_pack_str_body(pk, s, len);
}

static void s_pack_value(msgpack_packer *pk, msgpack_sbuffer *sbuf,
                         const s_field_t *def, const s_value_t *v)
{
    s_pack_str(pk, def->key);
    switch (def->kind) {
    case S_STR:
        s_pack_str(pk, v->s);
        break;
    case S_INT:
        msgpack_pack_int64(pk, v->i);
        break;
    case S_BOOL:
        if (v->b)
            msgpack_pack_true(pk);
        else
            msgpack_pack_false(pk);
        break;
    case S_DBL:
        msgpack_pack_double(pk, v->d);
        break;
    case S_RAW:
        msgpack_sbuffer_write(sbuf, (const char *)v->raw.data, v->raw.size);
        break;
    case S_STRS:
        msgpack_pack_array(pk, v->strs.count);
        for (size_t k = 0; k < v->strs.count; k++)
            s_pack_str(pk, v->strs.items[k]);
        break;
    }
}

/*  True if field f is the first set field of its group, so the group's
    map is written when the encoder reaches it. */
static bool s_group_first(const llmq_msg_t *self, int f)
{
    for (int g = 0; g < f; g++)
        if (self->values[g].set && s_fields[g].group &&
            strcmp(s_fields[g].group, s_fields[f].group) == 0)
            return false;
    return true;
}

static size_t s_group_count(const llmq_msg_t *self, int f)
{
    size_t n = 0;
    for (int g = f; g < LLMQ_F_COUNT; g++)
        if (self->values[g].set && s_fields[g].group &&
            strcmp(s_fields[g].group, s_fields[f].group) == 0)
            n++;
    return n;
}

static void s_pack_group(const llmq_msg_t *self, msgpack_packer *pk,
                         msgpack_sbuffer *sbuf, int f)
{
    s_pack_str(pk, s_fields[f].group);
    msgpack_pack_map(pk, s_group_count(self, f));
    for (int g = f; g < LLMQ_F_COUNT; g++)
        if (self->values[g].set && s_fields[g].group &&
            strcmp(s_fields[g].group, s_fields[f].group) == 0)
            s_pack_value(pk, sbuf, &s_fields[g], &self->values[g]);
}

/*  Top-level entries: v, t, ungrouped fields, one per group in use. */
static size_t s_top_count(const llmq_msg_t *self)
{
    size_t n = 2;
    for (int f = 0; f < LLMQ_F_COUNT; f++)
        if (self->values[f].set &&
            (!s_fields[f].group || s_group_first(self, f)))
            n++;
    return n;
}

static void s_pack_header(const llmq_msg_t *self, msgpack_packer *pk,
                          msgpack_sbuffer *sbuf)
{
    msgpack_pack_map(pk, s_top_count(self));
    s_pack_str(pk, "v");
    msgpack_pack_int64(pk, LLMQ_PROTOCOL_VERSION);
    s_pack_str(pk, "t");
    s_pack_str(pk, s_msgs[self->type].name);
    for (int f = 0; f < LLMQ_F_COUNT; f++) {
        if (!self->values[f].set)
            continue;
        if (!s_fields[f].group)
            s_pack_value(pk, sbuf, &s_fields[f], &self->values[f]);
        else if (s_group_first(self, f))
            s_pack_group(self, pk, sbuf, f);
    }
}

zframe_t *llmq_msg_encode(const llmq_msg_t *self, char *errbuf, size_t errlen)
{
    if (!self || self->type == LLMQ_MSG_INVALID) {
        s_errf(errbuf, errlen, "cannot encode an invalid message");
        return NULL;
    }
    if (s_check(self, errbuf, errlen))
        return NULL;
    msgpack_sbuffer sbuf;
    msgpack_packer pk;
    msgpack_sbuffer_init(&sbuf);
    msgpack_packer_init(&pk, &sbuf, msgpack_sbuffer_write);
    s_pack_header(self, &pk, &sbuf);
    zframe_t *frame = NULL;
    if (sbuf.size > LLMQ_MAX_HEADER_SIZE)
        s_errf(errbuf, errlen, "header too large (%zu > %d bytes)", sbuf.size,
               LLMQ_MAX_HEADER_SIZE);
    else
        frame = zframe_new(sbuf.data, sbuf.size);
    msgpack_sbuffer_destroy(&sbuf);
    return frame;
}

/*  ---- decode ----------------------------------------------------------- */

typedef struct {
    llmq_mp_reader_t r; /* over the header bytes */
    llmq_msg_t *msg;    /* fields land here; type is set at the end */
    char reason[160];   /* first failure, formatted */
    bool has_v;         /* `v` seen */
    int64_t v;          /* its value */
    const uint8_t *t;   /* `t` bytes, borrowed from the input */
    uint32_t t_len;     /* their length */
} s_decoder_t;

static int s_fail(s_decoder_t *d, const char *fmt, ...)
{
    if (!d->reason[0]) {
        va_list args;
        va_start(args, fmt);
        vsnprintf(d->reason, sizeof d->reason, fmt, args);
        va_end(args);
    }
    return -1;
}

/*  A reader failure becomes the decoder's reason. */
static int s_fail_reader(s_decoder_t *d)
{
    return s_fail(d, "%s", d->r.err ? d->r.err : "malformed");
}

static int s_find_field(const char *group, const uint8_t *key, uint32_t len)
{
    for (int f = 0; f < LLMQ_F_COUNT; f++) {
        const s_field_t *def = &s_fields[f];
        if ((group == NULL) != (def->group == NULL))
            continue;
        if (group && strcmp(group, def->group) != 0)
            continue;
        if (strlen(def->key) == len && memcmp(def->key, key, len) == 0)
            return f;
    }
    return -1;
}

/*  The group name (static string) for a top-level key, or NULL. */
static const char *s_find_group(const uint8_t *key, uint32_t len)
{
    for (int f = 0; f < LLMQ_F_COUNT; f++) {
        const char *g = s_fields[f].group;
        if (g && strlen(g) == len && memcmp(g, key, len) == 0)
            return g;
    }
    return NULL;
}

static int s_wrong_type(s_decoder_t *d, llmq_field_t f, const char *want)
{
    char label[64];
    return s_fail(d, "'%s' wrong type (want %s)",
                  s_field_label(f, label, sizeof label), want);
}

static int s_dec_str(s_decoder_t *d, llmq_field_t f, const llmq_mp_item_t *it)
{
    char label[64];
    const char *name = s_field_label(f, label, sizeof label);
    if (it->kind != LLMQ_MP_STR && it->kind != LLMQ_MP_BIN)
        return s_wrong_type(d, f, "string");
    if (it->len > s_fields[f].max)
        return s_fail(d, "'%s' too long (%u > %zu bytes)", name, it->len,
                      s_fields[f].max);
    if (memchr(it->ptr, 0, it->len))
        return s_fail(d, "'%s' contains NUL", name);
    if (!llmq_mp_utf8(it->ptr, it->len))
        return s_fail(d, "'%s' invalid UTF-8", name);
    if (s_set_strn(d->msg, f, (const char *)it->ptr, it->len))
        return s_fail(d, "out of memory");
    return 0;
}

static int s_dec_int(s_decoder_t *d, llmq_field_t f, const llmq_mp_item_t *it)
{
    s_value_t v = {.i = it->i};
    if (it->kind == LLMQ_MP_UINT) {
        if (it->u > (uint64_t)INT64_MAX)
            return s_fail(d, "'%s' out of range", s_fields[f].key);
        v.i = (int64_t)it->u;
    } else if (it->kind != LLMQ_MP_INT)
        return s_wrong_type(d, f, "integer");
    s_set_scalar(d->msg, f, v);
    return 0;
}

static int s_dec_scalar(s_decoder_t *d, llmq_field_t f,
                        const llmq_mp_item_t *it)
{
    s_value_t v = {.i = 0};
    if (s_fields[f].kind == S_BOOL) {
        if (it->kind != LLMQ_MP_BOOL)
            return s_wrong_type(d, f, "boolean");
        v.b = it->b;
    } else if (it->kind == LLMQ_MP_FLOAT)
        v.d = it->d;
    else if (it->kind == LLMQ_MP_UINT)
        v.d = (double)it->u;
    else if (it->kind == LLMQ_MP_INT)
        v.d = (double)it->i;
    else
        return s_wrong_type(d, f, "number");
    s_set_scalar(d->msg, f, v);
    return 0;
}

static int s_dec_strs(s_decoder_t *d, llmq_field_t f, const llmq_mp_item_t *it)
{
    if (it->kind != LLMQ_MP_ARRAY)
        return s_wrong_type(d, f, "array of strings");
    if (it->len > s_fields[f].max)
        return s_fail(d, "'%s' too many items (%u > %zu)", s_fields[f].key,
                      it->len, s_fields[f].max);
    char **items = (char **)calloc(it->len ? it->len : 1, sizeof(char *));
    if (!items)
        return s_fail(d, "out of memory");
    for (uint32_t k = 0; k < it->len; k++) {
        llmq_mp_item_t s;
        if (llmq_mp_read(&d->r, &s) ||
            (s.kind != LLMQ_MP_STR && s.kind != LLMQ_MP_BIN) ||
            s.len > S_MAX_STRS_ITEM || memchr(s.ptr, 0, s.len) ||
            !llmq_mp_utf8(s.ptr, s.len) ||
            !(items[k] = strndup((const char *)s.ptr, s.len))) {
            s_free_strs(items, k);
            return d->r.err ? s_fail_reader(d)
                            : s_fail(d, "'%s' bad item %u", s_fields[f].key, k);
        }
    }
    s_unset(d->msg, f);
    d->msg->values[f].strs.items = items;
    d->msg->values[f].strs.count = it->len;
    d->msg->values[f].set = true;
    return 0;
}

/*  RAW: one well-formed value, kept as its encoded bytes. */
static int s_dec_raw(s_decoder_t *d, llmq_field_t f)
{
    const uint8_t *start = d->r.p;
    if (llmq_mp_skip(&d->r, S_MAX_DEPTH))
        return s_fail_reader(d);
    size_t size = (size_t)(d->r.p - start);
    if (size > s_fields[f].max)
        return s_fail(d, "'%s' too large (%zu > %zu bytes)", s_fields[f].key,
                      size, s_fields[f].max);
    if (!llmq_value_is_valid(start, size))
        return s_fail(d, "'%s' invalid msgpack value", s_fields[f].key);
    if (s_set_raw(d->msg, f, start, size))
        return s_fail(d, "out of memory");
    return 0;
}

/*  One known field's value. A nil value means "absent". */
static int s_dec_field(s_decoder_t *d, llmq_field_t f)
{
    if (d->r.p < d->r.end && *d->r.p == 0xc0) {
        d->r.p++;
        s_unset(d->msg, f);
        return 0;
    }
    if (s_fields[f].kind == S_RAW)
        return s_dec_raw(d, f);
    llmq_mp_item_t it;
    if (llmq_mp_read(&d->r, &it))
        return s_fail_reader(d);
    switch (s_fields[f].kind) {
    case S_STR:
        return s_dec_str(d, f, &it);
    case S_INT:
        return s_dec_int(d, f, &it);
    case S_STRS:
        return s_dec_strs(d, f, &it);
    default:
        return s_dec_scalar(d, f, &it);
    }
}

static int s_read_key(s_decoder_t *d, llmq_mp_item_t *key)
{
    if (llmq_mp_read(&d->r, key))
        return s_fail_reader(d);
    if (key->kind != LLMQ_MP_STR && key->kind != LLMQ_MP_BIN)
        return s_fail(d, "map key is not a string");
    return 0;
}

/*  A nested group map: known keys decode, unknown ones are skipped. */
static int s_dec_group(s_decoder_t *d, const char *group)
{
    llmq_mp_item_t it;
    if (llmq_mp_read(&d->r, &it))
        return s_fail_reader(d);
    if (it.kind == LLMQ_MP_NIL)
        return 0;
    if (it.kind != LLMQ_MP_MAP)
        return s_fail(d, "'%s' wrong type (want map)", group);
    for (uint32_t k = 0; k < it.len; k++) {
        llmq_mp_item_t key;
        if (s_read_key(d, &key))
            return -1;
        int f = s_find_field(group, key.ptr, key.len);
        if (f >= 0 && s_dec_field(d, (llmq_field_t)f))
            return -1;
        if (f < 0 && llmq_mp_skip(&d->r, S_MAX_DEPTH - 2))
            return s_fail_reader(d);
    }
    return 0;
}

/*  `v` and `t`: checked after the whole map is read. */
static int s_dec_vt(s_decoder_t *d, const llmq_mp_item_t *key)
{
    llmq_mp_item_t it;
    if (llmq_mp_read(&d->r, &it))
        return s_fail_reader(d);
    if (key->ptr[0] == 'v') {
        if (it.kind != LLMQ_MP_UINT && it.kind != LLMQ_MP_INT)
            return s_fail(d, "'v' wrong type (want integer)");
        d->has_v = true;
        d->v = it.kind == LLMQ_MP_UINT && it.u > INT64_MAX ? -1 : it.i;
        return 0;
    }
    if (it.kind != LLMQ_MP_STR && it.kind != LLMQ_MP_BIN)
        return s_fail(d, "'t' wrong type (want string)");
    d->t = it.ptr;
    d->t_len = it.len;
    return 0;
}

static int s_dec_entry(s_decoder_t *d)
{
    llmq_mp_item_t key;
    if (s_read_key(d, &key))
        return -1;
    if (key.len == 1 && (key.ptr[0] == 'v' || key.ptr[0] == 't'))
        return s_dec_vt(d, &key);
    int f = s_find_field(NULL, key.ptr, key.len);
    if (f >= 0)
        return s_dec_field(d, (llmq_field_t)f);
    const char *group = s_find_group(key.ptr, key.len);
    if (group)
        return s_dec_group(d, group);
    if (llmq_mp_skip(&d->r, S_MAX_DEPTH - 1))
        return s_fail_reader(d);
    return 0;
}

static int s_dec_map(s_decoder_t *d)
{
    llmq_mp_item_t it;
    if (llmq_mp_read(&d->r, &it))
        return s_fail_reader(d);
    if (it.kind != LLMQ_MP_MAP)
        return s_fail(d, "header is not a map");
    for (uint32_t k = 0; k < it.len; k++)
        if (s_dec_entry(d))
            return -1;
    if (llmq_mp_left(&d->r))
        return s_fail(d, "trailing bytes after header");
    return 0;
}

/*  Version, type, required fields, payload rule. */
static int s_dec_finish(s_decoder_t *d, bool has_payload)
{
    if (!d->has_v)
        return s_fail(d, "missing 'v'");
    if (d->v != LLMQ_PROTOCOL_VERSION)
        return s_fail(d, "unsupported version %lld", (long long)d->v);
    if (!d->t)
        return s_fail(d, "missing 't'");
    llmq_msg_type_t type = s_type_from_namen((const char *)d->t, d->t_len);
    if (type == LLMQ_MSG_INVALID)
        return s_fail(
            d, "unknown type '%.*s'",
            (int)(d->t_len > S_MAX_TYPE_NAME ? S_MAX_TYPE_NAME : d->t_len),
            (const char *)d->t);
    char label[64];
    for (const int *r = s_msgs[type].required; *r >= 0; r++)
        if (!d->msg->values[*r].set)
            return s_fail(d, "missing required '%s'",
                          s_field_label((llmq_field_t)*r, label, sizeof label));
    if (has_payload && s_msgs[type].payload == S_PAYLOAD_NONE)
        return s_fail(d, "payload not allowed for '%s'", s_msgs[type].name);
    if (!has_payload && s_msgs[type].payload == S_PAYLOAD_REQ)
        return s_fail(d, "payload required for '%s'", s_msgs[type].name);
    d->msg->type = type;
    return 0;
}

/*  Decode into d->msg; on failure the message keeps what was read so far
    (llmq_msg_recv uses its `id`) and d->reason says why. */
static int s_decode(s_decoder_t *d, const void *data, size_t size,
                    bool has_payload)
{
    memset(d, 0, sizeof *d);
    d->msg = llmq_msg_new(LLMQ_MSG_INVALID);
    if (!d->msg)
        return s_fail(d, "out of memory");
    if (!data || size == 0)
        return s_fail(d, "empty header");
    if (size > LLMQ_MAX_HEADER_SIZE)
        return s_fail(d, "header too large (%zu > %d bytes)", size,
                      LLMQ_MAX_HEADER_SIZE);
    llmq_mp_init(&d->r, data, size);
    if (s_dec_map(d) || s_dec_finish(d, has_payload))
        return -1;
    return 0;
}

llmq_msg_t *llmq_msg_decode(const void *data, size_t size, bool has_payload,
                            char *errbuf, size_t errlen)
{
    s_decoder_t d;
    if (s_decode(&d, data, size, has_payload) == 0)
        return d.msg;
    s_errf(errbuf, errlen, "%s", d.reason);
    llmq_msg_destroy(&d.msg);
    return NULL;
}

/*  ---- send and receive ------------------------------------------------- */

static bool s_is_router(void *handle)
{
    int type = -1;
    size_t len = sizeof type;
    return handle && zmq_getsockopt(handle, ZMQ_TYPE, &type, &len) == 0 &&
           type == ZMQ_ROUTER;
}

/*  Send one frame, destroying it on success and on failure. */
static int s_send_frame(zframe_t **frame_p, void *handle, bool more)
{
    int rc = zframe_send(frame_p, handle, more ? ZFRAME_MORE : 0);
    zframe_destroy(frame_p);
    return rc;
}

static int s_send_check(const llmq_msg_t *self, bool router, char *errbuf,
                        size_t errlen)
{
    if (router && !self->routing_id)
        return s_errf(errbuf, errlen, "no routing id for a ROUTER socket");
    s_payload_t rule = s_msgs[self->type].payload;
    if (self->payload && rule == S_PAYLOAD_NONE)
        return s_errf(errbuf, errlen, "payload not allowed");
    if (!self->payload && rule == S_PAYLOAD_REQ)
        return s_errf(errbuf, errlen, "payload required");
    return 0;
}

int llmq_msg_send(llmq_msg_t **self_p, void *sock)
{
    if (!self_p || !*self_p)
        return -1;
    llmq_msg_t *self = *self_p;
    *self_p = NULL;
    void *handle = zsock_resolve(sock);
    bool router = s_is_router(handle);
    char reason[160] = "";
    zframe_t *header = NULL;
    if (!handle)
        snprintf(reason, sizeof reason, "not a socket");
    else if (s_send_check(self, router, reason, sizeof reason) == 0)
        header = llmq_msg_encode(self, reason, sizeof reason);
    int rc = -1;
    if (header) {
        rc = 0;
        if (router)
            rc = s_send_frame(&self->routing_id, handle, true);
        if (rc == 0)
            rc = s_send_frame(&header, handle, self->payload != NULL);
        if (rc == 0 && self->payload)
            rc = s_send_frame(&self->payload, handle, false);
    } else
        llmq_log(NULL, LLMQ_LOG_WARN, "msg_send_failed",
                 LLMQ_LOG_STR("type", llmq_msg_type_name(self->type)),
                 LLMQ_LOG_STR("reason", reason), LLMQ_LOG_END);
    zframe_destroy(&header);
    llmq_msg_destroy(&self);
    return rc;
}

/*  Best effort: the `id` of a header that failed to decode, so the error
    reply can name the request. Only a top-level string <= 64 bytes. */
static void s_salvage_id(llmq_msg_t *msg, const void *data, size_t size)
{
    if (llmq_msg_has(msg, LLMQ_F_id) || !data || size > LLMQ_MAX_HEADER_SIZE)
        return;
    llmq_mp_reader_t r;
    llmq_mp_item_t it, key, val;
    llmq_mp_init(&r, data, size);
    if (llmq_mp_read(&r, &it) || it.kind != LLMQ_MP_MAP)
        return;
    for (uint32_t k = 0; k < it.len; k++) {
        if (llmq_mp_read(&r, &key))
            return;
        bool is_id = key.kind == LLMQ_MP_STR && key.len == 2 &&
                     memcmp(key.ptr, "id", 2) == 0;
        const uint8_t *mark = r.p;
        if (is_id && llmq_mp_read(&r, &val) == 0 && val.kind == LLMQ_MP_STR &&
            val.len <= s_fields[LLMQ_F_id].max &&
            !memchr(val.ptr, 0, val.len) && llmq_mp_utf8(val.ptr, val.len)) {
            s_set_strn(msg, LLMQ_F_id, (const char *)val.ptr, val.len);
            return;
        }
        r.p = mark;
        r.err = NULL;
        if (llmq_mp_skip(&r, S_MAX_DEPTH))
            return;
    }
}

/*  Turn the received frames into a message; takes the frames. */
static llmq_msg_t *s_from_frames(zframe_t **rid_p, zframe_t **header_p,
                                 zframe_t **payload_p, int frames)
{
    s_decoder_t d;
    zframe_t *header = *header_p;
    const void *data = header ? zframe_data(header) : NULL;
    size_t size = header ? zframe_size(header) : 0;
    if (frames > 2) {
        memset(&d, 0, sizeof d);
        d.msg = llmq_msg_new(LLMQ_MSG_INVALID);
        if (d.msg)
            s_fail(&d, "too many frames (%d)", frames);
    } else
        s_decode(&d, data, size, *payload_p != NULL);
    if (d.msg) {
        /*  Under CURVE, ZAP's User-Id (the peer's public key) rides on
            every frame but the routing id, which the ROUTER makes. */
        const char *user =
            *rid_p && header ? zframe_meta(header, "User-Id") : NULL;
        if (user && *user)
            d.msg->user_id = strdup(user);
        d.msg->routing_id = *rid_p;
        *rid_p = NULL;
        if (d.msg->type == LLMQ_MSG_INVALID) {
            d.msg->reason = strdup(d.reason);
            s_salvage_id(d.msg, data, size);
        } else {
            d.msg->payload = *payload_p;
            *payload_p = NULL;
        }
    }
    zframe_destroy(rid_p);
    zframe_destroy(header_p);
    zframe_destroy(payload_p);
    return d.msg;
}

llmq_msg_t *llmq_msg_recv(void *sock)
{
    void *handle = zsock_resolve(sock);
    if (!handle)
        return NULL;
    zframe_t *rid = NULL, *header = NULL, *payload = NULL;
    if (s_is_router(handle) && !(rid = zframe_recv(handle)))
        return NULL;
    /*  Drain every frame of the message, even when there are too many, so
        the next receive starts at a message boundary. */
    int frames = 0;
    bool more = rid ? zframe_more(rid) : true;
    while (more) {
        zframe_t *frame = zframe_recv(handle);
        if (!frame)
            break;
        more = zframe_more(frame);
        frames++;
        if (frames == 1)
            header = frame;
        else if (frames == 2)
            payload = frame;
        else
            zframe_destroy(&frame);
    }
    if (frames == 0 && !rid)
        return NULL;
    return s_from_frames(&rid, &header, &payload, frames);
}

llmq_msg_t *llmq_msg_expect(void *sock, llmq_msg_type_t type, int timeout_ms,
                            llmq_msg_tick_fn *tick, void *arg)
{
    void *handle = zsock_resolve(sock);
    int64_t until = zclock_mono() + timeout_ms;
    while (handle && zclock_mono() < until) {
        if (tick)
            tick(arg);
        zmq_pollitem_t item = {handle, 0, ZMQ_POLLIN, 0};
        if (zmq_poll(&item, 1, 50) <= 0)
            continue;
        llmq_msg_t *msg = llmq_msg_recv(sock);
        if (!msg)
            return NULL;
        llmq_msg_type_t got = llmq_msg_type(msg);
        if (got == type)
            return msg;
        bool skip = got == LLMQ_MSG_HB || got == LLMQ_MSG_ACK;
        if (!skip) {
            fprintf(stderr, "expected %s, got:\n", llmq_msg_type_name(type));
            llmq_msg_print(msg);
        }
        llmq_msg_destroy(&msg);
        if (!skip)
            return NULL;
    }
    return NULL;
}

/*  ---- errors ----------------------------------------------------------- */

const char *llmq_err_name(llmq_err_t err)
{
    if ((int)err < 0 || err >= LLMQ_ERR_COUNT)
        return "unknown";
    return s_errs[err].name;
}

bool llmq_err_retryable(llmq_err_t err)
{
    if ((int)err <= 0 || err >= LLMQ_ERR_COUNT)
        return false;
    return s_errs[err].retryable;
}

llmq_err_t llmq_err_from_name(const char *name)
{
    if (!name)
        return LLMQ_ERR_NONE;
    for (int e = 1; e < LLMQ_ERR_COUNT; e++)
        if (strcmp(s_errs[e].name, name) == 0)
            return (llmq_err_t)e;
    return LLMQ_ERR_NONE;
}

void llmq_msg_set_failure(llmq_msg_t *self, llmq_err_t err, int status,
                          const char *message)
{
    if (!self)
        return;
    llmq_msg_set_ok(self, false);
    llmq_msg_set_error_code(self, llmq_err_name(err));
    llmq_msg_set_error_message(self, message ? message : "");
    if (status)
        llmq_msg_set_error_status(self, status);
    else
        llmq_msg_clear(self, LLMQ_F_error_status);
    llmq_msg_set_error_retryable(self, llmq_err_retryable(err));
}

/*  ---- debugging --------------------------------------------------------- */

/*  A peer's string in quotes, escaped: a name with a newline or a
    terminal escape (ESC, C1 controls) cannot forge a line of the dump or
    move the cursor. Other UTF-8 is printed as is. */
static void s_print_str(const char *text)
{
    const unsigned char *p = (const unsigned char *)(text ? text : "");
    fputc('"', stderr);
    for (; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(stderr, "\\%c", *p);
        else if (*p < 0x20 || *p == 0x7F)
            fprintf(stderr, "\\x%02x", *p);
        else if (*p == 0xC2 && p[1] >= 0x80 && p[1] < 0xA0)
            fprintf(stderr, "\\u%04x", *++p); /* C1 control */
        else
            fputc(*p, stderr);
    }
    fputc('"', stderr);
}

static void s_print_field(const llmq_msg_t *self, int f)
{
    const s_value_t *v = &self->values[f];
    char label[64];
    fprintf(stderr,
            "    %s: ", s_field_label((llmq_field_t)f, label, sizeof label));
    switch (s_fields[f].kind) {
    case S_STR:
        s_print_str(v->s);
        fputc('\n', stderr);
        break;
    case S_INT:
        fprintf(stderr, "%lld\n", (long long)v->i);
        break;
    case S_BOOL:
        fprintf(stderr, "%s\n", v->b ? "true" : "false");
        break;
    case S_DBL:
        fprintf(stderr, "%g\n", v->d);
        break;
    case S_RAW: {
        char *json = llmq_value_to_json_text(v->raw.data, v->raw.size, NULL, 0);
        fprintf(stderr, "%s\n", json ? json : "(invalid)");
        free(json);
        break;
    }
    case S_STRS:
        for (size_t k = 0; k < v->strs.count; k++) {
            fputs(k ? ", " : "[", stderr);
            s_print_str(v->strs.items[k]);
        }
        fprintf(stderr, "%s\n", v->strs.count ? "]" : "[]");
        break;
    }
}

void llmq_msg_print(const llmq_msg_t *self)
{
    if (!self) {
        fprintf(stderr, "llmq_msg: (null)\n");
        return;
    }
    fprintf(stderr, "llmq_msg: %s%s%s\n", llmq_msg_type_name(self->type),
            self->reason ? " reason=" : "", self->reason ? self->reason : "");
    for (int f = 0; f < LLMQ_F_COUNT; f++)
        if (self->values[f].set)
            s_print_field(self, f);
    if (self->payload)
        fprintf(stderr, "    (payload: %zu bytes)\n",
                zframe_size(self->payload));
}

/*  ---- selftest ---------------------------------------------------------- */

/*  Checks that stay on in release builds (NDEBUG removes assert). */
#include "llmq_check.h"
#define S_TEST(cond) LLMQ_CHECK(cond)

/*  Encode, decode, compare the fields that matter. */
static void s_test_roundtrip(bool verbose)
{
    llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_REQ);
    llmq_msg_set_id(msg, "r-1");
    llmq_msg_set_op(msg, "chat");
    llmq_msg_set_model(msg, "gpt-4o-mini");
    llmq_msg_set_priority(msg, -5);
    llmq_msg_set_stream(msg, true);
    llmq_msg_set_usage_cost_usd(msg, 0.25);
    uint8_t meta[] = {0x81, 0xa1, 'k', 0x01}; /* {"k": 1} */
    llmq_msg_set_meta(msg, meta, sizeof meta);
    const char *models[] = {"a", "b"};
    llmq_msg_set_models(msg, models, 2);
    char err[160];
    zframe_t *frame = llmq_msg_encode(msg, err, sizeof err);
    S_TEST(frame);
    llmq_msg_t *back = llmq_msg_decode(zframe_data(frame), zframe_size(frame),
                                       true, err, sizeof err);
    S_TEST(back);
    S_TEST(llmq_msg_type(back) == LLMQ_MSG_REQ);
    S_TEST(streq(llmq_msg_id(back), "r-1"));
    S_TEST(streq(llmq_msg_model(back), "gpt-4o-mini"));
    S_TEST(llmq_msg_priority(back) == -5);
    S_TEST(llmq_msg_stream(back));
    S_TEST(llmq_msg_usage_cost_usd(back) == 0.25);
    size_t size = 0;
    const uint8_t *raw = llmq_msg_meta(back, &size);
    S_TEST(raw && size == sizeof meta && memcmp(raw, meta, size) == 0);
    S_TEST(llmq_msg_models_count(back) == 2);
    S_TEST(streq(llmq_msg_models_at(back, 1), "b"));
    S_TEST(llmq_msg_models_at(back, 2) == NULL);
    /* no payload for a req is an error */
    llmq_msg_t *bad = llmq_msg_decode(zframe_data(frame), zframe_size(frame),
                                      false, err, sizeof err);
    S_TEST(!bad && strstr(err, "payload required"));
    if (verbose)
        llmq_msg_print(back);
    llmq_msg_t *copy = llmq_msg_dup(back);
    S_TEST(streq(llmq_msg_op(copy), "chat"));
    llmq_msg_destroy(&copy);
    llmq_msg_destroy(&back);
    zframe_destroy(&frame);
    /* required field missing: encode refuses */
    llmq_msg_clear(msg, LLMQ_F_model);
    S_TEST(!llmq_msg_has(msg, LLMQ_F_model));
    S_TEST(llmq_msg_encode(msg, err, sizeof err) == NULL);
    S_TEST(strstr(err, "missing required 'model'"));
    llmq_msg_destroy(&msg);
    llmq_msg_destroy(&msg);
}

static void s_test_failure(void)
{
    llmq_msg_t *res = llmq_msg_new(LLMQ_MSG_RES);
    llmq_msg_set_id(res, "x");
    llmq_msg_set_failure(res, LLMQ_ERR_RATE_LIMITED, 429, "slow down");
    zframe_t *frame = llmq_msg_encode(res, NULL, 0);
    llmq_msg_t *back =
        llmq_msg_decode(zframe_data(frame), zframe_size(frame), false, NULL, 0);
    S_TEST(back && !llmq_msg_ok(back) && llmq_msg_has(back, LLMQ_F_ok));
    S_TEST(streq(llmq_msg_error_code(back), "rate_limited"));
    S_TEST(llmq_msg_error_status(back) == 429);
    S_TEST(llmq_msg_error_retryable(back));
    S_TEST(llmq_err_from_name("overloaded") == LLMQ_ERR_OVERLOADED);
    S_TEST(llmq_err_from_name("nope") == LLMQ_ERR_NONE);
    S_TEST(streq(llmq_msg_type_name(LLMQ_MSG_BATCH_ADD), "batch.add"));
    S_TEST(llmq_msg_type_from_name("job.poll") == LLMQ_MSG_JOB_POLL);
    S_TEST(llmq_msg_type_from_name("nope") == LLMQ_MSG_INVALID);
    llmq_msg_destroy(&back);
    zframe_destroy(&frame);
    llmq_msg_destroy(&res);
}

static void s_test_decode_errors(void)
{
    char err[160];
    /* {"v": 1, "t": "ping"} truncated at every length */
    uint8_t ping[] = {0x82, 0xa1, 'v', 0x01, 0xa1, 't',
                      0xa4, 'p',  'i', 'n',  'g'};
    for (size_t n = 0; n < sizeof ping; n++)
        S_TEST(!llmq_msg_decode(ping, n, false, err, sizeof err));
    llmq_msg_t *msg =
        llmq_msg_decode(ping, sizeof ping, false, err, sizeof err);
    S_TEST(msg && llmq_msg_type(msg) == LLMQ_MSG_PING);
    llmq_msg_destroy(&msg);
    /* a map claiming 4 billion entries */
    uint8_t bomb[] = {0xdf, 0xff, 0xff, 0xff, 0xff, 0xa1, 'v'};
    S_TEST(!llmq_msg_decode(bomb, sizeof bomb, false, err, sizeof err));
    S_TEST(strstr(err, "count exceeds bytes left"));
    ping[3] = 0x02;
    S_TEST(!llmq_msg_decode(ping, sizeof ping, false, err, sizeof err));
    S_TEST(strstr(err, "unsupported version"));
}

/*  ROUTER/DEALER over tcp: a request with payload, zero-copy forwarding of
    the payload into the reply, and garbage coming back as INVALID. */
static void s_test_sockets(bool verbose)
{
    zsock_t *router = zsock_new(ZMQ_ROUTER);
    int port = zsock_bind(router, "tcp://127.0.0.1:*");
    S_TEST(port > 0);
    zsock_t *dealer = zsock_new(ZMQ_DEALER);
    zsock_set_rcvtimeo(dealer, 5000);
    zsock_set_rcvtimeo(router, 5000);
    zsock_set_identity(dealer, "client-1");
    S_TEST(zsock_connect(dealer, "tcp://127.0.0.1:%d", port) == 0);

    llmq_msg_t *req = llmq_msg_new(LLMQ_MSG_REQ);
    llmq_msg_set_id(req, "r-1");
    llmq_msg_set_op(req, "chat");
    llmq_msg_set_model(req, "m");
    llmq_msg_set_payload_mem(req, "\x81\xa1x\x01", 4);
    S_TEST(llmq_msg_send(&req, dealer) == 0 && req == NULL);

    llmq_msg_t *got = llmq_msg_recv(router);
    S_TEST(got && llmq_msg_type(got) == LLMQ_MSG_REQ);
    S_TEST(zframe_streq(llmq_msg_routing_id(got), "client-1"));
    zframe_t *payload = llmq_msg_take_payload(got);
    S_TEST(payload && zframe_size(payload) == 4);
    const void *bytes = zframe_data(payload);
    llmq_msg_t *res = llmq_msg_new(LLMQ_MSG_RES);
    llmq_msg_set_routing_id(res, llmq_msg_routing_id(got));
    llmq_msg_set_id(res, llmq_msg_id(got));
    llmq_msg_set_ok(res, true);
    llmq_msg_set_payload(res, &payload);
    S_TEST(payload == NULL && zframe_data(llmq_msg_payload(res)) == bytes);
    S_TEST(llmq_msg_send(&res, router) == 0);
    llmq_msg_destroy(&got);

    got = llmq_msg_recv(dealer);
    S_TEST(got && llmq_msg_type(got) == LLMQ_MSG_RES && llmq_msg_ok(got));
    S_TEST(memcmp(zframe_data(llmq_msg_payload(got)), "\x81\xa1x\x01", 4) == 0);
    llmq_msg_destroy(&got);

    /* garbage: three frames, the first not msgpack */
    zsock_send(dealer, "sss", "\xc1", "b", "c");
    got = llmq_msg_recv(router);
    S_TEST(got && llmq_msg_type(got) == LLMQ_MSG_INVALID);
    S_TEST(strstr(llmq_msg_invalid_reason(got), "too many frames"));
    S_TEST(zframe_streq(llmq_msg_routing_id(got), "client-1"));
    if (verbose)
        llmq_log(NULL, LLMQ_LOG_INFO, "invalid",
                 LLMQ_LOG_STR("reason", llmq_msg_invalid_reason(got)),
                 LLMQ_LOG_END);
    llmq_msg_destroy(&got);
    /* a ROUTER needs a routing id */
    llmq_msg_t *ping = llmq_msg_new(LLMQ_MSG_PING);
    S_TEST(llmq_msg_send(&ping, router) == -1 && ping == NULL);
    zsock_destroy(&dealer);
    zsock_destroy(&router);
}

/*  res: the provider's request id and error body (4.2) round trip, and a
    body over 16 KiB is refused. */
static void s_test_provider_answer(void)
{
    llmq_msg_t *res = llmq_msg_new(LLMQ_MSG_RES);
    llmq_msg_set_id(res, "x");
    llmq_msg_set_failure(res, LLMQ_ERR_INVALID_REQUEST, 400, "bad");
    llmq_msg_set_request_id(res, "req_123");
    uint8_t body[] = {0x81, 0xa4, 'c', 'o', 'd', 'e', 0xa1, 'x'};
    llmq_msg_set_error_body(res, body, sizeof body);
    zframe_t *frame = llmq_msg_encode(res, NULL, 0);
    llmq_msg_t *back =
        llmq_msg_decode(zframe_data(frame), zframe_size(frame), false, NULL, 0);
    S_TEST(back && streq(llmq_msg_request_id(back), "req_123"));
    size_t size = 0;
    const uint8_t *raw = back ? llmq_msg_error_body(back, &size) : NULL;
    S_TEST(raw && size == sizeof body && !memcmp(raw, body, size));
    S_TEST(llmq_msg_error_status(back) == 400);
    llmq_msg_destroy(&back);
    zframe_destroy(&frame);
    size_t big = 16385;
    uint8_t *huge = calloc(1, big);
    huge[0] = 0xc6; /* bin32 of big - 5 bytes */
    huge[1] = 0, huge[2] = 0, huge[3] = 0x3f, huge[4] = 0xfc;
    llmq_msg_set_error_body(res, huge, big);
    frame = llmq_msg_encode(res, NULL, 0);
    S_TEST(frame == NULL);
    zframe_destroy(&frame);
    free(huge);
    llmq_msg_destroy(&res);
}

int llmq_msg_test(bool verbose)
{
    if (verbose)
        printf(" * llmq_msg: ");
    s_test_roundtrip(verbose);
    s_test_failure();
    s_test_decode_errors();
    s_test_provider_answer();
    s_test_sockets(verbose);
    if (verbose)
        printf("OK\n");
    return 0;
}
