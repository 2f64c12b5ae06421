/*  llmq_cache.c - the broker's response cache (PROTOCOL.md 3.7).

    Design: one SQLite connection (WAL, synchronous=OFF: a cache that loses
    its last writes in a power cut only misses them; the writes of one turn
    of the broker's loop share a transaction, llmq_cache_flush), one table
    of answers by key (llmq_cache) and the hash secret (llmq_cache_meta).
    LRU order is a use counter (`used`) set on a store and on a hit of an
    entry not already among the most recent quarter (approximate LRU, so a
    hot entry costs no write), kept in memory from its maximum at open, so
    it runs across restarts; bytes and entries are kept in memory too
    (summed at open).
    The TTL counts from `created` (wall clock ms). Flights are in memory
    only: a restart forgets them, and the clients' resends (3.3) start
    them again.
*/
#include "llmq_cache.h"
#include "llmq_check.h"
#include "llmq_log.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define s_KEY ((int)sizeof(llmq_cache_key_t)) //  Key bytes

struct _llmq_cache_flight_t {
    llmq_cache_key_t key;
    char hex[2 * 16 + 1]; //  Key in the flights table
    zlistx_t *waiters;    //  Borrowed pointers, oldest first
    void *leader;         //  Borrowed, NULL while orphaned
    void *orphan;         //  Handle in orphans, or NULL
};

struct _llmq_cache_t {
    sqlite3 *db;
    sqlite3_stmt *get, *touch, *put, *size_of, *del, *oldest;
    size_t max_bytes;
    int64_t ttl_ms;
    int64_t use_clock;  //  LRU counter, from MAX(used) at open
    int64_t next_sweep; //  Wall ms of the next TTL sweep
    bool write_failed;  //  Logged once
    bool in_tx;         //  Writes since the last llmq_cache_flush
    llmq_cache_stats_t st;
    zhashx_t *flights;  //  hex key -> llmq_cache_flight_t
    zlistx_t *orphans;  //  Flights without a leader (borrowed)
    uint8_t secret[16]; //  SipHash key of this file (llmq_cache_meta)
};

//  --------------------------------------------------------------------------
//  SipHash-2-4 with 128-bit output (Aumasson, Bernstein 2012), keyed with
//  a random secret of the cache file: fast (a 1 KB body costs a few
//  thousand instructions) and, without the secret, nobody can make two
//  requests share a key (a shared cache must not be poisonable).

typedef struct {
    uint64_t v[4];
    uint8_t buf[8];
    size_t n;       //  Bytes in buf
    uint64_t total; //  Bytes hashed
} s_sip_t;

#define s_ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

static void s_sip_rounds(uint64_t *v, int n)
{
    for (int i = 0; i < n; i++) {
        v[0] += v[1];
        v[1] = s_ROTL(v[1], 13) ^ v[0];
        v[0] = s_ROTL(v[0], 32);
        v[2] += v[3];
        v[3] = s_ROTL(v[3], 16) ^ v[2];
        v[0] += v[3];
        v[3] = s_ROTL(v[3], 21) ^ v[0];
        v[2] += v[1];
        v[1] = s_ROTL(v[1], 17) ^ v[2];
        v[2] = s_ROTL(v[2], 32);
    }
}

static uint64_t s_le64(const uint8_t *p)
{
    uint64_t x = 0;
    for (int i = 7; i >= 0; i--)
        x = x << 8 | p[i];
    return x;
}

static void s_sip_init(s_sip_t *s, const uint8_t secret[16])
{
    uint64_t k0 = s_le64(secret), k1 = s_le64(secret + 8);
    s->v[0] = 0x736f6d6570736575ULL ^ k0;
    s->v[1] = 0x646f72616e646f6dULL ^ k1 ^ 0xee;
    s->v[2] = 0x6c7967656e657261ULL ^ k0;
    s->v[3] = 0x7465646279746573ULL ^ k1;
    s->n = 0;
    s->total = 0;
}

static void s_sip_word(s_sip_t *s, uint64_t m)
{
    s->v[3] ^= m;
    s_sip_rounds(s->v, 2);
    s->v[0] ^= m;
}

static void s_sip_add(s_sip_t *s, const void *data, size_t size)
{
    const uint8_t *p = (const uint8_t *)data;
    s->total += size;
    while (size && s->n) {
        s->buf[s->n++] = *p++;
        size--;
        if (s->n == 8) {
            s_sip_word(s, s_le64(s->buf));
            s->n = 0;
        }
    }
    if (s->n)
        return; //  All of it went into buf
    for (; size >= 8; p += 8, size -= 8)
        s_sip_word(s, s_le64(p));
    memcpy(s->buf, p, size);
    s->n = size;
}

static void s_sip_end(s_sip_t *s, uint8_t out[16])
{
    uint64_t b = (uint64_t)s->total << 56;
    for (size_t i = 0; i < s->n; i++)
        b |= (uint64_t)s->buf[i] << (8 * i);
    s_sip_word(s, b);
    s->v[2] ^= 0xee;
    for (int half = 0; half < 2; half++) {
        if (half)
            s->v[1] ^= 0xdd;
        s_sip_rounds(s->v, 4);
        uint64_t h = s->v[0] ^ s->v[1] ^ s->v[2] ^ s->v[3];
        for (int i = 0; i < 8; i++)
            out[8 * half + i] = (uint8_t)(h >> (8 * i));
    }
}

void llmq_cache_key(llmq_cache_t *self, llmq_cache_key_t *key, const char *op,
                    const char *model, const char *pool, const char *tenant,
                    const void *body, size_t size)
{
    //  Each string with its NUL: no two field splits give the same bytes.
    const char *fields[] = {op ? op : "", model ? model : "", pool ? pool : "",
                            tenant ? tenant : ""};
    s_sip_t s;
    s_sip_init(&s, self->secret);
    for (size_t i = 0; i < 4; i++)
        s_sip_add(&s, fields[i], strlen(fields[i]) + 1);
    if (size)
        s_sip_add(&s, body, size);
    s_sip_end(&s, key->bytes);
}

//  --------------------------------------------------------------------------
//  The file.

static int64_t s_now_ms(void)
{
    return zclock_time();
}

static const char *s_schema =
    "CREATE TABLE IF NOT EXISTS llmq_cache("
    " id INTEGER PRIMARY KEY, key BLOB NOT NULL UNIQUE, body BLOB NOT NULL,"
    " prompt INTEGER, completion INTEGER, total INTEGER, cost REAL,"
    " created INTEGER NOT NULL, used INTEGER NOT NULL);"
    "CREATE INDEX IF NOT EXISTS llmq_cache_used ON llmq_cache(used);"
    "CREATE INDEX IF NOT EXISTS llmq_cache_created ON llmq_cache(created);"
    "CREATE TABLE IF NOT EXISTS llmq_cache_meta(k TEXT PRIMARY KEY, v BLOB);";

//  The file is an llmq cache, or new: no tables but ours. Returns 0, or -1
//  with the reason (not SQLite, corrupt, someone else's database).
static int s_check_file(sqlite3 *db, char *err, size_t errlen)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db,
                                "SELECT count(*) FROM sqlite_master WHERE "
                                "type = 'table' AND name NOT IN "
                                "('llmq_cache', 'llmq_cache_meta')",
                                -1, &st, NULL);
    if (rc == SQLITE_OK)
        rc = sqlite3_step(st);
    int64_t others = rc == SQLITE_ROW ? sqlite3_column_int64(st, 0) : -1;
    if (rc != SQLITE_ROW)
        snprintf(err, errlen, "%s", sqlite3_errmsg(db));
    else if (others > 0)
        snprintf(err, errlen,
                 "it holds other tables (someone else's database)");
    sqlite3_finalize(st);
    return rc == SQLITE_ROW && others == 0 ? 0 : -1;
}

static int s_prepare(llmq_cache_t *self)
{
    struct {
        sqlite3_stmt **st;
        const char *sql;
    } all[] = {
        {&self->get, "SELECT body, prompt, completion, total, cost, created, "
                     "used FROM llmq_cache WHERE key = ?"},
        {&self->touch, "UPDATE llmq_cache SET used = ? WHERE key = ?"},
        {&self->put,
         "INSERT OR REPLACE INTO llmq_cache(key, body, prompt, completion, "
         "total, cost, created, used) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"},
        {&self->size_of, "SELECT length(body) FROM llmq_cache WHERE key = ?"},
        {&self->del, "DELETE FROM llmq_cache WHERE key = ?"},
        {&self->oldest, "SELECT key, length(body) FROM llmq_cache "
                        "ORDER BY used LIMIT 64"},
    };
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        if (sqlite3_prepare_v2(self->db, all[i].sql, -1, all[i].st, NULL))
            return -1;
    return 0;
}

//  One integer (or two) from a query without parameters.
static int s_query2(sqlite3 *db, const char *sql, int64_t *a, int64_t *b)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);
    if (rc == SQLITE_OK && (rc = sqlite3_step(st)) == SQLITE_ROW) {
        *a = sqlite3_column_int64(st, 0);
        if (b)
            *b = sqlite3_column_int64(st, 1);
        rc = SQLITE_OK;
    }
    sqlite3_finalize(st);
    return rc == SQLITE_OK ? 0 : -1;
}

//  The file's hash secret: read, or made (16 random bytes) and stored.
static int s_secret(llmq_cache_t *self)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(
        self->db, "SELECT v FROM llmq_cache_meta WHERE k = 'secret'", -1, &st,
        NULL);
    bool found = rc == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW &&
                 sqlite3_column_bytes(st, 0) == 16;
    if (found)
        memcpy(self->secret, sqlite3_column_blob(st, 0), 16);
    sqlite3_finalize(st);
    if (found)
        return 0;
    FILE *f = fopen("/dev/urandom", "rb");
    size_t got = f ? fread(self->secret, 1, 16, f) : 0;
    if (f)
        fclose(f);
    if (got != 16 ||
        sqlite3_prepare_v2(self->db,
                           "INSERT OR REPLACE INTO llmq_cache_meta(k, v) "
                           "VALUES ('secret', ?)",
                           -1, &st, NULL))
        return -1;
    sqlite3_bind_blob(st, 1, self->secret, 16, SQLITE_STATIC);
    rc = sqlite3_step(st);
    sqlite3_finalize(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

static void s_sweep(llmq_cache_t *self, int64_t now);
static void s_evict(llmq_cache_t *self, size_t need);

//  Open the database, check it is ours, create the table, load the sums.
static int s_open(llmq_cache_t *self, const char *path, char *err,
                  size_t errlen)
{
    if (sqlite3_open_v2(path, &self->db,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE, NULL)) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(self->db));
        return -1;
    }
    sqlite3_busy_timeout(self->db, 2000);
    if (s_check_file(self->db, err, errlen))
        return -1;
    char *msg = NULL;
    if (sqlite3_exec(self->db,
                     "PRAGMA journal_mode=WAL; PRAGMA synchronous=OFF;", NULL,
                     NULL, &msg) ||
        sqlite3_exec(self->db, s_schema, NULL, NULL, &msg)) {
        snprintf(err, errlen, "%s", msg ? msg : sqlite3_errmsg(self->db));
        sqlite3_free(msg);
        return -1;
    }
    if (s_secret(self) || s_prepare(self) ||
        s_query2(self->db,
                 "SELECT count(*), coalesce(sum(length(body)), 0) "
                 "FROM llmq_cache",
                 &self->st.entries, &self->st.bytes) ||
        s_query2(self->db, "SELECT coalesce(max(used), 0) FROM llmq_cache",
                 &self->use_clock, NULL)) {
        snprintf(err, errlen, "%s", sqlite3_errmsg(self->db));
        return -1;
    }
    return 0;
}

llmq_cache_t *llmq_cache_new(const char *path, size_t max_bytes, int64_t ttl_ms,
                             char *err, size_t errlen)
{
    char reason[200] = "out of memory";
    llmq_cache_t *self = (llmq_cache_t *)calloc(1, sizeof(*self));
    if (self) {
        self->max_bytes = max_bytes ? max_bytes : LLMQ_CACHE_MAX_BYTES_DEFAULT;
        self->ttl_ms = ttl_ms > 0 ? ttl_ms : LLMQ_CACHE_TTL_DEFAULT_MS;
        self->flights = zhashx_new();
        self->orphans = zlistx_new();
    }
    if (!self || !self->flights || !self->orphans ||
        s_open(self, path, reason, sizeof(reason))) {
        snprintf(err, errlen, "cache file %s: %s (not an llmq cache?)", path,
                 reason);
        llmq_cache_destroy(&self);
        return NULL;
    }
    s_sweep(self, s_now_ms());
    s_evict(self, 0);
    return self;
}

void llmq_cache_destroy(llmq_cache_t **self_p)
{
    llmq_cache_t *self = *self_p;
    if (!self)
        return;
    *self_p = NULL;
    llmq_cache_flush(self);
    sqlite3_stmt *all[] = {self->get,     self->touch, self->put,
                           self->size_of, self->del,   self->oldest};
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        sqlite3_finalize(all[i]);
    if (self->db)
        sqlite3_close(self->db);
    if (self->flights) {
        llmq_cache_flight_t *f =
            (llmq_cache_flight_t *)zhashx_first(self->flights);
        for (; f; f = (llmq_cache_flight_t *)zhashx_next(self->flights)) {
            zlistx_destroy(&f->waiters);
            free(f);
        }
        zhashx_destroy(&self->flights);
    }
    zlistx_destroy(&self->orphans);
    free(self);
}

//  --------------------------------------------------------------------------
//  Bounds.

//  Writes go into one transaction until llmq_cache_flush (the broker calls
//  it once per loop turn): a burst of misses shares its pages' writes.
static void s_write(llmq_cache_t *self)
{
    if (!self->in_tx &&
        sqlite3_exec(self->db, "BEGIN", NULL, NULL, NULL) == SQLITE_OK)
        self->in_tx = true;
}

void llmq_cache_flush(llmq_cache_t *self)
{
    if (self && self->in_tx) {
        self->in_tx = false;
        if (sqlite3_exec(self->db, "COMMIT", NULL, NULL, NULL) != SQLITE_OK) {
            //  Disk full or the like: what was counted did not happen.
            sqlite3_exec(self->db, "ROLLBACK", NULL, NULL, NULL);
            s_query2(self->db,
                     "SELECT count(*), coalesce(sum(length(body)), 0) "
                     "FROM llmq_cache",
                     &self->st.entries, &self->st.bytes);
        }
    }
}

//  Delete the row of key whose body has size bytes; counts it gone.
static void s_delete(llmq_cache_t *self, const void *key, int64_t size)
{
    s_write(self);
    sqlite3_bind_blob(self->del, 1, key, s_KEY, SQLITE_TRANSIENT);
    int rc = sqlite3_step(self->del);
    sqlite3_reset(self->del);
    if (rc == SQLITE_DONE && sqlite3_changes(self->db) > 0) {
        self->st.entries--;
        self->st.bytes -= size;
    }
}

//  Expired entries out (at most once a second).
static void s_sweep(llmq_cache_t *self, int64_t now)
{
    if (now < self->next_sweep)
        return;
    self->next_sweep = now + 1000;
    char sql[160];
    int64_t n = 0, bytes = 0;
    snprintf(sql, sizeof(sql),
             "SELECT count(*), coalesce(sum(length(body)), 0) FROM "
             "llmq_cache WHERE created <= %" PRId64,
             now - self->ttl_ms);
    if (s_query2(self->db, sql, &n, &bytes) || n == 0)
        return;
    snprintf(sql, sizeof(sql),
             "DELETE FROM llmq_cache WHERE created <= %" PRId64,
             now - self->ttl_ms);
    s_write(self);
    if (sqlite3_exec(self->db, sql, NULL, NULL, NULL) == SQLITE_OK) {
        self->st.entries -= n;
        self->st.bytes -= bytes;
        self->st.expired += (uint64_t)n;
    }
}

//  Least recently used entries out until need more bytes fit.
static void s_evict(llmq_cache_t *self, size_t need)
{
    while (self->st.entries > 0 &&
           (size_t)self->st.bytes + need > self->max_bytes) {
        uint8_t keys[64][s_KEY];
        int64_t sizes[64];
        int n = 0;
        while (n < 64 && sqlite3_step(self->oldest) == SQLITE_ROW) {
            const void *k = sqlite3_column_blob(self->oldest, 0);
            if (k && sqlite3_column_bytes(self->oldest, 0) == s_KEY) {
                memcpy(keys[n], k, s_KEY);
                sizes[n++] = sqlite3_column_int64(self->oldest, 1);
            }
        }
        sqlite3_reset(self->oldest);
        if (n == 0)
            return;
        for (int i = 0;
             i < n && (size_t)self->st.bytes + need > self->max_bytes; i++) {
            s_delete(self, keys[i], sizes[i]);
            self->st.evictions++;
        }
    }
}

//  --------------------------------------------------------------------------
//  Get and put.

//  Read the row under get into the outputs; 0, -1 if expired, -2 if out
//  of memory.
static int s_row(llmq_cache_t *self, int64_t now, void **body, size_t *size,
                 llmq_cache_usage_t *usage)
{
    sqlite3_stmt *st = self->get;
    if (sqlite3_column_int64(st, 5) <= now - self->ttl_ms)
        return -1;
    int n = sqlite3_column_bytes(st, 0);
    const void *data = sqlite3_column_blob(st, 0);
    *body = malloc(n > 0 ? (size_t)n : 1);
    if (!*body)
        return -2;
    if (n > 0)
        memcpy(*body, data, (size_t)n);
    *size = (size_t)n;
    usage->prompt_tokens = sqlite3_column_int64(st, 1);
    usage->completion_tokens = sqlite3_column_int64(st, 2);
    usage->total_tokens = sqlite3_column_int64(st, 3);
    usage->cost_usd = sqlite3_column_double(st, 4);
    return 0;
}

int llmq_cache_get(llmq_cache_t *self, const llmq_cache_key_t *key, void **body,
                   size_t *size, llmq_cache_usage_t *usage)
{
    *body = NULL;
    sqlite3_bind_blob(self->get, 1, key->bytes, s_KEY, SQLITE_STATIC);
    if (sqlite3_step(self->get) != SQLITE_ROW) {
        sqlite3_reset(self->get);
        return -1;
    }
    int64_t stored = sqlite3_column_bytes(self->get, 0);
    int64_t used = sqlite3_column_int64(self->get, 6);
    int rc = s_row(self, s_now_ms(), body, size, usage);
    sqlite3_reset(self->get);
    if (rc == -1) {
        s_delete(self, key->bytes, stored);
        self->st.expired++;
    }
    if (rc)
        return -1;
    self->st.hits++;
    //  Approximate LRU: an entry already the most recently used, or among
    //  the most recently used quarter, is not written again (a hot entry
    //  costs a read, no write).
    if (used == self->use_clock ||
        self->use_clock - used < self->st.entries / 4)
        return 0;
    s_write(self);
    sqlite3_bind_int64(self->touch, 1, ++self->use_clock);
    sqlite3_bind_blob(self->touch, 2, key->bytes, s_KEY, SQLITE_STATIC);
    sqlite3_step(self->touch);
    sqlite3_reset(self->touch);
    return 0;
}

//  Bind and run the INSERT of an answer.
static int s_insert(llmq_cache_t *self, const llmq_cache_key_t *key,
                    const void *body, size_t size,
                    const llmq_cache_usage_t *usage, int64_t now)
{
    sqlite3_stmt *st = self->put;
    sqlite3_bind_blob(st, 1, key->bytes, s_KEY, SQLITE_STATIC);
    sqlite3_bind_blob64(st, 2, size ? body : "", size, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, usage->prompt_tokens);
    sqlite3_bind_int64(st, 4, usage->completion_tokens);
    sqlite3_bind_int64(st, 5, usage->total_tokens);
    sqlite3_bind_double(st, 6, usage->cost_usd);
    sqlite3_bind_int64(st, 7, now);
    sqlite3_bind_int64(st, 8, ++self->use_clock);
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    return rc == SQLITE_DONE ? 0 : -1;
}

int llmq_cache_put(llmq_cache_t *self, const llmq_cache_key_t *key,
                   const void *body, size_t size,
                   const llmq_cache_usage_t *usage)
{
    if (size > self->max_bytes)
        return -1;
    int64_t now = s_now_ms();
    s_sweep(self, now);
    sqlite3_bind_blob(self->size_of, 1, key->bytes, s_KEY, SQLITE_STATIC);
    if (sqlite3_step(self->size_of) == SQLITE_ROW) {
        self->st.entries--;
        self->st.bytes -= sqlite3_column_int64(self->size_of, 0);
    }
    sqlite3_reset(self->size_of);
    s_evict(self, size);
    s_write(self);
    if (s_insert(self, key, body, size, usage, now)) {
        //  The row, if one was there, may be gone or not: recount.
        s_query2(self->db,
                 "SELECT count(*), coalesce(sum(length(body)), 0) "
                 "FROM llmq_cache",
                 &self->st.entries, &self->st.bytes);
        if (!self->write_failed)
            llmq_log(NULL, LLMQ_LOG_WARN, "cache_write_failed",
                     LLMQ_LOG_STR("detail", sqlite3_errmsg(self->db)),
                     LLMQ_LOG_END);
        self->write_failed = true;
        return -1;
    }
    self->st.entries++;
    self->st.bytes += (int64_t)size;
    self->st.stored++;
    return 0;
}

void llmq_cache_count(llmq_cache_t *self, const char *what)
{
    if (streq(what, "miss"))
        self->st.misses++;
    else if (streq(what, "wait"))
        self->st.waits++;
    else if (streq(what, "hit"))
        self->st.hits++;
}

void llmq_cache_stats(llmq_cache_t *self, llmq_cache_stats_t *stats)
{
    if (self)
        *stats = self->st;
    else
        memset(stats, 0, sizeof(*stats));
}

//  --------------------------------------------------------------------------
//  Metrics.

void llmq_cache_metrics_define(llmq_metrics_t *m)
{
    static const struct {
        const char *name;
        llmq_metric_type_t kind;
        const char *help;
    } all[] = {
        {"llmq_broker_cache_hits_total", LLMQ_METRIC_COUNTER,
         "Requests answered from the response cache or its single flight."},
        {"llmq_broker_cache_misses_total", LLMQ_METRIC_COUNTER,
         "Cacheable requests sent to a worker."},
        {"llmq_broker_cache_waits_total", LLMQ_METRIC_COUNTER,
         "Requests that waited for an identical one in flight."},
        {"llmq_broker_cache_evictions_total", LLMQ_METRIC_COUNTER,
         "Cache entries removed, by reason (bytes: LRU, ttl: age)."},
        {"llmq_broker_cache_entries", LLMQ_METRIC_GAUGE,
         "Answers in the response cache."},
        {"llmq_broker_cache_bytes", LLMQ_METRIC_GAUGE,
         "Body bytes in the response cache."},
    };
    for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
        llmq_metrics_define(m, all[i].name, all[i].kind, all[i].help, NULL, 0);
    llmq_cache_metrics_collect(NULL, m);
}

void llmq_cache_metrics_collect(llmq_cache_t *self, llmq_metrics_t *m)
{
    llmq_cache_stats_t st;
    llmq_cache_stats(self, &st);
    const char *bytes[] = {"reason", "bytes", NULL};
    const char *ttl[] = {"reason", "ttl", NULL};
    llmq_metrics_set(m, "llmq_broker_cache_hits_total", NULL, (double)st.hits);
    llmq_metrics_set(m, "llmq_broker_cache_misses_total", NULL,
                     (double)st.misses);
    llmq_metrics_set(m, "llmq_broker_cache_waits_total", NULL,
                     (double)st.waits);
    llmq_metrics_set(m, "llmq_broker_cache_evictions_total", bytes,
                     (double)st.evictions);
    llmq_metrics_set(m, "llmq_broker_cache_evictions_total", ttl,
                     (double)st.expired);
    llmq_metrics_set(m, "llmq_broker_cache_entries", NULL, (double)st.entries);
    llmq_metrics_set(m, "llmq_broker_cache_bytes", NULL, (double)st.bytes);
}

//  --------------------------------------------------------------------------
//  Single flight.

static void s_hex(const llmq_cache_key_t *key, char out[2 * s_KEY + 1])
{
    static const char hex[] = "0123456789abcdef";
    for (int i = 0; i < s_KEY; i++) {
        out[2 * i] = hex[key->bytes[i] >> 4];
        out[2 * i + 1] = hex[key->bytes[i] & 15];
    }
    out[2 * s_KEY] = 0;
}

llmq_cache_flight_t *llmq_cache_flight_find(llmq_cache_t *self,
                                            const llmq_cache_key_t *key)
{
    char hex[2 * s_KEY + 1];
    s_hex(key, hex);
    return (llmq_cache_flight_t *)zhashx_lookup(self->flights, hex);
}

llmq_cache_flight_t *llmq_cache_flight_start(llmq_cache_t *self,
                                             const llmq_cache_key_t *key,
                                             void *leader)
{
    llmq_cache_flight_t *f = (llmq_cache_flight_t *)calloc(1, sizeof(*f));
    if (!f)
        return NULL;
    f->key = *key;
    f->leader = leader;
    s_hex(key, f->hex);
    f->waiters = zlistx_new();
    if (!f->waiters || zhashx_insert(self->flights, f->hex, f)) {
        zlistx_destroy(&f->waiters);
        free(f);
        return NULL;
    }
    return f;
}

const llmq_cache_key_t *llmq_cache_flight_key(llmq_cache_flight_t *flight)
{
    return &flight->key;
}

void *llmq_cache_flight_leader(llmq_cache_flight_t *flight)
{
    return flight->leader;
}

void llmq_cache_flight_lead(llmq_cache_flight_t *flight, void *leader)
{
    flight->leader = leader;
}

void llmq_cache_flight_orphan(llmq_cache_t *self, llmq_cache_flight_t *flight)
{
    flight->leader = NULL;
    if (!flight->orphan)
        flight->orphan = zlistx_add_end(self->orphans, flight);
}

llmq_cache_flight_t *llmq_cache_orphan(llmq_cache_t *self)
{
    llmq_cache_flight_t *f = (llmq_cache_flight_t *)zlistx_first(self->orphans);
    if (f) {
        zlistx_delete(self->orphans, f->orphan);
        f->orphan = NULL;
    }
    return f;
}

llmq_cache_flight_t *llmq_cache_flight_first(llmq_cache_t *self)
{
    return (llmq_cache_flight_t *)zhashx_first(self->flights);
}

void *llmq_cache_flight_join(llmq_cache_flight_t *flight, void *waiter)
{
    return zlistx_add_end(flight->waiters, waiter);
}

void llmq_cache_flight_leave(llmq_cache_flight_t *flight, void *handle)
{
    zlistx_delete(flight->waiters, handle);
}

void *llmq_cache_flight_pop(llmq_cache_flight_t *flight)
{
    void *first = zlistx_first(flight->waiters);
    if (first)
        zlistx_delete(flight->waiters, zlistx_cursor(flight->waiters));
    return first;
}

void llmq_cache_flight_end(llmq_cache_t *self, llmq_cache_flight_t **flight_p)
{
    llmq_cache_flight_t *f = *flight_p;
    if (!f)
        return;
    *flight_p = NULL;
    if (f->orphan)
        zlistx_delete(self->orphans, f->orphan);
    zhashx_delete(self->flights, f->hex);
    zlistx_destroy(&f->waiters);
    free(f);
}

//  --------------------------------------------------------------------------
//  Self test.

#define S_CHECK(cond) LLMQ_CHECK_RET(cond)

static void s_t_key(llmq_cache_key_t *key, int i)
{
    //  Any distinct 16 bytes will do here (llmq_cache_key: s_t_keys).
    memset(key, 0, sizeof(*key));
    key->bytes[0] = (uint8_t)i;
}

static int s_t_sip(void)
{
    //  The reference vector (SipHash-2-4-128, key 00..0f, empty input),
    //  then any split of the input gives the same hash.
    uint8_t secret[16], out[16], again[16];
    for (int i = 0; i < 16; i++)
        secret[i] = (uint8_t)i;
    static const uint8_t empty[16] = {0xa3, 0x81, 0x7f, 0x04, 0xba, 0x25,
                                      0xa8, 0xe6, 0x6d, 0xf6, 0x72, 0x14,
                                      0xc7, 0x55, 0x02, 0x93};
    s_sip_t s;
    s_sip_init(&s, secret);
    s_sip_end(&s, out);
    S_CHECK(memcmp(out, empty, 16) == 0);
    uint8_t a[1001];
    for (size_t i = 0; i < sizeof(a); i++)
        a[i] = (uint8_t)(i * 7);
    s_sip_init(&s, secret);
    s_sip_add(&s, a, sizeof(a));
    s_sip_end(&s, out);
    s_sip_init(&s, secret);
    for (size_t i = 0, step = 1; i < sizeof(a); i += step, step = step % 13 + 1)
        s_sip_add(&s, a + i, i + step > sizeof(a) ? sizeof(a) - i : step);
    s_sip_end(&s, again);
    S_CHECK(memcmp(out, again, 16) == 0);
    return 0;
}

//  Fields are delimited: ("ab", "c") is not ("a", "bc"); the secret counts.
static int s_t_keys(const char *path, const char *other)
{
    char err[300];
    llmq_cache_t *c = llmq_cache_new(path, 0, 0, err, sizeof(err));
    llmq_cache_t *d = llmq_cache_new(other, 0, 0, err, sizeof(err));
    S_CHECK(c && d);
    llmq_cache_key_t k1, k2, k3;
    llmq_cache_key(c, &k1, "ab", "c", NULL, NULL, "", 0);
    llmq_cache_key(c, &k2, "a", "bc", NULL, NULL, "", 0);
    llmq_cache_key(d, &k3, "ab", "c", NULL, NULL, "", 0);
    S_CHECK(memcmp(k1.bytes, k2.bytes, s_KEY) != 0);
    S_CHECK(memcmp(k1.bytes, k3.bytes, s_KEY) != 0);
    llmq_cache_destroy(&c);
    c = llmq_cache_new(path, 0, 0, err, sizeof(err)); //  same secret again
    S_CHECK(c);
    llmq_cache_key(c, &k2, "ab", "c", NULL, NULL, "", 0);
    S_CHECK(memcmp(k1.bytes, k2.bytes, s_KEY) == 0);
    llmq_cache_destroy(&c);
    llmq_cache_destroy(&d);
    return 0;
}

//  put/get, LRU by bytes (a hit refreshes), reopen keeps everything.
static int s_t_store(const char *path)
{
    char err[300];
    llmq_cache_t *c = llmq_cache_new(path, 1000, 0, err, sizeof(err));
    S_CHECK(c);
    llmq_cache_key_t key;
    llmq_cache_usage_t u = {10, 5, 15, 0.25}, got;
    char body[300];
    memset(body, 'x', sizeof(body));
    for (int i = 0; i < 3; i++) {
        s_t_key(&key, i);
        S_CHECK(llmq_cache_put(c, &key, body, 300, &u) == 0);
    }
    void *data = NULL;
    size_t size = 0;
    s_t_key(&key, 0); //  0 becomes the most recently used
    S_CHECK(llmq_cache_get(c, &key, &data, &size, &got) == 0 && size == 300);
    S_CHECK(got.total_tokens == 15 && got.cost_usd == 0.25);
    free(data);
    s_t_key(&key, 3); //  900 + 300 > 1000: the least recently used (1) goes
    S_CHECK(llmq_cache_put(c, &key, body, 300, &u) == 0);
    llmq_cache_stats_t st;
    llmq_cache_stats(c, &st);
    S_CHECK(st.entries == 3 && st.bytes == 900 && st.evictions == 1);
    s_t_key(&key, 1);
    S_CHECK(llmq_cache_get(c, &key, &data, &size, &got) == -1);
    S_CHECK(llmq_cache_put(c, &key, body, 1001, &u) == -1); //  too big
    llmq_cache_destroy(&c);
    c = llmq_cache_new(path, 1000, 0, err, sizeof(err));
    S_CHECK(c);
    llmq_cache_stats(c, &st);
    S_CHECK(st.entries == 3 && st.bytes == 900);
    int present[] = {0, 2, 3};
    for (int i = 0; i < 3; i++) {
        s_t_key(&key, present[i]);
        S_CHECK(llmq_cache_get(c, &key, &data, &size, &got) == 0);
        free(data);
    }
    llmq_cache_destroy(&c);
    return 0;
}

//  An entry past its TTL is a miss and is deleted (polled, bounded).
static int s_t_ttl(const char *path)
{
    char err[300];
    llmq_cache_t *c = llmq_cache_new(path, 0, 50, err, sizeof(err));
    S_CHECK(c);
    llmq_cache_key_t key;
    llmq_cache_usage_t u = {1, 1, 2, 0};
    s_t_key(&key, 7);
    S_CHECK(llmq_cache_put(c, &key, "answer", 6, &u) == 0);
    void *data = NULL;
    size_t size = 0;
    int64_t give_up = zclock_mono() + 5000;
    while (llmq_cache_get(c, &key, &data, &size, &u) == 0) {
        free(data);
        S_CHECK(zclock_mono() < give_up);
        zclock_sleep(10);
    }
    llmq_cache_stats_t st;
    llmq_cache_stats(c, &st);
    S_CHECK(st.expired >= 1 && st.entries == 0 && st.bytes == 0);
    llmq_cache_destroy(&c);
    return 0;
}

//  Not an llmq cache: a clear error, and the file unchanged.
static int s_t_foreign(const char *dir)
{
    char path[300], err[300];
    snprintf(path, sizeof(path), "%s/garbage.db", dir);
    FILE *f = fopen(path, "w");
    S_CHECK(f);
    for (int i = 0; i < 200; i++)
        fputs("this is not a database at all\n", f);
    fclose(f);
    S_CHECK(!llmq_cache_new(path, 0, 0, err, sizeof(err)));
    S_CHECK(strstr(err, path) && strstr(err, "not a database"));
    snprintf(path, sizeof(path), "%s/other.db", dir);
    sqlite3 *db = NULL;
    S_CHECK(sqlite3_open(path, &db) == SQLITE_OK);
    S_CHECK(sqlite3_exec(db, "CREATE TABLE batches(x)", NULL, NULL, NULL) ==
            SQLITE_OK);
    sqlite3_close(db);
    S_CHECK(!llmq_cache_new(path, 0, 0, err, sizeof(err)));
    S_CHECK(strstr(err, "other tables"));
    return 0;
}

static int s_t_flights(const char *path)
{
    char err[300];
    llmq_cache_t *c = llmq_cache_new(path, 0, 0, err, sizeof(err));
    S_CHECK(c);
    llmq_cache_key_t key;
    s_t_key(&key, 1);
    S_CHECK(!llmq_cache_flight_find(c, &key));
    int lead = 0;
    llmq_cache_flight_t *f = llmq_cache_flight_start(c, &key, &lead);
    S_CHECK(f && llmq_cache_flight_find(c, &key) == f);
    S_CHECK(llmq_cache_flight_leader(f) == &lead && !llmq_cache_orphan(c));
    llmq_cache_flight_orphan(c, f);
    llmq_cache_flight_orphan(c, f); //  once only
    S_CHECK(!llmq_cache_flight_leader(f) && llmq_cache_orphan(c) == f);
    S_CHECK(!llmq_cache_orphan(c));
    int a = 1, b = 2, d = 3;
    void *ha = llmq_cache_flight_join(f, &a);
    S_CHECK(ha && llmq_cache_flight_join(f, &b) &&
            llmq_cache_flight_join(f, &d));
    llmq_cache_flight_leave(f, ha);
    S_CHECK(llmq_cache_flight_pop(f) == &b);
    llmq_cache_flight_end(c, &f);
    S_CHECK(!f && !llmq_cache_flight_find(c, &key));
    f = llmq_cache_flight_start(c, &key, &lead); //  left for destroy
    S_CHECK(f && llmq_cache_flight_join(f, &a));
    llmq_cache_flight_orphan(c, f);
    S_CHECK(llmq_cache_flight_first(c) == f);
    llmq_cache_destroy(&c);
    return 0;
}

int llmq_cache_test(bool verbose)
{
    if (verbose)
        printf(" * llmq_cache: ");
    char dir[] = "/tmp/llmq-cache-test-XXXXXX", path[300];
    LLMQ_CHECK_RET(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/cache.db", dir);
    char other[300];
    snprintf(other, sizeof(other), "%s/other-secret.db", dir);
    int rc = s_t_sip() || s_t_keys(path, other) || s_t_store(path) ||
                     s_t_flights(path)
                 ? -1
                 : 0;
    if (!rc) {
        snprintf(path, sizeof(path), "%s/ttl.db", dir);
        rc = s_t_ttl(path) || s_t_foreign(dir) ? -1 : 0;
    }
    llmq_check_rmtree(dir);
    if (verbose)
        printf(rc ? "FAILED\n" : "OK\n");
    return rc;
}
