/*  sim_http.c — llmq-sim's HTTP layer: replies, statistics, API keys, clocks.

    Every route handler answers through sim_reply*, so each reply is counted
    once under its route and the in-flight count drops once. See sim_http.h.
*/
#include "sim_http.h"
#include "sim.h"

#include <string.h>
#include <strings.h>
#include <time.h>
#include <event2/buffer.h>
#include <event2/keyvalq_struct.h>

int64_t sim_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t sim_wall_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

uint64_t sim_next_id(sim_http_t *http)
{
    return ++http->next_id;
}

void sim_count(sim_http_t *http, int route, int code)
{
    http->total++;
    if (code == 429)
        http->rate_limited++;
    for (int i = 0; i < SIM_STATS_CODES; i++) {
        if (http->stats[route][i].code == code) {
            http->stats[route][i].count++;
            return;
        }
        if (http->stats[route][i].code == 0) {
            http->stats[route][i].code = code;
            http->stats[route][i].count = 1;
            return;
        }
    }
}

void sim_done(sim_http_t *http)
{
    http->in_flight--;
}

void sim_header(struct evhttp_request *req, const char *name, const char *value)
{
    evhttp_add_header(evhttp_request_get_output_headers(req), name, value);
}

void sim_reply(sim_http_t *http, struct evhttp_request *req, int route,
               int status, const char *ctype, struct evbuffer *body)
{
    sim_header(req, "Content-Type", ctype);
    sim_count(http, route, status);
    evhttp_send_reply(req, status, NULL, body);
    sim_done(http);
}

void sim_reply_json(sim_http_t *http, struct evhttp_request *req, int route,
                    int status, struct evbuffer *body)
{
    sim_reply(http, req, route, status, "application/json", body);
}

void sim_reply_text(sim_http_t *http, struct evhttp_request *req, int route,
                    int status, const char *json)
{
    struct evbuffer *out = evbuffer_new();
    evbuffer_add(out, json, strlen(json));
    sim_reply_json(http, req, route, status, out);
    evbuffer_free(out);
}

void sim_reply_error(sim_http_t *http, struct evhttp_request *req, int route,
                     bool anthropic, int status, const char *message,
                     const char *param, const char *code)
{
    struct evbuffer *body = evbuffer_new();
    if (anthropic)
        sim_err_anthropic(body, sim_anthropic_type(status), message);
    else
        sim_err_openai(body, message, sim_openai_type(status), param, code);
    sim_reply_json(http, req, route, status, body);
    evbuffer_free(body);
}

//  The request's API key, or NULL: x-api-key (Anthropic) first, then
//  Authorization: Bearer.
static const char *s_key_of(struct evkeyvalq *in, bool anthropic)
{
    const char *key = NULL;
    if (anthropic)
        key = evhttp_find_header(in, "x-api-key");
    if (!key) {
        const char *auth = evhttp_find_header(in, "Authorization");
        if (auth && strncasecmp(auth, "Bearer ", 7) == 0) {
            key = auth + 7;
            while (*key == ' ')
                key++;
        }
    }
    return key;
}

const char *sim_key(struct evhttp_request *req, bool anthropic)
{
    return s_key_of(evhttp_request_get_input_headers(req), anthropic);
}

int sim_auth(sim_http_t *http, struct evhttp_request *req, int route,
             bool anthropic, uint64_t *keyhash)
{
    struct evkeyvalq *in = evhttp_request_get_input_headers(req);
    const char *key = s_key_of(in, anthropic);
    bool ok = key && *key;
    if (ok && http->n_api_keys) {
        ok = false;
        for (int i = 0; i < http->n_api_keys; i++)
            if (strcmp(key, http->api_keys[i]) == 0)
                ok = true;
    }
    if (!ok) {
        //  Never echo the key back: it may be a real secret sent by mistake.
        const char *msg =
            (key && *key)
                ? (anthropic ? "invalid x-api-key"
                             : "Incorrect API key provided.")
                : (anthropic ? "x-api-key header is required"
                             : "You didn't provide an API key. You need to "
                               "provide your API key in an "
                               "Authorization header using Bearer auth (i.e. "
                               "Authorization: Bearer YOUR_KEY).");
        sim_reply_error(http, req, route, anthropic, 401, msg, NULL,
                        "invalid_api_key");
        return -1;
    }
    if (anthropic && !evhttp_find_header(in, "anthropic-version")) {
        sim_reply_error(http, req, route, true, 400,
                        "anthropic-version: header is required", NULL, NULL);
        return -1;
    }
    if (keyhash)
        *keyhash = sim_fnv(SIM_FNV_OFFSET, key, strlen(key));
    return 0;
}
