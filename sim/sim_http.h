/*  sim_http.h — llmq-sim's HTTP layer, shared by every route handler.

    The server's loop, base URL, id counter, accepted API keys and the
    per-route reply statistics, with the helpers that answer a request
    (sim_reply*), check its key (sim_auth) and read the clocks. Both
    sim_main.c (realtime routes, /_stats) and sim_batch.c (Files and Batch
    APIs) use it; it uses neither, so the sim's files depend one way:
    sim_main.c -> sim_batch.c -> sim_http.c -> sim_gen.c.
*/
#ifndef SIM_HTTP_H_INCLUDED
#define SIM_HTTP_H_INCLUDED

#include <stdbool.h>
#include <stdint.h>
#include <event2/event.h>
#include <event2/http.h>

//  Routes, for statistics. Order matches s_route_names in sim_main.c.
enum {
    SIM_R_CHAT = 0,
    SIM_R_COMPLETIONS,
    SIM_R_EMBEDDINGS,
    SIM_R_MESSAGES,
    SIM_R_MODELS,
    SIM_R_FILES,
    SIM_R_FILE,
    SIM_R_FILE_CONTENT,
    SIM_R_BATCHES,
    SIM_R_BATCH,
    SIM_R_BATCH_CANCEL,
    SIM_R_MBATCHES,
    SIM_R_MBATCH,
    SIM_R_MBATCH_RESULTS,
    SIM_R_MBATCH_CANCEL,
    SIM_R_STATS,
    SIM_R_RESET,
    SIM_R_HEALTH,
    SIM_R_OTHER,
    SIM_R_COUNT
};

//  Distinct status codes counted per route.
#define SIM_STATS_CODES 24

//  The HTTP state every handler shares. Plain fields: sim_main.c sets base,
//  url and the keys at start-up, and reads the statistics for /_stats.
typedef struct {
    struct event_base *base; //  the one loop (borrowed)
    char url[128];           //  "http://host:port" of this server
    uint64_t next_id;        //  last id number handed out
    char **api_keys;         //  accepted keys (borrowed; NULL = any)
    int n_api_keys;
    struct {
        int code;       //  HTTP status, or a sim_main.c pseudo-code
        uint64_t count; //  replies with it
    } stats[SIM_R_COUNT][SIM_STATS_CODES];
    uint64_t total;        //  replies counted
    uint64_t rate_limited; //  of them 429s
    int64_t in_flight;     //  requests not answered yet
} sim_http_t;

//  Monotonic and wall-clock time in ms.
int64_t sim_mono_ms(void);
int64_t sim_wall_ms(void);

//  Next unique id number (ids are prefix + hex of it).
uint64_t sim_next_id(sim_http_t *http);

//  Counts one reply with code under route (statistics only).
void sim_count(sim_http_t *http, int route, int code);
//  A request left our hands (answered, reset, or dropped).
void sim_done(sim_http_t *http);
//  Adds an output header to req.
void sim_header(struct evhttp_request *req, const char *name,
                const char *value);

//  The API key the request carries (x-api-key for Anthropic, else
//  Authorization: Bearer), borrowed from the request; NULL if none.
const char *sim_key(struct evhttp_request *req, bool anthropic);

//  Checks the API key (OpenAI: Authorization Bearer; Anthropic: x-api-key
//  and anthropic-version). Returns 0, or -1 after answering 401/400.
int sim_auth(sim_http_t *http, struct evhttp_request *req, int route,
             bool anthropic, uint64_t *keyhash);

//  Sends a reply with the given content type and counts it under route.
//  body is drained, not taken.
void sim_reply(sim_http_t *http, struct evhttp_request *req, int route,
               int status, const char *ctype, struct evbuffer *body);
//  Sends a JSON reply and counts it under route. Takes no ownership of body
//  (it is drained).
void sim_reply_json(sim_http_t *http, struct evhttp_request *req, int route,
                    int status, struct evbuffer *body);
//  Sends a JSON reply made of one string (a literal body).
void sim_reply_text(sim_http_t *http, struct evhttp_request *req, int route,
                    int status, const char *json);
//  Sends an error in the API's shape (anthropic or openai).
void sim_reply_error(sim_http_t *http, struct evhttp_request *req, int route,
                     bool anthropic, int status, const char *message,
                     const char *param, const char *code);

#endif
