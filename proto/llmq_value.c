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

void llmq_packer_strn(llmq_packer_t *self, const char *value, size_t len)
{
    msgpack_pack_str(&self->pk, len);
    msgpack_pack_str_body(&self->pk, value, len);
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

/*  A number: the bytes cJSON would take as one, packed as it would. */
static int s_jp_number(s_jp_t *jp)
{
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

/*  Members of an object (jp->p after its '{'); with drop (top level
    only), keys listed there are left out. *count_p: members written. */
static int s_jp_members(s_jp_t *jp, int depth, const char *const *drop,
                        size_t *count_p)
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
        size_t mark = jp->out ? jp->out->sbuf.size : 0;
        if (jp->out)
            llmq_packer_strn(jp->out, key, size);
        s_jp_ws(jp);
        if (jp->p >= jp->end || *jp->p++ != ':')
            return s_jp_fail(jp, "':' expected in a JSON object");
        if (s_jp_value(jp, depth + 1))
            return -1;
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

zframe_t *llmq_value_from_json_object(const char *text, size_t len,
                                      const char *const *drop, const char *key,
                                      const char *value, char *errbuf,
                                      size_t errlen)
{
    llmq_packer_t *packer = llmq_packer_new();
    s_jp_t jp = {text, text + len, packer, NULL, NULL, 0};
    int rc = packer && text ? 0 : s_jp_fail(&jp, "out of memory");
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
        llmq_packer_str(packer, key);
        llmq_packer_str(packer, value ? value : "");
        count++;
    }
    zframe_t *frame = NULL;
    if (rc == 0) {
        s_jp_close(&jp, mark, true, count);
        frame = llmq_packer_frame(packer);
    } else
        s_err(errbuf, errlen, jp.err);
    free(jp.scratch);
    llmq_packer_destroy(&packer);
    return frame;
}

int llmq_value_json_members(const char *text, size_t len,
                            const char *const *keys, llmq_value_span_t *spans)
{
    s_jp_t jp = {text, text + len, NULL, NULL, NULL, 0};
    size_t nkeys = 0;
    while (keys && keys[nkeys])
        spans[nkeys++] = (llmq_value_span_t){NULL, 0};
    s_jp_ws(&jp);
    int rc = text && jp.p < jp.end && *jp.p++ == '{' ? 0 : -1;
    s_jp_ws(&jp);
    bool empty = rc == 0 && jp.p < jp.end && *jp.p == '}';
    if (empty)
        jp.p++;
    while (rc == 0 && !empty) {
        const char *key;
        size_t size;
        s_jp_ws(&jp);
        if (jp.p >= jp.end || *jp.p != '"' || s_jp_string(&jp, &key, &size))
            rc = -1;
        size_t hit = nkeys;
        for (size_t i = 0; rc == 0 && i < nkeys && hit == nkeys; i++)
            if (!spans[i].data && strlen(keys[i]) == size &&
                strncasecmp(keys[i], key, size) == 0)
                hit = i;
        s_jp_ws(&jp);
        if (rc == 0 && (jp.p >= jp.end || *jp.p++ != ':'))
            rc = -1;
        s_jp_ws(&jp);
        const char *start = jp.p;
        if (rc == 0 && (rc = s_jp_value(&jp, 1)) == 0 && hit < nkeys)
            spans[hit] = (llmq_value_span_t){start, (size_t)(jp.p - start)};
        s_jp_ws(&jp);
        char c = rc == 0 && jp.p < jp.end ? *jp.p++ : 0;
        if (c == '}')
            break;
        if (c != ',')
            rc = -1;
    }
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

int llmq_value_test(bool verbose)
{
    if (verbose)
        printf(" * llmq_value: ");
    s_test_json();
    s_test_malformed();
    s_test_items();
    s_test_direct();
    s_test_direct_object();
    if (verbose)
        printf("OK\n");
    return 0;
}
