/*  llmq_msg.c - one wire protocol message: fields, codec, send/recv.

    Everything here is driven by llmq_proto.def through X-macros: the field
    table (name, group, key, kind, limit), each message's required fields and
    payload rule, and the typed accessors. A message stores one slot per
    field, so accessors are an array index; the codec walks the table.

    Decoding uses the bounded reader of llmq_mpread.h rather than msgpack-c's
    unpacker: it never allocates for a claimed count, never reads past the
    frame, and every failure has a short reason that goes back to the peer
    in an `error` {code: bad_message}. Strings are copied out, so a message
    never points into socket memory. Encoding writes the msgpack forms a
    header needs straight into a stack buffer (s_put_*).

    On a socket a message is [routing id] header [payload]. The payload is
    kept as the zframe it arrived in (or the zmq_msg_t, for a forwarder that
    asks: LLMQ_MSG_RECV_PAYLOAD_MSG), so it can be forwarded without a copy.

    The broker's hot path shaped the rest: strings keep their length and
    short ones live in the message's arena (no malloc, nothing to free),
    the reader takes the common msgpack forms inline (llmq_mp_read_fast),
    keys are found by one hash probe, a forwarded header is spliced from
    the received bytes, and a header the broker writes again and again is
    written from entries without a message (llmq_msg_encode_entries).
*/
#include "llmq_msg.h"
#include "llmq_log.h"
#include "llmq_mpread.h"
#include "llmq_value.h"

#include <pthread.h>
#include <stdarg.h>
#include <stddef.h>
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
    uint32_t key_len;  /* strlen(key) */
} s_field_t;

static const s_field_t s_fields[LLMQ_F_COUNT] = {
#define LLMQ_FIELD(name, group, key, kind, max)                                \
    {#name, group, key, S_##kind, max, sizeof(key) - 1},
#include "llmq_proto.def"
};

/*  Lookup tables built once from s_fields (s_tables_init): the group of
    each field as a small number (0: top level), the distinct group names,
    and an open-addressing hash of (group, key) -> field, so decoding a key
    costs one hash instead of a scan of the catalogue. */
#define S_MAX_GROUPS 32
#define S_HASH_SLOTS 512 /* power of two, well above 2 x LLMQ_F_COUNT */
static uint8_t s_group_of[LLMQ_F_COUNT];
static const char *s_group_name[S_MAX_GROUPS];
static uint32_t s_group_len[S_MAX_GROUPS];
static int s_ngroups = 1;
static int16_t s_hash[S_HASH_SLOTS]; /* field + 1, 0 = empty */
static uint8_t s_type_len[64];       /* strlen of each type's `t` */
_Static_assert(LLMQ_MSG_COUNT <= 64, "s_type_len holds every type");
#define S_TYPE_SLOTS 128                 /* power of two, above 2 x types */
static int8_t s_type_hash[S_TYPE_SLOTS]; /* `t` -> type, 0 = empty */
/*  Each key as msgpack (fixstr byte, bytes, zeros): the encoder copies
    the whole width, a few moves, in place of a length-sized memcpy. */
#define S_KEYENC 24
static uint8_t s_keyenc[LLMQ_F_COUNT][S_KEYENC];
static pthread_once_t s_tables_once = PTHREAD_ONCE_INIT;

/*  The group, the length and three of the key's bytes: no loop over the
    key (the catalogue's keys differ there; a collision costs a probe). */
static inline uint32_t s_hash_key(int group, const uint8_t *key, uint32_t len)
{
    uint32_t h = (uint32_t)group * 0x9e3779b1u ^ len * 0x85ebca6bu;
    if (len)
        h ^= key[0] * 0xc2b2ae35u ^ key[len - 1] * 0x27d4eb2fu ^
             key[len / 2] * 0x165667b1u;
    return h ^ (h >> 15) ^ (h >> 23);
}

static const char *s_type_name(int type);

static void s_tables_init(void)
{
    for (int t = 0; t < LLMQ_MSG_COUNT; t++) {
        s_type_len[t] = (uint8_t)strlen(s_type_name(t));
        uint32_t h =
            s_hash_key(0, (const uint8_t *)s_type_name(t), s_type_len[t]);
        while (t && s_type_hash[h & (S_TYPE_SLOTS - 1)])
            h++;
        if (t)
            s_type_hash[h & (S_TYPE_SLOTS - 1)] = (int8_t)t;
    }
    for (int f = 0; f < LLMQ_F_COUNT; f++) {
        int g = 0;
        if (s_fields[f].group) {
            for (g = 1; g < s_ngroups; g++)
                if (strcmp(s_group_name[g], s_fields[f].group) == 0)
                    break;
            if (g == s_ngroups && g < S_MAX_GROUPS) {
                s_group_name[g] = s_fields[f].group;
                s_group_len[g] = (uint32_t)strlen(s_fields[f].group);
                s_ngroups++;
            }
        }
        s_group_of[f] = (uint8_t)g;
        if (s_fields[f].key_len < S_KEYENC) {
            s_keyenc[f][0] = (uint8_t)(0xa0 | s_fields[f].key_len);
            memcpy(s_keyenc[f] + 1, s_fields[f].key, s_fields[f].key_len);
        }
        uint32_t h = s_hash_key(g, (const uint8_t *)s_fields[f].key,
                                s_fields[f].key_len);
        while (s_hash[h & (S_HASH_SLOTS - 1)])
            h++;
        s_hash[h & (S_HASH_SLOTS - 1)] = (int16_t)(f + 1);
    }
}

static inline void s_tables(void)
{
    pthread_once(&s_tables_once, s_tables_init);
}

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
    union {
        struct {
            char *s;     /* STR, NUL-terminated */
            size_t slen; /* its length (no strlen per use) */
        };
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

#define S_WORDS ((LLMQ_F_COUNT + 63) / 64)
#define S_ARENA 256 /* bytes of short strings kept in the message itself */

/*  A top-level entry of a received header (its bytes in raw), so that a
    forwarded header is written by copying the entries nothing changed
    (s_splice). id: a field (>= 0), S_SPAN_COPY (`v`, `t`), S_SPAN_DROP (a
    key the codec does not know: a full encode drops it too) or
    S_SPAN_GROUP(g), a group's map. */
#define S_MAX_SPANS 24
#define S_SPAN_COPY (-1)
#define S_SPAN_DROP (-2)
#define S_SPAN_GROUP(g) (-3 - (g))
typedef struct {
    uint32_t off, len;
    int16_t id;
} s_span_t;

/*  Which fields are set is a bit set, so that new, destroy, check and
    encode touch only the fields a message has (a few of the catalogue's
    70+), and the value slots need no zeroing. */
struct _llmq_msg_t {
    llmq_msg_type_t type;           /* LLMQ_MSG_INVALID for bad input */
    zframe_t *routing_id;           /* ROUTER peer, or NULL */
    bool rid_pending;               /* routing id in rid_data, no frame yet */
    uint8_t rid_len;                /* its size */
    zframe_t *payload;              /* opaque payload frame, or NULL */
    bool has_pmsg;                  /* the payload is in pmsg instead */
    bool heap;                      /* a value was ever malloc'd */
    char *reason;                   /* why the input was INVALID */
    char *user_id;                  /* the peer's ZAP User-Id, or NULL */
    uint64_t bits[S_WORDS];         /* set fields */
    uint64_t checked[S_WORDS];      /* set fields decoded (checked then) */
    uint64_t dirty[S_WORDS];        /* fields set or cleared since decode */
    bool has_raw;                   /* raw holds the received header */
    uint8_t nspans;                 /* its top-level entries, in spans */
    size_t arena_used;              /* bytes of arena given out */
    zmq_msg_t raw;                  /* the header of a received res/chunk */
    zmq_msg_t pmsg;                 /* a payload as received (has_pmsg) */
    s_span_t spans[S_MAX_SPANS];    /* (not zeroed by new) */
    s_value_t values[LLMQ_F_COUNT]; /* one slot per field of the .def */
    char arena[S_ARENA];            /* short strings, no malloc each */
    uint8_t rid_data[255];          /* a received routing id (<= 255) */
};

static inline bool s_is_set(const llmq_msg_t *self, int f)
{
    return (self->bits[f >> 6] >> (f & 63)) & 1;
}

static inline void s_mark(llmq_msg_t *self, int f)
{
    self->bits[f >> 6] |= 1ULL << (f & 63);
    self->dirty[f >> 6] |= 1ULL << (f & 63);
}

static inline bool s_is_dirty(const llmq_msg_t *self, int f)
{
    return (self->dirty[f >> 6] >> (f & 63)) & 1;
}

/*  A decoded value passed the checks encode would repeat (s_check_field):
    a header forwarded with a few fields changed re-checks only those. */
static inline void s_mark_checked(llmq_msg_t *self, int f)
{
    self->checked[f >> 6] |= 1ULL << (f & 63);
}

/*  The first set field >= from, or -1. */
static inline int s_next_set(const llmq_msg_t *self, int from)
{
    for (int w = from >> 6; w < S_WORDS; w++) {
        uint64_t bits = self->bits[w];
        if (w == from >> 6)
            bits &= ~0ULL << (from & 63);
        if (bits)
            return w * 64 + __builtin_ctzll(bits);
    }
    return -1;
}

#define S_FOR_SET(self, f)                                                     \
    for (int f = s_next_set(self, 0); f >= 0; f = s_next_set(self, f + 1))

/*  Spare messages of this thread, for the next llmq_msg_new: a message
    is too large for malloc's fast bins, and a broker makes two per request.
    Freed at thread exit (s_spares_free); off under AddressSanitizer, so a
    use after destroy is still caught there. */
#define S_SPARES 8
typedef struct {
    llmq_msg_t *items[S_SPARES];
    int count;
} s_spares_t;

#if defined(__SANITIZE_ADDRESS__)
#define S_SPARES_ON 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define S_SPARES_ON 0
#endif
#endif
#ifndef S_SPARES_ON
#define S_SPARES_ON 1
#endif

static __thread s_spares_t *s_spares;
static pthread_key_t s_spares_key;
static pthread_once_t s_spares_once = PTHREAD_ONCE_INIT;

static void s_spares_free(void *arg)
{
    s_spares_t *spares = (s_spares_t *)arg;
    for (int k = 0; k < spares->count; k++)
        free(spares->items[k]);
    free(spares);
    s_spares = NULL;
}

static void s_spares_init(void)
{
    pthread_key_create(&s_spares_key, s_spares_free);
}

/*  This thread's spares, made on first use; NULL if that fails. */
static s_spares_t *s_spares_get(void)
{
    if (!s_spares && S_SPARES_ON) {
        pthread_once(&s_spares_once, s_spares_init);
        s_spares_t *spares = (s_spares_t *)calloc(1, sizeof *spares);
        if (spares && pthread_setspecific(s_spares_key, spares) == 0)
            s_spares = spares;
        else
            free(spares);
    }
    return s_spares;
}

llmq_msg_t *llmq_msg_new(llmq_msg_type_t type)
{
    if ((int)type < 0 || type >= LLMQ_MSG_COUNT)
        return NULL;
    s_spares_t *spares = s_spares_get();
    llmq_msg_t *self = spares && spares->count
                           ? spares->items[--spares->count]
                           : (llmq_msg_t *)malloc(sizeof *self);
    if (self) {
        memset(self, 0, offsetof(llmq_msg_t, raw));
        self->type = type;
    }
    return self;
}

static void s_free_strs(char **items, size_t count)
{
    for (size_t k = 0; k < count; k++)
        free(items[k]);
    free(items);
}

/*  Release whatever the (set) field owns. */
static inline void s_release(llmq_msg_t *self, int f)
{
    s_value_t *v = &self->values[f];
    if (s_fields[f].kind == S_STR &&
        (v->s < self->arena || v->s >= self->arena + S_ARENA))
        free(v->s);
    else if (s_fields[f].kind == S_RAW)
        free(v->raw.data);
    else if (s_fields[f].kind == S_STRS)
        s_free_strs(v->strs.items, v->strs.count);
}

/*  Release whatever the (set) field owns and mark it absent. */
static void s_unset_set(llmq_msg_t *self, llmq_field_t f)
{
    s_release(self, f);
    self->bits[f >> 6] &= ~(1ULL << (f & 63));
    self->checked[f >> 6] &= ~(1ULL << (f & 63));
    self->dirty[f >> 6] |= 1ULL << (f & 63);
}

/*  Release whatever the field owns and mark it absent; the common case,
    a field not set, without a call. */
static inline void s_unset(llmq_msg_t *self, llmq_field_t f)
{
    if (s_is_set(self, f))
        s_unset_set(self, f);
}

void llmq_msg_destroy(llmq_msg_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    llmq_msg_t *self = *self_p;
    /*  The bits need no clearing: llmq_msg_new zeroes them. Values in
        the arena or in their slot own nothing: no walk unless one was
        ever allocated. */
    for (int w = 0; self->heap && w < S_WORDS; w++)
        for (uint64_t bits = self->bits[w]; bits; bits &= bits - 1)
            s_release(self, w * 64 + __builtin_ctzll(bits));
    /*  Calls only for what is there: most messages hold few of these. */
    if (self->routing_id)
        zframe_destroy(&self->routing_id);
    if (self->payload)
        zframe_destroy(&self->payload);
    if (self->has_pmsg)
        zmq_msg_close(&self->pmsg);
    if (self->reason)
        free(self->reason);
    if (self->user_id)
        free(self->user_id);
    if (self->has_raw)
        zmq_msg_close(&self->raw);
    s_spares_t *spares = s_spares_get();
    if (spares && spares->count < S_SPARES)
        spares->items[spares->count++] = self;
    else
        free(self);
    *self_p = NULL;
}

/*  ---- field storage ---------------------------------------------------- */

static int s_set_strn(llmq_msg_t *self, llmq_field_t f, const char *s,
                      size_t len)
{
    s_value_t *v = &self->values[f];
    if (s_is_set(self, f) && len <= v->slen) {
        /*  Fits in the string it replaces (a reused header, an id of the
            same length): no allocation. */
        memmove(v->s, s, len);
        v->s[len] = 0;
        v->slen = len;
        self->checked[f >> 6] &= ~(1ULL << (f & 63));
        self->dirty[f >> 6] |= 1ULL << (f & 63);
        return 0;
    }
    char *copy;
    if (S_ARENA - self->arena_used > len) {
        copy = self->arena + self->arena_used;
        self->arena_used += len + 1;
    } else if (!(copy = (char *)malloc(len + 1)))
        return -1;
    else
        self->heap = true;
    memcpy(copy, s, len);
    copy[len] = 0;
    s_unset(self, f);
    v->s = copy;
    v->slen = len;
    s_mark(self, f);
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
    self->heap = true;
    self->values[f].raw.data = copy;
    self->values[f].raw.size = size;
    s_mark(self, f);
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
    self->heap = true;
    self->values[f].strs.items = copy;
    self->values[f].strs.count = count;
    s_mark(self, f);
    return 0;
}

static inline void s_set_scalar(llmq_msg_t *self, llmq_field_t f, s_value_t v)
{
    s_unset(self, f);
    s_mark(self, f);
    self->values[f] = v;
}

static const s_value_t *s_get(const llmq_msg_t *self, llmq_field_t f)
{
    return self && s_is_set(self, f) ? &self->values[f] : NULL;
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
    S_FOR_SET(self, f)
    {
        if (rc)
            break;
        const s_value_t *v = &self->values[f];
        if (s_fields[f].kind == S_STR)
            rc = s_set_strn(copy, (llmq_field_t)f, v->s, v->slen);
        else if (s_fields[f].kind == S_RAW)
            rc = s_set_raw(copy, (llmq_field_t)f, v->raw.data, v->raw.size);
        else if (s_fields[f].kind == S_STRS)
            rc = s_set_strs(copy, (llmq_field_t)f,
                            (const char *const *)v->strs.items, v->strs.count);
        else {
            copy->values[f] = *v;
            s_mark(copy, f);
        }
    }
    if (llmq_msg_routing_id(self))
        copy->routing_id = zframe_dup(self->routing_id);
    if (llmq_msg_payload(self))
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

static const char *s_type_name(int type)
{
    return s_msgs[type].name;
}

/*  Whether len bytes are equal: a loop, for the short keys and names of
    a header (a memcmp call costs more there). */
static inline bool s_same(const char *a, const uint8_t *b, size_t len)
{
    for (size_t k = 0; k < len; k++)
        if ((uint8_t)a[k] != b[k])
            return false;
    return true;
}

/*  Whether key (len bytes, len the field's key_len) is field f's key: 8
    bytes at a time against the padded table (the last word overlaps). */
static inline bool s_key_is(int f, const uint8_t *key, uint32_t len)
{
    const uint8_t *want = s_keyenc[f] + 1;
    if (len < 8 || len >= S_KEYENC)
        return s_same(s_fields[f].key, key, len);
    uint64_t a, b;
    for (uint32_t k = 0; k + 8 <= len; k += 8) {
        memcpy(&a, want + k, 8);
        memcpy(&b, key + k, 8);
        if (a != b)
            return false;
    }
    memcpy(&a, want + len - 8, 8);
    memcpy(&b, key + len - 8, 8);
    return a == b;
}

/*  One probe of a hash table (a strlen and memcmp per type showed in the
    profile). */
static llmq_msg_type_t s_type_from_namen(const char *name, size_t len)
{
    if (len == 0 || len > 255)
        return LLMQ_MSG_INVALID;
    uint32_t h = s_hash_key(0, (const uint8_t *)name, (uint32_t)len);
    for (;; h++) {
        int t = s_type_hash[h & (S_TYPE_SLOTS - 1)];
        if (!t)
            return LLMQ_MSG_INVALID;
        if (s_type_len[t] == len &&
            s_same(s_msgs[t].name, (const uint8_t *)name, len))
            return (llmq_msg_type_t)t;
    }
}

llmq_msg_type_t llmq_msg_type_from_name(const char *name)
{
    s_tables();
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

/*  A payload received as a message (LLMQ_MSG_RECV_PAYLOAD_MSG) becomes a
    frame only when one is asked for: a copy, for the paths that read it. */
zframe_t *llmq_msg_payload(const llmq_msg_t *self)
{
    if (self && self->has_pmsg) {
        llmq_msg_t *mut = (llmq_msg_t *)self; /* a cache, not a change */
        mut->payload =
            zframe_new(zmq_msg_data(&mut->pmsg), zmq_msg_size(&mut->pmsg));
        zmq_msg_close(&mut->pmsg);
        mut->has_pmsg = false;
    }
    return self ? self->payload : NULL;
}

const void *llmq_msg_payload_data(const llmq_msg_t *self, size_t *size)
{
    if (self && self->has_pmsg) {
        zmq_msg_t *pmsg = (zmq_msg_t *)&self->pmsg; /* data() is not const */
        *size = zmq_msg_size(pmsg);
        return zmq_msg_data(pmsg);
    }
    zframe_t *frame = self ? self->payload : NULL;
    *size = frame ? zframe_size(frame) : 0;
    return frame ? zframe_data(frame) : NULL;
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
    if (self->has_pmsg)
        zmq_msg_close(&self->pmsg);
    self->has_pmsg = false;
    self->payload = payload;
}

void llmq_msg_set_payload_mem(llmq_msg_t *self, const void *data, size_t size)
{
    zframe_t *frame = zframe_new(data, size);
    llmq_msg_set_payload(self, &frame);
}

zframe_t *llmq_msg_take_payload(llmq_msg_t *self)
{
    zframe_t *payload = llmq_msg_payload(self);
    if (self)
        self->payload = NULL;
    return payload;
}

int llmq_msg_take_payload_msg(llmq_msg_t *self, zmq_msg_t *out)
{
    if (self && self->has_pmsg) {
        /*  A move leaves pmsg empty: nothing to close. */
        zmq_msg_init(out);
        zmq_msg_move(out, &self->pmsg);
        self->has_pmsg = false;
        return 0;
    }
    zframe_t *frame = self ? self->payload : NULL;
    if (!frame || zmq_msg_init_size(out, zframe_size(frame)))
        return -1;
    memcpy(zmq_msg_data(out), zframe_data(frame), zframe_size(frame));
    zframe_destroy(&self->payload);
    return 0;
}

const char *llmq_msg_user_id(const llmq_msg_t *self)
{
    return self->user_id;
}

/*  A received routing id stays bytes until a frame of it is asked for:
    a broker hashes the bytes of every message, and needs the frame only
    to answer (llmq_msg_routing_id_data). */
zframe_t *llmq_msg_routing_id(const llmq_msg_t *self)
{
    if (self && self->rid_pending) {
        llmq_msg_t *mut = (llmq_msg_t *)self; /* a cache, not a change */
        mut->routing_id = zframe_new(self->rid_data, self->rid_len);
        mut->rid_pending = false;
    }
    return self ? self->routing_id : NULL;
}

const uint8_t *llmq_msg_routing_id_data(const llmq_msg_t *self, size_t *size)
{
    if (self && self->rid_pending) {
        *size = self->rid_len;
        return self->rid_data;
    }
    zframe_t *rid = self ? self->routing_id : NULL;
    *size = rid ? zframe_size(rid) : 0;
    return rid ? zframe_data(rid) : NULL;
}

void llmq_msg_set_routing_id(llmq_msg_t *self, const zframe_t *routing_id)
{
    if (!self)
        return;
    zframe_destroy(&self->routing_id);
    self->rid_pending = false;
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

/*  True if the bytes are ASCII without NUL, 8 at a time: most header
    strings, which then need no NUL scan or UTF-8 walk. */
static inline bool s_ascii_word(const uint8_t *p)
{
    const uint64_t high = 0x8080808080808080ULL;
    uint64_t w;
    memcpy(&w, p, 8);
    return !(w & high) && !((w - 0x0101010101010101ULL) & ~w & high);
}

static inline bool s_plain_ascii(const uint8_t *p, size_t len)
{
    if (len >= 8) {
        /*  Whole words; the last one overlaps the one before. */
        for (size_t k = 0; k + 8 <= len; k += 8)
            if (!s_ascii_word(p + k))
                return false;
        return s_ascii_word(p + len - 8);
    }
    for (size_t k = 0; k < len; k++)
        if (p[k] == 0 || p[k] >= 0x80)
            return false;
    return true;
}

/*  A STR value must be UTF-8 within its limit (a C string has no NUL).
    The label is formatted only for an error (a grouped field's costs an
    snprintf); plain ASCII needs no UTF-8 walk. */
static int s_check_str(llmq_field_t f, const char *s, size_t len, char *errbuf,
                       size_t errlen)
{
    char label[64];
    if (len > s_fields[f].max)
        return s_errf(errbuf, errlen, "'%s' too long (%zu > %zu bytes)",
                      s_field_label(f, label, sizeof label), len,
                      s_fields[f].max);
    if (!s_plain_ascii((const uint8_t *)s, len) &&
        !llmq_mp_utf8((const uint8_t *)s, len))
        return s_errf(errbuf, errlen, "'%s' invalid UTF-8",
                      s_field_label(f, label, sizeof label));
    return 0;
}

static int s_check_field(const llmq_msg_t *self, llmq_field_t f, char *errbuf,
                         size_t errlen)
{
    const s_value_t *v = &self->values[f];
    const s_field_t *def = &s_fields[f];
    /*  Numbers and booleans need no check: skip the label's snprintf, which
        showed up in the broker's per-message profile. */
    if (def->kind != S_STR && def->kind != S_RAW && def->kind != S_STRS)
        return 0;
    if (def->kind == S_STR)
        return s_check_str(f, v->s, v->slen, errbuf, errlen);
    char label[64];
    const char *name = s_field_label(f, label, sizeof label);
    if (def->kind == S_RAW) {
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
        if (!s_is_set(self, *r))
            return s_errf(errbuf, errlen, "missing required '%s'",
                          s_field_label((llmq_field_t)*r, label, sizeof label));
    for (int w = 0; w < S_WORDS; w++)
        for (uint64_t bits = self->bits[w] & ~self->checked[w]; bits;
             bits &= bits - 1)
            if (s_check_field(self,
                              (llmq_field_t)(w * 64 + __builtin_ctzll(bits)),
                              errbuf, errlen))
                return -1;
    return 0;
}

/*  The encoder's output: a buffer on the stack, on the heap only for a
    header larger than it, written by the few msgpack forms a header uses
    (msgpack-c's packer and sbuffer cost a call and an allocation per
    piece). The forms are msgpack-c's, so the bytes are the same. Each
    entry reserves its room once (s_room) and is written through a
    pointer. The map's count is known only at the end: three bytes are
    kept in front for it, and a fixmap uses the last of them (start). */
typedef struct {
    uint8_t *data;
    size_t size;
    size_t cap;
    size_t start; /* first byte of the header in data */
    bool failed;  /* out of memory: no frame */
    uint8_t inline_data[1024];
} s_buf_t;

static bool s_buf_grow(s_buf_t *b, size_t len)
{
    size_t cap = b->cap * 2 > b->size + len ? b->cap * 2 : b->size + len;
    uint8_t *grown =
        (uint8_t *)(b->data == b->inline_data ? malloc(cap)
                                              : realloc(b->data, cap));
    if (!grown) {
        b->failed = true;
        return false;
    }
    if (b->data == b->inline_data)
        memcpy(grown, b->data, b->size);
    b->data = grown;
    b->cap = cap;
    return true;
}

/*  Room for len more bytes at the end, or NULL (failed) without memory. */
static inline uint8_t *s_room(s_buf_t *b, size_t len)
{
    if (b->size + len > b->cap && !s_buf_grow(b, len))
        return NULL;
    return b->data + b->size;
}

/*  A big-endian number of width bytes (1, 2, 4, 8) after a type byte. */
static inline uint8_t *s_w_tag(uint8_t *p, uint8_t tag, uint64_t n, int width)
{
    *p++ = tag;
    for (int k = width - 1; k >= 0; k--)
        *p++ = (uint8_t)(n >> (8 * k));
    return p;
}

/*  A str, array or map header: fix form below fix_max, else 8/16/32
    (tag8 0: no 8-bit form). At most 5 bytes. */
static inline uint8_t *s_w_len(uint8_t *p, uint8_t fix, uint32_t fix_max,
                               uint8_t tag8, uint8_t tag16, size_t n)
{
    if (n < fix_max) {
        *p++ = (uint8_t)(fix | n);
        return p;
    }
    if (tag8 && n < 256)
        return s_w_tag(p, tag8, n, 1);
    if (n < 65536)
        return s_w_tag(p, tag16, n, 2);
    return s_w_tag(p, (uint8_t)(tag16 + 1), n, 4);
}

static inline uint8_t *s_w_str(uint8_t *p, const char *s, size_t len)
{
    p = s_w_len(p, 0xa0, 32, 0xd9, 0xda, len);
    memcpy(p, s, len);
    return p + len;
}

/*  An integer in its smallest form. At most 9 bytes. */
static uint8_t *s_w_int(uint8_t *p, int64_t i)
{
    if (i >= 0) {
        uint64_t u = (uint64_t)i;
        if (u < 128) {
            *p++ = (uint8_t)u;
            return p;
        }
        if (u < 256)
            return s_w_tag(p, 0xcc, u, 1);
        if (u < 65536)
            return s_w_tag(p, 0xcd, u, 2);
        if (u < 4294967296ULL)
            return s_w_tag(p, 0xce, u, 4);
        return s_w_tag(p, 0xcf, u, 8);
    }
    if (i >= -32) {
        *p++ = (uint8_t)(int8_t)i;
        return p;
    }
    if (i >= -128)
        return s_w_tag(p, 0xd0, (uint64_t)i, 1);
    if (i >= -32768)
        return s_w_tag(p, 0xd1, (uint64_t)i, 2);
    if (i >= INT32_MIN)
        return s_w_tag(p, 0xd2, (uint64_t)i, 4);
    return s_w_tag(p, 0xd3, (uint64_t)i, 8);
}

/*  A string (a key, a group's name) on its own. */
static void s_pack_strn(s_buf_t *b, const char *s, size_t len)
{
    uint8_t *p = s_room(b, 5 + len);
    if (p)
        b->size = (size_t)(s_w_str(p, s, len) - b->data);
}

/*  A map's header on its own (a group's). */
static void s_pack_map(s_buf_t *b, size_t n)
{
    uint8_t *p = s_room(b, 5);
    if (p)
        b->size = (size_t)(s_w_len(p, 0x80, 16, 0, 0xde, n) - b->data);
}

static void s_pack_strs(s_buf_t *b, const s_value_t *v)
{
    uint8_t *p = s_room(b, 5);
    if (!p)
        return;
    b->size = (size_t)(s_w_len(p, 0x90, 16, 0, 0xdc, v->strs.count) - b->data);
    for (size_t k = 0; k < v->strs.count; k++)
        s_pack_strn(b, v->strs.items[k], strlen(v->strs.items[k]));
}

/*  One entry: the field's key and its value. */
static inline __attribute__((always_inline)) void
s_pack_value(s_buf_t *b, const s_field_t *def, const s_value_t *v)
{
    size_t body = def->kind == S_STR   ? v->slen
                  : def->kind == S_RAW ? v->raw.size
                                       : 0;
    uint8_t *p = s_room(b, S_KEYENC + def->key_len + 9 + body);
    if (!p)
        return;
    if (def->key_len < S_KEYENC) {
        memcpy(p, s_keyenc[def - s_fields], S_KEYENC);
        p += 1 + def->key_len;
    } else
        p = s_w_str(p, def->key, def->key_len);
    switch (def->kind) {
    case S_STR:
        p = s_w_str(p, v->s, v->slen);
        break;
    case S_INT:
        p = s_w_int(p, v->i);
        break;
    case S_BOOL:
        *p++ = v->b ? 0xc3 : 0xc2;
        break;
    case S_DBL: {
        uint64_t bits;
        memcpy(&bits, &v->d, sizeof bits);
        p = s_w_tag(p, 0xcb, bits, 8);
        break;
    }
    case S_RAW:
        memcpy(p, v->raw.data, v->raw.size);
        p += v->raw.size;
        break;
    case S_STRS:
        b->size = (size_t)(p - b->data);
        s_pack_strs(b, v);
        return;
    }
    b->size = (size_t)(p - b->data);
}

/*  A group's map, written when the encoder reaches its first set field f:
    every set field of the group, in catalogue order. */
static void s_pack_group(const llmq_msg_t *self, s_buf_t *b, int f)
{
    int group = s_group_of[f];
    size_t n = 0;
    for (int g = f; g >= 0; g = s_next_set(self, g + 1))
        n += s_group_of[g] == group;
    s_pack_strn(b, s_group_name[group], s_group_len[group]);
    s_pack_map(b, n);
    for (int g = f; g >= 0; g = s_next_set(self, g + 1))
        if (s_group_of[g] == group)
            s_pack_value(b, &s_fields[g], &self->values[g]);
}

/*  The whole map but its header: v, t, ungrouped fields, one entry per
    group in use. Returns the number of entries. */
/*  The first two entries: v and t. */
static void s_pack_vt(s_buf_t *b, llmq_msg_type_t type)
{
    uint8_t *p = s_room(b, 5 + 5 + s_type_len[type]);
    if (!p)
        return;
    _Static_assert(LLMQ_PROTOCOL_VERSION < 128, "v is a positive fixint");
    memcpy(p, "\xa1v\x00\xa1t", 5);
    p[2] = LLMQ_PROTOCOL_VERSION;
    p = s_w_str(p + 5, s_msgs[type].name, s_type_len[type]);
    b->size = (size_t)(p - b->data);
}

static size_t s_pack_header(const llmq_msg_t *self, s_buf_t *b)
{
    size_t n = 2;
    s_pack_vt(b, self->type);
    uint64_t groups = 0;
    S_FOR_SET(self, f)
    {
        int group = s_group_of[f];
        if (!group) {
            s_pack_value(b, &s_fields[f], &self->values[f]);
            n++;
        } else if (!(groups & (1ULL << group))) {
            groups |= 1ULL << group;
            s_pack_group(self, b, f);
            n++;
        }
    }
    return n;
}

/*  The first set field of group, or -1. */
static int s_group_first(const llmq_msg_t *self, int group)
{
    S_FOR_SET(self, f)
    if (s_group_of[f] == group)
        return f;
    return -1;
}

/*  Whether a field of group was set or cleared since the decode. */
static bool s_group_dirty(const llmq_msg_t *self, int group)
{
    for (int w = 0; w < S_WORDS; w++)
        for (uint64_t bits = self->dirty[w]; bits; bits &= bits - 1)
            if (s_group_of[w * 64 + __builtin_ctzll(bits)] == group)
                return true;
    return false;
}

/*  A received header written again (s_keep_raw): its entries copied but
    for the fields changed since the decode, written after them from the
    values, as are changed groups. The same map as s_pack_header's, in
    another order. Returns the number of entries. */
static size_t s_splice(const llmq_msg_t *self, s_buf_t *b)
{
    const uint8_t *raw = (const uint8_t *)zmq_msg_data((zmq_msg_t *)&self->raw);
    uint64_t groups = 0; /* written or dropped */
    size_t n = 0;
    for (int k = 0; k < self->nspans; k++) {
        const s_span_t *sp = &self->spans[k];
        int group = sp->id <= S_SPAN_GROUP(1) ? S_SPAN_GROUP(0) - sp->id : 0;
        if (sp->id == S_SPAN_DROP || (sp->id >= 0 && s_is_dirty(self, sp->id)))
            continue;
        if (group && s_group_dirty(self, group))
            continue;
        uint8_t *p = s_room(b, sp->len);
        if (!p)
            return 0;
        memcpy(p, raw + sp->off, sp->len);
        b->size += sp->len;
        n++;
        groups |= group ? 1ULL << group : 0;
    }
    for (int w = 0; w < S_WORDS; w++)
        for (uint64_t bits = self->dirty[w]; bits; bits &= bits - 1) {
            int f = w * 64 + __builtin_ctzll(bits), group = s_group_of[f];
            if (!group && s_is_set(self, f)) {
                s_pack_value(b, &s_fields[f], &self->values[f]);
                n++;
            } else if (group && !(groups & (1ULL << group))) {
                groups |= 1ULL << group;
                int first = s_group_first(self, group);
                if (first >= 0) {
                    s_pack_group(self, b, first);
                    n++;
                }
            }
        }
    return n;
}

/*  Encode into buf (its inline buffer or more): the header is the bytes
    from buf->start to buf->size. 0, or -1 with a reason. */
static void s_buf_init(s_buf_t *buf)
{
    buf->data = buf->inline_data;
    buf->size = 3; /* room for the map's header */
    buf->start = 0;
    buf->cap = sizeof buf->inline_data;
    buf->failed = false;
}

/*  The map's header in front of its n entries; the size checked. */
static int s_buf_finish(s_buf_t *buf, size_t n, char *errbuf, size_t errlen)
{
    if (buf->failed)
        return s_errf(errbuf, errlen, "out of memory");
    if (n < 16) { /* msgpack-c's form: a fixmap */
        buf->data[2] = (uint8_t)(0x80 | n);
        buf->start = 2;
    } else
        s_w_tag(buf->data, 0xde, n, 2);
    if (buf->size - buf->start > LLMQ_MAX_HEADER_SIZE)
        return s_errf(errbuf, errlen, "header too large (%zu > %d bytes)",
                      buf->size - buf->start, LLMQ_MAX_HEADER_SIZE);
    return 0;
}

static int s_encode_buf(const llmq_msg_t *self, s_buf_t *buf, char *errbuf,
                        size_t errlen)
{
    s_buf_init(buf);
    if (!self || self->type == LLMQ_MSG_INVALID)
        return s_errf(errbuf, errlen, "cannot encode an invalid message");
    s_tables();
    if (s_check(self, errbuf, errlen))
        return -1;
    size_t n = self->has_raw ? s_splice(self, buf) : s_pack_header(self, buf);
    return s_buf_finish(buf, n, errbuf, errlen);
}

/*  The encoded header into a new zmq_msg_t; frees buf's heap part. */
static int s_buf_to_msg(s_buf_t *buf, int rc, zmq_msg_t *out, char *errbuf,
                        size_t errlen)
{
    size_t size = buf->size - buf->start;
    if (rc == 0 && zmq_msg_init_size(out, size) == 0)
        memcpy(zmq_msg_data(out), buf->data + buf->start, size);
    else if (rc == 0)
        rc = s_errf(errbuf, errlen, "out of memory");
    if (buf->data != buf->inline_data)
        free(buf->data);
    return rc;
}

zframe_t *llmq_msg_encode(const llmq_msg_t *self, char *errbuf, size_t errlen)
{
    s_buf_t buf;
    zframe_t *frame = NULL;
    if (s_encode_buf(self, &buf, errbuf, errlen) == 0)
        frame = zframe_new(buf.data + buf.start, buf.size - buf.start);
    if (buf.data != buf.inline_data)
        free(buf.data);
    return frame;
}

int llmq_msg_encode_msg(const llmq_msg_t *self, zmq_msg_t *out, char *errbuf,
                        size_t errlen)
{
    s_buf_t buf;
    int rc = s_encode_buf(self, &buf, errbuf, errlen);
    return s_buf_to_msg(&buf, rc, out, errbuf, errlen);
}

/*  Entries in catalogue order, top-level STR, INT or BOOL fields; their
    set in set (STR NULL: absent). */
static int s_entries_check(const llmq_msg_entry_t *entries, size_t count,
                           uint64_t *set, char *errbuf, size_t errlen)
{
    int last = -1;
    for (size_t k = 0; k < count; k++) {
        int f = (int)entries[k].field;
        if (f <= last || f >= LLMQ_F_COUNT || s_group_of[f] ||
            (s_fields[f].kind != S_STR && s_fields[f].kind != S_INT &&
             s_fields[f].kind != S_BOOL))
            return s_errf(errbuf, errlen,
                          "entry %zu: not a top-level string, integer or "
                          "boolean field in catalogue order",
                          k);
        last = f;
        if (s_fields[f].kind != S_STR || entries[k].str)
            set[f >> 6] |= 1ULL << (f & 63);
    }
    return 0;
}

int llmq_msg_encode_entries(llmq_msg_type_t type,
                            const llmq_msg_entry_t *entries, size_t count,
                            zmq_msg_t *out, char *errbuf, size_t errlen)
{
    s_buf_t buf;
    s_buf_init(&buf);
    if ((int)type <= LLMQ_MSG_INVALID || type >= LLMQ_MSG_COUNT)
        return s_errf(errbuf, errlen, "cannot encode an invalid message");
    s_tables();
    uint64_t set[S_WORDS] = {0};
    char label[64];
    if (s_entries_check(entries, count, set, errbuf, errlen))
        return -1;
    for (const int *r = s_msgs[type].required; *r >= 0; r++)
        if (!((set[*r >> 6] >> (*r & 63)) & 1))
            return s_errf(errbuf, errlen, "missing required '%s'",
                          s_field_label((llmq_field_t)*r, label, sizeof label));
    /*  As s_pack_header: v, t, then the fields in catalogue order. */
    s_pack_vt(&buf, type);
    size_t n = 2;
    int rc = 0;
    for (size_t k = 0; k < count && rc == 0; k++) {
        llmq_field_t f = entries[k].field;
        s_value_t v;
        memset(&v, 0, sizeof v);
        if (s_fields[f].kind == S_STR) {
            if (!entries[k].str)
                continue;
            v.s = (char *)entries[k].str;
            v.slen = strlen(v.s);
            rc = s_check_str(f, v.s, v.slen, errbuf, errlen);
        } else if (s_fields[f].kind == S_INT)
            v.i = entries[k].num;
        else
            v.b = entries[k].num != 0;
        s_pack_value(&buf, &s_fields[f], &v);
        n++;
    }
    if (rc == 0)
        rc = s_buf_finish(&buf, n, errbuf, errlen);
    return s_buf_to_msg(&buf, rc, out, errbuf, errlen);
}

/*  ---- decode ----------------------------------------------------------- */

typedef struct {
    llmq_mp_reader_t r;  /* over the header bytes */
    llmq_msg_t *msg;     /* fields land here; type is set at the end */
    bool has_v;          /* `v` seen */
    int64_t v;           /* its value */
    const uint8_t *t;    /* `t` bytes, borrowed from the input */
    uint32_t t_len;      /* their length */
    int16_t entry;       /* what the last top-level entry was (s_span_t) */
    bool spans;          /* record the entries (LLMQ_MSG_RECV_SPLICE) */
    bool spans_over;     /* more entries than msg->spans holds */
    const uint8_t *base; /* the header's first byte */
    char reason[160];    /* first failure, formatted (last: not zeroed) */
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

/*  The field of key in group (0: top level), or -1: one hash probe. */
static inline int s_find_field(int group, const uint8_t *key, uint32_t len)
{
    uint32_t h = s_hash_key(group, key, len);
    for (;; h++) {
        int f = s_hash[h & (S_HASH_SLOTS - 1)] - 1;
        if (f < 0)
            return -1;
        if (s_group_of[f] == group && s_fields[f].key_len == len &&
            s_key_is(f, key, len))
            return f;
    }
}

/*  The group (> 0) whose name is a top-level key, or 0. */
static int s_find_group(const uint8_t *key, uint32_t len)
{
    for (int g = 1; g < s_ngroups; g++)
        if (s_group_len[g] == len && memcmp(s_group_name[g], key, len) == 0)
            return g;
    return 0;
}

static int s_wrong_type(s_decoder_t *d, llmq_field_t f, const char *want)
{
    char label[64];
    return s_fail(d, "'%s' wrong type (want %s)",
                  s_field_label(f, label, sizeof label), want);
}

static inline int s_dec_str(s_decoder_t *d, llmq_field_t f,
                            const llmq_mp_item_t *it)
{
    char label[64];
    if (it->kind != LLMQ_MP_STR && it->kind != LLMQ_MP_BIN)
        return s_wrong_type(d, f, "string");
    if (it->len > s_fields[f].max)
        return s_fail(d, "'%s' too long (%u > %zu bytes)",
                      s_field_label(f, label, sizeof label), it->len,
                      s_fields[f].max);
    if (!s_plain_ascii(it->ptr, it->len)) {
        if (memchr(it->ptr, 0, it->len))
            return s_fail(d, "'%s' contains NUL",
                          s_field_label(f, label, sizeof label));
        if (!llmq_mp_utf8(it->ptr, it->len))
            return s_fail(d, "'%s' invalid UTF-8",
                          s_field_label(f, label, sizeof label));
    }
    llmq_msg_t *msg = d->msg;
    if (!s_is_set(msg, f) && S_ARENA - msg->arena_used > it->len) {
        /*  The common case inline: a first value that fits the arena. */
        char *copy = msg->arena + msg->arena_used;
        msg->arena_used += it->len + 1;
        memcpy(copy, it->ptr, it->len);
        copy[it->len] = 0;
        msg->values[f].s = copy;
        msg->values[f].slen = it->len;
        s_mark(msg, f);
    } else if (s_set_strn(msg, f, (const char *)it->ptr, it->len))
        return s_fail(d, "out of memory");
    s_mark_checked(msg, f);
    return 0;
}

static inline int s_dec_int(s_decoder_t *d, llmq_field_t f,
                            const llmq_mp_item_t *it)
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

static inline int s_dec_scalar(s_decoder_t *d, llmq_field_t f,
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
    d->msg->heap = true;
    d->msg->values[f].strs.items = items;
    d->msg->values[f].strs.count = it->len;
    s_mark(d->msg, f);
    s_mark_checked(d->msg, f);
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
    s_mark_checked(d->msg, f);
    return 0;
}

/*  One known field's value. A nil value means "absent". */
static inline int s_dec_field(s_decoder_t *d, llmq_field_t f)
{
    if (d->r.p < d->r.end && *d->r.p == 0xc0) {
        d->r.p++;
        s_unset(d->msg, f);
        return 0;
    }
    if (s_fields[f].kind == S_RAW)
        return s_dec_raw(d, f);
    llmq_mp_item_t it;
    if (llmq_mp_read_fast(&d->r, &it))
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
    if (llmq_mp_read_fast(&d->r, key))
        return s_fail_reader(d);
    if (key->kind != LLMQ_MP_STR && key->kind != LLMQ_MP_BIN)
        return s_fail(d, "map key is not a string");
    return 0;
}

/*  A nested group map: known keys decode, unknown ones are skipped. */
static int s_dec_group(s_decoder_t *d, int group)
{
    llmq_mp_item_t it;
    if (llmq_mp_read_fast(&d->r, &it))
        return s_fail_reader(d);
    if (it.kind == LLMQ_MP_NIL)
        return 0;
    if (it.kind != LLMQ_MP_MAP)
        return s_fail(d, "'%s' wrong type (want map)", s_group_name[group]);
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
    if (llmq_mp_read_fast(&d->r, &it))
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
    d->entry = S_SPAN_COPY;
    if (key.len == 1 && (key.ptr[0] == 'v' || key.ptr[0] == 't'))
        return s_dec_vt(d, &key);
    int f = s_find_field(0, key.ptr, key.len);
    d->entry = (int16_t)f;
    if (f >= 0)
        return s_dec_field(d, (llmq_field_t)f);
    int group = s_find_group(key.ptr, key.len);
    d->entry = (int16_t)(group ? S_SPAN_GROUP(group) : S_SPAN_DROP);
    if (group)
        return s_dec_group(d, group);
    if (llmq_mp_skip(&d->r, S_MAX_DEPTH - 1))
        return s_fail_reader(d);
    return 0;
}

static int s_dec_map(s_decoder_t *d)
{
    llmq_mp_item_t it;
    if (llmq_mp_read_fast(&d->r, &it))
        return s_fail_reader(d);
    if (it.kind != LLMQ_MP_MAP)
        return s_fail(d, "header is not a map");
    llmq_msg_t *msg = d->msg;
    for (uint32_t k = 0; k < it.len; k++) {
        const uint8_t *start = d->r.p;
        if (s_dec_entry(d))
            return -1;
        if (!d->spans)
            continue;
        if (msg->nspans < S_MAX_SPANS)
            msg->spans[msg->nspans++] =
                (s_span_t){.off = (uint32_t)(start - d->base),
                           .len = (uint32_t)(d->r.p - start),
                           .id = d->entry};
        else
            d->spans_over = true;
    }
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
        if (!s_is_set(d->msg, *r))
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
                    bool has_payload, bool spans)
{
    memset(d, 0, offsetof(s_decoder_t, reason));
    d->reason[0] = 0;
    s_tables();
    d->msg = llmq_msg_new(LLMQ_MSG_INVALID);
    if (!d->msg)
        return s_fail(d, "out of memory");
    if (!data || size == 0)
        return s_fail(d, "empty header");
    if (size > LLMQ_MAX_HEADER_SIZE)
        return s_fail(d, "header too large (%zu > %d bytes)", size,
                      LLMQ_MAX_HEADER_SIZE);
    llmq_mp_init(&d->r, data, size);
    d->base = (const uint8_t *)data;
    d->spans = spans;
    if (s_dec_map(d) || s_dec_finish(d, has_payload))
        return -1;
    return 0;
}

llmq_msg_t *llmq_msg_decode(const void *data, size_t size, bool has_payload,
                            char *errbuf, size_t errlen)
{
    s_decoder_t d;
    if (s_decode(&d, data, size, has_payload, false) == 0)
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
    if (router && !llmq_msg_routing_id(self))
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
    llmq_msg_payload(self); /* a received message payload as a frame */
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

/*  The routing id of a received message: its bytes, made a frame only if
    asked for (llmq_msg_routing_id). */
static void s_take_rid(llmq_msg_t *msg, zmq_msg_t *rid)
{
    size_t size = zmq_msg_size(rid);
    if (size <= sizeof msg->rid_data) {
        memcpy(msg->rid_data, zmq_msg_data(rid), size);
        msg->rid_len = (uint8_t)size;
        msg->rid_pending = true;
    } else
        msg->routing_id = zframe_new(zmq_msg_data(rid), size);
}

/*  A res or chunk is forwarded with a few keys changed: keep its header
    (moved, not copied) so that encode copies what did not change. */
static void s_keep_raw(s_decoder_t *d, zmq_msg_t *header)
{
    llmq_msg_t *msg = d->msg;
    if (d->spans_over ||
        (msg->type != LLMQ_MSG_RES && msg->type != LLMQ_MSG_CHUNK) ||
        zmq_msg_init(&msg->raw))
        return;
    if (zmq_msg_move(&msg->raw, header)) {
        zmq_msg_close(&msg->raw);
        return;
    }
    msg->has_raw = true;
    memset(msg->dirty, 0, sizeof msg->dirty);
}

/*  The payload frame of a message being received: a zframe, or with
    LLMQ_MSG_RECV_PAYLOAD_MSG the zmq_msg_t libzmq gave (no zframe, no
    RCVMORE query per frame). */
typedef struct {
    bool want_msg;   /* receive it into msg */
    bool has_msg;    /* msg holds it */
    zframe_t *frame; /* or here */
    zmq_msg_t msg;   /* initialised by llmq_msg_recv_ex */
} s_payload_in_t;

/*  Turn the received frames into a message; takes the payload. rid and
    header are the caller's (NULL: none arrived). */
static llmq_msg_t *s_from_frames(zmq_msg_t *rid, zmq_msg_t *header,
                                 s_payload_in_t *pl, int frames, int flags)
{
    s_decoder_t d;
    const void *data = header ? zmq_msg_data(header) : NULL;
    size_t size = header ? zmq_msg_size(header) : 0;
    if (frames > 2) {
        memset(&d, 0, sizeof d);
        d.msg = llmq_msg_new(LLMQ_MSG_INVALID);
        if (d.msg)
            s_fail(&d, "too many frames (%d)", frames);
    } else
        s_decode(&d, data, size, pl->frame || pl->has_msg,
                 (flags & LLMQ_MSG_RECV_SPLICE) != 0);
    if (d.msg) {
        /*  Under CURVE, ZAP's User-Id (the peer's public key) rides on
            every frame but the routing id, which the ROUTER makes. */
        const char *user = rid && header && !(flags & LLMQ_MSG_RECV_NO_USER_ID)
                               ? zmq_msg_gets(header, "User-Id")
                               : NULL;
        if (user && *user)
            d.msg->user_id = strdup(user);
        if (rid)
            s_take_rid(d.msg, rid);
        if (d.msg->type == LLMQ_MSG_INVALID) {
            d.msg->reason = strdup(d.reason);
            s_salvage_id(d.msg, data, size);
        } else {
            if (flags & LLMQ_MSG_RECV_SPLICE)
                s_keep_raw(&d, header);
            d.msg->payload = pl->frame;
            pl->frame = NULL;
            if (pl->has_msg && zmq_msg_init(&d.msg->pmsg) == 0) {
                zmq_msg_move(&d.msg->pmsg, &pl->msg);
                d.msg->has_pmsg = true;
            }
        }
    }
    return d.msg;
}

/*  ROUTER or not: a zsock_t knows its type (zsock_type_str reads it), where
    a getsockopt per message showed up in the broker's profile. */
static bool s_sock_is_router(void *sock, void *handle)
{
    if (zsock_is(sock))
        return memcmp(zsock_type_str((zsock_t *)sock), "ROUTER", 7) == 0;
    return s_is_router(handle);
}

/*  Receive every frame of one message: the routing id (a ROUTER's) and the
    header in place, the payload as a frame (forwarded untouched), more
    frames drained and counted so the next receive starts at a message
    boundary. Returns the frames after the routing id, or -1 if nothing
    came. */
static int s_recv_frames(void *from, void *handle, zmq_msg_t *rid,
                         zmq_msg_t *header, s_payload_in_t *pl)
{
    bool more = true;
    if (rid) {
        if (zmq_msg_recv(rid, handle, 0) == -1)
            return -1;
        more = zmq_msg_more(rid);
    }
    int frames = 0;
    while (more) {
        if (frames == 0) {
            if (zmq_msg_recv(header, handle, 0) == -1)
                break;
            more = zmq_msg_more(header);
        } else if (pl->want_msg) {
            /*  Later frames land in msg too: each receive releases what
                it held before (they are only counted). */
            if (zmq_msg_recv(&pl->msg, handle, 0) == -1)
                break;
            more = zmq_msg_more(&pl->msg);
            pl->has_msg = true;
        } else {
            /*  CZMQ takes from as given: resolving a raw handle costs it a
                getsockopt, a zsock_t does not. */
            zframe_t *frame = zframe_recv(from);
            if (!frame)
                break;
            more = zframe_more(frame);
            if (frames == 1)
                pl->frame = frame;
            else
                zframe_destroy(&frame);
        }
        frames++;
    }
    return frames == 0 && !rid ? -1 : frames;
}

llmq_msg_t *llmq_msg_recv_ex(void *sock, int flags)
{
    void *handle = zsock_resolve(sock);
    if (!handle)
        return NULL;
    bool router =
        (flags & LLMQ_MSG_RECV_ROUTER) || s_sock_is_router(sock, handle);
    zmq_msg_t rid, header;
    zmq_msg_init(&rid);
    zmq_msg_init(&header);
    s_payload_in_t pl = {.want_msg = (flags & LLMQ_MSG_RECV_PAYLOAD_MSG) != 0};
    if (pl.want_msg)
        zmq_msg_init(&pl.msg);
    int frames = s_recv_frames(zsock_is(sock) ? sock : handle, handle,
                               router ? &rid : NULL, &header, &pl);
    llmq_msg_t *msg = NULL;
    if (frames >= 0)
        msg = s_from_frames(router ? &rid : NULL, frames ? &header : NULL, &pl,
                            frames, flags);
    /*  What the message took was moved out (left empty): no close. */
    if (pl.frame)
        zframe_destroy(&pl.frame);
    if (pl.want_msg && !(msg && msg->has_pmsg))
        zmq_msg_close(&pl.msg);
    if (!(msg && msg->has_raw))
        zmq_msg_close(&header);
    zmq_msg_close(&rid);
    return msg;
}

llmq_msg_t *llmq_msg_recv(void *sock)
{
    return llmq_msg_recv_ex(sock, 0);
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
    S_FOR_SET(self, f)
    s_print_field(self, f);
    if (llmq_msg_payload(self))
        fprintf(stderr, "    (payload: %zu bytes)\n",
                zframe_size(self->payload));
}

/*  ---- selftest ---------------------------------------------------------- */

/*  Checks that stay on in release builds (NDEBUG removes assert). */
#include "llmq_check.h"
#include <msgpack.h>
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

/*  The hand-written encoder writes what msgpack-c's packer wrote: every
    width of int, a double, short and long strings, a group. */
static void s_test_bytes(void)
{
    const int64_t ints[] = {0,         127,          128,      255,
                            256,       65535,        65536,    4294967295LL,
                            -1,        -32,          -33,      -128,
                            -129,      -32768,       -32769,   INT32_MIN,
                            INT64_MIN, 4294967296LL, INT64_MAX};
    char text[300];
    memset(text, 'x', sizeof text - 1);
    text[sizeof text - 1] = 0;
    for (size_t k = 0; k < sizeof ints / sizeof ints[0]; k++) {
        llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_RES);
        const char *message = k % 2 ? text + 260 : text;
        llmq_msg_set_id(msg, "id");
        llmq_msg_set_message(msg, message);
        llmq_msg_set_ok(msg, k % 2);
        llmq_msg_set_latency_ms(msg, ints[k]);
        llmq_msg_set_usage_cost_usd(msg, 0.25 * (double)k);
        llmq_msg_set_usage_total_tokens(msg, ints[k]);
        zframe_t *frame = llmq_msg_encode(msg, NULL, 0);
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        msgpack_pack_map(&pk, 7);
        msgpack_pack_str_with_body(&pk, "v", 1);
        msgpack_pack_int64(&pk, LLMQ_PROTOCOL_VERSION);
        msgpack_pack_str_with_body(&pk, "t", 1);
        msgpack_pack_str_with_body(&pk, "res", 3);
        msgpack_pack_str_with_body(&pk, "id", 2);
        msgpack_pack_str_with_body(&pk, "id", 2);
        msgpack_pack_str_with_body(&pk, "ok", 2);
        if (k % 2)
            msgpack_pack_true(&pk);
        else
            msgpack_pack_false(&pk);
        msgpack_pack_str_with_body(&pk, "usage", 5);
        msgpack_pack_map(&pk, 2);
        msgpack_pack_str_with_body(&pk, "total_tokens", 12);
        msgpack_pack_int64(&pk, ints[k]);
        msgpack_pack_str_with_body(&pk, "cost_usd", 8);
        msgpack_pack_double(&pk, 0.25 * (double)k);
        msgpack_pack_str_with_body(&pk, "latency_ms", 10);
        msgpack_pack_int64(&pk, ints[k]);
        msgpack_pack_str_with_body(&pk, "message", 7);
        msgpack_pack_str_with_body(&pk, message, strlen(message));
        S_TEST(frame && zframe_size(frame) == sb.size &&
               memcmp(zframe_data(frame), sb.data, sb.size) == 0);
        msgpack_sbuffer_destroy(&sb);
        zframe_destroy(&frame);
        llmq_msg_destroy(&msg);
    }
}

/*  A decoded field is not checked again on encode, but one set after the
    decode is: an invalid value set in place of a decoded one (same length,
    reusing its bytes) still fails to encode. */
static void s_test_checked(void)
{
    llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_RES);
    llmq_msg_set_id(msg, "abcd");
    llmq_msg_set_ok(msg, true);
    zframe_t *frame = llmq_msg_encode(msg, NULL, 0);
    llmq_msg_destroy(&msg);
    S_TEST(frame);
    msg =
        llmq_msg_decode(zframe_data(frame), zframe_size(frame), false, NULL, 0);
    zframe_destroy(&frame);
    S_TEST(msg && streq(llmq_msg_id(msg), "abcd"));
    frame = llmq_msg_encode(msg, NULL, 0);
    S_TEST(frame);
    zframe_destroy(&frame);
    llmq_msg_set_id(msg, "\xff\xfe");
    char reason[160] = "";
    S_TEST(!llmq_msg_encode(msg, reason, sizeof reason));
    S_TEST(strstr(reason, "UTF-8"));
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

/*  The bytes of a full encode of msg's fields (no splice: a dup). */
static zframe_t *s_test_full(const llmq_msg_t *msg)
{
    llmq_msg_t *copy = llmq_msg_dup(msg);
    zframe_t *frame = llmq_msg_encode(copy, NULL, 0);
    llmq_msg_destroy(&copy);
    return frame;
}

static bool s_test_has(zframe_t *frame, const char *text)
{
    size_t len = strlen(text);
    for (size_t k = 0; k + len <= zframe_size(frame); k++)
        if (!memcmp(zframe_data(frame) + k, text, len))
            return true;
    return false;
}

/*  A received res forwarded with keys changed, added, cleared (a whole
    group, part of one) is spliced (s_splice) into the same fields as a
    full encode gives; an unknown top-level key is dropped, as there. */
static void s_test_splice(void)
{
    zsock_t *in = zsock_new_pair("@inproc://llmq-msg-splice-test");
    zsock_t *out = zsock_new_pair(">inproc://llmq-msg-splice-test");
    S_TEST(in && out);
    llmq_msg_t *res = llmq_msg_new(LLMQ_MSG_RES);
    llmq_msg_set_id(res, "w-1");
    llmq_msg_set_ok(res, true);
    llmq_msg_set_usage_prompt_tokens(res, 7);
    llmq_msg_set_usage_cost_usd(res, 0.5);
    llmq_msg_set_ratelimit_remaining_requests(res, 99);
    llmq_msg_set_request_id(res, "req_1");
    llmq_msg_set_model(res, "m");
    zframe_t *frame = llmq_msg_encode(res, NULL, 0);
    S_TEST(frame && (zframe_data(frame)[0] & 0xf0) == 0x80);
    zframe_t *more = zframe_new(NULL, zframe_size(frame) + 6);
    memcpy(zframe_data(more), zframe_data(frame), zframe_size(frame));
    zframe_data(more)[0]++; /* one more entry: "zz": [1, 2] */
    memcpy(zframe_data(more) + zframe_size(frame), "\xa2zz\x92\x01\x02", 6);
    zframe_destroy(&frame);
    S_TEST(zframe_send(&more, out, 0) == 0);
    llmq_msg_t *got = llmq_msg_recv_ex(in, LLMQ_MSG_RECV_SPLICE);
    S_TEST(got && llmq_msg_type(got) == LLMQ_MSG_RES && got->has_raw);
    llmq_msg_set_id(got, "client-request-id-longer");
    llmq_msg_set_latency_ms(got, 12);
    llmq_msg_set_usage_total_tokens(got, 9);
    llmq_msg_clear(got, LLMQ_F_ratelimit_remaining_requests);
    llmq_msg_clear(got, LLMQ_F_request_id);
    llmq_msg_clear(got, LLMQ_F_ratelimit_reset_ms); /* absent: no change */
    zframe_t *spliced = llmq_msg_encode(got, NULL, 0);
    zframe_t *full = s_test_full(got);
    S_TEST(spliced && full && zframe_size(spliced) == zframe_size(full));
    S_TEST(!s_test_has(spliced, "zz") && !s_test_has(spliced, "ratelimit"));
    llmq_msg_t *back = llmq_msg_decode(zframe_data(spliced),
                                       zframe_size(spliced), false, NULL, 0);
    zframe_t *again = back ? s_test_full(back) : NULL;
    S_TEST(again && zframe_eq(again, full));
    S_TEST(streq(llmq_msg_model(back), "m"));
    S_TEST(llmq_msg_usage_prompt_tokens(back) == 7);
    llmq_msg_destroy(&back);
    zframe_destroy(&again);
    zframe_destroy(&spliced);
    zframe_destroy(&full);
    llmq_msg_destroy(&got);
    llmq_msg_destroy(&res);
    zsock_destroy(&out);
    zsock_destroy(&in);
}

/*  Payloads received with LLMQ_MSG_RECV_PAYLOAD_MSG: moved out as the
    message libzmq gave, or made a frame when one is asked for; the frame
    rules unchanged (a third frame is still bad_message). */
static void s_test_payload_msg(void)
{
    zsock_t *in = zsock_new_pair("@inproc://llmq-msg-pmsg-test");
    zsock_t *out = zsock_new_pair(">inproc://llmq-msg-pmsg-test");
    S_TEST(in && out);
    const char *body = "a body longer than a small message's 33 bytes";
    for (int round = 0; round < 3; round++) {
        llmq_msg_t *res = llmq_msg_new(LLMQ_MSG_RES);
        llmq_msg_set_id(res, "p-1");
        llmq_msg_set_ok(res, true);
        llmq_msg_set_payload_mem(res, body, strlen(body));
        S_TEST(llmq_msg_send(&res, out) == 0);
        int flags =
            LLMQ_MSG_RECV_PAYLOAD_MSG | (round == 2 ? LLMQ_MSG_RECV_SPLICE : 0);
        llmq_msg_t *got = llmq_msg_recv_ex(in, flags);
        S_TEST(got && llmq_msg_type(got) == LLMQ_MSG_RES && got->has_pmsg);
        zmq_msg_t payload;
        size_t psize = 0;
        const void *pdata = llmq_msg_payload_data(got, &psize);
        S_TEST(pdata && psize == strlen(body) && !memcmp(pdata, body, psize));
        S_TEST(got->has_pmsg); /*  Read without making a frame */
        if (round == 0) {
            S_TEST(llmq_msg_take_payload_msg(got, &payload) == 0);
            S_TEST(zmq_msg_size(&payload) == strlen(body) &&
                   !memcmp(zmq_msg_data(&payload), body, strlen(body)));
            zmq_msg_close(&payload);
            S_TEST(llmq_msg_take_payload_msg(got, &payload) == -1);
            S_TEST(!llmq_msg_payload_data(got, &psize) && psize == 0);
        } else if (round == 1) {
            llmq_msg_t *copy = llmq_msg_dup(got);
            S_TEST(copy && llmq_msg_payload(copy) &&
                   zframe_streq(llmq_msg_payload(copy), body));
            S_TEST(zframe_streq(llmq_msg_payload(got), body));
            pdata = llmq_msg_payload_data(got, &psize);
            S_TEST(psize == strlen(body) && !memcmp(pdata, body, psize));
            S_TEST(llmq_msg_take_payload_msg(got, &payload) == 0);
            zmq_msg_close(&payload);
            llmq_msg_destroy(&copy);
        } else {
            /*  Forwarded as a whole: spliced header, payload sent. */
            llmq_msg_set_id(got, "client-7");
            S_TEST(llmq_msg_send(&got, out) == 0);
            llmq_msg_t *back = llmq_msg_recv(in);
            S_TEST(back && streq(llmq_msg_id(back), "client-7") &&
                   llmq_msg_ok(back) &&
                   zframe_streq(llmq_msg_payload(back), body));
            llmq_msg_destroy(&back);
        }
        llmq_msg_destroy(&got);
    }
    zframe_t *header = zframe_new("\x82\xa1v\x01\xa1t\xa2hb", 9);
    S_TEST(zframe_send(&header, out, ZFRAME_MORE) == 0);
    S_TEST(zstr_sendm(out, "one") == 0 && zstr_send(out, "two") == 0);
    llmq_msg_t *bad = llmq_msg_recv_ex(in, LLMQ_MSG_RECV_PAYLOAD_MSG);
    S_TEST(bad && llmq_msg_type(bad) == LLMQ_MSG_INVALID &&
           strstr(llmq_msg_invalid_reason(bad), "too many frames"));
    llmq_msg_destroy(&bad);
    zsock_destroy(&out);
    zsock_destroy(&in);
}

/*  Entries and a message with the same fields: the same bytes. */
static bool s_test_entries_same(const llmq_msg_entry_t *entries, size_t n)
{
    llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_REQ);
    for (size_t k = 0; k < n; k++) {
        llmq_field_t f = entries[k].field;
        if (s_fields[f].kind == S_STR)
            s_set_strn(msg, f, entries[k].str ? entries[k].str : "",
                       entries[k].str ? strlen(entries[k].str) : 0);
        else
            s_set_scalar(msg, f,
                         s_fields[f].kind == S_INT
                             ? (s_value_t){.i = entries[k].num}
                             : (s_value_t){.b = entries[k].num != 0});
        if (!entries[k].str && s_fields[f].kind == S_STR)
            s_unset(msg, f);
    }
    zframe_t *full = llmq_msg_encode(msg, NULL, 0);
    zmq_msg_t out;
    bool same = full && llmq_msg_encode_entries(LLMQ_MSG_REQ, entries, n, &out,
                                                NULL, 0) == 0;
    if (same) {
        same = zmq_msg_size(&out) == zframe_size(full) &&
               memcmp(zmq_msg_data(&out), zframe_data(full),
                      zframe_size(full)) == 0;
        zmq_msg_close(&out);
    }
    zframe_destroy(&full);
    llmq_msg_destroy(&msg);
    return same;
}

/*  llmq_msg_encode_entries writes what llmq_msg_encode writes, and
    refuses what it refuses (and entries out of order). */
static void s_test_entries(void)
{
    char rkey[601];
    memset(rkey, 'k', 600);
    rkey[600] = 0;
    llmq_msg_entry_t all[] = {
        {LLMQ_F_id, "1234567890123", 0},  {LLMQ_F_op, "chat", 0},
        {LLMQ_F_model, "gpt-4o-mini", 0}, {LLMQ_F_pool, "pool-é", 0},
        {LLMQ_F_stream, NULL, 1},         {LLMQ_F_deadline_ms, NULL, 70000},
        {LLMQ_F_priority, NULL, -40},     {LLMQ_F_attempt, NULL, 3},
        {LLMQ_F_trace, "t", 0},           {LLMQ_F_rkey, rkey, 0},
        {LLMQ_F_resend, NULL, 0},         {LLMQ_F_tenant, "acme", 0}};
    size_t n = sizeof all / sizeof all[0];
    S_TEST(s_test_entries_same(all, n));
    S_TEST(s_test_entries_same(all, 3));
    all[3].str = NULL; /* absent */
    all[8].str = NULL;
    S_TEST(s_test_entries_same(all, n));
    char err[160];
    zmq_msg_t out;
    S_TEST(llmq_msg_encode_entries(LLMQ_MSG_REQ, all + 1, n - 1, &out, err,
                                   sizeof err) == -1 &&
           strstr(err, "missing required 'id'"));
    llmq_msg_entry_t swapped[] = {all[1], all[0], all[2]};
    S_TEST(llmq_msg_encode_entries(LLMQ_MSG_REQ, swapped, 3, &out, err,
                                   sizeof err) == -1 &&
           strstr(err, "catalogue order"));
    llmq_msg_entry_t twice[] = {all[0], all[0], all[1], all[2]};
    S_TEST(llmq_msg_encode_entries(LLMQ_MSG_REQ, twice, 4, &out, err,
                                   sizeof err) == -1);
    llmq_msg_entry_t grouped[] = {
        all[0], all[1], all[2], {LLMQ_F_usage_prompt_tokens, NULL, 1}};
    S_TEST(llmq_msg_encode_entries(LLMQ_MSG_REQ, grouped, 4, &out, err,
                                   sizeof err) == -1);
    char long_rkey[602];
    memset(long_rkey, 'k', 601);
    long_rkey[601] = 0;
    all[9].str = long_rkey;
    S_TEST(llmq_msg_encode_entries(LLMQ_MSG_REQ, all, n, &out, err,
                                   sizeof err) == -1 &&
           strstr(err, "'rkey' too long"));
    all[9].str = "\xff";
    S_TEST(llmq_msg_encode_entries(LLMQ_MSG_REQ, all, n, &out, err,
                                   sizeof err) == -1 &&
           strstr(err, "'rkey' invalid UTF-8"));
    S_TEST(llmq_msg_encode_entries(LLMQ_MSG_INVALID, all, 3, &out, err,
                                   sizeof err) == -1);
}

int llmq_msg_test(bool verbose)
{
    if (verbose)
        printf(" * llmq_msg: ");
    s_test_roundtrip(verbose);
    s_test_failure();
    s_test_bytes();
    s_test_checked();
    s_test_decode_errors();
    s_test_provider_answer();
    s_test_sockets(verbose);
    s_test_splice();
    s_test_entries();
    s_test_payload_msg();
    if (verbose)
        printf("OK\n");
    return 0;
}
