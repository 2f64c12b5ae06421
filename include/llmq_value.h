/*  llmq_value.h - payload values: msgpack <-> JSON, and a small msgpack
    writer, so that no code outside proto/ sees a msgpack type.

    Payloads on the wire are msgpack (proto/PROTOCOL.md, "Payloads"); the
    providers speak JSON. The worker converts a request payload to JSON for
    HTTP and a provider's JSON answer back to msgpack; the client converts
    its JSONL lines. Conversion is bounded: nesting deeper than
    LLMQ_VALUE_MAX_DEPTH, counts larger than the bytes left, or trailing bytes
    are errors, never crashes or large allocations.

    Mapping: nil<->null, bool<->bool, int/uint<->number (integers stay
    integers when they fit in int64), float<->number, str<->string,
    bin->string (base64 is not applied: bin must be UTF-8 text), array<->array,
    map (string keys only)<->object. ext is rejected.

    Ownership: returned cJSON trees, frames, strings and packers belong to
    the caller.
*/
#ifndef LLMQ_VALUE_H_INCLUDED
#define LLMQ_VALUE_H_INCLUDED

#include <cjson/cJSON.h>
#include <czmq.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define LLMQ_VALUE_MAX_DEPTH 64

/*  Decode one msgpack value (the whole buffer) into a cJSON tree. Returns
    NULL with a reason in errbuf (may be NULL) on malformed input. */
cJSON *llmq_value_to_json(const void *data, size_t size, char *errbuf,
                          size_t errlen);

/*  Same, printed as compact JSON text (caller frees with free()). */
char *llmq_value_to_json_text(const void *data, size_t size, char *errbuf,
                              size_t errlen);

/*  Encode a cJSON tree as msgpack into a new frame. NULL if json is NULL or
    deeper than LLMQ_VALUE_MAX_DEPTH. */
zframe_t *llmq_value_from_json(const cJSON *json);

/*  Parse JSON text (len bytes, need not be NUL-terminated) and encode it as
    msgpack. NULL with a reason in errbuf on a JSON syntax error. */
zframe_t *llmq_value_from_json_text(const char *text, size_t len, char *errbuf,
                                    size_t errlen);

/*  True if data is exactly one well-formed msgpack value within the limits
    above (what llmq_msg uses to check RAW fields and payloads). */
bool llmq_value_is_valid(const void *data, size_t size);

/*  Walk a batch item array: payload of `batch.add` and `job.submit`, an
    array of maps {custom_id: str <= 64 B, body: any}. Calls fn for each item
    with the custom_id (borrowed, NUL-terminated copy) and the body as its
    original msgpack bytes (borrowed, pointing into data). Stops at the first
    malformed item or when fn returns non-zero. Returns the number of items
    visited, or -1 with a reason in errbuf if the array or an item is
    malformed (items before it were visited). */
typedef int(llmq_item_fn)(const char *custom_id, const void *body,
                          size_t body_size, void *arg);
long llmq_value_each_item(const void *data, size_t size, llmq_item_fn *fn,
                          void *arg, char *errbuf, size_t errlen);

/*  A msgpack writer. Build a value with the calls below (arrays and maps
    take their element count first, as msgpack does), then take the bytes as
    a frame. raw() appends an already-encoded msgpack value unchanged. */
typedef struct _llmq_packer_t llmq_packer_t;

llmq_packer_t *llmq_packer_new(void);
void llmq_packer_destroy(llmq_packer_t **self_p);
void llmq_packer_array(llmq_packer_t *self, size_t count);
void llmq_packer_map(llmq_packer_t *self, size_t count);
void llmq_packer_str(llmq_packer_t *self, const char *value);
void llmq_packer_strn(llmq_packer_t *self, const char *value, size_t len);
void llmq_packer_int(llmq_packer_t *self, int64_t value);
void llmq_packer_double(llmq_packer_t *self, double value);
void llmq_packer_bool(llmq_packer_t *self, bool value);
void llmq_packer_nil(llmq_packer_t *self);
void llmq_packer_raw(llmq_packer_t *self, const void *data, size_t size);
void llmq_packer_json(llmq_packer_t *self, const cJSON *json);
/*  The member `key` of the msgpack map in data[0..size): its encoded value
    in *value, *value_size (borrowed from data). Returns its kind: 'm' map,
    'a' array, 's' string, 'n' number, 'b' bool, 'z' nil; 0 if the map has
    no such key (or is malformed after the start); -1 if data is not a
    map. */
int llmq_value_find(const void *data, size_t size, const char *key,
                    const uint8_t **value, size_t *value_size);

/*  Several members in one walk: out[k] for keys[k] (data NULL, kind 0 when
    absent). Returns 0, or -1 if data is not a map. */
typedef struct {
    const uint8_t *data; /* the member's encoded value (borrowed) */
    size_t size;         /* its size */
    int kind;            /* as llmq_value_find returns it */
} llmq_value_ref_t;
int llmq_value_find_many(const void *data, size_t size, const char *const *keys,
                         size_t count, llmq_value_ref_t *out);

/*  llmq_value_find_many that also gives each member found that is a
    number its value in numbers[k] (0 otherwise; numbers may be NULL), read
    on the same walk. Both take at most 16 keys (-1 beyond). */
int llmq_value_find_numbers(const void *data, size_t size,
                            const char *const *keys, size_t count,
                            llmq_value_ref_t *out, double *numbers);

/*  Bytes of the string values (not keys) in the value data[0..size),
    leaving out members whose key is in skip[0..nskip) and strings deeper
    than max_depth (the value itself is depth 0). 0 if malformed. */
int64_t llmq_value_text_size(const void *data, size_t size,
                             const char *const *skip, size_t nskip,
                             int max_depth);

/*  One msgpack number (int, uint or float) as a double; false if data is
    not a number. */
bool llmq_value_number(const void *data, size_t size, double *out);

/*  Bytes written so far (borrowed) and their size. */
const uint8_t *llmq_packer_data(const llmq_packer_t *self, size_t *size);
/*  A new frame holding a copy of the bytes; the packer is reset. */
zframe_t *llmq_packer_frame(llmq_packer_t *self);
/*  Forget what was written. */
void llmq_packer_reset(llmq_packer_t *self);

/*  Direct JSON text -> msgpack (no cJSON tree; the bytes are those of
    llmq_value_from_json_text, except that an integer literal beyond 2^53
    stays exact). Appends one value of text (len bytes, whitespace around
    it allowed) to the packer; on an error the packer is left as it was and
    -1 comes back with a reason in errbuf. */
int llmq_packer_json_text(llmq_packer_t *self, const char *text, size_t len,
                          char *errbuf, size_t errlen);

/*  llmq_packer_json_text for one JSON object that also finds its
    top-level members named keys[0..count) on the way (no second walk):
    out[k] as llmq_value_find_many would give it on the packed bytes (the
    first member of that name; kind 0 = absent), pointing into the packer
    (valid until it is written to again). -1 (packer as it was, a reason
    in errbuf) if text is not one JSON object. */
int llmq_packer_json_object_find(llmq_packer_t *self, const char *text,
                                 size_t len, const char *const *keys,
                                 size_t count, llmq_value_ref_t *out,
                                 char *errbuf, size_t errlen);

/*  A JSON object's text (len bytes) appended to a packer as msgpack,
    without the top-level members named in drop (NULL-terminated, may be
    NULL), and with key: value (a string) added last if key is not NULL.
    A packer reused from call to call keeps its buffer: no allocation per
    call. Returns 0, or -1 (the packer as it was, a reason in errbuf) if
    text is not one JSON object. */
int llmq_packer_json_object_set(llmq_packer_t *self, const char *text,
                                size_t len, const char *const *drop,
                                const char *key, const char *value,
                                char *errbuf, size_t errlen);

/*  llmq_packer_json_object_set's bytes in a new frame; NULL with a reason
    in errbuf if text is not one JSON object. */
zframe_t *llmq_value_from_json_object(const char *text, size_t len,
                                      const char *const *drop, const char *key,
                                      const char *value, char *errbuf,
                                      size_t errlen);

/*  A piece of JSON text (borrowed). */
typedef struct {
    const char *data; /* NULL: absent */
    size_t size;
} llmq_value_span_t;

/*  The raw text of top-level members of a JSON object (len bytes): for
    each name of keys (NULL-terminated), spans gets the value of its first
    member whose key matches ignoring case, as cJSON_GetObjectItem finds
    it, or {NULL, 0}. The whole text is checked: returns 0, or -1 if it is
    not one JSON object. */
int llmq_value_json_members(const char *text, size_t len,
                            const char *const *keys, llmq_value_span_t *spans);
/*  llmq_value_json_members(text, len, keys, spans) and, in the same pass,
    llmq_value_json_members of the value of keys[at] (its first member of
    that name) for inner_keys (NULL-terminated) into inner_spans, when
    that value is an object (else inner_spans are all NULL): a member
    object is not read twice. Returns 0, or -1 as llmq_value_json_members
    (text is not one valid JSON object). */
int llmq_value_json_members_nested(const char *text, size_t len,
                                   const char *const *keys,
                                   llmq_value_span_t *spans, size_t at,
                                   const char *const *inner_keys,
                                   llmq_value_span_t *inner_spans);

/*  A span holding a JSON string, decoded (caller frees), or NULL. */
char *llmq_value_json_string(llmq_value_span_t span);

/*  JSON text without a cJSON tree: a growing buffer, and msgpack written
    straight into it (what `llmq run` does with every result body). */
typedef struct {
    char *data;  /* the text, NUL-terminated once anything was added (owned:
                    free() it); NULL while empty */
    size_t size; /* bytes of text */
    size_t cap;  /* bytes allocated */
    bool oom;    /* an allocation failed: the text is incomplete */
} llmq_value_buf_t;

/*  Append size bytes as they are. */
void llmq_value_buf_add(llmq_value_buf_t *self, const char *data, size_t size);
/*  Append len bytes of UTF-8 text as a quoted, escaped JSON string (the
    escapes cJSON prints: \" \\ \b \f \n \r \t, \u00XX for other control
    bytes; anything else as is). */
void llmq_value_buf_str(llmq_value_buf_t *self, const char *text, size_t len);

/*  Append an integer, in decimal. */
void llmq_value_buf_int(llmq_value_buf_t *self, int64_t value);

/*  Append one msgpack value (the whole buffer) as compact JSON text, the
    text llmq_value_to_json_text() prints for it, but with no tree in
    between; integers print exactly, a non-finite float prints null, a NUL
    in a string prints \u0000. Strings with nothing to escape are copied 8
    bytes at a time. Returns 0, or -1 with a reason in errbuf on malformed
    input or "out of memory" (then the buffer is as it was before the
    call). */
int llmq_value_buf_json(llmq_value_buf_t *self, const void *data, size_t size,
                        char *errbuf, size_t errlen);

int llmq_value_test(bool verbose);

/*  The msgpack map in data[0..size) as JSON text without its closing '}':
    '{' and its members but those whose key is in skip[0..nskip), each
    written as llmq_value_buf_json writes values, so the caller can append
    members of its own and the '}'. Returns the members written, or -1 with
    a reason in errbuf when data is not one well-formed map (the buffer is
    then as it was). */
int llmq_value_buf_json_except(llmq_value_buf_t *buf, const void *data,
                               size_t size, const char *const *skip,
                               size_t nskip, char *errbuf, size_t errlen);

/*  llmq_value_buf_json_except that also finds the map's members named
    keys[0..count) on the same walk: out[k] as llmq_value_find_many gives
    it (the first member of that name, skipped or not; kind 0 = absent),
    pointing into data. At most 16 skip names and 16 keys. Returns what
    llmq_value_buf_json_except returns, with the same text. */
int llmq_value_buf_json_except_find(llmq_value_buf_t *buf, const void *data,
                                    size_t size, const char *const *skip,
                                    size_t nskip, const char *const *keys,
                                    size_t count, llmq_value_ref_t *out,
                                    char *errbuf, size_t errlen);

#ifdef __cplusplus
}
#endif
#endif
