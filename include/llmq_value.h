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

/*  A JSON object's text (len bytes) as msgpack in a new frame, without the
    top-level members named in drop (NULL-terminated, may be NULL), and
    with key: value (a string) added last if key is not NULL. NULL with a
    reason in errbuf if text is not one JSON object. */
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

/*  A span holding a JSON string, decoded (caller frees), or NULL. */
char *llmq_value_json_string(llmq_value_span_t span);

int llmq_value_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
