/*  gw_msg_batches.c - Anthropic Message Batches: POST /v1/messages/batches,
    GET /v1/messages/batches[/{id}[/results]], POST .../{id}/cancel.

    Each request's `params` is translated to the OpenAI shape (as for
    /v1/messages) and the batch runs as a durable broker batch (one model
    per batch, a limit of the broker's batches). Results are read from the
    broker when asked and turned back into Anthropic's JSONL lines
    ({custom_id, result: succeeded | errored | canceled | expired}). The
    final request_counts are counted from the results once and kept in the
    batch's record.
*/
#include "gw.h"

#include <time.h>

static void s_rfc3339(cJSON *obj, const char *key, const cJSON *secs)
{
    if (!cJSON_IsNumber(secs)) {
        cJSON_AddNullToObject(obj, key);
        return;
    }
    time_t t = (time_t)secs->valuedouble;
    struct tm tm;
    char text[40];
    gmtime_r(&t, &tm);
    strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", &tm);
    cJSON_AddStringToObject(obj, key, text);
}

static bool s_final(const char *state)
{
    return llmq_batch_state_final(state);
}

/*  The result kind of one finished item. */
static const char *s_kind(const llmq_result_t *r)
{
    if (r->ok)
        return "succeeded";
    if (r->error_code && streq(r->error_code, "cancelled"))
        return "canceled";
    if (r->error_code && streq(r->error_code, "deadline_exceeded"))
        return "expired";
    return "errored";
}

/*  Count the results of an ended batch into rec.final_counts (once). */
static void s_final_counts(gw_t *gw, cJSON *rec)
{
    if (cJSON_GetObjectItem(rec, "final_counts"))
        return;
    size_t n = 0;
    llmq_result_t **results =
        llmq_batch_results(gw->ctl, gw_str(rec, "id", NULL), &n);
    if (!results)
        return;
    cJSON *counts = cJSON_AddObjectToObject(rec, "final_counts");
    const char *kinds[] = {"processing", "succeeded", "errored", "canceled",
                           "expired"};
    for (int k = 0; k < 5; k++)
        cJSON_AddNumberToObject(counts, kinds[k], 0);
    for (size_t i = 0; i < n; i++) {
        cJSON *c = cJSON_GetObjectItem(counts, s_kind(results[i]));
        cJSON_SetNumberValue(c, c->valuedouble + 1);
        llmq_result_destroy(&results[i]);
    }
    free(results);
    cJSON_AddNumberToObject(rec, "ended_at", (double)(zclock_time() / 1000));
    gw_store_write(gw, "batches", gw_str(rec, "id", NULL), rec);
}

static cJSON *s_object(gw_call_t *c, cJSON *rec, const char *state,
                       const int64_t counts[3])
{
    bool ended = s_final(state);
    if (ended)
        s_final_counts(c->gw, rec);
    cJSON *b = cJSON_CreateObject();
    cJSON_AddStringToObject(b, "id", gw_str(rec, "id", NULL));
    cJSON_AddStringToObject(b, "type", "message_batch");
    cJSON_AddStringToObject(b, "processing_status",
                            ended                        ? "ended"
                            : streq(state, "cancelling") ? "canceling"
                                                         : "in_progress");
    cJSON *fc = cJSON_GetObjectItem(rec, "final_counts");
    cJSON *rc = fc ? cJSON_Duplicate(fc, 1) : cJSON_CreateObject();
    if (!fc) {
        cJSON_AddNumberToObject(rc, "processing",
                                (double)(counts[0] - counts[1]));
        cJSON_AddNumberToObject(rc, "succeeded",
                                (double)(counts[1] - counts[2]));
        cJSON_AddNumberToObject(rc, "errored", (double)counts[2]);
        cJSON_AddNumberToObject(rc, "canceled", 0);
        cJSON_AddNumberToObject(rc, "expired", 0);
    }
    cJSON_AddItemToObject(b, "request_counts", rc);
    s_rfc3339(b, "ended_at", cJSON_GetObjectItem(rec, "ended_at"));
    s_rfc3339(b, "created_at", cJSON_GetObjectItem(rec, "created_at"));
    s_rfc3339(b, "expires_at", cJSON_GetObjectItem(rec, "expires_at"));
    cJSON_AddNullToObject(b, "archived_at");
    s_rfc3339(b, "cancel_initiated_at",
              cJSON_GetObjectItem(rec, "cancel_initiated_at"));
    const char *host = gw_header(c->req, "Host");
    if (ended && host) {
        char *url = zsys_sprintf("http://%s/v1/messages/batches/%s/results",
                                 host, gw_str(rec, "id", NULL));
        cJSON_AddStringToObject(b, "results_url", url);
        free(url);
    } else
        cJSON_AddNullToObject(b, "results_url");
    return b;
}

/*  requests[] -> broker items; model set from the params. NULL + err. */
static cJSON *s_items(const cJSON *requests, char *model, size_t msize,
                      char *err, size_t errsz)
{
    cJSON *items = cJSON_CreateArray();
    int i = 0;
    const cJSON *r;
    cJSON_ArrayForEach(r, requests)
    {
        const char *cid = gw_str(r, "custom_id", NULL);
        const cJSON *params = cJSON_GetObjectItem(r, "params");
        const char *m = gw_str(params, "model", NULL);
        cJSON *oa =
            cid && m ? gw_anthropic_to_openai(params, err, errsz) : NULL;
        if (!oa || (*model && !streq(model, m))) {
            if (oa || !*err)
                snprintf(err, errsz, "requests.%d: %s", i,
                         oa ? "one model per batch"
                            : "custom_id and params.model "
                              "are required");
            cJSON_Delete(oa);
            cJSON_Delete(items);
            return NULL;
        }
        snprintf(model, msize, "%s", m);
        gw_batch_add_item(items, cid, oa);
        i++;
    }
    if (i == 0) {
        snprintf(err, errsz, "requests: at least one request is required");
        cJSON_Delete(items);
        return NULL;
    }
    return items;
}

void gw_msg_batch_create(gw_call_t *c, const char *unused, bool no)
{
    (void)unused;
    (void)no;
    cJSON *body = gw_body_json(c->req, GW_API_ANTHROPIC, c->rid);
    if (!body)
        return;
    char err[512] = "", model[257] = "", id[72];
    cJSON *items = s_items(cJSON_GetObjectItem(body, "requests"), model,
                           sizeof model, err, sizeof err);
    cJSON_Delete(body);
    if (!items) {
        gw_reply_error(c->req, GW_API_ANTHROPIC, 400, c->rid, NULL, NULL, NULL,
                       err);
        return;
    }
    int64_t total = cJSON_GetArraySize(items);
    gw_new_id(c->gw, "msgbatch_", id, sizeof id);
    cJSON *rec = cJSON_CreateObject();
    cJSON_AddStringToObject(rec, "id", id);
    cJSON_AddStringToObject(rec, "api", "anthropic");
    cJSON_AddStringToObject(rec, "model", model);
    cJSON_AddNumberToObject(rec, "created_at", (double)(zclock_time() / 1000));
    cJSON_AddNumberToObject(rec, "expires_at",
                            (double)(zclock_time() / 1000 + 86400));
    if (gw_batch_create(c, id, rec, items, "chat") == 0) {
        int64_t counts[3] = {total, 0, 0};
        cJSON *obj = s_object(c, rec, "in_progress", counts);
        gw_reply_cjson(c->req, 200, c->rid, obj);
        cJSON_Delete(obj);
    }
    cJSON_Delete(rec);
}

void gw_msg_batch_get(gw_call_t *c, const char *id, bool cancel)
{
    cJSON *rec = gw_batch_record(c, GW_API_ANTHROPIC, id);
    if (!rec)
        return;
    char state[17], err[600] = "";
    int64_t counts[3];
    int rc = 0;
    if (cancel) {
        llmq_batch_status_t bs;
        rc = llmq_batch_cancel(c->gw->ctl, id, &bs);
        if (rc == 0 && !cJSON_GetObjectItem(rec, "cancel_initiated_at")) {
            cJSON_AddNumberToObject(rec, "cancel_initiated_at",
                                    (double)(zclock_time() / 1000));
            gw_store_write(c->gw, "batches", id, rec);
        }
        if (rc != 0)
            snprintf(err, sizeof err, "%s", llmq_batch_error(c->gw->ctl));
    }
    if (rc == 0)
        rc = gw_batch_status(c->gw, id, state, sizeof state, counts, err,
                             sizeof err);
    if (rc != 0)
        gw_reply_error(c->req, GW_API_ANTHROPIC, 503, c->rid, NULL, NULL, NULL,
                       err);
    else {
        cJSON *obj = s_object(c, rec, state, counts);
        gw_reply_cjson(c->req, 200, c->rid, obj);
        cJSON_Delete(obj);
    }
    cJSON_Delete(rec);
}

static cJSON *s_result_line(const llmq_result_t *r, const char *model)
{
    cJSON *line = cJSON_CreateObject();
    cJSON_AddStringToObject(line, "custom_id", r->id ? r->id : "");
    cJSON *res = cJSON_AddObjectToObject(line, "result");
    const char *kind = s_kind(r);
    cJSON_AddStringToObject(res, "type", kind);
    if (r->ok)
        cJSON_AddItemToObject(res, "message",
                              gw_openai_to_anthropic(r->body, model,
                                                     r->prompt_tokens,
                                                     r->completion_tokens));
    else if (streq(kind, "errored")) {
        cJSON *e = cJSON_AddObjectToObject(res, "error");
        cJSON_AddStringToObject(e, "type", "error");
        cJSON *inner = cJSON_AddObjectToObject(e, "error");
        int status = gw_http_status_of(r->error_code);
        cJSON_AddStringToObject(inner, "type",
                                status < 500 ? "invalid_request_error"
                                             : "api_error");
        cJSON_AddStringToObject(inner, "message",
                                r->error_message ? r->error_message
                                                 : r->error_code);
    }
    return line;
}

void gw_msg_batch_results(gw_call_t *c, const char *id, bool no)
{
    (void)no;
    cJSON *rec = gw_batch_record(c, GW_API_ANTHROPIC, id);
    if (!rec)
        return;
    size_t n = 0;
    llmq_result_t **results = llmq_batch_results(c->gw->ctl, id, &n);
    if (!results) {
        gw_reply_error(c->req, GW_API_ANTHROPIC, 400, c->rid, NULL, NULL, NULL,
                       "the batch has not ended yet");
        cJSON_Delete(rec);
        return;
    }
    struct evbuffer *buf = evbuffer_new();
    for (size_t i = 0; i < n; i++) {
        cJSON *line = s_result_line(results[i], gw_str(rec, "model", NULL));
        char *text = cJSON_PrintUnformatted(line);
        evbuffer_add_printf(buf, "%s\n", text ? text : "{}");
        free(text);
        cJSON_Delete(line);
        llmq_result_destroy(&results[i]);
    }
    free(results);
    struct evkeyvalq *out = evhttp_request_get_output_headers(c->req);
    evhttp_add_header(out, "Content-Type", "application/binary");
    evhttp_add_header(out, "x-request-id", c->rid);
    gw_reply_raw(c->req, 200, buf);
    evbuffer_free(buf);
    cJSON_Delete(rec);
}

void gw_msg_batch_list(gw_call_t *c, const char *id, bool cancel)
{
    (void)id;
    (void)cancel;
    char after[80];
    int limit;
    gw_batch_paging(c, after, sizeof after, &limit);
    size_t n = 0, i = 0;
    cJSON **recs = gw_batch_records(c->gw, "anthropic", &n);
    if (*after) {
        while (i < n && !streq(gw_str(recs[i], "id", NULL), after))
            i++;
        i = i < n ? i + 1 : n;
    }
    cJSON *root = cJSON_CreateObject();
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    bool more = false;
    for (; i < n; i++) {
        char state[17], err[600];
        int64_t counts[3];
        if (cJSON_GetArraySize(data) >= limit) {
            more = true;
            break;
        }
        if (gw_batch_status(c->gw, gw_str(recs[i], "id", NULL), state,
                            sizeof state, counts, err, sizeof err) == 0)
            cJSON_AddItemToArray(data, s_object(c, recs[i], state, counts));
    }
    int k = cJSON_GetArraySize(data);
    cJSON_AddBoolToObject(root, "has_more", more);
    gw_json_add_text(root, "first_id",
                     k ? gw_str(cJSON_GetArrayItem(data, 0), "id", NULL)
                       : NULL);
    gw_json_add_text(root, "last_id",
                     k ? gw_str(cJSON_GetArrayItem(data, k - 1), "id", NULL)
                       : NULL);
    for (i = 0; i < n; i++)
        cJSON_Delete(recs[i]);
    free(recs);
    gw_reply_cjson(c->req, 200, c->rid, root);
    cJSON_Delete(root);
}
