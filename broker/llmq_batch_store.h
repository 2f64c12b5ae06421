/*  llmq_batch_store.h - durable batch state in SQLite (issue 8).

    One SQLite file (WAL, synchronous=NORMAL, one connection, prepared
    statements) holds every batch the broker knows: the batch row, its items
    (custom_id + original msgpack body), its results, the idempotency record
    of each `batch.add` seq, and the provider Batch API jobs. A broker restart
    (kill -9 included) reopens the file and finds every batch where the last
    committed transaction left it; docs/BATCHES.md gives the rules.

    Keys: a batch has a small integer key (`bid`, the SQLite rowid) next to
    its wire id. Items and results are keyed by (bid << 32 | index) as their
    INTEGER PRIMARY KEY, so they live in input order in one b-tree with no
    second index: inserts append, reads in order are range scans.

    Item state is derived, not stored: an item is done when it has a result
    row, and it belongs to a provider job when its index is inside a job's
    range. Updating a state column would rewrite each item row with its body
    blob, doubling the write cost of a batch.

    This class does no policy: it stores and reads. llmq_batch (the manager)
    decides what to write when, and groups writes with begin/commit.

    Ownership: records passed in are borrowed; records filled by get calls
    belong to the caller (fixed-size fields, nothing to free). Callbacks get
    borrowed pointers valid only during the call.
*/
#ifndef LLMQ_BATCH_STORE_H_INCLUDED
#define LLMQ_BATCH_STORE_H_INCLUDED

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llmq_batch_state.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct _llmq_batch_store_t llmq_batch_store_t;

/*  One batch row. Strings are NUL-terminated; sizes follow the wire limits
    in llmq_proto.def. */
typedef struct {
    int64_t bid;             /* store key (rowid), set by insert */
    char id[65];             /* wire id (`batch`) */
    char mode[17];           /* realtime | provider (resolved) */
    char requested_mode[17]; /* what the client asked: auto|... */
    char model[257];
    char pool[129];             /* empty: any pool */
    char op[17];                /* chat | completion | embedding */
    llmq_batch_state_t state;   /* protocol batch state */
    char completion_window[17]; /* e.g. "24h"; empty: none */
    char provider[33];          /* provider kind for provider mode */
    char client[256];           /* client routing id (hex), optional */
    int64_t priority;
    int64_t created_ms;
    int64_t updated_ms;
    int64_t deadline_ms; /* absolute ms, 0 = none */
    bool closed;         /* batch.close seen: no more items */
    int64_t total;       /* items stored */
    int64_t done;        /* results stored (ok or not) */
    int64_t failed;      /* results with ok = false */
    int64_t prompt_tokens;
    int64_t completion_tokens;
    double cost_usd; /* with the Batch API discount */
    char owner[129]; /* its tenant (PROTOCOL.md 3.4); "" before owners */
} llmq_batch_rec_t;

/*  One result row (what batch.results returns per item). */
typedef struct {
    int64_t index;
    bool ok;
    const void *body; /* msgpack response body, or NULL */
    size_t body_size;
    const char *error_code; /* NULL when ok */
    const char *error_message;
    int64_t error_status; /* provider HTTP status, 0 = none */
    bool error_retryable;
    int64_t prompt_tokens;
    int64_t completion_tokens;
    double cost_usd;
    const char *custom_id; /* from the item (read side only) */
} llmq_batch_result_t;

/*  One provider job row (a chunk of a provider-mode batch). */
typedef struct {
    char id[65];              /* job id on the wire (`job`) */
    int64_t bid;              /* owning batch */
    char pool[129];           /* pool whose workers run it */
    char provider[33];        /* openai | anthropic | sim */
    llmq_job_state_t state;   /* job state, llmq_batch_state.h */
    char provider_state[17];  /* last normalised provider state */
    char provider_batch[257]; /* provider's batch id, "" until known */
    char input_file[257];
    char output_file[257];
    char error_file[257];
    int64_t first;        /* first item index */
    int64_t count;        /* number of items */
    int64_t submitted_ms; /* when job.submit was last sent */
    int64_t updated_ms;
    int64_t attempts; /* job.submit sends so far */
    int64_t done;     /* provider's completed count */
    int64_t failed;   /* provider's failed count */
} llmq_batch_job_t;

/*  Open (or create) the store at path. Returns NULL, with a log line, if
    the file cannot be opened or is not a batch store. */
llmq_batch_store_t *llmq_batch_store_new(const char *path);

/*  Close the store (an open transaction is rolled back). Idempotent. */
void llmq_batch_store_destroy(llmq_batch_store_t **self_p);

/*  Transactions. begin() while one is open is a no-op returning 0, so
    callers can nest naively; commit() with none open is a no-op. */
int llmq_batch_store_begin(llmq_batch_store_t *self);
int llmq_batch_store_commit(llmq_batch_store_t *self);
int llmq_batch_store_rollback(llmq_batch_store_t *self);
bool llmq_batch_store_in_transaction(llmq_batch_store_t *self);

/*  Batches. insert sets rec->bid; returns -1 if the id exists. update
    writes every column of an existing row (by bid). get fills rec by wire
    id and returns 0, or -1 if unknown. */
int llmq_batch_store_batch_insert(llmq_batch_store_t *self,
                                  llmq_batch_rec_t *rec);
int llmq_batch_store_batch_update(llmq_batch_store_t *self,
                                  const llmq_batch_rec_t *rec);
int llmq_batch_store_batch_get(llmq_batch_store_t *self, const char *id,
                               llmq_batch_rec_t *rec);
/*  Remove a batch and everything it owns (items, results, adds, jobs). */
int llmq_batch_store_batch_delete(llmq_batch_store_t *self, int64_t bid);
/*  Call fn for every batch (in creation order). fn returning non-zero
    stops. Returns the number visited or -1. */
typedef int(llmq_batch_rec_fn)(const llmq_batch_rec_t *rec, void *arg);
long llmq_batch_store_batch_each(llmq_batch_store_t *self,
                                 llmq_batch_rec_fn *fn, void *arg);

/*  batch.add idempotency: record that message seq of batch bid stored
    `accepted` items starting at index first; look a seq up (0 found, -1
    not seen). */
int llmq_batch_store_add_record(llmq_batch_store_t *self, int64_t bid,
                                int64_t seq, int64_t first, int64_t accepted);
int llmq_batch_store_add_lookup(llmq_batch_store_t *self, int64_t bid,
                                int64_t seq, int64_t *first, int64_t *accepted);

/*  Items. insert stores one item (call inside a transaction for speed);
    returns -1 if index is out of range (>= 2^32) or on error. */
int llmq_batch_store_item_insert(llmq_batch_store_t *self, int64_t bid,
                                 int64_t index, const char *custom_id,
                                 const void *body, size_t body_size);
/*  Call fn for items [first, first + count) in order. With pending_only,
    items that already have a result are skipped. Stops when fn returns
    non-zero. Returns the number of items fn saw, or -1. */
typedef int(llmq_batch_item_fn)(int64_t index, const char *custom_id,
                                const void *body, size_t body_size, void *arg);
long llmq_batch_store_item_each(llmq_batch_store_t *self, int64_t bid,
                                int64_t first, int64_t count, bool pending_only,
                                llmq_batch_item_fn *fn, void *arg);

/*  Results. put stores the first result for an item: returns 1 if stored,
    0 if the item already had one (duplicates are dropped), -1 on error. */
int llmq_batch_store_result_put(llmq_batch_store_t *self, int64_t bid,
                                const llmq_batch_result_t *res);
/*  Call fn for results with index >= after, in input order, custom_id
    filled from the item. With contiguous, stop at the first index that has
    no result yet (so a cursor never skips an unfinished item). Stops when
    fn returns non-zero (that row is counted as not visited). Returns the
    number of results fn accepted, or -1. */
typedef int(llmq_batch_result_fn)(const llmq_batch_result_t *res, void *arg);
long llmq_batch_store_result_each(llmq_batch_store_t *self, int64_t bid,
                                  int64_t after, bool contiguous,
                                  llmq_batch_result_fn *fn, void *arg);
/*  Number of results stored for a batch (and how many are failures). */
int llmq_batch_store_result_count(llmq_batch_store_t *self, int64_t bid,
                                  int64_t *done, int64_t *failed);

/*  Provider jobs. insert returns -1 if the id exists; update writes every
    column (by id); get returns 0 or -1. each visits a batch's jobs (bid
    > 0) or all jobs (bid 0) ordered by first item. */
int llmq_batch_store_job_insert(llmq_batch_store_t *self,
                                const llmq_batch_job_t *job);
int llmq_batch_store_job_update(llmq_batch_store_t *self,
                                const llmq_batch_job_t *job);
int llmq_batch_store_job_get(llmq_batch_store_t *self, const char *id,
                             llmq_batch_job_t *job);
typedef int(llmq_batch_job_fn)(const llmq_batch_job_t *job, void *arg);
long llmq_batch_store_job_each(llmq_batch_store_t *self, int64_t bid,
                               llmq_batch_job_fn *fn, void *arg);

/*  Self test (real SQLite files in a temp dir, a crash simulation by
    fork + _exit, a 100k-item throughput measurement printed when verbose).
    Returns 0 on success. */
int llmq_batch_store_test(bool verbose);

#ifdef __cplusplus
}
#endif
#endif
