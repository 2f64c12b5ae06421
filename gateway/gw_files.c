/*  gw_files.c - OpenAI Files: POST /v1/files (multipart), GET /v1/files,
    GET /v1/files/{id}, GET /v1/files/{id}/content, DELETE /v1/files/{id}.

    A file is two entries under --data-dir/files: `<id>` (the bytes) and
    `<id>.json` (the OpenAI file object). Both are written to a temporary
    name and renamed, so a gateway killed mid-write leaves no half file.
    Batch output and error files are written here too (gw_batches.c). The
    same helpers keep the batches' JSON records (gw_store_*).
*/
#define _GNU_SOURCE /* memmem */
#include "gw.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#define GW_ID_MAX 64

/*  Ids we create are [A-Za-z0-9_-]; anything else is never a file of ours
    (and never reaches the file system). */
static bool s_id_ok(const char *id)
{
    size_t n = strlen(id);
    if (n == 0 || n > GW_ID_MAX)
        return false;
    for (size_t i = 0; i < n; i++)
        if (!isalnum((unsigned char)id[i]) && id[i] != '-' && id[i] != '_')
            return false;
    return true;
}

static int s_write_atomic(const char *path, const char *data, size_t len)
{
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp%d", path, (int)getpid());
    FILE *f = fopen(tmp, "wb");
    if (!f)
        return -1;
    bool ok = fwrite(data, 1, len, f) == len;
    ok = fflush(f) == 0 && fsync(fileno(f)) == 0 && ok;
    fclose(f);
    if (!ok || rename(tmp, path) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

static char *s_read_all(const char *path, size_t *len_p)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    struct stat st;
    char *data = NULL;
    if (fstat(fileno(f), &st) == 0 &&
        (data = (char *)malloc((size_t)st.st_size + 1))) {
        size_t n = fread(data, 1, (size_t)st.st_size, f);
        data[n] = '\0';
        if (len_p)
            *len_p = n;
    }
    fclose(f);
    return data;
}

int gw_store_write(gw_t *gw, const char *kind, const char *id,
                   const cJSON *json)
{
    if (!s_id_ok(id))
        return -1;
    char path[4200];
    snprintf(path, sizeof path, "%s/%s/%s.json", gw->cfg.data_dir, kind, id);
    char *text = cJSON_PrintUnformatted(json);
    int rc = text ? s_write_atomic(path, text, strlen(text)) : -1;
    free(text);
    return rc;
}

cJSON *gw_store_read(gw_t *gw, const char *kind, const char *id)
{
    if (!s_id_ok(id))
        return NULL;
    char path[4200];
    snprintf(path, sizeof path, "%s/%s/%s.json", gw->cfg.data_dir, kind, id);
    char *text = s_read_all(path, NULL);
    cJSON *json = text ? cJSON_Parse(text) : NULL;
    free(text);
    return json;
}

/*  Ids of every record of a kind (caller destroys the list). */
zlist_t *gw_store_list(gw_t *gw, const char *kind)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", gw->cfg.data_dir, kind);
    zlist_t *ids = zlist_new();
    zlist_autofree(ids);
    DIR *dir = opendir(path);
    struct dirent *e;
    while (dir && (e = readdir(dir))) {
        size_t n = strlen(e->d_name);
        if (n > 5 && streq(e->d_name + n - 5, ".json")) {
            char id[GW_ID_MAX + 8];
            snprintf(id, sizeof id, "%.*s", (int)(n - 5), e->d_name);
            zlist_append(ids, id);
        }
    }
    if (dir)
        closedir(dir);
    return ids;
}

char *gw_file_read(gw_t *gw, const char *id, size_t *len_p)
{
    if (!s_id_ok(id))
        return NULL;
    char path[4200];
    snprintf(path, sizeof path, "%s/files/%s", gw->cfg.data_dir, id);
    return s_read_all(path, len_p);
}

cJSON *gw_file_object(gw_t *gw, const char *id)
{
    return gw_store_read(gw, "files", id);
}

int gw_file_write(gw_t *gw, const char *purpose, const char *filename,
                  const char *data, size_t len, char *id_out, size_t id_size)
{
    char id[GW_ID_MAX];
    gw_new_id(gw, "file-", id, sizeof id);
    char path[4200];
    snprintf(path, sizeof path, "%s/files/%s", gw->cfg.data_dir, id);
    if (s_write_atomic(path, data, len) != 0)
        return -1;
    cJSON *obj = cJSON_CreateObject();
    cJSON_AddStringToObject(obj, "id", id);
    cJSON_AddStringToObject(obj, "object", "file");
    cJSON_AddNumberToObject(obj, "bytes", (double)len);
    cJSON_AddNumberToObject(obj, "created_at", (double)(zclock_time() / 1000));
    cJSON_AddStringToObject(obj, "filename", filename ? filename : "file");
    cJSON_AddStringToObject(obj, "purpose", purpose ? purpose : "batch");
    cJSON_AddStringToObject(obj, "status", "processed");
    cJSON_AddNullToObject(obj, "status_details");
    int rc = gw_store_write(gw, "files", id, obj);
    cJSON_Delete(obj);
    if (rc == 0)
        snprintf(id_out, id_size, "%s", id);
    return rc;
}

//  --------------------------------------------------------------------------
//  multipart/form-data

/*  A quoted parameter (name="x") from a Content-Disposition line. */
static void s_param(const char *line, size_t n, const char *key, char *out,
                    size_t size)
{
    char pat[32];
    snprintf(pat, sizeof pat, "%s=\"", key);
    out[0] = '\0';
    for (size_t i = 0; i + strlen(pat) <= n; i++) {
        if (strncasecmp(line + i, pat, strlen(pat)) != 0 ||
            (i > 0 && isalnum((unsigned char)line[i - 1])))
            continue;
        const char *v = line + i + strlen(pat);
        const char *end = memchr(v, '"', n - (size_t)(v - line));
        if (end)
            snprintf(out, size, "%.*s", (int)(end - v), v);
        return;
    }
}

/*  Split body into at most max parts; returns how many, -1 if malformed. */
int gw_multipart(const char *body, size_t len, const char *boundary,
                 gw_part_t *parts, int max)
{
    char delim[256];
    int dl = snprintf(delim, sizeof delim, "--%s", boundary);
    if (dl <= 2 || dl >= (int)sizeof delim)
        return -1;
    const char *end = body + len;
    const char *p = memmem(body, len, delim, (size_t)dl);
    int n = 0;
    while (p && n < max) {
        p += dl;
        if (end - p >= 2 && p[0] == '-' && p[1] == '-')
            return n; //  closing delimiter
        const char *head = memmem(p, (size_t)(end - p), "\r\n\r\n", 4);
        if (!head)
            return -1;
        gw_part_t *part = &parts[n];
        memset(part, 0, sizeof *part);
        s_param(p, (size_t)(head - p), "name", part->name, sizeof part->name);
        s_param(p, (size_t)(head - p), "filename", part->filename,
                sizeof part->filename);
        part->data = head + 4;
        const char *next =
            memmem(part->data, (size_t)(end - part->data), delim, (size_t)dl);
        if (!next || next - part->data < 2)
            return -1;
        part->len = (size_t)(next - part->data) - 2; //  its CRLF
        n++;
        p = next;
    }
    return -1;
}

static void s_upload(gw_call_t *c)
{
    const char *ctype = gw_header(c->req, "Content-Type");
    const char *b = ctype ? strstr(ctype, "boundary=") : NULL;
    char boundary[200] = "";
    if (b && sscanf(b + 9, "\"%199[^\"]\"", boundary) != 1)
        sscanf(b + 9, "%199[^; ]", boundary);
    size_t len = 0;
    char *body = *boundary ? gw_body_text(c->req, &len) : NULL;
    gw_part_t parts[8];
    int n = body ? gw_multipart(body, len, boundary, parts, 8) : -1;
    const gw_part_t *file = NULL;
    char purpose[64] = "";
    for (int i = 0; i < n; i++) {
        if (streq(parts[i].name, "file"))
            file = &parts[i];
        else if (streq(parts[i].name, "purpose"))
            snprintf(purpose, sizeof purpose, "%.*s", (int)parts[i].len,
                     parts[i].data);
    }
    char id[GW_ID_MAX] = "";
    if (!file || !*purpose)
        gw_reply_error(
            c->req, GW_API_OPENAI, 400, c->rid, "invalid_request_error", NULL,
            file ? "purpose" : "file",
            "expected multipart/form-data with `file` and `purpose`");
    else if (gw_file_write(c->gw, purpose, file->filename, file->data,
                           file->len, id, sizeof id) != 0)
        gw_reply_error(c->req, GW_API_OPENAI, 500, c->rid, "server_error", NULL,
                       NULL, "cannot store the file");
    else {
        cJSON *obj = gw_file_object(c->gw, id);
        gw_reply_cjson(c->req, 200, c->rid, obj);
        cJSON_Delete(obj);
    }
    free(body);
}

static void s_list(gw_call_t *c)
{
    zlist_t *ids = gw_store_list(c->gw, "files");
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "object", "list");
    cJSON *data = cJSON_AddArrayToObject(root, "data");
    for (char *id = (char *)zlist_first(ids); id;
         id = (char *)zlist_next(ids)) {
        cJSON *obj = gw_file_object(c->gw, id);
        if (obj)
            cJSON_AddItemToArray(data, obj);
    }
    cJSON_AddFalseToObject(root, "has_more");
    zlist_destroy(&ids);
    gw_reply_cjson(c->req, 200, c->rid, root);
    cJSON_Delete(root);
}

static void s_delete(gw_call_t *c, const char *id)
{
    char path[4200];
    snprintf(path, sizeof path, "%s/files/%s.json", c->gw->cfg.data_dir, id);
    unlink(path);
    snprintf(path, sizeof path, "%s/files/%s", c->gw->cfg.data_dir, id);
    unlink(path);
    cJSON *root = cJSON_CreateObject();
    cJSON_AddStringToObject(root, "id", id);
    cJSON_AddStringToObject(root, "object", "file");
    cJSON_AddTrueToObject(root, "deleted");
    gw_reply_cjson(c->req, 200, c->rid, root);
    cJSON_Delete(root);
}

static void s_content(gw_call_t *c, const char *id)
{
    size_t len = 0;
    char *data = gw_file_read(c->gw, id, &len);
    if (!data) {
        gw_reply_error(c->req, GW_API_OPENAI, 404, c->rid,
                       "invalid_request_error", NULL, NULL,
                       "No such File object");
        return;
    }
    struct evkeyvalq *out = evhttp_request_get_output_headers(c->req);
    evhttp_add_header(out, "Content-Type", "application/octet-stream");
    evhttp_add_header(out, "x-request-id", c->rid);
    struct evbuffer *buf = evbuffer_new();
    evbuffer_add(buf, data, len);
    gw_reply_raw(c->req, 200, buf);
    evbuffer_free(buf);
    free(data);
}

void gw_files_route(gw_call_t *c)
{
    enum evhttp_cmd_type m = c->method;
    const char *rest = c->path + strlen("/v1/files");
    char id[GW_ID_MAX + 1] = "";
    char tail[32] = "";
    if (*rest == '/')
        sscanf(rest + 1, "%64[^/]/%31s", id, tail);
    cJSON *obj = *id ? gw_file_object(c->gw, id) : NULL;
    if (!*id && m == EVHTTP_REQ_POST)
        s_upload(c);
    else if (!*id && m == EVHTTP_REQ_GET)
        s_list(c);
    else if (*id && !obj)
        gw_reply_error(c->req, GW_API_OPENAI, 404, c->rid,
                       "invalid_request_error", NULL, "file_id",
                       "No such File object");
    else if (*tail && streq(tail, "content") && m == EVHTTP_REQ_GET)
        s_content(c, id);
    else if (!*tail && m == EVHTTP_REQ_GET)
        gw_reply_cjson(c->req, 200, c->rid, obj);
    else if (!*tail && m == EVHTTP_REQ_DELETE)
        s_delete(c, id);
    else
        gw_reply_error(c->req, GW_API_OPENAI, 405, c->rid,
                       "invalid_request_error", NULL, NULL,
                       "method not allowed on this route");
    cJSON_Delete(obj);
}
