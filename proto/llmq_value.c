/*  llmq_value.c - payload values: msgpack <-> cJSON, validation, the batch
    item walk and a msgpack writer.

    Reading goes through the bounded reader of llmq_mpread.h (never
    allocates for a claimed count, never reads past the end); one recursive
    walker both validates and, when asked, builds the cJSON tree, so "valid"
    always means "converts". Writing uses msgpack-c's packer over an sbuffer.
    No msgpack type leaves this file.
*/
#include "llmq_value.h"
#include "llmq_mpread.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/*  cJSON stores numbers as doubles and prints them with 15 significant
    digits, so larger integers (ids, seeds) are kept as raw JSON number text
    instead: they print exactly and llmq_packer_json packs them back as
    integers. */
#define S_EXACT_INT 999999999999999.0

struct _llmq_packer_t {
    msgpack_sbuffer sbuf; /* bytes written so far */
    msgpack_packer pk;    /* writes into sbuf */
};

static void s_err(char *errbuf, size_t errlen, const char *reason)
{
    if (errbuf && errlen)
        snprintf(errbuf, errlen, "%s", reason);
}

/*  ---- reading ------------------------------------------------------- */

static int s_walk(llmq_mp_reader_t *r, int depth, cJSON **out);

/*  A str or bin that must be UTF-8 text without NUL (cJSON strings are C
    strings). Returns a NUL-terminated copy in *copy when copy is not NULL. */
static int s_text(llmq_mp_reader_t *r, const llmq_mp_item_t *it, char **copy)
{
    if (memchr(it->ptr, 0, it->len))
        return llmq_mp_fail(r, "string contains NUL");
    if (!llmq_mp_utf8(it->ptr, it->len))
        return llmq_mp_fail(r, "invalid UTF-8");
    if (copy) {
        *copy = (char *)malloc(it->len + 1u);
        if (!*copy)
            return llmq_mp_fail(r, "out of memory");
        memcpy(*copy, it->ptr, it->len);
        (*copy)[it->len] = 0;
    }
    return 0;
}

static cJSON *s_json_int(int64_t i, uint64_t u, bool is_unsigned)
{
    if (is_unsigned ? (double)u <= S_EXACT_INT : (double)i >= -S_EXACT_INT)
        return cJSON_CreateNumber(is_unsigned ? (double)u : (double)i);
    char text[32];
    if (is_unsigned)
        snprintf(text, sizeof text, "%llu", (unsigned long long)u);
    else
        snprintf(text, sizeof text, "%lld", (long long)i);
    return cJSON_CreateRaw(text);
}

static int s_walk_scalar(llmq_mp_reader_t *r, const llmq_mp_item_t *it,
                         cJSON **out)
{
    if (it->kind == LLMQ_MP_EXT)
        return llmq_mp_fail(r, "ext type not allowed");
    if (it->kind == LLMQ_MP_STR || it->kind == LLMQ_MP_BIN) {
        char *text = NULL;
        if (s_text(r, it, out ? &text : NULL))
            return -1;
        if (out)
            *out = cJSON_CreateString(text);
        free(text);
    } else if (!out)
        return 0;
    else if (it->kind == LLMQ_MP_NIL)
        *out = cJSON_CreateNull();
    else if (it->kind == LLMQ_MP_BOOL)
        *out = cJSON_CreateBool(it->b);
    else if (it->kind == LLMQ_MP_FLOAT)
        *out = cJSON_CreateNumber(it->d);
    else
        *out = s_json_int(it->i, it->u, it->kind == LLMQ_MP_UINT);
    return out && !*out ? llmq_mp_fail(r, "out of memory") : 0;
}

static int s_walk_array(llmq_mp_reader_t *r, uint32_t n, int depth, cJSON *arr)
{
    for (uint32_t k = 0; k < n; k++) {
        cJSON *item = NULL;
        if (s_walk(r, depth + 1, arr ? &item : NULL))
            return -1;
        if (arr)
            cJSON_AddItemToArray(arr, item);
    }
    return 0;
}

static int s_walk_map(llmq_mp_reader_t *r, uint32_t n, int depth, cJSON *obj)
{
    for (uint32_t k = 0; k < n; k++) {
        llmq_mp_item_t key;
        char *name = NULL;
        if (llmq_mp_read(r, &key))
            return -1;
        if (key.kind != LLMQ_MP_STR && key.kind != LLMQ_MP_BIN)
            return llmq_mp_fail(r, "map key is not a string");
        if (s_text(r, &key, obj ? &name : NULL))
            return -1;
        cJSON *item = NULL;
        int rc = s_walk(r, depth + 1, obj ? &item : NULL);
        if (rc == 0 && obj)
            cJSON_AddItemToObject(obj, name, item);
        free(name);
        if (rc)
            return -1;
    }
    return 0;
}

/*  Validate one value and, when out is not NULL, build its cJSON tree. On
    failure *out is left NULL and nothing leaks. */
static int s_walk(llmq_mp_reader_t *r, int depth, cJSON **out)
{
    llmq_mp_item_t it;
    if (out)
        *out = NULL;
    if (llmq_mp_read(r, &it))
        return -1;
    if (it.kind != LLMQ_MP_ARRAY && it.kind != LLMQ_MP_MAP)
        return s_walk_scalar(r, &it, out);
    if (depth >= LLMQ_VALUE_MAX_DEPTH)
        return llmq_mp_fail(r, "nesting too deep");
    cJSON *node = NULL;
    if (out) {
        node =
            it.kind == LLMQ_MP_MAP ? cJSON_CreateObject() : cJSON_CreateArray();
        if (!node)
            return llmq_mp_fail(r, "out of memory");
    }
    int rc = it.kind == LLMQ_MP_MAP ? s_walk_map(r, it.len, depth, node)
                                    : s_walk_array(r, it.len, depth, node);
    if (rc) {
        cJSON_Delete(node);
        return -1;
    }
    if (out)
        *out = node;
    return 0;
}

/*  Walk the whole buffer as exactly one value. */
static int s_walk_all(const void *data, size_t size, cJSON **out, char *errbuf,
                      size_t errlen)
{
    llmq_mp_reader_t r;
    llmq_mp_init(&r, data, size);
    if (!data && size)
        llmq_mp_fail(&r, "no data");
    else if (s_walk(&r, 0, out) == 0 && llmq_mp_left(&r))
        llmq_mp_fail(&r, "trailing bytes");
    if (!r.err)
        return 0;
    if (out) {
        cJSON_Delete(*out);
        *out = NULL;
    }
    s_err(errbuf, errlen, r.err);
    return -1;
}

cJSON *llmq_value_to_json(const void *data, size_t size, char *errbuf,
                          size_t errlen)
{
    cJSON *json = NULL;
    s_walk_all(data, size, &json, errbuf, errlen);
    return json;
}

char *llmq_value_to_json_text(const void *data, size_t size, char *errbuf,
                              size_t errlen)
{
    cJSON *json = llmq_value_to_json(data, size, errbuf, errlen);
    if (!json)
        return NULL;
    char *text = cJSON_PrintUnformatted(json);
    cJSON_Delete(json);
    if (!text)
        s_err(errbuf, errlen, "out of memory");
    return text;
}

bool llmq_value_is_valid(const void *data, size_t size)
{
    return s_walk_all(data, size, NULL, NULL, 0) == 0;
}

/*  ---- batch items ---------------------------------------------------- */

typedef struct {
    char custom_id[65];  /* NUL-terminated copy */
    bool has_id;         /* custom_id was present */
    const uint8_t *body; /* body bytes, borrowed from the input */
    size_t body_size;    /* 0 if absent */
} s_item_t;

static int s_item_field(llmq_mp_reader_t *r, s_item_t *item)
{
    llmq_mp_item_t key;
    if (llmq_mp_read(r, &key))
        return -1;
    if (key.kind != LLMQ_MP_STR && key.kind != LLMQ_MP_BIN)
        return llmq_mp_fail(r, "item key is not a string");
    if (key.len == 9 && memcmp(key.ptr, "custom_id", 9) == 0) {
        llmq_mp_item_t v;
        if (llmq_mp_read(r, &v))
            return -1;
        if (v.kind != LLMQ_MP_STR && v.kind != LLMQ_MP_BIN)
            return llmq_mp_fail(r, "custom_id is not a string");
        if (v.len == 0 || v.len > 64)
            return llmq_mp_fail(r, "custom_id empty or longer than 64 bytes");
        if (s_text(r, &v, NULL))
            return -1;
        memcpy(item->custom_id, v.ptr, v.len);
        item->custom_id[v.len] = 0;
        item->has_id = true;
        return 0;
    }
    const uint8_t *start = r->p;
    if (s_walk(r, 1, NULL))
        return -1;
    if (key.len == 4 && memcmp(key.ptr, "body", 4) == 0) {
        item->body = start;
        item->body_size = (size_t)(r->p - start);
    }
    return 0;
}

static int s_item(llmq_mp_reader_t *r, s_item_t *item)
{
    llmq_mp_item_t it;
    memset(item, 0, sizeof *item);
    if (llmq_mp_read(r, &it))
        return -1;
    if (it.kind != LLMQ_MP_MAP)
        return llmq_mp_fail(r, "item is not a map");
    for (uint32_t k = 0; k < it.len; k++)
        if (s_item_field(r, item))
            return -1;
    if (!item->has_id)
        return llmq_mp_fail(r, "item has no custom_id");
    if (!item->body)
        return llmq_mp_fail(r, "item has no body");
    return 0;
}

long llmq_value_each_item(const void *data, size_t size, llmq_item_fn *fn,
                          void *arg, char *errbuf, size_t errlen)
{
    llmq_mp_reader_t r;
    llmq_mp_item_t it;
    llmq_mp_init(&r, data, size);
    if ((!data && size) || llmq_mp_read(&r, &it) || it.kind != LLMQ_MP_ARRAY) {
        s_err(errbuf, errlen, r.err ? r.err : "items are not an array");
        return -1;
    }
    long visited = 0;
    for (uint32_t k = 0; k < it.len; k++) {
        s_item_t item;
        if (s_item(&r, &item)) {
            s_err(errbuf, errlen, r.err);
            return -1;
        }
        visited++;
        if (fn && fn(item.custom_id, item.body, item.body_size, arg))
            return visited;
    }
    if (llmq_mp_left(&r)) {
        s_err(errbuf, errlen, "trailing bytes");
        return -1;
    }
    return visited;
}

/*  ---- writing -------------------------------------------------------- */

llmq_packer_t *llmq_packer_new(void)
{
    llmq_packer_t *self = (llmq_packer_t *)calloc(1, sizeof *self);
    if (!self)
        return NULL;
    msgpack_sbuffer_init(&self->sbuf);
    msgpack_packer_init(&self->pk, &self->sbuf, msgpack_sbuffer_write);
    return self;
}

void llmq_packer_destroy(llmq_packer_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    msgpack_sbuffer_destroy(&(*self_p)->sbuf);
    free(*self_p);
    *self_p = NULL;
}

void llmq_packer_array(llmq_packer_t *self, size_t count)
{
    msgpack_pack_array(&self->pk, count);
}

void llmq_packer_map(llmq_packer_t *self, size_t count)
{
    msgpack_pack_map(&self->pk, count);
}

void llmq_packer_str(llmq_packer_t *self, const char *value)
{
    if (value)
        llmq_packer_strn(self, value, strlen(value));
    else
        msgpack_pack_nil(&self->pk);
}

/*  Room for n more bytes in sbuf, grown as msgpack_sbuffer_write grows
    it; false if out of memory. */
static bool s_sbuf_room(msgpack_sbuffer *sbuf, size_t n)
{
    if (sbuf->alloc - sbuf->size >= n)
        return true;
    size_t size = sbuf->alloc ? sbuf->alloc * 2 : MSGPACK_SBUFFER_INIT_SIZE;
    while (size < sbuf->size + n) {
        if (size * 2 <= size) {
            size = sbuf->size + n;
            break;
        }
        size *= 2;
    }
    char *grown = (char *)realloc(sbuf->data, size);
    if (!grown)
        return false;
    sbuf->data = grown;
    sbuf->alloc = size;
    return true;
}

/*  The bytes msgpack_pack_str + msgpack_pack_str_body write, written
    straight into the buffer: one room check and one copy, not two
    appends through the packer's callback (a hot path: every string of
    every answer). */
void llmq_packer_strn(llmq_packer_t *self, const char *value, size_t len)
{
    if (len > UINT32_MAX || !s_sbuf_room(&self->sbuf, len + 5)) {
        msgpack_pack_str(&self->pk, len);
        msgpack_pack_str_body(&self->pk, value, len);
        return;
    }
    uint8_t *at = (uint8_t *)self->sbuf.data + self->sbuf.size;
    size_t head = 1;
    if (len < 32)
        at[0] = (uint8_t)(0xa0 | len);
    else if (len < 256) {
        at[0] = 0xd9;
        at[1] = (uint8_t)len;
        head = 2;
    } else if (len < 65536) {
        at[0] = 0xda;
        at[1] = (uint8_t)(len >> 8);
        at[2] = (uint8_t)len;
        head = 3;
    } else {
        at[0] = 0xdb;
        at[1] = (uint8_t)(len >> 24);
        at[2] = (uint8_t)(len >> 16);
        at[3] = (uint8_t)(len >> 8);
        at[4] = (uint8_t)len;
        head = 5;
    }
    if (len)
        memcpy(at + head, value, len);
    self->sbuf.size += head + len;
}

void llmq_packer_int(llmq_packer_t *self, int64_t value)
{
    msgpack_pack_int64(&self->pk, value);
}

void llmq_packer_double(llmq_packer_t *self, double value)
{
    msgpack_pack_double(&self->pk, value);
}

void llmq_packer_bool(llmq_packer_t *self, bool value)
{
    if (value)
        msgpack_pack_true(&self->pk);
    else
        msgpack_pack_false(&self->pk);
}

void llmq_packer_nil(llmq_packer_t *self)
{
    msgpack_pack_nil(&self->pk);
}

void llmq_packer_raw(llmq_packer_t *self, const void *data, size_t size)
{
    if (size)
        msgpack_sbuffer_write(&self->sbuf, (const char *)data, size);
}

/*  A JSON number: an integer when it is integral and fits int64 (so
    "max_tokens": 100 stays an int on the wire), else a float64. */
static void s_pack_number(llmq_packer_t *self, double d)
{
    if (isfinite(d) && d == floor(d) && d >= -9223372036854775808.0 &&
        d < 9223372036854775808.0)
        llmq_packer_int(self, (int64_t)d);
    else
        llmq_packer_double(self, d);
}

static int s_pack_json(llmq_packer_t *self, const cJSON *json, int depth);

/*  Raw items hold JSON text: our own big integers, or text a caller put
    there. Integers are packed exactly; anything else is parsed. */
static int s_pack_raw(llmq_packer_t *self, const char *text, int depth)
{
    if (!text)
        return -1;
    char *end = NULL;
    errno = 0;
    long long ll = strtoll(text, &end, 10);
    if (end != text && *end == 0 && errno == 0) {
        llmq_packer_int(self, ll);
        return 0;
    }
    errno = 0;
    unsigned long long ull = strtoull(text, &end, 10);
    if (end != text && *end == 0 && errno == 0 && text[0] != '-') {
        msgpack_pack_uint64(&self->pk, ull);
        return 0;
    }
    cJSON *parsed = cJSON_Parse(text);
    int rc = parsed ? s_pack_json(self, parsed, depth) : -1;
    cJSON_Delete(parsed);
    return rc;
}

static int s_pack_children(llmq_packer_t *self, const cJSON *json, int depth,
                           bool keys)
{
    size_t n = 0;
    for (const cJSON *c = json->child; c; c = c->next)
        n++;
    if (keys)
        llmq_packer_map(self, n);
    else
        llmq_packer_array(self, n);
    for (const cJSON *c = json->child; c; c = c->next) {
        if (keys)
            llmq_packer_str(self, c->string ? c->string : "");
        if (s_pack_json(self, c, depth + 1))
            return -1;
    }
    return 0;
}

static int s_pack_json(llmq_packer_t *self, const cJSON *json, int depth)
{
    if (!json)
        return -1;
    if (cJSON_IsArray(json) || cJSON_IsObject(json)) {
        if (depth >= LLMQ_VALUE_MAX_DEPTH)
            return -1;
        return s_pack_children(self, json, depth, cJSON_IsObject(json));
    }
    if (cJSON_IsNull(json))
        llmq_packer_nil(self);
    else if (cJSON_IsBool(json))
        llmq_packer_bool(self, cJSON_IsTrue(json));
    else if (cJSON_IsNumber(json))
        s_pack_number(self, json->valuedouble);
    else if (cJSON_IsString(json))
        llmq_packer_str(self, json->valuestring ? json->valuestring : "");
    else if (cJSON_IsRaw(json))
        return s_pack_raw(self, json->valuestring, depth);
    else
        return -1;
    return 0;
}

void llmq_packer_json(llmq_packer_t *self, const cJSON *json)
{
    /*  Too deep or unknown nodes: write nil so the stream stays one value;
        llmq_value_from_json reports the failure instead. */
    size_t mark = self->sbuf.size;
    if (s_pack_json(self, json, 0)) {
        self->sbuf.size = mark;
        llmq_packer_nil(self);
    }
}

const uint8_t *llmq_packer_data(const llmq_packer_t *self, size_t *size)
{
    if (size)
        *size = self->sbuf.size;
    return (const uint8_t *)self->sbuf.data;
}

zframe_t *llmq_packer_frame(llmq_packer_t *self)
{
    zframe_t *frame = zframe_new(self->sbuf.data, self->sbuf.size);
    llmq_packer_reset(self);
    return frame;
}

void llmq_packer_reset(llmq_packer_t *self)
{
    msgpack_sbuffer_clear(&self->sbuf);
}

/*  ---- reading members without a tree ------------------------------------ */

/*  The kind letter of the value at data (llmq_value_find). */
static int s_kind_of(const uint8_t *data, size_t size)
{
    llmq_mp_reader_t v;
    llmq_mp_init(&v, data, size);
    llmq_mp_item_t it;
    if (llmq_mp_read(&v, &it))
        return 0;
    switch (it.kind) {
    case LLMQ_MP_MAP:
        return 'm';
    case LLMQ_MP_ARRAY:
        return 'a';
    case LLMQ_MP_STR:
    case LLMQ_MP_BIN:
        return 's';
    case LLMQ_MP_BOOL:
        return 'b';
    case LLMQ_MP_NIL:
        return 'z';
    case LLMQ_MP_EXT:
        return 0;
    default:
        return 'n';
    }
}

/*  The member's index in names[0..n) (lengths lens), or n. */
static size_t s_name_index(const llmq_mp_item_t *key, const char *const *names,
                           const size_t *lens, size_t n)
{
    for (size_t k = 0; k < n; k++)
        if (key->len == lens[k] && memcmp(key->ptr, names[k], key->len) == 0)
            return k;
    return n;
}

/*  Key lengths measured once per call, for up to this many keys. */
#define S_FIND_LENS 16

int llmq_value_find_many(const void *data, size_t size, const char *const *keys,
                         size_t count, llmq_value_ref_t *out)
{
    return llmq_value_find_numbers(data, size, keys, count, out, NULL);
}

int llmq_value_find_numbers(const void *data, size_t size,
                            const char *const *keys, size_t count,
                            llmq_value_ref_t *out, double *numbers)
{
    for (size_t k = 0; k < count; k++) {
        out[k] = (llmq_value_ref_t){NULL, 0, 0};
        if (numbers)
            numbers[k] = 0;
    }
    llmq_mp_reader_t r;
    llmq_mp_init(&r, data, size);
    llmq_mp_item_t it;
    if (count > S_FIND_LENS || llmq_mp_read(&r, &it) || it.kind != LLMQ_MP_MAP)
        return -1;
    size_t lens[S_FIND_LENS], found = 0;
    for (size_t k = 0; k < count; k++)
        lens[k] = strlen(keys[k]);
    for (uint32_t i = 0; i < it.len && found < count; i++) {
        llmq_mp_item_t key, v;
        if (llmq_mp_read(&r, &key))
            return 0;
        const uint8_t *start = r.p;
        if (llmq_mp_read(&r, &v))
            return 0;
        /*  A container's elements, skipped as llmq_mp_skip skips them. */
        uint64_t n = v.kind == LLMQ_MP_MAP     ? (uint64_t)v.len * 2
                     : v.kind == LLMQ_MP_ARRAY ? v.len
                                               : 0;
        for (uint64_t e = 0; e < n; e++)
            if (llmq_mp_skip(&r, LLMQ_VALUE_MAX_DEPTH - 1))
                return 0;
        size_t k = key.kind == LLMQ_MP_STR
                       ? s_name_index(&key, keys, lens, count)
                       : count;
        if (k == count || out[k].kind)
            continue;
        out[k] = (llmq_value_ref_t){start, (size_t)(r.p - start),
                                    s_kind_of(start, (size_t)(r.p - start))};
        found++;
        if (!numbers)
            continue;
        if (v.kind == LLMQ_MP_UINT)
            numbers[k] = (double)v.u;
        else if (v.kind == LLMQ_MP_INT)
            numbers[k] = (double)v.i;
        else if (v.kind == LLMQ_MP_FLOAT)
            numbers[k] = v.d;
    }
    return 0;
}

int llmq_value_find(const void *data, size_t size, const char *key,
                    const uint8_t **value, size_t *value_size)
{
    llmq_value_ref_t ref;
    if (llmq_value_find_many(data, size, &key, 1, &ref))
        return -1;
    if (value)
        *value = ref.data;
    if (value_size)
        *value_size = ref.size;
    return ref.kind;
}

/*  Back to mark (a failed append): -1. */
static int s_buf_undo(llmq_value_buf_t *buf, size_t mark)
{
    buf->size = mark;
    if (buf->data)
        buf->data[mark] = 0;
    return -1;
}

int llmq_value_buf_json_except(llmq_value_buf_t *buf, const void *data,
                               size_t size, const char *const *skip,
                               size_t nskip, char *errbuf, size_t errlen)
{
    return llmq_value_buf_json_except_find(buf, data, size, skip, nskip, NULL,
                                           0, NULL, errbuf, errlen);
}

int llmq_value_buf_json_except_find(llmq_value_buf_t *buf, const void *data,
                                    size_t size, const char *const *skip,
                                    size_t nskip, const char *const *keys,
                                    size_t count, llmq_value_ref_t *out,
                                    char *errbuf, size_t errlen)
{
    size_t mark = buf->size, skip_lens[S_FIND_LENS], key_lens[S_FIND_LENS];
    for (size_t k = 0; k < count; k++)
        out[k] = (llmq_value_ref_t){NULL, 0, 0};
    if (nskip > S_FIND_LENS || count > S_FIND_LENS) {
        s_err(errbuf, errlen, "too many names");
        return -1;
    }
    for (size_t k = 0; k < nskip; k++)
        skip_lens[k] = strlen(skip[k]);
    for (size_t k = 0; k < count; k++)
        key_lens[k] = strlen(keys[k]);
    llmq_mp_reader_t r;
    llmq_mp_init(&r, data, size);
    llmq_mp_item_t it;
    int written = 0;
    if (llmq_mp_read(&r, &it) || it.kind != LLMQ_MP_MAP) {
        s_err(errbuf, errlen, r.err ? r.err : "not a map");
        return -1;
    }
    llmq_value_buf_add(buf, "{", 1);
    for (uint32_t i = 0; i < it.len; i++) {
        llmq_mp_item_t key;
        if (llmq_mp_read(&r, &key) ||
            (key.kind != LLMQ_MP_STR && key.kind != LLMQ_MP_BIN) ||
            !llmq_mp_utf8(key.ptr, key.len)) {
            llmq_mp_fail(&r, "map key is not a UTF-8 string");
            break;
        }
        const uint8_t *start = r.p;
        if (llmq_mp_skip(&r, LLMQ_VALUE_MAX_DEPTH))
            break;
        size_t size_k = (size_t)(r.p - start);
        size_t k = key.kind == LLMQ_MP_STR
                       ? s_name_index(&key, keys, key_lens, count)
                       : count;
        if (k < count && !out[k].kind)
            out[k] =
                (llmq_value_ref_t){start, size_k, s_kind_of(start, size_k)};
        if (s_name_index(&key, skip, skip_lens, nskip) < nskip)
            continue;
        if (written++)
            llmq_value_buf_add(buf, ",", 1);
        llmq_value_buf_str(buf, (const char *)key.ptr, key.len);
        llmq_value_buf_add(buf, ":", 1);
        if (llmq_value_buf_json(buf, start, size_k, errbuf, errlen))
            return s_buf_undo(buf, mark);
    }
    if (!r.err && r.p != r.end)
        llmq_mp_fail(&r, "trailing bytes after the value");
    if (r.err) {
        s_err(errbuf, errlen, r.err);
        return s_buf_undo(buf, mark);
    }
    return written;
}

/*  Bytes of string values under one value (llmq_value_text_size). */
static int64_t s_text_size(llmq_mp_reader_t *r, const char *const *skip,
                           size_t nskip, int depth, int max_depth)
{
    llmq_mp_item_t it;
    if (llmq_mp_read(r, &it))
        return 0;
    if (it.kind == LLMQ_MP_STR || it.kind == LLMQ_MP_BIN)
        return depth > max_depth ? 0 : (int64_t)it.len;
    if (it.kind != LLMQ_MP_ARRAY && it.kind != LLMQ_MP_MAP)
        return 0;
    int64_t n = 0;
    for (uint32_t i = 0; i < it.len && !r->err; i++) {
        bool drop = false;
        if (it.kind == LLMQ_MP_MAP) {
            llmq_mp_item_t key;
            if (llmq_mp_read(r, &key))
                return n;
            for (size_t k = 0; k < nskip && !drop; k++)
                drop = key.kind == LLMQ_MP_STR && key.len == strlen(skip[k]) &&
                       memcmp(key.ptr, skip[k], key.len) == 0;
        }
        if (drop || depth >= LLMQ_VALUE_MAX_DEPTH)
            llmq_mp_skip(r, LLMQ_VALUE_MAX_DEPTH);
        else
            n += s_text_size(r, skip, nskip, depth + 1, max_depth);
    }
    return n;
}

int64_t llmq_value_text_size(const void *data, size_t size,
                             const char *const *skip, size_t nskip,
                             int max_depth)
{
    llmq_mp_reader_t r;
    llmq_mp_init(&r, data, size);
    return s_text_size(&r, skip, nskip, 0, max_depth);
}

bool llmq_value_number(const void *data, size_t size, double *out)
{
    llmq_mp_reader_t r;
    llmq_mp_init(&r, data, size);
    llmq_mp_item_t it;
    if (llmq_mp_read(&r, &it))
        return false;
    if (it.kind == LLMQ_MP_UINT)
        *out = (double)it.u;
    else if (it.kind == LLMQ_MP_INT)
        *out = (double)it.i;
    else if (it.kind == LLMQ_MP_FLOAT)
        *out = it.d;
    else
        return false;
    return true;
}

zframe_t *llmq_value_from_json(const cJSON *json)
{
    llmq_packer_t *packer = llmq_packer_new();
    if (!packer)
        return NULL;
    zframe_t *frame = NULL;
    if (s_pack_json(packer, json, 0) == 0)
        frame = llmq_packer_frame(packer);
    llmq_packer_destroy(&packer);
    return frame;
}

zframe_t *llmq_value_from_json_text(const char *text, size_t len, char *errbuf,
                                    size_t errlen)
{
    const char *end = NULL;
    cJSON *json =
        text ? cJSON_ParseWithLengthOpts(text, len, &end, false) : NULL;
    if (!json) {
        char reason[96];
        snprintf(reason, sizeof reason, "JSON syntax error at byte %zu",
                 text && end ? (size_t)(end - text) : (size_t)0);
        s_err(errbuf, errlen, reason);
        return NULL;
    }
    const char *tail = end ? end : text + len;
    while (tail < text + len && strchr(" \t\r\n", *tail) && *tail)
        tail++;
    if (tail < text + len) {
        cJSON_Delete(json);
        s_err(errbuf, errlen, "trailing characters after JSON value");
        return NULL;
    }
    zframe_t *frame = llmq_value_from_json(json);
    cJSON_Delete(json);
    if (!frame)
        s_err(errbuf, errlen, "JSON nested too deeply");
    return frame;
}

/*  ---- JSON text -> msgpack, direct ------------------------------------
    One pass over the text, no cJSON tree: the request bodies of `llmq run`
    go from its input lines to the wire this way. A container's header is
    written as the 32-bit form with a zero count, then patched once its
    members are counted and shrunk to the smallest form (the bytes after
    it move back), so the bytes are the ones llmq_value_from_json_text
    writes. Numbers: an integer literal that fits int64 is packed exactly
    (cJSON would round it through a double above 2^53); any other number
    as llmq_packer_json packs the double strtod reads. */

typedef struct {
    const char *p;       /* next byte */
    const char *end;     /* end of the text */
    llmq_packer_t *out;  /* NULL: validate only */
    const char *err;     /* why the text was refused */
    char *scratch;       /* decoded strings with escapes */
    size_t scratch_size; /* allocated */
} s_jp_t;

static int s_jp_value(s_jp_t *jp, int depth);

static int s_jp_fail(s_jp_t *jp, const char *reason)
{
    if (!jp->err)
        jp->err = reason;
    return -1;
}

static void s_jp_ws(s_jp_t *jp)
{
    while (jp->p < jp->end && (*jp->p == ' ' || *jp->p == '\t' ||
                               *jp->p == '\n' || *jp->p == '\r'))
        jp->p++;
}

/*  Four hex digits at p, or -1. */
static long s_jp_hex4(const char *p, const char *end)
{
    if (end - p < 4)
        return -1;
    long value = 0;
    for (int i = 0; i < 4; i++) {
        int c = (unsigned char)p[i], digit;
        if (c >= '0' && c <= '9')
            digit = c - '0';
        else if ((c | 32) >= 'a' && (c | 32) <= 'f')
            digit = (c | 32) - 'a' + 10;
        else
            return -1;
        value = value * 16 + digit;
    }
    return value;
}

/*  \uXXXX (a surrogate pair as one) at jp->p (after the 'u') as UTF-8
    into out (4 bytes at most). Returns the bytes written, or -1. */
static int s_jp_unicode(s_jp_t *jp, char *out)
{
    long cp = s_jp_hex4(jp->p, jp->end);
    if (cp < 0 || (cp >= 0xDC00 && cp <= 0xDFFF))
        return -1;
    jp->p += 4;
    if (cp >= 0xD800 && cp <= 0xDBFF) {
        long low = jp->end - jp->p >= 6 && jp->p[0] == '\\' && jp->p[1] == 'u'
                       ? s_jp_hex4(jp->p + 2, jp->end)
                       : -1;
        if (low < 0xDC00 || low > 0xDFFF)
            return -1;
        jp->p += 6;
        cp = 0x10000 + ((cp - 0xD800) << 10) + (low - 0xDC00);
    }
    if (cp < 0x80)
        return out[0] = (char)cp, 1;
    if (cp < 0x800)
        return out[0] = (char)(0xC0 | (cp >> 6)),
               out[1] = (char)(0x80 | (cp & 0x3F)), 2;
    if (cp < 0x10000)
        return out[0] = (char)(0xE0 | (cp >> 12)),
               out[1] = (char)(0x80 | ((cp >> 6) & 0x3F)),
               out[2] = (char)(0x80 | (cp & 0x3F)), 3;
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/*  The escapes of a string whose raw text (between the quotes) is
    [start, jp->p), decoded into scratch. Returns the size, or -1. */
static long s_jp_unescape(s_jp_t *jp, const char *start, const char *stop)
{
    size_t need = (size_t)(stop - start) + 1;
    if (need > jp->scratch_size) {
        char *grown = (char *)realloc(jp->scratch, need);
        if (!grown)
            return s_jp_fail(jp, "out of memory");
        jp->scratch = grown;
        jp->scratch_size = need;
    }
    const char *end = jp->end;
    jp->end = stop;
    jp->p = start;
    size_t used = 0;
    while (jp->p < stop) {
        char c = *jp->p++;
        if (c != '\\') {
            jp->scratch[used++] = c;
            continue;
        }
        c = jp->p < stop ? *jp->p++ : 0;
        const char *from = "\"\\/bfnrt", *to = "\"\\/\b\f\n\r\t";
        const char *hit = c ? strchr(from, c) : NULL;
        int n = 1;
        if (hit)
            jp->scratch[used] = to[hit - from];
        else if (c == 'u')
            n = s_jp_unicode(jp, jp->scratch + used);
        else
            n = -1;
        if (n < 0) {
            jp->end = end;
            return s_jp_fail(jp, "bad escape in a JSON string");
        }
        used += (size_t)n;
    }
    jp->end = end;
    jp->p = stop + 1;
    return (long)used;
}

/*  A string at jp->p (on its opening quote): its bytes, borrowed from the
    text or from scratch. Returns 0 or -1. */
static int s_jp_string(s_jp_t *jp, const char **data_p, size_t *size_p)
{
    const char *start = ++jp->p, *q = start;
    //  The closing quote: the first one after an even run of backslashes.
    while (true) {
        q = (const char *)memchr(q, '"', (size_t)(jp->end - q));
        if (!q)
            return s_jp_fail(jp, "unterminated JSON string");
        const char *b = q;
        while (b > start && b[-1] == '\\')
            b--;
        if ((q - b) % 2 == 0)
            break;
        q++;
    }
    bool escaped = memchr(start, '\\', (size_t)(q - start)) != NULL;
    if (!escaped) {
        *data_p = start;
        *size_p = (size_t)(q - start);
        jp->p = q + 1;
        return 0;
    }
    long size = s_jp_unescape(jp, start, q);
    if (size < 0)
        return -1;
    *data_p = jp->scratch;
    *size_p = (size_t)size;
    return 0;
}

/*  A plain integer literal (an optional '-', 1 to 18 digits, then no
    '.', 'e' or 'E'): packed as s_jp_number packs it (strtoll's value),
    without strtoll. Returns 1 if it was one, 0 if not (nothing read). */
static int s_jp_int_fast(s_jp_t *jp)
{
    const char *p = jp->p;
    bool neg = p < jp->end && *p == '-';
    p += neg;
    int64_t v = 0;
    int digits = 0;
    //  18 digits cannot overflow; a 19th digit means the slow path.
    while (p < jp->end && *p >= '0' && *p <= '9' && digits < 18) {
        v = v * 10 + (*p++ - '0');
        digits++;
    }
    if (digits == 0 || (p < jp->end && strchr("0123456789+-eE.", *p) && *p))
        return 0;
    jp->p = p;
    if (jp->out)
        llmq_packer_int(jp->out, neg ? -v : v);
    return 1;
}

/*  A number: the bytes cJSON would take as one, packed as it would. */
static int s_jp_number(s_jp_t *jp)
{
    if (s_jp_int_fast(jp))
        return 0;
    char text[64];
    size_t n = 0;
    bool integral = true;
    while (jp->p < jp->end && strchr("0123456789+-eE.", *jp->p) && *jp->p) {
        if (n + 1 >= sizeof text)
            return s_jp_fail(jp, "JSON number too long");
        integral = integral && (isdigit((unsigned char)*jp->p) ||
                                (n == 0 && *jp->p == '-'));
        text[n++] = *jp->p++;
    }
    text[n] = 0;
    char *stop = NULL;
    errno = 0;
    long long ll = integral ? strtoll(text, &stop, 10) : 0;
    if (integral && n && stop == text + n && errno == 0) {
        if (jp->out)
            llmq_packer_int(jp->out, ll);
        return 0;
    }
    double d = strtod(text, &stop);
    if (n == 0 || stop != text + n)
        return s_jp_fail(jp, "bad JSON number");
    if (jp->out)
        s_pack_number(jp->out, d);
    return 0;
}

static int s_jp_literal(s_jp_t *jp, const char *word)
{
    size_t n = strlen(word);
    if ((size_t)(jp->end - jp->p) < n || memcmp(jp->p, word, n) != 0)
        return s_jp_fail(jp, "JSON syntax error");
    jp->p += n;
    if (!jp->out)
        return 0;
    if (word[0] == 'n')
        llmq_packer_nil(jp->out);
    else
        llmq_packer_bool(jp->out, word[0] == 't');
    return 0;
}

/*  Write a container header placeholder; returns where it is. */
static size_t s_jp_open(s_jp_t *jp, bool map)
{
    if (!jp->out)
        return 0;
    size_t mark = jp->out->sbuf.size;
    const char header[5] = {(char)(map ? 0xdf : 0xdd), 0, 0, 0, 0};
    llmq_packer_raw(jp->out, header, sizeof header);
    return mark;
}

/*  Patch the header at mark with count, in its smallest form. */
static void s_jp_close(s_jp_t *jp, size_t mark, bool map, size_t count)
{
    if (!jp->out)
        return;
    uint8_t *at = (uint8_t *)jp->out->sbuf.data + mark;
    size_t keep = 5;
    if (count < 16) {
        at[0] = (uint8_t)((map ? 0x80 : 0x90) | count);
        keep = 1;
    } else if (count < 65536) {
        at[0] = map ? 0xde : 0xdc;
        at[1] = (uint8_t)(count >> 8);
        at[2] = (uint8_t)count;
        keep = 3;
    } else {
        at[1] = (uint8_t)(count >> 24);
        at[2] = (uint8_t)(count >> 16);
        at[3] = (uint8_t)(count >> 8);
        at[4] = (uint8_t)count;
    }
    size_t body = jp->out->sbuf.size - mark - 5;
    if (keep < 5) {
        memmove(at + keep, at + 5, body);
        jp->out->sbuf.size -= 5 - keep;
    }
}

/*  Keys whose first member s_jp_members notes as it packs
    (llmq_packer_json_object_find): out[k] becomes [offset, end offset) of
    the packed value of keys[k] (offsets into the packer: it may move while
    it grows), kind 1 meaning found. */
typedef struct {
    const char *const *keys;  /* keys[0..count) */
    size_t count;             /* how many */
    llmq_value_ref_t *out;    /* one per key, zeroed by the caller */
    size_t lens[S_FIND_LENS]; /* strlen of the first S_FIND_LENS keys */
} s_jp_find_t;

/*  Index of the key in find that key (size bytes) is, not yet found;
    find->count if none. */
static size_t s_jp_find_hit(const s_jp_find_t *find, const char *key,
                            size_t size)
{
    size_t count = find->count;
    for (size_t k = 0; k < count; k++)
        if (!find->out[k].kind &&
            (k < S_FIND_LENS ? find->lens[k] : strlen(find->keys[k])) == size &&
            !memcmp(find->keys[k], key, size))
            return k;
    return count;
}

/*  Members of an object (jp->p after its '{'); with drop (top level
    only), keys listed there are left out; with find (top level only),
    the keys it lists are noted (s_jp_find_t). *count_p: members
    written. Inlined into s_jp_members and llmq_packer_json_object_find,
    so that the nested objects' path carries no find. */
static inline __attribute__((always_inline)) int
s_jp_members_with(s_jp_t *jp, int depth, const char *const *drop,
                  s_jp_find_t *find, size_t *count_p)
{
    s_jp_ws(jp);
    if (jp->p < jp->end && *jp->p == '}')
        return jp->p++, 0;
    while (true) {
        const char *key;
        size_t size;
        s_jp_ws(jp);
        if (jp->p >= jp->end || *jp->p != '"' || s_jp_string(jp, &key, &size))
            return s_jp_fail(jp, "JSON object key expected");
        bool dropped = false;
        for (size_t i = 0; drop && drop[i] && !dropped; i++)
            dropped = strlen(drop[i]) == size && !memcmp(drop[i], key, size);
        size_t hit = find ? s_jp_find_hit(find, key, size) : 0;
        size_t mark = jp->out ? jp->out->sbuf.size : 0;
        if (jp->out)
            llmq_packer_strn(jp->out, key, size);
        s_jp_ws(jp);
        if (jp->p >= jp->end || *jp->p++ != ':')
            return s_jp_fail(jp, "':' expected in a JSON object");
        size_t start = jp->out ? jp->out->sbuf.size : 0;
        if (s_jp_value(jp, depth + 1))
            return -1;
        if (find && hit < find->count)
            find->out[hit] = (llmq_value_ref_t){
                (const uint8_t *)(uintptr_t)start, jp->out->sbuf.size, 1};
        if (dropped && jp->out)
            jp->out->sbuf.size = mark;
        *count_p += !dropped;
        s_jp_ws(jp);
        char c = jp->p < jp->end ? *jp->p++ : 0;
        if (c == '}')
            return 0;
        if (c != ',')
            return s_jp_fail(jp, "',' or '}' expected in a JSON object");
    }
}

static int s_jp_members(s_jp_t *jp, int depth, const char *const *drop,
                        size_t *count_p)
{
    return s_jp_members_with(jp, depth, drop, NULL, count_p);
}

static int s_jp_elements(s_jp_t *jp, int depth, size_t *count_p)
{
    s_jp_ws(jp);
    if (jp->p < jp->end && *jp->p == ']')
        return jp->p++, 0;
    while (true) {
        if (s_jp_value(jp, depth + 1))
            return -1;
        (*count_p)++;
        s_jp_ws(jp);
        char c = jp->p < jp->end ? *jp->p++ : 0;
        if (c == ']')
            return 0;
        if (c != ',')
            return s_jp_fail(jp, "',' or ']' expected in a JSON array");
    }
}

static int s_jp_container(s_jp_t *jp, int depth)
{
    if (depth >= LLMQ_VALUE_MAX_DEPTH)
        return s_jp_fail(jp, "JSON nested too deeply");
    bool map = *jp->p++ == '{';
    size_t mark = s_jp_open(jp, map), count = 0;
    int rc = map ? s_jp_members(jp, depth, NULL, &count)
                 : s_jp_elements(jp, depth, &count);
    if (rc == 0)
        s_jp_close(jp, mark, map, count);
    return rc;
}

static int s_jp_value(s_jp_t *jp, int depth)
{
    s_jp_ws(jp);
    if (jp->p >= jp->end)
        return s_jp_fail(jp, "JSON value expected");
    char c = *jp->p;
    if (c == '{' || c == '[')
        return s_jp_container(jp, depth);
    if (c == '"') {
        const char *data;
        size_t size;
        if (s_jp_string(jp, &data, &size))
            return -1;
        if (jp->out)
            llmq_packer_strn(jp->out, data, size);
        return 0;
    }
    if (c == 't')
        return s_jp_literal(jp, "true");
    if (c == 'f')
        return s_jp_literal(jp, "false");
    if (c == 'n')
        return s_jp_literal(jp, "null");
    return s_jp_number(jp);
}

/*  Only whitespace left. */
static int s_jp_end(s_jp_t *jp)
{
    s_jp_ws(jp);
    return jp->p < jp->end
               ? s_jp_fail(jp, "trailing characters after JSON value")
               : 0;
}

int llmq_packer_json_text(llmq_packer_t *self, const char *text, size_t len,
                          char *errbuf, size_t errlen)
{
    s_jp_t jp = {text, text + len, self, NULL, NULL, 0};
    size_t mark = self ? self->sbuf.size : 0;
    int rc = text ? s_jp_value(&jp, 0) : s_jp_fail(&jp, "no JSON text");
    if (rc == 0)
        rc = s_jp_end(&jp);
    if (rc != 0) {
        if (self)
            self->sbuf.size = mark;
        s_err(errbuf, errlen, jp.err);
    }
    free(jp.scratch);
    return rc;
}

int llmq_packer_json_object_find(llmq_packer_t *self, const char *text,
                                 size_t len, const char *const *keys,
                                 size_t count, llmq_value_ref_t *out,
                                 char *errbuf, size_t errlen)
{
    for (size_t k = 0; k < count; k++)
        out[k] = (llmq_value_ref_t){NULL, 0, 0};
    s_jp_t jp = {text, text + len, self, NULL, NULL, 0};
    size_t mark = self->sbuf.size, members = 0;
    s_jp_ws(&jp);
    int rc = text && jp.p < jp.end && *jp.p == '{'
                 ? 0
                 : s_jp_fail(&jp, "not a JSON object");
    if (rc == 0) {
        jp.p++;
        s_jp_open(&jp, true);
        s_jp_find_t find = {keys, count, out, {0}};
        for (size_t k = 0; k < count && k < S_FIND_LENS; k++)
            find.lens[k] = strlen(keys[k]);
        rc = s_jp_members_with(&jp, 0, NULL, &find, &members);
    }
    if (rc == 0)
        rc = s_jp_end(&jp);
    free(jp.scratch);
    if (rc != 0) {
        self->sbuf.size = mark;
        for (size_t k = 0; k < count; k++)
            out[k] = (llmq_value_ref_t){NULL, 0, 0};
        s_err(errbuf, errlen, jp.err);
        return -1;
    }
    size_t before = self->sbuf.size;
    s_jp_close(&jp, mark, true, members);
    size_t shift = before - self->sbuf.size;
    const uint8_t *base = (const uint8_t *)self->sbuf.data;
    for (size_t k = 0; k < count; k++) {
        if (!out[k].kind)
            continue;
        size_t start = (size_t)(uintptr_t)out[k].data - shift;
        size_t end = out[k].size - shift;
        out[k].data = base + start;
        out[k].size = end - start;
        out[k].kind = s_kind_of(out[k].data, out[k].size);
    }
    return 0;
}

zframe_t *llmq_value_from_json_object(const char *text, size_t len,
                                      const char *const *drop, const char *key,
                                      const char *value, char *errbuf,
                                      size_t errlen)
{
    llmq_packer_t *packer = llmq_packer_new();
    zframe_t *frame = NULL;
    if (!packer)
        s_err(errbuf, errlen, "out of memory");
    else if (llmq_packer_json_object_set(packer, text, len, drop, key, value,
                                         errbuf, errlen) == 0)
        frame = llmq_packer_frame(packer);
    llmq_packer_destroy(&packer);
    return frame;
}

int llmq_packer_json_object_set(llmq_packer_t *self, const char *text,
                                size_t len, const char *const *drop,
                                const char *key, const char *value,
                                char *errbuf, size_t errlen)
{
    size_t start = self->sbuf.size;
    s_jp_t jp = {text, text + len, self, NULL, NULL, 0};
    int rc = text ? 0 : s_jp_fail(&jp, "not a JSON object");
    s_jp_ws(&jp);
    if (rc == 0 && (jp.p >= jp.end || *jp.p != '{'))
        rc = s_jp_fail(&jp, "not a JSON object");
    size_t count = 0, mark = 0;
    if (rc == 0) {
        jp.p++;
        mark = s_jp_open(&jp, true);
        rc = s_jp_members(&jp, 0, drop, &count);
    }
    if (rc == 0)
        rc = s_jp_end(&jp);
    if (rc == 0 && key) {
        llmq_packer_str(self, key);
        llmq_packer_str(self, value ? value : "");
        count++;
    }
    if (rc == 0)
        s_jp_close(&jp, mark, true, count);
    else {
        self->sbuf.size = start;
        s_err(errbuf, errlen, jp.err);
    }
    free(jp.scratch);
    return rc;
}

int llmq_value_json_members(const char *text, size_t len,
                            const char *const *keys, llmq_value_span_t *spans)
{
    return llmq_value_json_members_nested(text, len, keys, spans, SIZE_MAX,
                                          NULL, NULL);
}

/*  llmq_value_json_members_nested's walk: the members of an object
    (jp->p after its '{'), values checked at depth; the first member of
    each name in keys (ASCII case ignored) in spans; the first member
    keys[at] (at < nkeys), when an object, walked the same way for
    inner_keys into inner_spans instead of being skipped whole. */
static int s_span_members(s_jp_t *jp, int depth, const char *const *keys,
                          llmq_value_span_t *spans, size_t nkeys, size_t at,
                          const char *const *inner_keys,
                          llmq_value_span_t *inner_spans)
{
    s_jp_ws(jp);
    if (jp->p < jp->end && *jp->p == '}')
        return jp->p++, 0;
    while (true) {
        const char *key;
        size_t size;
        s_jp_ws(jp);
        if (jp->p >= jp->end || *jp->p != '"' || s_jp_string(jp, &key, &size))
            return -1;
        size_t hit = nkeys;
        for (size_t i = 0; i < nkeys && hit == nkeys; i++)
            if (!spans[i].data && strlen(keys[i]) == size &&
                strncasecmp(keys[i], key, size) == 0)
                hit = i;
        s_jp_ws(jp);
        if (jp->p >= jp->end || *jp->p++ != ':')
            return -1;
        s_jp_ws(jp);
        const char *start = jp->p;
        if (hit == at && jp->p < jp->end && *jp->p == '{') {
            //  As s_jp_value would: the depth check, then the members.
            size_t ninner = 0;
            while (inner_keys && inner_keys[ninner])
                ninner++;
            if (depth >= LLMQ_VALUE_MAX_DEPTH)
                return -1;
            jp->p++;
            if (s_span_members(jp, depth + 1, inner_keys, inner_spans, ninner,
                               SIZE_MAX, NULL, NULL))
                return -1;
        } else if (s_jp_value(jp, depth))
            return -1;
        if (hit < nkeys)
            spans[hit] = (llmq_value_span_t){start, (size_t)(jp->p - start)};
        s_jp_ws(jp);
        char c = jp->p < jp->end ? *jp->p++ : 0;
        if (c == '}')
            return 0;
        if (c != ',')
            return -1;
    }
}

int llmq_value_json_members_nested(const char *text, size_t len,
                                   const char *const *keys,
                                   llmq_value_span_t *spans, size_t at,
                                   const char *const *inner_keys,
                                   llmq_value_span_t *inner_spans)
{
    s_jp_t jp = {text, text + len, NULL, NULL, NULL, 0};
    size_t nkeys = 0, ninner = 0;
    while (keys && keys[nkeys])
        spans[nkeys++] = (llmq_value_span_t){NULL, 0};
    while (inner_keys && inner_keys[ninner])
        inner_spans[ninner++] = (llmq_value_span_t){NULL, 0};
    s_jp_ws(&jp);
    int rc = text && jp.p < jp.end && *jp.p++ == '{' ? 0 : -1;
    if (rc == 0)
        rc =
            s_span_members(&jp, 1, keys, spans, nkeys,
                           at < nkeys ? at : SIZE_MAX, inner_keys, inner_spans);
    if (rc == 0)
        rc = s_jp_end(&jp);
    free(jp.scratch);
    return rc;
}

char *llmq_value_json_string(llmq_value_span_t span)
{
    if (!span.data || span.size < 2 || span.data[0] != '"')
        return NULL;
    s_jp_t jp = {span.data, span.data + span.size, NULL, NULL, NULL, 0};
    const char *data;
    size_t size;
    char *copy = NULL;
    if (s_jp_string(&jp, &data, &size) == 0 && jp.p == jp.end &&
        (copy = (char *)malloc(size + 1))) {
        memcpy(copy, data, size);
        copy[size] = 0;
    }
    free(jp.scratch);
    return copy;
}

/*  ---- msgpack -> JSON text, no tree ------------------------------------ */

/*  s_buf_room when the room is short: grows the buffer. */
static bool s_buf_grow(llmq_value_buf_t *self, size_t need)
{
    if (self->oom)
        return false;
    size_t cap = self->cap ? self->cap : 256;
    while (cap - self->size <= need) {
        if (cap > SIZE_MAX / 2) {
            self->oom = true;
            return false;
        }
        cap *= 2;
    }
    char *data = (char *)realloc(self->data, cap);
    if (!data) {
        self->oom = true;
        return false;
    }
    self->data = data;
    self->cap = cap;
    return true;
}

/*  Room for need more bytes plus the NUL; false (and oom) if none. Inline:
    the writer asks for each value. */
static inline bool s_buf_room(llmq_value_buf_t *self, size_t need)
{
    if (!self->oom && self->cap - self->size > need)
        return true;
    return s_buf_grow(self, need);
}

void llmq_value_buf_add(llmq_value_buf_t *self, const char *data, size_t size)
{
    if (!s_buf_room(self, size))
        return;
    memcpy(self->data + self->size, data, size);
    self->size += size;
    self->data[self->size] = 0;
}

/*  One byte, room known to be there (no NUL: the public calls end the
    text). */
static inline void s_buf_byte(llmq_value_buf_t *self, char c)
{
    self->data[self->size++] = c;
}

/*  SWAR over 8 bytes: a high bit set in the byte of the result for each
    byte below 0x20, a quote, a backslash, or non-ASCII. */
static inline uint64_t s_special8(uint64_t w)
{
    const uint64_t ones = 0x0101010101010101ULL, highs = ones * 0x80;
    uint64_t quote = w ^ (ones * '"'), bslash = w ^ (ones * '\\');
    uint64_t any = ((w - ones * 0x20) & ~w) | ((quote - ones) & ~quote) |
                   ((bslash - ones) & ~bslash) | w;
    return any & highs;
}

/*  A byte that is not plain (control, quote, backslash), escaped. */
static char *s_escape(char *out, uint8_t c)
{
    static const char short_esc[] = "btnvfr";
    static const char hex[] = "0123456789abcdef";
    *out++ = '\\';
    if (c == '"' || c == '\\')
        *out++ = (char)c;
    else if (c >= 8 && c <= 13 && c != 11)
        *out++ = short_esc[c - 8];
    else {
        memcpy(out, "u00", 3);
        out[3] = hex[c >> 4];
        out[4] = hex[c & 15];
        out += 5;
    }
    return out;
}

/*  len bytes as a quoted JSON string: runs of plain ASCII are copied 8
    bytes at a time. With utf8, each non-ASCII sequence is checked as it
    passes (one pass for both); returns -1 (nothing kept) if one is
    invalid. */
static int s_buf_escaped(llmq_value_buf_t *self, const uint8_t *s, size_t len,
                         bool utf8)
{
    //  Worst case: every byte a \u00XX escape, plus the quotes.
    if (len > (SIZE_MAX - 3) / 6 || !s_buf_room(self, len * 6 + 2))
        return 0;
    char *out = self->data + self->size;
    const uint8_t *end = s + len;
    *out++ = '"';
    while (s < end) {
        uint64_t w;
        if (end - s >= 8 && (memcpy(&w, s, 8), !s_special8(w))) {
            memcpy(out, s, 8);
            out += 8;
            s += 8;
            continue;
        }
        uint8_t c = *s;
        if (c >= 0x20 && c != '"' && c != '\\' && c < 0x80) {
            *out++ = (char)*s++;
            continue;
        }
        if (c < 0x80) {
            out = s_escape(out, c);
            s++;
            continue;
        }
        size_t n = c >= 0xf0 ? 4 : c >= 0xe0 ? 3 : 2;
        if (utf8 && ((size_t)(end - s) < n || !llmq_mp_utf8(s, n)))
            return -1;
        n = n < (size_t)(end - s) ? n : (size_t)(end - s);
        memcpy(out, s, n);
        out += n;
        s += n;
    }
    *out++ = '"';
    self->size = (size_t)(out - self->data);
    return 0;
}

void llmq_value_buf_str(llmq_value_buf_t *self, const char *text, size_t len)
{
    s_buf_escaped(self, (const uint8_t *)text, len, false);
    if (self->data)
        self->data[self->size] = 0;
}

/*  An integer, exactly. */
static void s_buf_int(llmq_value_buf_t *self, bool negative, uint64_t u)
{
    char digits[24];
    char *p = digits + sizeof digits;
    do {
        *--p = (char)('0' + u % 10);
        u /= 10;
    } while (u);
    if (negative)
        *--p = '-';
    llmq_value_buf_add(self, p, (size_t)(digits + sizeof digits - p));
}

void llmq_value_buf_int(llmq_value_buf_t *self, int64_t value)
{
    //  -(i + 1) + 1 keeps INT64_MIN in range.
    s_buf_int(self, value < 0,
              value < 0 ? (uint64_t)(-(value + 1)) + 1u : (uint64_t)value);
}

/*  A float as cJSON prints it: 15 significant digits, 17 when 15 do not
    read back the same; null when not finite (JSON has no NaN). */
static void s_buf_double(llmq_value_buf_t *self, double d)
{
    if (!isfinite(d)) {
        llmq_value_buf_add(self, "null", 4);
        return;
    }
    char text[32];
    int n = snprintf(text, sizeof text, "%1.15g", d);
    if (strtod(text, NULL) != d)
        n = snprintf(text, sizeof text, "%1.17g", d);
    llmq_value_buf_add(self, text, (size_t)n);
}

static int s_buf_value(llmq_value_buf_t *self, llmq_mp_reader_t *r, int depth);

/*  A str or bin as a JSON string (UTF-8 checked). One with nothing to
    escape (plain ASCII, most keys and texts) is copied 8 bytes at a time,
    its last bytes too: an 8-byte read that stays in the input (r->end),
    an 8-byte store into the room made for it; any other goes through
    s_buf_escaped (escapes, UTF-8 check). Out of memory: nothing written,
    oom noted for the caller to report. */
static int s_buf_text(llmq_value_buf_t *self, llmq_mp_reader_t *r,
                      const llmq_mp_item_t *it)
{
    const uint8_t *s = it->ptr;
    size_t len = it->len, i = 0;
    //  The quotes, the tail store's 7 bytes past the end, and one spare.
    if (!s_buf_room(self, len + 16))
        return 0;
    char *out = self->data + self->size + 1;
    uint64_t w;
    for (; i + 8 <= len; i += 8) {
        memcpy(&w, s + i, 8);
        if (s_special8(w))
            goto escaped;
        memcpy(out + i, &w, 8);
    }
    if (i < len) {
        size_t n = len - i;
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
        if (s + i + 8 <= r->end)
            memcpy(&w, s + i, 8);
        else {
            w = 0;
            memcpy(&w, s + i, n);
        }
        //  Byte k of the read is bits 8k..8k+7: look at the n first only.
        if (s_special8(w) & (((uint64_t)1 << (8 * n)) - 1))
            goto escaped;
        memcpy(out + i, &w, 8);
#else
        for (size_t k = i; k < len; k++) {
            if (s[k] < 0x20 || s[k] == '"' || s[k] == '\\' || s[k] >= 0x80)
                goto escaped;
            out[k] = (char)s[k];
        }
#endif
    }
    self->data[self->size] = '"';
    out[len] = '"';
    self->size += len + 2;
    return 0;
escaped:
    if (s_buf_escaped(self, s, len, true))
        return llmq_mp_fail(r, "invalid UTF-8");
    return 0;
}

/*  One punctuation byte. */
static inline void s_buf_punct(llmq_value_buf_t *self, char c)
{
    if (s_buf_room(self, 1))
        s_buf_byte(self, c);
}

/*  The elements of an array or map whose header was it. */
static int s_buf_children(llmq_value_buf_t *self, llmq_mp_reader_t *r,
                          const llmq_mp_item_t *it, int depth)
{
    bool map = it->kind == LLMQ_MP_MAP;
    s_buf_punct(self, map ? '{' : '[');
    for (uint32_t k = 0; k < it->len; k++) {
        if (k)
            s_buf_punct(self, ',');
        if (map) {
            llmq_mp_item_t key;
            if (llmq_mp_read_fast(r, &key))
                return -1;
            if (key.kind != LLMQ_MP_STR && key.kind != LLMQ_MP_BIN)
                return llmq_mp_fail(r, "map key is not a string");
            if (s_buf_text(self, r, &key))
                return -1;
            s_buf_punct(self, ':');
        }
        if (s_buf_value(self, r, depth + 1))
            return -1;
    }
    s_buf_punct(self, map ? '}' : ']');
    return 0;
}

static int s_buf_value(llmq_value_buf_t *self, llmq_mp_reader_t *r, int depth)
{
    llmq_mp_item_t it;
    if (llmq_mp_read_fast(r, &it))
        return -1;
    switch (it.kind) {
    case LLMQ_MP_NIL:
        llmq_value_buf_add(self, "null", 4);
        return 0;
    case LLMQ_MP_BOOL:
        llmq_value_buf_add(self, it.b ? "true" : "false", it.b ? 4 : 5);
        return 0;
    case LLMQ_MP_UINT:
        s_buf_int(self, false, it.u);
        return 0;
    case LLMQ_MP_INT:
        llmq_value_buf_int(self, it.i);
        return 0;
    case LLMQ_MP_FLOAT:
        s_buf_double(self, it.d);
        return 0;
    case LLMQ_MP_STR:
    case LLMQ_MP_BIN:
        return s_buf_text(self, r, &it);
    case LLMQ_MP_ARRAY:
    case LLMQ_MP_MAP:
        if (depth >= LLMQ_VALUE_MAX_DEPTH)
            return llmq_mp_fail(r, "nesting too deep");
        return s_buf_children(self, r, &it, depth);
    default:
        return llmq_mp_fail(r, "ext type not allowed");
    }
}

int llmq_value_buf_json(llmq_value_buf_t *self, const void *data, size_t size,
                        char *errbuf, size_t errlen)
{
    size_t start = self->size;
    llmq_mp_reader_t r;
    llmq_mp_init(&r, data, size);
    if (!data && size)
        llmq_mp_fail(&r, "no data");
    else if (s_buf_value(self, &r, 0) == 0 && llmq_mp_left(&r))
        llmq_mp_fail(&r, "trailing bytes");
    else if (!r.err && self->oom)
        llmq_mp_fail(&r, "out of memory");
    if (!r.err) {
        if (self->data)
            self->data[self->size] = 0;
        return 0;
    }
    self->size = start;
    if (self->data)
        self->data[start] = 0;
    s_err(errbuf, errlen, r.err);
    return -1;
}

/*  ---- selftest ---------------------------------------------------------- */

/*  Checks that stay on in release builds (NDEBUG removes assert). */
#include "llmq_check.h"
#define S_TEST(cond) LLMQ_CHECK(cond)

static int s_test_item(const char *custom_id, const void *body,
                       size_t body_size, void *arg)
{
    char *json = llmq_value_to_json_text(body, body_size, NULL, 0);
    S_TEST(json);
    zlistx_add_end((zlistx_t *)arg, json);
    free(json);
    (void)custom_id;
    return 0;
}

/*  llmq_packer_json_text gives the bytes llmq_value_from_json_text gives
    (the cJSON path), on valid text; both refuse the same broken text. (An
    escaped NUL differs: cJSON's C strings end there, the direct packer
    keeps it.) */
static void s_test_json_text(void)
{
    //  Long literals in parentheses: one element each (clang's
    //  -Wstring-concatenation).
    const char *same[] = {
        ("{\"id\":\"c-1\",\"object\":\"chat.completion\",\"created\":"
         "1700000000,"
         "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\","
         "\"content\":\"a \\\"q\\\" \\u00e9\\ud83d\\ude00\\n\\/\"},"
         "\"finish_reason\":\"stop\",\"logprobs\":null}],\"usage\":{"
         "\"prompt_tokens\":12,\"completion_tokens\":3,\"total_tokens\":15}}"),
        (" [1.5, -2, 0, 1e3, 2.0, -0.0, 1.25e-7, true, false, null, \"\", [], "
         "{}] "),
        "[0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19]",
        "{\"a\":{\"b\":{\"c\":[[[]]]}},\"k\":\"v\\u00e9cut\"}",
        "\"just a string\"",
        "-9223372036854775808"};
    llmq_packer_t *pk = llmq_packer_new();
    char err[128];
    for (size_t i = 0; i < sizeof same / sizeof same[0]; i++) {
        zframe_t *want = llmq_value_from_json_text(same[i], strlen(same[i]),
                                                   err, sizeof err);
        S_TEST(want);
        S_TEST(llmq_packer_json_text(pk, same[i], strlen(same[i]), err,
                                     sizeof err) == 0);
        size_t size = 0;
        const uint8_t *got = llmq_packer_data(pk, &size);
        S_TEST(want && size == zframe_size(want) &&
               memcmp(got, zframe_data(want), size) == 0);
        llmq_packer_reset(pk);
        zframe_destroy(&want);
    }
    const char *bad[] = {"{\"a\":",     "1 2", "{1:2}",     "[1,]",  "\"\\x\"",
                         "\"\\udc00\"", "tru", "{\"a\" 1}", "[1 2]", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        S_TEST(llmq_packer_json_text(pk, bad[i], strlen(bad[i]), err,
                                     sizeof err) == -1);
        size_t size = 1;
        llmq_packer_data(pk, &size);
        S_TEST(size == 0);
    }
    /*  Exact past 2^53, and members found without a tree. */
    const char *big = "{\"n\":9007199254740993,\"u\":{\"t\":7},\"s\":[1]}";
    S_TEST(llmq_packer_json_text(pk, big, strlen(big), err, sizeof err) == 0);
    size_t size = 0;
    const uint8_t *data = llmq_packer_data(pk, &size);
    const uint8_t *v = NULL;
    size_t vs = 0;
    double d = 0;
    S_TEST(llmq_value_find(data, size, "u", &v, &vs) == 'm');
    S_TEST(llmq_value_find(v, vs, "t", &v, &vs) == 'n');
    S_TEST(llmq_value_number(v, vs, &d) && d == 7);
    S_TEST(llmq_value_find(data, size, "s", NULL, NULL) == 'a');
    S_TEST(llmq_value_find(data, size, "x", NULL, NULL) == 0);
    S_TEST(llmq_value_find(v, vs, "x", NULL, NULL) == -1);
    char *text = llmq_value_to_json_text(data, size, NULL, 0);
    S_TEST(text && strstr(text, "9007199254740993"));
    free(text);
    llmq_packer_destroy(&pk);
}

static void s_test_json(void)
{
    const char *text =
        "{\"model\":\"m\",\"max_tokens\":100,\"temperature\":0.5,"
        "\"stream\":false,\"stop\":null,\"big\":9007199254740993,"
        "\"messages\":[{\"role\":\"user\",\"content\":\"hi \\u00e9\"}]}";
    char err[128];
    zframe_t *frame =
        llmq_value_from_json_text(text, strlen(text), err, sizeof err);
    S_TEST(frame);
    S_TEST(llmq_value_is_valid(zframe_data(frame), zframe_size(frame)));
    char *back = llmq_value_to_json_text(zframe_data(frame), zframe_size(frame),
                                         err, sizeof err);
    S_TEST(back);
    S_TEST(strstr(back, "\"max_tokens\":100,"));
    S_TEST(strstr(back, "\"temperature\":0.5"));
    S_TEST(strstr(back, "\"stop\":null"));
    /* cJSON parses numbers as doubles: 2^53 + 1 arrives as 2^53 */
    S_TEST(strstr(back, "\"big\":9007199254740992"));
    free(back);
    /* every strict prefix is malformed */
    for (size_t n = 0; n < zframe_size(frame); n++)
        S_TEST(!llmq_value_is_valid(zframe_data(frame), n));
    zframe_destroy(&frame);
    S_TEST(!llmq_value_from_json_text("{\"a\":", 5, err, sizeof err));
    S_TEST(!llmq_value_from_json_text("1 2", 3, err, sizeof err));
    frame = llmq_value_from_json_text("[1] ", 4, err, sizeof err);
    S_TEST(frame);
    zframe_destroy(&frame);
}

static void s_test_malformed(void)
{
    char err[128];
    const uint8_t bomb[] = {0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0};
    S_TEST(!llmq_value_to_json(bomb, sizeof bomb, err, sizeof err));
    S_TEST(strstr(err, "count exceeds bytes left"));
    uint8_t deep[200];
    memset(deep, 0x91, sizeof deep);
    deep[sizeof deep - 1] = 0xc0;
    S_TEST(!llmq_value_to_json(deep, sizeof deep, err, sizeof err));
    S_TEST(strstr(err, "nesting too deep"));
    const uint8_t ext[] = {0xd4, 0x01, 0x00};
    S_TEST(!llmq_value_is_valid(ext, sizeof ext));
    const uint8_t badutf[] = {0xa2, 0xc3, 0x28};
    S_TEST(!llmq_value_is_valid(badutf, sizeof badutf));
    const uint8_t intkey[] = {0x81, 0x01, 0x02};
    S_TEST(!llmq_value_is_valid(intkey, sizeof intkey));
    const uint8_t trailing[] = {0xc0, 0xc0};
    S_TEST(!llmq_value_to_json(trailing, sizeof trailing, err, sizeof err));
    S_TEST(strstr(err, "trailing bytes"));
    const uint8_t big[] = {0xcf, 0xff, 0xff, 0xff, 0xff,
                           0xff, 0xff, 0xff, 0xff};
    char *text = llmq_value_to_json_text(big, sizeof big, NULL, 0);
    S_TEST(text && streq(text, "18446744073709551615"));
    free(text);
}

static void s_test_items(void)
{
    llmq_packer_t *pk = llmq_packer_new();
    llmq_packer_array(pk, 2);
    for (int k = 0; k < 2; k++) {
        llmq_packer_map(pk, 3);
        llmq_packer_str(pk, "custom_id");
        llmq_packer_str(pk, k ? "b" : "a");
        llmq_packer_str(pk, "extra");
        llmq_packer_nil(pk);
        llmq_packer_str(pk, "body");
        llmq_packer_map(pk, 1);
        llmq_packer_str(pk, "n");
        llmq_packer_int(pk, k);
    }
    size_t size;
    const uint8_t *data = llmq_packer_data(pk, &size);
    zlistx_t *bodies = zlistx_new();
    zlistx_set_destructor(bodies, (zlistx_destructor_fn *)zstr_free);
    zlistx_set_duplicator(bodies, (zlistx_duplicator_fn *)strdup);
    char err[128];
    S_TEST(llmq_value_each_item(data, size, s_test_item, bodies, err,
                                sizeof err) == 2);
    S_TEST(streq((char *)zlistx_first(bodies), "{\"n\":0}"));
    S_TEST(streq((char *)zlistx_next(bodies), "{\"n\":1}"));
    /* truncated anywhere: -1, never a crash */
    for (size_t n = 0; n < size; n++)
        S_TEST(llmq_value_each_item(data, n, NULL, NULL, err, sizeof err) ==
               -1);
    zlistx_destroy(&bodies);
    llmq_packer_reset(pk);
    llmq_packer_array(pk, 1);
    llmq_packer_map(pk, 1);
    llmq_packer_str(pk, "body");
    llmq_packer_int(pk, 1);
    data = llmq_packer_data(pk, &size);
    S_TEST(llmq_value_each_item(data, size, NULL, NULL, err, sizeof err) == -1);
    S_TEST(strstr(err, "custom_id"));
    llmq_packer_destroy(&pk);
    llmq_packer_destroy(&pk);
}

/*  The direct converter writes what the cJSON path writes. */
static void s_test_direct_same(const char *text)
{
    zframe_t *want = llmq_value_from_json_text(text, strlen(text), NULL, 0);
    llmq_packer_t *packer = llmq_packer_new();
    int rc = llmq_packer_json_text(packer, text, strlen(text), NULL, 0);
    size_t size = 0;
    const uint8_t *data = llmq_packer_data(packer, &size);
    S_TEST((want != NULL) == (rc == 0));
    if (want && rc == 0) {
        if (size != zframe_size(want) || memcmp(data, zframe_data(want), size))
            fprintf(stderr, "direct JSON differs: %.80s\n", text);
        S_TEST(size == zframe_size(want) &&
               memcmp(data, zframe_data(want), size) == 0);
    }
    zframe_destroy(&want);
    llmq_packer_destroy(&packer);
}

/*  A container of n members, as JSON text (caller frees). */
static char *s_test_wide(size_t n, bool map)
{
    char *text = (char *)malloc(n * 16 + 8);
    size_t used = 0;
    text[used++] = map ? '{' : '[';
    for (size_t i = 0; i < n; i++)
        used += (size_t)(map ? sprintf(text + used, "%s\"k%zu\":%zu",
                                       i ? "," : "", i, i)
                             : sprintf(text + used, "%s%zu", i ? "," : "", i));
    text[used++] = map ? '}' : ']';
    text[used] = 0;
    return text;
}

static void s_test_direct(void)
{
    const char *same[] = {
        "{}",
        "[]",
        " {\"a\" : [1, -2, 3.5, 1e3, -0, 2.0, true, false, null]} ",
        "{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}]"
        ","
        "\"max_tokens\":16,\"temperature\":0.7}",
        "\"esc \\\" \\\\ \\/ \\b \\f \\n \\r \\t \\u00e9 \\u20ac "
        "\\ud83d\\ude00\"",
        "{\"\\u00e9t\\u00e9\":{\"deep\":[[[{\"x\":[]}]]]}}",
        "123456789012345",
        "-9007199254740991",
        "1.5e-7",
        "[\"\",{},[],0]",
        "\"caf\xc3\xa9\"",
        "18446744073709551615",
        "[1,]",
        "{\"a\" 1}",
        "[\"\\ud800\"]",
        "\"\\ude00\"",
        "tru",
        "[1] x",
        "01",
        "\"abc",
        "-",
        "{\"a\":1,}",
        NULL};
    for (int i = 0; same[i]; i++)
        s_test_direct_same(same[i]);
    size_t widths[] = {15, 16, 65535, 65536};
    for (size_t i = 0; i < 4; i++)
        for (int map = 0; map < 2; map++) {
            char *text = s_test_wide(widths[i], map);
            s_test_direct_same(text);
            free(text);
        }
    //  Past 2^53 an integer literal stays exact.
    llmq_packer_t *packer = llmq_packer_new();
    S_TEST(llmq_packer_json_text(packer, "9007199254740993", 16, NULL, 0) == 0);
    size_t size = 0;
    const uint8_t *data = llmq_packer_data(packer, &size);
    S_TEST(size == 9 && data[0] == 0xcf && data[8] == 0x01);
    llmq_packer_destroy(&packer);
    //  Too deep: refused, as llmq_value_from_json is.
    char deep[200] = "";
    for (int i = 0; i < 70; i++)
        strcat(deep, "[");
    char err[96] = "";
    packer = llmq_packer_new();
    S_TEST(llmq_packer_json_text(packer, deep, strlen(deep), err, sizeof err));
    S_TEST(strstr(err, "deeply"));
    llmq_packer_destroy(&packer);
}

/*  An object with members left out and one added; members found. */
static void s_test_direct_object(void)
{
    const char *body = "{\"model\":\"x\",\"messages\":[1],\"MODEL\":2}";
    const char *drop[] = {"model", NULL};
    zframe_t *frame = llmq_value_from_json_object(body, strlen(body), drop,
                                                  "model", "m2", NULL, 0);
    zframe_t *want = llmq_value_from_json_text(
        "{\"messages\":[1],\"MODEL\":2,\"model\":\"m2\"}", 39, NULL, 0);
    S_TEST(frame && want && zframe_eq(frame, want));
    zframe_destroy(&frame);
    zframe_destroy(&want);
    S_TEST(!llmq_value_from_json_object("[1]", 3, NULL, NULL, NULL, NULL, 0));
    S_TEST(
        !llmq_value_from_json_object("{\"a\":}", 6, NULL, NULL, NULL, NULL, 0));
    const char *line = "{\"Custom_Id\":\"a\\u0062\",\"body\":{\"model\":\"m\"},"
                       "\"custom_id\":\"c\",\"n\":[1,{\"url\":2}]}";
    const char *keys[] = {"custom_id", "body", "url", NULL};
    llmq_value_span_t spans[3];
    S_TEST(llmq_value_json_members(line, strlen(line), keys, spans) == 0);
    char *id = llmq_value_json_string(spans[0]);
    S_TEST(id && streq(id, "ab"));
    free(id);
    S_TEST(spans[1].size == 13 &&
           !memcmp(spans[1].data, "{\"model\":\"m\"}", 13));
    S_TEST(!spans[2].data && !llmq_value_json_string(spans[1]));
    S_TEST(llmq_value_json_members("{\"a\":1", 6, keys, spans) == -1);
    S_TEST(llmq_value_json_members("{} x", 4, keys, spans) == -1);
    S_TEST(llmq_value_json_members(" {} ", 4, keys, spans) == 0);
}

/*  llmq_value_buf_json on data (size bytes, alone in its allocation so a
    read past it shows under ASan/valgrind) after a prefix: want is the
    text it must append (NULL: it must refuse, leaving the prefix, with
    reason why). Without want (a byte changed somewhere) the text, when
    accepted, must be one JSON value cJSON reads as the tree printer's
    text. */
static void s_test_buf_case(const uint8_t *data, size_t size, bool any,
                            const char *want, const char *why)
{
    uint8_t *copy = (uint8_t *)malloc(size ? size : 1);
    S_TEST(copy);
    if (size)
        memcpy(copy, data, size);
    llmq_value_buf_t buf = {0};
    llmq_value_buf_add(&buf, "x", 1);
    char err[128] = "";
    int rc = llmq_value_buf_json(&buf, copy, size, err, sizeof err);
    S_TEST(buf.data && buf.data[0] == 'x' && buf.data[buf.size] == 0);
    if (rc == -1)
        S_TEST(buf.size == 1 && *err && (any || !want) &&
               (!why || streq(err, why)));
    else if (!any)
        S_TEST(want && buf.size == 1 + strlen(want) &&
               !memcmp(buf.data + 1, want, buf.size - 1));
    else {
        cJSON *got = cJSON_ParseWithLength(buf.data + 1, buf.size - 1);
        char *text = llmq_value_to_json_text(copy, size, NULL, 0);
        cJSON *tree = text ? cJSON_Parse(text) : NULL;
        //  The tree printer refuses a NUL (C strings); numbers past 2^53
        //  it prints as doubles, which cJSON reads back alike; duplicate
        //  keys cJSON_Compare does not take, but the texts are the same.
        S_TEST(text ? got && tree &&
                          (cJSON_Compare(got, tree, true) ||
                           streq(buf.data + 1, text))
                    : strstr(buf.data, "\\u0000") != NULL);
        cJSON_Delete(got);
        cJSON_Delete(tree);
        free(text);
    }
    free(buf.data);
    free(copy);
}

/*  llmq_value_buf_json's fixed texts: bodies of every shape (plain
    strings of every length around 8, escapes, UTF-8), each of their
    strict prefixes refused, and each with one byte changed (no read past
    the value; what it accepts reads as the tree printer's). */
static void s_test_buf_fixed(void)
{
    static const char *const cases[][2] = {
        {("{\"id\":\"chatcmpl-sim000000000001\",\"object\":\"chat.completion\","
          "\"created\":1796216543,\"model\":\"sim-model\",\"choices\":[{"
          "\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"sim "
          "tango kilo india\",\"refusal\":null},\"logprobs\":null,"
          "\"finish_reason\":\"length\"}],\"usage\":{\"prompt_tokens\":34,"
          "\"total_tokens\":50}}"),
         NULL},
        {("{\"s\":\"tab\\t nl\\n q\\\" bs\\\\ \\u0001 \\u00e9 \\u2028 "
          "\\ud83d\\ude00\",\"f\":0.1,\"g\":-2.5e-300,\"n\":-"
          "9223372036854775807,\"e\":\"\"}"),
         ("{\"s\":\"tab\\t nl\\n q\\\" bs\\\\ \\u0001 \xc3\xa9 \xe2\x80\xa8 "
          "\xf0\x9f\x98\x80\",\"f\":0.1,\"g\":-2.5e-300,\"n\":-"
          "9223372036854775808,\"e\":\"\"}")},
        {("[\"a\",\"ab\",\"abcdefg\",\"abcdefgh\",\"abcdefghi\","
          "\"abcdefghijklmnopq\",\"\\u00e9t\\u00e9\",true,false,null,[],{},"
          "[[[1]]]]"),
         ("[\"a\",\"ab\",\"abcdefg\",\"abcdefgh\",\"abcdefghi\","
          "\"abcdefghijklmnopq\",\"\xc3\xa9t\xc3\xa9\",true,false,null,[],{},"
          "[[[1]]]]")},
        {"\"plain\"", NULL},
        {"\"\"", NULL},
        {"7", NULL},
        {"{}", NULL}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *text = cases[i][0];
        const char *want = cases[i][1] ? cases[i][1] : text;
        zframe_t *frame =
            llmq_value_from_json_text(text, strlen(text), NULL, 0);
        S_TEST(frame);
        uint8_t *mp = zframe_data(frame);
        size_t size = zframe_size(frame);
        s_test_buf_case(mp, size, false, want, NULL);
        for (size_t n = 0; n < size; n++)
            s_test_buf_case(mp, n, false, NULL, NULL);
        for (size_t k = 0; k < size; k++) {
            static const uint8_t flips[] = {0x01, 0x20, 0x80, 0xff};
            for (size_t f = 0; f < sizeof flips; f++) {
                mp[k] ^= flips[f];
                s_test_buf_case(mp, size, true, NULL, NULL);
                mp[k] ^= flips[f];
            }
        }
        zframe_destroy(&frame);
    }
    //  A float32, an ext, an integer key, a string with a control byte at
    //  the end, a string of bad UTF-8, too deep, a long plain string.
    static const uint8_t f32[] = {0xca, 0x3e, 0x20, 0x00, 0x00};
    static const uint8_t ext[] = {0xd4, 0x01, 0x00};
    static const uint8_t intkey[] = {0x81, 0x01, 0x02};
    static const uint8_t ctrl[] = {0xaa, 'a', 'b', 'c', 'd', 'e',
                                   'f',  'g', 'h', 'i', 0x1f};
    static const uint8_t bad[] = {0xa9, 'a', 'b', 'c',  'd',
                                  'e',  'f', 'g', 0xc3, 0x28};
    s_test_buf_case(f32, sizeof f32, false, "0.15625", NULL);
    s_test_buf_case(ext, sizeof ext, false, NULL, "ext type not allowed");
    s_test_buf_case(intkey, sizeof intkey, false, NULL,
                    "map key is not a string");
    s_test_buf_case(ctrl, sizeof ctrl, false, "\"abcdefghi\\u001f\"", NULL);
    s_test_buf_case(bad, sizeof bad, false, NULL, "invalid UTF-8");
    uint8_t deep[100];
    memset(deep, 0x91, sizeof deep);
    deep[sizeof deep - 1] = 0xc0;
    s_test_buf_case(deep, sizeof deep, false, NULL, "nesting too deep");
    size_t big = 70000;
    uint8_t *large = (uint8_t *)malloc(big + 5);
    char *want = (char *)malloc(big + 3);
    S_TEST(large && want);
    memcpy(large,
           (const uint8_t[]){0xdb, 0, (uint8_t)(big >> 16), (uint8_t)(big >> 8),
                             (uint8_t)big},
           5);
    memset(large + 5, 'z', big);
    want[0] = want[big + 1] = '"';
    memset(want + 1, 'z', big);
    want[big + 2] = 0;
    s_test_buf_case(large, big + 5, false, want, NULL);
    free(want);
    free(large);
}

/*  llmq_value_json_members_nested (and llmq_value_json_members, its
    outer walk alone) on lines of `llmq run`: the spans of the line's keys
    and of its body's, or the refusal. */
static void s_test_members_fixed(void)
{
    static const struct {
        const char *text;
        int rc;
        const char *outer[4]; /* custom_id, url, body, method */
        const char *inner[2]; /* the body's model, max_tokens */
    } cases[] = {
        {("{\"custom_id\":\"a\\u00e9\",\"method\":\"POST\",\"url\":\"/v1/"
          "embeddings/\",\"body\":{\"input\":\"x\",\"model\":\"m1\",\"n\":[1,"
          "2.5,-3e2,{\"k\":null}]}}\n"),
         0,
         {"\"a\\u00e9\"", "\"/v1/embeddings/\"",
          "{\"input\":\"x\",\"model\":\"m1\",\"n\":[1,2.5,-3e2,{\"k\":null}]}",
          "\"POST\""},
         {"\"m1\"", NULL}},
        {("{\"body\":{\"messages\":[{\"role\":\"user\",\"content\":\"q\\n\"}]},"
          "\"custom_id\":null}\r\n"),
         0,
         {"null", NULL,
          "{\"messages\":[{\"role\":\"user\",\"content\":\"q\\n\"}]}", NULL},
         {NULL, NULL}},
        {"{\"CUSTOM_ID\":\"up\",\"Body\":{\"model\":null,\"x\":true}}",
         0,
         {"\"up\"", NULL, "{\"model\":null,\"x\":true}", NULL},
         {"null", NULL}},
        {("{\"url\":\"/v1/images\",\"method\":\"GET\",\"custom_id\":\"\","
          "\"body\":{\"model\":7}}"),
         0,
         {"\"\"", "\"/v1/images\"", "{\"model\":7}", "\"GET\""},
         {"7", NULL}},
        {(" { \"BODY\" : { \"Model\" : \"m\" , \"model\":\"n\", "
          "\"max_tokens\":[{}]} , \"body\":{\"model\":\"x\"}} "),
         0,
         {NULL, NULL,
          "{ \"Model\" : \"m\" , \"model\":\"n\", "
          "\"max_tokens\":[{}]}",
          NULL},
         {"\"m\"", "[{}]"}},
        {"{\"body\":7,\"url\":\"u\"}", 0, {NULL, "\"u\"", "7", NULL}, {0}},
        {"{\"body\":{}}", 0, {NULL, NULL, "{}", NULL}, {0}},
        {"{}", 0, {0}, {0}},
        {"{\"body\":{}", -1, {0}, {0}},
        {"{\"body\":{\"model\":}}", -1, {0}, {0}},
        {"{\"body\":{\"model\":\"m\"},}", -1, {0}, {0}},
        {"plain text", -1, {0}, {0}},
        {"[]", -1, {0}, {0}},
        {"{} x", -1, {0}, {0}}};
    static const char *const keys[] = {"custom_id", "url", "body", "method",
                                       NULL};
    static const char *const inner[] = {"model", "max_tokens", NULL};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *text = cases[i].text;
        size_t len = strlen(text);
        llmq_value_span_t got[4], got_in[2], alone[4];
        S_TEST(llmq_value_json_members_nested(text, len, keys, got, 2, inner,
                                              got_in) == cases[i].rc);
        S_TEST(llmq_value_json_members(text, len, keys, alone) == cases[i].rc);
        for (int k = 0; cases[i].rc == 0 && k < 6; k++) {
            const char *want =
                k < 4 ? cases[i].outer[k] : cases[i].inner[k - 4];
            llmq_value_span_t span = k < 4 ? got[k] : got_in[k - 4];
            S_TEST(!want == !span.data);
            S_TEST(!want || (span.size == strlen(want) && span.data > text &&
                             span.data < text + len &&
                             !memcmp(span.data, want, span.size)));
            S_TEST(k >= 4 ||
                   (alone[k].data == span.data && alone[k].size == span.size));
        }
    }
    //  Too deep inside the body: refused as the outer walk refuses it.
    char deep[200] = "{\"body\":{\"a\":";
    for (int i = 0; i < 70; i++)
        strcat(deep, "[");
    for (int i = 0; i < 70; i++)
        strcat(deep, "]");
    strcat(deep, "}}");
    llmq_value_span_t got[4], got_in[2];
    S_TEST(llmq_value_json_members_nested(deep, strlen(deep), keys, got, 2,
                                          inner, got_in) == -1);
    S_TEST(llmq_value_json_members(deep, strlen(deep), keys, got) == -1);
}

/*  llmq_packer_json_object_set appends after bytes already there, keeps
    the packer as it was on a refusal, and gives llmq_value_from_json_object
    its bytes. */
static void s_test_object_set(void)
{
    const char *body = "{\"input\":\"x\",\"model\":\"m1\",\"n\":[1,2.5,-3e2,"
                       "{\"k\":null}],\"Model\":3}";
    const char *want_text = "{\"input\":\"x\",\"n\":[1,2.5,-300,{\"k\":null}],"
                            "\"Model\":3,\"model\":\"mm\"}";
    const char *drop[] = {"model", NULL};
    zframe_t *want =
        llmq_value_from_json_text(want_text, strlen(want_text), NULL, 0);
    llmq_packer_t *packer = llmq_packer_new();
    S_TEST(want && packer);
    llmq_packer_nil(packer);
    char err[96] = "";
    const char *bad[] = {"{\"a\":", "[1]", "{} x", "", NULL};
    for (int i = 0; bad[i]; i++) {
        *err = 0;
        S_TEST(llmq_packer_json_object_set(packer, bad[i], strlen(bad[i]), drop,
                                           "model", "mm", err,
                                           sizeof err) == -1);
        S_TEST(*err);
        S_TEST(!llmq_value_from_json_object(bad[i], strlen(bad[i]), drop,
                                            "model", "mm", NULL, 0));
    }
    S_TEST(llmq_packer_json_object_set(packer, body, strlen(body), drop,
                                       "model", "mm", NULL, 0) == 0);
    size_t size = 0;
    const uint8_t *data = llmq_packer_data(packer, &size);
    S_TEST(size == zframe_size(want) + 1 && data[0] == 0xc0 &&
           !memcmp(data + 1, zframe_data(want), size - 1));
    zframe_t *frame = llmq_value_from_json_object(body, strlen(body), drop,
                                                  "model", "mm", NULL, 0);
    S_TEST(frame && zframe_eq(frame, want));
    zframe_destroy(&frame);
    zframe_destroy(&want);
    llmq_packer_destroy(&packer);
}

/*  llmq_packer_json_object_find: the bytes of llmq_packer_json_text and
    the members llmq_value_find_many finds in them, after bytes already in
    the packer, for small (fixmap) and 16+ member (map16) objects. */
static void s_test_object_find(void)
{
    char big[600] = "{";
    for (int i = 0; i < 20; i++)
        snprintf(big + strlen(big), sizeof big - strlen(big), "\"k%d\":%d,", i,
                 i);
    strcat(big, "\"usage\":{\"a\":[1,2]},\"choices\":[{\"x\":\"\\u00e9\"}]}");
    const char *texts[] = {" {\"choices\":[1],\"usage\":{\"p\":2},"
                           "\"usage\":3} ",
                           "{\"id\":\"a\"}", "{}", big, NULL};
    const char *keys[2] = {"choices", "usage"};
    for (int t = 0; texts[t]; t++) {
        llmq_packer_t *a = llmq_packer_new(), *b = llmq_packer_new();
        llmq_packer_str(a, "prefix");
        llmq_packer_str(b, "prefix");
        size_t mark = 0, n_a = 0, n_b = 0;
        llmq_packer_data(a, &mark);
        llmq_value_ref_t got[2], want[2];
        size_t len = strlen(texts[t]);
        S_TEST(llmq_packer_json_object_find(a, texts[t], len, keys, 2, got,
                                            NULL, 0) == 0);
        S_TEST(llmq_packer_json_text(b, texts[t], len, NULL, 0) == 0);
        const uint8_t *da = llmq_packer_data(a, &n_a);
        const uint8_t *db = llmq_packer_data(b, &n_b);
        S_TEST(n_a == n_b && !memcmp(da, db, n_a));
        S_TEST(llmq_value_find_many(db + mark, n_b - mark, keys, 2, want) == 0);
        for (int k = 0; k < 2; k++) {
            S_TEST(got[k].kind == want[k].kind && got[k].size == want[k].size);
            S_TEST(!want[k].kind || got[k].data - da == want[k].data - db);
        }
        llmq_packer_destroy(&a);
        llmq_packer_destroy(&b);
    }
    const char *bad[] = {"[1]", "{\"a\":1", "{} x", "", "{\"a\" 1}", NULL};
    llmq_packer_t *p = llmq_packer_new();
    for (int t = 0; bad[t]; t++) {
        llmq_value_ref_t got[2];
        char why[64] = "";
        size_t n = 1;
        S_TEST(llmq_packer_json_object_find(p, bad[t], strlen(bad[t]), keys, 2,
                                            got, why, sizeof why) == -1);
        S_TEST(*why && !got[0].kind && !got[1].kind);
        llmq_packer_data(p, &n);
        S_TEST(n == 0);
    }
    llmq_packer_destroy(&p);
}

/*  llmq_packer_strn writes msgpack-c's bytes at every header width; the
    integer fast path of the JSON text reader gives strtoll's values. */
static void s_test_strn_int(void)
{
    size_t lens[] = {0, 1, 31, 32, 255, 256, 65535, 65536};
    char *text = (char *)malloc(65536);
    memset(text, 'x', 65536);
    for (size_t i = 0; i < sizeof lens / sizeof lens[0]; i++) {
        llmq_packer_t *a = llmq_packer_new();
        msgpack_sbuffer sb;
        msgpack_sbuffer_init(&sb);
        msgpack_packer pk;
        msgpack_packer_init(&pk, &sb, msgpack_sbuffer_write);
        for (int k = 0; k < 3; k++) { /* also past the first growth */
            llmq_packer_strn(a, text, lens[i]);
            msgpack_pack_str(&pk, lens[i]);
            msgpack_pack_str_body(&pk, text, lens[i]);
        }
        size_t n = 0;
        const uint8_t *d = llmq_packer_data(a, &n);
        S_TEST(n == sb.size && !memcmp(d, sb.data, n));
        msgpack_sbuffer_destroy(&sb);
        llmq_packer_destroy(&a);
    }
    free(text);
    const char *ints[] = {"0",
                          "-0",
                          "7",
                          "-12",
                          "123456789012345678",
                          "-999999999999999999",
                          "1234567890123456789",
                          "-9223372036854775808",
                          " 42 ",
                          NULL};
    const int64_t want[] = {0,
                            0,
                            7,
                            -12,
                            123456789012345678LL,
                            -999999999999999999LL,
                            1234567890123456789LL,
                            INT64_MIN,
                            42};
    for (int i = 0; ints[i]; i++) {
        llmq_packer_t *a = llmq_packer_new(), *b = llmq_packer_new();
        S_TEST(llmq_packer_json_text(a, ints[i], strlen(ints[i]), NULL, 0) ==
               0);
        llmq_packer_int(b, want[i]);
        size_t na = 0, nb = 0;
        const uint8_t *da = llmq_packer_data(a, &na);
        const uint8_t *db = llmq_packer_data(b, &nb);
        S_TEST(na == nb && !memcmp(da, db, na));
        llmq_packer_destroy(&a);
        llmq_packer_destroy(&b);
    }
    const char *bad[] = {"1-2", "12+", "-", "--1", "1e", NULL};
    for (int i = 0; bad[i]; i++) {
        llmq_packer_t *a = llmq_packer_new();
        S_TEST(llmq_packer_json_text(a, bad[i], strlen(bad[i]), NULL, 0) == -1);
        llmq_packer_destroy(&a);
    }
}

/*  Strings: each special byte or UTF-8 sequence at every position of an
    8-byte word, as the tree printer prints them; bad UTF-8 anywhere fails. */
static void s_test_buf_strings(void)
{
    const char *specials[] = {"\"",       "\\",           "\n",
                              "\x01",     "\x1f",         "\x7f",
                              "\xc3\xa9", "\xe2\x82\xac", "\xf0\x9f\x98\x80",
                              NULL};
    const char *bad[] = {"\xff",     "\xc3",         "\xe2\x82",
                         "\xc0\x80", "\xed\xa0\x80", NULL};
    for (int k = 0; k < 9 + 5; k++)
        for (size_t pos = 0; pos < 20; pos++) {
            bool is_bad = k >= 9;
            const char *insert = is_bad ? bad[k - 9] : specials[k];
            char text[40];
            memset(text, 'a', 24);
            size_t n = strlen(insert);
            memcpy(text + pos, insert, n);
            uint8_t mp[64] = {0xd9, 24};
            memcpy(mp + 2, text, 24);
            llmq_value_buf_t buf = {0};
            int rc = llmq_value_buf_json(&buf, mp, 26, NULL, 0);
            char *tree = llmq_value_to_json_text(mp, 26, NULL, 0);
            S_TEST(is_bad ? rc == -1 && !tree
                          : rc == 0 && tree && streq(buf.data, tree));
            free(tree);
            free(buf.data);
        }
}

/*  The direct writer prints what the tree printer prints, byte for byte,
    and fails where it fails. */
static void s_test_buf_json(void)
{
    const char *texts[] = {
        "{\"id\":\"chatcmpl-1\",\"n\":-42,\"big\":900719925474099,"
        "\"neg\":-900719925474099,\"f\":0.25,\"t\":true,\"z\":null,"
        "\"s\":\"tab\\t nl\\n cr\\r ff\\f bs\\b q\\\" bs\\\\ \\u0001 \\u00e9 "
        "\\u2028\","
        "\"a\":[[],{},[1,2.5e+30,\"x\"]],\"e\":\"\"}",
        "[]",
        "0",
        "\"\"",
        "1e-07",
        "{\"k\":{\"k\":{\"k\":[false]}}}",
        NULL};
    char err[128];
    for (int i = 0; texts[i]; i++) {
        zframe_t *frame = llmq_value_from_json_text(texts[i], strlen(texts[i]),
                                                    err, sizeof err);
        S_TEST(frame);
        char *tree = llmq_value_to_json_text(zframe_data(frame),
                                             zframe_size(frame), NULL, 0);
        llmq_value_buf_t buf = {0};
        llmq_value_buf_add(&buf, "<", 1);
        S_TEST(llmq_value_buf_json(&buf, zframe_data(frame), zframe_size(frame),
                                   err, sizeof err) == 0);
        S_TEST(tree && buf.data && buf.data[0] == '<' &&
               streq(buf.data + 1, tree));
        if (tree && buf.data && !streq(buf.data + 1, tree))
            fprintf(stderr, "tree: %s\nbuf:  %s\n", tree, buf.data + 1);
        /* every strict prefix fails and leaves the buffer as it was */
        for (size_t n = 0; n < zframe_size(frame); n++) {
            S_TEST(llmq_value_buf_json(&buf, zframe_data(frame), n, err,
                                       sizeof err) == -1);
            S_TEST(buf.size == 1 + strlen(tree) &&
                   strlen(buf.data) == buf.size);
        }
        free(buf.data);
        free(tree);
        zframe_destroy(&frame);
    }
    /* a NUL prints escaped; a float exactly; ext, bad UTF-8 and an integer
       key fail */
    llmq_value_buf_t buf = {0};
    const uint8_t nul[] = {0xa3, 'a', 0, 'b'};
    S_TEST(llmq_value_buf_json(&buf, nul, sizeof nul, NULL, 0) == 0);
    S_TEST(buf.data && streq(buf.data, "\"a\\u0000b\""));
    const uint8_t f[] = {0xcb, 0x3f, 0xd3, 0x33, 0x33, 0x33, 0x33, 0x33, 0x34};
    buf.size = 0;
    S_TEST(llmq_value_buf_json(&buf, f, sizeof f, NULL, 0) == 0);
    S_TEST(buf.data && streq(buf.data, "0.30000000000000004"));
    llmq_packer_t *pk = llmq_packer_new();
    llmq_packer_array(pk, 2);
    llmq_packer_int(pk, INT64_MIN);
    llmq_packer_raw(
        pk,
        (const uint8_t[]){0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff},
        9);
    size_t size;
    const uint8_t *ints = llmq_packer_data(pk, &size);
    buf.size = 0;
    S_TEST(llmq_value_buf_json(&buf, ints, size, NULL, 0) == 0);
    S_TEST(buf.data && streq(buf.data, "[-9223372036854775808,"
                                       "18446744073709551615]"));
    llmq_packer_destroy(&pk);
    buf.size = 19;
    const uint8_t ext[] = {0xd4, 0x01, 0x00};
    const uint8_t badutf[] = {0xa2, 0xc3, 0x28};
    const uint8_t intkey[] = {0x81, 0x01, 0x02};
    S_TEST(llmq_value_buf_json(&buf, ext, sizeof ext, err, sizeof err) == -1);
    S_TEST(llmq_value_buf_json(&buf, badutf, 3, err, sizeof err) == -1);
    S_TEST(strstr(err, "UTF-8"));
    S_TEST(llmq_value_buf_json(&buf, intkey, 3, err, sizeof err) == -1);
    uint8_t deep[200];
    memset(deep, 0x91, sizeof deep);
    deep[sizeof deep - 1] = 0xc0;
    S_TEST(llmq_value_buf_json(&buf, deep, sizeof deep, err, sizeof err) == -1);
    S_TEST(strstr(err, "nesting too deep"));
    S_TEST(buf.size == 19);
    free(buf.data);
}

/*  llmq_value_buf_json_except_find writes what llmq_value_buf_json_except
    writes and finds what llmq_value_find_many finds, on every prefix. */
static void s_test_buf_json_except_find(void)
{
    const char *text = "{\"model\":\"m\",\"messages\":[{\"role\":\"user\","
                       "\"content\":\"hi\"}],\"stream\":true,\"max_tokens\":7,"
                       "\"model\":\"again\",\"n\":1}";
    zframe_t *frame = llmq_value_from_json_text(text, strlen(text), NULL, 0);
    S_TEST(frame);
    const uint8_t *data = zframe_data(frame);
    const char *const skip[] = {"stream", "model"};
    const char *const keys[] = {"messages", "max_tokens", "model", "none"};
    for (size_t n = 0; n <= zframe_size(frame); n++) {
        llmq_value_buf_t a = {0}, b = {0};
        char ea[128] = "", eb[128] = "";
        int ra =
            llmq_value_buf_json_except(&a, data, n, skip, 2, ea, sizeof ea);
        llmq_value_ref_t want[4], got[4];
        int rb = llmq_value_buf_json_except_find(&b, data, n, skip, 2, keys, 4,
                                                 got, eb, sizeof eb);
        S_TEST(ra == rb && a.size == b.size && streq(ea, eb));
        S_TEST(!a.size || memcmp(a.data, b.data, a.size) == 0);
        if (n == zframe_size(frame)) {
            S_TEST(rb == 3 && b.data &&
                   streq(b.data, "{\"messages\":[{\"role\":\"user\","
                                 "\"content\":\"hi\"}],\"max_tokens\":7,"
                                 "\"n\":1"));
            S_TEST(llmq_value_find_many(data, n, keys, 4, want) == 0);
            for (int k = 0; k < 4; k++)
                S_TEST(got[k].kind == want[k].kind &&
                       got[k].data == want[k].data &&
                       got[k].size == want[k].size);
            S_TEST(got[2].kind == 's' && got[3].kind == 0);
        }
        free(a.data);
        free(b.data);
    }
    zframe_destroy(&frame);
}

/*  llmq_value_find_numbers finds what llmq_value_find_many finds, on every
    prefix, and reads the numbers. */
static void s_test_find_numbers(void)
{
    const char *text = "{\"a\":{\"x\":[1,2]},\"p\":12,\"f\":-0.5,\"s\":\"7\","
                       "\"p\":13,\"q\":-3,\"big\":18446744073709551615}";
    zframe_t *frame = llmq_value_from_json_text(text, strlen(text), NULL, 0);
    S_TEST(frame);
    const uint8_t *data = zframe_data(frame);
    const char *const keys[] = {"p", "f", "s", "a", "q", "none", "big"};
    for (size_t n = 0; n <= zframe_size(frame); n++) {
        llmq_value_ref_t want[7], got[7];
        double d[7];
        int ra = llmq_value_find_many(data, n, keys, 7, want);
        S_TEST(llmq_value_find_numbers(data, n, keys, 7, got, d) == ra);
        for (int k = 0; k < 7; k++) {
            double w = 0;
            S_TEST(got[k].kind == want[k].kind && got[k].data == want[k].data &&
                   got[k].size == want[k].size);
            if (want[k].kind == 'n')
                S_TEST(llmq_value_number(want[k].data, want[k].size, &w));
            S_TEST(d[k] == w);
        }
        if (n == zframe_size(frame))
            S_TEST(d[0] == 12 && d[1] == -0.5 && d[2] == 0 && d[4] == -3 &&
                   got[3].kind == 'm' && got[5].kind == 0 && d[6] > 1e19);
    }
    zframe_destroy(&frame);
}

int llmq_value_test(bool verbose)
{
    if (verbose)
        printf(" * llmq_value: ");
    s_test_json();
    s_test_json_text();
    s_test_malformed();
    s_test_items();
    s_test_direct();
    s_test_direct_object();
    s_test_buf_fixed();
    s_test_members_fixed();
    s_test_object_set();
    s_test_object_find();
    s_test_strn_int();
    s_test_buf_json();
    s_test_buf_strings();
    s_test_buf_json_except_find();
    s_test_find_numbers();
    if (verbose)
        printf("OK\n");
    return 0;
}
