/*  llmq_metrics.c - Prometheus registry and scrape listener.

    Design: a handful of families, each a zhashx of series keyed by the
    rendered label set ("model=\"m\",outcome=\"ok\""), so a hot-path update
    is one escape into a stack buffer and one hash lookup. Each family caps
    its series count, because label values (model names) come from clients
    and must not grow memory without bound.

    The HTTP side is deliberately minimal: HTTP/1.0-style, read the request
    head, write the whole answer, close. It lives in the owner's poll loop.
*/
#include "llmq_metrics.h"

#include <czmq.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <unistd.h>

#define s_MAX_FAMILIES 48
#define s_MAX_SERIES 5000
#define s_MAX_BUCKETS 24
#define s_MAX_CONNS 32
#define s_CONN_TIMEOUT 5000
#define s_LABELS_MAX 1024

typedef struct _s_family_t s_family_t;

struct _llmq_metric_series_t {
    double value;       //  Counter or gauge value; histogram sum
    uint64_t count;     //  Histogram: observations
    uint64_t *buckets;  //  Histogram: per-bucket counts (not cumulative)
    s_family_t *family; //  Its family (bounds, type)
};
typedef llmq_metric_series_t s_series_t;

struct _s_family_t {
    char *name;                   //  Family name
    char *help;                   //  HELP text
    llmq_metric_type_t type;      //  Counter, gauge or histogram
    double bounds[s_MAX_BUCKETS]; //  Histogram upper bounds
    size_t nbounds;               //  How many bounds
    zhashx_t *series;             //  Label string -> s_series_t
};

typedef struct {
    int fd;        //  Accepted socket
    char in[2048]; //  Request head read so far
    size_t inlen;  //  Bytes in `in`
    char *out;     //  Response being written, NULL while reading
    size_t outlen; //  Response size
    size_t outpos; //  Bytes already written
    int64_t since; //  Accept time, for the idle timeout
} s_conn_t;

struct _llmq_metrics_t {
    s_family_t families[s_MAX_FAMILIES]; //  Defined families, in order
    size_t nfamilies;                    //  How many are defined
    llmq_metrics_collect_fn *collect;    //  Refreshes gauges before render
    void *collect_arg;                   //  Its argument
    int listen_fd;                       //  Scrape listener, -1 if none
    char *url;                           //  Listener URL
    s_conn_t conns[s_MAX_CONNS]; //  Open scrape connections (fd -1 = free)
    zhashx_t *usage;  //  model -> s_usage_t: the tokens/cost series handles
    void *usage_last; //  The s_usage_t last used (freed with the table)
};

//  One model's usage series, so a result costs one lookup, not three.
typedef struct {
    s_series_t *prompt, *completion, *cost;
    char model[1]; //  Its model, stored inline
} s_usage_t;

static void s_series_destroy(void **item)
{
    s_series_t *series = (s_series_t *)*item;
    if (series) {
        free(series->buckets);
        free(series);
        *item = NULL;
    }
}

static s_family_t *s_family(llmq_metrics_t *self, const char *name)
{
    for (size_t i = 0; i < self->nfamilies; i++)
        if (streq(self->families[i].name, name))
            return &self->families[i];
    return NULL;
}

//  Render a label list into buf as `k="v",k="v"`; values escaped as the text
//  format asks (backslash, quote, newline) and cut at a sane length.
static void s_labels(const char *const *labels, char *buf, size_t size)
{
    size_t pos = 0;
    buf[0] = 0;
    for (size_t i = 0; labels && labels[i] && labels[i + 1]; i += 2) {
        const char *key = labels[i];
        const char *value = labels[i + 1];
        if (pos + strlen(key) + 8 >= size)
            break;
        pos += snprintf(buf + pos, size - pos, "%s%s=\"", pos ? "," : "", key);
        for (size_t j = 0; j < 200 && value[j] && pos + 4 < size; j++) {
            char c = value[j];
            if (c == '\\' || c == '"') {
                buf[pos++] = '\\';
                buf[pos++] = c;
            } else if (c == '\n') {
                buf[pos++] = '\\';
                buf[pos++] = 'n';
            } else
                buf[pos++] = c;
        }
        if (pos + 2 < size)
            buf[pos++] = '"';
        buf[pos] = 0;
    }
}

static s_series_t *s_series_require(s_family_t *family,
                                    const char *const *labels)
{
    char key[s_LABELS_MAX];
    s_labels(labels, key, sizeof(key));
    s_series_t *series = (s_series_t *)zhashx_lookup(family->series, key);
    if (series)
        return series;
    if (zhashx_size(family->series) >= s_MAX_SERIES)
        return NULL;
    series = (s_series_t *)calloc(1, sizeof(*series));
    if (!series)
        return NULL;
    series->family = family;
    if (family->type == LLMQ_METRIC_HISTOGRAM) {
        series->buckets =
            (uint64_t *)calloc(family->nbounds + 1, sizeof(uint64_t));
        if (!series->buckets) {
            free(series);
            return NULL;
        }
    }
    zhashx_insert(family->series, key, series);
    return series;
}

llmq_metrics_t *llmq_metrics_new(void)
{
    llmq_metrics_t *self = (llmq_metrics_t *)calloc(1, sizeof(*self));
    if (!self)
        return NULL;
    self->listen_fd = -1;
    for (size_t i = 0; i < s_MAX_CONNS; i++)
        self->conns[i].fd = -1;
    return self;
}

static void s_conn_close(s_conn_t *conn)
{
    if (conn->fd >= 0)
        close(conn->fd);
    conn->fd = -1;
    free(conn->out);
    conn->out = NULL;
    conn->inlen = conn->outlen = conn->outpos = 0;
}

void llmq_metrics_destroy(llmq_metrics_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    llmq_metrics_t *self = *self_p;
    zhashx_destroy(&self->usage);
    for (size_t i = 0; i < self->nfamilies; i++) {
        free(self->families[i].name);
        free(self->families[i].help);
        zhashx_destroy(&self->families[i].series);
    }
    for (size_t i = 0; i < s_MAX_CONNS; i++)
        s_conn_close(&self->conns[i]);
    if (self->listen_fd >= 0)
        close(self->listen_fd);
    free(self->url);
    free(self);
    *self_p = NULL;
}

int llmq_metrics_define(llmq_metrics_t *self, const char *name,
                        llmq_metric_type_t type, const char *help,
                        const double *buckets, size_t nbuckets)
{
    if (!name || !*name || s_family(self, name) ||
        self->nfamilies >= s_MAX_FAMILIES || nbuckets > s_MAX_BUCKETS)
        return -1;
    s_family_t *family = &self->families[self->nfamilies];
    memset(family, 0, sizeof(*family));
    family->name = strdup(name);
    family->help = strdup(help ? help : name);
    family->type = type;
    family->series = zhashx_new();
    if (!family->name || !family->help || !family->series) {
        free(family->name);
        free(family->help);
        zhashx_destroy(&family->series);
        return -1;
    }
    zhashx_set_destructor(family->series, s_series_destroy);
    for (size_t i = 0; type == LLMQ_METRIC_HISTOGRAM && i < nbuckets; i++)
        family->bounds[family->nbounds++] = buckets[i];
    self->nfamilies++;
    return 0;
}

/*  The series for labels of counter or gauge name (created on first
    use), or NULL: unknown name, a histogram, or out of memory. */
static s_series_t *s_scalar(llmq_metrics_t *self, const char *name,
                            const char *const *labels)
{
    s_family_t *family = s_family(self, name);
    if (!family || family->type == LLMQ_METRIC_HISTOGRAM)
        return NULL;
    return s_series_require(family, labels);
}

void llmq_metrics_add(llmq_metrics_t *self, const char *name,
                      const char *const *labels, double value)
{
    s_series_t *series = s_scalar(self, name, labels);
    if (series)
        series->value += value;
}

void llmq_metrics_set(llmq_metrics_t *self, const char *name,
                      const char *const *labels, double value)
{
    s_series_t *series = s_scalar(self, name, labels);
    if (series)
        series->value = value;
}

void llmq_metrics_observe(llmq_metrics_t *self, const char *name,
                          const char *const *labels, double value)
{
    s_family_t *family = s_family(self, name);
    if (family && family->type == LLMQ_METRIC_HISTOGRAM)
        llmq_metrics_series_observe(s_series_require(family, labels), value);
}

llmq_metric_series_t *llmq_metrics_series(llmq_metrics_t *self,
                                          const char *name,
                                          const char *const *labels)
{
    s_family_t *family = s_family(self, name);
    return family ? s_series_require(family, labels) : NULL;
}

void llmq_metrics_series_add(llmq_metric_series_t *series, double value)
{
    if (series && series->family->type != LLMQ_METRIC_HISTOGRAM)
        series->value += value;
}

void llmq_metrics_series_observe(llmq_metric_series_t *series, double value)
{
    if (!series || series->family->type != LLMQ_METRIC_HISTOGRAM)
        return;
    s_family_t *family = series->family;
    size_t i = 0;
    while (i < family->nbounds && value > family->bounds[i])
        i++;
    series->buckets[i]++;
    series->count++;
    series->value += value;
}

void llmq_metrics_reset(llmq_metrics_t *self, const char *name)
{
    s_family_t *family = s_family(self, name);
    if (family)
        zhashx_purge(family->series);
}

double llmq_metrics_value(llmq_metrics_t *self, const char *name,
                          const char *const *labels)
{
    s_family_t *family = s_family(self, name);
    if (!family)
        return 0;
    char key[s_LABELS_MAX];
    s_labels(labels, key, sizeof(key));
    s_series_t *series = (s_series_t *)zhashx_lookup(family->series, key);
    return series ? series->value : 0;
}

void llmq_metrics_set_collect(llmq_metrics_t *self, llmq_metrics_collect_fn *fn,
                              void *arg)
{
    self->collect = fn;
    self->collect_arg = arg;
}

//  A growing output buffer for render.
typedef struct {
    char *data;
    size_t len, alloc;
    bool failed;
} s_buf_t;

static void s_printf(s_buf_t *buf, const char *format, ...)
{
    if (buf->failed)
        return;
    va_list args;
    while (true) {
        va_start(args, format);
        int n = vsnprintf(buf->data + buf->len, buf->alloc - buf->len, format,
                          args);
        va_end(args);
        if (n < 0) {
            buf->failed = true;
            return;
        }
        if ((size_t)n < buf->alloc - buf->len) {
            buf->len += (size_t)n;
            return;
        }
        size_t alloc = buf->alloc * 2 + (size_t)n;
        char *data = (char *)realloc(buf->data, alloc);
        if (!data) {
            buf->failed = true;
            return;
        }
        buf->data = data;
        buf->alloc = alloc;
    }
}

//  Format a double as Prometheus expects (+Inf, integers without exponent).
static void s_number(char *out, size_t size, double value)
{
    if (value == (double)(int64_t)value && value < 1e15 && value > -1e15)
        snprintf(out, size, "%" PRId64, (int64_t)value);
    else
        snprintf(out, size, "%.9g", value);
}

char *llmq_metrics_render(llmq_metrics_t *self)
{
    if (self->collect)
        self->collect(self, self->collect_arg);
    s_buf_t buf = {(char *)malloc(4096), 0, 4096, false};
    if (!buf.data)
        return NULL;
    buf.data[0] = 0;
    static const char *types[] = {"counter", "gauge", "histogram"};
    char number[64];
    for (size_t i = 0; i < self->nfamilies; i++) {
        s_family_t *family = &self->families[i];
        s_printf(&buf, "# HELP %s %s\n# TYPE %s %s\n", family->name,
                 family->help, family->name, types[family->type]);
        s_series_t *series = (s_series_t *)zhashx_first(family->series);
        while (series) {
            const char *labels = (const char *)zhashx_cursor(family->series);
            if (family->type != LLMQ_METRIC_HISTOGRAM) {
                s_number(number, sizeof(number), series->value);
                s_printf(&buf, "%s%s%s%s %s\n", family->name,
                         *labels ? "{" : "", labels, *labels ? "}" : "",
                         number);
            } else {
                const char *sep = *labels ? "," : "";
                uint64_t cumulative = 0;
                for (size_t b = 0; b <= family->nbounds; b++) {
                    cumulative += series->buckets[b];
                    if (b < family->nbounds)
                        s_number(number, sizeof(number), family->bounds[b]);
                    else
                        snprintf(number, sizeof(number), "+Inf");
                    s_printf(&buf, "%s_bucket{%s%sle=\"%s\"} %" PRIu64 "\n",
                             family->name, labels, sep, number, cumulative);
                }
                s_number(number, sizeof(number), series->value);
                s_printf(&buf, "%s_sum%s%s%s %s\n", family->name,
                         *labels ? "{" : "", labels, *labels ? "}" : "",
                         number);
                s_printf(&buf, "%s_count%s%s%s %" PRIu64 "\n", family->name,
                         *labels ? "{" : "", labels, *labels ? "}" : "",
                         series->count);
            }
            series = (s_series_t *)zhashx_next(family->series);
        }
    }
    if (buf.failed) {
        free(buf.data);
        return NULL;
    }
    return buf.data;
}

int llmq_metrics_listen(llmq_metrics_t *self, const char *address)
{
    char host[64] = "127.0.0.1";
    const char *port_text = address;
    const char *colon = strrchr(address, ':');
    if (colon) {
        size_t len = (size_t)(colon - address);
        if (len >= sizeof(host)) {
            errno = EINVAL;
            return -1;
        }
        memcpy(host, address, len);
        host[len] = 0;
        port_text = colon + 1;
        if (streq(host, "*") || !*host)
            strcpy(host, "0.0.0.0");
    }
    char *end = NULL;
    long port = strtol(port_text, &end, 10);
    if (!*port_text || *end || port < 0 || port > 65535) {
        errno = EINVAL;
        return -1;
    }
    struct sockaddr_in addr;
    memset(&addr, 0, sizeof(addr));
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, streq(host, "localhost") ? "127.0.0.1" : host,
                  &addr.sin_addr) != 1) {
        errno = EINVAL;
        return -1;
    }
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int on = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on));
    socklen_t addrlen = sizeof(addr);
    if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) || listen(fd, 64) ||
        getsockname(fd, (struct sockaddr *)&addr, &addrlen)) {
        int saved = errno;
        close(fd);
        errno = saved;
        return -1;
    }
    if (self->listen_fd >= 0)
        close(self->listen_fd);
    self->listen_fd = fd;
    free(self->url);
    self->url = zsys_sprintf("http://%s:%d",
                             streq(host, "0.0.0.0") ? "127.0.0.1" : host,
                             ntohs(addr.sin_port));
    return ntohs(addr.sin_port);
}

const char *llmq_metrics_url(const llmq_metrics_t *self)
{
    return self->url;
}

size_t llmq_metrics_poll_items(llmq_metrics_t *self, zmq_pollitem_t *items,
                               size_t max)
{
    size_t count = 0;
    if (self->listen_fd >= 0 && count < max) {
        items[count] = (zmq_pollitem_t){NULL, self->listen_fd, ZMQ_POLLIN, 0};
        count++;
    }
    for (size_t i = 0; i < s_MAX_CONNS && count < max; i++) {
        s_conn_t *conn = &self->conns[i];
        if (conn->fd < 0)
            continue;
        items[count] = (zmq_pollitem_t){
            NULL, conn->fd, conn->out ? ZMQ_POLLOUT : ZMQ_POLLIN, 0};
        count++;
    }
    return count;
}

static s_conn_t *s_conn_for(llmq_metrics_t *self, int fd)
{
    for (size_t i = 0; i < s_MAX_CONNS; i++)
        if (self->conns[i].fd == fd)
            return &self->conns[i];
    return NULL;
}

//  The request head is complete: build the whole answer.
static void s_conn_answer(llmq_metrics_t *self, s_conn_t *conn)
{
    conn->in[conn->inlen] = 0;
    const char *status = "404 Not Found";
    const char *type = "text/plain";
    char *body = NULL;
    if (strncmp(conn->in, "GET /metrics ", 13) == 0 ||
        strncmp(conn->in, "GET /metrics?", 13) == 0 ||
        strncmp(conn->in, "GET / ", 6) == 0) {
        body = llmq_metrics_render(self);
        if (body) {
            status = "200 OK";
            type = "text/plain; version=0.0.4; charset=utf-8";
        } else
            status = "500 Internal Server Error";
    } else if (strncmp(conn->in, "GET ", 4) && strncmp(conn->in, "HEAD ", 5))
        status = "405 Method Not Allowed";
    const char *text = body ? body : "";
    size_t body_len = strlen(text);
    conn->out =
        zsys_sprintf("HTTP/1.1 %s\r\nContent-Type: %s\r\n"
                     "Content-Length: %zu\r\nConnection: close\r\n\r\n%s",
                     status, type, body_len, text);
    free(body);
    if (!conn->out) {
        s_conn_close(conn);
        return;
    }
    conn->outlen = strlen(conn->out);
    conn->outpos = 0;
}

void llmq_metrics_service(llmq_metrics_t *self, const zmq_pollitem_t *items,
                          size_t count, int64_t now_ms)
{
    for (size_t i = 0; i < count; i++) {
        if (!items[i].revents)
            continue;
        if (items[i].fd == self->listen_fd) {
            //  Accept what is waiting; with no free slot, refuse at once.
            while (true) {
                int fd = accept(self->listen_fd, NULL, NULL);
                if (fd < 0)
                    break;
                s_conn_t *conn = s_conn_for(self, -1);
                if (!conn) {
                    close(fd);
                    continue;
                }
                fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
                conn->fd = fd;
                conn->inlen = 0;
                conn->since = now_ms;
            }
            continue;
        }
        s_conn_t *conn = s_conn_for(self, items[i].fd);
        if (!conn)
            continue;
        if (!conn->out) {
            ssize_t n = read(conn->fd, conn->in + conn->inlen,
                             sizeof(conn->in) - 1 - conn->inlen);
            if (n <= 0) {
                if (n == 0 || (errno != EAGAIN && errno != EINTR))
                    s_conn_close(conn);
                continue;
            }
            conn->inlen += (size_t)n;
            conn->in[conn->inlen] = 0;
            if (strstr(conn->in, "\r\n\r\n") || strstr(conn->in, "\n\n") ||
                conn->inlen >= sizeof(conn->in) - 1)
                s_conn_answer(self, conn);
        } else {
            ssize_t n = send(conn->fd, conn->out + conn->outpos,
                             conn->outlen - conn->outpos, MSG_NOSIGNAL);
            if (n < 0) {
                if (errno != EAGAIN && errno != EINTR)
                    s_conn_close(conn);
                continue;
            }
            conn->outpos += (size_t)n;
            if (conn->outpos >= conn->outlen)
                s_conn_close(conn);
        }
    }
    for (size_t i = 0; i < s_MAX_CONNS; i++)
        if (self->conns[i].fd >= 0 &&
            now_ms - self->conns[i].since > s_CONN_TIMEOUT)
            s_conn_close(&self->conns[i]);
}

//  --------------------------------------------------------------------------
//  Selftest: define, update, render, and scrape over real loopback HTTP.

static void s_usage_free(void **item)
{
    free(*item);
    *item = NULL;
}

void llmq_metrics_usage_define(llmq_metrics_t *self)
{
    if (!self->usage && (self->usage = zhashx_new()))
        zhashx_set_destructor(self->usage, s_usage_free);
    llmq_metrics_define(self, "llmq_broker_tokens_total", LLMQ_METRIC_COUNTER,
                        "Tokens of the results, by model and kind (prompt, "
                        "completion).",
                        NULL, 0);
    llmq_metrics_define(self, "llmq_broker_cost_usd_total", LLMQ_METRIC_COUNTER,
                        "Cost of the results in USD as the workers priced "
                        "them, by model.",
                        NULL, 0);
}

void llmq_metrics_usage(llmq_metrics_t *self, const char *model,
                        int64_t prompt_tokens, int64_t completion_tokens,
                        double cost_usd)
{
    //  Results come in runs of one model: the last entry, without a lookup.
    s_usage_t *u = (s_usage_t *)self->usage_last;
    if (!u || !streq(u->model, model))
        u = self->usage ? (s_usage_t *)zhashx_lookup(self->usage, model) : NULL;
    size_t len = u ? 0 : strlen(model);
    if (!u && self->usage && (u = (s_usage_t *)calloc(1, sizeof(*u) + len))) {
        memcpy(u->model, model, len + 1);
        const char *prompt[] = {"model", model, "kind", "prompt", NULL};
        const char *completion[] = {"model", model, "kind", "completion", NULL};
        u->prompt = s_scalar(self, "llmq_broker_tokens_total", prompt);
        u->completion = s_scalar(self, "llmq_broker_tokens_total", completion);
        zhashx_insert(self->usage, model, u);
    }
    if (!u)
        return;
    self->usage_last = u;
    if (cost_usd > 0 && !u->cost) { //  no series for a model never priced
        const char *cost[] = {"model", model, NULL};
        u->cost = s_scalar(self, "llmq_broker_cost_usd_total", cost);
    }
    if (prompt_tokens > 0 && u->prompt)
        u->prompt->value += (double)prompt_tokens;
    if (completion_tokens > 0 && u->completion)
        u->completion->value += (double)completion_tokens;
    if (cost_usd > 0 && u->cost)
        u->cost->value += cost_usd;
}

//  Tokens and cost by model: counted through the kept handles.
static int s_test_usage(llmq_metrics_t *self)
{
    llmq_metrics_usage_define(self);
    llmq_metrics_usage(self, "gpt-4o", 10, 5, 0.25);
    llmq_metrics_usage(self, "gpt-4o", 1, 0, 0);
    llmq_metrics_usage(self, "free", 1, 0, 0);
    const char *kp[] = {"model", "gpt-4o", "kind", "prompt", NULL};
    const char *kc[] = {"model", "gpt-4o", NULL};
    const char *kf[] = {"model", "free", NULL};
    char *text = llmq_metrics_render(self);
    bool no_cost = text && !strstr(text, "cost_usd_total{model=\"free\"}");
    zstr_free(&text);
    return llmq_metrics_value(self, "llmq_broker_tokens_total", kp) == 11 &&
                   llmq_metrics_value(self, "llmq_broker_cost_usd_total", kc) ==
                       0.25 &&
                   llmq_metrics_value(self, "llmq_broker_cost_usd_total", kf) ==
                       0 &&
                   no_cost
               ? 0
               : -1;
}

int llmq_metrics_test(bool verbose)
{
    if (verbose)
        printf(" * llmq_metrics: ");
    int rc = -1;
    char *text = NULL;
    int client = -1;
    llmq_metrics_t *self = llmq_metrics_new();
    if (!self)
        goto done;
    double buckets[] = {0.1, 1, 10};
    if (llmq_metrics_define(self, "t_requests_total", LLMQ_METRIC_COUNTER,
                            "Requests", NULL, 0) ||
        llmq_metrics_define(self, "t_latency_seconds", LLMQ_METRIC_HISTOGRAM,
                            "Latency", buckets, 3) ||
        llmq_metrics_define(self, "t_depth", LLMQ_METRIC_GAUGE, "Depth", NULL,
                            0))
        goto done;
    if (llmq_metrics_define(self, "t_depth", LLMQ_METRIC_GAUGE, "again", NULL,
                            0) != -1)
        goto done;
    const char *ok[] = {"model", "m\"1\n", "outcome", "ok", NULL};
    llmq_metrics_add(self, "t_requests_total", ok, 1);
    llmq_metrics_add(self, "t_requests_total", ok, 2);
    llmq_metrics_observe(self, "t_latency_seconds", ok, 0.05);
    llmq_metrics_observe(self, "t_latency_seconds", ok, 5);
    llmq_metrics_observe(self, "t_latency_seconds", ok, 50);
    llmq_metrics_set(self, "t_depth", NULL, 7);
    llmq_metrics_add(self, "nope", NULL, 1);
    llmq_metric_series_t *handle =
        llmq_metrics_series(self, "t_requests_total", ok);
    llmq_metrics_series_add(handle, 1);
    llmq_metrics_series_add(handle, -1);
    llmq_metrics_series_observe(handle, 1); //  wrong type: ignored
    if (!handle || llmq_metrics_series(self, "nope", NULL))
        goto done;
    if (llmq_metrics_value(self, "t_requests_total", ok) != 3 ||
        llmq_metrics_value(self, "t_depth", NULL) != 7)
        goto done;
    text = llmq_metrics_render(self);
    if (!text ||
        !strstr(text,
                "t_requests_total{model=\"m\\\"1\\n\",outcome=\"ok\"} 3\n") ||
        !strstr(text, "t_latency_seconds_bucket{model=\"m\\\"1\\n\",outcome="
                      "\"ok\",le=\"10\"} 2\n") ||
        !strstr(text, "le=\"+Inf\"} 3\n") || !strstr(text, "t_depth 7\n"))
        goto done;
    zstr_free(&text);
    if (s_test_usage(self))
        goto done;
    llmq_metrics_reset(self, "t_depth");
    if (llmq_metrics_value(self, "t_depth", NULL) != 0)
        goto done;

    //  Scrape over HTTP, driving the listener by hand as a poll loop would.
    int port = llmq_metrics_listen(self, "127.0.0.1:0");
    if (port <= 0 || !llmq_metrics_url(self))
        goto done;
    client = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in addr = {0};
    addr.sin_family = AF_INET;
    addr.sin_port = htons((uint16_t)port);
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    if (client < 0 || connect(client, (struct sockaddr *)&addr, sizeof(addr)))
        goto done;
    const char *request = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
    if (write(client, request, strlen(request)) != (ssize_t)strlen(request))
        goto done;
    fcntl(client, F_SETFL, fcntl(client, F_GETFL) | O_NONBLOCK);
    char answer[8192];
    size_t got = 0;
    int64_t start = zclock_mono();
    while (zclock_mono() - start < 5000) {
        zmq_pollitem_t items[8];
        size_t n = llmq_metrics_poll_items(self, items, 8);
        if (zmq_poll(items, (int)n, 50) < 0)
            break;
        llmq_metrics_service(self, items, n, zclock_mono());
        ssize_t r = read(client, answer + got, sizeof(answer) - 1 - got);
        if (r == 0)
            break; //  Server closed: answer complete
        if (r > 0)
            got += (size_t)r;
    }
    answer[got] = 0;
    if (!strstr(answer, "HTTP/1.1 200 OK") ||
        !strstr(answer, "t_requests_total"))
        goto done;
    rc = 0;
done:
    if (client >= 0)
        close(client);
    zstr_free(&text);
    llmq_metrics_destroy(&self);
    llmq_metrics_destroy(&self);
    if (verbose)
        printf("%s\n", rc == 0 ? "OK" : "FAILED");
    return rc;
}
