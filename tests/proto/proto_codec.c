/*  proto_codec - extended tests of the wire codec (proto/llmq_msg.c).

    Usage: proto_codec roundtrip|malformed|sockets|echo [-v]

    roundtrip  every message type with every field of llmq_proto.def set,
               encoded and decoded back, field by field; limits at and just
               past each field's maximum.
    malformed  a table of bad headers, each of which must fail with its
               named reason: truncation at every byte of every valid message,
               wrong types per field, oversized values, huge claimed counts,
               nesting bombs, bad v/t, missing required fields, payload rule,
               non-map and oversized headers, ext values, bad RAW values.
    echo       a tiny ROUTER server for tests/proto/interop.py (Python
               pyzmq + msgpack client against the C codec).
    sockets    real ROUTER/DEALER over tcp://127.0.0.1:*, CZMQ and raw libzmq
               sockets, payload forwarding, INVALID for garbage (and the
               next message still arrives whole).

    Headers are crafted with llmq_packer (proto's own writer), so this test
    sees no msgpack type either.
*/
#include "llmq_msg.h"
#include "llmq_value.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*  A string literal and its size (which may include NUL bytes). */
#define BYTES(s) s, sizeof(s) - 1

#include "llmq_check.h"
#define CHECK(cond) LLMQ_CHECK(cond)

static bool s_verbose = false;
static int s_checked = 0; /* cases run, printed at the end */

typedef enum { K_STR, K_INT, K_BOOL, K_DBL, K_RAW, K_STRS } kind_t;

/*  The .def again, for the test's own view of kinds, limits and rules. */
typedef struct {
    kind_t kind;
    size_t max;
} field_info_t;
static const field_info_t s_info[LLMQ_F_COUNT] = {
#define LLMQ_FIELD(name, group, key, kind, max) {K_##kind, max},
#include "llmq_proto.def"
};

typedef enum { P_NONE, P_OPT, P_REQ } payload_t;
#define LLMQ_REQ(field) LLMQ_F_##field,
#define LLMQ_MSG(ID, name, payload, required)                                  \
    static const int s_req_##ID[] = {required - 1};
#include "llmq_proto.def"
typedef struct {
    llmq_msg_type_t type;
    payload_t payload;
    const int *required;
} msg_info_t;
static const msg_info_t s_msgs[] = {
#define LLMQ_MSG(ID, name, payload, required)                                  \
    {LLMQ_MSG_##ID, P_##payload, s_req_##ID},
#include "llmq_proto.def"
};
#define S_MSGS (sizeof s_msgs / sizeof s_msgs[0])

/*  ---- values for every field ------------------------------------------ */

/*  A string of exactly len bytes, mixing 2-byte UTF-8 characters in so the
    limit counts bytes, not characters. */
static char *s_text(size_t len, char fill)
{
    char *s = (char *)malloc(len + 1);
    size_t k = 0;
    while (k + 2 <= len && k < 8) {
        s[k++] = (char)0xc3;
        s[k++] = (char)0xa9; /* e-acute */
    }
    while (k < len)
        s[k++] = fill;
    s[len] = 0;
    return s;
}

/*  Set field f of msg to a value derived from f, of size `size` for the
    sized kinds. Generated setters via the .def, dispatched on the id. */
static void s_set(llmq_msg_t *msg, int f, size_t size)
{
    char *text = s_text(size, (char)('a' + f % 26));
    const char *items[4100];
    char item[40];
    llmq_packer_t *pk = llmq_packer_new();
    int n = 0;
#define LLMQ_ACCESS_STR(name) llmq_msg_set_##name(msg, text);
#define LLMQ_ACCESS_INT(name)                                                  \
    llmq_msg_set_##name(msg, f % 2 ? -1000000007LL * f : INT64_MAX - f);
#define LLMQ_ACCESS_BOOL(name) llmq_msg_set_##name(msg, f % 2 == 0);
#define LLMQ_ACCESS_DBL(name) llmq_msg_set_##name(msg, 0.125 * f);
#define LLMQ_ACCESS_RAW(name)                                                  \
    {                                                                          \
        llmq_packer_map(pk, 1);                                                \
        llmq_packer_str(pk, "pad");                                            \
        llmq_packer_strn(pk, text, size > 8 ? size - 8 : 0);                   \
        size_t raw_size;                                                       \
        const uint8_t *raw = llmq_packer_data(pk, &raw_size);                  \
        llmq_msg_set_##name(msg, raw, raw_size);                               \
    }
#define LLMQ_ACCESS_STRS(name)                                                 \
    {                                                                          \
        snprintf(item, sizeof item, "model-%d", f);                            \
        for (size_t k = 0; k < size && k < 4100; k++)                          \
            items[k] = item;                                                   \
        llmq_msg_set_##name(msg, items, size);                                 \
    }
#define LLMQ_FIELD(name, group, key, kind, max)                                \
    if (f == n++)                                                              \
    LLMQ_ACCESS_##kind(name)
#include "llmq_proto.def"
    llmq_packer_destroy(&pk);
    free(text);
}

/*  streq that allows NULL (CZMQ's does not). */
static bool s_streq(const char *a, const char *b)
{
    return a == b || (a && b && strcmp(a, b) == 0);
}

/*  Compare field f of two messages through the generated getters. */
static bool s_same(const llmq_msg_t *a, const llmq_msg_t *b, int f)
{
    int n = 0;
    size_t sa, sb;
    if (llmq_msg_has(a, (llmq_field_t)f) != llmq_msg_has(b, (llmq_field_t)f))
        return false;
#define LLMQ_SAME_STR(name)                                                    \
    return s_streq(llmq_msg_##name(a), llmq_msg_##name(b));
#define LLMQ_SAME_INT(name) return llmq_msg_##name(a) == llmq_msg_##name(b);
#define LLMQ_SAME_BOOL(name) return llmq_msg_##name(a) == llmq_msg_##name(b);
#define LLMQ_SAME_DBL(name) return llmq_msg_##name(a) == llmq_msg_##name(b);
#define LLMQ_SAME_RAW(name)                                                    \
    {                                                                          \
        const uint8_t *ra = llmq_msg_##name(a, &sa);                           \
        const uint8_t *rb = llmq_msg_##name(b, &sb);                           \
        return sa == sb && (sa == 0 || memcmp(ra, rb, sa) == 0);               \
    }
#define LLMQ_SAME_STRS(name)                                                   \
    {                                                                          \
        if (llmq_msg_##name##_count(a) != llmq_msg_##name##_count(b))          \
            return false;                                                      \
        for (size_t k = 0; k < llmq_msg_##name##_count(a); k++)                \
            if (!s_streq(llmq_msg_##name##_at(a, k),                           \
                         llmq_msg_##name##_at(b, k)))                          \
                return false;                                                  \
        return true;                                                           \
    }
#define LLMQ_FIELD(name, group, key, kind, max)                                \
    if (f == n++)                                                              \
    LLMQ_SAME_##kind(name)
#include "llmq_proto.def"
    return false;
}

/*  A moderate size for a field: big enough to matter, small enough that a
    message with every field set stays under the header limit. */
static size_t s_size(int f)
{
    size_t max = s_info[f].max;
    if (s_info[f].kind == K_STRS)
        return 16;
    return max > 300 ? 300 : max;
}

static llmq_msg_t *s_full(const msg_info_t *mi)
{
    llmq_msg_t *msg = llmq_msg_new(mi->type);
    for (int f = 0; f < LLMQ_F_COUNT; f++)
        s_set(msg, f, s_size(f));
    if (mi->payload != P_NONE)
        llmq_msg_set_payload_mem(msg, "\x92\x01\xa1x", 4);
    return msg;
}

/*  ---- roundtrip --------------------------------------------------------- */

static void s_roundtrip_one(const msg_info_t *mi)
{
    llmq_msg_t *msg = s_full(mi);
    char err[256] = "";
    zframe_t *frame = llmq_msg_encode(msg, err, sizeof err);
    if (!frame)
        fprintf(stderr, "encode %s: %s\n", llmq_msg_type_name(mi->type), err);
    CHECK(frame);
    llmq_msg_t *back = llmq_msg_decode(zframe_data(frame), zframe_size(frame),
                                       mi->payload != P_NONE, err, sizeof err);
    if (!back)
        fprintf(stderr, "decode %s: %s\n", llmq_msg_type_name(mi->type), err);
    CHECK(back && llmq_msg_type(back) == mi->type);
    for (int f = 0; f < LLMQ_F_COUNT; f++) {
        if (!s_same(msg, back, f))
            fprintf(stderr, "%s: field %s differs\n",
                    llmq_msg_type_name(mi->type), llmq_msg_field_name(f));
        CHECK(s_same(msg, back, f));
    }
    /* re-encoding the decoded message gives the same bytes */
    zframe_t *again = llmq_msg_encode(back, NULL, 0);
    CHECK(again && zframe_eq(frame, again));
    /* dup keeps everything too */
    llmq_msg_t *copy = llmq_msg_dup(back);
    for (int f = 0; f < LLMQ_F_COUNT; f++)
        CHECK(s_same(back, copy, f));
    if (s_verbose)
        printf("  %-14s %5zu bytes, %d fields\n", llmq_msg_type_name(mi->type),
               zframe_size(frame), LLMQ_F_COUNT);
    zframe_destroy(&again);
    zframe_destroy(&frame);
    llmq_msg_destroy(&copy);
    llmq_msg_destroy(&back);
    llmq_msg_destroy(&msg);
    s_checked++;
}

/*  Just the required fields: the smallest valid message of each type. */
static void s_roundtrip_minimal(const msg_info_t *mi)
{
    llmq_msg_t *msg = llmq_msg_new(mi->type);
    for (const int *r = mi->required; *r >= 0; r++)
        s_set(msg, *r, 1);
    zframe_t *frame = llmq_msg_encode(msg, NULL, 0);
    CHECK(frame);
    llmq_msg_t *back = llmq_msg_decode(zframe_data(frame), zframe_size(frame),
                                       mi->payload == P_REQ, NULL, 0);
    CHECK(back && llmq_msg_type(back) == mi->type);
    for (int f = 0; f < LLMQ_F_COUNT; f++)
        CHECK(s_same(msg, back, f));
    zframe_destroy(&frame);
    llmq_msg_destroy(&back);
    llmq_msg_destroy(&msg);
    s_checked++;
}

/*  Each sized field at its limit encodes and decodes; one past it does not
    encode. */
static void s_limits(void)
{
    for (int f = 0; f < LLMQ_F_COUNT; f++) {
        kind_t kind = s_info[f].kind;
        if (kind != K_STR && kind != K_STRS && kind != K_RAW)
            continue;
        llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_HB);
        s_set(msg, f, s_info[f].max);
        char err[256];
        zframe_t *frame = llmq_msg_encode(msg, err, sizeof err);
        if (!frame)
            fprintf(stderr, "%s at limit: %s\n", llmq_msg_field_name(f), err);
        CHECK(frame);
        llmq_msg_t *back = llmq_msg_decode(
            zframe_data(frame), zframe_size(frame), false, err, sizeof err);
        CHECK(back && s_same(msg, back, f));
        llmq_msg_destroy(&back);
        zframe_destroy(&frame);
        s_set(msg, f, s_info[f].max + 1);
        CHECK(llmq_msg_encode(msg, err, sizeof err) == NULL);
        CHECK(strstr(err, "too long") || strstr(err, "too many") ||
              strstr(err, "too large"));
        llmq_msg_destroy(&msg);
        s_checked += 2;
    }
}

static void s_test_roundtrip(void)
{
    for (size_t m = 0; m < S_MSGS; m++) {
        s_roundtrip_one(&s_msgs[m]);
        s_roundtrip_minimal(&s_msgs[m]);
    }
    s_limits();
    /* accessors on absent fields give the documented defaults */
    llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_RES);
    size_t size = 99;
    CHECK(llmq_msg_id(msg) == NULL && llmq_msg_priority(msg) == 0);
    CHECK(!llmq_msg_ok(msg) && llmq_msg_usage_cost_usd(msg) == 0.0);
    CHECK(llmq_msg_meta(msg, &size) == NULL && size == 0);
    CHECK(llmq_msg_models_count(msg) == 0 && !llmq_msg_models_at(msg, 0));
    llmq_msg_set_id(msg, "a");
    llmq_msg_set_id(msg, NULL);
    CHECK(!llmq_msg_has(msg, LLMQ_F_id));
    CHECK(llmq_msg_new((llmq_msg_type_t)999) == NULL);
    CHECK(streq(llmq_msg_type_name(LLMQ_MSG_INVALID), "invalid"));
    CHECK(llmq_msg_encode(msg, NULL, 0) == NULL); /* res needs id, ok */
    llmq_msg_destroy(&msg);
    /* every error code round-trips by name */
    for (int e = 1; e < LLMQ_ERR_COUNT; e++)
        CHECK((int)llmq_err_from_name(llmq_err_name((llmq_err_t)e)) == e);
    printf("proto_codec roundtrip: %d cases, %zu message types, %d fields\n",
           s_checked, S_MSGS, LLMQ_F_COUNT);
}

/*  ---- malformed --------------------------------------------------------- */

/*  A valid value of field f's kind. */
static void s_pack_valid(llmq_packer_t *pk, int f)
{
    switch (s_info[f].kind) {
    case K_STR:
        llmq_packer_str(pk, "x");
        break;
    case K_INT:
        llmq_packer_int(pk, 1);
        break;
    case K_BOOL:
        llmq_packer_bool(pk, true);
        break;
    case K_DBL:
        llmq_packer_double(pk, 1.5);
        break;
    case K_RAW:
        llmq_packer_map(pk, 0);
        break;
    case K_STRS:
        llmq_packer_array(pk, 1);
        llmq_packer_str(pk, "m");
        break;
    }
}

/*  A value of the wrong kind for field f. */
static void s_pack_wrong(llmq_packer_t *pk, int f)
{
    switch (s_info[f].kind) {
    case K_STR:
    case K_STRS:
    case K_BOOL:
        llmq_packer_int(pk, 7);
        break;
    case K_INT:
    case K_DBL:
        llmq_packer_str(pk, "7");
        break;
    case K_RAW: /* any value is fine for RAW but ext */
        llmq_packer_raw(pk, "\xd4\x01\x00", 3);
        break;
    }
}

static void s_pack_nil(llmq_packer_t *pk, int f)
{
    (void)f;
    llmq_packer_nil(pk);
}

/*  The key of field f, written as it appears in the header: top-level
    fields as key: value, grouped ones as group: {key: value}. */
typedef void(value_fn)(llmq_packer_t *pk, int f);
static void s_pack_field(llmq_packer_t *pk, int f, value_fn *fn)
{
    const char *group = llmq_msg_field_group((llmq_field_t)f);
    if (group) {
        llmq_packer_str(pk, group);
        llmq_packer_map(pk, 1);
    }
    llmq_packer_str(pk, llmq_msg_field_key((llmq_field_t)f));
    fn(pk, f);
}

/*  Header of type mi: v, t, every required field except `skip`, then
    `extra` entries written by the caller (count them in `extras`). */
static void s_pack_header(llmq_packer_t *pk, const msg_info_t *mi, int skip,
                          size_t extras)
{
    size_t n = 2 + extras;
    for (const int *r = mi->required; *r >= 0; r++)
        n += *r != skip;
    llmq_packer_map(pk, n);
    llmq_packer_str(pk, "v");
    llmq_packer_int(pk, 1);
    llmq_packer_str(pk, "t");
    llmq_packer_str(pk, llmq_msg_type_name(mi->type));
    for (const int *r = mi->required; *r >= 0; r++)
        if (*r != skip)
            s_pack_field(pk, *r, s_pack_valid);
}

/*  Decode the packer's bytes and expect failure with `reason`. */
static void s_expect(llmq_packer_t *pk, bool has_payload, const char *reason,
                     const char *what)
{
    size_t size;
    const uint8_t *data = llmq_packer_data(pk, &size);
    char err[256] = "";
    llmq_msg_t *msg = llmq_msg_decode(data, size, has_payload, err, sizeof err);
    if (msg || !strstr(err, reason)) {
        fprintf(stderr, "case '%s': expected '%s', got %s '%s'\n", what, reason,
                msg ? "a message" : "error", err);
        abort();
    }
    if (s_verbose)
        printf("  %-40s -> %s\n", what, err);
    llmq_packer_reset(pk);
    s_checked++;
}

static void s_expect_ok(llmq_packer_t *pk, bool has_payload, const char *what)
{
    size_t size;
    const uint8_t *data = llmq_packer_data(pk, &size);
    char err[256] = "";
    llmq_msg_t *msg = llmq_msg_decode(data, size, has_payload, err, sizeof err);
    if (!msg) {
        fprintf(stderr, "case '%s': expected success, got '%s'\n", what, err);
        abort();
    }
    llmq_msg_destroy(&msg);
    llmq_packer_reset(pk);
    s_checked++;
}

/*  Truncating any valid header at any byte gives an error, never a crash
    (ASan and valgrind watch the reads). */
static void s_truncations(void)
{
    for (size_t m = 0; m < S_MSGS; m++) {
        llmq_msg_t *msg = s_full(&s_msgs[m]);
        zframe_t *frame = llmq_msg_encode(msg, NULL, 0);
        CHECK(frame);
        size_t size = zframe_size(frame);
        /* a copy of exactly n bytes, so ASan sees any read past the end */
        for (size_t n = 0; n < size; n++) {
            uint8_t *cut = (uint8_t *)malloc(n ? n : 1);
            memcpy(cut, zframe_data(frame), n);
            char err[256] = "";
            llmq_msg_t *bad =
                llmq_msg_decode(n ? cut : NULL, n, true, err, sizeof err);
            CHECK(bad == NULL && err[0]);
            free(cut);
            s_checked++;
        }
        zframe_destroy(&frame);
        llmq_msg_destroy(&msg);
    }
}

static void s_wrong_types(llmq_packer_t *pk)
{
    const msg_info_t *hb = &s_msgs[LLMQ_MSG_HB - 1];
    char what[96];
    for (int f = 0; f < LLMQ_F_COUNT; f++) {
        s_pack_header(pk, hb, -1, 1);
        s_pack_field(pk, f, s_pack_wrong);
        snprintf(what, sizeof what, "wrong type for %s",
                 llmq_msg_field_name(f));
        s_expect(pk, false,
                 s_info[f].kind == K_RAW ? "invalid msgpack value"
                                         : "wrong type",
                 what);
        /* and a nil value is "absent", which is fine */
        s_pack_header(pk, hb, -1, 1);
        s_pack_field(pk, f, s_pack_nil);
        s_expect_ok(pk, false, "nil value");
    }
    /* a group that is not a map */
    s_pack_header(pk, hb, -1, 1);
    llmq_packer_str(pk, "usage");
    llmq_packer_int(pk, 3);
    s_expect(pk, false, "'usage' wrong type (want map)", "group not a map");
}

/*  One past each field's limit, straight on the wire. */
static void s_oversized(llmq_packer_t *pk)
{
    const msg_info_t *hb = &s_msgs[LLMQ_MSG_HB - 1];
    char what[96];
    for (int f = 0; f < LLMQ_F_COUNT; f++) {
        size_t max = s_info[f].max;
        kind_t kind = s_info[f].kind;
        if (kind != K_STR && kind != K_STRS && kind != K_RAW)
            continue;
        s_pack_header(pk, hb, -1, 1);
        const char *group = llmq_msg_field_group((llmq_field_t)f);
        if (group) {
            llmq_packer_str(pk, group);
            llmq_packer_map(pk, 1);
        }
        llmq_packer_str(pk, llmq_msg_field_key((llmq_field_t)f));
        char *text = s_text(max + 1, 'z');
        if (kind == K_STR)
            llmq_packer_str(pk, text);
        else if (kind == K_RAW)
            llmq_packer_str(pk, text);
        else {
            llmq_packer_array(pk, max + 1);
            for (size_t k = 0; k <= max; k++)
                llmq_packer_str(pk, "m");
        }
        free(text);
        snprintf(what, sizeof what, "oversized %s", llmq_msg_field_name(f));
        s_expect(pk, false,
                 kind == K_STR   ? "too long"
                 : kind == K_RAW ? "too large"
                                 : "too many items",
                 what);
    }
    /* one STRS item over 256 bytes */
    s_pack_header(pk, hb, -1, 1);
    llmq_packer_str(pk, "models");
    llmq_packer_array(pk, 1);
    char *item = s_text(257, 'q');
    llmq_packer_str(pk, item);
    free(item);
    s_expect(pk, false, "'models' bad item 0", "oversized STRS item");
}

/*  Counts and lengths that claim far more than the bytes present. */
static void s_huge_counts(llmq_packer_t *pk)
{
    static const struct {
        const char *what;
        const char *bytes;
        size_t size;
        const char *reason;
    } cases[] = {
        {"map32 of 4G entries", BYTES("\xdf\xff\xff\xff\xff"),
         "count exceeds bytes left"},
        {"map16 of 65535 entries", BYTES("\xde\xff\xff\xa1v\x01"),
         "count exceeds bytes left"},
        {"fixmap of 15, 3 present", BYTES("\x8f\xa1v\x01"),
         "count exceeds bytes left"},
        {"array32 as a header", BYTES("\xdd\xff\xff\xff\xff"),
         "count exceeds bytes left"},
        {"str32 of 4 GB", BYTES("\xdb\xff\xff\xff\xff"), "truncated"},
        {"bin32 of 4 GB", BYTES("\xc6\xff\xff\xff\xff"), "truncated"},
        {"ext32 of 4 GB", BYTES("\xc9\xff\xff\xff\xff\x01"), "truncated"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        llmq_packer_raw(pk, cases[k].bytes, cases[k].size);
        s_expect(pk, false, cases[k].reason, cases[k].what);
    }
    const msg_info_t *hb = &s_msgs[LLMQ_MSG_HB - 1];
    /* inside a header: unknown key, group, STRS, meta */
    const char *where[] = {"unknown_key", "usage", "models", "meta"};
    for (size_t k = 0; k < 4; k++) {
        s_pack_header(pk, hb, -1, 1);
        llmq_packer_str(pk, where[k]);
        llmq_packer_raw(
            pk, k % 2 ? "\xdf\xff\xff\xff\xff" : "\xdd\xff\xff\xff\xff", 5);
        llmq_packer_int(pk, 1);
        s_expect(pk, false, "count exceeds bytes left", where[k]);
    }
    /* a str that claims more bytes than the header has */
    s_pack_header(pk, hb, -1, 1);
    llmq_packer_str(pk, "worker");
    llmq_packer_raw(pk,
                    "\xda\xff\xff"
                    "abc",
                    6);
    s_expect(pk, false, "truncated", "str16 past the end");
}

/*  Arrays in arrays, 10,000 deep: a bounded walk says no. */
static void s_nesting(llmq_packer_t *pk)
{
    const msg_info_t *hb = &s_msgs[LLMQ_MSG_HB - 1];
    const char *where[] = {"unknown_key", "meta"};
    for (size_t k = 0; k < 2; k++) {
        s_pack_header(pk, hb, -1, 1);
        llmq_packer_str(pk, where[k]);
        for (int d = 0; d < 10000; d++)
            llmq_packer_array(pk, 1);
        llmq_packer_nil(pk);
        s_expect(pk, false, "nesting too deep", where[k]);
    }
    /* maps in maps too, as a group value */
    s_pack_header(pk, hb, -1, 1);
    llmq_packer_str(pk, "usage");
    llmq_packer_map(pk, 1);
    for (int d = 0; d < 100; d++) {
        llmq_packer_str(pk, "x");
        llmq_packer_map(pk, 1);
    }
    llmq_packer_str(pk, "x");
    llmq_packer_nil(pk);
    s_expect(pk, false, "nesting too deep", "nested maps in a group");
    /* 60 levels in meta are fine */
    s_pack_header(pk, hb, -1, 1);
    llmq_packer_str(pk, "meta");
    for (int d = 0; d < 60; d++)
        llmq_packer_array(pk, 1);
    llmq_packer_nil(pk);
    s_expect_ok(pk, false, "meta 60 deep");
}

static void s_version_type(llmq_packer_t *pk)
{
    static const struct {
        const char *what;
        const char *bytes;
        size_t size;
        const char *reason;
    } cases[] = {
        {"v=2", BYTES("\x82\xa1v\x02\xa1t\xa2hb"), "unsupported version 2"},
        {"v=0", BYTES("\x82\xa1v\x00\xa1t\xa2hb"), "unsupported version 0"},
        {"v=-1", BYTES("\x82\xa1v\xff\xa1t\xa2hb"), "unsupported version -1"},
        {"v huge",
         BYTES("\x82\xa1v\xcf\xff\xff\xff\xff\xff\xff\xff\xff\xa1t\xa2hb"),
         "unsupported version"},
        {"v string",
         BYTES("\x82\xa1v\xa1"
               "1\xa1t\xa2hb"),
         "'v' wrong type"},
        {"v float", BYTES("\x82\xa1v\xcb\x3f\xf0\0\0\0\0\0\0\xa1t\xa2hb"),
         "'v' wrong type"},
        {"no v", BYTES("\x81\xa1t\xa2hb"), "missing 'v'"},
        {"no t", BYTES("\x81\xa1v\x01"), "missing 't'"},
        {"t int", BYTES("\x82\xa1v\x01\xa1t\x05"), "'t' wrong type"},
        {"unknown t", BYTES("\x82\xa1v\x01\xa1t\xa4nope"),
         "unknown type 'nope'"},
        {"t empty", BYTES("\x82\xa1v\x01\xa1t\xa0"), "unknown type ''"},
        {"t case", BYTES("\x82\xa1v\x01\xa1t\xa2HB"), "unknown type 'HB'"},
        {"empty header", BYTES(""), "empty header"},
        {"array header", BYTES("\x92\x01\x02"), "header is not a map"},
        {"int header", BYTES("\x01"), "header is not a map"},
        {"nil header", BYTES("\xc0"), "header is not a map"},
        {"str header", BYTES("\xa2hb"), "header is not a map"},
        {"ext header", BYTES("\xd4\x01\x00"), "header is not a map"},
        {"reserved byte", BYTES("\xc1"), "reserved byte 0xc1"},
        {"int key", BYTES("\x83\xa1v\x01\xa1t\xa2hb\x01\x02"),
         "map key is not a string"},
        {"trailing", BYTES("\x82\xa1v\x01\xa1t\xa2hb\xc0"),
         "trailing bytes after header"},
        {"two headers",
         BYTES("\x82\xa1v\x01\xa1t\xa2hb\x82\xa1v\x01\xa1t\xa2hb"),
         "trailing bytes after header"},
        {"int out of range",
         BYTES("\x83\xa1v\x01\xa1t\xa2hb\xa1n\xcf\xff\0\0\0\0\0\0\0"),
         "'n' out of range"},
        {"NUL in string",
         BYTES("\x83\xa1v\x01\xa1t\xa2hb\xa6worker\xa3"
               "a\0b"),
         "'worker' contains NUL"},
        {"bad UTF-8", BYTES("\x83\xa1v\x01\xa1t\xa2hb\xa6worker\xa2\xc3\x28"),
         "'worker' invalid UTF-8"},
        {"ext as INT", BYTES("\x83\xa1v\x01\xa1t\xa2hb\xa1n\xd4\x01\x00"),
         "'n' wrong type"},
        {"ext as STR", BYTES("\x83\xa1v\x01\xa1t\xa2hb\xa2id\xd5\x01\x00\x00"),
         "'id' wrong type"},
        {"meta ext", BYTES("\x83\xa1v\x01\xa1t\xa2hb\xa4meta\x91\xd4\x01\x00"),
         "'meta' invalid msgpack value"},
        {"meta int key", BYTES("\x83\xa1v\x01\xa1t\xa2hb\xa4meta\x81\x01\x02"),
         "'meta' invalid msgpack value"},
        {"meta bad UTF-8", BYTES("\x83\xa1v\x01\xa1t\xa2hb\xa4meta\xa1\xff"),
         "'meta' invalid msgpack value"},
        {"meta truncated", BYTES("\x83\xa1v\x01\xa1t\xa2hb\xa4meta\x92\x01"),
         "count exceeds bytes left"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        llmq_packer_raw(pk, cases[k].bytes, cases[k].size);
        s_expect(pk, false, cases[k].reason, cases[k].what);
    }
    /* a header over 64 KiB, even if well formed */
    const msg_info_t *hb = &s_msgs[LLMQ_MSG_HB - 1];
    s_pack_header(pk, hb, -1, 1);
    llmq_packer_str(pk, "padding");
    char *pad = s_text(LLMQ_MAX_HEADER_SIZE, 'p');
    llmq_packer_str(pk, pad);
    free(pad);
    s_expect(pk, false, "header too large", "header over 64 KiB");
}

/*  Every required field of every type, left out in turn; the payload rule
    both ways. */
static void s_required_and_payload(llmq_packer_t *pk)
{
    char what[96], reason[96];
    for (size_t m = 0; m < S_MSGS; m++) {
        const msg_info_t *mi = &s_msgs[m];
        bool payload = mi->payload == P_REQ;
        for (const int *r = mi->required; *r >= 0; r++) {
            s_pack_header(pk, mi, *r, 0);
            snprintf(what, sizeof what, "%s without %s",
                     llmq_msg_type_name(mi->type), llmq_msg_field_name(*r));
            snprintf(reason, sizeof reason, "missing required '%s'",
                     llmq_msg_field_key(*r));
            s_expect(pk, payload, reason, what);
            /* nil for a required field is the same as missing */
            s_pack_header(pk, mi, *r, 1);
            llmq_packer_str(pk, llmq_msg_field_key(*r));
            llmq_packer_nil(pk);
            s_expect(pk, payload, reason, what);
        }
        s_pack_header(pk, mi, -1, 0);
        if (mi->payload == P_NONE) {
            snprintf(reason, sizeof reason, "payload not allowed for '%s'",
                     llmq_msg_type_name(mi->type));
            s_expect(pk, true, reason, "payload where none");
        } else if (mi->payload == P_REQ) {
            snprintf(reason, sizeof reason, "payload required for '%s'",
                     llmq_msg_type_name(mi->type));
            s_expect(pk, false, reason, "no payload");
        } else
            s_expect_ok(pk, true, "optional payload");
        /* the minimal valid header passes */
        s_pack_header(pk, mi, -1, 0);
        s_expect_ok(pk, payload, "minimal");
    }
}

/*  Unknown keys of every shape are skipped; duplicate keys: the last wins. */
static void s_tolerated(llmq_packer_t *pk)
{
    const msg_info_t *hb = &s_msgs[LLMQ_MSG_HB - 1];
    s_pack_header(pk, hb, -1, 4);
    llmq_packer_str(pk, "future_key");
    llmq_packer_map(pk, 1);
    llmq_packer_str(pk, "a");
    llmq_packer_raw(pk, "\xd6\x05\x01\x02\x03\x04", 6); /* ext is fine here */
    llmq_packer_str(pk, "usage");
    llmq_packer_map(pk, 2);
    llmq_packer_str(pk, "future_count");
    llmq_packer_array(pk, 2);
    llmq_packer_int(pk, 1);
    llmq_packer_int(pk, 2);
    llmq_packer_str(pk, "prompt_tokens");
    llmq_packer_int(pk, 12);
    llmq_packer_str(pk, "worker");
    llmq_packer_str(pk, "first");
    llmq_packer_str(pk, "worker");
    llmq_packer_str(pk, "second");
    size_t size;
    const uint8_t *data = llmq_packer_data(pk, &size);
    llmq_msg_t *msg = llmq_msg_decode(data, size, false, NULL, 0);
    CHECK(msg && llmq_msg_usage_prompt_tokens(msg) == 12);
    CHECK(streq(llmq_msg_worker(msg), "second"));
    llmq_msg_destroy(&msg);
    llmq_packer_reset(pk);
    /* bin accepted for strings and keys; float accepted for DBL only */
    llmq_packer_raw(pk, BYTES("\x84\xc4\x01v\x01\xa1t\xa2hb\xa2id\xc4\x02ok"
                              "\xa5usage\x81\xa8"
                              "cost_usd\x05"));
    data = llmq_packer_data(pk, &size);
    msg = llmq_msg_decode(data, size, false, NULL, 0);
    CHECK(msg && streq(llmq_msg_id(msg), "ok"));
    CHECK(llmq_msg_usage_cost_usd(msg) == 5.0);
    llmq_msg_destroy(&msg);
    llmq_packer_reset(pk);
    s_checked += 2;
}

static void s_test_malformed(void)
{
    llmq_packer_t *pk = llmq_packer_new();
    s_truncations();
    s_wrong_types(pk);
    s_oversized(pk);
    s_huge_counts(pk);
    s_nesting(pk);
    s_version_type(pk);
    s_required_and_payload(pk);
    s_tolerated(pk);
    llmq_packer_destroy(&pk);
    printf("proto_codec malformed: %d cases, all rejected with their reason\n",
           s_checked);
}

/*  ---- sockets ----------------------------------------------------------- */

static llmq_msg_t *s_recv(void *sock)
{
    llmq_msg_t *msg = llmq_msg_recv(sock);
    CHECK(msg);
    return msg;
}

/*  Every message type, client -> broker and back, with its payload. */
static void s_sockets_all_types(zsock_t *router, zsock_t *dealer)
{
    for (size_t m = 0; m < S_MSGS; m++) {
        llmq_msg_t *msg = s_full(&s_msgs[m]);
        llmq_msg_t *sent = llmq_msg_dup(msg);
        CHECK(llmq_msg_send(&msg, dealer) == 0 && msg == NULL);
        llmq_msg_t *got = s_recv(router);
        CHECK(llmq_msg_type(got) == s_msgs[m].type);
        for (int f = 0; f < LLMQ_F_COUNT; f++)
            CHECK(s_same(sent, got, f));
        CHECK(zframe_streq(llmq_msg_routing_id(got), "client-7"));
        CHECK((llmq_msg_payload(got) != NULL) == (s_msgs[m].payload != P_NONE));
        /* and back to the client, payload moved not copied */
        zframe_t *payload = llmq_msg_take_payload(got);
        llmq_msg_set_payload(got, &payload);
        CHECK(llmq_msg_send(&got, router) == 0);
        got = s_recv(dealer);
        CHECK(llmq_msg_type(got) == s_msgs[m].type);
        CHECK(llmq_msg_routing_id(got) == NULL);
        for (int f = 0; f < LLMQ_F_COUNT; f++)
            CHECK(s_same(sent, got, f));
        llmq_msg_destroy(&got);
        llmq_msg_destroy(&sent);
        s_checked++;
    }
}

/*  A large payload goes from client to "worker" through the broker without
    a copy in between: the frame the broker received is the one it sends. */
static void s_sockets_forward(zsock_t *router, zsock_t *dealer)
{
    size_t big = 1 << 20;
    char *body = (char *)malloc(big);
    memset(body, 'x', big);
    body[0] = (char)0xdb; /* str32 header: the payload is one msgpack str */
    body[1] = 0;
    body[2] = 0x0f;
    body[3] = 0xff;
    body[4] = 0xfb;
    llmq_msg_t *req = llmq_msg_new(LLMQ_MSG_REQ);
    llmq_msg_set_id(req, "big");
    llmq_msg_set_op(req, "chat");
    llmq_msg_set_model(req, "m");
    llmq_msg_set_payload_mem(req, body, big);
    CHECK(llmq_msg_send(&req, dealer) == 0);
    llmq_msg_t *got = s_recv(router);
    CHECK(llmq_msg_type(got) == LLMQ_MSG_REQ);
    zframe_t *payload = llmq_msg_take_payload(got);
    const void *where = zframe_data(payload);
    llmq_msg_t *res = llmq_msg_new(LLMQ_MSG_RES);
    llmq_msg_set_routing_id(res, llmq_msg_routing_id(got));
    llmq_msg_set_id(res, "big");
    llmq_msg_set_ok(res, true);
    llmq_msg_set_payload(res, &payload);
    CHECK(payload == NULL && zframe_data(llmq_msg_payload(res)) == where);
    CHECK(llmq_msg_send(&res, router) == 0);
    llmq_msg_destroy(&got);
    got = s_recv(dealer);
    CHECK(llmq_msg_type(got) == LLMQ_MSG_RES);
    CHECK(zframe_size(llmq_msg_payload(got)) == big);
    CHECK(memcmp(zframe_data(llmq_msg_payload(got)), body, big) == 0);
    CHECK(llmq_value_is_valid(zframe_data(llmq_msg_payload(got)), big));
    llmq_msg_destroy(&got);
    free(body);
    s_checked++;
}

/*  Garbage in any shape comes back as INVALID with the sender's routing id
    and a reason; the next good message is received whole. */
static void s_sockets_garbage(zsock_t *router, zsock_t *dealer)
{
    static const struct {
        const char *picture;
        const char *frames[4];
        const char *reason;
    } cases[] = {
        {"sss", {"\x82\xa1v\x01\xa1t\xa2hb", "x", "y"}, "too many frames (3)"},
        {"ssss", {"a", "b", "c", "d"}, "too many frames (4)"},
        {"s", {"not msgpack"}, "header is not a map"},
        {"s", {""}, "empty header"},
        {"ss", {"\x82\xa1v\x01\xa1t\xa2hb", "payload"}, "payload not allowed"},
        {"s", {"\x83\xa1v\x01\xa1t\xa3req\xa2id\xa4r-42"}, "missing required"},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        const char *const *f = cases[k].frames;
        CHECK(zsock_send(dealer, cases[k].picture, f[0], f[1], f[2], f[3]) ==
              0);
        llmq_msg_t *bad = s_recv(router);
        CHECK(llmq_msg_type(bad) == LLMQ_MSG_INVALID);
        CHECK(strstr(llmq_msg_invalid_reason(bad), cases[k].reason));
        CHECK(zframe_streq(llmq_msg_routing_id(bad), "client-7"));
        if (s_verbose)
            printf("  garbage %zu -> %s\n", k, llmq_msg_invalid_reason(bad));
        if (k == 5) /* the id is salvaged so the reply can name the request */
            CHECK(streq(llmq_msg_id(bad), "r-42"));
        /* reply with bad_message, as the broker does */
        llmq_msg_t *err = llmq_msg_new(LLMQ_MSG_ERROR);
        llmq_msg_set_routing_id(err, llmq_msg_routing_id(bad));
        llmq_msg_set_code(err, llmq_err_name(LLMQ_ERR_BAD_MESSAGE));
        llmq_msg_set_message(err, llmq_msg_invalid_reason(bad));
        llmq_msg_set_id(err, llmq_msg_id(bad));
        CHECK(llmq_msg_send(&err, router) == 0);
        llmq_msg_destroy(&bad);
        llmq_msg_t *reply = s_recv(dealer);
        CHECK(llmq_msg_type(reply) == LLMQ_MSG_ERROR);
        CHECK(streq(llmq_msg_code(reply), "bad_message"));
        llmq_msg_destroy(&reply);
        /* the stream is still in step */
        llmq_msg_t *ping = llmq_msg_new(LLMQ_MSG_PING);
        CHECK(llmq_msg_send(&ping, dealer) == 0);
        ping = s_recv(router);
        CHECK(llmq_msg_type(ping) == LLMQ_MSG_PING);
        llmq_msg_destroy(&ping);
        s_checked++;
    }
    /* messages that cannot be sent */
    llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_PING);
    CHECK(llmq_msg_send(&msg, router) == -1 && msg == NULL); /* no routing id */
    msg = llmq_msg_new(LLMQ_MSG_CANCEL);
    CHECK(llmq_msg_send(&msg, dealer) == -1); /* missing id */
    msg = llmq_msg_new(LLMQ_MSG_PING);
    llmq_msg_set_payload_mem(msg, "\xc0", 1);
    CHECK(llmq_msg_send(&msg, dealer) == -1); /* payload not allowed */
    msg = llmq_msg_new(LLMQ_MSG_CHUNK);
    llmq_msg_set_id(msg, "c");
    llmq_msg_set_seq(msg, 1);
    CHECK(llmq_msg_send(&msg, dealer) == -1); /* payload required */
    CHECK(llmq_msg_send(&msg, dealer) == -1); /* NULL message */
}

/*  The same over raw libzmq sockets (void *), as a caller without CZMQ
    objects would use them. */
static void s_sockets_raw(void)
{
    void *ctx = zmq_ctx_new();
    void *router = zmq_socket(ctx, ZMQ_ROUTER);
    void *dealer = zmq_socket(ctx, ZMQ_DEALER);
    int timeout = 5000, linger = 0;
    zmq_setsockopt(router, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    zmq_setsockopt(dealer, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    zmq_setsockopt(router, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(dealer, ZMQ_LINGER, &linger, sizeof linger);
    zmq_setsockopt(dealer, ZMQ_ROUTING_ID, "raw", 3);
    CHECK(zmq_bind(router, "tcp://127.0.0.1:*") == 0);
    char endpoint[256];
    size_t len = sizeof endpoint;
    zmq_getsockopt(router, ZMQ_LAST_ENDPOINT, endpoint, &len);
    CHECK(zmq_connect(dealer, endpoint) == 0);
    llmq_msg_t *msg = llmq_msg_new(LLMQ_MSG_CREDIT);
    llmq_msg_set_n(msg, 5);
    CHECK(llmq_msg_send(&msg, dealer) == 0);
    msg = s_recv(router);
    CHECK(llmq_msg_type(msg) == LLMQ_MSG_CREDIT && llmq_msg_n(msg) == 5);
    CHECK(zframe_streq(llmq_msg_routing_id(msg), "raw"));
    llmq_msg_destroy(&msg);
    zmq_send(dealer, "\x91", 1, 0);
    msg = s_recv(router);
    CHECK(llmq_msg_type(msg) == LLMQ_MSG_INVALID);
    llmq_msg_destroy(&msg);
    /* a receive that times out returns NULL */
    timeout = 50;
    zmq_setsockopt(dealer, ZMQ_RCVTIMEO, &timeout, sizeof timeout);
    CHECK(llmq_msg_recv(dealer) == NULL);
    zmq_close(dealer);
    zmq_close(router);
    zmq_ctx_term(ctx);
    s_checked += 2;
}

static void s_test_sockets(void)
{
    zsock_t *router = zsock_new(ZMQ_ROUTER);
    int port = zsock_bind(router, "tcp://127.0.0.1:*");
    CHECK(port > 0);
    zsock_t *dealer = zsock_new(ZMQ_DEALER);
    zsock_set_rcvtimeo(router, 5000);
    zsock_set_rcvtimeo(dealer, 5000);
    zsock_set_identity(dealer, "client-7");
    CHECK(zsock_connect(dealer, "tcp://127.0.0.1:%d", port) == 0);
    s_sockets_all_types(router, dealer);
    s_sockets_forward(router, dealer);
    s_sockets_garbage(router, dealer);
    zsock_set_rcvtimeo(dealer, 50);
    CHECK(llmq_msg_recv(dealer) == NULL); /* nothing left over */
    zsock_destroy(&dealer);
    zsock_destroy(&router);
    s_sockets_raw();
    printf("proto_codec sockets: %d cases\n", s_checked);
}

/*  ---- echo server for the Python interop test ------------------------- */

static int s_count_item(const char *custom_id, const void *body,
                        size_t body_size, void *arg)
{
    (void)custom_id;
    (void)body;
    (void)body_size;
    (void)arg;
    return 0;
}

/*  The answer a tiny broker would give; NULL for no answer. */
static llmq_msg_t *s_echo_answer(llmq_msg_t *msg)
{
    llmq_msg_t *out = NULL;
    zframe_t *payload = llmq_msg_payload(msg);
    if (llmq_msg_type(msg) == LLMQ_MSG_INVALID) {
        out = llmq_msg_new(LLMQ_MSG_ERROR);
        llmq_msg_set_code(out, llmq_err_name(LLMQ_ERR_BAD_MESSAGE));
        llmq_msg_set_message(out, llmq_msg_invalid_reason(msg));
        llmq_msg_set_id(out, llmq_msg_id(msg));
    } else if (llmq_msg_type(msg) == LLMQ_MSG_PING) {
        out = llmq_msg_new(LLMQ_MSG_PONG);
        llmq_msg_set_broker(out, "proto-echo");
        llmq_msg_set_version(out, "0.1.0");
        llmq_msg_set_time_ms(out, zclock_time());
    } else if (llmq_msg_type(msg) == LLMQ_MSG_REQ) {
        /* the body goes through JSON and back, as a worker does it */
        char *json = llmq_value_to_json_text(zframe_data(payload),
                                             zframe_size(payload), NULL, 0);
        out = llmq_msg_new(LLMQ_MSG_RES);
        llmq_msg_set_id(out, llmq_msg_id(msg));
        size_t size;
        const uint8_t *meta = llmq_msg_meta(msg, &size);
        llmq_msg_set_meta(out, meta, size);
        if (json) {
            zframe_t *body =
                llmq_value_from_json_text(json, strlen(json), NULL, 0);
            llmq_msg_set_ok(out, true);
            llmq_msg_set_usage_total_tokens(out, (int64_t)strlen(json));
            llmq_msg_set_usage_cost_usd(out, 0.5);
            llmq_msg_set_payload(out, &body);
        } else
            llmq_msg_set_failure(out, LLMQ_ERR_INVALID_REQUEST, 0,
                                 "body is not JSON-compatible");
        free(json);
    } else if (llmq_msg_type(msg) == LLMQ_MSG_BATCH_ADD) {
        out = llmq_msg_new(LLMQ_MSG_BATCH_ACK);
        llmq_msg_set_batch(out, llmq_msg_batch(msg));
        llmq_msg_set_seq(out, llmq_msg_seq(msg));
        llmq_msg_set_accepted(out, llmq_value_each_item(zframe_data(payload),
                                                        zframe_size(payload),
                                                        s_count_item, NULL,
                                                        NULL, 0));
    } else if (llmq_msg_type(msg) == LLMQ_MSG_HELLO) {
        out = llmq_msg_new(LLMQ_MSG_CREDIT); /* abuse: report models count */
        llmq_msg_set_n(out, (int64_t)llmq_msg_models_count(msg));
    }
    if (out)
        llmq_msg_set_routing_id(out, llmq_msg_routing_id(msg));
    return out;
}

/*  Serve until a `bye`: what the interop test talks to. */
static void s_echo(void)
{
    zsock_t *router = zsock_new(ZMQ_ROUTER);
    int port = zsock_bind(router, "tcp://127.0.0.1:*");
    CHECK(port > 0);
    printf("ready proto_codec endpoint=tcp://127.0.0.1:%d\n", port);
    fflush(stdout);
    zsock_set_rcvtimeo(router, 30000); /* the test is gone: stop */
    while (true) {
        llmq_msg_t *msg = llmq_msg_recv(router);
        if (!msg || llmq_msg_type(msg) == LLMQ_MSG_BYE) {
            llmq_msg_destroy(&msg);
            break;
        }
        llmq_msg_t *out = s_echo_answer(msg);
        if (out)
            llmq_msg_send(&out, router);
        llmq_msg_destroy(&msg);
    }
    zsock_destroy(&router);
}

int main(int argc, char **argv)
{
    const char *which = argc > 1 ? argv[1] : "";
    s_verbose = argc > 2 && strcmp(argv[2], "-v") == 0;
    if (streq(which, "roundtrip"))
        s_test_roundtrip();
    else if (streq(which, "malformed"))
        s_test_malformed();
    else if (streq(which, "sockets"))
        s_test_sockets();
    else if (streq(which, "echo"))
        s_echo();
    else {
        fprintf(stderr,
                "usage: proto_codec roundtrip|malformed|sockets|echo [-v]\n");
        return 2;
    }
    zsys_shutdown();
    return 0;
}
