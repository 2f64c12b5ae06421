/*  gw_http.c - evhttp setup, routing, connections, limits and replies.

    Every answer carries `x-request-id` (the caller's, if it sent a sane one,
    else ours). Errors come in the shape of the API the route belongs to:
    OpenAI {"error":{"message","type","param","code"}} or Anthropic
    {"type":"error","error":{"type","message"}}. Limits: evhttp enforces the
    body and header sizes (413 / 400), we count connections (503 past the
    limit) and time (gw_broker.c: 504).
*/
#include "gw.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

const char *gw_header(struct evhttp_request *req, const char *name)
{
    return evhttp_find_header(evhttp_request_get_input_headers(req), name);
}

static void s_common_headers(struct evhttp_request *req, const char *rid,
                             const char *ctype)
{
    struct evkeyvalq *out = evhttp_request_get_output_headers(req);
    evhttp_add_header(out, "Content-Type", ctype);
    if (rid && *rid)
        evhttp_add_header(out, "x-request-id", rid);
}

void gw_reply_json(struct evhttp_request *req, int status, const char *rid,
                   const char *json, size_t len)
{
    if (!req)
        return;
    s_common_headers(req, rid, "application/json");
    struct evbuffer *buf = evbuffer_new();
    evbuffer_add(buf, json, len);
    gw_reply_raw(req, status, buf);
    evbuffer_free(buf);
}

void gw_reply_raw(struct evhttp_request *req, int status, struct evbuffer *body)
{
    if (!gw_job_capture(req, status, body))
        evhttp_send_reply(req, status, NULL, body);
}

void gw_reply_cjson(struct evhttp_request *req, int status, const char *rid,
                    const cJSON *json)
{
    char *text = cJSON_PrintUnformatted(json);
    if (!text) {
        const char *oom = "{\"error\":{\"message\":\"out of memory\","
                          "\"type\":\"server_error\"}}";
        gw_reply_json(req, 500, rid, oom, strlen(oom));
        return;
    }
    gw_reply_json(req, status, rid, text, strlen(text));
    free(text);
}

/*  Anthropic's error type for an HTTP status. */
static const char *s_anthropic_type(int status)
{
    switch (status) {
    case 400:
    case 413:
        return status == 413 ? "request_too_large" : "invalid_request_error";
    case 401:
        return "authentication_error";
    case 403:
        return "permission_error";
    case 404:
        return "not_found_error";
    case 429:
        return "rate_limit_error";
    case 503:
    case 529:
        return "overloaded_error";
    default:
        return status >= 500 ? "api_error" : "invalid_request_error";
    }
}

void gw_reply_error(struct evhttp_request *req, gw_api_t api, int status,
                    const char *rid, const char *type, const char *code,
                    const char *param, const char *message)
{
    cJSON *root = cJSON_CreateObject();
    if (api == GW_API_ANTHROPIC) {
        cJSON_AddStringToObject(root, "type", "error");
        cJSON *err = cJSON_AddObjectToObject(root, "error");
        cJSON_AddStringToObject(err, "type", s_anthropic_type(status));
        cJSON_AddStringToObject(err, "message", message ? message : "");
        if (rid)
            cJSON_AddStringToObject(root, "request_id", rid);
    } else {
        cJSON *err = cJSON_AddObjectToObject(root, "error");
        cJSON_AddStringToObject(err, "message", message ? message : "");
        cJSON_AddStringToObject(err, "type", type ? type : "server_error");
        gw_json_add_text(err, "param", param);
        gw_json_add_text(err, "code", code);
    }
    gw_reply_cjson(req, status, rid, root);
    cJSON_Delete(root);
}

const char *gw_str(const cJSON *obj, const char *key, const char *dflt)
{
    const cJSON *v = cJSON_GetObjectItem(obj, key);
    return cJSON_IsString(v) ? v->valuestring : dflt;
}

void gw_json_add_text(cJSON *obj, const char *key, const char *text)
{
    if (text)
        cJSON_AddStringToObject(obj, key, text);
    else
        cJSON_AddNullToObject(obj, key);
}

const char *gw_lookup(const char *const table[][2], const char *key,
                      const char *dflt)
{
    for (size_t k = 0; key && table[k][0]; k++)
        if (streq(table[k][0], key))
            return table[k][1];
    return dflt;
}

void gw_path_id(const gw_call_t *c, const char *prefix, char id[72],
                char tail[32])
{
    const char *rest = c->path + strlen(prefix);
    *id = *tail = 0;
    if (*rest == '/')
        sscanf(rest + 1, "%71[^/]/%31s", id, tail);
}

void gw_route(gw_call_t *c, const gw_route_t *routes)
{
    char id[72], tail[32];
    for (const gw_route_t *r = routes; r->fn; r++) {
        size_t n = strlen(r->prefix);
        if (strncmp(c->path, r->prefix, n) != 0 ||
            (c->path[n] && c->path[n] != '/'))
            continue;
        gw_path_id(c, r->prefix, id, tail);
        if (r->method == c->method && r->has_id == (*id != 0) &&
            streq(r->tail, tail)) {
            r->fn(c, id, r->cancel);
            return;
        }
    }
    gw_reply_error(c->req, gw_api_of(c->path), 404, c->rid,
                   "invalid_request_error", NULL, NULL, "unknown route");
}

bool gw_result_common(gw_req_t *r, llmq_result_t *res,
                      void (*stream_end)(gw_req_t *r, llmq_result_t *res))
{
    if (r->stream && (res->ok || r->started)) {
        stream_end(r, res);
        return true;
    }
    if (!res->ok) {
        gw_reply_llmq_error(r->req, r->api, r->rid, res->error_code,
                            res->error_status, res->error_message);
        return true;
    }
    return false;
}

int gw_http_status_of(const char *code)
{
    static const struct {
        const char *code;
        int status;
    } map[] = {{"bad_message", 400},
               {"invalid_request", 400},
               {"auth", 401},
               {"not_found", 404},
               {"context_length", 400},
               {"content_filter", 400},
               {"rate_limited", 429},
               {"provider_error", 502},
               {"timeout", 504},
               {"overloaded", 429},
               {"deadline_exceeded", 504},
               {"cancelled", 499},
               {"internal", 500}};
    for (size_t i = 0; code && i < sizeof map / sizeof map[0]; i++)
        if (streq(map[i].code, code))
            return map[i].status;
    return 500;
}

/*  OpenAI's error type and code for one of the protocol's codes. */
static void s_openai_kind(const char *code, const char **type,
                          const char **ocode)
{
    *ocode = code;
    if (streq(code, "not_found")) {
        *type = "invalid_request_error";
        *ocode = "model_not_found";
    } else if (streq(code, "auth"))
        *type = "authentication_error";
    else if (streq(code, "rate_limited") || streq(code, "overloaded"))
        *type = "rate_limit_error";
    else if (streq(code, "context_length")) {
        *type = "invalid_request_error";
        *ocode = "context_length_exceeded";
    } else if (gw_http_status_of(code) < 500)
        *type = "invalid_request_error";
    else
        *type = "server_error";
}

/*  A provider that refused a request said why in its own JSON body; the
    worker keeps that text as the message. Pass it through when it already
    is an error object of this API's shape. */
static bool s_passthrough(struct evhttp_request *req, gw_api_t api,
                          const char *rid, int status, const char *message)
{
    if (!message || *message != '{' || status != 400)
        return false;
    cJSON *body = cJSON_Parse(message);
    bool ours = body && cJSON_IsObject(cJSON_GetObjectItem(body, "error")) &&
                (api == GW_API_OPENAI ||
                 cJSON_IsString(cJSON_GetObjectItem(body, "type")));
    if (ours)
        gw_reply_cjson(req, status, rid, body);
    cJSON_Delete(body);
    return ours;
}

void gw_reply_llmq_error(struct evhttp_request *req, gw_api_t api,
                         const char *rid, const char *code, int status,
                         const char *message)
{
    (void)status;
    if (!req)
        return;
    if (!code)
        code = "internal";
    int http = gw_http_status_of(code);
    if (s_passthrough(req, api, rid, http, message))
        return;
    if (streq(code, "overloaded") || streq(code, "rate_limited"))
        evhttp_add_header(evhttp_request_get_output_headers(req), "retry-after",
                          "1");
    const char *type, *ocode;
    s_openai_kind(code, &type, &ocode);
    char text[4200];
    snprintf(text, sizeof text, "%s%s%s", code, message ? ": " : "",
             message ? message : "");
    gw_reply_error(req, api, http, rid, type, ocode, NULL, text);
}

char *gw_body_text(struct evhttp_request *req, size_t *len_p)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    char *text = (char *)malloc(len + 1);
    if (!text)
        return NULL;
    evbuffer_copyout(in, text, len);
    text[len] = '\0';
    if (len_p)
        *len_p = len;
    return text;
}

cJSON *gw_body_json(struct evhttp_request *req, gw_api_t api, const char *rid)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    const char *data = (const char *)evbuffer_pullup(in, -1);
    cJSON *body = data ? cJSON_ParseWithLength(data, len) : NULL;
    if (!cJSON_IsObject(body)) {
        cJSON_Delete(body);
        gw_reply_error(req, api, 400, rid, "invalid_request_error",
                       "invalid_json", NULL,
                       "request body is not a JSON object");
        return NULL;
    }
    return body;
}

/*  Ids name files, batches (at the broker, shared by every gateway in front
    of it) and requests: unique across restarts and gateways, so time,
    a random nonce per process, and a counter. */
void gw_new_id(gw_t *gw, const char *prefix, char *out, size_t size)
{
    if (!gw->nonce) {
        zuuid_t *uuid = zuuid_new();
        const byte *b = uuid ? zuuid_data(uuid) : NULL;
        for (int i = 0; b && i < 4; i++)
            gw->nonce = (gw->nonce << 8) | b[i];
        gw->nonce |= 1; //  never 0: 0 means "not drawn yet"
        zuuid_destroy(&uuid);
    }
    snprintf(out, size, "%s%08x%08x%08" PRIx64, prefix,
             (unsigned)(zclock_time() / 1000), gw->nonce,
             (uint64_t)atomic_fetch_add(&gw->next_rid, 1) + 1);
}

//  --------------------------------------------------------------------------
//  Connections

static void s_conn_closed(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    gw_conn_t *conn = (gw_conn_t *)arg;
    gw_t *gw = conn->gw;
    if (conn->cur) {
        //  The HTTP client left while the broker works: cancel there.
        gw_req_t *r = conn->cur;
        //  A request evhttp detached from its dead connection is ours to
        //  free; one still attached is freed with the connection.
        if (r->req && evhttp_request_get_connection(r->req) == NULL)
            evhttp_request_free(r->req);
        r->req = NULL;
        r->conn = NULL;
        llmq_client_cancel_arg(gw->client, r);
        gw_kick(gw);
    }
    if (conn->job)
        gw_job_gone(conn->job);
    zhashx_delete(gw->conns, conn->key);
}

/*  The connection's record; a new connection past the limit gets NULL. */
static gw_conn_t *s_conn_of(gw_t *gw, struct evhttp_request *req, bool *over)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    *over = false;
    if (!evcon)
        return NULL;
    char key[32];
    snprintf(key, sizeof key, "%p", (void *)evcon);
    gw_conn_t *conn = (gw_conn_t *)zhashx_lookup(gw->conns, key);
    if (conn)
        return conn;
    if ((int64_t)zhashx_size(gw->conns) >= gw->cfg.max_conns) {
        *over = true;
        return NULL;
    }
    conn = (gw_conn_t *)calloc(1, sizeof *conn);
    if (!conn)
        return NULL;
    conn->gw = gw;
    conn->evcon = evcon;
    memcpy(conn->key, key, sizeof key);
    zhashx_insert(gw->conns, key, conn);
    evhttp_connection_set_closecb(evcon, s_conn_closed, conn);
    return conn;
}

gw_conn_t *gw_conn_lookup(gw_t *gw, struct evhttp_request *req)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(req);
    char key[32];
    snprintf(key, sizeof key, "%p", (void *)evcon);
    return evcon ? (gw_conn_t *)zhashx_lookup(gw->conns, key) : NULL;
}

//  --------------------------------------------------------------------------
//  Routing

/*  A caller's x-request-id is kept when it is short and printable. */
static void s_request_id(gw_t *gw, struct evhttp_request *req, char *rid,
                         size_t size)
{
    const char *given = gw_header(req, "x-request-id");
    size_t n = given ? strlen(given) : 0;
    bool ok = n > 0 && n < 64;
    for (size_t i = 0; ok && i < n; i++)
        ok = given[i] > 32 && given[i] < 127;
    if (ok)
        snprintf(rid, size, "%s", given);
    else
        gw_new_id(gw, "req_", rid, size);
}

/*  W3C traceparent: 00-<32 hex>-<16 hex>-<2 hex>; anything else dropped. */
static const char *s_trace(struct evhttp_request *req)
{
    const char *t = gw_header(req, "traceparent");
    if (!t || strlen(t) != 55 || t[2] != '-' || t[35] != '-' || t[52] != '-')
        return NULL;
    for (int i = 0; i < 55; i++)
        if (i != 2 && i != 35 && i != 52 && !isxdigit((unsigned char)t[i]))
            return NULL;
    return t;
}

/*  The API key: bearer token, or x-api-key (Anthropic's header, accepted on
    every route as the SDKs differ). NULL when none is given. */
static const char *s_api_key(struct evhttp_request *req)
{
    const char *auth = gw_header(req, "Authorization");
    if (auth && strncasecmp(auth, "Bearer ", 7) == 0)
        return auth + 7;
    return gw_header(req, "x-api-key");
}

gw_api_t gw_api_of(const char *path)
{
    return strncmp(path, "/v1/messages", 12) == 0 ? GW_API_ANTHROPIC
                                                  : GW_API_OPENAI;
}

static bool s_method(gw_call_t *c, enum evhttp_cmd_type want)
{
    if (c->method == want)
        return true;
    gw_reply_error(c->req, gw_api_of(c->path), 405, c->rid,
                   "invalid_request_error", "method_not_allowed", NULL,
                   "method not allowed on this route");
    return false;
}

static void s_dispatch(gw_call_t *c)
{
    const char *p = c->path;
    if (streq(p, "/v1/chat/completions")) {
        if (s_method(c, EVHTTP_REQ_POST))
            gw_openai_infer(c, LLMQ_OP_CHAT);
    } else if (streq(p, "/v1/completions")) {
        if (s_method(c, EVHTTP_REQ_POST))
            gw_openai_infer(c, LLMQ_OP_COMPLETION);
    } else if (streq(p, "/v1/embeddings")) {
        if (s_method(c, EVHTTP_REQ_POST))
            gw_openai_infer(c, LLMQ_OP_EMBEDDING);
    } else if (streq(p, "/v1/models") || strncmp(p, "/v1/models/", 11) == 0) {
        if (s_method(c, EVHTTP_REQ_GET))
            gw_openai_models(c);
    } else if (streq(p, "/v1/messages")) {
        if (s_method(c, EVHTTP_REQ_POST))
            gw_anthropic_messages(c);
    } else if (strncmp(p, "/v1/messages/batches", 20) == 0)
        gw_jobs_submit(c, gw_batches_route);
    else if (streq(p, "/v1/files") || strncmp(p, "/v1/files/", 10) == 0)
        gw_jobs_submit(c, gw_files_route);
    else if (streq(p, "/v1/batches") || strncmp(p, "/v1/batches/", 12) == 0)
        gw_jobs_submit(c, gw_batches_route);
    else
        gw_reply_error(c->req, gw_api_of(p), 404, c->rid,
                       "invalid_request_error", "unknown_url", NULL,
                       "unknown route");
}

/*  Auth: with a key file, every /v1 route needs a known key. */
static const char *s_auth(gw_t *gw, gw_call_t *c)
{
    const char *key = s_api_key(c->req);
    if (!gw->keys)
        return "default";
    const char *tenant = key ? gw_keys_tenant(gw->keys, key) : NULL;
    if (!tenant)
        gw_reply_error(c->req, gw_api_of(c->path), 401, c->rid,
                       "invalid_request_error", "invalid_api_key", NULL,
                       key ? "Incorrect API key provided"
                           : "Missing API key (Authorization: Bearer KEY)");
    return tenant;
}

static void s_on_request(struct evhttp_request *req, void *arg)
{
    gw_t *gw = (gw_t *)arg;
    char rid[72];
    s_request_id(gw, req, rid, sizeof rid);
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *raw = uri ? evhttp_uri_get_path(uri) : NULL;
    char *path = raw ? evhttp_uridecode(raw, 0, NULL) : NULL;
    gw_call_t c = {gw,
                   req,
                   NULL,
                   rid,
                   s_trace(req),
                   path ? path : "/",
                   uri ? evhttp_uri_get_query(uri) : NULL,
                   evhttp_request_get_command(req)};
    bool over = false;
    gw_conn_t *conn = s_conn_of(gw, req, &over);
    (void)conn;
    if (over) {
        evhttp_add_header(evhttp_request_get_output_headers(req), "Connection",
                          "close");
        gw_reply_error(req, gw_api_of(c.path), 503, rid, "server_error",
                       "too_many_connections", NULL,
                       "too many open connections to this gateway");
    } else if (streq(c.path, "/health") || streq(c.path, "/healthz"))
        gw_reply_json(req, 200, rid, "{\"ok\":true}", 11);
    else if ((c.tenant = s_auth(gw, &c)))
        s_dispatch(&c);
    if (gw->cfg.verbose)
        llmq_log(NULL, LLMQ_LOG_INFO, "request", LLMQ_LOG_STR("rid", rid),
                 LLMQ_LOG_STR("method", c.method == EVHTTP_REQ_GET ? "GET"
                                        : c.method == EVHTTP_REQ_DELETE
                                            ? "DELETE"
                                            : "POST"),
                 LLMQ_LOG_STR("path", c.path), LLMQ_LOG_END);
    free(path);
}

static void s_conn_destructor(void **item)
{
    free(*item);
    *item = NULL;
}

static int s_listen(const char *host, int port)
{
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
        llmq_log(NULL, LLMQ_LOG_ERROR, "start_failed",
                 LLMQ_LOG_STR("reason", "--host is not an IPv4 address"),
                 LLMQ_LOG_STR("host", host), LLMQ_LOG_END);
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) || listen(fd, 4096)) {
        llmq_log(NULL, LLMQ_LOG_ERROR, "start_failed",
                 LLMQ_LOG_STR("reason", "cannot listen"),
                 LLMQ_LOG_STR("host", host), LLMQ_LOG_INT("port", port),
                 LLMQ_LOG_STR("error", strerror(errno)), LLMQ_LOG_END);
        close(fd);
        return -1;
    }
    return fd;
}

int gw_http_start(gw_t *gw, int *bound_port)
{
    char unused[80];
    gw_new_id(gw, "", unused, sizeof unused); //  draws the nonce, one thread
    gw->conns = zhashx_new();
    zhashx_set_destructor(gw->conns, s_conn_destructor);
    gw->http = evhttp_new(gw->base);
    int fd = s_listen(gw->cfg.host, gw->cfg.port);
    if (!gw->http || fd < 0)
        return -1;
    if (!(gw->listener = evhttp_accept_socket_with_handle(gw->http, fd))) {
        close(fd);
        return -1;
    }
    evhttp_set_max_body_size(gw->http, gw->cfg.max_body);
    evhttp_set_max_headers_size(gw->http, gw->cfg.max_headers);
    struct timeval idle = {gw->cfg.idle_timeout_ms / 1000,
                           (gw->cfg.idle_timeout_ms % 1000) * 1000};
    evhttp_set_timeout_tv(gw->http, &idle);
    evhttp_set_allowed_methods(gw->http, EVHTTP_REQ_GET | EVHTTP_REQ_POST |
                                             EVHTTP_REQ_DELETE);
    evhttp_set_gencb(gw->http, s_on_request, gw);
    struct sockaddr_in sa;
    socklen_t len = sizeof sa;
    getsockname(fd, (struct sockaddr *)&sa, &len);
    *bound_port = ntohs(sa.sin_port);
    return 0;
}

void gw_http_stop(gw_t *gw)
{
    if (gw->http)
        evhttp_free(gw->http); //  closes connections -> s_conn_closed
    gw->http = NULL;
    zhashx_destroy(&gw->conns);
}
