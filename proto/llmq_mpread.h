/*  llmq_mpread.h - a bounded msgpack reader, private to proto/.

    msgpack-c's unpacker allocates for an array or map count before it has
    seen the elements, so a 5-byte header claiming 4 billion items makes it
    allocate gigabytes. This reader never allocates: it walks the bytes in
    place, refuses any count larger than the bytes left (every element takes
    at least one byte), never reads past the end, and reports a short named
    reason for every failure. llmq_msg.c uses it to decode headers and
    llmq_value.c to convert and validate payload values.

    Strings and bins are returned as pointers into the input: callers copy
    what they keep.
*/
#ifndef LLMQ_MPREAD_H_INCLUDED
#define LLMQ_MPREAD_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

typedef enum {
    LLMQ_MP_NIL,
    LLMQ_MP_BOOL,
    LLMQ_MP_UINT,  /* non-negative integer, in .u */
    LLMQ_MP_INT,   /* negative integer, in .i */
    LLMQ_MP_FLOAT, /* float32 or float64, in .d */
    LLMQ_MP_STR,   /* .ptr, .len */
    LLMQ_MP_BIN,   /* .ptr, .len */
    LLMQ_MP_ARRAY, /* .len elements follow */
    LLMQ_MP_MAP,   /* .len key/value pairs follow */
    LLMQ_MP_EXT    /* .ptr, .len, .ext_type */
} llmq_mp_kind_t;

typedef struct {
    const uint8_t *p;   /* next byte to read */
    const uint8_t *end; /* one past the last byte */
    const char *err;    /* reason of the first failure, static string */
} llmq_mp_reader_t;

typedef struct {
    llmq_mp_kind_t kind;
    union {
        bool b;
        uint64_t u;
        int64_t i;
        double d;
    };
    const uint8_t *ptr; /* str/bin/ext bytes, borrowed from the input */
    uint32_t len;       /* bytes (str/bin/ext) or elements (array/map) */
    int8_t ext_type;
} llmq_mp_item_t;

static inline void llmq_mp_init(llmq_mp_reader_t *r, const void *data,
                                size_t size)
{
    r->p = (const uint8_t *)data;
    r->end = r->p + size;
    r->err = NULL;
}

static inline size_t llmq_mp_left(const llmq_mp_reader_t *r)
{
    return (size_t)(r->end - r->p);
}

static inline int llmq_mp_fail(llmq_mp_reader_t *r, const char *reason)
{
    if (!r->err)
        r->err = reason;
    return -1;
}

/*  Read an unsigned big-endian number of n bytes (1, 2, 4 or 8). */
static inline int llmq_mp_be(llmq_mp_reader_t *r, int n, uint64_t *out)
{
    if (llmq_mp_left(r) < (size_t)n)
        return llmq_mp_fail(r, "truncated");
    uint64_t v = 0;
    for (int k = 0; k < n; k++)
        v = (v << 8) | r->p[k];
    r->p += n;
    *out = v;
    return 0;
}

/*  Take len bytes of str/bin/ext body. */
static inline int llmq_mp_body(llmq_mp_reader_t *r, llmq_mp_item_t *it,
                               uint64_t len)
{
    if (len > llmq_mp_left(r))
        return llmq_mp_fail(r, "truncated");
    it->ptr = r->p;
    it->len = (uint32_t)len;
    r->p += len;
    return 0;
}

/*  An array or map header: refuse counts the remaining bytes cannot hold. */
static inline int llmq_mp_count(llmq_mp_reader_t *r, llmq_mp_item_t *it,
                                llmq_mp_kind_t kind, uint64_t n)
{
    uint64_t need = kind == LLMQ_MP_MAP ? n * 2 : n;
    if (need > llmq_mp_left(r))
        return llmq_mp_fail(r, "count exceeds bytes left");
    it->kind = kind;
    it->len = (uint32_t)n;
    return 0;
}

static inline int llmq_mp_sized(llmq_mp_reader_t *r, llmq_mp_item_t *it,
                                llmq_mp_kind_t kind, int width)
{
    uint64_t n;
    if (llmq_mp_be(r, width, &n))
        return -1;
    if (kind == LLMQ_MP_ARRAY || kind == LLMQ_MP_MAP)
        return llmq_mp_count(r, it, kind, n);
    it->kind = kind;
    if (kind == LLMQ_MP_EXT) {
        uint64_t type;
        if (llmq_mp_be(r, 1, &type))
            return -1;
        it->ext_type = (int8_t)(uint8_t)type;
    }
    return llmq_mp_body(r, it, n);
}

static inline int llmq_mp_fixext(llmq_mp_reader_t *r, llmq_mp_item_t *it,
                                 uint64_t len)
{
    uint64_t type;
    if (llmq_mp_be(r, 1, &type))
        return -1;
    it->kind = LLMQ_MP_EXT;
    it->ext_type = (int8_t)(uint8_t)type;
    return llmq_mp_body(r, it, len);
}

static inline int llmq_mp_number(llmq_mp_reader_t *r, llmq_mp_item_t *it,
                                 uint8_t b)
{
    uint64_t v;
    if (b == 0xca || b == 0xcb) {
        if (llmq_mp_be(r, b == 0xca ? 4 : 8, &v))
            return -1;
        it->kind = LLMQ_MP_FLOAT;
        if (b == 0xca) {
            uint32_t w = (uint32_t)v;
            float f;
            memcpy(&f, &w, sizeof f);
            it->d = f;
        } else
            memcpy(&it->d, &v, sizeof it->d);
        return 0;
    }
    int width = 1 << (b & 0x03);
    if (llmq_mp_be(r, width, &v))
        return -1;
    if (b <= 0xcf) {
        it->kind = LLMQ_MP_UINT;
        it->u = v;
        return 0;
    }
    /* sign-extend int8..int64 */
    int shift = 64 - 8 * width;
    int64_t s = (int64_t)(v << shift) >> shift;
    it->kind = s < 0 ? LLMQ_MP_INT : LLMQ_MP_UINT;
    if (s < 0)
        it->i = s;
    else
        it->u = (uint64_t)s;
    return 0;
}

/*  The one-byte forms: fixint, fixmap, fixarray, fixstr, nil, bool. */
static inline int llmq_mp_fixed(llmq_mp_reader_t *r, llmq_mp_item_t *it,
                                uint8_t b)
{
    if (b <= 0x7f) {
        it->kind = LLMQ_MP_UINT;
        it->u = b;
    } else if (b >= 0xe0) {
        it->kind = LLMQ_MP_INT;
        it->i = (int8_t)b;
    } else if (b <= 0x8f)
        return llmq_mp_count(r, it, LLMQ_MP_MAP, b & 0x0f);
    else if (b <= 0x9f)
        return llmq_mp_count(r, it, LLMQ_MP_ARRAY, b & 0x0f);
    else if (b <= 0xbf) {
        it->kind = LLMQ_MP_STR;
        return llmq_mp_body(r, it, b & 0x1f);
    } else if (b == 0xc0)
        it->kind = LLMQ_MP_NIL;
    else if (b == 0xc2 || b == 0xc3) {
        it->kind = LLMQ_MP_BOOL;
        it->b = b == 0xc3;
    } else
        return llmq_mp_fail(r, "reserved byte 0xc1");
    return 0;
}

/*  Read one item. Scalars, str, bin and ext are consumed whole; for arrays
    and maps only the header is consumed (the caller reads the elements).
    Returns 0, or -1 with r->err set. */
static inline int llmq_mp_read(llmq_mp_reader_t *r, llmq_mp_item_t *it)
{
    if (r->err)
        return -1;
    if (r->p >= r->end)
        return llmq_mp_fail(r, "truncated");
    uint8_t b = *r->p++;
    it->ptr = NULL;
    it->len = 0;
    it->u = 0;
    if (b <= 0xc3 || b >= 0xe0)
        return llmq_mp_fixed(r, it, b);
    switch (b) {
    case 0xc4:
    case 0xc5:
    case 0xc6:
        return llmq_mp_sized(r, it, LLMQ_MP_BIN, 1 << (b - 0xc4));
    case 0xc7:
    case 0xc8:
    case 0xc9:
        return llmq_mp_sized(r, it, LLMQ_MP_EXT, 1 << (b - 0xc7));
    case 0xd4:
    case 0xd5:
    case 0xd6:
    case 0xd7:
    case 0xd8:
        return llmq_mp_fixext(r, it, 1u << (b - 0xd4));
    case 0xd9:
    case 0xda:
    case 0xdb:
        return llmq_mp_sized(r, it, LLMQ_MP_STR, 1 << (b - 0xd9));
    case 0xdc:
    case 0xdd:
        return llmq_mp_sized(r, it, LLMQ_MP_ARRAY, b == 0xdc ? 2 : 4);
    case 0xde:
    case 0xdf:
        return llmq_mp_sized(r, it, LLMQ_MP_MAP, b == 0xde ? 2 : 4);
    default: /* 0xca..0xd3: floats, uints, ints */
        return llmq_mp_number(r, it, b);
    }
}

/*  llmq_mp_read with the forms a header is mostly made of inline: a
    fixstr, a positive fixint and a fixmap; anything else, and every
    failure, goes through llmq_mp_read, so both accept and refuse the same
    input. */
static inline int llmq_mp_read_fast(llmq_mp_reader_t *r, llmq_mp_item_t *it)
{
    if (!r->err && r->p < r->end) {
        uint8_t b = *r->p;
        if ((b & 0xe0) == 0xa0 && (size_t)(b & 0x1f) < llmq_mp_left(r)) {
            it->kind = LLMQ_MP_STR;
            it->u = 0;
            it->ptr = r->p + 1;
            it->len = b & 0x1f;
            r->p += 1 + it->len;
            return 0;
        }
        if (b <= 0x7f) {
            it->kind = LLMQ_MP_UINT;
            it->u = b;
            it->ptr = NULL;
            it->len = 0;
            r->p++;
            return 0;
        }
        /*  A map's pairs take at least two bytes each (llmq_mp_count). */
        if ((b & 0xf0) == 0x80 && (size_t)(b & 0x0f) * 2 < llmq_mp_left(r)) {
            it->kind = LLMQ_MP_MAP;
            it->u = 0;
            it->ptr = NULL;
            it->len = b & 0x0f;
            r->p++;
            return 0;
        }
    }
    return llmq_mp_read(r, it);
}

/*  Skip one complete value of any kind, ext included, nested at most
    max_depth levels. */
static inline int llmq_mp_skip(llmq_mp_reader_t *r, int max_depth)
{
    llmq_mp_item_t it;
    if (llmq_mp_read(r, &it))
        return -1;
    if (it.kind != LLMQ_MP_ARRAY && it.kind != LLMQ_MP_MAP)
        return 0;
    if (max_depth <= 0)
        return llmq_mp_fail(r, "nesting too deep");
    uint64_t n = it.kind == LLMQ_MP_MAP ? (uint64_t)it.len * 2 : it.len;
    for (uint64_t k = 0; k < n; k++)
        if (llmq_mp_skip(r, max_depth - 1))
            return -1;
    return 0;
}

/*  True if the bytes are well-formed UTF-8 (no overlongs, no surrogates,
    nothing above U+10FFFF). */
static inline bool llmq_mp_utf8(const uint8_t *s, size_t len)
{
    size_t k = 0;
    while (k < len) {
        uint8_t c = s[k];
        if (c < 0x80) {
            k++;
            continue;
        }
        int n = c >= 0xf0 ? 3 : c >= 0xe0 ? 2 : 1;
        if (c < 0xc2 || c > 0xf4 || len - k <= (size_t)n)
            return false;
        uint32_t cp = c & (0x3f >> n);
        for (int j = 1; j <= n; j++) {
            if ((s[k + j] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[k + j] & 0x3f);
        }
        if ((n == 2 && cp < 0x800) || (n == 3 && cp < 0x10000) ||
            (cp >= 0xd800 && cp <= 0xdfff) || cp > 0x10ffff)
            return false;
        k += n + 1;
    }
    return true;
}

#endif
