/*  sim_gen.c — deterministic content for llmq-sim.

    Everything here is a pure function of the request: the canonical text and
    its FNV-1a 64 hash, the usage numbers, the reply text and the JSON and SSE
    bodies in OpenAI's and Anthropic's exact shapes. Keeping it pure lets a
    test recompute what the simulator must answer for any request, and lets
    the batch engine reuse the very same bodies as the realtime routes.

    Bodies are written with evbuffer_add_printf rather than built as cJSON
    trees: the simulator must answer tens of thousands of requests per second
    on one core, and the shapes are fixed.
*/
#include "sim.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

//  Filler words: short, ASCII, no characters JSON must escape.
static const char *s_words[64] = {
    "alpha",  "bravo",   "charlie", "delta",  "echo",   "foxtrot", "golf",
    "hotel",  "india",   "juliet",  "kilo",   "lima",   "mike",    "november",
    "oscar",  "papa",    "quebec",  "romeo",  "sierra", "tango",   "uniform",
    "victor", "whiskey", "xray",    "yankee", "zulu",   "amber",   "basil",
    "cedar",  "dune",    "ember",   "fjord",  "grove",  "harbor",  "iris",
    "jade",   "kelp",    "lotus",   "maple",  "nectar", "olive",   "pearl",
    "quartz", "river",   "sage",    "thyme",  "umber",  "vale",    "willow",
    "yarrow", "zinnia",  "atlas",   "beacon", "comet",  "drift",   "ember",
    "flint",  "glade",   "haven",   "inlet",  "jetty",  "knoll",   "ledge",
    "meadow"};

uint64_t sim_fnv(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

static uint64_t s_xorshift(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

//  --- directives --------------------------------------------------------

//  memmem is a GNU extension; this is the portable few lines.
const char *sim_memfind(const char *hay, size_t hlen, const char *needle,
                        size_t nlen)
{
    if (nlen == 0 || hlen < nlen)
        return NULL;
    for (const char *p = hay; p + nlen <= hay + hlen; p++) {
        p = memchr(p, needle[0], (size_t)(hay + hlen - p));
        if (!p || p + nlen > hay + hlen)
            return NULL;
        if (memcmp(p, needle, nlen) == 0)
            return p;
    }
    return NULL;
}

static int s_atoi_bounded(const char *s, size_t len, int lo, int hi, int dflt)
{
    if (len == 0)
        return dflt;
    long v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return dflt;
        v = v * 10 + (s[i] - '0');
        if (v > hi)
            return hi;
    }
    return v < lo ? lo : (int)v;
}

//  One item "key" or "key=value" of a [[sim:...]] block.
static void s_directive_item(sim_dir_t *d, const char *item, size_t len)
{
    const char *eq = memchr(item, '=', len);
    size_t klen = eq ? (size_t)(eq - item) : len;
    const char *val = eq ? eq + 1 : item + len;
    size_t vlen = eq ? len - klen - 1 : 0;
#define KEY(k) (klen == strlen(k) && memcmp(item, k, klen) == 0)
    if (KEY("fail")) {
        //  CODE or CODExN
        const char *x = memchr(val, 'x', vlen);
        size_t clen = x ? (size_t)(x - val) : vlen;
        int code = s_atoi_bounded(val, clen, 0, 599, 0);
        if (code >= 400) {
            d->fail_code = code;
            d->fail_times =
                x ? s_atoi_bounded(x + 1, vlen - clen - 1, 1, 1000000, 1) : 0;
            if (d->fail_times)
                d->counted = true;
        }
    } else if (KEY("hang")) {
        d->hang = s_atoi_bounded(val, vlen, 1, 1000000, 1);
        d->counted = true;
    } else if (KEY("malformed")) {
        d->malformed = s_atoi_bounded(val, vlen, 1, 1000000, 1);
        d->counted = true;
    } else if (KEY("reset")) {
        d->reset = s_atoi_bounded(val, vlen, 1, 1000000, 1);
        d->counted = true;
    } else if (KEY("delay_ms"))
        d->delay_ms = s_atoi_bounded(val, vlen, 0, 3600000, 0);
    else if (KEY("tokens"))
        d->tokens = s_atoi_bounded(val, vlen, 1, SIM_MAX_FORCED_TOKENS, 0);
    else if (KEY("context_length"))
        d->context_length = true;
    else if (KEY("echo_key"))
        d->echo_key = s_atoi_bounded(val, vlen, 0, 65536, 0);
#undef KEY
}

//  Scans text for [[sim:a=b,c]] blocks.
static void s_directives(sim_dir_t *d, const char *text, size_t len)
{
    const char *end = text + len;
    const char *p = text;
    while (p < end) {
        const char *open = sim_memfind(p, (size_t)(end - p), "[[sim:", 6);
        if (!open)
            return;
        const char *body = open + 6;
        const char *close = sim_memfind(body, (size_t)(end - body), "]]", 2);
        if (!close)
            return;
        const char *item = body;
        while (item < close) {
            const char *comma = memchr(item, ',', (size_t)(close - item));
            const char *stop = comma ? comma : close;
            //  trim spaces
            const char *a = item, *b = stop;
            while (a < b && *a == ' ')
                a++;
            while (b > a && b[-1] == ' ')
                b--;
            if (b > a)
                s_directive_item(d, a, (size_t)(b - a));
            item = stop + 1;
        }
        p = close + 2;
    }
}

//  --- canonical text ----------------------------------------------------

typedef struct {
    uint64_t hash;
    size_t chars;
    sim_dir_t *dir;
} s_canon_t;

static void s_canon_raw(s_canon_t *c, const char *s, size_t len)
{
    c->hash = sim_fnv(c->hash, s, len);
}

//  A piece of content text: hashed, counted, scanned for directives.
static void s_canon_text(s_canon_t *c, const char *s, size_t len)
{
    c->hash = sim_fnv(c->hash, s, len);
    c->chars += len;
    s_directives(c->dir, s, len);
}

//  Content is a string, or an array of parts of which "text" parts count.
//  Returns -1 on a type we do not accept.
static int s_canon_content(s_canon_t *c, const cJSON *content)
{
    if (!content || cJSON_IsNull(content))
        return 0;
    if (cJSON_IsString(content)) {
        s_canon_text(c, content->valuestring, strlen(content->valuestring));
        return 0;
    }
    if (!cJSON_IsArray(content))
        return -1;
    const cJSON *part;
    cJSON_ArrayForEach(part, content)
    {
        if (cJSON_IsString(part)) {
            s_canon_text(c, part->valuestring, strlen(part->valuestring));
            continue;
        }
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *text = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (cJSON_IsString(type) && strcmp(type->valuestring, "text") == 0 &&
            cJSON_IsString(text))
            s_canon_text(c, text->valuestring, strlen(text->valuestring));
    }
    return 0;
}

static int s_get_int(const cJSON *obj, const char *name, int *value, int lo,
                     int hi, char *err, size_t errlen, const char **param,
                     bool *present)
{
    const cJSON *it = cJSON_GetObjectItemCaseSensitive(obj, name);
    if (present)
        *present = false;
    if (!it || cJSON_IsNull(it))
        return 0;
    if (!cJSON_IsNumber(it) ||
        it->valuedouble != (double)(long long)it->valuedouble ||
        it->valuedouble < lo || it->valuedouble > hi) {
        snprintf(err, errlen,
                 "Invalid '%s': expected an integer between %d and %d.", name,
                 lo, hi);
        *param = name;
        return -1;
    }
    *value = (int)it->valuedouble;
    if (present)
        *present = true;
    return 0;
}

//  As FAIL, in a helper of sim_req_parse: the caller frees r.
#define FAIL_RET(p, ...)                                                       \
    do {                                                                       \
        snprintf(err, errlen, __VA_ARGS__);                                    \
        *param = (p);                                                          \
        return -1;                                                             \
    } while (0)

//  Chat and Anthropic messages: system (Anthropic) and messages, folded
//  into the canonical text. Returns 0, or -1 with err and *param.
static int s_parse_messages(sim_op_t op, const cJSON *body, s_canon_t *c,
                            bool have_max, char *err, size_t errlen,
                            const char **param)
{
    if (op == SIM_OP_MESSAGES) {
        if (!have_max)
            FAIL_RET("max_tokens", "max_tokens: Field required");
        const cJSON *system = cJSON_GetObjectItemCaseSensitive(body, "system");
        if (system && !cJSON_IsNull(system)) {
            s_canon_raw(c, "system:", 7);
            if (s_canon_content(c, system))
                FAIL_RET("system", "system: Input should be a valid string or "
                                   "list of text blocks");
            s_canon_raw(c, "\n", 1);
        }
    }
    const cJSON *messages = cJSON_GetObjectItemCaseSensitive(body, "messages");
    if (!cJSON_IsArray(messages) || cJSON_GetArraySize(messages) == 0)
        FAIL_RET("messages", "'messages' must be a non-empty array.");
    const cJSON *msg;
    int i = 0;
    cJSON_ArrayForEach(msg, messages)
    {
        const cJSON *role = cJSON_GetObjectItemCaseSensitive(msg, "role");
        if (!cJSON_IsObject(msg) || !cJSON_IsString(role))
            FAIL_RET(
                "messages",
                "Invalid 'messages[%d]': expected an object with a 'role'.", i);
        if (op == SIM_OP_MESSAGES && strcmp(role->valuestring, "user") != 0 &&
            strcmp(role->valuestring, "assistant") != 0)
            FAIL_RET("messages",
                     "messages.%d.role: Input should be 'user' or 'assistant'",
                     i);
        s_canon_raw(c, role->valuestring, strlen(role->valuestring));
        s_canon_raw(c, ":", 1);
        if (s_canon_content(c,
                            cJSON_GetObjectItemCaseSensitive(msg, "content")))
            FAIL_RET("messages",
                     "Invalid 'messages[%d].content': expected a string or an "
                     "array of parts.",
                     i);
        s_canon_raw(c, "\n", 1);
        i++;
    }
    return 0;
}

//  Completion prompt / embedding input: a string or array of strings,
//  folded into the canonical text; embeddings also hash each input.
//  Returns 0, or -1 with err and *param.
static int s_parse_inputs(sim_req_t *r, sim_op_t op, const cJSON *body,
                          s_canon_t *c, char *err, size_t errlen,
                          const char **param)
{
    const char *field = op == SIM_OP_COMPLETION ? "prompt" : "input";
    const char *tag = op == SIM_OP_COMPLETION ? "prompt:" : "input:";
    const cJSON *in = cJSON_GetObjectItemCaseSensitive(body, field);
    int n = 0;
    if (cJSON_IsString(in))
        n = 1;
    else if (cJSON_IsArray(in)) {
        const cJSON *it;
        cJSON_ArrayForEach(it, in)
        {
            if (!cJSON_IsString(it))
                FAIL_RET(field,
                         "Invalid '%s': expected a string or an array of "
                         "strings.",
                         field);
            n++;
        }
    }
    if (n == 0)
        FAIL_RET(field, "'%s' must be a non-empty string or array of strings.",
                 field);
    if (op == SIM_OP_EMBEDDING) {
        r->dims = 8;
        if (s_get_int(body, "dimensions", &r->dims, 1, 4096, err, errlen, param,
                      NULL))
            return -1;
        r->input_hash = calloc((size_t)n, sizeof(uint64_t));
        if (!r->input_hash)
            FAIL_RET(NULL, "out of memory");
        r->n_inputs = n;
    }
    int i = 0;
    const cJSON *it = cJSON_IsString(in) ? in : in->child;
    for (; it; it = cJSON_IsString(in) ? NULL : it->next, i++) {
        const char *s = it->valuestring;
        size_t len = strlen(s);
        s_canon_raw(c, tag, strlen(tag));
        s_canon_text(c, s, len);
        s_canon_raw(c, "\n", 1);
        if (op == SIM_OP_EMBEDDING) {
            uint64_t h = sim_fnv(SIM_FNV_OFFSET, r->model, strlen(r->model));
            h = sim_fnv(h, "\ninput:", 7);
            h = sim_fnv(h, s, len);
            r->input_hash[i] = sim_fnv(h, "\n", 1);
        }
    }
    return 0;
}
#undef FAIL_RET

#define FAIL(p, ...)                                                           \
    do {                                                                       \
        snprintf(err, errlen, __VA_ARGS__);                                    \
        *param = (p);                                                          \
        goto fail;                                                             \
    } while (0)

int sim_req_parse(sim_req_t *r, sim_op_t op, const cJSON *body, char *err,
                  size_t errlen, const char **param)
{
    memset(r, 0, sizeof(*r));
    r->op = op;
    r->dir.echo_key = -1;
    *param = NULL;
    s_canon_t c = {SIM_FNV_OFFSET, 0, &r->dir};

    if (!cJSON_IsObject(body))
        FAIL(NULL, "The request body must be a JSON object.");
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(body, "model");
    if (!cJSON_IsString(model) || model->valuestring[0] == 0)
        FAIL("model", "you must provide a model parameter");
    snprintf(r->model, sizeof(r->model), "%s", model->valuestring);
    s_canon_raw(&c, model->valuestring, strlen(model->valuestring));
    s_canon_raw(&c, "\n", 1);

    const cJSON *stream = cJSON_GetObjectItemCaseSensitive(body, "stream");
    if (stream && !cJSON_IsNull(stream) && !cJSON_IsBool(stream))
        FAIL("stream", "Invalid 'stream': expected a boolean.");
    r->stream = cJSON_IsTrue(stream);
    const cJSON *sopt =
        cJSON_GetObjectItemCaseSensitive(body, "stream_options");
    if (cJSON_IsObject(sopt))
        r->include_usage = cJSON_IsTrue(
            cJSON_GetObjectItemCaseSensitive(sopt, "include_usage"));

    r->max_tokens = SIM_DEFAULT_MAX_TOKENS;
    bool have_max = false;
    if (s_get_int(body, "max_tokens", &r->max_tokens, 1, 10000000, err, errlen,
                  param, &have_max))
        goto fail;
    if (op == SIM_OP_CHAT && !have_max &&
        s_get_int(body, "max_completion_tokens", &r->max_tokens, 1, 10000000,
                  err, errlen, param, NULL))
        goto fail;

    if ((op == SIM_OP_CHAT || op == SIM_OP_MESSAGES) &&
        s_parse_messages(op, body, &c, have_max, err, errlen, param))
        goto fail;
    if ((op == SIM_OP_COMPLETION || op == SIM_OP_EMBEDDING) &&
        s_parse_inputs(r, op, body, &c, err, errlen, param))
        goto fail;
    r->hash = c.hash;
    r->prompt_chars = c.chars;
    r->prompt_tokens = (int)((c.chars + 3) / 4);
    if (r->prompt_tokens < 1)
        r->prompt_tokens = 1;
    if (op != SIM_OP_EMBEDDING) {
        int natural =
            r->dir.tokens > 0 ? r->dir.tokens : 8 + (int)(r->hash % 24);
        r->out_tokens = natural < r->max_tokens ? natural : r->max_tokens;
        r->length_cut = natural > r->max_tokens;
    }
    return 0;
fail:
    sim_req_free(r);
    return -1;
}

void sim_req_free(sim_req_t *r)
{
    free(r->input_hash);
    r->input_hash = NULL;
    r->n_inputs = 0;
}

bool sim_random_text = false;

char *sim_text(uint64_t hash, int count)
{
    if (count < 1)
        count = 1;
    size_t cap = (size_t)count * 10 + 32;
    char *buf = malloc(cap);
    if (!buf)
        return NULL;
    size_t n = (size_t)snprintf(buf, cap, "sim-%016" PRIx64, hash);
    uint64_t state = hash ? hash : 0x9E3779B97F4A7C15ULL;
    if (sim_random_text) {
        static uint64_t counter;
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        state ^=
            ((uint64_t)ts.tv_nsec << 20) ^ (++counter * 0x9E3779B97F4A7C15ULL);
        if (!state)
            state = 1;
    }
    for (int i = 1; i < count; i++) {
        const char *w = s_words[s_xorshift(&state) % 64];
        size_t wl = strlen(w);
        buf[n++] = ' ';
        memcpy(buf + n, w, wl);
        n += wl;
    }
    buf[n] = 0;
    return buf;
}

void sim_json_str(struct evbuffer *out, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    char tmp[256];
    size_t n = 0;
    tmp[n++] = '"';
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (n > sizeof(tmp) - 8) {
            evbuffer_add(out, tmp, n);
            n = 0;
        }
        unsigned char ch = *p;
        if (ch == '"' || ch == '\\') {
            tmp[n++] = '\\';
            tmp[n++] = (char)ch;
        } else if (ch < 0x20) {
            tmp[n++] = '\\';
            switch (ch) {
            case '\n':
                tmp[n++] = 'n';
                break;
            case '\r':
                tmp[n++] = 'r';
                break;
            case '\t':
                tmp[n++] = 't';
                break;
            default:
                tmp[n++] = 'u';
                tmp[n++] = '0';
                tmp[n++] = '0';
                tmp[n++] = hex[ch >> 4];
                tmp[n++] = hex[ch & 15];
            }
        } else
            tmp[n++] = (char)ch;
    }
    tmp[n++] = '"';
    evbuffer_add(out, tmp, n);
}

static void s_usage_openai(struct evbuffer *out, const sim_req_t *r)
{
    evbuffer_add_printf(
        out,
        "{\"prompt_tokens\":%d,\"completion_tokens\":%d,\"total_tokens\":%d}",
        r->prompt_tokens, r->out_tokens, r->prompt_tokens + r->out_tokens);
}

void sim_body_chat(struct evbuffer *out, const sim_req_t *r, const char *id,
                   long created, const char *text)
{
    evbuffer_add_printf(out,
                        "{\"id\":\"%s\",\"object\":\"chat.completion\","
                        "\"created\":%ld,\"model\":",
                        id, created);
    sim_json_str(out, r->model);
    evbuffer_add_printf(
        out,
        ",\"system_fingerprint\":\"fp_llmq_sim\",\"choices\":[{\"index\":0,"
        "\"message\":{\"role\":\"assistant\",\"content\":\"%s\",\"refusal\":"
        "null},"
        "\"logprobs\":null,\"finish_reason\":\"%s\"}],\"usage\":",
        text, r->length_cut ? "length" : "stop");
    s_usage_openai(out, r);
    evbuffer_add(out, "}", 1);
}

void sim_body_completion(struct evbuffer *out, const sim_req_t *r,
                         const char *id, long created, const char *text)
{
    evbuffer_add_printf(out,
                        "{\"id\":\"%s\",\"object\":\"text_completion\","
                        "\"created\":%ld,\"model\":",
                        id, created);
    sim_json_str(out, r->model);
    evbuffer_add_printf(
        out,
        ",\"system_fingerprint\":\"fp_llmq_sim\",\"choices\":[{\"text\":\"%s\","
        "\"index\":0,\"logprobs\":null,\"finish_reason\":\"%s\"}],\"usage\":",
        text, r->length_cut ? "length" : "stop");
    s_usage_openai(out, r);
    evbuffer_add(out, "}", 1);
}

void sim_body_messages(struct evbuffer *out, const sim_req_t *r, const char *id,
                       const char *text)
{
    evbuffer_add_printf(
        out,
        "{\"id\":\"%s\",\"type\":\"message\",\"role\":\"assistant\",\"model\":",
        id);
    sim_json_str(out, r->model);
    evbuffer_add_printf(out,
                        ",\"content\":[{\"type\":\"text\",\"text\":\"%s\"}],"
                        "\"stop_reason\":\"%s\",\"stop_sequence\":null,"
                        "\"usage\":{\"input_tokens\":%d,\"output_tokens\":%d}}",
                        text, r->length_cut ? "max_tokens" : "end_turn",
                        r->prompt_tokens, r->out_tokens);
}

void sim_body_embeddings(struct evbuffer *out, const sim_req_t *r)
{
    evbuffer_add_printf(out, "{\"object\":\"list\",\"data\":[");
    for (int i = 0; i < r->n_inputs; i++) {
        evbuffer_add_printf(
            out, "%s{\"object\":\"embedding\",\"index\":%d,\"embedding\":[",
            i ? "," : "", i);
        //  Unit-length vector from the input's hash: equal inputs, equal
        //  vectors.
        uint64_t state = r->input_hash[i] ? r->input_hash[i] : 1;
        double v[4096], norm = 0;
        for (int d = 0; d < r->dims; d++) {
            v[d] =
                (double)(s_xorshift(&state) >> 11) / 9007199254740992.0 * 2.0 -
                1.0;
            norm += v[d] * v[d];
        }
        norm = norm > 0 ? 1.0 / __builtin_sqrt(norm) : 1.0;
        for (int d = 0; d < r->dims; d++)
            evbuffer_add_printf(out, "%s%.6f", d ? "," : "", v[d] * norm);
        evbuffer_add(out, "]}", 2);
    }
    evbuffer_add_printf(out, "],\"model\":");
    sim_json_str(out, r->model);
    evbuffer_add_printf(
        out, ",\"usage\":{\"prompt_tokens\":%d,\"total_tokens\":%d}}",
        r->prompt_tokens, r->prompt_tokens);
}

void sim_body(struct evbuffer *out, const sim_req_t *r, const char *id,
              long created, const char *text)
{
    switch (r->op) {
    case SIM_OP_CHAT:
        sim_body_chat(out, r, id, created, text);
        break;
    case SIM_OP_COMPLETION:
        sim_body_completion(out, r, id, created, text);
        break;
    case SIM_OP_MESSAGES:
        sim_body_messages(out, r, id, text);
        break;
    case SIM_OP_EMBEDDING:
        sim_body_embeddings(out, r);
        break;
    }
}

//  --- SSE ---------------------------------------------------------------

static void s_chunk_prefix(struct evbuffer *out, const sim_req_t *r,
                           const char *id, long created)
{
    evbuffer_add_printf(
        out,
        "data: {\"id\":\"%s\",\"object\":\"%s\",\"created\":%ld,\"model\":", id,
        r->op == SIM_OP_CHAT ? "chat.completion.chunk" : "text_completion",
        created);
    sim_json_str(out, r->model);
    evbuffer_add_printf(
        out, ",\"system_fingerprint\":\"fp_llmq_sim\",\"choices\":[");
}

static void s_chunk_suffix(struct evbuffer *out, const sim_req_t *r)
{
    evbuffer_add_printf(out, "]%s}\n\n",
                        r->include_usage ? ",\"usage\":null" : "");
}

//  One whole chunk of a chat or text completion stream: its choice is
//  printed from chat_fmt or text_fmt (by r->op) with the arguments.
__attribute__((format(printf, 6, 7)))
__attribute__((format(printf, 5, 7))) static void
s_chunk(struct evbuffer *out, const sim_req_t *r, const char *id, long created,
        const char *chat_fmt, const char *text_fmt, ...)
{
    va_list ap;
    s_chunk_prefix(out, r, id, created);
    va_start(ap, text_fmt);
    evbuffer_add_vprintf(out, r->op == SIM_OP_CHAT ? chat_fmt : text_fmt, ap);
    va_end(ap);
    s_chunk_suffix(out, r);
}

void sim_sse_head(struct evbuffer *out, const sim_req_t *r, const char *id,
                  long created)
{
    if (r->op == SIM_OP_CHAT) {
        s_chunk_prefix(out, r, id, created);
        evbuffer_add_printf(
            out,
            "{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"\","
            "\"refusal\":null},\"logprobs\":null,\"finish_reason\":null}");
        s_chunk_suffix(out, r);
    } else if (r->op == SIM_OP_MESSAGES) {
        evbuffer_add_printf(
            out,
            "event: message_start\ndata: {\"type\":\"message_start\","
            "\"message\":{\"id\":\"%s\",\"type\":\"message\",\"role\":"
            "\"assistant\",\"content\":[],"
            "\"model\":",
            id);
        sim_json_str(out, r->model);
        evbuffer_add_printf(
            out,
            ",\"stop_reason\":null,\"stop_sequence\":null,"
            "\"usage\":{\"input_tokens\":%d,\"output_tokens\":1}}}\n\n"
            "event: content_block_start\ndata: "
            "{\"type\":\"content_block_start\",\"index\":0,"
            "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n"
            "event: ping\ndata: {\"type\":\"ping\"}\n\n",
            r->prompt_tokens);
    }
}

void sim_sse_word(struct evbuffer *out, const sim_req_t *r, const char *id,
                  long created, const char *word, size_t len)
{
    if (r->op == SIM_OP_MESSAGES) {
        evbuffer_add_printf(out,
                            "event: content_block_delta\ndata: "
                            "{\"type\":\"content_block_delta\","
                            "\"index\":0,\"delta\":{\"type\":\"text_delta\","
                            "\"text\":\"%.*s\"}}\n\n",
                            (int)len, word);
        return;
    }
    s_chunk(out, r, id, created,
            "{\"index\":0,\"delta\":{\"content\":\"%.*s\"},"
            "\"logprobs\":null,\"finish_reason\":null}",
            "{\"text\":\"%.*s\",\"index\":0,\"logprobs\":null,"
            "\"finish_reason\":null}",
            (int)len, word);
}

void sim_sse_tail(struct evbuffer *out, const sim_req_t *r, const char *id,
                  long created)
{
    const char *finish = r->length_cut ? "length" : "stop";
    if (r->op == SIM_OP_MESSAGES) {
        evbuffer_add_printf(
            out,
            "event: content_block_stop\ndata: "
            "{\"type\":\"content_block_stop\",\"index\":0}\n\n"
            "event: message_delta\ndata: "
            "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"%s\","
            "\"stop_sequence\":null},\"usage\":{\"output_tokens\":%d}}\n\n"
            "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
            r->length_cut ? "max_tokens" : "end_turn", r->out_tokens);
        return;
    }
    s_chunk(out, r, id, created,
            "{\"index\":0,\"delta\":{},\"logprobs\":null,"
            "\"finish_reason\":\"%s\"}",
            "{\"text\":\"\",\"index\":0,\"logprobs\":null,"
            "\"finish_reason\":\"%s\"}",
            finish);
    if (r->include_usage) {
        s_chunk_prefix(out, r, id, created);
        evbuffer_add_printf(out, "],\"usage\":");
        s_usage_openai(out, r);
        evbuffer_add_printf(out, "}\n\n");
    }
    evbuffer_add_printf(out, "data: [DONE]\n\n");
}

//  --- errors and formats --------------------------------------------------

static void s_json_or_null(struct evbuffer *out, const char *s)
{
    if (s)
        sim_json_str(out, s);
    else
        evbuffer_add(out, "null", 4);
}

void sim_err_openai(struct evbuffer *out, const char *message, const char *type,
                    const char *param, const char *code)
{
    evbuffer_add_printf(out, "{\"error\":{\"message\":");
    sim_json_str(out, message);
    evbuffer_add_printf(out, ",\"type\":");
    sim_json_str(out, type);
    evbuffer_add_printf(out, ",\"param\":");
    s_json_or_null(out, param);
    evbuffer_add_printf(out, ",\"code\":");
    s_json_or_null(out, code);
    evbuffer_add_printf(out, "}}");
}

void sim_err_anthropic(struct evbuffer *out, const char *type,
                       const char *message)
{
    evbuffer_add_printf(out, "{\"type\":\"error\",\"error\":{\"type\":");
    sim_json_str(out, type);
    evbuffer_add_printf(out, ",\"message\":");
    sim_json_str(out, message);
    evbuffer_add_printf(out, "}}");
}

const char *sim_openai_type(int status)
{
    if (status == 429)
        return "requests";
    if (status >= 500)
        return "server_error";
    return "invalid_request_error";
}

const char *sim_anthropic_type(int status)
{
    switch (status) {
    case 401:
        return "authentication_error";
    case 403:
        return "permission_error";
    case 404:
        return "not_found_error";
    case 413:
        return "request_too_large";
    case 429:
        return "rate_limit_error";
    case 529:
        return "overloaded_error";
    default:
        return status >= 500 ? "api_error" : "invalid_request_error";
    }
}

//  Seconds part of a duration: "0s", "1s", "1.5s", "1.234s".
static size_t s_seconds(char *buf, size_t cap, int64_t ms)
{
    int64_t s = ms / 1000, frac = ms % 1000;
    if (frac == 0)
        return (size_t)snprintf(buf, cap, "%llds", (long long)s);
    char f[8];
    snprintf(f, sizeof(f), "%03lld", (long long)frac);
    for (int i = 2; i > 0 && f[i] == '0'; i--)
        f[i] = 0;
    return (size_t)snprintf(buf, cap, "%lld.%ss", (long long)s, f);
}

void sim_duration(char *buf, size_t cap, int64_t ms)
{
    if (ms < 0)
        ms = 0;
    if (ms < 1000) {
        snprintf(buf, cap, "%lldms", (long long)ms);
        return;
    }
    if (ms < 60000) {
        s_seconds(buf, cap, ms);
        return;
    }
    int64_t h = ms / 3600000, m = (ms / 60000) % 60;
    size_t n =
        h ? (size_t)snprintf(buf, cap, "%lldh%lldm", (long long)h, (long long)m)
          : (size_t)snprintf(buf, cap, "%lldm", (long long)m);
    if (n < cap)
        s_seconds(buf + n, cap - n, ms % 60000);
}

void sim_rfc3339(char *buf, size_t cap, int64_t wall_ms)
{
    time_t t = (time_t)(wall_ms / 1000);
    struct tm tm;
    gmtime_r(&t, &tm);
    char base[32];
    strftime(base, sizeof(base), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, cap, "%s.%03dZ", base, (int)(wall_ms % 1000));
}
