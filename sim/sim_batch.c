/*  sim_batch.c — in-memory Files API, OpenAI Batch API and Anthropic Message
    Batches for llmq-sim.

    A batch is a list of lines plus a state machine driven by two timers: the
    phase timer (validating -> in_progress ticks -> finalizing -> completed,
    or cancelling -> cancelled) and the expiry timer (completion window).
    Each tick answers a slice of lines through sim_exec_line, the same code
    the realtime routes use, so bodies, directives and double-billing counts
    are identical whichever way a request travels. A line whose text holds
    [[sim:hang=N]] never completes: its batch can only expire, which is how
    tests reach the "expired" state.

    Files live in memory, bounded by --max-file-store; a batch holds a
    reference to its input file so deleting the file cannot pull the lines
    from under it.
*/
#include "sim.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <event2/keyvalq_struct.h>

#define S_OPENAI_MAX_LINES 50000
#define S_ANTHROPIC_MAX_LINES 100000

typedef struct s_file {
    struct s_file *next; //  in self->files (newest first)
    char id[40];
    char *filename;
    char purpose[32];
    char *data; //  content (owned)
    size_t len;
    int64_t created; //  unix seconds
    int refs;        //  store + batches using it
    bool listed;     //  still in the store (not deleted)
} s_file_t;

//  Line states.
enum { L_PENDING = 0, L_DONE, L_STUCK };

typedef struct {
    char *custom_id;
    cJSON *body; //  request body (owned)
    int state;
    int status;   //  HTTP status of the answer (L_DONE)
    char *result; //  answer body JSON (owned, L_DONE)
} s_line_t;

typedef enum { K_OPENAI, K_ANTHROPIC } s_kind_t;

//  OpenAI statuses; Anthropic maps them to in_progress / canceling / ended.
typedef enum {
    B_VALIDATING,
    B_FAILED,
    B_IN_PROGRESS,
    B_FINALIZING,
    B_COMPLETED,
    B_EXPIRED,
    B_CANCELLING,
    B_CANCELLED
} s_state_t;

static const char *s_state_names[] = {"validating", "failed",    "in_progress",
                                      "finalizing", "completed", "expired",
                                      "cancelling", "cancelled"};

typedef struct s_batch {
    struct s_batch *next; //  in self->batches (newest first)
    sim_batches_t *owner;
    s_kind_t kind;
    char id[48];
    char endpoint[64];
    sim_op_t op;
    s_file_t *input; //  OpenAI: input file (a reference)
    char completion_window[16];
    cJSON *metadata; //  OpenAI metadata (owned) or NULL
    s_state_t state;
    //  wall-clock ms, 0 = not yet
    int64_t created_at, in_progress_at, finalizing_at, completed_at, failed_at,
        expired_at, cancelling_at, cancelled_at, expires_at;
    s_line_t *lines;
    int n_lines;
    int next_line; //  processing cursor
    int n_ok, n_err, n_stuck, n_expired, n_cancelled;
    char output_file_id[40];
    char error_file_id[40];
    char *errors_json;    //  validation errors (OpenAI "errors")
    char *key;            //  API key it was created with (echo_key)
    struct event *timer;  //  phase timer
    struct event *expire; //  completion window
} s_batch_t;

struct sim_batches_s {
    sim_http_t *http;        //  the server's HTTP layer (borrowed)
    sim_batch_exec_fn *exec; //  answers one line (sim_main.c)
    void *exec_arg;
    sim_batch_cfg_t cfg;
    s_file_t *files;
    s_batch_t *batches;
    int64_t store_bytes; //  bytes of listed files
    uint64_t created[2], completed[2], failed[2], expired[2], cancelled[2];
    uint64_t lines_ok, lines_err;
};

static void s_phase(evutil_socket_t fd, short what, void *arg);
static void s_expire(evutil_socket_t fd, short what, void *arg);

//  --- files
//  -------------------------------------------------------------------

static void s_file_unref(sim_batches_t *self, s_file_t *f)
{
    if (--f->refs > 0)
        return;
    (void)self;
    free(f->filename);
    free(f->data);
    free(f);
}

//  Stores data (taken) as a new file; NULL when over the store bound.
static s_file_t *s_file_add(sim_batches_t *self, const char *filename,
                            const char *purpose, char *data, size_t len,
                            bool force)
{
    if (!force && self->store_bytes + (int64_t)len > self->cfg.max_store)
        return NULL;
    s_file_t *f = calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    snprintf(f->id, sizeof(f->id), "file-sim%012" PRIx64,
             sim_next_id(self->http));
    f->filename = strdup(filename ? filename : "file.jsonl");
    snprintf(f->purpose, sizeof(f->purpose), "%s", purpose);
    f->data = data;
    f->len = len;
    f->created = sim_wall_ms() / 1000;
    f->refs = 1;
    f->listed = true;
    f->next = self->files;
    self->files = f;
    self->store_bytes += (int64_t)len;
    return f;
}

static s_file_t *s_file_find(sim_batches_t *self, const char *id, size_t idlen)
{
    for (s_file_t *f = self->files; f; f = f->next)
        if (strlen(f->id) == idlen && memcmp(f->id, id, idlen) == 0)
            return f;
    return NULL;
}

static void s_file_json(struct evbuffer *out, const s_file_t *f)
{
    evbuffer_add_printf(out,
                        "{\"id\":\"%s\",\"object\":\"file\",\"bytes\":%zu,"
                        "\"created_at\":%" PRId64 ",\"filename\":",
                        f->id, f->len, f->created);
    sim_json_str(out, f->filename);
    evbuffer_add_printf(
        out,
        ",\"purpose\":\"%s\",\"status\":\"processed\",\"status_details\":null}",
        f->purpose);
}

//  Finds a part's parameter value (name="x") in its header block.
static char *s_disposition_param(const char *hdr, size_t hlen,
                                 const char *param)
{
    char key[32];
    int klen = snprintf(key, sizeof(key), "%s=\"", param);
    for (size_t i = 0; i + (size_t)klen <= hlen; i++) {
        if (memcmp(hdr + i, key, (size_t)klen) != 0)
            continue;
        //  make sure we matched "name=" and not the tail of "filename="
        if (i > 0 && hdr[i - 1] != ' ' && hdr[i - 1] != ';')
            continue;
        const char *v = hdr + i + klen;
        const char *e = memchr(v, '"', hlen - (size_t)(v - hdr));
        if (!e)
            return NULL;
        return strndup(v, (size_t)(e - v));
    }
    return NULL;
}

//  What a file upload's form holds.
typedef struct {
    char *purpose;     //  "purpose" field (fresh), or NULL
    char *filename;    //  the file part's filename (fresh), or NULL
    const char *fdata; //  the file part's bytes (in the body), or NULL
    size_t flen;
} s_upload_t;

//  Reads the parts of a multipart body whose every delimiter (the first
//  one too) is delim ("\r\n--BOUNDARY"), into *up (the first part of
//  each name wins).
static void s_multipart_parse(const char *body, size_t len, const char *delim,
                              size_t dlen, s_upload_t *up)
{
    const char *p = sim_memfind(body, len, delim, dlen);
    while (p) {
        p += dlen;
        if ((size_t)(body + len - p) >= 2 && p[0] == '-' && p[1] == '-')
            break; //  closing delimiter
        const char *hend =
            sim_memfind(p, (size_t)(body + len - p), "\r\n\r\n", 4);
        if (!hend)
            break;
        const char *content = hend + 4;
        const char *next =
            sim_memfind(content, (size_t)(body + len - content), delim, dlen);
        if (!next)
            break;
        char *name = s_disposition_param(p, (size_t)(hend - p), "name");
        if (name && strcmp(name, "purpose") == 0 && !up->purpose)
            up->purpose = strndup(content, (size_t)(next - content));
        else if (name && strcmp(name, "file") == 0 && !up->fdata) {
            up->filename =
                s_disposition_param(p, (size_t)(hend - p), "filename");
            up->fdata = content;
            up->flen = (size_t)(next - content);
        }
        free(name);
        p = next;
    }
}

//  POST /v1/files: multipart/form-data with "purpose" and "file".
static void s_files_upload(sim_batches_t *self, struct evhttp_request *req)
{
    sim_http_t *sim = self->http;
    const char *ctype = evhttp_find_header(
        evhttp_request_get_input_headers(req), "Content-Type");
    const char *b = ctype ? strstr(ctype, "boundary=") : NULL;
    if (!ctype || strncasecmp(ctype, "multipart/form-data", 19) != 0 || !b) {
        sim_reply_error(
            sim, req, SIM_R_FILES, false, 400,
            "Expected a multipart/form-data body with 'purpose' and 'file'.",
            NULL, NULL);
        return;
    }
    b += 9;
    char delim[256];
    size_t blen = strcspn(b, ";");
    if (*b == '"') {
        b++;
        blen = strcspn(b, "\"");
    }
    if (blen == 0 || blen > 200) {
        sim_reply_error(sim, req, SIM_R_FILES, false, 400,
                        "Bad multipart boundary.", NULL, NULL);
        return;
    }
    int dlen = snprintf(delim, sizeof(delim), "\r\n--%.*s", (int)blen, b);
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    //  A leading CRLF lets every delimiter, the first one too, be "\r\n--B".
    char *body = malloc(len + 3);
    if (!body) {
        sim_reply_error(sim, req, SIM_R_FILES, false, 500, "out of memory",
                        NULL, NULL);
        return;
    }
    body[0] = '\r';
    body[1] = '\n';
    evbuffer_copyout(in, body + 2, len);
    len += 2;
    s_upload_t up = {0};
    s_multipart_parse(body, len, delim, (size_t)dlen, &up);
    char *purpose = up.purpose, *filename = up.filename;
    const char *fdata = up.fdata;
    size_t flen = up.flen;
    if (!purpose || !fdata) {
        sim_reply_error(sim, req, SIM_R_FILES, false, 400,
                        !purpose ? "Missing required parameter: 'purpose'."
                                 : "Missing required parameter: 'file'.",
                        !purpose ? "purpose" : "file", NULL);
        goto done;
    }
    char *copy = malloc(flen + 1);
    if (copy) {
        memcpy(copy, fdata, flen);
        copy[flen] = 0;
    }
    s_file_t *f =
        copy ? s_file_add(self, filename, purpose, copy, flen, false) : NULL;
    if (!f) {
        free(copy);
        sim_reply_error(sim, req, SIM_R_FILES, false, 413,
                        "File storage limit reached (--max-file-store).",
                        "file", NULL);
        goto done;
    }
    struct evbuffer *out = evbuffer_new();
    s_file_json(out, f);
    sim_reply_json(sim, req, SIM_R_FILES, 200, out);
    evbuffer_free(out);
done:
    free(purpose);
    free(filename);
    free(body);
}

//  A request path under a collection: the root itself, root/ID, or
//  root/ID/ACTION for one of the collection's actions.
typedef struct {
    bool is_root;
    const char *id; //  NULL for the root; not NUL-terminated
    size_t idlen;
    int action; //  0: none, k: actions[k - 1]
    int route;  //  for statistics: routes[0] root, [1] item, [1 + k] action
} s_path_t;

//  Splits path (under root) into *p, checks the API key (auth answers
//  401/400) and answers 404 for a path that is none of the shapes (an
//  empty ID too, unless empty_id). Returns 0, or -1 when answered.
static int s_path_open(sim_http_t *sim, struct evhttp_request *req,
                       const char *path, const char *root,
                       const char *const *actions, const int *routes,
                       bool anthropic, bool empty_id, s_path_t *p)
{
    size_t rootlen = strlen(root);
    memset(p, 0, sizeof(*p));
    p->is_root = path[rootlen] == 0;
    p->id = p->is_root ? NULL : path + rootlen + 1;
    p->idlen = p->id ? strcspn(p->id, "/") : 0;
    for (int k = 0; p->id && actions[k]; k++)
        if (p->id[p->idlen] == '/' &&
            strcmp(p->id + p->idlen + 1, actions[k]) == 0)
            p->action = k + 1;
    p->route = p->is_root ? routes[0] : routes[1 + p->action];
    if (sim_auth(sim, req, p->route, anthropic, NULL))
        return -1;
    if ((p->id && p->id[p->idlen] && !p->action) ||
        (p->id && p->idlen == 0 && !empty_id)) {
        sim_reply_error(sim, req, SIM_R_OTHER, anthropic, 404,
                        "Unknown request URL.", NULL, "unknown_url");
        return -1;
    }
    return 0;
}

void sim_batches_files(sim_batches_t *self, struct evhttp_request *req,
                       const char *path)
{
    sim_http_t *sim = self->http;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    static const char *const actions[] = {"content", NULL};
    static const int routes[] = {SIM_R_FILES, SIM_R_FILE, SIM_R_FILE_CONTENT};
    s_path_t p;
    if (s_path_open(sim, req, path, "/v1/files", actions, routes, false, true,
                    &p))
        return;
    bool is_root = p.is_root, content = p.action == 1;
    const char *id = p.id;
    size_t idlen = p.idlen;
    int route = p.route;
    if (is_root && cmd == EVHTTP_REQ_POST) {
        s_files_upload(self, req);
        return;
    }
    struct evbuffer *out = evbuffer_new();
    if (is_root && cmd == EVHTTP_REQ_GET) {
        evbuffer_add_printf(out, "{\"object\":\"list\",\"data\":[");
        int i = 0;
        for (s_file_t *f = self->files; f; f = f->next) {
            if (i++)
                evbuffer_add(out, ",", 1);
            s_file_json(out, f);
        }
        evbuffer_add_printf(out, "],\"has_more\":false}");
        sim_reply_json(sim, req, route, 200, out);
        evbuffer_free(out);
        return;
    }
    s_file_t *f = id ? s_file_find(self, id, idlen) : NULL;
    if (!is_root && !f && (cmd == EVHTTP_REQ_GET || cmd == EVHTTP_REQ_DELETE)) {
        char msg[128];
        snprintf(msg, sizeof(msg), "No such File object: %.*s",
                 (int)(idlen > 60 ? 60 : idlen), id);
        sim_reply_error(sim, req, route, false, 404, msg, "id", NULL);
    } else if (f && content && cmd == EVHTTP_REQ_GET) {
        evbuffer_add(out, f->data, f->len);
        sim_reply(sim, req, route, 200, "application/octet-stream", out);
    } else if (f && !content && cmd == EVHTTP_REQ_GET) {
        s_file_json(out, f);
        sim_reply_json(sim, req, route, 200, out);
    } else if (f && !content && cmd == EVHTTP_REQ_DELETE) {
        s_file_t **pp = &self->files;
        while (*pp != f)
            pp = &(*pp)->next;
        *pp = f->next;
        f->listed = false;
        self->store_bytes -= (int64_t)f->len;
        evbuffer_add_printf(
            out, "{\"id\":\"%s\",\"object\":\"file\",\"deleted\":true}", f->id);
        sim_reply_json(sim, req, route, 200, out);
        s_file_unref(self, f);
    } else
        sim_reply_error(sim, req, route, false, 405, "Method not allowed.",
                        NULL, NULL);
    evbuffer_free(out);
}

//  --- batch engine
//  -------------------------------------------------------------

static void s_time_or_null(struct evbuffer *out, const char *name, int64_t ms,
                           bool first)
{
    if (ms)
        evbuffer_add_printf(out, "%s\"%s\":%" PRId64, first ? "" : ",", name,
                            ms / 1000);
    else
        evbuffer_add_printf(out, "%s\"%s\":null", first ? "" : ",", name);
}

static void s_rfc_or_null(struct evbuffer *out, const char *name, int64_t ms)
{
    if (ms) {
        char t[48];
        sim_rfc3339(t, sizeof(t), ms);
        evbuffer_add_printf(out, ",\"%s\":\"%s\"", name, t);
    } else
        evbuffer_add_printf(out, ",\"%s\":null", name);
}

static const char *s_anthropic_status(s_state_t st)
{
    switch (st) {
    case B_CANCELLING:
        return "canceling";
    case B_COMPLETED:
    case B_EXPIRED:
    case B_CANCELLED:
    case B_FAILED:
        return "ended";
    default:
        return "in_progress";
    }
}

static void s_batch_json(struct evbuffer *out, const s_batch_t *b)
{
    sim_batches_t *self = b->owner;
    if (b->kind == K_ANTHROPIC) {
        int done = b->n_ok + b->n_err + b->n_expired + b->n_cancelled;
        evbuffer_add_printf(out,
                            "{\"id\":\"%s\",\"type\":\"message_batch\","
                            "\"processing_status\":\"%s\","
                            "\"request_counts\":{\"processing\":%d,"
                            "\"succeeded\":%d,\"errored\":%d,\"canceled\":%d,"
                            "\"expired\":%d}",
                            b->id, s_anthropic_status(b->state),
                            b->n_lines - done, b->n_ok, b->n_err,
                            b->n_cancelled, b->n_expired);
        int64_t ended = b->completed_at ? b->completed_at
                        : b->expired_at ? b->expired_at
                                        : b->cancelled_at;
        s_rfc_or_null(out, "ended_at", ended);
        s_rfc_or_null(out, "created_at", b->created_at);
        s_rfc_or_null(out, "expires_at", b->expires_at);
        s_rfc_or_null(out, "cancel_initiated_at", b->cancelling_at);
        evbuffer_add_printf(out, ",\"archived_at\":null,\"results_url\":");
        if (ended)
            evbuffer_add_printf(out, "\"%s/v1/messages/batches/%s/results\"}",
                                self->http->url, b->id);
        else
            evbuffer_add_printf(out, "null}");
        return;
    }
    evbuffer_add_printf(
        out,
        "{\"id\":\"%s\",\"object\":\"batch\",\"endpoint\":\"%s\",\"errors\":%s,"
        "\"input_file_id\":\"%s\",\"completion_window\":\"%s\",\"status\":\"%"
        "s\",",
        b->id, b->endpoint, b->errors_json ? b->errors_json : "null",
        b->input ? b->input->id : "", b->completion_window,
        s_state_names[b->state]);
    if (b->output_file_id[0])
        evbuffer_add_printf(out, "\"output_file_id\":\"%s\",",
                            b->output_file_id);
    else
        evbuffer_add_printf(out, "\"output_file_id\":null,");
    if (b->error_file_id[0])
        evbuffer_add_printf(out, "\"error_file_id\":\"%s\",", b->error_file_id);
    else
        evbuffer_add_printf(out, "\"error_file_id\":null,");
    s_time_or_null(out, "created_at", b->created_at, true);
    s_time_or_null(out, "in_progress_at", b->in_progress_at, false);
    s_time_or_null(out, "expires_at", b->expires_at, false);
    s_time_or_null(out, "finalizing_at", b->finalizing_at, false);
    s_time_or_null(out, "completed_at", b->completed_at, false);
    s_time_or_null(out, "failed_at", b->failed_at, false);
    s_time_or_null(out, "expired_at", b->expired_at, false);
    s_time_or_null(out, "cancelling_at", b->cancelling_at, false);
    s_time_or_null(out, "cancelled_at", b->cancelled_at, false);
    evbuffer_add_printf(
        out,
        ",\"request_counts\":{\"total\":%d,\"completed\":%d,\"failed\":%d},"
        "\"metadata\":",
        b->n_lines, b->n_ok, b->n_err + b->n_expired);
    if (b->metadata) {
        char *m = cJSON_PrintUnformatted(b->metadata);
        evbuffer_add_printf(out, "%s}", m ? m : "null");
        free(m);
    } else
        evbuffer_add_printf(out, "null}");
}

//  Replies 200 with the batch object.
static void s_reply_batch(sim_http_t *sim, struct evhttp_request *req,
                          int route, const s_batch_t *b)
{
    struct evbuffer *out = evbuffer_new();
    s_batch_json(out, b);
    sim_reply_json(sim, req, route, 200, out);
    evbuffer_free(out);
}

static void s_batch_free(s_batch_t *b)
{
    if (b->timer)
        event_free(b->timer);
    if (b->expire)
        event_free(b->expire);
    for (int i = 0; i < b->n_lines; i++) {
        free(b->lines[i].custom_id);
        cJSON_Delete(b->lines[i].body);
        free(b->lines[i].result);
    }
    free(b->lines);
    if (b->input)
        s_file_unref(b->owner, b->input);
    cJSON_Delete(b->metadata);
    free(b->errors_json);
    free(b->key);
    free(b);
}

static s_batch_t *s_batch_new(sim_batches_t *self, s_kind_t kind)
{
    s_batch_t *b = calloc(1, sizeof(*b));
    if (!b)
        return NULL;
    b->owner = self;
    b->kind = kind;
    snprintf(b->id, sizeof(b->id),
             kind == K_OPENAI ? "batch_sim%012" PRIx64
                              : "msgbatch_sim%012" PRIx64,
             sim_next_id(self->http));
    b->created_at = sim_wall_ms();
    b->expires_at = b->created_at + self->cfg.expire_ms;
    b->timer = evtimer_new(self->http->base, s_phase, b);
    b->expire = evtimer_new(self->http->base, s_expire, b);
    if (!b->timer || !b->expire) {
        s_batch_free(b);
        return NULL;
    }
    struct timeval tv = {self->cfg.expire_ms / 1000,
                         (self->cfg.expire_ms % 1000) * 1000};
    evtimer_add(b->expire, &tv);
    b->next = self->batches;
    self->batches = b;
    self->created[kind]++;
    return b;
}

static void s_arm(s_batch_t *b, int64_t ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    evtimer_add(b->timer, &tv);
}

static bool s_terminal(s_state_t st)
{
    return st == B_FAILED || st == B_COMPLETED || st == B_EXPIRED ||
           st == B_CANCELLED;
}

//  The error code of one parsed OpenAI input line (message in msg), or
//  NULL when the line is fine.
static const char *s_line_error(const s_batch_t *b, const cJSON *line,
                                char *msg, size_t cap)
{
    const cJSON *cid = cJSON_GetObjectItemCaseSensitive(line, "custom_id");
    const cJSON *method = cJSON_GetObjectItemCaseSensitive(line, "method");
    const cJSON *url = cJSON_GetObjectItemCaseSensitive(line, "url");
    const cJSON *body = cJSON_GetObjectItemCaseSensitive(line, "body");
    if (!cJSON_IsObject(line)) {
        snprintf(msg, cap, "This line is not parseable as valid JSON.");
        return "invalid_json_line";
    }
    if (!cJSON_IsString(cid) || !cid->valuestring[0]) {
        snprintf(msg, cap, "Missing required parameter: 'custom_id'.");
        return "missing_required_parameter";
    }
    if (!cJSON_IsString(method) || strcmp(method->valuestring, "POST") != 0) {
        snprintf(msg, cap, "The method must be POST.");
        return "invalid_method";
    }
    if (!cJSON_IsString(url) || strcmp(url->valuestring, b->endpoint) != 0) {
        snprintf(msg, cap, "The url must match the batch endpoint %s.",
                 b->endpoint);
        return "mismatched_endpoint";
    }
    if (!cJSON_IsObject(body)) {
        snprintf(msg, cap, "Missing required parameter: 'body'.");
        return "missing_required_parameter";
    }
    if (b->n_lines >= S_OPENAI_MAX_LINES) {
        snprintf(msg, cap, "A batch may hold at most %d requests.",
                 S_OPENAI_MAX_LINES);
        return "too_many_requests";
    }
    return NULL;
}

//  Appends a line (custom_id copied, body detached from line) to b->lines
//  of capacity *cap. Returns 0, or -1 when out of memory.
static int s_line_push(s_batch_t *b, int *cap, cJSON *line)
{
    if (b->n_lines == *cap) {
        int ncap = *cap ? *cap * 2 : 64;
        s_line_t *nl = realloc(b->lines, sizeof(s_line_t) * (size_t)ncap);
        if (!nl)
            return -1;
        b->lines = nl;
        *cap = ncap;
    }
    s_line_t *l = &b->lines[b->n_lines++];
    memset(l, 0, sizeof(*l));
    l->custom_id = strdup(
        cJSON_GetObjectItemCaseSensitive(line, "custom_id")->valuestring);
    l->body = cJSON_DetachItemViaPointer(
        line, cJSON_GetObjectItemCaseSensitive(line, "body"));
    return 0;
}

//  The first repeated custom_id (sort-free, with a small hash table):
//  returns "duplicate_custom_id" with *lineno and msg set, or NULL.
static const char *s_duplicate_id(const s_batch_t *b, int *lineno, char *msg,
                                  size_t cap)
{
    size_t tcap = 1;
    while (tcap < (size_t)b->n_lines * 2)
        tcap <<= 1;
    int *t = malloc(tcap * sizeof(int));
    const char *code = NULL;
    if (!t)
        return NULL;
    memset(t, -1, tcap * sizeof(int));
    for (int i = 0; i < b->n_lines && !code; i++) {
        const char *c = b->lines[i].custom_id;
        size_t j = (size_t)sim_fnv(SIM_FNV_OFFSET, c, strlen(c)) & (tcap - 1);
        while (t[j] >= 0) {
            if (strcmp(b->lines[t[j]].custom_id, c) == 0) {
                code = "duplicate_custom_id";
                *lineno = i + 1;
                snprintf(msg, cap, "The custom_id '%.100s' is not unique.", c);
                break;
            }
            j = (j + 1) & (tcap - 1);
        }
        t[j] = i;
    }
    free(t);
    return code;
}

//  The OpenAI batch "errors" object for one error (lineno 0: no line), as
//  a fresh string (NULL if out of memory).
static char *s_errors_json(const char *code, const char *msg, int lineno)
{
    struct evbuffer *e = evbuffer_new();
    evbuffer_add_printf(
        e,
        "{\"object\":\"list\",\"data\":[{\"code\":\"%s\",\"message\":", code);
    sim_json_str(e, msg);
    evbuffer_add_printf(e, ",\"param\":null,\"line\":");
    if (lineno)
        evbuffer_add_printf(e, "%d}]}", lineno);
    else
        evbuffer_add_printf(e, "null}]}");
    size_t n = evbuffer_get_length(e);
    char *s = malloc(n + 1);
    if (s) {
        evbuffer_remove(e, s, n);
        s[n] = 0;
    }
    evbuffer_free(e);
    return s;
}

//  Validates an OpenAI input file into lines. Returns NULL or an "errors"
//  JSON object (fresh string).
static char *s_validate_openai(s_batch_t *b)
{
    const char *data = b->input->data;
    size_t len = b->input->len;
    int cap = 0, lineno = 0;
    char msg[256];
    const char *code = NULL;
    const char *p = data, *end = data + len;
    while (p < end && !code) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        lineno++;
        const char *q = p;
        while (q < le && (*q == ' ' || *q == '\r' || *q == '\t'))
            q++;
        if (q < le) {
            cJSON *line = cJSON_ParseWithLength(p, (size_t)(le - p));
            code = s_line_error(b, line, msg, sizeof(msg));
            if (!code && s_line_push(b, &cap, line)) {
                code = "internal";
                snprintf(msg, sizeof(msg), "out of memory");
            }
            cJSON_Delete(line);
        }
        p = le + 1;
    }
    if (!code && b->n_lines == 0) {
        code = "empty_file";
        lineno = 0;
        snprintf(msg, sizeof(msg), "The input file contains no requests.");
    }
    if (!code && b->n_lines > 1)
        code = s_duplicate_id(b, &lineno, msg, sizeof(msg));
    return code ? s_errors_json(code, msg, lineno) : NULL;
}

//  Answers the next slice of lines. Returns true when no line is pending.
static bool s_process_slice(s_batch_t *b)
{
    sim_batches_t *self = b->owner;
    int per_tick = (b->n_lines + 19) / 20;
    if (per_tick < 1)
        per_tick = 1;
    if (per_tick > 2000)
        per_tick = 2000;
    struct evbuffer *out = evbuffer_new();
    for (int k = 0; k < per_tick && b->next_line < b->n_lines; k++) {
        s_line_t *l = &b->lines[b->next_line++];
        int status = self->exec(self->exec_arg, b->op, l->body, b->key, out);
        if (status == 0) {
            l->state = L_STUCK;
            b->n_stuck++;
            evbuffer_drain(out, evbuffer_get_length(out));
            continue;
        }
        size_t n = evbuffer_get_length(out);
        l->result = malloc(n + 1);
        if (l->result) {
            evbuffer_remove(out, l->result, n);
            l->result[n] = 0;
        } else
            evbuffer_drain(out, n);
        l->state = L_DONE;
        l->status = status;
        if (status == 200) {
            b->n_ok++;
            self->lines_ok++;
        } else {
            b->n_err++;
            self->lines_err++;
        }
    }
    evbuffer_free(out);
    return b->next_line >= b->n_lines;
}

static void s_custom_id(struct evbuffer *out, const s_line_t *l)
{
    sim_json_str(out, l->custom_id);
}

//  Builds the result files (OpenAI) at the end of a batch. Lines not done
//  are written to the error file as expired when the batch expired.
static void s_write_openai_files(s_batch_t *b)
{
    sim_batches_t *self = b->owner;
    struct evbuffer *ok = evbuffer_new(), *err = evbuffer_new();
    for (int i = 0; i < b->n_lines; i++) {
        s_line_t *l = &b->lines[i];
        uint64_t n = sim_next_id(self->http);
        if (l->state == L_DONE) {
            struct evbuffer *dst = l->status == 200 ? ok : err;
            evbuffer_add_printf(
                dst,
                "{\"id\":\"batch_req_sim%012" PRIx64 "\",\"custom_id\":", n);
            s_custom_id(dst, l);
            evbuffer_add_printf(dst,
                                ",\"response\":{\"status_code\":%d,\"request_"
                                "id\":\"req_sim%012" PRIx64
                                "\",\"body\":%s},\"error\":null}\n",
                                l->status, n, l->result ? l->result : "null");
        } else if (b->state == B_EXPIRED) {
            evbuffer_add_printf(
                err,
                "{\"id\":\"batch_req_sim%012" PRIx64 "\",\"custom_id\":", n);
            s_custom_id(err, l);
            evbuffer_add_printf(
                err,
                ",\"response\":null,\"error\":{\"code\":\"batch_expired\","
                "\"message\":\"This request could not be executed before the "
                "completion window expired.\"}}\n");
        }
    }
    struct evbuffer *bufs[2] = {ok, err};
    char *ids[2] = {b->output_file_id, b->error_file_id};
    const char *suffix[2] = {"output", "error"};
    for (int k = 0; k < 2; k++) {
        size_t n = evbuffer_get_length(bufs[k]);
        if (n == 0)
            continue;
        char *data = malloc(n + 1);
        if (!data)
            continue;
        evbuffer_remove(bufs[k], data, n);
        data[n] = 0;
        char name[96];
        snprintf(name, sizeof(name), "%s_%s.jsonl", b->id, suffix[k]);
        //  Results are always kept: the bound applies to uploads.
        s_file_t *f = s_file_add(self, name, "batch_output", data, n, true);
        if (f)
            snprintf(ids[k], 40, "%s", f->id);
        else
            free(data);
    }
    evbuffer_free(ok);
    evbuffer_free(err);
}

//  Ends a batch in state st (completed, expired or cancelled).
static void s_finish(s_batch_t *b, s_state_t st)
{
    sim_batches_t *self = b->owner;
    int64_t now = sim_wall_ms();
    evtimer_del(b->timer);
    evtimer_del(b->expire);
    for (int i = 0; i < b->n_lines; i++) {
        if (b->lines[i].state == L_DONE)
            continue;
        if (st == B_EXPIRED)
            b->n_expired++;
        else if (st == B_CANCELLED)
            b->n_cancelled++;
    }
    b->state = st;
    if (st == B_COMPLETED) {
        b->completed_at = now;
        self->completed[b->kind]++;
    } else if (st == B_EXPIRED) {
        b->expired_at = now;
        self->expired[b->kind]++;
    } else {
        b->cancelled_at = now;
        self->cancelled[b->kind]++;
    }
    if (b->kind == K_OPENAI)
        s_write_openai_files(b);
}

//  Phase timer: one step of the state machine.
static void s_phase(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    s_batch_t *b = arg;
    sim_batches_t *self = b->owner;
    int64_t now = sim_wall_ms();
    switch (b->state) {
    case B_VALIDATING:
        if (b->kind == K_OPENAI) {
            b->errors_json = s_validate_openai(b);
            if (b->errors_json) {
                b->state = B_FAILED;
                b->failed_at = now;
                self->failed[b->kind]++;
                evtimer_del(b->expire);
                return;
            }
        }
        b->state = B_IN_PROGRESS;
        b->in_progress_at = now;
        s_arm(b, 0);
        return;
    case B_IN_PROGRESS: {
        if (!s_process_slice(b)) {
            s_arm(b, self->cfg.progress_ms / 20);
            return;
        }
        if (b->n_stuck > 0)
            return; //  only expiry ends it now
        b->state = B_FINALIZING;
        b->finalizing_at = now;
        s_arm(b, self->cfg.finalize_ms);
        return;
    }
    case B_FINALIZING:
        s_finish(b, B_COMPLETED);
        return;
    case B_CANCELLING:
        s_finish(b, B_CANCELLED);
        return;
    default:
        return;
    }
}

static void s_expire(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    s_batch_t *b = arg;
    if (!s_terminal(b->state))
        s_finish(b, B_EXPIRED);
}

static s_batch_t *s_batch_find(sim_batches_t *self, s_kind_t kind,
                               const char *id, size_t idlen)
{
    for (s_batch_t *b = self->batches; b; b = b->next)
        if (b->kind == kind && strlen(b->id) == idlen &&
            memcmp(b->id, id, idlen) == 0)
            return b;
    return NULL;
}

//  Starts cancelling; false when the batch already ended.
static bool s_cancel(s_batch_t *b)
{
    if (s_terminal(b->state) || b->state == B_CANCELLING)
        return b->state == B_CANCELLING;
    b->state = B_CANCELLING;
    b->cancelling_at = sim_wall_ms();
    evtimer_del(b->timer);
    s_arm(b, b->owner->cfg.finalize_ms);
    return true;
}

static cJSON *s_body_json(struct evhttp_request *req)
{
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    size_t len = evbuffer_get_length(in);
    if (!len)
        return NULL;
    return cJSON_ParseWithLength((const char *)evbuffer_pullup(in, -1), len);
}

//  ?limit=N&after=ID for list routes.
static void s_list_params(struct evhttp_request *req, int *limit, char *after,
                          size_t cap)
{
    *limit = 20;
    after[0] = 0;
    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(req);
    const char *q = uri ? evhttp_uri_get_query(uri) : NULL;
    if (!q)
        return;
    struct evkeyvalq params;
    if (evhttp_parse_query_str(q, &params) == 0) {
        const char *l = evhttp_find_header(&params, "limit");
        const char *a = evhttp_find_header(&params, "after");
        if (!a)
            a = evhttp_find_header(&params, "after_id");
        if (l) {
            *limit = atoi(l);
            if (*limit < 1)
                *limit = 1;
            if (*limit > 1000)
                *limit = 1000;
        }
        if (a)
            snprintf(after, cap, "%s", a);
        evhttp_clear_headers(&params);
    }
}

static void s_list(sim_batches_t *self, struct evhttp_request *req,
                   s_kind_t kind, int route)
{
    int limit;
    char after[96];
    s_list_params(req, &limit, after, sizeof(after));
    struct evbuffer *out = evbuffer_new();
    evbuffer_add_printf(out, kind == K_OPENAI
                                 ? "{\"object\":\"list\",\"data\":["
                                 : "{\"data\":[");
    s_batch_t *b = self->batches;
    if (after[0]) {
        while (b && !(b->kind == kind && strcmp(b->id, after) == 0))
            b = b->next;
        if (b)
            b = b->next;
    }
    int n = 0;
    const char *first = NULL, *last = NULL;
    for (; b && n < limit; b = b->next) {
        if (b->kind != kind)
            continue;
        if (n++)
            evbuffer_add(out, ",", 1);
        s_batch_json(out, b);
        if (!first)
            first = b->id;
        last = b->id;
    }
    bool more = false;
    for (; b; b = b->next)
        if (b->kind == kind)
            more = true;
    evbuffer_add_printf(
        out, "],\"first_id\":%s%s%s,\"last_id\":%s%s%s,\"has_more\":%s}",
        first ? "\"" : "", first ? first : "null", first ? "\"" : "",
        last ? "\"" : "", last ? last : "null", last ? "\"" : "",
        more ? "true" : "false");
    sim_reply_json(self->http, req, route, 200, out);
    evbuffer_free(out);
}

//  --- OpenAI routes ----------------------------------------------------------

static void s_openai_create(sim_batches_t *self, struct evhttp_request *req)
{
    sim_http_t *sim = self->http;
    cJSON *body = s_body_json(req);
    const cJSON *file_id =
        cJSON_GetObjectItemCaseSensitive(body, "input_file_id");
    const cJSON *endpoint = cJSON_GetObjectItemCaseSensitive(body, "endpoint");
    const cJSON *window =
        cJSON_GetObjectItemCaseSensitive(body, "completion_window");
    cJSON *metadata = cJSON_GetObjectItemCaseSensitive(body, "metadata");
    sim_op_t op = SIM_OP_CHAT;
    const char *msg = NULL, *param = NULL;
    s_file_t *f = NULL;
    if (!cJSON_IsObject(body))
        msg = "The request body must be a JSON object.";
    else if (!cJSON_IsString(file_id))
        msg = "Missing required parameter: 'input_file_id'.",
        param = "input_file_id";
    else if (!cJSON_IsString(endpoint))
        msg = "Missing required parameter: 'endpoint'.", param = "endpoint";
    else if (!cJSON_IsString(window) || strcmp(window->valuestring, "24h") != 0)
        msg = "Invalid 'completion_window': only '24h' is supported.",
        param = "completion_window";
    else if (metadata && !cJSON_IsNull(metadata) && !cJSON_IsObject(metadata))
        msg = "Invalid 'metadata': expected an object.", param = "metadata";
    else {
        if (strcmp(endpoint->valuestring, "/v1/chat/completions") == 0)
            op = SIM_OP_CHAT;
        else if (strcmp(endpoint->valuestring, "/v1/completions") == 0)
            op = SIM_OP_COMPLETION;
        else if (strcmp(endpoint->valuestring, "/v1/embeddings") == 0)
            op = SIM_OP_EMBEDDING;
        else
            msg = "Invalid 'endpoint': expected /v1/chat/completions, "
                  "/v1/completions or "
                  "/v1/embeddings.",
            param = "endpoint";
        if (!msg) {
            f = s_file_find(self, file_id->valuestring,
                            strlen(file_id->valuestring));
            if (!f)
                msg = "Invalid 'input_file_id': no such file.",
                param = "input_file_id";
        }
    }
    if (msg) {
        sim_reply_error(sim, req, SIM_R_BATCHES, false, 400, msg, param, NULL);
        cJSON_Delete(body);
        return;
    }
    s_batch_t *b = s_batch_new(self, K_OPENAI);
    if (b && sim_key(req, false)) //  NULL when out of memory: no echo
        b->key = strdup(sim_key(req, false));
    if (!b) {
        sim_reply_error(sim, req, SIM_R_BATCHES, false, 500, "out of memory",
                        NULL, NULL);
        cJSON_Delete(body);
        return;
    }
    snprintf(b->endpoint, sizeof(b->endpoint), "%s", endpoint->valuestring);
    snprintf(b->completion_window, sizeof(b->completion_window), "24h");
    b->op = op;
    b->input = f;
    f->refs++;
    if (cJSON_IsObject(metadata))
        b->metadata = cJSON_DetachItemViaPointer(body, metadata);
    b->state = B_VALIDATING;
    s_arm(b, self->cfg.validate_ms);
    cJSON_Delete(body);
    s_reply_batch(sim, req, SIM_R_BATCHES, b);
}

//  --- Anthropic routes
//  ---------------------------------------------------------

//  Checks one Anthropic batch request (item i of requests): custom_id,
//  params as POST /v1/messages would, and a unique custom_id. Returns 0,
//  or -1 with the error in msg.
static int s_anthropic_item_check(const cJSON *requests, const cJSON *it, int i,
                                  int n, char *msg, size_t cap)
{
    const cJSON *cid = cJSON_GetObjectItemCaseSensitive(it, "custom_id");
    const cJSON *params = cJSON_GetObjectItemCaseSensitive(it, "params");
    if (!cJSON_IsString(cid) || !cid->valuestring[0] ||
        strlen(cid->valuestring) > 64) {
        snprintf(msg, cap,
                 "requests.%d.custom_id: must be a string of 1 to 64 "
                 "characters",
                 i);
        return -1;
    }
    if (!cJSON_IsObject(params)) {
        snprintf(msg, cap, "requests.%d.params: Field required", i);
        return -1;
    }
    //  Same checks as POST /v1/messages, so a bad item fails the batch.
    sim_req_t r;
    char err[200];
    const char *param;
    if (sim_req_parse(&r, SIM_OP_MESSAGES, params, err, sizeof(err), &param)) {
        snprintf(msg, cap, "requests.%d.params.%s", i, err);
        return -1;
    }
    sim_req_free(&r);
    for (const cJSON *o = requests->child; o != it; o = o->next) {
        const cJSON *ocid = cJSON_GetObjectItemCaseSensitive(o, "custom_id");
        if (n <= 2000 && strcmp(ocid->valuestring, cid->valuestring) == 0) {
            snprintf(msg, cap, "requests: custom_id '%.64s' is not unique",
                     cid->valuestring);
            return -1;
        }
    }
    return 0;
}

static void s_anthropic_create(sim_batches_t *self, struct evhttp_request *req)
{
    sim_http_t *sim = self->http;
    cJSON *body = s_body_json(req);
    cJSON *requests = cJSON_GetObjectItemCaseSensitive(body, "requests");
    char msg[256] = "";
    int n = cJSON_IsArray(requests) ? cJSON_GetArraySize(requests) : 0;
    if (!cJSON_IsObject(body) || !cJSON_IsArray(requests))
        snprintf(msg, sizeof(msg), "requests: Field required");
    else if (n == 0 || n > S_ANTHROPIC_MAX_LINES)
        snprintf(msg, sizeof(msg), "requests: must hold 1 to %d items",
                 S_ANTHROPIC_MAX_LINES);
    int i = 0;
    const cJSON *it;
    if (!msg[0]) {
        cJSON_ArrayForEach(it, requests)
        {
            if (s_anthropic_item_check(requests, it, i++, n, msg, sizeof(msg)))
                break;
        }
    }
    if (msg[0]) {
        sim_reply_error(sim, req, SIM_R_MBATCHES, true, 400, msg, NULL, NULL);
        cJSON_Delete(body);
        return;
    }
    s_batch_t *b = s_batch_new(self, K_ANTHROPIC);
    if (b && sim_key(req, true)) //  NULL when out of memory: no echo
        b->key = strdup(sim_key(req, true));
    if (b)
        b->lines = calloc((size_t)n, sizeof(s_line_t));
    if (!b || !b->lines) {
        if (b) {
            //  Already listed: leave it ended rather than half built.
            b->state = B_FAILED;
            b->failed_at = sim_wall_ms();
            evtimer_del(b->expire);
        }
        sim_reply_error(sim, req, SIM_R_MBATCHES, true, 500, "out of memory",
                        NULL, NULL);
        cJSON_Delete(body);
        return;
    }
    snprintf(b->endpoint, sizeof(b->endpoint), "/v1/messages");
    b->op = SIM_OP_MESSAGES;
    i = 0;
    cJSON_ArrayForEach(it, requests)
    {
        const cJSON *cid = cJSON_GetObjectItemCaseSensitive(it, "custom_id");
        b->lines[i].custom_id = strdup(cid->valuestring);
        b->lines[i].body =
            cJSON_DetachItemFromObjectCaseSensitive((cJSON *)it, "params");
        i++;
    }
    b->n_lines = n;
    cJSON_Delete(body);
    //  Anthropic has no validating state: the validate time is spent
    //  in_progress.
    b->state = B_VALIDATING;
    s_arm(b, self->cfg.validate_ms);
    s_reply_batch(sim, req, SIM_R_MBATCHES, b);
}

static void s_anthropic_results(sim_batches_t *self, struct evhttp_request *req,
                                s_batch_t *b)
{
    sim_http_t *sim = self->http;
    if (!s_terminal(b->state)) {
        sim_reply_error(sim, req, SIM_R_MBATCH_RESULTS, true, 400,
                        "Message batch results are not yet available: the "
                        "batch has not ended.",
                        NULL, NULL);
        return;
    }
    struct evbuffer *out = evbuffer_new();
    for (int i = 0; i < b->n_lines; i++) {
        s_line_t *l = &b->lines[i];
        evbuffer_add_printf(out, "{\"custom_id\":");
        s_custom_id(out, l);
        if (l->state == L_DONE && l->status == 200)
            evbuffer_add_printf(
                out, ",\"result\":{\"type\":\"succeeded\",\"message\":%s}}\n",
                l->result);
        else if (l->state == L_DONE)
            evbuffer_add_printf(
                out, ",\"result\":{\"type\":\"errored\",\"error\":%s}}\n",
                l->result);
        else
            evbuffer_add_printf(out, ",\"result\":{\"type\":\"%s\"}}\n",
                                b->state == B_CANCELLED ? "canceled"
                                                        : "expired");
    }
    sim_reply(sim, req, SIM_R_MBATCH_RESULTS, 200, "application/x-jsonl", out);
    evbuffer_free(out);
}

//  The Batch API routes of one kind: OpenAI /v1/batches[/ID[/cancel]],
//  Anthropic /v1/messages/batches[/ID[/cancel|/results]].
static void s_batches_route(sim_batches_t *self, struct evhttp_request *req,
                            const char *path, s_kind_t kind)
{
    static const char *const oa_actions[] = {"cancel", NULL};
    static const char *const an_actions[] = {"cancel", "results", NULL};
    static const int oa_routes[] = {SIM_R_BATCHES, SIM_R_BATCH,
                                    SIM_R_BATCH_CANCEL};
    static const int an_routes[] = {SIM_R_MBATCHES, SIM_R_MBATCH,
                                    SIM_R_MBATCH_CANCEL, SIM_R_MBATCH_RESULTS};
    sim_http_t *sim = self->http;
    bool anth = kind == K_ANTHROPIC;
    enum evhttp_cmd_type cmd = evhttp_request_get_command(req);
    s_path_t p;
    if (s_path_open(sim, req, path,
                    anth ? "/v1/messages/batches" : "/v1/batches",
                    anth ? an_actions : oa_actions,
                    anth ? an_routes : oa_routes, anth, false, &p))
        return;
    bool cancel = p.action == 1;
    if (p.is_root) {
        if (cmd == EVHTTP_REQ_POST && anth)
            s_anthropic_create(self, req);
        else if (cmd == EVHTTP_REQ_POST)
            s_openai_create(self, req);
        else if (cmd == EVHTTP_REQ_GET)
            s_list(self, req, kind, p.route);
        else
            sim_reply_error(sim, req, p.route, anth, 405, "Method not allowed.",
                            NULL, NULL);
        return;
    }
    if ((cancel && cmd != EVHTTP_REQ_POST) ||
        (!cancel && cmd != EVHTTP_REQ_GET)) {
        sim_reply_error(sim, req, p.route, anth, 405, "Method not allowed.",
                        NULL, NULL);
        return;
    }
    s_batch_t *b = s_batch_find(self, kind, p.id, p.idlen);
    if (!b) {
        sim_reply_error(sim, req, p.route, anth, 404,
                        anth ? "message batch not found"
                             : "No such Batch object.",
                        anth ? NULL : "batch_id", NULL);
        return;
    }
    if (p.action == 2) {
        s_anthropic_results(self, req, b);
        return;
    }
    if (cancel && !s_cancel(b)) {
        char msg[96];
        snprintf(msg, sizeof(msg), "Cannot cancel a batch with status '%s'.",
                 s_state_names[b->state]);
        sim_reply_error(sim, req, p.route, anth, 409,
                        anth ? "Message batch has already ended." : msg, NULL,
                        NULL);
        return;
    }
    s_reply_batch(sim, req, p.route, b);
}

void sim_batches_openai(sim_batches_t *self, struct evhttp_request *req,
                        const char *path)
{
    s_batches_route(self, req, path, K_OPENAI);
}

void sim_batches_anthropic(sim_batches_t *self, struct evhttp_request *req,
                           const char *path)
{
    s_batches_route(self, req, path, K_ANTHROPIC);
}

//  --- lifecycle and stats
//  ------------------------------------------------------

sim_batches_t *sim_batches_new(sim_http_t *sim, const sim_batch_cfg_t *cfg,
                               sim_batch_exec_fn *exec, void *exec_arg)
{
    sim_batches_t *self = calloc(1, sizeof(*self));
    if (!self)
        return NULL;
    self->http = sim;
    self->exec = exec;
    self->exec_arg = exec_arg;
    self->cfg = *cfg;
    return self;
}

void sim_batches_destroy(sim_batches_t **self_p)
{
    sim_batches_t *self = *self_p;
    if (!self)
        return;
    while (self->batches) {
        s_batch_t *b = self->batches;
        self->batches = b->next;
        s_batch_free(b);
    }
    while (self->files) {
        s_file_t *f = self->files;
        self->files = f->next;
        s_file_unref(self, f);
    }
    free(self);
    *self_p = NULL;
}

void sim_batches_stats(sim_batches_t *self, struct evbuffer *out)
{
    int nfiles = 0;
    for (s_file_t *f = self->files; f; f = f->next)
        nfiles++;
    const char *names[2] = {"openai", "anthropic"};
    evbuffer_add_printf(out, ",\"batches\":{");
    for (int k = 0; k < 2; k++)
        evbuffer_add_printf(
            out,
            "%s\"%s\":{\"created\":%" PRIu64 ",\"completed\":%" PRIu64
            ",\"failed\":%" PRIu64 ",\"expired\":%" PRIu64
            ",\"cancelled\":%" PRIu64 "}",
            k ? "," : "", names[k], self->created[k], self->completed[k],
            self->failed[k], self->expired[k], self->cancelled[k]);
    evbuffer_add_printf(out,
                        ",\"lines_ok\":%" PRIu64 ",\"lines_error\":%" PRIu64 "}"
                        ",\"files\":{\"count\":%d,\"bytes\":%" PRId64 "}",
                        self->lines_ok, self->lines_err, nfiles,
                        self->store_bytes);
}
