/*  llmq_jsonl.c - input and output lines of `llmq run`, and resume.

    Design. llmq_jsonl_read_input reads a file whole into items (the batch
    path; `llmq run` streams IN: llmq_runner.c). A line that cannot be used
    is an item with an error, answered by an error line. Output is appended
    as results arrive, whole lines in one write() per burst (the writer
    holds a burst's lines until the caller flushes), so a crash or kill -9
    leaves a prefix of whole lines plus at most one partial line; resume
    keeps the valid complete lines (an index: custom_id fingerprint ->
    offset), drops the rest, and the finished run rewrites the file in
    input order through a temp file and rename(), copying each line from
    its offset, so a reader never sees a half-written file.
*/
#define _GNU_SOURCE /* memmem */
#include "llmq_jsonl.h"
#include "llmq_value.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <math.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

struct _llmq_jsonl_writer_t {
    int fd;                   /* O_APPEND file descriptor */
    int64_t last_sync;        /* zclock_mono() of the last fsync */
    bool dirty;               /* written since the last fsync */
    bool is_stdout;           /* "-": a dup of stdout, never fsynced */
    uint64_t offset;          /* where the next line goes */
    llmq_value_buf_t pending; /* whole lines not written yet */
};

uint64_t llmq_jsonl_fnv1a(const void *data, size_t size)
{
    const uint8_t *p = (const uint8_t *)data;
    uint64_t hash = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < size; i++) {
        hash ^= p[i];
        hash *= 0x100000001b3ULL;
    }
    return hash;
}

void llmq_jsonl_item_destroy(llmq_jsonl_item_t **self_p)
{
    if (self_p && *self_p) {
        llmq_jsonl_item_t *self = *self_p;
        free(self->custom_id);
        free(self->model);
        cJSON_Delete(self->body);
        free(self->line);
        free(self->error);
        free(self);
        *self_p = NULL;
    }
}

static void s_item_fail(llmq_jsonl_item_t *self, const char *reason)
{
    free(self->error);
    self->error = strdup(reason);
    cJSON_Delete(self->body);
    self->body = NULL;
}

/*  A chat body with one user message (and an optional system message). */
static cJSON *s_chat_body(const char *prompt, const char *system)
{
    cJSON *body = cJSON_CreateObject();
    cJSON *messages = cJSON_AddArrayToObject(body, "messages");
    if (system) {
        cJSON *sys = cJSON_CreateObject();
        cJSON_AddStringToObject(sys, "role", "system");
        cJSON_AddStringToObject(sys, "content", system);
        cJSON_AddItemToArray(messages, sys);
    }
    cJSON *user = cJSON_CreateObject();
    cJSON_AddStringToObject(user, "role", "user");
    cJSON_AddStringToObject(user, "content", prompt);
    cJSON_AddItemToArray(messages, user);
    return body;
}

/*  Strip the query string and a trailing slash, then match the op. */
static int s_op_from_url(const char *url)
{
    char path[128];
    size_t size = strnlen(url, sizeof path - 1); //  as snprintf cut it
    memcpy(path, url, size);
    path[size] = 0;
    char *query = strchr(path, '?');
    if (query)
        *query = 0;
    size_t len = strlen(path);
    if (len > 1 && path[len - 1] == '/')
        path[len - 1] = 0;
    if (streq(path, "/v1/chat/completions") || streq(path, "/chat/completions"))
        return LLMQ_OP_CHAT;
    if (streq(path, "/v1/completions") || streq(path, "/completions"))
        return LLMQ_OP_COMPLETION;
    if (streq(path, "/v1/embeddings") || streq(path, "/embeddings"))
        return LLMQ_OP_EMBEDDING;
    return -1;
}

int llmq_jsonl_op_from_url(const char *url)
{
    return url ? s_op_from_url(url) : -1;
}

static void s_parse_object(llmq_jsonl_item_t *self, cJSON *json)
{
    cJSON *custom_id = cJSON_GetObjectItem(json, "custom_id");
    if (custom_id && !cJSON_IsNull(custom_id)) {
        if (!cJSON_IsString(custom_id) || !*custom_id->valuestring) {
            s_item_fail(self, "custom_id must be a non-empty string");
            return;
        }
        if (strlen(custom_id->valuestring) > LLMQ_JSONL_MAX_ID) {
            s_item_fail(self, "custom_id is longer than 512 bytes");
            return;
        }
        free(self->custom_id);
        self->custom_id = strdup(custom_id->valuestring);
    }
    cJSON *url = cJSON_GetObjectItem(json, "url");
    cJSON *body = cJSON_GetObjectItem(json, "body");
    cJSON *prompt = cJSON_GetObjectItem(json, "prompt");
    if (url || body) {
        //  OpenAI Batch API input line.
        cJSON *method = cJSON_GetObjectItem(json, "method");
        if (method &&
            (!cJSON_IsString(method) || !streq(method->valuestring, "POST"))) {
            s_item_fail(self, "method must be POST");
            return;
        }
        int op = LLMQ_OP_CHAT;
        if (url) {
            if (!cJSON_IsString(url) ||
                (op = s_op_from_url(url->valuestring)) < 0) {
                s_item_fail(self, "unsupported url (use /v1/chat/completions, "
                                  "/v1/completions or /v1/embeddings)");
                return;
            }
        }
        if (!cJSON_IsObject(body)) {
            s_item_fail(self, "body must be a JSON object");
            return;
        }
        self->op = (llmq_op_t)op;
        self->body = cJSON_Duplicate(body, true);
    } else if (prompt) {
        if (!cJSON_IsString(prompt)) {
            s_item_fail(self, "prompt must be a string");
            return;
        }
        cJSON *system = cJSON_GetObjectItem(json, "system");
        self->body =
            s_chat_body(prompt->valuestring,
                        cJSON_IsString(system) ? system->valuestring : NULL);
        //  Carry the usual sampling fields over to the body.
        const char *keep[] = {"model", "max_tokens", "temperature", "top_p",
                              "seed",  "stop",       NULL};
        for (int i = 0; keep[i]; i++) {
            cJSON *value = cJSON_GetObjectItem(json, keep[i]);
            if (value)
                cJSON_AddItemToObject(self->body, keep[i],
                                      cJSON_Duplicate(value, true));
        }
    } else if (cJSON_IsArray(cJSON_GetObjectItem(json, "messages"))) {
        self->body = cJSON_Duplicate(json, true);
        cJSON_DeleteItemFromObject(self->body, "custom_id");
    } else {
        s_item_fail(self, "line has none of url/body, prompt or messages");
        return;
    }
    if (!self->body) {
        s_item_fail(self, "out of memory");
        return;
    }
    cJSON *model = cJSON_GetObjectItem(self->body, "model");
    if (model && cJSON_IsString(model) && *model->valuestring)
        self->model = strdup(model->valuestring);
    else if (model && !cJSON_IsNull(model))
        s_item_fail(self, "model must be a non-empty string");
}

llmq_jsonl_item_t *llmq_jsonl_parse_line(const char *line, size_t len,
                                         size_t line_no)
{
    llmq_jsonl_item_t *self = (llmq_jsonl_item_t *)calloc(1, sizeof(*self));
    if (!self)
        return NULL;
    self->line_no = line_no;
    self->op = LLMQ_OP_CHAT;
    self->custom_id = zsys_sprintf("line-%zu", line_no);
    while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
        len--;
    //  A UTF-8 byte order mark (editors on Windows write one) is not text.
    if (len >= 3 && memcmp(line, "\xEF\xBB\xBF", 3) == 0) {
        line += 3;
        len -= 3;
    }
    size_t start = 0;
    while (start < len && (line[start] == ' ' || line[start] == '\t'))
        start++;
    if (start < len && line[start] == '{') {
        cJSON *json = cJSON_ParseWithLength(line + start, len - start);
        if (!json || !cJSON_IsObject(json))
            s_item_fail(self, "line is not valid JSON");
        else
            s_parse_object(self, json);
        cJSON_Delete(json);
    } else {
        //  Plain text: the whole line is the prompt.
        char *prompt = (char *)malloc(len + 1);
        if (prompt) {
            memcpy(prompt, line, len);
            prompt[len] = 0;
            if (strlen(prompt) != len)
                s_item_fail(self, "line holds a NUL byte");
            else
                self->body = s_chat_body(prompt, NULL);
            free(prompt);
        }
    }
    return self;
}

static void s_item_destructor(void **item)
{
    llmq_jsonl_item_destroy((llmq_jsonl_item_t **)item);
}

cJSON *llmq_jsonl_item_body(llmq_jsonl_item_t *self)
{
    if (!self->body && self->line && !self->error) {
        llmq_jsonl_item_t *again = llmq_jsonl_parse_line(
            self->line, strlen(self->line), self->line_no);
        if (again) {
            self->body = again->body;
            again->body = NULL;
            llmq_jsonl_item_destroy(&again);
        }
    }
    return self->body;
}

zlistx_t *llmq_jsonl_read_input(const char *path, bool keep_bodies, char *err,
                                size_t errlen)
{
    FILE *file = streq(path, "-") ? stdin : fopen(path, "r");
    if (!file) {
        snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
        return NULL;
    }
    zlistx_t *items = zlistx_new();
    zlistx_set_destructor(items, s_item_destructor);
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    size_t line_no = 0;
    while ((len = getline(&line, &cap, file)) >= 0) {
        line_no++;
        bool blank = true;
        for (ssize_t i = 0; i < len && blank; i++)
            if (!isspace((unsigned char)line[i]))
                blank = false;
        if (blank)
            continue;
        llmq_jsonl_item_t *item =
            llmq_jsonl_parse_line(line, (size_t)len, line_no);
        //  A line the protocol cannot carry is answered by an error line,
        //  never sent (a frame over the limit would only be dropped, and
        //  resent after every reconnect).
        if (item && (size_t)len > LLMQ_JSONL_MAX_LINE && !item->error) {
            cJSON_Delete(item->body);
            item->body = NULL;
            item->error = zsys_sprintf(
                "line too large: %zd bytes (the protocol's limit is %lld)", len,
                (long long)LLMQ_JSONL_MAX_LINE);
        }
        if (item && item->body && !keep_bodies) {
            //  Keep the text, parse again at submit time.
            item->line = (char *)malloc((size_t)len + 1);
            if (item->line) {
                memcpy(item->line, line, (size_t)len);
                item->line[len] = 0;
                cJSON_Delete(item->body);
                item->body = NULL;
            }
        }
        if (item)
            zlistx_add_end(items, item);
    }
    bool failed = ferror(file);
    free(line);
    if (file != stdin)
        fclose(file);
    if (failed) {
        snprintf(err, errlen, "read error on %s", path);
        zlistx_destroy(&items);
    }
    return items;
}

//  --------------------------------------------------------------------------
//  Output lines
//
//  An OUT line is OpenAI's batch output line, field for field, plus one
//  object of llmq's own (`llmq`), so the OpenAI fields hold only what
//  OpenAI puts there:
//    {"id": "batch_req_<32 hex>", "custom_id",
//     "response": {"status_code", "request_id", "body"} | null,
//     "error": {"code", "message"} | null,
//     "llmq": {"cost_usd", "cached", "traceparent", "model", "worker",
//              "attempts", "error_code"}}
//  The provider answered (a body, or an HTTP error 4xx/5xx): `response` has
//  its status, its request id and its body unchanged (an error body too),
//  and `error` is null, as OpenAI writes it. No HTTP answer (a timeout, a
//  dead connection, llmq's own refusals): `response` null, `error` set.
//  Lines are written as text: a body travels from msgpack straight into the
//  line (llmq_value_buf_json), never through a cJSON tree.

//  Ids and traceparents: one random seed per process (so runs differ) mixed
//  with a counter or a line number (so lines differ) through splitmix64, a
//  bijection: distinct inputs give distinct outputs.
static uint64_t s_mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static uint64_t s_seed(int which)
{
    static uint64_t seeds[2];
    static bool ready;
    if (!ready) {
        if (getrandom(seeds, sizeof seeds, 0) != (ssize_t)sizeof seeds) {
            seeds[0] = s_mix((uint64_t)zclock_time() ^ (uint64_t)getpid());
            seeds[1] = s_mix(seeds[0] ^ (uint64_t)zclock_usecs());
        }
        ready = true;
    }
    return seeds[which];
}

static void s_hex64(char *out, uint64_t value)
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 15; i >= 0; i--, value >>= 4)
        out[i] = hex[value & 15];
}

void llmq_jsonl_new_id(char *id)
{
    static uint64_t counter;
    uint64_t n = __atomic_fetch_add(&counter, 1, __ATOMIC_RELAXED);
    memcpy(id, "batch_req_", 10);
    //  Each half alone differs from line to line (s_mix is a bijection);
    //  the two seeds make a run's ids differ from another run's.
    s_hex64(id + 10, s_mix(s_seed(0) ^ n));
    s_hex64(id + 26, s_mix(s_seed(1) + n));
    id[42] = 0;
}

bool llmq_jsonl_traceparent_valid(const char *text, size_t len)
{
    if (len != 55)
        return false;
    bool trace_zero = true, span_zero = true;
    for (size_t i = 0; i < len; i++) {
        bool is_dash = i == 2 || i == 35 || i == 52;
        char c = text[i];
        if (is_dash != (c == '-'))
            return false;
        if (!is_dash && !((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')))
            return false;
        if (i > 2 && i < 35 && c != '0')
            trace_zero = false;
        if (i > 35 && i < 52 && c != '0')
            span_zero = false;
    }
    //  Version ff is forbidden; all-zero ids are invalid (W3C Trace Context).
    return memcmp(text, "ff", 2) != 0 && !trace_zero && !span_zero;
}

/*  The value of a "traceparent" key in JSON text, if it is a valid
    traceparent. A key inside a string value cannot match: there its quotes
    are escaped. */
static bool s_find_traceparent(const char *json, size_t len, char *out)
{
    static const char key[] = "\"traceparent\"";
    //  Most lines have none: one memmem says so, not a memchr per quote.
    const char *p = (const char *)memmem(json, len, key, sizeof key - 1);
    const char *end = json + len;
    while (p && p < end) {
        p = (const char *)memchr(p, '"', (size_t)(end - p));
        if (!p || (size_t)(end - p) < sizeof key - 1)
            break;
        if (memcmp(p, key, sizeof key - 1) != 0) {
            p++;
            continue;
        }
        const char *q = p + sizeof key - 1;
        p = q;
        while (q < end && (*q == ' ' || *q == '\t'))
            q++;
        if (q >= end || *q++ != ':')
            continue;
        while (q < end && (*q == ' ' || *q == '\t'))
            q++;
        if (end - q >= 57 && *q == '"' && q[56] == '"' &&
            llmq_jsonl_traceparent_valid(q + 1, 55)) {
            memcpy(out, q + 1, 55);
            out[55] = 0;
            return true;
        }
    }
    return false;
}

const char *llmq_jsonl_traceparent(const char *line, size_t len,
                                   uint64_t line_no, char *out)
{
    if (line && s_find_traceparent(line, len, out))
        return out;
    //  Stable for one line within a run (a retry keeps it), new per run.
    uint64_t a = s_mix(s_mix(s_seed(0)) ^ line_no);
    uint64_t b = s_mix(s_mix(s_seed(1)) + line_no);
    memcpy(out, "00-", 3);
    s_hex64(out + 3, a | 1); //  never all zero
    s_hex64(out + 19, b);
    out[35] = '-';
    s_hex64(out + 36, s_mix(a ^ b) | 1);
    memcpy(out + 52, "-01", 4);
    return out;
}

/*  What one OUT line says; NULL/0 fields are left out or null. */
typedef struct {
    const char *custom_id;
    int status;                  /* response.status_code; 0: response null */
    const char *request_id;      /* response.request_id */
    const cJSON *body;           /* response.body as a tree, or */
    const uint8_t *body_mp;      /* as msgpack (body_mp_size bytes), or */
    size_t body_mp_size;         /* neither: an error body built from */
    const char *code;            /* llmq's error code: error.code, or with a
                                    response, llmq.error_code (NULL: ok) */
    const char *message;         /* error.message, or the built body's */
    const llmq_result_t *result; /* the llmq object's source, or NULL */
} s_line_t;

static void s_put(llmq_value_buf_t *buf, const char *text)
{
    llmq_value_buf_add(buf, text, strlen(text));
}

static void s_put_str(llmq_value_buf_t *buf, const char *text)
{
    if (text)
        llmq_value_buf_str(buf, text, strlen(text));
    else
        s_put(buf, "null");
}

/*  OpenAI's error type for an HTTP status, for an error body llmq has to
    build (a worker that did not pass the provider's own on). */
static const char *s_error_type(int status)
{
    return status == 429   ? "requests"
           : status >= 500 ? "server_error"
                           : "invalid_request_error";
}

/*  The body of the response: as it came, else an OpenAI-shaped error
    body. -1: a success body that is not valid msgpack. */
static int s_put_body(llmq_value_buf_t *buf, const s_line_t *line)
{
    if (line->body_mp && llmq_value_buf_json(buf, line->body_mp,
                                             line->body_mp_size, NULL, 0) == 0)
        return 0;
    if (line->body_mp && !line->code)
        return -1;
    char *text = line->body ? cJSON_PrintUnformatted(line->body) : NULL;
    if (text) {
        s_put(buf, text);
        free(text);
        return 0;
    }
    if (!line->code) {
        s_put(buf, "{}");
        return 0;
    }
    s_put(buf, "{\"error\":{\"message\":");
    s_put_str(buf, line->message ? line->message : "");
    s_put(buf, ",\"type\":");
    s_put_str(buf, s_error_type(line->status));
    s_put(buf, ",\"param\":null,\"code\":null}}");
    return 0;
}

/*  A cost in USD to 12 decimals (a picodollar), trailing zeros dropped:
    integer digits, no printf on every line. Not finite or negative: 0. */
static void s_put_cost(llmq_value_buf_t *buf, double cost)
{
    if (!isfinite(cost) || cost <= 0 || cost >= 1e6) {
        char number[32] = "0";
        if (isfinite(cost) && cost > 0)
            snprintf(number, sizeof number, "%.15g", cost);
        s_put(buf, number);
        return;
    }
    int64_t units = llround(cost * 1e12);
    llmq_value_buf_int(buf, units / 1000000000000LL);
    int64_t frac = units % 1000000000000LL;
    if (!frac)
        return;
    char digits[14] = ".000000000000";
    for (int i = 12; i > 0; i--, frac /= 10)
        digits[i] = (char)('0' + frac % 10);
    size_t len = 13;
    while (digits[len - 1] == '0')
        len--;
    llmq_value_buf_add(buf, digits, len);
}

/*  The `llmq` object: cost, cache, trace, who answered. */
static void s_put_extras(llmq_value_buf_t *buf, const s_line_t *line)
{
    const llmq_result_t *r = line->result;
    s_put(buf, "{\"cost_usd\":");
    s_put_cost(buf, r ? r->cost_usd : 0);
    s_put(buf, r && r->cached ? ",\"cached\":true" : ",\"cached\":false");
    s_put(buf, ",\"traceparent\":");
    s_put_str(buf, r ? r->trace : NULL);
    s_put(buf, ",\"model\":");
    s_put_str(buf, r ? r->model : NULL);
    s_put(buf, ",\"worker\":");
    s_put_str(buf, r ? r->worker : NULL);
    s_put(buf, ",\"attempts\":");
    llmq_value_buf_int(buf, r ? r->attempts : 0);
    s_put(buf, ",\"error_code\":");
    s_put_str(buf, line->code);
    s_put(buf, "}");
}

/*  Append the whole line, with its newline, to buf. Returns 0, or -1 (out
    of memory, or a success body that is not valid msgpack: buf as it was,
    its oom flag cleared). */
static int s_line_into(llmq_value_buf_t *buf, const s_line_t *line)
{
    size_t mark = buf->size;
    char id[LLMQ_JSONL_LINE_ID_SIZE];
    llmq_jsonl_new_id(id);
    s_put(buf, "{\"id\":\"");
    llmq_value_buf_add(buf, id, LLMQ_JSONL_LINE_ID_SIZE - 1);
    s_put(buf, "\",\"custom_id\":");
    s_put_str(buf, line->custom_id);
    int rc = 0;
    if (line->status > 0) {
        s_put(buf, ",\"response\":{\"status_code\":");
        llmq_value_buf_int(buf, line->status);
        s_put(buf, ",\"request_id\":");
        s_put_str(buf, line->request_id ? line->request_id : "");
        s_put(buf, ",\"body\":");
        rc = s_put_body(buf, line);
        s_put(buf, "},\"error\":null");
    } else {
        s_put(buf, ",\"response\":null,\"error\":{\"code\":");
        s_put_str(buf, line->code ? line->code : "internal");
        s_put(buf, ",\"message\":");
        s_put_str(buf, line->message ? line->message : "");
        s_put(buf, "}");
    }
    if (rc == 0) {
        s_put(buf, ",\"llmq\":");
        s_put_extras(buf, line);
        s_put(buf, "}\n");
    }
    if (rc == 0 && !buf->oom)
        return 0;
    buf->oom = false;
    buf->size = mark;
    if (buf->data)
        buf->data[mark] = 0;
    return -1;
}

/*  The whole line, with its newline (caller frees), or NULL (out of
    memory, or a success body that is not valid msgpack). */
static char *s_line(const s_line_t *line)
{
    llmq_value_buf_t buf = {0};
    if (s_line_into(&buf, line) == 0)
        return buf.data;
    free(buf.data);
    return NULL;
}

char *llmq_jsonl_ok_line(const char *custom_id, const char *request_id,
                         const cJSON *body)
{
    cJSON *body_id = cJSON_GetObjectItem(body, "id");
    s_line_t line = {.custom_id = custom_id, .status = 200, .body = body};
    line.request_id = request_id                ? request_id
                      : cJSON_IsString(body_id) ? body_id->valuestring
                                                : NULL;
    return s_line(&line);
}

char *llmq_jsonl_error_line(const char *custom_id, const char *request_id,
                            const char *code, const char *message, int status)
{
    s_line_t line = {.custom_id = custom_id,
                     .request_id = request_id,
                     .code = code ? code : "internal",
                     .message = message};
    //  An HTTP error answer is a response; anything else is an error.
    line.status = status >= 400 && status <= 599 ? status : 0;
    return s_line(&line);
}

/*  The "id" string a JSON object starts with ({"id":"...), the key
    OpenAI's bodies put first: request_id for a worker that sent none. */
static char *s_leading_id(const uint8_t *body, size_t size)
{
    llmq_value_buf_t buf = {0};
    char *id = NULL;
    if (llmq_value_buf_json(&buf, body, size, NULL, 0) == 0 &&
        strncmp(buf.data, "{\"id\":\"", 7) == 0) {
        size_t len = strcspn(buf.data + 7, "\"\\");
        if (buf.data[7 + len] == '"')
            id = strndup(buf.data + 7, len);
    }
    free(buf.data);
    return id;
}

/*  Append the output line of a result to buf. Returns 0, or -1 (out of
    memory: buf as it was). */
static int s_result_into(llmq_value_buf_t *buf, const char *custom_id,
                         const llmq_result_t *result)
{
    s_line_t line = {.custom_id = custom_id,
                     .request_id = result->request_id,
                     .result = result};
    if (result->ok) {
        line.status = 200;
        line.body = result->body;
        line.body_mp = result->body_msgpack;
        line.body_mp_size = result->body_msgpack_size;
        cJSON *body_id = cJSON_GetObjectItem(result->body, "id");
        if (!line.request_id && cJSON_IsString(body_id))
            line.request_id = body_id->valuestring;
        char *leading = !line.request_id && line.body_mp
                            ? s_leading_id(line.body_mp, line.body_mp_size)
                            : NULL;
        if (leading)
            line.request_id = leading;
        int rc = s_line_into(buf, &line);
        free(leading);
        if (rc == 0 || !line.body_mp)
            return rc;
        //  A worker sent a body that is not msgpack: an error line.
        line.status = 0;
        line.code = "internal";
        line.message = "response body is not valid msgpack";
        return s_line_into(buf, &line);
    }
    line.code = result->error_code ? result->error_code : "internal";
    line.message = result->error_message;
    int status = result->error_status;
    if (status >= 400 && status <= 599) {
        line.status = status;
        line.body_mp = result->error_body;
        line.body_mp_size = result->error_body_size;
    }
    return s_line_into(buf, &line);
}

char *llmq_jsonl_result_line(const char *custom_id, const llmq_result_t *result)
{
    llmq_value_buf_t buf = {0};
    if (s_result_into(&buf, custom_id, result) == 0)
        return buf.data;
    free(buf.data);
    return NULL;
}

/*  A line's status_code, read from its text: the first "response" key is
    the line's own (custom_id is a string: a key cannot hide in it, and
    "id" and "custom_id" come first). -2: not in that form. */
static int s_status_of(const char *line)
{
    const char *p = strstr(line, "\"response\":");
    if (!p)
        return -2;
    p += 11;
    while (*p == ' ')
        p++;
    if (strncmp(p, "null", 4) == 0)
        return -1;
    if (*p++ != '{')
        return -2;
    while (*p == ' ')
        p++;
    if (strncmp(p, "\"status_code\":", 14) != 0)
        return -2;
    p += 14;
    while (*p == ' ')
        p++;
    char *end;
    long status = strtol(p, &end, 10);
    return end > p && status >= 0 && status < 1000 ? (int)status : -2;
}

bool llmq_jsonl_json_failed(const cJSON *line)
{
    const cJSON *response = cJSON_GetObjectItem(line, "response");
    const cJSON *status = cJSON_GetObjectItem(response, "status_code");
    const cJSON *error = cJSON_GetObjectItem(line, "error");
    return !cJSON_IsNumber(status) || status->valuedouble < 200 ||
           status->valuedouble >= 300 || (error && !cJSON_IsNull(error));
}

bool llmq_jsonl_line_failed(const char *line)
{
    int status = s_status_of(line);
    if (status == -1 || (status >= 0 && (status < 200 || status >= 300)))
        return true;
    //  A 2xx with its error null, as every line llmq and OpenAI write.
    if (status >= 0 && strstr(line, "\"error\":null"))
        return false;
    cJSON *json = cJSON_Parse(line);
    bool failed = llmq_jsonl_json_failed(json);
    cJSON_Delete(json);
    return failed;
}

//  --------------------------------------------------------------------------
//  Resume

zhashx_t *llmq_jsonl_scan_output(const char *path, bool retry_failed,
                                 size_t *dropped_p, char *err, size_t errlen)
{
    size_t dropped = 0;
    zhashx_t *lines = zhashx_new();
    zhashx_set_destructor(lines, (zhashx_destructor_fn *)zstr_free);
    FILE *file = streq(path, "-") ? NULL : fopen(path, "r");
    if (!file && streq(path, "-"))
        errno = ENOENT; //  stdout: nothing to resume
    if (!file) {
        if (errno != ENOENT) {
            snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
            zhashx_destroy(&lines);
        }
        if (dropped_p)
            *dropped_p = 0;
        return lines;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    while ((len = getline(&line, &cap, file)) >= 0) {
        //  A line without its newline is what a kill leaves behind.
        if (len == 0 || line[len - 1] != '\n') {
            dropped++;
            continue;
        }
        cJSON *json = cJSON_ParseWithLength(line, (size_t)len);
        cJSON *custom_id = cJSON_GetObjectItem(json, "custom_id");
        if (!cJSON_IsObject(json) || !cJSON_IsString(custom_id) ||
            !cJSON_HasObjectItem(json, "response") ||
            (retry_failed && llmq_jsonl_json_failed(json))) {
            dropped++;
        } else if (zhashx_lookup(lines, custom_id->valuestring))
            dropped++;
        else
            zhashx_insert(lines, custom_id->valuestring, strdup(line));
        cJSON_Delete(json);
    }
    free(line);
    fclose(file);
    if (dropped_p)
        *dropped_p = dropped;
    return lines;
}

static int s_write_all(int fd, const char *data, size_t size)
{
    while (size > 0) {
        ssize_t rc = write(fd, data, size);
        if (rc < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        data += rc;
        size -= (size_t)rc;
    }
    return 0;
}

int llmq_jsonl_write_ordered(const char *path, zlistx_t *items, zhashx_t *lines)
{
    if (streq(path, "-"))
        return 0; //  stdout had every line as it came
    char *temp = zsys_sprintf("%s.tmp.%d", path, (int)getpid());
    int fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        free(temp);
        return -1;
    }
    //  Buffer the writes: a large file in one pass, not one syscall a line.
    size_t cap = 1 << 20, used = 0;
    char *buffer = (char *)malloc(cap);
    int rc = buffer ? 0 : -1;
    zhashx_t *written = zhashx_new();
    llmq_jsonl_item_t *item =
        items ? (llmq_jsonl_item_t *)zlistx_first(items) : NULL;
    const char *line = NULL;
    //  Pass 1: input order; pass 2: lines of other runs, kept.
    for (int pass = 0; pass < 2 && rc == 0; pass++) {
        if (pass == 1)
            line = (const char *)zhashx_first(lines);
        while (rc == 0) {
            const char *key;
            if (pass == 0) {
                if (!item)
                    break;
                key = item->custom_id;
                line = (const char *)zhashx_lookup(lines, key);
                item = (llmq_jsonl_item_t *)zlistx_next(items);
            } else {
                if (!line)
                    break;
                key = (const char *)zhashx_cursor(lines);
            }
            if (line && !zhashx_lookup(written, key)) {
                zhashx_insert(written, key, (void *)line);
                size_t size = strlen(line);
                if (used + size > cap) {
                    rc = s_write_all(fd, buffer, used);
                    used = 0;
                }
                if (size > cap)
                    rc = rc ? rc : s_write_all(fd, line, size);
                else {
                    memcpy(buffer + used, line, size);
                    used += size;
                }
            }
            if (pass == 1)
                line = (const char *)zhashx_next(lines);
        }
    }
    if (rc == 0 && used)
        rc = s_write_all(fd, buffer, used);
    if (rc == 0)
        rc = fsync(fd);
    if (close(fd) != 0)
        rc = -1;
    if (rc == 0)
        rc = rename(temp, path);
    if (rc != 0)
        unlink(temp);
    zhashx_destroy(&written);
    free(buffer);
    free(temp);
    return rc;
}

//  --------------------------------------------------------------------------
//  Index of OUT: custom_id fingerprint -> offset of its line

/*  off holds the offset in its low bits, and two flags. */
#define S_FAILED ((uint64_t)1 << 62) /* an error line */
#define S_USED ((uint64_t)1 << 63)   /* written by the ordered rewrite */
#define S_OFFSET (S_FAILED - 1)

typedef struct {
    uint64_t fp;  /* llmq_jsonl_fnv1a of the custom_id */
    uint64_t off; /* offset of the line in OUT, and flags */
} s_entry_t;

struct _llmq_jsonl_index_t {
    s_entry_t *entries; /* [0, sorted): by (fp, offset); then as added */
    size_t size;        /* entries used */
    size_t cap;         /* entries allocated */
    size_t sorted;      /* entries of the scan, sorted */
};

static int s_entry_cmp(const void *a, const void *b)
{
    const s_entry_t *x = (const s_entry_t *)a, *y = (const s_entry_t *)b;
    if (x->fp != y->fp)
        return x->fp < y->fp ? -1 : 1;
    uint64_t xo = x->off & S_OFFSET, yo = y->off & S_OFFSET;
    return xo < yo ? -1 : xo > yo;
}

int llmq_jsonl_index_add(llmq_jsonl_index_t *self, uint64_t fp, uint64_t offset,
                         bool failed)
{
    if (self->size == self->cap) {
        size_t cap = self->cap ? self->cap * 2 : 1024;
        s_entry_t *grown =
            (s_entry_t *)realloc(self->entries, cap * sizeof(*grown));
        if (!grown)
            return -1;
        self->entries = grown;
        self->cap = cap;
    }
    self->entries[self->size].fp = fp;
    self->entries[self->size++].off =
        (offset & S_OFFSET) | (failed ? S_FAILED : 0);
    return 0;
}

/*  Sort every entry; a later line of a fingerprint is dropped (the first
    wins). Returns how many were dropped. */
static size_t s_index_sort(llmq_jsonl_index_t *self)
{
    if (self->size > 1)
        qsort(self->entries, self->size, sizeof(s_entry_t), s_entry_cmp);
    size_t kept = 0;
    for (size_t i = 0; i < self->size; i++)
        if (kept == 0 || self->entries[kept - 1].fp != self->entries[i].fp)
            self->entries[kept++] = self->entries[i];
    size_t dropped = self->size - kept;
    self->size = self->sorted = kept;
    return dropped;
}

static s_entry_t *s_index_find(llmq_jsonl_index_t *self, uint64_t fp)
{
    s_entry_t key = {fp, 0};
    size_t lo = 0, hi = self->sorted;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (s_entry_cmp(&self->entries[mid], &key) < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < self->sorted && self->entries[lo].fp == fp ? &self->entries[lo]
                                                           : NULL;
}

bool llmq_jsonl_index_has(llmq_jsonl_index_t *self, uint64_t fp, bool *failed_p)
{
    s_entry_t *entry = s_index_find(self, fp);
    if (failed_p)
        *failed_p = entry && (entry->off & S_FAILED);
    return entry != NULL;
}

size_t llmq_jsonl_index_size(llmq_jsonl_index_t *self)
{
    return self->size;
}

void llmq_jsonl_index_destroy(llmq_jsonl_index_t **self_p)
{
    if (self_p && *self_p) {
        free((*self_p)->entries);
        free(*self_p);
        *self_p = NULL;
    }
}

/*  One line of OUT (len bytes at offset): indexed, or counted in
 *dropped_p. */
static void s_index_line(llmq_jsonl_index_t *self, const char *line,
                         ssize_t len, uint64_t offset, bool retry_failed,
                         size_t *dropped_p)
{
    //  A line without its newline is what a kill leaves behind.
    if (len == 0 || line[len - 1] != '\n') {
        (*dropped_p)++;
        return;
    }
    cJSON *json = cJSON_ParseWithLength(line, (size_t)len);
    cJSON *custom_id = cJSON_GetObjectItem(json, "custom_id");
    //  Failed: no response, or the provider's HTTP error (error null).
    bool failed = json && llmq_jsonl_json_failed(json);
    if (!cJSON_IsObject(json) || !cJSON_IsString(custom_id) ||
        !cJSON_HasObjectItem(json, "response") || (retry_failed && failed))
        (*dropped_p)++;
    else if (llmq_jsonl_index_add(
                 self,
                 llmq_jsonl_fnv1a(custom_id->valuestring,
                                  strlen(custom_id->valuestring)),
                 offset, failed) != 0)
        (*dropped_p)++;
    cJSON_Delete(json);
}

llmq_jsonl_index_t *llmq_jsonl_index_scan(const char *path, bool retry_failed,
                                          size_t *dropped_p, char *err,
                                          size_t errlen)
{
    size_t dropped = 0;
    if (dropped_p)
        *dropped_p = 0;
    llmq_jsonl_index_t *self =
        (llmq_jsonl_index_t *)calloc(1, sizeof(llmq_jsonl_index_t));
    FILE *file = streq(path, "-") || !self ? NULL : fopen(path, "r");
    if (!file) {
        if (self && !streq(path, "-") && errno != ENOENT) {
            snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
            llmq_jsonl_index_destroy(&self);
        }
        return self;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t len;
    uint64_t offset = 0;
    while ((len = getline(&line, &cap, file)) >= 0) {
        s_index_line(self, line, len, offset, retry_failed, &dropped);
        offset += (uint64_t)len;
    }
    bool failed = ferror(file);
    free(line);
    fclose(file);
    dropped += s_index_sort(self);
    if (failed) {
        snprintf(err, errlen, "read error on %s", path);
        llmq_jsonl_index_destroy(&self);
    }
    if (dropped_p)
        *dropped_p = dropped;
    return self;
}

/*  Buffered output of the ordered rewrite: a large file in one pass, not
    one syscall a line. */
typedef struct {
    int fd;       /* the temp file */
    char *buffer; /* S_OUT_SIZE bytes */
    size_t used;  /* bytes in buffer */
    int rc;       /* 0, or -1 after a failed write */
} s_out_t;

#define S_OUT_SIZE ((size_t)1 << 20)

static void s_out_put(s_out_t *out, const char *data, size_t size)
{
    if (out->rc == 0 && out->used + size > S_OUT_SIZE) {
        out->rc = s_write_all(out->fd, out->buffer, out->used);
        out->used = 0;
    }
    if (out->rc == 0 && size > S_OUT_SIZE)
        out->rc = s_write_all(out->fd, data, size);
    else if (out->rc == 0) {
        memcpy(out->buffer + out->used, data, size);
        out->used += size;
    }
}

/*  OUT as the ordered rewrite reads it: blocks of S_BLOCK bytes in
    S_SLOTS slots (a block in the slot of its number modulo S_SLOTS). The
    lines of a run are in OUT in the order they finished, which is near
    input order, so a line is mostly in a block already read: one pread a
    block, not one a line. */
#define S_BLOCK ((size_t)1 << 18)
#define S_SLOTS 8

typedef struct {
    int fd;                  /* OUT */
    char *data;              /* S_SLOTS blocks of S_BLOCK bytes */
    uint64_t block[S_SLOTS]; /* block number in the slot, UINT64_MAX: none */
    size_t size[S_SLOTS];    /* bytes read in the slot (less at the end) */
} s_in_t;

/*  The bytes of OUT from offset to the end of its block (*size_p of
    them), or NULL at the end of the file or on a read error. */
static const char *s_in_at(s_in_t *in, uint64_t offset, size_t *size_p)
{
    uint64_t block = offset / S_BLOCK;
    size_t slot = (size_t)(block % S_SLOTS);
    char *data = in->data + slot * S_BLOCK;
    if (in->block[slot] != block) {
        in->block[slot] = UINT64_MAX;
        ssize_t got;
        do
            got = pread(in->fd, data, S_BLOCK, (off_t)(block * S_BLOCK));
        while (got < 0 && errno == EINTR);
        if (got <= 0)
            return NULL;
        in->block[slot] = block;
        in->size[slot] = (size_t)got;
    }
    size_t at = (size_t)(offset - block * S_BLOCK);
    if (at >= in->size[slot])
        return NULL;
    *size_p = in->size[slot] - at;
    return data + at;
}

/*  Copy the line of OUT at offset, through its newline. */
static void s_copy_line(s_out_t *out, s_in_t *in, uint64_t offset)
{
    while (out->rc == 0) {
        size_t got;
        const char *chunk = s_in_at(in, offset, &got);
        if (!chunk) {
            out->rc = -1; //  the index points past the end: OUT changed
            return;
        }
        const char *eol = (const char *)memchr(chunk, '\n', got);
        size_t size = eol ? (size_t)(eol - chunk) + 1 : got;
        s_out_put(out, chunk, size);
        if (eol)
            return;
        offset += size;
    }
}

/*  The ordered lines, then the others, from OUT (in) to out. */
static void s_copy_indexed(s_out_t *out, s_in_t *in, llmq_jsonl_index_t *index,
                           llmq_jsonl_next_fn *next, void *arg)
{
    s_index_sort(index);
    uint64_t fp, offset;
    while (out->rc == 0 && next && next(arg, &fp, &offset)) {
        if (offset != LLMQ_JSONL_NO_OFFSET) {
            s_copy_line(out, in, offset);
            continue;
        }
        s_entry_t *entry = s_index_find(index, fp);
        if (entry && !(entry->off & S_USED)) {
            s_copy_line(out, in, entry->off & S_OFFSET);
            entry->off |= S_USED;
        }
    }
    for (size_t i = 0; out->rc == 0 && i < index->size; i++)
        if (!(index->entries[i].off & S_USED))
            s_copy_line(out, in, index->entries[i].off & S_OFFSET);
    for (size_t i = 0; i < index->size; i++)
        index->entries[i].off &= ~S_USED;
}

int llmq_jsonl_write_indexed(const char *path, llmq_jsonl_index_t *index,
                             llmq_jsonl_next_fn *next, void *arg)
{
    if (streq(path, "-"))
        return 0; //  stdout had every line as it came
    s_in_t in = {.fd = open(path, O_RDONLY)};
    if (in.fd < 0 && (errno != ENOENT || (index && index->size)))
        return -1;
    for (size_t i = 0; i < S_SLOTS; i++)
        in.block[i] = UINT64_MAX;
    char *temp = zsys_sprintf("%s.tmp.%d", path, (int)getpid());
    s_out_t out = {-1, (char *)malloc(S_OUT_SIZE), 0, 0};
    in.data = in.fd >= 0 ? (char *)malloc(S_SLOTS * S_BLOCK) : NULL;
    out.fd = temp ? open(temp, O_WRONLY | O_CREAT | O_TRUNC, 0644) : -1;
    out.rc = out.fd >= 0 && out.buffer && (in.fd < 0 || in.data) ? 0 : -1;
    if (out.rc == 0 && index)
        s_copy_indexed(&out, &in, index, next, arg);
    if (out.rc == 0 && out.used)
        out.rc = s_write_all(out.fd, out.buffer, out.used);
    if (out.rc == 0)
        out.rc = fsync(out.fd);
    if (out.fd >= 0 && close(out.fd) != 0)
        out.rc = -1;
    if (out.rc == 0)
        out.rc = rename(temp, path);
    if (out.rc != 0 && temp)
        unlink(temp);
    if (in.fd >= 0)
        close(in.fd);
    free(in.data);
    free(out.buffer);
    free(temp);
    return out.rc;
}

//  --------------------------------------------------------------------------
//  Appender

/*  A flushed pending buffer larger than this is freed, not kept. */
#define S_PENDING_KEEP ((size_t)1 << 20)

llmq_jsonl_writer_t *llmq_jsonl_writer_new(const char *path)
{
    bool is_stdout = streq(path, "-");
    int fd = is_stdout ? dup(STDOUT_FILENO)
                       : open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd < 0)
        return NULL;
    llmq_jsonl_writer_t *self = (llmq_jsonl_writer_t *)calloc(1, sizeof(*self));
    if (!self) {
        close(fd);
        return NULL;
    }
    self->fd = fd;
    self->is_stdout = is_stdout;
    self->last_sync = zclock_mono();
    off_t end = is_stdout ? 0 : lseek(fd, 0, SEEK_END);
    self->offset = end > 0 ? (uint64_t)end : 0;
    return self;
}

void llmq_jsonl_writer_destroy(llmq_jsonl_writer_t **self_p)
{
    if (self_p && *self_p) {
        llmq_jsonl_writer_t *self = *self_p;
        llmq_jsonl_writer_flush(self);
        if (self->dirty && !self->is_stdout)
            fsync(self->fd);
        close(self->fd);
        free(self->pending.data);
        free(self);
        *self_p = NULL;
    }
}

int llmq_jsonl_writer_write(llmq_jsonl_writer_t *self, const char *line)
{
    llmq_value_buf_add(&self->pending, line, strlen(line));
    if (!self->pending.oom)
        return 0;
    //  Out of memory: the lines held are lost with it.
    free(self->pending.data);
    memset(&self->pending, 0, sizeof self->pending);
    return -1;
}

int llmq_jsonl_writer_result(llmq_jsonl_writer_t *self, const char *custom_id,
                             const llmq_result_t *result)
{
    return s_result_into(&self->pending, custom_id, result);
}

size_t llmq_jsonl_writer_pending(llmq_jsonl_writer_t *self)
{
    return self->pending.size;
}

int llmq_jsonl_writer_flush(llmq_jsonl_writer_t *self)
{
    if (self->pending.size == 0)
        return 0;
    self->dirty = true;
    int rc = s_write_all(self->fd, self->pending.data, self->pending.size);
    if (rc == 0)
        self->offset += self->pending.size;
    self->pending.size = 0;
    //  A run of large lines does not keep its largest buffer.
    if (self->pending.cap > S_PENDING_KEEP) {
        free(self->pending.data);
        memset(&self->pending, 0, sizeof self->pending);
    }
    return rc;
}

uint64_t llmq_jsonl_writer_offset(llmq_jsonl_writer_t *self)
{
    return self->offset + self->pending.size;
}

int llmq_jsonl_writer_sync(llmq_jsonl_writer_t *self, int interval_ms)
{
    int64_t now = zclock_mono();
    if (!self->dirty || self->is_stdout || now - self->last_sync < interval_ms)
        return 0;
    self->last_sync = now;
    self->dirty = false;
    return fsync(self->fd);
}

//  --------------------------------------------------------------------------
//  Selftest

#include "llmq_check.h"
#define CHECK(cond) LLMQ_CHECK_COUNT(cond, failures)

static llmq_jsonl_item_t *s_parse(const char *line, size_t line_no)
{
    return llmq_jsonl_parse_line(line, strlen(line), line_no);
}

//  The selftest's state from step to step: the output file written by the
//  resume step and read back by the ordered rewrite.
typedef struct {
    char path[32];   //  The output file
    char *ok1;       //  Its lines: x1 ok, x2 failed, x3 ok
    char *err2;      //
    char *ok3;       //
    zhashx_t *lines; //  The scan of it, failed lines left out
} s_test_fx_t;

//  OpenAI Batch input lines.
static int s_test_batch_lines(s_test_fx_t *fx)
{
    (void)fx;
    int failures = 0;
    llmq_jsonl_item_t *item = s_parse(
        "{\"custom_id\":\"a1\",\"method\":\"POST\",\"url\":\"/v1/chat/"
        "completions\","
        "\"body\":{\"model\":\"gpt-4o-mini\",\"messages\":[{\"role\":\"user\","
        "\"content\":\"hi\"}]}}\n",
        1);
    CHECK(item && !item->error && streq(item->custom_id, "a1"));
    CHECK(item->op == LLMQ_OP_CHAT && streq(item->model, "gpt-4o-mini"));
    CHECK(cJSON_IsArray(cJSON_GetObjectItem(item->body, "messages")));
    llmq_jsonl_item_destroy(&item);
    item = s_parse("{\"custom_id\":\"e\",\"url\":\"/v1/embeddings\",\"body\":"
                   "{\"input\":\"x\"}}",
                   2);
    CHECK(item && !item->error && item->op == LLMQ_OP_EMBEDDING &&
          !item->model);
    llmq_jsonl_item_destroy(&item);
    item = s_parse(
        "{\"url\":\"/v1/completions\",\"body\":{\"prompt\":\"x\"}}\r\n", 7);
    CHECK(item && !item->error && item->op == LLMQ_OP_COMPLETION);
    CHECK(streq(item->custom_id, "line-7"));
    llmq_jsonl_item_destroy(&item);
    return failures;
}

//  Prompt lines, messages lines, plain text.
static int s_test_prompt_lines(s_test_fx_t *fx)
{
    (void)fx;
    int failures = 0;
    llmq_jsonl_item_t *item = s_parse(
        "{\"prompt\":\"Why?\",\"max_tokens\":5,\"system\":\"be brief\"}", 3);
    CHECK(item && !item->error && streq(item->custom_id, "line-3"));
    cJSON *messages = cJSON_GetObjectItem(item->body, "messages");
    CHECK(cJSON_GetArraySize(messages) == 2);
    CHECK(streq(cJSON_GetObjectItem(cJSON_GetArrayItem(messages, 1), "content")
                    ->valuestring,
                "Why?"));
    CHECK(cJSON_GetObjectItem(item->body, "max_tokens")->valueint == 5);
    llmq_jsonl_item_destroy(&item);
    item = s_parse("{\"custom_id\":\"m\",\"messages\":[{\"role\":\"user\","
                   "\"content\":\"q\"}]}",
                   4);
    CHECK(item && !item->error && streq(item->custom_id, "m"));
    CHECK(!cJSON_HasObjectItem(item->body, "custom_id"));
    llmq_jsonl_item_destroy(&item);
    item = s_parse("\xEF\xBB\xBF{\"custom_id\":\"bom\",\"prompt\":\"x\"}", 1);
    CHECK(item && !item->error && streq(item->custom_id, "bom"));
    llmq_jsonl_item_destroy(&item);
    item = s_parse("What is 2+2?\n", 5);
    CHECK(item && !item->error && streq(item->custom_id, "line-5"));
    messages = cJSON_GetObjectItem(item->body, "messages");
    CHECK(streq(cJSON_GetObjectItem(cJSON_GetArrayItem(messages, 0), "content")
                    ->valuestring,
                "What is 2+2?"));
    llmq_jsonl_item_destroy(&item);
    return failures;
}

//  Bad lines become items with an error, never a crash.
static int s_test_bad_lines(s_test_fx_t *fx)
{
    (void)fx;
    int failures = 0;
    const char *bad[] = {
        "{\"custom_id\":",
        "{\"custom_id\":5,\"prompt\":\"x\"}",
        "{\"url\":\"/v1/images\",\"body\":{}}",
        "{\"url\":\"/v1/chat/completions\",\"body\":[]}",
        "{\"method\":\"GET\",\"url\":\"/v1/chat/completions\",\"body\":{}}",
        "{\"prompt\":42}",
        "{\"nothing\":true}",
        "{\"prompt\":\"x\",\"model\":7}",
        NULL};
    llmq_jsonl_item_t *item;
    for (int i = 0; bad[i]; i++) {
        item = s_parse(bad[i], 10 + (size_t)i);
        CHECK(item && item->error && !item->body);
        if (item && !item->error)
            fprintf(stderr, "accepted: %s\n", bad[i]);
        llmq_jsonl_item_destroy(&item);
    }
    char nul_line[] = "ab\0cd";
    item = llmq_jsonl_parse_line(nul_line, 5, 1);
    CHECK(item && item->error);
    llmq_jsonl_item_destroy(&item);
    return failures;
}

//  The key names of a JSON object, comma-separated, in order.
static void s_keys(const cJSON *object, char *out, size_t size)
{
    out[0] = 0;
    const cJSON *item = NULL;
    cJSON_ArrayForEach(item, object)
    {
        if (out[0])
            strncat(out, ",", size - strlen(out) - 1);
        strncat(out, item->string, size - strlen(out) - 1);
    }
}

//  Checks the OpenAI fields of a line (and the llmq object): key sets, the
//  id form; returns the parsed line (caller deletes) or NULL.
static cJSON *s_check_line(const char *line, int *failures_p)
{
    int failures = 0;
    CHECK(line && line[strlen(line) - 1] == '\n' && !strchr(line, '\n')[1]);
    cJSON *json = line ? cJSON_Parse(line) : NULL;
    char keys[256];
    s_keys(json, keys, sizeof keys);
    CHECK(streq(keys, "id,custom_id,response,error,llmq"));
    cJSON *id = cJSON_GetObjectItem(json, "id");
    CHECK(cJSON_IsString(id) && strlen(id->valuestring) == 42 &&
          strncmp(id->valuestring, "batch_req_", 10) == 0);
    cJSON *response = cJSON_GetObjectItem(json, "response");
    cJSON *error = cJSON_GetObjectItem(json, "error");
    //  Exactly one of response and error, as OpenAI writes them.
    CHECK(cJSON_IsNull(response) != cJSON_IsNull(error));
    s_keys(response, keys, sizeof keys);
    CHECK(cJSON_IsNull(response) || streq(keys, "status_code,request_id,body"));
    s_keys(error, keys, sizeof keys);
    CHECK(cJSON_IsNull(error) || streq(keys, "code,message"));
    s_keys(cJSON_GetObjectItem(json, "llmq"), keys, sizeof keys);
    CHECK(streq(keys, "cost_usd,cached,traceparent,model,worker,attempts,"
                      "error_code"));
    *failures_p += failures;
    return json;
}

static const char *s_str(const cJSON *json, const char *path)
{
    char copy[128];
    snprintf(copy, sizeof copy, "%s", path);
    for (char *key = strtok(copy, "."); key && json; key = strtok(NULL, "."))
        json = cJSON_GetObjectItem(json, key);
    return cJSON_IsString(json) ? json->valuestring : NULL;
}

static double s_num(const cJSON *json, const char *path)
{
    char copy[128];
    snprintf(copy, sizeof copy, "%s", path);
    for (char *key = strtok(copy, "."); key && json; key = strtok(NULL, "."))
        json = cJSON_GetObjectItem(json, key);
    return cJSON_IsNumber(json) ? json->valuedouble : -1;
}

//  Output lines from trees (the batch path): ok, an HTTP error, no answer.
static int s_test_output_lines(s_test_fx_t *fx)
{
    (void)fx;
    int failures = 0;
    cJSON *body = cJSON_Parse("{\"id\":\"chatcmpl-1\",\"choices\":[]}");
    char *line = llmq_jsonl_ok_line("a\"1\xc3\xa9", NULL, body);
    char *again = llmq_jsonl_ok_line("a\"1\xc3\xa9", NULL, body);
    cJSON *json = s_check_line(line, &failures);
    cJSON *twin = s_check_line(again, &failures);
    CHECK(streq(s_str(json, "custom_id"), "a\"1\xc3\xa9"));
    CHECK(s_num(json, "response.status_code") == 200);
    CHECK(streq(s_str(json, "response.request_id"), "chatcmpl-1"));
    CHECK(cJSON_Compare(
        cJSON_GetObjectItem(cJSON_GetObjectItem(json, "response"), "body"),
        body, true));
    //  Same custom_id, same run: two ids.
    CHECK(!streq(s_str(json, "id"), s_str(twin, "id")));
    CHECK(!llmq_jsonl_line_failed(line) && !llmq_jsonl_json_failed(json));
    CHECK(llmq_jsonl_line_failed(
        "{\"custom_id\":\"f\",\"response\":{\"status_code\":200,\"body\":{}},"
        "\"error\":{\"code\":\"x\",\"message\":\"\"}}\n"));
    CHECK(!llmq_jsonl_line_failed(
        "{\"error\": null, \"custom_id\": \"f\", \"response\": "
        "{\"body\": {}, \"status_code\": 201}}\n"));
    cJSON_Delete(json);
    cJSON_Delete(twin);
    cJSON_Delete(body);
    free(line);
    free(again);
    line = llmq_jsonl_error_line("b2", "r9", "invalid_request", "bad \"thing\"",
                                 400);
    json = s_check_line(line, &failures);
    CHECK(cJSON_IsNull(cJSON_GetObjectItem(json, "error")));
    CHECK(s_num(json, "response.status_code") == 400);
    CHECK(streq(s_str(json, "response.request_id"), "r9"));
    CHECK(streq(s_str(json, "response.body.error.message"), "bad \"thing\""));
    CHECK(streq(s_str(json, "response.body.error.type"),
                "invalid_request_error"));
    CHECK(streq(s_str(json, "llmq.error_code"), "invalid_request"));
    CHECK(llmq_jsonl_line_failed(line) && llmq_jsonl_json_failed(json));
    cJSON_Delete(json);
    free(line);
    line = llmq_jsonl_error_line("c3", NULL, "timeout", "gone", 0);
    json = s_check_line(line, &failures);
    CHECK(cJSON_IsNull(cJSON_GetObjectItem(json, "response")));
    CHECK(streq(s_str(json, "error.code"), "timeout") &&
          streq(s_str(json, "error.message"), "gone"));
    CHECK(llmq_jsonl_line_failed(line) && llmq_jsonl_json_failed(json));
    cJSON_Delete(json);
    free(line);
    return failures;
}

//  A msgpack copy of JSON text (caller frees), size in *size_p.
static uint8_t *s_msgpack(const char *text, size_t *size_p)
{
    zframe_t *frame = llmq_value_from_json_text(text, strlen(text), NULL, 0);
    *size_p = frame ? zframe_size(frame) : 0;
    uint8_t *copy = frame ? (uint8_t *)malloc(*size_p) : NULL;
    if (copy)
        memcpy(copy, zframe_data(frame), *size_p);
    zframe_destroy(&frame);
    return copy;
}

//  Output lines from client results with raw bodies: the body and the
//  provider's error body written as they came, the llmq object filled.
static int s_test_result_lines(s_test_fx_t *fx)
{
    (void)fx;
    int failures = 0;
    const char *ok_body =
        "{\"id\":\"chatcmpl-9\",\"object\":\"chat.completion\","
        "\"usage\":{\"prompt_tokens\":3},\"x\":[1.5,null]}";
    llmq_result_t r = {.ok = true,
                       .cost_usd = 0.25,
                       .cached = true,
                       .attempts = 2,
                       .worker = "w1",
                       .model = "m-real",
                       .request_id = "req_abc",
                       .trace = "00-0af7651916cd43dd8448eb211c80319c-"
                                "b7ad6b7169203331-01"};
    r.body_msgpack = s_msgpack(ok_body, &r.body_msgpack_size);
    char *line = llmq_jsonl_result_line("k1", &r);
    cJSON *json = s_check_line(line, &failures);
    CHECK(line && strstr(line, ok_body)); //  byte for byte
    CHECK(streq(s_str(json, "response.request_id"), "req_abc"));
    CHECK(strstr(line, "\"cost_usd\":0.25,"));
    CHECK(s_num(json, "llmq.cost_usd") == 0.25 &&
          s_num(json, "llmq.attempts") == 2);
    CHECK(cJSON_IsTrue(
        cJSON_GetObjectItem(cJSON_GetObjectItem(json, "llmq"), "cached")));
    CHECK(streq(s_str(json, "llmq.traceparent"), r.trace));
    CHECK(streq(s_str(json, "llmq.model"), "m-real") &&
          streq(s_str(json, "llmq.worker"), "w1"));
    CHECK(!llmq_jsonl_line_failed(line));
    cJSON_Delete(json);
    free(line);
    //  No request_id from the worker: the body's id, as before.
    r.request_id = NULL;
    line = llmq_jsonl_result_line("k1", &r);
    json = s_check_line(line, &failures);
    CHECK(streq(s_str(json, "response.request_id"), "chatcmpl-9"));
    cJSON_Delete(json);
    free(line);
    //  A body that is not msgpack: an error line, not a broken one.
    r.body_msgpack_size = 3;
    line = llmq_jsonl_result_line("k1", &r);
    json = s_check_line(line, &failures);
    CHECK(streq(s_str(json, "error.code"), "internal"));
    cJSON_Delete(json);
    free(line);
    free(r.body_msgpack);
    //  An HTTP error: the provider's body unchanged, code and param kept.
    const char *err_body = "{\"error\":{\"message\":\"too long\",\"type\":"
                           "\"invalid_request_error\",\"param\":\"messages\","
                           "\"code\":\"context_length_exceeded\"}}";
    llmq_result_t e = {.error_code = "context_length",
                       .error_message = "m",
                       .error_status = 400,
                       .request_id = "req_e"};
    e.error_body = s_msgpack(err_body, &e.error_body_size);
    line = llmq_jsonl_result_line("k2", &e);
    json = s_check_line(line, &failures);
    CHECK(line && strstr(line, err_body));
    CHECK(cJSON_IsNull(cJSON_GetObjectItem(json, "error")));
    CHECK(s_num(json, "response.status_code") == 400);
    CHECK(streq(s_str(json, "response.request_id"), "req_e"));
    CHECK(streq(s_str(json, "llmq.error_code"), "context_length"));
    CHECK(llmq_jsonl_line_failed(line));
    cJSON_Delete(json);
    free(line);
    free(e.error_body);
    //  A status that is no HTTP error (none, or a 200 that did not parse):
    //  no response.
    e.error_body = NULL;
    e.error_status = 200;
    line = llmq_jsonl_result_line("k3", &e);
    json = s_check_line(line, &failures);
    CHECK(cJSON_IsNull(cJSON_GetObjectItem(json, "response")));
    CHECK(streq(s_str(json, "error.code"), "context_length"));
    cJSON_Delete(json);
    free(line);
    return failures;
}

//  Costs print to the picodollar, from integers; nonsense prints 0.
static int s_test_costs(s_test_fx_t *fx)
{
    (void)fx;
    int failures = 0;
    const double costs[] = {0.00125, 1e-7, 12.5, 3,        1234567.5,
                            1e-13,   -1,   NAN,  INFINITY, 0.000123456789012};
    const char *texts[] = {
        "0.00125", "0.0000001", "12.5", "3", "1234567.5",
        "0",       "0",         "0",    "0", "0.000123456789"};
    for (size_t i = 0; i < sizeof costs / sizeof costs[0]; i++) {
        llmq_result_t r = {.error_code = "timeout", .cost_usd = costs[i]};
        char *line = llmq_jsonl_result_line("c", &r);
        char want[64];
        snprintf(want, sizeof want, "\"cost_usd\":%s,", texts[i]);
        CHECK(line && strstr(line, want));
        if (line && !strstr(line, want))
            fprintf(stderr, "want %s in %s", want, line);
        free(line);
    }
    return failures;
}

//  Traceparents: taken from the line when valid, else made per line.
static int s_test_traceparent(s_test_fx_t *fx)
{
    (void)fx;
    int failures = 0;
    const char *given =
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    char line[256], out[LLMQ_JSONL_TRACEPARENT_SIZE];
    snprintf(line, sizeof line,
             "{\"custom_id\":\"t\",\"metadata\": {\"traceparent\" : \"%s\"}}",
             given);
    CHECK(streq(llmq_jsonl_traceparent(line, strlen(line), 1, out), given));
    //  In a string, or not valid: not taken.
    const char *not_taken[] = {
        "{\"prompt\":\"\\\"traceparent\\\":\\\"00-"
        "4bf92f3577b34da6a3ce929d0e0e47"
        "36-00f067aa0ba902b7-01\\\"\"}",
        "{\"traceparent\":\"00-00000000000000000000000000000000-"
        "00f067aa0ba902b7"
        "-01\"}",
        "{\"traceparent\":\"ff-4bf92f3577b34da6a3ce929d0e0e4736-"
        "00f067aa0ba902b7"
        "-01\"}",
        "{\"traceparent\":\"00-4BF92F3577B34DA6A3CE929D0E0E4736-"
        "00f067aa0ba902b7"
        "-01\"}",
        NULL};
    for (int i = 0; not_taken[i]; i++) {
        llmq_jsonl_traceparent(not_taken[i], strlen(not_taken[i]), 7, out);
        CHECK(!strstr(not_taken[i], out + 3));
        CHECK(llmq_jsonl_traceparent_valid(out, strlen(out)));
    }
    //  Made: valid, the same for the same line, another for another line.
    char again[LLMQ_JSONL_TRACEPARENT_SIZE], other[LLMQ_JSONL_TRACEPARENT_SIZE];
    llmq_jsonl_traceparent(NULL, 0, 7, again);
    llmq_jsonl_traceparent("hello", 5, 8, other);
    CHECK(streq(out, again) && !streq(out, other));
    CHECK(strncmp(out, "00-", 3) == 0 && streq(out + 52, "-01"));
    CHECK(strncmp(out + 3, other + 3, 32) != 0);
    CHECK(strncmp(out + 36, other + 36, 16) != 0);
    return failures;
}

//  Resume: whole lines kept, a partial last line and garbage dropped.
static int s_test_resume(s_test_fx_t *fx)
{
    int failures = 0;
    snprintf(fx->path, sizeof fx->path, "/tmp/llmq-jsonl-test-XXXXXX");
    int fd = mkstemp(fx->path);
    CHECK(fd >= 0);
    close(fd);
    llmq_jsonl_writer_t *writer = llmq_jsonl_writer_new(fx->path);
    CHECK(writer);
    fx->ok1 = llmq_jsonl_ok_line("x1", "r1", NULL);
    fx->err2 = llmq_jsonl_error_line("x2", "r2", "provider_error", "boom", 500);
    fx->ok3 = llmq_jsonl_ok_line("x3", "r3", NULL);
    llmq_jsonl_writer_write(writer, fx->ok3);
    llmq_jsonl_writer_write(writer, fx->err2);
    llmq_jsonl_writer_write(writer, "not json\n");
    llmq_jsonl_writer_write(writer, fx->ok1);
    llmq_jsonl_writer_write(writer, fx->ok1); //  duplicate: first wins
    llmq_jsonl_writer_write(
        writer, "{\"id\":\"batch_req_1\",\"custom_id\":\"x4\",\"resp");
    CHECK(llmq_jsonl_writer_sync(writer, 0) == 0);
    llmq_jsonl_writer_destroy(&writer);
    char err[256] = "";
    size_t dropped = 0;
    zhashx_t *lines =
        llmq_jsonl_scan_output(fx->path, false, &dropped, err, sizeof(err));
    CHECK(lines && zhashx_size(lines) == 3 && dropped == 3);
    CHECK(zhashx_lookup(lines, "x1") && zhashx_lookup(lines, "x2"));
    CHECK(!zhashx_lookup(lines, "x4"));
    zhashx_destroy(&lines);
    fx->lines =
        llmq_jsonl_scan_output(fx->path, true, &dropped, err, sizeof(err));
    CHECK(fx->lines && zhashx_size(fx->lines) == 2 &&
          !zhashx_lookup(fx->lines, "x2"));
    return failures;
}

//  Ordered rewrite: input order, then foreign lines.
static int s_test_ordered(s_test_fx_t *fx)
{
    int failures = 0;
    zlistx_t *items = zlistx_new();
    zlistx_set_destructor(items, s_item_destructor);
    const char *order[] = {"x1", "x9", "x2", NULL}; //  x3 is foreign
    for (int i = 0; order[i]; i++) {
        llmq_jsonl_item_t *item = s_parse("hello", (size_t)i + 1);
        free(item->custom_id);
        item->custom_id = strdup(order[i]);
        zlistx_add_end(items, item);
    }
    zhashx_insert(fx->lines, "x2", strdup(fx->err2));
    CHECK(llmq_jsonl_write_ordered(fx->path, items, fx->lines) == 0);
    FILE *file = fopen(fx->path, "r");
    char buffer[4096];
    size_t size = fread(buffer, 1, sizeof(buffer) - 1, file);
    buffer[size] = 0;
    fclose(file);
    size_t n1 = strlen(fx->ok1), n2 = strlen(fx->err2), n3 = strlen(fx->ok3);
    CHECK(size == n1 + n2 + n3);
    CHECK(strncmp(buffer, fx->ok1, n1) == 0);
    CHECK(strncmp(buffer + n1, fx->err2, n2) == 0);
    CHECK(strncmp(buffer + n1 + n2, fx->ok3, n3) == 0);
    zlistx_destroy(&items);
    zhashx_destroy(&fx->lines);
    free(fx->ok1);
    free(fx->err2);
    free(fx->ok3);
    unlink(fx->path);
    return failures;
}

//  Input file with lazy bodies: blank lines skipped, bodies parsed on use.
static int s_test_lazy_input(s_test_fx_t *fx)
{
    (void)fx;
    int failures = 0;
    char in_path[] = "/tmp/llmq-jsonl-in-XXXXXX";
    int fd = mkstemp(in_path);
    const char *input = "first prompt\n\n   "
                        "\n{\"custom_id\":\"c\",\"prompt\":\"p\"}\n{bad\nlast";
    CHECK(write(fd, input, strlen(input)) == (ssize_t)strlen(input));
    close(fd);
    char err[256] = "";
    zlistx_t *items = llmq_jsonl_read_input(in_path, false, err, sizeof(err));
    CHECK(items && zlistx_size(items) == 4);
    llmq_jsonl_item_t *item =
        items ? (llmq_jsonl_item_t *)zlistx_first(items) : NULL;
    CHECK(item && !item->body && item->line &&
          streq(item->custom_id, "line-1"));
    CHECK(item && llmq_jsonl_item_body(item) && item->line);
    item = items ? (llmq_jsonl_item_t *)zlistx_next(items) : NULL;
    CHECK(item && streq(item->custom_id, "c") && item->line_no == 4);
    item = items ? (llmq_jsonl_item_t *)zlistx_next(items) : NULL;
    CHECK(item && item->error && !item->line && !llmq_jsonl_item_body(item));
    item = items ? (llmq_jsonl_item_t *)zlistx_next(items) : NULL;
    CHECK(item && streq(item->custom_id, "line-6") &&
          llmq_jsonl_item_body(item));
    zlistx_destroy(&items);
    unlink(in_path);
    return failures;
}

//  A missing output file is an empty table; a missing input is an error.
static int s_test_missing(s_test_fx_t *fx)
{
    (void)fx;
    int failures = 0;
    char err[256] = "";
    size_t dropped = 0;
    zhashx_t *lines = llmq_jsonl_scan_output("/nonexistent/llmq/out.jsonl",
                                             false, &dropped, err, sizeof(err));
    CHECK(lines && zhashx_size(lines) == 0);
    zhashx_destroy(&lines);
    CHECK(llmq_jsonl_read_input("/nonexistent/llmq/in.jsonl", false, err,
                                sizeof(err)) == NULL);
    CHECK(strstr(err, "cannot open"));
    return failures;
}

int llmq_jsonl_test(bool verbose)
{
    (void)verbose;
    int failures = 0;
    printf(" * llmq_jsonl: ");
    s_test_fx_t fx;
    memset(&fx, 0, sizeof fx);
    //  The steps, in order: each goes on from where the last one left.
    static int (*const steps[])(s_test_fx_t *) = {
        s_test_batch_lines,  s_test_prompt_lines, s_test_bad_lines,
        s_test_output_lines, s_test_result_lines, s_test_costs,
        s_test_traceparent,  s_test_resume,       s_test_ordered,
        s_test_lazy_input,   s_test_missing};
    for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++)
        failures += steps[i](&fx);

    printf(failures ? "FAILED\n" : "OK\n");
    return failures ? 1 : 0;
}
