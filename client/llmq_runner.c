/*  llmq_runner.c - the run engine of `llmq run` (see llmq_runner.h).

    Memory is bounded by the window, not by the input. The load reads IN
    once, as a stream: every line is parsed for its custom_id, op and
    model (an OpenAI Batch or a prompt line without a cJSON tree: s_fast);
    its record (fingerprint of the custom_id, line number, op, usable or
    not, and where the custom_id, model and body are in the line, so that
    sending does not parse it again: 48 bytes) goes to `ids`, an unlinked
    spill file next to OUT, and the pair (fingerprint, line number) to
    another, which an external sort (runs of 4 MiB, merged) turns into the
    list of duplicate custom_ids. OUT is
    scanned into an index (llmq_jsonl.h: per whole line, the custom_id's
    fingerprint and the line's offset, 16 bytes), which says what is done.
    The run reads IN and ids again, in step: a line OUT does not answer
    becomes an s_line_t (its text, kept until it is answered, for retries)
    when the window has room. Results are appended to OUT as they arrive,
    and the pair (line number, offset) of each goes to `done`, a third
    spill file; the ordered rewrite at the end follows ids (input order),
    merged with done sorted by line number (and the index for lines of an
    earlier run), and copies each line from OUT by its offset. IN "-"
    (stdin) is copied to a spill file by the load, so that the run can read
    it again. A request carries its s_line_t as its arg, so a result finds
    its line without a lookup.

    The window: cwnd (a double: grown by 1/cwnd per answer, halved by an
    `overloaded` answer at most every S_CUT_MS) bounds the requests in
    flight; lines answered `overloaded` wait in `backoff` until their due
    time. A step fills the window (due retries first), waits on the
    client's socket fd with poll() (no longer than until the next retry is
    due, and S_TIMERS_MS at most so the client's heartbeat timers run) and
    writes every result that came.

    The cost cap: every result of ours adds its cost to stats.spent_usd;
    once that reaches max_cost_usd, s_fill sends nothing more and a step
    ends the run (returns 0, stats.capped) when nothing is in flight. The
    lines never answered have no OUT line, so the ordered rewrite leaves
    them out and a rerun finds them to do.
*/
#include "llmq_runner.h"
#include "llmq_jsonl.h"
#include "llmq_value.h"

#include <errno.h>
#include <libgen.h>
#include <math.h>
#include <poll.h>
#include <unistd.h>

/*  One burst of overloaded answers is one signal: halve at most this
    often. */
#define S_CUT_MS 250
/*  Longest wait on the socket: the client's timers (heartbeat, reconnect,
    give-up) run after each wait. */
#define S_TIMERS_MS 250
/*  The writer holds a step's lines up to this many bytes before it
    writes them (one write per step, not one per line). */
#define S_FLUSH_SIZE ((size_t)1 << 20)
/*  stdio buffer of IN and the spill files. */
#define S_STDIO_BUFFER ((size_t)1 << 16)
/*  Distinct model names kept for llmq_runner_models. */
#define S_MODELS 1024

/*  What the load learnt of an input line that is not blank: ids holds one
    per such line, in input order. */
typedef struct {
    uint64_t fp;         /* llmq_jsonl_fnv1a of the custom_id */
    uint64_t line_no;    /* 1-based line number in IN */
    int32_t op;          /* llmq_op_t */
    int32_t usable;      /* S_UNUSABLE, S_USABLE or S_FAST */
    uint32_t id_at;      /* a fast line: its custom_id's JSON value, at */
    uint32_t id_size;    /* this offset in the line, of this size (0: none
                            or null: "line-<n>") */
    uint32_t model_at;   /* its body.model's JSON value (size 0: none or */
    uint32_t model_size; /* null) */
    uint32_t body_at;    /* its body object */
    uint32_t body_size;  /* (0: not a fast line) */
} s_rec_t;

/*  s_rec_t.usable: an unusable line is answered by an error line, never
    sent; a fast one is an OpenAI Batch line sent without a cJSON tree. */
#define S_UNUSABLE 0
#define S_USABLE 1
#define S_FAST 2

/*  A line of this run, from when the window takes it until it is
    answered. A request's arg is its s_line_t. */
typedef struct s_line_s {
    s_rec_t rec;     /* from ids */
    char *text;      /* the raw line (sent again after `overloaded`): in
                        the same allocation, after the struct */
    size_t len;      /* its size */
    char *custom_id; /* set when it is sent */
    int tries;       /* overloaded answers so far */
    struct s_line_s *prev, *next; /* the runner's lines */
} s_line_t;

typedef struct {
    s_line_t *line; /* waiting to be sent again */
    int64_t due;    /* zclock_mono() time to send it again */
} s_retry_t;

/*  The external sort of spill files (see "External sort" below). */
/*  Pairs sorted in memory at once (4 MiB). */
#define S_RUN 262144
/*  Pairs read at once from each run while merging. */
#define S_CURSOR 256

typedef struct {
    uint64_t key;   /* sorted by key, then value */
    uint64_t value; /* what goes with it */
} s_pair_t;

typedef struct {
    uint64_t next;             /* first pair of the run not read yet */
    uint64_t end;              /* end of the run (pair index) */
    s_pair_t buffer[S_CURSOR]; /* pairs read */
    size_t at;                 /* next pair in buffer */
    size_t size;               /* pairs in buffer */
} s_cursor_t;

typedef struct {
    int fd;           /* the spill file */
    s_cursor_t *runs; /* one cursor per run */
    size_t count;     /* runs */
} s_merge_t;

/*  The files of a run: IN, the records of its lines, OUT's index and
    OUT's appender. */
typedef struct {
    char *input;                 /* IN path */
    char *output;                /* OUT path */
    bool piped;                  /* OUT is "-": no index, no rewrite */
    FILE *in;                    /* IN as the run reads it (stdin: a copy) */
    char *in_buffer;             /* in's stdio buffer, or NULL */
    FILE *ids;                   /* s_rec_t per line (unlinked spill file) */
    uint64_t in_line_no;         /* lines of in read so far */
    char *buffer;                /* getline() buffer of in */
    size_t cap;                  /* its size */
    llmq_jsonl_index_t *index;   /* OUT's lines before this run */
    FILE *done;                  /* pairs line_no -> offset in OUT of this
                                    run's lines (spill file) */
    s_pair_t *held;              /* done pairs of lines the writer holds */
    size_t nheld;                /* pairs in held */
    size_t held_cap;             /* its size */
    s_merge_t merge;             /* done, sorted, while rewriting */
    s_pair_t head;               /* its next pair */
    bool has_head;               /* head holds one */
    llmq_jsonl_writer_t *writer; /* appends to OUT as results arrive */
} s_files_t;

struct _llmq_runner_t {
    s_files_t files;              /* IN and OUT */
    char *model;                  /* every line's model, or NULL */
    char *default_model;          /* for lines naming none, or NULL */
    bool retry_failed;            /* OUT's error lines run again */
    int window;                   /* most requests in flight */
    int retries;                  /* overloaded answers sent again */
    int backoff_ms;               /* first backoff */
    llmq_opts_t request;          /* per-request options */
    double max_cost_usd;          /* cost cap; 0: none */
    llmq_runner_line_fn *on_line; /* finished-line callback, or NULL */
    void *on_line_arg;            /* its argument */
    zlistx_t *models;             /* models the lines left name (strings) */
    s_line_t *lines;              /* taken and not answered (owns) */
    zlistx_t *backoff;            /* s_retry_t: lines waiting to resend */
    llmq_client_t *client;        /* borrowed, from start */
    llmq_packer_t *packer;        /* a fast line's body as msgpack */
    llmq_value_buf_t text;        /* a prompt line's body as JSON text */
    double cwnd;                  /* the window in use (AIMD) */
    int64_t last_cut;             /* zclock_mono() when cwnd was halved */
    size_t taken;                 /* lines left that the window took */
    size_t in_flight;             /* our requests the client holds */
    llmq_runner_stats_t stats;    /* counts and flags */
};

static int s_load(llmq_runner_t *self, char *err, size_t err_size);
static void s_merge_end(s_merge_t *merge);
static bool s_flush(s_files_t *files);

//  --------------------------------------------------------------------------
//  Constructor and destructor

static void s_free_item(void **item)
{
    free(*item);
    *item = NULL;
}

/*  Take line off the runner's lines and free it. */
static void s_line_drop(llmq_runner_t *self, s_line_t *line)
{
    if (line->prev)
        line->prev->next = line->next;
    else
        self->lines = line->next;
    if (line->next)
        line->next->prev = line->prev;
    free(line->custom_id);
    free(line);
}

static void s_free_string(void **item)
{
    zstr_free((char **)item);
}

/*  The lists of a new runner; false if out of memory. */
static bool s_lists_new(llmq_runner_t *self)
{
    self->backoff = zlistx_new();
    self->models = zlistx_new();
    if (!self->backoff || !self->models)
        return false;
    zlistx_set_destructor(self->backoff, s_free_item);
    zlistx_set_destructor(self->models, s_free_string);
    return true;
}

llmq_runner_t *llmq_runner_new(const llmq_runner_config_t *config, char *err,
                               size_t err_size)
{
    char scratch[1];
    if (!err || !err_size) {
        err = scratch;
        err_size = sizeof scratch;
    }
    *err = 0;
    if (!config || !config->input || !config->output) {
        snprintf(err, err_size, "the runner needs an input and an output");
        errno = EINVAL;
        return NULL;
    }
    llmq_runner_t *self = (llmq_runner_t *)calloc(1, sizeof(*self));
    if (!self)
        return NULL;
    self->files.input = strdup(config->input);
    self->files.output = strdup(config->output);
    self->files.piped = streq(config->output, "-");
    self->model = config->model ? strdup(config->model) : NULL;
    self->retry_failed = config->retry_failed;
    self->window = config->window > 0 ? config->window : LLMQ_RUNNER_WINDOW;
    self->retries = config->retries > 0    ? config->retries
                    : config->retries == 0 ? LLMQ_RUNNER_RETRIES
                                           : 0;
    self->backoff_ms =
        config->backoff_ms > 0 ? config->backoff_ms : LLMQ_RUNNER_BACKOFF_MS;
    self->request = config->request;
    //  Not > 0 (NaN included): no cap.
    self->max_cost_usd = config->max_cost_usd > 0 ? config->max_cost_usd : 0;
    self->on_line = config->on_line;
    self->on_line_arg = config->on_line_arg;
    self->cwnd = self->window;
    self->packer = llmq_packer_new();
    if (!self->files.input || !self->files.output || !self->packer ||
        !s_lists_new(self) || s_load(self, err, err_size) != 0) {
        int saved = errno;
        llmq_runner_destroy(&self);
        errno = saved;
    }
    return self;
}

static void s_files_close(s_files_t *files)
{
    if (files->writer)
        s_flush(files);
    llmq_jsonl_writer_destroy(&files->writer);
    llmq_jsonl_index_destroy(&files->index);
    if (files->in)
        fclose(files->in);
    free(files->in_buffer);
    if (files->ids)
        fclose(files->ids);
    if (files->done)
        fclose(files->done);
    s_merge_end(&files->merge);
    free(files->held);
    free(files->buffer);
    free(files->output);
    free(files->input);
}

void llmq_runner_destroy(llmq_runner_t **self_p)
{
    llmq_runner_t *self = self_p ? *self_p : NULL;
    if (!self)
        return;
    s_files_close(&self->files);
    zlistx_destroy(&self->backoff);
    while (self->lines)
        s_line_drop(self, self->lines);
    zlistx_destroy(&self->models);
    llmq_packer_destroy(&self->packer);
    free(self->text.data);
    free(self->default_model);
    free(self->model);
    free(self);
    *self_p = NULL;
}

//  --------------------------------------------------------------------------
//  External sort: pairs in a spill file, sorted a run of S_RUN pairs at a
//  time in memory (written back in place), then merged, S_CURSOR pairs
//  read at a time from each run. Memory: one run while sorting, one
//  cursor per run while merging; never the file.

static int s_pair_cmp(const void *a, const void *b)
{
    const s_pair_t *x = (const s_pair_t *)a, *y = (const s_pair_t *)b;
    if (x->key != y->key)
        return x->key < y->key ? -1 : 1;
    return x->value < y->value ? -1 : x->value > y->value;
}

/*  pread/pwrite size bytes at offset, whole. Returns 0 or -1. */
static int s_pio(int fd, void *data, size_t size, uint64_t offset, bool write)
{
    while (size > 0) {
        ssize_t rc = write ? pwrite(fd, data, size, (off_t)offset)
                           : pread(fd, data, size, (off_t)offset);
        if (rc < 0 && errno == EINTR)
            continue;
        if (rc <= 0)
            return -1;
        data = (char *)data + rc;
        size -= (size_t)rc;
        offset += (uint64_t)rc;
    }
    return 0;
}

static void s_merge_end(s_merge_t *merge)
{
    free(merge->runs);
    memset(merge, 0, sizeof *merge);
}

/*  Sort the pairs of file run by run (run pairs each) and start merging
    them. Returns 0 or -1 (the merge is empty then). */
static int s_merge_runs(s_merge_t *merge, FILE *file, uint64_t run)
{
    memset(merge, 0, sizeof *merge);
    off_t size =
        file && fflush(file) == 0 ? lseek(fileno(file), 0, SEEK_END) : -1;
    if (size <= 0)
        return size == 0 ? 0 : -1;
    uint64_t total = (uint64_t)size / sizeof(s_pair_t);
    size_t count = (size_t)((total + run - 1) / run);
    s_pair_t *chunk = (s_pair_t *)malloc((size_t)(total < run ? total : run) *
                                         sizeof(s_pair_t));
    merge->runs = (s_cursor_t *)calloc(count, sizeof(s_cursor_t));
    merge->fd = fileno(file);
    int rc = chunk && merge->runs ? 0 : -1;
    for (size_t i = 0; rc == 0 && i < count; i++) {
        uint64_t first = (uint64_t)i * run;
        size_t n = (size_t)(total - first < run ? total - first : run);
        uint64_t at = first * sizeof(s_pair_t);
        rc = s_pio(merge->fd, chunk, n * sizeof(s_pair_t), at, false);
        if (rc == 0) {
            qsort(chunk, n, sizeof(s_pair_t), s_pair_cmp);
            rc = s_pio(merge->fd, chunk, n * sizeof(s_pair_t), at, true);
        }
        merge->runs[i].next = first;
        merge->runs[i].end = first + n;
    }
    free(chunk);
    merge->count = count;
    if (rc != 0)
        s_merge_end(merge);
    return rc;
}

static int s_merge_start(s_merge_t *merge, FILE *file)
{
    return s_merge_runs(merge, file, S_RUN);
}

/*  The next pair of a run (borrowed), or NULL at its end. */
static s_pair_t *s_cursor_peek(int fd, s_cursor_t *run)
{
    if (run->at == run->size) {
        size_t n =
            (size_t)(run->end - run->next < S_CURSOR ? run->end - run->next
                                                     : S_CURSOR);
        if (n == 0 || s_pio(fd, run->buffer, n * sizeof(s_pair_t),
                            run->next * sizeof(s_pair_t), false) != 0)
            return NULL;
        run->next += n;
        run->at = 0;
        run->size = n;
    }
    return &run->buffer[run->at];
}

/*  The smallest pair left; false at the end. */
static bool s_merge_next(s_merge_t *merge, s_pair_t *pair)
{
    s_cursor_t *best = NULL;
    s_pair_t *lowest = NULL;
    for (size_t i = 0; i < merge->count; i++) {
        s_pair_t *head = s_cursor_peek(merge->fd, &merge->runs[i]);
        if (head && (!lowest || s_pair_cmp(head, lowest) < 0)) {
            best = &merge->runs[i];
            lowest = head;
        }
    }
    if (!best)
        return false;
    *pair = *lowest;
    best->at++;
    return true;
}

//  --------------------------------------------------------------------------
//  Spill files and the records of IN's lines

/*  file (may be NULL) read through a buffer of S_STDIO_BUFFER bytes, put
    in *buffer_p (the caller frees it after fclose): IN is read twice, and
    stdio's 4 KiB meant a system call every dozen lines. Returns file. */
static FILE *s_buffered(FILE *file, char **buffer_p)
{
    *buffer_p = file ? (char *)malloc(S_STDIO_BUFFER) : NULL;
    if (*buffer_p)
        setvbuf(file, *buffer_p, _IOFBF, S_STDIO_BUFFER);
    return file;
}

/*  A new empty file next to path (the temp directory for "-"), already
    unlinked: it goes away with the process. NULL with errno. */
static FILE *s_spill_new(const char *path)
{
    char *copy = strdup(path);
    const char *tmp = getenv("TMPDIR");
    const char *dir = streq(path, "-") ? (tmp && *tmp ? tmp : "/tmp")
                      : copy           ? dirname(copy)
                                       : ".";
    char *name = zsys_sprintf("%s/.llmq-run-XXXXXX", dir);
    int fd = name ? mkstemp(name) : -1;
    if (fd >= 0)
        unlink(name);
    FILE *file = fd >= 0 ? fdopen(fd, "w+") : NULL;
    if (fd >= 0 && !file)
        close(fd);
    zstr_free(&name);
    free(copy);
    return file;
}

/*  Back to the first line: in and ids read again from the start. */
static void s_rewind(s_files_t *files)
{
    if (files->in)
        rewind(files->in);
    if (files->ids)
        rewind(files->ids);
    files->in_line_no = 0;
}

/*  The next record of ids and its line of in (borrowed until the next
    call). False at the end. */
static bool s_next_rec(s_files_t *files, s_rec_t *rec, char **text_p,
                       size_t *len_p)
{
    if (fread(rec, sizeof *rec, 1, files->ids) != 1)
        return false;
    ssize_t len = -1;
    while (files->in_line_no < rec->line_no &&
           (len = getline(&files->buffer, &files->cap, files->in)) >= 0)
        files->in_line_no++;
    if (len < 0)
        return false; //  IN changed since the load
    *text_p = files->buffer;
    *len_p = (size_t)len;
    return true;
}

/*  llmq_jsonl_next_fn over ids: the custom_ids in input order, with the
    offset of the OUT line of each line this run answered (done). */
static bool s_next_out(void *arg, uint64_t *fp_p, uint64_t *offset_p)
{
    s_files_t *files = (s_files_t *)arg;
    s_rec_t rec;
    if (fread(&rec, sizeof rec, 1, files->ids) != 1)
        return false;
    *fp_p = rec.fp;
    *offset_p = LLMQ_JSONL_NO_OFFSET;
    while (files->has_head && files->head.key < rec.line_no)
        files->has_head = s_merge_next(&files->merge, &files->head);
    if (files->has_head && files->head.key == rec.line_no) {
        *offset_p = files->head.value;
        files->has_head = s_merge_next(&files->merge, &files->head);
    }
    return true;
}

/*  Rewrite OUT in input order: the lines of the index (before this run)
    and of done (this run's). Returns 0 or -1. */
static int s_rewrite(s_files_t *files)
{
    if (files->piped)
        return 0;
    if (files->ids)
        rewind(files->ids);
    int rc = files->done ? s_merge_start(&files->merge, files->done) : 0;
    files->has_head = rc == 0 && s_merge_next(&files->merge, &files->head);
    if (rc == 0)
        rc = llmq_jsonl_write_indexed(files->output, files->index, s_next_out,
                                      files);
    int saved = errno;
    s_merge_end(&files->merge);
    files->has_head = false;
    s_rewind(files);
    errno = saved;
    return rc;
}

/*  Parse an input line (len bytes as read, with its newline) as the run
    does: a line the protocol cannot carry is answered by an error line,
    never sent (a frame over the limit would only be dropped, and resent
    after every reconnect). */
static llmq_jsonl_item_t *s_item(const char *text, size_t len, size_t line_no)
{
    llmq_jsonl_item_t *item = llmq_jsonl_parse_line(text, len, line_no);
    if (item && len > LLMQ_JSONL_MAX_LINE && !item->error) {
        cJSON_Delete(item->body);
        item->body = NULL;
        item->error = zsys_sprintf(
            "line too large: %zu bytes (the protocol's limit is %lld)", len,
            (long long)LLMQ_JSONL_MAX_LINE);
    }
    return item;
}

/*  The sampling fields a prompt line carries over to its body, in the
    order llmq_jsonl_parse_line adds them (its "model" is set last). */
static const char *const s_extras[] = {"max_tokens", "temperature", "top_p",
                                       "seed",       "stop",        NULL};
#define S_EXTRAS 5

/*  An OpenAI Batch input line, or a prompt line, read without a cJSON tree
    (the request body goes from the line's text to msgpack directly, at
    send time). */
typedef struct {
    char *custom_id;              /* given, or "line-<n>" */
    char *model;                  /* body.model (a prompt line's model), or
                                     NULL */
    llmq_value_span_t body;       /* the body's text, in the line (NULL: a
                                     prompt line) */
    llmq_value_span_t id;         /* the custom_id's JSON value (NULL: none or
                                     null) */
    llmq_value_span_t model_json; /* body.model's (NULL: none or null) */
    llmq_value_span_t prompt;     /* a prompt line's prompt (a string) */
    llmq_value_span_t system;     /* its system, if a string */
    llmq_value_span_t extras[S_EXTRAS]; /* its s_extras fields */
    int op;                             /* from url, default chat */
} s_fast_t;

static void s_fast_clear(s_fast_t *fast)
{
    free(fast->custom_id);
    free(fast->model);
    memset(fast, 0, sizeof *fast);
}

/*  The line's custom_id (span) and model (body's span) as
    llmq_jsonl_parse_line takes them; false if it would refuse them. */
static bool s_fast_strings(s_fast_t *fast, llmq_value_span_t id,
                           llmq_value_span_t model, size_t line_no)
{
    if (id.data && !(id.size == 4 && !memcmp(id.data, "null", 4))) {
        fast->id = id;
        fast->custom_id = llmq_value_json_string(id);
        size_t size = fast->custom_id ? strlen(fast->custom_id) : 0;
        if (size == 0 || size > LLMQ_JSONL_MAX_ID)
            return false;
    } else
        fast->custom_id = zsys_sprintf("line-%zu", line_no);
    if (model.data && !(model.size == 4 && !memcmp(model.data, "null", 4))) {
        fast->model_json = model;
        fast->model = llmq_value_json_string(model);
        if (!fast->model || !*fast->model)
            return false;
    }
    return fast->custom_id != NULL;
}

/*  The op of a url value (a JSON string the members scan found valid):
    one without escapes is read in place, not copied to the heap. */
static int s_fast_op(llmq_value_span_t url)
{
    char path[128];
    size_t size = url.size - 2;
    if (url.size >= 2 && size < sizeof path &&
        !memchr(url.data + 1, '\\', size)) {
        memcpy(path, url.data + 1, size);
        path[size] = 0;
        return llmq_jsonl_op_from_url(path);
    }
    char *text = llmq_value_json_string(url);
    int op = llmq_jsonl_op_from_url(text);
    free(text);
    return op;
}

/*  Whether a JSON string's text may hold a NUL (a \u0000 escape): the
    tree's C string would end there, so such a line takes the slow path. */
static bool s_maybe_nul(llmq_value_span_t span)
{
    const char *p = span.data, *end = span.data + span.size;
    //  Every backslash starts an escape of two bytes or more: skip it.
    while (p < end && (p = (const char *)memchr(p, '\\', (size_t)(end - p)))) {
        if (end - p >= 6 && !memcmp(p, "\\u0000", 6))
            return true;
        p += 2;
    }
    return false;
}

/*  s_fast for a line of the prompt form ({"prompt": ..., "system"?,
    "model"?, sampling fields..., "custom_id"?}: no url, no body), text
    valid JSON (len bytes, no newline). */
static bool s_fast_prompt(const char *text, size_t len, size_t line_no,
                          s_fast_t *fast)
{
    static const char *const keys[] = {
        "custom_id",   "prompt", "system", "model", "max_tokens",
        "temperature", "top_p",  "seed",   "stop",  NULL};
    llmq_value_span_t span[9];
    if (llmq_value_json_members(text, len, keys, span) != 0 ||
        span[1].data[0] != '"' || s_maybe_nul(span[1]))
        return false;
    fast->op = LLMQ_OP_CHAT;
    fast->prompt = span[1];
    if (span[2].data && span[2].data[0] == '"') {
        if (s_maybe_nul(span[2]))
            return false;
        fast->system = span[2];
    }
    for (int i = 0; i < S_EXTRAS; i++)
        fast->extras[i] = span[4 + i];
    if (!s_fast_strings(fast, span[0], span[3], line_no)) {
        s_fast_clear(fast);
        return false;
    }
    return true;
}

/*  True when the line (len bytes as read) is an OpenAI Batch line that
    llmq_jsonl_parse_line would accept (a JSON object from its first byte,
    a body object, method POST, a url llmq serves), or a prompt line it
    would accept (s_fast_prompt): fast is filled. Else
    false (fast empty): llmq_jsonl_parse_line decides, and says what is
    wrong. */
static bool s_fast(const char *text, size_t len, size_t line_no, s_fast_t *fast)
{
    memset(fast, 0, sizeof *fast);
    while (len > 0 && (text[len - 1] == '\n' || text[len - 1] == '\r'))
        len--;
    static const char *const keys[] = {"custom_id", "url",    "body",
                                       "method",    "prompt", NULL};
    static const char *const body_keys[] = {"model", NULL};
    llmq_value_span_t span[5], model;
    //  The body's model is found in the same pass (key 2: body).
    if (len == 0 || len > LLMQ_JSONL_MAX_LINE || text[0] != '{' ||
        llmq_value_json_members_nested(text, len, keys, span, 2, body_keys,
                                       &model) != 0)
        return false;
    if (!span[1].data && !span[2].data && span[4].data)
        return s_fast_prompt(text, len, line_no, fast);
    if (!span[2].data || span[2].data[0] != '{' ||
        (span[3].data &&
         !(span[3].size == 6 && !memcmp(span[3].data, "\"POST\"", 6))))
        return false;
    fast->op = span[1].data ? s_fast_op(span[1]) : LLMQ_OP_CHAT;
    fast->body = span[2];
    if (fast->op < 0 || !s_fast_strings(fast, span[0], model, line_no)) {
        s_fast_clear(fast);
        return false;
    }
    return true;
}

/*  The offset and size of span in text (0, 0 for none). */
static void s_span_at(const char *text, llmq_value_span_t span, uint32_t *at,
                      uint32_t *size)
{
    *at = span.data ? (uint32_t)(span.data - text) : 0;
    *size = span.data ? (uint32_t)span.size : 0;
}

/*  Whether span names text[at, at + size) of a line of len bytes, a
    value that starts with first; fills span. */
static bool s_span_in(const char *text, size_t len, uint32_t at, uint32_t size,
                      char first, llmq_value_span_t *span)
{
    if (size == 0 || (size_t)at + size > len || text[at] != first)
        return false;
    *span = (llmq_value_span_t){text + at, size};
    return true;
}

/*  s_fast at send time, from what the load found (the record's spans):
    the line is not parsed a second time; its body is when it is packed
    (llmq_value_from_json_object), and its custom_id must still have the
    record's fingerprint. model: body.model is wanted. False (fast
    empty) if the line is not what the load found: s_fast decides. */
static bool s_fast_again(const s_line_t *line, bool model, s_fast_t *fast)
{
    const s_rec_t *rec = &line->rec;
    memset(fast, 0, sizeof *fast);
    fast->op = rec->op;
    if (rec->usable != S_FAST || !s_span_in(line->text, line->len, rec->body_at,
                                            rec->body_size, '{', &fast->body))
        return false;
    bool ok = true;
    if (rec->id_size) {
        ok = s_span_in(line->text, line->len, rec->id_at, rec->id_size, '"',
                       &fast->id) &&
             (fast->custom_id = llmq_value_json_string(fast->id));
        size_t size = ok ? strlen(fast->custom_id) : 0;
        ok = size > 0 && size <= LLMQ_JSONL_MAX_ID;
    } else
        ok = (fast->custom_id = zsys_sprintf("line-%zu", (size_t)rec->line_no));
    ok = ok &&
         llmq_jsonl_fnv1a(fast->custom_id, strlen(fast->custom_id)) == rec->fp;
    if (ok && model && rec->model_size)
        ok = s_span_in(line->text, line->len, rec->model_at, rec->model_size,
                       '"', &fast->model_json) &&
             (fast->model = llmq_value_json_string(fast->model_json)) &&
             *fast->model;
    if (!ok)
        s_fast_clear(fast);
    return ok;
}

static bool s_blank(const char *text, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (!isspace((unsigned char)text[i]))
            return false;
    return true;
}

//  --------------------------------------------------------------------------
//  Loading: IN's records, OUT's index, what is left to do

/*  The load's scratch: the fingerprint of every line (duplicates), the
    models named so far. */
typedef struct {
    FILE *fps;       /* pairs fingerprint, line_no (spill file) */
    zhashx_t *named; /* models in self->models */
} s_scan_t;

static int s_push_fp(s_scan_t *scan, uint64_t fp, uint64_t line_no)
{
    s_pair_t pair = {fp, line_no};
    return fwrite(&pair, sizeof pair, 1, scan->fps) == 1 ? 0 : -1;
}

/*  A model a line left to run names: one more the cluster serves. */
static void s_note_model(llmq_runner_t *self, s_scan_t *scan, const char *model)
{
    if (self->model || !model || !scan->named ||
        zlistx_size(self->models) >= S_MODELS ||
        zhashx_lookup(scan->named, model))
        return;
    char *copy = strdup(model);
    if (copy && zlistx_add_end(self->models, copy))
        zhashx_insert(scan->named, copy, copy);
    else
        free(copy);
}

/*  One input line at load: its record to ids, its fingerprint to scan,
    counted as answered by OUT or left to run. Returns 0 or -1. */
static int s_load_line(llmq_runner_t *self, s_scan_t *scan, const char *text,
                       size_t len, size_t line_no)
{
    s_fast_t fast;
    llmq_jsonl_item_t *item = NULL;
    if (!s_fast(text, len, line_no, &fast) &&
        !(item = s_item(text, len, line_no)))
        return -1;
    const char *custom_id = item ? item->custom_id : fast.custom_id;
    s_rec_t rec = {.fp = llmq_jsonl_fnv1a(custom_id, strlen(custom_id)),
                   .line_no = line_no,
                   .op = item ? (int32_t)item->op : fast.op,
                   .usable = !item         ? S_FAST
                             : item->error ? S_UNUSABLE
                                           : S_USABLE};
    if (!item) {
        s_span_at(text, fast.id, &rec.id_at, &rec.id_size);
        s_span_at(text, fast.model_json, &rec.model_at, &rec.model_size);
        s_span_at(text, fast.body, &rec.body_at, &rec.body_size);
    }
    llmq_runner_stats_t *stats = &self->stats;
    bool failed = false;
    stats->total++;
    if (llmq_jsonl_index_has(self->files.index, rec.fp, &failed)) {
        stats->resumed++;
        //  An error line kept by the resume is still a failed line.
        stats->resumed_failed += failed;
    } else {
        stats->todo++;
        s_note_model(self, scan, item ? item->model : fast.model);
    }
    llmq_jsonl_item_destroy(&item);
    s_fast_clear(&fast);
    if (fwrite(&rec, sizeof rec, 1, self->files.ids) != 1)
        return -1;
    return s_push_fp(scan, rec.fp, rec.line_no);
}

/*  Read IN once (stdin: copied to a spill file), recording its lines.
    Leaves files->in open for the run. Returns 0 or -1 with err. */
static int s_load_input(llmq_runner_t *self, s_scan_t *scan, char *err,
                        size_t err_size)
{
    s_files_t *files = &self->files;
    bool is_stdin = streq(files->input, "-");
    char *buffer = NULL;
    FILE *file =
        is_stdin ? stdin : s_buffered(fopen(files->input, "r"), &buffer);
    if (!file) {
        snprintf(err, err_size, "cannot open %s: %s", files->input,
                 strerror(errno));
        return -1;
    }
    if (is_stdin)
        files->in = s_spill_new(files->output);
    int rc = is_stdin && !files->in ? -1 : 0;
    char *text = NULL;
    size_t cap = 0, line_no = 0;
    ssize_t len;
    while (rc == 0 && (len = getline(&text, &cap, file)) >= 0) {
        line_no++;
        if (is_stdin && fwrite(text, 1, (size_t)len, files->in) != (size_t)len)
            rc = -1;
        else if (!s_blank(text, (size_t)len))
            rc = s_load_line(self, scan, text, (size_t)len, line_no);
    }
    int saved = errno;
    if (ferror(file))
        snprintf(err, err_size, "read error on %s", files->input);
    else if (rc != 0) //  a spill file: disk full, or out of memory
        snprintf(err, err_size, "cannot write a spill file next to %s: %s",
                 files->output, strerror(saved));
    rc = ferror(file) ? -1 : rc;
    free(text);
    if (!is_stdin) {
        fclose(file);
        free(buffer);
        files->in =
            rc == 0 ? s_buffered(fopen(files->input, "r"), &files->in_buffer)
                    : NULL;
    }
    if (rc == 0 && (!files->in || fflush(files->in) || fflush(files->ids)))
        return snprintf(err, err_size, "cannot read %s again", files->input),
               -1;
    return rc;
}

static int s_fp_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void s_item_destructor(void **item)
{
    llmq_jsonl_item_destroy((llmq_jsonl_item_t **)item);
}

/*  The input lines whose fingerprint is one of fps (sorted), as items. */
static zlistx_t *s_dup_items(s_files_t *files, uint64_t *fps, size_t count)
{
    zlistx_t *items = zlistx_new();
    if (items)
        zlistx_set_destructor(items, s_item_destructor);
    s_rewind(files);
    s_rec_t rec;
    char *text;
    size_t len;
    while (items && s_next_rec(files, &rec, &text, &len))
        if (bsearch(&rec.fp, fps, count, sizeof *fps, s_fp_cmp)) {
            llmq_jsonl_item_t *item = s_item(text, len, rec.line_no);
            if (item)
                zlistx_add_end(items, item);
        }
    return items;
}

/*  The fingerprints that more than one line has (sorted, each once;
    caller frees), from the sorted fps; -1 if they cannot be sorted. */
static long s_dup_fps(s_scan_t *scan, uint64_t **dups_p)
{
    s_merge_t merge;
    if (s_merge_start(&merge, scan->fps) != 0)
        return -1;
    uint64_t *dups = NULL;
    size_t count = 0, cap = 0;
    s_pair_t pair, prev = {0, 0};
    bool first = true;
    while (s_merge_next(&merge, &pair)) {
        if (!first && pair.key == prev.key &&
            (count == 0 || dups[count - 1] != pair.key)) {
            if (count == cap) {
                cap = cap ? cap * 2 : 16;
                uint64_t *grown = (uint64_t *)realloc(dups, cap * 8);
                if (!grown)
                    break;
                dups = grown;
            }
            dups[count++] = pair.key;
        }
        prev = pair;
        first = false;
    }
    s_merge_end(&merge);
    *dups_p = dups;
    return (long)count;
}

/*  Refuse duplicate custom_ids: the fingerprints seen twice are looked at
    again (their lines read once more) and llmq_runner_check_ids says
    which lines. Returns 0 or -1 with err. */
static int s_check_dups(llmq_runner_t *self, s_scan_t *scan, char *err,
                        size_t err_size)
{
    uint64_t *dups = NULL;
    long count = s_dup_fps(scan, &dups);
    if (count <= 0) {
        if (count < 0)
            snprintf(err, err_size, "cannot sort the custom_ids of %s",
                     self->files.input);
        return (int)count;
    }
    zlistx_t *items = s_dup_items(&self->files, dups, (size_t)count);
    if (items && llmq_runner_check_ids(items, err, err_size) == 0)
        snprintf(err, err_size,
                 "two different custom_ids share a 64-bit fingerprint "
                 "(FNV-1a): rename one; nothing was sent");
    zlistx_destroy(&items);
    free(dups);
    return -1;
}

/*  Fail a load: the reason in err, errno code. Returns -1. */
static int s_fail(char *err, size_t err_size, int code, const char *what,
                  const char *path)
{
    int saved = errno;
    snprintf(err, err_size, "cannot %s %s: %s", what, path, strerror(saved));
    errno = code ? code : saved == EINVAL ? EIO : saved;
    return -1;
}

/*  Index OUT, read IN (records to ids), refuse duplicates. Returns 0 or
    -1 with err. */
static int s_load_files(llmq_runner_t *self, char *err, size_t err_size,
                        size_t *dropped_p)
{
    s_files_t *files = &self->files;
    errno = EINVAL;
    files->index = llmq_jsonl_index_scan(files->output, self->retry_failed,
                                         dropped_p, err, err_size);
    if (!files->index)
        return (errno = EINVAL), -1;
    files->ids = s_spill_new(files->output);
    if (!files->ids)
        return s_fail(err, err_size, 0, "create a spill file next to",
                      files->output);
    if (!files->piped && !(files->done = s_spill_new(files->output)))
        return s_fail(err, err_size, 0, "create a spill file next to",
                      files->output);
    s_scan_t scan = {s_spill_new(files->output), NULL};
    if (!scan.fps)
        return s_fail(err, err_size, 0, "create a spill file next to",
                      files->output);
    scan.named = zhashx_new();
    int rc = s_load_input(self, &scan, err, err_size);
    if (rc == 0)
        rc = s_check_dups(self, &scan, err, err_size);
    fclose(scan.fps);
    zhashx_destroy(&scan.named);
    if (rc != 0)
        errno = EINVAL;
    return rc;
}

/*  Read IN, refuse duplicates, index OUT's whole lines and count what is
    left; open OUT for appending if anything is. Returns 0 or -1. */
static int s_load(llmq_runner_t *self, char *err, size_t err_size)
{
    s_files_t *files = &self->files;
    size_t dropped = 0;
    if (s_load_files(self, err, err_size, &dropped) != 0)
        return -1;
    llmq_runner_stats_t *stats = &self->stats;
    //  OUT already answers every line: a rerun of a finished run.
    stats->complete = stats->total > 0 && stats->todo == 0 && !files->piped;
    s_rewind(files);
    if (stats->complete)
        return 0;
    //  A kill leaves a partial last line: rewrite OUT with the whole lines
    //  before appending to it, and index the rewritten file.
    if (dropped > 0 && !files->piped) {
        if (s_rewrite(files) != 0)
            return s_fail(err, err_size, 0, "rewrite", files->output);
        llmq_jsonl_index_destroy(&files->index);
        files->index = llmq_jsonl_index_scan(files->output, self->retry_failed,
                                             NULL, err, err_size);
        if (!files->index)
            return (errno = EIO), -1;
    }
    if (stats->todo > 0 &&
        !(files->writer = llmq_jsonl_writer_new(files->output)))
        return s_fail(err, err_size, EINVAL, "write", files->output);
    return 0;
}

int llmq_runner_check_ids(zlistx_t *items, char *err, size_t err_size)
{
    zhashx_t *seen = zhashx_new();
    size_t duplicates = 0, used = 0;
    for (llmq_jsonl_item_t *item = (llmq_jsonl_item_t *)zlistx_first(items);
         item && seen; item = (llmq_jsonl_item_t *)zlistx_next(items)) {
        llmq_jsonl_item_t *first =
            (llmq_jsonl_item_t *)zhashx_lookup(seen, item->custom_id);
        if (!first) {
            zhashx_insert(seen, item->custom_id, item);
            continue;
        }
        if (++duplicates <= 5 && used < err_size)
            used += (size_t)snprintf(
                err + used, err_size - used,
                "line %zu: duplicate custom_id '%s' (first on line %zu)\n",
                item->line_no, item->custom_id, first->line_no);
    }
    zhashx_destroy(&seen);
    if (!duplicates)
        return 0;
    if (used < err_size)
        snprintf(err + used, err_size - used,
                 "%zu duplicate custom_id%s: every line needs its own "
                 "custom_id (results are matched by it); nothing was sent",
                 duplicates, duplicates == 1 ? "" : "s");
    return -1;
}

bool llmq_runner_complete(zlistx_t *items, const char *output,
                          bool retry_failed, size_t *failed_p)
{
    *failed_p = 0;
    if (streq(output, "-") || zlistx_size(items) == 0)
        return false;
    char err[512] = "";
    llmq_jsonl_index_t *index =
        llmq_jsonl_index_scan(output, retry_failed, NULL, err, sizeof err);
    size_t answered = 0;
    for (llmq_jsonl_item_t *item = (llmq_jsonl_item_t *)zlistx_first(items);
         item && index; item = (llmq_jsonl_item_t *)zlistx_next(items)) {
        bool failed = false;
        if (llmq_jsonl_index_has(
                index,
                llmq_jsonl_fnv1a(item->custom_id, strlen(item->custom_id)),
                &failed)) {
            answered++;
            *failed_p += failed;
        }
    }
    llmq_jsonl_index_destroy(&index);
    return answered == zlistx_size(items);
}

size_t llmq_runner_models(llmq_runner_t *self, const char **names, size_t max)
{
    size_t count = 0;
    for (const char *model = (const char *)zlistx_first(self->models);
         model && count < max && !self->model;
         model = (const char *)zlistx_next(self->models))
        names[count++] = model;
    return count;
}

//  --------------------------------------------------------------------------
//  Running: take lines, send, back off, collect, wait

int llmq_runner_start(llmq_runner_t *self, llmq_client_t *client,
                      const char *default_model)
{
    if (!self || !client)
        return -1;
    self->client = client;
    free(self->default_model);
    self->default_model = default_model ? strdup(default_model) : NULL;
    llmq_client_set_window(client, (size_t)self->window);
    //  Bodies go to OUT as they came: no tree per result.
    llmq_client_set_raw_bodies(client, true);
    return 0;
}

/*  The next line left to run, in input order; NULL at the end (or out of
    memory: the line is left for a rerun). */
static s_line_t *s_take(llmq_runner_t *self)
{
    s_files_t *files = &self->files;
    s_rec_t rec;
    char *text;
    size_t len;
    while (self->taken < self->stats.todo &&
           s_next_rec(files, &rec, &text, &len)) {
        if (llmq_jsonl_index_has(files->index, rec.fp, NULL))
            continue; //  OUT answers it
        //  One allocation: the line and its text.
        s_line_t *line = (s_line_t *)malloc(sizeof(*line) + len + 1);
        if (!line)
            return NULL;
        memset(line, 0, sizeof(*line));
        line->next = self->lines;
        if (self->lines)
            self->lines->prev = line;
        self->lines = line;
        char *copy = (char *)(line + 1);
        memcpy(copy, text, len);
        copy[len] = 0;
        line->rec = rec;
        line->text = copy;
        line->len = len;
        self->taken++;
        return line;
    }
    //  IN lost lines since the load: the run ends with those it has.
    self->stats.todo = self->taken;
    return NULL;
}

/*  Write the lines the writer holds, then their done pairs (a line that
    did not reach OUT has none: the rewrite leaves it out, a rerun runs
    it). */
static bool s_flush(s_files_t *files)
{
    bool ok = llmq_jsonl_writer_flush(files->writer) == 0;
    if (ok && files->done && files->nheld)
        fwrite(files->held, sizeof(s_pair_t), files->nheld, files->done);
    files->nheld = 0;
    return ok;
}

/*  The line of line_no is held by the writer at offset: its done pair
    waits with it. False if out of memory. */
static bool s_hold(s_files_t *files, uint64_t line_no, uint64_t offset)
{
    if (files->nheld == files->held_cap) {
        size_t cap = files->held_cap ? files->held_cap * 2 : 64;
        s_pair_t *held = (s_pair_t *)realloc(files->held, cap * sizeof *held);
        if (!held)
            return false;
        files->held = held;
        files->held_cap = cap;
    }
    files->held[files->nheld++] = (s_pair_t){line_no, offset};
    return true;
}

/*  A finished line: to OUT (its text, or with no text the line of its
    result; held until s_flush) and its index, to the caller. Takes text;
    the line is gone after. */
static void s_answered(llmq_runner_t *self, s_line_t *line, char *text,
                       const llmq_result_t *result)
{
    s_files_t *files = &self->files;
    uint64_t offset = llmq_jsonl_writer_offset(files->writer);
    int rc = text     ? llmq_jsonl_writer_write(files->writer, text)
             : result ? llmq_jsonl_writer_result(files->writer, line->custom_id,
                                                 result)
                      : -1;
    free(text);
    //  No memory to hold the pair: the lines held go now, this one's
    //  pair with theirs.
    if (rc == 0 && !s_hold(files, line->rec.line_no, offset)) {
        s_pair_t done = {line->rec.line_no, offset};
        if (s_flush(files) && files->done)
            fwrite(&done, sizeof done, 1, files->done);
    }
    if (llmq_jsonl_writer_pending(files->writer) >= S_FLUSH_SIZE)
        s_flush(files);
    self->stats.finished++;
    if (!result || !result->ok)
        self->stats.failed++;
    if (self->on_line)
        self->on_line(line->custom_id ? line->custom_id : "", result,
                      self->on_line_arg);
    s_line_drop(self, line);
}

/*  The request options of line: one traceparent per line, the line's own
    (a "traceparent" key in it) else a fresh one, kept in trace. */
static llmq_opts_t s_line_opts(llmq_runner_t *self, const s_line_t *line,
                               char *trace)
{
    llmq_opts_t opts = self->request;
    opts.trace =
        llmq_jsonl_traceparent(line->text, line->len, line->rec.line_no, trace);
    return opts;
}

/*  Submit item, the parsed form of line. Returns 0, or -1 with errno. */
static int s_submit(llmq_runner_t *self, s_line_t *line,
                    llmq_jsonl_item_t *item)
{
    cJSON *body = item->body;
    const char *model = self->model   ? self->model
                        : item->model ? item->model
                                      : self->default_model;
    //  The body names the model the broker routes on.
    cJSON_DeleteItemFromObject(body, "model");
    cJSON_AddStringToObject(body, "model", model);
    char trace[LLMQ_JSONL_TRACEPARENT_SIZE];
    llmq_opts_t opts = s_line_opts(self, line, trace);
    return llmq_client_submit(self->client, (llmq_op_t)line->rec.op, model,
                              body, &opts, line);
}

/*  Append a string literal. */
#define S_ADD(buf, literal)                                                    \
    llmq_value_buf_add(buf, literal, sizeof(literal) - 1)

/*  A prompt line's body into the runner's packer: the chat body
    llmq_jsonl_parse_line builds ({"messages": [system?, user], its
    sampling fields}) with model set last, as JSON text from the line's
    own values, then packed. Returns 0 or -1. */
static int s_pack_prompt(llmq_runner_t *self, const s_fast_t *fast,
                         const char *model)
{
    llmq_value_buf_t *text = &self->text;
    text->size = 0;
    S_ADD(text, "{\"messages\":[");
    if (fast->system.data) {
        S_ADD(text, "{\"role\":\"system\",\"content\":");
        llmq_value_buf_add(text, fast->system.data, fast->system.size);
        S_ADD(text, "},");
    }
    S_ADD(text, "{\"role\":\"user\",\"content\":");
    llmq_value_buf_add(text, fast->prompt.data, fast->prompt.size);
    S_ADD(text, "}]");
    for (int i = 0; i < S_EXTRAS; i++)
        if (fast->extras[i].data) {
            S_ADD(text, ",");
            llmq_value_buf_str(text, s_extras[i], strlen(s_extras[i]));
            S_ADD(text, ":");
            llmq_value_buf_add(text, fast->extras[i].data,
                               fast->extras[i].size);
        }
    S_ADD(text, ",\"model\":");
    llmq_value_buf_str(text, model, strlen(model));
    S_ADD(text, "}");
    if (text->oom) {
        free(text->data);
        memset(text, 0, sizeof *text);
        return -1;
    }
    return llmq_packer_json_text(self->packer, text->data, text->size, NULL, 0);
}

/*  Submit a fast line: its body from its text to msgpack, the model the
    broker routes on set in it. Returns 0, or -1 with errno (EINVAL: the
    line is not what the load found: IN changed). */
static int s_submit_fast(llmq_runner_t *self, s_line_t *line)
{
    s_fast_t fast;
    if (!s_fast_again(line, !self->model, &fast) &&
        !s_fast(line->text, line->len, line->rec.line_no, &fast))
        return (errno = EINVAL), -1;
    if (!line->custom_id) {
        line->custom_id = fast.custom_id; //  the line takes it
        fast.custom_id = NULL;
    }
    const char *model = self->model  ? self->model
                        : fast.model ? fast.model
                                     : self->default_model;
    static const char *const drop[] = {"model", NULL};
    char trace[LLMQ_JSONL_TRACEPARENT_SIZE];
    llmq_opts_t opts = s_line_opts(self, line, trace);
    //  The runner's packer keeps its buffer from line to line.
    llmq_packer_reset(self->packer);
    size_t size = 0;
    int packed = fast.body.data
                     ? llmq_packer_json_object_set(self->packer, fast.body.data,
                                                   fast.body.size, drop,
                                                   "model", model, NULL, 0)
                     : s_pack_prompt(self, &fast, model);
    const uint8_t *payload =
        packed == 0 ? llmq_packer_data(self->packer, &size) : NULL;
    int rc =
        payload && line->custom_id
            ? llmq_client_submit_msgpack(self->client, (llmq_op_t)line->rec.op,
                                         model, payload, size, &opts, line)
            : (errno = EINVAL, -1);
    int saved = errno;
    s_fast_clear(&fast);
    errno = saved;
    return rc;
}

/*  Submit a line; a line that cannot be sent is answered at once by an
    error line. Returns -1 if a signal cut the submit short (the line is
    not sent). */
static int s_send(llmq_runner_t *self, s_line_t *line)
{
    if (line->rec.usable == S_FAST) {
        errno = 0;
        if (s_submit_fast(self, line) == 0) {
            self->in_flight++;
            return 0;
        }
        if (errno == EINTR)
            return -1;
        if (errno == EMSGSIZE && line->custom_id) {
            s_answered(self, line,
                       llmq_jsonl_error_line(
                           line->custom_id, NULL, "invalid_request",
                           "request too large for the protocol's 64 MiB "
                           "frame limit",
                           0),
                       NULL);
            return 0;
        }
        //  Otherwise: the slow path says what is wrong.
    }
    llmq_jsonl_item_t *item = s_item(line->text, line->len, line->rec.line_no);
    if (item && !line->custom_id)
        line->custom_id = strdup(item->custom_id);
    const char *reason = item && item->error ? item->error : "out of memory";
    if (item && item->body && line->custom_id) {
        int rc = s_submit(self, line, item);
        int saved = errno;
        if (rc == 0) {
            self->in_flight++;
            llmq_jsonl_item_destroy(&item);
            return 0;
        }
        if (saved == EINTR) {
            llmq_jsonl_item_destroy(&item);
            return -1;
        }
        reason = saved == EMSGSIZE ? "request too large for the protocol's "
                                     "64 MiB frame limit"
                                   : "request body could not be encoded";
    }
    s_answered(self, line,
               llmq_jsonl_error_line(line->custom_id ? line->custom_id : "",
                                     NULL, "invalid_request", reason, 0),
               NULL);
    llmq_jsonl_item_destroy(&item);
    return 0;
}

/*  Queue line to be sent again at due. */
static void s_retry_at(llmq_runner_t *self, s_line_t *line, int64_t due)
{
    s_retry_t *again = (s_retry_t *)calloc(1, sizeof(*again));
    if (!again)
        return;
    again->line = line;
    again->due = due;
    zlistx_add_end(self->backoff, again);
}

/*  Take the first backed-off line that is due; NULL if none is. */
static s_line_t *s_take_due(llmq_runner_t *self)
{
    int64_t now = zclock_mono();
    for (s_retry_t *retry = (s_retry_t *)zlistx_first(self->backoff); retry;
         retry = (s_retry_t *)zlistx_next(self->backoff))
        if (retry->due <= now) {
            s_line_t *line = retry->line;
            zlistx_delete(self->backoff, zlistx_cursor(self->backoff));
            return line;
        }
    return NULL;
}

/*  Fill the window: lines due for a retry first, then new ones; nothing
    once the cost cap is reached. */
static void s_fill(llmq_runner_t *self)
{
    while (!self->stats.capped && self->in_flight < (size_t)self->cwnd) {
        s_line_t *line = s_take_due(self);
        if (!line && !(line = s_take(self)))
            break;
        if (s_send(self, line) != 0) {
            s_retry_at(self, line, 0);
            break;
        }
    }
}

/*  A line answered `overloaded` (a full queue: a capacity problem, not the
    line's): fewer in flight, and send it again after a jittered doubling
    backoff, so retries do not come back as one herd. */
static void s_back_off(llmq_runner_t *self, s_line_t *line)
{
    int64_t now = zclock_mono();
    if (now - self->last_cut >= S_CUT_MS) {
        self->cwnd = self->cwnd / 2 < 1 ? 1 : self->cwnd / 2;
        self->last_cut = now;
    }
    int64_t delay = (int64_t)self->backoff_ms << line->tries;
    s_retry_at(self, line, now + delay / 2 + randof((int)(delay / 2) + 1));
    line->tries++;
    self->stats.retried++;
}

/*  Count what a result cost (a value that is not finite or is negative
    counts as 0: a rogue worker must not lift the cap); at the cap, stop
    sending. */
static void s_spend(llmq_runner_t *self, const llmq_result_t *result)
{
    double cost = result->cost_usd;
    if (isfinite(cost) && cost > 0)
        self->stats.spent_usd += cost;
    if (self->max_cost_usd > 0 && self->stats.spent_usd >= self->max_cost_usd)
        self->stats.capped = true;
}

/*  One result of ours: written, backed off, or (broker unreachable) left
    out of OUT so that a rerun runs the line. */
static void s_on_result(llmq_runner_t *self, llmq_result_t *result)
{
    s_line_t *line = (s_line_t *)result->arg;
    if (!line)
        return; //  not one of ours
    self->in_flight--;
    s_spend(self, result);
    if (!result->ok && streq(result->error_code, "timeout") &&
        result->error_message &&
        streq(result->error_message, "broker unreachable"))
        self->stats.unreachable = true;
    else if (!result->ok && streq(result->error_code, "overloaded") &&
             line->tries < self->retries)
        s_back_off(self, line);
    else {
        s_answered(self, line, NULL, result);
        //  Window back up by one per window of answers.
        if (self->cwnd < self->window)
            self->cwnd += 1.0 / self->cwnd;
    }
}
/*  Let the client handle what its socket holds and run its timers. */
static void s_process(llmq_runner_t *self)
{
    for (int rounds = 0; rounds < 100; rounds++)
        if (llmq_client_process(self->client) != 1)
            break;
}

/*  How long a step may wait: timeout_ms, cut to S_TIMERS_MS while
    requests are in flight and to the next retry's due time. */
static int s_wait_ms(llmq_runner_t *self, int timeout_ms)
{
    int64_t wait = timeout_ms > 0 ? timeout_ms : 0;
    if (self->in_flight > 0 && wait > S_TIMERS_MS)
        wait = S_TIMERS_MS;
    int64_t now = zclock_mono();
    for (s_retry_t *retry = (s_retry_t *)zlistx_first(self->backoff); retry;
         retry = (s_retry_t *)zlistx_next(self->backoff))
        if (retry->due - now < wait)
            wait = retry->due > now ? retry->due - now : 0;
    return (int)wait;
}

/*  Wait for the client's socket (its fd is edge-triggered: handle what is
    queued first), then let the client read it. */
static void s_wait(llmq_runner_t *self, int timeout_ms)
{
    s_process(self);
    if (llmq_client_ready(self->client) > 0)
        return;
    struct pollfd item = {llmq_client_fd(self->client), POLLIN, 0};
    if (poll(&item, 1, s_wait_ms(self, timeout_ms)) < 0 && errno == EINTR)
        return; //  a signal: the caller looks at its flags
    s_process(self);
}

/*  Whether the run is over: every line finished, or the cost cap reached
    and nothing left in flight. */
static bool s_done(llmq_runner_t *self)
{
    return self->stats.finished >= self->stats.todo ||
           (self->stats.capped && self->in_flight == 0);
}

int llmq_runner_step(llmq_runner_t *self, int timeout_ms)
{
    if (!self || !self->client || self->stats.unreachable)
        return -1;
    if (s_done(self))
        return 0;
    s_fill(self);
    s_wait(self, timeout_ms);
    llmq_result_t *result;
    while (llmq_client_ready(self->client) > 0 &&
           (result = llmq_client_poll(self->client, 0))) {
        s_on_result(self, result);
        llmq_result_destroy(&result);
    }
    //  This step's lines in one write, before the next wait.
    s_flush(&self->files);
    llmq_jsonl_writer_sync(self->files.writer, 1000);
    if (self->stats.unreachable)
        return -1;
    return s_done(self) ? 0 : 1;
}

int llmq_runner_finish(llmq_runner_t *self)
{
    s_files_t *files = &self->files;
    if (files->writer)
        s_flush(files);
    llmq_jsonl_writer_destroy(&files->writer);
    if (self->stats.complete)
        return 0;
    return s_rewrite(files);
}

void llmq_runner_stats(llmq_runner_t *self, llmq_runner_stats_t *stats)
{
    *stats = self->stats;
    stats->in_flight = self->in_flight;
    stats->backed_off = zlistx_size(self->backoff);
    stats->window = (int)self->cwnd;
}

//  --------------------------------------------------------------------------
//  Selftest: runs files through the client's fake broker (llmq_client.c),
//  which echoes a body's "echo" and fails a body with "fail" with that
//  error code.

#include "llmq_check.h"
#define CHECK(cond) LLMQ_CHECK_COUNT(cond, failures)

#define S_TEST_LINES 300

/*  What the line callback saw. */
typedef struct {
    llmq_runner_t *runner; /* the runner of the run */
    int window;            /* its configured window */
    int min_window;        /* smallest window seen */
    bool regrown;          /* the full window again after a cut */
    int64_t start;         /* zclock_mono() at the start */
    int64_t l2_ms;         /* when line l2 (always overloaded) was done */
    const char *out;       /* OUT to check at the first line, or NULL */
    int bad_lines;         /* lines of OUT then that are not JSON */
} s_test_seen_t;

/*  Lines of path that are not whole JSON objects. */
static int s_test_bad_lines(const char *path)
{
    int bad = 0;
    FILE *file = fopen(path, "r");
    char line[4096];
    while (file && fgets(line, sizeof line, file)) {
        cJSON *json = cJSON_Parse(line);
        bad += !cJSON_IsObject(json) || !strchr(line, '\n');
        cJSON_Delete(json);
    }
    if (file)
        fclose(file);
    return file ? bad : 1;
}

static void s_test_on_line(const char *custom_id, const llmq_result_t *result,
                           void *arg)
{
    (void)result;
    s_test_seen_t *seen = (s_test_seen_t *)arg;
    llmq_runner_stats_t stats;
    llmq_runner_stats(seen->runner, &stats);
    if (stats.window < seen->min_window)
        seen->min_window = stats.window;
    if (seen->min_window < seen->window && stats.window == seen->window)
        seen->regrown = true;
    if (streq(custom_id, "l2"))
        seen->l2_ms = zclock_mono() - seen->start;
    //  The first line appended after a resume: OUT is whole lines.
    if (seen->out && stats.finished == 1)
        seen->bad_lines = s_test_bad_lines(seen->out);
}

/*  IN: l2 and l7 always overloaded, l5 unusable, the others echoed. */
static void s_test_input(const char *path, int count)
{
    FILE *file = fopen(path, "w");
    for (int i = 1; file && i <= count; i++)
        if (i == 2 || i == 7)
            fprintf(file,
                    "{\"custom_id\":\"l%d\",\"body\":{\"fail\":"
                    "\"overloaded\"}}\n",
                    i);
        else if (i == 5)
            fprintf(file, "{\"custom_id\":\"l5\",\"body\":5}\n");
        else
            fprintf(file,
                    "{\"custom_id\":\"l%d\",\"body\":{\"echo\":\"n%d\"}}\n", i,
                    i);
    if (file)
        fclose(file);
}

/*  Run config through client to its end. Returns the last step's code;
    stats_p gets the runner's stats, sent_p the requests the client sent. */
static int s_test_run(llmq_runner_config_t *config, llmq_client_t *client,
                      llmq_runner_stats_t *stats_p, uint64_t *sent_p)
{
    s_test_seen_t *seen = (s_test_seen_t *)config->on_line_arg;
    llmq_client_stats_t before, after;
    llmq_client_stats(client, &before);
    llmq_runner_t *runner = llmq_runner_new(config, NULL, 0);
    if (!runner)
        return -2;
    seen->runner = runner;
    seen->window = seen->min_window = config->window;
    seen->start = zclock_mono();
    int rc = llmq_runner_start(runner, client, "m");
    int64_t deadline = zclock_mono() + 20000;
    while (rc == 0 && zclock_mono() < deadline &&
           (rc = llmq_runner_step(runner, 100)) == 1)
        rc = 0;
    if (llmq_runner_finish(runner) != 0)
        rc = -3;
    llmq_runner_stats(runner, stats_p);
    llmq_runner_destroy(&runner);
    llmq_client_stats(client, &after);
    *sent_p = after.sent - before.sent;
    return rc;
}

/*  OUT holds count lines, l1..l<count> in order; marker, if not NULL, is
    in the first line. Returns the number of problems. */
static int s_test_ordered(const char *path, int count, const char *marker)
{
    int failures = 0, n = 0;
    FILE *file = fopen(path, "r");
    char line[4096];
    while (file && fgets(line, sizeof line, file)) {
        char id[32];
        snprintf(id, sizeof id, "\"custom_id\":\"l%d\"", ++n);
        CHECK(strstr(line, id));
        if (n == 1 && marker)
            CHECK(strstr(line, marker));
        if (n == 2)
            CHECK(strstr(line, "overloaded"));
        if (n == 3)
            CHECK(strstr(line, "\"content\":\"n3\""));
    }
    if (file)
        fclose(file);
    CHECK(n == count);
    return failures;
}

/*  OUT cut down as a kill leaves it: l1 (a line of an earlier run, with
    a marker), l2..l10 as they are, and a partial line. */
static void s_test_cut(const char *path)
{
    char text[16][4096];
    int n = 0;
    FILE *file = fopen(path, "r");
    while (file && n < 10 && fgets(text[n], sizeof text[n], file))
        n++;
    if (file)
        fclose(file);
    file = fopen(path, "w");
    if (!file)
        return;
    fprintf(file,
            "{\"id\":\"x\",\"custom_id\":\"l1\",\"response\":{"
            "\"status_code\":200,\"body\":{\"kept\":1}},\"error\":null}\n");
    for (int i = 1; i < n; i++)
        fputs(text[i], file);
    fputs("{\"custom_id\":\"l11\",\"resp", file);
    fclose(file);
}

/*  Reruns of a finished OUT: complete as it is; with retry_failed, only
    the error lines are sent again (l5 is unusable: never sent). */
static int s_test_rerun(llmq_runner_config_t *config, llmq_client_t *client)
{
    int failures = 0;
    llmq_runner_t *runner = llmq_runner_new(config, NULL, 0);
    llmq_runner_stats_t stats = {0};
    if (runner)
        llmq_runner_stats(runner, &stats);
    CHECK(stats.complete && stats.todo == 0 && stats.resumed_failed == 3);
    llmq_runner_destroy(&runner);
    zlistx_t *items = llmq_jsonl_read_input(config->input, false, NULL, 0);
    size_t failed = 0;
    CHECK(items && llmq_runner_complete(items, config->output, false, &failed));
    CHECK(failed == 3);
    zlistx_destroy(&items);

    config->retry_failed = true;
    uint64_t sent = 0;
    CHECK(s_test_run(config, client, &stats, &sent) == 0);
    config->retry_failed = false;
    CHECK(stats.resumed == S_TEST_LINES - 3 && stats.todo == 3);
    CHECK(sent == 2 * 4);
    failures += s_test_ordered(config->output, S_TEST_LINES, NULL);
    return failures;
}

/*  Two lines with one custom_id: refused before anything is sent. */
static int s_test_duplicates(const char *path)
{
    int failures = 0;
    FILE *file = fopen(path, "w");
    if (file) {
        fputs("{\"custom_id\":\"d\",\"prompt\":\"a\"}\nb\n"
              "{\"custom_id\":\"d\",\"prompt\":\"c\"}\n",
              file);
        fclose(file);
    }
    llmq_runner_config_t config = {.input = path, .output = "-"};
    char err[1024] = "";
    errno = 0;
    llmq_runner_t *runner = llmq_runner_new(&config, err, sizeof err);
    CHECK(!runner && errno == EINVAL);
    CHECK(strstr(err, "line 3: duplicate custom_id 'd' (first on line 1)"));
    CHECK(strstr(err, "1 duplicate custom_id: "));
    llmq_runner_destroy(&runner);
    return failures;
}

/*  No broker answers: the run stops, the lines in flight stay out of OUT
    (a rerun sends them). */
static int s_test_unreachable(llmq_runner_config_t *config)
{
    int failures = 0;
    zsock_t *mute = zsock_new(ZMQ_ROUTER);
    int port = mute ? zsock_bind(mute, "tcp://127.0.0.1:*") : -1;
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", port);
    llmq_client_t *client = port > 0 ? llmq_client_new(endpoint) : NULL;
    CHECK(client);
    if (client) {
        llmq_client_set_timeout(client, 200);
        llmq_client_set_give_up(client, 400);
        llmq_runner_stats_t stats;
        uint64_t sent = 0;
        CHECK(s_test_run(config, client, &stats, &sent) == -1);
        CHECK(stats.unreachable && stats.finished < stats.todo);
        CHECK(sent == 8 && stats.in_flight == 0);
    }
    llmq_client_destroy(&client);
    zsock_destroy(&mute);
    return failures;
}

/*  OUT holds exactly the lines l1..l<count>, in order, each once and
    answered. Returns the number of problems. */
static int s_test_prefix(const char *path, size_t count)
{
    int failures = 0;
    size_t n = 0;
    FILE *file = fopen(path, "r");
    char line[4096];
    while (file && fgets(line, sizeof line, file)) {
        char id[48];
        snprintf(id, sizeof id, "\"custom_id\":\"l%zu\"", ++n);
        CHECK(strstr(line, id) && strstr(line, "\"error\":null"));
    }
    if (file)
        fclose(file);
    CHECK(file && n == count);
    return failures;
}

/*  Costs that are not finite or are negative count as nothing. */
static int s_test_spend(llmq_runner_config_t *config)
{
    int failures = 0;
    config->max_cost_usd = 1.0;
    llmq_runner_t *runner = llmq_runner_new(config, NULL, 0);
    CHECK(runner);
    if (!runner)
        return failures;
    llmq_result_t result = {0};
    const double rogue[] = {NAN, -INFINITY, -0.75, INFINITY, 0.25};
    for (size_t i = 0; i < sizeof rogue / sizeof rogue[0]; i++) {
        result.cost_usd = rogue[i];
        s_spend(runner, &result);
    }
    llmq_runner_stats_t stats;
    llmq_runner_stats(runner, &stats);
    CHECK(stats.spent_usd == 0.25 && !stats.capped);
    result.cost_usd = 0.75;
    s_spend(runner, &result);
    llmq_runner_stats(runner, &stats);
    CHECK(stats.spent_usd == 1.0 && stats.capped);
    llmq_runner_destroy(&runner);
    config->max_cost_usd = 0;
    return failures;
}

/*  The cost cap: the fake broker prices every answer at $0.50, so a cap
    of $0.50 x S_CAP_LINES is reached after S_CAP_LINES answers; with a
    window of S_CAP_WINDOW at most that many more are in flight then,
    finish and are written. The other lines are left out of OUT, and a
    rerun without the cap sends just those: every line once. */
#define S_CAP_INPUT 200
#define S_CAP_LINES 20
#define S_CAP_WINDOW 8
static int s_test_cap(const char *in, const char *out, llmq_client_t *client)
{
    int failures = 0;
    FILE *file = fopen(in, "w");
    for (int i = 1; file && i <= S_CAP_INPUT; i++)
        fprintf(file, "{\"custom_id\":\"l%d\",\"body\":{\"echo\":\"n%d\"}}\n",
                i, i);
    if (file)
        fclose(file);
    s_test_seen_t seen = {0};
    llmq_runner_config_t config = {.input = in,
                                   .output = out,
                                   .window = S_CAP_WINDOW,
                                   .on_line = s_test_on_line,
                                   .on_line_arg = &seen};
    failures += s_test_spend(&config);

    config.max_cost_usd = 0.5 * S_CAP_LINES;
    llmq_runner_stats_t stats;
    uint64_t sent = 0;
    CHECK(s_test_run(&config, client, &stats, &sent) == 0);
    CHECK(stats.capped && stats.in_flight == 0);
    CHECK(stats.finished >= S_CAP_LINES &&
          stats.finished <= S_CAP_LINES + S_CAP_WINDOW);
    CHECK(sent == stats.finished && stats.failed == 0);
    CHECK(stats.spent_usd == 0.5 * (double)stats.finished);
    failures += s_test_prefix(out, stats.finished);

    //  The rerun without the cap: only the lines left, every line once.
    size_t done = stats.finished;
    config.max_cost_usd = 0;
    CHECK(s_test_run(&config, client, &stats, &sent) == 0);
    CHECK(!stats.capped && stats.resumed == done);
    CHECK(stats.todo == S_CAP_INPUT - done && sent == S_CAP_INPUT - done);
    CHECK(stats.finished == stats.todo);
    failures += s_test_prefix(out, S_CAP_INPUT);
    return failures;
}

/*  The fast path reads a batch line as llmq_jsonl_parse_line does, and
    sends the bytes the cJSON path sends; other lines it leaves to it. */
/*  s_fast_again on text, with the record the load makes from fast (the
    line's s_fast): the same custom_id, model and body; and refused once
    the custom_id changed (a line with another fingerprint). */
static int s_test_again(const char *text, const s_fast_t *fast)
{
    int failures = 0;
    s_line_t line = {.text = (char *)text, .len = strlen(text)};
    line.rec = (s_rec_t){
        .fp = llmq_jsonl_fnv1a(fast->custom_id, strlen(fast->custom_id)),
        .line_no = 9,
        .op = fast->op,
        .usable = S_FAST};
    s_span_at(text, fast->id, &line.rec.id_at, &line.rec.id_size);
    s_span_at(text, fast->model_json, &line.rec.model_at, &line.rec.model_size);
    s_span_at(text, fast->body, &line.rec.body_at, &line.rec.body_size);
    s_fast_t again;
    CHECK(s_fast_again(&line, true, &again));
    CHECK(again.custom_id && streq(again.custom_id, fast->custom_id));
    CHECK(!again.model == !fast->model &&
          (!again.model || streq(again.model, fast->model)));
    CHECK(again.body.data == fast->body.data &&
          again.body.size == fast->body.size && again.op == fast->op);
    s_fast_clear(&again);
    line.rec.fp ^= 1;
    CHECK(!s_fast_again(&line, true, &again) && !again.custom_id);
    return failures;
}

/*  Lines s_fast leaves to the slow path (NULL-terminated): refused, with
    nothing kept. */
static int s_test_slow(const char *const *slow)
{
    int failures = 0;
    for (int i = 0; slow[i]; i++) {
        s_fast_t fast;
        CHECK(!s_fast(slow[i], strlen(slow[i]), 1, &fast) && !fast.custom_id);
    }
    return failures;
}

static int s_test_fast(void)
{
    int failures = 0;
    const char *lines[] = {
        "{\"custom_id\":\"a\\u00e9\",\"method\":\"POST\",\"url\":\"/v1/"
        "embeddings/\",\"body\":{\"input\":\"x\",\"model\":\"m1\","
        "\"n\":[1,2.5,-3e2,{\"k\":null}]}}\n",
        "{\"body\":{\"messages\":[{\"role\":\"user\",\"content\":\"q\\n\"}]},"
        "\"custom_id\":null}\r\n",
        "{\"CUSTOM_ID\":\"up\",\"Body\":{\"model\":null,\"x\":true}}", NULL};
    const char *slow[] = {"{\"custom_id\":\"\",\"body\":{}}",
                          "{\"body\":{\"model\":7}}",
                          "{\"method\":\"GET\",\"body\":{}}",
                          "{\"url\":\"/v1/images\",\"body\":{}}",
                          " {\"body\":{}}",
                          "{\"body\":{}",
                          "plain text",
                          NULL};
    for (int i = 0; lines[i]; i++) {
        s_fast_t fast;
        llmq_jsonl_item_t *item =
            llmq_jsonl_parse_line(lines[i], strlen(lines[i]), 9);
        CHECK(s_fast(lines[i], strlen(lines[i]), 9, &fast));
        CHECK(item && !item->error && streq(item->custom_id, fast.custom_id));
        CHECK((int)item->op == fast.op);
        CHECK(!item->model == !fast.model &&
              (!fast.model || streq(item->model, fast.model)));
        cJSON_DeleteItemFromObject(item->body, "model");
        cJSON_AddStringToObject(item->body, "model", "mm");
        zframe_t *want = llmq_value_from_json(item->body);
        const char *drop[] = {"model", NULL};
        //  The fast body packed as the send packs it: the tree's bytes.
        llmq_packer_t *packer = llmq_packer_new();
        size_t size;
        CHECK(llmq_packer_json_object_set(packer, fast.body.data,
                                          fast.body.size, drop, "model", "mm",
                                          NULL, 0) == 0);
        const uint8_t *data = llmq_packer_data(packer, &size);
        CHECK(want && size == zframe_size(want) &&
              !memcmp(data, zframe_data(want), size));
        llmq_packer_destroy(&packer);
        failures += s_test_again(lines[i], &fast);
        zframe_destroy(&want);
        s_fast_clear(&fast);
        llmq_jsonl_item_destroy(&item);
    }
    failures += s_test_slow(slow);
    return failures;
}

/*  Prompt lines: s_fast takes the ones llmq_jsonl_parse_line takes, and
    s_pack_prompt packs the body its tree gives, byte for byte; the others
    are left to the slow path. */
static int s_test_prompt(void)
{
    int failures = 0;
    const char *lines[] = {
        "{\"prompt\":\"hi\"}",
        "{\"custom_id\":\"p\\u00e91\",\"PROMPT\":\"q \\\"x\\\" "
        "\\n\\ud83d\\ude00\","
        "\"system\":\"be \\t terse\",\"Model\":\"m9\",\"stop\":[\"a\",\"b\"],"
        "\"seed\":7,\"top_p\":0.5,\"temperature\":0,\"max_tokens\":16,"
        "\"extra\":{\"k\":1},\"messages\":[1]}\n",
        "{\"prompt\":\"p\",\"system\":5,\"model\":null,\"max_tokens\":1.5e3,"
        "\"temperature\":1.0,\"max_tokens\":99,\"custom_id\":null}",
        "{\"prompt\":\"\\\\u0000 is text\",\"stop\":null}", NULL};
    const char *slow[] = {"{\"prompt\":null}",
                          "{\"prompt\":7}",
                          "{\"prompt\":\"a\\u0000b\"}",
                          "{\"prompt\":\"a\",\"system\":\"\\u0000\"}",
                          "{\"prompt\":\"a\",\"model\":7}",
                          "{\"prompt\":\"a\",\"model\":\"\"}",
                          "{\"prompt\":\"a\",\"custom_id\":\"\"}",
                          "{\"prompt\":\"a\",\"url\":null}",
                          NULL};
    llmq_runner_t runner = {.packer = llmq_packer_new()};
    for (int i = 0; lines[i]; i++) {
        s_fast_t fast;
        llmq_jsonl_item_t *item =
            llmq_jsonl_parse_line(lines[i], strlen(lines[i]), 3);
        CHECK(s_fast(lines[i], strlen(lines[i]), 3, &fast));
        CHECK(!fast.body.data && fast.op == LLMQ_OP_CHAT);
        CHECK(item && !item->error && streq(item->custom_id, fast.custom_id));
        CHECK(!item->model == !fast.model &&
              (!fast.model || streq(item->model, fast.model)));
        cJSON_DeleteItemFromObject(item->body, "model");
        cJSON_AddStringToObject(item->body, "model", "m\"m");
        zframe_t *want = llmq_value_from_json(item->body);
        llmq_packer_reset(runner.packer);
        CHECK(s_pack_prompt(&runner, &fast, "m\"m") == 0);
        size_t size;
        const uint8_t *got = llmq_packer_data(runner.packer, &size);
        CHECK(want && size == zframe_size(want) &&
              !memcmp(got, zframe_data(want), size));
        zframe_destroy(&want);
        s_fast_clear(&fast);
        llmq_jsonl_item_destroy(&item);
    }
    failures += s_test_slow(slow);
    llmq_packer_destroy(&runner.packer);
    free(runner.text.data);
    return failures;
}

/*  The external sort over many runs: every pair once, in order. */
static int s_test_merge(void)
{
    int failures = 0;
    FILE *file = s_spill_new("-");
    CHECK(file);
    if (!file)
        return failures;
    uint64_t sum = 0;
    for (uint64_t i = 0; i < 1000; i++) {
        s_pair_t pair = {(i * 7919) % 1000 / 2, i};
        sum += pair.value;
        fwrite(&pair, sizeof pair, 1, file);
    }
    s_merge_t merge;
    CHECK(s_merge_runs(&merge, file, 64) == 0 && merge.count == 16);
    s_pair_t pair, prev = {0, 0};
    size_t n = 0;
    while (s_merge_next(&merge, &pair)) {
        CHECK(n == 0 || s_pair_cmp(&prev, &pair) < 0);
        sum -= pair.value;
        prev = pair;
        n++;
    }
    CHECK(n == 1000 && sum == 0);
    s_merge_end(&merge);
    fclose(file);
    return failures;
}

int llmq_runner_test(bool verbose)
{
    int failures = 0;
    printf(" * llmq_runner: ");
    char dir[] = "/tmp/llmq-runner-test-XXXXXX";
    CHECK(mkdtemp(dir));
    char *in = zsys_sprintf("%s/in.jsonl", dir);
    char *out = zsys_sprintf("%s/out.jsonl", dir);
    char *lost = zsys_sprintf("%s/lost.jsonl", dir);
    char *dup = zsys_sprintf("%s/dup.jsonl", dir);
    char *cap_in = zsys_sprintf("%s/cap-in.jsonl", dir);
    char *cap_out = zsys_sprintf("%s/cap-out.jsonl", dir);
    s_test_input(in, S_TEST_LINES);
    zactor_t *broker = zactor_new(llmq_client_fake_broker, NULL);
    int port = 0;
    zsock_recv(broker, "i", &port);
    char endpoint[64];
    snprintf(endpoint, sizeof endpoint, "tcp://127.0.0.1:%d", port);
    llmq_client_t *client = llmq_client_new(endpoint);
    CHECK(client);
    llmq_client_set_verbose(client, verbose);

    //  A fresh run: the overloaded lines shrink the window, come back
    //  after their backoffs (about 20 + 40 + 80 ms, at least half) and
    //  end as error lines; the window grows back; OUT is in input order.
    s_test_seen_t seen = {0};
    llmq_runner_config_t config = {.input = in,
                                   .output = out,
                                   .window = 8,
                                   .retries = 3,
                                   .backoff_ms = 20,
                                   .on_line = s_test_on_line,
                                   .on_line_arg = &seen};
    llmq_runner_stats_t stats;
    uint64_t sent = 0;
    CHECK(s_test_run(&config, client, &stats, &sent) == 0);
    CHECK(stats.todo == S_TEST_LINES && stats.finished == S_TEST_LINES);
    CHECK(stats.failed == 3 && stats.retried == 2 * 3);
    CHECK(sent == S_TEST_LINES - 1 + 2 * 3);
    CHECK(seen.min_window <= 4 && seen.regrown);
    CHECK(seen.l2_ms >= 10 + 20 + 40);
    failures += s_test_ordered(out, S_TEST_LINES, NULL);
    failures += s_test_rerun(&config, client);

    //  Resume after a kill: the partial line goes, the whole lines stay
    //  as they are, only the other lines are sent.
    s_test_cut(out);
    seen.out = out;
    CHECK(s_test_run(&config, client, &stats, &sent) == 0);
    CHECK(seen.bad_lines == 0);
    seen.out = NULL;
    CHECK(stats.resumed == 10 && stats.resumed_failed == 3);
    CHECK(stats.todo == S_TEST_LINES - 10 && sent == S_TEST_LINES - 10);
    failures += s_test_ordered(out, S_TEST_LINES, "\"kept\":1");

    failures += s_test_duplicates(dup);
    failures += s_test_fast();
    failures += s_test_prompt();
    failures += s_test_merge();
    failures += s_test_cap(cap_in, cap_out, client);
    config.output = lost;
    failures += s_test_unreachable(&config);

    llmq_client_destroy(&client);
    zactor_destroy(&broker);
    const char *paths[] = {in, out, lost, dup, cap_in, cap_out};
    for (size_t i = 0; i < sizeof paths / sizeof paths[0]; i++)
        unlink(paths[i]);
    rmdir(dir);
    zstr_free(&in);
    zstr_free(&out);
    zstr_free(&lost);
    zstr_free(&dup);
    zstr_free(&cap_in);
    zstr_free(&cap_out);
    printf(failures ? "FAILED\n" : "OK\n");
    return failures ? 1 : 0;
}
