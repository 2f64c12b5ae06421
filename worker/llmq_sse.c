/*  llmq_sse.c - incremental Server-Sent Events parser (see llmq_sse.h).

    Design: bytes go into `line` until a line end; a finished line is
    applied to the event under construction (`event`, `data`); a blank line
    dispatches it. A CR at the very end of one feed may be the first half of
    a CRLF: `after_cr` remembers it so the LF that starts the next feed is
    not taken for a second (blank) line.
*/
#include "llmq_sse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct _llmq_sse_t {
    llmq_sse_fn *fn; /* callback per event */
    void *arg;       /* its argument */
    size_t max;      /* bound on a line and on an event's data */
    char *line;      /* the line being read (not terminated) */
    size_t line_len; /* its length */
    size_t line_cap; /* its allocation */
    char *data;      /* data lines of the current event, joined by LF */
    size_t data_len; /* its length */
    size_t data_cap; /* its allocation */
    bool has_data;   /* a data field was seen */
    char event[64];  /* the current event's name ("" = message) */
    bool after_cr;   /* the last byte fed was a CR */
    bool broken;     /* an event outgrew max */
    size_t count;    /* events dispatched */
};

llmq_sse_t *llmq_sse_new(llmq_sse_fn *fn, void *arg, size_t max_event)
{
    llmq_sse_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->fn = fn;
    self->arg = arg;
    self->max = max_event ? max_event : 1024 * 1024;
    return self;
}

void llmq_sse_destroy(llmq_sse_t **self_p)
{
    if (self_p && *self_p) {
        llmq_sse_t *self = *self_p;
        free(self->line);
        free(self->data);
        free(self);
        *self_p = NULL;
    }
}

int llmq_buf_append(char **buf, size_t *len, size_t *cap, const char *src,
                    size_t n, size_t max)
{
    if (*len + n + 1 > max)
        return -1;
    if (*len + n + 1 > *cap) {
        size_t ncap = *cap ? *cap : 256;
        while (ncap < *len + n + 1)
            ncap *= 2;
        char *nb = realloc(*buf, ncap);
        if (!nb)
            return -1;
        *buf = nb;
        *cap = ncap;
    }
    memcpy(*buf + *len, src, n);
    *len += n;
    (*buf)[*len] = 0;
    return 0;
}

/*  One complete line: dispatch on blank, else apply the field. */
static int s_line(llmq_sse_t *self, const char *line, size_t len)
{
    if (len == 0) {
        int rc = 0;
        if (self->has_data) {
            self->count++;
            rc = self->fn(self->event[0] ? self->event : "message",
                          self->data ? self->data : "", self->data_len,
                          self->arg);
        }
        self->data_len = 0;
        if (self->data)
            self->data[0] = 0;
        self->has_data = false;
        self->event[0] = 0;
        return rc;
    }
    if (line[0] == ':')
        return 0; /* comment, e.g. ": keep-alive" */
    const char *colon = memchr(line, ':', len);
    size_t name_len = colon ? (size_t)(colon - line) : len;
    const char *value = colon ? colon + 1 : line + len;
    size_t value_len = colon ? len - name_len - 1 : 0;
    if (value_len && value[0] == ' ') {
        value++;
        value_len--;
    }
    if (name_len == 4 && memcmp(line, "data", 4) == 0) {
        if ((self->has_data &&
             llmq_buf_append(&self->data, &self->data_len, &self->data_cap,
                             "\n", 1, self->max)) ||
            llmq_buf_append(&self->data, &self->data_len, &self->data_cap,
                            value, value_len, self->max)) {
            self->broken = true;
            return -1;
        }
        self->has_data = true;
    } else if (name_len == 5 && memcmp(line, "event", 5) == 0) {
        size_t n = value_len < sizeof self->event - 1 ? value_len
                                                      : sizeof self->event - 1;
        memcpy(self->event, value, n);
        self->event[n] = 0;
    }
    /*  id, retry and unknown fields mean nothing to us. */
    return 0;
}

int llmq_sse_feed(llmq_sse_t *self, const char *data, size_t size)
{
    if (self->broken)
        return -1;
    size_t i = 0;
    if (self->after_cr && size > 0 && data[0] == '\n')
        i = 1; /* second half of a CRLF split across feeds */
    self->after_cr = false;
    while (i < size) {
        /*  Find the next line end from i. */
        size_t j = i;
        while (j < size && data[j] != '\n' && data[j] != '\r')
            j++;
        if (j == size) {
            if (llmq_buf_append(&self->line, &self->line_len, &self->line_cap,
                                data + i, size - i, self->max)) {
                self->broken = true;
                return -1;
            }
            break;
        }
        int rc;
        if (self->line_len) {
            if (llmq_buf_append(&self->line, &self->line_len, &self->line_cap,
                                data + i, j - i, self->max)) {
                self->broken = true;
                return -1;
            }
            rc = s_line(self, self->line, self->line_len);
            self->line_len = 0;
        } else
            rc = s_line(self, data + i, j - i);
        if (self->broken)
            return -1;
        if (data[j] == '\r') {
            if (j + 1 < size && data[j + 1] == '\n')
                j++;
            else if (j + 1 == size)
                self->after_cr = true;
        }
        i = j + 1;
        if (rc)
            return rc;
    }
    return 0;
}

int llmq_sse_finish(llmq_sse_t *self)
{
    self->line_len = 0;
    self->data_len = 0;
    self->has_data = false;
    self->event[0] = 0;
    return 0;
}

size_t llmq_sse_count(const llmq_sse_t *self)
{
    return self->count;
}

/*  --- selftest ----------------------------------------------------------- */

#include "llmq_check.h"
#define CHECK(cond) LLMQ_CHECK_RET(cond)

typedef struct {
    char log[4096]; /* "event=data|" per event */
    int stop_at;    /* return 7 at this event number (1-based), 0 = never */
    int seen;
} s_test_sink_t;

static int s_test_fn(const char *event, const char *data, size_t size,
                     void *arg)
{
    s_test_sink_t *sink = arg;
    size_t len = strlen(sink->log);
    snprintf(sink->log + len, sizeof sink->log - len, "%s=%.*s|", event,
             (int)size, data);
    sink->seen++;
    return sink->stop_at && sink->seen == sink->stop_at ? 7 : 0;
}

int llmq_sse_test(bool verbose)
{
    if (verbose)
        printf(" * llmq_sse: ");
    const char *stream = ": comment\r\n"
                         "data: {\"a\":1}\r\n\r\n"
                         "event: message_start\n"
                         "data: x\n"
                         "data:y\n"
                         "\n"
                         "id: 5\rretry: 10\rdata\r\r"
                         "event: ping\n\n" /* no data: not dispatched */
                         "data: [DONE]\n\n"
                         "data: partial"; /* never ended: dropped at finish */
    const char *expect =
        "message={\"a\":1}|message_start=x\ny|message=|message=[DONE]|";

    /*  Fed whole, then byte by byte, then in every two-piece split. */
    s_test_sink_t sink = {{0}, 0, 0};
    llmq_sse_t *sse = llmq_sse_new(s_test_fn, &sink, 0);
    CHECK(sse);
    CHECK(llmq_sse_feed(sse, stream, strlen(stream)) == 0);
    CHECK(llmq_sse_finish(sse) == 0);
    CHECK(strcmp(sink.log, expect) == 0);
    CHECK(llmq_sse_count(sse) == 4);
    llmq_sse_destroy(&sse);
    CHECK(sse == NULL);
    llmq_sse_destroy(&sse);

    memset(&sink, 0, sizeof sink);
    sse = llmq_sse_new(s_test_fn, &sink, 0);
    for (size_t i = 0; i < strlen(stream); i++)
        CHECK(llmq_sse_feed(sse, stream + i, 1) == 0);
    CHECK(strcmp(sink.log, expect) == 0);
    llmq_sse_destroy(&sse);

    size_t n = strlen(stream);
    for (size_t cut = 0; cut <= n; cut++) {
        memset(&sink, 0, sizeof sink);
        sse = llmq_sse_new(s_test_fn, &sink, 0);
        CHECK(llmq_sse_feed(sse, stream, cut) == 0);
        CHECK(llmq_sse_feed(sse, stream + cut, n - cut) == 0);
        CHECK(strcmp(sink.log, expect) == 0);
        llmq_sse_destroy(&sse);
    }

    /*  The callback can stop the parse. */
    memset(&sink, 0, sizeof sink);
    sink.stop_at = 2;
    sse = llmq_sse_new(s_test_fn, &sink, 0);
    CHECK(llmq_sse_feed(sse, stream, n) == 7);
    CHECK(sink.seen == 2);
    llmq_sse_destroy(&sse);

    /*  An oversized line or event fails, never grows without bound. */
    memset(&sink, 0, sizeof sink);
    sse = llmq_sse_new(s_test_fn, &sink, 16);
    CHECK(llmq_sse_feed(sse, "data: 0123456789abcdef", 22) == -1);
    CHECK(llmq_sse_feed(sse, "\n\n", 2) == -1);
    llmq_sse_destroy(&sse);
    memset(&sink, 0, sizeof sink);
    sse = llmq_sse_new(s_test_fn, &sink, 16);
    CHECK(llmq_sse_feed(sse, "data: 0123456\ndata: 0123456\ndata: 0123456\n",
                        42) == -1);
    llmq_sse_destroy(&sse);

    if (verbose)
        printf("OK\n");
    return 0;
}
