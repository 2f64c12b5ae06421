/*  llmq_batch_store.c - durable batch state in SQLite (issue 8).

    Design: one connection, WAL journal, synchronous=NORMAL (a commit is
    durable against a process crash at once and against a power cut from the
    next checkpoint; kill -9 of the broker never loses a committed
    transaction). Every statement is prepared once in new() and reset after
    each use. Items and results are keyed by bid << 32 | index (see the
    header) so input order is the b-tree order.

    The file carries application_id 'llmq' and user_version 2 so that a
    store opened on some other SQLite file is refused instead of modified.
    Version 1 (before batch owners) is migrated: its batches get owner "".
*/
#include "llmq_batch_store.h"
#include "llmq_log.h"

#include <czmq.h>
#include <sqlite3.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define S_APP_ID 0x6c6c6d71 /* 'llmq' */
#define S_SCHEMA_VERSION 2
#define S_MAX_INDEX 0xffffffffLL

/*  Prepared statements, one per query the store runs. */
typedef enum {
    ST_BEGIN,
    ST_COMMIT,
    ST_ROLLBACK,
    ST_BATCH_INSERT,
    ST_BATCH_UPDATE,
    ST_BATCH_GET,
    ST_BATCH_EACH,
    ST_DEL_ITEMS,
    ST_DEL_RESULTS,
    ST_DEL_ADDS,
    ST_DEL_JOBS,
    ST_DEL_BATCH,
    ST_ADD_RECORD,
    ST_ADD_LOOKUP,
    ST_ITEM_INSERT,
    ST_ITEM_EACH,
    ST_ITEM_EACH_PENDING,
    ST_RESULT_PUT,
    ST_RESULT_EACH,
    ST_RESULT_COUNT,
    ST_JOB_INSERT,
    ST_JOB_UPDATE,
    ST_JOB_GET,
    ST_JOB_EACH_BATCH,
    ST_JOB_EACH_ALL,
    ST_COUNT
} s_stmt_t;

#define S_BATCH_COLS                                                           \
    "bid, id, mode, requested_mode, model, pool, op, state, "                  \
    "completion_window, provider, client, priority, created_ms, "              \
    "updated_ms, deadline_ms, closed, total, done, failed, prompt_tokens, "    \
    "completion_tokens, cost_usd, owner"

#define S_JOB_COLS                                                             \
    "id, bid, pool, provider, state, provider_state, provider_batch, "         \
    "input_file, output_file, error_file, first, count, submitted_ms, "        \
    "updated_ms, attempts, done, failed"

static const char *s_sql[ST_COUNT] = {
    [ST_BEGIN] = "BEGIN IMMEDIATE",
    [ST_COMMIT] = "COMMIT",
    [ST_ROLLBACK] = "ROLLBACK",
    [ST_BATCH_INSERT] =
        "INSERT INTO batches (" S_BATCH_COLS ") VALUES (NULL, ?2, ?3, ?4, "
        "?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, "
        "?19, ?20, ?21, ?22, ?23)",
    [ST_BATCH_UPDATE] =
        "UPDATE batches SET id=?2, mode=?3, requested_mode=?4, model=?5, "
        "pool=?6, op=?7, state=?8, completion_window=?9, provider=?10, "
        "client=?11, priority=?12, created_ms=?13, updated_ms=?14, "
        "deadline_ms=?15, closed=?16, total=?17, done=?18, failed=?19, "
        "prompt_tokens=?20, completion_tokens=?21, cost_usd=?22, owner=?23 "
        "WHERE bid=?1",
    [ST_BATCH_GET] = "SELECT " S_BATCH_COLS " FROM batches WHERE id=?1",
    [ST_BATCH_EACH] = "SELECT " S_BATCH_COLS " FROM batches ORDER BY bid",
    [ST_DEL_ITEMS] = "DELETE FROM items WHERE k BETWEEN ?1 AND ?2",
    [ST_DEL_RESULTS] = "DELETE FROM results WHERE k BETWEEN ?1 AND ?2",
    [ST_DEL_ADDS] = "DELETE FROM adds WHERE bid=?1",
    [ST_DEL_JOBS] = "DELETE FROM jobs WHERE bid=?1",
    [ST_DEL_BATCH] = "DELETE FROM batches WHERE bid=?1",
    [ST_ADD_RECORD] = "INSERT OR REPLACE INTO adds (bid, seq, first, "
                      "accepted) VALUES (?1, ?2, ?3, ?4)",
    [ST_ADD_LOOKUP] = "SELECT first, accepted FROM adds WHERE bid=?1 AND "
                      "seq=?2",
    [ST_ITEM_INSERT] = "INSERT INTO items (k, custom_id, body) VALUES (?1, "
                       "?2, ?3)",
    [ST_ITEM_EACH] = "SELECT k, custom_id, body FROM items WHERE k >= ?1 "
                     "AND k < ?2 ORDER BY k",
    [ST_ITEM_EACH_PENDING] =
        "SELECT i.k, i.custom_id, i.body FROM items i WHERE i.k >= ?1 AND "
        "i.k < ?2 AND NOT EXISTS (SELECT 1 FROM results r WHERE r.k = i.k) "
        "ORDER BY i.k",
    [ST_RESULT_PUT] =
        "INSERT OR IGNORE INTO results (k, ok, body, error_code, "
        "error_message, error_status, error_retryable, prompt_tokens, "
        "completion_tokens, cost_usd) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, "
        "?8, ?9, ?10)",
    [ST_RESULT_EACH] =
        "SELECT r.k, r.ok, r.body, r.error_code, r.error_message, "
        "r.error_status, r.error_retryable, r.prompt_tokens, "
        "r.completion_tokens, r.cost_usd, i.custom_id FROM results r LEFT "
        "JOIN items i ON i.k = r.k WHERE r.k >= ?1 AND r.k <= ?2 ORDER BY "
        "r.k",
    [ST_RESULT_COUNT] = "SELECT count(*), coalesce(sum(ok = 0), 0) FROM "
                        "results WHERE k BETWEEN ?1 AND ?2",
    [ST_JOB_INSERT] =
        "INSERT INTO jobs (" S_JOB_COLS ") VALUES (?1, ?2, ?3, ?4, ?5, ?6, "
        "?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)",
    [ST_JOB_UPDATE] =
        "UPDATE jobs SET bid=?2, pool=?3, provider=?4, state=?5, "
        "provider_state=?6, provider_batch=?7, input_file=?8, "
        "output_file=?9, error_file=?10, first=?11, count=?12, "
        "submitted_ms=?13, updated_ms=?14, attempts=?15, done=?16, "
        "failed=?17 WHERE id=?1",
    [ST_JOB_GET] = "SELECT " S_JOB_COLS " FROM jobs WHERE id=?1",
    [ST_JOB_EACH_BATCH] = "SELECT " S_JOB_COLS " FROM jobs WHERE bid=?1 "
                          "ORDER BY bid, first",
    [ST_JOB_EACH_ALL] = "SELECT " S_JOB_COLS " FROM jobs ORDER BY bid, "
                        "first",
};

static const char *s_schema =
    "CREATE TABLE IF NOT EXISTS batches ("
    " bid INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, mode TEXT,"
    " requested_mode TEXT, model TEXT, pool TEXT, op TEXT, state TEXT,"
    " completion_window TEXT, provider TEXT, client TEXT, priority INTEGER,"
    " created_ms INTEGER, updated_ms INTEGER, deadline_ms INTEGER,"
    " closed INTEGER, total INTEGER, done INTEGER, failed INTEGER,"
    " prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd REAL,"
    " owner TEXT NOT NULL DEFAULT '');"
    "CREATE TABLE IF NOT EXISTS items ("
    " k INTEGER PRIMARY KEY, custom_id TEXT, body BLOB);"
    "CREATE TABLE IF NOT EXISTS results ("
    " k INTEGER PRIMARY KEY, ok INTEGER, body BLOB, error_code TEXT,"
    " error_message TEXT, error_status INTEGER, error_retryable INTEGER,"
    " prompt_tokens INTEGER, completion_tokens INTEGER, cost_usd REAL);"
    "CREATE TABLE IF NOT EXISTS adds ("
    " bid INTEGER, seq INTEGER, first INTEGER, accepted INTEGER,"
    " PRIMARY KEY (bid, seq)) WITHOUT ROWID;"
    "CREATE TABLE IF NOT EXISTS jobs ("
    " id TEXT PRIMARY KEY, bid INTEGER, pool TEXT, provider TEXT,"
    " state TEXT, provider_state TEXT, provider_batch TEXT,"
    " input_file TEXT, output_file TEXT, error_file TEXT, first INTEGER,"
    " count INTEGER, submitted_ms INTEGER, updated_ms INTEGER,"
    " attempts INTEGER, done INTEGER, failed INTEGER);"
    "CREATE INDEX IF NOT EXISTS jobs_bid ON jobs (bid, first);";

struct _llmq_batch_store_t {
    sqlite3 *db;                  /* the one connection */
    sqlite3_stmt *stmt[ST_COUNT]; /* prepared once, reset after use */
    bool in_tx;                   /* a transaction is open */
    char *path;                   /* for log lines */
};

static int64_t s_key(int64_t bid, int64_t index)
{
    return (int64_t)((uint64_t)bid << 32 | (uint64_t)index);
}

/*  Log an SQLite failure once, with the statement's purpose. */
static void s_fail(llmq_batch_store_t *self, const char *what)
{
    llmq_log(NULL, LLMQ_LOG_ERROR, "batch_store_error",
             LLMQ_LOG_STR("path", self->path), LLMQ_LOG_STR("what", what),
             LLMQ_LOG_STR("error", sqlite3_errmsg(self->db)), LLMQ_LOG_END);
}

static void s_copy(char *dst, size_t size, const unsigned char *src)
{
    snprintf(dst, size, "%s", src ? (const char *)src : "");
}

/*  Run a statement that returns no rows; resets it. */
static int s_step_done(llmq_batch_store_t *self, s_stmt_t st)
{
    sqlite3_stmt *s = self->stmt[st];
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    if (rc != SQLITE_DONE) {
        s_fail(self, s_sql[st]);
        return -1;
    }
    return 0;
}

/*  Version 1 -> 2: batches get an owner column (PROTOCOL.md 3.4); the
    batches stored before it belong to the tenant "". Returns 0 or -1. */
static int s_migrate_v1(llmq_batch_store_t *self)
{
    char *errmsg = NULL;
    if (sqlite3_exec(self->db,
                     "ALTER TABLE batches ADD COLUMN owner TEXT NOT NULL "
                     "DEFAULT ''",
                     NULL, NULL, &errmsg) == SQLITE_OK)
        return 0;
    llmq_log(NULL, LLMQ_LOG_ERROR, "batch_store_error",
             LLMQ_LOG_STR("path", self->path), LLMQ_LOG_STR("what", "migrate"),
             LLMQ_LOG_STR("error", errmsg ? errmsg : "?"), LLMQ_LOG_END);
    sqlite3_free(errmsg);
    return -1;
}

llmq_batch_store_t *llmq_batch_store_new(const char *path)
{
    llmq_batch_store_t *self = calloc(1, sizeof *self);
    if (!self)
        return NULL;
    self->path = strdup(path ? path : "");
    int rc = sqlite3_open_v2(
        self->path, &self->db,
        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        llmq_log(NULL, LLMQ_LOG_ERROR, "batch_store_error",
                 LLMQ_LOG_STR("path", self->path), LLMQ_LOG_STR("what", "open"),
                 LLMQ_LOG_STR("error", self->db ? sqlite3_errmsg(self->db)
                                                : "out of memory"),
                 LLMQ_LOG_END);
        goto err;
    }
    /*  A second broker on the same file would corrupt nobody (SQLite
        locks) but would stall; wait a little for a lock, never forever. */
    sqlite3_busy_timeout(self->db, 2000);

    sqlite3_stmt *q = NULL;
    int64_t app_id = 0, version = 0, tables = 0;
    if (sqlite3_prepare_v2(self->db, "PRAGMA application_id", -1, &q, NULL) ==
            SQLITE_OK &&
        sqlite3_step(q) == SQLITE_ROW)
        app_id = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    if (sqlite3_prepare_v2(self->db, "PRAGMA user_version", -1, &q, NULL) ==
            SQLITE_OK &&
        sqlite3_step(q) == SQLITE_ROW)
        version = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    if (sqlite3_prepare_v2(self->db, "SELECT count(*) FROM sqlite_master", -1,
                           &q, NULL) == SQLITE_OK &&
        sqlite3_step(q) == SQLITE_ROW)
        tables = sqlite3_column_int64(q, 0);
    else {
        sqlite3_finalize(q);
        s_fail(self, "read schema (not an SQLite file?)");
        goto err;
    }
    sqlite3_finalize(q);
    if (tables > 0 && app_id == S_APP_ID && version == 1 && s_migrate_v1(self))
        goto err;
    if (tables > 0 &&
        (app_id != S_APP_ID || (version != S_SCHEMA_VERSION && version != 1))) {
        llmq_log(NULL, LLMQ_LOG_ERROR, "batch_store_foreign",
                 LLMQ_LOG_STR("path", self->path),
                 LLMQ_LOG_INT("application_id", app_id),
                 LLMQ_LOG_INT("version", version), LLMQ_LOG_END);
        goto err;
    }

    char *errmsg = NULL;
    char pragmas[256];
    snprintf(pragmas, sizeof pragmas,
             "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;"
             "PRAGMA foreign_keys=OFF; PRAGMA application_id=%d;"
             "PRAGMA user_version=%d;",
             S_APP_ID, S_SCHEMA_VERSION);
    if (sqlite3_exec(self->db, pragmas, NULL, NULL, &errmsg) != SQLITE_OK ||
        sqlite3_exec(self->db, s_schema, NULL, NULL, &errmsg) != SQLITE_OK) {
        llmq_log(NULL, LLMQ_LOG_ERROR, "batch_store_error",
                 LLMQ_LOG_STR("path", self->path),
                 LLMQ_LOG_STR("what", "schema"),
                 LLMQ_LOG_STR("error", errmsg ? errmsg : "?"), LLMQ_LOG_END);
        sqlite3_free(errmsg);
        goto err;
    }
    for (int i = 0; i < ST_COUNT; i++) {
        if (sqlite3_prepare_v3(self->db, s_sql[i], -1,
                               SQLITE_PREPARE_PERSISTENT, &self->stmt[i],
                               NULL) != SQLITE_OK) {
            s_fail(self, s_sql[i]);
            goto err;
        }
    }
    return self;
err:
    llmq_batch_store_destroy(&self);
    return NULL;
}

void llmq_batch_store_destroy(llmq_batch_store_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    llmq_batch_store_t *self = *self_p;
    if (self->in_tx)
        llmq_batch_store_rollback(self);
    for (int i = 0; i < ST_COUNT; i++)
        sqlite3_finalize(self->stmt[i]);
    if (self->db)
        sqlite3_close(self->db);
    free(self->path);
    free(self);
    *self_p = NULL;
}

int llmq_batch_store_begin(llmq_batch_store_t *self)
{
    if (self->in_tx)
        return 0;
    if (s_step_done(self, ST_BEGIN))
        return -1;
    self->in_tx = true;
    return 0;
}

int llmq_batch_store_commit(llmq_batch_store_t *self)
{
    if (!self->in_tx)
        return 0;
    int rc = s_step_done(self, ST_COMMIT);
    if (rc) {
        /*  A failed COMMIT (disk full) leaves the transaction open in
            SQLite; roll back so the connection stays usable. */
        sqlite3_exec(self->db, "ROLLBACK", NULL, NULL, NULL);
    }
    self->in_tx = false;
    return rc;
}

int llmq_batch_store_rollback(llmq_batch_store_t *self)
{
    if (!self->in_tx)
        return 0;
    self->in_tx = false;
    return s_step_done(self, ST_ROLLBACK);
}

bool llmq_batch_store_in_transaction(llmq_batch_store_t *self)
{
    return self->in_tx;
}

/*  ---- batches ---------------------------------------------------------- */

static void s_bind_text(sqlite3_stmt *s, int i, const char *v)
{
    sqlite3_bind_text(s, i, v ? v : "", -1, SQLITE_STATIC);
}

static void s_batch_bind(sqlite3_stmt *s, const llmq_batch_rec_t *r)
{
    sqlite3_bind_int64(s, 1, r->bid);
    s_bind_text(s, 2, r->id);
    s_bind_text(s, 3, r->mode);
    s_bind_text(s, 4, r->requested_mode);
    s_bind_text(s, 5, r->model);
    s_bind_text(s, 6, r->pool);
    s_bind_text(s, 7, r->op);
    s_bind_text(s, 8, llmq_batch_state_name(r->state));
    s_bind_text(s, 9, r->completion_window);
    s_bind_text(s, 10, r->provider);
    s_bind_text(s, 11, r->client);
    sqlite3_bind_int64(s, 12, r->priority);
    sqlite3_bind_int64(s, 13, r->created_ms);
    sqlite3_bind_int64(s, 14, r->updated_ms);
    sqlite3_bind_int64(s, 15, r->deadline_ms);
    sqlite3_bind_int(s, 16, r->closed ? 1 : 0);
    sqlite3_bind_int64(s, 17, r->total);
    sqlite3_bind_int64(s, 18, r->done);
    sqlite3_bind_int64(s, 19, r->failed);
    sqlite3_bind_int64(s, 20, r->prompt_tokens);
    sqlite3_bind_int64(s, 21, r->completion_tokens);
    sqlite3_bind_double(s, 22, r->cost_usd);
    s_bind_text(s, 23, r->owner);
}

static void s_batch_read(sqlite3_stmt *s, llmq_batch_rec_t *r)
{
    memset(r, 0, sizeof *r);
    r->bid = sqlite3_column_int64(s, 0);
    s_copy(r->id, sizeof r->id, sqlite3_column_text(s, 1));
    s_copy(r->mode, sizeof r->mode, sqlite3_column_text(s, 2));
    s_copy(r->requested_mode, sizeof r->requested_mode,
           sqlite3_column_text(s, 3));
    s_copy(r->model, sizeof r->model, sqlite3_column_text(s, 4));
    s_copy(r->pool, sizeof r->pool, sqlite3_column_text(s, 5));
    s_copy(r->op, sizeof r->op, sqlite3_column_text(s, 6));
    r->state = LLMQ_BATCH_FAILED; /* a state this broker does not know */
    llmq_batch_state_parse((const char *)sqlite3_column_text(s, 7), &r->state);
    s_copy(r->completion_window, sizeof r->completion_window,
           sqlite3_column_text(s, 8));
    s_copy(r->provider, sizeof r->provider, sqlite3_column_text(s, 9));
    s_copy(r->client, sizeof r->client, sqlite3_column_text(s, 10));
    r->priority = sqlite3_column_int64(s, 11);
    r->created_ms = sqlite3_column_int64(s, 12);
    r->updated_ms = sqlite3_column_int64(s, 13);
    r->deadline_ms = sqlite3_column_int64(s, 14);
    r->closed = sqlite3_column_int(s, 15) != 0;
    r->total = sqlite3_column_int64(s, 16);
    r->done = sqlite3_column_int64(s, 17);
    r->failed = sqlite3_column_int64(s, 18);
    r->prompt_tokens = sqlite3_column_int64(s, 19);
    r->completion_tokens = sqlite3_column_int64(s, 20);
    r->cost_usd = sqlite3_column_double(s, 21);
    s_copy(r->owner, sizeof r->owner, sqlite3_column_text(s, 22));
}

int llmq_batch_store_batch_insert(llmq_batch_store_t *self,
                                  llmq_batch_rec_t *rec)
{
    sqlite3_stmt *s = self->stmt[ST_BATCH_INSERT];
    s_batch_bind(s, rec);
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    if (rc != SQLITE_DONE) {
        if (rc != SQLITE_CONSTRAINT)
            s_fail(self, "batch insert");
        return -1;
    }
    rec->bid = sqlite3_last_insert_rowid(self->db);
    return 0;
}

int llmq_batch_store_batch_update(llmq_batch_store_t *self,
                                  const llmq_batch_rec_t *rec)
{
    s_batch_bind(self->stmt[ST_BATCH_UPDATE], rec);
    return s_step_done(self, ST_BATCH_UPDATE);
}

int llmq_batch_store_batch_get(llmq_batch_store_t *self, const char *id,
                               llmq_batch_rec_t *rec)
{
    sqlite3_stmt *s = self->stmt[ST_BATCH_GET];
    s_bind_text(s, 1, id);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        s_batch_read(s, rec);
    else if (rc != SQLITE_DONE)
        s_fail(self, "batch get");
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc == SQLITE_ROW ? 0 : -1;
}

int llmq_batch_store_batch_delete(llmq_batch_store_t *self, int64_t bid)
{
    bool own_tx = !self->in_tx;
    if (own_tx && llmq_batch_store_begin(self))
        return -1;
    int rc = 0;
    for (s_stmt_t st = ST_DEL_ITEMS; st <= ST_DEL_RESULTS; st++) {
        sqlite3_bind_int64(self->stmt[st], 1, s_key(bid, 0));
        sqlite3_bind_int64(self->stmt[st], 2, s_key(bid, S_MAX_INDEX));
        rc |= s_step_done(self, st);
    }
    for (s_stmt_t st = ST_DEL_ADDS; st <= ST_DEL_BATCH; st++) {
        sqlite3_bind_int64(self->stmt[st], 1, bid);
        rc |= s_step_done(self, st);
    }
    if (own_tx) {
        if (rc)
            llmq_batch_store_rollback(self);
        else
            rc = llmq_batch_store_commit(self);
    }
    return rc ? -1 : 0;
}

long llmq_batch_store_batch_each(llmq_batch_store_t *self,
                                 llmq_batch_rec_fn *fn, void *arg)
{
    sqlite3_stmt *s = self->stmt[ST_BATCH_EACH];
    long n = 0;
    int rc;
    llmq_batch_rec_t rec;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        s_batch_read(s, &rec);
        n++;
        if (fn(&rec, arg))
            break;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        s_fail(self, "batch each");
        n = -1;
    }
    sqlite3_reset(s);
    return n;
}

/*  ---- batch.add idempotency ------------------------------------------- */

int llmq_batch_store_add_record(llmq_batch_store_t *self, int64_t bid,
                                int64_t seq, int64_t first, int64_t accepted)
{
    sqlite3_stmt *s = self->stmt[ST_ADD_RECORD];
    sqlite3_bind_int64(s, 1, bid);
    sqlite3_bind_int64(s, 2, seq);
    sqlite3_bind_int64(s, 3, first);
    sqlite3_bind_int64(s, 4, accepted);
    return s_step_done(self, ST_ADD_RECORD);
}

int llmq_batch_store_add_lookup(llmq_batch_store_t *self, int64_t bid,
                                int64_t seq, int64_t *first, int64_t *accepted)
{
    sqlite3_stmt *s = self->stmt[ST_ADD_LOOKUP];
    sqlite3_bind_int64(s, 1, bid);
    sqlite3_bind_int64(s, 2, seq);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        if (first)
            *first = sqlite3_column_int64(s, 0);
        if (accepted)
            *accepted = sqlite3_column_int64(s, 1);
    } else if (rc != SQLITE_DONE)
        s_fail(self, "add lookup");
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc == SQLITE_ROW ? 0 : -1;
}

/*  ---- items ------------------------------------------------------------ */

int llmq_batch_store_item_insert(llmq_batch_store_t *self, int64_t bid,
                                 int64_t index, const char *custom_id,
                                 const void *body, size_t body_size)
{
    if (index < 0 || index > S_MAX_INDEX || bid <= 0 || body_size > INT_MAX)
        return -1;
    sqlite3_stmt *s = self->stmt[ST_ITEM_INSERT];
    sqlite3_bind_int64(s, 1, s_key(bid, index));
    s_bind_text(s, 2, custom_id);
    sqlite3_bind_blob(s, 3, body ? body : "", (int)body_size, SQLITE_STATIC);
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    if (rc != SQLITE_DONE) {
        /*  A duplicate index is the caller's bug or a replay; not logged. */
        if (rc != SQLITE_CONSTRAINT)
            s_fail(self, "item insert");
        return -1;
    }
    return 0;
}

long llmq_batch_store_item_each(llmq_batch_store_t *self, int64_t bid,
                                int64_t first, int64_t count, bool pending_only,
                                llmq_batch_item_fn *fn, void *arg)
{
    if (first < 0)
        first = 0;
    if (count < 0 || first + count > S_MAX_INDEX + 1)
        count = S_MAX_INDEX + 1 - first;
    sqlite3_stmt *s =
        self->stmt[pending_only ? ST_ITEM_EACH_PENDING : ST_ITEM_EACH];
    sqlite3_bind_int64(s, 1, s_key(bid, first));
    sqlite3_bind_int64(s, 2, s_key(bid, 0) + first + count);
    long n = 0;
    int rc;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        int64_t index = sqlite3_column_int64(s, 0) & S_MAX_INDEX;
        const char *cid = (const char *)sqlite3_column_text(s, 1);
        const void *body = sqlite3_column_blob(s, 2);
        size_t size = (size_t)sqlite3_column_bytes(s, 2);
        n++;
        if (fn(index, cid ? cid : "", body, size, arg))
            break;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        s_fail(self, "item each");
        n = -1;
    }
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return n;
}

/*  ---- results ---------------------------------------------------------- */

int llmq_batch_store_result_put(llmq_batch_store_t *self, int64_t bid,
                                const llmq_batch_result_t *res)
{
    if (res->index < 0 || res->index > S_MAX_INDEX || bid <= 0 ||
        res->body_size > INT_MAX)
        return -1;
    sqlite3_stmt *s = self->stmt[ST_RESULT_PUT];
    sqlite3_bind_int64(s, 1, s_key(bid, res->index));
    sqlite3_bind_int(s, 2, res->ok ? 1 : 0);
    if (res->body)
        sqlite3_bind_blob(s, 3, res->body, (int)res->body_size, SQLITE_STATIC);
    else
        sqlite3_bind_null(s, 3);
    if (res->error_code)
        s_bind_text(s, 4, res->error_code);
    else
        sqlite3_bind_null(s, 4);
    if (res->error_message)
        s_bind_text(s, 5, res->error_message);
    else
        sqlite3_bind_null(s, 5);
    sqlite3_bind_int64(s, 6, res->error_status);
    sqlite3_bind_int(s, 7, res->error_retryable ? 1 : 0);
    sqlite3_bind_int64(s, 8, res->prompt_tokens);
    sqlite3_bind_int64(s, 9, res->completion_tokens);
    sqlite3_bind_double(s, 10, res->cost_usd);
    if (s_step_done(self, ST_RESULT_PUT))
        return -1;
    return sqlite3_changes(self->db) > 0 ? 1 : 0;
}

long llmq_batch_store_result_each(llmq_batch_store_t *self, int64_t bid,
                                  int64_t after, bool contiguous,
                                  llmq_batch_result_fn *fn, void *arg)
{
    if (after < 0)
        after = 0;
    sqlite3_stmt *s = self->stmt[ST_RESULT_EACH];
    sqlite3_bind_int64(s, 1, s_key(bid, after));
    sqlite3_bind_int64(s, 2, s_key(bid, S_MAX_INDEX));
    long n = 0;
    int rc;
    int64_t expect = after;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        llmq_batch_result_t r = {0};
        r.index = sqlite3_column_int64(s, 0) & S_MAX_INDEX;
        if (contiguous && r.index != expect)
            break;
        expect = r.index + 1;
        r.ok = sqlite3_column_int(s, 1) != 0;
        r.body = sqlite3_column_blob(s, 2);
        r.body_size = (size_t)sqlite3_column_bytes(s, 2);
        r.error_code = (const char *)sqlite3_column_text(s, 3);
        r.error_message = (const char *)sqlite3_column_text(s, 4);
        r.error_status = sqlite3_column_int64(s, 5);
        r.error_retryable = sqlite3_column_int(s, 6) != 0;
        r.prompt_tokens = sqlite3_column_int64(s, 7);
        r.completion_tokens = sqlite3_column_int64(s, 8);
        r.cost_usd = sqlite3_column_double(s, 9);
        r.custom_id = (const char *)sqlite3_column_text(s, 10);
        if (!r.custom_id)
            r.custom_id = "";
        if (fn(&r, arg))
            break;
        n++;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        s_fail(self, "result each");
        n = -1;
    }
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return n;
}

int llmq_batch_store_result_count(llmq_batch_store_t *self, int64_t bid,
                                  int64_t *done, int64_t *failed)
{
    sqlite3_stmt *s = self->stmt[ST_RESULT_COUNT];
    sqlite3_bind_int64(s, 1, s_key(bid, 0));
    sqlite3_bind_int64(s, 2, s_key(bid, S_MAX_INDEX));
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW) {
        if (done)
            *done = sqlite3_column_int64(s, 0);
        if (failed)
            *failed = sqlite3_column_int64(s, 1);
    } else
        s_fail(self, "result count");
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc == SQLITE_ROW ? 0 : -1;
}

/*  ---- provider jobs ---------------------------------------------------- */

static void s_job_bind(sqlite3_stmt *s, const llmq_batch_job_t *j)
{
    s_bind_text(s, 1, j->id);
    sqlite3_bind_int64(s, 2, j->bid);
    s_bind_text(s, 3, j->pool);
    s_bind_text(s, 4, j->provider);
    s_bind_text(s, 5, llmq_job_state_name(j->state));
    s_bind_text(s, 6, j->provider_state);
    s_bind_text(s, 7, j->provider_batch);
    s_bind_text(s, 8, j->input_file);
    s_bind_text(s, 9, j->output_file);
    s_bind_text(s, 10, j->error_file);
    sqlite3_bind_int64(s, 11, j->first);
    sqlite3_bind_int64(s, 12, j->count);
    sqlite3_bind_int64(s, 13, j->submitted_ms);
    sqlite3_bind_int64(s, 14, j->updated_ms);
    sqlite3_bind_int64(s, 15, j->attempts);
    sqlite3_bind_int64(s, 16, j->done);
    sqlite3_bind_int64(s, 17, j->failed);
}

static void s_job_read(sqlite3_stmt *s, llmq_batch_job_t *j)
{
    memset(j, 0, sizeof *j);
    s_copy(j->id, sizeof j->id, sqlite3_column_text(s, 0));
    j->bid = sqlite3_column_int64(s, 1);
    s_copy(j->pool, sizeof j->pool, sqlite3_column_text(s, 2));
    s_copy(j->provider, sizeof j->provider, sqlite3_column_text(s, 3));
    j->state = LLMQ_JOB_FAILED; /* a state this broker does not know */
    llmq_job_state_parse((const char *)sqlite3_column_text(s, 4), &j->state);
    s_copy(j->provider_state, sizeof j->provider_state,
           sqlite3_column_text(s, 5));
    s_copy(j->provider_batch, sizeof j->provider_batch,
           sqlite3_column_text(s, 6));
    s_copy(j->input_file, sizeof j->input_file, sqlite3_column_text(s, 7));
    s_copy(j->output_file, sizeof j->output_file, sqlite3_column_text(s, 8));
    s_copy(j->error_file, sizeof j->error_file, sqlite3_column_text(s, 9));
    j->first = sqlite3_column_int64(s, 10);
    j->count = sqlite3_column_int64(s, 11);
    j->submitted_ms = sqlite3_column_int64(s, 12);
    j->updated_ms = sqlite3_column_int64(s, 13);
    j->attempts = sqlite3_column_int64(s, 14);
    j->done = sqlite3_column_int64(s, 15);
    j->failed = sqlite3_column_int64(s, 16);
}

int llmq_batch_store_job_insert(llmq_batch_store_t *self,
                                const llmq_batch_job_t *job)
{
    sqlite3_stmt *s = self->stmt[ST_JOB_INSERT];
    s_job_bind(s, job);
    int rc = sqlite3_step(s);
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    if (rc != SQLITE_DONE) {
        if (rc != SQLITE_CONSTRAINT)
            s_fail(self, "job insert");
        return -1;
    }
    return 0;
}

int llmq_batch_store_job_update(llmq_batch_store_t *self,
                                const llmq_batch_job_t *job)
{
    s_job_bind(self->stmt[ST_JOB_UPDATE], job);
    if (s_step_done(self, ST_JOB_UPDATE))
        return -1;
    return sqlite3_changes(self->db) > 0 ? 0 : -1;
}

int llmq_batch_store_job_get(llmq_batch_store_t *self, const char *id,
                             llmq_batch_job_t *job)
{
    sqlite3_stmt *s = self->stmt[ST_JOB_GET];
    s_bind_text(s, 1, id);
    int rc = sqlite3_step(s);
    if (rc == SQLITE_ROW)
        s_job_read(s, job);
    else if (rc != SQLITE_DONE)
        s_fail(self, "job get");
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return rc == SQLITE_ROW ? 0 : -1;
}

long llmq_batch_store_job_each(llmq_batch_store_t *self, int64_t bid,
                               llmq_batch_job_fn *fn, void *arg)
{
    sqlite3_stmt *s = self->stmt[bid > 0 ? ST_JOB_EACH_BATCH : ST_JOB_EACH_ALL];
    if (bid > 0)
        sqlite3_bind_int64(s, 1, bid);
    long n = 0;
    int rc;
    llmq_batch_job_t job;
    while ((rc = sqlite3_step(s)) == SQLITE_ROW) {
        s_job_read(s, &job);
        n++;
        if (fn(&job, arg))
            break;
    }
    if (rc != SQLITE_ROW && rc != SQLITE_DONE) {
        s_fail(self, "job each");
        n = -1;
    }
    sqlite3_reset(s);
    sqlite3_clear_bindings(s);
    return n;
}

/*  ---- selftest --------------------------------------------------------- */

/*  Selftest checks stay on in release builds (NDEBUG would drop assert()
    and the side effects inside it). */
#include "llmq_check.h"
#define S_CHECK(expr) LLMQ_CHECK(expr)

static int64_t s_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

typedef struct {
    int64_t next; /* index expected next */
    long bad;     /* rows out of order or wrong */
    long bytes;
} s_check_t;

static int s_test_item_fn(int64_t index, const char *custom_id,
                          const void *body, size_t body_size, void *arg)
{
    s_check_t *c = arg;
    char want[32];
    snprintf(want, sizeof want, "c%lld", (long long)index);
    if (index < c->next || strcmp(custom_id, want) != 0 || body_size < 8 ||
        memcmp(body,
               "\xa6"
               "body",
               5) != 0)
        c->bad++;
    c->next = index + 1;
    c->bytes += (long)body_size;
    return 0;
}

static int s_test_result_fn(const llmq_batch_result_t *r, void *arg)
{
    s_check_t *c = arg;
    char want[32];
    snprintf(want, sizeof want, "c%lld", (long long)r->index);
    if (r->index != c->next || strcmp(r->custom_id, want) != 0)
        c->bad++;
    if (!r->ok && (!r->error_code || strcmp(r->error_code, "timeout")))
        c->bad++;
    c->next = r->index + 1;
    c->bytes += (long)r->body_size;
    return 0;
}

static int s_test_stop_fn(const llmq_batch_result_t *r, void *arg)
{
    (void)r;
    int *left = arg;
    return --*left < 0;
}

static int s_test_count_batch(const llmq_batch_rec_t *rec, void *arg)
{
    (void)rec;
    (*(int *)arg)++;
    return 0;
}

static int s_test_count_job(const llmq_batch_job_t *job, void *arg)
{
    (void)job;
    (*(int *)arg)++;
    return 0;
}

static void s_test_body(char *buf, size_t size, int64_t index)
{
    /*  A msgpack str: 0xa6 "body" + filler; contents do not matter to the
        store, only that bytes come back identical. */
    memset(buf, 'x', size);
    memcpy(buf,
           "\xa6"
           "body",
           5);
    snprintf(buf + 5, size - 5, "%08lld", (long long)index);
}

/*  The selftest's state from step to step. */
typedef struct {
    char dir[32];              /* the temp dir */
    char path[256];            /* the store's file in it */
    llmq_batch_store_t *store; /* the store under test */
    llmq_batch_rec_t rec;      /* batch b1 */
    char body[200];            /* the last item body written */
    int64_t n;                 /* b1's items */
    long stored;               /* b1's results stored */
    int64_t insert_us;         /* time to insert b1's items */
    int64_t read_us;           /* time to read them */
    int64_t results_us;        /* time to store b1's results */
    int64_t result_read_us;    /* time to read them after the gap */
} s_test_fx_t;

/*  Items from..to-1 of bid with ids "c<index>" and s_test_body bodies (in
    body); returns how many inserts failed. */
static int s_test_insert(llmq_batch_store_t *store, int64_t bid, int64_t from,
                         int64_t to, char *body, size_t size)
{
    int failed = 0;
    for (int64_t i = from; i < to; i++) {
        char cid[32];
        snprintf(cid, sizeof cid, "c%lld", (long long)i);
        s_test_body(body, size, i);
        failed +=
            llmq_batch_store_item_insert(store, bid, i, cid, body, size) != 0;
    }
    return failed;
}

/*  A batch row round-trips; a duplicate id is refused. */
static void s_test_batch_row(s_test_fx_t *fx)
{
    llmq_batch_rec_t *rec = &fx->rec;
    snprintf(rec->id, sizeof rec->id, "b1");
    snprintf(rec->mode, sizeof rec->mode, "realtime");
    snprintf(rec->model, sizeof rec->model, "gpt-4o-mini");
    rec->state = LLMQ_BATCH_VALIDATING;
    rec->priority = 5;
    rec->created_ms = 1234;
    S_CHECK(llmq_batch_store_batch_insert(fx->store, rec) == 0);
    S_CHECK(rec->bid > 0);
    llmq_batch_rec_t dup = *rec;
    S_CHECK(llmq_batch_store_batch_insert(fx->store, &dup) == -1);
    llmq_batch_rec_t got;
    S_CHECK(llmq_batch_store_batch_get(fx->store, "b1", &got) == 0);
    S_CHECK(got.bid == rec->bid && got.priority == 5);
    S_CHECK(streq(got.model, "gpt-4o-mini") && !got.closed);
    S_CHECK(llmq_batch_store_batch_get(fx->store, "nope", &got) == -1);
}

/*  100,000 items in one transaction (timed); a duplicate index is refused
    (the caller's seq logic prevents it); the add record; a read back. */
static void s_test_items(s_test_fx_t *fx)
{
    llmq_batch_store_t *store = fx->store;
    int64_t bid = fx->rec.bid, n = fx->n;
    int64_t t0 = s_now_us();
    S_CHECK(llmq_batch_store_begin(store) == 0);
    S_CHECK(llmq_batch_store_begin(store) == 0); /* nested: no-op */
    S_CHECK(s_test_insert(store, bid, 0, n, fx->body, sizeof fx->body) == 0);
    S_CHECK(llmq_batch_store_add_record(store, bid, 1, 0, n) == 0);
    fx->rec.total = n;
    S_CHECK(llmq_batch_store_batch_update(store, &fx->rec) == 0);
    S_CHECK(llmq_batch_store_commit(store) == 0);
    fx->insert_us = s_now_us() - t0;
    S_CHECK(llmq_batch_store_item_insert(store, bid, 5, "c5", fx->body,
                                         sizeof fx->body) == -1);
    S_CHECK(llmq_batch_store_item_insert(store, bid, -1, "x", fx->body,
                                         sizeof fx->body) == -1);

    int64_t first = -1, accepted = -1;
    S_CHECK(llmq_batch_store_add_lookup(store, bid, 1, &first, &accepted) == 0);
    S_CHECK(first == 0 && accepted == n);
    S_CHECK(llmq_batch_store_add_lookup(store, bid, 2, NULL, NULL) == -1);

    s_check_t check = {0};
    int64_t t2 = s_now_us();
    S_CHECK(llmq_batch_store_item_each(store, bid, 0, -1, false, s_test_item_fn,
                                       &check) == n);
    fx->read_us = s_now_us() - t2;
    S_CHECK(check.bad == 0 && check.next == n);
}

/*  Results: every even item ok, every 7th failed, out of order (timed);
    a second result for the same item is dropped. */
static void s_test_results_put(s_test_fx_t *fx)
{
    int64_t t0 = s_now_us();
    S_CHECK(llmq_batch_store_begin(fx->store) == 0);
    for (int64_t i = fx->n - 1; i >= 0; i--) {
        if (i == 500)
            continue; /* a gap */
        llmq_batch_result_t r = {.index = i, .ok = i % 7 != 0};
        if (r.ok) {
            r.body = fx->body;
            r.body_size = 100;
            r.prompt_tokens = 10;
            r.completion_tokens = 20;
            r.cost_usd = 0.001;
        } else {
            r.error_code = "timeout";
            r.error_message = "took too long";
            r.error_status = 504;
            r.error_retryable = true;
        }
        int rc = llmq_batch_store_result_put(fx->store, fx->rec.bid, &r);
        S_CHECK(rc == 1);
        fx->stored++;
    }
    S_CHECK(llmq_batch_store_commit(fx->store) == 0);
    fx->results_us = s_now_us() - t0;
    llmq_batch_result_t again = {
        .index = 3, .ok = false, .error_code = "timeout"};
    S_CHECK(llmq_batch_store_result_put(fx->store, fx->rec.bid, &again) == 0);
}

/*  The contiguous read stops at the first gap; from after it (timed) to
    the end; the non-contiguous read from 0 sees every stored result; the
    counts; pending items: only the gap. */
static void s_test_results_read(s_test_fx_t *fx)
{
    llmq_batch_store_t *store = fx->store;
    int64_t bid = fx->rec.bid;
    s_check_t check = {0};
    S_CHECK(llmq_batch_store_result_each(store, bid, 0, true, s_test_result_fn,
                                         &check) == 500);
    S_CHECK(check.bad == 0 && check.next == 500);
    memset(&check, 0, sizeof check);
    check.next = 501;
    int64_t t4 = s_now_us();
    S_CHECK(llmq_batch_store_result_each(store, bid, 501, true,
                                         s_test_result_fn,
                                         &check) == fx->n - 501);
    fx->result_read_us = s_now_us() - t4;
    S_CHECK(check.bad == 0);
    int left = 1000;
    S_CHECK(llmq_batch_store_result_each(store, bid, 0, false, s_test_stop_fn,
                                         &left) == 1000);
    int64_t done = 0, failed = 0;
    S_CHECK(llmq_batch_store_result_count(store, bid, &done, &failed) == 0);
    S_CHECK(done == fx->stored && failed == (fx->n + 6) / 7);
    memset(&check, 0, sizeof check);
    check.next = 0;
    S_CHECK(llmq_batch_store_item_each(store, bid, 0, -1, true, s_test_item_fn,
                                       &check) == 1);
    S_CHECK(check.next == 501);
}

/*  Jobs: insert, update, get, an unknown one; then the store is closed
    (twice: destroy is idempotent). */
static void s_test_jobs(s_test_fx_t *fx)
{
    llmq_batch_job_t job = {0};
    snprintf(job.id, sizeof job.id, "job-1");
    job.bid = fx->rec.bid;
    job.state = LLMQ_JOB_SUBMITTING;
    snprintf(job.provider, sizeof job.provider, "openai");
    job.first = 0;
    job.count = 50000;
    S_CHECK(llmq_batch_store_job_insert(fx->store, &job) == 0);
    S_CHECK(llmq_batch_store_job_insert(fx->store, &job) == -1);
    snprintf(job.provider_batch, sizeof job.provider_batch, "batch_abc");
    job.state = LLMQ_JOB_RUNNING;
    S_CHECK(llmq_batch_store_job_update(fx->store, &job) == 0);
    llmq_batch_job_t gj;
    S_CHECK(llmq_batch_store_job_get(fx->store, "job-1", &gj) == 0);
    S_CHECK(streq(gj.provider_batch, "batch_abc") && gj.count == 50000);
    llmq_batch_job_t ghost = job;
    snprintf(ghost.id, sizeof ghost.id, "ghost");
    S_CHECK(llmq_batch_store_job_update(fx->store, &ghost) == -1);
    int jobs = 0;
    S_CHECK(llmq_batch_store_job_each(fx->store, fx->rec.bid, s_test_count_job,
                                      &jobs) == 1);
    S_CHECK(jobs == 1);
    llmq_batch_store_destroy(&fx->store);
    S_CHECK(fx->store == NULL);
    llmq_batch_store_destroy(&fx->store);
}

/*  Reopen: everything is still there. */
static void s_test_reopen(s_test_fx_t *fx)
{
    fx->store = llmq_batch_store_new(fx->path);
    S_CHECK(fx->store);
    llmq_batch_rec_t got;
    S_CHECK(llmq_batch_store_batch_get(fx->store, "b1", &got) == 0);
    S_CHECK(got.total == fx->n);
    llmq_batch_job_t gj;
    S_CHECK(llmq_batch_store_job_get(fx->store, "job-1", &gj) == 0);
    S_CHECK(gj.state == LLMQ_JOB_RUNNING);
    int64_t done = 0;
    S_CHECK(llmq_batch_store_result_count(fx->store, fx->rec.bid, &done,
                                          NULL) == 0);
    S_CHECK(done == fx->stored);
    llmq_batch_store_destroy(&fx->store);
}

/*  The crashing child: a second batch and its items, half committed,
    then _exit() in the middle of the next transaction. */
static void s_test_crash_child(s_test_fx_t *fx)
{
    llmq_batch_store_t *cs = llmq_batch_store_new(fx->path);
    if (!cs)
        _exit(3);
    llmq_batch_rec_t b2 = {0};
    snprintf(b2.id, sizeof b2.id, "b2");
    b2.state = LLMQ_BATCH_VALIDATING;
    llmq_batch_store_begin(cs);
    llmq_batch_store_batch_insert(cs, &b2);
    s_test_insert(cs, b2.bid, 0, 1000, fx->body, sizeof fx->body);
    llmq_batch_store_add_record(cs, b2.bid, 1, 0, 1000);
    llmq_batch_store_commit(cs);
    llmq_batch_store_begin(cs);
    s_test_insert(cs, b2.bid, 1000, 2000, fx->body, sizeof fx->body);
    _exit(0); /* no commit, no close: as kill -9 would leave it */
}

/*  Crash simulation: the parent reopens after the child died and sees
    exactly the committed half: no torn rows, nothing from the open
    transaction; the store is writable after the crash. */
static void s_test_crash(s_test_fx_t *fx)
{
    fflush(stdout);
    pid_t pid = fork();
    S_CHECK(pid >= 0);
    if (pid == 0)
        s_test_crash_child(fx);
    int status = 0;
    S_CHECK(waitpid(pid, &status, 0) == pid);
    S_CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    fx->store = llmq_batch_store_new(fx->path);
    S_CHECK(fx->store);
    llmq_batch_rec_t b2;
    S_CHECK(llmq_batch_store_batch_get(fx->store, "b2", &b2) == 0);
    s_check_t check = {0};
    S_CHECK(llmq_batch_store_item_each(fx->store, b2.bid, 0, -1, false,
                                       s_test_item_fn, &check) == 1000);
    S_CHECK(check.bad == 0);
    int64_t accepted = -1;
    S_CHECK(llmq_batch_store_add_lookup(fx->store, b2.bid, 1, NULL,
                                        &accepted) == 0);
    S_CHECK(accepted == 1000);
    S_CHECK(llmq_batch_store_item_insert(fx->store, b2.bid, 1000, "c1000",
                                         fx->body, sizeof fx->body) == 0);
}

/*  Delete removes a batch and everything it owns. */
static void s_test_delete(s_test_fx_t *fx)
{
    llmq_batch_store_t *store = fx->store;
    int batches = 0;
    S_CHECK(llmq_batch_store_batch_each(store, s_test_count_batch, &batches) ==
            2);
    S_CHECK(llmq_batch_store_batch_delete(store, fx->rec.bid) == 0);
    llmq_batch_rec_t got;
    S_CHECK(llmq_batch_store_batch_get(store, "b1", &got) == -1);
    int64_t done = -1;
    S_CHECK(llmq_batch_store_result_count(store, fx->rec.bid, &done, NULL) ==
            0);
    S_CHECK(done == 0);
    int jobs = 0;
    S_CHECK(llmq_batch_store_job_each(store, 0, s_test_count_job, &jobs) == 0);
    llmq_batch_store_destroy(&fx->store);
}

/*  A file that is not a batch store is refused, not modified. */
static void s_test_foreign(s_test_fx_t *fx)
{
    char other[256];
    snprintf(other, sizeof other, "%s/other.db", fx->dir);
    sqlite3 *odb = NULL;
    S_CHECK(sqlite3_open(other, &odb) == SQLITE_OK);
    S_CHECK(sqlite3_exec(odb, "CREATE TABLE t (x)", NULL, NULL, NULL) ==
            SQLITE_OK);
    sqlite3_close(odb);
    S_CHECK(llmq_batch_store_new(other) == NULL);
    char junk[256];
    snprintf(junk, sizeof junk, "%s/junk.db", fx->dir);
    FILE *f = fopen(junk, "w");
    S_CHECK(f);
    for (int i = 0; i < 200; i++)
        fputs("this is not sqlite ", f);
    fclose(f);
    S_CHECK(llmq_batch_store_new(junk) == NULL);
    S_CHECK(llmq_batch_store_new("/nonexistent-dir/x/y.db") == NULL);
}

/*  Numbers, not assertions: speed belongs in bench/, but the store's
    throughput is worth seeing when asked. */
static void s_test_numbers(s_test_fx_t *fx)
{
    int64_t n = fx->n;
    printf("\n   %lld items x %zu B body:", (long long)n, sizeof fx->body);
    printf(" insert %.0f items/s, read %.0f items/s,",
           n * 1e6 / (double)(fx->insert_us ? fx->insert_us : 1),
           n * 1e6 / (double)(fx->read_us ? fx->read_us : 1));
    printf(" result put %.0f/s, result read %.0f/s\n   ",
           fx->stored * 1e6 / (double)(fx->results_us ? fx->results_us : 1),
           (n - 501) * 1e6 /
               (double)(fx->result_read_us ? fx->result_read_us : 1));
}

int llmq_batch_store_test(bool verbose)
{
    printf(" * llmq_batch_store: ");
    s_test_fx_t fx = {.n = 100000};
    snprintf(fx.dir, sizeof fx.dir, "/tmp/llmq-batch-store-XXXXXX");
    S_CHECK(mkdtemp(fx.dir));
    snprintf(fx.path, sizeof fx.path, "%s/batches.db", fx.dir);
    fx.store = llmq_batch_store_new(fx.path);
    S_CHECK(fx.store);
    //  The steps, in order: each goes on from where the last one left.
    static void (*const steps[])(s_test_fx_t *) = {
        s_test_batch_row,    s_test_items,  s_test_results_put,
        s_test_results_read, s_test_jobs,   s_test_reopen,
        s_test_crash,        s_test_delete, s_test_foreign};
    for (size_t i = 0; i < sizeof steps / sizeof steps[0]; i++)
        steps[i](&fx);
    if (verbose || getenv("LLMQ_BENCH"))
        s_test_numbers(&fx);

    /*  Clean the temp dir. */
    if (llmq_check_rmtree(fx.dir) != 0)
        llmq_log(NULL, LLMQ_LOG_WARN, "test_cleanup_failed",
                 LLMQ_LOG_STR("dir", fx.dir), LLMQ_LOG_END);
    printf("OK\n");
    return 0;
}
