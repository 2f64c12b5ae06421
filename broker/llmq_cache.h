/*  llmq_cache.h - the broker's response cache (PROTOCOL.md 3.7).

    Answers of deterministic requests, stored in a SQLite file by a
    keyed 128-bit hash (SipHash-2-4, the file's random secret) over (op, model,
   pool, tenant or "", body bytes), bounded in bytes (least recently used
   evicted first) and in age (TTL from when an answer was stored, wall clock).
   Plus the single-flight table: the identical requests waiting for the first
   one to answer (the broker's requests, opaque here).

    The broker owns one (llmq_cache_new with --cache FILE); NULL = off.
    Not thread safe: the broker actor's thread only.
*/
#ifndef LLMQ_CACHE_H_INCLUDED
#define LLMQ_CACHE_H_INCLUDED

#include <czmq.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "llmq_metrics.h"

typedef struct _llmq_cache_t llmq_cache_t;
typedef struct _llmq_cache_flight_t llmq_cache_flight_t;

typedef struct {
    uint8_t bytes[16]; //  SipHash-2-4-128, keyed with the file's secret
} llmq_cache_key_t;

typedef struct {
    int64_t prompt_tokens, completion_tokens, total_tokens;
    double cost_usd;
} llmq_cache_usage_t;

typedef struct {
    uint64_t hits, misses, waits, stored, evictions, expired; //  Since start
    int64_t entries, bytes;                                   //  Now
} llmq_cache_stats_t;

#define LLMQ_CACHE_MAX_BYTES_DEFAULT (256 * 1024 * 1024)
#define LLMQ_CACHE_TTL_DEFAULT_MS (24 * 3600 * 1000LL)

/*  Open (or create) the cache file. max_bytes 0 and ttl_ms 0 take the
    defaults. NULL with a reason naming the file in err on failure: a file
    that is not an llmq cache is never changed. */
llmq_cache_t *llmq_cache_new(const char *path, size_t max_bytes, int64_t ttl_ms,
                             char *err, size_t errlen);
void llmq_cache_destroy(llmq_cache_t **self_p);

/*  The key of a request. tenant NULL or "" = shared by all tenants. */
void llmq_cache_key(llmq_cache_t *self, llmq_cache_key_t *key, const char *op,
                    const char *model, const char *pool, const char *tenant,
                    const void *body, size_t size);

/*  A stored answer: 0 with *body (malloc'd, the caller frees), *size and
    *usage; -1 if none (or expired: then deleted). Counts a hit, not a
    miss (the broker counts a miss with llmq_cache_count). */
int llmq_cache_get(llmq_cache_t *self, const llmq_cache_key_t *key, void **body,
                   size_t *size, llmq_cache_usage_t *usage);

/*  Store an answer (replacing one with the same key), then evict to the
    bounds. 0, or -1 if not stored (too big, or a write failed). */
int llmq_cache_put(llmq_cache_t *self, const llmq_cache_key_t *key,
                   const void *body, size_t size,
                   const llmq_cache_usage_t *usage);

/*  Commit the writes made since the last flush (they are seen by this
    cache's reads at once; the file has them after the flush). The broker
    calls it once per loop turn; destroy flushes. self may be NULL. */
void llmq_cache_flush(llmq_cache_t *self);

/*  Count what the broker decides: "miss", "wait" or "hit" (a waiter
    answered from its flight). */
void llmq_cache_count(llmq_cache_t *self, const char *what);
void llmq_cache_stats(llmq_cache_t *self, llmq_cache_stats_t *stats);

/*  Metrics (PROTOCOL.md 3.7): define once, collect at each scrape (self
    may be NULL: all 0). */
void llmq_cache_metrics_define(llmq_metrics_t *metrics);
void llmq_cache_metrics_collect(llmq_cache_t *self, llmq_metrics_t *metrics);

/*  ---- single flight ------------------------------------------------------
    A flight is the first request of a key still unanswered (the leader)
    and the identical requests waiting for it (waiters, in arrival order). */

/*  The flight of key, or NULL. */
llmq_cache_flight_t *llmq_cache_flight_find(llmq_cache_t *self,
                                            const llmq_cache_key_t *key);
/*  Start the flight of key (none must exist) led by leader. NULL if out of
    memory. */
llmq_cache_flight_t *llmq_cache_flight_start(llmq_cache_t *self,
                                             const llmq_cache_key_t *key,
                                             void *leader);
const llmq_cache_key_t *llmq_cache_flight_key(llmq_cache_flight_t *flight);
void *llmq_cache_flight_leader(llmq_cache_flight_t *flight);
void llmq_cache_flight_lead(llmq_cache_flight_t *flight, void *leader);
/*  Add a waiter; returns its handle for llmq_cache_flight_leave, NULL if
    out of memory. */
void *llmq_cache_flight_join(llmq_cache_flight_t *flight, void *waiter);
void llmq_cache_flight_leave(llmq_cache_flight_t *flight, void *handle);
/*  Take the oldest waiter off the flight, NULL if none. */
void *llmq_cache_flight_pop(llmq_cache_flight_t *flight);
/*  The leader went without an answer its waiters can share: the flight
    has no leader until the broker takes it back with llmq_cache_orphan
    (outside the call that destroyed the leader) and makes a waiter lead. */
void llmq_cache_flight_orphan(llmq_cache_t *self, llmq_cache_flight_t *flight);
llmq_cache_flight_t *llmq_cache_orphan(llmq_cache_t *self);
/*  Any flight, NULL if none (to clear them all at the end). */
llmq_cache_flight_t *llmq_cache_flight_first(llmq_cache_t *self);
/*  End the flight (its waiters, if any, are forgotten: pop them first). */
void llmq_cache_flight_end(llmq_cache_t *self, llmq_cache_flight_t **flight_p);

/*  Self test (a real SQLite file); 0 on success. */
int llmq_cache_test(bool verbose);

#endif
