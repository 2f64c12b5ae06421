/*  llmq_payload.c - the typed payloads: result items, batch items, request
    keys and the `status` map (PROTOCOL.md, section 5).

    Every map is one table of its keys (key, kind, offset in a C struct),
    as llmq_proto.def is for headers: the table writes the map, so map
    sizes and key order are never counted by hand and every peer sends the
    same bytes for the same values, and the same table reads it back. An
    array payload packs its elements into one packer and puts the array
    header in front when the frame is taken, so the caller need not know
    the count in advance.

    Reading first checks the whole payload with llmq_value_is_valid (so
    what the readers accept, the JSON converters accept too), then walks it
    with the bounded reader of llmq_mpread.h. Strings are copied into one
    arena sized from the input (each copy is at most the input bytes it came
    from plus a NUL), so a reader allocates at most a small multiple of the
    payload's size whatever the counts claim.
*/
#include "llmq_payload.h"
#include "llmq_check.h"
#include "llmq_mpread.h"
#include "llmq_value.h"

#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct _llmq_payload_t {
    llmq_packer_t *elems; /* the elements packed so far, concatenated */
    size_t count;         /* elements in elems */
};

/*  ---- the tables ------------------------------------------------------ */

/*  Every map of these payloads is one table of its keys, in wire order:
    where each value lives in a C struct and as what. The same table writes
    the map (its size is the table's length, never a count kept by hand)
    and reads it (unknown keys skipped; a value of another kind than the
    table says leaves the field zero). */
typedef enum {
    S_STR,  /* const char *: NULL writes nil; read into the arena, NULL
               unless str/bin */
    S_INT,  /* int64_t; read from any number */
    S_DBL,  /* double; read from any number */
    S_BOOL, /* bool; aux: offset of a "was present" flag, 0 = none */
    S_RAW,  /* const void *, one msgpack value (NULL: nil); aux: offset of
               its size_t size */
    S_MAP,  /* a nested map whose keys (sub) fill the same struct */
    S_FN    /* written by put, read by get */
} s_kind_t;

/*  NUL-terminated copies of input strings, borrowed by the caller. */
typedef struct {
    char *buf;
    size_t used;
    size_t cap;
} s_arena_t;

typedef struct s_field_t_ s_field_t;
typedef void(s_put_fn)(llmq_packer_t *p, const void *base);
typedef int(s_get_fn)(llmq_mp_reader_t *r, void *base, s_arena_t *a);
struct s_field_t_ {
    const char *key; /* NULL ends a table */
    s_kind_t kind;
    size_t at;  /* offset of the value in the struct */
    size_t aux; /* see S_BOOL and S_RAW */
    const s_field_t *sub;
    s_put_fn *put;
    s_get_fn *get;
};

#define S_FIELD(type, key, kind, member)                                       \
    {                                                                          \
        key, S_##kind, offsetof(type, member), 0, NULL, NULL, NULL             \
    }

/*  The end of a table. */
#define S_END                                                                  \
    {                                                                          \
        NULL, S_STR, 0, 0, NULL, NULL, NULL                                    \
    }
#define S_SUB(key, sub)                                                        \
    {                                                                          \
        key, S_MAP, 0, 0, sub, NULL, NULL                                      \
    }
#define S_FN(key, name)                                                        \
    {                                                                          \
        key, S_FN, 0, 0, NULL, s_put_##name, s_get_##name                      \
    }

/*  Result items: the reader takes either body or error; the writer one
    table for each outcome. */
#define S_RESULT(key, kind, member)                                            \
    S_FIELD(llmq_result_item_t, key, kind, member)
#define S_RESULT_BODY                                                          \
    {                                                                          \
        "body", S_RAW, offsetof(llmq_result_item_t, body),                     \
            offsetof(llmq_result_item_t, body_size), NULL, NULL, NULL          \
    }

static const s_field_t s_usage_fields[] = {
    S_RESULT("prompt_tokens", INT, prompt_tokens),
    S_RESULT("completion_tokens", INT, completion_tokens),
    S_RESULT("total_tokens", INT, total_tokens),
    S_RESULT("cost_usd", DBL, cost_usd), S_END};

static const s_field_t s_error_fields[] = {
    S_RESULT("code", STR, error_code),
    S_RESULT("message", STR, error_message),
    S_RESULT("status", INT, error_status),
    {"retryable", S_BOOL, offsetof(llmq_result_item_t, error_retryable),
     offsetof(llmq_result_item_t, has_retryable), NULL, NULL, NULL},
    S_END};

static const s_field_t s_result_ok[] = {
    S_RESULT("custom_id", STR, custom_id),
    S_RESULT("ok", BOOL, ok),
    S_RESULT_BODY,
    S_SUB("usage", s_usage_fields),
    S_END,
};

static const s_field_t s_result_failed[] = {
    S_RESULT("custom_id", STR, custom_id),
    S_RESULT("ok", BOOL, ok),
    S_SUB("error", s_error_fields),
    S_SUB("usage", s_usage_fields),
    S_END,
};

/*  A batch item {custom_id, body} (read by llmq_value_each_item). */
static const s_field_t s_item_fields[] = {
    S_RESULT("custom_id", STR, custom_id),
    S_RESULT_BODY,
    S_END,
};

static const s_field_t s_result_any[] = {
    S_RESULT("custom_id", STR, custom_id),
    S_RESULT("ok", BOOL, ok),
    S_RESULT_BODY,
    S_SUB("error", s_error_fields),
    S_SUB("usage", s_usage_fields),
    S_END,
};

/*  The status map. Arrays of rows and the counters map are S_FN. */
static s_put_fn s_put_models, s_put_workers, s_put_queues, s_put_counters;
static s_get_fn s_get_models, s_get_workers, s_get_queues, s_get_counters;

#define S_WORKER(key, kind, member)                                            \
    S_FIELD(llmq_status_worker_t, key, kind, member)
#define S_QUEUE(key, kind, member)                                             \
    S_FIELD(llmq_status_queue_t, key, kind, member)

static const s_field_t s_limits_fields[] = {
    S_WORKER("rpm", INT, limits_rpm),
    S_WORKER("tpm", INT, limits_tpm),
    S_END,
};

static const s_field_t s_worker_fields[] = {
    S_WORKER("name", STR, name),
    S_WORKER("pool", STR, pool),
    S_WORKER("provider", STR, provider),
    S_FN("models", models),
    S_WORKER("capacity", INT, capacity),
    S_WORKER("credit", INT, credit),
    S_WORKER("in_flight", INT, in_flight),
    S_WORKER("healthy", BOOL, healthy),
    S_WORKER("limit_group", STR, limit_group),
    S_WORKER("answered", INT, answered),
    S_SUB("limits", s_limits_fields),
    S_END};

static const s_field_t s_queue_fields[] = {
    S_QUEUE("model", STR, model),
    S_QUEUE("pool", STR, pool),
    S_QUEUE("depth", INT, depth),
    S_QUEUE("workers", INT, workers),
    S_END,
};

static const s_field_t s_status_fields[] = {
    S_FIELD(llmq_status_t, "broker", STR, broker),
    S_FIELD(llmq_status_t, "version", STR, version),
    S_FIELD(llmq_status_t, "uptime_ms", INT, uptime_ms),
    S_FN("workers", workers),
    S_FN("queues", queues),
    S_FN("counters", counters),
    S_END};

/*  ---- writing by table ------------------------------------------------ */

static void s_write_map(llmq_packer_t *p, const s_field_t *fields,
                        const void *base)
{
    size_t count = 0;
    while (fields[count].key)
        count++;
    llmq_packer_map(p, count);
    const char *b = (const char *)base;
    for (const s_field_t *f = fields; f->key; f++) {
        llmq_packer_str(p, f->key);
        if (f->kind == S_STR)
            llmq_packer_str(p, *(const char *const *)(b + f->at));
        else if (f->kind == S_INT)
            llmq_packer_int(p, *(const int64_t *)(b + f->at));
        else if (f->kind == S_DBL)
            llmq_packer_double(p, *(const double *)(b + f->at));
        else if (f->kind == S_BOOL)
            llmq_packer_bool(p, *(const bool *)(b + f->at));
        else if (f->kind == S_RAW) {
            const void *data = *(const void *const *)(b + f->at);
            size_t size = *(const size_t *)(b + f->aux);
            if (data && size)
                llmq_packer_raw(p, data, size);
            else
                llmq_packer_nil(p);
        } else if (f->kind == S_MAP)
            s_write_map(p, f->sub, base);
        else
            f->put(p, base);
    }
}

static void s_put_models(llmq_packer_t *p, const void *base)
{
    const llmq_status_worker_t *w = (const llmq_status_worker_t *)base;
    llmq_packer_array(p, w->nmodels);
    for (size_t i = 0; i < w->nmodels; i++)
        llmq_packer_str(p, w->models[i]);
}

static void s_put_workers(llmq_packer_t *p, const void *base)
{
    const llmq_status_t *st = (const llmq_status_t *)base;
    llmq_packer_array(p, st->nworkers);
    for (size_t i = 0; i < st->nworkers; i++)
        s_write_map(p, s_worker_fields, &st->workers[i]);
}

static void s_put_queues(llmq_packer_t *p, const void *base)
{
    const llmq_status_t *st = (const llmq_status_t *)base;
    llmq_packer_array(p, st->nqueues);
    for (size_t i = 0; i < st->nqueues; i++)
        s_write_map(p, s_queue_fields, &st->queues[i]);
}

static void s_put_counters(llmq_packer_t *p, const void *base)
{
    const llmq_status_t *st = (const llmq_status_t *)base;
    llmq_packer_map(p, st->ncounters);
    for (size_t i = 0; i < st->ncounters; i++) {
        llmq_packer_str(p, st->counters[i].name);
        llmq_packer_int(p, st->counters[i].value);
    }
}

/*  ---- building -------------------------------------------------------- */

llmq_payload_t *llmq_payload_new(void)
{
    llmq_payload_t *self = (llmq_payload_t *)calloc(1, sizeof *self);
    if (self)
        self->elems = llmq_packer_new();
    if (self && !self->elems)
        llmq_payload_destroy(&self);
    return self;
}

void llmq_payload_destroy(llmq_payload_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    llmq_packer_destroy(&(*self_p)->elems);
    free(*self_p);
    *self_p = NULL;
}

size_t llmq_payload_bytes(const llmq_payload_t *self)
{
    size_t size = 0;
    llmq_packer_data(self->elems, &size);
    return size;
}

size_t llmq_payload_count(const llmq_payload_t *self)
{
    return self->count;
}

size_t llmq_payload_add_result(llmq_payload_t *self,
                               const llmq_result_item_t *item)
{
    size_t before = llmq_payload_bytes(self);
    llmq_result_item_t e = *item;
    e.custom_id = e.custom_id ? e.custom_id : "";
    e.error_code = e.error_code ? e.error_code : "internal";
    e.error_message = e.error_message ? e.error_message : "";
    e.total_tokens = e.prompt_tokens + e.completion_tokens;
    s_write_map(self->elems, e.ok ? s_result_ok : s_result_failed, &e);
    self->count++;
    return llmq_payload_bytes(self) - before;
}

size_t llmq_payload_add_item(llmq_payload_t *self, const char *custom_id,
                             const void *body, size_t body_size)
{
    size_t before = llmq_payload_bytes(self);
    llmq_result_item_t e = {.custom_id = custom_id ? custom_id : "",
                            .body = body,
                            .body_size = body_size};
    s_write_map(self->elems, s_item_fields, &e);
    self->count++;
    return llmq_payload_bytes(self) - before;
}

size_t llmq_payload_add_str(llmq_payload_t *self, const char *value)
{
    size_t before = llmq_payload_bytes(self);
    llmq_packer_str(self->elems, value ? value : "");
    self->count++;
    return llmq_payload_bytes(self) - before;
}

zframe_t *llmq_payload_frame(llmq_payload_t *self)
{
    llmq_packer_t *out = llmq_packer_new();
    if (!out)
        return NULL;
    llmq_packer_array(out, self->count);
    size_t size = 0;
    const uint8_t *data = llmq_packer_data(self->elems, &size);
    llmq_packer_raw(out, data, size);
    zframe_t *frame = llmq_packer_frame(out);
    llmq_packer_destroy(&out);
    llmq_packer_reset(self->elems);
    self->count = 0;
    return frame;
}

zframe_t *llmq_status_encode(const llmq_status_t *status)
{
    llmq_packer_t *p = llmq_packer_new();
    if (!p)
        return NULL;
    s_write_map(p, s_status_fields, status);
    zframe_t *frame = llmq_packer_frame(p);
    llmq_packer_destroy(&p);
    return frame;
}

/*  ---- reading: helpers ------------------------------------------------ */

static void s_err(char *errbuf, size_t errlen, const char *reason)
{
    if (errbuf && errlen)
        snprintf(errbuf, errlen, "%s", reason);
}

static int s_arena_init(s_arena_t *a, size_t size)
{
    a->cap = 2 * size + 16;
    a->used = 0;
    a->buf = (char *)malloc(a->cap);
    return a->buf ? 0 : -1;
}

/*  A copy of a str/bin item, or NULL for any other kind (or if full). */
static const char *s_copy(s_arena_t *a, const llmq_mp_item_t *it)
{
    if (it->kind != LLMQ_MP_STR && it->kind != LLMQ_MP_BIN)
        return NULL;
    if (a->cap - a->used < (size_t)it->len + 1)
        return NULL;
    char *out = a->buf + a->used;
    memcpy(out, it->ptr, it->len);
    out[it->len] = 0;
    a->used += (size_t)it->len + 1;
    return out;
}

/*  Read one whole value: *it is its first item (the value itself for
    scalars and strings, the header for containers); r moves past it. */
static int s_value(llmq_mp_reader_t *r, llmq_mp_item_t *it)
{
    llmq_mp_reader_t head = *r;
    if (llmq_mp_read(&head, it))
        return llmq_mp_fail(r, head.err);
    return llmq_mp_skip(r, LLMQ_VALUE_MAX_DEPTH + 1);
}

/*  Enter a map or array value (kind): its pair or element count, or -1
    (then the value is skipped) if it is of another kind. */
static long s_enter(llmq_mp_reader_t *r, llmq_mp_kind_t kind)
{
    llmq_mp_reader_t head = *r;
    llmq_mp_item_t it;
    if (llmq_mp_read(&head, &it) == 0 && it.kind == kind) {
        *r = head;
        return (long)it.len;
    }
    s_value(r, &it);
    return -1;
}

static bool s_is(const llmq_mp_item_t *key, const char *name)
{
    size_t len = strlen(name);
    return (key->kind == LLMQ_MP_STR || key->kind == LLMQ_MP_BIN) &&
           key->len == len && memcmp(key->ptr, name, len) == 0;
}

/*  A number as int64 (floats truncated, clamped), 0 if not a number. */
static int64_t s_int(const llmq_mp_item_t *it)
{
    if (it->kind == LLMQ_MP_UINT)
        return it->u > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)it->u;
    if (it->kind == LLMQ_MP_INT)
        return it->i;
    if (it->kind == LLMQ_MP_FLOAT)
        return it->d >= 9.2e18    ? INT64_MAX
               : it->d <= -9.2e18 ? INT64_MIN
               : it->d == it->d   ? (int64_t)it->d
                                  : 0;
    return 0;
}

static double s_dbl(const llmq_mp_item_t *it)
{
    if (it->kind == LLMQ_MP_UINT)
        return (double)it->u;
    if (it->kind == LLMQ_MP_INT)
        return (double)it->i;
    return it->kind == LLMQ_MP_FLOAT ? it->d : 0.0;
}

/*  Check data is one valid value and an array; its count in *n, and an
    arena for its strings in *a (the caller frees a->buf). */
static int s_open_array(llmq_mp_reader_t *r, const void *data, size_t size,
                        uint32_t *n, s_arena_t *a, char *errbuf, size_t errlen)
{
    llmq_mp_item_t it;
    llmq_mp_init(r, data, size);
    const char *reason = NULL;
    if (!data || !llmq_value_is_valid(data, size))
        reason = "payload is not a valid value";
    else if (llmq_mp_read(r, &it) || it.kind != LLMQ_MP_ARRAY)
        reason = "payload is not an array";
    else if (s_arena_init(a, size))
        reason = "out of memory";
    if (reason) {
        s_err(errbuf, errlen, reason);
        return -1;
    }
    *n = it.len;
    return 0;
}

/*  ---- reading: maps by table ------------------------------------------ */

static const s_field_t *s_find(const s_field_t *fields,
                               const llmq_mp_item_t *key)
{
    for (; fields->key; fields++)
        if (s_is(key, fields->key))
            return fields;
    return NULL;
}

/*  Store value v (whose bytes are start..end) as field f of base. */
static void s_store(const s_field_t *f, char *base, const llmq_mp_item_t *v,
                    const uint8_t *start, const uint8_t *end, s_arena_t *a)
{
    if (f->kind == S_STR)
        *(const char **)(base + f->at) = s_copy(a, v);
    else if (f->kind == S_INT)
        *(int64_t *)(base + f->at) = s_int(v);
    else if (f->kind == S_DBL)
        *(double *)(base + f->at) = s_dbl(v);
    else if (f->kind == S_BOOL && v->kind == LLMQ_MP_BOOL) {
        *(bool *)(base + f->at) = v->b;
        if (f->aux)
            *(bool *)(base + f->aux) = true;
    } else if (f->kind == S_RAW && v->kind != LLMQ_MP_NIL) {
        *(const void **)(base + f->at) = start;
        *(size_t *)(base + f->aux) = (size_t)(end - start);
    }
}

static int s_read_map(llmq_mp_reader_t *r, const s_field_t *fields, void *base,
                      s_arena_t *a)
{
    long n = s_enter(r, LLMQ_MP_MAP);
    for (long k = 0; k < n; k++) {
        llmq_mp_item_t key, v;
        if (llmq_mp_read(r, &key))
            return -1;
        const s_field_t *f = s_find(fields, &key);
        if (f && f->kind == S_MAP && s_read_map(r, f->sub, base, a))
            return -1;
        if (f && f->kind == S_FN && f->get(r, base, a))
            return -1;
        if (f && (f->kind == S_MAP || f->kind == S_FN))
            continue;
        const uint8_t *start = r->p;
        if (s_value(r, &v))
            return -1;
        if (f)
            s_store(f, (char *)base, &v, start, r->p, a);
    }
    return r->err ? -1 : 0;
}

/*  An array of maps into a new array of structs of elem bytes, each read
    by fields; elements that are not maps are skipped. The key twice is an
    error (so nothing leaks). */
static int s_read_rows(llmq_mp_reader_t *r, void **rows, size_t *count,
                       size_t elem, const s_field_t *fields, s_arena_t *a)
{
    long n = s_enter(r, LLMQ_MP_ARRAY);
    if (n > 0 && *rows)
        return llmq_mp_fail(r, "key twice");
    if (n <= 0)
        return r->err ? -1 : 0;
    *rows = calloc((size_t)n, elem);
    if (!*rows)
        return llmq_mp_fail(r, "out of memory");
    for (long k = 0; k < n; k++) {
        llmq_mp_reader_t head = *r;
        llmq_mp_item_t it;
        if (llmq_mp_read(&head, &it) || it.kind != LLMQ_MP_MAP) {
            if (s_value(r, &it))
                return -1;
            continue;
        }
        char *row = (char *)*rows + elem * (*count)++;
        if (s_read_map(r, fields, row, a))
            return -1;
    }
    return 0;
}

/*  ---- reading: results ------------------------------------------------ */

/*  One result: a map (anything else fails the page). */
static int s_result(llmq_mp_reader_t *r, llmq_result_item_t *item, s_arena_t *a)
{
    memset(item, 0, sizeof *item);
    a->used = 0;
    llmq_mp_reader_t head = *r;
    llmq_mp_item_t it;
    if (llmq_mp_read(&head, &it) || it.kind != LLMQ_MP_MAP)
        return llmq_mp_fail(r, "result is not a map");
    return s_read_map(r, s_result_any, item, a);
}

long llmq_payload_each_result(const void *data, size_t size,
                              llmq_result_item_fn *fn, void *arg, char *errbuf,
                              size_t errlen)
{
    llmq_mp_reader_t r;
    uint32_t n;
    s_arena_t a;
    if (s_open_array(&r, data, size, &n, &a, errbuf, errlen))
        return -1;
    /*  Two passes, so that a malformed item visits nothing. */
    llmq_mp_reader_t start = r;
    llmq_result_item_t item;
    for (uint32_t k = 0; k < n; k++)
        if (s_result(&r, &item, &a)) {
            s_err(errbuf, errlen, r.err);
            free(a.buf);
            return -1;
        }
    r = start;
    long visited = 0;
    for (uint32_t k = 0; k < n; k++) {
        s_result(&r, &item, &a);
        visited++;
        if (fn && fn(&item, arg))
            break;
    }
    free(a.buf);
    return visited;
}

long llmq_payload_each_str(const void *data, size_t size, llmq_str_fn *fn,
                           void *arg, char *errbuf, size_t errlen)
{
    llmq_mp_reader_t r;
    uint32_t n;
    s_arena_t a;
    if (s_open_array(&r, data, size, &n, &a, errbuf, errlen))
        return -1;
    long visited = 0;
    for (uint32_t k = 0; k < n; k++) {
        llmq_mp_item_t v;
        a.used = 0;
        if (s_value(&r, &v))
            break;
        const char *s = s_copy(&a, &v);
        if (!s)
            continue;
        visited++;
        if (fn && fn(s, arg))
            break;
    }
    free(a.buf);
    return visited;
}

/*  ---- the status map: decoding ---------------------------------------- */

/*  models: an array of strings (others skipped); the key twice keeps the
    last. */
static int s_get_models(llmq_mp_reader_t *r, void *base, s_arena_t *a)
{
    llmq_status_worker_t *w = (llmq_status_worker_t *)base;
    long n = s_enter(r, LLMQ_MP_ARRAY);
    if (n <= 0)
        return r->err ? -1 : 0;
    free(w->models);
    w->nmodels = 0;
    w->models = (const char **)calloc((size_t)n, sizeof *w->models);
    if (!w->models)
        return llmq_mp_fail(r, "out of memory");
    for (long k = 0; k < n; k++) {
        llmq_mp_item_t v;
        if (s_value(r, &v))
            return -1;
        const char *s = s_copy(a, &v);
        if (s)
            w->models[w->nmodels++] = s;
    }
    return 0;
}

static int s_get_workers(llmq_mp_reader_t *r, void *base, s_arena_t *a)
{
    llmq_status_t *st = (llmq_status_t *)base;
    return s_read_rows(r, (void **)&st->workers, &st->nworkers,
                       sizeof *st->workers, s_worker_fields, a);
}

static int s_get_queues(llmq_mp_reader_t *r, void *base, s_arena_t *a)
{
    llmq_status_t *st = (llmq_status_t *)base;
    return s_read_rows(r, (void **)&st->queues, &st->nqueues,
                       sizeof *st->queues, s_queue_fields, a);
}

/*  counters: a map of name -> number, names as the broker chose them. */
static int s_get_counters(llmq_mp_reader_t *r, void *base, s_arena_t *a)
{
    llmq_status_t *st = (llmq_status_t *)base;
    long n = s_enter(r, LLMQ_MP_MAP);
    if (n > 0 && st->counters)
        return llmq_mp_fail(r, "key twice");
    if (n <= 0)
        return r->err ? -1 : 0;
    st->counters =
        (llmq_status_counter_t *)calloc((size_t)n, sizeof *st->counters);
    if (!st->counters)
        return llmq_mp_fail(r, "out of memory");
    for (long k = 0; k < n; k++) {
        llmq_mp_item_t key, v;
        if (llmq_mp_read(r, &key) || s_value(r, &v))
            return -1;
        st->counters[st->ncounters++] =
            (llmq_status_counter_t){s_copy(a, &key), s_int(&v)};
    }
    return 0;
}

llmq_status_t *llmq_status_decode(const void *data, size_t size, char *errbuf,
                                  size_t errlen)
{
    llmq_mp_reader_t r, head;
    llmq_mp_item_t it;
    llmq_mp_init(&r, data, size);
    head = r;
    if (!data || !llmq_value_is_valid(data, size) || llmq_mp_read(&head, &it) ||
        it.kind != LLMQ_MP_MAP) {
        s_err(errbuf, errlen, "status is not a valid map");
        return NULL;
    }
    llmq_status_t *st = (llmq_status_t *)calloc(1, sizeof *st);
    s_arena_t *a = (s_arena_t *)calloc(1, sizeof *a);
    if (!st || !a || s_arena_init(a, size)) {
        free(st);
        free(a);
        s_err(errbuf, errlen, "out of memory");
        return NULL;
    }
    st->owned_ = a;
    if (s_read_map(&r, s_status_fields, st, a)) {
        s_err(errbuf, errlen, r.err ? r.err : "malformed status");
        llmq_status_destroy(&st);
    }
    return st;
}

void llmq_status_destroy(llmq_status_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    llmq_status_t *self = *self_p;
    for (size_t i = 0; self->workers && i < self->nworkers; i++)
        free(self->workers[i].models);
    free(self->workers);
    free(self->queues);
    free(self->counters);
    s_arena_t *a = (s_arena_t *)self->owned_;
    if (a)
        free(a->buf);
    free(a);
    free(self);
    *self_p = NULL;
}

/*  ---- self test ------------------------------------------------------- */

#define S_TEST(cond) LLMQ_CHECK(cond)

static int s_test_collect(const llmq_result_item_t *item, void *arg)
{
    zlistx_t *seen = (zlistx_t *)arg;
    char line[512];
    char *body = item->body ? llmq_value_to_json_text(item->body,
                                                      item->body_size, NULL, 0)
                            : NULL;
    snprintf(line, sizeof line, "%s %d %s %s %s %lld %d%d %lld %lld %lld %.3f",
             item->custom_id ? item->custom_id : "-", item->ok,
             body ? body : "-", item->error_code ? item->error_code : "-",
             item->error_message ? item->error_message : "-",
             (long long)item->error_status, item->error_retryable,
             item->has_retryable, (long long)item->prompt_tokens,
             (long long)item->completion_tokens, (long long)item->total_tokens,
             item->cost_usd);
    free(body);
    zlistx_add_end(seen, line);
    return 0;
}

static void s_test_results(void)
{
    llmq_payload_t *pl = llmq_payload_new();
    S_TEST(pl);
    zframe_t *body = llmq_value_from_json_text("{\"n\":1}", 7, NULL, 0);
    llmq_result_item_t ok = {.custom_id = "a",
                             .ok = true,
                             .body = zframe_data(body),
                             .body_size = zframe_size(body),
                             .prompt_tokens = 3,
                             .completion_tokens = 2,
                             .cost_usd = 0.25};
    llmq_result_item_t bad = {.custom_id = "b",
                              .error_code = "rate_limited",
                              .error_message = "429",
                              .error_status = 429,
                              .error_retryable = true};
    llmq_result_item_t nil = {.custom_id = "c", .ok = true};
    size_t n1 = llmq_payload_add_result(pl, &ok);
    size_t n2 = llmq_payload_add_result(pl, &bad);
    llmq_payload_add_result(pl, &nil);
    S_TEST(n1 > zframe_size(body) && n2 > 0);
    S_TEST(llmq_payload_count(pl) == 3);
    zframe_t *frame = llmq_payload_frame(pl);
    S_TEST(frame && llmq_payload_count(pl) == 0 && llmq_payload_bytes(pl) == 0);
    /*  The bytes every peer sent before this module existed. */
    char *json = llmq_value_to_json_text(zframe_data(frame), zframe_size(frame),
                                         NULL, 0);
    S_TEST(streq(
        json,
        "[{\"custom_id\":\"a\",\"ok\":true,\"body\":{\"n\":1},\"usage\":{"
        "\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5,"
        "\"cost_usd\":0.25}},{\"custom_id\":\"b\",\"ok\":false,\"error\":{"
        "\"code\":\"rate_limited\",\"message\":\"429\",\"status\":429,"
        "\"retryable\":true},\"usage\":{\"prompt_tokens\":0,"
        "\"completion_tokens\":0,\"total_tokens\":0,\"cost_usd\":0}},{"
        "\"custom_id\":\"c\",\"ok\":true,\"body\":null,\"usage\":{"
        "\"prompt_tokens\":0,\"completion_tokens\":0,\"total_tokens\":0,"
        "\"cost_usd\":0}}]"));
    free(json);
    zlistx_t *seen = zlistx_new();
    zlistx_set_destructor(seen, (zlistx_destructor_fn *)zstr_free);
    zlistx_set_duplicator(seen, (zlistx_duplicator_fn *)strdup);
    char err[128];
    S_TEST(llmq_payload_each_result(zframe_data(frame), zframe_size(frame),
                                    s_test_collect, seen, err,
                                    sizeof err) == 3);
    S_TEST(streq((char *)zlistx_first(seen),
                 "a 1 {\"n\":1} - - 0 00 3 2 5 0.250"));
    S_TEST(streq((char *)zlistx_next(seen),
                 "b 0 - rate_limited 429 429 11 0 0 0 0.000"));
    S_TEST(streq((char *)zlistx_next(seen), "c 1 - - - 0 00 0 0 0 0.000"));
    /*  Truncated anywhere: -1 and nothing visited. */
    for (size_t n = 0; n < zframe_size(frame); n++) {
        zlistx_purge(seen);
        S_TEST(llmq_payload_each_result(zframe_data(frame), n, s_test_collect,
                                        seen, err, sizeof err) == -1);
        S_TEST(zlistx_size(seen) == 0);
    }
    zlistx_destroy(&seen);
    zframe_destroy(&frame);
    zframe_destroy(&body);
    llmq_payload_destroy(&pl);
    llmq_payload_destroy(&pl);
}

static void s_test_lenient(void)
{
    /*  Other key orders, floats for ints, strange kinds: read, not fatal;
        a result that is not a map is. */
    const char *text =
        "[{\"usage\":{\"prompt_tokens\":1.0,\"cost_usd\":1},\"ok\":1,"
        "\"custom_id\":7,\"error\":[1],\"extra\":{\"x\":[]}},"
        "{\"custom_id\":\"9\",\"ok\":false,\"error\":{\"code\":\"timeout\"}}]";
    zframe_t *frame = llmq_value_from_json_text(text, strlen(text), NULL, 0);
    zlistx_t *seen = zlistx_new();
    zlistx_set_destructor(seen, (zlistx_destructor_fn *)zstr_free);
    zlistx_set_duplicator(seen, (zlistx_duplicator_fn *)strdup);
    S_TEST(llmq_payload_each_result(zframe_data(frame), zframe_size(frame),
                                    s_test_collect, seen, NULL, 0) == 2);
    S_TEST(streq((char *)zlistx_first(seen), "- 0 - - - 0 00 1 0 0 1.000"));
    S_TEST(
        streq((char *)zlistx_next(seen), "9 0 - timeout - 0 00 0 0 0 0.000"));
    zframe_destroy(&frame);
    const char *bad[] = {"[1]", "{}", "[{\"ok\":true},\"x\"]"};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        frame = llmq_value_from_json_text(bad[k], strlen(bad[k]), NULL, 0);
        zlistx_purge(seen);
        S_TEST(llmq_payload_each_result(zframe_data(frame), zframe_size(frame),
                                        s_test_collect, seen, NULL, 0) == -1);
        S_TEST(zlistx_size(seen) == 0);
        zframe_destroy(&frame);
    }
    static const uint8_t ext[] = {0x91, 0x81, 0xa2, 'o', 'k', 0xd4, 1, 0};
    S_TEST(llmq_payload_each_result(ext, sizeof ext, NULL, NULL, NULL, 0) ==
           -1);
    zlistx_destroy(&seen);
}

static int s_test_item(const char *custom_id, const void *body,
                       size_t body_size, void *arg)
{
    char *json = llmq_value_to_json_text(body, body_size, NULL, 0);
    zlistx_add_end((zlistx_t *)arg, zsys_sprintf("%s=%s", custom_id, json));
    free(json);
    return 0;
}

static int s_test_str(const char *value, void *arg)
{
    zlistx_add_end((zlistx_t *)arg, strdup(value));
    return 0;
}

static void s_test_items_keys(void)
{
    llmq_payload_t *pl = llmq_payload_new();
    zframe_t *body = llmq_value_from_json_text("[1,\"x\"]", 7, NULL, 0);
    llmq_payload_add_item(pl, "i1", zframe_data(body), zframe_size(body));
    llmq_payload_add_item(pl, "i2", "\xa2hi", 3);
    zframe_t *frame = llmq_payload_frame(pl);
    zlistx_t *seen = zlistx_new();
    zlistx_set_destructor(seen, (zlistx_destructor_fn *)zstr_free);
    S_TEST(llmq_value_each_item(zframe_data(frame), zframe_size(frame),
                                s_test_item, seen, NULL, 0) == 2);
    S_TEST(streq((char *)zlistx_first(seen), "i1=[1,\"x\"]"));
    S_TEST(streq((char *)zlistx_next(seen), "i2=\"hi\""));
    zframe_destroy(&frame);
    zlistx_purge(seen);
    llmq_payload_add_str(pl, "k1");
    llmq_payload_add_str(pl, "k2");
    frame = llmq_payload_frame(pl);
    S_TEST(zframe_size(frame) == 7);
    S_TEST(llmq_payload_each_str(zframe_data(frame), zframe_size(frame),
                                 s_test_str, seen, NULL, 0) == 2);
    S_TEST(streq((char *)zlistx_first(seen), "k1"));
    S_TEST(streq((char *)zlistx_next(seen), "k2"));
    zframe_destroy(&frame);
    S_TEST(llmq_payload_each_str("\x92\x01\xa1z", 4, s_test_str, seen, NULL,
                                 0) == 1);
    S_TEST(llmq_payload_each_str("\x92\x01", 2, NULL, NULL, NULL, 0) == -1);
    zlistx_destroy(&seen);
    zframe_destroy(&body);
    llmq_payload_destroy(&pl);
}

static void s_test_status(void)
{
    const char *models[] = {"m1", "m2"};
    llmq_status_worker_t workers[] = {
        {"w1", "p", "sim", models, 2, 8, 3, 5, true, NULL, 11, 60, 0},
        {"w2", "p", "openai", NULL, 0, 1, 0, 1, false, "g", 0, 0, 100}};
    llmq_status_queue_t queues[] = {{"m1", NULL, 4, 1}, {"m2", "p", 0, 2}};
    llmq_status_counter_t counters[] = {{"received", 9}, {"queued", 4}};
    llmq_status_t st = {"b1",   "0.1.0", 1200,     workers, 2,
                        queues, 2,       counters, 2,       NULL};
    zframe_t *frame = llmq_status_encode(&st);
    char *json = llmq_value_to_json_text(zframe_data(frame), zframe_size(frame),
                                         NULL, 0);
    S_TEST(strstr(json, "{\"broker\":\"b1\",\"version\":\"0.1.0\","
                        "\"uptime_ms\":1200,\"workers\":[{\"name\":\"w1\","));
    S_TEST(strstr(json, "\"limit_group\":null,\"answered\":11,\"limits\":{"
                        "\"rpm\":60,\"tpm\":0}}"));
    S_TEST(strstr(json, "\"queues\":[{\"model\":\"m1\",\"pool\":null,"
                        "\"depth\":4,\"workers\":1}"));
    S_TEST(strstr(json, "\"counters\":{\"received\":9,\"queued\":4}}"));
    free(json);
    char err[128];
    llmq_status_t *back = llmq_status_decode(
        zframe_data(frame), zframe_size(frame), err, sizeof err);
    S_TEST(back && streq(back->broker, "b1") && back->uptime_ms == 1200);
    S_TEST(back->nworkers == 2 && back->workers[0].nmodels == 2);
    S_TEST(streq(back->workers[0].models[1], "m2"));
    S_TEST(back->workers[0].healthy && !back->workers[0].limit_group);
    S_TEST(streq(back->workers[1].limit_group, "g"));
    S_TEST(back->workers[1].limits_tpm == 100 &&
           back->workers[0].answered == 11);
    S_TEST(back->nqueues == 2 && !back->queues[0].pool &&
           back->queues[1].workers == 2);
    S_TEST(back->ncounters == 2 && streq(back->counters[1].name, "queued"));
    /*  Encoding what was decoded gives the same bytes. */
    zframe_t *again = llmq_status_encode(back);
    S_TEST(zframe_eq(frame, again));
    zframe_destroy(&again);
    llmq_status_destroy(&back);
    llmq_status_destroy(&back);
    for (size_t n = 0; n < zframe_size(frame); n++)
        S_TEST(!llmq_status_decode(zframe_data(frame), n, err, sizeof err));
    S_TEST(!llmq_status_decode("\x90", 1, err, sizeof err));
    zframe_destroy(&frame);
}

/*  ---- usage ---------------------------------------------------------- */

static int s_tokens_clean(int64_t *tokens, int64_t max)
{
    if (!tokens || (*tokens >= 0 && *tokens <= max))
        return 0;
    *tokens = 0;
    return 1;
}

int llmq_usage_clean(int64_t *prompt_tokens, int64_t *completion_tokens,
                     int64_t *total_tokens, double *cost_usd)
{
    int bad = s_tokens_clean(prompt_tokens, LLMQ_USAGE_MAX_TOKENS) +
              s_tokens_clean(completion_tokens, LLMQ_USAGE_MAX_TOKENS) +
              s_tokens_clean(total_tokens, 2 * LLMQ_USAGE_MAX_TOKENS);
    /*  NaN fails every comparison: written so that it lands here. */
    if (cost_usd && !(*cost_usd >= 0 && *cost_usd <= LLMQ_USAGE_MAX_COST_USD)) {
        *cost_usd = 0;
        bad++;
    }
    return bad;
}

static void s_test_usage(void)
{
    int64_t p = 10, c = 5, t = 15;
    double cost = 0.25;
    S_TEST(llmq_usage_clean(&p, &c, &t, &cost) == 0);
    S_TEST(p == 10 && c == 5 && t == 15 && cost == 0.25);
    p = INT64_MIN, c = LLMQ_USAGE_MAX_TOKENS + 1, t = -1, cost = NAN;
    S_TEST(llmq_usage_clean(&p, &c, &t, &cost) == 4);
    S_TEST(p == 0 && c == 0 && t == 0 && cost == 0);
    cost = INFINITY;
    S_TEST(llmq_usage_clean(NULL, NULL, NULL, &cost) == 1 && cost == 0);
    cost = -0.5;
    S_TEST(llmq_usage_clean(NULL, NULL, NULL, &cost) == 1 && cost == 0);
    cost = LLMQ_USAGE_MAX_COST_USD;
    p = LLMQ_USAGE_MAX_TOKENS;
    S_TEST(llmq_usage_clean(&p, NULL, NULL, &cost) == 0);
}

int llmq_body_temperature(const void *data, size_t size, double *temperature)
{
    llmq_mp_reader_t r;
    llmq_mp_item_t it;
    llmq_mp_init(&r, data, size);
    if (llmq_mp_read(&r, &it) || it.kind != LLMQ_MP_MAP)
        return -1;
    for (uint32_t k = 0; k < it.len; k++) {
        llmq_mp_item_t key, v;
        if (llmq_mp_read(&r, &key))
            return -1;
        if (!s_is(&key, "temperature")) {
            if (llmq_mp_skip(&r, 64))
                return -1;
            continue;
        }
        if (llmq_mp_read(&r, &v))
            return -1;
        if (v.kind != LLMQ_MP_UINT && v.kind != LLMQ_MP_INT &&
            v.kind != LLMQ_MP_FLOAT)
            return 0;
        *temperature = s_dbl(&v);
        return 1;
    }
    return 0;
}

static void s_test_temperature(void)
{
    //  {"messages": [], "temperature": 0}, then 0.7 (float 64), then none.
    const uint8_t zero[] = {0x82, 0xa8, 'm',  'e',  's', 's', 'a', 'g',
                            'e',  's',  0x90, 0xab, 't', 'e', 'm', 'p',
                            'e',  'r',  'a',  't',  'u', 'r', 'e', 0x00};
    const uint8_t warm[] = {0x81, 0xab, 't',  'e',  'm',  'p',  'e',  'r',
                            'a',  't',  'u',  'r',  'e',  0xcb, 0x3f, 0xe6,
                            0x66, 0x66, 0x66, 0x66, 0x66, 0x66};
    const uint8_t none[] = {0x81, 0xa1, 'n', 0x01};
    double t = -1;
    LLMQ_CHECK(llmq_body_temperature(zero, sizeof(zero), &t) == 1 && t == 0);
    LLMQ_CHECK(llmq_body_temperature(warm, sizeof(warm), &t) == 1 && t > 0.69);
    LLMQ_CHECK(llmq_body_temperature(none, sizeof(none), &t) == 0);
    LLMQ_CHECK(llmq_body_temperature(zero, 5, &t) == -1);
    LLMQ_CHECK(llmq_body_temperature("\x90", 1, &t) == -1);
}

int llmq_payload_test(bool verbose)
{
    if (verbose)
        printf(" * llmq_payload: ");
    s_test_results();
    s_test_lenient();
    s_test_items_keys();
    s_test_status();
    s_test_usage();
    s_test_temperature();
    if (verbose)
        printf("OK\n");
    return 0;
}
