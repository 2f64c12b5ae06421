/*  llmq_jsonl.h - JSONL files of `llmq run`: input lines, output lines,
    resume.

    Input lines (one request each; blank lines are skipped):
      - OpenAI Batch API: {"custom_id", "method": "POST", "url", "body"};
        url decides the op: /v1/chat/completions, /v1/completions,
        /v1/embeddings;
      - {"prompt": "...", "model"?, "system"?, "max_tokens"?,
        "temperature"?, "custom_id"?}: a chat with one user message;
      - {"messages": [...], ...}: a chat body as is;
      - any line not starting with '{': the whole line is a user prompt.
    A missing custom_id becomes "line-<n>" (n: 1-based line number). A line
    that cannot be understood still becomes an item, with `error` set, so
    that it is answered by an error line instead of aborting the run.

    Output lines follow the OpenAI Batch output format field by field, plus
    an object of llmq's own:
      {"id": "batch_req_<32 hex>", "custom_id",
       "response": {"status_code", "request_id", "body"} | null,
       "error": {"code", "message"} | null,
       "llmq": {"cost_usd", "cached", "traceparent", "model", "worker",
                "attempts", "error_code"}}
    A provider's answer (success, or an HTTP error 4xx/5xx) is a response
    with its status, request id and body as the provider sent it (its error
    body too) and "error": null, as OpenAI writes it; a line that got no
    HTTP answer (timeout, connection, llmq's own refusals) has "response":
    null and "error" set. "id" is unique per line and per run.

    Ownership: items, lines and tables returned belong to the caller.
*/
#ifndef LLMQ_JSONL_H_INCLUDED
#define LLMQ_JSONL_H_INCLUDED

#include "llmq_client.h"
#include <czmq.h>

#ifdef __cplusplus
extern "C" {
#endif

/*  Longest custom_id accepted. */
#define LLMQ_JSONL_MAX_ID 512
/*  Longest input line sent: a request body travels in one frame of at
    most LLMQ_MAX_FRAME_SIZE (64 MiB, proto/PROTOCOL.md) and its msgpack
    is never larger than its JSON text. A longer line is an error item. */
#define LLMQ_JSONL_MAX_LINE ((size_t)64 * 1024 * 1024 - 4096)

typedef struct {
    size_t line_no;  /* 1-based line number in the input */
    char *custom_id; /* given or "line-<n>" */
    llmq_op_t op;    /* from url, default chat */
    char *model;     /* body.model, or NULL */
    cJSON *body;     /* request body (owned), or NULL: error, or
                        not parsed yet (see line) */
    char *line;      /* the raw line while body is not kept */
    char *error;     /* why the line is unusable, or NULL */
} llmq_jsonl_item_t;

/*  Parse one input line (len bytes, no newline needed). Never NULL except
    out of memory; a bad line comes back with error set. */
llmq_jsonl_item_t *llmq_jsonl_parse_line(const char *line, size_t len,
                                         size_t line_no);
void llmq_jsonl_item_destroy(llmq_jsonl_item_t **self_p);

/*  Read an input file ("-": stdin) into a list of items (the list owns
    them). With keep_bodies false, each usable item keeps its raw line
    instead of its parsed body (a JSON tree is several times larger than
    its text): llmq_jsonl_item_body() parses it when it is needed. Returns
    NULL with a reason in err if the file cannot be read. */
zlistx_t *llmq_jsonl_read_input(const char *path, bool keep_bodies, char *err,
                                size_t errlen);

/*  The item's body, parsed from its raw line if needed (borrowed: it stays
    in the item until the caller deletes it and sets item->body to NULL;
    the raw line stays too, so the body can be parsed again for a retry).
    NULL for an item with an error. */
cJSON *llmq_jsonl_item_body(llmq_jsonl_item_t *self);

/*  The op of an OpenAI Batch url (query and a trailing slash ignored),
    or -1 for a url llmq does not serve. */
int llmq_jsonl_op_from_url(const char *url);

/*  Output lines, each ending with '\n' (caller frees; NULL: out of
    memory). request_id may be NULL (an ok line then takes the body's
    "id"). An error line with an HTTP error status (400..599) is a response
    whose body is an OpenAI error body built from code and message; any
    other status: "response": null and "error": {code, message}. */
char *llmq_jsonl_ok_line(const char *custom_id, const char *request_id,
                         const cJSON *body);
char *llmq_jsonl_error_line(const char *custom_id, const char *request_id,
                            const char *code, const char *message, int status);
/*  Output line for a client result: its body (msgpack with raw bodies, or
    the tree), request_id, error body, and the `llmq` object from its cost,
    cached, trace, model, worker and attempts. */
char *llmq_jsonl_result_line(const char *custom_id,
                             const llmq_result_t *result);

/*  True if an output line is a failed line: no response, a status_code
    that is not 2xx, or an error set. json_failed takes the parsed line;
    line_failed its text (read without parsing when it is in llmq's key
    order). */
bool llmq_jsonl_json_failed(const cJSON *line);
bool llmq_jsonl_line_failed(const char *line);

/*  A fresh line id "batch_req_<32 hex>" into id (LLMQ_JSONL_LINE_ID_SIZE
    bytes): a random part per process and a counter, so ids are unique per
    line and per run. */
#define LLMQ_JSONL_LINE_ID_SIZE 43
void llmq_jsonl_new_id(char *id);

/*  W3C traceparent of a line into out (LLMQ_JSONL_TRACEPARENT_SIZE bytes):
    the valid value of a "traceparent" key in the line's JSON text (len
    bytes; e.g. {"metadata": {"traceparent": ...}}), else a fresh
    "00-<32 hex>-<16 hex>-01" from the process's random seed and line_no
    (the same for the same line within a run). Returns out. */
#define LLMQ_JSONL_TRACEPARENT_SIZE 56
const char *llmq_jsonl_traceparent(const char *line, size_t len,
                                   uint64_t line_no, char *out);
/*  True if text (len bytes) is a valid version-00-form traceparent. */
bool llmq_jsonl_traceparent_valid(const char *text, size_t len);

/*  Resume: read an output file ("-": nothing to resume) and keep its complete,
   valid lines (a partial last line, as a kill leaves, and unparsable lines are
   dropped; with retry_failed, error lines are dropped too so they run again).
    Returns a table custom_id -> line (with '\n'; first wins), empty if the
    file does not exist, NULL with err on a read error. dropped_p receives
    how many lines were dropped. */
zhashx_t *llmq_jsonl_scan_output(const char *path, bool retry_failed,
                                 size_t *dropped_p, char *err, size_t errlen);

/*  Write lines atomically to path (temp file, fsync, rename): first the
    lines of the items in order (those present in `lines`), then any other
    line of `lines` (kept so that nothing is lost). Returns 0 or -1. Path
    "-" (stdout) writes nothing: its writer streamed every line. */
int llmq_jsonl_write_ordered(const char *path, zlistx_t *items,
                             zhashx_t *lines);

/*  Streaming resume and ordered output: `llmq run` holds its window, not
    its input. An index keeps, for every whole valid line of OUT, the
    FNV-1a 64 fingerprint of its custom_id and the line's byte offset in
    OUT (16 bytes a line, never the line itself). */
typedef struct _llmq_jsonl_index_t llmq_jsonl_index_t;

/*  Scan OUT ("-" or a missing file: an empty index) keeping and dropping
    the lines llmq_jsonl_scan_output keeps and drops (first line of a
    custom_id wins), one line in memory at a time. NULL with err on a read
    error. dropped_p receives how many lines were dropped. */
llmq_jsonl_index_t *llmq_jsonl_index_scan(const char *path, bool retry_failed,
                                          size_t *dropped_p, char *err,
                                          size_t errlen);
void llmq_jsonl_index_destroy(llmq_jsonl_index_t **self_p);
/*  Whether a line of the scan (not one added since) answers the custom_id
    of fingerprint fp; *failed_p (may be NULL): it is an error line. */
bool llmq_jsonl_index_has(llmq_jsonl_index_t *self, uint64_t fp,
                          bool *failed_p);
/*  A line appended to OUT at offset. Returns 0 or -1 (out of memory). */
int llmq_jsonl_index_add(llmq_jsonl_index_t *self, uint64_t fp, uint64_t offset,
                         bool failed);
/*  Lines indexed. */
size_t llmq_jsonl_index_size(llmq_jsonl_index_t *self);

/*  Yields the next input line, in input order: the fingerprint of its
    custom_id and, if the caller knows it, the offset of its OUT line (else
    LLMQ_JSONL_NO_OFFSET: the index is asked). False at the end. */
#define LLMQ_JSONL_NO_OFFSET UINT64_MAX
typedef bool(llmq_jsonl_next_fn)(void *arg, uint64_t *fp_p, uint64_t *offset_p);

/*  Rewrite OUT (not "-": nothing to do) atomically (temp file, fsync,
    rename): for every line next yields, in that order, its OUT line (at
    the offset given, else the index's line of that fingerprint, once),
    copied from OUT (pread); then the index's other lines (kept so that
    nothing is lost). Returns 0 or -1. */
int llmq_jsonl_write_indexed(const char *path, llmq_jsonl_index_t *index,
                             llmq_jsonl_next_fn *next, void *arg);

/*  Appender: lines are held until llmq_jsonl_writer_flush, which writes
    them all in one write() on an O_APPEND fd, so a kill leaves whole lines
    plus at most one partial line; the caller flushes before it waits (a
    burst of results is one system call, not one per line). Path "-"
    writes to stdout. write and result return 0, or -1 (out of memory, or
    for result a line that cannot be built: nothing added). flush returns
    0, or -1 if the write failed (the lines held are dropped, the offset
    stays). destroy flushes. */
typedef struct _llmq_jsonl_writer_t llmq_jsonl_writer_t;
llmq_jsonl_writer_t *llmq_jsonl_writer_new(const char *path);
void llmq_jsonl_writer_destroy(llmq_jsonl_writer_t **self_p);
int llmq_jsonl_writer_write(llmq_jsonl_writer_t *self, const char *line);
/*  Hold the output line of a result (llmq_jsonl_result_line's text, built
    in the writer's buffer: no line of its own to allocate and free). */
int llmq_jsonl_writer_result(llmq_jsonl_writer_t *self, const char *custom_id,
                             const llmq_result_t *result);
/*  Bytes held, not written yet. */
size_t llmq_jsonl_writer_pending(llmq_jsonl_writer_t *self);
int llmq_jsonl_writer_flush(llmq_jsonl_writer_t *self);
/*  The offset in the file where the next line goes (after those held). */
uint64_t llmq_jsonl_writer_offset(llmq_jsonl_writer_t *self);
/*  fsync if the last sync is older than interval_ms (0: now). Does not
    flush. */
int llmq_jsonl_writer_sync(llmq_jsonl_writer_t *self, int interval_ms);

/*  FNV-1a 64 of bytes. */
uint64_t llmq_jsonl_fnv1a(const void *data, size_t size);

int llmq_jsonl_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
