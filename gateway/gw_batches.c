/*  gw_batches.c - OpenAI Batches and Anthropic Message Batches on durable
    broker batches (docs/BATCHES.md).

    A batch here is a broker batch with the same id (`batch_...` or
    `msgbatch_...`): the broker stores its items and results and runs it
    (realtime, or the provider's Batch API per `auto`), across broker
    restarts. The gateway keeps only a small record per batch under
    --data-dir/batches (endpoint, input file, times, and once finished the
    output and error file ids), so a gateway restart loses nothing either.

    Create = batch.open + batch.add (1,000 items per message) + batch.close;
    every step is idempotent on the broker. A status poll is a batch.get
    past the end. When the broker says the batch is finished, the first
    poll writes the output and error files (OpenAI's JSONL format) and
    records their ids; until then the batch reads `finalizing`.

    The broker calls are synchronous (the `ctl` client); they run in the
    jobs actor (gw_jobs.c), never in the loop. A broker that is down holds
    them up to the ctl give-up time (10 s), then they fail with 503.
*/
#include "gw.h"

#define GW_ADD_CHUNK 1000
#define GW_PAST_END (INT64_C(1) << 62)

typedef struct {
    char state[17];
    int64_t total, done, failed;
} s_status_t;

static int64_t s_now(void)
{
    return zclock_time() / 1000;
}

/*  The broker's view of a batch. Returns 0, or -1 (error text in err). */
static int s_broker_status(gw_t *gw, const char *id, s_status_t *out, char *err,
                           size_t errsz)
{
    llmq_batch_status_t st;
    memset(&st, 0, sizeof st);
    if (llmq_batch_get(gw->ctl, id, GW_PAST_END, &st, NULL, NULL, NULL, NULL) !=
        0) {
        snprintf(err, errsz, "%s", llmq_batch_error(gw->ctl));
        return -1;
    }
    snprintf(out->state, sizeof out->state, "%s", st.state);
    out->total = st.total;
    out->done = st.done;
    out->failed = st.failed;
    return 0;
}

/*  open + add + close. items is taken (its entries are moved). */
static int s_broker_create(gw_t *gw, const char *id, const char *model,
                           const char *op, const char *window, cJSON *items,
                           char *err, size_t errsz)
{
    llmq_batch_opts_t opts = {0};
    opts.op = op;
    opts.completion_window = window;
    int rc = llmq_batch_open(gw->ctl, id, model, &opts);
    int64_t seq = 0;
    while (rc == 0 && cJSON_GetArraySize(items) > 0) {
        cJSON *chunk = cJSON_CreateArray();
        for (int i = 0; i < GW_ADD_CHUNK && items->child; i++)
            cJSON_AddItemToArray(
                chunk, cJSON_DetachItemViaPointer(items, items->child));
        rc = llmq_batch_add(gw->ctl, id, seq++, chunk, NULL);
        cJSON_Delete(chunk);
    }
    if (rc == 0)
        rc = llmq_batch_close(gw->ctl, id, NULL);
    if (rc != 0)
        snprintf(err, errsz, "%s", llmq_batch_error(gw->ctl));
    cJSON_Delete(items);
    return rc;
}

static void s_broker_failed(gw_call_t *c, gw_api_t api, const char *err)
{
    bool down = strncmp(err, "timeout", 7) == 0;
    gw_reply_error(c->req, api, down ? 503 : 500, c->rid, "server_error", NULL,
                   NULL, *err ? err : "the broker refused the batch");
}

/*  Record a time the first time a state is seen; returns true if new. */
static bool s_stamp(cJSON *rec, const char *key)
{
    if (cJSON_IsNumber(cJSON_GetObjectItem(rec, key)))
        return false;
    cJSON_DeleteItemFromObject(rec, key);
    cJSON_AddNumberToObject(rec, key, (double)s_now());
    return true;
}

//  --------------------------------------------------------------------------
//  Output and error files (OpenAI's format)

static void s_line(struct evbuffer *buf, int64_t n, const llmq_result_t *r)
{
    cJSON *line = cJSON_CreateObject();
    char id[48];
    snprintf(id, sizeof id, "batch_req_%06" PRId64, n);
    cJSON_AddStringToObject(line, "id", id);
    cJSON_AddStringToObject(line, "custom_id", r->id ? r->id : "");
    bool unrun = !r->ok && r->error_code &&
                 (streq(r->error_code, "cancelled") ||
                  streq(r->error_code, "deadline_exceeded"));
    if (unrun) {
        cJSON_AddNullToObject(line, "response");
        cJSON *e = cJSON_AddObjectToObject(line, "error");
        cJSON_AddStringToObject(e, "code",
                                streq(r->error_code, "cancelled")
                                    ? "batch_cancelled"
                                    : "batch_expired");
        cJSON_AddStringToObject(
            e, "message", r->error_message ? r->error_message : r->error_code);
    } else {
        cJSON *resp = cJSON_AddObjectToObject(line, "response");
        cJSON_AddNumberToObject(resp, "status_code",
                                r->ok ? 200 : gw_http_status_of(r->error_code));
        cJSON_AddStringToObject(resp, "request_id", id + 10);
        if (r->ok && r->body)
            cJSON_AddItemToObject(resp, "body", cJSON_Duplicate(r->body, 1));
        else {
            cJSON *e = cJSON_AddObjectToObject(
                cJSON_AddObjectToObject(resp, "body"), "error");
            cJSON_AddStringToObject(e, "message",
                                    r->error_message ? r->error_message : "");
            cJSON_AddStringToObject(e, "type", "invalid_request_error");
            cJSON_AddNullToObject(e, "param");
            cJSON_AddStringToObject(e, "code",
                                    r->error_code ? r->error_code : "internal");
        }
        cJSON_AddNullToObject(line, "error");
    }
    char *text = cJSON_PrintUnformatted(line);
    evbuffer_add_printf(buf, "%s\n", text ? text : "{}");
    free(text);
    cJSON_Delete(line);
}

static int s_store_buf(gw_t *gw, cJSON *rec, const char *key,
                       const char *suffix, struct evbuffer *buf)
{
    size_t len = evbuffer_get_length(buf);
    cJSON_DeleteItemFromObject(rec, key);
    if (len == 0) {
        cJSON_AddNullToObject(rec, key);
        return 0;
    }
    char name[128], fid[72];
    snprintf(name, sizeof name, "%s_%s.jsonl", gw_str(rec, "id", NULL), suffix);
    const char *data = (const char *)evbuffer_pullup(buf, -1);
    if (gw_file_write(gw, "batch_output", name, data, len, fid, sizeof fid))
        return -1;
    cJSON_AddStringToObject(rec, key, fid);
    return 0;
}

/*  Write the output and error files of a finished batch into rec. */
static int s_materialize(gw_t *gw, cJSON *rec)
{
    size_t n = 0;
    llmq_result_t **results =
        llmq_batch_results(gw->ctl, gw_str(rec, "id", NULL), &n);
    if (!results)
        return -1;
    struct evbuffer *out = evbuffer_new(), *err = evbuffer_new();
    for (size_t i = 0; i < n; i++) {
        s_line(results[i]->ok ? out : err, (int64_t)i + 1, results[i]);
        llmq_result_destroy(&results[i]);
    }
    free(results);
    int rc = s_store_buf(gw, rec, "output_file_id", "output", out);
    if (rc == 0)
        rc = s_store_buf(gw, rec, "error_file_id", "error", err);
    evbuffer_free(out);
    evbuffer_free(err);
    return rc;
}

//  --------------------------------------------------------------------------
//  OpenAI batch objects

/*  OpenAI's status for a broker state; stamps the record's times. */
static const char *s_openai_status(gw_t *gw, cJSON *rec, const char *state,
                                   bool *changed)
{
    if (streq(state, "validating"))
        return "validating";
    *changed |= s_stamp(rec, "in_progress_at");
    if (streq(state, "queued") || streq(state, "in_progress"))
        return "in_progress";
    if (streq(state, "cancelling")) {
        *changed |= s_stamp(rec, "cancelling_at");
        return "cancelling";
    }
    *changed |= s_stamp(rec, "finalizing_at");
    if (streq(state, "finalizing"))
        return "finalizing";
    if (!cJSON_GetObjectItem(rec, "output_file_id")) {
        if (s_materialize(gw, rec) != 0)
            return "finalizing";
        *changed = true;
    }
    const char *key = streq(state, "completed")   ? "completed_at"
                      : streq(state, "cancelled") ? "cancelled_at"
                      : streq(state, "expired")   ? "expired_at"
                                                  : "failed_at";
    *changed |= s_stamp(rec, key);
    return streq(state, "completed") || streq(state, "cancelled") ||
                   streq(state, "expired")
               ? state
               : "failed";
}

static void s_copy(cJSON *to, const cJSON *rec, const char *key)
{
    const cJSON *v = cJSON_GetObjectItem(rec, key);
    cJSON_AddItemToObject(to, key,
                          v ? cJSON_Duplicate(v, 1) : cJSON_CreateNull());
}

static cJSON *s_openai_object(gw_t *gw, cJSON *rec, const s_status_t *st)
{
    bool changed = false;
    const char *status = s_openai_status(gw, rec, st->state, &changed);
    if (changed)
        gw_store_write(gw, "batches", gw_str(rec, "id", NULL), rec);
    cJSON *b = cJSON_CreateObject();
    s_copy(b, rec, "id");
    cJSON_AddStringToObject(b, "object", "batch");
    const char *keys[] = {"endpoint", "errors", "input_file_id",
                          "completion_window"};
    for (int i = 0; i < 4; i++)
        s_copy(b, rec, keys[i]);
    cJSON_AddStringToObject(b, "status", status);
    const char *times[] = {"output_file_id", "error_file_id", "created_at",
                           "in_progress_at", "expires_at",    "finalizing_at",
                           "completed_at",   "failed_at",     "expired_at",
                           "cancelling_at",  "cancelled_at",  "model"};
    for (int i = 0; i < 12; i++)
        s_copy(b, rec, times[i]);
    cJSON *rc = cJSON_AddObjectToObject(b, "request_counts");
    cJSON_AddNumberToObject(rc, "total", (double)st->total);
    cJSON_AddNumberToObject(rc, "completed", (double)(st->done - st->failed));
    cJSON_AddNumberToObject(rc, "failed", (double)st->failed);
    s_copy(b, rec, "metadata");
    return b;
}

//  --------------------------------------------------------------------------
//  POST /v1/batches

//  The op of each endpoint a batch may name.
static const char *const s_ops[][2] = {{"/v1/chat/completions", "chat"},
                                       {"/v1/completions", "completion"},
                                       {"/v1/embeddings", "embedding"},
                                       {NULL, NULL}};

/*  The input file's lines as broker items; model set from the bodies.
    NULL with the reason in err. */
static cJSON *s_input_items(char *data, const char *endpoint, char *model,
                            size_t msize, char *err, size_t errsz)
{
    cJSON *items = cJSON_CreateArray();
    int line_no = 0;
    char *save = NULL;
    for (char *line = strtok_r(data, "\n", &save); line;
         line = strtok_r(NULL, "\n", &save)) {
        line_no++;
        if (strspn(line, " \t\r") == strlen(line))
            continue;
        cJSON *j = cJSON_Parse(line);
        const char *cid = gw_str(j, "custom_id", NULL),
                   *url = gw_str(j, "url", NULL);
        cJSON *body = cJSON_GetObjectItem(j, "body");
        const char *m = gw_str(body, "model", NULL);
        const char *why = !j                              ? "is not JSON"
                          : !cid || !*cid                 ? "has no custom_id"
                          : !url || !streq(url, endpoint) ? "has another url"
                          : !cJSON_IsObject(body) || !m   ? "has no body.model"
                          : *model && !streq(model, m)
                              ? "names another model (one model per batch)"
                              : NULL;
        if (why) {
            snprintf(err, errsz, "input file line %d %s", line_no, why);
            cJSON_Delete(j);
            cJSON_Delete(items);
            return NULL;
        }
        snprintf(model, msize, "%s", m);
        gw_batch_add_item(items, cid, cJSON_DetachItemFromObject(j, "body"));
        cJSON_Delete(j);
    }
    if (cJSON_GetArraySize(items) == 0) {
        snprintf(err, errsz, "input file has no requests");
        cJSON_Delete(items);
        return NULL;
    }
    return items;
}

static cJSON *s_new_record(const char *id, const char *api, const char *model)
{
    cJSON *rec = cJSON_CreateObject();
    cJSON_AddStringToObject(rec, "id", id);
    cJSON_AddStringToObject(rec, "api", api);
    cJSON_AddStringToObject(rec, "model", model);
    cJSON_AddNumberToObject(rec, "created_at", (double)s_now());
    cJSON_AddNumberToObject(rec, "expires_at", (double)(s_now() + 86400));
    cJSON_AddNullToObject(rec, "errors");
    return rec;
}

static void s_openai_create(gw_call_t *c, const char *unused, bool no)
{
    (void)unused;
    (void)no;
    cJSON *body = gw_body_json(c->req, GW_API_OPENAI, c->rid);
    if (!body)
        return;
    const char *fid = gw_str(body, "input_file_id", NULL);
    const char *endpoint = gw_str(body, "endpoint", NULL);
    const char *window = gw_str(body, "completion_window", NULL);
    const char *op = gw_lookup(s_ops, endpoint, NULL);
    char *data = fid ? gw_file_read(c->gw, fid, NULL) : NULL;
    char err[512] = "", model[257] = "", id[72];
    cJSON *items = NULL;
    if (!op)
        snprintf(err, sizeof err,
                 "endpoint must be /v1/chat/completions, "
                 "/v1/completions or /v1/embeddings");
    else if (!data)
        snprintf(err, sizeof err, "input_file_id: no such file");
    else
        items =
            s_input_items(data, endpoint, model, sizeof model, err, sizeof err);
    free(data);
    if (!items) {
        gw_reply_error(c->req, GW_API_OPENAI, 400, c->rid,
                       "invalid_request_error", NULL, NULL, err);
        cJSON_Delete(body);
        return;
    }
    gw_new_id(c->gw, "batch_", id, sizeof id);
    cJSON *rec = s_new_record(id, "openai", model);
    cJSON_AddStringToObject(rec, "endpoint", endpoint);
    cJSON_AddStringToObject(rec, "input_file_id", fid);
    cJSON_AddStringToObject(rec, "completion_window", window ? window : "24h");
    s_copy(rec, body, "metadata");
    s_status_t st = {"validating", cJSON_GetArraySize(items), 0, 0};
    if (gw_store_write(c->gw, "batches", id, rec) != 0)
        gw_reply_error(c->req, GW_API_OPENAI, 500, c->rid, "server_error", NULL,
                       NULL, "cannot store the batch record");
    else if (s_broker_create(c->gw, id, model, op, window, items, err,
                             sizeof err) != 0)
        s_broker_failed(c, GW_API_OPENAI, err);
    else {
        cJSON *obj = s_openai_object(c->gw, rec, &st);
        gw_reply_cjson(c->req, 200, c->rid, obj);
        cJSON_Delete(obj);
    }
    items = NULL;
    cJSON_Delete(rec);
    cJSON_Delete(body);
}

//  --------------------------------------------------------------------------
//  GET /v1/batches/{id}, POST .../cancel, GET /v1/batches

/*  A record of this API, or a 404 answer and NULL. */
static cJSON *s_record(gw_call_t *c, gw_api_t api, const char *id)
{
    cJSON *rec = gw_store_read(c->gw, "batches", id);
    const char *kind = gw_str(rec, "api", NULL);
    if (rec && kind &&
        streq(kind, api == GW_API_OPENAI ? "openai" : "anthropic"))
        return rec;
    cJSON_Delete(rec);
    gw_reply_error(c->req, api, 404, c->rid, "invalid_request_error", NULL,
                   NULL, "No batch found with that id");
    return NULL;
}

static void s_openai_get(gw_call_t *c, const char *id, bool cancel)
{
    cJSON *rec = s_record(c, GW_API_OPENAI, id);
    if (!rec)
        return;
    s_status_t st;
    char err[600] = "";
    int rc = 0;
    if (cancel) {
        llmq_batch_status_t bs;
        rc = llmq_batch_cancel(c->gw->ctl, id, &bs);
        if (rc != 0)
            snprintf(err, sizeof err, "%s", llmq_batch_error(c->gw->ctl));
    }
    if (rc == 0)
        rc = s_broker_status(c->gw, id, &st, err, sizeof err);
    if (rc != 0)
        s_broker_failed(c, GW_API_OPENAI, err);
    else {
        cJSON *obj = s_openai_object(c->gw, rec, &st);
        gw_reply_cjson(c->req, 200, c->rid, obj);
        cJSON_Delete(obj);
    }
    cJSON_Delete(rec);
}

static int s_by_created_desc(const void *a, const void *b)
{
    double x =
        cJSON_GetObjectItem(*(cJSON *const *)a, "created_at")->valuedouble;
    double y =
        cJSON_GetObjectItem(*(cJSON *const *)b, "created_at")->valuedouble;
    return x < y ? 1 : x > y ? -1 : 0;
}

/*  Every record of an API, newest first (caller frees each and the array). */
static cJSON **s_records(gw_t *gw, const char *api, size_t *n_p)
{
    zlist_t *ids = gw_store_list(gw, "batches");
    cJSON **recs = (cJSON **)calloc(zlist_size(ids) + 1, sizeof *recs);
    size_t n = 0;
    for (char *id = (char *)zlist_first(ids); id && recs;
         id = (char *)zlist_next(ids)) {
        cJSON *rec = gw_store_read(gw, "batches", id);
        const char *kind = gw_str(rec, "api", NULL);
        if (kind && streq(kind, api) &&
            cJSON_IsNumber(cJSON_GetObjectItem(rec, "created_at")))
            recs[n++] = rec;
        else
            cJSON_Delete(rec);
    }
    zlist_destroy(&ids);
    if (recs)
        qsort(recs, n, sizeof *recs, s_by_created_desc);
    *n_p = n;
    return recs;
}

/*  after= and limit= from the query (OpenAI's and Anthropic's paging). */
static void s_paging(gw_call_t *c, char *after, size_t asize, int *limit)
{
    struct evkeyvalq q;
    *limit = 20;
    after[0] = '\0';
    if (!c->query || evhttp_parse_query_str(c->query, &q) != 0)
        return;
    const char *a = evhttp_find_header(&q, "after");
    if (!a)
        a = evhttp_find_header(&q, "after_id");
    const char *l = evhttp_find_header(&q, "limit");
    if (a)
        snprintf(after, asize, "%s", a);
    if (l && atoi(l) >= 1 && atoi(l) <= 100)
        *limit = atoi(l);
    evhttp_clear_headers(&q);
}

typedef cJSON *(s_object_fn)(gw_t *gw, cJSON *rec, const s_status_t *st);

/*  One page of batch objects, newest first, after the id `after`. */
static cJSON *s_page(gw_call_t *c, const char *api, s_object_fn *object,
                     bool *more)
{
    char after[80];
    int limit;
    s_paging(c, after, sizeof after, &limit);
    size_t n = 0;
    cJSON **recs = s_records(c->gw, api, &n);
    cJSON *data = cJSON_CreateArray();
    size_t i = 0;
    if (*after)
        while (i < n && !streq(gw_str(recs[i], "id", NULL), after))
            i++;
    if (*after && i < n)
        i++;
    *more = false;
    for (; i < n; i++) {
        s_status_t st;
        char err[600];
        if (cJSON_GetArraySize(data) >= limit) {
            *more = true;
            break;
        }
        if (s_broker_status(c->gw, gw_str(recs[i], "id", NULL), &st, err,
                            sizeof err) == 0)
            cJSON_AddItemToArray(data, object(c->gw, recs[i], &st));
    }
    for (i = 0; i < n; i++)
        cJSON_Delete(recs[i]);
    free(recs);
    return data;
}

static void s_openai_list(gw_call_t *c, const char *id, bool cancel)
{
    (void)id;
    (void)cancel;
    bool more = false;
    cJSON *data = s_page(c, "openai", s_openai_object, &more);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON_AddItemToObject(root, "data", data);
    int n = cJSON_GetArraySize(data);
    const char *first =
        n ? gw_str(cJSON_GetArrayItem(data, 0), "id", NULL) : NULL;
    const char *last =
        n ? gw_str(cJSON_GetArrayItem(data, n - 1), "id", NULL) : NULL;
    gw_json_add_text(root, "first_id", first);
    gw_json_add_text(root, "last_id", last);
    cJSON_AddBoolToObject(root, "has_more", more);
    gw_reply_cjson(c->req, 200, c->rid, root);
    cJSON_Delete(root);
}

#define S_OAI "/v1/batches"
#define S_MSG "/v1/messages/batches"

void gw_batches_route(gw_call_t *c)
{
    static const gw_route_t routes[] = {
        {S_OAI, EVHTTP_REQ_POST, false, "", s_openai_create, false},
        {S_OAI, EVHTTP_REQ_GET, false, "", s_openai_list, false},
        {S_OAI, EVHTTP_REQ_GET, true, "", s_openai_get, false},
        {S_OAI, EVHTTP_REQ_POST, true, "cancel", s_openai_get, true},
        {S_MSG, EVHTTP_REQ_POST, false, "", gw_msg_batch_create, false},
        {S_MSG, EVHTTP_REQ_GET, false, "", gw_msg_batch_list, false},
        {S_MSG, EVHTTP_REQ_GET, true, "", gw_msg_batch_get, false},
        {S_MSG, EVHTTP_REQ_GET, true, "results", gw_msg_batch_results, false},
        {S_MSG, EVHTTP_REQ_POST, true, "cancel", gw_msg_batch_get, true},
        {NULL, EVHTTP_REQ_GET, false, NULL, NULL, false}};
    gw_route(c, routes);
}

//  --------------------------------------------------------------------------
//  Shared with gw_msg_batches.c (Anthropic Message Batches)

void gw_batch_add_item(cJSON *items, const char *custom_id, cJSON *body)
{
    cJSON *item = cJSON_CreateObject();
    cJSON_AddStringToObject(item, "custom_id", custom_id);
    cJSON_AddItemToObject(item, "body", body);
    cJSON_AddItemToArray(items, item);
}

int gw_batch_create(gw_call_t *c, const char *id, cJSON *rec, cJSON *items,
                    const char *op)
{
    char err[600] = "";
    const char *model = gw_str(rec, "model", NULL);
    if (gw_store_write(c->gw, "batches", id, rec) != 0) {
        cJSON_Delete(items);
        gw_reply_error(c->req, GW_API_ANTHROPIC, 500, c->rid, NULL, NULL, NULL,
                       "cannot store the batch record");
        return -1;
    }
    if (s_broker_create(c->gw, id, model, op, NULL, items, err, sizeof err)) {
        s_broker_failed(c, GW_API_ANTHROPIC, err);
        return -1;
    }
    return 0;
}

int gw_batch_status(gw_t *gw, const char *id, char *state, size_t ssize,
                    int64_t counts[3], char *err, size_t errsz)
{
    s_status_t st;
    if (s_broker_status(gw, id, &st, err, errsz) != 0)
        return -1;
    snprintf(state, ssize, "%s", st.state);
    counts[0] = st.total;
    counts[1] = st.done;
    counts[2] = st.failed;
    return 0;
}

cJSON *gw_batch_record(gw_call_t *c, gw_api_t api, const char *id)
{
    return s_record(c, api, id);
}

cJSON **gw_batch_records(gw_t *gw, const char *api, size_t *n_p)
{
    return s_records(gw, api, n_p);
}

void gw_batch_paging(gw_call_t *c, char *after, size_t asize, int *limit)
{
    s_paging(c, after, asize, limit);
}
