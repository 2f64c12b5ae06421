/*  llmq_provider.c - the provider object, its dispatchers, and what the
    providers share: rate-limit header parsing, error classification, key
    scrubbing, token estimates and the streaming assembler.

    Design: providers differ in how a request and an answer look; they agree
    on almost everything else. Both OpenAI and Anthropic error bodies carry
    {error: {type, code?, message}}, so one classifier serves both; both
    families of rate-limit headers are read by one function; both streams
    become OpenAI chunks and one assembler turns chunks into the final body.
*/
/*  strptime() for HTTP dates in retry-after. */
#ifndef _XOPEN_SOURCE
#define _XOPEN_SOURCE 700
#endif
#include "llmq_provider.h"
#include "llmq_log.h"
#include "llmq_sse.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

struct _llmq_provider_t {
    const llmq_provider_ops_t *ops; /* the kind's vtable */
    char *kind;                     /* as configured (sim stays "sim") */
    char *base_url;                 /* without trailing slash */
    char *api_key;                  /* secret: never logged or sent */
    char *anthropic_version;        /* anthropic-version header */
    int64_t default_max_tokens;     /* when a request sets none */
    /*  Built once, shared by every POST (llmq_http_post_text): the JSON
        headers with the key ([1]: and Accept: text/event-stream), and the
        URLs of the routes used so far. */
    struct curl_slist *post_headers[2];
    struct {
        const char *route; /* the provider's literal */
        char *url;         /* {base_url}{route} */
    } urls[8];
};

llmq_op_t llmq_op_from_name(const char *name)
{
    if (!name)
        return LLMQ_OP_UNKNOWN;
    if (strcmp(name, "chat") == 0)
        return LLMQ_OP_CHAT;
    if (strcmp(name, "completion") == 0)
        return LLMQ_OP_COMPLETION;
    if (strcmp(name, "embedding") == 0)
        return LLMQ_OP_EMBEDDING;
    return LLMQ_OP_UNKNOWN;
}

void llmq_usage_init(llmq_usage_t *usage)
{
    usage->prompt_tokens = -1;
    usage->completion_tokens = -1;
    usage->total_tokens = -1;
    usage->cached_tokens = -1;
    usage->reasoning_tokens = -1;
}

void llmq_perr_set(llmq_perr_t *err, llmq_err_t code, int status,
                   bool retryable, const char *fmt, ...)
{
    err->code = code;
    err->status = status;
    err->retryable = retryable;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err->message, sizeof err->message, fmt, ap);
    va_end(ap);
}

void llmq_http_reset(llmq_http_t *http)
{
    if (!http->shared) {
        free(http->url);
        if (http->headers)
            curl_slist_free_all(http->headers);
    }
    free(http->body);
    memset(http, 0, sizeof *http);
}

/*  Free a header list that may hold the key, wiping it first. */
static void s_headers_wipe(struct curl_slist *list)
{
    for (struct curl_slist *h = list; h; h = h->next) {
        volatile char *p = h->data;
        while (p && *p)
            *p++ = 0;
    }
    curl_slist_free_all(list);
}

static char *s_strdup0(const char *s)
{
    return strdup(s ? s : "");
}

llmq_provider_t *llmq_provider_new(const llmq_provider_config_t *config,
                                   char *errbuf, size_t errlen)
{
    const llmq_provider_ops_t *ops = NULL;
    const char *kind = config->kind ? config->kind : "";
    if (strcmp(kind, "openai") == 0 || strcmp(kind, "sim") == 0)
        ops = &llmq_provider_openai_ops;
    else if (strcmp(kind, "anthropic") == 0)
        ops = &llmq_provider_anthropic_ops;
    else if (strcmp(kind, "echo") == 0)
        ops = &llmq_provider_echo_ops;
    else {
        if (errbuf)
            snprintf(errbuf, errlen,
                     "unknown provider '%s' (openai, anthropic, echo, sim)",
                     kind);
        return NULL;
    }
    if (ops->http && (!config->base_url || !*config->base_url)) {
        if (errbuf)
            snprintf(errbuf, errlen, "provider %s needs a base URL", kind);
        return NULL;
    }
    llmq_provider_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->ops = ops;
    self->kind = s_strdup0(kind);
    self->base_url = s_strdup0(config->base_url);
    size_t n = strlen(self->base_url);
    while (n > 0 && self->base_url[n - 1] == '/')
        self->base_url[--n] = 0;
    self->api_key = s_strdup0(config->api_key);
    self->anthropic_version = s_strdup0(
        config->anthropic_version ? config->anthropic_version : "2023-06-01");
    self->default_max_tokens =
        config->default_max_tokens > 0 ? config->default_max_tokens : 1024;
    return self;
}

void llmq_provider_destroy(llmq_provider_t **self_p)
{
    if (self_p && *self_p) {
        llmq_provider_t *self = *self_p;
        if (self->api_key) {
            /*  Wipe the secret so a core dump holds it for less time. */
            volatile char *p = self->api_key;
            while (*p)
                *p++ = 0;
        }
        free(self->api_key);
        s_headers_wipe(self->post_headers[0]);
        s_headers_wipe(self->post_headers[1]);
        for (size_t i = 0; i < sizeof self->urls / sizeof self->urls[0]; i++)
            free(self->urls[i].url);
        free(self->kind);
        free(self->base_url);
        free(self->anthropic_version);
        free(self);
        *self_p = NULL;
    }
}

const llmq_provider_ops_t *llmq_provider_ops(const llmq_provider_t *self)
{
    return self->ops;
}

const char *llmq_provider_kind(const llmq_provider_t *self)
{
    return self->kind;
}

const char *llmq_provider_base_url(const llmq_provider_t *self)
{
    return self->base_url;
}

const char *llmq_provider_api_key(const llmq_provider_t *self)
{
    return self->api_key;
}

const char *llmq_provider_anthropic_version(const llmq_provider_t *self)
{
    return self->anthropic_version;
}

int64_t llmq_provider_default_max_tokens(const llmq_provider_t *self)
{
    return self->default_max_tokens;
}

bool llmq_provider_uses_http(const llmq_provider_t *self)
{
    return self->ops->http;
}

int llmq_provider_build(const llmq_provider_t *self, const llmq_call_t *call,
                        llmq_http_t *http, llmq_perr_t *err)
{
    if (!self->ops->build) {
        llmq_perr_set(err, LLMQ_ERR_INTERNAL, 0, false,
                      "provider cannot build");
        return -1;
    }
    return self->ops->build(self, call, http, err);
}

int llmq_provider_build_raw(const llmq_provider_t *self,
                            const llmq_call_t *call, const void *payload,
                            size_t size, llmq_http_t *http, llmq_perr_t *err)
{
    if (!self->ops->build_raw)
        return 1;
    return self->ops->build_raw(self, call, payload, size, http, err);
}

int llmq_provider_build_own(const llmq_provider_t *self,
                            const llmq_call_t *call, cJSON *own,
                            llmq_http_t *http, llmq_perr_t *err)
{
    if (self->ops->build_own && own == call->body)
        return self->ops->build_own(self, call, own, http, err);
    return llmq_provider_build(self, call, http, err);
}

cJSON *llmq_provider_parse(const llmq_provider_t *self, const llmq_call_t *call,
                           const char *body, size_t size, llmq_usage_t *usage,
                           llmq_perr_t *err)
{
    llmq_usage_init(usage);
    return self->ops->parse(self, call, body, size, usage, err);
}

zframe_t *llmq_provider_parse_frame(const llmq_provider_t *self,
                                    const llmq_call_t *call, const char *body,
                                    size_t size, llmq_packer_t *packer,
                                    llmq_usage_t *usage, llmq_perr_t *err)
{
    llmq_usage_init(usage);
    if (self->ops->pack && packer) {
        llmq_packer_reset(packer);
        if (self->ops->pack(self, call, body, size, packer, usage, err))
            return NULL;
        return llmq_packer_frame(packer);
    }
    cJSON *json = self->ops->parse(self, call, body, size, usage, err);
    if (!json)
        return NULL;
    llmq_usage_details_from_json(json, usage);
    zframe_t *frame = llmq_value_from_json(json);
    cJSON_Delete(json);
    if (!frame)
        llmq_perr_set(err, LLMQ_ERR_INTERNAL, 0, false,
                      "cannot encode the answer");
    return frame;
}

/*  Every string of a tree (keys too) through the scrubber, whole. */
static int s_scrub_tree(const llmq_provider_t *self, cJSON *item, int depth)
{
    if (depth > LLMQ_VALUE_MAX_DEPTH)
        return -1;
    const char *key =
        self->api_key && strlen(self->api_key) >= 4 ? self->api_key : NULL;
    if (!key)
        return 0;
    if (item->string) {
        char *clean =
            llmq_scrub(item->string, strlen(item->string), &key, 1, NULL);
        if (!clean)
            return -1;
        cJSON_free(item->string);
        item->string = clean; /* cJSON frees it with free(), its default */
    }
    if (cJSON_IsString(item) && item->valuestring) {
        char *clean = llmq_scrub(item->valuestring, strlen(item->valuestring),
                                 &key, 1, NULL);
        bool ok = clean && cJSON_SetValuestring(item, clean);
        free(clean);
        if (!ok)
            return -1;
    }
    for (cJSON *c = item->child; c; c = c->next)
        if (s_scrub_tree(self, c, depth + 1))
            return -1;
    return 0;
}

zframe_t *llmq_provider_error_body(const llmq_provider_t *self,
                                   const char *body, size_t size, size_t max)
{
    if (!body || !size)
        return NULL;
    const char *end = NULL;
    cJSON *json = cJSON_ParseWithLengthOpts(body, size, &end, false);
    while (json && end && end < body + size && strchr(" \t\r\n", *end) && *end)
        end++;
    if (!json || (end && end < body + size) || s_scrub_tree(self, json, 0)) {
        cJSON_Delete(json);
        return NULL;
    }
    zframe_t *frame = llmq_value_from_json(json);
    cJSON_Delete(json);
    /*  What the header would refuse (too large, invalid UTF-8 in a string)
        is left out rather than losing the whole answer. */
    if (frame && (zframe_size(frame) > max ||
                  !llmq_value_is_valid(zframe_data(frame), zframe_size(frame))))
        zframe_destroy(&frame);
    return frame;
}

void llmq_provider_classify(const llmq_provider_t *self, int status,
                            const char *body, size_t size, llmq_perr_t *err)
{
    if (self->ops->classify)
        self->ops->classify(self, status, body, size, err);
    else
        llmq_classify_http(self, status, body, size, err);
    llmq_provider_scrub(self, err->message, sizeof err->message, err->message);
}

void llmq_provider_header(const llmq_provider_t *self, llmq_ratelimit_t *rl,
                          const char *name, size_t name_len, const char *value,
                          size_t value_len)
{
    (void)self; /* both families of rate-limit headers, one reader */
    llmq_ratelimit_header(rl, name, name_len, value, value_len);
}

char *llmq_provider_url(const llmq_provider_t *self, const char *route)
{
    size_t n = strlen(self->base_url) + strlen(route) + 1;
    char *url = malloc(n);
    if (url)
        snprintf(url, n, "%s%s", self->base_url, route);
    return url;
}

struct curl_slist *llmq_provider_auth(const llmq_provider_t *self,
                                      struct curl_slist *headers)
{
    return self->ops->auth ? self->ops->auth(self, headers) : headers;
}

struct curl_slist *llmq_provider_key_header(const llmq_provider_t *self,
                                            struct curl_slist *headers,
                                            const char *prefix)
{
    if (!self->api_key || !*self->api_key)
        return headers;
    size_t n = strlen(prefix) + strlen(self->api_key) + 1;
    char *h = malloc(n);
    if (!h)
        return headers;
    snprintf(h, n, "%s%s", prefix, self->api_key);
    headers = curl_slist_append(headers, h);
    /*  curl keeps its own copy: wipe ours. */
    volatile char *p = h;
    while (*p)
        *p++ = 0;
    free(h);
    return headers;
}

const llmq_batch_ops_t *llmq_provider_batch(const llmq_provider_t *self)
{
    return self->ops->batch;
}

void llmq_batch_answer_reset(llmq_batch_answer_t *result)
{
    cJSON_Delete(result->body);
    memset(result, 0, sizeof *result);
}

/*  The shared POST headers (built on first use; the provider is used by
    one thread). */
static struct curl_slist *s_post_headers(const llmq_provider_t *cself,
                                         bool stream)
{
    llmq_provider_t *self = (llmq_provider_t *)cself;
    struct curl_slist **list = &self->post_headers[stream ? 1 : 0];
    if (!*list) {
        struct curl_slist *h =
            curl_slist_append(NULL, "Content-Type: application/json");
        h = curl_slist_append(h, "Expect:");
        h = llmq_provider_auth(self, h);
        if (stream)
            h = curl_slist_append(h, "Accept: text/event-stream");
        *list = h;
    }
    return *list;
}

/*  {base}{route}, made once per route (NULL if out of room or memory). */
static const char *s_shared_url(const llmq_provider_t *cself, const char *route)
{
    llmq_provider_t *self = (llmq_provider_t *)cself;
    size_t n = sizeof self->urls / sizeof self->urls[0], i = 0;
    for (; i < n && self->urls[i].url; i++)
        if (self->urls[i].route == route || !strcmp(self->urls[i].route, route))
            return self->urls[i].url;
    if (i == n)
        return NULL;
    self->urls[i].url = llmq_provider_url(self, route);
    self->urls[i].route = route;
    return self->urls[i].url;
}

int llmq_http_post_text(const llmq_provider_t *self, const char *route,
                        char *text, bool stream, llmq_http_t *http,
                        llmq_perr_t *err)
{
    http->body = text;
    http->shared = true;
    http->url = (char *)s_shared_url(self, route);
    http->headers = s_post_headers(self, stream);
    if (!http->body || !http->url || !http->headers) {
        llmq_http_reset(http);
        llmq_perr_set(err, LLMQ_ERR_INTERNAL, 0, true, "out of memory");
        return -1;
    }
    http->body_len = strlen(http->body);
    http->post = true;
    return 0;
}

int llmq_http_post_json(const llmq_provider_t *self, const char *route,
                        cJSON *body, llmq_http_t *http, llmq_perr_t *err)
{
    char *text = cJSON_PrintUnformatted(body);
    cJSON_Delete(body);
    return llmq_http_post_text(self, route, text, false, http, err);
}

/*  Every HTTP provider answers GET {base}/models with its key. */
int llmq_provider_health(const llmq_provider_t *self, llmq_http_t *http)
{
    if (!self->ops->http)
        return -1;
    http->url = llmq_provider_url(self, "/models");
    http->post = false;
    http->headers = llmq_provider_auth(self, NULL);
    return http->url ? 0 : -1;
}

cJSON *llmq_provider_answer(const llmq_provider_t *self,
                            const llmq_call_t *call, llmq_usage_t *usage,
                            llmq_perr_t *err)
{
    llmq_usage_init(usage);
    if (!self->ops->answer) {
        llmq_perr_set(err, LLMQ_ERR_INTERNAL, 0, false, "provider needs HTTP");
        return NULL;
    }
    return self->ops->answer(self, call, usage, err);
}

/*  --- streaming ---------------------------------------------------------- */

llmq_stream_t *llmq_stream_new(const llmq_provider_t *provider,
                               const llmq_call_t *call)
{
    llmq_stream_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->provider = provider;
    self->op = call->op;
    self->model = s_strdup0(call->model);
    self->asm_ = llmq_assembler_new(call->op);
    self->input_tokens = -1;
    self->output_tokens = -1;
    if (!self->asm_ || !self->model) {
        llmq_stream_destroy(&self);
        return NULL;
    }
    return self;
}

void llmq_stream_destroy(llmq_stream_t **self_p)
{
    if (self_p && *self_p) {
        llmq_stream_t *self = *self_p;
        llmq_assembler_destroy(&self->asm_);
        free(self->model);
        free(self->msg_id);
        free(self->stop_reason);
        free(self);
        *self_p = NULL;
    }
}

int llmq_stream_event(llmq_stream_t *self, const char *event, const char *data,
                      size_t size, llmq_chunk_fn *emit, void *arg,
                      llmq_perr_t *err)
{
    if (self->done)
        return 1;
    int rc = self->provider->ops->stream_event(self, event, data, size, emit,
                                               arg, err);
    if (rc == 1)
        self->done = true;
    return rc;
}

cJSON *llmq_stream_finish(llmq_stream_t *self, llmq_usage_t *usage,
                          llmq_perr_t *err)
{
    llmq_usage_init(usage);
    if (!self->done) {
        llmq_perr_set(err, LLMQ_ERR_PROVIDER_ERROR, 200, true,
                      "stream ended before its last event");
        return NULL;
    }
    return llmq_assembler_result(self->asm_, usage);
}

int64_t llmq_stream_chunks(const llmq_stream_t *self)
{
    return self->chunks;
}

/*  --- rate-limit headers ------------------------------------------------ */

int64_t llmq_parse_duration_ms(const char *text, size_t len)
{
    /*  Sequence of <number><unit>, units h, m, s, ms (OpenAI: "6m0s",
        "1.5s", "120ms"). A bare number is seconds. */
    double total = 0;
    size_t i = 0;
    bool any = false;
    while (i < len && isspace((unsigned char)text[i]))
        i++;
    while (i < len && !isspace((unsigned char)text[i])) {
        char num[32];
        size_t n = 0;
        while (i < len && (isdigit((unsigned char)text[i]) || text[i] == '.') &&
               n < sizeof num - 1)
            num[n++] = text[i++];
        num[n] = 0;
        if (n == 0)
            return -1;
        double v = strtod(num, NULL);
        if (i + 1 < len && text[i] == 'm' && text[i + 1] == 's') {
            total += v;
            i += 2;
        } else if (i < len && text[i] == 'h') {
            total += v * 3600000.0;
            i++;
        } else if (i < len && text[i] == 'm') {
            total += v * 60000.0;
            i++;
        } else if (i < len && text[i] == 's') {
            total += v * 1000.0;
            i++;
        } else if (i == len || isspace((unsigned char)text[i])) {
            total += v * 1000.0;
        } else
            return -1;
        any = true;
    }
    return any ? (int64_t)(total + 0.5) : -1;
}

/*  RFC 3339 ("2026-11-22T03:00:00Z") -> ms from now; -1 if malformed. */
static int64_t s_rfc3339_in_ms(const char *text)
{
    struct tm tm;
    memset(&tm, 0, sizeof tm);
    int y, mo, d, h, mi;
    double s;
    if (sscanf(text, "%d-%d-%dT%d:%d:%lf", &y, &mo, &d, &h, &mi, &s) != 6)
        return -1;
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = 0;
    time_t t = timegm(&tm);
    struct timeval now;
    gettimeofday(&now, NULL);
    double at = (double)t * 1000.0 + s * 1000.0;
    double nowms = (double)now.tv_sec * 1000.0 + now.tv_usec / 1000.0;
    return at > nowms ? (int64_t)(at - nowms) : 0;
}

static bool s_name_is(const char *name, size_t len, const char *want)
{
    return strlen(want) == len && strncasecmp(name, want, len) == 0;
}

void llmq_ratelimit_header(llmq_ratelimit_t *rl, const char *name,
                           size_t name_len, const char *value, size_t value_len)
{
    if (name_len < 11)
        return;
    /*  Most headers are none of these (retry-after*, x-ratelimit-*,
        anthropic-ratelimit-*): one look at the first letter. */
    char first = (char)(name[0] | 0x20);
    if (first != 'r' && first != 'x' && first != 'a')
        return;
    char v[128];
    while (value_len && isspace((unsigned char)value[value_len - 1]))
        value_len--;
    while (value_len && isspace((unsigned char)*value)) {
        value++;
        value_len--;
    }
    if (value_len >= sizeof v)
        return;
    memcpy(v, value, value_len);
    v[value_len] = 0;
    char *end;
    if (s_name_is(name, name_len, "retry-after-ms")) {
        double ms = strtod(v, &end);
        if (end != v && ms >= 0)
            rl->retry_after_ms = (int64_t)ms;
        return;
    }
    if (s_name_is(name, name_len, "retry-after")) {
        /*  retry-after-ms is more precise: keep it if already seen. */
        if (rl->retry_after_ms >= 0)
            return;
        double sec = strtod(v, &end);
        if (end != v && *end == 0 && sec >= 0)
            rl->retry_after_ms = (int64_t)(sec * 1000.0);
        else {
            struct tm tm;
            memset(&tm, 0, sizeof tm);
            if (strptime(v, "%a, %d %b %Y %H:%M:%S", &tm)) {
                time_t at = timegm(&tm);
                time_t now = time(NULL);
                rl->retry_after_ms = at > now ? (int64_t)(at - now) * 1000 : 0;
            }
        }
        return;
    }
    int64_t num = strtoll(v, &end, 10);
    bool is_num = end != v && *end == 0;
    if (s_name_is(name, name_len, "x-ratelimit-limit-requests") ||
        s_name_is(name, name_len, "anthropic-ratelimit-requests-limit")) {
        if (is_num)
            rl->limit_requests = num;
    } else if (s_name_is(name, name_len, "x-ratelimit-limit-tokens") ||
               s_name_is(name, name_len, "anthropic-ratelimit-tokens-limit")) {
        if (is_num)
            rl->limit_tokens = num;
    } else if (s_name_is(name, name_len, "x-ratelimit-remaining-requests") ||
               s_name_is(name, name_len,
                         "anthropic-ratelimit-requests-remaining")) {
        if (is_num)
            rl->remaining_requests = num;
    } else if (s_name_is(name, name_len, "x-ratelimit-remaining-tokens") ||
               s_name_is(name, name_len,
                         "anthropic-ratelimit-tokens-remaining")) {
        if (is_num)
            rl->remaining_tokens = num;
    } else if (s_name_is(name, name_len, "x-ratelimit-reset-requests"))
        rl->reset_requests_ms = llmq_parse_duration_ms(v, value_len);
    else if (s_name_is(name, name_len, "x-ratelimit-reset-tokens"))
        rl->reset_tokens_ms = llmq_parse_duration_ms(v, value_len);
    else if (s_name_is(name, name_len, "anthropic-ratelimit-requests-reset"))
        rl->reset_requests_ms = s_rfc3339_in_ms(v);
    else if (s_name_is(name, name_len, "anthropic-ratelimit-tokens-reset"))
        rl->reset_tokens_ms = s_rfc3339_in_ms(v);
}

/*  --- errors -------------------------------------------------------------- */

static bool s_contains_ci(const char *hay, const char *needle)
{
    if (!hay)
        return false;
    size_t n = strlen(needle);
    for (; *hay; hay++)
        if (strncasecmp(hay, needle, n) == 0)
            return true;
    return false;
}

/*  The protocol's code for an HTTP failure, and whether asking again may
    help. */
static llmq_err_t s_http_code(int status, const char *type, const char *code,
                              const char *message, bool *retryable)
{
    *retryable = status < 300 || status == 408 || status == 409 ||
                 status >= 500 ||
                 (status == 429 && !s_contains_ci(code, "insufficient_quota") &&
                  !s_contains_ci(type, "insufficient_quota"));
    if (status == 401 || status == 403)
        return LLMQ_ERR_AUTH;
    if (status == 429) /* no quota left is not fixed by waiting */
        return LLMQ_ERR_RATE_LIMITED;
    if (status == 408)
        return LLMQ_ERR_TIMEOUT;
    if (status == 409 || status >= 500 || status < 400)
        return LLMQ_ERR_PROVIDER_ERROR;
    if (s_contains_ci(code, "context_length") ||
        s_contains_ci(message, "context length") ||
        s_contains_ci(message, "context window") ||
        s_contains_ci(message, "prompt is too long") ||
        s_contains_ci(message, "maximum context"))
        return LLMQ_ERR_CONTEXT_LENGTH;
    if (s_contains_ci(code, "content_filter") ||
        s_contains_ci(code, "content_policy") ||
        s_contains_ci(message, "content filter") ||
        s_contains_ci(message, "content management policy"))
        return LLMQ_ERR_CONTENT_FILTER;
    return LLMQ_ERR_INVALID_REQUEST;
}

/*  A non-JSON error page as text: scrubbed, then a printable prefix of
    at most 200 bytes. */
static void s_error_page(const llmq_provider_t *self, const char *body,
                         size_t size, char *text, size_t len)
{
    char *copy = (char *)malloc(size + 1);
    if (!copy) {
        snprintf(text, len, "provider error page (%zu bytes)", size);
        return;
    }
    for (size_t i = 0; i < size; i++) /* NULs would end it early */
        copy[i] = isprint((unsigned char)body[i]) ? body[i] : ' ';
    copy[size] = 0;
    llmq_provider_scrub(self, text, len < 201 ? len : 201, copy);
    free(copy);
}

void llmq_classify_http(const llmq_provider_t *self, int status,
                        const char *body, size_t size, llmq_perr_t *err)
{
    /*  Pull type, code and message out of the provider's error body. */
    const char *type = NULL, *code = NULL, *message = NULL;
    cJSON *json = body && size ? cJSON_ParseWithLength(body, size) : NULL;
    const cJSON *e =
        json ? cJSON_GetObjectItemCaseSensitive(json, "error") : NULL;
    if (cJSON_IsObject(e)) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(e, "type");
        type = cJSON_IsString(x) ? x->valuestring : NULL;
        x = cJSON_GetObjectItemCaseSensitive(e, "code");
        code = cJSON_IsString(x) ? x->valuestring : NULL;
        x = cJSON_GetObjectItemCaseSensitive(e, "message");
        message = cJSON_IsString(x) ? x->valuestring : NULL;
    } else if (cJSON_IsString(e))
        message = e->valuestring;
    else if (json) {
        const cJSON *x = cJSON_GetObjectItemCaseSensitive(json, "message");
        message = cJSON_IsString(x) ? x->valuestring : NULL;
    }
    /*  The provider's words may echo the key: scrubbed whole, before
        they are cut to 400 (or 200) bytes. */
    char text[400];
    if (message)
        llmq_provider_scrub(self, text, sizeof text, message);
    else if (body && size && !json)
        s_error_page(self, body, size, text, sizeof text);
    else
        snprintf(text, sizeof text, "HTTP %d", status);

    bool retryable;
    llmq_err_t c = s_http_code(status, type, code, message, &retryable);
    if (status >= 300 && status < 400)
        /*  Redirects are not followed: the base URL is wrong, and asking
            again will not change that. */
        snprintf(text, sizeof text,
                 "provider answered HTTP %d (a redirect: check the base URL)",
                 status);
    llmq_perr_set(err, c, status, retryable, "%s", text);
    cJSON_Delete(json);
}

void llmq_classify_curl(CURLcode code, const char *detail, llmq_perr_t *err)
{
    const char *what = detail && *detail ? detail : curl_easy_strerror(code);
    if (code == CURLE_OPERATION_TIMEDOUT)
        llmq_perr_set(err, LLMQ_ERR_TIMEOUT, 0, true, "provider timed out: %s",
                      what);
    else
        llmq_perr_set(err, LLMQ_ERR_PROVIDER_ERROR, 0, true,
                      "provider connection failed: %s", what);
}

void llmq_provider_scrub(const llmq_provider_t *self, char *out, size_t size,
                         const char *text)
{
    /*  Keys under 4 characters are not keys: scrubbing them would mangle
        every message. */
    const char *key = self && self->api_key && strlen(self->api_key) >= 4
                          ? self->api_key
                          : NULL;
    llmq_scrub_into(out, size, text, text ? strlen(text) : 0, &key,
                    key ? 1 : 0);
}

/*  --- token estimate ------------------------------------------------------ */

static int64_t s_text_chars(const cJSON *item, int depth)
{
    if (!item || depth > 16)
        return 0;
    if (cJSON_IsString(item))
        return (int64_t)strlen(item->valuestring);
    int64_t n = 0;
    if (cJSON_IsArray(item) || cJSON_IsObject(item)) {
        const cJSON *c;
        cJSON_ArrayForEach(c, item)
        {
            /*  Count text, not structure (role names, types, ids). */
            if (c->string && (strcmp(c->string, "role") == 0 ||
                              strcmp(c->string, "type") == 0 ||
                              strcmp(c->string, "name") == 0))
                continue;
            n += s_text_chars(c, depth + 1);
        }
    }
    return n;
}

int64_t llmq_estimate_tokens(const cJSON *body, int64_t default_max_tokens)
{
    int64_t chars = 0;
    static const char *fields[] = {"messages", "prompt", "input", "system"};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        chars +=
            s_text_chars(cJSON_GetObjectItemCaseSensitive(body, fields[i]), 0);
    int64_t out = default_max_tokens;
    const cJSON *mt = cJSON_GetObjectItemCaseSensitive(body, "max_tokens");
    if (!cJSON_IsNumber(mt))
        mt = cJSON_GetObjectItemCaseSensitive(body, "max_completion_tokens");
    if (cJSON_IsNumber(mt) && mt->valuedouble >= 0)
        out = (int64_t)mt->valuedouble;
    if (cJSON_GetObjectItemCaseSensitive(body, "input"))
        out = 0; /* embeddings produce no tokens */
    return (chars + 3) / 4 + out;
}

/*  The payload's members the estimate reads, and their skipped keys. */
static const char *const s_est_fields[] = {
    "messages", "prompt",     "input",
    "system",   "max_tokens", "max_completion_tokens"};
static const char *const s_est_skip[] = {"role", "type", "name"};

/*  The estimate from the members s_est_fields found (f[0..6)). */
static int64_t s_estimate_refs(const llmq_value_ref_t *f,
                               int64_t default_max_tokens)
{
    int64_t chars = 0;
    for (int k = 0; k < 4; k++)
        if (f[k].data)
            chars +=
                llmq_value_text_size(f[k].data, f[k].size, s_est_skip, 3, 16);
    int64_t out = default_max_tokens;
    const llmq_value_ref_t *mt = f[4].kind == 'n' ? &f[4] : &f[5];
    double d = 0;
    if (mt->kind == 'n' && llmq_value_number(mt->data, mt->size, &d) && d >= 0)
        out = (int64_t)d;
    if (f[2].data)
        out = 0; /* embeddings produce no tokens */
    return (chars + 3) / 4 + out;
}

int64_t llmq_estimate_tokens_msgpack(const void *data, size_t size,
                                     int64_t default_max_tokens)
{
    llmq_value_ref_t f[6];
    if (llmq_value_find_many(data, size, s_est_fields, 6, f))
        return default_max_tokens;
    return s_estimate_refs(f, default_max_tokens);
}

int llmq_provider_json_except(llmq_value_buf_t *buf, const void *payload,
                              size_t size, const char *const *skip,
                              size_t nskip, int64_t *estimate, char *errbuf,
                              size_t errlen)
{
    if (!estimate)
        return llmq_value_buf_json_except(buf, payload, size, skip, nskip,
                                          errbuf, errlen);
    llmq_value_ref_t f[6];
    int n = llmq_value_buf_json_except_find(buf, payload, size, skip, nskip,
                                            s_est_fields, 6, f, errbuf, errlen);
    if (n >= 0)
        *estimate = s_estimate_refs(f, *estimate);
    return n;
}

void llmq_usage_add_json(cJSON *body, int64_t prompt_tokens,
                         int64_t completion_tokens)
{
    cJSON *u = cJSON_AddObjectToObject(body, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", (double)prompt_tokens);
    cJSON_AddNumberToObject(u, "completion_tokens", (double)completion_tokens);
    cJSON_AddNumberToObject(u, "total_tokens",
                            (double)(prompt_tokens + completion_tokens));
}

int64_t llmq_json_int(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsNumber(v) ? (int64_t)v->valuedouble : 0;
}

const char *llmq_json_str(const cJSON *obj, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    return cJSON_IsString(v) ? v->valuestring : NULL;
}

void llmq_usage_from_json(const cJSON *u, llmq_usage_t *usage)
{
    if (!cJSON_IsObject(u))
        return;
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens");
    if (cJSON_IsNumber(x))
        usage->prompt_tokens = (int64_t)x->valuedouble;
    x = cJSON_GetObjectItemCaseSensitive(u, "completion_tokens");
    if (cJSON_IsNumber(x))
        usage->completion_tokens = (int64_t)x->valuedouble;
    x = cJSON_GetObjectItemCaseSensitive(u, "total_tokens");
    if (cJSON_IsNumber(x))
        usage->total_tokens = (int64_t)x->valuedouble;
    if (usage->total_tokens < 0 && usage->prompt_tokens >= 0)
        usage->total_tokens =
            usage->prompt_tokens +
            (usage->completion_tokens > 0 ? usage->completion_tokens : 0);
}

/*  A number member of a msgpack map into *out (left as is if absent). */
/*  The number a member's value held, if it was one (kind 'n'). */
static void s_mp_count(int kind, double d, int64_t *out)
{
    if (kind == 'n')
        *out = (int64_t)d;
}

void llmq_usage_from_msgpack(const uint8_t *data, size_t size,
                             llmq_usage_t *usage)
{
    static const char *const keys[5] = {"prompt_tokens", "completion_tokens",
                                        "total_tokens", "prompt_tokens_details",
                                        "completion_tokens_details"};
    int64_t *outs[3] = {&usage->prompt_tokens, &usage->completion_tokens,
                        &usage->total_tokens};
    llmq_value_ref_t found[5], detail;
    double n[5], d;
    llmq_value_find_numbers(data, size, keys, 5, found, n);
    for (int k = 0; k < 3; k++)
        s_mp_count(found[k].kind, n[k], outs[k]);
    static const char *const cached = "cached_tokens";
    static const char *const reasoning = "reasoning_tokens";
    if (found[3].kind == 'm' &&
        !llmq_value_find_numbers(found[3].data, found[3].size, &cached, 1,
                                 &detail, &d))
        s_mp_count(detail.kind, d, &usage->cached_tokens);
    if (found[4].kind == 'm' &&
        !llmq_value_find_numbers(found[4].data, found[4].size, &reasoning, 1,
                                 &detail, &d))
        s_mp_count(detail.kind, d, &usage->reasoning_tokens);
    if (usage->total_tokens < 0 && usage->prompt_tokens >= 0)
        usage->total_tokens =
            usage->prompt_tokens +
            (usage->completion_tokens > 0 ? usage->completion_tokens : 0);
}

void llmq_usage_details_from_json(const cJSON *body, llmq_usage_t *usage)
{
    const cJSON *u = cJSON_GetObjectItemCaseSensitive(body, "usage");
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(u, "prompt_tokens_details"),
        "cached_tokens");
    if (cJSON_IsNumber(x))
        usage->cached_tokens = (int64_t)x->valuedouble;
    x = cJSON_GetObjectItemCaseSensitive(
        cJSON_GetObjectItemCaseSensitive(u, "completion_tokens_details"),
        "reasoning_tokens");
    if (cJSON_IsNumber(x))
        usage->reasoning_tokens = (int64_t)x->valuedouble;
}

/*  --- chunk assembler ----------------------------------------------------- */

#define S_MAX_CHOICES 16

typedef struct {
    bool used;         /* a chunk named this index */
    char *role;        /* delta.role, first seen */
    char *text;        /* content (chat) or text (completion) so far */
    size_t len;        /* its length */
    size_t cap;        /* its allocation */
    bool has_text;     /* any content arrived */
    char *finish;      /* finish_reason */
    cJSON *tool_calls; /* array built from tool_call deltas */
} s_choice_t;

struct _llmq_assembler_t {
    llmq_op_t op;                      /* chat or completion */
    char *id;                          /* from the first chunk */
    char *model;                       /* from the first chunk */
    int64_t created;                   /* from the first chunk */
    llmq_usage_t usage;                /* from the usage chunk */
    s_choice_t choices[S_MAX_CHOICES]; /* by index */
};

llmq_assembler_t *llmq_assembler_new(llmq_op_t op)
{
    llmq_assembler_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->op = op;
    llmq_usage_init(&self->usage);
    return self;
}

void llmq_assembler_destroy(llmq_assembler_t **self_p)
{
    if (self_p && *self_p) {
        llmq_assembler_t *self = *self_p;
        for (int i = 0; i < S_MAX_CHOICES; i++) {
            free(self->choices[i].role);
            free(self->choices[i].text);
            free(self->choices[i].finish);
            cJSON_Delete(self->choices[i].tool_calls);
        }
        free(self->id);
        free(self->model);
        free(self);
        *self_p = NULL;
    }
}

static void s_append_text(s_choice_t *ch, const char *s)
{
    if (llmq_buf_append(&ch->text, &ch->len, &ch->cap, s, strlen(s),
                        SIZE_MAX) == 0)
        ch->has_text = true;
}

static void s_set_str(char **dst, const cJSON *src)
{
    if (cJSON_IsString(src)) {
        free(*dst);
        *dst = strdup(src->valuestring);
    }
}

/*  Merge one tool_calls delta array into the choice's array. */
static void s_merge_tools(s_choice_t *ch, const cJSON *deltas)
{
    if (!ch->tool_calls)
        ch->tool_calls = cJSON_CreateArray();
    const cJSON *d;
    cJSON_ArrayForEach(d, deltas)
    {
        const cJSON *ix = cJSON_GetObjectItemCaseSensitive(d, "index");
        int index = cJSON_IsNumber(ix) ? (int)ix->valuedouble
                                       : cJSON_GetArraySize(ch->tool_calls);
        if (index < 0 || index > 127)
            continue;
        while (cJSON_GetArraySize(ch->tool_calls) <= index) {
            cJSON *t = cJSON_CreateObject();
            cJSON_AddStringToObject(t, "id", "");
            cJSON_AddStringToObject(t, "type", "function");
            cJSON *f = cJSON_AddObjectToObject(t, "function");
            cJSON_AddStringToObject(f, "name", "");
            cJSON_AddStringToObject(f, "arguments", "");
            cJSON_AddItemToArray(ch->tool_calls, t);
        }
        cJSON *t = cJSON_GetArrayItem(ch->tool_calls, index);
        const cJSON *id = cJSON_GetObjectItemCaseSensitive(d, "id");
        if (cJSON_IsString(id))
            cJSON_ReplaceItemInObjectCaseSensitive(
                t, "id", cJSON_CreateString(id->valuestring));
        const cJSON *fd = cJSON_GetObjectItemCaseSensitive(d, "function");
        cJSON *f = cJSON_GetObjectItemCaseSensitive(t, "function");
        const cJSON *name = cJSON_GetObjectItemCaseSensitive(fd, "name");
        if (cJSON_IsString(name))
            cJSON_ReplaceItemInObjectCaseSensitive(
                f, "name", cJSON_CreateString(name->valuestring));
        const cJSON *args = cJSON_GetObjectItemCaseSensitive(fd, "arguments");
        if (cJSON_IsString(args) && *args->valuestring) {
            const cJSON *old = cJSON_GetObjectItemCaseSensitive(f, "arguments");
            size_t a = strlen(old->valuestring), b = strlen(args->valuestring);
            char *joined = malloc(a + b + 1);
            if (joined) {
                memcpy(joined, old->valuestring, a);
                memcpy(joined + a, args->valuestring, b + 1);
                cJSON_ReplaceItemInObjectCaseSensitive(
                    f, "arguments", cJSON_CreateString(joined));
                free(joined);
            }
        }
    }
}

void llmq_assembler_add(llmq_assembler_t *self, const cJSON *chunk)
{
    if (!self->id)
        s_set_str(&self->id, cJSON_GetObjectItemCaseSensitive(chunk, "id"));
    if (!self->model)
        s_set_str(&self->model,
                  cJSON_GetObjectItemCaseSensitive(chunk, "model"));
    const cJSON *cr = cJSON_GetObjectItemCaseSensitive(chunk, "created");
    if (!self->created && cJSON_IsNumber(cr))
        self->created = (int64_t)cr->valuedouble;
    llmq_usage_from_json(cJSON_GetObjectItemCaseSensitive(chunk, "usage"),
                         &self->usage);
    const cJSON *c;
    cJSON_ArrayForEach(c, cJSON_GetObjectItemCaseSensitive(chunk, "choices"))
    {
        const cJSON *ix = cJSON_GetObjectItemCaseSensitive(c, "index");
        int index = cJSON_IsNumber(ix) ? (int)ix->valuedouble : 0;
        if (index < 0 || index >= S_MAX_CHOICES)
            continue;
        s_choice_t *ch = &self->choices[index];
        ch->used = true;
        const cJSON *fr = cJSON_GetObjectItemCaseSensitive(c, "finish_reason");
        s_set_str(&ch->finish, fr);
        if (self->op == LLMQ_OP_COMPLETION) {
            const cJSON *t = cJSON_GetObjectItemCaseSensitive(c, "text");
            if (cJSON_IsString(t))
                s_append_text(ch, t->valuestring);
            continue;
        }
        const cJSON *delta = cJSON_GetObjectItemCaseSensitive(c, "delta");
        if (!cJSON_IsObject(delta))
            continue;
        if (!ch->role)
            s_set_str(&ch->role,
                      cJSON_GetObjectItemCaseSensitive(delta, "role"));
        const cJSON *content =
            cJSON_GetObjectItemCaseSensitive(delta, "content");
        if (cJSON_IsString(content))
            s_append_text(ch, content->valuestring);
        const cJSON *tools =
            cJSON_GetObjectItemCaseSensitive(delta, "tool_calls");
        if (cJSON_IsArray(tools))
            s_merge_tools(ch, tools);
    }
}

cJSON *llmq_assembler_result(llmq_assembler_t *self, llmq_usage_t *usage)
{
    cJSON *r = cJSON_CreateObject();
    cJSON_AddStringToObject(r, "id", self->id ? self->id : "");
    cJSON_AddStringToObject(r, "object",
                            self->op == LLMQ_OP_COMPLETION ? "text_completion"
                                                           : "chat.completion");
    cJSON_AddNumberToObject(r, "created", (double)self->created);
    cJSON_AddStringToObject(r, "model", self->model ? self->model : "");
    cJSON *choices = cJSON_AddArrayToObject(r, "choices");
    for (int i = 0; i < S_MAX_CHOICES; i++) {
        s_choice_t *ch = &self->choices[i];
        if (!ch->used)
            continue;
        cJSON *o = cJSON_CreateObject();
        cJSON_AddNumberToObject(o, "index", i);
        if (self->op == LLMQ_OP_COMPLETION)
            cJSON_AddStringToObject(o, "text", ch->text ? ch->text : "");
        else {
            cJSON *m = cJSON_AddObjectToObject(o, "message");
            cJSON_AddStringToObject(m, "role",
                                    ch->role ? ch->role : "assistant");
            if (ch->has_text || !ch->tool_calls)
                cJSON_AddStringToObject(m, "content", ch->text ? ch->text : "");
            else
                cJSON_AddNullToObject(m, "content");
            if (ch->tool_calls)
                cJSON_AddItemToObject(m, "tool_calls",
                                      cJSON_Duplicate(ch->tool_calls, true));
        }
        if (ch->finish)
            cJSON_AddStringToObject(o, "finish_reason", ch->finish);
        else
            cJSON_AddNullToObject(o, "finish_reason");
        cJSON_AddItemToArray(choices, o);
    }
    if (self->usage.prompt_tokens >= 0 || self->usage.completion_tokens >= 0) {
        cJSON *u = cJSON_AddObjectToObject(r, "usage");
        cJSON_AddNumberToObject(u, "prompt_tokens",
                                (double)(self->usage.prompt_tokens > 0
                                             ? self->usage.prompt_tokens
                                             : 0));
        cJSON_AddNumberToObject(u, "completion_tokens",
                                (double)(self->usage.completion_tokens > 0
                                             ? self->usage.completion_tokens
                                             : 0));
        cJSON_AddNumberToObject(u, "total_tokens",
                                (double)(self->usage.total_tokens > 0
                                             ? self->usage.total_tokens
                                             : 0));
    }
    if (usage)
        *usage = self->usage;
    return r;
}

/*  --- selftest ----------------------------------------------------------- */

#include "llmq_check.h"
#define CHECK(cond) LLMQ_CHECK_RET(cond)

static int s_test_collect(const cJSON *chunk, void *arg)
{
    int *n = arg;
    (*n)++;
    return cJSON_IsObject(chunk) ? 0 : 1;
}

static const char *s_test_str(const cJSON *root, const char *path)
{
    /*  "a.b.0.c": walk objects and arrays. */
    char buf[128];
    snprintf(buf, sizeof buf, "%s", path);
    const cJSON *at = root;
    for (char *tok = strtok(buf, "."); tok && at; tok = strtok(NULL, "."))
        at = (*tok >= '0' && *tok <= '9')
                 ? cJSON_GetArrayItem(at, atoi(tok))
                 : cJSON_GetObjectItemCaseSensitive(at, tok);
    return cJSON_IsString(at) ? at->valuestring : NULL;
}

static bool s_test_has_header(const struct curl_slist *h, const char *line)
{
    for (; h; h = h->next)
        if (strcmp(h->data, line) == 0)
            return true;
    return false;
}

/*  The selftest's shared state: the request body every provider sees, the
    call, and what the calls fill in. */
typedef struct {
    llmq_provider_t *p; /* the provider under test */
    cJSON *body;        /* the sample chat request */
    llmq_call_t call;   /* a chat call of body */
    llmq_http_t http;   /* what build and health fill */
    llmq_perr_t err;    /* the last classified failure */
    llmq_usage_t usage; /* the last parsed usage */
    int chunks;         /* chunks emitted by the last stream */
    char errbuf[128];   /* llmq_provider_new's error */
} s_test_fx_t;

static const char *s_test_key = "sk-test-KEY-0123456789";

static const char *s_test_ok =
    "{\"id\":\"c1\",\"object\":\"chat.completion\","
    "\"choices\":[{\"index\":0,"
    "\"message\":{\"role\":\"assistant\",\"content\":\"hi\"},"
    "\"finish_reason\":\"stop\"}],"
    "\"usage\":{\"prompt_tokens\":5,\"completion_tokens\":1,"
    "\"total_tokens\":6}}";

static const char *s_test_events[] = {
    "{\"id\":\"s1\",\"object\":\"chat.completion.chunk\",\"created\":1,"
    "\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"role\":"
    "\"assistant\",\"content\":\"\"},\"finish_reason\":null}]}",
    "{\"id\":\"s1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":"
    "\"Hel\"},\"finish_reason\":null}]}",
    "{\"id\":\"s1\",\"choices\":[{\"index\":0,\"delta\":{\"content\":"
    "\"lo\"},\"finish_reason\":\"stop\"}]}",
    "{\"id\":\"s1\",\"choices\":[],\"usage\":{\"prompt_tokens\":3,"
    "\"completion_tokens\":2,\"total_tokens\":5}}",
    "[DONE]",
};

static const char *s_test_amsg =
    "{\"id\":\"msg_1\",\"type\":\"message\",\"role\":"
    "\"assistant\",\"model\":\"claude\","
    "\"content\":[{\"type\":\"text\",\"text\":\"Hi "
    "\"},{\"type\":\"text\",\"text\":\"there\"},"
    "{\"type\":\"tool_use\",\"id\":\"tu1\",\"name\":\"f\","
    "\"input\":{\"a\":1}}],"
    "\"stop_reason\":\"tool_use\",\"usage\":{\"input_"
    "tokens\":7,\"output_tokens\":3}}";

static const char *s_test_aevents[][2] = {
    {"message_start",
     "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"model\":"
     "\"claude\",\"usage\":{\"input_tokens\":4,\"output_tokens\":1}}}"},
    {"content_block_start",
     "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{"
     "\"type\":\"text\",\"text\":\"\"}}"},
    {"ping", "{\"type\":\"ping\"}"},
    {"content_block_delta",
     "{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{\"type\":"
     "\"text_delta\",\"text\":\"Yo\"}}"},
    {"content_block_stop", "{\"type\":\"content_block_stop\",\"index\":0}"},
    {"message_delta",
     "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"max_"
     "tokens\"},\"usage\":{\"output_tokens\":2}}"},
    {"message_stop", "{\"type\":\"message_stop\"}"},
};

static const char *s_test_tevents[][2] = {
    {"message_start",
     "{\"type\":\"message_start\",\"message\":{\"id\":\"msg_2\",\"model\":"
     "\"claude\",\"usage\":{\"input_tokens\":4,\"output_tokens\":1}}}"},
    {"content_block_start",
     "{\"type\":\"content_block_start\",\"index\":1,\"content_block\":{"
     "\"type\":\"tool_use\",\"id\":\"tu_9\",\"name\":\"get_weather\","
     "\"input\":{}}}"},
    {"content_block_delta",
     "{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":"
     "\"input_json_delta\",\"partial_json\":\"{\\\"city\\\":\"}}"},
    {"content_block_delta",
     "{\"type\":\"content_block_delta\",\"index\":1,\"delta\":{\"type\":"
     "\"input_json_delta\",\"partial_json\":\"\\\"Paris\\\"}\"}}"},
    {"message_delta",
     "{\"type\":\"message_delta\",\"delta\":{\"stop_reason\":\"tool_"
     "use\"},\"usage\":{\"output_tokens\":5}}"},
    {"message_stop", "{\"type\":\"message_stop\"}"},
};

/*  Feeds count events (name NULL: "message") to a new stream of fx->p and
    checks that only the last one completes it; counts chunks in fx. The
    stream is the caller's. */
static llmq_stream_t *s_test_feed(s_test_fx_t *fx, const char *events[][2],
                                  const char **data, size_t count)
{
    llmq_stream_t *st = llmq_stream_new(fx->p, &fx->call);
    fx->chunks = 0;
    for (size_t i = 0; st && i < count; i++) {
        const char *name = events ? events[i][0] : "message";
        const char *text = events ? events[i][1] : data[i];
        int rc = llmq_stream_event(st, name, text, strlen(text), s_test_collect,
                                   &fx->chunks, &fx->err);
        LLMQ_CHECK_OR(rc == (i == count - 1 ? 1 : 0), llmq_stream_destroy(&st));
    }
    return st;
}

/*  Durations and rate-limit headers. */
static int s_test_ratelimit(s_test_fx_t *fx)
{
    (void)fx;
    CHECK(llmq_parse_duration_ms("6m0s", 4) == 360000);
    CHECK(llmq_parse_duration_ms("1.5s", 4) == 1500);
    CHECK(llmq_parse_duration_ms("120ms", 5) == 120);
    CHECK(llmq_parse_duration_ms("1h2m3s", 6) == 3723000);
    CHECK(llmq_parse_duration_ms("2", 1) == 2000);
    CHECK(llmq_parse_duration_ms("abc", 3) == -1);
    CHECK(llmq_parse_duration_ms("", 0) == -1);
    llmq_ratelimit_t rl;
    llmq_ratelimit_init(&rl);
    struct {
        const char *n, *v;
    } hs[] = {
        {"X-RateLimit-Limit-Requests", "500"},
        {"x-ratelimit-remaining-requests", " 499\r\n"},
        {"x-ratelimit-reset-requests", "120ms"},
        {"x-ratelimit-limit-tokens", "10000"},
        {"x-ratelimit-remaining-tokens", "9000"},
        {"x-ratelimit-reset-tokens", "6m0s"},
        {"retry-after", "2"},
        {"content-type", "application/json"},
        {"x-ratelimit-remaining-tokens", "bogus"},
    };
    for (size_t i = 0; i < sizeof hs / sizeof hs[0]; i++)
        llmq_ratelimit_header(&rl, hs[i].n, strlen(hs[i].n), hs[i].v,
                              strlen(hs[i].v));
    CHECK(rl.limit_requests == 500 && rl.remaining_requests == 499);
    CHECK(rl.reset_requests_ms == 120 && rl.limit_tokens == 10000);
    CHECK(rl.remaining_tokens == 9000 && rl.reset_tokens_ms == 360000);
    CHECK(rl.retry_after_ms == 2000);
    llmq_ratelimit_init(&rl);
    llmq_ratelimit_header(&rl, "retry-after-ms", 14, "250", 3);
    llmq_ratelimit_header(&rl, "retry-after", 11, "9", 1);
    CHECK(rl.retry_after_ms == 250);
    llmq_ratelimit_header(&rl, "anthropic-ratelimit-requests-remaining", 38,
                          "7", 1);
    llmq_ratelimit_header(&rl, "anthropic-ratelimit-tokens-reset", 32,
                          "2000-01-01T00:00:00Z", 20);
    CHECK(rl.remaining_requests == 7 && rl.reset_tokens_ms == 0);
    return 0;
}

/*  Providers and the key: fx->p becomes an OpenAI provider. */
static int s_test_openai_new(s_test_fx_t *fx)
{
    llmq_provider_config_t pc = {"openai", "http://127.0.0.1:1/v1/", s_test_key,
                                 NULL, 0};
    fx->p = llmq_provider_new(&pc, fx->errbuf, sizeof fx->errbuf);
    CHECK(fx->p);
    CHECK(strcmp(llmq_provider_base_url(fx->p), "http://127.0.0.1:1/v1") == 0);
    CHECK(llmq_provider_uses_http(fx->p));
    pc.kind = "nope";
    CHECK(llmq_provider_new(&pc, fx->errbuf, sizeof fx->errbuf) == NULL);
    CHECK(strstr(fx->errbuf, "nope"));
    char text[128];
    snprintf(text, sizeof text, "bad key %s and %s!", s_test_key, s_test_key);
    llmq_provider_scrub(fx->p, text, sizeof text, text);
    CHECK(strcmp(text, "bad key [redacted] and [redacted]!") == 0);
    return 0;
}

/*  The classification table, and curl's failures. */
static int s_test_classify(s_test_fx_t *fx)
{
    struct {
        int status;
        const char *body;
        llmq_err_t code;
        bool retry;
    } cases[] = {
        {400,
         "{\"error\":{\"message\":\"bad\",\"type\":\"invalid_request_error\"}}",
         LLMQ_ERR_INVALID_REQUEST, false},
        {400,
         "{\"error\":{\"message\":\"too "
         "long\",\"code\":\"context_length_exceeded\"}}",
         LLMQ_ERR_CONTEXT_LENGTH, false},
        {400,
         "{\"type\":\"error\",\"error\":{\"type\":\"invalid_request_error\","
         "\"message\":\"prompt is too long: 300000 tokens\"}}",
         LLMQ_ERR_CONTEXT_LENGTH, false},
        {400, "{\"error\":{\"message\":\"no\",\"code\":\"content_filter\"}}",
         LLMQ_ERR_CONTENT_FILTER, false},
        {404, "{\"error\":{\"message\":\"model not found\"}}",
         LLMQ_ERR_INVALID_REQUEST, false},
        {422, "", LLMQ_ERR_INVALID_REQUEST, false},
        {401,
         "{\"error\":{\"message\":\"Incorrect API key provided: "
         "sk-test-KEY-0123456789\"}}",
         LLMQ_ERR_AUTH, false},
        {403, "", LLMQ_ERR_AUTH, false},
        {408, "", LLMQ_ERR_TIMEOUT, true},
        {409, "", LLMQ_ERR_PROVIDER_ERROR, true},
        {301, "", LLMQ_ERR_PROVIDER_ERROR, false},
        {200, "{\"error\":{\"message\":\"in a 200\"}}", LLMQ_ERR_PROVIDER_ERROR,
         true},
        {413, "", LLMQ_ERR_INVALID_REQUEST, false},
        {429, "{\"error\":{\"message\":\"slow down\",\"type\":\"requests\"}}",
         LLMQ_ERR_RATE_LIMITED, true},
        {429,
         "{\"error\":{\"message\":\"quota\",\"code\":\"insufficient_quota\"}}",
         LLMQ_ERR_RATE_LIMITED, false},
        {500, "<html>oops</html>", LLMQ_ERR_PROVIDER_ERROR, true},
        {529,
         "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\","
         "\"message\":\"Overloaded\"}}",
         LLMQ_ERR_PROVIDER_ERROR, true},
    };
    llmq_perr_t *err = &fx->err;
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        llmq_provider_classify(fx->p, cases[i].status, cases[i].body,
                               strlen(cases[i].body), err);
        if (err->code != cases[i].code || err->retryable != cases[i].retry) {
            fprintf(stderr, "case %zu: %d -> %s\n", i, cases[i].status,
                    llmq_err_name(err->code));
            return -1;
        }
        CHECK(err->status == cases[i].status);
        CHECK(!strstr(err->message, s_test_key));
    }
    llmq_classify_curl(CURLE_OPERATION_TIMEDOUT, NULL, err);
    CHECK(err->code == LLMQ_ERR_TIMEOUT && err->retryable);
    llmq_classify_curl(CURLE_COULDNT_CONNECT, NULL, err);
    CHECK(err->code == LLMQ_ERR_PROVIDER_ERROR && err->retryable);
    return 0;
}

/*  The sample chat request (fx->body) and a call of it; its estimate. */
static int s_test_body(s_test_fx_t *fx)
{
    fx->body = cJSON_Parse(
        "{\"model\":\"x\",\"stream\":true,\"max_tokens\":10,"
        "\"messages\":[{\"role\":\"system\",\"content\":\"be brief\"},"
        "{\"role\":\"user\",\"content\":\"hello world!\"}]}");
    CHECK(llmq_estimate_tokens(fx->body, 1024) == (20 + 3) / 4 + 10);
    fx->call = (llmq_call_t){LLMQ_OP_CHAT, "gpt-test", false, fx->body};
    return 0;
}

/*  OpenAI request building: model from the header, stream forced; then
    parse: good, malformed, missing choices. */
static int s_test_openai_build(s_test_fx_t *fx)
{
    llmq_http_t *http = &fx->http;
    CHECK(llmq_provider_build(fx->p, &fx->call, http, &fx->err) == 0);
    CHECK(strcmp(http->url, "http://127.0.0.1:1/v1/chat/completions") == 0);
    CHECK(http->post && strstr(http->body, "\"model\":\"gpt-test\""));
    CHECK(!strstr(http->body, "stream"));
    CHECK(s_test_has_header(http->headers,
                            "Authorization: Bearer sk-test-KEY-0123456789"));
    llmq_http_reset(http);
    fx->call.stream = true;
    CHECK(llmq_provider_build(fx->p, &fx->call, http, &fx->err) == 0);
    CHECK(
        strstr(http->body,
               "\"stream\":true,\"stream_options\":{\"include_usage\":true}"));
    llmq_http_reset(http);
    CHECK(llmq_provider_health(fx->p, http) == 0);
    CHECK(strcmp(http->url, "http://127.0.0.1:1/v1/models") == 0 &&
          !http->post);
    llmq_http_reset(http);

    llmq_usage_t *usage = &fx->usage;
    cJSON *res = llmq_provider_parse(fx->p, &fx->call, s_test_ok,
                                     strlen(s_test_ok), usage, &fx->err);
    CHECK(res && usage->prompt_tokens == 5 && usage->completion_tokens == 1 &&
          usage->total_tokens == 6);
    cJSON_Delete(res);
    CHECK(!llmq_provider_parse(fx->p, &fx->call, "{\"choices\":[", 12, usage,
                               &fx->err));
    CHECK(fx->err.code == LLMQ_ERR_PROVIDER_ERROR && fx->err.retryable);
    CHECK(!llmq_provider_parse(fx->p, &fx->call, "{}", 2, usage, &fx->err));
    return 0;
}

/*  build_raw (from the msgpack payload) sends the bytes build (from the
    tree) sends, and estimates the same tokens; pack() gives parse()'s body
    and usage. fx->p is the openai provider. */
static int s_test_openai_raw(s_test_fx_t *fx)
{
    static const char *bodies[] = {
        "{\"model\":\"x\",\"messages\":[{\"role\":\"user\",\"content\":"
        "\"h\\u00e9 \\\"q\\\"\\n\",\"name\":\"bob\"}],\"max_tokens\":7,"
        "\"temperature\":0.7,\"stream\":false,\"seed\":12345678901234567,"
        "\"stop\":null,\"top_p\":1e-3,\"logit_bias\":{\"50256\":-100}}",
        "{\"stream\":true,\"stream_options\":{},\"prompt\":[\"a\",\"bc\"],"
        "\"max_completion_tokens\":3}",
        "{\"input\":[\"one\",\"two\"],\"system\":\"s\"}", "{}"};
    for (size_t i = 0; i < 4 * 4; i++) {
        const char *text = bodies[i % 4];
        llmq_call_t call = {i < 8 ? LLMQ_OP_CHAT : LLMQ_OP_EMBEDDING,
                            (i / 4) % 2 ? "" : "m-1", i % 3 == 0, NULL};
        cJSON *tree = cJSON_Parse(text);
        zframe_t *mp = llmq_value_from_json_text(text, strlen(text), NULL, 0);
        CHECK(tree && mp);
        call.body = tree;
        llmq_http_t a = {0}, b = {0};
        CHECK(llmq_provider_build(fx->p, &call, &a, &fx->err) == 0);
        CHECK(llmq_provider_build_raw(fx->p, &call, zframe_data(mp),
                                      zframe_size(mp), &b, &fx->err) == 0);
        CHECK(strcmp(a.body, b.body) == 0 && a.headers == b.headers);
        CHECK(
            llmq_estimate_tokens(tree, 99) ==
            llmq_estimate_tokens_msgpack(zframe_data(mp), zframe_size(mp), 99));
        CHECK(b.estimate == llmq_estimate_tokens(
                                tree, llmq_provider_default_max_tokens(fx->p)));
        llmq_http_reset(&a);
        llmq_http_reset(&b);
        cJSON_Delete(tree);
        zframe_destroy(&mp);
    }
    llmq_http_t h = {0};
    uint8_t not_map[] = {0x91, 0x01};
    CHECK(llmq_provider_build_raw(fx->p, &fx->call, not_map, sizeof not_map, &h,
                                  &fx->err) == -1);
    CHECK(fx->err.code == LLMQ_ERR_INVALID_REQUEST && !h.body);
    llmq_packer_t *pk = llmq_packer_new();
    llmq_usage_t u;
    zframe_t *f = llmq_provider_parse_frame(
        fx->p, &fx->call, s_test_ok, strlen(s_test_ok), pk, &u, &fx->err);
    cJSON *back =
        f ? llmq_value_to_json(zframe_data(f), zframe_size(f), NULL, 0) : NULL;
    cJSON *want = cJSON_Parse(s_test_ok);
    CHECK(back && cJSON_Compare(back, want, true));
    CHECK(u.prompt_tokens == 5 && u.completion_tokens == 1 &&
          u.total_tokens == 6);
    CHECK(!llmq_provider_parse_frame(fx->p, &fx->call, "{}", 2, pk, &u,
                                     &fx->err));
    static const char details[] =
        "{\"choices\":[],\"usage\":{\"prompt_tokens\":10,"
        "\"prompt_tokens_details\":{\"cached_tokens\":4},"
        "\"completion_tokens_details\":{\"reasoning_tokens\":3}}}";
    zframe_t *g = llmq_provider_parse_frame(fx->p, &fx->call, details,
                                            strlen(details), pk, &u, &fx->err);
    CHECK(g && u.prompt_tokens == 10 && u.cached_tokens == 4 &&
          u.reasoning_tokens == 3 && u.total_tokens == 10);
    zframe_destroy(&g);
    zframe_t *eb = llmq_provider_error_body(
        fx->p, "{\"error\":{\"code\":\"x\xff\"}}", 23, 16384);
    CHECK(eb == NULL); /* invalid UTF-8: the header would refuse it */
    eb = llmq_provider_error_body(fx->p, "{\"error\":{\"code\":\"x\"}}", 22,
                                  16384);
    CHECK(eb != NULL);
    zframe_destroy(&eb);
    CHECK(!llmq_provider_error_body(fx->p, "<html>", 6, 16384));
    cJSON *dt = cJSON_Parse(details);
    llmq_usage_t v;
    llmq_usage_init(&v);
    llmq_usage_details_from_json(dt, &v);
    CHECK(v.cached_tokens == 4 && v.reasoning_tokens == 3);
    cJSON_Delete(dt);
    cJSON_Delete(back);
    cJSON_Delete(want);
    zframe_destroy(&f);
    llmq_packer_destroy(&pk);
    return 0;
}

/*  OpenAI stream -> chunks -> assembled body; a stream cut before [DONE]
    is a provider error; broken JSON too. Destroys fx->p. */
static int s_test_openai_stream(s_test_fx_t *fx)
{
    llmq_stream_t *st = s_test_feed(fx, NULL, s_test_events, 5);
    CHECK(st);
    CHECK(fx->chunks == 4 && llmq_stream_chunks(st) == 4);
    cJSON *res = llmq_stream_finish(st, &fx->usage, &fx->err);
    CHECK(res);
    CHECK(strcmp(s_test_str(res, "choices.0.message.content"), "Hello") == 0);
    CHECK(strcmp(s_test_str(res, "choices.0.finish_reason"), "stop") == 0);
    CHECK(strcmp(s_test_str(res, "object"), "chat.completion") == 0);
    CHECK(fx->usage.total_tokens == 5);
    cJSON_Delete(res);
    llmq_stream_destroy(&st);
    st = llmq_stream_new(fx->p, &fx->call);
    CHECK(llmq_stream_event(st, "message", s_test_events[1],
                            strlen(s_test_events[1]), NULL, NULL,
                            &fx->err) == 0);
    CHECK(!llmq_stream_finish(st, &fx->usage, &fx->err) && fx->err.retryable);
    CHECK(llmq_stream_event(st, "message", "{oops", 5, NULL, NULL, &fx->err) ==
          -1);
    llmq_stream_destroy(&st);
    llmq_provider_destroy(&fx->p);
    CHECK(fx->p == NULL);
    return 0;
}

/*  Anthropic translation both ways: fx->p becomes an Anthropic provider;
    the request, an embedding it refuses, and a tool-use answer. */
static int s_test_anthropic_build(s_test_fx_t *fx)
{
    llmq_provider_config_t ac = {"anthropic", "http://127.0.0.1:1/v1",
                                 s_test_key, NULL, 512};
    fx->p = llmq_provider_new(&ac, fx->errbuf, sizeof fx->errbuf);
    CHECK(fx->p);
    fx->call.stream = false;
    llmq_http_t *http = &fx->http;
    CHECK(llmq_provider_build(fx->p, &fx->call, http, &fx->err) == 0);
    CHECK(strcmp(http->url, "http://127.0.0.1:1/v1/messages") == 0);
    cJSON *sent = cJSON_Parse(http->body);
    CHECK(strcmp(s_test_str(sent, "system"), "be brief") == 0);
    CHECK(strcmp(s_test_str(sent, "messages.0.role"), "user") == 0);
    CHECK(cJSON_GetArraySize(cJSON_GetObjectItem(sent, "messages")) == 1);
    CHECK(cJSON_GetObjectItem(sent, "max_tokens")->valueint == 10);
    cJSON_Delete(sent);
    CHECK(
        s_test_has_header(http->headers, "x-api-key: sk-test-KEY-0123456789"));
    CHECK(s_test_has_header(http->headers, "anthropic-version: 2023-06-01"));
    llmq_http_reset(http);
    llmq_call_t emb = {LLMQ_OP_EMBEDDING, "m", false, fx->body};
    CHECK(llmq_provider_build(fx->p, &emb, http, &fx->err) == -1);
    CHECK(fx->err.code == LLMQ_ERR_INVALID_REQUEST && !fx->err.retryable);
    llmq_usage_t *usage = &fx->usage;
    cJSON *res = llmq_provider_parse(fx->p, &fx->call, s_test_amsg,
                                     strlen(s_test_amsg), usage, &fx->err);
    CHECK(res);
    CHECK(strcmp(s_test_str(res, "choices.0.message.content"), "Hi there") ==
          0);
    CHECK(strcmp(s_test_str(res, "choices.0.finish_reason"), "tool_calls") ==
          0);
    CHECK(strcmp(s_test_str(
                     res, "choices.0.message.tool_calls.0.function.arguments"),
                 "{\"a\":1}") == 0);
    CHECK(usage->prompt_tokens == 7 && usage->completion_tokens == 3 &&
          usage->total_tokens == 10);
    cJSON_Delete(res);
    return 0;
}

/*  Anthropic streams: text, a streamed tool call (its start and argument
    pieces become one tool_calls entry), an error event. Destroys fx->p. */
static int s_test_anthropic_stream(s_test_fx_t *fx)
{
    fx->call.stream = true;
    llmq_stream_t *st = s_test_feed(fx, s_test_aevents, NULL, 7);
    CHECK(st);
    CHECK(fx->chunks == 4);
    cJSON *res = llmq_stream_finish(st, &fx->usage, &fx->err);
    CHECK(res &&
          strcmp(s_test_str(res, "choices.0.message.content"), "Yo") == 0);
    CHECK(strcmp(s_test_str(res, "choices.0.finish_reason"), "length") == 0);
    CHECK(strcmp(s_test_str(res, "id"), "msg_2") == 0);
    CHECK(fx->usage.prompt_tokens == 4 && fx->usage.completion_tokens == 2);
    cJSON_Delete(res);
    llmq_stream_destroy(&st);
    st = s_test_feed(fx, s_test_tevents, NULL, 6);
    CHECK(st);
    res = llmq_stream_finish(st, &fx->usage, &fx->err);
    CHECK(res);
    CHECK(strcmp(s_test_str(res, "choices.0.message.tool_calls.0.id"),
                 "tu_9") == 0);
    CHECK(
        strcmp(s_test_str(res, "choices.0.message.tool_calls.0.function.name"),
               "get_weather") == 0);
    CHECK(strcmp(s_test_str(
                     res, "choices.0.message.tool_calls.0.function.arguments"),
                 "{\"city\":\"Paris\"}") == 0);
    CHECK(strcmp(s_test_str(res, "choices.0.finish_reason"), "tool_calls") ==
          0);
    cJSON_Delete(res);
    llmq_stream_destroy(&st);
    st = llmq_stream_new(fx->p, &fx->call);
    const char *aerr = "{\"type\":\"error\",\"error\":{\"type\":\"overloaded_"
                       "error\",\"message\":\"Overloaded\"}}";
    CHECK(llmq_stream_event(st, "error", aerr, strlen(aerr), NULL, NULL,
                            &fx->err) == -1);
    CHECK(fx->err.code == LLMQ_ERR_PROVIDER_ERROR && fx->err.retryable);
    llmq_stream_destroy(&st);
    llmq_provider_destroy(&fx->p);
    return 0;
}

/*  Every prefix of text (n bytes) through every parser of both providers. */
static int s_test_prefixes(s_test_fx_t *fx, llmq_provider_t *both[2],
                           const char *text, size_t n)
{
    for (size_t cut = 0; cut <= n; cut++)
        for (int b = 0; b < 2; b++) {
            llmq_call_t c = {cut % 2 ? LLMQ_OP_COMPLETION : LLMQ_OP_CHAT, "m",
                             true, NULL};
            cJSON *r = llmq_provider_parse(both[b], &c, text, cut, &fx->usage,
                                           &fx->err);
            cJSON_Delete(r);
            llmq_provider_classify(both[b], 500, text, cut, &fx->err);
            llmq_stream_t *fs = llmq_stream_new(both[b], &c);
            CHECK(fs);
            llmq_stream_event(fs, "message_start", text, cut, s_test_collect,
                              &fx->chunks, &fx->err);
            llmq_stream_event(fs, "content_block_delta", text, cut,
                              s_test_collect, &fx->chunks, &fx->err);
            r = llmq_stream_finish(fs, &fx->usage, &fx->err);
            cJSON_Delete(r);
            llmq_stream_destroy(&fs);
        }
    return 0;
}

/*  Bad input never crashes: every prefix and a byte-flipped copy of the
    sample answers and events, through every parser. */
static int s_test_bad_input(s_test_fx_t *fx)
{
    llmq_provider_config_t oc = {"openai", "http://127.0.0.1:1/v1", s_test_key,
                                 NULL, 0};
    llmq_provider_config_t ac = {"anthropic", "http://127.0.0.1:1/v1",
                                 s_test_key, NULL, 512};
    llmq_provider_t *both[] = {
        llmq_provider_new(&oc, fx->errbuf, sizeof fx->errbuf),
        llmq_provider_new(&ac, fx->errbuf, sizeof fx->errbuf)};
    CHECK(both[0] && both[1]);
    const char *samples[] = {s_test_ok,
                             s_test_amsg,
                             s_test_events[0],
                             s_test_events[3],
                             s_test_aevents[0][1],
                             s_test_aevents[1][1],
                             s_test_aevents[3][1],
                             s_test_aevents[5][1]};
    for (size_t i = 0; i < sizeof samples / sizeof samples[0]; i++) {
        size_t n = strlen(samples[i]);
        char *copy = malloc(n + 1);
        CHECK(copy);
        for (int flip = 0; flip < 2; flip++) {
            memcpy(copy, samples[i], n + 1);
            if (flip)
                for (size_t k = 0; k < n; k += 7)
                    copy[k] ^= 0x20;
            CHECK(s_test_prefixes(fx, both, copy, n) == 0);
        }
        free(copy);
    }
    llmq_provider_destroy(&both[0]);
    llmq_provider_destroy(&both[1]);
    return 0;
}

/*  Echo: at once, deterministic, no HTTP. */
static int s_test_echo(s_test_fx_t *fx)
{
    llmq_provider_config_t ec = {"echo", NULL, NULL, NULL, 0};
    fx->p = llmq_provider_new(&ec, fx->errbuf, sizeof fx->errbuf);
    CHECK(fx->p && !llmq_provider_uses_http(fx->p));
    fx->call.stream = false;
    cJSON *res = llmq_provider_answer(fx->p, &fx->call, &fx->usage, &fx->err);
    cJSON *res2 = llmq_provider_answer(fx->p, &fx->call, &fx->usage, &fx->err);
    CHECK(res && res2);
    CHECK(strcmp(s_test_str(res, "choices.0.message.content"),
                 "echo: hello world!") == 0);
    CHECK(strcmp(s_test_str(res, "id"), s_test_str(res2, "id")) == 0);
    CHECK(fx->usage.completion_tokens > 0);
    cJSON_Delete(res);
    cJSON_Delete(res2);
    llmq_provider_destroy(&fx->p);
    llmq_provider_destroy(&fx->p);
    return 0;
}

int llmq_provider_test(bool verbose)
{
    if (verbose)
        printf(" * llmq_provider: ");
    s_test_fx_t fx;
    memset(&fx, 0, sizeof fx);
    //  The steps, in order: each goes on from where the last one left.
    static int (*const steps[])(s_test_fx_t *) = {s_test_ratelimit,
                                                  s_test_openai_new,
                                                  s_test_classify,
                                                  s_test_body,
                                                  s_test_openai_build,
                                                  s_test_openai_raw,
                                                  s_test_openai_stream,
                                                  s_test_anthropic_build,
                                                  s_test_anthropic_stream,
                                                  s_test_bad_input,
                                                  s_test_echo};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++)
        CHECK(steps[i](&fx) == 0);
    cJSON_Delete(fx.body);

    if (verbose)
        printf("OK\n");
    return 0;
}

/*  A provider that echoes the key in its error, at every offset around
    every cut (the 400-byte message, the 200-byte error page, the 512-byte
    perr message, a 64-byte buffer): no piece of 8 or more characters of
    the key is left in the classified message. */
static bool s_test_leaks(const char *text, const char *key)
{
    size_t n = strlen(text);
    for (size_t k = 0; k + 8 <= n; k++)
        if (strncmp(text + k, key, 8) == 0)
            return true;
    return false;
}

int llmq_provider_scrub_test(bool verbose)
{
    if (verbose)
        printf(" * llmq_provider_scrub: ");
    const char *key = "sk-test-SECRET-0123456789abcdef";
    llmq_provider_config_t pc = {"openai", "http://127.0.0.1:1/v1", key, NULL,
                                 0};
    char errbuf[128];
    llmq_provider_t *p = llmq_provider_new(&pc, errbuf, sizeof errbuf);
    CHECK(p);
    size_t klen = strlen(key);
    char *msg = (char *)malloc(2048), *body = (char *)malloc(2200);
    CHECK(msg && body);
    llmq_perr_t err;
    for (size_t off = 0; off < 600; off++) {
        memset(msg, 'A', off);
        snprintf(msg + off, 2048 - off, "%s is not valid", key);
        snprintf(body, 2200, "{\"error\":{\"message\":\"%s\"}}", msg);
        llmq_provider_classify(p, 401, body, strlen(body), &err);
        CHECK(err.code == LLMQ_ERR_AUTH && !s_test_leaks(err.message, key));
        llmq_classify_http(p, 400, body, strlen(body), &err);
        CHECK(!s_test_leaks(err.message, key));
        /*  Whole keys that fit become the marker. */
        if (off + klen < 390)
            CHECK(strstr(err.message, "[redacted]"));
        /*  Not JSON: an error page, printable prefix. */
        llmq_classify_http(p, 502, msg, strlen(msg), &err);
        CHECK(!s_test_leaks(err.message, key));
        char small[64];
        llmq_provider_scrub(p, small, sizeof small, msg);
        CHECK(!s_test_leaks(small, key) && strlen(small) < sizeof small);
    }
    free(msg);
    free(body);
    llmq_provider_destroy(&p);
    if (verbose)
        printf("OK\n");
    return 0;
}
