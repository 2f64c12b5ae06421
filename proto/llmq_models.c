/*  llmq_models.c - the table of known models (see llmq_models.h).

    Design: one zhashx from name to an owned llmq_model_info_t, filled from
    the static built-in rows at new() and changed only by learning (config,
    /models, hello), never on a hot path. A lookup is one hash lookup, and
    a second one only when the name ends in a date. The broker's check
    walks the request body in place with the bounded msgpack reader (no
    tree, no allocation), and only for a model the table knows.

    The built-in numbers (LLMQ_MODELS_TAKEN) come from the providers'
    public pricing and model pages as quoted by the pages the search tool
    returned that day: OpenAI "pricing per 1M tokens" (standard tier,
    cached input, Batch API 50% off) and Anthropic's models overview
    (context window, max output) and pricing (cache reads at 0.1x input,
    Message Batches 50% off). Reasoning and thinking tokens are billed as
    output tokens by both, so no row sets a reasoning price. Where a page
    disagreed with another, the row keeps the larger window (a check that
    is too lenient costs a provider round trip; one too strict refuses a
    good request).
*/
#include "llmq_models.h"
#include "llmq_mpread.h"
#include "llmq_value.h"

#include <cjson/cJSON.h>
#include <czmq.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*  Entries at most (built-in ones included): what peers report is
    bounded. */
#define S_MAX_ENTRIES 20000

struct _llmq_models_t {
    zhashx_t *entries; /* name -> llmq_model_info_t (owned) */
};

/*  --- the built-in rows ----------------------------------------------- */

#define C_ LLMQ_MODEL_CHAT
#define E_ LLMQ_MODEL_EMBEDDINGS
#define S_ LLMQ_MODEL_STREAMING
#define T_ LLMQ_MODEL_TOOLS
#define I_ LLMQ_MODEL_IMAGES
#define CHAT_ALL (C_ | S_ | T_ | I_)

typedef struct {
    const char *name;
    int64_t context, max_output;
    unsigned flags;
    double input, cached_input, output, batch_discount;
} s_row_t;

static const s_row_t s_rows[] = {
    /*  OpenAI (platform.openai.com/docs/pricing, model pages). */
    {"gpt-4o", 128000, 16384, CHAT_ALL, 2.50, 1.25, 10.00, 0.5},
    {"gpt-4o-mini", 128000, 16384, CHAT_ALL, 0.15, 0.075, 0.60, 0.5},
    {"gpt-4.1", 1047576, 32768, CHAT_ALL, 2.00, 0.50, 8.00, 0.5},
    {"gpt-4.1-mini", 1047576, 32768, CHAT_ALL, 0.40, 0.10, 1.60, 0.5},
    {"gpt-4.1-nano", 1047576, 32768, CHAT_ALL, 0.10, 0.025, 0.40, 0.5},
    {"gpt-5", 400000, 128000, CHAT_ALL, 1.25, 0.125, 10.00, 0.5},
    {"gpt-5-mini", 400000, 128000, CHAT_ALL, 0.25, 0.025, 2.00, 0.5},
    {"gpt-5-nano", 400000, 128000, CHAT_ALL, 0.05, 0.005, 0.40, 0.5},
    {"o1", 200000, 100000, CHAT_ALL, 15.00, 7.50, 60.00, 0.5},
    {"o1-pro", 200000, 100000, C_ | T_ | I_, 150.00, -1, 600.00, 0.5},
    {"o3", 200000, 100000, CHAT_ALL, 2.00, 0.50, 8.00, 0.5},
    {"o3-pro", 200000, 100000, C_ | T_ | I_, 20.00, -1, 80.00, 0.5},
    {"o3-mini", 200000, 100000, C_ | S_ | T_, 1.10, 0.55, 4.40, 0.5},
    {"o4-mini", 200000, 100000, CHAT_ALL, 1.10, 0.275, 4.40, 0.5},
    {"gpt-4-turbo", 128000, 4096, CHAT_ALL, 10.00, -1, 30.00, 0.5},
    {"gpt-3.5-turbo", 16385, 4096, C_ | S_ | T_, 0.50, -1, 1.50, 0.5},
    {"text-embedding-3-small", 8191, 0, E_, 0.02, -1, 0, 0.5},
    {"text-embedding-3-large", 8191, 0, E_, 0.13, -1, 0, 0.5},
    {"text-embedding-ada-002", 8191, 0, E_, 0.10, -1, 0, 0.5},
    /*  Anthropic (docs.anthropic.com models overview and pricing; aliases
        and dated ids reach these rows through the suffix rule). */
    {"claude-opus-4-7", 1000000, 128000, CHAT_ALL, 5.00, 0.50, 25.00, 0.5},
    {"claude-opus-4-6", 1000000, 128000, CHAT_ALL, 5.00, 0.50, 25.00, 0.5},
    {"claude-sonnet-4-6", 1000000, 64000, CHAT_ALL, 3.00, 0.30, 15.00, 0.5},
    {"claude-opus-4-5", 200000, 64000, CHAT_ALL, 5.00, 0.50, 25.00, 0.5},
    {"claude-sonnet-4-5", 200000, 64000, CHAT_ALL, 3.00, 0.30, 15.00, 0.5},
    {"claude-haiku-4-5", 200000, 64000, CHAT_ALL, 1.00, 0.10, 5.00, 0.5},
    {"claude-opus-4-1", 200000, 32000, CHAT_ALL, 15.00, 1.50, 75.00, 0.5},
    {"claude-opus-4", 200000, 32000, CHAT_ALL, 15.00, 1.50, 75.00, 0.5},
    {"claude-opus-4-0", 200000, 32000, CHAT_ALL, 15.00, 1.50, 75.00, 0.5},
    {"claude-sonnet-4", 200000, 64000, CHAT_ALL, 3.00, 0.30, 15.00, 0.5},
    {"claude-sonnet-4-0", 200000, 64000, CHAT_ALL, 3.00, 0.30, 15.00, 0.5},
    {"claude-3-7-sonnet", 200000, 64000, CHAT_ALL, 3.00, 0.30, 15.00, 0.5},
    {"claude-3-5-sonnet", 200000, 8192, CHAT_ALL, 3.00, 0.30, 15.00, 0.5},
    {"claude-3-5-haiku", 200000, 8192, CHAT_ALL, 0.80, 0.08, 4.00, 0.5},
    {"claude-3-haiku", 200000, 4096, CHAT_ALL, 0.25, 0.03, 1.25, 0.5},
    {"claude-3-opus", 200000, 4096, CHAT_ALL, 15.00, 1.50, 75.00, 0.5},
};

/*  --- the table -------------------------------------------------------- */

static void s_info_free(void **item)
{
    llmq_model_info_t *info = (llmq_model_info_t *)*item;
    if (info) {
        free(info->name);
        free(info);
        *item = NULL;
    }
}

static llmq_model_info_t *s_info_new(const char *name)
{
    llmq_model_info_t *info = (llmq_model_info_t *)calloc(1, sizeof *info);
    if (info && !(info->name = strdup(name))) {
        free(info);
        return NULL;
    }
    if (info) {
        info->input = info->output = -1;
        info->cached_input = info->reasoning = -1;
    }
    return info;
}

llmq_models_t *llmq_models_new(void)
{
    llmq_models_t *self = (llmq_models_t *)calloc(1, sizeof *self);
    if (!self || !(self->entries = zhashx_new())) {
        free(self);
        return NULL;
    }
    zhashx_set_destructor(self->entries, s_info_free);
    for (size_t i = 0; i < sizeof s_rows / sizeof s_rows[0]; i++) {
        const s_row_t *row = &s_rows[i];
        llmq_model_info_t *info = s_info_new(row->name);
        if (!info) {
            llmq_models_destroy(&self);
            return NULL;
        }
        info->context = row->context;
        info->max_output = row->max_output;
        info->flags = row->flags;
        info->flags_known = true;
        info->input = row->input;
        info->cached_input = row->cached_input;
        info->output = row->output;
        info->batch_discount = row->batch_discount;
        zhashx_update(self->entries, row->name, info);
    }
    return self;
}

void llmq_models_destroy(llmq_models_t **self_p)
{
    if (self_p && *self_p) {
        zhashx_destroy(&(*self_p)->entries);
        free(*self_p);
        *self_p = NULL;
    }
}

static bool s_digits(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!isdigit((unsigned char)s[i]))
            return false;
    return true;
}

/*  Length of model without its snapshot suffix (-YYYY-MM-DD, -YYYYMMDD,
    -MMDD, -latest), or 0 if it has none. */
static size_t s_base_len(const char *model)
{
    size_t n = strlen(model);
    const char *end = model + n;
    if (n > 11 && end[-11] == '-' && s_digits(end - 10, 4) && end[-6] == '-' &&
        s_digits(end - 5, 2) && end[-3] == '-' && s_digits(end - 2, 2))
        return n - 11;
    if (n > 9 && end[-9] == '-' && s_digits(end - 8, 8))
        return n - 9;
    if (n > 5 && end[-5] == '-' && s_digits(end - 4, 4))
        return n - 5;
    if (n > 7 && strcmp(end - 7, "-latest") == 0)
        return n - 7;
    return 0;
}

const llmq_model_info_t *llmq_models_lookup(const llmq_models_t *self,
                                            const char *model)
{
    if (!self || !model)
        return NULL;
    llmq_model_info_t *info =
        (llmq_model_info_t *)zhashx_lookup(self->entries, model);
    if (info)
        return info;
    size_t n = s_base_len(model);
    if (n == 0 || n >= 256)
        return NULL;
    char base[256];
    memcpy(base, model, n);
    base[n] = 0;
    return (llmq_model_info_t *)zhashx_lookup(self->entries, base);
}

int llmq_models_learn(llmq_models_t *self, const char *model, int64_t context,
                      int64_t max_output, bool flags_known, unsigned flags)
{
    if (!self || !model || !*model || strlen(model) > 256)
        return -1;
    llmq_model_info_t *info =
        (llmq_model_info_t *)zhashx_lookup(self->entries, model);
    if (!info) {
        const llmq_model_info_t *base = llmq_models_lookup(self, model);
        if (zhashx_size(self->entries) >= S_MAX_ENTRIES ||
            !(info = s_info_new(model)))
            return -1;
        if (base) {
            char *name = info->name;
            *info = *base;
            info->name = name;
        }
        zhashx_update(self->entries, model, info);
    }
    if (context > 0)
        info->context = context;
    if (max_output > 0)
        info->max_output = max_output;
    if (flags_known) {
        info->flags = flags;
        info->flags_known = true;
    }
    info->learned = true;
    return 0;
}

/*  --- learning from /models --------------------------------------------- */

/*  The first positive integer among keys of obj, 0 if none. */
static int64_t s_json_first(const cJSON *obj, const char *const *keys)
{
    for (size_t i = 0; keys[i]; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, keys[i]);
        if (cJSON_IsNumber(v) && v->valuedouble >= 1 && v->valuedouble < 1e12)
            return (int64_t)v->valuedouble;
    }
    return 0;
}

int llmq_models_learn_json(llmq_models_t *self, const char *json, size_t len)
{
    static const char *const ctx_keys[] = {
        "max_model_len",      "context_length",   "context_window",
        "max_context_length", "max_input_tokens", NULL};
    static const char *const out_keys[] = {"max_output_tokens",
                                           "max_completion_tokens", NULL};
    cJSON *root = json ? cJSON_ParseWithLength(json, len) : NULL;
    const cJSON *data = cJSON_GetObjectItemCaseSensitive(root, "data");
    int learned = 0;
    const cJSON *list = cJSON_IsArray(data) ? data : NULL, *m;
    cJSON_ArrayForEach(m, list)
    {
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(m, "id");
        if (!cJSON_IsString(id) || learned >= 1000)
            continue;
        int64_t context = s_json_first(m, ctx_keys);
        int64_t output = s_json_first(m, out_keys);
        if (!output)
            output = s_json_first(
                cJSON_GetObjectItemCaseSensitive(m, "top_provider"), out_keys);
        if ((context || output) &&
            llmq_models_learn(self, id->valuestring, context, output, false,
                              0) == 0)
            learned++;
    }
    cJSON_Delete(root);
    return learned;
}

/*  --- hello caps ------------------------------------------------------- */

static const struct {
    const char *key;
    unsigned flag;
} s_flag_keys[] = {{"chat", LLMQ_MODEL_CHAT},
                   {"embeddings", LLMQ_MODEL_EMBEDDINGS},
                   {"streaming", LLMQ_MODEL_STREAMING},
                   {"tools", LLMQ_MODEL_TOOLS},
                   {"images", LLMQ_MODEL_IMAGES}};
#define S_NFLAGS (sizeof s_flag_keys / sizeof s_flag_keys[0])

static bool s_reported(const llmq_model_info_t *info, const char *const *models,
                       size_t count)
{
    if (!info->learned)
        return false;
    for (size_t i = 0; i < count; i++)
        if (strcmp(models[i], "*") == 0 || strcmp(models[i], info->name) == 0)
            return true;
    return false;
}

static cJSON *s_caps_entry(const llmq_model_info_t *info)
{
    cJSON *e = cJSON_CreateObject();
    if (info->context > 0)
        cJSON_AddNumberToObject(e, "context", (double)info->context);
    if (info->max_output > 0)
        cJSON_AddNumberToObject(e, "max_output", (double)info->max_output);
    for (size_t k = 0; info->flags_known && k < S_NFLAGS; k++)
        cJSON_AddBoolToObject(e, s_flag_keys[k].key,
                              (info->flags & s_flag_keys[k].flag) != 0);
    return e;
}

uint8_t *llmq_models_caps_pack(const llmq_models_t *self,
                               const char *const *models, size_t count,
                               size_t max_bytes, size_t *size)
{
    *size = 0;
    cJSON *root = cJSON_CreateObject();
    size_t approx = 8, n = 0;
    const llmq_model_info_t *info =
        (const llmq_model_info_t *)zhashx_first(self->entries);
    for (; root && info;
         info = (const llmq_model_info_t *)zhashx_next(self->entries)) {
        size_t cost = strlen(info->name) + 96; /* an entry's upper bound */
        if (!s_reported(info, models, count) || approx + cost > max_bytes)
            continue;
        cJSON_AddItemToObject(root, info->name, s_caps_entry(info));
        approx += cost;
        n++;
    }
    zframe_t *frame = n ? llmq_value_from_json(root) : NULL;
    cJSON_Delete(root);
    uint8_t *out = NULL;
    if (frame && zframe_size(frame) <= max_bytes &&
        (out = (uint8_t *)malloc(zframe_size(frame)))) {
        memcpy(out, zframe_data(frame), zframe_size(frame));
        *size = zframe_size(frame);
    }
    zframe_destroy(&frame);
    return out;
}

/*  One caps entry: the larger context and output win. */
static int s_caps_one(llmq_models_t *self, const cJSON *e)
{
    if (!cJSON_IsObject(e) || !e->string)
        return -1;
    const llmq_model_info_t *had =
        (const llmq_model_info_t *)zhashx_lookup(self->entries, e->string);
    bool had_learned = had && had->learned;
    const char *ctx_keys[] = {"context", NULL},
               *out_keys[] = {"max_output", NULL};
    int64_t context = s_json_first(e, ctx_keys);
    int64_t output = s_json_first(e, out_keys);
    if (had_learned && had->context > context)
        context = had->context;
    if (had_learned && had->max_output > output)
        output = had->max_output;
    /*  Flags not reported keep what the table knew. */
    const llmq_model_info_t *base = llmq_models_lookup(self, e->string);
    bool known = false;
    unsigned flags = base && base->flags_known ? base->flags : 0;
    for (size_t k = 0; k < S_NFLAGS; k++) {
        const cJSON *v =
            cJSON_GetObjectItemCaseSensitive(e, s_flag_keys[k].key);
        if (!cJSON_IsBool(v))
            continue;
        known = true;
        flags = cJSON_IsTrue(v) ? flags | s_flag_keys[k].flag
                                : flags & ~s_flag_keys[k].flag;
    }
    return llmq_models_learn(self, e->string, context, output, known, flags);
}

int llmq_models_caps_learn(llmq_models_t *self, const uint8_t *caps,
                           size_t size)
{
    cJSON *root = caps ? llmq_value_to_json(caps, size, NULL, 0) : NULL;
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return -1;
    }
    int learned = 0;
    const cJSON *e;
    cJSON_ArrayForEach(e, root)
    {
        if (learned < 1000 && s_caps_one(self, e) == 0)
            learned++;
    }
    cJSON_Delete(root);
    return learned;
}

/*  --- the check -------------------------------------------------------- */

/*  What the walk of a request body found. */
typedef struct {
    int64_t max_tokens;  /* max_tokens or max_completion_tokens, -1 none */
    uint64_t text_bytes; /* bytes of text strings */
    bool tools;          /* a non-empty tools / functions array */
    bool images;         /* an image part */
} s_scan_t;

static bool s_str_is(const llmq_mp_item_t *it, const char *s)
{
    size_t n = strlen(s);
    return (it->kind == LLMQ_MP_STR || it->kind == LLMQ_MP_BIN) &&
           it->len == n && memcmp(it->ptr, s, n) == 0;
}

static int s_text(llmq_mp_reader_t *r, int depth, s_scan_t *scan);

/*  A map's pairs: "url" and "data" values are not text; "type" says if
    the part is an image. */
static int s_text_map(llmq_mp_reader_t *r, uint32_t pairs, int depth,
                      s_scan_t *scan)
{
    for (uint32_t i = 0; i < pairs; i++) {
        llmq_mp_item_t key, v;
        if (llmq_mp_read(r, &key))
            return -1;
        if (s_str_is(&key, "url") || s_str_is(&key, "data")) {
            if (llmq_mp_skip(r, depth))
                return -1;
        } else if (s_str_is(&key, "type")) {
            const uint8_t *at = r->p;
            if (llmq_mp_read(r, &v))
                return -1;
            if (v.kind == LLMQ_MP_ARRAY || v.kind == LLMQ_MP_MAP) {
                r->p = at; /* not a string: skip it whole */
                if (llmq_mp_skip(r, depth))
                    return -1;
            }
            scan->images |= s_str_is(&v, "image_url") ||
                            s_str_is(&v, "image") ||
                            s_str_is(&v, "input_image");
        } else if (s_text(r, depth, scan))
            return -1;
    }
    return 0;
}

/*  Sum the text bytes of one value (data: URLs left out). */
static int s_text(llmq_mp_reader_t *r, int depth, s_scan_t *scan)
{
    llmq_mp_item_t it;
    if (depth <= 0 || llmq_mp_read(r, &it))
        return -1;
    if (it.kind == LLMQ_MP_STR || it.kind == LLMQ_MP_BIN) {
        if (!(it.len >= 5 && memcmp(it.ptr, "data:", 5) == 0))
            scan->text_bytes += it.len;
        return 0;
    }
    if (it.kind == LLMQ_MP_MAP)
        return s_text_map(r, it.len, depth - 1, scan);
    for (uint32_t i = 0; it.kind == LLMQ_MP_ARRAY && i < it.len; i++)
        if (s_text(r, depth - 1, scan))
            return -1;
    return 0;
}

/*  Walk the top-level map of a request body. -1: not a readable map (the
    worker reports a malformed body; the broker lets it through). */
static int s_scan(const void *payload, size_t size, s_scan_t *scan)
{
    memset(scan, 0, sizeof *scan);
    scan->max_tokens = -1;
    llmq_mp_reader_t r;
    llmq_mp_item_t map, key, v;
    llmq_mp_init(&r, payload, size);
    if (!payload || llmq_mp_read(&r, &map) || map.kind != LLMQ_MP_MAP)
        return -1;
    for (uint32_t i = 0; i < map.len; i++) {
        if (llmq_mp_read(&r, &key))
            return -1;
        if (s_str_is(&key, "max_tokens") ||
            s_str_is(&key, "max_completion_tokens")) {
            const uint8_t *at = r.p;
            if (llmq_mp_read(&r, &v))
                return -1;
            if (v.kind == LLMQ_MP_UINT)
                scan->max_tokens =
                    v.u > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v.u;
            else if (v.kind == LLMQ_MP_FLOAT && v.d >= 1) /* 1e7, 2^64 */
                scan->max_tokens = v.d >= 9.2e18 ? INT64_MAX : (int64_t)v.d;
            else if (v.kind == LLMQ_MP_ARRAY || v.kind == LLMQ_MP_MAP) {
                r.p = at; /* not a number: skip it whole */
                if (llmq_mp_skip(&r, 64))
                    return -1;
            }
            continue;
        }
        bool tools = s_str_is(&key, "tools") || s_str_is(&key, "functions");
        if (tools || s_str_is(&key, "messages") || s_str_is(&key, "prompt") ||
            s_str_is(&key, "input") || s_str_is(&key, "system")) {
            const uint8_t *at = r.p;
            if (s_text(&r, 64, scan))
                return -1;
            scan->tools |= tools && r.p - at > 1; /* not [] nor {} */
        } else if (llmq_mp_skip(&r, 64))
            return -1;
    }
    return 0;
}

/*  The op and stream rules. 1 (why set) if the model cannot take them. */
static int s_check_kind(const llmq_model_info_t *m, const char *model,
                        const char *op, bool stream, char *why, size_t whylen)
{
    bool embedding = op && strcmp(op, "embedding") == 0;
    if (!m->flags_known)
        return 0;
    if (embedding && !(m->flags & LLMQ_MODEL_EMBEDDINGS)) {
        snprintf(why, whylen,
                 "model '%s' does not create embeddings (op embedding); it "
                 "is a chat model",
                 model);
        return 1;
    }
    if (!embedding && !(m->flags & LLMQ_MODEL_CHAT)) {
        snprintf(why, whylen,
                 "model '%s' only creates embeddings: op %s is not "
                 "supported (send op embedding)",
                 model, op ? op : "?");
        return 1;
    }
    if (stream && !(m->flags & LLMQ_MODEL_STREAMING)) {
        snprintf(why, whylen,
                 "model '%s' does not stream: send the request with stream "
                 "false",
                 model);
        return 1;
    }
    return 0;
}

/*  The size rules, on what the walk found. */
static int s_check_size(const llmq_model_info_t *m, const char *model,
                        bool embedding, const s_scan_t *scan, char *why,
                        size_t whylen)
{
    int64_t out = scan->max_tokens > 0 ? scan->max_tokens : 0;
    if (m->max_output > 0 && out > m->max_output) {
        snprintf(why, whylen,
                 "max_tokens %lld is over the largest output of model '%s' "
                 "(%lld tokens)",
                 (long long)out, model, (long long)m->max_output);
        return 1;
    }
    int64_t prompt = (int64_t)(scan->text_bytes / 4);
    if (!embedding && m->context > 0 &&
        (prompt > m->context || out > m->context - prompt)) { /* no overflow */
        char plus[48] = "";
        if (out > 0)
            snprintf(plus, sizeof plus, " plus max_tokens %lld",
                     (long long)out);
        snprintf(why, whylen,
                 "prompt (about %lld tokens: %llu bytes of text / 4)%s is "
                 "over the context window of model '%s' (%lld tokens)",
                 (long long)prompt, (unsigned long long)scan->text_bytes, plus,
                 model, (long long)m->context);
        return 1;
    }
    if (m->flags_known && scan->tools && !(m->flags & LLMQ_MODEL_TOOLS)) {
        snprintf(why, whylen, "model '%s' does not take tools", model);
        return 1;
    }
    if (m->flags_known && scan->images && !(m->flags & LLMQ_MODEL_IMAGES)) {
        snprintf(why, whylen, "model '%s' does not take image input", model);
        return 1;
    }
    return 0;
}

int llmq_models_check(const llmq_models_t *self, const char *model,
                      const char *op, bool stream, const void *payload,
                      size_t size, char *why, size_t whylen)
{
    const llmq_model_info_t *m = llmq_models_lookup(self, model);
    if (!m)
        return 0;
    if (s_check_kind(m, model, op, stream, why, whylen))
        return 1;
    s_scan_t scan;
    if (s_scan(payload, size, &scan))
        return 0;
    bool embedding = op && strcmp(op, "embedding") == 0;
    return s_check_size(m, model, embedding, &scan, why, whylen);
}

void llmq_models_tokens_from_json(const cJSON *body, llmq_tokens_t *tokens)
{
    static const char *const cached[] = {"cached_tokens", NULL};
    static const char *const reasoning[] = {"reasoning_tokens", NULL};
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(body, "usage");
    int64_t n = s_json_first(
        cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens_details"), cached);
    if (n)
        tokens->cached = n;
    n = s_json_first(
        cJSON_GetObjectItemCaseSensitive(u, "completion_tokens_details"),
        reasoning);
    if (n)
        tokens->reasoning = n;
}

double llmq_models_cost(const llmq_model_info_t *info, const llmq_tokens_t *t,
                        bool batch)
{
    if (!info || info->input < 0 || !t)
        return 0;
    int64_t prompt = t->prompt > 0 ? t->prompt : 0;
    int64_t cached = t->cached > 0 ? t->cached : 0;
    int64_t completion = t->completion > 0 ? t->completion : 0;
    int64_t reasoning = t->reasoning > 0 ? t->reasoning : 0;
    if (cached > prompt)
        cached = prompt;
    if (reasoning > completion)
        reasoning = completion;
    double out = info->output > 0 ? info->output : 0;
    double cost =
        (double)(prompt - cached) * info->input +
        (double)cached *
            (info->cached_input >= 0 ? info->cached_input : info->input) +
        (double)(completion - reasoning) * out +
        (double)reasoning * (info->reasoning >= 0 ? info->reasoning : out);
    cost /= 1e6;
    if (batch && info->batch_discount > 0 && info->batch_discount <= 1)
        cost *= 1.0 - info->batch_discount;
    return cost;
}

/*  --- selftest --------------------------------------------------------- */

#include "llmq_check.h"
#define CHECK(cond) LLMQ_CHECK_RET(cond)

/*  A msgpack request body from JSON text (caller frees). */
static zframe_t *s_t_body(const char *json)
{
    return llmq_value_from_json_text(json, strlen(json), NULL, 0);
}

/*  check() of a JSON body: 0 fits, 1 refused (why printed if verbose). */
static int s_t_check(const llmq_models_t *t, const char *model, const char *op,
                     bool stream, const char *json, char *why, size_t len)
{
    zframe_t *f = s_t_body(json);
    why[0] = 0;
    int rc = llmq_models_check(t, model, op, stream, f ? zframe_data(f) : NULL,
                               f ? zframe_size(f) : 0, why, len);
    zframe_destroy(&f);
    return rc;
}

static int s_t_lookup(llmq_models_t *t)
{
    const llmq_model_info_t *m = llmq_models_lookup(t, "gpt-4o");
    CHECK(m && m->context == 128000 && m->max_output == 16384);
    CHECK(llmq_models_lookup(t, "gpt-4o-2024-08-06") == m);
    CHECK(llmq_models_lookup(t, "gpt-4o-mini-2024-07-18") ==
          llmq_models_lookup(t, "gpt-4o-mini"));
    CHECK(llmq_models_lookup(t, "gpt-3.5-turbo-0125"));
    m = llmq_models_lookup(t, "claude-sonnet-4-5-20250929");
    CHECK(m && strcmp(m->name, "claude-sonnet-4-5") == 0);
    CHECK(llmq_models_lookup(t, "claude-3-5-haiku-latest"));
    CHECK(llmq_models_lookup(t, "claude-3-5-haiku-20241022"));
    CHECK(!llmq_models_lookup(t, "sim-model"));
    CHECK(!llmq_models_lookup(t, "gpt-4o-extra"));
    CHECK(!llmq_models_lookup(t, "2024-08-06"));
    CHECK(!llmq_models_lookup(t, NULL));
    return 0;
}

static int s_t_check_rules(llmq_models_t *t)
{
    char why[512];
    CHECK(s_t_check(t, "gpt-4o", "chat", false,
                    "{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],"
                    "\"max_tokens\":100}",
                    why, sizeof why) == 0);
    CHECK(s_t_check(t, "gpt-4o", "chat", false, "{\"max_tokens\":10000000}",
                    why, sizeof why) == 1);
    CHECK(strstr(why, "gpt-4o") && strstr(why, "10000000") &&
          strstr(why, "16384"));
    CHECK(s_t_check(t, "gpt-4o-2024-08-06", "chat", false,
                    "{\"max_completion_tokens\":20000}", why, sizeof why) == 1);
    CHECK(s_t_check(t, "gpt-4o", "embedding", false, "{\"input\":\"x\"}", why,
                    sizeof why) == 1);
    CHECK(strstr(why, "embeddings"));
    CHECK(s_t_check(t, "text-embedding-3-small", "chat", false, "{}", why,
                    sizeof why) == 1);
    CHECK(s_t_check(t, "text-embedding-3-small", "embedding", false,
                    "{\"input\":[\"a\",\"b\"]}", why, sizeof why) == 0);
    CHECK(s_t_check(t, "o1-pro", "chat", true, "{}", why, sizeof why) == 1);
    CHECK(strstr(why, "stream"));
    CHECK(s_t_check(t, "o3-mini", "chat", false,
                    "{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":"
                    "\"image_url\",\"image_url\":{\"url\":\"data:xx\"}}]}]}",
                    why, sizeof why) == 1);
    CHECK(strstr(why, "image"));
    /*  Unknown models and unreadable bodies pass. */
    CHECK(s_t_check(t, "sim-model", "embedding", true,
                    "{\"max_tokens\":10000000}", why, sizeof why) == 0);
    CHECK(llmq_models_check(t, "gpt-4o", "chat", false, "\xc1", 1, why,
                            sizeof why) == 0);
    CHECK(llmq_models_check(t, "gpt-4o", "chat", false, NULL, 0, why,
                            sizeof why) == 0);
    return 0;
}

/*  The window: text bytes / 4 plus max_tokens; data: URLs not counted. */
static int s_t_window(llmq_models_t *t)
{
    char why[512];
    CHECK(llmq_models_learn(t, "small-ctx", 100, 0, false, 0) == 0);
    char body[1200];
    snprintf(body, sizeof body,
             "{\"max_tokens\":10,\"messages\":[{\"role\":\"user\","
             "\"content\":\"%0356d\"}]}",
             0);
    CHECK(s_t_check(t, "small-ctx", "chat", false, body, why, sizeof why) == 0);
    snprintf(body, sizeof body,
             "{\"max_tokens\":20,\"messages\":[{\"role\":\"user\","
             "\"content\":\"%0356d\"}]}",
             0);
    CHECK(s_t_check(t, "small-ctx", "chat", false, body, why, sizeof why) == 1);
    CHECK(strstr(why, "small-ctx") && strstr(why, "(100 tokens)") &&
          strstr(why, "about 90") && strstr(why, "max_tokens 20"));
    CHECK(s_t_check(t, "small-ctx", "chat", false,
                    "{\"max_tokens\":18446744073709551615}", why,
                    sizeof why) == 1);
    snprintf(body, sizeof body,
             "{\"max_tokens\":20,\"messages\":[{\"role\":\"user\","
             "\"content\":[{\"type\":\"image_url\",\"image_url\":{\"url\":"
             "\"data:image/png;base64,%0800d\"}}]}]}",
             0);
    CHECK(s_t_check(t, "small-ctx", "chat", false, body, why, sizeof why) == 0);
    return 0;
}

/*  /models answers, hello caps both ways, learning over built-ins. */
static int s_t_learn(llmq_models_t *t)
{
    const char *vllm =
        "{\"object\":\"list\",\"data\":[{\"id\":\"meta/llama\",\"object\":"
        "\"model\",\"max_model_len\":4096},{\"id\":\"no-info\"},{\"id\":"
        "\"or/x\",\"context_length\":9000,\"top_provider\":{"
        "\"max_completion_tokens\":500}}]}";
    CHECK(llmq_models_learn_json(t, vllm, strlen(vllm)) == 2);
    CHECK(llmq_models_learn_json(t, "{\"data\":[", 10) == 0);
    CHECK(llmq_models_learn_json(t, NULL, 0) == 0);
    const llmq_model_info_t *m = llmq_models_lookup(t, "or/x");
    CHECK(m && m->context == 9000 && m->max_output == 500 && m->learned);
    CHECK(!llmq_models_lookup(t, "no-info"));
    const char *star[] = {"*"}, *one[] = {"meta/llama"};
    size_t size = 0;
    uint8_t *caps = llmq_models_caps_pack(t, one, 1, 4096, &size);
    CHECK(caps && size > 0);
    llmq_models_t *b = llmq_models_new();
    CHECK(b && llmq_models_caps_learn(b, caps, size) == 1);
    free(caps);
    CHECK(llmq_models_lookup(b, "meta/llama")->context == 4096);
    CHECK(!llmq_models_lookup(b, "or/x"));
    caps = llmq_models_caps_pack(t, star, 1, 4096, &size);
    CHECK(caps && llmq_models_caps_learn(b, caps, size) >= 2);
    free(caps);
    CHECK(llmq_models_caps_pack(t, star, 1, 10, &size) == NULL && size == 0);
    CHECK(llmq_models_caps_learn(b, (const uint8_t *)"\x01", 1) == -1);
    /*  A dated name learned keeps the base's prices and flags. */
    CHECK(llmq_models_learn(b, "gpt-4o-2099-01-01", 64000, 0, false, 0) == 0);
    m = llmq_models_lookup(b, "gpt-4o-2099-01-01");
    CHECK(m && m->context == 64000 && m->max_output == 16384 &&
          m->input == 2.50 && m->flags_known);
    CHECK(llmq_models_lookup(b, "gpt-4o")->context == 128000);
    char name[32];
    int added = 0;
    for (int i = 0; i < S_MAX_ENTRIES + 10; i++) {
        snprintf(name, sizeof name, "m%d", i);
        added += llmq_models_learn(b, name, 10, 0, false, 0) == 0;
    }
    CHECK(added < S_MAX_ENTRIES && llmq_models_lookup(b, "m0"));
    llmq_models_destroy(&b);
    llmq_models_destroy(&b);
    return 0;
}

static int s_t_cost(llmq_models_t *t)
{
    const llmq_model_info_t *m = llmq_models_lookup(t, "gpt-4o");
    llmq_tokens_t tk = {1000000, 0, 1000000, 0};
    double c = llmq_models_cost(m, &tk, false);
    CHECK(c > 12.4999 && c < 12.5001);
    c = llmq_models_cost(m, &tk, true);
    CHECK(c > 6.2499 && c < 6.2501);
    tk.cached = 1000000;
    c = llmq_models_cost(m, &tk, false);
    CHECK(c > 11.2499 && c < 11.2501);
    tk.cached = 5000000; /* more cached than prompt: capped */
    CHECK(llmq_models_cost(m, &tk, false) == c);
    CHECK(llmq_models_cost(NULL, &tk, false) == 0);
    CHECK(llmq_models_cost(llmq_models_lookup(t, "small-ctx"), &tk, false) ==
          0);
    cJSON *body = cJSON_Parse(
        "{\"usage\":{\"prompt_tokens\":10,\"prompt_tokens_details\":{"
        "\"cached_tokens\":4},\"completion_tokens_details\":{"
        "\"reasoning_tokens\":3}}}");
    llmq_tokens_t got = {10, 0, 5, 0};
    llmq_models_tokens_from_json(body, &got);
    cJSON_Delete(body);
    CHECK(got.cached == 4 && got.reasoning == 3 && got.prompt == 10);
    llmq_models_tokens_from_json(NULL, &got);
    CHECK(got.cached == 4);
    m = llmq_models_lookup(t, "text-embedding-3-small");
    llmq_tokens_t e = {1000000, 0, 0, 0};
    c = llmq_models_cost(m, &e, false);
    CHECK(c > 0.01999 && c < 0.02001);
    return 0;
}

int llmq_models_test(bool verbose)
{
    if (verbose)
        printf(" * llmq_models: ");
    llmq_models_t *t = llmq_models_new();
    CHECK(t);
    CHECK(s_t_lookup(t) == 0);
    CHECK(s_t_check_rules(t) == 0);
    CHECK(s_t_window(t) == 0);
    CHECK(s_t_learn(t) == 0);
    CHECK(s_t_cost(t) == 0);
    llmq_models_destroy(&t);
    CHECK(t == NULL);
    llmq_models_destroy(&t);
    if (verbose)
        printf("OK\n");
    return 0;
}
